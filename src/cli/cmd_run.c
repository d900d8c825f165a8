/* cmd_run.c - `qnext run`: one prompt, one streamed answer. The prompt goes through the
 * model's chat template (a system and a user message) unless --raw asks for a plain
 * completion of the text. The answer is printed token by token as it is generated; the
 * speed goes to stderr at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "textgen.h"

static const char RUN_USAGE_HEAD[] =
    "usage: qnext run -m MODEL_DIR -p TEXT [options]\n"
    "  Streams the model's answer to TEXT (rendered with the chat template) to stdout.\n"
    "  -p, --prompt TEXT        the user message (or, with --raw, the text to continue)\n"
    "  --raw                    no chat template: continue TEXT as it is\n";

static void emit_stdout(void *ud, const char *s, size_t n) {
    (void)ud;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

static json *message(const char *role, const char *content) {
    json *m = json_new(JSON_OBJECT), *r = json_new_string(role, strlen(role)),
         *c = json_new_string(content, strlen(content));
    if (!m || !r || !c || !json_object_set(m, "role", r) || !json_object_set(m, "content", c)) {
        json_free(m);
        return NULL;
    }
    return m;
}

int cmd_run(int argc, char **argv) {
    textgen_opts o;
    textgen_opts_init(&o);
    const char *prompt = NULL;
    int raw = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s%s", RUN_USAGE_HEAD, TEXTGEN_OPTIONS_HELP);
            return 0;
        }
        int r = textgen_parse_option(argc, argv, &i, &o);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(prompt = args_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--raw")) raw = 1;
        else {
            fprintf(stderr, "qnext: unknown option '%s'\n%s", a, RUN_USAGE_HEAD);
            return 2;
        }
    }
    if (!o.model_dir || !prompt) {
        fprintf(stderr, "qnext: run needs -m MODEL_DIR and -p TEXT\n%s", RUN_USAGE_HEAD);
        return 2;
    }
    if (raw && (o.system || o.think >= 0)) {
        fprintf(stderr, "qnext: --system and --think/--no-think need the chat template (not --raw)\n");
        return 2;
    }
    textgen g;
    if (!textgen_open(&g, &o, !raw, 1)) return 1;
    int rc = 1;
    char err[1024];
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (raw) {
        if (tokenizer_encode(g.tok, prompt, strlen(prompt), &ids, &n_ids)) { fprintf(stderr, "qnext: out of memory\n"); goto out; }
    } else {
        json *msgs = json_new(JSON_ARRAY);
        if (o.system) json_array_push(msgs, message("system", o.system));
        json_array_push(msgs, message("user", prompt));
        int ok = textgen_render(&g, msgs, &ids, &n_ids, NULL, err, sizeof err);
        json_free(msgs);
        if (!ok) { fprintf(stderr, "qnext: %s\n", err); goto out; }
    }
    if (n_ids == 0) { fprintf(stderr, "qnext: the prompt is empty\n"); goto out; }
    double t0 = textgen_now();
    if (conversation_sync(g.conv, ids, (int)n_ids, g.logits, NULL, err, sizeof err)) {
        fprintf(stderr, "qnext: %s\n", err);
        goto out;
    }
    double t_prompt = textgen_now() - t0;
    textgen_result res;
    if (textgen_generate(&g, &o, emit_stdout, NULL, NULL, &res, err, sizeof err)) {
        fprintf(stderr, "\nqnext: %s\n", err);
        free(res.text);
        goto out;
    }
    printf("\n");
    fflush(stdout);
    static const char *why[] = {"end token", "stop string", "token limit", "context full", "interrupted", "error"};
    fprintf(stderr, "[prompt: %zu tokens, %.1f tok/s | answer: %d tokens, %.1f tok/s | %s]\n", n_ids,
            t_prompt > 0 ? n_ids / t_prompt : 0.0, res.n_generated,
            res.seconds > 0 ? res.n_generated / res.seconds : 0.0, why[res.finish]);
    free(res.text);
    rc = 0;
out:
    free(ids);
    textgen_close(&g);
    return rc;
}
