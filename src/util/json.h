/* json.h - a small, strict JSON reader (RFC 8259) used by the loader (config.json,
 * safetensors headers), the tokenizer (tokenizer.json) and the chat template (messages).
 *
 * The engine core may depend only on libc, so it carries its own parser. It builds a
 * tree of nodes; objects keep their keys in file order, because the chat template's
 * `tojson` must print keys in the order the user wrote them, as Python dicts do.
 * Numbers keep their source text so that integers and floats print back exactly. */
#ifndef QNEXT_JSON_H
#define QNEXT_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json json;
struct json {
    json_type type;
    double num;      /* JSON_NUMBER: value */
    int is_int;      /* JSON_NUMBER: lexeme had no fraction or exponent */
    char *str;       /* JSON_STRING: decoded UTF-8, NUL-terminated; JSON_NUMBER: source lexeme */
    size_t len;      /* JSON_STRING / JSON_NUMBER: bytes in str (a string may hold \u0000) */
    json **items;    /* JSON_ARRAY / JSON_OBJECT: values, in file order */
    char **keys;     /* JSON_OBJECT: keys, parallel to items */
    size_t *key_lens;/* JSON_OBJECT: byte length of each key */
    size_t n;        /* JSON_ARRAY / JSON_OBJECT: number of items */
};

/* Parses text[0..len). Returns NULL on error and writes a message with the byte offset
 * into err (when err is not NULL). Nesting deeper than 512 levels is an error. */
json *json_parse(const char *text, size_t len, char *err, size_t errlen);
/* Reads and parses a whole file; the error message names the file. */
json *json_parse_file(const char *path, char *err, size_t errlen);
void json_free(json *j);

/* Object member by key (the last one wins for duplicates, as Python does), or NULL. */
json *json_get(const json *obj, const char *key);
/* Typed accessors: return 1 and store the value when j is of the right type. */
int json_as_int64(const json *j, int64_t *out);
int json_as_double(const json *j, double *out);
int json_as_bool(const json *j, int *out);
/* Convenience: member of obj with a default when absent or null. Wrong types return -1. */
int json_get_int(const json *obj, const char *key, int64_t def, int64_t *out);
int json_get_double(const json *obj, const char *key, double def, double *out);
int json_get_bool(const json *obj, const char *key, int def, int *out);
const char *json_get_string(const json *obj, const char *key); /* NULL if absent or not a string */

/* Constructors for building documents (server responses, template values). */
json *json_new(json_type t);
json *json_new_string(const char *s, size_t len);
json *json_new_number(double v);
json *json_new_int(int64_t v);
int json_array_push(json *arr, json *item);                 /* takes ownership */
int json_object_set(json *obj, const char *key, json *item); /* takes ownership; replaces */
json *json_clone(const json *j);

/* Serialisers. json_write_compact prints standard compact JSON (no spaces).
 * Returns a malloc'd NUL-terminated buffer and its length in *len_out. */
char *json_write_compact(const json *j, size_t *len_out);

#endif
