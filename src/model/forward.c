/* forward.c - the Qwen3-Next forward pass on the CPU, read top to bottom like the spec
 * (docs: shared qwen3next-spec.md, section 3).
 *
 * One call runs T tokens (a micro-batch) at the session's position. Every layer is
 *     h += block(RMSNorm1p(h))        block = gdn_block or attn_block
 *     h += mlp(RMSNorm1p(h))          mlp   = moe_block or dense_block
 * All activations are fp32; the scratch buffers belong to the session and are sized for
 * n_ubatch tokens when it is created, so nothing is allocated here. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/gdn.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "model.h"

/* Row-wise loops (norms, gates, the MoE gather) go parallel from this many rows: a batched
 * decode step of 16 streams would otherwise leave one thread idle through them. */
#define ROWS_PAR 8

/* ---------------------------------------------------------------- RoPE tables */

/* cos/sin for the rotary pairs at each row's position, as transformers computes them:
 * fp32 angle = pos * inv_freq, then scaled by the YaRN attention factor. */
static void rope_tables(qnext_session *s, int T) {
    int half = s->m->cfg.rotary_dim / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float ang = (float)s->sc.row_pos[t] * s->rope_inv_freq[i];
            s->sc.rope_cos[t * half + i] = (float)cos((double)ang) * s->rope_mscale;
            s->sc.rope_sin[t * half + i] = (float)sin((double)ang) * s->rope_mscale;
        }
}

/* Rotates the first rotary_dim dims of one head (NeoX rotate-half pairs i, i+half). */
static void rope_apply(float *v, const float *cs, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
    }
}

/* ---------------------------------------------------------------- Gated DeltaNet */

/* x[T,H] -> in_proj_qkvz, in_proj_ba -> causal conv + SiLU -> L2-norm q,k -> gates ->
 * delta rule (chunked or recurrent) -> gated RMSNorm with silu(z) -> out_proj -> y[T,H] */
static void gdn_block(qnext_session *s, qn_seq *seqs, int n_seqs, int il, int T) {
    const qnext_config *c = &s->m->cfg;
    const qn_layer *ly = &s->m->layers[il];
    qn_scratch *sc = &s->sc;
    const int nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    const int K = c->conv_kernel, r = nv / nk;
    const int64_t key_dim = (int64_t)nk * dk, val_dim = (int64_t)nv * dv, conv_dim = 2 * key_dim + val_dim;
    const int64_t n_qkvz = 2 * key_dim + 2 * val_dim;

    /* The input projections as one multi-product (one parallel region, the input quantized
     * once): proj [T, q|k|v|z] (after the load-time row map, or from GGUF's separate [q|k|v]
     * and z matrices) and proj2 [T, b|a]. */
    op_job pj[3];
    int npj = 0;
    pj[npj++] = (op_job){&ly->qkvz, sc->x, sc->proj, T, n_qkvz};
    if (ly->gate_z.data) pj[npj++] = (op_job){&ly->gate_z, sc->x, sc->proj + conv_dim, T, n_qkvz};
    pj[npj++] = (op_job){&ly->ba, sc->x, sc->proj2, T, 2 * nv};
    op_matmul_multi(pj, npj);

    /* Causal depthwise conv over [conv state | new inputs] of each sequence, then SiLU.
     * Channels in blocks, tokens inside: each row of P is read contiguously, and each tap's
     * weights too (conv_w is tap-major). The (sequence, block) pairs go to the threads, so a
     * batched decode step (one row per sequence) is split as well as a long prompt, and so is
     * one decoding token's 8192 channels (on bench-a3b 0.7 ms per token instead of 1.0). */
    const int64_t CB = 256, nblk = (conv_dim + CB - 1) / CB;
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)T * conv_dim >= 4096)
    for (int q = 0; q < n_seqs; q++)
        for (int64_t blk = 0; blk < nblk; blk++) {
            float *cs = seqs[q].s->ls[il].conv_state;
            const float *P = sc->proj + (int64_t)seqs[q].row0 * n_qkvz;
            float *Y = sc->conv + (int64_t)seqs[q].row0 * conv_dim;
            const int n = seqs[q].n;
            const int n_ckpt = seqs[q].s->ckpt_n;
            float *ck = n_ckpt ? seqs[q].s->ckpt + seqs[q].s->ckpt_off[il] : NULL;
            const size_t ck_stride = seqs[q].s->ckpt_stride;
            const int64_t c0 = blk * CB, c1 = c0 + CB < conv_dim ? c0 + CB : conv_dim;
            /* speculative decoding: the conv state after each of the first n_ckpt rows */
            for (int r = 0; r < n_ckpt; r++)
                for (int i = 0; i < K - 1; i++) {
                    int tau = r - (K - 2) + i;
                    const float *src = tau >= 0 ? P + (int64_t)tau * n_qkvz : cs + (int64_t)(K - 1 + tau) * conv_dim;
                    memcpy(ck + (size_t)r * ck_stride + (size_t)i * conv_dim + c0, src + c0, (c1 - c0) * sizeof(float));
                }
            for (int t = 0; t < n; t++) {
                float *yt = Y + (int64_t)t * conv_dim;
                for (int64_t ch = c0; ch < c1; ch++) yt[ch] = 0;
                for (int j = 0; j < K; j++) {
                    int tau = t - (K - 1) + j;
                    const float *x = tau >= 0 ? P + (int64_t)tau * n_qkvz : cs + (int64_t)(K - 1 + tau) * conv_dim;
                    const float *w = ly->conv_w + (int64_t)j * conv_dim; /* tap j of every channel */
                    for (int64_t ch = c0; ch < c1; ch++) yt[ch] += w[ch] * x[ch];
                }
                op_silu_mul(yt + c0, NULL, c1 - c0);
            }
            /* Keep the last K-1 inputs. Ascending i only reads rows not yet overwritten. */
            for (int i = 0; i < K - 1; i++) {
                int tau = n - (K - 1) + i;
                const float *src = tau >= 0 ? P + (int64_t)tau * n_qkvz : cs + (int64_t)(K - 1 + tau) * conv_dim;
                memmove(cs + (int64_t)i * conv_dim + c0, src + c0, (c1 - c0) * sizeof(float));
            }
        }

    /* L2-normalise q and k per head (eps inside the sqrt of the sum), scale q by dk^-1/2;
     * gates: beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias). */
    const float qscale = 1.0f / sqrtf((float)dk);
