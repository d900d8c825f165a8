/* gemm_vnni.c - Q4_K, Q5_K, Q6_K and Q8_0 weights against many activation rows on AVX-512 VNNI,
 * with the tokens in the vector lanes; for CPUs without AMX (AMD Zen 4, Intel before
 * Sapphire Rapids).
 *
 * Why. The vector kernels of dot_x86.inc give one weight row's block to a register and dot it
 * with one token at a time: each token then costs the 4 vpdpbusd of its products plus ~13
 * instructions that apply the sub-block scales, the mins and the block scale to that token's
 * partial sums. Without AMX tiles, that per-token overhead is what bounds a prompt.
 *
 * How. Here a 512-bit register holds 16 lanes of 4 bytes, and the lanes belong to the
 * tokens: with L = 16 / G token slots (G = 1, 2 or 4 lanes per token, the fewest slots that
 * hold T; more tokens go in groups of 16), slot t's G lanes hold 4G consecutive activation
 * codes of token t, and the weight's same 4G codes (unsigned: 0..15, 0..31, 0..63, or Q8_0's
 * plus 128) are broadcast to every slot. One vpdpbusd then advances all tokens by 4G values
 * of the row, and the scales are applied once per sub-block for all tokens together: convert
 * the sub-block's int32 sums, multiply by d * scale, and once per block by the tokens'
 * activation scales. What stays per token is only the products. The tokens' codes are laid
 * out once per product (gemm_vnni_pack, gemm_vnni_pack_q8) and shared by all rows and
 * threads; a tile of rows is unpacked once into value-ordered bytes on the stack, from which
 * the broadcasts load, and dotted with one group of tokens at a time, four rows to each load
 * of the tokens' codes (rows_dot; a row wider than a tile goes alone, row_run_wide).
 *
 * Where. A row block costs ~50 cycles whatever the number of tokens (unpacking, and the
 * scale work of 16 lanes), and the rows are read in bursts that the hardware prefetchers
 * follow worse than the vector kernels' steady stream; so with the weights coming from
 * memory the lanes win from 12-16 tokens (ops.c has the numbers). ops.c sends them prompts,
 * the experts of a prompt and the dense products of a batched step.
 *
 * The integer sums are exact, as in the vector kernels; only the float rounding order
 * differs. Q4_K's and Q5_K's mins, Q6_K's -32 offset and Q8_0's +128 go through the
 * activations' block sums, packed per lane with the token's scale already applied. */
#include "kernels/cpu/gemm_vnni.h"

#include <string.h>

#include "kernels/cpu/quant.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>

/* One packed block of 256 values: the codes of all token slots (64 / G operands of 64
 * bytes, at 0), the activation scale of each lane, dx times the 16-value sums (lane t * G of row
 * s16 for sub-block s16 of 16 values; 0 elsewhere), and the same for the 32-value sums. */
#define PK_DX 4096
#define PK_BS16 (PK_DX + 64)
#define PK_BS32 (PK_BS16 + 1024)
#define PK_BLOCK (PK_BS32 + 512)

int gemm_vnni_available(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("f16c");
    }
    return ok;
}

/* Lanes per token: up to 16 tokens, the fewest token slots (16, 8 or 4) that hold them;
 * more tokens go in groups of 16 slots. */
static inline int lanes_per_token(int T) { return T > 8 ? 1 : T > 4 ? 2 : 4; }

size_t gemm_vnni_packed_bytes(int64_t cols, int T) { return (size_t)((T + 15) / 16) * (size_t)(cols / 256) * PK_BLOCK; }

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Token t's slot of packed block pk from its Q8_K block a (d, 256 codes, 16 sums): the
 * codes, its scale in each of its lanes, and in its first lane the scale times its 16- and
 * 32-value sums. */
