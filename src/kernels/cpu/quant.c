/* quant.c - reference (de)quantization of ggml's block formats; see quant.h.
 *
 * Everything here must reproduce ggml to the bit, so the float expressions keep ggml's
 * operation order, and contraction of a*b+c into one fused multiply-add is switched off
 * (an FMA rounds once instead of twice and would change low bits when this file is
 * built for a target with FMA). The quantizers follow ggml's quantize_row_*_ref: the
 * K formats search for per-sub-block scales (make_qkx2_quants for Q4_K/Q5_K, the
 * weighted rmse search of make_qx_quants for Q6_K), then quantize the super-block
 * scales to 6 or 8 bits and re-quantize the values against the rounded scales. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/cpu/quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- type table */

#define T(id, nm, bs, ts, dq, q) [id] = { nm, bs, ts, dq, q }
static const quant_type_info quant_types[QUANT_TYPE_LIMIT] = {
    T(QUANT_F32, "F32", 1, 4, 1, 1),
    T(QUANT_F16, "F16", 1, 2, 1, 1),
    T(QUANT_Q4_0, "Q4_0", 32, 18, 1, 1),
    T(QUANT_Q4_1, "Q4_1", 32, 20, 1, 1),
    T(QUANT_Q5_0, "Q5_0", 32, 22, 1, 1),
    T(QUANT_Q5_1, "Q5_1", 32, 24, 1, 1),
    T(QUANT_Q8_0, "Q8_0", 32, 34, 1, 1),
    T(QUANT_Q8_1, "Q8_1", 32, 36, 0, 0),
    T(QUANT_Q2_K, "Q2_K", 256, 84, 0, 0),
    T(QUANT_Q3_K, "Q3_K", 256, 110, 0, 0),
    T(QUANT_Q4_K, "Q4_K", 256, 144, 1, 1),
    T(QUANT_Q5_K, "Q5_K", 256, 176, 1, 1),
    T(QUANT_Q6_K, "Q6_K", 256, 210, 1, 1),
    T(QUANT_Q8_K, "Q8_K", 256, 292, 1, 1),
    T(QUANT_IQ2_XXS, "IQ2_XXS", 256, 66, 0, 0),
    T(QUANT_IQ2_XS, "IQ2_XS", 256, 74, 0, 0),
    T(QUANT_IQ3_XXS, "IQ3_XXS", 256, 98, 0, 0),
    T(QUANT_IQ1_S, "IQ1_S", 256, 50, 0, 0),
    T(QUANT_IQ4_NL, "IQ4_NL", 32, 18, 1, 1),
    T(QUANT_IQ3_S, "IQ3_S", 256, 110, 0, 0),
    T(QUANT_IQ2_S, "IQ2_S", 256, 82, 0, 0),
    T(QUANT_IQ4_XS, "IQ4_XS", 256, 136, 1, 1),
    T(QUANT_I8, "I8", 1, 1, 0, 0),
    T(QUANT_I16, "I16", 1, 2, 0, 0),
    T(QUANT_I32, "I32", 1, 4, 0, 0),
    T(QUANT_I64, "I64", 1, 8, 0, 0),
    T(QUANT_F64, "F64", 1, 8, 0, 0),
    T(QUANT_IQ1_M, "IQ1_M", 256, 56, 0, 0),
    T(QUANT_BF16, "BF16", 1, 2, 1, 1),
    T(QUANT_TQ1_0, "TQ1_0", 256, 54, 0, 0),
    T(QUANT_TQ2_0, "TQ2_0", 256, 66, 0, 0),
    T(QUANT_MXFP4, "MXFP4", 32, 17, 1, 1),
    T(QUANT_NVFP4, "NVFP4", 64, 36, 0, 0),
    T(QUANT_Q1_0, "Q1_0", 128, 18, 0, 0),
    T(QUANT_Q2_0, "Q2_0", 64, 18, 0, 0),
};
#undef T

const quant_type_info *quant_type_get(int type) {
    if (type < 0 || type >= QUANT_TYPE_LIMIT || !quant_types[type].name) return NULL;
    return &quant_types[type];
}

