/* qnext.h - the public C API of qnext, an inference engine for Qwen3-Next models.
 *
 * A model (read-only weights, memory-mapped) is opened once and shared. A session holds
 * one conversation's state: the KV cache of the full-attention layers, the recurrent
 * and convolution states of the Gated DeltaNet layers, and the position. Sessions can
 * be snapshotted and restored, which is how a chat rewinds to an earlier turn without
 * re-processing the whole history.
 *
 * Every call that can fail returns a qnext_status and, when err is not NULL, writes a
 * one-line message into err[0..errlen). The library never exits the process.
 *
 *   qnext_model *m; qnext_session *s; char err[512];
 *   if (qnext_model_open("path/to/model", NULL, &m, err, sizeof err)) { puts(err); ... }
 *   qnext_session_new(m, NULL, &s, err, sizeof err);
 *   float *logits = malloc(qnext_model_config(m)->vocab_size * sizeof(float));
 *   qnext_session_feed(s, ids, n, logits, QNEXT_LOGITS_LAST, err, sizeof err);
 */
#ifndef QNEXT_H
#define QNEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    QNEXT_OK = 0,
    QNEXT_ERR_IO,        /* a file could not be opened, read or mapped */
    QNEXT_ERR_FORMAT,    /* a checkpoint file is malformed, truncated or has a wrong tensor */
    QNEXT_ERR_CONFIG,    /* config.json is missing, invalid or describes an unsupported model */
    QNEXT_ERR_MEMORY,    /* an allocation failed */
    QNEXT_ERR_ARG,       /* a bad argument: token id out of range, NULL pointer, bad option */
    QNEXT_ERR_CONTEXT,   /* the context window is full */
    QNEXT_ERR_SNAPSHOT,  /* a snapshot belongs to another model or its KV prefix was overwritten */
} qnext_status;

const char *qnext_status_str(qnext_status st);

enum { QNEXT_LAYER_LINEAR = 0, QNEXT_LAYER_FULL = 1 };
enum { QNEXT_ROPE_DEFAULT = 0, QNEXT_ROPE_YARN = 1 };
#define QNEXT_MAX_LAYERS 256
#define QNEXT_MAX_EOS 8

/* The model configuration, as read from config.json (both the published spelling and the
 * transformers 5.x one). Shapes of the weights follow from it; see src/model/model.h. */
typedef struct {
    int vocab_size;          /* rows of the embedding and lm_head (151936 for 80B-A3B) */
    int hidden_size;         /* H: width of the residual stream (2048) */
    int n_layers;            /* decoder layers (48) */
    int layer_type[QNEXT_MAX_LAYERS]; /* QNEXT_LAYER_LINEAR (Gated DeltaNet) or QNEXT_LAYER_FULL */
    int layer_is_moe[QNEXT_MAX_LAYERS]; /* 1: sparse MoE; 0: dense MLP of intermediate_size */
    /* gated full attention */
    int n_heads;             /* query heads (16) */
    int n_kv_heads;          /* key/value heads (2) */
    int head_dim;            /* D (256) */
    int rotary_dim;          /* head_dim * partial_rotary_factor (64) */
    double rope_theta;       /* 1e7 */
    int rope_type;           /* QNEXT_ROPE_DEFAULT or QNEXT_ROPE_YARN */
    double rope_factor;      /* yarn: scale factor s */
    int rope_orig_max_pos;   /* yarn: original_max_position_embeddings */
    double rope_beta_fast, rope_beta_slow, rope_attn_factor; /* yarn parameters (mscale) */
    int rope_truncate;       /* yarn: floor/ceil the correction range (transformers default 1) */
    int max_position_embeddings;
    /* Gated DeltaNet */
    int lin_n_k_heads;       /* 16 */
    int lin_n_v_heads;       /* 32 */
    int lin_k_dim;           /* 128 */
    int lin_v_dim;           /* 128 */
    int conv_kernel;         /* 4 */
    /* MLP */
    int n_experts;           /* 512 */
    int n_experts_per_tok;   /* 10 */
    int moe_intermediate;    /* 512 */
    int shared_intermediate; /* 512 */
    int intermediate_size;   /* dense MLP width */
    int norm_topk_prob;      /* renormalise the top-k router weights */
    int tie_word_embeddings; /* lm_head shares the embedding matrix */
    double rms_eps;          /* 1e-6 */
    int n_mtp_layers;        /* multi-token-prediction layers present in the checkpoint (0 or 1) */
    int bos_token_id;        /* -1 when absent */
    int n_eos;               /* eos ids from config.json (generation_config.json may add more) */
    int eos_token_ids[QNEXT_MAX_EOS];
} qnext_config;

