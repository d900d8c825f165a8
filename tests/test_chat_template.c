/* test_chat_template.c - the chat template interpreter against transformers.
 *
 * 1. Every case in tests/data/template_refs.json (made by tools/make_template_refs.py with
 *    transformers' apply_chat_template) must render byte-identically with the Qwen3-Next
 *    instruct / thinking templates from tests/data/qwen3-tokenizer/.
 * 2. Small templates whose expected output is what Jinja2 (with transformers' settings)
 *    prints for them: expressions, filters, loops, whitespace control.
 * 3. Unsupported or broken syntax must give an error with a line and column.
 * 4. Robustness: truncated and mutated versions of the real templates must never crash. */
#include <stdint.h>

#include "test_util.h"
#include "text/chat_template.h"
#include "text/jinja.h"
#include "util/json.h"

/* Loads tokenizer_config.<variant>.json as a chat template with its special tokens. */
static chat_template *load_variant(const char *variant, char **src_out, size_t *src_len) {
    char path[256], err[512];
    snprintf(path, sizeof path, "tests/data/qwen3-tokenizer/tokenizer_config.%s.json", variant);
    json *cfg = json_parse_file(path, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    const json *t = json_get(cfg, "chat_template");
    chat_template *ct = t ? chat_template_parse(t->str, t->len, err, sizeof err) : NULL;
    if (!ct) fprintf(stderr, "parse %s: %s\n", variant, err);
    json *special = json_new(JSON_OBJECT);
    static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token", NULL};
    for (int i = 0; names[i]; i++) {
        const char *s = json_get_string(cfg, names[i]);
        if (s) json_object_set(special, names[i], json_new_string(s, strlen(s)));
    }
    if (ct) chat_template_set_special_tokens(ct, special, err, sizeof err);
    json_free(special);
    if (src_out && t) {
        *src_out = malloc(t->len + 1);
        memcpy(*src_out, t->str, t->len + 1);
        *src_len = t->len;
    }
    json_free(cfg);
    return ct;
}

static void print_diff(const char *name, const char *got, size_t gn, const char *exp, size_t en) {
    size_t i = 0;
    while (i < gn && i < en && got[i] == exp[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  %s: first difference at byte %zu (got %zu bytes, expected %zu)\n", name, i, gn, en);
    fprintf(stderr, "  got:      ...%.*s...\n", (int)((gn - from) > 100 ? 100 : gn - from), got + from);
    fprintf(stderr, "  expected: ...%.*s...\n", (int)((en - from) > 100 ? 100 : en - from), exp + from);
}

static void test_references(void) {
    char err[512];
    json *refs = json_parse_file("tests/data/template_refs.json", err, sizeof err);
    CHECK(refs != NULL, "%s", err);
    if (!refs) return;
    chat_template *inst = load_variant("instruct", NULL, NULL), *think = load_variant("thinking", NULL, NULL);
    CHECK(inst && think, "templates load");
    const json *cases = json_get(refs, "cases");
    CHECK(cases && cases->n >= 40, "at least 40 reference cases");
    int passed = 0;
    for (size_t i = 0; inst && think && cases && i < cases->n; i++) {
        const json *cs = cases->items[i];
        const char *name = json_get_string(cs, "name");
        const char *variant = json_get_string(cs, "variant");
        const json *tools = json_get(cs, "tools");
        const json *exp = json_get(cs, "expected");
        int agp = 0;
        json_get_bool(cs, "add_generation_prompt", 0, &agp);
        char *out = NULL;
        size_t n = 0;
        int rc = chat_template_render(strcmp(variant, "thinking") ? inst : think, json_get(cs, "messages"),
                                      tools && tools->type == JSON_ARRAY ? tools : NULL, agp, json_get(cs, "kwargs"),
                                      &out, &n, err, sizeof err);
        CHECK(rc == 0, "%s: %s", name, err);
        if (rc == 0) {
            int same = n == exp->len && !memcmp(out, exp->str, n);
            CHECK(same, "%s: output differs from transformers", name);
            if (!same) print_diff(name, out, n, exp->str, exp->len);
            passed += same;
        }
        free(out);
    }
    printf("reference cases: %d/%zu identical\n", passed, cases ? cases->n : 0);
    chat_template_free(inst);
    chat_template_free(think);
    json_free(refs);
}

/* With QNEXT_DUMP_TEMPLATE_CASES=FILE set, every unit case is also written to FILE as one
 * JSON line, so tools/check_template_unit_cases.py can confirm the expectations with
 * jinja2 under transformers' settings. */
static FILE *dump_file;

static void dump_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void dump_case(const char *kind, const char *src, const char *vars_json, const char *expected) {
    if (!dump_file) return;
    fprintf(dump_file, "{\"kind\": \"%s\", \"src\": ", kind);
    dump_json_string(dump_file, src);
    fprintf(dump_file, ", \"vars\": %s, \"expected\": ", vars_json);
    dump_json_string(dump_file, expected);
    fprintf(dump_file, "}\n");
}

/* Renders src with vars (JSON text) and compares with the expected output from Jinja2. */
static void expect_render(const char *src, const char *vars_json, const char *expected) {
    char err[512] = "";
    dump_case("render", src, vars_json, expected);
    jinja_template *t = jinja_parse(src, strlen(src), err, sizeof err);
    CHECK(t != NULL, "parse '%s': %s", src, err);
    if (!t) return;
    json *vars = json_parse(vars_json, strlen(vars_json), err, sizeof err);
    CHECK(vars != NULL, "vars: %s", err);
    char *out = NULL;
    size_t n = 0;
    int rc = jinja_render(t, vars, &out, &n, err, sizeof err);
    CHECK(rc == 0, "render '%s': %s", src, err);
    if (rc == 0) CHECK(n == strlen(expected) && !memcmp(out, expected, n), "'%s': got '%s', expected '%s'", src, out, expected);
    free(out);
    json_free(vars);
    jinja_free(t);
}

/* Expected outputs below were produced by jinja2 3.1.6 with transformers' environment
 * (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, transformers' tojson). */
static void test_expressions(void) {
    expect_render("{{ [1,2,3][::-1] }}|{{ 'héllo'[1:3] }}|{{ 'abc'[-1] }}|{{ [1,2,3,4,5][1:-1:2] }}", "{}",
                  "[3, 2, 1]|él|c|[2, 4]");
    expect_render("{{ 'a/b/c'.split('/') }}{{ ' x  y '.split() }}{{ 'a,b,c'.split(',', 1) }}{{ 'a,b,c'.rsplit(',', 1) }}",
                  "{}", "['a', 'b', 'c']['x', 'y']['a', 'b,c']['a,b', 'c']");
    expect_render("[{{ '\\n\\nx\\n'.strip('\\n') }}][{{ '  y '.lstrip() }}][{{ 'xxyxx'.rstrip('x') }}][{{ 'AbC'.lower() }}{{ 'é'.upper() }}]",
                  "{}", "[x][y ][xxy][abcÉ]");
    expect_render("{{ 1e5 }} {{ 1.0 }} {{ 10/2 }} {{ 7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 1e20 }} {{ 0.00001 }} {{ 0.1 + 0.2 }}",
                  "{}", "100000.0 1.0 5.0 3 2 1024 1e+20 1e-05 0.30000000000000004");
    expect_render("{{ none }}{{ true }}{{ [1, 'a', none, 1.5, {'k': \"it's\"}] }}{{ (1,) }}", "{}",
                  "NoneTrue[1, 'a', None, 1.5, {'k': \"it's\"}](1,)");
    expect_render("{{ x is defined }}{{ y.z is defined }}{{ y is mapping }}{{ 'a' is string }}{{ 3 is number }}"
                  "{{ y is iterable }}{{ [1] is sequence }}{{ n is none }}{{ 1 is not string }}",
                  "{\"y\": {}, \"n\": null}", "FalseFalseTrueTrueTrueTrueTrueTrueTrue");
    expect_render("{{ 'a' in 'cat' }}{{ 2 not in [1, 2] }}{{ 'k' in d }}{{ 1 == 1.0 }}{{ true == 1 }}{{ '1' == 1 }}",
                  "{\"d\": {\"k\": 1}}", "TrueFalseTrueTrueTrueFalse");
    expect_render("{{ 'yes' if x else 'no' }}|{{ 'a' ~ 1 ~ none ~ true ~ 2.50 }}|{{ u ~ 'b' }}|{{ 3 if false }}|", "{\"x\": 0}",
                  "no|a1NoneTrue2.5|b||");
    expect_render("{{ x|tojson }}", "{\"x\": {\"a\": [1, 2.5, null, true, \"é\\n\\u2028\\u007f\"], \"b\": {}, \"c\": 1E2}}",
                  "{\"a\": [1, 2.5, null, true, \"é\\n\u2028\x7f\"], \"b\": {}, \"c\": 100.0}");
    expect_render("{{ x|tojson(indent=2) }}", "{\"x\": {\"a\": [1, {\"q\": []}], \"b\": {}}}",
                  "{\n  \"a\": [\n    1,\n    {\n      \"q\": []\n    }\n  ],\n  \"b\": {}\n}");
    expect_render("{{ [1e-7, -0.0, 123456789012345680000.0, 1.5e300]|tojson }}", "{}",
                  "[1e-07, -0.0, 1.2345678901234568e+20, 1.5e+300]");
    expect_render("{{ 'a\"b'|tojson }}{{ '日本'|tojson(true) }}{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}", "{}",
                  "\"a\\\"b\"\"\\u65e5\\u672c\"{\"a\": 2, \"b\": 1}");
    expect_render("{{ x|length }} {{ 'héllo'|length }} {{ x|first }} {{ x|last }} {{ x|join('-') }} {{ y|default('d') }}"
                  " {{ '  t  '|trim }} {{ 3|string ~ 'x' }} {{ x|list }}",
                  "{\"x\": [1, 2, 3]}", "3 5 1 3 1-2-3 d t 3x [1, 2, 3]");
    expect_render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d|items %}{{ k }}{% endfor %}",
                  "{\"d\": {\"b\": 1, \"a\": 2}}", "b=1;a=2;ba");
    expect_render("{{ d.items() }}{{ d.get('a') }}{{ d.get('z', 5) }}{{ d['a'] }}", "{\"d\": {\"a\": 1}}",
                  "dict_items([('a', 1)])151");
    expect_render("{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}|"
                  "{{ msgs|map(attribute='role')|unique|list }}|{{ [3, 1, 2]|sort }}|{{ ['b', 'A']|sort }}",
                  "{\"msgs\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"bot\", \"content\": \"b\"},"
                  " {\"role\": \"user\", \"content\": \"c\"}]}",
                  "a,c|['user', 'bot']|[1, 2, 3]|['A', 'b']");
    expect_render("{{ 'hello world'|title }} {{ 'hELLO'|capitalize }} {{ 'a.b'.replace('.', '::') }} {{ 'x'|upper }}",
                  "{}", "Hello World Hello a::b X");
    expect_render("{{ 'hello-world [x'|title }}|{{ {(1, 2): 'a'}[1, 2] }}|{{ 2.5 is odd }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}"
                  "|{{ none|select|list }}|{{ 1|safe is string }}|{{ big }}|{{ big|tojson }}",
                  "{\"big\": 123456789012345678901234567890}",
                  "Hello-World [X|a|FalseTrueTrue|[]|True|123456789012345678901234567890|123456789012345678901234567890");
    expect_render("{{ 'a\\nb\\n'|indent(2) }}|{{ 'a\\n\\nb'|indent(2, true) }}", "{}", "a\n  b\n|  a\n\n  b");
}

static void test_statements(void) {
    expect_render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
                  "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
                  "{\"xs\": [\"a\", \"b\"]}", "1021TrueFalse2;2110FalseTrue2;");
    expect_render("{% for a in [1,2,3] if a > 1 %}{{ loop.index }}/{{ loop.length }} {% else %}none{% endfor %}"
                  "{% for a in [] %}x{% else %}empty{% endfor %}",
                  "{}", "1/2 2/2 empty");
    expect_render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}"
                  "{{ i }}{% endfor %}", "{}", "02");
    expect_render("{% set ns = namespace(n=0, s='') %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
                  "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }}-{{ ns.s }}", "{}", "3-012");
    /* a set inside a loop body does not leak out, and does not carry to the next iteration */
    expect_render("{% set x = 1 %}{% for i in [1,2] %}[{{ x }}]{% set x = 2 %}{% endfor %}{{ x }}", "{}", "[1][1]1");
    expect_render("{% for i in [1,2] %}{% if i == 1 %}{% set y = 'a' %}{% endif %}[{{ y }}]{% endfor %}", "{}", "[a][]");
    expect_render("{% set x = 1 %}{% if true %}{% set x = 3 %}{% endif %}{{ x }}", "{}", "3");
    expect_render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                  "{{ greet('A') }} {{ greet('B', punct='?') }}", "{}", "Hi A! Hi B?");
    expect_render("{% set a, b = 1, 2 %}{{ b }}{{ a }}{% set blk %}x{{ a }}{% endset %}[{{ blk }}]", "{}", "21[x1]");
    /* whitespace control and trim_blocks / lstrip_blocks */
    expect_render("  {% if true %}\n  x\n  {% endif %}\n  y\n{# c #}\n   {#- c #}  z", "{}", "  x\n  y\n  z");
    expect_render("a  {{- 'b' -}}  \n c {{ 'd' }}\n{%- if true %} e{% endif %}\n", "{}", "abc d e");
    expect_render("<{% raw %}{{ not rendered }}{% endraw %}>\n{%+ if true %}k{% endif +%}\nq", "{}",
                  "<{{ not rendered }}>\nk\nq");
    expect_render("{% for m in msgs[::-1] %}{{ (msgs|length - 1) - loop.index0 }}{% endfor %}",
                  "{\"msgs\": [1, 2, 3]}", "210");
    expect_render("{{ '\\u00e9\\x41\\t' }}|{{ \"it's\" 'concat' }}", "{}", "\xc3\xa9" "A\t|it'sconcat");
}

