/* test_attn.c - the attention tile kernels (attn.h) against plain softmax attention.
 *
 * The reference is the definition, written simply in double precision: for each query,
 * the scores scale * q.k_j over its visible keys (j <= its position), softmax, and the
 * weighted sum of the values, with the cached rows widened exactly as stored (f32, bf16,
 * int8 times the row scale). Every kernel this CPU can run (portable C, AVX2, AVX-512) is
 * run over the whole key range at once and split into key ranges merged with
 * attn_merge(), for head sizes 256, 64, 96, 48, 32, 16 and 40 (those that are not a
 * multiple of a SIMD kernel's block are skipped for it), GQA groups 8 and 1, KV lengths 1..1100, several rows at arbitrary positions,
 * and scores with a realistic spread plus a few dominant "sink" keys.
 *
 * Where attn_vnni runs, int8 caches are also stored tiled (attn.h: key tiles of 16, value
 * quads; the unwritten rest of the last tile holds 0x7f bytes and NaN scales) and run through
 * it and the portable C kernel, with key ranges cut on tiles; likewise bf16 caches with tiled
 * keys (the rest of the last tile NaN) where attn_bf16 runs.
 *
 * The AVX512-BF16 kernel (attn_bf16, bf16 caches) rounds the queries and the probabilities
 * to bf16, and the AVX512-VNNI kernel (attn_vnni, int8 caches) quantizes the queries to int8
 * and splits the probabilities into two bytes: both are held to the reference computed from
 * the queries rounded as they round them, within a bound for their probabilities (see
 * run_case), and the largest error against the exact reference is printed.
 *
 * The AMX kernel (attn_amx, bf16 and int8 caches, where the CPU has AMX) splits the queries
 * and the probabilities into two parts (see attn_amx.inc), so it is held to bounds: a
 * query element that moves by at most u of itself moves score j by at most
 * e_j = u * scale * sum_d |q_d k_jd| <= E, each probability by a factor within exp(+-2E),
 * and output element d by at most (exp(2E) - 1) sum_j p_j |v_jd|; bf16: u = 2^-17 for the
 * queries and 2^-17 of each probability; int8: see the int8 case in run_case. The largest
 * error seen (relative to the largest output element) is printed.
 *
 * Then the model: decode steps past 1024 cached tokens, whose attention tiles forward.c
 * splits into key ranges computed in parallel and merged, against the same positions
 * computed as rows of one prompt (tiles not split), for the three KV cache types, on two
 * fixtures (head_dim 32 and 64; with 64, attn_bf16 and attn_vnni on its tiled cache run where
 * the CPU has them). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/attn.h"
#include "qnext.h"
#include "test_util.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double urand(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (rng >> 11) * (1.0 / 9007199254740992.0); }
static float nrand(void) { double u = urand() + 1e-12, v = urand(); return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v)); }

static size_t row_bytes(int kt, int D) { return kt == QNEXT_KV_F32 ? (size_t)D * 4 : kt == QNEXT_KV_BF16 ? (size_t)D * 2 : (size_t)D + 4; }

/* The cache formats (as forward.c's kv_put stores them): bf16 round to nearest even;
 * int8 symmetric with scale max|x|/127 after the D values. */
