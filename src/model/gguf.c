/* gguf.c - GGUF reader (mmap, fully bounds-checked) and streaming writer; see gguf.h.
 *
 * The reader never trusts a count or a length before checking it against the bytes
 * that are left in the file, so a hostile file cannot make it read out of bounds or
 * allocate more than a small multiple of the file's own size. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE
#include "model/gguf.h"

#include "kernels/cpu/quant.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *const type_names[GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
    "uint64", "int64", "float64"};
static const size_t type_sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_type_name(gguf_type t) {
    return (unsigned)t < GGUF_TYPE_COUNT ? type_names[t] : "invalid";
}

/* ---------------------------------------------------------------- arena
 * All metadata copies live in a chain of blocks freed together by gguf_close. */
typedef struct arena_block {
    struct arena_block *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} arena_block;

static void *arena_alloc(gguf_file *g, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = g->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        arena_block *nb = malloc(sizeof(arena_block) + cap);
        if (!nb) return NULL;
        nb->next = b;
        nb->cap = cap;
        nb->used = 0;
        g->arena = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void arena_free(gguf_file *g) {
    arena_block *b = g->arena;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    g->arena = NULL;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    gguf_file *g;
    char *err;
    size_t errlen;
} cursor;

static size_t left(const cursor *c) { return c->size - c->pos; }

static int need(cursor *c, size_t n, const char *what) {
    if (left(c) < n) {
        set_err(c->err, c->errlen, "truncated file: %s needs %zu bytes at offset %zu, but the file has %zu bytes",
                what, n, c->pos, c->size);
        return -1;
    }
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return -1;
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return -1;
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_string(cursor *c, gguf_string *s, const char *what) {
    uint64_t len;
    if (rd_u64(c, &len, what)) return -1;
    if (len > left(c)) {
        set_err(c->err, c->errlen, "%s at offset %zu: string length %llu exceeds the %zu bytes left in the file",
                what, c->pos - 8, (unsigned long long)len, left(c));
        return -1;
    }
    char *dst = arena_alloc(c->g, (size_t)len + 1);
    if (!dst) {
        set_err(c->err, c->errlen, "out of memory");
        return -1;
    }
    memcpy(dst, c->p + c->pos, (size_t)len);
    dst[len] = 0;
    c->pos += (size_t)len;
    s->str = dst;
    s->len = len;
    return 0;
}

static int rd_value(cursor *c, gguf_kv *kv, const char *key) {
    size_t sz = type_sizes[kv->type];
    if (kv->type == GGUF_TYPE_STRING) return rd_string(c, &kv->str, "string value");
    if (kv->type == GGUF_TYPE_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (rd_u32(c, &et, "array element type") || rd_u64(c, &n, "array length")) return -1;
        if (et >= GGUF_TYPE_COUNT) {
            set_err(c->err, c->errlen, "key '%s': invalid array element type %u", key, et);
            return -1;
        }
        if (et == GGUF_TYPE_ARRAY) {
            set_err(c->err, c->errlen, "key '%s': nested arrays are not supported", key);
            return -1;
        }
        kv->arr_type = (gguf_type)et;
        kv->arr_n = n;
        size_t esz = et == GGUF_TYPE_STRING ? 8 : type_sizes[et]; /* bytes per element, at least */
        if (n > left(c) / esz) {
            set_err(c->err, c->errlen, "key '%s': array of %llu %s elements does not fit in the %zu bytes left",
                    key, (unsigned long long)n, type_names[et], left(c));
            return -1;
        }
        if (et == GGUF_TYPE_STRING) {
            gguf_string *arr = arena_alloc(c->g, (size_t)n * sizeof(gguf_string) + 1);
            if (!arr) { set_err(c->err, c->errlen, "out of memory"); return -1; }
            for (uint64_t i = 0; i < n; i++)
                if (rd_string(c, &arr[i], "array string")) return -1;
            kv->arr = arr;
        } else {
            size_t bytes = (size_t)n * esz;
            uint8_t *arr = arena_alloc(c->g, bytes + 1);
            if (!arr) { set_err(c->err, c->errlen, "out of memory"); return -1; }
            memcpy(arr, c->p + c->pos, bytes);
            if (et == GGUF_TYPE_BOOL)
                for (size_t i = 0; i < bytes; i++) arr[i] = arr[i] != 0;
            c->pos += bytes;
            kv->arr = arr;
        }
        return 0;
    }
    if (need(c, sz, "metadata value")) return -1;
    memcpy(&kv->v, c->p + c->pos, sz); /* little-endian: the low bytes of the union */
    if (kv->type == GGUF_TYPE_BOOL) kv->v.u8 = kv->v.u8 != 0;
    c->pos += sz;
    return 0;
}

/* sorted index arrays (for duplicate detection and binary-search lookup) */
typedef struct {
    uint64_t *kv_order, *tensor_order; /* indices sorted by name */
} gguf_private;

/* Sorts an index array with a comparator that sees the file (no global state, so
 * files can be opened from several threads): bottom-up merge sort, O(n log n). */
typedef int (*index_cmp)(const gguf_file *g, uint64_t a, uint64_t b);
static int sort_indices(gguf_file *g, uint64_t *idx, uint64_t n, index_cmp cmp) {
    if (n < 2) return 0;
    uint64_t *tmp = malloc((size_t)n * sizeof(uint64_t));
    if (!tmp) return -1;
    uint64_t *src = idx, *dst = tmp;
    for (uint64_t width = 1; width < n; width *= 2) {
        for (uint64_t lo = 0; lo < n; lo += 2 * width) {
            uint64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) dst[k++] = cmp(g, src[j], src[i]) < 0 ? src[j++] : src[i++];
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != idx) memcpy(idx, src, (size_t)n * sizeof(uint64_t));
    free(tmp);
    return 0;
}
static int cmp_kv_key(const gguf_file *g, uint64_t a, uint64_t b) { return strcmp(g->kv[a].key, g->kv[b].key); }
static int cmp_tensor_name(const gguf_file *g, uint64_t a, uint64_t b) {
    return strcmp(g->tensors[a].name, g->tensors[b].name);
}
static int cmp_tensor_offset(const gguf_file *g, uint64_t a, uint64_t b) {
    uint64_t x = g->tensors[a].offset, y = g->tensors[b].offset;
    return x < y ? -1 : x > y;
}

static gguf_private *priv(const gguf_file *g) {
    /* the private block is the first allocation of the arena chain's oldest block; keep
     * a pointer to it right after the public struct instead */
    return *(gguf_private **)(g + 1);
}

static int parse(gguf_file *g, char *err, size_t errlen) {
    cursor c = {g->base, g->size, 0, g, err, errlen};
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        set_err(err, errlen, "not a GGUF file (bad magic)");
        return -1;
    }
    c.pos = 4;
    uint32_t version;
    if (rd_u32(&c, &version, "version")) return -1;
    if (version == 1) {
        set_err(err, errlen, "GGUF version 1 is not supported (re-convert the model)");
        return -1;
    }
    if ((version & 0xffff) == 0 && version != 0) {
        set_err(err, errlen, "big-endian GGUF files are not supported");
        return -1;
    }
    if (version != 2 && version != 3) {
        set_err(err, errlen, "unsupported GGUF version %u", version);
        return -1;
    }
    g->version = version;
    if (rd_u64(&c, &g->n_tensors, "tensor count") || rd_u64(&c, &g->n_kv, "metadata count")) return -1;
    /* a key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes */
    if (g->n_kv > left(&c) / 13) {
        set_err(err, errlen, "metadata count %llu is impossible for a file of %zu bytes",
                (unsigned long long)g->n_kv, g->size);
        return -1;
    }
    /* a tensor info takes at least 8 + 4 + 4 + 8 bytes */
    if (g->n_tensors > left(&c) / 24) {
        set_err(err, errlen, "tensor count %llu is impossible for a file of %zu bytes",
                (unsigned long long)g->n_tensors, g->size);
        return -1;
    }
    gguf_private *pv = priv(g);
    g->kv = arena_alloc(g, (size_t)g->n_kv * sizeof(gguf_kv) + 1);
    pv->kv_order = arena_alloc(g, (size_t)g->n_kv * sizeof(uint64_t) + 1);
    if (!g->kv || !pv->kv_order) { set_err(err, errlen, "out of memory"); return -1; }
    memset(g->kv, 0, (size_t)g->n_kv * sizeof(gguf_kv));
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        gguf_string key;
        uint32_t t;
        if (rd_string(&c, &key, "metadata key")) return -1;
        kv->key = key.str;
        if (rd_u32(&c, &t, "metadata value type")) return -1;
        if (t >= GGUF_TYPE_COUNT) {
            set_err(err, errlen, "key '%s': invalid value type %u", kv->key, t);
            return -1;
        }
        kv->type = (gguf_type)t;
        if (rd_value(&c, kv, kv->key)) return -1;
        pv->kv_order[i] = i;
    }
    if (sort_indices(g, pv->kv_order, g->n_kv, cmp_kv_key)) { set_err(err, errlen, "out of memory"); return -1; }
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (strcmp(g->kv[pv->kv_order[i]].key, g->kv[pv->kv_order[i - 1]].key) == 0) {
            set_err(err, errlen, "duplicate metadata key '%s'", g->kv[pv->kv_order[i]].key);
            return -1;
        }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_find_key(g, "general.alignment");
    if (al) {
        if (al->type != GGUF_TYPE_UINT32 || al->v.u32 == 0 || (al->v.u32 & (al->v.u32 - 1)) != 0) {
            set_err(err, errlen, "general.alignment must be a uint32 power of two");
            return -1;
        }
        g->alignment = al->v.u32;
    }

    g->tensors = arena_alloc(g, (size_t)g->n_tensors * sizeof(gguf_tensor) + 1);
    pv->tensor_order = arena_alloc(g, (size_t)g->n_tensors * sizeof(uint64_t) + 1);
    uint64_t *by_offset = arena_alloc(g, (size_t)g->n_tensors * sizeof(uint64_t) + 1);
    if (!g->tensors || !pv->tensor_order || !by_offset) { set_err(err, errlen, "out of memory"); return -1; }
    memset(g->tensors, 0, (size_t)g->n_tensors * sizeof(gguf_tensor));
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        gguf_string name;
        uint32_t nd, type;
        if (rd_string(&c, &name, "tensor name")) return -1;
        t->name = name.str;
        if (rd_u32(&c, &nd, "tensor dimension count")) return -1;
        if (nd > GGUF_MAX_DIMS) {
            set_err(err, errlen, "tensor '%s': %u dimensions (at most %d)", t->name, nd, GGUF_MAX_DIMS);
            return -1;
        }
        t->n_dims = (int)nd;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if (rd_u64(&c, &ne, "tensor dimension")) return -1;
            if (ne > (uint64_t)INT64_MAX) {
                set_err(err, errlen, "tensor '%s': dimension %u is %llu", t->name, d, (unsigned long long)ne);
                return -1;
            }
            t->ne[d] = (int64_t)ne;
        }
        if (rd_u32(&c, &type, "tensor type") || rd_u64(&c, &t->offset, "tensor offset")) return -1;
        const quant_type_info *qt = quant_type_get((int)type);
        if (!qt) {
            set_err(err, errlen, "tensor '%s': unknown ggml type %u", t->name, type);
            return -1;
        }
        if (!qt->can_dequantize) {
            set_err(err, errlen, "tensor '%s': type %s is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, "
                    "Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K)", t->name, qt->name);
            return -1;
        }
        t->type = (int)type;
        if (t->ne[0] % qt->block_size) {
            set_err(err, errlen, "tensor '%s': row length %lld is not a multiple of the %s block size %lld", t->name,
                    (long long)t->ne[0], qt->name, (long long)qt->block_size);
            return -1;
        }
        /* bytes = ne0/block * type_size * ne1 * ne2 * ne3, each step overflow-checked
         * against the file size (a tensor cannot be larger than the file) */
        uint64_t bytes = (uint64_t)(t->ne[0] / qt->block_size) * qt->type_size;
        if (t->ne[0] / qt->block_size > (int64_t)(g->size / qt->type_size) + 1) bytes = UINT64_MAX;
        for (int d = 1; d < GGUF_MAX_DIMS && bytes != UINT64_MAX; d++) {
            if (t->ne[d] == 0) { bytes = 0; break; }
            if (bytes > (uint64_t)g->size / (uint64_t)t->ne[d] + 1) bytes = UINT64_MAX;
            else bytes *= (uint64_t)t->ne[d];
        }
        if (bytes > g->size) {
            set_err(err, errlen, "tensor '%s': shape [%lld, %lld, %lld, %lld] of %s is larger than the file", t->name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], qt->name);
            return -1;
        }
        t->nbytes = (size_t)bytes;
        if (t->offset % g->alignment) {
            set_err(err, errlen, "tensor '%s': offset %llu is not a multiple of the alignment %u", t->name,
                    (unsigned long long)t->offset, g->alignment);
            return -1;
        }
        pv->tensor_order[i] = i;
        by_offset[i] = i;
    }
    /* data section: after the infos, aligned */
    uint64_t data_off = ((uint64_t)c.pos + g->alignment - 1) / g->alignment * g->alignment;
    g->data_offset = data_off;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        if (t->nbytes == 0) { t->data = g->base + (data_off <= g->size ? data_off : g->size); continue; }
        if (data_off > g->size || t->offset > g->size - data_off || t->nbytes > g->size - data_off - t->offset) {
            set_err(err, errlen, "tensor '%s': data [%llu, +%zu) lies beyond the end of the file (%zu bytes)", t->name,
                    (unsigned long long)(data_off + t->offset), t->nbytes, g->size);
            return -1;
        }
        t->data = g->base + data_off + t->offset;
    }
    if (sort_indices(g, pv->tensor_order, g->n_tensors, cmp_tensor_name) ||
        sort_indices(g, by_offset, g->n_tensors, cmp_tensor_offset)) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    for (uint64_t i = 1; i < g->n_tensors; i++)
        if (strcmp(g->tensors[pv->tensor_order[i]].name, g->tensors[pv->tensor_order[i - 1]].name) == 0) {
            set_err(err, errlen, "duplicate tensor name '%s'", g->tensors[pv->tensor_order[i]].name);
            return -1;
        }
    /* in offset order, each non-empty tensor must start at or after the end of every
     * earlier one (ends are in range: checked above) */
    const gguf_tensor *last = NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[by_offset[i]];
        if (!t->nbytes) continue;
        if (last && last->offset + last->nbytes > t->offset) {
            set_err(err, errlen, "tensors '%s' and '%s' overlap", last->name, t->name);
            return -1;
        }
        if (!last || t->offset + t->nbytes > last->offset + last->nbytes) last = t;
    }
    return 0;
}

