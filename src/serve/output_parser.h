/* output_parser.h - splits a model's streamed output text into the three parts an
 * OpenAI-style response carries: reasoning (between <think> and </think>), content, and
 * tool calls (<tool_call>{"name": ..., "arguments": ...}</tool_call> blocks, Qwen/Hermes style).
 *
 * It is incremental: feed text as it is decoded (any split, even inside a tag or a UTF-8
 * character) and take the deltas after each feed; a tag split across feeds is held back until
 * it is complete, so a stream never shows half of "<tool_call>".
 *
 * Tool calls are streamed as they are written. The body of a block goes through a strict
 * incremental JSON scanner (RFC 8259, as src/util/json.c reads it). Once the call's "name"
 * string has closed, the call is announced (op_tool_delta.name); from then on every byte the
 * model adds to the "arguments" value (or "parameters") extends the arguments string
 * (op_tool_delta.args). The arguments string is the compact serialisation of the value that
 * json_write_compact gives (no whitespace outside strings, strings re-escaped, numbers as
 * written), built token by token: the object's closing brace belongs to it, the call object's
 * closing brace does not. A string value gives its decoded text; an absent or null value gives
 * "{}" when the block closes. A trailing incomplete UTF-8 character is held back until it is
 * complete. The concatenation of a call's args deltas is exactly op_tool_call.arguments, which
 * is also what a non-streaming response reports.
 *
 * A block that is not a valid call (not JSON, no non-empty string "name", arguments neither an
 * object, a string nor null, two names or two argument members, or text after the object) or
 * that never closes is given back as content text, byte for byte, so nothing the model wrote is
 * lost. Streaming cannot take back what it sent: when the JSON breaks after the name was
 * announced, no further deltas go out for that call and its index is not reused; the client
 * keeps a call with a truncated arguments string while the block comes out as content, and
 * only complete calls are reported as such (op_delta.calls). A call known to be malformed
 * before it was announced is never announced.
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
    int stream_index; /* the index its op_tool_delta entries carried */
} op_tool_call;

/* New output of one streamed tool call. */
typedef struct {
    int index;          /* position in the streamed tool_calls list (0, 1, ...) */
    const char *name;   /* non-NULL the first time the call appears: announce id, type and name */
    const char *args;   /* the next bytes of the arguments string (args_len may be 0) */
    size_t args_len;
} op_tool_delta;

/* A delta: the text produced since the previous take (pointers valid until the next call on
 * the parser), the tool calls completed since then: calls[first .. first+n), and the streamed
 * tool-call output since then, in index order. */
typedef struct {
    const char *reasoning; size_t reasoning_len;
    const char *content; size_t content_len;
    const op_tool_call *calls; int first_call; int n_calls;
    const op_tool_delta *tool_deltas; int n_tool_deltas;
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
/* 1 while the output is inside a think block. */
int output_parser_in_reasoning(const output_parser *p);
const op_tool_call *output_parser_call(const output_parser *p, int i);

#endif
