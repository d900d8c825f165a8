/* gemm_amx_q8.c - quantized weights against a few quantized activation rows on int8 AMX
 * tiles: Q8_0 against Q8_0 rows, Q4_K and Q6_K against Q8_K rows.
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
 * rounding (the integer sums are exact in both).
 *
 * The K-quant kernels swap the operands (the activations first, C[token][row]; see the Q4_K
 * section): their sub-blocks of 32 or 16 values each need a scale of their own, and that
 * scaling is cheaper along a vector of 16 rows than along one of 16 tokens. */
#include "kernels/cpu/gemm_amx.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__AVX512VBMI__)
#include <immintrin.h>

#define PACK_BLOCK 576 /* 512 bytes of tile + 16 float scales */

int gemm_amxq8_available(void) {
    static int ok = -1;
    /* gemm_amx_mode asks Linux for the tile state and honours QNEXT_AMX=0 and, in tests,
     * gemm_amx_set_mode(0); so it is asked on every call, and only the CPU's flags are kept */
    const int mode = gemm_amx_mode();
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("amx-int8") && __builtin_cpu_supports("avx512vbmi");
    }
    return mode != 0 && ok;
}

size_t gemm_amxq8_packed_bytes(int64_t cols, int T) { return (size_t)(cols / 32) * PACK_BLOCK; }

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

/* Tiles 0/3: C (16 rows x 16 int32), 1/4: weights (16 rows x 32 bytes), 2/5: activations
 * (8 rows x 64 bytes). Two sets, so that two blocks are in flight. */
static const amx_tile_config q8_tiles = {.palette_id = 1,
                                         .colsb = {64, 32, 64, 64, 32, 64},
                                         .rows = {16, 16, 8, 16, 16, 8}};

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
    _tile_loadconfig(&q8_tiles);
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
                    memcpy(tl_rows + rbytes * i, qn_tensor_row(W, r0 + i), rbytes);
                } else {
                    memset(tl_rows + rbytes * i, 0, rbytes);
                }
            }
            base = tl_rows;
        }
        const uint8_t *next = !W->row_map && r0 + 32 <= rz ? base + 16 * rbytes : NULL;
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
        amx_store_block(acc, nr, r0, 0, T, y, ldy, yrows); /* acc[i]: row r0+i, lane t: token t */
    }
    _tile_release();
}

/* ---------------------------------------------------------------- Q4_K */

/* Q4_K super-block (256 values, 144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales and
 * mins for its 8 sub-blocks of 32, 128 bytes of nibbles (32 bytes hold sub-blocks 2c in their
 * low nibbles and 2c+1 in their high ones). A value is d*sc[j]*q - dmin*m[j]. Against a Q8_K
 * activation block (f32 scale dx, 256 int8, 16 sums of 16) the product is
 *   dx * (d * sum_j sc[j] * (q_j . x_j) - dmin * sum_j m[j] * sum(x_j)).
 *
 * The tiles compute q_j . x_j (s8 activations x u8 codes) per sub-block, the activations
 * as the first operand (up to 16 token rows x 32 bytes) and the weights of 16 rows as the
 * second, in the layout tiles want there ([4-byte group k4][row][4 bytes]), so that C is
 * [token][row]. The sub-block scales then run along the vector (one vector of 16 rows'
 * d*sc per sub-block), and scaling costs 8 conversions and 16 multiply-adds per token and
 * super-block for all 16 rows. (With the weights as the first operand, C is [row][token]
 * and the scales are per row: the same work per row whatever the number of tokens, which
 * made the tiles slower than the vector kernels below 9 tokens; PERF.md.) The weights are
 * transposed while unpacking: 32 bytes of nibbles of 16 rows are 16 x 8 dwords, turned to
 * 8 x 16 (q4t_transpose), and one such dword row is a tile row of sub-blocks 2c (low
 * nibbles) and 2c+1 (high nibbles).
 *
 * Up to 8 tokens, one product covers two sub-blocks: its A tile has 2T rows, the tokens'
 * sub-block 2c in the first 32 bytes of rows 0..T-1 and 2c+1 in the last 32 bytes of rows
 * T..2T-1, zeros elsewhere, so against the 64-byte B rows of both sub-blocks the C rows
 * 0..T-1 are sub-block 2c's sums and T..2T-1 those of 2c+1. That halves the products and,
 * above all, the tile stores, which cost a fifth of the kernel's time at 5 tokens (PERF.md).
 *
 * Packed activations per super-block: the 8 sub-blocks' A tiles [j][16 tokens][32 bytes]
 * (tokens past T zero; gemm_amxq6k_pack, and gemm_amxq4k_pack above 8 tokens), or the four
 * paired tiles [c][16 rows][64 bytes] (gemm_amxq4k_pack up to 8 tokens); then dx[16] and
 * dx * sum(x_j) as [8][16] floats. */
