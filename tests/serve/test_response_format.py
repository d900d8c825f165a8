"""response_format (json_object, json_schema): constrained decoding through the whole server.

The test model is random, so whatever it writes is what the constraint let through: every
finished answer must parse with Python's json module and validate with the jsonschema package
(the references), streamed or not, on chat and on completions, and after reasoning in a
thinking model. The schemas are bounded (enums, booleans, integers, closed objects), so a
document must end well within max_tokens; the automaton itself is tested byte by byte in
tests/test_json_constraint.c."""
import json
import os
import sys

import jsonschema
import pytest
import requests

from conftest import SLOW, auth
from test_tools_reasoning import client_for, thinking_model

# the engine's reading of properties without additionalProperties (closed), shared with the
# generator of the C test's cases
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from make_jcon_cases import strict  # noqa: E402

ASK = [{"role": "user", "content": "Describe the item as JSON."}]

ITEM = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer"},
        "size": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Size"}]},
    },
    "required": ["color", "ok", "n"],
    "$defs": {"Size": {"type": "object", "properties": {"w": {"type": "integer"}, "unit": {"const": "cm"}},
                       "required": ["w", "unit"]}},
}


def fmt(schema):
    return {"type": "json_schema", "json_schema": {"name": "item", "schema": schema, "strict": True}}


def test_json_schema_chat(client):
    for seed in range(4):
        r = client.chat.completions.create(model="m", messages=ASK, max_tokens=900, temperature=1.0, seed=seed,
                                           response_format=fmt(ITEM))
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch.message.content
        doc = json.loads(ch.message.content)
        jsonschema.validate(doc, strict(ITEM), cls=jsonschema.Draft202012Validator)


def test_json_schema_streamed(client):
    stream = client.chat.completions.create(model="m", messages=ASK, max_tokens=900, temperature=1.0, seed=7,
                                            response_format=fmt(ITEM), stream=True)
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), strict(ITEM), cls=jsonschema.Draft202012Validator)


def test_json_schema_completions(client):
    schema = {"type": "array", "items": {"enum": [1, 12, 123, True]}, "minItems": 1, "maxItems": 5}
    r = client.completions.create(model="m", prompt="A list:", max_tokens=600, temperature=1.0, seed=3,
                                  extra_body={"response_format": fmt(schema)})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), schema, cls=jsonschema.Draft202012Validator)


def test_json_object(client):
    # Any object: strings may run long on a random model, so only finished answers are judged,
    # and at least one must finish.
    finished = 0
    for seed in range(4):
        r = client.chat.completions.create(model="m", messages=ASK, max_tokens=300, temperature=1.0, seed=seed,
                                           response_format={"type": "json_object"})
        ch = r.choices[0]
        if ch.finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(ch.message.content), dict)
        else:
            assert ch.finish_reason == "length"
    assert finished >= 1


def test_text_format_is_unconstrained(client):
    a = client.chat.completions.create(model="m", messages=ASK, max_tokens=12, temperature=0)
    b = client.chat.completions.create(model="m", messages=ASK, max_tokens=12, temperature=0,
                                       response_format={"type": "text"})
    assert a.choices[0].message.content == b.choices[0].message.content


def test_after_reasoning(start_server, tmp_path):
    # A thinking model: the prompt opens <think>; a bias makes the model close it at once, and
    # from there on the answer is constrained (</think> itself is not allowed in the JSON).
    model, template = thinking_model(tmp_path)
    (model / "chat_template.jinja").write_text(template)
    srv = start_server(env={"QNEXT_SERVE_MODEL": str(model)})
    end_think = 508  # '</think>' in tests/data/tok512
    r = client_for(srv).chat.completions.create(model="m", messages=ASK, max_tokens=900, temperature=1.0, seed=1,
                                                response_format=fmt(ITEM), logit_bias={str(end_think): 100})
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert not getattr(m, "reasoning_content", None)  # no reasoning text: the field is left out
    jsonschema.validate(json.loads(m.content), strict(ITEM), cls=jsonschema.Draft202012Validator)


def test_forced_call_arguments_follow_schema(client):
    # tool_choice naming a function: the model writes only the arguments, masked by the
    # function's parameters schema; the server closes the call when they are complete.
    params = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer"},
                                               "metric": {"type": "boolean"}}, "required": ["city", "days"]}
    tools = [{"type": "function", "function": {"name": "forecast", "parameters": params}},
             {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]
    for seed in range(3):
        r = client.chat.completions.create(model="m", messages=ASK, tools=tools, max_tokens=900, temperature=1.0,
                                           seed=seed, tool_choice={"type": "function", "function": {"name": "forecast"}})
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch.message
        call = ch.message.tool_calls[0]
        assert call.function.name == "forecast"
        jsonschema.validate(json.loads(call.function.arguments), strict(params), cls=jsonschema.Draft202012Validator)


def test_required_call_follows_schemas(client):
    # tool_choice "required": the name is masked to the tools' names, the arguments to the
    # chosen tool's schema; one call, closed by the server.
    tools = [{"type": "function", "function": {"name": "forecast", "parameters": {
                 "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "clock", "parameters": {
                 "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}}},
             {"type": "function", "function": {"name": "noargs", "parameters": {"type": "object", "properties": {}}}}]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    names = set()
    for seed in range(6):
        r = client.chat.completions.create(model="m", messages=ASK, tools=tools, max_tokens=900, temperature=1.0,
                                           seed=seed, tool_choice="required")
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch.message
        assert len(ch.message.tool_calls) == 1
        call = ch.message.tool_calls[0]
        assert call.function.name in schemas
        names.add(call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), strict(schemas[call.function.name]),
                            cls=jsonschema.Draft202012Validator)
    assert len(names) >= 2, names  # the model's choice, not always the first tool


def test_required_with_many_tools(start_server, tmp_path):
    # more tools than an enum can hold: the call is still opened, its name left to the model
    # (70 tools make a prompt longer than the fixture's 1024 tokens: its 64K-context copy)
    from test_load import long_context_model
    srv = start_server(["--parallel", "1", "--ctx", "8192"], env={"QNEXT_SERVE_MODEL": long_context_model(tmp_path)})
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}} for i in range(70)]
    r = client_for(srv).chat.completions.create(model="m", messages=ASK, tools=tools, max_tokens=20, temperature=1.0,
                                                seed=1, tool_choice="required")
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.completion_tokens > 0


@pytest.mark.parametrize("rf, msg", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}},
     "'pattern' is not supported"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs"),
    ({"type": "xml"}, "not one of text, json_object, json_schema"),
    ("json", "must be"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": ["a"]}}},
     "required property a is not in"),
])
def test_bad_response_format(url, rf, msg):
    r = requests.post(url + "/v1/chat/completions", headers=auth(), timeout=30 * SLOW,
                      json={"model": "m", "messages": ASK, "response_format": rf})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "response_format" and msg in err["message"], err


def test_not_with_forced_tool(url):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = requests.post(url + "/v1/chat/completions", headers=auth(), timeout=30 * SLOW,
                      json={"model": "m", "messages": ASK, "tools": tools, "tool_choice": "required",
                            "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
