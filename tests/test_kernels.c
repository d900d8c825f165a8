/* test_kernels.c - every fast kernel against the plain C reference, on realistic data.
 *
 * For each weight type: rows quantized with the reference quantizer from normal data
 * (with some outliers), activations shaped like hidden states. The SIMD variants (AVX2,
 * AVX-512 VNNI) must equal the portable kernel to float rounding, since their integer
 * sums are exact; the portable kernel must equal the f32 dot of the dequantized row with
 * the dequantized activation; and the full product with activation quantization must stay
 * within the activation format's error of the f32 reference. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/actq.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/gemm_vnni.h"
#include "kernels/cpu/gemm_float.h"
#include "kernels/cpu/gdn.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/repack.h"
#include "test_util.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (rng >> 11) * (1.0 / 9007199254740992.0); }
static float nrand(void) { double u = urand() + 1e-12, v = urand(); return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v)); }

static void fill(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = nrand() * scale * (urand() < 0.01 ? 8.0f : 1.0f);
}

static double dot_d(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static double norm_d(const float *a, int64_t n) { return sqrt(dot_d(a, a, n)); }

/* ||a - ref|| / ||ref|| in double over columns [c0, c1) of T rows of ld values. */
static double rel_l2_cols(const float *a, const float *ref, int T, int64_t ld, int64_t c0, int64_t c1) {
    double num = 0, den = 0;
    for (int t = 0; t < T; t++)
        for (int64_t i = t * ld + c0; i < t * ld + c1; i++) {
            num += (double)(a[i] - ref[i]) * (a[i] - ref[i]);
            den += (double)ref[i] * ref[i];
        }
    return sqrt(num / den);
}

/* ||a - ref|| / ||ref|| over n values, in double. */
static double rel_l2(const float *a, const float *ref, int64_t n) { return rel_l2_cols(a, ref, 1, n, 0, n); }

static void test_type(int wt, int64_t n) {
    const dot_kernels *sets[3];
    int ns = 0;
    sets[ns++] = &dot_generic;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) sets[ns++] = &dot_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        sets[ns++] = &dot_avx512;
#endif
    int at = dot_act_type(wt);
    float *w = malloc(n * 4), *x = malloc(n * 4), *wd = malloc(n * 4), *xd = malloc(n * 4);
    uint8_t *wq = malloc(quant_row_bytes(wt, n)), *xq = malloc(at == QUANT_F32 ? n * 4 : quant_row_bytes(at, n));
    /* room for any set's activation type (dot.h: DOT_ACT_Q8_0G rows are longer than Q8_0's) */
    uint8_t *xk = malloc(at == QUANT_F32 ? n * 4 : quant_row_bytes(at, n) + (n / 256 + 1) * DOT_Q8_0G_GROUP);
    uint8_t *wq_prev = malloc(quant_row_bytes(wt, n)), *wq_keep = malloc(quant_row_bytes(wt, n));
    for (int trial = 0; trial < 20; trial++) {
        fill(w, n, 0.02f);
        fill(x, n, trial % 2 ? 1.0f : 0.1f);
        if (trial == 0) for (int64_t i = 0; i < n; i++) w[i] = 0; /* all-zero rows happen (padding, pruned experts) */
        quant_quantize_row(wt, w, wq, n);
        quant_dequantize_row(wt, wq, wd, n);
        const void *a = x;
        if (at != QUANT_F32) {
            quant_quantize_row(at, x, xq, n);
            quant_dequantize_row(at, xq, xd, n);
            a = xq;
        } else {
            for (int64_t i = 0; i < n; i++) xd[i] = x[i];
        }
        if (trial) memcpy(wq_prev, wq_keep, quant_row_bytes(wt, n));
        memcpy(wq_keep, wq, quant_row_bytes(wt, n));
        double exact = dot_d(wd, xd, n);             /* same inputs, exact arithmetic */
        double full = dot_d(wd, x, n);               /* without activation quantization */
        double scale = norm_d(wd, n) * norm_d(x, n) + 1e-30;
        float g = dot_for_type(&dot_generic, wt)(wq, a, n);
        CHECK(fabs(g - exact) <= 1e-5 * scale + 1e-6 * fabs(exact), "%s n=%lld trial %d: generic %.9g exact %.9g",
              quant_type_name(wt), (long long)n, trial, g, exact);
        /* activation quantization: 8-bit blocks lose ~ 1/254 of each block's max */
        CHECK(fabs(g - full) <= (at == QUANT_F32 ? 1e-5 : 1.5e-2) * scale, "%s n=%lld: vs f32 activations %.6g %.6g",
              quant_type_name(wt), (long long)n, g, full);
        for (int k = 1; k < ns; k++) {
            /* the same quantized activations, reordered where a set's kernels take them so (dot.h) */
            const void *ak = a;
            const int atk = dot_act_type_set(sets[k], wt);
            if (atk != at) {
                dot_act_convert(atk, xq, xk, n);
                ak = xk;
            }
            float v = dot_for_type(sets[k], wt)(wq, ak, n);
            CHECK(fabs(v - g) <= 2e-6 * scale + 2e-6 * fabs(g), "%s n=%lld trial %d: %s %.9g vs generic %.9g",
                  quant_type_name(wt), (long long)n, trial, sets[k]->name, v, g);
            /* the two-row kernel: this row and the previous trial's, each equal to the one-row kernel */
            const dot2_fn d2 = dot2_for_type(sets[k], wt);
            if (d2 && trial) {
                float o2[2];
                d2(wq, wq_prev, ak, n, o2);
                const float v2 = dot_for_type(sets[k], wt)(wq_prev, ak, n);
                CHECK(o2[0] == v && o2[1] == v2, "%s n=%lld trial %d: %s two-row %.9g %.9g vs %.9g %.9g",
                      quant_type_name(wt), (long long)n, trial, sets[k]->name, o2[0], o2[1], v, v2);
            }
        }
    }
    free(w); free(x); free(wd); free(xd); free(wq); free(xq); free(xk); free(wq_prev); free(wq_keep);
}

/* A random weight matrix (values of sigma 0.05) quantized to wt, rows x cols; its f32 values in
 * *w (the caller frees both). */
static uint8_t *random_matrix(int wt, int64_t rows, int64_t cols, float **w) {
    const size_t rb = quant_row_bytes(wt, cols);
    uint8_t *wq = malloc(rb * rows);
    *w = malloc(rows * cols * 4);
    fill(*w, rows * cols, 0.05f);
    for (int64_t r = 0; r < rows; r++) quant_quantize_row(wt, *w + r * cols, wq + r * rb, cols);
    return wq;
}

/* The error that 8-bit activations bring by themselves to W x[T, cols] -> yref[T, rows]: the
 * reference product on x rounded through Q8_K (blocks of 256, the coarsest activation format
 * of the fast kernels; Q8_0's blocks of 32 round finer), as a relative L2 distance from yref.
 * With the test inputs' outliers it is 1-3%, so a fixed bound is either loose or, for some
 * draws, too tight. */
static double act_format_error(const qn_tensor *W, const float *x, int T, const float *yref) {
    const int64_t cols = W->cols, rows = W->rows;
    float *xr = malloc(T * cols * 4), *y = malloc(T * rows * 4);
    uint8_t *q = malloc(quant_row_bytes(QUANT_Q8_K, cols));
    for (int t = 0; t < T; t++) {
        quant_quantize_row(QUANT_Q8_K, x + t * cols, q, cols);
        quant_dequantize_row(QUANT_Q8_K, q, xr + t * cols, cols);
    }
    op_matmul_rows_ref(W, 0, rows, xr, T, cols, y, rows);
    const double e = rel_l2(y, yref, T * rows);
    free(xr); free(y); free(q);
    return e;
}

/* The whole product, fast vs reference, with a row map and several activation rows: 5, 7 and
 * 16 (the float tiles' groups: one of 5, 3 + 4, 5 + 5 + 6), and 70, more than the dot kernels' products
 * keep per group of rows (ops.c, ROWS_KEEP_T); 50 rows, not a multiple of those groups of 16. */
