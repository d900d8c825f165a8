/* safetensors.c - maps safetensors files and indexes their tensors by name.
 *
 * A file is an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and [begin, end) byte range, then the data. Nothing is read up front but
 * the headers: the data stays in the page cache behind mmap, so the 160 GB checkpoint
 * opens in seconds. Every range is checked against the file size, so a truncated shard
 * is an error at open time, not a crash in the forward pass. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/filemap.h"
#include "util/json.h"

typedef struct {
    char *path, *fname;
    size_t size;
    filemap fm;     /* the file's bytes (mapped, or read into memory) */
} st_file;

struct qn_store {
    int in_ram;      /* read the files into memory instead of mapping them (util/filemap.h) */
    st_file *files;
    size_t n_files;
    qn_st_tensor *t;
    size_t n, cap;
    size_t *table;   /* open-addressing hash of tensor indices + 1 (0 = empty) */
    size_t table_cap;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ull; }
    return h;
}

static int dtype_from_str(const char *s, size_t *elsize) {
    if (!strcmp(s, "F32")) { *elsize = 4; return QN_F32; }
    if (!strcmp(s, "F16")) { *elsize = 2; return QN_F16; }
    if (!strcmp(s, "BF16")) { *elsize = 2; return QN_BF16; }
    static const struct { const char *n; size_t sz; } other[] = {
        {"F64", 8}, {"I64", 8}, {"U64", 8}, {"I32", 4}, {"U32", 4}, {"I16", 2}, {"U16", 2},
        {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (!strcmp(s, other[i].n)) { *elsize = other[i].sz; return -1; }
    *elsize = 0;
    return -2;
}

static qnext_status add_tensor(qn_store *st, qn_st_tensor *t) {
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 256;
        qn_st_tensor *nt = realloc(st->t, cap * sizeof *nt);
        if (!nt) return QNEXT_ERR_MEMORY;
        st->t = nt;
        st->cap = cap;
    }
    st->t[st->n++] = *t;
    return QNEXT_OK;
}

static qnext_status build_table(qn_store *st, char *err, size_t errlen) {
    size_t cap = 16;
    while (cap < st->n * 2) cap *= 2;
    st->table = calloc(cap, sizeof *st->table);
    if (!st->table) return QNEXT_ERR_MEMORY;
    st->table_cap = cap;
    for (size_t i = 0; i < st->n; i++) {
        size_t h = hash_str(st->t[i].name) & (cap - 1);
        while (st->table[h]) {
            if (!strcmp(st->t[st->table[h] - 1].name, st->t[i].name)) {
                snprintf(err, errlen, "%s: tensor '%s' appears twice (also in %s)", st->t[i].file, st->t[i].name,
                         st->t[st->table[h] - 1].file);
                return QNEXT_ERR_FORMAT;
            }
            h = (h + 1) & (cap - 1);
        }
        st->table[h] = i + 1;
    }
    return QNEXT_OK;
}

qn_st_tensor *store_find(qn_store *st, const char *name) {
    if (!st->table_cap) return NULL;
    size_t h = hash_str(name) & (st->table_cap - 1);
    while (st->table[h]) {
        qn_st_tensor *t = &st->t[st->table[h] - 1];
        if (!strcmp(t->name, name)) return t;
        h = (h + 1) & (st->table_cap - 1);
    }
    return NULL;
}

size_t store_count(const qn_store *st) { return st->n; }
qn_st_tensor *store_at(qn_store *st, size_t i) { return &st->t[i]; }

/* Maps one file and adds its tensors. */
static qnext_status open_file(qn_store *st, const char *dir, const char *fname, char *err, size_t errlen) {
    st_file *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    size_t plen = strlen(dir) + strlen(fname) + 2;
    f->path = malloc(plen);
    f->fname = strdup(fname);
    if (!f->path || !f->fname) { free(f->path); free(f->fname); return QNEXT_ERR_MEMORY; }
    snprintf(f->path, plen, "%s/%s", dir, fname);
    st->n_files++;

    int fd = open(f->path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", f->path, strerror(errno));
        return QNEXT_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", f->path, strerror(errno));
        close(fd);
        return QNEXT_ERR_IO;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        close(fd);
        snprintf(err, errlen, "%s: truncated safetensors file (%zu bytes, no header)", f->path, f->size);
        return QNEXT_ERR_FORMAT;
    }
    int mrc = filemap_open(&f->fm, fd, f->size, st->in_ram, f->path, err, errlen);
    close(fd);
    if (mrc) return QNEXT_ERR_IO;
    const unsigned char *b = f->fm.data;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > f->size - 8 || hlen > (100u << 20)) {
        snprintf(err, errlen, "%s: corrupt safetensors header (header length %llu, file size %zu)", f->path,
                 (unsigned long long)hlen, f->size);
        return QNEXT_ERR_FORMAT;
    }
    char jerr[256];
    json *h = json_parse((const char *)b + 8, hlen, jerr, sizeof jerr);
    if (!h || h->type != JSON_OBJECT) {
        snprintf(err, errlen, "%s: corrupt safetensors header: %s", f->path, h ? "not a JSON object" : jerr);
        json_free(h);
        return QNEXT_ERR_FORMAT;
    }
    size_t data_start = 8 + hlen, data_size = f->size - data_start;
    qnext_status rc = QNEXT_OK;
    for (size_t i = 0; i < h->n && rc == QNEXT_OK; i++) {
        const char *name = h->keys[i];
        if (!strcmp(name, "__metadata__")) continue;
        json *e = h->items[i];
        const char *dt = json_get_string(e, "dtype");
        json *shape = json_get(e, "shape"), *off = json_get(e, "data_offsets");
        if (!dt || !shape || shape->type != JSON_ARRAY || !off || off->type != JSON_ARRAY || off->n != 2 ||
            shape->n > 8) {
            snprintf(err, errlen, "%s: corrupt safetensors header entry for tensor '%s'", f->path, name);
            rc = QNEXT_ERR_FORMAT;
            break;
        }
        qn_st_tensor t;
        memset(&t, 0, sizeof t);
        size_t elsize;
        t.dtype = dtype_from_str(dt, &elsize);
        snprintf(t.dtype_str, sizeof t.dtype_str, "%s", dt);
        if (t.dtype == -2) {
            snprintf(err, errlen, "%s: tensor '%s' has unknown dtype '%s'", f->path, name, dt);
            rc = QNEXT_ERR_FORMAT;
            break;
        }
        t.n_dims = (int)shape->n;
        uint64_t nel = 1;
        int bad = 0;
        for (int d = 0; d < t.n_dims; d++) {
            int64_t v;
            if (!json_as_int64(shape->items[d], &v) || v < 0 || v > (1ll << 40)) { bad = 1; break; }
            t.shape[d] = v;
            if (v && nel > UINT64_MAX / (uint64_t)v) { bad = 1; break; }
            nel *= (uint64_t)v;
        }
        int64_t o0, o1;
        if (bad || !json_as_int64(off->items[0], &o0) || !json_as_int64(off->items[1], &o1) || o0 < 0 || o1 < o0) {
            snprintf(err, errlen, "%s: corrupt safetensors header entry for tensor '%s'", f->path, name);
            rc = QNEXT_ERR_FORMAT;
            break;
        }
        if ((uint64_t)o1 > data_size) {
            snprintf(err, errlen, "%s: tensor '%s' lies past the end of the file (bytes %lld..%lld of %zu): truncated shard?",
                     f->path, name, (long long)o0, (long long)o1, data_size);
            rc = QNEXT_ERR_FORMAT;
            break;
        }
        if ((uint64_t)(o1 - o0) != nel * elsize) {
            snprintf(err, errlen, "%s: tensor '%s' has %lld bytes but its shape and dtype need %llu", f->path, name,
                     (long long)(o1 - o0), (unsigned long long)(nel * elsize));
            rc = QNEXT_ERR_FORMAT;
            break;
        }
        t.name = strdup(name);
        if (!t.name) { rc = QNEXT_ERR_MEMORY; break; }
        t.data = b + data_start + o0;
        t.nbytes = (size_t)(o1 - o0);
        t.file = f->fname;
        rc = add_tensor(st, &t);
        if (rc) free(t.name);
    }
    json_free(h);
    return rc;
}

