/* engine.c - the engine thread of `qnext serve`: slots, continuous batching, the
 * conversation cache, and the formatting of each request's output (SSE chunks or JSON).
 *
 * Contexts. A context is one qnext_session plus the token history its KV cache and
 * recurrent states hold, and snapshots taken at message boundaries (before the prompt's last
 * <|im_start|>, at the end of the prompt and at the end of the generation). At most
 * --parallel contexts serve requests at once; idle ones keep their history, and more idle
 * contexts than --parallel are kept while the --cache-mb budget allows. A new request goes
 * to the idle context whose history shares the longest usable prefix with its prompt: the
 * live state when the prompt extends the whole history, else the latest snapshot inside the
 * common prefix. Only the rest of the prompt is prefilled. Snapshots do not copy the KV
 * cache (include/qnext.h): a snapshot stays valid until its context is rewound below it, so
 * snapshots past the restore point are dropped then.
 *
 * Steps. Each step is ONE qnext_batch_feed: one token for every generating slot plus
 * prefill chunks of new prompts (--prefill-chunk tokens at most, cut at the snapshot point),
 * so a long prompt never stalls the running streams for more than one chunk. */
#define _GNU_SOURCE
#include "serve/server.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/output_parser.h"

/* ------------------------------------------------------------------ buffers */

int sv_buf_add(sv_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}
int sv_buf_addf(sv_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return sv_buf_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sv_buf_add(b, big, (size_t)n);
    free(big);
    return rc;
}
void sv_buf_free(sv_buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; }

int sv_json_str(sv_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (SV_LIT(b, "\"")) return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (sv_buf_add(b, s + run, i - run)) return -1;
        char e[7];
        size_t el = 2;
        e[0] = '\\';
        switch (c) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default: e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15]; el = 6;
        }
        if (sv_buf_add(b, e, el)) return -1;
        run = i + 1;
    }
    if (sv_buf_add(b, s + run, n - run)) return -1;
    return SV_LIT(b, "\"");
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------------ engine state */

enum { FIN_NONE = 0, FIN_STOP, FIN_LENGTH, FIN_TOOLS, FIN_CANCEL, FIN_ERROR, FIN_SHUTDOWN };

typedef struct {
    qnext_snapshot *snap;
    int pos;
    uint64_t used;
} cache_snap;

typedef struct {
    qnext_session *s;
    int32_t *hist;      /* [n_ctx] tokens the session holds */
    int n_hist;
    cache_snap *snaps;
    int n_snaps, cap_snaps;
    uint64_t used;
    serve_req *req;     /* the request it serves, or NULL when idle */
    int prefill_at;     /* next prompt index to feed */
    int32_t next_tok;   /* sampled, to be fed at the next step */
    int has_next;
    float *logits;      /* [vocab] */
} context;

struct serve_engine {
    qnext_model *m;
    const qnext_tokenizer *tok;
    serve_options o;
    char model_name[256];
    int vocab, ubatch;
    int32_t eos[SAMPLER_MAX_EOS + 8];
    int n_eos;
    int32_t im_start;
    context *ctx;
    int n_ctxs, max_ctxs;
    size_t session_bytes, snap_bytes;
    uint64_t tick;
    char *piece;        /* detokenizer output, tokenizer_stream_out_max bytes */
    size_t piece_cap;
    int32_t *fake;      /* QNEXT_SERVE_FAKE_OUTPUT (test hook) */
    size_t n_fake;
    jcon_vocab *jvocab; /* token bytes for response_format's constraint */
    float *masked;      /* [vocab] logits with response_format's mask applied */

    pthread_t th;
    int th_started;
    pthread_mutex_t mu;
    pthread_cond_t cv, room_cv;
    serve_req *q_head, *q_tail;
    int q_len, n_active;
    int stopping;       /* refuse new requests */
    int64_t cancel_at_us; /* when draining: cancel whatever still runs at this time */
    int quit;

    /* metrics (under mu) */
    uint64_t m_http, m_http_err, m_requests, m_finished, m_cancelled, m_prompt_toks, m_gen_toks, m_cache_hits,
        m_cache_misses, m_cached_toks, m_steps;
    int64_t m_t0;
    size_t m_snap_bytes; /* copies of engine-thread state for /metrics, refreshed each step */
    int m_n_ctxs;
    int64_t rate_t[64];
    uint64_t rate_tok[64];
    int rate_i;
};

static void ctx_drop_snaps_above(serve_engine *e, context *c, int pos) {
    int k = 0;
    for (int i = 0; i < c->n_snaps; i++) {
        if (c->snaps[i].pos > pos) {
            e->snap_bytes -= qnext_snapshot_bytes(c->snaps[i].snap);
            qnext_snapshot_free(c->snaps[i].snap);
        } else c->snaps[k++] = c->snaps[i];
    }
    c->n_snaps = k;
}

/* Keeps snapshots + extra idle contexts within --cache-mb: evicts the least recently used
 * snapshot, then whole idle contexts beyond --parallel. */
static void cache_enforce(serve_engine *e) {
    size_t budget = (size_t)e->o.cache_mb << 20;
    for (;;) {
        int extra = e->n_ctxs > e->o.parallel ? e->n_ctxs - e->o.parallel : 0;
        if (e->snap_bytes + (size_t)extra * e->session_bytes <= budget) return;
        context *bc = NULL;
        int bi = -1;
        for (int i = 0; i < e->max_ctxs; i++)
            for (int j = 0; e->ctx[i].s && j < e->ctx[i].n_snaps; j++)
                if (!bc || e->ctx[i].snaps[j].used < bc->snaps[bi].used) { bc = &e->ctx[i]; bi = j; }
        if (bc) {
            e->snap_bytes -= qnext_snapshot_bytes(bc->snaps[bi].snap);
            qnext_snapshot_free(bc->snaps[bi].snap);
            bc->snaps[bi] = bc->snaps[--bc->n_snaps];
            continue;
        }
        /* no snapshots left: free the least recently used idle context beyond --parallel */
        int victim = -1;
        for (int i = 0; i < e->max_ctxs; i++)
            if (e->ctx[i].s && !e->ctx[i].req && (victim < 0 || e->ctx[i].used < e->ctx[victim].used)) victim = i;
        if (victim < 0 || extra == 0) return;
        context *c = &e->ctx[victim];
        qnext_session_free(c->s);
        free(c->hist);
        free(c->snaps);
        free(c->logits);
        memset(c, 0, sizeof *c); /* entries never move: the engine loop holds indices */
        e->n_ctxs--;
    }
}

