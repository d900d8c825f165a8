/* loader_gguf.c - opens a llama.cpp `qwen3next` GGUF file into the same model structure
 * as a Hugging Face checkpoint, undoing what the converter did (docs/GGUF.md section 3):
 *   - norm weights were stored as 1 + w (except the gated norm): 1 is subtracted again;
 *   - ssm_a is already -exp(A_log), which is what the forward pass keeps;
 *   - the conv weight is squeezed to [conv_dim, K], the layout used here;
 *   - the newer files split in_proj_qkvz into attn_qkv ([q|k|v], de-interleaved) and
 *     attn_gate (z); the older ones keep it fused as ssm_in in the checkpoint's grouped
 *     order, read through the same row map as safetensors;
 *   - experts are stacked [E, rows, cols] (ggml ne [cols, rows, E]); each expert is a view.
 *   - the MTP layer is block n_layers (block_count - nextn_predict_layers), see load_mtp.
 * Tensors keep their GGUF type (F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q5_K/Q6_K, ...) and are read in
 * place from the mapping. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "model.h"

int model_path_is_gguf(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    char magic[4] = {0};
    ssize_t n = read(fd, magic, 4);
    close(fd);
    return n == 4 && !memcmp(magic, "GGUF", 4);
}

void gguf_model_close(qnext_model *m) {
    if (m && m->gguf) gguf_close(m->gguf);
}

typedef struct {
    qnext_model *m;
    const char *path;
    char *err;
    size_t errlen;
} gl;

/* A GGUF tensor with ggml shape ne[0..nd) (ne[0] contiguous), or NULL with a message. */
static const gguf_tensor *find(gl *L, const char *name, int nd, const int64_t *ne, int required) {
    const gguf_tensor *t = gguf_find_tensor(L->m->gguf, name);
    if (!t) {
        if (required) snprintf(L->err, L->errlen, "%s: tensor '%s' is missing", L->path, name);
        return NULL;
    }
    int ok = 1;
    for (int i = 0; i < nd; i++) ok &= t->ne[i] == ne[i];
    for (int i = nd; i < GGUF_MAX_DIMS; i++) ok &= t->ne[i] == 1;
    if (!ok) {
        snprintf(L->err, L->errlen, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld] (ggml order), expected [%lld, %lld, %lld]",
                 L->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                 (long long)ne[0], nd > 1 ? (long long)ne[1] : 1LL, nd > 2 ? (long long)ne[2] : 1LL);
        return NULL;
    }
    const quant_type_info *ti = quant_type_get(t->type);
    if (!ti || !ti->can_dequantize) {
        snprintf(L->err, L->errlen, "%s: tensor '%s' has type %s, which qnext cannot read", L->path, name,
                 quant_type_name(t->type));
        return NULL;
    }
    return t;
}

static void view(qn_tensor *out, const gguf_tensor *t, const void *data, int64_t rows, int64_t cols) {
    out->data = data;
    out->dtype = t->type;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = quant_row_bytes(t->type, cols);
    out->row_map = NULL;
    out->name = t->name;
}

static int mat(gl *L, qn_tensor *out, const char *name, int64_t rows, int64_t cols, int required) {
    int64_t ne[2] = {cols, rows};
    const gguf_tensor *t = find(L, name, 2, ne, required);
    if (!t) return !required && !gguf_find_tensor(L->m->gguf, name);
    view(out, t, t->data, rows, cols);
    return 1;
}

/* A vector as owned f32; `minus_one` undoes the converter's 1 + w on norm weights. */
static float *vec(gl *L, const char *name, int64_t n, int minus_one) {
    const gguf_tensor *t = find(L, name, 1, &n, 1);
    if (!t) {
        /* some converters write [n, 1] matrices for single-row tensors */
        int64_t ne2[2] = {n, 1};
        if (!(t = find(L, name, 2, ne2, 1))) return NULL;
        L->err[0] = 0;
    }
    float *v = model_own(L->m, (size_t)n * sizeof(float));
    if (!v) { snprintf(L->err, L->errlen, "out of memory"); return NULL; }
    op_convert_to_f32(t->type, t->data, v, n);
    if (minus_one)
        for (int64_t i = 0; i < n; i++) v[i] -= 1.0f;
    return v;
}

