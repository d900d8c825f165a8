/* quantize.c - HF Qwen3-Next checkpoint -> llama.cpp `qwen3next` GGUF (see quantize.h).
 *
 * The conversion is planned first (every output tensor: GGUF name, ggml shape, where its
 * rows come from, which transformation applies, which type it gets), then streamed: the
 * tensors are visited in the order llama-quantize visits them (its weights_map order:
 * non-block tensors by name, then block by block, by name within a block), which is also
 * the order in which llama-quantize counts its attn_v-like tensors for use_more_bits. Each
 * tensor is produced in blocks of rows: a row is read from the mapped safetensors in its
 * stored dtype, converted to f32, transformed, quantized by quant_quantize_row (byte-identical
 * to ggml's quantize_row_*_ref) and appended to the file.
 *
 * The per-tensor type choice follows llama.cpp src/llama-quant.cpp (tensor_allows_quantization,
 * llama_tensor_get_type_impl, tensor_type_fallback) for the mixes offered here; the converter's
 * own choices (F32 for 1-D tensors, norms, routers, conv, non-".weight" tensors) follow
 * convert_hf_to_gguf.py (conversion/base.py prepare_tensors, conversion/qwen.py
 * Qwen3NextModel). Sources were read, nothing copied; docs/QUANT.md lists the rules. */
#include "model/quantize.h"

#include <ctype.h>
#include <strings.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/quant.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "util/json.h"

/* ------------------------------------------------------------------ mixes */

static const struct {
    const char *name;
    int base_type;  /* llama_ftype_get_default_type */
    int file_type;  /* llama_ftype */
} MIX[QMIX_COUNT] = {
    [QMIX_F32] = {"F32", QUANT_F32, 0},
    [QMIX_F16] = {"F16", QUANT_F16, 1},
    [QMIX_BF16] = {"BF16", QUANT_BF16, 32},
    [QMIX_Q8_0] = {"Q8_0", QUANT_Q8_0, 7},
    [QMIX_Q6_K] = {"Q6_K", QUANT_Q6_K, 18},
    [QMIX_Q5_K_M] = {"Q5_K_M", QUANT_Q5_K, 17},
    [QMIX_Q4_K_M] = {"Q4_K_M", QUANT_Q4_K, 15},
    [QMIX_MXFP4_MOE] = {"MXFP4_MOE", QUANT_MXFP4, 38},
    [QMIX_IQ4_NL] = {"IQ4_NL", QUANT_IQ4_NL, 25},
    [QMIX_IQ4_XS] = {"IQ4_XS", QUANT_IQ4_XS, 30},
};

int quantize_mix_from_name(const char *name) {
    for (int i = 0; i < QMIX_COUNT; i++)
        if (!strcasecmp(name, MIX[i].name)) return i;
    return -1;
}
const char *quantize_mix_name(int mix) { return mix >= 0 && mix < QMIX_COUNT ? MIX[mix].name : "?"; }
int quantize_mix_file_type(int mix) { return mix >= 0 && mix < QMIX_COUNT ? MIX[mix].file_type : -1; }

static int mix_is_quantized(int mix) { return mix >= QMIX_Q8_0; }

/* ------------------------------------------------------------------ the plan */

enum { XF_NONE = 0, XF_PLUS1, XF_NEG_EXP };

typedef struct {
    char name[128];
    int layer;              /* blk index, -1 for token_embd/output/output_norm */
    int n_dims;
    int64_t ne[4];
    int64_t rows, cols;     /* rows = ne[1]*ne[2]*ne[3], cols = ne[0] */
    qn_st_tensor **src;     /* n_src sources, each giving rows_per_src consecutive rows */
    int n_src;
    int64_t rows_per_src;
    const int32_t *row_map; /* output row (within a source) -> source row, or NULL */
    int xform;
    int hf_1d;              /* the converter saw a tensor of <= 1 dims */
    int type;               /* chosen output type */
} otensor;

typedef struct {
    qnext_config cfg;
    qn_store *st;
    otensor *t;
    size_t n, cap;
    int32_t *qkv_map, *z_map;
    int n_blocks;           /* decoder layers + MTP layers */
    int interval;
    const char *dir;
    char *err;
    size_t errlen;
} plan;

static void plan_free(plan *P) {
    for (size_t i = 0; i < P->n; i++) free(P->t[i].src);
    free(P->t);
    free(P->qkv_map);
    free(P->z_map);
    store_close(P->st);
}

static qn_st_tensor *src_get(plan *P, const char *name, int nd, const int64_t *shape) {
    qn_st_tensor *t = store_find(P->st, name);
    if (!t) { snprintf(P->err, P->errlen, "%s: tensor '%s' is missing", P->dir, name); return NULL; }
    int ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        snprintf(P->err, P->errlen, "%s: tensor '%s' has an unexpected shape (%d dims, first %lld)", P->dir, name,
                 t->n_dims, (long long)(t->n_dims ? t->shape[0] : 0));
        return NULL;
    }
    if (t->dtype != QN_F32 && t->dtype != QN_F16 && t->dtype != QN_BF16) {
        snprintf(P->err, P->errlen, "%s: tensor '%s' has dtype %s; the converter reads F32, F16 and BF16", P->dir,
                 name, t->dtype_str);
        return NULL;
    }
    t->used = 1;
    return t;
}

static otensor *plan_add(plan *P, const char *name, int layer, int n_dims, const int64_t *ne, int n_src) {
    if (P->n == P->cap) {
        size_t cap = P->cap ? 2 * P->cap : 256;
        otensor *t = realloc(P->t, cap * sizeof *t);
        if (!t) { snprintf(P->err, P->errlen, "out of memory"); return NULL; }
        P->t = t;
        P->cap = cap;
    }
    otensor *o = &P->t[P->n];
    memset(o, 0, sizeof *o);
    o->src = calloc(n_src, sizeof *o->src);
    if (!o->src) { snprintf(P->err, P->errlen, "out of memory"); return NULL; }
    P->n++;
    snprintf(o->name, sizeof o->name, "%s", name);
    o->layer = layer;
    o->n_dims = n_dims;
    o->ne[0] = o->ne[1] = o->ne[2] = o->ne[3] = 1;
    for (int i = 0; i < n_dims; i++) o->ne[i] = ne[i];
    o->cols = o->ne[0];
    o->rows = o->ne[1] * o->ne[2] * o->ne[3];
    o->n_src = n_src;
    o->rows_per_src = o->rows / n_src;
    return o;
}

