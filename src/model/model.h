/* model.h - the map of qnext: tensors, weights of each layer, the model and the session.
 *
 * Shapes use the checkpoint's names: H hidden, V vocab, D attention head_dim, nh/nkv query
 * and key-value heads, nk/nv DeltaNet key/value heads of dk/dv dims, K conv kernel,
 * E experts, I expert width, Is shared-expert width. Weight matrices are [out, in]
 * (PyTorch nn.Linear), so y = x W^T. Large matrices stay in the memory-mapped file in
 * their stored dtype; small vectors are converted to f32 once at load. */
#ifndef QNEXT_MODEL_H
#define QNEXT_MODEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "qnext.h"

#define SNAP_POOL_SLOTS 2 /* qnext_model.snap_pool */

/* Storage types. Numbered as ggml numbers them, so GGUF tensors map one to one. */
typedef enum {
    QN_F32 = 0,
    QN_F16 = 1,
    QN_Q4_0 = 2,
    QN_Q8_0 = 8,
    QN_Q4_K = 12,
    QN_Q5_K = 13,
    QN_Q6_K = 14,
    QN_BF16 = 30,
} qn_dtype;

const char *qn_dtype_name(int dtype);
size_t qn_dtype_row_bytes(int dtype, int64_t n); /* bytes of a row of n elements */

/* A weight matrix [rows, cols] (a vector has rows = 1). row_map, when set, makes logical
 * row r read stored row row_map[r]: the DeltaNet and attention projections are
 * de-interleaved this way once at load, without copying the mapped weights. */
typedef struct {
    const void *data;       /* first stored row */
    int dtype;              /* qn_dtype */
    int64_t rows, cols;
    size_t row_bytes;       /* stride between stored rows */
    const int32_t *row_map; /* [rows] or NULL */
    const char *name;       /* checkpoint name, for messages */
    const uint8_t *rp;      /* Q8_0/Q4_K/Q5_K/Q6_K: a copy in groups of 16 interleaved rows (kernels/cpu/repack.h),
                               made at load when the model is opened with repack; NULL otherwise */
    int act2;               /* 1: quantized activations in two 8-bit passes (kernels/cpu/ops.c), set at load
                               from qnext_model_params.act_bits */
} qn_tensor;

/* The stored bytes of logical row r (through row_map when it is set). */
static inline const uint8_t *qn_tensor_row(const qn_tensor *W, int64_t r) {
    return (const uint8_t *)W->data + (size_t)(W->row_map ? W->row_map[r] : r) * W->row_bytes;
}

/* One decoder layer. Which block is present follows config.layer_type / layer_is_moe. */
typedef struct {
    float *input_norm;          /* [H] stored w, applied as (1+w) */
    float *post_norm;           /* [H] (1+w) */

    /* Gated DeltaNet (layer_type LINEAR) */
    qn_tensor qkvz;             /* [2*nk*dk + 2*nv*dv, H], row-mapped to [q_all | k_all | v_all | z_all] */
    qn_tensor ba;               /* [2*nv, H], row-mapped to [b_all | a_all] */
    float *conv_w;              /* [K][conv_dim = 2*nk*dk + nv*dv] depthwise taps, tap K-1 = current token
                                   (tap-major: transposed at load from the checkpoints' [conv_dim][K],
                                   so that the conv reads each tap's weights in one contiguous run) */
    float *dt_bias;             /* [nv] */
    float *a_neg;               /* [nv] -exp(A_log) */
    float *gdn_norm;            /* [dv] plain weight of the gated RMSNorm */
    qn_tensor out_proj;         /* [H, nv*dv] */
    qn_tensor gate_z;           /* GGUF split layout only: [nv*dv, H] z rows; qkvz then holds [q|k|v] */

    /* Gated attention (layer_type FULL) */
    qn_tensor q_proj;           /* [nh*2D, H], row-mapped to [q heads (nh*D) | gate heads (nh*D)] */
    qn_tensor k_proj, v_proj;   /* [nkv*D, H] */
    qn_tensor o_proj;           /* [H, nh*D] */
    float *q_norm, *k_norm;     /* [D] (1+w) */

    /* Sparse MoE (layer_is_moe) */
    qn_tensor router;           /* [E, H] */
    qn_tensor *exp_gate;        /* [E] of [I, H] */
    qn_tensor *exp_up;          /* [E] of [I, H] */
    qn_tensor *exp_down;        /* [E] of [H, I] */
    qn_tensor sh_gate, sh_up;   /* [Is, H] */
    qn_tensor sh_down;          /* [H, Is] */
    qn_tensor sh_expert_gate;   /* [1, H] */

    /* Dense MLP (not layer_is_moe) */
    qn_tensor mlp_gate, mlp_up; /* [intermediate, H] */
    qn_tensor mlp_down;         /* [H, intermediate] */
} qn_layer;