/* gguf_file is allocated together with a trailing pointer to its private block. */
static gguf_file *file_new(void) {
    gguf_file *g = calloc(1, sizeof(gguf_file) + sizeof(gguf_private *));
    if (!g) return NULL;
    gguf_private *pv = arena_alloc(g, sizeof(gguf_private));
    if (!pv) { free(g); return NULL; }
    memset(pv, 0, sizeof *pv);
    *(gguf_private **)(g + 1) = pv;
    return g;
}

int gguf_open_memory(const void *data, size_t size, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    gguf_file *g = file_new();
    if (!g) { set_err(err, errlen, "out of memory"); return -1; }
    g->base = data;
    g->size = size;
    if (parse(g, err, errlen)) {
        gguf_close(g);
        return -1;
    }
    *out = g;
    return 0;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen) {
    return gguf_open_file(path, 0, out, err, errlen);
}

int gguf_open_file(const char *path, int in_ram, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size < 24) {
        set_err(err, errlen, "%s: %lld bytes is too small for a GGUF file", path, (long long)st.st_size);
        close(fd);
        return -1;
    }
    filemap fm;
    int rc = filemap_open(&fm, fd, (size_t)st.st_size, in_ram, path, err, errlen);
    close(fd);
    if (rc) return -1;
    gguf_file *g = file_new();
    if (!g) {
        filemap_close(&fm);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    g->base = fm.data;
    g->size = fm.size;
    g->fm = fm;
    g->mapped = 1;
    char msg[512] = "";
    if (parse(g, msg, sizeof msg)) {
        set_err(err, errlen, "%s: %s", path, msg);
        gguf_close(g);
        return -1;
    }
    *out = g;
    return 0;
}

