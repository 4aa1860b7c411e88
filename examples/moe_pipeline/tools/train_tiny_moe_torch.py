#!/usr/bin/env python3
"""Trains the tiny Mixtral-shaped MoE end to end (next-byte loss) with PyTorch, for the GPU machine.

The end-to-end counterpart of train_tiny_moe.py (which trains only the routers, embeddings and LM
head, in numpy, because torch is not installed on the build machines). Same text, same prompt
split, same config (configs/mixtral-8x7b-tiny.json), same outputs: bf16 safetensors with Mixtral's
tensor names, a routing trace and the prompts file; the trace is computed by train_tiny_moe.py's
numpy forward from the trained weights, which the C++ reference matches (README.md).

Model: Mixtral's decoder (RMSNorm, grouped-query attention with RoPE, a softmax router with top-2
renormalized, SwiGLU experts), loss = next-byte cross entropy + 0.01 x the Switch load-balancing
loss. Not yet run: written in a session with no GPU and no torch (say so when you first run it).

    pip install torch && python3 train_tiny_moe_torch.py --steps 3000 --device cuda
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import train_tiny_moe as base


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        h, q, kv, inter, e = (c["hidden_size"], c["num_attention_heads"] * c["head_dim"],
                              c["num_key_value_heads"] * c["head_dim"], c["intermediate_size"], c["num_local_experts"])
        self.c = c
        self.input_layernorm = torch.nn.Parameter(torch.ones(h))
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(h))
        lin = lambda o, i: torch.nn.Parameter(torch.randn(o, i) / i ** 0.5)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = lin(q, h), lin(kv, h), lin(kv, h), lin(h, q)
        self.gate = lin(e, h)
        self.w1 = torch.nn.Parameter(torch.randn(e, inter, h) / h ** 0.5)
        self.w3 = torch.nn.Parameter(torch.randn(e, inter, h) / h ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(e, h, inter) / inter ** 0.5)

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]) * w

    def rope(self, x):
        t, d = x.shape[1], x.shape[-1]
        half = d // 2
        pos = torch.arange(t, device=x.device)[:, None]
        ang = pos * self.c["rope_theta"] ** (-2.0 * torch.arange(half, device=x.device) / d)
        cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def forward(self, h):
        c, (n, t, _) = self.c, h.shape
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        a = self.norm(h, self.input_layernorm)
        q = self.rope((a @ self.q_proj.T).view(n, t, nh, hd)).transpose(1, 2)
        k = self.rope((a @ self.k_proj.T).view(n, t, nkv, hd)).repeat_interleave(nh // nkv, 2).transpose(1, 2)
        v = (a @ self.v_proj.T).view(n, t, nkv, hd).repeat_interleave(nh // nkv, 2).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, nh * hd)
        h = h + o @ self.o_proj.T
        x = self.norm(h, self.post_attention_layernorm)
        probs = (x @ self.gate.T).softmax(-1)
        w, top = probs.topk(c["num_experts_per_tok"], -1)
        w = w / w.sum(-1, keepdim=True)
        # Dense over experts (tiny widths): each expert on every token, weighted by its routed weight.
        g = torch.einsum("nth,eih->ntei", x, self.w1)
        u = torch.einsum("nth,eih->ntei", x, self.w3)
        y = torch.einsum("ntei,ehi->nteh", F.silu(g) * u, self.w2)
        routed = torch.zeros_like(probs).scatter(-1, top, w)
        h = h + (y * routed[..., None]).sum(2)
        e = probs.shape[-1]
        balance = e * (F.one_hot(top[..., 0], e).float().mean((0, 1)) * probs.mean((0, 1))).sum()
        return h, balance


class Model(torch.nn.Module):
    def __init__(self, c, embed):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.tensor(embed, dtype=torch.float32))
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.lm_head = torch.nn.Parameter(torch.randn(c["vocab_size"], c["hidden_size"]) / c["hidden_size"] ** 0.5)
        self.eps = c["rms_norm_eps"]

    def forward(self, ids):
        h, balance = self.embed[ids], 0.0
        for layer in self.layers:
            h, b = layer(h)
            balance = balance + b
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h @ self.lm_head.T, balance / len(self.layers)


def numpy_weights(model):
    """The trained model in train_tiny_moe.py's layout, for its writer and its numpy forward."""
    layers = []
    for l in model.layers:
        t = lambda p: base.bf16(p.detach().float().cpu().numpy())
        w = {k: t(getattr(l, k)) for k in ("input_layernorm", "post_attention_layernorm", "q_proj", "k_proj",
                                           "v_proj", "o_proj", "gate")}
        w["experts"] = [(t(l.w1[e]), t(l.w2[e]), t(l.w3[e])) for e in range(l.w1.shape[0])]
        layers.append(w)
    return {"embed": base.bf16(model.embed.detach().cpu().numpy()), "layers": layers,
            "lm_head": base.bf16(model.lm_head.detach().cpu().numpy())}


def gates_of(cfg, weights, seqs):
    """Every prompt's gate distributions [n, t, layers, experts], by the numpy forward."""
    ids = np.stack([s for _, _, s in seqs])
    h, gates = weights["embed"][ids], []
    for w in weights["layers"]:
        h = base.attention(h, w, cfg)
        x = base.rms_norm(h, w["post_attention_layernorm"], cfg["rms_norm_eps"])
        probs = base.softmax(x @ w["gate"].T)
        h = h + base.experts(x, probs, w, cfg)
        gates.append(probs.astype(np.float32))
    return np.stack(gates, 2)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(here, "..", "configs", "mixtral-8x7b-tiny.json"))
    ap.add_argument("--out", default="mixtral-8x7b-tiny.safetensors")
    ap.add_argument("--trace", default="mixtral-8x7b-tiny.trace")
    ap.add_argument("--prompts", default="mixtral-8x7b-tiny.prompts")
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--held_out", type=int, default=12)
    ap.add_argument("--seq_len", type=int, default=96)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = json.load(open(args.config))
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    seqs, corpus = base.sample(args, rng)
    text = np.concatenate(corpus)
    model = Model(cfg, base.byte_embeddings(corpus, cfg["hidden_size"])).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    for step in range(args.steps):
        at = rng.integers(0, len(text) - args.seq_len - 1, args.batch)
        batch = torch.tensor(np.stack([text[a:a + args.seq_len + 1] for a in at]), device=args.device)
        logits, balance = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        (loss + 0.01 * balance).backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} (bits/byte {loss.item() / np.log(2):.2f}), balance {balance.item():.3f}")
    weights = numpy_weights(model)
    base.save_safetensors(args.out, cfg, weights)
    base.write_trace(args.trace, cfg, seqs, weights, gates_of(cfg, weights, seqs), 32)
    base.write_prompts(args.prompts, seqs)
    print(f"wrote {args.out}, {args.trace}, {args.prompts}")


if __name__ == "__main__":
    main()
