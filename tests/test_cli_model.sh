#!/usr/bin/env bash
# The command-line contract of `qnext logits`, `generate` and `info`, driven as tools do,
# compared with the transformers references; and bad input gets one error line and a
# non-zero exit.
set -u
Q=${QNEXT_BIN:-build/qnext}
fx=tests/fixtures/base_gqa
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }

prompt=$(python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/ref.json'))['prompt'])))")
greedy=$(python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/ref.json'))['greedy'])))")
n=$(echo $greedy | wc -w)
tmp=$(mktemp -d); trap 'rm -rf $tmp' EXIT

# generate: prompt in one piece, then one token at a time; greedy ids on one line
out=$($Q generate -m $fx --ids "$prompt" -n $n --temp 0)
[ "$out" = "$greedy" ] && ok || bad "generate: got '$out' want '$greedy'"

# logits: float32 .npy [n_tokens, vocab] within 1e-4 of the reference
$Q logits -m $fx --ids "$prompt" -o $tmp/l.npy && ok || bad "logits failed"
python3 - "$tmp/l.npy" "$fx/logits.npy" <<'PY' && ok || bad "logits mismatch"
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
assert a.dtype == np.float32 and a.shape == b.shape, (a.dtype, a.shape, b.shape)
e = (np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max()
assert e < 1e-4, e
PY

# info prints the layer pattern and counts
$Q info -m $fx | grep -q "layer pattern:        DDDA" && ok || bad "info layer pattern"
$Q info -m $fx | grep -q "bytes read per token" && ok || bad "info bytes per token"

# bench: the rows llama-bench users expect, and with -d the depth-0 runs interleaved and the cost of depth
$Q bench -m $fx -p 8 -n 4 -d 16 -r 2 -t 1 >$tmp/bench.txt 2>&1 && ok || bad "bench failed: $(cat $tmp/bench.txt)"
for row in "| pp8 " "| fill d16 " "| tg4 " "| tg4 @ d16 " "depth 16: "; do
  grep -qF -- "$row" $tmp/bench.txt && ok || bad "bench output lacks '$row'"
done
# -s: S sessions decoding together, interleaved with one, and their ratio
$Q bench -m $fx -p 0 -n 4 -s 3 -r 2 -t 1 >$tmp/bench.txt 2>&1 && ok || bad "bench -s failed: $(cat $tmp/bench.txt)"
for row in "| tg4 x1 " "| tg4 x3 " "3 streams: "; do
  grep -qF -- "$row" $tmp/bench.txt && ok || bad "bench -s output lacks '$row'"
done

# --probe: a read probe before and after each generation repeat, one row per repeat with its fraction
$Q bench -m $fx -p 0 -n 4 -r 2 -t 1 --probe >$tmp/bench.txt 2>&1 && ok || bad "bench --probe failed: $(cat $tmp/bench.txt)"
grep -qF -- "tg4 against a read probe run just before and after each repeat (1 thread, 1 GiB):" $tmp/bench.txt && ok || bad "bench --probe lacks its table"
[ "$(grep -cE '^\|      [12] \| +[0-9.]+, +[0-9.]+ \| +[0-9.]+ \| +[0-9.]+ \| +[0-9.]+% \| +[0-9.]+% \|( changed)?$' $tmp/bench.txt)" = 2 ] && ok || bad "bench --probe rows: $(cat $tmp/bench.txt)"

# --repack on a Q8_0 GGUF: the matrices are repacked (where the CPU has AVX-512 VNNI) and the run works
q8=tests/data/gguf_models/base_gqa.Q8_0.gguf
$Q bench -m $q8 -p 8 -n 4 -s 2 -r 1 -t 1 --repack >$tmp/bench.txt 2>&1 && ok || bad "bench --repack failed: $(cat $tmp/bench.txt)"
grep -qF -- "| tg4 x2 " $tmp/bench.txt && ok || bad "bench --repack output lacks its rows"
if grep -q avx512_vnni /proc/cpuinfo 2>/dev/null; then
  grep -q "repacked [0-9]* Q8_0/Q4_K/Q5_K/Q6_K matrices" $tmp/bench.txt && ok || bad "bench --repack did not repack: $(cat $tmp/bench.txt)"
fi

# bad input: one line on stderr, exit code 1 or 2, no crash
expect_err() { # code pattern args...
  local code=$1 pat=$2; shift 2
  "$Q" "$@" >$tmp/out 2>$tmp/err; local rc=$?
  if [ $rc -ne $code ]; then bad "'$*' exited $rc, want $code"; return; fi
  if [ "$(wc -l <$tmp/err)" -ne 1 ] && [ $code -eq 1 ]; then bad "'$*' printed $(wc -l <$tmp/err) error lines"; return; fi
  grep -q -- "$pat" $tmp/err && ok || bad "'$*': stderr lacks '$pat': $(cat $tmp/err)"
}
expect_err 1 "config.json: cannot open" info -m $tmp/nothing
expect_err 2 "unknown option" logits -m $fx --bogus 1
expect_err 2 "not a non-negative token id" generate -m $fx --ids "1 x 3"
expect_err 1 "outside the vocabulary" logits -m $fx --ids "1 99999" -o $tmp/x.npy
expect_err 1 "context full" generate -m $fx --ids "1 2 3" -n 10 --ctx 5
expect_err 2 "unknown command" frobnicate
expect_err 2 "needs a value" generate -m $fx --ids
expect_err 2 "unknown option" bench -m $fx --bogus
expect_err 2 "is required" bench -p 8
expect_err 2 "not an integer in \[2, 256\]" bench -m $fx -s 1
expect_err 2 "state-type must be f32 or bf16" bench -m $fx --state-type f16
expect_err 2 "needs a value" run -m $fx --state-type
expect_err 2 "state-type must be f32 or bf16" run -m $fx --state-type q8 -p hi
# bf16 recurrent states: the session's memory line shows half the DeltaNet state
$Q bench -m $fx -p 8 -n 4 -r 1 -t 1 --state-type bf16 >$tmp/b16.txt 2>&1 && ok || bad "bench --state-type bf16 failed: $(cat $tmp/b16.txt)"
grep -qF "| tg4 " $tmp/b16.txt && ok || bad "bench --state-type bf16 lacks its tg row"

echo "test_cli_model: $pass passed, $fail failed"
[ $fail -eq 0 ]