static void ctx_snapshot(serve_engine *e, context *c) {
    for (int i = 0; i < c->n_snaps; i++)
        if (c->snaps[i].pos == c->n_hist) { c->snaps[i].used = ++e->tick; return; }
    if (e->o.cache_mb <= 0) return;
    if (c->n_snaps == c->cap_snaps) {
        int cap = c->cap_snaps ? 2 * c->cap_snaps : 8;
        cache_snap *p = realloc(c->snaps, cap * sizeof *p);
        if (!p) return;
        c->snaps = p;
        c->cap_snaps = cap;
    }
    qnext_snapshot *sn;
    if (qnext_session_snapshot(c->s, &sn, NULL, 0)) return;
    c->snaps[c->n_snaps++] = (cache_snap){sn, c->n_hist, ++e->tick};
    e->snap_bytes += qnext_snapshot_bytes(sn);
    cache_enforce(e);
}

static int ctx_create(serve_engine *e, char *err, size_t errlen) {
    int idx = 0;
    while (idx < e->max_ctxs && e->ctx[idx].s) idx++;
    if (idx == e->max_ctxs) { snprintf(err, errlen, "all contexts in use"); return -1; }
    context *c = &e->ctx[idx];
    memset(c, 0, sizeof *c);
    qnext_session_params sp = {.n_ctx = e->o.n_ctx, .n_ubatch = e->ubatch, .gdn_mode = QNEXT_GDN_AUTO, .kv_type = e->o.kv_type,
                               .state_type = e->o.state_type};
    if (qnext_session_new(e->m, &sp, &c->s, err, errlen)) return -1;
    c->hist = malloc((size_t)e->o.n_ctx * sizeof(int32_t));
    c->logits = malloc((size_t)e->vocab * sizeof(float));
    if (!c->hist || !c->logits) {
        qnext_session_free(c->s);
        free(c->hist);
        free(c->logits);
        memset(c, 0, sizeof *c);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    e->n_ctxs++;
    return idx;
}

/* Picks the context for a prompt and brings it to the longest reusable prefix. Returns the
 * context index, or -1 when none can be had (out of memory). Sets r->n_cached. */
static int ctx_acquire(serve_engine *e, serve_req *r) {
    int best = -1, best_use = 0;
    for (int i = 0; i < e->max_ctxs; i++) {
        context *c = &e->ctx[i];
        if (!c->s || c->req) continue;
        int lcp = 0, lim = c->n_hist < r->n_prompt ? c->n_hist : r->n_prompt;
        while (lcp < lim && c->hist[lcp] == r->prompt[lcp]) lcp++;
        int use = 0;
        if (lcp == c->n_hist && c->n_hist < r->n_prompt) use = c->n_hist; /* the live state */
        for (int j = 0; j < c->n_snaps; j++)
            if (c->snaps[j].pos <= lcp && c->snaps[j].pos < r->n_prompt && c->snaps[j].pos > use) use = c->snaps[j].pos;
        if (best < 0 || use > best_use || (use == best_use && c->used > e->ctx[best].used)) { best = i; best_use = use; }
    }
    if (best_use == 0) {
        /* a miss: prefer a fresh context over overwriting another conversation */
        int extra_after = e->n_ctxs + 1 - e->o.parallel;
        size_t budget = (size_t)(e->o.cache_mb > 0 ? e->o.cache_mb : 0) << 20;
        if (e->n_ctxs < e->o.parallel ||
            (extra_after > 0 && e->snap_bytes + (size_t)extra_after * e->session_bytes <= budget)) {
            char err[256];
            int i = ctx_create(e, err, sizeof err);
            if (i >= 0) best = i;
        }
        if (best >= 0 && e->ctx[best].n_hist > 0) {
            /* overwrite the least recently used idle context */
            for (int i = 0; i < e->max_ctxs; i++)
                if (e->ctx[i].s && !e->ctx[i].req && e->ctx[i].used < e->ctx[best].used) best = i;
        }
        if (best < 0) return -1;
        context *c = &e->ctx[best];
        ctx_drop_snaps_above(e, c, -1);
        qnext_session_reset(c->s);
        c->n_hist = 0;
    } else {
        context *c = &e->ctx[best];
        if (best_use != c->n_hist) {
            cache_snap *sn = NULL;
            for (int j = 0; j < c->n_snaps; j++)
                if (c->snaps[j].pos == best_use) sn = &c->snaps[j];
            if (!sn || qnext_session_restore(c->s, sn->snap, NULL, 0)) {
                ctx_drop_snaps_above(e, c, -1);
                qnext_session_reset(c->s);
                best_use = 0;
            } else sn->used = ++e->tick;
            c->n_hist = best_use;
        }
        /* snapshots beyond the reuse point belong to another branch and will be overwritten */
        ctx_drop_snaps_above(e, c, best_use);
    }
    context *c = &e->ctx[best];
    c->used = ++e->tick;
    c->req = r;
    c->prefill_at = c->n_hist;
    c->has_next = 0;
    r->n_cached = c->n_hist;
    return best;
}

/* ------------------------------------------------------------------ output formatting */

static const char *finish_str(int f) {
    switch (f) {
    case FIN_LENGTH: return "length";
    case FIN_TOOLS: return "tool_calls";
    case FIN_CANCEL: case FIN_SHUTDOWN: return "abort";
    case FIN_ERROR: return "error";
    default: return "stop";
    }
}

/* Logprob entries are kept as the sampler reports them and printed when the text goes out. */
typedef struct { sampler_result *v; int n, cap, sent; } lp_list;

static void token_text(serve_engine *e, int32_t id, sv_buf *b) {
    char *t = NULL;
    size_t n = 0;
    if (tokenizer_decode(e->tok, &id, 1, &t, &n) == 0 && t) sv_buf_add(b, t, n);
    free(t);
}

static void json_bytes(sv_buf *b, const char *s, size_t n) {
    SV_LIT(b, "[");
    for (size_t i = 0; i < n; i++) sv_buf_addf(b, i ? ",%u" : "%u", (unsigned char)s[i]);
    SV_LIT(b, "]");
}

static double finite_lp(float v) { return isfinite(v) ? v : -9999.0; }

/* chat logprobs: {"content":[{token, logprob, bytes, top_logprobs:[...]}, ...]} for entries [a, b) */
static void chat_logprobs(serve_engine *e, sv_buf *b, const sampler_result *v, int a, int z) {
    SV_LIT(b, "{\"content\":[");
    sv_buf t = {0};
    for (int i = a; i < z; i++) {
        if (i > a) SV_LIT(b, ",");
        t.n = 0;
        token_text(e, v[i].token, &t);
        SV_LIT(b, "{\"token\":");
        sv_json_str(b, t.p ? t.p : "", t.n);
        sv_buf_addf(b, ",\"logprob\":%.6g,\"bytes\":", finite_lp(v[i].logprob));
        json_bytes(b, t.p ? t.p : "", t.n);
        SV_LIT(b, ",\"top_logprobs\":[");
        for (int k = 0; k < v[i].n_top; k++) {
            if (k) SV_LIT(b, ",");
            t.n = 0;
            token_text(e, v[i].top_ids[k], &t);
            SV_LIT(b, "{\"token\":");
            sv_json_str(b, t.p ? t.p : "", t.n);
            sv_buf_addf(b, ",\"logprob\":%.6g,\"bytes\":", finite_lp(v[i].top_logprobs[k]));
            json_bytes(b, t.p ? t.p : "", t.n);
            SV_LIT(b, "}");
        }
        SV_LIT(b, "]}");
    }
    SV_LIT(b, "]}");
    sv_buf_free(&t);
}

/* legacy completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset} */
static void completion_logprobs(serve_engine *e, sv_buf *b, const sampler_result *v, int a, int z, size_t offset0) {
    sv_buf t = {0};
    SV_LIT(b, "{\"tokens\":[");
    for (int i = a; i < z; i++) {
        t.n = 0;
        token_text(e, v[i].token, &t);
        if (i > a) SV_LIT(b, ",");
        sv_json_str(b, t.p ? t.p : "", t.n);
    }
    SV_LIT(b, "],\"token_logprobs\":[");
    for (int i = a; i < z; i++) sv_buf_addf(b, i > a ? ",%.6g" : "%.6g", finite_lp(v[i].logprob));
    SV_LIT(b, "],\"top_logprobs\":[");
    for (int i = a; i < z; i++) {
        if (i > a) SV_LIT(b, ",");
        SV_LIT(b, "{");
        for (int k = 0; k < v[i].n_top; k++) {
            t.n = 0;
            token_text(e, v[i].top_ids[k], &t);
            if (k) SV_LIT(b, ",");
            sv_json_str(b, t.p ? t.p : "", t.n);
            sv_buf_addf(b, ":%.6g", finite_lp(v[i].top_logprobs[k]));
        }
        SV_LIT(b, "}");
    }
    SV_LIT(b, "],\"text_offset\":[");
    size_t off = offset0;
    for (int i = a; i < z; i++) {
        t.n = 0;
        token_text(e, v[i].token, &t);
        sv_buf_addf(b, i > a ? ",%zu" : "%zu", off);
        off += t.n;
    }
    SV_LIT(b, "]}");
    sv_buf_free(&t);
}

/* Per-request engine state that does not need to be visible to the HTTP thread. */
typedef struct {
    lp_list lp;
    size_t text_sent;   /* completion: bytes of text already streamed (for text_offset) */
    int snap_at;        /* prompt position of the snapshot taken on the way (see is_boundary), or -1 */
} req_extra;

void sv_chunk_head(sv_buf *b, const serve_req *r, const char *model_name) {
    SV_LIT(b, "data: {\"id\":");
    sv_json_str(b, r->id, strlen(r->id));
    sv_buf_addf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                r->kind == REQ_CHAT ? "chat.completion.chunk" : "text_completion", (long long)r->created);
    sv_json_str(b, model_name, strlen(model_name));
}