void gguf_close(gguf_file *g) {
    if (!g) return;
    if (g->mapped) filemap_close(&g->fm);
    arena_free(g);
    free(g);
}

const gguf_kv *gguf_find_key(const gguf_file *g, const char *key) {
    if (!g || !key || !g->n_kv) return NULL;
    const uint64_t *ord = priv(g)->kv_order;
    uint64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->kv[ord[mid]].key, key);
        if (c == 0) return &g->kv[ord[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name) {
    if (!g || !name || !g->n_tensors) return NULL;
    const uint64_t *ord = priv(g)->tensor_order;
    uint64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->tensors[ord[mid]].name, name);
        if (c == 0) return &g->tensors[ord[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

#define GETTER(fn, ctype, tag, member)                                        \
    int fn(const gguf_file *g, const char *key, ctype *out) {                 \
        const gguf_kv *kv = gguf_find_key(g, key);                            \
        if (!kv) return 0;                                                    \
        if (kv->type != tag) return -1;                                       \
        *out = kv->v.member;                                                  \
        return 1;                                                             \
    }
GETTER(gguf_get_u8, uint8_t, GGUF_TYPE_UINT8, u8)
GETTER(gguf_get_i8, int8_t, GGUF_TYPE_INT8, i8)
GETTER(gguf_get_u16, uint16_t, GGUF_TYPE_UINT16, u16)
GETTER(gguf_get_i16, int16_t, GGUF_TYPE_INT16, i16)
GETTER(gguf_get_u32, uint32_t, GGUF_TYPE_UINT32, u32)
GETTER(gguf_get_i32, int32_t, GGUF_TYPE_INT32, i32)
GETTER(gguf_get_u64, uint64_t, GGUF_TYPE_UINT64, u64)
GETTER(gguf_get_i64, int64_t, GGUF_TYPE_INT64, i64)
GETTER(gguf_get_f32, float, GGUF_TYPE_FLOAT32, f32)
GETTER(gguf_get_f64, double, GGUF_TYPE_FLOAT64, f64)
#undef GETTER

int gguf_get_bool(const gguf_file *g, const char *key, int *out) {
    const gguf_kv *kv = gguf_find_key(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_BOOL) return -1;
    *out = kv->v.u8;
    return 1;
}

int gguf_get_str(const gguf_file *g, const char *key, const char **out, uint64_t *len) {
    const gguf_kv *kv = gguf_find_key(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_STRING) return -1;
    *out = kv->str.str;
    if (len) *len = kv->str.len;
    return 1;
}

int gguf_get_int(const gguf_file *g, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find_key(g, key);
    if (!kv) return 0;
    switch (kv->type) {
    case GGUF_TYPE_UINT8: *out = kv->v.u8; return 1;
    case GGUF_TYPE_INT8: *out = kv->v.i8; return 1;
    case GGUF_TYPE_UINT16: *out = kv->v.u16; return 1;
    case GGUF_TYPE_INT16: *out = kv->v.i16; return 1;
    case GGUF_TYPE_UINT32: *out = kv->v.u32; return 1;
    case GGUF_TYPE_INT32: *out = kv->v.i32; return 1;
    case GGUF_TYPE_INT64: *out = kv->v.i64; return 1;
    case GGUF_TYPE_UINT64:
        if (kv->v.u64 > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)kv->v.u64;
        return 1;
    default: return -1;
    }
}

int gguf_get_float(const gguf_file *g, const char *key, double *out) {
    const gguf_kv *kv = gguf_find_key(g, key);
    if (!kv) return 0;
    if (kv->type == GGUF_TYPE_FLOAT32) { *out = kv->v.f32; return 1; }
    if (kv->type == GGUF_TYPE_FLOAT64) { *out = kv->v.f64; return 1; }
    return -1;
}

int gguf_get_arr(const gguf_file *g, const char *key, gguf_type elem_type, const void **data, uint64_t *n) {
    const gguf_kv *kv = gguf_find_key(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_ARRAY || (elem_type != GGUF_TYPE_COUNT && kv->arr_type != elem_type)) return -1;
    *data = kv->arr;
    *n = kv->arr_n;
    return 1;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *name;
    int type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t offset, nbytes;
} wtensor;

struct gguf_writer {
    FILE *f;
    char *path;
    char err[512];
    int failed;
    uint32_t alignment;
    /* serialized key-value pairs, and their keys for duplicate checks */
    uint8_t *kv_buf;
    size_t kv_len, kv_cap;
    char **keys;
    uint64_t n_kv, keys_cap;
    wtensor *tensors;
    uint64_t n_tensors, tensors_cap;
    uint64_t data_size;  /* bytes of the data section so far (with padding) */
    int header_written;
    uint64_t cur;        /* tensor being written */
    uint64_t cur_done;   /* bytes of it written */
};

static int wfail(gguf_writer *w, const char *fmt, ...) {
    if (!w->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->err, sizeof w->err, fmt, ap);
        va_end(ap);
        w->failed = 1;
    }
    return -1;
}

gguf_writer *gguf_writer_open(const char *path, char *err, size_t errlen) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) { set_err(err, errlen, "out of memory"); return NULL; }
    w->path = strdup(path);
    w->f = fopen(path, "wb");
    if (!w->f || !w->path) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        if (w->f) fclose(w->f);
        free(w->path);
        free(w);
        return NULL;
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

static int kv_put(gguf_writer *w, const void *p, size_t n) {
    if (w->kv_cap - w->kv_len < n) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap - w->kv_len < n) cap *= 2;
        uint8_t *nb = realloc(w->kv_buf, cap);
        if (!nb) return wfail(w, "out of memory");
        w->kv_buf = nb;
        w->kv_cap = cap;
    }
    memcpy(w->kv_buf + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

static int kv_put_u32(gguf_writer *w, uint32_t v) { return kv_put(w, &v, 4); }
static int kv_put_u64(gguf_writer *w, uint64_t v) { return kv_put(w, &v, 8); }
static int kv_put_str(gguf_writer *w, const char *s, uint64_t len) {
    return kv_put_u64(w, len) || (len && kv_put(w, s, (size_t)len)) ? -1 : 0;
}

/* Starts a key-value pair: checks state and duplicates, writes key and type. */
static int kv_begin(gguf_writer *w, const char *key, gguf_type t) {
    if (w->failed) return -1;
    if (w->header_written) return wfail(w, "key '%s' added after the header was written", key);
    if (!key) return wfail(w, "NULL key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return wfail(w, "duplicate key '%s'", key);
    if (w->n_kv == w->keys_cap) {
        uint64_t cap = w->keys_cap ? w->keys_cap * 2 : 64;
        char **nk = realloc(w->keys, (size_t)cap * sizeof(char *));
        if (!nk) return wfail(w, "out of memory");
        w->keys = nk;
        w->keys_cap = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key))) return wfail(w, "out of memory");
    w->n_kv++;
    return kv_put_str(w, key, strlen(key)) || kv_put_u32(w, (uint32_t)t) ? -1 : 0;
}

