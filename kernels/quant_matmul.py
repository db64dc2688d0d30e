"""Batched products Y = X Wᵀ (prompt processing) by tiles of dequantized W and numpy's BLAS.

W is decoded (exactly, by its kind's decoders, see kernels.kinds) one tile of rows at a
time into a float32 buffer that is reused across calls; each tile is multiplied by the
whole batch with one SGEMM, so the decode cost is paid once per weight for the whole
batch.  The nibble and byte kinds decode their tiles K-major (their ``decode_T``), which
BLAS multiplies straight into the product's columns (no transposed copy).
At most ``TILE_ELEMENTS`` float32 values of W exist at any time (never more than
one tensor's float32 copy).  Arithmetic: float32 products and sums inside BLAS
(tests bound the error by ``1e-5 * sum_j |w_j x_j|``).

Batches of up to ``SMALL_BATCH_MAX`` rows (a short prompt, prompt chunks of a server's pass)
use the kind's small-batch product where it has one (``Kind.small_matmul``): each weight block
is decoded once into a scratch block that stays in the first-level cache and applied to every
row of the batch, with no tile written to memory and no GEMM call per tile.  Kinds without one
run batches of at most ``MATVEC_MAX_BATCH`` rows as the matvec's integer product
(``Weight.matmul_decode``), which reads W once without writing float32 tiles.  Decode steps never
come here: ``Weight.matmul_decode`` computes them as the matvec does.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

# Largest float32 tile of W (elements): 16 MB.  Whole tensors up to this size go in one GEMM.
TILE_ELEMENTS = 1 << 22
# Tiles a matrix is cut into at least (for the worker threads to share).
TILES_PER_MATRIX = 4
# Batches up to this size of the kinds without a small-batch product go through matmul_decode.
MATVEC_MAX_BATCH = 3
# Batches up to this size use the kinds' small-batch products (where they have one); the
# crossover with tiles + BLAS measured by tools/bench_kernels.py --small-batch.
SMALL_BATCH_MAX = 128

_buffers = threading.local()


def scratch(name: str, n: int) -> np.ndarray:
    """A per-thread float32 scratch buffer of at least n elements (grown, never shrunk)."""
    buf = getattr(_buffers, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, np.float32)
        setattr(_buffers, name, buf)
    return buf[:n]


def tile_rows_of(rows: int, cols: int, k_major: bool) -> int:
    """Rows of W per tile.  The tiling depends on the shape alone (never on the thread count), so
    every tile's GEMM and therefore the result are the same whatever the thread count."""
    tile_rows = max(1, min(-(-rows // TILES_PER_MATRIX), TILE_ELEMENTS // max(cols, 1)))
    if (32 <= tile_rows or k_major) and tile_rows < rows:
        tile_rows = -(-tile_rows // 32) * 32       # whole row tiles of the repacked layouts
    return tile_rows


def scratch_bytes(rows: int, cols: int, n: int, k_major: bool) -> int:
    """Bytes of the per-thread scratch ``tiled_matmul`` grows for an (n, cols) x (rows, cols)ᵀ
    product (its tile buffer, and for row-major tiles the product buffer); 0 for the batches
    that go through the matvec.  Each worker thread keeps its own, sized by the largest product
    it has run."""
    if n <= MATVEC_MAX_BATCH:
        return 0
    tile_rows = tile_rows_of(rows, cols, k_major)
    if k_major:
        return 4 * cols * (-(-tile_rows // 32) * 32)
    return 4 * tile_rows * (cols + n)


def tiled_matmul(X: np.ndarray, rows: int, cols: int,
                 tile_of: Callable[[int, int, np.ndarray], np.ndarray], out: np.ndarray,
                 n_threads: int = 1, k_major: bool = False) -> np.ndarray:
    """out (n, rows) = X (n, cols) @ W.T, W supplied a tile at a time.

    tile_of(r0, r1, buf) returns rows r0..r1-1 of W as float32, decoded serially into buf
    (C-contiguous) or a view of W itself: either row-major, (r1-r0, cols), or with
    ``k_major`` transposed, (cols, >= r1-r0) with row r of W in column r - r0 (the tile
    decoders of the kinds, Kind.decode_T; buf then has room for whole 32-row tiles).  A K-major tile
    is multiplied as ``X @ tile`` straight into the columns r0..r1-1 of out (BLAS writes
    the strided columns itself).  A row-major tile is multiplied as ``tile @ X.T`` into a
    contiguous (r1-r0, n) buffer and copied transposed into out: OpenBLAS runs that
    orientation up to twice as fast as ``X @ tile.T`` at these shapes.

    The rows are split over n_threads workers, each decoding its own tiles and running its
    own single-threaded GEMMs (numpy's BLAS is kept to one thread while the model runs, see
    kernels.threads.single_threaded_blas): one pool of threads for decode and GEMM alike.
    A tile is at most about rows / TILES_PER_MATRIX rows, so the float32 tiles alive at once
    stay below one tensor's float32 copy up to that many threads.
    """
    n = X.shape[0]
    tile_rows = tile_rows_of(rows, cols, k_major)
    XT = X.T
    starts = list(range(0, rows, tile_rows))

    def work(my_starts):
        if k_major:
            padded = -(-tile_rows // 32) * 32     # the tile's columns: whole 32-row tiles
            buf = scratch("tile", cols * padded).reshape(cols, padded)
            for r0 in my_starts:
                r1 = min(rows, r0 + tile_rows)
                np.matmul(X, tile_of(r0, r1, buf)[:, :r1 - r0], out=out[:, r0:r1])
            return
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
