#!/usr/bin/env python3
"""Train qnext-tiny: a ~9.5M-parameter Qwen3-Next (transformers' Qwen3NextForCausalLM) plus one MTP layer.

The MTP module follows docs/qwen3next-spec.md section 4: fc over concat(RMSNorm1p(embed(tok_{p+1})),
RMSNorm1p(h_p)) with h_p the main model's final hidden after model.norm, one full-attention
Qwen3NextDecoderLayer with its own sparse MoE, mtp.norm, then the shared lm_head -> token p+2.
It is trained jointly (next-next-token loss weight --mtp-weight) with the MoE load-balancing loss.

Runs on CPU for a smoke test (--smoke) and on a GPU for the real run (bf16 autocast, AdamW, cosine).
Writes into --out:
  model/                 config.json (published spelling), model.safetensors (bf16, official per-expert layout,
                         incl. mtp.*; split into model.safetensors.partN when --split-mb is set),
                         generation_config.json
  bundle/                tiny_refs.json, train_log.txt, loss.csv, tiny_loss.png, summary.json
Reference values (tiny_refs.json) are computed on CPU in fp32 from the final bf16 weights, with the
model loaded back through Qwen3NextForCausalLM.from_pretrained (MTP in this file's module).

Data: data/tiny/{train,val}.npy from tools/tiny_data_prep.py.
"""
import argparse
import copy
import csv
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import transformers
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
from transformers.models.qwen3_next import modeling_qwen3_next as qn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Final dimensions (see docs/TINY.md for the budget arithmetic: 20 MB on disk, bf16).
DIMS = dict(
    vocab_size=4096, hidden_size=320, num_hidden_layers=8, full_attention_interval=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
    linear_conv_kernel_dim=4,
    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48, shared_expert_intermediate_size=192,
    intermediate_size=1280,  # unused: every layer is MoE (decoder_sparse_step 1, no mlp_only_layers)
    max_position_embeddings=2048, rope_theta=10000.0, partial_rotary_factor=0.25,
)
SMOKE_DIMS = dict(DIMS, hidden_size=64, num_hidden_layers=4, moe_intermediate_size=16,
                  shared_expert_intermediate_size=32, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16)

BOS_EOS = dict(eot="<|endoftext|>", im_end="<|im_end|>")


