/* cmd_eval.c - `qnext eval`: how far a (quantized) model is from a reference model.
 *
 * The token stream (ids, or text tokenized by the model's tokenizer) is cut into chunks of
 * --ctx tokens; each chunk is run through both models from an empty state, as
 * llama-perplexity does, and every position from --score-from on (predicting the next token
 * of the chunk) is scored:
 *   - KL(P_ref || P_model) of the next-token distributions (mean, max, 99th percentile),
 *   - top-1 agreement (argmax of the model == argmax of the reference), over all positions and
 *     over the "decisive" ones where the reference's top-1 probability leads the second by at
 *     least 0.01 (near-ties flip on any perturbation and dominate the disagreements),
 *   - perplexity exp(mean NLL of the actual next token) of each model.
 * All sums are in double; the softmaxes are taken in double from the f32 logits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "model/gguf.h"
#include "qnext.h"
#include "text/tokenizer.h"
#include "text/tokenizer_gguf.h"

static const char *eval_usage =
    "usage: qnext eval -m MODEL --ref REF_MODEL (--ids FILE | --text FILE) [--tokenizer DIR]\n"
    "                  [-c CTX] [--chunks N] [--score-from K] [-t THREADS] [--kv-type f32|bf16|q8|auto]\n"
    "                  [--ref-kv-type f32|bf16|q8|auto] [--state-type f32|bf16] [--ubatch N] [--json] [--no-mmap] [--repack]\n"
    "                  [--act-bits 8|16] [--ref-act-bits 8|16]\n"
    "Compares MODEL (e.g. a quantized GGUF) with REF_MODEL (e.g. the bf16 safetensors) over the\n"
    "tokens of FILE, in chunks of CTX tokens (default 512) each starting from an empty state.\n"
    "Positions K.. of each chunk are scored (default 0; llama-perplexity scores from CTX/2).\n"
    "Reports mean/max/p99 KL(ref || model), top-1 agreement, and the perplexity of both.\n"
    "Both models use an f32 KV cache unless --kv-type says otherwise, so only the weights differ;\n"
    "--ref-kv-type gives REF_MODEL another one (e.g. --kv-type q8 --ref-kv-type f32 with the same\n"
    "model twice measures what the 8-bit cache costs).\n"
    "--act-bits sets how MODEL's quantized products take their activations (8 bits per block, the default,\n"
    "or 16 in two passes); --ref-act-bits REF_MODEL's (default: the same).\n"
    "--state-type bf16 keeps MODEL's DeltaNet states in bf16 (REF_MODEL's stay f32); --ubatch N feeds\n"
    "each chunk N tokens at a time (1: token by token, as decoding does; default 512).\n"
    "--text uses the tokenizer of --tokenizer DIR, else MODEL's or REF_MODEL's (tokenizer.json\n"
    "in a model directory, or the tokenizer metadata of a GGUF file).\n";

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(b); fprintf(stderr, "qnext: %s: read failed\n", path); return NULL; }
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

/* A tokenizer for text: an explicit directory, a model directory, or a GGUF file's metadata. */
static qnext_tokenizer *load_tokenizer(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    int is_gguf = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    if (f) fclose(f);
    if (!is_gguf) return tokenizer_load_dir(path, err, errlen);
    gguf_file *g;
    if (gguf_open(path, &g, err, errlen)) return NULL;
    qnext_tokenizer *t = tokenizer_load_gguf(g, err, errlen);
    gguf_close(g);
    return t;
}

