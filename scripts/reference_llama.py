#!/usr/bin/env python3
"""Independent reference forward pass of a Llama-family GGUF model in numpy.

Reads the file with the `gguf` PyPI package (ggml's own Python reader and
dequantizer, not aqpim's Rust code), runs a plain float64 Llama forward without
a KV cache (full recomputation each step), and prints one JSON object:

- `nll`: mean negative log-likelihood of ids[1:] given the preceding ids;
- `top5`: the five most likely next tokens after all ids, with logits;
- `greedy`: the greedy continuation of `--greedy N` tokens.

Usage:
    pip install gguf numpy
    python3 scripts/reference_llama.py --model assets/SmolLM2-135M-Instruct.Q4_1.gguf \
        --ids 504,3575,282,4649,314 --greedy 20 [--rope normal|neox]

RoPE: GGUF "normal" mode rotates adjacent pairs (x[2i], x[2i+1]) by
pos * base^(-2i/n_rot), as llama.cpp does for the `llama` architecture; `neox`
rotates (x[i], x[i + n_rot/2]) instead (a control: the wrong mode for this file).
"""

import argparse
import json

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def load(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    cfg = {
        "n_layers": int(field(r, f"{arch}.block_count")),
        "dim": int(field(r, f"{arch}.embedding_length")),
        "n_heads": int(field(r, f"{arch}.attention.head_count")),
        "n_kv_heads": int(field(r, f"{arch}.attention.head_count_kv")),
        "base": float(field(r, f"{arch}.rope.freq_base")),
        "eps": float(field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
    }
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        # GGUF dims are fastest-first; numpy shape is the reverse.
        w[t.name] = a.reshape([int(d) for d in reversed(t.shape)])
    return cfg, w


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos, base, mode):
    # x: (T, heads, hd)
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd // 2) * 2.0 / hd)
    ang = pos[:, None] * inv[None, :]  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if mode == "normal":
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        out[..., : hd // 2] = a * cos - b * sin
        out[..., hd // 2 :] = a * sin + b * cos
    return out


def forward(cfg, w, ids, mode):
    T = len(ids)
    nh, nkv, dim = cfg["n_heads"], cfg["n_kv_heads"], cfg["dim"]
    hd = dim // nh
    x = w["token_embd.weight"][ids]
    pos = np.arange(T, dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["n_layers"]):
        p = f"blk.{l}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], cfg["eps"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(T, nh, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(T, nkv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, nkv, hd)
        q, k = rope(q, pos, cfg["base"], mode), rope(k, pos, cfg["base"], mode)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rmsnorm(x, w[p + "ffn_norm.weight"], cfg["eps"])
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rmsnorm(x, w["output_norm.weight"], cfg["eps"]) @ out.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--greedy", type=int, default=20)
    ap.add_argument("--rope", choices=["normal", "neox"], default="normal")
    a = ap.parse_args()
    ids = [int(t) for t in a.ids.split(",")]
    cfg, w = load(a.model)
    logits = forward(cfg, w, ids, a.rope)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = float(np.mean(lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]))
    last = logits[-1]
    top5 = [[int(i), float(last[i])] for i in np.argsort(-last)[:5]]
    seq = list(ids)
    greedy = []
    for _ in range(a.greedy):
        nxt = int(np.argmax(forward(cfg, w, seq, a.rope)[-1]))
        greedy.append(nxt)
        seq.append(nxt)
    print(json.dumps({"rope": a.rope, "tokens": len(ids), "nll": nll, "top5": top5, "greedy": greedy}))


if __name__ == "__main__":
    main()
