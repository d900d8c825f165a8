/* ops.c - reference CPU implementations of the operations in ops.h. */
#include "ops.h"

#include <assert.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/actq.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/gemm_vnni.h"
#include "kernels/cpu/gemm_float.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/repack.h"

void op_set_threads(int n) {
    if (n > 0) omp_set_num_threads(n);
}

int op_get_threads(void) { return omp_get_max_threads(); }

void op_convert_to_f32(int dtype, const void *src, float *dst, int64_t n) {
    switch (dtype) {
    case QN_F32: memcpy(dst, src, (size_t)n * 4); break;
    case QN_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qn_bf16_to_f32(s[i]);
        break;
    }
    case QN_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qn_f16_to_f32(s[i]);
        break;
    }
    default:
        /* quantized rows: the loader admits only types the dequantizer knows */
        if (quant_dequantize_row(dtype, src, dst, n) != 0) abort();
    }
}

void op_row_to_f32(const qn_tensor *W, int64_t r, float *dst) {
    op_convert_to_f32(W->dtype, qn_tensor_row(W, r), dst, W->cols);
}

float op_dot_f32(const float *a, const float *b, int64_t n) { return qn_dot_f32(a, b, n); }

/* A per-thread buffer for one widened weight row; it grows to the widest matrix once
 * and is reused afterwards, so the forward pass allocates nothing per token. */
static _Thread_local float *tl_row;
static _Thread_local int64_t tl_cap;

static float *thread_row(int64_t n) {
    if (n > tl_cap) {
        free(tl_row);
        tl_row = malloc((size_t)n * sizeof(float));
        if (!tl_row) abort();
        tl_cap = n;
    }
    return tl_row;
}

void op_matmul_rows_ref(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                        int64_t ldy) {
    int64_t n = W->cols;
    int64_t work = (r1 - r0) * n * (int64_t)T;
#pragma omp parallel if (work > 32768)
    {
        float *row = W->dtype == QN_F32 && !W->row_map ? NULL : thread_row(n);
#pragma omp for schedule(static)
        for (int64_t r = r0; r < r1; r++) {
            const float *w;
            if (row) { op_row_to_f32(W, r, row); w = row; }
            else w = (const float *)((const char *)W->data + (size_t)r * W->row_bytes);
            for (int t = 0; t < T; t++) y[(int64_t)t * ldy + r] = op_dot_f32(w, x + (int64_t)t * ldx, n);
        }
    }
}

void op_matmul_to_rows_ref(const qn_tensor *W, const float *x, int T, float *const *y) {
    int64_t n = W->cols;
    int64_t work = W->rows * n * (int64_t)T;
#pragma omp parallel if (work > 32768)
    {
        float *row = W->dtype == QN_F32 && !W->row_map ? NULL : thread_row(n);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < W->rows; r++) {
            const float *w;
            if (row) { op_row_to_f32(W, r, row); w = row; }
            else w = (const float *)((const char *)W->data + (size_t)r * W->row_bytes);
            for (int t = 0; t < T; t++) y[t][r] = op_dot_f32(w, x + (int64_t)t * n, n);
        }
    }
}

void op_rmsnorm1p(const float *x, const float *w, float *y, int n, float eps) {
    double ss = 0; /* fp64 accumulation; the result is then rounded like the fp32 reference */
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * inv * (1.0f + w[i]);
}

/* ---------------------------------------------------------------- fast path */

static int g_reference; /* QNEXT_KERNELS=reference: every product on the plain C reference path */

/* Activations quantized for the weight type, in a buffer of the calling thread: the
 * worker threads of one product only read it, and two sessions driven from two threads
 * never share one. It grows to the largest batch once. */
static _Thread_local uint8_t *tl_act;
static _Thread_local size_t tl_act_cap;

static const uint8_t *prepare_act(int at, const float *x, int T, int64_t ldx, int64_t n, size_t *stride) {
    if (at == QUANT_F32) { *stride = (size_t)ldx * sizeof(float); return (const uint8_t *)x; }
    size_t rb = dot_act_row_bytes(at, n);
    if (rb * T > tl_act_cap) {
        free(tl_act);
        tl_act = malloc(rb * T);
        if (!tl_act) abort();
        tl_act_cap = rb * T;
    }
    /* tl_act is thread-local: the worker threads of the loop below must write through the
     * calling thread's pointer, not their own (NULL) copy */
    uint8_t *act = tl_act;
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++) actq_quantize_row(at, x + (int64_t)t * ldx, act + rb * t, n);
    *stride = rb;
    return act;
}

static const dot_kernels *g_kern;

/* Weights repacked at load (repack.h) go through their own kernel, whatever the number of
 * tokens: the copy replaces the mapped rows for every product. */
static int use_repack(const qn_tensor *W) { return W->rp && repack_available(); }

/* The activation type of a product: a repacked matrix takes its kernel's, the many-token paths
 * (ap) dot_act_type's, the dot kernels their set's (dot.h: Q4_K and Q5_K may want theirs
 * reordered, Q8_0, MXFP4 and IQ4_NL regrouped, and Q8_0 interleaved where T > 1 gives the rows
 * to the multi-row kernel). */
static int act_type_for(const qn_tensor *W, const void *ap, int T) {
    if (use_repack(W)) return repack_act_type(W);
    return ap ? dot_act_type(W->dtype) : dot_act_type_rows(g_kern, W->dtype, T);
}

static dot_fn kernel_for(const qn_tensor *W) {
    if (!g_kern) {
        const char *e = getenv("QNEXT_KERNELS");
        g_reference = e && !strcmp(e, "reference");
        g_kern = dot_select();
    }
    if (g_reference) return NULL;
    return dot_for_type(g_kern, W->dtype);
}

