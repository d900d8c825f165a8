/* loader.c - opens a checkpoint directory: config, tensor validation, and the one-time
 * layout work (row maps for the interleaved projections, small vectors to f32).
 *
 * Every expected tensor is checked for presence, shape and dtype before the model is
 * returned, so a bad checkpoint fails here with a message naming the file and tensor,
 * and never in the middle of a forward pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/repack.h"
#include "util/hugemap.h"
#include "model.h"
#include "safetensors.h"

typedef struct {
    qnext_model *m;
    const char *dir;
    char *err;
    size_t errlen;
} loader;

const char *qn_dtype_name(int dtype) {
    switch (dtype) {
    case QN_F32: return "f32";
    case QN_F16: return "f16";
    case QN_BF16: return "bf16";
    case QN_Q4_0: return "q4_0";
    case QN_Q8_0: return "q8_0";
    case QN_Q4_K: return "q4_k";
    case QN_Q5_K: return "q5_k";
    case QN_Q6_K: return "q6_k";
    default: return "?";
    }
}

size_t qn_dtype_row_bytes(int dtype, int64_t n) { return quant_row_bytes(dtype, n); }

void *model_own(qnext_model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **o = realloc(m->owned, cap * sizeof *o);
        if (!o) return NULL;
        m->owned = o;
        m->cap_owned = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

static void fmt_shape(char *buf, size_t n, const int64_t *shape, int nd) {
    size_t o = 0;
    o += snprintf(buf + o, n - o, "[");
    for (int i = 0; i < nd && o < n; i++) o += snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Finds a tensor and checks its shape (nd dims) and dtype. */
static qn_st_tensor *find_checked(loader *L, const char *name, int nd, const int64_t *shape) {
    qn_st_tensor *t = store_find(L->m->store, name);
    if (!t) {
        snprintf(L->err, L->errlen, "%s: tensor '%s' is missing from the checkpoint", L->dir, name);
        return NULL;
    }
    int ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[96], want[96];
        fmt_shape(got, sizeof got, t->shape, t->n_dims);
        fmt_shape(want, sizeof want, shape, nd);
        snprintf(L->err, L->errlen, "%s/%s: tensor '%s' has shape %s, expected %s", L->dir, t->file, name, got, want);
        return NULL;
    }
    if (t->dtype < 0) {
        snprintf(L->err, L->errlen, "%s/%s: tensor '%s' has dtype %s; qnext reads BF16, F16 and F32", L->dir, t->file,
                 name, t->dtype_str);
        return NULL;
    }
    t->used = 1;
    return t;
}

static int get_mat(loader *L, qn_tensor *out, const char *name, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    qn_st_tensor *t = find_checked(L, name, 2, shape);
    if (!t) return 0;
    out->data = t->data;
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = qn_dtype_row_bytes(t->dtype, cols);
    out->row_map = NULL;
    out->name = t->name;
    return 1;
}

/* A small tensor converted to an owned f32 array; shape given by nd/shape, n elements. */
static float *get_f32(loader *L, const char *name, int nd, const int64_t *shape) {
    qn_st_tensor *t = find_checked(L, name, nd, shape);
    if (!t) return NULL;
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)shape[i];
    float *dst = model_own(L->m, n * sizeof(float));
    if (!dst) { snprintf(L->err, L->errlen, "%s: out of memory", L->dir); return NULL; }
    op_convert_to_f32(t->dtype, t->data, dst, (int64_t)n);
    return dst;
}

static float *get_vec(loader *L, const char *name, int64_t n) { return get_f32(L, name, 1, &n); }

