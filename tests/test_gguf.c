/* test_gguf.c - the GGUF reader and writer (src/model/gguf.c).
 *   1. tests/data/gguf/fixture*.gguf, written by the gguf Python package's GGUFWriter
 *      (tools/make_gguf_fixture.py): every key, value, tensor shape, offset and byte must
 *      equal what the package's GGUFReader read (fixture*.json), and the dequantized sums
 *      must equal the package's.
 *   2. Malformed input: the fixture truncated at every offset, bytes flipped in the
 *      metadata, and hand-built files with absurd counts, lengths, types, shapes,
 *      offsets, duplicates and overlaps: each gives an error (or, for a flip that still
 *      leaves a valid file, a file whose tensors lie inside it), never a crash (the
 *      suite also runs under ASan/UBSan).
 *   3. The streaming writer: a file with every value type and every tensor type,
 *      written in pieces, reads back identically; misuse gives sticky errors.
 * Set QNEXT_GGUF_WRITER_OUT=path to keep the writer's file (tools/make_gguf_fixture.py
 * --check path then reads it with the gguf package). */
#include "kernels/cpu/quant.h"
#include "model/gguf.h"
#include "test_util.h"
#include "util/json.h"

#include <errno.h>
#include <stdint.h>
#include <unistd.h>

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* exact integer from a JSON number's source text (json_as_int64 goes through a double) */
static int jint(const json *j, int64_t *out) {
    if (!j || j->type != JSON_NUMBER || !j->is_int) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(j->str, &end, 10);
    if (errno || end == j->str) return 0;
    *out = v;
    return 1;
}
static int jget(const json *obj, const char *key, int64_t *out) { return jint(json_get(obj, key), out); }

static int hexval(char c) { return c >= 'a' ? c - 'a' + 10 : c - '0'; }

