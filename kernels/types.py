"""The GGML tensor type enum and its block-size table.

This is the one place that says how many weights a block holds and how many
bytes it takes.  Everything else (the GGUF reader, the decoders, the
quantizer) asks this table.  ``QuantType`` is the entry a family module
(kernels.floats, legacy, kquants, iquants, ternary) gives for each of its types;
kernels.registry collects them.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Callable


class GGMLType(IntEnum):
    """Tensor types as numbered in ggml.h (gaps are retired types)."""
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42


QK_K = 256  # super-block size of the k-quants and i-quants

# type -> (weights per block, bytes per block)
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 4 + 32),
    GGMLType.Q2_K: (256, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (256, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (256, 2 + 2 + QK_K // 2 + 12),
    GGMLType.Q5_K: (256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    GGMLType.Q6_K: (256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    GGMLType.Q8_K: (256, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (256, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (256, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (256, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: (256, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (256, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (256, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 2 + 4 * 13),
    GGMLType.TQ2_0: (256, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
    GGMLType.NVFP4: (64, 4 + 32),
    GGMLType.Q1_0: (128, 2 + 16),
    GGMLType.Q2_0: (64, 2 + 16),
}


def as_type(t: "GGMLType | int | str") -> GGMLType:
    """Accept the enum, its integer value or its name (case-insensitive)."""
    if isinstance(t, GGMLType):
        return t
    if isinstance(t, str):
        try:
            return GGMLType[t.upper()]
        except KeyError:
            raise ValueError(f"unknown GGML type name {t!r}; known: "
                             + ", ".join(m.name for m in GGMLType)) from None
    try:
        return GGMLType(int(t))
    except ValueError:
        raise ValueError(f"unknown GGML type id {t!r}") from None


def block_size(t) -> int:
    return BLOCK_SIZES[as_type(t)][0]


def type_size(t) -> int:
    return BLOCK_SIZES[as_type(t)][1]


def row_bytes(t, n_per_row: int) -> int:
    """Bytes taken by one row of n_per_row weights; n_per_row must be a whole number of blocks."""
    bs, ts = BLOCK_SIZES[as_type(t)]
    if n_per_row % bs:
        raise ValueError(f"{as_type(t).name}: row length {n_per_row} is not a multiple of its block size {bs}")
    return n_per_row // bs * ts


def bits_per_weight(t) -> float:
    bs, ts = BLOCK_SIZES[as_type(t)]
    return ts * 8 / bs


@dataclass(frozen=True)
class QuantType:
    """One GGML type as its family module describes it: the block layout (field, bytes, meaning),
    the exact decoder ``decode(src: uint8[::1] of n whole blocks, dst: float32[::1] of n * block_size)``
    (serial, nogil Numba), the encoder ``encode(x float32 (n_rows, n_per_row), imatrix or None) ->
    uint8 (n_rows, row_bytes)`` (None: decode only) and the packed kind it repacks into for the
    matvec (a kernels.kinds.Kind; None: the raw kind, the file's bytes decoded on the fly)."""
    type: GGMLType
    layout: str
    decode: Callable
    encode: Callable | None = None
    kind: object = None

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def block_size(self) -> int:
        """Weights per block."""
        return BLOCK_SIZES[self.type][0]

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return BLOCK_SIZES[self.type][1]

    def row_bytes(self, n_per_row: int) -> int:
        return row_bytes(self.type, n_per_row)
