/* textgen.h - what `qnext run` and `qnext chat` share: the sampling / stopping options, opening
 * a model directory with its tokenizer, chat template and generation_config.json, and the
 * generation loop that samples, streams text through the stop-string matcher and feeds each
 * token back through the conversation (src/text/conversation.h). */
#ifndef QNEXT_CLI_TEXTGEN_H
#define QNEXT_CLI_TEXTGEN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "qnext.h"
#include "text/chat_template.h"
#include "text/conversation.h"
#include "text/json_constraint.h"
#include "text/sampler.h"
#include "text/stop.h"
#include "text/tokenizer.h"

#define TEXTGEN_MAX_STOPS 64

typedef struct {
    const char *model_dir;
    long n_predict;          /* -1: until an eos id or the context is full */
    long threads, n_ctx;
    int kv_type;             /* QNEXT_KV_* (--kv-type) */
    int state_type;          /* QNEXT_STATE_* (--state-type) */
    long seed;               /* -1: not given (seeded from the clock) */
    /* sampling options given on the command line (they override generation_config.json) */
    double temp, top_k, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
    int set_temp, set_top_k, set_top_p, set_min_p, set_repeat, set_presence, set_frequency;
    const char *stops[TEXTGEN_MAX_STOPS];
    int n_stops;
    int think;               /* -1: not given; 0/1: enable_thinking for the template */
    const char *system;
    int verbose;
    int max_snapshots;       /* for the conversation (0: its default) */
    int no_mmap;             /* --no-mmap: read the weights into memory */
    int repack;              /* --repack: qnext_model_params.repack */
    int act_bits;            /* --act-bits: qnext_model_params.act_bits */
    int json_any;            /* --json: the answer is a JSON object */
    const char *json_schema; /* --json-schema TEXT (or the text of --json-schema-file) */
} textgen_opts;

void textgen_opts_init(textgen_opts *o);
/* Handles argv[*i] when it is one of the shared options (advancing *i past a value).
 * Returns 1 when handled, 0 when not one of them, -1 on a bad value (message printed). */
int textgen_parse_option(int argc, char **argv, int *i, textgen_opts *o);
/* The help text of the shared options. */
extern const char TEXTGEN_OPTIONS_HELP[];

typedef struct {
    qnext_model *model;
    qnext_tokenizer *tok;
    chat_template *tmpl;      /* NULL when not needed (--raw) */
    qnext_session *session;
    conversation *conv;
    sampler *smp;
    sampler_params sp;
    int32_t eos[SAMPLER_MAX_EOS];
    int n_eos;
    int vocab;
    float *logits;            /* vocab floats: after the last fed token */
    json *kwargs;             /* template variables (enable_thinking) or NULL */
    jcon_schema *jschema;     /* --json / --json-schema: the answer's constraint, or NULL */
    jcon_vocab *jvocab;
    float *masked;            /* vocab floats: logits with the constraint's mask */
    int32_t think_open, think_close; /* <think> / </think> ids (-1 when absent) */
} textgen;

/* Opens everything; prints one error line and returns 0 on failure. With a spinner, an
 * animation with the elapsed time runs on stderr (when it is a terminal) while the weights
 * are opened and checked. */
int textgen_open(textgen *g, const textgen_opts *o, int need_template, int spinner);
void textgen_close(textgen *g);

/* Renders messages (a JSON array) with the template and an open assistant turn into
 * *prompt_text (malloc'd, may be NULL) and tokenizes it into *ids (when ids is not NULL).
 * Returns 0 with a message in err on failure. */
int textgen_render(textgen *g, const json *messages, int32_t **ids, size_t *n_ids, char **prompt_text, char *err,
                   size_t errlen);

typedef enum { FINISH_EOS, FINISH_STOP, FINISH_LENGTH, FINISH_CONTEXT, FINISH_INTERRUPT, FINISH_ERROR } textgen_finish;

typedef struct {
    int n_generated;     /* tokens sampled (the eos id, when it came, included) */
    double seconds;      /* from the first sample to the end */
    textgen_finish finish;
    char *text;          /* malloc'd: everything emitted (without the stop string) */
    size_t text_len;
} textgen_result;

/* Generates from g->logits (the session must be at the end of the prompt), calling emit
 * with each piece of text as soon as it is final. Stops at an eos id, a stop string, the
 * token limit, a full context, or when *interrupt becomes non-zero. Returns 0 on success
 * (whatever the finish reason) or -1 with a message in err. */
int textgen_generate(textgen *g, const textgen_opts *o, void (*emit)(void *ud, const char *s, size_t n), void *ud,
                     volatile sig_atomic_t *interrupt, textgen_result *res, char *err, size_t errlen);

double textgen_now(void);

#endif