static void test_matmul(int wt, int T) {
    const int64_t rows = 50, cols = 512;
    float *w, *x = malloc(T * cols * 4), *y1 = malloc(T * rows * 4), *y2 = malloc(T * rows * 4);
    size_t rb = quant_row_bytes(wt, cols);
    uint8_t *wq = random_matrix(wt, rows, cols, &w);
    fill(x, T * cols, 1.0f);
    int32_t map[50];
    for (int r = 0; r < 50; r++) map[r] = (r * 7) % 50;
    qn_tensor W = {.data = wq, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = rb, .row_map = map, .name = "t"};
    op_matmul_rows(&W, 0, rows, x, T, cols, y1, rows);
    op_matmul_rows_ref(&W, 0, rows, x, T, cols, y2, rows);
    const double e = rel_l2(y1, y2, T * rows);
    /* 8-bit activation blocks with 1% outliers of 8 sigma: each element carries up to
     * ~5% of sigma of rounding, so ~1-3% on the outputs is what llama.cpp's scheme gives;
     * the bound is what that rounding costs on this draw (act_format_error) */
    double tol = dot_act_type(wt) == QUANT_F32 ? 1e-6 : 1.25 * act_format_error(&W, x, T, y2) + 2e-3;
    CHECK(e < tol, "%s matmul T %d fast vs reference rel L2 %.3e", quant_type_name(wt), T, e);
    /* the register-tiled float product (several tokens, row map, ragged edges) */
    if (gemm_float_available() && dot_act_type(wt) == QUANT_F32) {
        CHECK(gemm_float_rows(&W, 3, rows - 2, x, T, cols, y1, rows, NULL), "gemm_float declined");
        const double ef = rel_l2_cols(y1, y2, T, rows, 3, rows - 2);
        CHECK(ef < 1e-6, "%s gemm_float vs reference rel L2 %.3e", quant_type_name(wt), ef);
    }
    free(w); free(x); free(y1); free(y2); free(wq);
}

/* AMX tiles (bf16 operands, f32 accumulation) against the reference product, with row
 * and token counts that are not multiples of the 16x16 tile. */
static void test_amx(int wt) {
    if (!gemm_amx_mode()) return;
    const int64_t rows = 50, cols = 512;
    const int T = 37;
    float *w, *x = malloc(T * cols * 4), *y1 = malloc(T * rows * 4), *y2 = malloc(T * rows * 4);
    size_t rb = quant_row_bytes(wt, cols);
    uint8_t *wq = random_matrix(wt, rows, cols, &w);
    fill(x, T * cols, 1.0f);
    int32_t map[50];
    for (int r = 0; r < 50; r++) map[r] = (r * 7) % 50;
    qn_tensor W = {.data = wq, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = rb, .row_map = map, .name = "t"};
    /* the widening to bf16 equals the reference dequantization, to one bf16 rounding step */
    {
        uint16_t *wb = malloc(cols * 2);
        float *ref = malloc(cols * 4);
        int bad = 0;
        for (int64_t r = 0; r < rows; r++) {
            gemm_amx_widen_row(&W, r, wb);
            quant_dequantize_row(wt, wq + (size_t)map[r] * rb, ref, cols);
            for (int64_t i = 0; i < cols; i++) {
                float got = quant_bf16_to_f32(wb[i]), want = ref[i];
                if (fabsf(got - want) > fabsf(want) * (1.0f / 128) + 1e-30f) bad++;
            }
        }
        CHECK(bad == 0, "%s: %d widened values off by more than one bf16 step", quant_type_name(wt), bad);
        free(wb);
        free(ref);
    }
    CHECK(gemm_amx_rows(&W, 0, rows, x, T, cols, y1, rows, NULL), "amx declined");
    op_matmul_rows_ref(&W, 0, rows, x, T, cols, y2, rows);
    const double e = rel_l2(y1, y2, T * rows);
    /* bf16 activations: 8 significant bits, ~2^-9 relative rounding per element */
    CHECK(e < 5e-3, "%s amx vs reference rel L2 %.3e", quant_type_name(wt), e);
    /* outputs through row pointers (as the experts write theirs) are the same values */
    float *yp[37];
    for (int t = 0; t < T; t++) yp[t] = y2 + (size_t)(T - 1 - t) * rows;
    CHECK(gemm_amx_rows(&W, 0, rows, x, T, cols, NULL, 0, yp), "amx declined");
    int diff = 0;
    for (int t = 0; t < T; t++) diff += memcmp(yp[t], y1 + (size_t)t * rows, rows * sizeof(float)) != 0;
    CHECK(diff == 0, "%s amx through row pointers: %d tokens differ", quant_type_name(wt), diff);
    free(w); free(x); free(y1); free(y2); free(wq);
}

/* The SIMD activation quantizers must write the reference quantizer's bytes: on hidden-
 * state-like rows, on rows of exact ties (values whose scaled magnitude ends in .5, where
 * Q8_0 rounds away from zero and Q8_K to even), on tiny values (subnormal f16 scales),
 * and on all-zero blocks. */
/* The SIMD activation kernel sets this CPU runs, into sets[]; returns their count. */
static int actq_sets(const actq_kernels **sets) {
    int ns = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) sets[ns++] = &actq_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        sets[ns++] = &actq_avx512;
#endif
    return ns;
}

