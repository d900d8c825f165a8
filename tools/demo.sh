#!/usr/bin/env bash
# `make demo`: the main job on the embedded default model, qnext-tiny (a small Qwen3-Next
# trained here; models/qnext-tiny/README.md): a plain-text continuation, streamed as it is
# generated, with the generation_config.json sampling defaults.
set -e
Q=build/qnext
P="It was a dark and stormy night, and"
echo "\$ qnext run --raw -m models/qnext-tiny -p \"$P\" -n 80"
printf '%s' "$P"
$Q run --raw -m models/qnext-tiny -p "$P" -n 80
