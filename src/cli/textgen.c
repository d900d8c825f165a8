/* textgen.c - see textgen.h. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include "textgen.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "text/tokenizer_gguf.h"

const char TEXTGEN_OPTIONS_HELP[] =
    "  -m, --model DIR          model directory (config.json, weights, tokenizer.json, template)\n"
    "  -n N                     generate at most N tokens (default: until an end token or a full context)\n"
    "  --temp T                 temperature; 0 = greedy (default: generation_config.json, else greedy)\n"
    "  --top-k K                keep the K most likely tokens (0 = off)\n"
    "  --top-p P                nucleus sampling: the smallest set with probability >= P (1 = off)\n"
    "  --min-p P                keep tokens with probability >= P * the top one (0 = off)\n"
    "  --repeat-penalty R       divide/multiply logits of tokens already seen (1 = off)\n"
    "  --presence-penalty A     subtract A from logits of tokens already generated\n"
    "  --frequency-penalty F    subtract F * count from logits of tokens already generated\n"
    "  --seed S                 random seed (default: from the clock)\n"
    "  --stop S                 stop when the text S is generated (not printed); repeatable\n"
    "  --system S               system message\n"
    "  --think / --no-think     enable_thinking = true / false for the chat template\n"
    "  --json                   constrain the answer to a JSON object\n"
    "  -j, --json-schema S      constrain the answer to JSON valid against the JSON Schema S (text)\n"
    "  --json-schema-file F     the same with the schema read from file F\n"
    "  -t, --threads N          CPU threads (default: all cores)\n"
    "  -c, --ctx N              context window in tokens (default: min(model maximum, 4096))\n"
    "  --kv-type T              KV cache: auto (f32 for checkpoints, bf16 for GGUF), f32, bf16, q8\n"
    "  --state-type T           DeltaNet recurrent states: f32 (default, exact) or bf16 (half their memory)\n"
    "  --no-mmap                read the weights into memory (huge pages) instead of mapping the file:\n"
    "                           slower to start, faster generation where the page cache slows streaming\n"
    "  --repack                 copy Q8_0/Q4_K/Q5_K/Q6_K matrices into groups of 16 interleaved rows at load, for a\n"
    "                           faster AVX-512 VNNI kernel\n"
    "  --act-bits 8|16          activations of the quantized products: 8 bits per block (default), or 16\n"
    "                           (two 8-bit passes: as exact as f32 activations, prompts ~2x slower)\n"
    "  -v, --verbose            print prompt/cache statistics to stderr\n";

double textgen_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void textgen_opts_init(textgen_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = -1;
    o->seed = -1;
    o->think = -1;
}

static int float_opt(int argc, char **argv, int *i, double *out, int *set, double lo, double hi) {
    const char *name = argv[*i], *v = args_value(argc, argv, i);
    if (!v || !args_float(name, v, out)) return -1;
    if (!(*out >= lo && *out <= hi)) {
        fprintf(stderr, "qnext: %s must be in [%g, %g]\n", name, lo, hi);
        return -1;
    }
    *set = 1;
    return 1;
}

int textgen_parse_option(int argc, char **argv, int *i, textgen_opts *o) {
    const char *a = argv[*i], *v;
    long x;
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) return (o->model_dir = args_value(argc, argv, i)) ? 1 : -1;
    if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
        if (!(v = args_value(argc, argv, i)) || !args_int(a, v, -1, 1 << 30, &o->n_predict)) return -1;
        return 1;
    }
    if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
        return (v = args_value(argc, argv, i)) && args_int(a, v, 0, 4096, &o->threads) ? 1 : -1;
    if (!strcmp(a, "--kv-type"))
        return (v = args_value(argc, argv, i)) && (o->kv_type = args_kv_type(v)) >= 0 ? 1 : -1;
    if (!strcmp(a, "--state-type"))
        return (v = args_value(argc, argv, i)) && (o->state_type = args_state_type(v)) >= 0 ? 1 : -1;
    if (!strcmp(a, "-c") || !strcmp(a, "--ctx"))
        return (v = args_value(argc, argv, i)) && args_int(a, v, 0, 1 << 30, &o->n_ctx) ? 1 : -1;
    if (!strcmp(a, "--seed")) return (v = args_value(argc, argv, i)) && args_int(a, v, 0, 0x7fffffffL, &o->seed) ? 1 : -1;
    if (!strcmp(a, "--temp") || !strcmp(a, "--temperature")) return float_opt(argc, argv, i, &o->temp, &o->set_temp, 0, 1e6);
    if (!strcmp(a, "--top-k")) {
        if (!(v = args_value(argc, argv, i)) || !args_int(a, v, 0, 0x7fffffffL, &x)) return -1;
        o->top_k = (double)x;
        o->set_top_k = 1;
        return 1;
    }
    if (!strcmp(a, "--top-p")) return float_opt(argc, argv, i, &o->top_p, &o->set_top_p, 1e-9, 1);
    if (!strcmp(a, "--min-p")) return float_opt(argc, argv, i, &o->min_p, &o->set_min_p, 0, 1);
    if (!strcmp(a, "--repeat-penalty") || !strcmp(a, "--repetition-penalty"))
        return float_opt(argc, argv, i, &o->repeat_penalty, &o->set_repeat, 1e-6, 1e6);
    if (!strcmp(a, "--presence-penalty")) return float_opt(argc, argv, i, &o->presence_penalty, &o->set_presence, -1e6, 1e6);
    if (!strcmp(a, "--frequency-penalty"))
        return float_opt(argc, argv, i, &o->frequency_penalty, &o->set_frequency, -1e6, 1e6);
    if (!strcmp(a, "--stop")) {
        if (!(v = args_value(argc, argv, i))) return -1;
        if (o->n_stops == TEXTGEN_MAX_STOPS) { fprintf(stderr, "qnext: at most %d --stop strings\n", TEXTGEN_MAX_STOPS); return -1; }
        if (!*v) { fprintf(stderr, "qnext: --stop needs a non-empty string\n"); return -1; }
        o->stops[o->n_stops++] = v;
        return 1;
    }
    if (!strcmp(a, "--system")) return (o->system = args_value(argc, argv, i)) ? 1 : -1;
    if (!strcmp(a, "--think")) { o->think = 1; return 1; }
    if (!strcmp(a, "--no-think")) { o->think = 0; return 1; }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { o->verbose = 1; return 1; }
    if (!strcmp(a, "--json")) { o->json_any = 1; return 1; }
    if (!strcmp(a, "--no-mmap")) { o->no_mmap = 1; return 1; }
    if (!strcmp(a, "--repack")) { o->repack = 1; return 1; }
    if (!strcmp(a, "--act-bits")) return (v = args_value(argc, argv, i)) && (o->act_bits = args_act_bits(v)) >= 0 ? 1 : -1;
    if (!strcmp(a, "-j") || !strcmp(a, "--json-schema")) return (o->json_schema = args_value(argc, argv, i)) ? 1 : -1;
    if (!strcmp(a, "--json-schema-file")) {
        if (!(v = args_value(argc, argv, i))) return -1;
        FILE *f = fopen(v, "rb");
        if (!f) { fprintf(stderr, "qnext: --json-schema-file: cannot open %s\n", v); return -1; }
        size_t cap = 1 << 16, n = 0;
        char *buf = malloc(cap + 1);
        for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
            n += got;
            if (n == cap) {
                char *p = realloc(buf, 2 * cap + 1);
                if (!p) { free(buf); buf = NULL; break; }
                buf = p;
                cap *= 2;
            }
        }
        fclose(f);
        if (!buf) { fprintf(stderr, "qnext: out of memory\n"); return -1; }
        buf[n] = 0;
        /* the text lives as long as the options (the process): one file, kept in a static */
        static char *schema_file_text;
        free(schema_file_text);
        schema_file_text = buf;
        o->json_schema = buf;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ opening */

