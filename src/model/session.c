/* session.c - a conversation's state: KV cache, DeltaNet conv and recurrent states,
 * position, scratch; feeding tokens; snapshots and rewinding. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/gdn.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "model.h"
#include "util/hugemap.h"

size_t attn_tile_floats(int group, int D);
size_t attn_parts_floats(int group, int D);

const char *qnext_status_str(qnext_status st) {
    switch (st) {
    case QNEXT_OK: return "ok";
    case QNEXT_ERR_IO: return "I/O error";
    case QNEXT_ERR_FORMAT: return "bad checkpoint";
    case QNEXT_ERR_CONFIG: return "bad config";
    case QNEXT_ERR_MEMORY: return "out of memory";
    case QNEXT_ERR_ARG: return "bad argument";
    case QNEXT_ERR_CONTEXT: return "context full";
    case QNEXT_ERR_SNAPSHOT: return "invalid snapshot";
    }
    return "unknown error";
}

/* inv_freq of the rotary pairs, as transformers computes it in fp32 (spec 3.4 and 5). */
static void rope_init(qnext_session *s) {
    const qnext_config *c = &s->m->cfg;
    int dim = c->rotary_dim, half = dim / 2;
    float base = (float)c->rope_theta;
    s->rope_mscale = 1.0f;
    for (int i = 0; i < half; i++) {
        float pos_freq = powf(base, (float)(2 * i) / (float)dim);
        s->rope_inv_freq[i] = 1.0f / pos_freq;
    }
    if (c->rope_type != QNEXT_ROPE_YARN) return;
    double lnb = log(c->rope_theta), orig = c->rope_orig_max_pos;
    double low = dim * log(orig / (c->rope_beta_fast * 2 * M_PI)) / (2 * lnb);
    double high = dim * log(orig / (c->rope_beta_slow * 2 * M_PI)) / (2 * lnb);
    if (c->rope_truncate) { low = floor(low); high = ceil(high); }
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    float factor = (float)c->rope_factor;
    for (int i = 0; i < half; i++) {
        float pos_freq = powf(base, (float)(2 * i) / (float)dim);
        float extrap = 1.0f / pos_freq, interp = 1.0f / (factor * pos_freq);
        float ramp = ((float)i - (float)low) / ((float)high - (float)low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float extrap_factor = 1.0f - ramp;
        s->rope_inv_freq[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
    }
    s->rope_mscale = (float)c->rope_attn_factor;
}

/* The KV cache of a layer: an anonymous mapping, so that pages are zero and cost memory
 * only once written (a 262K context is mostly never touched), and its rows are cache-line
 * aligned (the AMX attention loads them straight into tiles; a malloc'd block starts 16
 * bytes into its page). Not huge pages: each KV head's rows are a region of their own, and
 * a 2 MB page per region would cost a short context ~100 MB per session (a server holds
 * many). */
static uint8_t *kv_alloc(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void kv_free(uint8_t *p, size_t bytes) {
    if (p) munmap(p, bytes);
}

/* The recurrent states of all DeltaNet layers in one zeroed mapping that starts on a 2 MB
 * boundary, layers back to back (each 2 MB in f32 on the 80B model, one huge page; 1 MB in bf16,
 * two to a huge page), on transparent huge pages where the kernel gives them. Decode reads and
 * writes every state once per token (72 MB for 36 layers of the 80B model in f32); on 4 KB pages
 * that is 18K TLB entries, more than the second-level TLB holds, and 36K first-touch faults.
 * A model whose states take less than 2 MB in all keeps them in one calloc'd block (a huge page
 * per session would cost more memory than its states; the small test models stay under the
 * sanitizers' heap checks). Returns the first state, or NULL; the others follow at *stride
 * bytes. *region_bytes is 0 for the calloc'd block (free it), else the mapping's size. */
static uint8_t *ssm_region_alloc(size_t per_layer, int n, size_t *stride, size_t *region_bytes, void **region) {
    if (per_layer * n < HUGEMAP_PAGE) {
        *stride = (per_layer + 63) & ~(size_t)63;
        *region = calloc(1, *stride * n);
        *region_bytes = 0;
        return *region;
    }
    *stride = (per_layer + 4095) & ~(size_t)4095;
    return hugemap_alloc(*stride * n, PROT_READ | PROT_WRITE, 1, region, region_bytes);
}

void qnext_session_free(qnext_session *s) {
    if (!s) return;
    if (s->ls) {
        for (int i = 0; i <= s->m->cfg.n_layers; i++) {
            free(s->ls[i].conv_state);
            kv_free(s->ls[i].k_cache, s->ls[i].kv_bytes);
            kv_free(s->ls[i].v_cache, s->ls[i].kv_bytes);
        }
    }
    free(s->ls);
    if (s->ssm_region_bytes) munmap(s->ssm_region, s->ssm_region_bytes);
    else free(s->ssm_region);
    qn_scratch *sc = &s->sc;
    float *fl[] = {sc->h, sc->x, sc->y, sc->proj, sc->proj2, sc->conv, sc->core, sc->gates, sc->att, sc->att_tile, sc->att_part, sc->gdn_tmp,
                   sc->mlp_a, sc->mlp_b, sc->router, sc->top_w, sc->xg, sc->eo, sc->sg, sc->rope_cos, sc->rope_sin};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) free(fl[i]);
    free(sc->top_idx);
    free(sc->hn);
    free(s->h_last);
    free(sc->row_pos);
    free(sc->row_seq);
    free(sc->row_out);
    free(sc->tok_list);
    free(sc->exp_first);
    free(s->kv_written);
    free(s->ckpt);
    free(s->ckpt_off);
    free(s->rope_inv_freq);
    free(s);
}

static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

qnext_status qnext_session_new(qnext_model *m, const qnext_session_params *params, qnext_session **out, char *err,
                               size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!m || !out) { snprintf(err, errlen, "qnext_session_new: NULL argument"); return QNEXT_ERR_ARG; }
    *out = NULL;
    const qnext_config *c = &m->cfg;
    qnext_session *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    if (params) s->params = *params;
    if (s->params.n_ctx < 0 || s->params.n_ubatch < 0 || s->params.gdn_mode < 0 || s->params.gdn_mode > 2 ||
        s->params.kv_type < 0 || s->params.kv_type > 3 || s->params.state_type < 0 || s->params.state_type > 1) {
        snprintf(err, errlen, "qnext_session_new: bad parameters (n_ctx %d, n_ubatch %d, gdn_mode %d, kv_type %d, "
                 "state_type %d)", s->params.n_ctx, s->params.n_ubatch, s->params.gdn_mode, s->params.kv_type,
                 s->params.state_type);
        free(s);
        return QNEXT_ERR_ARG;
    }
    if (!s->params.n_ctx) s->params.n_ctx = c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
    if (!s->params.n_ubatch) s->params.n_ubatch = 512;
    if (s->params.n_ubatch > s->params.n_ctx) s->params.n_ubatch = s->params.n_ctx;
    const int64_t T = s->params.n_ubatch, n_ctx = s->params.n_ctx, H = c->hidden_size;
    const int64_t nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    const int64_t conv_dim = 2 * nk * dk + nv * dv, D = c->head_dim;
    const int64_t nthreads = omp_get_max_threads();

    if (s->params.kv_type == QNEXT_KV_AUTO) s->params.kv_type = m->gguf ? QNEXT_KV_BF16 : QNEXT_KV_F32;
    s->kv_row_bytes = s->params.kv_type == QNEXT_KV_F32 ? (size_t)D * 4 : s->params.kv_type == QNEXT_KV_BF16 ? (size_t)D * 2 : (size_t)D + 4;
    s->kv_tiled = attn_kv_tiled(s->params.kv_type, (int)D);
    if (s->params.mtp && c->n_mtp_layers != 1) {
        snprintf(err, errlen, "qnext_session_new: mtp requested but the model has no MTP layer");
        free(s);
        return QNEXT_ERR_ARG;
    }
    s->mtp_on = s->params.mtp != 0;
    s->ls = calloc(c->n_layers + 1, sizeof *s->ls);
    if (!s->ls) goto oom;
    int n_linear = 0;
    for (int i = 0; i < c->n_layers; i++) n_linear += c->layer_type[i] == QNEXT_LAYER_LINEAR;
    const size_t ssm_bytes = session_ssm_bytes(s);
    uint8_t *ssm_next = NULL;
    size_t ssm_stride = 0;
    if (n_linear) {
        ssm_next = ssm_region_alloc(ssm_bytes, n_linear, &ssm_stride, &s->ssm_region_bytes, &s->ssm_region);
        if (!ssm_next) goto oom;
    }
    for (int i = 0; i < c->n_layers + s->mtp_on; i++) {
        qn_layer_state *st = &s->ls[i];
        if (i < c->n_layers && c->layer_type[i] == QNEXT_LAYER_LINEAR) {
            st->conv_state = calloc((size_t)(c->conv_kernel - 1 > 0 ? c->conv_kernel - 1 : 1) * conv_dim, sizeof(float));
            st->ssm_state = ssm_next;
            ssm_next += ssm_stride;
            if (!st->conv_state) goto oom;
        } else {
            /* zero pages mapped lazily: a long context costs memory only as it fills */
            st->kv_bytes = (size_t)qn_kv_rows(n_ctx) * c->n_kv_heads * s->kv_row_bytes;
            st->k_cache = kv_alloc(st->kv_bytes);
            st->v_cache = kv_alloc(st->kv_bytes);
            if (!st->k_cache || !st->v_cache) goto oom;
        }
    }
    qn_scratch *sc = &s->sc;
    int64_t E = c->n_experts, k = c->n_experts_per_tok > 0 ? c->n_experts_per_tok : 1;
    int64_t mlpw = imax(imax(c->moe_intermediate, c->shared_intermediate), c->intermediate_size);
#define ALLOC(p, n) do { (p) = calloc((size_t)(n), sizeof(*(p))); if (!(p)) goto oom; s->scratch_bytes += (size_t)(n) * sizeof(*(p)); } while (0)
    ALLOC(sc->h, T * H);
    ALLOC(sc->x, T * H);
    ALLOC(sc->y, T * H);
    ALLOC(sc->proj, T * imax(imax(2 * nk * dk + 2 * nv * dv, 2 * c->n_heads * D), 2 * H));
    ALLOC(sc->proj2, T * imax(2 * nv, 2 * c->n_kv_heads * D));
    ALLOC(sc->conv, T * conv_dim);
    ALLOC(sc->core, T * imax(nv * dv, c->n_heads * D));
    ALLOC(sc->gates, T * 2 * nv);
    ALLOC(sc->att, nthreads * n_ctx);
    sc->att_tile_stride = attn_tile_floats(c->n_heads / c->n_kv_heads, (int)D);
    ALLOC(sc->att_tile, (int64_t)sc->att_tile_stride * nthreads);
    ALLOC(sc->att_part, attn_parts_floats(c->n_heads / c->n_kv_heads, (int)D));
    sc->gdn_tmp_stride = gdn_state_tmp_floats((int)dk, (int)dv); /* either state type: a batch may mix them */
    ALLOC(sc->gdn_tmp, (int64_t)sc->gdn_tmp_stride * nthreads);
    /* the one-token MoE path keeps all routed experts and the shared one side by side */
    int64_t one_tok = k * c->moe_intermediate + imax(c->shared_intermediate, c->moe_intermediate);
    /* batched steps run a group of experts with all their gathered rows at once */
    sc->moe_rows = (int)imax(T, T * k < 256 ? T * k : 256);
    int64_t mlp_n = imax(imax(T * mlpw, one_tok), (int64_t)sc->moe_rows * c->moe_intermediate);
    ALLOC(sc->mlp_a, mlp_n);
    ALLOC(sc->mlp_b, mlp_n);
    ALLOC(sc->router, T * imax(E, 1));
    ALLOC(sc->top_idx, T * k);
    ALLOC(sc->top_w, T * k);
    ALLOC(sc->tok_list, T * k);
    ALLOC(sc->exp_first, 2 * (E + 1));
    ALLOC(sc->xg, sc->moe_rows * H);
    ALLOC(sc->eo, imax(sc->moe_rows, k + 1) * H);
    ALLOC(sc->sg, T);
    ALLOC(sc->rope_cos, T * c->rotary_dim / 2);
    ALLOC(sc->rope_sin, T * c->rotary_dim / 2);
    if (s->mtp_on) {
        ALLOC(sc->hn, T * H);
        ALLOC(s->h_last, H);
    }
    ALLOC(sc->row_pos, T);
    ALLOC(sc->row_seq, T);
    ALLOC(sc->row_out, T);
    ALLOC(s->kv_written, n_ctx);
    ALLOC(s->rope_inv_freq, c->rotary_dim / 2);
#undef ALLOC
    rope_init(s);
    *out = s;
    return QNEXT_OK;
oom:
    snprintf(err, errlen, "out of memory creating a session (n_ctx %d, n_ubatch %d)", s ? s->params.n_ctx : 0,
             s ? s->params.n_ubatch : 0);
    qnext_session_free(s);
    return QNEXT_ERR_MEMORY;
}

static size_t snapshot_bytes(const qnext_session *s);
int qnext_session_pos(const qnext_session *s) { return s->pos; }

void qnext_session_get_memory(const qnext_session *s, qnext_session_memory *mem) {
    const qnext_config *c = &s->m->cfg;
    int n_full = 0;
    for (int i = 0; i < c->n_layers; i++) n_full += c->layer_type[i] == QNEXT_LAYER_FULL;
    mem->state_bytes = snapshot_bytes(s);
    mem->kv_bytes_per_token = (size_t)n_full * 2 * c->n_kv_heads * s->kv_row_bytes;
    mem->kv_bytes_max = mem->kv_bytes_per_token * (size_t)s->params.n_ctx;
    mem->scratch_bytes = s->scratch_bytes;
    mem->kv_name = s->params.kv_type == QNEXT_KV_F32 ? "f32" : s->params.kv_type == QNEXT_KV_BF16 ? "bf16" : "q8";
}
int qnext_session_n_ctx(const qnext_session *s) { return s->params.n_ctx; }

/* Floats of one DeltaNet layer's conv state: the last K-1 inputs of its conv_dim channels. */
static size_t conv_state_floats(const qnext_config *c) {
    return (size_t)(c->conv_kernel - 1) *
           (2 * (size_t)c->lin_n_k_heads * c->lin_k_dim + (size_t)c->lin_n_v_heads * c->lin_v_dim);
}

void qnext_session_reset(qnext_session *s) {
    const qnext_config *c = &s->m->cfg;
    for (int i = 0; i < c->n_layers; i++)
        if (c->layer_type[i] == QNEXT_LAYER_LINEAR) {
            memset(s->ls[i].conv_state, 0, conv_state_floats(c) * sizeof(float));
            memset(s->ls[i].ssm_state, 0, session_ssm_bytes(s));
        }
    s->pos = 0;
    s->has_h_last = 0;
    s->ckpt_fed = 0;
    s->clock++; /* every earlier snapshot's KV prefix may now be overwritten */
}

/* Checks one item of a feed: ids in the vocabulary and room in the context. */
static qnext_status check_item(const qnext_session *s, const int32_t *tokens, int n, const float *logits,
                               int logits_mode, char *err, size_t errlen) {
    if (n < 0 || (n > 0 && !tokens) || logits_mode < 0 || logits_mode > 2 || (logits_mode && !logits)) {
        snprintf(err, errlen, "qnext_session_feed: bad arguments");
        return QNEXT_ERR_ARG;
    }
    const qnext_config *c = &s->m->cfg;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            snprintf(err, errlen, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                     c->vocab_size);
            return QNEXT_ERR_ARG;
        }
    if ((int64_t)s->pos + n > s->params.n_ctx) {
        snprintf(err, errlen, "context full: %d tokens in the session + %d new > n_ctx %d", s->pos, n,
                 s->params.n_ctx);
        return QNEXT_ERR_CONTEXT;
    }
    return QNEXT_OK;
}

