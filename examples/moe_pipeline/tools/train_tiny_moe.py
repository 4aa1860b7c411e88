#!/usr/bin/env python3
"""Trains the tiny Mixtral-shaped MoE whose routing the offloading simulator replays.

Why: hit rates measured on random gates say nothing about prefetching, which lives on the
structure of real routing (semantic clusters, layer-to-layer correlation). This script builds a
model with Mixtral-8x7B's expert and layer counts (32 layers, 8 experts, top-2) but tiny hidden
sizes (configs/mixtral-8x7b-tiny.json), from text every Debian / Ubuntu machine has: the Python
standard library's sources ("code"), licence texts ("licence") and man pages ("manual").

What is trained, honestly (numpy on CPU, about a minute, no torch needed):
  * byte embeddings: PPMI of byte co-occurrence in the training text, reduced by SVD;
  * every layer's router: spherical k-means (8 clusters) of that layer's expert inputs over the
    training text, layer by layer, so routing follows the text's structure as it flows through;
  * the LM head: ridge regression of the next byte on the final hidden state.
Attention and expert weights are seeded random (numpy seed); the model is not trained end to end
on a language-modelling loss (torch is not installed on the build machines).
tools/train_tiny_moe_torch.py is the end-to-end trainer for the GPU machine (not yet run); it
reuses this file's text sampling, writer and numpy forward, so both write the same files.

Outputs: the model as bf16 safetensors (tensor names of Mixtral checkpoints, the pipeline's
--weights), and a routing trace (offload/trace.h) of every prompt, the held-out ones marked:
held-out prompts come from files never used for training, so the map store never sees them.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import struct

import numpy as np

KINDS = ("code", "licence", "manual")


def kind_files(kind):
    if kind == "code":
        files = glob.glob("/usr/lib/python3*/*.py") + glob.glob("/usr/lib/python3*/*/*.py")
    elif kind == "licence":
        files = glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")
    else:
        files = glob.glob("/usr/share/man/man1/*.1.gz") + glob.glob("/usr/share/man/man1/*.1")
    return sorted(f for f in files if os.path.isfile(f))


def read_text(path, limit):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read(limit * 4)
    except OSError:
        return b""
    if path.endswith((".gz", ".1")):  # man pages: drop the groff requests, keep the prose
        data = b"\n".join(l for l in data.split(b"\n") if not l.startswith((b".", b"'")))
    return data[:limit]


def held_out(path):
    """A quarter of the files, chosen by name: their prompts are the evaluation set."""
    return hashlib.sha1(path.encode()).digest()[0] % 4 == 0


def sample(args, rng):
    """Per kind: train and held-out chunks of seq_len bytes, one per file, and training text."""
    seqs, corpus = [], []
    for kind in KINDS:
        files = kind_files(kind)
        rng.shuffle(files)
        want = {False: args.train, True: args.held_out}
        for path in files:
            h = held_out(path)
            if want[h] == 0:
                continue
            text = read_text(path, 1 << 16)
            if len(text) < args.seq_len * 2:
                continue
            at = int(rng.integers(0, len(text) - args.seq_len))
            seqs.append((kind, h, np.frombuffer(text[at:at + args.seq_len], dtype=np.uint8).astype(np.int64)))
            if not h:
                corpus.append(np.frombuffer(text, dtype=np.uint8).astype(np.int64))
            want[h] -= 1
            if want[False] == 0 and want[True] == 0:
                break
        if want[False] or want[True]:
            raise SystemExit(f"not enough {kind} files on this machine")
    return seqs, corpus


def bf16(a):
    """Rounds to bf16 precision (nearest even), so the trace is that of the saved model."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.view(np.float32)


def byte_embeddings(corpus, hidden):
    counts = np.ones((256, 256))
    for text in corpus:
        for d in (1, 2, 3):
            np.add.at(counts, (text[:-d], text[d:]), 1.0 / d)
    counts = counts + counts.T
    total = counts.sum()
    pmi = np.log(counts * total / np.outer(counts.sum(1), counts.sum(0)))
    u, s, _ = np.linalg.svd(np.maximum(pmi, 0))
    e = u[:, :hidden] * np.sqrt(s[:hidden])
    return e / np.sqrt((e ** 2).mean(1, keepdims=True) + 1e-6)


