"""logit_bias on /v1/completions and /v1/chat/completions (greedy). Adding a constant to a
token's logit adds the same constant to its log-probability (the normaliser is shared), so
the closed form is: with bias b on token t, greedy picks t iff logprob(t) + b exceeds every
other token's logprob. The reported logprobs are those of the raw (unbiased) logits."""
import requests

from conftest import auth

PROMPT = "Once upon a time"


def tokenize(url, text):
    return requests.post(url + "/tokenize", headers=auth(), json={"content": text}, timeout=10).json()["tokens"]


def detokenize(url, ids):
    return requests.post(url + "/detokenize", headers=auth(), json={"tokens": ids}, timeout=10).json()["prompt"]


def test_plus_100_forces_the_token(client, url):
    ids = tokenize(url, PROMPT)
    base = client.completions.create(model="m", prompt=ids, max_tokens=1, temperature=0,
                                     extra_body={"ignore_eos": True})
    t = tokenize(url, " castle")[-1]
    assert detokenize(url, [t]) != base.choices[0].text  # not the token greedy picks anyway
    n = 6
    r = client.completions.create(model="m", prompt=ids, max_tokens=n, temperature=0, logprobs=1,
                                  logit_bias={str(t): 100}, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert r.choices[0].text == detokenize(url, [t] * n)
    for tok, tok_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert tok == detokenize(url, [t])
        # closed form: t's raw logprob + 100 beats the best unbiased token
        assert tok_lp + 100 > max(top.values())
    # chat takes it too
    c = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=n,
                                       temperature=0, logit_bias={str(t): 100}, extra_body={"ignore_eos": True})
    assert c.choices[0].message.content == detokenize(url, [t] * n)


def test_minus_100_removes_the_greedy_token(client, url):
    ids = tokenize(url, PROMPT)
    base = client.completions.create(model="m", prompt=ids, max_tokens=1, temperature=0, logprobs=5,
                                     extra_body={"ignore_eos": True})
    g_text = base.choices[0].text
    ranked = list(base.choices[0].logprobs.top_logprobs[0].items())  # most likely first
    assert ranked[0][0] == g_text
    g = tokenize(url, g_text)
    assert len(g) == 1 and detokenize(url, g) == g_text
    # the gap to the runner-up is far below 100, so the runner-up must win
    assert ranked[0][1] - ranked[1][1] < 100
    r = client.completions.create(model="m", prompt=ids, max_tokens=1, temperature=0,
                                  logit_bias={str(g[0]): -100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text != g_text
    assert r.choices[0].text == ranked[1][0]
