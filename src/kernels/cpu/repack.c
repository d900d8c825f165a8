/* repack.c - Q8_0, Q4_K, Q5_K and Q6_K weights in groups of 16 interleaved rows, and their AVX-512 VNNI
 * kernels (layouts in repack.h).
 *
 * Why. The Q8_0 kernels of the mapped file (dot_x86.inc, gemm_vnni.c) give one row's block to a
 * register and then reduce it per row and token, or unpack a tile of rows to broadcast from:
 * for the few tokens an expert gets in a batched decode step, that per-row work is most of the
 * cost. With 16 rows interleaved by 4-byte words, each block of a group is 8 plain loads shared
 * by all tokens, and each token costs 8 vpdpbusd (its 4 values broadcast from memory), one
 * convert and two multiplies for 16 rows. An expert layer of 32 experts at 5 tokens on the
 * project's AMD EPYC (2 cores, PERF.md eighteenth session): 5.6 cycles per 256 values and token
 * in cache against 12.0 for the mapped-file kernels, 13.0 against 15.6-16.5 from memory in a
 * slow phase of the machine's memory; at 16 tokens 7.1 against 9.8. Q4_K likewise: the rows'
 * sub-block scales and mins are widened once per block for all tokens, and its one-token cost
 * in cache falls from 22.2 to 12.0 cycles, which one-token decoding of a Q4_K_M file feels. Its
 * mins taken in as integers with vpdpwssd (twenty-first session) brought 5 and 16 tokens from 4.2
 * to 3.86 TSC ticks (Q5_K: 5.0 to 4.6 and 4.7 to 4.3).
 * Q5_K is Q4_K's kernel with each word's fifth bits or-ed in from a plane of high bits (two
 * instructions a word, for all tokens). Q6_K (twentieth session): with the codes' low nibbles and
 * high bits in separate planes laid out for it, a word of 64 codes is 3-4 instructions for all
 * tokens, and each sub-block's sum starts at the activations' offset, so a token costs 4
 * vpdpbusd, a convert and an FMA per 16 values of 16 rows: in cache, one thread, 5.3 against 9.6
 * TSC ticks (2.6 GHz) per 256 values and token for the mapped kernel at 5 tokens, 11.4 against
 * 17.1 at one (an earlier layout, with the codes in Q6_K's own planes and the offset taken out in
 * f32, gained little; PERF.md).
 *
 * The price is a copy: the weights are no longer only mapped. Opt-in at load
 * (qnext_model_params.repack); the loader then drops the file pages it copied from
 * (model_repack), so the resident size stays about the file's.
 *
 * Exactness. vpdpbusd multiplies unsigned by signed bytes. Q8_0's weights carry +128, and each
 * token's block starts its integer sum at -128 times the sum of its activation codes (dot.h's
 * DOT_ACT_Q8_0G keeps those), so the sum is exactly the signed one; Q4_K's codes are unsigned
 * already, and its mins go in through the activations' sums of 32 (DOT_ACT_Q8_K32), exactly in
 * int32. The scales are applied per block in f32 as in the other kernels, only in another order. */
#include "kernels/cpu/repack.h"

#include <string.h>

#include "kernels/cpu/dot.h"
#include "kernels/cpu/gemm_vnni.h"
#include "kernels/cpu/quant.h"

int repack_fits(const qn_tensor *W) {
    if (W->rows <= 0 || W->rows % REPACK_ROWS || W->cols <= 0) return 0;
    return (W->dtype == QN_Q8_0 && W->cols % 32 == 0) || ((W->dtype == QN_Q4_K || W->dtype == QN_Q5_K || W->dtype == QN_Q6_K) && W->cols % 256 == 0);
}