#define PACK_Q4K 4672

size_t gemm_amxq4k_packed_bytes(int64_t cols, int T) { return (size_t)(cols / 256) * PACK_Q4K; }

/* Whether T tokens take the paired Q4_K products (2T tile rows must fit in 16); the packing,
 * the kernel and the tile configurations (q4t_tiles) follow it. */
static inline int q4k_paired(int T) { return 2 * T <= 16; }

/* Where sub-block j of token n goes in a packed super-block: paired tiles or one per
 * sub-block (above). */
static inline size_t q4k_pack_at(int paired, int T, int j, int n) {
    return paired ? (size_t)1024 * (j >> 1) + 64 * ((j & 1) * T + n) + 32 * (j & 1) : (size_t)512 * j + 32 * n;
}

static void kq_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed, int paired) {
    const int64_t nsb = cols / 256;
    for (int64_t b = 0; b < nsb; b++) {
        uint8_t *p = packed + PACK_Q4K * b;
        float *dx = (float *)(p + 4096), *bsx = dx + 16;
        if (paired) memset(p, 0, 4096);
        for (int n = 0; n < 16; n++) {
            float d = 0;
            const uint8_t *blk = act + astride * n + 292 * b;
            if (n < T) memcpy(&d, blk, 4);
            dx[n] = d;
            for (int j = 0; j < 8; j++) {
                if (n < T) {
                    memcpy(p + q4k_pack_at(paired, T, j, n), blk + 4 + 32 * j, 32);
                    int16_t s0, s1;
                    memcpy(&s0, blk + 260 + 4 * j, 2);
                    memcpy(&s1, blk + 262 + 4 * j, 2);
                    bsx[16 * j + n] = d * (float)(s0 + s1);
                } else {
                    if (!paired) memset(p + 512 * j + 32 * n, 0, 32);
                    bsx[16 * j + n] = 0;
                }
            }
        }
    }
}

void gemm_amxq4k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    kq_pack(act, astride, T, cols, packed, q4k_paired(T));
}

void gemm_amxq6k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    kq_pack(act, astride, T, cols, packed, 0);
}

/* Tiles 0-3: C [token][row] (four in flight), 4-5: A, activations (T tokens x 32 bytes),
 * 6-7: B, weights (8 rows x 64 bytes); one configuration per token count, as a tile
 * product's time grows with its rows. */
#define Q4T_CFG(m) {.palette_id = 1, .colsb = {64, 64, 64, 64, 32, 32, 64, 64}, .rows = {m, m, m, m, m, m, 8, 8}}
/* Paired sub-blocks (q4k_paired: up to 8 tokens): C and A tiles of 2T rows x 64 bytes, B 16 x 64. */
#define Q4P_CFG(m) {.palette_id = 1, .colsb = {64, 64, 64, 64, 64, 64, 64, 64}, .rows = {2 * m, 2 * m, 2 * m, 2 * m, 2 * m, 2 * m, 16, 16}}
static const amx_tile_config q4t_tiles[16] = {Q4P_CFG(1),  Q4P_CFG(2),  Q4P_CFG(3),  Q4P_CFG(4),  Q4P_CFG(5),  Q4P_CFG(6),
                                              Q4P_CFG(7),  Q4P_CFG(8),  Q4T_CFG(9),  Q4T_CFG(10), Q4T_CFG(11), Q4T_CFG(12),
                                              Q4T_CFG(13), Q4T_CFG(14), Q4T_CFG(15), Q4T_CFG(16)};

