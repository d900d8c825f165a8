#!/usr/bin/env python3
"""References for tests/test_run_cli.sh: greedy continuations computed by transformers.

The model directory is the fixture tests/fixtures/base_gqa (vocab 512) with the tokenizer of
tests/data/tok512. For each case the prompt is tokenized by Hugging Face (`tokenizers` for
--raw; `apply_chat_template` for the chat mode), the Qwen3NextForCausalLM reference (float32)
picks the argmax token step by step (full forward each step, no cache) until the eos id 511
or n tokens, and the ids are decoded with skip_special_tokens=False. The smallest top-1/top-2
logit margin is recorded so that a test failure can be told apart from a near-tie.

"thinking_chat" is a two-turn conversation under the Qwen3-Next Thinking template (from
tests/data/qwen3-tokenizer/tokenizer_config.thinking.json): each turn renders all messages so
far (the earlier answers as assistant messages with the decoded text), which is what
tests/test_chat_pty.sh checks `qnext chat` against.

Usage: python3 tools/make_run_refs.py   (writes tests/data/tok512/run_refs.json)
"""
import json
import os
import shutil
import tempfile

import torch
from transformers import AutoTokenizer, Qwen3NextForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "base_gqa")
TOK = os.path.join(ROOT, "tests", "data", "tok512")
OUT = os.path.join(TOK, "run_refs.json")
EOS = 511

CASES = [
    {"mode": "raw", "prompt": "Hello! How are you today?", "n": 24},
    {"mode": "raw", "prompt": "The capital of France is", "n": 16},
    {"mode": "raw", "prompt": "caf\u00e9 \u00fcber na\u00efve \u2014 \u4f60\u597d", "n": 20},
    {"mode": "chat", "system": "You are terse.", "prompt": "What is 2 + 2?", "n": 20},
    {"mode": "chat", "prompt": "Tell me a story.", "n": 20},
]
THINKING_TURNS = ["Tell me a story.", "What is 2 + 2?"]
THINKING_N = 20


@torch.no_grad()
def greedy(model, ids, n):
    out, margins = [], []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        top2 = logits.topk(2)
        margins.append(float(top2.values[0] - top2.values[1]))
        tok = int(top2.indices[0])
        if tok == EOS:
            break
        out.append(tok)
    return out, margins


def main():
    with tempfile.TemporaryDirectory() as d:
        for f in os.listdir(FIXTURE):
            if f.endswith(".json") and f != "config.json":
                continue
            if f.endswith(".npy"):
                continue
            shutil.copy(os.path.join(FIXTURE, f), d)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TOK, f), d)
        tok = AutoTokenizer.from_pretrained(d)
        model = Qwen3NextForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        refs, turns = [], []
        for c in CASES:
            if c["mode"] == "raw":
                ids = tok(c["prompt"], add_special_tokens=False)["input_ids"]
            else:
                msgs = ([{"role": "system", "content": c["system"]}] if "system" in c else []) + \
                       [{"role": "user", "content": c["prompt"]}]
                ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
            out, margins = greedy(model, list(ids), c["n"])
            r = dict(c)
            r.update({"prompt_ids": list(ids), "ids": out,
                      "text": tok.decode(out, skip_special_tokens=False),
                      "stopped_at_eos": len(out) < c["n"], "min_margin": min(margins)})
            refs.append(r)
            print(c["mode"], len(ids), "prompt ids ->", len(out), "ids, min margin %.4g" % min(margins),
                  repr(r["text"][:60]))
        thinking = json.load(open(os.path.join(ROOT, "tests", "data", "qwen3-tokenizer",
                                               "tokenizer_config.thinking.json")))["chat_template"]
        msgs, turns = [], []
        for prompt in THINKING_TURNS:
            msgs.append({"role": "user", "content": prompt})
            ids = tok.apply_chat_template(msgs, chat_template=thinking, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out, margins = greedy(model, list(ids), THINKING_N)
            text = tok.decode(out, skip_special_tokens=False)
            turns.append({"prompt": prompt, "prompt_ids": list(ids), "ids": out, "text": text,
                          "stopped_at_eos": len(out) < THINKING_N, "min_margin": min(margins)})
            msgs.append({"role": "assistant", "content": text})
            print("thinking", len(ids), "prompt ids ->", len(out), "ids, min margin %.4g" % min(margins))
    import transformers
    with open(OUT, "w") as f:
        json.dump({"notes": "greedy references from transformers %s / torch %s (float32), see tools/make_run_refs.py"
                   % (transformers.__version__, torch.__version__), "cases": refs,
                   "thinking_chat": {"n": THINKING_N, "turns": turns}}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
