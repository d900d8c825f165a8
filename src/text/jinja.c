/* jinja.c - lexer, parser and tree-walking evaluator for the Jinja2 subset in jinja.h.
 *
 * Design: the source is lexed exactly like Jinja's lexer does with trim_blocks=True,
 * lstrip_blocks=True and keep_trailing_newline=False (whitespace control is decided at
 * lex time), parsed into an AST by recursive descent following Jinja's grammar and
 * operator precedence, and evaluated with Python value semantics (int/float/str/list/
 * dict/None/Undefined). All memory of a render lives in one arena, and errors unwind
 * with longjmp, so a failing render cannot leak and library code never exits. */
#define _POSIX_C_SOURCE 200809L /* localtime_r */
#include "text/jinja.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------ arena */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
} arena_block;

typedef struct {
    arena_block *head;
    size_t total, limit;
} arena;

/* Returns NULL when the arena's limit is reached or malloc fails. */
static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit) return NULL;
        arena_block *b = malloc(sizeof(arena_block) + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_free_all(arena *a) {
    arena_block *b = a->head;
    while (b) {
        arena_block *nx = b->next;
        free(b);
        b = nx;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------------------ values */

/* V_BIGINT: an integer from the input JSON beyond 64 bits (Python ints are unbounded). It
 * keeps its decimal text (in u.s) and can be printed, serialised and compared for
 * equality; arithmetic on it is an error. */
enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_LOOP, V_FUNC, V_MACRO, V_BIGINT };
/* Sequence kinds: they print differently (Python repr) and lists never equal tuples. */
enum { SEQ_LIST, SEQ_TUPLE, SEQ_ITEMS, SEQ_KEYS, SEQ_VALUES, SEQ_ITER };

typedef struct val val;
typedef struct node node;
typedef struct scope scope;
typedef struct loopctx loopctx;

struct val {
    int t, kind;
    union {
        int b;
        int64_t i;
        double f;
        struct { const char *p; size_t n; } s;
        struct { val **v; size_t n; } l;
        struct { val **k, **v; size_t n, cap; } d; /* V_DICT and V_NS (only NS grows) */
        loopctx *loop;
        struct { const char *name; val *self; } fn;
        struct { const node *def; scope *closure; } mac;
        const char *undef_msg; /* why it is undefined, for the error when it is used */
    } u;
};

struct loopctx {
    val **items;
    size_t n, i;
};

static val V_NONE_ = {V_NONE, 0, {0}};
static val V_TRUE_ = {V_BOOL, 0, {.b = 1}};
static val V_FALSE_ = {V_BOOL, 0, {.b = 0}};
#define VNONE (&V_NONE_)
#define VTRUE (&V_TRUE_)
#define VFALSE (&V_FALSE_)
#define VBOOL(x) ((x) ? VTRUE : VFALSE)

/* ------------------------------------------------------------------ AST */

enum {
    /* statements */
    N_BODY, N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_WITH,
    N_FILTERBLOCK,
    /* expressions */
    E_LIT, E_NAME, E_GETATTR, E_GETITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS, E_NOT,
    E_BINOP, E_AND, E_OR, E_COMPARE, E_COND, E_LIST, E_TUPLE, E_DICT
};
/* binary / compare operators */
enum { OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

struct node {
    int type, op;
    size_t pos;            /* byte offset in the normalised source, for messages */
    node *a, *b, *c, *d;   /* meaning depends on type (see the parser) */
    node **kids;           /* children: statements, call arguments, list items... */
    char **kwnames;        /* per kid: keyword name, or NULL for a positional argument */
    int *ops;              /* E_COMPARE: operator per kid */
    size_t nkids;
    char **names;          /* assignment targets / macro parameters */
    size_t nnames;
    const char *str;       /* N_TEXT text, names of variables/attributes/filters/tests */
    size_t len;
    val *lit;
};

struct jinja_template {
    arena ar;
    char *src; /* normalised source: the AST points into it */
    size_t len;
    node *root;
};

/* ------------------------------------------------------------------ small helpers */

static void fmt_linecol(const char *src, size_t len, size_t pos, int *line, int *col) {
    int l = 1, c = 1;
    if (pos > len) pos = len;
    for (size_t i = 0; i < pos; i++) {
        if (src[i] == '\n') { l++; c = 1; }
        else if (((unsigned char)src[i] & 0xC0) != 0x80) c++;
    }
    *line = l;
    *col = c;
}

/* Decodes one UTF-8 code point at s[*i] (advancing *i); invalid bytes decode as themselves. */
static int32_t utf8_next(const char *s, size_t n, size_t *i) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) { cp = (unsigned char)s[*i]; k = 1; }
    *i += (size_t)k;
    return cp;
}

static size_t utf8_put(char *dst, int32_t cp) {
    return (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)dst);
}

/* Python's str.isspace() set: what str.strip()/split() without arguments remove. */
static int py_isspace(int32_t c) {
    if (c >= 0x09 && c <= 0x0d) return 1;
    if (c >= 0x1c && c <= 0x20) return 1;
    if (c == 0x85 || c == 0xa0 || c == 0x1680) return 1;
    if (c >= 0x2000 && c <= 0x200a) return 1;
    return c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static size_t utf8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Byte offsets of each code point start (plus n at the end); out has count+1 entries. */
static void utf8_offsets(const char *s, size_t n, size_t *out) {
    size_t k = 0, i = 0;
    while (i < n) {
        out[k++] = i;
        utf8_next(s, n, &i);
    }
    out[k] = n;
}

/* ------------------------------------------------------------------ Python float repr */

/* Formats a double as Python's repr() does: the shortest digits that round-trip,
 * positional for exponents in [-4, 16), scientific otherwise. buf needs 32 bytes. */
static void py_float_repr(double x, char *buf) {
    if (isnan(x)) { strcpy(buf, "nan"); return; }
    if (isinf(x)) { strcpy(buf, x < 0 ? "-inf" : "inf"); return; }
    if (x == 0) { strcpy(buf, signbit(x) ? "-0.0" : "0.0"); return; }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    /* tmp is [-]d.ddde[+-]XX: split into digits and exponent */
    char digits[24];
    int nd = 0, neg = 0;
    const char *p = tmp;
    if (*p == '-') { neg = 1; p++; }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--; /* %.*e may pad with zeros */
    digits[nd] = 0;
    int decpt = exp10 + 1; /* value = 0.digits * 10^decpt */
    char *o = buf;
    if (neg) *o++ = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -decpt; i++) *o++ = '0';
            for (int i = 0; i < nd; i++) *o++ = digits[i];
        } else {
            for (int i = 0; i < decpt; i++) *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > decpt) for (int i = decpt; i < nd; i++) *o++ = digits[i];
            else *o++ = '0';
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++) *o++ = digits[i];
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
}

/* ================================================================== LEXER */

enum { TK_EOF, TK_DATA, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END, TK_NAME, TK_STRING, TK_INT,
       TK_FLOAT, TK_OP };

typedef struct {
    int type;
    size_t pos;     /* offset in source */
    const char *p;  /* text (names, ops, data) */
    size_t n;
    val *lit;       /* decoded literal for strings and numbers */
} token;

typedef struct {
    jinja_template *t;
    const char *s;
    size_t n;
    token *toks;
    size_t ntoks, cap;
    size_t cur;
    int loop_depth, expr_depth, macro_depth;
    jmp_buf jb;
    char *err;
    size_t errlen;
} parser;

static void perr_at(parser *p, size_t pos, const char *fmt, ...) {
    int line, col;
    fmt_linecol(p->s, p->n, pos, &line, &col);
    if (p->err && p->errlen) {
        int k = snprintf(p->err, p->errlen, "template syntax error at line %d, column %d: ", line, col);
        if (k >= 0 && (size_t)k < p->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    longjmp(p->jb, 1);
}

static void *palloc(parser *p, size_t n) {
    void *r = arena_alloc(&p->t->ar, n);
    if (!r) perr_at(p, 0, "out of memory");
    memset(r, 0, n);
    return r;
}

static void push_tok(parser *p, int type, size_t pos, const char *s, size_t n, val *lit) {
    if (p->ntoks == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 256;
        token *nt = realloc(p->toks, nc * sizeof(token));
        if (!nt) perr_at(p, pos, "out of memory");
        p->toks = nt;
        p->cap = nc;
    }
    token *t = &p->toks[p->ntoks++];
    t->type = type;
    t->pos = pos;
    t->p = s;
    t->n = n;
    t->lit = lit;
}

/* True if s[i..] is only Python whitespace up to `end` (and non-empty). */
static int all_space(const char *s, size_t i, size_t end) {
    if (i >= end) return 0;
    while (i < end) {
        if (!py_isspace(utf8_next(s, end, &i))) return 0;
    }
    return 1;
}

/* Index after stripping trailing Python whitespace from s[start..end). */
static size_t rstrip_end(const char *s, size_t start, size_t end) {
    while (end > start) {
        size_t b = end - 1;
        while (b > start && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        size_t i = b;
        if (!py_isspace(utf8_next(s, end, &i))) break;
        end = b;
    }
    return end;
}

static size_t skip_space(const char *s, size_t n, size_t i) {
    while (i < n) {
        size_t j = i;
        if (!py_isspace(utf8_next(s, n, &j))) break;
        i = j;
    }
    return i;
}

/* Decodes a Jinja string literal body the way Python's unicode-escape codec does. */
static val *lex_string(parser *p, size_t start, size_t end) {
    char *o = palloc(p, end - start + 1);
    size_t k = 0;
    const char *s = p->s;
    for (size_t i = start; i < end;) {
        if (s[i] != '\\') { o[k++] = s[i++]; continue; }
        if (i + 1 >= end) { o[k++] = s[i++]; continue; }
        char c = s[i + 1];
        i += 2;
        switch (c) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\n': break; /* line continuation */
        case 'x': case 'u': case 'U': {
            int nd = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int j = 0; j < nd; j++) {
                char h = i + j < end ? s[i + j] : 0;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) perr_at(p, i - 2, "truncated \\%c escape in string literal", c);
                cp = cp * 16 + (uint32_t)v;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                perr_at(p, i - 2, "unsupported code point in \\%c escape", c);
            i += (size_t)nd;
            k += utf8_put(o + k, (int32_t)cp);
            break;
        }
        case 'N': perr_at(p, i - 2, "\\N{...} escapes are not supported"); break;
        default:
            if (c >= '0' && c <= '7') {
                uint32_t cp = (uint32_t)(c - '0');
                for (int j = 0; j < 2 && i < end && s[i] >= '0' && s[i] <= '7'; j++) cp = cp * 8 + (uint32_t)(s[i++] - '0');
                k += utf8_put(o + k, (int32_t)cp);
            } else {
                o[k++] = '\\'; /* unknown escapes stay as written */
                o[k++] = c;
            }
        }
    }
    o[k] = 0;
    val *v = palloc(p, sizeof(val));
    v->t = V_STR;
    v->u.s.p = o;
    v->u.s.n = k;
    return v;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_name_char(char c) { return is_name_start(c) || is_digit(c); }

/* Digits with optional single underscores between them ("1_000"); returns end index. */
static size_t scan_digits(const char *s, size_t n, size_t i) {
    if (i >= n || !is_digit(s[i])) return i;
    while (i < n) {
        if (is_digit(s[i])) i++;
        else if (s[i] == '_' && i + 1 < n && is_digit(s[i + 1])) i++;
        else break;
    }
    return i;
}

static val *make_number(parser *p, size_t start, size_t end, int is_float) {
    char buf[128];
    size_t k = 0;
    for (size_t i = start; i < end && k < sizeof buf - 1; i++)
        if (p->s[i] != '_') buf[k++] = p->s[i];
    buf[k] = 0;
    val *v = palloc(p, sizeof(val));
    errno = 0;
    if (is_float) {
        v->t = V_FLOAT;
        v->u.f = strtod(buf, NULL);
    } else {
        v->t = V_INT;
        v->u.i = strtoll(buf, NULL, 10);
        if (errno == ERANGE) perr_at(p, start, "integer literal too large");
    }
    return v;
}

/* Lexes the tokens inside one {{ }} or {% %} tag starting at i; returns the index after
 * the closing delimiter (and the whitespace it swallows). */
static size_t lex_tag(parser *p, size_t i, int is_block, int *line_starting) {
    const char *s = p->s;
    size_t n = p->n;
    char stack[256];
    int depth = 0;
    size_t tag_start = i;
    for (;;) {
        i = skip_space(s, n, i);
        if (i >= n) perr_at(p, tag_start, "unexpected end of template: tag is not closed");
        if (depth == 0) {
            if (is_block) {
                if (n - i >= 3 && s[i] == '+' && s[i + 1] == '%' && s[i + 2] == '}') {
                    push_tok(p, TK_BLOCK_END, i, s + i, 3, NULL);
                    *line_starting = 0;
                    return i + 3;
                }
                if (n - i >= 3 && s[i] == '-' && s[i + 1] == '%' && s[i + 2] == '}') {
                    push_tok(p, TK_BLOCK_END, i, s + i, 3, NULL);
                    size_t j = skip_space(s, n, i + 3);
                    *line_starting = j > i + 3 ? s[j - 1] == '\n' : 0;
                    return j;
                }
                if (n - i >= 2 && s[i] == '%' && s[i + 1] == '}') {
                    push_tok(p, TK_BLOCK_END, i, s + i, 2, NULL);
                    size_t j = i + 2;
                    if (j < n && s[j] == '\n') j++; /* trim_blocks */
                    *line_starting = s[j - 1] == '\n';
                    return j;
                }
            } else {
                if (n - i >= 3 && s[i] == '-' && s[i + 1] == '}' && s[i + 2] == '}') {
                    push_tok(p, TK_VAR_END, i, s + i, 3, NULL);
                    size_t j = skip_space(s, n, i + 3);
                    *line_starting = j > i + 3 ? s[j - 1] == '\n' : 0;
                    return j;
                }
                if (n - i >= 2 && s[i] == '}' && s[i + 1] == '}') {
                    push_tok(p, TK_VAR_END, i, s + i, 2, NULL);
                    *line_starting = 0;
                    return i + 2;
                }
            }
        }
        char c = s[i];
        if (is_digit(c)) {
            size_t j = scan_digits(s, n, i);
            int is_float = 0;
            size_t fe = j;
            if (fe + 1 < n && s[fe] == '.' && is_digit(s[fe + 1])) {
                fe = scan_digits(s, n, fe + 1);
                is_float = 1;
            }
            if (fe < n && (s[fe] == 'e' || s[fe] == 'E')) {
                size_t k = fe + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && is_digit(s[k])) {
                    fe = scan_digits(s, n, k);
                    is_float = 1;
                }
            }
            if (!is_float && j - i > 1 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'o' || s[i + 1] == 'b'))
                perr_at(p, i, "hexadecimal/octal/binary literals are not supported");
            if (!is_float && fe < n && (s[fe] == 'x' || s[fe] == 'o' || s[fe] == 'b' || s[fe] == 'X' ||
                                        s[fe] == 'O' || s[fe] == 'B') && j == i + 1 && s[i] == '0')
                perr_at(p, i, "hexadecimal/octal/binary literals are not supported");
            push_tok(p, is_float ? TK_FLOAT : TK_INT, i, s + i, fe - i, make_number(p, i, fe, is_float));
            i = fe;
            continue;
        }
        if (is_name_start(c)) {
            size_t j = i;
            while (j < n && is_name_char(s[j])) j++;
            push_tok(p, TK_NAME, i, s + i, j - i, NULL);
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < n) j++;
                j++;
            }
            if (j >= n) perr_at(p, i, "unterminated string literal");
            push_tok(p, TK_STRING, i, s + i, j + 1 - i, lex_string(p, i + 1, j));
            i = j + 1;
            continue;
        }
        static const char *ops2[] = {"//", "**", "==", "!=", ">=", "<="};
        size_t oplen = 0;
        for (int k = 0; k < 6; k++)
            if (n - i >= 2 && s[i] == ops2[k][0] && s[i + 1] == ops2[k][1]) oplen = 2;
        if (!oplen && strchr("+-/*%~[](){}><=.:|,;", c) && c) oplen = 1;
        if (!oplen) perr_at(p, i, "unexpected character '%c' in tag", c);
        if (oplen == 1) {
            if (c == '(' || c == '[' || c == '{') {
                if (depth >= (int)sizeof stack) perr_at(p, i, "brackets nested too deeply");
                stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (c == ')' || c == ']' || c == '}') {
                if (!depth) perr_at(p, i, "unexpected '%c'", c);
                if (stack[depth - 1] != c) perr_at(p, i, "unexpected '%c', expected '%c'", c, stack[depth - 1]);
                depth--;
            }
        }
        push_tok(p, TK_OP, i, s + i, oplen, NULL);
        i += oplen;
    }
}

/* Applies the whitespace rules for text before a tag: `-` strips all trailing whitespace;
 * otherwise lstrip_blocks removes spaces/tabs between the line start and a block or
 * comment tag. Returns the end of the text to keep. */
static size_t text_end_before_tag(const char *s, size_t start, size_t end, char kind, char sign, int line_starting) {
    if (sign == '-') return rstrip_end(s, start, end);
    if (sign == '+' || kind == '{') return end;
    size_t l_pos = start;
    int found_nl = 0;
    for (size_t k = end; k > start; k--)
        if (s[k - 1] == '\n') { l_pos = k; found_nl = 1; break; }
    if ((found_nl || line_starting) && all_space(s, l_pos, end)) return l_pos;
    return end;
}

/* Matches `{%[-+]? raw [-]?%}` at i (i points at '{'); returns index after it or 0. */
static size_t match_raw_begin(const char *s, size_t n, size_t i) {
    size_t j = i + 2;
    if (j < n && (s[j] == '-' || s[j] == '+')) j++;
    j = skip_space(s, n, j);
    if (n - j < 3 || memcmp(s + j, "raw", 3) != 0) return 0;
    j += 3;
    if (j < n && is_name_char(s[j])) return 0;
    j = skip_space(s, n, j);
    if (n - j >= 3 && s[j] == '-' && s[j + 1] == '%' && s[j + 2] == '}') return skip_space(s, n, j + 3);
    if (n - j >= 2 && s[j] == '%' && s[j + 1] == '}') return j + 2;
    return 0;
}

