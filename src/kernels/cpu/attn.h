/* attn.h - attention kernels of the fast CPU path: one tile of queries that share a KV
 * head against a range of cached keys, with an online softmax.
 *
 * The cache holds one row per (key, KV head) as f32, bf16 or int8 + f32 scale (the
 * QNEXT_KV_* types, see kv_put in forward.c), except bf16 values, which are stored in key
 * pairs (attn_vpair below), int8 caches that attn_vnni reads, which are tiled
 * (attn_k8_tile below), and the keys of bf16 caches that attn_bf16 reads, tiled likewise
 * (attn_kb_put). The kernels read the cache in place; the f32 ones widen it in
 * registers, fused into the Q.K dot products and the P.V sums, all products and sums f32.
 *
 * Each kernel exists as portable C (attn_generic.c) and, on x86-64, compiled for AVX2+FMA
 * (attn_avx2.c) and AVX-512 (attn_avx512.c); attn_select() makes dot_select()'s choice,
 * so QNEXT_KERNELS=generic|avx2 selects them too. On CPUs with AMX (BF16 and INT8), bf16
 * and int8 caches use attn_amx instead (attn_amx.inc: both products on tiles, with the
 * queries and probabilities split into two parts so that they stay within 2^-17 (bf16) or
 * 1/32258 of their largest value (int8)); QNEXT_ATTN_AMX=0 or QNEXT_AMX=0 turn them off.
 * Without AMX (or with it turned off), bf16 caches on CPUs with AVX512_BF16 use attn_bf16
 * (attn_bf16.c: VDPBF16PS on the tiled keys and the value pairs, the queries and
 * probabilities rounded to bf16 once);
 * QNEXT_ATTN_BF16=0 keeps attn_avx512. Likewise int8 caches use attn_vnni (attn_vnni.c:
 * VPDPBUSD on the tiled cache, the queries quantized to int8 once and the probabilities
 * rounded to one byte per block); QNEXT_ATTN_VNNI=0 keeps attn_avx512 and int8 rows. */
#ifndef QNEXT_ATTN_H
#define QNEXT_ATTN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ATTN_KEYS 64 /* keys per step of the online softmax. Each step ends with work per query
                        * (the rescale of its output, the softmax's reductions; attn_vnni's
                        * weights as bytes), so 64 keys took 3-16% less time than 32 for attn_bf16 and
                        * attn_vnni on Zen 4 and no more for the f32 kernels (docs/PERF.md); the
                        * cache is head-major, so a step's rows are contiguous. */

/* One tile: nq queries against the keys of one KV head. */
typedef struct {
    int nq, D, kv_type;      /* kv_type: QNEXT_KV_F32, QNEXT_KV_BF16 or QNEXT_KV_Q8 */
    int tiled;               /* an int8 cache in attn_vnni's tiled layout (attn_k8_tile), or a bf16 cache
                              * with keys in attn_bf16's (attn_kb_put) */
    const float *const *q;   /* nq query vectors of D floats */
    const int *qpos;         /* key j is visible to query i when j <= qpos[i]; non-decreasing in i */
    float scale;             /* score = scale * q.k */
    const uint8_t *k, *v;    /* cached key / value row of key 0 for this KV head */
    size_t stride;           /* bytes from the row of key j to that of key j+1 */
} attn_tile_args;

/* bf16 values are stored in key pairs: keys 2m and 2m+1 (m counted from key 0 of the head,
 * an even position) share the 2*stride bytes at v + attn_vpair(stride, 2m), where
 * dimension d of key j is the 16-bit word 2d + (j & 1), so each dword holds one dimension
 * of both keys. That is the operand layout of AMX's bf16 tile product for P.V (pairs along
 * the summed dimension, the keys), so the tile kernel loads value tiles straight from the
 * cache instead of repacking every block; a vector kernel widens either key of a dword
 * with one shift or mask. Keys and f32/int8 values are plain rows. */
static inline size_t attn_vpair(size_t stride, int j) { return (size_t)(j >> 1) * 2 * stride; }

/* Whether the int8 and tile kernels (attn_vnni's VPDPBUSD products, the tiled int8 cache,
 * attn_amx's tiles) take head dimension D: they step through it 64 bytes at a time, so
 * other dimensions stay on the vector kernels and the cache in rows. */