void sv_usage_json(sv_buf *b, int n_prompt, int n_gen, int n_cached) {
    sv_buf_addf(b,
                "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                "\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
                n_prompt, n_gen, n_prompt + n_gen, n_cached);
}

static void chunk_head(serve_engine *e, serve_req *r, sv_buf *b) { sv_chunk_head(b, r, e->model_name); }
static void usage_json(serve_req *r, sv_buf *b) { sv_usage_json(b, r->n_prompt, r->n_gen, r->n_cached); }

/* Appends to r->out (under r->mu) and wakes the HTTP thread. */
static void req_publish(serve_req *r, const sv_buf *b, int done, int status) {
    pthread_mutex_lock(&r->mu);
    if (b && b->n) sv_buf_add(&r->out, b->p, b->n);
    if (status) r->http_status = status;
    if (done) r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void random_id(char *out, size_t n, const char *prefix) {
    static _Atomic uint64_t counter;
    uint64_t x = (uint64_t)now_us() * 0x9E3779B97F4A7C15ull ^ (atomic_fetch_add(&counter, 1) + 1) * 0xD1B54A32D192ED03ull;
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t p = strlen(prefix);
    snprintf(out, n, "%s", prefix);
    for (size_t i = p; i + 1 < n && i < p + 24; i++) {
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
        out[i] = al[x % 62];
        out[i + 1] = 0;
    }
}

/* Streams the parser's delta (chat) or new text (completion) as SSE chunks. */
static void stream_delta(serve_engine *e, serve_req *r, req_extra *x, const char *text, size_t n, int final) {
    sv_buf b = {0};
    if (r->kind == REQ_COMPLETION) {
        if (n || (final && x->lp.sent < x->lp.n)) {
            chunk_head(e, r, &b);
            sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"text\":", r->choice);
            sv_json_str(&b, text, n);
            SV_LIT(&b, ",\"logprobs\":");
            if (r->logprobs && x->lp.sent < x->lp.n) {
                completion_logprobs(e, &b, x->lp.v, x->lp.sent, x->lp.n, x->text_sent);
                x->lp.sent = x->lp.n;
            } else SV_LIT(&b, "null");
            SV_LIT(&b, ",\"finish_reason\":null}]}\n\n");
            x->text_sent += n;
        }
    } else {
        if (n && output_parser_feed(r->parser, text, n)) r->finish = FIN_ERROR;
        if (final) output_parser_finish(r->parser);
        op_delta d;
        output_parser_take(r->parser, &d);
        int has_lp = r->logprobs && x->lp.sent < x->lp.n;
        if (d.reasoning_len || d.content_len || (has_lp && (final || d.n_tool_deltas))) {
            chunk_head(e, r, &b);
            sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"delta\":{", r->choice);
            int comma = 0;
            if (d.reasoning_len) {
                SV_LIT(&b, "\"reasoning_content\":");
                sv_json_str(&b, d.reasoning, d.reasoning_len);
                comma = 1;
            }
            if (d.content_len) {
                if (comma) SV_LIT(&b, ",");
                SV_LIT(&b, "\"content\":");
                sv_json_str(&b, d.content, d.content_len);
            }
            SV_LIT(&b, "},\"logprobs\":");
            if (has_lp) {
                chat_logprobs(e, &b, x->lp.v, x->lp.sent, x->lp.n);
                x->lp.sent = x->lp.n;
            } else SV_LIT(&b, "null");
            SV_LIT(&b, ",\"finish_reason\":null}]}\n\n");
        }
        /* tool calls as OpenAI streams them: id, type and name (arguments "") once the name is
         * known, then the arguments string piece by piece as the model writes it */
        for (int i = 0; i < d.n_tool_deltas; i++) {
            const op_tool_delta *td = &d.tool_deltas[i];
            if (td->name) {
                char cid[40];
                random_id(cid, sizeof cid, "call_");
                chunk_head(e, r, &b);
                sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,\"id\":\"%s\","
                                "\"type\":\"function\",\"function\":{\"name\":",
                            r->choice, td->index, cid);
                sv_json_str(&b, td->name, strlen(td->name));
                SV_LIT(&b, ",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
            }
            if (td->args_len) {
                chunk_head(e, r, &b);
                sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":",
                            r->choice, td->index);
                sv_json_str(&b, td->args, td->args_len);
                SV_LIT(&b, "}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
            }
        }
    }
    if (b.n) req_publish(r, &b, 0, 0);
    sv_buf_free(&b);
}

