#!/usr/bin/env python3
"""How close can any engine running a Q8_0 file come to the unquantized model?

Takes an HF Qwen3-Next checkpoint and rounds its weights exactly as the Q8_0 mix of
`qnext quantize` and llama-quantize does (each tensor that the mix stores as Q8_0 goes through
the `gguf` package's own Q8_0 quantizer and dequantizer; the 48-wide expert down-projections,
which Q8_0 blocks of 32 cannot hold, through f16; routers, the shared-expert gate, norms, conv,
A_log and dt_bias unchanged). The result is written as an f32 checkpoint. Then it runs HF
transformers (CPU, fp32) on the original and on the rounded checkpoint over the chunks that
`qnext eval` uses, and reports the same measures: mean / p99 / max KL(ref || rounded), top-1
agreement (all positions, and the "decisive" ones where the reference's top-1 probability
leads the second by at least 0.01), and both perplexities.

This is the Q8_0 file's model computed by another engine, without any of qnext's code: the
agreement it reports is what the format costs on this model, for every engine.
The written checkpoint can also be given to `qnext eval --ref`, against the Q8_0 GGUF file,
to check that it is the file's model.

usage: python3 tools/check_q8_agreement.py --model models/qnext-tiny --out DIR
           [--text FILE | --ids FILE] [-c 512] [--chunks 32] [--score-from 0] [--threads N]

--ids FILE takes token ids (whitespace-separated, as `qnext eval --ids` does; `qnext tokenize
--no-special` writes the ids `qnext eval --text` uses), so both engines score the same chunks;
--text tokenizes with tokenizer.json, which reads special-token text as the special tokens.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants
from safetensors import safe_open
from safetensors.torch import save_file


def mix_type(name, shape):
    """The Q8_0 mix's type for one HF tensor: 'q8_0', 'f16' or None (kept as it is)."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return None  # 1-D (norms, A_log, dt_bias) and the 3-D conv stay f32
    if name.endswith("norm.weight") or name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
        return None  # the converter keeps these f32
    return "q8_0" if shape[1] % 32 == 0 else "f16"  # llama.cpp's fallback for rows Q8_0 cannot block


def round_checkpoint(model_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    counts = {"q8_0": 0, "f16": 0, None: 0}
    tensors = {}
    for fn in sorted(os.listdir(model_dir)):
        if not fn.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(model_dir, fn), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k).float()
                kind = mix_type(k, list(t.shape))
                counts[kind] += 1
                if kind == "q8_0":
                    a = t.numpy()
                    q = quants.quantize(a, GGMLQuantizationType.Q8_0)
                    t = torch.from_numpy(np.ascontiguousarray(quants.dequantize(q, GGMLQuantizationType.Q8_0)).reshape(a.shape))
                elif kind == "f16":
                    t = t.half().float()
                tensors[k] = t.contiguous()
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for fn in os.listdir(model_dir):
        if fn.endswith(".json") and not fn.endswith(".safetensors.index.json"):
            shutil.copy(os.path.join(model_dir, fn), os.path.join(out_dir, fn))
    cfg_path = os.path.join(out_dir, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["torch_dtype"] = "float32"
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    print(f"rounded: {counts['q8_0']} tensors Q8_0, {counts['f16']} f16, {counts[None]} kept -> {out_dir}")


def chunk_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def evaluate(ref_dir, model_dir, text, ids_path, ctx, n_chunks, score_from):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    if ids_path:
        ids = [int(v) for v in open(ids_path).read().split()]
    else:
        tok = Tokenizer.from_file(os.path.join(ref_dir, "tokenizer.json"))
        ids = tok.encode(open(text, encoding="utf-8").read(), add_special_tokens=False).ids
    n_chunks = min(n_chunks, len(ids) // ctx)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    mod = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kls, agree, n, dec_agree, dec_n, nll_ref, nll_mod = [], 0, 0, 0, 0, 0.0, 0.0
    for c in range(n_chunks):
        chunk = ids[c * ctx:(c + 1) * ctx]
        lr = torch.log_softmax(chunk_logits(ref, chunk), -1)
        lm = torch.log_softmax(chunk_logits(mod, chunk), -1)
        for i in range(score_from, ctx - 1):
            pr = lr[i].exp()
            kls.append(float((pr * (lr[i] - lm[i])).sum()))
            top2 = torch.topk(pr, 2)
            same = int(lr[i].argmax() == lm[i].argmax())
            agree += same
            n += 1
            if float(top2.values[0] - top2.values[1]) >= 0.01:
                dec_agree += same
                dec_n += 1
            nll_ref -= float(lr[i][chunk[i + 1]])
            nll_mod -= float(lm[i][chunk[i + 1]])
        print(f"[chunk {c + 1}/{n_chunks}] top-1 {agree}/{n}, mean KL {sum(kls) / len(kls):.6f}", file=sys.stderr)
    kls.sort()
    print(f"tokens scored:  {n} ({n_chunks} chunks of {ctx}, from position {score_from})")
    print(f"KL(ref||model): mean {sum(kls) / n:.6f}  p99 {kls[int(0.99 * (n - 1))]:.6f}  max {kls[-1]:.6f}")
    print(f"top-1 agree:    {100.0 * agree / n:.4f}% ({agree}/{n}); where the reference's top-1 leads by >= 0.01: "
          f"{100.0 * dec_agree / dec_n:.4f}% ({dec_agree}/{dec_n})")
    print(f"perplexity:     model {math.exp(nll_mod / n):.4f}  reference {math.exp(nll_ref / n):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF checkpoint directory (the reference)")
    ap.add_argument("--out", required=True, help="where the Q8_0-rounded f32 checkpoint goes")
    ap.add_argument("--text", help="text to evaluate on (tokenized with the reference's tokenizer.json)")
    ap.add_argument("--ids", help="token ids to evaluate on (whitespace-separated)")
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--score-from", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.text and a.ids:
        ap.error("give --text or --ids, not both")
    round_checkpoint(a.model, a.out)
    if a.text or a.ids:
        evaluate(a.model, a.out, a.text, a.ids, a.ctx, a.chunks, a.score_from)


if __name__ == "__main__":
    main()