static void slot_q8k(const uint8_t *a, int t, int G, uint8_t *pk) {
    const int cb = 4 * G;
    float *dxv = (float *)(pk + PK_DX), *bs16 = (float *)(pk + PK_BS16), *bs32 = (float *)(pk + PK_BS32);
    float dx;
    int16_t bs[16];
    memcpy(&dx, a, 4);
    memcpy(bs, a + 260, 32);
    for (int v = 0; v < 64 / G; v++) memcpy(pk + 64 * v + cb * t, a + 4 + cb * v, cb);
    for (int j = 0; j < G; j++) dxv[t * G + j] = dx;
    for (int s = 0; s < 16; s++) bs16[16 * s + t * G] = dx * (float)bs[s];
    for (int s = 0; s < 8; s++) bs32[16 * s + t * G] = dx * (float)(bs[2 * s] + bs[2 * s + 1]);
}

/* The same from eight Q8_0 blocks at a (34 bytes: d, 32 codes), for Q8_0 weights: per lane and
 * 32-value block the token's scale (at PK_BS32), and 128 times its codes' sum times the scale
 * (at PK_BS16): the correction for the weights' codes, which come offset by 128. */
static void slot_q8_0(const uint8_t *a, int t, int G, uint8_t *pk) {
    const int cb = 4 * G;
    float *cor = (float *)(pk + PK_BS16), *dxb = (float *)(pk + PK_BS32);
    for (int v = 0; v < 64 / G; v++) {
        const int k = cb * v; /* value k of the 256: block k / 32, code k % 32 */
        memcpy(pk + 64 * v + cb * t, a + 34 * (k / 32) + 2 + k % 32, cb);
    }
    for (int j = 0; j < 8; j++) {
        const float dx = h2f(a + 34 * j);
        int sum = 0;
        for (int i = 0; i < 32; i++) sum += (int8_t)a[34 * j + 2 + i];
        for (int l = 0; l < G; l++) dxb[16 * j + t * G + l] = dx;
        cor[16 * j + t * G] = 128.0f * (float)sum * dx;
    }
}

/* Groups of 16 token slots, each as blocks of 256 values; empty slots get zero codes, so that
 * their lanes stay 0. rb: bytes of 256 values of an activation row. */
static void pack_run(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed, size_t rb,
                     void (*slot)(const uint8_t *, int, int, uint8_t *)) {
    const int G = lanes_per_token(T), L = 16 / G, cb = 4 * G;
    const int64_t nb = cols / 256;
    for (int g = 0; g < (T + 15) / 16; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *pk = packed + PK_BLOCK * (g * nb + b);
            memset(pk + PK_DX, 0, PK_BLOCK - PK_DX);
            for (int t = 0; t < L; t++) {
                if (16 * g + t < T) slot(act + astride * (16 * g + t) + rb * (size_t)b, t, G, pk);
                else
                    for (int v = 0; v < 64 / G; v++) memset(pk + 64 * v + cb * t, 0, cb);
            }
        }
}

void gemm_vnni_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    pack_run(act, astride, T, cols, packed, 292, slot_q8k);
}