static void expect_error(const char *src, const char *vars_json, const char *needle) {
    char err[512] = "";
    dump_case("error", src, vars_json, needle);
    jinja_template *t = jinja_parse(src, strlen(src), err, sizeof err);
    if (t) {
        json *vars = json_parse(vars_json, strlen(vars_json), err, sizeof err);
        char *out = NULL;
        size_t n;
        int rc = jinja_render(t, vars, &out, &n, err, sizeof err);
        CHECK(rc != 0, "'%s' should fail, rendered '%s'", src, out ? out : "");
        free(out);
        json_free(vars);
        jinja_free(t);
    }
    CHECK(strstr(err, "line ") && strstr(err, "column "), "'%s': error has no position: %s", src, err);
    CHECK(strstr(err, needle) != NULL, "'%s': error '%s' lacks '%s'", src, err, needle);
}

static void test_errors(void) {
    expect_error("{% include 'x.html' %}", "{}", "unsupported or unknown tag 'include'");
    expect_error("{% extends 'base' %}", "{}", "'extends'");
    expect_error("{% call m() %}x{% endcall %}", "{}", "'call'");
    expect_error("{{ x|wordwrap }}", "{}", "unsupported filter 'wordwrap'");
    expect_error("{{ x is divisible }}", "{}", "unsupported test 'divisible'");
    expect_error("{% if x %}unclosed", "{}", "expected 'elif' or 'else' or 'endif'");
    expect_error("{{ x ", "{}", "not closed");
    expect_error("{{ 'abc }}", "{}", "unterminated string");
    expect_error("{% for x in y recursive %}{% endfor %}", "{}", "recursive");
    expect_error("line1\n{{ raise_exception('bad role') }}", "{}", "raise_exception: bad role");
    expect_error("{{ '%s' % 1 }}", "{}", "not supported");
    expect_error("{{ 'a'.format(1) }}", "{}", "not supported");
    expect_error("{{ x.y }}", "{}", "'x' is undefined");
    expect_error("{{ 'a' + 1 }}", "{}", "unsupported operand");
    expect_error("{{ [1]|reverse }}", "{}", "cannot print");
    expect_error("{% break %}", "{}", "outside of a loop");
    expect_error("{{ 0x10 }}", "{}", "not supported");
    expect_error("{{ 9223372036854775807 + 1 }}", "{}", "overflow");
    expect_error("{% set ns = namespace() %}{% set ns._x = 1 %}", "{}", "underscore");
    expect_error("{% macro m(a) %}{{ m(a) }}{% endmacro %}{{ m(1) }}", "{}", "nested too deeply");
}