const char *quant_type_name(int type) {
    const quant_type_info *t = quant_type_get(type);
    return t ? t->name : "?";
}

int quant_type_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < QUANT_TYPE_LIMIT; i++)
        if (quant_types[i].name && strcmp(quant_types[i].name, name) == 0) return i;
    return -1;
}

size_t quant_row_bytes(int type, int64_t n) {
    const quant_type_info *t = quant_type_get(type);
    if (!t || n <= 0 || n % t->block_size) return 0;
    return (size_t)(n / t->block_size) * t->type_size;
}

/* ---------------------------------------------------------------- scalars */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t quant_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00;      /* NaN -> canonical quiet NaN */
    if (ax >= 0x477ff000u) return sign | 0x7c00;     /* >= 65520 rounds to infinity */
    if (ax >= 0x38800000u) {                         /* normal half (>= 2^-14) */
        /* round the 13 dropped mantissa bits to nearest even; a carry moves into the
         * exponent field, which is exactly the right result */
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
        return sign | (uint16_t)((r - 0x38000000u) >> 13); /* rebias 127 -> 15 */
    }
    if (ax <= 0x33000000u) return sign;              /* <= 2^-25 rounds to zero */
    /* subnormal half: count units of 2^-24, rounding to nearest even */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                        /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

float quant_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13)); /* inf / NaN */
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        /* subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return bits_f32(sign | f32_bits(v));
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t quant_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

float quant_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline float rd_f16(const uint8_t *p) { return quant_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }
static inline void wr_f16(uint8_t *p, float f) {
    uint16_t h = quant_f32_to_f16(f);
    p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8);
}

/* ggml's nearest_int: adding 1.5*2^23 leaves round-half-even(f) in the low mantissa
 * bits. ggml asserts |f| <= 2^22-1; out-of-range or NaN input (only possible for
 * non-finite data) is clamped here so that nothing is undefined. */
static inline int nearest_int(float f) {
    if (!(fabsf(f) <= 4194303.f)) f = (f != f) ? 0.f : (f > 0 ? 4194303.f : -4194303.f);
    float v = f + 12582912.f;
    uint32_t i = f32_bits(v);
    return (int)(i & 0x007fffffu) - 0x00400000;
}

/* C's float->int conversion truncates; ggml applies it to values that are in range for
 * finite input. Clamp first so that NaN/inf input is not undefined behaviour. */
static inline int trunc_to_int(float v) {
    if (!(v > -1000.f)) return v != v ? 0 : -1000;
    if (v > 1000.f) return 1000;
    return (int)v;
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* ---------------------------------------------------------------- 32-element blocks */

static void dequant_q4_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((b[2 + j] & 0x0f) - 8) * d;
        y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
    }
}

static void quant_q4_0(const float *x, uint8_t *b) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    const float d = max / -8;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    for (int j = 0; j < 16; j++) {
        int q0 = imin(15, trunc_to_int(x[j] * id + 8.5f));
        int q1 = imin(15, trunc_to_int(x[j + 16] * id + 8.5f));
        b[2 + j] = (uint8_t)((q0 & 0x0f) | (q1 << 4));
    }
}

static void dequant_q4_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(b[4 + j] & 0x0f) * d + m;
        y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
    }
}

static void quant_q4_1(const float *x, uint8_t *b) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    wr_f16(b + 2, min);
    for (int j = 0; j < 16; j++) {
        int q0 = imax(0, imin(15, trunc_to_int((x[j] - min) * id + 0.5f)));
        int q1 = imax(0, imin(15, trunc_to_int((x[j + 16] - min) * id + 0.5f)));
        b[4 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void dequant_q5_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
    for (int j = 0; j < 16; j++) {
        int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (float)(((b[6 + j] & 0x0f) | h0) - 16) * d;
        y[j + 16] = (float)(((b[6 + j] >> 4) | h1) - 16) * d;
    }
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void quant_q5_0(const float *x, uint8_t *b) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    const float d = max / -16;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int q0 = imax(0, imin(31, trunc_to_int(x[j] * id + 16.5f)));
        int q1 = imax(0, imin(31, trunc_to_int(x[j + 16] * id + 16.5f)));
        b[6 + j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
        qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
        qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
    }
    put_u32(b + 2, qh);
}

static void dequant_q5_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    uint32_t qh = (uint32_t)b[4] | ((uint32_t)b[5] << 8) | ((uint32_t)b[6] << 16) | ((uint32_t)b[7] << 24);
    for (int j = 0; j < 16; j++) {
        int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (float)((b[8 + j] & 0x0f) | h0) * d + m;
        y[j + 16] = (float)((b[8 + j] >> 4) | h1) * d + m;
    }
}