static const char *type_name_of(const gguf_kv *kv) {
    static const char *n[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
                              "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    return n[kv->type];
}

/* one scalar of type t at index i of array a (or the kv's own value when a is NULL),
 * compared with a JSON value */
static int value_matches(gguf_type t, const void *a, uint64_t i, const gguf_kv *kv, const json *jv) {
    switch (t) {
    case GGUF_TYPE_STRING: {
        const gguf_string *s = a ? &((const gguf_string *)a)[i] : &kv->str;
        return jv->type == JSON_STRING && jv->len == s->len && memcmp(jv->str, s->str, s->len) == 0 &&
               s->str[s->len] == 0;
    }
    case GGUF_TYPE_BOOL: {
        int b = a ? ((const uint8_t *)a)[i] : kv->v.u8;
        return (jv->type == JSON_TRUE && b == 1) || (jv->type == JSON_FALSE && b == 0);
    }
    case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: {
        double d = t == GGUF_TYPE_FLOAT32 ? (a ? ((const float *)a)[i] : kv->v.f32)
                                          : (a ? ((const double *)a)[i] : kv->v.f64);
        double want;
        return json_as_double(jv, &want) && want == d && signbit(want) == signbit(d);
    }
    case GGUF_TYPE_UINT64: {
        uint64_t v = a ? ((const uint64_t *)a)[i] : kv->v.u64;
        return jv->type == JSON_NUMBER && strtoull(jv->str, NULL, 10) == v;
    }
    default: {
        int64_t v = 0;
        switch (t) {
        case GGUF_TYPE_UINT8: v = a ? ((const uint8_t *)a)[i] : kv->v.u8; break;
        case GGUF_TYPE_INT8: v = a ? ((const int8_t *)a)[i] : kv->v.i8; break;
        case GGUF_TYPE_UINT16: v = a ? ((const uint16_t *)a)[i] : kv->v.u16; break;
        case GGUF_TYPE_INT16: v = a ? ((const int16_t *)a)[i] : kv->v.i16; break;
        case GGUF_TYPE_UINT32: v = a ? ((const uint32_t *)a)[i] : kv->v.u32; break;
        case GGUF_TYPE_INT32: v = a ? ((const int32_t *)a)[i] : kv->v.i32; break;
        case GGUF_TYPE_INT64: v = a ? ((const int64_t *)a)[i] : kv->v.i64; break;
        default: return 0;
        }
        int64_t want;
        return jint(jv, &want) && want == v;
    }
    }
}

static gguf_type type_from_name(const char *s) {
    static const char *n[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
                              "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    for (int i = 0; i < GGUF_TYPE_COUNT; i++) if (s && strcmp(s, n[i]) == 0) return (gguf_type)i;
    return GGUF_TYPE_COUNT;
}

/* ------------------------------------------------------------ 1. fixtures */

static void check_fixture(const char *stem) {
    char gpath[256], jpath[256], err[512] = "";
    snprintf(gpath, sizeof gpath, "tests/data/gguf/%s.gguf", stem);
    snprintf(jpath, sizeof jpath, "tests/data/gguf/%s.json", stem);
    json *ref = json_parse_file(jpath, err, sizeof err);
    CHECK(ref != NULL, "%s: %s", jpath, err);
    if (!ref) return;
    gguf_file *g = NULL;
    int rc = gguf_open(gpath, &g, err, sizeof err);
    CHECK(rc == 0, "open %s: %s", gpath, err);
    if (rc) { json_free(ref); return; }

    int64_t v;
    CHECK(jget(ref, "version", &v) && g->version == (uint32_t)v, "%s version", stem);
    CHECK(jget(ref, "alignment", &v) && g->alignment == (uint32_t)v, "%s alignment %u", stem,
          g->alignment);
    CHECK(jget(ref, "data_offset", &v) && g->data_offset == (uint64_t)v, "%s data offset %llu vs %lld",
          stem, (unsigned long long)g->data_offset, (long long)v);
    CHECK(jget(ref, "file_size", &v) && g->size == (size_t)v, "%s size", stem);

    const json *kvs = json_get(ref, "kv");
    CHECK(kvs && g->n_kv == kvs->n, "%s: %llu keys, package read %zu", stem, (unsigned long long)g->n_kv,
          kvs ? kvs->n : 0);
    for (size_t i = 0; kvs && i < kvs->n; i++) {
        const json *e = kvs->items[i];
        const char *key = json_get_string(e, "key");
        const gguf_kv *kv = gguf_find_key(g, key);
        CHECK(kv != NULL, "%s: key %s missing", stem, key);
        if (!kv) continue;
        CHECK(i < g->n_kv && strcmp(g->kv[i].key, key) == 0, "%s: key %zu order", stem, i);
        CHECK(strcmp(type_name_of(kv), json_get_string(e, "type")) == 0, "%s: %s type %s", stem, key,
              type_name_of(kv));
        const json *jv = json_get(e, "value");
        if (kv->type == GGUF_TYPE_ARRAY) {
            gguf_type et = type_from_name(json_get_string(e, "elem_type"));
            CHECK(kv->arr_type == et, "%s: %s element type", stem, key);
            CHECK(jv->type == JSON_ARRAY && jv->n == kv->arr_n, "%s: %s length %llu", stem, key,
                  (unsigned long long)kv->arr_n);
            for (uint64_t k = 0; k < kv->arr_n && k < jv->n; k++)
                CHECK(value_matches(kv->arr_type, kv->arr, k, kv, jv->items[k]), "%s: %s[%llu]", stem, key,
                      (unsigned long long)k);
            const void *data;
            uint64_t n;
            CHECK(gguf_get_arr(g, key, et, &data, &n) == 1 && data == kv->arr && n == kv->arr_n, "get_arr %s", key);
            CHECK(gguf_get_arr(g, key, et == GGUF_TYPE_UINT8 ? GGUF_TYPE_INT8 : GGUF_TYPE_UINT8, &data, &n) == -1,
                  "get_arr wrong type %s", key);
        } else {
            CHECK(value_matches(kv->type, NULL, 0, kv, jv), "%s: value of %s", stem, key);
        }
    }
    /* typed getters */
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
    float f32; double f64; int b; const char *s; uint64_t slen;
    CHECK(gguf_get_u8(g, "test.u8", &u8) == 1 && u8 == 200, "u8");
    CHECK(gguf_get_i8(g, "test.i8", &i8) == 1 && i8 == -100, "i8");
    CHECK(gguf_get_u16(g, "test.u16", &u16) == 1 && u16 == 60000, "u16");
    CHECK(gguf_get_i16(g, "test.i16", &i16) == 1 && i16 == -30000, "i16");
    CHECK(gguf_get_u32(g, "test.u32", &u32) == 1 && u32 == 4000000000u, "u32");
    CHECK(gguf_get_i32(g, "test.i32", &i32) == 1 && i32 == -2000000000, "i32");
    CHECK(gguf_get_u64(g, "test.u64", &u64) == 1 && u64 == (1ull << 63) + 5, "u64");
    CHECK(gguf_get_i64(g, "test.i64", &i64) == 1 && i64 == -(1ll << 62) - 7, "i64");
    CHECK(gguf_get_f32(g, "test.f32", &f32) == 1 && f32 == 3.14159f, "f32");
    CHECK(gguf_get_f64(g, "test.f64", &f64) == 1 && f64 == 2.718281828459045, "f64");
    CHECK(gguf_get_bool(g, "test.bool_true", &b) == 1 && b == 1, "bool");
    CHECK(gguf_get_bool(g, "test.bool_false", &b) == 1 && b == 0, "bool false");
    CHECK(gguf_get_str(g, "general.architecture", &s, &slen) == 1 && strcmp(s, "qwen3next") == 0 && slen == 9, "arch");
    CHECK(gguf_get_u32(g, "test.i32", &u32) == -1 && gguf_get_u32(g, "no.such.key", &u32) == 0, "getter codes");
    CHECK(gguf_get_int(g, "test.u16", &i64) == 1 && i64 == 60000, "get_int u16");
    CHECK(gguf_get_int(g, "qwen3next.block_count", &i64) == 1 && i64 == 48, "get_int u32");
    CHECK(gguf_get_int(g, "test.u64", &i64) == -1, "get_int u64 > INT64_MAX");
    CHECK(gguf_get_int(g, "test.str", &i64) == -1, "get_int string");
    CHECK(gguf_get_float(g, "test.f32", &f64) == 1 && f64 == (double)3.14159f, "get_float");

    const json *ts = json_get(ref, "tensors");
    CHECK(ts && g->n_tensors == ts->n, "%s: tensor count", stem);
    for (size_t i = 0; ts && i < ts->n; i++) {
        const json *e = ts->items[i];
        const char *name = json_get_string(e, "name");
        const gguf_tensor *t = gguf_find_tensor(g, name);
        CHECK(t != NULL, "%s: tensor %s missing", stem, name);
        if (!t) continue;
        int64_t tid = -1, off = -1, nb = -1;
        CHECK(jget(e, "type_id", &tid) && jget(e, "file_offset", &off) && jget(e, "nbytes", &nb), "%s: %s fields",
              stem, name);
        CHECK(t->type == tid && strcmp(quant_type_name(t->type), json_get_string(e, "type")) == 0, "%s: %s type",
              stem, name);
        const json *ne = json_get(e, "ne");
        CHECK(ne && (size_t)t->n_dims == ne->n, "%s: %s n_dims %d", stem, name, t->n_dims);
        for (size_t d = 0; ne && d < ne->n && d < 4; d++) {
            int64_t x;
            CHECK(jint(ne->items[d], &x) && x == t->ne[d], "%s: %s ne[%zu]", stem, name, d);
        }
        CHECK((const uint8_t *)t->data - g->base == off, "%s: %s offset", stem, name);
        CHECK((uintptr_t)t->data % g->alignment == 0 || g->alignment > 4096, "%s: %s not aligned", stem, name);
        CHECK((int64_t)t->nbytes == nb, "%s: %s nbytes %zu", stem, name, t->nbytes);
        const json *hex = json_get(e, "hex");
        CHECK(hex && hex->len == 2 * t->nbytes, "%s: %s hex", stem, name);
        int same = 1;
        for (size_t k = 0; hex && k < t->nbytes && k * 2 + 1 < hex->len; k++)
            if (((const uint8_t *)t->data)[k] != (hexval(hex->str[2 * k]) << 4 | hexval(hex->str[2 * k + 1]))) same = 0;
        CHECK(same, "%s: %s bytes differ", stem, name);
        /* dequantize the whole tensor (all rows) and compare the sum with the package's */
        int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        float *deq = malloc(sizeof(float) * (size_t)n);
        CHECK(quant_dequantize_row(t->type, t->data, deq, n) == 0, "%s: dequantize %s", stem, name);
        double sum = 0, mag = 0, want = 0;
        for (int64_t k = 0; k < n; k++) { sum += deq[k]; mag += fabs(deq[k]); }
        json_get_double(e, "deq_sum", 0, &want);
        CHECK(fabs(sum - want) <= 1e-12 * mag, "%s: %s sum %.17g vs %.17g", stem, name, sum, want);
        free(deq);
        /* in declaration order too */
        CHECK(strcmp(g->tensors[i].name, name) == 0, "%s: tensor order", stem);
    }
    CHECK(gguf_find_tensor(g, "no.such.tensor") == NULL, "missing tensor");
    gguf_close(g);
    json_free(ref);
}

/* ------------------------------------------------------------ 2. malformed input */

/* An open that succeeded must describe tensors that lie inside the buffer. */
static int sane(const gguf_file *g, const uint8_t *buf, size_t len) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (t->nbytes && ((const uint8_t *)t->data < buf || (const uint8_t *)t->data + t->nbytes > buf + len)) return 0;
    }
    return 1;
}

