/* output_parser.h - splits a model's streamed output text into the three parts an
 * OpenAI-style response carries: reasoning (between <think> and </think>), content, and
 * tool calls (<tool_call>{"name": ..., "arguments": ...}</tool_call> blocks, Qwen/Hermes style).
 *
 * It is incremental: feed text as it is decoded (any split, even inside a tag) and take the
 * deltas after each feed; a tag split across feeds is held back until it is complete, so a
 * stream never shows half of "<tool_call>". A tool call is reported once its closing tag has
 * arrived and its JSON parsed; a block that does not parse (or never closes) is given back as
 * content text, byte for byte, so nothing the model wrote is lost.
 *
 * Whitespace: leading whitespace of the reasoning and of the content that follows </think> is
 * dropped, trailing whitespace before </think> is dropped, and whitespace around tool calls
 * (the newlines between consecutive blocks) is dropped, as OpenAI responses have none. */
#ifndef QNEXT_OUTPUT_PARSER_H
#define QNEXT_OUTPUT_PARSER_H

#include <stddef.h>

typedef struct output_parser output_parser;

typedef struct {
    char *name;       /* function name */
    char *arguments;  /* arguments as a JSON text (compact); "{}" when the call gave none */
} op_tool_call;

/* A delta: the text produced since the previous take (pointers valid until the next call on
 * the parser), and the tool calls completed since then: calls[first .. first+n). */
typedef struct {
    const char *reasoning; size_t reasoning_len;
    const char *content; size_t content_len;
    const op_tool_call *calls; int first_call; int n_calls;
} op_delta;

/* start_in_reasoning: the prompt already opened a think block (e.g. the assistant turn
 * starts with "<think>\n"), so the output begins as reasoning.
 * parse_tools: recognise <tool_call> blocks (only when the request offered tools). */
output_parser *output_parser_new(int start_in_reasoning, int parse_tools);
void output_parser_free(output_parser *p);
/* Returns 0, or -1 when out of memory. */
int output_parser_feed(output_parser *p, const char *text, size_t len);
/* End of output: flushes held text (an unclosed think block stays reasoning; an unclosed tool
 * call becomes content). */
int output_parser_finish(output_parser *p);
/* The delta since the last take. */
void output_parser_take(output_parser *p, op_delta *d);
/* Totals so far (for non-streaming responses). */
const char *output_parser_reasoning(const output_parser *p, size_t *len);
const char *output_parser_content(const output_parser *p, size_t *len);
int output_parser_n_calls(const output_parser *p);
const op_tool_call *output_parser_call(const output_parser *p, int i);

#endif