void store_close(qn_store *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_files; i++) {
        filemap_close(&st->files[i].fm);
        free(st->files[i].path);
        free(st->files[i].fname);
    }
    for (size_t i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->files);
    free(st->t);
    free(st->table);
    free(st);
}

static int file_exists(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

qnext_status store_open_dir(const char *dir, int in_ram, qn_store **out, char *err, size_t errlen) {
    *out = NULL;
    qn_store *st = calloc(1, sizeof *st);
    if (!st) return QNEXT_ERR_MEMORY;
    st->in_ram = in_ram;
    qnext_status rc = QNEXT_OK;
    json *idx = NULL;
    if (file_exists(dir, "model.safetensors.index.json")) {
        char path[4096];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        idx = json_parse_file(path, err, errlen);
        json *wm = idx ? json_get(idx, "weight_map") : NULL;
        if (!idx) { rc = QNEXT_ERR_FORMAT; goto done; }
        if (!wm || wm->type != JSON_OBJECT) {
            snprintf(err, errlen, "%s: no \"weight_map\" object", path);
            rc = QNEXT_ERR_FORMAT;
            goto done;
        }
        /* Distinct shard names, in first-seen order. */
        const char **names = calloc(wm->n + 1, sizeof *names);
        size_t n_names = 0;
        if (!names) { rc = QNEXT_ERR_MEMORY; goto done; }
        for (size_t i = 0; i < wm->n; i++) {
            json *v = wm->items[i];
            if (v->type != JSON_STRING || !v->len || strchr(v->str, '/') || !strcmp(v->str, "..")) {
                snprintf(err, errlen, "%s: bad shard name for tensor '%s'", path, wm->keys[i]);
                rc = QNEXT_ERR_FORMAT;
                break;
            }
            size_t k = 0;
            while (k < n_names && strcmp(names[k], v->str)) k++;
            if (k == n_names) names[n_names++] = v->str;
        }
        if (rc == QNEXT_OK) {
            st->files = calloc(n_names ? n_names : 1, sizeof *st->files);
            if (!st->files) rc = QNEXT_ERR_MEMORY;
        }
        for (size_t k = 0; k < n_names && rc == QNEXT_OK; k++) rc = open_file(st, dir, names[k], err, errlen);
        free(names);
        if (rc) goto done;
        rc = build_table(st, err, errlen);
        if (rc) goto done;
        for (size_t i = 0; i < wm->n; i++) {
            qn_st_tensor *t = store_find(st, wm->keys[i]);
            if (!t || strcmp(t->file, wm->items[i]->str)) {
                snprintf(err, errlen, "%s/%s: tensor '%s' is listed in model.safetensors.index.json but missing", dir,
                         wm->items[i]->str, wm->keys[i]);
                rc = QNEXT_ERR_FORMAT;
                goto done;
            }
        }
    } else if (file_exists(dir, "model.safetensors")) {
        st->files = calloc(1, sizeof *st->files);
        if (!st->files) { rc = QNEXT_ERR_MEMORY; goto done; }
        rc = open_file(st, dir, "model.safetensors", err, errlen);
        if (rc == QNEXT_OK) rc = build_table(st, err, errlen);
    } else {
        snprintf(err, errlen, "%s: no model.safetensors or model.safetensors.index.json", dir);
        rc = QNEXT_ERR_IO;
    }
done:
    json_free(idx);
    if (rc) {
        if (rc == QNEXT_ERR_MEMORY && err && !err[0]) snprintf(err, errlen, "%s: out of memory", dir);
        store_close(st);
        return rc;
    }
    *out = st;
    return QNEXT_OK;
}
