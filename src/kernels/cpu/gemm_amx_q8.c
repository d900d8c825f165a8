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
#include "kernels/cpu/quant.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__)
#include <immintrin.h>

#define PACK_BLOCK 576 /* 512 bytes of tile + 16 float scales */

int gemm_amxq8_available(void) {
    static int ok = -1;
    if (ok < 0) {
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
 * The tiles compute q_j . x_j (u8 x s8) for 16 rows and 16 tokens per sub-block; the nibbles
 * are unpacked to bytes first, 16 rows at a time. */
#define PACK_Q4K 4672 /* 8 tiles of 512 bytes, dx[16], dx * sum(x_j) as [8][16] floats */

size_t gemm_amxq4k_packed_bytes(int64_t cols) { return (size_t)(cols / 256) * PACK_Q4K; }

void gemm_amxq4k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    const int64_t nsb = cols / 256;
    for (int64_t b = 0; b < nsb; b++) {
        uint8_t *p = packed + PACK_Q4K * b;
        float *dx = (float *)(p + 4096), *bsx = dx + 16;
        for (int n = 0; n < 16; n++) {
            float d = 0;
            const uint8_t *blk = act + astride * n + 292 * b;
            if (n < T) memcpy(&d, blk, 4);
            dx[n] = d;
            for (int j = 0; j < 8; j++) {
                uint32_t *tile = (uint32_t *)(p + 512 * j);
                if (n < T) {
                    for (int k4 = 0; k4 < 8; k4++) memcpy(&tile[k4 * 16 + n], blk + 4 + 32 * j + 4 * k4, 4);
                    int16_t s0, s1;
                    memcpy(&s0, blk + 260 + 4 * j, 2);
                    memcpy(&s1, blk + 262 + 4 * j, 2);
                    bsx[16 * j + n] = d * (float)(s0 + s1);
                } else {
                    for (int k4 = 0; k4 < 8; k4++) tile[k4 * 16 + n] = 0;
                    bsx[16 * j + n] = 0;
                }
            }
        }
    }
}

/* Row i's super-blocks, all of them: nibbles to bytes in A[super-block][sub-block][i], the
 * scale and min products in S/M[super-block][i][sub-block]. Row by row, so the weights are
 * read in memory order (the rows of a block of 16 are contiguous), which the hardware
 * prefetchers follow. */
static void q4k_unpack_row(const uint8_t *row, int i, int64_t nsb, uint8_t (*A)[8][16][32], float (*S)[16][8],
                           float (*M)[16][8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *blk = row + 144 * b;
        uint16_t hd, hm;
        memcpy(&hd, blk, 2);
        memcpy(&hm, blk + 2, 2);
        uint64_t sc, mn;
        quant_k4_unpack(blk + 4, &sc, &mn);
        _mm256_store_ps(S[b][i], _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hd)),
                                               _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)))));
        _mm256_store_ps(M[b][i], _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hm)),
                                               _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn)))));
        for (int c = 0; c < 4; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * c));
            _mm256_store_si256((__m256i *)A[b][2 * c][i], _mm256_and_si256(v, m4));
            _mm256_store_si256((__m256i *)A[b][2 * c + 1][i], _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        }
    }
}

static _Thread_local void *tl_q4k;
static _Thread_local int64_t tl_q4k_nsb;

