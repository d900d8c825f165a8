/* http.c - the HTTP front end of `qnext serve` (libmicrohttpd, one thread per connection):
 * routes, API-key check, request validation into OpenAI-style errors, prompt rendering and
 * tokenization, then hand-off to the engine thread (engine.c) and delivery of its output,
 * as Server-Sent Events for `stream: true`.
 *
 * A client that goes away is noticed while waiting (the socket is peeked every 100 ms) or
 * when a write fails; either way the request is marked cancelled and the engine frees its
 * slot at its next step. */
#define _GNU_SOURCE
#include "serve/server.h"

#include <arpa/inet.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "serve/output_parser.h"
#include "text/chat_template.h"
#include "text/tokenizer_gguf.h"
#include "util/json.h"

typedef struct {
    serve_options o;
    qnext_model *m;
    qnext_tokenizer *tok;
    chat_template *tmpl;       /* NULL when the model has no chat template */
    serve_engine *eng;
    char model_name[256];
    int vocab, n_ctx;
    sampler_params gen_defaults; /* generation_config.json over the sampler's defaults */
    int64_t started;
    atomic_int inflight;       /* requests MHD has not completed yet (for a clean shutdown) */
} server;

typedef struct {
    sv_buf body;
    int too_large;
    int fd;
} conn_state;

/* ------------------------------------------------------------------ responses */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, const char *text,
                                 size_t len) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, const sv_buf *b) {
    return send_text(c, status, "application/json", b->p ? b->p : "{}", b->p ? b->n : 2);
}

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result send_error(server *sv, struct MHD_Connection *c, unsigned status, const char *type,
                                  const char *param, const char *code, const char *msg) {
    sv_buf b = {0};
    SV_LIT(&b, "{\"error\":{\"message\":");
    sv_json_str(&b, msg, strlen(msg));
    SV_LIT(&b, ",\"type\":");
    sv_json_str(&b, type, strlen(type));
    SV_LIT(&b, ",\"param\":");
    if (param) sv_json_str(&b, param, strlen(param));
    else SV_LIT(&b, "null");
    SV_LIT(&b, ",\"code\":");
    if (code) sv_json_str(&b, code, strlen(code));
    else SV_LIT(&b, "null");
    SV_LIT(&b, "}}");
    if (status == 401) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(b.n, b.p, MHD_RESPMEM_MUST_COPY);
        enum MHD_Result rc = MHD_NO;
        if (resp) {
            MHD_add_response_header(resp, "Content-Type", "application/json");
            MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
            rc = MHD_queue_response(c, status, resp);
            MHD_destroy_response(resp);
        }
        sv_buf_free(&b);
        engine_count_http(sv->eng, 1);
        return rc;
    }
    enum MHD_Result rc = send_json(c, status, &b);
    sv_buf_free(&b);
    engine_count_http(sv->eng, 1);
    return rc;
}

#define BAD(param, ...) do { snprintf(err, errlen, __VA_ARGS__); if (bad_param) *bad_param = param; return -1; } while (0)

/* ------------------------------------------------------------------ request fields */