static void test_actq(void) {
#if defined(__x86_64__)
    const actq_kernels *sets[2];
    const int ns = actq_sets(sets);
    const int64_t n = 2048;
    float *x = malloc(n * 4);
    const size_t cap = quant_row_bytes(QUANT_Q8_K, n) + dot_act_row_bytes(DOT_ACT_Q8_0G, n); /* room for either */
    uint8_t *ref = malloc(cap), *got = malloc(cap);
    for (int trial = 0; trial < 40; trial++) {
        int kind = trial % 5;
        if (kind == 0) fill(x, n, 1.0f);
        else if (kind == 1) fill(x, n, 1e-6f);
        else if (kind == 2) for (int64_t i = 0; i < n; i++) x[i] = 0;
        else /* ties: k/2 for integer k, with a block maximum of 127 or -127 so the scale is 1 */
            for (int64_t i = 0; i < n; i++) x[i] = (i % 32 == 5) ? (kind == 3 ? 127.0f : -127.0f) : (float)((int)(urand() * 509) - 254) * 0.5f;
        if (kind == 2 && trial > 20) x[777] = -3.0f; /* one nonzero block among zeros */
        for (int at = 0; at < 2; at++) {
            int type = at ? QUANT_Q8_K : QUANT_Q8_0;
            size_t rb = quant_row_bytes(type, n);
            quant_quantize_row(type, x, ref, n);
            for (int k = 0; k < ns; k++) {
                memset(got, 0xAB, rb);
                (at ? sets[k]->q8_k : sets[k]->q8_0)(x, got, n);
                CHECK(!memcmp(ref, got, rb), "actq set %d %s trial %d: bytes differ from quant_quantize_row", k,
                      quant_type_name(type), trial);
            }
            memset(got, 0xAB, rb);
            actq_quantize_row(type, x, got, n);
            CHECK(!memcmp(ref, got, rb), "actq_quantize_row %s trial %d differs", quant_type_name(type), trial);
        }
        /* Q8_K reordered for the AVX-512 Q4_K/Q5_K kernels (dot.h): values 32-63 and 64-95 of each
         * 128 swapped, scale and sums untouched; checked against the Q8_K bytes directly */
        const size_t rb = quant_row_bytes(QUANT_Q8_K, n);
        quant_quantize_row(QUANT_Q8_K, x, ref, n);
        memset(got, 0xAB, rb);
        actq_quantize_row(DOT_ACT_Q8_K4, x, got, n);
        int same = 1;
        for (int64_t b = 0; b < n / 256; b++) {
            const uint8_t *r = ref + 292 * b, *g = got + 292 * b;
            same &= !memcmp(r, g, 4) && !memcmp(r + 260, g + 260, 32);
            for (int v = 0; v < 256; v++) {
                const int c = v % 128, src = (v / 128) * 128 + (c < 32 || c >= 96 ? c : c < 64 ? c + 32 : c - 32);
                same &= g[4 + v] == r[4 + src];
            }
        }
        CHECK(same, "actq_quantize_row DOT_ACT_Q8_K4 trial %d: not Q8_K in the order of dot.h", trial);
        /* Q8_K with sums of 32 for the repacked Q4_K/Q5_K kernel (dot.h): scale and values as
         * Q8_K's, then each sub-block's sum of its 32 int8 values (summed here from the values),
         * then 16 zero bytes; the same through the reference quantizer */
        for (int path = 0; path < 2; path++) {
            memset(got, 0xAB, rb);
            if (path) dot_quantize_act_ref(DOT_ACT_Q8_K32, x, got, n);
            else actq_quantize_row(DOT_ACT_Q8_K32, x, got, n);
            same = 1;
            for (int64_t b = 0; b < n / 256; b++) {
                const uint8_t *r = ref + 292 * b, *g = got + 292 * b;
                same &= !memcmp(r, g, 260);
                for (int j = 0; j < 8; j++) {
                    int sum = 0;
                    int16_t s16;
                    for (int v = 0; v < 32; v++) sum += (int8_t)r[4 + 32 * j + v];
                    memcpy(&s16, g + 260 + 2 * j, 2);
                    same &= s16 == sum;
                }
                for (int z = 276; z < 292; z++) same &= g[z] == 0;
            }
            CHECK(same, "%s DOT_ACT_Q8_K32 trial %d: not Q8_K with its sums of 32", path ? "dot_quantize_act_ref" : "actq_quantize_row",
                  trial);
        }
        /* Q8_0 regrouped for the AVX-512 Q8_0 kernels (dot.h), checked field by field against the
         * Q8_0 bytes: per 8 blocks the f16 scales widened, 128 times each block's sum, the values
         * (DOT_ACT_Q8_0I: word k of block j at 32k + 4j), a last partial group zero-padded (m =
         * 800: 25 blocks) */
        for (int li = 0; li < 4; li++) {
            const int64_t m = li % 2 ? 800 : n, nb = m / 32;
            const int at = li < 2 ? DOT_ACT_Q8_0G : DOT_ACT_Q8_0I;
            quant_quantize_row(QUANT_Q8_0, x, ref, m);
            memset(got, 0xAB, dot_act_row_bytes(at, m));
            actq_quantize_row(at, x, got, m);
            int ok = dot_act_row_bytes(at, m) == (size_t)(nb + 7) / 8 * 320;
            for (int64_t b = 0; b < (nb + 7) / 8 * 8; b++) {
                const uint8_t *g = got + 320 * (b / 8);
                const int j = (int)(b % 8);
                float d;
                int32_t c;
                memcpy(&d, g + 4 * j, 4);
                memcpy(&c, g + 32 + 4 * j, 4);
                /* value i of block j */
#define AT_VALUE(i) g[64 + (at == DOT_ACT_Q8_0I ? 32 * ((i) / 4) + 4 * j + (i) % 4 : 32 * j + (i))]
                if (b >= nb) { /* padding */
                    ok &= d == 0 && c == 0;
                    for (int i = 0; i < 32; i++) ok &= AT_VALUE(i) == 0;
                    continue;
                }
                uint16_t h;
                memcpy(&h, ref + 34 * b, 2);
                int32_t sum = 0;
                for (int i = 0; i < 32; i++) sum += (int8_t)ref[34 * b + 2 + i];
                ok &= d == quant_f16_to_f32(h) && c == 128 * sum;
                for (int i = 0; i < 32; i++) ok &= AT_VALUE(i) == ref[34 * b + 2 + i];
#undef AT_VALUE
            }
            CHECK(ok, "actq_quantize_row %s trial %d n=%lld: not Q8_0 in the groups of dot.h",
                  at == DOT_ACT_Q8_0I ? "DOT_ACT_Q8_0I" : "DOT_ACT_Q8_0G", trial, (long long)m);
        }
    }
    free(x); free(ref); free(got);
#endif
}

/* The SIMD SiLU gate of each kernel set, and op_silu_mul, against silu computed in double:
 * within 4e-7 relative (a few float ulp) or 1e-35 absolute (where silu underflows), on
 * activations of several scales, the clamp edges, and lengths that leave a scalar tail;
 * NaN stays NaN and +inf stays +inf. */
static void test_silu(void) {
    const actq_kernels *sets[3];
    int ns = actq_sets(sets);
    sets[ns++] = NULL; /* op_silu_mul */
    static const float edges[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-3f, -1e-3f, 86.9f, 87.0f, 87.1f, 88.0f, 88.5f,
                                  -86.9f, -87.0f, -87.1f, -88.0f, -88.5f, -89.0f, -100.0f, 100.0f, 1e10f, -1e10f,
                                  0.3466f, -0.3466f, 0.3467f, -0.3467f, 20.0f, -20.0f};
    const int n_edges = (int)(sizeof edges / sizeof edges[0]);
    float x[300], a[300], b[300];
    for (int trial = 0; trial < 24; trial++) {
        const int n = trial < 8 ? trial + 1 : trial < 16 ? 37 + trial : 300;
        const float scale = trial % 3 == 0 ? 1.0f : trial % 3 == 1 ? 8.0f : 60.0f;
        for (int i = 0; i < n; i++) {
            x[i] = trial % 4 == 3 && i < n_edges ? edges[i] : (float)(2 * urand() - 1) * scale;
            b[i] = (float)(2 * urand() - 1) * 3.0f;
        }
        for (int k = 0; k < ns; k++)
            for (int with_b = 0; with_b < 2; with_b++) {
                memcpy(a, x, (size_t)n * sizeof(float));
                if (sets[k]) sets[k]->silu_mul(a, with_b ? b : NULL, n);
                else op_silu_mul(a, with_b ? b : NULL, n);
                for (int i = 0; i < n; i++) {
                    const double xd = x[i], want = xd / (1.0 + exp(-xd)) * (with_b ? (double)b[i] : 1.0);
                    const double err = fabs((double)a[i] - want);
                    CHECK(err <= 4e-7 * fabs(want) || err <= 1e-35, "silu set %d trial %d x=%g b=%d: %.9g, want %.9g",
                          k, trial, (double)x[i], with_b, (double)a[i], want);
                }
            }
    }
    for (int k = 0; k < ns; k++) {
        float v[9] = {NAN, INFINITY, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, -NAN};
        if (sets[k]) sets[k]->silu_mul(v, NULL, 9);
        else op_silu_mul(v, NULL, 9);
        CHECK(isnan(v[0]) && isnan(v[8]) && v[1] == INFINITY, "silu set %d: NaN or +inf not kept (%g %g %g)", k,
              (double)v[0], (double)v[8], (double)v[1]);
    }
}

/* Multi-row kernels: T activation rows against one weight row must give what T calls of
 * the same set's single-row kernel give, to float rounding (same integer sums, the block
 * scales applied in the same order per row). */
static void test_dotm(int wt) {
    const dot_kernels *sets[2];
    int ns = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) sets[ns++] = &dot_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        sets[ns++] = &dot_avx512;