void op_silu_mul(float *a, const float *b, int64_t n) {
    qn_tensor t = {.dtype = QN_F32};
    const actq_kernels *k = kernel_for(&t) ? actq_select() : NULL; /* none on the reference path */
    if (k) { k->silu_mul(a, b, n); return; }
    for (int64_t i = 0; i < n; i++) a[i] = qn_silu(a[i]) * (b ? b[i] : 1.0f);
}

const char *op_kernel_name(void) {
    if (!g_kern) { qn_tensor t = {.dtype = QN_F32}; kernel_for(&t); }
    return g_reference ? "reference" : g_kern->name;
}

/* Integer tiles (gemm_amx_q8.c) for Q8_0 weights against 2..16 tokens, instead of the vector
 * kernels, whose cost grows with every token (a batched decode step gives each expert ~5
 * tokens); for Q4_K weights against 4..16 and Q6_K against 9..16 (instead of the vector
 * kernels, or of widening to bf16 at 16). Below that the K-quant codes cost more to unpack
 * and transpose than the vector kernels spend on the products. An expert layer from memory,
 * tiles against vector kernels (medians, ms; PERF.md): Q4_K (paired sub-blocks) at 3 tokens
 * 3.96 / 3.68, at 4 5.05 / 5.51, at 16 7.5 / 17.2; Q6_K at 7 7.8 / 6.9, at 8 even, at 10
 * 7.8 / 9.8, at 16 9.8 / 17.9. QNEXT_AMXI_MIN sets the lower bound of all three (an
 * experiment switch; a bound above any token count, such as 100000, turns them and the
 * VNNI lanes below off). */
