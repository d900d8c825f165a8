/* test_sampler.c - the sampler against closed forms: greedy is the argmax, top-k 1 is the
 * argmax at any temperature, 100k draws follow softmax(logits / T) (chi-square), the
 * top-k / top-p / min-p filters keep the sets computed by hand, the penalties give the
 * hand-computed logits, logprobs are the log-softmax, and a seed fixes the draws. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"
#include "text/sampler.h"

static sampler *mk(int V, sampler_params p) {
    char err[256];
    sampler *s = sampler_new(V, &p, err, sizeof err);
    if (!s) fprintf(stderr, "sampler_new: %s\n", err);
    return s;
}

static int argmax_ref(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* Pearson chi-square of observed counts against expected probabilities. */
static double chi_square(const long *count, const double *prob, int n, long draws) {
    double x = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] == 0) { if (count[i]) return 1e30; continue; }
        double e = prob[i] * draws;
        x += (count[i] - e) * (count[i] - e) / e;
    }
    return x;
}

static void test_greedy(void) {
    srand(7);
    float lg[1000];
    sampler_params p = sampler_params_default();
    sampler *s = mk(1000, p);
    for (int t = 0; t < 20; t++) {
        for (int i = 0; i < 1000; i++) lg[i] = (float)rand() / RAND_MAX * 20 - 10;
        CHECK(sampler_sample(s, lg, NULL) == argmax_ref(lg, 1000), "greedy trial %d", t);
    }
    sampler_free(s);
    /* top_k = 1 gives the argmax at any temperature */
    p.top_k = 1;
    for (float T = 0.1f; T < 20; T *= 3) {
        p.temperature = T;
        s = mk(1000, p);
        for (int t = 0; t < 10; t++) {
            for (int i = 0; i < 1000; i++) lg[i] = (float)rand() / RAND_MAX * 4;
            CHECK(sampler_sample(s, lg, NULL) == argmax_ref(lg, 1000), "top_k=1 T=%g trial %d", T, t);
        }
        sampler_free(s);
    }
}

/* 100k draws against softmax(logits / T) over the kept set (renormalised). Critical value of
 * chi-square at p = 1e-4 is 27.9 for 7 degrees of freedom; we use 35 for df <= 7. */
static void check_distribution_bias(const char *what, sampler_params p, const float *lg, int V, const double *want,
                                    const int32_t *bias_ids, const float *bias, int n_bias) {
    enum { DRAWS = 100000 };
    sampler *s = mk(V, p);
    if (!s) { CHECK(0, "%s: sampler", what); return; }
    long count[16] = {0};
    if (n_bias) CHECK(sampler_set_logit_bias(s, bias_ids, bias, n_bias, NULL, 0) == 0, "%s: set bias", what);
    for (int i = 0; i < DRAWS; i++) count[sampler_sample(s, lg, NULL)]++;
    double maxdiff = 0;
    for (int i = 0; i < V; i++) maxdiff = fmax(maxdiff, fabs((double)count[i] / DRAWS - want[i]));
    double x2 = chi_square(count, want, V, DRAWS);
    CHECK(x2 < 35, "%s: chi-square %.2f", what, x2);
    CHECK(maxdiff < 0.006, "%s: max |freq - p| %.4f", what, maxdiff);
    sampler_free(s);
}

static void check_distribution(const char *what, sampler_params p, const float *lg, int V, const double *want) {
    check_distribution_bias(what, p, lg, V, want, NULL, NULL, 0);
}

static void test_distribution(void) {
    const float lg[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -0.5f};
    float temps[3] = {1.0f, 0.7f, 2.5f};
    for (int t = 0; t < 3; t++) {
        double want[8], z = 0;
        for (int i = 0; i < 8; i++) z += exp(lg[i] / temps[t]);
        for (int i = 0; i < 8; i++) want[i] = exp(lg[i] / temps[t]) / z;
        sampler_params p = sampler_params_default();
        p.temperature = temps[t];
        p.seed = 1234 + t;
        char what[64];
        snprintf(what, sizeof what, "softmax T=%g", temps[t]);
        check_distribution(what, p, lg, 8, want);
    }
    /* top-k 3 at T = 1.5: the three largest (ids 4, 5, 1), renormalised */
    {
        double want[8] = {0}, z = 0;
        int keep[3] = {4, 5, 1};
        for (int i = 0; i < 3; i++) z += exp(lg[keep[i]] / 1.5);
        for (int i = 0; i < 3; i++) want[keep[i]] = exp(lg[keep[i]] / 1.5) / z;
        sampler_params p = sampler_params_default();
        p.temperature = 1.5f;
        p.top_k = 3;
        p.seed = 99;
        check_distribution("top-k 3", p, lg, 8, want);
    }
}

