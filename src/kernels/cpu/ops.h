/* ops.h - the model-sized operations of the CPU backend.
 *
 * This is the plain-C reference path: fp32 activations, weights read in their stored
 * dtype (bf16, f16, f32) and widened to f32 one row at a time. Faster paths (SIMD,
 * quantized dot products) are tested against these functions. Large products are spread
 * over all cores with OpenMP, whose thread pool persists between calls. */
#ifndef QNEXT_OPS_H
#define QNEXT_OPS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "model/model.h"

static inline float qn_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float qn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float qn_silu(float x) { return x / (1.0f + expf(-x)); }
static inline float qn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
/* PyTorch's softplus with beta 1 and threshold 20. */
static inline float qn_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

void op_set_threads(int n);
int op_get_threads(void);

/* dst[0..n) = f32(src), for a stored dtype of F32/F16/BF16. */
void op_convert_to_f32(int dtype, const void *src, float *dst, int64_t n);
/* Reads logical row r of W (honouring row_map) as f32. */
void op_row_to_f32(const qn_tensor *W, int64_t r, float *dst);

/* f32 dot product with sixteen independent partial sums, so the compiler can fill vector
 * registers without reassociating one running sum. Inline, so that callers compiled for a
 * wider instruction set (target clones) get it vectorised for that set. */
static inline float qn_dot_f32(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}
float op_dot_f32(const float *a, const float *b, int64_t n);

/* y[t*ldy + r] = sum_c W[r,c] * x[t*ldx + c] for t < T and r in [r0, r1).
 * The rows are split over the threads; each weight row is widened once per call. */
void op_matmul_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy);
static inline void op_matmul(const qn_tensor *W, const float *x, int T, float *y) {
    op_matmul_rows(W, 0, W->rows, x, T, W->cols, y, W->rows);
}

/* Like op_matmul, but row t of the result goes to y[t][0..rows). */
void op_matmul_to_rows(const qn_tensor *W, const float *x, int T, float *const *y);

/* The plain C reference of the two products above: each weight row widened to f32,
 * f32 activations. The fast versions use the SIMD kernels of dot.h (activations quantized
 * per block for quantized weights) and are tested against these. */
void op_matmul_rows_ref(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                        int64_t ldy);
void op_matmul_to_rows_ref(const qn_tensor *W, const float *x, int T, float *const *y);
/* Name of the kernel set in use ("avx512-vnni", "avx2", "generic", "reference"). */
const char *op_kernel_name(void);

/* y[t*ldy + r] = W[r] . x[t*W->cols ..] for t < T and every row r of W, for n independent
 * jobs: the products of a MoE layer (gate and up of every expert that has tokens, then every
 * down), or the projections of one input, run as one parallel region instead of one per
 * product. */
typedef struct {
    const qn_tensor *W;
    const float *x; /* [T, W->cols] */
    float *y;       /* [T, ldy] */
    int T;          /* rows of x: 1 for a decode step, the tokens routed to an expert */
    int64_t ldy;    /* stride of y's rows; 0 means W->rows */
} op_job;
#define OP_MULTI_MAX 256 /* jobs per call */
void op_matmul_multi(const op_job *jobs, int n);

/* a[i] = silu(a[i]) * b[i] over n values (b NULL: silu alone); SIMD where the kernel set has
 * it, qn_silu on the reference path (QNEXT_KERNELS=reference|generic). */
void op_silu_mul(float *a, const float *b, int64_t n);

/* Zero-centred RMSNorm: y = x * rsqrt(mean(x^2) + eps) * (1 + w), fp32. y may alias x. */
void op_rmsnorm1p(const float *x, const float *w, float *y, int n, float eps);

#endif
