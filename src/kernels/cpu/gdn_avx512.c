/* gdn_avx512.c - the gated delta rule (gdn.h) in AVX-512: the chunked form as small f32 matrix
 * products, and the recurrence on f32 or bf16 states.
 *
 * Why. The chunked reference (gdn_generic.c) follows the algebra row by row: a dot product per
 * pair of rows, forward substitution one row at a time, the state re-read for every row of the
 * chunk, and a double exp() for each of the chunk's 2,080 decay pairs. On bench-a3b's prompt of
 * 512 tokens that was a fifth of the time (PERF.md, nineteenth session). Here every step of a
 * chunk of C = 64 rows is a product of matrices of 64-256 sides, done by one register-tiled
 * kernel (4 rows x 64 columns of accumulators, each loaded B vector used by 4 rows), the
 * triangular solve runs on 64 columns at a time in registers, and the decays are products of
 * the per-token factors in double. The recurrence (decoding) is memory-bound: with 16 streams
 * a step reads and writes 1.2 GB of f32 states, so it reads each state once per token (below).
 *
 * Per chunk of n rows, with gam_r the cumulative log decay, D[r][s] = exp(gam_r - gam_s):
 *     KK = K K^T, QK = Q K^T                                   (n x n, through K^T)
 *     L[r][s] = beta_r KK[r][s] D[r][s] (s < r)
 *     (I + L) [U | W] = [beta V | beta exp(gam) K]             (forward substitution, as the reference)
 *     Vn = U - W S;  O = exp(gam) Q S + (QK o D, lower incl. diagonal) Vn
 *     S = exp(gam_last) S + (K o D[n-1])^T Vn
 * The same quantities as the reference, summed in another order: the results agree to f32
 * rounding (tests/test_kernels.c, test_gdn). */
#include <math.h>

#include "kernels/cpu/gdn.h"

#define C GDN_CHUNK

/* Scratch layout in floats, for dk, dv <= 256 (the caller checks). */
size_t gdn_avx512_tmp_floats(int dk, int dv) {
    const size_t P = (size_t)dk, V = (size_t)dv;
    return 2 * C              /* E: per-token decay factors, double */
           + 2 * C            /* one row of D in double */
           + 3 * (size_t)C * C /* D, KK (then L), QK (then the masked product) */
           + 2 * P * C        /* K^T, then (K o D[n-1])^T */
           + C * (V + P)      /* [beta V | beta exp(gam) K], then [U | W] */
           + C * V            /* Vn */
           + C * P            /* exp(gam) Q */
           + 64;              /* alignment */
}

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

int gdn_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* One tile: Cm[MR x 16*NV] (+)= A[MR x K] B[K x 16*NV]; A[m][k] is A[m * am + k * ak], B and Cm
 * are row-major. The 16 accumulators stay in registers over the whole K. */
