#!/usr/bin/env python3
"""check_template_unit_cases.py - confirms the small hand-written cases in
tests/test_chat_template.c against jinja2 with transformers' chat template environment.

The C test writes its cases as JSON lines when QNEXT_DUMP_TEMPLATE_CASES is set:
    QNEXT_DUMP_TEMPLATE_CASES=/tmp/cases.jsonl build/test_chat_template
    python3 tools/check_template_unit_cases.py /tmp/cases.jsonl
"render" cases must produce exactly the expected text; "error" cases must raise (or be
rejected) in jinja2 too, except the few where the C interpreter deliberately refuses
something jinja2 would accept (listed in DELIBERATE), which are reported separately.
"""
import json
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template

# Syntax the C interpreter refuses on purpose (docs/TEMPLATES.md): rather than guess,
# it reports an error.
DELIBERATE = {
    "{{ '%s' % 1 }}": "printf-style formatting is not implemented",
    "{{ 'a'.format(1) }}": "str.format is not implemented",
    "{{ 0x10 }}": "hex literals are not implemented",
    "{{ 9223372036854775807 + 1 }}": "Python ints are unbounded; the C interpreter stops at 64 bits",
    "{% for x in y recursive %}{% endfor %}": "recursive loops are not implemented",
    "{% macro m(a) %}{{ m(a) }}{% endmacro %}{{ m(1) }}": "jinja2 fails too, with RecursionError",
    "{{ [1]|reverse }}": "jinja2 prints an iterator's address, which is not reproducible",
}


def main():
    bad = 0
    n = 0
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            case = json.loads(line)
            n += 1
            src, variables = case["src"], case["vars"]
            try:
                out = _compile_jinja_template(src).render(**variables)
                err = None
            except Exception as e:  # noqa: BLE001 - any template error counts
                out, err = None, f"{type(e).__name__}: {e}"
            if case["kind"] == "render":
                if out != case["expected"]:
                    bad += 1
                    print(f"MISMATCH {src!r}\n  jinja2:   {out!r} {err or ''}\n  expected: {case['expected']!r}")
            else:
                if err is None:
                    if src in DELIBERATE:
                        print(f"deliberate: {src!r} renders {out!r} in jinja2 ({DELIBERATE[src]})")
                    else:
                        bad += 1
                        print(f"NOT AN ERROR in jinja2: {src!r} -> {out!r}")
    print(f"{n} cases, {bad} disagree with jinja2")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