/* 32 bytes at offset off of 16 rows, as 16 x 8 dwords, into 8 x 16: out[k] lane i = dword k
 * of row i. Two rounds of unpacks and one of 128-bit shuffles; a_p holds rows (p, p+4) for
 * p < 4 and (p+4, p+8) for p >= 4, so that the lanes come out as rows 0..15 in order. */
static inline void q4t_transpose(const uint8_t *const *rp, size_t off, __m512i *out) {
    static const int lo_row[8] = {0, 1, 2, 3, 8, 9, 10, 11};
    __m512i a[8], t[8], u[8];
    for (int p = 0; p < 8; p++) {
        const int r = lo_row[p];
        a[p] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(rp[r] + off))),
                                  _mm256_loadu_si256((const __m256i *)(rp[r + 4] + off)), 1);
    }
    for (int p = 0; p < 8; p += 2) {
        t[p] = _mm512_unpacklo_epi32(a[p], a[p + 1]);
        t[p + 1] = _mm512_unpackhi_epi32(a[p], a[p + 1]);
    }
    for (int p = 0; p < 8; p += 4) { /* u[p + q]: dword q of each 128-bit lane, 4 rows */
        u[p] = _mm512_unpacklo_epi64(t[p], t[p + 2]);
        u[p + 1] = _mm512_unpackhi_epi64(t[p], t[p + 2]);
        u[p + 2] = _mm512_unpacklo_epi64(t[p + 1], t[p + 3]);
        u[p + 3] = _mm512_unpackhi_epi64(t[p + 1], t[p + 3]);
    }
    for (int q = 0; q < 4; q++) { /* dwords q and q + 4 of all 16 rows */
        out[q] = _mm512_shuffle_i32x4(u[q], u[q + 4], 0x88);
        out[q + 4] = _mm512_shuffle_i32x4(u[q], u[q + 4], 0xDD);
    }
}

/* A row of zero bytes (zero scales: zero products) standing in for rows past the end. */
static _Thread_local uint8_t *tl_zero_row;
static _Thread_local size_t tl_zero_cap;

static const uint8_t *zero_row(size_t bytes) {
    if (bytes > tl_zero_cap) {
        free(tl_zero_row);
        tl_zero_row = calloc(1, bytes);
        if (!tl_zero_row) abort();
        tl_zero_cap = bytes;
    }
    return tl_zero_row;
}

/* The K-quant kernels' block of 16 rows from r0: row pointers (rows past rz read the zero
 * row), and the number of real rows. */
static inline int kq_block_rows(const qn_tensor *W, int64_t r0, int64_t rz, const uint8_t *zero, const uint8_t **rp) {
    const int nr = rz - r0 < 16 ? (int)(rz - r0) : 16;
    for (int i = 0; i < 16; i++) rp[i] = i < nr ? qn_tensor_row(W, r0 + i) : zero;
    return nr;
}

