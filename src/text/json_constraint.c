/* json_constraint.c - the JSON pushdown automaton of json_constraint.h and its token mask. */
#include "text/json_constraint.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ compiled schemas */

enum { JT_NULL = 1, JT_BOOL = 2, JT_INT = 4, JT_NUM = 8, JT_STR = 16, JT_ARR = 32, JT_OBJ = 64, JT_ALL = 127 };

#define MAX_PROPS 64 /* keys of one object schema: seen/required sets are 64-bit masks */
#define MAX_LITS 64  /* enum values */

typedef struct jnode jnode;
struct jnode {
    unsigned types;        /* JT_* allowed */
    int n_lit;             /* enum/const: the value is one of these compact JSON texts */
    char **lit;
    uint32_t *lit_len;
    int n_props;           /* object: listed keys (as JSON string contents, escaped) */
    char **key;
    uint32_t *key_len;
    jnode **prop;
    uint64_t required;
    const jnode *extra;    /* object: schema of the values of other keys; NULL: none allowed */
    const jnode *items;    /* array: schema of each item */
    int min_items, max_items; /* max < 0: unbounded */
    const jnode *ref;      /* $ref: this node stands for that one */
    const jnode *obj, *arr;/* anyOf: the alternatives that describe objects and arrays */
};

/* The node a $ref chain ends at (chains are checked to end when compiled). */
static const jnode *deref(const jnode *n) {
    while (n->ref) n = n->ref;
    return n;
}

struct jcon_schema {
    jnode **nodes; /* every node, owned */
    int n_nodes, cap_nodes;
    jnode *root, *any;
};

typedef struct {
    jcon_schema *s;
    const json *root_doc;
    const json **ref_src; /* $ref targets compiled so far, and their nodes */
    jnode **ref_node;
    int n_ref, cap_ref;
    char *err;
    size_t errlen;
} compiler;

static void cerr(compiler *c, const char *fmt, ...) {
    if (!c->err || !c->errlen || c->err[0]) return; /* keep the first message */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
}

static jnode *node_new(jcon_schema *s) {
    if (s->n_nodes == s->cap_nodes) {
        int cap = s->cap_nodes ? 2 * s->cap_nodes : 16;
        jnode **p = realloc(s->nodes, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        s->nodes = p;
        s->cap_nodes = cap;
    }
    jnode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->max_items = -1;
    s->nodes[s->n_nodes++] = n;
    return n;
}

static void node_free(jnode *n) {
    for (int i = 0; i < n->n_lit; i++) free(n->lit[i]);
    for (int i = 0; i < n->n_props; i++) free(n->key[i]);
    free(n->lit);
    free(n->lit_len);
    free(n->key);
    free(n->key_len);
    free(n->prop);
    free(n);
}

void jcon_schema_free(jcon_schema *s) {
    if (!s) return;
    for (int i = 0; i < s->n_nodes; i++) node_free(s->nodes[i]);
    free(s->nodes);
    free(s);
}

static unsigned type_bit(const char *t) {
    static const char *names[] = {"null", "boolean", "integer", "number", "string", "array", "object"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i])) return 1u << i;
    return 0;
}

/* "#/$defs/NAME" or "#/definitions/NAME" (one level, no escapes) */
static const json *resolve_ref(compiler *c, const char *ref) {
    const char *prefixes[] = {"#/$defs/", "#/definitions/"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(ref, prefixes[i], n)) continue;
        const json *defs = json_get(c->root_doc, i ? "definitions" : "$defs");
        const json *t = defs && defs->type == JSON_OBJECT ? json_get(defs, ref + n) : NULL;
        if (t) return t;
        break;
    }
    cerr(c, "$ref '%.200s' does not name an entry of #/$defs or #/definitions", ref);
    return NULL;
}

static jnode *compile(compiler *c, const json *j, int depth);