static void mark_written(qnext_session *s, int n) {
    s->clock++;
    for (int i = 0; i < n; i++) s->kv_written[s->pos + i] = s->clock;
}

qnext_status qnext_session_feed(qnext_session *s, const int32_t *tokens, int n, float *logits, int logits_mode,
                                char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s) { snprintf(err, errlen, "qnext_session_feed: NULL session"); return QNEXT_ERR_ARG; }
    s->ckpt_fed = 0; /* a pending verify is accepted whole */
    qnext_status st = check_item(s, tokens, n, logits, logits_mode, err, errlen);
    if (st || n == 0) return st;
    const int V = s->m->cfg.vocab_size;
    mark_written(s, n);
    for (int i0 = 0; i0 < n; i0 += s->params.n_ubatch) {
        int T = n - i0 < s->params.n_ubatch ? n - i0 : s->params.n_ubatch;
        qn_seq q = {.s = s, .tokens = tokens + i0, .n = T, .row0 = 0, .pos0 = s->pos};
        if (logits_mode == QNEXT_LOGITS_ALL) { q.logits = logits + (int64_t)i0 * V; q.all_logits = 1; }
        else if (logits_mode == QNEXT_LOGITS_LAST && i0 + T == n) q.logits = logits;
        forward_batch(s, &q, 1, T);
        s->pos += T;
    }
    return QNEXT_OK;
}

