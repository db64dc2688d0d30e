"""Attention over a KV cache stored in GGML block formats (Numba).

A cache of this kind keeps each (position, kv head) row of ``head_dim`` values as the bytes of
one GGML type: F32, F16, BF16 or one of the 32-value block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
IQ4_NL (llama.cpp's cache types).  Rows are written with the types' own bit-exact encoders
(``kernels.legacy``, ``kernels.numerics``) and read back with their exact decoders, so a cache row
decodes to exactly what ggml's dequantization of the same bytes gives.

The attention kernels never make a float copy of the cache: each key (value) row is decoded
into a small buffer of ``head_dim`` floats the moment it is used, once for all the query heads
that share it (grouped-query attention), and consumed there.  A step's work is split into
chunks of keys; each chunk keeps its own running maximum, sum and weighted values (the
flash-decoding split), and the chunks are merged exactly afterwards, so even a model with one
kv head spreads a long context over every thread.

Shapes (n = new tokens, H = query heads, Hkv = kv heads, hd = head size, C = cache rows,
rb = bytes per row of the type):
    q3, out3: (n, H, hd) float32     k_rows, v_rows: (C, Hkv, rb_k), (C, Hkv, rb_v) uint8
Types are given by their GGML type id (``GGMLType``), a run-time integer.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .floats import decode_bf16, decode_f16, decode_f32
from .legacy import (K_IQ4_NL, K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, decode_iq4_nl, decode_q4_0, decode_q4_1,
                     decode_q5_0, decode_q5_1, decode_q8_0, encode_rows)
from .numerics import f16_bits_to_f32
from .ops import exp_shifted, f32_to_f16_bits

# keys per work item of the attention kernels, and rows decoded at a time within one
KEY_CHUNK = 256
TILE_ROWS = 32

_FAST = {"reassoc", "contract", "nsz"}
# int32 constants: integer literals are int64 in Numba, and int64 -> float32 conversion does not vectorize on AVX2
_I80 = np.int32(0x80)
_NO_WEIGHTS = np.zeros(1, dtype=np.float32)
# GGML type id -> ``kernels.legacy``'s encoder code (-1: not a block type of the cache)
LEGACY_KIND = np.full(32, -1, dtype=np.int64)
for _t, _k in ((8, K_Q8_0), (2, K_Q4_0), (3, K_Q4_1), (6, K_Q5_0), (7, K_Q5_1), (20, K_IQ4_NL)):
    LEGACY_KIND[_t] = _k


@njit(cache=True, nogil=True)
def decode_row(t, src, dst):
    """One cache row: src uint8 (rb,) of type t -> dst float32 (hd,), exactly as ggml decodes it."""
    if t == 8:
        decode_q8_0(src, dst)
    elif t == 2:
        decode_q4_0(src, dst)
    elif t == 1:
        decode_f16(src, dst)
    elif t == 0:
        decode_f32(src, dst)
    elif t == 30:
        decode_bf16(src, dst)
    elif t == 3:
        decode_q4_1(src, dst)
    elif t == 6:
        decode_q5_0(src, dst)
    elif t == 7:
        decode_q5_1(src, dst)
    elif t == 20:
        decode_iq4_nl(src, dst)
    else:
        raise ValueError("KV cache: unsupported row type")


@njit(cache=True, nogil=True)
def encode_row(t, x, dst, xbuf, ybuf):
    """One cache row: x float32 (hd,) -> dst uint8 (rb,) in type t, as ggml quantizes it (the
    reference rounding, no importance matrix; F16 and BF16 round to nearest even).
    xbuf (1, hd) float32 and ybuf (1, rb) uint8: scratch."""
    hd = x.shape[0]
    if t == 0:
        f = xbuf[0]
        for i in range(hd):
            f[i] = x[i]
        b = f.view(np.uint8)
        for i in range(dst.shape[0]):
            dst[i] = b[i]
        return
    if t == 1 or t == 30:
        for i in range(hd):
            xbuf[0, i] = x[i]
        u = xbuf[0].view(np.uint32)
        h = ybuf[0].view(np.uint16)
        if t == 1:
            f32_to_f16_bits(xbuf[0], h)
        else:
            for i in range(hd):                  # ggml_compute_fp32_to_bf16: nearest even, NaN quiet
                w = u[i]
                if (w & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                    h[i] = np.uint16((w >> np.uint32(16)) | np.uint32(64))
                else:
                    h[i] = np.uint16((w + np.uint32(0x7FFF) + ((w >> np.uint32(16)) & np.uint32(1)))
                                     >> np.uint32(16))
    else:
        for i in range(hd):
            xbuf[0, i] = x[i]
        kind = LEGACY_KIND[t]
        if kind < 0:
            raise ValueError("KV cache: unsupported row type")
        encode_rows(xbuf, _NO_WEIGHTS, False, kind, ybuf, 0, 1)
    for i in range(dst.shape[0]):
        dst[i] = ybuf[0, i]


@njit(cache=True, nogil=True)
def store_rows(k3, v3, tk, tv, k_rows, v_rows, pos0):
    """Encode the n new positions' keys and values into cache rows pos0..pos0+n-1.
    k3, v3: (n, Hkv, hd) float32; k_rows (C, Hkv, rb_k), v_rows (C, Hkv, rb_v) uint8."""
    n, Hkv, hd = k3.shape
    xbuf = np.empty((1, hd), dtype=np.float32)
    ybuf = np.empty((1, max(k_rows.shape[2], v_rows.shape[2])), dtype=np.uint8)
    for t in range(n):
        for h in range(Hkv):
            encode_row(tk, k3[t, h], k_rows[pos0 + t, h], xbuf, ybuf)
            encode_row(tv, v3[t, h], v_rows[pos0 + t, h], xbuf, ybuf)


@njit(cache=True, nogil=True)
def load_rows(t, rows, out):
    """Decode cache rows (m, Hkv, rb) of type t into out (m, Hkv, hd) float32."""
    for p in range(rows.shape[0]):
        for h in range(rows.shape[1]):
            decode_row(t, rows[p, h], out[p, h])


@njit(cache=True, nogil=True)
def load_head(t, rows, h, p0, p1, out):
    """Decode kv head h of cache rows p0..p1-1 (type t) into out (p1 - p0, hd) float32: one head's
    keys or values for a batched (BLAS) attention block."""
    for p in range(p0, p1):
        decode_row(t, rows[p, h], out[p - p0])


@njit(cache=True, nogil=True, fastmath=_FAST)
def decode_tile(t, rows, h, j0, j1, buf):
    """Rows j0..j1-1 of kv head h (type t) into buf[:j1 - j0] (float32, hd wide), exactly as
    ``decode_row`` gives them.  F32, F16 and Q8_0 are written out here as straight loops, which
    LLVM vectorizes; the others go through their family decoders row by row."""
    hd = buf.shape[1]
    nb = hd // 32
    qk = hd // nb if nb else 32          # 32, as a run-time value: LLVM vectorizes the block loops instead
                                         # of unrolling them into scalar code
    if t == 8:                                                    # Q8_0: d (f16), 32 int8
        for j in range(j0, j1):
            r = rows[j, h]
            o = buf[j - j0]
            for b in range(nb):
                ob = 34 * b
                d = f16_bits_to_f32(np.uint32(r[ob]) | (np.uint32(r[ob + 1]) << np.uint32(8)))
                for i in range(qk):
                    o[qk * b + i] = np.float32((np.int32(r[ob + 2 + i]) ^ _I80) - _I80) * d
    elif t == 1:                                                  # F16
        for j in range(j0, j1):
            r = rows[j, h]
            o = buf[j - j0]
            for i in range(hd):
                o[i] = f16_bits_to_f32(np.uint32(r[2 * i]) | (np.uint32(r[2 * i + 1]) << np.uint32(8)))
    elif t == 0:                                                  # F32
        for j in range(j0, j1):
            r = rows[j, h]
            o = buf[j - j0]
            for i in range(hd):
                o[i] = np.uint32(np.uint32(r[4 * i]) | (np.uint32(r[4 * i + 1]) << np.uint32(8))
                                 | (np.uint32(r[4 * i + 2]) << np.uint32(16))
                                 | (np.uint32(r[4 * i + 3]) << np.uint32(24))).view(np.float32)
    else:
        for j in range(j0, j1):
            decode_row(t, rows[j, h], buf[j - j0])


@njit(cache=True, nogil=True, fastmath=_FAST)
def _chunk(qs, kvh, k_rows, tk, v_rows, tv, lo, hi, softcap, tile, s, nbuf, m, l, acc):
    """Keys lo..hi-1 of kv head kvh for G query heads qs (G, hd) (already scaled): scores
    s (G, hi-lo), then per head g the chunk's maximum m[g], sum l[g] of exp(score - m[g]) and
    acc[g] (hd,) = the sum of those weights times the value rows.  Keys and values are decoded a
    tile of rows at a time (tile: (T, hd) float32), once for all G heads."""
    G, hd = qs.shape
    T = tile.shape[0]
    for j0 in range(lo, hi, T):
        j1 = min(j0 + T, hi)
        decode_tile(tk, k_rows, kvh, j0, j1, tile)
        for jj in range(j1 - j0):
            kr = tile[jj]
            for g in range(G):
                a = np.float32(0.0)
                for d in range(hd):
                    a += qs[g, d] * kr[d]
                s[g, j0 - lo + jj] = a
    for g in range(G):
        m[g], l[g] = exp_shifted(s[g, :hi - lo], softcap, nbuf)
        for d in range(hd):
            acc[g, d] = 0.0
    for j0 in range(lo, hi, T):
        j1 = min(j0 + T, hi)
        decode_tile(tv, v_rows, kvh, j0, j1, tile)
        for jj in range(j1 - j0):
            vr = tile[jj]
            for g in range(G):
                p = s[g, j0 - lo + jj]
                for d in range(hd):
                    acc[g, d] += p * vr[d]


@njit(cache=True, nogil=True)
def _plan(n, Hkv, pos0, window, chunk):
    """Work items (token, kv head, first key, one past the last key) of n new tokens: each token's
    visible keys cut into runs of at most ``chunk``.  Returns (items (k, 4) int64, first item of
    each (token, kv head) pair (n * Hkv + 1,))."""
    count = 0
    for t in range(n):
        p = pos0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        count += Hkv * ((p + 1 - lo + chunk - 1) // chunk)
    items = np.empty((count, 4), dtype=np.int64)
    first = np.empty(n * Hkv + 1, dtype=np.int64)
    k = 0
    for t in range(n):
        p = pos0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        for h in range(Hkv):
            first[t * Hkv + h] = k
            for a in range(lo, p + 1, chunk):
                items[k, 0] = t
                items[k, 1] = h
                items[k, 2] = a
                items[k, 3] = min(a + chunk, p + 1)
                k += 1
    first[n * Hkv] = k
    return items, first


@njit(cache=True, nogil=True)
def _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, chunk):
    """Work item i of ``_plan``: its token's G query heads, scaled, over its keys."""
    hd = q3.shape[2]
    t, h = items[i, 0], items[i, 1]
    qs = np.empty((G, hd), dtype=np.float32)
    for g in range(G):
        for d in range(hd):
            qs[g, d] = q3[t, h * G + g, d] * np.float32(scale)
    tile = np.empty((TILE_ROWS, hd), dtype=np.float32)
    s = np.empty((G, chunk), dtype=np.float32)
    nbuf = np.empty(chunk, dtype=np.int32)
    _chunk(qs, h, k_rows, tk, v_rows, tv, items[i, 2], items[i, 3], softcap, tile, s, nbuf, m[i], l[i], acc[i])


