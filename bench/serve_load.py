#!/usr/bin/env python3
"""serve_load.py - load test of `qnext serve` on loopback (bounded in requests and time).

Starts the server on a free port, then for each concurrency level (default 1, 4, 16) runs
that many client threads, each sending streaming chat requests back to back, and reports
requests/s, output tokens/s, p50/p99 time to first token (TTFT) and inter-token latency
(ITL), plus the server's RSS before and after the load. Then the conversation-cache
benchmark: TTFT of a second turn on top of a ~N-token history, cold (the server has never
seen the history) versus warm (turn 1 was just served, so only the new turn is prefilled).

  python3 bench/serve_load.py -m MODEL_DIR [--bin build/qnext] [--levels 1,4,16]
        [--requests-per-client 4] [--max-tokens 32] [--history 4096] [--threads 0]
        [--soak SECONDS --soak-streams N] [--no-cache-bench]

--soak keeps N streaming clients busy for SECONDS after the levels and samples the server's
memory every 30 s: VmRSS (which includes the memory-mapped weights once they are touched)
and RssAnon (the server's own heap: KV caches, states, conversation cache), so growth over
time shows up as RssAnon climbing after the first minutes.

Only the Python standard library and `requests` are used."""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import requests


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mb(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cache_metrics(url):
    """The server's conversation-cache and C-heap gauges from /metrics."""
    out = {}
    try:
        for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
            for k in ("qnext_cache_snapshot_bytes", "qnext_cache_contexts", "qnext_heap_in_use_bytes",
                      "qnext_heap_free_bytes"):
                if line.startswith(k + " "):
                    out[k] = float(line.split()[1])
    except requests.RequestException:
        pass
    return out


def soak(url, pid, streams, seconds, max_tokens, timeout):
    """streams clients send requests back to back until the deadline; memory sampled every 30 s."""
    stop = time.time() + seconds
    done, toks, errors = [0], [0], []
    lock = threading.Lock()

    def client(ci):
        k = 0
        while time.time() < stop:
            msgs = [{"role": "user", "content": f"Soak client {ci} request {k}: write about the number {ci * 31 + k}."}]
            k += 1
            try:
                _, _, n, _ = stream_chat(url, msgs, max_tokens, timeout)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                done[0] += 1
                toks[0] += n

    def sample(t):
        return {"t_s": t, "rss_mb": rss_mb(pid), "anon_mb": rss_mb(pid, "RssAnon"), **cache_metrics(url)}

    samples = [sample(0)]
    t0 = time.time()
    th = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in th:
        t.start()
    while any(t.is_alive() for t in th):
        time.sleep(1)
        if time.time() - t0 >= 30 * len(samples):
            samples.append(sample(round(time.time() - t0)))
            print(json.dumps({"soak": samples[-1], "requests": done[0], "tokens": toks[0]}), flush=True)
    for t in th:
        t.join()
    samples.append(sample(round(time.time() - t0)))
    return {"streams": streams, "seconds": seconds, "requests": done[0], "errors": len(errors),
            "out_tokens": toks[0], "samples": samples}


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def stream_chat(url, messages, max_tokens, timeout):
    """One streaming request: returns (ttft_s, [inter-token gaps], completion_tokens, cached_tokens)."""
    t0 = time.perf_counter()
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    r = requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=timeout)
    r.raise_for_status()
    ttft, last, gaps, usage = None, None, [], {}
    for line in r.iter_lines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        ch = ev.get("choices") or []
        if not ch or "delta" not in ch[0]:
            continue
        d = ch[0]["delta"]
        if "role" in d:  # the first chunk is sent at admission, before any token
            continue
        if not (d.get("content") or d.get("reasoning_content") or d.get("tool_calls")):
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = now - t0
        else:
            gaps.append(now - last)
        last = now
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ttft, gaps, usage.get("completion_tokens", 0), cached


