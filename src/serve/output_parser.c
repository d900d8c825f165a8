/* output_parser.c - incremental split of model output into reasoning, content and tool calls
 * (see output_parser.h). A small state machine over a buffer of not-yet-classified text. */
#include "serve/output_parser.h"

#include <stdlib.h>
#include <string.h>

#include "util/json.h"

typedef struct { char *p; size_t n, cap; } sbuf;

static int sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q; b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}
static void sb_drop_front(sbuf *b, size_t n) {
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
    b->p[b->n] = 0;
}

/* One output channel (reasoning or content). Trailing whitespace is held in `ws` until
 * non-space text follows, so it can be dropped before </think> or a tool call. */
typedef struct {
    sbuf delta, total, ws;
    int skip_leading; /* drop whitespace until the first non-space byte */
} channel;

enum { ST_CONTENT, ST_REASONING, ST_TOOL };

struct output_parser {
    int state, parse_tools;
    int think_allowed;  /* a "<think>" opening is still recognised (nothing visible emitted yet) */
    sbuf pending;       /* text not yet classified */
    sbuf tool_ws;       /* content whitespace held before a <tool_call>; given back if it is malformed */
    channel reasoning, content;
    op_tool_call *calls;
    int n_calls, cap_calls, n_taken;
    int oom;
};

static const char TAG_THINK[] = "<think>", TAG_END_THINK[] = "</think>";
static const char TAG_TOOL[] = "<tool_call>", TAG_END_TOOL[] = "</tool_call>";

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static void chan_emit(output_parser *p, channel *c, const char *s, size_t n) {
    if (c->skip_leading) {
        while (n && is_space(*s)) { s++; n--; }
        if (!n) return;
        c->skip_leading = 0;
    }
    size_t body = n;
    while (body && is_space(s[body - 1])) body--;
    if (body) {
        if (sb_add(&c->delta, c->ws.p, c->ws.n) || sb_add(&c->total, c->ws.p, c->ws.n) ||
            sb_add(&c->delta, s, body) || sb_add(&c->total, s, body))
            p->oom = 1;
        c->ws.n = 0;
        if (c->ws.p) c->ws.p[0] = 0;
    }
    if (sb_add(&c->ws, s + body, n - body)) p->oom = 1;
}
static void chan_drop_ws(channel *c) { c->ws.n = 0; }
static void chan_flush_ws(output_parser *p, channel *c) {
    if (sb_add(&c->delta, c->ws.p, c->ws.n) || sb_add(&c->total, c->ws.p, c->ws.n)) p->oom = 1;
    c->ws.n = 0;
}

static void emit_content(output_parser *p, const char *s, size_t n) {
    chan_emit(p, &p->content, s, n);
    if (p->content.total.n) p->think_allowed = 0;
}

output_parser *output_parser_new(int start_in_reasoning, int parse_tools) {
    output_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->state = start_in_reasoning ? ST_REASONING : ST_CONTENT;
    p->parse_tools = parse_tools;
    p->think_allowed = !start_in_reasoning;
    p->reasoning.skip_leading = 1;
    return p;
}

void output_parser_free(output_parser *p) {
    if (!p) return;
    free(p->pending.p);
    free(p->tool_ws.p);
    channel *ch[2] = {&p->reasoning, &p->content};
    for (int i = 0; i < 2; i++) { free(ch[i]->delta.p); free(ch[i]->total.p); free(ch[i]->ws.p); }
    for (int i = 0; i < p->n_calls; i++) { free(p->calls[i].name); free(p->calls[i].arguments); }
    free(p->calls);
    free(p);
}

/* Finds tag in s[0..n); returns its offset or -1. */
static long find(const char *s, size_t n, const char *tag) {
    size_t t = strlen(tag);
    for (size_t i = 0; i + t <= n; i++)
        if (s[i] == tag[0] && !memcmp(s + i, tag, t)) return (long)i;
    return -1;
}
/* Length of the longest suffix of s[0..n) that is a proper prefix of tag (text to hold back). */
static size_t partial_suffix(const char *s, size_t n, const char *tag) {
    size_t t = strlen(tag);
    for (size_t k = t - 1 < n ? t - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, tag, k)) return k;
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) { memcpy(d, s, n); d[n] = 0; }
    return d;
}

/* Parses the body of a <tool_call> block: {"name": "...", "arguments": {...} or "..."}.
 * Returns 1 and appends a call, or 0 when malformed. */
static int add_tool_call(output_parser *p, const char *body, size_t n) {
    json *j = json_parse(body, n, NULL, 0);
    if (!j) return 0;
    int ok = 0;
    const char *name = j->type == JSON_OBJECT ? json_get_string(j, "name") : NULL;
    json *args = j->type == JSON_OBJECT ? json_get(j, "arguments") : NULL;
    if (j->type == JSON_OBJECT && !args) args = json_get(j, "parameters");
    if (name && *name && (!args || args->type == JSON_OBJECT || args->type == JSON_STRING || args->type == JSON_NULL)) {
        char *args_text;
        if (!args || args->type == JSON_NULL) args_text = dup_n("{}", 2);
        else if (args->type == JSON_STRING) args_text = dup_n(args->str, args->len);
        else { size_t len; args_text = json_write_compact(args, &len); }
        if (p->n_calls == p->cap_calls) {
            int cap = p->cap_calls ? 2 * p->cap_calls : 4;
            op_tool_call *c = realloc(p->calls, cap * sizeof *c);
            if (!c) { free(args_text); p->oom = 1; json_free(j); return 1; }
            p->calls = c; p->cap_calls = cap;
        }
        char *nm = dup_n(name, strlen(name));
        if (!nm || !args_text) { free(nm); free(args_text); p->oom = 1; }
        else { p->calls[p->n_calls].name = nm; p->calls[p->n_calls].arguments = args_text; p->n_calls++; }
        ok = 1;
    }
    json_free(j);
    return ok;
}