/* The final SSE chunks, or the whole JSON body of a non-streaming response. */
static void finish_output(serve_engine *e, serve_req *r, req_extra *x) {
    sv_buf b = {0};
    if (r->kind == REQ_CHAT && output_parser_n_calls(r->parser) > 0 && r->finish == FIN_STOP) r->finish = FIN_TOOLS;
    if (r->stream) {
        chunk_head(e, r, &b);
        if (r->kind == REQ_CHAT)
            sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"%s\"}]}\n\n",
                        r->choice, finish_str(r->finish));
        else
            sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"%s\"}]}\n\n",
                        r->choice, finish_str(r->finish));
        if (r->include_usage) {
            chunk_head(e, r, &b);
            SV_LIT(&b, ",\"choices\":[],\"usage\":");
            usage_json(r, &b);
            SV_LIT(&b, "}\n\n");
        }
        SV_LIT(&b, "data: [DONE]\n\n");
        req_publish(r, &b, 1, 200);
        sv_buf_free(&b);
        return;
    }
    SV_LIT(&b, "{\"id\":");
    sv_json_str(&b, r->id, strlen(r->id));
    sv_buf_addf(&b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                r->kind == REQ_CHAT ? "chat.completion" : "text_completion", (long long)r->created);
    sv_json_str(&b, e->model_name, strlen(e->model_name));
    if (r->kind == REQ_CHAT) {
        size_t cl, rl;
        const char *content = output_parser_content(r->parser, &cl);
        const char *reasoning = output_parser_reasoning(r->parser, &rl);
        int nc = output_parser_n_calls(r->parser);
        sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"message\":{\"role\":\"assistant\",\"content\":", r->choice);
        if (nc && !cl) SV_LIT(&b, "null");
        else sv_json_str(&b, content, cl);
        if (rl) {
            SV_LIT(&b, ",\"reasoning_content\":");
            sv_json_str(&b, reasoning, rl);
        }
        if (nc) {
            SV_LIT(&b, ",\"tool_calls\":[");
            for (int i = 0; i < nc; i++) {
                const op_tool_call *tc = output_parser_call(r->parser, i);
                char cid[40];
                random_id(cid, sizeof cid, "call_");
                sv_buf_addf(&b, "%s{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":", i ? "," : "", cid);
                sv_json_str(&b, tc->name, strlen(tc->name));
                SV_LIT(&b, ",\"arguments\":");
                sv_json_str(&b, tc->arguments, strlen(tc->arguments));
                SV_LIT(&b, "}}");
            }
            SV_LIT(&b, "]");
        }
        SV_LIT(&b, "},\"logprobs\":");
        if (r->logprobs) chat_logprobs(e, &b, x->lp.v, 0, x->lp.n);
        else SV_LIT(&b, "null");
    } else {
        sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"text\":", r->choice);
        sv_json_str(&b, r->text.p ? r->text.p : "", r->text.n);
        SV_LIT(&b, ",\"logprobs\":");
        if (r->logprobs) completion_logprobs(e, &b, x->lp.v, 0, x->lp.n, 0);
        else SV_LIT(&b, "null");
    }
    sv_buf_addf(&b, ",\"finish_reason\":\"%s\"}],\"usage\":", finish_str(r->finish));
    usage_json(r, &b);
    SV_LIT(&b, "}");
    req_publish(r, &b, 1, 200);
    sv_buf_free(&b);
}

static void fail_request(serve_req *r, int status, const char *msg) {
    sv_buf b = {0};
    if (r->stream) {
        SV_LIT(&b, "data: {\"error\":{\"message\":");
        sv_json_str(&b, msg, strlen(msg));
        SV_LIT(&b, ",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n");
    } else {
        SV_LIT(&b, "{\"error\":{\"message\":");
        sv_json_str(&b, msg, strlen(msg));
        SV_LIT(&b, ",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    }
    req_publish(r, &b, 1, status);
    sv_buf_free(&b);
}

/* ------------------------------------------------------------------ requests */

void req_release(serve_req *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    free(r->prompt);
    free(r->forced);
    free(r->sep);
    free(r->close);
    jcon_schema_free(r->name_schema);
    for (int k = 0; k < r->n_tools; k++) {
        if (r->tool_schema) jcon_schema_free(r->tool_schema[k]);
        if (r->tool_name) free(r->tool_name[k]);
    }
    free(r->tool_schema);
    free(r->tool_name);
    jcon_free(r->call_jc);
    sv_buf_free(&r->call_name);
    jcon_free(r->jc);
    jcon_schema_free(r->jschema);
    sampler_free(r->smp);
    stop_matcher_free(&r->stop);
    output_parser_free(r->parser);
    sv_buf_free(&r->out);
    sv_buf_free(&r->text);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int engine_submit(serve_engine *e, serve_req *r) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping) { pthread_mutex_unlock(&e->mu); return 2; }
    if (e->q_len >= e->o.queue_max + (e->o.parallel - e->n_active)) { pthread_mutex_unlock(&e->mu); return 1; }
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    r->next = NULL;
    r->t_submit_us = now_us();
    if (e->q_tail) e->q_tail->next = r;
    else e->q_head = r;
    e->q_tail = r;
    e->q_len++;
    e->m_requests++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int engine_wait_room(serve_engine *e, int timeout_ms) {
    pthread_mutex_lock(&e->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)timeout_ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    while (!e->stopping && e->q_len >= e->o.queue_max + (e->o.parallel - e->n_active))
        if (pthread_cond_timedwait(&e->room_cv, &e->mu, &ts)) break;
    int ok = e->q_len < e->o.queue_max + (e->o.parallel - e->n_active);
    pthread_mutex_unlock(&e->mu);
    return ok;
}

void engine_count_http(serve_engine *e, int is_error) {
    pthread_mutex_lock(&e->mu);
    e->m_http++;
    if (is_error) e->m_http_err++;
    pthread_mutex_unlock(&e->mu);
}

/* ------------------------------------------------------------------ the engine thread */

static int is_eos(const serve_engine *e, int32_t t) {
    for (int i = 0; i < e->n_eos; i++)
        if (e->eos[i] == t) return 1;
    return 0;
}

static float log_softmax_at(const float *lg, int n, int32_t t) {
    float mx = lg[0];
    for (int i = 1; i < n; i++) if (lg[i] > mx) mx = lg[i];
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)lg[i] - mx);
    return (float)((double)lg[t] - mx - log(s));
}

/* Passes a released piece of text on: completion text or the chat parser, and out to the stream. */
static void deliver(serve_engine *e, serve_req *r, req_extra *x, const char *s, size_t n, int final) {
    if (r->kind == REQ_COMPLETION) sv_buf_add(&r->text, s, n);
    if (r->stream) stream_delta(e, r, x, s, n, final);
    else if (r->kind == REQ_CHAT) {
        if (n) output_parser_feed(r->parser, s, n);
        if (final) output_parser_finish(r->parser);
    }
}

