#!/usr/bin/env python3
"""make_gguf_refs.py - reference qwen3next GGUF files written by the `gguf` Python package.

From test fixtures (tiny random Qwen3-Next checkpoints in HF layout, tests/fixtures/*), writes
GGUF files with the gguf package's own GGUFWriter and quantizer (gguf.quants.quantize) following
llama.cpp's convert_hf_to_gguf.py mapping for Qwen3NextForCausalLM (conversion/qwen.py at the
llama.cpp commit recorded in refs.json; docs/GGUF.md):
  - names: token_embd / output_norm / output, blk.N.{attn_norm, post_attention_norm, attn_q/k/v/
    output, attn_q_norm, attn_k_norm, attn_qkv, attn_gate, ssm_ba, ssm_conv1d, ssm_dt.bias, ssm_a,
    ssm_norm, ssm_out, ffn_gate_inp, ffn_{gate,up,down}_exps, ffn_gate_inp_shexp,
    ffn_{gate,up,down}_shexp};
  - transformations: every "norm.weight" except linear_attn.norm gets + 1 (in float32, as the
    converter upcasts bf16 first), A_log -> -exp(A_log), conv1d squeezed, in_proj_qkvz split into
    attn_qkv ([q all heads | k | v]) and attn_gate (z), experts stacked;
  - types: F32 for 1-D tensors, "_norm.weight", names not ending in ".weight", and the converter's
    always-F32 list (ffn_gate_inp, ffn_gate_inp_shexp, ssm_conv1d); the out type for the rest,
    falling back to F16 when the package cannot quantize a shape (QuantError), as the converter does.

For every file it also records reference logits of the fixture prompt computed by transformers
(Qwen3NextForCausalLM, fp32 compute, eager) with the checkpoint's weights replaced by the values the
GGUF file actually stores (dequantized and mapped back to HF layout): the engine running the GGUF
must reproduce these like it reproduces the fixtures (the quantization error is then in the reference,
not in the tolerance). The fixture's own fp32 logits (logits.npy) are the unquantized reference.

Outputs tests/data/gguf_models/: <fixture>.<TYPE>.gguf, <fixture>.<TYPE>.logits.npy and refs.json
(files, prompt, tolerances, measured errors vs the fp32 fixture logits).

Usage: python3 tools/make_gguf_refs.py   (needs gguf numpy safetensors torch transformers)
"""
import json
import os
import sys

import numpy as np
import torch
import gguf
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "gguf_models")
LLAMA_CPP_COMMIT = "3f545beccee69d9975f466ec7e45fd9aacd8ba90"  # conversion/qwen.py read at this commit

# (fixture, out types, number of prompt positions kept in the reference logits)
JOBS = [("short_top1", ["F16", "BF16", "Q8_0"], None), ("base_gqa", ["Q8_0"], 64)]

QTYPE = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16,
         "BF16": gguf.GGMLQuantizationType.BF16, "Q8_0": gguf.GGMLQuantizationType.Q8_0}
FTYPE = {"F16": 1, "BF16": 32, "Q8_0": 7}


def load_checkpoint(d):
    sd = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    for f in files:
        sd.update(load_file(os.path.join(d, f)))
    return sd


def layer_types(cfg):
    k = cfg.get("full_attention_interval", 4)
    return ["full" if (i + 1) % k == 0 else "linear" for i in range(cfg["num_hidden_layers"])]


