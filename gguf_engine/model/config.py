"""Model hyperparameters, read once from GGUF metadata into a frozen dataclass.

The supported architectures differ only in a few switches (see ``ARCHITECTURES``):
    llama  - Llama 2/3, Mistral, SmolLM2, TinyLlama; RoPE on adjacent pairs
    qwen2  - Q/K/V projection biases; NeoX RoPE
    qwen3  - per-head RMS norm on Q and K; NeoX RoPE
    gemma3 - embeddings scaled by sqrt(n_embd), post-attention/post-FFN norms,
             GELU(tanh)-gated FFN, per-head Q/K norm, sliding-window layers with
             their own RoPE base, optional final logit soft-capping; NeoX RoPE
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class UnsupportedModelError(ValueError):
    """The file's architecture (or one of its settings) is not supported."""


@dataclass(frozen=True)
class ArchTraits:
    rope_neox: bool           # NeoX halves (True) or adjacent pairs (False)
    qkv_bias: bool            # attn_q/k/v.bias tensors
    qk_norm: bool             # per-head attn_q_norm / attn_k_norm
    post_norms: bool          # post_attention_norm / post_ffw_norm
    gelu: bool                # GELU(tanh)-gated FFN instead of SiLU-gated
    embd_scale: bool          # multiply embeddings by sqrt(n_embd)
    swa_pattern: int          # every swa_pattern-th layer is global (0: no sliding window)