/* Bytes of one group of 16 rows: its blocks (of 32 values for Q8_0, 256 for the K types). */
static size_t group_bytes(const qn_tensor *W) {
    const int q8 = W->dtype == QN_Q8_0;
    return (size_t)(W->cols / (q8 ? 32 : 256)) * (q8                     ? REPACK_Q8_0_BLOCK
                                                   : W->dtype == QN_Q4_K ? REPACK_Q4_K_BLOCK
                                                   : W->dtype == QN_Q5_K ? REPACK_Q5_K_BLOCK
                                                                         : REPACK_Q6_K_BLOCK);
}

size_t repack_bytes(const qn_tensor *W) { return (size_t)(W->rows / REPACK_ROWS) * group_bytes(W); }

int repack_act_type(const qn_tensor *W) {
    return W->dtype == QN_Q8_0 ? DOT_ACT_Q8_0G : W->dtype == QN_Q6_K ? DOT_ACT_Q8_K6 : DOT_ACT_Q8_K32;
}

/* Row r's block blk (Q6_K: 128 bytes ql, 64 qh, 16 int8 scales, f16 d) into block-group o of the
 * layout in repack.h: each value's 6-bit code (0..63, the stored value plus 32) split into its
 * low nibble (the ql units) and its two high bits (the qh units). */
static void repack_write_q6_k(const uint8_t *blk, int r, uint8_t *o) {
    uint8_t code[256];
    for (int n = 0; n < 2; n++) /* Q6_K's own order: quant.c's dequant_q6_k */
        for (int l = 0; l < 32; l++) {
            const uint8_t ql0 = blk[64 * n + l], ql1 = blk[64 * n + 32 + l], qh = blk[128 + 32 * n + l];
            code[128 * n + l] = (uint8_t)((ql0 & 15) | (qh & 3) << 4);
            code[128 * n + l + 32] = (uint8_t)((ql1 & 15) | (qh >> 2 & 3) << 4);
            code[128 * n + l + 64] = (uint8_t)((ql0 >> 4) | (qh >> 4 & 3) << 4);
            code[128 * n + l + 96] = (uint8_t)((ql1 >> 4) | (qh >> 6 & 3) << 4);
        }
    memcpy(o + 2 * r, blk + 208, 2);
    for (int j = 0; j < 16; j++) o[32 + 16 * j + r] = blk[192 + j];
    for (int p = 0; p < 8; p++) {
        uint8_t *u = o + 288 + 384 * p;
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 4; i++) {
                const int v0 = 32 * p + 4 * k + i, v1 = v0 + 16; /* sub-blocks 2p and 2p + 1 */
                u[64 * k + 4 * r + i] = (uint8_t)((code[v0] & 15) | (code[v1] & 15) << 4);
                uint8_t *h = &u[256 + 64 * (k / 2) + 4 * r + i];
                *h = (uint8_t)(*h | (code[v0] >> 4) << (2 * (k % 2)) | (code[v1] >> 4) << (4 + 2 * (k % 2)));
            }
    }
}

