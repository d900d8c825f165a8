/* ops.c - reference CPU implementations of the operations in ops.h. */
#include "ops.h"

#include <omp.h>
#include <stdlib.h>

#include "kernels/cpu/actq.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/gemm_float.h"
#include "kernels/cpu/quant.h"

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
    int64_t sr = W->row_map ? W->row_map[r] : r;
    op_convert_to_f32(W->dtype, (const char *)W->data + (size_t)sr * W->row_bytes, dst, W->cols);
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

static const uint8_t *prepare_act(int wtype, const float *x, int T, int64_t ldx, int64_t n, size_t *stride) {
    int at = dot_act_type(wtype);
    if (at == QUANT_F32) { *stride = (size_t)ldx * sizeof(float); return (const uint8_t *)x; }
    size_t rb = quant_row_bytes(at, n);
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

static dot_fn kernel_for(const qn_tensor *W) {
    if (!g_kern) {
        const char *e = getenv("QNEXT_KERNELS");
        g_reference = e && !strcmp(e, "reference");
        g_kern = dot_select();
    }
    if (g_reference) return NULL;
    return dot_for_type(g_kern, W->dtype);
}

const char *op_kernel_name(void) {
    if (!g_kern) { qn_tensor t = {.dtype = QN_F32}; kernel_for(&t); }
    return g_reference ? "reference" : g_kern->name;
}

/* Tiles pay off from 16 tokens up; by default only for quantized weights (see gemm_amx.c). */
static int use_amx(const qn_tensor *W, int T) {
    if (T < 16) return 0;
    int mode = gemm_amx_mode();
    int quantized = W->dtype != QN_F32 && W->dtype != QN_F16 && W->dtype != QN_BF16;
    return mode == 2 || (mode == 1 && quantized);
}

/* Weight row r (at w) against all T prepared activation rows: output t goes to
 * y[t * ldy + r], or to yrows[t][r] when yrows is given. The multi-row kernel, when there is
 * one, unpacks each weight block once for up to DOTM_MAX_T rows (batched decode, the few
 * tokens of an expert); the rest go through the single-row kernel. */
static inline void row_dot_all(const char *w, const uint8_t *act, size_t astride, int T, int64_t n, dot_fn dot,
                               dotm_fn dotm, float *y, int64_t ldy, float *const *yrows, int64_t r) {
    float o[DOTM_MAX_T];
    int t = 0;
    for (; dotm && t < T; t += DOTM_MAX_T) {
        int nt = T - t < DOTM_MAX_T ? T - t : DOTM_MAX_T;
        dotm(w, act + astride * t, astride, nt, n, o);
        for (int i = 0; i < nt; i++) *(yrows ? &yrows[t + i][r] : &y[(int64_t)(t + i) * ldy + r]) = o[i];
    }
    for (; t < T; t++) *(yrows ? &yrows[t][r] : &y[(int64_t)t * ldy + r]) = dot(w, act + astride * t, n);
}

/* Weight rows are split evenly over the threads; each row is read once from memory and
 * dotted with every activation row while it sits in L1. */
void op_matmul_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
                    int64_t ldy) {
    dot_fn dot = kernel_for(W);
    if (!dot) { op_matmul_rows_ref(W, r0, r1, x, T, ldx, y, ldy); return; }
    if (use_amx(W, T) && gemm_amx_rows(W, r0, r1, x, T, ldx, y, ldy, NULL)) return;
    if (T >= 4 && gemm_float_rows(W, r0, r1, x, T, ldx, y, ldy, NULL)) return;
    size_t astride;
    const uint8_t *act = prepare_act(W->dtype, x, T, ldx, W->cols, &astride);
    int64_t work = (r1 - r0) * W->cols * (int64_t)T;
    const char *base = W->data;
    dotm_fn dotm = T > 1 ? dotm_for_type(g_kern, W->dtype) : NULL;
#pragma omp parallel for schedule(static) if (work > 32768)
    for (int64_t r = r0; r < r1; r++)
        row_dot_all(base + (size_t)(W->row_map ? W->row_map[r] : r) * W->row_bytes, act, astride, T, W->cols, dot,
                    dotm, y, ldy, NULL, r);
}

void op_matmul_to_rows(const qn_tensor *W, const float *x, int T, float *const *y) {
    dot_fn dot = kernel_for(W);
    if (!dot) { op_matmul_to_rows_ref(W, x, T, y); return; }
    if (use_amx(W, T) && gemm_amx_rows(W, 0, W->rows, x, T, W->cols, NULL, 0, y)) return;
    if (T >= 4 && gemm_float_rows(W, 0, W->rows, x, T, W->cols, NULL, 0, y)) return;
    size_t astride;
    const uint8_t *act = prepare_act(W->dtype, x, T, W->cols, W->cols, &astride);
    int64_t work = W->rows * W->cols * (int64_t)T;
    const char *base = W->data;
    dotm_fn dotm = T > 1 ? dotm_for_type(g_kern, W->dtype) : NULL;
#pragma omp parallel for schedule(static) if (work > 32768)
    for (int64_t r = 0; r < W->rows; r++)
        row_dot_all(base + (size_t)(W->row_map ? W->row_map[r] : r) * W->row_bytes, act, astride, T, W->cols, dot,
                    dotm, NULL, 0, y, r);
}

/* Several matrix-vector products in one parallel region: the decode step of a MoE layer
 * runs ~30 small products (gate, up and down of each routed expert and the shared one);
 * one region over all their rows avoids paying a fork/join per product. */
static _Thread_local uint8_t *tl_multi;
static _Thread_local size_t tl_multi_cap;

void op_matvec_multi(const op_job *jobs, int n) {
    int fast = 1;
    for (int i = 0; i < n && fast; i++) fast = kernel_for(jobs[i].W) != NULL;
    if (!fast) {
        for (int i = 0; i < n; i++) op_matmul_rows_ref(jobs[i].W, 0, jobs[i].W->rows, jobs[i].x, 1, jobs[i].W->cols, jobs[i].y, jobs[i].W->rows);
        return;
    }
    size_t need = 0;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        int at = dot_act_type(jobs[i].W->dtype);
        need += at == QUANT_F32 ? 0 : quant_row_bytes(at, jobs[i].W->cols);
        total += jobs[i].W->rows;
    }
    if (need > tl_multi_cap) {
        free(tl_multi);
        tl_multi = malloc(need);
        if (!tl_multi) abort();
        tl_multi_cap = need;
    }
    const uint8_t *act[64];
    dot_fn fn[64];
    int64_t start[65];
    if (n > 64) abort(); /* callers pass at most 2 * (top-k + 1) jobs */
    size_t off = 0;
    start[0] = 0;
    for (int i = 0; i < n; i++) {
        const qn_tensor *W = jobs[i].W;
        int at = dot_act_type(W->dtype);
        fn[i] = kernel_for(W);
        if (at == QUANT_F32) act[i] = (const uint8_t *)jobs[i].x;
        else {
            actq_quantize_row(at, jobs[i].x, tl_multi + off, W->cols);
            act[i] = tl_multi + off;
            off += quant_row_bytes(at, W->cols);
        }
        start[i + 1] = start[i] + W->rows;
    }
#pragma omp parallel
    {
        int j = 0;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < total; g++) {
            while (g >= start[j + 1]) j++;
            while (g < start[j]) j--;
            const qn_tensor *W = jobs[j].W;
            int64_t r = g - start[j];
            const char *w = (const char *)W->data + (size_t)(W->row_map ? W->row_map[r] : r) * W->row_bytes;
            jobs[j].y[r] = fn[j](w, act[j], W->cols);
        }
    }
}
