/* gemm_amx_q8.c - Q8_0 weights against a few Q8_0 activation rows on int8 AMX tiles.
 *
 * A batched decode step gives each routed expert only a handful of tokens (16 streams and
 * top-10 of 32 experts: ~5 each). The vector kernels then pay the integer products once per
 * token, and on two cores that is what bounds the step. One int8 tile product does a 16 x 16
 * x 32 block (16 weight rows, up to 16 tokens, one Q8_0 block) whatever the number of
 * tokens, so from two tokens on the tiles do the integer work and the vector units only
 * apply the scales.
 *
 * The weights are used in place: a Q8_0 block is a 2-byte scale and 32 int8 values, so the
 * 32 values of block b of 16 consecutive rows are one tile load with the row size as its
 * stride. Rows that are not 16 consecutive rows of the matrix (a row map, the last rows) are
 * copied to a scratch block first. The activations are packed once per product into the
 * layout the tile's second operand wants (per block: 8 rows of [token][4 bytes]) with their
 * 16 block scales beside it.
 *
 * Per block the int32 tile result C[row][token] is scaled by the weight row's scale and the
 * token's scale and summed in f32, so the result equals the vector kernels' to float
 * rounding (the integer sums are exact in both). */
#include "kernels/cpu/gemm_amx.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__)
#include <immintrin.h>

#define PACK_BLOCK 576 /* 512 bytes of tile + 16 float scales */

static int g_ahead = 1;

int gemm_amxq8_available(void) {
    static int ok = -1;
    if (ok < 0) {
        const char *e = getenv("QNEXT_AMXQ8_AHEAD");
        if (e) g_ahead = atoi(e);
        __builtin_cpu_init();
        /* gemm_amx_mode has asked Linux for the tile state (and honours QNEXT_AMX=0) */
        ok = gemm_amx_mode() != 0 && __builtin_cpu_supports("amx-int8");
    }
    return ok;
}

size_t gemm_amxq8_packed_bytes(int64_t cols) { return (size_t)(cols / 32) * PACK_BLOCK; }

void gemm_amxq8_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    const int64_t nb = cols / 32;
    for (int64_t b = 0; b < nb; b++) {
        uint32_t *tile = (uint32_t *)(packed + PACK_BLOCK * b);
        float *dx = (float *)(packed + PACK_BLOCK * b + 512);
        for (int n = 0; n < 16; n++) {
            if (n < T) {
                const uint8_t *blk = act + astride * n + 34 * b;
                uint16_t h;
                memcpy(&h, blk, 2);
                dx[n] = _cvtsh_ss(h);
                for (int k4 = 0; k4 < 8; k4++) memcpy(&tile[k4 * 16 + n], blk + 2 + 4 * k4, 4);
            } else {
                dx[n] = 0;
                for (int k4 = 0; k4 < 8; k4++) tile[k4 * 16 + n] = 0;
            }
        }
    }
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0/3: C (16 rows x 16 int32), 1/4: weights (16 rows x 32 bytes), 2/5: activations
 * (8 rows x 64 bytes). Two sets, so that two blocks are in flight. */
static void tiles_config_q8(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int s = 0; s < 2; s++) {
        c.rows[3 * s] = 16; c.colsb[3 * s] = 64;
        c.rows[3 * s + 1] = 16; c.colsb[3 * s + 1] = 32;
        c.rows[3 * s + 2] = 8; c.colsb[3 * s + 2] = 64;
    }
    _tile_loadconfig(&c);
}

static _Thread_local uint8_t *tl_rows;
static _Thread_local size_t tl_rows_cap;

/* acc[i] += (C[i] as f32) * dx * dw[i] for the 16 rows of one block. */
static inline void scale_block(__m512 *acc, const int32_t *C, const uint8_t *base, size_t stride, int64_t off,
                               const float *dxp) {
    uint16_t h[16];
    for (int i = 0; i < 16; i++) memcpy(&h[i], base + stride * i + off, 2);
    float dw[16] __attribute__((aligned(64)));
    _mm512_store_ps(dw, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h)));
    const __m512 dx = _mm512_loadu_ps(dxp);
    for (int i = 0; i < 16; i++)
        acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C + 16 * i)), dx),
                                 _mm512_set1_ps(dw[i]), acc[i]);
}