/* A matrix [rows, cols] (PyTorch) stored as ne [cols, rows]. */
static int add_mat(plan *P, const char *gname, int layer, const char *hf, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols}, ne[2] = {cols, rows};
    qn_st_tensor *s = src_get(P, hf, 2, shape);
    if (!s) return 0;
    otensor *o = plan_add(P, gname, layer, 2, ne, 1);
    if (!o) return 0;
    o->src[0] = s;
    return 1;
}

static int add_vec(plan *P, const char *gname, int layer, const char *hf, int64_t n, int xform) {
    qn_st_tensor *s = src_get(P, hf, 1, &n);
    if (!s) return 0;
    otensor *o = plan_add(P, gname, layer, 1, &n, 1);
    if (!o) return 0;
    o->src[0] = s;
    o->xform = xform;
    o->hf_1d = 1;
    return 1;
}

/* Stacked experts: E matrices [rows, cols] -> ne [cols, rows, E]. */
static int add_experts(plan *P, const char *gname, int layer, const char *hf_pfx, const char *proj, int64_t rows,
                       int64_t cols) {
    int64_t E = P->cfg.n_experts, ne[3] = {cols, rows, E}, shape[2] = {rows, cols};
    otensor *o = plan_add(P, gname, layer, 3, ne, (int)E);
    if (!o) return 0;
    char nm[256];
    for (int64_t e = 0; e < E; e++) {
        snprintf(nm, sizeof nm, "%s.mlp.experts.%lld.%s.weight", hf_pfx, (long long)e, proj);
        if (!(o->src[e] = src_get(P, nm, 2, shape))) return 0;
    }
    return 1;
}

#define GN(...) (snprintf(gn, sizeof gn, __VA_ARGS__), gn)
#define HN(...) (snprintf(hn, sizeof hn, __VA_ARGS__), hn)

static int plan_attention(plan *P, int b, const char *pfx) {
    const qnext_config *c = &P->cfg;
    char gn[128], hn[256];
    int64_t H = c->hidden_size, D = c->head_dim;
    return add_mat(P, GN("blk.%d.attn_q.weight", b), b, HN("%s.self_attn.q_proj.weight", pfx), c->n_heads * 2 * D, H) &&
           add_mat(P, GN("blk.%d.attn_k.weight", b), b, HN("%s.self_attn.k_proj.weight", pfx), c->n_kv_heads * D, H) &&
           add_mat(P, GN("blk.%d.attn_v.weight", b), b, HN("%s.self_attn.v_proj.weight", pfx), c->n_kv_heads * D, H) &&
           add_mat(P, GN("blk.%d.attn_output.weight", b), b, HN("%s.self_attn.o_proj.weight", pfx), H, c->n_heads * D) &&
           add_vec(P, GN("blk.%d.attn_q_norm.weight", b), b, HN("%s.self_attn.q_norm.weight", pfx), D, XF_PLUS1) &&
           add_vec(P, GN("blk.%d.attn_k_norm.weight", b), b, HN("%s.self_attn.k_norm.weight", pfx), D, XF_PLUS1);
}

static int plan_gdn(plan *P, int b, const char *pfx) {
    const qnext_config *c = &P->cfg;
    char gn[128], hn[256];
    int64_t H = c->hidden_size, nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int64_t K = c->conv_kernel, conv_dim = 2 * nk * dk + nv * dv;
    int64_t qshape[2] = {2 * nk * dk + 2 * nv * dv, H};
    qn_st_tensor *qkvz = src_get(P, HN("%s.linear_attn.in_proj_qkvz.weight", pfx), 2, qshape);
    if (!qkvz) return 0;
    int64_t ne_qkv[2] = {H, conv_dim}, ne_z[2] = {H, nv * dv};
    otensor *o = plan_add(P, GN("blk.%d.attn_qkv.weight", b), b, 2, ne_qkv, 1);
    if (!o) return 0;
    o->src[0] = qkvz;
    o->row_map = P->qkv_map;
    if (!(o = plan_add(P, GN("blk.%d.attn_gate.weight", b), b, 2, ne_z, 1))) return 0;
    o->src[0] = qkvz;
    o->row_map = P->z_map;
    if (!add_mat(P, GN("blk.%d.ssm_ba.weight", b), b, HN("%s.linear_attn.in_proj_ba.weight", pfx), 2 * nv, H)) return 0;
    /* conv1d [C, 1, K] squeezed to [C, K]: the same bytes, ne [K, C] */
    int64_t cshape[3] = {conv_dim, 1, K}, cne[2] = {K, conv_dim};
    qn_st_tensor *cw = src_get(P, HN("%s.linear_attn.conv1d.weight", pfx), 3, cshape);
    if (!cw || !(o = plan_add(P, GN("blk.%d.ssm_conv1d.weight", b), b, 2, cne, 1))) return 0;
    o->src[0] = cw;
    return add_vec(P, GN("blk.%d.ssm_dt.bias", b), b, HN("%s.linear_attn.dt_bias", pfx), nv, XF_NONE) &&
           add_vec(P, GN("blk.%d.ssm_a", b), b, HN("%s.linear_attn.A_log", pfx), nv, XF_NEG_EXP) &&
           add_vec(P, GN("blk.%d.ssm_norm.weight", b), b, HN("%s.linear_attn.norm.weight", pfx), dv, XF_NONE) &&
           add_mat(P, GN("blk.%d.ssm_out.weight", b), b, HN("%s.linear_attn.out_proj.weight", pfx), H, nv * dv);
}

static int plan_moe(plan *P, int b, const char *pfx) {
    const qnext_config *c = &P->cfg;
    char gn[128], hn[256];
    int64_t H = c->hidden_size, E = c->n_experts, I = c->moe_intermediate, Is = c->shared_intermediate;
    if (!add_mat(P, GN("blk.%d.ffn_gate_inp.weight", b), b, HN("%s.mlp.gate.weight", pfx), E, H) ||
        !add_experts(P, GN("blk.%d.ffn_gate_exps.weight", b), b, pfx, "gate_proj", I, H) ||
        !add_experts(P, GN("blk.%d.ffn_up_exps.weight", b), b, pfx, "up_proj", I, H) ||
        !add_experts(P, GN("blk.%d.ffn_down_exps.weight", b), b, pfx, "down_proj", H, I))
        return 0;
    if (Is <= 0) return 1;
    /* shared_expert_gate [1, H]: 2-D for the converter, ne [H, 1] */
    return add_mat(P, GN("blk.%d.ffn_gate_inp_shexp.weight", b), b, HN("%s.mlp.shared_expert_gate.weight", pfx), 1, H) &&
           add_mat(P, GN("blk.%d.ffn_gate_shexp.weight", b), b, HN("%s.mlp.shared_expert.gate_proj.weight", pfx), Is, H) &&
           add_mat(P, GN("blk.%d.ffn_up_shexp.weight", b), b, HN("%s.mlp.shared_expert.up_proj.weight", pfx), Is, H) &&
           add_mat(P, GN("blk.%d.ffn_down_shexp.weight", b), b, HN("%s.mlp.shared_expert.down_proj.weight", pfx), H, Is);
}

