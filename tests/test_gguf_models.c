/* test_gguf_models.c - qwen3next GGUF models: files written by the gguf Python package load
 * and run in the engine, `qnext quantize` writes the same bytes as the package, malformed
 * model files give clear errors, and the tokenizer rebuilt from GGUF metadata tokenizes
 * like tokenizer.json.
 *
 * References (tests/data/gguf_models/, tools/make_gguf_refs.py):
 *   <fixture>.<TYPE>.gguf     written by gguf.GGUFWriter + gguf.quants.quantize from a fixture;
 *   <fixture>.<TYPE>.logits.npy  transformers' fp32 logits of the fixture prompt with the
 *                             checkpoint's weights replaced by the values the GGUF stores.
 * Checks:
 *   1. the engine on each package file reproduces its .logits.npy: max rel L2 <= 1e-4 per
 *      position on the reference kernels (QNEXT_KERNELS=reference: this program re-runs
 *      itself with it), as for the fixtures. On the fast kernels, F16/BF16 stay <= 1e-4;
 *      Q8_0 runs with activations quantized to Q8_0 (as ggml does) and AMX bf16 tiles, and
 *      these random fixtures flip a router choice for small perturbations, so the check is
 *      median rel L2 <= 0.1 and top-1 agreement >= 0.7 (measured: 0.044 / 0.82 on short_top1,
 *      0.018-0.039 / 0.91 on base_gqa); with two activation passes (act_bits 16), mapped and
 *      repacked, median rel L2 <= 1e-3, max <= 1e-2 and every top-1 equal (measured: 1.1e-4 /
 *      3.5e-4 on short_top1, 1.4e-4 / 1.5e-3 on base_gqa);
 *   2. against the fixture's fp32 logits (unquantized weights): F16/BF16 max rel L2 <= 1e-4;
 *      Q8_0 median <= 0.15 (the dequantized-weight transformers reference itself is at a
 *      median of 0.068-0.077 from them: that is the quantization's effect on these models);
 *   3. `qnext quantize --type Q8_0` of the same fixture: the same tensors, types, shapes and
 *      data bytes as the package's Q8_0 file, and the same metadata values; and the same
 *      against a file written by llama.cpp's convert_hf_to_gguf.py itself (with a tokenizer:
 *      tokens, types, merges, special ids and chat template compared too); `--type Q6_K /
 *      Q5_K_M / Q4_K_M` of base_gqa and models/qnext-tiny: every tensor's type, shape and bytes
 *      as llama-quantize wrote them (tests/data/gguf_models/llama_quantize_refs.json); `--type
 *      MXFP4_MOE / IQ4_NL` of short_top1 and `--type IQ4_XS` of the 256-wide h256 checkpoint:
 *      identical to llama-quantize's files in tests/data/gguf_iq4;
 *   4. `qnext quantize --type BF16`: logits equal to running the safetensors (rel L2 <= 1e-6);
 *   5. wrong architecture, missing key, missing tensor, wrong shape: an error naming it;
 *   6. a GGUF carrying the tokenizer metadata of tests/data/qwen3-tokenizer (written by our
 *      writer at test time, as the converter would write it) gives the ids of
 *      tests/data/tokenizer_refs.json (HF tokenizers); the chat template and special ids
 *      of models/qnext-tiny survive the round trip. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/repack.h"
#include "model/gguf.h"
#include "model/quantize.h"
#include "npy.h"
#include "qnext.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "text/tokenizer_gguf.h"
#include "util/json.h"

static int g_reference;  /* running on QNEXT_KERNELS=reference */
static char g_tmp[256];  /* scratch file prefix */

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct { double max, median, top1; } cmp_stats;

static cmp_stats compare(const float *got, const float *want, int rows, int V) {
    cmp_stats s = {0};
    double *e = malloc(rows * sizeof *e);
    int agree = 0;
    for (int r = 0; r < rows; r++) {
        e[r] = rel_l2(got + (size_t)r * V, want + (size_t)r * V, V);
        if (isnan(e[r])) e[r] = INFINITY;
        if (e[r] > s.max) s.max = e[r];
        int a = 0, b = 0;
        for (int j = 1; j < V; j++) {
            if (got[(size_t)r * V + j] > got[(size_t)r * V + a]) a = j;
            if (want[(size_t)r * V + j] > want[(size_t)r * V + b]) b = j;
        }
        agree += a == b;
    }
    qsort(e, rows, sizeof *e, cmp_d);
    s.median = e[rows / 2];
    s.top1 = (double)agree / rows;
    free(e);
    return s;
}

/* Logits of ids at every position (f32 KV cache), or NULL with a message; no_mmap reads the
 * weights into memory instead of mapping the file; repack opens it with
 * qnext_model_params.repack, and then checks that the first expert's up matrix was repacked. */
