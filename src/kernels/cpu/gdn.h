/* gdn.h - the gated delta rule of one value head (spec 3.3): the recurrence for decoding and
 * the chunked form for prompts.
 *
 * Per token t, with state S [dk][dv], key k_t and query q_t [dk] (L2-normalised, q scaled),
 * value v_t [dv], log decay g_t < 0 and beta_t in [0, 1]:
 *     S = exp(g_t) S;  delta = beta_t (v_t - S^T k_t);  S += k_t delta^T;  o_t = S^T q_t
 * Rows of q, k (stride ldqk), v (ldv) and o (ldo) are per token; g and beta are read at
 * t * ldg. tmp is scratch of gdn_tmp_floats(dk, dv) floats, one per thread.
 *
 * gdn_recurrent_ref and gdn_chunked_ref are the plain C references; gdn_recurrent and
 * gdn_chunked pick the AVX-512 kernels (gdn_avx512.c) where the CPU has them and dk, dv are
 * multiples of 16, unless
 * QNEXT_KERNELS=generic or QNEXT_GDN_REF=1 (the reference only, for comparisons). Both give
 * the recurrence's result up to f32 rounding where the chunk's triangular system is well
 * conditioned, and round alike where it is not (both solve it by forward substitution). */
#ifndef QNEXT_GDN_H
#define QNEXT_GDN_H
#include <stddef.h>
#include <stdint.h>

#define GDN_CHUNK 64

size_t gdn_tmp_floats(int dk, int dv);
/* Scratch for a bf16 state: an f32 copy of one head's state (64-byte aligned), then
 * gdn_tmp_floats. gdn_state_widen / gdn_state_narrow convert a head's state. */
size_t gdn_state_tmp_floats(int dk, int dv);
float *gdn_state_widen(const uint16_t *S, int n, float *tmp);  /* returns the f32 copy in tmp */
void gdn_state_narrow(uint16_t *S, const float *Sf, int n);

/* The recurrence over T tokens (the decode path). While n_ckpt > 0 the state after each of
 * the first n_ckpt tokens is copied to ckpt + t * ckpt_stride (speculative decoding). */
void gdn_recurrent(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                   int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp,
                   float *ckpt, size_t ckpt_stride, int n_ckpt);
void gdn_recurrent_ref(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                       int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp,
                       float *ckpt, size_t ckpt_stride, int n_ckpt);

/* The recurrence with the state S stored as bf16 (QNEXT_STATE_BF16): each token's update is
 * computed in f32 from the widened state (o too) and rounded to nearest even when stored.
 * tmp: gdn_state_tmp_floats(dk, dv) floats. */
void gdn_recurrent_bf16(uint16_t *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                        const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                        int64_t ldo, float *tmp);

/* The chunked form over T tokens (prompts): the same result with matrix-shaped work. */
void gdn_chunked(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                 int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp);
void gdn_chunked_ref(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk, const float *v,
                     int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o, int64_t ldo, float *tmp);

/* gdn_avx512.c: 1 when the CPU runs it; the kernel takes dk, dv multiples of 16 up to 256. */
int gdn_avx512_available(void);
size_t gdn_avx512_tmp_floats(int dk, int dv);
void gdn_chunked_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                        const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                        int64_t ldo, float *tmp);
/* The recurrence, without checkpoints (gdn_recurrent keeps them between single-token calls). */
void gdn_recurrent_avx512(float *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                          const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                          int64_t ldo);
void gdn_recurrent_bf16_avx512(uint16_t *S, int dk, int dv, int T, const float *q, const float *k, int64_t ldqk,
                               const float *v, int64_t ldv, const float *g, const float *beta, int64_t ldg, float *o,
                               int64_t ldo);
#endif
