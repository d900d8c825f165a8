#!/usr/bin/env bash
# run_depth.sh - the cost of context depth on generation, per KV cache type, in one run:
# the read-bandwidth probe, then for each cache type `qnext bench -d DEPTH`, whose repeats
# interleave tgN at depth 0 and at DEPTH (docs/PERF.md, "Attention on AMX tiles").
# Usage: bench/run_depth.sh MODEL.gguf [DEPTH (16384)] [REPS (4)] [KV types (q8 bf16)] [THREADS (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:?usage: bench/run_depth.sh MODEL.gguf [DEPTH] [REPS] [KV types] [THREADS]}
D=${2:-16384}
R=${3:-4}
KV=${4:-q8 bf16}
T=${5:-2}
echo "start $(date -u +%H:%M:%S) commit $(git rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$M" > /dev/null # the weights into the page cache
bench/run_bandwidth.sh -s 2048 -r 5 2>&1 | tail -3
for kv in $KV; do
  echo "== kv $kv $(date -u +%H:%M:%S)"
  build/qnext bench -m "$M" -p 0 -n 64 -r "$R" -t "$T" -d "$D" --kv-type "$kv" 2>&1 | tail -7
done
echo "end $(date -u +%H:%M:%S)"
