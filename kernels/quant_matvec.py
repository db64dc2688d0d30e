"""Quantized matrix-vector products y = W x on repacked weights (see repack.py).

Fast kernels, one per packed kind, parallel over row tiles with ``prange``:

* The weights are decoded on the fly (``d * q + m`` per 32-weight block is applied to
  the block's partial dot product; W is never materialised as float32).
* Arithmetic, every kind: float32 products and float32 sums.  Per row and block
  ``p = sum_k q_k x_k`` over the integer quants (four partial sums), then
  ``acc += d p + m sum(x_block)`` (Q6_K: ``acc += s_lo p_lo + s_hi p_hi`` over the
  (q - 32) values; F16/BF16/F32: a plain dot on the converted weights).  Each row is
  computed by one thread in a fixed order, so results depend neither on the thread
  count nor on how weights were stacked.
* Error bound the tests use: ``|y - W x| <= 1e-5 * sum_j |w_j x_j|`` (+1e-30), with W
  the exact dequantization and ``W x`` taken in float64.

Vectorization (checked with ``inspect_asm``, see ``tools/bench_kernels.py --asm``):
the quants are row-interleaved in tiles of ROW_TILE rows, so the innermost loop runs
over the tile's rows (SIMD lanes = 8 rows per ymm: vpmovzxbd, vpand, vcvtdq2ps and
vfmadd231ps with a broadcast activation), with the loops over a block's bytes fully
unrolled inside it.  Details that keep the code vector and fast:

* the kernels use ``fastmath={"contract", ...}`` *without* reassociation: the four
  partial sums of a block stay four independent FMA chains (with reassociation LLVM
  merges them into one chain and the loop becomes FMA-latency bound);
* the high nibble is taken as ``v & 0xF0`` times ``x / 16`` (exact: a power-of-two
  scaling) instead of ``v >> 4``, and the 5th / top bits by bit tests (``w & (1 << k)``)
  instead of ``w >> k``: Numba widens those shifts to int64 lanes (half-width vectors
  plus packing shuffles);
* indices are uint64 (``_u``) so Numba emits no negative-index wraparound.

The exact decoders (``decode_*``: rows -> float32 for ``Weight.rows``/``dequantize``
and the matmul tiles) are serial and nogil; Weight splits rows over worker threads.
The ``raw`` kind (types without a fast layout) decodes a few rows at a time with the
registry's decoder into a per-thread buffer and dots them (float32, same bound).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .repack import ROW_TILE

f32 = np.float32
_I15 = np.int32(15)
_I240 = np.int32(240)
_I4 = np.int32(4)
_I32 = np.int32(32)
_I512 = np.int32(512)
_I0 = np.int32(0)
_I16 = np.int32(16)
_I256 = np.int32(256)
# Float flags of the tiled kernels: fused multiply-add, no reassociation (see the module docstring).
_FM = {"contract", "nsz", "arcp", "afn"}


@njit(cache=True, inline="always")
def _u(i):
    """An index known to be >= 0, as uint64: Numba then emits no negative-index wraparound,
    which would otherwise stop LLVM from vectorizing the loads."""
    return np.uint64(i)


def _scale(v):
    """A per-block scale or offset as float32: stored as float32, or as float16 bits (uint16)."""
    return np.float32(np.asarray(v).view(np.float16) if np.asarray(v).dtype == np.uint16 else v)


@overload(_scale)
def _scale_impl(v):
    if isinstance(v, types.Integer):
        return lambda v: half_to_f32(v)
    return lambda v: np.float32(v)


@njit(cache=True)
def _x_prep(x):
    """x (32 nb,) -> x16 = x / 16 (exact) and xs (nb,) the block sums."""
    nb = x.size // 32
    xs = np.empty(nb, np.float32)
    for b in range(nb):
        s = f32(0)
        for k in range(32):
            s += x[32 * b + k]
        xs[b] = s
    return x * f32(0.0625), xs


@njit(cache=True, inline="always")
def _top2(word, k, unit):
    """unit * (bits 2k..2k+1 of word), by bit tests rather than shifts: Numba widens a
    variable int32 shift to int64 lanes, which stops the 8-wide vector code."""
    lo = unit if word & np.int32(1 << (2 * k)) else _I0
    hi = (unit + unit) if word & np.int32(2 << (2 * k)) else _I0
    return lo | hi


@njit(cache=True, inline="always")
def _store_tile(acc, t, y):
    """The tile's results into y, leaving out the padding rows past the end."""
    n = min(ROW_TILE, y.size - t * ROW_TILE)
    for l in range(n):
        y[t * ROW_TILE + l] = acc[l]


