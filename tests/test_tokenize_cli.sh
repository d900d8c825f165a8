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

# Loading the 11 MB tokenizer.json dominates, so the calls are few: one plain call (the default
# contract), then all texts at once with -0 (NUL-separated in, one line of ids per text out),
# the same with --no-special, and all ids detokenized in one call per mode (decoding is byte
# concatenation, so the reference texts concatenate).
: > "$TMP/all.in"; : > "$TMP/all.ids"; : > "$TMP/all.ns"; : > "$TMP/all.dec"; all_ids=""
for txt in "$TMP"/*.txt; do
    k=${txt%.txt}
    cat "$txt" >> "$TMP/all.in"; printf '\0' >> "$TMP/all.in"
    cat "$k.ids" >> "$TMP/all.ids"; cat "$k.ns" >> "$TMP/all.ns"; cat "$k.dec" >> "$TMP/all.dec"
    all_ids="$all_ids $(cat "$k.ids")"
done
checks=$((checks + 1))
"$BIN" tokenize -m "$DIR" < "$TMP/0.txt" > "$TMP/0.got" 2> "$TMP/err" || { echo "FAIL: tokenize exited non-zero"; cat "$TMP/err"; fail=$((fail + 1)); }
cmp -s "$TMP/0.got" "$TMP/0.ids" || { echo "FAIL: tokenize $(head -c 60 "$TMP/0.txt")"; echo " want $(cat "$TMP/0.ids")"; echo " got  $(cat "$TMP/0.got")"; fail=$((fail + 1)); }
for mode in "" "--no-special"; do
    want="$TMP/all.ids"; [ -n "$mode" ] && want="$TMP/all.ns"
    checks=$((checks + 1))
    "$BIN" tokenize -m "$DIR" -0 $mode < "$TMP/all.in" > "$TMP/all.got" 2> "$TMP/err" || { echo "FAIL: tokenize -0 $mode exited non-zero"; cat "$TMP/err"; fail=$((fail + 1)); continue; }
    if ! cmp -s "$TMP/all.got" "$want"; then
        echo "FAIL: tokenize -0 $mode differs from the reference ids:"; diff "$want" "$TMP/all.got" | head -6; fail=$((fail + 1))
    fi
done
for mode in "" "--stream"; do
    checks=$((checks + 1))
    "$BIN" detokenize -m "$DIR" --ids "$all_ids" $mode > "$TMP/all.text" 2> "$TMP/err" || { echo "FAIL: detokenize $mode exited non-zero"; cat "$TMP/err"; fail=$((fail + 1)); continue; }
    cmp -s "$TMP/all.text" "$TMP/all.dec" || { echo "FAIL: detokenize $mode differs from the reference decode"; fail=$((fail + 1)); }
done

# Bad usage fails with a message (the empty string is covered by test_tokenizer.c).
checks=$((checks + 1))
if "$BIN" tokenize -m "$TMP/nonexistent" < /dev/null > /dev/null 2> "$TMP/err"; then echo "FAIL: missing tokenizer accepted"; fail=$((fail + 1)); fi
grep -q tokenizer.json "$TMP/err" || { echo "FAIL: missing-file message does not name tokenizer.json"; fail=$((fail + 1)); }
checks=$((checks + 1))
if "$BIN" detokenize -m "$DIR" --ids "1 x 2" > /dev/null 2>&1; then echo "FAIL: malformed ids accepted"; fail=$((fail + 1)); fi

echo "test_tokenize_cli: $checks checks, $fail failed"
[ "$fail" -eq 0 ]