#define DECISIVE_GAP 0.01

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* log-softmax of a row in double; returns the argmax. */
static int log_softmax(const float *x, int n, double *out) {
    int am = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[am]) am = i;
    double mx = x[am], s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    double lse = mx + log(s);
    for (int i = 0; i < n; i++) out[i] = (double)x[i] - lse;
    return am;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *ref = NULL, *ids_path = NULL, *text_path = NULL, *tok_dir = NULL;
    long ctx = 512, max_chunks = 0, score_from = 0, threads = 0;
    int as_json = 0, kv_type = QNEXT_KV_F32, ref_kv_type = -1, state_type = QNEXT_STATE_F32, no_mmap = 0, repack = 0;
    long ubatch = 0;
    int act_bits = 8, ref_act_bits = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", eval_usage); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--ref")) { if (!(ref = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--ids")) { if (!(ids_path = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--text")) { if (!(text_path = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--tokenizer")) { if (!(tok_dir = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 2, 1 << 20, &ctx)) return 2; }
        else if (!strcmp(a, "--chunks")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 30, &max_chunks)) return 2; }
        else if (!strcmp(a, "--score-from")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 1 << 20, &score_from)) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 4096, &threads)) return 2; }
        else if (!strcmp(a, "--json")) as_json = 1;
        else if (!strcmp(a, "--no-mmap")) no_mmap = 1;
        else if (!strcmp(a, "--repack")) repack = 1;
        else if (!strcmp(a, "--act-bits")) { if (!(v = args_value(argc, argv, &i)) || (act_bits = args_act_bits(v)) < 0) return 2; }
        else if (!strcmp(a, "--ref-act-bits")) { if (!(v = args_value(argc, argv, &i)) || (ref_act_bits = args_act_bits(v)) < 0) return 2; }
        else if (!strcmp(a, "--kv-type")) { if (!(v = args_value(argc, argv, &i)) || (kv_type = args_kv_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--ref-kv-type")) { if (!(v = args_value(argc, argv, &i)) || (ref_kv_type = args_kv_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--state-type")) { if (!(v = args_value(argc, argv, &i)) || (state_type = args_state_type(v)) < 0) return 2; }
        else if (!strcmp(a, "--ubatch")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1 << 20, &ubatch)) return 2; }
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, eval_usage); return 2; }
    }
    if (!model || !ref || (!ids_path == !text_path)) {
        fprintf(stderr, "qnext: eval needs -m, --ref and one of --ids / --text\n%s", eval_usage);
        return 2;
    }
    if (score_from >= ctx - 1) { fprintf(stderr, "qnext: --score-from must be below --ctx - 1\n"); return 2; }
    char err[1024];
    int32_t *ids = NULL;
    int n_ids = 0;
    size_t len;
    char *buf = read_file(ids_path ? ids_path : text_path, &len);
    if (!buf) return 1;
    if (ids_path) {
        if (!args_parse_ids(buf, &ids, &n_ids)) { free(buf); return 2; }
    } else {
        qnext_tokenizer *tok = NULL;
        if (tok_dir) tok = load_tokenizer(tok_dir, err, sizeof err);
        else if (!(tok = load_tokenizer(model, err, sizeof err))) tok = load_tokenizer(ref, err, sizeof err);
        if (!tok) { fprintf(stderr, "qnext: no tokenizer: %s\n", err); free(buf); return 1; }
        size_t n;
        if (tokenizer_encode_ex(tok, buf, len, 0, &ids, &n)) { fprintf(stderr, "qnext: tokenization failed\n"); tokenizer_free(tok); free(buf); return 1; }
        n_ids = (int)n;
        tokenizer_free(tok);
    }
    free(buf);
    qnext_model *mm = NULL, *mr = NULL;
    qnext_model_params mp = {.n_threads = (int)threads, .quiet = 1, .no_mmap = no_mmap, .repack = repack, .act_bits = act_bits};
    qnext_model_params mpr = mp;
    if (ref_act_bits >= 0) mpr.act_bits = ref_act_bits;
    if (qnext_model_open(model, &mp, &mm, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); free(ids); return 1; }
    if (qnext_model_open(ref, &mpr, &mr, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); qnext_model_close(mm); free(ids); return 1; }
    int V = qnext_model_config(mm)->vocab_size;
    if (qnext_model_config(mr)->vocab_size != V) {
        fprintf(stderr, "qnext: vocabulary sizes differ (%d vs %d)\n", V, qnext_model_config(mr)->vocab_size);
        qnext_model_close(mm); qnext_model_close(mr); free(ids);
        return 1;
    }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= V) { fprintf(stderr, "qnext: token id %d out of range\n", ids[i]); qnext_model_close(mm); qnext_model_close(mr); free(ids); return 1; }
    long n_chunks = n_ids / ctx;
    if (max_chunks > 0 && n_chunks > max_chunks) n_chunks = max_chunks;
    if (n_chunks < 1) {
        fprintf(stderr, "qnext: %d tokens are fewer than one chunk of %ld\n", n_ids, ctx);
        qnext_model_close(mm); qnext_model_close(mr); free(ids);
        return 1;
    }
    /* --state-type applies to the model under test; the reference keeps f32 states. */
    qnext_session_params sp = {.n_ctx = (int)ctx, .n_ubatch = (int)ubatch, .kv_type = kv_type, .state_type = state_type};
    qnext_session_params spr = sp;
    spr.state_type = QNEXT_STATE_F32;
    if (ref_kv_type >= 0) spr.kv_type = ref_kv_type;
    qnext_session *sm = NULL, *sr = NULL;
    int rc = 1;
    float *lm = malloc((size_t)ctx * V * sizeof(float)), *lr = malloc((size_t)ctx * V * sizeof(float));
    double *pm = malloc((size_t)V * sizeof(double)), *pr = malloc((size_t)V * sizeof(double));
    long n_score = n_chunks * (ctx - 1 - score_from);
    double *kls = malloc((size_t)n_score * sizeof(double));
    if (!lm || !lr || !pm || !pr || !kls) { fprintf(stderr, "qnext: out of memory\n"); goto out; }
    if (qnext_session_new(mm, &sp, &sm, err, sizeof err) || qnext_session_new(mr, &spr, &sr, err, sizeof err)) {
        fprintf(stderr, "qnext: %s\n", err);
        goto out;
    }
    double nll_m = 0, nll_r = 0, kl_sum = 0, kl_max = 0;
    long agree = 0, k = 0, n_decisive = 0, agree_decisive = 0;
    for (long c = 0; c < n_chunks; c++) {
        const int32_t *t = ids + c * ctx;
        qnext_session_reset(sm);
        qnext_session_reset(sr);
        if (qnext_session_feed(sm, t, (int)ctx, lm, QNEXT_LOGITS_ALL, err, sizeof err) ||
            qnext_session_feed(sr, t, (int)ctx, lr, QNEXT_LOGITS_ALL, err, sizeof err)) {
            fprintf(stderr, "qnext: %s\n", err);
            goto out;
        }
        for (long i = score_from; i < ctx - 1; i++) {
            int am = log_softmax(lm + (size_t)i * V, V, pm), ar = log_softmax(lr + (size_t)i * V, V, pr);
            double kl = 0;
            for (int j = 0; j < V; j++) kl += exp(pr[j]) * (pr[j] - pm[j]);
            if (kl < 0) kl = 0; /* rounding */
            kls[k++] = kl;
            kl_sum += kl;
            if (kl > kl_max) kl_max = kl;
            agree += am == ar;
            /* positions where the reference is not near a tie: top-1 probability at least
             * DECISIVE_GAP above the second (near-ties flip on any perturbation) */
            double p1 = exp(pr[ar]), p2 = 0;
            for (int j = 0; j < V; j++) if (j != ar && exp(pr[j]) > p2) p2 = exp(pr[j]);
            if (p1 - p2 >= DECISIVE_GAP) { n_decisive++; agree_decisive += am == ar; }
            nll_m -= pm[t[i + 1]];
            nll_r -= pr[t[i + 1]];
        }
        if (!as_json)
            fprintf(stderr, "[chunk %ld/%ld] ppl model %.4f ref %.4f, mean KL %.6f\n", c + 1, n_chunks, exp(nll_m / k),
                    exp(nll_r / k), kl_sum / k);
    }
    qsort(kls, (size_t)k, sizeof *kls, cmp_double);
    double p99 = kls[(size_t)((k - 1) * 0.99)];
    if (as_json)
        printf("{\"tokens_scored\": %ld, \"chunks\": %ld, \"ctx\": %ld, \"score_from\": %ld, \"kl_mean\": %.9g, "
               "\"kl_max\": %.9g, \"kl_p99\": %.9g, \"top1_agree\": %.9g, \"decisive_positions\": %ld, "
               "\"top1_agree_decisive\": %.9g, \"ppl_model\": %.9g, \"ppl_ref\": %.9g}\n",
               k, n_chunks, ctx, score_from, kl_sum / k, kl_max, p99, (double)agree / k, n_decisive,
               n_decisive ? (double)agree_decisive / n_decisive : 1.0, exp(nll_m / k), exp(nll_r / k));
    else {
        printf("model:          %s (quantized products: %d-bit activations)\nreference:      %s (quantized products: %d-bit activations)\n", model, mp.act_bits, ref,
               mpr.act_bits);
        printf("tokens scored:  %ld (%ld chunks of %ld, from position %ld)\n", k, n_chunks, ctx, score_from);
        printf("KL(ref||model): mean %.6f  p99 %.6f  max %.6f\n", kl_sum / k, p99, kl_max);
        printf("top-1 agree:    %.4f%% (%ld/%ld); where the reference's top-1 leads by >= %.2f: %.4f%% (%ld/%ld)\n",
               100.0 * agree / k, agree, k, DECISIVE_GAP, n_decisive ? 100.0 * agree_decisive / n_decisive : 100.0,
               agree_decisive, n_decisive);
        printf("perplexity:     model %.4f  reference %.4f\n", exp(nll_m / k), exp(nll_r / k));
    }
    rc = 0;
out:
    qnext_session_free(sm);
    qnext_session_free(sr);
    free(lm); free(lr); free(pm); free(pr); free(kls); free(ids);
    qnext_model_close(mm);
    qnext_model_close(mr);
    return rc;
}