typedef struct qnext_model qnext_model;
typedef struct qnext_session qnext_session;
typedef struct qnext_snapshot qnext_snapshot;

typedef struct {
    int n_threads;  /* 0: all cores */
    int quiet;      /* 1: do not print warnings (unknown tensors) to stderr */
    int no_mmap;    /* 1: read the weights into memory on transparent huge pages instead of
                       mapping the files: one full read at open, then faster weight streaming
                       where the page cache's 4 KB pages slow it (src/util/filemap.h) */
    int repack;     /* 1: copy the Q8_0, Q4_K, Q5_K and Q6_K weight matrices at open into groups of 16 interleaved
                       rows for a faster AVX-512 VNNI kernel (batched decoding, experts with few
                       tokens); the file pages copied from are dropped, so the resident size
                       stays about the file's. Ignored on CPUs without AVX-512 VNNI. */
    int act_bits;   /* how the CPU's quantized products take their activations: 0 or 8 (the default) = rounded to
                       8 bits per block (Q8_0 or Q8_K blocks), as llama.cpp does; 16 = in two 8-bit passes, the
                       rounding and then its residual, as close to the model as f32 activations: the weights are
                       read once for both, the integer work doubles. On Q8_0 the 8-bit rounding costs as much
                       as the weights' own (docs/QUANT.md); what 16 costs in speed depends on the CPU (PERF.md,
                       twenty-fourth session: decoding 0-20% slower, prompts 2-2.4x slower) */
} qnext_model_params;

/* Opens a Hugging Face model directory (config.json + model.safetensors or sharded
 * model-*.safetensors with model.safetensors.index.json), or a GGUF file. The files are
 * memory-mapped, not read (unless params->no_mmap); every tensor's name, shape and dtype is
 * checked before this returns. */
qnext_status qnext_model_open(const char *path, const qnext_model_params *params, qnext_model **out,
                              char *err, size_t errlen);
void qnext_model_close(qnext_model *m);
const qnext_config *qnext_model_config(const qnext_model *m);
/* Parameter counts and the bytes of weights one decoded token reads. */
typedef struct {
    int64_t n_params;        /* all weights, MTP included */
    int64_t n_params_mtp;    /* of which in the MTP layer */
    int64_t n_params_active; /* read for one token (top-k experts, shared expert, one embedding row) */
    int64_t bytes_total;     /* bytes of all weights as stored */
    int64_t bytes_per_token; /* bytes of weights read to decode one token (excluding MTP) */
} qnext_model_stats;
void qnext_model_get_stats(const qnext_model *m, qnext_model_stats *st);

enum { QNEXT_GDN_AUTO = 0, QNEXT_GDN_RECURRENT = 1, QNEXT_GDN_CHUNKED = 2 };
/* KV cache element type: f32 (exact), bf16 (half the memory), or 8-bit (int8 with one f32
 * scale per head vector: about a quarter). AUTO: f32 for models with float weights (so a
 * checkpoint's logits stay exact), bf16 for quantized GGUF models (as llama.cpp's f16). */
enum { QNEXT_KV_AUTO = 0, QNEXT_KV_F32 = 1, QNEXT_KV_BF16 = 2, QNEXT_KV_Q8 = 3 };
/* Element type of the Gated DeltaNet recurrent states: f32 (the default, as transformers keeps
 * them) or bf16 (half their memory and memory traffic; each update is computed in f32 and
 * rounded to nearest even when stored, as vLLM keeps them by default for bf16 models). */
enum { QNEXT_STATE_F32 = 0, QNEXT_STATE_BF16 = 1 };

typedef struct {
    int n_ctx;     /* context window in tokens; 0: min(max_position_embeddings, 4096) */
    int n_ubatch;  /* largest number of tokens processed in one forward pass (0: 512) */
    int gdn_mode;  /* QNEXT_GDN_AUTO: chunked for prompts, recurrent for single tokens */
    int kv_type;   /* QNEXT_KV_AUTO (default), QNEXT_KV_F32, QNEXT_KV_BF16 or QNEXT_KV_Q8 */
    int state_type; /* QNEXT_STATE_F32 (default) or QNEXT_STATE_BF16 */
    int mtp;       /* 1: keep the MTP layer's KV cache up to date while feeding, so that
                      qnext_session_mtp_draft can draft (needs a model with an MTP layer) */
} qnext_session_params;

