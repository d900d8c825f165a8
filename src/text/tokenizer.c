/* tokenizer.c - byte-level BPE compatible with Hugging Face `tokenizers` for Qwen's
 * tokenizer.json. See tokenizer.h for the pipeline; this file holds:
 *   - loading (vocabulary, merges, added tokens) into hash tables keyed by ids, so BPE never
 *     hashes strings in its inner loop;
 *   - the added-token splitter (leftmost-longest, like HF's Aho-Corasick with LeftmostLongest);
 *   - NFC via utf8proc;
 *   - a hand-written matcher for Qwen's Split regex with Oniguruma's semantics;
 *   - BPE by merge rank (array scan for short words, heap + linked list for long ones) with a
 *     per-call word cache;
 *   - lossy UTF-8 decoding (Rust's from_utf8_lossy rules) and the streaming decoder. */
#include "text/tokenizer.h"

#include "util/json.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* The only pre-tokenizer regex the hand-written matcher implements (Qwen2/Qwen3). */
static const char QWEN_SPLIT_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const void *p, size_t n) {
    /* FNV-1a, then a final mix so the low bits are usable as a table index. */
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    h ^= h >> 29; h *= 0xbf58476d1ce4e5b9ull; h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

/* Growable byte buffer. */
typedef struct { unsigned char *p; size_t n, cap; } bytebuf;

static int bb_reserve(bytebuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p; b->cap = cap;
    return 0;
}
static int bb_append(bytebuf *b, const void *s, size_t n) {
    if (bb_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* Growable id array. */
typedef struct { int32_t *p; size_t n, cap; } idbuf;

static int ib_push(idbuf *b, int32_t v) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->p, cap * sizeof *p);
        if (!p) return -1;
        b->p = p; b->cap = cap;
    }
    b->p[b->n++] = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                      */

enum { U8_VALID = 0, U8_INVALID = 1, U8_INCOMPLETE = 2 };

/* Classifies the sequence at s[0..n) (n >= 1) as Rust's Utf8Chunks does: a valid character
 * (*len bytes, code point in *cp), an invalid maximal subpart of *len bytes (each becomes one
 * U+FFFD), or a valid but truncated prefix of *len bytes (U8_INCOMPLETE; only at buffer end). */
static int utf8_next(const unsigned char *s, size_t n, size_t *len, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) { *len = 1; *cp = c; return U8_VALID; }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) { need = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else { *len = 1; return U8_INVALID; }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) { *len = i; return U8_INCOMPLETE; }
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) { *len = i; return U8_INVALID; }
        v = (v << 6) | (b & 0x3F);
    }
    *len = need; *cp = v;
    return U8_VALID;
}

static const unsigned char REPLACEMENT[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

/* Appends s[0..n) to out with invalid sequences replaced by U+FFFD. When hold is not NULL,
 * a truncated final prefix is not written but its length is stored in *hold. */
static int utf8_lossy_append(bytebuf *out, const unsigned char *s, size_t n, size_t *hold) {
    size_t i = 0, start = 0;
    if (hold) *hold = 0;
    while (i < n) {
        size_t len; uint32_t cp;
        int r = utf8_next(s + i, n - i, &len, &cp);
        if (r == U8_VALID) { i += len; continue; }
        if (bb_append(out, s + start, i - start)) return -1;
        if (r == U8_INCOMPLETE && hold) { *hold = len; return 0; }
        if (bb_append(out, REPLACEMENT, 3)) return -1;
        i += len;
        start = i;
    }
    return bb_append(out, s + start, i - start);
}

/* ------------------------------------------------------------------------------------------ */
/* Character classes of the Split regex                                                        */

enum { CL_OTHER = 0, CL_L = 1, CL_N = 2, CL_WS = 3, CL_CRLF = 4 };

/* Code points that Oniguruma's Unicode 16.0 tables (used by HF tokenizers) class as letters or
 * numbers but utf8proc 2.8 (Unicode 15.0) leaves unassigned. Measured by running every code
 * point through HF's Split pre-tokenizer and comparing with utf8proc (see docs/TOKENIZER.md). */
static const struct { uint32_t lo, hi; unsigned char cl; } UNICODE16_LN[] = {
    {0x1C89, 0x1C8A, CL_L},   {0xA7CB, 0xA7CD, CL_L},   {0xA7DA, 0xA7DC, CL_L},
    {0x105C0, 0x105F3, CL_L}, {0x10D40, 0x10D49, CL_N}, {0x10D4A, 0x10D65, CL_L},
    {0x10D6F, 0x10D85, CL_L}, {0x10EC2, 0x10EC4, CL_L}, {0x11380, 0x11389, CL_L},
    {0x1138B, 0x1138B, CL_L}, {0x1138E, 0x1138E, CL_L}, {0x11390, 0x113B5, CL_L},
    {0x113B7, 0x113B7, CL_L}, {0x113D1, 0x113D1, CL_L}, {0x113D3, 0x113D3, CL_L},
    {0x116D0, 0x116E3, CL_N}, {0x11BC0, 0x11BE0, CL_L}, {0x11BF0, 0x11BF9, CL_N},
    {0x13460, 0x143FA, CL_L}, {0x16100, 0x1611D, CL_L}, {0x16130, 0x16139, CL_N},
    {0x16D40, 0x16D6C, CL_L}, {0x16D70, 0x16D79, CL_N}, {0x18CFF, 0x18CFF, CL_L},
    {0x1CCF0, 0x1CCF9, CL_N}, {0x1E5D0, 0x1E5ED, CL_L}, {0x1E5F0, 0x1E5F0, CL_L},
    {0x1E5F1, 0x1E5FA, CL_N}, {0x2EBF0, 0x2EE5D, CL_L},
};

static unsigned char ascii_class[128];
static pthread_once_t ascii_class_once = PTHREAD_ONCE_INIT;

static void init_ascii_class(void) {
    for (int c = 0; c < 128; c++) {
        unsigned char cl = CL_OTHER;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) cl = CL_L;
        else if (c >= '0' && c <= '9') cl = CL_N;
        else if (c == '\r' || c == '\n') cl = CL_CRLF;
        else if (c == ' ' || c == '\t' || c == '\v' || c == '\f') cl = CL_WS;
        ascii_class[c] = cl;
    }
}

/* Oniguruma's \s for Unicode text (measured against HF): \t \n \v \f \r, space, U+0085, U+00A0,
 * U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 - i.e. Unicode White_Space. */