typedef struct {
    const char *what;
    volatile int done;
} spinner_state;

/* Shows an honest "still working" indicator: the model API reports no progress while it maps
 * and checks the weights, so this is a spinner with the elapsed time, not a fake percentage. */
static void *spinner_main(void *arg) {
    spinner_state *sp = arg;
    static const char frames[] = "|/-\\";
    double t0 = textgen_now();
    int shown = 0;
    for (int k = 0; !sp->done; k++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        double el = textgen_now() - t0;
        if (sp->done || el < 0.3) continue;
        fprintf(stderr, "\r%c %s  %.1f s", frames[k % 4], sp->what, el);
        fflush(stderr);
        shown = 1;
    }
    if (shown) fprintf(stderr, "\r\033[K");
    return NULL;
}

int textgen_open(textgen *g, const textgen_opts *o, int need_template, int spinner) {
    char err[1024];
    memset(g, 0, sizeof *g);
    if (!o->model_dir) { fprintf(stderr, "qnext: -m MODEL_DIR is required\n"); return 0; }
    qnext_model_params mp = {.n_threads = (int)o->threads, .quiet = 1, .no_mmap = o->no_mmap, .repack = o->repack,
                             .act_bits = o->act_bits};
    spinner_state sp = {.what = "opening the model", .done = 0};
    pthread_t th;
    int spin = spinner && isatty(2) && !pthread_create(&th, NULL, spinner_main, &sp);
    qnext_status st = qnext_model_open(o->model_dir, &mp, &g->model, err, sizeof err);
    if (spin) {
        sp.done = 1;
        pthread_join(th, NULL);
    }
    if (st) { fprintf(stderr, "qnext: %s\n", err); return 0; }
    const qnext_config *c = qnext_model_config(g->model);
    g->vocab = c->vocab_size;
    if (tokenizer_gguf_is_file(o->model_dir)) { /* a GGUF file: tokenizer and template from its metadata */
        if (tokenizer_gguf_load_file(o->model_dir, &g->tok, need_template ? &g->tmpl : NULL, err, sizeof err)) goto fail;
    } else if (!(g->tok = tokenizer_load_dir(o->model_dir, err, sizeof err))) goto fail;
    if (tokenizer_vocab_size(g->tok) > (size_t)g->vocab) {
        snprintf(err, sizeof err, "the tokenizer has %zu ids but the model only %d", tokenizer_vocab_size(g->tok),
                 g->vocab);
        goto fail;
    }
    if (need_template && !g->tmpl && !(g->tmpl = chat_template_load_dir(o->model_dir, err, sizeof err))) goto fail;

    /* sampling: generation_config.json, then the command line */
    g->sp = sampler_params_default();
    g->n_eos = 0;
    for (int i = 0; i < c->n_eos && g->n_eos < SAMPLER_MAX_EOS; i++) g->eos[g->n_eos++] = c->eos_token_ids[i];
    if (sampler_load_generation_config(o->model_dir, &g->sp, g->eos, &g->n_eos, SAMPLER_MAX_EOS, err, sizeof err) < 0)
        goto fail;
    if (o->set_temp) g->sp.temperature = (float)o->temp;
    if (o->set_top_k) g->sp.top_k = (int)o->top_k;
    if (o->set_top_p) g->sp.top_p = (float)o->top_p;
    if (o->set_min_p) g->sp.min_p = (float)o->min_p;
    if (o->set_repeat) g->sp.repetition_penalty = (float)o->repeat_penalty;
    if (o->set_presence) g->sp.presence_penalty = (float)o->presence_penalty;
    if (o->set_frequency) g->sp.frequency_penalty = (float)o->frequency_penalty;
    g->sp.seed = o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)(textgen_now() * 1e9) ^ (uint64_t)getpid();
    if (need_template) { /* the template's end of turn ends an answer even if no config lists it */
        int32_t im_end = tokenizer_token_id(g->tok, "<|im_end|>");
        int have = 0;
        for (int i = 0; i < g->n_eos; i++) have |= g->eos[i] == im_end;
        if (im_end >= 0 && !have && g->n_eos < SAMPLER_MAX_EOS) g->eos[g->n_eos++] = im_end;
    }
    if (!(g->smp = sampler_new(g->vocab, &g->sp, err, sizeof err))) goto fail;

    qnext_session_params spar = {.n_ctx = (int)o->n_ctx, .kv_type = o->kv_type, .state_type = o->state_type};
    if (qnext_session_new(g->model, &spar, &g->session, err, sizeof err)) goto fail;
    if (o->verbose || qnext_session_n_ctx(g->session) > 32768) {
        /* long contexts: say what the session will cost as it fills (pages are committed lazily) */
        qnext_session_memory mem;
        qnext_session_get_memory(g->session, &mem);
        fprintf(stderr, "qnext: context %d tokens: KV cache %s %.1f KiB/token, up to %.2f GiB as it fills; "
                        "recurrent state %.1f MiB; scratch %.1f MiB\n",
                qnext_session_n_ctx(g->session), mem.kv_name, mem.kv_bytes_per_token / 1024.0,
                mem.kv_bytes_max / 1073741824.0, mem.state_bytes / 1048576.0, mem.scratch_bytes / 1048576.0);
    }
    conversation_params cp = {.snapshot_token = tokenizer_token_id(g->tok, "<|im_start|>"),
                              .max_snapshots = o->max_snapshots};
    if (!(g->conv = conversation_new(g->model, g->session, &cp, err, sizeof err))) goto fail;
    if (!(g->logits = malloc((size_t)g->vocab * sizeof *g->logits))) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if (o->json_any || o->json_schema) { /* the answer's constraint (response_format in serve) */
        json *sj = NULL;
        char perr[256];
        if (o->json_schema && !(sj = json_parse(o->json_schema, strlen(o->json_schema), perr, sizeof perr))) {
            snprintf(err, sizeof err, "--json-schema: %s", perr);
            goto fail;
        }
        char cerr[384];
        g->jschema = jcon_schema_compile(sj, cerr, sizeof cerr);
        json_free(sj);
        if (!g->jschema) { snprintf(err, sizeof err, "--json-schema: %s", cerr); goto fail; }
        g->jvocab = jcon_vocab_new(g->tok, g->vocab, g->eos, g->n_eos);
        g->masked = malloc((size_t)g->vocab * sizeof *g->masked);
        if (!g->jvocab || !g->masked) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    }
    g->think_open = tokenizer_token_id(g->tok, "<think>");
    g->think_close = tokenizer_token_id(g->tok, "</think>");
    if (o->think >= 0) {
        g->kwargs = json_new(JSON_OBJECT);
        json *b = json_new(o->think ? JSON_TRUE : JSON_FALSE);
        if (!g->kwargs || !b || !json_object_set(g->kwargs, "enable_thinking", b)) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
    }
    return 1;
