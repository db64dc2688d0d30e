"""``dequantize``: raw GGML tensor bytes -> float32 array, bit-exact with ggml.

Big tensors are decoded in parallel: the blocks are split into contiguous chunks,
one per Numba thread (``numba.get_num_threads()``, so ``set_num_threads`` applies),
and each chunk is decoded by the type's ``nogil`` decoder on its own thread.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .registry import get_qtype
from .threads import run_all
from .types import GGMLType

# Tensors with fewer elements than this are decoded on the calling thread.
PARALLEL_MIN_ELEMENTS = 1 << 18

# Plain types numpy converts exactly by itself (no compilation needed).
_NUMPY_DTYPES = {
    GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.F64: np.float64,
    GGMLType.I8: np.int8, GGMLType.I16: np.int16, GGMLType.I32: np.int32, GGMLType.I64: np.int64,
}


def _as_bytes(data: np.ndarray, name: str) -> np.ndarray:
    """Any C-contiguous array -> flat read-only uint8 view of its bytes (copies only if not contiguous)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    elif not isinstance(data, np.ndarray):
        data = np.asarray(data)
    if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and np.little_endian is False):
        raise ValueError(f"{name}: big-endian input is not supported")
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False   # one compiled specialization for file-backed and in-memory data
    return flat


def dequantize(data: np.ndarray, qtype, shape) -> np.ndarray:
    """Decode a tensor (or whole rows of one) to float32.

    data:  uint8 array (any shape) of the raw bytes; typed arrays (e.g. float32 for F32,
           float16 for F16) are taken as their bytes.
    qtype: GGMLType, its id or its name.
    shape: numpy order, last dimension = row length (a multiple of the block size).
    Returns a new float32 array of ``shape``.
    """
    qt = get_qtype(qtype)
    shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
    if any(s < 0 for s in shape):
        raise ValueError(f"{qt.name}: negative dimension in shape {shape}")
    n = math.prod(shape)
    row = shape[-1] if shape else 1
    if row % qt.block_size:
        raise ValueError(f"{qt.name}: row length {row} (last dim of shape {shape}) is not a multiple "
                         f"of the block size {qt.block_size}")
    need = n // qt.block_size * qt.type_size
    src = _as_bytes(data, qt.name)
    if src.size != need:
        raise ValueError(f"{qt.name}: shape {shape} needs {need} bytes "
                         f"({n // qt.block_size} blocks of {qt.type_size}), got {src.size}")

    if qt.type in _NUMPY_DTYPES:
        with np.errstate(over="ignore"):        # F64 beyond float32 range becomes +-inf, as a cast does
            return src.view(_NUMPY_DTYPES[qt.type]).astype(np.float32).reshape(shape)
    if qt.type == GGMLType.BF16:            # numpy widens whole tensors with no decoder to compile
        return (src.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)

    out = np.empty(n, dtype=np.float32)
    nblocks = n // qt.block_size
    workers = numba.get_num_threads()
    if n < PARALLEL_MIN_ELEMENTS or workers <= 1 or nblocks < 2:
        qt.decode(src, out)
        return out.reshape(shape)

    # contiguous chunks of whole blocks, one per thread
    bounds = np.linspace(0, nblocks, min(workers, nblocks) + 1).astype(np.int64)
    ts, bs = qt.type_size, qt.block_size
    run_all(qt.decode, [(src[b0 * ts:b1 * ts], out[b0 * bs:b1 * bs])
                        for b0, b1 in zip(bounds[:-1], bounds[1:]) if b1 > b0])
    return out.reshape(shape)