/* Stacked experts: ne [cols, rows, E] (or fused gate+up [cols, 2*rows, E]). */
static int experts(gl *L, qn_tensor *dst, const char *name, int64_t rows, int64_t cols, int64_t E) {
    int64_t ne[3] = {cols, rows, E};
    const gguf_tensor *t = find(L, name, 3, ne, 1);
    if (!t) return 0;
    size_t rb = quant_row_bytes(t->type, cols);
    for (int64_t e = 0; e < E; e++) view(&dst[e], t, (const char *)t->data + (size_t)e * rows * rb, rows, cols);
    return 1;
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

static int get_u(gl *L, const char *key, int *out, int required, int def) {
    int64_t v;
    int r = gguf_get_int(L->m->gguf, key, &v);
    if (r == 1 && v >= 0 && v < (1ll << 31)) { *out = (int)v; return 1; }
    if (r == 0 && !required) { *out = def; return 1; }
    snprintf(L->err, L->errlen, "%s: metadata '%s' is %s", L->path, key, r == 0 ? "missing" : "not a valid integer");
    return 0;
}

static qnext_status read_config(gl *L, int *nextn_out) {
    qnext_config *c = &L->m->cfg;
    gguf_file *g = L->m->gguf;
    const char *arch;
    uint64_t alen;
    if (gguf_get_str(g, "general.architecture", &arch, &alen) != 1) {
        snprintf(L->err, L->errlen, "%s: no general.architecture", L->path);
        return QNEXT_ERR_CONFIG;
    }
    if (strcmp(arch, "qwen3next")) {
        snprintf(L->err, L->errlen, "%s: architecture '%s' is not qwen3next", L->path, arch);
        return QNEXT_ERR_CONFIG;
    }
    memset(c, 0, sizeof *c);
    int blocks, nextn, interval, ssm_inner;
    if (!get_u(L, "qwen3next.block_count", &blocks, 1, 0) || !get_u(L, "qwen3next.nextn_predict_layers", &nextn, 0, 0) ||
        !get_u(L, "qwen3next.embedding_length", &c->hidden_size, 1, 0) ||
        !get_u(L, "qwen3next.context_length", &c->max_position_embeddings, 0, 262144) ||
        !get_u(L, "qwen3next.feed_forward_length", &c->intermediate_size, 0, 5120) ||
        !get_u(L, "qwen3next.attention.head_count", &c->n_heads, 1, 0) ||
        !get_u(L, "qwen3next.attention.head_count_kv", &c->n_kv_heads, 1, 0) ||
        !get_u(L, "qwen3next.attention.key_length", &c->head_dim, 1, 0) ||
        !get_u(L, "qwen3next.rope.dimension_count", &c->rotary_dim, 1, 0) ||
        !get_u(L, "qwen3next.expert_count", &c->n_experts, 1, 0) ||
        !get_u(L, "qwen3next.expert_used_count", &c->n_experts_per_tok, 1, 0) ||
        !get_u(L, "qwen3next.expert_feed_forward_length", &c->moe_intermediate, 1, 0) ||
        !get_u(L, "qwen3next.expert_shared_feed_forward_length", &c->shared_intermediate, 0, 0) ||
        !get_u(L, "qwen3next.ssm.conv_kernel", &c->conv_kernel, 1, 0) ||
        !get_u(L, "qwen3next.ssm.state_size", &c->lin_k_dim, 1, 0) ||
        !get_u(L, "qwen3next.ssm.group_count", &c->lin_n_k_heads, 1, 0) ||
        !get_u(L, "qwen3next.ssm.time_step_rank", &c->lin_n_v_heads, 1, 0) ||
        !get_u(L, "qwen3next.ssm.inner_size", &ssm_inner, 1, 0) ||
        !get_u(L, "qwen3next.full_attention_interval", &interval, 0, 4))
        return QNEXT_ERR_CONFIG;
    c->n_layers = blocks - nextn;
    *nextn_out = nextn;
    if (c->n_layers < 1 || c->n_layers > QNEXT_MAX_LAYERS || !c->lin_n_v_heads || !c->lin_n_k_heads || !interval ||
        ssm_inner % c->lin_n_v_heads || c->n_heads % c->n_kv_heads || c->lin_n_v_heads % c->lin_n_k_heads ||
        c->n_experts_per_tok > c->n_experts || c->rotary_dim % 2 || c->rotary_dim > c->head_dim ||
        c->n_heads / c->n_kv_heads > 64) {
        snprintf(L->err, L->errlen, "%s: inconsistent qwen3next hyper-parameters", L->path);
        return QNEXT_ERR_CONFIG;
    }
    c->lin_v_dim = ssm_inner / c->lin_n_v_heads;
    double v;
    c->rope_theta = gguf_get_float(g, "qwen3next.rope.freq_base", &v) == 1 ? v : 10000000.0;
    c->rms_eps = gguf_get_float(g, "qwen3next.attention.layer_norm_rms_epsilon", &v) == 1 ? v : 1e-6;
    c->norm_topk_prob = 1;
    int b;
    if (gguf_get_bool(g, "qwen3next.expert_weights_norm", &b) == 1) c->norm_topk_prob = b;
    c->rope_type = QNEXT_ROPE_DEFAULT;
    const char *st;
    if (gguf_get_str(g, "qwen3next.rope.scaling.type", &st, &alen) == 1 && !strcmp(st, "yarn")) {
        c->rope_type = QNEXT_ROPE_YARN;
        c->rope_factor = gguf_get_float(g, "qwen3next.rope.scaling.factor", &v) == 1 ? v : 1.0;
        int orig;
        if (!get_u(L, "qwen3next.rope.scaling.original_context_length", &orig, 0, c->max_position_embeddings))
            return QNEXT_ERR_CONFIG;
        c->rope_orig_max_pos = orig;
        c->rope_beta_fast = 32;
        c->rope_beta_slow = 1;
        c->rope_truncate = 1;
        c->rope_attn_factor = c->rope_factor <= 1 ? 1.0 : 0.1 * log(c->rope_factor) + 1.0;
    }
    for (int i = 0; i < c->n_layers; i++) {
        c->layer_type[i] = ((i + 1) % interval) ? QNEXT_LAYER_LINEAR : QNEXT_LAYER_FULL;
        c->layer_is_moe[i] = c->n_experts > 0;
    }
    int64_t id;
    c->bos_token_id = gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id) == 1 ? (int)id : -1;
    if (gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id) == 1) c->eos_token_ids[c->n_eos++] = (int)id;
    c->n_mtp_layers = 0; /* set by load_mtp once the nextn block is read */
    return QNEXT_OK;
}