static int add_lit(compiler *c, jnode *n, const json *v) {
    if (n->n_lit == MAX_LITS) { cerr(c, "enum has more than %d values", MAX_LITS); return -1; }
    if (!n->lit) {
        n->lit = calloc(MAX_LITS, sizeof *n->lit);
        n->lit_len = calloc(MAX_LITS, sizeof *n->lit_len);
        if (!n->lit || !n->lit_len) { cerr(c, "out of memory"); return -1; }
    }
    size_t len = 0;
    char *t = json_write_compact(v, &len);
    if (!t) { cerr(c, "out of memory"); return -1; }
    n->lit[n->n_lit] = t;
    n->lit_len[n->n_lit++] = (uint32_t)len;
    return 0;
}

/* anyOf: n allows the union of the alternatives' types, and an object or array is read
 * with the alternative that allows it; each type may come from one alternative only. */
static int compile_any_of(compiler *c, jnode *n, const json *alts, int depth) {
    if (alts->type != JSON_ARRAY || alts->n == 0) { cerr(c, "anyOf must be a non-empty list of schemas"); return -1; }
    unsigned types = 0;
    for (size_t i = 0; i < alts->n; i++) {
        jnode *raw = compile(c, alts->items[i], depth + 1);
        if (!raw) return -1;
        const jnode *a = deref(raw);
        if (!a->types) { cerr(c, "a $ref back into the definition that contains the anyOf is not supported"); return -1; }
        if (a->n_lit) { cerr(c, "anyOf with enum or const alternatives is not supported"); return -1; }
        if (a->types & types) { cerr(c, "anyOf alternatives that share a type are not supported"); return -1; }
        types |= a->types;
        if (a->types & JT_OBJ) n->obj = a;
        if (a->types & JT_ARR) n->arr = a;
    }
    n->types = types;
    return 0;
}