typedef struct {
    size_t (*packed_bytes)(int64_t cols, int T);
    void (*pack)(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
    void (*rows)(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y, int64_t ldy,
                 float *const *yrows);
    int max_t; /* tokens one packing holds: 16 for the tiles, 0 (any) for the VNNI lanes */
} amxi_path;

static const amxi_path amxi_q8_0 = {gemm_amxq8_packed_bytes, gemm_amxq8_pack, gemm_amxq8_rows, 16};
static const amxi_path amxi_q4_k = {gemm_amxq4k_packed_bytes, gemm_amxq4k_pack, gemm_amxq4k_rows, 16};
static const amxi_path amxi_q6_k = {gemm_amxq4k_packed_bytes, gemm_amxq6k_pack, gemm_amxq6k_rows, 16};
/* Without AMX (AMD Zen 4, Intel before Sapphire Rapids): the tokens in the lanes of VNNI
 * vectors (gemm_vnni.c): Q4_K, Q5_K and Q8_0 from 12 tokens, Q6_K from 16 (prompts, the experts
 * of a prompt, the dense products of a batched step). On an AMD EPYC (2 cores, PERF.md fifteenth
 * session), 512 x 2048 from memory, medians of 300 products, us, lanes against the vector
 * kernels: Q4_K at 8 tokens 72 / 67, at 12 97 / 93, at 16 101 / 125, at 32 173 / 252; Q6_K at
 * 12 120 / 97, at 16 116 / 130, at 32 195 / 256; Q8_0 at 8 85 / 76, at 12 114 / 115, at 16
 * 117 / 144, at 32 190 / 283. Below that the vector kernels keep the products. */
static const amxi_path vnni_q4_k = {gemm_vnni_packed_bytes, gemm_vnni_pack, gemm_vnniq4k_rows, 0};
static const amxi_path vnni_q6_k = {gemm_vnni_packed_bytes, gemm_vnni_pack, gemm_vnniq6k_rows, 0};
static const amxi_path vnni_q8_0 = {gemm_vnni_packed_bytes, gemm_vnni_pack_q8, gemm_vnniq8_rows, 0};
static const amxi_path vnni_q5_k = {gemm_vnni_packed_bytes, gemm_vnni_pack, gemm_vnniq5k_rows, 0};

static const amxi_path *use_amxi(const qn_tensor *W, int T) {
    static int lo = -1;
    if (lo < 0) {
        const char *e = getenv("QNEXT_AMXI_MIN");
        lo = e ? atoi(e) : 0;
        if (lo < 0) lo = 0;
    }
    if (T < lo) return NULL;
    if (!gemm_amxq8_available()) { /* any number of tokens, prompts included */
        if (!gemm_vnni_available() || g_kern != &dot_avx512 || W->cols % 256) return NULL;
        if (W->dtype == QN_Q4_K && T >= (lo ? lo : 12)) return &vnni_q4_k;
        if (W->dtype == QN_Q5_K && T >= (lo ? lo : 12)) return &vnni_q5_k;
        if (W->dtype == QN_Q6_K && T >= (lo ? lo : 16)) return &vnni_q6_k;
        if (W->dtype == QN_Q8_0 && T >= (lo ? lo : 12)) return &vnni_q8_0;
        return NULL;
    }
    /* one token in two activation passes: the vector kernels take its 2 rows faster than the tiles
     * (bench-a3b with 12 layers, Q8_0, 16 threads of the device tool's Xeon: tg64 71-75 against
     * 55-58 t/s; 80-85 in one pass) */
    if (T > 16 || (T <= 2 && W->act2)) return NULL;
    if (W->dtype == QN_Q8_0 && W->cols % 32 == 0 && T >= 2) return &amxi_q8_0;
    if (W->dtype == QN_Q4_K && W->cols % 256 == 0 && T >= (lo ? lo : 4)) return &amxi_q4_k;
    if (W->dtype == QN_Q6_K && W->cols % 256 == 0 && T >= (lo ? lo : 9)) return &amxi_q6_k;
    return NULL;
}

/* bf16 tiles (gemm_amx.c) pay off from 16 tokens up, where no integer tiles take the product
 * (above 16 tokens, or a type without them); by default only for quantized weights. */
static int wants_two_pass(const qn_tensor *W);

static int use_amx(const qn_tensor *W, int T) {
    /* the bf16 tiles round the weights too, which a second activation pass cannot mend */
    if (T < 16 || use_amxi(W, T) || wants_two_pass(W)) return 0;
    int mode = gemm_amx_mode();
    int quantized = W->dtype != QN_F32 && W->dtype != QN_F16 && W->dtype != QN_BF16;
    return mode == 2 || (mode == 1 && quantized);
}

/* Two activation passes on CPUs with AMX: more than 16 rows go to the integer tiles in groups of
 * 16 (amxi_product), rather than to the bf16 tiles, which round the weights. Only op_matmul_rows
 * and op_matmul_to_rows take groups; op_matmul_multi's jobs keep to 16. */
static const amxi_path *use_amxi_groups(const qn_tensor *W, int T) {
    if (T <= 16 || !W->act2 || !gemm_amxq8_available()) return NULL;
    return use_amxi(W, 16);
}

static _Thread_local uint8_t *tl_pack;
static _Thread_local size_t tl_pack_cap;

static uint8_t *pack_buffer(size_t need) {
    if (need > tl_pack_cap) {
        free(tl_pack);
        tl_pack = aligned_alloc(64, (need + 63) & ~(size_t)63);
        if (!tl_pack) abort();
        tl_pack_cap = need;
    }
    return tl_pack;
}

/* ---------------------------------------------------------------- chunk scheduling */

/* Chunks 0..n-1 of a product, handed to the threads of a parallel region. Each thread starts on
 * its own contiguous share and takes it in order, as a static split would (so each streams its
 * weight rows front to back and the prefetchers keep up); a thread that runs out takes chunks
 * from the far end of another thread's share. Why: the two vCPUs of this project's machine do
 * not run equally fast (one is ~10-20% slower, whichever thread runs there), so with a static
 * split the faster thread waited at every join of a decode step. Which thread computes a chunk
 * does not change its result. A share is one atomic word: next chunk in the low half, end in
 * the high half. */
#define SCHED_MAX_THREADS 256
typedef struct {
    _Alignas(64) _Atomic uint64_t share;
} sched_share;

typedef struct {
    sched_share s[SCHED_MAX_THREADS];
    int n_shares;
} chunk_sched;

/* Shares of n chunks for the team about to start (omp_get_max_threads() threads; past
 * SCHED_MAX_THREADS, the further threads only take from the others). cs lives on the caller's
 * stack for the one product. */
static void sched_init(chunk_sched *cs, int n) {
    int nth = omp_get_max_threads();
    if (nth > SCHED_MAX_THREADS) nth = SCHED_MAX_THREADS;
    for (int i = 0; i < nth; i++) {
        uint64_t a = (uint64_t)n * i / nth, z = (uint64_t)n * (i + 1) / nth;
        atomic_store_explicit(&cs->s[i].share, a | z << 32, memory_order_relaxed);
    }
    cs->n_shares = nth;
}

/* The next chunk for thread tid, or -1 when none is left anywhere. */
static int sched_next(chunk_sched *cs, int tid) {
    if (tid < cs->n_shares) {
        _Atomic uint64_t *w = &cs->s[tid].share;
        uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
        while ((uint32_t)v < (uint32_t)(v >> 32))
            if (atomic_compare_exchange_weak_explicit(w, &v, v + 1, memory_order_relaxed, memory_order_relaxed))
                return (int)(uint32_t)v;
    }
    for (int k = 1; k <= cs->n_shares; k++) {
        _Atomic uint64_t *w = &cs->s[(tid + k) % cs->n_shares].share;
        uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
        while ((uint32_t)v < (uint32_t)(v >> 32))
            if (atomic_compare_exchange_weak_explicit(w, &v, v - ((uint64_t)1 << 32), memory_order_relaxed,
                                                      memory_order_relaxed))
                return (int)(v >> 32) - 1;
    }
    return -1;
}

/* Rows [r0, r1) of an integer-tile product, split over the threads in chunks of whole blocks
 * of 16 rows (chunk_sched). The tiles take up to 16 tokens; more (two activation passes on CPUs
 * with AMX: use_amxi_groups) go in groups of 16, each packed once, every group against each
 * block of 16 weight rows while the block is in cache. */
static void amxi_product(const amxi_path *ap, const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act,
                         size_t astride, int T, float *y, int64_t ldy, float *const *yrows) {
    const int ng = ap->max_t ? (T + 15) / 16 : 1, tl = T - 16 * (ng - 1); /* groups, tokens of the last */
    size_t pb = ap->packed_bytes(W->cols, ng > 1 ? 16 : T);
    if (ng > 1 && ap->packed_bytes(W->cols, tl) > pb) pb = ap->packed_bytes(W->cols, tl);
    pb = (pb + 63) & ~(size_t)63;
    uint8_t *pk = pack_buffer(pb * ng);
    for (int g = 0; g < ng; g++) ap->pack(act + astride * 16 * g, astride, g < ng - 1 ? 16 : tl, W->cols, pk + pb * g);
    const int64_t nrb = (r1 - r0 + 15) / 16;
    int64_t nchunk = nrb < 8 * omp_get_max_threads() ? nrb : 8 * omp_get_max_threads();
    chunk_sched cs;
    sched_init(&cs, (int)nchunk);
#pragma omp parallel if (nrb > 1)
    for (int ch; (ch = sched_next(&cs, omp_get_thread_num())) >= 0;) {
        int64_t a = r0 + 16 * (nrb * ch / nchunk), z = r0 + 16 * (nrb * (ch + 1) / nchunk);
        if (z > r1) z = r1;
        if (ng == 1) {
            if (a < z) ap->rows(W, a, z, pk, T, y, ldy, yrows);
            continue;
        }
        for (int64_t rb = a; rb < z; rb += 16) {
            const int64_t re = z - rb < 16 ? z : rb + 16;
            for (int g = 0; g < ng; g++)
                ap->rows(W, rb, re, pk + pb * g, g < ng - 1 ? 16 : tl, y ? y + (int64_t)16 * g * ldy : NULL, ldy,
                         yrows ? yrows + 16 * g : NULL);
        }
    }
}

/* Rows [r0, r1) (multiples of 16) of a repacked product, split over the threads in chunks of
 * whole groups of 16 rows (chunk_sched). */
static void repack_product(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T,
                           float *y, int64_t ldy, float *const *yrows) {
    const int64_t ng = (r1 - r0) / REPACK_ROWS;
    int64_t nchunk = ng < 8 * omp_get_max_threads() ? ng : 8 * omp_get_max_threads();
    chunk_sched cs;
    sched_init(&cs, (int)nchunk);
#pragma omp parallel if (ng > 1 && (r1 - r0) * W->cols * (int64_t)T > 32768)
    for (int ch; (ch = sched_next(&cs, omp_get_thread_num())) >= 0;) {
        const int64_t a = r0 + REPACK_ROWS * (ng * ch / nchunk), z = r0 + REPACK_ROWS * (ng * (ch + 1) / nchunk);
        if (a < z) repack_rows(W, a, z, act, astride, T, y, ldy, yrows);
    }
}

/* Weight row w against all T prepared activation rows, result t to o[t]. The multi-row
 * kernel, when there is one, unpacks each weight block once for up to DOTM_MAX_T rows (batched
 * decode, the few tokens of an expert); the rest go through the single-row kernel. */
static inline void row_dot_all(const char *w, const uint8_t *act, size_t astride, int T, int64_t n, dot_fn dot,
                               dotm_fn dotm, float *o) {
    int t = 0;
    for (; dotm && t < T; t += DOTM_MAX_T) dotm(w, act + astride * t, astride, T - t < DOTM_MAX_T ? T - t : DOTM_MAX_T, n, o + t);
    for (; t < T; t++) o[t] = dot(w, act + astride * t, n);
}

/* Rows [ra, rz) against all T activation rows: output t of row r goes to y[t * ldy + r], or to
 * yrows[t][r] when yrows is given. The results of up to 16 rows are kept and then written token
 * by token, up to 16 consecutive floats each: row by row, each row's T stores would go to lines
 * ldy floats apart, all in one set of the L1 cache when ldy is a multiple of 1 KiB (PERF.md,
 * eighteenth session). More than ROWS_KEEP_T tokens go ROWS_KEEP_T at a time. */
#define ROWS_KEEP_T 64
static void rows_dot_all(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *act, size_t astride, int T,
                         dot_fn dot, dotm_fn dotm, float *y, int64_t ldy, float *const *yrows) {
    float o[16 * ROWS_KEEP_T];
    for (int64_t r0 = ra; r0 < rz; r0 += 16) {
        const int nr = rz - r0 < 16 ? (int)(rz - r0) : 16;
        for (int t0 = 0; t0 < T; t0 += ROWS_KEEP_T) {
            const int nt = T - t0 < ROWS_KEEP_T ? T - t0 : ROWS_KEEP_T;
            for (int k = 0; k < nr; k++)
                row_dot_all((const char *)qn_tensor_row(W, r0 + k), act + astride * t0, astride, nt, W->cols, dot, dotm,
                            o + k * nt);
            for (int t = 0; t < nt; t++) {
                float *dst = yrows ? &yrows[t0 + t][r0] : &y[(int64_t)(t0 + t) * ldy + r0];
                for (int k = 0; k < nr; k++) dst[k] = o[k * nt + t];
            }
        }
    }
}

/* One-token products with a two-row kernel (dot2_fn): row r0 + p goes with row r0 + h + p, h =
 * half the rows, so that a thread taking pairs [pa, pz) in order reads two long streams of
 * weights at once, which keep more lines in flight than one (docs/PERF.md, seventeenth session).
 * Pair p = h (an odd row count) is the last row alone, as is a pair that a row map has put
 * within 4 KB (alternating inside one page loses the hardware prefetchers). Output r goes to
 * out[r]; the results are the one-row kernel's, bit for bit. */
static void rows_dot_pairs(const qn_tensor *W, int64_t r0, int64_t h, int64_t pa, int64_t pz, const uint8_t *act,
                           dot_fn dot, dot2_fn dot2, float *out) {
    for (int64_t p = pa; p < pz; p++) {
        if (p == h) { /* the odd last row */
            out[r0 + 2 * h] = dot(qn_tensor_row(W, r0 + 2 * h), act, W->cols);
            continue;
        }
        const uint8_t *w0 = qn_tensor_row(W, r0 + p), *w1 = qn_tensor_row(W, r0 + h + p);
        if (w1 - w0 >= 4096 || w0 - w1 >= 4096) {
            float o[2];
            dot2(w0, w1, act, W->cols, o);
            out[r0 + p] = o[0];
            out[r0 + h + p] = o[1];
        } else {
            out[r0 + p] = dot(w0, act, W->cols);
            out[r0 + h + p] = dot(w1, act, W->cols);
        }
    }
}

/* Rows [r0, r1) against the T prepared activation rows on the dot kernels. Each row is read
 * once from memory and dotted with every activation row while it sits in L1. The rows go to
 * the threads in chunks (sixteen per thread, of at least 16 rows; see chunk_sched); one token
 * with a two-row kernel takes them in chunks of pairs (rows_dot_pairs). */
static void dot_rows(const qn_tensor *W, int64_t r0, int64_t r1, const uint8_t *act, size_t astride, int T,
                     dot_fn dot, float *y, int64_t ldy, float *const *yrows) {
    const int64_t work = (r1 - r0) * W->cols * (int64_t)T;
    const dotm_fn dotm = T > 1 ? dotm_for_type(g_kern, W->dtype) : NULL;
    const dot2_fn dot2 = T == 1 ? dot2_for_type(g_kern, W->dtype) : NULL;
    /* with dot2 the chunks are of pairs (rows_dot_pairs): (r1 - r0 + 1) / 2 of them */
    const int64_t units = dot2 ? (r1 - r0 + 1) / 2 : r1 - r0, h = (r1 - r0) / 2;
    int64_t nchunk = (units + 15) / 16;
    if (nchunk > 16 * omp_get_max_threads()) nchunk = 16 * omp_get_max_threads();
    chunk_sched cs;
    sched_init(&cs, (int)nchunk);
#pragma omp parallel if (work > 32768)
    for (int ch; (ch = sched_next(&cs, omp_get_thread_num())) >= 0;) {
        const int64_t a = units * ch / nchunk, z = units * (ch + 1) / nchunk;
        if (dot2) rows_dot_pairs(W, r0, h, a, z, act, dot, dot2, yrows ? yrows[0] : y);
        else
            rows_dot_all(W, r0 + a, r0 + z, act, astride, T, dot, dotm, y, ldy, yrows);
    }
}

/* ---------------------------------------------------------------- two-pass activations */

/* The integer kernels see each activation row x rounded to 8 bits per block (Q8_0 or Q8_K
 * blocks), which costs Q8_0 weights as much as their own rounding (docs/QUANT.md). With two
 * passes they see two rows instead: x's rounding q(x) and the rounding of its residual
 * q(x - q(x)), whose sum is within 1/64516 of each block's largest value (1/254 for one pass),
 * and the two results are added. The weights are read once for both (the rows ride in one
 * product of 2T tokens); the integer work doubles. */
static _Thread_local int tl_two_pass_inner; /* set while the doubled product runs */

static int wants_two_pass(const qn_tensor *W) {
    return W->act2 && W->dtype != QN_F32 && W->dtype != QN_F16 && W->dtype != QN_BF16;
}

static int two_pass(const qn_tensor *W) { return !tl_two_pass_inner && wants_two_pass(W); }

/* The activation type the product of W at T tokens quantizes to (the dispatch below, with
 * the bf16 tiles off): repack_ok says whether the repacked rows take it, groups whether the
 * integer tiles take more than 16 tokens (op_matmul_rows, not op_matmul_multi). */
static int product_act_type(const qn_tensor *W, int T, int repack_ok, int groups) {
    if (use_repack(W) && repack_ok) return repack_act_type(W);
    const amxi_path *ap = use_amxi(W, T);
    if (!ap && groups) ap = use_amxi_groups(W, T);
    return act_type_for(W, ap, T);
}

/* Rows t < T of x (stride ldx) and their residuals after rounding to activation type at:
 * x2 row t = x row t, x2 row T + t = x - q(x). */
static void two_pass_split(int at, const float *x, int T, int64_t ldx, int64_t n, float *x2) {
    const int base = dot_act_base_type(at);
    assert(quant_row_bytes(base, 256) <= 292);
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (int64_t)t * ldx;
        float *hi = x2 + (int64_t)t * n, *lo = x2 + (int64_t)(T + t) * n;
        memcpy(hi, xt, (size_t)n * sizeof(float));
        /* 256 values at a time (a Q8_K block, 8 Q8_0 blocks): the blocks round independently,
         * so this is the whole row's rounding, with the codes on the stack */
        for (int64_t i0 = 0; i0 < n; i0 += 256) {
            const int64_t m = n - i0 < 256 ? n - i0 : 256;
            uint8_t q[292];
            actq_quantize_row(base, xt + i0, q, m);
            quant_dequantize_row(base, q, lo + i0, m);
        }
        for (int64_t i = 0; i < n; i++) lo[i] = xt[i] - lo[i];
    }
}

