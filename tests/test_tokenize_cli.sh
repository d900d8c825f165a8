#!/usr/bin/env bash
# test_tokenize_cli.sh - the `qnext tokenize` / `qnext detokenize` contract, checked against the
# Hugging Face reference ids in tests/data/tokenizer_refs.json (python3 only reads that JSON).
set -u
BIN=${QNEXT_BIN:-build/qnext}
DIR=tests/data/qwen3-tokenizer
REFS=tests/data/tokenizer_refs.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0; checks=0

# Write a selection of reference cases as files: N.txt (raw text), N.ids, N.ns (ids with
# special-token text as plain text), N.dec (decoded text).
python3 - "$REFS" "$TMP" <<'EOF' || { echo "FAIL: cannot read $REFS"; exit 1; }
import json, sys
refs = json.load(open(sys.argv[1], encoding="utf-8"))
want = ["Hello, world!", "I'M HERE, YOU'RE THERE, WE'VE BEEN, THEY'LL GO, HE'D, IT'S, DON'T",
        "line1\r\nline2\r\n", "a  \n\n  b  ", "你好，世界！", "👨‍👩‍👧‍👦 family", "cafe\u0301",
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "a<think>b</think>c",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "مرحبا بالعالم، كيف حالك اليوم؟", "trailing  "]
cases = [c for c in refs["encode"] if c["text"] in want]
cases.append(refs["encode"][-40])  # one long random string
assert len(cases) == len(want) + 1, "reference cases missing"
for k, c in enumerate(cases):
    open("%s/%d.txt" % (sys.argv[2], k), "wb").write(c["text"].encode("utf-8"))
    open("%s/%d.ids" % (sys.argv[2], k), "w").write(" ".join(map(str, c["ids"])) + "\n")
    open("%s/%d.ns" % (sys.argv[2], k), "w").write(" ".join(map(str, c.get("ids_no_special", c["ids"]))) + "\n")
    open("%s/%d.dec" % (sys.argv[2], k), "wb").write(c["decoded"].encode("utf-8"))
EOF

for txt in "$TMP"/*.txt; do
    k=${txt%.txt}
    checks=$((checks + 1))
    "$BIN" tokenize -m "$DIR" < "$txt" > "$k.got" 2> "$k.err" || { echo "FAIL: tokenize exited non-zero on $txt"; cat "$k.err"; fail=$((fail + 1)); continue; }
    cmp -s "$k.got" "$k.ids" || { echo "FAIL: tokenize $(head -c 60 "$txt")"; echo " want $(cat "$k.ids")"; echo " got  $(cat "$k.got")"; fail=$((fail + 1)); }
    checks=$((checks + 1))
    "$BIN" tokenize -m "$DIR" --no-special < "$txt" > "$k.gotns" 2>/dev/null
    cmp -s "$k.gotns" "$k.ns" || { echo "FAIL: tokenize --no-special $(head -c 60 "$txt")"; fail=$((fail + 1)); }
    for mode in "" "--stream"; do
        checks=$((checks + 1))
        "$BIN" detokenize -m "$DIR" --ids "$(cat "$k.ids")" $mode > "$k.text" 2> "$k.err" || { echo "FAIL: detokenize $mode exited non-zero"; cat "$k.err"; fail=$((fail + 1)); continue; }
        cmp -s "$k.text" "$k.dec" || { echo "FAIL: detokenize $mode $(head -c 60 "$txt")"; fail=$((fail + 1)); }
    done
done

# Empty input prints an empty line; bad usage fails with a message.
checks=$((checks + 1))
[ "$("$BIN" tokenize -m "$DIR" < /dev/null)" = "" ] || { echo "FAIL: empty input"; fail=$((fail + 1)); }
checks=$((checks + 1))
if "$BIN" tokenize -m "$TMP/nonexistent" < /dev/null > /dev/null 2> "$TMP/err"; then echo "FAIL: missing tokenizer accepted"; fail=$((fail + 1)); fi
grep -q tokenizer.json "$TMP/err" || { echo "FAIL: missing-file message does not name tokenizer.json"; fail=$((fail + 1)); }
checks=$((checks + 1))
if "$BIN" detokenize -m "$DIR" --ids "1 x 2" > /dev/null 2>&1; then echo "FAIL: malformed ids accepted"; fail=$((fail + 1)); fi

echo "test_tokenize_cli: $checks checks, $fail failed"
[ "$fail" -eq 0 ]