def converted_tensors(cfg, sd):
    """(gguf name, float32 numpy array in PyTorch order, hf_ndims) in the converter's mapping."""
    out = []
    H = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    f = lambda n: sd[n].float()

    def put(name, t):
        out.append((name, t.contiguous().numpy().astype(np.float32)))

    put("token_embd.weight", f("model.embed_tokens.weight"))
    put("output_norm.weight", f("model.norm.weight") + 1)
    if not cfg.get("tie_word_embeddings", False):
        put("output.weight", f("lm_head.weight"))
    for i, lt in enumerate(layer_types(cfg)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        put(b + "attn_norm.weight", f(p + "input_layernorm.weight") + 1)
        put(b + "post_attention_norm.weight", f(p + "post_attention_layernorm.weight") + 1)
        if lt == "full":
            a = p + "self_attn."
            put(b + "attn_q.weight", f(a + "q_proj.weight"))
            put(b + "attn_k.weight", f(a + "k_proj.weight"))
            put(b + "attn_v.weight", f(a + "v_proj.weight"))
            put(b + "attn_output.weight", f(a + "o_proj.weight"))
            put(b + "attn_q_norm.weight", f(a + "q_norm.weight") + 1)
            put(b + "attn_k_norm.weight", f(a + "k_norm.weight") + 1)
        else:
            a = p + "linear_attn."
            w = f(a + "in_proj_qkvz.weight")  # [nk * (2dk + 2 r dv), H], grouped by key head
            r = nv // nk
            g = w.permute(1, 0).reshape(H, nk, 2 * dk + 2 * r * dv)
            q, k, v, z = torch.split(g, [dk, dk, r * dv, r * dv], dim=-1)
            qkv = torch.cat([q.reshape(H, -1), k.reshape(H, -1), v.reshape(H, -1)], dim=-1).permute(1, 0)
            put(b + "attn_qkv.weight", qkv)
            put(b + "attn_gate.weight", z.reshape(H, -1).permute(1, 0))
            put(b + "ssm_ba.weight", f(a + "in_proj_ba.weight"))
            put(b + "ssm_conv1d.weight", f(a + "conv1d.weight").squeeze())
            put(b + "ssm_dt.bias", f(a + "dt_bias"))
            put(b + "ssm_a", -torch.exp(f(a + "A_log")))
            put(b + "ssm_norm.weight", f(a + "norm.weight"))
            put(b + "ssm_out.weight", f(a + "out_proj.weight"))
        m = p + "mlp."
        put(b + "ffn_gate_inp.weight", f(m + "gate.weight"))
        E = cfg["num_experts"]
        for proj, gn in (("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")):
            put(b + gn + ".weight", torch.stack([f(f"{m}experts.{e}.{proj}.weight") for e in range(E)]))
        put(b + "ffn_gate_inp_shexp.weight", f(m + "shared_expert_gate.weight"))
        put(b + "ffn_gate_shexp.weight", f(m + "shared_expert.gate_proj.weight"))
        put(b + "ffn_up_shexp.weight", f(m + "shared_expert.up_proj.weight"))
        put(b + "ffn_down_shexp.weight", f(m + "shared_expert.down_proj.weight"))
    return out


def out_type(name, arr, t):
    f32_list = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight")
    if arr.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or \
            any(name.endswith(s) for s in f32_list):
        return "F32"
    return t


def write_gguf(path, cfg, tensors, t):
    w = gguf.GGUFWriter(path, "qwen3next")
    w.add_type("model")
    w.add_name(os.path.basename(path).split(".")[0])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_file_type(FTYPE[t])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    w.add_full_attention_interval(cfg.get("full_attention_interval", 4))
    w.add_rope_dimension_count(int(cfg["head_dim"] * cfg.get("partial_rotary_factor", 0.25)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    stored = {}
    for name, arr in tensors:
        ty = out_type(name, arr, t)
        try:
            q = gguf.quants.quantize(arr, QTYPE[ty])
        except gguf.QuantError:
            ty = "F16"  # the converter's fallback
            q = gguf.quants.quantize(arr, QTYPE[ty])
        w.add_tensor(name, q, raw_dtype=QTYPE[ty])
        stored[name] = (ty, gguf.quants.dequantize(q, QTYPE[ty]).astype(np.float32).reshape(arr.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def hf_from_stored(cfg, stored, sd):
    """Maps the stored (dequantized) GGUF values back to HF checkpoint names."""
    H = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    T = lambda n: torch.from_numpy(stored[n][1].copy())
    hf = {"model.embed_tokens.weight": T("token_embd.weight"), "model.norm.weight": T("output_norm.weight") - 1}
    if "output.weight" in stored:
        hf["lm_head.weight"] = T("output.weight")
    for i, lt in enumerate(layer_types(cfg)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        hf[p + "input_layernorm.weight"] = T(b + "attn_norm.weight") - 1
        hf[p + "post_attention_layernorm.weight"] = T(b + "post_attention_norm.weight") - 1
        if lt == "full":
            a = p + "self_attn."
            for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
                hf[a + h + ".weight"] = T(b + g + ".weight")
            hf[a + "q_norm.weight"] = T(b + "attn_q_norm.weight") - 1
            hf[a + "k_norm.weight"] = T(b + "attn_k_norm.weight") - 1
        else:
            a = p + "linear_attn."
            r = nv // nk
            qkv, z = T(b + "attn_qkv.weight").permute(1, 0), T(b + "attn_gate.weight").permute(1, 0)
            q, k, v = torch.split(qkv, [nk * dk, nk * dk, nv * dv], dim=-1)
            g = torch.cat([q.reshape(H, nk, dk), k.reshape(H, nk, dk), v.reshape(H, nk, r * dv),
                           z.reshape(H, nk, r * dv)], dim=-1)
            hf[a + "in_proj_qkvz.weight"] = g.reshape(H, -1).permute(1, 0).contiguous()
            hf[a + "in_proj_ba.weight"] = T(b + "ssm_ba.weight")
            hf[a + "conv1d.weight"] = T(b + "ssm_conv1d.weight").unsqueeze(1)
            hf[a + "dt_bias"] = T(b + "ssm_dt.bias")
            hf[a + "A_log"] = sd[a + "A_log"].float()  # F32 in every file: -exp is not inverted
            hf[a + "norm.weight"] = T(b + "ssm_norm.weight")
            hf[a + "out_proj.weight"] = T(b + "ssm_out.weight")
        m = p + "mlp."
        hf[m + "gate.weight"] = T(b + "ffn_gate_inp.weight")
        hf[m + "shared_expert_gate.weight"] = T(b + "ffn_gate_inp_shexp.weight")
        for g, h in (("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"), ("ffn_down_shexp", "down_proj")):
            hf[m + "shared_expert." + h + ".weight"] = T(b + g + ".weight")
        hf[m + "experts.gate_up_proj"] = torch.cat([T(b + "ffn_gate_exps.weight"), T(b + "ffn_up_exps.weight")], dim=1)
        hf[m + "experts.down_proj"] = T(b + "ffn_down_exps.weight")
    return hf


@torch.no_grad()
def reference_logits(fixture_dir, hf, prompt):
    from transformers import Qwen3NextForCausalLM
    model = Qwen3NextForCausalLM.from_pretrained(fixture_dir, dtype=torch.bfloat16, attn_implementation="eager",
                                                 experts_implementation="eager").float().eval()
    params = dict(model.named_parameters())
    for k, v in hf.items():
        if k in params:
            assert params[k].shape == v.shape, (k, params[k].shape, v.shape)
            params[k].copy_(v)
        elif k == "lm_head.weight":
            raise KeyError(k)
    missing = [k for k in params if k not in hf]
    assert not missing, missing
    return model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0].float().numpy()


def rel_rows(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    from importlib.metadata import version
    refs = {"generator": f"tools/make_gguf_refs.py: gguf {version('gguf')}, torch {torch.__version__}, "
                         f"transformers {version('transformers')}",
            "llama_cpp_commit": LLAMA_CPP_COMMIT, "files": []}
    for fixture, types, keep in JOBS:
        d = os.path.join(ROOT, "tests", "fixtures", fixture)
        cfg = json.load(open(os.path.join(d, "config.json")))
        sd = load_checkpoint(d)
        ref = json.load(open(os.path.join(d, "ref.json")))
        prompt = ref["prompt"][:keep] if keep else ref["prompt"]
        fp32 = np.load(os.path.join(d, "logits.npy"))[:len(prompt)]
        tensors = converted_tensors(cfg, sd)
        for t in types:
            base = f"{fixture}.{t}"
            stored = write_gguf(os.path.join(OUT, base + ".gguf"), cfg, tensors, t)
            logits = reference_logits(d, hf_from_stored(cfg, stored, sd), prompt)
            np.save(os.path.join(OUT, base + ".logits.npy"), logits.astype(np.float32))
            e = rel_rows(logits, fp32)
            types_used = sorted({ty for ty, _ in stored.values()})
            print(f"{base}: types {types_used}, vs fp32 fixture logits: max rel L2 {e.max():.3e}, "
                  f"median {np.median(e):.3e}, top-1 agree {(logits.argmax(1) == fp32.argmax(1)).mean():.3f}")
            refs["files"].append({"gguf": base + ".gguf", "fixture": fixture, "type": t, "n_prompt": len(prompt),
                                  "logits": base + ".logits.npy", "types_used": types_used,
                                  "fp32_max_rel_l2": float(e.max()), "fp32_median_rel_l2": float(np.median(e)),
                                  "fp32_top1_agree": float((logits.argmax(1) == fp32.argmax(1)).mean())})
    json.dump(refs, open(os.path.join(OUT, "refs.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