static unsigned char class_of(uint32_t cp) {
    if (cp < 128) return ascii_class[cp];
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return CL_WS;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return CL_L;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return CL_N;
    if (cat == UTF8PROC_CATEGORY_CN) {
        for (size_t i = 0; i < sizeof UNICODE16_LN / sizeof UNICODE16_LN[0]; i++)
            if (cp >= UNICODE16_LN[i].lo && cp <= UNICODE16_LN[i].hi) return UNICODE16_LN[i].cl;
    }
    return CL_OTHER;
}

/* ------------------------------------------------------------------------------------------ */
/* The tokenizer                                                                              */

typedef struct {
    int32_t id;
    unsigned char special, normalized, lstrip, rstrip, single_word;
    const unsigned char *content; /* points into the tokenizer's arena */
    size_t len;
} added_token;

/* A merge is packed into one 64-bit slot, (left+1) << 42 | right << 21 | rank, so the table is
 * small enough to stay in cache (BPE is bound by these lookups); 0 marks an empty slot. The
 * merged id is looked up by rank only when a merge is actually applied. */
#define MERGE_BITS 21
#define MERGE_MASK ((1u << MERGE_BITS) - 1)
typedef uint64_t merge_slot;
typedef struct { uint32_t str_off, str_len; int32_t id; } vocab_slot;     /* id -1 = empty */

struct qnext_tokenizer {
    size_t vocab_size;          /* max id + 1 */
    /* Per id: the vocabulary spelling (NUL-terminated) and the decoded bytes. */
    uint32_t *tok_off, *tok_len;    /* into text arena; tok_len UINT32_MAX = no such id */
    uint32_t *dec_off, *dec_len;    /* into bytes arena */
    unsigned char *is_special;
    char *text;                     /* arena of spellings */
    unsigned char *bytes;           /* arena of decoded bytes */
    size_t max_dec_len;
    /* spelling -> id */
    vocab_slot *vmap; size_t vmap_mask;
    /* (left id, right id) -> rank; rank -> merged id */
    merge_slot *mmap; size_t mmap_mask;
    int32_t *merge_new_id;
    /* decoded bytes -> id, only for tokens whose own bytes BPE-encode to exactly that token, so
     * a pre-token found here is done with one lookup (most words are whole tokens) */
    vocab_slot *wmap; size_t wmap_mask;
    int32_t byte_id[256];           /* id of each single byte; -1 if the vocabulary lacks it */
    added_token *added; size_t n_added;
    int any_normalized_added;       /* some added token is matched in normalised text */
    unsigned char added_first[256]; /* bit 1: some raw-matched added token starts with this byte,
                                       bit 2: some normalized-matched one does */
    int nfc;
};

/* The GPT-2 byte <-> printable code point bijection used by ByteLevel. */
static void byte_level_table(uint32_t byte_to_cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

static int vmap_insert(qnext_tokenizer *t, uint32_t off, uint32_t len, int32_t id) {
    uint64_t h = hash_bytes(t->text + off, len);
    for (size_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        vocab_slot *s = &t->vmap[i];
        if (s->id < 0) { s->str_off = off; s->str_len = len; s->id = id; return 0; }
        if (s->str_len == len && memcmp(t->text + s->str_off, t->text + off, len) == 0) {
            s->id = id; /* a later entry (added token) overrides */
            return 1;
        }
    }
}

static int32_t vmap_find(const qnext_tokenizer *t, const char *s, size_t len) {
    uint64_t h = hash_bytes(s, len);
    for (size_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        const vocab_slot *v = &t->vmap[i];
        if (v->id < 0) return -1;
        if (v->str_len == len && memcmp(t->text + v->str_off, s, len) == 0) return v->id;
    }
}

/* The pair part of a slot: (left+1) << 42 | right << 21. */
static inline uint64_t merge_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)(a + 1) << (2 * MERGE_BITS)) | ((uint64_t)(uint32_t)b << MERGE_BITS);
}

/* Rank of the merge (a, b), or UINT32_MAX when there is none. */
static inline uint32_t merge_rank(const qnext_tokenizer *t, int32_t a, int32_t b) {
    uint64_t k = merge_key(a, b);
    for (size_t i = hash_u64(k) & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        uint64_t s = t->mmap[i];
        if ((s & ~(uint64_t)MERGE_MASK) == k) return (uint32_t)(s & MERGE_MASK);
        if (s == 0) return UINT32_MAX;
    }
}

void tokenizer_free(qnext_tokenizer *t) {
    if (!t) return;
    free(t->tok_off); free(t->tok_len); free(t->dec_off); free(t->dec_len); free(t->is_special);
    free(t->text); free(t->bytes); free(t->vmap); free(t->mmap); free(t->merge_new_id); free(t->wmap); free(t->added);
    free(t);
}

