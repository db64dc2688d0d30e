"""The GGUF tensors a model consumes (its keymap), assembled from the architecture's
components, and why any other tensor is refused.

The loader checks the whole list against the file before it uploads anything: a missing
tensor, a wrong shape, or a tensor nobody consumes (an unexpected ``rope_freqs``, expert
tensors, attention sinks, ...) is refused up front, never skipped, because it would change
the model's math.
"""
from __future__ import annotations

from .components import TensorSpec
from .config import ModelConfig

__all__ = ["TensorSpec", "model_tensors", "layer_tensors", "rope_factor_tensor", "unexpected_reason"]


def model_tensors(c: ModelConfig, present=()) -> list[TensorSpec]:
    """The tensors outside the layers."""
    d = c.n_embd
    specs = [TensorSpec("token_embd", "token_embd.weight", (c.n_vocab, d)),
             TensorSpec("output_norm", "output_norm.weight", (d,), "vector")]
    if not c.tied_output:
        specs.append(TensorSpec("output", "output.weight", (c.n_vocab, d)))
    if c.rope_freqs:
        specs.append(TensorSpec("rope_freqs", "rope_freqs.weight", (c.rope_dim // 2,), "vector"))
    if c.architecture.attention.rope_factors == "longrope":
        specs += [TensorSpec("rope_long", "rope_factors_long.weight", (c.rope_dim // 2,), "vector", required=False),
                  TensorSpec("rope_short", "rope_factors_short.weight", (c.rope_dim // 2,), "vector", required=False)]
    return specs


def rope_factor_tensor(c: ModelConfig, n_ctx: int, present) -> str | None:
    """The tensor whose values divide the RoPE frequencies, chosen as llama.cpp chooses it:
    rope_freqs when the model has it; else, for LongRoPE, the long factors when the context
    (rounded up to a multiple of 256, as llama.cpp pads it) exceeds the original training
    context, the short ones otherwise; None when the chosen set is absent."""
    if c.rope_freqs:
        return "rope_freqs.weight"
    if c.architecture.attention.rope_factors != "longrope":
        return None
    padded = -(-n_ctx // 256) * 256
    name = "rope_factors_long.weight" if padded > c.rope_scaling.n_ctx_orig else "rope_factors_short.weight"
    return name if name in present else None


def layer_tensors(c: ModelConfig, il: int, present=()) -> list[TensorSpec]:
    """The tensors of layer il (blk.il.*): the attention's, then the FFN's.  present: the
    file's tensor names (a variant may accept either of two layouts)."""
    p = f"blk.{il}."
    a = c.architecture
    return a.attention.tensors(c, p, present) + a.ffn.tensors(c, p, present)


def unexpected_reason(c: ModelConfig, name: str) -> str:
    """Why a tensor no spec consumes is refused (what it would change)."""
    base = name.split(".", 2)[-1] if name.startswith("blk.") else name
    if base.startswith("rope_freqs") or base.startswith("rope_factors"):
        if c.architecture.attention.rope_factors:
            return "RoPE frequency factors of a kind this architecture does not take"
        return f"RoPE frequency factors, which {c.arch} does not use in llama.cpp"
    if "_exps" in base or "_shexp" in base or base.startswith("ffn_gate_inp"):
        if c.architecture.ffn.moe:
            return f"expert weights of a kind {c.arch} does not have here (not supported)"
        return "mixture-of-experts weights (not supported)"
    if "sinks" in base:
        return "attention sinks (not supported)"
    if base.endswith(".bias"):
        return f"a bias {c.arch} does not have here (not supported)"
    return "not used by this architecture"
