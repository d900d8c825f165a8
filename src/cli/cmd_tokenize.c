/* cmd_tokenize.c - `qnext tokenize` and `qnext detokenize`: the tokenizer from the command
 * line. They need only tokenizer.json in the model directory, so tests and tools can drive the
 * tokenizer without weights. `tokenize --bench N` measures encoding speed. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "cli.h"
#include "text/tokenizer.h"

static const char TOKENIZE_USAGE[] =
    "usage: qnext tokenize -m MODEL_DIR [--no-special] [-0] [--bench N [--chunk B]] < text\n"
    "  Reads UTF-8 text from stdin and prints its token ids on one line, separated by spaces.\n"
    "  --no-special  treat special-token text such as <|im_start|> as plain text\n"
    "  -0, --null    stdin holds several texts, each ended by a NUL byte; print one line per text\n"
    "  --bench N     encode the input N times and print the speed instead of the ids\n"
    "  --chunk B     with --bench: cut the input after the first newline past every B bytes and\n"
    "                encode the pieces separately (like many short documents)\n";

static const char DETOKENIZE_USAGE[] =
    "usage: qnext detokenize -m MODEL_DIR --ids \"1 2 3\" [--stream]\n"
    "  Prints the text of the ids (no newline added).\n"
    "  --stream      decode through the streaming decoder, one id at a time\n";

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now_seconds(void) { return clock_seconds(CLOCK_MONOTONIC); }

/* Reads all of stdin; returns a malloc'd buffer (NUL-terminated) or NULL. */
static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *p = realloc(buf, cap *= 2);
            if (!p) { free(buf); return NULL; }
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0) break;
    }
    if (ferror(stdin)) { free(buf); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

static qnext_tokenizer *open_tokenizer(const char *dir) {
    char err[1024];
    qnext_tokenizer *tok = tokenizer_load_dir(dir, err, sizeof err);
    if (!tok) fprintf(stderr, "qnext: %s\n", err);
    return tok;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *v;
    int parse_special = 1, nul_separated = 0;
    long bench = 0, chunk = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", TOKENIZE_USAGE); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--no-special")) parse_special = 0;
        else if (!strcmp(a, "-0") || !strcmp(a, "--null")) nul_separated = 1;
        else if (!strcmp(a, "--bench")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1 << 20, &bench)) return 2; }
        else if (!strcmp(a, "--chunk")) { if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 1L << 40, &chunk)) return 2; }
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, TOKENIZE_USAGE); return 2; }
    }
    if (!model) { fprintf(stderr, "qnext: -m MODEL_DIR is required\n%s", TOKENIZE_USAGE); return 2; }
    double t0 = now_seconds();
    qnext_tokenizer *tok = open_tokenizer(model);
    if (!tok) return 1;
    double t_load = now_seconds() - t0;
    size_t len = 0;
    char *text = read_stdin(&len);
    if (!text) { fprintf(stderr, "qnext: cannot read stdin\n"); tokenizer_free(tok); return 1; }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 0;
    if (bench) {
        /* One warm-up, then N timed encodes of the input on this thread (rep -1 is the warm-up). */
        double t1 = 0, c1 = 0;
        for (long r = -1; r < bench && !rc; r++) {
            if (r == 0) { t1 = now_seconds(); c1 = clock_seconds(CLOCK_PROCESS_CPUTIME_ID); }
            size_t total = 0;
            for (size_t pos = 0; pos < len && !rc;) {
                size_t end = len;
                if (chunk && (size_t)chunk < len - pos) {
                    const char *nl = memchr(text + pos + chunk, '\n', len - pos - (size_t)chunk);
                    end = nl ? (size_t)(nl - text) + 1 : len;
                }
                if (tokenizer_encode_ex(tok, text + pos, end - pos, parse_special, &ids, &n)) rc = 1;
                free(ids); ids = NULL;
                total += n;
                pos = end;
            }
            n = total;
        }
        double dt = now_seconds() - t1, dc = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - c1;
        if (!rc)
            printf("load %.3f s; encode %zu bytes x %ld%s: %zu tokens each; wall %.3f s = %.2f MB/s; "
                   "cpu %.3f s = %.2f MB/s\n", t_load, len, bench, chunk ? " in pieces" : "", n, dt, dt > 0 ? (double)len * bench / dt / 1e6 : 0.0,
                   dc, dc > 0 ? (double)len * bench / dc / 1e6 : 0.0);
    } else {
        /* One text, or NUL-terminated texts (a final piece without NUL counts too). */
        for (size_t pos = 0; !rc && (pos < len || (pos == 0 && !nul_separated));) {
            size_t end = len;
            if (nul_separated) {
                const char *z = memchr(text + pos, 0, len - pos);
                if (z) end = (size_t)(z - text);
            }
            if (tokenizer_encode_ex(tok, text + pos, end - pos, parse_special, &ids, &n) != 0) { rc = 1; break; }
            for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
            printf("\n");
            free(ids); ids = NULL;
            pos = end + 1;
            if (!nul_separated) break;
        }
    }
    if (rc) fprintf(stderr, "qnext: out of memory while tokenizing\n");
    free(ids);
    free(text);
    tokenizer_free(tok);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    const char *model = NULL, *id_list = NULL;
    int stream = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", DETOKENIZE_USAGE); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--ids")) { if (!(id_list = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--stream")) stream = 1;
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, DETOKENIZE_USAGE); return 2; }
    }
    if (!model || !id_list) { fprintf(stderr, "qnext: -m MODEL_DIR and --ids are required\n%s", DETOKENIZE_USAGE); return 2; }
    int32_t *ids = NULL;
    int n = 0;
    if (!args_parse_ids(id_list, &ids, &n)) return 2;
    qnext_tokenizer *tok = open_tokenizer(model);
    if (!tok) { free(ids); return 1; }
    int rc = 0;
    if (stream) {
        tokenizer_stream st;
        tokenizer_stream_init(&st, tok);
        size_t cap = tokenizer_stream_out_max(tok);
        char *buf = malloc(cap);
        for (int i = 0; buf && i <= n; i++) {
            size_t w = i < n ? tokenizer_stream_put(&st, ids[i], buf, cap) : tokenizer_stream_flush(&st, buf, cap);
            if (w == (size_t)-1) { rc = 1; break; }
            fwrite(buf, 1, w, stdout);
            fflush(stdout);
        }
        if (!buf) rc = 1;
        free(buf);
    } else {
        char *text = NULL;
        size_t len = 0;
        if (tokenizer_decode(tok, ids, (size_t)n, &text, &len) == 0) fwrite(text, 1, len, stdout);
        else rc = 1;
        free(text);
    }
    if (rc) fprintf(stderr, "qnext: decoding failed\n");
    free(ids);
    tokenizer_free(tok);
    return rc;
}