void gemm_amxq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                     int64_t ldy, float *const *yrows) {
    const int64_t nb = W->cols / 32;
    const size_t rbytes = W->row_bytes;
    tiles_config_q8();
    int32_t C0[256] __attribute__((aligned(64))), C1[256] __attribute__((aligned(64)));
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const int nr = rz - r0 < 16 ? (int)(rz - r0) : 16;
        const uint8_t *base;
        if (nr == 16 && !W->row_map) {
            base = (const uint8_t *)W->data + rbytes * r0;
        } else { /* gather the rows into a block of 16, zero rows (zero scales) after them */
            if (16 * rbytes > tl_rows_cap) {
                free(tl_rows);
                tl_rows = malloc(16 * rbytes);
                if (!tl_rows) abort();
                tl_rows_cap = 16 * rbytes;
            }
            for (int i = 0; i < 16; i++) {
                if (i < nr) {
                    int64_t r = W->row_map ? W->row_map[r0 + i] : r0 + i;
                    memcpy(tl_rows + rbytes * i, (const uint8_t *)W->data + rbytes * r, rbytes);
                } else {
                    memset(tl_rows + rbytes * i, 0, rbytes);
                }
            }
            base = tl_rows;
        }
        const uint8_t *next = g_ahead && !W->row_map && r0 + 16 * (g_ahead + 1) <= rz ? base + 16 * g_ahead * rbytes : NULL;
        __m512 acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            const uint8_t *p = packed + PACK_BLOCK * b;
            /* The tiles read 16 rows side by side, 68 bytes of each per step, which the
             * hardware prefetchers do not follow; the next 16 rows are one contiguous
             * region, fetched in order, 1088 bytes per step (all of it over the nb/2 steps). */
            if (next)
                for (int l = 0; l < 17; l++) _mm_prefetch((const char *)next + 544 * b + 64 * l, _MM_HINT_T0);
            _tile_loadd(1, base + 34 * b + 2, rbytes);
            _tile_loadd(2, p, 64);
            _tile_loadd(4, base + 34 * (b + 1) + 2, rbytes);
            _tile_loadd(5, p + PACK_BLOCK, 64);
            _tile_zero(0);
            _tile_zero(3);
            _tile_dpbssd(0, 1, 2);
            _tile_dpbssd(3, 4, 5);
            _tile_stored(0, C0, 64);
            _tile_stored(3, C1, 64);
            scale_block(acc, C0, base, rbytes, 34 * b, (const float *)(p + 512));
            scale_block(acc, C1, base, rbytes, 34 * (b + 1), (const float *)(p + PACK_BLOCK + 512));
        }
        if (b < nb) {
            const uint8_t *p = packed + PACK_BLOCK * b;
            _tile_loadd(1, base + 34 * b + 2, rbytes);
            _tile_loadd(2, p, 64);
            _tile_zero(0);
            _tile_dpbssd(0, 1, 2);
            _tile_stored(0, C0, 64);
            scale_block(acc, C0, base, rbytes, 34 * b, (const float *)(p + 512));
        }
        float out[16] __attribute__((aligned(64)));
        for (int i = 0; i < nr; i++) {
            _mm512_store_ps(out, acc[i]);
            for (int t = 0; t < T; t++) *(yrows ? &yrows[t][r0 + i] : &y[(int64_t)t * ldy + r0 + i]) = out[t];
        }
    }
    _tile_release();
}

#else

int gemm_amxq8_available(void) { return 0; }
size_t gemm_amxq8_packed_bytes(int64_t cols) { return 0; }
void gemm_amxq8_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                     int64_t ldy, float *const *yrows) {}

#endif
