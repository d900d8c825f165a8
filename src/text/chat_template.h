/* chat_template.h - renders a model's chat template (Jinja2) into a prompt string.
 *
 * The template comes from the model directory (chat_template.jinja, or the
 * `chat_template` key of tokenizer_config.json) and is rendered with the Jinja2
 * interpreter in jinja.c, reproducing byte for byte what Hugging Face transformers'
 * `tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=...,
 * tokenize=False, **kwargs)` returns. docs/TEMPLATES.md lists the supported subset. */
#ifndef QNEXT_CHAT_TEMPLATE_H
#define QNEXT_CHAT_TEMPLATE_H

#include <stddef.h>
#include "util/json.h"

typedef struct chat_template chat_template;

/* Parses template source. No special tokens are set (see chat_template_set_special_tokens).
 * Returns NULL with "template syntax error at line L, column C: ..." in err on failure,
 * including syntax outside the supported subset. */
chat_template *chat_template_parse(const char *source, size_t len, char *err, size_t errlen);

/* Loads a model directory: the template from DIR/chat_template.jinja if present, else
 * the `chat_template` key of DIR/tokenizer_config.json (a string, or a list of
 * {name, template} from which "default" is taken); special-token variables (bos_token,
 * eos_token, unk_token, pad_token, sep_token, cls_token, mask_token: those that are set)
 * from tokenizer_config.json, as transformers' special_tokens_map passes them. */
chat_template *chat_template_load_dir(const char *dir, char *err, size_t errlen);

/* Replaces the special-token variables with the members of a JSON object (copied). */
int chat_template_set_special_tokens(chat_template *ct, const json *tokens, char *err, size_t errlen);

void chat_template_free(chat_template *ct);

/* Renders a conversation.
 *   messages: JSON array of OpenAI-style message objects (non-empty);
 *   tools: JSON array of tool schemas, or NULL (the template then sees tools = none);
 *   kwargs: JSON object of extra template variables (enable_thinking, ...) or NULL;
 *           they override special tokens of the same name.
 * Like transformers, keys whose value is null are dropped from each message, and a
 * message's reasoning given as `reasoning_content`, `thinking` or `reasoning` is made
 * visible under both `reasoning_content` and `thinking`.
 * On success returns 0 and a malloc'd NUL-terminated prompt in *out (caller frees) with
 * its length in *out_len; on error returns -1 with a message in err (template errors and
 * raise_exception() name the template line and column). */
int chat_template_render(const chat_template *ct, const json *messages, const json *tools, int add_generation_prompt,
                         const json *kwargs, char **out, size_t *out_len, char *err, size_t errlen);

/* Whether a rendered prompt leaves the model inside its reasoning: a <think> after the last
 * "<|im_start|>assistant" header with no </think> after it (the thinking template's generation
 * prompt, or a client's prefilled reasoning). Tags anywhere before that header, such as a
 * "<think>" typed in a user message or the closed reasoning of earlier turns, do not count. */
int chat_prompt_opens_think(const char *prompt, size_t n);

#endif
