#!/usr/bin/env python3
"""Build the small random Qwen3-Next reference fixtures under tests/fixtures/.

Each fixture is a directory in the official Hugging Face checkpoint layout (config.json + bf16 safetensors with
one tensor per expert, optionally sharded with model.safetensors.index.json, optionally with mtp.* tensors),
plus references computed by HF transformers (qwen3_next) in float32:
  ref.json          prompt, greedy continuation (with KV/recurrent cache), top1-top2 margins, rope tables
  logits.npy        float32 [len(prompt), vocab] logits of one full forward over the prompt
  hidden_final.npy  float32 [len(prompt), hidden] final hidden state (after model.norm)

The C engine (not Python) must reproduce logits.npy; Python is only used here, offline.

Usage:  python3 tools/make_fixtures.py [--out tests/fixtures] [--only NAME ...]

The script is deterministic (fixed seeds) and fails loudly (AssertionError) when any self-check fails:
  * the directory reloads with from_pretrained and gives exactly the logits of the in-memory model built from
    the same tensors (proves the per-expert names / fused-expert mapping / config spelling);
  * our tensor names and shapes equal what transformers' own save_pretrained writes (main model part);
  * one expert computed by hand from the per-expert tensors equals the fused experts module;
  * the rotary tables equal an independent closed-form computation (default RoPE / YaRN);
  * zeroing any layer's o_proj / out_proj moves the logits by more than 5 % (every layer matters);
  * no MoE routing near-tie (k-th vs (k+1)-th router logit) and no greedy near-tie in the references;
  * cached greedy decoding agrees with a full no-cache forward over prompt+continuation.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

import transformers
from transformers import AutoConfig, Qwen3NextForCausalLM
from transformers.cache_utils import DynamicCache
from safetensors import safe_open
from safetensors.torch import save_file

# Margins below these are treated as near-ties that a correct fp32 engine could resolve differently.
MIN_ROUTER_GAP = 3e-4   # logit gap between the k-th and (k+1)-th expert, over prompt + continuation
MIN_GREEDY_MARGIN = 1e-3  # top1 - top2 logit at every greedy step
MIN_LAYER_EFFECT = 0.05  # relative L2 change of logits when one layer's output projection is zeroed

# ----------------------------------------------------------------------------------------------------------
# Fixture definitions. "spelling": "published" writes the config as the released Qwen3-Next checkpoint does
# (top-level rope_theta / rope_scaling / partial_rotary_factor / full_attention_interval, torch_dtype);
# "v5" writes the transformers 5.x spelling (rope_parameters dict, explicit layer_types, dtype).
# ----------------------------------------------------------------------------------------------------------
FIXTURES = [
    dict(
        name="base_gqa",
        about="Baseline in the published spelling: L L L F (full_attention_interval 4), GQA 4 q / 2 kv heads, "
              "linear_num_value_heads = 2 x linear_num_key_heads, linear_key_head_dim 32 != linear_value_head_dim 16, "
              "8 experts top-2 (norm_topk_prob true), untied lm_head, single safetensors file, prompt 150 tokens "
              "(2 full 64-chunks + a partial one).",
        seed=1001, spelling="published", shards=1, mtp=False, prompt_len=150, n_generate=16,
        cfg=dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, full_attention_interval=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.25,
                 rope_theta=1000000.0, rope_scaling=None, max_position_embeddings=1024,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=16,
                 num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                 intermediate_size=96, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                 tie_word_embeddings=False, bos_token_id=510, eos_token_id=511),
    ),
    dict(
        name="mha_sharded_mtp",
        about="Published spelling, attention every 2nd layer (full_attention_interval 2: L F L F L F), MHA "
              "(4 q / 4 kv heads), head_dim 32 explicit (4*32 != hidden 96), rope_theta 1e7, equal linear k/v heads, "
              "16 experts top-4 with norm_topk_prob FALSE, weights sharded over 3 files + "
              "model.safetensors.index.json, one MTP layer stored as mtp.* tensors, prompt 200 tokens.",
        seed=2002, spelling="published", shards=3, mtp=True, prompt_len=200, n_generate=16,
        cfg=dict(vocab_size=1024, hidden_size=96, num_hidden_layers=6, full_attention_interval=2,
                 num_attention_heads=4, num_key_value_heads=4, head_dim=32, partial_rotary_factor=0.25,
                 rope_theta=10000000.0, rope_scaling=None, max_position_embeddings=4096,
                 linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=24, linear_value_head_dim=24,
                 num_experts=16, num_experts_per_tok=4, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                 intermediate_size=192, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                 tie_word_embeddings=False, bos_token_id=1022, eos_token_id=1023),
    ),
    dict(
        name="dense_tied_yarn",
        about="Published spelling with YaRN rope_scaling (factor 4, original_max_position_embeddings 64, "
              "max_position_embeddings 256; prompt 180 tokens so positions go far past the original window), "
              "partial_rotary_factor 0.5, full_attention_interval 3 (L L F L L F), GQA 8 q / 2 kv heads, "
              "decoder_sparse_step 2 plus mlp_only_layers [3] (MoE only at layers 1 and 5, dense MLP of "
              "intermediate_size 128 at layers 0 2 3 4), tie_word_embeddings true (no lm_head.weight stored), "
              "linear_value_head_dim 32 > linear_key_head_dim 16 with 2x value heads.",
        seed=3003, spelling="published", shards=1, mtp=False, prompt_len=180, n_generate=16,
        cfg=dict(vocab_size=768, hidden_size=64, num_hidden_layers=6, full_attention_interval=3,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
                 rope_theta=10000.0,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                 max_position_embeddings=256,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=32,
                 num_experts=6, num_experts_per_tok=3, moe_intermediate_size=24, shared_expert_intermediate_size=32,
                 intermediate_size=128, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[3],
                 tie_word_embeddings=True, bos_token_id=766, eos_token_id=767),
    ),
    dict(
        name="v5_layer_types",
        about="transformers 5.x config spelling: rope_parameters {rope_type yarn, factor 4, "
              "original_max_position_embeddings 64, rope_theta, partial_rotary_factor 0.25}, an explicit irregular "
              "layer_types list (L F L L F, no full_attention_interval), \"dtype\" instead of \"torch_dtype\"; "
              "hidden 128, GQA 4 q / 1 kv head, head_dim 64, 2x linear value heads, key dim 16 / value dim 32, "
              "8 experts top-2, 2 shards, prompt 140 tokens.",
        seed=4004, spelling="v5", shards=2, mtp=False, prompt_len=140, n_generate=16,
        cfg=dict(vocab_size=512, hidden_size=128, num_hidden_layers=5,
                 layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention",
                              "full_attention"],
                 num_attention_heads=4, num_key_value_heads=1, head_dim=64, partial_rotary_factor=0.25,
                 rope_theta=500000.0,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                 max_position_embeddings=256,
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=32,
                 num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                 intermediate_size=256, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                 tie_word_embeddings=False, bos_token_id=510, eos_token_id=511),
    ),
    dict(
        name="short_top1",
        about="Published spelling, short prompt (11 tokens, less than one 64-chunk) and a longer greedy "
              "continuation (24 tokens) so most positions are produced by the cached single-token decode path; "
              "1 linear key head / 2 value heads, MHA-free GQA 2 q / 1 kv, 4 experts top-1.",
        seed=5005, spelling="published", shards=1, mtp=False, prompt_len=11, n_generate=24,
        cfg=dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, full_attention_interval=4,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, partial_rotary_factor=0.25,
                 rope_theta=1000000.0, rope_scaling=None, max_position_embeddings=1024,
                 linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=32, linear_value_head_dim=32,
                 num_experts=4, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                 intermediate_size=128, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                 tie_word_embeddings=False, bos_token_id=510, eos_token_id=511),
    ),
]

COMMON_CFG = dict(hidden_act="silu", rms_norm_eps=1e-6, linear_conv_kernel_dim=4, attention_bias=False,
                  attention_dropout=0.0, initializer_range=0.02, router_aux_loss_coef=0.001,
                  output_router_logits=False, use_cache=True)


def layer_types_of(cfg):
    if "layer_types" in cfg:
        return list(cfg["layer_types"])
    n = cfg["full_attention_interval"]
    return ["linear_attention" if (i + 1) % n else "full_attention" for i in range(cfg["num_hidden_layers"])]


def is_moe_layer(cfg, i):
    return (i not in cfg["mlp_only_layers"] and cfg["num_experts"] > 0
            and (i + 1) % cfg["decoder_sparse_step"] == 0)


def config_json(fx):
    """The config.json dict in the requested spelling (keys sorted, as HF writes them)."""
    cfg = dict(COMMON_CFG)
    cfg.update(copy.deepcopy(fx["cfg"]))
    out = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next"}
    if fx["spelling"] == "published":
        assert "layer_types" not in cfg
        out.update(cfg)
        out["torch_dtype"] = "bfloat16"
        out["use_sliding_window"] = False
    else:
        rope = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta"),
                "partial_rotary_factor": cfg.pop("partial_rotary_factor")}
        scaling = cfg.pop("rope_scaling")
        if scaling:
            rope.update(scaling)
        cfg.pop("full_attention_interval", None)
        out.update(cfg)
        out["rope_parameters"] = rope
        out["dtype"] = "bfloat16"
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------------------
# Random weights in the checkpoint layout (bf16). "Unit gain": projections ~ N(0, 1/fan_in) so activations keep
# their scale, (1+w) norms get small random offsets, GDN decay parameters span slow and fast heads.
# ----------------------------------------------------------------------------------------------------------
class WeightMaker:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape, std, mean=0.0):
        return (torch.randn(shape, generator=self.gen, dtype=torch.float32) * std + mean).to(torch.bfloat16)

    def uniform(self, shape, lo, hi):
        return (torch.rand(shape, generator=self.gen, dtype=torch.float32) * (hi - lo) + lo)

    def linear(self, out_f, in_f, gain=1.0):
        return self.normal((out_f, in_f), gain / math.sqrt(in_f))

    def norm1p(self, n):
        return self.normal((n,), 0.1)


def attention_tensors(wm, cfg, prefix):
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = {}
    t[prefix + "q_proj.weight"] = wm.linear(nh * hd * 2, H)
    t[prefix + "k_proj.weight"] = wm.linear(nkv * hd, H)
    t[prefix + "v_proj.weight"] = wm.linear(nkv * hd, H)
    t[prefix + "o_proj.weight"] = wm.linear(H, nh * hd)
    t[prefix + "q_norm.weight"] = wm.norm1p(hd)
    t[prefix + "k_norm.weight"] = wm.norm1p(hd)
    return t


def gdn_tensors(wm, cfg, prefix):
    H = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv, K = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], cfg["linear_conv_kernel_dim"]
    key_dim, value_dim = nk * dk, nv * dv
    t = {}
    t[prefix + "in_proj_qkvz.weight"] = wm.linear(2 * key_dim + 2 * value_dim, H)
    t[prefix + "in_proj_ba.weight"] = wm.linear(2 * nv, H)
    t[prefix + "conv1d.weight"] = wm.normal((2 * key_dim + value_dim, 1, K), 1.0 / math.sqrt(K))
    # decay g = -exp(A_log) * softplus(a + dt_bias): A in [0.05, 4], dt_bias in [-3, 1] gives per-token decay
    # factors from ~0.999 (long memory across 64-chunks) down to ~0.05.
    t[prefix + "dt_bias"] = wm.uniform((nv,), -3.0, 1.0).to(torch.bfloat16)
    t[prefix + "A_log"] = wm.uniform((nv,), 0.05, 4.0).log().to(torch.bfloat16)
    t[prefix + "norm.weight"] = wm.normal((dv,), 0.1, mean=1.0)  # plain weight (not 1+w)
    t[prefix + "out_proj.weight"] = wm.linear(H, value_dim)
    return t


def moe_tensors(wm, cfg, prefix):
    H, E, I, S = cfg["hidden_size"], cfg["num_experts"], cfg["moe_intermediate_size"], \
        cfg["shared_expert_intermediate_size"]
    t = {}
    t[prefix + "gate.weight"] = wm.linear(E, H, gain=2.0)  # router: logits std ~2, decisive routing
    for e in range(E):
        t[prefix + f"experts.{e}.gate_proj.weight"] = wm.linear(I, H)
        t[prefix + f"experts.{e}.up_proj.weight"] = wm.linear(I, H, gain=2.0)
        t[prefix + f"experts.{e}.down_proj.weight"] = wm.linear(H, I)
    t[prefix + "shared_expert.gate_proj.weight"] = wm.linear(S, H)
    t[prefix + "shared_expert.up_proj.weight"] = wm.linear(S, H, gain=2.0)
    t[prefix + "shared_expert.down_proj.weight"] = wm.linear(H, S)
    t[prefix + "shared_expert_gate.weight"] = wm.linear(1, H)
    return t


def dense_mlp_tensors(wm, cfg, prefix):
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    return {prefix + "gate_proj.weight": wm.linear(I, H),
            prefix + "up_proj.weight": wm.linear(I, H, gain=2.0),
            prefix + "down_proj.weight": wm.linear(H, I)}


def make_checkpoint(fx, cfg):
    """Ordered dict name -> bf16 tensor, exactly as a Qwen3-Next checkpoint names and shapes them."""
    wm = WeightMaker(fx["seed"])
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    types = layer_types_of(cfg)
    t = {"model.embed_tokens.weight": wm.normal((V, H), 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = wm.norm1p(H)
        if types[i] == "linear_attention":
            t.update(gdn_tensors(wm, cfg, p + "linear_attn."))
        else:
            t.update(attention_tensors(wm, cfg, p + "self_attn."))
        t[p + "post_attention_layernorm.weight"] = wm.norm1p(H)
        if is_moe_layer(cfg, i):
            t.update(moe_tensors(wm, cfg, p + "mlp."))
        else:
            t.update(dense_mlp_tensors(wm, cfg, p + "mlp."))
    t["model.norm.weight"] = wm.norm1p(H)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = wm.linear(V, H)
    if fx["mtp"]:
        # One MTP layer (spec section 2/4): fc over concat(normed embedding, normed hidden), a full-attention
        # decoder layer with a MoE block, final norm. Shares embed_tokens / lm_head with the main model.
        t["mtp.fc.weight"] = wm.linear(H, 2 * H)
        t["mtp.pre_fc_norm_embedding.weight"] = wm.norm1p(H)
        t["mtp.pre_fc_norm_hidden.weight"] = wm.norm1p(H)
        t["mtp.layers.0.input_layernorm.weight"] = wm.norm1p(H)
        t.update(attention_tensors(wm, cfg, "mtp.layers.0.self_attn."))
        t["mtp.layers.0.post_attention_layernorm.weight"] = wm.norm1p(H)
        t.update(moe_tensors(wm, cfg, "mtp.layers.0.mlp."))
        t["mtp.norm.weight"] = wm.norm1p(H)
    return t


def fuse_for_transformers(ckpt, cfg):
    """Checkpoint layout -> transformers 5.x in-memory state dict (fp32), done independently of transformers'
    own conversion so that from_pretrained can cross-check it: gate_up_proj[e] = cat(gate_e, up_e) on rows,
    down_proj[e] = down_e."""
    sd = {}
    for name, w in ckpt.items():
        if name.startswith("mtp.") or ".mlp.experts." in name:
            continue
        sd[name] = w.float()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        if not is_moe_layer(cfg, i):
            continue
        E = cfg["num_experts"]
        gate = torch.stack([ckpt[p + f"experts.{e}.gate_proj.weight"] for e in range(E)])
        up = torch.stack([ckpt[p + f"experts.{e}.up_proj.weight"] for e in range(E)])
        down = torch.stack([ckpt[p + f"experts.{e}.down_proj.weight"] for e in range(E)])
        sd[p + "experts.gate_up_proj"] = torch.cat([gate, up], dim=1).float()
        sd[p + "experts.down_proj"] = down.float()
    if cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def write_safetensors(ckpt, outdir, shards):
    """Write bf16 tensors, either model.safetensors or model-0000i-of-0000N.safetensors + index.json."""
    names = list(ckpt.keys())
    nbytes = {n: ckpt[n].numel() * ckpt[n].element_size() for n in names}
    total = sum(nbytes.values())
    meta = {"format": "pt"}
    if shards == 1:
        save_file({n: ckpt[n].contiguous() for n in names}, os.path.join(outdir, "model.safetensors"), metadata=meta)
        os.chmod(os.path.join(outdir, "model.safetensors"), 0o644)
        return ["model.safetensors"]
    # Split the ordered tensor list into `shards` groups of roughly equal byte size.
    groups, cur, acc = [], [], 0
    target = total / shards
    for n in names:
        cur.append(n)
        acc += nbytes[n]
        if acc >= target * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == shards and all(groups)
    weight_map, files = {}, []
    for k, g in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: ckpt[n].contiguous() for n in g}, os.path.join(outdir, fname), metadata=meta)
        os.chmod(os.path.join(outdir, fname), 0o644)
        files.append(fname)
        for n in g:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files


# ----------------------------------------------------------------------------------------------------------
# Checks and references
# ----------------------------------------------------------------------------------------------------------
def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def expected_rope(cfg_json):
    """Closed-form inv_freq and attention scaling (spec section 5), independent of transformers."""
    if "rope_parameters" in cfg_json:
        rp = cfg_json["rope_parameters"]
        theta, prf, scaling = rp["rope_theta"], rp["partial_rotary_factor"], rp if rp["rope_type"] == "yarn" else None
    else:
        theta, prf, scaling = cfg_json["rope_theta"], cfg_json["partial_rotary_factor"], cfg_json["rope_scaling"]
    d = int(cfg_json["head_dim"] * prf)
    i = np.arange(d // 2, dtype=np.float64)
    base = 1.0 / theta ** (2 * i / d)
    if not scaling:
        return base, 1.0
    s, orig = scaling["factor"], scaling["original_max_position_embeddings"]

    def corr_dim(n_rot):
        return d * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(corr_dim(32)), 0)
    high = min(math.ceil(corr_dim(1)), d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0, 1)
    return base * (1 - ramp) + base / s * ramp, 0.1 * math.log(s) + 1.0


def load_reference_model(outdir):
    model, info = Qwen3NextForCausalLM.from_pretrained(
        outdir, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    return model, info


@torch.no_grad()
def check_one_expert(model, ckpt, cfg):
    """Route every token to one expert with weight 1 and compare against silu(x Wg^T) * (x Wu^T) Wd^T computed
    from the per-expert checkpoint tensors: proves gate = rows 0..I-1 and up = rows I..2I-1 of gate_up_proj."""
    i = next(k for k in range(cfg["num_hidden_layers"]) if is_moe_layer(cfg, k))
    experts = model.model.layers[i].mlp.experts
    x = torch.randn(5, cfg["hidden_size"], generator=torch.Generator().manual_seed(7))
    for e in (0, cfg["num_experts"] - 1):
        got = experts(x, torch.full((5, 1), e), torch.ones(5, 1))
        p = f"model.layers.{i}.mlp.experts.{e}."
        wg, wu, wd = (ckpt[p + n + ".weight"].float() for n in ("gate_proj", "up_proj", "down_proj"))
        want = (torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)) @ wd.T
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), "expert gate/up split mismatch"


def check_save_pretrained_layout(model, ckpt, tmpdir):
    """transformers' own save_pretrained must write the same names/shapes/values as our main-model tensors."""
    shutil.rmtree(tmpdir, ignore_errors=True)
    model.save_pretrained(tmpdir)
    theirs = {}
    for fn in sorted(os.listdir(tmpdir)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(tmpdir, fn), "pt") as f:
                for k in f.keys():
                    theirs[k] = f.get_tensor(k)
    ours = {k: v for k, v in ckpt.items() if not k.startswith("mtp.")}
    assert set(theirs) == set(ours), (sorted(set(theirs) ^ set(ours)))[:10]
    for k in ours:
        assert tuple(theirs[k].shape) == tuple(ours[k].shape), k
        assert torch.equal(theirs[k].to(torch.bfloat16), ours[k]), k
    with open(os.path.join(tmpdir, "config.json")) as f:
        saved_cfg = json.load(f)
    shutil.rmtree(tmpdir)
    return sorted({str(v.dtype) for v in theirs.values()}), saved_cfg


