/* json.c - see json.h. A recursive-descent parser with a depth limit, so hostile input
 * cannot blow the stack, and with every allocation checked. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 512

typedef struct {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} parser;

static void perr(parser *p, const char *fmt, ...) {
    if (p->failed) return;
    p->failed = 1;
    if (!p->err || !p->errlen) return;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "invalid JSON at byte %zu: %s", p->pos, msg);
}

json *json_new(json_type t) {
    json *j = calloc(1, sizeof *j);
    if (j) j->type = t;
    return j;
}

void json_free(json *j) {
    if (!j) return;
    for (size_t i = 0; i < j->n; i++) {
        json_free(j->items[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->key_lens);
    free(j->str);
    free(j);
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->pos++;
        else break;
    }
}

static int grow(json *j) {
    if ((j->n & (j->n - 1)) == 0) { /* n is 0 or a power of two: double the capacity */
        size_t cap = j->n ? j->n * 2 : 4;
        if (j->n && j->n < 4) return 1; /* capacity 4 still has room */
        json **it = realloc(j->items, cap * sizeof *it);
        if (!it) return 0;
        j->items = it;
        if (j->type == JSON_OBJECT) {
            char **k = realloc(j->keys, cap * sizeof *k);
            if (!k) return 0;
            j->keys = k;
            size_t *kl = realloc(j->key_lens, cap * sizeof *kl);
            if (!kl) return 0;
            j->key_lens = kl;
        }
    }
    return 1;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(parser *p, unsigned *out) {
    if (p->pos + 4 > p->len) { perr(p, "truncated \\u escape"); return 0; }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) { perr(p, "bad \\u escape"); return 0; }
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote. The decoded text is never longer than
 * the source text, so one allocation of the source length suffices. */
static char *parse_string(parser *p, size_t *out_len) {
    p->pos++; /* opening quote */
    size_t start = p->pos, end = start;
    while (end < p->len && p->s[end] != '"') {
        if (p->s[end] == '\\') end++;
        end++;
    }
    if (end >= p->len) { perr(p, "unterminated string"); return NULL; }
    char *out = malloc(end - start + 1);
    if (!out) { perr(p, "out of memory"); return NULL; }
    size_t o = 0;
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) { perr(p, "control character in string"); free(out); return NULL; }
        if (c != '\\') { out[o++] = (char)c; p->pos++; continue; }
        p->pos++;
        char e = p->s[p->pos++];
        switch (e) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(p, &cp)) { free(out); return NULL; }
            if (cp >= 0xD800 && cp <= 0xDBFF && p->pos + 6 <= end && p->s[p->pos] == '\\' &&
                p->s[p->pos + 1] == 'u') {
                size_t save = p->pos;
                p->pos += 2;
                unsigned lo;
                if (!read_hex4(p, &lo)) { free(out); return NULL; }
                if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else p->pos = save; /* lone high surrogate: keep it, as Python does */
            }
            /* A lone surrogate is encoded as-is (WTF-8); it never occurs in valid text. */
            o += put_utf8(out + o, cp);
            break;
        }
        default: perr(p, "bad escape"); free(out); return NULL;
        }
    }
    p->pos = end + 1;
    out[o] = 0;
    *out_len = o;
    return out;
}

static json *parse_value(parser *p, int depth);

static json *parse_number(parser *p) {
    size_t start = p->pos;
    int is_int = 1;
    if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) { perr(p, "bad number"); return NULL; }
    if (p->s[p->pos] == '0') p->pos++;
    else while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_int = 0;
        p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) { perr(p, "bad fraction"); return NULL; }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) { perr(p, "bad exponent"); return NULL; }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    json *j = json_new(JSON_NUMBER);
    if (!j) { perr(p, "out of memory"); return NULL; }
    j->len = p->pos - start;
    j->str = malloc(j->len + 1);
    if (!j->str) { free(j); perr(p, "out of memory"); return NULL; }
    memcpy(j->str, p->s + start, j->len);
    j->str[j->len] = 0;
    j->num = strtod(j->str, NULL);
    j->is_int = is_int;
    return j;
}

static int match_lit(parser *p, const char *lit) {
    size_t n = strlen(lit);
    if (p->pos + n > p->len || memcmp(p->s + p->pos, lit, n) != 0) { perr(p, "unexpected token"); return 0; }
    p->pos += n;
    return 1;
}

