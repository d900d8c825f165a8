#!/usr/bin/env python3
"""Write the random benchmark checkpoint `bench-a3b`: the per-token shape of Qwen3-Next-80B-A3B with few experts.

What it is for: timing the engine (and llama.cpp, after conversion) on a model whose per-token work and weight
traffic match the real 80B-A3B model, without needing the 160 GB real checkpoint. Every layer, head count and
width is the released one (hidden 2048, 48 layers L L L F, attention 16/2 heads x 256 with partial rotary 0.25,
Gated DeltaNet 16 key / 32 value heads x 128, MoE expert width 512 + shared 512, top-10, vocab 151936 untied,
one MTP layer); only the number of routed experts per layer is cut (default 32 instead of 512), so the model is
~14 GB in bf16 instead of ~160 GB while the bytes touched per decoded token stay the same.

Layout is the official Hugging Face one: config.json in the published spelling (top-level rope_theta /
partial_rotary_factor / full_attention_interval, torch_dtype), sharded bf16 safetensors
model-0000N-of-0000M.safetensors + model.safetensors.index.json, one tensor per expert
(model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight), the MTP layer under mtp.*, and the real tokenizer
(tokenizer.json + the instruct tokenizer_config.json) so that llama.cpp's convert_hf_to_gguf.py accepts the dir.

Weights are random but "unit gain", so activations keep a sane scale through 48 layers:
  projections   N(0, 1/fan_in)                 (std 1/sqrt(fan_in))
  embeddings    N(0, 1)
  norm weights  N(0, 0.02^2), zero-centred: the model applies (1 + w)
  linear_attn.norm.weight  1 + N(0, 0.02^2)    (the gated norm uses its weight as is)
  A_log         log(U(1, 16))                  (HF init of A)
  dt_bias       softplus^-1(dt), dt log-uniform in [1e-3, 1e-1]  (Mamba-style init)
  conv1d        N(0, 1/kernel)

Determinism: every tensor gets its own generator seeded from (--seed, crc32(tensor name)), so the bytes of a
tensor do not depend on shard boundaries or on which other tensors exist; a small variant made with
--layers/--experts shares its tensors bit for bit with the full model.

Memory: the model is never held in RAM. Shard boundaries are planned from the shapes, each shard's header is
written first, then each tensor is generated and written in row chunks (at most CHUNK_ELEMS floats at a time).

Usage:
  python3 tools/make_bench_model.py                       # -> /work/bench-models/bench-a3b (~14 GB)
  python3 tools/make_bench_model.py --layers 4 --experts 4 --out /tmp/bench-small
Options: --seed, --shard-gb (max shard size), --no-mtp, --no-tokenizer, --force.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import time
import zlib

import numpy as np

TOKENIZER_DIR = "/work/shared/qwen3-next-tokenizer"
CHUNK_ELEMS = 1 << 24  # floats generated at once (64 MB of float32)

# The released Qwen3-Next-80B-A3B shape (see /work/shared/docs/qwen3next-spec.md, section 1.2).
HIDDEN = 2048
N_HEADS, N_KV_HEADS, HEAD_DIM = 16, 2, 256
LIN_K_HEADS, LIN_V_HEADS, LIN_K_DIM, LIN_V_DIM, CONV_K = 16, 32, 128, 128, 4
MOE_INTER, SHARED_INTER, TOP_K = 512, 512, 10
VOCAB = 151936


def make_config(n_layers, n_experts):
    """config.json in the published spelling, keys sorted as transformers writes them."""
    cfg = {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "decoder_sparse_step": 1,
        "eos_token_id": 151645,
        "full_attention_interval": 4,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "linear_conv_kernel_dim": CONV_K,
        "linear_key_head_dim": LIN_K_DIM,
        "linear_num_key_heads": LIN_K_HEADS,
        "linear_num_value_heads": LIN_V_HEADS,
        "linear_value_head_dim": LIN_V_DIM,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "model_type": "qwen3_next",
        "moe_intermediate_size": MOE_INTER,
        "norm_topk_prob": True,
        "num_attention_heads": N_HEADS,
        "num_experts": n_experts,
        "num_experts_per_tok": min(TOP_K, n_experts),
        "num_hidden_layers": n_layers,
        "num_key_value_heads": N_KV_HEADS,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": SHARED_INTER,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Tensor plan: (name, shape, kind) in module order. kind selects the init distribution (see gen_chunk).
# ----------------------------------------------------------------------------------------------------------
def attention_tensors(prefix):
    q_out = N_HEADS * HEAD_DIM * 2  # query + output gate, interleaved per head
    kv_out = N_KV_HEADS * HEAD_DIM
    return [
        (prefix + "self_attn.q_proj.weight", (q_out, HIDDEN), "proj"),
        (prefix + "self_attn.k_proj.weight", (kv_out, HIDDEN), "proj"),
        (prefix + "self_attn.v_proj.weight", (kv_out, HIDDEN), "proj"),
        (prefix + "self_attn.o_proj.weight", (HIDDEN, N_HEADS * HEAD_DIM), "proj"),
        (prefix + "self_attn.q_norm.weight", (HEAD_DIM,), "norm0"),
        (prefix + "self_attn.k_norm.weight", (HEAD_DIM,), "norm0"),
    ]


def gdn_tensors(prefix):
    key_dim = LIN_K_HEADS * LIN_K_DIM
    value_dim = LIN_V_HEADS * LIN_V_DIM
    return [
        (prefix + "linear_attn.in_proj_qkvz.weight", (2 * key_dim + 2 * value_dim, HIDDEN), "proj"),
        (prefix + "linear_attn.in_proj_ba.weight", (2 * LIN_V_HEADS, HIDDEN), "proj"),
        (prefix + "linear_attn.conv1d.weight", (2 * key_dim + value_dim, 1, CONV_K), "conv"),
        (prefix + "linear_attn.dt_bias", (LIN_V_HEADS,), "dt_bias"),
        (prefix + "linear_attn.A_log", (LIN_V_HEADS,), "A_log"),
        (prefix + "linear_attn.norm.weight", (LIN_V_DIM,), "norm1"),
        (prefix + "linear_attn.out_proj.weight", (HIDDEN, value_dim), "proj"),
    ]


def moe_tensors(prefix, n_experts):
    out = [(prefix + "mlp.gate.weight", (n_experts, HIDDEN), "proj")]
    for e in range(n_experts):
        ep = "%smlp.experts.%d." % (prefix, e)
        out += [
            (ep + "gate_proj.weight", (MOE_INTER, HIDDEN), "proj"),
            (ep + "up_proj.weight", (MOE_INTER, HIDDEN), "proj"),
            (ep + "down_proj.weight", (HIDDEN, MOE_INTER), "proj"),
        ]
    sp = prefix + "mlp.shared_expert."
    out += [
        (sp + "gate_proj.weight", (SHARED_INTER, HIDDEN), "proj"),
        (sp + "up_proj.weight", (SHARED_INTER, HIDDEN), "proj"),
        (sp + "down_proj.weight", (HIDDEN, SHARED_INTER), "proj"),
        (prefix + "mlp.shared_expert_gate.weight", (1, HIDDEN), "proj"),
    ]
    return out


def plan_tensors(n_layers, n_experts, with_mtp):
    plan = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "embed")]
    for layer in range(n_layers):
        p = "model.layers.%d." % layer
        plan.append((p + "input_layernorm.weight", (HIDDEN,), "norm0"))
        if (layer + 1) % 4 == 0:
            plan += attention_tensors(p)
        else:
            plan += gdn_tensors(p)
        plan.append((p + "post_attention_layernorm.weight", (HIDDEN,), "norm0"))
        plan += moe_tensors(p, n_experts)
    plan.append(("model.norm.weight", (HIDDEN,), "norm0"))
    plan.append(("lm_head.weight", (VOCAB, HIDDEN), "proj"))
    if with_mtp:
        plan += [
            ("mtp.fc.weight", (HIDDEN, 2 * HIDDEN), "proj"),
            ("mtp.pre_fc_norm_embedding.weight", (HIDDEN,), "norm0"),
            ("mtp.pre_fc_norm_hidden.weight", (HIDDEN,), "norm0"),
            ("mtp.norm.weight", (HIDDEN,), "norm0"),
            ("mtp.layers.0.input_layernorm.weight", (HIDDEN,), "norm0"),
            ("mtp.layers.0.post_attention_layernorm.weight", (HIDDEN,), "norm0"),
        ]
        plan += attention_tensors("mtp.layers.0.")
        plan += moe_tensors("mtp.layers.0.", n_experts)
    return plan


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------
def tensor_rng(seed, name):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


def gen_chunk(rng, kind, shape, n):
    """n float32 values of the tensor's distribution (the next n in row-major order)."""
    if kind == "proj":
        fan_in = int(np.prod(shape[1:]))
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(1.0 / math.sqrt(fan_in))
        return x
    if kind == "embed":
        return rng.standard_normal(n, dtype=np.float32)
    if kind == "conv":
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(1.0 / math.sqrt(shape[-1]))
        return x
    if kind == "norm0":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    if kind == "norm1":
        return np.float32(1.0) + rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    if kind == "A_log":
        return np.log(rng.uniform(1.0, 16.0, n)).astype(np.float32)
    if kind == "dt_bias":
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), n))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # inverse softplus
    raise ValueError(kind)