def rms_norm(x, w, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    t, d = x.shape[1], x.shape[-1]
    half = d // 2
    ang = np.arange(t)[:, None] * theta ** (-2.0 * np.arange(half) / d)
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


def attention(h, w, cfg):
    n, t, _ = h.shape
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    a = rms_norm(h, w["input_layernorm"], cfg["rms_norm_eps"])
    q = rope((a @ w["q_proj"].T).reshape(n, t, nh, hd), cfg["rope_theta"])
    k = rope((a @ w["k_proj"].T).reshape(n, t, nkv, hd), cfg["rope_theta"])
    v = (a @ w["v_proj"].T).reshape(n, t, nkv, hd)
    k, v = np.repeat(k, nh // nkv, axis=2), np.repeat(v, nh // nkv, axis=2)
    s = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(hd)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -1e30)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = np.einsum("nhqk,nkhd->nqhd", s, v).reshape(n, t, nh * hd)
    return h + o @ w["o_proj"].T


def softmax(x):
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


def experts(x, probs, w, cfg):
    k = cfg["num_experts_per_tok"]
    top = np.argsort(-probs, -1, kind="stable")[..., :k]
    weight = np.take_along_axis(probs, top, -1)
    weight /= weight.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for e in range(cfg["num_local_experts"]):
        w1, w2, w3 = w["experts"][e]
        g = x @ w1.T
        y = (g / (1 + np.exp(-g)) * (x @ w3.T)) @ w2.T
        sel = (top == e) * weight
        out += y * sel.sum(-1, keepdims=True)
    return out


def kmeans_router(x, experts_n, rng, scale, iters=20):
    """Spherical k-means of the (normalized) expert inputs: the router's rows are the centroids."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = u[rng.choice(len(u), experts_n, replace=False)]
    for _ in range(iters):
        lab = np.argmax(u @ c.T, 1)
        for e in range(experts_n):
            m = u[lab == e]
            c[e] = m.mean(0) if len(m) else u[rng.integers(len(u))]
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c * scale


def seeded_layer(cfg, rng):
    hsz, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    n = lambda r, c, g=1.0: bf16(rng.normal(0, g / np.sqrt(c), (r, c)))
    w = {"input_layernorm": np.ones(hsz, np.float32), "post_attention_layernorm": np.ones(hsz, np.float32),
         "q_proj": n(q, hsz), "k_proj": n(kv, hsz), "v_proj": n(kv, hsz), "o_proj": n(hsz, q, 0.5)}
    w["experts"] = [(n(inter, hsz), n(hsz, inter, 0.5), n(inter, hsz)) for _ in range(cfg["num_local_experts"])]
    return w


def train(cfg, seqs, corpus, rng, log):
    """Builds the model layer by layer; returns its weights and every prompt's gates."""
    x_ids = np.stack([s for _, _, s in seqs])
    train_rows = np.array([not h for _, h, _ in seqs])
    embed = bf16(byte_embeddings(corpus, cfg["hidden_size"]))
    h = embed[x_ids]
    layers, gates = [], []
    for l in range(cfg["num_hidden_layers"]):
        w = seeded_layer(cfg, rng)
        h = attention(h, w, cfg)
        x = rms_norm(h, w["post_attention_layernorm"], cfg["rms_norm_eps"])
        w["gate"] = bf16(kmeans_router(x[train_rows].reshape(-1, x.shape[-1]), cfg["num_local_experts"], rng, 2.0))
        probs = softmax(x @ w["gate"].T)
        h = h + experts(x, probs, w, cfg)
        layers.append(w)
        gates.append(probs.astype(np.float32))
        if log:
            load = np.bincount(np.argmax(probs, -1).ravel(), minlength=cfg["num_local_experts"]) / probs[..., 0].size
            print(f"layer {l:2d}: top-1 share per expert {np.round(load, 2)}, mean top-2 mass {np.sort(probs, -1)[..., -2:].sum(-1).mean():.2f}")
    final = rms_norm(h, 1.0, cfg["rms_norm_eps"])
    # The LM head: ridge regression of the next byte on the final state (training prompts).
    xs, ys = final[train_rows][:, :-1].reshape(-1, final.shape[-1]), x_ids[train_rows][:, 1:].ravel()
    y = np.eye(256)[ys]
    head = np.linalg.solve(xs.T @ xs + 1e-1 * np.eye(xs.shape[1]), xs.T @ y).T
    head = bf16(head * 4.0)
    pred = np.argmax(final[~train_rows][:, :-1] @ head.T, -1)
    acc = (pred == x_ids[~train_rows][:, 1:]).mean()
    print(f"next-byte accuracy on held-out prompts: {acc:.3f} (most frequent byte alone: "
          f"{(x_ids[~train_rows][:, 1:] == np.bincount(ys).argmax()).mean():.3f})")
    return {"embed": embed, "layers": layers, "lm_head": head}, np.stack(gates, 2)  # gates [n, t, layers, experts]


def tensors(cfg, model):
    yield "model.embed_tokens.weight", model["embed"]
    for l, w in enumerate(model["layers"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", w["input_layernorm"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{name}.weight", w[name]
        yield p + "post_attention_layernorm.weight", w["post_attention_layernorm"]
        yield p + "block_sparse_moe.gate.weight", w["gate"]
        for e, (w1, w2, w3) in enumerate(w["experts"]):
            for name, t in (("w1", w1), ("w2", w2), ("w3", w3)):
                yield p + f"block_sparse_moe.experts.{e}.{name}.weight", t
    yield "model.norm.weight", np.ones(cfg["hidden_size"], np.float32)
    yield "lm_head.weight", model["lm_head"]


def save_safetensors(path, cfg, model):
    header, blobs, at = {}, [], 0
    for name, t in tensors(cfg, model):
        raw = (bf16(t).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    header["__metadata__"] = {"format": "pt", "source": "examples/moe_pipeline/tools/train_tiny_moe.py"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_trace(path, cfg, seqs, model, gates, prompt_len):
    with open(path, "wb") as f:
        f.write(b"M2NTRACE" + struct.pack("<I5i", 1, cfg["num_hidden_layers"], cfg["num_local_experts"],
                                           cfg["num_experts_per_tok"], cfg["hidden_size"], len(seqs)))
        for (kind, h, ids), g in zip(seqs, gates):
            emb = model["embed"][ids[:prompt_len]].mean(0).astype("<f4")
            f.write(struct.pack("<i", len(kind)) + kind.encode() + struct.pack("<ii", int(h), len(ids)))
            f.write(emb.tobytes() + g.astype("<f4").tobytes())


def write_prompts(path, seqs):
    """KIND<TAB>HELD_OUT<TAB>TEXT, bytes as latin-1 with \\, \\n, \\t escaped (offload/record.h)."""
    with open(path, "wb") as f:
        for kind, h, ids in seqs:
            text = bytes(ids.astype(np.uint8)).replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t")
            f.write(kind.encode() + b"\t" + (b"1" if h else b"0") + b"\t" + text + b"\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(here, "..", "configs", "mixtral-8x7b-tiny.json"))
    ap.add_argument("--out", default="mixtral-8x7b-tiny.safetensors", help="model (bf16 safetensors)")
    ap.add_argument("--trace", default="mixtral-8x7b-tiny.trace", help="routing trace of every prompt")
    ap.add_argument("--prompts", default="mixtral-8x7b-tiny.prompts",
                    help="the prompts as text (moe_pipeline --trace OUT --prompts FILE re-records them in C++)")
    ap.add_argument("--train", type=int, default=32, help="training prompts per kind")
    ap.add_argument("--held_out", type=int, default=12, help="evaluation prompts per kind")
    ap.add_argument("--seq_len", type=int, default=96, help="bytes per prompt (the first 32 are its 'prompt')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    cfg = json.load(open(args.config))
    rng = np.random.default_rng(args.seed)
    seqs, corpus = sample(args, rng)
    print(f"{len(seqs)} prompts ({args.train} + {args.held_out} held out per kind: {', '.join(KINDS)}), "
          f"{sum(map(len, corpus)) / 1e6:.1f} MB of training text")
    model, gates = train(cfg, seqs, corpus, rng, args.verbose)
    save_safetensors(args.out, cfg, model)
    write_trace(args.trace, cfg, seqs, model, gates, 32)
    write_prompts(args.prompts, seqs)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) and {args.trace}")


if __name__ == "__main__":
    main()
