/* gemm_amx.h - AMX bf16 tile products for prompt processing (see gemm_amx.c). */
#ifndef QNEXT_GEMM_AMX_H
#define QNEXT_GEMM_AMX_H
#include "model/model.h"

/* The 64-byte operand of ldtilecfg (palette 1): bytes per row and rows of each tile. Keep
 * configurations in static objects: GCC 12 can drop stores to a stack copy filled just
 * before ldtilecfg, and a faulty configuration traps. */
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tile_config;
/* All eight tiles 16 rows x 64 bytes (defined in gemm_amx.c when built with AMX). */
extern const amx_tile_config amx_tiles_all;

/* 0: no AMX (or QNEXT_AMX=0); 1: used for quantized weights; 2: for all weights (QNEXT_AMX=all). */
int gemm_amx_mode(void);
/* For tests: turns the tiles of matrix products off (0) or back on (the mode found at start,
 * never more) and returns the mode before. With them off, products take the paths of a CPU
 * without AMX: the bf16 tiles round activations to bf16, and the integer tiles group some
 * types' activations otherwise than the vector kernels, so only without them does a product
 * take the same integer sums as another path (repacked weights) to compare to float rounding.
 * gemm_amxq8_available follows it; attention keeps its tiles. */
int gemm_amx_set_mode(int mode);
/* y[t*ldy + r] (or yrows[t][r] when yrows is set) = W[r] . x[t] for r in [r0, r1), t < T,
 * with bf16 operands and f32 accumulation. Returns 0 without doing anything when the
 * shape does not suit the tiles (cols not a multiple of 32, fewer than 16 tokens). */
int gemm_amx_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                  int64_t ldy, float *const *yrows);
/* Q8_0 weights against 1..16 activation rows already quantized to Q8_0, on int8 tiles
 * (gemm_amx_q8.c). gemm_amxq8_pack lays the rows (row t at act + t * astride) out for the
 * tiles in gemm_amxq8_packed_bytes(cols, T) bytes, 64-byte aligned; gemm_amxq8_rows then
 * computes y[t*ldy + r] (or yrows[t][r]) for r in [ra, rz) on the calling thread alone (it
 * opens no parallel region, so several threads can share one product's rows). cols must be
 * a multiple of 32. */
int gemm_amxq8_available(void);
size_t gemm_amxq8_packed_bytes(int64_t cols, int T); /* T: unused here; the lanes of gemm_vnni.h size by it */
void gemm_amxq8_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
void gemm_amxq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                     int64_t ldy, float *const *yrows);
/* The same for Q4_K weights against Q8_K activation rows (cols a multiple of 256). */
size_t gemm_amxq4k_packed_bytes(int64_t cols, int T);
void gemm_amxq4k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
void gemm_amxq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows);
/* Q6_K weights against Q8_K activation rows packed by gemm_amxq6k_pack (cols a multiple of
 * 256; gemm_amxq4k_packed_bytes of space; the Q4_K packing differs up to 8 tokens). */
void gemm_amxq6k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
void gemm_amxq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows);
/* Logical row r of W widened to bf16 as the tiles see it (exposed for tests). */
void gemm_amx_widen_row(const qn_tensor *W, int64_t r, uint16_t *dst);

#if defined(__AVX512F__)
#include <immintrin.h>
/* A 16 x 16 block of results, v[i] = row r0+i for tokens t0..t0+15 (lane n: token t0+n),
 * written to y[t*ldy + r] (or yrows[t][r]) for rows < r0+nr and tokens < t0+nt. The block is
 * transposed in registers (unpack, in-lane shuffle, two 128-bit lane shuffles) so that each
 * token's nr values go out in one masked store: stored one float at a time, the results
 * took a sixth of the Q4_K int8 tile kernel's time at 16 tokens. */
static inline void amx_store_block(const __m512 *v, int nr, int64_t r0, int t0, int nt, float *y, int64_t ldy,
                                   float *const *yrows) {
    __m512 t[16], u[16], w[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);     /* rows i, i+1 of columns 4k, 4k+1 */
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]); /* ... of columns 4k+2, 4k+3 */
    }
    for (int i = 0; i < 16; i += 4) { /* u[i + c]: rows i..i+3 of columns 4k + c */
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8) /* w[h + c]: rows h..h+7 of columns c, c+8; w[h + 4 + c]: of c+4, c+12 */
        for (int c = 0; c < 4; c++) {
            w[h + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0x88);
            w[h + 4 + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0xDD);
        }
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    for (int c = 0; c < 8 && c < nt; c++) { /* column c from lanes 0, 2 of w[c], w[8+c]; column c+8 from lanes 1, 3 */
        const int64_t tc = t0 + c;
        _mm512_mask_storeu_ps(yrows ? yrows[tc] + r0 : y + tc * ldy + r0, m, _mm512_shuffle_f32x4(w[c], w[8 + c], 0x88));
        if (c + 8 < nt)
            _mm512_mask_storeu_ps(yrows ? yrows[tc + 8] + r0 : y + (tc + 8) * ldy + r0, m,
                                  _mm512_shuffle_f32x4(w[c], w[8 + c], 0xDD));
    }
}
#endif
#endif