void gemm_vnni_pack_q8(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {
    pack_run(act, astride, T, cols, packed, 8 * 34, slot_q8_0);
}

enum { FMT_Q4_K, FMT_Q6_K, FMT_Q8_0, FMT_Q5_K };

/* A weight block unpacked: its 256 values in order, one byte each, its scales times d
 * (Q4_K and Q5_K: 8; Q6_K: 16; Q8_0: the 8 blocks' d), and the coefficients of the
 * activation sums that rows_dot subtracts (Q4_K and Q5_K: the 8 mins times dmin; Q6_K: the
 * offset, 32 times each scale times d). */
typedef struct {
    _Alignas(64) uint8_t U[256];
    float dsc[16];
    float dmm[16];
} wblock;

/* Q4_K (144-byte blocks: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles;
 * value 64j + l is the low nibble of byte 32j + l for l < 32, the high nibble of byte
 * 32j + l - 32 above). */
static inline void q45_unpack(const uint8_t *w, const uint8_t *qs, wblock *o);
static inline void q4k_unpack(const uint8_t *w, wblock *o) { q45_unpack(w, w + 16, o); }

/* Q5_K (176-byte blocks: Q4_K's d, dmin and scales, then 32 bytes qh, then the nibbles at 48):
 * value 64j + l has its fifth bit in bit 2j of qh byte l (l < 32), value 64j + 32 + l in bit
 * 2j + 1; it adds 16. */
static inline void q5k_unpack(const uint8_t *w, wblock *o) {
    q45_unpack(w, w + 48, o);
    const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 16)));
    const __m512i bit0 = _mm512_inserti64x4(_mm512_set1_epi8(1), _mm256_set1_epi8(2), 1), sixteen = _mm512_set1_epi8(16);
    for (int j = 0; j < 4; j++) { /* bytes 1 << 2j, then 2 << 2j: no carry into the next byte */
        const __m512i u = _mm512_load_si512((const void *)(o->U + 64 * j));
        _mm512_store_si512((void *)(o->U + 64 * j),
                           _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(h, _mm512_slli_epi16(bit0, 2 * j)), u, sixteen));
    }
}

static inline void q45_unpack(const uint8_t *w, const uint8_t *qs, wblock *o) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    uint64_t sc, mn;
    quant_k4_unpack(w + 4, &sc, &mn);
    _mm256_storeu_ps(o->dsc, _mm256_mul_ps(_mm256_set1_ps(h2f(w)),
                                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)))));
    _mm256_storeu_ps(o->dmm, _mm256_mul_ps(_mm256_set1_ps(h2f(w + 2)),
                                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn)))));
    for (int h = 0; h < 2; h++) { /* bytes 64h.. hold values 128h + [0,32) [64,96) (low) and [32,64) [96,128) (high) */
        const __m512i z = _mm512_loadu_si512((const void *)(qs + 64 * h));
        const __m512i lo = _mm512_and_si512(z, m4), hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
        _mm512_store_si512((void *)(o->U + 128 * h), _mm512_shuffle_i64x2(lo, hi, 0x44));
        _mm512_store_si512((void *)(o->U + 128 * h + 64), _mm512_shuffle_i64x2(lo, hi, 0xEE));
    }
}

/* Q6_K (210-byte blocks: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales,
 * d; for half h and l < 32, values 128h + l, +32, +64, +96 are the low nibbles of ql bytes
 * 64h + l and 64h + 32 + l, then their high nibbles, with bits 0-1, 2-3, 4-5, 6-7 of qh byte
 * 32h + l on top). */
static inline void q6k_unpack(const uint8_t *w, wblock *o) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    /* per 16-bit lane: values 0..31 take qh << 4, 32..63 qh << 2; 64..95 qh, 96..127 qh >> 2 */
    const __m512i up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i dn = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512 dsc = _mm512_mul_ps(_mm512_set1_ps(h2f(w + 208)),
                                     _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 192)))));
    _mm512_storeu_ps(o->dsc, dsc);
    _mm512_storeu_ps(o->dmm, _mm512_mul_ps(dsc, _mm512_set1_ps(32.0f)));
    for (int h = 0; h < 2; h++) {
        const __m512i l = _mm512_loadu_si512((const void *)(w + 64 * h));
        const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h)));
        _mm512_store_si512((void *)(o->U + 128 * h),
                           _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(q, up), m30)));
        _mm512_store_si512((void *)(o->U + 128 * h + 64), _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                                                         _mm512_and_si512(_mm512_srlv_epi16(q, dn), m30)));
    }
}

/* Q8_0, 256 values (eight 34-byte blocks: d, 32 signed codes): the codes plus 128 as unsigned
 * bytes (the first operand of vpdpbusd is unsigned; the offset comes back out through the
 * activations' sums), and the eight d. */
