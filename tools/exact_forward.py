"""Float64 forward pass on the exactly dequantized weights: the accuracy oracle for the engine's paths.

Usage: python tools/exact_forward.py MODEL.gguf [--ref REFERENCE.npz] [--tokens N] [--threads T]

Runs the first N tokens of the reference file (or of ``--ids``) through a plain NumPy float64
transformer (every weight decoded by ``kernels.dequantize``, no KV cache, no rounding anywhere),
then through the engine token by token (the decode path: integer matvec) and in one shot (the
prefill path: float32 GEMM), and prints, per position, the largest absolute logit error of each
path against float64 and between the two paths.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from gguf_engine.gguf import GGUFReader
from gguf_engine.model import ModelConfig, load_model
from kernels import dequantize


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * w over the last axis, float64."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(v: np.ndarray, pos: np.ndarray, n_rot: int, base: float, scale: float, neox: bool) -> np.ndarray:
    """RoPE on v (n, heads, hd) at positions pos (n,): NeoX pairs (i, i + n_rot/2), else (2i, 2i+1)."""
    theta = pos[:, None] * scale * base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)   # (n, n_rot/2)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = v.copy()
    if neox:
        a, b = v[..., :n_rot // 2], v[..., n_rot // 2:n_rot]
        out[..., :n_rot // 2], out[..., n_rot // 2:n_rot] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = v[..., 0:n_rot:2], v[..., 1:n_rot:2]
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = a * cos - b * sin, a * sin + b * cos
    return out


def exact_logits(path: str | Path, tokens) -> np.ndarray:
    """Logits (n, n_vocab) float64 of tokens at positions 0.. in exact arithmetic on the decoded weights."""
    with GGUFReader(path) as r:
        c = ModelConfig.from_reader(r)

        def W(name: str) -> np.ndarray:
            t = r.tensor(name)
            return dequantize(t.raw, t.type, t.shape).astype(np.float64)

        tokens = np.asarray(tokens, dtype=np.int64)
        n, H, Hkv, hd, eps = len(tokens), c.n_head, c.n_head_kv, c.head_dim, c.norm_eps
        embd = W("token_embd.weight")                                    # (n_vocab, d)
        x = embd[tokens] * c.embd_scale                                  # (n, d)
        pos = np.arange(n, dtype=np.float64)
        for il in range(c.n_layer):
            p = f"blk.{il}."
            swa = c.swa_layers[il]
            xn = _rms(x, W(p + "attn_norm.weight"), eps)
            q = (xn @ W(p + "attn_q.weight").T)
            k = (xn @ W(p + "attn_k.weight").T)
            v = (xn @ W(p + "attn_v.weight").T)
            if c.qkv_bias:
                q, k, v = q + W(p + "attn_q.bias"), k + W(p + "attn_k.bias"), v + W(p + "attn_v.bias")
            q, k, v = q.reshape(n, H, hd), k.reshape(n, Hkv, hd), v.reshape(n, Hkv, hd)
            if c.qk_norm:
                q, k = _rms(q, W(p + "attn_q_norm.weight"), eps), _rms(k, W(p + "attn_k_norm.weight"), eps)
            base, fscale = (c.rope_freq_base_swa, c.rope_freq_scale_swa) if swa else (c.rope_freq_base,
                                                                                      c.rope_freq_scale)
            q, k = _rope(q, pos, c.rope_dim, base, fscale, c.rope_neox), _rope(k, pos, c.rope_dim, base, fscale,
                                                                                c.rope_neox)
            window = c.sliding_window if swa else 0
            a = np.empty((n, H, hd))
            for t in range(n):
                lo = max(0, t - window + 1) if window > 0 else 0
                for h in range(H):
                    s = k[lo:t + 1, h // (H // Hkv)] @ q[t, h] * c.attn_scale        # (keys,)
                    if c.attn_logit_softcap > 0:
                        s = c.attn_logit_softcap * np.tanh(s / c.attn_logit_softcap)
                    e = np.exp(s - s.max())
                    a[t, h] = (e / e.sum()) @ v[lo:t + 1, h // (H // Hkv)]
            o = a.reshape(n, H * hd) @ W(p + "attn_output.weight").T
            if c.post_norms:
                o = _rms(o, W(p + "post_attention_norm.weight"), eps)
            x = x + o
            xn = _rms(x, W(p + "ffn_norm.weight"), eps)
            g, u = xn @ W(p + "ffn_gate.weight").T, xn @ W(p + "ffn_up.weight").T       # (n, ff)
            if c.gelu:
                act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
            else:
                act = g / (1 + np.exp(-g))
            down = (act * u) @ W(p + "ffn_down.weight").T
            if c.post_norms:
                down = _rms(down, W(p + "post_ffw_norm.weight"), eps)
            x = x + down
        xn = _rms(x, W("output_norm.weight"), eps)
        logits = xn @ (embd if c.tied_output else W("output.weight")).T
        if c.final_logit_softcap > 0:
            logits = c.final_logit_softcap * np.tanh(logits / c.final_logit_softcap)
        return logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python tools/exact_forward.py gemma-3-270m.gguf "
                                        "--ref gemma-3-270m-q4_k_m.reference.npz --tokens 6")
    ap.add_argument("model")
    ap.add_argument("--ref", help="reference .npz whose 'tokens' are evaluated")
    ap.add_argument("--ids", help="comma-separated token ids (instead of --ref)")
    ap.add_argument("--tokens", type=int, default=6, help="how many tokens (default 6)")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (default: all)")
    args = ap.parse_args()
    if args.ref:
        ids = np.load(args.ref)["tokens"][:args.tokens]
    elif args.ids:
        ids = np.array([int(s) for s in args.ids.split(",")])[:args.tokens]
    else:
        ap.error("give --ref or --ids")
    exact = exact_logits(args.model, ids)
    with load_model(args.model, n_ctx=max(64, len(ids)), n_threads=args.threads or None) as m:
        m.reset()
        prefill = m.eval(ids, logits_all=True).astype(np.float64)
        m.reset()
        step = np.stack([m.eval(ids[i:i + 1]) for i in range(len(ids))]).astype(np.float64)
    print(f"{'pos':>3} {'|logit|max':>10} {'prefill-exact':>13} {'step-exact':>11} {'step-prefill':>12}")
    for i in range(len(ids)):
        print(f"{i:>3} {np.abs(exact[i]).max():>10.3f} {np.abs(prefill[i] - exact[i]).max():>13.5f} "
              f"{np.abs(step[i] - exact[i]).max():>11.5f} {np.abs(step[i] - prefill[i]).max():>12.5f}")


if __name__ == "__main__":
    main()
