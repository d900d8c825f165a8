/* fuzz_jcon.c - libFuzzer harness for the JSON constraint (src/text/json_constraint.c).
 * Built and run by tests/fuzz/run_fuzz.sh. The input is a JSON Schema, a NUL byte, then a
 * document (no NUL: the schema is "any JSON object"). Schemas come from HTTP requests and the
 * document from a model, so both sides are untrusted. Checks:
 *   - compiling any schema and feeding any bytes never crashes or leaks;
 *   - fed in one piece or byte by byte, the matcher reaches the same verdict;
 *   - a document accepted as complete parses with the strict JSON reader (the matcher never
 *     lets through something that is not JSON). */
#include "text/json_constraint.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The harness never builds a token vocabulary: stand-ins for the two tokenizer functions
 * that json_constraint.c links against. */
const unsigned char *tokenizer_token_bytes(const qnext_tokenizer *tok, int32_t id, size_t *len) {
    (void)tok;
    (void)id;
    *len = 0;
    return NULL;
}
int tokenizer_is_added(const qnext_tokenizer *tok, int32_t id) {
    (void)tok;
    (void)id;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    const uint8_t *doc = nul ? nul + 1 : data;
    size_t n_doc = nul ? size - (size_t)(doc - data) : size;
    json *sj = NULL;
    char err[256];
    if (nul) {
        sj = json_parse((const char *)data, (size_t)(nul - data), err, sizeof err);
        if (!sj) return 0;
    }
    jcon_schema *s = jcon_schema_compile(sj, err, sizeof err);
    json_free(sj);
    if (!s) return 0;
    jcon *whole = jcon_new(s, NULL), *bytes = jcon_new(s, NULL);
    if (!whole || !bytes) abort();
    int ok_whole = jcon_feed(whole, doc, n_doc), ok_bytes = 1;
    for (size_t i = 0; i < n_doc && ok_bytes; i++) ok_bytes = jcon_feed(bytes, doc + i, 1);
    if (ok_whole != ok_bytes) abort();
    if (ok_whole && jcon_complete(whole) != jcon_complete(bytes)) abort();
    if (ok_whole && jcon_complete(whole)) {
        json *j = json_parse((const char *)doc, n_doc, err, sizeof err);
        if (!j) abort(); /* accepted as a complete document, but not JSON */
        json_free(j);
    }
    jcon_free(whole);
    jcon_free(bytes);
    jcon_schema_free(s);
    return 0;
}
