/* dot.h - row dot products of the fast CPU path, one per (weight type, activation type).
 *
 * Float weights (F32, F16, BF16) are dotted with f32 activations, widening the weights in
 * registers. Quantized weights are dotted with activations quantized per block as
 * llama.cpp does it: Q8_0 activations for Q8_0/Q4_0/IQ4_NL/MXFP4 weights, Q8_K activations
 * for the K formats and IQ4_XS; the integer products are exact and the scales are applied
 * per block.
 *
 * Each kernel exists as portable C (dot_generic.c) and, on x86-64, compiled for AVX2+FMA
 * (dot_avx2.c) and for AVX-512 with VNNI (dot_avx512.c); dot_select() picks one set at run
 * time from what the CPU supports. */
#ifndef QNEXT_DOT_H
#define QNEXT_DOT_H

#include <stddef.h>
#include <stdint.h>

/* sum over n elements of w[i] * a[i]; w is one weight row, a one prepared activation row. */
typedef float (*dot_fn)(const void *w, const void *a, int64_t n);
/* Two weight rows (w0, w1) against one activation row: out[0] and out[1] equal dot_fn's results
 * for each, bit for bit. Their blocks alternate, so a thread that pairs each row of the first
 * half of a product with its mirror in the second half reads two long streams at once, and the
 * hardware prefetchers keep more lines in flight (ops.c, rows_dot_pairs; docs/PERF.md,
 * seventeenth session). */
typedef void (*dot2_fn)(const void *w0, const void *w1, const void *a, int64_t n, float *out);

/* One weight row against T <= DOTM_MAX_T prepared activation rows (row t at a + t * astride):
 * out[t] = dot(w, a_t). Each weight block is unpacked once for all T rows, which is what
 * batched decoding (several streams, or the few tokens an expert gets in a small batch)
 * spends its time on; the result equals T calls of the single-row kernel to rounding.
 * Eight, because a 16-stream step gives each of 32 experts 3-8 tokens: with four, most of
 * them unpacked every block twice (an expert layer at 5 tokens: 7.2-8.7 ms against 8.3-10.9). */
#define DOTM_MAX_T 8
typedef void (*dotm_fn)(const void *w, const void *a, size_t astride, int T, int64_t n, float *out);

/* Q8_K activations with each block's 256 int8 values reordered, per 128, the way the low and
 * high nibbles of one 64-byte load of Q4_K or Q5_K codes come out: values 0-31, 64-95, 32-63,
 * 96-127, then the same for 128-255. The scale and the 16 sums (of 16 values each, in the
 * original order) are Q8_K's. With it a 512-bit kernel unpacks 128 codes with three
 * instructions, where activations in order need a broadcast, a masked shift and a mask per 64
 * (docs/PERF.md, fourteenth session). Not a ggml type: an id past quant.h's table. */
#define DOT_ACT_Q8_K4 100

/* Q8_0 activations regrouped per 8 blocks (256 values) for the AVX-512 VNNI Q8_0 kernels: the 8
 * scales as f32 (the f16 scales of Q8_0, widened), then 8 int32 corrections c = 128 * (sum of the
 * block's int8 values), then the 256 int8 values: 320 bytes a group, the last group zero-padded
 * when the row's block count is not a multiple of 8. A kernel adds 128 to each weight (one xor,
 * giving the unsigned operand vpdpbusd wants) and subtracts c, where the sign trick takes two
 * vpsignb per 32 values, and the scales are one aligned load where Q8_0's are eight 2-byte loads
 * at a 34-byte stride (docs/PERF.md, fifteenth session). Same int8 values and scales as Q8_0,
 * so the sums are the same integers. Not a ggml type. */
#define DOT_ACT_Q8_0G 101
#define DOT_Q8_0G_GROUP 320

/* DOT_ACT_Q8_0G with each group's 256 values interleaved by 4-byte words across its 8 blocks:
 * word k (values 4k..4k+3) of block i at byte 32k + 4i of the values, so that one 32-byte load
 * holds word k of all 8 blocks. The multi-row Q8_0 kernel of the AVX-512 set takes these: it
 * transposes each group of 8 weight blocks the same way once for all its rows, and then each
 * row's 8 vpdpbusd leave the 8 blocks' sums in the 8 lanes of one register, where blocks in
 * order need a horizontal reduction of 8 registers per row (docs/PERF.md, seventeenth
 * session). Same size, scales and corrections as DOT_ACT_Q8_0G. Not a ggml type. */
#define DOT_ACT_Q8_0I 102

