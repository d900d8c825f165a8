"""Tool calls and reasoning through the whole server. A random model cannot be made to
write a tool call, so these tests use the test hook QNEXT_SERVE_FAKE_OUTPUT: the engine
still runs every forward pass but emits the scripted tokens instead of sampling. The parser
itself is tested on crafted outputs in tests/test_output_parser.c."""
import json
import os
import shutil

import openai
import pytest

from conftest import SLOW, linked_model

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
TOOL_OUTPUT = ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]


def client_for(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=60 * SLOW, max_retries=0)


def test_tool_calls(start_server):
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": TOOL_OUTPUT})
    c = client_for(srv)
    r = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.content == "I will check."
    calls = ch.message.tool_calls
    assert [t.function.name for t in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert json.loads(calls[1].function.arguments) == {}
    assert all(t.type == "function" and t.id.startswith("call_") for t in calls)
    assert len({t.id for t in calls}) == 2

    # streamed: accumulate the deltas the way OpenAI clients do (by index)
    acc, content, finish = {}, "", None
    for chunk in c.chat.completions.create(model="m", messages=ASK, tools=TOOLS, stream=True):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            e = acc.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                e["id"] = tc.id
            if tc.function and tc.function.name:
                e["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                e["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "I will check."
    assert [acc[i]["name"] for i in sorted(acc)] == ["get_weather", "get_time"]
    assert json.loads(acc[0]["arguments"]) == {"city": "Paris"}
    assert acc[0]["id"] and acc[1]["id"]

    # tool_choice none, or no tools offered: the blocks are plain text
    r = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == TOOL_OUTPUT and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"

    # a follow-up turn with the tool results renders and runs
    msgs = ASK + [r.choices[0].message.model_dump(exclude_none=True) | {"content": "I will check.",
                  "tool_calls": [t.model_dump() for t in calls]},
                  {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
                  {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"}]
    r = c.chat.completions.create(model="m", messages=msgs, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"


def test_tool_choice_forces_a_call(start_server):
    # The scripted output is only what the model writes inside the call: the server writes
    # the opening (with a named function, also the name), the separator after a "required"
    # call's name, and the closing once the arguments object is complete.
    args_only = '{"city": "Paris"}'
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": args_only})
    c = client_for(srv)
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice=named)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and not ch.message.content
    assert [t.function.name for t in ch.message.tool_calls] == ["get_weather"]
    assert json.loads(ch.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    content, finish, calls = collect_stream(c, model="m", messages=ASK, tools=TOOLS, tool_choice=named)
    assert finish == "tool_calls" and content == ""
    assert calls[0]["name"] == "get_weather" and json.loads("".join(calls[0]["pieces"])) == {"city": "Paris"}
    # tool_choice auto: the same output is not a call
    r = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"

    srv2 = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": '"get_time"{}'})
    r = client_for(srv2).chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required")
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert [(t.function.name, json.loads(t.function.arguments)) for t in ch.message.tool_calls] == [("get_time", {})]


def thinking_model(tmp_path):
    """The test model in a directory of its own (links) for a chat template, and the
    Qwen3-Next Thinking template's text."""
    model = linked_model(tmp_path, "thinking", ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"))
    here = os.path.dirname(os.path.abspath(__file__))
    cfg = json.load(open(os.path.join(here, "..", "data", "qwen3-tokenizer", "tokenizer_config.thinking.json")))
    return model, cfg["chat_template"]


def test_tool_choice_after_reasoning(start_server, tmp_path):
    # A thinking model reasons first; the forced call opening comes after </think>.
    model, template = thinking_model(tmp_path)
    (model / "chat_template.jinja").write_text(template)
    out = 'The user wants the weather.\n</think>{"city": "Paris"}'
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": out, "QNEXT_SERVE_MODEL": str(model)})
    r = client_for(srv).chat.completions.create(model="m", messages=ASK, tools=TOOLS,
                                                tool_choice={"type": "function", "function": {"name": "get_weather"}})
    m = r.choices[0].message
    assert m.reasoning_content == "The user wants the weather."
    assert not m.content and r.choices[0].finish_reason == "tool_calls"
    assert [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls] == [("get_weather", {"city": "Paris"})]


def collect_stream(c, **kw):
    """Content, finish reason and, per tool-call index, the deltas as a client sees them."""
    calls, content, finish = {}, "", None
    for chunk in c.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            e = calls.setdefault(tc.index, {"ids": [], "name": "", "pieces": []})
            if tc.id:
                e["ids"].append(tc.id)
                assert not e["pieces"], "id/name after arguments"
            if tc.function and tc.function.name:
                e["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                e["pieces"].append(tc.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    return content, finish, calls


def test_tool_call_arguments_streamed(start_server):
    # a long call whose argument strings hold braces, quotes, backslashes and non-ASCII text
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3],
            "note": 'braces {} [x] and "quotes" and \\ backslash, caf\u00e9 \u6771\u4eac',
            "nested": {"a": {"b": None, "ok": True}, "n": -2.5}}
    text = json.dumps(args, indent=1)  # whitespace and newlines inside the JSON, as models write it
    out = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": ' + text + '}\n</tool_call>'
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": out})
    c = client_for(srv)
    full = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    final = full.choices[0].message.tool_calls[0].function.arguments
    # the arguments string is the compact JSON of the object (closed form: Python's compact dump)
    assert final == json.dumps(args, separators=(",", ":"), ensure_ascii=False)
    content, finish, calls = collect_stream(c, model="m", messages=ASK, tools=TOOLS)
    assert content == "Let me look." and finish == "tool_calls"
    assert list(calls) == [0]
    e = calls[0]
    assert e["name"] == "get_weather" and len(e["ids"]) == 1 and e["ids"][0].startswith("call_")
    assert len(e["pieces"]) > 10, e["pieces"]  # streamed as the tokens came, not in one piece
    assert "".join(e["pieces"]) == final
    assert json.loads("".join(e["pieces"])) == args


def test_malformed_tool_call_kept_as_text(start_server):
    bad = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": bad})
    c = client_for(srv)
    r = c.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    assert r.choices[0].message.content == bad
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
    content, finish, calls = collect_stream(c, model="m", messages=ASK, tools=TOOLS)
    assert content == bad and finish == "stop"
    # the name was known before the JSON broke: the call was announced, and its arguments stop
    # where the JSON broke (docs/SERVER.md)
    assert [calls[i]["name"] for i in calls] == ["get_weather"]
    assert '{"city":'.startswith("".join(calls[0]["pieces"]))


def test_reasoning_split(start_server, tmp_path):
    # the Qwen3-Next Thinking template opens the assistant turn with "<think>\n" in the prompt
    model, template = thinking_model(tmp_path)
    # plus the enable_thinking switch of Qwen3's hybrid templates, to test chat_template_kwargs
    gen = "{{- '<|im_start|>assistant\\n<think>\\n' }}"
    assert gen in template
    hybrid = ("{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}"
              "{{- '<think>\\n\\n</think>\\n\\n' }}{%- else %}{{- '<think>\\n' }}{%- endif %}")
    (model / "chat_template.jinja").write_text(template.replace(gen, hybrid))
    out = "The user greets me.\nI should greet back.\n</think>\n\nHello! Nice to meet you."
    srv = start_server(env={"QNEXT_SERVE_FAKE_OUTPUT": out, "QNEXT_SERVE_MODEL": str(model)})
    c = client_for(srv)
    msgs = [{"role": "user", "content": "Hi!"}]
    r = c.chat.completions.create(model="m", messages=msgs)
    m = r.choices[0].message
    assert m.content == "Hello! Nice to meet you."
    assert m.reasoning_content == "The user greets me.\nI should greet back."
    reasoning, content = "", ""
    for ch in c.chat.completions.create(model="m", messages=msgs, stream=True):
        if ch.choices:
            d = ch.choices[0].delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
    assert reasoning == m.reasoning_content and content == m.content
    # enable_thinking=False closes the think block in the prompt: the output is all content
    r = c.chat.completions.create(model="m", messages=msgs,
                                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == out