static void check_truncations_and_flips(void) {
    size_t len;
    uint8_t *full = read_all("tests/data/gguf/fixture.gguf", &len);
    CHECK(full != NULL, "fixture missing");
    if (!full) return;
    gguf_file *g;
    char err[512];
    CHECK(gguf_open_memory(full, len, &g, err, sizeof err) == 0, "fixture from memory: %s", err);
    /* end of the last tensor's bytes: any shorter file must fail */
    size_t end = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        size_t e = (size_t)((const uint8_t *)g->tensors[i].data - full) + g->tensors[i].nbytes;
        if (e > end) end = e;
    }
    size_t meta_end = (size_t)g->data_offset;
    gguf_close(g);
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        /* every offset of the header, the scalar keys and the tensor infos; every 5th
         * byte in the token array between them; every 7th byte of the data */
        int dense = n < 2048 || (n + 1536 >= meta_end && n <= meta_end) || n >= end - 1;
        if (!dense && n % (n < meta_end ? 5 : 7)) continue;
        uint8_t *cut = malloc(n ? n : 1); /* exact size, so ASan sees any over-read */
        memcpy(cut, full, n);
        err[0] = 0;
        int rc = gguf_open_memory(cut, n, &g, err, sizeof err);
        if (n < end) {
            if (rc == 0 && bad++ < 5) CHECK(0, "truncated at %zu of %zu accepted", n, len);
            if (rc != 0 && !err[0] && bad++ < 5) CHECK(0, "truncated at %zu: no message", n);
        } else if (rc == 0) {
            if (!sane(g, cut, n) && bad++ < 5) CHECK(0, "truncated at %zu: tensors outside", n);
        }
        if (rc == 0) gguf_close(g);
        free(cut);
    }
    CHECK(bad == 0, "%d truncation failures", bad);

    /* flip bits in every metadata byte (several patterns) */
    bad = 0;
    int accepted = 0, rejected = 0;
    const uint8_t pats[] = {0x01, 0x80, 0xff, 0x40};
    uint8_t *m = malloc(len);
    for (size_t i = 0; i < meta_end; i++) {
        /* all patterns in the header, scalar keys and tensor infos; sparser in the
         * middle, which is mostly the 1000-string token array */
        int dense = i < 2048 || i + 1536 >= meta_end;
        if (!dense && i % 3) continue;
        for (size_t p = 0; p < (dense ? sizeof pats : 1); p++) {
            memcpy(m, full, len);
            m[i] ^= pats[p];
            int rc = gguf_open_memory(m, len, &g, err, sizeof err);
            if (rc == 0) {
                accepted++;
                if (!sane(g, m, len) && bad++ < 5) CHECK(0, "flip at %zu: tensors outside", i);
                gguf_close(g);
            } else rejected++;
        }
    }
    CHECK(bad == 0, "%d flips gave insane files", bad);
    CHECK(rejected > 0 && accepted > 0, "flips: %d accepted, %d rejected", accepted, rejected);
    free(m);
    free(full);
}