/* acc[t]: the block's rows r0..r0+nr-1 for token t, one masked store per token. */
static inline void kq_store(const __m512 *acc, int nr, int64_t r0, int T, float *y, int64_t ldy, float *const *yrows) {
    const __mmask16 mk = (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(yrows ? yrows[t] + r0 : y + (int64_t)t * ldy + r0, mk, acc[t]);
}

/* The 16-byte heads of 16 rows' super-blocks at offset off (f16 d and dmin, then the 12
 * scale bytes as three dwords u0 u1 u2) as four vectors: w[k] lane i = dword k of row i's
 * head. Four rows per register as 128-bit lanes, then two-source dword permutes: p[k] holds
 * dwords k (lanes 0-7) and k + 2 (lanes 8-15) of rows 0-7, q[k] the same of rows 8-15. This
 * replaces a scalar unpacking per row, which was a fifth of the kernel's instructions. */
static inline void q4t_heads(const uint8_t *const *rp, size_t off, __m512i *w) {
    __m512i h[4];
    for (int g = 0; g < 4; g++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rp[4 * g] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[4 * g + 1] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[4 * g + 2] + off)), 2);
        h[g] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[4 * g + 3] + off)), 3);
    }
    /* lane i: row i % 8 (rows 4-7 from the second source, at 16 +), dword k + 2 (i / 8) */
    const __m512i i0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 2, 6, 10, 14, 18, 22, 26, 30);
    const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
    const __m512i p0 = _mm512_permutex2var_epi32(h[0], i0, h[1]), p1 = _mm512_permutex2var_epi32(h[0], i1, h[1]);
    const __m512i q0 = _mm512_permutex2var_epi32(h[2], i0, h[3]), q1 = _mm512_permutex2var_epi32(h[2], i1, h[3]);
    w[0] = _mm512_shuffle_i64x2(p0, q0, 0x44);
    w[1] = _mm512_shuffle_i64x2(p1, q1, 0x44);
    w[2] = _mm512_shuffle_i64x2(p0, q0, 0xEE);
    w[3] = _mm512_shuffle_i64x2(p1, q1, 0xEE);
}

/* Super-block b of 16 rows (row pointers rp) into tile rows: Bw[j][k4][row][4] (the
 * sub-blocks' codes), and the scale and min vectors S[j], M[j] (16 rows each). */
static void q4t_unpack(const uint8_t *const *rp, int64_t b, uint8_t (*Bw)[8][64], __m512 *S, __m512 *M) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; c++) {
        __m512i k[8];
        q4t_transpose(rp, 144 * b + 16 + 32 * c, k);
        for (int q = 0; q < 8; q++) {
            _mm512_store_si512((void *)Bw[2 * c][q], _mm512_and_si512(k[q], m4));
            _mm512_store_si512((void *)Bw[2 * c + 1][q], _mm512_and_si512(_mm512_srli_epi16(k[q], 4), m4));
        }
    }
    /* the 6-bit scales and mins of sub-blocks 0-3 are the low 6 bits of u0 and u1 bytes;
     * of sub-blocks 4-7, the nibbles of u2 with the top 2 bits of u0 / u1 bytes above them
     * (quant_k4_unpack, here for 16 rows at once) */
    __m512i w[4];
    q4t_heads(rp, 144 * b, w);
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w[0]));
    const __m512 dm = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w[0], 16)));
    const __m512i c6 = _mm512_set1_epi32(0x3f3f3f3f), c4 = _mm512_set1_epi32(0x0f0f0f0f),
                  c2 = _mm512_set1_epi32(0x30303030), ff = _mm512_set1_epi32(0xFF);
    const __m512i sc[2] = {_mm512_and_si512(w[1], c6),
                           _mm512_or_si512(_mm512_and_si512(w[3], c4), _mm512_and_si512(_mm512_srli_epi32(w[1], 2), c2))};
    const __m512i mn[2] = {_mm512_and_si512(w[2], c6),
                           _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w[3], 4), c4),
                                           _mm512_and_si512(_mm512_srli_epi32(w[2], 2), c2))};
    for (int j = 0; j < 8; j++) {
        const __m512i s = _mm512_and_si512(_mm512_srli_epi32(sc[j / 4], 8 * (j % 4)), ff);
        const __m512i m = _mm512_and_si512(_mm512_srli_epi32(mn[j / 4], 8 * (j % 4)), ff);
        S[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(s));
        M[j] = _mm512_mul_ps(dm, _mm512_cvtepi32_ps(m));
    }
}

