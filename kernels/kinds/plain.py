"""Kinds ``f32``, ``f16`` and ``bf16``: float weights kept as they are (F32, F16, BF16).

Layout: ``w`` (rows, cols), float32 for F32, the values' bits for F16 (uint16) and BF16 (int16:
a dtype of its own, so that one matvec and one decoder serve the three formats, told apart by
their element type).

Matvec: a plain float32 dot per row, parallel over rows (serial for a small matrix such as a
mixture-of-experts router, bit-identical), the F16 bits widened by vcvtph2ps where
the host has F16C (a NaN weight gives a NaN product whatever its payload); the exact decoder
widens with numerics' bit-exact conversions.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..numerics import bf16_bits_to_f32, f16_bits_to_f32
from ..simd import SIMD_BEST
from ..types import GGMLType
from . import Kind, Packed, register
from .tiled import scale

f32 = np.float32


def exact(v):
    """A stored weight as float32, bit-exact (NaN payloads kept).  (Callable from Numba code only.)"""
    raise NotImplementedError("exact runs inside Numba kernels")


@overload(exact, inline="always")
def _exact_impl(v):
    if v == types.int16:
        return lambda v: bf16_bits_to_f32(np.uint16(v))
    if v == types.uint16:
        return lambda v: f16_bits_to_f32(v)
    return lambda v: v


# Below this many weights a float matvec runs on the calling thread (matvec_plain_serial): a
# mixture-of-experts router (32 x 1024 weights) costs less than a parallel loop's launch and barrier.
SERIAL_MAX_WEIGHTS = 1 << 16


@njit(fastmath=True, cache=True, inline="always")
def dot_row(wr, x):
    """sum_j wr[j] x[j] in float32 (the row's order as the vectorizer sums it)."""
    acc = f32(0)
    for j in range(x.size):
        acc += scale(wr[j]) * x[j]
    return acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_plain(w, x, y):
    """y (rows,) = w (rows, cols) x, float32 sums, one row per thread."""
    for r in prange(w.shape[0]):
        y[r] = dot_row(w[r], x)


@njit(fastmath=True, cache=True)
def matvec_plain_serial(w, x, y):
    """matvec_plain on the calling thread, bit-identical to it (the same row sums)."""
    for r in range(w.shape[0]):
        y[r] = dot_row(w[r], x)


@njit(nogil=True, cache=True)
def decode_plain(w, ids, out):
    cols = w.shape[1]
    for i in range(ids.size):
        wr = w[ids[i]]
        o = out[i]
        for j in range(cols):
            o[j] = exact(wr[j])


class PlainKind(Kind):
    """f32 / f16 / bf16 (see the module docstring)."""

    def __init__(self, name: str, t: GGMLType, dtype):
        self.name, self.types, self.dtype = name, {t: None}, dtype

    def pack(self, raw, t, cols, release=None, chunk_bytes=0) -> Packed:
        return Packed(self, t, raw.shape[0], cols, {"w": np.array(raw.view(self.dtype), copy=True)})

    def matvec(self, p: Packed, simd: int = SIMD_BEST):
        w = p.arrays["w"]
        kernel = matvec_plain_serial if w.size <= SERIAL_MAX_WEIGHTS else matvec_plain
        return lambda x, out: kernel(w, x, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_plain(p.arrays["w"], ids, out)

    def tile(self, p: Packed, r0, r1, buf):
        if self.dtype == np.float32:
            return p.arrays["w"][r0:r1]          # a view: nothing to decode
        return super().tile(p, r0, r1, buf)


F32 = register(PlainKind("f32", GGMLType.F32, np.float32))
F16 = register(PlainKind("f16", GGMLType.F16, np.uint16))
BF16 = register(PlainKind("bf16", GGMLType.BF16, np.int16))