/* Q8_K activations for the repacked Q6_K kernel (repack.h): per 256 values the f32 scale and the
 * 256 int8 values as in Q8_K, then, in place of Q8_K's 16 int16 sums of 16 values, the 16 sums
 * times -32 as int32 (324 bytes a block). Q6_K's codes are stored plus 32, as unsigned bytes for
 * vpdpbusd; a sub-block's integer sum started at its offset is then exactly the signed one. Not
 * a ggml type. */
#define DOT_ACT_Q8_K6 103
#define DOT_Q8_K6_BLOCK 324

/* Q8_K activations for the repacked Q4_K and Q5_K kernel (repack.h): the f32 scale and the 256
 * int8 values as in Q8_K, then, in place of Q8_K's 16 int16 sums of 16 values, the 8 sums of 32
 * (Q8_K's, added in pairs: |sum| <= 32 x 128 fits int16) and 16 zero bytes. Same size as Q8_K.
 * The kernel takes a block's mins in with 4 vpdpwssd a token, each one int32 pair of these sums
 * against two sub-blocks' mins of 16 rows, where Q8_K's sums cost 8 scalar sums, conversions,
 * broadcasts and FMAs (docs/PERF.md, twenty-first session). Not a ggml type. */
#define DOT_ACT_Q8_K32 104

typedef struct {
    const char *name;
    dot_fn f32, f16, bf16;   /* activations: f32 */
    dot_fn q8_0, q4_0;       /* activations: Q8_0 blocks */
    dot_fn q4_k, q5_k, q6_k; /* activations: Q8_K blocks (Q4_K and Q5_K: act_k4's) */
    dotm_fn m_q8_0, m_q4_k, m_q6_k, m_q5_k; /* multi-row kernels where a set has them, else NULL */
    int act_k4;              /* the activations of q4_k, q5_k, m_q4_k, m_q5_k: QUANT_Q8_K or DOT_ACT_Q8_K4 */
    int act_q8;              /* the activations of q8_0 and the set's MXFP4 and IQ4_NL kernels (multi-row
                              * versions included): QUANT_Q8_0 or DOT_ACT_Q8_0G */
    int act_q8m;             /* the activations of m_q8_0: act_q8's, or DOT_ACT_Q8_0I */
    dot2_fn d2_q4_k, d2_q5_k, d2_q6_k, d2_q8_0; /* two-row kernels where a set has them, else NULL */
} dot_kernels;
/* IQ4_NL and MXFP4 (Q8_0 activations) and IQ4_XS (Q8_K activations) are not in the sets:
 * dot_for_type returns the portable kernels for dot_generic and the AVX2 ones of
 * dot_iq4_x86.c (same results bit for bit) for the SIMD sets, except on the AVX-512 set, which
 * gets the *_avx512 kernels below (faster, equal to rounding; MXFP4 and IQ4_NL with multi-row
 * versions, on DOT_ACT_Q8_0G activations). */
#if defined(__x86_64__) && defined(__GNUC__)
float dot_iq4_nl_avx2(const void *w, const void *a, int64_t n);
float dot_mxfp4_avx2(const void *w, const void *a, int64_t n);
float dot_iq4_xs_avx2(const void *w, const void *a, int64_t n);
/* MXFP4 for the AVX-512 set (dot_x86.inc): eight blocks per step, equal to the others to rounding */
float dot_mxfp4_avx512(const void *w, const void *a, int64_t n);
/* IQ4_XS for the AVX-512 set (dot_x86.inc): vector accumulation, equal to the others to rounding */
float dot_iq4_xs_avx512(const void *w, const void *a, int64_t n);
void dotm_mxfp4_avx512(const void *w, const void *a, size_t astride, int T, int64_t n, float *out);
/* IQ4_NL for the AVX-512 set (dot_x86.inc): MXFP4's kernel with the IQ4_NL levels and f16 scales */
float dot_iq4_nl_avx512(const void *w, const void *a, int64_t n);
void dotm_iq4_nl_avx512(const void *w, const void *a, size_t astride, int T, int64_t n, float *out);
#endif

extern const dot_kernels dot_generic;
#if defined(__x86_64__) || defined(_M_X64)
extern const dot_kernels dot_avx2;
extern const dot_kernels dot_avx512;
#endif

/* The best kernel set for this CPU (QNEXT_KERNELS=generic|avx2|avx512 overrides). */
const dot_kernels *dot_select(void);
/* Whether the x86 kernels request the weight lines 4 KB ahead (set by dot_select). On the Intel
 * Xeon of the first sessions that gave decode +30% at Q8_0; on an AMD EPYC (Zen 4) with the
 * weights on huge pages it cost Q8_0 decode 9-49% (five pairs) and Q4_K_M up to 14%, the
 * hardware prefetchers doing better alone (docs/PERF.md, fifteenth session). So it is on for
 * Intel and off for AMD; QNEXT_PREFETCH=0|1 overrides. */