void gemm_amxq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {
    const int64_t nsb = W->cols / 256;
    const uint8_t *zero = zero_row(W->row_bytes);
    _tile_loadconfig(&q4t_tiles[T - 1]);
    uint8_t Bw[2][8][8][64] __attribute__((aligned(64)));
    int32_t C[8][256] __attribute__((aligned(64)));
    /* cj[j]: sub-block j's C rows (token t at + 16 t), as the products leave them */
    const int paired = q4k_paired(T);
    const int32_t *cj[8];
    for (int j = 0; j < 8; j++) cj[j] = paired ? C[j >> 1] + 16 * ((j & 1) * T) : C[j];
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const uint8_t *rp[16];
        const int nr = kq_block_rows(W, r0, rz, zero, rp);
        __m512 acc[16];
        for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
        /* The unpacking reads the weights in bursts, and the products and the scaling read
         * none; the next 16 rows (one contiguous region) are fetched into L2 meanwhile, a
         * slice per super-block. Without it an expert layer at 5 tokens from memory took
         * 10.6 ms instead of 6.0; spreading the slice over the token loop (7.7) or fetching
         * into L1 or two blocks ahead (6.4) did not help (PERF.md). Written out here and in
         * the Q6_K kernel: moved into shared inline helpers, this prefetch made both kernels
         * 40-55% slower on the expert benchmark (reason not found). */
        const char *next = !W->row_map && r0 + 32 <= rz ? (const char *)qn_tensor_row(W, r0 + 16) : NULL;
        const size_t pf_step = (16 * W->row_bytes / nsb + 63) & ~(size_t)63;
        __m512 S[2][8], M[2][8];
        q4t_unpack(rp, 0, Bw[0], S[0], M[0]);
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *p = packed + PACK_Q4K * b;
            uint8_t(*B)[8][64] = Bw[b & 1];
            if (next)
                for (size_t o = 0; o < pf_step; o += 64) _mm_prefetch(next + pf_step * b + o, _MM_HINT_T1);
            /* a product: A tile ta (the packed activations at aoff, astride bytes a row), B tile
             * tb (Bw rows from sub-block bj), into C tile tc */
#define Q4T_STEP(aoff, astride, bj, tc, ta, tb) \
    _tile_loadd(ta, p + (aoff), astride); \
    _tile_loadd(tb, B[bj], 64); \
    _tile_zero(tc); \
    _tile_dpbsud(tc, ta, tb);
            if (paired) { /* sub-blocks 2c and 2c+1: A tile 4 + c%2, B tile 6 + c%2, C tile c */
                Q4T_STEP(0, 64, 0, 0, 4, 6) Q4T_STEP(1024, 64, 2, 1, 5, 7)
                Q4T_STEP(2048, 64, 4, 2, 4, 6) Q4T_STEP(3072, 64, 6, 3, 5, 7)
            } else { /* sub-block j: A tile 4 + j%2, B tile 6 + j%2, C tile j%4, stored once three
                      * more products are issued */
                Q4T_STEP(0, 32, 0, 0, 4, 6) Q4T_STEP(512, 32, 1, 1, 5, 7)
                Q4T_STEP(1024, 32, 2, 2, 4, 6) Q4T_STEP(1536, 32, 3, 3, 5, 7)
                _tile_stored(0, C[0], 64);
                Q4T_STEP(2048, 32, 4, 0, 4, 6)
                _tile_stored(1, C[1], 64);
                Q4T_STEP(2560, 32, 5, 1, 5, 7)
                _tile_stored(2, C[2], 64);
                Q4T_STEP(3072, 32, 6, 2, 4, 6)
                _tile_stored(3, C[3], 64);
                Q4T_STEP(3584, 32, 7, 3, 5, 7)
            }
#undef Q4T_STEP
            /* the next super-block's unpacking overlaps the products in flight; then the last
             * four products' C (all four when paired) */
            if (b + 1 < nsb) q4t_unpack(rp, b + 1, Bw[(b + 1) & 1], S[(b + 1) & 1], M[(b + 1) & 1]);
            const int cl = paired ? 0 : 4;
            _tile_stored(0, C[cl], 64);
            _tile_stored(1, C[cl + 1], 64);
            _tile_stored(2, C[cl + 2], 64);
            _tile_stored(3, C[cl + 3], 64);
            const __m512 *Sb = S[b & 1], *Mb = M[b & 1];
            const float *dx = (const float *)(p + 4096), *bsx = dx + 16;
            for (int t = 0; t < T; t++) {
                __m512 sv = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cj[0] + 16 * t)), Sb[0]);
                __m512 m = _mm512_mul_ps(_mm512_set1_ps(bsx[t]), Mb[0]);
                for (int j = 1; j < 8; j++) {
                    sv = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cj[j] + 16 * t)), Sb[j], sv);
                    m = _mm512_fmadd_ps(_mm512_set1_ps(bsx[16 * j + t]), Mb[j], m);
                }
                acc[t] = _mm512_sub_ps(_mm512_fmadd_ps(sv, _mm512_set1_ps(dx[t]), acc[t]), m);
            }
        }
        kq_store(acc, nr, r0, T, y, ldy, yrows);
    }
    _tile_release();
}