static _Thread_local float *tl_two;
static _Thread_local size_t tl_two_cap;

static float *two_pass_buffer(size_t floats) {
    if (floats > tl_two_cap) {
        free(tl_two);
        tl_two = malloc(floats * sizeof(float));
        if (!tl_two) abort();
        tl_two_cap = floats;
    }
    return tl_two;
}

void op_matmul_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy);

/* op_matmul_rows (yrows NULL) or op_matmul_to_rows (r0 = 0, r1 = rows) in two passes, in
 * chunks of tokens whose doubled inputs and outputs fit a buffer of at most 32 MB (on CPUs with
 * AMX the integer tiles take the doubled rows in groups of 16: use_amxi_groups). */
static void two_pass_product(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx,
                             float *y, int64_t ldy, float *const *yrows) {
    const int64_t nr = r1 - r0, n = W->cols;
    int chunk = (int)((1 << 22) / (2 * (nr > n ? nr : n)));
    if (chunk > 64) chunk = 64;
    if (chunk < 8) chunk = 8;
    for (int t0 = 0; t0 < T; t0 += chunk) {
        const int nt = T - t0 < chunk ? T - t0 : chunk;
        const int repack_ok = r0 % REPACK_ROWS == 0 && r1 % REPACK_ROWS == 0; /* op_matmul_rows' test */
        float *x2 = two_pass_buffer((size_t)2 * nt * (n + nr)), *y2 = x2 + (size_t)2 * nt * n;
        two_pass_split(product_act_type(W, 2 * nt, repack_ok, 1), x + (int64_t)t0 * ldx, nt, ldx, n, x2);
        tl_two_pass_inner = 1;
        /* y2 row t holds outputs r0..r1-1: the product writes y2 - r0 + t * nr + r */
        op_matmul_rows(W, r0, r1, x2, 2 * nt, n, y2 - r0, nr);
        tl_two_pass_inner = 0;
        for (int t = 0; t < nt; t++) {
            float *dst = yrows ? yrows[t0 + t] : y + (int64_t)(t0 + t) * ldy;
            const float *a = y2 + (int64_t)t * nr, *b = y2 + (int64_t)(nt + t) * nr;
            for (int64_t r = 0; r < nr; r++) dst[r0 + r] = a[r] + b[r];
        }
    }
}

