#!/usr/bin/env bash
# run_attn_bench.sh - build and run the attention micro-benchmark (bench/attn_bench.c).
#
# Built here with plain cc (not part of the CMake build) against the library `make` builds,
# so the kernels are the ones the engine runs, compiled with CMakeLists.txt's flags.
# Usage: bench/run_attn_bench.sh [attn_bench args: -n keys -r rows -t kv_type -i iters, -s query scale, -w warm cache, -x skip the old tile, -P position-major rows, -R rows never tiled, -H the K/V on 2 MB pages]
# (QNEXT_ATTN_AMX=0 QNEXT_ATTN_BF16=0 QNEXT_ATTN_VNNI=0 times the f32-product AVX-512 kernel for bf16/int8
# caches instead of attn_amx, attn_bf16 and attn_vnni)
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-cc}
make >/dev/null
$CC -O3 -g -fopenmp -Isrc -Iinclude -march=native bench/attn_bench.c build/libqnext.a -lm -o build/attn_bench
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
build/attn_bench "$@"