static int plan_layer_norms(plan *P, int b, const char *pfx) {
    char gn[128], hn[256];
    int64_t H = P->cfg.hidden_size;
    return add_vec(P, GN("blk.%d.attn_norm.weight", b), b, HN("%s.input_layernorm.weight", pfx), H, XF_PLUS1) &&
           add_vec(P, GN("blk.%d.post_attention_norm.weight", b), b, HN("%s.post_attention_layernorm.weight", pfx), H,
                   XF_PLUS1);
}

/* Row maps of the converter's qkvz split: attn_qkv = [q of all key heads | k | v], attn_gate
 * = z, from HF's grouped layout [q_g | k_g | v_g (r heads) | z_g (r heads)] per key head g. */
static int build_maps(plan *P) {
    const qnext_config *c = &P->cfg;
    int nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim, r = nv / nk;
    int G = 2 * dk + 2 * r * dv;
    P->qkv_map = malloc((size_t)(2 * nk * dk + nv * dv) * sizeof(int32_t));
    P->z_map = malloc((size_t)(nv * dv) * sizeof(int32_t));
    if (!P->qkv_map || !P->z_map) return 0;
    int32_t *q = P->qkv_map, *k = q + nk * dk, *v = k + nk * dk;
    for (int g = 0; g < nk; g++) {
        for (int j = 0; j < dk; j++) {
            q[g * dk + j] = g * G + j;
            k[g * dk + j] = g * G + dk + j;
        }
        for (int jj = 0; jj < r * dv; jj++) {
            v[g * r * dv + jj] = g * G + 2 * dk + jj;
            P->z_map[g * r * dv + jj] = g * G + 2 * dk + r * dv + jj;
        }
    }
    return 1;
}

/* llama.cpp's weight_name_comparer: block index (-1 for non-block), then name. */
static int cmp_otensor(const void *a_, const void *b_) {
    const otensor *a = a_, *b = b_;
    if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !memcmp(s + n - m, suf, m);
}

/* ggml_n_dims: dims up to the last one that is not 1 (at least 1). */
static int ggml_ndims(const otensor *t) {
    for (int i = 3; i >= 1; i--)
        if (t->ne[i] > 1) return i + 1;
    return 1;
}

/* The converter's type (before llama-quantize): F32 for 1-D tensors, "_norm.weight",
 * names not ending in ".weight", and its always-F32 list (routers, shared-expert gate, conv). */
static int converter_forces_f32(const otensor *t) {
    return t->hf_1d || ends_with(t->name, "_norm.weight") || !ends_with(t->name, ".weight") ||
           strstr(t->name, "ffn_gate_inp.weight") || strstr(t->name, "ffn_gate_inp_shexp.weight") ||
           strstr(t->name, "ssm_conv1d");
}

/* llama-quant.cpp tensor_allows_quantization, for the names this converter produces. */
static int allows_quantization(const otensor *t) {
    if (ggml_ndims(t) < 2) return 0;
    if (!ends_with(t->name, "weight")) return 0;
    if (strstr(t->name, "_norm.weight")) return 0;
    if (strstr(t->name, "ffn_gate_inp.weight")) return 0;
    if (strstr(t->name, "ssm_conv1d")) return 0;
    return 1;
}

enum { CAT_TOKEN_EMBD, CAT_ATTN_Q, CAT_ATTN_V, CAT_ATTN_K, CAT_ATTN_QKV, CAT_ATTN_OUTPUT, CAT_FFN_UP, CAT_FFN_GATE,
       CAT_FFN_DOWN, CAT_OUTPUT, CAT_OTHER };

static int category(const char *n) {
    if (!strcmp(n, "output.weight")) return CAT_OUTPUT;
    if (!strcmp(n, "token_embd.weight")) return CAT_TOKEN_EMBD;
    if (strstr(n, "attn_qkv.weight")) return CAT_ATTN_QKV;
    if (strstr(n, "attn_v.weight")) return CAT_ATTN_V;
    if (strstr(n, "attn_k.weight")) return CAT_ATTN_K;
    if (strstr(n, "attn_q.weight")) return CAT_ATTN_Q;
    if (strstr(n, "attn_output.weight")) return CAT_ATTN_OUTPUT;
    if (strstr(n, "ffn_up")) return CAT_FFN_UP;
    if (strstr(n, "ffn_gate")) return CAT_FFN_GATE;
    if (strstr(n, "ffn_down")) return CAT_FFN_DOWN;
    return CAT_OTHER;
}