/* Weight rows are split over the threads; see dot_rows. */
void op_matmul_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy) {
    dot_fn dot = kernel_for(W);
    if (!dot) { op_matmul_rows_ref(W, r0, r1, x, T, ldx, y, ldy); return; }
    if (two_pass(W)) { two_pass_product(W, r0, r1, x, T, ldx, y, ldy, NULL); return; }
    size_t astride;
    if (use_repack(W) && r0 % REPACK_ROWS == 0 && r1 % REPACK_ROWS == 0) {
        const uint8_t *act = prepare_act(repack_act_type(W), x, T, ldx, W->cols, &astride);
        repack_product(W, r0, r1, act, astride, T, y, ldy, NULL);
        return;
    }
    if (use_amx(W, T) && gemm_amx_rows(W, r0, r1, x, T, ldx, y, ldy, NULL)) return;
    if (gemm_float_rows(W, r0, r1, x, T, ldx, y, ldy, NULL)) return;
    const amxi_path *ap = use_amxi(W, T);
    if (!ap) ap = use_amxi_groups(W, T);
    const uint8_t *act = prepare_act(act_type_for(W, ap, T), x, T, ldx, W->cols, &astride);
    if (ap) { amxi_product(ap, W, r0, r1, act, astride, T, y, ldy, NULL); return; }
    dot_rows(W, r0, r1, act, astride, T, dot, y, ldy, NULL);
}

