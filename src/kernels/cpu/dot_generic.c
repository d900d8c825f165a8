/* dot_generic.c - portable C versions of the dot kernels, and run-time selection.
 *
 * These are written from the block layouts (quant.h) with integer sums per block, the
 * same arithmetic the SIMD versions do, so they double as the readable definition. */
#include <stdlib.h>
#include <string.h>

#include "dot.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

static float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return qn_f16_to_f32(h); }

static float g_f32(const void *w, const void *a, int64_t n) { return op_dot_f32(w, a, n); }

/* 16-bit float weights (bf16 or f16) against f32 activations; inlined into the two
 * kernels below with a constant flag, so the format test disappears from the loop. */
static inline float g_half(const void *w_, const void *a_, int64_t n, int bf16) {
    const uint16_t *w = w_;
    const float *a = a_;
    float acc[16] = {0}, s = 0;
    int64_t i = 0;
#define WIDEN(h) (bf16 ? qn_bf16_to_f32(h) : qn_f16_to_f32(h))
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += WIDEN(w[i + j]) * a[i + j];
    for (; i < n; i++) s += WIDEN(w[i]) * a[i];
#undef WIDEN
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

static float g_bf16(const void *w, const void *a, int64_t n) { return g_half(w, a, n, 1); }
static float g_f16(const void *w, const void *a, int64_t n) { return g_half(w, a, n, 0); }

/* Q8_0: 34-byte blocks of f16 d + 32 int8. */
static float g_q8_0(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 34, a += 34) {
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) sum += (int8_t)w[2 + i] * (int8_t)a[2 + i];
        s += h2f(w) * h2f(a) * (float)sum;
    }
    return s;
}

/* Q4_0: 18-byte blocks of f16 d + 16 bytes; byte j holds element j (low) and j+16 (high). */
static float g_q4_0(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 18, a += 34) {
        int32_t sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += ((w[2 + j] & 0xF) - 8) * (int8_t)a[2 + j];
            sum += ((w[2 + j] >> 4) - 8) * (int8_t)a[2 + 16 + j];
        }
        s += h2f(w) * h2f(a) * (float)sum;
    }
    return s;
}

/* Q8_K activation block: f32 d, int8 qs[256], int16 bsums[16] (sums of 16 values). */
#define Q8K_D(a) (*(const float *)(a))
#define Q8K_QS(a) ((const int8_t *)((a) + 4))
static int16_t q8k_bsum(const uint8_t *a, int g) { int16_t v; memcpy(&v, a + 260 + 2 * g, 2); return v; }

static float g_q4_k(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    float s = 0;
    for (int64_t b = 0; b < n / 256; b++, w += 144, a += 292) {
        const uint8_t *qs = w + 16;
        const int8_t *x = Q8K_QS(a);
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 4; j++) {
            int sc0, m0, sc1, m1;
            quant_k4_scale_min(2 * j, w + 4, &sc0, &m0);
            quant_k4_scale_min(2 * j + 1, w + 4, &sc1, &m1);
            int32_t lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += (qs[32 * j + l] & 0xF) * x[64 * j + l];
                hi += (qs[32 * j + l] >> 4) * x[64 * j + 32 + l];
            }
            isum += sc0 * lo + sc1 * hi;
            msum += m0 * (q8k_bsum(a, 4 * j) + q8k_bsum(a, 4 * j + 1)) + m1 * (q8k_bsum(a, 4 * j + 2) + q8k_bsum(a, 4 * j + 3));
        }
        s += Q8K_D(a) * (h2f(w) * (float)isum - h2f(w + 2) * (float)msum);
    }
    return s;
}