/* Mutated and truncated real templates: any outcome but a crash is fine. */
static void test_fuzz(const char *variant, int iters) {
    char *src = NULL;
    size_t len = 0;
    chat_template *ct = load_variant(variant, &src, &len);
    if (!ct || !src) { CHECK(0, "load"); return; }
    chat_template_free(ct);
    char err[512];
    const char *msgs_txt = "[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q\"},"
        "{\"role\":\"assistant\",\"content\":\"<think>r</think>a\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
        "\"arguments\":{\"x\":1}}}]},{\"role\":\"tool\",\"content\":\"t\"}]";
    json *msgs = json_parse(msgs_txt, strlen(msgs_txt), err, sizeof err);
    const char *tools_txt = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]";
    json *tools = json_parse(tools_txt, strlen(tools_txt), err, sizeof err);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    char *buf = malloc(len + 64);
    int parsed = 0, rendered = 0, total = 0;
    static const char *inserts[] = {"{%", "%}", "{{", "}}", "{#", "(", ")", "[", "]", "'", "\"", "|", "-", " if ",
                                    " endfor ", ".", ",", "\\", "{%- endif %}", "{{ loop }}", "~", "[::-1]"};
    for (int iter = 0; iter < iters; iter++) {
        size_t n;
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        if (iter < iters / 4) { /* truncation */
            n = (size_t)(rng % (len + 1));
            memcpy(buf, src, n);
        } else { /* a few random edits */
            memcpy(buf, src, len);
            n = len;
            for (int e = 0; e < 1 + iter % 6; e++) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                size_t at = (size_t)(rng % n);
                int kind = (int)((rng >> 32) % 3);
                if (kind == 0) buf[at] = (char)(rng >> 40);
                else if (kind == 1 && n > 1) { memmove(buf + at, buf + at + 1, n - at - 1); n--; }
                else {
                    const char *ins = inserts[(rng >> 24) % (sizeof inserts / sizeof *inserts)];
                    size_t k = strlen(ins);
                    if (n + k <= len + 60) {
                        memmove(buf + at + k, buf + at, n - at);
                        memcpy(buf + at, ins, k);
                        n += k;
                    }
                }
            }
        }
        total++;
        chat_template *t = chat_template_parse(buf, n, err, sizeof err);
        if (!t) {
            CHECK(err[0] != 0, "a parse failure must say why");
            continue;
        }
        parsed++;
        char *out = NULL;
        size_t on;
        if (chat_template_render(t, msgs, (iter & 1) ? tools : NULL, iter & 2, NULL, &out, &on, err, sizeof err) == 0)
            rendered++;
        else CHECK(err[0] != 0, "a render failure must say why");
        free(out);
        chat_template_free(t);
    }
    printf("fuzz %s: %d variants, %d parsed, %d rendered\n", variant, total, parsed, rendered);
    free(buf);
    free(src);
    json_free(msgs);
    json_free(tools);
}