void op_matmul_to_rows(const qn_tensor *W, const float *x, int T, float *const *y) {
    dot_fn dot = kernel_for(W);
    if (!dot) { op_matmul_to_rows_ref(W, x, T, y); return; }
    if (two_pass(W)) { two_pass_product(W, 0, W->rows, x, T, W->cols, NULL, 0, y); return; }
    size_t astride;
    if (use_repack(W)) {
        const uint8_t *act = prepare_act(repack_act_type(W), x, T, W->cols, W->cols, &astride);
        repack_product(W, 0, W->rows, act, astride, T, NULL, 0, y);
        return;
    }
    if (use_amx(W, T) && gemm_amx_rows(W, 0, W->rows, x, T, W->cols, NULL, 0, y)) return;
    if (gemm_float_rows(W, 0, W->rows, x, T, W->cols, NULL, 0, y)) return;
    const amxi_path *ap = use_amxi(W, T);
    if (!ap) ap = use_amxi_groups(W, T);
    const uint8_t *act = prepare_act(act_type_for(W, ap, T), x, T, W->cols, W->cols, &astride);
    if (ap) { amxi_product(ap, W, 0, W->rows, act, astride, T, NULL, 0, y); return; }
    dot_rows(W, 0, W->rows, act, astride, T, dot, NULL, 0, y);
}

/* Several products in one parallel region. The decode step of a MoE layer runs ~30 small
 * products (gate, up and down of each routed expert and the shared one), and a batched
 * step ~100 (each expert with the few tokens routed to it); one region over all their rows
 * avoids a fork/join per product and lets the threads split the whole layer's rows evenly
 * instead of each small product's. Jobs that take the AMX tiles or the float kernels (many
 * tokens) keep their own path. */
static _Thread_local uint8_t *tl_multi;
static _Thread_local size_t tl_multi_cap;

/* Jobs that op_matmul runs on its tile or float paths rather than the dot kernels. */
static int takes_own_path(const qn_tensor *W, int T) {
    return !use_repack(W) && (use_amx(W, T) || gemm_float_takes(W, T));
}

static int64_t job_ldy(const op_job *jb) { return jb->ldy ? jb->ldy : jb->W->rows; }

static _Thread_local float *tl_two_multi;
static _Thread_local size_t tl_two_multi_cap;

/* op_matmul_multi in two passes: each job of up to 16 tokens becomes one of twice the tokens
 * (its rows, then their residuals), all run as one op_matmul_multi, and each job's two halves
 * are added; a job of more tokens goes alone through op_matmul_rows, which does its passes in
 * chunks. Jobs sharing an input share its split; the splits of a call run in one parallel
 * region (a decode step's MoE layer has ~10 inputs, each split taking a few microseconds). */