#endif
    const int64_t lens[] = {256, 512, 2048, 800};
    for (int li = 0; li < 4; li++) {
        int64_t n = lens[li];
        if (n % 256 && wt != QUANT_Q8_0 && wt != QUANT_MXFP4 && wt != QUANT_IQ4_NL) continue; /* 800 = 25 blocks of 32: the 8-block loop's tail */
        int at = dot_act_type(wt);
        size_t rbmax = quant_row_bytes(at, n) + (at == QUANT_Q8_0 ? dot_act_row_bytes(DOT_ACT_Q8_0G, n) : 0);
        float *x = malloc(n * 4);
        uint8_t *wq = malloc(quant_row_bytes(wt, n)), *xq = malloc(rbmax * DOTM_MAX_T), *xm = malloc(rbmax * DOTM_MAX_T);
        float *wd = malloc(n * 4);
        double mag[DOTM_MAX_T]; /* sum of |w_i x_i| of each row: the scale of a rounding difference */
        fill(x, n, 0.02f);
        quant_quantize_row(wt, x, wq, n);
        quant_dequantize_row(wt, wq, wd, n);
        for (int k = 0; k < ns; k++) {
            /* the rows in this set's activation types (dot.h: Q4_K and Q5_K may take them reordered,
             * Q8_0 regrouped, and its multi-row kernel interleaved) */
            const int at1 = dot_act_type_set(sets[k], wt), atm = dot_act_type_rows(sets[k], wt, 2);
            const size_t rb = dot_act_row_bytes(at1, n), rbm = dot_act_row_bytes(atm, n);
            for (int t = 0; t < DOTM_MAX_T; t++) {
                fill(x, n, t % 2 ? 1.0f : 0.1f);
                dot_quantize_act_ref(at1, x, xq + rb * t, n);
                dot_quantize_act_ref(atm, x, xm + rbm * t, n);
                mag[t] = 0;
                for (int64_t i = 0; i < n; i++) mag[t] += fabs((double)wd[i] * x[i]);
            }
            dotm_fn m = dotm_for_type(sets[k], wt);
            /* MXFP4, IQ4_NL and Q5_K have multi-row kernels in the AVX-512 set only */
            CHECK(m != NULL || ((wt == QUANT_MXFP4 || wt == QUANT_IQ4_NL || wt == QUANT_Q5_K) && sets[k] != &dot_avx512),
                  "%s has no multi-row %s kernel",
                  sets[k]->name, quant_type_name(wt));
            if (!m) continue;
            for (int T = 1; T <= DOTM_MAX_T; T++) {
                float o[DOTM_MAX_T];
                m(wq, xm, rbm, T, n, o);
                for (int t = 0; t < T; t++) {
                    /* the same integer sums; the float steps may round in another order (dot_x86.inc) */
                    float ref = dot_for_type(sets[k], wt)(wq, xq + rb * t, n);
                    /* AVX-512 Q8_0: the interleaved kernel does the single-row kernel's steps, bit for bit */
                    CHECK(wt != QUANT_Q8_0 || at1 == atm || o[t] == ref, "%s multi Q8_0 n %ld T %d row %d: %.9g vs %.9g",
                          sets[k]->name, (long)n, T, t, o[t], ref);
                    CHECK(fabsf(o[t] - ref) <= 1e-5f * (fabsf(ref) + 1e-3f) + 1e-6 * mag[t],
                          "%s multi %s n %ld T %d row %d: %g vs %g", sets[k]->name, quant_type_name(wt), (long)n, T, t,
                          o[t], ref);
                }
            }
        }
        free(x); free(wq); free(xq); free(xm); free(wd);
    }
}

/* Several products of different token counts in one op_matmul_multi call, as a batched MoE
 * step makes them: each job's result must equal the same product run by itself (the same
 * kernels on the same quantized activations), and stay within the activation format's
 * error of the reference. Token counts cover single rows, the multi-row kernels, two jobs
 * sharing one input (gate and up of an expert), and the AMX / float paths from 16 tokens. */
static void test_matmul_multi(int wt) {
    enum { NJ = 8 };
    const int64_t cols = 512;
    const int64_t rows[NJ] = {48, 64, 64, 32, 40, 48, 16, 24};
    const int Ts[NJ] = {1, 3, 5, 5, 16, 20, 2, 40};
    qn_tensor W[NJ];
    float *x[NJ], *y1[NJ], *y2[NJ], *y3[NJ];
    uint8_t *wq[NJ];
    op_job jobs[NJ];
    int64_t ldy[NJ];
    size_t rb = quant_row_bytes(wt, cols);
    for (int j = 0; j < NJ; j++) {
        float *w;
        wq[j] = random_matrix(wt, rows[j], cols, &w);
        free(w);
        W[j] = (qn_tensor){.data = wq[j], .dtype = wt, .rows = rows[j], .cols = cols, .row_bytes = rb, .name = "t"};
        if (j == 3) x[j] = x[2]; /* same input as the job before it */
        else {
            x[j] = malloc(Ts[j] * cols * 4);
            fill(x[j], Ts[j] * cols, 1.0f);
        }
        ldy[j] = j % 2 ? rows[j] + 16 : 0; /* odd jobs: rows of y at a stride, the gaps left alone */
        const int64_t ld = ldy[j] ? ldy[j] : rows[j];
        y1[j] = malloc(Ts[j] * ld * 4);
        for (int64_t i = 0; i < Ts[j] * ld; i++) y1[j][i] = -7.0f;
        y2[j] = malloc(Ts[j] * rows[j] * 4);
        y3[j] = malloc(Ts[j] * rows[j] * 4);
        jobs[j] = (op_job){&W[j], x[j], y1[j], Ts[j], ldy[j]};
    }
    op_matmul_multi(jobs, NJ);
    for (int j = 0; j < NJ; j++) {
        const int64_t ld = ldy[j] ? ldy[j] : rows[j];
        op_matmul(&W[j], x[j], Ts[j], y2[j]);
        op_matmul_rows_ref(&W[j], 0, rows[j], x[j], Ts[j], cols, y3[j], rows[j]);
        int same = 1;
        for (int t = 0; t < Ts[j]; t++) {
            same &= !memcmp(y1[j] + t * ld, y2[j] + t * rows[j], rows[j] * 4);
            for (int64_t i = rows[j]; i < ld; i++) same &= y1[j][t * ld + i] == -7.0f;
        }
        CHECK(same, "%s multi job %d (T=%d, ldy %lld) differs from op_matmul", quant_type_name(wt), j, Ts[j],
              (long long)ldy[j]);
        if (ld != rows[j]) /* compact it for the comparison below */
            for (int t = 0; t < Ts[j]; t++) memmove(y1[j] + t * rows[j], y1[j] + t * ld, rows[j] * 4);
        const double e = rel_l2(y1[j], y3[j], Ts[j] * rows[j]);
        /* f32 activations: float rounding; else within the 8-bit activations' own error (plus
         * bf16 weights' rounding where AMX tiles take the product) */
        const double bound = dot_act_type(wt) == QUANT_F32 && Ts[j] < 16 ? 1e-6
                                                                           : 1.25 * act_format_error(&W[j], x[j], Ts[j], y3[j]) + 2e-3;
        CHECK(e < bound, "%s multi job %d vs reference rel L2 %.3e, bound %.3e", quant_type_name(wt), j, e, bound);
    }
    for (int j = 0; j < NJ; j++) {
        if (j != 3) free(x[j]);
        free(y1[j]); free(y2[j]); free(y3[j]); free(wq[j]);
    }
}

/* The integer products that pack the activations once per product: the AMX tiles
 * (gemm_amx_q8.c: Q8_0, and Q4_K and Q6_K against Q8_K activations; 1..16 tokens, both sides
 * of Q4_K's paired sub-blocks at 8) and, on CPUs with AVX-512 VNNI, the tokens-in-lanes
 * kernels (gemm_vnni.c: Q4_K, Q5_K, Q6_K and Q8_0; every lane width, 4, 8 and 16 token slots, and more
 * tokens than one group of 16 holds; tiles of rows four at a time with 1-3 left over, and rows
 * wider than a tile, in pairs of groups and a single last one). Each against
 * the portable dot kernel on the same quantized activations: equal to float rounding, for a
 * row count that is not a multiple of 16, an odd number of blocks, a row map, and outputs
 * through row pointers (as the experts write theirs). */
typedef struct {
    const char *name;
    size_t (*bytes)(int64_t cols, int T);
    void (*pack)(const uint8_t *act, size_t astride, int T, int64_t cols, uint8_t *packed);
    void (*rows)(const qn_tensor *W, int64_t ra, int64_t rz, const uint8_t *packed, int T, float *y, int64_t ldy,
                 float *const *yrows);
} int_path;