static inline __attribute__((always_inline)) void mm_tile(const int MR, const int NV, int K, const float *A,
                                                          int64_t am, int64_t ak, const float *B, int64_t ldb,
                                                          float *Cm, int64_t ldc, int acc) {
    __m512 c[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) c[i][j] = acc ? _mm512_loadu_ps(Cm + i * ldc + 16 * j) : _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 b[4];
        for (int j = 0; j < NV; j++) b[j] = _mm512_loadu_ps(B + (int64_t)k * ldb + 16 * j);
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(A[i * am + k * ak]);
            for (int j = 0; j < NV; j++) c[i][j] = _mm512_fmadd_ps(a, b[j], c[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++) _mm512_storeu_ps(Cm + i * ldc + 16 * j, c[i][j]);
}

/* Cm[M x N] = (acc ? Cm : 0) + A[M x K] B[K x N], N a multiple of 16. tri: A is lower
 * triangular including the diagonal (A[m][k] = 0 for k > m), so a tile of rows m0.. stops at
 * k = its last row. */
static void mm(int M, int N, int K, const float *A, int64_t am, int64_t ak, const float *B, int64_t ldb, float *Cm,
               int64_t ldc, int acc, int tri) {
    for (int m0 = 0; m0 < M; m0 += 4) {
        const int mr = M - m0 < 4 ? M - m0 : 4;
        const int kk = tri && m0 + mr < K ? m0 + mr : K;
        const float *Am = A + (int64_t)m0 * am;
        float *Cr = Cm + (int64_t)m0 * ldc;
        for (int n0 = 0; n0 < N; n0 += 64) {
            const int nv = (N - n0) / 16 < 4 ? (N - n0) / 16 : 4;
            switch (mr * 4 + nv - 1) {
#define TILE(R, V) \
    case R * 4 + V - 1: mm_tile(R, V, kk, Am, am, ak, B + n0, ldb, Cr + n0, ldc, acc); break;
                TILE(1, 1) TILE(1, 2) TILE(1, 3) TILE(1, 4) TILE(2, 1) TILE(2, 2) TILE(2, 3) TILE(2, 4)
                TILE(3, 1) TILE(3, 2) TILE(3, 3) TILE(3, 4) TILE(4, 1) TILE(4, 2) TILE(4, 3) TILE(4, 4)
#undef TILE
            }
        }
    }
}

/* Forward substitution on NV vectors of columns of X [n][ldx], in place: row r -= sum over
 * s < r of L[r][s] row s (L [n][C], strictly lower), rows in order. */
static inline __attribute__((always_inline)) void subst_cols(const int NV, int n, const float *L, float *X,
                                                             int64_t ldx) {
    for (int r = 1; r < n; r++) {
        __m512 x[4];
        float *Xr = X + (int64_t)r * ldx;
        for (int j = 0; j < NV; j++) x[j] = _mm512_loadu_ps(Xr + 16 * j);
        const float *Lr = L + (int64_t)r * C;
        for (int s = 0; s < r; s++) {
            const __m512 l = _mm512_set1_ps(Lr[s]);
            for (int j = 0; j < NV; j++) x[j] = _mm512_fnmadd_ps(l, _mm512_loadu_ps(X + (int64_t)s * ldx + 16 * j), x[j]);
        }
        for (int j = 0; j < NV; j++) _mm512_storeu_ps(Xr + 16 * j, x[j]);
    }
}

void gdn_chunked_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                        const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                        int64_t ldo, float *tmp) {
    const int P = dk, V = dv, W2 = dv + dk;
    float *base = (float *)(((uintptr_t)tmp + 63) & ~(uintptr_t)63);
    double *E = (double *)base;           /* [C] exp(g_t) */
    double *Dd = E + C;                   /* [C] one row of D */
    float *D = (float *)(Dd + C);         /* [C][C] exp(gam_r - gam_s) for s <= r < n (only those are read) */
    float *KK = D + C * C;                /* [C][C] K K^T, then L */
    float *QK = KK + C * C;               /* [C][C] Q K^T, then masked by D */
    float *KT = QK + C * C;               /* [P][C] K^T, zero past n */
    float *KdT = KT + (int64_t)P * C;     /* [P][C] (K o D[n-1])^T */
    float *UW = KdT + (int64_t)P * C;     /* [C][V + P] beta V | beta exp(gam) K, then U | W */
    float *Vn = UW + (int64_t)C * W2;     /* [C][V] */
    float *Qe = Vn + (int64_t)C * V;      /* [C][P] exp(gam) Q */
    double eg[C];

    for (int t0 = 0; t0 < T; t0 += C) {
        const int n = T - t0 < C ? T - t0 : C;
        const float *qc = q + t0 * ldqk, *kc = k + t0 * ldqk, *vc = v + t0 * ldv;
        /* Decays: D[r][s] = prod_{s < u <= r} exp(g_u), a row from the one before; exp(gam_r)
         * likewise. In double, as the reference keeps gam. */
        double acc = 0;
        for (int r = 0; r < n; r++) {
            E[r] = exp((double)g[(t0 + r) * ldg]);
            acc += g[(t0 + r) * ldg];
            eg[r] = exp(acc);
        }
        for (int r = 0; r < n; r++) {
            for (int s = 0; s < r; s++) Dd[s] *= E[r];
            Dd[r] = 1.0;
            for (int s = 0; s <= r; s++) D[r * C + s] = (float)Dd[s];
        }
        /* K^T (zero columns past n), then the two Gram-like products. */
        for (int i = 0; i < P; i++) {
            float *row = KT + (int64_t)i * C;
            for (int s = 0; s < n; s++) row[s] = kc[s * ldqk + i];
            for (int s = n; s < C; s++) row[s] = 0;
        }
        mm(n, C, P, kc, ldqk, 1, KT, C, KK, C, 0, 0);
        mm(n, C, P, qc, ldqk, 1, KT, C, QK, C, 0, 0);
        /* L in KK's place; the masked Q K^T in QK's. */
        for (int r = 0; r < n; r++) {
            const float br = beta[(t0 + r) * ldg];
            float *Lr = KK + r * C, *Pr = QK + r * C;
            const float *Dr = D + r * C;
            for (int s = 0; s < r; s++) Lr[s] = br * Lr[s] * Dr[s];
            for (int s = r; s < C; s++) Lr[s] = 0;
            for (int s = 0; s <= r; s++) Pr[s] *= Dr[s];
            for (int s = r + 1; s < C; s++) Pr[s] = 0;
        }
        /* Right-hand sides, then [U | W] by forward substitution, as the reference: the
         * system can be badly conditioned (keys nearly parallel, little decay), and an
         * explicit inverse of (I + L) would amplify rounding further. */
        for (int r = 0; r < n; r++) {
            const float br = beta[(t0 + r) * ldg], be = br * (float)eg[r];
            float *Rr = UW + (int64_t)r * W2;
            const float *vr = vc + r * ldv, *kr = kc + r * ldqk;
            float *Qr = Qe + (int64_t)r * P;
            const float *qr = qc + r * ldqk;
            const float e = (float)eg[r];
            for (int j = 0; j < V; j++) Rr[j] = br * vr[j];
            for (int i = 0; i < P; i++) Rr[V + i] = be * kr[i];
            for (int i = 0; i < P; i++) Qr[i] = qr[i] * e;
        }
        for (int c0 = 0; c0 < W2; c0 += 64) {
            const int nv = (W2 - c0) / 16 < 4 ? (W2 - c0) / 16 : 4;
            switch (nv) {
#define SUBST(NV) \
    case NV: subst_cols(NV, n, KK, UW + c0, W2); break;
                SUBST(1) SUBST(2) SUBST(3) SUBST(4)
#undef SUBST
            }
        }
        /* Vn = U - W S; the outputs start as exp(gam) Q S. */
        mm(n, V, P, UW + V, W2, 1, S, V, Vn, V, 0, 0);
        for (int r = 0; r < n; r++) {
            float *Vr = Vn + (int64_t)r * V;
            const float *Ur = UW + (int64_t)r * W2;
            for (int j = 0; j < V; j++) Vr[j] = Ur[j] - Vr[j];
        }
        float *oc = o + t0 * ldo;
        mm(n, V, P, Qe, P, 1, S, V, oc, ldo, 0, 0);
        /* The intra-chunk part: O += (Q K^T o D) Vn. */
        mm(n, V, n, QK, C, 1, Vn, V, oc, ldo, 1, 1);
        /* Carry the state: S = exp(gam_last) S + (K o D[n-1])^T Vn. */
        const float el = (float)eg[n - 1];
        const float *Dl = D + (n - 1) * C;
        for (int i = 0; i < P; i++) {
            float *row = KdT + (int64_t)i * C;
            const float *kt = KT + (int64_t)i * C;
            for (int s = 0; s < n; s++) row[s] = kt[s] * Dl[s];
        }
        for (int64_t i = 0; i < (int64_t)P * V; i++) S[i] *= el;
        mm(P, V, n, KdT, C, 1, Vn, V, S, V, 1, 0);
    }
}