#define MAX_BATCH_SEQS 1024

qnext_status qnext_batch_feed(qnext_batch_item *items, int n_items, char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!items || n_items < 1 || n_items > MAX_BATCH_SEQS || !items[0].session) {
        snprintf(err, errlen, "qnext_batch_feed: bad arguments");
        return QNEXT_ERR_ARG;
    }
    qnext_session *owner = items[0].session;
    int T = 0;
    for (int i = 0; i < n_items; i++) {
        qnext_session *s = items[i].session;
        if (!s || s->m != owner->m || items[i].n_tokens < 1) {
            snprintf(err, errlen, "qnext_batch_feed: item %d: no session, another model, or no tokens", i);
            return QNEXT_ERR_ARG;
        }
        for (int j = 0; j < i; j++)
            if (items[j].session == s) {
                snprintf(err, errlen, "qnext_batch_feed: items %d and %d name the same session", j, i);
                return QNEXT_ERR_ARG;
            }
        if (s->params.n_ctx > owner->params.n_ctx) {
            snprintf(err, errlen, "qnext_batch_feed: item %d has n_ctx %d > the first session's %d", i,
                     s->params.n_ctx, owner->params.n_ctx);
            return QNEXT_ERR_ARG;
        }
        qnext_status st = check_item(s, items[i].tokens, items[i].n_tokens, items[i].logits, items[i].logits_mode,
                                     err, errlen);
        if (st) return st;
        T += items[i].n_tokens;
    }
    if (T > owner->params.n_ubatch) {
        snprintf(err, errlen, "qnext_batch_feed: %d tokens exceed the first session's n_ubatch %d", T,
                 owner->params.n_ubatch);
        return QNEXT_ERR_ARG;
    }
    qn_seq seqs[MAX_BATCH_SEQS < 64 ? MAX_BATCH_SEQS : 64], *sq = seqs;
    if (n_items > 64 && !(sq = malloc(n_items * sizeof *sq))) {
        snprintf(err, errlen, "out of memory");
        return QNEXT_ERR_MEMORY;
    }
    int row = 0;
    for (int i = 0; i < n_items; i++) {
        qnext_session *s = items[i].session;
        sq[i] = (qn_seq){.s = s, .tokens = items[i].tokens, .n = items[i].n_tokens, .row0 = row, .pos0 = s->pos,
                         .logits = items[i].logits_mode ? items[i].logits : NULL,
                         .all_logits = items[i].logits_mode == QNEXT_LOGITS_ALL};
        row += items[i].n_tokens;
        s->ckpt_fed = 0;
        mark_written(s, items[i].n_tokens);
    }
    forward_batch(owner, sq, n_items, T);
    for (int i = 0; i < n_items; i++) items[i].session->pos += items[i].n_tokens;
    if (sq != seqs) free(sq);
    return QNEXT_OK;
}

