"""``Weight``: a weight matrix prepared for the engine (repacked once, multiplied many times).

    W = Weight(data, qtype, shape)     # data: the tensor's raw bytes (uint8) or a typed F32 view
    y = W.matvec(x)                    # x (cols,) f32 -> y (rows,) f32        decode step
    Y = W.matmul(X)                    # X (n, cols) f32 -> Y (n, rows) f32    prompt batch
    E = W.rows(ids)                    # (len(ids), cols) f32: embedding gather, exact
    F = W.dequantize()                 # (rows, cols) f32, exact (bit-identical to kernels.dequantize)

rows = output features (GGUF/numpy order).  Construction copies the tensor into
the row-tiled layout of repack.py (bits per weight: Q4_0/Q4_1 5, Q5_0/Q5_1 6, Q8_0 8.5,
IQ4_NL 4.5, Q2_K 3.1, Q3_K 4.1 -- the GGUF sizes or within 0.7 bit, with float16 scales --
Q4_K 6, Q5_K 7, Q6_K 10, IQ4_XS 5, MXFP4 4.5-5, TQ2_0 and TQ1_0 3.1, the lattice i-quants IQ1_*,
IQ2_*, IQ3_* 4.6, F16/BF16 16, F32 32, other types their GGUF size; row counts are padded to
whole 32-row tiles) and keeps no reference to ``data``, so the file mapping can be released.

Fusing: ``Weight.concat([Wq, Wk, Wv])`` stacks the rows of weights of one type and
row length into one Weight: one kernel launch and one re-layout of x instead of
three; split outputs with ``W.split(y)`` (or by ``W.splits``).  Build it once at
load and drop the parts.  ``fused_matvec(ws, x)`` is the convenience form for
weights that cannot be stacked (mixed types): it calls each matvec in turn.

Threads: matvec runs on Numba's threads (``kernels.set_num_threads``); exact
decodes (rows, dequantize, matmul tiles) and the raw path split rows over a small
Python worker pool of nogil Numba calls; the GEMMs use numpy's BLAS threads.
"""
from __future__ import annotations

import numpy as np

from . import quant_matvec as mv, tile_decode
from .quant_matmul import MATVEC_MAX_BATCH, tiled_matmul
from .registry import get_qtype
from .repack import (BYTE_KINDS, LATTICE, NIBBLE_KINDS, ROW_TILE, TABLES, TILED_KINDS, Packed, concat as _concat_packed,
                     repack)
from .simd import HOST_AVX2, HOST_F16C
from .threads import get_num_threads, run_all, split
from .types import GGMLType, as_type, row_bytes

# Float32 rows decoded per step by the raw (registry decoder) path, per thread.
_RAW_CHUNK_ELEMENTS = 1 << 14
# Decodes smaller than this many weights run on the calling thread.
_PARALLEL_DECODE_ELEMENTS = 1 << 16
# Kinds whose prompt-matmul tiles decode K-major (tile_decode.py), where its AVX2 form runs; the
# others decode row-major tiles.
T_DECODED_KINDS = NIBBLE_KINDS + BYTE_KINDS if HOST_AVX2 and HOST_F16C else ()
# Symmetric types decode as (q - offset) * d (ggml's expression; exact zeros keep their sign).
_NO_OFFSET = np.int32(0)
_OFFSET = {GGMLType.Q4_0: np.int32(8), GGMLType.Q5_0: np.int32(16), GGMLType.Q3_K: np.int32(4),
           GGMLType.TQ2_0: np.int32(1), GGMLType.TQ1_0: np.int32(1)}