#define ADDER(fn, ctype, tag)                                                         \
    int fn(gguf_writer *w, const char *key, ctype v) {                                \
        return kv_begin(w, key, tag) || kv_put(w, &v, sizeof v) ? -1 : 0;             \
    }
ADDER(gguf_writer_add_u8, uint8_t, GGUF_TYPE_UINT8)
ADDER(gguf_writer_add_i8, int8_t, GGUF_TYPE_INT8)
ADDER(gguf_writer_add_u16, uint16_t, GGUF_TYPE_UINT16)
ADDER(gguf_writer_add_i16, int16_t, GGUF_TYPE_INT16)
ADDER(gguf_writer_add_i32, int32_t, GGUF_TYPE_INT32)
ADDER(gguf_writer_add_u64, uint64_t, GGUF_TYPE_UINT64)
ADDER(gguf_writer_add_i64, int64_t, GGUF_TYPE_INT64)
ADDER(gguf_writer_add_f32, float, GGUF_TYPE_FLOAT32)
ADDER(gguf_writer_add_f64, double, GGUF_TYPE_FLOAT64)
#undef ADDER

int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v) {
    if (key && strcmp(key, "general.alignment") == 0) {
        if (v == 0 || (v & (v - 1)) != 0) return wfail(w, "general.alignment %u is not a power of two", v);
        if (!w->failed && !w->header_written) {
            if (w->n_tensors) return wfail(w, "general.alignment must be set before adding tensors");
            w->alignment = v;
        }
    }
    return kv_begin(w, key, GGUF_TYPE_UINT32) || kv_put(w, &v, 4) ? -1 : 0;
}

