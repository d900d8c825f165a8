/* quant.h - ggml's tensor element formats (F32, F16, BF16 and the block quantizations
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS and MXFP4),
 * bit-compatible with ggml/llama.cpp.
 *
 * A GGUF file stores each tensor row as a run of fixed-size blocks: `block_size` elements
 * packed into `type_size` bytes. This module knows the sizes of every ggml type id (so a
 * GGUF reader can size any tensor) and implements, for the types qnext supports:
 *   - dequantization to f32, bit-identical to ggml's dequantize_row_* (and the gguf
 *     Python package), and
 *   - reference quantization, byte-identical to ggml's quantize_row_*_ref (the path
 *     llama-quantize takes without an importance matrix).
 * These are plain C reference routines; the fast SIMD matmul kernels live elsewhere and
 * are tested against these.
 *
 * Block layouts (little-endian, offsets in bytes; "f16" is an IEEE half):
 *   Q4_0 (32 el, 18 B):  d:f16 @0, qs[16] @2        x = (nibble - 8) * d
 *   Q4_1 (32 el, 20 B):  d:f16 @0, m:f16 @2, qs[16] @4   x = nibble * d + m
 *   Q5_0 (32 el, 22 B):  d:f16 @0, qh[4] @2, qs[16] @6   x = (nibble | hbit<<4) - 16) * d
 *   Q5_1 (32 el, 24 B):  d @0, m @2, qh[4] @4, qs[16] @8 x = (nibble | hbit<<4) * d + m
 *   Q8_0 (32 el, 34 B):  d:f16 @0, qs:int8[32] @2   x = q * d
 *   Q4_K (256 el, 144 B): d @0, dmin @2, scales[12] @4 (8 x 6-bit scale, 8 x 6-bit min),
 *                          qs[128] @16               x = d*sc[j] * q - dmin*m[j]
 *   Q5_K (256 el, 176 B): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
 *   Q6_K (256 el, 210 B): ql[128] @0, qh[64] @128, scales:int8[16] @192, d:f16 @208
 *                          x = d * sc[j] * (q6 - 32)
 *   Q8_K (256 el, 292 B): d:f32 @0, qs:int8[256] @4, bsums:int16[16] @260 (activations)
 *   IQ4_NL (32 el, 18 B): d:f16 @0, qs[16] @2        x = d * kv[nibble]
 *   IQ4_XS (256 el, 136 B): d:f16 @0, scales_h:u16 @2, scales_l[4] @4, qs[128] @8;
 *                          sub-block ib (32 el, qs[16*ib..]) has the 6-bit scale
 *                          ls = scales_l nibble ib | 2 bits ib of scales_h << 4,
 *                          x = d * (ls - 32) * kv[nibble]    (kv = quant_iq4nl_values)
 *   MXFP4 (32 el, 17 B):  e:E8M0 @0, qs[16] @1      x = 2^(e-128) * mx[nibble]
 *                          (mx = quant_mxfp4_values, e2m1 values doubled)
 * IQ4_NL and IQ4_XS are quantized as llama-quantize does (ggml's quantize_iq4_nl/_xs, no
 * importance matrix); MXFP4 as ggml's quantize_row_mxfp4_ref.
 * In Q4_0/Q4_1/Q5_x byte j of qs holds element j (low nibble) and element j+16 (high).
 * docs/GGUF.md has the nibble orders of the K formats in full. */
#ifndef QNEXT_QUANT_H
#define QNEXT_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ggml type ids, as stored in GGUF tensor infos (ggml.h enum ggml_type). */
typedef enum {
    QUANT_F32 = 0, QUANT_F16 = 1, QUANT_Q4_0 = 2, QUANT_Q4_1 = 3,
    QUANT_Q5_0 = 6, QUANT_Q5_1 = 7, QUANT_Q8_0 = 8, QUANT_Q8_1 = 9,
    QUANT_Q2_K = 10, QUANT_Q3_K = 11, QUANT_Q4_K = 12, QUANT_Q5_K = 13, QUANT_Q6_K = 14,
    QUANT_Q8_K = 15, QUANT_IQ2_XXS = 16, QUANT_IQ2_XS = 17, QUANT_IQ3_XXS = 18,
    QUANT_IQ1_S = 19, QUANT_IQ4_NL = 20, QUANT_IQ3_S = 21, QUANT_IQ2_S = 22,
    QUANT_IQ4_XS = 23, QUANT_I8 = 24, QUANT_I16 = 25, QUANT_I32 = 26, QUANT_I64 = 27,
    QUANT_F64 = 28, QUANT_IQ1_M = 29, QUANT_BF16 = 30, QUANT_TQ1_0 = 34, QUANT_TQ2_0 = 35,
    QUANT_MXFP4 = 39, QUANT_NVFP4 = 40, QUANT_Q1_0 = 41, QUANT_Q2_0 = 42,
    QUANT_TYPE_LIMIT = 43 /* one past the largest id this table knows */
} quant_type;