static int load_mlp(gl *L, qn_layer *ly, int il) {
    const qnext_config *c = &L->m->cfg;
    char nm[128];
    int64_t H = c->hidden_size, E = c->n_experts, I = c->moe_intermediate, Is = c->shared_intermediate;
    if (!mat(L, &ly->router, NAME("blk.%d.ffn_gate_inp.weight", il), E, H, 1)) return 0;
    ly->exp_gate = model_own(L->m, E * sizeof(qn_tensor));
    ly->exp_up = model_own(L->m, E * sizeof(qn_tensor));
    ly->exp_down = model_own(L->m, E * sizeof(qn_tensor));
    if (!ly->exp_gate || !ly->exp_up || !ly->exp_down) { snprintf(L->err, L->errlen, "out of memory"); return 0; }
    if (gguf_find_tensor(L->m->gguf, NAME("blk.%d.ffn_gate_up_exps.weight", il))) {
        /* fused: each expert holds gate rows then up rows */
        int64_t ne[3] = {H, 2 * I, E};
        const gguf_tensor *t = find(L, nm, 3, ne, 1);
        if (!t) return 0;
        size_t rb = quant_row_bytes(t->type, H);
        for (int64_t e = 0; e < E; e++) {
            const char *base = (const char *)t->data + (size_t)e * 2 * I * rb;
            view(&ly->exp_gate[e], t, base, I, H);
            view(&ly->exp_up[e], t, base + (size_t)I * rb, I, H);
        }
    } else if (!experts(L, ly->exp_gate, NAME("blk.%d.ffn_gate_exps.weight", il), I, H, E) ||
               !experts(L, ly->exp_up, NAME("blk.%d.ffn_up_exps.weight", il), I, H, E)) {
        return 0;
    }
    if (!experts(L, ly->exp_down, NAME("blk.%d.ffn_down_exps.weight", il), H, I, E)) return 0;
    if (Is > 0) {
        if (!mat(L, &ly->sh_gate, NAME("blk.%d.ffn_gate_shexp.weight", il), Is, H, 1)) return 0;
        if (!mat(L, &ly->sh_up, NAME("blk.%d.ffn_up_shexp.weight", il), Is, H, 1)) return 0;
        if (!mat(L, &ly->sh_down, NAME("blk.%d.ffn_down_shexp.weight", il), H, Is, 1)) return 0;
        /* the shared-expert gate is one row: stored as [H] or [H, 1] */
        const gguf_tensor *t = gguf_find_tensor(L->m->gguf, NAME("blk.%d.ffn_gate_inp_shexp.weight", il));
        int64_t ne[1] = {H};
        if (!t || !(t = find(L, nm, 1, ne, 1))) {
            if (!L->err[0]) snprintf(L->err, L->errlen, "%s: tensor '%s' is missing", L->path, nm);
            return 0;
        }
        view(&ly->sh_expert_gate, t, t->data, 1, H);
    }
    return 1;
}