static float *run_model_bits(const char *path, const int32_t *ids, int n, int *V_out, int no_mmap, int repack,
                             int act_bits) {
    qnext_model *m;
    qnext_session *s;
    char err[512];
    qnext_model_params mp = {.quiet = 1, .no_mmap = no_mmap, .repack = repack, .act_bits = act_bits};
    if (qnext_model_open(path, &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return NULL; }
    if (repack) CHECK(m->layers[0].exp_up && m->layers[0].exp_up[0].rp != NULL,
                      "%s: opened with repack, but the expert matrices were not repacked", path);
    int V = qnext_model_config(m)->vocab_size;
    qnext_session_params sp = {.n_ctx = n + 8, .kv_type = QNEXT_KV_F32};
    float *lg = malloc((size_t)n * V * sizeof(float));
    if (qnext_session_new(m, &sp, &s, err, sizeof err)) { fprintf(stderr, "%s\n", err); qnext_model_close(m); free(lg); return NULL; }
    if (qnext_session_feed(s, ids, n, lg, QNEXT_LOGITS_ALL, err, sizeof err)) { fprintf(stderr, "%s\n", err); free(lg); lg = NULL; }
    qnext_session_free(s);
    qnext_model_close(m);
    *V_out = V;
    return lg;
}

static float *run_model_opts(const char *path, const int32_t *ids, int n, int *V_out, int no_mmap, int repack) {
    return run_model_bits(path, ids, n, V_out, no_mmap, repack, 0);
}

static float *run_model(const char *path, const int32_t *ids, int n, int *V_out, int no_mmap) {
    return run_model_opts(path, ids, n, V_out, no_mmap, 0);
}

static int32_t *fixture_prompt(const char *fixture, int n, int *ok) {
    char p[512], err[256];
    snprintf(p, sizeof p, "tests/fixtures/%s/ref.json", fixture);
    json *r = json_parse_file(p, err, sizeof err);
    json *jp = r ? json_get(r, "prompt") : NULL;
    *ok = jp && (int)jp->n >= n;
    int32_t *ids = calloc(n, sizeof *ids);
    for (int i = 0; *ok && i < n; i++) ids[i] = (int32_t)jp->items[i]->num;
    json_free(r);
    return ids;
}

/* 1 and 2: the package's files in the engine. */
static void test_package_files(json *refs) {
    json *files = json_get(refs, "files");
    CHECK(files && files->n >= 4, "refs.json lists no files");
    for (size_t i = 0; files && i < files->n; i++) {
        json *f = files->items[i];
        const char *gg = json_get_string(f, "gguf"), *fx = json_get_string(f, "fixture"), *ty = json_get_string(f, "type");
        const char *lgn = json_get_string(f, "logits");
        int64_t n;
        json_get_int(f, "n_prompt", 0, &n);
        int ok;
        int32_t *ids = fixture_prompt(fx, (int)n, &ok);
        CHECK(ok, "%s: fixture prompt shorter than %lld (regenerate with tools/make_gguf_refs.py)", gg, (long long)n);
        char path[512];
        snprintf(path, sizeof path, "tests/data/gguf_models/%s", gg);
        int V = 0;
        float *got = ok ? run_model(path, ids, (int)n, &V, 0) : NULL;
        CHECK(got != NULL, "%s: does not run", path);
        int rr, rc;
        snprintf(path, sizeof path, "tests/data/gguf_models/%s", lgn);
        float *want = npy_load_f32(path, &rr, &rc);
        snprintf(path, sizeof path, "tests/fixtures/%s/logits.npy", fx);
        int fr, fc;
        float *fp32 = npy_load_f32(path, &fr, &fc);
        if (got && want && fp32 && rr == n && rc == V && fr >= n && fc == V) {
            int is_float = !strcmp(ty, "F16") || !strcmp(ty, "BF16");
            cmp_stats a = compare(got, want, (int)n, V), b = compare(got, fp32, (int)n, V);
            printf("%-24s %-9s vs dequantized-weight reference: max %.2e median %.2e top-1 %.3f | vs fp32: max %.2e "
                   "median %.2e top-1 %.3f\n", gg, g_reference ? "reference" : "fast", a.max, a.median, a.top1, b.max,
                   b.median, b.top1);
            if (g_reference || is_float) CHECK(a.max <= 1e-4, "%s: max rel L2 %.3e > 1e-4 vs its reference", gg, a.max);
            else {
                /* one 8-bit pass (the default), as ggml does */
                CHECK(a.median <= 0.1, "%s: median rel L2 %.3e > 0.1 vs its reference", gg, a.median);
                CHECK(a.top1 >= 0.7, "%s: top-1 agreement %.3f < 0.7 vs its reference", gg, a.top1);
                /* two passes (act_bits 16) */
                snprintf(path, sizeof path, "tests/data/gguf_models/%s", gg);
                float *g16 = run_model_bits(path, ids, (int)n, &V, 0, 0, 16);
                CHECK(g16 != NULL, "%s: does not run with two activation passes", gg);
                if (g16) {
                    cmp_stats e = compare(g16, want, (int)n, V);
                    printf("%-24s 16-bit act vs dequantized-weight reference: max %.2e median %.2e top-1 %.3f\n", gg, e.max,
                           e.median, e.top1);
                    CHECK(e.median <= 1e-3 && e.max <= 1e-2, "%s 16-bit: median / max rel L2 %.3e / %.3e > 1e-3 / 1e-2 vs "
                          "its reference", gg, e.median, e.max);
                    CHECK(e.top1 == 1, "%s 16-bit: top-1 agreement %.3f < 1 vs its reference", gg, e.top1);
                }
                /* and repacked, where the CPU has the kernels */
                float *r16 = repack_available() ? run_model_bits(path, ids, (int)n, &V, 0, 1, 16) : NULL;
                if (r16) {
                    cmp_stats e = compare(r16, want, (int)n, V);
                    CHECK(e.median <= 1e-3 && e.top1 == 1, "%s 16-bit repacked: median rel L2 %.3e, top-1 %.3f vs its reference",
                          gg, e.median, e.top1);
                }
                free(g16); free(r16);
            }
            if (is_float) CHECK(b.max <= 1e-4, "%s: max rel L2 %.3e > 1e-4 vs fp32", gg, b.max);
            else CHECK(b.median <= 0.15, "%s: median rel L2 %.3e > 0.15 vs fp32", gg, b.median);
            /* Q8_0 with the matrices repacked (kernels/cpu/repack.h): the same integer sums in
             * another float order, so the same thresholds, and close to the mapped run */
            if (!strcmp(ty, "Q8_0") && !g_reference && repack_available()) {
                snprintf(path, sizeof path, "tests/data/gguf_models/%s", gg);
                float *rp = run_model_opts(path, ids, (int)n, &V, 0, 1);
                CHECK(rp != NULL, "%s: does not run repacked", gg);
                /* On a CPU with AMX, tiles take the products of the mapped run above and those
                 * of the matrices the repacked run leaves in place (widths that repack.c does
                 * not take); they round or group the activations otherwise. The comparison is
                 * then between two runs without them: every product takes the vector kernels'
                 * integer sums or the repacked ones'. */
                int amx = gemm_amx_set_mode(0);
                float *mp = amx ? run_model_opts(path, ids, (int)n, &V, 0, 0) : got;
                float *rp0 = amx ? run_model_opts(path, ids, (int)n, &V, 0, 1) : rp;
                gemm_amx_set_mode(amx);
                CHECK(mp && rp0, "%s: does not run without AMX tiles", gg);
                if (rp && mp && rp0) {
                    cmp_stats c = compare(rp, want, (int)n, V), d = compare(rp0, mp, (int)n, V);
                    printf("%-24s repacked  vs dequantized-weight reference: max %.2e median %.2e top-1 %.3f | vs "
                           "mapped: max %.2e median %.2e top-1 %.3f\n", gg, c.max, c.median, c.top1, d.max, d.median, d.top1);
                    CHECK(c.median <= 0.1 && c.top1 >= 0.7, "%s repacked: median rel L2 %.3e, top-1 %.3f vs its reference",
                          gg, c.median, c.top1);
                    CHECK(d.median <= 1e-4, "%s repacked: median rel L2 %.3e > 1e-4 against the mapped run", gg, d.median);
                }
                if (rp0 != rp) free(rp0);
                free(rp);
                if (mp != got) free(mp);
            }
        } else {
            CHECK(0, "%s: reference logits missing or of the wrong shape", gg);
        }
        free(got); free(want); free(fp32); free(ids);
    }
}

static int kv_equal(const gguf_kv *a, const gguf_kv *b) {
    if (a->type != b->type) return 0;
    switch (a->type) {
    case GGUF_TYPE_STRING: return a->str.len == b->str.len && !memcmp(a->str.str, b->str.str, a->str.len);
    case GGUF_TYPE_ARRAY:
        if (a->arr_type != b->arr_type || a->arr_n != b->arr_n) return 0;
        if (a->arr_type == GGUF_TYPE_STRING) {
            const gguf_string *x = a->arr, *y = b->arr;
            for (uint64_t i = 0; i < a->arr_n; i++)
                if (x[i].len != y[i].len || memcmp(x[i].str, y[i].str, x[i].len)) return 0;
            return 1;
        } else {
            size_t es = a->arr_type == GGUF_TYPE_UINT8 || a->arr_type == GGUF_TYPE_INT8 || a->arr_type == GGUF_TYPE_BOOL ? 1
                      : a->arr_type == GGUF_TYPE_UINT16 || a->arr_type == GGUF_TYPE_INT16                              ? 2
                      : a->arr_type == GGUF_TYPE_UINT64 || a->arr_type == GGUF_TYPE_INT64 ||
                                a->arr_type == GGUF_TYPE_FLOAT64                                                         ? 8
                                                                                                                         : 4;
            return !memcmp(a->arr, b->arr, es * a->arr_n);
        }
    case GGUF_TYPE_FLOAT32: return a->v.f32 == b->v.f32;
    case GGUF_TYPE_UINT32: return a->v.u32 == b->v.u32;
    case GGUF_TYPE_BOOL: case GGUF_TYPE_UINT8: return a->v.u8 == b->v.u8;
    default: return !memcmp(&a->v, &b->v, sizeof a->v);
    }
}

/* 3: qnext quantize Q8_0 of dir == the file `theirs` (tensors, types, shapes, bytes; every
 * metadata key of theirs but general.name / general.size_label, with the same value). */
static void test_same_bytes(const char *dir, const char *theirs, const char *label) {
    char ours[512], err[512];
    snprintf(ours, sizeof ours, "%s_q8.gguf", g_tmp);
    const char *fixture = label;
    quantize_params p = {.input_dir = dir, .output_path = ours, .mix = QMIX_Q8_0, .quiet = 1};
    CHECK(quantize_model(&p, err, sizeof err) == 0, "quantize %s: %s", dir, err);
    gguf_file *a = NULL, *b = NULL;
    CHECK(gguf_open(ours, &a, err, sizeof err) == 0, "%s", err);
    CHECK(gguf_open(theirs, &b, err, sizeof err) == 0, "%s", err);
    if (a && b) {
        CHECK(a->n_tensors == b->n_tensors, "%s: %llu tensors, the package wrote %llu", fixture,
              (unsigned long long)a->n_tensors, (unsigned long long)b->n_tensors);
        int same = 0;
        for (uint64_t i = 0; i < b->n_tensors; i++) {
            const gguf_tensor *tb = &b->tensors[i], *ta = gguf_find_tensor(a, tb->name);
            CHECK(ta != NULL, "%s: tensor %s missing", fixture, tb->name);
            if (!ta) continue;
            /* shapes compared as ggml compares them: trailing 1s do not count (llama-quantize
             * writes [H] where the converter wrote [H, 1]) */
            int ok = ta->type == tb->type && ta->nbytes == tb->nbytes;
            for (int d = 0; ok && d < GGUF_MAX_DIMS; d++) ok = ta->ne[d] == tb->ne[d];
            CHECK(ok, "%s: %s is %s [%lld, %lld, %lld], the package wrote %s [%lld, %lld, %lld]", fixture, tb->name,
                  quant_type_name(ta->type), (long long)ta->ne[0], (long long)ta->ne[1], (long long)ta->ne[2],
                  quant_type_name(tb->type), (long long)tb->ne[0], (long long)tb->ne[1], (long long)tb->ne[2]);
            if (ok) {
                int eq = !memcmp(ta->data, tb->data, ta->nbytes);
                CHECK(eq, "%s: data of %s (%s) differs from the package's", fixture, tb->name, quant_type_name(tb->type));
                same += eq;
            }
        }
        int kv_same = 0;
        for (uint64_t i = 0; i < b->n_kv; i++) {
            const gguf_kv *kb = &b->kv[i], *ka = gguf_find_key(a, kb->key);
            if (!strcmp(kb->key, "general.name") || !strcmp(kb->key, "general.size_label")) continue;
            CHECK(ka && kv_equal(ka, kb), "%s: metadata %s missing or different", fixture, kb->key);
            kv_same += ka && kv_equal(ka, kb);
        }
        for (uint64_t i = 0; i < a->n_kv; i++)
            CHECK(gguf_find_key(b, a->kv[i].key), "%s: metadata %s is not in %s", fixture, a->kv[i].key, theirs);
        printf("qnext quantize Q8_0 of %s: %d/%llu tensors byte-identical to %s, %d metadata values equal\n", fixture,
               same, (unsigned long long)b->n_tensors, theirs, kv_same);
    }
    gguf_close(a);
    gguf_close(b);
    remove(ours);
}

static uint32_t crc32_bytes(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* 3b: the K mixes against llama-quantize's own output (tools/make_llama_quant_refs.py: per
 * tensor type, shape, size and CRC-32 of the bytes llama.cpp wrote). */
static void test_llama_quantize(const json *models, const char *name, const char *dir) {
    const json *mixes = json_get(models, name);
    CHECK(mixes != NULL, "llama_quantize_refs.json has no %s", name);
    for (size_t m = 0; mixes && m < mixes->n; m++) {
        const char *mix = mixes->keys[m];
        const json *want = mixes->items[m];
        char out[512], err[512];
        snprintf(out, sizeof out, "%s_lq.gguf", g_tmp);
        quantize_params p = {.input_dir = dir, .output_path = out, .mix = quantize_mix_from_name(mix), .quiet = 1};
        CHECK(quantize_model(&p, err, sizeof err) == 0, "quantize %s %s: %s", dir, mix, err);
        gguf_file *g = NULL;
        if (gguf_open(out, &g, err, sizeof err)) { CHECK(0, "%s", err); continue; }
        CHECK(g->n_tensors == want->n, "%s %s: %llu tensors, llama-quantize wrote %zu", name, mix,
              (unsigned long long)g->n_tensors, want->n);
        int same = 0;
        for (size_t i = 0; i < want->n; i++) {
            const char *tn = want->keys[i];
            const json *w = want->items[i], *ne = json_get(w, "ne");
            const gguf_tensor *t = gguf_find_tensor(g, tn);
            int64_t nb;
            json_get_int(w, "bytes", -1, &nb);
            char crc[16];
            int ok = t && !strcmp(quant_type_name(t->type), json_get_string(w, "type")) && ne && (int)ne->n == t->n_dims;
            for (size_t d = 0; ok && d < ne->n; d++) ok = t->ne[d] == (int64_t)ne->items[d]->num; /* rank too */
            if (ok) {
                snprintf(crc, sizeof crc, "%08x", crc32_bytes(t->data, t->nbytes));
                ok = (int64_t)t->nbytes == nb && !strcmp(crc, json_get_string(w, "crc32"));
            }
            CHECK(ok, "%s %s: tensor %s differs from llama-quantize's (%s, want %s)", name, mix, tn,
                  t ? quant_type_name(t->type) : "missing", json_get_string(w, "type"));
            same += ok;
        }
        printf("qnext quantize %-6s of %s: %d/%zu tensors identical to llama-quantize's (type, shape, bytes)\n", mix,
               name, same, want->n);
        gguf_close(g);
        remove(out);
    }
}

/* 3c: the MXFP4_MOE, IQ4_NL and IQ4_XS mixes against llama-quantize's files of the same
 * checkpoints (tests/data/gguf_iq4, made by tools/make_iq4_refs.py with the llama.cpp of its
 * refs.json): every tensor's type, shape and bytes. `counted` is the mix's own type, which the
 * reference file must hold at least once. */
static void test_mix_vs_llama_quantize(const char *dir, int mix, const char *ref, int counted) {
    char out[512], err[512];
    const char *mname = quantize_mix_name(mix);
    snprintf(out, sizeof out, "%s_mix.gguf", g_tmp);
    quantize_params p = {.input_dir = dir, .output_path = out, .mix = mix, .no_tokenizer = 1, .quiet = 1};
    CHECK(quantize_model(&p, err, sizeof err) == 0, "quantize %s: %s", mname, err);
    gguf_file *mine = NULL, *theirs = NULL;
    CHECK(gguf_open(out, &mine, err, sizeof err) == 0, "%s", err);
    CHECK(gguf_open(ref, &theirs, err, sizeof err) == 0, "%s", err);
    if (mine && theirs) {
        CHECK(mine->n_tensors == theirs->n_tensors, "%s: %llu tensors, llama-quantize wrote %llu", mname,
              (unsigned long long)mine->n_tensors, (unsigned long long)theirs->n_tensors);
        int same = 0, n_counted = 0;
        for (uint64_t i = 0; i < theirs->n_tensors; i++) {
            const gguf_tensor *w = &theirs->tensors[i], *t = gguf_find_tensor(mine, w->name);
            int ok = t && t->type == w->type && t->n_dims == w->n_dims && t->nbytes == w->nbytes;
            for (int d = 0; ok && d < GGUF_MAX_DIMS; d++) ok = t->ne[d] == w->ne[d];
            ok = ok && !memcmp(t->data, w->data, w->nbytes);
            CHECK(ok, "%s: tensor %s differs from llama-quantize's (%s, want %s)", mname, w->name,
                  t ? quant_type_name(t->type) : "missing", quant_type_name(w->type));
            same += ok;
            n_counted += w->type == counted;
        }
        printf("qnext quantize %s of %s: %d/%llu tensors identical to llama-quantize's (%d %s)\n", mname, dir, same,
               (unsigned long long)theirs->n_tensors, n_counted, quant_type_name(counted));
        CHECK(n_counted > 0, "no %s tensor in the reference file %s", quant_type_name(counted), ref);
    }
    gguf_close(mine);
    gguf_close(theirs);
    remove(out);
}

/* 4: qnext quantize BF16 runs like the safetensors. */
/* --repack on a Q4_K_M file (`qnext quantize` of the 256-wide h256 checkpoint, whose experts are
 * Q4_K with rows of 256): the logits of a 24-token prompt with the matrices repacked equal the
 * mapped file's to float rounding (the same integer sums in another order). */
static void test_repack_q4_k_m(void) {
    if (!repack_available()) return;
    char out[512], err[512];
    snprintf(out, sizeof out, "%s_q4km.gguf", g_tmp);
    quantize_params p = {.input_dir = "tests/data/gguf_iq4/h256", .output_path = out, .mix = QMIX_Q4_K_M,
                         .no_tokenizer = 1, .quiet = 1};
    CHECK(quantize_model(&p, err, sizeof err) == 0, "quantize Q4_K_M of h256: %s", err);
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (i * 37 + 5) % 256;
    int V = 0, V2 = 0;
    /* both runs without AMX's tiles, which round or group the activations otherwise (they
     * would take the mapped run's products and the repacked run's unrepacked matrices) */
    int amx = gemm_amx_set_mode(0);
    float *a = run_model_opts(out, ids, 24, &V, 0, 0), *b = run_model_opts(out, ids, 24, &V2, 0, 1);
    gemm_amx_set_mode(amx);
    CHECK(a && b && V == V2, "h256 Q4_K_M: does not run mapped and repacked");
    if (a && b && V == V2) {
        cmp_stats d = compare(b, a, 24, V);
        printf("h256 Q4_K_M repacked vs mapped: max rel L2 %.2e median %.2e top-1 %.3f\n", d.max, d.median, d.top1);
        CHECK(d.max <= 1e-4 && d.top1 == 1.0, "h256 Q4_K_M repacked: max rel L2 %.3e, top-1 %.3f against the mapped run",
              d.max, d.top1);
    }
    free(a); free(b);
    remove(out);
}

static void test_bf16_equals_safetensors(const char *fixture) {
    char out[512], dir[512], err[512];
    snprintf(out, sizeof out, "%s_%s_bf16.gguf", g_tmp, fixture);
    snprintf(dir, sizeof dir, "tests/fixtures/%s", fixture);
    quantize_params p = {.input_dir = dir, .output_path = out, .mix = QMIX_BF16, .quiet = 1};
    CHECK(quantize_model(&p, err, sizeof err) == 0, "quantize %s: %s", dir, err);
    int ok, n = 48, V1 = 0, V2 = 0;
    int32_t *ids = fixture_prompt(fixture, 1, &ok);
    free(ids);
    char rp[512];
    snprintf(rp, sizeof rp, "tests/fixtures/%s/ref.json", fixture);
    json *r = json_parse_file(rp, err, sizeof err);
    json *jp = r ? json_get(r, "prompt") : NULL;
    if (jp && (int)jp->n < n) n = (int)jp->n;
    json_free(r);
    ids = fixture_prompt(fixture, n, &ok);
    float *a = ok ? run_model(out, ids, n, &V1, 0) : NULL, *b = ok ? run_model(dir, ids, n, &V2, 0) : NULL;
    CHECK(a && b && V1 == V2, "%s: BF16 GGUF or safetensors did not run", fixture);
    if (a && b && V1 == V2) {
        cmp_stats s = compare(a, b, n, V1);
        printf("qnext quantize BF16 of %s vs safetensors: max rel L2 %.2e over %d positions\n", fixture, s.max, n);
        CHECK(s.max <= 1e-6, "%s: BF16 GGUF logits differ from the safetensors run (%.3e)", fixture, s.max);
    }
    /* --no-mmap: the same bytes read into memory instead of mapped give the same logits, bit
     * for bit, for both kinds of file */
    int V3 = 0, V4 = 0;
    float *c = ok ? run_model(out, ids, n, &V3, 1) : NULL, *d = ok ? run_model(dir, ids, n, &V4, 1) : NULL;
    CHECK(a && c && V3 == V1 && !memcmp(a, c, (size_t)n * V1 * sizeof(float)), "%s: GGUF read into memory differs", fixture);
    CHECK(b && d && V4 == V2 && !memcmp(b, d, (size_t)n * V2 * sizeof(float)), "%s: safetensors read into memory differ", fixture);
    free(a); free(b); free(c); free(d); free(ids);
    remove(out);
}

/* 5: malformed model files, rewritten from a good one with one thing changed. */
enum { BAD_ARCH, BAD_NO_KEY, BAD_NO_TENSOR, BAD_SHAPE };

static int write_variant(const gguf_file *g, const char *path, int what, const char *target) {
    char err[256];
    gguf_writer *w = gguf_writer_open(path, err, sizeof err);
    if (!w) return 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        if (what == BAD_NO_KEY && !strcmp(kv->key, target)) continue;
        if (what == BAD_ARCH && !strcmp(kv->key, "general.architecture")) { gguf_writer_add_str(w, kv->key, "llama"); continue; }
        switch (kv->type) {
        case GGUF_TYPE_STRING: gguf_writer_add_str_len(w, kv->key, kv->str.str, kv->str.len); break;
        case GGUF_TYPE_UINT32: gguf_writer_add_u32(w, kv->key, kv->v.u32); break;
        case GGUF_TYPE_FLOAT32: gguf_writer_add_f32(w, kv->key, kv->v.f32); break;
        case GGUF_TYPE_BOOL: gguf_writer_add_bool(w, kv->key, kv->v.u8); break;
        default: break; /* the package's model files hold only these */
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (what == BAD_NO_TENSOR && !strcmp(t->name, target)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (what == BAD_SHAPE && !strcmp(t->name, target)) ne[1] -= 1;
        gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, ne);
    }
    gguf_writer_write_header(w);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (what == BAD_NO_TENSOR && !strcmp(t->name, target)) continue;
        size_t nb = t->nbytes;
        if (what == BAD_SHAPE && !strcmp(t->name, target))
            nb = quant_row_bytes(t->type, t->ne[0]) * (size_t)((t->ne[1] - 1) * t->ne[2] * t->ne[3]);
        gguf_writer_write_tensor(w, t->data, nb);
    }
    return gguf_writer_close(w, err, sizeof err) == 0;
}

