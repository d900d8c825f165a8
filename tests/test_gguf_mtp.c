/* test_gguf_mtp.c - the MTP (nextn) block of qwen3next GGUF files drives the same
 * multi-token-prediction head as the safetensors checkpoint.
 *
 * The GGUFs are written at test time by `qnext quantize` (quantize_model), which keeps the
 * MTP layer as llama.cpp's converter does (block n_layers, nextn.* tensors, norms + 1;
 * checked byte for byte against llama.cpp's own output in test_gguf_models).
 * Sessions use an f32 KV cache (a GGUF model's default is bf16) so that the same weights give
 * the same numbers. References:
 *   - tests/fixtures/mha_sharded_mtp/mtp_logits.npy: transformers' MTP drafts (test_mtp.c).
 *     Its weights are bf16, so the BF16 GGUF stores the same values: drafts token by token
 *     within 1e-3 of transformers (the bound of test_mtp) and within 1e-6 of the
 *     safetensors run of the same weights (the first 100 drafts);
 *   - tests/data/tiny_refs.json: transformers' draft argmax and margin of models/qnext-tiny
 *     over the first 256 tokens of its validation text. BF16 GGUF: drafts within 1e-6 of the safetensors run and
 *     every argmax with margin > 0.01 equal to transformers'. Q8_0 GGUF: the draft argmax
 *     agrees with transformers' on >= 90% of those positions (quantization moves logits);
 *   - greedy generation: `qnext generate --draft mtp` on the GGUFs prints the same ids as
 *     plain greedy on the same file, and (BF16) as transformers' greedy continuation until a
 *     step whose reference top-2 margin is below 1e-3;
 *   - malformed nextn blocks: a missing nextn norm is an error naming it, two declared MTP
 *     layers are refused, a declared block without eh_proj opens without MTP. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/quant.h"
#include "model/gguf.h"
#include "model/quantize.h"
#include "npy.h"
#include "qnext.h"
#include "test_util.h"
#include "util/json.h"

static char g_tmp[256];

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i;
    return b;
}

static int32_t *ids_of(const json *a, int *n) {
    *n = (int)a->n;
    int32_t *v = malloc(sizeof(int32_t) * (a->n + 1));
    for (size_t i = 0; i < a->n; i++) v[i] = (int32_t)a->items[i]->num;
    return v;
}

static int quantize_to(const char *dir, const char *out, int mix) {
    char err[512];
    quantize_params p = {.input_dir = dir, .output_path = out, .mix = mix, .quiet = 1};
    int rc = quantize_model(&p, err, sizeof err);
    CHECK(rc == 0, "quantize %s: %s", dir, err);
    return rc == 0;
}

/* MTP drafts of a model: the prompt is fed `piece` tokens at a time, and after each piece
 * ending at b the draft for (hidden state at b-1, token ids[b]) is kept as row b-1 (rows of
 * other positions stay unset). Returns [n-1][V] or NULL. */
