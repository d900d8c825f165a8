/* tokenizer_gguf.c - rebuilds a tokenizer.json document from the tokenizer metadata of a
 * GGUF file and loads it with the ordinary tokenizer loader.
 *
 * llama.cpp's converter stores a GPT-2-style BPE tokenizer as: tokenizer.ggml.tokens (the
 * spelling of every id), token_type (1 NORMAL, 3 CONTROL = special added token, 4
 * USER_DEFINED = non-special added token, 5 UNUSED = padding up to the model's vocab size,
 * 2 UNKNOWN, 6 BYTE), merges ("left right", by rank), and tokenizer.ggml.pre naming the
 * pre-tokenizer. The added-token flags lstrip/rstrip/single_word/normalized are not stored;
 * Qwen's added tokens have them all false, which is what is rebuilt here. pre "qwen2" is
 * Qwen2/Qwen3's Split regex + ByteLevel with the NFC normalizer of their tokenizer.json; it is
 * the only pre-tokenizer the tokenizer implements, so any other value is refused. */
#include "text/tokenizer_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "text/chat_template.h"
#include "util/json.h"

static const char QWEN2_REGEX_JSON[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|"
    "\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+";

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string literal: quotes, backslash and control characters escaped; other bytes as is. */
static void sb_json_string(sbuf *b, const char *s, size_t n) {
    sb_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_put(b, s + run, i - run);
        char esc[8];
        if (c == '"') sb_put(b, "\\\"", 2);
        else if (c == '\\') sb_put(b, "\\\\", 2);
        else { snprintf(esc, sizeof esc, "\\u%04x", c); sb_put(b, esc, 6); }
        run = i + 1;
    }
    sb_put(b, s + run, n - run);
    sb_put(b, "\"", 1);
}

qnext_tokenizer *tokenizer_load_gguf(const gguf_file *g, char *err, size_t errlen) {
    const char *model, *pre;
    uint64_t len;
    if (gguf_get_str(g, "tokenizer.ggml.model", &model, &len) != 1) {
        snprintf(err, errlen, "GGUF: no tokenizer metadata (tokenizer.ggml.model)");
        return NULL;
    }
    if (strcmp(model, "gpt2")) {
        snprintf(err, errlen, "GGUF: tokenizer model '%s' is not supported (only gpt2-style BPE)", model);
        return NULL;
    }
    if (gguf_get_str(g, "tokenizer.ggml.pre", &pre, &len) != 1 || strcmp(pre, "qwen2")) {
        snprintf(err, errlen, "GGUF: pre-tokenizer '%s' is not supported (only qwen2)",
                 gguf_find_key(g, "tokenizer.ggml.pre") ? pre : "(none)");
        return NULL;
    }
    const void *tv, *yv, *mv;
    uint64_t n_tok, n_types, n_merges;
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &tv, &n_tok) != 1 ||
        gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &mv, &n_merges) != 1) {
        snprintf(err, errlen, "GGUF: tokenizer.ggml.tokens / merges missing or not string arrays");
        return NULL;
    }
    const gguf_kv *tk = gguf_find_key(g, "tokenizer.ggml.token_type");
    if (!tk || tk->type != GGUF_TYPE_ARRAY || (tk->arr_type != GGUF_TYPE_INT32 && tk->arr_type != GGUF_TYPE_UINT32)) {
        snprintf(err, errlen, "GGUF: tokenizer.ggml.token_type missing or not an int32 array");
        return NULL;
    }
    yv = tk->arr;
    n_types = tk->arr_n;
    if (n_types != n_tok) {
        snprintf(err, errlen, "GGUF: %llu token types for %llu tokens", (unsigned long long)n_types,
                 (unsigned long long)n_tok);
        return NULL;
    }
    const gguf_string *toks = tv, *merges = mv;
    const int32_t *types = yv;
    sbuf b = {0};
    sb_str(&b, "{\"added_tokens\":[");
    int first = 1;
    for (uint64_t i = 0; i < n_tok; i++) {
        if (types[i] != 3 && types[i] != 4) continue;
        char head[96];
        snprintf(head, sizeof head, "%s{\"id\":%llu,\"content\":", first ? "" : ",", (unsigned long long)i);
        sb_str(&b, head);
        sb_json_string(&b, toks[i].str, toks[i].len);
        sb_str(&b, types[i] == 3 ? ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}"
                                 : ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":false}");
        first = 0;
    }
    sb_str(&b, "],\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
               "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"");
    sb_str(&b, QWEN2_REGEX_JSON);
    sb_str(&b, "\"},\"behavior\":\"Isolated\",\"invert\":false},"
               "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]},"
               "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{");
    first = 1;
    for (uint64_t i = 0; i < n_tok; i++) {
        if (types[i] == 3 || types[i] == 4 || types[i] == 5) continue;
        if (!first) sb_put(&b, ",", 1);
        sb_json_string(&b, toks[i].str, toks[i].len);
        char num[32];
        snprintf(num, sizeof num, ":%llu", (unsigned long long)i);
        sb_str(&b, num);
        first = 0;
    }
    sb_str(&b, "},\"merges\":[");
    for (uint64_t i = 0; i < n_merges; i++) {
        if (i) sb_put(&b, ",", 1);
        sb_json_string(&b, merges[i].str, merges[i].len);
    }
    sb_str(&b, "]}}");
    if (b.oom) {
        free(b.p);
        snprintf(err, errlen, "GGUF tokenizer: out of memory");
        return NULL;
    }
    qnext_tokenizer *t = tokenizer_load_json_text(b.p, b.n, "GGUF tokenizer metadata", err, errlen);
    free(b.p);
    return t;
}

