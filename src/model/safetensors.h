/* safetensors.h - the memory-mapped tensor store of a Hugging Face checkpoint directory:
 * model.safetensors, or the shards listed in model.safetensors.index.json. */
#ifndef QNEXT_SAFETENSORS_H
#define QNEXT_SAFETENSORS_H

#include "model.h"

typedef struct {
    char *name;
    int dtype;           /* qn_dtype, or -1 for a dtype qnext does not read */
    char dtype_str[16];  /* as the header spells it ("BF16") */
    int n_dims;
    int64_t shape[8];
    const void *data;
    size_t nbytes;
    const char *file;    /* shard file name, for messages */
    int used;            /* claimed by the loader; the rest are reported as unknown */
} qn_st_tensor;

/* Opens a model directory's safetensors files: mapped, or with in_ram read into memory
 * (util/filemap.h). */
qnext_status store_open_dir(const char *dir, int in_ram, qn_store **out, char *err, size_t errlen);
void store_close(qn_store *st);
qn_st_tensor *store_find(qn_store *st, const char *name);
size_t store_count(const qn_store *st);
qn_st_tensor *store_at(qn_store *st, size_t i);

#endif
