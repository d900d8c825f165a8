#!/usr/bin/env python3
"""make_parser_cases.py - prints the tool-call cases of tests/test_output_parser.c (from "long
arguments" on) as C initialisers. The expected arguments string of each call is computed by
Python's json module (compact dump, ensure_ascii=False, numbers kept as written, lone
surrogates kept as WTF-8 via surrogatepass), the reference the parser's streamed arguments
must match. Malformed blocks carry the longest arguments prefix that may have been streamed
before the JSON broke (written by hand: the compact text up to the offending byte).

Usage: python3 tools/make_parser_cases.py > cases.inc, then paste into the cases[] table."""
import json

def c(s):
    # C string literal from bytes/str (UTF-8), hex escapes for non-ASCII, split to avoid hex run-on
    if isinstance(s, str): s = s.encode('utf-8', 'surrogatepass')
    out = '"'
    prev_hex = False
    for b in s:
        ch = chr(b)
        if b >= 0x80 or b < 0x20:
            if b == 10: out += '\\n'; prev_hex=False; continue
            if b == 9: out += '\\t'; prev_hex=False; continue
            out += '\\x%02x' % b; prev_hex = True; continue
        if prev_hex and ch in '0123456789abcdefABCDEF':
            out += '" "'
        prev_hex = False
        if ch in '"\\': out += '\\' + ch
        else: out += ch
    return out + '"'
import re
def compact(text):
    # Python's json with numbers kept as written (the lexeme rides through as a marked string)
    mark = lambda s: "\x00NUM" + s + "\x00"
    v = json.loads(text, parse_int=mark, parse_float=mark)
    out = json.dumps(v, separators=(',', ':'), ensure_ascii=False)
    out = re.sub(r'"\\u0000NUM([-+.eE0-9]+)\\u0000"', lambda m: m.group(1), out)
    return out.encode('utf-8', 'surrogatepass')
cases = []
def call(name, body, args=None):
    return ('<tool_call>\n' + body + '\n</tool_call>')
def add(title, output, content, calls, dead=None, reasoning="", sir=0):
    cases.append((title, sir, output, reasoning, content, calls, dead))

long_body = ('{"name": "search", "arguments": {"query": "a {b} [c] \\"d\\" \\\\ e: f, g}", "limit": 10, '
             '"nested": {"list": [1, -2.5e+3, 0, true, false, null, {}], "empty": []}, '
             '"text": "line1\\nline2\\ttab \\u00e9\\ud83d\\ude00 \\u0001 \\/ \\u001f"}}')
add("long arguments: braces, quotes and escapes in strings", call("search", long_body), "",
    [("search", compact(long_body[long_body.index('{"query"'):-1]))])
ws_body = '{\n  "name" : "ws" ,\n  "arguments" : {\n    "a" : [ 1 , 2 ] ,\n    "b" : "x  y"\n  }\n}'
add("whitespace everywhere", call("ws", ws_body), "", [("ws", compact('{"a":[1,2],"b":"x  y"}'))])
add("arguments before the name", '<tool_call>{"arguments": {"x": "y"}, "name": "late"}</tool_call>', "",
    [("late", compact('{"x": "y"}'))])
add("parameters instead of arguments", '<tool_call>{"name": "p", "parameters": {"k": [true]}}</tool_call>', "",
    [("p", compact('{"k": [true]}'))])
add("null arguments", '<tool_call>{"name": "n", "arguments": null}</tool_call>', "", [("n", b"{}")])
add("string arguments holding braces", '<tool_call>{"name": "s", "arguments": "{\\"q\\": \\"}\\"}"}</tool_call>', "",
    [("s", json.loads('"{\\"q\\": \\"}\\"}"').encode())])
add("empty string arguments", '<tool_call>{"name": "e", "arguments": ""}</tool_call>', "", [("e", b"")])
add("other keys skipped", '<tool_call>{"id": 7, "name": "o", "type": "function", "arguments": {"a": {"b": {"c": []}}}, "x": [{"y": "}"}]}</tool_call>', "",
    [("o", compact('{"a": {"b": {"c": []}}}'))])
add("multibyte UTF-8 in arguments", call("u", '{"name": "u", "arguments": {"city": "Z\u00fcrich \u6771\u4eac \U0001F600"}}'), "",
    [("u", compact('{"city": "Z\u00fcrich \u6771\u4eac \U0001F600"}'))])
# lone surrogates are kept as WTF-8 (json.c, Python's surrogatepass)
add("lone surrogates", '<tool_call>{"name": "w", "arguments": {"s": "\\ud800x\\ud83d\\u0041\\udc00"}}</tool_call>', "",
    [("w", b'{"s":"' + '\ud800x\ud83dA\udc00'.encode('utf-8', 'surrogatepass') + b'"}')])
t = '<tool_call>{"name": "f", "arguments": {"a": 1}} x</tool_call>'
add("text after the call object", t, t, [], b'{"a":1}')
t = '<tool_call>{"name": "f", "arguments": {"a": 1}}}</tool_call>'
add("extra closing brace", t, t, [], b'{"a":1}')
t = '<tool_call>{"name": "f", "arguments": {}, "arguments": {"b": 2}}</tool_call>'
add("two arguments members", t, t, [], b'{}')
t = '<tool_call>{"name": "f", "name": "g", "arguments": {}}</tool_call>'
add("two names", t, t, [], b'')
t = '<tool_call>{"name": 5, "arguments": {}}</tool_call>'
add("name not a string", t, t, [], None)
t = '<tool_call>{"name": "", "arguments": {}}</tool_call>'
add("empty name", t, t, [], None)
t = '<tool_call>{"name": "f", "arguments": [1]}</tool_call>'
add("arguments as an array", t, t, [], b'')
t = '<tool_call>{"name": "f", "arguments": {"n": 01}}</tool_call>'
add("number with a leading zero", t, t, [], b'{"n":0')
t = '<tool_call>["f", {}]</tool_call>'
add("not an object", t, t, [], None)
t = '<tool_call>{"name": "f", "arguments": {"s": "</tool_call>"}}</tool_call>'
add("closing tag inside a string ends the block", t, t, [], b'{"s":"')
t = '<tool_call>{"name": "f", "arguments": {"s": "a\\qb"}}</tool_call>'
add("bad escape", t, t, [], b'{"s":"a')
bad = '<tool_call>{"name": "bad", "arguments": {"a": tru}}</tool_call>'
add("malformed call then a good one", bad + '\n<tool_call>{"name": "good", "arguments": {"a": true}}</tool_call>', bad,
    [("good", b'{"a":true}')], b'{"a":tru')
add("reasoning, text and two streamed calls", "Plan: call both.\n</think>\n\nCalling.\n" + call("a", '{"name": "a", "arguments": {"k": "v1"}}') + "\n" + call("b", '{"name": "b", "arguments": {"k": "v2"}}'),
    "Calling.", [("a", b'{"k":"v1"}'), ("b", b'{"k":"v2"}')], None, "Plan: call both.", 1)

for (title, sir, output, reasoning, content, calls, dead) in cases:
    names = ", ".join(c(n) for n, _ in calls) or "0"
    args = ", ".join(c(a) for _, a in calls) or "0"
    print('    {%s, %d, 1,\n     %s,\n     %s, %s, %d, {%s},\n     {%s}, %s},' % (
        c(title), sir, c(output), c(reasoning), c(content), len(calls), names, args, c(dead) if dead is not None else "NULL"))