static jnode *compile(compiler *c, const json *j, int depth) {
    jcon_schema *s = c->s;
    if (depth > 64) { cerr(c, "the schema nests more than 64 levels"); return NULL; }
    if (j->type == JSON_TRUE) return s->any;
    if (j->type != JSON_OBJECT) { cerr(c, "a schema must be an object (or true)"); return NULL; }
    const json *ref = json_get(j, "$ref");
    if (ref) {
        if (ref->type != JSON_STRING) { cerr(c, "$ref must be a string"); return NULL; }
        const json *t = resolve_ref(c, ref->str);
        if (!t) return NULL;
        for (int i = 0; i < c->n_ref; i++)
            if (c->ref_src[i] == t) return c->ref_node[i];
        if (c->n_ref == c->cap_ref) {
            int cap = c->cap_ref ? 2 * c->cap_ref : 8;
            const json **a = realloc(c->ref_src, (size_t)cap * sizeof *a);
            if (!a) { cerr(c, "out of memory"); return NULL; }
            c->ref_src = a;
            jnode **b = realloc(c->ref_node, (size_t)cap * sizeof *b);
            if (!b) { cerr(c, "out of memory"); return NULL; }
            c->ref_node = b;
            c->cap_ref = cap;
        }
        /* the alias first, so that a definition that refers to itself finds it */
        jnode *n = node_new(s);
        if (!n) { cerr(c, "out of memory"); return NULL; }
        c->ref_src[c->n_ref] = t;
        c->ref_node[c->n_ref++] = n;
        jnode *body = compile(c, t, depth + 1);
        if (!body) return NULL;
        n->ref = body;
        const jnode *q = n;
        for (int hops = 0; q && hops <= c->n_ref; hops++) q = q->ref;
        if (q) { cerr(c, "$ref '%.200s' refers only to itself", ref->str); return NULL; }
        return n;
    }
    jnode *n = node_new(s);
    if (!n) { cerr(c, "out of memory"); return NULL; }
    static const char *ignored[] = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                    "$defs", "definitions", "format", "strict"};
    static const char *known[] = {"type", "properties", "required", "additionalProperties", "items", "minItems",
                                  "maxItems", "enum", "const", "anyOf"};
    for (size_t k = 0; k < j->n; k++) {
        const char *key = j->keys[k];
        int ok = 0;
        for (size_t i = 0; i < sizeof ignored / sizeof *ignored && !ok; i++) ok = !strcmp(key, ignored[i]);
        for (size_t i = 0; i < sizeof known / sizeof *known && !ok; i++) ok = !strcmp(key, known[i]);
        if (!ok) { cerr(c, "the schema keyword '%.100s' is not supported", key); return NULL; }
    }
    const json *type = json_get(j, "type"), *props = json_get(j, "properties"), *items = json_get(j, "items");
    const json *en = json_get(j, "enum"), *cn = json_get(j, "const"), *any_of = json_get(j, "anyOf");
    if (any_of && (type || props || items || en || cn)) {
        cerr(c, "anyOf next to type, properties, items, enum or const is not supported");
        return NULL;
    }
    if (type) {
        if (type->type == JSON_STRING) n->types = type_bit(type->str);
        else if (type->type == JSON_ARRAY)
            for (size_t i = 0; i < type->n; i++) {
                unsigned b = type->items[i]->type == JSON_STRING ? type_bit(type->items[i]->str) : 0;
                if (!b) { n->types = 0; break; }
                n->types |= b;
            }
        if (!n->types) { cerr(c, "'type' must be one of null, boolean, integer, number, string, array, object, or a list of them"); return NULL; }
        if (n->types & JT_NUM) n->types |= JT_INT; /* every integer is a number */
    } else if (any_of) {
        if (compile_any_of(c, n, any_of, depth)) return NULL;
    } else if (props) n->types = JT_OBJ;
    else if (items) n->types = JT_ARR;
    else n->types = JT_ALL;
    if (en || cn) {
        if (en && (en->type != JSON_ARRAY || en->n == 0)) { cerr(c, "'enum' must be a non-empty list"); return NULL; }
        for (size_t i = 0; en && i < en->n; i++)
            if (add_lit(c, n, en->items[i])) return NULL;
        if (cn && add_lit(c, n, cn)) return NULL;
        return n; /* the literals say everything; the type only narrows which of them are valid */
    }
    if (n->types & JT_OBJ && !any_of) {
        const json *ap = json_get(j, "additionalProperties"), *req = json_get(j, "required");
        if (props && props->type != JSON_OBJECT) { cerr(c, "'properties' must be an object"); return NULL; }
        if (props && props->n > MAX_PROPS) { cerr(c, "more than %d properties in one object are not supported", MAX_PROPS); return NULL; }
        int np = props ? (int)props->n : 0;
        if (np) {
            n->key = calloc((size_t)np, sizeof *n->key);
            n->key_len = calloc((size_t)np, sizeof *n->key_len);
            n->prop = calloc((size_t)np, sizeof *n->prop);
            if (!n->key || !n->key_len || !n->prop) { cerr(c, "out of memory"); return NULL; }
        }
        for (int i = 0; i < np; i++) {
            json *name = json_new_string(props->keys[i], props->key_lens[i]);
            size_t len = 0;
            char *q = name ? json_write_compact(name, &len) : NULL;
            json_free(name);
            if (!q) { cerr(c, "out of memory"); return NULL; }
            memmove(q, q + 1, len - 2); /* the string's contents as written in JSON */
            q[len - 2] = 0;
            n->key[i] = q;
            n->key_len[i] = (uint32_t)(len - 2);
            n->n_props = i + 1;
            if (!(n->prop[i] = compile(c, props->items[i], depth + 1))) return NULL;
        }
        if (!ap || ap->type == JSON_TRUE) n->extra = props && ap == NULL ? NULL : s->any;
        else if (ap->type == JSON_FALSE) n->extra = NULL;
        else if (!(n->extra = compile(c, ap, depth + 1))) return NULL;
        if (req && req->type != JSON_ARRAY) { cerr(c, "'required' must be a list of names"); return NULL; }
        for (size_t i = 0; req && i < req->n; i++) {
            const json *r = req->items[i];
            int at = -1;
            for (int p = 0; r->type == JSON_STRING && p < np; p++)
                if (props->key_lens[p] == r->len && !memcmp(props->keys[p], r->str, r->len)) at = p;
            if (at < 0) {
                cerr(c, "required property %.200s is not in 'properties'", r->type == JSON_STRING ? r->str : "(not a string)");
                return NULL;
            }
            n->required |= 1ull << at;
        }
    }
    if (n->types & JT_ARR && !any_of) {
        int64_t v;
        n->items = s->any;
        if (items && !(n->items = compile(c, items, depth + 1))) return NULL;
        if (json_get_int(j, "minItems", 0, &v) || v < 0 || v > 1000000) { cerr(c, "'minItems' must be a count"); return NULL; }
        n->min_items = (int)v;
        if (json_get_int(j, "maxItems", -1, &v) || v < -1 || v > 1000000) { cerr(c, "'maxItems' must be a count"); return NULL; }
        n->max_items = (int)v;
        if (n->max_items >= 0 && n->max_items < n->min_items) { cerr(c, "'maxItems' is below 'minItems'"); return NULL; }
    }
    return n;
}