/* ---------------------------------------------------------------- Q6_K */

/* Q6_K super-block (256 values, 210 bytes): 128 bytes of low nibbles (ql), 64 of high bit
 * pairs (qh), 16 int8 scales, f16 d. Value v is d * sc[v/16] * (q_v - 32). Against a Q8_K
 * activation block the product is dx * d * sum_s sc[s] * ((q - 32)_s . x_s), s over the 16
 * sub-blocks of 16. The codes minus 32 are signed bytes, so the tiles (s8 x s8) give each
 * sub-block's integer sum with no offset term to correct. As for Q4_K the activations are
 * the first operand (gemm_amxq6k_pack: sub-block s of 16 values is half of a 32-byte tile
 * row, loaded with a 32-byte stride) and the weights the second, transposed while
 * unpacking: of each half of the super-block, ql bytes 0-31, 32-63 and qh bytes 0-31 of 16
 * rows are each 16 x 8 dwords; dword k of the three gives four 4-value groups of codes, at
 * values 32 g + 4 k (g = 0..3) of the half, that is row k % 4 of sub-block 2 g + k / 4. */
#define Q6T_CFG(m) {.palette_id = 1, .colsb = {64, 64, 64, 64, 16, 16, 64, 64}, .rows = {m, m, m, m, m, m, 4, 4}}
static const amx_tile_config q6t_tiles[16] = {Q6T_CFG(1),  Q6T_CFG(2),  Q6T_CFG(3),  Q6T_CFG(4),  Q6T_CFG(5),  Q6T_CFG(6),
                                              Q6T_CFG(7),  Q6T_CFG(8),  Q6T_CFG(9),  Q6T_CFG(10), Q6T_CFG(11), Q6T_CFG(12),
                                              Q6T_CFG(13), Q6T_CFG(14), Q6T_CFG(15), Q6T_CFG(16)};

/* byte 8 s + i: byte 16 i + s of 8 rows' 16 scale bytes (rows 0-3 in the first source, 4-7
 * in the second), for s < 8; the same + 8 gives s = 8..15 */
static const uint8_t q6t_ix_a[64] __attribute__((aligned(64))) = {
    0, 16, 32, 48, 64, 80, 96, 112, 1, 17, 33, 49, 65, 81, 97, 113, 2, 18, 34, 50, 66, 82, 98, 114,
    3, 19, 35, 51, 67, 83, 99, 115, 4, 20, 36, 52, 68, 84, 100, 116, 5, 21, 37, 53, 69, 85, 101, 117,
    6, 22, 38, 54, 70, 86, 102, 118, 7, 23, 39, 55, 71, 87, 103, 119};
/* byte 16 s + i: rows i < 8 from byte 8 s + i of the first source, rows i >= 8 from byte
 * 8 s + i - 8 of the second (64 + ...), for s < 4; the same + 32 gives s = 4..7 */
static const uint8_t q6t_ix_b[64] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7, 64, 65, 66, 67, 68, 69, 70, 71, 8, 9, 10, 11, 12, 13, 14, 15,
    72, 73, 74, 75, 76, 77, 78, 79, 16, 17, 18, 19, 20, 21, 22, 23, 80, 81, 82, 83, 84, 85, 86, 87,
    24, 25, 26, 27, 28, 29, 30, 31, 88, 89, 90, 91, 92, 93, 94, 95};