/* Random token soups: exercises odd expression shapes in the parser and evaluator. */
static void test_token_soup(int iters) {
    static const char *toks[] = {"{{", "}}", "{%", "%}", "{%-", "-%}", " if ", " else ", " elif ", " endif ", " for ",
        " in ", " endfor ", " set ", "=", " x ", " ns ", " ns.a ", " messages ", " loop ", "loop.index0", " m ",
        "namespace(a=1)", "(", ")", "[", "]", "{", "}", ":", ",", ".", "|", "|tojson", "|length", "|join(',')",
        "|items", "|list", "|map(attribute='role')", "|selectattr('role')", "|sort", "|first", "|default(1)",
        " is ", " not ", " and ", " or ", " defined ", " string ", "~", "+", "-", "*", "/", "//", "%", "**",
        "==", "!=", "<", ">=", "'s'", "\"q\"", "0", "1", "-1", "2.5", "1e308", "9223372036854775807", "none",
        "true", "[::-1]", "[1:]", "[-1]", ".split('/')", ".strip()", ".startswith('a')", ".items()", ".get('a')",
        "range(3)", "range(99999999)", "raise_exception('e')", "dict(a=1)", " macro f(a) ", " endmacro ",
        "f(1)", " break ", " continue ", "text\n", "  ", "\n", "{#", "#}", " raw ", " endraw ", " with ",
        " endwith ", "'\\u00e9'", "'\\x'"};
    const size_t ntoks = sizeof toks / sizeof *toks;
    char err[512];
    const char *vars_txt = "{\"messages\":[{\"role\":\"user\",\"content\":\"a/b\"},{\"role\":\"tool\"}],"
                           "\"x\":[1,2.5,\"s\",null,{\"a\":[true]}],\"m\":{\"role\":\"r\"}}";
    json *vars = json_parse(vars_txt, strlen(vars_txt), err, sizeof err);
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    char buf[4096];
    int parsed = 0, rendered = 0;
    for (int iter = 0; iter < iters; iter++) {
        size_t n = 0;
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        int count = 1 + (int)(rng % 40);
        for (int k = 0; k < count; k++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            const char *t = toks[rng % ntoks];
            size_t tl = strlen(t);
            if (n + tl >= sizeof buf) break;
            memcpy(buf + n, t, tl);
            n += tl;
        }
        jinja_template *t = jinja_parse(buf, n, err, sizeof err);
        if (!t) {
            CHECK(err[0] != 0, "a parse failure must say why");
            continue;
        }
        parsed++;
        char *out = NULL;
        size_t on;
        if (jinja_render(t, vars, &out, &on, err, sizeof err) == 0) rendered++;
        else CHECK(err[0] != 0, "a render failure must say why");
        free(out);
        jinja_free(t);
    }
    printf("token soup: %d templates, %d parsed, %d rendered\n", iters, parsed, rendered);
    json_free(vars);
}

