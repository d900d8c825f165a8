/* actq.h - SIMD quantization of activation rows for the dot kernels (Q8_0 for Q8_0/Q4_0
 * weights, Q8_K for the K formats), and the SiLU gate on activation rows.
 *
 * Decode quantizes every activation row once per product, so the plain C quantizers of
 * quant.c (a roundf call per value) cost about 5% of a decode step. These produce the same
 * bytes as quant_quantize_row: Q8_0 rounds half away from zero like roundf, Q8_K rounds
 * half to even like ggml's nearest_int, and the f16/f32 scales are computed the same way.
 * tests/test_kernels.c holds them to byte equality on random and tie-heavy rows. */
#ifndef QNEXT_ACTQ_H
#define QNEXT_ACTQ_H

#include <stdint.h>

typedef void (*actq_fn)(const float *x, void *dst, int64_t n);

typedef struct {
    actq_fn q8_0, q8_k; /* n a multiple of 32 / 256 */
    void (*silu_mul)(float *a, const float *b, int64_t n); /* a = silu(a) * b, b may be NULL */
} actq_kernels;

#if defined(__x86_64__) || defined(_M_X64)
extern const actq_kernels actq_avx2;
extern const actq_kernels actq_avx512;
#endif

/* Quantizes n activations to type at (QUANT_Q8_0, QUANT_Q8_K or dot.h's DOT_ACT_Q8_K4,
 * DOT_ACT_Q8_K6, DOT_ACT_Q8_K32 and DOT_ACT_Q8_0G) with the fastest kernel the selected dot kernel
 * set allows; any other type goes to quant_quantize_row. */
void actq_quantize_row(int at, const float *x, void *dst, int64_t n);

/* The set that matches the selected dot kernels, or NULL (the portable set: quant.c's
 * quantizers, ops.h's qn_silu). */
const actq_kernels *actq_select(void);

#endif