int gguf_writer_add_bool(gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    return kv_begin(w, key, GGUF_TYPE_BOOL) || kv_put(w, &b, 1) ? -1 : 0;
}

int gguf_writer_add_str_len(gguf_writer *w, const char *key, const char *s, uint64_t len) {
    return kv_begin(w, key, GGUF_TYPE_STRING) || kv_put_str(w, s, len) ? -1 : 0;
}

int gguf_writer_add_str(gguf_writer *w, const char *key, const char *s) {
    return gguf_writer_add_str_len(w, key, s, s ? strlen(s) : 0);
}

int gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type et, const void *data, uint64_t n) {
    if ((unsigned)et >= GGUF_TYPE_COUNT || et == GGUF_TYPE_ARRAY || et == GGUF_TYPE_STRING)
        return wfail(w, "key '%s': bad array element type %d", key ? key : "", (int)et);
    if (kv_begin(w, key, GGUF_TYPE_ARRAY) || kv_put_u32(w, (uint32_t)et) || kv_put_u64(w, n)) return -1;
    size_t sz = type_sizes[et];
    if (n > SIZE_MAX / sz) return wfail(w, "key '%s': array too large", key);
    if (et == GGUF_TYPE_BOOL) {
        for (uint64_t i = 0; i < n; i++) {
            uint8_t b = ((const uint8_t *)data)[i] != 0;
            if (kv_put(w, &b, 1)) return -1;
        }
        return 0;
    }
    return n ? kv_put(w, data, (size_t)(n * sz)) : 0;
}

int gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
                            uint64_t n) {
    if (kv_begin(w, key, GGUF_TYPE_ARRAY) || kv_put_u32(w, GGUF_TYPE_STRING) || kv_put_u64(w, n)) return -1;
    for (uint64_t i = 0; i < n; i++)
        if (kv_put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]))) return -1;
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int gguf_writer_add_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne) {
    if (w->failed) return -1;
    if (w->header_written) return wfail(w, "tensor '%s' added after the header was written", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) return wfail(w, "tensor '%s': %d dimensions", name, n_dims);
    const quant_type_info *qt = quant_type_get(type);
    if (!qt) return wfail(w, "tensor '%s': unknown type %d", name, type);
    uint64_t count = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 1) return wfail(w, "tensor '%s': dimension %d is %lld", name, d, (long long)ne[d]);
        if (count > UINT64_MAX / 2 / (uint64_t)ne[d]) return wfail(w, "tensor '%s': too large", name);
        count *= (uint64_t)ne[d];
    }
    if (ne[0] % qt->block_size)
        return wfail(w, "tensor '%s': row length %lld is not a multiple of the %s block size", name, (long long)ne[0],
                     qt->name);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return wfail(w, "duplicate tensor '%s'", name);
    if (w->n_tensors == w->tensors_cap) {
        uint64_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        wtensor *nt = realloc(w->tensors, (size_t)cap * sizeof(wtensor));
        if (!nt) return wfail(w, "out of memory");
        w->tensors = nt;
        w->tensors_cap = cap;
    }
    wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return wfail(w, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = count / (uint64_t)qt->block_size * qt->type_size;
    t->offset = w->data_size;
    w->data_size = align_up(w->data_size + t->nbytes, w->alignment);
    w->n_tensors++;
    return 0;
}