# --------------------------------------------------------------------------- fast kernels (tiled layouts)
# Per tile t: q = qt[t]; block b's byte k of lane l is q[(b*K + k)*R + l]; per-block values at [t, b*R + l].


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_q4(qt, d, m, x, y):
    """Q4_0 / Q4_1 / Q4_K tiled: qt (T, nb*16*R) uint8, d, m (T, nb*R) f32; y (rows,) f32."""
    R = ROW_TILE
    nb = x.size // 32
    x16, xs = _x_prep(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        dt = d[t]
        mt = m[t]
        acc = np.zeros(R, np.float32)
        for b in range(nb):
            base = b * 16 * R
            o = 32 * b
            xsb = xs[b]
            for l in range(R):
                p0 = f32(0)
                p1 = f32(0)
                p2 = f32(0)
                p3 = f32(0)
                for k in range(8):
                    v = np.int32(q[_u(base + k * R + l)])
                    p0 += f32(v & _I15) * x[o + k]
                    p1 += f32(v & _I240) * x16[o + 16 + k]
                for k in range(8, 16):
                    v = np.int32(q[_u(base + k * R + l)])
                    p2 += f32(v & _I15) * x[o + k]
                    p3 += f32(v & _I240) * x16[o + 16 + k]
                i = _u(b * R + l)
                acc[l] += _scale(dt[i]) * ((p0 + p1) + (p2 + p3)) + _scale(mt[i]) * xsb
        _store_tile(acc, t, y)


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_q5(qt, qh, d, m, x, y):
    """Q5_0 / Q5_1 / Q5_K tiled: as q4 plus qh (T, nb*R) int32 holding the 5th bits."""
    R = ROW_TILE
    nb = x.size // 32
    x16, xs = _x_prep(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        dt = d[t]
        mt = m[t]
        ht = qh[t]
        acc = np.zeros(R, np.float32)
        for b in range(nb):
            base = b * 16 * R
            o = 32 * b
            xsb = xs[b]
            for l in range(R):
                i = _u(b * R + l)
                hb = ht[i]
                p0 = f32(0)
                p1 = f32(0)
                p2 = f32(0)
                p3 = f32(0)
                for k in range(8):
                    v = np.int32(q[_u(base + k * R + l)])
                    p0 += f32((v & _I15) | (_I16 if hb & np.int32(1 << k) else _I0)) * x[o + k]
                    p1 += f32((v & _I240) | (_I256 if hb & np.int32(1 << (k + 16)) else _I0)) * x16[o + 16 + k]
                for k in range(8, 16):
                    v = np.int32(q[_u(base + k * R + l)])
                    p2 += f32((v & _I15) | (_I16 if hb & np.int32(1 << k) else _I0)) * x[o + k]
                    p3 += f32((v & _I240) | (_I256 if hb & np.int32(1 << (k + 16)) else _I0)) * x16[o + 16 + k]
                acc[l] += _scale(dt[i]) * ((p0 + p1) + (p2 + p3)) + _scale(mt[i]) * xsb
        _store_tile(acc, t, y)


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_q8(qt, d, x, y):
    """Q8_0 tiled: qt (T, nb*32*R) int8, d (T, nb*R) f32."""
    R = ROW_TILE
    nb = x.size // 32
    for t in prange(qt.shape[0]):
        q = qt[t]
        dt = d[t]
        acc = np.zeros(R, np.float32)
        for b in range(nb):
            base = b * 32 * R
            o = 32 * b
            for l in range(R):
                p0 = f32(0)
                p1 = f32(0)
                p2 = f32(0)
                p3 = f32(0)
                for k in range(8):
                    p0 += f32(q[_u(base + k * R + l)]) * x[o + k]
                    p1 += f32(q[_u(base + (k + 8) * R + l)]) * x[o + 8 + k]
                for k in range(16, 24):
                    p2 += f32(q[_u(base + k * R + l)]) * x[o + k]
                    p3 += f32(q[_u(base + (k + 8) * R + l)]) * x[o + 8 + k]
                acc[l] += _scale(dt[_u(b * R + l)]) * ((p0 + p1) + (p2 + p3))
        _store_tile(acc, t, y)


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_q6(qt, hl, hh, sl, sh, x, y):
    """Q6_K tiled: low nibbles qt, top-2-bit words hl/hh, scales sl/sh (weights 0-15 / 16-31)."""
    R = ROW_TILE
    nb = x.size // 32
    x16, xs = _x_prep(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        hlt = hl[t]
        hht = hh[t]
        slt = sl[t]
        sht = sh[t]
        acc = np.zeros(R, np.float32)
        for b in range(nb):
            base = b * 16 * R
            o = 32 * b
            for l in range(R):
                i = _u(b * R + l)
                a = hlt[i]
                c = hht[i]
                p0 = f32(0)
                p1 = f32(0)
                p2 = f32(0)
                p3 = f32(0)
                for k in range(8):
                    v = np.int32(q[_u(base + k * R + l)])
                    p0 += f32(((v & _I15) | _top2(a, k, _I16)) - _I32) * x[o + k]
                    p1 += f32(((v & _I240) | _top2(c, k, _I256)) - _I512) * x16[o + 16 + k]
                for k in range(8, 16):
                    v = np.int32(q[_u(base + k * R + l)])
                    p2 += f32(((v & _I15) | _top2(a, k, _I16)) - _I32) * x[o + k]
                    p3 += f32(((v & _I240) | _top2(c, k, _I256)) - _I512) * x16[o + 16 + k]
                acc[l] += slt[i] * (p0 + p2) + sht[i] * (p1 + p3)
        _store_tile(acc, t, y)


@njit(cache=True, inline="always")
def half_to_f32(h):
    """IEEE half bits (uint16) -> float32, exact and branch-free (so it vectorizes).

    The 15 magnitude bits shifted into a float32 are the value times 2^-112 for
    normals and subnormals alike; the multiply by 2^112 is exact.  Inf/NaN keep
    their payload as ggml's conversion does."""
    u = np.uint32(h)
    em = np.uint32(u & np.uint32(0x7FFF))
    v = np.uint32(em << np.uint32(13)).view(np.float32) * np.float32(5.192296858534828e33)
    special = np.uint32(np.uint32(0x7F800000) | ((u & np.uint32(0x3FF)) << np.uint32(13)))
    if em >= np.uint32(0x7C00):
        v = special.view(np.float32)
    return -v if u & np.uint32(0x8000) else v


@njit(cache=True, inline="always")
def bf16_to_f32(h):
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_f16(w, x, y):
    """F16 weights kept as their uint16 bits, converted on the fly."""
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += half_to_f32(wr[j]) * x[j]
        y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_bf16(w, x, y):
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += bf16_to_f32(wr[j]) * x[j]
        y[r] = acc


@njit(nogil=True, cache=True)
def decode_f16(w, ids, out):
    cols = w.shape[1]
    for i in range(ids.size):
        wr = w[ids[i]]
        o = out[i]
        for j in range(cols):
            o[j] = half_to_f32(wr[j])


@njit(nogil=True, cache=True)
def decode_bf16(w, ids, out):
    cols = w.shape[1]
    for i in range(ids.size):
        wr = w[ids[i]]
        o = out[i]
        for j in range(cols):
            o[j] = bf16_to_f32(wr[j])


@njit(parallel=True, fastmath=True, cache=True)
def matvec_f32(w, x, y):
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += wr[j] * x[j]
        y[r] = acc


@njit(nogil=True, fastmath=True, cache=True)
def dot_rows(w, x, y):
    """y[i] = w[i] . x for a small float32 tile (serial; called per thread by the raw path)."""
    n, cols = w.shape
    for i in range(n):
        acc = f32(0)
        wr = w[i]
        for j in range(cols):
            acc += wr[j] * x[j]
        y[i] = acc


# --------------------------------------------------------------------------- exact decoders (rows -> float32)
# Serial and nogil (Weight splits the rows over its worker threads; cheaper to compile than prange).
# No fastmath: d*q is exact in float32 and "+ m" rounds once, exactly as ggml's expressions;
# the symmetric types use (q - off) * d as ggml does, which also keeps the sign of zero.
# Row r lives in tile r // R, lane r % R (see repack.py).


@njit(nogil=True, cache=True)
def decode_q4(qt, d, m, off, ids, out):
    """off = 0: w = q d + m (Q4_1, Q4_K); off = 8: w = (q - 8) d (Q4_0, m unused)."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            db = _scale(d[t, b * R + l])
            mb = _scale(m[t, b * R + l])
            for k in range(16):
                v = np.int32(q[(b * 16 + k) * R + l])
                lo = v & _I15
                hi = v >> _I4
                if off == 0:
                    o[32 * b + k] = f32(lo) * db + mb
                    o[32 * b + 16 + k] = f32(hi) * db + mb
                else:
                    o[32 * b + k] = f32(lo - off) * db
                    o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_q5(qt, qh, d, m, off, ids, out):
    """off = 0: w = q d + m (Q5_1, Q5_K); off = 16: w = (q - 16) d (Q5_0, m unused)."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            db = _scale(d[t, b * R + l])
            mb = _scale(m[t, b * R + l])
            hb = qh[t, b * R + l]
            for k in range(16):
                v = np.int32(q[(b * 16 + k) * R + l])
                lo = (v & _I15) | (((hb >> k) & 1) << 4)
                hi = (v >> _I4) | (((hb >> (k + 16)) & 1) << 4)
                if off == 0:
                    o[32 * b + k] = f32(lo) * db + mb
                    o[32 * b + 16 + k] = f32(hi) * db + mb
                else:
                    o[32 * b + k] = f32(lo - off) * db
                    o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_q8(qt, d, ids, out):
    R = ROW_TILE
    nb = d.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            db = _scale(d[t, b * R + l])
            for k in range(32):
                o[32 * b + k] = f32(q[(b * 32 + k) * R + l]) * db


@njit(nogil=True, cache=True)
def decode_q6(qt, hl, hh, sl, sh, ids, out):
    R = ROW_TILE
    nb = sl.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            j = b * R + l
            a = hl[t, j]
            c = hh[t, j]
            s0 = sl[t, j]
            s1 = sh[t, j]
            for k in range(16):
                v = np.int32(q[(b * 16 + k) * R + l])
                lo = ((v & _I15) | (((a >> (2 * k)) & 3) << 4)) - _I32
                hi = ((v >> _I4) | (((c >> (2 * k)) & 3) << 4)) - _I32
                o[32 * b + k] = s0 * f32(lo)
                o[32 * b + 16 + k] = s1 * f32(hi)


@njit(nogil=True, cache=True)
def gather_f32(w, ids, out):
    for i in range(ids.size):
        out[i, :] = w[ids[i]]