void repack_write(const qn_tensor *W, uint8_t *dst) {
    const int q8 = W->dtype == QN_Q8_0, q5 = W->dtype == QN_Q5_K;
    const int64_t nb = W->cols / (q8 ? 32 : 256);
    /* a row's block of the file (Q8_0 34 bytes, Q4_K 144, Q5_K 176, Q6_K 210), a group's block here */
    const size_t ib = quant_row_bytes(W->dtype, q8 ? 32 : 256), ob = group_bytes(W) / (size_t)nb;
    if (W->dtype == QN_Q6_K) memset(dst, 0, repack_bytes(W)); /* the qh units are or-ed into */
    for (int64_t g = 0; g < W->rows / REPACK_ROWS; g++)
        for (int r = 0; r < REPACK_ROWS; r++) {
            const uint8_t *row = qn_tensor_row(W, REPACK_ROWS * g + r);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + ib * b;
                uint8_t *o = dst + (g * nb + b) * ob;
                if (W->dtype == QN_Q6_K) repack_write_q6_k(blk, r, o);
                else if (q8) { /* Q8_0: f16 scale, 32 int8 codes */
                    memcpy(o + 2 * r, blk, 2);
                    for (int k = 0; k < 8; k++)
                        for (int i = 0; i < 4; i++) o[32 + 64 * k + 4 * r + i] = (uint8_t)(blk[2 + 4 * k + i] ^ 0x80);
                } else {
                    /* Q4_K: f16 d, f16 dmin, 12 bytes of scales, 128 of codes; Q5_K: the same with 32
                     * bytes of high bits before the codes */
                    const uint8_t *ql = blk + (q5 ? 48 : 16);
                    uint64_t sc, mn;
                    quant_k4_unpack(blk + 4, &sc, &mn);
                    memcpy(o + 2 * r, blk, 2);
                    memcpy(o + 32 + 2 * r, blk + 2, 2);
                    for (int j = 0; j < 8; j++) {
                        o[64 + 16 * j + r] = (uint8_t)(sc >> (8 * j));
                        o[192 + 32 * (j / 2) + 2 * r + j % 2] = (uint8_t)(mn >> (8 * j));
                    }
                    for (int c = 0; c < 4; c++)
                        for (int w = 0; w < 8; w++) memcpy(o + 320 + 512 * c + 64 * w + 4 * r, ql + 32 * c + 4 * w, 4);
                    if (q5) /* bit w of byte 4r + i of unit (c, u): the high bit of value i of word w of sub-block 2c + u */
                        for (int c = 0; c < 4; c++)
                            for (int u = 0; u < 2; u++)
                                for (int i = 0; i < 4; i++) {
                                    uint8_t h = 0;
                                    for (int w = 0; w < 8; w++) h |= (uint8_t)((blk[16 + 4 * w + i] >> (2 * c + u) & 1) << w);
                                    o[2368 + 128 * c + 64 * u + 4 * r + i] = h;
                                }
                }
            }
        }
}

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>

/* Software prefetch for a tile of T tokens: dot.h's switches, as the mapped kernels use them,
 * dot_prefetch for one token of a layout read in address order, dot_prefetch_multi otherwise
 * (see group_q4_k). */
#define PF_ON(T, INORDER) ((T) > 1 || !(INORDER) ? dot_prefetch_multi : dot_prefetch)

/* The same instructions as the lanes kernels, built with the same flags. */
int repack_available(void) { return gemm_vnni_available(); }

/* One Q8_0 group of 16 rows (w: its first block, nb blocks) against T <= 16 tokens; token t's 16
 * results to out[t]. A token's 8 products of a block form one dependency chain; with 4 tokens or
 * fewer there are too few chains to cover vpdpbusd's latency, so each token then runs two. */
