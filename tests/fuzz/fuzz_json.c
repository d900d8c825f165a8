/* fuzz_json.c - libFuzzer harness for the JSON reader (src/util/json.c).
 * Built and run by tests/fuzz/run_fuzz.sh. A parsed document must serialise, and the
 * serialisation must parse again to the same compact text. */
#include "util/json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    json *j = json_parse((const char *)data, size, err, sizeof err);
    if (!j) return 0;
    size_t n1 = 0, n2 = 0;
    char *s1 = json_write_compact(j, &n1);
    if (s1) {
        json *k = json_parse(s1, n1, err, sizeof err);
        if (!k) abort(); /* our own output must parse */
        char *s2 = json_write_compact(k, &n2);
        if (!s2 || n1 != n2 || memcmp(s1, s2, n1) != 0) abort();
        free(s2);
        json_free(k);
        free(s1);
    }
    json *c = json_clone(j);
    json_free(c);
    json_free(j);
    return 0;
}