static void two_pass_multi(const op_job *jobs, int n) {
    op_job dj[OP_MULTI_MAX];
    int src[OP_MULTI_MAX], split_at[OP_MULTI_MAX], split_job[OP_MULTI_MAX], m = 0, ns = 0;
    size_t need = 0;
    for (int i = 0; i < n; i++) {
        const op_job *jb = &jobs[i];
        if (!wants_two_pass(jb->W) || jb->T > 16) continue;
        need += (size_t)2 * jb->T * (jb->W->cols + jb->W->rows);
    }
    if (need > tl_two_multi_cap) {
        free(tl_two_multi);
        if (!(tl_two_multi = malloc(need * sizeof(float)))) abort();
        tl_two_multi_cap = need;
    }
    float *buf = tl_two_multi;
    for (int i = 0; i < n; i++) {
        const op_job *jb = &jobs[i];
        const qn_tensor *W = jb->W;
        if (!wants_two_pass(W)) { src[m] = -1; dj[m++] = *jb; continue; }
        if (jb->T > 16) { op_matmul_rows(W, 0, W->rows, jb->x, jb->T, W->cols, jb->y, job_ldy(jb)); continue; }
        const int at = product_act_type(W, 2 * jb->T, 1, 0);
        const op_job *prev = m && src[m - 1] >= 0 ? &jobs[src[m - 1]] : NULL;
        float *x2;
        if (prev && prev->x == jb->x && prev->T == jb->T && prev->W->cols == W->cols &&
            product_act_type(prev->W, 2 * prev->T, 1, 0) == at)
            x2 = (float *)dj[m - 1].x; /* gate and up of one expert: one split */
        else {
            x2 = buf;
            buf += (size_t)2 * jb->T * W->cols;
            split_at[ns] = at;
            split_job[ns++] = m;
        }
        float *y2 = buf;
        buf += (size_t)2 * jb->T * W->rows;
        src[m] = i;
        dj[m++] = (op_job){.W = W, .x = x2, .y = y2, .T = 2 * jb->T, .ldy = W->rows};
    }
#pragma omp parallel for schedule(dynamic, 1) if (ns > 1)
    for (int i = 0; i < ns; i++) {
        const op_job *jb = &jobs[src[split_job[i]]];
        two_pass_split(split_at[i], jb->x, jb->T, jb->W->cols, jb->W->cols, (float *)dj[split_job[i]].x);
    }
    tl_two_pass_inner = 1;
    op_matmul_multi(dj, m);
    tl_two_pass_inner = 0;
    for (int k = 0; k < m; k++) {
        if (src[k] < 0) continue;
        const op_job *jb = &jobs[src[k]];
        const int64_t rows = jb->W->rows, ldy = job_ldy(jb);
        for (int t = 0; t < jb->T; t++) {
            const float *a = dj[k].y + (int64_t)t * rows, *b = dj[k].y + (int64_t)(jb->T + t) * rows;
            float *dst = jb->y + (int64_t)t * ldy;
            for (int64_t r = 0; r < rows; r++) dst[r] = a[r] + b[r];
        }
    }
}

