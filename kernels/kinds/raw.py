"""Kind ``raw``: every type without a layout of its own, kept as the file's bytes.

Layout: ``raw`` uint8 (rows, row_bytes), decoded by the type's exact decoder (kernels.registry)
a few rows at a time into a per-thread buffer and dotted there (float32 sums; the matvec's
bound is the tiled kinds').
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..threads import get_num_threads, run_all, split
from ..simd import SIMD_BEST
from . import Kind, Packed

f32 = np.float32
# Float32 rows decoded per step by the matvec, per thread.
CHUNK_ELEMENTS = 1 << 14


@njit(nogil=True, fastmath=True, cache=True)
def dot_rows(w, x, y):
    """y[i] = w[i] . x for a small float32 tile (serial; called per thread)."""
    n, cols = w.shape
    for i in range(n):
        acc = f32(0)
        wr = w[i]
        for j in range(cols):
            acc += wr[j] * x[j]
        y[i] = acc


def _decoder(p: Packed):
    """The exact decoder of p's type (looked up when used: the registry imports the kinds)."""
    from ..registry import get_qtype
    return get_qtype(p.qtype).decode


class RawKind(Kind):
    """raw (see the module docstring)."""
    name = "raw"

    def pack(self, raw, t, cols, release=None, chunk_bytes=0) -> Packed:
        return Packed(self, t, raw.shape[0], cols, {"raw": np.array(raw, copy=True)})

    def matvec(self, p: Packed, simd: int = SIMD_BEST):
        raw = p.arrays["raw"]
        rows, cols = p.rows, p.cols
        decode = _decoder(p)
        step = max(1, CHUNK_ELEMENTS // cols)

        def work(x, out, a, b):
            buf = np.empty((min(step, b - a), cols), np.float32)
            for s in range(a, b, step):
                e = min(b, s + step)
                t = buf[:e - s]
                decode(raw[s:e].reshape(-1), t.reshape(-1))
                dot_rows(t, x, out[s:e])

        return lambda x, out: run_all(lambda a, b: work(x, out, a, b), split(0, rows, get_num_threads()))

    def decode(self, p: Packed, ids, out) -> None:
        raw = p.arrays["raw"]
        decode = _decoder(p)
        if ids.size and ids[-1] - ids[0] + 1 == ids.size and (np.diff(ids) == 1).all():   # a range: one call
            decode(raw[ids[0]:ids[-1] + 1].reshape(-1), out[:ids.size].reshape(-1))
            return
        for i, r in enumerate(ids):
            decode(raw[r], out[i])


KIND = RawKind()
