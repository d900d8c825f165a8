#!/usr/bin/env bash
# compare_llama.sh - prompt-processing and generation speed of qnext vs llama.cpp on the same GGUF, same threads,
# in one run, and the ratio qnext / llama.cpp.
#
# Usage: bench/compare_llama.sh GGUF [-t THREADS] [-p N_PROMPT] [-n N_GEN] [-r REPS] [-a ROUNDS]
#        (defaults: -t 2 -p 512 -n 128 -r 3 -a 1)
#        -a ROUNDS alternates the two engines ROUNDS times (llama.cpp first in odd rounds, qnext first in
#        even ones), prints each round's ratios and their median: on a machine whose memory speed moves in
#        phases of minutes (a VM), one run of each can land in different phases.
# Env:   LLAMA_CPP_DIR  llama.cpp checkout or build dir (default /work/llama.cpp); llama-bench is looked up as
#                       $LLAMA_CPP_DIR/build/bin/llama-bench, $LLAMA_CPP_DIR/bin/llama-bench, $LLAMA_CPP_DIR/llama-bench
#        QNEXT_BIN      qnext binary (default build/qnext)
#        QNEXT_ARGS     more arguments for qnext bench, e.g. "--repack" (llama.cpp repacks by default)
#
# What runs:
#   llama-bench -m GGUF -p N_PROMPT -n N_GEN -t THREADS -r REPS -o json
#   qnext bench -m GGUF -p N_PROMPT -n N_GEN -t THREADS -r REPS $QNEXT_ARGS
#
# Expected output formats (parsing is tolerant):
#   llama-bench -o json: a JSON array of objects with n_prompt, n_gen, avg_ts, stddev_ts (one per test).
#   qnext bench: either the same JSON, or a llama-bench-like markdown table in which each result row holds a
#   test name `ppN` / `tgN` followed somewhere later on the row by `T/S ± STDDEV` (`+-` and `+/-` are also
#   accepted; the stddev may be missing). qnext bench prints (2026-11-26):
#     | test           |              t/s |  GB/s |
#     | -------------- | ---------------- | ----- |
#     | pp512          |   45.12 ±   0.31 |       |
#     | tg128          |    6.02 ±   0.05 |  22.4 |
#   Lines that are not result rows (headers, logs on stderr) are ignored; the t/s value is the first number
#   after the test-name cell.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
GGUF=$1; shift
THREADS=2; NP=512; NG=128; REPS=3; ROUNDS=1
while [ $# -gt 0 ]; do
    case $1 in
        -t) THREADS=$2; shift 2 ;;
        -p) NP=$2; shift 2 ;;
        -n) NG=$2; shift 2 ;;
        -r) REPS=$2; shift 2 ;;
        -a) ROUNDS=$2; shift 2 ;;
        *) usage ;;
    esac
done
[ -f "$GGUF" ] || { echo "compare_llama: no such file: $GGUF" >&2; exit 1; }

LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-/work/llama.cpp}
LLAMA_BENCH=
for c in "$LLAMA_CPP_DIR/build/bin/llama-bench" "$LLAMA_CPP_DIR/bin/llama-bench" "$LLAMA_CPP_DIR/llama-bench"; do
    [ -x "$c" ] && { LLAMA_BENCH=$c; break; }
done
[ -n "$LLAMA_BENCH" ] || { echo "compare_llama: llama-bench not found under LLAMA_CPP_DIR=$LLAMA_CPP_DIR" >&2; exit 1; }
QNEXT_BIN=${QNEXT_BIN:-build/qnext}
[ -x "$QNEXT_BIN" ] || make >/dev/null