static size_t pow2_at_least(size_t n) {
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Encodes one code point as UTF-8 into out (4 bytes room); returns the length. */
static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* ByteLevel decoding of one spelling, as HF's decoder does it: every character maps back to its
 * byte; if any character is outside the byte alphabet the spelling's own UTF-8 is used. */
static size_t byte_level_decode(const unsigned char *s, size_t n, const int16_t cp_to_byte[324],
                                unsigned char *out) {
    size_t o = 0, i = 0;
    while (i < n) {
        size_t len; uint32_t cp;
        if (utf8_next(s + i, n - i, &len, &cp) != U8_VALID || cp >= 324 || cp_to_byte[cp] < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[o++] = (unsigned char)cp_to_byte[cp];
        i += len;
    }
    return o;
}

static int check_string(const json *obj, const char *key, const char *want, int allow_absent) {
    const json *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return allow_absent;
    return v->type == JSON_STRING && strcmp(v->str, want) == 0;
}

/* Accepts exactly the pipeline the matcher implements; anything else is refused so that a
 * different tokenizer cannot be silently mis-tokenized. */
static int check_pipeline(const json *root, qnext_tokenizer *t, char *err, size_t errlen) {
    const json *norm = json_get(root, "normalizer");
    t->nfc = 0;
    if (norm && norm->type != JSON_NULL) {
        if (check_string(norm, "type", "NFC", 0)) t->nfc = 1;
        else {
            set_err(err, errlen, "tokenizer: unsupported normalizer (only NFC or none)");
            return -1;
        }
    }
    const json *pre = json_get(root, "pre_tokenizer");
    const json *split = NULL, *bl = NULL;
    if (pre && check_string(pre, "type", "Sequence", 0)) {
        const json *list = json_get(pre, "pretokenizers");
        if (list && list->type == JSON_ARRAY && list->n == 2) { split = list->items[0]; bl = list->items[1]; }
    }
    int ok = split && bl && check_string(split, "type", "Split", 0) &&
             check_string(split, "behavior", "Isolated", 0) && check_string(bl, "type", "ByteLevel", 0);
    if (ok) {
        int inv = 0, use_regex = 1;
        const json *pat = json_get(split, "pattern");
        ok = pat && check_string(pat, "Regex", QWEN_SPLIT_REGEX, 0) &&
             json_get_bool(split, "invert", 0, &inv) == 0 && !inv &&
             json_get_bool(bl, "use_regex", 1, &use_regex) == 0 && !use_regex;
        int aps = 0;
        ok = ok && json_get_bool(bl, "add_prefix_space", 0, &aps) == 0 && !aps;
    }
    if (!ok) {
        set_err(err, errlen, "tokenizer: unsupported pre_tokenizer (expected Qwen's Split regex + ByteLevel)");
        return -1;
    }
    const json *dec = json_get(root, "decoder");
    if (!dec || !check_string(dec, "type", "ByteLevel", 0)) {
        set_err(err, errlen, "tokenizer: unsupported decoder (expected ByteLevel)");
        return -1;
    }
    const json *model = json_get(root, "model");
    int bf = 0, im = 0;
    if (!model || !check_string(model, "type", "BPE", 1) ||
        !check_string(model, "continuing_subword_prefix", "", 1) ||
        !check_string(model, "end_of_word_suffix", "", 1) ||
        json_get_bool(model, "byte_fallback", 0, &bf) != 0 || bf ||
        json_get_bool(model, "ignore_merges", 0, &im) != 0 || im ||
        (json_get(model, "dropout") && json_get(model, "dropout")->type != JSON_NULL)) {
        set_err(err, errlen, "tokenizer: unsupported model (expected plain byte-level BPE)");
        return -1;
    }
    return 0;
}

static int build_word_map(qnext_tokenizer *t);

static qnext_tokenizer *load_root(json *root, const char *path, char *err, size_t errlen);

qnext_tokenizer *tokenizer_load(const char *path, char *err, size_t errlen) {
    json *root = json_parse_file(path, err, errlen);
    if (!root) return NULL;
    return load_root(root, path, err, errlen);
}

/* tokenizer.json text held in memory (tokenizer_gguf.c builds one from GGUF metadata). */
qnext_tokenizer *tokenizer_load_json_text(const char *text, size_t len, const char *name, char *err, size_t errlen) {
    json *root = json_parse(text, len, err, errlen);
    if (!root) return NULL;
    return load_root(root, name, err, errlen);
}

/* Builds the tokenizer from a parsed tokenizer.json; frees root. */
static qnext_tokenizer *load_root(json *root, const char *path, char *err, size_t errlen) {
    pthread_once(&ascii_class_once, init_ascii_class);
    qnext_tokenizer *t = calloc(1, sizeof *t);
    bytebuf text = {0}, bytes = {0};
    if (!t) { set_err(err, errlen, "tokenizer: out of memory"); json_free(root); return NULL; }
    if (root->type != JSON_OBJECT || check_pipeline(root, t, err, errlen)) goto fail;

    const json *model = json_get(root, "model");
    const json *vocab = json_get(model, "vocab");
    const json *merges = json_get(model, "merges");
    const json *added = json_get(root, "added_tokens");
    if (!vocab || vocab->type != JSON_OBJECT || !merges || merges->type != JSON_ARRAY ||
        (added && added->type != JSON_ARRAY && added->type != JSON_NULL)) {
        set_err(err, errlen, "tokenizer: %s: model.vocab / model.merges / added_tokens missing or malformed", path);
        goto fail;
    }
    size_t n_added = added && added->type == JSON_ARRAY ? added->n : 0;

    /* Ids and sizes. */
    int64_t max_id = -1;
    for (size_t i = 0; i < vocab->n; i++) {
        int64_t id;
        if (!json_as_int64(vocab->items[i], &id) || id < 0 || id > 0x7FFFFFF) {
            set_err(err, errlen, "tokenizer: %s: bad id for vocabulary entry %zu", path, i);
            goto fail;
        }
        if (id > max_id) max_id = id;
    }
    for (size_t i = 0; i < n_added; i++) {
        const json *a = added->items[i];
        int64_t id;
        const json *c = json_get(a, "content");
        if (!json_get(a, "id") || json_get_int(a, "id", -1, &id) || id < 0 || id > 0x7FFFFFF || !c ||
            c->type != JSON_STRING || c->len == 0) {
            set_err(err, errlen, "tokenizer: %s: malformed added token %zu", path, i);
            goto fail;
        }
        if (id > max_id) max_id = id;
    }
    t->vocab_size = (size_t)(max_id + 1);
    size_t V = t->vocab_size;
    t->tok_off = malloc(V * sizeof *t->tok_off);
    t->tok_len = malloc(V * sizeof *t->tok_len);
    t->dec_off = malloc(V * sizeof *t->dec_off);
    t->dec_len = malloc(V * sizeof *t->dec_len);
    t->is_special = calloc(V, 1);
    t->vmap_mask = pow2_at_least((vocab->n + n_added) * 2 + 16) - 1;
    t->vmap = malloc((t->vmap_mask + 1) * sizeof *t->vmap);
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->tok_off || !t->tok_len || !t->dec_off || !t->dec_len || !t->is_special || !t->vmap || !t->added) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < V; i++) { t->tok_len[i] = UINT32_MAX; t->dec_len[i] = 0; t->tok_off[i] = 0; t->dec_off[i] = 0; }
    for (size_t i = 0; i <= t->vmap_mask; i++) t->vmap[i].id = -1;

    /* Spellings into the text arena (each NUL-terminated). Added tokens come last so that they
     * win over a vocabulary entry with the same id, as HF's decoder looks them up first. */
    for (size_t i = 0; i < vocab->n + n_added; i++) {
        const char *s; size_t len; int64_t id;
        if (i < vocab->n) { s = vocab->keys[i]; len = vocab->key_lens[i]; json_as_int64(vocab->items[i], &id); }
        else {
            const json *a = added->items[i - vocab->n];
            const json *c = json_get(a, "content");
            s = c->str; len = c->len; json_get_int(a, "id", -1, &id);
        }
        if (text.n + len + 1 > UINT32_MAX) { set_err(err, errlen, "tokenizer: vocabulary too large"); goto fail; }
        t->tok_off[id] = (uint32_t)text.n;
        t->tok_len[id] = (uint32_t)len;
        if (bb_append(&text, s, len) || bb_append(&text, "", 1)) { set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
    }
    t->text = (char *)text.p; text.p = NULL;
    for (size_t id = 0; id < V; id++)
        if (t->tok_len[id] != UINT32_MAX) vmap_insert(t, t->tok_off[id], t->tok_len[id], (int32_t)id);
    for (size_t i = 0; i < n_added; i++) { /* an added token's spelling wins, as in HF's token_to_id */
        int64_t id;
        json_get_int(added->items[i], "id", -1, &id);
        vmap_insert(t, t->tok_off[id], t->tok_len[id], (int32_t)id);
    }

    /* Decoded bytes per id, and the ids of the 256 single bytes. */
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
    byte_level_table(byte_to_cp);
    for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    unsigned char tmp[4096];
    for (size_t id = 0; id < V; id++) {
        if (t->tok_len[id] == UINT32_MAX) continue;
        const unsigned char *s = (const unsigned char *)t->text + t->tok_off[id];
        size_t n = t->tok_len[id];
        unsigned char *buf = n <= sizeof tmp ? tmp : malloc(n);
        if (!buf) { set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
        size_t m = byte_level_decode(s, n, cp_to_byte, buf);
        t->dec_off[id] = (uint32_t)bytes.n;
        t->dec_len[id] = (uint32_t)m;
        if (m > t->max_dec_len) t->max_dec_len = m;
        int rc = bb_append(&bytes, buf, m);
        if (buf != tmp) free(buf);
        if (rc) { set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
    }
    t->bytes = bytes.p; bytes.p = NULL;
    if (!t->bytes) t->bytes = calloc(1, 1);
    for (int b = 0; b < 256; b++) {
        char sp[4];
        size_t n = utf8_put(byte_to_cp[b], sp);
        t->byte_id[b] = vmap_find(t, sp, n);
    }

    /* Added tokens. */
    for (size_t i = 0; i < n_added; i++) {
        const json *a = added->items[i];
        added_token *at = &t->added[t->n_added];
        int64_t id; int sp = 0, nm = 0, ls = 0, rs = 0, sw = 0;
        json_get_int(a, "id", -1, &id);
        if (json_get_bool(a, "special", 0, &sp) || json_get_bool(a, "normalized", 0, &nm) ||
            json_get_bool(a, "lstrip", 0, &ls) || json_get_bool(a, "rstrip", 0, &rs) ||
            json_get_bool(a, "single_word", 0, &sw)) {
            set_err(err, errlen, "tokenizer: %s: bad flags on added token %zu", path, i);
            goto fail;
        }
        at->id = (int32_t)id;
        at->special = (unsigned char)sp; at->normalized = (unsigned char)nm;
        at->lstrip = (unsigned char)ls; at->rstrip = (unsigned char)rs; at->single_word = (unsigned char)sw;
        at->content = (const unsigned char *)t->text + t->tok_off[id];
        at->len = t->tok_len[id];
        /* tok_off[id] holds the added token's own spelling: added tokens were stored last. */
        t->added_first[at->content[0]] |= nm ? 2 : 1;
        t->any_normalized_added |= nm;
        if (sp) t->is_special[id] = 1;
        t->n_added++;
    }

    /* Merges: pair of spellings -> (rank, merged id). */
    if (V > MERGE_MASK || merges->n > MERGE_MASK) {
        set_err(err, errlen, "tokenizer: %s: more than %u tokens or merges", path, MERGE_MASK);
        goto fail;
    }
    t->mmap_mask = pow2_at_least(merges->n + merges->n / 2 + 16) - 1; /* load factor <= 2/3 */
    t->mmap = calloc(t->mmap_mask + 1, sizeof *t->mmap);
    t->merge_new_id = malloc((merges->n ? merges->n : 1) * sizeof *t->merge_new_id);
    if (!t->mmap || !t->merge_new_id) { set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
    char *joined = NULL;
    size_t joined_cap = 0;
    for (size_t r = 0; r < merges->n; r++) {
        const json *m = merges->items[r];
        const char *a, *b; size_t al, bl;
        if (m->type == JSON_ARRAY && m->n == 2 && m->items[0]->type == JSON_STRING &&
            m->items[1]->type == JSON_STRING) {
            a = m->items[0]->str; al = m->items[0]->len; b = m->items[1]->str; bl = m->items[1]->len;
        } else if (m->type == JSON_STRING && memchr(m->str, ' ', m->len)) { /* older "a b" form */
            const char *sp = memchr(m->str, ' ', m->len);
            a = m->str; al = (size_t)(sp - m->str); b = sp + 1; bl = m->len - al - 1;
        } else {
            free(joined);
            set_err(err, errlen, "tokenizer: %s: malformed merge %zu", path, r);
            goto fail;
        }
        int32_t ia = vmap_find(t, a, al), ib = vmap_find(t, b, bl);
        if (al + bl > joined_cap) {
            joined_cap = (al + bl) * 2;
            char *p = realloc(joined, joined_cap);
            if (!p) { free(joined); set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
            joined = p;
        }
        memcpy(joined, a, al); memcpy(joined + al, b, bl);
        int32_t ic = vmap_find(t, joined, al + bl);
        if (ia < 0 || ib < 0 || ic < 0) {
            free(joined);
            set_err(err, errlen, "tokenizer: %s: merge %zu uses a token missing from the vocabulary", path, r);
            goto fail;
        }
        uint64_t k = merge_key(ia, ib);
        t->merge_new_id[r] = ic;
        for (size_t i = hash_u64(k) & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
            merge_slot *s = &t->mmap[i];
            if ((*s & ~(uint64_t)MERGE_MASK) == k) break; /* duplicate: the lower rank stays */
            if (*s == 0) { *s = k | (uint64_t)r; break; }
        }
    }
    free(joined);
    if (build_word_map(t)) { set_err(err, errlen, "tokenizer: out of memory"); goto fail; }
    json_free(root);
    return t;

fail:
    free(text.p); free(bytes.p);
    tokenizer_free(t);
    json_free(root);
    return NULL;
}

qnext_tokenizer *tokenizer_load_dir(const char *dir, char *err, size_t errlen) {
    size_t n = strlen(dir);
    char *path = malloc(n + 20);
    if (!path) { set_err(err, errlen, "tokenizer: out of memory"); return NULL; }
    snprintf(path, n + 20, "%s%stokenizer.json", dir, n && dir[n - 1] == '/' ? "" : "/");
    qnext_tokenizer *t = tokenizer_load(path, err, errlen);
    free(path);
    return t;
}

size_t tokenizer_vocab_size(const qnext_tokenizer *t) { return t ? t->vocab_size : 0; }

int32_t tokenizer_token_id(const qnext_tokenizer *t, const char *s) {
    if (!t || !s) return -1;
    return vmap_find(t, s, strlen(s));
}

const char *tokenizer_id_to_token(const qnext_tokenizer *t, int32_t id) {
    if (!t || id < 0 || (size_t)id >= t->vocab_size || t->tok_len[id] == UINT32_MAX) return NULL;
    return t->text + t->tok_off[id];
}

int tokenizer_is_special(const qnext_tokenizer *t, int32_t id) {
    return t && id >= 0 && (size_t)id < t->vocab_size && t->is_special[id];
}

int tokenizer_is_added(const qnext_tokenizer *t, int32_t id) {
    if (!t) return 0;
    for (size_t k = 0; k < t->n_added; k++)
        if (t->added[k].id == id) return 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                   */

/* Per-call scratch: the word cache and buffers, so concurrent calls share nothing mutable. */
typedef struct { uint64_t hash; uint32_t key_off, key_len, ids_off, ids_n; } cache_slot;

typedef struct {
    const qnext_tokenizer *t;
    idbuf out;
    /* pre-tokenizer arrays, per segment */
    uint32_t *cp, *off; unsigned char *cls; size_t cap_chars;
    /* BPE scratch */
    int32_t *sym; uint32_t *rank; int32_t *prev, *next; size_t cap_sym;
    struct heap_item { uint32_t rank; uint32_t pos; } *heap; size_t cap_heap;
    /* word cache (enabled for long inputs) */
    cache_slot *cache; size_t cache_mask, cache_used;
    bytebuf cache_keys; idbuf cache_ids;
    bytebuf norm;
    int failed;
} enc_state;

enum { CACHE_MAX_WORD = 64, CACHE_MAX_ENTRIES = 1 << 16, CACHE_MIN_INPUT = 4096, BPE_HEAP_THRESHOLD = 96 };

static int ensure_sym(enc_state *st, size_t n) {
    if (n <= st->cap_sym) return 0;
    size_t cap = pow2_at_least(n);
    int32_t *a = realloc(st->sym, cap * sizeof *a); if (a) st->sym = a;
    uint32_t *b = realloc(st->rank, cap * sizeof *b); if (b) st->rank = b;
    int32_t *c = realloc(st->prev, cap * sizeof *c); if (c) st->prev = c;
    int32_t *d = realloc(st->next, cap * sizeof *d); if (d) st->next = d;
    if (!a || !b || !c || !d) return -1;
    st->cap_sym = cap;
    return 0;
}

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < it.rank || (h[p].rank == it.rank && h[p].pos < it.pos)) break;
        h[i] = h[p]; i = p;
    }
    h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n) {
    struct heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos))) c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos)) break;
        h[i] = h[c]; i = c;
    }
    h[i] = last;
    return top;
}

