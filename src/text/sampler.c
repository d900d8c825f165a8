/* sampler.c - see sampler.h. The candidate filters work on (logit, id) pairs in one buffer
 * allocated up front: top-k uses a bounded min-heap (O(V log k)), top-p sorts only the
 * smallest high-probability prefix that can contain its answer, and the draw walks the
 * kept candidates with a xoshiro256** uniform. */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"

typedef struct {
    float v;
    int32_t id;
} cand;

struct sampler {
    sampler_params p;
    int V;
    uint64_t rng[4];
    float *work;          /* penalised (then temperature-scaled) logits */
    cand *cands;          /* candidate buffer, V entries */
    uint8_t *in_prompt;   /* 1 when the id occurs in the prompt */
    int32_t *out_count;   /* occurrences of the id in the output */
    int32_t *seen;        /* distinct ids with in_prompt or out_count set, in first-seen order */
    int n_seen;
    int32_t *bias_ids;    /* logit bias: a sparse list, distinct ids */
    float *bias;
    int n_bias;
};

/* ------------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double uniform01(sampler *s) { return (double)(xoshiro_next(s->rng) >> 11) * (1.0 / 9007199254740992.0); }

void sampler_seed(sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

/* ------------------------------------------------------------------ parameters */

sampler_params sampler_params_default(void) {
    sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    p.repetition_penalty = 1;
    return p;
}

static int read_float(const json *cfg, const char *key, float *out, char *err, size_t errlen) {
    const json *v = json_get(cfg, key);
    double d;
    if (!v || v->type == JSON_NULL) return 1;
    if (!json_as_double(v, &d)) { snprintf(err, errlen, "generation_config.json: %s is not a number", key); return 0; }
    *out = (float)d;
    return 1;
}

int sampler_load_generation_config(const char *dir, sampler_params *p, int32_t *eos, int *n_eos, int max_eos,
                                   char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    json *cfg = json_parse_file(path, err, errlen);
    if (!cfg) return -1;
    int rc = -1;
    if (cfg->type != JSON_OBJECT) { snprintf(err, errlen, "%s: not a JSON object", path); goto done; }
    if (!read_float(cfg, "temperature", &p->temperature, err, errlen) ||
        !read_float(cfg, "top_p", &p->top_p, err, errlen) || !read_float(cfg, "min_p", &p->min_p, err, errlen) ||
        !read_float(cfg, "repetition_penalty", &p->repetition_penalty, err, errlen))
        goto done;
    const json *v = json_get(cfg, "top_k");
    if (v && v->type != JSON_NULL) {
        int64_t k;
        if (!json_as_int64(v, &k)) { snprintf(err, errlen, "generation_config.json: top_k is not an integer"); goto done; }
        p->top_k = k < 0 ? 0 : (k > 0x7fffffff ? 0x7fffffff : (int)k);
    }
    int do_sample;
    if (json_get_bool(cfg, "do_sample", 1, &do_sample) < 0) {
        snprintf(err, errlen, "generation_config.json: do_sample is not a boolean");
        goto done;
    }
    if (!do_sample) p->temperature = 0;
    v = json_get(cfg, "eos_token_id");
    if (v && v->type != JSON_NULL) {
        int n = 0;
        int64_t id;
        if (v->type == JSON_ARRAY) {
            for (size_t i = 0; i < v->n; i++) {
                if (!json_as_int64(v->items[i], &id) || id < 0 || id > 0x7fffffff) {
                    snprintf(err, errlen, "generation_config.json: eos_token_id holds a non-id");
                    goto done;
                }
                if (n < max_eos) eos[n++] = (int32_t)id;
            }
        } else if (json_as_int64(v, &id) && id >= 0 && id <= 0x7fffffff) {
            if (max_eos > 0) eos[n++] = (int32_t)id;
        } else {
            snprintf(err, errlen, "generation_config.json: eos_token_id is not an id or a list of ids");
            goto done;
        }
        *n_eos = n;
    }
    rc = 1;
done:
    json_free(cfg);
    return rc;
}

/* ------------------------------------------------------------------ lifetime */

