"""Fused matvec kernels of the lattice i-quants (kernels.slow_matvec: the integer kernels of
kernels.lattice_isums on AVX2 hosts, the portable float kernels elsewhere) against float64 products.

Tolerance (every product check): |y - y_ref| <= 1e-5 * sum_j |w_j x_j| + 1e-30 per output, where
y_ref = dequant(W) @ x in float64, dequant is the type's exact registry decoder and x the
activations the kernel multiplies: x itself for the float kernels, W.rounded(x) (two int8 terms
per 32-block, within max|x_block| / 64516 of x) for the integer ones; end to end, the integer
kernels stay within sum_j |w_j| |x_j - x_hat_j| + 1e-5 * sum_j |w_j x_j| of the exact product.
Thread-count independence is checked bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import Weight
from kernels.registry import QTYPES
from kernels.lattice_isums import MATVEC_INT
from kernels.simd import HOST_AVX2
from kernels.slow_matvec import _N8, MATVEC, rounds_activations, slow_matvec
from kernels.types import BLOCK_SIZES, GGMLType

REL_TOL = 1e-5

# fp16 scale fields (byte offsets in a block), overwritten in the random data
FP16_FIELDS = {
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ1_S": (0,),
    "IQ1_M": (),
}
TYPES = sorted(FP16_FIELDS)


def random_weight(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random raw bytes (rows, row_bytes) with finite scales of both signs over several decades."""
    rng = np.random.default_rng(seed)
    bs, ts = BLOCK_SIZES[GGMLType[name]]
    n = rows * cols // bs
    b = rng.integers(0, 256, (n, ts), dtype=np.uint8)

    def scales():
        return (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 0, n)).astype(np.float16)

    for off in FP16_FIELDS[name]:
        b[:, off:off + 2] = scales().view(np.uint8).reshape(n, 2)
    if name == "IQ1_M":   # the fp16 scale is spread over the top nibbles of bytes 49, 51, 53, 55
        h = scales().view(np.uint16).astype(np.uint32)
        for k, byte in enumerate((49, 51, 53, 55)):
            b[:, byte] = (b[:, byte] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    return b.reshape(rows, cols // bs * ts)


def exact(name: str, raw: np.ndarray, cols: int) -> np.ndarray:
    out = np.empty(raw.shape[0] * cols, np.float32)
    QTYPES[GGMLType[name]].decode(np.ascontiguousarray(raw).reshape(-1), out)
    return out.reshape(raw.shape[0], cols).astype(np.float64)


def assert_close(y, W64, x, what, slack=0.0):
    ref = W64 @ x.astype(np.float64)
    bound = REL_TOL * (np.abs(W64) @ np.abs(x.astype(np.float64))) + slack + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    assert (err <= bound).all(), f"{what}: {(err > bound).sum()} outputs outside tolerance, " \
                                 f"worst err/bound {(err / bound).max():.3g}"


def shapes(name):
    """A single row, an odd row count, and rows not a multiple of the row chunks; for the
    32-weight types a row length that is not a multiple of 256 (a partial last group of 8 blocks)."""
    bs = BLOCK_SIZES[GGMLType[name]][0]
    if bs == 32:
        return [(1, 32), (1, 288), (7, 544), (67, 256)]
    return [(1, 256), (7, 512), (67, 768)]


def test_every_slow_type_has_a_kernel():
    """Each slow-path type the tests cover has a fused float kernel, and on an AVX2 host an
    integer one too (whose activations Weight.rounded reports); no other type claims one."""
    assert set(MATVEC) == {GGMLType[n] for n in TYPES}
    assert set(MATVEC_INT) == (set(MATVEC) if HOST_AVX2 else set())
    assert all(rounds_activations(t) == HOST_AVX2 for t in MATVEC)
    y = np.empty(1, np.float32)
    assert not slow_matvec(np.zeros((1, 18), np.uint8), GGMLType.Q4_0, np.zeros(32, np.float32), y)


@pytest.mark.parametrize("name", TYPES)
def test_slow_matvec_matches_float64_reference(name):
    """matvec (kernel and through Weight) within 1e-5 * sum|w x_hat| of float64 dequant(W) @ x_hat, and
    within the end-to-end bound of dequant(W) @ x; the float kernel within 1e-5 * sum|w x| of
    dequant(W) @ x; 1 and 2 threads give bit-identical results."""
    t = GGMLType[name]
    before = kernels.get_num_threads() if hasattr(kernels, "get_num_threads") else None
    for k, (rows, cols) in enumerate(shapes(name)):
        raw = random_weight(name, rows, cols, seed=k)
        W64 = exact(name, raw, cols)
        x = np.random.default_rng(100 + k).standard_normal(cols).astype(np.float32)
        xh = Weight(raw.reshape(-1), t, (rows, cols)).rounded(x)
        y2 = np.full(rows, np.nan, np.float32)
        kernels.set_num_threads(2)
        assert slow_matvec(raw, t, x, y2)
        assert_close(y2, W64, xh, f"{name} {rows}x{cols}")
        assert_close(y2, W64, x, f"{name} {rows}x{cols} end to end", slack=np.abs(W64) @ np.abs(x - xh))
        yf = np.full(rows, np.nan, np.float32)
        MATVEC[t](raw, x, yf, _N8)
        assert_close(yf, W64, x, f"{name} {rows}x{cols} float kernel")
        y1 = np.full(rows, np.nan, np.float32)
        kernels.set_num_threads(1)
        try:
            slow_matvec(raw, t, x, y1)
        finally:
            kernels.set_num_threads(2 if before is None else before)
        assert np.array_equal(y1.view(np.uint32), y2.view(np.uint32)), f"{name}: 1 vs 2 threads differ"
        yw = Weight(raw.reshape(-1), t, (rows, cols)).matvec(x)
        assert np.array_equal(yw.view(np.uint32), y2.view(np.uint32)), f"{name}: Weight.matvec uses another path"
