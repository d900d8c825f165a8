/* test_output_parser.c - the server's output parser (src/serve/output_parser.c) on crafted
 * model outputs: reasoning/content split, tool calls in the Qwen/Hermes format, malformed
 * blocks kept as text. Every case is fed whole, one byte at a time and split at every
 * position, and the concatenated deltas must equal the expected parts each time. */
#include "test_util.h"
#include "serve/output_parser.h"

typedef struct {
    const char *name;
    int start_in_reasoning, parse_tools;
    const char *output;           /* what the model wrote */
    const char *reasoning;        /* expected reasoning_content */
    const char *content;          /* expected content */
    int n_calls;
    const char *call_names[3];
    const char *call_args[3];     /* compact JSON text */
} parser_case;

static const parser_case cases[] = {
    {"plain text", 0, 0, "Hello, world!\n", "", "Hello, world!\n", 0, {0}, {0}},
    {"plain text keeps inner whitespace", 0, 1, "a  b\n\nc", "", "a  b\n\nc", 0, {0}, {0}},
    {"thinking opened by the prompt", 1, 0, "Let me think.\n</think>\n\nThe answer is 4.", "Let me think.",
     "The answer is 4.", 0, {0}, {0}},
    {"think block written by the model", 0, 0, "<think>\nhmm\n</think>\n\nYes.", "hmm", "Yes.", 0, {0}, {0}},
    {"think after leading newline", 0, 0, "\n<think>x</think>y", "x", "y", 0, {0}, {0}},
    {"unclosed think stays reasoning", 1, 0, "still thinking about it", "still thinking about it", "", 0, {0}, {0}},
    {"empty think (thinking disabled)", 0, 0, "<think>\n\n</think>\n\nHi", "", "Hi", 0, {0}, {0}},
    {"<think> in the middle is text", 0, 0, "use <think> tags", "", "use <think> tags", 0, {0}, {0}},
    {"lone angle brackets", 0, 1, "a < b and c <tool d", "", "a < b and c <tool d", 0, {0}, {0}},
    {"one tool call", 0, 1,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>", "", "",
     1, {"get_weather"}, {"{\"city\":\"Paris\",\"days\":3}"}},
    {"text then two tool calls", 0, 1,
     "Checking both.\n\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n"
     "{\"name\": \"b\", \"arguments\": {\"x\": [1, 2.5, \"s\"]}}\n</tool_call>\n",
     "", "Checking both.", 2, {"a", "b"}, {"{}", "{\"x\":[1,2.5,\"s\"]}"}},
    {"reasoning then tool call", 1, 1,
     "I need the weather.\n</think>\n\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"q\": \"\\u00e9t\\u00e9 \\\"hot\\\"\"}}\n</tool_call>",
     "I need the weather.", "", 1, {"w"}, {"{\"q\":\"\xc3\xa9t\xc3\xa9 \\\"hot\\\"\"}"}},
    {"arguments given as a string", 0, 1, "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\":1}\"}</tool_call>", "",
     "", 1, {"f"}, {"{\"a\":1}"}},
    {"arguments absent", 0, 1, "<tool_call>{\"name\": \"now\"}</tool_call>", "", "", 1, {"now"}, {"{}"}},
    {"malformed JSON stays text", 0, 1, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call> after",
     "", "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call> after", 0, {0}, {0}},
    {"missing name stays text", 0, 1, "<tool_call>{\"arguments\": {}}</tool_call>", "",
     "<tool_call>{\"arguments\": {}}</tool_call>", 0, {0}, {0}},
    {"unclosed tool call stays text", 0, 1, "ok <tool_call>\n{\"name\": \"f\", \"argu", "",
     "ok <tool_call>\n{\"name\": \"f\", \"argu", 0, {0}, {0}},
    {"good call then malformed", 0, 1,
     "<tool_call>{\"name\": \"g\", \"arguments\": {\"k\": true}}</tool_call>\n<tool_call>oops</tool_call>", "",
     "<tool_call>oops</tool_call>", 1, {"g"}, {"{\"k\":true}"}},
    {"tools not offered: blocks are text", 0, 0, "<tool_call>{\"name\": \"g\"}</tool_call>", "",
     "<tool_call>{\"name\": \"g\"}</tool_call>", 0, {0}, {0}},
    {"partial closing tag at the end", 1, 0, "abc</thi", "abc</thi", "", 0, {0}, {0}},
    {"multibyte text", 1, 1, "\xe6\x80\x9d\xe8\x80\x83</think>\xe7\xad\x94\xe6\xa1\x88 \xf0\x9f\x98\x80",
     "\xe6\x80\x9d\xe8\x80\x83", "\xe7\xad\x94\xe6\xa1\x88 \xf0\x9f\x98\x80", 0, {0}, {0}},
};