fail:
    fprintf(stderr, "qnext: %s\n", err);
    textgen_close(g);
    return 0;
}

void textgen_close(textgen *g) {
    conversation_free(g->conv);
    qnext_session_free(g->session);
    sampler_free(g->smp);
    chat_template_free(g->tmpl);
    tokenizer_free(g->tok);
    qnext_model_close(g->model);
    free(g->logits);
    json_free(g->kwargs);
    jcon_schema_free(g->jschema);
    jcon_vocab_free(g->jvocab);
    free(g->masked);
    memset(g, 0, sizeof *g);
}

int textgen_render(textgen *g, const json *messages, int32_t **ids, size_t *n_ids, char **prompt_text, char *err,
                   size_t errlen) {
    char *text = NULL;
    size_t len = 0;
    if (chat_template_render(g->tmpl, messages, NULL, 1, g->kwargs, &text, &len, err, errlen)) return 0;
    if (ids && tokenizer_encode(g->tok, text, len, ids, n_ids)) {
        free(text);
        snprintf(err, errlen, "out of memory tokenizing the prompt");
        return 0;
    }
    if (prompt_text) *prompt_text = text;
    else free(text);
    return 1;
}

/* ------------------------------------------------------------------ generation */

typedef struct {
    char *buf;
    size_t len, cap;
} text_buf;