static int load_attention(gl *L, qn_layer *ly, int il) {
    const qnext_config *c = &L->m->cfg;
    char nm[128];
    int64_t H = c->hidden_size, D = c->head_dim;
    if (!mat(L, &ly->q_proj, NAME("blk.%d.attn_q.weight", il), c->n_heads * 2 * D, H, 1)) return 0;
    ly->q_proj.row_map = L->m->q_map;
    if (!mat(L, &ly->k_proj, NAME("blk.%d.attn_k.weight", il), c->n_kv_heads * D, H, 1) ||
        !mat(L, &ly->v_proj, NAME("blk.%d.attn_v.weight", il), c->n_kv_heads * D, H, 1) ||
        !mat(L, &ly->o_proj, NAME("blk.%d.attn_output.weight", il), H, c->n_heads * D, 1))
        return 0;
    if (!(ly->q_norm = vec(L, NAME("blk.%d.attn_q_norm.weight", il), D, 1))) return 0;
    if (!(ly->k_norm = vec(L, NAME("blk.%d.attn_k_norm.weight", il), D, 1))) return 0;
    return 1;
}

/* The MTP layer, as llama.cpp's converter writes it (conversion/qwen.py, _QwenMtpMixin):
 * block n_layers holds mtp.layers.0.* under the standard names (a full-attention layer
 * with the MoE), plus mtp.fc -> nextn.eh_proj, pre_fc_norm_embedding -> nextn.enorm,
 * pre_fc_norm_hidden -> nextn.hnorm, mtp.norm -> nextn.shared_head_norm, norms stored
 * as 1 + w. llama.cpp's graph concatenates [enorm(embedding) | hnorm(hidden)] before
 * eh_proj, the same column order as mtp.fc. A file that declares the block but carries
 * no eh_proj (tensors stripped) is opened without MTP. */
