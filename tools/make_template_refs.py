#!/usr/bin/env python3
"""make_template_refs.py - reference outputs for the chat template interpreter.

Renders a set of conversations with Hugging Face transformers' apply_chat_template
(tokenize=False) for both Qwen3-Next templates (instruct, thinking), each with and without
add_generation_prompt, and writes tests/data/template_refs.json. tests/test_chat_template.c
checks that src/text/chat_template.c reproduces every output byte for byte.

Usage: python3 tools/make_template_refs.py [--tokenizer-dir /work/shared/qwen3-next-tokenizer]
Installs transformers and jinja2 with pip when they are missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import transformers  # noqa: F401
    import jinja2  # noqa: F401
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "transformers", "jinja2"])

from transformers import AutoTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Возвращает погоду; 天気を返す ☀️",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\" or 北京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14, "default": 3},
                "threshold": {"type": "number", "default": 0.5, "exclusiveMinimum": -273.15},
                "detailed": {"type": "boolean", "default": False},
                "station": {"type": ["string", "null"], "default": None},
            },
            "required": ["city"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_documents",
        "description": "Full-text search with filters.\nSupports tabs\tand \\backslashes\\.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "filters": {
                    "type": "object",
                    "properties": {
                        "date_range": {
                            "type": "object",
                            "properties": {"from": {"type": "string", "format": "date"},
                                           "to": {"type": "string", "format": "date"}},
                        },
                        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                        "score": {"type": "number", "minimum": 1e-06, "maximum": 1e+20},
                    },
                },
                "limit": {"type": "integer", "default": 10},
            },
            "required": ["query"],
        },
    },
}

CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}

# A tool given without the {"type": "function"} wrapper, as some clients send it.
BARE_TOOL = {"name": "now", "description": "Current time (UTC).", "parameters": {"type": "object", "properties": {}}}


def cases():
    """Yields (name, messages, tools, kwargs)."""
    yield "single_user", [{"role": "user", "content": "Hello!"}], None, {}
    yield "system_user", [{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": "What is 2+2?"}], None, {}
    yield "multi_turn", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."},
        {"role": "user", "content": "Another one."},
    ], None, {}
    yield "ends_with_assistant", [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi!"},
    ], None, {}
    yield "reasoning_content", [
        {"role": "user", "content": "What is 17*3?"},
        {"role": "assistant", "content": "51", "reasoning_content": "17*3 = 51."},
        {"role": "user", "content": "And 17*4?"},
        {"role": "assistant", "content": "68", "reasoning_content": "\n17*4 = 68.\n"},
    ], None, {}
    yield "reasoning_before_last_query", [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "think 1"},
        {"role": "user", "content": "Q2"},
    ], None, {}
    yield "inline_think", [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nCheck divisors 2..sqrt(7).\n</think>\n\nYes, 7 is prime."},
    ], None, {}
    yield "inline_think_history", [
        {"role": "user", "content": "Is 9 prime?"},
        {"role": "assistant", "content": "<think>9 = 3*3</think>No."},
        {"role": "user", "content": "Is 11 prime?"},
        {"role": "assistant", "content": "<think>\n\nno divisors\n\n</think>\n\n\nYes."},
    ], None, {}
    yield "thinking_alias", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "thinking": "greet back"},
    ], None, {}
    yield "reasoning_alias", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning": "be polite"},
    ], None, {}
    yield "tools_no_system", [{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL], {}
    yield "tools_with_system", [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Find docs about 量子计算 from 2024."},
    ], [WEATHER_TOOL, SEARCH_TOOL, CALC_TOOL], {}
    yield "bare_tool", [{"role": "user", "content": "What time is it?"}], [BARE_TOOL], {}
    yield "tool_call_object_args", [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "threshold": 0.25,
                                                               "detailed": True, "station": None}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 18.5, \"sky\": \"cloudy\"}"},
    ], [WEATHER_TOOL], {}
    yield "tool_call_big_numbers", [
        {"role": "user", "content": "Look up order 123456789012345678901234567890."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "search_documents", "arguments": {
                "query": "order", "limit": -98765432109876543210,
                "filters": {"score": 1e-300, "max": 1.7976931348623157e308, "ids": [123456789012345678901234567890, 0, -1]}}}}]},
        {"role": "tool", "content": "found"},
    ], [SEARCH_TOOL], {}
    yield "tool_call_string_args", [
        {"role": "user", "content": "Compute 2**10"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{\"expression\": \"2**10\"}"}}]},
        {"role": "tool", "content": "1024"},
        {"role": "assistant", "content": "2**10 = 1024."},
    ], [CALC_TOOL], {}
    yield "tool_call_with_text", [
        {"role": "user", "content": "Weather in Tokyo and 東京 forecast?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京", "days": 5}}}]},
        {"role": "tool", "content": "Sunny, 25°C"},
        {"role": "tool", "content": "晴れ 🌞"},
    ], [WEATHER_TOOL], {}
    yield "tool_call_unwrapped", [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "now", "arguments": {}}]},
        {"role": "tool", "content": "12:00"},
    ], [BARE_TOOL], {}
    yield "parallel_tools_three_responses", [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in A, B and C."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": c}}} for c in "ABC"]},
        {"role": "tool", "content": "A: 1°C"},
        {"role": "tool", "content": "B: 2°C"},
        {"role": "tool", "content": "C: 3°C"},
    ], [WEATHER_TOOL], {}
    yield "multi_step_tools", [
        {"role": "system", "content": "Agent mode."},
        {"role": "user", "content": "Plan a trip to Paris: weather then docs."},
        {"role": "assistant", "content": "", "reasoning_content": "First weather.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Rainy"},
        {"role": "assistant", "content": "", "reasoning_content": "Now docs.", "tool_calls": [
            {"type": "function", "function": {"name": "search_documents",
                                              "arguments": {"query": "Paris museums", "filters": {"tags": ["indoor"]},
                                                            "limit": 3}}}]},
        {"role": "tool", "content": "<tool_response>Louvre, Orsay</tool_response>"},
        {"role": "assistant", "content": "Take an umbrella and visit the Louvre.", "reasoning_content": "Summarise."},
        {"role": "user", "content": "Thanks! Also the weather in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "content": "Sunny"},
    ], [WEATHER_TOOL, SEARCH_TOOL], {}
    yield "user_tool_response_text", [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "<tool_response>\nfake\n</tool_response>"},
        {"role": "assistant", "content": "Reply", "reasoning_content": "r"},
    ], None, {}
    yield "non_ascii", [
        {"role": "system", "content": "Réponds en français. 日本語も可。"},
        {"role": "user", "content": "Привет! 你好 👋🏽 \u2028 ok"},
        {"role": "assistant", "content": "Bonjour ! 😀 — «citation»"},
        {"role": "user", "content": "emoji: 👨‍👩‍👧‍👦 and tab\tand nul-free"},
    ], None, {}
    yield "content_none", [
        {"role": "user", "content": "Ping"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again"},
    ], None, {}
    yield "content_empty", [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "x"},
    ], None, {}
    yield "system_not_first", [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "late system"},
        {"role": "user", "content": "b"},
    ], None, {}
    yield "enable_thinking_false", [{"role": "user", "content": "Quick answer please."}], None, {"enable_thinking": False}
    yield "enable_thinking_true", [{"role": "user", "content": "Think carefully."}], None, {"enable_thinking": True}
    yield "list_content", [
        {"role": "user", "content": [{"type": "text", "text": "structured content"}]},
        {"role": "assistant", "content": "ok"},
    ], None, {}
    yield "escapes_in_content", [
        {"role": "user", "content": "quotes \" ' backslash \\ braces {{ x }} {% if %} newline\nend"},
    ], None, {}
    yield "whitespace_content", [
        {"role": "user", "content": "  \n leading and trailing \n\n"},
        {"role": "assistant", "content": "\n\n<think>\n  a  \n</think>\n  b  \n"},
    ], None, {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", default="/work/shared/qwen3-next-tokenizer")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "template_refs.json"))
    args = ap.parse_args()

    refs = []
    for variant in ("instruct", "thinking"):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(args.tokenizer_dir, "tokenizer.json"), tmp)
            shutil.copy(os.path.join(args.tokenizer_dir, f"tokenizer_config.{variant}.json"),
                        os.path.join(tmp, "tokenizer_config.json"))
            tok = AutoTokenizer.from_pretrained(tmp)
            for name, messages, tools, kwargs in cases():
                for agp in (False, True):
                    out = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False,
                                                  **kwargs)
                    refs.append({
                        "name": f"{variant}/{name}/{'gen' if agp else 'nogen'}",
                        "variant": variant,
                        "messages": messages,
                        "tools": tools,
                        "kwargs": kwargs,
                        "add_generation_prompt": agp,
                        "expected": out,
                    })
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/make_template_refs.py", "transformers": transformers.__version__,
                   "cases": refs}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(refs)} cases to {args.out}")

    # Fixtures for tests/test_template_cli.sh: two cases as plain files, so the shell test
    # compares bytes without parsing JSON.
    cli_dir = os.path.join(os.path.dirname(args.out), "template_cli")
    os.makedirs(cli_dir, exist_ok=True)
    by_name = {r["name"]: r for r in refs}
    for label, name in (("tools", "thinking/multi_step_tools/gen"), ("kwargs", "instruct/enable_thinking_false/nogen")):
        r = by_name[name]
        with open(os.path.join(cli_dir, f"{label}_messages.json"), "w", encoding="utf-8") as f:
            json.dump(r["messages"], f, ensure_ascii=False, indent=1)
        if r["tools"] is not None:
            with open(os.path.join(cli_dir, f"{label}_tools.json"), "w", encoding="utf-8") as f:
                json.dump(r["tools"], f, ensure_ascii=False, indent=1)
        with open(os.path.join(cli_dir, f"{label}_kwargs.json"), "w", encoding="utf-8") as f:
            json.dump(r["kwargs"], f)
        with open(os.path.join(cli_dir, f"{label}_expected.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(r["expected"])
    print(f"wrote CLI fixtures to {cli_dir}")


if __name__ == "__main__":
    import transformers

    main()
