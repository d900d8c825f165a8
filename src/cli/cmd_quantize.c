/* cmd_quantize.c - `qnext quantize`: writes a llama.cpp-compatible qwen3next GGUF file from a
 * Hugging Face checkpoint directory (src/model/quantize.h does the work). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "model/quantize.h"

static const char *quantize_usage =
    "usage: qnext quantize -m HF_DIR -o OUT.gguf --type Q8_0|Q6_K|Q5_K_M|Q4_K_M|IQ4_XS|IQ4_NL|\n"
    "                      MXFP4_MOE|BF16|F16|F32\n"
    "                      [-t THREADS] [--no-mtp] [--no-tokenizer] [--quiet]\n"
    "Converts a Qwen3-Next checkpoint (config.json + safetensors) into a qwen3next GGUF file, as\n"
    "llama.cpp's convert_hf_to_gguf.py + llama-quantize would (same names, layouts, metadata and\n"
    "per-tensor types). Streams tensor by tensor; progress goes to stderr. The tokenizer\n"
    "(tokenizer.json, tokenizer_config.json) is embedded when present in HF_DIR.\n";

int cmd_quantize(int argc, char **argv) {
    quantize_params p = {.mix = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { printf("%s", quantize_usage); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(p.input_dir = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!(p.output_path = args_value(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--type")) {
            if (!(v = args_value(argc, argv, &i))) return 2;
            if ((p.mix = quantize_mix_from_name(v)) < 0) {
                fprintf(stderr, "qnext: unknown --type '%s'\n%s", v, quantize_usage);
                return 2;
            }
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = args_value(argc, argv, &i)) || !args_int(a, v, 0, 4096, &n)) return 2;
            p.n_threads = (int)n;
        } else if (!strcmp(a, "--no-mtp")) p.no_mtp = 1;
        else if (!strcmp(a, "--no-tokenizer")) p.no_tokenizer = 1;
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) p.quiet = 1;
        else { fprintf(stderr, "qnext: unknown option '%s'\n%s", a, quantize_usage); return 2; }
    }
    if (!p.input_dir || !p.output_path || p.mix < 0) {
        fprintf(stderr, "qnext: quantize needs -m, -o and --type\n%s", quantize_usage);
        return 2;
    }
    char err[1024];
    if (quantize_model(&p, err, sizeof err)) { fprintf(stderr, "qnext: %s\n", err); return 1; }
    return 0;
}