static qnext_status load_mtp(gl *L, int nextn) {
    qnext_model *m = L->m;
    qnext_config *c = &m->cfg;
    c->n_mtp_layers = 0;
    if (nextn == 0) return QNEXT_OK;
    char nm[128];
    const int b = c->n_layers;
    if (!gguf_find_tensor(m->gguf, NAME("blk.%d.nextn.eh_proj.weight", b))) {
        if (!m->params.quiet)
            fprintf(stderr, "qnext: warning: %s: nextn_predict_layers = %d but no '%s'; MTP is off\n", L->path,
                    nextn, nm);
        return QNEXT_OK;
    }
    if (nextn > 1) {
        snprintf(L->err, L->errlen, "%s: %d MTP (nextn) layers declared; qnext supports one", L->path, nextn);
        return QNEXT_ERR_CONFIG;
    }
    /* a separate MTP embedding or head (other architectures' nextn blocks) is not what
     * Qwen3-Next has: the head shares token_embd and output */
    if (gguf_find_tensor(m->gguf, NAME("blk.%d.nextn.embed_tokens.weight", b)) ||
        gguf_find_tensor(m->gguf, NAME("blk.%d.nextn.shared_head_head.weight", b))) {
        snprintf(L->err, L->errlen, "%s: '%s': an MTP block with its own embedding or head is not supported",
                 L->path, nm);
        return QNEXT_ERR_FORMAT;
    }
    const int64_t H = c->hidden_size;
    qn_mtp *t = &m->mtp;
    qn_layer *ly = &t->layer;
    if (!mat(L, &t->fc, NAME("blk.%d.nextn.eh_proj.weight", b), H, 2 * H, 1)) return QNEXT_ERR_FORMAT;
    if (!(t->pre_fc_norm_embedding = vec(L, NAME("blk.%d.nextn.enorm.weight", b), H, 1)) ||
        !(t->pre_fc_norm_hidden = vec(L, NAME("blk.%d.nextn.hnorm.weight", b), H, 1)))
        return QNEXT_ERR_FORMAT;
    /* llama.cpp falls back to output_norm when shared_head_norm is absent */
    if (gguf_find_tensor(m->gguf, NAME("blk.%d.nextn.shared_head_norm.weight", b))) {
        if (!(t->norm = vec(L, nm, H, 1))) return QNEXT_ERR_FORMAT;
    } else {
        t->norm = m->final_norm;
    }
    if (!(ly->input_norm = vec(L, NAME("blk.%d.attn_norm.weight", b), H, 1)) ||
        !(ly->post_norm = vec(L, NAME("blk.%d.post_attention_norm.weight", b), H, 1)))
        return QNEXT_ERR_FORMAT;
    if (!load_attention(L, ly, b) || !load_mlp(L, ly, b)) return QNEXT_ERR_FORMAT;
    c->n_mtp_layers = 1;
    return QNEXT_OK;
}