void gemm_amxq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {
    const int64_t nsb = W->cols / 256;
    /* per super-block: 8 x 512 bytes of unpacked nibbles, then S and M (16 x 8 floats each) */
    const size_t per_sb = 4096 + 2 * 512;
    if (nsb > tl_q4k_nsb) {
        free(tl_q4k);
        tl_q4k = aligned_alloc(64, per_sb * nsb);
        if (!tl_q4k) abort();
        tl_q4k_nsb = nsb;
    }
    uint8_t(*A)[8][16][32] = tl_q4k;
    float(*S)[16][8] = (void *)((uint8_t *)tl_q4k + 4096 * nsb);
    float(*M)[16][8] = (void *)((uint8_t *)tl_q4k + 4096 * nsb + 512 * nsb);
    _tile_loadconfig(&q8_tiles);
    int32_t C[8][256] __attribute__((aligned(64)));
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const int nr = rz - r0 < 16 ? (int)(rz - r0) : 16;
        for (int i = 0; i < 16; i++) {
            if (i < nr) {
                q4k_unpack_row(qn_tensor_row(W, r0 + i), i, nsb, A, S, M);
            } else { /* rows past the end: zero bytes and zero scales */
                for (int64_t b = 0; b < nsb; b++) {
                    for (int j = 0; j < 8; j++) memset(A[b][j][i], 0, 32);
                    memset(S[b][i], 0, sizeof S[b][i]);
                    memset(M[b][i], 0, sizeof M[b][i]);
                }
            }
        }
        __m512 acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        /* The unpacking above reads the weights in bursts, between which the tiles and the
         * scaling read none; the next 16 rows (one contiguous region) are fetched into L2
         * meanwhile, a slice per super-block (an expert layer at 16 tokens from memory:
         * 8.8-10.1 -> 7.2-8.5 ms). */
        const char *next = !W->row_map && r0 + 32 <= rz ? (const char *)qn_tensor_row(W, r0 + 16) : NULL;
        const size_t pf_step = (16 * W->row_bytes / nsb + 63) & ~(size_t)63;
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *p = packed + PACK_Q4K * b;
            if (next)
                for (size_t o = 0; o < pf_step; o += 64) _mm_prefetch(next + pf_step * b + o, _MM_HINT_T1);
            for (int j = 0; j < 8; j += 2) {
                _tile_loadd(1, A[b][j], 32);
                _tile_loadd(2, p + 512 * j, 64);
                _tile_loadd(4, A[b][j + 1], 32);
                _tile_loadd(5, p + 512 * (j + 1), 64);
                _tile_zero(0);
                _tile_zero(3);
                _tile_dpbusd(0, 1, 2);
                _tile_dpbusd(3, 4, 5);
                _tile_stored(0, C[j], 64);
                _tile_stored(3, C[j + 1], 64);
            }
            const float *dxp = (const float *)(p + 4096), *bsx = dxp + 16;
            const __m512 dx = _mm512_loadu_ps(dxp);
            for (int i = 0; i < 16; i++) {
                const float *sv = S[b][i], *mv = M[b][i];
                __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[0] + 16 * i)), _mm512_set1_ps(sv[0]));
                __m512 mn = _mm512_mul_ps(_mm512_loadu_ps(bsx), _mm512_set1_ps(mv[0]));
                for (int j = 1; j < 8; j++) {
                    t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[j] + 16 * i)), _mm512_set1_ps(sv[j]), t);
                    mn = _mm512_fmadd_ps(_mm512_loadu_ps(bsx + 16 * j), _mm512_set1_ps(mv[j]), mn);
                }
                acc[i] = _mm512_sub_ps(_mm512_fmadd_ps(t, dx, acc[i]), mn);
            }
        }
        amx_store_block(acc, nr, r0, 0, T, y, ldy, yrows); /* acc[i]: row r0+i, lane t: token t */
    }
    _tile_release();
}

/* ---------------------------------------------------------------- Q6_K */

/* Q6_K super-block (256 values, 210 bytes): 128 bytes of low nibbles (ql), 64 of high bit
 * pairs (qh), 16 int8 scales, f16 d. Value v is d * sc[v/16] * (q_v - 32). Against a Q8_K
 * activation block the product is dx * d * sum_s sc[s] * ((q - 32)_s . x_s), s over the 16
 * sub-blocks of 16. The codes minus 32 are signed bytes, so the tiles (s8 x s8) give each
 * sub-block's integer sum with no offset term to correct; the activations are packed by
 * gemm_amxq4k_pack, whose [64][16 tokens][4 bytes] array holds sub-block s's 4-row tile at
 * 256 * s. */
static const amx_tile_config q6_tiles = {.palette_id = 1,
                                         .colsb = {64, 16, 64, 64, 16, 64},
                                         .rows = {16, 16, 4, 16, 16, 4}};

/* Row i's super-blocks: the codes minus 32 in A[super-block][i][256] (sub-block s at 16 s,
 * so one tile load with a 256-byte stride takes it for 16 rows), d * sc in S[super-block][i]. */
static void q6k_unpack_row(const uint8_t *row, int i, int64_t nsb, int8_t (*A)[16][256], float (*S)[16][16]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3), off = _mm512_set1_epi8(32);
    /* qh bit pairs 0/1 for values 0..31 / 32..63 of a half, 4/6 for 64..95 / 96..127 */
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_add_epi16(sh01, _mm512_set1_epi16(4));
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *blk = row + 210 * b;
        uint16_t hd;
        memcpy(&hd, blk + 208, 2);
        _mm512_store_ps(S[b][i], _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(hd)),
                                               _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 192))))));
        for (int half = 0; half < 2; half++) {
            const __m512i L = _mm512_loadu_si512((const void *)(blk + 64 * half));
            const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * half)));
            const __m512i lo = _mm512_or_si512(_mm512_and_si512(L, m4),
                                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(H, sh01), m3), 4));
            const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), m4),
                                               _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(H, sh23), m3), 4));
            _mm512_store_si512((void *)(A[b][i] + 128 * half), _mm512_sub_epi8(lo, off));
            _mm512_store_si512((void *)(A[b][i] + 128 * half + 64), _mm512_sub_epi8(hi, off));
        }
    }
}

