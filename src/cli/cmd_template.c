/* cmd_template.c - `qnext template`: renders a model's chat template for a conversation
 * and prints the prompt exactly (no newline added), the text `generate` would tokenize.
 * Useful to check a prompt against transformers' apply_chat_template(tokenize=False). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "text/chat_template.h"
#include "util/json.h"

static const char TEMPLATE_USAGE[] =
    "usage: qnext template -m MODEL_DIR --messages FILE.json [--tools FILE.json] [--no-generation-prompt]\n"
    "                      [--kwargs JSON_OR_FILE]\n"
    "  Renders the chat template of MODEL_DIR (chat_template.jinja or tokenizer_config.json) and prints\n"
    "  the prompt with no newline added.\n"
    "  --messages FILE            OpenAI-style messages: a JSON array of {role, content, ...}\n"
    "  --tools FILE               a JSON array of tool (function) schemas\n"
    "  --no-generation-prompt     do not open an assistant turn at the end\n"
    "  --kwargs JSON_OR_FILE      extra template variables as a JSON object, inline or in a file,\n"
    "                             e.g. '{\"enable_thinking\": false}'\n";

static json *load_json_arg(const char *what, const char *arg, int allow_inline) {
    char err[1024];
    const char *p = arg;
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    json *j;
    if (allow_inline && (*p == '{' || *p == '[')) j = json_parse(arg, strlen(arg), err, sizeof err);
    else j = json_parse_file(arg, err, sizeof err);
    if (!j) fprintf(stderr, "qnext: %s: %s\n", what, err);
    return j;
}

int cmd_template(int argc, char **argv) {
    const char *model = NULL, *messages_path = NULL, *tools_path = NULL, *kwargs_arg = NULL;
    int add_generation_prompt = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", TEMPLATE_USAGE); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--messages")) { if (!(messages_path = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--tools")) { if (!(tools_path = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--kwargs")) { if (!(kwargs_arg = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--no-generation-prompt")) add_generation_prompt = 0;
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, TEMPLATE_USAGE); return 2; }
    }
    if (!model || !messages_path) {
        fprintf(stderr, "qnext: -m MODEL_DIR and --messages FILE are required\n%s", TEMPLATE_USAGE);
        return 2;
    }
    char err[2048];
    chat_template *ct = chat_template_load_dir(model, err, sizeof err);
    if (!ct) { fprintf(stderr, "qnext: %s\n", err); return 1; }
    json *messages = load_json_arg("--messages", messages_path, 0);
    json *tools = tools_path ? load_json_arg("--tools", tools_path, 0) : NULL;
    json *kwargs = kwargs_arg ? load_json_arg("--kwargs", kwargs_arg, 1) : NULL;
    int rc = 1;
    if (messages && (!tools_path || tools) && (!kwargs_arg || kwargs)) {
        char *out = NULL;
        size_t n = 0;
        if (chat_template_render(ct, messages, tools, add_generation_prompt, kwargs, &out, &n, err, sizeof err) == 0) {
            rc = fwrite(out, 1, n, stdout) == n && fflush(stdout) == 0 ? 0 : 1;
            if (rc) fprintf(stderr, "qnext: cannot write the prompt to stdout\n");
        } else fprintf(stderr, "qnext: %s\n", err);
        free(out);
    }
    json_free(messages);
    json_free(tools);
    json_free(kwargs);
    chat_template_free(ct);
    return rc;
}
