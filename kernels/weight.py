"""``Weight``: a weight matrix prepared for the engine (repacked once, multiplied many times).

    W = Weight(data, qtype, shape)     # data: the tensor's raw bytes (uint8) or a typed F32 view
    y = W.matvec(x)                    # x (cols,) f32 -> y (rows,) f32        decode step
    Y = W.matmul(X)                    # X (n, cols) f32 -> Y (n, rows) f32    prompt batch
    E = W.rows(ids)                    # (len(ids), cols) f32: embedding gather, exact
    F = W.dequantize()                 # (rows, cols) f32, exact (bit-identical to kernels.dequantize)

rows = output features (GGUF/numpy order).  Construction copies the tensor into the layout
of its type's kind (``kernels.kinds``: row tiles of 32 rows for the quantized kinds, the
README's table gives the bytes each takes) and keeps no reference to ``data``, so the file
mapping can be released.

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

from .kinds import Packed, registered
from .kinds.joint import joint_matvec
from .kinds.tiled import ROW_TILE
from .quant_matmul import MATVEC_MAX_BATCH, SMALL_BATCH_MAX, scratch_bytes, tiled_matmul
from .registry import get_qtype
from .repack import concat as _concat_packed, repack, repack_stack
from .simd import SIMD_BEST
from .threads import get_num_threads, run_all, split
from .types import GGMLType, as_type, row_bytes

# Decodes smaller than this many weights run on the calling thread.
_PARALLEL_DECODE_ELEMENTS = 1 << 16
# The kinds whose prompt-matmul tiles decode K-major here (their AVX2 tile decoders need F16C
# too); the others decode row-major tiles.
T_DECODED_KINDS = tuple(k for k in registered() if k.decode_T is not None)


class Weight:
    """A (rows, cols) weight matrix of GGML type `qtype`, repacked for the kernels of its kind."""

    __slots__ = ("qtype", "shape", "packed", "kind", "splits", "_product", "_rows_product", "_prompt_product")

    def __init__(self, data: np.ndarray, qtype, shape, release=None):
        """release(r0, r1): called once rows r0..r1-1 of data have been copied (see repack.repack)."""
        t = as_type(qtype)
        if len(tuple(shape)) != 2:
            raise ValueError(f"Weight needs a 2-D shape (rows, cols), got {tuple(shape)}")
        rows, cols = (int(s) for s in shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"{t.name} weight: empty shape {(rows, cols)}")
        get_qtype(t)                           # raises a clear error for unsupported types
        self._init(repack(data, t, (rows, cols), release), (rows,))   # repack checks cols and size

    def _init(self, packed: Packed, splits):
        self.qtype = packed.qtype
        self.shape = (packed.rows, packed.cols)
        self.packed = packed
        self.kind = packed.kind
        self.splits = tuple(splits)
        self._product = self._matvec_kernel()
        self._rows_product = self.kind.matmul_rows(packed)
        self._prompt_product = self.kind.prompt_rows(packed)

    @classmethod
    def from_packed(cls, packed: Packed, splits) -> "Weight":
        w = cls.__new__(cls)
        w._init(packed, splits)
        return w

    # ------------------------------------------------------------------ info

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the repacked weight."""
        return self.packed.nbytes

    def scratch_bytes(self, n: int) -> int:
        """Bytes of float32 scratch one worker thread keeps for ``matmul`` of n rows (its tile
        buffers, see kernels.quant_matmul.scratch_bytes)."""
        if n <= SMALL_BATCH_MAX and self.kind.small_matmul is not None:
            return 0                           # the small-batch product decodes no tiles
        return scratch_bytes(self.shape[0], self.shape[1], n, self.kind.decode_T is not None)

    def rounded(self, X: np.ndarray) -> np.ndarray:
        """X (..., cols) float32 as this weight's matvec multiplies it, in float64 (the quantized
        kinds round the activations per 32-block, see kernels.kinds.tiled; the float and raw
        kinds multiply X itself), and so ``matmul_decode`` multiplies each row.  ``matmul``
        multiplies the exact X, except for kinds without a small-batch product at most
        MATVEC_MAX_BATCH rows (and ``matmul(rounded=True)``, see there)."""
        X = np.asarray(X, np.float32)
        out = X.astype(np.float64)
        for src, dst in zip(X.reshape(-1, X.shape[-1]), out.reshape(-1, X.shape[-1])):
            dst[:] = self.kind.rounded(np.ascontiguousarray(src))
        return out

    @property
    def file_nbytes(self) -> int:
        """Bytes the tensor takes in GGML form (what a matvec is measured against)."""
        return self.shape[0] * row_bytes(self.qtype, self.shape[1])

    def __repr__(self) -> str:
        return f"Weight({self.qtype.name}, {self.shape}, layout={self.kind.name})"

    # ------------------------------------------------------------------ products

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """y (rows,) = W x for x (cols,) float32."""
        rows, cols = self.shape
        x = _as_f32(x, (cols,), "x")
        if out is None:
            out = np.empty(rows, np.float32)
        elif out.shape != (rows,) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous float32 array of shape {(rows,)}")
        self._product(x, out)
        return out

    def _matvec_kernel(self, simd: int = SIMD_BEST):
        """product(x, out): the kind's matvec with this weight's arrays bound (Kind.matvec).
        simd: the form of the integer sums (kernels.simd.SIMD_FORMS; identical results)."""
        return self.kind.matvec(self.packed, simd)

    def _operands(self, X, out):
        """(X, out) checked: X (n, cols) float32 C-contiguous, out (n, rows) float32 (new if None)."""
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
        return X, out

    def matmul_decode(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Y (n, rows) = X Wᵀ with each row computed exactly as ``matvec`` computes it alone
        (bit-identical, whatever the other rows): the product of a batched decode step, where a
        sequence's token must get the same result alone or beside others.  The quantized kinds
        with a multi-row product (``Kind.matmul_rows``) unpack each block's quants once for
        several rows; the others run the matvec per row.  out as ``matmul`` takes it."""
        X, out = self._operands(X, out)
        return self._into_rows(self._decode_rows, X, out)

    def _decode_rows(self, X: np.ndarray, out: np.ndarray) -> None:
        """matmul_decode's product into out with contiguous rows."""
        if X.shape[0] > 1 and self._rows_product is not None:
            self._rows_product(X, out)
            return
        for i in range(X.shape[0]):
            self.matvec(X[i], out[i])

    def _into_rows(self, product, X: np.ndarray, out: np.ndarray) -> np.ndarray:
        """product(X, y) written into out (n, rows): straight where out's rows are contiguous,
        else through a contiguous array copied in (the row products write whole rows)."""
        if self.shape[0] > 1 and out.strides[1] != out.itemsize:      # rows not contiguous
            y = np.empty(out.shape, np.float32)
            product(X, y)
            out[...] = y
        else:
            product(X, out)
        return out

    def matmul(self, X: np.ndarray, out: np.ndarray | None = None, rounded: bool = False) -> np.ndarray:
        """Y (n, rows) = X Wᵀ for X (n, cols) float32: prompt rows, multiplied as the exact
        float32 X, each row's result independent of the others up to SMALL_BATCH_MAX rows (the
        kinds' small-batch products; larger batches go through tiles + BLAS).  Kinds without a
        small-batch product run batches of at most MATVEC_MAX_BATCH rows as ``matmul_decode``.
        out may be a column slice of a wider array (each row contiguous), e.g. one part of a
        fused projection's output.  rounded: the caller accepts activations rounded as a prompt's
        expert products round them, so kinds whose multi-row integer product is the faster one for a
        batch (``Kind.rows_prompt``) run it instead (``Kind.prompt_rows``: one int8 term per block
        where the kind takes it, kinds.tiled.PROMPT_TERMS, else the matvec's bits), for any number
        of rows, so each row's bits are the same whatever the batch; the other kinds ignore it."""
        rows, cols = self.shape
        X, out = self._operands(X, out)
        n = X.shape[0]
        if rounded and self._prompt_product is not None:
            return self._into_rows(self._prompt_product, X, out)
        if n <= SMALL_BATCH_MAX and self.kind.small_matmul is not None:
            self.kind.small_matmul(self.packed, X, out)
            return out
        if n <= MATVEC_MAX_BATCH:
            return self.matmul_decode(X, out)
        if self.kind.decode_T is not None:
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
        self._decode_ids(np.arange(r0, r1, dtype=np.int64), out)

    def _tile(self, r0: int, r1: int, buf: np.ndarray) -> np.ndarray:
        """Rows r0..r1-1 as float32 for the matmul (Kind.tile; serial: the matmul calls it from
        its own worker threads, one tile each)."""
        return self.kind.tile(self.packed, r0, r1, buf)

    def _tile_T(self, r0: int, r1: int, buf: np.ndarray) -> np.ndarray:
        """Rows r0..r1-1 (r0 a multiple of ROW_TILE) decoded K-major into buf (cols, >= r1-r0
        rounded up to whole tiles): buf[:, r - r0] = row r (Kind.decode_T; serial)."""
        self.kind.decode_T(self.packed, r0 // ROW_TILE, -(-r1 // ROW_TILE), buf)
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
        run_all(lambda a, b: self.kind.decode(self.packed, ids[a:b], out[a:b]), split(0, n, parts))

    # ------------------------------------------------------------------ fusion

    @classmethod
    def concat(cls, weights: "list[Weight]") -> "Weight":
        """One Weight whose rows are the rows of `weights` in order (same type and cols)."""
        if not weights:
            raise ValueError("concat needs at least one weight")
        splits = []
        for w in weights:
            splits.extend(w.splits)
        return cls.from_packed(_concat_packed([w.packed for w in weights]), splits)

    @classmethod
    def stack(cls, parts: list, qtype, cols: int) -> "Weight":
        """One Weight of several tensors' rows, repacked straight into the stacked layout (the same
        result as ``concat`` of each part's Weight, without holding the parts and the stack at
        once).  parts: [(data, rows, release)], data and release as the constructor takes them."""
        t = as_type(qtype)
        get_qtype(t)
        for _, rows, _ in parts:
            if int(rows) < 1 or int(cols) < 1:
                raise ValueError(f"{t.name} weight: empty shape {(rows, cols)}")
        return cls.from_packed(repack_stack(parts, t, int(cols)), [int(rows) for _, rows, _ in parts])

    @staticmethod
    def can_concat(weights: "list[Weight]") -> bool:
        return len({(w.qtype, w.shape[1]) for w in weights}) == 1

    def split(self, y: np.ndarray) -> list[np.ndarray]:
        """Split an output (..., rows) into the parts of the weights this one was concatenated from."""
        return np.split(y, np.cumsum(self.splits)[:-1], axis=-1)


class WeightGroup(list):
    """Weights that share one input (a layer's Q|K|V, gate|up), in order: a list of Weight whose
    outputs, concatenated, are the group's (each run of one type and row length already stacked
    by ``Weight.concat``).  ``matvec(x, out)`` multiplies one input row by all of them: in one
    parallel launch where their kinds have a joint kernel (``kernels.kinds.joint``: Q4_K / Q5_K
    beside Q6_K, as the k-quant mixtures leave Q|K and V), else each matvec in turn; either way
    each output row is bit-identical to its weight's own matvec.  The joint product is chosen once,
    when the group is made."""

    def __init__(self, weights):
        super().__init__(weights)
        self.rows = sum(w.shape[0] for w in self)
        joint = joint_matvec(self[0].packed, self[1].packed) if len(self) == 2 else None
        self.joint = joint is not None
        self._product = joint if joint is not None else self._each

    @property
    def file_nbytes(self) -> int:
        """Bytes the group's tensors take in GGML form."""
        return sum(w.file_nbytes for w in self)

    def matvec(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (rows,) = the group's outputs for x (cols,): both float32 and contiguous (the
        backend's own buffers; not checked)."""
        self._product(x, out)
        return out

    def _each(self, x: np.ndarray, out: np.ndarray) -> None:
        r0 = 0
        for w in self:
            r1 = r0 + w.shape[0]
            w.matvec(x, out[r0:r1])
            r0 = r1


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


__all__ = ["Weight", "WeightGroup", "fused_matvec", "matvec", "matmul", "GGMLType"]
