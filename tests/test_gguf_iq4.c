/* test_gguf_iq4.c - the 4-bit formats IQ4_XS, IQ4_NL and MXFP4 as llama-quantize writes them: dot kernels and
 * GGUF models quantized by llama.cpp's llama-quantize.
 *
 * 1. Kernels, on random blocks (random bytes with finite scales, every code and sub-block
 *    scale): the portable dot kernel (and, bit for bit, the AVX2 one of
 *    dot_iq4_x86.c on CPUs that have it; the AVX-512 ones to rounding) equals the f32 dot of the dequantized weights
 *    (quant.c, itself bit-exact to ggml in test_quant) with the dequantized activation blocks
 *    (Q8_K for IQ4_XS, Q8_0 for IQ4_NL and MXFP4, as llama.cpp pairs them) to float rounding,
 *    and stays within the activation format's error of f32 activations; the full products
 *    (vector path with a row map, AMX tiles when the CPU has them, op_matmul_multi) agree with
 *    the dequantizing reference product.
 * 2. Models (tests/data/gguf_iq4, tools/make_iq4_refs.py): llama-quantize's IQ4_XS file of a
 *    256-wide random Qwen3-Next and its IQ4_NL and MXFP4_MOE files of the short_top1 fixture,
 *    each with transformers' fp32 logits of the weights the file stores (dequantized by the
 *    gguf package). On the plain C reference kernels (QNEXT_KERNELS=reference, a child run)
 *    the engine reproduces them to max rel L2 <= 1e-4 (measured 1.5e-6 / 6.7e-6 / 4.6e-6).
 *    On the fast kernels the activations are quantized (8-bit blocks; bf16 in AMX tiles):
 *    h256 IQ4_XS prompt in one piece on AMX bf16 tiles max rel L2 <= 0.03 (measured
 *    8.9e-3); token by token, and the prompt too on CPUs without AMX (Q8_K activations,
 *    coarser for small elements than bf16), median <= 0.05 and top-1 >= 0.9 (measured
 *    0.026 / 0.96 on a Xeon, and the same on an AMD EPYC without AMX: every position ~0.025
 *    but one expert choice of the 2-expert top-1 router flipping at the last position). The
 *    short_top1 files have the same top-1 routing, which flips for small perturbations (see
 *    test_gguf_models): median <= 0.1 and top-1 agreement >= 0.8 (measured 0.019-0.029 and
 *    0.92-0.98 for IQ4_NL and MXFP4, either way of feeding). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dot.h"
#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "npy.h"
#include "qnext.h"
#include "test_util.h"
#include "util/json.h"

static int g_reference;

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static double urand(void) { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
static float nrand(void) { double u = urand() + 1e-12, v = urand(); return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v)); }

/* Random blocks of a read-only type: random code bytes, scales of weight-like size. */
static void random_blocks(int type, uint8_t *dst, int64_t n) {
    const quant_type_info *t = quant_type_get(type);
    int64_t nb = n / t->block_size;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = dst + b * t->type_size;
        for (size_t i = 0; i < t->type_size; i++) blk[i] = (uint8_t)next_u64();
        if (type == QUANT_MXFP4) {
            blk[0] = (uint8_t)(118 + next_u64() % 6); /* 2^-10 .. 2^-5 */
        } else {
            /* IQ4_NL: d ~ amax/127; IQ4_XS: d times sub-scales of -32..31 */
            float d = (type == QUANT_IQ4_XS ? 0.002f / 32 : 0.002f) * (float)(0.5 + urand());
            if (b % 17 == 5) d = 0; /* all-zero blocks happen */
            uint16_t h = quant_f32_to_f16(urand() < 0.5 ? -d : d);
            memcpy(blk, &h, 2);
        }
    }
}