extern int dot_prefetch;
/* The same for the kernels of several activation rows (an expert's few tokens in a batched step):
 * on for every CPU. Each row's bytes take T times the work there, so the requests cost little
 * against it, and on the EPYC they helped: from memory, 5 tokens against a 1024 x 2048 matrix
 * took 10-25% less time (Q8_0, Q4_K; Q6_K 4-10%), and 16 streams decoded Q8_0 at 29.3-30.5 t/s
 * against 26.5-29.2 in three alternating pairs (Q4_K_M: within its spread, faster in 2 of 5;
 * docs/PERF.md, sixteenth session). QNEXT_PREFETCH=0|1 overrides this one too. */
extern int dot_prefetch_multi;
/* Activation type (a quant_type id) that weights of type wtype are dotted with on the
 * portable kernels and the many-token paths (gemm_vnni.c, gemm_amx_q8.c). */
int dot_act_type(int wtype);
/* The activation type of set k's kernels for wtype: dot_act_type's, DOT_ACT_Q8_K4 or DOT_ACT_Q8_0G. */
int dot_act_type_set(const dot_kernels *k, int wtype);
/* The same for a product with T activation rows: with T > 1 the multi-row kernel takes them
 * (dotm_for_type), which for Q8_0 may want act_q8m's. */
int dot_act_type_rows(const dot_kernels *k, int wtype, int T);
/* Bytes of a prepared activation row of n values of activation type at (0 if n does not fit). */
size_t dot_act_row_bytes(int at, int64_t n);
/* The ggml type (QUANT_Q8_0 or QUANT_Q8_K) whose blocks an activation type is made from: its
 * values are those blocks' values, only laid out otherwise; other types map to themselves. */
int dot_act_base_type(int at);
/* Quantizes n activations to at with the reference quantizers of quant.c (DOT_ACT_Q8_K4: as
 * Q8_K, then reordered; DOT_ACT_Q8_0G: as Q8_0, then regrouped); what the SIMD quantizers of
 * actq.c are held to. */
void dot_quantize_act_ref(int at, const float *x, void *dst, int64_t n);
/* Reorders a Q8_K row of n values (n % 256 == 0) in place into DOT_ACT_Q8_K4's order. */
void dot_act_reorder_k4(void *row, int64_t n);
/* Turns a Q8_K row of n values (n / 256 blocks of 292 bytes at row) into DOT_ACT_Q8_K6 in place
 * (row must have dot_act_row_bytes(DOT_ACT_Q8_K6, n) bytes). */
void dot_act_widen_k6(void *row, int64_t n);
/* Turns a Q8_K row of n values (n % 256 == 0) into DOT_ACT_Q8_K32 in place. */
void dot_act_sum32(void *row, int64_t n);
/* Turns a Q8_K row of n values in place into at when at is one of the Q8_K-based types
 * (DOT_ACT_Q8_K4, DOT_ACT_Q8_K6, DOT_ACT_Q8_K32; row must have dot_act_row_bytes(at, n) bytes);
 * any other at leaves it as it is. */
void dot_act_from_q8_k(int at, void *row, int64_t n);
/* Quantizes n activations (n % 32 == 0) to DOT_ACT_Q8_0G (il = 0) or DOT_ACT_Q8_0I (il = 1): a
 * group of 8 blocks at a time through q8_0, a Q8_0 quantizer (the reference one, or actq.c's),
 * then regrouped. */
void dot_act_quantize_q8_0g(const float *x, void *dst, int64_t n, int il, void (*q8_0)(const float *, void *, int64_t));
/* Converts a row of n values of at's base type (Q8_K for DOT_ACT_Q8_K4, Q8_0 for DOT_ACT_Q8_0G and
 * DOT_ACT_Q8_0I, else at itself) into at: what a test does to give each set the activations its kernels take. */
void dot_act_convert(int at, const void *base, void *dst, int64_t n);
/* The kernel for weights of type wtype, or NULL when there is none (the caller then takes
 * the dequantizing reference path). */
dot_fn dot_for_type(const dot_kernels *k, int wtype);
/* The multi-row kernel for weights of type wtype, or NULL (then loop over dot_for_type). */
dotm_fn dotm_for_type(const dot_kernels *k, int wtype);
/* The two-row kernel for weights of type wtype, or NULL (then one row at a time). */
dot2_fn dot2_for_type(const dot_kernels *k, int wtype);

#endif
