/* repack.h - Q8_0 weights copied at load into groups of 16 interleaved rows (opt-in:
 * qnext_model_params.repack, `--repack`), and the AVX-512 VNNI kernel that reads them.
 *
 * The copy, per group of 16 rows and per 32-value block b (544 bytes, as many as the 16 rows'
 * own blocks): the 16 rows' f16 scales (32 bytes), then 8 words k of 64 bytes, each holding
 * values 4k..4k+3 of the 16 rows (row r at byte 4r), plus 128. One 512-bit register of a word
 * then holds 4 values of all 16 rows, and one vpdpbusd with a token's 4 activation values
 * broadcast from memory advances 16 rows at once: no per-row unpacking, no horizontal sums,
 * and each block's scales are applied to the 16 rows together. See repack.c for the numbers. */
#ifndef QNEXT_REPACK_H
#define QNEXT_REPACK_H
#include "model/model.h"

#define REPACK_ROWS 16
#define REPACK_BLOCK 544 /* bytes of one 32-value block of 16 rows */

/* 1 when this CPU (and this build) has the kernel below: x86-64 with AVX-512 F/BW/VL/VNNI. */
int repack_available(void);
/* Whether W can be repacked: Q8_0, rows a multiple of 16, cols a multiple of 32. */
int repack_q8_0_fits(const qn_tensor *W);
/* Bytes of W's repacked copy. */
size_t repack_q8_0_bytes(const qn_tensor *W);
/* Writes W's repacked copy (logical rows, through W's row map) to dst (64-byte aligned). */
void repack_q8_0(const qn_tensor *W, uint8_t *dst);
/* y[t*ldy + r] (or yrows[t][r]) = W[r] . x[t] for r in [r0, r1) (multiples of 16, or r1 = rows)
 * and t < T, from W->rp, on the calling thread alone. act: T activation rows of dot.h's
 * DOT_ACT_Q8_0G (row t at act + t * astride). The integer sums are exact; the result equals the
 * Q8_0 dot kernels' to float rounding. */
void repack_q8_0_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T,
                      float *y, int64_t ldy, float *const *yrows);

#endif
