/* ops.c - reference CPU implementations of the operations in ops.h. */
#include "ops.h"

#include <omp.h>
#include <stdlib.h>

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
    default: abort(); /* the loader admits no other dtype on this path */
    }
}

void op_row_to_f32(const qn_tensor *W, int64_t r, float *dst) {
    int64_t sr = W->row_map ? W->row_map[r] : r;
    op_convert_to_f32(W->dtype, (const char *)W->data + (size_t)sr * W->row_bytes, dst, W->cols);
}

float op_dot_f32(const float *a, const float *b, int64_t n) {
    /* Sixteen independent partial sums let the compiler use full vector registers
     * without reassociating a single running sum. */
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

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

void op_matmul_rows(const qn_tensor *W, int64_t r0, int64_t r1, const float *x, int T, int64_t ldx, float *y,
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

void op_matmul_to_rows(const qn_tensor *W, const float *x, int T, float *const *y) {
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