static void quant_q5_1(const float *x, uint8_t *b) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    wr_f16(b + 2, min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int q0 = imax(0, imin(31, trunc_to_int((x[j] - min) * id + 0.5f)));
        int q1 = imax(0, imin(31, trunc_to_int((x[j + 16] - min) * id + 0.5f)));
        b[8 + j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
        qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
        qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
    }
    put_u32(b + 4, qh);
}

static void dequant_q8_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0.f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    for (int j = 0; j < 32; j++) {
        float r = roundf(x[j] * id);
        b[2 + j] = (uint8_t)(int8_t)imax(-128, imin(127, trunc_to_int(r)));
    }
}

/* ---------------------------------------------------------------- K-quant helpers */

/* Scale/min search for one sub-block with an affine code x ~ scale*L - min (L in
 * 0..nmax): start from the min/max fit, then try nstep+1 slightly different inverse
 * scales, solving the weighted least-squares scale and min for each set of codes, and
 * keep the best (weighted squared error). Returns the scale; *the_min gets -min >= 0.
 * This is ggml's make_qkx2_quants with use_mad = false. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = imax(0, imin(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Symmetric scale search for one sub-block, x ~ scale*(L - nmax), L in 0..2*nmax-1,
 * weighting each element by x^2: try 19 inverse scales around -nmax/max and keep the
 * one that maximises (sum w x l)^2 / sum w l^2. ggml's make_qx_quants with
 * rmse_type = 1 and no importance weights (the path quantize_row_q6_K_ref takes). */
static float make_qx_quants_rmse1(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < 1e-15f) { /* GROUP_MAX_EPS: all zero */
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = imax(-nmax, imin(nmax - 1, l));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Shared front half of quantize_row_q4_K_ref / q5_K_ref: sub-block fits, 6-bit scale
 * and min codes, f16 super-scales, then re-quantization against the rounded scales.
 * Fills b[0..16) and the codes L (0..nmax). */
static void quant_kx_scales(const float *x, uint8_t *b, uint8_t *L, int nmax, float rmin, float rdelta, int nstep) {
    uint8_t Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t *sc = b + 4;
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        if (ls > 63) ls = 63;
        if (lm > 63) lm = 63;
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    wr_f16(b, max_scale / 63.f);
    wr_f16(b + 2, max_min / 63.f);
    const float d_all = rd_f16(b), dmin_all = rd_f16(b + 2);
    for (int j = 0; j < 8; ++j) {
        int s, m;
        quant_k4_scale_min(j, sc, &s, &m);
        const float d = d_all * s;
        if (d == 0.f) continue; /* keep the codes of the sub-block fit, as ggml does */
        const float dm = dmin_all * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, l));
        }
    }
}

/* ---------------------------------------------------------------- Q4_K */

static void dequant_q4_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b), min = rd_f16(b + 2);
    const uint8_t *sc = b + 4, *q = b + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
        int s, m;
        quant_k4_scale_min(is, sc, &s, &m);
        const float d1 = d * s, m1 = min * m;
        quant_k4_scale_min(is + 1, sc, &s, &m);
        const float d2 = d * s, m2 = min * m;
        for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
}

static void quant_q4_k(const float *x, uint8_t *b) {
    uint8_t L[256];
    quant_kx_scales(x, b, L, 15, -1.f, 0.1f, 20);
    uint8_t *q = b + 16;
    for (int j = 0; j < 256; j += 64, q += 32)
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

/* ---------------------------------------------------------------- Q5_K */

static void dequant_q5_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b), min = rd_f16(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32) {
        int s, m;
        quant_k4_scale_min(is, sc, &s, &m);
        const float d1 = d * s, m1 = min * m;
        quant_k4_scale_min(is + 1, sc, &s, &m);
        const float d2 = d * s, m2 = min * m;
        for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        u1 <<= 2;
        u2 <<= 2;
    }
}

