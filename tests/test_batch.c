/* test_batch.c - continuous batching gives each session exactly what it would get alone.
 *
 * Three sessions at different positions (and one in a prompt chunk) are fed together
 * with qnext_batch_feed; their logits must equal feeding each session by itself, and
 * misuse (the same session twice, too many tokens) is an error. On base_gqa with the default
 * cache, and on v5_layer_types (head_dim 64) with the int8 cache, which is tiled where
 * attn_vnni reads it, and the bf16 cache, whose keys are tiled where attn_bf16 reads them
 * (attn.h). */
#include <math.h>
#include <stdlib.h>

#include "qnext.h"
#include "test_util.h"

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / den);
}

static void check_batch(const char *dir, int kv_type) {
    qnext_model *m;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(dir, &mp, &m, err, sizeof err)) { CHECK(0, "%s", err); return; }
    const int V = qnext_model_config(m)->vocab_size;
    int32_t prompt[100];
    for (int i = 0; i < 100; i++) prompt[i] = (i * 37 + 11) % V;
    const int lens[3] = {5, 70, 33};

    qnext_session *solo[3], *bat[3];
    qnext_session_params sp = {.n_ctx = 256, .n_ubatch = 64, .kv_type = kv_type};
    for (int i = 0; i < 3; i++) {
        CHECK(!qnext_session_new(m, &sp, &solo[i], err, sizeof err), "%s", err);
        CHECK(!qnext_session_new(m, &sp, &bat[i], err, sizeof err), "%s", err);
        qnext_session_feed(solo[i], prompt + i, lens[i], NULL, QNEXT_LOGITS_NONE, err, sizeof err);
        qnext_session_feed(bat[i], prompt + i, lens[i], NULL, QNEXT_LOGITS_NONE, err, sizeof err);
    }
    float *a = malloc(sizeof(float) * V * 12), *b = malloc(sizeof(float) * V * 12);
    /* Four decode steps: all three sessions one token each, in one pass. */
    for (int step = 0; step < 4; step++) {
        qnext_batch_item items[3];
        int32_t tok[3];
        for (int i = 0; i < 3; i++) {
            tok[i] = (step * 7 + i * 13 + 1) % V;
            items[i] = (qnext_batch_item){bat[i], &tok[i], 1, b + (size_t)i * V, QNEXT_LOGITS_LAST};
            qnext_session_feed(solo[i], &tok[i], 1, a + (size_t)i * V, QNEXT_LOGITS_LAST, err, sizeof err);
        }
        CHECK(qnext_batch_feed(items, 3, err, sizeof err) == QNEXT_OK, "%s", err);
        for (int i = 0; i < 3; i++) {
            double e = rel_l2(b + (size_t)i * V, a + (size_t)i * V, V);
            CHECK(e < 1e-6, "%s: step %d session %d: batched vs alone rel L2 %.3e", dir, step, i, e);
            CHECK(qnext_session_pos(bat[i]) == qnext_session_pos(solo[i]), "positions differ");
        }
    }
    /* A prompt chunk (all logits) next to a decode token. */
    {
        qnext_batch_item items[2] = {{bat[0], prompt + 20, 9, b, QNEXT_LOGITS_ALL},
                                     {bat[1], prompt + 3, 1, b + (size_t)9 * V, QNEXT_LOGITS_LAST}};
        CHECK(qnext_batch_feed(items, 2, err, sizeof err) == QNEXT_OK, "%s", err);
        qnext_session_feed(solo[0], prompt + 20, 9, a, QNEXT_LOGITS_ALL, err, sizeof err);
        qnext_session_feed(solo[1], prompt + 3, 1, a + (size_t)9 * V, QNEXT_LOGITS_LAST, err, sizeof err);
        for (int r = 0; r < 10; r++)
            CHECK(rel_l2(b + (size_t)r * V, a + (size_t)r * V, V) < 1e-5, "%s: mixed batch row %d differs (%.3e)", dir, r, rel_l2(b + (size_t)r * V, a + (size_t)r * V, V));
    }
    /* Misuse is an error and feeds nothing. */
    {
        int32_t t = 1;
        int p0 = qnext_session_pos(bat[0]);
        qnext_batch_item dup[2] = {{bat[0], &t, 1, NULL, 0}, {bat[0], &t, 1, NULL, 0}};
        CHECK(qnext_batch_feed(dup, 2, err, sizeof err) == QNEXT_ERR_ARG, "same session twice accepted");
        int32_t many[65] = {0};
        qnext_batch_item big[1] = {{bat[0], many, 65, NULL, 0}};
        CHECK(qnext_batch_feed(big, 1, err, sizeof err) == QNEXT_ERR_ARG, "more than n_ubatch accepted");
        CHECK(qnext_session_pos(bat[0]) == p0, "a failed batch moved the session");
    }
    for (int i = 0; i < 3; i++) { qnext_session_free(solo[i]); qnext_session_free(bat[i]); }
    free(a);
    free(b);
    qnext_model_close(m);
}

int main(void) {
    check_batch("tests/fixtures/base_gqa", QNEXT_KV_AUTO);
    check_batch("tests/fixtures/v5_layer_types", QNEXT_KV_Q8);
    check_batch("tests/fixtures/v5_layer_types", QNEXT_KV_BF16);
    return tu_finish("test_batch");
}