static void lex_all(parser *p) {
    const char *s = p->s;
    size_t n = p->n, pos = 0;
    int line_starting = 1;
    while (pos < n) {
        size_t i = pos;
        while (i + 1 < n && !(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#'))) i++;
        if (i + 1 >= n) {
            push_tok(p, TK_DATA, pos, s + pos, n - pos, NULL);
            break;
        }
        char kind = s[i + 1];
        size_t after = i + 2;
        char sign = 0;
        if (after < n && (s[after] == '-' || s[after] == '+')) sign = s[after++];
        size_t raw_end = kind == '%' ? match_raw_begin(s, n, i) : 0;
        size_t te = text_end_before_tag(s, pos, i, kind, sign, line_starting);
        if (te > pos) push_tok(p, TK_DATA, pos, s + pos, te - pos, NULL);
        if (kind == '#') {
            size_t j = after;
            for (; j < n; j++) {
                if (n - j >= 3 && (s[j] == '+' || s[j] == '-') && s[j + 1] == '#' && s[j + 2] == '}') break;
                if (n - j >= 2 && s[j] == '#' && s[j + 1] == '}') break;
            }
            if (j >= n) perr_at(p, i, "missing end of comment tag");
            if (s[j] == '+') pos = j + 3;
            else if (s[j] == '-') pos = skip_space(s, n, j + 3);
            else {
                pos = j + 2;
                if (pos < n && s[pos] == '\n') pos++;
            }
            line_starting = s[pos - 1] == '\n';
            continue;
        }
        if (raw_end) {
            /* body runs to {%[-+]? endraw [-+]?%}; its text gets the same strip rules */
            size_t j = raw_end, body_end = 0, stop = 0;
            char esign = 0;
            for (; j + 1 < n; j++) {
                if (s[j] != '{' || s[j + 1] != '%') continue;
                size_t k = j + 2;
                char sg = 0;
                if (k < n && (s[k] == '-' || s[k] == '+')) sg = s[k++];
                k = skip_space(s, n, k);
                if (n - k < 6 || memcmp(s + k, "endraw", 6) != 0) continue;
                k = skip_space(s, n, k + 6);
                if (n - k >= 3 && s[k] == '+' && s[k + 1] == '%' && s[k + 2] == '}') stop = k + 3;
                else if (n - k >= 3 && s[k] == '-' && s[k + 1] == '%' && s[k + 2] == '}') stop = skip_space(s, n, k + 3);
                else if (n - k >= 2 && s[k] == '%' && s[k + 1] == '}') {
                    stop = k + 2;
                    if (stop < n && s[stop] == '\n') stop++;
                } else continue;
                body_end = j;
                esign = sg;
                break;
            }
            if (!stop) perr_at(p, i, "missing end of raw directive");
            int ls = s[raw_end - 1] == '\n';
            size_t be = text_end_before_tag(s, raw_end, body_end, '%', esign, ls);
            if (be > raw_end) push_tok(p, TK_DATA, raw_end, s + raw_end, be - raw_end, NULL);
            pos = stop;
            line_starting = s[pos - 1] == '\n';
            continue;
        }
        push_tok(p, kind == '{' ? TK_VAR_BEGIN : TK_BLOCK_BEGIN, i, s + i, after - i, NULL);
        pos = lex_tag(p, after, kind == '%', &line_starting);
    }
    push_tok(p, TK_EOF, n, s + n, 0, NULL);
}

/* ================================================================== PARSER */

#define MAX_EXPR_DEPTH 200

static token *cur(parser *p) { return &p->toks[p->cur]; }
static token *peek(parser *p, size_t k) {
    size_t i = p->cur + k;
    return &p->toks[i < p->ntoks ? i : p->ntoks - 1];
}
static void adv(parser *p) {
    if (p->cur + 1 < p->ntoks) p->cur++;
}
static int tok_is(token *t, int type, const char *text) {
    if (t->type != type) return 0;
    return !text || (strlen(text) == t->n && memcmp(t->p, text, t->n) == 0);
}
static int is_op(parser *p, const char *op) { return tok_is(cur(p), TK_OP, op); }
static int is_name(parser *p, const char *nm) { return tok_is(cur(p), TK_NAME, nm); }

static const char *tok_desc(token *t, char *buf, size_t n) {
    switch (t->type) {
    case TK_EOF: return "end of template";
    case TK_VAR_END: return "end of print statement";
    case TK_BLOCK_END: return "end of statement block";
    case TK_DATA: return "template data";
    default: snprintf(buf, n, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p); return buf;
    }
}

static void perr_unexpected(parser *p, const char *expected) {
    char b[64];
    perr_at(p, cur(p)->pos, "unexpected %s, expected %s", tok_desc(cur(p), b, sizeof b), expected);
}

static void expect_op(parser *p, const char *op) {
    if (!is_op(p, op)) {
        char e[16];
        snprintf(e, sizeof e, "'%s'", op);
        perr_unexpected(p, e);
    }
    adv(p);
}
static void expect_type(parser *p, int type, const char *what) {
    if (cur(p)->type != type) perr_unexpected(p, what);
    adv(p);
}

static char *pstrdup(parser *p, const char *s, size_t n) {
    char *r = palloc(p, n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

static node *new_node(parser *p, int type, size_t pos) {
    node *n = palloc(p, sizeof(node));
    n->type = type;
    n->pos = pos;
    return n;
}

/* Growable child lists while parsing. */
typedef struct {
    node **v;
    char **kw;
    int *ops;
    size_t n, cap;
} nodelist;

static void nl_push(parser *p, nodelist *l, node *x, char *kw, int op) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 4;
        node **nv = palloc(p, nc * sizeof(node *));
        char **nk = palloc(p, nc * sizeof(char *));
        int *no = palloc(p, nc * sizeof(int));
        if (l->n) {
            memcpy(nv, l->v, l->n * sizeof(node *));
            memcpy(nk, l->kw, l->n * sizeof(char *));
            memcpy(no, l->ops, l->n * sizeof(int));
        }
        l->v = nv;
        l->kw = nk;
        l->ops = no;
        l->cap = nc;
    }
    l->v[l->n] = x;
    l->kw[l->n] = kw;
    l->ops[l->n] = op;
    l->n++;
}
static void nl_attach(node *n, nodelist *l) {
    n->kids = l->v;
    n->kwnames = l->kw;
    n->ops = l->ops;
    n->nkids = l->n;
}

static node *parse_expression(parser *p, int with_condexpr);
static node *parse_or(parser *p);
static node *parse_unary(parser *p, int with_filter);
static node *parse_primary(parser *p);
static node *parse_postfix(parser *p, node *n);

static void enter(parser *p) {
    if (++p->expr_depth > MAX_EXPR_DEPTH) perr_at(p, cur(p)->pos, "expression nested too deeply");
}
static void leave(parser *p) { p->expr_depth--; }

static int is_tuple_end(parser *p, int in_for_target) {
    token *t = cur(p);
    if (t->type == TK_VAR_END || t->type == TK_BLOCK_END || tok_is(t, TK_OP, ")")) return 1;
    if (in_for_target && tok_is(t, TK_NAME, "in")) return 1;
    return 0;
}

/* mode: 0 full expressions, 1 no conditional expressions (for/if heads) */
static node *parse_tuple(parser *p, int with_condexpr, int explicit_parens) {
    size_t pos = cur(p)->pos;
    nodelist l = {0};
    int is_tuple = 0;
    for (;;) {
        if (l.n) expect_op(p, ",");
        if (is_tuple_end(p, 0)) break;
        nl_push(p, &l, with_condexpr ? parse_expression(p, 1) : parse_or(p), NULL, 0);
        if (is_op(p, ",")) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (l.n) return l.v[0];
        if (!explicit_parens) perr_unexpected(p, "an expression");
    }
    node *n = new_node(p, E_TUPLE, pos);
    nl_attach(n, &l);
    return n;
}

static node *parse_expression(parser *p, int with_condexpr) {
    enter(p);
    node *e = parse_or(p);
    while (with_condexpr && is_name(p, "if")) {
        size_t pos = cur(p)->pos;
        adv(p);
        node *c = new_node(p, E_COND, pos);
        c->a = e;
        c->b = parse_or(p);
        if (is_name(p, "else")) {
            adv(p);
            c->c = parse_expression(p, 1);
        }
        e = c;
    }
    leave(p);
    return e;
}

static node *parse_not(parser *p);
static node *parse_compare(parser *p);
static node *parse_math1(parser *p);

static node *parse_and(parser *p) {
    node *l = parse_not(p);
    while (is_name(p, "and")) {
        node *n = new_node(p, E_AND, cur(p)->pos);
        adv(p);
        n->a = l;
        n->b = parse_not(p);
        l = n;
    }
    return l;
}

static node *parse_or(parser *p) {
    enter(p);
    node *l = parse_and(p);
    while (is_name(p, "or")) {
        node *n = new_node(p, E_OR, cur(p)->pos);
        adv(p);
        n->a = l;
        n->b = parse_and(p);
        l = n;
    }
    leave(p);
    return l;
}

static node *parse_not(parser *p) {
    if (is_name(p, "not")) {
        node *n = new_node(p, E_NOT, cur(p)->pos);
        adv(p);
        enter(p);
        n->a = parse_not(p);
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static node *parse_compare(parser *p) {
    size_t pos = cur(p)->pos;
    node *first = parse_math1(p);
    nodelist l = {0};
    for (;;) {
        int op = 0;
        token *t = cur(p);
        if (t->type == TK_OP) {
            if (tok_is(t, TK_OP, "==")) op = OP_EQ;
            else if (tok_is(t, TK_OP, "!=")) op = OP_NE;
            else if (tok_is(t, TK_OP, "<")) op = OP_LT;
            else if (tok_is(t, TK_OP, "<=")) op = OP_LE;
            else if (tok_is(t, TK_OP, ">")) op = OP_GT;
            else if (tok_is(t, TK_OP, ">=")) op = OP_GE;
            if (op) adv(p);
        } else if (tok_is(t, TK_NAME, "in")) {
            op = OP_IN;
            adv(p);
        } else if (tok_is(t, TK_NAME, "not") && tok_is(peek(p, 1), TK_NAME, "in")) {
            op = OP_NOTIN;
            adv(p);
            adv(p);
        }
        if (!op) break;
        nl_push(p, &l, parse_math1(p), NULL, op);
    }
    if (!l.n) return first;
    node *n = new_node(p, E_COMPARE, pos);
    n->a = first;
    nl_attach(n, &l);
    return n;
}

static node *binop(parser *p, int op, size_t pos, node *a, node *b) {
    node *n = new_node(p, E_BINOP, pos);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *p) {
    node *l = parse_unary(p, 1);
    while (is_op(p, "**")) {
        size_t pos = cur(p)->pos;
        adv(p);
        l = binop(p, OP_POW, pos, l, parse_unary(p, 1));
    }
    return l;
}

static node *parse_math2(parser *p) {
    node *l = parse_pow(p);
    for (;;) {
        int op = is_op(p, "*") ? OP_MUL : is_op(p, "/") ? OP_DIV : is_op(p, "//") ? OP_FLOORDIV
               : is_op(p, "%") ? OP_MOD : 0;
        if (!op) return l;
        size_t pos = cur(p)->pos;
        adv(p);
        l = binop(p, op, pos, l, parse_pow(p));
    }
}

static node *parse_concat(parser *p) {
    node *l = parse_math2(p);
    while (is_op(p, "~")) {
        size_t pos = cur(p)->pos;
        adv(p);
        l = binop(p, OP_CONCAT, pos, l, parse_math2(p));
    }
    return l;
}

static node *parse_math1(parser *p) {
    enter(p);
    node *l = parse_concat(p);
    for (;;) {
        int op = is_op(p, "+") ? OP_ADD : is_op(p, "-") ? OP_SUB : 0;
        if (!op) break;
        size_t pos = cur(p)->pos;
        adv(p);
        l = binop(p, op, pos, l, parse_concat(p));
    }
    leave(p);
    return l;
}

/* (args) of a call, filter or test: positional and keyword arguments. */
static void parse_call_args(parser *p, nodelist *l) {
    expect_op(p, "(");
    while (!is_op(p, ")")) {
        if (l->n) {
            expect_op(p, ",");
            if (is_op(p, ")")) break;
        }
        if (is_op(p, "*") || is_op(p, "**")) perr_at(p, cur(p)->pos, "*args / **kwargs in calls are not supported");
        if (cur(p)->type == TK_NAME && tok_is(peek(p, 1), TK_OP, "=")) {
            char *kw = pstrdup(p, cur(p)->p, cur(p)->n);
            adv(p);
            adv(p);
            nl_push(p, l, parse_expression(p, 1), kw, 0);
        } else {
            for (size_t i = 0; i < l->n; i++)
                if (l->kw[i]) perr_at(p, cur(p)->pos, "positional argument follows keyword argument");
            nl_push(p, l, parse_expression(p, 1), NULL, 0);
        }
    }
    expect_op(p, ")");
}

static const char *KNOWN_FILTERS[] = {
    "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent", "int",
    "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
    "reverse", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
    "upper", NULL};
static const char *KNOWN_TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "float", "ge",
    "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none",
    "number", "odd", "sameas", "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">",
    ">=", NULL};

static int in_list(const char **list, const char *s) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], s)) return 1;
    return 0;
}

static node *parse_filter(parser *p, node *operand) {
    size_t pos = cur(p)->pos;
    adv(p); /* '|' */
    if (cur(p)->type != TK_NAME) perr_unexpected(p, "a filter name");
    token *nt = cur(p);
    char *name = pstrdup(p, nt->p, nt->n);
    if (!in_list(KNOWN_FILTERS, name)) perr_at(p, nt->pos, "unsupported filter '%s'", name);
    adv(p);
    node *n = new_node(p, E_FILTER, pos);
    n->a = operand;
    n->str = name;
    nodelist l = {0};
    if (is_op(p, "(")) parse_call_args(p, &l);
    nl_attach(n, &l);
    return n;
}

static node *parse_test(parser *p, node *operand) {
    size_t pos = cur(p)->pos;
    adv(p); /* 'is' */
    node *n = new_node(p, E_TEST, pos);
    n->a = operand;
    if (is_name(p, "not")) {
        n->op = 1;
        adv(p);
    }
    if (cur(p)->type != TK_NAME) perr_unexpected(p, "a test name");
    token *nt = cur(p);
    char *name = pstrdup(p, nt->p, nt->n);
    if (!in_list(KNOWN_TESTS, name)) perr_at(p, nt->pos, "unsupported test '%s'", name);
    adv(p);
    n->str = name;
    nodelist l = {0};
    token *t = cur(p);
    if (is_op(p, "(")) {
        parse_call_args(p, &l);
    } else if ((t->type == TK_NAME || t->type == TK_STRING || t->type == TK_INT || t->type == TK_FLOAT ||
                tok_is(t, TK_OP, "[") || tok_is(t, TK_OP, "{")) &&
               !tok_is(t, TK_NAME, "else") && !tok_is(t, TK_NAME, "or") && !tok_is(t, TK_NAME, "and")) {
        if (tok_is(t, TK_NAME, "is")) perr_at(p, t->pos, "you cannot chain multiple tests with 'is'");
        node *arg = parse_postfix(p, parse_primary(p));
        nl_push(p, &l, arg, NULL, 0);
    }
    nl_attach(n, &l);
    return n;
}

static node *parse_filter_expr(parser *p, node *n) {
    for (;;) {
        if (is_op(p, "|")) n = parse_filter(p, n);
        else if (is_name(p, "is")) n = parse_test(p, n);
        else if (is_op(p, "(")) {
            node *c = new_node(p, E_CALL, cur(p)->pos);
            c->a = n;
            nodelist l = {0};
            parse_call_args(p, &l);
            nl_attach(c, &l);
            n = c;
        } else return n;
    }
}