/* Classifies as much of the pending text as can be decided now. */
static void process(output_parser *p, int final) {
    for (;;) {
        const char *s = p->pending.p;
        size_t n = p->pending.n;
        if (!n) return;
        if (p->state == ST_CONTENT) {
            long it = p->parse_tools ? find(s, n, TAG_TOOL) : -1;
            long ik = p->think_allowed ? find(s, n, TAG_THINK) : -1;
            /* "<think>" opens reasoning only when nothing but whitespace precedes it */
            if (ik >= 0) {
                for (long i = 0; i < ik; i++)
                    if (!is_space(s[i])) { ik = -1; break; }
            }
            if (ik >= 0 && (it < 0 || ik < it)) {
                sb_drop_front(&p->pending, (size_t)ik + strlen(TAG_THINK));
                chan_drop_ws(&p->content);
                p->state = ST_REASONING;
                p->think_allowed = 0;
                p->reasoning.skip_leading = 1;
                continue;
            }
            if (it >= 0) {
                emit_content(p, s, (size_t)it);
                p->tool_ws.n = 0;
                if (sb_add(&p->tool_ws, p->content.ws.p, p->content.ws.n)) p->oom = 1;
                chan_drop_ws(&p->content);
                sb_drop_front(&p->pending, (size_t)it + strlen(TAG_TOOL));
                p->state = ST_TOOL;
                continue;
            }
            size_t hold = 0;
            if (!final) {
                if (p->parse_tools) hold = partial_suffix(s, n, TAG_TOOL);
                if (p->think_allowed) {
                    size_t h = partial_suffix(s, n, TAG_THINK);
                    if (h > hold) hold = h;
                }
            }
            emit_content(p, s, n - hold);
            sb_drop_front(&p->pending, n - hold);
            return;
        } else if (p->state == ST_REASONING) {
            long ie = find(s, n, TAG_END_THINK);
            if (ie >= 0) {
                chan_emit(p, &p->reasoning, s, (size_t)ie);
                chan_drop_ws(&p->reasoning);
                sb_drop_front(&p->pending, (size_t)ie + strlen(TAG_END_THINK));
                p->state = ST_CONTENT;
                p->think_allowed = 0;
                p->content.skip_leading = 1;
                continue;
            }
            size_t hold = final ? 0 : partial_suffix(s, n, TAG_END_THINK);
            chan_emit(p, &p->reasoning, s, n - hold);
            sb_drop_front(&p->pending, n - hold);
            return;
        } else { /* ST_TOOL: wait for the closing tag, then parse the whole block */
            long ie = find(s, n, TAG_END_TOOL);
            if (ie < 0) {
                if (!final) return;
                /* never closed: give the text back as content */
                emit_content(p, p->tool_ws.p, p->tool_ws.n);
                emit_content(p, TAG_TOOL, strlen(TAG_TOOL));
                emit_content(p, s, n);
                p->pending.n = 0;
                p->state = ST_CONTENT;
                return;
            }
            if (!add_tool_call(p, s, (size_t)ie)) {
                emit_content(p, p->tool_ws.p, p->tool_ws.n);
                emit_content(p, TAG_TOOL, strlen(TAG_TOOL));
                emit_content(p, s, (size_t)ie + strlen(TAG_END_TOOL));
            }
            sb_drop_front(&p->pending, (size_t)ie + strlen(TAG_END_TOOL));
            p->state = ST_CONTENT;
            /* whitespace right after a tool call (between blocks) is not content */
            if (p->n_calls) p->content.skip_leading = 1;
            continue;
        }
    }
}

int output_parser_feed(output_parser *p, const char *text, size_t len) {
    if (sb_add(&p->pending, text, len)) return -1;
    process(p, 0);
    return p->oom ? -1 : 0;
}

int output_parser_finish(output_parser *p) {
    process(p, 1);
    if (p->state == ST_REASONING) chan_drop_ws(&p->reasoning);
    if (p->n_calls) chan_drop_ws(&p->content);
    else chan_flush_ws(p, &p->content);
    return p->oom ? -1 : 0;
}

void output_parser_take(output_parser *p, op_delta *d) {
    d->reasoning = p->reasoning.delta.p ? p->reasoning.delta.p : "";
    d->reasoning_len = p->reasoning.delta.n;
    d->content = p->content.delta.p ? p->content.delta.p : "";
    d->content_len = p->content.delta.n;
    d->calls = p->calls;
    d->first_call = p->n_taken;
    d->n_calls = p->n_calls - p->n_taken;
    p->n_taken = p->n_calls;
    /* the returned pointers stay valid until the next call: reset lengths only */
    p->reasoning.delta.n = 0;
    p->content.delta.n = 0;
}

const char *output_parser_reasoning(const output_parser *p, size_t *len) {
    *len = p->reasoning.total.n;
    return p->reasoning.total.p ? p->reasoning.total.p : "";
}
const char *output_parser_content(const output_parser *p, size_t *len) {
    *len = p->content.total.n;
    return p->content.total.p ? p->content.total.p : "";
}
int output_parser_n_calls(const output_parser *p) { return p->n_calls; }
const op_tool_call *output_parser_call(const output_parser *p, int i) {
    return i >= 0 && i < p->n_calls ? &p->calls[i] : NULL;
}