/* Ends a request: flushes held text, writes the final output, snapshots the context. */
static void ctx_finish(serve_engine *e, context *c, int fin) {
    serve_req *r = c->req;
    req_extra *x = (req_extra *)r->priv; /* engine-private block, see admit() */
    r->finish = fin;
    if (fin == FIN_CANCEL) {
        req_publish(r, NULL, 1, 499);
    } else if (fin == FIN_ERROR) {
        fail_request(r, 500, "generation failed");
    } else {
        char *tail = e->piece;
        size_t n = tokenizer_stream_flush(&r->ts, tail, e->piece_cap);
        if (n == (size_t)-1) n = 0;
        size_t m2 = 0;
        const char *out = NULL;
        if (r->stop.stopped < 0) {
            out = stop_matcher_push(&r->stop, tail, n, &m2);
            if (out && m2) deliver(e, r, x, out, m2, 0);
            if (r->stop.stopped < 0) {
                out = stop_matcher_flush(&r->stop, &m2);
                if (out && m2) deliver(e, r, x, out, m2, 0);
            }
        }
        deliver(e, r, x, "", 0, 1);
        finish_output(e, r, x);
    }
    pthread_mutex_lock(&e->mu);
    e->m_finished++;
    if (fin == FIN_CANCEL || fin == FIN_SHUTDOWN) e->m_cancelled++;
    e->n_active--;
    pthread_cond_broadcast(&e->room_cv);
    pthread_mutex_unlock(&e->mu);
    free(x->lp.v);
    free(x);
    r->priv = NULL;
    c->req = NULL;
    c->has_next = 0;
    c->used = ++e->tick;
    if (fin != FIN_ERROR && c->n_hist > 0) ctx_snapshot(e, c);
    req_release(r);
}

/* A sampled token: logprobs, text, stop strings, limits. */
static void on_token(serve_engine *e, context *c, int32_t t, const sampler_result *res) {
    serve_req *r = c->req;
    req_extra *x = (req_extra *)r->priv;
    r->n_gen++;
    if (!r->t_first_us) r->t_first_us = now_us();
    if (!r->ignore_eos && is_eos(e, t)) { ctx_finish(e, c, FIN_STOP); return; }
    if (r->logprobs) {
        if (x->lp.n == x->lp.cap) {
            int cap = x->lp.cap ? 2 * x->lp.cap : 32;
            sampler_result *v = realloc(x->lp.v, cap * sizeof *v);
            if (v) { x->lp.v = v; x->lp.cap = cap; }
        }
        if (x->lp.n < x->lp.cap) x->lp.v[x->lp.n++] = *res;
    }
    sampler_accept(r->smp, t);
    char *piece = e->piece;
    size_t n = 0;
    if (!tokenizer_is_special(e->tok, t)) n = tokenizer_stream_put(&r->ts, t, piece, e->piece_cap);
    if (n == (size_t)-1) n = 0;
    size_t m2 = 0;
    const char *out = stop_matcher_push(&r->stop, piece, n, &m2);
    if (out && m2) deliver(e, r, x, out, m2, 0);
    else if (r->stream && r->logprobs && r->kind == REQ_COMPLETION) deliver(e, r, x, "", 0, 0);
    if (r->stop.stopped >= 0) { ctx_finish(e, c, FIN_STOP); return; }
    if (r->n_forced && !r->force_armed && r->parser && !output_parser_in_reasoning(r->parser)) r->force_armed = 1;
    if (r->n_gen >= r->max_tokens || c->n_hist + 1 > e->o.n_ctx) { ctx_finish(e, c, FIN_LENGTH); return; }
    c->next_tok = t;
    c->has_next = 1;
}

/* A forced tool call (serve_req: tool_choice) goes through these parts in order: the engine
 * writes the fixed ones (OPEN, SEP, CLOSE, END), the model the masked ones (NAME, ARGS). */
enum { CALL_NONE, CALL_OPEN, CALL_NAME, CALL_SEP, CALL_ARGS, CALL_CLOSE, CALL_END };

/* The forced call's next part; CALL_NONE (unforced from here on) if a matcher cannot be made. */
static void call_next(serve_engine *e, serve_req *r) {
    jcon_free(r->call_jc);
    r->call_jc = NULL;
    r->call_at = 0;
    switch (r->call) {
    case CALL_OPEN: r->call = r->forced_tool >= 0 ? CALL_ARGS : r->name_schema ? CALL_NAME : CALL_NONE; break;
    case CALL_NAME: { /* which tool: the name as written, without blanks around it */
        const char *p = r->call_name.p ? r->call_name.p : "";
        size_t n = r->call_name.n;
        while (n && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) { p++; n--; }
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\n' || p[n - 1] == '\t' || p[n - 1] == '\r')) n--;
        r->forced_tool = -1;
        for (int k = 0; k < r->n_tools; k++)
            if (strlen(r->tool_name[k]) == n && !memcmp(r->tool_name[k], p, n)) r->forced_tool = k;
        r->call = r->forced_tool >= 0 ? CALL_SEP : CALL_NONE;
        break;
    }
    case CALL_SEP: r->call = CALL_ARGS; break;
    case CALL_ARGS: r->call = CALL_CLOSE; break;
    default: r->call = CALL_END; break;
    }
    if (r->call == CALL_NAME || r->call == CALL_ARGS) {
        r->call_jc = jcon_new(r->call == CALL_NAME ? r->name_schema : r->tool_schema[r->forced_tool], e->jvocab);
        if (!r->call_jc) r->call = CALL_NONE;
    }
}

/* The next token of a request from its logits: usually a draw of the sampler, but a forced
 * call's fixed parts are written instead, and a JSON matcher masks the draw: the forced
 * call's (name or arguments), or response_format's after any reasoning. */
