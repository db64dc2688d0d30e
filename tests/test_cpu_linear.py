"""CPU backend products written into caller buffers (``out=``), as the transformer's forward
pass does: the results must be bit-identical to products into fresh arrays, for one token
(matvec), small batches (a matvec per row) and larger batches (tiled matmul), including a
fused projection whose parts have different types (each part written into its columns)."""
from __future__ import annotations

import numpy as np
import pytest

from gguf_engine.backends.cpu import CPUBackend
from kernels import Weight
from kernels.quantizer import quantize

COLS = 64


def _weight(qtype: str, rows: int, seed: int) -> Weight:
    w = np.random.default_rng(seed).standard_normal((rows, COLS)).astype(np.float32)
    return Weight(quantize(w, qtype), qtype, (rows, COLS))


@pytest.fixture(scope="module")
def parts():
    """A fused projection of two types (like Gemma's Q5_0 [q|k] with a Q8_0 v)."""
    return [_weight("Q5_0", 96, 1), _weight("Q8_0", 32, 2)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 40])
def test_linear_fused_into_out_is_bit_identical(parts, n):
    """linear_fused(ws, X, out=buf) returns buf holding exactly concat(linear(w, X)) (bitwise)."""
    be = CPUBackend(2)
    X = np.random.default_rng(n).standard_normal((n, COLS)).astype(np.float32)
    ref = np.concatenate([be.linear(w, X) for w in parts], axis=1)       # (n, 128)
    buf = np.full((n, 128), np.nan, np.float32)
    got = be.linear_fused(parts, X, out=buf)
    assert np.shares_memory(got, buf)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(be.linear_fused(parts, X).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("n", [1, 3, 40])
def test_linear_into_out_is_bit_identical(parts, n):
    """linear(w, X, out=buf) returns buf holding exactly linear(w, X) (bitwise)."""
    be = CPUBackend(2)
    X = np.random.default_rng(10 + n).standard_normal((n, COLS)).astype(np.float32)
    w = parts[0]
    buf = np.empty((n, w.shape[0]), np.float32)
    got = be.linear(w, X, out=buf)
    assert np.shares_memory(got, buf)
    assert np.array_equal(got.view(np.uint32), be.linear(w, X).view(np.uint32))
