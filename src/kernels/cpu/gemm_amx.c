/* gemm_amx.c - prompt processing with Intel AMX tiles (bf16 x bf16 -> f32).
 *
 * Prefill is compute-bound: a micro-batch of T tokens multiplies every weight matrix by a
 * [T, cols] activation block. On CPUs with AMX each core does 16x16x32 bf16 products per
 * tile instruction, several times what AVX-512 can. Weight rows are widened block by block
 * to bf16 (16 rows at a time, once per micro-batch), the activations are rounded to bf16
 * and packed into tiles once per product, and the f32 accumulators stay in tile registers
 * over the whole inner dimension.
 *
 * Used only for quantized weights by default: their activations are quantized to 8 bits on
 * the vector path anyway, and bf16 keeps more precision than that. Float weights keep the
 * exact f32 path unless QNEXT_AMX=all. */
#include "kernels/cpu/gemm_amx.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int g_amx = -1; /* -1 unknown, 0 no, 1 quantized weights, 2 all weights */

int gemm_amx_mode(void) {
    if (g_amx >= 0) return g_amx;
    g_amx = 0;
    const char *e = getenv("QNEXT_AMX");
    if (e && !strcmp(e, "0")) return g_amx;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("avx512bf16")) return g_amx;
    /* Linux gives a process AMX state only on request. */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return g_amx;
    g_amx = e && !strcmp(e, "all") ? 2 : 1;
    return g_amx;
}

int gemm_amx_set_mode(int mode) {
    static int found = -1;
    int before = gemm_amx_mode();
    if (found < 0) found = before;
    g_amx = mode <= 0 ? 0 : mode < found ? mode : found;
    return before;
}

const amx_tile_config amx_tiles_all = {.palette_id = 1,
                                       .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
                                       .rows = {16, 16, 16, 16, 16, 16, 16, 16}};

/* f32 -> bf16, round to nearest even (what vcvtneps2bf16 does), 16 at a time. */
static inline void f32_to_bf16_16(const float *src, uint16_t *dst) {
    __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src));
    _mm256_storeu_si256((__m256i *)dst, (__m256i)v);
}

/* 16 f32 = scale * u8 + bias -> bf16 pairs: the K formats' (d*sc) * q - dmin*m. */
static inline void put16(uint16_t *dst, __m128i q8, float scale, float bias) {
    __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q8)), _mm512_set1_ps(scale), _mm512_set1_ps(bias));
    f32_to_bf16_16((const float *)&v, dst);
}

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Q4_K / Q5_K super-blocks (256 values) widened to bf16 with AVX-512: each 64-value step
 * takes 32 bytes of nibbles (low half, then high half), plus one bit each from qh for Q5_K. */
static void qk45_to_bf16(const uint8_t *b, uint16_t *dst, int five) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *qs = b + (five ? 48 : 16), *qh = b + 16;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256i hb = five ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        int sc0, m0, sc1, m1;
        quant_k4_scale_min(2 * j, b + 4, &sc0, &m0);
        quant_k4_scale_min(2 * j + 1, b + 4, &sc1, &m1);
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (five) {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
        }
        uint16_t *o = dst + 64 * j;
        put16(o, _mm256_castsi256_si128(lo), d * sc0, -dmin * m0);
        put16(o + 16, _mm256_extracti128_si256(lo, 1), d * sc0, -dmin * m0);
        put16(o + 32, _mm256_castsi256_si128(hi), d * sc1, -dmin * m1);
        put16(o + 48, _mm256_extracti128_si256(hi, 1), d * sc1, -dmin * m1);
    }
}

/* Q6_K super-blocks: 6-bit codes from ql (4 bits) and qh (2 bits), minus 32, times d*sc. */
static void q6k_to_bf16(const uint8_t *b, uint16_t *dst) {
    const float d = h2f(b + 208);
    const int8_t *sc = (const int8_t *)(b + 192);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    for (int half = 0; half < 2; half++) {
        const uint8_t *ql = b + 64 * half, *qhp = b + 128 + 32 * half;
        const int8_t *s8 = sc + 8 * half;
        __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        __m256i h = _mm256_loadu_si256((const __m256i *)qhp);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m3), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m3), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m3), 4));
        for (int k = 0; k < 4; k++) {
            uint16_t *o = dst + 128 * half + 32 * k;
            float a = d * s8[2 * k], c = d * s8[2 * k + 1];
            put16(o, _mm256_castsi256_si128(q[k]), a, -32.0f * a);
            put16(o + 16, _mm256_extracti128_si256(q[k], 1), c, -32.0f * c);
        }
    }
}

static void row_to_bf16(const qn_tensor *W, int64_t r, uint16_t *dst, float *tmp) {
    const char *src = (const char *)qn_tensor_row(W, r);
    if (W->dtype == QN_BF16) { memcpy(dst, src, (size_t)W->cols * 2); return; }
    if (W->dtype == QN_Q8_0) { /* the common case, vectorised: 32 int8 times one f16 scale */
        for (int64_t b = 0; b < W->cols / 32; b++) {
            const uint8_t *blk = (const uint8_t *)src + 34 * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            __m512 d = _mm512_set1_ps(_cvtsh_ss(h));
            __m512 lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)))));
            __m512 hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18)))));
            _mm512_storeu_si512(dst + 32 * b, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        return;
    }
    if (W->dtype == QN_Q4_K || W->dtype == QN_Q5_K) {
        size_t bs = W->dtype == QN_Q4_K ? 144 : 176;
        for (int64_t b = 0; b < W->cols / 256; b++) qk45_to_bf16((const uint8_t *)src + bs * b, dst + 256 * b, W->dtype == QN_Q5_K);
        return;
    }
    if (W->dtype == QN_Q6_K) {
        for (int64_t b = 0; b < W->cols / 256; b++) q6k_to_bf16((const uint8_t *)src + 210 * b, dst + 256 * b);
        return;
    }
    op_convert_to_f32(W->dtype, src, tmp, W->cols);
    for (int64_t i = 0; i < W->cols; i += 16) f32_to_bf16_16(tmp + i, dst + i);
}

