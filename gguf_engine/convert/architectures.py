"""What each Hugging Face architecture becomes in GGUF: its llama.cpp architecture name, tensor names,
weight transforms and hyperparameter keys.  Adding an architecture is one ``ArchSpec`` entry.

Facts taken from llama.cpp's converter (its behaviour, re-expressed):
- llama (and Mistral) store Q and K with rotary pairs interleaved per head: the HF checkpoints keep
  the two halves apart, so Q/K rows are permuted back (``permute_qk``);
- Gemma's RMS norms multiply by ``1 + weight``: the converter stores ``weight + 1`` (``norm_shift``);
- a checkpoint without ``lm_head.weight`` has tied embeddings: no ``output.weight`` is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..gguf.constants import GGUFValueType as V
from .safetensors import ConvertError

__all__ = ["ArchSpec", "ARCHITECTURES", "HParams", "arch_for", "common_params", "llama3_rope_factors", "longrope_factors",
           "rope_params"]

# per-layer tensors shared by every architecture here: HF module path -> GGUF name
_LAYER_COMMON = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
# tensors a checkpoint may carry that no GGUF file stores
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


class HParams(dict):
    """config.json (text_config merged to the top level), with llama.cpp's first-of-several lookups."""

    def find(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in self:
                return self[k]
        return default

    def need(self, *keys: str) -> Any:
        v = self.find(*keys)
        if v is None:
            raise ConvertError(f"config.json: none of {', '.join(keys)} is set")
        return v


def rope_params(hp: HParams) -> dict:
    """RoPE settings in transformers 5's shape (``rope_parameters``), built from either spelling."""
    rp = dict(hp.get("rope_parameters") or hp.get("rope_scaling") or {})
    if "full_attention" not in rp and "sliding_attention" not in rp:
        local = hp.find("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                        "rope_local_base_freq")
        if local is not None:
            rp["sliding_attention"] = {"rope_theta": local}
        theta = hp.find("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                        "rotary_emb_base")
        if "rope_theta" not in rp and theta is not None:
            rp["rope_theta"] = theta
        if "rope_type" not in rp and rp.get("type") is not None:
            rp["rope_type"] = rp["type"]
        orig = hp.get("original_max_position_embeddings")
        if "original_max_position_embeddings" not in rp and orig is not None:
            rp["original_max_position_embeddings"] = orig
    return rp


Add = Callable[[str, Any, V], None]


def common_params(hp: HParams, add: Add) -> None:
    """The keys llama.cpp writes for every text model (``{arch}.`` is prefixed by the caller)."""
    add("block_count", hp.need("num_hidden_layers", "n_layers", "n_layer", "num_layers"), V.UINT32)
    for key, names in (("context_length", ("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                           "max_sequence_length", "model_max_length")),
                       ("embedding_length", ("hidden_size", "n_embd", "dim")),
                       ("feed_forward_length", ("intermediate_size", "n_inner", "hidden_dim")),
                       ("attention.head_count", ("num_attention_heads", "n_head", "n_heads")),
                       ("attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"))):
        v = hp.find(*names)
        if v is not None:
            add(key, v, V.UINT32)
    rp = rope_params(hp)
    full = rp.get("full_attention", rp)
    rtype, factor = full.get("rope_type"), full.get("factor")
    if rtype == "linear" and factor is not None:
        add("rope.scaling.type", "linear", V.STRING)
        add("rope.scaling.factor", factor, V.FLOAT32)
    elif rtype == "yarn" and factor is not None:
        add("rope.scaling.type", "yarn", V.STRING)
        add("rope.scaling.factor", factor, V.FLOAT32)
        add("rope.scaling.original_context_length", full["original_max_position_embeddings"], V.UINT32)
    elif rtype not in (None, "default", "llama3", "dynamic"):
        raise ConvertError(f"config.json: RoPE type {rtype!r} is not supported")
    if full.get("rope_theta") is not None:
        add("rope.freq_base", full["rope_theta"], V.FLOAT32)
    swa = rp.get("sliding_attention", {}).get("rope_theta")
    if swa is not None:
        add("rope.freq_base_swa", swa, V.FLOAT32)
    eps = hp.find("rms_norm_eps", "norm_eps")
    if eps is not None:
        add("attention.layer_norm_rms_epsilon", eps, V.FLOAT32)
    if hp.get("head_dim") is not None:
        add("attention.key_length", hp["head_dim"], V.UINT32)
        add("attention.value_length", hp["head_dim"], V.UINT32)


def _llama_params(hp: HParams, add: Add) -> None:
    add("vocab_size", hp.need("vocab_size"), V.UINT32)
    rope_dim = hp.get("head_dim") or hp.need("hidden_size") // hp.need("num_attention_heads")
    add("rope.dimension_count", rope_dim, V.UINT32)


def _gemma3_params(hp: HParams, add: Add) -> None:
    add("context_length", hp.get("max_position_embeddings", 131072), V.UINT32)
    add("attention.head_count", hp.get("num_attention_heads", 8), V.UINT32)
    add("attention.layer_norm_rms_epsilon", hp.get("rms_norm_eps", 1e-6), V.FLOAT32)
    add("attention.key_length", hp.get("head_dim", 256), V.UINT32)
    add("attention.value_length", hp.get("head_dim", 256), V.UINT32)
    rp = rope_params(hp)
    add("rope.freq_base", rp.get("full_attention", rp).get("rope_theta", 1_000_000.0), V.FLOAT32)
    if hp.get("attn_logit_softcapping") is not None:
        raise ConvertError("config.json: attn_logit_softcapping is set, which Gemma 3 does not have")
    if hp.get("final_logit_softcapping"):
        add("final_logit_softcapping", hp["final_logit_softcapping"], V.FLOAT32)
    if hp.get("sliding_window_pattern") != 1:
        add("attention.sliding_window", hp.need("sliding_window"), V.UINT32)
    add("attention.head_count_kv", hp.get("num_key_value_heads", 4), V.UINT32)


def llama3_rope_factors(hp: HParams) -> "dict[str, list[float]]":
    """Llama 3 RoPE scaling becomes a ``rope_freqs`` tensor of per-frequency divisors (as llama.cpp writes
    it; the engine itself applies only linear scaling)."""
    rp = rope_params(hp)
    full = rp.get("full_attention", rp)
    if str(full.get("rope_type", "")).lower() != "llama3":
        return {}
    import numpy as np
    base = full.get("rope_theta", 10000.0)
    dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))   # float32, as computed there
    factor = full.get("factor", 8.0)
    lo, hi = full.get("low_freq_factor", 1.0), full.get("high_freq_factor", 4.0)
    old_ctx = full.get("original_max_position_embeddings", 8192)
    lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < hi_wavelen:
            out.append(1.0)
        elif wavelen > lo_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return {"rope_freqs.weight": out}


def _phi3_rope(hp: HParams) -> tuple[dict, int, int]:
    """(RoPE settings, original context, rotary dimensions) of a Phi-3 config."""
    rp = rope_params(hp)
    orig = rp.get("original_max_position_embeddings")
    if orig is None:
        raise ConvertError("config.json: original_max_position_embeddings is not set (Phi-3 needs it)")
    n_embd, n_head = hp.need("hidden_size", "n_embd"), hp.need("num_attention_heads", "n_head")
    return rp, orig, int(rp.get("partial_rotary_factor", 1.0) * n_embd) // n_head


def _phi3_attn_factor(hp: HParams) -> "float | None":
    """LongRoPE's magnitude correction sqrt(1 + ln(s) / ln(original context)) for s = context / original
    context (YaRN's 0.1 ln(s) + 1 for rope type yarn); None without long factors."""
    rp, orig, _ = _phi3_rope(hp)
    if not rp.get("long_factor"):
        return None
    scale = hp.need("n_positions", "max_position_embeddings") / orig
    kind = str(rp.get("rope_type", "")).lower()
    if kind in ("su", "longrope"):
        return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    if kind == "yarn":
        return 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    raise ConvertError(f"config.json: rope_scaling type {kind or '(none)'!r} with long_factor is not supported "
                       "(su, longrope or yarn)")


def longrope_factors(hp: HParams) -> "dict[str, list[float]]":
    """Phi-3's LongRoPE frequency divisors: ``rope_factors_long`` (used past the original context) and
    ``rope_factors_short``, one per rotary pair, as llama.cpp writes them."""
    rp, _, rope_dims = _phi3_rope(hp)
    if _phi3_attn_factor(hp) is None:
        return {}
    long, short = rp.get("long_factor"), rp.get("short_factor")
    if short is None or len(long) != len(short) or len(long) != rope_dims // 2 or rope_dims % 2:
        raise ConvertError(f"config.json: rope_scaling long_factor and short_factor must both have "
                           f"{rope_dims // 2} values (got {len(long)} and {len(short or [])})")
    return {"rope_factors_long.weight": list(long), "rope_factors_short.weight": list(short)}


def _phi3_params(hp: HParams, add: Add) -> None:
    """Phi-3 writes its own key set (no generic ones): original context, rotary dims, sliding window
    (0 when absent, which marks Phi-4) and, with LongRoPE, the attention factor."""
    rp, orig, rope_dims = _phi3_rope(hp)
    add("context_length", hp.need("n_positions", "max_position_embeddings"), V.UINT32)
    add("rope.scaling.original_context_length", orig, V.UINT32)
    add("embedding_length", hp.need("hidden_size", "n_embd"), V.UINT32)
    add("feed_forward_length", hp.need("intermediate_size"), V.UINT32)
    add("block_count", hp.need("num_hidden_layers", "n_layers", "n_layer", "num_layers"), V.UINT32)
    add("attention.head_count", hp.need("num_attention_heads", "n_head"), V.UINT32)
    add("attention.head_count_kv", hp.need("num_key_value_heads", "n_head_kv"), V.UINT32)
    add("attention.layer_norm_rms_epsilon", hp.need("rms_norm_eps"), V.FLOAT32)
    add("rope.dimension_count", rope_dims, V.UINT32)
    add("rope.freq_base", rp.get("full_attention", rp).get("rope_theta", 10000.0), V.FLOAT32)
    add("attention.sliding_window", hp.get("sliding_window") or 0, V.UINT32)
    attn_factor = _phi3_attn_factor(hp)
    if attn_factor is not None:
        add("rope.scaling.attn_factor", attn_factor, V.FLOAT32)


def _gemma2_params(hp: HParams, add: Add) -> None:
    """Gemma 2 writes its own key set (no generic ones, no RoPE base): head size, both soft-caps and the
    sliding window."""
    for key, name in (("context_length", "max_position_embeddings"), ("embedding_length", "hidden_size"),
                      ("block_count", "num_hidden_layers"), ("feed_forward_length", "intermediate_size"),
                      ("attention.head_count", "num_attention_heads")):
        add(key, hp.need(name), V.UINT32)
    add("attention.head_count_kv", hp.find("num_key_value_heads", "num_attention_heads"), V.UINT32)
    add("attention.layer_norm_rms_epsilon", hp.need("rms_norm_eps"), V.FLOAT32)
    add("attention.key_length", hp.need("head_dim"), V.UINT32)
    add("attention.value_length", hp.need("head_dim"), V.UINT32)
    add("attn_logit_softcapping", hp.need("attn_logit_softcapping"), V.FLOAT32)
    add("final_logit_softcapping", hp.need("final_logit_softcapping"), V.FLOAT32)
    add("attention.sliding_window", hp.need("sliding_window"), V.UINT32)


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str
    permute_qk: bool = False                  # undo HF's rotary-half layout of Q/K (llama)
    norm_shift: bool = False                  # store norm weights + 1 (Gemma)
    layer_names: dict = field(default_factory=dict)   # per-arch additions/overrides of _LAYER_COMMON
    params: Callable[[HParams, Add], None] | None = None
    vocab: str = "auto"                       # "auto": tokenizer.model -> SentencePiece, else BPE; "phi3"
    trim_embeddings: bool = False             # drop embedding rows past the tokenizer's ids (Gemma 3)
    common: bool = True                       # write common_params (False: ``params`` writes every key)
    extra_tensors: Callable[[HParams], dict] | None = None   # F32 vectors written first: name -> values
    skipped: tuple[str, ...] = ()             # HF tensors llama.cpp drops for this architecture
    no_space_prefix: bool = False             # SentencePiece vocabularies get add_space_prefix = false

    def tensor_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor, or None when unknown."""
        base, dot, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            return None
        if base in _GLOBAL:
            return f"{_GLOBAL[base]}.{suffix}"
        parts = base.split(".", 3)
        if len(parts) == 4 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdecimal():
            names = {**_LAYER_COMMON, **self.layer_names}
            if parts[3] in names:
                return f"blk.{int(parts[2])}.{names[parts[3]]}.{suffix}"
        return None


_GEMMA3_LAYERS = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                  "post_feedforward_layernorm": "post_ffw_norm"}

ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", permute_qk=True, params=_llama_params, extra_tensors=llama3_rope_factors),
    "MistralForCausalLM": ArchSpec("llama", permute_qk=True, params=_llama_params, extra_tensors=llama3_rope_factors),
    "Qwen2ForCausalLM": ArchSpec("qwen2"),
    "Qwen3ForCausalLM": ArchSpec("qwen3"),
    "Gemma3ForCausalLM": ArchSpec("gemma3", norm_shift=True, layer_names=_GEMMA3_LAYERS, params=_gemma3_params,
                                  trim_embeddings=True, no_space_prefix=True),
    # fused Q|K|V and gate|up stay fused (attn_qkv, ffn_up); the vocabulary is BPE for a GPT2Tokenizer
    "Phi3ForCausalLM": ArchSpec("phi3", layer_names={"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"},
                                params=_phi3_params, common=False, extra_tensors=longrope_factors, vocab="phi3"),
    # the output is always the tied embedding: an lm_head in the checkpoint is dropped
    "Gemma2ForCausalLM": ArchSpec("gemma2", norm_shift=True, layer_names=_GEMMA3_LAYERS, params=_gemma2_params,
                                  common=False, skipped=("lm_head.weight",), no_space_prefix=True),
}


def arch_for(config: dict, source: str) -> tuple[str, ArchSpec]:
    archs = config.get("architectures") or []
    if not archs:
        raise ConvertError(f"{source}: no 'architectures' entry")
    name = archs[0]
    if name not in ARCHITECTURES:
        raise ConvertError(f"{source}: architecture {name!r} is not supported "
                           f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    return name, ARCHITECTURES[name]