static void test_malformed(void) {
    gguf_file *g;
    char err[512], path[512];
    snprintf(path, sizeof path, "%s_bad.gguf", g_tmp);
    CHECK(gguf_open("tests/data/gguf_models/short_top1.BF16.gguf", &g, err, sizeof err) == 0, "%s", err);
    if (!g) return;
    struct { int what; const char *target; qnext_status want; const char *msg; } cases[] = {
        {BAD_ARCH, "", QNEXT_ERR_CONFIG, "architecture 'llama' is not qwen3next"},
        {BAD_NO_KEY, "qwen3next.embedding_length", QNEXT_ERR_CONFIG, "'qwen3next.embedding_length' is missing"},
        {BAD_NO_KEY, "qwen3next.ssm.inner_size", QNEXT_ERR_CONFIG, "'qwen3next.ssm.inner_size' is missing"},
        {BAD_NO_TENSOR, "blk.0.ssm_a", QNEXT_ERR_FORMAT, "tensor 'blk.0.ssm_a' is missing"},
        {BAD_NO_TENSOR, "blk.3.ffn_down_exps.weight", QNEXT_ERR_FORMAT, "tensor 'blk.3.ffn_down_exps.weight' is missing"},
        {BAD_NO_TENSOR, "output_norm.weight", QNEXT_ERR_FORMAT, "tensor 'output_norm.weight' is missing"},
        {BAD_SHAPE, "blk.0.attn_qkv.weight", QNEXT_ERR_FORMAT, "tensor 'blk.0.attn_qkv.weight' has shape"},
        {BAD_SHAPE, "blk.3.attn_q.weight", QNEXT_ERR_FORMAT, "tensor 'blk.3.attn_q.weight' has shape"},
        {BAD_SHAPE, "blk.1.ffn_up_exps.weight", QNEXT_ERR_FORMAT, "tensor 'blk.1.ffn_up_exps.weight' has shape"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_variant(g, path, cases[i].what, cases[i].target), "writing variant %zu", i);
        qnext_model *m = NULL;
        qnext_model_params mp = {.quiet = 1};
        err[0] = 0;
        qnext_status st = qnext_model_open(path, &mp, &m, err, sizeof err);
        CHECK(st == cases[i].want && !m, "case %zu: status %d, want %d (%s)", i, st, cases[i].want, err);
        CHECK(strstr(err, cases[i].msg) != NULL, "case %zu: message '%s' lacks '%s'", i, err, cases[i].msg);
        qnext_model_close(m);
    }
    gguf_close(g);
    remove(path);
}