qnext_status gguf_model_load(qnext_model *m, const char *path, char *err, size_t errlen) {
    if (gguf_open_file(path, m->params.no_mmap, &m->gguf, err, errlen) != 0) return QNEXT_ERR_FORMAT;
    gl L = {m, path, err, errlen};
    err[0] = 0;
    int nextn = 0;
    qnext_status rc = read_config(&L, &nextn);
    if (rc) return rc;
    qnext_config *c = &m->cfg;
    char nm[128];
    const gguf_tensor *te = gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te || te->n_dims != 2 || te->ne[0] != c->hidden_size) {
        snprintf(err, errlen, "%s: tensor 'token_embd.weight' is missing or not [%d, vocab]", path, c->hidden_size);
        return QNEXT_ERR_FORMAT;
    }
    c->vocab_size = (int)te->ne[1];
    int64_t V = c->vocab_size, H = c->hidden_size;
    if (!model_build_row_maps(m)) { snprintf(err, errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
    if (!mat(&L, &m->embed, "token_embd.weight", V, H, 1)) return QNEXT_ERR_FORMAT;
    if (gguf_find_tensor(m->gguf, "output.weight")) {
        if (!mat(&L, &m->lm_head, "output.weight", V, H, 1)) return QNEXT_ERR_FORMAT;
    } else {
        c->tie_word_embeddings = 1;
        m->lm_head = m->embed;
    }
    if (!(m->final_norm = vec(&L, "output_norm.weight", H, 1))) return QNEXT_ERR_FORMAT;
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    if (!m->layers) return QNEXT_ERR_MEMORY;
    const int64_t nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    const int64_t conv_dim = 2 * nk * dk + nv * dv;
    for (int il = 0; il < c->n_layers; il++) {
        qn_layer *ly = &m->layers[il];
        if (!(ly->input_norm = vec(&L, NAME("blk.%d.attn_norm.weight", il), H, 1))) return QNEXT_ERR_FORMAT;
        if (!(ly->post_norm = vec(&L, NAME("blk.%d.post_attention_norm.weight", il), H, 1))) return QNEXT_ERR_FORMAT;
        if (c->layer_type[il] == QNEXT_LAYER_FULL) {
            if (!load_attention(&L, ly, il)) return QNEXT_ERR_FORMAT;
        } else {
            if (gguf_find_tensor(m->gguf, NAME("blk.%d.attn_qkv.weight", il))) {
                if (!mat(&L, &ly->qkvz, nm, conv_dim, H, 1)) return QNEXT_ERR_FORMAT;
                if (!mat(&L, &ly->gate_z, NAME("blk.%d.attn_gate.weight", il), nv * dv, H, 1)) return QNEXT_ERR_FORMAT;
            } else {
                if (!mat(&L, &ly->qkvz, NAME("blk.%d.ssm_in.weight", il), 2 * nk * dk + 2 * nv * dv, H, 1))
                    return QNEXT_ERR_FORMAT;
                ly->qkvz.row_map = m->qkvz_map;
            }
            if (!mat(&L, &ly->ba, NAME("blk.%d.ssm_ba.weight", il), 2 * nv, H, 1)) return QNEXT_ERR_FORMAT;
            ly->ba.row_map = m->ba_map;
            int64_t cne[2] = {c->conv_kernel, conv_dim};
            const gguf_tensor *ct = find(&L, NAME("blk.%d.ssm_conv1d.weight", il), 2, cne, 1);
            if (!ct) return QNEXT_ERR_FORMAT;
            if (!(ly->conv_w = model_own(m, conv_dim * c->conv_kernel * sizeof(float)))) return QNEXT_ERR_MEMORY;
            op_convert_to_f32(ct->type, ct->data, ly->conv_w, conv_dim * c->conv_kernel);
            if (!model_conv_taps_major(ly->conv_w, conv_dim, c->conv_kernel)) return QNEXT_ERR_MEMORY;
            if (!(ly->dt_bias = vec(&L, NAME("blk.%d.ssm_dt.bias", il), nv, 0))) return QNEXT_ERR_FORMAT;
            if (!(ly->a_neg = vec(&L, NAME("blk.%d.ssm_a", il), nv, 0))) return QNEXT_ERR_FORMAT;
            if (!(ly->gdn_norm = vec(&L, NAME("blk.%d.ssm_norm.weight", il), dv, 0))) return QNEXT_ERR_FORMAT;
            if (!mat(&L, &ly->out_proj, NAME("blk.%d.ssm_out.weight", il), H, nv * dv, 1)) return QNEXT_ERR_FORMAT;
        }
        if (!load_mlp(&L, ly, il)) return QNEXT_ERR_FORMAT;
    }
    return load_mtp(&L, nextn);
}
