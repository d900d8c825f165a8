/* output_parser.c - incremental split of model output into reasoning, content and tool calls
 * (see output_parser.h). A small state machine over a buffer of not-yet-classified text, and
 * inside a <tool_call> block a byte-at-a-time JSON scanner that builds the call's name and
 * compact arguments string as the text arrives, so the arguments can be streamed. */
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

/* A tool call being streamed, one per <tool_call> block from its opening tag on. */
enum { TC_OPEN, TC_DONE, TC_DEAD };
typedef struct {
    int index;        /* stream index, -1 until the name is known */
    int state;        /* TC_OPEN while its block is being read */
    int announced;    /* the name went out in a delta */
    char *name;
    sbuf args;        /* the arguments string so far */
    size_t sent;      /* bytes of args given out in deltas */
} tc_stream;

/* The incremental JSON scanner of a block body (see scan_byte). */
enum { EX_START, EX_VALUE, EX_VALUE_OR_END, EX_KEY, EX_KEY_OR_END, EX_COLON, EX_COMMA_OR_END, EX_NOTHING };
enum { LX_NONE, LX_STRING, LX_NUMBER, LX_LITERAL };
/* what the member of the call object being read is */
enum { ROLE_NONE, ROLE_NAME, ROLE_ARGS_OBJ, ROLE_ARGS_STR, ROLE_ARGS_NULL, ROLE_OTHER };
enum { KEY_OTHER, KEY_NAME, KEY_ARGS };
enum { N_MINUS = 1, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
#define SCAN_MAX_DEPTH 512 /* json.c's nesting limit */

typedef struct {
    int ok, done;       /* still valid; the call object has closed */
    sbuf stack;         /* '{' or '[' per open container */
    int expect, lex;
    int str_key;        /* the string being read is an object key */
    int esc;            /* 0; 1 after a backslash; 2..5 while reading the hex digits of \u */
    unsigned hex, hi;   /* the \u value being read; a high surrogate waiting for its low half */
    int num;            /* number state (N_*) */
    const char *lit;    /* literal being matched ("true", "false", "null") and the next index */
    int lit_i;
    int role, last_key, seen_name, seen_args, args_null;
    int has_tc;         /* the block has its entry at the end of tcs */
    sbuf key;           /* a key of the call object, decoded */
    sbuf name;          /* the "name" string, decoded */
} tc_scan;

struct output_parser {
    int state, parse_tools;
    int think_allowed;  /* a "<think>" opening is still recognised (nothing visible emitted yet) */
    sbuf pending;       /* text not yet classified */
    sbuf tool_ws;       /* content whitespace held before a <tool_call>; given back if it is malformed */
    channel reasoning, content;
    op_tool_call *calls;
    int n_calls, cap_calls, n_taken;
    tc_stream *tcs;     /* streamed calls; the last one belongs to the open block in ST_TOOL */
    int n_tcs, cap_tcs, tcs_first; /* tcs[0 .. tcs_first) are finished and fully taken */
    int n_streamed;     /* stream indices given out */
    op_tool_delta *tds; /* the deltas of the last take */
    int cap_tds;
    tc_scan scan;
    size_t tool_fed;    /* bytes of pending (the open block's body) already scanned */
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
    for (int i = 0; i < p->n_tcs; i++) { free(p->tcs[i].name); free(p->tcs[i].args.p); }
    free(p->tcs);
    free(p->tds);
    free(p->scan.stack.p);
    free(p->scan.key.p);
    free(p->scan.name.p);
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

/* ------------------------------------------------------------------ tool-call scanner */

static tc_stream *cur_tc(output_parser *p) { return &p->tcs[p->n_tcs - 1]; }

static void scan_fail(tc_scan *s) { s->ok = 0; }

/* A byte of the arguments string. */
static void args_put(output_parser *p, const char *b, size_t n) {
    if (sb_add(&cur_tc(p)->args, b, n)) p->oom = 1;
}

/* A byte of the JSON text outside strings' contents (brackets, commas, colons, quotes,
 * number and literal characters): part of the arguments when inside an object value. */
static void tok_out(output_parser *p, char c) {
    if (p->scan.role == ROLE_ARGS_OBJ) args_put(p, &c, 1);
}

/* A decoded byte of a string: a key of the call object, the name, a string-valued arguments
 * value (taken as is), or a string inside the arguments object (escaped again the way
 * json_write_compact escapes). */
static void str_byte(output_parser *p, unsigned char c) {
    tc_scan *s = &p->scan;
    char ch = (char)c;
    if (s->str_key && s->stack.n == 1) {
        if (sb_add(&s->key, &ch, 1)) p->oom = 1;
        return;
    }
    switch (s->role) {
    case ROLE_NAME: if (sb_add(&s->name, &ch, 1)) p->oom = 1; break;
    case ROLE_ARGS_STR: args_put(p, &ch, 1); break;
    case ROLE_ARGS_OBJ: {
        static const char hex[] = "0123456789abcdef";
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        switch (c) {
        case '"': e[1] = '"'; args_put(p, e, 2); break;
        case '\\': e[1] = '\\'; args_put(p, e, 2); break;
        case '\n': e[1] = 'n'; args_put(p, e, 2); break;
        case '\r': e[1] = 'r'; args_put(p, e, 2); break;
        case '\t': e[1] = 't'; args_put(p, e, 2); break;
        case '\b': e[1] = 'b'; args_put(p, e, 2); break;
        case '\f': e[1] = 'f'; args_put(p, e, 2); break;
        default:
            if (c < 0x20) {
                e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15];
                args_put(p, e, 6);
            } else args_put(p, &ch, 1);
        }
        break;
    }
    default: break;
    }
}

static void str_codepoint(output_parser *p, unsigned cp) {
    unsigned char o[4];
    int n;
    if (cp < 0x80) { o[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12)); o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        o[0] = (unsigned char)(0xF0 | (cp >> 18)); o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (cp & 0x3F)); n = 4;
    }
    for (int i = 0; i < n; i++) str_byte(p, o[i]);
}

