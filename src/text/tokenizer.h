/* tokenizer.h - byte-level BPE tokenizer compatible with Hugging Face `tokenizers` for the
 * Qwen family's tokenizer.json (Qwen2/Qwen3/Qwen3-Next vocabulary).
 *
 * Encoding follows the pipeline that tokenizer.json describes, step by step:
 *   1. added tokens (e.g. "<|im_end|>", "<think>") are found in the raw text first and are
 *      never split; their flags (special, normalized, lstrip, rstrip, single_word) are honoured;
 *   2. the text between them is NFC-normalised (utf8proc);
 *   3. the `Split` pre-tokenizer cuts it with Qwen's regex, implemented here as a hand-written
 *      matcher with the same semantics as the Oniguruma regex HF uses (see tokenizer.c);
 *   4. each piece is mapped to bytes and merged by BPE rank into vocabulary ids.
 * Decoding maps ids back to bytes (added tokens give their content) and replaces invalid
 * UTF-8 with U+FFFD exactly as Rust's String::from_utf8_lossy does.
 *
 * A loaded tokenizer is immutable: any number of threads may call the encode/decode functions
 * on one tokenizer at the same time (caches are per call). */
#ifndef QNEXT_TOKENIZER_H
#define QNEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct qnext_tokenizer qnext_tokenizer;

/* Loads a tokenizer.json file. Returns NULL and writes a message into err on failure. */
qnext_tokenizer *tokenizer_load(const char *path_to_tokenizer_json, char *err, size_t errlen);
/* The same from tokenizer.json text in memory; name is used in messages. */
qnext_tokenizer *tokenizer_load_json_text(const char *text, size_t len, const char *name, char *err, size_t errlen);
/* Loads DIR/tokenizer.json (a model directory). */
qnext_tokenizer *tokenizer_load_dir(const char *dir, char *err, size_t errlen);
void tokenizer_free(qnext_tokenizer *tok);

/* Encodes text[0..len) (UTF-8; invalid bytes are kept as single raw bytes) into a malloc'd id
 * array stored in *ids_out (the caller frees it; NULL when *n_out is 0). Special tokens written in
 * the text (e.g. "<|im_start|>") become their ids. Returns 0, or -1 when out of memory or when
 * len is 4 GiB or more. */
int tokenizer_encode(const qnext_tokenizer *tok, const char *text, size_t len,
                     int32_t **ids_out, size_t *n_out);
/* Same with a choice: parse_special=0 treats the text of *special* added tokens as plain text
 * (HF's encode_special_tokens=True: "<|im_start|>" in user content becomes "<", "|", "im", ...);
 * non-special added tokens such as "<think>" are still matched, as HF does. */
int tokenizer_encode_ex(const qnext_tokenizer *tok, const char *text, size_t len,
                        int parse_special, int32_t **ids_out, size_t *n_out);

/* Decodes ids into malloc'd text (NUL-terminated; *len_out excludes the NUL). Unknown ids are
 * skipped; invalid UTF-8 becomes U+FFFD. Special tokens are kept (skip_special_tokens=False).
 * Returns 0, or -1 when out of memory. */
int tokenizer_decode(const qnext_tokenizer *tok, const int32_t *ids, size_t n,
                     char **text_out, size_t *len_out);

/* The id of a token given in its vocabulary spelling ("<|im_end|>", "Ġthe"), or -1 if absent. */
int32_t tokenizer_token_id(const qnext_tokenizer *tok, const char *token_text);
/* The vocabulary spelling of an id, or NULL when the id is unknown. */
const char *tokenizer_id_to_token(const qnext_tokenizer *tok, int32_t id);
/* The raw bytes an id decodes to (an added token's content; a BPE token's bytes, which may
 * be part of a UTF-8 character), with their count in *len; NULL when the id is unknown. */
const unsigned char *tokenizer_token_bytes(const qnext_tokenizer *tok, int32_t id, size_t *len);
/* 1 when id is an added token marked special (e.g. <|im_end|>), else 0. */
int tokenizer_is_special(const qnext_tokenizer *tok, int32_t id);
/* 1 when id is an added token, special or not (<|im_end|>, <think>, <tool_call>), else 0. */
int tokenizer_is_added(const qnext_tokenizer *tok, int32_t id);
/* One past the largest id (151669 for Qwen3: BPE vocabulary plus added tokens). */
size_t tokenizer_vocab_size(const qnext_tokenizer *tok);

/* Streaming decoder for generation: feed one id at a time and print what comes out. It never
 * emits a broken UTF-8 sequence: the bytes of an incomplete character are held until a later
 * token completes them; bytes that can never form a character become U+FFFD, so the
 * concatenated output of all puts plus the final flush equals tokenizer_decode of all ids. */
typedef struct {
    const qnext_tokenizer *tok;
    unsigned char pending[4]; /* an incomplete UTF-8 prefix (at most 3 bytes) */
    size_t n_pending;
} tokenizer_stream;

void tokenizer_stream_init(tokenizer_stream *s, const qnext_tokenizer *tok);
/* Output room that always suffices for one put or flush. */
size_t tokenizer_stream_out_max(const qnext_tokenizer *tok);
/* Decodes one id, writes the completed text to out (not NUL-terminated) and returns its length;
 * returns (size_t)-1 and changes nothing when cap < tokenizer_stream_out_max(tok). */
size_t tokenizer_stream_put(tokenizer_stream *s, int32_t id, char *out, size_t cap);
/* At the end of generation: writes U+FFFD for held bytes that never completed (0 or 3 bytes). */
size_t tokenizer_stream_flush(tokenizer_stream *s, char *out, size_t cap);

#endif
