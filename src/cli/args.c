/* args.c - see args.h. */
#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int args_parse_ids(const char *s, int32_t **ids, int *n) {
    size_t cap = 64, cnt = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) { fprintf(stderr, "qnext: out of memory\n"); return 0; }
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX ||
            (*end && *end != ' ' && *end != ',' && *end != '\n' && *end != '\t' && *end != '\r')) {
            fprintf(stderr, "qnext: --ids: '%.20s' is not a non-negative token id\n", p);
            free(v);
            return 0;
        }
        if (cnt == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv) { free(v); fprintf(stderr, "qnext: out of memory\n"); return 0; }
            v = nv;
        }
        v[cnt++] = (int32_t)x;
        p = end;
    }
    *ids = v;
    *n = (int)cnt;
    return 1;
}

int args_int(const char *opt, const char *val, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(val, &end, 10);
    if (end == val || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "qnext: %s: '%s' is not an integer in [%ld, %ld]\n", opt, val, lo, hi);
        return 0;
    }
    *out = x;
    return 1;
}

int args_float(const char *opt, const char *val, double *out) {
    char *end;
    errno = 0;
    double x = strtod(val, &end);
    if (end == val || *end || errno) {
        fprintf(stderr, "qnext: %s: '%s' is not a number\n", opt, val);
        return 0;
    }
    *out = x;
    return 1;
}

const char *args_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "qnext: option %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int args_state_type(const char *v) {
    if (!strcmp(v, "f32")) return 0;
    if (!strcmp(v, "bf16")) return 1;
    fprintf(stderr, "qnext: --state-type must be f32 or bf16\n");
    return -1;
}

int args_act_bits(const char *v) {
    if (!strcmp(v, "8")) return 8;
    if (!strcmp(v, "16")) return 16;
    fprintf(stderr, "qnext: unknown activation precision '%s' (8 or 16)\n", v);
    return -1;
}

int args_kv_type(const char *v) {
    if (!strcmp(v, "auto")) return 0;
    if (!strcmp(v, "f32")) return 1;
    if (!strcmp(v, "bf16")) return 2;
    if (!strcmp(v, "q8")) return 3;
    fprintf(stderr, "qnext: unknown KV cache type '%s' (auto, f32, bf16 or q8)\n", v);
    return -1;
}