def to_bf16(x):
    """float32 -> bf16 bit pattern (uint16), round to nearest even (no NaNs can occur here)."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def write_tensor(f, seed, name, shape, kind):
    rng = tensor_rng(seed, name)
    total = int(np.prod(shape))
    done = 0
    while done < total:
        n = min(CHUNK_ELEMS, total - done)
        to_bf16(gen_chunk(rng, kind, shape, n)).tofile(f)
        done += n


def split_shards(plan, max_bytes):
    shards, cur, cur_bytes = [], [], 0
    for item in plan:
        nbytes = int(np.prod(item[1])) * 2
        if cur and cur_bytes + nbytes > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(item)
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    return shards


def shard_header(items):
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in items:
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # data section starts 8-byte aligned
    return raw, off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/bench-models/bench-a3b")
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=20250911)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="max shard size in GB (1e9 bytes)")
    ap.add_argument("--no-mtp", action="store_true", help="leave out the mtp.* tensors")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not copy the tokenizer files")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    args = ap.parse_args()
    if args.layers < 1 or args.experts < 1:
        ap.error("--layers and --experts must be >= 1")

    plan = plan_tensors(args.layers, args.experts, not args.no_mtp)
    names = [p[0] for p in plan]
    assert len(set(names)) == len(names)
    total_bytes = sum(int(np.prod(s)) * 2 for _, s, _ in plan)
    shards = split_shards(plan, int(args.shard_gb * 1e9))

    if os.path.exists(os.path.join(args.out, "config.json")) and not args.force:
        sys.exit("%s already holds a model; pass --force to overwrite" % args.out)
    os.makedirs(args.out, exist_ok=True)
    st = shutil.disk_usage(args.out)
    if st.free < total_bytes * 1.05:
        sys.exit("not enough disk: need %.1f GB, %.1f GB free" % (total_bytes / 1e9, st.free / 1e9))
    for fn in os.listdir(args.out):  # stale shards of an earlier run with another shard count
        if fn.startswith("model-") and fn.endswith(".safetensors"):
            os.remove(os.path.join(args.out, fn))

    print("bench model: %d layers, %d experts, %s MTP -> %s" %
          (args.layers, args.experts, "no" if args.no_mtp else "with", args.out))
    print("%d tensors, %.2f GB bf16, %d shard(s)" % (len(plan), total_bytes / 1e9, len(shards)), flush=True)

    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(make_config(args.layers, args.experts), f, indent=2)
        f.write("\n")

    weight_map = {}
    t0 = time.time()
    written = 0
    for si, items in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (si + 1, len(shards))
        path = os.path.join(args.out, fname)
        raw, data_bytes = shard_header(items)
        with open(path + ".tmp", "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape, kind in items:
                write_tensor(f, args.seed, name, shape, kind)
                weight_map[name] = fname
        os.replace(path + ".tmp", path)
        written += data_bytes
        dt = time.time() - t0
        print("  %s: %3d tensors, %.2f GB  (total %.2f/%.2f GB, %.0f s, %.0f MB/s)" %
              (fname, len(items), data_bytes / 1e9, written / 1e9, total_bytes / 1e9, dt,
               written / 1e6 / max(dt, 1e-9)), flush=True)

    index = {"metadata": {"total_size": total_bytes},
             "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")

    if not args.no_tokenizer:
        shutil.copyfile(os.path.join(TOKENIZER_DIR, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
        shutil.copyfile(os.path.join(TOKENIZER_DIR, "tokenizer_config.instruct.json"),
                        os.path.join(args.out, "tokenizer_config.json"))
    print("done in %.0f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