static void quant_q5_k(const float *x, uint8_t *b) {
    uint8_t L[256];
    quant_kx_scales(x, b, L, 31, -0.5f, 0.1f, 15);
    uint8_t *qh = b + 16, *ql = b + 48;
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < 256; n += 64, ql += 32) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/* ---------------------------------------------------------------- Q6_K */

static void dequant_q6_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; ++l) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
    }
}

static void quant_q6_k(const float *x, uint8_t *b) {
    int8_t L[256];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
        scales[ib] = scale;
        if (fabsf(scale) > max_abs_scale) {
            max_abs_scale = fabsf(scale);
            max_scale = scale;
        }
    }
    if (max_abs_scale < 1e-15f) { /* all zero: an all-zero block (d = +0) */
        memset(b, 0, 210);
        return;
    }
    int8_t *sc = (int8_t *)(b + 192);
    float iscale = -128.f / max_scale;
    wr_f16(b + 208, 1 / iscale);
    for (int ib = 0; ib < 16; ++ib) sc[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
    const float d_all = rd_f16(b + 208);
    for (int j = 0; j < 16; ++j) {
        float d = d_all * sc[j];
        if (d == 0.f) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = nearest_int(x[16 * j + ii] / d);
            L[16 * j + ii] = (int8_t)(imax(-32, imin(31, l)) + 32);
        }
    }
    uint8_t *ql = b, *qh = b + 128;
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                              ((L[j + l + 96] >> 4) << 6));
        }
    }
}

/* ---------------------------------------------------------------- Q8_K */

static void dequant_q8_k(const uint8_t *b, float *y) {
    float d;
    memcpy(&d, b, 4);
    for (int j = 0; j < 256; ++j) y[j] = d * (int8_t)b[4 + j];
}