/* Probabilities 0.4, 0.3, 0.2, 0.1 placed on permuted ids so that order is not the id order. */
static void test_filters(void) {
    const int V = 6;
    float lg[6];
    const int id_of[4] = {3, 0, 5, 1}; /* rank -> id */
    const double pr[4] = {0.4, 0.3, 0.2, 0.1};
    for (int i = 0; i < V; i++) lg[i] = -INFINITY;
    for (int r = 0; r < 4; r++) lg[id_of[r]] = (float)log(pr[r]);
    lg[2] = lg[4] = (float)log(1e-9); /* two negligible tokens */
    int32_t ids[6];
    struct { int top_k; float top_p, min_p, T; int n_keep; const char *what; } cases[] = {
        {0, 0.65f, 0, 1, 2, "top-p 0.65: 0.4 + 0.3 reaches it"},
        {0, 0.75f, 0, 1, 3, "top-p 0.75: mass before the third is 0.7 < 0.75"},
        {0, 0.3f, 0, 1, 1, "top-p 0.3: the first alone"},
        {0, 0.95f, 0, 1, 4, "top-p 0.95: mass before the fourth is 0.9"},
        {0, 1, 0.6f, 1, 2, "min-p 0.6: p >= 0.24"},
        {0, 1, 0.3f, 1, 3, "min-p 0.3: p >= 0.12"},
        {0, 1, 0.2f, 1, 4, "min-p 0.2: p >= 0.08"},
        {2, 1, 0, 1, 2, "top-k 2"},
        {3, 1, 0, 1, 3, "top-k 3"},
        /* top-k 3 first, then top-p over the renormalised 0.444, 0.333, 0.222: 0.777 >= 0.75 */
        {3, 0.75f, 0, 1, 2, "top-k 3 then top-p 0.75 (renormalised)"},
        {3, 0.8f, 0, 1, 3, "top-k 3 then top-p 0.8 (renormalised)"},
        /* T = 2: probabilities ~ sqrt(p): 0.3255, 0.2819, 0.2302, 0.1627 (+ two ~1e-5) */
        {0, 0.62f, 0, 2, 3, "T 2 then top-p 0.62: mass before the third is 0.607"},
        {0, 0.62f, 0, 1, 2, "T 1 then top-p 0.62: mass before the third is 0.7"},
        /* min-p after top-p: top-p 0.95 keeps four, min-p 0.3 then three */
        {0, 0.95f, 0.3f, 1, 3, "top-p 0.95 then min-p 0.3"},
        {0, 1, 0, 1, 6, "no filter: everything"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampler_params p = sampler_params_default();
        p.temperature = cases[c].T;
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        sampler *s = mk(V, p);
        int n = sampler_candidates(s, lg, ids);
        int32_t want[6] = {3, 0, 5, 1, 2, 4};
        int n_want = cases[c].n_keep;
        CHECK(n == n_want && !memcmp(ids, want, (size_t)n * sizeof *ids), "%s: kept %d", cases[c].what, n);
        /* and draws only ever come from the kept set */
        for (int i = 0; i < 2000; i++) {
            int32_t t = sampler_sample(s, lg, NULL);
            int ok = 0;
            for (int j = 0; j < n_want; j++) ok |= t == want[j];
            if (!ok) { CHECK(ok, "%s: drew %d outside the kept set", cases[c].what, t); break; }
        }
        sampler_free(s);
    }
}

/* The top-p shortcut (sorting only high-probability tokens) against a brute-force reference
 * on a large random vocabulary. */
static void test_top_p_large(void) {
    enum { V = 20000 };
    float *lg = malloc(V * sizeof *lg);
    int32_t *ids = malloc(V * sizeof *ids), *ref = malloc(V * sizeof *ref);
    srand(11);
    float ps[4] = {0.5f, 0.9f, 0.99f, 0.999f};
    for (int t = 0; t < 4; t++) {
        for (int i = 0; i < V; i++) lg[i] = (float)rand() / RAND_MAX * (t < 2 ? 12 : 3);
        /* brute force: order all ids by logit (ties: lower id), accumulate probabilities */
        double z = 0;
        float mx = lg[argmax_ref(lg, V)];
        for (int i = 0; i < V; i++) { ref[i] = i; z += exp((double)lg[i] - mx); }
        for (int i = 1; i < V; i++) { /* insertion sort is fine for a test */
            int32_t x = ref[i];
            int j = i - 1;
            while (j >= 0 && (lg[ref[j]] < lg[x] || (lg[ref[j]] == lg[x] && ref[j] > x))) { ref[j + 1] = ref[j]; j--; }
            ref[j + 1] = x;
        }
        int n_ref = 0;
        double acc = 0;
        while (n_ref < V && (n_ref == 0 || acc / z < ps[t])) acc += exp((double)lg[ref[n_ref++]] - mx);
        sampler_params p = sampler_params_default();
        p.temperature = 1;
        p.top_p = ps[t];
        sampler *s = mk(V, p);
        int n = sampler_candidates(s, lg, ids);
        CHECK(n == n_ref && !memcmp(ids, ref, (size_t)n * sizeof *ids), "top-p %g on %d ids: %d kept, want %d",
              ps[t], V, n, n_ref);
        sampler_free(s);
    }
    free(lg);
    free(ids);
    free(ref);
}

static void test_penalties(void) {
    const float lg[5] = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
    sampler_params p = sampler_params_default();
    p.repetition_penalty = 2;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler *s = mk(5, p);
    int32_t prompt[3] = {0, 1, 0};
    sampler_set_prompt(s, prompt, 3);
    sampler_accept(s, 1);
    sampler_accept(s, 2);
    sampler_accept(s, 2);
    float w[5];
    memcpy(w, lg, sizeof w);
    sampler_apply_penalties(s, w);
    /* id 0: prompt only: 2 / 2 = 1. id 1: prompt + once in output: -1 * 2 - 0.5 - 0.25 = -2.75.
     * id 2: twice in output: 0.5 / 2 - 0.5 - 2 * 0.25 = -0.75. ids 3, 4: unseen. */
    const float want[5] = {1.0f, -2.75f, -0.75f, 3.0f, -2.0f};
    for (int i = 0; i < 5; i++) CHECK(fabsf(w[i] - want[i]) < 1e-6f, "penalised logit %d: %g want %g", i, w[i], want[i]);
    sampler_reset_history(s);
    memcpy(w, lg, sizeof w);
    sampler_apply_penalties(s, w);
    CHECK(!memcmp(w, lg, sizeof w), "reset history removes the penalties");
    sampler_free(s);

    /* greedy sees the penalties: presence 0.5 moves the argmax from id 0 to id 1 */
    const float close[3] = {3.0f, 2.9f, 0.0f};
    p = sampler_params_default();
    p.presence_penalty = 0.5f;
    s = mk(3, p);
    CHECK(sampler_sample(s, close, NULL) == 0, "greedy without history");
    sampler_accept(s, 0);
    CHECK(sampler_sample(s, close, NULL) == 1, "greedy after a presence penalty");
    sampler_free(s);
}

/* Logit bias (OpenAI's logit_bias): added to the raw logits before the penalties, as vLLM. */
static void test_logit_bias(void) {
    char err[256];
    const float lg[4] = {1.0f, 2.0f, 0.5f, 3.0f};
    sampler_params p = sampler_params_default();
    p.n_top_logprobs = 2;
    sampler *s = mk(4, p);
    int32_t up[1] = {2};
    float plus[1] = {100};
    CHECK(sampler_set_logit_bias(s, up, plus, 1, err, sizeof err) == 0, "%s", err);
    sampler_result r;
    CHECK(sampler_sample(s, lg, &r) == 2, "greedy with +100 on id 2");
    /* logprobs stay those of the raw logits */
    double z = 0;
    for (int i = 0; i < 4; i++) z += exp((double)lg[i] - 3.0);
    CHECK(fabs(r.logprob - (0.5 - 3.0 - log(z))) < 1e-5 && r.top_ids[0] == 3, "logprobs ignore the bias");
    int32_t down[1] = {3};
    float minus[1] = {-100};
    CHECK(sampler_set_logit_bias(s, down, minus, 1, err, sizeof err) == 0, "%s", err);
    CHECK(sampler_sample(s, lg, NULL) == 1, "greedy with -100 on the argmax: the runner-up (id 1)");
    /* the same id twice: the last bias counts */
    int32_t twice[2] = {3, 3};
    float b2[2] = {-100, 0};
    CHECK(sampler_set_logit_bias(s, twice, b2, 2, err, sizeof err) == 0, "%s", err);
    CHECK(sampler_sample(s, lg, NULL) == 3, "a repeated id keeps its last bias");
    CHECK(sampler_set_logit_bias(s, NULL, NULL, 0, err, sizeof err) == 0 && sampler_sample(s, lg, NULL) == 3,
          "an empty list clears the bias");
    int32_t bad[1] = {4};
    CHECK(sampler_set_logit_bias(s, bad, plus, 1, err, sizeof err) == -1 && strstr(err, "vocabulary"),
          "an id outside the vocabulary is refused");
    float nan_bias[1] = {NAN};
    CHECK(sampler_set_logit_bias(s, up, nan_bias, 1, err, sizeof err) == -1, "a NaN bias is refused");
    sampler_free(s);

    /* bias before the repetition penalty: id 0 (in the prompt, logit 4) biased by -3 is
     * (4 - 3) / 2 = 0.5 > 0 = id 1; the other order would give 4 / 2 - 3 = -1 < 0 */
    const float two[2] = {4.0f, 0.0f};
    p = sampler_params_default();
    p.repetition_penalty = 2;
    s = mk(2, p);
    int32_t prompt[1] = {0}, id0[1] = {0};
    float m3[1] = {-3};
    sampler_set_prompt(s, prompt, 1);
    CHECK(sampler_set_logit_bias(s, id0, m3, 1, err, sizeof err) == 0, "%s", err);
    CHECK(sampler_sample(s, two, NULL) == 0, "bias is applied before the repetition penalty");
    sampler_free(s);

    /* sampling at T = 0.8 follows softmax((logits + bias) / T) */
    const float lg8[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -0.5f};
    int32_t ids[3] = {6, 4, 3};
    float bias[3] = {2.0f, -1.5f, 1.0f};
    float biased[8];
    memcpy(biased, lg8, sizeof biased);
    for (int k = 0; k < 3; k++) biased[ids[k]] += bias[k];
    double want[8], zz = 0;
    for (int i = 0; i < 8; i++) zz += exp(biased[i] / 0.8);
    for (int i = 0; i < 8; i++) want[i] = exp(biased[i] / 0.8) / zz;
    p = sampler_params_default();
    p.temperature = 0.8f;
    p.seed = 7;
    check_distribution_bias("softmax of biased logits", p, lg8, 8, want, ids, bias, 3);
}

static void test_seed_and_logprobs(void) {
    enum { V = 300, N = 2000 };
    float lg[V];
    srand(5);
    for (int i = 0; i < V; i++) lg[i] = (float)rand() / RAND_MAX * 5;
    sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    p.seed = 42;
    sampler *a = mk(V, p), *b = mk(V, p);
    p.seed = 43;
    sampler *c = mk(V, p);
    int same_ab = 1, same_ac = 1;
    int32_t first[N];
    for (int i = 0; i < N; i++) {
        int32_t ta = sampler_sample(a, lg, NULL), tb = sampler_sample(b, lg, NULL), tc = sampler_sample(c, lg, NULL);
        first[i] = ta;
        same_ab &= ta == tb;
        same_ac &= ta == tc;
    }
    CHECK(same_ab, "the same seed gives the same tokens");
    CHECK(!same_ac, "another seed gives other tokens");
    sampler_seed(a, 42);
    int again = 1;
    for (int i = 0; i < N; i++) again &= sampler_sample(a, lg, NULL) == first[i];
    CHECK(again, "re-seeding replays the draws");
    sampler_free(a);
    sampler_free(b);
    sampler_free(c);

    /* logprobs: log-softmax of the raw logits, even with penalties and temperature */
    p = sampler_params_default();
    p.temperature = 0.5f;
    p.repetition_penalty = 1.3f;
    p.n_top_logprobs = 5;
    a = mk(V, p);
    sampler_accept(a, 17);
    double z = 0;
    float mx = lg[argmax_ref(lg, V)];
    for (int i = 0; i < V; i++) z += exp((double)lg[i] - mx);
    sampler_result r;
    int32_t t = sampler_sample(a, lg, &r);
    CHECK(r.token == t, "result token");
    CHECK(fabs(r.logprob - (lg[t] - mx - log(z))) < 1e-5, "chosen logprob %g", r.logprob);
    CHECK(r.n_top == 5, "n_top %d", r.n_top);
    float sorted[V];
    memcpy(sorted, lg, sizeof sorted);
    for (int k = 0; k < 5; k++) {
        int m = argmax_ref(sorted, V);
        CHECK(r.top_ids[k] == m, "top logprob %d id %d want %d", k, r.top_ids[k], m);
        CHECK(fabs(r.top_logprobs[k] - (lg[m] - mx - log(z))) < 1e-5, "top logprob %d value", k);
        sorted[m] = -INFINITY;
    }
    sampler_free(a);
}

static void test_params(void) {
    char err[256];
    sampler_params p = sampler_params_default();
    p.temperature = -1;
    CHECK(!sampler_new(10, &p, err, sizeof err) && strstr(err, "temperature"), "negative temperature rejected");
    p = sampler_params_default();
    p.top_p = 0;
    CHECK(!sampler_new(10, &p, err, sizeof err) && strstr(err, "top_p"), "top_p 0 rejected");
    p = sampler_params_default();
    p.repetition_penalty = 0;
    CHECK(!sampler_new(10, &p, err, sizeof err), "repetition_penalty 0 rejected");
    p = sampler_params_default();
    p.n_top_logprobs = 21;
    CHECK(!sampler_new(10, &p, err, sizeof err), "too many top logprobs rejected");
    CHECK(!sampler_new(0, &p, err, sizeof err), "empty vocabulary rejected");

    /* generation_config.json */
    char dir[] = "/tmp/qnext_sampler_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    char path[512];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    int32_t eos[4] = {7, 7, 7, 7};
    int n_eos = 1;
    p = sampler_params_default();
    CHECK(sampler_load_generation_config(dir, &p, eos, &n_eos, 4, err, sizeof err) == 0, "no file: 0");
    FILE *f = fopen(path, "w");
    fputs("{\"do_sample\": true, \"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8, \"min_p\": 0.05,"
          " \"repetition_penalty\": 1.1, \"eos_token_id\": [151645, 151643]}", f);
    fclose(f);
    CHECK(sampler_load_generation_config(dir, &p, eos, &n_eos, 4, err, sizeof err) == 1, "read: %s", err);
    CHECK(fabsf(p.temperature - 0.7f) < 1e-7f && p.top_k == 20 && fabsf(p.top_p - 0.8f) < 1e-7f &&
          fabsf(p.min_p - 0.05f) < 1e-7f && fabsf(p.repetition_penalty - 1.1f) < 1e-7f, "values read");
    CHECK(n_eos == 2 && eos[0] == 151645 && eos[1] == 151643, "eos list");
    f = fopen(path, "w");
    fputs("{\"do_sample\": false, \"temperature\": 0.7, \"eos_token_id\": 2}", f);
    fclose(f);
    p = sampler_params_default();
    CHECK(sampler_load_generation_config(dir, &p, eos, &n_eos, 4, err, sizeof err) == 1 && p.temperature == 0 &&
          n_eos == 1 && eos[0] == 2, "do_sample false is greedy; a single eos id");
    f = fopen(path, "w");
    fputs("{\"top_k\": \"many\"}", f);
    fclose(f);
    CHECK(sampler_load_generation_config(dir, &p, eos, &n_eos, 4, err, sizeof err) == -1 && strstr(err, "top_k"),
          "a bad value is an error: %s", err);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_greedy();
    test_distribution();
    test_filters();
    test_top_p_large();
    test_penalties();
    test_logit_bias();
    test_seed_and_logprobs();
    test_params();
    return tu_finish("test_sampler");
}
