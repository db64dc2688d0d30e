"""Preallocated key/value cache.

One array each for keys and values, shape (n_layer, n_ctx, n_head_kv, head_dim),
float32 or float16.  Position p of layer l lives at [l, p]; ``n_past`` counts
the positions that hold valid entries.  Keys are stored after RoPE.

Besides the attention's own access (``layer``, ``store``), every cache type offers
``read_k``/``write_k`` (keys as float32 whatever the storage) and ``move`` (keys and values
of a run of positions): what a context shift needs to re-rotate kept keys in place.
"""
from __future__ import annotations

import numpy as np

CACHE_TYPES = {"f32": np.float32, "f16": np.float16}


class _PositionCount:
    """What every cache derives from ``n_ctx`` and ``n_past``: free room, truncate, reset."""

    @property
    def n_free(self) -> int:
        return self.n_ctx - self.n_past

    def truncate(self, n: int) -> None:
        """Keep only the first n positions (entries past n are overwritten later)."""
        if n < 0:
            raise ValueError(f"cannot truncate the cache to {n} positions")
        self.n_past = min(self.n_past, int(n))

    def reset(self) -> None:
        self.n_past = 0


class KVCache(_PositionCount):
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, cache_type: str = "f32",
                 xp=np):
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"cache_type must be one of {sorted(CACHE_TYPES)}, got {cache_type!r}")
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.cache_type = cache_type
        self.dtype = np.dtype(CACHE_TYPES[cache_type])
        self.n_ctx = n_ctx
        shape = (n_layer, n_ctx, n_head_kv, head_dim)
        self.xp = xp
        self.k = xp.zeros(shape, dtype=self.dtype)  # (n_layer, n_ctx, n_head_kv, head_dim)
        self.v = xp.zeros(shape, dtype=self.dtype)  # (n_layer, n_ctx, n_head_kv, head_dim)
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)

    def layer(self, il: int):
        """(k, v) views of one layer: (n_ctx, n_head_kv, head_dim) each."""
        return self.k[il], self.v[il]

    def store(self, il: int, pos0: int, k3, v3) -> None:
        """Write n new positions starting at pos0. k3, v3: (n, n_head_kv, head_dim) float32."""
        n = k3.shape[0]
        self.k[il, pos0:pos0 + n] = k3
        self.v[il, pos0:pos0 + n] = v3

    def read_k(self, il: int, p0: int, p1: int) -> np.ndarray:
        """The keys of positions p0..p1-1 of layer il as a host float32 array (p1 - p0, n_head_kv, head_dim)."""
        k = self.k[il, p0:p1]
        return np.asarray(k.get() if hasattr(k, "get") else k, dtype=np.float32)

    def write_k(self, il: int, p0: int, k3: np.ndarray) -> None:
        """Overwrite the keys of positions p0.. of layer il with k3 (n, n_head_kv, head_dim) float32
        (rounded to the cache's type)."""
        self.k[il, p0:p0 + k3.shape[0]] = self.xp.asarray(np.asarray(k3, dtype=self.dtype))

    def move(self, il: int, src0: int, dst0: int, n: int) -> None:
        """Copy the keys and values of positions src0..src0+n-1 of layer il to dst0.. (the ranges may overlap)."""
        for a in (self.k, self.v):
            a[il, dst0:dst0 + n] = a[il, src0:src0 + n].copy()


class SplitKVCache(_PositionCount):
    """The cache of a model whose layers live on several backends: one ``KVCache`` per run of
    consecutive layers, each allocated by (and living on) the backend of those layers.

    parts: [(first_layer, KVCache), ...] in layer order, covering every layer.  Offers the
    ``KVCache`` interface; ``n_past`` is shared by all parts."""

    def __init__(self, parts: list[tuple[int, KVCache]]):
        if not parts or parts[0][0] != 0:
            raise ValueError("the cache parts must start at layer 0")
        self.parts = list(parts)
        first = self.parts[0][1]
        self.cache_type, self.dtype, self.n_ctx = first.cache_type, first.dtype, first.n_ctx
        self._where: list[tuple[KVCache, int]] = []     # layer -> (part, layer index inside it)
        for p0, part in self.parts:
            if p0 != len(self._where):
                raise ValueError(f"cache part starting at layer {p0} leaves a gap or overlaps")
            self._where.extend((part, i) for i in range(part.k.shape[0]))
        self.n_past = 0

    @property
    def n_past(self) -> int:
        return self.parts[0][1].n_past

    @n_past.setter
    def n_past(self, n: int) -> None:
        for _, part in self.parts:
            part.n_past = n

    @property
    def n_layer(self) -> int:
        return len(self._where)

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for _, part in self.parts)

    def layer(self, il: int):
        part, i = self._where[il]
        return part.layer(i)

    def store(self, il: int, pos0: int, k3, v3) -> None:
        part, i = self._where[il]
        part.store(i, pos0, k3, v3)

    def read_k(self, il: int, p0: int, p1: int) -> np.ndarray:
        part, i = self._where[il]
        return part.read_k(i, p0, p1)

    def write_k(self, il: int, p0: int, k3: np.ndarray) -> None:
        part, i = self._where[il]
        part.write_k(i, p0, k3)

    def move(self, il: int, src0: int, dst0: int, n: int) -> None:
        part, i = self._where[il]
        part.move(i, src0, dst0, n)
