#!/usr/bin/env bash
# test_serve.sh - end-to-end tests of `qnext serve` with the official `openai` Python client
# (pytest, tests/serve/test_*.py). Assembles a model directory from the base_gqa fixture
# (vocab 512) and the 512-id tokenizer in tests/data/tok512, starts the server on a free
# loopback port with an API key, runs pytest, then stops the server with SIGTERM and checks
# that it exits cleanly (under ASan this also catches leaks).
set -u
cd "$(dirname "$0")/.."
BIN=${QNEXT_BIN:-build/qnext}
PY=${PYTHON:-python3}
if ! "$PY" -c "import openai, pytest, requests, jsonschema" 2>/dev/null; then
    echo "test_serve: needs the Python packages openai, pytest, requests and jsonschema (pip install openai pytest requests jsonschema)"
    exit 1
fi
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

MODEL="$TMP/model"
mkdir -p "$MODEL"
cp tests/fixtures/base_gqa/config.json tests/fixtures/base_gqa/model.safetensors "$MODEL/"
cp tests/data/tok512/tokenizer.json tests/data/tok512/tokenizer_config.json "$MODEL/"

PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
KEY="test-key-$RANDOM$RANDOM"
# the timeouts inside the tests are generous for ASan builds (QNEXT_ASAN=1)
"$BIN" serve -m "$MODEL" --port "$PORT" --parallel 4 --ctx 1024 --api-key "$KEY" --queue 64 \
    --max-body 65536 --cache-mb 64 -t 1 > "$TMP/server.log" 2>&1 &
SERVER_PID=$!
up=0
for i in $(seq 1 150); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null
    then up=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
done
if [ "$up" -ne 1 ]; then
    echo "test_serve: the server did not start"
    cat "$TMP/server.log"
    exit 1
fi

export QNEXT_SERVE_URL="http://127.0.0.1:$PORT" QNEXT_SERVE_KEY="$KEY" QNEXT_SERVE_MODEL="$MODEL" QNEXT_BIN="$BIN"
"$PY" -m pytest -q -p no:cacheprovider --durations=8 tests/serve 2>&1 | tail -n 40
rc=${PIPESTATUS[0]}

# The same model as a GGUF file (qnext quantize --type BF16 embeds the tokenizer and chat
# template): served straight from the file, it must answer exactly as the directory does
# (BF16 of bf16 weights is lossless; the directory's answers are checked by pytest above).
# And the directory with bf16 recurrent states (--state-type bf16): the same greedy answers as
# the f32 states of the first server (its logits stay within bf16's precision,
# tests/test_state_bf16.c).
if "$BIN" quantize -m "$MODEL" -o "$TMP/model.gguf" --type BF16 > "$TMP/quantize.log" 2>&1; then
    free_port() { "$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
    PORT2=$(free_port)
    "$BIN" serve -m "$TMP/model.gguf" --port "$PORT2" --parallel 2 --ctx 1024 -t 1 --kv-type f32 > "$TMP/server2.log" 2>&1 &
    PID2=$!
    PORT3=$(free_port)
    "$BIN" serve -m "$MODEL" --port "$PORT3" --parallel 2 --ctx 1024 -t 1 --state-type bf16 > "$TMP/server3.log" 2>&1 &
    PID3=$!
    "$PY" - "$PORT" "$PORT2" "$PORT3" "$KEY" <<'PYEOF'
import sys, time, requests
p1, p2, p3, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
for p in (p2, p3):
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{p}/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
def ask(port, path, body):
    r = requests.post(f"http://127.0.0.1:{port}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    r.raise_for_status()
    return r.json()
comp = {"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}
chat = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 12, "temperature": 0}
def counts(u):  # the first server has seen the requests before: its cached_tokens differ
    return u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]
for port, what in ((p2, "the GGUF file"), (p3, "bf16 recurrent states")):
    a, b = ask(p1, "/v1/completions", comp), ask(port, "/v1/completions", comp)
    assert a["choices"][0]["text"] == b["choices"][0]["text"], (what, a, b)
    assert counts(a["usage"]) == counts(b["usage"]), (what, a["usage"], b["usage"])
    a, b = ask(p1, "/v1/chat/completions", chat), ask(port, "/v1/chat/completions", chat)
    assert a["choices"][0]["message"] == b["choices"][0]["message"], (what, a, b)
    assert counts(a["usage"]) == counts(b["usage"]), (what, a["usage"], b["usage"])
    print(f"test_serve: {what}: the same answers as the model directory")
PYEOF
    [ $? -eq 0 ] || { echo "test_serve: GGUF or bf16-state serving differs"; tail -n 20 "$TMP/server2.log" "$TMP/server3.log"; rc=1; }
    kill -TERM "$PID2" "$PID3"; wait "$PID2"; wait "$PID3"
else
    echo "test_serve: qnext quantize failed"; cat "$TMP/quantize.log"; rc=1
fi

kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
src=$?
SERVER_PID=
if [ "$src" -ne 0 ]; then
    echo "test_serve: the server exited with status $src after SIGTERM"
    tail -n 40 "$TMP/server.log"
    rc=1
fi
if [ "$rc" -ne 0 ]; then echo "--- server log (tail)"; tail -n 20 "$TMP/server.log"; fi
exit "$rc"