#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
    for (int t = 0; t < T; t++) {
        float *row = sc->conv + (int64_t)t * conv_dim;
        for (int hh = 0; hh < 2 * nk; hh++) {
            float *v = row + (int64_t)hh * dk;
            double ss = 0;
            for (int i = 0; i < dk; i++) ss += (double)v[i] * v[i];
            float inv = 1.0f / sqrtf((float)ss + 1e-6f);
            if (hh < nk) inv *= qscale;
            for (int i = 0; i < dk; i++) v[i] *= inv;
        }
        const float *ba = sc->proj2 + (int64_t)t * 2 * nv;
        float *gt = sc->gates + (int64_t)t * 2 * nv;
        for (int h = 0; h < nv; h++) {
            gt[h] = ly->a_neg[h] * qn_softplus(ba[nv + h] + ly->dt_bias[h]);
            gt[nv + h] = qn_sigmoid(ba[h]);
        }
    }

    /* The delta rule, per (sequence, value head); each has its own state. Scratch is per
     * thread, since one thread works on one (sequence, head) at a time. The threads take four
     * heads at a time: a run of four states in memory order, which the hardware prefetcher
     * streams, where threads taking turns head by head read one decode step's states at half
     * the speed, and a static split into two halves waited on the later thread (PERF.md,
     * twenty-first session). Dynamic still balances a prompt chunk among decode tokens. */
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if ((int64_t)T * nv * dk * dv > 65536)
    for (int q = 0; q < n_seqs; q++)
        for (int h = 0; h < nv; h++) {
            const qn_seq *sq = &seqs[q];
            const int mode = sq->s->params.gdn_mode;
            const int n_ckpt = sq->s->ckpt_n;
            int recurrent = n_ckpt || mode == QNEXT_GDN_RECURRENT || (mode == QNEXT_GDN_AUTO && sq->n == 1);
            int kh = h / r; /* value head h reads key head h / (nv/nk) */
            const float *rows = sc->conv + (int64_t)sq->row0 * conv_dim;
            const float *qp = rows + (int64_t)kh * dk, *kp = rows + key_dim + (int64_t)kh * dk;
            const float *vp = rows + 2 * key_dim + (int64_t)h * dv;
            const float *g = sc->gates + (int64_t)sq->row0 * 2 * nv + h, *beta = g + nv;
            float *o = sc->core + (int64_t)sq->row0 * val_dim + (int64_t)h * dv;
            float *tmp = sc->gdn_tmp + (size_t)omp_get_thread_num() * sc->gdn_tmp_stride;
            float *ckpt = n_ckpt ? sq->s->ckpt + sq->s->ckpt_off[il] + (size_t)(K - 1) * conv_dim + (size_t)h * dk * dv
                                 : NULL;
            if (sq->s->params.state_type == QNEXT_STATE_BF16) {
                uint16_t *Sh = (uint16_t *)sq->s->ls[il].ssm_state + (int64_t)h * dk * dv;
                if (recurrent && !n_ckpt) {
                    gdn_recurrent_bf16(Sh, dk, dv, sq->n, qp, kp, conv_dim, vp, conv_dim, g, beta, 2 * nv, o, val_dim,
                                       tmp);
                    continue;
                }
                /* A prompt, or a verify with checkpoints: on an f32 copy of the head's state. The
                 * checkpoints keep the f32 state after each token, which accept rounds like this. */
                float *Sf = gdn_state_widen(Sh, dk * dv, tmp), *t2 = tmp + (size_t)dk * dv + 16;
                if (recurrent)
                    gdn_recurrent(Sf, dk, dv, sq->n, qp, kp, conv_dim, vp, conv_dim, g, beta, 2 * nv, o, val_dim, t2,
                                  ckpt, sq->s->ckpt_stride, n_ckpt);
                else
                    gdn_chunked(Sf, dk, dv, sq->n, qp, kp, conv_dim, vp, conv_dim, g, beta, 2 * nv, o, val_dim, t2);
                gdn_state_narrow(Sh, Sf, dk * dv);
                continue;
            }
            float *S = (float *)sq->s->ls[il].ssm_state + (int64_t)h * dk * dv;
            if (recurrent)
                gdn_recurrent(S, dk, dv, sq->n, qp, kp, conv_dim, vp, conv_dim, g, beta, 2 * nv, o, val_dim, tmp, ckpt,
                              sq->s->ckpt_stride, n_ckpt);
            else
                gdn_chunked(S, dk, dv, sq->n, qp, kp, conv_dim, vp, conv_dim, g, beta, 2 * nv, o, val_dim, tmp);
        }

    /* Gated RMSNorm per (token, value head): plain weight, times silu(z). */
#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nv; h++) {
            float *o = sc->core + (int64_t)t * val_dim + (int64_t)h * dv;
            const float *z = sc->proj + (int64_t)t * n_qkvz + 2 * key_dim + val_dim + (int64_t)h * dv;
            double ss = 0;
            for (int j = 0; j < dv; j++) ss += (double)o[j] * o[j];
            float inv = 1.0f / sqrtf((float)(ss / dv) + (float)c->rms_eps);
            float zs[64]; /* silu(z), a piece at a time */
            for (int j0 = 0; j0 < dv; j0 += 64) {
                const int m = dv - j0 < 64 ? dv - j0 : 64;
                memcpy(zs, z + j0, (size_t)m * sizeof(float));
                op_silu_mul(zs, NULL, m);
                for (int j = 0; j < m; j++) o[j0 + j] = ly->gdn_norm[j0 + j] * (o[j0 + j] * inv) * zs[j];
            }
        }
    op_matmul(&ly->out_proj, sc->core, T, sc->y);
}

/* ---------------------------------------------------------------- gated attention */