qnext_status qnext_session_new(qnext_model *m, const qnext_session_params *params, qnext_session **out,
                               char *err, size_t errlen);
void qnext_session_free(qnext_session *s);
int qnext_session_pos(const qnext_session *s);   /* tokens processed so far */
/* Memory of a session: the fixed recurrent/conv state, the KV cache per token of context
 * (pages are committed only as the context fills), and the scratch of one micro-batch. */
typedef struct {
    size_t state_bytes, kv_bytes_per_token, kv_bytes_max, scratch_bytes;
    const char *kv_name;  /* "f32", "bf16" or "q8" */
} qnext_session_memory;
void qnext_session_get_memory(const qnext_session *s, qnext_session_memory *mem);
int qnext_session_n_ctx(const qnext_session *s);
/* Forgets everything: position 0, zero states. */
void qnext_session_reset(qnext_session *s);

enum { QNEXT_LOGITS_NONE = 0, QNEXT_LOGITS_LAST = 1, QNEXT_LOGITS_ALL = 2 };
/* Feeds n tokens at the current position. logits receives vocab_size floats for the last
 * token (QNEXT_LOGITS_LAST) or n*vocab_size floats, one row per token (QNEXT_LOGITS_ALL).
 * A prompt longer than n_ubatch is processed in pieces; the result is the same. */
qnext_status qnext_session_feed(qnext_session *s, const int32_t *tokens, int n, float *logits, int logits_mode,
                                char *err, size_t errlen);

/* Continuous batching: runs several sessions' tokens in ONE forward pass, so the
 * projections and the MoE read their weights once for all of them. Each item appends its
 * tokens to its own session (items must name distinct sessions of one model). The
 * scratch of items[0].session is used: the total token count must not exceed its n_ubatch,
 * and no session may have a larger n_ctx than items[0].session. On error nothing is fed. */
typedef struct {
    qnext_session *session;
    const int32_t *tokens;
    int n_tokens;        /* >= 1 */
    float *logits;       /* as in qnext_session_feed */
    int logits_mode;     /* QNEXT_LOGITS_NONE / LAST / ALL */
} qnext_batch_item;
qnext_status qnext_batch_feed(qnext_batch_item *items, int n_items, char *err, size_t errlen);

/* Multi-token prediction (sessions created with mtp = 1): given the token that will be fed
 * next, the MTP head's logits for the token after it, from the main model's last hidden
 * state. The session's position and main state do not change. */
qnext_status qnext_session_mtp_draft(qnext_session *s, int32_t next_token, float *draft_logits, char *err,
                                     size_t errlen);

/* Speculative decoding. qnext_session_verify feeds n tokens (the last sampled token and up
 * to QNEXT_MAX_VERIFY-1 drafts) and writes n rows of logits, keeping the state after each
 * token; qnext_session_accept(s, k) then keeps the first k of them (1 <= k <= n) and drops
 * the rest, without recomputing. Any other call on the session also accepts all n. */
#define QNEXT_MAX_VERIFY 8
qnext_status qnext_session_verify(qnext_session *s, const int32_t *tokens, int n, float *logits, char *err,
                                  size_t errlen);
qnext_status qnext_session_accept(qnext_session *s, int n_keep, char *err, size_t errlen);

/* Snapshots hold the recurrent and conv states and the position. The KV cache is not
 * copied: restoring is valid while the session has not overwritten the KV entries below
 * the snapshot's position since it was taken (rewinding to an earlier turn always is).
 * Free a model's snapshots before closing the model: a freed snapshot's buffer is kept by
 * the model (a few of them) for the next snapshot of the same size, which then need not be
 * faulted in afresh. Snapshots may be taken and freed from several threads at once. */
qnext_status qnext_session_snapshot(qnext_session *s, qnext_snapshot **out, char *err, size_t errlen);
qnext_status qnext_session_restore(qnext_session *s, const qnext_snapshot *snap, char *err, size_t errlen);
int qnext_snapshot_pos(const qnext_snapshot *snap);
size_t qnext_snapshot_bytes(const qnext_snapshot *snap);
void qnext_snapshot_free(qnext_snapshot *snap);

#ifdef __cplusplus
}
#endif
#endif