@torch.no_grad()
def forward_logits(model, ids):
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


@torch.no_grad()
def router_min_gap(model, ids, k):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_router_logits=True)
    gaps = []
    for rl in out.router_logits:
        srt = rl.float().sort(dim=-1, descending=True).values
        if srt.shape[-1] > k:
            gaps.append((srt[:, k - 1] - srt[:, k]).min().item())
    return min(gaps)


@torch.no_grad()
def greedy_with_cache(model, ids, n):
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    toks, margins, step_logits = [], [], []
    for _ in range(n):
        logits = out.logits[0, -1].float()
        top2 = logits.topk(2)
        tok = int(top2.indices[0])
        toks.append(tok)
        margins.append(float(top2.values[0] - top2.values[1]))
        step_logits.append(logits)
        out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
    return toks, margins, torch.stack(step_logits)


@torch.no_grad()
def layer_effects(model, ids, base_logits, cfg):
    """Relative logit change when each layer's output projection (o_proj / out_proj) is zeroed."""
    effects = []
    for i, layer in enumerate(model.model.layers):
        proj = layer.self_attn.o_proj if hasattr(layer, "self_attn") else layer.linear_attn.out_proj
        saved = proj.weight.detach().clone()
        proj.weight.zero_()
        effects.append(rel_l2(forward_logits(model, ids), base_logits))
        proj.weight.copy_(saved)
    return effects