ARCHITECTURES: dict[str, ArchTraits] = {
    "llama": ArchTraits(False, False, False, False, False, False, 0),
    "qwen2": ArchTraits(True, True, False, False, False, False, 0),
    "qwen3": ArchTraits(True, False, True, False, False, False, 0),
    "gemma3": ArchTraits(True, False, True, True, True, True, 6),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    name: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int              # key/query head size (attention.key_length)
    head_dim_v: int            # value head size (attention.value_length)
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    rope_dim: int              # rotated dimensions per head (n_rot)
    rope_neox: bool
    rope_freq_base: float
    rope_freq_scale: float     # 1 / linear scaling factor
    rope_freq_base_swa: float  # sliding-window layers
    rope_freq_scale_swa: float
    attn_scale: float          # multiplies q.k
    sliding_window: int        # 0: none
    swa_layers: tuple[bool, ...]
    final_logit_softcap: float  # 0: none
    attn_logit_softcap: float   # 0: none
    qkv_bias: bool
    qk_norm: bool
    post_norms: bool
    gelu: bool
    embd_scale: float           # 1.0 or sqrt(n_embd)
    tied_output: bool           # no output.weight: logits through token_embd

    @property
    def n_embd_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_reader(cls, reader) -> "ModelConfig":
        return config_from_metadata(reader.metadata, set(reader.tensors), getattr(reader, "path", "<gguf>"),
                                    reader.tensors)


def _supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str = "<gguf>",
                         tensors: dict | None = None) -> ModelConfig:
    """Build the config from a metadata dict and the set of tensor names."""
    arch = md.get("general.architecture")
    if arch is None:
        raise UnsupportedModelError(f"{source}: metadata key 'general.architecture' is missing "
                                    f"(supported architectures: {_supported()})")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{source}: architecture {arch!r} is not supported "
                                    f"(supported architectures: {_supported()})")
    tr = ARCHITECTURES[arch]

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in md:
            raise UnsupportedModelError(f"{source}: required metadata key {full!r} is missing")
        return md[full]

    def opt(key: str, default: Any) -> Any:
        return md.get(f"{arch}.{key}", default)

    n_embd = int(need("embedding_length"))
    n_layer = int(need("block_count"))
    n_head = _per_layer_scalar(need("attention.head_count"), f"{arch}.attention.head_count", source)
    n_head_kv = _per_layer_scalar(opt("attention.head_count_kv", n_head), f"{arch}.attention.head_count_kv", source)
    n_ff = _per_layer_scalar(need("feed_forward_length"), f"{arch}.feed_forward_length", source)
    n_ctx_train = int(need("context_length"))
    eps = float(need("attention.layer_norm_rms_epsilon"))
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise UnsupportedModelError(f"{source}: head counts {n_head}/{n_head_kv} (query/kv) are not a valid "
                                    f"grouped-query layout")
    head_dim = int(opt("attention.key_length", n_embd // n_head))
    head_dim_v = int(opt("attention.value_length", head_dim))
    if head_dim_v != head_dim:
        raise UnsupportedModelError(f"{source}: key length {head_dim} != value length {head_dim_v} is not supported")
    rope_dim = int(opt("rope.dimension_count", head_dim))
    if rope_dim > head_dim or rope_dim % 2:
        raise UnsupportedModelError(f"{source}: rope.dimension_count {rope_dim} does not fit head size {head_dim}")

    scaling_type = str(opt("rope.scaling.type", "linear"))
    factor = float(opt("rope.scaling.factor", opt("rope.scale_linear", 0.0)) or 0.0)
    if scaling_type not in ("linear", "none"):
        raise UnsupportedModelError(f"{source}: {arch}.rope.scaling.type {scaling_type!r} is not supported "
                                    f"(supported: linear, none)")
    if scaling_type == "none":
        factor = 0.0
    freq_scale = 1.0 if factor == 0.0 else 1.0 / factor

    # vocabulary: the metadata count, else the embedding rows, else the token list
    n_vocab = md.get(f"{arch}.vocab_size")
    if n_vocab is None and tensors is not None and "token_embd.weight" in tensors:
        n_vocab = tensors["token_embd.weight"].shape[0]
    if n_vocab is None and "tokenizer.ggml.tokens" in md:
        n_vocab = len(md["tokenizer.ggml.tokens"])
    if n_vocab is None:
        raise UnsupportedModelError(f"{source}: cannot tell the vocabulary size ({arch}.vocab_size missing)")

    sliding_window = 0
    swa_layers = tuple(False for _ in range(n_layer))
    if tr.swa_pattern:
        sliding_window = int(opt("attention.sliding_window", 0) or 0)
        if sliding_window > 0:
            pattern = opt("attention.sliding_window_pattern", tr.swa_pattern)
            if hasattr(pattern, "__len__"):
                swa_layers = tuple(bool(x) for x in list(pattern)[:n_layer])
                if len(swa_layers) != n_layer:
                    raise UnsupportedModelError(f"{source}: {arch}.attention.sliding_window_pattern has "
                                                f"{len(swa_layers)} entries for {n_layer} layers")
            else:
                pattern = int(pattern)
                # every pattern-th layer (counting from 1) is global, the others slide
                swa_layers = tuple(pattern == 0 or (il % pattern) < pattern - 1 for il in range(n_layer))

    if arch == "gemma3":
        # the 27B model scales by n_embd/n_head (query_pre_attn_scalar); the others by the head size
        attn_scale = 1.0 / math.sqrt(n_embd / n_head if n_layer == 62 else head_dim)
    else:
        attn_scale = 1.0 / math.sqrt(head_dim)
    attn_scale = float(opt("attention.scale", attn_scale) or attn_scale)

    return ModelConfig(
        arch=arch,
        name=str(md.get("general.name", "")),
        n_vocab=int(n_vocab),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_ff=n_ff,
        n_ctx_train=n_ctx_train,
        norm_eps=eps,
        rope_dim=rope_dim,
        rope_neox=tr.rope_neox,
        rope_freq_base=float(opt("rope.freq_base", 10000.0)),
        rope_freq_scale=freq_scale,
        rope_freq_base_swa=float(opt("rope.freq_base_swa", 10000.0)),
        rope_freq_scale_swa=1.0,
        attn_scale=attn_scale,
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        final_logit_softcap=float(opt("final_logit_softcapping", 0.0) or 0.0),
        attn_logit_softcap=float(opt("attn_logit_softcapping", 0.0) or 0.0),
        qkv_bias=tr.qkv_bias,
        qk_norm=tr.qk_norm,
        post_norms=tr.post_norms,
        gelu=tr.gelu,
        embd_scale=math.sqrt(n_embd) if tr.embd_scale else 1.0,
        tied_output="output.weight" not in tensor_names,
    )


def _per_layer_scalar(value: Any, key: str, source: str) -> int:
    """Head/FFN counts may be per-layer arrays; this engine needs them uniform."""
    if hasattr(value, "__len__") and not isinstance(value, str):
        vals = {int(v) for v in list(value)}
        if len(vals) != 1:
            raise UnsupportedModelError(f"{source}: {key} varies across layers ({sorted(vals)}); not supported")
        return vals.pop()
    return int(value)