static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* Chooses every tensor's type, visiting them in llama-quantize's order. */
static int choose_types(plan *P, int mix) {
    int base = MIX[mix].base_type, n_attn_wv = 0, i_attn_wv = 0, has_output = 0;
    int n_expert = P->cfg.n_experts, iq4 = mix == QMIX_IQ4_NL || mix == QMIX_IQ4_XS;
    /* llama_hparams::n_gqa() of layer 0: the file's head_count_kv is one number for all layers */
    int n_gqa = P->cfg.n_kv_heads > 0 ? P->cfg.n_heads / P->cfg.n_kv_heads : 0;
    for (size_t i = 0; i < P->n; i++) {
        int cat = category(P->t[i].name);
        if (cat == CAT_ATTN_V || cat == CAT_ATTN_QKV) n_attn_wv++;
        if (cat == CAT_OUTPUT) has_output = 1;
    }
    for (size_t i = 0; i < P->n; i++) {
        otensor *t = &P->t[i];
        if (converter_forces_f32(t)) { t->type = QUANT_F32; continue; }
        if (!mix_is_quantized(mix)) { t->type = base; continue; }
        /* llama-quantize, from the converter's 16-bit file */
        if (!allows_quantization(t)) { /* keeps the converter's "auto" 16-bit type */
            t->type = t->src[0]->dtype == QN_BF16 ? QUANT_BF16 : QUANT_F16;
            continue;
        }
        int cat = category(t->name), type = base;
        if (mix == QMIX_MXFP4_MOE) {
            /* llama-quant.cpp: the output (or tied embedding) Q8_0; then "MoE tensors -> MXFP4,
             * other tensors -> Q8_0", MoE tensors being the stacked experts (ne[2] > 1) */
            int out = cat == CAT_OUTPUT || (!has_output && cat == CAT_TOKEN_EMBD);
            type = !out && t->ne[2] > 1 ? QUANT_MXFP4 : QUANT_Q8_0;
        } else if (cat == CAT_OUTPUT || (!has_output && cat == CAT_TOKEN_EMBD)) {
            if (t->ne[0] % quant_type_get(type)->block_size != 0) type = QUANT_Q8_0;
            else if (type != QUANT_Q8_0) type = QUANT_Q6_K;
        } else if (cat == CAT_TOKEN_EMBD) {
            /* the base type for the mixes offered here */
        } else if (cat == CAT_ATTN_V || cat == CAT_ATTN_QKV) {
            if (iq4 && n_gqa >= 4) type = QUANT_Q5_K;
            else if ((mix == QMIX_Q4_K_M || mix == QMIX_Q5_K_M) && use_more_bits(i_attn_wv, n_attn_wv)) type = QUANT_Q6_K;
            if (n_expert == 8) type = QUANT_Q8_0; /* "for the 8-expert model, bumping this to Q8_0" */
            i_attn_wv++;
        } else if (cat == CAT_ATTN_K) {
            if (n_expert == 8) type = QUANT_Q8_0;
        } else if (cat == CAT_FFN_DOWN) {
            /* with experts the layer comes from the name; n = all blocks */
            int il = t->layer, nl = P->n_blocks;
            if ((mix == QMIX_Q4_K_M || mix == QMIX_Q5_K_M) && use_more_bits(il, nl)) type = QUANT_Q6_K;
            else if (iq4 && il < nl / 8) type = QUANT_Q5_K; /* without an importance matrix */
        } else if (cat == CAT_ATTN_OUTPUT) {
            if (n_expert == 8 && (mix == QMIX_Q4_K_M || iq4)) type = QUANT_Q5_K;
        }
        /* tensor_type_fallback */
        if (t->ne[0] % quant_type_get(type)->block_size != 0) {
            switch (type) {
            case QUANT_Q4_K: type = QUANT_Q5_0; break;
            case QUANT_Q5_K: type = QUANT_Q5_1; break;
            case QUANT_Q6_K: type = QUANT_Q8_0; break;
            case QUANT_IQ4_XS: type = QUANT_IQ4_NL; break;
            default:
                /* llama-quantize has no fallback for Q8_0 or IQ4_NL and stops; convert_hf_to_gguf.py
                 * --outtype q8_0 falls back to F16 (QuantError), which is what happens here */
                type = QUANT_F16;
                break;
            }
            if (t->ne[0] % quant_type_get(type)->block_size != 0) type = QUANT_F16;
        }
        t->type = type;
    }
    return 1;
}

static int make_plan(plan *P, const quantize_params *p) {
    qnext_config *c = &P->cfg;
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/config.json", p->input_dir);
    if (config_parse(cpath, c, P->err, P->errlen) != QNEXT_OK) return 0;
    if (store_open_dir(p->input_dir, 0, &P->st, P->err, P->errlen) != QNEXT_OK) return 0;
    /* what a qwen3next GGUF can express: MoE in every layer, full attention every k-th layer */
    int first_full = -1;
    for (int i = 0; i < c->n_layers; i++) {
        if (!c->layer_is_moe[i]) {
            snprintf(P->err, P->errlen, "%s: layer %d has a dense MLP; qwen3next GGUF files have a MoE in every layer",
                     p->input_dir, i);
            return 0;
        }
        if (c->layer_type[i] == QNEXT_LAYER_FULL && first_full < 0) first_full = i;
    }
    P->interval = first_full < 0 ? c->n_layers + 1 : first_full + 1;
    for (int i = 0; i < c->n_layers; i++)
        if ((c->layer_type[i] == QNEXT_LAYER_FULL) != ((i + 1) % P->interval == 0)) {
            snprintf(P->err, P->errlen, "%s: the layer types are not 'full attention every k-th layer', which is all a "
                     "qwen3next GGUF can describe", p->input_dir);
            return 0;
        }
    if (c->n_experts < 1) { snprintf(P->err, P->errlen, "%s: no experts", p->input_dir); return 0; }
    if (!build_maps(P)) { snprintf(P->err, P->errlen, "out of memory"); return 0; }
    int has_mtp = store_find(P->st, "mtp.fc.weight") != NULL && !p->no_mtp;
    P->n_blocks = c->n_layers + has_mtp;
    int64_t V = c->vocab_size, H = c->hidden_size;
    if (!add_mat(P, "token_embd.weight", -1, "model.embed_tokens.weight", V, H)) return 0;
    if (!add_vec(P, "output_norm.weight", -1, "model.norm.weight", H, XF_PLUS1)) return 0;
    if (!c->tie_word_embeddings || store_find(P->st, "lm_head.weight")) {
        if (c->tie_word_embeddings) store_find(P->st, "lm_head.weight")->used = 1; /* a tied copy: not written */
        else if (!add_mat(P, "output.weight", -1, "lm_head.weight", V, H)) return 0;
    }
    char pfx[64];
    for (int i = 0; i < c->n_layers; i++) {
        snprintf(pfx, sizeof pfx, "model.layers.%d", i);
        if (!plan_layer_norms(P, i, pfx)) return 0;
        if (!(c->layer_type[i] == QNEXT_LAYER_FULL ? plan_attention(P, i, pfx) : plan_gdn(P, i, pfx))) return 0;
        if (!plan_moe(P, i, pfx)) return 0;
    }
    if (has_mtp) {
        /* convert_hf_to_gguf.py's _QwenMtpMixin: mtp.layers.0.* -> block n_layers, fc -> nextn.eh_proj,
         * pre_fc_norm_embedding -> nextn.enorm, pre_fc_norm_hidden -> nextn.hnorm,
         * norm -> nextn.shared_head_norm; their names end in "norm.weight", so + 1 */
        int b = c->n_layers;
        char gn[128];
        if (!plan_layer_norms(P, b, "mtp.layers.0") || !plan_attention(P, b, "mtp.layers.0") ||
            !plan_moe(P, b, "mtp.layers.0") ||
            !add_mat(P, GN("blk.%d.nextn.eh_proj.weight", b), b, "mtp.fc.weight", H, 2 * H) ||
            !add_vec(P, GN("blk.%d.nextn.enorm.weight", b), b, "mtp.pre_fc_norm_embedding.weight", H, XF_PLUS1) ||
            !add_vec(P, GN("blk.%d.nextn.hnorm.weight", b), b, "mtp.pre_fc_norm_hidden.weight", H, XF_PLUS1) ||
            !add_vec(P, GN("blk.%d.nextn.shared_head_norm.weight", b), b, "mtp.norm.weight", H, XF_PLUS1))
            return 0;
    } else {
        for (size_t i = 0; i < store_count(P->st); i++)
            if (!strncmp(store_at(P->st, i)->name, "mtp.", 4)) store_at(P->st, i)->used = 1;
    }
    qsort(P->t, P->n, sizeof *P->t, cmp_otensor);
    return choose_types(P, p->mix);
}

