/* cmd_model.c - the subcommands that work on token ids: info, logits, generate. They
 * need only a model directory (no tokenizer files), which makes them the contract that
 * the reference tests and tools drive. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "args.h"
#include "cli.h"
#include "qnext.h"
#include "text/sampler.h"

typedef struct {
    const char *model, *ids, *out;
    long n_gen, threads, n_ctx, ubatch, seed;
    double temp;
    int gdn_mode, kv_type, draft_mtp, verbose, act_bits;
} model_opts;

static int parse_opts(int argc, char **argv, model_opts *o, const char *usage) {
    memset(o, 0, sizeof *o);
    o->n_gen = 16;
    o->seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", usage); exit(0); }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(o->model = args_value(argc, argv, &i))) return 0; }
        else if (!strcmp(a, "--ids")) { if (!(o->ids = args_value(argc, argv, &i))) return 0; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!(o->out = args_value(argc, argv, &i))) return 0; }
        else if (!strcmp(a, "-n")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 30, &o->n_gen)) return 0; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 4096, &o->threads)) return 0; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 30, &o->n_ctx)) return 0; }
        else if (!strcmp(a, "-ub") || !strcmp(a, "--ubatch")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1 << 20, &o->ubatch)) return 0; }
        else if (!strcmp(a, "--seed")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 0x7fffffff, &o->seed)) return 0; }
        else if (!strcmp(a, "--temp")) { if (!(v = args_value(argc, argv, &i)) || !args_float(a, v, &o->temp)) return 0;
            if (o->temp < 0) { fprintf(stderr, "qnext: --temp must be >= 0\n"); return 0; } }
        else if (!strcmp(a, "--gdn")) {
            if (!(v = args_value(argc, argv, &i))) return 0;
            if (!strcmp(v, "auto")) o->gdn_mode = QNEXT_GDN_AUTO;
            else if (!strcmp(v, "recurrent")) o->gdn_mode = QNEXT_GDN_RECURRENT;
            else if (!strcmp(v, "chunked")) o->gdn_mode = QNEXT_GDN_CHUNKED;
            else { fprintf(stderr, "qnext: --gdn must be auto, recurrent or chunked\n"); return 0; }
        } else if (!strcmp(a, "--draft")) {
            if (!(v = args_value(argc, argv, &i))) return 0;
            if (strcmp(v, "mtp")) { fprintf(stderr, "qnext: --draft: only 'mtp' is supported\n"); return 0; }
            o->draft_mtp = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = 1;
        } else if (!strcmp(a, "--kv-type")) {
            if (!(v = args_value(argc, argv, &i))) return 0;
            if ((o->kv_type = args_kv_type(v)) < 0) return 0;
        } else if (!strcmp(a, "--act-bits")) {
            if (!(v = args_value(argc, argv, &i)) || (o->act_bits = args_act_bits(v)) < 0) return 0;
        } else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, usage); return 0; }
    }
    if (!o->model) { fprintf(stderr, "qnext: -m MODEL_DIR is required\n%s", usage); return 0; }
    return 1;
}

static qnext_model *open_model(const model_opts *o) {
    qnext_model *m;
    char err[1024];
    qnext_model_params mp = {.n_threads = (int)o->threads, .act_bits = o->act_bits};
    qnext_status st = qnext_model_open(o->model, &mp, &m, err, sizeof err);
    if (st) { fprintf(stderr, "qnext: %s\n", err); return NULL; }
    return m;
}

static qnext_session *open_session(qnext_model *m, const model_opts *o, int need) {
    qnext_session_params sp = {.n_ctx = (int)o->n_ctx, .n_ubatch = (int)o->ubatch, .gdn_mode = o->gdn_mode,
                               .kv_type = o->kv_type, .mtp = o->draft_mtp};
    const qnext_config *c = qnext_model_config(m);
    if (!sp.n_ctx) sp.n_ctx = need > 4096 ? need : (c->max_position_embeddings < 4096 ? (need > c->max_position_embeddings ? need : c->max_position_embeddings) : 4096);
    qnext_session *s;
    char err[512];
    if (qnext_session_new(m, &sp, &s, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); return NULL; }
    return s;
}

static const char *info_usage = "usage: qnext info -m MODEL_DIR\n";

int cmd_info(int argc, char **argv) {
    model_opts o;
    if (!parse_opts(argc, argv, &o, info_usage)) return 2;
    qnext_model *m = open_model(&o);
    if (!m) return 1;
    const qnext_config *c = qnext_model_config(m);
    qnext_model_stats st;
    qnext_model_get_stats(m, &st);
    printf("model:                %s\n", o.model);
    printf("vocab_size:           %d\n", c->vocab_size);
    printf("hidden_size:          %d\n", c->hidden_size);
    printf("layers:               %d\n", c->n_layers);
    printf("layer pattern:        ");
    for (int i = 0; i < c->n_layers; i++) printf("%c", c->layer_type[i] == QNEXT_LAYER_FULL ? 'A' : 'D');
    printf("  (D = Gated DeltaNet, A = gated attention)\n");
    printf("mlp pattern:          ");
    for (int i = 0; i < c->n_layers; i++) printf("%c", c->layer_is_moe[i] ? 'E' : 'M');
    printf("  (E = sparse MoE, M = dense MLP)\n");
    printf("attention:            %d query heads, %d kv heads, head_dim %d, rotary_dim %d, rope_theta %g\n",
           c->n_heads, c->n_kv_heads, c->head_dim, c->rotary_dim, c->rope_theta);
    if (c->rope_type == QNEXT_ROPE_YARN)
        printf("rope scaling:         yarn factor %g, original_max_position_embeddings %d, attention_factor %.6f\n",
               c->rope_factor, c->rope_orig_max_pos, c->rope_attn_factor);
    printf("max_position:         %d\n", c->max_position_embeddings);
    printf("gated deltanet:       %d key heads x %d, %d value heads x %d, conv kernel %d\n", c->lin_n_k_heads,
           c->lin_k_dim, c->lin_n_v_heads, c->lin_v_dim, c->conv_kernel);
    printf("moe:                  %d experts, top-%d, expert width %d, shared expert width %d, norm_topk_prob %s\n",
           c->n_experts, c->n_experts_per_tok, c->moe_intermediate, c->shared_intermediate,
           c->norm_topk_prob ? "true" : "false");
    printf("dense mlp width:      %d\n", c->intermediate_size);
    printf("tie_word_embeddings:  %s\n", c->tie_word_embeddings ? "true" : "false");
    printf("rms_norm_eps:         %g\n", c->rms_eps);
    printf("mtp layers:           %d\n", c->n_mtp_layers);
    printf("parameters:           %lld (%.3f B), of which MTP %lld\n", (long long)st.n_params, st.n_params / 1e9,
           (long long)st.n_params_mtp);
    printf("active per token:     %lld (%.3f B)\n", (long long)st.n_params_active, st.n_params_active / 1e9);
    printf("weight bytes:         %lld (%.2f GB)\n", (long long)st.bytes_total, st.bytes_total / 1e9);
    printf("bytes read per token: %lld (%.2f GB)\n", (long long)st.bytes_per_token, st.bytes_per_token / 1e9);
    qnext_model_close(m);
    return 0;
}

static int write_npy(const char *path, const float *data, int rows, int cols) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); return 0; }
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hl & 0xff, f);
    fputc(hl >> 8, f);
    fwrite(hdr, 1, n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t cnt = (size_t)rows * cols;
    int ok = fwrite(data, sizeof(float), cnt, f) == cnt;
    ok = (fclose(f) == 0) && ok;
    if (!ok) fprintf(stderr, "qnext: %s: write failed\n", path);
    return ok;
}

static const char *logits_usage =
    "usage: qnext logits -m MODEL --ids \"1 2 3\" -o OUT.npy [-t THREADS] [--ubatch N] [--gdn auto|recurrent|chunked]\n"
    "                    [--kv-type auto|f32|bf16|q8] [--act-bits 8|16]\n"
    "Writes float32 logits of shape [n_tokens, vocab_size], computed by the prompt path.\n";

int cmd_logits(int argc, char **argv) {
    model_opts o;
    if (!parse_opts(argc, argv, &o, logits_usage)) return 2;
    if (!o.ids || !o.out) { fprintf(stderr, "qnext: logits needs --ids and -o\n%s", logits_usage); return 2; }
    int32_t *ids;
    int n;
    if (!args_parse_ids(o.ids, &ids, &n)) return 2;
    if (n == 0) { fprintf(stderr, "qnext: --ids is empty\n"); free(ids); return 2; }
    qnext_model *m = open_model(&o);
    if (!m) { free(ids); return 1; }
    int rc = 1;
    qnext_session *s = open_session(m, &o, n);
    int V = qnext_model_config(m)->vocab_size;
    float *lg = s ? malloc((size_t)n * V * sizeof(float)) : NULL;
    char err[512];
    if (s && !lg) fprintf(stderr, "qnext: out of memory for %d x %d logits\n", n, V);
    else if (s) {
        if (qnext_session_feed(s, ids, n, lg, QNEXT_LOGITS_ALL, err, sizeof err)) fprintf(stderr, "qnext: %s\n", err);
        else rc = write_npy(o.out, lg, n, V) ? 0 : 1;
    }
    free(lg);
    free(ids);
    qnext_session_free(s);
    qnext_model_close(m);
    return rc;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i;
    return b;
}

static const char *generate_usage =
    "usage: qnext generate -m MODEL_DIR --ids \"1 2 3\" [-n N] [--temp T] [--seed S] [-t THREADS] [--draft mtp] [--act-bits 8|16] [-v]\n"
    "Processes the prompt in one piece, then decodes one token at a time, and prints the N\n"
    "generated ids on one line. --temp 0 (the default) is greedy. --draft mtp (greedy only)\n"
    "drafts one token ahead with the model's MTP head and verifies it in the same forward\n"
    "pass: the same ids, fewer passes when drafts are accepted; -v prints the acceptance.\n";

/* Greedy speculative decoding with the MTP head: the last token t is fed together with
 * the draft d for the token after it; if the model's own choice after t is d, both are
 * kept and the logits after d give the next token for free. Output equals plain greedy. */