@torch.no_grad()
def mtp_reference(model, ckpt, cfg, prompt, hidden):
    """Draft logits of the MTP layer over the prompt, composed from transformers' own Qwen3-Next building blocks
    (transformers has no MTP implementation) following vLLM's qwen3_next_mtp.py (spec section 4):
      row p (p = 0 .. T-2): e = norm1p(embed[prompt[p+1]], pre_fc_norm_embedding),
                            h = norm1p(hidden_final[p], pre_fc_norm_hidden),
                            u = [e, h] @ fc^T  (embedding first),
                            y = full-attention + MoE decoder layer over u at rotary positions 0..T-2 (causal),
                            logits = norm1p(y, mtp.norm) @ lm_head^T   (predicts prompt[p+2])."""
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextDecoderLayer, Qwen3NextRMSNorm
    mcfg = copy.deepcopy(model.config)
    mcfg.layer_types = ["full_attention"] + list(mcfg.layer_types[1:])
    layer = Qwen3NextDecoderLayer(mcfg, 0).float().eval()
    assert hasattr(layer.mlp, "experts"), "MTP layer must be MoE"
    sub = {k[len("mtp.layers.0."):]: v for k, v in ckpt.items() if k.startswith("mtp.layers.0.")}
    fused = fuse_for_transformers({"model.layers.0." + k: v for k, v in sub.items()},
                                  dict(cfg, num_hidden_layers=1, mlp_only_layers=[], decoder_sparse_step=1))
    missing, unexpected = layer.load_state_dict({k[len("model.layers.0."):]: v for k, v in fused.items()},
                                                strict=True)
    assert not missing and not unexpected

    def norm1p(name, x):
        n = Qwen3NextRMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])
        n.weight.data.copy_(ckpt[name].float())
        return n(x)

    T = len(prompt) - 1
    embed = model.model.embed_tokens.weight
    e = norm1p("mtp.pre_fc_norm_embedding.weight", embed[torch.tensor(prompt[1:])])
    h = norm1p("mtp.pre_fc_norm_hidden.weight", hidden[:T])
    u = torch.cat([e, h], dim=-1) @ ckpt["mtp.fc.weight"].float().T
    pos = torch.arange(T)[None]
    cos_sin = model.model.rotary_emb(u[None], pos)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    y = layer(u[None], position_embeddings=cos_sin, attention_mask=mask, position_ids=pos)[0]
    m = norm1p("mtp.norm.weight", y)
    return m @ model.lm_head.weight.T


