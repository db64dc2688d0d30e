"""``Model``: the public face of a loaded transformer (evaluate, rewind, embed)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ContextFullError
from .memory import MemoryBreakdown, memory_breakdown
from .transformer import Transformer


class Model:
    """A loaded model with its KV cache.

    ``eval`` evaluates tokens after what the cache already holds: a follow-up
    prompt that extends the previous one only needs its new tokens.  Prompts go
    through in batches of ``n_batch`` tokens (batched matmul); one token goes
    through matvec.
    """

    def __init__(self, transformer: Transformer, reader, n_batch: int, owns_reader: bool,
                 n_gpu_layers: int = 0, device=None, tensors_used=()):
        self._tf = transformer
        self.config = transformer.config
        self.backend = transformer.backend        # host backend
        self.device = device                      # the backend layers are offloaded to (None: CPU only)
        self.reader = reader
        self.n_batch = int(n_batch)
        # layers actually offloaded, the output layer counting as one (as llama.cpp counts)
        self.n_gpu_layers = int(n_gpu_layers)
        self._owns_reader = owns_reader
        self.tensors_used = tuple(tensors_used)   # the file's tensors the model consumed (all of them)

    @property
    def n_offloadable_layers(self) -> int:
        """Repeating layers + the output layer."""
        return self.config.n_layer + 1

    @property
    def offload_summary(self) -> str:
        """``offloaded X/Y layers to GPU``, as llama.cpp reports it (Y counts the output layer)."""
        return f"offloaded {self.n_gpu_layers}/{self.n_offloadable_layers} layers to GPU"

    # --- state ------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._tf.n_ctx

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return self._tf.cache.n_past

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    @property
    def kv_cache(self):
        return self._tf.cache

    def truncate(self, n: int) -> None:
        """Drop cache entries past the first n tokens (to reuse a shared prefix)."""
        self._tf.cache.truncate(n)

    def reset(self) -> None:
        """Empty the KV cache."""
        self._tf.cache.reset()

    def shift(self, plan) -> None:
        """A context shift of the model's own cache (``context_shift.ShiftPlan``): positions
        [n_keep, n_keep + n_discard) are dropped, later ones move down with their keys re-rotated."""
        cache = self._tf.cache
        self._tf.shift(cache, plan, cache.n_past)
        cache.n_past -= plan.n_discard

    def memory_breakdown(self, rss: int = 0) -> MemoryBreakdown:
        """The buffers this model holds by name and by device (``memory.MemoryBreakdown``: weights,
        KV cache, compute buffers of an n_batch pass, file size); rss: a resident set measured by
        the caller (``memory.resident_bytes``), reported as given."""
        path = getattr(self.reader, "path", None) if self.reader is not None else None
        return memory_breakdown(self._tf, self.n_batch, None if path is None else str(path), rss)

    # --- evaluation -------------------------------------------------------------------
    def _check(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            ids = ids.reshape(-1)
        if ids.size == 0:
            raise ValueError("eval needs at least one token")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int32)
        bad = (ids < 0) | (ids >= self.config.n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{self.config.n_vocab - 1})")
        if self.n_past + ids.size > self.n_ctx:
            raise ContextFullError(
                f"context full: {self.n_past} tokens in the cache + {ids.size} new > n_ctx={self.n_ctx}; "
                f"start a new context (reset) or load the model with a larger n_ctx")
        return ids

    def eval(self, tokens: Sequence[int] | np.ndarray, logits_all: bool = False) -> np.ndarray:
        """Evaluate tokens after the cached ones; float32 logits for the last position
        (n_vocab,) or, with logits_all, for every new position (n_tokens, n_vocab)."""
        ids = self._check(tokens)
        return self._run(ids, "all" if logits_all else "last")

    def embed(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Evaluate tokens after the cached ones and return their final hidden states
        (after the output norm), float32 (n_tokens, n_embd)."""
        ids = self._check(tokens)
        return self._run(ids, "hidden")

    def _run(self, ids: np.ndarray, output: str) -> np.ndarray:
        be = self._tf.output_backend              # where the logits / hidden states come out
        parts = []
        n = ids.size
        with self.backend.scope():
            for start in range(0, n, self.n_batch):
                chunk = ids[start:start + self.n_batch]
                last = start + self.n_batch >= n
                mode = output if (output != "last" or last) else "none"
                res = self._tf.forward(chunk, mode)
                if res is not None:
                    parts.append(be.to_host(res))
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out[0] if output == "last" else out

    # --- several sequences ------------------------------------------------------------
    def slot_cache(self, n_slots: int, n_ctx_slot: int, cache_type: str = "f32"):
        """A KV cache of n_slots independent sequences of up to n_ctx_slot tokens (``SlotKVCache``),
        separate from the model's own cache, for ``eval_batch``."""
        if n_slots < 1 or n_ctx_slot < 1:
            raise ValueError(f"need at least one slot of at least one token, got {n_slots} x {n_ctx_slot}")
        return self._tf.slot_cache(int(n_slots), int(n_ctx_slot), cache_type)

    def shift_slot(self, slots, slot: int, plan, n_past: int) -> None:
        """A context shift of slot's sequence of n_past tokens in ``slots`` (a ``SlotKVCache``);
        the caller tracks the slot's new length (n_past - plan.n_discard)."""
        self._tf.shift(slots.kv, plan, n_past, base=int(slot) * slots.n_ctx_slot)

    def eval_batch(self, batch, slots) -> np.ndarray:
        """Evaluate a ``TokenBatch`` (the new tokens of several sequences, each in its slot of
        ``slots``) in one forward pass; float32 logits (len(batch.logit_rows), n_vocab)."""
        ids = batch.tokens
        if ids.size == 0:
            raise ValueError("eval_batch needs at least one token")
        bad = (ids < 0) | (ids >= self.config.n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{self.config.n_vocab - 1})")
        slots.check(batch)
        with self.backend.scope():
            out = self._tf.forward_batch(batch, slots)
        return np.ascontiguousarray(self._tf.output_backend.to_host(out), dtype=np.float32)

    # --- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_reader and self.reader is not None:
            self.reader.close()
        self.reader = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(arch={c.arch!r}, n_layer={c.n_layer}, n_embd={c.n_embd}, n_ctx={self.n_ctx}, "
                f"n_past={self.n_past}, backend={self.backend.name}"
                + (f", n_gpu_layers={self.n_gpu_layers} on {self.device.name}" if self.device is not None else "")
                + ")")
