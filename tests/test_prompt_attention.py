"""A prompt's attention (the CPU backend's BLAS path): bit for bit the formulation it replaced.

The path (``CPUBackend._attention_blas``) decodes the cache once per call into per-kv-head float32
rows (``attention_kv.load_heads``), gathers each block's queries, and scales, masks and softmaxes
the scores in one kernel (``ops.masked_softmax``).  Its outputs are checked bit-identical to the
previous formulation, written out here with numpy: each kv head's rows copied to float32, the
block's queries reshaped, the scores scaled as a whole, each visible run of keys softmaxed by
``ops._softmax_row``, the masked ones zeroed, the two products with the same operands.  Causal and
sliding-window masks, soft-capping, grouped-query groups of 1, 3, 4 and 8, f32, f16 and q8_0
caches, prompts of several query blocks and chunks that start at n_past > 0.

The softmax's maximum is an int32 maximum of the floats' order-keeping bit map (``ops._row_max``):
checked equal to the scalar compare chain it replaced, ties of -0 and +0 aside (where the
exponentials are the same), and ``ops.exp_shifted`` checked bit-identical to its previous form.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from gguf_engine.backends.cpu import ATTENTION_QUERY_BLOCK, CPUBackend
from gguf_engine.model.kv_cache import KVCache, cache_rows
from kernels import attention_kv, ops
from kernels.threads import single_threaded_blas


def previous_attention(q3, K, V, pos0, scale, window, softcap):
    """The prompt attention as computed before, over float32 keys and values (C, Hkv, hd)."""
    n, H, hd = q3.shape
    Hkv = K.shape[1]
    G = H // Hkv
    lo = max(0, pos0 - window + 1) if window > 0 else 0
    out = np.empty_like(q3)
    for a in range(0, n, ATTENTION_QUERY_BLOCK):
        b = min(n, a + ATTENTION_QUERY_BLOCK)
        for g in range(Hkv):
            p0 = pos0 + a
            key0 = max(lo, p0 - window + 1) if window > 0 else lo
            key1 = pos0 + b
            Kg = np.ascontiguousarray(K[key0:key1, g, :], dtype=np.float32)
            Vg = np.ascontiguousarray(V[key0:key1, g, :], dtype=np.float32)
            S = q3[a:b, g * G:(g + 1) * G, :].reshape((b - a) * G, hd) @ Kg.T
            S *= np.float32(scale)
            for r in range(S.shape[0]):
                p = p0 + r // G
                jlo = max((p - window + 1 if window > 0 else 0) - key0, 0)
                jhi = min(p - key0 + 1, S.shape[1])
                ops._softmax_row(S[r, jlo:jhi], softcap, np.empty(max(jhi - jlo, 1), np.int32))
                S[r, :jlo] = 0.0
                S[r, jhi:] = 0.0
            out[a:b, g * G:(g + 1) * G, :] = (S @ Vg).reshape(b - a, G, hd)
    return out


def _decoded(rows, C, Hkv, hd):
    """One side of a cache layer as float32 (C, Hkv, hd), exactly as stored."""
    out = np.empty((C, Hkv, hd), np.float32)
    attention_kv.load_rows(cache_rows(rows)[1], cache_rows(rows)[0][:C], out)
    return out


@pytest.mark.parametrize("cache_type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("H, Hkv", [(4, 4), (6, 2), (8, 2), (8, 1)])
@pytest.mark.parametrize("n, pos0, window, softcap", [
    (300, 0, 0, 0.0),          # causal, three query blocks
    (150, 200, 0, 0.0),        # a second chunk of a prompt
    (260, 0, 100, 0.0),        # sliding window
    (140, 170, 96, 30.0),      # sliding window and soft-cap over a later chunk
    (12, 5, 0, 20.0),          # a short prompt, soft-capped
])
def test_prompt_attention_bit_identical(cache_type, H, Hkv, n, pos0, window, softcap):
    hd = 64
    rng = np.random.default_rng(n + pos0 + H)
    C = pos0 + n
    kv = KVCache(1, C, Hkv, hd, cache_type)
    kv.store(0, 0, 2 * rng.standard_normal((C, Hkv, hd), dtype=np.float32),
             rng.standard_normal((C, Hkv, hd), dtype=np.float32))
    k, v = kv.layer(0)
    q3 = 2 * rng.standard_normal((n, H, hd), dtype=np.float32)
    with single_threaded_blas():             # as the backend runs it (a threaded GEMM splits its tiles otherwise)
        ref = previous_attention(q3, _decoded(k, C, Hkv, hd), _decoded(v, C, Hkv, hd), pos0, hd ** -0.5, window,
                                 softcap)
    for threads in (1, 2):
        be = CPUBackend(threads)
        out = np.full_like(q3, np.nan)
        with be.scope():
            be._attention_blas(q3, k, v, pos0, hd ** -0.5, window, softcap, out)
        assert np.array_equal(out.view(np.int32), ref.view(np.int32)), threads


@njit(cache=True, fastmath=ops._FAST)
def previous_exp_shifted(row, softcap, nbuf):
    """ops.exp_shifted as it was: the soft-cap and the maximum in one scalar compare chain."""
    n = row.shape[0]
    m = np.float32(-np.inf)
    for j in range(n):
        s = row[j]
        if softcap > 0:
            s = np.float32(softcap * math.tanh(s / softcap))
            row[j] = s
        if s > m:
            m = s
    for j in range(n):
        row[j] -= m
    ops.exp_inplace(row, nbuf)
    total = 0.0
    for j in range(n):
        total += row[j]
    return m, total


def _rows_with_specials(rng, n):
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    pick = rng.integers(0, n, size=(4, max(1, n // 8)))
    x[pick[0]] = 0.0
    x[pick[1]] = -0.0
    x[pick[2]] = np.float32(1e-42) * rng.choice([-1, 1])      # subnormals
    x[pick[3]] = -np.inf
    return x


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33, 128, 511])
def test_row_max_and_exp_shifted(n):
    rng = np.random.default_rng(n)
    nbuf = np.empty(n, np.int32)
    for trial in range(20):
        x = _rows_with_specials(rng, n)
        if trial == 0:
            x[:] = -np.inf if n > 1 else 0.0
        m = ops._row_max(x.copy(), nbuf)
        assert m == x.max() and (np.signbit(m) <= np.signbit(x.max()))   # -0 / +0 ties may give +0
        for softcap in (0.0, 30.0):
            if np.isinf(x).all():
                continue
            a, b = x.copy(), x.copy()
            ma, ta = ops.exp_shifted(a, softcap, nbuf)
            mb, tb = previous_exp_shifted(b, softcap, np.empty(n, np.int32))
            assert ma == mb and ta == tb
            assert np.array_equal(a.view(np.int32), b.view(np.int32))