/* BPE over the bytes of one pre-token: repeatedly merge the adjacent pair with the lowest merge
 * rank (leftmost on ties), which is what HF's priority-queue implementation computes. Appends
 * the resulting ids to dst. */
static int bpe_word(enc_state *st, const unsigned char *w, size_t n, idbuf *dst) {
    const qnext_tokenizer *t = st->t;
    if (ensure_sym(st, n + 1)) return -1;
    int32_t *sym = st->sym;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[w[i]] >= 0) sym[m++] = t->byte_id[w[i]]; /* no unk token: skip, as HF */
    if (m <= BPE_HEAP_THRESHOLD) {
        /* Short word: keep the rank of each adjacent pair in an array and rescan it; only the
         * two pairs next to a merge need a new hash lookup. */
        uint32_t *rank = st->rank;
        for (size_t i = 0; i + 1 < m; i++) rank[i] = merge_rank(t, sym[i], sym[i + 1]);
        while (m > 1) {
            size_t best = 0;
            uint32_t br = UINT32_MAX;
            for (size_t i = 0; i + 1 < m; i++)
                if (rank[i] < br) { br = rank[i]; best = i; }
            if (br == UINT32_MAX) break;
            sym[best] = t->merge_new_id[br];
            memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
            if (m >= best + 3) memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
            m--;
            if (best > 0) rank[best - 1] = merge_rank(t, sym[best - 1], sym[best]);
            if (best + 1 < m) rank[best] = merge_rank(t, sym[best], sym[best + 1]);
        }
        for (size_t i = 0; i < m; i++)
            if (ib_push(dst, sym[i])) return -1;
        return 0;
    }
    /* Long word: doubly linked symbols and a min-heap of candidate merges (rank, position);
     * stale entries are recognised on pop and skipped. */
    int32_t *prev = st->prev, *next = st->next;
    if (st->cap_heap < 2 * m + 8) {
        size_t cap = 2 * m + 8; /* at most m-1 initial entries + 2 per merge */
        struct heap_item *h = realloc(st->heap, cap * sizeof *h);
        if (!h) return -1;
        st->heap = h; st->cap_heap = cap;
    }
    struct heap_item *heap = st->heap;
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) { prev[i] = (int32_t)i - 1; next[i] = i + 1 < m ? (int32_t)i + 1 : -1; }
    for (size_t i = 0; i + 1 < m; i++) {
        uint32_t r = merge_rank(t, sym[i], sym[i + 1]);
        if (r != UINT32_MAX) heap_push(heap, &hn, (struct heap_item){r, (uint32_t)i});
    }
    while (hn > 0) {
        struct heap_item it = heap_pop(heap, &hn);
        int32_t p = (int32_t)it.pos;
        if (sym[p] < 0 || next[p] < 0) continue;      /* merged away, or now the last symbol */
        int32_t q = next[p];
        if (merge_rank(t, sym[p], sym[q]) != it.rank) continue; /* the pair changed since queued */
        sym[p] = t->merge_new_id[it.rank];
        sym[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        if (prev[p] >= 0) {
            uint32_t r = merge_rank(t, sym[prev[p]], sym[p]);
            if (r != UINT32_MAX) heap_push(heap, &hn, (struct heap_item){r, (uint32_t)prev[p]});
        }
        if (next[p] >= 0) {
            uint32_t r = merge_rank(t, sym[p], sym[next[p]]);
            if (r != UINT32_MAX) heap_push(heap, &hn, (struct heap_item){r, (uint32_t)p});
        }
    }
    for (int32_t i = m ? 0 : -1; i >= 0; i = next[i])
        if (ib_push(dst, sym[i])) return -1;
    return 0;
}

