/* npy.h - reads a little-endian float32 .npy file (version 1 or 2, C order), for tests. */
#ifndef QNEXT_TEST_NPY_H
#define QNEXT_TEST_NPY_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Returns malloc'd data and fills rows/cols (a 1-D array has rows = 1). NULL on error. */
static float *npy_load_f32(const char *path, int *rows, int *cols) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[12];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6)) { fclose(f); return NULL; }
    size_t hl = pre[8] | (pre[9] << 8);
    if (pre[6] >= 2) {
        if (fread(pre + 10, 1, 2, f) != 2) { fclose(f); return NULL; }
        hl = pre[8] | (pre[9] << 8) | ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
    }
    char *h = calloc(1, hl + 1);
    if (!h || fread(h, 1, hl, f) != hl || !strstr(h, "'<f4'") || strstr(h, "'fortran_order': True")) {
        free(h); fclose(f); return NULL;
    }
    char *sh = strstr(h, "'shape': (");
    if (!sh) { free(h); fclose(f); return NULL; }
    sh += 10;
    long a = strtol(sh, &sh, 10), b = 1;
    int nd = 1;
    if (*sh == ',') { sh++; while (*sh == ' ') sh++; if (*sh != ')') { b = strtol(sh, &sh, 10); nd = 2; } }
    free(h);
    *rows = nd == 2 ? (int)a : 1;
    *cols = nd == 2 ? (int)b : (int)a;
    size_t n = (size_t)(*rows) * (*cols);
    float *d = malloc(n * sizeof(float) + 1);
    if (!d || fread(d, sizeof(float), n, f) != n) { free(d); fclose(f); return NULL; }
    fclose(f);
    return d;
}
#endif
