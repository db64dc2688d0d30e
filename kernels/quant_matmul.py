"""Batched products Y = X Wᵀ (prompt processing) by tiles of dequantized W and numpy's BLAS.

W is decoded (exactly, see quant_matvec.py) one tile of rows at a time into a
float32 buffer that is reused across calls; each tile is multiplied by the whole
batch with one SGEMM, so the decode cost is paid once per weight for the whole batch.
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
# Tiles a matrix is cut into at least (for the worker threads to share).
TILES_PER_MATRIX = 8
# Batches up to this size are computed as independent matvecs.
MATVEC_MAX_BATCH = 3

_buffers = threading.local()


def scratch(name: str, n: int) -> np.ndarray:
    """A per-thread float32 scratch buffer of at least n elements (grown, never shrunk)."""
    buf = getattr(_buffers, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, np.float32)
        setattr(_buffers, name, buf)
    return buf[:n]


def tiled_matmul(X: np.ndarray, rows: int, cols: int,
                 tile_of: Callable[[int, int, np.ndarray], np.ndarray], out: np.ndarray,
                 n_threads: int = 1) -> np.ndarray:
    """out (n, rows) = X (n, cols) @ W.T, W supplied a tile at a time.

    tile_of(r0, r1, buf) returns rows r0..r1-1 of W as float32 (r1-r0, cols), decoded
    serially into buf (C-contiguous) or a view of W itself.  Each tile is multiplied as
    ``tile @ X.T`` into a contiguous (r1-r0, n) buffer and copied transposed into out:
    OpenBLAS runs this orientation up to twice as fast as ``X @ tile.T`` at these shapes,
    and writing a GEMM straight into a column slice of out is slower still.

    The rows are split over n_threads workers, each decoding its own tiles and running its
    own single-threaded GEMMs (numpy's BLAS is kept to one thread while the model runs, see
    kernels.threads.single_threaded_blas): one pool of threads for decode and GEMM alike.
    A tile is at most about rows / TILES_PER_MATRIX rows, so the float32 tiles alive at once
    stay below one tensor's float32 copy up to that many threads.
    """
    n = X.shape[0]
    # The tiling depends on the shape alone (never on n_threads), so every tile's GEMM and
    # therefore the result are the same whatever the thread count.
    tile_rows = max(1, min(-(-rows // TILES_PER_MATRIX), TILE_ELEMENTS // max(cols, 1)))
    if 32 <= tile_rows < rows:
        tile_rows = -(-tile_rows // 32) * 32       # whole row tiles of the repacked layouts
    XT = X.T
    starts = list(range(0, rows, tile_rows))

    def work(my_starts):
        buf = scratch("tile", tile_rows * cols)
        tmp = scratch("product", tile_rows * n)
        for r0 in my_starts:
            r1 = min(rows, r0 + tile_rows)
            k = r1 - r0
            tile = tile_of(r0, r1, buf[:k * cols].reshape(k, cols))
            t = tmp[:k * n].reshape(k, n)
            np.matmul(tile, XT, out=t)
            out[:, r0:r1] = t.T

    workers = min(max(1, n_threads), len(starts))
    from .threads import run_all
    run_all(work, [(starts[w::workers],) for w in range(workers)])
    return out