static int32_t wmap_find(const qnext_tokenizer *t, const unsigned char *w, size_t n) {
    uint64_t h = hash_bytes(w, n);
    for (size_t i = h & t->wmap_mask;; i = (i + 1) & t->wmap_mask) {
        const vocab_slot *v = &t->wmap[i];
        if (v->id < 0) return -1;
        if (v->str_len == n && memcmp(t->bytes + v->str_off, w, n) == 0) return v->id;
    }
}

/* Fills t->wmap: every vocabulary token whose decoded bytes BPE-merge back into that single
 * token. For those words the lookup gives exactly what BPE would, by construction. */
static int build_word_map(qnext_tokenizer *t) {
    t->wmap_mask = pow2_at_least(t->vocab_size * 2 + 16) - 1;
    t->wmap = malloc((t->wmap_mask + 1) * sizeof *t->wmap);
    if (!t->wmap) return -1;
    for (size_t i = 0; i <= t->wmap_mask; i++) t->wmap[i].id = -1;
    enc_state st = {0};
    st.t = t;
    idbuf res = {0};
    int rc = 0;
    for (size_t id = 0; id < t->vocab_size && !rc; id++) {
        if (t->tok_len[id] == UINT32_MAX || t->dec_len[id] == 0) continue;
        int added = 0;
        for (size_t k = 0; k < t->n_added; k++) added |= t->added[k].id == (int32_t)id;
        if (added) continue;
        res.n = 0;
        const unsigned char *w = t->bytes + t->dec_off[id];
        size_t n = t->dec_len[id];
        if (bpe_word(&st, w, n, &res)) { rc = -1; break; }
        if (res.n != 1 || res.p[0] != (int32_t)id) continue;
        uint64_t h = hash_bytes(w, n);
        for (size_t i = h & t->wmap_mask;; i = (i + 1) & t->wmap_mask) {
            vocab_slot *v = &t->wmap[i];
            if (v->id < 0) { *v = (vocab_slot){t->dec_off[id], (uint32_t)n, (int32_t)id}; break; }
            if (v->str_len == n && memcmp(t->bytes + v->str_off, w, n) == 0) break;
        }
    }
    free(res.p); free(st.sym); free(st.rank); free(st.prev); free(st.next); free(st.heap);
    return rc;
}

