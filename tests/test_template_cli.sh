#!/usr/bin/env bash
# `qnext template` end to end: renders two conversations through the command line with a
# model directory holding tokenizer_config.json, and compares the bytes with transformers'
# apply_chat_template output (tests/data/template_cli/, made by tools/make_template_refs.py).
set -u
Q=${QNEXT_BIN:-build/qnext}
D=tests/data/template_cli
T=tests/data/qwen3-tokenizer
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*" >&2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/thinking" "$tmp/instruct" "$tmp/jinja"
cp $T/tokenizer_config.thinking.json "$tmp/thinking/tokenizer_config.json"
cp $T/tokenizer_config.instruct.json "$tmp/instruct/tokenizer_config.json"

# thinking template, tools and a multi-step tool conversation, generation prompt on
$Q template -m "$tmp/thinking" --messages $D/tools_messages.json --tools $D/tools_tools.json > "$tmp/out1" \
  && ok || bad "template (tools) exited with an error"
cmp -s "$tmp/out1" $D/tools_expected.txt && ok || bad "tools case differs from transformers: $(cmp "$tmp/out1" $D/tools_expected.txt)"

# instruct template, kwargs inline and from a file, no generation prompt
$Q template -m "$tmp/instruct" --messages $D/kwargs_messages.json --no-generation-prompt \
  --kwargs '{"enable_thinking": false}' > "$tmp/out2" && ok || bad "template (inline kwargs) failed"
cmp -s "$tmp/out2" $D/kwargs_expected.txt && ok || bad "inline kwargs case differs: $(cmp "$tmp/out2" $D/kwargs_expected.txt)"
$Q template -m "$tmp/instruct" --messages $D/kwargs_messages.json --no-generation-prompt \
  --kwargs $D/kwargs_kwargs.json > "$tmp/out3" && ok || bad "template (kwargs file) failed"
cmp -s "$tmp/out3" $D/kwargs_expected.txt && ok || bad "kwargs file case differs"

# chat_template.jinja takes precedence over tokenizer_config.json
cp $T/tokenizer_config.instruct.json "$tmp/jinja/tokenizer_config.json"
printf '%s' '{{ eos_token }}|{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}' > "$tmp/jinja/chat_template.jinja"
out=$($Q template -m "$tmp/jinja" --messages $D/kwargs_messages.json)
[ "$out" = "<|im_end|>|user:Quick answer please." ] && ok || bad "chat_template.jinja: got '$out'"

# errors: one message on stderr and a non-zero exit
printf '%s' '{% if messages %}{{ raise_exception("no " ~ "way") }}{% endif %}' > "$tmp/jinja/chat_template.jinja"
err=$($Q template -m "$tmp/jinja" --messages $D/kwargs_messages.json 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"raise_exception: no way"* ]] && [[ "$err" == *"line 1"* ]] && ok || bad "raise_exception: rc=$rc '$err'"
printf '%s' '{% for m in messages %}{% include "x" %}{% endfor %}' > "$tmp/jinja/chat_template.jinja"
err=$($Q template -m "$tmp/jinja" --messages $D/kwargs_messages.json 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && [[ "$err" == *"column"* ]] && ok || bad "unsupported tag: rc=$rc '$err'"
echo '[{"role": "user"' > "$tmp/badmsg.json"
$Q template -m "$tmp/instruct" --messages "$tmp/badmsg.json" >/dev/null 2>&1 && bad "malformed messages accepted" || ok
$Q template -m "$tmp/instruct" >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "missing --messages should exit 2"
$Q template -m "$tmp/nonexistent" --messages $D/kwargs_messages.json >/dev/null 2>&1 && bad "missing model dir accepted" || ok

echo "test_template_cli: $((pass+fail)) checks, $fail failed"
[ $fail -eq 0 ]
