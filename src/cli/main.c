/* main.c - the `qnext` program: dispatches to one subcommand per cmd_*.c file. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const cli_command commands[] = {
    {"info", cmd_info, "print the configuration, layer pattern, parameter counts and bytes read per token"},
    {"logits", cmd_logits, "write the logits at every prompt position to a .npy file"},
    {"generate", cmd_generate, "greedy/sampled generation from token ids"},
    {"bench", cmd_bench, "prompt and generation speed, like llama-bench"},
    {"tokenize", cmd_tokenize, "print the token ids of UTF-8 text read from stdin"},
    {"detokenize", cmd_detokenize, "print the text of token ids given with --ids"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server with continuous batching and a conversation cache"},
    {"run", cmd_run, "stream the answer to one prompt (chat template, or --raw completion)"},
    {"chat", cmd_chat, "interactive chat that keeps the session between turns"},
    {"template", cmd_template, "print the chat-template prompt for a JSON conversation"},
    {"quantize", cmd_quantize, "write a llama.cpp-compatible qwen3next GGUF (Q8_0, Q6_K, Q5_K_M, Q4_K_M, BF16) from a checkpoint"},
    {"eval", cmd_eval, "KL divergence, top-1 agreement and perplexity of a model against a reference model"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: qnext COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nRun `qnext COMMAND --help` for the options of one command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "qnext: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