/* A high surrogate not followed by its low half is kept as it is (WTF-8), as json.c does. */
static void flush_hi(output_parser *p) {
    if (p->scan.hi) { unsigned h = p->scan.hi; p->scan.hi = 0; str_codepoint(p, h); }
}

static void name_complete(output_parser *p) {
    tc_stream *t = cur_tc(p);
    t->name = malloc(p->scan.name.n + 1);
    if (!t->name) { p->oom = 1; scan_fail(&p->scan); return; }
    memcpy(t->name, p->scan.name.p, p->scan.name.n);
    t->name[p->scan.name.n] = 0;
    t->index = p->n_streamed++;
}

/* A value has ended (the scanner is after it). */
static void value_done(output_parser *p) {
    tc_scan *s = &p->scan;
    if (s->stack.n == 0) { s->expect = EX_NOTHING; s->done = 1; return; }
    s->expect = EX_COMMA_OR_END;
    if (s->stack.n == 1) { /* a member of the call object */
        if (s->role == ROLE_NAME) {
            if (s->name.n == 0) scan_fail(s); /* an empty name is no call */
            else name_complete(p);
        }
        s->role = ROLE_NONE;
    }
}

static void key_done(output_parser *p) {
    tc_scan *s = &p->scan;
    s->expect = EX_COLON;
    if (s->stack.n != 1) return;
    s->last_key = KEY_OTHER;
    if (s->key.n == 4 && !memcmp(s->key.p, "name", 4)) {
        if (s->seen_name++) scan_fail(s);
        s->last_key = KEY_NAME;
    } else if ((s->key.n == 9 && !memcmp(s->key.p, "arguments", 9)) ||
               (s->key.n == 10 && !memcmp(s->key.p, "parameters", 10))) {
        if (s->seen_args++) scan_fail(s);
        s->last_key = KEY_ARGS;
    }
    s->key.n = 0;
}

static void close_container(output_parser *p, char c) {
    tok_out(p, c);
    p->scan.stack.n--;
    value_done(p);
}