sampler *sampler_new(int vocab_size, const sampler_params *p, char *err, size_t errlen) {
    char local[128];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (vocab_size <= 0 || !p) { snprintf(err, errlen, "sampler: bad vocabulary size %d", vocab_size); return NULL; }
    if (!(p->temperature >= 0) || !isfinite(p->temperature)) {
        snprintf(err, errlen, "sampler: temperature must be >= 0");
        return NULL;
    }
    if (!(p->top_p > 0)) { snprintf(err, errlen, "sampler: top_p must be in (0, 1]"); return NULL; }
    if (!(p->min_p <= 1)) {
        snprintf(err, errlen, "sampler: min_p must be in [0, 1]");
        return NULL;
    }
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty)) {
        snprintf(err, errlen, "sampler: repetition_penalty must be > 0");
        return NULL;
    }
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty)) {
        snprintf(err, errlen, "sampler: presence and frequency penalties must be finite");
        return NULL;
    }
    if (p->n_top_logprobs < 0 || p->n_top_logprobs > SAMPLER_MAX_TOP_LOGPROBS) {
        snprintf(err, errlen, "sampler: top logprobs must be in [0, %d]", SAMPLER_MAX_TOP_LOGPROBS);
        return NULL;
    }
    sampler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = *p;
    s->V = vocab_size;
    s->work = malloc((size_t)vocab_size * sizeof *s->work);
    s->cands = malloc((size_t)vocab_size * sizeof *s->cands);
    s->in_prompt = calloc((size_t)vocab_size, 1);
    s->out_count = calloc((size_t)vocab_size, sizeof *s->out_count);
    s->seen = malloc((size_t)vocab_size * sizeof *s->seen);
    if (!s->work || !s->cands || !s->in_prompt || !s->out_count || !s->seen) goto oom;
    sampler_seed(s, p->seed);
    return s;
oom:
    sampler_free(s);
    snprintf(err, errlen, "sampler: out of memory for a vocabulary of %d", vocab_size);
    return NULL;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->cands);
    free(s->in_prompt);
    free(s->out_count);
    free(s->seen);
    free(s->bias_ids);
    free(s->bias);
    free(s);
}

typedef struct {
    int32_t id;
    int pos; /* in the caller's list */
} bias_entry;

/* By id, then by position. */
static int bias_order_cmp(const void *x, const void *y) {
    const bias_entry *a = x, *b = y;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

int sampler_set_logit_bias(sampler *s, const int32_t *ids, const float *bias, int n, char *err, size_t errlen) {
    char local[128];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (n < 0) n = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->V) {
            snprintf(err, errlen, "sampler: logit bias for id %d outside the vocabulary [0, %d)", (int)ids[i], s->V);
            return -1;
        }
        if (!isfinite(bias[i])) { snprintf(err, errlen, "sampler: logit bias for id %d is not finite", (int)ids[i]); return -1; }
    }
    int32_t *ni = NULL;
    float *nb = NULL;
    bias_entry *order = NULL;
    if (n) {
        ni = malloc((size_t)n * sizeof *ni);
        nb = malloc((size_t)n * sizeof *nb);
        order = malloc((size_t)n * sizeof *order);
        if (!ni || !nb || !order) {
            free(ni);
            free(nb);
            free(order);
            snprintf(err, errlen, "sampler: out of memory for %d logit biases", n);
            return -1;
        }
    }
    /* distinct ids, the last bias given for each: sort (id, position) pairs */
    for (int i = 0; i < n; i++) order[i] = (bias_entry){ids[i], i};
    if (n) qsort(order, (size_t)n, sizeof *order, bias_order_cmp);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (i + 1 < n && order[i + 1].id == order[i].id) continue; /* a later one of the same id follows */
        ni[m] = order[i].id;
        nb[m] = bias[order[i].pos];
        m++;
    }
    free(order);
    free(s->bias_ids);
    free(s->bias);
    s->bias_ids = ni;
    s->bias = nb;
    s->n_bias = m;
    return 0;
}

const sampler_params *sampler_get_params(const sampler *s) { return &s->p; }

/* ------------------------------------------------------------------ history and penalties */