static node *parse_unary(parser *p, int with_filter) {
    enter(p);
    node *n;
    if (is_op(p, "-") || is_op(p, "+")) {
        n = new_node(p, is_op(p, "-") ? E_NEG : E_POS, cur(p)->pos);
        adv(p);
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    leave(p);
    return n;
}

static node *parse_subscribed(parser *p) {
    size_t pos = cur(p)->pos;
    node *parts[3] = {NULL, NULL, NULL};
    if (is_op(p, ":")) {
        adv(p);
    } else {
        node *e = parse_expression(p, 1);
        if (!is_op(p, ":")) return e;
        parts[0] = e;
        adv(p);
    }
    if (!is_op(p, "]") && !is_op(p, ",") && !is_op(p, ":")) parts[1] = parse_expression(p, 1);
    if (is_op(p, ":")) {
        adv(p);
        if (!is_op(p, "]") && !is_op(p, ",")) parts[2] = parse_expression(p, 1);
    }
    node *s = new_node(p, E_SLICE, pos);
    s->b = parts[0];
    s->c = parts[1];
    s->d = parts[2];
    return s;
}

static node *parse_postfix(parser *p, node *n) {
    for (;;) {
        if (is_op(p, ".")) {
            size_t pos = cur(p)->pos;
            adv(p);
            token *t = cur(p);
            if (t->type == TK_NAME) {
                node *g = new_node(p, E_GETATTR, pos);
                g->a = n;
                g->str = pstrdup(p, t->p, t->n);
                adv(p);
                n = g;
            } else if (t->type == TK_INT) {
                node *g = new_node(p, E_GETITEM, pos);
                g->a = n;
                g->b = new_node(p, E_LIT, t->pos);
                g->b->lit = t->lit;
                adv(p);
                n = g;
            } else perr_unexpected(p, "a name or number after '.'");
        } else if (is_op(p, "[")) {
            size_t pos = cur(p)->pos;
            adv(p);
            node *sub = parse_subscribed(p);
            if (is_op(p, ",")) { /* x[a, b] subscripts with a tuple */
                nodelist l = {0};
                nl_push(p, &l, sub, NULL, 0);
                while (is_op(p, ",")) {
                    adv(p);
                    if (is_op(p, "]")) break;
                    nl_push(p, &l, parse_subscribed(p), NULL, 0);
                }
                for (size_t i = 0; i < l.n; i++)
                    if (l.v[i]->type == E_SLICE && !l.v[i]->a) perr_at(p, l.v[i]->pos, "slices inside tuple subscripts are not supported");
                sub = new_node(p, E_TUPLE, pos);
                nl_attach(sub, &l);
            }
            expect_op(p, "]");
            if (sub->type == E_SLICE && !sub->a) {
                sub->a = n;
                n = sub;
            } else {
                node *g = new_node(p, E_GETITEM, pos);
                g->a = n;
                g->b = sub;
                n = g;
            }
        } else if (is_op(p, "(")) {
            node *c = new_node(p, E_CALL, cur(p)->pos);
            c->a = n;
            nodelist l = {0};
            parse_call_args(p, &l);
            nl_attach(c, &l);
            n = c;
        } else return n;
    }
}

static node *parse_primary(parser *p) {
    token *t = cur(p);
    node *n;
    enter(p);
    if (t->type == TK_NAME) {
        adv(p);
        n = new_node(p, E_LIT, t->pos);
        if (tok_is(t, TK_NAME, "true") || tok_is(t, TK_NAME, "True")) n->lit = VTRUE;
        else if (tok_is(t, TK_NAME, "false") || tok_is(t, TK_NAME, "False")) n->lit = VFALSE;
        else if (tok_is(t, TK_NAME, "none") || tok_is(t, TK_NAME, "None")) n->lit = VNONE;
        else {
            n->type = E_NAME;
            n->str = pstrdup(p, t->p, t->n);
        }
    } else if (t->type == TK_STRING) {
        n = new_node(p, E_LIT, t->pos);
        n->lit = t->lit;
        adv(p);
        if (cur(p)->type == TK_STRING) { /* adjacent literals concatenate */
            size_t total = n->lit->u.s.n;
            for (size_t k = p->cur; p->toks[k].type == TK_STRING; k++) total += p->toks[k].lit->u.s.n;
            char *buf = palloc(p, total + 1);
            size_t off = n->lit->u.s.n;
            memcpy(buf, n->lit->u.s.p, off);
            while (cur(p)->type == TK_STRING) {
                memcpy(buf + off, cur(p)->lit->u.s.p, cur(p)->lit->u.s.n);
                off += cur(p)->lit->u.s.n;
                adv(p);
            }
            val *v = palloc(p, sizeof(val));
            v->t = V_STR;
            v->u.s.p = buf;
            v->u.s.n = total;
            n->lit = v;
        }
    } else if (t->type == TK_INT || t->type == TK_FLOAT) {
        n = new_node(p, E_LIT, t->pos);
        n->lit = t->lit;
        adv(p);
    } else if (tok_is(t, TK_OP, "(")) {
        adv(p);
        n = parse_tuple(p, 1, 1);
        expect_op(p, ")");
    } else if (tok_is(t, TK_OP, "[")) {
        adv(p);
        n = new_node(p, E_LIST, t->pos);
        nodelist l = {0};
        while (!is_op(p, "]")) {
            if (l.n) expect_op(p, ",");
            if (is_op(p, "]")) break;
            nl_push(p, &l, parse_expression(p, 1), NULL, 0);
        }
        expect_op(p, "]");
        nl_attach(n, &l);
    } else if (tok_is(t, TK_OP, "{")) {
        adv(p);
        n = new_node(p, E_DICT, t->pos);
        nodelist l = {0};
        while (!is_op(p, "}")) {
            if (l.n) expect_op(p, ",");
            if (is_op(p, "}")) break;
            nl_push(p, &l, parse_expression(p, 1), NULL, 0);
            expect_op(p, ":");
            nl_push(p, &l, parse_expression(p, 1), NULL, 0);
        }
        expect_op(p, "}");
        nl_attach(n, &l);
    } else {
        perr_unexpected(p, "an expression");
        n = NULL;
    }
    leave(p);
    return n;
}

/* ---- statements */

static node *parse_body(parser *p, const char **end_names, const char **which);

/* Assignment target: `a`, `a, b`, `(a, b)`, or (for set) `ns.attr` stored in n->a/str. */
static void parse_target(parser *p, node *stmt, int allow_ns, int in_for) {
    int paren = 0;
    if (is_op(p, "(")) {
        paren = 1;
        adv(p);
    }
    char *names[64];
    size_t nn = 0;
    for (;;) {
        if (cur(p)->type != TK_NAME) perr_unexpected(p, "a variable name");
        token *t = cur(p);
        static const char *reserved[] = {"true", "false", "none", "True", "False", "None", "in", "not",
                                         "and", "or", "is", "if", "else", NULL};
        if (in_list(reserved, pstrdup(p, t->p, t->n))) perr_at(p, t->pos, "cannot assign to '%.*s'", (int)t->n, t->p);
        if (nn >= 64) perr_at(p, t->pos, "too many assignment targets");
        names[nn++] = pstrdup(p, t->p, t->n);
        adv(p);
        if (allow_ns && nn == 1 && !paren && is_op(p, ".")) {
            adv(p);
            if (cur(p)->type != TK_NAME) perr_unexpected(p, "an attribute name");
            stmt->str = pstrdup(p, cur(p)->p, cur(p)->n); /* namespace attribute */
            adv(p);
            break;
        }
        if (!is_op(p, ",")) break;
        adv(p);
        if (paren && is_op(p, ")")) break;
        if (in_for && is_name(p, "in")) break;
    }
    if (paren) expect_op(p, ")");
    stmt->names = palloc(p, nn * sizeof(char *));
    memcpy(stmt->names, names, nn * sizeof(char *));
    stmt->nnames = nn;
}

static void expect_block_end(parser *p) { expect_type(p, TK_BLOCK_END, "end of statement block ('%}')"); }

static node *parse_statement(parser *p) {
    token *t = cur(p);
    size_t pos = t->pos;
    if (t->type != TK_NAME) perr_unexpected(p, "a statement name");
    if (tok_is(t, TK_NAME, "if")) {
        adv(p);
        node *n = new_node(p, N_IF, pos);
        n->a = parse_tuple(p, 0, 0);
        expect_block_end(p);
        static const char *ends[] = {"elif", "else", "endif", NULL};
        const char *which;
        n->b = parse_body(p, ends, &which);
        node *tail = n;
        while (!strcmp(which, "elif")) {
            node *e = new_node(p, N_IF, cur(p)->pos);
            adv(p);
            e->a = parse_tuple(p, 0, 0);
            expect_block_end(p);
            e->b = parse_body(p, ends, &which);
            tail->c = e;
            tail = e;
        }
        if (!strcmp(which, "else")) {
            adv(p);
            expect_block_end(p);
            static const char *ends2[] = {"endif", NULL};
            tail->c = parse_body(p, ends2, &which);
        }
        adv(p); /* endif */
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "for")) {
        adv(p);
        node *n = new_node(p, N_FOR, pos);
        parse_target(p, n, 0, 1);
        if (!is_name(p, "in")) perr_unexpected(p, "'in'");
        adv(p);
        /* the iterable: a tuple without conditional expressions, so `if` starts a filter */
        size_t ipos = cur(p)->pos;
        nodelist l = {0};
        int is_tuple = 0;
        for (;;) {
            if (l.n) expect_op(p, ",");
            if (is_tuple_end(p, 0) || is_name(p, "if") || is_name(p, "recursive")) break;
            nl_push(p, &l, parse_or(p), NULL, 0);
            if (is_op(p, ",")) is_tuple = 1;
            else break;
        }
        if (!l.n) perr_unexpected(p, "an expression");
        if (is_tuple) {
            n->a = new_node(p, E_TUPLE, ipos);
            nl_attach(n->a, &l);
        } else n->a = l.v[0];
        if (is_name(p, "if")) {
            adv(p);
            n->d = parse_expression(p, 1);
        }
        if (is_name(p, "recursive")) perr_at(p, cur(p)->pos, "recursive for loops are not supported");
        expect_block_end(p);
        static const char *ends[] = {"endfor", "else", NULL};
        const char *which;
        p->loop_depth++;
        n->b = parse_body(p, ends, &which);
        p->loop_depth--;
        if (!strcmp(which, "else")) {
            adv(p);
            expect_block_end(p);
            static const char *ends2[] = {"endfor", NULL};
            n->c = parse_body(p, ends2, &which);
        }
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "set")) {
        adv(p);
        node *n = new_node(p, N_SET, pos);
        parse_target(p, n, 1, 0);
        if (is_op(p, "=")) {
            adv(p);
            n->b = parse_tuple(p, 1, 0);
            expect_block_end(p);
            return n;
        }
        if (n->str || n->nnames != 1) perr_unexpected(p, "'='");
        if (is_op(p, "|")) perr_at(p, cur(p)->pos, "filters on block assignments are not supported");
        expect_block_end(p);
        n->type = N_SETBLOCK;
        static const char *ends[] = {"endset", NULL};
        const char *which;
        int saved = p->loop_depth;
        p->loop_depth = 0;
        n->b = parse_body(p, ends, &which);
        p->loop_depth = saved;
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "macro")) {
        adv(p);
        node *n = new_node(p, N_MACRO, pos);
        if (cur(p)->type != TK_NAME) perr_unexpected(p, "a macro name");
        n->str = pstrdup(p, cur(p)->p, cur(p)->n);
        adv(p);
        expect_op(p, "(");
        char *names[64];
        nodelist defs = {0};
        size_t nn = 0;
        while (!is_op(p, ")")) {
            if (nn) expect_op(p, ",");
            if (is_op(p, ")")) break;
            if (cur(p)->type != TK_NAME) perr_unexpected(p, "a parameter name");
            if (nn >= 64) perr_at(p, cur(p)->pos, "too many macro parameters");
            names[nn++] = pstrdup(p, cur(p)->p, cur(p)->n);
            adv(p);
            if (is_op(p, "=")) {
                adv(p);
                nl_push(p, &defs, parse_expression(p, 1), NULL, 0);
            } else {
                if (defs.n) perr_at(p, cur(p)->pos, "parameter without a default follows one with a default");
                nl_push(p, &defs, NULL, NULL, 0);
            }
        }
        expect_op(p, ")");
        expect_block_end(p);
        n->names = palloc(p, (nn ? nn : 1) * sizeof(char *));
        memcpy(n->names, names, nn * sizeof(char *));
        n->nnames = nn;
        nl_attach(n, &defs);
        static const char *ends[] = {"endmacro", NULL};
        const char *which;
        int saved = p->loop_depth;
        p->loop_depth = 0;
        n->b = parse_body(p, ends, &which);
        p->loop_depth = saved;
        adv(p);
        if (cur(p)->type == TK_NAME) adv(p); /* {% endmacro name %} */
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "break") || tok_is(t, TK_NAME, "continue")) {
        if (!p->loop_depth) perr_at(p, pos, "'%.*s' outside of a loop", (int)t->n, t->p);
        node *n = new_node(p, tok_is(t, TK_NAME, "break") ? N_BREAK : N_CONTINUE, pos);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "generation")) {
        /* transformers' {% generation %} marks assistant text; it renders its body as is */
        adv(p);
        expect_block_end(p);
        static const char *ends[] = {"endgeneration", NULL};
        const char *which;
        node *n = parse_body(p, ends, &which);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "with")) {
        adv(p);
        node *n = new_node(p, N_WITH, pos);
        nodelist l = {0};
        char *names[64];
        size_t nn = 0;
        while (cur(p)->type != TK_BLOCK_END) {
            if (nn) expect_op(p, ",");
            if (cur(p)->type != TK_NAME) perr_unexpected(p, "a variable name");
            if (nn >= 64) perr_at(p, cur(p)->pos, "too many assignments");
            names[nn++] = pstrdup(p, cur(p)->p, cur(p)->n);
            adv(p);
            expect_op(p, "=");
            nl_push(p, &l, parse_expression(p, 1), NULL, 0);
        }
        expect_block_end(p);
        n->names = palloc(p, (nn ? nn : 1) * sizeof(char *));
        memcpy(n->names, names, nn * sizeof(char *));
        n->nnames = nn;
        nl_attach(n, &l);
        static const char *ends[] = {"endwith", NULL};
        const char *which;
        n->b = parse_body(p, ends, &which);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (tok_is(t, TK_NAME, "filter")) {
        adv(p);
        node *n = new_node(p, N_FILTERBLOCK, pos);
        /* parse `name(args)|name2` as filters applied to a placeholder operand */
        if (cur(p)->type != TK_NAME) perr_unexpected(p, "a filter name");
        p->cur--; /* reuse parse_filter, which skips one token before the name */
        node *f = parse_filter(p, NULL);
        while (is_op(p, "|")) f = parse_filter(p, f);
        n->a = f;
        expect_block_end(p);
        static const char *ends[] = {"endfilter", NULL};
        const char *which;
        n->b = parse_body(p, ends, &which);
        adv(p);
        expect_block_end(p);
        return n;
    }
    perr_at(p, pos, "unsupported or unknown tag '%.*s'", (int)t->n, t->p);
    return NULL;
}

/* Parses statements until EOF (end_names NULL) or a block whose first name is in
 * end_names; then the parser stands on that name and *which is set. */
static node *parse_body(parser *p, const char **end_names, const char **which) {
    node *body = new_node(p, N_BODY, cur(p)->pos);
    nodelist l = {0};
    if (++p->macro_depth > MAX_EXPR_DEPTH) perr_at(p, cur(p)->pos, "blocks nested too deeply");
    for (;;) {
        token *t = cur(p);
        if (t->type == TK_EOF) {
            if (end_names) {
                char msg[128] = "";
                size_t k = 0;
                for (int i = 0; end_names[i]; i++)
                    k += (size_t)snprintf(msg + k, sizeof msg - k, "%s'%s'", i ? " or " : "", end_names[i]);
                perr_at(p, t->pos, "unexpected end of template, expected %s", msg);
            }
            break;
        }
        if (t->type == TK_DATA) {
            node *n = new_node(p, N_TEXT, t->pos);
            n->str = t->p;
            n->len = t->n;
            nl_push(p, &l, n, NULL, 0);
            adv(p);
        } else if (t->type == TK_VAR_BEGIN) {
            adv(p);
            node *n = new_node(p, N_OUTPUT, t->pos);
            n->a = parse_tuple(p, 1, 0);
            expect_type(p, TK_VAR_END, "end of print statement ('}}')");
            nl_push(p, &l, n, NULL, 0);
        } else if (t->type == TK_BLOCK_BEGIN) {
            adv(p);
            token *nt = cur(p);
            if (end_names && nt->type == TK_NAME) {
                int hit = 0;
                for (int i = 0; end_names[i]; i++)
                    if (tok_is(nt, TK_NAME, end_names[i])) {
                        *which = end_names[i];
                        hit = 1;
                    }
                if (hit) break;
            }
            if (nt->type == TK_NAME && nt->n > 3 && !memcmp(nt->p, "end", 3))
                perr_at(p, nt->pos, "unexpected '%.*s'", (int)nt->n, nt->p);
            if (nt->type == TK_NAME && (tok_is(nt, TK_NAME, "elif") || tok_is(nt, TK_NAME, "else")))
                perr_at(p, nt->pos, "unexpected '%.*s'", (int)nt->n, nt->p);
            nl_push(p, &l, parse_statement(p), NULL, 0);
        } else {
            perr_unexpected(p, "template data or a tag");
        }
    }
    p->macro_depth--;
    nl_attach(body, &l);
    return body;
}

void jinja_free(jinja_template *t) {
    if (!t) return;
    arena_free_all(&t->ar);
    free(t->src);
    free(t);
}

jinja_template *jinja_parse(const char *src, size_t len, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    jinja_template *volatile t = calloc(1, sizeof *t); /* volatile: read again after longjmp */
    if (!t) return NULL;
    t->ar.limit = (size_t)1 << 30;
    /* Jinja normalises \r\n and \r to \n and drops one trailing newline */
    t->src = malloc(len + 1);
    if (!t->src) { free(t); return NULL; }
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            t->src[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else t->src[k++] = src[i];
    }
    if (k && t->src[k - 1] == '\n') k--;
    t->src[k] = 0;
    t->len = k;
    parser *p = calloc(1, sizeof *p);
    if (!p) { jinja_free(t); return NULL; }
    p->t = t;
    p->s = t->src;
    p->n = t->len;
    p->err = err;
    p->errlen = errlen;
    if (setjmp(p->jb)) {
        free(p->toks);
        free(p);
        jinja_free(t);
        return NULL;
    }
    lex_all(p);
    t->root = parse_body(p, NULL, NULL);
    free(p->toks);
    free(p);
    return t;
}

/* ================================================================== EVALUATOR */

struct scope {
    scope *parent;
    const char **names;
    val **vals;
    size_t n, cap;
};

typedef struct {
    arena ar;
    jmp_buf jb;
    char *err;
    size_t errlen;
    const char *src;
    size_t srclen;
    long steps;
    int depth;
    scope *root;
} ctx;

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

#define MAX_STEPS 50000000L
#define MAX_CALL_DEPTH 40
#define MAX_RANGE 100000