static int wwrite(gguf_writer *w, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, w->f) != n) return wfail(w, "%s: write failed: %s", w->path, strerror(errno));
    return 0;
}

static int wpad(gguf_writer *w, uint64_t n) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        if (wwrite(w, zeros, k)) return -1;
        n -= k;
    }
    return 0;
}

int gguf_writer_write_header(gguf_writer *w) {
    if (w->failed) return -1;
    if (w->header_written) return wfail(w, "header written twice");
    uint32_t version = 3;
    uint64_t pos = 0;
    if (wwrite(w, "GGUF", 4) || wwrite(w, &version, 4) || wwrite(w, &w->n_tensors, 8) || wwrite(w, &w->n_kv, 8) ||
        wwrite(w, w->kv_buf, w->kv_len))
        return -1;
    pos = 24 + w->kv_len;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        if (wwrite(w, &len, 8) || wwrite(w, t->name, (size_t)len) || wwrite(w, &nd, 4)) return -1;
        for (int d = 0; d < t->n_dims; d++)
            if (wwrite(w, &t->ne[d], 8)) return -1;
        if (wwrite(w, &type, 4) || wwrite(w, &t->offset, 8)) return -1;
        pos += 8 + len + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
    }
    if (wpad(w, align_up(pos, w->alignment) - pos)) return -1;
    w->header_written = 1;
    w->cur = 0;
    w->cur_done = 0;
    return 0;
}