/* hand-built files */
typedef struct { uint8_t *p; size_t n, cap; } bb;
static void bb_put(bb *b, const void *d, size_t n) {
    if (b->cap - b->n < n) {
        b->cap = (b->cap + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u32(bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bb *b, const char *s) { bb_u64(b, strlen(s)); bb_put(b, s, strlen(s)); }
static void bb_head(bb *b, uint32_t version, uint64_t nt, uint64_t nkv) {
    bb_put(b, "GGUF", 4); bb_u32(b, version); bb_u64(b, nt); bb_u64(b, nkv);
}
static void bb_tensor(bb *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    bb_str(b, name); bb_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++) bb_u64(b, ne[i]);
    bb_u32(b, type); bb_u64(b, off);
}
static void bb_pad_data(bb *b, size_t align, size_t data_bytes) {
    while (b->n % align) bb_put(b, "", 1);
    for (size_t i = 0; i < data_bytes; i++) { uint8_t z = (uint8_t)i; bb_put(b, &z, 1); }
}

/* expects an error whose message contains `want` */
static void expect_error(bb *b, const char *want, const char *what) {
    gguf_file *g = NULL;
    char err[512] = "";
    uint8_t *exact = malloc(b->n ? b->n : 1);
    memcpy(exact, b->p, b->n);
    int rc = gguf_open_memory(exact, b->n, &g, err, sizeof err);
    CHECK(rc == -1 && g == NULL, "%s: accepted", what);
    CHECK(strstr(err, want) != NULL, "%s: message '%s' lacks '%s'", what, err, want);
    if (rc == 0) gguf_close(g);
    free(exact);
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void check_handmade(void) {
    bb b = {0};
    uint64_t ne2[2] = {32, 2};

    bb_put(&b, "GG", 2); expect_error(&b, "magic", "2 bytes");
    bb_put(&b, "GGUX", 4); bb_u32(&b, 3); bb_u64(&b, 0); bb_u64(&b, 0); expect_error(&b, "magic", "bad magic");
    bb_head(&b, 1, 0, 0); expect_error(&b, "version 1", "v1");
    bb_head(&b, 0x03000000, 0, 0); expect_error(&b, "big-endian", "big endian");
    bb_head(&b, 9, 0, 0); expect_error(&b, "unsupported GGUF version", "v9");
    bb_put(&b, "GGUF", 4); bb_u32(&b, 3); bb_u64(&b, 0); expect_error(&b, "truncated", "short header");
    bb_head(&b, 3, 0, 1ull << 63); expect_error(&b, "impossible", "huge n_kv");
    bb_head(&b, 3, 1ull << 40, 0); expect_error(&b, "impossible", "huge n_tensors");
    bb_head(&b, 3, 0, 1); bb_u64(&b, 1ull << 62); bb_put(&b, "abcdefgh", 8); expect_error(&b, "exceeds", "huge key");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, 13); bb_u32(&b, 0); expect_error(&b, "invalid value type", "type 13");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u64(&b, 1);
    bb_u32(&b, 0); bb_u64(&b, 0); expect_error(&b, "nested", "nested array");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u32(&b, 77); bb_u64(&b, 1);
    expect_error(&b, "element type", "array elem type 77");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u32(&b, GGUF_TYPE_UINT64);
    bb_u64(&b, 1ull << 61); bb_u64(&b, 0); expect_error(&b, "does not fit", "huge u64 array");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u32(&b, GGUF_TYPE_STRING);
    bb_u64(&b, UINT64_MAX); bb_u64(&b, 0); expect_error(&b, "does not fit", "huge string array");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_ARRAY); bb_u32(&b, GGUF_TYPE_STRING);
    bb_u64(&b, 2); bb_str(&b, "x"); bb_u64(&b, 1000); expect_error(&b, "exceeds", "string in array too long");
    bb_head(&b, 3, 0, 1); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_UINT64); bb_u32(&b, 7); expect_error(&b, "truncated", "short value");
    bb_head(&b, 3, 0, 2); bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_UINT8); bb_put(&b, "\1", 1);
    bb_str(&b, "k"); bb_u32(&b, GGUF_TYPE_UINT8); bb_put(&b, "\2", 1); expect_error(&b, "duplicate metadata key", "dup key");
    bb_head(&b, 3, 0, 1); bb_str(&b, "general.alignment"); bb_u32(&b, GGUF_TYPE_UINT32); bb_u32(&b, 48);
    expect_error(&b, "power of two", "alignment 48");
    bb_head(&b, 3, 0, 1); bb_str(&b, "general.alignment"); bb_u32(&b, GGUF_TYPE_UINT32); bb_u32(&b, 0);
    expect_error(&b, "power of two", "alignment 0");
    bb_head(&b, 3, 0, 1); bb_str(&b, "general.alignment"); bb_u32(&b, GGUF_TYPE_UINT8); bb_put(&b, "\x20", 1);
    expect_error(&b, "uint32", "alignment u8");

    uint64_t ne5[5] = {1, 1, 1, 1, 1};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 5, ne5, 0, 0); bb_pad_data(&b, 32, 64); expect_error(&b, "dimensions", "5 dims");
    uint64_t nebig[1] = {(1ull << 63) + 1};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 1, nebig, 0, 0); bb_pad_data(&b, 32, 64); expect_error(&b, "dimension 0", "ne > int64");
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne2, 5, 0); bb_pad_data(&b, 32, 256); expect_error(&b, "unknown ggml type", "type 5");
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne2, 1000, 0); bb_pad_data(&b, 32, 256); expect_error(&b, "unknown ggml type", "type 1000");
    uint64_t ne256[2] = {256, 1};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne256, QUANT_Q2_K, 0); bb_pad_data(&b, 32, 256);
    expect_error(&b, "not supported", "Q2_K");
    uint64_t ne33[2] = {33, 1};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne33, QUANT_Q4_0, 0); bb_pad_data(&b, 32, 256);
    expect_error(&b, "multiple", "row not whole blocks");
    uint64_t nehuge[3] = {1ull << 40, 1ull << 40, 1ull << 40};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 3, nehuge, QUANT_F32, 0); bb_pad_data(&b, 32, 256);
    expect_error(&b, "larger than the file", "huge shape");
    uint64_t nemax[2] = {INT64_MAX, INT64_MAX};
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, nemax, QUANT_Q4_K, 0); bb_pad_data(&b, 32, 256);
    expect_error(&b, "", "INT64_MAX shape");
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne2, QUANT_F32, 4); bb_pad_data(&b, 32, 512);
    expect_error(&b, "alignment", "misaligned offset");
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne2, QUANT_F32, 1ull << 62); bb_pad_data(&b, 32, 512);
    expect_error(&b, "beyond the end", "offset far out");
    bb_head(&b, 3, 1, 0); bb_tensor(&b, "t", 2, ne2, QUANT_F32, 0); bb_pad_data(&b, 32, 255);
    expect_error(&b, "beyond the end", "data one byte short");
    bb_head(&b, 3, 2, 0); bb_tensor(&b, "a", 2, ne2, QUANT_F32, 0); bb_tensor(&b, "b", 2, ne2, QUANT_F32, 128);
    bb_pad_data(&b, 32, 512); expect_error(&b, "overlap", "overlap");
    /* overlap hidden behind an empty tensor between the two in offset order */
    uint64_t ne0[2] = {32, 0}, ne8[2] = {32, 8};
    bb_head(&b, 3, 3, 0); bb_tensor(&b, "big", 2, ne8, QUANT_F32, 0); bb_tensor(&b, "empty", 2, ne0, QUANT_F32, 32);
    bb_tensor(&b, "c", 2, ne2, QUANT_F32, 64); bb_pad_data(&b, 32, 1024); expect_error(&b, "overlap", "overlap past empty");
    bb_head(&b, 3, 2, 0); bb_tensor(&b, "a", 2, ne2, QUANT_F32, 0); bb_tensor(&b, "a", 2, ne2, QUANT_F32, 256);
    bb_pad_data(&b, 32, 512); expect_error(&b, "duplicate tensor", "duplicate tensor");

    /* valid hand-built files */
    bb_head(&b, 2, 2, 1); bb_str(&b, "general.alignment"); bb_u32(&b, GGUF_TYPE_UINT32); bb_u32(&b, 64);
    bb_tensor(&b, "b", 2, ne2, QUANT_F32, 256); bb_tensor(&b, "a", 2, ne2, QUANT_F32, 0); bb_pad_data(&b, 64, 512);
    gguf_file *g;
    char err[256];
    CHECK(gguf_open_memory(b.p, b.n, &g, err, sizeof err) == 0, "valid v2 file: %s", err);
    if (g) {
        const gguf_tensor *ta = gguf_find_tensor(g, "a"), *tb = gguf_find_tensor(g, "b");
        CHECK(g->version == 2 && g->alignment == 64 && g->data_offset % 64 == 0, "v2 header");
        CHECK(ta && tb && (const uint8_t *)ta->data == b.p + g->data_offset &&
              (const uint8_t *)tb->data == b.p + g->data_offset + 256 && ta->nbytes == 256, "v2 tensors");
        gguf_close(g);
    }
    free(b.p);
    memset(&b, 0, sizeof b);
    bb_head(&b, 3, 0, 0);
    CHECK(gguf_open_memory(b.p, b.n, &g, err, sizeof err) == 0 && g->n_kv == 0 && g->n_tensors == 0, "empty file: %s", err);
    gguf_close(g);
    free(b.p);

    CHECK(gguf_open("tests/data/gguf/does-not-exist.gguf", &g, err, sizeof err) == -1 && strstr(err, "does-not-exist"),
          "missing file message: %s", err);
    CHECK(gguf_open("tests/data/gguf", &g, err, sizeof err) == -1, "directory accepted");
}