@njit(cache=True, nogil=True)
def _merge(items, first, G, m, l, acc, out3):
    """out3[t, heads of kv head h] = the exact combination of the chunks of each (t, h) pair."""
    hd = out3.shape[2]
    for th in range(first.shape[0] - 1):
        i0, i1 = first[th], first[th + 1]
        if i0 == i1:
            continue
        t, h = items[i0, 0], items[i0, 1]
        for g in range(G):
            mx = np.float32(-np.inf)
            for i in range(i0, i1):
                mx = max(mx, m[i, g])
            total = np.float32(0.0)
            o = out3[t, h * G + g]
            for d in range(hd):
                o[d] = 0.0
            for i in range(i0, i1):
                w = np.float32(np.exp(m[i, g] - mx))
                total += w * l[i, g]
                for d in range(hd):
                    o[d] += w * acc[i, g, d]
            inv = np.float32(1.0) / total
            for d in range(hd):
                o[d] *= inv


@njit(cache=True, nogil=True)
def _work(q3, Hkv, pos0, window):
    """(G, the work items and their pair starts from ``_plan``, and each item's results: maxima
    m (k, G), sums l (k, G), weighted values acc (k, G, hd))."""
    n, H, hd = q3.shape
    G = H // Hkv
    items, first = _plan(n, Hkv, pos0, window, KEY_CHUNK)
    k = items.shape[0]
    return (G, items, first, np.empty((k, G), dtype=np.float32), np.empty((k, G), dtype=np.float32),
            np.empty((k, G, hd), dtype=np.float32))


