/* repack.h - Q8_0, Q4_K, Q5_K and Q6_K weights copied at load into groups of 16 interleaved rows (opt-in:
 * qnext_model_params.repack, `--repack`), and the AVX-512 VNNI kernels that read them.
 *
 * Q8_0, per group of 16 rows and per 32-value block (544 bytes, as many as the 16 rows' own
 * blocks): the 16 rows' f16 scales (32 bytes), then 8 words k of 64 bytes, each holding values
 * 4k..4k+3 of the 16 rows (row r at byte 4r), plus 128.
 * Q4_K, per group of 16 rows and per 256-value block (2368 bytes, 64 more than the rows' own):
 * the 16 rows' f16 d, then their f16 dmin (64 bytes), the 8 sub-block scales as bytes ([j][r],
 * 128 bytes), the 8 mins (128 bytes: mins 2i and 2i + 1 of row r at 32i + 2r and 32i + 2r + 1, so
 * that widening 32 bytes to int16 gives the 16 rows' pairs), then 4 chunks c of 8 words w of 64
 * bytes: row r's bytes 32c + 4w..+3 of its codes at byte 4r, whose low nibbles are values 64c + 4w..+3
 * (sub-block 2c) and high nibbles values 64c + 32 + 4w..+3 (sub-block 2c + 1), as in Q4_K.
 * Q5_K, per group of 16 rows and per 256-value block (2880 bytes, 64 more than the rows' own):
 * Q4_K's layout of the low 4 bits, then the high bits in 8 units of 64 bytes: bit w of byte 4r + i
 * of unit (c, u), at 2368 + 128c + 64u, is the fifth bit of value i of word w of sub-block
 * 2c + u (the low nibbles for u = 0, the high ones for u = 1), so one shift and one ternary
 * logic op put it in place for a word of all 16 rows.
 * Q6_K, per group of 16 rows and per 256-value block (3360 bytes, as many as the rows' own): the
 * 16 rows' f16 d (32 bytes), the 16 sub-block scales as int8 ([j][r], 256 bytes), then per pair
 * p of sub-blocks of 16 values (384 bytes each) 4 ql units k and 2 qh units of 64 bytes. Each
 * value's code is Q6_K's 6-bit value plus 32 (0..63). Row r's bytes 4r..4r+3 of ql unit k hold
 * the low 4 bits of the codes of values 32p + 4k..+3 (sub-block 2p) and, in their high nibbles,
 * of values 32p + 16 + 4k..+3 (sub-block 2p + 1); the same bytes of qh unit u hold their top 2
 * bits: bits 0-1 word k = 2u of sub-block 2p, 2-3 word 2u + 1, 4-5 and 6-7 the same words of
 * sub-block 2p + 1. A word of codes is then 3 or 4 instructions from these (repack.c).
 * One 512-bit register of a word then holds 4 values of all 16 rows, and one vpdpbusd with a
 * token's 4 activation values broadcast from memory advances 16 rows at once: no per-row
 * unpacking of scales, no horizontal sums, and the scales are applied to 16 rows together. See
 * repack.c for the numbers. */
#ifndef QNEXT_REPACK_H
#define QNEXT_REPACK_H
#include "model/model.h"

#define REPACK_ROWS 16
#define REPACK_Q8_0_BLOCK 544  /* bytes of one 32-value block of 16 rows */
#define REPACK_Q4_K_BLOCK 2368 /* bytes of one 256-value block of 16 rows */
#define REPACK_Q5_K_BLOCK 2880 /* the same for Q5_K (64 more than the rows' own) */
#define REPACK_Q6_K_BLOCK 3360 /* the same for Q6_K (as many as the rows' own) */

/* 1 when this CPU (and this build) has the kernels below: x86-64 with AVX-512 F/BW/VL/VNNI. */
int repack_available(void);
/* Whether W can be repacked: Q8_0 with cols a multiple of 32 or Q4_K / Q5_K / Q6_K (a multiple of 256),
 * rows a multiple of 16. */
int repack_fits(const qn_tensor *W);
/* Bytes of W's repacked copy. */
size_t repack_bytes(const qn_tensor *W);
/* Writes W's repacked copy (logical rows, through W's row map) to dst (64-byte aligned). */
void repack_write(const qn_tensor *W, uint8_t *dst);
/* The activation rows the kernel takes: dot.h's DOT_ACT_Q8_0G for Q8_0, DOT_ACT_Q8_K32 for Q4_K
 * and Q5_K, DOT_ACT_Q8_K6 for Q6_K. */
int repack_act_type(const qn_tensor *W);
/* y[t*ldy + r] (or yrows[t][r]) = W[r] . x[t] for r in [r0, r1) (multiples of 16, or r1 = rows)
 * and t < T, from W->rp, on the calling thread alone; act: T rows of repack_act_type(W) (row t
 * at act + t * astride). The integer sums are exact; the result equals the dot kernels' to float
 * rounding. */
void repack_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T, float *y,
                 int64_t ldy, float *const *yrows);

#endif
