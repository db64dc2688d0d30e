"""Row forms whose loops vectorize (``kernels.rows``) give the values of the plain loops, bit for bit.

- ``head_row``: a view's head row typed contiguous reads the same elements as the view's row, and a
  kernel taking such rows refuses a view whose last axis is not of unit stride;
- ``square_sums``: the one vector chain of a contiguous row against the four scalar chains of the
  same row read through a strided view, for row lengths around multiples of 4 and of the vector
  loop, over values of very different magnitudes (the RMS norms built on it: ``ops.rms_norm`` and
  ``ops.add_rms_norm`` on contiguous and strided inputs);
- the Q/K/V preparation on views of a fused projection output (the model's case) against the same
  kernel on contiguous copies;
- ``ops.gated_act_halves`` (a fused gate|up block) against ``ops.gated_act`` of its strided halves,
  SiLU and GELU, with zeros, infinities, subnormals and large values.
Every comparison is exact (no tolerance): these are the same float operations in the same order.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from kernels import ops
from kernels.rows import check_unit_rows, head_row, square_sums


@njit(cache=True)
def _rows_sum(x3):
    check_unit_rows(x3)
    out = np.empty(x3.shape[:2] + (x3.shape[2],), np.float32)
    for t in range(x3.shape[0]):
        for h in range(x3.shape[1]):
            r = head_row(x3, t, h)
            for j in range(r.shape[0]):
                out[t, h, j] = r[j]
    return out


@njit(cache=True)
def _square_sums(row):
    return square_sums(row)


def test_head_row_reads_the_view():
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((5, 10 * 8), dtype=np.float32)
    view = qkv[:, 16:64].reshape(5, 6, 8)                 # (n, heads, hd), not C-contiguous
    assert np.array_equal(_rows_sum(view), view)
    assert np.array_equal(_rows_sum(np.ascontiguousarray(view)), view)
    with pytest.raises(ValueError):
        _rows_sum(qkv[:, ::2].reshape(5, 5, 8))           # rows of stride 2


@pytest.mark.parametrize("d", [1, 3, 4, 5, 31, 32, 33, 64, 127, 128, 131, 1024, 2051])
def test_square_sums_vector_equals_chains(d):
    rng = np.random.default_rng(d)
    for scale in (1e-20, 1e-3, 1.0, 1e3, 1e18):
        x = (rng.standard_normal((3, d)) * scale).astype(np.float32)
        wide = np.zeros((3, 2 * d), np.float32)
        wide[:, ::2] = x
        assert _square_sums(x[1]) == _square_sums(wide[1, ::2])   # vector chain == scalar chains
        w = rng.random(d).astype(np.float32)
        a, b = np.empty_like(x), np.empty_like(x)
        ops.rms_norm(x, w, 1e-6, a)
        ops.rms_norm(wide[:, ::2], w, 1e-6, b)
        assert np.array_equal(a.view(np.int32), b.view(np.int32))
        xa, xb = x.copy(), wide[:, ::2]
        delta = rng.standard_normal((3, d)).astype(np.float32)
        ops.add_rms_norm(xa, delta, w, True, w, 1e-6, a)
        ops.add_rms_norm(xb, delta, w, True, w, 1e-6, b)
        assert np.array_equal(a.view(np.int32), b.view(np.int32))
        assert np.array_equal(xa.view(np.int32), xb.view(np.int32))


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("has_bias, has_norm", [(False, False), (True, False), (False, True), (True, True)])
def test_qkv_prepare_on_views(neox, has_bias, has_norm):
    n, H, Hkv, hd = 9, 6, 2, 64
    rng = np.random.default_rng(1)
    qkv = (3 * rng.standard_normal((n, (H + 2 * Hkv) * hd))).astype(np.float32)

    def split(a):
        return (a[:, :H * hd].reshape(n, H, hd), a[:, H * hd:(H + Hkv) * hd].reshape(n, Hkv, hd),
                a[:, (H + Hkv) * hd:].reshape(n, Hkv, hd))
    bq, bk, bv = (rng.standard_normal((h, hd)).astype(np.float32) for h in (H, Hkv, Hkv))
    qn, kn = rng.random(hd).astype(np.float32), rng.random(hd).astype(np.float32)
    ang = np.outer(np.arange(32), 1e4 ** (-np.arange(hd // 2) / (hd // 2))).astype(np.float32)
    outs = []
    for views in (True, False):
        a = qkv.copy()
        q3, k3, v3 = split(a) if views else (np.ascontiguousarray(x) for x in split(a))
        kc, vc = np.zeros((32, Hkv, hd), np.float16).view(np.uint16), np.zeros((32, Hkv, hd), np.float32)
        ops.qkv_prepare(q3, k3, v3, bq, bk, bv, has_bias, qn, kn, has_norm, 1e-6, np.cos(ang), np.sin(ang), 3,
                        neox, kc, vc)
        outs.append([np.array(x) for x in (q3, k3, v3, kc, vc)])
    for x, y in zip(*outs):
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("gelu", [False, True])
def test_gated_act_halves_equals_strided(gelu):
    rng = np.random.default_rng(2)
    n, ff = 37, 96
    gu = (rng.standard_normal((n, 2 * ff)) * rng.choice([0.1, 1, 10, 100], size=(n, 1))).astype(np.float32)
    gu[0, :8] = [0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, 88.0, -88.0]
    a, b = np.empty((n, ff), np.float32), np.empty((n, ff), np.float32)
    with np.errstate(all="ignore"):
        ops.gated_act(gu[:, :ff], gu[:, ff:], gelu, a)
        ops.gated_act_halves(gu, gelu, b)
    assert np.array_equal(a.view(np.int32), b.view(np.int32))