/* D values as bf16 (quant.c's rounding: to nearest even, NaN kept NaN) into every step-th
 * 16-bit word from o: step 1 for a row, 2 for one key of a bf16 value pair (attn.h). */
static void kv_put_bf16(uint16_t *o, int step, const float *x, int D) {
    for (int i = 0; i < D; i++) o[step * i] = quant_f32_to_bf16(x[i]);
}

/* D bf16 values from every step-th word from h into buf as f32 (kv_put_bf16's reverse). */
static inline const float *kv_get_bf16(const uint16_t *h, int step, float *buf, int D) {
    for (int i = 0; i < D; i++) buf[i] = qn_bf16_to_f32(h[step * i]);
    return buf;
}

/* KV cache rows: f32, bf16 (round to nearest even), or int8 with an f32 scale after the
 * D values (symmetric, scale = max|x| / 127). */
static void kv_put(int type, uint8_t *dst, const float *x, int D) {
    if (type == QNEXT_KV_F32) { memcpy(dst, x, (size_t)D * 4); return; }
    if (type == QNEXT_KV_BF16) { kv_put_bf16((uint16_t *)dst, 1, x, D); return; }
    float amax = 0;
    for (int i = 0; i < D; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    for (int i = 0; i < D; i++) dst[i] = (uint8_t)(int8_t)lrintf(x[i] * id);
    memcpy(dst + D, &d, 4);
}

/* One cached row of a head: head_dim values (config.c caps it at 4096), then an int8 row's scale. */
#define KV_ROW_MAX (4096 + 4)

/* A key vector at position pos of the head (head: its row of position 0, rb its row bytes):
 * a row, or in a tiled cache (attn.h's attn_k8_tile) the row's place in its key tile. */
static void kv_put_k(int type, int tiled, uint8_t *head, size_t rb, int pos, const float *x, int D) {
    if (!tiled) { kv_put(type, head + (size_t)pos * rb, x, D); return; }
    uint8_t row[KV_ROW_MAX];
    kv_put(type, row, x, D);
    if (type == QNEXT_KV_BF16) attn_kb_put(head, rb, D, pos, row);
    else attn_k8_put(head, rb, D, pos, row);
}

/* A value vector: as kv_put_k, but bf16 goes into the key pair of position pos (attn.h's
 * attn_vpair; tiled or not), and tiled int8 into its value quad (attn_v8_quad). */
static void kv_put_v(int type, int tiled, uint8_t *head, size_t rb, int pos, const float *x, int D) {
    if (tiled && type == QNEXT_KV_Q8) {
        uint8_t row[KV_ROW_MAX];
        kv_put(type, row, x, D);
        attn_v8_put(head, rb, D, pos, row);
        return;
    }
    if (type != QNEXT_KV_BF16) { kv_put(type, head + (size_t)pos * rb, x, D); return; }
    kv_put_bf16((uint16_t *)(head + attn_vpair(rb, pos)) + (pos & 1), 2, x, D);
}

/* An int8 row (D values, then the f32 scale) widened into buf. */
static inline const float *kv_get_q8(const uint8_t *src, float *buf, int D) {
    float d;
    memcpy(&d, src + D, 4);
    for (int i = 0; i < D; i++) buf[i] = d * (float)(int8_t)src[i];
    return buf;
}

/* Returns the row as f32: in place for f32 rows, else widened into buf. */
static inline const float *kv_get(int type, const uint8_t *src, float *buf, int D) {
    if (type == QNEXT_KV_F32) return (const float *)src;
    if (type == QNEXT_KV_BF16) return kv_get_bf16((const uint16_t *)src, 1, buf, D);
    return kv_get_q8(src, buf, D);
}

/* The key vector of position pos as f32 (kv_get, tiled keys read from their key tile). */
static inline const float *kv_get_k(int type, int tiled, const uint8_t *head, size_t rb, int pos, float *buf, int D) {
    if (!tiled) return kv_get(type, head + (size_t)pos * rb, buf, D);
    uint8_t row[KV_ROW_MAX];
    if (type == QNEXT_KV_BF16) {
        attn_kb_get(head, rb, D, pos, row);
        return kv_get_bf16((const uint16_t *)row, 1, buf, D);
    }
    attn_k8_get(head, rb, D, pos, row);
    return kv_get_q8(row, buf, D);
}

/* The value vector of position pos as f32 (kv_get, with bf16 read from its key pair and
 * tiled int8 from its value quad). */
static inline const float *kv_get_v(int type, int tiled, const uint8_t *head, size_t rb, int pos, float *buf, int D) {
    if (tiled && type == QNEXT_KV_Q8) {
        uint8_t row[KV_ROW_MAX];
        attn_v8_get(head, rb, D, pos, row);
        return kv_get_q8(row, buf, D);
    }
    if (type != QNEXT_KV_BF16) return kv_get(type, head + (size_t)pos * rb, buf, D);
    return kv_get_bf16((const uint16_t *)(head + attn_vpair(rb, pos)) + (pos & 1), 2, buf, D);
}

/* Byte offset of the cached row of position pos and KV head h: the cache is head-major,
 * [nkv][n_ctx rounded up to 16] rows (qn_kv_rows: whole bf16 value pairs and int8 key tiles per head), so
 * one head's keys (or values) are one contiguous stream, which the hardware prefetchers
 * follow (with position-major rows, interleaving the heads, a decode step at depth 16K
 * read one layer's cache 3-18% slower from memory). */
static inline size_t kv_at(int n_ctx, size_t rb, int pos, int h) { return ((size_t)h * qn_kv_rows(n_ctx) + pos) * rb; }

#define ATT_ROWS 16 /* query rows per attention tile */
/* Decode-like tiles (up to ATT_SPLIT_ROWS rows) with at least 2*ATT_PART_MIN keys are split
 * into up to ATT_MAX_PARTS key ranges computed in parallel and merged in order
 * (flash-decoding): a decode step has only nkv tiles. The split depends on the tile alone,
 * not on the batch or the thread count, so results do not either. */
#define ATT_SPLIT_ROWS 4
#define ATT_PART_MIN 512
#define ATT_MAX_PARTS 8 /* each range starts cold (the kernels prefetch only the next block of their own
                          * range): at 16K keys, 8 ranges of 2048 took 3-22% less time than 16 of 1024
                          * on two threads (docs/PERF.md), and 8 per KV head still feed 16 threads */