static json *parse_container(parser *p, int depth, int is_obj) {
    json *j = json_new(is_obj ? JSON_OBJECT : JSON_ARRAY);
    if (!j) { perr(p, "out of memory"); return NULL; }
    char close = is_obj ? '}' : ']';
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return j; }
    for (;;) {
        char *key = NULL;
        size_t klen = 0;
        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"') { perr(p, "expected a string key"); goto fail; }
            key = parse_string(p, &klen);
            if (!key) goto fail;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') { free(key); perr(p, "expected ':'"); goto fail; }
            p->pos++;
        }
        json *v = parse_value(p, depth + 1);
        if (!v) { free(key); goto fail; }
        if (!grow(j)) { free(key); json_free(v); perr(p, "out of memory"); goto fail; }
        j->items[j->n] = v;
        if (is_obj) { j->keys[j->n] = key; j->key_lens[j->n] = klen; }
        j->n++;
        skip_ws(p);
        if (p->pos >= p->len) { perr(p, "unterminated %s", is_obj ? "object" : "array"); goto fail; }
        if (p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->s[p->pos] == close) { p->pos++; return j; }
        perr(p, "expected ',' or '%c'", close);
        goto fail;
    }
fail:
    json_free(j);
    return NULL;
}

static json *parse_value(parser *p, int depth) {
    if (depth > JSON_MAX_DEPTH) { perr(p, "nesting too deep"); return NULL; }
    skip_ws(p);
    if (p->pos >= p->len) { perr(p, "unexpected end of input"); return NULL; }
    char c = p->s[p->pos];
    if (c == '{') return parse_container(p, depth, 1);
    if (c == '[') return parse_container(p, depth, 0);
    if (c == '"') {
        size_t n;
        char *s = parse_string(p, &n);
        if (!s) return NULL;
        json *j = json_new(JSON_STRING);
        if (!j) { free(s); perr(p, "out of memory"); return NULL; }
        j->str = s;
        j->len = n;
        return j;
    }
    if (c == 't') return match_lit(p, "true") ? json_new(JSON_TRUE) : NULL;
    if (c == 'f') return match_lit(p, "false") ? json_new(JSON_FALSE) : NULL;
    if (c == 'n') return match_lit(p, "null") ? json_new(JSON_NULL) : NULL;
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p);
    perr(p, "unexpected character '%c'", c);
    return NULL;
}

json *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    parser p = {text, len, 0, err, errlen, 0};
    if (err && errlen) err[0] = 0;
    json *j = parse_value(&p, 0);
    if (!j) return NULL;
    skip_ws(&p);
    if (p.pos != p.len) {
        perr(&p, "trailing characters after the value");
        json_free(j);
        return NULL;
    }
    return j;
}

json *json_parse_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err) snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); if (err) snprintf(err, errlen, "%s: out of memory", path); return NULL; }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) { free(buf); if (err) snprintf(err, errlen, "%s: read error", path); return NULL; }
    char msg[256];
    json *j = json_parse(buf, len, msg, sizeof msg);
    free(buf);
    if (!j && err) snprintf(err, errlen, "%s: %s", path, msg);
    return j;
}

json *json_get(const json *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t i = obj->n; i-- > 0;)
        if (obj->key_lens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) return obj->items[i];
    return NULL;
}

int json_as_int64(const json *j, int64_t *out) {
    if (!j || j->type != JSON_NUMBER) return 0;
    if (j->num != floor(j->num) || fabs(j->num) > 9.0e15) return 0;
    *out = (int64_t)j->num;
    return 1;
}

int json_as_double(const json *j, double *out) {
    if (!j || j->type != JSON_NUMBER) return 0;
    *out = j->num;
    return 1;
}

int json_as_bool(const json *j, int *out) {
    if (!j || (j->type != JSON_TRUE && j->type != JSON_FALSE)) return 0;
    *out = j->type == JSON_TRUE;
    return 1;
}

int json_get_int(const json *obj, const char *key, int64_t def, int64_t *out) {
    json *j = json_get(obj, key);
    if (!j || j->type == JSON_NULL) { *out = def; return 0; }
    return json_as_int64(j, out) ? 0 : -1;
}

int json_get_double(const json *obj, const char *key, double def, double *out) {
    json *j = json_get(obj, key);
    if (!j || j->type == JSON_NULL) { *out = def; return 0; }
    return json_as_double(j, out) ? 0 : -1;
}

int json_get_bool(const json *obj, const char *key, int def, int *out) {
    json *j = json_get(obj, key);
    if (!j || j->type == JSON_NULL) { *out = def; return 0; }
    return json_as_bool(j, out) ? 0 : -1;
}

const char *json_get_string(const json *obj, const char *key) {
    json *j = json_get(obj, key);
    return j && j->type == JSON_STRING ? j->str : NULL;
}

json *json_new_string(const char *s, size_t len) {
    json *j = json_new(JSON_STRING);
    if (!j) return NULL;
    j->str = malloc(len + 1);
    if (!j->str) { free(j); return NULL; }
    memcpy(j->str, s, len);
    j->str[len] = 0;
    j->len = len;
    return j;
}

