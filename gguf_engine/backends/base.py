"""The small interface between the model and the hardware it runs on.

The transformer (``gguf_engine.model.transformer``) only ever calls these
methods; a backend owns its arrays (``xp`` is its array module), uploads the
weights in whatever form its kernels want (quantized weights stay quantized),
and implements the handful of fused operations one layer needs.  Activations
are float32, row-major, one row per token; a backend receives and returns its
own arrays and converts only at ``to_host`` / ``from_host`` (once per device
boundary, not per layer).

Shapes: n tokens, d = n_embd, H query heads, Hkv key/value heads, hd head size.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


class WeightLike(Protocol):
    """A 2-D weight (rows = output features) as uploaded by a backend."""
    shape: tuple[int, int]

    def matvec(self, x): ...        # (in,) -> (out,)
    def matmul(self, X): ...        # (n, in) -> (n, out)
    def rows(self, ids): ...        # (k,) ids -> (k, in) float32 (embedding lookup)


@dataclass(frozen=True)
class Routing:
    """How a mixture-of-experts layer picks and weighs its experts (llama.cpp's build_moe_ffn):
    n_used experts per token (top-k); gating "softmax" or "softmax_weight"; norm: the k weights
    renormalised to sum 1; scale: multiplies the weights (0 or 1: none); oai_swiglu: gpt-oss's
    clamped SwiGLU instead of SiLU(gate) * up."""
    n_used: int
    gating: str = "softmax"
    norm: bool = True
    scale: float = 0.0
    oai_swiglu: bool = False


@dataclass(frozen=True)
class ExpertFFN:
    """One layer's expert weights as a backend uploaded them: gate_up, a fused list of expert
    tensors whose outputs concatenated are [gate | up] (n_expert, 2 ff, d); down (n_expert, d, ff);
    optional biases: router (n_expert,), gate and up (n_expert, ff), down (n_expert, d)."""
    gate_up: list
    down: Any
    router_bias: Any = None
    gate_bias: Any = None
    up_bias: Any = None
    down_bias: Any = None


class Backend(ABC):
    name: str = "base"
    xp: Any = np
    float_cache_only: bool = False     # its attention reads f32 / f16 caches only (check_cache_types)

    # --- memory -------------------------------------------------------------------------
    @abstractmethod
    def upload_weight(self, tensor, release=None) -> WeightLike:
        """A reader tensor (quantized or float) -> a weight this backend multiplies with.
        release(r0, r1), if given: a backend that copies the data calls it once rows r0..r1-1
        are copied (the loader then drops those file pages)."""

    def upload_experts(self, tensor, release=None):
        """A reader tensor of shape (n_expert, rows, cols) -> the experts, each a weight this
        backend multiplies with (see ``moe``).  release: as for ``upload_weight``."""
        raise NotImplementedError(f"the {self.name} backend does not hold expert tensors")

    @abstractmethod
    def upload_array(self, arr: np.ndarray):
        """A small float32 host array (norm weight, bias, RoPE table) -> backend array."""

    def upload_fused(self, tensors: list, releases: list) -> list:
        """Reader tensors sharing one input -> the fused list ``fuse`` makes of their uploads.
        releases: each tensor's release callback (or None), as for ``upload_weight``.  A backend
        may build the stacks straight from the tensors (the CPU backend repacks each part into
        its place, so no part is held twice).  Default: upload each, then ``fuse``."""
        return self.fuse([self.upload_weight(t, r) for t, r in zip(tensors, releases)])

    def fuse(self, weights: list) -> list:
        """Weights sharing one input -> a list whose outputs, concatenated, are theirs in order
        (e.g. Q|K|V stacked into one matrix: one pass over the input).  Default: no fusion."""
        return list(weights)

    @abstractmethod
    def kv_cache(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, cache_type):
        """A preallocated ``KVCache`` whose arrays live on this backend; cache_type: a ``KVTypes``
        or one type name for keys and values."""

    def check_cache_types(self, types) -> None:
        """ValueError naming what is wrong when this backend cannot hold a KV cache of ``types``
        (a ``KVTypes``): a backend with ``float_cache_only`` takes f32 or f16, one type for K and V."""
        if self.float_cache_only and (types.k != types.v or types.k not in ("f32", "f16")):
            raise ValueError(f"layers offloaded to {self.name} keep their KV cache in f32 or f16 (one type for "
                             f"K and V); cache type {types} is supported on the CPU only: use -ngl 0 or "
                             f"-ctk/-ctv f16")

    @property
    def buffer_name(self) -> str:
        """The name llama.cpp gives this backend's buffers in its load summary ("CPU", "CUDA0")."""
        return self.name

    @property
    def weight_buffer_name(self) -> str:
        """The buffer name of the uploaded weights (the CPU backend's repacked copies: "CPU_REPACK")."""
        return self.buffer_name

    def scratch_bytes(self, weights: list, n: int, n_keys: int, config) -> int:
        """Bytes of scratch beyond the run state that this backend's kernels hold or allocate
        in a pass of n tokens over ``weights`` attending to up to n_keys cached keys (config:
        the model's ``ModelConfig``).  Default: none."""
        return 0

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def from_host(self, x: np.ndarray):
        return self.xp.asarray(x)

    # --- compute ------------------------------------------------------------------------
    @abstractmethod
    def embed(self, w: WeightLike, ids: np.ndarray):
        """Embedding rows for token ids (n,) -> (n, d) float32."""

    @abstractmethod
    def linear(self, w: WeightLike, x, out=None, decode: int | None = None, rounded: bool = False):
        """x (n, in) -> x @ w.T (n, out); one token goes through matvec, more through matmul.
        out: an optional (n, out) array of this backend that the result may be written to
        (no new allocation); callers use the returned array either way.  decode: the first
        `decode` rows are decode steps of a batched pass (each computed exactly as the matvec
        computes it alone), the rest prompt rows; None: one row is a decode step, several are
        prompt rows (the single-sequence path).  rounded: the prompt rows may be multiplied with
        their activations rounded as a decode step rounds them, where that is the faster product
        (a backend may ignore it)."""

    def linear_fused(self, ws: list, x, out=None, decode: int | None = None, rounded: bool = False):
        """The outputs of the (fused) weights ws for input x, concatenated: (n, sum of out).
        out, decode, rounded: as for ``linear``."""
        if len(ws) == 1:
            return self.linear(ws[0], x, out=out, decode=decode, rounded=rounded)
        outs = [self.linear(w, x, decode=decode, rounded=rounded) for w in ws]
        return self.xp.concatenate(outs, axis=1, out=out)

    @abstractmethod
    def rms_norm(self, x, w, eps: float, out) -> None:
        """out = rms_norm(x) * w.  x, out: (n, d)."""

    @abstractmethod
    def add_rms_norm(self, x, delta, post_w, w, eps: float, out) -> None:
        """x += (rms_norm(delta) * post_w if post_w is not None else delta); out = rms_norm(x) * w."""

    @abstractmethod
    def qkv_prepare(self, q3, k3, v3, bq, bk, bv, q_norm, k_norm, eps: float, rope, pos0: int,
                    neox: bool, k_cache, v_cache) -> None:
        """In place: biases (bq (H, hd), bk, bv (Hkv, hd); None when absent), per-head RMS norms
        (q_norm, k_norm (hd,); None when absent) and RoPE at positions pos0.. with the tables
        rope = (cos, sin), each (n_ctx, n_rot/2).  q3: (n, H, hd); k3, v3: (n, Hkv, hd).
        Then stores k, v at rows pos0.. of the layer's cache (k_cache, v_cache: (C, Hkv, hd), float
        arrays or ``BlockRows``).  A side whose ``BlockRows.rot`` is set is stored rotated (keys: q3
        is rotated alike; values: ``attention`` rotates its output back)."""

    @abstractmethod
    def attention(self, q3, k_cache, v_cache, pos0: int, scale: float, window: int, softcap: float,
                  out3, sinks=None) -> None:
        """Causal attention of the n tokens at positions pos0.. over one layer's cache
        (C, Hkv, hd), keys visible within ``window`` positions (0: all).  out3: (n, H, hd).
        sinks (H,) or None: one logit per head added to the softmax's denominator (gpt-oss); a
        backend without them refuses a model that has them."""

    def attention_steps(self, q3, k_cache, v_cache, base, pos, n_ctx_seq: int, scale: float, window: int,
                        softcap: float, out3, sinks=None) -> None:
        """The decode steps of several sequences: row t of q3 (N, H, hd) is the new token (already
        stored) of a sequence whose cache is rows base[t] .. base[t] + n_ctx_seq - 1 of
        (k_cache, v_cache), at position pos[t] there; each row as ``attention`` computes it for
        that sequence alone.  This default attends the sequences one by one; a backend overrides
        it with one call over all of them."""
        for t in range(q3.shape[0]):
            rows = slice(int(base[t]), int(base[t]) + n_ctx_seq)
            self.attention(q3[t:t + 1], k_cache[rows], v_cache[rows], int(pos[t]), scale, window, softcap,
                           out3[t:t + 1], sinks=sinks)

    def add_bias(self, x, bias) -> None:
        """x (n, m) += bias (m,) in place."""
        x += bias

    @abstractmethod
    def gated_act(self, gate, up, gelu: bool, out) -> None:
        """out = act(gate) * up; act = GELU(tanh) when gelu else SiLU.  (n, ff)."""

    def moe(self, x, logits, experts: ExpertFFN, routing: Routing, out=None,
            observe: Callable | None = None, decode: int | None = None):
        """The mixture-of-experts FFN of x (n, d) given the router's logits (n, n_expert): each
        token's top routing.n_used experts, their gated FFNs, summed with the routing weights into
        out (n, d) (returned).  observe(w, X, ids), if given, sees each expert product's input
        before it runs: w one of experts.gate_up or experts.down, X (n, 1 or k, in), ids (n, k).
        decode: rows 0..decode-1 are decode steps, the rest prompt rows (None: one row is a decode
        step, several are prompt rows), as ``linear`` takes it."""
        raise NotImplementedError(f"the {self.name} backend has no mixture-of-experts operation")

    @abstractmethod
    def softcap(self, x, cap: float) -> None:
        """x = cap * tanh(x / cap) in place."""

    def run_layers(self, key, fn, x, pos0: int):
        """fn(x) -> (x, xn): one token's pass over a run of this backend's layers at position
        pos0.  A backend may record the work under ``key`` (the transformer and the run's first
        layer) the first time and replay it later (the CUDA backend captures a graph); the
        default just calls fn."""
        return fn(x)

    def scope(self):
        """Context manager around one evaluation (a CPU backend settles its thread pools there)."""
        return contextlib.nullcontext()

    def set_threads(self, n_threads: int | None) -> None:
        """Number of CPU threads for the backend's kernels (None: all cores)."""