#define ATT_PART_CAP 64 /* partials held at once (attn_parts_floats) */

/* Per thread: one tile's partial output (attn.h layout) and the kernel's work space. */
size_t attn_tile_floats(int group, int D) {
    int nq = ATT_ROWS * group;
    return attn_part_floats(nq, D) + attn_work_floats(nq, D);
}

/* The partials of split tiles: ATT_PART_CAP of them, each of a decode-like tile. */
size_t attn_parts_floats(int group, int D) { return ATT_PART_CAP * attn_part_floats(ATT_SPLIT_ROWS * group, D); }

static int attn_reference_path(void) {
    static int ref = -1;
    if (ref < 0) ref = !strcmp(op_kernel_name(), "reference");
    return ref;
}

/* Rows r0..r0+nr-1 (one sequence, consecutive positions) and query heads
 * kvh*group..kvh*group+group-1 against the cached keys [j0, j1) (j1 <= pos(last row) + 1):
 * the tile kernel of attn.h writes the unnormalised partial to part (attn_part_floats). */
static void attn_tile(qn_scratch *sc, const qn_layer_state *st, int kv_type, int tiled, size_t kv_rb, int r0, int nr, int kvh,
                      int group, int n_ctx, int D, int64_t qw, float scale, int j0, int j1, float *part, float *work) {
    const int nq = nr * group;
    const float *Q[ATT_ROWS * 64];
    int qpos[ATT_ROWS * 64];
    for (int i = 0; i < nq; i++) {
        int t = r0 + i / group, h = kvh * group + i % group;
        Q[i] = sc->proj + t * qw + (int64_t)h * D;
        qpos[i] = sc->row_pos[t];
    }
    attn_tile_args a = {.nq = nq, .D = D, .kv_type = kv_type, .tiled = tiled, .q = Q, .qpos = qpos, .scale = scale,
                        .k = st->k_cache + kv_at(n_ctx, kv_rb, 0, kvh), .v = st->v_cache + kv_at(n_ctx, kv_rb, 0, kvh),
                        .stride = kv_rb};
    float *O = part, *mx = O + (size_t)nq * D, *sum = mx + nq;
    attn_partial(&a, j0, j1, O, mx, sum, work);
}

/* Tile number `tile` of the batch (tiles in order of sequence, row block, KV head): its
 * sequence q, rows r0..r0+nr-1, KV head, and its keys cut into `parts` ranges of `chunk`
 * keys (a multiple of ATTN_KEYS); parts > 1 only for decode-like tiles. */
typedef struct { int q, r0, nr, kvh, n_keys, parts, chunk; } attn_tile_geom;

static attn_tile_geom attn_tile_at(const qn_scratch *sc, const qn_seq *seqs, int tile, int nkv) {
    attn_tile_geom g = {.kvh = tile % nkv};
    int blk = tile / nkv;
    while (blk >= (seqs[g.q].n + ATT_ROWS - 1) / ATT_ROWS) { blk -= (seqs[g.q].n + ATT_ROWS - 1) / ATT_ROWS; g.q++; }
    g.r0 = seqs[g.q].row0 + blk * ATT_ROWS;
    g.nr = seqs[g.q].row0 + seqs[g.q].n - g.r0 < ATT_ROWS ? seqs[g.q].row0 + seqs[g.q].n - g.r0 : ATT_ROWS;
    g.n_keys = sc->row_pos[g.r0 + g.nr - 1] + 1;
    g.parts = g.nr <= ATT_SPLIT_ROWS ? g.n_keys / ATT_PART_MIN : 1;
    if (g.parts > ATT_MAX_PARTS) g.parts = ATT_MAX_PARTS;
    if (g.parts < 1) g.parts = 1;
    g.chunk = ((g.n_keys + g.parts - 1) / g.parts + ATTN_KEYS - 1) / ATTN_KEYS * ATTN_KEYS;
    g.parts = (g.n_keys + g.chunk - 1) / g.chunk;
    return g;
}

/* Where the outputs of a tile go: core rows of its (row, query head) pairs. */
static void attn_tile_outputs(qn_scratch *sc, int r0, int nr, int kvh, int group, int nh, int D, float **out) {
    for (int i = 0; i < nr * group; i++) {
        int t = r0 + i / group, h = kvh * group + i % group;
        out[i] = sc->core + (int64_t)t * nh * D + (int64_t)h * D;
    }
}

/* x[T,H] -> q|gate, k, v -> q_norm/k_norm -> partial RoPE -> KV cache -> causal GQA
 * softmax attention -> * sigmoid(gate) -> o_proj -> y[T,H] */