static void quant_q8_k(const float *x, uint8_t *b) {
    float max = 0, amax = 0;
    for (int j = 0; j < 256; ++j) {
        float ax = fabsf(x[j]);
        if (ax > amax) { amax = ax; max = x[j]; }
    }
    /* ggml leaves bsums unwritten for an all-zero block; they are zero here */
    memset(b, 0, 292);
    if (amax == 0.f) return;
    const float iscale = -127.f / max;
    int8_t *qs = (int8_t *)(b + 4);
    for (int j = 0; j < 256; ++j) qs[j] = (int8_t)imax(-128, imin(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < 16; ++j) {
        int sum = 0;
        for (int ii = 0; ii < 16; ++ii) sum += qs[j * 16 + ii];
        int16_t s16 = (int16_t)sum;
        memcpy(b + 260 + 2 * j, &s16, 2);
    }
    float d = 1 / iscale;
    memcpy(b, &d, 4);
}

/* ---------------------------------------------------------------- non-linear 4-bit codes */

/* IQ4_NL / IQ4_XS: a 4-bit code indexes this table of int8 levels (denser near zero),
 * times the block (or sub-block) scale. The values are ggml's kvalues_iq4nl. */
const int8_t quant_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* MXFP4: e2m1 (FP4) values doubled to integers; the E8M0 block exponent is read as half
 * its power of two to compensate. ggml's kvalues_mxfp4. */
const int8_t quant_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

float quant_e8m0_to_f32_half(uint8_t e) {
    /* 2^(e-128): e = 0 and 1 give the subnormals 2^-128 and 2^-127 */
    return bits_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* IQ4_NL (32 el, 18 B): d:f16 @0, qs[16] @2; byte j holds element j (low) and j+16 (high). */
static void dequant_iq4_nl(const uint8_t *b, float *y) {
    const float d = rd_f16(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * quant_iq4nl_values[b[2 + j] & 0xf];
        y[j + 16] = d * quant_iq4nl_values[b[2 + j] >> 4];
    }
}

/* IQ4_XS (256 el, 136 B): d:f16 @0, scales_h:u16 @2, scales_l[4] @4, qs[128] @8. Eight
 * sub-blocks of 32: 16 bytes of qs each (nibble order as IQ4_NL), scale d * (ls - 32). */
static void dequant_iq4_xs(const uint8_t *b, float *y) {
    const float d = rd_f16(b);
    for (int ib = 0; ib < 8; ib++, y += 32) {
        const float dl = d * (float)quant_iq4_xs_scale(b, ib);
        const uint8_t *qs = b + 8 + 16 * ib;
        for (int j = 0; j < 16; j++) {
            y[j] = dl * quant_iq4nl_values[qs[j] & 0xf];
            y[j + 16] = dl * quant_iq4nl_values[qs[j] >> 4];
        }
    }
}

/* IQ4_NL and IQ4_XS quantization as llama-quantize does it without an importance matrix
 * (ggml's quantize_iq4_nl / quantize_iq4_xs, whose group search runs with ntry = 7; note that
 * quantize_row_iq4_nl_ref runs none and gives other blocks). */

/* The codes of 32 values v = inv * x[j]: the nearest IQ4_NL level (the levels ascend; halfway
 * between two goes to the upper one), as ggml's best_index_int8 finds it (the last
 * level lo <= v by bisection, then lo or lo + 1 by v - lv[lo] < lv[lo + 1] - v). Here lo is
 * counted without branches, as the number of levels k = 1..14 with !(v < lv[k]) (what the
 * bisection tests), and the two neighbours are selected alongside, so that the compiler runs
 * the 32 values in vector lanes: ggml's branches mispredict on every other value and were the
 * quantizer's cost. Every input, NaN and infinities included, gets ggml's code. */
static void iq4_indices(const float *x, float inv, int *out) {
    const int8_t *lv = quant_iq4nl_values;
    float v[32], below[32], above[32];
    int lo[32];
    for (int j = 0; j < 32; j++) {
        v[j] = inv * x[j];
        lo[j] = 0;
        below[j] = lv[0];
        above[j] = lv[15];
    }
    for (int k = 1; k < 15; k++) {
        const float l = lv[k], r = lv[15 - k];
        for (int j = 0; j < 32; j++) {
            const int ge = !(v[j] < l);
            lo[j] += ge;
            below[j] = ge ? l : below[j];
            above[j] = v[j] < r ? r : above[j];
        }
    }
    for (int j = 0; j < 32; j++) out[j] = v[j] - below[j] < above[j] - v[j] ? lo[j] : lo[j] + 1;
}

/* The codes of 32 values at inverse scale inv, and the sums of their least-squares fit with
 * weights x^2: *sqx = sum w q x, *sq2 = sum w q q (the best scale is sqx / sq2). */
static void iq4_fit(const float *x, float inv, float *sqx, float *sq2) {
    int idx[32];
    iq4_indices(x, inv, idx);
    float a = 0, b = 0;
    for (int j = 0; j < 32; j++) {
        const float q = quant_iq4nl_values[idx[j]], w = x[j] * x[j];
        a += w * q * x[j];
        b += w * q * q;
    }
    *sqx = a;
    *sq2 = b;
}

/* The scale of a group of 32: first the largest magnitude onto the level -127 and a
 * least-squares refit of the codes that gives, then the inverse scales (k - 127) / max for
 * k = -7..7, keeping the fit that explains most (largest sqx^2 / sq2). 0 for a group whose
 * values are all below 1e-15 in magnitude. */
static float iq4_group_scale(const float *x) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    if (amax < 1e-15f) return 0;
    float d = -max / quant_iq4nl_values[0], sqx, sq2;
    iq4_fit(x, 1 / d, &sqx, &sq2);
    d = sq2 > 0 ? sqx / sq2 : 0.f;
    float best = d * sqx;
    for (int k = -7; k <= 7; k++) {
        iq4_fit(x, (k + quant_iq4nl_values[0]) / max, &sqx, &sq2);
        if (sq2 > 0 && sqx * sqx > best * sq2) {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    return d;
}

/* The 16 code bytes of a group of 32 at inverse scale inv: value j in the low nibble of
 * byte j, value j + 16 in its high nibble. */
static void iq4_codes(const float *x, float inv, uint8_t *qs) {
    int idx[32];
    iq4_indices(x, inv, idx);
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(idx[j] | idx[j + 16] << 4);
}

static void quant_iq4_nl(const float *x, uint8_t *b) {
    const float d = iq4_group_scale(x);
    wr_f16(b, d);
    iq4_codes(x, d ? 1 / d : 0, b + 2); /* against the unrounded scale, as ggml */
}

/* IQ4_XS: the eight group scales as 6-bit multiples l - 32 of one f16 scale d = -s/32, s the
 * group scale of largest magnitude; each group's codes are then chosen again for d * l. */
static void quant_iq4_xs(const float *x, uint8_t *b) {
    float sc[8], amax = 0, smax = 0;
    for (int ib = 0; ib < 8; ib++) {
        sc[ib] = iq4_group_scale(x + 32 * ib);
        if (fabsf(sc[ib]) > amax) {
            amax = fabsf(sc[ib]);
            smax = sc[ib];
        }
    }
    const float d = -smax / 32, inv = d ? 1 / d : 0.f;
    wr_f16(b, d);
    uint16_t sh = 0;
    memset(b + 4, 0, 4);
    for (int ib = 0; ib < 8; ib++) {
        int l = nearest_int(inv * sc[ib]);
        l = l < -32 ? -32 : l > 31 ? 31 : l;
        const float dl = d * l;
        iq4_codes(x + 32 * ib, dl ? 1 / dl : 0.f, b + 8 + 16 * ib);
        l += 32;
        b[4 + ib / 2] |= (uint8_t)((l & 0xf) << (4 * (ib % 2)));
        sh |= (uint16_t)((l >> 4) << (2 * ib));
    }
    b[2] = (uint8_t)sh;
    b[3] = (uint8_t)(sh >> 8);
}

/* MXFP4 (32 el, 17 B): e:E8M0 @0, qs[16] @1; nibble order as IQ4_NL. */
static void dequant_mxfp4(const uint8_t *b, float *y) {
    const float d = quant_e8m0_to_f32_half(b[0]);
    for (int j = 0; j < 16; j++) {
        y[j] = d * quant_mxfp4_values[b[1 + j] & 0xf];
        y[j + 16] = d * quant_mxfp4_values[b[1 + j] >> 4];
    }
}

/* MXFP4 quantization as ggml's quantize_row_mxfp4_ref (and the gguf package) does it: the
 * block exponent is floor(log2(amax)) - 2, so that the largest code (12, doubled e2m1 6.0)
 * times the half-scale covers amax, and each value takes the nearest of the 16 levels at
 * that scale (the first one on a tie). Like the other quantizers this file is built for the
 * baseline x86-64 (no FMA), so multiply and subtract round separately, as in ggml's portable
 * build and the gguf package. */
static void quant_mxfp4(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]);
    /* clamped where ggml's cast would be undefined (amax infinite, or below 2^-125) */
    const float ef = amax > 0.0f ? floorf(log2f(amax)) - 2 + 127 : 0.0f;
    const uint8_t e = ef >= 255.0f ? 255 : ef > 0.0f ? (uint8_t)ef : 0;
    const float d = quant_e8m0_to_f32_half(e);
    b[0] = e;
    for (int j = 0; j < 16; j++) {
        int best[2] = {0, 0};
        for (int h = 0; h < 2; h++) {
            const float v = x[j + 16 * h];
            float best_err = fabsf((float)quant_mxfp4_values[0] * d - v);
            for (int i = 1; i < 16; i++) {
                float err = fabsf((float)quant_mxfp4_values[i] * d - v);
                if (err < best_err) { best[h] = i; best_err = err; }
            }
        }
        b[1 + j] = (uint8_t)(best[0] | best[1] << 4);
    }
}

/* ---------------------------------------------------------------- row entry points */

typedef void (*dequant_fn)(const uint8_t *, float *);
typedef void (*quant_fn)(const float *, uint8_t *);

static dequant_fn dequant_for(int type) {
    switch (type) {
    case QUANT_Q4_0: return dequant_q4_0;
    case QUANT_Q4_1: return dequant_q4_1;
    case QUANT_Q5_0: return dequant_q5_0;
    case QUANT_Q5_1: return dequant_q5_1;
    case QUANT_Q8_0: return dequant_q8_0;
    case QUANT_Q4_K: return dequant_q4_k;
    case QUANT_Q5_K: return dequant_q5_k;
    case QUANT_Q6_K: return dequant_q6_k;
    case QUANT_Q8_K: return dequant_q8_k;
    case QUANT_IQ4_NL: return dequant_iq4_nl;
    case QUANT_IQ4_XS: return dequant_iq4_xs;
    case QUANT_MXFP4: return dequant_mxfp4;
    default: return NULL;
    }
}

static quant_fn quant_for(int type) {
    switch (type) {
    case QUANT_Q4_0: return quant_q4_0;
    case QUANT_Q4_1: return quant_q4_1;
    case QUANT_Q5_0: return quant_q5_0;
    case QUANT_Q5_1: return quant_q5_1;
    case QUANT_Q8_0: return quant_q8_0;
    case QUANT_Q4_K: return quant_q4_k;
    case QUANT_Q5_K: return quant_q5_k;
    case QUANT_Q6_K: return quant_q6_k;
    case QUANT_Q8_K: return quant_q8_k;
    case QUANT_IQ4_NL: return quant_iq4_nl;
    case QUANT_IQ4_XS: return quant_iq4_xs;
    case QUANT_MXFP4: return quant_mxfp4;
    default: return NULL;
    }
}

int quant_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const quant_type_info *t = quant_type_get(type);
    if (!t || !t->can_dequantize || n < 0 || n % t->block_size) return -1;
    const uint8_t *s = src;
    switch (type) {
    case QUANT_F32: if (n) memcpy(dst, src, (size_t)n * 4); return 0;
    case QUANT_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = quant_f16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return 0;
    case QUANT_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = quant_bf16_to_f32((uint16_t)(s[2 * i] | (s[2 * i + 1] << 8)));
        return 0;
    default: break;
    }
    dequant_fn f = dequant_for(type);
    if (!f) return -1;
    for (int64_t i = 0, nb = n / t->block_size; i < nb; i++)
        f(s + (size_t)i * t->type_size, dst + i * t->block_size);
    return 0;
}