/* BPE through the whole-token map and the per-call word cache. */
static void encode_word(enc_state *st, const unsigned char *w, size_t n) {
    if (st->failed || n == 0) return;
    if (n <= st->t->max_dec_len) {
        int32_t id = wmap_find(st->t, w, n);
        if (id >= 0) { if (ib_push(&st->out, id)) st->failed = 1; return; }
    }
    if (!st->cache || n > CACHE_MAX_WORD) {
        if (bpe_word(st, w, n, &st->out)) st->failed = 1;
        return;
    }
    uint64_t h = hash_bytes(w, n);
    size_t i = h & st->cache_mask;
    for (;; i = (i + 1) & st->cache_mask) {
        cache_slot *c = &st->cache[i];
        if (c->key_len == 0) break;
        if (c->hash == h && c->key_len == n && memcmp(st->cache_keys.p + c->key_off, w, n) == 0) {
            for (uint32_t k = 0; k < c->ids_n; k++)
                if (ib_push(&st->out, st->cache_ids.p[c->ids_off + k])) { st->failed = 1; return; }
            return;
        }
    }
    size_t start = st->out.n;
    if (bpe_word(st, w, n, &st->out)) { st->failed = 1; return; }
    if (st->cache_used * 2 >= st->cache_mask) return; /* keep the load factor under 1/2 */
    size_t key_off = st->cache_keys.n, ids_off = st->cache_ids.n;
    if (bb_append(&st->cache_keys, w, n)) return; /* the cache is optional: just stop filling it */
    for (size_t k = start; k < st->out.n; k++)
        if (ib_push(&st->cache_ids, st->out.p[k])) { st->cache_ids.n = ids_off; return; }
    st->cache[i] = (cache_slot){h, (uint32_t)key_off, (uint32_t)n, (uint32_t)ids_off, (uint32_t)(st->out.n - start)};
    st->cache_used++;
}

/* Qwen's Split regex over s[0..n), calling encode_word on each piece. The alternatives are
 * tried in order at each position, as a backtracking engine (Oniguruma) does:
 *   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)   2 [^\r\n\p{L}\p{N}]?\p{L}+   3 \p{N}
 *   4 ` ?[^\s\p{L}\p{N}]+[\r\n]*`    5 \s*[\r\n]+   6 \s+(?!\S)   7 \s+
 * Every character matches one of them, so the pieces cover the text. */
static void pre_tokenize(enc_state *st, const unsigned char *s, size_t n) {
    if (n == 0 || st->failed) return;
    if (n + 1 > st->cap_chars) {
        size_t cap = pow2_at_least(n + 1);
        uint32_t *a = realloc(st->cp, cap * sizeof *a); if (a) st->cp = a;
        uint32_t *b = realloc(st->off, cap * sizeof *b); if (b) st->off = b;
        unsigned char *c = realloc(st->cls, cap); if (c) st->cls = c;
        if (!a || !b || !c) { st->failed = 1; return; }
        st->cap_chars = cap;
    }
    uint32_t *cp = st->cp, *off = st->off;
    unsigned char *cls = st->cls;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t len; uint32_t c;
        off[m] = (uint32_t)i;
        if (s[i] < 0x80) { cp[m] = s[i]; cls[m] = ascii_class[s[i]]; i++; m++; continue; }
        if (utf8_next(s + i, n - i, &len, &c) == U8_VALID) { cp[m] = c; cls[m] = class_of(c); i += len; }
        else { cp[m] = 0xFFFD; cls[m] = CL_OTHER; i += 1; } /* a stray byte is "other" */
        m++;
    }
    off[m] = (uint32_t)n;
#define IS_WS(c) ((c) == CL_WS || (c) == CL_CRLF)
    size_t i = 0;
    while (i < m && !st->failed) {
        size_t j = i + 1;
        unsigned char c = cls[i];
        if (cp[i] == '\'' && i + 1 < m) {
            uint32_t a = cp[i + 1] | (cp[i + 1] < 128 ? 0x20 : 0); /* ASCII lower case */
            uint32_t b = i + 2 < m ? (cp[i + 2] | (cp[i + 2] < 128 ? 0x20 : 0)) : 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd' || cp[i + 1] == 0x17F /* ſ folds to s */) { j = i + 2; goto emit; }
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) { j = i + 3; goto emit; }
        }
        if (c == CL_L || (c != CL_CRLF && c != CL_N && i + 1 < m && cls[i + 1] == CL_L)) {
            j = c == CL_L ? i + 1 : i + 2;
            while (j < m && cls[j] == CL_L) j++;
            goto emit;
        }
        if (c == CL_N) goto emit;
        if (c == CL_OTHER || (cp[i] == ' ' && i + 1 < m && cls[i + 1] == CL_OTHER)) {
            j = c == CL_OTHER ? i + 1 : i + 2;
            while (j < m && cls[j] == CL_OTHER) j++;
            while (j < m && cls[j] == CL_CRLF) j++;
            goto emit;
        }
        /* whitespace: find the run, then rules 5, 6, 7 */
        {
            size_t e = i, last_nl = (size_t)-1;
            while (e < m && IS_WS(cls[e])) { if (cls[e] == CL_CRLF) last_nl = e; e++; }
            if (last_nl != (size_t)-1) j = last_nl + 1;
            else if (e == m) j = e;
            else if (e - i >= 2) j = e - 1;
            else j = i + 1;
        }
    emit:
        encode_word(st, s + off[i], off[j] - off[i]);
        i = j;
    }