static void attn_block(qnext_session *s, const qn_layer *ly, qn_seq *seqs, int n_seqs, int il, int T) {
    const qnext_config *c = &s->m->cfg;
    qn_scratch *sc = &s->sc;
    const int nh = c->n_heads, nkv = c->n_kv_heads, D = c->head_dim, half = c->rotary_dim / 2;
    const int64_t qw = 2 * (int64_t)nh * D, kvw = 2 * (int64_t)nkv * D;
    const int n_ctx = s->params.n_ctx;
    int64_t max_keys = 0;
    for (int t = 0; t < T; t++) max_keys += sc->row_pos[t] + 1;
    const float eps = (float)c->rms_eps, scale = 1.0f / sqrtf((float)D);

    /* proj [T, q heads | gate heads], proj2 [T, k | v]: one multi-product */
    const op_job pj[3] = {{&ly->q_proj, sc->x, sc->proj, T, qw},
                          {&ly->k_proj, sc->x, sc->proj2, T, kvw},
                          {&ly->v_proj, sc->x, sc->proj2 + (int64_t)nkv * D, T, kvw}};
    op_matmul_multi(pj, 3);

#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
    for (int t = 0; t < T; t++) {
        const float *cs = sc->rope_cos + (int64_t)t * half, *sn = sc->rope_sin + (int64_t)t * half;
        for (int h = 0; h < nh; h++) {
            float *q = sc->proj + t * qw + (int64_t)h * D;
            op_rmsnorm1p(q, ly->q_norm, q, D, eps);
            rope_apply(q, cs, sn, half);
        }
        const qnext_session *owner = seqs[sc->row_seq[t]].s;
        qn_layer_state *st = &owner->ls[il];
        const size_t rb = owner->kv_row_bytes;
        for (int h = 0; h < nkv; h++) {
            float *k = sc->proj2 + t * kvw + (int64_t)h * D, *v = k + (int64_t)nkv * D;
            op_rmsnorm1p(k, ly->k_norm, k, D, eps);
            rope_apply(k, cs, sn, half);
            kv_put_k(owner->params.kv_type, owner->kv_tiled, st->k_cache + kv_at(owner->params.n_ctx, rb, 0, h), rb, sc->row_pos[t], k, D);
            kv_put_v(owner->params.kv_type, owner->kv_tiled, st->v_cache + kv_at(owner->params.n_ctx, rb, 0, h), rb, sc->row_pos[t], v, D);
        }
    }

    const int group = nh / nkv;
    if (attn_reference_path()) {
        /* The readable reference: one (row, head) at a time, scores of all keys, softmax,
         * weighted sum of values. */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (max_keys * nh * D > 65536)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                const qnext_session *owner = seqs[sc->row_seq[t]].s;
                const qn_layer_state *st = &owner->ls[il];
                const int kt = owner->params.kv_type;
                const size_t rb = owner->kv_row_bytes;
                float *sco = sc->att + (int64_t)omp_get_thread_num() * n_ctx;
                float *buf = sc->att_tile + (size_t)omp_get_thread_num() * sc->att_tile_stride;
                const float *q = sc->proj + t * qw + (int64_t)h * D;
                int kvh = h / group, n_keys = sc->row_pos[t] + 1;
                float mx = -FLT_MAX;
                for (int j = 0; j < n_keys; j++) {
                    sco[j] = op_dot_f32(q, kv_get_k(kt, owner->kv_tiled, st->k_cache + kv_at(owner->params.n_ctx, rb, 0, kvh), rb, j, buf, D), D) * scale;
                    if (sco[j] > mx) mx = sco[j];
                }
                float sum = 0;
                for (int j = 0; j < n_keys; j++) { sco[j] = expf(sco[j] - mx); sum += sco[j]; }
                float inv = 1.0f / sum;
                float *o = sc->core + (int64_t)t * nh * D + (int64_t)h * D;
                for (int d = 0; d < D; d++) o[d] = 0;
                for (int j = 0; j < n_keys; j++) {
                    const float *vv = kv_get_v(kt, owner->kv_tiled, st->v_cache + kv_at(owner->params.n_ctx, rb, 0, kvh), rb, j, buf, D);
                    float p = sco[j] * inv;
                    for (int d = 0; d < D; d++) o[d] += p * vv[d];
                }
            }
    } else {
        /* Tiled: a block of up to 16 rows of one sequence and the `group` query heads that
         * share a KV head form up to 16*group queries; keys and values are read once per
         * block of 32 keys for all of them, with an online softmax (kernels: attn.h).
         * Each cached K/V byte is then read T/16 times per layer instead of T*group times.
         * Tiles that are split (see ATT_SPLIT_ROWS) go in a second pass. */
        int n_tiles = 0, n_split = 0;
        for (int q = 0; q < n_seqs; q++) n_tiles += (seqs[q].n + ATT_ROWS - 1) / ATT_ROWS;
        n_tiles *= nkv;
        for (int tile = 0; tile < n_tiles; tile++) n_split += attn_tile_at(sc, seqs, tile, nkv).parts > 1;
        const size_t pstride = attn_part_floats(ATT_ROWS * group, D), sstride = attn_part_floats(ATT_SPLIT_ROWS * group, D);
        if (n_split < n_tiles) {
#pragma omp parallel for schedule(dynamic, 1) if (max_keys * nh * D > 65536)
            for (int tile = 0; tile < n_tiles; tile++) {
                const attn_tile_geom g = attn_tile_at(sc, seqs, tile, nkv);
                if (g.parts > 1) continue;
                const qnext_session *owner = seqs[g.q].s;
                float *part = sc->att_tile + (size_t)omp_get_thread_num() * sc->att_tile_stride, *out[ATT_ROWS * 64];
                attn_tile(sc, &owner->ls[il], owner->params.kv_type, owner->kv_tiled, owner->kv_row_bytes, g.r0, g.nr, g.kvh, group, owner->params.n_ctx, D,
                          qw, scale, 0, g.n_keys, part, part + pstride);
                attn_tile_outputs(sc, g.r0, g.nr, g.kvh, group, nh, D, out);
                attn_merge(1, part, pstride, g.nr * group, D, out);
            }
        }
        /* Split tiles, in rounds of at most ATT_PART_CAP parts: every part in parallel,
         * then each tile's parts merged in key order. */
        for (int next = 0; n_split > 0 && next < n_tiles;) {
            int w_tile[ATT_PART_CAP], w_part[ATT_PART_CAP], n_work = 0;
            for (; next < n_tiles; next++) {
                const attn_tile_geom g = attn_tile_at(sc, seqs, next, nkv);
                if (g.parts == 1) continue;
                if (n_work + g.parts > ATT_PART_CAP) break;
                for (int p = 0; p < g.parts; p++, n_work++) { w_tile[n_work] = next; w_part[n_work] = p; }
            }
#pragma omp parallel for schedule(dynamic, 1)
            for (int w = 0; w < n_work; w++) {
                const attn_tile_geom g = attn_tile_at(sc, seqs, w_tile[w], nkv);
                const qnext_session *owner = seqs[g.q].s;
                int j0 = w_part[w] * g.chunk, j1 = j0 + g.chunk < g.n_keys ? j0 + g.chunk : g.n_keys;
                float *work = sc->att_tile + (size_t)omp_get_thread_num() * sc->att_tile_stride + pstride;
                attn_tile(sc, &owner->ls[il], owner->params.kv_type, owner->kv_tiled, owner->kv_row_bytes, g.r0, g.nr, g.kvh, group, owner->params.n_ctx, D,
                          qw, scale, j0, j1, sc->att_part + (size_t)w * sstride, work);
            }
            for (int w = 0; w < n_work;) {
                const attn_tile_geom g = attn_tile_at(sc, seqs, w_tile[w], nkv);
                float *out[ATT_ROWS * 64];
                attn_tile_outputs(sc, g.r0, g.nr, g.kvh, group, nh, D, out);
                attn_merge(g.parts, sc->att_part + (size_t)w * sstride, sstride, g.nr * group, D, out);
                w += g.parts;
            }
        }
    }
