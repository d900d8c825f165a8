/* cmd_chat.c - `qnext chat`: an interactive conversation in the terminal.
 *
 * The session is kept between turns and never re-processes the history: each turn renders
 * the whole conversation with the chat template, tokenizes it, and conversation_sync feeds
 * only what differs from the ids already in the session (rewinding to a snapshot at a
 * message boundary when the template rewrote an earlier turn, as Qwen3's Thinking template
 * does with old reasoning). Line editing and history come from libedit when it is available
 * and stdin is a terminal; otherwise lines are read with fgets. Ctrl-C stops the answer
 * being generated, not the program. */
#define _POSIX_C_SOURCE 200809L /* sigaction, strdup */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef QNEXT_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

#include "args.h"
#include "cli.h"
#include "textgen.h"

static const char CHAT_USAGE_HEAD[] =
    "usage: qnext chat -m MODEL_DIR [options]\n"
    "  Interactive chat. End a line with \\ to continue it, or wrap several lines in \"\"\" ... \"\"\".\n"
    "  Commands: /system TEXT, /reset, /save FILE, /load FILE, /help, /quit. Ctrl-C stops an answer.\n"
    "  --hide-thinking          do not show the text between <think> and </think>\n"
    "  --max-snapshots N        session snapshots kept for rewinds (default 16)\n";

static const char CHAT_HELP[] =
    "  /system TEXT   set the system message (empty TEXT removes it)\n"
    "  /reset         forget the conversation (the system message stays)\n"
    "  /save FILE     write the messages as JSON\n"
    "  /load FILE     read messages (a JSON array of {role, content}) and continue from them\n"
    "  /help          this help\n"
    "  /quit          leave (Ctrl-D too)\n"
    "  A line ending in \\ continues on the next line; \"\"\" starts and ends a multi-line block.\n"
    "  Ctrl-C stops the answer being generated.\n";

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* ------------------------------------------------------------------ input */

typedef struct {
    char *buf;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) return 0;
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
    return 1;
}

/* One line without its newline (malloc'd), or NULL at end of input. A Ctrl-C at the prompt
 * (which makes libedit or fgets give up on the line) just asks again. */
static char *read_line(int use_edit, const char *prompt) {
    for (;;) {
        interrupted = 0;
#ifdef QNEXT_HAVE_LIBEDIT
        if (use_edit) {
            char *l = readline(prompt);
            if (!l && interrupted) { fputs("\n", stdout); continue; }
            return l;
        }
#endif
        (void)use_edit;
        if (prompt && isatty(0)) {
            fputs(prompt, stdout);
            fflush(stdout);
        }
        strbuf b = {0};
        char chunk[4096];
        while (fgets(chunk, sizeof chunk, stdin)) {
            size_t n = strlen(chunk);
            if (!sb_add(&b, chunk, n)) break;
            if (n && chunk[n - 1] == '\n') break;
        }
        if (!b.buf && interrupted && ferror(stdin)) {
            clearerr(stdin);
            fputs("\n", stdout);
            continue;
        }
        if (!b.buf) return NULL;
        while (b.len && (b.buf[b.len - 1] == '\n' || b.buf[b.len - 1] == '\r')) b.buf[--b.len] = 0;
        return b.buf;
    }
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !memcmp(s + a - b, suf, b);
}

/* Reads one user input: a line, lines joined by a trailing backslash, or a """ block.
 * Returns NULL at end of input. */
static char *read_input(int use_edit) {
    strbuf b = {0};
    int in_block = 0, any = 0;
    for (;;) {
        char *line = read_line(use_edit, any ? "... " : ">>> ");
        if (!line) {
            if (!any) return NULL;
            break;
        }
        any = 1;
        char *l = line;
        if (in_block) {
            if (ends_with(l, "\"\"\"")) {
                sb_add(&b, l, strlen(l) - 3);
                free(line);
                break;
            }
            sb_add(&b, l, strlen(l));
            sb_add(&b, "\n", 1);
            free(line);
            continue;
        }
        if (b.len == 0 && !strncmp(l, "\"\"\"", 3)) {
            l += 3;
            if (strlen(l) >= 3 && ends_with(l, "\"\"\"")) { /* """one line""" */
                sb_add(&b, l, strlen(l) - 3);
                free(line);
                break;
            }
            in_block = 1;
            if (*l) {
                sb_add(&b, l, strlen(l));
                sb_add(&b, "\n", 1);
            }
            free(line);
            continue;
        }
        size_t n = strlen(l);
        if (n && l[n - 1] == '\\') {
            sb_add(&b, l, n - 1);
            sb_add(&b, "\n", 1);
            free(line);
            continue;
        }
        sb_add(&b, l, n);
        free(line);
        break;
    }
    if (!b.buf) sb_add(&b, "", 0);
#ifdef QNEXT_HAVE_LIBEDIT
    if (use_edit && b.buf && b.len) add_history(b.buf);
#endif
    return b.buf;
}