static void begin_value(output_parser *p, unsigned char c) {
    tc_scan *s = &p->scan;
    if (s->stack.n == 1) {
        if (s->last_key == KEY_NAME) {
            if (c != '"') { scan_fail(s); return; }
            s->role = ROLE_NAME;
            s->name.n = 0;
        } else if (s->last_key == KEY_ARGS) {
            if (c == '{') s->role = ROLE_ARGS_OBJ;
            else if (c == '"') s->role = ROLE_ARGS_STR;
            else if (c == 'n') { s->role = ROLE_ARGS_NULL; s->args_null = 1; }
            else { scan_fail(s); return; } /* arrays, numbers and booleans are not arguments */
        } else s->role = ROLE_OTHER;
    }
    if (c == '{' || c == '[') {
        if (s->stack.n >= SCAN_MAX_DEPTH) { scan_fail(s); return; }
        tok_out(p, (char)c);
        char ch = (char)c;
        if (sb_add(&s->stack, &ch, 1)) { p->oom = 1; scan_fail(s); return; }
        s->expect = c == '{' ? EX_KEY_OR_END : EX_VALUE_OR_END;
    } else if (c == '"') {
        tok_out(p, '"');
        s->lex = LX_STRING;
        s->str_key = 0;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        tok_out(p, (char)c);
        s->lex = LX_NUMBER;
        s->num = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
    } else if (c == 't' || c == 'f' || c == 'n') {
        tok_out(p, (char)c);
        s->lex = LX_LITERAL;
        s->lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
        s->lit_i = 1;
    } else scan_fail(s);
}

/* Next number state after c, or 0 when c does not continue the number. */
static int number_next(int st, unsigned char c) {
    int digit = c >= '0' && c <= '9';
    switch (st) {
    case N_MINUS: return c == '0' ? N_ZERO : digit ? N_INT : 0;
    case N_ZERO: return c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_E : 0;
    case N_INT: return digit ? N_INT : c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_E : 0;
    case N_DOT: return digit ? N_FRAC : 0;
    case N_FRAC: return digit ? N_FRAC : (c == 'e' || c == 'E') ? N_E : 0;
    case N_E: return (c == '+' || c == '-') ? N_ESIGN : digit ? N_EXP : 0;
    case N_ESIGN: case N_EXP: return digit ? N_EXP : 0;
    }
    return 0;
}

static void scan_string_byte(output_parser *p, unsigned char c) {
    tc_scan *s = &p->scan;
    if (s->esc == 0) {
        if (c == '"') {
            flush_hi(p);
            tok_out(p, '"');
            s->lex = LX_NONE;
            if (s->str_key) key_done(p);
            else value_done(p);
        } else if (c == '\\') s->esc = 1;
        else if (c < 0x20) scan_fail(s);
        else { flush_hi(p); str_byte(p, c); }
        return;
    }
    if (s->esc == 1) {
        unsigned char d;
        switch (c) {
        case '"': case '\\': case '/': d = c; break;
        case 'b': d = '\b'; break;
        case 'f': d = '\f'; break;
        case 'n': d = '\n'; break;
        case 'r': d = '\r'; break;
        case 't': d = '\t'; break;
        case 'u': s->esc = 2; s->hex = 0; return;
        default: scan_fail(s); return;
        }
        s->esc = 0;
        flush_hi(p);
        str_byte(p, d);
        return;
    }
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (h < 0) { scan_fail(s); return; }
    s->hex = s->hex * 16 + (unsigned)h;
    if (++s->esc < 6) return;
    s->esc = 0;
    unsigned cp = s->hex;
    if (s->hi) {
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            unsigned hi = s->hi;
            s->hi = 0;
            str_codepoint(p, 0x10000 + ((hi - 0xD800) << 10) + (cp - 0xDC00));
            return;
        }
        flush_hi(p);
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) s->hi = cp;
    else str_codepoint(p, cp);
}

