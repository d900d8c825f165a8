/* test_json_constraint.c - the JSON constraint of response_format (text/json_constraint.c).
 *
 * 1. Documents against Python's json module and the jsonschema package
 *    (tests/data/jcon_cases.json, tools/make_jcon_cases.py): for each schema, valid documents
 *    in compact, spaced and indented spellings, and damaged ones (cuts, dropped or doubled
 *    bytes, wrong brackets, bad numbers, escapes and UTF-8). A document is accepted byte by byte
 *    and complete at its end exactly when the reference calls it valid; every prefix of a
 *    valid document is accepted (the automaton never refuses a byte that could lead to a
 *    valid document, which the token mask relies on).
 * 2. Schemas the compiler must refuse, each with its message.
 * 3. The token mask on the real Qwen3 tokenizer (151,669 ids): random walks that draw only
 *    allowed tokens until an end-of-sequence token, for each schema of 1. At every step the
 *    mask must agree with jcon_accept on a sample of ids (allowed ids are accepted, masked ones
 *    refused), at least one id must be allowed, and each finished document must be complete
 *    and parse with the strict JSON reader. Whether the finished documents also satisfy their
 *    schemas is checked against jsonschema by the server tests (tests/serve), on a model. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"
#include "text/json_constraint.h"
#include "text/tokenizer.h"
#include "util/json.h"

static size_t unhex(const char *h, unsigned char *out) {
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    return n;
}

/* Feeds a document byte by byte: 1 when every byte is accepted and the end is complete. */
static int accepts(const jcon_schema *s, const unsigned char *p, size_t n, int *prefix_ok) {
    jcon *c = jcon_new(s, NULL);
    int ok = 1;
    *prefix_ok = 1;
    for (size_t i = 0; i < n && ok; i++) ok = jcon_feed(c, p + i, 1);
    *prefix_ok = ok;
    ok = ok && jcon_complete(c);
    jcon_free(c);
    return ok;
}

static void test_reference_cases(void) {
    char err[256];
    json *all = json_parse_file("tests/data/jcon_cases.json", err, sizeof err);
    CHECK(all && all->type == JSON_ARRAY, "%s", err);
    if (!all) return;
    unsigned char *buf = malloc(1 << 16);
    for (size_t k = 0; k < all->n; k++) {
        const json *e = all->items[k];
        const char *name = json_get_string(e, "name");
        const json *sj = json_get(e, "schema");
        jcon_schema *s = jcon_schema_compile(sj->type == JSON_NULL ? NULL : sj, err, sizeof err);
        CHECK(s, "%s: %s", name, err);
        if (!s) continue;
        const json *cases = json_get(e, "cases");
        int bad = 0;
        for (size_t i = 0; i < cases->n; i++) {
            size_t n = unhex(cases->items[i]->items[0]->str, buf);
            int want = cases->items[i]->items[1]->type == JSON_TRUE, prefix_ok;
            int got = accepts(s, buf, n, &prefix_ok);
            if (got != want && bad++ < 5)
                fprintf(stderr, "  %s: \"%.*s\" reference %s, constraint %s\n", name, (int)n, (const char *)buf,
                        want ? "valid" : "invalid", got ? "accepts" : prefix_ok ? "accepts an incomplete document" : "refuses");
        }
        CHECK(bad == 0, "%s: %d of %zu documents judged differently from json + jsonschema", name, bad, cases->n);
        jcon_schema_free(s);
    }
    free(buf);
    json_free(all);
}