static void store_row(int kt, uint8_t *dst, const float *x, int D) {
    if (kt == QNEXT_KV_F32) { memcpy(dst, x, (size_t)D * 4); return; }
    if (kt == QNEXT_KV_BF16) {
        for (int i = 0; i < D; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            uint16_t h = (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
            memcpy(dst + 2 * i, &h, 2);
        }
        return;
    }
    float amax = 0;
    for (int i = 0; i < D; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    for (int i = 0; i < D; i++) dst[i] = (uint8_t)(int8_t)lrintf(x[i] * id);
    memcpy(dst + D, &d, 4);
}

static double load_elem(int kt, const uint8_t *row, int D, int d) {
    if (kt == QNEXT_KV_F32) { float f; memcpy(&f, row + 4 * d, 4); return f; }
    if (kt == QNEXT_KV_BF16) { uint16_t h; memcpy(&h, row + 2 * d, 2); uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
    float s;
    memcpy(&s, row + D, 4);
    return (double)s * (int8_t)row[d];
}

/* Values as forward.c's kv_put_v stores them: rows, except bf16, whose keys 2m and 2m+1
 * share the 2*stride bytes at 2m*stride from the head's start (attn.h), dimension d of
 * key j in the 16-bit word 2d + (j & 1). */
static void store_v(int kt, uint8_t *head, size_t stride, int j, const float *x, int D) {
    if (kt != QNEXT_KV_BF16) { store_row(kt, head + (size_t)j * stride, x, D); return; }
    uint16_t tmp[1024];
    store_row(kt, (uint8_t *)tmp, x, D);
    for (int d = 0; d < D; d++) memcpy(head + (size_t)(j / 2) * 2 * stride + 4 * (size_t)d + 2 * (j % 2), &tmp[d], 2);
}

static double load_v(int kt, const uint8_t *head, size_t stride, int j, int D, int d) {
    if (kt != QNEXT_KV_BF16) return load_elem(kt, head + (size_t)j * stride, D, d);
    return load_elem(kt, head + (size_t)(j / 2) * 2 * stride + 2 * (j % 2), D, 2 * d);
}

static const char *kv_name(int kt) { return kt == QNEXT_KV_F32 ? "f32" : kt == QNEXT_KV_BF16 ? "bf16" : "q8"; }

/* One case: nr rows at positions pos[] (non-decreasing), group query heads per row,
 * n_keys = pos[nr-1] + 1 cached keys interleaved with a second KV head (stride 2 rows). */
static const attn_kernels *kerns[6];
static int n_kerns;

/* Double-precision softmax attention of query q (D values) over keys 0..qpos against the
 * widened rows kw, vw: o[D], and sc[j] = exp(s_j - max_j s_j) left for the caller; with pabs,
 * also pabs[d] = sum_j p_j |v_jd| and *emax =
 * 2^-8 * scale * max_j sum_d |q_d k_jd| (scaled to the u of a bound where it is used). */
static void ref_query(const double *q, int qpos, int D, double scale, const double *kw, const double *vw, double *sc,
                      double *o, double *pabs, double *emax) {
    double mx = -1e300, l = 0, em = 0;
    for (int j = 0; j <= qpos; j++) {
        double s = 0, sa = 0;
        for (int d = 0; d < D; d++) {
            s += q[d] * kw[(size_t)j * D + d];
            sa += fabs(q[d] * kw[(size_t)j * D + d]);
        }
        sc[j] = s * scale;
        em = sa > em ? sa : em;
        if (sc[j] > mx) mx = sc[j];
    }
    for (int j = 0; j <= qpos; j++) { sc[j] = exp(sc[j] - mx); l += sc[j]; }
    for (int d = 0; d < D; d++) o[d] = 0;
    if (pabs) for (int d = 0; d < D; d++) pabs[d] = 0;
    for (int j = 0; j <= qpos; j++)
        for (int d = 0; d < D; d++) {
            o[d] += sc[j] * vw[(size_t)j * D + d];
            if (pabs) pabs[d] += sc[j] * fabs(vw[(size_t)j * D + d]);
        }
    for (int d = 0; d < D; d++) o[d] /= l;
    if (pabs) for (int d = 0; d < D; d++) pabs[d] /= l;
    if (emax) *emax = ldexp(1.0, -8) * scale * em;
}

#if defined(__x86_64__)
/* Kernel k when this CPU runs it (it is in kerns[]), else NULL. */
static const attn_kernels *if_run(const attn_kernels *k) {
    for (int i = 0; i < n_kerns; i++) if (kerns[i] == k) return k;
    return NULL;
}
static const attn_kernels *amx_kernel(void) { return if_run(&attn_amx); }   /* AMX tiles */
static const attn_kernels *bf16_kernel(void) { return if_run(&attn_bf16); } /* AVX512-BF16 */
static const attn_kernels *vnni_kernel(void) { return if_run(&attn_vnni); } /* AVX512-VNNI */
#else
static const attn_kernels *amx_kernel(void) { return NULL; }
static const attn_kernels *bf16_kernel(void) { return NULL; }
static const attn_kernels *vnni_kernel(void) { return NULL; }
#endif
static double amx_worst[2]; /* attn_amx: largest rel error vs the exact reference, bf16 and int8 caches */
static double bf16_worst;   /* attn_bf16 on bf16 caches: the same */
static double vnni_worst;   /* attn_vnni on int8 caches: the same */

/* Query q rounded as attn_bf16 (bf16, nearest even) or attn_vnni (int8 per query:
 * round(q * 127 / max|q|) in f32, nearest even, times max|q| / 127) rounds it, in qd. */
static void round_query(int kt, const float *q, int D, double *qd) {
    if (kt == QNEXT_KV_BF16) {
        uint8_t row[2048];
        store_row(kt, row, q, D);
        for (int d = 0; d < D; d++) qd[d] = load_elem(kt, row, D, d);
        return;
    }
    float amax = 0;
    for (int d = 0; d < D; d++) amax = fabsf(q[d]) > amax ? fabsf(q[d]) : amax;
    const float inv = amax > 0 ? 127.0f / amax : 0.0f, s = amax / 127.0f;
    for (int d = 0; d < D; d++) qd[d] = (double)nearbyintf(q[d] * inv) * s;
}

/* For int8 caches: the bound on output errors from weights x_j = p_j vs_j (p normalised from
 * ref_query's sc[0..qpos], vs the value row scales) that each move by at most f times the
 * largest x within w keys of j: out[d] += sum_j M_j f |v8_jd|, v8 = vw / vs the stored bytes. */
static void window_bound(int qpos, const double *sc, const float *vsc, int D, const double *vw, int w, double f,
                         double *win, double *out) {
    double l = 0;
    for (int j = 0; j <= qpos; j++) l += sc[j];
    for (int j = 0; j <= qpos; j++) win[j] = sc[j] / l * vsc[j];
    for (int j = 0; j <= qpos; j++) {
        double m = 0;
        for (int t = j - w < 0 ? 0 : j - w; t <= j + w && t <= qpos; t++) m = fmax(m, win[t]);
        for (int d = 0; d < D; d++) out[d] += m * f * (vsc[j] > 0 ? fabs(vw[(size_t)j * D + d]) / vsc[j] : 0);
    }
}

/* tiled: an int8 cache in attn_vnni's layout (attn.h: key tiles of 16, value quads) or a bf16
 * cache in attn_bf16's (key tiles of 16, value pairs), the two KV heads one after the other
 * (whole tiles each), else rows of the two heads interleaved. */
static void run_case(int kt, int tiled, int D, int group, int nr, const int *pos) {
    const int nq = nr * group, n_keys = pos[nr - 1] + 1, rows16 = (n_keys + 1 + 15) / 16 * 16;
    const int tk8 = tiled && kt == QNEXT_KV_Q8, tkb = tiled && kt == QNEXT_KV_BF16;
    const size_t rb = row_bytes(kt, D), stride = tiled ? rb : 2 * rb;
    /* bf16 values: head 1's pairs start 2 rows into each 2-pair stretch (store_v) */
    const size_t vhead = tiled ? rows16 * rb : kt == QNEXT_KV_BF16 ? 2 * rb : rb, khead = tiled ? rows16 * rb : rb;
    uint8_t *kc = calloc((size_t)rows16, 2 * rb), *vc = calloc((size_t)rows16, 2 * rb), row[4100];
    float *vsc = malloc((size_t)n_keys * sizeof(float)); /* the value row scales (int8) */
    float *qv = malloc((size_t)nq * D * sizeof(float)), *x = malloc((size_t)D * sizeof(float));
    const float **qp = malloc((size_t)nq * sizeof(*qp));
    int *qpos = malloc((size_t)nq * sizeof(int));
    /* keys ~ N(0,1) per element, a few "sink" keys aligned with a shared direction;
     * queries ~ 3 N(0,1): scores scale*q.k have a standard deviation of about 3 */
    float *dir = malloc((size_t)D * sizeof(float));
    for (int d = 0; d < D; d++) dir[d] = nrand();
    for (int j = 0; j < n_keys; j++) {
        int sink = j == 0 || urand() < 0.01;
        for (int h = 0; h < 2; h++) {
            for (int d = 0; d < D; d++) x[d] = nrand() + (sink ? 2.0f * dir[d] : 0.0f);
            if (tiled) {
                store_row(kt, row, x, D);
                if (tkb) attn_kb_put(kc + h * khead, stride, D, j, row);
                else attn_k8_put(kc + h * khead, stride, D, j, row);
            } else
                store_row(kt, kc + j * stride + h * rb, x, D);
            for (int d = 0; d < D; d++) x[d] = nrand() * (1.0f + (float)(j % 7));
            if (tk8) {
                store_row(kt, row, x, D);
                attn_v8_put(vc + h * vhead, stride, D, j, row);
            } else
                store_v(kt, vc + h * vhead, stride, j, x, D);
        }
    }
    if (tkb) { /* the unwritten rest of the last key tile: NaN (bf16 0xffff), which a kernel must mask */
        memset(row, 0xff, 2 * (size_t)D);
        for (int j = n_keys; j < rows16; j++)
            for (int h = 0; h < 2; h++) attn_kb_put(kc + h * khead, stride, D, j, row);
    }
    if (tk8) { /* the unwritten rest of the last tile and quad: bytes 0x7f and NaN scales,
                  * which a kernel must mask (keys) or weigh by an exact 0 (values) */
        float nan = NAN;
        memset(row, 0x7f, (size_t)D);
        memcpy(row + D, &nan, 4);
        for (int j = n_keys; j < rows16; j++)
            for (int h = 0; h < 2; h++) {
                attn_k8_put(kc + h * khead, stride, D, j, row);
                attn_v8_put(vc + h * vhead, stride, D, j, row);
            }
    }
    if (kt == QNEXT_KV_BF16 && n_keys % 2) { /* the unwritten partner of the last key's value pair: Inf, which
                                               * a kernel must not multiply (0 * Inf is NaN) */
        for (int d = 0; d < D; d++) x[d] = INFINITY;
        for (int h = 0; h < 2; h++) store_v(kt, vc + h * vhead, stride, n_keys, x, D);
    }
    for (int i = 0; i < nq; i++) {
        for (int d = 0; d < D; d++) qv[(size_t)i * D + d] = 3.0f * nrand() + dir[d] * (i % 3 == 0 ? 1.0f : 0.0f);
        qp[i] = qv + (size_t)i * D;
        qpos[i] = pos[i / group];
    }
    const float scale = 1.0f / sqrtf((float)D);
    const int head = 1; /* the second KV head of the interleaved rows */
    attn_tile_args a = {.nq = nq, .D = D, .kv_type = kt, .tiled = tiled, .q = qp, .qpos = qpos, .scale = scale,
                        .k = kc + head * khead, .v = vc + head * vhead, .stride = stride};

    /* reference, double precision; for bf16 caches also from the queries rounded to bf16,
     * with the bound on the difference that rounding can make (see the top) */
    double *ref = malloc((size_t)nq * D * sizeof(double)), *sc = malloc((size_t)n_keys * sizeof(double));
    double *pabs = malloc((size_t)nq * D * sizeof(double));
    double *emax = malloc((size_t)nq * sizeof(double)), *qd = malloc((size_t)D * sizeof(double));
    double *pq8 = calloc((size_t)nq * D, sizeof(double));
    double *e8 = malloc((size_t)nq * sizeof(double)), *win = malloc((size_t)n_keys * sizeof(double));
    double *kw = malloc((size_t)n_keys * D * sizeof(double)), *vw = malloc((size_t)n_keys * D * sizeof(double));
    for (int j = 0; j < n_keys; j++) { /* the stored rows, widened */
        if (tkb) attn_kb_get(a.k, stride, D, j, row);
        if (tk8) attn_k8_get(a.k, stride, D, j, row);
        for (int d = 0; d < D; d++) kw[(size_t)j * D + d] = load_elem(kt, tiled ? row : a.k + j * stride, D, d);
        if (tk8) attn_v8_get(a.v, stride, D, j, row);
        for (int d = 0; d < D; d++) vw[(size_t)j * D + d] = tk8 ? load_elem(kt, row, D, d) : load_v(kt, a.v, stride, j, D, d);
        if (kt == QNEXT_KV_Q8) memcpy(vsc + j, (tk8 ? row : a.v + j * stride) + D, 4);
    }
    for (int i = 0; i < nq; i++) {
        for (int d = 0; d < D; d++) qd[d] = qp[i][d];
        ref_query(qd, qpos[i], D, scale, kw, vw, sc, ref + (size_t)i * D, pabs + (size_t)i * D, emax + i);
        if (kt == QNEXT_KV_Q8) {
            /* attn_amx on int8 caches: a query element is off by at most max|q|/127/254, so
             * score j by e_j <= that * scale * sum_d |k_jd| <= e8 (then, as above, output
             * element d by at most expm1(2 e8) sum_j p_j |v_jd|); and each p_j vs_j (value
             * row scale folded in) by at most 1/32258 of the largest such product in its
             * block of 64 keys, all within 63 keys of j: pq8[d] = sum_j M_j |v8_jd| / 32258
             * with M_j the largest p vs within 63 keys (times exp(2 e8) for the score error). */
            double qa = 0, ka = 0;
            for (int d = 0; d < D; d++) qa = fmax(qa, fabs(qp[i][d]));
            for (int j = 0; j <= qpos[i]; j++) {
                double sa = 0;
                for (int d = 0; d < D; d++) sa += fabs(kw[(size_t)j * D + d]);
                ka = fmax(ka, sa);
            }
            e8[i] = qa / 127.0 / 254.0 * scale * ka;
            window_bound(qpos[i], sc, vsc, D, vw, 63, exp(2 * e8[i]) / 32258.0, win, pq8 + (size_t)i * D);
        }
    }
    /* attn_bf16 and attn_vnni round the queries (round_query) by design, so they are held to
     * the reference from the rounded queries (ref2), where only their rounding of the
     * probabilities remains: attn_bf16 rounds each to bf16 (8 significant bits, nearest: at
     * most 2^-8 of itself, so output element d by at most 2^-8 pabs2[d]);
     * attn_vnni rounds x_j = p_j vs_j (value row scale folded in) to a byte, round(x / s *
     * 255) with s the largest x of its block of ATTN_KEYS keys, which moves x_j by at most
     * s / 510 (s / 505 with the f32 rounding of x * 255 / s and of the largest p vs), so
     * output element d by at most pv2[d] = sum_j M_j |v8_jd| / 505, M_j the largest
     * normalised x within ATTN_KEYS - 1 keys of j. */
    const int rq = (kt == QNEXT_KV_BF16 && bf16_kernel()) || (tk8 && vnni_kernel());
    double *ref2 = NULL, *pabs2 = NULL, *pv2 = NULL;
    if (rq) {
        ref2 = malloc((size_t)nq * D * sizeof(double));
        pabs2 = malloc((size_t)nq * D * sizeof(double));
        pv2 = calloc((size_t)nq * D, sizeof(double));
        for (int i = 0; i < nq; i++) {
            round_query(kt, qp[i], D, qd);
            ref_query(qd, qpos[i], D, scale, kw, vw, sc, ref2 + (size_t)i * D, pabs2 + (size_t)i * D, NULL);
            if (kt == QNEXT_KV_Q8)
                window_bound(qpos[i], sc, vsc, D, vw, ATTN_KEYS - 1, 1 / 505.0, win, pv2 + (size_t)i * D);
        }
    }
    free(kw);
    free(vw);

    /* the kernel: whole range as one partial, and split into up to 4 ranges at cut
     * points that are not block-aligned (but even: ranges start on a key pair; tiled: on a
     * key tile, attn.h); a tiled cache only for the kernels that read it */
    const size_t ps = attn_part_floats(nq, D);
    float *part = malloc(4 * ps * sizeof(float)), *work = malloc(attn_work_floats(nq, D) * sizeof(float));
    float *out = malloc((size_t)nq * D * sizeof(float));
    float **outp = malloc((size_t)nq * sizeof(*outp));
    for (int i = 0; i < nq; i++) outp[i] = out + (size_t)i * D;
    for (int kk = 0; kk < n_kerns; kk++) {
        const attn_kernels *kern = kerns[kk];
        if (D % kern->d_multiple) continue;
        if (tiled && kern != &attn_generic && kern != (tkb ? bf16_kernel() : vnni_kernel())) continue;
        for (int split = 1; split <= 4; split += 3) {
            const int al = tiled ? ~15 : ~1;
            int cuts[5] = {0, n_keys / 3 & al, (n_keys / 2 + 1) & al, (n_keys * 5) / 6 & al, n_keys};
            if (split == 1) { cuts[1] = n_keys; }
            for (int c = 1; c <= split; c++) if (cuts[c] < cuts[c - 1]) cuts[c] = cuts[c - 1];
            for (int p = 0; p < split; p++) {
                float *P = part + p * ps;
                kern->partial(&a, cuts[p], cuts[p + 1], P, P + (size_t)nq * D, P + (size_t)nq * D + nq, work);
            }
            attn_merge(split, part, ps, nq, D, outp);
            const int amx = kt != QNEXT_KV_F32 && kern == amx_kernel() && attn_dim_in_64s(D);
            const int dp = kt == QNEXT_KV_BF16 && kern == bf16_kernel();
            const int i8 = tk8 && kern == vnni_kernel();
            if (dp || i8) { /* against ref2, bounds from above */
                double worst_x = 0;
                int bad = 0;
                for (int i = 0; i < nq && !bad; i++) {
                    double amax_x = 0, amax_2 = 0;
                    for (int d = 0; d < D; d++) {
                        amax_x = fmax(amax_x, fabs(ref[(size_t)i * D + d]));
                        amax_2 = fmax(amax_2, fabs(ref2[(size_t)i * D + d]));
                    }
                    for (int d = 0; d < D && !bad; d++) {
                        const size_t id = (size_t)i * D + d;
                        const double ex = fabs(out[id] - ref2[id]);
                        const double bound = (dp ? ldexp(1.0, -8) * pabs2[id] : pv2[id]) + 1e-5 * amax_2;
                        worst_x = fmax(worst_x, fabs(out[id] - ref[id]) / (amax_x > 0 ? amax_x : 1));
                        if (!(ex <= bound)) {
                            bad = 1;
                            CHECK(0, "%s kv=%s%s D=%d group=%d rows=%d keys=%d split=%d: query %d elem %d off by %.3g (bound %.3g)",
                                  kern->name, kv_name(kt), tiled ? " tiled" : "", D, group, nr, n_keys, split, i, d, ex, bound);
                        }
                    }
                }
                double *wst = dp ? &bf16_worst : &vnni_worst;
                if (worst_x > *wst) *wst = worst_x;
                continue;
            }
            if (amx) { /* bounds from the top and from the int8 case above */
                double worst_x = 0;
                int bad = 0;
                for (int i = 0; i < nq && !bad; i++) {
                    double amax_x = 0;
                    for (int d = 0; d < D; d++) amax_x = fmax(amax_x, fabs(ref[(size_t)i * D + d]));
                    for (int d = 0; d < D && !bad; d++) {
                        const size_t id = (size_t)i * D + d;
                        double ex = fabs(out[id] - ref[id]), bound;
                        if (kt == QNEXT_KV_BF16) /* q and P as bf16 hi + lo: each off by at most 2^-17 of itself */
                            bound = (expm1(2 * emax[i] * ldexp(1.0, -9)) + ldexp(1.0, -16)) * pabs[id] + 1e-5 * amax_x;
                        else
                            bound = expm1(2 * e8[i]) * pabs[id] + pq8[id] + 1e-5 * amax_x;
                        worst_x = fmax(worst_x, ex / (amax_x > 0 ? amax_x : 1));
                        if (!(ex <= bound)) {
                            bad = 1;
                            CHECK(0, "%s kv=%s D=%d group=%d rows=%d keys=%d split=%d: query %d elem %d off by %.3g (bound %.3g)",
                                  kern->name, kv_name(kt), D, group, nr, n_keys, split, i, d, ex, bound);
                        }
                    }
                }
                double *wst = &amx_worst[kt == QNEXT_KV_Q8];
                if (worst_x > *wst) *wst = worst_x;
                continue;
            }
            double worst = 0;
            int bad_i = -1;
            for (int i = 0; i < nq; i++) {
                double amax = 0, err = 0;
                for (int d = 0; d < D; d++) {
                    double r = ref[(size_t)i * D + d];
                    amax = fabs(r) > amax ? fabs(r) : amax;
                    err = fmax(err, fabs(out[(size_t)i * D + d] - r));
                }
                double rel = err / (amax > 0 ? amax : 1);
                if (!(rel <= worst)) { worst = rel; bad_i = i; }
            }
            CHECK(worst < 1e-5, "%s kv=%s%s D=%d group=%d rows=%d keys=%d split=%d: rel err %.3g (query %d)", kern->name,
                  kv_name(kt), tiled ? " tiled" : "", D, group, nr, n_keys, split, worst, bad_i);
        }
    }
    free(kc); free(vc); free(vsc); free(qv); free(x); free(qp); free(qpos); free(dir); free(ref); free(sc);
    free(pabs); free(emax); free(qd); free(pq8); free(e8); free(win); free(ref2); free(pabs2); free(pv2);
    free(part); free(work); free(out); free(outp);
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
    return sqrt(num / den);
}

static void test_model_split(const char *dir) {
    qnext_model *m;
    char err[512];
    qnext_model_params mp = {.quiet = 1};
    if (qnext_model_open(dir, &mp, &m, err, sizeof err)) { CHECK(0, "%s", err); return; }
    const int V = qnext_model_config(m)->vocab_size, n0 = 1030, n = 1042;
    int32_t *ids = malloc(n * sizeof(int32_t));
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 131 + 17) % V);
    float *all = malloc(sizeof(float) * V * (n - n0)), *one = malloc(sizeof(float) * V);
    for (int kt = QNEXT_KV_F32; kt <= QNEXT_KV_Q8; kt++) {
        qnext_session_params sp = {.n_ctx = n, .kv_type = kt};
        qnext_session *a;
        CHECK(!qnext_session_new(m, &sp, &a, err, sizeof err), "%s", err);
        /* the first n0 tokens; then the rest as a prompt (logits of every row), and after
         * rewinding to n0 (snapshot) the same rows as decode steps */
        qnext_snapshot *snap = NULL;
        CHECK(!qnext_session_feed(a, ids, n0, NULL, QNEXT_LOGITS_NONE, err, sizeof err), "%s", err);
        CHECK(!qnext_session_snapshot(a, &snap, err, sizeof err), "%s", err);
        CHECK(!qnext_session_feed(a, ids + n0, n - n0, all, QNEXT_LOGITS_ALL, err, sizeof err), "%s", err);
        CHECK(snap && !qnext_session_restore(a, snap, err, sizeof err), "%s", err);
        qnext_snapshot_free(snap);
        double worst = 0;
        for (int t = n0; t < n; t++) {
            CHECK(!qnext_session_feed(a, ids + t, 1, one, QNEXT_LOGITS_LAST, err, sizeof err), "%s", err);
            double e = rel_l2(one, all + (size_t)(t - n0) * V, V);
            worst = e > worst ? e : worst;
        }
        printf("%s, kv %s%s: decode at depth %d..%d vs prompt rows: rel L2 %.2e\n", dir, kv_name(kt),
               attn_kv_tiled(kt, qnext_model_config(m)->head_dim) ? " (tiled)" : "", n0, n - 1, worst);
        /* attn_bf16 rounds each range's probabilities to bf16 relative to that range's running
         * max, so the two ways differ by up to 2^-8 of each probability; the others by f32
         * rounding alone */
        const double tol = kt == QNEXT_KV_BF16 && attn_select_kv(kt) == bf16_kernel() ? ldexp(1.0, -8) : 1e-5;
        CHECK(worst < tol, "%s, kv %s: split decode vs prompt rows rel L2 %.3e", dir, kv_name(kt), worst);
        qnext_session_free(a);
    }
    free(ids); free(all); free(one);
    qnext_model_close(m);
}

int main(void) {
    kerns[n_kerns++] = &attn_generic;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) kerns[n_kerns++] = &attn_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        kerns[n_kerns++] = &attn_avx512;
    if (n_kerns == 3 && attn_amx_usable()) kerns[n_kerns++] = &attn_amx;
    if (n_kerns >= 3 && attn_bf16_usable()) kerns[n_kerns++] = &attn_bf16;
    if (n_kerns >= 3 && attn_vnni_usable()) kerns[n_kerns++] = &attn_vnni;
#endif
    /* kinds of cache: f32, bf16, int8 rows, and where attn_vnni (attn_bf16) runs, int8 (bf16)
     * tiled (attn_dim_in_64s dimensions only) */
    const int kts[5] = {QNEXT_KV_F32, QNEXT_KV_BF16, QNEXT_KV_Q8, QNEXT_KV_Q8, QNEXT_KV_BF16}, tls[5] = {0, 0, 0, 1, 1};
    /* decode: one row at the last position */
    const int decode_keys[] = {1, 31, 33, 64, 65, 129, 1100}; /* around blocks of ATTN_KEYS (64) and half blocks */
    const int dims[] = {256, 64, 96, 48, 32, 16, 40};
    for (int t = 0; t < 5; t++)
        for (int di = 0; di < 7; di++) {
            int D = dims[di];
            if (tls[t] && !((kts[t] == QNEXT_KV_Q8 ? vnni_kernel() : bf16_kernel()) && attn_dim_in_64s(D))) continue;
            for (int g = 8; g >= 1; g -= 7) {
                for (int n = 0; n < 7; n++) {
                    int pos = decode_keys[n] - 1;
                    run_case(kts[t], tls[t], D, g, 1, &pos);
                }
                /* prefill tiles: consecutive rows (one block of 16 at 300, a short one
                 * across a 64-key boundary), and scattered non-decreasing positions */
                int cons[16], cross[5] = {60, 61, 62, 63, 64}, scat[6] = {0, 5, 5, 63, 64, 700};
                for (int r = 0; r < 16; r++) cons[r] = 300 + r;
                if (D == 256 || D == 96) run_case(kts[t], tls[t], D, g, 16, cons);
                run_case(kts[t], tls[t], D, g, 5, cross);
                run_case(kts[t], tls[t], D, g, 6, scat);
            }
        }
    if (amx_kernel())
        printf("amx on bf16 / int8 caches: largest rel error vs the exact reference %.2e / %.2e\n", amx_worst[0], amx_worst[1]);
    if (bf16_kernel())
        printf("avx512bf16 on bf16 caches: largest rel error vs the exact reference %.2e\n", bf16_worst);
    if (vnni_kernel())
        printf("avx512vnni on int8 caches: largest rel error vs the exact reference %.2e\n", vnni_worst);
    test_model_split("tests/fixtures/base_gqa");       /* head_dim 32 */
    test_model_split("tests/fixtures/v5_layer_types"); /* head_dim 64: attn_vnni and a tiled int8 cache where it runs */
    return tu_finish("test_attn");
}