static void test_load_dir(void) {
    char err[512];
    chat_template *ct = chat_template_load_dir("tests/data/qwen3-tokenizer", err, sizeof err);
    /* that folder names its configs tokenizer_config.<variant>.json, so there is no template */
    CHECK(ct == NULL && strstr(err, "no chat template"), "load_dir without tokenizer_config.json: %s", err);
    chat_template_free(ct);
    const char *msgs_txt = "[]";
    json *msgs = json_parse(msgs_txt, 2, err, sizeof err);
    chat_template *inst = load_variant("instruct", NULL, NULL);
    char *out = NULL;
    size_t n;
    CHECK(chat_template_render(inst, msgs, NULL, 1, NULL, &out, &n, err, sizeof err) != 0, "empty conversation");
    free(out);
    chat_template_free(inst);
    json_free(msgs);
}

/* chat_prompt_opens_think on prompts rendered by the real templates (their bytes are checked
 * against transformers in test_references): the thinking template's generation prompt opens a
 * reasoning block; a "<think>" a user typed, or the closed reasoning of an earlier turn, does not. */
static int opens_for(chat_template *ct, const char *messages_json) {
    char err[512], *out = NULL;
    size_t n = 0;
    json *msgs = json_parse(messages_json, strlen(messages_json), err, sizeof err);
    CHECK(msgs != NULL, "%s", err);
    if (!msgs || chat_template_render(ct, msgs, NULL, 1, NULL, &out, &n, err, sizeof err)) {
        CHECK(0, "render: %s", err);
        json_free(msgs);
        return -1;
    }
    int r = chat_prompt_opens_think(out, n);
    free(out);
    json_free(msgs);
    return r;
}

