/* gdn_generic.c - the gated delta rule in plain C: the references of the recurrence (the decode
 * path) and of the chunked form (prompts), the bf16-state conversions, and the choice between
 * them and the AVX-512 kernels (gdn.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gdn.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

/* The loops are plain C; these clones let the compiler vectorise them for AVX-512 and AVX2
 * machines while the default build stays baseline x86-64, and the loader picks one at run
 * time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define QN_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QN_HOT
#endif

/* Recurrent delta rule for one value head over T tokens: the decode path. State S is
 * [dk][dv]; per token: decay, read kv = S^T k, delta = beta (v - kv), S += k delta^T,
 * then read out o = S^T q after the update. */
QN_HOT void gdn_recurrent_ref(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                              const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                              int64_t ldo, float *tmp, float *ckpt, size_t ckpt_stride, int n_ckpt) {
    for (int t = 0; t < T; t++) {
        const float *qt = q + t * ldqk, *kt = k + t * ldqk, *vt = v + t * ldv;
        float decay = expf(g[t * ldg]), b = beta[t * ldg];
        float *kv = tmp;
        for (int j = 0; j < dv; j++) kv[j] = 0;
        for (int i = 0; i < dk; i++) {
            float *Si = S + (int64_t)i * dv;
            for (int j = 0; j < dv; j++) {
                Si[j] *= decay;
                kv[j] += Si[j] * kt[i];
            }
        }
        for (int j = 0; j < dv; j++) kv[j] = b * (vt[j] - kv[j]); /* kv now holds delta */
        float *ot = o + t * ldo;
        for (int j = 0; j < dv; j++) ot[j] = 0;
        for (int i = 0; i < dk; i++) {
            float *Si = S + (int64_t)i * dv;
            for (int j = 0; j < dv; j++) {
                Si[j] += kt[i] * kv[j];
                ot[j] += Si[j] * qt[i];
            }
        }
        /* speculative decoding: the state after each of the first n_ckpt tokens */
        if (t < n_ckpt) memcpy(ckpt + (size_t)t * ckpt_stride, S, (size_t)dk * dv * sizeof(float));
    }
}

/* Chunked delta rule for one value head (spec 3.3, chunk 64): within a chunk the
 * recurrence is solved as a unit lower-triangular system, then the state is carried
 * across chunks. Same result as the recurrence, with matrix-shaped work. */
