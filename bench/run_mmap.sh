#!/usr/bin/env bash
# run_mmap.sh - generation speed with the weights mapped from the page cache and read into
# memory (--no-mmap), for qnext and llama.cpp on the same GGUF files, threads and run, with the
# read-bandwidth probe (docs/PERF.md, "Mapped or read into memory").
# Usage: bench/run_mmap.sh GGUF... [env: THREADS (2) NGEN (128) REPS (3) LLAMA_CPP_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${THREADS:-2}; N=${NGEN:-128}; R=${REPS:-3}
LB=${LLAMA_CPP_DIR:-/work/llama.cpp}/build/bin/llama-bench
echo "start $(date -u +%H:%M:%S) commit $(git rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
bench/run_bandwidth.sh -s 2048 -r 5 2>&1 | grep "threads 2"
for M in "$@"; do
  echo "== $M"
  cat "$M" > /dev/null
  for mode in mmap no-mmap; do
    q=""; l=1; [ $mode = no-mmap ] && { q=--no-mmap; l=0; }
    echo "-- $mode $(date -u +%H:%M:%S)"
    [ -x "$LB" ] && "$LB" -m "$M" -p 0 -n "$N" -t "$T" -r "$R" -mmp $l 2>/dev/null | grep -E "tg$N" | sed 's/^/llama.cpp /'
    build/qnext bench -m "$M" -p 0 -n "$N" -t "$T" -r "$R" $q 2>&1 | grep -E "tg$N" | sed 's/^/qnext     /'
  done
done
bench/run_bandwidth.sh -s 2048 -r 5 2>&1 | grep "threads 2"
echo "end $(date -u +%H:%M:%S)"