static inline __attribute__((always_inline)) void group_q8_0(const uint8_t *w, int64_t nb, const uint8_t *act,
                                                            size_t astride, const int T, __m512 *out) {
    __m512 acc[16];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * REPACK_Q8_0_BLOCK;
        /* the block 8 ahead (544 bytes: 9 lines; past a group's end this is the next group);
         * for one token only where dot_prefetch says so, as in group_q4_k */
        for (int l = 0; l < 9 * PF_ON(T, 1); l++) _mm_prefetch((const char *)blk + 8 * REPACK_Q8_0_BLOCK + 64 * l, _MM_HINT_T0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        __m512i wv[8];
        for (int k = 0; k < 8; k++) wv[k] = _mm512_loadu_si512((const void *)(blk + 32 + 64 * k));
        const int64_t gi = b / 8, bi = b % 8;
        for (int t = 0; t < T; t++) {
            const uint8_t *g = act + astride * t + DOT_Q8_0G_GROUP * gi; /* dot.h: 8 f32 dx, 8 int32 c, codes */
            const int32_t *q = (const int32_t *)(g + 64 + 32 * bi);
            int32_t c;
            float dx;
            memcpy(&c, g + 32 + 4 * bi, 4);
            memcpy(&dx, g + 4 * bi, 4);
            __m512i s = _mm512_set1_epi32(-c);
            if (T <= 4) {
                __m512i s1 = _mm512_setzero_si512();
                for (int k = 0; k < 8; k += 2) {
                    s = _mm512_dpbusd_epi32(s, wv[k], _mm512_set1_epi32(q[k]));
                    s1 = _mm512_dpbusd_epi32(s1, wv[k + 1], _mm512_set1_epi32(q[k + 1]));
                }
                s = _mm512_add_epi32(s, s1);
            } else
                for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, wv[k], _mm512_set1_epi32(q[k]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = acc[t];
}

/* One Q4_K (Q5 0) or Q5_K (Q5 1) group of 16 rows (w: its first block, nb blocks) against T <= 8
 * DOT_ACT_Q8_K32 activation rows.
 * Per block: the 16 rows' scales widened to f32 lanes once for all tokens; per chunk c of 32
 * code bytes, 8 loads give 8 words of sub-block 2c (low nibbles) and 8 of 2c + 1 (high); per
 * token each sub-block's 8 products are one integer sum, scaled by the rows' sub-block scales.
 * The mins go in once per block and token as integers: 4 vpdpwssd, each a pair of the token's
 * sums of 32 values against the same two sub-blocks' mins of the 16 rows (widened to int16
 * pairs once for all tokens), exact in int32. */
static inline __attribute__((always_inline)) void group_q4_k(const int Q5, const uint8_t *w, int64_t nb,
                                                             const uint8_t *act, size_t astride, const int T,
                                                             __m512 *out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10);
    const size_t bbytes = Q5 ? REPACK_Q5_K_BLOCK : REPACK_Q4_K_BLOCK;
    __m512 acc[8];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bbytes;
        __m512 bs[8]; /* per token: the sum of scale x products */
        for (int t = 0; t < T; t++) bs[t] = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++) {
            /* the next block's lines, spread over its four chunks (2368 bytes: 37 lines); for
             * one token of Q4_K only where dot_prefetch says so (not on AMD): there one token's
             * block streams by in ~80 ns, too soon for a prefetch one block ahead to land, and
             * without it the hardware prefetcher alone read a decode step's experts at 82-85% of
             * a read probe against 73-77% (PERF.md, twenty-first session); with more tokens the
             * prefetch is what hides the latency. Q5_K keeps it for one token too: its blocks are
             * read in two places at once (the codes and the plane of fifth bits), which the
             * hardware prefetcher follows badly: a Q5_K_M file decoded at 57-64% of the probe
             * without it (6.8-8.2 t/s in slow phases) against 82-88% with it (10.5-11.8) */
            for (int l = 0; l < (Q5 ? 12 : 10); l++) { /* Q5_K: 2880 bytes, 45 lines */
                const int line = (Q5 ? 12 : 10) * c + l;
                if (PF_ON(T, !Q5) && line < (Q5 ? 45 : 37)) _mm_prefetch((const char *)blk + bbytes + 64 * line, _MM_HINT_T0);
            }
            __m512i lo[8], hi[8];
            const __m512i h0 = Q5 ? _mm512_loadu_si512((const void *)(blk + 2368 + 128 * c)) : m4;
            const __m512i h1 = Q5 ? _mm512_loadu_si512((const void *)(blk + 2368 + 128 * c + 64)) : m4;
            for (int k = 0; k < 8; k++) {
                const __m512i z = _mm512_loadu_si512((const void *)(blk + 320 + 512 * c + 64 * k));
                lo[k] = _mm512_and_si512(z, m4);
                /* Q4_K: the high nibbles left in place, 16 times the codes (their sums stay exact
                 * and far inside int32 and f32's 24 bits), one instruction instead of a shift and a
                 * mask; the scale of sub-block 2c + 1 is divided by 16 instead, exactly */
                hi[k] = Q5 ? _mm512_and_si512(_mm512_srli_epi16(z, 4), m4) : _mm512_andnot_si512(m4, z);
                if (Q5) { /* bit k of the high-bit units to bit 4, or-ed in: lo | (h & 0x10) */
                    const __m512i a = k < 4 ? _mm512_slli_epi16(h0, 4 - k) : k > 4 ? _mm512_srli_epi16(h0, k - 4) : h0;
                    const __m512i e = k < 4 ? _mm512_slli_epi16(h1, 4 - k) : k > 4 ? _mm512_srli_epi16(h1, k - 4) : h1;
                    lo[k] = _mm512_ternarylogic_epi32(lo[k], a, m10, 0xF8);
                    hi[k] = _mm512_ternarylogic_epi32(hi[k], e, m10, 0xF8);
                }
            }
            const __m512 sc0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 64 + 32 * c))));
            const __m512 sc1 = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 80 + 32 * c)))),
                _mm512_set1_ps(Q5 ? 1.0f : 0.0625f));
            for (int t = 0; t < T; t++) {
                const int32_t *q = (const int32_t *)(act + astride * t + 292 * b + 4 + 64 * c); /* dot.h: f32 d, codes, sums */
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                if (T <= 2) { /* two chains per sub-block: too few tokens to cover the latency */
                    __m512i s2 = _mm512_setzero_si512(), s3 = _mm512_setzero_si512();
                    for (int k = 0; k < 8; k += 2) {
                        s0 = _mm512_dpbusd_epi32(s0, lo[k], _mm512_set1_epi32(q[k]));
                        s1 = _mm512_dpbusd_epi32(s1, hi[k], _mm512_set1_epi32(q[8 + k]));
                        s2 = _mm512_dpbusd_epi32(s2, lo[k + 1], _mm512_set1_epi32(q[k + 1]));
                        s3 = _mm512_dpbusd_epi32(s3, hi[k + 1], _mm512_set1_epi32(q[8 + k + 1]));
                    }
                    s0 = _mm512_add_epi32(s0, s2);
                    s1 = _mm512_add_epi32(s1, s3);
                } else
                    for (int k = 0; k < 8; k++) {
                        s0 = _mm512_dpbusd_epi32(s0, lo[k], _mm512_set1_epi32(q[k]));
                        s1 = _mm512_dpbusd_epi32(s1, hi[k], _mm512_set1_epi32(q[8 + k]));
                    }
                bs[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc0, bs[t]);
                bs[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), sc1, bs[t]);
            }
        }
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 32)));
        __m512i mp[4]; /* lane r: row r's mins of sub-blocks 2i and 2i + 1 as int16 */
        for (int i = 0; i < 4; i++) mp[i] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 192 + 32 * i)));
        for (int t = 0; t < T; t++) {
            const uint8_t *a = act + astride * t + 292 * b;
            const int32_t *ps = (const int32_t *)(a + 260); /* the token's sums of 32, in pairs */
            float dx;
            memcpy(&dx, a, 4);
            __m512i mi = _mm512_dpwssd_epi32(_mm512_setzero_si512(), mp[0], _mm512_set1_epi32(ps[0]));
            for (int i = 1; i < 4; i++) mi = _mm512_dpwssd_epi32(mi, mp[i], _mm512_set1_epi32(ps[i]));
            const __m512 x = _mm512_set1_ps(dx);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dv, x), bs[t], acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(mv, x), _mm512_cvtepi32_ps(mi), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = acc[t];
}