jcon_schema *jcon_schema_compile(const json *schema, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    jcon_schema *s = calloc(1, sizeof *s);
    compiler c = {.s = s, .root_doc = schema, .err = err, .errlen = errlen};
    if (!s || !(s->any = node_new(s))) {
        cerr(&c, "out of memory");
        jcon_schema_free(s);
        return NULL;
    }
    s->any->types = JT_ALL;
    s->any->extra = s->any;
    s->any->items = s->any;
    if (!schema) { /* json_object: an object with any keys and values */
        s->root = node_new(s);
        if (s->root) { s->root->types = JT_OBJ; s->root->extra = s->any; }
        else cerr(&c, "out of memory");
    } else
        s->root = compile(&c, schema, 0);
    free(c.ref_src);
    free(c.ref_node);
    if (!s->root) { jcon_schema_free(s); return NULL; }
    return s;
}

/* ------------------------------------------------------------------ the automaton */

enum { F_VAL, F_OBJ, F_ARR, F_STR, F_NUM, F_LIT };
enum { O_START, O_COLON, O_NEXT, O_KEY };   /* object: after '{', after a key, after a value, after ',' */
enum { A_START, A_NEXT, A_ITEM };           /* array: after '[', after an item, after ',' */
enum { S_CH, S_ESC, S_HEX, S_UTF };         /* string: plain, after '\', in \uXXXX, in a UTF-8 character */
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
#define NUM_MAX_LEN 40

static const char *const WORDS[3] = {"true", "false", "null"};
static const uint32_t WORD_LEN[3] = {4, 5, 4};

typedef struct {
    const jnode *s;
    uint8_t kind, st;
    uint8_t left, lo, hi; /* string: hex digits or UTF-8 bytes still to come, and the next byte's range */
    uint8_t is_key, key_free, words; /* string: an object key (others allowed); literal: true/false/null */
    int16_t cur;          /* object: index of the key just read (-1: another key) */
    uint32_t pos;         /* bytes into a literal or key; digits of a number; items of an array */
    uint64_t cand, seen;  /* literal/key: candidates still possible; object: listed keys seen */
} jframe;

typedef struct {
    int depth, ws;
    jframe f[JCON_MAX_DEPTH];
} jstate;

static void state_copy(jstate *dst, const jstate *src) {
    dst->depth = src->depth;
    dst->ws = src->ws;
    memcpy(dst->f, src->f, (size_t)src->depth * sizeof(jframe));
}

static int is_ws(int ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }
static int is_digit(int ch) { return ch >= '0' && ch <= '9'; }

static uint64_t keys_open(const jframe *o) {
    const jnode *s = o->s;
    uint64_t all = s->n_props == 64 ? ~0ull : (1ull << s->n_props) - 1;
    return all & ~o->seen;
}

static int can_close_obj(const jframe *o) { return (o->s->required & ~o->seen) == 0; }
static int more_keys(const jframe *o) { return o->s->extra != NULL || keys_open(o) != 0; }

/* A literal frame: is some candidate complete, and can some candidate go on? */
static int lit_len(const jframe *f, int i) { return f->words ? (int)WORD_LEN[i] : (int)f->s->lit_len[i]; }
static const char *lit_text(const jframe *f, int i) { return f->words ? WORDS[i] : f->s->lit[i]; }
static int lit_state(const jframe *f, int *longer) {
    int done = 0, more = 0;
    for (int i = 0; i < 64; i++)
        if (f->cand >> i & 1) {
            int len = lit_len(f, i);
            done |= len == (int)f->pos;
            more |= len > (int)f->pos;
        }
    *longer = more;
    return done;
}