class Weight:
    """A (rows, cols) weight matrix of GGML type `qtype`, repacked for the kernels."""

    __slots__ = ("qtype", "shape", "packed", "splits", "_decode", "_product")

    def __init__(self, data: np.ndarray, qtype, shape, release=None):
        """release(r0, r1): called once rows r0..r1-1 of data have been copied (see repack.repack)."""
        t = as_type(qtype)
        if len(tuple(shape)) != 2:
            raise ValueError(f"Weight needs a 2-D shape (rows, cols), got {tuple(shape)}")
        rows, cols = (int(s) for s in shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"{t.name} weight: empty shape {(rows, cols)}")
        decode = get_qtype(t).decode           # raises a clear error for unsupported types
        self._init(repack(data, t, (rows, cols), release), decode, (rows,))   # repack checks cols and size

    def _init(self, packed: Packed, decode, splits):
        self.qtype = packed.qtype
        self.shape = (packed.rows, packed.cols)
        self.packed = packed
        self.splits = tuple(splits)
        self._decode = decode
        self._product = self._matvec_kernel()

    @classmethod
    def _from_packed(cls, packed: Packed, splits) -> "Weight":
        w = cls.__new__(cls)
        w._init(packed, get_qtype(packed.qtype).decode, splits)
        return w

    # ------------------------------------------------------------------ info

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the repacked weight."""
        return self.packed.nbytes

    def rounded(self, X: np.ndarray) -> np.ndarray:
        """X (..., cols) float32 as this weight's matvec multiplies it, in float64: the tiled
        kinds use integer dot products (see simd.py), the nibble, table and lattice kinds on two
        int8 terms per 32-block (within max|x_block| / 64516 of X), Q8_0 and Q6_K on int16 per
        block (within max|x_block| / 65534); the float and raw kinds multiply X itself.  Matmuls
        of more than MATVEC_MAX_BATCH rows multiply the exact X."""
        X = np.asarray(X, np.float32)
        out = X.astype(np.float64)
        kind = self.packed.kind
        if kind not in TILED_KINDS:
            return out
        for src, dst in zip(X.reshape(-1, X.shape[-1]), out.reshape(-1, X.shape[-1])):
            src = np.ascontiguousarray(src)
            if kind in BYTE_KINDS:
                terms = [mv.round_activations16(src)]
            else:
                xq, xr, dx, dr, _ = mv.round_activations(src)
                terms = [(xq, dx), (xr, dr)]
            dst[:] = sum(q.reshape(-1, 32) * d[:, None].astype(np.float64) for q, d in terms).reshape(-1)
        return out

    @property
    def file_nbytes(self) -> int:
        """Bytes the tensor takes in GGML form (what a matvec is measured against)."""
        return self.shape[0] * row_bytes(self.qtype, self.shape[1])

    def __repr__(self) -> str:
        return f"Weight({self.qtype.name}, {self.shape}, layout={self.packed.kind})"

    # ------------------------------------------------------------------ products

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y (rows,) = W x for x (cols,) float32."""
        rows, cols = self.shape
        x = _as_f32(x, (cols,), "x")
        if out is None:
            out = np.empty(rows, np.float32)
        elif out.shape != (rows,) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous float32 array of shape {(rows,)}")
        if self._product is None:
            self._raw_matvec(x, out)
        else:
            self._product(x, out)
        return out

    def _matvec_kernel(self, simd: bool = True):
        """product(x, out): the kernel of this weight's kind with its arrays bound, or None for the
        raw kind.  Chosen once: a decode step makes a hundred small matvecs, where each
        microsecond of dispatch shows.  simd=False: the tiled kinds' portable integer sums."""
        p = self.packed
        A = p.arrays
        k = p.kind
        if k in NIBBLE_KINDS:
            f, a = mv.matvec_nib, (A["qt"], A["qh"], A["d"], A["m"])
        elif k == "t4":
            f, a = mv.matvec_tab, (A["qt"], A["d"], TABLES[self.qtype])
        elif k == "t4s":
            f, a = mv.matvec_tab16, (A["qt"], A["sc"], A["d"], *LATTICE[self.qtype])
        elif k == "q2":
            f, a = mv.matvec_crumb, (A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"])
        elif k in BYTE_KINDS:
            f, a = mv.matvec_i8, self._byte_arrays()
        elif k in ("f32", "f16", "bf16"):
            f = {"f32": mv.matvec_f32, "f16": mv.matvec_f16, "bf16": mv.matvec_bf16}[k]
            w = A["w"]
            return lambda x, out: f(w, x, out)
        else:
            return None                 # the raw path (_raw_matvec)
        return lambda x, out: f(*a, x, simd, out)

    def matmul(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Y (n, rows) = X Wᵀ for X (n, cols) float32.  out may be a column slice of a wider
        array (each row contiguous), e.g. one part of a fused projection's output."""
        rows, cols = self.shape
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != cols:
            raise ValueError(f"X must have shape (n, {cols}), got {X.shape}")
        X = _as_f32(X, X.shape, "X")
        n = X.shape[0]
        if out is None:
            out = np.empty((n, rows), np.float32)
        elif out.shape != (n, rows) or out.dtype != np.float32:
            raise ValueError(f"out must be a float32 array of shape {(n, rows)}")
        if n <= MATVEC_MAX_BATCH and (rows == 1 or out.strides[1] == out.itemsize):   # rows contiguous
            for i in range(n):
                self.matvec(X[i], out[i])
            return out
        if self.packed.kind in T_DECODED_KINDS:
            return tiled_matmul(X, rows, cols, self._tile_T, out, get_num_threads(), k_major=True)
        return tiled_matmul(X, rows, cols, self._tile, out, get_num_threads())

    # ------------------------------------------------------------------ decoding

    def rows(self, ids) -> np.ndarray:
        """Exact float32 rows `ids` (embedding lookup): (len(ids), cols)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows, cols = self.shape
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            bad = ids[(ids < 0) | (ids >= rows)][0]
            raise IndexError(f"row {bad} out of range for a weight with {rows} rows")
        out = np.empty((ids.size, cols), np.float32)
        self._decode_ids(np.ascontiguousarray(ids), out)
        return out

    def decode_range(self, r0: int, r1: int, out: np.ndarray) -> None:
        """Decode rows r0..r1-1 exactly into out (r1-r0, cols) float32 (C-contiguous)."""
        if self.packed.kind == "raw":
            self._raw_decode(r0, r1, out)
        else:
            self._decode_ids(np.arange(r0, r1, dtype=np.int64), out)

    def _tile(self, r0: int, r1: int, buf: np.ndarray) -> np.ndarray:
        """Rows r0..r1-1 as float32 for the matmul: a view for F32, else decoded into buf.
        Serial: the matmul calls it from its own worker threads, one tile each."""
        p = self.packed
        if p.kind == "f32":
            return p.arrays["w"][r0:r1]
        if p.kind == "raw":
            self._decode(p.arrays["raw"][r0:r1].reshape(-1), buf.reshape(-1))
        else:
            self._decode_ids_serial(np.arange(r0, r1, dtype=np.int64), buf)
        return buf

    def _tile_T(self, r0: int, r1: int, buf: np.ndarray) -> np.ndarray:
        """Rows r0..r1-1 (r0 a multiple of ROW_TILE) decoded K-major into buf (cols, >= r1-r0
        rounded up to whole tiles): buf[:, r - r0] = row r (tile_decode.py; serial)."""
        p = self.packed
        A = p.arrays
        t0, t1 = r0 // ROW_TILE, -(-r1 // ROW_TILE)
        if p.kind in NIBBLE_KINDS:
            tile_decode.decode_nib_T(A["qt"], A["qh"], A["d"], A["m"], _OFFSET.get(self.qtype, _NO_OFFSET),
                                     t0, t1, buf)
        else:
            tile_decode.decode_i8_T(*self._byte_arrays(), t0, t1, buf)
        return buf

    def dequantize(self) -> np.ndarray:
        """The whole matrix as float32 (rows, cols), exact."""
        out = np.empty(self.shape, np.float32)
        self.decode_range(0, self.shape[0], out)
        return out

    def _decode_ids(self, ids: np.ndarray, out: np.ndarray) -> None:
        """Decode rows ids into out, split over the worker threads when there are many."""
        n = ids.size
        parts = min(get_num_threads(), n * self.shape[1] // _PARALLEL_DECODE_ELEMENTS)
        run_all(lambda a, b: self._decode_ids_serial(ids[a:b], out[a:b]), split(0, n, parts))

    def _decode_ids_serial(self, ids: np.ndarray, out: np.ndarray) -> None:
        p = self.packed
        A = p.arrays
        k = p.kind
        if k in NIBBLE_KINDS:       # Q4_0 / Q5_0 decode as (q - off) d, not q d + m (see _OFFSET)
            mv.decode_nib(A["qt"], A["qh"], A["d"], A["m"], _OFFSET.get(self.qtype, _NO_OFFSET), ids, out)
        elif k == "t4":
            mv.decode_tab(A["qt"], A["d"], TABLES[self.qtype], ids, out)
        elif k == "t4s":
            mv.decode_tab16(A["qt"], A["sc"], A["d"], TABLES[self.qtype], ids, out)
        elif k == "q2":
            mv.decode_crumb(A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"],
                            _OFFSET.get(self.qtype, _NO_OFFSET), ids, out)
        elif k in BYTE_KINDS:
            mv.decode_i8(*self._byte_arrays(), ids, out)
        elif k == "f32":
            mv.gather_f32(A["w"], ids, out)
        elif k == "f16":
            mv.decode_f16(A["w"], ids, out)
        elif k == "bf16":
            mv.decode_bf16(A["w"], ids, out)
        else:
            raw = A["raw"]
            for i, r in enumerate(ids):
                self._decode(raw[r], out[i])

    # ------------------------------------------------------------------ raw (registry decoder) path

    def _byte_arrays(self):
        """(qt, s_lo, s_hi) of a byte-per-weight kind for matvec_i8 / decode_i8: one scale per
        block serves both halves (Q8_0); Q6_K has one per 16 weights."""
        A = self.packed.arrays
        return A["qt"], A.get("sl", A.get("d")), A.get("sh", A.get("d"))

    def _raw_matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        raw = self.packed.arrays["raw"]
        cols = self.shape[1]
        step = max(1, _RAW_CHUNK_ELEMENTS // cols)
        decode = self._decode

        def work(a, b):
            buf = np.empty((min(step, b - a), cols), np.float32)
            for s in range(a, b, step):
                e = min(b, s + step)
                t = buf[:e - s]
                decode(raw[s:e].reshape(-1), t.reshape(-1))
                mv.dot_rows(t, x, out[s:e])

        run_all(work, split(0, self.shape[0], get_num_threads()))

    def _raw_decode(self, r0: int, r1: int, out: np.ndarray) -> None:
        raw = self.packed.arrays["raw"]
        decode = self._decode

        def work(a, b):
            decode(raw[a:b].reshape(-1), out[a - r0:b - r0].reshape(-1))

        run_all(work, split(r0, r1, get_num_threads()))

    # ------------------------------------------------------------------ fusion

    @classmethod
    def concat(cls, weights: "list[Weight]") -> "Weight":
        """One Weight whose rows are the rows of `weights` in order (same type and cols)."""
        if not weights:
            raise ValueError("concat needs at least one weight")
        splits = []
        for w in weights:
            splits.extend(w.splits)
        return cls._from_packed(_concat_packed([w.packed for w in weights]), splits)

    @staticmethod
    def can_concat(weights: "list[Weight]") -> bool:
        return len({(w.qtype, w.shape[1]) for w in weights}) == 1

    def split(self, y: np.ndarray) -> list[np.ndarray]:
        """Split an output (..., rows) into the parts of the weights this one was concatenated from."""
        return np.split(y, np.cumsum(self.splits)[:-1], axis=-1)


def fused_matvec(weights: "list[Weight]", x: np.ndarray) -> list[np.ndarray]:
    """[W x for W in weights], for weights that share the input x.

    The fastest form is a stacked Weight built once at load (``Weight.concat``: one
    kernel launch, x laid out once); this helper serves mixed types and one-off use,
    calling each weight's matvec in turn (stacking on every call would copy them)."""
    return [w.matvec(x) for w in weights]


# --------------------------------------------------------------------------- functional API


def matvec(data: np.ndarray, qtype, shape, x: np.ndarray) -> np.ndarray:
    """y (rows,) = W x with W given by its raw GGML bytes (repacked for this call)."""
    return Weight(data, qtype, shape).matvec(x)


def matmul(X: np.ndarray, data: np.ndarray, qtype, shape) -> np.ndarray:
    """Y (n, rows) = X Wᵀ with W given by its raw GGML bytes."""
    return Weight(data, qtype, shape).matmul(X)


def _as_f32(a, shape, name) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


__all__ = ["Weight", "fused_matvec", "matvec", "matmul", "GGMLType"]