/* bf16 <-> f32 for the recurrent state: widening is exact; narrowing rounds to nearest even and
 * keeps NaN a quiet NaN, as quant_f32_to_bf16 does. */
static inline __m512 bf16_load(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline void bf16_store(uint16_t *p, __m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(64));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}

/* The same rounding in one instruction where the CPU has AVX512_BF16 (vcvtneps2bf16 rounds to
 * nearest even and quiets NaN as quant_f32_to_bf16 does; it reads denormal inputs as zero, which
 * for a recurrent state below 1.2e-38 makes no difference). */
__attribute__((target("avx512bf16"))) static inline void bf16_store_cvt(uint16_t *p, __m512 x) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(x));
}

/* The recurrence on 16 * NV <= 128 columns of S (columns are independent: column j of the state
 * only meets kv[j], delta[j] and o[j]), S in f32 or (BF16 1, or 2 with AVX512_BF16) bf16 with ldS
 * elements per row. Per token the columns are read once for kv = S^T k, whole rows in one
 * sequential stream from memory, and once more, from L2, to update them and read out o; a bf16
 * state is widened as it is read and rounded as it is written, so each token's update and
 * output are computed in f32. */
static inline __attribute__((always_inline)) void recur_cols(const int NV, const int BF16, void *Sv, int dk, int ldS,
                                                             int T, const float *q, const float *k, int64_t ldqk,
                                                             const float *v, int64_t ldv, const float *g,
                                                             const float *beta, int64_t ldg, float *o, int64_t ldo) {
    float *Sf = Sv;
    uint16_t *Sh = Sv;
#define S_LOAD(i, j) (BF16 ? bf16_load(Sh + (int64_t)(i) * ldS + 16 * (j)) : _mm512_loadu_ps(Sf + (int64_t)(i) * ldS + 16 * (j)))
    for (int t = 0; t < T; t++) {
        const float *qt = q + t * ldqk, *kt = k + t * ldqk, *vt = v + t * ldv;
        const __m512 decay = _mm512_set1_ps(expf(g[t * ldg])), b = _mm512_set1_ps(beta[t * ldg]);
        __m512 kv[8], ot[8];
        for (int j = 0; j < NV; j++) kv[j] = _mm512_setzero_ps();
        for (int i = 0; i < dk; i++) {
            const __m512 ki = _mm512_set1_ps(kt[i]);
            for (int j = 0; j < NV; j++) kv[j] = _mm512_fmadd_ps(S_LOAD(i, j), ki, kv[j]);
        }
        /* delta = beta (v - exp(g) S^T k) */
        for (int j = 0; j < NV; j++)
            kv[j] = _mm512_mul_ps(b, _mm512_fnmadd_ps(decay, kv[j], _mm512_loadu_ps(vt + 16 * j)));
        for (int j = 0; j < NV; j++) ot[j] = _mm512_setzero_ps();
        for (int i = 0; i < dk; i++) {
            const __m512 ki = _mm512_set1_ps(kt[i]), qi = _mm512_set1_ps(qt[i]);
            for (int j = 0; j < NV; j++) {
                __m512 sn = _mm512_fmadd_ps(ki, kv[j], _mm512_mul_ps(decay, S_LOAD(i, j)));
                if (BF16 == 2) bf16_store_cvt(Sh + (int64_t)i * ldS + 16 * j, sn);
                else if (BF16) bf16_store(Sh + (int64_t)i * ldS + 16 * j, sn);
                else _mm512_storeu_ps(Sf + (int64_t)i * ldS + 16 * j, sn);
                ot[j] = _mm512_fmadd_ps(sn, qi, ot[j]);
            }
        }
        for (int j = 0; j < NV; j++) _mm512_storeu_ps(o + t * ldo + 16 * j, ot[j]);
    }
#undef S_LOAD
}

