"""Which GGML type each tensor of a model gets, for a given ftype.

This re-implements llama.cpp's per-tensor type selection (the "mixture" rules of
its quantizer), so that a model quantized here has exactly the tensor types
``llama-quantize`` would give it:

* which tensors may be quantized at all (2D+ weights, never norms, routers, ...);
* the ftype's default type, raised or lowered by tensor category (attention V,
  attention output, FFN down/gate/up, output, token embedding), by layer position,
  by the GQA ratio and expert count, and by whether an importance matrix is used;
* user overrides (``--tensor-type`` regexes, output / token-embedding types, ``--pure``);
* fallbacks for rows whose length is not a multiple of the type's block size.

The selection is stateful: some rules count how many tensors of a category came
before, so tensors must be visited in llama.cpp's order (``weight_order``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Iterable, Sequence

from kernels.types import GGMLType, as_type, block_size

from .ftypes import LlamaFileType as F, default_type

T = GGMLType

_BLK_RE = re.compile(r"^blk\.(-?\d+)\.")


class Category(Enum):
    TOKEN_EMBD = auto()
    ATTENTION_Q = auto()
    ATTENTION_V = auto()
    ATTENTION_K = auto()
    ATTENTION_QKV = auto()
    ATTENTION_KV_B = auto()
    ATTENTION_OUTPUT = auto()
    FFN_UP = auto()
    FFN_GATE = auto()
    FFN_DOWN = auto()
    OUTPUT = auto()
    OTHER = auto()


def is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def is_output_weight(name: str) -> bool:
    return name == "output.weight"


def tensor_category(name: str) -> Category:
    """Broad role of a tensor, from its name (order of the tests matters, as in llama.cpp)."""
    if is_output_weight(name):
        return Category.OUTPUT
    if is_token_embd(name):
        return Category.TOKEN_EMBD
    for needle, cat in (("attn_qkv.weight", Category.ATTENTION_QKV),
                        ("attn_kv_b.weight", Category.ATTENTION_KV_B),
                        ("attn_v.weight", Category.ATTENTION_V),
                        ("attn_k.weight", Category.ATTENTION_K),
                        ("attn_q.weight", Category.ATTENTION_Q),
                        ("attn_output.weight", Category.ATTENTION_OUTPUT),
                        ("ffn_up", Category.FFN_UP),
                        ("ffn_gate", Category.FFN_GATE),
                        ("ffn_down", Category.FFN_DOWN)):
        if needle in name:
            return cat
    return Category.OTHER


def _is_attn_v_like(cat: Category) -> bool:
    return cat in (Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B)


def _layer_of(name: str) -> int:
    m = _BLK_RE.match(name)
    return int(m.group(1)) if m else -1


def weight_order(names: Iterable[str]) -> list[str]:
    """llama.cpp's tensor order: by block number (non-block tensors first), then by name."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


def n_dims(shape: Sequence[int]) -> int:
    """ggml's dimension count: trailing size-1 dimensions (outermost in numpy order) do not count."""
    ne = list(reversed([int(s) for s in shape])) or [1]
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


@dataclass(frozen=True)
class ModelInfo:
    """The hyper-parameters the mixture rules look at."""
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv

    @property
    def is_70b(self) -> bool:
        # the only model size the rules single out (8 query heads per K/V head at 80 layers)
        if self.arch in ("qwen2", "deci", "olmo"):
            return self.n_layer == 80
        if self.arch == "jais2":
            return self.n_layer == 68
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ModelInfo":
        """Read architecture, block count, head counts and expert count from GGUF metadata."""
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError("model metadata has no general.architecture")

        def first(key: str, default=None):
            v = metadata.get(f"{arch}.{key}", default)
            if v is None:
                return None
            if hasattr(v, "__len__") and not isinstance(v, str):
                return int(v[0]) if len(v) else (default if default is not None else 0)
            return int(v)

        n_layer = first("block_count")
        if n_layer is None:
            raise ValueError(f"model metadata has no {arch}.block_count")
        n_head = first("attention.head_count", 0) or 0
        n_head_kv = first("attention.head_count_kv")
        if n_head_kv is None:
            n_head_kv = n_head
        return cls(arch=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                   n_expert=first("expert_count", 0) or 0)


