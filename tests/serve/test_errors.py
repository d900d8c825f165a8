"""Every error class answers an OpenAI-style error object with the right status; the API key
is enforced; the body size is limited; a full queue answers 429."""
import threading

import openai
import pytest
import requests

from conftest import SLOW, auth, metrics

MSG = [{"role": "user", "content": "hi"}]


def post(url, path, body=None, raw=None, headers=None):
    h = auth() if headers is None else headers
    if raw is not None:
        return requests.post(url + path, data=raw, headers={**h, "Content-Type": "application/json"}, timeout=30)
    return requests.post(url + path, json=body, headers=h, timeout=30)


def check_error(r, status, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    assert isinstance(e["message"], str) and e["message"]
    if param:
        assert e["param"] == param
    return e


@pytest.mark.parametrize("body,param", [
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "temperature": 3}, "temperature"),
    ({"messages": MSG, "temperature": -0.5}, "temperature"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "top_p": 1.5}, "top_p"),
    ({"messages": MSG, "min_p": 2}, "min_p"),
    ({"messages": MSG, "top_k": -5}, "top_k"),
    ({"messages": MSG, "presence_penalty": 9}, "presence_penalty"),
    ({"messages": MSG, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": "many"}, "max_tokens"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
    ({"messages": MSG, "stop": 7}, "stop"),
    ({"messages": MSG, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": MSG, "n": 0}, "n"),
    ({"messages": MSG, "n": 17}, "n"),
    ({"messages": MSG, "n": 1.5}, "n"),
    ({"messages": MSG, "tools": "none"}, "tools"),
    ({"messages": MSG, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": MSG, "tool_choice": 3}, "tool_choice"),
    ({"messages": MSG, "tool_choice": "required"}, "tool_choice"),  # and no tools
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"messages": MSG, "chat_template_kwargs": [1]}, "chat_template_kwargs"),
    ({"messages": MSG, "logit_bias": [5, 1]}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"-1": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"512": 1}}, "logit_bias"),  # the fixture's vocabulary is 512
    ({"messages": MSG, "logit_bias": {"99999999999": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"5": 100.5}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"5": -101}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"5": "up"}}, "logit_bias"),
])
def test_chat_bad_request(url, body, param):
    e = check_error(post(url, "/v1/chat/completions", body), 400, param)
    assert e["type"] == "invalid_request_error"


def test_invalid_json_and_non_object(url):
    check_error(post(url, "/v1/chat/completions", raw=b'{"messages": [}'), 400)
    check_error(post(url, "/v1/chat/completions", raw=b'[1, 2]'), 400)
    check_error(post(url, "/v1/completions", raw=b''), 400)
    check_error(post(url, "/v1/chat/completions", raw=b'{"messages": "\xff\xfe"}'), 400)


def test_completions_bad_request(url):
    check_error(post(url, "/v1/completions", {"prompt": 5}), 400, "prompt")
    check_error(post(url, "/v1/completions", {"prompt": [1, "a"]}), 400, "prompt")
    check_error(post(url, "/v1/completions", {"prompt": [100000]}), 400, "prompt")
    check_error(post(url, "/v1/completions", {"prompt": ""}), 400, "prompt")
    check_error(post(url, "/v1/completions", {}), 400, "prompt")
    check_error(post(url, "/v1/completions", {"prompt": "hi", "logit_bias": {"7x": 1}}), 400, "logit_bias")
    check_error(post(url, "/v1/completions", {"prompt": "hi", "logit_bias": {"600": 1}}), 400, "logit_bias")
    check_error(post(url, "/v1/completions", {"prompt": "hi", "logit_bias": {"5": 200}}), 400, "logit_bias")
    check_error(post(url, "/detokenize", {"tokens": [-1]}), 400, "tokens")
    check_error(post(url, "/tokenize", {"nothing": 1}), 400)


def test_prompt_longer_than_context(url, client):
    e = check_error(post(url, "/v1/completions", {"prompt": list(range(300)) * 4}), 400, "prompt")
    assert e["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 1200}])


def test_unknown_route_and_method(url):
    check_error(requests.get(url + "/v1/nothing", headers=auth(), timeout=10), 404)
    check_error(requests.post(url + "/v2/chat/completions", json={}, headers=auth(), timeout=10), 404)
    check_error(requests.get(url + "/v1/chat/completions", headers=auth(), timeout=10), 405)


def test_api_key(url):
    for h in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
              {"Authorization": auth()["Authorization"] + "x"}, {"Authorization": auth()["Authorization"][:-1]}):
        e = check_error(post(url, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1}, headers=h), 401)
        assert e["code"] == "invalid_api_key"
    check_error(requests.get(url + "/v1/models", timeout=10), 401)
    check_error(requests.get(url + "/metrics", timeout=10), 401)
    assert requests.get(url + "/health", timeout=10).status_code == 200  # health stays open
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bad", max_retries=0).models.list()


def test_body_too_large(url):
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * 70000 + b'"}]}'
    r = post(url, "/v1/chat/completions", raw=big)
    check_error(r, 413)

    def chunked():  # no Content-Length: the limit applies while reading
        yield big[:40000]
        yield big[40000:]
    r = requests.post(url + "/v1/chat/completions", data=chunked(), headers=auth(), timeout=30)
    check_error(r, 413)


def test_queue_full_429(start_server):
    srv = start_server(["--parallel", "1", "--queue", "0", "--ctx", "256"])
    body = {"messages": MSG, "max_tokens": 200, "ignore_eos": True, "stream": True}
    first = requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60 * SLOW)
    it = first.iter_lines()
    next(it)  # the slot is busy now
    r = requests.post(srv.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1}, timeout=30)
    e = check_error(r, 429)
    assert e["code"] == "queue_full"
    first.close()


def test_queue_full_wait(start_server):
    srv = start_server(["--parallel", "1", "--queue", "0", "--queue-full", "wait", "--ctx", "256"])
    body = {"messages": MSG, "max_tokens": 30, "ignore_eos": True, "stream": True}
    first = requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60 * SLOW)
    it = first.iter_lines()
    next(it)  # the only slot is busy
    results = []
    t = threading.Thread(target=lambda: results.append(requests.post(
        srv.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2, "ignore_eos": True},
        timeout=60 * SLOW)))
    t.start()
    rest = b"\n".join(it)  # the first finishes, then the waiting one gets the slot
    t.join(60 * SLOW)
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert results and results[0].status_code == 200, results and results[0].text
    assert results[0].json()["usage"]["completion_tokens"] == 2