def build_fixture(fx, outroot):
    name = fx["name"]
    outdir = os.path.join(outroot, name)
    print(f"== {name}", flush=True)
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)

    cfg_json = config_json(fx)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    cfg = dict(COMMON_CFG)
    cfg.update(fx["cfg"])

    ckpt = make_checkpoint(fx, cfg)
    files = write_safetensors(ckpt, outdir, fx["shards"])

    # transformers must parse our config spelling into the intended structure.
    hf_cfg = AutoConfig.from_pretrained(outdir)
    assert hf_cfg.layer_types == layer_types_of(cfg), hf_cfg.layer_types
    assert hf_cfg.head_dim == cfg["head_dim"]

    # In-memory model from our own fused state dict (fp32 holding the exact bf16 values).
    hf_cfg._attn_implementation = "eager"
    hf_cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    mem_model = Qwen3NextForCausalLM(hf_cfg).float().eval()
    missing, unexpected = mem_model.load_state_dict(fuse_for_transformers(ckpt, cfg), strict=True)
    assert not missing and not unexpected
    check_one_expert(mem_model, ckpt, cfg)

    # Reload the directory the way users do; weights arrive as bf16, then compute in fp32.
    model, info = load_reference_model(outdir)
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    loaded_dtypes = sorted({str(p.dtype) for p in model.parameters()})
    assert loaded_dtypes == ["torch.bfloat16"], loaded_dtypes
    model = model.float().eval()
    assert model.config._attn_implementation == "eager"
    assert model.config._experts_implementation == "eager"
    for n, p in model.named_parameters():
        assert torch.equal(p, mem_model.state_dict()[n]), n

    # RoPE tables as transformers built them vs the closed form.
    inv_freq_want, att_want = expected_rope(cfg_json)
    inv_freq_hf = model.model.rotary_emb.inv_freq.double().numpy()
    assert np.allclose(inv_freq_hf, inv_freq_want, rtol=1e-6, atol=0), (inv_freq_hf, inv_freq_want)
    assert abs(model.model.rotary_emb.attention_scaling - att_want) < 1e-9

    # Pick a prompt whose references contain no near-ties (retry prompt seeds, deterministically).
    V = cfg["vocab_size"]
    specials = {cfg["bos_token_id"], cfg["eos_token_id"]}
    k = cfg["num_experts_per_tok"]
    for attempt in range(40):
        pg = torch.Generator().manual_seed(fx["seed"] * 100 + attempt)
        prompt = [int(t) for t in torch.randint(0, V - 2, (fx["prompt_len"],), generator=pg)]
        greedy, margins, step_logits = greedy_with_cache(model, prompt, fx["n_generate"])
        if specials & set(greedy) or min(margins) < MIN_GREEDY_MARGIN:
            print(f"   prompt attempt {attempt}: greedy hits a special token or margin {min(margins):.2e}")
            continue
        gap = router_min_gap(model, prompt + greedy, k)
        if gap < MIN_ROUTER_GAP:
            print(f"   prompt attempt {attempt}: router gap {gap:.2e}")
            continue
        break
    else:
        raise AssertionError(f"{name}: no prompt without near-ties found")

    logits = forward_logits(model, prompt)
    mem_logits = forward_logits(mem_model, prompt)
    assert torch.equal(logits, mem_logits) or rel_l2(logits, mem_logits) < 1e-6, "reload changed the logits"

    # Cached decode vs one full forward over prompt + continuation.
    full_logits = forward_logits(model, prompt + greedy[:-1])
    P = len(prompt)
    assert full_logits[P - 1:].argmax(-1).tolist() == greedy
    decode_err = max(rel_l2(step_logits[j], full_logits[P - 1 + j]) for j in range(len(greedy)))
    assert decode_err < 1e-4, decode_err
    assert rel_l2(full_logits[:P], logits) < 1e-5

    # model.generate must agree with the manual cached loop.
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=len(greedy), min_new_tokens=len(greedy),
                         do_sample=False)
    assert gen[0, P:].tolist() == greedy, (gen[0, P:].tolist(), greedy)

    effects = layer_effects(model, prompt, logits, cfg)
    assert min(effects) > MIN_LAYER_EFFECT, effects

    saved_dtypes, saved_cfg = check_save_pretrained_layout(model.to(torch.bfloat16), ckpt, outdir + ".tmp_sp")
    model = model.float()

    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([prompt]), use_cache=False).last_hidden_state[0].float()
    np.save(os.path.join(outdir, "logits.npy"), logits.numpy().astype(np.float32))
    np.save(os.path.join(outdir, "hidden_final.npy"), hidden.numpy().astype(np.float32))
    if fx["mtp"]:
        mtp_logits = mtp_reference(model, ckpt, cfg, prompt, hidden)
        np.save(os.path.join(outdir, "mtp_logits.npy"), mtp_logits.numpy().astype(np.float32))

    ref = {
        "prompt": prompt,
        "greedy": greedy,
        "greedy_margin": [round(m, 6) for m in margins],
        "n_generate": len(greedy),
        "rope": {"inv_freq": [float(x) for x in inv_freq_hf], "attention_scaling": model.model.rotary_emb.attention_scaling},
        "checks": {
            "min_router_gap": round(gap, 6),
            "min_greedy_margin": round(min(margins), 6),
            "layer_zeroing_rel_l2": [round(e, 4) for e in effects],
            "cached_decode_vs_full_forward_rel_l2": decode_err,
            "has_mtp_tensors": bool(fx["mtp"]),
        },
        "notes": ("Reference from transformers %s / torch %s, Qwen3NextForCausalLM loaded from this directory "
                  "with dtype=bfloat16 then .float(): weights are exactly the stored bf16 values, all compute fp32 "
                  "(eager attention, eager experts, torch fallback chunked/recurrent gated delta rule and "
                  "F.conv1d; no fla / causal_conv1d). logits.npy = logits of one full forward over the prompt "
                  "(no cache); hidden_final.npy = output of model.norm over the prompt. greedy = argmax "
                  "continuation using the KV + conv/recurrent cache (prefill of the whole prompt, then one token "
                  "per step), eos not treated specially; greedy_margin = top1 - top2 logit at each step. "
                  "Prompt chosen so no router (k-th vs k+1-th logit) gap is below %g and no greedy margin below %g."
                  % (transformers.__version__, torch.__version__, MIN_ROUTER_GAP, MIN_GREEDY_MARGIN)),
    }
    if fx["mtp"]:
        ref["mtp_notes"] = (
            "mtp_logits.npy float32 [len(prompt)-1, vocab]: row p = MTP draft logits from (hidden_final[p], "
            "prompt[p+1]) at rotary position p, causal attention over rows 0..p of the MTP layer; it predicts "
            "prompt[p+2]. transformers has no MTP: this is composed from transformers' Qwen3NextDecoderLayer / "
            "Qwen3NextRMSNorm / rotary embedding following vLLM qwen3_next_mtp.py (fc input = [normed embedding, "
            "normed hidden]; output = mtp.norm then the shared lm_head). hidden_final is the post-model.norm hidden.")
    with open(os.path.join(outdir, "ref.json"), "w") as f:
        # One top-level key per line, values compact (token lists stay on one line).
        f.write("{\n" + ",\n".join(" %s: %s" % (json.dumps(k), json.dumps(v)) for k, v in ref.items()) + "\n}\n")
    print(f"   files={files} prompt={len(prompt)} greedy={greedy[:6]}... min_margin={min(margins):.4f} "
          f"router_gap={gap:.4f} effects={[round(e, 3) for e in effects]} decode_err={decode_err:.2e} "
          f"save_pretrained dtypes={saved_dtypes} unexpected_keys={sorted(info['unexpected_keys'])[:3]}",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                  "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names to (re)build")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    major = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if major < (4, 57):
        sys.exit("transformers >= 4.57 (with qwen3_next) is required, found " + transformers.__version__)
    os.makedirs(args.out, exist_ok=True)
    for fx in FIXTURES:
        if args.only and fx["name"] not in args.only:
            continue
        build_fixture(fx, os.path.normpath(args.out))


if __name__ == "__main__":
    main()
