"""The decoder-only transformer shared by llama, qwen2, qwen3 and gemma3.

Per layer (shapes for n tokens; d = n_embd, H/Hkv = query/kv heads, hd = head
size, ff = FFN width):

    xn  = attn_norm(x)                                   (n, d)
    q, k, v = attn_q/k/v(xn) [+ biases]                  (n, H, hd), (n, Hkv, hd) x2
    q, k = rope(q_norm(q)), rope(k_norm(k))              per-head norms: qwen3, gemma3
    cache[layer, pos0:pos0+n] = k, v
    a   = attention(q, cache)                            (n, H, hd)
    x  += [post_attention_norm](attn_output(a))          (n, d)
    xn  = ffn_norm(x)
    x  += [post_ffw_norm](ffn_down(act(ffn_gate(xn)) * ffn_up(xn)))

Everything numerical goes through the backend; this module only sequences it.
The residual add and the following norm are one backend call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ModelConfig


@dataclass
class Block:
    """One transformer layer's weights, named after their GGUF tensors (blk.N.<name>).

    Projections that read the same input are stacked by the backend (``Backend.fuse``):
    ``attn_qkv`` and ``ffn_gate_up`` are lists of weights whose concatenated outputs are
    [q | k | v] and [gate | up] (one entry when all parts share a type)."""
    attn_norm: Any                 # (d,)
    attn_qkv: list                 # attn_q (H*hd, d) | attn_k (Hkv*hd, d) | attn_v (Hkv*hd, d), fused
    attn_output: Any               # (d, H*hd)
    ffn_norm: Any                  # (d,)
    ffn_gate_up: list              # ffn_gate (ff, d) | ffn_up (ff, d), fused
    ffn_down: Any                  # (d, ff)
    attn_q_bias: Any = None        # (H, hd)      qwen2
    attn_k_bias: Any = None        # (Hkv, hd)    qwen2
    attn_v_bias: Any = None        # (Hkv, hd)    qwen2
    attn_q_norm: Any = None        # (hd,)        qwen3, gemma3
    attn_k_norm: Any = None        # (hd,)        qwen3, gemma3
    post_attention_norm: Any = None  # (d,)       gemma3
    post_ffw_norm: Any = None      # (d,)         gemma3
    # per-layer attention settings
    sliding_window: int = 0
    rope: Any = None               # (cos, sin) tables, each (n_ctx, n_rot/2)


def rope_tables(n_ctx: int, n_rot: int, head_dim: int, base: float, freq_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of theta[p, i] = p * freq_scale * base^(-2i/n_rot), computed in float64.

    Shapes (n_ctx, n_rot/2) float32.
    """
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)       # (n_rot/2,)
    theta = np.arange(n_ctx, dtype=np.float64)[:, None] * (freq_scale * inv_freq)  # (n_ctx, n_rot/2)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


class Transformer:
    """Weights + KV cache + the forward pass over a chunk of new tokens."""

    def __init__(self, config: ModelConfig, backend, token_embd, output_norm, output, blocks: list[Block],
                 n_ctx: int, cache_type: str = "f32"):
        self.config = config
        self.backend = backend
        self.token_embd = token_embd      # (n_vocab, d)
        self.output_norm = output_norm    # (d,)
        self.output = output              # (n_vocab, d); token_embd when tied
        self.blk = blocks
        self.n_ctx = n_ctx
        self.cache = backend.kv_cache(config.n_layer, n_ctx, config.n_head_kv, config.head_dim, cache_type)

        c = config
        tables = {}
        for blk, swa in zip(blocks, c.swa_layers):
            key = (c.rope_freq_base_swa, c.rope_freq_scale_swa) if swa else (c.rope_freq_base, c.rope_freq_scale)
            if key not in tables:
                cos, sin = rope_tables(n_ctx, c.rope_dim, c.head_dim, *key)
                tables[key] = (backend.upload_array(cos), backend.upload_array(sin))
            blk.rope = tables[key]
            blk.sliding_window = c.sliding_window if swa else 0
        # scratch for single-token decode steps, allocated once
        self._step_bufs = self._buffers(1)

    def _buffers(self, n: int):
        c, be = self.config, self.backend
        return (be.empty((n, c.n_embd)),                    # xn   (n, d)
                be.empty((n, c.n_head, c.head_dim)),        # attn (n, H, hd)
                be.empty((n, c.n_ff)))                      # act  (n, ff)

    # ------------------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, output: str = "last"):
        """Evaluate tokens (n,) at positions n_past.. and advance the cache.

        output: "last" -> logits (1, n_vocab) of the last token; "all" -> (n, n_vocab);
        "hidden" -> final-normed hidden states (n, d); "none" -> None.
        The caller checks that the cache has room.
        """
        c, be = self.config, self.backend
        n = int(tokens.shape[0])
        pos0 = self.cache.n_past
        H, Hkv, hd, ff = c.n_head, c.n_head_kv, c.head_dim, c.n_ff

        x = be.embed(self.token_embd, tokens)              # (n, d) residual stream
        if c.embd_scale != 1.0:
            x *= np.float32(c.embd_scale)
        # xn (n, d): normed input of the next op; attn (n, H, hd); act (n, ff)
        xn, attn, act = self._step_bufs if n == 1 else self._buffers(n)
        be.rms_norm(x, self.blk[0].attn_norm, c.norm_eps, xn)

        for il, b in enumerate(self.blk):
            qkv = be.linear_fused(b.attn_qkv, xn)                # (n, (H + 2 Hkv) hd)
            q3 = qkv[:, :H * hd].reshape(n, H, hd)               # (n, H, hd)
            k3 = qkv[:, H * hd:(H + Hkv) * hd].reshape(n, Hkv, hd)   # (n, Hkv, hd)
            v3 = qkv[:, (H + Hkv) * hd:].reshape(n, Hkv, hd)     # (n, Hkv, hd)
            k_cache, v_cache = self.cache.layer(il)              # (n_ctx, Hkv, hd) each
            be.qkv_prepare(q3, k3, v3, b.attn_q_bias, b.attn_k_bias, b.attn_v_bias,
                           b.attn_q_norm, b.attn_k_norm, c.norm_eps, b.rope, pos0, c.rope_neox,
                           k_cache, v_cache)                     # + cache rows pos0..pos0+n-1
            be.attention(q3, k_cache, v_cache, pos0, c.attn_scale, b.sliding_window, c.attn_logit_softcap, attn)
            o = be.linear(b.attn_output, attn.reshape(n, H * hd))  # (n, d)
            be.add_rms_norm(x, o, b.post_attention_norm, b.ffn_norm, c.norm_eps, xn)

            gate_up = be.linear_fused(b.ffn_gate_up, xn)         # (n, 2 ff)
            be.gated_act(gate_up[:, :ff], gate_up[:, ff:], c.gelu, act)
            down = be.linear(b.ffn_down, act)                    # (n, d)
            next_norm = self.blk[il + 1].attn_norm if il + 1 < len(self.blk) else self.output_norm
            be.add_rms_norm(x, down, b.post_ffw_norm, next_norm, c.norm_eps, xn)
        # xn = output_norm(x): final hidden states (n, d)

        self.cache.n_past = pos0 + n
        if output == "none":
            return None
        if output == "hidden":
            return xn.copy() if n == 1 else xn
        rows = xn if output == "all" else xn[n - 1:]
        logits = be.linear(self.output, rows)                    # (n or 1, n_vocab)
        if c.final_logit_softcap > 0:
            be.softcap(logits, c.final_logit_softcap)
        return logits
