/* dot_bench.c - throughput of one dot kernel of the selected set: rows of a weight type against
 * T prepared activation rows, single thread, best of N passes. Rows that fit in L1/L2 measure the
 * kernel's arithmetic (cycles per 256-value block); many rows measure it streaming from memory.
 *
 * Built against the library (not part of the CMake build):
 *   make && cc -O2 -march=native -fopenmp -Isrc -Iinclude bench/dot_bench.c build/libqnext.a -lm -o build/dot_bench
 * Usage: build/dot_bench TYPE [ROWS (64)] [REPS (2000)] [T (1)] [N (2048)]
 *   TYPE is a ggml type name (Q4_K, Q5_K, Q6_K, Q8_0, ...); QNEXT_KERNELS=avx2|generic picks another set.
 *   Cycles are wall time times GHZ (env, default 3.4): set it to the core's clock. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 2 || quant_type_from_name(argv[1]) < 0) {
        fprintf(stderr, "usage: %s TYPE [ROWS] [REPS] [T] [N]\n", argv[0]);
        return 2;
    }
    const int type = quant_type_from_name(argv[1]);
    const long rows = argc > 2 ? atol(argv[2]) : 64;
    const int reps = argc > 3 ? atoi(argv[3]) : 2000, T = argc > 4 ? atoi(argv[4]) : 1;
    const int64_t n = argc > 5 ? atol(argv[5]) : 2048;
    const double ghz = getenv("GHZ") ? atof(getenv("GHZ")) : 3.4;
    const dot_kernels *k = dot_select();
    const dot_fn dot = dot_for_type(k, type);
    const dotm_fn dotm = dotm_for_type(k, type);
    const size_t rb = quant_row_bytes(type, n);
    const int at = dot_act_type_rows(k, type, T); /* T > 1: the multi-row kernel's */
    const size_t ab = at == QUANT_F32 ? (size_t)n * 4 : dot_act_row_bytes(at, n);
    if (rows < 1 || reps < 1 || T < 1 || T > DOTM_MAX_T || !rb || !ab || !dot || (T > 1 && !dotm)) {
        fprintf(stderr, "dot_bench: no %s kernel for these sizes (T <= %d; n a multiple of the block)\n", argv[1],
                DOTM_MAX_T);
        return 2;
    }
    unsigned char *w = aligned_alloc(64, (rb * rows + 63) / 64 * 64), *a = aligned_alloc(64, (ab * T + 63) / 64 * 64);
    float *f = malloc(n * sizeof(float));
    srand(1);
    for (long r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) f[i] = (rand() / (float)RAND_MAX - 0.5f) * (1 + i % 97);
        quant_quantize_row(type, f, w + r * rb, n);
    }
    for (int t = 0; t < T; t++) {
        for (int64_t i = 0; i < n; i++) f[i] = rand() / (float)RAND_MAX - 0.5f;
        if (at == QUANT_F32) for (int64_t i = 0; i < n; i++) ((float *)(a + t * ab))[i] = f[i];
        else dot_quantize_act_ref(at, f, a + t * ab, n);
    }
    volatile float sink = 0;
    float out[DOTM_MAX_T];
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        if (T == 1) for (long r = 0; r < rows; r++) sink += dot(w + r * rb, a, n);
        else for (long r = 0; r < rows; r++) { dotm(w + r * rb, a, ab, T, n, out); sink += out[0]; }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    const double blocks = rows * (double)n / 256;
    printf("%s %s: %ld rows of %lld, %d activation rows: %.2f us, %.2f GB/s of weights, %.2f cycles per 256 values "
           "at %.2f GHz\n", k->name, argv[1], rows, (long long)n, T, best * 1e6, rb * rows / best / 1e9,
           best * ghz * 1e9 / blocks, ghz);
    free(w); free(a); free(f);
    return 0;
}