#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            float *o = sc->core + (int64_t)t * nh * D + (int64_t)h * D;
            const float *gate = sc->proj + t * qw + (int64_t)nh * D + (int64_t)h * D;
            for (int d = 0; d < D; d++) o[d] *= qn_sigmoid(gate[d]);
        }
    op_matmul(&ly->o_proj, sc->core, T, sc->y);
}

/* ---------------------------------------------------------------- MLPs */

/* a = silu(x W_gate^T) * (x W_up^T); out = a W_down^T, for n rows of x. */
static void swiglu(const qn_tensor *gate, const qn_tensor *up, const qn_tensor *down, const float *x, int n,
                   float *a, float *b, float *out) {
    op_matmul(gate, x, n, a);
    op_matmul(up, x, n, b);
    int64_t I = gate->rows;
    op_silu_mul(a, b, (int64_t)n * I);
    op_matmul(down, a, n, out);
}

/* x[T,H] -> dense SwiGLU MLP -> y[T,H] (layers listed in mlp_only_layers) */
static void dense_block(qnext_session *s, const qn_layer *ly, int T) {
    qn_scratch *sc = &s->sc;
    swiglu(&ly->mlp_gate, &ly->mlp_up, &ly->mlp_down, sc->x, T, sc->mlp_a, sc->mlp_b, sc->y);
}

/* One token: the routed experts and the shared expert as two batches of products (gate
 * and up of all of them, then down of all of them), each one parallel region. */
static void moe_decode_one(qnext_session *s, const qn_layer *ly) {
    const qnext_config *c = &s->m->cfg;
    qn_scratch *sc = &s->sc;
    const int k = c->n_experts_per_tok, H = c->hidden_size, I = c->moe_intermediate, Is = c->shared_intermediate;
    const int ne = k + (Is > 0);
    op_job jobs[64];
    int nj = 0;
    /* mlp_a holds gate outputs, mlp_b up outputs, expert j at offset j*I (shared at k*I) */
    for (int j = 0; j < k; j++) {
        int e = sc->top_idx[j];
        jobs[nj++] = (op_job){&ly->exp_gate[e], sc->x, sc->mlp_a + (size_t)j * I, 1, 0};
        jobs[nj++] = (op_job){&ly->exp_up[e], sc->x, sc->mlp_b + (size_t)j * I, 1, 0};
    }
    if (Is > 0) {
        jobs[nj++] = (op_job){&ly->sh_gate, sc->x, sc->mlp_a + (size_t)k * I, 1, 0};
        jobs[nj++] = (op_job){&ly->sh_up, sc->x, sc->mlp_b + (size_t)k * I, 1, 0};
        jobs[nj++] = (op_job){&ly->sh_expert_gate, sc->x, sc->sg, 1, 0};
    }
    op_matmul_multi(jobs, nj);
    for (int j = 0; j < ne; j++) {
        int w = j < k ? I : Is;
        float *a = sc->mlp_a + (size_t)j * I, *b = sc->mlp_b + (size_t)j * I;
        op_silu_mul(a, b, w);
    }
    nj = 0;
    for (int j = 0; j < ne; j++)
        jobs[nj++] = (op_job){j < k ? &ly->exp_down[sc->top_idx[j]] : &ly->sh_down, sc->mlp_a + (size_t)j * I,
                              sc->eo + (size_t)j * H, 1, 0};
    op_matmul_multi(jobs, nj);
    float g = Is > 0 ? qn_sigmoid(sc->sg[0]) : 0;
    for (int d = 0; d < H; d++) {
        float acc = 0;
        for (int j = 0; j < k; j++) acc += sc->top_w[j] * sc->eo[(size_t)j * H + d];
        sc->y[d] = Is > 0 ? acc + g * sc->eo[(size_t)k * H + d] : acc;
    }
}

/* x[T,H] -> router softmax (fp32) -> top-k (renormalised) -> SwiGLU experts, tokens
 * grouped by expert -> + sigmoid(x . shared_gate) * shared expert -> y[T,H] */
