#!/usr/bin/env bash
# run_bandwidth.sh - build and run the memory read-bandwidth probe (bench/bandwidth.c).
#
# The probe is self-contained (not in the CMake build) and is compiled here with a plain
#   cc -O3 -march=native -fopenmp bench/bandwidth.c -o build/bandwidth
# Prints the CPU model, the load average (other processes on this 2-core machine skew the numbers; run it
# on an idle machine for the figures in docs/PERF.md) and best-of-N GB/s for 1 and 2 threads.
# Usage: bench/run_bandwidth.sh [bandwidth args, e.g. -s 4096 -r 20 -t 1,2]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
CC=${CC:-cc}
$CC -O3 -march=native -fopenmp -Wall -Wextra bench/bandwidth.c -o build/bandwidth
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p')"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
OMP_PROC_BIND=${OMP_PROC_BIND:-spread} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-active} build/bandwidth "$@"