static inline void q8_unpack(const uint8_t *w, wblock *o) {
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    for (int j = 0; j < 8; j++) {
        o->dsc[j] = h2f(w + 34 * j);
        _mm256_store_si256((__m256i *)(o->U + 32 * j),
                           _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + 34 * j + 2)), x80));
    }
}

/* The weight's 4G codes at u, in every token slot. */
static inline __attribute__((always_inline)) __m512i bcast_codes(const uint8_t *u, const int G) {
    if (G == 1) { int32_t v; memcpy(&v, u, 4); return _mm512_set1_epi32(v); }
    if (G == 2) { int64_t v; memcpy(&v, u, 8); return _mm512_set1_epi64(v); }
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)u));
}

/* R <= 4 rows (unpacked at ub[0..R-1]) against one group of token slots (G lanes each, packed
 * at pk), for Q4_K (NS = 8 sub-blocks of 32), Q6_K (16 of 16) or Q8_0 (8 blocks of 32). The rows
 * share each 64-byte load of the tokens' codes: one row at a time gives every vpdpbusd a load of
 * its own, and Zen 4 runs those ~0.6 per cycle, where four products to one load run ~0.8
 * (PERF.md, fifteenth session). The sub-blocks are the outer loop, so each row keeps one
 * accumulator of products, and the rows' chains are the independent work that covers
 * vpdpbusd's latency. Then, per lane: Q4_K adds d sc_s sum(x q) - dmin m_s sum(x), Q6_K d sc_s
 * (sum(x q) - 32 sum(x)), the x sums coming scaled by dx from the packing and the rest
 * multiplied by dx once per block; Q8_0 adds d_s (dx_s sum(x (q + 128)) - 128 dx_s sum(x)). */