def published_config(d, tok_ids):
    """config.json in the spelling of the released Qwen3-Next checkpoints (no layer_types, rope at top level)."""
    return {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok_ids["eot"],
        "decoder_sparse_step": 1,
        "eos_token_id": tok_ids["im_end"],
        "full_attention_interval": d["full_attention_interval"],
        "head_dim": d["head_dim"],
        "hidden_act": "silu",
        "hidden_size": d["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": d["intermediate_size"],
        "linear_conv_kernel_dim": d["linear_conv_kernel_dim"],
        "linear_key_head_dim": d["linear_key_head_dim"],
        "linear_num_key_heads": d["linear_num_key_heads"],
        "linear_num_value_heads": d["linear_num_value_heads"],
        "linear_value_head_dim": d["linear_value_head_dim"],
        "max_position_embeddings": d["max_position_embeddings"],
        "mlp_only_layers": [],
        "model_type": "qwen3_next",
        "moe_intermediate_size": d["moe_intermediate_size"],
        "norm_topk_prob": True,
        "num_attention_heads": d["num_attention_heads"],
        "num_experts": d["num_experts"],
        "num_experts_per_tok": d["num_experts_per_tok"],
        "num_hidden_layers": d["num_hidden_layers"],
        "num_key_value_heads": d["num_key_value_heads"],
        "num_nextn_predict_layers": 1,
        "output_router_logits": False,
        "pad_token_id": tok_ids["eot"],
        "partial_rotary_factor": d["partial_rotary_factor"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": d["rope_theta"],
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": d["shared_expert_intermediate_size"],
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": d["vocab_size"],
    }


class TinyMTP(nn.Module):
    """One Qwen3-Next MTP layer; parameter names match the checkpoint's mtp.* (spec section 2/4)."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        mtp_cfg = copy.deepcopy(config)
        # Qwen3NextDecoderLayer picks its mixer from layer_types[layer_idx]; the MTP layer is index 0
        # and must be full attention (vLLM builds it the same way), so give it a config saying so.
        mtp_cfg.layer_types = ["full_attention"] * config.num_hidden_layers
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = qn.Qwen3NextRMSNorm(h, eps=config.rms_norm_eps)
        self.pre_fc_norm_hidden = qn.Qwen3NextRMSNorm(h, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList([qn.Qwen3NextDecoderLayer(mtp_cfg, 0)])
        self.norm = qn.Qwen3NextRMSNorm(h, eps=config.rms_norm_eps)
        self.router_logits = []  # filled by a hook during forward, for the load-balancing loss
        self.layers[0].mlp.gate.register_forward_hook(lambda m, a, out: self.router_logits.append(out[0]))

    def init_weights(self, std):
        for name, p in self.named_parameters():
            with torch.no_grad():
                if p.dim() >= 2:
                    p.normal_(0.0, std)
                else:
                    p.zero_()  # all 1-D params here are zero-centred RMSNorm weights

    def forward(self, hidden, next_ids, embed, rotary):
        """hidden: [B,T,H] main final hidden (after model.norm); next_ids: [B,T] token at p+1."""
        e = self.pre_fc_norm_embedding(embed(next_ids))
        hh = self.pre_fc_norm_hidden(hidden)
        u = self.fc(torch.cat([e, hh], dim=-1))
        pos = torch.arange(u.shape[1], device=u.device).unsqueeze(0)
        pe = rotary(u, pos)
        # attention_mask=None with sdpa means causal (is_causal path); refs use sdpa on CPU too.
        y = self.layers[0](hidden_states=u, position_embeddings=pe, attention_mask=None, position_ids=pos)
        if isinstance(y, tuple):
            y = y[0]
        return self.norm(y)


def build_config(d, tok_ids):
    cfg = Qwen3NextConfig(**{k: v for k, v in published_config(d, tok_ids).items()
                             if k not in ("architectures", "model_type", "transformers_version", "torch_dtype")})
    cfg._attn_implementation = "sdpa"
    return cfg


def official_state_dict(model, mtp, cfg):
    """bf16 tensors under the released checkpoint's names, one tensor per expert, lm_head tied (absent)."""
    out = {}
    inter = cfg.moe_intermediate_size

    def add(prefix, sd):
        for k, v in sd.items():
            v = v.detach().to("cpu", torch.bfloat16).contiguous()
            if k.endswith("mlp.experts.gate_up_proj"):
                base = prefix + k[: -len("gate_up_proj")]
                for e in range(v.shape[0]):
                    out[f"{base}{e}.gate_proj.weight"] = v[e, :inter].clone()
                    out[f"{base}{e}.up_proj.weight"] = v[e, inter:].clone()
            elif k.endswith("mlp.experts.down_proj"):
                base = prefix + k[: -len("down_proj")]
                for e in range(v.shape[0]):
                    out[f"{base}{e}.down_proj.weight"] = v[e].clone()
            else:
                out[prefix + k] = v

    msd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    add("", msd)
    add("mtp.", mtp.state_dict())
    return out


def cosine_lr(step, total, warmup, peak, floor_frac):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def forward_losses(model, mtp, seq, cfg, aux_coef, mtp_weight):
    """seq: [B, T+2] token ids. Returns total loss and parts."""
    x = seq[:, :-2]
    out = model.model(input_ids=x, output_router_logits=True)
    h = out.last_hidden_state
    logits = model.lm_head(h)
    loss_main = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seq[:, 1:-1].reshape(-1))
    aux = qn.load_balancing_loss_func(out.router_logits, cfg.num_experts, cfg.num_experts_per_tok)
    mtp.router_logits.clear()
    m = mtp(h, seq[:, 1:-1], model.model.embed_tokens, model.model.rotary_emb)
    mlogits = model.lm_head(m)
    loss_mtp = F.cross_entropy(mlogits.float().reshape(-1, mlogits.shape[-1]), seq[:, 2:].reshape(-1))
    aux_mtp = qn.load_balancing_loss_func(tuple(mtp.router_logits), cfg.num_experts, cfg.num_experts_per_tok)
    mtp.router_logits.clear()
    total = loss_main + mtp_weight * loss_mtp + aux_coef * (aux + aux_mtp)
    return total, loss_main, loss_mtp, aux, aux_mtp


@torch.no_grad()
def evaluate(model, mtp, val, seq_len, n_windows, device, amp):
    """Mean NLL of main and MTP heads over fixed contiguous validation windows; MTP acceptance."""
    model.eval(); mtp.eval()
    tot_main = tot_mtp = 0.0; n_main = n_mtp = 0; acc_hits = acc_n = 0; top1_hits = 0
    stride = seq_len + 2
    starts = list(range(0, len(val) - stride, stride))[:n_windows]
    for i in range(0, len(starts), 8):
        seq = torch.stack([val[s:s + stride] for s in starts[i:i + 8]]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x = seq[:, :-2]
            h = model.model(input_ids=x).last_hidden_state
            logits = model.lm_head(h).float()
            m = mtp(h, seq[:, 1:-1], model.model.embed_tokens, model.model.rotary_emb)
            mlogits = model.lm_head(m).float()
        mtp.router_logits.clear()
        tot_main += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:-1].reshape(-1), reduction="sum").item()
        n_main += seq[:, 1:-1].numel()
        tot_mtp += F.cross_entropy(mlogits.reshape(-1, mlogits.shape[-1]), seq[:, 2:].reshape(-1), reduction="sum").item()
        n_mtp += seq[:, 2:].numel()
        main_greedy = logits.argmax(-1)     # [B,T]: position p predicts token p+1
        draft = mlogits.argmax(-1)          # [B,T]: position p (fed token p+1) predicts token p+2
        # Acceptance: draft for p+2 equals the main model's greedy choice at p+1 (given the real token p+1).
        acc_hits += (draft[:, :-1] == main_greedy[:, 1:]).sum().item(); acc_n += draft[:, :-1].numel()
        top1_hits += (main_greedy == seq[:, 1:-1]).sum().item()
    model.train(); mtp.train()
    return dict(val_nll=tot_main / n_main, val_ppl=math.exp(tot_main / n_main), val_mtp_nll=tot_mtp / n_mtp,
                mtp_acceptance=acc_hits / max(1, acc_n), main_top1=top1_hits / n_main, tokens=n_main)


