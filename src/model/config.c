/* config.c - reads config.json in both spellings found in the wild.
 *
 * The published Qwen3-Next config has top-level rope_theta / rope_scaling /
 * partial_rotary_factor and full_attention_interval; transformers 5.x writes a
 * rope_parameters object and an explicit layer_types list. Missing fields take the
 * defaults of transformers' Qwen3NextConfig, as transformers itself would. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "util/json.h"

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return QNEXT_ERR_CONFIG; } while (0)

static qnext_status get_int(const json *o, const char *path, const char *key, int64_t def, int64_t lo, int64_t hi,
                            int *out, char *err, size_t errlen) {
    int64_t v;
    if (json_get_int(o, key, def, &v) != 0) FAIL("%s: \"%s\" must be an integer", path, key);
    if (v < lo || v > hi) FAIL("%s: \"%s\" = %lld is out of range [%lld, %lld]", path, key, (long long)v,
                               (long long)lo, (long long)hi);
    *out = (int)v;
    return QNEXT_OK;
}

static qnext_status get_num(const json *o, const char *path, const char *key, double def, double *out, char *err,
                            size_t errlen) {
    if (json_get_double(o, key, def, out) != 0) FAIL("%s: \"%s\" must be a number", path, key);
    if (!isfinite(*out)) FAIL("%s: \"%s\" is not finite", path, key);
    return QNEXT_OK;
}

#define TRY(x) do { qnext_status _r = (x); if (_r) return _r; } while (0)

/* rope_scaling (published) or rope_parameters (5.x): both are objects with rope_type
 * (or the older "type"); "default" needs nothing, "yarn" is implemented. */
static qnext_status parse_rope(const json *r, const char *path, qnext_config *c, char *err, size_t errlen) {
    c->rope_type = QNEXT_ROPE_DEFAULT;
    if (!r || r->type == JSON_NULL) return QNEXT_OK;
    if (r->type != JSON_OBJECT) FAIL("%s: rope scaling must be an object or null", path);
    const char *type = json_get_string(r, "rope_type");
    if (!type) type = json_get_string(r, "type");
    if (!type || !strcmp(type, "default")) return QNEXT_OK;
    if (strcmp(type, "yarn")) FAIL("%s: rope type \"%s\" is not supported (only default and yarn)", path, type);
    c->rope_type = QNEXT_ROPE_YARN;
    TRY(get_num(r, path, "factor", 1.0, &c->rope_factor, err, errlen));
    if (c->rope_factor < 1.0) FAIL("%s: yarn factor must be >= 1", path);
    TRY(get_int(r, path, "original_max_position_embeddings", c->max_position_embeddings, 1, 1 << 30,
                &c->rope_orig_max_pos, err, errlen));
    double bf, bs;
    TRY(get_num(r, path, "beta_fast", 32.0, &bf, err, errlen));
    TRY(get_num(r, path, "beta_slow", 1.0, &bs, err, errlen));
    /* transformers uses `or` here, so an explicit 0 also means the default. */
    c->rope_beta_fast = bf ? bf : 32.0;
    c->rope_beta_slow = bs ? bs : 1.0;
    double af = -1;
    json *afj = json_get(r, "attention_factor");
    if (afj && afj->type != JSON_NULL) TRY(get_num(r, path, "attention_factor", 1.0, &af, err, errlen));
    double ms = 0, msa = 0;
    TRY(get_num(r, path, "mscale", 0.0, &ms, err, errlen));
    TRY(get_num(r, path, "mscale_all_dim", 0.0, &msa, err, errlen));
    if (af < 0) {
        double s = c->rope_factor;
#define GET_MSCALE(sc, m) ((sc) <= 1 ? 1.0 : 0.1 * (m) * log(sc) + 1.0)
        if (ms && msa) af = GET_MSCALE(s, ms) / GET_MSCALE(s, msa);
        else af = GET_MSCALE(s, 1.0);
#undef GET_MSCALE
    }
    c->rope_attn_factor = af;
    int trunc = 1;
    if (json_get_bool(r, "truncate", 1, &trunc) != 0) FAIL("%s: yarn \"truncate\" must be a boolean", path);
    c->rope_truncate = trunc;
    return QNEXT_OK;
}