/* ---------------------------------------------------------------- snapshots */

/* n f32 values into a recurrent state of the session's type (bf16: rounded to nearest even). */
static void state_store(const qnext_session *s, void *dst, const float *src, size_t n) {
    if (s->params.state_type != QNEXT_STATE_BF16) { memcpy(dst, src, n * sizeof(float)); return; }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = quant_f32_to_bf16(src[i]);
}

/* Bytes of every LINEAR layer's conv state (f32) and recurrent state (state_type). */
static size_t snapshot_bytes(const qnext_session *s) {
    const qnext_config *c = &s->m->cfg;
    size_t per = conv_state_floats(c) * sizeof(float) + session_ssm_bytes(s);
    size_t n = 0;
    for (int i = 0; i < c->n_layers; i++) n += c->layer_type[i] == QNEXT_LAYER_LINEAR ? per : 0;
    return n;
}

/* Copies the recurrent states into (restore 0) or out of (restore 1) a flat buffer. */
static void copy_states(qnext_session *s, uint8_t *buf, int restore) {
    const qnext_config *c = &s->m->cfg;
    size_t conv = conv_state_floats(c) * sizeof(float), ssm = session_ssm_bytes(s);
    for (int i = 0; i < c->n_layers; i++) {
        if (c->layer_type[i] != QNEXT_LAYER_LINEAR) continue;
        if (restore) {
            memcpy(s->ls[i].conv_state, buf, conv);
            memcpy(s->ls[i].ssm_state, buf + conv, ssm);
        } else {
            memcpy(buf, s->ls[i].conv_state, conv);
            memcpy(buf + conv, s->ls[i].ssm_state, ssm);
        }
        buf += conv + ssm;
    }
}