@dataclass
class MixtureOptions:
    """What the user asked for (the quantize command's options that affect tensor types)."""
    ftype: F
    has_imatrix: bool = False
    pure: bool = False
    only_copy: bool = False
    quantize_output_tensor: bool = True          # False: --leave-output-tensor
    output_tensor_type: GGMLType | None = None
    token_embedding_type: GGMLType | None = None
    tensor_types: list[tuple[str, GGMLType]] = field(default_factory=list)  # (regex, type), first match wins

    def __post_init__(self) -> None:
        self.ftype = F(int(self.ftype))
        if self.output_tensor_type is not None:
            self.output_tensor_type = as_type(self.output_tensor_type)
        if self.token_embedding_type is not None:
            self.token_embedding_type = as_type(self.token_embedding_type)
        self.tensor_types = [(p, as_type(t)) for p, t in self.tensor_types]


def is_quantized_type(t: GGMLType) -> bool:
    return t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


_NOT_QUANTIZED_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
    "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_GLM5_NEXT_NOT_QUANTIZED = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def allows_quantization(name: str, shape: Sequence[int], arch: str, opts: MixtureOptions) -> bool:
    """Whether this tensor is a weight the quantizer may change (else it is copied as is)."""
    if opts.only_copy or n_dims(shape) < 2:
        return False
    if not name.endswith("weight"):
        return False
    if not opts.quantize_output_tensor and name == "output.weight":
        return False
    if any(s in name for s in _NOT_QUANTIZED_SUBSTRINGS):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    if arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_NOT_QUANTIZED):
        return False
    return True


def requires_imatrix(name: str, qtype: GGMLType, ftype: F) -> bool:
    """Types that give garbage without an importance matrix (token embedding and output excepted)."""
    if is_token_embd(name) or is_output_weight(name):
        return False
    if qtype in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return qtype == T.Q2_K and ftype == F.MOSTLY_Q2_K_S