@torch.no_grad()
def sample(model, ids, n_new, temperature, top_p, top_k, rep_penalty, eos_ids, gen, device):
    """Plain sampling loop without a cache (full recompute per token; tiny model, short texts)."""
    ids = list(ids)
    for _ in range(n_new):
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x).logits[0, -1].float()
        if rep_penalty != 1.0:
            prev = torch.tensor(sorted(set(ids)), device=device)
            sel = logits[prev]
            logits[prev] = torch.where(sel > 0, sel / rep_penalty, sel * rep_penalty)
        logits = logits / temperature
        if top_k > 0:
            kth = torch.topk(logits, top_k).values[-1]
            logits[logits < kth] = -float("inf")
        probs = torch.softmax(logits, -1)
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        sp = sp * keep
        choice = si[torch.multinomial(sp / sp.sum(), 1, generator=gen)].item()
        ids.append(choice)
        if choice in eos_ids:
            break
    return ids


def compute_refs(model_dir, mtp_state, cfg_train, val, tok, n_ref, prompts, n_greedy, log):
    """fp32 CPU references from the saved bf16 checkpoint, loaded through from_pretrained."""
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    model, info = Qwen3NextForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True,
                                                       attn_implementation="sdpa")
    model.eval()
    log(f"from_pretrained: missing={info['missing_keys']} unexpected(first 5)={sorted(info['unexpected_keys'])[:5]} "
        f"n_unexpected={len(info['unexpected_keys'])} mismatched={info.get('mismatched_keys')}")
    assert not info["missing_keys"], info["missing_keys"]
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"]), info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    mtp = TinyMTP(model.config)
    mtp.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in mtp_state.items()})
    mtp.eval()

    refs = {"definition": {
        "weights": "model.safetensors as shipped (bf16), upcast to fp32; all compute fp32 on CPU "
                   f"(transformers {transformers.__version__}, torch {torch.__version__}, sdpa attention, "
                   "torch chunked gated-delta-rule)",
        "val_ppl": "exp(mean over i=1..N-1 of -log softmax(logits[i-1])[ids[i]]), logits from ONE forward over "
                   "val_ids (N tokens, positions 0..N-1, fresh state)",
        "greedy": "for each prompt: repeatedly run a full forward over prompt+generated so far, append argmax of "
                  "the last position's logits (no stopping on eos); margin = top1 logit - top2 logit at that step",
        "mtp": "h = final hidden (after model.norm) of the one forward over val_ids; draft at position p uses h[p] and "
               "token val_ids[p+1] at rotary position p (p = 0..N-2), MTP attention causal over positions 0..p; "
               "draft_argmax[p] = argmax of lm_head(mtp.norm(layer(fc(...)))) predicts val_ids[p+2]; "
               "draft_margin[p] = top1 - top2 draft logit",
    }}
    ids = torch.tensor(val[:n_ref].tolist()).unsqueeze(0)
    with torch.no_grad():
        out = model.model(input_ids=ids)
        h = out.last_hidden_state
        logits = model.lm_head(h)[0]
        nll = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        m = mtp(h[:, :-1], ids[:, 1:], model.model.embed_tokens, model.model.rotary_emb)
        dlog = model.lm_head(m)[0]
    top2 = torch.topk(logits, 2, dim=-1).values
    refs["val"] = {
        "n_tokens": int(ids.shape[1]),
        "ids": ids[0].tolist(),
        "text": tok.decode(ids[0].tolist(), skip_special_tokens=False),
        "mean_nll": float(nll.mean()),
        "ppl": float(math.exp(nll.mean().item())),
        "main_argmax": logits.argmax(-1).tolist(),
        "main_margin": [round(float(a - b), 5) for a, b in top2.tolist()],
        "logits_first8_pos0": [round(float(v), 5) for v in logits[0, :8]],
        "logits_first8_last": [round(float(v), 5) for v in logits[-1, :8]],
    }
    d2 = torch.topk(dlog, 2, dim=-1).values
    refs["mtp"] = {
        "n_positions": int(dlog.shape[0]),
        "draft_argmax": dlog.argmax(-1).tolist(),
        "draft_margin": [round(float(a - b), 5) for a, b in d2.tolist()],
        "draft_logits_first8_pos0": [round(float(v), 5) for v in dlog[0, :8]],
        "acceptance_vs_main_greedy": float((dlog.argmax(-1)[:-1] == logits.argmax(-1)[1:-1]).float().mean()),
    }
    greedy = []
    for text in prompts:
        p_ids = tok.encode(text).ids
        cur = list(p_ids); cont = []; margins = []
        with torch.no_grad():
            for _ in range(n_greedy):
                lg = model(input_ids=torch.tensor([cur])).logits[0, -1]
                t2 = torch.topk(lg, 2)
                cont.append(int(t2.indices[0])); margins.append(round(float(t2.values[0] - t2.values[1]), 5))
                cur.append(cont[-1])
        greedy.append({"prompt": text, "prompt_ids": p_ids, "continuation_ids": cont,
                       "continuation_text": tok.decode(cont, skip_special_tokens=False), "margins": margins})
    refs["greedy"] = greedy
    return refs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny dims, few steps (CPU check)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--time-limit", type=float, default=1e9, help="hard stop in seconds (safety)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--mtp-weight", type=float, default=0.3)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bench", type=int, default=0, help="only time this many training steps, then exit")
    ap.add_argument("--experts-impl", default=None, help="transformers experts implementation (eager, grouped_mm, ...)")
    ap.add_argument("--n-ref", type=int, default=1024)
    ap.add_argument("--n-greedy", type=int, default=32)
    ap.add_argument("--split-mb", type=float, default=0, help="split model.safetensors into parts of this size")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "tiny"))
    ap.add_argument("--tok-dir", default=os.path.join(ROOT, "models", "qnext-tiny"))
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/qnext_tiny_out"))
    args = ap.parse_args()

    t_start = time.time()
    model_dir = os.path.join(args.out, "model"); bundle = os.path.join(args.out, "bundle")
    os.makedirs(model_dir, exist_ok=True); os.makedirs(bundle, exist_ok=True)
    log_f = open(os.path.join(bundle, "train_log.txt"), "w")

    def log(msg):
        line = f"[{time.time() - t_start:8.1f}s] {msg}"
        print(line, flush=True); log_f.write(line + "\n"); log_f.flush()

    torch.manual_seed(args.seed); np.random.seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"argv: {' '.join(sys.argv)}")
    log(f"device={device} card={card} torch={torch.__version__} transformers={transformers.__version__} "
        f"python={platform.python_version()}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.tok_dir, "tokenizer.json"))
    tok_ids = {k: tok.token_to_id(v) for k, v in BOS_EOS.items()}
    dims = SMOKE_DIMS if args.smoke else DIMS
    cfg = build_config(dims, tok_ids)
    if args.experts_impl:
        cfg._experts_implementation = args.experts_impl
    model = Qwen3NextForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    mtp = TinyMTP(cfg); mtp.init_weights(cfg.initializer_range)
    log(f"layer_types={cfg.layer_types}")
    n_main = sum(p.numel() for p in model.parameters()); n_mtp = sum(p.numel() for p in mtp.parameters())
    log(f"params: main={n_main} mtp={n_mtp} total={n_main + n_mtp} (bf16 bytes {2 * (n_main + n_mtp)})")
    model.to(device); mtp.to(device); model.train(); mtp.train()

    train = torch.from_numpy(np.load(os.path.join(args.data_dir, "train.npy")).astype(np.int64))
    val = torch.from_numpy(np.load(os.path.join(args.data_dir, "val.npy")).astype(np.int64))
    log(f"data: train={train.numel()} tokens val={val.numel()} tokens")
    train_dev = train.to(device)

    decay, no_decay = [], []
    for mod in (model, mtp):
        for n, p in mod.named_parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    step_fn = forward_losses
    if args.compile:
        step_fn = torch.compile(forward_losses)

    gen = torch.Generator(device="cpu"); gen.manual_seed(args.seed)
    if args.bench:
        times = []
        for i in range(args.bench):
            t0 = time.time()
            starts = torch.randint(0, train.numel() - args.seq - 2, (args.batch,), generator=gen)
            seq = torch.stack([train_dev[s:s + args.seq + 2] for s in starts.tolist()])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                total, lm, lmtp, aux, auxm = step_fn(model, mtp, seq, cfg, args.aux_coef, args.mtp_weight)
            opt.zero_grad(set_to_none=True); total.backward(); opt.step()
            lv = total.item(); times.append(time.time() - t0)
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0
        med = sorted(times[len(times) // 2:])[len(times[len(times) // 2:]) // 2]
        log(f"BENCH experts={getattr(cfg, '_experts_implementation', None)} compile={args.compile} batch={args.batch} "
            f"seq={args.seq}: first={times[0]:.2f}s median(2nd half)={med * 1000:.1f} ms/step "
            f"tok/s={args.batch * args.seq / med:.0f} loss={lv:.3f} maxmem={mem:.1f}GiB")
        return
    rows = []; best = None; seq_span = args.seq + 2
    eval_seq = min(args.seq, 1024)
    t_train = time.time(); step = 0
    for step in range(args.steps):
        lr = cosine_lr(step, args.steps, args.warmup, args.lr, args.min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, train.numel() - seq_span, (args.batch,), generator=gen)
        seq = torch.stack([train_dev[s:s + seq_span] for s in starts.tolist()])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            total, lm, lmtp, aux, auxm = step_fn(model, mtp, seq, cfg, args.aux_coef, args.mtp_weight)
        opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(mtp.parameters()), 1.0)
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            row = dict(step=step, time=round(time.time() - t_train, 2), lr=lr, loss=total.item(), main=lm.item(),
                       mtp=lmtp.item(), aux=float(aux), aux_mtp=float(auxm), gnorm=float(gnorm))
            rows.append(row)
            if step % 50 == 0:
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if (step > 0 and step % args.eval_every == 0) or step == args.steps - 1:
            ev = evaluate(model, mtp, val, eval_seq, args.eval_windows, device, amp)
            rows[-1].update({f"eval_{k}": v for k, v in ev.items()})
            log(f"eval step={step} " + " ".join(f"{k}={v:.4f}" for k, v in ev.items()))
            if best is None or ev["val_nll"] < best[0]:
                best = (ev["val_nll"], step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        {k: v.detach().cpu().clone() for k, v in mtp.state_dict().items()})
        if time.time() - t_train > args.time_limit:
            log(f"time limit reached at step {step}")
            ev = evaluate(model, mtp, val, eval_seq, args.eval_windows, device, amp)
            if best is None or ev["val_nll"] < best[0]:
                best = (ev["val_nll"], step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        {k: v.detach().cpu().clone() for k, v in mtp.state_dict().items()})
            break
    train_wall = time.time() - t_train
    log(f"training done: steps={step + 1} wall={train_wall:.1f}s tokens={(step + 1) * args.batch * args.seq} "
        f"best_val_nll={best[0]:.4f} at step {best[1]}")

    # Keep the best-validation weights, rounded to bf16 (what ships).
    model.load_state_dict(best[2]); mtp.load_state_dict(best[3])
    with torch.no_grad():
        for p in list(model.parameters()) + list(mtp.parameters()):
            p.copy_(p.to(torch.bfloat16).float())

    # Full-validation metrics with the shipped (bf16-rounded) weights.
    final_ev = evaluate(model, mtp, val, eval_seq, 10 ** 6, device, amp)
    log("final eval (all val windows): " + " ".join(f"{k}={v:.4f}" for k, v in final_ev.items()))

    # ---- export: official layout, published config ----
    from safetensors.torch import save_file
    sd = official_state_dict(model, mtp, cfg)
    st_path = os.path.join(model_dir, "model.safetensors")
    save_file(sd, st_path, metadata={"format": "pt"})
    pub = published_config(dims, tok_ids)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(pub, f, indent=2); f.write("\n")
    gen_cfg = {"bos_token_id": tok_ids["eot"], "pad_token_id": tok_ids["eot"],
               "eos_token_id": [tok_ids["im_end"], tok_ids["eot"]], "do_sample": True, "temperature": 0.8,
               "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.1, "transformers_version": transformers.__version__}
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump(gen_cfg, f, indent=2); f.write("\n")
    for fn in ("tokenizer.json", "tokenizer_config.json"):  # so from_pretrained-style loading works on the copy
        with open(os.path.join(args.tok_dir, fn), "rb") as src, open(os.path.join(model_dir, fn), "wb") as dst:
            dst.write(src.read())
    sha = hashlib.sha256(open(st_path, "rb").read()).hexdigest()
    log(f"saved {st_path}: {os.path.getsize(st_path)} bytes sha256={sha} tensors={len(sd)}")

    # ---- load check through transformers + logits agreement with the training-side model ----
    loaded = Qwen3NextForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    loaded.eval(); model.eval()
    probe = val[:256].unsqueeze(0).to(device)
    with torch.no_grad():
        a = model(input_ids=probe).logits.float(); b = loaded(input_ids=probe).logits.float()
    log(f"reload check: max|logits diff| = {(a - b).abs().max().item():.3e}")
    assert (a - b).abs().max().item() < 1e-3
    del loaded

    # ---- samples (sampling with the generation_config defaults) ----
    prompts = ["It is a truth universally acknowledged, that", "Elizabeth looked at her sister, and",
               "In the beginning", "\"My dear Mr. Bennet,\" said his lady to him one day,",
               "The weather was so fine that", "And it came to pass, when"]
    sgen = torch.Generator(device=device); sgen.manual_seed(args.seed)
    samples = []
    for ptxt in prompts:
        out_ids = sample(model, tok.encode(ptxt).ids, 80 if not args.smoke else 8, gen_cfg["temperature"],
                         gen_cfg["top_p"], gen_cfg["top_k"], gen_cfg["repetition_penalty"],
                         set(gen_cfg["eos_token_id"]), sgen, device)
        samples.append(tok.decode(out_ids, skip_special_tokens=True))
        log("SAMPLE: " + json.dumps(samples[-1]))

    # ---- references (CPU fp32 from the shipped bf16 file) ----
    mtp_state = {k: v.detach().cpu() for k, v in mtp.state_dict().items()}
    t_ref = time.time()
    refs = compute_refs(model_dir, mtp_state, cfg, val.numpy(), tok, args.n_ref if not args.smoke else 64,
                        prompts, args.n_greedy if not args.smoke else 4, log)
    refs["model"] = {"dir": "models/qnext-tiny", "safetensors_sha256": sha}
    log(f"refs: val ppl={refs['val']['ppl']:.4f} mtp acceptance on ref seq={refs['mtp']['acceptance_vs_main_greedy']:.4f} "
        f"({time.time() - t_ref:.1f}s)")
    for g in refs["greedy"]:
        log("GREEDY: " + json.dumps(g["prompt"] + g["continuation_text"]) + f" min_margin={min(g['margins']):.4f}")
    with open(os.path.join(bundle, "tiny_refs.json"), "w") as f:
        json.dump(refs, f, indent=1); f.write("\n")

    # ---- curve, summary ----
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    with open(os.path.join(bundle, "loss.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys); w.writeheader(); w.writerows(rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot([r["step"] for r in rows], [r["main"] for r in rows], label="train main (next token)", lw=0.8)
        ax.plot([r["step"] for r in rows], [r["mtp"] for r in rows], label="train MTP (token +2)", lw=0.8)
        ev_rows = [r for r in rows if "eval_val_nll" in r]
        ax.plot([r["step"] for r in ev_rows], [r["eval_val_nll"] for r in ev_rows], "o-", label="val main")
        ax.plot([r["step"] for r in ev_rows], [r["eval_val_mtp_nll"] for r in ev_rows], "s-", label="val MTP")
        ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (nats)"); ax.set_ylim(bottom=0)
        ax.set_title(f"qnext-tiny ({(n_main + n_mtp) / 1e6:.2f}M params) on {card}")
        ax.grid(alpha=0.3); ax.legend()
        fig.tight_layout(); fig.savefig(os.path.join(bundle, "tiny_loss.png"), dpi=110)
    except Exception as exc:  # matplotlib missing: the CSV is enough to plot elsewhere
        log(f"no plot: {exc}")
    summary = dict(card=card, train_wall_s=train_wall, total_wall_s=time.time() - t_start, steps=step + 1,
                   tokens_seen=(step + 1) * args.batch * args.seq, best_step=best[1], params_main=n_main,
                   params_mtp=n_mtp, final_eval=final_ev, ref_ppl=refs["val"]["ppl"], samples=samples,
                   safetensors_bytes=os.path.getsize(st_path), sha256=sha, argv=sys.argv,
                   torch=torch.__version__, transformers=transformers.__version__)
    with open(os.path.join(bundle, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2); f.write("\n")
    if args.split_mb > 0:
        data = open(st_path, "rb").read(); n = int(args.split_mb * 1024 * 1024)
        for i in range(0, len(data), n):
            with open(f"{st_path}.part{i // n}", "wb") as f:
                f.write(data[i:i + n])
        os.remove(st_path)
    log(f"all done in {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