/* wide: the second width, odd in blocks of what the path takes (32 or 256 values) */
static void test_int_path(int wt, const int_path *p, const int *Ts, int nT, int64_t wide) {
    const int64_t rows = 50, colss[2] = {512, wide};
    const int at = dot_act_type(wt), Tmax = Ts[nT - 1];
    for (int ci = 0; ci < 2; ci++) {
        const int64_t cols = colss[ci];
        size_t rb = quant_row_bytes(wt, cols), ab = quant_row_bytes(at, cols), pb = p->bytes(cols, Tmax);
        float *w, *x = malloc(Tmax * cols * 4), *y = malloc(Tmax * rows * 4);
        uint8_t *wq = random_matrix(wt, rows, cols, &w), *xq = malloc(ab * Tmax), *pk = aligned_alloc(64, (pb + 63) & ~(size_t)63);
        fill(x, Tmax * cols, 1.0f);
        for (int t = 0; t < Tmax; t++) actq_quantize_row(at, x + t * cols, xq + t * ab, cols);
        int32_t map[50];
        for (int r = 0; r < 50; r++) map[r] = (r * 7) % 50;
        float **yrow = malloc(Tmax * sizeof *yrow);
        for (int mapped = 0; mapped < 3; mapped++) /* 2: no map, outputs through row pointers */
            for (int ti = 0; ti < nT; ti++) {
                const int T = Ts[ti];
                qn_tensor W = {.data = wq, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = rb,
                               .row_map = mapped == 1 ? map : NULL, .name = "t"};
                float *const *yr = mapped == 2 ? yrow : NULL;
                for (int t = 0; t < T; t++) yrow[t] = y + (T - 1 - t) * rows; /* in reverse, not at t * ldy */
                for (int i = 0; i < Tmax * rows; i++) y[i] = NAN;
                /* two calls, as two threads split the rows */
                p->pack(xq, ab, T, cols, pk);
                p->rows(&W, 0, 32, pk, T, y, rows, yr);
                p->rows(&W, 32, rows, pk, T, y, rows, yr);
                for (int t = 0; t < T; t++)
                    for (int64_t r = 0; r < rows; r++) {
                        const int64_t src = mapped == 1 ? map[r] : r;
                        const uint8_t *wr = wq + rb * src;
                        float g = dot_for_type(&dot_generic, wt)(wr, xq + t * ab, cols);
                        double scale = norm_d(w + cols * src, cols) * norm_d(x + cols * t, cols);
                        const float got = mapped == 2 ? yrow[t][r] : y[t * rows + r];
                        CHECK(fabs(got - g) <= 2e-6 * scale + 2e-6 * fabs(g),
                              "%s %s cols %lld T %d map %d row %lld tok %d: %.9g vs generic %.9g", p->name,
                              quant_type_name(wt), (long long)cols, T, mapped, (long long)r, t, got, g);
                    }
            }
        free(w); free(x); free(y); free(wq); free(xq); free(pk); free(yrow);
    }
}

static void test_int_paths(int wt) {
    const int q6 = wt == QUANT_Q6_K;
    if (gemm_amxq8_available() && wt != QUANT_Q5_K) { /* no AMX path for Q5_K */
        const int Ts[7] = {1, 2, 5, 8, 9, 12, 16};
        const int_path p = wt == QUANT_Q8_0 ? (int_path){"amx", gemm_amxq8_packed_bytes, gemm_amxq8_pack, gemm_amxq8_rows}
                           : q6 ? (int_path){"amx", gemm_amxq4k_packed_bytes, gemm_amxq6k_pack, gemm_amxq6k_rows}
                                : (int_path){"amx", gemm_amxq4k_packed_bytes, gemm_amxq4k_pack, gemm_amxq4k_rows};
        test_int_path(wt, &p, Ts, 7, wt == QUANT_Q8_0 ? 2080 : 2304);
    }
    if (gemm_vnni_available()) {
        const int Ts[11] = {1, 3, 4, 5, 8, 9, 16, 17, 32, 33, 50};
        const int_path p = wt == QUANT_Q8_0 ? (int_path){"vnni", gemm_vnni_packed_bytes, gemm_vnni_pack_q8, gemm_vnniq8_rows}
                                            : (int_path){"vnni", gemm_vnni_packed_bytes, gemm_vnni_pack,
                                                         q6 ? gemm_vnniq6k_rows
                                                         : wt == QUANT_Q5_K ? gemm_vnniq5k_rows : gemm_vnniq4k_rows};
        test_int_path(wt, &p, Ts, 11, 2304); /* the lanes take multiples of 256; tiles of 7 rows */
        test_int_path(wt, &p, Ts, 11, 8448); /* rows wider than a tile: one at a time (row_dot) */
    }
}

/* One-token products through the two-row kernels (row p paired with row p + rows / 2, ops.c):
 * through op_matmul_rows and op_matmul_multi, every row equal bit for bit to the selected set's
 * one-row kernel on the same activations; also with a row map that keeps the pairs apart, one
 * that puts them side by side (those go one at a time), and an odd row count (the last row
 * alone). */
static void test_two_rows(int wt) {
    const int64_t rows = 256, cols = 2048;
    const size_t rb = quant_row_bytes(wt, cols);
    const dot_kernels *k = dot_select();
    const int at = dot_act_type_set(k, wt);
    float *w = malloc(cols * 4), *x = malloc(cols * 4), *y = malloc(rows * 4), *y2 = malloc(rows * 4);
    uint8_t *wq = malloc(rb * rows), *xq = malloc(dot_act_row_bytes(at, cols));
    for (int64_t r = 0; r < rows; r++) {
        fill(w, cols, 0.05f);
        quant_quantize_row(wt, w, wq + r * rb, cols);
    }
    fill(x, cols, 1.0f);
    dot_quantize_act_ref(at, x, xq, cols);
    int32_t map_apart[256], map_side[256];
    for (int r = 0; r < 256; r++) {
        map_apart[r] = 255 - r;
        map_side[r] = r < 128 ? 2 * r : 2 * (r - 128) + 1; /* rows p and p + 128 adjacent */
    }
    const int32_t *maps[4] = {NULL, map_apart, map_side, NULL};
    for (int m = 0; m < 4; m++) {
        const int64_t nr = m == 3 ? rows - 1 : rows;
        qn_tensor W = {.data = wq, .dtype = wt, .rows = nr, .cols = cols, .row_bytes = rb, .row_map = maps[m], .name = "t"};
        int same = 1;
        for (int64_t r = 0; r < rows; r++) y[r] = y2[r] = NAN;
        op_matmul_rows(&W, 0, nr, x, 1, cols, y, nr);
        for (int64_t r = 0; r < nr; r++) same &= y[r] == dot_for_type(k, wt)(qn_tensor_row(&W, r), xq, cols);
        CHECK(same, "%s two-row products (case %d): op_matmul_rows differs from the one-row kernel", quant_type_name(wt), m);
        op_job jobs[2] = {{.W = &W, .x = x, .y = y, .T = 1}, {.W = &W, .x = x, .y = y2, .T = 1}};
        op_matmul_multi(jobs, 2);
        for (int64_t r = 0; r < nr; r++) same &= y[r] == y2[r] && y[r] == dot_for_type(k, wt)(qn_tensor_row(&W, r), xq, cols);
        CHECK(same, "%s two-row products (case %d): op_matmul_multi differs from the one-row kernel", quant_type_name(wt), m);
    }
    free(w); free(x); free(y); free(y2); free(wq); free(xq);
}

/* Q8_0, Q4_K, Q5_K and Q6_K weights repacked into groups of 16 interleaved rows (repack.h): every row and
 * token equal to the portable dot kernel on the same activations to float rounding (the integer
 * sums are exact), for token counts around the kernels' cases (1-2 with split chains, up to 8 or
 * 16 per pass, and more in pieces), a row map (the copy takes the logical rows), two calls that
 * split the rows as two threads do, outputs at a stride and through row pointers, and (Q8_0) a
 * width whose block count is not a multiple of 8 (the activations' last group padded). Then
 * whole products through op_matmul_rows, op_matmul_to_rows and op_matmul_multi with the copy
 * against the same products without it. */