static float *drafts(const char *path, const int32_t *ids, int n, int piece, int *V_out) {
    qnext_model *m;
    qnext_session *s;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(path, &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return NULL; }
    CHECK(qnext_model_config(m)->n_mtp_layers == 1, "%s: no MTP layer read", path);
    int V = qnext_model_config(m)->vocab_size;
    /* f32 KV cache: GGUF models default to bf16, safetensors to f32 */
    qnext_session_params sp = {.n_ctx = n + 8, .mtp = 1, .kv_type = QNEXT_KV_F32};
    float *d = calloc((size_t)(n - 1) * V, sizeof(float));
    if (qnext_session_new(m, &sp, &s, err, sizeof err)) { fprintf(stderr, "%s\n", err); qnext_model_close(m); free(d); return NULL; }
    for (int b = piece; b < n; b += piece) {
        CHECK(!qnext_session_feed(s, ids + b - piece, piece, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_mtp_draft(s, ids[b], d + (size_t)(b - 1) * V, err, sizeof err), "%s", err);
    }
    qnext_session_free(s);
    qnext_model_close(m);
    *V_out = V;
    return d;
}

/* 1: the random MTP fixture, token by token, against transformers and the safetensors. */
static void test_fixture(void) {
    const char *dir = "tests/fixtures/mha_sharded_mtp";
    char out[512], err[512];
    snprintf(out, sizeof out, "%s_mha_bf16.gguf", g_tmp);
    json *ref = json_parse_file("tests/fixtures/mha_sharded_mtp/ref.json", err, sizeof err);
    CHECK(ref != NULL, "%s", err);
    int rows, cols;
    float *want = npy_load_f32("tests/fixtures/mha_sharded_mtp/mtp_logits.npy", &rows, &cols);
    if (!ref || !want || !quantize_to(dir, out, QMIX_BF16)) { json_free(ref); free(want); return; }
    int n;
    int32_t *ids = ids_of(json_get(ref, "prompt"), &n);
    if (n > 101) n = 101; /* 100 drafts keep the test short under the sanitizers */
    int V1 = 0, V2 = 0;
    float *a = drafts(out, ids, n, 1, &V1), *b = drafts(dir, ids, n, 1, &V2);
    CHECK(a && b && V1 == V2 && V1 == cols && rows >= n - 1, "MTP fixture: BF16 GGUF or safetensors did not run");
    if (a && b && V1 == V2 && V1 == cols && rows >= n - 1) {
        double vs_tf = 0, vs_st = 0;
        for (int p = 0; p < n - 1; p++) {
            double e = rel_l2(a + (size_t)p * V1, want + (size_t)p * V1, V1);
            if (e > vs_tf) vs_tf = e;
            e = rel_l2(a + (size_t)p * V1, b + (size_t)p * V1, V1);
            if (e > vs_st) vs_st = e;
        }
        printf("mha_sharded_mtp BF16 GGUF drafts: worst rel L2 %.2e vs transformers, %.2e vs safetensors (%d positions)\n",
               vs_tf, vs_st, n - 1);
        CHECK(vs_tf < 1e-3, "GGUF drafts vs transformers: rel L2 %.3e", vs_tf);
        CHECK(vs_st <= 1e-6, "GGUF drafts vs safetensors: rel L2 %.3e", vs_st);
    }
    free(a); free(b); free(ids); free(want);
    json_free(ref);
    remove(out);
}

/* 2: the trained tiny model, BF16 and Q8_0, over its validation text. */
static void test_tiny(const json *tref, const char *bf16, const char *q8) {
    int n;
    int32_t *ids = ids_of(json_get(json_get(tref, "val"), "ids"), &n);
    if (n > 257) n = 257; /* 256 draft positions keep the test short */
    const int piece = 4;
    json *da = json_get(json_get(tref, "mtp"), "draft_argmax"), *dm = json_get(json_get(tref, "mtp"), "draft_margin");
    int V0 = 0, V1 = 0, V2 = 0;
    float *st = drafts("models/qnext-tiny", ids, n, piece, &V0);
    float *b16 = drafts(bf16, ids, n, piece, &V1);
    float *q = drafts(q8, ids, n, piece, &V2);
    CHECK(st && b16 && q && V0 == V1 && V0 == V2, "qnext-tiny: a model did not run");
    if (st && b16 && q && V0 == V1 && V0 == V2) {
        const int V = V0;
        double worst = 0;
        int checked = 0, bf_agree = 0, q_agree = 0, q_vs_st = 0, all = 0;
        for (int b = piece; b < n; b += piece) {
            int p = b - 1;
            const float *rs = st + (size_t)p * V, *rb = b16 + (size_t)p * V, *rq = q + (size_t)p * V;
            double e = rel_l2(rb, rs, V);
            if (e > worst) worst = e;
            all++;
            q_vs_st += argmax(rq, V) == argmax(rs, V);
            if (dm->items[p]->num <= 0.01) continue;
            checked++;
            int want = (int)da->items[p]->num;
            bf_agree += argmax(rb, V) == want;
            q_agree += argmax(rq, V) == want;
        }
        printf("qnext-tiny BF16 GGUF drafts: worst rel L2 %.2e vs safetensors over %d positions; argmax = transformers' "
               "at %d/%d (margin > 0.01)\n", worst, all, bf_agree, checked);
        printf("qnext-tiny Q8_0 GGUF drafts: argmax = transformers' at %d/%d (margin > 0.01), = safetensors' at %d/%d\n",
               q_agree, checked, q_vs_st, all);
        CHECK(checked > 30, "only %d reference drafts with margin > 0.01", checked);
        CHECK(worst <= 1e-6, "BF16 GGUF drafts differ from the safetensors drafts (%.3e)", worst);
        CHECK(bf_agree == checked, "BF16 GGUF: %d of %d draft argmax differ from transformers", checked - bf_agree, checked);
        CHECK(q_agree >= 0.9 * checked, "Q8_0 GGUF: draft argmax agrees at only %d of %d", q_agree, checked);
    }
    free(st); free(b16); free(q); free(ids);
}

/* Runs `qnext generate` and reads the ids it prints; returns the count or -1. */
static int generate_cli(const char *model, const int32_t *prompt, int np, int n, int mtp, int32_t *out) {
    const char *bin = getenv("QNEXT_BIN");
    if (!bin) bin = "build/qnext";
    char cmd[8192];
    int o = snprintf(cmd, sizeof cmd, "'%s' generate -m '%s' -n %d %s --ids \"", bin, model, n, mtp ? "--draft mtp" : "");
    for (int i = 0; i < np && o < (int)sizeof cmd - 16; i++) o += snprintf(cmd + o, sizeof cmd - o, "%s%d", i ? " " : "", prompt[i]);
    snprintf(cmd + o, sizeof cmd - o, "\" 2>/dev/null");
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    int k = 0, v;
    while (k < n && fscanf(f, "%d", &v) == 1) out[k++] = v;
    return pclose(f) == 0 ? k : -1;
}

/* 3: speculative greedy with the GGUF's MTP head gives the plain greedy ids. */
static void test_generate(const json *tref, const char *bf16, const char *q8) {
    json *gr = json_get(tref, "greedy");
    const char *files[2] = {bf16, q8};
    for (size_t g = 0; g < 2 && g < gr->n; g++) {
        int np, nc;
        int32_t *prompt = ids_of(json_get(gr->items[g], "prompt_ids"), &np);
        int32_t *cont = ids_of(json_get(gr->items[g], "continuation_ids"), &nc);
        json *margins = json_get(gr->items[g], "margins");
        if (nc > 24) nc = 24;
        for (int f = 0; f < 2; f++) {
            int32_t plain[64], spec[64];
            int a = generate_cli(files[f], prompt, np, nc, 0, plain), b = generate_cli(files[f], prompt, np, nc, 1, spec);
            CHECK(a == nc && b == nc, "generate on %s: %d and %d ids of %d", files[f], a, b, nc);
            if (a != nc || b != nc) continue;
            CHECK(!memcmp(plain, spec, nc * sizeof(int32_t)), "prompt %zu, %s: --draft mtp ids differ from greedy", g,
                  f ? "Q8_0" : "BF16");
            if (f == 0) {
                int same = 0;
                while (same < nc && plain[same] == cont[same]) same++;
                CHECK(same == nc || margins->items[same]->num < 1e-3, "prompt %zu BF16: greedy differs from transformers at %d", g,
                      same);
                printf("prompt %zu: BF16 GGUF greedy = transformers for %d/%d tokens; --draft mtp = greedy on BF16 and Q8_0\n",
                       g, same, nc);
            }
        }
        free(prompt);
        free(cont);
    }
}

/* 4: malformed nextn blocks, rewritten from a good file. */
enum { V_DROP, V_TWO_MTP };

static int write_variant(const gguf_file *g, const char *path, int what, const char *target) {
    char err[256];
    gguf_writer *w = gguf_writer_open(path, err, sizeof err);
    if (!w) return 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        uint32_t u = kv->v.u32;
        if (what == V_TWO_MTP && (!strcmp(kv->key, "qwen3next.block_count") || !strcmp(kv->key, "qwen3next.nextn_predict_layers")))
            u += 1;
        switch (kv->type) {
        case GGUF_TYPE_STRING: gguf_writer_add_str_len(w, kv->key, kv->str.str, kv->str.len); break;
        case GGUF_TYPE_UINT32: gguf_writer_add_u32(w, kv->key, u); break;
        case GGUF_TYPE_FLOAT32: gguf_writer_add_f32(w, kv->key, kv->v.f32); break;
        case GGUF_TYPE_BOOL: gguf_writer_add_bool(w, kv->key, kv->v.u8); break;
        default: break; /* a file without a tokenizer holds only these */
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (what == V_DROP && !strcmp(t->name, target)) continue;
        gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
    }
    gguf_writer_write_header(w);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (what == V_DROP && !strcmp(t->name, target)) continue;
        gguf_writer_write_tensor(w, t->data, t->nbytes);
    }
    return gguf_writer_close(w, err, sizeof err) == 0;
}