def load_level(url, conc, per_client, max_tokens, timeout):
    ttfts, gaps, toks, errors = [], [], [0], []
    lock = threading.Lock()

    def client(ci):
        for k in range(per_client):
            msgs = [{"role": "user", "content": f"Client {ci} request {k}: tell me a story about the number {ci * 7 + k}."}]
            try:
                t, g, n, _ = stream_chat(url, msgs, max_tokens, timeout)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                if t is not None:
                    ttfts.append(t)
                gaps.extend(g)
                toks[0] += n

    t0 = time.perf_counter()
    th = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    n_req = conc * per_client - len(errors)
    return {"concurrency": conc, "requests": n_req, "errors": len(errors), "wall_s": wall,
            "req_per_s": n_req / wall, "out_tok_per_s": toks[0] / wall,
            "ttft_p50_ms": 1e3 * pct(ttfts, 50), "ttft_p99_ms": 1e3 * pct(ttfts, 99),
            "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99)}


def history_messages(tag, n_words):
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge "
             "boxing matches near the old river bank ").split()
    text = " ".join(words[i % len(words)] for i in range(n_words))
    return [{"role": "system", "content": f"{tag} You are a helpful assistant."},
            {"role": "user", "content": "Here is a long document:\n" + text},
            {"role": "assistant", "content": "I have read the document."}]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--bin", default="build/qnext")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--history", type=int, default=4096, help="target tokens of the cache benchmark's history")
    ap.add_argument("--ctx", type=int, default=0, help="--ctx for the server (default: history + 512)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--soak", type=float, default=0, help="seconds of sustained load after the levels")
    ap.add_argument("--soak-streams", type=int, default=16)
    ap.add_argument("--no-cache-bench", action="store_true")
    ap.add_argument("--server-args", default="", help="extra arguments for qnext serve, e.g. '--cache-mb 512'")
    a = ap.parse_args()

    levels = [int(x) for x in a.levels.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ctx = a.ctx or a.history + 512
    cmd = [a.bin, "serve", "-m", a.model, "--port", str(port), "--parallel", str(max(levels)), "--ctx", str(ctx),
           "-t", str(a.threads), "--queue", "256"] + a.server_args.split()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            sys.exit("server did not start")
        results = {"command": " ".join(cmd), "levels": []}
        results["rss_start_mb"] = rss_mb(proc.pid)
        stream_chat(url, [{"role": "user", "content": "warm up"}], 4, a.timeout)
        for c in levels:
            r = load_level(url, c, a.requests_per_client, a.max_tokens, a.timeout)
            r["rss_after_mb"] = rss_mb(proc.pid)
            results["levels"].append(r)
            print(json.dumps(r), flush=True)
        results["rss_after_load_mb"] = rss_mb(proc.pid)
        if a.soak > 0:
            results["soak"] = soak(url, proc.pid, a.soak_streams, a.soak, a.max_tokens, a.timeout)
            print(json.dumps({"soak_summary": {k: v for k, v in results["soak"].items() if k != "samples"}}), flush=True)
        if a.no_cache_bench:
            results["rss_end_mb"] = rss_mb(proc.pid)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(results, f, indent=1)
            return

        # conversation cache: turn 2 on a long history, cold vs warm
        tok = requests.post(url + "/tokenize", json={"messages": history_messages("X", 100)}, timeout=60).json()
        per_word = max(0.5, (tok["count"] - 20) / 100.0)
        n_words = int((a.history - 60) / per_word)
        turn2 = {"role": "user", "content": "Now summarise it in one sentence."}
        cold_msgs = history_messages("Cold.", n_words) + [turn2]
        t_cold, _, _, cached_cold = stream_chat(url, cold_msgs, 4, a.timeout)
        warm_hist = history_messages("Warm.", n_words)
        # turn 1: the history up to its last user message, answered by the server
        t1, _, _, _ = stream_chat(url, warm_hist[:2], 4, a.timeout)
        t_warm, _, _, cached_warm = stream_chat(url, warm_hist + [turn2], 4, a.timeout)
        n_hist = requests.post(url + "/tokenize", json={"messages": cold_msgs}, timeout=60).json()["count"]
        results["cache"] = {"history_tokens": n_hist, "ttft_cold_ms": 1e3 * t_cold, "ttft_warm_ms": 1e3 * t_warm,
                            "cached_tokens_cold": cached_cold, "cached_tokens_warm": cached_warm,
                            "turn1_ttft_ms": 1e3 * t1}
        print(json.dumps(results["cache"]), flush=True)
        results["rss_end_mb"] = rss_mb(proc.pid)
        print(json.dumps({"rss_start_mb": results["rss_start_mb"], "rss_after_load_mb": results["rss_after_load_mb"],
                          "rss_end_mb": results["rss_end_mb"]}), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
