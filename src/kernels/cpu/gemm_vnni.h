/* gemm_vnni.h - K-quant and Q8_0 weights against a few quantized activation rows with the tokens in
 * the vector lanes, on AVX-512 VNNI (see gemm_vnni.c). The same interface as the AMX integer
 * tiles of gemm_amx.h, for CPUs without AMX. */
#ifndef QNEXT_GEMM_VNNI_H
#define QNEXT_GEMM_VNNI_H
#include "model/model.h"

/* 1 on x86 CPUs with AVX-512 F/BW/VL/VNNI (and this file built for them). */
int gemm_vnni_available(void);
/* Bytes of the packed activations of one product of T tokens (cols a multiple of 256). */
size_t gemm_vnni_packed_bytes(int64_t cols, int T);
/* Lays out T Q8_K activation rows (row t at act + t * astride) for the kernels below, in
 * gemm_vnni_packed_bytes(cols, T) bytes, 64-byte aligned. Q4_K, Q5_K and Q6_K take the same. */
void gemm_vnni_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
/* y[t*ldy + r] (or yrows[t][r]) = W[r] . x[t] for r in [ra, rz), t < T, on the calling thread
 * alone; W is Q4_K, Q5_K or Q6_K (cols a multiple of 256). */
void gemm_vnniq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                       int64_t ldy, float *const *yrows);
void gemm_vnniq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                       int64_t ldy, float *const *yrows);
void gemm_vnniq5k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                       int64_t ldy, float *const *yrows);
/* The same for Q8_0 weights against Q8_0 activation rows (cols a multiple of 256), packed by
 * gemm_vnni_pack_q8 into gemm_vnni_packed_bytes(cols, T) bytes. */
void gemm_vnni_pack_q8(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
void gemm_vnniq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows);

#endif