static inline __attribute__((always_inline)) void rows_dot(const wblock *const *ub, const int R, int64_t nb,
                                                         const uint8_t *pk, const int G, const int fmt, __m512 *out) {
    const int q6 = fmt == FMT_Q6_K, NS = q6 ? 16 : 8, n = 256 / NS; /* Q5_K computes as Q4_K */
    __m512 acc[4], accm[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = accm[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *pb = pk + PK_BLOCK * b;
        __m512 blk[4], mn[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) blk[r] = mn[r] = _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int j = 0; j < NS; j++) {
            __m512i s[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int i = 0; i < n / (4 * G); i++) {
                const int v = n * j + 4 * G * i;
                const __m512i x = _mm512_load_si512((const void *)(pb + 64 * (v / (4 * G))));
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) s[r] = _mm512_dpbusd_epi32(s[r], bcast_codes(ub[r][b].U + v, G), x);
            }
            if (fmt == FMT_Q8_0) { /* d_j (dx S'_j - 128 dx sum(x)) */
                const __m512 dxb = _mm512_load_ps((const float *)(pb + PK_BS32) + 16 * j);
                const __m512 cor = _mm512_load_ps((const float *)(pb + PK_BS16) + 16 * j);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++)
                    blk[r] = _mm512_fmadd_ps(_mm512_fmsub_ps(_mm512_cvtepi32_ps(s[r]), dxb, cor),
                                             _mm512_set1_ps(ub[r][b].dsc[j]), blk[r]);
            } else {
                const __m512 bsx = _mm512_load_ps((const float *)(pb + (q6 ? PK_BS16 : PK_BS32)) + 16 * j);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    blk[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_set1_ps(ub[r][b].dsc[j]), blk[r]);
                    mn[r] = _mm512_fmadd_ps(_mm512_set1_ps(ub[r][b].dmm[j]), bsx, mn[r]);
                }
            }
        }
        if (fmt == FMT_Q8_0) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r] = _mm512_add_ps(acc[r], blk[r]);
        } else {
            const __m512 dx = _mm512_load_ps((const float *)(pb + PK_DX));
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                acc[r] = _mm512_fmadd_ps(blk[r], dx, acc[r]);
                accm[r] = _mm512_add_ps(accm[r], mn[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = _mm512_sub_ps(acc[r], accm[r]);
}

/* rows_dot with R, G and the format as constants, so that each combination is compiled on its
 * own (Q5_K computes as Q4_K). Inlined where it is called: an out-of-line call from the tile
 * loop measured 2-4% slower in cache (fifteenth session). */
static inline __attribute__((always_inline)) void rows_dot_any(const wblock *const *ub, int R, int64_t nb, const uint8_t *pk, int G, int fmt, __m512 *out) {
#define ROWS_R(F, G_)                                                     \
    do {                                                                  \
        if (R == 4) rows_dot(ub, 4, nb, pk, G_, F, out);                  \
        else if (R == 3) rows_dot(ub, 3, nb, pk, G_, F, out);             \
        else if (R == 2) rows_dot(ub, 2, nb, pk, G_, F, out);             \
        else rows_dot(ub, 1, nb, pk, G_, F, out);                         \
    } while (0)
#define ROWS_G(F)                         \
    do {                                  \
        if (G == 1) ROWS_R(F, 1);         \
        else if (G == 2) ROWS_R(F, 2);    \
        else ROWS_R(F, 4);                \
    } while (0)
    if (fmt == FMT_Q4_K || fmt == FMT_Q5_K) ROWS_G(FMT_Q4_K);
    else if (fmt == FMT_Q6_K) ROWS_G(FMT_Q6_K);
    else ROWS_G(FMT_Q8_0);
#undef ROWS_G
#undef ROWS_R
}

/* The results of the nr <= 16 rows [r0, r0 + nr) (acc[k]: row r0 + k) for tokens t0 .. t0 + n - 1,
 * token t0 + t's result being the sum of its G lanes; written token by token, each token's results
 * nr consecutive floats. Row by row, each row's stores would go to T lines ldy
 * floats apart, and an ldy that is a multiple of 1 KiB puts them all in one set of the L1
 * cache, which then evicts and refetches them at every row: 2048 x 2048 at 16 tokens took
 * 9% longer in cache (docs/PERF.md, eighteenth session). */
static inline void store_tile(const __m512 *acc, int nr, int G, int t0, int n, int64_t r0, float *y, int64_t ldy,
                              float *const *yrows) {
    float o[16][16];
    for (int k = 0; k < nr; k++) _mm512_storeu_ps(o[k], acc[k]);
    for (int t = 0; t < n; t++) {
        float *dst = yrows ? &yrows[t0 + t][r0] : &y[(int64_t)(t0 + t) * ldy + r0];
        for (int k = 0; k < nr; k++) {
            float v = o[k][t * G];
            for (int j = 1; j < G; j++) v += o[k][t * G + j];
            dst[k] = v;
        }
    }
}

/* Bytes of 256 weight values in each format. */
static inline size_t fmt_bytes(int fmt) {
    return fmt == FMT_Q4_K ? 144 : fmt == FMT_Q5_K ? 176 : fmt == FMT_Q6_K ? 210 : 272;
}

/* n blocks of 256 values from w. */
static void unpack_row(const uint8_t *w, int64_t n, int fmt, wblock *u) {
    const size_t wb = fmt_bytes(fmt);
    for (int64_t b = 0; b < n; b++) {
        if (fmt == FMT_Q4_K) q4k_unpack(w + wb * b, u + b);
        else if (fmt == FMT_Q5_K) q5k_unpack(w + wb * b, u + b);
        else if (fmt == FMT_Q6_K) q6k_unpack(w + wb * b, u + b);
        else q8_unpack(w + wb * b, u + b);
    }
}

#define TILE_BLOCKS 64 /* weight blocks unpacked at a time: 24 KiB */

/* A tile of rows [r0, r1) whose blocks fit ub, against all groups of token slots, one group at
 * a time, four rows to each load of the tokens' codes (rows_dot); the columns in pieces of 16
 * KiB of codes, as in rows_run. */
static void rows_run_tile(const qn_tensor *W, int64_t r0, int64_t r1, int64_t rz, const uint8_t *packed, int T,
                        float *y, int64_t ldy, float *const *yrows, const int fmt, wblock *ub) {
    const int G = lanes_per_token(T);
    const int64_t nb = W->cols / 256, gstride = nb * PK_BLOCK, piece = 4 * G;
    for (int64_t r = r0; r < r1; r++) unpack_row(qn_tensor_row(W, r), nb, fmt, ub + (r - r0) * nb);
    /* the next tile's rows (contiguous), fetched into L2 a slice before each rows_dot call */
    const int64_t nrows_next = r1 + (r1 - r0) <= rz ? r1 - r0 : rz - r1;
    const char *pf = nrows_next > 0 ? (const char *)qn_tensor_row(W, r1) : NULL;
    const int64_t pf_lines = nrows_next > 0 ? (int64_t)((nrows_next * W->row_bytes + 63) / 64) : 0;
    const int64_t n_calls = ((T + 15) / 16) * ((nb + piece - 1) / piece) * ((r1 - r0 + 3) / 4);
    const int64_t pf_step = (pf_lines + n_calls - 1) / n_calls;
    int64_t pf_at = 0;
    for (int g = 0; g < (T + 15) / 16; g++) {
        __m512 acc[16];
        for (int64_t r = r0; r < r1; r++) acc[r - r0] = _mm512_setzero_ps();
        for (int64_t b0 = 0; b0 < nb; b0 += piece) {
            const int64_t nbp = nb - b0 < piece ? nb - b0 : piece;
            const uint8_t *pk = packed + gstride * g + PK_BLOCK * b0;
            for (int64_t r = r0; r < r1; r += 4) {
                for (int64_t e = pf_at + pf_step < pf_lines ? pf_at + pf_step : pf_lines; pf_at < e; pf_at++)
                    _mm_prefetch(pf + 64 * pf_at, _MM_HINT_T1);
                const int R = r1 - r < 4 ? (int)(r1 - r) : 4;
                const wblock *u[4] = {ub, ub, ub, ub};
                for (int k = 0; k < R; k++) u[k] = ub + (r - r0 + k) * nb + b0;
                __m512 o[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                rows_dot_any(u, R, nbp, pk, G, fmt, o);
                for (int k = 0; k < R; k++) acc[r - r0 + k] = _mm512_add_ps(acc[r - r0 + k], o[k]);
            }
        }
        const int t0 = 16 * g;
        store_tile(acc, (int)(r1 - r0), G, t0, T - t0 < 16 / G ? T - t0 : 16 / G, r0, y, ldy, yrows);
    }
}

/* Row r, wider than a tile (more than TILE_BLOCKS blocks), against all groups of token slots:
 * unpacked a piece at a time, and each piece dotted with up to 16 groups before the next. */
static void row_run_wide(const qn_tensor *W, int64_t r, int64_t rz, const uint8_t *packed, int T, float *y,
                         int64_t ldy, float *const *yrows, const int fmt, wblock *ub) {
    const int G = lanes_per_token(T), ng = (T + 15) / 16;
    const int64_t nb = W->cols / 256, gstride = nb * PK_BLOCK, piece = 4 * G;
    if (r + 1 < rz) { /* the next row (rows_run) */
        const char *nx = (const char *)qn_tensor_row(W, r + 1);
        for (size_t off = 0; off < W->row_bytes; off += 64) _mm_prefetch(nx + off, _MM_HINT_T1);
    }
    const wblock *u[1] = {ub};
    for (int g0 = 0; g0 < ng; g0 += 16) {
        const int ngp = ng - g0 < 16 ? ng - g0 : 16;
        __m512 acc[16];
        for (int k = 0; k < ngp; k++) acc[k] = _mm512_setzero_ps();
        for (int64_t b0 = 0; b0 < nb; b0 += piece) {
            const int64_t nbp = nb - b0 < piece ? nb - b0 : piece;
            unpack_row(qn_tensor_row(W, r) + (size_t)b0 * fmt_bytes(fmt), nbp, fmt, ub);
            for (int k = 0; k < ngp; k++) {
                __m512 o = _mm512_setzero_ps();
                rows_dot_any(u, 1, nbp, packed + gstride * (g0 + k) + PK_BLOCK * b0, G, fmt, &o);
                acc[k] = _mm512_add_ps(acc[k], o);
            }
        }
        for (int k = 0; k < ngp; k++) {
            const int t0 = 16 * (g0 + k);
            store_tile(&acc[k], 1, G, t0, T - t0 < 16 / G ? T - t0 : 16 / G, r, y, ldy, yrows);
        }
    }
}

/* Rows [ra, rz) in tiles of up to 16 rows (TILE_BLOCKS blocks): each tile is unpacked once,
 * then dotted with every group of 16 tokens (rows_run_tile). The columns go in pieces of 16
 * KiB of packed codes, and every row of the tile takes a piece before the next: the codes of
 * one group span 4 KiB per block, and a row of 2048 values against a whole group from L2
 * would wait on L2 at every product. A row wider than a tile (more than 8192 values) goes
 * alone (row_run_wide). The tile after the current one is read in a burst when its turn
 * comes, and the hardware prefetchers, idle through this tile's products, would not have it
 * ready: so the next tile's rows are fetched into L2 a slice before each of this tile's
 * rows_dot calls. (Fetching all of them while this tile was unpacked left its unpacking
 * waiting on memory: from memory, 2048 x 2048 at 16 tokens took 7-10% longer, docs/PERF.md.) */
static void rows_run(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y, int64_t ldy,
                     float *const *yrows, const int fmt) {
    const int64_t nb = W->cols / 256;
    wblock ub[TILE_BLOCKS];
    int64_t R = TILE_BLOCKS / nb;
    if (R > 16) R = 16;
    if (R < 1) R = 1;
    for (int64_t r0 = ra; r0 < rz; r0 += R) {
        const int64_t r1 = r0 + R < rz ? r0 + R : rz;
        if (R > 1) rows_run_tile(W, r0, r1, rz, packed, T, y, ldy, yrows, fmt, ub);
        else row_run_wide(W, r0, rz, packed, T, y, ldy, yrows, fmt, ub);
    }
}

/* The entry points, one per weight format (gemm_vnni.h). */
#define VNNI_ROWS(name, body)                                                                                  \
    void name(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y, int64_t ldy, \
              float *const *yrows) {                                                                         \
        body;                                                                                                \
    }
VNNI_ROWS(gemm_vnniq4k_rows, rows_run(W, ra, rz, packed, T, y, ldy, yrows, FMT_Q4_K))
VNNI_ROWS(gemm_vnniq5k_rows, rows_run(W, ra, rz, packed, T, y, ldy, yrows, FMT_Q5_K))
VNNI_ROWS(gemm_vnniq6k_rows, rows_run(W, ra, rz, packed, T, y, ldy, yrows, FMT_Q6_K))
VNNI_ROWS(gemm_vnniq8_rows, rows_run(W, ra, rz, packed, T, y, ldy, yrows, FMT_Q8_0))

#else /* not built for AVX-512 VNNI: gemm_vnni_available() says so, and nothing else is called */
#define VNNI_ROWS(name)                                                                                        \
    void name(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y, int64_t ldy, \
              float *const *yrows) {}
int gemm_vnni_available(void) { return 0; }
size_t gemm_vnni_packed_bytes(int64_t cols, int T) { return 0; }
void gemm_vnni_pack(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
void gemm_vnni_pack_q8(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed) {}
VNNI_ROWS(gemm_vnniq4k_rows)
VNNI_ROWS(gemm_vnniq5k_rows)
VNNI_ROWS(gemm_vnniq6k_rows)
VNNI_ROWS(gemm_vnniq8_rows)
#endif