void op_matmul_multi(const op_job *jobs, int n) {
    int fast = 1;
    for (int i = 0; i < n && fast; i++) fast = kernel_for(jobs[i].W) != NULL;
    if (!fast) {
        for (int i = 0; i < n; i++)
            op_matmul_rows_ref(jobs[i].W, 0, jobs[i].W->rows, jobs[i].x, jobs[i].T, jobs[i].W->cols, jobs[i].y,
                               job_ldy(&jobs[i]));
        return;
    }
    if (n > OP_MULTI_MAX) abort(); /* callers pass at most 2 * (experts + 1) + 1 jobs */
    if (!tl_two_pass_inner)
        for (int i = 0; i < n; i++)
            if (wants_two_pass(jobs[i].W)) { two_pass_multi(jobs, n); return; }
    int idx[OP_MULTI_MAX], m = 0;
    for (int i = 0; i < n; i++) {
        if (takes_own_path(jobs[i].W, jobs[i].T))
            op_matmul_rows(jobs[i].W, 0, jobs[i].W->rows, jobs[i].x, jobs[i].T, jobs[i].W->cols, jobs[i].y,
                           job_ldy(&jobs[i]));
        else idx[m++] = i;
    }
    if (!m) return;

    /* Activations quantized once per distinct input: gate and up of an expert share theirs. */
    size_t need = 0, pneed = 0;
    int at_q[OP_MULTI_MAX];
    const amxi_path *apq[OP_MULTI_MAX];
    for (int q = 0; q < m; q++) {
        const op_job *jb = &jobs[idx[q]];
        const amxi_path *ap = apq[q] = use_repack(jb->W) ? NULL : use_amxi(jb->W, jb->T);
        int at = at_q[q] = act_type_for(jb->W, ap, jb->T);
        need += at == QUANT_F32 ? 0 : dot_act_row_bytes(at, jb->W->cols) * jb->T;
        if (ap) pneed += ap->packed_bytes(jb->W->cols, jb->T);
    }
    uint8_t *pbuf = pack_buffer(pneed), *pk[OP_MULTI_MAX];
    size_t poff = 0;
    if (need > tl_multi_cap) {
        free(tl_multi);
        tl_multi = malloc(need);
        if (!tl_multi) abort();
        tl_multi_cap = need;
    }
    const uint8_t *act[OP_MULTI_MAX];
    size_t astride[OP_MULTI_MAX];
    dot_fn fn[OP_MULTI_MAX];
    dotm_fn fnm[OP_MULTI_MAX];
    dot2_fn fn2[OP_MULTI_MAX];
    int64_t cost0[OP_MULTI_MAX + 1]; /* work before job q, in (weight row x activation row) units */
    size_t off = 0;
    int quant_q[OP_MULTI_MAX], pack_q[OP_MULTI_MAX], nq = 0, np = 0;
    cost0[0] = 0;
    for (int q = 0; q < m; q++) {
        const op_job *jb = &jobs[idx[q]];
        const qn_tensor *W = jb->W;
        int at = at_q[q];
        fn[q] = kernel_for(W);
        fnm[q] = jb->T > 1 ? dotm_for_type(g_kern, W->dtype) : NULL;
        const op_job *prev = q ? &jobs[idx[q - 1]] : NULL;
        if (at == QUANT_F32) {
            act[q] = (const uint8_t *)jb->x;
            astride[q] = (size_t)W->cols * sizeof(float);
        } else if (prev && prev->x == jb->x && prev->T == jb->T && prev->W->cols == W->cols && at_q[q - 1] == at) {
            act[q] = act[q - 1];
            astride[q] = astride[q - 1];
        } else {
            size_t rb = dot_act_row_bytes(at, W->cols);
            act[q] = tl_multi + off;
            astride[q] = rb;
            off += rb * jb->T;
            quant_q[nq++] = q; /* this job quantizes the input it shares with the next ones */
        }
        pk[q] = NULL;
        fn2[q] = jb->T == 1 && !apq[q] && !use_repack(W) ? dot2_for_type(g_kern, W->dtype) : NULL;
        if (apq[q]) {
            if (prev && pk[q - 1] && apq[q - 1] == apq[q] && act[q] == act[q - 1]) pk[q] = pk[q - 1];
            else {
                pk[q] = pbuf + poff;
                poff += apq[q]->packed_bytes(W->cols, jb->T);
                pack_q[np++] = q;
            }
        }
        cost0[q + 1] = cost0[q] + W->rows * (int64_t)jb->T;
    }
    const int64_t total = cost0[m];
    int64_t work = 0;
    for (int q = 0; q < m; q++) work += (cost0[q + 1] - cost0[q]) * jobs[idx[q]].W->cols;
    /* Quantizing and packing the inputs is part of the region too: in a batched step it is
     * ~100 inputs of a few rows each, which one thread alone would spend milliseconds on. */
    const int nchunk = 16 * omp_get_max_threads();
    chunk_sched cs;
    sched_init(&cs, nchunk);
#pragma omp parallel if (work > 32768)
    {
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < nq; i++) {
            const op_job *jb = &jobs[idx[quant_q[i]]];
            int at = at_q[quant_q[i]];
            for (int t = 0; t < jb->T; t++)
                actq_quantize_row(at, jb->x + (int64_t)t * jb->W->cols, (uint8_t *)act[quant_q[i]] + astride[quant_q[i]] * t,
                                  jb->W->cols);
        }
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < np; i++) {
            const int q = pack_q[i];
            apq[q]->pack(act[q], astride[q], jobs[idx[q]].T, jobs[idx[q]].W->cols, pk[q]);
        }
        /* The work goes in chunks of equal cost: chunk ch is the rows whose first unit of cost
         * falls in [c0, c1), so a row of an expert with 8 tokens weighs as much as 8 single-token
         * rows; each thread starts on an equal share of them (chunk_sched). */
        for (int ch; (ch = sched_next(&cs, omp_get_thread_num())) >= 0;) {
            int64_t c0 = total * ch / nchunk, c1 = total * (ch + 1) / nchunk;
            for (int q = 0; q < m; q++) {
                const op_job *jb = &jobs[idx[q]];
                const int64_t T = jb->T, rows = jb->W->rows, ldy = job_ldy(jb);
                if (cost0[q + 1] <= c0 || cost0[q] >= c1) continue;
                int64_t ra = c0 > cost0[q] ? (c0 - cost0[q] + T - 1) / T : 0;
                int64_t rz = (c1 - cost0[q] + T - 1) / T;
                if (rz > rows) rz = rows;
                const qn_tensor *W = jb->W;
                if (use_repack(W)) { /* groups of 16 rows, as the tiles below */
                    ra = ra & ~(int64_t)15;
                    rz = rz == rows ? rows : rz & ~(int64_t)15;
                    if (ra < rz) repack_rows(W, ra, rz, act[q], astride[q], jb->T, jb->y, ldy, NULL);
                    continue;
                }
                if (pk[q]) { /* tiles take rows 16 at a time: both ends on a multiple of 16 */
                    ra = ra & ~(int64_t)15;
                    rz = rz == rows ? rows : rz & ~(int64_t)15;
                    if (ra < rz) apq[q]->rows(W, ra, rz, pk[q], jb->T, jb->y, ldy, NULL);
                    continue;
                }
                if (fn2[q]) { /* the units are rows; pair p takes units 2p and 2p + 1 (rows_dot_pairs) */
                    const int64_t pa = c0 > cost0[q] ? (c0 - cost0[q] + 1) / 2 : 0;
                    int64_t pz = (c1 - cost0[q] + 1) / 2;
                    if (pz > (rows + 1) / 2) pz = (rows + 1) / 2;
                    rows_dot_pairs(W, 0, rows / 2, pa, pz, act[q], fn[q], fn2[q], jb->y);
                    continue;
                }
                rows_dot_all(W, ra, rz, act[q], astride[q], jb->T, fn[q], fnm[q], jb->y, ldy, NULL);
            }
        }
    }
}
