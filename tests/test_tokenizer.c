/* test_tokenizer.c - the tokenizer against Hugging Face `tokenizers` reference ids
 * (tests/data/tokenizer_refs.json, made by tools/make_tokenizer_refs.py):
 *   - every reference string encodes to exactly the reference ids (special tokens parsed, and
 *     with parse_special=0 where the reference records encode_special_tokens=True);
 *   - decode(ids) equals HF's decode, also for arbitrary id sequences that split characters;
 *   - the streaming decoder fed one id at a time emits only valid UTF-8 chunks whose
 *     concatenation equals the full decode;
 *   - invalid UTF-8 input round-trips to Python's errors="replace" decoding;
 *   - added-token flags (lstrip, rstrip, single_word, normalized) on a small tokenizer with
 *     its own HF references (tests/data/tokenizer_flags);
 *   - two threads encoding with one tokenizer get the same results. */
#include "test_util.h"

#include "text/tokenizer.h"
#include "util/json.h"

#include <pthread.h>
#include <stdint.h>

static const char *TOK_DIR = "tests/data/qwen3-tokenizer";
static const char *REFS = "tests/data/tokenizer_refs.json";

static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need; uint32_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else return 0;
        if (i + need >= n) return 0;
        for (size_t k = 1; k <= need; k++) {
            unsigned char b = s[i + k];
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 0;
        }
        i += need + 1;
    }
    return 1;
}

/* Reads the id list of a reference case into a malloc'd array. */
static int32_t *ref_ids(const json *arr, size_t *n) {
    *n = arr ? arr->n : 0;
    int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) {
        int64_t v = -1;
        json_as_int64(arr->items[i], &v);
        ids[i] = (int32_t)v;
    }
    return ids;
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Streams ids one at a time and checks every chunk is valid UTF-8 and the total equals want. */
static void check_stream(const qnext_tokenizer *tok, const int32_t *ids, size_t n, const char *want,
                         size_t want_len, const char *label) {
    tokenizer_stream st;
    tokenizer_stream_init(&st, tok);
    size_t cap = tokenizer_stream_out_max(tok);
    char *chunk = malloc(cap);
    char *all = malloc(want_len + 3 * n + 16);
    size_t total = 0;
    int chunks_ok = 1, too_long = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t w = i < n ? tokenizer_stream_put(&st, ids[i], chunk, cap) : tokenizer_stream_flush(&st, chunk, cap);
        CHECK(w != (size_t)-1, "%s: stream put failed at %zu", label, i);
        if (w == (size_t)-1) break;
        if (!valid_utf8((unsigned char *)chunk, w)) chunks_ok = 0;
        if (total + w > want_len + 3 * n + 16) { too_long = 1; break; }
        memcpy(all + total, chunk, w);
        total += w;
    }
    CHECK(chunks_ok, "%s: a streamed chunk is not valid UTF-8", label);
    CHECK(!too_long && total == want_len && memcmp(all, want, want_len) == 0,
          "%s: streamed text differs from the reference decode", label);
    /* A too-small buffer is refused, not overrun. */
    tokenizer_stream_init(&st, tok);
    if (n) CHECK(tokenizer_stream_put(&st, ids[0], chunk, 2) == (size_t)-1, "%s: small cap accepted", label);
    free(chunk);
    free(all);
}

typedef struct { const qnext_tokenizer *tok; const json *cases; int mismatches; } thread_job;

static void *encode_all(void *arg) {
    thread_job *job = arg;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < job->cases->n; i++) {
            const json *c = job->cases->items[i];
            const json *text = json_get(c, "text");
            size_t nw, ng;
            int32_t *want = ref_ids(json_get(c, "ids"), &nw), *got = NULL;
            if (tokenizer_encode(job->tok, text->str, text->len, &got, &ng) != 0 || !same_ids(got, ng, want, nw))
                job->mismatches++;
            free(want);
            free(got);
        }
    return NULL;
}

