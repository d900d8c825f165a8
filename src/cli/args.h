/* args.h - small helpers shared by the subcommands: option values and token id lists. */
#ifndef QNEXT_CLI_ARGS_H
#define QNEXT_CLI_ARGS_H
#include <stddef.h>
#include <stdint.h>

/* Parses "1 2 3" (spaces, commas or newlines between ids) into a malloc'd array.
 * Returns 0 and prints a message on a malformed list. */
int args_parse_ids(const char *s, int32_t **ids, int *n);
/* Parses an integer or float option value; prints a message naming the option on error. */
int args_int(const char *opt, const char *val, long lo, long hi, long *out);
int args_float(const char *opt, const char *val, double *out);
/* Returns the value following argv[*i] or NULL (and prints) when the option has none. */
const char *args_value(int argc, char **argv, int *i);
/* "auto" | "f32" | "bf16" | "q8" -> QNEXT_KV_*, or -1 (printed). */
int args_kv_type(const char *v);
/* --act-bits: 8 or 16 (qnext_model_params.act_bits); -1 after a message. */
int args_act_bits(const char *v);
int args_state_type(const char *v); /* --state-type f32|bf16: QNEXT_STATE_*, or -1 with a message */
#endif