int quant_quantize_row(int type, const float *src, void *dst, int64_t n) {
    const quant_type_info *t = quant_type_get(type);
    if (!t || !t->can_quantize || n < 0 || n % t->block_size) return -1;
    uint8_t *d = dst;
    switch (type) {
    case QUANT_F32: if (n) memcpy(dst, src, (size_t)n * 4); return 0;
    case QUANT_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = quant_f32_to_f16(src[i]);
            d[2 * i] = (uint8_t)h; d[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    case QUANT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = quant_f32_to_bf16(src[i]);
            d[2 * i] = (uint8_t)h; d[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    default: break;
    }
    quant_fn f = quant_for(type);
    if (!f) return -1;
    for (int64_t i = 0, nb = n / t->block_size; i < nb; i++)
        f(src + i * t->block_size, d + (size_t)i * t->type_size);
    return 0;
}

float quant_dot_row_f32(int type, const void *w_row, const float *x, int64_t n) {
    const quant_type_info *t = quant_type_get(type);
    if (!t || !t->can_dequantize || n < 0 || n % t->block_size) return NAN;
    float sum = 0.f;
    if (type == QUANT_F32) {
        const uint8_t *w = w_row;
        for (int64_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, w + 4 * i, 4);
            sum += v * x[i];
        }
        return sum;
    }
    /* dequantize a chunk of whole blocks at a time into a stack buffer */
    enum { CHUNK = 256 };
    float buf[CHUNK];
    const int64_t per = t->block_size >= CHUNK ? t->block_size : CHUNK - CHUNK % t->block_size;
    const uint8_t *w = w_row;
    for (int64_t i = 0; i < n; i += per) {
        int64_t m = n - i < per ? n - i : per;
        quant_dequantize_row(type, w + (size_t)(i / t->block_size) * t->type_size, buf, m);
        for (int64_t j = 0; j < m; j++) sum += buf[j] * x[i + j];
    }
    return sum;
}
