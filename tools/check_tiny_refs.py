#!/usr/bin/env python3
"""Recompute tests/data/tiny_refs.json from the shipped models/qnext-tiny files with the local
transformers (CPU, fp32) and compare with the stored values (a cross-version check: the stored refs
were computed on the training machine). Also checks the shipped file sizes and tensor names.

usage: python3 tools/check_tiny_refs.py [--model-dir models/qnext-tiny] [--refs tests/data/tiny_refs.json]
"""
import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mtp_state_from_checkpoint(path, n_experts):
    """mtp.* tensors of the official per-expert layout -> TinyMTP state dict (fused experts)."""
    f = safe_open(path, "pt")
    sd = {k[len("mtp."):]: f.get_tensor(k) for k in f.keys() if k.startswith("mtp.")}
    pre = "layers.0.mlp.experts."
    gate = [sd.pop(f"{pre}{e}.gate_proj.weight") for e in range(n_experts)]
    up = [sd.pop(f"{pre}{e}.up_proj.weight") for e in range(n_experts)]
    down = [sd.pop(f"{pre}{e}.down_proj.weight") for e in range(n_experts)]
    sd[pre + "gate_up_proj"] = torch.stack([torch.cat([g, u], 0) for g, u in zip(gate, up)])
    sd[pre + "down_proj"] = torch.stack(down)
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models", "qnext-tiny"))
    ap.add_argument("--refs", default=os.path.join(ROOT, "tests", "data", "tiny_refs.json"))
    args = ap.parse_args()
    total = sum(os.path.getsize(os.path.join(args.model_dir, f)) for f in os.listdir(args.model_dir))
    print(f"model dir: {total} bytes")
    assert total <= 20_000_000
    cfg = json.load(open(os.path.join(args.model_dir, "config.json")))
    st = os.path.join(args.model_dir, "model.safetensors")
    names = set(safe_open(st, "pt").keys())
    assert "lm_head.weight" not in names and cfg["tie_word_embeddings"]
    assert "mtp.layers.0.mlp.experts.0.gate_proj.weight" in names and "mtp.fc.weight" in names
    ref = json.load(open(args.refs))
    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    mtp_state = mtp_state_from_checkpoint(st, cfg["num_experts"])
    val_ids = ref["val"]["ids"]
    import numpy as np
    new = train_tiny.compute_refs(args.model_dir, mtp_state, None, np.asarray(val_ids), tok, len(val_ids),
                                  [g["prompt"] for g in ref["greedy"]], len(ref["greedy"][0]["continuation_ids"]),
                                  print)
    ok = True
    d_ppl = abs(new["val"]["ppl"] / ref["val"]["ppl"] - 1)
    print(f"val ppl stored={ref['val']['ppl']:.6f} local={new['val']['ppl']:.6f} rel.diff={d_ppl:.2e}")
    ok &= d_ppl < 1e-4
    for key, sec in (("main_argmax", "val"), ("draft_argmax", "mtp")):
        a, b = ref[sec][key], new[sec][key]
        margins = ref[sec]["main_margin" if sec == "val" else "draft_margin"]
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        print(f"{sec}.{key}: {len(bad)} of {len(a)} positions differ (stored margins there: "
              f"{[margins[i] for i in bad][:8]})")
        ok &= all(margins[i] < 1e-3 for i in bad)
    for g_ref, g_new in zip(ref["greedy"], new["greedy"]):
        same = g_ref["continuation_ids"] == g_new["continuation_ids"]
        print(f"greedy {g_ref['prompt'][:30]!r}: {'same' if same else 'DIFFERENT'}")
        ok &= same or min(g_ref["margins"]) < 1e-3
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
