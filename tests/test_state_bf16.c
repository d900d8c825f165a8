/* test_state_bf16.c - sessions whose DeltaNet recurrent states are stored in bf16
 * (qnext_session_params.state_type = QNEXT_STATE_BF16).
 *
 * The reference is the f32-state session of the same model (itself checked against
 * transformers by test_fixtures and test_tiny): a prompt (the chunked delta rule) and then
 * single tokens (the recurrence) must give logits within bf16's precision of it. Snapshots
 * must restore a bf16 session exactly, speculative verify/accept must keep what plain feeding
 * keeps, a batch may mix the two types, the reported state memory must be the closed form, and a
 * bad state type is an error.
 * qnext-tiny (dk = dv = 64) and v5_layer_types (16 / 32) take the AVX-512 kernels where the CPU
 * has them; mha_sharded_mtp (24 / 24) always takes the plain C path. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h" /* white-box: where a snapshot's buffer came from */
#include "qnext.h"
#include "test_util.h"

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / den);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Restores snap into s, feeds n tokens one at a time, and checks each step's logits equal
 * want[t] (V floats each) bit for bit. */
static void check_restored(qnext_session *s, const qnext_snapshot *snap, const int32_t *toks, int n,
                           const float *want, int V, const char *what) {
    char err[512];
    float *l = malloc(sizeof(float) * V);
    CHECK(!qnext_session_restore(s, snap, err, sizeof err), "%s: %s", what, err);
    for (int t = 0; t < n; t++) {
        CHECK(!qnext_session_feed(s, toks + t, 1, l, QNEXT_LOGITS_LAST, err, sizeof err), "%s: %s", what, err);
        CHECK(!memcmp(l, want + (size_t)t * V, sizeof(float) * V), "%s: step %d after restore differs", what, t);
    }
    free(l);
}