/* One Q6_K group of 16 rows against T <= 8 DOT_ACT_Q8_K6 activation rows. Per pair of sub-blocks
 * of 16 values: their 8 words of codes assembled from one load of their 4 ql and 2 qh units (3
 * or 4 instructions a word, for all tokens; a pair at a time loads each unit once, 2-4% faster
 * than a sub-block at a time); per token and sub-block one integer sum started at the token's
 * -32 x (sum of the sub-block's activation codes), which takes out the codes' offset exactly,
 * then 4 vpdpbusd, and the rows' sub-block scales applied in f32. */
static inline __attribute__((always_inline)) void group_q6_k(const uint8_t *w, int64_t nb, const uint8_t *act,
                                                             size_t astride, const int T, __m512 *out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[8];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * REPACK_Q6_K_BLOCK;
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        __m512 bs[8];
        for (int t = 0; t < T; t++) bs[t] = _mm512_setzero_ps();
        for (int p = 0; p < 8; p++) { /* sub-blocks 2p and 2p + 1: one load of their units */
            /* the next block's lines, spread over its pairs (3360 bytes: 53 lines); for one
             * token only where dot_prefetch says so, as in group_q4_k */
            for (int l = 0; l < 7; l++) {
                const int line = 7 * p + l;
                if (PF_ON(T, 1) && line < 53) _mm_prefetch((const char *)blk + REPACK_Q6_K_BLOCK + 64 * line, _MM_HINT_T0);
            }
            const uint8_t *u = blk + 288 + 384 * p;
            const __m512i h0 = _mm512_loadu_si512((const void *)(u + 256)), h1 = _mm512_loadu_si512((const void *)(u + 320));
            __m512i q[8]; /* words 0-3 of sub-block 2p, then of 2p + 1 */
            for (int k = 0; k < 4; k++) {
                const __m512i z = _mm512_loadu_si512((const void *)(u + 64 * k)), h = k < 2 ? h0 : h1;
                /* the word's two high bits: bits 2f, 2f + 1 of h, f = k % 2 (2p) or 2 + k % 2 (2p + 1) */
                const __m512i hs0 = k % 2 ? _mm512_slli_epi16(h, 2) : _mm512_slli_epi16(h, 4);
                const __m512i hs1 = k % 2 ? _mm512_srli_epi16(h, 2) : h;
                q[k] = _mm512_ternarylogic_epi32(_mm512_and_si512(z, m4), hs0, m30, 0xF8); /* lo | (hs & 0x30) */
                q[4 + k] = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(z, 4), m4), hs1, m30, 0xF8);
            }
            const __m512 sc0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 32 + 32 * p))));
            const __m512 sc1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 48 + 32 * p))));
            for (int t = 0; t < T; t++) {
                const uint8_t *a = act + astride * t + 324 * b; /* dot.h: f32 d, 256 codes, 16 int32 offsets */
                const int32_t *x = (const int32_t *)(a + 4 + 32 * p);
                const int32_t *c = (const int32_t *)(a + 260 + 8 * p);
                __m512i s0 = _mm512_set1_epi32(c[0]), s1 = _mm512_set1_epi32(c[1]);
                if (T <= 2) { /* four chains: too few tokens to cover the latency */
                    __m512i s2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], _mm512_set1_epi32(x[1]));
                    __m512i s3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[5], _mm512_set1_epi32(x[5]));
                    s0 = _mm512_dpbusd_epi32(s0, q[0], _mm512_set1_epi32(x[0]));
                    s1 = _mm512_dpbusd_epi32(s1, q[4], _mm512_set1_epi32(x[4]));
                    s2 = _mm512_dpbusd_epi32(s2, q[3], _mm512_set1_epi32(x[3]));
                    s3 = _mm512_dpbusd_epi32(s3, q[7], _mm512_set1_epi32(x[7]));
                    s0 = _mm512_dpbusd_epi32(s0, q[2], _mm512_set1_epi32(x[2]));
                    s1 = _mm512_dpbusd_epi32(s1, q[6], _mm512_set1_epi32(x[6]));
                    s0 = _mm512_add_epi32(s0, s2);
                    s1 = _mm512_add_epi32(s1, s3);
                } else
                    for (int k = 0; k < 4; k++) {
                        s0 = _mm512_dpbusd_epi32(s0, q[k], _mm512_set1_epi32(x[k]));
                        s1 = _mm512_dpbusd_epi32(s1, q[4 + k], _mm512_set1_epi32(x[4 + k]));
                    }
                bs[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc0, bs[t]);
                bs[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), sc1, bs[t]);
            }
        }
        for (int t = 0; t < T; t++) {
            float dx;
            memcpy(&dx, act + astride * t + 324 * b, 4);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dv, _mm512_set1_ps(dx)), bs[t], acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = acc[t];
}