void sampler_reset_history(sampler *s) {
    for (int i = 0; i < s->n_seen; i++) {
        s->in_prompt[s->seen[i]] = 0;
        s->out_count[s->seen[i]] = 0;
    }
    s->n_seen = 0;
}

static void mark_seen(sampler *s, int32_t id) {
    if (!s->in_prompt[id] && !s->out_count[id]) s->seen[s->n_seen++] = id;
}

void sampler_set_prompt(sampler *s, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->V) continue;
        mark_seen(s, ids[i]);
        s->in_prompt[ids[i]] = 1;
    }
}

void sampler_accept(sampler *s, int32_t token) {
    if (token < 0 || token >= s->V) return;
    mark_seen(s, token);
    s->out_count[token]++;
}

void sampler_apply_penalties(const sampler *s, float *logits) {
    const sampler_params *p = &s->p;
    for (int i = 0; i < s->n_seen; i++) {
        int32_t id = s->seen[i];
        float l = logits[id];
        if (p->repetition_penalty != 1) l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        if (s->out_count[id]) l -= p->presence_penalty + p->frequency_penalty * (float)s->out_count[id];
        logits[id] = l;
    }
}

/* ------------------------------------------------------------------ candidate filters */

/* a ranks before b: larger value, then lower id (a total order, so results are deterministic). */
static int cand_before(const cand *a, const cand *b) { return a->v > b->v || (a->v == b->v && a->id < b->id); }

static int cand_cmp(const void *x, const void *y) {
    const cand *a = x, *b = y;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

/* Min-heap (by rank: the root is the candidate that ranks last) over h[0..n). */
static void heap_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_before(&h[m], &h[l])) m = l;
        if (r < n && cand_before(&h[m], &h[r])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Writes the k best (v[id], id) of v[0..n) to out[0..k), sorted best first. k <= n. */
static void select_top(const float *v, int n, int k, cand *out) {
    for (int i = 0; i < k; i++) out[i] = (cand){v[i], i};
    for (int i = k / 2 - 1; i >= 0; i--) heap_down(out, k, i);
    for (int i = k; i < n; i++) {
        cand c = {v[i], i};
        if (cand_before(&c, &out[0])) {
            out[0] = c;
            heap_down(out, k, 0);
        }
    }
    qsort(out, (size_t)k, sizeof *out, cand_cmp);
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* Top-p over rank-sorted c[0..n): z is the softmax denominator relative to c[0].v (the
 * largest logit). Keeps each token while the mass before it is < top_p; at least one. */
static int top_p_keep(const cand *c, int n, double z, float top_p) {
    double acc = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && acc / z >= top_p) return i;
        acc += expf(c[i].v - c[0].v);
    }
    return n;
}

/* Fills s->cands with the kept candidates of the temperature-scaled logits in s->work and
 * returns their count; *sorted says whether they are in rank order (they are unless no
 * filter was active, in which case every id is a candidate in id order). */
static int filter_candidates(sampler *s, int *sorted) {
    const sampler_params *p = &s->p;
    const float *w = s->work;
    int V = s->V, n;
    float wmax = w[argmax(w, V)];
    *sorted = 1;
    if (p->top_k > 0 && p->top_k < V) {
        n = p->top_k;
        select_top(w, V, n, s->cands);
    } else if (p->top_p < 1) {
        /* The kept top-p set is a prefix of the rank order; any set of high-probability tokens
         * whose mass already reaches top_p contains it, so sort just that set when it does. */
        double z = 0;
        for (int i = 0; i < V; i++) z += expf(w[i] - wmax);
        n = 0;
        double thresh = wmax - 9.21, mass = 0; /* prob >= 1e-4 * max prob */
        for (int i = 0; i < V; i++)
            if (w[i] >= thresh) {
                s->cands[n++] = (cand){w[i], i};
                mass += expf(w[i] - wmax);
            }
        if (mass / z < p->top_p) {
            n = 0;
            for (int i = 0; i < V; i++) s->cands[n++] = (cand){w[i], i};
        }
        qsort(s->cands, (size_t)n, sizeof *s->cands, cand_cmp);
        n = top_p_keep(s->cands, n, z, p->top_p);
    } else if (p->min_p > 0) {
        n = 0;
        float thresh = wmax + logf(p->min_p);
        for (int i = 0; i < V; i++)
            if (w[i] >= thresh) s->cands[n++] = (cand){w[i], i};
        qsort(s->cands, (size_t)n, sizeof *s->cands, cand_cmp);
        return n; /* min-p already applied */
    } else {
        for (int i = 0; i < V; i++) s->cands[i] = (cand){w[i], i};
        *sorted = 0;
        return V;
    }
    if (p->top_p < 1 && p->top_k > 0 && p->top_k < V) { /* over what top-k kept, renormalised */
        double z = 0;
        for (int i = 0; i < n; i++) z += expf(s->cands[i].v - s->cands[0].v);
        n = top_p_keep(s->cands, n, z, p->top_p);
    }
    if (p->min_p > 0) { /* p_i >= min_p * p_max  <=>  w_i >= w_max + log(min_p) */
        float thresh = s->cands[0].v + logf(p->min_p);
        int keep = 1;
        while (keep < n && s->cands[keep].v >= thresh) keep++;
        n = keep;
    }
    return n;
}