static int num_complete(const jframe *f) { return f->st == N_ZERO || f->st == N_INT || f->st == N_FRAC || f->st == N_EXP; }

/* The value on top has ended: pop it and tell its parent. */
static void pop_value(jstate *st) {
    st->depth--;
    if (st->depth > 0) {
        jframe *p = &st->f[st->depth - 1];
        if (p->kind == F_ARR) p->pos++;
    }
}

static int push(jstate *st, const jnode *s, int kind) {
    if (st->depth == JCON_MAX_DEPTH) return 0;
    jframe *f = &st->f[st->depth++];
    memset(f, 0, sizeof *f);
    f->s = s;
    f->kind = (uint8_t)kind;
    return 1;
}

/* Turns the F_VAL frame on top into the value that ch starts, or fails. ch is consumed by the
 * caller's next round (the frame is set up to read it) unless it is a bracket or quote. */
static int start_value(jframe *f, int ch, int *consumed) {
    const jnode *s = f->s = deref(f->s);
    *consumed = 1;
    if (s->n_lit) {
        f->kind = F_LIT;
        f->words = 0;
        f->cand = s->n_lit == 64 ? ~0ull : (1ull << s->n_lit) - 1;
        f->pos = 0;
        *consumed = 0;
        return 1;
    }
    if (ch == '{' && s->types & JT_OBJ) { f->s = s->obj ? s->obj : s; f->kind = F_OBJ; f->st = O_START; f->seen = 0; return 1; }
    if (ch == '[' && s->types & JT_ARR) { f->s = s->arr ? s->arr : s; f->kind = F_ARR; f->st = A_START; f->pos = 0; return 1; }
    if (ch == '"' && s->types & JT_STR) { f->kind = F_STR; f->st = S_CH; f->is_key = 0; return 1; }
    if ((ch == '-' || is_digit(ch)) && s->types & (JT_INT | JT_NUM)) { f->kind = F_NUM; f->pos = 0; f->st = 0xff; *consumed = 0; return 1; }
    unsigned w = (s->types & JT_BOOL ? 3u : 0u) | (s->types & JT_NULL ? 4u : 0u);
    if (w && (ch == 't' || ch == 'f' || ch == 'n')) { f->kind = F_LIT; f->words = 1; f->cand = w; f->pos = 0; *consumed = 0; return 1; }
    return 0;
}

/* One byte of a number; returns 1 consumed, 0 not part of the number (it may end here), -1 invalid. */
static int num_byte(jframe *f, int ch) {
    int num = (f->s->types & JT_NUM) != 0;
    if (f->pos >= NUM_MAX_LEN) return 0;
    int st = f->st, next = -1;
    switch (st) {
    case 0xff: next = ch == '-' ? N_MINUS : ch == '0' ? N_ZERO : is_digit(ch) ? N_INT : -1; break;
    case N_MINUS: next = ch == '0' ? N_ZERO : is_digit(ch) ? N_INT : -1; break;
    case N_ZERO: next = num && ch == '.' ? N_DOT : num && (ch == 'e' || ch == 'E') ? N_E : -1; break;
    case N_INT: next = is_digit(ch) ? N_INT : num && ch == '.' ? N_DOT : num && (ch == 'e' || ch == 'E') ? N_E : -1; break;
    case N_DOT: next = is_digit(ch) ? N_FRAC : -1; break;
    case N_FRAC: next = is_digit(ch) ? N_FRAC : (ch == 'e' || ch == 'E') ? N_E : -1; break;
    case N_E: next = ch == '+' || ch == '-' ? N_ESIGN : is_digit(ch) ? N_EXP : -1; break;
    case N_ESIGN: case N_EXP: next = is_digit(ch) ? N_EXP : -1; break;
    }
    if (next < 0) return num_complete(f) ? 0 : -1;
    f->st = (uint8_t)next;
    f->pos++;
    return 1;
}