static void test_opens_think(void) {
    chat_template *inst = load_variant("instruct", NULL, NULL), *think = load_variant("thinking", NULL, NULL);
    CHECK(inst && think, "templates load");
    if (!inst || !think) return;
    const char *typed = "[{\"role\":\"user\",\"content\":\"what does <think> mean?\"}]";
    const char *history = "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"<think>r</think>b\"},"
                          "{\"role\":\"user\",\"content\":\"c <think>\"}]";
    CHECK(opens_for(think, typed) == 1, "thinking template: the generation prompt opens <think>");
    CHECK(opens_for(think, history) == 1, "thinking template with history: the new turn opens <think>");
    CHECK(opens_for(inst, typed) == 0, "instruct template: a <think> typed by the user does not count");
    CHECK(opens_for(inst, history) == 0, "instruct template: earlier reasoning and typed tags do not count");
    static const struct { const char *p; int open; } raw[] = {
        {"<think>no header", 0},
        {"<|im_start|>user\n<think><|im_end|>\n<|im_start|>assistant\n", 0},
        {"<|im_start|>assistant\n<think>\n", 1},
        {"<|im_start|>assistant\n<think>\nprefilled</think>\n\n", 0},
        {"<|im_start|>assistant\n<think>a</think><|im_end|>\n<|im_start|>assistant\n<think>", 1},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++)
        CHECK(chat_prompt_opens_think(raw[i].p, strlen(raw[i].p)) == raw[i].open, "opens_think(%s)", raw[i].p);
    chat_template_free(inst);
    chat_template_free(think);
}

int main(void) {
    const char *dump = getenv("QNEXT_DUMP_TEMPLATE_CASES");
    if (dump) dump_file = fopen(dump, "w");
    test_references();
    test_expressions();
    test_statements();
    test_errors();
    /* QNEXT_FUZZ_ITERS raises the count for a longer robustness run */
    int iters = getenv("QNEXT_FUZZ_ITERS") ? atoi(getenv("QNEXT_FUZZ_ITERS")) : 1500;
    test_fuzz("thinking", iters);
    test_fuzz("instruct", iters);
    test_token_soup(iters * 4);
    test_load_dir();
    test_opens_think();
    if (dump_file) fclose(dump_file);
    return tu_finish("test_chat_template");
}