/* 6: tokenizer from GGUF metadata. */
static void test_tokenizer(void) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s_vocab.gguf", g_tmp);
    CHECK(quantize_write_vocab_only("tests/data/qwen3-tokenizer", path, err, sizeof err) == 0, "%s", err);
    gguf_file *g = NULL;
    CHECK(gguf_open(path, &g, err, sizeof err) == 0, "%s", err);
    qnext_tokenizer *tg = g ? tokenizer_load_gguf(g, err, sizeof err) : NULL;
    CHECK(tg != NULL, "tokenizer from GGUF: %s", err);
    qnext_tokenizer *tj = tokenizer_load_dir("tests/data/qwen3-tokenizer", err, sizeof err);
    CHECK(tj != NULL, "%s", err);
    json *refs = json_parse_file("tests/data/tokenizer_refs.json", err, sizeof err);
    json *enc = refs ? json_get(refs, "encode") : NULL;
    CHECK(enc && enc->n > 100, "tokenizer_refs.json: no encode cases");
    if (tg && tj && enc) {
        CHECK(tokenizer_vocab_size(tg) == tokenizer_vocab_size(tj), "vocab size %zu vs %zu", tokenizer_vocab_size(tg),
              tokenizer_vocab_size(tj));
        size_t same = 0;
        for (size_t i = 0; i < enc->n; i++) {
            json *c = enc->items[i], *t = json_get(c, "text"), *want = json_get(c, "ids");
            int32_t *ids = NULL;
            size_t n = 0;
            int ok = tokenizer_encode(tg, t->str, t->len, &ids, &n) == 0 && n == want->n;
            for (size_t k = 0; ok && k < n; k++) ok = ids[k] == (int32_t)want->items[k]->num;
            CHECK(ok, "GGUF tokenizer, case %zu: ids differ from tokenizers'", i);
            same += ok;
            char *text = NULL;
            size_t tl = 0;
            if (ok && tokenizer_decode(tg, ids, n, &text, &tl) == 0) {
                json *d = json_get(c, "decoded");
                CHECK(!d || (d->len == tl && !memcmp(d->str, text, tl)), "GGUF tokenizer, case %zu: decode differs", i);
            }
            free(text);
            free(ids);
        }
        printf("tokenizer from GGUF metadata: %zu/%zu reference strings give the tokenizers ids\n", same, enc->n);
        /* the converter marks an added token CONTROL (special) when tokenizer.json does or when
         * it looks like "<|...|>" (does_token_look_special): <|fim_prefix|> etc. become special */
        for (int32_t id = 151643; id < (int32_t)tokenizer_vocab_size(tj); id++) {
            const char *sp = tokenizer_id_to_token(tj, id);
            size_t L = sp ? strlen(sp) : 0;
            int looks = L >= 4 && !memcmp(sp, "<|", 2) && !memcmp(sp + L - 2, "|>", 2);
            CHECK(tokenizer_is_special(tg, id) == (tokenizer_is_special(tj, id) || looks), "special flag of %d", id);
        }
    }
    json_free(refs);
    tokenizer_free(tg);
    tokenizer_free(tj);
    gguf_close(g);
    remove(path);

    /* chat template and special ids: a directory with tokenizer_config.json */
    const char *dir = "models/qnext-tiny";
    json *tc = json_parse_file("models/qnext-tiny/tokenizer_config.json", err, sizeof err);
    if (!tc) { printf("(models/qnext-tiny has no tokenizer_config.json: template round trip not checked)\n"); return; }
    CHECK(quantize_write_vocab_only(dir, path, err, sizeof err) == 0, "%s", err);
    g = NULL;
    CHECK(gguf_open(path, &g, err, sizeof err) == 0, "%s", err);
    if (g) {
        char *tmpl = tokenizer_gguf_chat_template(g);
        const char *want = json_get_string(tc, "chat_template");
        CHECK(tmpl && want && !strcmp(tmpl, want), "chat template not carried over");
        free(tmpl);
        qnext_tokenizer *a = tokenizer_load_gguf(g, err, sizeof err), *b = tokenizer_load_dir(dir, err, sizeof err);
        CHECK(a && b, "qnext-tiny tokenizers: %s", err);
        const char *eos = json_get_string(tc, "eos_token"), *pad = json_get_string(tc, "pad_token");
        if (a && b && eos) CHECK(tokenizer_gguf_special_id(g, "eos") == tokenizer_token_id(b, eos), "eos id");
        if (a && b && pad) CHECK(tokenizer_gguf_special_id(g, "padding") == tokenizer_token_id(b, pad), "padding id");
        const char *s = "Call me Ishmael. Some years ago\xe2\x80\x94never mind how long precisely<|im_end|>\n";
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        if (a && b) {
            tokenizer_encode(a, s, strlen(s), &x, &nx);
            tokenizer_encode(b, s, strlen(s), &y, &ny);
            CHECK(nx == ny && (!nx || !memcmp(x, y, nx * sizeof *x)), "qnext-tiny: GGUF and json tokenizers differ");
        }
        free(x); free(y);
        tokenizer_free(a);
        tokenizer_free(b);
        gguf_close(g);
    }
    json_free(tc);
    remove(path);
}