/* A state buffer of n bytes (n >= sizeof(size_t)) from the model's pool of freed snapshots'
 * buffers, or malloc's. */
static uint8_t *snap_buffer_take(qnext_model *m, size_t n) {
    for (int i = 0; i < SNAP_POOL_SLOTS; i++) {
        void *p = atomic_exchange(&m->snap_pool[i], NULL);
        if (!p) continue;
        size_t have;
        memcpy(&have, p, sizeof have);
        if (have == n) return p;
        void *expect = NULL; /* another size: back into its slot if that is still empty */
        if (!atomic_compare_exchange_strong(&m->snap_pool[i], &expect, p)) free(p);
    }
    return malloc(n);
}

/* Gives a freed snapshot's buffer of n bytes to the pool, or back to malloc if the pool is full. */
static void snap_buffer_give(qnext_model *m, uint8_t *p, size_t n) {
    if (!p) return;
    memcpy(p, &n, sizeof n);
    for (int i = 0; i < SNAP_POOL_SLOTS; i++) {
        void *expect = NULL;
        if (atomic_compare_exchange_strong(&m->snap_pool[i], &expect, (void *)p)) return;
    }
    free(p);
}

void model_snap_pool_free(qnext_model *m) {
    for (int i = 0; i < SNAP_POOL_SLOTS; i++) free(atomic_exchange(&m->snap_pool[i], NULL));
}