static void test_repack(int wt) {
    if (!repack_available()) return;
    const int64_t rows = 48, colss[2] = {512, wt == QUANT_Q8_0 ? 2080 : 2304};
    const int Ts[10] = {1, 2, 3, 4, 5, 8, 9, 16, 17, 33}, Tmax = 33;
    const int at0 = dot_act_type(wt); /* the portable kernel's activations */
    for (int ci = 0; ci < 2; ci++) {
        const int64_t cols = colss[ci];
        qn_tensor W = {.data = NULL, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = quant_row_bytes(wt, cols), .name = "t"};
        const int at = repack_act_type(&W);
        const size_t rb = W.row_bytes, ab = dot_act_row_bytes(at, cols), ab0 = quant_row_bytes(at0, cols);
        float *w, *x = malloc(Tmax * cols * 4), *y = malloc(Tmax * rows * 4);
        uint8_t *wq = random_matrix(wt, rows, cols, &w), *xq = malloc(ab * Tmax), *x0 = malloc(ab0 * Tmax);
        fill(x, Tmax * cols, 1.0f);
        for (int t = 0; t < Tmax; t++) {
            actq_quantize_row(at, x + t * cols, xq + t * ab, cols);
            quant_quantize_row(at0, x + t * cols, x0 + t * ab0, cols);
        }
        W.data = wq;
        int32_t map[48];
        for (int r = 0; r < 48; r++) map[r] = (r * 7) % 48;
        float **yrow = malloc(Tmax * sizeof *yrow);
        for (int mode = 0; mode < 3; mode++) { /* 1: row map; 2: outputs through row pointers */
            W.row_map = mode == 1 ? map : NULL;
            W.rp = NULL;
            CHECK(repack_fits(&W), "repack refuses a 48 x %lld %s matrix", (long long)cols, quant_type_name(wt));
            uint8_t *rp = aligned_alloc(64, (repack_bytes(&W) + 63) & ~(size_t)63);
            repack_write(&W, rp);
            W.rp = rp;
            for (int ti = 0; ti < 10; ti++) {
                const int T = Ts[ti];
                float *const *yr = mode == 2 ? yrow : NULL;
                for (int t = 0; t < T; t++) yrow[t] = y + (T - 1 - t) * rows;
                for (int i = 0; i < Tmax * rows; i++) y[i] = NAN;
                repack_rows(&W, 0, 32, xq, ab, T, y, rows, yr);
                repack_rows(&W, 32, rows, xq, ab, T, y, rows, yr);
                for (int t = 0; t < T; t++)
                    for (int64_t r = 0; r < rows; r++) {
                        const int64_t src = mode == 1 ? map[r] : r;
                        const float g = dot_for_type(&dot_generic, wt)(wq + rb * src, x0 + t * ab0, cols);
                        const double scale = norm_d(w + cols * src, cols) * norm_d(x + cols * t, cols);
                        const float got = mode == 2 ? yrow[t][r] : y[t * rows + r];
                        CHECK(fabs(got - g) <= 2e-6 * scale + 2e-6 * fabs(g),
                              "repacked %s cols %lld T %d mode %d row %lld tok %d: %.9g vs generic %.9g", quant_type_name(wt),
                              (long long)cols, T, mode, (long long)r, t, got, g);
                    }
            }
            /* whole products, with and without the copy */
            if (mode == 1) {
                float *y2 = malloc(Tmax * rows * 4), *ym = malloc(Tmax * rows * 4), *yt = malloc(Tmax * rows * 4);
                float *rowp[33];
                for (int ti = 0; ti < 10; ti++) {
                    const int T = Ts[ti];
                    for (int t = 0; t < T; t++) rowp[t] = yt + t * rows;
                    op_matmul_rows(&W, 0, rows, x, T, cols, y, rows);
                    op_matmul_to_rows(&W, x, T, rowp);
                    op_job job = {&W, x, ym, T, 0};
                    op_matmul_multi(&job, 1);
                    qn_tensor W0 = W;
                    W0.rp = NULL;
                    /* the mapped rows with AMX's tiles off (they round or group the activations
                     * otherwise): the vector kernels take the same integer sums */
                    int amx = gemm_amx_set_mode(0);
                    op_matmul_rows(&W0, 0, rows, x, T, cols, y2, rows);
                    gemm_amx_set_mode(amx);
                    double dm = 0, dt = 0;
                    for (int64_t i = 0; i < T * rows; i++) {
                        dm += fabs(ym[i] - y[i]);
                        dt += fabs(yt[i] - y[i]);
                    }
                    /* the same integer sums in another float order */
                    const double e = rel_l2(y, y2, T * rows);
                    CHECK(e < 1e-5, "repacked %s op_matmul_rows T %d cols %lld: rel L2 %.3e against the mapped rows",
                          quant_type_name(wt), T, (long long)cols, e);
                    CHECK(dm == 0 && dt == 0, "repacked %s T %d cols %lld: op_matmul_multi / op_matmul_to_rows differ from op_matmul_rows",
                          quant_type_name(wt), T, (long long)cols);
                }
                free(y2); free(ym); free(yt);
            }
            free(rp);
        }
        free(w); free(x); free(y); free(wq); free(xq); free(x0); free(yrow);
    }
}


/* Two activation passes (qn_tensor.act2, ops.c): every entry point, with and without the
 * repacked copy, against the reference product on f32 activations. One 8-bit pass is off by
 * act_format_error (1-3 % here); the second pass takes the rounding's residual, itself rounded
 * to 8 bits per block, so what is left is ~1/254 of that: the bound is 1/50 of it. Token counts
 * span the decode kernels (1), the multi-row ones (2, 5), the VNNI lanes (12 and up), and more
 * tokens than one chunk of the two-pass product (150 > 64). */
static void test_two_pass(int wt) {
    const int64_t rows = 48, cols = 2304; /* act_format_error's Q8_K blocks need a multiple of 256 */
    const int Ts[8] = {1, 2, 5, 12, 16, 17, 70, 150}, Tmax = 150;
    const size_t rb = quant_row_bytes(wt, cols);
    float *w, *x = malloc(Tmax * cols * 4), *y = malloc(Tmax * rows * 4), *yr = malloc(Tmax * rows * 4);
    float *ym = malloc(Tmax * rows * 4), **rowp = malloc(Tmax * sizeof *rowp);
    uint8_t *wq = random_matrix(wt, rows, cols, &w);
    fill(x, Tmax * cols, 1.0f);
    int32_t map[48];
    for (int r = 0; r < 48; r++) map[r] = (r * 7) % 48;
    qn_tensor W = {.data = wq, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = rb, .row_map = map, .name = "t", .act2 = 1};
    /* the third job of entry 3: 3 tokens from the second row of x, its reference and bound once */
    const int T3 = 3;
    float *y3 = malloc(T3 * rows * 4), *y3r = malloc(T3 * rows * 4);
    op_matmul_rows_ref(&W, 0, rows, x + cols, T3, cols, y3r, rows);
    const double bound3 = act_format_error(&W, x + cols, T3, y3r) / 50 + 2e-6;
    uint8_t *rp = NULL;
    for (int copy = 0; copy < 2; copy++) {
        if (copy) { /* the repacked rows, where the type has them */
            if (!repack_available() || !repack_fits(&W)) break;
            rp = aligned_alloc(64, (repack_bytes(&W) + 63) & ~(size_t)63);
            repack_write(&W, rp);
            W.rp = rp;
        }
        for (int ti = 0; ti < 8; ti++) {
            const int T = Ts[ti];
            op_matmul_rows_ref(&W, 0, rows, x, T, cols, yr, rows);
            const double bound = act_format_error(&W, x, T, yr) / 50 + 2e-6;
            for (int entry = 0; entry < 4; entry++) {
                for (int64_t i = 0; i < T * rows; i++) y[i] = NAN;
                if (entry == 0) op_matmul_rows(&W, 0, rows, x, T, cols, y, rows);
                if (entry == 1) { /* two calls on row ranges, one not on a multiple of 16 */
                    op_matmul_rows(&W, 0, 16, x, T, cols, y, rows);
                    op_matmul_rows(&W, 16, rows, x, T, cols, y, rows);
                }
                if (entry == 2) {
                    for (int t = 0; t < T; t++) rowp[t] = y + (int64_t)(T - 1 - t) * rows; /* in reverse */
                    op_matmul_to_rows(&W, x, T, rowp);
                    for (int t = 0; t < T; t++) memcpy(ym + (int64_t)t * rows, rowp[t], rows * 4);
                    memcpy(y, ym, (size_t)T * rows * 4);
                }
                if (entry == 3) { /* a MoE layer's jobs: this one, one sharing its input, one of 3 tokens */
                    op_job jobs[3] = {{&W, x, y, T, 0}, {&W, x, ym, T, 0}, {&W, x + cols, y3, T3, 0}};
                    op_matmul_multi(jobs, 3);
                    CHECK(!memcmp(y, ym, (size_t)T * rows * 4), "%s two-pass multi: jobs on one input differ (T %d)",
                          quant_type_name(wt), T);
                    const double e3 = rel_l2(y3, y3r, T3 * rows);
                    CHECK(e3 < bound3, "%s two-pass multi, 3 tokens: rel L2 %.3e", quant_type_name(wt), e3);
                }
                const double e = rel_l2(y, yr, T * rows);
                CHECK(e < bound, "%s two-pass %s entry %d T %d: rel L2 %.3e, bound %.3e (one pass: %.3e)", quant_type_name(wt),
                      copy ? "repacked" : "rows", entry, T, e, bound, 50 * (bound - 2e-6));
            }
        }
    }
    free(rp); free(w); free(x); free(y); free(yr); free(ym); free(rowp); free(wq); free(y3); free(y3r);
}

