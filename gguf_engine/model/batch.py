"""Several sequences in one forward pass: the batch description and the per-slot KV cache.

A ``TokenBatch`` is llama.cpp's ``llama_batch`` in the form the transformer wants it: the new
tokens of every sequence in one array, each sequence's tokens contiguous (a ``SeqSpan``) with its
slot and the position of its first token.  One pass evaluates them all, so every weight is read
once for the whole batch; only attention runs per sequence, over that sequence's own cache region.

``SlotKVCache`` is one ``KVCache`` of n_slots * n_ctx_slot positions; slot s owns rows
[s * n_ctx_slot, (s + 1) * n_ctx_slot) of every layer, so a sequence's attention can only ever
see its own keys.  Positions inside a slot start at 0, like a context of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SeqSpan:
    """The tokens rows row0..row1-1 of a batch belong to slot ``slot`` at positions pos0.."""
    row0: int
    row1: int
    slot: int
    pos0: int

    @property
    def n(self) -> int:
        return self.row1 - self.row0


@dataclass
class TokenBatch:
    """tokens (n,) int32; spans cover 0..n in order; logit_rows: the rows whose logits come back
    (in this order), e.g. the last row of each span that needs a next token.  The first
    n_decode rows are decode steps (one generated token of a sequence each): the products
    compute each of them exactly as the single-sequence decode step does (``Weight.matmul_decode``),
    so a sequence's tokens do not depend on what else shares its passes; the other rows are
    prompt rows (float products, as a single sequence's prompt)."""
    tokens: np.ndarray
    spans: list[SeqSpan] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)
    n_decode: int = 0

    @classmethod
    def build(cls, parts: list[tuple[int, int, list[int], bool]], n_decode: int = 0) -> "TokenBatch":
        """parts: (slot, pos0, tokens, wants the last token's logits) per sequence; the first
        n_decode parts are decode steps, one token each."""
        if not 0 <= n_decode <= len(parts) or any(len(p[2]) != 1 for p in parts[:n_decode]):
            raise ValueError(f"the first {n_decode} parts of a batch must be decode steps of one token each")
        toks: list[int] = []
        spans, rows = [], []
        for slot, pos0, ids, want in parts:
            if not ids:
                continue
            r0 = len(toks)
            toks.extend(int(t) for t in ids)
            spans.append(SeqSpan(r0, len(toks), int(slot), int(pos0)))
            if want:
                rows.append(len(toks) - 1)
        return cls(np.asarray(toks, dtype=np.int32), spans, rows, int(n_decode))


class SlotKVCache:
    """n_slots independent KV regions of n_ctx_slot positions each, in one ``KVCache``."""

    def __init__(self, kv, n_slots: int, n_ctx_slot: int):
        if kv.n_ctx != n_slots * n_ctx_slot:
            raise ValueError(f"a cache of {kv.n_ctx} positions cannot hold {n_slots} slots of {n_ctx_slot}")
        self.kv = kv
        self.n_slots = int(n_slots)
        self.n_ctx_slot = int(n_ctx_slot)

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes

    @property
    def type_k(self) -> str:
        return self.kv.type_k

    @property
    def type_v(self) -> str:
        return self.kv.type_v

    def region(self, il: int, slot: int):
        """(k, v) of one layer and one slot: (n_ctx_slot, n_head_kv, head_dim) views each (float
        arrays, or ``BlockRows`` for the block types)."""
        k, v = self.kv.layer(il)
        r0 = slot * self.n_ctx_slot
        return k[r0:r0 + self.n_ctx_slot], v[r0:r0 + self.n_ctx_slot]

    def check(self, batch: TokenBatch) -> None:
        """Every span fits its slot and names a slot that exists."""
        for s in batch.spans:
            if not 0 <= s.slot < self.n_slots:
                raise ValueError(f"slot {s.slot} does not exist (0..{self.n_slots - 1})")
            if s.pos0 < 0 or s.pos0 + s.n > self.n_ctx_slot:
                raise ValueError(f"slot {s.slot}: positions {s.pos0}..{s.pos0 + s.n - 1} do not fit its "
                                 f"context of {self.n_ctx_slot}")
