/* attn_generic.c - portable C attention tile (the same algorithm as the SIMD kernels of
 * attn_x86.inc, written plainly), the merge of key-range partials, and run-time selection.
 *
 * Cached rows are widened element by element inside the dot product and the value sum
 * (no copy of the row); the kernel type is a constant in each instantiation, so the
 * compiler drops the type test from the loops. */
#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "qnext.h"

size_t attn_work_floats(int nq, int D) {
    /* S, corr, vs, Q (attn_x86.inc's partial_t; the generic kernel's row gathered from a tiled
     * cache, D + 4 bytes, in Q's place) */
    size_t n = (size_t)nq * ATTN_KEYS + (size_t)nq + ATTN_KEYS + (size_t)nq * D + 64;
#if defined(__x86_64__) || defined(_M_X64)
    size_t amx = (attn_amx_work_bytes(nq, D) + 3) / 4; /* attn_amx: its own layout of the same space */
    if (amx > n) n = amx;
#endif
    return n;
}

static inline float g_widen(int kt, const uint8_t *row, int d) {
    if (kt == QNEXT_KV_F32) { float f; memcpy(&f, row + 4 * (size_t)d, 4); return f; }
    if (kt == QNEXT_KV_BF16) {
        uint16_t h;
        memcpy(&h, row + 2 * (size_t)d, 2);
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return (float)(int8_t)row[d];
}

/* The per-row scale of int8 rows (1 for the float types). */
static inline float g_row_scale(int kt, const uint8_t *row, int D) {
    if (kt != QNEXT_KV_Q8) return 1.0f;
    float s;
    memcpy(&s, row + D, 4);
    return s;
}

/* Key j (value j) of the head as a row: in place, or gathered from a tiled head into buf
 * (attn.h; a tiled bf16 head has its values in pairs, as an untiled one). */
static inline const uint8_t *g_key(const attn_tile_args *a, int j, uint8_t *buf) {
    if (!a->tiled) return a->k + (size_t)j * a->stride;
    if (a->kv_type == QNEXT_KV_BF16) attn_kb_get(a->k, a->stride, a->D, j, buf);
    else attn_k8_get(a->k, a->stride, a->D, j, buf);
    return buf;
}
static inline const uint8_t *g_value(const attn_tile_args *a, int j, uint8_t *buf) {
    if (!a->tiled || a->kv_type == QNEXT_KV_BF16) return a->v + (size_t)j * a->stride;
    attn_v8_get(a->v, a->stride, a->D, j, buf);
    return buf;
}

static inline void g_partial_t(int kt, const attn_tile_args *a, int j0, int j1, float *O, float *mx, float *sum,
                               float *work) {
    const int nq = a->nq, D = a->D;
    float *S = work;
    uint8_t *buf = (uint8_t *)(S + (size_t)nq * ATTN_KEYS + (size_t)nq + ATTN_KEYS); /* D + 4 bytes */
    for (int i = 0; i < nq; i++) { mx[i] = -FLT_MAX; sum[i] = 0; }
    memset(O, 0, (size_t)nq * D * sizeof(float));
    for (int jb = j0; jb < j1; jb += ATTN_KEYS) {
        const int jn = j1 - jb < ATTN_KEYS ? j1 - jb : ATTN_KEYS;
        int i0 = 0; /* queries before i0 see none of these keys (qpos is non-decreasing) */
        while (i0 < nq && a->qpos[i0] < jb) i0++;
        if (i0 == nq) break;
        for (int j = 0; j < jn; j++) {
            const uint8_t *k = g_key(a, jb + j, buf);
            float ks = g_row_scale(kt, k, D) * a->scale;
            for (int i = i0; i < nq; i++) {
                if (jb + j > a->qpos[i]) { S[i * ATTN_KEYS + j] = -INFINITY; continue; }
                const float *q = a->q[i];
                float acc[16] = {0}, s = 0;
                int d = 0;
                for (; d + 16 <= D; d += 16)
                    for (int u = 0; u < 16; u++) acc[u] += q[d + u] * g_widen(kt, k, d + u);
                for (; d < D; d++) s += q[d] * g_widen(kt, k, d);
                for (int u = 0; u < 16; u++) s += acc[u];
                S[i * ATTN_KEYS + j] = s * ks;
            }
        }
        for (int i = i0; i < nq; i++) {
            float *Si = S + i * ATTN_KEYS, m = mx[i];
            for (int j = 0; j < jn; j++) m = Si[j] > m ? Si[j] : m;
            float corr = expf(mx[i] - m), l = 0;
            for (int j = 0; j < jn; j++) { Si[j] = expf(Si[j] - m); l += Si[j]; }
            sum[i] = sum[i] * corr + l;
            mx[i] = m;
            if (corr != 1.0f) {
                float *Oi = O + (size_t)i * D;
                for (int d = 0; d < D; d++) Oi[d] *= corr;
            }
        }
        for (int j = 0; j < jn; j++) {
            const uint8_t *v = g_value(a, jb + j, buf);
            float vs = g_row_scale(kt, v, D);
            /* bf16 values: the key's words in its pair (attn.h), every other one */
            const uint8_t *vp = a->v + attn_vpair(a->stride, jb + j) + 2 * ((jb + j) & 1);
            for (int i = i0; i < nq; i++) {
                float p = S[i * ATTN_KEYS + j] * vs;
                if (p == 0.0f) continue;
                float *Oi = O + (size_t)i * D;
                if (kt == QNEXT_KV_BF16)
                    for (int d = 0; d < D; d++) Oi[d] += p * g_widen(kt, vp, 2 * d);
                else
                    for (int d = 0; d < D; d++) Oi[d] += p * g_widen(kt, v, d);
            }
        }
    }
}

static void g_partial(const attn_tile_args *a, int j0, int j1, float *O, float *mx, float *sum, float *work) {
    if (a->kv_type == QNEXT_KV_F32) g_partial_t(QNEXT_KV_F32, a, j0, j1, O, mx, sum, work);
    else if (a->kv_type == QNEXT_KV_BF16) g_partial_t(QNEXT_KV_BF16, a, j0, j1, O, mx, sum, work);
    else g_partial_t(QNEXT_KV_Q8, a, j0, j1, O, mx, sum, work);
}

const attn_kernels attn_generic = {"generic", g_partial, 1};

void attn_merge(int n, const float *part, size_t pstride, int nq, int D, float *const *out) {
    for (int i = 0; i < nq; i++) {
        float m = -FLT_MAX, l = 0;
        for (int p = 0; p < n; p++) {
            const float *mx = part + p * pstride + (size_t)nq * D;
            if (mx[i] > m) m = mx[i];
        }
        float *o = out[i];
        memset(o, 0, (size_t)D * sizeof(float));
        for (int p = 0; p < n; p++) {
            const float *O = part + p * pstride, *mx = O + (size_t)nq * D, *sum = mx + nq;
            if (sum[i] == 0.0f) continue; /* no key of this range was visible to query i */
            float w = expf(mx[i] - m);
            l += sum[i] * w;
            const float *Oi = O + (size_t)i * D;
            for (int d = 0; d < D; d++) o[d] += w * Oi[d];
        }
        float inv = 1.0f / l;
        for (int d = 0; d < D; d++) o[d] *= inv;
    }
}

const attn_kernels *attn_select(void) {
    static const attn_kernels *chosen;
    if (chosen) return chosen;
    const char *env = getenv("QNEXT_KERNELS");
    const attn_kernels *k = &attn_generic;
#if defined(__x86_64__) || defined(_M_X64)
    /* the same choice as dot_select() (dot_generic.c) */
    __builtin_cpu_init();
    int has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    int has_512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vnni");
    if (has_512) k = &attn_avx512;
    else if (has_avx2) k = &attn_avx2;
    if (env && !strcmp(env, "avx2") && has_avx2) k = &attn_avx2;
#endif
    if (env && !strcmp(env, "generic")) k = &attn_generic;
    chosen = k;
    return k;
}

const attn_kernels *attn_select_kv(int kv_type) {
    const attn_kernels *k = attn_select();
#if defined(__x86_64__) || defined(_M_X64)
    /* AMX tiles for bf16 and int8 caches where the CPU has them; QNEXT_ATTN_AMX=0 or
     * QNEXT_AMX=0 turn them off */
    static int amx = -1;
    if (amx < 0) {
        const char *env = getenv("QNEXT_ATTN_AMX");
        amx = attn_amx_usable() && !(env && !strcmp(env, "0"));
    }
    static int bf16 = -1, vnni = -1;
    if (bf16 < 0) {
        const char *env = getenv("QNEXT_ATTN_BF16");
        bf16 = attn_bf16_usable() && !(env && !strcmp(env, "0"));
        env = getenv("QNEXT_ATTN_VNNI");
        vnni = attn_vnni_usable() && !(env && !strcmp(env, "0"));
    }
    if (kv_type != QNEXT_KV_F32 && k == &attn_avx512 && amx) k = &attn_amx;
    else if (kv_type == QNEXT_KV_BF16 && k == &attn_avx512 && bf16) k = &attn_bf16;
    else if (kv_type == QNEXT_KV_Q8 && k == &attn_avx512 && vnni) k = &attn_vnni;
#else
    (void)kv_type;
#endif
    return k;
}

int attn_kv_tiled(int kv_type, int D) {
#if defined(__x86_64__) || defined(_M_X64)
    if (!attn_dim_in_64s(D)) return 0;
    const attn_kernels *k = attn_select_kv(kv_type);
    return (kv_type == QNEXT_KV_Q8 && k == &attn_vnni) || (kv_type == QNEXT_KV_BF16 && k == &attn_bf16);
#else
    (void)kv_type;
    (void)D;
    return 0;
#endif
}

void attn_partial(const attn_tile_args *a, int j0, int j1, float *O, float *mx, float *sum, float *work) {
    const attn_kernels *k = attn_select_kv(a->kv_type);
#if defined(__x86_64__) || defined(_M_X64)
    if (a->D % k->d_multiple && (k == &attn_avx512 || k == &attn_amx || k == &attn_bf16 || k == &attn_vnni)) k = &attn_avx2;
#endif
    if (a->D % k->d_multiple) k = &attn_generic;
#if defined(__x86_64__) || defined(_M_X64)
    assert(!a->tiled || k == &attn_vnni || k == &attn_bf16); /* attn_kv_tiled() made the same choice */
#endif
    k->partial(a, j0, j1, O, mx, sum, work);
}