/* Inputs of T tokens for one head, as the model lays them out: q, k, v in one row of ldqk
 * floats (q and k unit length, q times dk^-1/2), g in [gmin, 0) and beta in [0, 1] interleaved. */
static void gdn_inputs(float *rows, float *gb, int T, int dk, int dv, int64_t ldqk, int64_t ldg, float gmin) {
    for (int t = 0; t < T; t++) {
        float *r = rows + (int64_t)t * ldqk;
        fill(r, 2 * dk + dv, 1.0f);
        for (int h = 0; h < 2; h++) {
            double n = norm_d(r + h * dk, dk);
            for (int i = 0; i < dk; i++) r[h * dk + i] = (float)(r[h * dk + i] / n) * (h ? 1.0f : 1.0f / sqrtf((float)dk));
        }
        gb[t * ldg] = gmin * (float)(1.0 - urand());
        gb[t * ldg + 1] = (float)urand();
    }
}

/* The recurrence in double over those inputs: state Sd [dk][dv] in place, outputs added to od. */
static void gdn_double(const float *rows, const float *gb, int T, int dk, int dv, int64_t ldqk, int64_t ldg, double *Sd,
                       double *od) {
    double *kv = calloc((size_t)dv, sizeof(double));
    for (int t = 0; t < T; t++) {
        const float *q = rows + (int64_t)t * ldqk, *k = q + dk, *v = q + 2 * dk;
        const double decay = exp((double)gb[t * ldg]), b = gb[t * ldg + 1];
        for (int j = 0; j < dv; j++) kv[j] = 0;
        for (int i = 0; i < dk; i++)
            for (int j = 0; j < dv; j++) kv[j] += (Sd[i * dv + j] *= decay) * k[i];
        for (int j = 0; j < dv; j++) kv[j] = b * (v[j] - kv[j]);
        for (int i = 0; i < dk; i++)
            for (int j = 0; j < dv; j++) {
                Sd[i * dv + j] += k[i] * kv[j];
                od[(int64_t)t * dv + j] += Sd[i * dv + j] * q[i];
            }
    }
    free(kv);
}

/* The gated delta rule: the chunked and recurrent kernels in use (AVX-512 where the CPU has it)
 * and their plain C references, each against the recurrence in double, on
 * realistic inputs: q and k L2-normalised per head (q scaled by dk^-1/2), beta in [0, 1], log
 * decays g in [-20, 0) or the small ones of a long memory, a state carried in from before, and
 * lengths around the chunk of 64. Rows are strided as in the model (q, k, v in one row; g and
 * beta interleaved). */
static void test_gdn_case(int dk, int dv, int T, float gmin, int warm) {
    const int64_t ldqk = 2 * dk + dv + 8, ldv = ldqk, ldg = 2;
    float *rows = calloc((size_t)T * ldqk, sizeof(float)), *gb = calloc((size_t)T * ldg, sizeof(float));
    float *S0 = calloc((size_t)dk * dv, sizeof(float));
    double *Sd = calloc((size_t)dk * dv, sizeof(double)), *od = calloc((size_t)T * dv, sizeof(double));
    gdn_inputs(rows, gb, T, dk, dv, ldqk, ldg, gmin);
    if (warm) fill(S0, (int64_t)dk * dv, 0.3f);
    for (int64_t i = 0; i < (int64_t)dk * dv; i++) Sd[i] = S0[i];
    gdn_double(rows, gb, T, dk, dv, ldqk, ldg, Sd, od);
    float *tmp = calloc(gdn_tmp_floats(dk, dv), sizeof(float)), *S = malloc((size_t)dk * dv * sizeof(float));
    float *o = calloc((size_t)T * dv, sizeof(float));
    for (int way = 0; way < 4; way++) {
        memcpy(S, S0, (size_t)dk * dv * sizeof(float));
        memset(o, 0, (size_t)T * dv * sizeof(float));
        const float *q = rows, *k = rows + dk, *v = rows + 2 * dk;
        if (way == 0) gdn_chunked(S, dk, dv, T, q, k, ldqk, v, ldv, gb, gb + 1, ldg, o, dv, tmp);
        else if (way == 1) gdn_chunked_ref(S, dk, dv, T, q, k, ldqk, v, ldv, gb, gb + 1, ldg, o, dv, tmp);
        else if (way == 2) gdn_recurrent(S, dk, dv, T, q, k, ldqk, v, ldv, gb, gb + 1, ldg, o, dv, tmp, NULL, 0, 0);
        else gdn_recurrent_ref(S, dk, dv, T, q, k, ldqk, v, ldv, gb, gb + 1, ldg, o, dv, tmp, NULL, 0, 0);
        double eo = 0, no = 0, es = 0, ns = 0;
        for (int64_t i = 0; i < (int64_t)T * dv; i++) { eo += (o[i] - od[i]) * (o[i] - od[i]); no += od[i] * od[i]; }
        for (int64_t i = 0; i < (int64_t)dk * dv; i++) { es += (S[i] - Sd[i]) * (S[i] - Sd[i]); ns += Sd[i] * Sd[i]; }
        eo = sqrt(eo / (no + 1e-30));
        es = sqrt(es / (ns + 1e-30));
        static const char *names[] = {"gdn_chunked", "gdn_chunked_ref", "gdn_recurrent", "gdn_recurrent_ref"};
        CHECK(eo < 2e-6 && es < 2e-6, "%s dk %d dv %d T %d g >= %g warm %d: rel L2 outputs %.2e, state %.2e",
              names[way], dk, dv, T, (double)gmin, warm, eo, es);
    }
    free(rows); free(gb); free(S0); free(Sd); free(od); free(tmp); free(S); free(o);
}

/* The recurrence on a bf16 state (gdn_recurrent_bf16). With beta = 0 a token only decays the
 * state, so each stored value must be exactly quant_f32_to_bf16 of exp(g) times the old one
 * (round to nearest even, as the f32 product is formed in the kernel); over many tokens with
 * realistic inputs the outputs and state stay within bf16's precision of the recurrence in
 * double. 24 x 40 is not a multiple of 16: the plain C path. */