/* ------------------------------------------------------------------ metadata */

static int add_hparams(gguf_writer *w, const plan *P, const quantize_params *p) {
    const qnext_config *c = &P->cfg;
    const char *name = strrchr(p->input_dir, '/');
    name = name && name[1] ? name + 1 : p->input_dir;
    int ok = 1;
    ok &= !gguf_writer_add_str(w, "general.architecture", "qwen3next");
    ok &= !gguf_writer_add_str(w, "general.type", "model");
    ok &= !gguf_writer_add_str(w, "general.name", name);
    /* sampling defaults from generation_config.json, as the converter's gguf.Metadata takes them */
    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s/generation_config.json", p->input_dir);
    FILE *gf = fopen(gpath, "rb");
    json *gc = NULL;
    if (gf) { fclose(gf); gc = json_parse_file(gpath, NULL, 0); }
    if (gc && gc->type == JSON_OBJECT) {
        int64_t iv;
        double dv;
        const json *j;
        if ((j = json_get(gc, "top_k")) && j->type == JSON_NUMBER && json_as_int64(j, &iv))
            ok &= !gguf_writer_add_i32(w, "general.sampling.top_k", (int32_t)iv);
        if ((j = json_get(gc, "top_p")) && j->type == JSON_NUMBER && json_as_double(j, &dv))
            ok &= !gguf_writer_add_f32(w, "general.sampling.top_p", (float)dv);
        if ((j = json_get(gc, "min_p")) && j->type == JSON_NUMBER && json_as_double(j, &dv))
            ok &= !gguf_writer_add_f32(w, "general.sampling.min_p", (float)dv);
        if ((j = json_get(gc, "temperature")) && j->type == JSON_NUMBER && json_as_double(j, &dv))
            ok &= !gguf_writer_add_f32(w, "general.sampling.temp", (float)dv);
    }
    json_free(gc);
    ok &= !gguf_writer_add_u32(w, "qwen3next.block_count", (uint32_t)P->n_blocks);
    ok &= !gguf_writer_add_u32(w, "qwen3next.context_length", (uint32_t)c->max_position_embeddings);
    ok &= !gguf_writer_add_u32(w, "qwen3next.embedding_length", (uint32_t)c->hidden_size);
    ok &= !gguf_writer_add_u32(w, "qwen3next.feed_forward_length", (uint32_t)c->intermediate_size);
    ok &= !gguf_writer_add_u32(w, "qwen3next.attention.head_count", (uint32_t)c->n_heads);
    ok &= !gguf_writer_add_u32(w, "qwen3next.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    if (c->rope_type == QNEXT_ROPE_YARN) {
        ok &= !gguf_writer_add_str(w, "qwen3next.rope.scaling.type", "yarn");
        ok &= !gguf_writer_add_f32(w, "qwen3next.rope.scaling.factor", (float)c->rope_factor);
        ok &= !gguf_writer_add_u32(w, "qwen3next.rope.scaling.original_context_length", (uint32_t)c->rope_orig_max_pos);
    }
    ok &= !gguf_writer_add_f32(w, "qwen3next.rope.freq_base", (float)c->rope_theta);
    ok &= !gguf_writer_add_f32(w, "qwen3next.attention.layer_norm_rms_epsilon", (float)c->rms_eps);
    ok &= !gguf_writer_add_u32(w, "qwen3next.expert_count", (uint32_t)c->n_experts);
    ok &= !gguf_writer_add_u32(w, "qwen3next.expert_used_count", (uint32_t)c->n_experts_per_tok);
    ok &= !gguf_writer_add_u32(w, "qwen3next.attention.key_length", (uint32_t)c->head_dim);
    ok &= !gguf_writer_add_u32(w, "qwen3next.attention.value_length", (uint32_t)c->head_dim);
    ok &= !gguf_writer_add_u32(w, "general.file_type", (uint32_t)MIX[p->mix].file_type);
    ok &= !gguf_writer_add_u32(w, "qwen3next.expert_feed_forward_length", (uint32_t)c->moe_intermediate);
    ok &= !gguf_writer_add_u32(w, "qwen3next.expert_shared_feed_forward_length", (uint32_t)c->shared_intermediate);
    if (P->n_blocks > c->n_layers)
        ok &= !gguf_writer_add_u32(w, "qwen3next.nextn_predict_layers", (uint32_t)(P->n_blocks - c->n_layers));
    ok &= !gguf_writer_add_u32(w, "qwen3next.ssm.conv_kernel", (uint32_t)c->conv_kernel);
    ok &= !gguf_writer_add_u32(w, "qwen3next.ssm.state_size", (uint32_t)c->lin_k_dim);
    ok &= !gguf_writer_add_u32(w, "qwen3next.ssm.group_count", (uint32_t)c->lin_n_k_heads);
    ok &= !gguf_writer_add_u32(w, "qwen3next.ssm.time_step_rank", (uint32_t)c->lin_n_v_heads);
    ok &= !gguf_writer_add_u32(w, "qwen3next.ssm.inner_size", (uint32_t)(c->lin_v_dim * c->lin_n_v_heads));
    ok &= !gguf_writer_add_u32(w, "qwen3next.full_attention_interval", (uint32_t)P->interval);
    ok &= !gguf_writer_add_u32(w, "qwen3next.rope.dimension_count", (uint32_t)c->rotary_dim);
    /* Not written by llama.cpp's converter (its qwen3next graph always renormalises the top-k
     * weights); written here only when the checkpoint says otherwise, so that qnext reads it. */
    if (!c->norm_topk_prob) ok &= !gguf_writer_add_bool(w, "qwen3next.expert_weights_norm", 0);
    ok &= !gguf_writer_add_u32(w, "general.quantization_version", 2);
    return ok;
}

/* tokenizer ---------------------------------------------------------------- */