static void moe_block(qnext_session *s, const qn_layer *ly, int T) {
    const qnext_config *c = &s->m->cfg;
    qn_scratch *sc = &s->sc;
    const int E = c->n_experts, k = c->n_experts_per_tok, H = c->hidden_size, I = c->moe_intermediate;

    op_matmul(&ly->router, sc->x, T, sc->router);
    for (int t = 0; t < T; t++) {
        float *p = sc->router + (int64_t)t * E;
        float mx = -FLT_MAX, sum = 0;
        for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int e = 0; e < E; e++) { p[e] = expf(p[e] - mx); sum += p[e]; }
        for (int e = 0; e < E; e++) p[e] /= sum;
        int *idx = sc->top_idx + t * k;
        float *w = sc->top_w + t * k, wsum = 0;
        for (int j = 0; j < k; j++) { /* selection: k is small; ties go to the lower index */
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int q = 0; q < j; q++) taken |= idx[q] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            idx[j] = best;
            w[j] = p[best];
            wsum += p[best];
        }
        if (c->norm_topk_prob)
            for (int j = 0; j < k; j++) w[j] /= wsum;
    }

    if (T == 1 && k <= 30) { moe_decode_one(s, ly); return; }
    memset(sc->y, 0, (size_t)T * H * sizeof(float));
    /* Group the (token, slot) pairs by expert, keeping token order within an expert. */
    int *first = sc->exp_first, *cur = sc->exp_first + E + 1;
    memset(first, 0, (size_t)(E + 1) * sizeof(int));
    for (int i = 0; i < T * k; i++) first[sc->top_idx[i] + 1]++;
    for (int e = 0; e < E; e++) first[e + 1] += first[e];
    memcpy(cur, first, (size_t)(E + 1) * sizeof(int));
    for (int i = 0; i < T * k; i++) sc->tok_list[cur[sc->top_idx[i]]++] = i;
    /* Experts in order, in groups of at most moe_rows gathered rows: gate and up of every
     * expert of a group are one multi-product, their downs another. */
    for (int e0 = 0, e1; e0 < E; e0 = e1) {
        int active = 0;
        for (e1 = e0; e1 < E; e1++) {
            int n = first[e1 + 1] - first[e1];
            if (first[e1 + 1] - first[e0] > sc->moe_rows || (n && 2 * (active + 1) > OP_MULTI_MAX)) break;
            active += n > 0;
        }
        const int base = first[e0], rows = first[e1] - base;
        if (!rows) continue;
#pragma omp parallel for schedule(static) if (rows >= ROWS_PAR)
        for (int i = 0; i < rows; i++)
            memcpy(sc->xg + (int64_t)i * H, sc->x + (int64_t)(sc->tok_list[base + i] / k) * H, H * sizeof(float));
        op_job jobs[OP_MULTI_MAX];
        int nj = 0;
        for (int e = e0; e < e1; e++) {
            int n = first[e + 1] - first[e], o = first[e] - base;
            if (!n) continue;
            jobs[nj++] = (op_job){&ly->exp_gate[e], sc->xg + (int64_t)o * H, sc->mlp_a + (int64_t)o * I, n, 0};
            jobs[nj++] = (op_job){&ly->exp_up[e], sc->xg + (int64_t)o * H, sc->mlp_b + (int64_t)o * I, n, 0};
        }
        op_matmul_multi(jobs, nj);
#pragma omp parallel for schedule(static) if (rows >= ROWS_PAR)
        for (int64_t r = 0; r < rows; r++) op_silu_mul(sc->mlp_a + r * I, sc->mlp_b + r * I, I);
        nj = 0;
        for (int e = e0; e < e1; e++) {
            int n = first[e + 1] - first[e], o = first[e] - base;
            if (n) jobs[nj++] = (op_job){&ly->exp_down[e], sc->mlp_a + (int64_t)o * I, sc->eo + (int64_t)o * H, n, 0};
        }
        op_matmul_multi(jobs, nj);
        /* each token's rows in expert order, as a sequential sum would add them; the
         * threads split the hidden dimension, so no two touch one output */
#pragma omp parallel for schedule(static) if (rows >= ROWS_PAR)
        for (int d0 = 0; d0 < H; d0 += 256)
            for (int i = 0; i < rows; i++) {
                int slot = sc->tok_list[base + i], t = slot / k, d1 = d0 + 256 < H ? d0 + 256 : H;
                float w = sc->top_w[slot];
                float *yt = sc->y + (int64_t)t * H;
                const float *eo = sc->eo + (int64_t)i * H;
                for (int d = d0; d < d1; d++) yt[d] += w * eo[d];
            }
    }
    if (c->shared_intermediate > 0) {
        swiglu(&ly->sh_gate, &ly->sh_up, &ly->sh_down, sc->x, T, sc->mlp_a, sc->mlp_b, sc->eo);
        op_matmul(&ly->sh_expert_gate, sc->x, T, sc->sg);
        for (int t = 0; t < T; t++) {
            float g = qn_sigmoid(sc->sg[t]);
            float *yt = sc->y + (int64_t)t * H;
            const float *eo = sc->eo + (int64_t)t * H;
            for (int d = 0; d < H; d++) yt[d] += g * eo[d];
        }
    }
}

/* ---------------------------------------------------------------- the model */

static void add_rows(float *h, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] += y[i];
}

/* ---------------------------------------------------------------- MTP head */

/* Rows of the multi-token-prediction layer (spec section 4): row i combines the main
 * model's final hidden state hprev[i] at position p with the token at p+1, runs
 * fc([RMSNorm1p(embed(tok)), RMSNorm1p(hprev)]) -> one full-attention decoder layer with a
 * MoE (its own KV cache, state index n_layers) -> RMSNorm1p(mtp.norm), and leaves the
 * normed outputs in sc->x. seqs describe the rows (pos0 = p of the first row). hprev may
 * alias sc->xg (it is consumed first). */
static void mtp_rows(qnext_session *s, qn_seq *seqs, int n_seqs, const float *hprev, const int32_t *toks, int T) {
    const qnext_model *m = s->m;
    const qnext_config *c = &m->cfg;
    const qn_mtp *mt = &m->mtp;
    qn_scratch *sc = &s->sc;
    const int H = c->hidden_size;
    const float eps = (float)c->rms_eps;
    float *cat = sc->proj; /* [T, 2H] */
    for (int t = 0; t < T; t++) {
        op_row_to_f32(&m->embed, toks[t], sc->y + (int64_t)t * H);
        op_rmsnorm1p(sc->y + (int64_t)t * H, mt->pre_fc_norm_embedding, cat + (int64_t)t * 2 * H, H, eps);
        op_rmsnorm1p(hprev + (int64_t)t * H, mt->pre_fc_norm_hidden, cat + (int64_t)t * 2 * H + H, H, eps);
    }
    op_matmul(&mt->fc, cat, T, sc->h);
    for (int q = 0; q < n_seqs; q++)
        for (int i = 0; i < seqs[q].n; i++) {
            sc->row_pos[seqs[q].row0 + i] = seqs[q].pos0 + i;
            sc->row_seq[seqs[q].row0 + i] = q;
        }
    rope_tables(s, T);
    const qn_layer *ly = &mt->layer;
    for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, ly->input_norm, sc->x + (int64_t)t * H, H, eps);
    attn_block(s, ly, seqs, n_seqs, c->n_layers, T);
    add_rows(sc->h, sc->y, (int64_t)T * H);
    for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, ly->post_norm, sc->x + (int64_t)t * H, H, eps);
    if (c->n_experts > 0) moe_block(s, ly, T);
    else dense_block(s, ly, T);
    add_rows(sc->h, sc->y, (int64_t)T * H);
    for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, mt->norm, sc->x + (int64_t)t * H, H, eps);
}