qnext_status qnext_session_snapshot(qnext_session *s, qnext_snapshot **out, char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s || !out) { snprintf(err, errlen, "qnext_session_snapshot: NULL argument"); return QNEXT_ERR_ARG; }
    const size_t states = snapshot_bytes(s);
    size_t n = states + (s->mtp_on ? (size_t)s->m->cfg.hidden_size * sizeof(float) : 0);
    if (n < sizeof(size_t)) n = sizeof(size_t); /* a pooled buffer keeps its size in its first bytes */
    qnext_snapshot *snap = calloc(1, sizeof *snap);
    uint8_t *data = snap ? snap_buffer_take((qnext_model *)s->m, n) : NULL;
    if (!snap || !data) {
        free(snap);
        free(data);
        snprintf(err, errlen, "out of memory taking a snapshot (%zu bytes)", n);
        return QNEXT_ERR_MEMORY;
    }
    copy_states(s, data, 0);
    if (s->mtp_on) memcpy(data + states, s->h_last, s->m->cfg.hidden_size * sizeof(float));
    snap->has_h_last = s->has_h_last;
    snap->m = s->m;
    snap->owner = s;
    snap->pos = s->pos;
    snap->clock = s->clock;
    snap->data = data;
    snap->bytes = n + sizeof *snap;
    *out = snap;
    return QNEXT_OK;
}

qnext_status qnext_session_restore(qnext_session *s, const qnext_snapshot *snap, char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s || !snap) { snprintf(err, errlen, "qnext_session_restore: NULL argument"); return QNEXT_ERR_ARG; }
    if (snap->m != s->m) { snprintf(err, errlen, "snapshot belongs to another model"); return QNEXT_ERR_SNAPSHOT; }
    if (snap->owner != s) { snprintf(err, errlen, "snapshot belongs to another session"); return QNEXT_ERR_SNAPSHOT; }
    if (snap->pos > s->params.n_ctx) {
        snprintf(err, errlen, "snapshot position %d is beyond this session's n_ctx %d", snap->pos, s->params.n_ctx);
        return QNEXT_ERR_SNAPSHOT;
    }
    for (int p = 0; p < snap->pos; p++)
        if (s->kv_written[p] > snap->clock) {
            snprintf(err, errlen, "snapshot at position %d is stale: KV position %d was overwritten since", snap->pos, p);
            return QNEXT_ERR_SNAPSHOT;
        }
    copy_states(s, snap->data, 1);
    if (s->mtp_on) memcpy(s->h_last, snap->data + snapshot_bytes(s), s->m->cfg.hidden_size * sizeof(float));
    s->has_h_last = snap->has_h_last;
    s->pos = snap->pos;
    s->ckpt_fed = 0;
    return QNEXT_OK;
}

