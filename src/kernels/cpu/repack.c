/* repack.c - Q8_0 weights in groups of 16 interleaved rows, and their AVX-512 VNNI kernel
 * (layout in repack.h).
 *
 * Why. The Q8_0 kernels of the mapped file (dot_x86.inc, gemm_vnni.c) give one row's block to a
 * register and then reduce it per row and token, or unpack a tile of rows to broadcast from:
 * for the few tokens an expert gets in a batched decode step, that per-row work is most of the
 * cost. With 16 rows interleaved by 4-byte words, each block of a group is 8 plain loads shared
 * by all tokens, and each token costs 8 vpdpbusd (its 4 values broadcast from memory), one
 * convert and two multiplies for 16 rows. An expert layer of 32 experts at 5 tokens on the
 * project's AMD EPYC (2 cores, PERF.md eighteenth session): 5.6 cycles per 256 values and token
 * in cache against 12.0 for the mapped-file kernels, 13.0 against 15.6-16.5 from memory in a
 * slow phase of the machine's memory; at 16 tokens 7.1 against 9.8.
 *
 * The price is a copy: the weights are no longer only mapped. Opt-in at load
 * (qnext_model_params.repack); the loader then drops the file pages it copied from
 * (model_repack), so the resident size stays about the file's.
 *
 * Exactness. vpdpbusd multiplies unsigned by signed bytes: the weights carry +128, and each
 * token's block starts its integer sum at -128 times the sum of its activation codes (dot.h's
 * DOT_ACT_Q8_0G keeps those), so the sum is exactly the signed one; the scales are applied per
 * block in f32 as in the other Q8_0 kernels, only in another order. */
#include "kernels/cpu/repack.h"

#include <string.h>

#include "kernels/cpu/dot.h"

int repack_q8_0_fits(const qn_tensor *W) {
    return W->dtype == QN_Q8_0 && W->rows > 0 && W->rows % REPACK_ROWS == 0 && W->cols > 0 && W->cols % 32 == 0;
}

size_t repack_q8_0_bytes(const qn_tensor *W) { return (size_t)(W->rows / REPACK_ROWS) * (size_t)(W->cols / 32) * REPACK_BLOCK; }

void repack_q8_0(const qn_tensor *W, uint8_t *dst) {
    const int64_t nb = W->cols / 32;
    for (int64_t g = 0; g < W->rows / REPACK_ROWS; g++)
        for (int r = 0; r < REPACK_ROWS; r++) {
            const uint8_t *row = qn_tensor_row(W, REPACK_ROWS * g + r);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + 34 * b; /* Q8_0: f16 scale, 32 int8 codes */
                uint8_t *o = dst + (g * nb + b) * REPACK_BLOCK;
                memcpy(o + 2 * r, blk, 2);
                for (int k = 0; k < 8; k++)
                    for (int i = 0; i < 4; i++) o[32 + 64 * k + 4 * r + i] = (uint8_t)(blk[2 + 4 * k + i] ^ 0x80);
            }
        }
}

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>

int repack_available(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("f16c");
    }
    return ok;
}

/* One group of 16 rows (w: its first block, nb blocks) against T <= 16 tokens; token t's 16
 * results to out[t]. A token's 8 products of a block form one dependency chain; with 4 tokens or
 * fewer there are too few chains to cover vpdpbusd's latency, so each token then runs two. */
static inline __attribute__((always_inline)) void group_dot(const uint8_t *w, int64_t nb, const uint8_t *act,
                                                            size_t astride, const int T, __m512 *out) {
    __m512 acc[16];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * REPACK_BLOCK;
        /* the block 8 ahead (544 bytes: 9 lines); past a group's end this is the next group */
        for (int l = 0; l < 9; l++) _mm_prefetch((const char *)blk + 8 * REPACK_BLOCK + 64 * l, _MM_HINT_T0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        __m512i wv[8];
        for (int k = 0; k < 8; k++) wv[k] = _mm512_loadu_si512((const void *)(blk + 32 + 64 * k));
        const int64_t gi = b / 8, bi = b % 8;
        for (int t = 0; t < T; t++) {
            const uint8_t *g = act + astride * t + DOT_Q8_0G_GROUP * gi; /* dot.h: 8 f32 dx, 8 int32 c, codes */
            const int32_t *q = (const int32_t *)(g + 64 + 32 * bi);
            int32_t c;
            float dx;
            memcpy(&c, g + 32 + 4 * bi, 4);
            memcpy(&dx, g + 4 * bi, 4);
            __m512i s = _mm512_set1_epi32(-c);
            if (T <= 4) {
                __m512i s1 = _mm512_setzero_si512();
                for (int k = 0; k < 8; k += 2) {
                    s = _mm512_dpbusd_epi32(s, wv[k], _mm512_set1_epi32(q[k]));
                    s1 = _mm512_dpbusd_epi32(s1, wv[k + 1], _mm512_set1_epi32(q[k + 1]));
                }
                s = _mm512_add_epi32(s, s1);
            } else
                for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, wv[k], _mm512_set1_epi32(q[k]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = acc[t];
}

void repack_q8_0_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T,
                      float *y, int64_t ldy, float *const *yrows) {
    const int64_t nb = W->cols / 32;
    for (int64_t g = r0 / REPACK_ROWS; g < (r1 + REPACK_ROWS - 1) / REPACK_ROWS; g++) {
        const uint8_t *w = W->rp + (size_t)(g * nb) * REPACK_BLOCK;
        const int64_t r = REPACK_ROWS * g;
        for (int t0 = 0; t0 < T; t0 += 16) { /* more tokens: the group's weights stay in cache */
            const int n = T - t0 < 16 ? T - t0 : 16;
            const uint8_t *a = act + astride * t0;
            __m512 o[16];
            switch (n) {
#define GROUP_T(N) \
    case N: group_dot(w, nb, a, astride, N, o); break;
                GROUP_T(1) GROUP_T(2) GROUP_T(3) GROUP_T(4) GROUP_T(5) GROUP_T(6) GROUP_T(7) GROUP_T(8)
                GROUP_T(9) GROUP_T(10) GROUP_T(11) GROUP_T(12) GROUP_T(13) GROUP_T(14) GROUP_T(15) GROUP_T(16)
#undef GROUP_T
            }
            for (int t = 0; t < n; t++)
                _mm512_storeu_ps(yrows ? &yrows[t0 + t][r] : &y[(int64_t)(t0 + t) * ldy + r], o[t]);
        }
    }
}

#else /* not built for AVX-512 VNNI: repack_available() says so, and the kernel is never called */
int repack_available(void) { return 0; }
void repack_q8_0_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T,
                      float *y, int64_t ldy, float *const *yrows) {}
#endif