static _Thread_local void *tl_q6k;
static _Thread_local int64_t tl_q6k_nsb;

void gemm_amxq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {
    const int64_t nsb = W->cols / 256;
    const size_t per_sb = 4096 + 1024; /* 16 rows x 256 codes, then S (16 x 16 floats) */
    if (nsb > tl_q6k_nsb) {
        free(tl_q6k);
        tl_q6k = aligned_alloc(64, per_sb * nsb);
        if (!tl_q6k) abort();
        tl_q6k_nsb = nsb;
    }
    int8_t(*A)[16][256] = tl_q6k;
    float(*S)[16][16] = (void *)((uint8_t *)tl_q6k + 4096 * nsb);
    _tile_loadconfig(&q6_tiles);
    int32_t C[16][256] __attribute__((aligned(64)));
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const int nr = rz - r0 < 16 ? (int)(rz - r0) : 16;
        for (int i = 0; i < 16; i++) {
            if (i < nr) {
                q6k_unpack_row(qn_tensor_row(W, r0 + i), i, nsb, A, S);
            } else { /* rows past the end: zero codes and zero scales */
                for (int64_t b = 0; b < nsb; b++) {
                    memset(A[b][i], 0, sizeof A[b][i]);
                    memset(S[b][i], 0, sizeof S[b][i]);
                }
            }
        }
        __m512 acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        /* the next 16 rows into L2 while the tiles and the scaling run (as for Q4_K) */
        const char *next = !W->row_map && r0 + 32 <= rz ? (const char *)qn_tensor_row(W, r0 + 16) : NULL;
        const size_t pf_step = (16 * W->row_bytes / nsb + 63) & ~(size_t)63;
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *p = packed + PACK_Q4K * b;
            if (next)
                for (size_t o = 0; o < pf_step; o += 64) _mm_prefetch(next + pf_step * b + o, _MM_HINT_T1);
            for (int sb = 0; sb < 16; sb += 2) {
                _tile_loadd(1, A[b][0] + 16 * sb, 256);
                _tile_loadd(2, p + 256 * sb, 64);
                _tile_loadd(4, A[b][0] + 16 * (sb + 1), 256);
                _tile_loadd(5, p + 256 * (sb + 1), 64);
                _tile_zero(0);
                _tile_zero(3);
                _tile_dpbssd(0, 1, 2);
                _tile_dpbssd(3, 4, 5);
                _tile_stored(0, C[sb], 64);
                _tile_stored(3, C[sb + 1], 64);
            }
            const __m512 dx = _mm512_loadu_ps((const float *)(p + 4096));
            for (int i = 0; i < 16; i++) {
                const float *sv = S[b][i];
                __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[0] + 16 * i)), _mm512_set1_ps(sv[0]));
                __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[1] + 16 * i)), _mm512_set1_ps(sv[1]));
                for (int s2 = 2; s2 < 16; s2 += 2) {
                    t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[s2] + 16 * i)), _mm512_set1_ps(sv[s2]), t0);
                    t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C[s2 + 1] + 16 * i)), _mm512_set1_ps(sv[s2 + 1]), t1);
                }
                acc[i] = _mm512_fmadd_ps(_mm512_add_ps(t0, t1), dx, acc[i]);
            }
        }
        amx_store_block(acc, nr, r0, 0, T, y, ldy, yrows); /* acc[i]: row r0+i, lane t: token t */
    }
    _tile_release();
}

#else

int gemm_amxq8_available(void) { return 0; }
size_t gemm_amxq8_packed_bytes(int64_t cols) { return 0; }
void gemm_amxq8_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq8_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                     int64_t ldy, float *const *yrows) {}
size_t gemm_amxq4k_packed_bytes(int64_t cols) { return 0; }
void gemm_amxq4k_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_amxq4k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {}
void gemm_amxq6k_rows(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y,
                      int64_t ldy, float *const *yrows) {}

#endif
