"""Model hyperparameters, read once from GGUF metadata into a frozen dataclass.

The architectures (``architectures.ARCHITECTURES``) declare what differs between them; this
module reads the metadata they share.  Every value read is type- and range-checked
(``metadata.MetadataKeys``), and the sizes that decide allocations (layers, embedding width,
vocabulary) are checked against the tensors present before anything is built.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .architectures import ARCHITECTURES, Architecture
from .errors import UnsupportedModelError
from ..gguf.values import describe
from .metadata import INT_MAX, MetadataError, MetadataKeys

__all__ = ["Architecture", "ARCHITECTURES", "ModelConfig", "RopeScaling", "UnsupportedModelError",
           "config_from_metadata", "layer_indices"]


ROPE_SCALING_TYPES = ("none", "linear", "yarn")

# Bounds on the sizes read from metadata (far above any released model, far below what
# would let a hostile file ask for an absurd allocation before its tensors are checked).
MAX_LAYERS = 4096
MAX_EMBD = 1 << 20
MAX_HEADS = 1 << 14
MAX_HEAD_DIM = 1 << 16
MAX_FF = 1 << 24

# {arch}.<key> suffixes the config reads, and keys it knows to leave the math unchanged
# (some only at the value given).  Any other {arch}.* key is refused: it may change the math.
_READ_KEYS = {
    "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
    "feed_forward_length", "context_length", "attention.layer_norm_rms_epsilon", "attention.key_length",
    "attention.value_length", "rope.dimension_count", "rope.freq_base", "rope.freq_base_swa",
    "rope.scaling.type", "rope.scaling.factor", "rope.scale_linear", "rope.scaling.original_context_length",
    "rope.scaling.attn_factor", "rope.scaling.yarn_ext_factor", "rope.scaling.yarn_attn_factor",
    "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow", "vocab_size", "attention.sliding_window",
    "attention.sliding_window_pattern", "attention.scale", "final_logit_softcapping", "attn_logit_softcapping",
}
# read only by architectures whose FFN is a mixture of experts (elsewhere only their neutral value loads)
_MOE_KEYS = {"expert_count", "expert_used_count", "expert_feed_forward_length"}
_HARMLESS_KEYS = {"rope.scaling.finetuned", "tensor_data_layout"}
_DEFAULT_ONLY_KEYS = {"expert_count": 0, "expert_used_count": 0, "attention.causal": True,
                      "rope.scaling.yarn_log_multiplier": 0}
# llama.cpp's LLAMA_MAX_EXPERTS
MAX_EXPERTS = 512


@dataclass(frozen=True)
class RopeScaling:
    """llama.cpp's RoPE settings beyond the base and the linear frequency scale.

    The rotation angle of pair i at position p is mixed from the extrapolated angle
    p * base^(-2i/n_rot) / factor_i and the interpolated one (times freq_scale): YaRN ramps
    between them over the correction dims that beta_fast/beta_slow give for n_ctx_orig
    (ext_factor 0: plain interpolation).  cos and sin are multiplied by attn_factor, and
    under YaRN also by 1 + 0.1 ln(1/freq_scale)."""
    kind: str = "none"           # none | linear | yarn | longrope (the file's rope.scaling.type)
    n_ctx_orig: int = 0          # the training context the correction dims refer to
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0


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
    rope_freq_base: float
    rope_freq_scale: float     # 1 / linear scaling factor
    rope_freq_base_swa: float  # sliding-window layers
    rope_freq_scale_swa: float
    attn_scale: float          # multiplies q.k
    sliding_window: int        # 0: none
    swa_layers: tuple[bool, ...]
    final_logit_softcap: float  # 0: none
    attn_logit_softcap: float   # 0: none
    embd_scale: float           # 1.0 or sqrt(n_embd)
    tied_output: bool           # no output.weight: logits through token_embd
    architecture: Architecture  # the declaration: attention variant, FFN component
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    rope_freqs: bool = False    # the file's rope_freqs tensor divides the rope frequencies
    n_expert: int = 0           # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int = 0      # experts per token (top-k)
    n_ff_exp: int = 0           # one expert's FFN width

    @property
    def rope_neox(self) -> bool:
        return self.architecture.attention.rope_neox

    @property
    def qkv_bias(self) -> bool:
        return self.architecture.attention.qkv_bias

    @property
    def qk_norm(self) -> bool:
        return self.architecture.attention.qk_norm

    @property
    def post_norms(self) -> bool:
        return self.architecture.attention.post_norm

    @property
    def gelu(self) -> bool:
        return getattr(self.architecture.ffn, "gelu", False)

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_reader(cls, reader) -> "ModelConfig":
        return config_from_metadata(reader.metadata, set(reader.tensors), getattr(reader, "path", "<gguf>"),
                                    reader.tensors)


def _supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


_BLK = re.compile(r"blk\.(\d+)\.")


def layer_indices(tensor_names) -> list[int]:
    """The sorted layer numbers N of the file's blk.N.* tensors."""
    return sorted({int(m.group(1)) for m in map(_BLK.match, tensor_names) if m})


