/* gemm_float.c - prompt processing for float weights (f32, f16, bf16) with AVX-512.
 *
 * The vector path dots one weight row with one token at a time, which is load-bound: two
 * loads per fused multiply-add, and a bf16 row widened again for every token. Here a register
 * tile of 4 weight rows x up to 6 tokens (24 accumulators) widens each weight vector once and
 * reuses it for every token of the group, so the loop is bound by the FMA units.
 * Accumulation stays f32, so results match the reference to rounding (unlike the AMX path,
 * whose bf16 activations are kept for quantized weights). */
#include "kernels/cpu/gemm_float.h"

#include <string.h>

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <omp.h>

static inline __m512 load_w(int dtype, const void *row, int64_t k) {
    if (dtype == QN_F32) return _mm512_loadu_ps((const float *)row + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k));
    if (dtype == QN_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

static inline float load_w1(int dtype, const void *row, int64_t k) {
    if (dtype == QN_F32) return ((const float *)row)[k];
    uint16_t h = ((const uint16_t *)row)[k];
    return dtype == QN_BF16 ? qn_bf16_to_f32(h) : qn_f16_to_f32(h);
}

static inline void put(float *y, int64_t ldy, float *const *yrows, int t, int64_t r, float v) {
    if (yrows) yrows[t][r] = v;
    else y[(int64_t)t * ldy + r] = v;
}

int gemm_float_available(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c");
    }
    return ok;
}

int gemm_float_takes(const qn_tensor *W, int T) {
    return (W->dtype == QN_F32 || W->dtype == QN_F16 || W->dtype == QN_BF16) && T >= 4 && gemm_float_available();
}

/* Four weight rows (wr) against nt <= 6 tokens (xr), sums to out[i][j]: 4 x nt accumulators,
 * so each widened weight vector serves nt tokens and each token vector four rows. dtype and
 * nt are constants in each inlined copy, so the loop holds no type test and a group of fewer
 * tokens costs only its own FMAs (2048 x 2048 bf16 at 5 tokens: 316 -> 229 us in cache when
 * the tile stopped being always four tokens wide, PERF.md eighteenth session). Up to six
 * tokens a group means that an expert's ~5 tokens of a batched step read its rows once, not
 * once for four tokens and again, bound by the loads, for the fifth (512 x 2048 from memory
 * at 5 tokens: 110 -> 83-92 us, PERF.md twenty-second session). Software prefetch of the rows
 * ahead made no difference there. */
static inline __attribute__((always_inline)) void tile_rows(const int dtype, const void *const *wr,
                                                            const float *const *xr, int64_t Kv, const int nt,
                                                            float out[4][6]) {
    __m512 acc[4][6];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < Kv; k += 16) {
        __m512 xv[6], wv[4];
        for (int j = 0; j < nt; j++) xv[j] = _mm512_loadu_ps(xr[j] + k);
        for (int i = 0; i < 4; i++) wv[i] = load_w(dtype, wr[i], k);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < nt; j++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv[j], acc[i][j]);
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < nt; j++) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
}

/* One copy per type and group width. */
#define TILE_NT(DT)                                                                                            \
    switch (nt) {                                                                                              \
    case 6: tile_rows(DT, wr, xr, Kv, 6, o); break;                                                            \
    case 5: tile_rows(DT, wr, xr, Kv, 5, o); break;                                                            \
    case 4: tile_rows(DT, wr, xr, Kv, 4, o); break;                                                            \
    case 3: tile_rows(DT, wr, xr, Kv, 3, o); break;                                                            \
    case 2: tile_rows(DT, wr, xr, Kv, 2, o); break;                                                            \
    default: tile_rows(DT, wr, xr, Kv, 1, o); break;                                                           \
    }

static void tile_any(int dtype, const void *const *wr, const float *const *xr, int64_t Kv, int nt, float o[4][6]) {
    if (dtype == QN_BF16) { TILE_NT(QN_BF16) }
    else if (dtype == QN_F16) { TILE_NT(QN_F16) }
    else { TILE_NT(QN_F32) }
}

int gemm_float_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy, float *const *yrows) {
    if (!gemm_float_takes(W, T)) return 0;
    const int64_t K = W->cols, Kv = K & ~(int64_t)15;
    const int64_t nrb = (r1 - r0 + 3) / 4;
    /* tokens in ceil(T / 6) groups of near-equal width (16 -> 5 + 5 + 6) */
    const int ng = (T + 5) / 6;
#pragma omp parallel for schedule(static)
    for (int64_t rb = 0; rb < nrb; rb++) {
        const void *wr[4];
        int64_t rr[4];
        int nr = 0;
        for (int i = 0; i < 4; i++) {
            int64_t r = r0 + rb * 4 + i;
            if (r >= r1) r = r1 - 1; /* duplicate the last row; its results are not stored */
            else nr = i + 1;
            rr[i] = r;
            wr[i] = qn_tensor_row(W, r);
        }
        for (int g = 0, t0 = 0; g < ng; g++) {
            const int nt = (T - t0) / (ng - g); /* the remaining tokens over the remaining groups */
            const float *xr[6];
            for (int j = 0; j < nt; j++) xr[j] = x + (int64_t)(t0 + j) * ldx;
            float o[4][6];
            tile_any(W->dtype, wr, xr, Kv, nt, o);
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < nt; j++) {
                    float s = o[i][j];
                    for (int64_t k = Kv; k < K; k++) s += load_w1(W->dtype, wr[i], k) * xr[j][k];
                    put(y, ldy, yrows, t0 + j, rr[i], s);
                }
            t0 += nt;
        }
    }
    return 1;
}

#else
int gemm_float_available(void) { return 0; }
int gemm_float_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy, float *const *yrows) {
    return 0;
}
#endif
