#!/usr/bin/env bash
# `make demo`: the main job on the embedded default model. Until the trained qnext-tiny
# model ships, this runs a reference fixture: its configuration, then a greedy
# continuation that matches transformers token for token.
set -e
Q=build/qnext
if [ -f models/qnext-tiny/model.safetensors ] && $Q --help | grep -q "^  run "; then
  exec $Q run --raw -m models/qnext-tiny -p "It was a dark and stormy night, and" -n 80
fi
fx=tests/fixtures/base_gqa
$Q info -m $fx
prompt=$(python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/ref.json'))['prompt'][:32])))")
echo
echo "\$ qnext generate -m $fx --ids \"$prompt\" -n 16 --temp 0"
$Q generate -m $fx --ids "$prompt" -n 16 --temp 0