/* ------------------------------------------------------------ 3. writer */

static void check_writer(void) {
    char path[256], err[512] = "";
    const char *keep = getenv("QNEXT_GGUF_WRITER_OUT");
    if (keep && *keep) snprintf(path, sizeof path, "%s", keep);
    else snprintf(path, sizeof path, "/tmp/qnext_test_gguf_%d.gguf", (int)getpid());

    gguf_writer *w = gguf_writer_open(path, err, sizeof err);
    CHECK(w != NULL, "writer open: %s", err);
    if (!w) return;
    const uint8_t au8[] = {1, 2, 250};
    const int16_t ai16[] = {-5, 7};
    const float af32[] = {1.5f, -2.25f};
    const uint8_t abool[] = {1, 0, 7};
    const uint64_t au64[] = {UINT64_MAX, 3};
    const double af64[] = {0.1, -1e300};
    const char *strs[] = {"alpha", "", "g\xc3\xa9"};
    const char *blob = "a\0b";
    uint64_t blob_len = 3;
    gguf_writer_add_u32(w, "general.alignment", 64);
    gguf_writer_add_str(w, "general.architecture", "qwen3next");
    gguf_writer_add_u8(w, "w.u8", 7);
    gguf_writer_add_i8(w, "w.i8", -7);
    gguf_writer_add_u16(w, "w.u16", 65535);
    gguf_writer_add_i16(w, "w.i16", -32768);
    gguf_writer_add_i32(w, "w.i32", -123456);
    gguf_writer_add_u64(w, "w.u64", 1ull << 60);
    gguf_writer_add_i64(w, "w.i64", INT64_MIN);
    gguf_writer_add_f32(w, "w.f32", 0.1f);
    gguf_writer_add_f64(w, "w.f64", 1.0 / 3.0);
    gguf_writer_add_bool(w, "w.bool", 5);
    gguf_writer_add_str_len(w, "w.blob", blob, blob_len);
    gguf_writer_add_arr(w, "w.arr_u8", GGUF_TYPE_UINT8, au8, 3);
    gguf_writer_add_arr(w, "w.arr_i16", GGUF_TYPE_INT16, ai16, 2);
    gguf_writer_add_arr(w, "w.arr_f32", GGUF_TYPE_FLOAT32, af32, 2);
    gguf_writer_add_arr(w, "w.arr_bool", GGUF_TYPE_BOOL, abool, 3);
    gguf_writer_add_arr(w, "w.arr_u64", GGUF_TYPE_UINT64, au64, 2);
    gguf_writer_add_arr(w, "w.arr_f64", GGUF_TYPE_FLOAT64, af64, 2);
    gguf_writer_add_arr(w, "w.arr_empty", GGUF_TYPE_INT32, NULL, 0);
    gguf_writer_add_arr_str(w, "w.arr_str", strs, NULL, 3);

    /* one tensor of each supported type, contents from our quantizer of a ramp */
    int types[] = {QUANT_F32, QUANT_F16, QUANT_BF16, QUANT_Q4_0, QUANT_Q4_1, QUANT_Q5_0, QUANT_Q5_1, QUANT_Q8_0,
                   QUANT_Q4_K, QUANT_Q5_K, QUANT_Q6_K, QUANT_Q8_K};
    enum { NT = sizeof types / sizeof *types };
    uint8_t *data[NT];
    size_t nbytes[NT];
    float src[3 * 256];
    for (int i = 0; i < 3 * 256; i++) src[i] = sinf((float)i * 0.37f) * (1 + i % 5);
    for (int k = 0; k < NT; k++) {
        int64_t ne[3] = {256, 3, 1};
        int nd = k % 3 == 0 ? 3 : 2; /* some 3-D shapes */
        char name[64];
        snprintf(name, sizeof name, "blk.%d.%s.weight", k, quant_type_name(types[k]));
        nbytes[k] = quant_row_bytes(types[k], 256) * 3;
        data[k] = malloc(nbytes[k]);
        quant_quantize_row(types[k], src, data[k], 3 * 256);
        CHECK(gguf_writer_add_tensor(w, name, types[k], nd, ne) == 0, "add tensor %s", name);
    }
    CHECK(gguf_writer_write_header(w) == 0, "write header");
    for (int k = 0; k < NT; k++) {
        if (k % 2) {
            CHECK(gguf_writer_write_tensor(w, data[k], nbytes[k]) == 0, "write tensor %d", k);
        } else { /* in three uneven pieces */
            size_t a = nbytes[k] / 3, c = nbytes[k] / 2;
            CHECK(gguf_writer_write_tensor_part(w, data[k], a) == 0 &&
                  gguf_writer_write_tensor_part(w, data[k] + a, c - a) == 0 &&
                  gguf_writer_write_tensor_part(w, data[k] + c, nbytes[k] - c) == 0, "write parts %d", k);
        }
    }
    CHECK(gguf_writer_close(w, err, sizeof err) == 0, "writer close: %s", err);

    gguf_file *g = NULL;
    CHECK(gguf_open(path, &g, err, sizeof err) == 0, "read back: %s", err);
    if (g) {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; int32_t i32; uint64_t u64; int64_t i64; float f32;
        double f64; int b; const char *s; uint64_t sl; const void *arr; uint64_t n;
        CHECK(g->version == 3 && g->alignment == 64 && g->data_offset % 64 == 0, "header");
        CHECK(gguf_get_u8(g, "w.u8", &u8) == 1 && u8 == 7, "u8");
        CHECK(gguf_get_i8(g, "w.i8", &i8) == 1 && i8 == -7, "i8");
        CHECK(gguf_get_u16(g, "w.u16", &u16) == 1 && u16 == 65535, "u16");
        CHECK(gguf_get_i16(g, "w.i16", &i16) == 1 && i16 == -32768, "i16");
        CHECK(gguf_get_i32(g, "w.i32", &i32) == 1 && i32 == -123456, "i32");
        CHECK(gguf_get_u64(g, "w.u64", &u64) == 1 && u64 == 1ull << 60, "u64");
        CHECK(gguf_get_i64(g, "w.i64", &i64) == 1 && i64 == INT64_MIN, "i64");
        CHECK(gguf_get_f32(g, "w.f32", &f32) == 1 && f32 == 0.1f, "f32");
        CHECK(gguf_get_f64(g, "w.f64", &f64) == 1 && f64 == 1.0 / 3.0, "f64");
        CHECK(gguf_get_bool(g, "w.bool", &b) == 1 && b == 1, "bool");
        CHECK(gguf_get_str(g, "w.blob", &s, &sl) == 1 && sl == 3 && memcmp(s, blob, 3) == 0, "blob");
        CHECK(gguf_get_arr(g, "w.arr_u8", GGUF_TYPE_UINT8, &arr, &n) == 1 && n == 3 && memcmp(arr, au8, 3) == 0, "arr u8");
        CHECK(gguf_get_arr(g, "w.arr_i16", GGUF_TYPE_INT16, &arr, &n) == 1 && n == 2 && memcmp(arr, ai16, 4) == 0, "arr i16");
        CHECK(gguf_get_arr(g, "w.arr_f32", GGUF_TYPE_FLOAT32, &arr, &n) == 1 && n == 2 && memcmp(arr, af32, 8) == 0, "arr f32");
        CHECK(gguf_get_arr(g, "w.arr_bool", GGUF_TYPE_BOOL, &arr, &n) == 1 && n == 3 &&
              memcmp(arr, "\1\0\1", 3) == 0, "arr bool");
        CHECK(gguf_get_arr(g, "w.arr_u64", GGUF_TYPE_UINT64, &arr, &n) == 1 && n == 2 && memcmp(arr, au64, 16) == 0, "arr u64");
        CHECK(gguf_get_arr(g, "w.arr_f64", GGUF_TYPE_FLOAT64, &arr, &n) == 1 && n == 2 && memcmp(arr, af64, 16) == 0, "arr f64");
        CHECK(gguf_get_arr(g, "w.arr_empty", GGUF_TYPE_INT32, &arr, &n) == 1 && n == 0, "arr empty");
        CHECK(gguf_get_arr(g, "w.arr_str", GGUF_TYPE_STRING, &arr, &n) == 1 && n == 3, "arr str");
        if (n == 3) {
            const gguf_string *ss = arr;
            for (int i = 0; i < 3; i++)
                CHECK(ss[i].len == strlen(strs[i]) && strcmp(ss[i].str, strs[i]) == 0, "arr str %d", i);
        }
        CHECK(g->n_kv == 21 && g->n_tensors == NT, "counts %llu %llu", (unsigned long long)g->n_kv,
              (unsigned long long)g->n_tensors);
        for (int k = 0; k < NT; k++) {
            const gguf_tensor *t = &g->tensors[k];
            CHECK(t->type == types[k] && t->ne[0] == 256 && t->ne[1] == 3 && t->n_dims == (k % 3 == 0 ? 3 : 2),
                  "tensor %d info", k);
            CHECK(t->nbytes == nbytes[k] && memcmp(t->data, data[k], nbytes[k]) == 0, "tensor %d bytes", k);
            CHECK((size_t)((const uint8_t *)t->data - g->base) % 64 == 0, "tensor %d alignment", k);
        }
        gguf_close(g);
    }
    for (int k = 0; k < NT; k++) free(data[k]);
    if (!(keep && *keep)) remove(path);

    /* misuse: errors are reported and sticky, and a failed file is removed */
    snprintf(path, sizeof path, "/tmp/qnext_test_gguf_bad_%d.gguf", (int)getpid());
    int64_t ne[2] = {32, 1};
    float z[32] = {0};
    w = gguf_writer_open(path, err, sizeof err);
    gguf_writer_add_u8(w, "k", 1);
    CHECK(gguf_writer_add_u8(w, "k", 2) == -1, "duplicate key accepted");
    CHECK(gguf_writer_add_u8(w, "k2", 2) == -1, "error not sticky");
    CHECK(gguf_writer_close(w, err, sizeof err) == -1 && strstr(err, "duplicate key"), "close error: %s", err);
    CHECK(access(path, F_OK) != 0, "failed file left behind");

    w = gguf_writer_open(path, err, sizeof err);
    gguf_writer_add_tensor(w, "t", QUANT_F32, 2, ne);
    CHECK(gguf_writer_add_tensor(w, "t", QUANT_F32, 2, ne) == -1, "duplicate tensor accepted");
    gguf_writer_close(w, err, sizeof err);

    w = gguf_writer_open(path, err, sizeof err);
    int64_t ne33[1] = {33};
    CHECK(gguf_writer_add_tensor(w, "t", QUANT_Q4_0, 1, ne33) == -1, "partial block accepted");
    gguf_writer_close(w, err, sizeof err);

    w = gguf_writer_open(path, err, sizeof err);
    gguf_writer_add_tensor(w, "t", QUANT_F32, 2, ne);
    gguf_writer_write_header(w);
    CHECK(gguf_writer_write_tensor(w, z, 64) == -1, "wrong size accepted");
    gguf_writer_close(w, err, sizeof err);

    w = gguf_writer_open(path, err, sizeof err);
    gguf_writer_add_tensor(w, "t", QUANT_F32, 2, ne);
    gguf_writer_add_tensor(w, "u", QUANT_F32, 2, ne);
    gguf_writer_write_header(w);
    gguf_writer_write_tensor(w, z, 128);
    CHECK(gguf_writer_close(w, err, sizeof err) == -1 && strstr(err, "1 of 2"), "missing tensor: %s", err);
    CHECK(access(path, F_OK) != 0, "incomplete file left behind");

    w = gguf_writer_open(path, err, sizeof err);
    CHECK(gguf_writer_add_u32(w, "general.alignment", 24) == -1, "alignment 24 accepted");
    gguf_writer_close(w, err, sizeof err);

    w = gguf_writer_open(path, err, sizeof err);
    gguf_writer_write_header(w);
    CHECK(gguf_writer_add_u8(w, "late", 1) == -1, "key after header accepted");
    gguf_writer_close(w, err, sizeof err);
    remove(path);

    CHECK(gguf_writer_open("/nonexistent-dir/x.gguf", err, sizeof err) == NULL && strstr(err, "nonexistent"),
          "open in missing dir: %s", err);
}

int main(void) {
    check_fixture("fixture");
    check_fixture("fixture_align");
    check_truncations_and_flips();
    check_handmade();
    check_writer();
    return tu_finish("test_gguf");
}