static int looks_special(const char *s, size_t n) {
    /* convert_hf_to_gguf.py does_token_look_special */
    if ((n == 5 && !memcmp(s, "<pad>", 5)) || (n == 6 && !memcmp(s, "<mask>", 6)) || (n == 7 && !memcmp(s, "<2mass>", 7)) ||
        (n == 7 && !memcmp(s, "[@BOS@]", 7)))
        return 1;
    if (n >= 4 && !memcmp(s, "<|", 2) && !memcmp(s + n - 2, "|>", 2)) return 1;
    static const char fl[] = "<\xef\xbd\x9c", fr[] = "\xef\xbd\x9c>"; /* <｜ ... ｜> */
    if (n >= 8 && !memcmp(s, fl, 4) && !memcmp(s + n - 4, fr, 4)) return 1;
    if (n >= 8 && !memcmp(s, "<unused", 7) && s[n - 1] == '>') return 1;
    return 0;
}

/* Replaces every occurrence of `from` in s[0..n) by `to`; returns a malloc'd string. */
static char *replace_all(const char *s, size_t n, const char *from, const char *to, size_t *out_n) {
    size_t fl = strlen(from), tl = strlen(to), cnt = 0;
    for (size_t i = 0; i + fl <= n;) {
        if (!memcmp(s + i, from, fl)) { cnt++; i += fl; } else i++;
    }
    char *r = malloc(n + cnt * (tl > fl ? tl - fl : 0) + 1);
    if (!r) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (i + fl <= n && !memcmp(s + i, from, fl)) { memcpy(r + o, to, tl); o += tl; i += fl; }
        else r[o++] = s[i++];
    }
    r[o] = 0;
    *out_n = o;
    return r;
}

static const char QWEN_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const json *find_added(const json *added, const char *content) {
    if (!added || added->type != JSON_ARRAY) return NULL;
    for (size_t i = 0; i < added->n; i++) {
        const char *c = json_get_string(added->items[i], "content");
        if (c && !strcmp(c, content)) return added->items[i];
    }
    return NULL;
}