@njit(cache=True, parallel=True)
def attention_rows(q3, k_rows, tk, v_rows, tv, pos0, scale, window, softcap, out3):
    """Causal attention of the n tokens at positions pos0.. over a block-format cache, threads
    over (token, kv head, key chunk).  Token t at p = pos0 + t sees keys max(0, p-window+1)..p
    (window <= 0: all); head h reads kv head h // (H / Hkv); softcap > 0 caps the scores.
    q3, out3: (n, H, hd) float32; k_rows, v_rows: (C, Hkv, rb) uint8 in types tk, tv."""
    G, items, first, m, l, acc = _work(q3, k_rows.shape[1], pos0, window)
    for i in prange(items.shape[0]):
        _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, KEY_CHUNK)
    _merge(items, first, G, m, l, acc, out3)


@njit(cache=True, nogil=True)
def attention_rows_serial(q3, k_rows, tk, v_rows, tv, pos0, scale, window, softcap, out3):
    """``attention_rows`` on the calling thread only (short contexts: no thread-pool launch)."""
    G, items, first, m, l, acc = _work(q3, k_rows.shape[1], pos0, window)
    for i in range(items.shape[0]):
        _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, KEY_CHUNK)
    _merge(items, first, G, m, l, acc, out3)


@njit(cache=True, nogil=True)
def hadamard_rows(x3, n):
    """In place on x3 (m, heads, hd) float32: every run of n values (n a power of two dividing hd)
    is multiplied by the orthonormal Walsh-Hadamard matrix of order n in Sylvester order (symmetric
    and its own inverse), by the fast transform's butterflies, then scaled by 1/sqrt(n)."""
    m, H, hd = x3.shape
    scale = np.float32(1.0 / np.sqrt(n))
    for t in range(m):
        for h in range(H):
            row = x3[t, h]
            for c0 in range(0, hd, n):
                s = 1
                while s < n:
                    for i in range(c0, c0 + n, 2 * s):
                        for j in range(i, i + s):
                            a = row[j]
                            b = row[j + s]
                            row[j] = a + b
                            row[j + s] = a - b
                    s *= 2
                for j in range(c0, c0 + n):
                    row[j] *= scale