/* Optional number in [lo, hi]; absent or null keeps *out. */
static int opt_num(const json *o, const char *key, double lo, double hi, double *out, char *err, size_t errlen,
                   const char **bad_param) {
    json *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return 0;
    double d;
    if (!json_as_double(v, &d)) BAD(key, "'%s' must be a number", key);
    if (!(d >= lo && d <= hi)) BAD(key, "'%s' must be between %g and %g, got %g", key, lo, hi, d);
    *out = d;
    return 0;
}
static int opt_int(const json *o, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err, size_t errlen,
                   const char **bad_param) {
    json *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return 0;
    int64_t d;
    if (!json_as_int64(v, &d)) BAD(key, "'%s' must be an integer", key);
    if (d < lo || d > hi) BAD(key, "'%s' must be between %lld and %lld, got %lld", key, (long long)lo, (long long)hi,
                              (long long)d);
    *out = d;
    return 0;
}
static int opt_bool(const json *o, const char *key, int *out, char *err, size_t errlen, const char **bad_param) {
    json *v = json_get(o, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (!json_as_bool(v, out)) BAD(key, "'%s' must be a boolean", key);
    return 0;
}

/* logit_bias (OpenAI): {"token id": bias in [-100, 100], ...}, added to the logits before
 * sampling. Keys are decimal token ids inside the model's vocabulary. */
static int parse_logit_bias(server *sv, const json *o, serve_req *r, char *err, size_t errlen, const char **bad_param) {
    json *lb = json_get(o, "logit_bias");
    if (!lb || lb->type == JSON_NULL) return 0;
    if (lb->type != JSON_OBJECT) BAD("logit_bias", "'logit_bias' must be an object mapping token ids to biases");
    if (lb->n == 0) return 0;
    int32_t *ids = malloc(lb->n * sizeof *ids);
    float *bias = malloc(lb->n * sizeof *bias);
    int rc = -1;
    if (!ids || !bias) { snprintf(err, errlen, "out of memory"); goto done; }
    for (size_t k = 0; k < lb->n; k++) {
        const char *key = lb->keys[k];
        size_t kl = lb->key_lens[k];
        int64_t id = 0;
        int ok = kl > 0 && kl <= 10;
        for (size_t i = 0; ok && i < kl; i++) {
            if (key[i] < '0' || key[i] > '9') ok = 0;
            else id = id * 10 + (key[i] - '0');
        }
        if (!ok) {
            snprintf(err, errlen, "'logit_bias' keys must be token ids, got \"%.40s\"", key);
            if (bad_param) *bad_param = "logit_bias";
            goto done;
        }
        if (id >= sv->vocab) {
            snprintf(err, errlen, "'logit_bias': token id %lld is outside the vocabulary [0, %d)", (long long)id, sv->vocab);
            if (bad_param) *bad_param = "logit_bias";
            goto done;
        }
        double d;
        if (!json_as_double(lb->items[k], &d) || !(d >= -100 && d <= 100)) {
            snprintf(err, errlen, "'logit_bias' values must be numbers between -100 and 100 (token id %lld)", (long long)id);
            if (bad_param) *bad_param = "logit_bias";
            goto done;
        }
        ids[k] = (int32_t)id;
        bias[k] = (float)d;
    }
    if (sampler_set_logit_bias(r->smp, ids, bias, (int)lb->n, err, errlen)) {
        if (bad_param) *bad_param = "logit_bias";
        goto done;
    }
    rc = 0;
done:
    free(ids);
    free(bias);
    return rc;
}

/* The fields chat and completions share: sampling, stop, limits, stream. */
static int parse_common(server *sv, const json *o, serve_req *r, int is_chat, char *err, size_t errlen,
                        const char **bad_param) {
    sampler_params sp = sv->gen_defaults;
    double d;
    int64_t i64;
    d = sp.temperature; if (opt_num(o, "temperature", 0, 2, &d, err, errlen, bad_param)) return -1; sp.temperature = (float)d;
    d = sp.top_p;
    if (opt_num(o, "top_p", 0, 1, &d, err, errlen, bad_param)) return -1;
    if (!(d > 0)) BAD("top_p", "'top_p' must be in (0, 1]");
    sp.top_p = (float)d;
    i64 = sp.top_k; if (opt_int(o, "top_k", -1, 1 << 30, &i64, err, errlen, bad_param)) return -1; sp.top_k = i64 < 0 ? 0 : (int)i64;
    d = sp.min_p; if (opt_num(o, "min_p", 0, 1, &d, err, errlen, bad_param)) return -1; sp.min_p = (float)d;
    d = sp.presence_penalty; if (opt_num(o, "presence_penalty", -2, 2, &d, err, errlen, bad_param)) return -1; sp.presence_penalty = (float)d;
    d = sp.frequency_penalty; if (opt_num(o, "frequency_penalty", -2, 2, &d, err, errlen, bad_param)) return -1; sp.frequency_penalty = (float)d;
    d = sp.repetition_penalty;
    if (opt_num(o, "repetition_penalty", 0, 10, &d, err, errlen, bad_param)) return -1;
    if (!(d > 0)) BAD("repetition_penalty", "'repetition_penalty' must be > 0");
    sp.repetition_penalty = (float)d;
    i64 = -1;
    if (opt_int(o, "seed", INT64_MIN, INT64_MAX, &i64, err, errlen, bad_param)) return -1;
    sp.seed = json_get(o, "seed") && json_get(o, "seed")->type != JSON_NULL ? (uint64_t)i64
                                                                             : (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)r;
    i64 = 1;
    if (opt_int(o, "n", 1, SV_MAX_CHOICES, &i64, err, errlen, bad_param)) return -1;
    r->n_choices = (int)i64;

    /* limits */
    int64_t max_tokens = -1;
    if (is_chat) {
        if (opt_int(o, "max_completion_tokens", 1, 1 << 30, &max_tokens, err, errlen, bad_param)) return -1;
        if (max_tokens < 0 && opt_int(o, "max_tokens", 1, 1 << 30, &max_tokens, err, errlen, bad_param)) return -1;
    } else {
        max_tokens = 16; /* the legacy completions default */
        if (opt_int(o, "max_tokens", 1, 1 << 30, &max_tokens, err, errlen, bad_param)) return -1;
    }
    r->max_tokens = max_tokens < 0 ? (1 << 30) : (int)max_tokens;

    /* logprobs */
    if (is_chat) {
        int lp = 0;
        if (opt_bool(o, "logprobs", &lp, err, errlen, bad_param)) return -1;
        i64 = 0;
        if (opt_int(o, "top_logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &i64, err, errlen, bad_param)) return -1;
        if (i64 > 0 && !lp) BAD("top_logprobs", "'top_logprobs' requires 'logprobs': true");
        r->logprobs = lp;
        sp.n_top_logprobs = (int)i64;
    } else {
        i64 = -1;
        if (opt_int(o, "logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &i64, err, errlen, bad_param)) return -1;
        r->logprobs = i64 >= 0;
        sp.n_top_logprobs = i64 > 0 ? (int)i64 : 0;
    }

    if (opt_bool(o, "ignore_eos", &r->ignore_eos, err, errlen, bad_param)) return -1;

    /* stream */
    if (opt_bool(o, "stream", &r->stream, err, errlen, bad_param)) return -1;
    json *so = json_get(o, "stream_options");
    if (so && so->type != JSON_NULL) {
        if (so->type != JSON_OBJECT) BAD("stream_options", "'stream_options' must be an object");
        if (opt_bool(so, "include_usage", &r->include_usage, err, errlen, bad_param)) return -1;
    }

    /* stop strings */
    json *st = json_get(o, "stop");
    const char *stops[16];
    int n_stops = 0;
    if (st && st->type == JSON_STRING) stops[n_stops++] = st->str;
    else if (st && st->type == JSON_ARRAY) {
        if (st->n > 16) BAD("stop", "at most 16 stop strings");
        for (size_t k = 0; k < st->n; k++) {
            if (st->items[k]->type != JSON_STRING) BAD("stop", "'stop' must be a string or a list of strings");
            stops[n_stops++] = st->items[k]->str;
        }
    } else if (st && st->type != JSON_NULL) BAD("stop", "'stop' must be a string or a list of strings");
    if (stop_matcher_init(&r->stop, stops, n_stops, err, errlen)) return -1;

    r->smp = sampler_new(sv->vocab, &sp, err, errlen);
    if (!r->smp) { if (bad_param) *bad_param = NULL; return -1; }
    return parse_logit_bias(sv, o, r, err, errlen, bad_param);
}

/* Content given as a list of parts ([{type: "text", text}]) becomes one string. */
static json *normalise_messages(const json *msgs, char *err, size_t errlen, const char **bad_param) {
    static const char *roles[] = {"system", "developer", "user", "assistant", "tool"};
    for (size_t i = 0; i < msgs->n; i++) {
        json *m = msgs->items[i];
        if (m->type != JSON_OBJECT) { snprintf(err, errlen, "messages[%zu] must be an object", i); *bad_param = "messages"; return NULL; }
        const char *role = json_get_string(m, "role");
        int ok = 0;
        for (int k = 0; role && k < 5; k++) ok |= !strcmp(role, roles[k]);
        if (!ok) {
            snprintf(err, errlen, "messages[%zu].role must be one of system, developer, user, assistant, tool", i);
            *bad_param = "messages";
            return NULL;
        }
        json *c = json_get(m, "content");
        if (c && c->type != JSON_STRING && c->type != JSON_NULL && c->type != JSON_ARRAY) {
            snprintf(err, errlen, "messages[%zu].content must be a string, a list of parts or null", i);
            *bad_param = "messages";
            return NULL;
        }
        if (c && c->type == JSON_ARRAY)
            for (size_t k = 0; k < c->n; k++) {
                json *part = c->items[k];
                const char *type = part->type == JSON_OBJECT ? json_get_string(part, "type") : NULL;
                if (!type || strcmp(type, "text") || !json_get_string(part, "text")) {
                    snprintf(err, errlen, "messages[%zu].content[%zu]: only text parts are supported", i, k);
                    *bad_param = "messages";
                    return NULL;
                }
            }
    }
    json *out = json_clone(msgs);
    if (!out) { snprintf(err, errlen, "out of memory"); return NULL; }
    for (size_t i = 0; i < out->n; i++) {
        json *m = out->items[i], *c = json_get(m, "content");
        if (!c || c->type != JSON_ARRAY) continue;
        sv_buf t = {0};
        for (size_t k = 0; k < c->n; k++) {
            json *tx = json_get(c->items[k], "text");
            sv_buf_add(&t, tx->str, tx->len);
        }
        json_object_set(m, "content", json_new_string(t.p ? t.p : "", t.n));
        sv_buf_free(&t);
    }
    return out;
}

static serve_req *req_new(void) {
    serve_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->stop.stopped = -1;
    atomic_init(&r->cancelled, 0);
    r->created = (int64_t)time(NULL);
    return r;
}

/* response_format: text (or absent), json_object, or json_schema {name, schema, strict}. The
 * schema is compiled here, so that an unsupported one is the client's 400, not a failure
 * later. */
static int parse_response_format(const json *o, serve_req *r, char *err, size_t errlen, const char **bad_param) {
    const json *rf = json_get(o, "response_format");
    if (!rf || rf->type == JSON_NULL) return 0;
    const char *type = rf->type == JSON_OBJECT ? json_get_string(rf, "type") : NULL;
    *bad_param = "response_format";
    if (!type) { snprintf(err, errlen, "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}"); return -1; }
    if (!strcmp(type, "text")) return 0;
    const json *schema = NULL;
    if (!strcmp(type, "json_schema")) {
        const json *js = json_get(rf, "json_schema");
        schema = js && js->type == JSON_OBJECT ? json_get(js, "schema") : NULL;
        if (!schema || (schema->type != JSON_OBJECT && schema->type != JSON_TRUE)) {
            snprintf(err, errlen, "'response_format' of type json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}");
            return -1;
        }
    } else if (strcmp(type, "json_object")) {
        snprintf(err, errlen, "'response_format' type '%.100s' is not one of text, json_object, json_schema", type);
        return -1;
    }
    char cerr[384];
    r->jschema = jcon_schema_compile(schema, cerr, sizeof cerr);
    if (!r->jschema) { snprintf(err, errlen, "response_format: %s", cerr); return -1; }
    return 0;
}

/* tool_choice required or named (server.h, serve_req): the tools' names and argument
 * schemas, and the fixed parts of the call in the format the Qwen3 templates teach, which the
 * output parser reads. In a reasoning turn the call comes after </think> and a blank line. */
static int setup_forced_call(server *sv, serve_req *r, const json *tools, const json *forced_name, unsigned *status,
                             char *err, size_t errlen) {
    *status = 500;
    r->n_tools = (int)tools->n;
    r->tool_schema = calloc(tools->n, sizeof *r->tool_schema);
    r->tool_name = calloc(tools->n, sizeof *r->tool_name);
    json *names = json_new(JSON_ARRAY), *name_schema = json_new(JSON_OBJECT);
    int bad = !r->tool_schema || !r->tool_name || !names || !name_schema;
    r->forced_tool = -1;
    for (size_t k = 0; !bad && k < tools->n; k++) {
        const json *fn = json_get(tools->items[k], "function"), *name = json_get(fn, "name");
        const json *params = json_get(fn, "parameters");
        /* arguments follow the parameters schema, or are any object when it is not supported */
        if (params && params->type == JSON_OBJECT) r->tool_schema[k] = jcon_schema_compile(params, NULL, 0);
        if (!r->tool_schema[k]) r->tool_schema[k] = jcon_schema_compile(NULL, NULL, 0);
        r->tool_name[k] = json_write_compact(name, NULL);
        json *copy = json_clone(name);
        bad = !r->tool_schema[k] || !r->tool_name[k] || !copy || !json_array_push(names, copy);
        if (bad) json_free(copy);
        if (forced_name && !strcmp(name->str, forced_name->str)) r->forced_tool = (int)k;
    }
    if (!bad && !forced_name && tools->n <= 64) { /* an enum holds up to 64 values: beyond, the name is free */
        bad = !json_object_set(name_schema, "enum", names);
        if (!bad) names = NULL; /* owned by name_schema now */
        bad = bad || !(r->name_schema = jcon_schema_compile(name_schema, NULL, 0));
    }
    json_free(names);
    json_free(name_schema);
    if (bad) { snprintf(err, errlen, "out of memory"); return -1; }
    const char *blank = r->start_in_reasoning ? "\n\n" : "";
    char open[512];
    if (forced_name)
        snprintf(open, sizeof open, "%s<tool_call>\n{\"name\": %.300s, \"arguments\": ", blank, r->tool_name[r->forced_tool]);
    else
        snprintf(open, sizeof open, "%s<tool_call>\n{\"name\": ", blank);
    static const char sep[] = ", \"arguments\": ", close[] = "}\n</tool_call>";
    size_t nf = 0, ns = 0, nc = 0;
    bad = tokenizer_encode(sv->tok, open, strlen(open), &r->forced, &nf) ||
          tokenizer_encode(sv->tok, sep, sizeof sep - 1, &r->sep, &ns) ||
          tokenizer_encode(sv->tok, close, sizeof close - 1, &r->close, &nc);
    if (bad) { snprintf(err, errlen, "out of memory"); return -1; }
    r->n_forced = (int)nf;
    r->n_sep = (int)ns;
    r->n_close = (int)nc;
    r->force_armed = !r->start_in_reasoning;
    *status = 400;
    return 0;
}

/* Builds a request from a chat or completion body. Returns NULL with err/status on failure. */
static serve_req *build_request(server *sv, const json *o, int kind, unsigned *status, char *err, size_t errlen,
                                const char **bad_param, const char **code) {
    serve_req *r = req_new();
    if (!r) { *status = 500; snprintf(err, errlen, "out of memory"); return NULL; }
    r->kind = kind;
    *status = 400;
    char *prompt_text = NULL;
    size_t prompt_len = 0;
    if (parse_common(sv, o, r, kind == REQ_CHAT, err, errlen, bad_param)) goto fail;
    if (parse_response_format(o, r, err, errlen, bad_param)) goto fail;
    if (kind == REQ_CHAT) {
        json *msgs = json_get(o, "messages");
        if (!msgs || msgs->type != JSON_ARRAY) { *bad_param = "messages"; snprintf(err, errlen, "'messages' must be a list of messages"); goto fail; }
        if (msgs->n == 0) { *bad_param = "messages"; snprintf(err, errlen, "'messages' must not be empty"); goto fail; }
        json *tools = json_get(o, "tools");
        if (tools && tools->type == JSON_NULL) tools = NULL;
        if (tools && tools->type != JSON_ARRAY) { *bad_param = "tools"; snprintf(err, errlen, "'tools' must be a list"); goto fail; }
        if (tools && tools->n == 0) tools = NULL;
        for (size_t k = 0; tools && k < tools->n; k++) {
            json *t = tools->items[k];
            json *fn = t->type == JSON_OBJECT ? json_get(t, "function") : NULL;
            if (!fn || fn->type != JSON_OBJECT || !json_get_string(fn, "name")) {
                *bad_param = "tools";
                snprintf(err, errlen, "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", k);
                goto fail;
            }
        }
        json *tc = json_get(o, "tool_choice");
        int tools_off = 0;
        const json *forced_name = NULL; /* tool_choice names this function (a JSON string) */
        int required = 0;
        if (tc && tc->type == JSON_STRING) {
            if (!strcmp(tc->str, "none")) tools_off = 1;
            else if (!strcmp(tc->str, "required")) required = 1;
            else if (strcmp(tc->str, "auto")) {
                *bad_param = "tool_choice";
                snprintf(err, errlen, "'tool_choice' must be none, auto, required or a function");
                goto fail;
            }
        } else if (tc && tc->type == JSON_OBJECT) {
            json *fn = json_get(tc, "function");
            forced_name = fn && fn->type == JSON_OBJECT ? json_get(fn, "name") : NULL;
            if (!forced_name || forced_name->type != JSON_STRING) {
                *bad_param = "tool_choice";
                snprintf(err, errlen, "'tool_choice' must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
                goto fail;
            }
            int found = 0;
            for (size_t k = 0; tools && k < tools->n; k++)
                found |= !strcmp(json_get_string(json_get(tools->items[k], "function"), "name"), forced_name->str);
            if (!found) {
                *bad_param = "tool_choice";
                snprintf(err, errlen, "'tool_choice' names the function '%.200s', which is not in 'tools'", forced_name->str);
                goto fail;
            }
        } else if (tc && tc->type != JSON_NULL) {
            *bad_param = "tool_choice";
            snprintf(err, errlen, "'tool_choice' must be a string or an object");
            goto fail;
        }
        if (required && !tools) {
            *bad_param = "tool_choice";
            snprintf(err, errlen, "'tool_choice' is 'required' but no 'tools' are given");
            goto fail;
        }
        if ((required || forced_name) && r->jschema) {
            *bad_param = "response_format";
            snprintf(err, errlen, "'response_format' cannot be combined with a forced tool call ('tool_choice')");
            goto fail;
        }
        json *kw = json_get(o, "chat_template_kwargs");
        if (kw && kw->type == JSON_NULL) kw = NULL;
        if (kw && kw->type != JSON_OBJECT) { *bad_param = "chat_template_kwargs"; snprintf(err, errlen, "'chat_template_kwargs' must be an object"); goto fail; }
        if (!sv->tmpl) { snprintf(err, errlen, "this model has no chat template; use /v1/completions"); goto fail; }
        json *norm = normalise_messages(msgs, err, errlen, bad_param);
        if (!norm) goto fail;
        char terr[512];
        int rc = chat_template_render(sv->tmpl, norm, tools, 1, kw, &prompt_text, &prompt_len, terr, sizeof terr);
        json_free(norm);
        if (rc) { snprintf(err, errlen, "chat template: %s", terr); *bad_param = "messages"; goto fail; }
        r->start_in_reasoning = chat_prompt_opens_think(prompt_text, prompt_len);
        r->parse_tools = tools && !tools_off;
        size_t n = 0;
        if (tokenizer_encode(sv->tok, prompt_text, prompt_len, &r->prompt, &n)) { *status = 500; snprintf(err, errlen, "out of memory"); goto fail; }
        r->n_prompt = (int)n;
        if ((required || forced_name) && setup_forced_call(sv, r, tools, forced_name, status, err, errlen)) goto fail;
        r->parser = output_parser_new(r->start_in_reasoning, r->parse_tools);
        if (!r->parser) { *status = 500; snprintf(err, errlen, "out of memory"); goto fail; }
        snprintf(r->id, sizeof r->id, "chatcmpl-%016llx%08x", (unsigned long long)(uintptr_t)r ^ (unsigned long long)r->created,
                 (unsigned)rand());
    } else {
        json *p = json_get(o, "prompt");
        if (p && p->type == JSON_ARRAY && p->n == 1 && (p->items[0]->type == JSON_STRING || p->items[0]->type == JSON_ARRAY))
            p = p->items[0]; /* a batch of one */
        if (!p) { *bad_param = "prompt"; snprintf(err, errlen, "'prompt' is required"); goto fail; }
        if (p->type == JSON_STRING) {
            size_t n = 0;
            if (tokenizer_encode(sv->tok, p->str, p->len, &r->prompt, &n)) { *status = 500; snprintf(err, errlen, "out of memory"); goto fail; }
            r->n_prompt = (int)n;
        } else if (p->type == JSON_ARRAY) {
            r->prompt = malloc((p->n ? p->n : 1) * sizeof(int32_t));
            if (!r->prompt) { *status = 500; snprintf(err, errlen, "out of memory"); goto fail; }
            for (size_t k = 0; k < p->n; k++) {
                int64_t id;
                if (!json_as_int64(p->items[k], &id)) { *bad_param = "prompt"; snprintf(err, errlen, "'prompt' must be a string or a list of token ids (one prompt per request)"); goto fail; }
                if (id < 0 || id >= sv->vocab) { *bad_param = "prompt"; snprintf(err, errlen, "token id %lld is outside the vocabulary [0, %d)", (long long)id, sv->vocab); goto fail; }
                r->prompt[k] = (int32_t)id;
            }
            r->n_prompt = (int)p->n;
        } else { *bad_param = "prompt"; snprintf(err, errlen, "'prompt' must be a string or a list of token ids"); goto fail; }
        snprintf(r->id, sizeof r->id, "cmpl-%016llx%08x", (unsigned long long)(uintptr_t)r ^ (unsigned long long)r->created,
                 (unsigned)rand());
    }
    if (r->n_prompt == 0) { *bad_param = kind == REQ_CHAT ? "messages" : "prompt"; snprintf(err, errlen, "the prompt is empty"); goto fail; }
    for (int k = 0; k < r->n_prompt; k++)
        if (r->prompt[k] >= sv->vocab) {
            *bad_param = kind == REQ_CHAT ? "messages" : "prompt";
            snprintf(err, errlen, "the tokenizer produced id %d, outside the model's vocabulary of %d", r->prompt[k], sv->vocab);
            goto fail;
        }
    if (r->n_prompt > sv->n_ctx) {
        *bad_param = kind == REQ_CHAT ? "messages" : "prompt";
        *code = "context_length_exceeded";
        snprintf(err, errlen, "the prompt has %d tokens, more than the context of %d tokens", r->n_prompt, sv->n_ctx);
        goto fail;
    }
    free(prompt_text);
    return r;
fail:
    free(prompt_text);
    req_release(r);
    return NULL;
}

/* ------------------------------------------------------------------ waiting and streaming */

/* 1 when the peer has closed the connection (or it broke). */
static int peer_gone(int fd) {
    if (fd < 0) return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return 1;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    return 0;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

typedef struct {
    serve_req *r;
    int fd;
} stream_state;

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_state *ss = cls;
    serve_req *r = ss->r;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->out_sent < r->out.n) {
            size_t n = r->out.n - r->out_sent;
            if (n > max) n = max;
            memcpy(buf, r->out.p + r->out_sent, n);
            r->out_sent += n;
            pthread_mutex_unlock(&r->mu);
            return (ssize_t)n;
        }
        if (r->done) {
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        timed_wait(&r->cv, &r->mu, 100);
        if (r->out_sent == r->out.n && !r->done && peer_gone(ss->fd)) {
            atomic_store(&r->cancelled, 1);
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls) {
    stream_state *ss = cls;
    /* the response is gone (finished, or the client disconnected): stop generating */
    atomic_store(&ss->r->cancelled, 1);
    req_release(ss->r);
    free(ss);
}

/* Queues r, waiting for room while the client stays when --queue-full says wait. */
enum { SUBMIT_OK, SUBMIT_FULL, SUBMIT_SHUTDOWN, SUBMIT_GONE };
static int submit(server *sv, conn_state *cs, serve_req *r) {
    int rc;
    while ((rc = engine_submit(sv->eng, r)) == 1) {
        if (!sv->o.queue_wait) return SUBMIT_FULL;
        if (peer_gone(cs->fd)) return SUBMIT_GONE;
        engine_wait_room(sv->eng, 100);
    }
    return rc == 2 ? SUBMIT_SHUTDOWN : SUBMIT_OK;
}

/* The answer to a request that could not be queued. */
static enum MHD_Result refuse(server *sv, struct MHD_Connection *c, int why) {
    if (why == SUBMIT_FULL)
        return send_error(sv, c, 429, "rate_limit_error", NULL, "queue_full", "the server's request queue is full; retry later");
    if (why == SUBMIT_SHUTDOWN)
        return send_error(sv, c, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
    return MHD_NO;
}

/* Waits until the engine has finished r; 0, or -1 when the client left first. */
static int wait_done(serve_req *r, int fd) {
    pthread_mutex_lock(&r->mu);
    while (!r->done) {
        timed_wait(&r->cv, &r->mu, 100);
        if (!r->done && peer_gone(fd)) {
            pthread_mutex_unlock(&r->mu);
            return -1;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* Submits r and answers: a stream, or the finished JSON. */
static enum MHD_Result run_request(server *sv, struct MHD_Connection *c, conn_state *cs, serve_req *r) {
    int why = submit(sv, cs, r);
    if (why != SUBMIT_OK) {
        req_release(r);
        return refuse(sv, c, why);
    }
    engine_count_http(sv->eng, 0);
    if (r->stream) {
        stream_state *ss = malloc(sizeof *ss);
        if (!ss) { atomic_store(&r->cancelled, 1); req_release(r); return MHD_NO; }
        ss->r = r;
        ss->fd = cs->fd;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 8192, stream_reader, ss, stream_free);
        if (!resp) { free(ss); atomic_store(&r->cancelled, 1); req_release(r); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result q = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return q;
    }
    if (wait_done(r, cs->fd)) {
        atomic_store(&r->cancelled, 1);
        req_release(r);
        return MHD_NO;
    }
    enum MHD_Result q;
    if (r->http_status == 499) q = MHD_NO;
    else q = send_text(c, r->http_status ? (unsigned)r->http_status : 200, "application/json", r->out.p ? r->out.p : "{}",
                       r->out.p ? r->out.n : 2);
    req_release(r);
    return q;
}

/* ------------------------------------------------------------------ n > 1: one request per choice */

/* The choices of one request run as n engine requests (each with its own slot and sampler);
 * their outputs are merged here. A stream forwards the choices' SSE events as they come, whole
 * events only, without each choice's usage chunk and [DONE], and ends with one usage chunk
 * (when asked) and one [DONE]. */
typedef struct {
    server *sv;
    serve_req *r[SV_MAX_CHOICES];
    int n, fd;
    int cur;       /* a choice whose event was only partly sent (-1: none) */
    size_t cur_end;/* where that event ends in its buffer */
    sv_buf tail;   /* the closing chunks, once every choice is done */
    size_t tail_sent;
    int tail_made;
} group_state;

static void group_cancel(group_state *g) {
    for (int i = 0; i < g->n; i++) atomic_store(&g->r[i]->cancelled, 1);
}

/* "prompt_tokens" once, "completion_tokens" summed over the choices (as OpenAI counts them). */
static void group_usage(group_state *g, sv_buf *b) {
    int gen = 0;
    for (int i = 0; i < g->n; i++) gen += g->r[i]->n_gen;
    sv_usage_json(b, g->r[0]->n_prompt, gen, g->r[0]->n_cached);
}

/* Is this SSE event (without its blank line) one the group replaces? */
static int group_drops(const char *ev, size_t n) {
    return (n == 12 && !memcmp(ev, "data: [DONE]", 12)) || memmem(ev, n, "\"choices\":[],\"usage\":", 21);
}

static ssize_t group_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    group_state *g = cls;
    for (;;) {
        if (g->cur >= 0) { /* finish the event that was cut */
            serve_req *r = g->r[g->cur];
            pthread_mutex_lock(&r->mu);
            size_t n = g->cur_end - r->out_sent;
            if (n > max) n = max;
            memcpy(buf, r->out.p + r->out_sent, n);
            r->out_sent += n;
            if (r->out_sent == g->cur_end) g->cur = -1;
            pthread_mutex_unlock(&r->mu);
            return (ssize_t)n;
        }
        int all_done = 1;
        for (int i = 0; i < g->n; i++) {
            serve_req *r = g->r[i];
            pthread_mutex_lock(&r->mu);
            while (r->out_sent < r->out.n) { /* the engine appends whole events */
                const char *ev = r->out.p + r->out_sent;
                const char *end = memmem(ev, r->out.n - r->out_sent, "\n\n", 2);
                size_t len = end ? (size_t)(end - ev) + 2 : r->out.n - r->out_sent;
                if (end && group_drops(ev, len - 2)) { r->out_sent += len; continue; }
                size_t n = len > max ? max : len;
                memcpy(buf, ev, n);
                r->out_sent += n;
                if (n < len) { g->cur = i; g->cur_end = r->out_sent - n + len; }
                pthread_mutex_unlock(&r->mu);
                return (ssize_t)n;
            }
            all_done &= r->done;
            pthread_mutex_unlock(&r->mu);
        }
        if (all_done) {
            if (!g->tail_made) {
                serve_req *r0 = g->r[0];
                if (r0->include_usage) {
                    sv_chunk_head(&g->tail, r0, g->sv->model_name);
                    SV_LIT(&g->tail, ",\"choices\":[],\"usage\":");
                    group_usage(g, &g->tail);
                    SV_LIT(&g->tail, "}\n\n");
                }
                SV_LIT(&g->tail, "data: [DONE]\n\n");
                g->tail_made = 1;
            }
            if (g->tail_sent == g->tail.n) return MHD_CONTENT_READER_END_OF_STREAM;
            size_t n = g->tail.n - g->tail_sent;
            if (n > max) n = max;
            memcpy(buf, g->tail.p + g->tail_sent, n);
            g->tail_sent += n;
            return (ssize_t)n;
        }
        for (int i = 0; i < g->n; i++) { /* wait for the first choice still running */
            serve_req *r = g->r[i];
            pthread_mutex_lock(&r->mu);
            int idle = !r->done && r->out_sent == r->out.n;
            if (idle) timed_wait(&r->cv, &r->mu, 20);
            pthread_mutex_unlock(&r->mu);
            if (idle) break;
        }
        if (peer_gone(g->fd)) {
            group_cancel(g);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void group_free(void *cls) {
    group_state *g = cls;
    group_cancel(g); /* finished, or the client went away: stop generating */
    for (int i = 0; i < g->n; i++) req_release(g->r[i]);
    sv_buf_free(&g->tail);
    free(g);
}

/* One JSON body from the choices' bodies: choice 0's, with every choice in "choices" and the
 * usage of all. A choice that failed answers for all. */
static enum MHD_Result group_respond(server *sv, struct MHD_Connection *c, group_state *g) {
    for (int i = 0; i < g->n; i++) {
        serve_req *r = g->r[i];
        if (r->http_status && r->http_status != 200)
            return send_text(c, (unsigned)r->http_status, "application/json", r->out.p ? r->out.p : "{}", r->out.p ? r->out.n : 2);
    }
    char err[256];
    json *body = json_parse(g->r[0]->out.p ? g->r[0]->out.p : "", g->r[0]->out.n, err, sizeof err);
    json *choices = body ? json_get(body, "choices") : NULL;
    int bad = !choices || choices->type != JSON_ARRAY;
    for (int i = 1; i < g->n && !bad; i++) {
        json *bi = json_parse(g->r[i]->out.p ? g->r[i]->out.p : "", g->r[i]->out.n, err, sizeof err);
        json *ci = bi ? json_get(bi, "choices") : NULL;
        json *one = ci && ci->type == JSON_ARRAY && ci->n == 1 ? json_clone(ci->items[0]) : NULL;
        bad = !one || !json_array_push(choices, one);
        if (bad) json_free(one);
        json_free(bi);
    }
    sv_buf u = {0};
    group_usage(g, &u);
    json *usage = bad ? NULL : json_parse(u.p, u.n, err, sizeof err);
    sv_buf_free(&u);
    bad = bad || !usage || !json_object_set(body, "usage", usage);
    if (bad && usage) json_free(usage);
    size_t n = 0;
    char *text = bad ? NULL : json_write_compact(body, &n);
    json_free(body);
    if (!text) return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory");
    enum MHD_Result q = send_text(c, 200, "application/json", text, n);
    free(text);
    return q;
}

/* Submits the choices (all or none, honouring --queue-full) and answers as run_request does. */
static enum MHD_Result run_group(server *sv, struct MHD_Connection *c, conn_state *cs, group_state *g) {
    for (int i = 0; i < g->n; i++) {
        int why = submit(sv, cs, g->r[i]);
        if (why != SUBMIT_OK) { /* the ones submitted are cancelled (the engine drops them), the rest released */
            group_cancel(g);
            for (int k = 0; k < g->n; k++) req_release(g->r[k]);
            free(g);
            return refuse(sv, c, why);
        }
    }
    engine_count_http(sv->eng, 0);
    g->fd = cs->fd;
    g->cur = -1;
    if (g->r[0]->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 8192, group_reader, g, group_free);
        if (!resp) { group_free(g); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result q = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return q;
    }
    for (int i = 0; i < g->n; i++)
        if (wait_done(g->r[i], cs->fd)) {
            group_free(g); /* cancels them all */
            return MHD_NO;
        }
    enum MHD_Result q = g->r[0]->http_status == 499 ? MHD_NO : group_respond(sv, c, g);
    group_free(g);
    return q;
}

/* ------------------------------------------------------------------ routes */

static enum MHD_Result handle_generate(server *sv, struct MHD_Connection *c, conn_state *cs, json *body, int kind) {
    char err[1024] = "";
    const char *param = NULL, *code = NULL;
    unsigned status = 400;
    serve_req *r = build_request(sv, body, kind, &status, err, sizeof err, &param, &code);
    if (!r) {
        json_free(body);
        return send_error(sv, c, status, status == 400 ? "invalid_request_error" : "server_error", param, code, err);
    }
    if (r->n_choices == 1) {
        json_free(body);
        return run_request(sv, c, cs, r);
    }
    group_state *g = calloc(1, sizeof *g);
    if (!g) { json_free(body); req_release(r); return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory"); }
    g->sv = sv;
    g->r[g->n++] = r;
    /* with a seed, choice i draws with seed + i: choice 0 is what n = 1 gives */
    int64_t seed = 0;
    int seeded = json_as_int64(json_get(body, "seed"), &seed);
    while (g->n < r->n_choices) {
        serve_req *ri = build_request(sv, body, kind, &status, err, sizeof err, &param, &code);
        if (!ri) break;
        ri->choice = g->n;
        memcpy(ri->id, r->id, sizeof ri->id);
        ri->created = r->created;
        if (seeded) sampler_seed(ri->smp, (uint64_t)seed + (uint64_t)ri->choice);
        g->r[g->n++] = ri;
    }
    json_free(body);
    if (g->n < r->n_choices) { /* the same body built once already: only memory can fail */
        for (int k = 0; k < g->n; k++) req_release(g->r[k]);
        free(g);
        return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory");
    }
    return run_group(sv, c, cs, g);
}

static enum MHD_Result handle_tokenize(server *sv, struct MHD_Connection *c, json *body) {
    char err[1024];
    const char *text = json_get_string(body, "content");
    if (!text) text = json_get_string(body, "prompt");
    json *msgs = json_get(body, "messages");
    char *rendered = NULL;
    size_t len = 0;
    if (!text && msgs && msgs->type == JSON_ARRAY && msgs->n > 0 && sv->tmpl) {
        const char *param = NULL;
        json *norm = normalise_messages(msgs, err, sizeof err, &param);
        if (!norm) { json_free(body); return send_error(sv, c, 400, "invalid_request_error", "messages", NULL, err); }
        int agp = 1;
        json_get_bool(body, "add_generation_prompt", 1, &agp);
        json *tools = json_get(body, "tools");
        if (tools && tools->type != JSON_ARRAY) tools = NULL;
        json *kw = json_get(body, "chat_template_kwargs");
        if (kw && kw->type != JSON_OBJECT) kw = NULL;
        int rc = chat_template_render(sv->tmpl, norm, tools, agp, kw, &rendered, &len, err, sizeof err);
        json_free(norm);
        if (rc) { json_free(body); return send_error(sv, c, 400, "invalid_request_error", "messages", NULL, err); }
        text = rendered;
    } else if (text) {
        json *t = json_get(body, "content");
        if (!t || t->type != JSON_STRING) t = json_get(body, "prompt");
        len = t->len;
    }
    if (!text) {
        json_free(body);
        return send_error(sv, c, 400, "invalid_request_error", "content", NULL,
                          "give the text as 'content' (or 'prompt'), or 'messages' to render with the chat template");
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(sv->tok, text, len, &ids, &n);
    free(rendered);
    json_free(body);
    if (rc) return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory");
    sv_buf b = {0};
    SV_LIT(&b, "{\"tokens\":[");
    for (size_t i = 0; i < n; i++) sv_buf_addf(&b, i ? ",%d" : "%d", ids[i]);
    sv_buf_addf(&b, "],\"count\":%zu,\"max_model_len\":%d}", n, sv->n_ctx);
    free(ids);
    engine_count_http(sv->eng, 0);
    enum MHD_Result q = send_json(c, 200, &b);
    sv_buf_free(&b);
    return q;
}

static enum MHD_Result handle_detokenize(server *sv, struct MHD_Connection *c, json *body) {
    json *t = json_get(body, "tokens");
    if (!t || t->type != JSON_ARRAY) {
        json_free(body);
        return send_error(sv, c, 400, "invalid_request_error", "tokens", NULL, "'tokens' must be a list of token ids");
    }
    int32_t *ids = malloc((t->n ? t->n : 1) * sizeof *ids);
    if (!ids) { json_free(body); return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory"); }
    for (size_t i = 0; i < t->n; i++) {
        int64_t v;
        if (!json_as_int64(t->items[i], &v) || v < 0 || v >= (int64_t)tokenizer_vocab_size(sv->tok)) {
            free(ids);
            json_free(body);
            return send_error(sv, c, 400, "invalid_request_error", "tokens", NULL,
                              "'tokens' must hold ids inside the vocabulary");
        }
        ids[i] = (int32_t)v;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(sv->tok, ids, t->n, &text, &len);
    free(ids);
    json_free(body);
    if (rc) return send_error(sv, c, 500, "server_error", NULL, NULL, "out of memory");
    sv_buf b = {0};
    SV_LIT(&b, "{\"prompt\":");
    sv_json_str(&b, text ? text : "", len);
    SV_LIT(&b, ",\"content\":");
    sv_json_str(&b, text ? text : "", len);
    SV_LIT(&b, "}");
    free(text);
    engine_count_http(sv->eng, 0);
    enum MHD_Result q = send_json(c, 200, &b);
    sv_buf_free(&b);
    return q;
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static int auth_ok(const server *sv, struct MHD_Connection *c) {
    if (!sv->o.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h) return 0;
    const char *want = sv->o.api_key;
    size_t hl = strlen(h), wl = strlen(want);
    volatile unsigned char diff = 0;
    static const char prefix[] = "Bearer ";
    diff |= (unsigned char)(hl != wl + 7);
    for (size_t i = 0; i < wl + 7; i++) {
        unsigned char expect = i < 7 ? (unsigned char)prefix[i] : (unsigned char)want[i - 7];
        unsigned char got = i < hl ? (unsigned char)h[i] : 0;
        diff |= expect ^ got;
    }
    return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    server *sv = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cs->fd = ci ? ci->connect_fd : -1;
        *con_cls = cs;
        atomic_fetch_add(&sv->inflight, 1);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoll(cl, NULL, 10) > sv->o.max_body) {
            /* answered before the body is read (MHD then closes the connection) */
            char msg[128];
            snprintf(msg, sizeof msg, "the request body exceeds the limit of %ld bytes", sv->o.max_body);
            return send_error(sv, c, 413, "invalid_request_error", NULL, "request_too_large", msg);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        /* a body without Content-Length (chunked) that grows too large is read and dropped */
        if (!cs->too_large && cs->body.n + *upload_size > (size_t)sv->o.max_body) {
            cs->too_large = 1;
            sv_buf_free(&cs->body);
        }
        if (!cs->too_large && sv_buf_add(&cs->body, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds the limit of %ld bytes", sv->o.max_body);
        return send_error(sv, c, 413, "invalid_request_error", NULL, "request_too_large", msg);
    }
    int is_get = !strcmp(method, "GET"), is_post = !strcmp(method, "POST");
    static const struct { const char *path; int post; } routes[] = {
        {"/health", 0}, {"/metrics", 0}, {"/v1/models", 0}, {"/v1/chat/completions", 1},
        {"/v1/completions", 1}, {"/tokenize", 1}, {"/detokenize", 1},
    };
    int route = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++)
        if (!strcmp(url, routes[i].path)) route = i;
    if (route < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "unknown route: %.20s %.500s", method, url);
        return send_error(sv, c, 404, "invalid_request_error", NULL, "not_found", msg);
    }
    if ((routes[route].post && !is_post) || (!routes[route].post && !is_get)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s is not allowed on %s", method, routes[route].path);
        return send_error(sv, c, 405, "invalid_request_error", NULL, "method_not_allowed", msg);
    }
    if (route == 0) {
        engine_count_http(sv->eng, 0);
        return send_text(c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    }
    if (!auth_ok(sv, c))
        return send_error(sv, c, 401, "authentication_error", NULL, "invalid_api_key",
                          "missing or invalid API key (send 'Authorization: Bearer KEY')");
    if (route == 1) {
        char *m = engine_metrics(sv->eng);
        engine_count_http(sv->eng, 0);
        enum MHD_Result q = send_text(c, 200, "text/plain; version=0.0.4", m ? m : "", m ? strlen(m) : 0);
        free(m);
        return q;
    }
    if (route == 2) {
        sv_buf b = {0};
        SV_LIT(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
        sv_json_str(&b, sv->model_name, strlen(sv->model_name));
        sv_buf_addf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"qnext\",\"max_model_len\":%d}]}",
                    (long long)sv->started, sv->n_ctx);
        engine_count_http(sv->eng, 0);
        enum MHD_Result q = send_json(c, 200, &b);
        sv_buf_free(&b);
        return q;
    }
    char err[512];
    json *body = json_parse(cs->body.p ? cs->body.p : "", cs->body.n, err, sizeof err);
    if (!body) {
        char msg[700];
        snprintf(msg, sizeof msg, "the body is not valid JSON: %s", err);
        return send_error(sv, c, 400, "invalid_request_error", NULL, "invalid_json", msg);
    }
    if (body->type != JSON_OBJECT) {
        json_free(body);
        return send_error(sv, c, 400, "invalid_request_error", NULL, "invalid_json", "the body must be a JSON object");
    }
    if (route == 3) return handle_generate(sv, c, cs, body, REQ_CHAT);
    if (route == 4) return handle_generate(sv, c, cs, body, REQ_COMPLETION);
    if (route == 5) return handle_tokenize(sv, c, body);
    return handle_detokenize(sv, c, body);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    server *sv = cls;
    conn_state *cs = *con_cls;
    if (!cs) return;
    atomic_fetch_sub(&sv->inflight, 1);
    sv_buf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------ main */

int serve_main(const serve_options *opts) {
#ifdef __GLIBC__
    /* Every request allocates vocabulary-sized sampler buffers (a few MB for a 152K
     * vocabulary) on its connection's thread. glibc raises its mmap threshold to the size
     * of the largest block freed, after which such buffers come from per-thread arenas and
     * their freed pages stay resident: a 10-minute soak grew by ~1 MB per request. A fixed
     * threshold keeps them mmap'd, so each is returned to the system when freed. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
    server sv;
    memset(&sv, 0, sizeof sv);
    sv.o = *opts;
    sv.started = (int64_t)time(NULL);
    char err[1024];
    int code = 1;
    struct MHD_Daemon *d = NULL;

    /* every thread started from here on inherits the blocked signals; main waits for them */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    qnext_model_params mp = {.n_threads = opts->threads, .quiet = 1, .no_mmap = opts->no_mmap, .repack = opts->repack,
                             .act_bits = opts->act_bits};
    if (qnext_model_open(opts->model_dir, &mp, &sv.m, err, sizeof err)) { fprintf(stderr, "qnext serve: %s\n", err); return 1; }
    if (tokenizer_gguf_is_file(opts->model_dir)) {
        /* a GGUF file: tokenizer and chat template from its metadata (a missing template
         * only disables the chat endpoint, as for a directory) */
        char terr[512];
        if (tokenizer_gguf_load_file(opts->model_dir, &sv.tok, &sv.tmpl, terr, sizeof terr)) {
            if (tokenizer_gguf_load_file(opts->model_dir, &sv.tok, NULL, err, sizeof err)) {
                fprintf(stderr, "qnext serve: %s\n", err);
                goto out;
            }
            fprintf(stderr, "qnext serve: no chat template (%s); /v1/chat/completions is disabled\n", terr);
        }
    } else {
        sv.tok = tokenizer_load_dir(opts->model_dir, err, sizeof err);
        if (!sv.tok) { fprintf(stderr, "qnext serve: %s\n", err); goto out; }
        sv.tmpl = chat_template_load_dir(opts->model_dir, err, sizeof err);
        if (!sv.tmpl) fprintf(stderr, "qnext serve: no chat template (%s); /v1/chat/completions is disabled\n", err);
    }
    sv.vocab = qnext_model_config(sv.m)->vocab_size;
    int max_pos = qnext_model_config(sv.m)->max_position_embeddings;
    if (max_pos > 0 && sv.o.n_ctx > max_pos) sv.o.n_ctx = max_pos;
    sv.n_ctx = sv.o.n_ctx;
    if (sv.o.parallel > sv.n_ctx / 2) {
        fprintf(stderr, "qnext serve: --parallel %d is too large for a context of %d tokens\n", sv.o.parallel, sv.n_ctx);
        goto out;
    }
    sv.gen_defaults = sampler_params_default();
    sv.gen_defaults.temperature = 1.0f; /* OpenAI's default when neither request nor model says */
    int32_t gen_eos[SAMPLER_MAX_EOS];
    int n_gen_eos = 0;
    if (sampler_load_generation_config(opts->model_dir, &sv.gen_defaults, gen_eos, &n_gen_eos, SAMPLER_MAX_EOS, err,
                                       sizeof err) < 0) {
        fprintf(stderr, "qnext serve: %s\n", err);
        goto out;
    }
    if (opts->model_name) snprintf(sv.model_name, sizeof sv.model_name, "%s", opts->model_name);
    else {
        const char *base = strrchr(opts->model_dir, '/');
        base = base && base[1] ? base + 1 : opts->model_dir;
        snprintf(sv.model_name, sizeof sv.model_name, "%s", base);
    }
    sv.eng = engine_start(sv.m, sv.tok, &sv.o, sv.model_name, err, sizeof err);
    if (!sv.eng) { fprintf(stderr, "qnext serve: %s\n", err); goto out; }

    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr *addr;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, opts->host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)opts->port);
        addr = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, opts->host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)opts->port);
        addr = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        fprintf(stderr, "qnext serve: --host must be a numeric IPv4 or IPv6 address, got '%s'\n", opts->host);
        goto out;
    }
    d = MHD_start_daemon(flags, (uint16_t)opts->port, NULL, NULL, handler, &sv, MHD_OPTION_SOCK_ADDR, addr,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, &sv, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "qnext serve: cannot listen on %s:%d (%s)\n", opts->host, opts->port, strerror(errno));
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "qnext serve: model %s, %d slots, ctx %d, listening on http://%s:%u\n", sv.model_name,
            opts->parallel, sv.n_ctx, opts->host, di ? di->port : (unsigned)opts->port);
    fflush(stderr);

    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "qnext serve: %s: finishing running requests (up to %d s), then exiting\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", opts->drain_s);
    MHD_socket ls = MHD_quiesce_daemon(d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    engine_shutdown(sv.eng, opts->drain_s);
    /* every request is finished in the engine; let the connections send what is left */
    for (int i = 0; i < 500 && atomic_load(&sv.inflight) > 0; i++) usleep(20000);
    MHD_stop_daemon(d);
    d = NULL;
    code = 0;
out:
    if (d) MHD_stop_daemon(d);
    engine_free(sv.eng);
    chat_template_free(sv.tmpl);
    tokenizer_free(sv.tok);
    qnext_model_close(sv.m);
    if (code == 0) fprintf(stderr, "qnext serve: stopped\n");
    return code;
}
