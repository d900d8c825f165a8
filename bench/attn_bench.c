/* attn_bench.c - micro-benchmark of one full-attention layer's attention at depth N
 * (Qwen3-Next-80B-A3B shapes by default: 16 query heads, 2 KV heads, head_dim 256), the
 * tiled attention as it was before the SIMD kernels (scalar kv_get widening, one dot per
 * query and key, one axpy per query and key) against the attention kernels of attn.h.
 *
 * Not part of the CMake build: bench/run_attn_bench.sh [-n keys] [-r rows] [-t kv_type 1|2|3]
 * [-i iters] [-s query scale] [-w: warm cache] [-x: skip the old tile] [-P: position-major cache rows] [-R: rows, never
 * tiled, for comparing the layouts] links it
 * with build/libqnext.a and runs it.
 * Prints ms per layer for decode-like (1 row) or prefill-like (-r 16) tiles, single thread
 * per KV head (as attn_block runs them) and with the key range split over all threads.
 * An int8 cache that attn_vnni reads (a bf16 cache that attn_bf16 reads) is stored tiled, as
 * a session stores it (attn.h); the old tile, which reads rows, is then skipped. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/ops.h"
#include "qnext.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Scores: the keys' elements are uniform in [-1, 1) and the queries' uniform in [-S/2, S/2)
 * (-s S, 1 by default), scaled by 1/16 = 1/sqrt(D): their standard deviation is about 0.17 S
 * (S = 12 gives 2, the spread of a peaked attention row). */

/* ---- the tile as forward.c had it before attn.h (kept here as the baseline) ---- */
#define OLD_KEYS 64
static inline const float *old_kv_get(int type, const uint8_t *src, float *buf, int D) {
    if (type == QNEXT_KV_F32) return (const float *)src;
    if (type == QNEXT_KV_BF16) {
        const uint16_t *h = (const uint16_t *)src;
        for (int i = 0; i < D; i++) buf[i] = qn_bf16_to_f32(h[i]);
        return buf;
    }
    float d;
    memcpy(&d, src + D, 4);
    for (int i = 0; i < D; i++) buf[i] = d * (float)(int8_t)src[i];
    return buf;
}

static void old_tile(const attn_tile_args *a, float *out, float *tmp) {
    const int nq = a->nq, D = a->D;
    float *O = tmp, *S = O + (size_t)nq * D, *mx = S + (size_t)nq * OLD_KEYS, *sum = mx + nq;
    float *kbuf = sum + nq, *vbuf = kbuf + D;
    for (int i = 0; i < nq; i++) { mx[i] = -FLT_MAX; sum[i] = 0; }
    memset(O, 0, (size_t)nq * D * sizeof(float));
    const int n_keys = a->qpos[nq - 1] + 1;
    for (int j0 = 0; j0 < n_keys; j0 += OLD_KEYS) {
        int jn = n_keys - j0 < OLD_KEYS ? n_keys - j0 : OLD_KEYS;
        for (int j = 0; j < jn; j++) {
            const float *k = old_kv_get(a->kv_type, a->k + (size_t)(j0 + j) * a->stride, kbuf, D);
            for (int i = 0; i < nq; i++)
                S[i * OLD_KEYS + j] = j0 + j <= a->qpos[i] ? qn_dot_f32(a->q[i], k, D) * a->scale : -INFINITY;
        }
        for (int i = 0; i < nq; i++) {
            float *Si = S + i * OLD_KEYS, m = mx[i];
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
            const float *v = old_kv_get(a->kv_type, a->v + (size_t)(j0 + j) * a->stride, vbuf, D);
            for (int i = 0; i < nq; i++) {
                float p = S[i * OLD_KEYS + j];
                if (p == 0.0f) continue;
                float *Oi = O + (size_t)i * D;
                for (int d = 0; d < D; d++) Oi[d] += p * v[d];
            }
        }
    }
    for (int i = 0; i < nq; i++)
        for (int d = 0; d < D; d++) out[(size_t)i * D + d] = O[(size_t)i * D + d] / sum[i];
}

