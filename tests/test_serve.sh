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
if ! "$PY" -c "import openai, pytest, requests" 2>/dev/null; then
    echo "test_serve: needs the Python packages openai, pytest and requests (pip install openai pytest requests)"
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
