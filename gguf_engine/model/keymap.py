"""The GGUF tensors a model consumes: names, shapes, and the ``Block`` fields they fill.

The loader checks the whole list against the file before it uploads anything: a missing
tensor, a wrong shape, or a tensor nobody consumes (an unexpected ``rope_freqs``, expert
tensors, attention sinks, ...) is refused up front, never skipped, because it would change
the model's math.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ARCHITECTURES, ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: ``field`` names the Block (or model) attribute it fills; specs of one
    field with kind "weight" are fused in order (Q|K|V, gate|up)."""
    field: str
    name: str
    shape: tuple[int, ...]
    kind: str = "weight"                  # "weight" (matmul operand) | "vector" (float32 array)
    reshape: tuple[int, ...] | None = None
    required: bool = True


def model_tensors(c: ModelConfig) -> list[TensorSpec]:
    """The tensors outside the layers."""
    d = c.n_embd
    specs = [TensorSpec("token_embd", "token_embd.weight", (c.n_vocab, d)),
             TensorSpec("output_norm", "output_norm.weight", (d,), "vector")]
    if not c.tied_output:
        specs.append(TensorSpec("output", "output.weight", (c.n_vocab, d)))
    if c.rope_freqs:
        specs.append(TensorSpec("rope_freqs", "rope_freqs.weight", (c.rope_dim // 2,), "vector"))
    return specs


def layer_tensors(c: ModelConfig, il: int) -> list[TensorSpec]:
    """The tensors of layer il (blk.il.*)."""
    d, H, Hkv, hd, ff = c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff
    p = f"blk.{il}."
    W, V = "weight", "vector"
    specs = [
        TensorSpec("attn_norm", p + "attn_norm.weight", (d,), V),
        TensorSpec("attn_qkv", p + "attn_q.weight", (H * hd, d)),
        TensorSpec("attn_qkv", p + "attn_k.weight", (Hkv * hd, d)),
        TensorSpec("attn_qkv", p + "attn_v.weight", (Hkv * hd, d)),
        TensorSpec("attn_output", p + "attn_output.weight", (d, H * hd)),
        TensorSpec("ffn_norm", p + "ffn_norm.weight", (d,), V),
        TensorSpec("ffn_gate_up", p + "ffn_gate.weight", (ff, d)),
        TensorSpec("ffn_gate_up", p + "ffn_up.weight", (ff, d)),
        TensorSpec("ffn_down", p + "ffn_down.weight", (d, ff)),
    ]
    if c.qkv_bias:
        specs += [TensorSpec("attn_q_bias", p + "attn_q.bias", (H * hd,), V, (H, hd)),
                  TensorSpec("attn_k_bias", p + "attn_k.bias", (Hkv * hd,), V, (Hkv, hd)),
                  TensorSpec("attn_v_bias", p + "attn_v.bias", (Hkv * hd,), V, (Hkv, hd))]
    if c.qk_norm:
        specs += [TensorSpec("attn_q_norm", p + "attn_q_norm.weight", (hd,), V),
                  TensorSpec("attn_k_norm", p + "attn_k_norm.weight", (hd,), V)]
    if c.post_norms:
        specs += [TensorSpec("post_attention_norm", p + "post_attention_norm.weight", (d,), V),
                  TensorSpec("post_ffw_norm", p + "post_ffw_norm.weight", (d,), V)]
    return specs


def unexpected_reason(c: ModelConfig, name: str) -> str:
    """Why a tensor no spec consumes is refused (what it would change)."""
    base = name.split(".", 2)[-1] if name.startswith("blk.") else name
    if base.startswith("rope_freqs") or base.startswith("rope_factors"):
        if ARCHITECTURES[c.arch].rope_freqs:
            return "RoPE frequency factors of a kind this architecture does not take"
        return f"RoPE frequency factors, which {c.arch} does not use in llama.cpp"
    if "_exps" in base or "_shexp" in base or base.startswith("ffn_gate_inp"):
        return "mixture-of-experts weights (not supported)"
    if "sinks" in base:
        return "attention sinks (not supported)"
    if base.endswith(".bias"):
        return f"a bias {c.arch} does not have here (not supported)"
    return "not used by this architecture"