json *json_new_number(double v) {
    json *j = json_new(JSON_NUMBER);
    if (!j) return NULL;
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", v);
    j->num = v;
    j->is_int = 0;
    j->len = strlen(buf);
    j->str = strdup(buf);
    if (!j->str) { free(j); return NULL; }
    return j;
}

json *json_new_int(int64_t v) {
    json *j = json_new(JSON_NUMBER);
    if (!j) return NULL;
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    j->num = (double)v;
    j->is_int = 1;
    j->len = strlen(buf);
    j->str = strdup(buf);
    if (!j->str) { free(j); return NULL; }
    return j;
}

int json_array_push(json *arr, json *item) {
    if (!arr || arr->type != JSON_ARRAY || !item) return 0;
    if (!grow(arr)) return 0;
    arr->items[arr->n++] = item;
    return 1;
}

int json_object_set(json *obj, const char *key, json *item) {
    if (!obj || obj->type != JSON_OBJECT || !item) return 0;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->key_lens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) {
            json_free(obj->items[i]);
            obj->items[i] = item;
            return 1;
        }
    char *k = strdup(key);
    if (!k || !grow(obj)) { free(k); return 0; }
    obj->items[obj->n] = item;
    obj->keys[obj->n] = k;
    obj->key_lens[obj->n] = kl;
    obj->n++;
    return 1;
}

json *json_clone(const json *j) {
    if (!j) return NULL;
    json *c = json_new(j->type);
    if (!c) return NULL;
    c->num = j->num;
    c->is_int = j->is_int;
    c->len = j->len;
    if (j->str) {
        c->str = malloc(j->len + 1);
        if (!c->str) { json_free(c); return NULL; }
        memcpy(c->str, j->str, j->len + 1);
    }
    for (size_t i = 0; i < j->n; i++) {
        json *v = json_clone(j->items[i]);
        if (!v || !grow(c)) { json_free(v); json_free(c); return NULL; }
        c->items[i] = v;
        if (j->type == JSON_OBJECT) {
            c->keys[i] = malloc(j->key_lens[i] + 1);
            if (!c->keys[i]) { c->n = i; json_free(v); json_free(c); return NULL; }
            memcpy(c->keys[i], j->keys[i], j->key_lens[i] + 1);
            c->key_lens[i] = j->key_lens[i];
        }
        c->n = i + 1;
    }
    return c;
}

/* ---- writer ---- */
typedef struct { char *b; size_t n, cap; int oom; } sbuf;

static void sb_put(sbuf *s, const char *d, size_t n) {
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (s->n + n + 1 > cap) cap *= 2;
        char *nb = realloc(s->b, cap);
        if (!nb) { s->oom = 1; return; }
        s->b = nb;
        s->cap = cap;
    }
    memcpy(s->b + s->n, d, n);
    s->n += n;
    s->b[s->n] = 0;
}

static void write_str(sbuf *s, const char *str, size_t len) {
    sb_put(s, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)str[i];
        char esc[8];
        switch (c) {
        case '"': sb_put(s, "\\\"", 2); break;
        case '\\': sb_put(s, "\\\\", 2); break;
        case '\n': sb_put(s, "\\n", 2); break;
        case '\r': sb_put(s, "\\r", 2); break;
        case '\t': sb_put(s, "\\t", 2); break;
        case '\b': sb_put(s, "\\b", 2); break;
        case '\f': sb_put(s, "\\f", 2); break;
        default:
            if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); sb_put(s, esc, 6); }
            else sb_put(s, (const char *)&str[i], 1);
        }
    }
    sb_put(s, "\"", 1);
}

static void write_val(sbuf *s, const json *j) {
    switch (j->type) {
    case JSON_NULL: sb_put(s, "null", 4); break;
    case JSON_TRUE: sb_put(s, "true", 4); break;
    case JSON_FALSE: sb_put(s, "false", 5); break;
    case JSON_NUMBER: sb_put(s, j->str, j->len); break;
    case JSON_STRING: write_str(s, j->str, j->len); break;
    case JSON_ARRAY:
        sb_put(s, "[", 1);
        for (size_t i = 0; i < j->n; i++) { if (i) sb_put(s, ",", 1); write_val(s, j->items[i]); }
        sb_put(s, "]", 1);
        break;
    case JSON_OBJECT:
        sb_put(s, "{", 1);
        for (size_t i = 0; i < j->n; i++) {
            if (i) sb_put(s, ",", 1);
            write_str(s, j->keys[i], j->key_lens[i]);
            sb_put(s, ":", 1);
            write_val(s, j->items[i]);
        }
        sb_put(s, "}", 1);
        break;
    }
}

char *json_write_compact(const json *j, size_t *len_out) {
    sbuf s = {0};
    write_val(&s, j);
    if (s.oom) { free(s.b); return NULL; }
    if (!s.b) { s.b = calloc(1, 1); if (!s.b) return NULL; }
    if (len_out) *len_out = s.n;
    return s.b;
}
