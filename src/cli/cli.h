/* cli.h - the subcommands of the `qnext` program. Each lives in its own cmd_*.c file and
 * uses only the public API (include/qnext.h) and the text helpers in src/text. */
#ifndef QNEXT_CLI_H
#define QNEXT_CLI_H

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *help;
} cli_command;

/* Every subcommand, declared here and listed in main.c. */
int cmd_info(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_template(int argc, char **argv);
int cmd_run(int argc, char **argv);   /* cmd_run.c */
int cmd_chat(int argc, char **argv);  /* cmd_chat.c */
int cmd_quantize(int argc, char **argv); /* cmd_quantize.c */
int cmd_eval(int argc, char **argv);     /* cmd_eval.c */

#endif