/* Super-block b of 16 rows into tile rows Bw[s][k4][row][4] (codes minus 32) and the scale
 * vectors S[s] (16 rows' d * sc[s]). */
static void q6t_unpack(const uint8_t *const *rp, int64_t b, uint8_t (*Bw)[4][64], __m512 *S) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3), off = _mm512_set1_epi8(32);
    for (int h = 0; h < 2; h++) {
        __m512i ta[8], tb[8], th[8];
        q4t_transpose(rp, 210 * b + 64 * h, ta);
        q4t_transpose(rp, 210 * b + 64 * h + 32, tb);
        q4t_transpose(rp, 210 * b + 128 + 32 * h, th);
        for (int k = 0; k < 8; k++) {
            const __m512i A = ta[k], B = tb[k], H = th[k];
            const __m512i q0 = _mm512_or_si512(_mm512_and_si512(A, m4), _mm512_slli_epi16(_mm512_and_si512(H, m3), 4));
            const __m512i q1 = _mm512_or_si512(_mm512_and_si512(B, m4),
                                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 2), m3), 4));
            const __m512i q2 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(A, 4), m4),
                                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 4), m3), 4));
            const __m512i q3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(B, 4), m4),
                                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H, 6), m3), 4));
            const int s = 8 * h + k / 4, r = k % 4;
            _mm512_store_si512((void *)Bw[s][r], _mm512_sub_epi8(q0, off));
            _mm512_store_si512((void *)Bw[s + 2][r], _mm512_sub_epi8(q1, off));
            _mm512_store_si512((void *)Bw[s + 4][r], _mm512_sub_epi8(q2, off));
            _mm512_store_si512((void *)Bw[s + 6][r], _mm512_sub_epi8(q3, off));
        }
    }
    /* the 16 x 16 scale bytes [row][s] -> [s][row], two rounds of two-source byte permutes */
    uint8_t sc[256] __attribute__((aligned(64)));
    uint16_t hd[16];
    for (int i = 0; i < 16; i++) {
        memcpy(sc + 16 * i, rp[i] + 210 * b + 192, 16);
        memcpy(&hd[i], rp[i] + 210 * b + 208, 2);
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)hd));
    const __m512i ia = _mm512_load_si512(q6t_ix_a), ia8 = _mm512_add_epi8(ia, _mm512_set1_epi8(8));
    const __m512i ib = _mm512_load_si512(q6t_ix_b), ib32 = _mm512_add_epi8(ib, _mm512_set1_epi8(32));
    const __m512i r0 = _mm512_load_si512(sc), r1 = _mm512_load_si512(sc + 64), r2 = _mm512_load_si512(sc + 128),
                  r3 = _mm512_load_si512(sc + 192);
    const __m512i x0 = _mm512_permutex2var_epi8(r0, ia, r1), x1 = _mm512_permutex2var_epi8(r0, ia8, r1); /* rows 0-7 */
    const __m512i y0 = _mm512_permutex2var_epi8(r2, ia, r3), y1 = _mm512_permutex2var_epi8(r2, ia8, r3); /* rows 8-15 */
    const __m512i z[4] = {_mm512_permutex2var_epi8(x0, ib, y0), _mm512_permutex2var_epi8(x0, ib32, y0),
                          _mm512_permutex2var_epi8(x1, ib, y1), _mm512_permutex2var_epi8(x1, ib32, y1)};
    for (int q = 0; q < 4; q++) {
        S[4 * q] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(z[q], 0))));
        S[4 * q + 1] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(z[q], 1))));
        S[4 * q + 2] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(z[q], 2))));
        S[4 * q + 3] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(z[q], 3))));
    }
}