int main(int argc, char **argv) {
    int n_keys = 16384, rows = 1, kt = QNEXT_KV_BF16, iters = 10, nh = 16, nkv = 2, D = 256, warm = 0, old = 1, pos_major = 0, huge = 0, rows_only = 0;
    float qscale = 1.0f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-w")) { warm = 1; continue; }
        if (!strcmp(argv[i], "-x")) { old = 0; continue; }
        if (!strcmp(argv[i], "-P")) { pos_major = 1; continue; }
        if (!strcmp(argv[i], "-H")) { huge = 1; continue; }
        if (!strcmp(argv[i], "-R")) { rows_only = 1; continue; }
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "-n")) n_keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r")) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t")) kt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-i")) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-s")) qscale = (float)atof(argv[++i]);
    }
    /* Cold by default: before each timed run a buffer larger than the last-level cache is
     * read, so the K/V rows come from memory, as in a decode step (where the weights stream
     * through the cache between two attention layers). This machine's L3 is 300 MB: one
     * layer's cache at 16K keys (16-32 MB) would otherwise stay in it. -w keeps it warm. */
    const size_t flush_bytes = (size_t)768 << 20;
    uint64_t *flush = warm ? NULL : malloc(flush_bytes);
    if (flush) for (size_t i = 0; i < flush_bytes / 8; i++) flush[i] = i;
    volatile uint64_t flush_sink = 0;
    const int group = nh / nkv, nq = rows * group, nth = omp_get_max_threads();
    const size_t rb = kt == QNEXT_KV_F32 ? (size_t)D * 4 : kt == QNEXT_KV_BF16 ? (size_t)D * 2 : (size_t)D + 4;
    /* cache-line aligned, as forward.c's caches (page-aligned mappings) are */
    const size_t cache_bytes = ((size_t)n_keys * nkv * rb + 63) / 64 * 64;
    uint8_t *kc, *vc;
    if (huge) { /* anonymous mappings on 2 MB pages where the kernel grants them (THP "madvise") */
        kc = mmap(NULL, cache_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        vc = mmap(NULL, cache_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (kc == MAP_FAILED || vc == MAP_FAILED) return 1;
        madvise(kc, cache_bytes, MADV_HUGEPAGE);
        madvise(vc, cache_bytes, MADV_HUGEPAGE);
    } else {
        kc = aligned_alloc(64, cache_bytes);
        vc = aligned_alloc(64, cache_bytes);
    }
    srand(1);
    /* rows of uniform values in [-1, 1) in the cache format (no denormals: they would
     * measure the CPU's microcode assists, not the kernels); the values being random, the
     * bf16 key pairs of the value cache (attn.h) need no other filling, and the scalar
     * baseline, timed only, reads them as rows */
    for (size_t r = 0; r < (size_t)n_keys * nkv * 2; r++) {
        uint8_t *row = (r & 1 ? vc : kc) + (r >> 1) * rb;
        for (int d = 0; d < D; d++) {
            float x = 2.0f * rand() / RAND_MAX - 1.0f;
            uint32_t u;
            memcpy(&u, &x, 4);
            if (kt == QNEXT_KV_F32) memcpy(row + 4 * d, &x, 4);
            else if (kt == QNEXT_KV_BF16) { uint16_t h = (uint16_t)(u >> 16); memcpy(row + 2 * d, &h, 2); }
            else row[d] = (uint8_t)(int8_t)lrintf(x * 127);
        }
        if (kt == QNEXT_KV_Q8) { float sc = 1.0f / 127; memcpy(row + D, &sc, 4); }
    }
    float *q = malloc((size_t)nkv * nq * D * sizeof(float)), *out = malloc((size_t)nkv * nq * D * sizeof(float));
    for (size_t i = 0; i < (size_t)nkv * nq * D; i++) q[i] = qscale * ((float)rand() / RAND_MAX - 0.5f);
    const float **qp = malloc((size_t)nkv * nq * sizeof(*qp));
    int *qpos = malloc((size_t)nq * sizeof(int));
    for (int i = 0; i < nkv * nq; i++) qp[i] = q + (size_t)i * D;
    for (int i = 0; i < nq; i++) qpos[i] = n_keys - rows + i / group;
    size_t tile = (size_t)nq * D + (size_t)nq * OLD_KEYS + 2 * (size_t)nq + 2 * (size_t)D + 16;
    float *tmp = malloc(tile * nth * sizeof(float));
    size_t ps = attn_part_floats(nq, D), ws = attn_work_floats(nq, D);
    const int max_split = 16;
    float *part = malloc(ps * nkv * max_split * sizeof(float)), *work = malloc(ws * nth * sizeof(float));
    attn_tile_args args[8];
    for (int h = 0; h < nkv; h++)
        args[h] = (attn_tile_args){.nq = nq, .D = D, .kv_type = kt, .q = qp + h * nq, .qpos = qpos,
                                   .scale = 1.0f / 16, .k = kc + h * rb, .stride = nkv * rb,
                                   /* bf16 values in key pairs (attn.h): a head's pair takes two rows */
                                   .v = vc + h * (kt == QNEXT_KV_BF16 ? 2 * rb : rb)};
    /* the cache layout of forward.c: head-major, [nkv][n_keys] rows (-P: position-major,
     * [n_keys][nkv], the layout before) */
    if (!pos_major)
        for (int h = 0; h < nkv; h++) {
            args[h].k = kc + (size_t)h * n_keys * rb;
            args[h].v = vc + (size_t)h * n_keys * rb;
            args[h].stride = rb;
        }
    /* int8 caches that attn_vnni reads and bf16 caches that attn_bf16 reads are tiled (attn.h):
     * the rows rewritten in its layout, head-major (the scalar baseline reads rows, so it is
     * skipped); bf16 values keep their pairs */
    const int tiled = !pos_major && !rows_only && attn_kv_tiled(kt, D);
    if (tiled) {
        uint8_t *kt8 = aligned_alloc(64, cache_bytes + 16 * nkv * rb), *vt8 = aligned_alloc(64, cache_bytes + 16 * nkv * rb);
        const size_t hb = ((size_t)n_keys + 15) / 16 * 16 * rb; /* bytes per head, whole tiles */
        for (int h = 0; h < nkv; h++) {
            for (int j = 0; j < n_keys; j++) {
                if (kt == QNEXT_KV_BF16) {
                    attn_kb_put(kt8 + h * hb, rb, D, j, args[h].k + (size_t)j * rb);
                    continue;
                }
                attn_k8_put(kt8 + h * hb, rb, D, j, args[h].k + (size_t)j * rb);
                attn_v8_put(vt8 + h * hb, rb, D, j, args[h].v + (size_t)j * rb);
            }
            args[h].k = kt8 + h * hb;
            if (kt != QNEXT_KV_BF16) args[h].v = vt8 + h * hb;
            args[h].tiled = 1;
        }
        old = 0;
    }
    float **outp = malloc((size_t)nkv * nq * sizeof(*outp));
    for (int i = 0; i < nkv * nq; i++) outp[i] = out + (size_t)i * D;

    printf("attention of one layer: %d keys, %d rows, %d heads / %d kv heads, D %d, kv %s, %d threads, kernel %s, %s\n",
           n_keys, rows, nh, nkv, D, kt == 1 ? "f32" : kt == 2 ? "bf16" : "q8", nth, attn_select_kv(kt)->name,
           warm ? "warm (K/V left in the cache between runs)" : "cold (K/V read from memory)");
    /* the modes take turns within each iteration, so that the machine's memory phases (which
     * change within a minute on a shared VM) fall on all of them alike */
    double best[3] = {1e30, 1e30, 1e30}, total[3] = {0, 0, 0};
    for (int it = 0; it < iters; it++)
        for (int mode = !old; mode < 3; mode++) {
            if (flush) {
                uint64_t acc = 0;
#pragma omp parallel for reduction(+ : acc)
                for (size_t i = 0; i < flush_bytes / 8; i += 8) acc += flush[i];
                flush_sink += acc;
            }
            double t0 = now();
            if (mode == 0) {
#pragma omp parallel for schedule(dynamic, 1)
                for (int h = 0; h < nkv; h++) old_tile(&args[h], out + (size_t)h * nq * D, tmp + tile * omp_get_thread_num());
            } else {
                /* forward.c's split: up to 8 ranges of at least 512 keys, decode-like tiles only */
                int split = mode == 1 || rows > 4 ? 1 : n_keys / 512;
                if (split > 8) split = 8;
                if (split < 1) split = 1;
                int chunk = (n_keys + split - 1) / split;
                chunk = (chunk + ATTN_KEYS - 1) / ATTN_KEYS * ATTN_KEYS;
                split = (n_keys + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
                for (int w = 0; w < nkv * split; w++) {
                    int h = w / split, s = w % split, j0 = s * chunk, j1 = j0 + chunk < n_keys ? j0 + chunk : n_keys;
                    float *P = part + (size_t)w * ps;
                    attn_partial(&args[h], j0 < j1 ? j0 : j1, j1, P, P + (size_t)nq * D, P + (size_t)nq * D + nq,
                                 work + ws * omp_get_thread_num());
                }
                for (int h = 0; h < nkv; h++) attn_merge(split, part + (size_t)h * split * ps, ps, nq, D, outp + h * nq);
            }
            double t = now() - t0;
            if (t < best[mode]) best[mode] = t;
            total[mode] += t;
        }
    for (int mode = !old; mode < 3; mode++) {
        static const char *names[3] = {"before (scalar tile)", "kernel, one item per kv head", "kernel, forward.c's split"};
        double bytes = 2.0 * n_keys * nkv * rb;
        printf("%-30s %8.3f ms  (%.1f GB/s of K/V, %.1f GFLOP/s; mean %.3f ms)\n", names[mode], best[mode] * 1e3,
               bytes / best[mode] * 1e-9, 4.0 * nkv * nq * (double)n_keys * D / best[mode] * 1e-9, total[mode] / iters * 1e3);
    }
    return 0;
}