qnext_status config_from_json(const void *root_, const char *path, qnext_config *c, char *err, size_t errlen) {
    const json *root = root_;
    memset(c, 0, sizeof *c);
    if (!root || root->type != JSON_OBJECT) FAIL("%s: not a JSON object", path);
    const char *mt = json_get_string(root, "model_type");
    if (!mt) FAIL("%s: no \"model_type\"", path);
    if (strcmp(mt, "qwen3_next")) FAIL("%s: model_type \"%s\" is not qwen3_next", path, mt);

    TRY(get_int(root, path, "vocab_size", 151936, 1, 1 << 24, &c->vocab_size, err, errlen));
    TRY(get_int(root, path, "hidden_size", 2048, 1, 1 << 16, &c->hidden_size, err, errlen));
    TRY(get_int(root, path, "num_hidden_layers", 48, 1, QNEXT_MAX_LAYERS, &c->n_layers, err, errlen));
    TRY(get_int(root, path, "num_attention_heads", 16, 1, 1024, &c->n_heads, err, errlen));
    TRY(get_int(root, path, "num_key_value_heads", 2, 1, 1024, &c->n_kv_heads, err, errlen));
    TRY(get_int(root, path, "head_dim", 256, 2, 4096, &c->head_dim, err, errlen));
    TRY(get_int(root, path, "max_position_embeddings", 32768, 1, 1 << 30, &c->max_position_embeddings, err, errlen));
    TRY(get_int(root, path, "linear_num_key_heads", 16, 1, 1024, &c->lin_n_k_heads, err, errlen));
    TRY(get_int(root, path, "linear_num_value_heads", 32, 1, 1024, &c->lin_n_v_heads, err, errlen));
    TRY(get_int(root, path, "linear_key_head_dim", 128, 1, 4096, &c->lin_k_dim, err, errlen));
    TRY(get_int(root, path, "linear_value_head_dim", 128, 1, 4096, &c->lin_v_dim, err, errlen));
    TRY(get_int(root, path, "linear_conv_kernel_dim", 4, 1, 64, &c->conv_kernel, err, errlen));
    TRY(get_int(root, path, "num_experts", 512, 0, 1 << 16, &c->n_experts, err, errlen));
    TRY(get_int(root, path, "num_experts_per_tok", 10, 0, 1 << 16, &c->n_experts_per_tok, err, errlen));
    TRY(get_int(root, path, "moe_intermediate_size", 512, 1, 1 << 20, &c->moe_intermediate, err, errlen));
    TRY(get_int(root, path, "shared_expert_intermediate_size", 512, 0, 1 << 20, &c->shared_intermediate, err, errlen));
    TRY(get_int(root, path, "intermediate_size", 5632, 1, 1 << 20, &c->intermediate_size, err, errlen));
    TRY(get_num(root, path, "rms_norm_eps", 1e-6, &c->rms_eps, err, errlen));
    if (json_get_bool(root, "norm_topk_prob", 1, &c->norm_topk_prob)) FAIL("%s: \"norm_topk_prob\" must be a boolean", path);
    if (json_get_bool(root, "tie_word_embeddings", 0, &c->tie_word_embeddings))
        FAIL("%s: \"tie_word_embeddings\" must be a boolean", path);
    if (c->n_heads % c->n_kv_heads) FAIL("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                                         c->n_heads, c->n_kv_heads);
    if (c->n_heads / c->n_kv_heads > 64) FAIL("%s: more than 64 query heads per key-value head", path);
    if (c->lin_n_v_heads % c->lin_n_k_heads)
        FAIL("%s: linear_num_value_heads %d is not a multiple of linear_num_key_heads %d", path, c->lin_n_v_heads,
             c->lin_n_k_heads);
    if (c->n_experts > 0 && (c->n_experts_per_tok < 1 || c->n_experts_per_tok > c->n_experts))
        FAIL("%s: num_experts_per_tok %d must be in [1, num_experts %d]", path, c->n_experts_per_tok, c->n_experts);

    /* RoPE: 5.x keeps everything in rope_parameters; the published form has top-level keys. */
    json *rp = json_get(root, "rope_parameters");
    if (rp && rp->type != JSON_NULL && rp->type != JSON_OBJECT) FAIL("%s: \"rope_parameters\" must be an object", path);
    const json *rsrc = (rp && rp->type == JSON_OBJECT) ? rp : root;
    TRY(get_num(rsrc, path, "rope_theta", 10000.0, &c->rope_theta, err, errlen));
    if (rsrc != root && !json_get(rsrc, "rope_theta")) TRY(get_num(root, path, "rope_theta", 10000.0, &c->rope_theta, err, errlen));
    if (c->rope_theta <= 1.0) FAIL("%s: rope_theta must be > 1", path);
    double prf;
    TRY(get_num(rsrc, path, "partial_rotary_factor", 0.25, &prf, err, errlen));
    if (rsrc != root && !json_get(rsrc, "partial_rotary_factor"))
        TRY(get_num(root, path, "partial_rotary_factor", 0.25, &prf, err, errlen));
    if (prf <= 0 || prf > 1) FAIL("%s: partial_rotary_factor must be in (0, 1]", path);
    c->rotary_dim = (int)(c->head_dim * prf);
    if (c->rotary_dim < 2 || c->rotary_dim % 2) FAIL("%s: rotary dim %d (head_dim x partial_rotary_factor) must be even", path, c->rotary_dim);
    TRY(parse_rope(rsrc == root ? json_get(root, "rope_scaling") : rp, path, c, err, errlen));

    /* Layer pattern. */
    json *lt = json_get(root, "layer_types");
    if (lt && lt->type != JSON_NULL) {
        if (lt->type != JSON_ARRAY || (int)lt->n != c->n_layers)
            FAIL("%s: \"layer_types\" must be a list of num_hidden_layers (%d) strings", path, c->n_layers);
        for (int i = 0; i < c->n_layers; i++) {
            json *e = lt->items[i];
            if (e->type == JSON_STRING && !strcmp(e->str, "linear_attention")) c->layer_type[i] = QNEXT_LAYER_LINEAR;
            else if (e->type == JSON_STRING && !strcmp(e->str, "full_attention")) c->layer_type[i] = QNEXT_LAYER_FULL;
            else FAIL("%s: layer_types[%d] must be \"linear_attention\" or \"full_attention\"", path, i);
        }
    } else {
        int interval;
        TRY(get_int(root, path, "full_attention_interval", 4, 1, 1 << 16, &interval, err, errlen));
        for (int i = 0; i < c->n_layers; i++)
            c->layer_type[i] = ((i + 1) % interval) ? QNEXT_LAYER_LINEAR : QNEXT_LAYER_FULL;
    }
    int step;
    TRY(get_int(root, path, "decoder_sparse_step", 1, 1, 1 << 16, &step, err, errlen));
    json *mlo = json_get(root, "mlp_only_layers");
    if (mlo && mlo->type != JSON_NULL && mlo->type != JSON_ARRAY) FAIL("%s: \"mlp_only_layers\" must be a list", path);
    for (int i = 0; i < c->n_layers; i++) {
        int only = 0;
        for (size_t k = 0; mlo && mlo->type == JSON_ARRAY && k < mlo->n; k++) {
            int64_t v;
            if (!json_as_int64(mlo->items[k], &v)) FAIL("%s: \"mlp_only_layers\" must hold integers", path);
            if (v == i) only = 1;
        }
        c->layer_is_moe[i] = !only && c->n_experts > 0 && (i + 1) % step == 0;
    }

    /* Special tokens. */
    int64_t bos;
    if (json_get_int(root, "bos_token_id", -1, &bos)) FAIL("%s: \"bos_token_id\" must be an integer", path);
    c->bos_token_id = (int)bos;
    json *eos = json_get(root, "eos_token_id");
    if (eos && eos->type == JSON_NUMBER) {
        int64_t v;
        if (!json_as_int64(eos, &v)) FAIL("%s: \"eos_token_id\" must be an integer or a list", path);
        c->eos_token_ids[c->n_eos++] = (int)v;
    } else if (eos && eos->type == JSON_ARRAY) {
        for (size_t k = 0; k < eos->n && c->n_eos < QNEXT_MAX_EOS; k++) {
            int64_t v;
            if (!json_as_int64(eos->items[k], &v)) FAIL("%s: \"eos_token_id\" must hold integers", path);
            c->eos_token_ids[c->n_eos++] = (int)v;
        }
    } else if (eos && eos->type != JSON_NULL) {
        FAIL("%s: \"eos_token_id\" must be an integer or a list", path);
    }
    int64_t nmtp;
    if (json_get_int(root, "num_nextn_predict_layers", -1, &nmtp)) FAIL("%s: \"num_nextn_predict_layers\" must be an integer", path);
    c->n_mtp_layers = (int)nmtp; /* -1: decide from the tensors present */
    return QNEXT_OK;
}

qnext_status config_parse(const char *path, qnext_config *cfg, char *err, size_t errlen) {
    json *root = json_parse_file(path, err, errlen);
    if (!root) return QNEXT_ERR_CONFIG;
    qnext_status rc = config_from_json(root, path, cfg, err, errlen);
    json_free(root);
    return rc;
}
