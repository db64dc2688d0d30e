"""The decoder-only transformer shared by every architecture (``architectures``).

Per layer (shapes for n tokens; d = n_embd, H/Hkv = query/kv heads, hd = head
size, ff = FFN width):

    xn  = attn_norm(x)                                   (n, d)
    q, k, v = attn_q/k/v(xn) [+ biases]                  (n, H, hd), (n, Hkv, hd) x2
    q, k = rope(q_norm(q)), rope(k_norm(k))              per-head norms: qwen3, gemma3
    cache[layer, pos0:pos0+n] = k, v
    a   = attention(q, cache)                            (n, H, hd)
    x  += [post_attention_norm](attn_output(a) [+ bias])  (n, d)   sinks in the softmax: gpt-oss
    xn  = ffn_norm(x)
    x  += [post_ffw_norm](ffn(xn))                       the FFN component, e.g. components.DenseFFN:
                                                         ffn_down(act(ffn_gate(xn)) * ffn_up(xn))

Everything numerical goes through the backend; this module only sequences it.  A
single-token step hands each run of layers to ``Backend.run_layers``, which may replay
it (the CUDA backend captures it once as a CUDA graph).
The residual add and the following norm are one backend call.

Layer offload: each ``Block`` names the backend that holds its weights and its part
of the KV cache.  The token embedding is looked up on the host backend; the output
norm and matmul run on ``output_backend``.  Activations cross between backends only
where the backend changes (host -> device before the first offloaded layer, back
to the host for the final hidden states or logits), never per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from .config import ModelConfig, RopeScaling


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
    ffn_gate_up: list = None       # ffn_gate (ff, d) | ffn_up (ff, d), fused          dense FFN
    ffn_down: Any = None           # (d, ff)
    ffn_gate_inp: Any = None       # (E, d) the router                                  MoE FFN
    ffn_gate_up_exps: list = None  # ffn_gate_exps (E, ff, d) | ffn_up_exps (E, ff, d), fused per expert
    ffn_down_exps: Any = None      # (E, d, ff)
    ffn_gate_inp_b: Any = None     # (E,)         gpt-oss: router and expert biases
    ffn_gate_exps_b: Any = None    # (E, ff)
    ffn_up_exps_b: Any = None      # (E, ff)
    ffn_down_exps_b: Any = None    # (E, d)
    attn_q_bias: Any = None        # (H, hd)      qwen2
    attn_k_bias: Any = None        # (Hkv, hd)    qwen2
    attn_v_bias: Any = None        # (Hkv, hd)    qwen2
    attn_q_norm: Any = None        # (hd,)        qwen3, gemma3
    attn_k_norm: Any = None        # (hd,)        qwen3, gemma3
    post_attention_norm: Any = None  # (d,)       gemma2, gemma3
    post_ffw_norm: Any = None      # (d,)         gemma2, gemma3
    attn_output_b: Any = None      # (d,)         gpt-oss
    attn_sinks: Any = None         # (H,)         gpt-oss
    # per-layer settings, completed by Transformer._complete_layers
    sliding_window: int = 0
    rope: Any = None               # (cos, sin) tables, each (n_ctx, n_rot/2), on this layer's backend
    rope_host: Any = None          # the same tables on the host (for re-rotating cached keys)
    backend: Any = None            # the backend holding this layer (None: the transformer's host backend)
    next_norm: Any = None          # (d,) the norm after this layer (next attn_norm, or output_norm after
                                   # the last), on this layer's backend


@dataclass
class RunState:
    """The activations of one pass over the layers for n tokens, allocated once and reused by
    every layer.  The projections write into them (a backend may return other arrays instead)."""
    xn: Any                        # (n, d) the normed residual stream
    qkv: Any                       # (n, (H + 2 Hkv) hd)
    attn: Any                      # (n, H, hd)
    proj: Any                      # (n, d) attn_output, then the FFN's output
    gate_up: Any                   # (n, 2 ff) the FFN's projections
    act: Any                       # (n, ff) the FFN's activation
    decode: int | None = None      # a batched pass: its first `decode` rows are decode steps
                                   # (Backend.linear); None: the single-sequence path


def rope_tables(n_ctx: int, n_rot: int, head_dim: int, base: float, freq_scale: float,
                factors: np.ndarray | None = None,
                scaling: RopeScaling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of the rotation angles theta[p, i] = p * freq_scale * base^(-2i/n_rot), computed
    in float64, as llama.cpp (ggml's rope) defines them:

    - factors (n_rot/2,): Llama 3's rope_freqs; they divide the per-dimension frequencies;
    - scaling.ext_factor != 0 (YaRN): the angle of pair i is mixed from the interpolated one
      (times freq_scale) and the extrapolated one by a ramp over the correction dims, and the
      magnitude gains 1 + 0.1 ln(1/freq_scale);
    - cos and sin are multiplied by scaling.attn_factor.

    Shapes (n_ctx, n_rot/2) float32.
    """
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)       # (n_rot/2,)
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, dtype=np.float64).reshape(-1)[:n_rot // 2]
    pos = np.arange(n_ctx, dtype=np.float64)[:, None]                             # (n_ctx, 1)
    s = scaling if scaling is not None else RopeScaling()
    mscale = s.attn_factor
    if s.ext_factor == 0.0:
        theta = pos * (freq_scale * inv_freq)                                     # (n_ctx, n_rot/2)
    else:
        low, high = yarn_corr_dims(n_rot, s.n_ctx_orig, base, s.beta_fast, s.beta_slow)
        i = np.arange(n_rot // 2, dtype=np.float64)
        ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)      # 1: extrapolate
        mix = ramp * s.ext_factor
        extrap = pos * inv_freq                                                   # (n_ctx, n_rot/2)
        theta = (freq_scale * extrap) * (1.0 - mix) + extrap * mix
        mscale *= 1.0 + 0.1 * np.log(1.0 / freq_scale)
    cos, sin = np.cos(theta), np.sin(theta)
    if mscale != 1.0:
        cos, sin = cos * mscale, sin * mscale
    return cos.astype(np.float32), sin.astype(np.float32)


def yarn_corr_dims(n_rot: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    """YaRN's correction range (low, high) in pair indices: the dims whose wavelength turns
    beta_fast (resp. beta_slow) times over n_ctx_orig, floored/ceiled and clamped to the dims."""
    def corr_dim(beta: float) -> float:
        return n_rot * np.log(n_ctx_orig / (beta * 2 * np.pi)) / (2 * np.log(base))
    return max(0.0, float(np.floor(corr_dim(beta_fast)))), min(n_rot - 1.0, float(np.ceil(corr_dim(beta_slow))))


def _as_list(v) -> list:
    """A Block field's tensors: a fused list as it is, one tensor as a list of one, None as none."""
    if isinstance(v, (list, tuple)):
        return [x for x in v if x is not None]
    return [] if v is None else [v]


class Transformer:
    """Weights + KV cache + the forward pass over a chunk of new tokens."""

    def __init__(self, config: ModelConfig, backend, token_embd, output_norm, output, blocks: list[Block],
                 n_ctx: int, cache_type: str = "f32", output_backend=None, rope_factors: np.ndarray | None = None,
                 ffn=None):
        """rope_factors (n_rot/2,): the file's rope_freqs (host array), applied to every layer.
        ffn: the FFN component (default: the architecture's)."""
        self.config = config
        self.backend = backend            # host backend: token embedding, layers without a backend of their own
        self.output_backend = output_backend if output_backend is not None else backend
        self.token_embd = token_embd      # (n_vocab, d) on the host backend
        self.output_norm = output_norm    # (d,) on output_backend
        self.output = output              # (n_vocab, d) on output_backend; token_embd when tied
        self.blk = blocks
        self.n_ctx = n_ctx
        self.ffn = (ffn if ffn is not None else config.architecture.ffn).for_config(config)
        self._complete_layers(rope_factors)
        # runs of consecutive layers on one backend: (first layer, one past the last, backend)
        self._runs: list[tuple[int, int, Any]] = []
        for il, blk in enumerate(blocks):
            if self._runs and self._runs[-1][2] is blk.backend:
                self._runs[-1] = (self._runs[-1][0], il + 1, blk.backend)
            else:
                self._runs.append((il, il + 1, blk.backend))
        self.cache = self._make_cache(n_ctx, cache_type)
        # scratch for single-token decode steps, allocated once per backend that holds layers
        self._step_bufs = {id(be): self._buffers(be, 1) for _, _, be in self._runs}

    def _complete_layers(self, rope_factors) -> None:
        """The one place each layer's settings are completed: its backend (default: the host),
        the norm after it on its own backend (copied across a device boundary), its RoPE tables
        (shared by layers with the same settings and backend) and its sliding window."""
        c, blocks = self.config, self.blk
        for blk in blocks:
            if blk.backend is None:
                blk.backend = self.backend
        tables: dict = {}
        for il, blk in enumerate(blocks):
            nxt, nxt_be = ((blocks[il + 1].attn_norm, blocks[il + 1].backend) if il + 1 < len(blocks)
                           else (self.output_norm, self.output_backend))
            blk.next_norm = nxt if nxt_be is blk.backend else blk.backend.upload_array(nxt_be.to_host(nxt))
            swa = c.swa_layers[il]
            key = (c.rope_freq_base_swa, c.rope_freq_scale_swa) if swa else (c.rope_freq_base, c.rope_freq_scale)
            if key not in tables:
                tables[key] = rope_tables(self.n_ctx, c.rope_dim, c.head_dim, *key, rope_factors,
                                          c.rope_scaling)                             # host (cos, sin)
            uploaded = (id(blk.backend), key)
            if uploaded not in tables:
                cos, sin = tables[key]
                tables[uploaded] = (blk.backend.upload_array(cos), blk.backend.upload_array(sin))
            blk.rope = tables[uploaded]
            blk.rope_host = tables[key]
            blk.sliding_window = c.sliding_window if swa else 0

    def _make_cache(self, n_ctx: int, cache_type: str):
        """One KV cache per run of consecutive layers on one backend, allocated by that backend."""
        c = self.config
        if len(self._runs) <= 1:
            be = self._runs[0][2] if self._runs else self.backend
            return be.kv_cache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim, cache_type)
        from .kv_cache import SplitKVCache
        return SplitKVCache([(il0, be.kv_cache(il1 - il0, n_ctx, c.n_head_kv, c.head_dim, cache_type))
                             for il0, il1, be in self._runs])

    def _run_state_layout(self, n: int) -> tuple[int, int, int, int, int]:
        """Float32 element counts of the run state for n tokens: (block, at_attn, at_act, w_qkv,
        w_ffn_in).  The attention's (qkv, attn) and the FFN's (gate_up, act) are never alive at
        once, so both pairs are views of one block, each view starting 256 bytes aligned."""
        c = self.config
        H, Hkv, hd = c.n_head, c.n_head_kv, c.head_dim
        w_ffn_in, w_ffn_act = self.ffn.scratch(c)
        w_qkv = (H + 2 * Hkv) * hd
        at_attn = -(-n * w_qkv // 64) * 64                  # view offsets in float32 elements,
        at_act = -(-n * w_ffn_in // 64) * 64                # rounded up to 64 (256 bytes)
        return max(at_attn + n * H * hd, at_act + n * w_ffn_act), at_attn, at_act, w_qkv, w_ffn_in

    def run_state_bytes(self, n: int) -> int:
        """Bytes of the run state ``_buffers`` allocates for n tokens (xn, proj and the block)."""
        return 4 * (self._run_state_layout(n)[0] + 2 * n * self.config.n_embd)

    def _buffers(self, be, n: int) -> RunState:
        """The run state for n tokens (laid out by ``_run_state_layout``)."""
        c = self.config
        H, hd = c.n_head, c.head_dim
        size, at_attn, at_act, w_qkv, w_ffn_in = self._run_state_layout(n)
        w_ffn_act = self.ffn.scratch(c)[1]
        block = be.empty((size,))
        return RunState(
            xn=be.empty((n, c.n_embd)),
            qkv=block[:n * w_qkv].reshape(n, w_qkv),
            attn=block[at_attn:at_attn + n * H * hd].reshape(n, H, hd),
            proj=be.empty((n, c.n_embd)),
            gate_up=block[:n * w_ffn_in].reshape(n, w_ffn_in),
            act=block[at_act:at_act + n * w_ffn_act].reshape(n, w_ffn_act),
        )

    # --- what the model holds, per backend (the memory report) --------------------------
    def held_tensors(self) -> list[tuple[Any, Any]]:
        """(backend, tensor) for every distinct tensor the model holds: weights (a fused list's
        stacks one by one), norms, biases and RoPE tables, each once (a tied output is the
        embedding)."""
        seen: dict[int, tuple[Any, Any]] = {}

        def add(be, v):
            for x in _as_list(v):
                seen.setdefault(id(x), (be, x))

        add(self.backend, self.token_embd)
        add(self.output_backend, [self.output, self.output_norm])
        for blk in self.blk:
            for name in blk.__dataclass_fields__:
                if name not in ("backend", "sliding_window"):
                    add(blk.backend, getattr(blk, name))
        return list(seen.values())

    def cache_parts(self) -> list[tuple[Any, Any]]:
        """(backend, KVCache) for each run of layers on one backend, in layer order."""
        parts = getattr(self.cache, "parts", None)
        if parts is None:
            return [(self._runs[0][2] if self._runs else self.backend, self.cache)]
        return [(be, part) for (_, _, be), (_, part) in zip(self._runs, parts)]

    def compute_bytes(self, be, n_batch: int) -> int:
        """Bytes of the buffers a pass of up to n_batch tokens that returns the last row's logits
        uses on backend be: the decode step's run state (kept), a prompt pass's run state, the
        embedded rows (host), the logits (output backend) and the backend's own kernel scratch
        for the layers' products (the output product of one row is a matvec)."""
        c = self.config
        layers = {id(blk) for il0, il1, b in self._runs if b is be for blk in self.blk[il0:il1]}
        weights = [v for blk in self.blk if id(blk) in layers for name in blk.__dataclass_fields__
                   for v in _as_list(getattr(blk, name)) if hasattr(v, "qtype")]
        total = 0
        if any(b is be for _, _, b in self._runs):
            total += self.run_state_bytes(1) + (self.run_state_bytes(n_batch) if n_batch > 1 else 0)
        if be is self.backend:
            total += 4 * n_batch * c.n_embd
        if be is self.output_backend:
            total += 4 * c.n_vocab
        return total + be.scratch_bytes(weights, n_batch, self.n_ctx, c)

    @staticmethod
    def _cross(x, src, dst):
        """Move an activation from backend src to backend dst (one device boundary)."""
        return dst.from_host(src.to_host(x))

    def _layers(self, be, il0: int, il1: int, x, n: int, pos0: int, batch=None, slots=None):
        """Layers il0..il1-1, all on backend be, for n tokens at positions pos0..: x (n, d) is the
        residual stream (updated in place); returns (x, xn) with xn (n, d) = the norm after the
        last layer applied to x (the next layer's attn_norm, or output_norm).
        With a ``TokenBatch`` and a ``SlotKVCache`` (slots) the tokens belong to several
        sequences: the projections see all n rows, attention runs per span over its slot."""
        c = self.config
        H, Hkv, hd = c.n_head, c.n_head_kv, c.head_dim
        st = self._step_bufs[id(be)] if n == 1 else self._buffers(be, n)
        if batch is not None:
            st = replace(st, decode=batch.n_decode)
        xn, attn, ffn = st.xn, st.attn, self.ffn
        # a mixture-of-experts model's prompt rounds the activations of its expert products already:
        # its attention projections may take the faster rounded product too (Backend.linear); a
        # dense model's prompt keeps its exact float activations
        rounded = ffn.moe
        be.rms_norm(x, self.blk[il0].attn_norm, c.norm_eps, xn)
        for il in range(il0, il1):
            b = self.blk[il]
            qkv = be.linear_fused(b.attn_qkv, xn, out=st.qkv, decode=st.decode,
                                  rounded=rounded)                 # (n, (H + 2 Hkv) hd)
            q3 = qkv[:, :H * hd].reshape(n, H, hd)               # (n, H, hd)
            k3 = qkv[:, H * hd:(H + Hkv) * hd].reshape(n, Hkv, hd)   # (n, Hkv, hd)
            v3 = qkv[:, (H + Hkv) * hd:].reshape(n, Hkv, hd)     # (n, Hkv, hd)
            if batch is None:
                self._attend(be, b, q3, k3, v3, *self.cache.layer(il), pos0, attn)   # cache (n_ctx, Hkv, hd)
            else:
                done = self._attend_steps(be, b, il, batch, slots, q3, k3, v3, attn)
                for s in batch.spans[done:]:                     # each sequence over its own slot
                    self._attend(be, b, q3[s.row0:s.row1], k3[s.row0:s.row1], v3[s.row0:s.row1],
                                 *slots.region(il, s.slot), s.pos0, attn[s.row0:s.row1])
            o = be.linear(b.attn_output, attn.reshape(n, H * hd), out=st.proj, decode=st.decode,
                          rounded=rounded)                         # (n, d)
            if b.attn_output_b is not None:
                be.add_bias(o, b.attn_output_b)
            be.add_rms_norm(x, o, b.post_attention_norm, b.ffn_norm, c.norm_eps, xn)
            out = ffn(be, b, xn, st)                             # (n, d)
            be.add_rms_norm(x, out, b.post_ffw_norm, b.next_norm, c.norm_eps, xn)
        return x, xn

    def _attend(self, be, b: Block, q3, k3, v3, k_cache, v_cache, pos0: int, out3) -> None:
        """One sequence's attention for layer b: its n new tokens at positions pos0.. stored in
        (k_cache, v_cache) (C, Hkv, hd) and attending to rows 0..pos0+n-1 there.  out3 (n, H, hd)."""
        c = self.config
        be.qkv_prepare(q3, k3, v3, b.attn_q_bias, b.attn_k_bias, b.attn_v_bias,
                       b.attn_q_norm, b.attn_k_norm, c.norm_eps, b.rope, pos0, c.rope_neox,
                       k_cache, v_cache)                         # + cache rows pos0..pos0+n-1
        be.attention(q3, k_cache, v_cache, pos0, c.attn_scale, b.sliding_window, c.attn_logit_softcap, out3,
                     sinks=b.attn_sinks)

    def _attend_steps(self, be, b: Block, il: int, batch, slots, q3, k3, v3, attn) -> int:
        """The decode steps of a batch (its first n_decode spans, one row each) stored, then
        attended in one backend call (Backend.attention_steps); returns how many spans it did
        (0 when fewer than two: the caller attends every span by itself)."""
        d = batch.n_decode
        if d < 2:
            return 0
        c = self.config
        spans = batch.spans[:d]
        for s in spans:
            be.qkv_prepare(q3[s.row0:s.row1], k3[s.row0:s.row1], v3[s.row0:s.row1], b.attn_q_bias, b.attn_k_bias,
                           b.attn_v_bias, b.attn_q_norm, b.attn_k_norm, c.norm_eps, b.rope, s.pos0, c.rope_neox,
                           *slots.region(il, s.slot))     # + the cache row of each sequence
        k_all, v_all = slots.kv.layer(il)
        base = np.asarray([s.slot * slots.n_ctx_slot for s in spans], dtype=np.int64)
        pos = np.asarray([s.pos0 for s in spans], dtype=np.int64)
        be.attention_steps(q3[:d], k_all, v_all, base, pos, slots.n_ctx_slot, c.attn_scale, b.sliding_window,
                           c.attn_logit_softcap, attn[:d], sinks=b.attn_sinks)
        return d

    def shift(self, cache, plan, n_past: int, base: int = 0) -> None:
        """A context shift (``context_shift.ShiftPlan``) of the sequence of n_past tokens at rows
        base.. of cache (the model's own cache, or the ``kv`` of a ``SlotKVCache``): later entries
        move into the dropped gap, keys re-rotated with each layer's own RoPE tables."""
        from .context_shift import shift_cache
        shift_cache(cache, [b.rope_host for b in self.blk], self.config.rope_neox, plan, n_past, base)

    # ------------------------------------------------------------------------------------
    def slot_cache(self, n_slots: int, n_ctx_slot: int, cache_type: str = "f32"):
        """A ``SlotKVCache`` of n_slots sequences of up to n_ctx_slot tokens for ``forward_batch``
        (CPU only: a model with offloaded layers is refused)."""
        from .batch import SlotKVCache
        if len(self._runs) != 1 or self._runs[0][2] is not self.backend or self.output_backend is not self.backend:
            raise ValueError("several sequences per pass run on the CPU only: load the model without "
                             "offloaded layers (-ngl 0)")
        if n_ctx_slot > self.n_ctx:
            raise ValueError(f"a slot context of {n_ctx_slot} exceeds the model's RoPE tables ({self.n_ctx})")
        c = self.config
        kv = self.backend.kv_cache(c.n_layer, n_slots * n_ctx_slot, c.n_head_kv, c.head_dim, cache_type)
        return SlotKVCache(kv, n_slots, n_ctx_slot)

    def forward_batch(self, batch, slots):
        """Evaluate a ``TokenBatch`` of several sequences in one pass over the layers (each weight
        read once for all its rows) into their slots of ``slots`` (a ``SlotKVCache`` from
        ``slot_cache``).  Returns the logits (len(batch.logit_rows), n_vocab) of the rows asked for.
        The caller tracks each slot's position; the cache only stores."""
        n = int(batch.tokens.shape[0])
        x = self._embed(batch.tokens)                                     # (n, d) residual stream
        x, xn = self._layers(self.backend, 0, len(self.blk), x, n, 0, batch=batch, slots=slots)
        if not batch.logit_rows:
            return np.zeros((0, self.config.n_vocab), dtype=np.float32)
        rows = xn[np.asarray(batch.logit_rows, dtype=np.int64)]           # (k, d)
        return self._logits(self.backend, rows, decode=rows.shape[0])      # each as the lone run's matvec

    def _embed(self, tokens: np.ndarray):
        """The residual stream (n, d) of tokens (n,) on the host backend: embedding rows, scaled
        where the architecture scales them."""
        x = self.backend.embed(self.token_embd, tokens)
        if self.config.embd_scale != 1.0:
            x *= np.float32(self.config.embd_scale)
        return x

    def _logits(self, be, rows, decode=None):
        """Logits (k, n_vocab) of final hidden states rows (k, d) on the output backend be,
        soft-capped where the architecture caps them (decode: as Backend.linear takes it)."""
        logits = be.linear(self.output, rows, decode=decode)
        if self.config.final_logit_softcap > 0:
            be.softcap(logits, self.config.final_logit_softcap)
        return logits

    # ------------------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, output: str = "last"):
        """Evaluate tokens (n,) at positions n_past.. and advance the cache.

        output: "last" -> logits (1, n_vocab) of the last token; "all" -> (n, n_vocab);
        "hidden" -> final-normed hidden states (n, d); "none" -> None.  The result lives on
        ``output_backend``.  The caller checks that the cache has room.
        """
        n = int(tokens.shape[0])
        pos0 = self.cache.n_past

        cur = self.backend                                 # the backend holding x
        x = self._embed(tokens)                            # (n, d) residual stream
        for il0, il1, be in self._runs:
            if be is not cur:                              # a device boundary: x crosses once
                x = self._cross(x, cur, be)                # (n, d)
                cur = be
            if n == 1:                                     # a decode step: the backend may replay it
                x, xn = be.run_layers((self, il0), partial(self._layers, be, il0, il1, n=1, pos0=pos0), x, pos0)
            else:
                x, xn = self._layers(be, il0, il1, x, n, pos0)
        # xn = output_norm(x): final hidden states (n, d) on cur

        self.cache.n_past = pos0 + n
        if output == "none":
            return None
        out_be = self.output_backend
        rows = xn if output in ("all", "hidden") else xn[n - 1:]   # (n or 1, d)
        if out_be is not cur:                                    # the output layer stays on the host
            rows = self._cross(rows, cur, out_be)
        if output == "hidden":
            return rows.copy() if n == 1 else rows
        return self._logits(out_be, rows)                        # (n or 1, n_vocab)
