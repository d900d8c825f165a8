#!/usr/bin/env python3
"""Reference cases for the JSON constraint (src/text/json_constraint.c): schemas, documents,
and whether each document is valid, as Python's json module and the jsonschema package say.

Writes tests/data/jcon_cases.json:
  [{"name": ..., "schema": SCHEMA or null (response_format json_object), "cases": [[HEX, VALID], ...]}]
Documents are hex-encoded bytes (some are not UTF-8).

The engine documents a few rules stricter than JSON Schema, and the labels follow them:
- where "properties" is given and "additionalProperties" is absent, no other key is allowed
  (OpenAI's strict mode); the schema given to jsonschema gets "additionalProperties": false;
- json_object means the top-level value is an object.
Documents that would hit the engine's other documented limits (non-canonical key spellings,
more than 32 blanks in a row, nesting past 32, duplicate keys, 1.0 or 1e3 for an integer) are
not generated, so for every case json + jsonschema decide alone.

Run: python3 tools/make_jcon_cases.py   (needs jsonschema)
"""
import copy
import json
import os
import random

import jsonschema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "jcon_cases.json")


def strict(schema):
    """The engine's reading: properties without additionalProperties close the object."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: strict(v) for k, v in schema.items()}
    if "properties" in s and "additionalProperties" not in s:
        s["additionalProperties"] = False
    return s


def no_constants(name):
    raise ValueError(name)


def valid(schema, data):
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError):
        return False
    if schema is None:
        return isinstance(doc, dict)
    try:
        jsonschema.validate(doc, strict(schema), cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError:
        return False
    return True


SYNTAX_BAD = [b"", b"{", b"}", b"{,}", b"{\"a\":}", b"{\"a\" 1}", b"{'a': 1}", b"{a: 1}", b"{\"a\": 1,}",
              b"[1, 2,]", b"[1 2]", b"01", b"1.", b".5", b"-", b"1e", b"1e+", b"--1", b"+1", b"NaN", b"Infinity",
              b"tru", b"nul", b"True", b"\"abc", b"\"a\tb\"", b"\"a\\x\"", b"\"\\u12G4\"", b"\"\xff\"",
              b"\"\xc3\"", b"\"\xe0\x80\x80\"", b"\"\xed\xa0\x80\"", b"\"\xf5\x80\x80\x80\"", b"{} x", b"{}{}",
              b"[]]", b"{\"a\": [1, {\"b\": 2]}}", b"\"a\nb\""]


def texts_of(doc, rng):
    """A document in a few spellings the engine must accept: compact, spaced, indented."""
    out = [json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
           json.dumps(doc, ensure_ascii=False),
           json.dumps(doc, ensure_ascii=False, indent=2)]
    if rng.random() < 0.5:
        out.append(" \n" + out[0] + "\n")
    return [t.encode("utf-8") for t in out]


def mutations(data, rng):
    """Byte-level damage: a cut, a dropped or doubled byte, a swapped bracket."""
    out = []
    if len(data) > 1:
        out.append(data[: rng.randrange(1, len(data))])
        i = rng.randrange(len(data))
        out.append(data[:i] + data[i + 1:])
        out.append(data[:i] + data[i:i + 1] + data[i:])
    for a, b in ((b"}", b"]"), (b"]", b"}"), (b",", b""), (b":", b","), (b"\"", b"'")):
        if a in data:
            out.append(data.replace(a, b, 1))
    return out


SCHEMAS = [
    ("json_object", None, [{}, {"a": 1}, {"x": [1, 2, {"y": None}], "s": "héllo \"q\" \\ \u00e9"}, [], 1, "s", None,
                          {"deep": {"a": {"b": {"c": [[[]]]}}}}, {"n": -0.5e-3, "t": True, "f": False}]),
    ("person", {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
                       "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["name", "age"],
    }, [{"name": "Ann", "age": 31}, {"age": 5, "name": "B", "tags": []}, {"name": "C", "age": -7, "email": "c@x",
        "tags": ["a", "b", "c"]}, {"name": "D"}, {"name": "E", "age": 1.5}, {"name": "F", "age": 2, "extra": 1},
        {"name": "G", "age": 3, "tags": ["a", "b", "c", "d"]}, {"name": 5, "age": 1}, {"name": "H", "age": 2,
        "tags": [1]}, [], "x"]),
    ("enums", {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"enum": [1, 12, 123]},
                       "flag": {"const": True}, "mixed": {"enum": ["a", 1, None, False]}},
        "required": ["color"], "additionalProperties": False,
    }, [{"color": "red"}, {"color": "green", "n": 12}, {"color": "blue", "n": 123, "flag": True, "mixed": None},
        {"color": "blue", "mixed": "a"}, {"color": "blue", "mixed": False}, {"color": "yellow"}, {"color": "red", "n": 2},
        {"color": "red", "flag": False}, {"color": "red", "mixed": "b"}, {"n": 1}]),
    ("open_object", {
        "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
        "additionalProperties": {"type": "number"},
    }, [{"id": 1}, {"id": 1, "x": 2.5, "y": -3}, {"id": 1, "x": "s"}, {"x": 1}, {"id": 2, "idx": 1}]),
    ("any_extra", {"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": True},
     [{}, {"a": True}, {"a": 1}, {"b": [1, "x"]}, {"a": False, "b": None}]),
    ("array_top", {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
     [[1], [1, 2.5, -3e2, 0], [], [1, 2, 3, 4, 5], ["x"], {"a": 1}]),
    ("union_types", {"type": ["string", "null", "integer"]}, ["x", None, 3, 2.5, True, [], {}]),
    ("any_of_ref", {
        "$defs": {"Item": {"type": "object", "properties": {"name": {"type": "string"}, "qty": {"type": "integer"}},
                           "required": ["name", "qty"]}},
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                       "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                       "best": {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}]}},
        "required": ["items"],
    }, [{"items": []}, {"items": [{"name": "a", "qty": 1}], "note": None}, {"items": [], "note": "n",
        "best": {"name": "b", "qty": 2}}, {"items": [], "best": None}, {"items": [{"name": "a"}]},
        {"items": [], "note": 1}, {"items": [], "best": {"name": "b", "qty": 2, "z": 1}}]),
    ("recursive", {
        "$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                             "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                           "required": ["v"]}},
        "$ref": "#/$defs/Node",
    }, [{"v": 1}, {"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4}]}]}, {"v": 1, "kids": [{"w": 2}]},
        {"kids": []}]),
    ("strings", {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]},
     [{"s": ""}, {"s": "tab\there"}, {"s": "nl\nx"}, {"s": "quote\"back\\slash/"}, {"s": "\u00e9\u4e2d\U0001f600"},
      {"s": "\u0001"}, {"s": 1}]),
]


def main():
    rng = random.Random(1234)
    out = []
    for name, schema, docs in SCHEMAS:
        seen, cases = set(), []

        def add(data):
            if data in seen:
                return
            seen.add(data)
            cases.append([data.hex(), valid(schema, data)])

        for doc in docs:
            for t in texts_of(doc, rng):
                add(t)
                for m in mutations(t, rng):
                    add(m)
        for t in SYNTAX_BAD:
            add(t)
        out.append({"name": name, "schema": schema, "cases": cases})
        print(f"{name}: {len(cases)} cases, {sum(v for _, v in cases)} valid")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