int gguf_writer_write_tensor_part(gguf_writer *w, const void *data, size_t nbytes) {
    if (w->failed) return -1;
    if (!w->header_written) return wfail(w, "tensor data written before the header");
    if (w->cur >= w->n_tensors) return wfail(w, "more tensor data than declared tensors");
    wtensor *t = &w->tensors[w->cur];
    if (nbytes > t->nbytes - w->cur_done)
        return wfail(w, "tensor '%s': %zu bytes written past its size %llu", t->name, nbytes,
                     (unsigned long long)t->nbytes);
    if (wwrite(w, data, nbytes)) return -1;
    w->cur_done += nbytes;
    if (w->cur_done == t->nbytes) {
        if (wpad(w, align_up(t->nbytes, w->alignment) - t->nbytes)) return -1;
        w->cur++;
        w->cur_done = 0;
    }
    return 0;
}

int gguf_writer_write_tensor(gguf_writer *w, const void *data, size_t nbytes) {
    if (w->failed) return -1;
    if (w->header_written && w->cur < w->n_tensors && nbytes != w->tensors[w->cur].nbytes)
        return wfail(w, "tensor '%s': %zu bytes given, its size is %llu", w->tensors[w->cur].name, nbytes,
                     (unsigned long long)w->tensors[w->cur].nbytes);
    if (w->header_written && w->cur < w->n_tensors && w->cur_done)
        return wfail(w, "tensor '%s' was partly written", w->tensors[w->cur].name);
    if (nbytes == 0 && w->header_written && w->cur < w->n_tensors) { /* empty tensor: nothing but padding */
        w->cur++;
        return 0;
    }
    return gguf_writer_write_tensor_part(w, data, nbytes);
}

int gguf_writer_close(gguf_writer *w, char *err, size_t errlen) {
    if (!w) return -1;
    if (!w->failed && !w->header_written) gguf_writer_write_header(w);
    if (!w->failed && w->cur < w->n_tensors)
        wfail(w, "only %llu of %llu tensors were written", (unsigned long long)w->cur,
              (unsigned long long)w->n_tensors);
    if (w->f) {
        if (fclose(w->f) != 0) wfail(w, "%s: close failed: %s", w->path, strerror(errno));
        w->f = NULL;
    }
    int rc = w->failed ? -1 : 0;
    if (rc) {
        set_err(err, errlen, "%s", w->err);
        remove(w->path);
    }
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->kv_buf);
    free(w->path);
    free(w);
    return rc;
}