/* The multi-token-prediction head (spec section 4). Its decoder layer is a full-attention
 * layer with a MoE; it shares embed_tokens and lm_head with the main model. */
typedef struct {
    qn_tensor fc;               /* [H, 2H]: columns 0..H-1 act on the normed embedding */
    float *pre_fc_norm_embedding, *pre_fc_norm_hidden, *norm; /* [H] (1+w) */
    qn_layer layer;
} qn_mtp;

typedef struct qn_store qn_store; /* the memory-mapped checkpoint files (safetensors.c) */

struct qnext_model {
    qnext_config cfg;
    qnext_model_params params;
    qn_store *store;            /* safetensors checkpoints */
    struct gguf_file *gguf;     /* GGUF files */
    qn_tensor embed;            /* [V, H] */
    qn_tensor lm_head;          /* [V, H] (the embedding when tied) */
    float *final_norm;          /* [H] (1+w) */
    qn_layer *layers;           /* [n_layers] */
    qn_mtp mtp;                 /* valid when cfg.n_mtp_layers == 1 */
    int32_t *qkvz_map, *ba_map, *q_map; /* shared row maps (same for every layer) */
    void *rp_region;            /* the repacked copies of Q8_0/Q4_K/Q5_K/Q6_K weights (qn_tensor.rp), or NULL */
    size_t rp_region_bytes;     /* what to munmap */
    /* Freed snapshots' state buffers kept for the next snapshot of the same size (session.c):
     * a snapshot is tens of MB, and a fresh one is faulted in page by page (~25 ms for 75 MB)
     * where a reused one is only copied into. Each slot holds NULL or a buffer whose first
     * size_t is its size; taken and returned by atomic exchange, freed at close. */
    _Atomic(void *) snap_pool[SNAP_POOL_SLOTS];
    void **owned;               /* small f32 arrays allocated at load, freed on close */
    size_t n_owned, cap_owned;
};

/* Cached rows per KV head: the context rounded up to 16, so that every head's bf16 values
 * are whole key pairs and a tiled int8 head whole key tiles (attn.h). */
static inline int64_t qn_kv_rows(int64_t n_ctx) { return (n_ctx + 15) & ~(int64_t)15; }

/* Per-session state of one layer. */
typedef struct {
    float *conv_state;          /* LINEAR: [K-1][conv_dim], the last K-1 conv inputs, oldest first */
    void *ssm_state;            /* LINEAR: [nv][dk][dv] recurrent state S, f32 or bf16 (params.state_type) */
    uint8_t *k_cache;           /* FULL: [nkv][qn_kv_rows(n_ctx)] rows of D keys after norm and RoPE, kv_type elements (tiled: in key tiles, attn.h) */
    uint8_t *v_cache;           /* FULL: [nkv][qn_kv_rows(n_ctx)] rows of D values (bf16: in key pairs; tiled int8: in quads, attn.h) */
    size_t kv_bytes;            /* FULL: bytes of each of k_cache and v_cache (page-aligned mappings) */
} qn_layer_state;

/* Scratch for one forward pass of up to n_ubatch tokens, allocated once per session. */
typedef struct {
    float *h;        /* [T, H] residual stream */
    float *x;        /* [T, H] normed input of a block */
    float *y;        /* [T, H] block output */
    float *proj;     /* [T, max projection width] qkvz, or q|gate of attention */
    float *proj2;    /* [T, max(2*nv, 2*nkv*D)] ba, or k|v */
    float *conv;     /* [T, conv_dim] conv output */
    float *core;     /* [T, max(nv*dv, nh*D)] DeltaNet/attention output before out_proj */
    float *gates;    /* [T, 2*nv]: g (log decay) then beta */
    float *att;      /* [n_threads][n_ctx] attention scores (reference path) */
    float *att_tile; /* [n_threads][att_tile_stride] tiled attention: partial outputs, kernel work space */
    size_t att_tile_stride;
    float *att_part; /* key-range partials of split attention tiles (decode), attn_parts_floats */
    float *gdn_tmp;  /* per value head chunk scratch, [nv][gdn_tmp_stride] */
    size_t gdn_tmp_stride;
    float *mlp_a, *mlp_b;   /* [max(T * max(I, Is, intermediate), moe_rows * I, one token's experts)] */
    float *router;   /* [T, E] */
    int *top_idx;    /* [T, topk] */
    float *top_w;    /* [T, topk] */
    int *tok_list;   /* [T*topk] (token, slot) pairs sorted by expert: token * topk + slot */
    int *exp_first;  /* [2*(E+1)] where each expert's pairs start in tok_list, and a cursor */
    int moe_rows;    /* rows of a group of experts run together: max(T, min(T*topk, 256)) */
    float *xg;       /* [moe_rows, H] gathered rows of a group of experts */
    float *eo;       /* [max(moe_rows, topk+1), H] expert outputs */
    float *sg;       /* [T] shared-expert gate */
    float *rope_cos, *rope_sin; /* [T, rotary_dim/2] */
    float *hn;       /* [T, H] final-normed hidden states (for the MTP layer), when MTP is on */
    int *row_pos;    /* [T] position of each row in its session */
    int *row_seq;    /* [T] which sequence of the batch each row belongs to */
    float **row_out; /* [T] logits destination of each row, for the lm_head product */
} qn_scratch;