def _check_keys(keys: MetadataKeys, md: dict[str, Any], moe: bool) -> None:
    """Refuse {arch}.* keys this engine does not understand (they may change the math).
    moe: the architecture's FFN is a mixture of experts (it reads the expert keys)."""
    prefix = keys.arch + "."
    for full in md:
        if not full.startswith(prefix):
            continue
        key = full[len(prefix):]
        if key in _READ_KEYS or key in _HARMLESS_KEYS or (moe and key in _MOE_KEYS):
            continue
        if key in _DEFAULT_ONLY_KEYS:
            want = _DEFAULT_ONLY_KEYS[key]
            v = md[full]
            if isinstance(v, type(want)) and v == want:
                continue
            if isinstance(want, int) and not isinstance(want, bool) and not isinstance(v, bool) \
                    and isinstance(v, (int, float)) and v == want:
                continue
            raise keys.fail(key, f"is not supported (only {want!r} is)")
        raise keys.fail(key, "is not understood by this engine (it may change the model's math); refusing the file")


def _rope_scaling(keys: MetadataKeys, arch: Architecture, n_ctx_train: int) -> tuple[float, RopeScaling]:
    """(freq_scale, RopeScaling) as llama.cpp derives them from the rope.scaling.* keys."""
    kind = keys.str("rope.scaling.type", "linear")
    kinds = ROPE_SCALING_TYPES + (("longrope",) if arch.attention.rope_factors == "longrope" else ())
    if kind not in kinds:
        raise keys.fail("rope.scaling.type", f"is not supported for {arch.name} (supported: {', '.join(kinds)})")
    factor_key = "rope.scaling.factor" if keys.has("rope.scaling.factor") else "rope.scale_linear"
    factor = keys.float(factor_key, 0.0, 1e6, 0.0)
    if 0.0 < factor < 1e-6:
        raise keys.fail(factor_key, "is out of range (0, or at least 1e-6)")
    freq_scale = 1.0 if factor == 0.0 or kind == "none" else 1.0 / factor
    n_ctx_orig = keys.int("rope.scaling.original_context_length", 1, INT_MAX, n_ctx_train)
    ext_factor = keys.float("rope.scaling.yarn_ext_factor", 0.0, 1.0, 1.0 if kind == "yarn" else 0.0)
    beta_fast = keys.float("rope.scaling.yarn_beta_fast", 0.0, 1e6, 32.0, lo_open=True)
    beta_slow = keys.float("rope.scaling.yarn_beta_slow", 0.0, 1e6, 1.0, lo_open=True)
    attn_factor = keys.float("rope.scaling.yarn_attn_factor", 0.0, 1e3, 1.0, lo_open=True)
    if ext_factor != 0.0:
        # llama.cpp replaces the factor by YaRN's magnitude scale divided by the one ggml's rope
        # multiplies in itself (so that, with the file's attn_factor, the product is what YaRN asks)
        scale = 1.0 / freq_scale
        attn_factor = (1.0 if scale <= 1.0 else 0.1 * math.log(scale) + 1.0) / (1.0 + 0.1 * math.log(scale))
    attn_factor *= keys.float("rope.scaling.attn_factor", 0.0, 1e3, 1.0, lo_open=True)
    return freq_scale, RopeScaling(kind, n_ctx_orig, ext_factor, attn_factor, beta_fast, beta_slow)


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str = "<gguf>",
                         tensors: dict | None = None) -> ModelConfig:
    """Build the config from a metadata dict and the set of tensor names (``tensors``, name ->
    tensor with a ``shape``, lets the sizes be checked against the file's tensors)."""
    arch = md.get("general.architecture")
    if arch is None:
        raise UnsupportedModelError(f"{source}: metadata key 'general.architecture' is missing "
                                    f"(supported architectures: {_supported()})")
    if not isinstance(arch, str):
        raise MetadataError(f"{source}: metadata key 'general.architecture' ({describe(arch)}) must be a string")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{source}: architecture {arch!r} is not supported "
                                    f"(supported architectures: {_supported()})")
    arch_decl = ARCHITECTURES[arch]
    att = arch_decl.attention
    keys = MetadataKeys(md, arch, source)
    moe = arch_decl.ffn.moe
    _check_keys(keys, md, moe)

    n_layer = keys.int("block_count", 1, MAX_LAYERS)
    if tensors is not None:
        found = layer_indices(tensor_names)
        if found != list(range(n_layer)):
            have = f"layers {found[0]}..{found[-1]} ({len(found)} in all)" if found else "no layer tensors"
            raise keys.fail("block_count", f"does not match the file's tensors ({have})")
    n_embd = keys.int("embedding_length", 1, MAX_EMBD)
    n_head = keys.uniform_int("attention.head_count", 1, MAX_HEADS, n_layer)
    n_head_kv = keys.uniform_int("attention.head_count_kv", 1, MAX_HEADS, n_layer, n_head)
    n_ff = keys.uniform_int("feed_forward_length", 1, MAX_FF, n_layer, *((0,) if moe else ()))
    n_expert = n_used = n_ff_exp = 0
    if moe:
        n_expert = keys.int("expert_count", 1, MAX_EXPERTS)
        n_used = keys.uniform_int("expert_used_count", 1, n_expert, n_layer)
        n_ff_exp = keys.uniform_int("expert_feed_forward_length", 1, MAX_FF, n_layer, n_ff // n_used)
        if n_ff_exp < 1:
            raise keys.fail("expert_feed_forward_length", "is missing (and feed_forward_length gives none)")
    n_ctx_train = keys.int("context_length", 1, INT_MAX)
    eps = keys.float("attention.layer_norm_rms_epsilon", 0.0, 1.0, lo_open=True)
    if n_head % n_head_kv:
        raise UnsupportedModelError(f"{source}: head counts {n_head}/{n_head_kv} (query/kv) are not a valid "
                                    f"grouped-query layout")
    head_dim = keys.int("attention.key_length", 1, MAX_HEAD_DIM, max(n_embd // n_head, 1))
    head_dim_v = keys.int("attention.value_length", 1, MAX_HEAD_DIM, head_dim)
    if head_dim_v != head_dim:
        raise UnsupportedModelError(f"{source}: key length {head_dim} != value length {head_dim_v} is not supported")
    rope_dim = keys.int("rope.dimension_count", 2, head_dim, head_dim)
    if rope_dim % 2:
        raise keys.fail("rope.dimension_count", f"must be even (and fit the head size {head_dim})")
    freq_scale, scaling = _rope_scaling(keys, ARCHITECTURES[arch], n_ctx_train)

    # vocabulary: the metadata count, else the embedding rows, else the token list
    embd = tensors.get("token_embd.weight") if tensors is not None else None
    if keys.has("vocab_size"):
        n_vocab = keys.int("vocab_size", 1, INT_MAX)
    elif embd is not None and len(embd.shape) == 2:
        n_vocab = int(embd.shape[0])
    elif hasattr(md.get("tokenizer.ggml.tokens"), "__len__") and len(md["tokenizer.ggml.tokens"]):
        n_vocab = len(md["tokenizer.ggml.tokens"])
    else:
        raise UnsupportedModelError(f"{source}: cannot tell the vocabulary size ({arch}.vocab_size missing)")
    if embd is not None and tuple(embd.shape) != (n_vocab, n_embd):
        raise UnsupportedModelError(f"{source}: tensor 'token_embd.weight' has shape {tuple(embd.shape)}, but the "
                                    f"metadata says {n_vocab} tokens x {n_embd} ({arch}.embedding_length)")

    sliding_window = 0
    swa_layers = (False,) * n_layer
    if att.swa_pattern:
        sliding_window = keys.int("attention.sliding_window", 0, INT_MAX, att.swa_window)
        if sliding_window > 0:
            if keys.has("attention.sliding_window_pattern") and \
                    hasattr(md[keys.full("attention.sliding_window_pattern")], "__len__"):
                swa_layers = keys.bool_per_layer("attention.sliding_window_pattern", n_layer)
            else:
                pattern = keys.int("attention.sliding_window_pattern", 0, MAX_LAYERS, att.swa_pattern)
                # every pattern-th layer (counting from 1) is global, the others slide
                swa_layers = tuple(pattern == 0 or (il % pattern) < pattern - 1 for il in range(n_layer))

    # Gemma's 27B models scale by n_embd/n_head (query_pre_attn_scalar); the others by the head size
    wide = arch_decl.scale_by_embd_layers and n_layer == arch_decl.scale_by_embd_layers
    attn_scale = 1.0 / math.sqrt(n_embd / n_head if wide else head_dim)
    attn_scale = keys.float("attention.scale", 0.0, 1e6, 0.0) or attn_scale

    rope_freqs = tensors is not None and "rope_freqs.weight" in tensors and att.rope_factors == "freqs"
    freq_base = keys.float("rope.freq_base", 0.0, 1e12, 10000.0, lo_open=True)
    swa_base = att.swa_freq_base if att.swa_freq_base is not None else freq_base

    return ModelConfig(
        arch=arch,
        name=str(md.get("general.name", "")),
        n_vocab=n_vocab,
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
        rope_freq_base=freq_base,
        rope_freq_scale=freq_scale,
        rope_freq_base_swa=keys.float("rope.freq_base_swa", 0.0, 1e12, swa_base, lo_open=True),
        rope_freq_scale_swa=1.0,
        attn_scale=attn_scale,
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        final_logit_softcap=keys.float("final_logit_softcapping", 0.0, 1e6, arch_decl.final_softcap),
        attn_logit_softcap=keys.float("attn_logit_softcapping", 0.0, 1e6, att.softcap),
        embd_scale=math.sqrt(n_embd) if arch_decl.embd_scale else 1.0,
        tied_output="output.weight" not in tensor_names,
        architecture=arch_decl,
        rope_scaling=scaling,
        rope_freqs=rope_freqs,
        n_expert=n_expert,
        n_expert_used=n_used,
        n_ff_exp=n_ff_exp,
    )

