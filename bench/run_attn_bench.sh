#!/usr/bin/env bash
# run_attn_bench.sh - build and run the attention micro-benchmark (bench/attn_bench.c).
#
# Built here from the attention kernel sources with plain cc (not part of the CMake build),
# each SIMD file with its own flags as CMakeLists.txt does, into build/attn_bench.
# Usage: bench/run_attn_bench.sh [attn_bench args: -n keys -r rows -t kv_type -i iters, -w warm cache, -x skip the old tile, -P position-major rows]
# (QNEXT_ATTN_AMX=0 times the f32-product AVX-512 kernel instead of attn_amx for bf16/int8 caches)
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-cc}
OUT=build/attn_bench.obj
mkdir -p "$OUT"
rm -f "$OUT"/*.o
F="-O3 -g -fopenmp -Isrc -Iinclude"
AVX2="-mavx2 -mfma -mf16c"
AVX512="$AVX2 -mavx512f -mavx512bw -mavx512vl -mavx512dq"
K=src/kernels/cpu
$CC $F -c $K/attn_generic.c -o $OUT/attn_generic.o
$CC $F $AVX2 -c $K/attn_avx2.c -o $OUT/attn_avx2.o
$CC $F $AVX512 -c $K/attn_avx512.c -o $OUT/attn_avx512.o
$CC $F $AVX512 -mavx512bf16 -mavx512vbmi -mamx-tile -mamx-bf16 -mamx-int8 -c $K/attn_amx.c -o $OUT/attn_amx.o
$CC $F -march=native bench/attn_bench.c $OUT/attn_*.o -lm -o build/attn_bench
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
build/attn_bench "$@"
