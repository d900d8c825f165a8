/* gemm_amx.h - AMX bf16 tile products for prompt processing (see gemm_amx.c). */
#ifndef QNEXT_GEMM_AMX_H
#define QNEXT_GEMM_AMX_H
#include "model/model.h"

/* 0: no AMX (or QNEXT_AMX=0); 1: used for quantized weights; 2: for all weights (QNEXT_AMX=all). */
int gemm_amx_mode(void);
/* y[t*ldy + r] (or yrows[t][r] when yrows is set) = W[r] . x[t] for r in [r0, r1), t < T,
 * with bf16 operands and f32 accumulation. Returns 0 without doing anything when the
 * shape does not suit the tiles (cols not a multiple of 32, fewer than 16 tokens). */
int gemm_amx_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                  int64_t ldy, float *const *yrows);
/* Logical row r of W widened to bf16 as the tiles see it (exposed for tests). */
void gemm_amx_widen_row(const qn_tensor *W, int64_t r, uint16_t *dst);
#endif