int quantize_add_tokenizer_kv(gguf_writer *w, const char *dir, int vocab_size, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    int rc = -1;
    json *tj = json_parse_file(path, err, errlen), *tc = NULL, *cfg = NULL;
    char **toks = NULL;
    uint64_t *lens = NULL;
    int32_t *types = NULL;
    char **merges = NULL;
    uint64_t *mlens = NULL;
    size_t n_tok = 0, n_merges = 0;
    char *tmpl = NULL;
    if (!tj) return -1;
    const json *model = json_get(tj, "model"), *vocab = model ? json_get(model, "vocab") : NULL;
    const json *jm = model ? json_get(model, "merges") : NULL, *added = json_get(tj, "added_tokens");
    const char *mtype = model ? json_get_string(model, "type") : NULL;
    if (!vocab || vocab->type != JSON_OBJECT || !jm || jm->type != JSON_ARRAY || (mtype && strcmp(mtype, "BPE"))) {
        snprintf(err, errlen, "%s: not a BPE tokenizer.json (model.vocab / model.merges)", path);
        goto done;
    }
    /* tokenizer.ggml.pre "qwen2" names Qwen's Split regex + ByteLevel: check that it is this one */
    const json *pre = json_get(tj, "pre_tokenizer"), *list = pre ? json_get(pre, "pretokenizers") : NULL;
    const json *pat = list && list->type == JSON_ARRAY && list->n >= 1 ? json_get(list->items[0], "pattern") : NULL;
    const char *rx = pat ? json_get_string(pat, "Regex") : NULL;
    if (!rx || strcmp(rx, QWEN_REGEX)) {
        snprintf(err, errlen, "%s: the pre-tokenizer is not Qwen2's; only tokenizer.ggml.pre \"qwen2\" is written", path);
        goto done;
    }
    /* ids: vocabulary, then added tokens (an added token's text wins for its id, as in HF) */
    int64_t max_id = -1, id;
    for (size_t i = 0; i < vocab->n; i++) {
        if (!json_as_int64(vocab->items[i], &id) || id < 0 || id > 0x7FFFFFF) {
            snprintf(err, errlen, "%s: bad vocabulary id", path);
            goto done;
        }
        if (id > max_id) max_id = id;
    }
    size_t n_added = added && added->type == JSON_ARRAY ? added->n : 0;
    for (size_t i = 0; i < n_added; i++) {
        if (json_get_int(added->items[i], "id", -1, &id) || id < 0 || id > 0x7FFFFFF ||
            !json_get_string(added->items[i], "content")) {
            snprintf(err, errlen, "%s: malformed added token %zu", path, i);
            goto done;
        }
        if (id > max_id) max_id = id;
    }
    n_tok = (size_t)(max_id + 1);
    if (vocab_size > 0 && (size_t)vocab_size > n_tok) n_tok = (size_t)vocab_size;
    toks = calloc(n_tok, sizeof *toks);
    lens = calloc(n_tok, sizeof *lens);
    types = calloc(n_tok, sizeof *types);
    if (!toks || !lens || !types) { snprintf(err, errlen, "out of memory"); goto done; }
    for (size_t i = 0; i < vocab->n; i++) {
        json_as_int64(vocab->items[i], &id);
        free(toks[id]);
        if (!(toks[id] = malloc(vocab->key_lens[i] + 1))) { snprintf(err, errlen, "out of memory"); goto done; }
        memcpy(toks[id], vocab->keys[i], vocab->key_lens[i] + 1);
        lens[id] = vocab->key_lens[i];
        types[id] = 1; /* NORMAL */
    }
    for (size_t i = 0; i < n_added; i++) {
        const json *a = added->items[i], *c = json_get(a, "content");
        int sp = 0;
        json_get_int(a, "id", -1, &id);
        json_get_bool(a, "special", 0, &sp);
        free(toks[id]);
        size_t ln = c->len;
        if (sp || looks_special(c->str, c->len)) {
            types[id] = 3; /* CONTROL */
            toks[id] = malloc(ln + 1);
            if (toks[id]) memcpy(toks[id], c->str, ln + 1);
        } else {
            types[id] = 4; /* USER_DEFINED: the converter pre-normalises U+2581 to a space */
            toks[id] = replace_all(c->str, c->len, "\xe2\x96\x81", " ", &ln);
        }
        if (!toks[id]) { snprintf(err, errlen, "out of memory"); goto done; }
        lens[id] = ln;
    }
    for (size_t i = 0; i < n_tok; i++)
        if (!toks[i]) {
            char pad[32];
            int n = snprintf(pad, sizeof pad, "[PAD%zu]", i);
            if (!(toks[i] = strdup(pad))) { snprintf(err, errlen, "out of memory"); goto done; }
            lens[i] = (uint64_t)n;
            types[i] = 5; /* UNUSED */
        }
    /* merges as "a b"; pairs given as arrays have spaces inside a part encoded as U+0120 */
    n_merges = jm->n;
    merges = calloc(n_merges ? n_merges : 1, sizeof *merges);
    mlens = calloc(n_merges ? n_merges : 1, sizeof *mlens);
    if (!merges || !mlens) { snprintf(err, errlen, "out of memory"); goto done; }
    for (size_t i = 0; i < n_merges; i++) {
        const json *m = jm->items[i];
        if (m->type == JSON_STRING) {
            merges[i] = malloc(m->len + 1);
            if (merges[i]) memcpy(merges[i], m->str, m->len + 1);
            mlens[i] = m->len;
        } else if (m->type == JSON_ARRAY && m->n == 2 && m->items[0]->type == JSON_STRING &&
                   m->items[1]->type == JSON_STRING) {
            size_t la, lb;
            char *a = replace_all(m->items[0]->str, m->items[0]->len, " ", "\xc4\xa0", &la);
            char *b = replace_all(m->items[1]->str, m->items[1]->len, " ", "\xc4\xa0", &lb);
            if (a && b && (merges[i] = malloc(la + lb + 2))) {
                memcpy(merges[i], a, la);
                merges[i][la] = ' ';
                memcpy(merges[i] + la + 1, b, lb + 1);
                mlens[i] = la + 1 + lb;
            }
            free(a);
            free(b);
        } else {
            snprintf(err, errlen, "%s: malformed merge %zu", path, i);
            goto done;
        }
        if (!merges[i]) { snprintf(err, errlen, "out of memory"); goto done; }
    }
    int ok = !gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") && !gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2") &&
             !gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, lens, n_tok) &&
             !gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, n_tok) &&
             !gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, mlens, n_merges);
    /* gguf.SpecialVocab: tokenizer_config.json first (ids of the added tokens with that content),
     * then config.json's *_token_id for the types still unset */
    static const char *typ[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
    static const char *key[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
                                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.cls_token_id",
                                "tokenizer.ggml.mask_token_id"};
    int64_t sid[7];
    int add_flag[7];
    for (int k = 0; k < 7; k++) { sid[k] = -1; add_flag[k] = -1; }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if ((f = fopen(path, "rb"))) {
        fclose(f);
        if (!(tc = json_parse_file(path, err, errlen))) goto done;
        for (int k = 0; k < 7; k++) {
            char nm[32];
            snprintf(nm, sizeof nm, "add_%s_token", typ[k]);
            const json *b = json_get(tc, nm);
            if (b && (b->type == JSON_TRUE || b->type == JSON_FALSE)) add_flag[k] = b->type == JSON_TRUE;
            snprintf(nm, sizeof nm, "%s_token", typ[k]);
            const json *e = json_get(tc, nm);
            const char *content = NULL;
            if (e && e->type == JSON_STRING) content = e->str;
            else if (e && e->type == JSON_OBJECT) content = json_get_string(e, "content");
            const json *a = content ? find_added(added, content) : NULL;
            if (a) json_get_int(a, "id", -1, &sid[k]);
        }
        const char *ct = json_get_string(tc, "chat_template");
        if (ct) tmpl = strdup(ct);
    }
    if (!tmpl) { /* chat_template.jinja beside it */
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        if ((f = fopen(path, "rb"))) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            if (n >= 0 && (tmpl = malloc((size_t)n + 1))) tmpl[fread(tmpl, 1, (size_t)n, f)] = 0;
            fclose(f);
        }
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((f = fopen(path, "rb"))) {
        fclose(f);
        if ((cfg = json_parse_file(path, NULL, 0)))
            for (int k = 0; k < 7; k++) {
                char nm[32];
                snprintf(nm, sizeof nm, "%s_token_id", typ[k]);
                const json *v = json_get(cfg, nm);
                int64_t x;
                if (sid[k] < 0 && v && v->type == JSON_NUMBER && json_as_int64(v, &x) && x >= 0) sid[k] = x;
            }
    }
    for (int k = 0; k < 7; k++)
        if (sid[k] >= 0) ok &= !gguf_writer_add_u32(w, key[k], (uint32_t)sid[k]);
    for (int k = 0; k < 7; k++)
        if (add_flag[k] >= 0) {
            char nm[64];
            snprintf(nm, sizeof nm, "tokenizer.ggml.add_%s_token", typ[k]);
            ok &= !gguf_writer_add_bool(w, nm, add_flag[k]);
        }
    if (tmpl) ok &= !gguf_writer_add_str(w, "tokenizer.chat_template", tmpl);
    if (!ok) { snprintf(err, errlen, "writing the tokenizer metadata failed"); goto done; }
    rc = 1;
done:
    if (toks) for (size_t i = 0; i < n_tok; i++) free(toks[i]);
    if (merges) for (size_t i = 0; i < n_merges; i++) free(merges[i]);
    free(toks); free(lens); free(types); free(merges); free(mlens); free(tmpl);
    json_free(tj); json_free(tc); json_free(cfg);
    return rc;
}

int quantize_write_vocab_only(const char *dir, const char *output_path, char *err, size_t errlen) {
    gguf_writer *w = gguf_writer_open(output_path, err, errlen);
    if (!w) return -1;
    gguf_writer_add_str(w, "general.architecture", "qwen3next");
    int r = quantize_add_tokenizer_kv(w, dir, 0, err, errlen);
    if (r <= 0) {
        if (r == 0) snprintf(err, errlen, "%s: no tokenizer.json", dir);
        char e2[64];
        gguf_writer_close(w, e2, sizeof e2); /* still writes a header; remove it */
        remove(output_path);
        return -1;
    }
    if (gguf_writer_write_header(w)) { gguf_writer_close(w, err, errlen); return -1; }
    return gguf_writer_close(w, err, errlen) ? -1 : 0;
}