static int text_append(text_buf *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->len + n + 1) * 2;
        char *nb = realloc(t->buf, cap);
        if (!nb) return 0;
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return 1;
}

static int emit_text(text_buf *t, const char *s, size_t n, void (*emit)(void *, const char *, size_t), void *ud) {
    if (!n) return 1;
    if (emit) emit(ud, s, n);
    return text_append(t, s, n);
}

/* Whether the fed prompt leaves the model inside its reasoning: the text of the last turn (from
 * the last <|im_start|>) judged as the server judges a rendered prompt, so that a "<think>"
 * typed in a user message does not count. 1, 0, or -1 when out of memory. */
static int prompt_opens_think(const textgen *g, const int32_t *fed, int n_fed) {
    const int32_t im_start = tokenizer_token_id(g->tok, "<|im_start|>");
    int from = n_fed;
    while (from > 0 && fed[from - 1] != im_start) from--;
    if (from == 0) return 0; /* no turn header: a raw prompt */
    char *text = NULL;
    size_t len = 0;
    if (tokenizer_decode(g->tok, fed + from - 1, (size_t)(n_fed - from + 1), &text, &len)) return -1;
    int open = chat_prompt_opens_think(text, len);
    free(text);
    return open;
}

int textgen_generate(textgen *g, const textgen_opts *o, void (*emit)(void *ud, const char *s, size_t n), void *ud,
                     volatile sig_atomic_t *interrupt, textgen_result *res, char *err, size_t errlen) {
    memset(res, 0, sizeof *res);
    text_buf out = {0};
    tokenizer_stream ts;
    tokenizer_stream_init(&ts, g->tok);
    size_t piece_cap = tokenizer_stream_out_max(g->tok);
    char *piece = malloc(piece_cap);
    stop_matcher sm;
    int rc = -1;
    if (!piece || stop_matcher_init(&sm, o->stops, o->n_stops, err, errlen)) {
        free(piece);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int n_fed;
    const int32_t *fed = conversation_tokens(g->conv, &n_fed);
    sampler_reset_history(g->smp);
    sampler_set_prompt(g->smp, fed, n_fed);
    /* --json: the constraint starts with the answer, which in a reasoning turn (the prompt
     * leaves a <think> open) is after the model's </think> */
    jcon *jc = g->jschema ? jcon_new(g->jschema, g->jvocab) : NULL;
    int reasoning = g->think_open >= 0 ? prompt_opens_think(g, fed, n_fed) : 0;
    if (reasoning < 0) { snprintf(err, errlen, "out of memory"); jcon_free(jc); free(piece); stop_matcher_free(&sm); return -1; }
    if (g->jschema && !jc) { snprintf(err, errlen, "out of memory"); free(piece); stop_matcher_free(&sm); return -1; }
    int n_ctx = qnext_session_n_ctx(g->session);
    double t0 = textgen_now();
    res->finish = FINISH_LENGTH;
    for (;;) {
        if (interrupt && *interrupt) { res->finish = FINISH_INTERRUPT; break; }
        if (o->n_predict >= 0 && res->n_generated >= o->n_predict) { res->finish = FINISH_LENGTH; break; }
        int32_t tok;
        if (jc && !reasoning) {
            memcpy(g->masked, g->logits, (size_t)g->vocab * sizeof *g->masked);
            tok = jcon_mask(jc, g->masked) > 0 ? sampler_sample(g->smp, g->masked, NULL) : g->eos[0];
            jcon_accept(jc, tok);
        } else
            tok = sampler_sample(g->smp, g->logits, NULL);
        if (tok == g->think_close) reasoning = 0;
        res->n_generated++;
        int is_eos = 0;
        for (int i = 0; i < g->n_eos; i++) is_eos |= tok == g->eos[i];
        if (is_eos) { res->finish = FINISH_EOS; break; }
        sampler_accept(g->smp, tok);
        size_t n = tokenizer_stream_put(&ts, tok, piece, piece_cap), m;
        const char *rel = stop_matcher_push(&sm, piece, n, &m);
        if (!rel || !emit_text(&out, rel, m, emit, ud)) { snprintf(err, errlen, "out of memory"); goto done; }
        if (sm.stopped >= 0) { res->finish = FINISH_STOP; break; }
        if (o->n_predict >= 0 && res->n_generated >= o->n_predict) { res->finish = FINISH_LENGTH; break; }
        int pos;
        conversation_tokens(g->conv, &pos);
        if (pos + 1 > n_ctx) { res->finish = FINISH_CONTEXT; break; }
        if (conversation_feed(g->conv, &tok, 1, g->logits, err, errlen)) goto done;
    }
    if (res->finish != FINISH_STOP) { /* release what the decoder and the matcher still hold */
        size_t n = tokenizer_stream_flush(&ts, piece, piece_cap), m;
        const char *rel = stop_matcher_push(&sm, piece, n, &m);
        if (!rel || !emit_text(&out, rel, m, emit, ud)) { snprintf(err, errlen, "out of memory"); goto done; }
        if (sm.stopped >= 0) res->finish = FINISH_STOP;
        else {
            rel = stop_matcher_flush(&sm, &m);
            if (!emit_text(&out, rel, m, emit, ud)) { snprintf(err, errlen, "out of memory"); goto done; }
        }
    }
    rc = 0;
done:
    res->seconds = textgen_now() - t0;
    if (!out.buf) text_append(&out, "", 0);
    res->text = out.buf;
    res->text_len = out.len;
    if (rc) res->finish = FINISH_ERROR;
    free(piece);
    stop_matcher_free(&sm);
    jcon_free(jc);
    return rc;
}
