"""n > 1: several choices for one request. Each choice is its own engine request with its own
sampler; with a seed, choice i draws with seed + i, so choice i of an n-request is exactly the
n = 1 answer for seed + i (which the tests compare), streamed or not. Usage counts the prompt
once and the completions of all choices; prompt token counts are checked against Hugging Face
`tokenizers` (test_api.ref_prompt_ids)."""
import json

import requests

from conftest import SLOW, auth
from test_api import HELLO, ref_prompt_ids


def test_chat_choices_are_seeded_single_answers(client):
    r = client.chat.completions.create(model="m", messages=HELLO, max_tokens=10, temperature=1.0, seed=11, n=3,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        one = client.chat.completions.create(model="m", messages=HELLO, max_tokens=10, temperature=1.0,
                                             seed=11 + c.index, extra_body={"ignore_eos": True})
        assert c.message.content == one.choices[0].message.content
        assert c.finish_reason == "length"
    assert len({c.message.content for c in r.choices}) > 1  # different seeds, different samples
    assert r.usage.prompt_tokens == len(ref_prompt_ids(HELLO))
    assert r.usage.completion_tokens == 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + 30
    assert len({r.id}) == 1 and r.id.startswith("chatcmpl-")


def test_chat_choices_streamed(client):
    plain = client.chat.completions.create(model="m", messages=HELLO, max_tokens=8, temperature=1.0, seed=5, n=2,
                                           extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(model="m", messages=HELLO, max_tokens=8, temperature=1.0, seed=5, n=2,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    text, finish, usage, ids = {0: "", 1: ""}, {}, [], set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage.append(chunk.usage)
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert text == {c.index: c.message.content for c in plain.choices}
    assert finish == {0: "length", 1: "length"}
    assert len(usage) == 1 and usage[0].completion_tokens == 16 and usage[0].prompt_tokens == plain.usage.prompt_tokens
    assert len(ids) == 1


def test_stream_has_one_done(url):
    r = requests.post(url + "/v1/chat/completions", headers=auth(), stream=True, timeout=60 * SLOW,
                      json={"model": "m", "messages": HELLO, "max_tokens": 4, "n": 3, "stream": True})
    events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]" and events.count(b"data: [DONE]") == 1
    finished = [c["index"] for e in events[:-1] for c in json.loads(e[6:])["choices"] if c.get("finish_reason")]
    assert sorted(finished) == [0, 1, 2]


def test_completion_choices(client):
    r = client.completions.create(model="m", prompt="Once upon", max_tokens=6, temperature=1.0, seed=2, n=2,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        one = client.completions.create(model="m", prompt="Once upon", max_tokens=6, temperature=1.0, seed=2 + c.index,
                                        extra_body={"ignore_eos": True})
        assert c.text == one.choices[0].text
    assert r.usage.completion_tokens == 12