static void rerr(ctx *c, size_t pos, const char *fmt, ...) {
    int line, col;
    fmt_linecol(c->src, c->srclen, pos, &line, &col);
    if (c->err && c->errlen) {
        int k = snprintf(c->err, c->errlen, "template error at line %d, column %d: ", line, col);
        if (k >= 0 && (size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    longjmp(c->jb, 1);
}

static void *ralloc(ctx *c, size_t n) {
    void *r = arena_alloc(&c->ar, n);
    if (!r) rerr(c, 0, "template rendering used too much memory");
    return r;
}

static void sb_add(ctx *c, sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *np = ralloc(c, nc);
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(ctx *c, sbuf *b, const char *s) { sb_add(c, b, s, strlen(s)); }

static val *new_val(ctx *c, int t) {
    val *v = ralloc(c, sizeof(val));
    memset(v, 0, sizeof *v);
    v->t = t;
    return v;
}
static val *mk_int(ctx *c, int64_t i) {
    val *v = new_val(c, V_INT);
    v->u.i = i;
    return v;
}
static val *mk_float(ctx *c, double f) {
    val *v = new_val(c, V_FLOAT);
    v->u.f = f;
    return v;
}
static val *mk_str(ctx *c, const char *s, size_t n) {
    val *v = new_val(c, V_STR);
    char *p = ralloc(c, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    v->u.s.p = p;
    v->u.s.n = n;
    return v;
}
static val *mk_str_nocopy(ctx *c, const char *s, size_t n) {
    val *v = new_val(c, V_STR);
    v->u.s.p = s;
    v->u.s.n = n;
    return v;
}
static val *mk_list(ctx *c, size_t n, int kind) {
    val *v = new_val(c, V_LIST);
    v->kind = kind;
    v->u.l.v = ralloc(c, (n ? n : 1) * sizeof(val *));
    v->u.l.n = n;
    return v;
}
static val *mk_undef(ctx *c, const char *fmt, ...) {
    val *v = new_val(c, V_UNDEF);
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    v->u.undef_msg = mk_str(c, buf, strlen(buf))->u.s.p;
    return v;
}
static val *mk_func(ctx *c, const char *name, val *self) {
    val *v = new_val(c, V_FUNC);
    v->u.fn.name = name;
    v->u.fn.self = self;
    return v;
}

static void dict_set(ctx *c, val *d, val *k, val *v);

static int is_num(const val *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num_f(const val *v) {
    return v->t == V_FLOAT ? v->u.f : v->t == V_INT ? (double)v->u.i : (double)v->u.b;
}
static int64_t num_i(const val *v) { return v->t == V_INT ? v->u.i : v->u.b; }

static const char *type_name(const val *v) {
    switch (v->t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: case V_BIGINT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v->kind == SEQ_TUPLE ? "tuple" : v->kind == SEQ_LIST ? "list" : "iterator";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    case V_LOOP: return "LoopContext";
    case V_FUNC: return "function";
    default: return "Macro";
    }
}

static void fail_undef(ctx *c, size_t pos, const val *v) {
    rerr(c, pos, "%s", v->u.undef_msg ? v->u.undef_msg : "value is undefined");
}

/* ---- Python semantics: truth, equality, ordering */

static int truthy(const val *v) {
    switch (v->t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_BIGINT: return 1;
    case V_FLOAT: return v->u.f != 0;
    case V_STR: return v->u.s.n != 0;
    case V_LIST: return v->u.l.n != 0;
    case V_DICT: return v->u.d.n != 0;
    default: return 1;
    }
}

static int py_eq(const val *a, const val *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t == V_FLOAT || b->t == V_FLOAT) return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: case V_BIGINT: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case V_LIST:
        if (a->kind != b->kind || a->u.l.n != b->u.l.n) return 0;
        for (size_t i = 0; i < a->u.l.n; i++)
            if (!py_eq(a->u.l.v[i], b->u.l.v[i])) return 0;
        return 1;
    case V_DICT:
        if (a->u.d.n != b->u.d.n) return 0;
        for (size_t i = 0; i < a->u.d.n; i++) {
            size_t j;
            for (j = 0; j < b->u.d.n; j++)
                if (py_eq(a->u.d.k[i], b->u.d.k[j])) break;
            if (j == b->u.d.n || !py_eq(a->u.d.v[i], b->u.d.v[j])) return 0;
        }
        return 1;
    default: return a == b;
    }
}

/* Returns <0, 0, >0; errors on types Python cannot order. */
static int py_cmp(ctx *c, size_t pos, const val *a, const val *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t == V_FLOAT || b->t == V_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, n); /* UTF-8 byte order is code point order */
        if (r) return r;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    if (a->t == V_LIST && b->t == V_LIST && a->kind == b->kind) {
        size_t n = a->u.l.n < b->u.l.n ? a->u.l.n : b->u.l.n;
        for (size_t i = 0; i < n; i++) {
            if (py_eq(a->u.l.v[i], b->u.l.v[i])) continue;
            return py_cmp(c, pos, a->u.l.v[i], b->u.l.v[i]);
        }
        return a->u.l.n < b->u.l.n ? -1 : a->u.l.n > b->u.l.n;
    }
    rerr(c, pos, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
    return 0;
}

/* ---- dicts */

static val *dict_get(const val *d, const val *k) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (py_eq(d->u.d.k[i], k)) return d->u.d.v[i];
    return NULL;
}
static val *dict_get_str(const val *d, const char *k) {
    size_t n = strlen(k);
    for (size_t i = 0; i < d->u.d.n; i++) {
        val *key = d->u.d.k[i];
        if (key->t == V_STR && key->u.s.n == n && !memcmp(key->u.s.p, k, n)) return d->u.d.v[i];
    }
    return NULL;
}
static void dict_set(ctx *c, val *d, val *k, val *v) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (py_eq(d->u.d.k[i], k)) {
            d->u.d.v[i] = v;
            return;
        }
    if (d->u.d.n == d->u.d.cap) {
        size_t nc = d->u.d.cap ? d->u.d.cap * 2 : 4;
        val **nk = ralloc(c, nc * sizeof(val *)), **nv = ralloc(c, nc * sizeof(val *));
        if (d->u.d.n) {
            memcpy(nk, d->u.d.k, d->u.d.n * sizeof(val *));
            memcpy(nv, d->u.d.v, d->u.d.n * sizeof(val *));
        }
        d->u.d.k = nk;
        d->u.d.v = nv;
        d->u.d.cap = nc;
    }
    d->u.d.k[d->u.d.n] = k;
    d->u.d.v[d->u.d.n] = v;
    d->u.d.n++;
}

/* ---- conversion to text: str() and repr() as Python prints them */

static void repr_str(ctx *c, sbuf *b, const char *s, size_t n) {
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    sb_add(c, b, &q, 1);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = utf8_next(s, n, &i);
        char tmp[16];
        if (cp == '\\') sb_puts(c, b, "\\\\");
        else if (cp == q) { tmp[0] = '\\'; tmp[1] = q; sb_add(c, b, tmp, 2); }
        else if (cp == '\n') sb_puts(c, b, "\\n");
        else if (cp == '\r') sb_puts(c, b, "\\r");
        else if (cp == '\t') sb_puts(c, b, "\\t");
        else if (cp < 0x20 || cp == 0x7f) { snprintf(tmp, sizeof tmp, "\\x%02x", cp); sb_puts(c, b, tmp); }
        else if (cp >= 0x80) {
            utf8proc_category_t cat = utf8proc_category(cp);
            int printable = !(cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                              cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO ||
                              cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_ZL ||
                              cat == UTF8PROC_CATEGORY_ZP || cat == UTF8PROC_CATEGORY_ZS);
            if (printable) sb_add(c, b, s + st, i - st);
            else {
                if (cp <= 0xff) snprintf(tmp, sizeof tmp, "\\x%02x", cp);
                else if (cp <= 0xffff) snprintf(tmp, sizeof tmp, "\\u%04x", cp);
                else snprintf(tmp, sizeof tmp, "\\U%08x", cp);
                sb_puts(c, b, tmp);
            }
        } else sb_add(c, b, s + st, i - st);
    }
    sb_add(c, b, &q, 1);
}

static void to_str_into(ctx *c, size_t pos, sbuf *b, const val *v, int repr);

static void repr_seq(ctx *c, size_t pos, sbuf *b, const val *v) {
    const char *open = "[", *close = "]";
    if (v->kind == SEQ_TUPLE) { open = "("; close = v->u.l.n == 1 ? ",)" : ")"; }
    else if (v->kind == SEQ_ITEMS) { open = "dict_items(["; close = "])"; }
    else if (v->kind == SEQ_KEYS) { open = "dict_keys(["; close = "])"; }
    else if (v->kind == SEQ_VALUES) { open = "dict_values(["; close = "])"; }
    else if (v->kind == SEQ_ITER) rerr(c, pos, "cannot print a generator/iterator object (convert it with |list)");
    sb_puts(c, b, open);
    for (size_t i = 0; i < v->u.l.n; i++) {
        if (i) sb_puts(c, b, ", ");
        to_str_into(c, pos, b, v->u.l.v[i], 1);
    }
    sb_puts(c, b, close);
}

static void repr_dict(ctx *c, size_t pos, sbuf *b, const val *v) {
    sb_puts(c, b, "{");
    for (size_t i = 0; i < v->u.d.n; i++) {
        if (i) sb_puts(c, b, ", ");
        to_str_into(c, pos, b, v->u.d.k[i], 1);
        sb_puts(c, b, ": ");
        to_str_into(c, pos, b, v->u.d.v[i], 1);
    }
    sb_puts(c, b, "}");
}

static void to_str_into(ctx *c, size_t pos, sbuf *b, const val *v, int repr) {
    char tmp[40];
    switch (v->t) {
    case V_UNDEF:
        if (repr) rerr(c, pos, "cannot print an undefined value inside a container");
        return;
    case V_NONE: sb_puts(c, b, "None"); return;
    case V_BOOL: sb_puts(c, b, v->u.b ? "True" : "False"); return;
    case V_INT: snprintf(tmp, sizeof tmp, "%" PRId64, v->u.i); sb_puts(c, b, tmp); return;
    case V_BIGINT: sb_add(c, b, v->u.s.p, v->u.s.n); return;
    case V_FLOAT: py_float_repr(v->u.f, tmp); sb_puts(c, b, tmp); return;
    case V_STR:
        if (repr) repr_str(c, b, v->u.s.p, v->u.s.n);
        else sb_add(c, b, v->u.s.p, v->u.s.n);
        return;
    case V_LIST: repr_seq(c, pos, b, v); return;
    case V_DICT: repr_dict(c, pos, b, v); return;
    case V_NS: sb_puts(c, b, "<Namespace "); repr_dict(c, pos, b, v); sb_puts(c, b, ">"); return;
    default: rerr(c, pos, "cannot print a %s object", type_name(v));
    }
}

/* str(v) as a borrowed or fresh arena string */
static val *to_str(ctx *c, size_t pos, val *v) {
    if (v->t == V_STR) return v;
    sbuf b = {0};
    to_str_into(c, pos, &b, v, 0);
    return mk_str_nocopy(c, b.n ? b.p : "", b.n);
}

/* ---- JSON output (transformers' tojson = json.dumps(ensure_ascii=False, ...)) */

typedef struct {
    int ensure_ascii, sort_keys, has_indent;
    const char *indent;
    size_t indent_n;
    const char *item_sep, *key_sep;
    size_t item_sep_n, key_sep_n;
} json_opts;

static void json_str(ctx *c, sbuf *b, const char *s, size_t n, int ensure_ascii) {
    sb_add(c, b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = utf8_next(s, n, &i);
        char tmp[16];
        switch (cp) {
        case '"': sb_puts(c, b, "\\\""); break;
        case '\\': sb_puts(c, b, "\\\\"); break;
        case '\n': sb_puts(c, b, "\\n"); break;
        case '\r': sb_puts(c, b, "\\r"); break;
        case '\t': sb_puts(c, b, "\\t"); break;
        case '\b': sb_puts(c, b, "\\b"); break;
        case '\f': sb_puts(c, b, "\\f"); break;
        default:
            if (cp < 0x20 || (ensure_ascii && cp > 0x7e)) {
                if (cp >= 0x10000) {
                    int32_t v = cp - 0x10000;
                    snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
                } else snprintf(tmp, sizeof tmp, "\\u%04x", cp);
                sb_puts(c, b, tmp);
            } else sb_add(c, b, s + st, i - st);
        }
    }
    sb_add(c, b, "\"", 1);
}

static void json_newline(ctx *c, sbuf *b, const json_opts *o, int level) {
    sb_add(c, b, "\n", 1);
    for (int i = 0; i < level; i++) sb_add(c, b, o->indent, o->indent_n);
}

static void json_dump(ctx *c, size_t pos, sbuf *b, const val *v, const json_opts *o, int level) {
    char tmp[40];
    if (level > 500) rerr(c, pos, "tojson: value nested too deeply");
    switch (v->t) {
    case V_NONE: sb_puts(c, b, "null"); return;
    case V_BOOL: sb_puts(c, b, v->u.b ? "true" : "false"); return;
    case V_INT: snprintf(tmp, sizeof tmp, "%" PRId64, v->u.i); sb_puts(c, b, tmp); return;
    case V_BIGINT: sb_add(c, b, v->u.s.p, v->u.s.n); return;
    case V_FLOAT:
        if (isnan(v->u.f)) sb_puts(c, b, "NaN");
        else if (isinf(v->u.f)) sb_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else { py_float_repr(v->u.f, tmp); sb_puts(c, b, tmp); }
        return;
    case V_STR: json_str(c, b, v->u.s.p, v->u.s.n, o->ensure_ascii); return;
    case V_LIST:
        if (v->kind != SEQ_LIST && v->kind != SEQ_TUPLE)
            rerr(c, pos, "tojson: object of type %s is not JSON serializable", type_name(v));
        if (!v->u.l.n) { sb_puts(c, b, "[]"); return; }
        sb_add(c, b, "[", 1);
        for (size_t i = 0; i < v->u.l.n; i++) {
            if (i) sb_add(c, b, o->item_sep, o->item_sep_n);
            if (o->has_indent) json_newline(c, b, o, level + 1);
            json_dump(c, pos, b, v->u.l.v[i], o, level + 1);
        }
        if (o->has_indent) json_newline(c, b, o, level);
        sb_add(c, b, "]", 1);
        return;
    case V_DICT: {
        if (!v->u.d.n) { sb_puts(c, b, "{}"); return; }
        size_t n = v->u.d.n;
        size_t *order = ralloc(c, n * sizeof(size_t));
        for (size_t i = 0; i < n; i++) order[i] = i;
        if (o->sort_keys) /* insertion sort: stable, dicts are small */
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && py_cmp(c, pos, v->u.d.k[order[j - 1]], v->u.d.k[order[j]]) > 0; j--) {
                    size_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
                }
        sb_add(c, b, "{", 1);
        for (size_t ii = 0; ii < n; ii++) {
            size_t i = order[ii];
            if (ii) sb_add(c, b, o->item_sep, o->item_sep_n);
            if (o->has_indent) json_newline(c, b, o, level + 1);
            const val *k = v->u.d.k[i];
            if (k->t == V_STR) json_str(c, b, k->u.s.p, k->u.s.n, o->ensure_ascii);
            else if (k->t == V_NONE || k->t == V_BOOL || k->t == V_INT || k->t == V_FLOAT) {
                sbuf kb = {0};
                json_dump(c, pos, &kb, k, o, level + 1);
                json_str(c, b, kb.p, kb.n, 0);
            } else rerr(c, pos, "tojson: keys must be str, int, float, bool or None, not %s", type_name(k));
            sb_add(c, b, o->key_sep, o->key_sep_n);
            json_dump(c, pos, b, v->u.d.v[i], o, level + 1);
        }
        if (o->has_indent) json_newline(c, b, o, level);
        sb_add(c, b, "}", 1);
        return;
    }
    default: rerr(c, pos, "tojson: object of type %s is not JSON serializable", type_name(v));
    }
}

/* ---- JSON input */

static val *from_json(ctx *c, const json *j, int depth) {
    if (depth > 600) rerr(c, 0, "input JSON nested too deeply");
    switch (j->type) {
    case JSON_NULL: return VNONE;
    case JSON_TRUE: return VTRUE;
    case JSON_FALSE: return VFALSE;
    case JSON_NUMBER:
        if (j->is_int) {
            errno = 0;
            long long x = strtoll(j->str, NULL, 10);
            if (errno == ERANGE) {
                val *v = new_val(c, V_BIGINT);
                v->u.s.p = j->str; /* JSON integers have no leading zeros: the text is canonical */
                v->u.s.n = j->len;
                return v;
            }
            return mk_int(c, x);
        }
        return mk_float(c, j->num);
    case JSON_STRING: return mk_str_nocopy(c, j->str, j->len);
    case JSON_ARRAY: {
        val *l = mk_list(c, j->n, SEQ_LIST);
        for (size_t i = 0; i < j->n; i++) l->u.l.v[i] = from_json(c, j->items[i], depth + 1);
        return l;
    }
    default: {
        val *d = new_val(c, V_DICT);
        for (size_t i = 0; i < j->n; i++)
            dict_set(c, d, mk_str_nocopy(c, j->keys[i], j->key_lens[i]), from_json(c, j->items[i], depth + 1));
        return d;
    }
    }
}

/* ---- scopes */

static scope *new_scope(ctx *c, scope *parent) {
    scope *s = ralloc(c, sizeof(scope));
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(ctx *c, scope *s, const char *name, val *v) {
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        const char **nn = ralloc(c, nc * sizeof(char *));
        val **nv = ralloc(c, nc * sizeof(val *));
        if (s->n) {
            memcpy(nn, s->names, s->n * sizeof(char *));
            memcpy(nv, s->vals, s->n * sizeof(val *));
        }
        s->names = nn;
        s->vals = nv;
        s->cap = nc;
    }
    s->names[s->n] = name;
    s->vals[s->n] = v;
    s->n++;
}

static const char *GLOBAL_FUNCS[] = {"range", "namespace", "dict", "raise_exception", "strftime_now", NULL};

