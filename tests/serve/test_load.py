"""Concurrency, client disconnects, the conversation cache and SIGTERM."""
import json
import os
import signal
import threading
import time

import openai
import requests

from conftest import MODEL_DIR, SLOW, auth, linked_model, metrics


def wait_for(cond, timeout):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_32_concurrent_streams(url, client):
    results, errors = [None] * 32, []

    def run(i):
        try:
            text, n = "", 0
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Request number {i}"}], max_tokens=12,
                stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            for ch in stream:
                if ch.choices:
                    text += ch.choices[0].delta.content or ""
                if ch.usage:
                    n = ch.usage.completion_tokens
            results[i] = n
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120 * SLOW)
    assert not errors, errors[:3]
    assert results == [12] * 32
    assert time.time() - t0 < 120 * SLOW
    assert wait_for(lambda: metrics(url)["qnext_slots_busy"] == 0, 10)


def test_disconnect_frees_slot(url):
    before = metrics(url)
    r = requests.post(url + "/v1/chat/completions", headers=auth(), stream=True, timeout=60,
                      json={"messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 100000,
                            "ignore_eos": True, "stream": True})
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: "):
            got += 1
        if got >= 5:
            break
    assert metrics(url)["qnext_slots_busy"] >= 1
    r.close()
    assert wait_for(lambda: metrics(url)["qnext_slots_busy"] == 0, 5)
    after = metrics(url)
    assert after["qnext_requests_cancelled_total"] >= before["qnext_requests_cancelled_total"] + 1
    # far fewer than max_tokens were generated
    assert after["qnext_generated_tokens_total"] - before["qnext_generated_tokens_total"] < 20000


def long_context_model(tmp_path):
    """The test model with a 64K context, so a generation outlasts the server's 100 ms
    disconnect check on any machine (at the fixture's 1024 tokens a fast machine can
    finish the whole context before the check, and the request ends by length)."""
    model = linked_model(tmp_path, "long", ("model.safetensors", "tokenizer.json", "tokenizer_config.json"))
    cfg = json.load(open(os.path.join(MODEL_DIR, "config.json")))
    cfg["max_position_embeddings"] = 65536
    (model / "config.json").write_text(json.dumps(cfg))
    return str(model)


def test_disconnect_non_streaming(start_server, tmp_path):
    import socket
    srv = start_server(["--parallel", "1", "--ctx", "65536"], env={"QNEXT_SERVE_MODEL": long_context_model(tmp_path)})
    url = srv.url
    before = metrics(url)
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    body = b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000, "ignore_eos": true}'
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n")
    s.sendall(head.encode() + body)
    assert wait_for(lambda: metrics(url)["qnext_slots_busy"] >= 1, 5)
    s.close()
    assert wait_for(lambda: metrics(url)["qnext_slots_busy"] == 0, 5)
    after = metrics(url)
    assert after["qnext_requests_cancelled_total"] >= before["qnext_requests_cancelled_total"] + 1
    # it was stopped by the disconnect, long before the context filled
    assert after["qnext_generated_tokens_total"] - before["qnext_generated_tokens_total"] < 60000


def test_conversation_cache(url, client):
    before = metrics(url)
    msgs = [{"role": "system", "content": "You are a terse assistant for cache tests."},
            {"role": "user", "content": "First question about caching, please answer."}]
    r1 = client.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    msgs2 = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                    {"role": "user", "content": "And a second one."}]
    r2 = client.chat.completions.create(model="m", messages=msgs2, max_tokens=8, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # at least the whole first prompt (system + user + the assistant header) came from the cache
    assert cached >= r1.usage.prompt_tokens - 3, (cached, r1.usage.prompt_tokens)
    assert cached < r2.usage.prompt_tokens
    after = metrics(url)
    assert after["qnext_cache_hits_total"] >= before["qnext_cache_hits_total"] + 1
    assert after["qnext_cache_cached_tokens_total"] >= before["qnext_cache_cached_tokens_total"] + cached
    # the cache must not change the answer: a fresh server-side prefill gives the same greedy text
    r3 = client.chat.completions.create(model="m", messages=msgs2, max_tokens=8, temperature=0)
    assert r3.choices[0].message.content == r2.choices[0].message.content


def test_sigterm_clean_exit(start_server):
    srv = start_server(["--drain", "1", "--parallel", "2"])
    body = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 100000, "ignore_eos": True,
            "stream": True}
    r = requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60 * SLOW)
    it = r.iter_lines()
    next(it)
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    rest = b"\n".join(l for l in it)
    assert rest.rstrip().endswith(b"data: [DONE]")  # the stream was ended properly, not cut
    assert srv.proc.wait(30 * SLOW) == 0, srv.output()
    assert time.time() - t0 < 15 * SLOW


def test_batched_equals_sequential(url, client):
    """Requests decoded together in one batch give the same tokens as one at a time (up to
    float-rounding near-ties, which are allowed only where the top two logprobs are within 1e-3)."""
    prompts = [f"Prompt {i}: " + "abc " * (3 + 5 * i) for i in range(6)]

    def run(p):
        r = client.completions.create(model="m", prompt=p, max_tokens=40, temperature=0, logprobs=2,
                                      extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        return lp.tokens, lp.token_logprobs, lp.top_logprobs

    seq = [run(p) for p in prompts]
    steps0 = metrics(url)["qnext_engine_steps_total"]
    par = [None] * len(prompts)
    threads = [threading.Thread(target=lambda i=i: par.__setitem__(i, run(prompts[i]))) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * SLOW)
    steps = metrics(url)["qnext_engine_steps_total"] - steps0
    assert all(p is not None for p in par)
    assert steps < len(prompts) * 40, steps  # one at a time would take 40 steps each: they were batched
    for (t1, l1, top1), (t2, l2, _) in zip(seq, par):
        for k in range(len(t1)):
            if t1[k] != t2[k]:
                lps = sorted(top1[k].values(), reverse=True)
                assert len(lps) == 2 and lps[0] - lps[1] < 1e-3, (k, t1, t2)
                break
            assert abs(l1[k] - l2[k]) < 1e-3, (k, l1[k], l2[k])