QN_HOT void gdn_chunked_ref(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                            const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg,
                            float *o, int64_t ldo, float *tmp) {
    const int C = GDN_CHUNK, RB = 8;
    /* The within-chunk cumulative log decay reaches -100s over 64 tokens; in fp32 its
     * differences gam_r - gam_s would lose ~1e-5 absolute precision (and exp() turns that
     * into relative error), so it is kept in double. */
    double *gam = (double *)tmp;   /* [C] within-chunk cumulative log decay */
    float *Dm = tmp + 2 * C;       /* [C][C] exp(gam_r - gam_s), s <= r */
    float *Lm = Dm + C * C;        /* [C][C] beta_r (k_r . k_s) exp(gam_r - gam_s), s < r */
    float *U = Lm + C * C;         /* [C][dv] pseudo values */
    float *W = U + C * dv;         /* [C][dk] decayed keys */
    float *Vn = W + C * dk;        /* [C][dv] */
    float *Ob = Vn + C * dv;       /* [RB][dv] output accumulators */
    for (int t0 = 0; t0 < T; t0 += C) {
        int n = T - t0 < C ? T - t0 : C;
        double acc = 0;
        for (int r = 0; r < n; r++) { acc += g[(t0 + r) * ldg]; gam[r] = acc; }
        for (int r = 0; r < n; r++)
            for (int s2 = 0; s2 <= r; s2++) Dm[r * C + s2] = (float)exp(gam[r] - gam[s2]);
        for (int r = 0; r < n; r++) {
            const float *kr = k + (t0 + r) * ldqk;
            float br = beta[(t0 + r) * ldg];
            for (int s2 = 0; s2 < r; s2++) Lm[r * C + s2] = br * qn_dot_f32(kr, k + (t0 + s2) * ldqk, dk) * Dm[r * C + s2];
        }
        /* Forward substitution: (I + L) U = beta V and (I + L) W = beta exp(gam) K. */
        for (int r = 0; r < n; r++) {
            float br = beta[(t0 + r) * ldg], eg = (float)exp(gam[r]);
            const float *vr = v + (t0 + r) * ldv, *kr = k + (t0 + r) * ldqk;
            float *Ur = U + r * dv, *Wr = W + r * dk;
            for (int j = 0; j < dv; j++) Ur[j] = br * vr[j];
            for (int i = 0; i < dk; i++) Wr[i] = br * eg * kr[i];
            for (int s2 = 0; s2 < r; s2++) {
                float l = Lm[r * C + s2];
                const float *Us = U + s2 * dv, *Ws = W + s2 * dk;
                for (int j = 0; j < dv; j++) Ur[j] -= l * Us[j];
                for (int i = 0; i < dk; i++) Wr[i] -= l * Ws[i];
            }
        }
        /* Vn = U - W S and the inter-chunk part of the outputs, exp(gam) (Q S), for RB rows
         * at a time, so each row of S is read once per block of rows. */
        for (int r0 = 0; r0 < n; r0 += RB) {
            int nr = n - r0 < RB ? n - r0 : RB;
            float qe[RB];
            for (int rr = 0; rr < nr; rr++) {
                memcpy(Vn + (r0 + rr) * dv, U + (r0 + rr) * dv, dv * sizeof(float));
                memset(Ob + rr * dv, 0, dv * sizeof(float));
                qe[rr] = (float)exp(gam[r0 + rr]);
            }
            for (int i = 0; i < dk; i++) {
                const float *Si = S + (int64_t)i * dv;
                for (int rr = 0; rr < nr; rr++) {
                    float w = W[(r0 + rr) * dk + i], qi = q[(t0 + r0 + rr) * ldqk + i] * qe[rr];
                    float *Vr = Vn + (r0 + rr) * dv, *Or = Ob + rr * dv;
                    for (int j = 0; j < dv; j++) {
                        Vr[j] -= w * Si[j];
                        Or[j] += qi * Si[j];
                    }
                }
            }
            for (int rr = 0; rr < nr; rr++) memcpy(o + (t0 + r0 + rr) * ldo, Ob + rr * dv, dv * sizeof(float));
        }
        /* The intra-chunk part: O_r += sum_{s<=r} (q_r . k_s) exp(gam_r - gam_s) Vn_s. */
        for (int r = 0; r < n; r++) {
            const float *qr = q + (t0 + r) * ldqk;
            float *orow = o + (t0 + r) * ldo;
            for (int s2 = 0; s2 <= r; s2++) {
                float a = qn_dot_f32(qr, k + (t0 + s2) * ldqk, dk) * Dm[r * C + s2];
                const float *Vs = Vn + s2 * dv;
                for (int j = 0; j < dv; j++) orow[j] += a * Vs[j];
            }
        }
        /* Carry the state: S = exp(gam_last) S + sum_s exp(gam_last - gam_s) k_s Vn_s^T. */
        double glast = gam[n - 1];
        float el = (float)exp(glast);
        for (int i = 0; i < dk; i++) {
            float *Si = S + (int64_t)i * dv;
            for (int j = 0; j < dv; j++) Si[j] *= el;
        }
        for (int s2 = 0; s2 < n; s2++) {
            const float *ks = k + (t0 + s2) * ldqk, *Vs = Vn + s2 * dv;
            float d = Dm[(n - 1) * C + s2];
            for (int i = 0; i < dk; i++) {
                float ki = ks[i] * d;
                float *Si = S + (int64_t)i * dv;
                for (int j = 0; j < dv; j++) Si[j] += ki * Vs[j];
            }
        }
    }
}