static void check_model(const char *dir, int has_mtp) {
    qnext_model *m;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(dir, &mp, &m, err, sizeof err)) { CHECK(0, "%s: %s", dir, err); return; }
    const qnext_config *c = qnext_model_config(m);
    const int V = c->vocab_size;
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = (i * 37 + 11) % V;

    qnext_session_params p32 = {.n_ctx = 128, .n_ubatch = 64}, p16 = p32;
    p16.state_type = QNEXT_STATE_BF16;
    qnext_session *a, *b;
    CHECK(!qnext_session_new(m, &p32, &a, err, sizeof err), "%s", err);
    CHECK(!qnext_session_new(m, &p16, &b, err, sizeof err), "%s", err);

    /* state memory: conv states (f32) plus nv x dk x dv per linear layer, 4 or 2 bytes */
    int n_lin = 0;
    for (int i = 0; i < c->n_layers; i++) n_lin += c->layer_type[i] == QNEXT_LAYER_LINEAR;
    const size_t conv = (size_t)(c->conv_kernel - 1) *
                        (2 * (size_t)c->lin_n_k_heads * c->lin_k_dim + (size_t)c->lin_n_v_heads * c->lin_v_dim) * 4;
    const size_t ssm = (size_t)c->lin_n_v_heads * c->lin_k_dim * c->lin_v_dim;
    qnext_session_memory ma, mb;
    qnext_session_get_memory(a, &ma);
    qnext_session_get_memory(b, &mb);
    CHECK(ma.state_bytes == n_lin * (conv + 4 * ssm) && mb.state_bytes == n_lin * (conv + 2 * ssm),
          "%s: state bytes %zu / %zu, want %zu / %zu", dir, ma.state_bytes, mb.state_bytes, n_lin * (conv + 4 * ssm),
          n_lin * (conv + 2 * ssm));

    /* a prompt, then single tokens: within bf16's precision of the f32 states */
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V), *l2 = malloc(sizeof(float) * V * 8);
    CHECK(!qnext_session_feed(a, toks, 40, la, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
    CHECK(!qnext_session_feed(b, toks, 40, lb, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
    double worst = rel_l2(lb, la, V);
    int same_top = argmax(la, V) == argmax(lb, V);
    for (int t = 40; t < 56; t++) {
        CHECK(!qnext_session_feed(a, toks + t, 1, la, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(b, toks + t, 1, lb, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        double e = rel_l2(lb, la, V);
        worst = e > worst ? e : worst;
        same_top += argmax(la, V) == argmax(lb, V);
    }
    printf("%s: bf16 states, 17 steps: worst logits rel L2 %.2e against f32 states, same top-1 %d/17\n", dir, worst,
           same_top);
    CHECK(worst < 2e-2 && worst > 0, "%s: bf16 states' logits rel L2 %.3e from f32 states'", dir, worst);

    /* a snapshot restores the bf16 states exactly */
    qnext_snapshot *snap = NULL, *snap32 = NULL;
    CHECK(!qnext_session_snapshot(b, &snap, err, sizeof err), "%s", err);
    CHECK(!qnext_session_snapshot(a, &snap32, err, sizeof err), "%s", err);
    CHECK(qnext_snapshot_bytes(snap32) - qnext_snapshot_bytes(snap) == n_lin * 2 * ssm,
          "%s: snapshot bytes %zu (bf16) vs %zu (f32)", dir, qnext_snapshot_bytes(snap), qnext_snapshot_bytes(snap32));
    CHECK(!qnext_session_feed(b, toks + 56, 6, l2, QNEXT_LOGITS_ALL, err, sizeof err), "%s", err);
    CHECK(!qnext_session_restore(b, snap, err, sizeof err), "%s", err);
    float *l3 = malloc(sizeof(float) * V * 8);
    for (int t = 0; t < 6; t++)
        CHECK(!qnext_session_feed(b, toks + 56 + t, 1, l3 + (size_t)t * V, QNEXT_LOGITS_LAST, err, sizeof err), "%s",
              err);
    /* the first of the six runs the same path both times (a prompt of 6 vs 6 single tokens
     * differ in the delta rule's form), so compare single-token continuations */
    check_restored(b, snap, toks + 56, 6, l3, V, dir);
    qnext_snapshot_free(snap);
    qnext_snapshot_free(snap32);
    qnext_session_free(a);
    qnext_session_free(b);

    /* speculative decoding on bf16 states: verify 3 tokens, keep 2, then one more token; the
     * same as feeding the 2 kept tokens one by one (up to bf16 rounding: verify rounds the
     * kept state once, plain feeding after each token) */
    if (has_mtp) {
        qnext_session_params pm = p16;
        pm.mtp = 1;
        qnext_session *v, *w;
        CHECK(!qnext_session_new(m, &pm, &v, err, sizeof err), "%s", err);
        CHECK(!qnext_session_new(m, &pm, &w, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(v, toks, 30, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(w, toks, 30, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_verify(v, toks + 30, 3, l2, err, sizeof err), "%s", err);
        CHECK(!qnext_session_accept(v, 2, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(v, toks + 40, 1, la, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(w, toks + 30, 1, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(w, toks + 31, 1, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(w, toks + 40, 1, lb, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        CHECK(qnext_session_pos(v) == 33 && qnext_session_pos(w) == 33, "%s: positions %d / %d", dir,
              qnext_session_pos(v), qnext_session_pos(w));
        double e = rel_l2(la, lb, V);
        CHECK(e < 2e-2, "%s: verify/accept on bf16 states: rel L2 %.3e from plain feeding", dir, e);
        qnext_session_free(v);
        qnext_session_free(w);
    }
    /* one batch may mix state types: an f32 and a bf16 session fed together (a prompt chunk and a
     * decode token) give what each gives alone, as test_batch checks for f32 */
    {
        qnext_session *x32, *x16, *y32, *y16;
        CHECK(!qnext_session_new(m, &p32, &x32, err, sizeof err), "%s", err);
        CHECK(!qnext_session_new(m, &p16, &x16, err, sizeof err), "%s", err);
        CHECK(!qnext_session_new(m, &p32, &y32, err, sizeof err), "%s", err);
        CHECK(!qnext_session_new(m, &p16, &y16, err, sizeof err), "%s", err);
        qnext_session *all[4] = {x32, x16, y32, y16};
        for (int i = 0; i < 4; i++)
            CHECK(!qnext_session_feed(all[i], toks, 20, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        qnext_batch_item items[2] = {{x32, toks + 20, 9, l2, QNEXT_LOGITS_LAST}, {x16, toks + 40, 1, l3, QNEXT_LOGITS_LAST}};
        CHECK(qnext_batch_feed(items, 2, err, sizeof err) == QNEXT_OK, "%s", err);
        CHECK(!qnext_session_feed(y32, toks + 20, 9, la, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(y16, toks + 40, 1, lb, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
        double e32 = rel_l2(l2, la, V), e16 = rel_l2(l3, lb, V);
        CHECK(e32 < 1e-5 && e16 < 1e-5, "%s: mixed-type batch vs alone: f32 %.3e, bf16 %.3e", dir, e32, e16);
        for (int i = 0; i < 4; i++) qnext_session_free(all[i]);
    }
    free(la);
    free(lb);
    free(l2);
    free(l3);
    qnext_model_close(m);
}

/* Freed snapshots' buffers are reused by the next snapshot of the same size (qnext_model's
 * pool): a reused buffer must hold exactly the new state. Snapshots at positions 20, 30 and 35
 * of one session, the first freed before the third is taken (which then gets its buffer);
 * restoring the third and the second must continue exactly as the live session did. */
static void check_snapshot_reuse(const char *dir, int state_type) {
    qnext_model *m;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(dir, &mp, &m, err, sizeof err)) { CHECK(0, "%s: %s", dir, err); return; }
    const int V = qnext_model_config(m)->vocab_size;
    int32_t toks[48];
    for (int i = 0; i < 48; i++) toks[i] = (i * 53 + 7) % V;
    qnext_session_params p = {.n_ctx = 64, .n_ubatch = 64, .state_type = state_type};
    qnext_session *s;
    if (qnext_session_new(m, &p, &s, err, sizeof err)) { CHECK(0, "%s", err); qnext_model_close(m); return; }
    float *live = malloc(sizeof(float) * V * 13);
    qnext_snapshot *s1, *s2, *s3;
    CHECK(!qnext_session_feed(s, toks, 20, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
    CHECK(!qnext_session_snapshot(s, &s1, err, sizeof err), "%s", err);
    CHECK(!qnext_session_feed(s, toks + 20, 10, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
    CHECK(!qnext_session_snapshot(s, &s2, err, sizeof err), "%s", err);
    for (int t = 0; t < 5; t++) /* live logits from position 30 on, one token at a time */
        CHECK(!qnext_session_feed(s, toks + 30 + t, 1, live + (size_t)t * V, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
    const uint8_t *buf1 = s1->data;
    qnext_snapshot_free(s1);
    CHECK(!qnext_session_snapshot(s, &s3, err, sizeof err), "%s", err);
    CHECK(s3->data == buf1, "%s: the third snapshot did not reuse the freed one's buffer", dir);
    for (int t = 0; t < 8; t++)
        CHECK(!qnext_session_feed(s, toks + 35 + t, 1, live + (size_t)(5 + t) * V, QNEXT_LOGITS_LAST, err, sizeof err),
              "%s", err);
    check_restored(s, s3, toks + 35, 8, live + (size_t)5 * V, V, "the reused snapshot");
    check_restored(s, s2, toks + 30, 5, live, V, "the second snapshot");
    qnext_snapshot_free(s2);
    qnext_snapshot_free(s3);
    qnext_session_free(s);
    free(live);
    qnext_model_close(m); /* frees the pooled buffers (ASan: no leak) */
}

int main(void) {
    check_snapshot_reuse("tests/fixtures/v5_layer_types", QNEXT_STATE_F32);
    check_snapshot_reuse("models/qnext-tiny", QNEXT_STATE_BF16);
    check_model("models/qnext-tiny", 1);
    check_model("tests/fixtures/v5_layer_types", 0);
    check_model("tests/fixtures/mha_sharded_mtp", 0);

    /* a state type out of range is an error, with a message */
    qnext_model *m;
    char err[512] = "";
    qnext_model_params mp = {.quiet = 1};
    if (!qnext_model_open("tests/fixtures/base_gqa", &mp, &m, err, sizeof err)) {
        qnext_session_params p = {.n_ctx = 64, .state_type = 2};
        qnext_session *s = NULL;
        CHECK(qnext_session_new(m, &p, &s, err, sizeof err) == QNEXT_ERR_ARG && strstr(err, "state_type 2"),
              "state_type 2 accepted (%s)", err);
        qnext_model_close(m);
    } else CHECK(0, "%s", err);
    return tu_finish("test_state_bf16");
}