static void test_gdn_bf16(int dk, int dv) {
    const int T = 48;
    const int64_t ldqk = 2 * dk + dv, ldg = 2;
    float *rows = calloc((size_t)T * ldqk, sizeof(float)), *gb = calloc((size_t)T * ldg, sizeof(float));
    uint16_t *S = malloc((size_t)dk * dv * sizeof(uint16_t)), *S0 = malloc((size_t)dk * dv * sizeof(uint16_t));
    float *o = calloc((size_t)T * dv, sizeof(float)), *tmp = calloc(gdn_state_tmp_floats(dk, dv), sizeof(float));
    double *Sd = calloc((size_t)dk * dv, sizeof(double)), *od = calloc((size_t)T * dv, sizeof(double));
    gdn_inputs(rows, gb, T, dk, dv, ldqk, ldg, -0.5f);
    for (int i = 0; i < dk * dv; i++) S0[i] = quant_f32_to_bf16(0.3f * nrand());
    /* decay only */
    memcpy(S, S0, (size_t)dk * dv * sizeof(uint16_t));
    float g1 = -0.0123f, b0 = 0.0f;
    gdn_recurrent_bf16(S, dk, dv, 1, rows, rows + dk, ldqk, rows + 2 * dk, ldqk, &g1, &b0, 1, o, dv, tmp);
    int bad = 0;
    for (int i = 0; i < dk * dv; i++) bad += S[i] != quant_f32_to_bf16(expf(g1) * quant_bf16_to_f32(S0[i]));
    CHECK(!bad, "gdn_recurrent_bf16 %d x %d: %d of %d decayed values not rounded to nearest even", dk, dv, bad, dk * dv);
    /* T tokens against the recurrence in double from the same start */
    memcpy(S, S0, (size_t)dk * dv * sizeof(uint16_t));
    for (int i = 0; i < dk * dv; i++) Sd[i] = quant_bf16_to_f32(S0[i]);
    gdn_double(rows, gb, T, dk, dv, ldqk, ldg, Sd, od);
    gdn_recurrent_bf16(S, dk, dv, T, rows, rows + dk, ldqk, rows + 2 * dk, ldqk, gb, gb + 1, ldg, o, dv, tmp);
    double eo = 0, no = 0, es = 0, ns = 0;
    for (int64_t i = 0; i < (int64_t)T * dv; i++) { eo += (o[i] - od[i]) * (o[i] - od[i]); no += od[i] * od[i]; }
    for (int i = 0; i < dk * dv; i++) {
        double d = quant_bf16_to_f32(S[i]) - Sd[i];
        es += d * d;
        ns += Sd[i] * Sd[i];
    }
    eo = sqrt(eo / no);
    es = sqrt(es / ns);
    CHECK(eo < 1e-2 && es < 1e-2, "gdn_recurrent_bf16 %d x %d, %d tokens: rel L2 outputs %.2e, state %.2e", dk, dv, T,
          eo, es);
    free(rows); free(gb); free(S); free(S0); free(o); free(tmp); free(Sd); free(od);
}

/* Speculative verification's checkpoints: gdn_recurrent with n_ckpt keeps the state after each of
 * the first n_ckpt tokens; each must equal the state that feeding those tokens alone leaves, to
 * the bit (so that accepting k drafts is the same as having decoded them), and the outputs too. */
static void test_gdn_ckpt(int dk, int dv) {
    enum { T = 6 };
    const int64_t ldqk = 2 * dk + dv, ldg = 2, n = (int64_t)dk * dv;
    float *rows = calloc((size_t)T * ldqk, sizeof(float)), gb[2 * T], *S0 = malloc(n * sizeof(float));
    float *S = malloc(n * sizeof(float)), *ck = malloc((size_t)T * n * sizeof(float)), *tmp = calloc(gdn_tmp_floats(dk, dv), sizeof(float));
    float o[T * 256], o1[T * 256];
    gdn_inputs(rows, gb, T, dk, dv, ldqk, ldg, -1.0f);
    fill(S0, n, 0.3f);
    memcpy(S, S0, n * sizeof(float));
    gdn_recurrent(S, dk, dv, T, rows, rows + dk, ldqk, rows + 2 * dk, ldqk, gb, gb + 1, ldg, o, dv, tmp, ck, n, T);
    for (int t = 0; t < T; t++) {
        float *S1 = malloc(n * sizeof(float));
        memcpy(S1, S0, n * sizeof(float));
        gdn_recurrent(S1, dk, dv, t + 1, rows, rows + dk, ldqk, rows + 2 * dk, ldqk, gb, gb + 1, ldg, o1, dv, tmp, NULL, 0, 0);
        CHECK(!memcmp(S1, ck + (size_t)t * n, n * sizeof(float)), "gdn_recurrent %d x %d: checkpoint %d differs", dk, dv, t);
        CHECK(!memcmp(o1 + (size_t)t * dv, o + (size_t)t * dv, dv * sizeof(float)), "gdn_recurrent %d x %d: output %d", dk, dv, t);
        free(S1);
    }
    CHECK(!memcmp(S, ck + (size_t)(T - 1) * n, n * sizeof(float)), "gdn_recurrent %d x %d: final state", dk, dv);
    free(rows); free(S0); free(S); free(ck); free(tmp);
}

static void test_gdn(void) {
    static const int lens[] = {1, 2, 63, 64, 65, 200};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        test_gdn_case(128, 128, lens[i], -20.0f, 1);
        test_gdn_case(128, 128, lens[i], -0.05f, 1);
    }
    test_gdn_case(128, 128, 130, -0.05f, 0);
    test_gdn_case(32, 64, 97, -1.0f, 1);  /* dk != dv */
    test_gdn_case(48, 16, 70, -3.0f, 1);
    test_gdn_case(24, 40, 66, -1.0f, 1);  /* not multiples of 16: the reference only */
    test_gdn_ckpt(128, 128);
    test_gdn_ckpt(24, 40);
    test_gdn_bf16(128, 128);
    test_gdn_bf16(32, 64);
    test_gdn_bf16(24, 40);
}

int main(void) {
    int types[] = {QUANT_F32, QUANT_F16, QUANT_BF16, QUANT_Q8_0, QUANT_Q4_0, QUANT_Q4_K, QUANT_Q5_K, QUANT_Q6_K,
                   QUANT_MXFP4, QUANT_IQ4_NL, QUANT_IQ4_XS};
    int64_t lens[] = {256, 512, 2048, 4096};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++) test_type(types[i], lens[j]);
        test_matmul(types[i], 5);
        test_matmul(types[i], 7);
        test_matmul(types[i], 16);
        test_matmul(types[i], 70);
        test_amx(types[i]);
        test_matmul_multi(types[i]);
        test_two_rows(types[i]);
    }
    /* 32-value formats in steps of 8 blocks: a single block, and a step plus a tail */
    test_type(QUANT_MXFP4, 32);
    test_type(QUANT_MXFP4, 288);
    test_type(QUANT_IQ4_NL, 32);
    test_type(QUANT_IQ4_NL, 288);
    test_type(QUANT_Q8_0, 288);
    test_actq();
    test_silu();
    test_gdn();
    test_int_paths(QUANT_Q8_0);
    test_repack(QUANT_Q8_0);
    test_repack(QUANT_Q4_K);
    test_repack(QUANT_Q5_K);
    test_repack(QUANT_Q6_K);
    test_int_paths(QUANT_Q4_K);
    test_int_paths(QUANT_Q6_K);
    test_int_paths(QUANT_Q5_K);
    test_dotm(QUANT_Q8_0);
    test_dotm(QUANT_Q4_K);
    test_dotm(QUANT_Q5_K);
    test_dotm(QUANT_Q6_K);
    test_dotm(QUANT_MXFP4);
    test_dotm(QUANT_IQ4_NL);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (dot_act_type(types[i]) != QUANT_F32) test_two_pass(types[i]);
    /* float kernels also take lengths that are not a multiple of the vector width */
    test_type(QUANT_BF16, 100);
    test_type(QUANT_F32, 37);
    printf("kernel set in use: %s, AMX mode %d\n", op_kernel_name(), gemm_amx_mode());
    return tu_finish("test_kernels");
}