static inline int attn_dim_in_64s(int D) { return D % 64 == 0; }

/* int8 caches read by attn_vnni are tiled (attn_kv_tiled): stored the way its VPDPBUSD
 * products take them, so that no block of keys is rearranged at every decode step (that
 * took a fifth of the kernel's time: docs/PERF.md). The bytes per key (stride) stay
 * D + 4, so a head takes as much memory as in rows; positions count from key 0 of the head.
 *  - keys, in tiles of 16: the tile of key j, 16 * stride bytes at attn_k8_tile(stride, j),
 *    holds dimensions 4c..4c+3 of its 16 keys in the 64 bytes at 64c (key 16t + i in dword
 *    i), then the 16 row scales (f32) at 16 D;
 *  - values, in quads of 4: the quad of key j, 4 * stride bytes at attn_v8_quad(stride, j),
 *    holds dimension d of its 4 keys in the dword at 4d (key 4m + i in byte i), then the
 *    4 row scales (f32) at 4 D.
 * A tiled head has whole tiles: qn_kv_rows() rounds the rows up to 16. The int8 values and
 * scales are those of a row (forward.c's kv_put); attn_k8_put and attn_v8_put place a row,
 * attn_k8_get and attn_v8_get read one back. */
static inline size_t attn_k8_tile(size_t stride, int j) { return (size_t)(j >> 4) * 16 * stride; }
static inline size_t attn_v8_quad(size_t stride, int j) { return (size_t)(j >> 2) * 4 * stride; }

static inline void attn_k8_put(uint8_t *head, size_t stride, int D, int j, const uint8_t *row) {
    uint8_t *t = head + attn_k8_tile(stride, j);
    for (int c = 0; c < D / 4; c++) memcpy(t + 64 * (size_t)c + 4 * (j & 15), row + 4 * c, 4);
    memcpy(t + 16 * (size_t)D + 4 * (j & 15), row + D, 4);
}
static inline void attn_k8_get(const uint8_t *head, size_t stride, int D, int j, uint8_t *row) {
    const uint8_t *t = head + attn_k8_tile(stride, j);
    for (int c = 0; c < D / 4; c++) memcpy(row + 4 * c, t + 64 * (size_t)c + 4 * (j & 15), 4);
    memcpy(row + D, t + 16 * (size_t)D + 4 * (j & 15), 4);
}
static inline void attn_v8_put(uint8_t *head, size_t stride, int D, int j, const uint8_t *row) {
    uint8_t *q = head + attn_v8_quad(stride, j);
    for (int d = 0; d < D; d++) q[4 * (size_t)d + (j & 3)] = row[d];
    memcpy(q + 4 * (size_t)D + 4 * (j & 3), row + D, 4);
}
static inline void attn_v8_get(const uint8_t *head, size_t stride, int D, int j, uint8_t *row) {
    const uint8_t *q = head + attn_v8_quad(stride, j);
    for (int d = 0; d < D; d++) row[d] = q[4 * (size_t)d + (j & 3)];
    memcpy(row + D, q + 4 * (size_t)D + 4 * (j & 3), 4);
}

/* bf16 caches read by attn_bf16 have their keys tiled the same way, with two dimensions to
 * a dword: the tile of key j (16 * stride bytes at attn_k8_tile(stride, j), stride = 2 D)
 * holds dimensions 2c and 2c+1 of its 16 keys in the 64 bytes at 64c (key 16t + i in dword
 * i), so that VDPBF16PS takes 16 keys in its lanes against a broadcast pair of query values
 * and no sum crosses lanes. Rows in this layout cost a transpose at every step, which made
 * keys in the lanes slower than dimensions in the lanes (docs/PERF.md). bf16 values keep
 * their key pairs (attn_vpair). */
static inline void attn_kb_put(uint8_t *head, size_t stride, int D, int j, const uint8_t *row) {
    uint8_t *t = head + attn_k8_tile(stride, j);
    for (int c = 0; c < D / 2; c++) memcpy(t + 64 * (size_t)c + 4 * (j & 15), row + 4 * c, 4);
}
static inline void attn_kb_get(const uint8_t *head, size_t stride, int D, int j, uint8_t *row) {
    const uint8_t *t = head + attn_k8_tile(stride, j);
    for (int c = 0; c < D / 2; c++) memcpy(row + 4 * c, t + 64 * (size_t)c + 4 * (j & 15), 4);
}

