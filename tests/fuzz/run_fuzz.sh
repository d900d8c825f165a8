#!/usr/bin/env bash
# run_fuzz.sh - builds the libFuzzer harnesses and runs each for a while.
#   tests/fuzz/run_fuzz.sh [seconds-per-target] [target...]    (default 60; gguf json jcon)
# Needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev).
# The committed seed corpora (tests/fuzz/corpus_*) are copied to a work directory, so
# the inputs a run discovers do not end up in the checkout; crashes are saved there too.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
shift || true
targets=${*:-gguf json jcon}
work=${QNEXT_FUZZ_DIR:-/tmp/qnext_fuzz}
mkdir -p "$work"
CC=${CC:-clang}
flags="-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Isrc"
for t in $targets; do
  case $t in
    gguf) srcs="src/model/gguf.c src/util/filemap.c src/kernels/cpu/quant.c" ;;
    json) srcs="src/util/json.c" ;;
    jcon) srcs="src/text/json_constraint.c src/util/json.c" ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  $CC $flags "tests/fuzz/fuzz_$t.c" $srcs -lm -o "$work/fuzz_$t"
  mkdir -p "$work/corpus_$t" "$work/crashes_$t"
  cp -n tests/fuzz/corpus_$t/* "$work/corpus_$t/" 2>/dev/null || true
  echo "== fuzz_$t for ${secs}s (corpus $work/corpus_$t)"
  "$work/fuzz_$t" "$work/corpus_$t" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
     -artifact_prefix="$work/crashes_$t/" -print_final_stats=1 2>&1 | tail -n 25
done
