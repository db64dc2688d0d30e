"""Encoders (kernels.quantize) against ggml's own bytes, plus round trips and error cases.

The fixtures ../shared/fixtures/quant_blocks/TYPE.npz hold rows x (16, 512), an importance
matrix, and ggml's bytes without (q) and with (q_im) it.
Tolerances: at least 99% of blocks byte-identical to ggml's, and the (imatrix-)weighted squared
reconstruction error at most 0.1% above ggml's.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import GGMLType, quantize
from kernels.encoders import ENCODERS, REQUIRES_IMATRIX
from kernels.encoders.common import fp32_to_fp16_bits, nearest_int
from kernels.registry import QTYPES
from kernels.types import BLOCK_SIZES
from tests.conftest import fixture_path

FIXTURE_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                 "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
                 "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]

MIN_IDENTICAL = 0.99      # share of blocks byte-identical to ggml's
MAX_ERR_RATIO = 1.001     # our weighted squared error / ggml's

_cache: dict[str, dict] = {}


def _load(name: str) -> dict:
    if name not in _cache:
        with np.load(fixture_path("quant_blocks", f"{name}.npz")) as z:
            _cache[name] = {k: z[k] for k in z.files}
    return _cache[name]


def _cases():
    for name in FIXTURE_TYPES:
        yield pytest.param(name, "q", id=f"{name}-plain")
        yield pytest.param(name, "q_im", id=f"{name}-imatrix")


@pytest.mark.parametrize("name,key", list(_cases()))
def test_bytes_and_error_match_ggml(name, key):
    """>= 99% of blocks identical to ggml's and weighted squared error <= 1.001 x ggml's."""
    z = _load(name)
    t = GGMLType[name]
    x, imatrix = z["x"], z["imatrix"]
    if key not in z:
        # ggml refuses these types without an importance matrix; so do we
        assert t in REQUIRES_IMATRIX
        with pytest.raises(ValueError, match="importance matrix"):
            quantize(x, t)
        return
    im = imatrix if key == "q_im" else None
    q = quantize(x, t, im)
    ref = z[key]
    assert q.dtype == np.uint8 and q.shape == ref.shape
    ts = BLOCK_SIZES[t][1]
    same = (q.reshape(-1, ts) == ref.reshape(-1, ts)).all(axis=1)
    assert same.mean() >= MIN_IDENTICAL, f"{name}/{key}: only {same.mean():.2%} of blocks identical"
    w = im if im is not None else np.ones(x.shape[1], np.float32)
    deq = kernels.dequantize(q, t, x.shape)
    err = float((w * (deq.astype(np.float64) - x) ** 2).sum())
    err_ggml = float((w * (z["deq" + key[1:]].astype(np.float64) - x) ** 2).sum())
    assert err <= err_ggml * MAX_ERR_RATIO + 1e-30, f"{name}/{key}: error {err:.6g} vs ggml {err_ggml:.6g}"


# rough relative RMS error bounds for gaussian rows (ggml reaches about half of each)
ROUND_TRIP_RMSE = {
    "F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06,
    "Q5_K": 0.06, "Q4_0": 0.13, "Q4_1": 0.13, "Q4_K": 0.12, "IQ4_NL": 0.12, "IQ4_XS": 0.12,
    "MXFP4": 0.2, "Q3_K": 0.25, "IQ3_S": 0.25, "IQ3_XXS": 0.3, "Q2_K": 0.45, "IQ2_S": 0.4,
    "IQ2_XS": 0.45, "IQ2_XXS": 0.5, "IQ1_M": 0.65, "IQ1_S": 0.7, "TQ2_0": 0.8, "TQ1_0": 0.8,
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_RMSE))
def test_round_trip_close(name):
    """quantize -> dequantize stays within a per-type relative RMS error on gaussian rows."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 768)).astype(np.float32)
    t = GGMLType[name]
    im = rng.uniform(0.5, 2.0, 768).astype(np.float32) if t in REQUIRES_IMATRIX else None
    q = quantize(x, t, im)
    deq = kernels.dequantize(q, t, x.shape)
    rel = np.sqrt(np.mean((deq - x) ** 2) / np.mean(x ** 2))
    assert rel <= ROUND_TRIP_RMSE[name], f"{name}: relative RMSE {rel:.4f}"


def test_registry_exposes_the_encoders():
    """Every encoder is reachable as the registry's QTYPES[type].encode."""
    for t, enc in ENCODERS.items():
        if t in QTYPES:
            assert QTYPES[t].encode is enc


