"""Each supported architecture, declared in one place: its attention variant, its FFN
component, and the few model-wide traits.  The tensor names (keymap) come from the
components; the config reads the metadata every architecture shares (``config``).

Adding a dense architecture (or one with a mixture-of-experts FFN of the existing switches) is one entry here (see README, "Adding an architecture").
"""
from __future__ import annotations

from dataclasses import dataclass

from .components import Attention, DenseFFN, MoEFFN


@dataclass(frozen=True)
class Architecture:
    """One architecture: ``general.architecture`` = name.

    embd_scale: the embeddings are multiplied by sqrt(n_embd).  final_softcap: the final
    logit soft-cap when the file gives none (0: none).  scale_by_embd_layers: for a model of
    this many layers the attention scale is 1/sqrt(n_embd/n_head) instead of 1/sqrt(head
    size) (Gemma's 27B models)."""
    name: str
    about: str
    attention: Attention
    ffn: DenseFFN | MoEFFN
    embd_scale: bool = False
    final_softcap: float = 0.0
    scale_by_embd_layers: int = 0


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", "Llama 2/3, Mistral, SmolLM2, TinyLlama; RoPE on adjacent pairs, Llama 3 rope_freqs",
                 Attention(rope_factors="freqs"), DenseFFN()),
    Architecture("qwen2", "Q/K/V projection biases; NeoX RoPE",
                 Attention(rope_neox=True, qkv_bias=True), DenseFFN()),
    Architecture("qwen3", "per-head RMS norm on Q and K; NeoX RoPE",
                 Attention(rope_neox=True, qk_norm=True), DenseFFN()),
    Architecture("gemma3", "scaled embeddings, post-norms, GELU FFN, Q/K norms, 5 of 6 layers sliding",
                 Attention(rope_neox=True, qk_norm=True, post_norm=True, swa_pattern=6),
                 DenseFFN(gelu=True, post_norm=True), embd_scale=True, scale_by_embd_layers=62),
    # llama.cpp disables Phi-3's sliding window (the files' values are unreliable), so it is read and not applied
    Architecture("phi3", "fused QKV, gate|up fused in ffn_up, LongRoPE factor sets; NeoX RoPE",
                 Attention(rope_neox=True, fused_qkv=True, rope_factors="longrope"), DenseFFN(fused_gate_up=True)),
    # llama.cpp renormalises qwen3moe's top-k weights whatever the file says
    Architecture("qwen3moe", "qwen3 attention; mixture of experts, softmax gating, top-k weights renormalised",
                 Attention(rope_neox=True, qk_norm=True), MoEFFN(gating="softmax", norm_weights=True)),
    Architecture("gpt-oss", "Q/K/V and output biases, attention sinks, every other layer sliding; mixture of experts "
                            "with biases, top-k softmax gating, clamped SwiGLU; NeoX RoPE",
                 Attention(rope_neox=True, qkv_bias=True, out_bias=True, sinks=True, swa_pattern=2, swa_window=128,
                           swa_freq_base=None),
                 MoEFFN(gating="softmax_weight", norm_weights=False, oai_swiglu=True, biases=True,
                        norm="post_attention_norm")),
    Architecture("gemma2", "scaled embeddings, post-norms, GELU FFN, every other layer sliding, soft-caps",
                 Attention(rope_neox=True, post_norm=True, swa_pattern=2, swa_window=4096, swa_freq_base=None,
                           softcap=50.0),
                 DenseFFN(gelu=True, post_norm=True), embd_scale=True, final_softcap=30.0, scale_by_embd_layers=46),
)}
