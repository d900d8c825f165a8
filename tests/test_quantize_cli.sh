#!/usr/bin/env bash
# The command-line contract of `qnext quantize` and `qnext eval`: a converted fixture runs and
# gives the transformers greedy continuation (BF16 exactly as the safetensors); eval of a BF16
# file against its checkpoint is exact (KL 0, full agreement, equal perplexity) and its
# perplexity equals exp(mean NLL) computed from the fixture's transformers logits; bad input
# gets one error line and a non-zero exit; --act-bits 16 matches the reference kernels.
set -u
Q=${QNEXT_BIN:-build/qnext}
fx=tests/fixtures/base_gqa
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
tmp=$(mktemp -d); trap 'rm -rf $tmp' EXIT

prompt=$(python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/ref.json'))['prompt'])))")
greedy=$(python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/ref.json'))['greedy'])))")
n=$(echo $greedy | wc -w)

# quantize: every type writes a file that loads; BF16 generates the reference continuation
for t in BF16 Q8_0 Q6_K Q5_K_M Q4_K_M; do
  $Q quantize -m $fx -o $tmp/m.$t.gguf --type $t 2> $tmp/log.$t && ok || bad "quantize $t: $(tail -1 $tmp/log.$t)"
  grep -q "tensors,.*($t)" $tmp/log.$t && ok || bad "quantize $t: no summary line on stderr"
done
out=$($Q generate -m $tmp/m.BF16.gguf --ids "$prompt" -n $n --temp 0 --kv-type f32)
[ "$out" = "$greedy" ] && ok || bad "BF16 GGUF generate: got '$out' want '$greedy'"

# eval: BF16 against its own checkpoint is exact; the perplexity is the transformers one
echo "$prompt" > $tmp/ids.txt
c=$(echo $prompt | wc -w)
j=$($Q eval -m $tmp/m.BF16.gguf --ref $fx --ids $tmp/ids.txt -c $c --json) && ok || bad "eval BF16 failed"
python3 - "$j" "$fx/logits.npy" "$prompt" <<'PY' && ok || bad "eval BF16 numbers: $j"
import sys, json, numpy as np
d = json.loads(sys.argv[1]); lg = np.load(sys.argv[2]).astype(np.float64); ids = list(map(int, sys.argv[3].split()))
assert d["kl_mean"] == 0 and d["kl_max"] == 0 and d["top1_agree"] == 1 and d["ppl_model"] == d["ppl_ref"], d
lp = lg - lg.max(1, keepdims=True); lp -= np.log(np.exp(lp).sum(1, keepdims=True))
ppl = np.exp(-np.mean([lp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
assert abs(d["ppl_ref"] / ppl - 1) < 1e-4, (d["ppl_ref"], ppl)
assert d["tokens_scored"] == len(ids) - 1, d
PY
j=$($Q eval -m $tmp/m.Q4_K_M.gguf --ref $fx --ids $tmp/ids.txt -c $c --json) && ok || bad "eval Q4_K_M failed"
python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert 0 < d['kl_mean'] < 1 and 0 < d['top1_agree'] <= 1, d" "$j" \
  && ok || bad "eval Q4_K_M numbers: $j"
# --ref-kv-type: the same checkpoint with the same cache on both sides is exact; a bf16 cache
# against the f32 one differs a little (here: only the caches differ)
j=$($Q eval -m $fx --ref $fx --ids $tmp/ids.txt -c $c --kv-type bf16 --json) && ok || bad "eval bf16/bf16 failed"
python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert d['kl_max'] == 0 and d['top1_agree'] == 1, d" "$j" \
  && ok || bad "eval bf16 cache against bf16: $j"
j=$($Q eval -m $fx --ref $fx --ids $tmp/ids.txt -c $c --kv-type bf16 --ref-kv-type f32 --json) && ok || bad "eval bf16/f32 failed"
python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert 0 < d['kl_max'] < 1e-2, d" "$j" \
  && ok || bad "eval bf16 cache against f32: $j"

# --act-bits: Q8_0 in two activation passes gives the reference kernels' numbers (the plain C
# loops, f32 activations) to float rounding; one 8-bit pass (the default) is further off;
# the same file on both sides is exact with the same setting, not with 8 against 16
jr=$(QNEXT_KERNELS=reference $Q eval -m $tmp/m.Q8_0.gguf --ref $fx --ids $tmp/ids.txt -c $c --json) && ok || bad "eval Q8_0 reference failed"
ja=$($Q eval -m $tmp/m.Q8_0.gguf --ref $fx --ids $tmp/ids.txt -c $c --json) && ok || bad "eval Q8_0 failed"
j16=$($Q eval -m $tmp/m.Q8_0.gguf --ref $fx --ids $tmp/ids.txt -c $c --act-bits 16 --json) && ok || bad "eval Q8_0 --act-bits 16 failed"
j8=$($Q eval -m $tmp/m.Q8_0.gguf --ref $fx --ids $tmp/ids.txt -c $c --act-bits 8 --json) && ok || bad "eval Q8_0 --act-bits 8 failed"
python3 - "$jr" "$ja" "$j16" "$j8" <<'PY' && ok || bad "eval Q8_0 --act-bits numbers: $jr / $ja / $j16 / $j8"
import sys, json
r, a, b, e = (json.loads(v) for v in sys.argv[1:])
assert a == e, (a, e)
assert abs(b["kl_mean"] / r["kl_mean"] - 1) < 1e-3 and abs(b["ppl_model"] / r["ppl_model"] - 1) < 5e-4, (b, r)
assert abs(e["kl_mean"] - r["kl_mean"]) > 10 * abs(b["kl_mean"] - r["kl_mean"]), (e, b, r)
PY
j=$($Q eval -m $tmp/m.Q8_0.gguf --ref $tmp/m.Q8_0.gguf --ids $tmp/ids.txt -c $c --act-bits 8 --json) && ok || bad "eval Q8_0/Q8_0 failed"
python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert d['kl_max'] == 0 and d['top1_agree'] == 1, d" "$j" \
  && ok || bad "eval Q8_0 against itself, 8-bit activations: $j"
j=$($Q eval -m $tmp/m.Q8_0.gguf --ref $tmp/m.Q8_0.gguf --ids $tmp/ids.txt -c $c --act-bits 8 --ref-act-bits 16 --json) \
  && ok || bad "eval Q8_0 8/16 failed"
python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert 0 < d['kl_mean'] < 0.1, d" "$j" \
  && ok || bad "eval Q8_0 8-bit against 16-bit activations: $j"

# errors: one line, non-zero exit
expect_fail() { # want_rc, pattern, command...
  local want=$1 pat=$2; shift 2
  local err; err=$("$@" 2>&1 >/dev/null); local rc=$?
  [ $rc -eq $want ] && echo "$err" | grep -q -- "$pat" && ok || bad "'$*': rc $rc, '$err' (want $want, /$pat/)"
}
expect_fail 2 "needs -m, -o and --type" $Q quantize -m $fx -o $tmp/x.gguf
expect_fail 2 "unknown --type 'Q3_K'" $Q quantize -m $fx -o $tmp/x.gguf --type Q3_K
expect_fail 1 "dense MLP" $Q quantize -m tests/fixtures/dense_tied_yarn -o $tmp/x.gguf --type Q8_0
expect_fail 1 "not 'full attention every k-th layer'" $Q quantize -m tests/fixtures/v5_layer_types -o $tmp/x.gguf --type Q8_0
expect_fail 1 "config.json" $Q quantize -m $tmp/nonexistent -o $tmp/x.gguf --type Q8_0
[ ! -e $tmp/x.gguf ] && ok || bad "a failed conversion left $tmp/x.gguf"
expect_fail 2 "q4" $Q eval -m $fx --ref $fx --ids $tmp/ids.txt --ref-kv-type q4
expect_fail 2 "activation precision '12'" $Q eval -m $fx --ref $fx --ids $tmp/ids.txt --act-bits 12
expect_fail 2 "activation precision 'auto'" $Q bench -m $fx --act-bits auto
expect_fail 2 "one of --ids / --text" $Q eval -m $tmp/m.BF16.gguf --ref $fx
expect_fail 1 "fewer than one chunk" $Q eval -m $tmp/m.BF16.gguf --ref $fx --ids $tmp/ids.txt -c 4096
expect_fail 1 "vocabulary sizes differ" $Q eval -m $tmp/m.BF16.gguf --ref tests/fixtures/mha_sharded_mtp --ids $tmp/ids.txt -c 16

echo "test_quantize_cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
