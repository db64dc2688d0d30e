"""K-major tile decoders of the prompt matmul (kernels.tile_decode) against the exact row decoders.

Every value must be bit-identical to Weight.dequantize() (the registry's exact decoding), with row
counts that leave a partial last 32-row tile.  The decoders serve hosts with AVX2 and F16C; elsewhere
the matmul decodes row-major tiles (checked in test_matvec.py) and only the dispatch is checked here.
The matmul through these tiles is checked against float64 products in test_matvec.py (tolerance
1e-5 * sum|w x| there); here one 512-token product is checked through Weight.matmul as well.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels import Weight
from kernels.repack import ROW_TILE
from kernels.weight import T_DECODED_KINDS

from .test_matvec import assert_close, random_tensor

NIBBLE_TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K"]
BYTE_TYPES = ["Q8_0", "Q6_K"]


def decode_T(W: Weight, t0: int, t1: int) -> np.ndarray:
    """Tiles t0..t1-1 of W decoded K-major (Weight._tile_T), with 7 spare columns filled with NaN
    (never written)."""
    out = np.full((W.shape[1], (t1 - t0) * ROW_TILE + 7), np.nan, np.float32)
    W._tile_T(t0 * ROW_TILE, min(W.shape[0], t1 * ROW_TILE), out)
    assert np.isnan(out[:, -7:]).all(), "wrote past the tiles"
    return out[:, :-7]


@pytest.mark.parametrize("name", NIBBLE_TYPES + BYTE_TYPES)
def test_tile_decoders_are_bit_exact(name):
    """decode_*_T give exactly the rows of dequantize(), transposed, for every tile (including a
    partial last one, whose padding lanes decode to zeros), from any first tile."""
    if not T_DECODED_KINDS:
        return                                            # not used on this host (see the module docstring)
    rng = np.random.default_rng(3)
    rows, cols = 77, 512                                  # 3 tiles, the last with 13 rows
    W = Weight(random_tensor(name, rows, cols, rng), name, (rows, cols))
    ref = W.dequantize()
    full = decode_T(W, 0, 3)
    assert np.array_equal(full[:, :rows].T.view(np.uint32), ref.view(np.uint32))
    assert not full[:, rows:].any()
    part = decode_T(W, 1, 3)
    assert np.array_equal(part[:, :rows - ROW_TILE].T.view(np.uint32), ref[ROW_TILE:].view(np.uint32))


def test_k_major_tiles_serve_the_prompt_matmul():
    """Where the AVX2 tile decoders run, the nibble and byte kinds' matmuls use them; a 512-token
    product of a ragged matrix stays within 1e-5 * sum|w x| of float64."""
    from kernels.simd import HOST_AVX2, HOST_F16C
    assert bool(T_DECODED_KINDS) == (HOST_AVX2 and HOST_F16C)
    rng = np.random.default_rng(4)
    for name in ("Q5_0", "Q6_K"):
        W = Weight(random_tensor(name, 200, 256, rng), name, (200, 256))
        X = rng.standard_normal((512, 256)).astype(np.float32)
        assert_close(W.matmul(X), W.dequantize().astype(np.float64), X, f"{name} matmul n=512")