static int generate_mtp(qnext_session *s, float *lg, int V, long n_gen, int verbose) {
    char err[512];
    float *two = malloc(sizeof(float) * 2 * (size_t)V), *dl = malloc(sizeof(float) * (size_t)V);
    if (!two || !dl) { free(two); free(dl); fprintf(stderr, "qnext: out of memory\n"); return 1; }
    long out = 0, passes = 0, accepted = 0;
    int32_t t = argmax(lg, V);
    int rc = 0;
    printf("%d", t);
    out = 1;
    while (out < n_gen) {
        if (qnext_session_mtp_draft(s, t, dl, err, sizeof err)) { rc = 1; break; }
        int32_t pair[2] = {t, argmax(dl, V)};
        if (qnext_session_verify(s, pair, 2, two, err, sizeof err)) { rc = 1; break; }
        passes++;
        int32_t next = argmax(two, V);
        if (next == pair[1]) { /* draft accepted: it is the next token, and the one after comes free */
            accepted++;
            printf(" %d", next);
            if (++out >= n_gen) break;
            t = argmax(two + V, V);
        } else {
            if (qnext_session_accept(s, 1, err, sizeof err)) { rc = 1; break; }
            t = next;
        }
        printf(" %d", t);
        out++;
        fflush(stdout);
    }
    printf("\n");
    if (rc) fprintf(stderr, "qnext: %s\n", err);
    if (verbose)
        fprintf(stderr, "qnext: %ld tokens in %ld verify passes, %ld of %ld drafts accepted (%.1f%%)\n", out, passes,
                accepted, passes, passes ? 100.0 * accepted / passes : 0.0);
    free(two);
    free(dl);
    return rc;
}