/* One group of 16 rows against n tokens (n <= 16 for Q8_0, 8 for the K types), one function per
 * type: each keeps its own switch over n, so the four types' code does not share one large
 * function (where the Q4_K one-token case ran ~5% slower in decoding, PERF.md twentieth session). */
typedef void (*tile_fn)(const uint8_t *w, int64_t nb, const uint8_t *a, size_t astride, int n, __m512 *o);
#define CASES_1_8(C) C(1) C(2) C(3) C(4) C(5) C(6) C(7) C(8)
#define TILE_FN(NAME, CASES)                                                                                   \
    static __attribute__((noinline)) void NAME(const uint8_t *w, int64_t nb, const uint8_t *a, size_t astride, \
                                               int n, __m512 *o) {                                            \
        switch (n) { CASES }                                                                                   \
    }
#define Q8_0_T(N) \
    case N: group_q8_0(w, nb, a, astride, N, o); break;
#define Q4_K_T(N) \
    case N: group_q4_k(0, w, nb, a, astride, N, o); break;
#define Q5_K_T(N) \
    case N: group_q4_k(1, w, nb, a, astride, N, o); break;
#define Q6_K_T(N) \
    case N: group_q6_k(w, nb, a, astride, N, o); break;
TILE_FN(tile_q8_0, CASES_1_8(Q8_0_T) Q8_0_T(9) Q8_0_T(10) Q8_0_T(11) Q8_0_T(12) Q8_0_T(13) Q8_0_T(14) Q8_0_T(15) Q8_0_T(16))
TILE_FN(tile_q4_k, CASES_1_8(Q4_K_T))
TILE_FN(tile_q5_k, CASES_1_8(Q5_K_T))
TILE_FN(tile_q6_k, CASES_1_8(Q6_K_T))
#undef Q8_0_T
#undef Q4_K_T
#undef Q5_K_T
#undef Q6_K_T
#undef TILE_FN
#undef CASES_1_8