/* One sequence of a forward pass: rows [row0, row0+n) of the batch are the tokens
 * appended to session s at positions pos0, pos0+1, ... */
typedef struct {
    qnext_session *s;
    const int32_t *tokens;
    int n, row0, pos0;
    float *logits;   /* NULL, or where this sequence's logits go */
    int all_logits;  /* one row per token, else only the last token's */
} qn_seq;

struct qnext_session {
    qnext_model *m;
    qnext_session_params params;
    int pos;                    /* tokens processed */
    qn_layer_state *ls;         /* [n_layers (+1: the MTP layer's KV cache when mtp_on)] */
    qn_scratch sc;
    size_t kv_row_bytes;        /* bytes of one cached head vector (D elements of params.kv_type) */
    int kv_tiled;               /* the cache is tiled: int8 for attn_vnni, bf16 keys for attn_bf16 (attn_kv_tiled) */
    void *ssm_region;           /* every LINEAR layer's ssm_state: a mapping on huge pages, or a calloc'd block */
    size_t ssm_region_bytes;    /* the mapping's size, 0 for the calloc'd block */
    size_t scratch_bytes;
    uint64_t clock;             /* increments on every feed, for snapshot validity */
    uint64_t *kv_written;       /* [n_ctx] clock at which each KV position was last written */
    int mtp_on;                 /* params.mtp and the model has an MTP layer */
    /* Speculative verification: while ckpt_n > 0, a feed keeps the recurrent and conv states
     * (and the MTP input) after each of its first ckpt_n tokens, so that rejected drafts can
     * be dropped without recomputing. ckpt holds up to QNEXT_MAX_VERIFY states of
     * ckpt_stride floats: per LINEAR layer at ckpt_off[layer] its conv then ssm state, then
     * H floats of h_last. */
    int ckpt_n, ckpt_fed;
    float *ckpt;
    size_t ckpt_stride;
    size_t *ckpt_off;           /* [n_layers] */
    float *h_last;              /* [H] final-normed hidden state of the last position (MTP input) */
    int has_h_last;
    float *rope_inv_freq;       /* [rotary_dim/2] */
    float rope_mscale;          /* YaRN attention factor (1 without YaRN) */
};

/* Values of one LINEAR layer's recurrent state: nv x dk x dv. */
static inline size_t session_ssm_values(const qnext_config *c) {
    return (size_t)c->lin_n_v_heads * c->lin_k_dim * c->lin_v_dim;
}

/* Bytes of one LINEAR layer's recurrent state in a session: its values in state_type. */
static inline size_t session_ssm_bytes(const qnext_session *s) {
    return session_ssm_values(&s->m->cfg) * (s->params.state_type == QNEXT_STATE_BF16 ? 2 : sizeof(float));
}

struct qnext_snapshot {
    const qnext_model *m;
    const qnext_session *owner; /* the KV cache it refers to lives in this session */
    int pos;
    uint64_t clock;
    size_t bytes;
    uint8_t *data;              /* conv (f32) and ssm (state_type) states of every LINEAR layer, concatenated,
                                   then h_last (f32) */
    int has_h_last;
};

/* loader.c: shared by the safetensors and GGUF loaders */
void *model_own(qnext_model *m, size_t bytes);   /* zeroed, freed with the model */
void model_snap_pool_free(qnext_model *m);       /* session.c: the pooled snapshot buffers, at close */
/* The conv taps w, read as [conv_dim][K], rewritten in place as [K][conv_dim] (qn_layer.conv_w).
 * Returns 0 when out of memory. */
int model_conv_taps_major(float *w, int64_t conv_dim, int K);
int model_build_row_maps(qnext_model *m);
/* loader_gguf.c */
int model_path_is_gguf(const char *path);
qnext_status gguf_model_load(qnext_model *m, const char *path, char *err, size_t errlen);
void gguf_model_close(qnext_model *m);

/* config.c */
qnext_status config_parse(const char *path, qnext_config *cfg, char *err, size_t errlen);
qnext_status config_from_json(const void *json_root, const char *path, qnext_config *cfg, char *err, size_t errlen);

/* forward.c: runs the rows of n_seqs sequences (T rows in all, T <= n_ubatch of the
 * session that owns sc) through the model in one pass. Positions are not advanced here. */
void forward_batch(qnext_session *owner, qn_seq *seqs, int n_seqs, int T);
/* Draft logits of the MTP head for (hidden state at pos-1, token at pos). */
void forward_mtp_draft(qnext_session *s, int32_t token, float *logits);

#endif