int cmd_generate(int argc, char **argv) {
    model_opts o;
    if (!parse_opts(argc, argv, &o, generate_usage)) return 2;
    if (!o.ids) { fprintf(stderr, "qnext: generate needs --ids\n%s", generate_usage); return 2; }
    int32_t *ids;
    int n;
    if (!args_parse_ids(o.ids, &ids, &n)) return 2;
    if (n == 0) { fprintf(stderr, "qnext: --ids is empty\n"); free(ids); return 2; }
    qnext_model *m = open_model(&o);
    if (!m) { free(ids); return 1; }
    qnext_session *s = open_session(m, &o, n + (int)o.n_gen);
    int V = qnext_model_config(m)->vocab_size, rc = 1;
    float *lg = malloc((size_t)V * sizeof(float));
    char err[512];
    sampler *smp = NULL;
    if (s && n + o.n_gen - 1 > qnext_session_n_ctx(s)) {
        snprintf(err, sizeof err, "context full: %d prompt tokens + %ld generated > n_ctx %d", n, o.n_gen,
                 qnext_session_n_ctx(s));
        fprintf(stderr, "qnext: %s\n", err);
    } else if (o.draft_mtp && o.temp != 0) {
        fprintf(stderr, "qnext: --draft mtp needs --temp 0 (greedy)\n");
    } else if (s && lg && o.draft_mtp && !qnext_session_feed(s, ids, n, lg, QNEXT_LOGITS_LAST, err, sizeof err)) {
        rc = o.n_gen > 0 ? generate_mtp(s, lg, V, o.n_gen, o.verbose) : (printf("\n"), 0);
    } else if (s && lg && !o.draft_mtp && !qnext_session_feed(s, ids, n, lg, QNEXT_LOGITS_LAST, err, sizeof err)) {
        rc = 0;
        for (long i = 0; i < o.n_gen; i++) {
            int32_t tok;
            if (o.temp == 0) tok = argmax(lg, V);
            else { /* temperature sampling with the sampler of src/text, seeded by --seed */
                if (!smp) {
                    sampler_params sp = sampler_params_default();
                    sp.temperature = (float)o.temp;
                    sp.seed = (uint64_t)o.seed;
                    if (!(smp = sampler_new(V, &sp, err, sizeof err))) { fprintf(stderr, "qnext: %s\n", err); rc = 1; break; }
                }
                tok = sampler_sample(smp, lg, NULL);
            }
            printf("%s%d", i ? " " : "", tok);
            fflush(stdout);
            if (i + 1 < o.n_gen && qnext_session_feed(s, &tok, 1, lg, QNEXT_LOGITS_LAST, err, sizeof err)) {
                fprintf(stderr, "qnext: %s\n", err);
                rc = 1;
                break;
            }
        }
        printf("\n");
    } else if (s && lg) {
        fprintf(stderr, "qnext: %s\n", err);
    }
    sampler_free(smp);
    free(lg);
    free(ids);
    qnext_session_free(s);
    qnext_model_close(m);
    return rc;
}