int main(void) {
    char err[512] = "";
    qnext_tokenizer *tok = tokenizer_load_dir(TOK_DIR, err, sizeof err);
    CHECK(tok != NULL, "load: %s", err);
    if (!tok) return tu_finish("test_tokenizer");
    json *refs = json_parse_file(REFS, err, sizeof err);
    CHECK(refs != NULL, "refs: %s", err);
    if (!refs) { tokenizer_free(tok); return tu_finish("test_tokenizer"); }

    /* Facts from tokenizer.json / the shared README. */
    CHECK(tokenizer_vocab_size(tok) == 151669, "vocab size %zu", tokenizer_vocab_size(tok));
    CHECK(tokenizer_token_id(tok, "<|im_end|>") == 151645, "im_end id");
    CHECK(tokenizer_token_id(tok, "<|endoftext|>") == 151643, "endoftext id");
    CHECK(tokenizer_token_id(tok, "<think>") == 151667, "think id");
    CHECK(tokenizer_token_id(tok, "no such token here") == -1, "absent token");
    CHECK(tokenizer_is_special(tok, 151645) && !tokenizer_is_special(tok, 151667) && !tokenizer_is_special(tok, 100),
          "special flags");
    CHECK(tokenizer_id_to_token(tok, 151644) && strcmp(tokenizer_id_to_token(tok, 151644), "<|im_start|>") == 0,
          "id_to_token");
    CHECK(tokenizer_id_to_token(tok, -1) == NULL && tokenizer_id_to_token(tok, 151669) == NULL, "id_to_token range");

    /* Edge cases: empty input, a lone special token, NULL output pointers. */
    int32_t *ids = NULL; size_t n = 99;
    CHECK(tokenizer_encode(tok, "", 0, &ids, &n) == 0 && n == 0 && ids == NULL, "empty string");
    CHECK(tokenizer_encode(tok, "<|im_end|>", 10, &ids, &n) == 0 && n == 1 && ids[0] == 151645, "lone special");
    free(ids);
    CHECK(tokenizer_encode(tok, "x", 1, NULL, &n) == -1, "NULL ids_out");
    char *text = NULL; size_t tl = 1;
    CHECK(tokenizer_decode(tok, NULL, 0, &text, &tl) == 0 && tl == 0 && text && text[0] == 0, "empty decode");
    free(text);

    /* Encode cases. */
    const json *enc = json_get(refs, "encode");
    CHECK(enc && enc->type == JSON_ARRAY && enc->n >= 300, "encode cases");
    size_t n_enc_ok = 0;
    for (size_t i = 0; enc && i < enc->n; i++) {
        const json *c = enc->items[i];
        const json *t = json_get(c, "text"), *dec = json_get(c, "decoded");
        size_t nw, nns = 0;
        int32_t *want = ref_ids(json_get(c, "ids"), &nw);
        const json *ns = json_get(c, "ids_no_special");
        int32_t *want_ns = ns ? ref_ids(ns, &nns) : NULL;
        int32_t *got = NULL; size_t ng = 0;
        int rc = tokenizer_encode(tok, t->str, t->len, &got, &ng);
        int ok = rc == 0 && same_ids(got, ng, want, nw);
        CHECK(ok, "encode case %zu (%.60s)", i, t->str);
        if (!ok) { print_ids("want", want, nw); print_ids("got ", got, ng); }
        n_enc_ok += ok;
        free(got); got = NULL;
        rc = tokenizer_encode_ex(tok, t->str, t->len, 0, &got, &ng);
        ok = rc == 0 && (ns ? same_ids(got, ng, want_ns, nns) : same_ids(got, ng, want, nw));
        CHECK(ok, "encode (parse_special=0) case %zu (%.60s)", i, t->str);
        if (!ok && ns) { print_ids("want", want_ns, nns); print_ids("got ", got, ng); }
        free(got);
        char *d = NULL; size_t dl = 0;
        rc = tokenizer_decode(tok, want, nw, &d, &dl);
        CHECK(rc == 0 && dl == dec->len && memcmp(d, dec->str, dl) == 0, "decode case %zu (%.60s)", i, t->str);
        free(d);
        char label[64];
        snprintf(label, sizeof label, "stream encode case %zu", i);
        check_stream(tok, want, nw, dec->str, dec->len, label);
        free(want);
        free(want_ns);
    }

    /* Decode-only cases. */
    const json *decs = json_get(refs, "decode");
    CHECK(decs && decs->type == JSON_ARRAY && decs->n > 100, "decode cases");
    for (size_t i = 0; decs && i < decs->n; i++) {
        const json *c = decs->items[i];
        const json *want_text = json_get(c, "text");
        size_t nw;
        int32_t *in = ref_ids(json_get(c, "ids"), &nw);
        char *d = NULL; size_t dl = 0;
        int rc = tokenizer_decode(tok, in, nw, &d, &dl);
        CHECK(rc == 0 && dl == want_text->len && memcmp(d, want_text->str, dl) == 0, "decode-only case %zu", i);
        free(d);
        char label[64];
        snprintf(label, sizeof label, "stream decode case %zu", i);
        check_stream(tok, in, nw, want_text->str, want_text->len, label);
        free(in);
    }

    /* Invalid UTF-8 input: the bytes survive encoding; decoding replaces them as Python does. */
    const json *bad = json_get(refs, "invalid_utf8");
    CHECK(bad && bad->type == JSON_ARRAY && bad->n > 0, "invalid_utf8 cases");
    for (size_t i = 0; bad && i < bad->n; i++) {
        const char *hex = json_get_string(bad->items[i], "hex");
        const json *lossy = json_get(bad->items[i], "lossy");
        size_t bl = strlen(hex) / 2;
        char *raw = malloc(bl + 1);
        for (size_t k = 0; k < bl; k++) { unsigned v; sscanf(hex + 2 * k, "%2x", &v); raw[k] = (char)v; }
        int32_t *got = NULL; size_t ng = 0;
        char *d = NULL; size_t dl = 0;
        int rc = tokenizer_encode(tok, raw, bl, &got, &ng);
        rc |= tokenizer_decode(tok, got, ng, &d, &dl);
        CHECK(rc == 0 && dl == lossy->len && memcmp(d, lossy->str, dl) == 0, "invalid utf8 case %zu (%s)", i, hex);
        free(raw); free(got); free(d);
    }

    /* Concurrent encodes on one tokenizer. */
    if (enc) {
        thread_job jobs[2] = {{tok, enc, 0}, {tok, enc, 0}};
        pthread_t th[2];
        for (int k = 0; k < 2; k++) pthread_create(&th[k], NULL, encode_all, &jobs[k]);
        for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
        CHECK(jobs[0].mismatches == 0 && jobs[1].mismatches == 0, "threads: %d + %d mismatches",
              jobs[0].mismatches, jobs[1].mismatches);
    }

    /* Added-token flags Qwen's file leaves off (lstrip, rstrip, single_word, normalized), on a
     * small tokenizer of the same kind made by the reference script. */
    char ferr[512] = "";
    qnext_tokenizer *ft = tokenizer_load_dir("tests/data/tokenizer_flags", ferr, sizeof ferr);
    json *frefs = json_parse_file("tests/data/tokenizer_flags/refs.json", ferr, sizeof ferr);
    CHECK(ft && frefs && frefs->type == JSON_ARRAY && frefs->n > 20, "flags tokenizer: %s", ferr);
    for (size_t i = 0; ft && frefs && i < frefs->n; i++) {
        const json *c = frefs->items[i];
        const json *t = json_get(c, "text"), *dec = json_get(c, "decoded"), *ns = json_get(c, "ids_no_special");
        size_t nw, nns = 0, ng = 0;
        int32_t *want = ref_ids(json_get(c, "ids"), &nw), *want_ns = ns ? ref_ids(ns, &nns) : NULL, *got = NULL;
        int ok = tokenizer_encode(ft, t->str, t->len, &got, &ng) == 0 && same_ids(got, ng, want, nw);
        CHECK(ok, "flags case %zu (%s)", i, t->str);
        if (!ok) { print_ids("want", want, nw); print_ids("got ", got, ng); }
        free(got); got = NULL;
        ok = tokenizer_encode_ex(ft, t->str, t->len, 0, &got, &ng) == 0 &&
             (ns ? same_ids(got, ng, want_ns, nns) : same_ids(got, ng, want, nw));
        CHECK(ok, "flags case %zu (%s), parse_special=0", i, t->str);
        if (!ok) { print_ids("want", ns ? want_ns : want, ns ? nns : nw); print_ids("got ", got, ng); }
        free(got);
        char *d = NULL; size_t dl = 0;
        CHECK(tokenizer_decode(ft, want, nw, &d, &dl) == 0 && dl == dec->len && memcmp(d, dec->str, dl) == 0,
              "flags decode %zu", i);
        free(d); free(want); free(want_ns);
    }
    json_free(frefs);
    tokenizer_free(ft);

    /* Bad input files give an error, not a crash. */
    qnext_tokenizer *none = tokenizer_load("tests/data/no-such-file.json", err, sizeof err);
    CHECK(none == NULL && err[0], "missing file error");
    none = tokenizer_load(REFS, err, sizeof err); /* valid JSON, not a tokenizer */
    CHECK(none == NULL && err[0], "wrong JSON error");

    printf("encode cases matching HF: %zu/%zu\n", n_enc_ok, enc ? enc->n : 0);
    json_free(refs);
    tokenizer_free(tok);
    return tu_finish("test_tokenizer");
}