/* ------------------------------------------------------------------ messages */

static json *new_message(const char *role, const char *content, size_t len) {
    json *m = json_new(JSON_OBJECT), *r = json_new_string(role, strlen(role)), *c = json_new_string(content, len);
    if (!m || !r || !c || !json_object_set(m, "role", r) || !json_object_set(m, "content", c)) {
        json_free(m);
        return NULL;
    }
    return m;
}

static int is_role(const json *m, const char *role) {
    const char *r = json_get_string(m, "role");
    return r && !strcmp(r, role);
}

/* Removes the last item of an array. */
static void array_pop(json *arr) {
    if (arr->n) json_free(arr->items[--arr->n]);
}

/* Sets (or, with an empty text, removes) the system message at the front. */
static int set_system(json *msgs, const char *text) {
    int has = msgs->n && is_role(msgs->items[0], "system");
    if (!*text) {
        if (has) {
            json_free(msgs->items[0]);
            memmove(msgs->items, msgs->items + 1, (msgs->n - 1) * sizeof *msgs->items);
            msgs->n--;
        }
        return 1;
    }
    json *m = new_message("system", text, strlen(text));
    if (!m) return 0;
    if (has) {
        json_free(msgs->items[0]);
        msgs->items[0] = m;
        return 1;
    }
    if (!json_array_push(msgs, m)) { json_free(m); return 0; }
    memmove(msgs->items + 1, msgs->items, (msgs->n - 1) * sizeof *msgs->items);
    msgs->items[0] = m;
    return 1;
}

static int save_messages(const json *msgs, const char *path) {
    size_t len;
    char *text = json_write_compact(msgs, &len);
    if (!text) { fprintf(stderr, "out of memory\n"); return 0; }
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(text);
    if (!ok) fprintf(stderr, "cannot write %s\n", path);
    return ok;
}

/* Reads a JSON array of {role, content} objects with string roles; NULL (and a message) otherwise. */
static json *load_messages(const char *path) {
    char err[512];
    json *j = json_parse_file(path, err, sizeof err);
    if (!j) { fprintf(stderr, "%s\n", err); return NULL; }
    if (j->type != JSON_ARRAY) { fprintf(stderr, "%s: not a JSON array of messages\n", path); json_free(j); return NULL; }
    for (size_t i = 0; i < j->n; i++)
        if (j->items[i]->type != JSON_OBJECT || !json_get_string(j->items[i], "role")) {
            fprintf(stderr, "%s: message %zu has no role\n", path, i);
            json_free(j);
            return NULL;
        }
    return j;
}

/* ------------------------------------------------------------------ answer display */

/* Shows the answer as it streams: the text between <think> and </think> dimmed (or hidden);
 * a tag cut across pieces is held until it is complete. */
typedef struct {
    int in_think, hide, ansi;
    int dimmed; /* the terminal is in the dim style now */
    strbuf pend;
} display;

static void set_dim(display *d, int on) {
    if (d->ansi && d->dimmed != on) fputs(on ? "\033[2m" : "\033[0m", stdout);
    d->dimmed = on;
}

static void show(display *d, const char *s, size_t n) {
    if (!n || (d->in_think && d->hide)) return;
    set_dim(d, d->in_think);
    fwrite(s, 1, n, stdout);
}

static void display_emit(void *ud, const char *s, size_t n) {
    display *d = ud;
    static const char OPEN[] = "<think>", CLOSE[] = "</think>";
    sb_add(&d->pend, s, n);
    char *p = d->pend.buf;
    size_t left = d->pend.len;
    for (;;) {
        const char *tag = d->in_think ? CLOSE : OPEN;
        size_t tl = strlen(tag), i, keep = left;
        for (i = 0; i + tl <= left; i++)
            if (!memcmp(p + i, tag, tl)) break;
        if (i + tl <= left) { /* the tag: show what precedes it, switch */
            show(d, p, i);
            p += i + tl;
            left -= i + tl;
            d->in_think = !d->in_think;
            continue;
        }
        /* hold back the longest suffix that could begin the tag */
        for (i = left > tl ? left - tl + 1 : 0; i < left; i++)
            if (!memcmp(p + i, tag, left - i)) { keep = i; break; }
        show(d, p, keep);
        memmove(d->pend.buf, p + keep, left - keep);
        d->pend.len = left - keep;
        break;
    }
    fflush(stdout);
}