void gemm_amx_widen_row(const qn_tensor *W, int64_t r, uint16_t *dst) {
    float *tmp = malloc((size_t)W->cols * sizeof(float));
    if (!tmp) abort();
    row_to_bf16(W, r, dst, tmp);
    free(tmp);
}

static _Thread_local uint16_t *tl_xb;
static _Thread_local size_t tl_xb_cap;
/* per worker thread: 16 widened weight rows and one f32 row, grown once */
static _Thread_local uint16_t *tl_a;
static _Thread_local float *tl_tmp;
static _Thread_local int64_t tl_a_cols;

int gemm_amx_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                  int64_t ldy, float *const *yrows) {
    const int64_t K = W->cols;
    if (K % 32 || T < 16) return 0;
    const int nK = (int)(K / 32), nTB = (T + 15) / 16;
    /* Pack activations: tile (tb, kb) holds tokens tb*16.. and dims kb*32.., as 16 rows of
     * k-pairs, each row [token][pair] (the VNNI layout the B operand wants). */
    size_t need = (size_t)nTB * nK * 512;
    if (need > tl_xb_cap) {
        free(tl_xb);
        tl_xb = aligned_alloc(64, need * 2);
        if (!tl_xb) abort();
        tl_xb_cap = need;
    }
    uint16_t *xb = tl_xb;
#pragma omp parallel for schedule(static)
    for (int tb = 0; tb < nTB; tb++) {
        uint16_t tmp[32];
        for (int kb = 0; kb < nK; kb++) {
            uint16_t *tile = xb + ((size_t)tb * nK + kb) * 512;
            for (int n = 0; n < 16; n++) {
                int t = tb * 16 + n;
                if (t < T) {
                    f32_to_bf16_16(x + (int64_t)t * ldx + kb * 32, tmp);
                    f32_to_bf16_16(x + (int64_t)t * ldx + kb * 32 + 16, tmp + 16);
                } else {
                    memset(tmp, 0, sizeof tmp);
                }
                for (int kp = 0; kp < 16; kp++) {
                    tile[kp * 32 + n * 2] = tmp[2 * kp];
                    tile[kp * 32 + n * 2 + 1] = tmp[2 * kp + 1];
                }
            }
        }
    }
    const int64_t nRB = (r1 - r0 + 15) / 16;
#pragma omp parallel
    {
        _tile_loadconfig(&amx_tiles_all);
        if (tl_a_cols < K) {
            free(tl_a);
            free(tl_tmp);
            tl_a = aligned_alloc(64, (size_t)16 * K * 2);
            tl_tmp = malloc((size_t)K * sizeof(float));
            if (!tl_a || !tl_tmp) abort();
            tl_a_cols = K;
        }
        uint16_t *A = tl_a;
        float *tmp = tl_tmp;
        float C[16 * 16] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1)
        for (int64_t rb = 0; rb < nRB; rb++) {
            int64_t rbase = r0 + rb * 16;
            int nr = (int)(r1 - rbase < 16 ? r1 - rbase : 16);
            for (int i = 0; i < 16; i++) {
                if (i < nr) row_to_bf16(W, rbase + i, A + (size_t)i * K, tmp);
                else memset(A + (size_t)i * K, 0, (size_t)K * 2);
            }
            for (int tb0 = 0; tb0 < nTB; tb0 += 4) {
                int ntb = nTB - tb0 < 4 ? nTB - tb0 : 4;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int kb = 0; kb < nK; kb++) {
                    _tile_loadd(4, A + kb * 32, K * 2);
                    const uint16_t *b0 = xb + ((size_t)tb0 * nK + kb) * 512;
                    _tile_loadd(5, b0, 64);
                    _tile_dpbf16ps(0, 4, 5);
                    if (ntb > 1) { _tile_loadd(6, b0 + (size_t)nK * 512, 64); _tile_dpbf16ps(1, 4, 6); }
                    if (ntb > 2) { _tile_loadd(7, b0 + (size_t)2 * nK * 512, 64); _tile_dpbf16ps(2, 4, 7); }
                    if (ntb > 3) { _tile_loadd(5, b0 + (size_t)3 * nK * 512, 64); _tile_dpbf16ps(3, 4, 5); }
                }
                for (int j = 0; j < ntb; j++) {
                    switch (j) {
                    case 0: _tile_stored(0, C, 64); break;
                    case 1: _tile_stored(1, C, 64); break;
                    case 2: _tile_stored(2, C, 64); break;
                    default: _tile_stored(3, C, 64); break;
                    }
                    __m512 v[16];
                    for (int i = 0; i < 16; i++) v[i] = _mm512_load_ps(C + 16 * i);
                    const int t0 = (tb0 + j) * 16;
                    amx_store_block(v, nr, rbase, t0, T - t0 < 16 ? T - t0 : 16, y, ldy, yrows);
                }
            }
        }
        _tile_release();
    }
    return 1;
}

#else
int gemm_amx_mode(void) { return 0; }
int gemm_amx_set_mode(int mode) { (void)mode; return 0; }
void gemm_amx_widen_row(const qn_tensor *W, int64_t r, uint16_t *dst) { (void)W; (void)r; (void)dst; }
int gemm_amx_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                  int64_t ldy, float *const *yrows) {
    return 0;
}
#endif
