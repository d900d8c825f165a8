/* server.h - the pieces of `qnext serve` shared by the HTTP front end (http.c) and the
 * engine thread (engine.c).
 *
 * Threads: libmicrohttpd runs one thread per connection; each parses and validates its
 * request, renders the prompt and tokenizes it, then hands a serve_req to the engine and
 * waits on the request's condition variable. One engine thread owns the model: every step it
 * admits queued requests into free slots, runs ONE qnext_batch_feed over all slots (one token
 * for each generating slot plus a prefill chunk of a new prompt), samples, and appends the
 * formatted output (SSE chunks or the final JSON body) to each request's buffer. */
#ifndef QNEXT_SERVE_SERVER_H
#define QNEXT_SERVE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "qnext.h"
#include "text/json_constraint.h"
#include "text/sampler.h"
#include "text/stop.h"
#include "text/tokenizer.h"

typedef struct { char *p; size_t n, cap; } sv_buf;
int sv_buf_add(sv_buf *b, const char *s, size_t n);
int sv_buf_addf(sv_buf *b, const char *fmt, ...);
void sv_buf_free(sv_buf *b);
/* Appends a string literal (its length is known at compile time). */
#define SV_LIT(b, lit) sv_buf_add((b), (lit), sizeof(lit) - 1)

typedef struct {
    const char *model_dir;
    const char *host;
    int port;
    int parallel;        /* slots decoding together */
    int n_ctx;           /* context per slot */
    const char *api_key; /* NULL: no authentication */
    long cache_mb;       /* conversation cache budget (snapshots + idle contexts) */
    int queue_max;       /* requests waiting for a slot */
    int queue_wait;      /* 1: a full queue makes clients wait; 0: 429 */
    long max_body;       /* bytes */
    int threads;         /* compute threads (0: all cores) */
    int no_mmap;         /* read the weights into memory instead of mapping them */
    int repack;          /* qnext_model_params.repack */
    int act_bits;        /* qnext_model_params.act_bits */
    int prefill_chunk;   /* tokens of a prompt per engine step */
    int kv_type;         /* QNEXT_KV_* of every slot's cache (QNEXT_KV_AUTO: the model's default) */
    int state_type;      /* QNEXT_STATE_* of every slot's recurrent states */
    int drain_s;         /* seconds SIGTERM lets running requests finish before cancelling them */
    const char *model_name; /* reported in /v1/models and responses */
} serve_options;

enum { REQ_CHAT = 0, REQ_COMPLETION = 1 };
#define SV_MAX_CHOICES 16 /* the largest n a request may ask for */

typedef struct output_parser output_parser;

typedef struct serve_req {
    /* ---- set by the HTTP thread before submit, read-only afterwards */
    int kind, stream, include_usage;
    int32_t *prompt;
    int n_prompt;
    int max_tokens;
    sampler *smp;
    int logprobs, top_logprobs;      /* chat: logprobs bool + top_logprobs; completion: logprobs = N+1 when set */
    stop_matcher stop;
    int start_in_reasoning, parse_tools;
    int ignore_eos;      /* vLLM extension: keep generating past end-of-sequence tokens */
    int n_choices;       /* the request's n: the HTTP thread runs n requests, one per choice */
    int choice;          /* this one's index among them */
    /* tool_choice "required" or a named function forces one call, from the first generated
     * token, or in a reasoning turn from the first one after </think>. The engine writes the
     * opening (`<tool_call>\n{"name": `, with a named function also its name and
     * `, "arguments": `); with "required" the model writes the name, masked to one of the
     * tools' names, and the engine the separator; the model writes the arguments, masked to
     * that tool's parameters schema (any object when the schema is not supported); the engine
     * closes the call (`}\n</tool_call>`) and ends the turn. */
    int32_t *forced, *sep, *close; /* opening, separator, closing tokens */
    int n_forced, n_sep, n_close;
    jcon_schema *name_schema;      /* required: an enum of the tools' names */
    int n_tools;
    jcon_schema **tool_schema;     /* per tool: its arguments */
    char **tool_name;              /* per tool: its name as compact JSON (with the quotes) */
    int forced_tool;               /* named: the tool's index */
    /* response_format json_object / json_schema: the compiled schema. The engine's matcher
     * (jc, below) masks every draw from the first token after any reasoning. */
    jcon_schema *jschema;
    char id[48];
    int64_t created;

    /* ---- shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sv_buf out;          /* bytes for the client: SSE text (stream) or the JSON body when done */
    size_t out_sent;
    int done;            /* the engine has finished with this request */
    int http_status;     /* for a non-streaming response */
    atomic_int cancelled;/* client went away / shutdown: the engine drops it at the next step */
    int refs;            /* 2 while both the HTTP thread and the engine hold it */

    /* ---- engine-private */
    struct serve_req *next;  /* queue link */
    int n_cached;            /* prompt tokens reused from the conversation cache */
    int n_gen;               /* tokens sampled */
    int finish;              /* finish reason code */
    int sent_role;
    tokenizer_stream ts;
    output_parser *parser;   /* chat */
    sv_buf text;             /* completion: the text so far */
    void *priv;              /* engine bookkeeping (logprob entries) */
    int n_tool_calls_sent;
    int force_armed;         /* the forced call may start (reasoning, if any, has ended) */
    int call;                /* where the forced call is: CALL_* in engine.c */
    int call_at;             /* tokens of the current fixed part written */
    int n_fixed;             /* tokens the engine wrote instead of drawing */
    jcon *call_jc;           /* the forced call's name or arguments matcher */
    sv_buf call_name;        /* required: the bytes of the name as the model wrote it */
    jcon *jc;                /* response_format's matcher (NULL: unconstrained) */
    int64_t t_submit_us, t_first_us;
} serve_req;

typedef struct serve_engine serve_engine;

/* Loads nothing itself: takes the opened model and tokenizer. Starts the engine thread. */
serve_engine *engine_start(qnext_model *m, const qnext_tokenizer *tok, const serve_options *o, const char *model_name,
                           char *err, size_t errlen);
/* Queues a request (takes a reference). Returns 0, 1 when the queue is full (caller answers 429
 * or waits), 2 when shutting down. */
int engine_submit(serve_engine *e, serve_req *r);
/* Waits until the queue has room or the timeout passes; returns 1 when it has room. */
int engine_wait_room(serve_engine *e, int timeout_ms);
/* Drops one reference; frees the request at zero. */
void req_release(serve_req *r);
/* SIGTERM: refuse new requests, let running ones finish for drain_s seconds, cancel the rest,
 * stop the thread. */
void engine_shutdown(serve_engine *e, int drain_s);
void engine_free(serve_engine *e);
/* Prometheus text for /metrics (malloc'd). */
char *engine_metrics(serve_engine *e);
int engine_vocab(const serve_engine *e);
int engine_n_ctx(const serve_engine *e);
/* Count an HTTP request / an error answered without reaching the engine. */
void engine_count_http(serve_engine *e, int is_error);

/* Writes s as a JSON string literal (with quotes) into b. */
int sv_json_str(sv_buf *b, const char *s, size_t n);
/* The start of an SSE chunk of r: `data: {"id":..,"object":..,"created":..,"model":..` */
void sv_chunk_head(sv_buf *b, const serve_req *r, const char *model_name);
/* The "usage" object: prompt, completion and total tokens, and the cached prompt tokens. */
void sv_usage_json(sv_buf *b, int n_prompt, int n_gen, int n_cached);

/* Entry point used by cmd_serve.c: runs until SIGTERM/SIGINT. Returns the exit code. */
int serve_main(const serve_options *o);

#endif