static int32_t draw_token(serve_engine *e, context *c, sampler_result *res) {
    serve_req *r = c->req;
    /* log-probabilities only for a request that asked for them: the log-softmax over the
     * vocabulary costs ~1 ms a token, which 16 streams pay 16 times per step */
    sampler_result *lp = r->logprobs ? res : NULL;
    memset(res, 0, sizeof *res);
    int in_call = r->call != CALL_NONE && r->force_armed;
    if (in_call && r->call != CALL_NAME && r->call != CALL_ARGS) { /* no draw: the token is fixed */
        int32_t tok = e->eos[0];
        if (r->call == CALL_END) r->call = CALL_NONE; /* once: with ignore_eos the model goes on freely */
        else {
            const int32_t *seq = r->call == CALL_OPEN ? r->forced : r->call == CALL_SEP ? r->sep : r->close;
            int n = r->call == CALL_OPEN ? r->n_forced : r->call == CALL_SEP ? r->n_sep : r->n_close;
            tok = seq[r->call_at++];
            if (r->call_at == n) call_next(e, r);
        }
        r->n_fixed++;
        res->token = tok;
        if (lp) res->logprob = log_softmax_at(c->logits, e->vocab, tok);
        return tok;
    }
    jcon *mj = in_call ? r->call_jc : r->jc && !(r->parser && output_parser_in_reasoning(r->parser)) ? r->jc : NULL;
    int32_t tok;
    if (mj) {
        memcpy(e->masked, c->logits, (size_t)e->vocab * sizeof(float));
        if (jcon_mask(mj, e->masked) > 0) tok = sampler_sample(r->smp, e->masked, lp);
        else tok = e->eos[0]; /* cannot happen for a compiled schema; end rather than sample from nothing */
    } else
        tok = sampler_sample(r->smp, c->logits, lp);
    res->token = tok;
    if (e->fake) { /* test hook: a scripted output (around the fixed tokens), then end of sequence */
        int at = r->n_gen - r->n_fixed;
        tok = at < (int)e->n_fake ? e->fake[at] : e->eos[0];
        res->token = tok;
        if (lp) res->logprob = log_softmax_at(c->logits, e->vocab, tok);
    }
    if (!mj) return tok;
    if (!jcon_accept(mj, tok)) { /* a scripted token (test hook) left the grammar: stop masking */
        if (mj == r->jc) r->jc = NULL;
        else { r->call_jc = NULL; r->call = CALL_NONE; }
        jcon_free(mj);
    } else if (mj == r->call_jc) {
        size_t n = 0;
        const unsigned char *b = r->call == CALL_NAME ? tokenizer_token_bytes(e->tok, tok, &n) : NULL;
        if (b) sv_buf_add(&r->call_name, (const char *)b, n);
        if (jcon_complete(mj)) call_next(e, r);
    }
    return tok;
}

/* Is pos (a prompt index) a snapshot point? The end of the prompt, and just before its last
 * <|im_start|> (where the assistant turn begins: the point a follow-up turn diverges from when
 * the template rewrites the previous answer, e.g. drops its reasoning). Earlier message
 * boundaries are not cut: every cut is one more forward pass, a full read of the weights on a
 * memory-bound model, and a follow-up reuses the end of the previous turn anyway. */
static int is_boundary(const serve_engine *e, const serve_req *r, int pos) {
    const req_extra *x = r->priv;
    return pos == r->n_prompt || pos == x->snap_at;
}

static int admit(serve_engine *e, serve_req *r) {
    req_extra *x = calloc(1, sizeof *x);
    if (!x) return -1;
    int ci = ctx_acquire(e, r);
    if (ci < 0) { free(x); return -1; }
    r->priv = x; /* engine-private; freed in ctx_finish */
    if (r->jschema && !(r->jc = jcon_new(r->jschema, e->jvocab))) return -1;
    if (r->n_forced) r->call = CALL_OPEN;
    x->snap_at = -1;
    for (int p = r->n_prompt - 1; e->im_start >= 0 && p > r->n_cached; p--)
        if (r->prompt[p] == e->im_start) { x->snap_at = p; break; }
    tokenizer_stream_init(&r->ts, e->tok);
    sampler_set_prompt(r->smp, r->prompt, r->n_prompt);
    pthread_mutex_lock(&e->mu);
    if (r->n_cached > 0) e->m_cache_hits++;
    else e->m_cache_misses++;
    e->m_cached_toks += (uint64_t)r->n_cached;
    e->m_prompt_toks += (uint64_t)r->n_prompt;
    pthread_mutex_unlock(&e->mu);
    if (r->stream && r->kind == REQ_CHAT) {
        sv_buf b = {0};
        chunk_head(e, r, &b);
        sv_buf_addf(&b, ",\"choices\":[{\"index\":%d,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                        "\"finish_reason\":null}]}\n\n", r->choice);
        req_publish(r, &b, 0, 200);
        sv_buf_free(&b);
    }
    return ci;
}

static void rate_note(serve_engine *e, int64_t t, uint64_t toks) {
    e->rate_i = (e->rate_i + 1) % 64;
    e->rate_t[e->rate_i] = t;
    e->rate_tok[e->rate_i] = toks;
}