static size_t ref_tmp_floats(int dk, int dv) {
    const int C = GDN_CHUNK;
    int mx = dk > dv ? dk : dv;
    return (size_t)2 * C + 2 * C * C + C * dv + C * dk + C * dv + 8 * (size_t)mx + 16;
}

size_t gdn_tmp_floats(int dk, int dv) {
    size_t a = ref_tmp_floats(dk, dv), b = gdn_avx512_tmp_floats(dk, dv);
    return a > b ? a : b;
}

static int use_avx512(int dk, int dv) {
    static int ok = -1;
    if (ok < 0) {
        const char *env = getenv("QNEXT_KERNELS");
        ok = gdn_avx512_available() && !(env && !strcmp(env, "generic")) && !getenv("QNEXT_GDN_REF");
    }
    return ok && dk % 16 == 0 && dv % 16 == 0 && dk <= 256 && dv <= 256;
}

void gdn_recurrent(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                   int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp,
                   float *ckpt, size_t ckpt_stride, int n_ckpt) {
    if (!use_avx512(dk, dv)) {
        gdn_recurrent_ref(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo, tmp, ckpt, ckpt_stride, n_ckpt);
        return;
    }
    if (!n_ckpt) { gdn_recurrent_avx512(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo); return; }
    /* speculative verification: token by token, with the state after each of the first n_ckpt
     * kept; the same kernel as plain decoding, so accepted tokens leave the same state */
    for (int t = 0; t < T; t++) {
        gdn_recurrent_avx512(S, dk, dv, 1, q + t * ldqk, k + t * ldqk, ldqk, v + t * ldv, ldv, g + t * ldg,
                             beta + t * ldg, ldg, o + t * ldo, ldo);
        if (t < n_ckpt) memcpy(ckpt + (size_t)t * ckpt_stride, S, (size_t)dk * dv * sizeof(float));
    }
}

size_t gdn_state_tmp_floats(int dk, int dv) { return (size_t)dk * dv + 16 + gdn_tmp_floats(dk, dv); }

float *gdn_state_widen(const uint16_t *S, int n, float *tmp) {
    float *Sf = (float *)(((uintptr_t)tmp + 63) & ~(uintptr_t)63);
    for (int i = 0; i < n; i++) Sf[i] = quant_bf16_to_f32(S[i]);
    return Sf;
}

void gdn_state_narrow(uint16_t *S, const float *Sf, int n) {
    for (int i = 0; i < n; i++) S[i] = quant_f32_to_bf16(Sf[i]);
}

void gdn_recurrent_bf16(uint16_t *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                        const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                        int64_t ldo, float *tmp) {
    if (use_avx512(dk, dv)) { gdn_recurrent_bf16_avx512(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo); return; }
    /* token by token through the f32 reference, rounding the state after each as the kernel does */
    float *Sf = gdn_state_widen(S, dk * dv, tmp), *t2 = tmp + (size_t)dk * dv + 16;
    for (int t = 0; t < T; t++) {
        gdn_recurrent_ref(Sf, dk, dv, 1, q + t * ldqk, k + t * ldqk, ldqk, v + t * ldv, ldv, g + t * ldg, beta + t * ldg,
                          ldg, o + t * ldo, ldo, t2, NULL, 0, 0);
        for (int i = 0; i < dk * dv; i++) Sf[i] = quant_bf16_to_f32(quant_f32_to_bf16(Sf[i]));
    }
    gdn_state_narrow(S, Sf, dk * dv);
}

void gdn_chunked(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                 int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp) {
    if (use_avx512(dk, dv)) gdn_chunked_avx512(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo, tmp);
    else gdn_chunked_ref(S, dk, dv, T, q, k, ldqk, v, ldv, g, beta, ldg, o, ldo, tmp);
}