void gemm_amxq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {
    const int64_t nsb = W->cols / 256;
    const uint8_t *zero = zero_row(W->row_bytes);
    _tile_loadconfig(&q6t_tiles[T - 1]);
    uint8_t Bw[2][16][4][64] __attribute__((aligned(64)));
    int32_t C[16][256] __attribute__((aligned(64)));
    __m512 S[2][16];
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const uint8_t *rp[16];
        const int nr = kq_block_rows(W, r0, rz, zero, rp);
        __m512 acc[16];
        for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
        /* the next 16 rows into L2 while the products and the scaling run, as for Q4_K */
        const char *next = !W->row_map && r0 + 32 <= rz ? (const char *)qn_tensor_row(W, r0 + 16) : NULL;
        const size_t pf_step = (16 * W->row_bytes / nsb + 63) & ~(size_t)63;
        q6t_unpack(rp, 0, Bw[0], S[0]);
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *p = packed + PACK_Q4K * b;
            uint8_t(*B)[4][64] = Bw[b & 1];
            if (next)
                for (size_t o = 0; o < pf_step; o += 64) _mm_prefetch(next + pf_step * b + o, _MM_HINT_T1);
            /* sub-block s: A tile 4 + s%2 (half a 32-byte row of the packed activations),
             * B tile 6 + s%2, C tile s%4, stored once three more products are issued */
#define Q6T_STEP(s, tc, ta, tb) \
    _tile_loadd(ta, p + 512 * ((s) / 2) + 16 * ((s) % 2), 32); \
    _tile_loadd(tb, B[s], 64); \
    _tile_zero(tc); \
    _tile_dpbssd(tc, ta, tb);
            Q6T_STEP(0, 0, 4, 6) Q6T_STEP(1, 1, 5, 7) Q6T_STEP(2, 2, 4, 6) Q6T_STEP(3, 3, 5, 7)
            _tile_stored(0, C[0], 64); Q6T_STEP(4, 0, 4, 6)
            _tile_stored(1, C[1], 64); Q6T_STEP(5, 1, 5, 7)
            _tile_stored(2, C[2], 64); Q6T_STEP(6, 2, 4, 6)
            _tile_stored(3, C[3], 64); Q6T_STEP(7, 3, 5, 7)
            _tile_stored(0, C[4], 64); Q6T_STEP(8, 0, 4, 6)
            _tile_stored(1, C[5], 64); Q6T_STEP(9, 1, 5, 7)
            _tile_stored(2, C[6], 64); Q6T_STEP(10, 2, 4, 6)
            _tile_stored(3, C[7], 64); Q6T_STEP(11, 3, 5, 7)
            _tile_stored(0, C[8], 64); Q6T_STEP(12, 0, 4, 6)
            _tile_stored(1, C[9], 64); Q6T_STEP(13, 1, 5, 7)
            _tile_stored(2, C[10], 64); Q6T_STEP(14, 2, 4, 6)
            _tile_stored(3, C[11], 64); Q6T_STEP(15, 3, 5, 7)
#undef Q6T_STEP
            if (b + 1 < nsb) q6t_unpack(rp, b + 1, Bw[(b + 1) & 1], S[(b + 1) & 1]);
            _tile_stored(0, C[12], 64);
            _tile_stored(1, C[13], 64);
            _tile_stored(2, C[14], 64);
            _tile_stored(3, C[15], 64);
            const __m512 *Sb = S[b & 1];
            const float *dx = (const float *)(p + 4096);
            for (int t = 0; t < T; t++) {
                __m512 s0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[0] + 16 * t)), Sb[0]);
                __m512 s1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[1] + 16 * t)), Sb[1]);
                for (int sb = 2; sb < 16; sb += 2) {
                    s0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[sb] + 16 * t)), Sb[sb], s0);
                    s1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[sb + 1] + 16 * t)), Sb[sb + 1], s1);
                }
                acc[t] = _mm512_fmadd_ps(_mm512_add_ps(s0, s1), _mm512_set1_ps(dx[t]), acc[t]);
            }
        }
        kq_store(acc, nr, r0, T, y, ldy, yrows);
    }
    _tile_release();
}

#else

int gemm_amxq8_available(void) { return 0; }
size_t gemm_amxq8_packed_bytes(int64_t cols, int T) { return 0; }
void gemm_amxq8_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                     int64_t ldy, float *const *yrows) {}
size_t gemm_amxq4k_packed_bytes(int64_t cols, int T) { return 0; }
void gemm_amxq4k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq6k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {}
void gemm_amxq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {}

#endif