OUT=$(mktemp -d "${TMPDIR:-/tmp}/compare_llama.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

echo "model:   $GGUF"
echo "threads: $THREADS   prompt: $NP   gen: $NG   reps: $REPS   rounds: $ROUNDS   load avg: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "llama.cpp: $LLAMA_BENCH ($(git -C "$LLAMA_CPP_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "qnext:     $QNEXT_BIN ($(git rev-parse --short HEAD 2>/dev/null || echo '?')) ${QNEXT_ARGS:-}"

run_llama() {
    echo "round $1: running llama-bench ..." >&2
    if ! "$LLAMA_BENCH" -m "$GGUF" -p "$NP" -n "$NG" -t "$THREADS" -r "$REPS" -o json >"$OUT/llama.$1.json" 2>"$OUT/llama.err"; then
        echo "compare_llama: llama-bench failed:" >&2; tail -20 "$OUT/llama.err" >&2; exit 1
    fi
}
run_qnext() {
    echo "round $1: running qnext bench ..." >&2
    # shellcheck disable=SC2086 # QNEXT_ARGS is a list of words
    if ! "$QNEXT_BIN" bench -m "$GGUF" -p "$NP" -n "$NG" -t "$THREADS" -r "$REPS" ${QNEXT_ARGS:-} >"$OUT/qnext.$1.out" 2>"$OUT/qnext.err"; then
        echo "compare_llama: qnext bench failed:" >&2; tail -20 "$OUT/qnext.err" >&2; exit 1
    fi
}
for ((i = 1; i <= ROUNDS; i++)); do
    if ((i % 2)); then run_llama $i; run_qnext $i; else run_qnext $i; run_llama $i; fi
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, re, statistics, sys

def from_json(text):
    """{test: (t/s, stddev)} from llama-bench's -o json (or jsonl) output."""
    text = text.strip()
    rows = []
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except ValueError:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try: rows.append(json.loads(line))
                except ValueError: pass
    out = {}
    for r in rows:
        if not isinstance(r, dict) or "avg_ts" not in r:
            continue
        npr, ng = int(r.get("n_prompt", 0)), int(r.get("n_gen", 0))
        test = "pp%d" % npr if ng == 0 else ("tg%d" % ng if npr == 0 else "pp%d+tg%d" % (npr, ng))
        out[test] = (float(r["avg_ts"]), float(r.get("stddev_ts", 0.0)))
    return out

NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
ROW = re.compile(r"(?<![A-Za-z0-9_])((?:pp|tg)[0-9]+(?:\+tg[0-9]+)?)\b([^|]*)\|?(.*)$")

def from_table(text):
    """{test: (t/s, stddev)} from a llama-bench-like markdown table (tolerant, see the script header)."""
    if text.lstrip().startswith(("[", "{")):
        j = from_json(text)
        if j:
            return j
    out = {}
    for line in text.splitlines():
        m = ROW.search(line)
        if not m:
            continue
        rest = m.group(3) if m.group(3).strip() else m.group(2)
        v = re.search(NUM + r"\s*(?:±|\+/-|\+-)\s*" + NUM, rest)
        if v:
            mean, sd = float(v.group(1)), float(v.group(2))
        else:
            v = re.search(NUM, rest)
            if not v:
                continue
            mean, sd = float(v.group(1)), 0.0
        out[m.group(1)] = (mean, sd)
    return out

out, rounds = sys.argv[1], int(sys.argv[2])
ratios = {}
for i in range(1, rounds + 1):
    llama = from_json(open("%s/llama.%d.json" % (out, i)).read())
    qtext = open("%s/qnext.%d.out" % (out, i)).read()
    qnext = from_table(qtext)
    if not llama:
        sys.exit("compare_llama: no results parsed from llama-bench output")
    if not qnext:
        sys.exit("compare_llama: no pp/tg rows parsed from qnext bench output:\n" + qtext[-2000:])
    print()
    if rounds > 1:
        print("round %d (%s first):" % (i, "llama.cpp" if i % 2 else "qnext"))
    print("| test   | llama.cpp t/s     | qnext t/s         | qnext/llama.cpp |")
    print("|--------|-------------------|-------------------|-----------------|")
    for test in sorted(set(llama) | set(qnext), key=lambda t: (not t.startswith("pp"), t)):
        l, q = llama.get(test), qnext.get(test)
        fmt = lambda x: "%8.2f ± %6.2f" % x if x else "%17s" % "-"
        ok = l and q and l[0] > 0
        if ok:
            ratios.setdefault(test, []).append(q[0] / l[0])
        ratio = "%15.2f" % (q[0] / l[0]) if ok else "%15s" % "-"
        print("| %-6s | %s | %s | %s |" % (test, fmt(l), fmt(q), ratio))
if rounds > 1:
    print()
    print("| test   | rounds | median qnext/llama.cpp | min  | max  |")
    print("|--------|--------|------------------------|------|------|")
    for test in sorted(ratios, key=lambda t: (not t.startswith("pp"), t)):
        r = ratios[test]
        print("| %-6s | %6d | %22.2f | %4.2f | %4.2f |" % (test, len(r), statistics.median(r), min(r), max(r)))
PY