char *tokenizer_gguf_chat_template(const gguf_file *g) {
    const char *s;
    uint64_t len;
    if (gguf_get_str(g, "tokenizer.chat_template", &s, &len) != 1) return NULL;
    char *r = malloc(len + 1);
    if (r) { memcpy(r, s, len); r[len] = 0; }
    return r;
}

int tokenizer_gguf_special_id(const gguf_file *g, const char *name) {
    char key[96];
    int64_t v;
    snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", name);
    return gguf_get_int(g, key, &v) == 1 && v >= 0 && v <= 0x7FFFFFFF ? (int)v : -1;
}

int tokenizer_gguf_is_file(const char *path) {
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    int r = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    if (f) fclose(f);
    return r;
}

int tokenizer_gguf_load_file(const char *path, qnext_tokenizer **tok, chat_template **tmpl, char *err, size_t errlen) {
    gguf_file *g;
    char msg[512];
    *tok = NULL;
    if (tmpl) *tmpl = NULL;
    if (gguf_open(path, &g, err, errlen)) return -1;
    if (!(*tok = tokenizer_load_gguf(g, msg, sizeof msg))) {
        snprintf(err, errlen, "%s: %s", path, msg);
        gguf_close(g);
        return -1;
    }
    if (tmpl) {
        char *src = tokenizer_gguf_chat_template(g);
        if (!src) snprintf(err, errlen, "%s: no tokenizer.chat_template in the metadata", path);
        else if (!(*tmpl = chat_template_parse(src, strlen(src), msg, sizeof msg)))
            snprintf(err, errlen, "%s: chat template: %s", path, msg);
        free(src);
        /* the special-token variables transformers would pass, from the ids in the metadata */
        static const char *var[] = {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"};
        static const char *key[] = {"bos", "eos", "unknown", "padding", "seperator", "cls", "mask"};
        json *sp = *tmpl ? json_new(JSON_OBJECT) : NULL;
        for (int i = 0; sp && i < 7; i++) {
            int id = tokenizer_gguf_special_id(g, key[i]);
            const char *text = id >= 0 ? tokenizer_id_to_token(*tok, id) : NULL;
            if (text) json_object_set(sp, var[i], json_new_string(text, strlen(text)));
        }
        if (sp && chat_template_set_special_tokens(*tmpl, sp, msg, sizeof msg)) {
            snprintf(err, errlen, "%s: %s", path, msg);
            chat_template_free(*tmpl);
            *tmpl = NULL;
        }
        json_free(sp);
        if (!*tmpl) {
            tokenizer_free(*tok);
            *tok = NULL;
            gguf_close(g);
            return -1;
        }
    }
    gguf_close(g);
    return 0;
}