static float g_q5_k(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    float s = 0;
    for (int64_t b = 0; b < n / 256; b++, w += 176, a += 292) {
        const uint8_t *qh = w + 16, *qs = w + 48;
        const int8_t *x = Q8K_QS(a);
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 4; j++) {
            int sc0, m0, sc1, m1;
            quant_k4_scale_min(2 * j, w + 4, &sc0, &m0);
            quant_k4_scale_min(2 * j + 1, w + 4, &sc1, &m1);
            int32_t lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                int ql = (qs[32 * j + l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4);
                int qhh = (qs[32 * j + l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4);
                lo += ql * x[64 * j + l];
                hi += qhh * x[64 * j + 32 + l];
            }
            isum += sc0 * lo + sc1 * hi;
            msum += m0 * (q8k_bsum(a, 4 * j) + q8k_bsum(a, 4 * j + 1)) + m1 * (q8k_bsum(a, 4 * j + 2) + q8k_bsum(a, 4 * j + 3));
        }
        s += Q8K_D(a) * (h2f(w) * (float)isum - h2f(w + 2) * (float)msum);
    }
    return s;
}

static float g_q6_k(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    float s = 0;
    for (int64_t b = 0; b < n / 256; b++, w += 210, a += 292) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        const int8_t *x = Q8K_QS(a);
        int32_t isum = 0;
        for (int half = 0; half < 2; half++) {
            const uint8_t *l0 = ql + 64 * half, *h0 = qh + 32 * half;
            const int8_t *xs = x + 128 * half;
            const int8_t *s8 = sc + 8 * half;
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((l0[l] & 0xF) | (((h0[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((l0[l + 32] & 0xF) | (((h0[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((l0[l] >> 4) | (((h0[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((l0[l + 32] >> 4) | (((h0[l] >> 6) & 3) << 4)) - 32;
                isum += s8[is + 0] * q1 * xs[l] + s8[is + 2] * q2 * xs[l + 32] + s8[is + 4] * q3 * xs[l + 64] +
                        s8[is + 6] * q4 * xs[l + 96];
            }
        }
        s += Q8K_D(a) * h2f(w + 208) * (float)isum;
    }
    return s;
}

/* 16 bytes of 4-bit indices into the int8 table kv (low nibbles: values 0-15, high: 16-31)
 * dotted with one Q8_0 activation block: the exact integer sum (IQ4_NL and MXFP4). */
static inline int32_t lut4_block_sum(const int8_t *kv, const uint8_t *qs, const uint8_t *a) {
    int32_t sum = 0;
    for (int j = 0; j < 16; j++) sum += kv[qs[j] & 0xF] * (int8_t)a[2 + j] + kv[qs[j] >> 4] * (int8_t)a[2 + 16 + j];
    return sum;
}

/* IQ4_NL: 18-byte blocks of f16 d + 16 bytes of 4-bit indices into the int8 level table
 * (nibble order as Q4_0); the levels are integers, so the block sum stays exact. */
static float g_iq4_nl(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const int8_t *kv = quant_iq4nl_values;
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 18, a += 34) {
        s += h2f(w) * h2f(a) * (float)lut4_block_sum(kv, w + 2, a);
    }
    return s;
}

/* MXFP4: 17-byte blocks of an E8M0 exponent + 16 bytes of doubled-e2m1 indices. */
static float g_mxfp4(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const int8_t *kv = quant_mxfp4_values;
    float s = 0;
    for (int64_t b = 0; b < n / 32; b++, w += 17, a += 34) {
        s += quant_e8m0_to_f32_half(w[0]) * h2f(a) * (float)lut4_block_sum(kv, w + 1, a);
    }
    return s;
}

/* IQ4_XS: 136-byte super-blocks (f16 d, 8 six-bit sub-block scales stored - 32 as
 * scales_h/scales_l, 128 bytes of IQ4_NL-style indices) against Q8_K. The sub-block
 * scales are integers too, so the whole super-block is one exact integer sum (at most
 * 8 * 32 * 32 * 127 * 127 in magnitude, well inside int32). */
static float g_iq4_xs(const void *w_, const void *a_, int64_t n) {
    const uint8_t *w = w_, *a = a_;
    const int8_t *kv = quant_iq4nl_values;
    float s = 0;
    for (int64_t b = 0; b < n / 256; b++, w += 136, a += 292) {
        const int8_t *x = Q8K_QS(a);
        int32_t isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const int ls = quant_iq4_xs_scale(w, ib);
            const uint8_t *qs = w + 8 + 16 * ib;
            const int8_t *xs = x + 32 * ib;
            int32_t sum = 0;
            for (int j = 0; j < 16; j++) sum += kv[qs[j] & 0xF] * xs[j] + kv[qs[j] >> 4] * xs[16 + j];
            isum += ls * sum;
        }
        s += h2f(w) * Q8K_D(a) * (float)isum;
    }
    return s;
}

const dot_kernels dot_generic = {"generic", g_f32, g_f16, g_bf16, g_q8_0, g_q4_0, g_q4_k, g_q5_k, g_q6_k,
                                  NULL, NULL, NULL, NULL, QUANT_Q8_K, QUANT_Q8_0, QUANT_Q8_0, NULL, NULL, NULL, NULL};

_Static_assert(DOT_ACT_Q8_K4 >= QUANT_TYPE_LIMIT && DOT_ACT_Q8_0G >= QUANT_TYPE_LIMIT && DOT_ACT_Q8_0I >= QUANT_TYPE_LIMIT &&
                   DOT_ACT_Q8_K6 >= QUANT_TYPE_LIMIT && DOT_ACT_Q8_K32 >= QUANT_TYPE_LIMIT,
               "dot.h's activation types must not be ggml type ids");

int dot_act_type_set(const dot_kernels *k, int wtype) {
    if (wtype == QUANT_Q4_K || wtype == QUANT_Q5_K) return k->act_k4;
    /* the AVX-512 set's MXFP4 and IQ4_NL kernels take Q8_0's regrouped activations too; the
     * other sets' kernels for them (dot_iq4_x86.c, portable) take Q8_0, as their act_q8 says */
    if (wtype == QUANT_Q8_0 || wtype == QUANT_MXFP4 || wtype == QUANT_IQ4_NL) return k->act_q8;
    return dot_act_type(wtype);
}

int dot_act_type_rows(const dot_kernels *k, int wtype, int T) {
    return T > 1 && wtype == QUANT_Q8_0 && k->m_q8_0 ? k->act_q8m : dot_act_type_set(k, wtype);
}

/* The ggml type whose quantizer an activation type starts from. */
int dot_act_base_type(int at) {
    return at == DOT_ACT_Q8_K4 || at == DOT_ACT_Q8_K6 || at == DOT_ACT_Q8_K32 ? QUANT_Q8_K : at == DOT_ACT_Q8_0G || at == DOT_ACT_Q8_0I ? QUANT_Q8_0 : at;
}

size_t dot_act_row_bytes(int at, int64_t n) {
    if (at == DOT_ACT_Q8_0G || at == DOT_ACT_Q8_0I) return n % 32 ? 0 : (size_t)((n / 32 + 7) / 8) * DOT_Q8_0G_GROUP;
    if (at == DOT_ACT_Q8_K6) return n % 256 ? 0 : (size_t)(n / 256) * DOT_Q8_K6_BLOCK;
    return quant_row_bytes(dot_act_base_type(at), n);
}

/* Writes the blocks of one DOT_ACT_Q8_0G group (il = 0) or DOT_ACT_Q8_0I group (il = 1) from
 * nb <= 8 Q8_0 blocks at q8. */
static void act_group_q8_0(const void *q8, int nb, int il, void *group) {
    const uint8_t *b = q8;
    uint8_t *g = group;
    memset(g, 0, DOT_Q8_0G_GROUP);
    for (int j = 0; j < nb; j++, b += 34) {
        uint16_t h;
        memcpy(&h, b, 2);
        const float d = quant_f16_to_f32(h);
        int32_t c = 0;
        for (int i = 0; i < 32; i++) c += (int8_t)b[2 + i];
        c *= 128;
        memcpy(g + 4 * j, &d, 4);
        memcpy(g + 32 + 4 * j, &c, 4);
        if (il)
            for (int k = 0; k < 8; k++) memcpy(g + 64 + 32 * k + 4 * j, b + 2 + 4 * k, 4);
        else memcpy(g + 64 + 32 * j, b + 2, 32);
    }
}

void dot_act_convert(int at, const void *base, void *dst, int64_t n) {
    if (at == DOT_ACT_Q8_0G || at == DOT_ACT_Q8_0I) {
        const int64_t nb = n / 32;
        for (int64_t g = 0; g < (nb + 7) / 8; g++)
            act_group_q8_0((const uint8_t *)base + 34 * 8 * g, (int)(nb - 8 * g < 8 ? nb - 8 * g : 8),
                           at == DOT_ACT_Q8_0I, (uint8_t *)dst + DOT_Q8_0G_GROUP * g);
        return;
    }
    memcpy(dst, base, quant_row_bytes(dot_act_base_type(at), n));
    dot_act_from_q8_k(at, dst, n);
}

void dot_act_from_q8_k(int at, void *row, int64_t n) {
    if (at == DOT_ACT_Q8_K4) dot_act_reorder_k4(row, n);
    if (at == DOT_ACT_Q8_K6) dot_act_widen_k6(row, n);
    if (at == DOT_ACT_Q8_K32) dot_act_sum32(row, n);
}

void dot_act_sum32(void *row, int64_t n) {
    uint8_t *b = row;
    for (int64_t i = 0; i < n / 256; i++, b += 292) { /* Q8_K block: f32 d, 256 int8, 16 int16 sums */
        int16_t s[16];
        memcpy(s, b + 260, 32);
        for (int j = 0; j < 8; j++) s[j] = (int16_t)(s[2 * j] + s[2 * j + 1]);
        memset(s + 8, 0, 16);
        memcpy(b + 260, s, 32);
    }
}

void dot_act_widen_k6(void *row, int64_t n) {
    uint8_t *r = row, blk[292];
    for (int64_t b = n / 256 - 1; b >= 0; b--) { /* from the end: block b only grows over itself */
        memcpy(blk, r + 292 * b, 292);
        int16_t sums[16];
        memcpy(sums, blk + 260, 32);
        uint8_t *o = r + DOT_Q8_K6_BLOCK * b;
        memcpy(o, blk, 260);
        for (int j = 0; j < 16; j++) {
            const int32_t c = -32 * (int32_t)sums[j];
            memcpy(o + 260 + 4 * j, &c, 4);
        }
    }
}

void dot_act_reorder_k4(void *row, int64_t n) {
    uint8_t *b = row, tmp[32];
    for (int64_t i = 0; i < n / 256; i++, b += 292) /* Q8_K block: f32 d, 256 int8, 16 int16 sums */
        for (int h = 0; h < 2; h++) {
            uint8_t *q = b + 4 + 128 * h; /* swap values 32-63 and 64-95 */
            memcpy(tmp, q + 32, 32);
            memcpy(q + 32, q + 64, 32);
            memcpy(q + 64, tmp, 32);
        }
}

void dot_act_quantize_q8_0g(const float *x, void *dst, int64_t n, int il, void (*q8_0)(const float *, void *, int64_t)) {
    uint8_t q8[8 * 34];
    for (int64_t i = 0; i < n; i += 256) {
        const int64_t m = n - i < 256 ? n - i : 256;
        q8_0(x + i, q8, m);
        act_group_q8_0(q8, (int)(m / 32), il, (uint8_t *)dst + DOT_Q8_0G_GROUP * (i / 256));
    }
}

static void ref_q8_0(const float *x, void *dst, int64_t n) { quant_quantize_row(QUANT_Q8_0, x, dst, n); }

void dot_quantize_act_ref(int at, const float *x, void *dst, int64_t n) {
    if (at == DOT_ACT_Q8_0G || at == DOT_ACT_Q8_0I) {
        dot_act_quantize_q8_0g(x, dst, n, at == DOT_ACT_Q8_0I, ref_q8_0);
        return;
    }
    quant_quantize_row(dot_act_base_type(at), x, dst, n);
    dot_act_from_q8_k(at, dst, n);
}

int dot_act_type(int wtype) {
    switch (wtype) {
    case QUANT_Q8_0:
    case QUANT_Q4_0:
    case QUANT_IQ4_NL:
    case QUANT_MXFP4: return QUANT_Q8_0;
    case QUANT_Q4_K:
    case QUANT_Q5_K:
    case QUANT_Q6_K:
    case QUANT_IQ4_XS: return QUANT_Q8_K;
    default: return QUANT_F32;
    }
}

dot2_fn dot2_for_type(const dot_kernels *k, int wtype) {
    switch (wtype) {
    case QUANT_Q4_K: return k->d2_q4_k;
    case QUANT_Q5_K: return k->d2_q5_k;
    case QUANT_Q6_K: return k->d2_q6_k;
    case QUANT_Q8_0: return k->d2_q8_0;
    default: return NULL;
    }
}

dotm_fn dotm_for_type(const dot_kernels *k, int wtype) {
    switch (wtype) {
    case QUANT_Q8_0: return k->m_q8_0;
    case QUANT_Q4_K: return k->m_q4_k;
    case QUANT_Q6_K: return k->m_q6_k;
    case QUANT_Q5_K: return k->m_q5_k;
#if defined(__x86_64__) && defined(__GNUC__)
    case QUANT_MXFP4: return k == &dot_avx512 ? dotm_mxfp4_avx512 : NULL;
    case QUANT_IQ4_NL: return k == &dot_avx512 ? dotm_iq4_nl_avx512 : NULL;
#endif
    default: return NULL;
    }
}

dot_fn dot_for_type(const dot_kernels *k, int wtype) {
    switch (wtype) {
    case QUANT_F32: return k->f32;
    case QUANT_F16: return k->f16;
    case QUANT_BF16: return k->bf16;
    case QUANT_Q8_0: return k->q8_0;
    case QUANT_Q4_0: return k->q4_0;
    case QUANT_Q4_K: return k->q4_k;
    case QUANT_Q5_K: return k->q5_k;
    case QUANT_Q6_K: return k->q6_k;
#if defined(__x86_64__) && defined(__GNUC__)
    /* the SIMD sets are only chosen on CPUs with AVX2 (see dot.h) */
    case QUANT_IQ4_NL: return k == &dot_generic ? g_iq4_nl : k == &dot_avx512 ? dot_iq4_nl_avx512 : dot_iq4_nl_avx2;
    case QUANT_MXFP4: return k == &dot_generic ? g_mxfp4 : k == &dot_avx512 ? dot_mxfp4_avx512 : dot_mxfp4_avx2;
    case QUANT_IQ4_XS: return k == &dot_generic ? g_iq4_xs : k == &dot_avx512 ? dot_iq4_xs_avx512 : dot_iq4_xs_avx2;
#else
    case QUANT_IQ4_NL: return g_iq4_nl;
    case QUANT_MXFP4: return g_mxfp4;
    case QUANT_IQ4_XS: return g_iq4_xs;
#endif
    default: return NULL;
    }
}

int dot_prefetch = 1;
int dot_prefetch_multi = 1;

const dot_kernels *dot_select(void) {
    static const dot_kernels *chosen;
    if (chosen) return chosen;
    const char *env = getenv("QNEXT_KERNELS");
    const dot_kernels *k = &dot_generic;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    const char *pf = getenv("QNEXT_PREFETCH");
    dot_prefetch = pf && *pf ? strcmp(pf, "0") != 0 : !__builtin_cpu_is("amd");
    dot_prefetch_multi = pf && *pf ? strcmp(pf, "0") != 0 : 1;
    int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    int has_512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (has_512) k = &dot_avx512;
    else if (has_avx2) k = &dot_avx2;
    if (env && !strcmp(env, "avx2") && has_avx2) k = &dot_avx2;
#endif
    if (env && !strcmp(env, "generic")) k = &dot_generic;
    chosen = k;
    return k;
}