#define QUANT_QK_K 256

typedef struct {
    const char *name;    /* ggml's name, e.g. "Q4_K" */
    int64_t block_size;  /* elements per block */
    size_t type_size;    /* bytes per block */
    int can_dequantize;  /* quant_dequantize_row / quant_dot_row_f32 handle it */
    int can_quantize;    /* quant_quantize_row handles it */
} quant_type_info;

/* Type table entry for a ggml type id, or NULL when the id is not a ggml type. */
const quant_type_info *quant_type_get(int type);
/* "Q4_K" etc., or "?" for an unknown id. */
const char *quant_type_name(int type);
/* Type id for a ggml type name (case-sensitive, as ggml spells it), or -1. */
int quant_type_from_name(const char *name);
/* Bytes of a row of n elements; 0 when the type is unknown or n is not a whole number
 * of blocks (n must be > 0). */
size_t quant_row_bytes(int type, int64_t n);

/* Dequantizes n elements (a whole number of blocks) from src into dst.
 * Returns 0, or -1 for an unsupported type or a bad n (dst untouched). */
int quant_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* Reference quantization of n elements (a whole number of blocks); same return codes.
 * For finite input the bytes equal ggml's quantize_row_*_ref; non-finite input gives
 * some bytes without undefined behaviour. */
int quant_quantize_row(int type, const float *src, void *dst, int64_t n);
/* sum_i w[i] * x[i] for a row of n elements of the given type, by dequantizing one
 * block at a time and accumulating in fp32 (the reference the SIMD kernels are held
 * to). Returns NaN for an unsupported type or a bad n. */
float quant_dot_row_f32(int type, const void *w_row, const float *x, int64_t n);

/* The 16 int8 levels of the IQ4_NL/IQ4_XS codes and of the MXFP4 codes (doubled e2m1),
 * and the MXFP4 block scale: E8M0 exponent e as 2^(e-128) (half of 2^(e-127), which
 * undoes the doubling), as ggml's GGML_E8M0_TO_FP32_HALF. */
extern const int8_t quant_iq4nl_values[16];
extern const int8_t quant_mxfp4_values[16];
float quant_e8m0_to_f32_half(uint8_t e);

/* Scalar conversions, as ggml does them: f32->f16 and f32->bf16 round to nearest even;
 * a NaN becomes a quiet NaN (f16: sign|0x7E00, bf16: the top half with the quiet bit
 * set), an f32 too large for f16 becomes +-inf. f16/bf16 -> f32 are exact. */
uint16_t quant_f32_to_f16(float f);
float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);
float quant_bf16_to_f32(uint16_t h);

/* Q4_K/Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes: bytes 0-3 hold
 * scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 mins 0-3 and the
 * top bits of mins 4-7; bytes 8-11 the low nibbles of scale j (low) and min j (high)
 * for j = 4..7. The scale and min of sub-block j of the 12 bytes at q: */
static inline void quant_k4_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* All eight 6-bit scales and mins of the 12 scale bytes q of a Q4_K/Q5_K block at once:
 * sub-block j's scale in byte j of *sc, its min in byte j of *mn (quant_k4_scale_min for
 * every j, with word operations instead of eight branches). */
static inline void quant_k4_unpack(const uint8_t *q, uint64_t *sc, uint64_t *mn) {
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    *sc = (uint64_t)sc_hi << 32 | sc_lo;
    *mn = (uint64_t)mn_hi << 32 | mn_lo;
}

/* IQ4_XS keeps its 8 six-bit sub-block scales as low nibbles in bytes 4-7 (sub-block ib in
 * the low or high half of byte 4 + ib/2) and high 2-bit pairs in the u16 at byte 2. The scale
 * of sub-block ib of the block at b, minus its offset 32: */
static inline int quant_iq4_xs_scale(const uint8_t *b, int ib) {
    const unsigned h = (unsigned)b[2] | ((unsigned)b[3] << 8);
    return (((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((h >> (2 * ib)) & 3) << 4)) - 32;
}

#endif
