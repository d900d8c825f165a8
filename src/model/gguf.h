/* gguf.h - reader and streaming writer for GGUF files (versions 2 and 3, little-endian),
 * the model format of ggml/llama.cpp.
 *
 * On-disk layout:
 *   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 value type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
 *   zero padding to `alignment` (key general.alignment, u32, default 32)
 *   data section: each tensor at data_offset + offset (a multiple of alignment)
 * where string = u64 length + bytes (no NUL), an array value = u32 element type + u64
 * count + elements, and ne[0] is the contiguous (fastest varying) dimension.
 *
 * The reader maps the file read-only and validates everything against the file size
 * before trusting it: a malformed file gives an error message, never a crash or an
 * allocation larger than a small multiple of the file. Tensor data stays in the mapping
 * (zero copy); metadata is copied out (strings NUL-terminated, numeric arrays aligned).
 *
 * The writer streams: metadata and tensor infos are kept in memory, then tensor data is
 * written one tensor (or one piece of a tensor) at a time with the required padding, so
 * converting a model needs memory for one tensor, not for the model. */
#ifndef QNEXT_GGUF_H
#define QNEXT_GGUF_H

#include "util/filemap.h"
#include <stddef.h>
#include <stdint.h>

typedef enum {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12, GGUF_TYPE_COUNT = 13
} gguf_type;

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* A string copied out of the file: NUL-terminated, but may contain NUL bytes (use len). */
typedef struct {
    const char *str;
    uint64_t len;
} gguf_string;

typedef struct {
    const char *key;      /* NUL-terminated */
    gguf_type type;       /* value type; GGUF_TYPE_ARRAY for arrays */
    /* scalars (the member matching type; BOOL is in u8 as 0 or 1) */
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        uint64_t u64; int64_t i64; float f32; double f64;
    } v;
    gguf_string str;      /* GGUF_TYPE_STRING */
    /* arrays: element type (never ARRAY), count, and elements: a C array of the element
     * type (BOOL as uint8_t 0/1), or of gguf_string for STRING elements */
    gguf_type arr_type;
    uint64_t arr_n;
    const void *arr;
} gguf_kv;

typedef struct {
    const char *name;     /* NUL-terminated */
    int type;             /* ggml type id (quant_type in kernels/cpu/quant.h) */
    int n_dims;           /* 0..4 as stored; ne[] beyond n_dims are 1 */
    int64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] is the contiguous dimension */
    uint64_t offset;      /* from the start of the data section */
    const void *data;     /* into the mapping; aligned to the file's alignment */
    size_t nbytes;
} gguf_tensor;

typedef struct gguf_file {
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint64_t data_offset; /* file offset of the data section */
    const uint8_t *base;  /* the mapped (or caller's) bytes */
    size_t size;
    /* private */
    int mapped;
    filemap fm;
    void *arena;
} gguf_file;

/* Opens and validates a GGUF file. Returns 0 and stores a handle in *out, or -1 with a
 * message in err. Every tensor type must be one quant.h can dequantize. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* The same; in_ram reads the file into memory on huge pages instead of mapping it
 * (util/filemap.h: --no-mmap). */
int gguf_open_file(const char *path, int in_ram, gguf_file **out, char *err, size_t errlen);
/* The same for bytes in memory (kept by the caller until gguf_close; not copied). */
int gguf_open_memory(const void *data, size_t size, gguf_file **out, char *err, size_t errlen);
void gguf_close(gguf_file *g);

const char *gguf_type_name(gguf_type t);

/* Metadata lookup: the entry, or NULL. */
const gguf_kv *gguf_find_key(const gguf_file *g, const char *key);
/* Typed getters: 1 = found with exactly this type (value stored), 0 = absent,
 * -1 = present with another type. */
int gguf_get_u8(const gguf_file *g, const char *key, uint8_t *out);
int gguf_get_i8(const gguf_file *g, const char *key, int8_t *out);
int gguf_get_u16(const gguf_file *g, const char *key, uint16_t *out);
int gguf_get_i16(const gguf_file *g, const char *key, int16_t *out);
int gguf_get_u32(const gguf_file *g, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_file *g, const char *key, int32_t *out);
int gguf_get_u64(const gguf_file *g, const char *key, uint64_t *out);
int gguf_get_i64(const gguf_file *g, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *g, const char *key, float *out);
int gguf_get_f64(const gguf_file *g, const char *key, double *out);
int gguf_get_bool(const gguf_file *g, const char *key, int *out);
int gguf_get_str(const gguf_file *g, const char *key, const char **out, uint64_t *len);
/* Lenient getters for model hyper-parameters, whose integer width varies between
 * converters: any integer type (a u64 above INT64_MAX is -1 "wrong type"), and f32/f64. */
int gguf_get_int(const gguf_file *g, const char *key, int64_t *out);
int gguf_get_float(const gguf_file *g, const char *key, double *out);
/* Arrays: 1 = found and an array with elements of elem_type (pass GGUF_TYPE_COUNT to
 * accept any and read kv->arr_type), 0 = absent, -1 = not such an array. */
int gguf_get_arr(const gguf_file *g, const char *key, gguf_type elem_type, const void **data, uint64_t *n);

/* Tensor by name, or NULL. */
const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);

/* ---------------------------------------------------------------- writer
 * Usage: open; add KVs and tensor infos (any order); write_header; then for each tensor
 * in the order it was added, write_tensor (or several write_tensor_part calls adding up
 * to its size); close. Errors are sticky: after one, later calls return -1 and
 * gguf_writer_close reports the first message. Setting "general.alignment" (u32, a power
 * of two) changes the alignment. */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_open(const char *path, char *err, size_t errlen);
int gguf_writer_add_u8(gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_add_i8(gguf_writer *w, const char *key, int8_t v);
int gguf_writer_add_u16(gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_add_i16(gguf_writer *w, const char *key, int16_t v);
int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_i64(gguf_writer *w, const char *key, int64_t v);
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_add_f64(gguf_writer *w, const char *key, double v);
int gguf_writer_add_bool(gguf_writer *w, const char *key, int v);
int gguf_writer_add_str(gguf_writer *w, const char *key, const char *s);
int gguf_writer_add_str_len(gguf_writer *w, const char *key, const char *s, uint64_t len);
/* Numeric/bool array: n elements of elem_type packed as C values (bool: uint8_t). */
int gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n);
/* String array; lens may be NULL for NUL-terminated strings. */
int gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
                            uint64_t n);
/* Declares the next tensor (ne in ggml order, n_dims 1..4, ne[0] a whole number of blocks). */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne);
int gguf_writer_write_header(gguf_writer *w);
int gguf_writer_write_tensor(gguf_writer *w, const void *data, size_t nbytes);
int gguf_writer_write_tensor_part(gguf_writer *w, const void *data, size_t nbytes);
/* Finishes the file (all tensors must have been written) and frees the writer. On error
 * the partial file is removed. Returns 0 or -1 with the first error in err. */
int gguf_writer_close(gguf_writer *w, char *err, size_t errlen);

#endif
