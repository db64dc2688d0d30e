"""The small-batch products (Kind.small_matmul, used by Weight.matmul for prompt batches of 1 to
SMALL_BATCH_MAX rows) against float64 products on the exact dequantization.

Tolerance: |y - y_ref| <= 1e-5 * sum_j |w_j x_j| + 1e-30 per output (test_matvec.assert_close), with
y_ref = dequant(W) @ x in float64 on the exact float32 activations: these products round no
activation (each weight block is decoded exactly and multiplied by x itself).  Row independence
and thread-count independence are checked bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import Weight
from kernels.kinds import kind_of, registered
from kernels.kinds.tiled import BLOCK_CHUNK, ROW_CHUNK, block_major
from kernels.quant_matmul import MATVEC_MAX_BATCH, SMALL_BATCH_MAX
from kernels.types import as_type

from .test_matvec import assert_close, bits_equal, random_tensor

SMALL_TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q8_0", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4"]
# 77 rows: a partial last row tile; cols past one chunk of blocks (and a multiple of 256 for the k-quants)
ROWS, COLS = 77, 256 * (-(-(BLOCK_CHUNK * 32 + 32) // 256))


def has_small(name: str) -> bool:
    return kind_of(as_type(name)).small_matmul is not None


def test_small_products_serve_the_expected_kinds():
    """Where the AVX2 block decoders run (AVX2 and F16C), the nibble, byte and table kinds have a
    small-batch product (prompt rows of any count up to SMALL_BATCH_MAX go through it)."""
    from kernels.simd import HOST_AVX2, HOST_F16C
    names = {k.name for k in registered() if k.small_matmul is not None}
    assert names == ({"q4", "q4m", "q4k", "q5", "q5m", "q5k", "q8", "q6", "t4", "t4x"} if HOST_AVX2 and HOST_F16C
                     else set())
    assert MATVEC_MAX_BATCH < 4 <= SMALL_BATCH_MAX


@pytest.mark.parametrize("name", SMALL_TYPES)
def test_small_batch_products_within_tolerance(name):
    """n = 1, 3, 4, 5, 16 (FMA groups of 4, 2 and 1 rows), 33 and 70 (several chunks of rows):
    within 1e-5 * sum|w x| of float64 on the exact activations, through Weight.matmul and the
    kind's product alike (bit-identical)."""
    if not has_small(name):
        return                                            # this host has no block decoders
    rng = np.random.default_rng(11)
    W = Weight(random_tensor(name, ROWS, COLS, rng), name, (ROWS, COLS))
    W64 = W.dequantize().astype(np.float64)
    for n in (1, 3, 4, 5, 16, ROW_CHUNK + 1, 2 * ROW_CHUNK + 6):
        X = rng.standard_normal((n, COLS)).astype(np.float32)
        if n >= 3:
            X[1] *= 1e4                                   # rows of very different scales
            X[2, :40] = 0.0
        Y = W.matmul(X)
        assert_close(Y, W64, X, f"{name} n={n}")
        direct = np.empty_like(Y)
        W.kind.small_matmul(W.packed, X, direct)
        assert bits_equal(Y, direct), f"{name} n={n}: Weight.matmul did not take the small-batch product"


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "IQ4_XS"])
def test_rows_do_not_depend_on_the_batch(name):
    """A row's result is bit-identical whatever other rows share the batch (any count, one row
    included), and whatever the thread count: each row tile is summed by one thread in a fixed order."""
    if not has_small(name):
        return
    rng = np.random.default_rng(12)
    W = Weight(random_tensor(name, ROWS, COLS, rng), name, (ROWS, COLS))
    X = rng.standard_normal((40, COLS)).astype(np.float32)
    full = W.matmul(X)
    assert bits_equal(W.matmul(X[3:9]), full[3:9])
    assert bits_equal(W.matmul(X[30:36]), full[30:36])
    assert bits_equal(W.matmul(X[7:8]), full[7:8]) and bits_equal(W.matmul(X[9:11]), full[9:11])
    old = kernels.get_num_threads()
    try:
        for threads in {1, min(2, kernels.threads.numba.config.NUMBA_NUM_THREADS)}:
            kernels.set_num_threads(threads)
            assert bits_equal(W.matmul(X), full), f"{name}: {threads} threads change the result"
    finally:
        kernels.set_num_threads(old)


def test_output_into_a_column_slice():
    """out may be a column slice of a wider array (a fused projection's part): only its columns are written."""
    if not has_small("Q4_0"):
        return
    rng = np.random.default_rng(13)
    W = Weight(random_tensor("Q4_0", ROWS, 256, rng), "Q4_0", (ROWS, 256))
    X = rng.standard_normal((6, 256)).astype(np.float32)
    big = np.full((6, ROWS + 10), np.nan, np.float32)
    W.matmul(X, out=big[:, 5:5 + ROWS])
    assert np.isnan(big[:, :5]).all() and np.isnan(big[:, 5 + ROWS:]).all()
    assert bits_equal(big[:, 5:5 + ROWS], W.matmul(X))


def test_block_major_layout():
    """block_major puts block b of row i0 + i of the chunk of rows i0.. (c rows) at i0 cols + 32 (c b + i)."""
    n, cols = ROW_CHUNK + 3, 96
    X = np.arange(n * cols, dtype=np.float32).reshape(n, cols)
    flat = block_major(X)
    for i in (0, 5, ROW_CHUNK - 1, ROW_CHUNK, n - 1):
        i0 = i // ROW_CHUNK * ROW_CHUNK
        c = min(ROW_CHUNK, n - i0)
        for b in range(cols // 32):
            o = i0 * cols + 32 * (c * b + i - i0)
            assert np.array_equal(flat[o:o + 32], X[i, 32 * b:32 * b + 32])


@pytest.mark.parametrize("name", ["IQ4_NL", "IQ4_XS", "MXFP4"])
def test_table_tile_decoder_is_bit_exact(name):
    """The table kind's K-major tile decoder (prompt matmul) gives exactly the rows of dequantize()."""
    from .test_tile_decode import decode_T
    if kind_of(as_type(name)).decode_T is None:
        return
    rng = np.random.default_rng(14)
    W = Weight(random_tensor(name, ROWS, 512, rng), name, (ROWS, 512))
    full = decode_T(W, 0, 3)
    assert np.array_equal(full[:, :ROWS].T.view(np.uint32), W.dequantize().view(np.uint32))
    assert not full[:, ROWS:].any()