static void *engine_main(void *arg) {
    serve_engine *e = arg;
    /* OpenMP's thread count is per thread: the one model_open set on the main thread does not
     * carry over to this one */
    if (e->o.threads > 0) omp_set_num_threads(e->o.threads);
    qnext_batch_item *items = calloc((size_t)e->max_ctxs + 1, sizeof *items);
    int *item_ctx = calloc((size_t)e->max_ctxs + 1, sizeof *item_ctx);
    int *item_end = calloc((size_t)e->max_ctxs + 1, sizeof *item_end);
    int rr = 0; /* round-robin start for prefill fairness */
    if (!items || !item_ctx || !item_end) { e->quit = 1; }
    for (;;) {
        pthread_mutex_lock(&e->mu);
        int64_t t = now_us();
        int cancel_all = e->cancel_at_us && t >= e->cancel_at_us;
        /* queued requests during shutdown, or cancelled by the client before a slot */
        serve_req **pp = &e->q_head, *prev = NULL;
        while (*pp) {
            serve_req *r = *pp;
            if (atomic_load(&r->cancelled) || cancel_all) {
                *pp = r->next;
                if (e->q_tail == r) e->q_tail = prev;
                e->q_len--;
                e->m_cancelled++;
                pthread_mutex_unlock(&e->mu);
                if (cancel_all) fail_request(r, 503, "the server is shutting down");
                else req_publish(r, NULL, 1, 499);
                req_release(r);
                pthread_mutex_lock(&e->mu);
                pp = &e->q_head;
                prev = NULL;
                continue;
            }
            prev = r;
            pp = &r->next;
        }
        /* admit into free slots */
        while (e->q_head && e->n_active < e->o.parallel) {
            serve_req *r = e->q_head;
            e->q_head = r->next;
            if (!e->q_head) e->q_tail = NULL;
            e->q_len--;
            e->n_active++;
            pthread_mutex_unlock(&e->mu);
            if (admit(e, r) < 0) {
                fail_request(r, 503, "no context available (out of memory)");
                req_release(r);
                pthread_mutex_lock(&e->mu);
                e->n_active--;
            } else pthread_mutex_lock(&e->mu);
            pthread_cond_broadcast(&e->room_cv);
        }
        if (e->n_active == 0) {
            e->m_snap_bytes = e->snap_bytes;
            e->m_n_ctxs = e->n_ctxs;
            if (e->quit && !e->q_head) { pthread_mutex_unlock(&e->mu); break; }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            ts.tv_sec += ts.tv_nsec / 1000000000L;
            ts.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        pthread_mutex_unlock(&e->mu);

        /* cancellations (client gone, or shutdown past the drain time) free their slot now */
        for (int i = 0; i < e->max_ctxs; i++)
            if (e->ctx[i].s && e->ctx[i].req) {
                if (atomic_load(&e->ctx[i].req->cancelled)) ctx_finish(e, &e->ctx[i], FIN_CANCEL);
                else if (cancel_all) ctx_finish(e, &e->ctx[i], FIN_SHUTDOWN); /* ends the stream properly */
            }

        /* build one batch: decode tokens first, then prefill chunks in the room left */
        int n_items = 0, budget = e->ubatch;
        for (int i = 0; i < e->max_ctxs; i++) {
            context *c = &e->ctx[i];
            if (!c->s || !c->req || !c->has_next) continue;
            if (budget <= 0) break; /* more slots than the batch holds (tiny --ctx): the rest go next step */
            items[n_items] = (qnext_batch_item){c->s, &c->next_tok, 1, c->logits, QNEXT_LOGITS_LAST};
            item_ctx[n_items] = i;
            item_end[n_items] = -1;
            n_items++;
            budget--;
        }
        for (int k = 0; k < e->max_ctxs && budget > 0; k++) {
            int i = (rr + k) % e->max_ctxs;
            context *c = &e->ctx[i];
            if (!c->s || !c->req || c->has_next || c->prefill_at >= c->req->n_prompt) continue;
            serve_req *r = c->req;
            int lim = e->o.prefill_chunk < budget ? e->o.prefill_chunk : budget;
            int end = c->prefill_at + lim;
            if (end > r->n_prompt) end = r->n_prompt;
            for (int p = c->prefill_at + 1; p < end; p++)
                if (is_boundary(e, r, p)) { end = p; break; }
            items[n_items] = (qnext_batch_item){c->s, r->prompt + c->prefill_at, end - c->prefill_at, c->logits,
                                                end == r->n_prompt ? QNEXT_LOGITS_LAST : QNEXT_LOGITS_NONE};
            item_ctx[n_items] = i;
            item_end[n_items] = end;
            n_items++;
            budget -= end - c->prefill_at;
        }
        rr++;
        if (!n_items) continue;
        char err[512];
        qnext_status st = qnext_batch_feed(items, n_items, err, sizeof err);
        if (st) {
            fprintf(stderr, "qnext serve: batch failed: %s\n", err);
            for (int k = 0; k < n_items; k++) {
                context *c = &e->ctx[item_ctx[k]];
                ctx_drop_snaps_above(e, c, -1);
                qnext_session_reset(c->s);
                c->n_hist = 0;
                ctx_finish(e, c, FIN_ERROR);
            }
            continue;
        }
        uint64_t gen = 0;
        for (int k = 0; k < n_items; k++) {
            context *c = &e->ctx[item_ctx[k]];
            serve_req *r = c->req;
            memcpy(c->hist + c->n_hist, items[k].tokens, (size_t)items[k].n_tokens * sizeof(int32_t));
            c->n_hist += items[k].n_tokens;
            if (item_end[k] >= 0) {
                c->prefill_at = item_end[k];
                if (is_boundary(e, r, c->prefill_at)) ctx_snapshot(e, c);
                if (c->prefill_at < r->n_prompt) continue;
            }
            /* logits of the last fed token: the next one */
            sampler_result res;
            int32_t tok = draw_token(e, c, &res);
            gen++;
            on_token(e, c, tok, &res);
        }
        pthread_mutex_lock(&e->mu);
        e->m_gen_toks += gen;
        e->m_steps++;
        rate_note(e, now_us(), e->m_gen_toks);
        e->m_snap_bytes = e->snap_bytes;
        e->m_n_ctxs = e->n_ctxs;
        pthread_mutex_unlock(&e->mu);
    }
    free(items);
    free(item_ctx);
    free(item_end);
    return NULL;
}

/* ------------------------------------------------------------------ lifecycle and metrics */

serve_engine *engine_start(qnext_model *m, const qnext_tokenizer *tok, const serve_options *o, const char *model_name,
                           char *err, size_t errlen) {
    serve_engine *e = calloc(1, sizeof *e);
    if (!e) { snprintf(err, errlen, "out of memory"); return NULL; }
    e->m = m;
    e->tok = tok;
    e->o = *o;
    snprintf(e->model_name, sizeof e->model_name, "%s", model_name);
    const qnext_config *cfg = qnext_model_config(m);
    e->vocab = cfg->vocab_size;
    e->ubatch = o->prefill_chunk + o->parallel;
    if (e->ubatch > o->n_ctx) e->ubatch = o->n_ctx;
    /* end of sequence: config.json, generation_config.json, and the chat end markers */
    for (int i = 0; i < cfg->n_eos; i++) e->eos[e->n_eos++] = cfg->eos_token_ids[i];
    sampler_params dummy = sampler_params_default();
    int32_t geos[SAMPLER_MAX_EOS];
    int n_geos = 0;
    if (sampler_load_generation_config(o->model_dir, &dummy, geos, &n_geos, SAMPLER_MAX_EOS, NULL, 0) > 0)
        for (int i = 0; i < n_geos; i++) if (!is_eos(e, geos[i])) e->eos[e->n_eos++] = geos[i];
    const char *ends[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = tokenizer_token_id(tok, ends[i]);
        if (id >= 0 && id < e->vocab && !is_eos(e, id) && e->n_eos < (int)(sizeof e->eos / sizeof e->eos[0]))
            e->eos[e->n_eos++] = id;
    }
    if (e->n_eos == 0) { snprintf(err, errlen, "the model names no end-of-sequence token"); free(e); return NULL; }
    e->im_start = tokenizer_token_id(tok, "<|im_start|>");
    /* the memory one more idle context costs: KV cache + recurrent states */
    size_t kv = 0, st = 0;
    size_t conv_dim = 2 * (size_t)cfg->lin_n_k_heads * cfg->lin_k_dim + (size_t)cfg->lin_n_v_heads * cfg->lin_v_dim;
    for (int i = 0; i < cfg->n_layers; i++) {
        if (cfg->layer_type[i] == QNEXT_LAYER_FULL) kv += 2 * (size_t)o->n_ctx * cfg->n_kv_heads * cfg->head_dim * 4;
        else st += ((size_t)(cfg->conv_kernel - 1) * conv_dim + (size_t)cfg->lin_n_v_heads * cfg->lin_k_dim * cfg->lin_v_dim) * 4;
    }
    e->session_bytes = kv + st + (size_t)o->n_ctx * 12;
    size_t budget = (size_t)(o->cache_mb > 0 ? o->cache_mb : 0) << 20;
    size_t extra = e->session_bytes ? budget / e->session_bytes : 0;
    if (extra > 256) extra = 256;
    e->max_ctxs = o->parallel + (int)extra;
    e->ctx = calloc((size_t)e->max_ctxs, sizeof *e->ctx);
    e->piece_cap = tokenizer_stream_out_max(tok);
    e->piece = malloc(e->piece_cap);
    if (!e->piece || !e->ctx) { snprintf(err, errlen, "out of memory"); free(e->piece); free(e->ctx); free(e); return NULL; }
    const char *fake = getenv("QNEXT_SERVE_FAKE_OUTPUT");
    if (fake && *fake) {
        /* TEST HOOK: every generation emits these tokens (then end of sequence) instead of
         * sampling, so tests can drive the tool-call and reasoning paths through a random model. */
        tokenizer_encode(tok, fake, strlen(fake), &e->fake, &e->n_fake);
        for (size_t i = 0; i < e->n_fake; i++)
            if (e->fake[i] >= e->vocab) e->fake[i] = 0;
        fprintf(stderr, "qnext serve: TEST HOOK QNEXT_SERVE_FAKE_OUTPUT active (%zu scripted tokens)\n", e->n_fake);
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_cond_init(&e->room_cv, NULL);
    e->m_t0 = now_us();
    e->jvocab = jcon_vocab_new(tok, e->vocab, e->eos, e->n_eos);
    e->masked = malloc((size_t)e->vocab * sizeof(float));
    if (!e->jvocab || !e->masked) { snprintf(err, errlen, "out of memory"); engine_free(e); return NULL; }
    /* create the --parallel contexts up front, so a lack of memory shows at start-up, and
     * touch their recurrent states (a reset writes them): the first requests then do not pay
     * for the page faults, 75 MB a context on the bench model, in their time to first token */
    for (int i = 0; i < o->parallel; i++) {
        const int idx = ctx_create(e, err, errlen);
        if (idx < 0) { engine_free(e); return NULL; }
        qnext_session_reset(e->ctx[idx].s);
    }
    if (pthread_create(&e->th, NULL, engine_main, e)) {
        snprintf(err, errlen, "cannot start the engine thread");
        engine_free(e);
        return NULL;
    }
    e->th_started = 1;
    return e;
}

void engine_shutdown(serve_engine *e, int drain_s) {
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    e->cancel_at_us = now_us() + (int64_t)drain_s * 1000000;
    if (!e->cancel_at_us) e->cancel_at_us = 1;
    e->quit = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_cond_broadcast(&e->room_cv);
    pthread_mutex_unlock(&e->mu);
    if (e->th_started) pthread_join(e->th, NULL);
    e->th_started = 0;
}

void engine_free(serve_engine *e) {
    if (!e) return;
    if (e->th_started) engine_shutdown(e, 0);
    for (int i = 0; e->ctx && i < e->max_ctxs; i++) {
        context *c = &e->ctx[i];
        if (!c->s) continue;
        ctx_drop_snaps_above(e, c, -1);
        qnext_session_free(c->s);
        free(c->hist);
        free(c->snaps);
        free(c->logits);
    }
    free(e->ctx);
    free(e->piece);
    free(e->fake);
    jcon_vocab_free(e->jvocab);
    free(e->masked);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_cond_destroy(&e->room_cv);
    free(e);
}

int engine_vocab(const serve_engine *e) { return e->vocab; }
int engine_n_ctx(const serve_engine *e) { return e->o.n_ctx; }

char *engine_metrics(serve_engine *e) {
    sv_buf b = {0};
    pthread_mutex_lock(&e->mu);
    int64_t t = now_us();
    /* generated tokens per second over the last ~10 s of steps */
    double tps = 0;
    int newest = e->rate_i;
    for (int k = 1; k < 64; k++) {
        int i = (newest - k + 64) % 64;
        if (!e->rate_t[i] || t - e->rate_t[i] > 10000000) break;
        if (e->rate_t[newest] > e->rate_t[i])
            tps = (double)(e->rate_tok[newest] - e->rate_tok[i]) * 1e6 / (double)(e->rate_t[newest] - e->rate_t[i]);
    }
    if (e->rate_t[newest] && t - e->rate_t[newest] > 2000000) tps = 0; /* idle */
    int busy = e->n_active;
#define GAUGE(name, help, fmt, v) sv_buf_addf(&b, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " " fmt "\n", v)
#define COUNTER(name, help, v) \
    sv_buf_addf(&b, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))
    COUNTER("qnext_http_requests_total", "HTTP requests received.", e->m_http);
    COUNTER("qnext_http_errors_total", "HTTP requests answered with an error status.", e->m_http_err);
    COUNTER("qnext_requests_total", "Generation requests accepted into the queue.", e->m_requests);
    COUNTER("qnext_requests_finished_total", "Generation requests finished (any reason).", e->m_finished);
    COUNTER("qnext_requests_cancelled_total", "Generation requests cancelled (client gone or shutdown).", e->m_cancelled);
    COUNTER("qnext_prompt_tokens_total", "Prompt tokens of admitted requests.", e->m_prompt_toks);
    COUNTER("qnext_generated_tokens_total", "Tokens sampled.", e->m_gen_toks);
    COUNTER("qnext_engine_steps_total", "Batched forward passes.", e->m_steps);
    GAUGE("qnext_tokens_per_second", "Generated tokens per second over the last 10 s.", "%.3f", tps);
    GAUGE("qnext_queue_length", "Requests waiting for a slot.", "%d", e->q_len);
    GAUGE("qnext_slots_busy", "Slots serving a request.", "%d", busy);
    GAUGE("qnext_slots_total", "Slots (--parallel).", "%d", e->o.parallel);
    COUNTER("qnext_cache_hits_total", "Requests that reused a cached conversation prefix.", e->m_cache_hits);
    COUNTER("qnext_cache_misses_total", "Requests prefilled from scratch.", e->m_cache_misses);
    COUNTER("qnext_cache_cached_tokens_total", "Prompt tokens taken from the cache instead of prefilled.",
            e->m_cached_toks);
    GAUGE("qnext_cache_snapshot_bytes", "Bytes held by conversation snapshots.", "%zu", e->m_snap_bytes);
    GAUGE("qnext_cache_contexts", "Contexts (sessions) alive, busy or idle.", "%d", e->m_n_ctxs);
    GAUGE("qnext_uptime_seconds", "Seconds since start.", "%.1f", (double)(t - e->m_t0) / 1e6);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    /* the C heap, all arenas: memory in use, and memory the allocator holds free (growth of the
     * second with the first flat is fragmentation, not a leak) */
    struct mallinfo2 mi = mallinfo2();
    if (mi.uordblks + mi.hblkhd > 0) { /* zero when malloc is not glibc's (a sanitizer's, a preloaded one) */
        GAUGE("qnext_heap_in_use_bytes", "C heap bytes allocated (malloc'd blocks and their own mappings).", "%zu",
              mi.uordblks + mi.hblkhd);
        GAUGE("qnext_heap_free_bytes", "C heap bytes free inside the allocator's arenas.", "%zu", mi.fordblks);
    }
#endif
#undef GAUGE
#undef COUNTER
    pthread_mutex_unlock(&e->mu);
    return b.p;
}
