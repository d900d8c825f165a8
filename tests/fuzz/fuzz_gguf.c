/* fuzz_gguf.c - libFuzzer harness for the GGUF reader (src/model/gguf.c).
 * Built and run by tests/fuzz/run_fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * Any input must either be rejected with a message or give a file whose metadata and
 * tensors can all be looked up and whose tensor bytes lie inside the input. */
#include "kernels/cpu/quant.h"
#include "model/gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *g = NULL;
    char err[256];
    err[0] = 0;
    if (gguf_open_memory(data, size, &g, err, sizeof err) != 0) {
        if (!err[0] || g) abort(); /* an error must come with a message and no handle */
        return 0;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        if (!gguf_find_key(g, kv->key)) abort();
        int64_t iv;
        double dv;
        gguf_get_int(g, kv->key, &iv);
        gguf_get_float(g, kv->key, &dv);
        if (kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_STRING) {
            const gguf_string *s = kv->arr;
            for (uint64_t k = 0; k < kv->arr_n; k++)
                if (strlen(s[k].str) > s[k].len) abort();
        }
    }
    float row[1024];
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (!gguf_find_tensor(g, t->name)) abort();
        if (t->nbytes && ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size))
            abort();
        /* dequantize the first row when it is small: reads the tensor's bytes */
        size_t rb = quant_row_bytes(t->type, t->ne[0]);
        if (t->ne[0] > 0 && t->ne[0] <= 1024 && rb <= t->nbytes)
            if (quant_dequantize_row(t->type, t->data, row, t->ne[0]) != 0) abort();
    }
    gguf_close(g);
    return 0;
}