/* One byte of a block body. The grammar is JSON's; the top level must be an object. */
static void scan_byte(output_parser *p, unsigned char c) {
    tc_scan *s = &p->scan;
    if (!s->ok) return;
    if (s->lex == LX_STRING) { scan_string_byte(p, c); return; }
    if (s->lex == LX_NUMBER) {
        int nx = number_next(s->num, c);
        if (nx) { s->num = nx; tok_out(p, (char)c); return; }
        if (s->num != N_ZERO && s->num != N_INT && s->num != N_FRAC && s->num != N_EXP) { scan_fail(s); return; }
        s->lex = LX_NONE;
        value_done(p);
        /* c is the next token */
    } else if (s->lex == LX_LITERAL) {
        if (c != (unsigned char)s->lit[s->lit_i]) { scan_fail(s); return; }
        tok_out(p, (char)c);
        if (!s->lit[++s->lit_i]) { s->lex = LX_NONE; value_done(p); }
        return;
    }
    if (is_space((char)c)) return;
    switch (s->expect) {
    case EX_START:
        if (c != '{') { scan_fail(s); return; }
        begin_value(p, c);
        return;
    case EX_NOTHING: scan_fail(s); return;
    case EX_KEY_OR_END:
        if (c == '}') { close_container(p, '}'); return; }
        /* fall through */
    case EX_KEY:
        if (c != '"') { scan_fail(s); return; }
        tok_out(p, '"');
        s->lex = LX_STRING;
        s->str_key = 1;
        return;
    case EX_COLON:
        if (c != ':') { scan_fail(s); return; }
        tok_out(p, ':');
        s->expect = EX_VALUE;
        return;
    case EX_COMMA_OR_END: {
        char top = s->stack.p[s->stack.n - 1];
        if (c == ',') { tok_out(p, ','); s->expect = top == '{' ? EX_KEY : EX_VALUE; return; }
        if (c == (top == '{' ? '}' : ']')) { close_container(p, (char)c); return; }
        scan_fail(s);
        return;
    }
    case EX_VALUE_OR_END:
        if (c == ']') { close_container(p, ']'); return; }
        /* fall through */
    case EX_VALUE: begin_value(p, c); return;
    }
}

/* A <tool_call> tag opened a block: a fresh scanner and a stream entry for it. */
static void tool_open(output_parser *p) {
    tc_scan *s = &p->scan;
    sbuf stack = s->stack, key = s->key, name = s->name;
    memset(s, 0, sizeof *s);
    s->stack = stack; s->key = key; s->name = name;
    s->stack.n = s->key.n = s->name.n = 0;
    s->ok = 1;
    s->expect = EX_START;
    p->tool_fed = 0;
    if (p->n_tcs == p->cap_tcs) {
        int cap = p->cap_tcs ? 2 * p->cap_tcs : 4;
        tc_stream *t = realloc(p->tcs, (size_t)cap * sizeof *t);
        if (!t) { p->oom = 1; s->ok = 0; return; }
        p->tcs = t; p->cap_tcs = cap;
    }
    tc_stream *t = &p->tcs[p->n_tcs++];
    memset(t, 0, sizeof *t);
    t->index = -1;
    s->has_tc = 1;
}

/* The block closed (body = its text without the tags) or the output ended inside it (body
 * NULL). Returns 1 when it was a valid call, now in p->calls. */
static int tool_close(output_parser *p, const char *body, size_t n) {
    tc_scan *s = &p->scan;
    tc_stream *t = s->has_tc ? cur_tc(p) : NULL;
    s->has_tc = 0;
    int ok = t && body && s->ok && s->done && t->index >= 0 && !p->oom;
    if (ok) {
        /* the scanner follows json.c's grammar; json_parse has the last word */
        json *j = json_parse(body, n, NULL, 0);
        ok = j != NULL;
        json_free(j);
    }
    if (ok && !s->seen_args) s->args_null = 1;
    if (ok && s->args_null) args_put(p, "{}", 2);
    if (ok && p->n_calls == p->cap_calls) {
        int cap = p->cap_calls ? 2 * p->cap_calls : 4;
        op_tool_call *c = realloc(p->calls, (size_t)cap * sizeof *c);
        if (!c) p->oom = 1;
        else { p->calls = c; p->cap_calls = cap; }
    }
    if (ok && !p->oom) {
        char *nm = malloc(strlen(t->name) + 1), *args = malloc(t->args.n + 1);
        if (!nm || !args) { free(nm); free(args); p->oom = 1; }
        else {
            strcpy(nm, t->name);
            memcpy(args, t->args.p ? t->args.p : "", t->args.n);
            args[t->args.n] = 0;
            p->calls[p->n_calls++] = (op_tool_call){nm, args, t->index};
        }
    }
    if (ok && !p->oom) { t->state = TC_DONE; return 1; }
    if (!t) return 0;
    if (t->announced) { t->state = TC_DEAD; return 0; }
    /* never announced: it disappears, and so does its stream index */
    if (t->index >= 0) p->n_streamed--;
    free(t->name);
    free(t->args.p);
    p->n_tcs--;
    return 0;
}

