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

/* tokenizer.chat_template as a malloc'd NUL-terminated string, or NULL when absent. */
char *tokenizer_gguf_chat_template(const struct gguf_file *g);

/* tokenizer.ggml.<name>_token_id ("bos", "eos", "padding", ...), or -1 when absent. */
int tokenizer_gguf_special_id(const struct gguf_file *g, const char *name);

#endif