static void test_malformed(void) {
    char good[512], bad[512], err[512];
    snprintf(good, sizeof good, "%s_mha_q8.gguf", g_tmp);
    snprintf(bad, sizeof bad, "%s_bad.gguf", g_tmp);
    if (!quantize_to("tests/fixtures/mha_sharded_mtp", good, QMIX_Q8_0)) return;
    gguf_file *g;
    CHECK(gguf_open(good, &g, err, sizeof err) == 0, "%s", err);
    if (!g) return;
    struct { int what; const char *target; qnext_status want; const char *msg; int mtp; } cases[] = {
        {V_DROP, "blk.6.nextn.hnorm.weight", QNEXT_ERR_FORMAT, "tensor 'blk.6.nextn.hnorm.weight' is missing", 0},
        {V_DROP, "blk.6.attn_k.weight", QNEXT_ERR_FORMAT, "tensor 'blk.6.attn_k.weight' is missing", 0},
        {V_DROP, "blk.6.ffn_down_exps.weight", QNEXT_ERR_FORMAT, "tensor 'blk.6.ffn_down_exps.weight' is missing", 0},
        {V_TWO_MTP, "", QNEXT_ERR_CONFIG, "2 MTP (nextn) layers declared", 0},
        {V_DROP, "blk.6.nextn.eh_proj.weight", QNEXT_OK, "", 0},
        {V_DROP, "blk.6.nextn.shared_head_norm.weight", QNEXT_OK, "", 1}, /* falls back to output_norm */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_variant(g, bad, cases[i].what, cases[i].target), "writing variant %zu", i);
        qnext_model *m = NULL;
        qnext_model_params mp = {.quiet = 1};
        err[0] = 0;
        qnext_status st = qnext_model_open(bad, &mp, &m, err, sizeof err);
        CHECK(st == cases[i].want, "case %zu: status %d, want %d (%s)", i, st, cases[i].want, err);
        CHECK(strstr(err, cases[i].msg) != NULL, "case %zu: message '%s' lacks '%s'", i, err, cases[i].msg);
        if (m) {
            CHECK(qnext_model_config(m)->n_layers == 6, "case %zu: %d layers", i, qnext_model_config(m)->n_layers);
            CHECK(qnext_model_config(m)->n_mtp_layers == cases[i].mtp, "case %zu: %d MTP layers", i,
                  qnext_model_config(m)->n_mtp_layers);
        }
        qnext_model_close(m);
    }
    gguf_close(g);
    remove(bad);
    remove(good);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qnext_test_gguf_mtp_%d", (int)getpid());
    char err[512], bf16[512], q8[512];
    test_fixture();
    json *tref = json_parse_file("tests/data/tiny_refs.json", err, sizeof err);
    CHECK(tref != NULL, "%s", err);
    snprintf(bf16, sizeof bf16, "%s_tiny_bf16.gguf", g_tmp);
    snprintf(q8, sizeof q8, "%s_tiny_q8_0.gguf", g_tmp);
    if (tref && quantize_to("models/qnext-tiny", bf16, QMIX_BF16) && quantize_to("models/qnext-tiny", q8, QMIX_Q8_0)) {
        test_tiny(tref, bf16, q8);
        test_generate(tref, bf16, q8);
    }
    remove(bf16);
    remove(q8);
    json_free(tref);
    test_malformed();
    return tu_finish("test_gguf_mtp");
}