#undef IS_WS
}

/* Code points that HF's NFC leaves alone although utf8proc (Unicode 15) would reorder or compose
 * them: HF's normalizer uses Unicode 9.0 data, so combining marks added later have combining
 * class 0 there (they block reordering and composition like any starter), and the Unicode 13
 * composition U+11935 U+11930 -> U+11938 is unknown to it. Measured by comparing HF's NFC with
 * utf8proc's on every code point between marks and on every canonical decomposition. */
static const struct { uint32_t lo, hi; } HF_NFC_OPAQUE[] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},     {0xC3C, 0xC3C},
    {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},   {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
    {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97},
    {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

static int hf_nfc_opaque(uint32_t cp) {
    if (cp < 0x7FD) return 0;
    size_t lo = 0, hi = sizeof HF_NFC_OPAQUE / sizeof HF_NFC_OPAQUE[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < HF_NFC_OPAQUE[mid].lo) hi = mid;
        else if (cp > HF_NFC_OPAQUE[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* 1 when NFC can neither change the code point nor combine it with what precedes it, so a
 * normalisation boundary lies just before it (UAX #15 quick-check idea, conservative): a starter
 * (ccc 0) without canonical decomposition that is not the second element of any composition.
 * Precomposed letters above U+02FF count as not inert; that only costs speed. */
static int nfc_inert(uint32_t cp) {
    if (cp < 0x300) return 1; /* Latin-1 / Latin Extended: all NFC_QC=Yes starters */
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2)) return 0; /* Hangul V/T jamo */
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class != 0) return 0;
    if (p->comb_index != UINT16_MAX && (p->comb_index & 0x8000)) return 0; /* second of a pair */
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return 0;   /* canonical decomposition */
    return 1;
}

/* NFC of s[0..n): returns s itself when nothing can change, else st->norm. Only the regions
 * around non-inert code points go through utf8proc (whole-text NFC was the largest cost of
 * encoding); invalid UTF-8 bytes (only possible from C callers) are kept as they are. */
static const unsigned char *normalize(enc_state *st, const unsigned char *s, size_t n, size_t *out_n) {
    *out_n = n;
    if (!st->t->nfc) return s;
    size_t i = 0, copied = 0, boundary = 0;
    int changed = 0;
    st->norm.n = 0;
    while (i < n) {
        if (s[i] < 0x80) { boundary = i++; continue; }
        size_t len; uint32_t c;
        int r8 = utf8_next(s + i, n - i, &len, &c);
        /* nothing combines across a stray byte or an HF-opaque code point: copy it, boundary after */
        if (r8 != U8_VALID || hf_nfc_opaque(c)) { i += len; boundary = i; continue; }
        if (nfc_inert(c)) { boundary = i; i += len; continue; }
        /* Normalise from the last boundary to the next inert code point. */
        size_t j = i + len;
        while (j < n) {
            size_t l2; uint32_t c2;
            if (s[j] < 0x80 || utf8_next(s + j, n - j, &l2, &c2) != U8_VALID || nfc_inert(c2) || hf_nfc_opaque(c2))
                break;
            j += l2;
        }
        utf8proc_uint8_t *res = NULL;
        utf8proc_ssize_t r = utf8proc_map(s + boundary, (utf8proc_ssize_t)(j - boundary), &res,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        int rc = bb_append(&st->norm, s + copied, boundary - copied);
        rc |= r >= 0 ? bb_append(&st->norm, res, (size_t)r) : bb_append(&st->norm, s + boundary, j - boundary);
        free(res);
        if (rc) { st->failed = 1; return s; }
        changed = 1;
        copied = boundary = i = j;
    }
    if (!changed) return s;
    if (bb_append(&st->norm, s + copied, n - copied)) { st->failed = 1; return s; }
    *out_n = st->norm.n;
    return st->norm.p;
}

/* Unicode White_Space, as Rust's char::is_whitespace (used by lstrip/rstrip). */
static int is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decodes the code point that ends just before s+i (i > 0). */
static uint32_t cp_before(const unsigned char *s, size_t i, size_t *len) {
    size_t k = i - 1;
    while (k > 0 && i - k < 4 && (s[k] & 0xC0) == 0x80) k--;
    size_t l; uint32_t c;
    if (utf8_next(s + k, i - k, &l, &c) == U8_VALID && k + l == i) { *len = l; return c; }
    *len = 1;
    return 0xFFFD;
}

static int is_word_char(uint32_t c) {
    unsigned char k = c < 128 ? ascii_class[c] : class_of(c);
    return k == CL_L || k == CL_N || c == '_';
}

/* Finds the leftmost-longest added token in s[from..n) among those whose `normalized` flag is
 * `normalized_pass`; returns 1 and the match [*ms, *me) (widened by lstrip/rstrip). */
static int find_added(const qnext_tokenizer *t, const unsigned char *s, size_t from, size_t n,
                      int normalized_pass, int parse_special, size_t *ms, size_t *me, int32_t *id) {
    unsigned char bit = normalized_pass ? 2 : 1;
    for (size_t i = from; i < n; i++) {
        if (!(t->added_first[s[i]] & bit)) continue;
        const added_token *best = NULL;
        for (size_t k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized_pass || (!parse_special && a->special)) continue;
            if (a->len > n - i || memcmp(s + i, a->content, a->len) != 0) continue;
            if (a->single_word) {
                size_t l; uint32_t c;
                if (i > 0 && is_word_char(cp_before(s, i, &l))) continue;
                if (i + a->len < n && utf8_next(s + i + a->len, n - i - a->len, &l, &c) == U8_VALID && is_word_char(c)) continue;
            }
            if (!best || a->len > best->len) best = a;
        }
        if (!best) continue;
        size_t a0 = i, a1 = i + best->len;
        if (best->lstrip)
            while (a0 > from) {
                size_t l; uint32_t c = cp_before(s, a0, &l);
                if (!is_white_space(c)) break;
                a0 -= l;
            }
        if (best->rstrip)
            while (a1 < n) {
                size_t l; uint32_t c;
                if (utf8_next(s + a1, n - a1, &l, &c) != U8_VALID || !is_white_space(c)) break;
                a1 += l;
            }
        *ms = a0; *me = a1; *id = best->id;
        return 1;
    }
    return 0;
}

/* Normalises and pre-tokenizes a piece of text that holds no raw-matched added token; tokens
 * flagged normalized=true are looked for in the normalised text. */
static void encode_plain(enc_state *st, const unsigned char *s, size_t n, int parse_special) {
    if (n == 0 || st->failed) return;
    size_t nn;
    const unsigned char *ns = normalize(st, s, n, &nn);
    if (st->failed) return;
    /* ns may live in st->norm, which nothing below touches until the next piece. */
    size_t pos = 0, ms, me; int32_t id;
    while (pos < nn && st->t->any_normalized_added &&
           find_added(st->t, ns, pos, nn, 1, parse_special, &ms, &me, &id)) {
        pre_tokenize(st, ns + pos, ms - pos);
        if (ib_push(&st->out, id)) st->failed = 1;
        pos = me;
    }
    pre_tokenize(st, ns + pos, nn - pos);
}

int tokenizer_encode_ex(const qnext_tokenizer *t, const char *text, size_t len, int parse_special,
                        int32_t **ids_out, size_t *n_out) {
    if (!ids_out || !n_out) return -1;
    *ids_out = NULL; *n_out = 0;
    if (!t || (!text && len)) return -1;
    if (len == 0) return 0;
    if (len >= UINT32_MAX) return -1; /* offsets inside a piece are 32-bit */
    enc_state st = {0};
    st.t = t;
    if (len >= CACHE_MIN_INPUT) { /* a cache pays off only when words repeat */
        /* sized to the input (about one slot per 4 bytes), at most 2 * CACHE_MAX_ENTRIES */
        st.cache_mask = pow2_at_least(len / 4 < CACHE_MAX_ENTRIES * 2 ? len / 4 : CACHE_MAX_ENTRIES * 2) - 1;
        st.cache = calloc(st.cache_mask + 1, sizeof *st.cache);
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0, ms, me; int32_t id;
    while (!st.failed && pos < len && find_added(t, s, pos, len, 0, parse_special, &ms, &me, &id)) {
        encode_plain(&st, s + pos, ms - pos, parse_special);
        if (ib_push(&st.out, id)) st.failed = 1;
        pos = me;
    }
    if (!st.failed) encode_plain(&st, s + pos, len - pos, parse_special);
    free(st.cp); free(st.off); free(st.cls); free(st.sym); free(st.rank); free(st.prev); free(st.next);
    free(st.heap); free(st.cache); free(st.cache_keys.p); free(st.cache_ids.p); free(st.norm.p);
    if (st.failed) { free(st.out.p); return -1; }
    *ids_out = st.out.p;
    *n_out = st.out.n;
    if (st.out.n == 0) { free(st.out.p); *ids_out = NULL; }
    return 0;
}

int tokenizer_encode(const qnext_tokenizer *t, const char *text, size_t len, int32_t **ids_out, size_t *n_out) {
    return tokenizer_encode_ex(t, text, len, 1, ids_out, n_out);
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                   */

static int id_known(const qnext_tokenizer *t, int32_t id) {
    return id >= 0 && (size_t)id < t->vocab_size && t->tok_len[id] != UINT32_MAX;
}

const unsigned char *tokenizer_token_bytes(const qnext_tokenizer *t, int32_t id, size_t *len) {
    if (!t || !id_known(t, id)) { *len = 0; return NULL; }
    *len = t->dec_len[id];
    return t->bytes + t->dec_off[id];
}

int tokenizer_decode(const qnext_tokenizer *t, const int32_t *ids, size_t n, char **text_out, size_t *len_out) {
    if (!text_out) return -1;
    *text_out = NULL;
    if (len_out) *len_out = 0;
    if (!t || (!ids && n)) return -1;
    bytebuf raw = {0}, out = {0};
    for (size_t i = 0; i < n; i++)
        if (id_known(t, ids[i]) && bb_append(&raw, t->bytes + t->dec_off[ids[i]], t->dec_len[ids[i]])) goto oom;
    if (utf8_lossy_append(&out, raw.p, raw.n, NULL) || bb_reserve(&out, 1)) goto oom;
    out.p[out.n] = 0;
    free(raw.p);
    *text_out = (char *)out.p;
    if (len_out) *len_out = out.n;
    return 0;
oom:
    free(raw.p); free(out.p);
    return -1;
}

void tokenizer_stream_init(tokenizer_stream *s, const qnext_tokenizer *tok) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
}

size_t tokenizer_stream_out_max(const qnext_tokenizer *t) {
    /* Worst case: held bytes + one token, every byte invalid (3 bytes of U+FFFD each). */
    return 3 * ((t ? t->max_dec_len : 0) + 4);
}

size_t tokenizer_stream_put(tokenizer_stream *s, int32_t id, char *out, size_t cap) {
    const qnext_tokenizer *t = s->tok;
    if (!t || !out || cap < tokenizer_stream_out_max(t)) return (size_t)-1;
    if (!id_known(t, id)) return 0; /* unknown ids are skipped, as in tokenizer_decode */
    size_t len = t->dec_len[id];
    unsigned char buf[4 + 512], *in = len + s->n_pending <= sizeof buf ? buf : malloc(len + s->n_pending);
    if (!in) return (size_t)-1;
    memcpy(in, s->pending, s->n_pending);
    memcpy(in + s->n_pending, t->bytes + t->dec_off[id], len);
    size_t n = s->n_pending + len, hold = 0;
    /* Same rules as the whole-text decoder, but a truncated tail is held back. The output
     * cannot exceed 3 bytes per input byte, which cap guarantees. */
    bytebuf o = {0};
    int rc = utf8_lossy_append(&o, in, n, &hold);
    size_t wrote = (size_t)-1;
    if (rc == 0 && o.n <= cap) {
        memcpy(out, o.p, o.n);
        memcpy(s->pending, in + n - hold, hold);
        s->n_pending = hold;
        wrote = o.n;
    }
    free(o.p);
    if (in != buf) free(in);
    return wrote;
}

size_t tokenizer_stream_flush(tokenizer_stream *s, char *out, size_t cap) {
    if (s->n_pending == 0) return 0;
    if (!out || cap < 3) return (size_t)-1;
    /* A held prefix is one maximal subpart: from_utf8_lossy gives one U+FFFD for it. */
    memcpy(out, REPLACEMENT, 3);
    s->n_pending = 0;
    return 3;
}