/* The state's columns in blocks of up to 128, each block one recur_cols call; bf16 (0, 1 or 2,
 * as recur_cols's BF16) is a constant in each caller, so the unused variants fold away. */
static inline __attribute__((always_inline)) void recur_blocks(const int bf16, void *S, int dk, int dv, int T,
                                                               const float *q, const float *k, int64_t ldqk,
                                                               const float *v, int64_t ldv, const float *g,
                                                               const float *beta, int64_t ldg, float *o, int64_t ldo) {
    const size_t esz = bf16 ? 2 : 4;
    for (int c0 = 0; c0 < dv; c0 += 128) {
        const int nv = (dv - c0) / 16 < 8 ? (dv - c0) / 16 : 8;
        void *Sc = (uint8_t *)S + (size_t)c0 * esz;
        switch (nv) {
#define RECUR(NV) \
    case NV: recur_cols(NV, bf16, Sc, dk, dv, T, q, k, ldqk, v + c0, ldv, g, beta, ldg, o + c0, ldo); break;
            RECUR(1) RECUR(2) RECUR(3) RECUR(4) RECUR(5) RECUR(6) RECUR(7) RECUR(8)
#undef RECUR
        }
    }
}

void gdn_recurrent_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                          const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                          int64_t ldo) {
    recur_blocks(0, S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo);
}

__attribute__((target("avx512bf16"))) static void recurrent_bf16_cvt(uint16_t *S, int dk, int dv, int T,
                                                                     const float *q, const float *k, int64_t ldqk,
                                                                     const float *v, int64_t ldv, const float *g,
                                                                     const float *beta, int64_t ldg, float *o,
                                                                     int64_t ldo) {
    recur_blocks(2, S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo);
}

void gdn_recurrent_bf16_avx512(uint16_t *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                               const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                               int64_t ldo) {
    static int cvt = -1;
    if (cvt < 0) cvt = __builtin_cpu_supports("avx512bf16");
    if (cvt) recurrent_bf16_cvt(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo);
    else recur_blocks(1, S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo);
}

#else /* not built for AVX-512: gdn_avx512_available() says so, and the kernel is never called */
int gdn_avx512_available(void) { return 0; }
void gdn_chunked_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                        const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                        int64_t ldo, float *tmp) {}
void gdn_recurrent_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                          const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                          int64_t ldo) {}
void gdn_recurrent_bf16_avx512(uint16_t *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                               const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                               int64_t ldo) {}
#endif