/* After a main pass, feed the MTP layer the pairs (hidden at p, token at p+1) that became
 * known, so its KV cache covers every position: the pending last hidden of the previous
 * call with this call's first token, then this call's rows. hn holds the final-normed
 * hidden states of all rows. */
static void mtp_follow(qnext_session *s, qn_seq *seqs, int n_seqs, const float *hn) {
    const int H = s->m->cfg.hidden_size;
    qn_scratch *sc = &s->sc;
    qn_seq ms[64];
    int32_t *toks = sc->tok_list; /* [T] spare ints */
    int nm = 0, row = 0;
    for (int q = 0; q < n_seqs && nm < 64; q++) {
        qnext_session *ss = seqs[q].s;
        if (!ss->mtp_on) continue;
        int first = ss->has_h_last ? 0 : 1; /* at position 0 there is no earlier hidden state */
        int n = seqs[q].n - first;
        if (n > 0) {
            ms[nm] = (qn_seq){.s = ss, .tokens = NULL, .n = n, .row0 = row, .pos0 = seqs[q].pos0 - 1 + first};
            for (int i = 0; i < n; i++) {
                int j = first + i; /* token index in the sequence */
                const float *hp = j == 0 ? ss->h_last : hn + (int64_t)(seqs[q].row0 + j - 1) * H;
                memcpy(sc->xg + (int64_t)(row + i) * H, hp, H * sizeof(float));
                toks[row + i] = seqs[q].tokens[j];
            }
            row += n;
            nm++;
        }
        memcpy(ss->h_last, hn + (int64_t)(seqs[q].row0 + seqs[q].n - 1) * H, H * sizeof(float));
        ss->has_h_last = 1;
        for (int r = 0; r < ss->ckpt_n; r++)
            memcpy(ss->ckpt + (size_t)r * ss->ckpt_stride + ss->ckpt_stride - H, hn + (int64_t)(seqs[q].row0 + r) * H,
                   H * sizeof(float));
    }
    if (row) mtp_rows(s, ms, nm, sc->xg, toks, row);
}

void forward_mtp_draft(qnext_session *s, int32_t token, float *logits) {
    qn_scratch *sc = &s->sc;
    const int H = s->m->cfg.hidden_size;
    memcpy(sc->xg, s->h_last, H * sizeof(float));
    qn_seq q = {.s = s, .n = 1, .row0 = 0, .pos0 = s->pos - 1};
    mtp_rows(s, &q, 1, sc->xg, &token, 1);
    float *out[1] = {logits};
    op_matmul_to_rows(&s->m->lm_head, sc->x, 1, out);
}

void forward_batch(qnext_session *s, qn_seq *seqs, int n_seqs, int T) {
    const qnext_model *m = s->m;
    const qnext_config *c = &m->cfg;
    qn_scratch *sc = &s->sc;
    const int H = c->hidden_size;
    const float eps = (float)c->rms_eps;

    for (int q = 0; q < n_seqs; q++)
        for (int i = 0; i < seqs[q].n; i++) {
            int t = seqs[q].row0 + i;
            sc->row_pos[t] = seqs[q].pos0 + i;
            sc->row_seq[t] = q;
            op_row_to_f32(&m->embed, seqs[q].tokens[i], sc->h + (int64_t)t * H);
        }
    rope_tables(s, T);

    for (int il = 0; il < c->n_layers; il++) {
        const qn_layer *ly = &m->layers[il];
#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
        for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, ly->input_norm, sc->x + (int64_t)t * H, H, eps);
        if (c->layer_type[il] == QNEXT_LAYER_FULL) attn_block(s, ly, seqs, n_seqs, il, T);
        else gdn_block(s, seqs, n_seqs, il, T);
        add_rows(sc->h, sc->y, (int64_t)T * H);

#pragma omp parallel for schedule(static) if (T >= ROWS_PAR)
        for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, ly->post_norm, sc->x + (int64_t)t * H, H, eps);
        if (c->layer_is_moe[il]) moe_block(s, ly, T);
        else dense_block(s, ly, T);
        add_rows(sc->h, sc->y, (int64_t)T * H);
    }

    /* The MTP layer needs every row's final hidden state; keep them before the rows for the
     * logits overwrite sc->x. */
    int any_mtp = 0;
    for (int q = 0; q < n_seqs; q++) any_mtp |= seqs[q].s->mtp_on;
    if (any_mtp)
        for (int t = 0; t < T; t++) op_rmsnorm1p(sc->h + (int64_t)t * H, m->final_norm, sc->hn + (int64_t)t * H, H, eps);

    /* Final norm and lm_head for the rows whose logits are wanted, in one product so the
     * vocabulary matrix is read once for the whole batch. */
    int n_out = 0;
    for (int q = 0; q < n_seqs; q++) {
        if (!seqs[q].logits) continue;
        int i0 = seqs[q].all_logits ? 0 : seqs[q].n - 1;
        for (int i = i0; i < seqs[q].n; i++) {
            int t = seqs[q].row0 + i;
            op_rmsnorm1p(sc->h + (int64_t)t * H, m->final_norm, sc->x + (int64_t)n_out * H, H, eps);
            sc->row_out[n_out++] = seqs[q].logits + (int64_t)(i - i0) * c->vocab_size;
        }
    }
    if (n_out) op_matmul_to_rows(&m->lm_head, sc->x, n_out, sc->row_out);
    if (any_mtp) mtp_follow(s, seqs, n_seqs, sc->hn);
}
