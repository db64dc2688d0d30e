"""The parts of a layer that vary between architectures: each declares the GGUF tensors it
consumes (its keymap) and, for the FFN, runs its part of the forward pass.  The transformer
takes the FFN as a component; an architecture (``architectures``) picks and configures them.

Shapes: n tokens, d = n_embd, H/Hkv query/kv heads, hd head size, ff FFN width.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..backends.base import ExpertFFN, Routing

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: ``field`` names the Block (or model) attribute it fills; specs of one
    fused field (``FUSED_FIELDS``) are fused in order (Q|K|V, gate|up)."""
    field: str
    name: str
    shape: tuple[int, ...]
    kind: str = "weight"                  # "weight" (matmul operand) | "vector" (float32 array)
                                          # | "experts" (a 3-D expert tensor, n_expert matmul operands)
    reshape: tuple[int, ...] | None = None
    required: bool = True


FUSED_FIELDS = ("attn_qkv", "ffn_gate_up", "ffn_gate_up_exps")   # Block fields holding a fused list of weights


@dataclass(frozen=True)
class Attention:
    """The attention variant: projections, RoPE, norms and masking.

    rope_factors: "" (none), "freqs" (an optional rope_freqs tensor divides the frequencies,
    Llama 3), or "longrope" (rope_factors_long/short, chosen by the context, Phi-3).
    Sliding window: every swa_pattern-th layer is global, the others see swa_window positions
    (the default when the file gives none) and rotate with swa_freq_base (None: the global
    base).  softcap: the attention logit soft-cap applied when the file gives none (0: none).
    sinks (gpt-oss): attn_sinks (H,) adds exp(sink_h) to head h's softmax denominator, a share of
    the attention that goes to no value."""
    rope_neox: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norm: bool = False
    fused_qkv: bool = False           # attn_qkv holds Q|K|V (separate attn_q/k/v accepted too)
    rope_factors: str = ""
    swa_pattern: int = 0
    swa_window: int = 0
    swa_freq_base: float | None = 10000.0
    softcap: float = 0.0
    out_bias: bool = False            # attn_output.bias
    sinks: bool = False               # attn_sinks: one logit per head in every softmax's denominator

    def tensors(self, c: "ModelConfig", p: str, present) -> list[TensorSpec]:
        d, H, Hkv, hd = c.n_embd, c.n_head, c.n_head_kv, c.head_dim
        V = "vector"
        if self.fused_qkv and p + "attn_qkv.weight" in present:
            qkv = [TensorSpec("attn_qkv", p + "attn_qkv.weight", ((H + 2 * Hkv) * hd, d))]
        else:
            qkv = [TensorSpec("attn_qkv", p + "attn_q.weight", (H * hd, d)),
                   TensorSpec("attn_qkv", p + "attn_k.weight", (Hkv * hd, d)),
                   TensorSpec("attn_qkv", p + "attn_v.weight", (Hkv * hd, d))]
        specs = [TensorSpec("attn_norm", p + "attn_norm.weight", (d,), V), *qkv,
                 TensorSpec("attn_output", p + "attn_output.weight", (d, H * hd))]
        if self.qkv_bias:
            specs += [TensorSpec("attn_q_bias", p + "attn_q.bias", (H * hd,), V, (H, hd)),
                      TensorSpec("attn_k_bias", p + "attn_k.bias", (Hkv * hd,), V, (Hkv, hd)),
                      TensorSpec("attn_v_bias", p + "attn_v.bias", (Hkv * hd,), V, (Hkv, hd))]
        if self.qk_norm:
            specs += [TensorSpec("attn_q_norm", p + "attn_q_norm.weight", (hd,), V),
                      TensorSpec("attn_k_norm", p + "attn_k_norm.weight", (hd,), V)]
        if self.post_norm:
            specs.append(TensorSpec("post_attention_norm", p + "post_attention_norm.weight", (d,), V))
        if self.out_bias:
            specs.append(TensorSpec("attn_output_b", p + "attn_output.bias", (d,), V))
        if self.sinks:
            specs.append(TensorSpec("attn_sinks", p + "attn_sinks.weight", (H,), V))
        return specs