typedef struct { char buf[4096]; size_t n; } acc;
static void acc_add(acc *a, const char *s, size_t n) {
    if (a->n + n < sizeof a->buf) { memcpy(a->buf + a->n, s, n); a->n += n; a->buf[a->n] = 0; }
}

/* Runs one case with the output cut at the given positions (cuts[0..n_cuts) ascending). */
static void run_case(const parser_case *c, const size_t *cuts, int n_cuts, const char *how) {
    output_parser *p = output_parser_new(c->start_in_reasoning, c->parse_tools);
    CHECK(p != NULL, "alloc");
    if (!p) return;
    acc r = {{0}, 0}, t = {{0}, 0};
    int calls_seen = 0, order_ok = 1;
    size_t len = strlen(c->output), at = 0;
    for (int k = 0; k <= n_cuts; k++) {
        size_t end = k < n_cuts ? cuts[k] : len;
        if (k < n_cuts + 1 && end >= at) CHECK(output_parser_feed(p, c->output + at, end - at) == 0, "feed");
        at = end;
        if (k == n_cuts) CHECK(output_parser_finish(p) == 0, "finish");
        op_delta d;
        output_parser_take(p, &d);
        acc_add(&r, d.reasoning, d.reasoning_len);
        acc_add(&t, d.content, d.content_len);
        if (d.first_call != calls_seen) order_ok = 0;
        calls_seen += d.n_calls;
    }
    CHECK(!strcmp(r.buf, c->reasoning), "%s [%s]: reasoning '%s', want '%s'", c->name, how, r.buf, c->reasoning);
    CHECK(!strcmp(t.buf, c->content), "%s [%s]: content '%s', want '%s'", c->name, how, t.buf, c->content);
    size_t tl, rl;
    const char *tot = output_parser_content(p, &tl), *rtot = output_parser_reasoning(p, &rl);
    CHECK(tl == t.n && !memcmp(tot, t.buf, tl), "%s [%s]: content total differs from the deltas", c->name, how);
    CHECK(rl == r.n && !memcmp(rtot, r.buf, rl), "%s [%s]: reasoning total differs from the deltas", c->name, how);
    CHECK(order_ok && calls_seen == c->n_calls, "%s [%s]: %d tool calls, want %d", c->name, how, calls_seen,
          c->n_calls);
    CHECK(output_parser_n_calls(p) == c->n_calls, "%s [%s]: n_calls", c->name, how);
    for (int i = 0; i < c->n_calls && i < output_parser_n_calls(p); i++) {
        const op_tool_call *tc = output_parser_call(p, i);
        CHECK(!strcmp(tc->name, c->call_names[i]), "%s [%s]: call %d name '%s'", c->name, how, i, tc->name);
        CHECK(!strcmp(tc->arguments, c->call_args[i]), "%s [%s]: call %d arguments '%s', want '%s'", c->name, how, i,
              tc->arguments, c->call_args[i]);
    }
    output_parser_free(p);
}

int main(void) {
    size_t cuts[4096];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const parser_case *c = &cases[i];
        size_t len = strlen(c->output);
        run_case(c, NULL, 0, "whole");
        int n = 0;
        for (size_t k = 1; k < len; k++) cuts[n++] = k;
        run_case(c, cuts, n, "bytewise");
        for (size_t k = 1; k < len; k++) { cuts[0] = k; run_case(c, cuts, 1, "one split"); }
        for (size_t k = 1; k + 3 < len; k += 3) { cuts[0] = k; cuts[1] = k + 3; run_case(c, cuts, 2, "two splits"); }
    }
    /* take() with nothing new gives an empty delta */
    output_parser *p = output_parser_new(0, 1);
    op_delta d;
    output_parser_take(p, &d);
    CHECK(d.content_len == 0 && d.reasoning_len == 0 && d.n_calls == 0, "empty delta");
    output_parser_free(p);
    return tu_finish("test_output_parser");
}