static void display_flush(display *d) {
    show(d, d->pend.buf ? d->pend.buf : "", d->pend.len);
    d->pend.len = 0;
    set_dim(d, 0);
    fflush(stdout);
}

/* ------------------------------------------------------------------ the loop */

int cmd_chat(int argc, char **argv) {
    textgen_opts o;
    textgen_opts_init(&o);
    int hide_thinking = 0;
    long max_snaps = 16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s%s", CHAT_USAGE_HEAD, TEXTGEN_OPTIONS_HELP);
            return 0;
        }
        int r = textgen_parse_option(argc, argv, &i, &o);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "--hide-thinking")) hide_thinking = 1;
        else if (!strcmp(a, "--max-snapshots")) {
            if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 1, 100000, &max_snaps)) return 2;
        } else {
            fprintf(stderr, "qnext: unknown option '%s'\n%s", a, CHAT_USAGE_HEAD);
            return 2;
        }
    }
    if (!o.model_dir) {
        fprintf(stderr, "qnext: chat needs -m MODEL_DIR\n%s", CHAT_USAGE_HEAD);
        return 2;
    }
    /* each snapshot holds every DeltaNet layer's state (~80 MB for the 80B model): keep few */
    o.max_snapshots = (int)max_snaps;
    textgen g;
    if (!textgen_open(&g, &o, 1, 1)) return 1;
    int use_edit = 0;
#ifdef QNEXT_HAVE_LIBEDIT
    use_edit = isatty(0) && isatty(1);