@dataclass(frozen=True)
class DenseFFN:
    """The dense gated FFN: ffn_down(act(gate(x)) * up(x)), act SiLU or GELU(tanh).
    fused_gate_up: one ffn_up tensor holds [gate | up] and there is no ffn_gate (Phi-3)."""
    moe: ClassVar[bool] = False
    gelu: bool = False
    fused_gate_up: bool = False
    post_norm: bool = False           # post_ffw_norm on the output

    def for_config(self, c: "ModelConfig") -> "DenseFFN":
        """The component with the model's sizes bound (the dense FFN needs none)."""
        return self

    def tensors(self, c: "ModelConfig", p: str, present) -> list[TensorSpec]:
        d, ff = c.n_embd, c.n_ff
        if self.fused_gate_up:
            gate_up = [TensorSpec("ffn_gate_up", p + "ffn_up.weight", (2 * ff, d))]
        else:
            gate_up = [TensorSpec("ffn_gate_up", p + "ffn_gate.weight", (ff, d)),
                       TensorSpec("ffn_gate_up", p + "ffn_up.weight", (ff, d))]
        specs = [TensorSpec("ffn_norm", p + "ffn_norm.weight", (d,), "vector"), *gate_up,
                 TensorSpec("ffn_down", p + "ffn_down.weight", (d, ff))]
        if self.post_norm:
            specs.append(TensorSpec("post_ffw_norm", p + "post_ffw_norm.weight", (d,), "vector"))
        return specs

    def scratch(self, c: "ModelConfig") -> tuple[int, int]:
        """Floats per token of its two buffers: the projections' output and the activation."""
        return 2 * c.n_ff, c.n_ff

    def __call__(self, be, b, xn, st) -> Any:
        """xn (n, d) -> the FFN output (n, d), written to st.proj where the backend can."""
        ff = st.act.shape[1]
        gate_up = be.linear_fused(b.ffn_gate_up, xn, out=st.gate_up, decode=st.decode)   # (n, 2 ff)
        be.gated_act(gate_up[:, :ff], gate_up[:, ff:], self.gelu, st.act)
        return be.linear(b.ffn_down, st.act, out=st.proj, decode=st.decode)              # (n, d)


@dataclass(frozen=True)
class MoEFFN:
    """A mixture-of-experts FFN, as llama.cpp's build_moe_ffn computes it:

        logits = ffn_gate_inp(xn) [+ bias]                       (n, E)
        ids, w = the top k experts and their weights (gating)    (n, k)
        y_j    = ffn_down_exps[ids_j](act(gate_j) * up_j) [+ biases per expert]
        out    = sum_j w_j * y_j                                 (n, d)

    gating: "softmax" (softmax over the E experts, weights taken at the top k) or "softmax_weight"
    (top k of the logits, weights = softmax over those k).  norm_weights: the k weights divided
    by their sum.  oai_swiglu: gpt-oss's clamped SwiGLU instead of SiLU(gate) * up.  biases: the
    router and the three expert tensors have biases.  norm: the tensor of the norm before the FFN.
    k (expert_used_count), E and the expert FFN width come from the file (``for_config``)."""
    moe: ClassVar[bool] = True
    gating: str = "softmax"
    norm_weights: bool = True
    oai_swiglu: bool = False
    biases: bool = False
    norm: str = "ffn_norm"
    routing: Any = None               # backends.base.Routing, bound by for_config

    def for_config(self, c: "ModelConfig") -> "MoEFFN":
        """The component with the file's top-k bound."""
        return replace(self, routing=Routing(c.n_expert_used, self.gating, self.norm_weights, 0.0, self.oai_swiglu))

    def tensors(self, c: "ModelConfig", p: str, present) -> list[TensorSpec]:
        d, E, ff = c.n_embd, c.n_expert, c.n_ff_exp
        V, X = "vector", "experts"
        specs = [TensorSpec("ffn_norm", p + self.norm + ".weight", (d,), V),
                 TensorSpec("ffn_gate_inp", p + "ffn_gate_inp.weight", (E, d)),
                 TensorSpec("ffn_gate_up_exps", p + "ffn_gate_exps.weight", (E, ff, d), X),
                 TensorSpec("ffn_gate_up_exps", p + "ffn_up_exps.weight", (E, ff, d), X),
                 TensorSpec("ffn_down_exps", p + "ffn_down_exps.weight", (E, d, ff), X)]
        if self.biases:
            specs += [TensorSpec("ffn_gate_inp_b", p + "ffn_gate_inp.bias", (E,), V),
                      TensorSpec("ffn_gate_exps_b", p + "ffn_gate_exps.bias", (E, ff), V),
                      TensorSpec("ffn_up_exps_b", p + "ffn_up_exps.bias", (E, ff), V),
                      TensorSpec("ffn_down_exps_b", p + "ffn_down_exps.bias", (E, d), V)]
        return specs

    def scratch(self, c: "ModelConfig") -> tuple[int, int]:
        """The run state's FFN buffers go unused: the backend's expert operation keeps its own."""
        return 0, 0

    def __call__(self, be, b, xn, st) -> Any:
        """xn (n, d) -> the FFN output (n, d), written to st.proj where the backend can."""
        logits = be.linear(b.ffn_gate_inp, xn, decode=st.decode)          # (n, E)
        experts = ExpertFFN(b.ffn_gate_up_exps, b.ffn_down_exps, b.ffn_gate_inp_b,
                            b.ffn_gate_exps_b, b.ffn_up_exps_b, b.ffn_down_exps_b)
        return be.moe(xn, logits, experts, self.routing, out=st.proj, decode=st.decode)   # (n, d)