void repack_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T, float *y,
                 int64_t ldy, float *const *yrows) {
    (void)dot_select(); /* sets dot_prefetch (PF_ON) on the first call; after it, one load */
    const int q8 = W->dtype == QN_Q8_0, q6 = W->dtype == QN_Q6_K, q5 = W->dtype == QN_Q5_K, tmax = q8 ? 16 : 8;
    const tile_fn tile = q8 ? tile_q8_0 : q6 ? tile_q6_k : q5 ? tile_q5_k : tile_q4_k;
    const int64_t nb = W->cols / (q8 ? 32 : 256);
    const size_t gbytes = group_bytes(W);
    for (int64_t g = r0 / REPACK_ROWS; g < (r1 + REPACK_ROWS - 1) / REPACK_ROWS; g++) {
        const uint8_t *w = W->rp + (size_t)g * gbytes;
        const int64_t r = REPACK_ROWS * g;
        for (int t0 = 0; t0 < T; t0 += tmax) { /* more tokens: the group's weights stay in cache */
            const int n = T - t0 < tmax ? T - t0 : tmax;
            const uint8_t *a = act + astride * t0;
            __m512 o[16]; /* the tile writes its n (not zeroed: a 1 KB rep stos per call was 2% of a batched step) */
            tile(w, nb, a, astride, n, o);
            for (int t = 0; t < n; t++)
                _mm512_storeu_ps(yrows ? &yrows[t0 + t][r] : &y[(int64_t)(t0 + t) * ldy + r], o[t]);
        }
    }
}

#else /* not built for AVX-512 VNNI: repack_available() says so, and the kernel is never called */
int repack_available(void) { return 0; }
void repack_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T, float *y,
                 int64_t ldy, float *const *yrows) {}
#endif