/* One byte of a string (or key); returns 1 consumed (the string may have closed), 0 invalid. */
static int str_byte(jstate *st, jframe *f, int ch) {
    switch (f->st) {
    case S_CH:
        if (ch == '"') {
            if (f->is_key) {
                jframe *o = f - 1;
                int at = -1;
                for (int i = 0; i < o->s->n_props; i++)
                    if (f->cand >> i & 1 && o->s->key_len[i] == f->pos) at = i;
                if (at >= 0 && o->seen >> at & 1) return 0; /* a key given twice */
                if (at < 0 && !f->key_free) return 0;
                o->cur = (int16_t)at;
                o->st = O_COLON;
                st->depth--;
                return 1;
            }
            pop_value(st);
            return 1;
        }
        if (ch == '\\') f->st = S_ESC;
        else if (ch < 0x20) return 0;
        else if (ch >= 0x80) {
            if (ch < 0xC2 || ch > 0xF4) return 0;
            f->st = S_UTF;
            f->left = ch < 0xE0 ? 1 : ch < 0xF0 ? 2 : 3;
            f->lo = ch == 0xE0 ? 0xA0 : ch == 0xF0 ? 0x90 : 0x80; /* no overlong forms */
            f->hi = ch == 0xED ? 0x9F : ch == 0xF4 ? 0x8F : 0xBF; /* no surrogates, nothing past U+10FFFF */
        }
        break;
    case S_ESC:
        if (ch == 'u') { f->st = S_HEX; f->left = 4; }
        else if (strchr("\"\\/bfnrt", ch) && ch) f->st = S_CH;
        else return 0;
        break;
    case S_HEX:
        if (!(is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F'))) return 0;
        if (--f->left == 0) f->st = S_CH;
        break;
    case S_UTF:
        if (ch < f->lo || ch > f->hi) return 0;
        f->lo = 0x80;
        f->hi = 0xBF;
        if (--f->left == 0) f->st = S_CH;
        break;
    }
    if (f->is_key) { /* the raw bytes must spell a listed key, unless other keys are allowed */
        jframe *o = f - 1;
        uint64_t keep = 0;
        for (int i = 0; i < o->s->n_props; i++)
            if (f->cand >> i & 1 && o->s->key_len[i] > f->pos && (unsigned char)o->s->key[i][f->pos] == ch) keep |= 1ull << i;
        f->cand = keep;
        f->pos++;
        if (!keep && !f->key_free) return 0;
    }
    return 1;
}

/* Blanks may come where a value starts and between an object's or array's parts (and, with
 * no frame left, after the document); in a string they are content, and they end a number or
 * a literal. */
static int takes_blanks(const jframe *f) { return !f || f->kind == F_VAL || f->kind == F_OBJ || f->kind == F_ARR; }

/* Feeds one byte; returns 1 when it continues a valid document. st may be partly changed on
 * failure (callers work on a copy). */
static int feed_byte(jstate *st, int ch) {
    for (int round = 0; round < JCON_MAX_DEPTH + 2; round++) {
        if (st->depth == 0) { /* the document is complete: only blanks may follow */
            if (!is_ws(ch) || ++st->ws > JCON_MAX_WS) return 0;
            return 1;
        }
        jframe *f = &st->f[st->depth - 1];
        int blank_ok = takes_blanks(f);
        if (blank_ok && is_ws(ch)) return ++st->ws <= JCON_MAX_WS;
        if (blank_ok) st->ws = 0;
        switch (f->kind) {
        case F_VAL: {
            int consumed;
            if (!start_value(f, ch, &consumed)) return 0;
            if (consumed) return 1;
            continue; /* the literal or number frame reads ch */
        }
        case F_LIT: {
            uint64_t keep = 0;
            for (int i = 0; i < 64; i++)
                if (f->cand >> i & 1 && lit_len(f, i) > (int)f->pos && (unsigned char)lit_text(f, i)[f->pos] == ch) keep |= 1ull << i;
            int longer;
            if (keep) {
                f->cand = keep;
                f->pos++;
                if (lit_state(f, &longer) && !longer) pop_value(st); /* nothing can follow: done */
                return 1;
            }
            if (!lit_state(f, &longer)) return 0;
            pop_value(st); /* e.g. enum [1, 12] after "1": ch belongs to the parent */
            continue;
        }
        case F_NUM: {
            int r = num_byte(f, ch);
            if (r < 0) return 0;
            if (r > 0) return 1;
            pop_value(st);
            continue;
        }
        case F_STR:
            return str_byte(st, f, ch);
        case F_OBJ:
            switch (f->st) {
            case O_START:
            case O_KEY:
                if (ch == '}' && f->st == O_START && can_close_obj(f)) { pop_value(st); return 1; }
                if (ch != '"' || !more_keys(f)) return 0;
                if (!push(st, NULL, F_STR)) return 0;
                {
                    jframe *k = &st->f[st->depth - 1];
                    k->st = S_CH;
                    k->is_key = 1;
                    k->key_free = f->s->extra != NULL;
                    k->cand = k->key_free ? (f->s->n_props == 64 ? ~0ull : (1ull << f->s->n_props) - 1) : keys_open(f);
                }
                return 1;
            case O_COLON:
                if (ch != ':') return 0;
                if (f->cur >= 0) f->seen |= 1ull << f->cur;
                f->st = O_NEXT;
                return push(st, f->cur >= 0 ? f->s->prop[f->cur] : f->s->extra, F_VAL);
            case O_NEXT:
                if (ch == ',' && more_keys(f)) { f->st = O_KEY; return 1; }
                if (ch == '}' && can_close_obj(f)) { pop_value(st); return 1; }
                return 0;
            }
            return 0;
        case F_ARR:
            switch (f->st) {
            case A_START:
                if (ch == ']') {
                    if (f->s->min_items > 0) return 0;
                    pop_value(st);
                    return 1;
                }
                if (f->s->max_items == 0) return 0;
                f->st = A_NEXT;
                if (!push(st, f->s->items, F_VAL)) return 0;
                continue;
            case A_NEXT:
                if (ch == ',' && (f->s->max_items < 0 || (int)f->pos < f->s->max_items)) { f->st = A_ITEM; return 1; }
                if (ch == ']' && (int)f->pos >= f->s->min_items) { pop_value(st); return 1; }
                return 0;
            case A_ITEM:
                f->st = A_NEXT;
                if (!push(st, f->s->items, F_VAL)) return 0;
                continue;
            }
            return 0;
        }
        return 0;
    }
    return 0;
}

static int state_complete(const jstate *st) {
    if (st->depth == 0) return 1;
    if (st->depth > 1) return 0;
    const jframe *f = &st->f[0];
    int longer;
    if (f->kind == F_NUM) return num_complete(f);
    if (f->kind == F_LIT) return lit_state(f, &longer);
    return 0;
}

/* ------------------------------------------------------------------ tokens */

enum { TOK_EOS = 1, TOK_BANNED = 2, TOK_STRSAFE = 4 };

struct jcon_vocab {
    int n;
    const unsigned char **bytes;
    uint32_t *len;
    uint8_t *flags;
    uint8_t *lead;  /* leading blanks (capped at 255) */
    uint8_t *first; /* the first byte after them (0 when the token is all blanks) */
};

/* Plain string content: printable ASCII but '"' and '\', or whole UTF-8 characters. */
static int string_safe(const unsigned char *p, size_t n) {
    jstate st = {.depth = 2};
    static const jnode plain = {.types = JT_STR};
    st.f[0].kind = F_ARR; /* a parent to pop into; never reached */
    st.f[0].s = &plain;
    st.f[1].kind = F_STR;
    st.f[1].s = &plain;
    st.f[1].st = S_CH;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\') return 0;
        if (!str_byte(&st, &st.f[1], p[i])) return 0;
    }
    return st.f[1].st == S_CH;
}

jcon_vocab *jcon_vocab_new(const qnext_tokenizer *tok, int n_vocab, const int32_t *eos, int n_eos) {
    jcon_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->n = n_vocab;
    v->bytes = calloc((size_t)n_vocab, sizeof *v->bytes);
    v->len = calloc((size_t)n_vocab, sizeof *v->len);
    v->flags = calloc((size_t)n_vocab, 1);
    v->lead = calloc((size_t)n_vocab, 1);
    v->first = calloc((size_t)n_vocab, 1);
    if (!v->bytes || !v->len || !v->flags || !v->lead || !v->first) { jcon_vocab_free(v); return NULL; }
    for (int id = 0; id < n_vocab; id++) {
        size_t len = 0;
        const unsigned char *b = tokenizer_token_bytes(tok, id, &len);
        v->bytes[id] = b;
        v->len[id] = (uint32_t)len;
        if (!b || !len || tokenizer_is_added(tok, id)) v->flags[id] = TOK_BANNED;
        else if (string_safe(b, len)) v->flags[id] = TOK_STRSAFE;
        size_t k = 0;
        while (k < len && is_ws(b[k])) k++;
        v->lead[id] = (uint8_t)(k < 255 ? k : 255);
        v->first[id] = k < len ? b[k] : 0;
    }
    for (int i = 0; i < n_eos; i++)
        if (eos[i] >= 0 && eos[i] < n_vocab) v->flags[eos[i]] = TOK_EOS;
    return v;
}

void jcon_vocab_free(jcon_vocab *v) {
    if (!v) return;
    free(v->bytes);
    free(v->len);
    free(v->flags);
    free(v->lead);
    free(v->first);
    free(v);
}

struct jcon {
    const jcon_schema *s;
    const jcon_vocab *v;
    jstate st, tmp;
};

jcon *jcon_new(const jcon_schema *s, const jcon_vocab *v) {
    jcon *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->v = v;
    c->st.depth = 1;
    c->st.f[0].s = s->root;
    c->st.f[0].kind = F_VAL;
    return c;
}

void jcon_free(jcon *c) { free(c); }

int jcon_complete(const jcon *c) { return state_complete(&c->st); }

int jcon_feed(jcon *c, const unsigned char *p, size_t n) {
    state_copy(&c->tmp, &c->st);
    for (size_t i = 0; i < n; i++)
        if (!feed_byte(&c->tmp, p[i])) return 0;
    state_copy(&c->st, &c->tmp);
    return 1;
}

int jcon_accept(jcon *c, int32_t token) {
    const jcon_vocab *v = c->v;
    if (token < 0 || token >= v->n) return 0;
    if (v->flags[token] & TOK_EOS) return state_complete(&c->st);
    if (v->flags[token] & TOK_BANNED) return 0;
    return jcon_feed(c, v->bytes[token], v->len[token]);
}

/* Would the token's bytes continue the document? The cheap tests first (see jcon_mask). */
static int token_allowed(jcon *c, int id, const uint8_t *first_ok, int plain_str, int blanks, int end_ok) {
    const jcon_vocab *v = c->v;
    int f = v->flags[id];
    if (f & TOK_EOS) return end_ok;
    if (f & TOK_BANNED) return 0;
    if (plain_str && f & TOK_STRSAFE) return 1;
    if (blanks && v->lead[id]) {
        if (c->st.ws + v->lead[id] > JCON_MAX_WS) return 0;
        if (v->lead[id] == v->len[id]) return 1;
        if (!first_ok[v->first[id]]) return 0;
    } else {
        if (!first_ok[v->bytes[id][0]]) return 0;
        if (v->len[id] == 1) return 1;
    }
    state_copy(&c->tmp, &c->st);
    for (uint32_t i = 0; i < v->len[id]; i++)
        if (!feed_byte(&c->tmp, v->bytes[id][i])) return 0;
    return 1;
}

int jcon_mask(jcon *c, float *logits) {
    uint8_t first_ok[256];
    for (int b = 0; b < 256; b++) {
        state_copy(&c->tmp, &c->st);
        first_ok[b] = (uint8_t)feed_byte(&c->tmp, b);
    }
    const jframe *top = c->st.depth ? &c->st.f[c->st.depth - 1] : NULL;
    /* inside a string that no listed key constrains, plain text goes on */
    int plain_str = top && top->kind == F_STR && top->st == S_CH && (!top->is_key || (top->key_free && !top->cand));
    /* where blanks may come, leading blanks change nothing but the count of blanks in a row:
     * a token is judged by the byte after them */
    int blanks = takes_blanks(top);
    int end_ok = state_complete(&c->st), allowed = 0;
    for (int id = 0; id < c->v->n; id++) {
        if (token_allowed(c, id, first_ok, plain_str, blanks, end_ok)) allowed++;
        else logits[id] = -INFINITY;
    }
    return allowed;
}