/* Bytes of s[0..n) up to the end of its last complete UTF-8 character (a partial one at the end
 * is held back). */
static size_t utf8_complete(const char *s, size_t n) {
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = (unsigned char)s[n - back];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? n - back : n;
    }
    return n;
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
                tool_open(p);
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
        } else { /* ST_TOOL: scan the body as it comes; the block ends at the closing tag */
            /* the bytes already scanned hold no start of a closing tag */
            long ie = find(s + p->tool_fed, n - p->tool_fed, TAG_END_TOOL);
            if (ie >= 0) ie += (long)p->tool_fed;
            /* bytes certainly inside the body: not part of a closing tag that may be arriving */
            size_t body = ie >= 0 ? (size_t)ie : final ? n : n - partial_suffix(s, n, TAG_END_TOOL);
            for (; p->tool_fed < body; p->tool_fed++) scan_byte(p, (unsigned char)s[p->tool_fed]);
            if (ie < 0) {
                if (!final) return;
                /* never closed: give the text back as content */
                tool_close(p, NULL, 0);
                emit_content(p, p->tool_ws.p, p->tool_ws.n);
                emit_content(p, TAG_TOOL, strlen(TAG_TOOL));
                emit_content(p, s, n);
                p->pending.n = 0;
                p->state = ST_CONTENT;
                return;
            }
            if (!tool_close(p, s, (size_t)ie)) {
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
    /* streamed tool calls: announcements and new argument bytes, in index order */
    d->n_tool_deltas = 0;
    d->tool_deltas = p->tds;
    for (int i = p->tcs_first; i < p->n_tcs; i++) {
        tc_stream *t = &p->tcs[i];
        if (t->index < 0) continue; /* name not known yet */
        size_t limit = t->state == TC_DONE ? t->args.n
                       : t->state == TC_DEAD ? t->sent
                                             : utf8_complete(t->args.p ? t->args.p : "", t->args.n);
        if (t->state == TC_DEAD && !t->announced) continue;
        if (t->announced && limit <= t->sent) continue;
        if (d->n_tool_deltas == p->cap_tds) {
            int cap = p->cap_tds ? 2 * p->cap_tds : 4;
            op_tool_delta *v = realloc(p->tds, (size_t)cap * sizeof *v);
            if (!v) { p->oom = 1; break; }
            p->tds = v;
            p->cap_tds = cap;
            d->tool_deltas = v;
        }
        op_tool_delta *td = &p->tds[d->n_tool_deltas++];
        td->index = t->index;
        td->name = t->announced ? NULL : t->name;
        td->args = t->args.p ? t->args.p + t->sent : "";
        td->args_len = limit - t->sent;
        t->announced = 1;
        t->sent = limit;
    }
    /* entries whose block has closed and whose output is all out need no more looks */
    while (p->tcs_first < p->n_tcs && p->tcs[p->tcs_first].state != TC_OPEN && p->tcs[p->tcs_first].announced &&
           p->tcs[p->tcs_first].sent == (p->tcs[p->tcs_first].state == TC_DONE ? p->tcs[p->tcs_first].args.n
                                                                                : p->tcs[p->tcs_first].sent))
        p->tcs_first++;
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

int output_parser_in_reasoning(const output_parser *p) { return p->state == ST_REASONING; }
