"""Preallocated key/value cache.

Keys and values each have their own type (llama.cpp's ``-ctk``/``-ctv``): f32, f16, bf16, q8_0,
q4_0, q4_1, iq4_nl, q5_0 or q5_1.  Every (position, kv head) row of head_dim values is stored
in that type: f32 and f16 as float arrays (n_layer, n_ctx, n_head_kv, head_dim), the others as
the GGML type's bytes (n_layer, n_ctx, n_head_kv, row bytes), quantized with the engine's
bit-exact encoders as rows are written.  Position p of layer l lives at [l, p]; ``n_past``
counts the positions that hold valid entries.  Keys are stored after RoPE.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.types import BLOCK_SIZES, GGMLType, row_bytes

# llama.cpp's KV cache types (common/arg.cpp's list, in its order) -> GGML type
CACHE_TYPES: dict[str, GGMLType] = {
    "f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16, "q8_0": GGMLType.Q8_0,
    "q4_0": GGMLType.Q4_0, "q4_1": GGMLType.Q4_1, "iq4_nl": GGMLType.IQ4_NL, "q5_0": GGMLType.Q5_0,
    "q5_1": GGMLType.Q5_1,
}
# the types kept as float arrays (every backend reads them); the rest are rows of GGML blocks
FLOAT_CACHE_DTYPES = {"f32": np.float32, "f16": np.float16}
QUANTIZED_CACHE_TYPES = ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def cache_type_name(t) -> str:
    """A cache type as llama.cpp names it, from a name (any case) or a GGML type id / enum;
    ValueError listing the allowed types otherwise."""
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        for name, gt in CACHE_TYPES.items():
            if int(gt) == int(t):
                return name
    elif isinstance(t, str) and t.lower() in CACHE_TYPES:
        return t.lower()
    raise ValueError(f"unsupported KV cache type {t!r}; allowed: {', '.join(CACHE_TYPES)}")


@dataclass(frozen=True)
class KVTypes:
    """The element types of the key and the value cache (llama.cpp's type_k, type_v)."""
    k: str = "f32"
    v: str = "f32"

    def __post_init__(self):
        object.__setattr__(self, "k", cache_type_name(self.k))
        object.__setattr__(self, "v", cache_type_name(self.v))

    @classmethod
    def of(cls, spec: "KVTypes | str | tuple") -> "KVTypes":
        """A ``KVTypes`` from itself, one name for both, or a (k, v) pair."""
        if isinstance(spec, KVTypes):
            return spec
        if isinstance(spec, (tuple, list)):
            return cls(*spec)
        return cls(spec, spec)

    @property
    def quantized_v(self) -> bool:
        return self.v in QUANTIZED_CACHE_TYPES

    @classmethod
    def from_options(cls, type_k=None, type_v=None, default: "KVTypes | str" = "f32") -> "KVTypes":
        """llama.cpp's pair of options: each side a name or a GGML type id, None for the default's."""
        base = cls.of(default)
        return cls(base.k if type_k is None else type_k, base.v if type_v is None else type_v)

    def check_flash_attn(self, flash_attn: bool, how: str) -> None:
        """ValueError when flash attention is off and V is quantized: llama.cpp reads a quantized V
        cache only in its flash-attention path and refuses the pair; so does the engine, whose
        attention kernels are the same for every type.  how: how the user turned it off."""
        if self.quantized_v and not flash_attn:
            raise ValueError(f"a quantized V cache ({self.v}) requires flash attention, as in llama.cpp: "
                             f"drop {how} or choose an f32, f16 or bf16 V cache")

    def check(self, head_dim: int) -> None:
        """ValueError when a side's type does not divide head_dim into whole blocks (llama.cpp
        refuses such a cache too: a row per head must be whole blocks)."""
        for side, name in (("K", self.k), ("V", self.v)):
            bs = BLOCK_SIZES[CACHE_TYPES[name]][0]
            if head_dim % bs:
                raise ValueError(f"{side} cache type {name} with block size {bs} does not divide the model's "
                                 f"head size {head_dim}; choose f16, f32 or bf16 for it")

    def __str__(self) -> str:
        return self.k if self.k == self.v else f"k={self.k}, v={self.v}"


def rotation_size(name: str, head_dim: int, side: str) -> int:
    """The order of the Walsh-Hadamard rotation applied to a side's rows before they are quantized
    (0: none), as llama.cpp chooses it: only for quantized types and head sizes that are multiples
    of 64; keys (with the queries) by the largest power of two dividing the head size, values by 64.
    The rotation is orthonormal, so q.k and the attention output are unchanged in exact arithmetic,
    while outlier channels are spread over the block: far less quantization error."""
    if name not in QUANTIZED_CACHE_TYPES or head_dim % 64:
        return 0
    if side == "v":
        return 64
    n = 64
    while head_dim % (2 * n) == 0:
        n *= 2
    return n


class BlockRows:
    """Cache rows stored as GGML bytes: ``data`` uint8 (C, n_head_kv, row bytes) holding rows of
    ``head_dim`` values of type ``type``, rotated by the Walsh-Hadamard matrix of order ``rot``
    (0: not rotated) before they were quantized.  Slicing the first axis gives the rows of a range
    of positions (a view), as for a float cache array."""
    __slots__ = ("data", "type", "head_dim", "rot")

    def __init__(self, data, t: GGMLType, head_dim: int, rot: int = 0):
        self.data, self.type, self.head_dim, self.rot = data, GGMLType(t), int(head_dim), int(rot)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The logical shape (C, n_head_kv, head_dim)."""
        return (self.data.shape[0], self.data.shape[1], self.head_dim)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, key) -> "BlockRows":
        if not isinstance(key, slice):
            raise TypeError("BlockRows takes a slice of positions")
        return BlockRows(self.data[key], self.type, self.head_dim, self.rot)


def stored(rows):
    """The array holding a layer view's rows as stored: a float array, or ``BlockRows``' bytes."""
    return rows.data if isinstance(rows, BlockRows) else rows


def cache_rows(rows):
    """(uint8 rows (C, n_head_kv, row bytes), GGML type id) of one side of a cache layer (a float
    array or ``BlockRows``), the form the block-format attention kernels take."""
    if isinstance(rows, BlockRows):
        return rows.data, int(rows.type)
    t = GGMLType.F16 if rows.dtype == np.float16 else GGMLType.F32
    return rows.view(np.uint8), int(t)


class _PositionCount:
    """What every cache derives from ``n_ctx`` and ``n_past``: free room, truncate, reset."""

    def truncate(self, n: int) -> None:
        """Keep only the first n positions (entries past n are overwritten later)."""
        if n < 0:
            raise ValueError(f"cannot truncate the cache to {n} positions")
        self.n_past = min(self.n_past, int(n))

    def reset(self) -> None:
        self.n_past = 0


def _side_array(name: str, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, xp):
    """The zeroed storage of one side (keys or values) of type name."""
    if name in FLOAT_CACHE_DTYPES:
        return xp.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=FLOAT_CACHE_DTYPES[name])
    return xp.zeros((n_layer, n_ctx, n_head_kv, row_bytes(CACHE_TYPES[name], head_dim)), dtype=np.uint8)


class KVCache(_PositionCount):
    """The cache of n_layer layers; ``k``/``v`` hold every layer (see the module docstring).

    Besides ``layer``/``store`` (what attention uses) it offers position-range access for
    cache editing (e.g. a context shift): ``read_k``/``read_v`` decode rows to float32,
    ``write_k``/``write_v`` encode them, ``move`` copies rows' bytes."""

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int,
                 cache_type: "KVTypes | str | tuple" = "f32", xp=np):
        types = KVTypes.of(cache_type)
        types.check(head_dim)
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.cache_type = types
        self.type_k, self.type_v = types.k, types.v
        self.n_ctx = n_ctx
        self.xp = xp
        self.head_dim = int(head_dim)
        self.rot_k = rotation_size(types.k, self.head_dim, "k")   # Walsh-Hadamard orders (0: none)
        self.rot_v = rotation_size(types.v, self.head_dim, "v")
        self.k = _side_array(types.k, n_layer, n_ctx, n_head_kv, head_dim, xp)
        self.v = _side_array(types.v, n_layer, n_ctx, n_head_kv, head_dim, xp)
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)

    def _view(self, arr, name: str, rot: int):
        return arr if name in FLOAT_CACHE_DTYPES else BlockRows(arr, CACHE_TYPES[name], self.head_dim, rot)

    def layer(self, il: int):
        """(k, v) views of one layer: float arrays (n_ctx, n_head_kv, head_dim) for f32/f16,
        ``BlockRows`` for the block types."""
        return (self._view(self.k[il], self.type_k, self.rot_k),
                self._view(self.v[il], self.type_v, self.rot_v))

    def store(self, il: int, pos0: int, k3, v3) -> None:
        """Write n new positions starting at pos0. k3, v3: (n, n_head_kv, head_dim) float32."""
        self.write_k(il, pos0, k3)
        self.write_v(il, pos0, v3)

    # --- position-range access ---------------------------------------------------------
    def _read(self, arr, name: str, rot: int, il: int, p0: int, p1: int) -> np.ndarray:
        self._check_range(p0, p1)
        rows = arr[il, p0:p1]
        if name in FLOAT_CACHE_DTYPES:
            return np.asarray(rows.get() if hasattr(rows, "get") else rows, dtype=np.float32)
        from kernels.attention_kv import hadamard_rows, load_rows
        out = np.empty((p1 - p0, rows.shape[1], self.head_dim), dtype=np.float32)
        load_rows(int(CACHE_TYPES[name]), np.ascontiguousarray(rows), out)
        if rot:
            hadamard_rows(out, rot)                     # back from the stored rotation
        return out

    def _write(self, arr, name: str, rot: int, il: int, p0: int, x3) -> None:
        self._check_range(p0, p0 + x3.shape[0])
        if name in FLOAT_CACHE_DTYPES:                          # (n, n_head_kv, head_dim), to the array's device
            arr[il, p0:p0 + x3.shape[0]] = self.xp.asarray(np.asarray(x3, dtype=arr.dtype))
            return
        from kernels.attention_kv import hadamard_rows, store_rows
        x3 = np.array(x3, dtype=np.float32, order="C")          # a copy: it may be rotated
        if rot:
            hadamard_rows(x3, rot)
        t = int(CACHE_TYPES[name])
        store_rows(x3, x3, t, t, arr[il], arr[il], p0)   # the same rows twice: one side written

    def _check_range(self, p0: int, p1: int) -> None:
        if not 0 <= p0 <= p1 <= self.n_ctx:
            raise ValueError(f"cache positions {p0}..{p1 - 1} are outside 0..{self.n_ctx - 1}")

    def read_k(self, il: int, p0: int, p1: int) -> np.ndarray:
        """Keys of positions p0..p1-1 of layer il, decoded: float32 (p1 - p0, n_head_kv, head_dim)."""
        return self._read(self.k, self.type_k, self.rot_k, il, p0, p1)

    def read_v(self, il: int, p0: int, p1: int) -> np.ndarray:
        """Values of positions p0..p1-1 of layer il, decoded: float32 (p1 - p0, n_head_kv, head_dim)."""
        return self._read(self.v, self.type_v, self.rot_v, il, p0, p1)

    def write_k(self, il: int, p0: int, k3) -> None:
        """Keys k3 (n, n_head_kv, head_dim) float32 into positions p0.. of layer il, encoded."""
        self._write(self.k, self.type_k, self.rot_k, il, p0, k3)

    def write_v(self, il: int, p0: int, v3) -> None:
        """Values v3 (n, n_head_kv, head_dim) float32 into positions p0.. of layer il, encoded."""
        self._write(self.v, self.type_v, self.rot_v, il, p0, v3)

    def move(self, il: int, src0: int, dst0: int, n: int) -> None:
        """Copy the keys and values of positions src0..src0+n-1 of layer il to dst0.. (the stored
        bytes as they are; the ranges may overlap)."""
        self._check_range(src0, src0 + n)
        self._check_range(dst0, dst0 + n)
        for arr in (self.k, self.v):
            arr[il, dst0:dst0 + n] = arr[il, src0:src0 + n].copy()


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
        self.cache_type, self.n_ctx = first.cache_type, first.n_ctx
        self.type_k, self.type_v = first.type_k, first.type_v
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

    def read_v(self, il: int, p0: int, p1: int) -> np.ndarray:
        part, i = self._where[il]
        return part.read_v(i, p0, p1)

    def write_k(self, il: int, p0: int, k3) -> None:
        part, i = self._where[il]
        part.write_k(i, p0, k3)

    def write_v(self, il: int, p0: int, v3) -> None:
        part, i = self._where[il]
        part.write_v(i, p0, v3)

    def move(self, il: int, src0: int, dst0: int, n: int) -> None:
        part, i = self._where[il]
        part.move(i, src0, dst0, n)
