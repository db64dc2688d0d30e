"""Batched products Y = X Wᵀ (prompt processing) by tiles of dequantized W and numpy's BLAS.

W is decoded (exactly, see matvec.py) one tile of rows at a time into a float32
buffer that is reused across calls; each tile is multiplied by the whole batch
with one SGEMM, so the decode cost is paid once per weight for the whole batch.
At most ``TILE_ELEMENTS`` float32 values of W exist at any time (never more than
one tensor's float32 copy).  Arithmetic: float32 products and sums inside BLAS
(tests bound the error by ``1e-5 * sum_j |w_j x_j|``).

Batches of at most ``MATVEC_MAX_BATCH`` rows use the fused matvec per row instead,
which reads W once per row without writing float32 tiles.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

# Largest float32 tile of W (elements): 16 MB.  Whole tensors up to this size go in one GEMM.
TILE_ELEMENTS = 1 << 22
# Batches up to this size are computed as independent matvecs.
MATVEC_MAX_BATCH = 3

_buffers = threading.local()


def tile_buffer(n: int) -> np.ndarray:
    """A per-thread float32 scratch buffer of at least n elements (grown, never shrunk)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or buf.size < n:
        buf = np.empty(n, np.float32)
        _buffers.buf = buf
    return buf[:n]


def tiled_matmul(X: np.ndarray, rows: int, cols: int,
                 decode_range: Callable[[int, int, np.ndarray], None], out: np.ndarray) -> np.ndarray:
    """out (n, rows) = X (n, cols) @ W.T, with decode_range(r0, r1, tile (r1-r0, cols)) filling W's rows."""
    tile_rows = max(1, min(rows, TILE_ELEMENTS // max(cols, 1)))
    if tile_rows >= rows:
        tile = tile_buffer(rows * cols).reshape(rows, cols)
        decode_range(0, rows, tile)
        np.matmul(X, tile.T, out=out)
        return out
    # Several tiles: align the tile height to 64 rows so each GEMM is well shaped.
    tile_rows = max(64, tile_rows // 64 * 64) if tile_rows >= 64 else tile_rows
    buf = tile_buffer(tile_rows * cols)
    part = np.empty((X.shape[0], tile_rows), np.float32)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        tile = buf[:(r1 - r0) * cols].reshape(r1 - r0, cols)
        decode_range(r0, r1, tile)
        p = part[:, :r1 - r0]
        np.matmul(X, tile.T, out=p)
        out[:, r0:r1] = p
    return out
