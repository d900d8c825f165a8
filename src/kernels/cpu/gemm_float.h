/* gemm_float.h - register-tiled f32 products for float weights and several tokens. */
#ifndef QNEXT_GEMM_FLOAT_H
#define QNEXT_GEMM_FLOAT_H
#include "kernels/cpu/ops.h"

int gemm_float_available(void);
/* Whether gemm_float_rows takes W at T tokens: F32/F16/BF16 weights, T >= 4, AVX-512. */
int gemm_float_takes(const qn_tensor *W, int T);
/* As gemm_amx_rows, for F32/F16/BF16 weights and T >= 4, exact f32 arithmetic; returns 0
 * (doing nothing) for other types or when the CPU lacks AVX-512. */
int gemm_float_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy, float *const *yrows);
#endif