static val *lookup(ctx *c, scope *s, const char *name) {
    for (; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (!strcmp(s->names[i], name)) return s->vals[i];
    for (int i = 0; GLOBAL_FUNCS[i]; i++)
        if (!strcmp(GLOBAL_FUNCS[i], name)) return mk_func(c, GLOBAL_FUNCS[i], NULL);
    return mk_undef(c, "'%s' is undefined", name);
}

/* ---- call arguments */

typedef struct {
    val **pos;
    size_t np;
    const char **kwn;
    val **kwv;
    size_t nk;
} args_t;

static val *arg_get(const args_t *a, size_t i, const char *name) {
    if (i < a->np) return a->pos[i];
    for (size_t k = 0; k < a->nk; k++)
        if (name && !strcmp(a->kwn[k], name)) return a->kwv[k];
    return NULL;
}

/* Rejects keyword arguments not in `allowed` and more than max_pos positionals. */
static void args_check(ctx *c, size_t pos, const char *what, const args_t *a, size_t max_pos, const char **allowed) {
    if (a->np > max_pos) rerr(c, pos, "%s takes at most %zu positional arguments (%zu given)", what, max_pos, a->np);
    for (size_t k = 0; k < a->nk; k++) {
        int ok = 0;
        for (size_t i = 0; allowed && allowed[i]; i++)
            if (!strcmp(allowed[i], a->kwn[k])) ok = 1;
        if (!ok) rerr(c, pos, "%s got an unsupported keyword argument '%s'", what, a->kwn[k]);
    }
}

static val *expect_str(ctx *c, size_t pos, val *v, const char *what) {
    if (!v || v->t != V_STR) rerr(c, pos, "%s must be a string, not %s", what, v ? type_name(v) : "nothing");
    return v;
}
static int64_t expect_int(ctx *c, size_t pos, val *v, const char *what) {
    if (!v || (v->t != V_INT && v->t != V_BOOL)) rerr(c, pos, "%s must be an integer, not %s", what, v ? type_name(v) : "nothing");
    return num_i(v);
}

/* ---- iteration */

/* The items a for loop / filter sees: list items, dict keys, string characters. */
static val *iter_list(ctx *c, size_t pos, val *v) {
    switch (v->t) {
    case V_UNDEF: return mk_list(c, 0, SEQ_LIST);
    case V_LIST: return v;
    case V_DICT: {
        val *l = mk_list(c, v->u.d.n, SEQ_LIST);
        for (size_t i = 0; i < v->u.d.n; i++) l->u.l.v[i] = v->u.d.k[i];
        return l;
    }
    case V_STR: {
        size_t n = utf8_count(v->u.s.p, v->u.s.n);
        val *l = mk_list(c, n, SEQ_LIST);
        size_t i = 0;
        for (size_t k = 0; k < n; k++) {
            size_t st = i;
            utf8_next(v->u.s.p, v->u.s.n, &i);
            l->u.l.v[k] = mk_str_nocopy(c, v->u.s.p + st, i - st);
        }
        return l;
    }
    default: rerr(c, pos, "'%s' object is not iterable", type_name(v));
    }
    return NULL;
}

static int64_t py_len(ctx *c, size_t pos, val *v) {
    switch (v->t) {
    case V_UNDEF: return 0;
    case V_STR: return (int64_t)utf8_count(v->u.s.p, v->u.s.n);
    case V_LIST: return (int64_t)v->u.l.n;
    case V_DICT: return (int64_t)v->u.d.n;
    case V_LOOP: return (int64_t)v->u.loop->n;
    default: rerr(c, pos, "object of type '%s' has no len()", type_name(v));
    }
    return 0;
}

/* ---- attribute and item access (Jinja's environment.getattr / getitem) */

static const char *STR_METHODS[] = {"startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip",
    "upper", "lower", "title", "capitalize", "replace", "find", "rfind", "count", "join", "splitlines",
    "removeprefix", "removesuffix", "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower", NULL};
static const char *STR_UNSUPPORTED[] = {"format", "format_map", "encode", "index", "rindex", "partition",
    "rpartition", "center", "ljust", "rjust", "zfill", "swapcase", "casefold", "expandtabs", "translate",
    "isnumeric", "isdecimal", "isidentifier", "isprintable", "istitle", "isascii", NULL};
static const char *DICT_METHODS[] = {"items", "keys", "values", "get", NULL};
/* attributes the immutable sandbox refuses: they read as undefined */
static const char *DICT_UNSAFE[] = {"copy", "pop", "popitem", "setdefault", "update", "clear", "fromkeys", NULL};
static const char *LIST_METHODS[] = {"index", "count", NULL};
static const char *LIST_UNSAFE[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear", "copy", NULL};

static val *get_attr(ctx *c, size_t pos, val *obj, const char *name) {
    switch (obj->t) {
    case V_UNDEF: fail_undef(c, pos, obj); return NULL;
    case V_DICT:
        if (in_list(DICT_METHODS, name)) return mk_func(c, name, obj);
        if (in_list(DICT_UNSAFE, name)) return mk_undef(c, "access to dict method '%s' is unsafe", name);
        {
            val *v = dict_get_str(obj, name);
            return v ? v : mk_undef(c, "'dict object' has no attribute '%s'", name);
        }
    case V_NS: {
        val *v = dict_get_str(obj, name);
        return v ? v : mk_undef(c, "'Namespace' has no attribute '%s'", name);
    }
    case V_STR:
        if (in_list(STR_METHODS, name)) return mk_func(c, name, obj);
        if (in_list(STR_UNSUPPORTED, name)) rerr(c, pos, "string method '%s' is not supported", name);
        return mk_undef(c, "'str object' has no attribute '%s'", name);
    case V_LIST:
        if (obj->kind == SEQ_LIST || obj->kind == SEQ_TUPLE) {
            if (in_list(LIST_METHODS, name)) return mk_func(c, name, obj);
            if (in_list(LIST_UNSAFE, name)) return mk_undef(c, "access to list method '%s' is unsafe", name);
        }
        return mk_undef(c, "'%s object' has no attribute '%s'", type_name(obj), name);
    case V_LOOP: {
        loopctx *L = obj->u.loop;
        if (!strcmp(name, "index")) return mk_int(c, (int64_t)L->i + 1);
        if (!strcmp(name, "index0")) return mk_int(c, (int64_t)L->i);
        if (!strcmp(name, "revindex")) return mk_int(c, (int64_t)(L->n - L->i));
        if (!strcmp(name, "revindex0")) return mk_int(c, (int64_t)(L->n - L->i - 1));
        if (!strcmp(name, "first")) return VBOOL(L->i == 0);
        if (!strcmp(name, "last")) return VBOOL(L->i + 1 == L->n);
        if (!strcmp(name, "length")) return mk_int(c, (int64_t)L->n);
        if (!strcmp(name, "depth")) return mk_int(c, 1);
        if (!strcmp(name, "depth0")) return mk_int(c, 0);
        if (!strcmp(name, "previtem"))
            return L->i > 0 ? L->items[L->i - 1] : mk_undef(c, "there is no previous item");
        if (!strcmp(name, "nextitem"))
            return L->i + 1 < L->n ? L->items[L->i + 1] : mk_undef(c, "there is no next item");
        if (!strcmp(name, "cycle")) return mk_func(c, "cycle", obj);
        rerr(c, pos, "loop attribute '%s' is not supported", name);
        return NULL;
    }
    default: return mk_undef(c, "'%s object' has no attribute '%s'", type_name(obj), name);
    }
}

static val *str_char_at(ctx *c, val *s, int64_t idx) {
    size_t n = utf8_count(s->u.s.p, s->u.s.n);
    if (idx < 0) idx += (int64_t)n;
    if (idx < 0 || (size_t)idx >= n) return NULL;
    size_t i = 0;
    for (int64_t k = 0; k < idx; k++) utf8_next(s->u.s.p, s->u.s.n, &i);
    size_t st = i;
    utf8_next(s->u.s.p, s->u.s.n, &i);
    return mk_str_nocopy(c, s->u.s.p + st, i - st);
}

static val *get_item(ctx *c, size_t pos, val *obj, val *key) {
    if (obj->t == V_UNDEF) fail_undef(c, pos, obj);
    if (obj->t == V_DICT) {
        val *v = dict_get(obj, key);
        if (v) return v;
    } else if ((obj->t == V_LIST && obj->kind != SEQ_ITER) && (key->t == V_INT || key->t == V_BOOL)) {
        int64_t i = num_i(key);
        if (i < 0) i += (int64_t)obj->u.l.n;
        if (i >= 0 && (uint64_t)i < obj->u.l.n) return obj->u.l.v[i];
        return mk_undef(c, "list index out of range");
    } else if (obj->t == V_STR && (key->t == V_INT || key->t == V_BOOL)) {
        val *v = str_char_at(c, obj, num_i(key));
        return v ? v : mk_undef(c, "string index out of range");
    }
    if (key->t == V_STR) { /* Jinja falls back to attribute lookup for string keys */
        if (obj->t == V_DICT) return mk_undef(c, "'dict object' has no attribute '%s'", key->u.s.p);
        return get_attr(c, pos, obj, key->u.s.p);
    }
    return mk_undef(c, "'%s object' has no item of that type", type_name(obj));
}

static val *do_slice(ctx *c, size_t pos, val *obj, val *vstart, val *vstop, val *vstep) {
    if (obj->t == V_UNDEF) fail_undef(c, pos, obj);
    /* Jinja compiles slices to plain Python subscripts (no undefined fallback) */
    int is_str = obj->t == V_STR;
    if (!is_str && !(obj->t == V_LIST && obj->kind <= SEQ_TUPLE))
        rerr(c, pos, "'%s' object is not subscriptable with a slice", type_name(obj));
    for (int k = 0; k < 3; k++) {
        val *x = k == 0 ? vstart : k == 1 ? vstop : vstep;
        if (x && x->t != V_NONE && x->t != V_INT && x->t != V_BOOL)
            rerr(c, pos, "slice indices must be integers or None");
    }
    int64_t len;
    size_t *offs = NULL;
    if (is_str) {
        len = (int64_t)utf8_count(obj->u.s.p, obj->u.s.n);
        offs = ralloc(c, ((size_t)len + 1) * sizeof(size_t));
        utf8_offsets(obj->u.s.p, obj->u.s.n, offs);
    } else len = (int64_t)obj->u.l.n;
    int64_t step = vstep && vstep->t != V_NONE ? num_i(vstep) : 1;
    if (step == 0) rerr(c, pos, "slice step cannot be zero");
    int64_t start, stop;
    if (!vstart || vstart->t == V_NONE) start = step < 0 ? len - 1 : 0;
    else {
        start = num_i(vstart);
        if (start < 0) { start += len; if (start < 0) start = step < 0 ? -1 : 0; }
        else if (start >= len) start = step < 0 ? len - 1 : len;
    }
    if (!vstop || vstop->t == V_NONE) stop = step < 0 ? -1 : len;
    else {
        stop = num_i(vstop);
        if (stop < 0) { stop += len; if (stop < 0) stop = step < 0 ? -1 : 0; }
        else if (stop >= len) stop = step < 0 ? len - 1 : len;
    }
    size_t count = 0;
    if (step > 0 && start < stop) count = (size_t)((stop - start - 1) / step + 1);
    if (step < 0 && start > stop) count = (size_t)((start - stop - 1) / (-step) + 1);
    if (is_str) {
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        for (size_t k = 0; k < count; k++) {
            int64_t i = start + (int64_t)k * step;
            sb_add(c, &b, obj->u.s.p + offs[i], offs[i + 1] - offs[i]);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    val *l = mk_list(c, count, obj->kind == SEQ_TUPLE ? SEQ_TUPLE : SEQ_LIST);
    for (size_t k = 0; k < count; k++) l->u.l.v[k] = obj->u.l.v[start + (int64_t)k * step];
    return l;
}

/* ---- arithmetic */

static val *arith(ctx *c, size_t pos, int op, val *a, val *b) {
    if (a->t == V_UNDEF) fail_undef(c, pos, a);
    if (b->t == V_UNDEF) fail_undef(c, pos, b);
    static const char *opname[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT && op != OP_DIV) {
            int64_t x = num_i(a), y = num_i(b), r;
            switch (op) {
            case OP_ADD: if (__builtin_add_overflow(x, y, &r)) goto overflow; return mk_int(c, r);
            case OP_SUB: if (__builtin_sub_overflow(x, y, &r)) goto overflow; return mk_int(c, r);
            case OP_MUL: if (__builtin_mul_overflow(x, y, &r)) goto overflow; return mk_int(c, r);
            case OP_FLOORDIV: case OP_MOD: {
                if (y == 0) rerr(c, pos, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) goto overflow;
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
                return mk_int(c, op == OP_FLOORDIV ? q : m);
            }
            case OP_POW: {
                if (y < 0) return mk_float(c, pow((double)x, (double)y));
                int64_t res = 1, base = x;
                for (int64_t e = y; e > 0; e >>= 1) {
                    if (e & 1) { if (__builtin_mul_overflow(res, base, &res)) goto overflow; }
                    if (e > 1 && __builtin_mul_overflow(base, base, &base)) goto overflow;
                }
                return mk_int(c, res);
            }
            }
        }
        double x = num_f(a), y = num_f(b);
        switch (op) {
        case OP_ADD: return mk_float(c, x + y);
        case OP_SUB: return mk_float(c, x - y);
        case OP_MUL: return mk_float(c, x * y);
        case OP_DIV:
            if (y == 0) rerr(c, pos, "division by zero");
            return mk_float(c, x / y);
        case OP_FLOORDIV: case OP_MOD: { /* Python's float_divmod */
            if (y == 0) rerr(c, pos, "float division or modulo by zero");
            double m = fmod(x, y), div = (x - m) / y;
            if (m != 0) {
                if ((y < 0) != (m < 0)) { m += y; div -= 1.0; }
            } else m = copysign(0.0, y);
            if (op == OP_MOD) return mk_float(c, m);
            double fl;
            if (div != 0) { fl = floor(div); if (div - fl > 0.5) fl += 1.0; }
            else fl = copysign(0.0, x / y);
            return mk_float(c, fl);
        }
        case OP_POW: return mk_float(c, pow(x, y));
        }
    }
    if (op == OP_ADD && a->t == V_STR && b->t == V_STR) {
        char *p = ralloc(c, a->u.s.n + b->u.s.n + 1);
        memcpy(p, a->u.s.p, a->u.s.n);
        memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
        p[a->u.s.n + b->u.s.n] = 0;
        return mk_str_nocopy(c, p, a->u.s.n + b->u.s.n);
    }
    if (op == OP_ADD && a->t == V_LIST && b->t == V_LIST && a->kind == b->kind &&
        (a->kind == SEQ_LIST || a->kind == SEQ_TUPLE)) {
        val *l = mk_list(c, a->u.l.n + b->u.l.n, a->kind);
        if (a->u.l.n) memcpy(l->u.l.v, a->u.l.v, a->u.l.n * sizeof(val *));
        if (b->u.l.n) memcpy(l->u.l.v + a->u.l.n, b->u.l.v, b->u.l.n * sizeof(val *));
        return l;
    }
    if (op == OP_MUL && ((a->t == V_STR || a->t == V_LIST) && (b->t == V_INT || b->t == V_BOOL))) {
        int64_t k = num_i(b);
        if (k < 0) k = 0;
        if (a->t == V_STR) {
            if (a->u.s.n && (uint64_t)k > ((size_t)1 << 28) / a->u.s.n) rerr(c, pos, "string repetition too large");
            sbuf sb = {0};
            sb_add(c, &sb, "", 0);
            for (int64_t i = 0; i < k; i++) sb_add(c, &sb, a->u.s.p, a->u.s.n);
            return mk_str_nocopy(c, sb.p, sb.n);
        }
        if (a->u.l.n && (uint64_t)k > ((size_t)1 << 24) / a->u.l.n) rerr(c, pos, "list repetition too large");
        val *l = mk_list(c, a->u.l.n * (size_t)k, a->kind == SEQ_TUPLE ? SEQ_TUPLE : SEQ_LIST);
        for (int64_t i = 0; i < k; i++)
            if (a->u.l.n) memcpy(l->u.l.v + (size_t)i * a->u.l.n, a->u.l.v, a->u.l.n * sizeof(val *));
        return l;
    }
    if (op == OP_MUL && (b->t == V_STR || b->t == V_LIST) && (a->t == V_INT || a->t == V_BOOL))
        return arith(c, pos, op, b, a);
    if (op == OP_MOD && a->t == V_STR) rerr(c, pos, "printf-style string formatting ('%%') is not supported");
    if (a->t == V_BIGINT || b->t == V_BIGINT) goto overflow;
    rerr(c, pos, "unsupported operand type(s) for %s: '%s' and '%s'", opname[op], type_name(a), type_name(b));
overflow:
    rerr(c, pos, "integer overflow (values beyond 64 bits are not supported)");
    return NULL;
}

static int contains(ctx *c, size_t pos, val *needle, val *hay) {
    switch (hay->t) {
    case V_UNDEF: return 0;
    case V_STR:
        if (needle->t != V_STR) rerr(c, pos, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (!needle->u.s.n) return 1;
        if (needle->u.s.n > hay->u.s.n) return 0;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
            if (!memcmp(hay->u.s.p + i, needle->u.s.p, needle->u.s.n)) return 1;
        return 0;
    case V_LIST:
        for (size_t i = 0; i < hay->u.l.n; i++)
            if (py_eq(needle, hay->u.l.v[i])) return 1;
        return 0;
    case V_DICT:
        if (needle->t == V_DICT || needle->t == V_NS || (needle->t == V_LIST && needle->kind != SEQ_TUPLE))
            rerr(c, pos, "unhashable type: '%s'", type_name(needle));
        return dict_get(hay, needle) != NULL;
    default: rerr(c, pos, "argument of type '%s' is not iterable", type_name(hay));
    }
    return 0;
}

/* ---- string helpers */

/* Code points of `chars` (for strip with an argument). */
static int32_t *decode_cps(ctx *c, val *s, size_t *n) {
    size_t k = utf8_count(s->u.s.p, s->u.s.n), i = 0;
    int32_t *cps = ralloc(c, (k + 1) * sizeof(int32_t));
    for (size_t j = 0; j < k; j++) cps[j] = utf8_next(s->u.s.p, s->u.s.n, &i);
    *n = k;
    return cps;
}

static int cp_in(int32_t cp, const int32_t *cps, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (cps[k] == cp) return 1;
    return 0;
}

static val *str_strip(ctx *c, size_t pos, val *s, val *chars, int left, int right) {
    size_t ncp = 0;
    int32_t *cps = NULL;
    if (chars && chars->t != V_NONE) cps = decode_cps(c, expect_str(c, pos, chars, "strip argument"), &ncp);
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, b = 0, e = n;
#define IN_SET(cp) (cps ? cp_in((cp), cps, ncp) : py_isspace(cp))
    if (left)
        while (b < e) {
            size_t j = b;
            int32_t cp = utf8_next(p, e, &j);
            if (!IN_SET(cp)) break;
            b = j;
        }
    if (right)
        while (e > b) {
            size_t st = e - 1;
            while (st > b && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            size_t j = st;
            int32_t cp = utf8_next(p, e, &j);
            if (!IN_SET(cp)) break;
            e = st;
        }
#undef IN_SET
    return mk_str_nocopy(c, p + b, e - b);
}

static const char *find_bytes(const char *h, size_t hn, const char *nd, size_t nn, size_t from) {
    if (nn == 0) return from <= hn ? h + from : NULL;
    for (size_t i = from; i + nn <= hn; i++)
        if (h[i] == nd[0] && !memcmp(h + i, nd, nn)) return h + i;
    return NULL;
}
static const char *rfind_bytes(const char *h, size_t hn, const char *nd, size_t nn, size_t before) {
    if (nn > before) return NULL;
    for (size_t i = before - nn + 1; i-- > 0;)
        if (!memcmp(h + i, nd, nn)) return h + i;
    return NULL;
}

static val *str_split(ctx *c, size_t pos, val *s, val *sep, int64_t maxsplit, int from_right) {
    const char *p = s->u.s.p;
    size_t n = s->u.s.n;
    size_t cap = 8, cnt = 0;
    val **items = ralloc(c, cap * sizeof(val *));
#define PUSH(ptr, len) do { if (cnt == cap) { val **ni = ralloc(c, cap * 2 * sizeof(val *)); memcpy(ni, items, cnt * sizeof(val *)); items = ni; cap *= 2; } items[cnt++] = mk_str_nocopy(c, (ptr), (len)); } while (0)
    if (!sep || sep->t == V_NONE) {
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            for (;;) {
                i = skip_space(p, n, i);
                if (i >= n) break;
                if (maxsplit >= 0 && splits >= maxsplit) { PUSH(p + i, n - i); break; }
                size_t j = i;
                while (j < n) {
                    size_t k = j;
                    if (py_isspace(utf8_next(p, n, &k))) break;
                    j = k;
                }
                PUSH(p + i, j - i);
                splits++;
                i = j;
            }
        } else {
            size_t e = n;
            int64_t splits = 0;
            for (;;) {
                e = rstrip_end(p, 0, e);
                if (e == 0) break;
                if (maxsplit >= 0 && splits >= maxsplit) { PUSH(p, e); break; }
                size_t b = e;
                while (b > 0) {
                    size_t st = b - 1;
                    while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    size_t k = st;
                    if (py_isspace(utf8_next(p, n, &k))) break;
                    b = st;
                }
                PUSH(p + b, e - b);
                splits++;
                e = b;
            }
        }
    } else {
        expect_str(c, pos, sep, "separator");
        if (!sep->u.s.n) rerr(c, pos, "empty separator");
        size_t sn = sep->u.s.n;
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            for (;;) {
                const char *f = (maxsplit >= 0 && splits >= maxsplit) ? NULL : find_bytes(p, n, sep->u.s.p, sn, i);
                if (!f) { PUSH(p + i, n - i); break; }
                PUSH(p + i, (size_t)(f - p) - i);
                i = (size_t)(f - p) + sn;
                splits++;
            }
        } else {
            size_t e = n;
            int64_t splits = 0;
            for (;;) {
                const char *f = (maxsplit >= 0 && splits >= maxsplit) ? NULL : rfind_bytes(p, n, sep->u.s.p, sn, e);
                if (!f) { PUSH(p, e); break; }
                PUSH(f + sn, e - (size_t)(f - p) - sn);
                e = (size_t)(f - p);
                splits++;
            }
        }
    }
#undef PUSH
    val *l = mk_list(c, cnt, SEQ_LIST);
    for (size_t k = 0; k < cnt; k++) l->u.l.v[k] = from_right ? items[cnt - 1 - k] : items[k];
    return l;
}

static val *str_map_case(ctx *c, val *s, int mode) { /* 0 lower, 1 upper, 2 title, 3 capitalize */
    sbuf b = {0};
    sb_add(c, &b, "", 0);
    size_t i = 0;
    int prev_cased = 0, first = 1;
    while (i < s->u.s.n) {
        int32_t cp = utf8_next(s->u.s.p, s->u.s.n, &i), r;
        if (mode == 0) r = utf8proc_tolower(cp);
        else if (mode == 1) r = utf8proc_toupper(cp);
        else if (mode == 2) r = prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
        else r = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp);
        prev_cased = utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp || utf8proc_totitle(cp) != cp;
        first = 0;
        char tmp[8];
        sb_add(c, &b, tmp, utf8_put(tmp, r));
    }
    return mk_str_nocopy(c, b.p, b.n);
}

static int is_line_break(int32_t cp) {
    return cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e ||
           cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

static val *str_splitlines(ctx *c, val *s, int keepends) {
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, start = 0, cnt = 0, cap = 8;
    val **items = ralloc(c, cap * sizeof(val *));
    while (i < n) {
        size_t st = i;
        int32_t cp = utf8_next(p, n, &i);
        if (!is_line_break(cp)) continue;
        if (cp == '\r' && i < n && p[i] == '\n') i++;
        if (cnt == cap) {
            val **ni = ralloc(c, cap * 2 * sizeof(val *));
            memcpy(ni, items, cnt * sizeof(val *));
            items = ni;
            cap *= 2;
        }
        items[cnt++] = mk_str_nocopy(c, p + start, (keepends ? i : st) - start);
        start = i;
    }
    if (start < n) {
        if (cnt == cap) {
            val **ni = ralloc(c, (cap + 1) * sizeof(val *));
            memcpy(ni, items, cnt * sizeof(val *));
            items = ni;
        }
        items[cnt++] = mk_str_nocopy(c, p + start, n - start);
    }
    val *l = mk_list(c, cnt, SEQ_LIST);
    if (cnt) memcpy(l->u.l.v, items, cnt * sizeof(val *));
    return l;
}

static val *str_replace(ctx *c, size_t pos, val *s, val *old, val *nw, int64_t count) {
    expect_str(c, pos, old, "replace() argument 1");
    expect_str(c, pos, nw, "replace() argument 2");
    sbuf b = {0};
    sb_add(c, &b, "", 0);
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0;
    int64_t done = 0;
    if (!old->u.s.n) {
        while (1) {
            if (count < 0 || done < count) { sb_add(c, &b, nw->u.s.p, nw->u.s.n); done++; }
            if (i >= n) break;
            size_t st = i;
            utf8_next(p, n, &i);
            sb_add(c, &b, p + st, i - st);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    while (i <= n) {
        const char *f = (count >= 0 && done >= count) ? NULL : find_bytes(p, n, old->u.s.p, old->u.s.n, i);
        if (!f) { sb_add(c, &b, p + i, n - i); break; }
        sb_add(c, &b, p + i, (size_t)(f - p) - i);
        sb_add(c, &b, nw->u.s.p, nw->u.s.n);
        i = (size_t)(f - p) + old->u.s.n;
        done++;
    }
    return mk_str_nocopy(c, b.p, b.n);
}

static int str_affix(ctx *c, size_t pos, val *s, val *arg, int suffix) {
    if (arg && arg->t == V_LIST && arg->kind == SEQ_TUPLE) {
        for (size_t i = 0; i < arg->u.l.n; i++)
            if (str_affix(c, pos, s, arg->u.l.v[i], suffix)) return 1;
        return 0;
    }
    expect_str(c, pos, arg, suffix ? "endswith() argument" : "startswith() argument");
    if (arg->u.s.n > s->u.s.n) return 0;
    const char *at = suffix ? s->u.s.p + s->u.s.n - arg->u.s.n : s->u.s.p;
    return !memcmp(at, arg->u.s.p, arg->u.s.n);
}

static int str_class(val *s, int kind) { /* 0 digit, 1 alpha, 2 alnum, 3 space, 4 upper, 5 lower */
    if (!s->u.s.n) return 0;
    size_t i = 0;
    int cased = 0;
    while (i < s->u.s.n) {
        int32_t cp = utf8_next(s->u.s.p, s->u.s.n, &i);
        utf8proc_category_t cat = utf8proc_category(cp);
        int is_alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        int is_digit = cat == UTF8PROC_CATEGORY_ND;
        switch (kind) {
        case 0: if (!is_digit) return 0; break;
        case 1: if (!is_alpha) return 0; break;
        case 2: if (!is_alpha && !is_digit) return 0; break;
        case 3: if (!py_isspace(cp)) return 0; break;
        case 4: case 5: {
            int lower = utf8proc_toupper(cp) != cp, upper = utf8proc_tolower(cp) != cp;
            if (kind == 4 && lower) return 0;
            if (kind == 5 && upper) return 0;
            if (lower || upper) cased = 1;
        }
        }
    }
    return kind >= 4 ? cased : 1;
}

/* ---- functions, methods, filters, tests */

static val *eval(ctx *c, const node *n, scope *s);
static int exec_body(ctx *c, const node *n, scope *s, sbuf *out);
static val *apply_filter(ctx *c, size_t pos, const char *name, val *v, args_t *a);
static int apply_test(ctx *c, size_t pos, const char *name, val *v, args_t *a);

static val *call_macro(ctx *c, size_t pos, val *m, args_t *a) {
    const node *def = m->u.mac.def;
    if (a->np > def->nnames) rerr(c, pos, "macro '%s' takes not more than %zu argument(s)", def->str, def->nnames);
    if (++c->depth > MAX_CALL_DEPTH) rerr(c, pos, "macro calls nested too deeply");
    scope *ms = new_scope(c, m->u.mac.closure);
    for (size_t k = 0; k < a->nk; k++) {
        size_t i;
        for (i = 0; i < def->nnames; i++)
            if (!strcmp(def->names[i], a->kwn[k])) break;
        if (i == def->nnames) rerr(c, pos, "macro '%s' has no argument named '%s'", def->str, a->kwn[k]);
        if (i < a->np) rerr(c, pos, "macro '%s' got multiple values for argument '%s'", def->str, a->kwn[k]);
    }
    for (size_t i = 0; i < def->nnames; i++) {
        val *v = arg_get(a, i, def->names[i]);
        if (!v) v = def->kids[i] ? eval(c, def->kids[i], ms) : mk_undef(c, "parameter '%s' was not provided", def->names[i]);
        scope_set(c, ms, def->names[i], v);
    }
    sbuf out = {0};
    sb_add(c, &out, "", 0);
    exec_body(c, def->b, ms, &out);
    c->depth--;
    return mk_str_nocopy(c, out.p, out.n);
}

static val *call_func(ctx *c, size_t pos, val *f, args_t *a) {
    const char *nm = f->u.fn.name;
    val *self = f->u.fn.self;
    if (!self) { /* global functions */
        if (!strcmp(nm, "range")) {
            args_check(c, pos, "range()", a, 3, NULL);
            if (!a->np) rerr(c, pos, "range expected at least 1 argument");
            int64_t start = 0, stop, step = 1;
            if (a->np == 1) stop = expect_int(c, pos, a->pos[0], "range() argument");
            else {
                start = expect_int(c, pos, a->pos[0], "range() argument");
                stop = expect_int(c, pos, a->pos[1], "range() argument");
                if (a->np == 3) step = expect_int(c, pos, a->pos[2], "range() argument");
            }
            if (step == 0) rerr(c, pos, "range() arg 3 must not be zero");
            int64_t cnt = 0;
            if (step > 0 && start < stop) cnt = (stop - start - 1) / step + 1;
            if (step < 0 && start > stop) cnt = (start - stop - 1) / (-step) + 1;
            if (cnt > MAX_RANGE) rerr(c, pos, "range too big (at most %d items)", MAX_RANGE);
            val *l = mk_list(c, (size_t)cnt, SEQ_LIST);
            for (int64_t i = 0; i < cnt; i++) l->u.l.v[i] = mk_int(c, start + i * step);
            return l;
        }
        if (!strcmp(nm, "namespace") || !strcmp(nm, "dict")) {
            int is_ns = nm[0] == 'n';
            val *d = new_val(c, is_ns ? V_NS : V_DICT);
            if (a->np > 1) rerr(c, pos, "%s() takes at most 1 positional argument", nm);
            if (a->np) {
                val *src = a->pos[0];
                if (src->t != V_DICT && src->t != V_NS) rerr(c, pos, "%s() positional argument must be a mapping", nm);
                for (size_t i = 0; i < src->u.d.n; i++) dict_set(c, d, src->u.d.k[i], src->u.d.v[i]);
            }
            for (size_t k = 0; k < a->nk; k++) dict_set(c, d, mk_str(c, a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
            if (is_ns)
                for (size_t i = 0; i < d->u.d.n; i++)
                    if (d->u.d.k[i]->t == V_STR && d->u.d.k[i]->u.s.n && d->u.d.k[i]->u.s.p[0] == '_')
                        rerr(c, pos, "namespace attributes cannot start with an underscore");
            return d;
        }
        if (!strcmp(nm, "raise_exception")) {
            val *m = arg_get(a, 0, "message");
            sbuf b = {0};
            if (m) to_str_into(c, pos, &b, m, 0);
            rerr(c, pos, "raise_exception: %s", b.n ? b.p : "");
        }
        if (!strcmp(nm, "strftime_now")) {
            val *fmt = expect_str(c, pos, arg_get(a, 0, "format"), "strftime_now() format");
            time_t now = time(NULL);
            struct tm tmv;
            localtime_r(&now, &tmv);
            char buf[512];
            size_t k = strftime(buf, sizeof buf, fmt->u.s.p, &tmv);
            return mk_str(c, buf, k);
        }
        rerr(c, pos, "unknown function '%s'", nm);
    }
    if (self->t == V_LOOP) { /* loop.cycle(a, b, ...) */
        if (!a->np) rerr(c, pos, "no items for cycling given");
        return a->pos[self->u.loop->i % a->np];
    }
    if (self->t == V_DICT) {
        if (!strcmp(nm, "get")) {
            args_check(c, pos, "dict.get()", a, 2, NULL);
            if (!a->np) rerr(c, pos, "get expected at least 1 argument");
            val *v = dict_get(self, a->pos[0]);
            return v ? v : a->np > 1 ? a->pos[1] : VNONE;
        }
        args_check(c, pos, nm, a, 0, NULL);
        int kind = !strcmp(nm, "items") ? SEQ_ITEMS : !strcmp(nm, "keys") ? SEQ_KEYS : SEQ_VALUES;
        val *l = mk_list(c, self->u.d.n, kind);
        for (size_t i = 0; i < self->u.d.n; i++) {
            if (kind == SEQ_ITEMS) {
                val *t = mk_list(c, 2, SEQ_TUPLE);
                t->u.l.v[0] = self->u.d.k[i];
                t->u.l.v[1] = self->u.d.v[i];
                l->u.l.v[i] = t;
            } else l->u.l.v[i] = kind == SEQ_KEYS ? self->u.d.k[i] : self->u.d.v[i];
        }
        return l;
    }
    if (self->t == V_LIST) {
        args_check(c, pos, nm, a, 1, NULL);
        if (a->np != 1) rerr(c, pos, "%s() takes exactly one argument", nm);
        int64_t cnt = 0;
        for (size_t i = 0; i < self->u.l.n; i++)
            if (py_eq(self->u.l.v[i], a->pos[0])) {
                if (!strcmp(nm, "index")) return mk_int(c, (int64_t)i);
                cnt++;
            }
        if (!strcmp(nm, "index")) rerr(c, pos, "list.index(x): x not in list");
        return mk_int(c, cnt);
    }
    /* string methods */
    if (!strcmp(nm, "startswith") || !strcmp(nm, "endswith")) {
        args_check(c, pos, nm, a, 1, NULL);
        return VBOOL(str_affix(c, pos, self, arg_get(a, 0, NULL), nm[0] == 'e'));
    }
    if (!strcmp(nm, "split") || !strcmp(nm, "rsplit")) {
        static const char *kw[] = {"sep", "maxsplit", NULL};
        args_check(c, pos, nm, a, 2, kw);
        val *ms = arg_get(a, 1, "maxsplit");
        return str_split(c, pos, self, arg_get(a, 0, "sep"), ms ? expect_int(c, pos, ms, "maxsplit") : -1, nm[0] == 'r');
    }
    if (!strcmp(nm, "strip") || !strcmp(nm, "lstrip") || !strcmp(nm, "rstrip")) {
        args_check(c, pos, nm, a, 1, NULL);
        return str_strip(c, pos, self, arg_get(a, 0, NULL), nm[0] != 'r', nm[0] != 'l');
    }
    if (!strcmp(nm, "upper") || !strcmp(nm, "lower") || !strcmp(nm, "title") || !strcmp(nm, "capitalize")) {
        args_check(c, pos, nm, a, 0, NULL);
        return str_map_case(c, self, nm[0] == 'l' ? 0 : nm[0] == 'u' ? 1 : nm[0] == 't' ? 2 : 3);
    }
    if (!strcmp(nm, "replace")) {
        args_check(c, pos, nm, a, 3, NULL);
        if (a->np < 2) rerr(c, pos, "replace() takes at least 2 arguments");
        return str_replace(c, pos, self, a->pos[0], a->pos[1], a->np > 2 ? expect_int(c, pos, a->pos[2], "count") : -1);
    }
    if (!strcmp(nm, "find") || !strcmp(nm, "rfind") || !strcmp(nm, "count")) {
        args_check(c, pos, nm, a, 1, NULL);
        val *sub = expect_str(c, pos, arg_get(a, 0, NULL), "substring");
        if (!strcmp(nm, "count")) {
            if (!sub->u.s.n) return mk_int(c, (int64_t)utf8_count(self->u.s.p, self->u.s.n) + 1);
            int64_t k = 0;
            size_t i = 0;
            const char *f;
            while ((f = find_bytes(self->u.s.p, self->u.s.n, sub->u.s.p, sub->u.s.n, i))) {
                k++;
                i = (size_t)(f - self->u.s.p) + sub->u.s.n;
            }
            return mk_int(c, k);
        }
        const char *f = nm[0] == 'f' ? find_bytes(self->u.s.p, self->u.s.n, sub->u.s.p, sub->u.s.n, 0)
                                     : rfind_bytes(self->u.s.p, self->u.s.n, sub->u.s.p, sub->u.s.n, self->u.s.n);
        return mk_int(c, f ? (int64_t)utf8_count(self->u.s.p, (size_t)(f - self->u.s.p)) : -1);
    }
    if (!strcmp(nm, "join")) {
        args_check(c, pos, nm, a, 1, NULL);
        val *it = iter_list(c, pos, arg_get(a, 0, NULL) ? arg_get(a, 0, NULL) : VNONE);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        for (size_t i = 0; i < it->u.l.n; i++) {
            if (i) sb_add(c, &b, self->u.s.p, self->u.s.n);
            val *x = expect_str(c, pos, it->u.l.v[i], "join() item");
            sb_add(c, &b, x->u.s.p, x->u.s.n);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "splitlines")) {
        static const char *kw[] = {"keepends", NULL};
        args_check(c, pos, nm, a, 1, kw);
        val *k = arg_get(a, 0, "keepends");
        return str_splitlines(c, self, k ? truthy(k) : 0);
    }
    if (!strcmp(nm, "removeprefix") || !strcmp(nm, "removesuffix")) {
        args_check(c, pos, nm, a, 1, NULL);
        val *x = expect_str(c, pos, arg_get(a, 0, NULL), nm);
        int suf = nm[6] == 's';
        if (!str_affix(c, pos, self, x, suf)) return self;
        return mk_str_nocopy(c, self->u.s.p + (suf ? 0 : x->u.s.n), self->u.s.n - x->u.s.n);
    }
    if (!strncmp(nm, "is", 2)) {
        args_check(c, pos, nm, a, 0, NULL);
        static const char *cls[] = {"isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower"};
        for (int k = 0; k < 6; k++)
            if (!strcmp(nm, cls[k])) return VBOOL(str_class(self, k));
    }
    rerr(c, pos, "method '%s' is not supported", nm);
    return NULL;
}

static val *call_value(ctx *c, size_t pos, val *f, args_t *a) {
    if (f->t == V_FUNC) return call_func(c, pos, f, a);
    if (f->t == V_MACRO) return call_macro(c, pos, f, a);
    if (f->t == V_UNDEF) fail_undef(c, pos, f);
    rerr(c, pos, "'%s' object is not callable", type_name(f));
    return NULL;
}

/* attribute path for map/selectattr/sort: "a.b" or "0" */
static val *attr_path(ctx *c, size_t pos, val *v, val *attr) {
    if (attr->t == V_INT) return get_item(c, pos, v, attr);
    expect_str(c, pos, attr, "attribute");
    const char *p = attr->u.s.p;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char name[256];
        if (n >= sizeof name) rerr(c, pos, "attribute name too long");
        memcpy(name, p, n);
        name[n] = 0;
        int all_digits = n > 0;
        for (size_t i = 0; i < n; i++) all_digits &= is_digit(name[i]);
        if (all_digits) v = get_item(c, pos, v, mk_int(c, strtoll(name, NULL, 10)));
        else v = get_item(c, pos, v, mk_str(c, name, n));
        if (!dot) return v;
        p = dot + 1;
    }
}

static val *lower_if_str(ctx *c, val *v, int case_sensitive) {
    return (!case_sensitive && v->t == V_STR) ? str_map_case(c, v, 0) : v;
}

/* stable merge sort of vals by key */
static void sort_vals(ctx *c, size_t pos, val **items, val **keys, size_t n, int reverse) {
    if (n < 2) return;
    val **ti = ralloc(c, n * sizeof(val *)), **tk = ralloc(c, n * sizeof(val *));
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int cmp = py_cmp(c, pos, keys[j], keys[i]);
                int take_right = reverse ? cmp > 0 : cmp < 0;
                if (take_right) { ti[k] = items[j]; tk[k++] = keys[j++]; }
                else { ti[k] = items[i]; tk[k++] = keys[i++]; }
            }
            while (i < mid) { ti[k] = items[i]; tk[k++] = keys[i++]; }
            while (j < hi) { ti[k] = items[j]; tk[k++] = keys[j++]; }
        }
        memcpy(items, ti, n * sizeof(val *));
        memcpy(keys, tk, n * sizeof(val *));
    }
}

static val *apply_filter(ctx *c, size_t pos, const char *nm, val *v, args_t *a) {
    if (!strcmp(nm, "default") || !strcmp(nm, "d")) {
        static const char *kw[] = {"default_value", "boolean", NULL};
        args_check(c, pos, nm, a, 2, kw);
        val *dv = arg_get(a, 0, "default_value"), *boolean = arg_get(a, 1, "boolean");
        if (v->t == V_UNDEF || (boolean && truthy(boolean) && !truthy(v))) return dv ? dv : mk_str(c, "", 0);
        return v;
    }
    if (!strcmp(nm, "tojson")) {
        static const char *kw[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
        args_check(c, pos, nm, a, 4, kw);
        val *ea = arg_get(a, 0, "ensure_ascii"), *ind = arg_get(a, 1, "indent"), *sep = arg_get(a, 2, "separators"),
            *sk = arg_get(a, 3, "sort_keys");
        json_opts o = {0};
        o.ensure_ascii = ea ? truthy(ea) : 0;
        o.sort_keys = sk ? truthy(sk) : 0;
        if (ind && ind->t != V_NONE) {
            o.has_indent = 1;
            if (ind->t == V_STR) { o.indent = ind->u.s.p; o.indent_n = ind->u.s.n; }
            else {
                int64_t k = expect_int(c, pos, ind, "tojson indent");
                if (k > 64) rerr(c, pos, "tojson indent too large");
                if (k < 0) k = 0;
                char *sp = ralloc(c, (size_t)k + 1);
                memset(sp, ' ', (size_t)k);
                o.indent = sp;
                o.indent_n = (size_t)k;
            }
        }
        o.item_sep = o.has_indent ? "," : ", ";
        o.key_sep = ": ";
        if (sep && sep->t != V_NONE) {
            if (sep->t != V_LIST || sep->u.l.n != 2) rerr(c, pos, "tojson separators must be a pair of strings");
            o.item_sep = expect_str(c, pos, sep->u.l.v[0], "separator")->u.s.p;
            o.key_sep = expect_str(c, pos, sep->u.l.v[1], "separator")->u.s.p;
        }
        o.item_sep_n = strlen(o.item_sep);
        o.key_sep_n = strlen(o.key_sep);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        json_dump(c, pos, &b, v, &o, 0);
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "length") || !strcmp(nm, "count")) {
        args_check(c, pos, nm, a, 0, NULL);
        return mk_int(c, py_len(c, pos, v));
    }
    if (!strcmp(nm, "string") || !strcmp(nm, "safe")) {
        args_check(c, pos, nm, a, 0, NULL);
        return to_str(c, pos, v); /* safe gives Markup(str(value)), a string */
    }
    if (!strcmp(nm, "trim")) {
        static const char *kw[] = {"chars", NULL};
        args_check(c, pos, nm, a, 1, kw);
        return str_strip(c, pos, to_str(c, pos, v), arg_get(a, 0, "chars"), 1, 1);
    }
    if (!strcmp(nm, "title")) {
        /* Jinja's title is not str.title: words start after runs of - ( { [ < or whitespace;
         * each word gets its first character upper-cased and the rest lower-cased */
        args_check(c, pos, nm, a, 0, NULL);
        val *sv = to_str(c, pos, v);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        size_t i = 0;
        int at_word_start = 1;
        while (i < sv->u.s.n) {
            int32_t cp = utf8_next(sv->u.s.p, sv->u.s.n, &i);
            int sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_isspace(cp);
            int32_t r = sep ? cp : at_word_start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            at_word_start = sep;
            char tmp[8];
            sb_add(c, &b, tmp, utf8_put(tmp, r));
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "upper") || !strcmp(nm, "lower") || !strcmp(nm, "capitalize")) {
        args_check(c, pos, nm, a, 0, NULL);
        return str_map_case(c, to_str(c, pos, v), nm[0] == 'l' ? 0 : nm[0] == 'u' ? 1 : 3);
    }
    if (!strcmp(nm, "replace")) {
        static const char *kw[] = {"old", "new", "count", NULL};
        args_check(c, pos, nm, a, 3, kw);
        val *cnt = arg_get(a, 2, "count");
        return str_replace(c, pos, to_str(c, pos, v), arg_get(a, 0, "old"), arg_get(a, 1, "new"),
                           cnt && cnt->t != V_NONE ? expect_int(c, pos, cnt, "count") : -1);
    }
    if (!strcmp(nm, "escape") || !strcmp(nm, "e")) {
        args_check(c, pos, nm, a, 0, NULL);
        val *s = to_str(c, pos, v);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        for (size_t i = 0; i < s->u.s.n; i++) {
            char ch = s->u.s.p[i];
            if (ch == '&') sb_puts(c, &b, "&amp;");
            else if (ch == '<') sb_puts(c, &b, "&lt;");
            else if (ch == '>') sb_puts(c, &b, "&gt;");
            else if (ch == '"') sb_puts(c, &b, "&#34;");
            else if (ch == '\'') sb_puts(c, &b, "&#39;");
            else sb_add(c, &b, &ch, 1);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "items")) {
        args_check(c, pos, nm, a, 0, NULL);
        if (v->t == V_UNDEF) return mk_list(c, 0, SEQ_ITER);
        if (v->t != V_DICT) rerr(c, pos, "items filter: can only get item pairs from a mapping");
        val *l = mk_list(c, v->u.d.n, SEQ_ITER);
        for (size_t i = 0; i < v->u.d.n; i++) {
            val *t = mk_list(c, 2, SEQ_TUPLE);
            t->u.l.v[0] = v->u.d.k[i];
            t->u.l.v[1] = v->u.d.v[i];
            l->u.l.v[i] = t;
        }
        return l;
    }
    if (!strcmp(nm, "list")) {
        args_check(c, pos, nm, a, 0, NULL);
        val *it = iter_list(c, pos, v);
        val *l = mk_list(c, it->u.l.n, SEQ_LIST);
        if (it->u.l.n) memcpy(l->u.l.v, it->u.l.v, it->u.l.n * sizeof(val *));
        return l;
    }
    if (!strcmp(nm, "first") || !strcmp(nm, "last")) {
        args_check(c, pos, nm, a, 0, NULL);
        val *it = iter_list(c, pos, v);
        if (!it->u.l.n) return mk_undef(c, "No %s item, sequence was empty.", nm);
        return nm[0] == 'f' ? it->u.l.v[0] : it->u.l.v[it->u.l.n - 1];
    }
    if (!strcmp(nm, "reverse")) {
        args_check(c, pos, nm, a, 0, NULL);
        if (v->t == V_STR) return do_slice(c, pos, v, NULL, NULL, mk_int(c, -1));
        val *it = iter_list(c, pos, v);
        val *l = mk_list(c, it->u.l.n, SEQ_ITER);
        for (size_t i = 0; i < it->u.l.n; i++) l->u.l.v[i] = it->u.l.v[it->u.l.n - 1 - i];
        return l;
    }
    if (!strcmp(nm, "join")) {
        static const char *kw[] = {"d", "attribute", NULL};
        args_check(c, pos, nm, a, 2, kw);
        val *d = arg_get(a, 0, "d"), *attr = arg_get(a, 1, "attribute");
        if (d) d = to_str(c, pos, d);
        val *it = iter_list(c, pos, v);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        for (size_t i = 0; i < it->u.l.n; i++) {
            if (i && d) sb_add(c, &b, d->u.s.p, d->u.s.n);
            val *x = it->u.l.v[i];
            if (attr && attr->t != V_NONE) x = attr_path(c, pos, x, attr);
            to_str_into(c, pos, &b, x, 0);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "int") || !strcmp(nm, "float")) {
        int is_int = nm[0] == 'i';
        static const char *kw[] = {"default", "base", NULL};
        args_check(c, pos, nm, a, is_int ? 2 : 1, kw);
        val *dv = arg_get(a, 0, "default");
        if (arg_get(a, 1, "base")) rerr(c, pos, "int filter: the base argument is not supported");
        if (v->t == V_INT || v->t == V_BOOL) return is_int ? mk_int(c, num_i(v)) : mk_float(c, (double)num_i(v));
        if (v->t == V_FLOAT) {
            if (!is_int) return v;
            if (isnan(v->u.f) || isinf(v->u.f) || fabs(v->u.f) >= 9.2e18) rerr(c, pos, "cannot convert float to integer");
            return mk_int(c, (int64_t)v->u.f);
        }
        if (v->t == V_STR) {
            val *t = str_strip(c, pos, v, NULL, 1, 1);
            char buf[128];
            size_t k = 0;
            int ok = t->u.s.n > 0 && t->u.s.n < sizeof buf;
            for (size_t i = 0; ok && i < t->u.s.n; i++) {
                char ch = t->u.s.p[i];
                if (ch == '_' && i > 0 && i + 1 < t->u.s.n && is_digit(t->u.s.p[i - 1]) && is_digit(t->u.s.p[i + 1])) continue;
                buf[k++] = ch;
            }
            buf[k] = 0;
            if (ok) {
                char *end;
                errno = 0;
                long long x = strtoll(buf, &end, 10);
                if (*end == 0 && k && !errno) return is_int ? mk_int(c, x) : mk_float(c, (double)x);
                double f = strtod(buf, &end);
                if (*end == 0 && k && !(buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X'))) {
                    if (!is_int) return mk_float(c, f);
                    if (!isnan(f) && !isinf(f) && fabs(f) < 9.2e18) return mk_int(c, (int64_t)f);
                    if (isinf(f)) rerr(c, pos, "cannot convert float infinity to integer");
                }
            }
        } else if (v->t != V_NONE && v->t != V_UNDEF && v->t != V_LIST && v->t != V_DICT)
            rerr(c, pos, "%s filter: unsupported value type %s", nm, type_name(v));
        return dv ? dv : is_int ? mk_int(c, 0) : mk_float(c, 0.0);
    }
    if (!strcmp(nm, "abs")) {
        args_check(c, pos, nm, a, 0, NULL);
        if (v->t == V_FLOAT) return mk_float(c, fabs(v->u.f));
        if (v->t == V_INT || v->t == V_BOOL) {
            int64_t x = num_i(v);
            if (x == INT64_MIN) rerr(c, pos, "integer overflow");
            return mk_int(c, x < 0 ? -x : x);
        }
        rerr(c, pos, "bad operand type for abs(): '%s'", type_name(v));
    }
    if (!strcmp(nm, "indent")) {
        static const char *kw[] = {"width", "first", "blank", NULL};
        args_check(c, pos, nm, a, 3, kw);
        val *w = arg_get(a, 0, "width"), *first = arg_get(a, 1, "first"), *blank = arg_get(a, 2, "blank");
        const char *ind = "    ";
        size_t indn = 4;
        if (w) {
            if (w->t == V_STR) { ind = w->u.s.p; indn = w->u.s.n; }
            else {
                int64_t k = expect_int(c, pos, w, "indent width");
                if (k < 0) k = 0;
                if (k > 1024) rerr(c, pos, "indent width too large");
                char *sp = ralloc(c, (size_t)k + 1);
                memset(sp, ' ', (size_t)k);
                ind = sp;
                indn = (size_t)k;
            }
        }
        if (v->t != V_STR) rerr(c, pos, "indent filter: value must be a string, not %s", type_name(v));
        val *s = v;
        val *withnl = arith(c, pos, OP_ADD, s, mk_str(c, "\n", 1));
        val *lines = str_splitlines(c, withnl, 0);
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        if (first && truthy(first)) sb_add(c, &b, ind, indn);
        for (size_t i = 0; i < lines->u.l.n; i++) {
            val *ln = lines->u.l.v[i];
            if (i) {
                sb_add(c, &b, "\n", 1);
                if ((blank && truthy(blank)) || ln->u.s.n) sb_add(c, &b, ind, indn);
            }
            sb_add(c, &b, ln->u.s.p, ln->u.s.n);
        }
        return mk_str_nocopy(c, b.p, b.n);
    }
    if (!strcmp(nm, "map")) {
        val *it = iter_list(c, pos, truthy(v) ? v : mk_list(c, 0, SEQ_LIST)); /* Jinja skips falsy input */
        val *l = mk_list(c, it->u.l.n, SEQ_ITER);
        val *attr = arg_get(a, (size_t)-1, "attribute");
        if (attr) {
            static const char *kw[] = {"attribute", "default", NULL};
            args_check(c, pos, nm, a, 0, kw);
            val *dv = arg_get(a, (size_t)-1, "default");
            for (size_t i = 0; i < it->u.l.n; i++) {
                val *x = attr_path(c, pos, it->u.l.v[i], attr);
                l->u.l.v[i] = (x->t == V_UNDEF && dv) ? dv : x;
            }
            return l;
        }
        if (!a->np) rerr(c, pos, "map requires a filter name or attribute=");
        val *fname = expect_str(c, pos, a->pos[0], "map filter name");
        if (!in_list(KNOWN_FILTERS, fname->u.s.p)) rerr(c, pos, "unsupported filter '%s'", fname->u.s.p);
        args_t sub = {a->pos + 1, a->np - 1, a->kwn, a->kwv, a->nk};
        for (size_t i = 0; i < it->u.l.n; i++) l->u.l.v[i] = apply_filter(c, pos, fname->u.s.p, it->u.l.v[i], &sub);
        return l;
    }
    if (!strcmp(nm, "select") || !strcmp(nm, "reject") || !strcmp(nm, "selectattr") || !strcmp(nm, "rejectattr")) {
        int is_attr = strstr(nm, "attr") != NULL, want = nm[0] == 's';
        if (a->nk) rerr(c, pos, "%s: keyword arguments are not supported", nm);
        val *it = iter_list(c, pos, truthy(v) ? v : mk_list(c, 0, SEQ_LIST)); /* Jinja skips falsy input */
        size_t k0 = 0;
        val *attr = NULL;
        if (is_attr) {
            if (!a->np) rerr(c, pos, "%s requires an attribute name", nm);
            attr = a->pos[0];
            k0 = 1;
        }
        const char *tname = NULL;
        if (a->np > k0) {
            tname = expect_str(c, pos, a->pos[k0], "test name")->u.s.p;
            if (!in_list(KNOWN_TESTS, tname)) rerr(c, pos, "unsupported test '%s'", tname);
        }
        args_t sub = {a->np > k0 + 1 ? a->pos + k0 + 1 : NULL, a->np > k0 + 1 ? a->np - k0 - 1 : 0, NULL, NULL, 0};
        val *l = mk_list(c, it->u.l.n, SEQ_ITER);
        size_t cnt = 0;
        for (size_t i = 0; i < it->u.l.n; i++) {
            val *x = attr ? attr_path(c, pos, it->u.l.v[i], attr) : it->u.l.v[i];
            int r = tname ? apply_test(c, pos, tname, x, &sub) : truthy(x);
            if (r == want) l->u.l.v[cnt++] = it->u.l.v[i];
        }
        l->u.l.n = cnt;
        return l;
    }
    if (!strcmp(nm, "unique") || !strcmp(nm, "sort") || !strcmp(nm, "min") || !strcmp(nm, "max")) {
        static const char *kw_sort[] = {"reverse", "case_sensitive", "attribute", NULL};
        static const char *kw_other[] = {"case_sensitive", "attribute", NULL};
        int is_sort = !strcmp(nm, "sort");
        args_check(c, pos, nm, a, is_sort ? 3 : 2, is_sort ? kw_sort : kw_other);
        val *rev = is_sort ? arg_get(a, 0, "reverse") : NULL;
        val *cs = arg_get(a, is_sort ? 1 : 0, "case_sensitive"), *attr = arg_get(a, is_sort ? 2 : 1, "attribute");
        int case_sensitive = cs ? truthy(cs) : 0;
        val *it = iter_list(c, pos, v);
        size_t n = it->u.l.n;
        val **items = ralloc(c, (n ? n : 1) * sizeof(val *)), **keys = ralloc(c, (n ? n : 1) * sizeof(val *));
        for (size_t i = 0; i < n; i++) {
            items[i] = it->u.l.v[i];
            val *k = attr && attr->t != V_NONE ? attr_path(c, pos, items[i], attr) : items[i];
            keys[i] = lower_if_str(c, k, case_sensitive);
        }
        if (!strcmp(nm, "unique")) {
            for (size_t i = 0; i < n; i++)
                if (keys[i]->t == V_DICT || keys[i]->t == V_NS || (keys[i]->t == V_LIST && keys[i]->kind != SEQ_TUPLE))
                    rerr(c, pos, "unique filter: unhashable type '%s'", type_name(keys[i]));
            val *l = mk_list(c, n, SEQ_ITER);
            size_t cnt = 0;
            for (size_t i = 0; i < n; i++) {
                int seen = 0;
                for (size_t j = 0; j < i && !seen; j++) seen = py_eq(keys[i], keys[j]);
                if (!seen) l->u.l.v[cnt++] = items[i];
            }
            l->u.l.n = cnt;
            return l;
        }
        if (is_sort) {
            sort_vals(c, pos, items, keys, n, rev ? truthy(rev) : 0);
            val *l = mk_list(c, n, SEQ_LIST);
            if (n) memcpy(l->u.l.v, items, n * sizeof(val *));
            return l;
        }
        if (!n) return mk_undef(c, "No aggregated item, sequence was empty.");
        size_t best = 0;
        for (size_t i = 1; i < n; i++) {
            int cmp = py_cmp(c, pos, keys[i], keys[best]);
            if (nm[1] == 'i' ? cmp < 0 : cmp > 0) best = i;
        }
        return items[best];
    }
    if (!strcmp(nm, "dictsort")) {
        static const char *kw[] = {"case_sensitive", "by", "reverse", NULL};
        args_check(c, pos, nm, a, 3, kw);
        val *cs = arg_get(a, 0, "case_sensitive"), *by = arg_get(a, 1, "by"), *rev = arg_get(a, 2, "reverse");
        if (v->t != V_DICT) rerr(c, pos, "dictsort: value is not a mapping");
        int by_value = 0;
        if (by) {
            expect_str(c, pos, by, "dictsort by");
            if (!strcmp(by->u.s.p, "value")) by_value = 1;
            else if (strcmp(by->u.s.p, "key")) rerr(c, pos, "You can only sort by either \"key\" or \"value\"");
        }
        size_t n = v->u.d.n;
        val **items = ralloc(c, (n ? n : 1) * sizeof(val *)), **keys = ralloc(c, (n ? n : 1) * sizeof(val *));
        for (size_t i = 0; i < n; i++) {
            val *t = mk_list(c, 2, SEQ_TUPLE);
            t->u.l.v[0] = v->u.d.k[i];
            t->u.l.v[1] = v->u.d.v[i];
            items[i] = t;
            keys[i] = lower_if_str(c, by_value ? v->u.d.v[i] : v->u.d.k[i], cs ? truthy(cs) : 0);
        }
        sort_vals(c, pos, items, keys, n, rev ? truthy(rev) : 0);
        val *l = mk_list(c, n, SEQ_LIST);
        if (n) memcpy(l->u.l.v, items, n * sizeof(val *));
        return l;
    }
    if (!strcmp(nm, "sum")) {
        static const char *kw[] = {"attribute", "start", NULL};
        args_check(c, pos, nm, a, 2, kw);
        val *attr = arg_get(a, 0, "attribute"), *start = arg_get(a, 1, "start");
        val *acc = start ? start : mk_int(c, 0);
        val *it = iter_list(c, pos, v);
        for (size_t i = 0; i < it->u.l.n; i++)
            acc = arith(c, pos, OP_ADD, acc, attr ? attr_path(c, pos, it->u.l.v[i], attr) : it->u.l.v[i]);
        return acc;
    }
    rerr(c, pos, "unsupported filter '%s'", nm);
    return NULL;
}

static int apply_test(ctx *c, size_t pos, const char *nm, val *v, args_t *a) {
    val *x = arg_get(a, 0, NULL);
    if (!strcmp(nm, "defined")) return v->t != V_UNDEF;
    if (!strcmp(nm, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(nm, "none")) return v->t == V_NONE;
    if (!strcmp(nm, "boolean")) return v->t == V_BOOL;
    if (!strcmp(nm, "true")) return v->t == V_BOOL && v->u.b;
    if (!strcmp(nm, "false")) return v->t == V_BOOL && !v->u.b;
    if (!strcmp(nm, "integer")) return v->t == V_INT || v->t == V_BIGINT;
    if (!strcmp(nm, "float")) return v->t == V_FLOAT;
    if (!strcmp(nm, "number")) return is_num(v) || v->t == V_BIGINT;
    if (!strcmp(nm, "string")) return v->t == V_STR;
    if (!strcmp(nm, "mapping")) return v->t == V_DICT;
    if (!strcmp(nm, "iterable")) return v->t == V_UNDEF || v->t == V_STR || v->t == V_LIST || v->t == V_DICT || v->t == V_LOOP;
    if (!strcmp(nm, "sequence")) return v->t == V_UNDEF || v->t == V_STR || (v->t == V_LIST && v->kind <= SEQ_TUPLE) || v->t == V_DICT;
    if (!strcmp(nm, "callable")) return v->t == V_FUNC || v->t == V_MACRO;
    if (!strcmp(nm, "escaped")) return 0;
    if (!strcmp(nm, "lower")) return str_class(to_str(c, pos, v), 5);
    if (!strcmp(nm, "upper")) return str_class(to_str(c, pos, v), 4);
    if (!strcmp(nm, "odd") || !strcmp(nm, "even")) /* value % 2 == 1 / == 0, with Python's % */
        return py_eq(arith(c, pos, OP_MOD, v, mk_int(c, 2)), mk_int(c, nm[0] == 'o'));
    if (!x) rerr(c, pos, "test '%s' needs an argument", nm);
    if (!strcmp(nm, "divisibleby")) return py_eq(arith(c, pos, OP_MOD, v, x), mk_int(c, 0));
    if (!strcmp(nm, "eq") || !strcmp(nm, "equalto") || !strcmp(nm, "==")) return py_eq(v, x);
    if (!strcmp(nm, "ne") || !strcmp(nm, "!=")) return !py_eq(v, x);
    if (!strcmp(nm, "lt") || !strcmp(nm, "lessthan") || !strcmp(nm, "<")) return py_cmp(c, pos, v, x) < 0;
    if (!strcmp(nm, "le") || !strcmp(nm, "<=")) return py_cmp(c, pos, v, x) <= 0;
    if (!strcmp(nm, "gt") || !strcmp(nm, "greaterthan") || !strcmp(nm, ">")) return py_cmp(c, pos, v, x) > 0;
    if (!strcmp(nm, "ge") || !strcmp(nm, ">=")) return py_cmp(c, pos, v, x) >= 0;
    if (!strcmp(nm, "in")) return contains(c, pos, v, x);
    if (!strcmp(nm, "sameas")) {
        if (v->t != x->t) return 0;
        if (v->t == V_NONE || v->t == V_UNDEF) return v->t == V_NONE;
        if (v->t == V_BOOL) return v->u.b == x->u.b;
        return v == x;
    }
    rerr(c, pos, "unsupported test '%s'", nm);
    return 0;
}

/* ---- expression evaluation */

static void eval_args(ctx *c, const node *n, scope *s, args_t *a) {
    a->pos = ralloc(c, (n->nkids + 1) * sizeof(val *));
    a->kwv = ralloc(c, (n->nkids + 1) * sizeof(val *));
    a->kwn = ralloc(c, (n->nkids + 1) * sizeof(char *));
    a->np = a->nk = 0;
    for (size_t i = 0; i < n->nkids; i++) {
        val *v = eval(c, n->kids[i], s);
        if (n->kwnames[i]) {
            for (size_t k = 0; k < a->nk; k++)
                if (!strcmp(a->kwn[k], n->kwnames[i])) rerr(c, n->pos, "keyword argument repeated: %s", n->kwnames[i]);
            a->kwn[a->nk] = n->kwnames[i];
            a->kwv[a->nk++] = v;
        } else a->pos[a->np++] = v;
    }
}

static val *eval(ctx *c, const node *n, scope *s) {
    if (++c->steps > MAX_STEPS) rerr(c, n->pos, "template evaluation took too many steps");
    switch (n->type) {
    case E_LIT: return n->lit;
    case E_NAME: return lookup(c, s, n->str);
    case E_GETATTR: return get_attr(c, n->pos, eval(c, n->a, s), n->str);
    case E_GETITEM: {
        val *o = eval(c, n->a, s);
        return get_item(c, n->pos, o, eval(c, n->b, s));
    }
    case E_SLICE: {
        val *o = eval(c, n->a, s);
        val *st = n->b ? eval(c, n->b, s) : NULL, *sp = n->c ? eval(c, n->c, s) : NULL, *stp = n->d ? eval(c, n->d, s) : NULL;
        return do_slice(c, n->pos, o, st, sp, stp);
    }
    case E_CALL: {
        val *f = eval(c, n->a, s);
        args_t a;
        eval_args(c, n, s, &a);
        return call_value(c, n->pos, f, &a);
    }
    case E_FILTER: {
        val *v = n->a ? eval(c, n->a, s) : lookup(c, s, " filter-block"); /* filter blocks bind their body */
        args_t a;
        eval_args(c, n, s, &a);
        return apply_filter(c, n->pos, n->str, v, &a);
    }
    case E_TEST: {
        val *v = eval(c, n->a, s);
        args_t a;
        eval_args(c, n, s, &a);
        int r = apply_test(c, n->pos, n->str, v, &a);
        return VBOOL(n->op ? !r : r);
    }
    case E_NEG: case E_POS: {
        val *v = eval(c, n->a, s);
        if (v->t == V_UNDEF) fail_undef(c, n->pos, v);
        if (v->t == V_FLOAT) return n->type == E_NEG ? mk_float(c, -v->u.f) : v;
        if (v->t == V_INT || v->t == V_BOOL) {
            int64_t x = num_i(v);
            if (n->type == E_NEG && x == INT64_MIN) rerr(c, n->pos, "integer overflow");
            return mk_int(c, n->type == E_NEG ? -x : x);
        }
        rerr(c, n->pos, "bad operand type for unary %c: '%s'", n->type == E_NEG ? '-' : '+', type_name(v));
        return NULL;
    }
    case E_NOT: return VBOOL(!truthy(eval(c, n->a, s)));
    case E_AND: {
        val *l = eval(c, n->a, s);
        return truthy(l) ? eval(c, n->b, s) : l;
    }
    case E_OR: {
        val *l = eval(c, n->a, s);
        return truthy(l) ? l : eval(c, n->b, s);
    }
    case E_BINOP: {
        val *l = eval(c, n->a, s), *r = eval(c, n->b, s);
        if (n->op == OP_CONCAT) {
            sbuf b = {0};
            sb_add(c, &b, "", 0);
            to_str_into(c, n->pos, &b, l, 0);
            to_str_into(c, n->pos, &b, r, 0);
            return mk_str_nocopy(c, b.p, b.n);
        }
        return arith(c, n->pos, n->op, l, r);
    }
    case E_COMPARE: {
        val *l = eval(c, n->a, s);
        for (size_t i = 0; i < n->nkids; i++) {
            val *r = eval(c, n->kids[i], s);
            int ok;
            switch (n->ops[i]) {
            case OP_EQ: ok = py_eq(l, r); break;
            case OP_NE: ok = !py_eq(l, r); break;
            case OP_LT: ok = py_cmp(c, n->pos, l, r) < 0; break;
            case OP_LE: ok = py_cmp(c, n->pos, l, r) <= 0; break;
            case OP_GT: ok = py_cmp(c, n->pos, l, r) > 0; break;
            case OP_GE: ok = py_cmp(c, n->pos, l, r) >= 0; break;
            case OP_IN: ok = contains(c, n->pos, l, r); break;
            default: ok = !contains(c, n->pos, l, r); break;
            }
            if (!ok) return VFALSE;
            l = r;
        }
        return VTRUE;
    }
    case E_COND:
        if (truthy(eval(c, n->b, s))) return eval(c, n->a, s);
        return n->c ? eval(c, n->c, s) : mk_undef(c, "the inline if-expression on line has no else branch");
    case E_LIST: case E_TUPLE: {
        val *l = mk_list(c, n->nkids, n->type == E_LIST ? SEQ_LIST : SEQ_TUPLE);
        for (size_t i = 0; i < n->nkids; i++) l->u.l.v[i] = eval(c, n->kids[i], s);
        return l;
    }
    case E_DICT: {
        val *d = new_val(c, V_DICT);
        for (size_t i = 0; i + 1 < n->nkids; i += 2) {
            val *k = eval(c, n->kids[i], s);
            if (k->t == V_LIST && k->kind != SEQ_TUPLE) rerr(c, n->kids[i]->pos, "unhashable type: 'list'");
            if (k->t == V_DICT || k->t == V_UNDEF || k->t == V_NS) rerr(c, n->kids[i]->pos, "unhashable dict key");
            dict_set(c, d, k, eval(c, n->kids[i + 1], s));
        }
        return d;
    }
    default: rerr(c, n->pos, "internal error: unknown expression node");
    }
    return NULL;
}

/* ---- statements */

/* Binds for/set targets: one name takes the value, several unpack a sequence. */
static void assign_targets(ctx *c, size_t pos, scope *s, const node *n, val *v) {
    if (n->nnames == 1) {
        scope_set(c, s, n->names[0], v);
        return;
    }
    if (v->t == V_UNDEF) fail_undef(c, pos, v);
    val *it = iter_list(c, pos, v);
    if (it->u.l.n != n->nnames)
        rerr(c, pos, "cannot unpack %zu value(s) into %zu target(s)", it->u.l.n, n->nnames);
    for (size_t i = 0; i < n->nnames; i++) scope_set(c, s, n->names[i], it->u.l.v[i]);
}

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

static int exec_stmt(ctx *c, const node *n, scope *s, sbuf *out) {
    if (++c->steps > MAX_STEPS) rerr(c, n->pos, "template evaluation took too many steps");
    switch (n->type) {
    case N_BODY: return exec_body(c, n, s, out);
    case N_TEXT: sb_add(c, out, n->str, n->len); return FLOW_NORMAL;
    case N_OUTPUT: to_str_into(c, n->pos, out, eval(c, n->a, s), 0); return FLOW_NORMAL;
    case N_IF:
        if (truthy(eval(c, n->a, s))) return exec_body(c, n->b, s, out);
        if (n->c) return exec_stmt(c, n->c, s, out);
        return FLOW_NORMAL;
    case N_FOR: {
        val *seq = eval(c, n->a, s);
        val *it = iter_list(c, n->pos, seq);
        val **items = it->u.l.v;
        size_t cnt = it->u.l.n;
        if (n->d) { /* loop filter: applied before loop.* counts */
            val **kept = ralloc(c, (cnt ? cnt : 1) * sizeof(val *));
            size_t k = 0;
            for (size_t i = 0; i < cnt; i++) {
                scope *fs = new_scope(c, s);
                assign_targets(c, n->pos, fs, n, items[i]);
                if (truthy(eval(c, n->d, fs))) kept[k++] = items[i];
            }
            items = kept;
            cnt = k;
        }
        loopctx *L = ralloc(c, sizeof(loopctx));
        L->items = items;
        L->n = cnt;
        val *lv = new_val(c, V_LOOP);
        lv->u.loop = L;
        for (size_t i = 0; i < cnt; i++) {
            L->i = i;
            scope *is = new_scope(c, s);
            assign_targets(c, n->pos, is, n, items[i]);
            scope_set(c, is, "loop", lv);
            if (exec_body(c, n->b, is, out) == FLOW_BREAK) break;
        }
        if (!cnt && n->c) return exec_body(c, n->c, s, out);
        return FLOW_NORMAL;
    }
    case N_SET: {
        val *v = eval(c, n->b, s);
        if (n->str) { /* ns.attr = value */
            val *ns = lookup(c, s, n->names[0]);
            if (ns->t != V_NS) rerr(c, n->pos, "can only assign attributes of namespace objects ('%s' is %s)", n->names[0], type_name(ns));
            if (n->str[0] == '_') rerr(c, n->pos, "namespace attributes cannot start with an underscore");
            dict_set(c, ns, mk_str(c, n->str, strlen(n->str)), v);
            return FLOW_NORMAL;
        }
        assign_targets(c, n->pos, s, n, v);
        return FLOW_NORMAL;
    }
    case N_SETBLOCK: {
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        exec_body(c, n->b, s, &b);
        scope_set(c, s, n->names[0], mk_str_nocopy(c, b.p, b.n));
        return FLOW_NORMAL;
    }
    case N_MACRO: {
        val *m = new_val(c, V_MACRO);
        m->u.mac.def = n;
        m->u.mac.closure = s;
        scope_set(c, s, n->str, m);
        return FLOW_NORMAL;
    }
    case N_WITH: {
        scope *ws = new_scope(c, s);
        for (size_t i = 0; i < n->nnames; i++) scope_set(c, ws, n->names[i], eval(c, n->kids[i], s));
        return exec_body(c, n->b, ws, out);
    }
    case N_FILTERBLOCK: {
        sbuf b = {0};
        sb_add(c, &b, "", 0);
        int fl = exec_body(c, n->b, s, &b);
        scope *fs = new_scope(c, s);
        scope_set(c, fs, " filter-block", mk_str_nocopy(c, b.p, b.n));
        to_str_into(c, n->pos, out, eval(c, n->a, fs), 0);
        return fl;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    default: rerr(c, n->pos, "internal error: unknown statement node");
    }
    return FLOW_NORMAL;
}

static int exec_body(ctx *c, const node *n, scope *s, sbuf *out) {
    for (size_t i = 0; i < n->nkids; i++) {
        int f = exec_stmt(c, n->kids[i], s, out);
        if (f != FLOW_NORMAL) return f;
    }
    return FLOW_NORMAL;
}

int jinja_render(const jinja_template *t, const json *vars, char **out, size_t *out_len, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    *out = NULL;
    if (out_len) *out_len = 0;
    ctx *c = calloc(1, sizeof *c);
    if (!c) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->ar.limit = (size_t)512 << 20;
    c->err = err;
    c->errlen = errlen;
    c->src = t->src;
    c->srclen = t->len;
    if (setjmp(c->jb)) {
        arena_free_all(&c->ar);
        free(c);
        return -1;
    }
    c->root = new_scope(c, NULL);
    if (vars) {
        if (vars->type != JSON_OBJECT) rerr(c, 0, "template variables must be a JSON object");
        for (size_t i = 0; i < vars->n; i++) {
            char *name = ralloc(c, vars->key_lens[i] + 1);
            memcpy(name, vars->keys[i], vars->key_lens[i]);
            name[vars->key_lens[i]] = 0;
            scope_set(c, c->root, name, from_json(c, vars->items[i], 0));
        }
    }
    sbuf b = {0};
    sb_add(c, &b, "", 0);
    exec_body(c, t->root, c->root, &b);
    char *res = malloc(b.n + 1);
    if (!res) rerr(c, 0, "out of memory");
    memcpy(res, b.p, b.n);
    res[b.n] = 0;
    *out = res;
    if (out_len) *out_len = b.n;
    arena_free_all(&c->ar);
    free(c);
    return 0;
}
