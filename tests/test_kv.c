/* test_kv.c - the bf16 and 8-bit KV caches stay close to the exact f32 cache, and the
 * session reports the memory the issue promises (per token: layers x 2 x kv heads x D
 * elements; 24 KiB at bf16 for the 80B model's 12 attention layers). Two fixtures: base_gqa
 * (head_dim 32) and v5_layer_types (head_dim 64, which the attention kernels that need
 * D % 64 == 0, attn_vnni for int8 caches, take). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qnext.h"
#include "test_util.h"

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / den);
}

static void check_caches(const char *dir) {
    qnext_model *m;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(dir, &mp, &m, err, sizeof err)) { CHECK(0, "%s", err); return; }
    const qnext_config *c = qnext_model_config(m);
    const int V = c->vocab_size, n = 149;
    int32_t ids[150];
    for (int i = 0; i < n; i++) ids[i] = (i * 29 + 7) % V;
    float *ref = malloc(sizeof(float) * V * n), *got = malloc(sizeof(float) * V * n);
    const double tol[3] = {0, 5e-3, 3e-2};
    const size_t elem[3] = {4, 2, 1};
    int n_full = 0;
    for (int i = 0; i < c->n_layers; i++) n_full += c->layer_type[i] == QNEXT_LAYER_FULL;
    for (int kt = 0; kt < 3; kt++) {
        qnext_session_params sp = {.n_ctx = n, .kv_type = kt + 1}; /* QNEXT_KV_F32, BF16, Q8; a full odd context (bf16 values are stored in key pairs) */
        qnext_session *s;
        CHECK(!qnext_session_new(m, &sp, &s, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(s, ids, n, kt ? got : ref, QNEXT_LOGITS_ALL, err, sizeof err), "%s", err);
        if (kt) {
            double e = rel_l2(got, ref, (size_t)V * n);
            printf("%s: kv type %d: rel L2 vs f32 cache %.2e\n", dir, kt, e);
            CHECK(e < tol[kt], "kv type %d: rel L2 %.3e >= %.1e", kt, e, tol[kt]);
        }
        qnext_session_memory mem;
        qnext_session_get_memory(s, &mem);
        size_t want = (size_t)n_full * 2 * c->n_kv_heads * (c->head_dim * elem[kt] + (kt == 2 ? 4 : 0));
        CHECK(mem.kv_bytes_per_token == want, "kv type %d: %zu bytes per token, want %zu", kt, mem.kv_bytes_per_token, want);
        CHECK(mem.kv_bytes_max == want * n, "kv max");
        qnext_session_free(s);
    }
    /* auto on a safetensors model is the exact f32 cache */
    {
        qnext_session_params sp = {.n_ctx = 200};
        qnext_session *s0;
        qnext_session_new(m, &sp, &s0, err, sizeof err);
        qnext_session_memory mem;
        qnext_session_get_memory(s0, &mem);
        CHECK(!strcmp(mem.kv_name, "f32"), "auto kv type is %s", mem.kv_name);
        qnext_session_free(s0);
    }
    /* bad kv type */
    qnext_session_params bad = {.kv_type = 7};
    qnext_session *s;
    CHECK(qnext_session_new(m, &bad, &s, err, sizeof err) == QNEXT_ERR_ARG, "bad kv type accepted");
    free(ref);
    free(got);
    qnext_model_close(m);
}

int main(void) {
    check_caches("tests/fixtures/base_gqa");
    check_caches("tests/fixtures/v5_layer_types");
    return tu_finish("test_kv");
}