class MixturePlanner:
    """Chooses tensor types one tensor at a time, in ``weight_order``, keeping llama.cpp's counters.

    Build it with every tensor name of the model (the counts of attention-V tensors and
    whether there is a separate output tensor depend on all of them), then call
    ``choose`` once per tensor in order.
    """

    def __init__(self, model: ModelInfo, opts: MixtureOptions, names: Iterable[str]):
        self.model = model
        self.opts = opts
        self.default_type = default_type(opts.ftype)
        self._patterns = [(re.compile(p), t) for p, t in opts.tensor_types]
        names = list(names)
        cats = [tensor_category(n) for n in names]
        self.n_attention_wv = sum(_is_attn_v_like(c) for c in cats)
        self.has_tied_embeddings = Category.OUTPUT not in cats
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = model.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.n_fallback = 0
        self.messages: list[str] = []   # warnings (overrides applied, fallbacks)

    # -- public ------------------------------------------------------------------------------
    def choose(self, name: str, shape: Sequence[int], cur_type: "GGMLType | int") -> GGMLType:
        """Target type of one tensor (numpy-order shape: outermost first, row length last)."""
        cur_type = as_type(cur_type)
        opts = self.opts
        if not allows_quantization(name, shape, self.model.arch, opts):
            return cur_type
        cat = tensor_category(name)
        if opts.token_embedding_type is not None and cat == Category.TOKEN_EMBD:
            named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in self._patterns)
            if not named:
                return opts.token_embedding_type
        if opts.output_tensor_type is not None and cat == Category.OUTPUT:
            return opts.output_tensor_type

        new_type = self.default_type
        if is_quantized_type(self.default_type):
            manual = False
            for pat, qtype in self._patterns:
                if pat.search(name):
                    if qtype != new_type:
                        self.messages.append(f"{name:<36s} - applying manual override: "
                                             f"{new_type.name} -> {qtype.name}")
                        new_type = qtype
                    manual = True
                    break
            if not manual and not opts.pure:
                new_type = self._mixture(new_type, name, shape, cat)
            new_type = self._fallback(name, shape, new_type)
        return new_type

    # -- rules ----------------------------------------------------------------------------------
    def _fallback(self, name: str, shape: Sequence[int], target: GGMLType) -> GGMLType:
        ncols = int(shape[-1])
        qk = block_size(target)
        if ncols % qk == 0:
            return target
        self.n_fallback += 1
        if target in (T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS):
            ret = T.IQ4_NL
        elif target in (T.Q2_0, T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0):
            ret = T.Q4_0
        elif target == T.Q4_K:
            ret = T.Q5_0
        elif target == T.Q5_K:
            ret = T.Q5_1
        elif target == T.Q6_K:
            ret = T.Q8_0
        elif qk <= 32:
            ret = target
        else:
            raise ValueError(f"no tensor type fallback is defined for type {target.name}")
        note = ""
        if ncols % block_size(ret):
            note = " (must use F16 due to unusual shape)"
            ret = T.F16
        self.messages.append(f"{name:<36s} - ncols {ncols:6d} not divisible by {qk:3d} "
                             f"(required for type {target.name:>7s}){note} -> falling back to {ret.name:>7s}")
        return ret

    def _layer_info(self, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
        if max(1, self.model.n_expert) > 1:
            m = _BLK_RE.match(name)
            if not m:
                raise ValueError(f"Failed to determine layer for tensor {name}")
            i_layer = int(m.group(1))
            if i_layer < 0 or i_layer >= n_layer:
                raise ValueError(f"Bad layer {i_layer} for tensor {name}. Must be in [0, {n_layer})")
        return i_layer, n_layer

    @staticmethod
    def _use_more_bits(i_layer: int, n_layers: int) -> bool:
        # C integer division; i_layer - n/8 can be negative but is then < n/8 already
        return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
                or _c_mod(i_layer - n_layers // 8, 3) == 2)

    def _mixture(self, new_type: GGMLType, name: str, shape: Sequence[int], cat: Category) -> GGMLType:
        ftype = self.opts.ftype
        m = self.model
        arch = m.arch
        n_gqa = m.n_gqa
        n_expert = m.n_expert
        has_imatrix = self.opts.has_imatrix
        more_bits = self._use_more_bits
        low_iq = (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M,
                  F.MOSTLY_IQ1_M)

        if arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            if new_type not in (T.F32, T.BF16, T.F16):
                return T.Q8_0

        if cat == Category.OUTPUT or (self.has_tied_embeddings and cat == Category.TOKEN_EMBD):
            if self.opts.output_tensor_type is not None:
                return self.opts.output_tensor_type
            nx = int(shape[-1])
            if ftype == F.MOSTLY_MXFP4_MOE:
                return T.Q8_0
            if arch == "falcon" or nx % block_size(new_type) != 0:
                return T.Q8_0
            if ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S,
                         F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M):
                return T.Q5_K
            if new_type != T.Q8_0:
                return T.Q6_K
            return new_type

        if ftype == F.MOSTLY_MXFP4_MOE:
            # expert tensors (3D) -> MXFP4, everything else -> Q8_0
            is_3d_expert = len(shape) >= 3 and int(shape[-3]) > 1
            if arch == "bailingmoe3":
                is_3d_expert = is_3d_expert and cat in (Category.FFN_UP, Category.FFN_GATE, Category.FFN_DOWN)
            return T.MXFP4 if is_3d_expert else T.Q8_0

        if cat == Category.TOKEN_EMBD:
            if self.opts.token_embedding_type is not None:
                return self.opts.token_embedding_type
            if ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                return T.Q2_K
            if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
                return T.IQ3_S
            if ftype in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0, F.MOSTLY_Q2_0):
                return T.Q4_K
            return new_type

        if ftype in low_iq:
            iq2s_like = ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)
            if _is_attn_v_like(cat):
                if n_gqa >= 4 or n_expert >= 4:
                    new_type = T.Q4_K
                else:
                    new_type = T.IQ3_S if iq2s_like else T.Q2_K
                self.i_attention_wv += 1
            elif n_expert == 8 and cat == Category.ATTENTION_K:
                new_type = T.Q4_K
            elif cat == Category.FFN_DOWN:
                if self.i_ffn_down < self.n_ffn_down // 8:
                    new_type = T.IQ3_S if iq2s_like else T.Q2_K
                self.i_ffn_down += 1
            elif cat == Category.ATTENTION_OUTPUT:
                if n_expert == 8:
                    new_type = T.Q5_K
                elif ftype in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                    new_type = T.IQ2_XXS
                elif iq2s_like:
                    new_type = T.IQ3_S
            return new_type

        if _is_attn_v_like(cat):
            if ftype == F.MOSTLY_Q2_K:
                new_type = T.Q4_K if n_gqa >= 4 else T.Q3_K
            elif ftype == F.MOSTLY_Q2_K_S and n_gqa >= 4:
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_IQ3_XXS:
                new_type = T.Q4_K if n_gqa >= 4 else (T.IQ3_S if not has_imatrix else T.IQ3_XXS)
            elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and n_gqa >= 4:
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_IQ3_M:
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_Q3_K_M:
                new_type = T.Q5_K if self.i_attention_wv < 2 else T.Q4_K
            elif ftype == F.MOSTLY_Q3_K_L:
                new_type = T.Q5_K
            elif ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and n_gqa >= 4:
                new_type = T.Q5_K
            elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and more_bits(self.i_attention_wv,
                                                                            self.n_attention_wv):
                new_type = T.Q6_K
            elif ftype == F.MOSTLY_Q4_K_S and self.i_attention_wv < 4:
                new_type = T.Q5_K
            if m.is_70b and new_type in (T.Q3_K, T.Q4_K):
                # 8 query heads share each V head: V is small, so more bits cost little
                new_type = T.Q5_K
            if n_expert == 8:
                new_type = T.Q8_0
            self.i_attention_wv += 1
            return new_type

        if cat == Category.ATTENTION_K:
            if n_expert == 8:
                new_type = T.Q8_0
            elif ftype == F.MOSTLY_IQ3_XS:
                new_type = T.IQ3_XXS
            elif ftype == F.MOSTLY_IQ3_XXS:
                new_type = T.IQ2_S
            return new_type

        if cat == Category.ATTENTION_Q:
            if ftype == F.MOSTLY_IQ3_XS:
                new_type = T.IQ3_XXS
            elif ftype == F.MOSTLY_IQ3_XXS:
                new_type = T.IQ2_S
            return new_type

        if cat == Category.FFN_DOWN:
            i_layer, n_layer = self._layer_info(self.i_ffn_down, self.n_ffn_down, name)
            falcon = arch == "falcon"
            if ftype == F.MOSTLY_Q2_K:
                new_type = T.Q3_K
            elif ftype == F.MOSTLY_Q2_K_S:
                if i_layer < n_layer // 8:
                    new_type = T.Q4_K
            elif ftype == F.MOSTLY_IQ3_XXS and not has_imatrix:
                new_type = T.Q4_K if i_layer < n_layer // 8 else T.Q3_K
            elif ftype == F.MOSTLY_Q3_K_M:
                if i_layer < n_layer // 16:
                    new_type = T.Q5_K
                elif not falcon or more_bits(i_layer, n_layer):
                    new_type = T.Q4_K
                else:
                    new_type = T.Q3_K
            elif ftype == F.MOSTLY_IQ3_M and (i_layer < n_layer // 8
                                              or (n_expert == 8 and more_bits(i_layer, n_layer))):
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_Q3_K_L:
                new_type = T.Q4_K if falcon else T.Q5_K
            elif ftype == F.MOSTLY_Q4_K_M:
                if falcon:
                    new_type = (T.Q6_K if i_layer < n_layer // 16
                                else T.Q5_K if more_bits(i_layer, n_layer) else T.Q4_K)
                elif more_bits(i_layer, n_layer):
                    new_type = T.Q6_K
            elif (i_layer < n_layer // 8 and ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS)
                  and not has_imatrix):
                new_type = T.Q5_K
            elif ftype == F.MOSTLY_Q5_K_M and more_bits(i_layer, n_layer):
                new_type = T.Q6_K
            elif ftype == F.MOSTLY_Q4_K_S and not falcon and i_layer < n_layer // 8:
                new_type = T.Q5_K
            elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and has_imatrix and i_layer < n_layer // 8:
                # the first FFN-down layers are fragile at 4/5 bits even with an imatrix
                new_type = T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
            self.i_ffn_down += 1
            return new_type

        if cat == Category.ATTENTION_OUTPUT:
            if arch != "falcon":
                if n_expert == 8:
                    if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S,
                                 F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M,
                                 F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M, F.MOSTLY_IQ4_XS):
                        new_type = T.Q5_K
                else:
                    new_type = {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_IQ3_XXS: T.IQ3_S, F.MOSTLY_Q3_K_M: T.Q4_K,
                                F.MOSTLY_Q3_K_L: T.Q5_K, F.MOSTLY_IQ3_M: T.Q4_K}.get(ftype, new_type)
            elif ftype == F.MOSTLY_Q3_K_L:
                new_type = T.Q4_K
            return new_type

        if cat == Category.ATTENTION_QKV:
            if ftype in (F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L, F.MOSTLY_IQ3_M):
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_Q4_K_M:
                new_type = T.Q5_K
            elif ftype == F.MOSTLY_Q5_K_M:
                new_type = T.Q6_K
            return new_type

        if cat in (Category.FFN_GATE, Category.FFN_UP):
            gate = cat == Category.FFN_GATE
            i_cur = self.i_ffn_gate if gate else self.i_ffn_up
            i_layer, n_layer = self._layer_info(i_cur, self.n_ffn_gate if gate else self.n_ffn_up, name)
            if ftype == F.MOSTLY_IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
                new_type = T.IQ3_XXS
            if gate:
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
            return new_type

        return new_type


def _c_mod(a: int, b: int) -> int:
    """C's % (sign of the dividend)."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


@dataclass
class TensorPlan:
    """The chosen type for every tensor, in llama.cpp's order."""
    order: list[str]
    types: dict[str, GGMLType]
    quantizable: dict[str, bool]
    needs_imatrix: dict[str, bool]
    n_fallback: int
    messages: list[str]


def plan_types(tensors: dict[str, tuple[Sequence[int], "GGMLType | int"]], model: ModelInfo,
               opts: MixtureOptions) -> TensorPlan:
    """Types for a whole model.  ``tensors``: name -> (numpy-order shape, current type)."""
    order = weight_order(tensors)
    planner = MixturePlanner(model, opts, order)
    types, quantizable, needs = {}, {}, {}
    for name in order:
        shape, cur = tensors[name]
        cur = as_type(cur)
        ok = allows_quantization(name, shape, model.arch, opts)
        quantizable[name] = ok
        types[name] = planner.choose(name, shape, cur) if ok else cur
        needs[name] = requires_imatrix(name, types[name], opts.ftype)
    return TensorPlan(order, types, quantizable, needs, planner.n_fallback, planner.messages)
