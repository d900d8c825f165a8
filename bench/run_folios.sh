#!/usr/bin/env bash
# run_folios.sh - decode speed with a GGUF's page cache in small (4 KB) folios vs 2 MB folios, same binary,
# alternating, with the read-bandwidth probe after each (docs/PERF.md, fourteenth session).
#
# Each round and way: drop the file from the page cache (bench/bandwidth.c -f FILE -D), load it cold with a short
# `qnext bench` (with QNEXT_NO_THP=1 the weights' mapping is not advised MADV_HUGEPAGE, and qnext's scattered first
# touches leave the file in small folios; without it, a kernel with large folios in its page cache, Linux 6.16+ on
# ext4, reads 2 MB folios), report how much of the file a mapping now gets on huge pages, then time decode.
# Dropping the cache makes the next run of anything on this file read it from disk.
# Usage: bench/run_folios.sh MODEL.gguf [ROUNDS (2)] [THREADS (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
M=$1; ROUNDS=${2:-2}; T=${3:-2}
make >/dev/null
${CC:-cc} -O3 -march=native -fopenmp -Wall -Wextra bench/bandwidth.c -o build/bandwidth
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p')  kernel: $(uname -r)  commit: $(git rev-parse --short HEAD)"
for r in $(seq "$ROUNDS"); do
    for way in small huge; do
        build/bandwidth -f "$M" -D
        if [ $way = small ]; then QNEXT_NO_THP=1 build/qnext bench -m "$M" -p 0 -n 4 -r 1 -t "$T" >/dev/null 2>&1
        else build/qnext bench -m "$M" -p 0 -n 4 -r 1 -t "$T" >/dev/null 2>&1; fi
        pmd=$(build/bandwidth -f "$M" -n -r 1 -t "$T" | sed -n 's/^huge pages: //p')
        tg=$(build/qnext bench -m "$M" -p 0 -n 64 -r 3 -t "$T" 2>/dev/null | grep '^| tg64' | cut -d'|' -f3-4)
        probe=$(build/bandwidth -r 3 -t "$T" | sed -n 's/^threads [0-9]*: best \([0-9.]* GB\/s\).*/\1/p')
        echo "$(date -u +%H:%M:%S) $way folios: file on huge pages $pmd | tg64 t/s, GB/s:$tg | probe $probe"
    done
done
