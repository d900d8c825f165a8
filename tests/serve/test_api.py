"""Plain and streaming chat, completions, tokenize/detokenize, models, health, usage counts.
Prompt token counts are checked against Hugging Face `tokenizers` on the template rendered by
jinja2 the way transformers' apply_chat_template does (trim_blocks, lstrip_blocks)."""
import json
import os

import jinja2
import requests
import tokenizers

from conftest import KEY, MODEL_DIR, auth, metrics

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def ref_prompt_ids(messages):
    tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    cfg = json.load(open(os.path.join(MODEL_DIR, "tokenizer_config.json")))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(cfg["chat_template"]).render(messages=messages, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False).ids


def test_health_and_models(url, client):
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    models = client.models.list()
    assert len(models.data) == 1 and models.data[0].id == "model"


def test_chat_plain_usage_exact(client):
    r = client.chat.completions.create(model="model", messages=HELLO, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref_prompt_ids(HELLO))
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_stream_matches_plain(client):
    kw = dict(model="model", messages=HELLO, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_stream_ends_with_done(url):
    r = requests.post(url + "/v1/chat/completions", headers=auth(), stream=True, timeout=60,
                      json={"messages": HELLO, "max_tokens": 3, "stream": True})
    lines = [l for l in r.iter_lines() if l]
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert lines[-1] == b"data: [DONE]"
    assert all(l.startswith(b"data: ") for l in lines)


def test_seed_reproducible(client):
    kw = dict(model="model", messages=HELLO, max_tokens=10, temperature=1.0, top_p=0.9, seed=1234,
              presence_penalty=0.5, frequency_penalty=0.2, extra_body={"ignore_eos": True, "min_p": 0.01, "top_k": 50,
                                                                         "repetition_penalty": 1.1})
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_logprobs(client):
    r = client.chat.completions.create(model="model", messages=HELLO, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs.content
    assert len(lp) == 5
    for e in lp:
        assert len(e.top_logprobs) == 3
        assert e.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob


def test_stop_string(client):
    base = client.chat.completions.create(model="model", messages=HELLO, max_tokens=16, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(base) >= 4
    stop = base[2:4]
    r = client.chat.completions.create(model="model", messages=HELLO, max_tokens=16, temperature=0, stop=[stop],
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[:base.index(stop)]


def test_completions_string_and_ids(client, url):
    r = client.completions.create(model="model", prompt="Once upon a time", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    ids = tok.encode("Once upon a time", add_special_tokens=False).ids
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 6
    r2 = client.completions.create(model="model", prompt=ids, max_tokens=6, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.choices[0].text == r.choices[0].text
    chunks = list(client.completions.create(model="model", prompt=ids, max_tokens=6, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    r3 = client.completions.create(model="model", prompt=ids, max_tokens=4, temperature=0, logprobs=2,
                                   extra_body={"ignore_eos": True})
    assert len(r3.choices[0].logprobs.token_logprobs) == 4
    assert "".join(r3.choices[0].logprobs.tokens) == r3.choices[0].text


def test_tokenize_detokenize(url):
    text = "Hello world, tokenizers!"
    tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    ref = tok.encode(text, add_special_tokens=False).ids
    r = requests.post(url + "/tokenize", headers=auth(), json={"content": text}, timeout=10).json()
    assert r["tokens"] == ref and r["count"] == len(ref)
    r = requests.post(url + "/tokenize", headers=auth(), json={"messages": HELLO}, timeout=10).json()
    assert r["tokens"] == ref_prompt_ids(HELLO)
    d = requests.post(url + "/detokenize", headers=auth(), json={"tokens": ref}, timeout=10).json()
    assert d["prompt"] == tok.decode(ref, skip_special_tokens=False)


def test_metrics_text(url):
    m = metrics(url)
    for name in ("qnext_requests_total", "qnext_generated_tokens_total", "qnext_tokens_per_second",
                 "qnext_queue_length", "qnext_slots_busy", "qnext_cache_hits_total"):
        assert name in m
    assert m["qnext_slots_total"] == 4
    # glibc's heap gauges: the server holds at least its 4 slots' scratch buffers; absent under
    # ASan, whose allocator glibc's mallinfo2 does not see
    if os.environ.get("QNEXT_ASAN"):
        assert "qnext_heap_in_use_bytes" not in m
    else:
        assert m["qnext_heap_in_use_bytes"] > 0 and m["qnext_heap_free_bytes"] >= 0