/* ------------------------------------------------------------------ streaming */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Produces rows [r0, r0+n) of t as f32 into buf and quantizes them into out. */
static int produce_rows(const otensor *t, int64_t r0, int64_t n, float *buf, uint8_t *out) {
    size_t rb = quant_row_bytes(t->type, t->cols);
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 4) reduction(| : bad)
    for (int64_t i = 0; i < n; i++) {
        int64_t r = r0 + i, s = r / t->rows_per_src, sr = r % t->rows_per_src;
        const qn_st_tensor *src = t->src[s];
        if (t->row_map) sr = t->row_map[sr];
        size_t in_rb = quant_row_bytes(src->dtype, t->cols);
        float *x = buf + i * t->cols;
        if (quant_dequantize_row(src->dtype, (const uint8_t *)src->data + sr * in_rb, x, t->cols)) { bad = 1; continue; }
        if (t->xform == XF_PLUS1)
            for (int64_t j = 0; j < t->cols; j++) x[j] += 1.0f;
        else if (t->xform == XF_NEG_EXP)
            for (int64_t j = 0; j < t->cols; j++) x[j] = -expf(x[j]);
        if (quant_quantize_row(t->type, x, out + i * rb, t->cols)) bad = 1;
    }
    return !bad;
}

int quantize_model(const quantize_params *p, char *err, size_t errlen) {
    if (!p || !p->input_dir || !p->output_path || p->mix < 0 || p->mix >= QMIX_COUNT) {
        snprintf(err, errlen, "quantize: bad arguments");
        return -1;
    }
#ifdef _OPENMP
    if (p->n_threads > 0) omp_set_num_threads(p->n_threads);
#endif
    plan P = {0};
    P.dir = p->input_dir;
    P.err = err;
    P.errlen = errlen;
    err[0] = 0;
    if (!make_plan(&P, p)) { plan_free(&P); return -1; }
    size_t n_unused = 0;
    const char *first_unused = NULL;
    for (size_t i = 0; i < store_count(P.st); i++)
        if (!store_at(P.st, i)->used) { if (!first_unused) first_unused = store_at(P.st, i)->name; n_unused++; }
    if (n_unused && !p->quiet)
        fprintf(stderr, "quantize: warning: %zu tensor%s of the checkpoint not converted (first: '%s')\n", n_unused,
                n_unused > 1 ? "s" : "", first_unused);

    gguf_writer *w = gguf_writer_open(p->output_path, err, errlen);
    if (!w) { plan_free(&P); return -1; }
    int ok = add_hparams(w, &P, p);
    if (ok && !p->no_tokenizer) {
        int r = quantize_add_tokenizer_kv(w, p->input_dir, P.cfg.vocab_size, err, errlen);
        if (r < 0) ok = 0;
        else if (r == 0 && !p->quiet)
            fprintf(stderr, "quantize: no tokenizer.json in %s: the file gets no tokenizer metadata\n", p->input_dir);
    }
    /* llama-quantize writes each tensor with ggml_n_dims dimensions (trailing 1s dropped: the
     * shared-expert gate [H, 1] becomes [H]); the converter keeps the PyTorch rank. The quantized
     * mixes are llama-quantize's output, F32/F16/BF16 the converter's. */
    int trim = mix_is_quantized(p->mix);
    for (size_t i = 0; ok && i < P.n; i++)
        ok = !gguf_writer_add_tensor(w, P.t[i].name, P.t[i].type, trim ? ggml_ndims(&P.t[i]) : P.t[i].n_dims, P.t[i].ne);
    if (ok) ok = !gguf_writer_write_header(w);

    /* blocks of rows: about 4M values (16 MB of f32) per block */
    size_t max_vals = (size_t)1 << 22, buf_vals = 0, out_bytes = 0;
    for (size_t i = 0; i < P.n; i++) {
        int64_t chunk = (int64_t)(max_vals / (size_t)P.t[i].cols);
        if (chunk < 1) chunk = 1;
        if (chunk > P.t[i].rows) chunk = P.t[i].rows;
        size_t v = (size_t)chunk * P.t[i].cols, b = (size_t)chunk * quant_row_bytes(P.t[i].type, P.t[i].cols);
        if (v > buf_vals) buf_vals = v;
        if (b > out_bytes) out_bytes = b;
    }
    float *buf = ok ? malloc(buf_vals * sizeof(float)) : NULL;
    uint8_t *out = ok ? malloc(out_bytes) : NULL;
    if (ok && (!buf || !out)) { snprintf(err, errlen, "out of memory"); ok = 0; }
    double t0 = now_s();
    uint64_t in_total = 0, out_total = 0;
    for (size_t i = 0; ok && i < P.n; i++) {
        const otensor *t = &P.t[i];
        int64_t chunk = (int64_t)(max_vals / (size_t)t->cols);
        if (chunk < 1) chunk = 1;
        size_t rb = quant_row_bytes(t->type, t->cols);
        for (int64_t r = 0; ok && r < t->rows; r += chunk) {
            int64_t n = t->rows - r < chunk ? t->rows - r : chunk;
            if (!produce_rows(t, r, n, buf, out)) {
                snprintf(err, errlen, "%s: converting %s failed", p->input_dir, t->name);
                ok = 0;
            } else if (gguf_writer_write_tensor_part(w, out, (size_t)n * rb)) {
                ok = 0;
            }
        }
        /* the source pages of this tensor are not needed again (but for the qkvz tensor, read
         * twice, which then faults them back from the page cache): drop them from the process so
         * that its resident size stays small on a 160 GB model */
        long pg = sysconf(_SC_PAGESIZE);
        for (int k = 0; k < t->n_src && pg > 0; k++) {
            uintptr_t a = (uintptr_t)t->src[k]->data, e = a + t->src[k]->nbytes;
            a &= ~(uintptr_t)(pg - 1);
            if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
        }
        uint64_t in_b = (uint64_t)t->rows * quant_row_bytes(t->src[0]->dtype, t->cols);
        in_total += in_b;
        out_total += (uint64_t)t->rows * rb;
        if (ok && !p->quiet)
            fprintf(stderr, "[%4zu/%4zu] %-40s [%6lld, %6lld, %4lld] %-4s -> %-5s %9.2f MB -> %9.2f MB\n", i + 1, P.n,
                    t->name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    qn_dtype_name(t->src[0]->dtype), quant_type_name(t->type), in_b / 1e6,
                    t->rows * (double)rb / 1e6);
    }
    free(buf);
    free(out);
    char e2[512];
    if (gguf_writer_close(w, e2, sizeof e2) && ok) { snprintf(err, errlen, "%s", e2); ok = 0; }
    if (!ok && !err[0]) snprintf(err, errlen, "%s", e2);
    if (ok && !p->quiet)
        fprintf(stderr, "quantize: %s: %zu tensors, %.2f MB -> %.2f MB (%s) in %.1f s\n", p->output_path, P.n,
                in_total / 1e6, out_total / 1e6, MIX[p->mix].name, now_s() - t0);
    plan_free(&P);
    return ok ? 0 : -1;
}