static double dot_d(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static void test_dot(int wt, int64_t n) {
    int at = dot_act_type(wt);
    CHECK(at == (wt == QUANT_IQ4_XS ? QUANT_Q8_K : QUANT_Q8_0), "%s: activation type %d", quant_type_name(wt), at);
    dot_fn f = dot_for_type(&dot_generic, wt), fast = dot_for_type(dot_select(), wt);
    CHECK(f != NULL && fast != NULL, "%s: no kernel", quant_type_name(wt));
    if (!f || !fast) return;
    float *x = malloc(n * 4), *wd = malloc(n * 4), *xd = malloc(n * 4);
    uint8_t *wq = malloc(quant_row_bytes(wt, n)), *xq = malloc(quant_row_bytes(at, n));
    /* the fast set's own activation type (dot.h: the AVX-512 set takes Q8_0 regrouped) */
    const int atf = dot_act_type_set(dot_select(), wt);
    uint8_t *xf = malloc(atf == at ? quant_row_bytes(at, n) : dot_act_row_bytes(atf, n));
    for (int trial = 0; trial < 20; trial++) {
        random_blocks(wt, wq, n);
        for (int64_t i = 0; i < n; i++) x[i] = nrand() * (trial % 2 ? 1.0f : 0.1f) * (urand() < 0.01 ? 8.0f : 1.0f);
        CHECK(quant_dequantize_row(wt, wq, wd, n) == 0, "dequantize");
        quant_quantize_row(at, x, xq, n);
        quant_dequantize_row(at, xq, xd, n);
        double exact = dot_d(wd, xd, n), full = dot_d(wd, x, n);
        double scale = sqrt(dot_d(wd, wd, n) * dot_d(x, x, n)) + 1e-30;
        float g = f(wq, xq, n);
        CHECK(fabs(g - exact) <= 1e-5 * scale + 1e-6 * fabs(exact), "%s n=%lld trial %d: kernel %.9g, exact %.9g",
              quant_type_name(wt), (long long)n, trial, g, exact);
        CHECK(fabs(g - full) <= 1.5e-2 * scale, "%s n=%lld trial %d: vs f32 activations %.6g %.6g", quant_type_name(wt),
              (long long)n, trial, g, full);
        /* the AVX2 kernels of dot_iq4_x86.c sum the same integers and apply the scales in
         * the same order: the same float. On the AVX-512 set all three accumulate in float
         * vectors instead: equal to rounding, and the AVX2 kernel is then checked directly. */
        dot_act_convert(atf, xq, xf, n);
        float v = fast(wq, xf, n);
#if defined(__x86_64__) && defined(__GNUC__)
        if (dot_select() == &dot_avx512) {
            int ok = isfinite(v) && isfinite(g) ? fabs(v - g) <= 2e-6 * scale + 2e-6 * fabs(g)
                                                : (isnan(v) && isnan(g)) || v == g;
            CHECK(ok, "%s n=%lld trial %d: avx512 kernel %.9g vs portable %.9g", quant_type_name(wt), (long long)n,
                  trial, v, g);
            v = wt == QUANT_MXFP4 ? dot_mxfp4_avx2(wq, xq, n) : wt == QUANT_IQ4_NL ? dot_iq4_nl_avx2(wq, xq, n) : dot_iq4_xs_avx2(wq, xq, n);
        }
#endif
        CHECK(v == g || (isnan(v) && isnan(g)), "%s n=%lld trial %d: %s kernel %.9g vs portable %.9g",
              quant_type_name(wt), (long long)n, trial, dot_select()->name, v, g);
    }
    free(x); free(wd); free(xd); free(wq); free(xq); free(xf);
}

static double rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

/* Whole products, fast against reference: T = 5 (vector kernels), T = 37 (AMX tiles when
 * present), and one op_matmul_multi job list. */
static void test_matmul(int wt) {
    const int64_t rows = 50, cols = 512;
    const int Ts[2] = {5, 37};
    size_t rb = quant_row_bytes(wt, cols);
    uint8_t *wq = malloc(rb * rows);
    float *x = malloc(37 * cols * 4), *y1 = malloc(37 * rows * 4), *y2 = malloc(37 * rows * 4);
    random_blocks(wt, wq, rows * cols);
    for (int64_t i = 0; i < 37 * cols; i++) x[i] = nrand();
    int32_t map[50];
    for (int r = 0; r < 50; r++) map[r] = (r * 7) % 50;
    qn_tensor W = {.data = wq, .dtype = wt, .rows = rows, .cols = cols, .row_bytes = rb, .row_map = map, .name = "t"};
    for (int k = 0; k < 2; k++) {
        int T = Ts[k];
        op_matmul_rows(&W, 0, rows, x, T, cols, y1, rows);
        op_matmul_rows_ref(&W, 0, rows, x, T, cols, y2, rows);
        double e = rel_l2(y1, y2, (int64_t)T * rows);
        printf("%s product, %d tokens%s: fast vs reference rel L2 %.2e\n", quant_type_name(wt), T,
               T >= 16 && gemm_amx_mode() ? " (AMX)" : "", e);
        CHECK(e < 3e-2, "%s matmul T=%d: rel L2 %.3e", quant_type_name(wt), T, e);
    }
    op_job jobs[2] = {{.W = &W, .x = x, .y = y1, .T = 1}, {.W = &W, .x = x + cols, .y = y1 + rows, .T = 1}};
    op_matmul_multi(jobs, 2);
    op_matmul_rows_ref(&W, 0, rows, x, 2, cols, y2, rows);
    double e = rel_l2(y1, y2, 2 * rows);
    CHECK(e < 3e-2, "%s matvec_multi: rel L2 %.3e", quant_type_name(wt), e);
    free(wq); free(x); free(y1); free(y2);
}

/* Logits of the prompt: in one piece, or token by token (the decode kernels). */
static float *run(const char *path, const int32_t *ids, int n, int one_by_one, int *V) {
    qnext_model *m;
    qnext_session *s;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(path, &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return NULL; }
    *V = qnext_model_config(m)->vocab_size;
    qnext_session_params sp = {.n_ctx = n + 8, .kv_type = QNEXT_KV_F32};
    float *lg = malloc((size_t)n * *V * sizeof(float));
    int ok = !qnext_session_new(m, &sp, &s, err, sizeof err);
    for (int i = 0; ok && i < n; i += one_by_one ? 1 : n) {
        int k = one_by_one ? 1 : n;
        ok = !qnext_session_feed(s, ids + i, k, lg + (size_t)i * *V, QNEXT_LOGITS_ALL, err, sizeof err);
    }
    if (!ok) { fprintf(stderr, "%s\n", err); free(lg); lg = NULL; }
    if (ok) qnext_session_free(s);
    qnext_model_close(m);
    return lg;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_models(void) {
    char err[512], path[512];
    json *refs = json_parse_file("tests/data/gguf_iq4/refs.json", err, sizeof err);
    CHECK(refs != NULL, "%s", err);
    if (!refs) return;
    json *files = json_get(refs, "files");
    for (size_t f = 0; files && f < files->n; f++) {
        json *e = files->items[f];
        const char *name = json_get(e, "gguf")->str, *ftype = json_get(e, "ftype")->str;
        json *jp = json_get(e, "prompt");
        int n = (int)jp->n, rows = 0, V = 0;
        int32_t *ids = malloc(n * sizeof *ids);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)jp->items[i]->num;
        snprintf(path, sizeof path, "tests/data/gguf_iq4/%s", json_get(e, "logits")->str);
        float *want = npy_load_f32(path, &rows, &V);
        snprintf(path, sizeof path, "tests/data/gguf_iq4/%s", name);
        for (int mode = 0; mode < (g_reference ? 1 : 2) && want; mode++) {
            int V2 = 0;
            float *got = run(path, ids, n, mode, &V2);
            CHECK(got && V2 == V && rows == n, "%s did not run", name);
            if (!got || V2 != V || rows != n) { free(got); continue; }
            double *er = malloc(n * sizeof *er), mx = 0;
            int agree = 0;
            for (int r = 0; r < n; r++) {
                er[r] = rel_l2(got + (size_t)r * V, want + (size_t)r * V, V);
                if (!(er[r] <= mx)) mx = er[r];
                int a = 0, b = 0;
                for (int j = 1; j < V; j++) {
                    if (got[(size_t)r * V + j] > got[(size_t)r * V + a]) a = j;
                    if (want[(size_t)r * V + j] > want[(size_t)r * V + b]) b = j;
                }
                agree += a == b;
            }
            qsort(er, n, sizeof *er, cmp_d);
            double med = er[n / 2], top1 = (double)agree / n;
            printf("%s%s: max rel L2 %.2e, median %.2e, top-1 %.3f (%s)\n", name, mode ? " token by token" : "", mx, med,
                   top1, g_reference ? "reference kernels" : "fast kernels");
            if (g_reference) CHECK(mx <= 1e-4, "%s: reference kernels, max rel L2 %.3e", name, mx);
            else if (!strcmp(ftype, "IQ4_XS") && !mode && gemm_amx_mode()) CHECK(mx <= 0.03, "%s: max rel L2 %.3e", name, mx);
            else if (!strcmp(ftype, "IQ4_XS")) CHECK(med <= 0.05 && top1 >= 0.9, "%s: median %.3e, top-1 %.3f", name, med, top1);
            else CHECK(med <= 0.1 && top1 >= 0.8, "%s: median %.3e, top-1 %.3f", name, med, top1);
            free(er);
            free(got);
        }
        free(want);
        free(ids);
    }
    json_free(refs);
}

int main(int argc, char **argv) {
    const char *k = getenv("QNEXT_KERNELS");
    g_reference = k && !strcmp(k, "reference");
    if (!g_reference) {
        const int types[3] = {QUANT_IQ4_XS, QUANT_IQ4_NL, QUANT_MXFP4};
        for (int i = 0; i < 3; i++) {
            test_dot(types[i], 256);
            test_dot(types[i], 4096);
            test_matmul(types[i]);
        }
    }
    test_models();
    if (g_reference) return tu_finish("test_gguf_iq4 (reference kernels)");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "QNEXT_KERNELS=reference '%s'", argc > 0 ? argv[0] : "build/test_gguf_iq4");
    CHECK(system(cmd) == 0, "the reference-kernel run failed");
    return tu_finish("test_gguf_iq4");
}