#endif
    int ansi = isatty(1) && getenv("NO_COLOR") == NULL;
    json *msgs = json_new(JSON_ARRAY);
    if (!msgs || (o.system && !set_system(msgs, o.system))) {
        fprintf(stderr, "qnext: out of memory\n");
        json_free(msgs);
        textgen_close(&g);
        return 1;
    }
    if (isatty(0)) fprintf(stderr, "qnext chat: %s. /help for commands, Ctrl-D to leave.\n", o.model_dir);
    /* Ctrl-C only raises a flag: generation checks it after every token; at the prompt it is
     * ignored (SA_RESTART resumes the read), so it never ends the program. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    int rc = 0;
    char err[1024];
    strbuf sess = {0}; /* the text that the session's ids encode, when known */
    for (;;) {
        char *in = read_input(use_edit);
        if (!in) break;
        if (in[0] == '/') {
            char *arg = in + 1 + strcspn(in + 1, " \t");
            size_t cmd_len = (size_t)(arg - in);
            while (*arg == ' ' || *arg == '\t') arg++;
#define IS(c) (cmd_len == strlen(c) && !strncmp(in, c, cmd_len))
            if (IS("/quit") || IS("/exit") || IS("/bye")) {
                free(in);
                break;
            } else if (IS("/help") || IS("/?")) {
                fputs(CHAT_HELP, stdout);
            } else if (IS("/system")) {
                if (!set_system(msgs, arg)) fprintf(stderr, "out of memory\n");
                else printf(*arg ? "(system message set)\n" : "(system message removed)\n");
            } else if (IS("/reset") || IS("/clear")) {
                while (msgs->n && !is_role(msgs->items[msgs->n - 1], "system")) array_pop(msgs);
                conversation_reset(g.conv);
                printf("(conversation reset)\n");
            } else if (IS("/save")) {
                if (!*arg) fprintf(stderr, "usage: /save FILE\n");
                else if (save_messages(msgs, arg)) printf("(saved %zu messages to %s)\n", msgs->n, arg);
            } else if (IS("/load")) {
                json *l = !*arg ? (fprintf(stderr, "usage: /load FILE\n"), NULL) : load_messages(arg);
                if (l) {
                    json_free(msgs);
                    msgs = l;
                    printf("(loaded %zu messages from %s)\n", msgs->n, arg);
                }
            } else {
                fprintf(stderr, "unknown command %.*s; /help lists them\n", (int)cmd_len, in);
            }
#undef IS
            fflush(stdout);
            free(in);
            continue;
        }
        if (!*in) { free(in); continue; }
        json *um = new_message("user", in, strlen(in));
        free(in);
        if (!um || !json_array_push(msgs, um)) { json_free(um); fprintf(stderr, "out of memory\n"); rc = 1; break; }

        /* The whole conversation, rendered and tokenized; only the new part is fed. When the
         * rendering starts with the text the session already holds (the previous prompt and
         * the answer as generated), those ids are kept as they are and only the rest is
         * tokenized: the answer stays in the model's own tokens, which a re-tokenization of
         * its text need not reproduce. Otherwise (an earlier turn was rewritten) the whole
         * text is tokenized and conversation_sync rewinds as far as needed. */
        int32_t *ids = NULL;
        size_t n_ids = 0;
        char *prompt = NULL;
        size_t prompt_len = 0;
        if (!textgen_render(&g, msgs, NULL, NULL, &prompt, err, sizeof err)) {
            fprintf(stderr, "qnext: %s\n", err);
            array_pop(msgs);
            continue;
        }
        prompt_len = strlen(prompt);
        int n_have;
        const int32_t *have = conversation_tokens(g.conv, &n_have);
        int spliced = 0;
        if (sess.buf && n_have && sess.len <= prompt_len && !memcmp(prompt, sess.buf, sess.len)) {
            int32_t *rest = NULL;
            size_t n_rest = 0;
            if (!tokenizer_encode(g.tok, prompt + sess.len, prompt_len - sess.len, &rest, &n_rest) &&
                (ids = malloc((n_have + n_rest + 1) * sizeof *ids))) {
                memcpy(ids, have, (size_t)n_have * sizeof *ids);
                if (n_rest) memcpy(ids + n_have, rest, n_rest * sizeof *ids);
                n_ids = n_have + n_rest;
                spliced = 1;
            }
            free(rest);
        }
        if (!spliced && tokenizer_encode(g.tok, prompt, prompt_len, &ids, &n_ids)) {
            fprintf(stderr, "qnext: out of memory\n");
            array_pop(msgs);
            free(prompt);
            continue;
        }
        interrupted = 0; /* a Ctrl-C from here on stops this answer (after the prompt is read in) */
        double t0 = textgen_now();
        conversation_stats cs;
        qnext_status st = conversation_sync(g.conv, ids, (int)n_ids, g.logits, &cs, err, sizeof err);
        double t_prompt = textgen_now() - t0;
        free(ids);
        if (st) {
            fprintf(stderr, "qnext: %s%s\n", err, st == QNEXT_ERR_CONTEXT ? " (/reset starts over)" : "");
            array_pop(msgs);
            free(prompt);
            free(sess.buf);
            sess = (strbuf){0};
            continue;
        }
        if (o.verbose)
            fprintf(stderr, "[context: %zu tokens; reused %d tokens, fed %d%s; %.1f tok/s]\n", n_ids, cs.n_reused,
                    cs.n_fed, cs.rewound ? " (rewound to a snapshot)" : "",
                    t_prompt > 0 && cs.n_fed ? cs.n_fed / t_prompt : 0.0);
        if (conversation_mark(g.conv, err, sizeof err)) fprintf(stderr, "qnext: %s\n", err);
        int n_prompt_ids = (int)n_ids;
        sess.len = 0;
        sb_add(&sess, prompt, prompt_len);

        display d = {.hide = hide_thinking, .ansi = ansi};
        /* a template that opens the answer with <think> starts it in thinking mode */
        size_t pl = strlen(prompt);
        while (pl && (prompt[pl - 1] == '\n' || prompt[pl - 1] == ' ')) pl--;
        d.in_think = pl >= 7 && !memcmp(prompt + pl - 7, "<think>", 7);
        free(prompt);

        textgen_result res;
        int gr = textgen_generate(&g, &o, display_emit, &d, &interrupted, &res, err, sizeof err);
        display_flush(&d);
        free(d.pend.buf);
        printf("\n");
        fflush(stdout);
        if (gr) fprintf(stderr, "qnext: %s\n", err);
        { /* the session now holds the prompt and the answer's ids that were fed */
            int n_now;
            const int32_t *now = conversation_tokens(g.conv, &n_now);
            char *ans = NULL;
            size_t ans_len = 0;
            if (n_now >= n_prompt_ids && !tokenizer_decode(g.tok, now + n_prompt_ids, (size_t)(n_now - n_prompt_ids), &ans, &ans_len))
                sb_add(&sess, ans, ans_len);
            else {
                free(sess.buf);
                sess = (strbuf){0};
            }
            free(ans);
        }
        if (res.finish == FINISH_INTERRUPT) fprintf(stderr, "(stopped)\n");
        if (res.finish == FINISH_CONTEXT) fprintf(stderr, "(the context is full; /reset starts over)\n");
        fprintf(stderr, "%s[%d tokens, %.1f tok/s]%s\n", ansi ? "\033[2m" : "", res.n_generated,
                res.seconds > 0 ? res.n_generated / res.seconds : 0.0, ansi ? "\033[0m" : "");
        json *am = new_message("assistant", res.text ? res.text : "", res.text_len);
        free(res.text);
        if (!am || !json_array_push(msgs, am)) { json_free(am); fprintf(stderr, "out of memory\n"); rc = 1; break; }
    }
    if (isatty(0)) fputc('\n', stderr);
    free(sess.buf);
    json_free(msgs);
    textgen_close(&g);
    return rc;
}
