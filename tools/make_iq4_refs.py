#!/usr/bin/env python3
"""make_iq4_refs.py - qwen3next GGUFs quantized by llama.cpp's llama-quantize to IQ4_XS, IQ4_NL and
MXFP4_MOE, with transformers reference logits of the weights they store (tests/test_gguf_iq4.c).

IQ4_XS needs rows that are a multiple of 256 (llama-quantize falls back to IQ4_NL otherwise), and
the test fixtures are 64-128 wide, so this builds one more random checkpoint, "h256" (hidden 256,
attention 2 x 128, DeltaNet value width 2 x 128, experts 256 wide: every matrix has 256-multiple
rows; 2 layers, linear then full attention, 2 experts top-1, vocabulary 256), with
tools/make_fixtures.py's weight maker, into tests/data/gguf_iq4/h256 (kept: test_gguf_models.c
quantizes it with `qnext quantize --type IQ4_XS` and compares with llama-quantize's file). Then:
  1. `qnext quantize --type BF16` writes the converter's BF16 GGUF (byte-identical to llama.cpp's
     convert_hf_to_gguf.py, tests/test_gguf_models.c);
  2. llama-quantize (llama.cpp at LLAMA_CPP_COMMIT) writes
       h256.IQ4_XS.gguf          ftype IQ4_XS (IQ4_XS everywhere but output Q6_K and the F32 tensors),
       short_top1.IQ4_NL.gguf    ftype IQ4_NL of tests/fixtures/short_top1 (64 wide),
       short_top1.MXFP4_MOE.gguf ftype MXFP4_MOE of the same (experts MXFP4, the rest Q8_0);
  3. every tensor of each file is dequantized by the gguf package (gguf.quants.dequantize),
     mapped back to the Hugging Face names (make_gguf_refs.hf_from_stored) and loaded into
     transformers' Qwen3NextForCausalLM (fp32 compute, eager); its logits of a fixed prompt are
     <file>.logits.npy. The engine on the GGUF must reproduce them up to its activation
     quantization (Q8_K/Q8_0 activations, as llama.cpp's CPU backend does).
Writes tests/data/gguf_iq4/: the three GGUFs, their .logits.npy and refs.json.

Usage: python3 tools/make_iq4_refs.py [--llama-quantize PATH] [--qnext PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
import make_gguf_refs as mg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "gguf_iq4")
LLAMA_CPP_COMMIT = "3f545beccee69d9975f466ec7e45fd9aacd8ba90"

H256 = dict(
    name="h256", seed=6006, spelling="published", shards=1, mtp=False,
    cfg=dict(vocab_size=256, hidden_size=256, num_hidden_layers=2, full_attention_interval=2,
             num_attention_heads=2, num_key_value_heads=1, head_dim=128, partial_rotary_factor=0.25,
             rope_theta=1000000.0, rope_scaling=None, max_position_embeddings=1024,
             linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=128, linear_value_head_dim=128,
             num_experts=2, num_experts_per_tok=1, moe_intermediate_size=256, shared_expert_intermediate_size=256,
             intermediate_size=512, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
             tie_word_embeddings=False, bos_token_id=254, eos_token_id=255),
)
PROMPT_LEN = 48


def stored_tensors(path):
    """name -> (type name, float32 array in PyTorch order) for every tensor of a GGUF file."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        out[t.name] = (t.tensor_type.name, arr)
    return out


def fix_shapes(cfg, stored):
    # llama-quantize rewrites tensors with ggml_n_dims dims: the shared-expert gate [1, H] becomes [H]
    H = cfg["hidden_size"]
    for name, (ty, arr) in list(stored.items()):
        if name.endswith("ffn_gate_inp_shexp.weight"):
            stored[name] = (ty, arr.reshape(1, H))
    return stored


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-quantize", default="/work/llama.cpp/build/bin/llama-quantize")
    ap.add_argument("--qnext", default=os.path.join(ROOT, "build", "qnext"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    from importlib.metadata import version
    refs = {"generator": f"tools/make_iq4_refs.py: gguf {version('gguf')}, torch {torch.__version__}, "
                         f"transformers {version('transformers')}",
            "llama_cpp_commit": LLAMA_CPP_COMMIT, "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        h256 = os.path.join(OUT, "h256")
        os.makedirs(h256, exist_ok=True)
        cfg = mf.config_json(H256)
        with open(os.path.join(h256, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        ckpt = mf.make_checkpoint(H256, cfg)
        mf.write_safetensors(ckpt, h256, 1)
        short = os.path.join(ROOT, "tests", "fixtures", "short_top1")
        jobs = [("h256", h256, "IQ4_XS"), ("short_top1", short, "IQ4_NL"), ("short_top1", short, "MXFP4_MOE")]
        rng = np.random.default_rng(6007)
        for name, d, ftype in jobs:
            cfg = json.load(open(os.path.join(d, "config.json")))
            bf16 = os.path.join(tmp, name + ".bf16.gguf")
            if not os.path.exists(bf16):
                subprocess.run([args.qnext, "quantize", "-m", d, "-o", bf16, "--type", "BF16", "--quiet"], check=True)
            base = f"{name}.{ftype}"
            out = os.path.join(OUT, base + ".gguf")
            subprocess.run([args.llama_quantize, bf16, out, ftype, "2"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            stored = fix_shapes(cfg, stored_tensors(out))
            sd = mg.load_checkpoint(d)
            prompt = [int(x) for x in rng.integers(0, cfg["vocab_size"] - 2, PROMPT_LEN)]
            logits = mg.reference_logits(d, mg.hf_from_stored(cfg, stored, sd), prompt)
            np.save(os.path.join(OUT, base + ".logits.npy"), logits.astype(np.float32))
            types = {}
            for ty, _ in stored.values():
                types[ty] = types.get(ty, 0) + 1
            print(f"{base}: tensor types {dict(sorted(types.items()))}")
            refs["files"].append({"gguf": base + ".gguf", "model": name, "ftype": ftype, "prompt": prompt,
                                  "logits": base + ".logits.npy", "tensor_types": dict(sorted(types.items()))})
    json.dump(refs, open(os.path.join(OUT, "refs.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