static int has_penalties(const sampler *s) {
    return s->n_seen && (s->p.repetition_penalty != 1 || s->p.presence_penalty != 0 || s->p.frequency_penalty != 0);
}

/* Bias, penalties and temperature into s->work; returns 1 for greedy (temperature 0). */
static int prepare(sampler *s, const float *logits) {
    memcpy(s->work, logits, (size_t)s->V * sizeof *s->work);
    for (int i = 0; i < s->n_bias; i++) s->work[s->bias_ids[i]] += s->bias[i];
    sampler_apply_penalties(s, s->work);
    if (s->p.temperature == 0) return 1;
    float inv = 1.0f / s->p.temperature;
    for (int i = 0; i < s->V; i++) s->work[i] *= inv;
    return 0;
}

int sampler_candidates(sampler *s, const float *logits, int32_t *ids) {
    if (prepare(s, logits)) {
        ids[0] = argmax(s->work, s->V);
        return 1;
    }
    int sorted, n = filter_candidates(s, &sorted);
    if (!sorted) qsort(s->cands, (size_t)n, sizeof *s->cands, cand_cmp);
    for (int i = 0; i < n; i++) ids[i] = s->cands[i].id;
    return n;
}

int32_t sampler_sample(sampler *s, const float *logits, sampler_result *res) {
    int32_t tok;
    if (s->p.temperature == 0 && !has_penalties(s) && !s->n_bias) {
        tok = argmax(logits, s->V); /* plain greedy: no copy */
    } else if (prepare(s, logits)) {
        tok = argmax(s->work, s->V);
    } else {
        int sorted, n = filter_candidates(s, &sorted);
        float top = s->cands[0].v;
        if (!sorted)
            for (int i = 1; i < n; i++) top = s->cands[i].v > top ? s->cands[i].v : top;
        /* probabilities (unnormalised) computed once into work[], then one walk */
        double z = 0;
        for (int i = 0; i < n; i++) z += (s->work[i] = expf(s->cands[i].v - top));
        double u = uniform01(s) * z, acc = 0;
        tok = s->cands[n - 1].id;
        for (int i = 0; i < n; i++) {
            acc += s->work[i];
            if (u < acc) { tok = s->cands[i].id; break; }
        }
    }
    if (res) {
        /* log-softmax of the raw logits */
        float mx = logits[argmax(logits, s->V)];
        double z = 0;
        for (int i = 0; i < s->V; i++) z += expf(logits[i] - mx);
        double lse = mx + log(z);
        res->token = tok;
        res->logprob = (float)(logits[tok] - lse);
        int k = s->p.n_top_logprobs < s->V ? s->p.n_top_logprobs : s->V;
        res->n_top = k;
        if (k > 0) {
            cand top[SAMPLER_MAX_TOP_LOGPROBS];
            select_top(logits, s->V, k, top);
            for (int i = 0; i < k; i++) {
                res->top_ids[i] = top[i].id;
                res->top_logprobs[i] = (float)(top[i].v - lse);
            }
        }
    }
    return tok;
}