/* Whether caches of kv_type with head size D are tiled: int8 caches whose attention
 * attn_partial() runs on attn_vnni's VPDPBUSD products (attn_k8_tile, attn_v8_quad), and
 * bf16 caches whose attention runs on attn_bf16 (keys only: attn_kb_put). Fixed for the
 * process, so a session decides it once, when it allocates its cache. */
int attn_kv_tiled(int kv_type, int D);

/* Partial attention over keys [j0, j1), j0 even (a key pair's first key, attn_vpair) and, for a
 * tiled cache, a multiple of 16 (a tile's first key): for every query i,
 *     mx[i]  = max of its visible scores in the range (-FLT_MAX when none is visible),
 *     sum[i] = sum_j exp(s_ij - mx[i]),   O[i*D + d] = sum_j exp(s_ij - mx[i]) v_j[d]
 * (unnormalised). work holds attn_work_floats(nq, D) floats. */
typedef void (*attn_partial_fn)(const attn_tile_args *a, int j0, int j1, float *O, float *mx, float *sum,
                                float *work);

typedef struct {
    const char *name;
    attn_partial_fn partial;
    int d_multiple; /* the kernel needs D % d_multiple == 0; else a narrower one is used */
} attn_kernels;

extern const attn_kernels attn_generic;
#if defined(__x86_64__) || defined(_M_X64)
extern const attn_kernels attn_avx2;
extern const attn_kernels attn_avx512;
extern const attn_kernels attn_amx;        /* AMX tiles for bf16 and int8 caches (f32: as attn_avx512) */
extern const attn_kernels attn_bf16;       /* AVX512-BF16 products for bf16 caches (others: as attn_avx512) */
int attn_bf16_usable(void);                /* the CPU has AVX512_BF16 (and F, BW, VL, DQ) */
extern const attn_kernels attn_vnni;       /* AVX512-VNNI products for int8 caches (others: as attn_avx512) */
int attn_vnni_usable(void);                /* the CPU has AVX512_VNNI (and F, BW, VL, DQ) */
int attn_amx_usable(void);                 /* the CPU and the OS allow attn_amx, and QNEXT_AMX is not 0 */
size_t attn_amx_work_bytes(int nq, int D); /* its extra work space */
#endif

/* Floats of work space a partial needs for nq queries of D values. */
size_t attn_work_floats(int nq, int D);

/* The kernel set for this CPU, chosen as dot_select() chooses (QNEXT_KERNELS=generic|avx2
 * overrides). */
const attn_kernels *attn_select(void);

/* The kernel set attn_partial() uses for a cache of type kv_type (attn_select()'s, or
 * attn_amx for bf16 and int8 caches where the CPU has AMX and neither QNEXT_ATTN_AMX nor
 * QNEXT_AMX is 0; else attn_bf16 for bf16 caches where the CPU has AVX512_BF16 and
 * QNEXT_ATTN_BF16 is not 0, and attn_vnni for int8 caches unless QNEXT_ATTN_VNNI is 0). */
const attn_kernels *attn_select_kv(int kv_type);

/* Runs the tile over keys [j0, j1) with attn_select_kv()'s kernel (AVX2 or the generic one
 * when D is not a multiple of the selected kernel's block). */
void attn_partial(const attn_tile_args *a, int j0, int j1, float *O, float *mx, float *sum, float *work);

/* Combines n partials of the same nq queries (O_p, mx_p, sum_p, laid out as
 * part + p*pstride: O[nq*D], then mx[nq], then sum[nq]) in order p = 0..n-1 and writes the
 * normalised output of query i to out[i]. */
void attn_merge(int n, const float *part, size_t pstride, int nq, int D, float *const *out);

/* Floats of one partial in the layout attn_merge reads. */
static inline size_t attn_part_floats(int nq, int D) { return (size_t)nq * D + 2 * (size_t)nq; }

#endif
