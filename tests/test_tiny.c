/* test_tiny.c - the shipped qnext-tiny model against the references its training script
 * recorded with transformers (tests/data/tiny_refs.json, fp32 compute on the bf16 weights):
 *   - validation perplexity over 1024 held-out tokens within 0.5%;
 *   - greedy continuations of the six prompts identical to transformers' (until a step
 *     whose reference top-2 margin is below 1e-3, where fp32 rounding may decide);
 *   - next-token argmax at every validation position whose margin exceeds 0.01;
 *   - the MTP head's draft argmax where its margin exceeds 0.01, with the prompt fed in
 *     pieces so the MTP cache is filled by the prompt path. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qnext.h"
#include "test_util.h"
#include "util/json.h"

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

int main(void) {
    char err[512];
    json *ref = json_parse_file("tests/data/tiny_refs.json", err, sizeof err);
    CHECK(ref != NULL, "%s", err);
    if (!ref) return tu_finish("test_tiny");
    qnext_model *m;
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open("models/qnext-tiny", &mp, &m, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    const int V = qnext_model_config(m)->vocab_size;
    json *val = json_get(ref, "val");
    int n;
    int32_t *ids = ids_of(json_get(val, "ids"), &n);
    float *lg = malloc(sizeof(float) * (size_t)V * n);

    /* perplexity from one forward over the validation tokens */
    qnext_session_params sp = {.n_ctx = n + 64, .mtp = 1};
    qnext_session *s;
    CHECK(!qnext_session_new(m, &sp, &s, err, sizeof err), "%s", err);
    CHECK(!qnext_session_feed(s, ids, n, lg, QNEXT_LOGITS_ALL, err, sizeof err), "%s", err);
    double nll = 0;
    for (int i = 1; i < n; i++) {
        const float *row = lg + (size_t)(i - 1) * V;
        float mx = row[argmax(row, V)];
        double z = 0;
        for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
        nll += -((double)row[ids[i]] - mx - log(z));
    }
    double ppl = exp(nll / (n - 1)), want = json_get(val, "ppl")->num;
    printf("validation perplexity: qnext %.4f, transformers %.4f (%+.3f%%)\n", ppl, want, 100 * (ppl / want - 1));
    CHECK(fabs(ppl / want - 1) < 0.005, "perplexity %.4f vs %.4f", ppl, want);
    json *am = json_get(val, "main_argmax"), *mm = json_get(val, "main_margin");
    int checked = 0;
    for (int i = 0; i < n; i++) {
        if (mm->items[i]->num <= 0.01) continue;
        checked++;
        CHECK(argmax(lg + (size_t)i * V, V) == (int)am->items[i]->num, "val position %d: argmax differs", i);
    }
    printf("next-token argmax: %d positions with margin > 0.01 checked\n", checked);

    /* MTP drafts: feed in pieces of 16; after each piece ending at b, draft(ids[b]) is the
     * draft at position b-1 */
    json *da = json_get(json_get(ref, "mtp"), "draft_argmax"), *dm = json_get(json_get(ref, "mtp"), "draft_margin");
    float *d = malloc(sizeof(float) * V);
    qnext_session_reset(s);
    int drafts = 0, agree = 0;
    for (int b = 16; b < n; b += 16) {
        qnext_session_feed(s, ids + b - 16, 16, NULL, QNEXT_LOGITS_NONE, err, sizeof err);
        CHECK(!qnext_session_mtp_draft(s, ids[b], d, err, sizeof err), "%s", err);
        int p = b - 1;
        if (dm->items[p]->num <= 0.01) continue;
        drafts++;
        agree += argmax(d, V) == (int)da->items[p]->num;
        CHECK(argmax(d, V) == (int)da->items[p]->num, "MTP draft at %d: %d vs %d", p, argmax(d, V),
              (int)da->items[p]->num);
    }
    printf("MTP drafts: %d/%d argmax equal to the reference\n", agree, drafts);
    qnext_session_free(s);

    /* greedy continuations: prompt in one piece, then one token at a time */
    json *gr = json_get(ref, "greedy");
    for (size_t g = 0; g < gr->n; g++) {
        int np, nc;
        int32_t *prompt = ids_of(json_get(gr->items[g], "prompt_ids"), &np);
        int32_t *cont = ids_of(json_get(gr->items[g], "continuation_ids"), &nc);
        json *margins = json_get(gr->items[g], "margins");
        qnext_session_params gp = {.n_ctx = np + nc + 8};
        CHECK(!qnext_session_new(m, &gp, &s, err, sizeof err), "%s", err);
        qnext_session_feed(s, prompt, np, lg, QNEXT_LOGITS_LAST, err, sizeof err);
        int same = 0;
        for (int i = 0; i < nc; i++) {
            int32_t t = argmax(lg, V);
            if (t != cont[i]) {
                CHECK(margins->items[i]->num < 1e-3, "prompt %zu step %d: %d vs %d (margin %.4f)", g, i, t, cont[i],
                      margins->items[i]->num);
                break;
            }
            same++;
            qnext_session_feed(s, &t, 1, lg, QNEXT_LOGITS_LAST, err, sizeof err);
        }
        printf("greedy prompt %zu: %d/%d tokens identical\n", g, same, nc);
        qnext_session_free(s);
        free(prompt);
        free(cont);
    }
    /* speculative decoding with the MTP head: the same greedy tokens in fewer passes */
    {
        float *two = malloc(sizeof(float) * 2 * V);
        long passes = 0, acc = 0;
        for (size_t g = 0; g < 3; g++) {
            int np, nc;
            int32_t *prompt = ids_of(json_get(gr->items[g], "prompt_ids"), &np);
            int32_t *cont = ids_of(json_get(gr->items[g], "continuation_ids"), &nc);
            qnext_session_params gp = {.n_ctx = np + nc + 8, .mtp = 1};
            CHECK(!qnext_session_new(m, &gp, &s, err, sizeof err), "%s", err);
            qnext_session_feed(s, prompt, np, lg, QNEXT_LOGITS_LAST, err, sizeof err);
            int32_t out[64];
            int no = 0;
            int32_t t = argmax(lg, V);
            out[no++] = t;
            while (no < nc) {
                qnext_session_mtp_draft(s, t, d, err, sizeof err);
                int32_t pair[2] = {t, argmax(d, V)};
                CHECK(!qnext_session_verify(s, pair, 2, two, err, sizeof err), "%s", err);
                passes++;
                int32_t nx = argmax(two, V);
                if (nx == pair[1]) {
                    acc++;
                    out[no++] = nx;
                    if (no >= nc) break;
                    t = argmax(two + V, V);
                } else {
                    qnext_session_accept(s, 1, err, sizeof err);
                    t = nx;
                }
                out[no++] = t;
            }
            int same = 0;
            while (same < nc && out[same] == cont[same]) same++;
            CHECK(same == nc, "speculative greedy, prompt %zu: first difference at %d", g, same);
            qnext_session_free(s);
            free(prompt);
            free(cont);
        }
        printf("speculative (MTP) greedy: %ld of %ld drafts accepted\n", acc, passes);
        CHECK(acc > 0, "no MTP draft was ever accepted");
        free(two);
    }
    free(d);
    free(lg);
    free(ids);
    qnext_model_close(m);
    json_free(ref);
    return tu_finish("test_tiny");
}