int main(int argc, char **argv) {
    const char *k = getenv("QNEXT_KERNELS");
    g_reference = k && !strcmp(k, "reference");
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qnext_test_gguf_models_%d", (int)getpid());
    char err[512];
    json *refs = json_parse_file("tests/data/gguf_models/refs.json", err, sizeof err);
    CHECK(refs != NULL, "%s", err);
    if (refs) test_package_files(refs);
    json_free(refs);
    if (g_reference) return tu_finish("test_gguf_models (reference kernels)");
    test_same_bytes("tests/fixtures/short_top1", "tests/data/gguf_models/short_top1.Q8_0.gguf", "short_top1");
    test_same_bytes("tests/fixtures/base_gqa", "tests/data/gguf_models/base_gqa.Q8_0.gguf", "base_gqa");
    /* llama.cpp's own converter (convert_hf_to_gguf.py --no-mtp --outtype q8_0 at the commit in
     * refs.json, pre-tokenizer forced to qwen2 for the test vocabulary; docs/QUANT.md) of base_gqa
     * with the tok512 tokenizer: the same tensors and the same metadata, tokenizer included */
    char dir[512], src[1024], dst[1024];
    snprintf(dir, sizeof dir, "%s_bgtok", g_tmp);
    mkdir(dir, 0755);
    const char *links[][2] = {{"tests/fixtures/base_gqa", "config.json"}, {"tests/fixtures/base_gqa", "model.safetensors"},
                              {"tests/data/tok512", "tokenizer.json"}, {"tests/data/tok512", "tokenizer_config.json"}};
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    for (int i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "%s/%s/%s", cwd, links[i][0], links[i][1]);
        snprintf(dst, sizeof dst, "%s/%s", dir, links[i][1]);
        CHECK(symlink(src, dst) == 0, "symlink %s", dst);
    }
    test_same_bytes(dir, "tests/data/gguf_models/base_gqa+tok512.llama-convert.Q8_0.gguf", "base_gqa+tok512");
    json *lq = json_parse_file("tests/data/gguf_models/llama_quantize_refs.json", err, sizeof err);
    CHECK(lq != NULL, "%s", err);
    if (lq) {
        test_llama_quantize(json_get(lq, "models"), "base_gqa+tok512", dir);
        test_llama_quantize(json_get(lq, "models"), "qnext-tiny", "models/qnext-tiny");
    }
    json_free(lq);
    for (int i = 0; i < 4; i++) { snprintf(dst, sizeof dst, "%s/%s", dir, links[i][1]); remove(dst); }
    rmdir(dir);
    test_mix_vs_llama_quantize("tests/fixtures/short_top1", QMIX_MXFP4_MOE, "tests/data/gguf_iq4/short_top1.MXFP4_MOE.gguf",
                               QUANT_MXFP4);
    test_mix_vs_llama_quantize("tests/fixtures/short_top1", QMIX_IQ4_NL, "tests/data/gguf_iq4/short_top1.IQ4_NL.gguf",
                               QUANT_IQ4_NL);
    test_mix_vs_llama_quantize("tests/data/gguf_iq4/h256", QMIX_IQ4_XS, "tests/data/gguf_iq4/h256.IQ4_XS.gguf",
                               QUANT_IQ4_XS);
    test_bf16_equals_safetensors("short_top1");
    test_repack_q4_k_m();
    test_bf16_equals_safetensors("base_gqa");
    test_malformed();
    test_tokenizer();
    /* the package files once more on the plain C reference kernels, in a child process
     * (the kernel choice is made once per process) */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "QNEXT_KERNELS=reference '%s'", argc > 0 ? argv[0] : "build/test_gguf_models");
    CHECK(system(cmd) == 0, "the reference-kernel run failed");
    return tu_finish("test_gguf_models");
}