def test_q8_k_layout():
    """Q8_K: float32 d = max/-127, int8 quants with |q| <= 127, int16 sums of each 16 quants."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    q = quantize(x, GGMLType.Q8_K).reshape(4, 292)
    blocks = x.reshape(4, 256)
    d = q[:, :4].copy().view(np.float32)[:, 0]
    qs = q[:, 4:260].view(np.int8).astype(np.int64)
    bsums = q[:, 260:].copy().view(np.int16)
    imax = np.abs(blocks).argmax(axis=1)
    np.testing.assert_allclose(d, blocks[np.arange(4), imax] / -127.0, rtol=1e-6)
    np.testing.assert_array_equal(bsums, qs.reshape(4, 16, 16).sum(axis=2))
    assert np.abs(qs * d[:, None] - blocks).max() <= np.abs(d).max() * 0.5 + 1e-6


def test_threads_do_not_change_bytes():
    """Splitting the rows over 1 or several worker threads gives the same bytes."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    im = rng.uniform(0.1, 2.0, 512).astype(np.float32)
    n0 = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = quantize(x, GGMLType.IQ4_XS, im)
        kernels.set_num_threads(max(2, n0) if n0 > 1 else 1)
        many = quantize(x, GGMLType.IQ4_XS, im)
    finally:
        kernels.set_num_threads(n0)
    np.testing.assert_array_equal(one, many)


def test_zero_and_single_rows():
    """All-zero rows give all-zero scales; a 1-D row is taken as one row; no rows give an empty result."""
    z = np.zeros((2, 256), np.float32)
    for t in (GGMLType.Q4_K, GGMLType.IQ4_XS, GGMLType.Q8_0):
        assert kernels.dequantize(quantize(z, t), t, z.shape).max() == 0
    one = quantize(np.ones(256, np.float32), GGMLType.Q8_0)
    assert one.shape == (1, 8 * 34)
    assert quantize(np.zeros((0, 64), np.float32), GGMLType.Q4_0).shape == (0, 36)


def test_errors():
    """Bad shapes, bad imatrix and imatrix-only types are refused with clear messages."""
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((2, 100), np.float32), GGMLType.Q4_K)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.zeros((1, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.zeros((2, 2, 32), np.float32), GGMLType.Q4_0)
    with pytest.raises(ValueError, match="imatrix has 128 entries"):
        quantize(x, GGMLType.Q4_K, np.ones(128, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        quantize(x, GGMLType.Q4_K, np.full(256, np.nan, np.float32))
    for t in (GGMLType.IQ1_S, GGMLType.IQ2_XXS, GGMLType.IQ2_XS):
        with pytest.raises(ValueError, match="importance matrix"):
            quantize(x, t)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        quantize(np.array([[0.0] * 32, [np.inf] * 32], np.float32), GGMLType.Q4_0)
    with pytest.raises(ValueError, match="multiple of the block size"):
        ENCODERS[GGMLType.Q4_K](np.zeros((1, 128), np.float32), None)
    with pytest.raises(ValueError, match="no encoder"):
        quantize(x, GGMLType.I32)


def test_float_conversions_round_like_ggml():
    """F16 rounds to nearest even (NaN -> quiet 0x7E00); BF16 rounds to nearest even, NaN stays NaN."""
    v = np.array([[1.0, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 65519.0, 65520.0, 2 ** -25, 3 * 2 ** -26,
                   np.nan, -np.nan, np.inf]], np.float32)
    h = quantize(v, GGMLType.F16).view(np.uint16)[0]
    assert h.tolist() == [0x3C00, 0x3C00, 0x3C02, 0x7BFF, 0x7C00, 0x0000, 0x0001, 0x7E00, 0xFE00, 0x7C00]
    b = np.array([[1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, np.nan]], np.float32)
    bb = quantize(b, GGMLType.BF16).view(np.uint16)[0]
    assert bb[0] == 0x3F80 and bb[1] == 0x3F82 and (bb[2] & 0x7FC0) == 0x7FC0


def test_scalar_helpers():
    """nearest_int rounds half to even like ggml's magic-number trick; fp16 bits match numpy's RNE."""
    for v, want in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.4999998, 3)]:
        assert nearest_int(np.float32(v)) == want
    rng = np.random.default_rng(1)
    vals = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 5, 2000),
                           [6.1e-5, 6.0e-5, 5.96e-8, 2.98e-8, 65504.0, 65519.99]]).astype(np.float32)
    want = vals.astype(np.float16).view(np.uint16)
    got = np.array([fp32_to_fp16_bits(v) for v in vals], np.uint16)
    np.testing.assert_array_equal(got, want)


def test_public_quantize_is_the_function():
    """`kernels.quantize` is the encoder entry point (its module is kernels.quantizer)."""
    import kernels.quantizer as mod
    x = np.ones((1, 32), np.float32)
    np.testing.assert_array_equal(kernels.quantize(x, "Q8_0"), mod.quantize(x, "Q8_0"))