int qnext_snapshot_pos(const qnext_snapshot *snap) { return snap->pos; }
size_t qnext_snapshot_bytes(const qnext_snapshot *snap) { return snap->bytes; }
void qnext_snapshot_free(qnext_snapshot *snap) {
    if (!snap) return;
    /* the pool is the one thing of a model that snapshots change; its slots are atomic */
    snap_buffer_give((qnext_model *)snap->m, snap->data, snap->bytes - sizeof *snap);
    free(snap);
}

qnext_status qnext_session_mtp_draft(qnext_session *s, int32_t next_token, float *draft_logits, char *err,
                                     size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s || !draft_logits) { snprintf(err, errlen, "qnext_session_mtp_draft: NULL argument"); return QNEXT_ERR_ARG; }
    if (!s->mtp_on) { snprintf(err, errlen, "qnext_session_mtp_draft: session created without mtp"); return QNEXT_ERR_ARG; }
    if (!s->has_h_last || s->pos < 1) { snprintf(err, errlen, "qnext_session_mtp_draft: feed at least one token first"); return QNEXT_ERR_ARG; }
    if (next_token < 0 || next_token >= s->m->cfg.vocab_size) {
        snprintf(err, errlen, "token id %d is outside the vocabulary [0, %d)", next_token, s->m->cfg.vocab_size);
        return QNEXT_ERR_ARG;
    }
    /* This writes the MTP layer's KV entry at pos-1. That entry is always pending: the next
     * feed recomputes it from the token actually fed, so a draft never leaves a trace. */
    forward_mtp_draft(s, next_token, draft_logits);
    return QNEXT_OK;
}

/* ---------------------------------------------------------------- speculative decoding */

qnext_status qnext_session_verify(qnext_session *s, const int32_t *tokens, int n, float *logits, char *err,
                                  size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s || !logits || n < 1 || n > QNEXT_MAX_VERIFY) {
        snprintf(err, errlen, "qnext_session_verify: bad arguments (1 <= n <= %d)", QNEXT_MAX_VERIFY);
        return QNEXT_ERR_ARG;
    }
    const qnext_config *c = &s->m->cfg;
    if (!s->ckpt) { /* allocated on first use, then reused */
        size_t conv = conv_state_floats(c), ssm = session_ssm_values(c), off = 0;
        s->ckpt_off = calloc(c->n_layers, sizeof *s->ckpt_off);
        if (!s->ckpt_off) { snprintf(err, errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
        for (int i = 0; i < c->n_layers; i++)
            if (c->layer_type[i] == QNEXT_LAYER_LINEAR) { s->ckpt_off[i] = off; off += conv + ssm; }
        s->ckpt_stride = off + c->hidden_size;
        s->ckpt = malloc(s->ckpt_stride * QNEXT_MAX_VERIFY * sizeof(float));
        if (!s->ckpt) { snprintf(err, errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
    }
    s->ckpt_n = n;
    qnext_status st = qnext_session_feed(s, tokens, n, logits, QNEXT_LOGITS_ALL, err, errlen);
    s->ckpt_n = 0;
    s->ckpt_fed = st == QNEXT_OK ? n : 0;
    return st;
}

qnext_status qnext_session_accept(qnext_session *s, int n_keep, char *err, size_t errlen) {
    char local[256];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    if (!s || n_keep < 1 || n_keep > s->ckpt_fed) {
        snprintf(err, errlen, "qnext_session_accept: %d is not in [1, %d] (tokens of the last verify)", n_keep,
                 s ? s->ckpt_fed : 0);
        return QNEXT_ERR_ARG;
    }
    if (n_keep < s->ckpt_fed) {
        const qnext_config *c = &s->m->cfg;
        const float *src = s->ckpt + (size_t)(n_keep - 1) * s->ckpt_stride;
        size_t conv = conv_state_floats(c), ssm = session_ssm_values(c);
        for (int i = 0; i < c->n_layers; i++)
            if (c->layer_type[i] == QNEXT_LAYER_LINEAR) {
                memcpy(s->ls[i].conv_state, src + s->ckpt_off[i], conv * sizeof(float));
                state_store(s, s->ls[i].ssm_state, src + s->ckpt_off[i] + conv, ssm);
            }
        if (s->mtp_on) memcpy(s->h_last, src + s->ckpt_stride - c->hidden_size, c->hidden_size * sizeof(float));
        s->pos -= s->ckpt_fed - n_keep;
    }
    s->ckpt_fed = 0;
    return QNEXT_OK;
}