static void test_refused_schemas(void) {
    static const char *bad[][2] = {
        {"{\"type\": \"string\", \"pattern\": \"^a\"}", "'pattern' is not supported"},
        {"{\"type\": \"integer\", \"minimum\": 0}", "'minimum' is not supported"},
        {"{\"oneOf\": [{\"type\": \"string\"}]}", "'oneOf' is not supported"},
        {"{\"type\": \"strin\"}", "'type' must be one of"},
        {"{\"type\": \"object\", \"properties\": {\"a\": {}}, \"required\": [\"b\"]}", "required property b is not in"},
        {"{\"$ref\": \"#/$defs/X\"}", "does not name an entry"},
        {"{\"$defs\": {\"A\": {\"$ref\": \"#/$defs/A\"}}, \"$ref\": \"#/$defs/A\"}", "refers only to itself"},
        {"{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"string\"}]}", "share a type"},
        {"{\"anyOf\": [{\"enum\": [1]}, {\"type\": \"null\"}]}", "enum or const alternatives"},
        {"{\"anyOf\": [{\"type\": \"string\"}], \"type\": \"string\"}", "anyOf next to"},
        {"{\"enum\": []}", "'enum' must be a non-empty list"},
        {"{\"type\": \"array\", \"minItems\": 3, \"maxItems\": 2}", "'maxItems' is below"},
        {"{\"type\": \"array\", \"minItems\": -1}", "'minItems' must be a count"},
        {"[1]", "must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "", perr[128];
        json *j = json_parse(bad[i][0], strlen(bad[i][0]), perr, sizeof perr);
        CHECK(j, "%s", perr);
        jcon_schema *s = jcon_schema_compile(j, err, sizeof err);
        CHECK(!s && strstr(err, bad[i][1]), "schema %s: got %s, message '%s'", bad[i][0], s ? "compiled" : "refused", err);
        jcon_schema_free(s);
        json_free(j);
    }
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_mask_walks(void) {
    char err[256];
    qnext_tokenizer *tok = tokenizer_load("tests/data/qwen3-tokenizer/tokenizer.json", err, sizeof err);
    CHECK(tok, "%s", err);
    if (!tok) return;
    int nv = (int)tokenizer_vocab_size(tok);
    int32_t eos[2] = {tokenizer_token_id(tok, "<|im_end|>"), tokenizer_token_id(tok, "<|endoftext|>")};
    jcon_vocab *v = jcon_vocab_new(tok, nv, eos, 2);
    json *all = json_parse_file("tests/data/jcon_cases.json", err, sizeof err);
    CHECK(v && all, "%s", err);
    float *logits = malloc((size_t)nv * sizeof(float));
    int32_t *allowed = malloc((size_t)nv * sizeof(int32_t));
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    int finished = 0, walks = 0, disagree = 0, n_masks = 0;
    double mask_s = 0;
    for (size_t k = 0; all && k < all->n; k++) {
        const json *sj = json_get(all->items[k], "schema");
        jcon_schema *s = jcon_schema_compile(sj->type == JSON_NULL ? NULL : sj, err, sizeof err);
        for (int w = 0; s && w < 4; w++, walks++) {
            jcon *c = jcon_new(s, v);
            char *text = malloc(1 << 16);
            size_t len = 0;
            int ended = 0;
            /* Prefer short tokens and structure, so that walks end: weight by an id hash,
             * with the end-of-sequence ids favoured once they are allowed. */
            for (int step = 0; step < 300 && !ended; step++) {
                for (int i = 0; i < nv; i++) logits[i] = 0;
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                int n_ok = jcon_mask(c, logits), na = 0;
                clock_gettime(CLOCK_MONOTONIC, &t1);
                mask_s += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
                n_masks++;
                CHECK(n_ok > 0, "no token allowed after \"%.*s\"", (int)len, text);
                if (n_ok <= 0) break;
                for (int i = 0; i < nv; i++)
                    if (logits[i] == 0) allowed[na++] = i;
                CHECK(na == n_ok, "mask count %d, ids left %d", n_ok, na);
                for (int probe = 0; probe < 16; probe++) { /* the mask agrees with accept */
                    int32_t id = (int32_t)(rng_next(&seed) % (uint64_t)nv);
                    jcon *copy = jcon_new(s, v);
                    int ok = jcon_feed(copy, (const unsigned char *)text, len) && jcon_accept(copy, id);
                    if (ok != (logits[id] == 0)) disagree++;
                    jcon_free(copy);
                }
                int32_t pick = -1;
                for (int e = 0; e < 2; e++)
                    if (logits[eos[e]] == 0 && rng_next(&seed) % 4 == 0) pick = eos[e];
                if (pick < 0) { /* among a few random allowed ids, the shortest */
                    size_t best = SIZE_MAX;
                    for (int t = 0; t < 8; t++) {
                        int32_t id = allowed[rng_next(&seed) % (uint64_t)na];
                        size_t tl;
                        tokenizer_token_bytes(tok, id, &tl);
                        if (id == eos[0] || id == eos[1]) tl = 0;
                        if (tl < best) { best = tl; pick = id; }
                    }
                }
                CHECK(jcon_accept(c, pick), "allowed id %d refused", pick);
                if (pick == eos[0] || pick == eos[1]) { ended = 1; break; }
                size_t tl;
                const unsigned char *tb = tokenizer_token_bytes(tok, pick, &tl);
                if (len + tl < (1 << 16)) { memcpy(text + len, tb, tl); len += tl; }
            }
            if (ended) {
                finished++;
                CHECK(jcon_complete(c), "ended incomplete: %.*s", (int)len, text);
                char perr[256];
                json *doc = json_parse(text, len, perr, sizeof perr);
                CHECK(doc, "walk output does not parse (%s): %.*s", perr, (int)len, text);
                if (sj->type == JSON_NULL) CHECK(doc && doc->type == JSON_OBJECT, "json_object walk gave a non-object");
                json_free(doc);
            }
            free(text);
            jcon_free(c);
        }
        jcon_schema_free(s);
    }
    CHECK(disagree == 0, "mask and accept disagree on %d sampled ids", disagree);
    CHECK(finished >= walks / 2, "only %d of %d walks reached an end of sequence", finished, walks);
    printf("mask walks: %d of %d finished; %d masks, %.2f ms each\n", finished, walks, n_masks, 1e3 * mask_s / n_masks);
    free(logits);
    free(allowed);
    json_free(all);
    jcon_vocab_free(v);
    tokenizer_free(tok);
}

int main(void) {
    test_reference_cases();
    test_refused_schemas();
    test_mask_walks();
    return tu_finish("test_json_constraint");
}
