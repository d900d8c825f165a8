/* quantize.h - writes a llama.cpp-compatible `qwen3next` GGUF file from a Hugging Face
 * Qwen3-Next checkpoint directory, in one pass that does what llama.cpp's
 * convert_hf_to_gguf.py followed by llama-quantize does (docs/GGUF.md, docs/QUANT.md):
 *   - metadata: general.*, the qwen3next.* hyper-parameters, and the tokenizer
 *     (tokenizer.ggml.* and tokenizer.chat_template) when tokenizer.json is in the directory;
 *   - tensors renamed and transformed as the converter does (norms + 1 except the gated
 *     norm, ssm_a = -exp(A_log), squeezed conv, in_proj_qkvz split into attn_qkv and
 *     attn_gate, experts stacked, MTP kept as the nextn block);
 *   - each tensor's type chosen as llama-quantize chooses it for the requested mix
 *     (without an importance matrix), including its shape fallbacks.
 * The conversion streams: tensors are produced a block of rows at a time (experts are
 * stacked one expert's rows at a time), so memory stays at a few tens of MB whatever the
 * model size. Quantization of a block of rows runs on all OpenMP threads. */
#ifndef QNEXT_QUANTIZE_H
#define QNEXT_QUANTIZE_H

#include <stddef.h>

struct gguf_writer;

/* Output mixes (llama.cpp's LLAMA_FTYPE_* names). */
typedef enum {
    QMIX_F32 = 0,
    QMIX_F16,
    QMIX_BF16,
    QMIX_Q8_0,
    QMIX_Q6_K,
    QMIX_Q5_K_M,
    QMIX_Q4_K_M,
    QMIX_MXFP4_MOE, /* stacked experts MXFP4, everything else Q8_0 */
    QMIX_IQ4_NL,    /* IQ4_NL, with llama-quantize's Q5_K/Q6_K/Q8_0 exceptions */
    QMIX_IQ4_XS,    /* IQ4_XS (IQ4_NL for rows not a multiple of 256), the same exceptions */
    QMIX_COUNT
} quantize_mix;

/* "Q4_K_M" -> QMIX_Q4_K_M (case-insensitive), or -1. */
int quantize_mix_from_name(const char *name);
const char *quantize_mix_name(int mix);
/* llama_ftype value stored in general.file_type for a mix. */
int quantize_mix_file_type(int mix);

typedef struct {
    const char *input_dir;   /* HF checkpoint: config.json + safetensors */
    const char *output_path; /* the .gguf to write (replaced) */
    int mix;                 /* quantize_mix */
    int n_threads;           /* 0: OpenMP default */
    int no_mtp;              /* 1: drop mtp.* tensors (as convert_hf_to_gguf.py --no-mtp) */
    int no_tokenizer;        /* 1: write no tokenizer metadata even if tokenizer.json exists */
    int quiet;               /* 1: no progress on stderr */
} quantize_params;

/* Converts. Returns 0, or -1 with a message in err (the partial output is removed). */
int quantize_model(const quantize_params *p, char *err, size_t errlen);

/* Adds the tokenizer metadata llama.cpp's converter writes for a GPT-2-style BPE tokenizer
 * (tokenizer.ggml.model "gpt2", pre "qwen2", tokens, token_type, merges, special token ids,
 * add_*_token flags, tokenizer.chat_template) from DIR/tokenizer.json, DIR/tokenizer_config.json
 * and DIR/config.json. The token list is padded with "[PAD<i>]" (type UNUSED) up to
 * vocab_size when vocab_size is larger than the tokenizer (pass 0 for no padding).
 * Returns 1 when written, 0 when DIR has no tokenizer.json, -1 on error (message in err). */
int quantize_add_tokenizer_kv(struct gguf_writer *w, const char *dir, int vocab_size, char *err, size_t errlen);

/* Writes a GGUF holding only general.architecture = "qwen3next" and the tokenizer metadata
 * of DIR (no tensors), as convert_hf_to_gguf.py --vocab-only does. Returns 0 or -1. */
int quantize_write_vocab_only(const char *dir, const char *output_path, char *err, size_t errlen);

#endif