int model_conv_taps_major(float *w, int64_t conv_dim, int K) {
    float *tmp = malloc((size_t)conv_dim * K * sizeof(float));
    if (!tmp) return 0;
    memcpy(tmp, w, (size_t)conv_dim * K * sizeof(float));
    for (int64_t ch = 0; ch < conv_dim; ch++)
        for (int j = 0; j < K; j++) w[(int64_t)j * conv_dim + ch] = tmp[ch * K + j];
    free(tmp);
    return 1;
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

static int load_attention(loader *L, qn_layer *ly, const char *pfx) {
    const qnext_config *c = &L->m->cfg;
    char nm[256];
    int64_t H = c->hidden_size, D = c->head_dim;
    if (!get_mat(L, &ly->q_proj, NAME("%s.self_attn.q_proj.weight", pfx), c->n_heads * 2 * D, H)) return 0;
    ly->q_proj.row_map = L->m->q_map;
    if (!get_mat(L, &ly->k_proj, NAME("%s.self_attn.k_proj.weight", pfx), c->n_kv_heads * D, H)) return 0;
    if (!get_mat(L, &ly->v_proj, NAME("%s.self_attn.v_proj.weight", pfx), c->n_kv_heads * D, H)) return 0;
    if (!get_mat(L, &ly->o_proj, NAME("%s.self_attn.o_proj.weight", pfx), H, c->n_heads * D)) return 0;
    if (!(ly->q_norm = get_vec(L, NAME("%s.self_attn.q_norm.weight", pfx), D))) return 0;
    if (!(ly->k_norm = get_vec(L, NAME("%s.self_attn.k_norm.weight", pfx), D))) return 0;
    return 1;
}

static int load_gdn(loader *L, qn_layer *ly, const char *pfx) {
    const qnext_config *c = &L->m->cfg;
    char nm[256];
    int64_t H = c->hidden_size, nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int64_t K = c->conv_kernel, conv_dim = 2 * nk * dk + nv * dv;
    if (!get_mat(L, &ly->qkvz, NAME("%s.linear_attn.in_proj_qkvz.weight", pfx), 2 * nk * dk + 2 * nv * dv, H)) return 0;
    ly->qkvz.row_map = L->m->qkvz_map;
    if (!get_mat(L, &ly->ba, NAME("%s.linear_attn.in_proj_ba.weight", pfx), 2 * nv, H)) return 0;
    ly->ba.row_map = L->m->ba_map;
    int64_t cshape[3] = {conv_dim, 1, K};
    if (!(ly->conv_w = get_f32(L, NAME("%s.linear_attn.conv1d.weight", pfx), 3, cshape))) return 0;
    if (!model_conv_taps_major(ly->conv_w, conv_dim, (int)K)) {
        snprintf(L->err, L->errlen, "%s: out of memory", L->dir);
        return 0;
    }
    if (!(ly->dt_bias = get_vec(L, NAME("%s.linear_attn.dt_bias", pfx), nv))) return 0;
    if (!(ly->a_neg = get_vec(L, NAME("%s.linear_attn.A_log", pfx), nv))) return 0;
    for (int64_t i = 0; i < nv; i++) ly->a_neg[i] = -expf(ly->a_neg[i]);
    if (!(ly->gdn_norm = get_vec(L, NAME("%s.linear_attn.norm.weight", pfx), dv))) return 0;
    if (!get_mat(L, &ly->out_proj, NAME("%s.linear_attn.out_proj.weight", pfx), H, nv * dv)) return 0;
    return 1;
}

static int load_mlp(loader *L, qn_layer *ly, const char *pfx, int is_moe) {
    const qnext_config *c = &L->m->cfg;
    char nm[256];
    int64_t H = c->hidden_size;
    if (!is_moe) {
        int64_t I = c->intermediate_size;
        return get_mat(L, &ly->mlp_gate, NAME("%s.mlp.gate_proj.weight", pfx), I, H) &&
               get_mat(L, &ly->mlp_up, NAME("%s.mlp.up_proj.weight", pfx), I, H) &&
               get_mat(L, &ly->mlp_down, NAME("%s.mlp.down_proj.weight", pfx), H, I);
    }
    int64_t E = c->n_experts, I = c->moe_intermediate, Is = c->shared_intermediate;
    if (!get_mat(L, &ly->router, NAME("%s.mlp.gate.weight", pfx), E, H)) return 0;
    ly->exp_gate = model_own(L->m, E * sizeof(qn_tensor));
    ly->exp_up = model_own(L->m, E * sizeof(qn_tensor));
    ly->exp_down = model_own(L->m, E * sizeof(qn_tensor));
    if (!ly->exp_gate || !ly->exp_up || !ly->exp_down) { snprintf(L->err, L->errlen, "out of memory"); return 0; }
    for (int64_t e = 0; e < E; e++) {
        if (!get_mat(L, &ly->exp_gate[e], NAME("%s.mlp.experts.%lld.gate_proj.weight", pfx, (long long)e), I, H)) return 0;
        if (!get_mat(L, &ly->exp_up[e], NAME("%s.mlp.experts.%lld.up_proj.weight", pfx, (long long)e), I, H)) return 0;
        if (!get_mat(L, &ly->exp_down[e], NAME("%s.mlp.experts.%lld.down_proj.weight", pfx, (long long)e), H, I)) return 0;
    }
    if (Is > 0) {
        if (!get_mat(L, &ly->sh_gate, NAME("%s.mlp.shared_expert.gate_proj.weight", pfx), Is, H)) return 0;
        if (!get_mat(L, &ly->sh_up, NAME("%s.mlp.shared_expert.up_proj.weight", pfx), Is, H)) return 0;
        if (!get_mat(L, &ly->sh_down, NAME("%s.mlp.shared_expert.down_proj.weight", pfx), H, Is)) return 0;
        if (!get_mat(L, &ly->sh_expert_gate, NAME("%s.mlp.shared_expert_gate.weight", pfx), 1, H)) return 0;
    }
    return 1;
}

/* Row maps that de-interleave the checkpoint's grouped layouts (spec 3.3 step 2, 3.4). */
int model_build_row_maps(qnext_model *m) {
    const qnext_config *c = &m->cfg;
    int nk = c->lin_n_k_heads, nv = c->lin_n_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim, r = nv / nk;
    int G = 2 * dk + 2 * r * dv; /* rows per key-head group */
    int n_qkvz = 2 * nk * dk + 2 * nv * dv;
    m->qkvz_map = model_own(m, n_qkvz * sizeof(int32_t));
    m->ba_map = model_own(m, 2 * nv * sizeof(int32_t));
    m->q_map = model_own(m, 2 * c->n_heads * c->head_dim * sizeof(int32_t));
    if (!m->qkvz_map || !m->ba_map || !m->q_map) return 0;
    int32_t *q = m->qkvz_map, *k = q + nk * dk, *v = k + nk * dk, *z = v + nv * dv;
    for (int g = 0; g < nk; g++) {
        for (int j = 0; j < dk; j++) {
            q[g * dk + j] = g * G + j;
            k[g * dk + j] = g * G + dk + j;
        }
        for (int jj = 0; jj < r; jj++)
            for (int e = 0; e < dv; e++) {
                int h = g * r + jj;
                v[h * dv + e] = g * G + 2 * dk + jj * dv + e;
                z[h * dv + e] = g * G + 2 * dk + r * dv + jj * dv + e;
            }
        for (int jj = 0; jj < r; jj++) {
            m->ba_map[g * r + jj] = g * 2 * r + jj;          /* b of value head g*r+jj */
            m->ba_map[nv + g * r + jj] = g * 2 * r + r + jj; /* a of value head g*r+jj */
        }
    }
    int D = c->head_dim;
    for (int h = 0; h < c->n_heads; h++)
        for (int j = 0; j < D; j++) {
            m->q_map[h * D + j] = h * 2 * D + j;
            m->q_map[c->n_heads * D + h * D + j] = h * 2 * D + D + j;
        }
    return 1;
}

void qnext_model_close(qnext_model *m) {
    if (!m) return;
    if (m->rp_region) munmap(m->rp_region, m->rp_region_bytes);
    model_snap_pool_free(m);
    for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    store_close(m->store);
    gguf_model_close(m);
    free(m);
}

static qnext_status load_all(loader *L) {
    qnext_model *m = L->m;
    qnext_config *c = &m->cfg;
    char nm[256];
    int64_t V = c->vocab_size, H = c->hidden_size;
    if (!model_build_row_maps(m)) { snprintf(L->err, L->errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
    if (!get_mat(L, &m->embed, "model.embed_tokens.weight", V, H)) return QNEXT_ERR_FORMAT;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
        qn_st_tensor *t = store_find(m->store, "lm_head.weight");
        if (t) t->used = 1; /* some exporters write the tied copy anyway */
    } else if (!get_mat(L, &m->lm_head, "lm_head.weight", V, H)) {
        return QNEXT_ERR_FORMAT;
    }
    if (!(m->final_norm = get_vec(L, "model.norm.weight", H))) return QNEXT_ERR_FORMAT;
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    if (!m->layers) return QNEXT_ERR_MEMORY;
    for (int i = 0; i < c->n_layers; i++) {
        qn_layer *ly = &m->layers[i];
        char pfx[64];
        snprintf(pfx, sizeof pfx, "model.layers.%d", i);
        if (!(ly->input_norm = get_vec(L, NAME("%s.input_layernorm.weight", pfx), H))) return QNEXT_ERR_FORMAT;
        if (!(ly->post_norm = get_vec(L, NAME("%s.post_attention_layernorm.weight", pfx), H))) return QNEXT_ERR_FORMAT;
        int ok = c->layer_type[i] == QNEXT_LAYER_FULL ? load_attention(L, ly, pfx) : load_gdn(L, ly, pfx);
        if (!ok || !load_mlp(L, ly, pfx, c->layer_is_moe[i])) return QNEXT_ERR_FORMAT;
    }
    /* MTP: the count is not in the published config; the tensors decide. */
    int has_mtp = store_find(m->store, "mtp.fc.weight") != NULL;
    if (c->n_mtp_layers < 0) c->n_mtp_layers = has_mtp;
    if (c->n_mtp_layers > 1) {
        snprintf(L->err, L->errlen, "%s: %d MTP layers declared; qnext supports one", L->dir, c->n_mtp_layers);
        return QNEXT_ERR_CONFIG;
    }
    if (c->n_mtp_layers == 1) {
        qn_mtp *t = &m->mtp;
        if (!get_mat(L, &t->fc, "mtp.fc.weight", H, 2 * H)) return QNEXT_ERR_FORMAT;
        if (!(t->pre_fc_norm_embedding = get_vec(L, "mtp.pre_fc_norm_embedding.weight", H))) return QNEXT_ERR_FORMAT;
        if (!(t->pre_fc_norm_hidden = get_vec(L, "mtp.pre_fc_norm_hidden.weight", H))) return QNEXT_ERR_FORMAT;
        if (!(t->norm = get_vec(L, "mtp.norm.weight", H))) return QNEXT_ERR_FORMAT;
        if (!(t->layer.input_norm = get_vec(L, "mtp.layers.0.input_layernorm.weight", H))) return QNEXT_ERR_FORMAT;
        if (!(t->layer.post_norm = get_vec(L, "mtp.layers.0.post_attention_layernorm.weight", H))) return QNEXT_ERR_FORMAT;
        if (!load_attention(L, &t->layer, "mtp.layers.0") || !load_mlp(L, &t->layer, "mtp.layers.0", c->n_experts > 0))
            return QNEXT_ERR_FORMAT;
    } else {
        for (size_t i = 0; i < store_count(m->store); i++) /* declared absent: ignore them quietly */
            if (!strncmp(store_at(m->store, i)->name, "mtp.", 4)) store_at(m->store, i)->used = 1;
    }
    /* Unknown extra tensors are not an error (exporters add things), but the user should know. */
    size_t n_unknown = 0;
    const char *first = NULL;
    for (size_t i = 0; i < store_count(m->store); i++)
        if (!store_at(m->store, i)->used) { if (!first) first = store_at(m->store, i)->name; n_unknown++; }
    if (n_unknown && !m->params.quiet)
        fprintf(stderr, "qnext: warning: %s: %zu unknown tensor%s ignored (first: '%s')\n", L->dir, n_unknown,
                n_unknown > 1 ? "s" : "", first);
    return QNEXT_OK;
}

/* The weight matrices of one layer that the products read (the embedding is read by rows):
 * LAYER_DENSE of them, whether the layer has them or not (absent ones have no data), then each
 * expert's gate, up and down when the layer has experts. Matrix i of layer_n_matrices: */
#define LAYER_DENSE 16
static int layer_n_matrices(const qnext_config *c, const qn_layer *ly) {
    return LAYER_DENSE + (ly->exp_gate ? 3 * c->n_experts : 0);
}

static qn_tensor *layer_matrix(qn_layer *ly, int i) {
    if (i >= LAYER_DENSE) {
        const int e = (i - LAYER_DENSE) / 3, k = (i - LAYER_DENSE) % 3;
        return k == 0 ? &ly->exp_gate[e] : k == 1 ? &ly->exp_up[e] : &ly->exp_down[e];
    }
    qn_tensor *dense[LAYER_DENSE] = {&ly->qkvz, &ly->gate_z, &ly->ba, &ly->out_proj, &ly->q_proj, &ly->k_proj,
                                     &ly->v_proj, &ly->o_proj, &ly->router, &ly->sh_gate, &ly->sh_up, &ly->sh_down,
                                     &ly->sh_expert_gate, &ly->mlp_gate, &ly->mlp_up, &ly->mlp_down};
    return dense[i];
}

/* The shared state of model_repack's threads: each takes the next matrix. */
typedef struct {
    qn_tensor **mats;
    const size_t *off;
    uint8_t *mem;
    int k, drop;
    _Atomic int next;
} repack_job;

static void *repack_worker(void *arg) {
    repack_job *j = arg;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->k;) {
        qn_tensor *W = j->mats[i];
        repack_write(W, j->mem + j->off[i]);
        W->rp = j->mem + j->off[i];
        if (j->drop) { /* the whole pages of the copied range */
            const uintptr_t a = ((uintptr_t)W->data + page - 1) & ~(page - 1);
            const uintptr_t z = ((uintptr_t)W->data + (uintptr_t)W->rows * W->row_bytes) & ~(page - 1);
            if (z > a) madvise((void *)a, z - a, MADV_DONTNEED);
        }
    }
    return NULL;
}

/* Room for model_matrices' list. */
static size_t model_max_matrices(const qnext_model *m) {
    const qnext_config *c = &m->cfg;
    const int n_layers = c->n_layers + (c->n_mtp_layers == 1 ? 1 : 0);
    return (size_t)n_layers * (LAYER_DENSE + 3 * (size_t)c->n_experts) + 2;
}

/* Every weight matrix of the model (the output, the MTP projection, each layer's), into mats;
 * returns how many (absent ones have data NULL). */
static int model_matrices(qnext_model *m, qn_tensor **mats) {
    const qnext_config *c = &m->cfg;
    const int n_layers = c->n_layers + (c->n_mtp_layers == 1 ? 1 : 0);
    int n = 0;
    mats[n++] = &m->lm_head;
    if (c->n_mtp_layers == 1) mats[n++] = &m->mtp.fc;
    for (int l = 0; l < n_layers; l++) {
        qn_layer *ly = l < c->n_layers ? &m->layers[l] : &m->mtp.layer;
        for (int i = 0; i < layer_n_matrices(c, ly); i++) mats[n++] = layer_matrix(ly, i);
    }
    return n;
}

/* qnext_model_params.act_bits (checked at open): marks the matrices whose products take two
 * activation passes. */
static qnext_status model_set_act_bits(qnext_model *m, char *err, size_t errlen) {
    const int bits = m->params.act_bits;
    qn_tensor **mats = malloc(sizeof *mats * model_max_matrices(m));
    if (!mats) { snprintf(err, errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
    const int n = model_matrices(m, mats);
    for (int i = 0; i < n; i++) mats[i]->act2 = bits == 16;
    free(mats);
    return QNEXT_OK;
}

/* qnext_model_params.repack: copies every Q8_0, Q4_K, Q5_K and Q6_K matrix that repack_fits into one region of
 * anonymous memory (kernels/cpu/repack.h), in parallel, and points its qn_tensor.rp there.
 * Each copied range of a mapped file is then dropped from the process (MADV_DONTNEED on its
 * whole pages: reading it again faults it back in from the page cache, and only the
 * embedding's rows are still read that way), so that the resident size stays about the
 * file's rather than doubling. Weights read into memory (no_mmap) are left alone. The copy is
 * advised onto transparent huge pages, as the weights' mapping is (QNEXT_NO_THP turns both off).
 * The copying runs on plain threads, not OpenMP: an OpenMP team in the thread that opens the
 * model outlives the load, and when another thread runs the sessions (qnext serve's engine)
 * libgomp then counts more threads than cores and stops spinning at barriers, which made each
 * one-stream token ~20 ms slower (PERF.md, eighteenth session). */
static qnext_status model_repack(qnext_model *m, char *err, size_t errlen) {
    if (!repack_available()) {
        if (!m->params.quiet) fprintf(stderr, "qnext: --repack needs AVX-512 VNNI; the weights stay as they are\n");
        return QNEXT_OK;
    }
    qn_tensor **mats = malloc(sizeof *mats * model_max_matrices(m));
    size_t *off = malloc(sizeof *off * model_max_matrices(m));
    if (!mats || !off) { free(mats); free(off); snprintf(err, errlen, "repack: out of memory"); return QNEXT_ERR_MEMORY; }
    const int n = model_matrices(m, mats);
    int k = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (mats[i]->data && repack_fits(mats[i])) {
            off[k] = total;
            mats[k++] = mats[i];
            total += (repack_bytes(mats[i]) + 63) & ~(size_t)63;
        }
    uint8_t *mem = NULL;
    if (k) {
        mem = hugemap_alloc(total, PROT_READ | PROT_WRITE, !getenv("QNEXT_NO_THP"), &m->rp_region, &m->rp_region_bytes);
        if (!mem) {
            free(mats); free(off);
            snprintf(err, errlen, "repack: cannot allocate %.1f MB for the repacked weights", total / 1e6);
            return QNEXT_ERR_MEMORY;
        }
    }
    repack_job job = {mats, off, mem, k, !m->params.no_mmap, 0};
    int nth = m->params.n_threads > 0 ? m->params.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nth < 1) nth = 1;
    if (nth > 64) nth = 64;
    pthread_t th[64];
    int started = 0;
    for (; started < nth - 1; started++)
        if (pthread_create(&th[started], NULL, repack_worker, &job)) break;
    repack_worker(&job); /* the calling thread too; with no helper it does all */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (k && !m->params.quiet)
        fprintf(stderr, "qnext: repacked %d Q8_0/Q4_K/Q5_K/Q6_K matrices (%.1f MB) for the AVX-512 VNNI kernels\n", k, total / 1e6);
    free(off);
    free(mats);
    return QNEXT_OK;
}

qnext_status qnext_model_open(const char *path, const qnext_model_params *params, qnext_model **out, char *err,
                              size_t errlen) {
    char local[512];
    if (!err || !errlen) { err = local; errlen = sizeof local; }
    err[0] = 0;
    if (!out || !path) { snprintf(err, errlen, "qnext_model_open: NULL argument"); return QNEXT_ERR_ARG; }
    *out = NULL;
    qnext_model *m = calloc(1, sizeof *m);
    if (!m) { snprintf(err, errlen, "out of memory"); return QNEXT_ERR_MEMORY; }
    if (params) m->params = *params;
    if (m->params.act_bits != 0 && m->params.act_bits != 8 && m->params.act_bits != 16) {
        snprintf(err, errlen, "act_bits must be 0 (the default, 8), 8 or 16, not %d", m->params.act_bits);
        free(m);
        return QNEXT_ERR_ARG;
    }
    if (model_path_is_gguf(path)) {
        qnext_status rc = gguf_model_load(m, path, err, errlen);
        if (rc == QNEXT_OK) rc = model_set_act_bits(m, err, errlen);
        if (rc == QNEXT_OK && m->params.repack) rc = model_repack(m, err, errlen);
        if (rc) { qnext_model_close(m); return rc; }
        if (m->params.n_threads > 0) op_set_threads(m->params.n_threads);
        *out = m;
        return QNEXT_OK;
    }
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/config.json", path);
    qnext_status rc = config_parse(cpath, &m->cfg, err, errlen);
    if (rc == QNEXT_OK) rc = store_open_dir(path, m->params.no_mmap, &m->store, err, errlen);
    if (rc == QNEXT_OK) {
        loader L = {m, path, err, errlen};
        rc = load_all(&L);
        if (rc == QNEXT_ERR_MEMORY && !err[0]) snprintf(err, errlen, "%s: out of memory", path);
    }
    if (rc == QNEXT_OK) rc = model_set_act_bits(m, err, errlen);
    if (rc == QNEXT_OK && m->params.repack) rc = model_repack(m, err, errlen);
    if (rc) { qnext_model_close(m); return rc; }
    if (m->params.n_threads > 0) op_set_threads(m->params.n_threads);
    *out = m;
    return QNEXT_OK;
}

const qnext_config *qnext_model_config(const qnext_model *m) { return &m->cfg; }

static int64_t tbytes(const qn_tensor *t) { return t->data ? t->rows * (int64_t)t->row_bytes : 0; }
static int64_t tparams(const qn_tensor *t) { return t->data ? t->rows * t->cols : 0; }

/* Sums one layer's tensors: params and bytes of everything, and of what one token reads. */
static void layer_stats(const qnext_config *c, const qn_layer *ly, int is_moe, int64_t *p, int64_t *b, double *pa,
                        double *ba) {
    const int n = is_moe ? layer_n_matrices(c, ly) : LAYER_DENSE;
    const double frac = is_moe ? (double)c->n_experts_per_tok / c->n_experts : 0;
    for (int i = 0; i < n; i++) {
        const qn_tensor *t = layer_matrix((qn_layer *)ly, i); /* only read here */
        *p += tparams(t); *b += tbytes(t);
        if (i < LAYER_DENSE) { *pa += tparams(t); *ba += tbytes(t); }
        else { *pa += frac * tparams(t); *ba += frac * tbytes(t); }
    }
}

void qnext_model_get_stats(const qnext_model *m, qnext_model_stats *st) {
    memset(st, 0, sizeof *st);
    const qnext_config *c = &m->cfg;
    int64_t p = 0, b = 0;
    double pa = 0, ba = 0;
    for (int i = 0; i < c->n_layers; i++) layer_stats(c, &m->layers[i], c->layer_is_moe[i], &p, &b, &pa, &ba);
    /* embedding: one row per token; lm_head: all of it (the same matrix when tied) */
    int64_t emb_p = tparams(&m->embed), emb_b = tbytes(&m->embed);
    p += emb_p; b += emb_b;
    pa += c->hidden_size; ba += (double)emb_b / c->vocab_size;
    pa += tparams(&m->lm_head); ba += tbytes(&m->lm_head);
    if (!c->tie_word_embeddings) { p += tparams(&m->lm_head); b += tbytes(&m->lm_head); }
    /* the small vectors kept as f32: norms, conv taps, gates */
    int64_t norms = (int64_t)c->n_layers * 2 * c->hidden_size + c->hidden_size;
    int64_t conv_dim = 2 * (int64_t)c->lin_n_k_heads * c->lin_k_dim + (int64_t)c->lin_n_v_heads * c->lin_v_dim;
    for (int i = 0; i < c->n_layers; i++)
        norms += c->layer_type[i] == QNEXT_LAYER_FULL ? 2 * c->head_dim
                                                      : conv_dim * c->conv_kernel + 2 * c->lin_n_v_heads + c->lin_v_dim;
    st->n_params_active = (int64_t)llround(pa) + norms;
    st->bytes_per_token = (int64_t)llround(ba);
    if (c->n_mtp_layers == 1) {
        int64_t mp = 0, mb = 0;
        double x = 0, y = 0;
        layer_stats(c, &m->mtp.layer, c->n_experts > 0, &mp, &mb, &x, &y);
        mp += tparams(&m->mtp.fc); mb += tbytes(&m->mtp.fc);
        mp += 5 * (int64_t)c->hidden_size + 2 * (int64_t)c->head_dim; /* its norms, kept as f32 */
        st->n_params_mtp = mp;
        p += mp; b += mb;
    }
    st->n_params = p + norms;
    st->bytes_total = b;
}
