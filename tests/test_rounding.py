"""The activation roundings of the integer products (kernels.kinds.tiled): round_activations (two
int8 terms), round_activations1 (one), round_activations16 (int16) and round_rows of a batch.

The claim is bit-identity, no tolerance: each equals the same float32 operations written out in
numpy (a block's scale from max |x| over the block, NaNs skipped; ties to even), so the kernels'
way of finding the maximum (several running maxima, combined) and of writing a batch's rows in
place change no bit.  Blocks holding NaN or infinity have no defined quants (their products are
NaN whatever the quants), so there only the block scales are compared.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels.kinds.tiled import round_activations, round_activations1, round_activations16, round_rows

f32 = np.float32
ROUNDER = f32(12582912.0)       # 1.5 * 2^23, the kernels' round-to-even constant


def _awkward_rows(rng) -> np.ndarray:
    """(24, 512) float32: blocks of many magnitudes, zeros, -0, one large value in a block, ties,
    and blocks with NaN or infinity (rows 0..5)."""
    X = (rng.standard_normal((24, 512)) * 10.0 ** rng.integers(-30, 30, (24, 16)).repeat(32, 1)).astype(f32)
    X[0, 3] = np.nan
    X[1, 32:64] = np.nan
    X[2, 70] = np.inf
    X[3, 100] = -np.inf
    X[4, 0] = -np.nan
    X[5, 200] = np.nan
    X[5, 201] = f32(3e38)
    X[6, :64] = 0
    X[7, 64:96] = -0.0
    X[8, 96:128] = f32(0.5) * f32(127)                        # ties after scaling
    X[9, 128:160] = np.arange(-16, 16, dtype=f32) / f32(2)
    X[10, 160] = f32(3.4e38)
    return X


def _reference(x: np.ndarray, top: int, terms: int):
    """The kernels' float32 operations in numpy: -> (q, r, d, dr, s) per 32-block (r, dr, s unused
    for terms 16)."""
    B = x.reshape(-1, 32)
    a = np.abs(B)
    amax = np.where(np.isnan(a), f32(0), a).max(1).astype(f32)                    # NaNs skipped
    with np.errstate(all="ignore"):
        inv = np.where(amax > 0, f32(top) / np.where(amax > 0, amax, f32(1)), f32(0)).astype(f32)
        u = B * inv[:, None]
        v = (u + ROUNDER) - ROUNDER
        w = ((u - v) * f32(254) + ROUNDER) - ROUNDER
        d = amax / f32(top)
        dr = amax / f32(127 * 254)
        sq = v.sum(1, dtype=np.float64).astype(f32)            # integers: exact in either type
        sr = w.sum(1, dtype=np.float64).astype(f32)
        s = d * sq + dr * sr if terms == 2 else d * sq
    return v, w, d, dr, s


def _finite_blocks(x: np.ndarray) -> np.ndarray:
    """The blocks whose quants are defined: finite values and a normal, non-zero scale or all zero."""
    B = x.reshape(-1, 32)
    amax = np.abs(B).max(1)
    return np.isfinite(B).all(1) & ((amax == 0) | (amax >= 1e-30))


def _bits(a) -> np.ndarray:
    return np.asarray(a).view(np.uint32 if np.asarray(a).dtype == np.float32 else np.asarray(a).dtype)


@pytest.mark.parametrize("terms", [1, 2, 16])
def test_roundings_equal_their_float32_operations(terms):
    """Every row's quants, scales and block sums equal the numpy reference bit for bit (the block
    scales on every block, the rest on the blocks with defined quants)."""
    X = _awkward_rows(np.random.default_rng(7))
    top = 32767 if terms == 16 else 127
    for x in X:
        v, w, d, dr, s = _reference(x, top, terms)
        ok = _finite_blocks(x)
        if terms == 16:
            xq, dx = round_activations16(x)
        elif terms == 2:
            xq, xr, dx, dr2, xs = round_activations(x)
            np.testing.assert_array_equal(_bits(dr2), _bits(dr))
            np.testing.assert_array_equal(xr.reshape(-1, 32)[ok], w[ok].astype(np.int8))
            np.testing.assert_array_equal(_bits(xs[ok]), _bits(s[ok]))
        else:
            xq, dx, xs = round_activations1(x)
            np.testing.assert_array_equal(_bits(xs[ok]), _bits(s[ok]))
        np.testing.assert_array_equal(_bits(dx), _bits(d))
        np.testing.assert_array_equal(xq.reshape(-1, 32)[ok], v[ok].astype(xq.dtype))


@pytest.mark.parametrize("terms", [1, 2])
def test_round_rows_is_each_row_rounded_alone(terms):
    """round_rows writes each row's rounding straight into the batch's arrays: row i's slices are
    bit for bit round_activations (terms 2) or round_activations1 (terms 1) of row i alone."""
    X = _awkward_rows(np.random.default_rng(8))
    xq, xr, dx, dr, xs = round_rows(X, terms)
    cols = X.shape[1]
    assert xr.size == (X.size if terms == 2 else 0) and dr.shape == (X.shape[0], cols // 32 if terms == 2 else 0)
    for i, x in enumerate(X):
        ok = np.repeat(_finite_blocks(x), 32)
        one = round_activations(x) if terms == 2 else round_activations1(x)
        np.testing.assert_array_equal(xq[i * cols:(i + 1) * cols][ok], one[0][ok])
        np.testing.assert_array_equal(_bits(dx[i]), _bits(one[-3 if terms == 2 else 1]))
        np.testing.assert_array_equal(_bits(xs[i]), _bits(one[-1]))
        if terms == 2:
            np.testing.assert_array_equal(xr[i * cols:(i + 1) * cols][ok], one[1][ok])
            np.testing.assert_array_equal(_bits(dr[i]), _bits(one[3]))
