/* tokenizer_gguf.h - the tokenizer and chat template of a GGUF file's metadata, for GGUF
 * models that come without tokenizer.json. */
#ifndef QNEXT_TOKENIZER_GGUF_H
#define QNEXT_TOKENIZER_GGUF_H

#include <stddef.h>

#include "text/tokenizer.h"

struct gguf_file;

/* Builds the tokenizer from tokenizer.ggml.model ("gpt2"), tokenizer.ggml.pre ("qwen2"),
 * tokenizer.ggml.tokens / token_type / merges: NORMAL tokens form the BPE vocabulary, CONTROL
 * tokens become special added tokens, USER_DEFINED tokens non-special added tokens, UNUSED
 * (padding) ids are left out. Returns NULL with a message when the metadata is absent or
 * describes another tokenizer. */
qnext_tokenizer *tokenizer_load_gguf(const struct gguf_file *g, char *err, size_t errlen);

/* For a GGUF model file given as a path: 1 when it is one (first bytes "GGUF"), else 0. */
int tokenizer_gguf_is_file(const char *path);

/* The tokenizer and (when tmpl is not NULL) the chat template of a GGUF model file, for
 * models without tokenizer.json: the template's special-token variables (bos_token,
 * eos_token, unk_token, pad_token, sep_token, cls_token, mask_token) are the spellings of the
 * ids in tokenizer.ggml.*_token_id. Returns 0, or -1 with a message (no template in the file
 * is an error only when tmpl is requested). */
struct chat_template;
int tokenizer_gguf_load_file(const char *path, qnext_tokenizer **tok, struct chat_template **tmpl, char *err,
                             size_t errlen);

/* tokenizer.chat_template as a malloc'd NUL-terminated string, or NULL when absent. */
char *tokenizer_gguf_chat_template(const struct gguf_file *g);

/* tokenizer.ggml.<name>_token_id ("bos", "eos", "padding", ...), or -1 when absent. */
int tokenizer_gguf_special_id(const struct gguf_file *g, const char *name);

#endif
