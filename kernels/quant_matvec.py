"""Quantized matrix-vector products y = W x on repacked weights (see repack.py).

Fast kernels, one per packed kind, parallel over row tiles with ``prange``.  The weights
are decoded on the fly (W is never materialised as float32); each row is computed by one
thread in a fixed order, so results depend neither on the thread count nor on how
weights were stacked.  The quantized kinds use integer dot products (simd.py: AVX2
multiply-adds written as LLVM IR where the host has them, plain loops elsewhere) on
activations rounded per 32-block:

* ``matvec_nib``, the nibble kinds (Q4_0, Q4_1, Q4_K; Q5_0, Q5_1, Q5_K with their fifth
  bits).  x is split into two int8 terms, ``x ~ dx xq + dr xr`` (``round_activations``:
  the block rounded to int8 as ggml's Q8_0 does, plus its rounded remainder, within
  max|x_block| / 64516 of x); per block ``acc += d (dx isum_q + dr isum_r) + m xs`` in
  float32 (xs: the block sum of the rounded x).  llama.cpp rounds x once, to int8; the
  second term makes the product as accurate as a float one at a fraction of the cost.
* ``matvec_crumb``, 2-bit values (Q2_K, TQ2_0, TQ1_0; Q3_K with a third bit) with integer
  scales and mins per 16 weights: the same two terms, per super-block of 256 weights
  ``acc += d sum(sc_h p_h) - dm sum(mn_h xs_h)``.
* ``matvec_tab``, 4-bit indices into a 16-entry value table (IQ4_NL, IQ4_XS, MXFP4): the
  same two terms on the looked-up values, ``acc += d (dx isum_q + dr isum_r)``.
* ``matvec_tab16``, the lattice i-quants as 4-bit codes into a table of signed values with
  integer scales per 16 weights (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S): the
  same two terms, per super-block ``acc += d sum(sc_h p_h)``.
* ``matvec_i8``, one byte per weight (Q8_0, Q6_K as q - 32): x rounded to int16 per block
  (``round_activations16``, within max|x_block| / 65534), ``acc += dx (s_lo isum_lo +
  s_hi isum_hi)``.
* F16/BF16/F32: a plain float32 dot on the converted weights.

Error bound the tests use: ``|y - W x| <= 1e-5 * sum_j |w_j x_j|`` (+1e-30), with W the
exact dequantization, ``W x`` taken in float64, and x the activations the kernel
multiplies (``Weight.rounded``; the rounding itself is bounded separately).

Details that keep the float combine vector and fast (checked with ``inspect_asm``, see
``tools/bench_kernels.py --asm``): the lanes of every loop are the 32 rows of a tile;
``fastmath={"contract", ...}`` without reassociation; no branch inside a lane loop;
float16 scale bits are widened by ``fpext half`` (vcvtph2ps) where the host has F16C
(the integer bit-trick conversion, half_to_f32, the fallback, cost more than the dot
products); indices are uint64 (``_u``) so Numba emits no negative-index wraparound.

The exact decoders (``decode_*``: rows -> float32 for ``Weight.rows``/``dequantize``
and the matmul tiles) are serial and nogil; Weight splits rows over worker threads.
The ``raw`` kind (types without a fast layout) decodes a few rows at a time with the
registry's decoder into a per-thread buffer and dots them (float32, same bound).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .repack import ROW_TILE, _fifth_bit_index, _nibble_index, _pair_index, _third_bit_index
from .simd import HOST_F16C, crumb_isums, half_bits_to_f32, nibble_isums, pair_isums, table_isums, table_isums16

f32 = np.float32
_I15 = np.int32(15)
_I4 = np.int32(4)
# Float flags of the tiled kernels: fused multiply-add, no reassociation (see the module docstring).
_FM = {"contract", "nsz", "arcp", "afn"}


@njit(cache=True, inline="always")
def _u(i):
    """An index known to be >= 0, as uint64: Numba then emits no negative-index wraparound,
    which would otherwise stop LLVM from vectorizing the loads."""
    return np.uint64(i)


def _scale(v):
    """A per-block scale or offset as float32: stored as float32, or as float16 bits (uint16),
    converted by F16C's vcvtph2ps where the host has it (exact; a stored half scale is never
    NaN, repack keeps those in float32), else by half_to_f32."""
    return np.float32(np.asarray(v).view(np.float16) if np.asarray(v).dtype == np.uint16 else v)


@overload(_scale)
def _scale_impl(v):
    if isinstance(v, types.Integer):
        if HOST_F16C:
            return lambda v: half_bits_to_f32(v)
        return lambda v: half_to_f32(v)
    return lambda v: np.float32(v)


@njit(cache=True, inline="always")
def _store_tile(acc, t, y):
    """The tile's results into y, leaving out the padding rows past the end."""
    n = min(ROW_TILE, y.size - t * ROW_TILE)
    for l in range(n):
        y[t * ROW_TILE + l] = acc[l]


# --------------------------------------------------------------------------- fast kernels (tiled layouts)
# Per tile t: q = qt[t], laid out as repack.py's index helpers say; per-block values at [t, b*R + l].


_ROUNDER = f32(12582912.0)      # 1.5 * 2^23: (u + R) - R rounds |u| < 2^22 to an integer, ties to even


@njit(cache=True, inline="always")
def _round_even(u):
    """u rounded to the nearest integer (ties to even) as float32, |u| < 2^22; branch-free (it
    vectorizes; no reassociating flags, so the two adds are kept)."""
    return (u + _ROUNDER) - _ROUNDER


@njit(cache=True, inline="always")
def _block_absmax(x, o):
    """max |x[o:o+32]| (0 for a zero block)."""
    amax = f32(0)
    for k in range(32):
        a = abs(x[o + k])
        amax = a if a > amax else amax
    return amax


@njit(cache=True)
def round_activations(x):
    """x (32 nb,) f32 -> (xq, xr, dx, dr, xs): each 32-element block as two int8 terms,
    x ~ dx xq + dr xr with dx = max|x| / 127, xq = round(x / dx) (ggml's Q8_0 rounding,
    ties to even), dr = dx / 254 and xr = round((x - dx xq) / dr), so |x - dx xq - dr xr|
    <= dr / 2 = max|x| / 64516 (plus float32 rounding); xs (nb,) = the blocks' sums of
    those values.  Zero blocks give zeros."""
    nb = x.size // 32
    xq = np.empty(x.size, np.int8)
    xr = np.empty(x.size, np.int8)
    dx = np.empty(nb, np.float32)
    dr = np.empty(nb, np.float32)
    xs = np.empty(nb, np.float32)
    for b in range(nb):
        o = 32 * b
        amax = _block_absmax(x, o)
        inv = f32(127) / amax if amax > 0 else f32(0)
        sq = np.int32(0)
        sr = np.int32(0)
        for k in range(32):
            u = x[o + k] * inv                   # in units of dx: |u| <= 127
            v = _round_even(u)
            w = _round_even((u - v) * f32(254))  # the remainder in units of dr: |w| <= 127
            xq[o + k] = np.int8(v)
            xr[o + k] = np.int8(w)
            sq += np.int32(v)
            sr += np.int32(w)
        dx[b] = amax / f32(127)
        dr[b] = amax / f32(127 * 254)
        xs[b] = dx[b] * f32(sq) + dr[b] * f32(sr)
    return xq, xr, dx, dr, xs


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_nib(qt, qh, d, m, x, simd, y):
    """The nibble kinds, tiled: qt (T, nb*16*R) uint8; 5-bit types (Q5_0, Q5_1, Q5_K) also qh
    (T, nb*R) uint32, their fifth bits (4-bit types: qh of shape (1, 0)); d, m (T, nb*R);
    y (rows,) f32.  x is split into two int8 terms per block (round_activations); per block
    the integer sums come from simd.nibble_isums (simd: its AVX2 form where the host has it)."""
    R = ROW_TILE
    nb = x.size // 32
    five = qh.shape[1] > 0
    xq, xr, dx, dr, xs = round_activations(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        h = qh[t % qh.shape[0]]
        dt = d[t]
        mt = m[t]
        acc = np.zeros(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        for b in range(nb):
            nibble_isums(q, b * 16 * R, h, b * R, five, xq, xr, 32 * b, isum, simd)
            dxb = dx[b]
            drb = dr[b]
            xsb = xs[b]
            for l in range(R):
                i = _u(b * R + l)
                p = f32(isum[l]) * dxb + f32(isum[R + l]) * drb
                acc[l] += _scale(dt[i]) * p + _scale(mt[i]) * xsb
        _store_tile(acc, t, y)


@njit(cache=True, inline="always")
def _sums16(xq, xr):
    """The sums of the int8 activation terms over each 16 values, (2 nb,) int32 each."""
    sq = np.empty(xq.size // 16, np.int32)
    sr = np.empty(xq.size // 16, np.int32)
    for h in range(sq.size):
        a = 0
        b = 0
        for k in range(16 * h, 16 * h + 16):
            a += np.int32(xq[k])
            b += np.int32(xr[k])
        sq[h] = a
        sr[h] = b
    return sq, sr


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_crumb(qt, qb, sc, mn, d, dm, x, simd, y):
    """The 2-bit kind (Q2_K, Q3_K with its third bits qb, TQ2_0, TQ1_0), tiled: w = d sc u - dm mn per
    16 weights (see repack.py, kind ``q2``); y (rows,) f32.  Activations as in matvec_nib; the
    integer sums per 16 weights come from simd.crumb_isums."""
    R = ROW_TILE
    nb = x.size // 32
    three = qb.shape[1] > 0
    xq, xr, dx, dr, _ = round_activations(x)
    sq16, sr16 = _sums16(xq, xr)
    xs16 = np.empty(2 * nb, np.float32)     # sums of the rounded x over each 16
    for h in range(2 * nb):
        xs16[h] = dx[h // 2] * f32(sq16[h]) + dr[h // 2] * f32(sr16[h])
    for t in prange(qt.shape[0]):
        q = qt[t]
        h = qb[t % qb.shape[0]]
        sct = sc[t]
        mnt = mn[t]
        dt = d[t]
        dmt = dm[t]
        acc = np.zeros(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sums of sc * (q . x)
        am = np.empty(R, np.float32)        # and of mn * (sums of x)
        isum = np.empty(4 * R, np.int32)
        for s in range(nb // 8):
            aq[:] = 0
            am[:] = 0
            for b in range(8 * s, 8 * s + 8):
                crumb_isums(q, b * 8 * R, h, b * R, three, xq, xr, 32 * b, isum, simd)
                dxb = dx[b]
                drb = dr[b]
                x0 = xs16[2 * b]
                x1 = xs16[2 * b + 1]
                for l in range(R):
                    p0 = f32(isum[l]) * dxb + f32(isum[2 * R + l]) * drb
                    p1 = f32(isum[R + l]) * dxb + f32(isum[3 * R + l]) * drb
                    i0 = _u(2 * b * R + l)
                    i1 = i0 + _u(R)
                    aq[l] += f32(sct[i0]) * p0 + f32(sct[i1]) * p1
                    am[l] += f32(mnt[i0]) * x0 + f32(mnt[i1]) * x1
            for l in range(R):
                j = _u(s * R + l)
                acc[l] += _scale(dt[j]) * aq[l] - _scale(dmt[j]) * am[l]
        _store_tile(acc, t, y)


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_tab(qt, d, tab, x, simd, y):
    """The table kind (IQ4_NL, IQ4_XS, MXFP4), tiled: qt (T, nb*16*R) uint8 nibble indices into
    tab (16,) int8, d (T, nb*R) per-block scales; w = d tab[q].  Activations as in matvec_nib;
    the integer sums come from simd.table_isums."""
    R = ROW_TILE
    nb = x.size // 32
    xq, xr, dx, dr, _ = round_activations(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        dt = d[t]
        acc = np.zeros(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        for b in range(nb):
            table_isums(q, b * 16 * R, tab, xq, xr, 32 * b, isum, simd)
            dxb = dx[b]
            drb = dr[b]
            for l in range(R):
                p = f32(isum[l]) * dxb + f32(isum[R + l]) * drb
                acc[l] += _scale(dt[_u(b * R + l)]) * p
        _store_tile(acc, t, y)


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_tab16(qt, sc, d, utab, off, halves, narrow, x, simd, y):
    """The lattice table kind (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S), tiled: qt as
    matvec_tab's, sc (T, nb*2*R) int8 scales per 16 weights, d (T, nb/8*R) per 256; w = d sc tab[q]
    (see repack.py, kind ``t4s``).  utab = tab + off >= 0 and the flags are repack.LATTICE's
    (halves: the two 16s of a block have their own scales).  Activations as in matvec_nib; the
    integer sums come from simd.table_isums16 on utab, and off times the sums of x is taken off
    again, exactly, in int32; per super-block ``acc += d sum(sc_h p_h)`` as in matvec_crumb."""
    R = ROW_TILE
    nb = x.size // 32
    xq, xr, dx, dr, _ = round_activations(x)
    sq16, sr16 = _sums16(xq, xr)
    for t in prange(qt.shape[0]):
        q = qt[t]
        sct = sc[t]
        dt = d[t]
        acc = np.zeros(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sums of sc * (q . x)
        isum = np.empty(4 * R, np.int32)
        for s in range(nb // 8):
            aq[:] = 0
            for b in range(8 * s, 8 * s + 8):
                table_isums16(q, b * 16 * R, utab, halves, narrow, xq, xr, 32 * b, isum, simd)
                dxb = dx[b]
                drb = dr[b]
                q0 = np.int32(off * sq16[2 * b])        # the offset's share of the sums
                q1 = np.int32(off * sq16[2 * b + 1])
                r0 = np.int32(off * sr16[2 * b])
                r1 = np.int32(off * sr16[2 * b + 1])
                if halves:
                    for l in range(R):
                        p0 = f32(np.int32(isum[l] - q0)) * dxb + f32(np.int32(isum[2 * R + l] - r0)) * drb
                        p1 = f32(np.int32(isum[R + l] - q1)) * dxb + f32(np.int32(isum[3 * R + l] - r1)) * drb
                        i0 = _u(2 * b * R + l)
                        aq[l] += f32(sct[i0]) * p0 + f32(sct[i0 + _u(R)]) * p1
                else:
                    qb = np.int32(q0 + q1)
                    rb = np.int32(r0 + r1)
                    for l in range(R):
                        p = f32(np.int32(isum[l] - qb)) * dxb + f32(np.int32(isum[R + l] - rb)) * drb
                        aq[l] += f32(sct[_u(2 * b * R + l)]) * p
            for l in range(R):
                acc[l] += _scale(dt[_u(s * R + l)]) * aq[l]
        _store_tile(acc, t, y)


@njit(cache=True)
def round_activations16(x):
    """x (32 nb,) f32 -> (xq int16 (32 nb,), dx (nb,)): each 32-element block rounded to int16,
    x ~ dx xq with dx = max|x| / 32767 (ties to even), within dx / 2 = max|x| / 65534."""
    nb = x.size // 32
    xq = np.empty(x.size, np.int16)
    dx = np.empty(nb, np.float32)
    for b in range(nb):
        o = 32 * b
        amax = _block_absmax(x, o)
        inv = f32(32767) / amax if amax > 0 else f32(0)
        for k in range(32):
            xq[o + k] = np.int16(_round_even(x[o + k] * inv))
        dx[b] = amax / f32(32767)
    return xq, dx


@njit(parallel=True, fastmath=_FM, cache=True)
def matvec_i8(qt, s_lo, s_hi, x, simd, y):
    """One byte per weight (Q8_0, Q6_K tiled): qt (T, nb*32*R) int8; scales s_lo / s_hi
    (T, nb*R) of weights 0-15 / 16-31 of each block (the same array when the type has
    one scale per block); w = s q.  x is rounded to int16 per block (round_activations16)
    and the integer sums come from simd.pair_isums (simd: its AVX2 form where the host has it)."""
    R = ROW_TILE
    nb = x.size // 32
    xq, dx = round_activations16(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        lt = s_lo[t]
        ht = s_hi[t]
        acc = np.zeros(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        for b in range(nb):
            pair_isums(q, b * 32 * R, xq, 32 * b, isum, simd)
            dxb = dx[b]
            for l in range(R):
                i = _u(b * R + l)
                acc[l] += (_scale(lt[i]) * f32(isum[l]) + _scale(ht[i]) * f32(isum[R + l])) * dxb
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
    """F16 weights kept as their uint16 bits, converted on the fly (vcvtph2ps where the host has
    F16C: a NaN weight gives a NaN product whatever its payload)."""
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += _scale(wr[j]) * x[j]
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
def decode_nib(qt, qh, d, m, off, ids, out):
    """The nibble kinds (see matvec_nib): off = 0: w = q d + m (Q4_1, Q4_K, Q5_1, Q5_K);
    off = 8 / 16: w = (q - off) d (Q4_0 / Q5_0, m unused); q = nibble + 16 * fifth bit."""
    R = ROW_TILE
    nb = d.shape[1] // R
    five = qh.shape[1] > 0
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            db = _scale(d[t, b * R + l])
            mb = _scale(m[t, b * R + l])
            for k in range(16):
                v = np.int32(q[_nibble_index(b, k, l)])
                lo = v & _I15
                hi = v >> _I4
                if five:
                    w, bit = _fifth_bit_index(b, k, l)
                    lo |= np.int32((qh[t, w] >> bit) & np.uint32(1)) << _I4
                    hi |= np.int32((qh[t, w + 1] >> bit) & np.uint32(1)) << _I4
                if off == 0:
                    o[32 * b + k] = f32(lo) * db + mb
                    o[32 * b + 16 + k] = f32(hi) * db + mb
                else:
                    o[32 * b + k] = f32(lo - off) * db
                    o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_crumb(qt, qb, sc, mn, d, dm, off, ids, out):
    """The 2-bit kind (see matvec_crumb) as ggml computes it: off = 0 (Q2_K): w = u (d sc) - dm mn;
    off = 4 (Q3_K), 1 (TQ2_0, TQ1_0): w = (u - off) (d sc)."""
    R = ROW_TILE
    nb = sc.shape[1] // (2 * R)
    three = qb.shape[1] > 0
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            ds = _scale(d[t, (b // 8) * R + l])
            dms = _scale(dm[t, (b // 8) * R + l])
            for half in range(2):
                j = (b * 2 + half) * R + l
                dl = ds * f32(sc[t, j])
                ml = dms * f32(mn[t, j])
                base = ((b * 2 + half) * R + l) * 4
                for c in range(4):
                    for jj in range(4):
                        k = 16 * half + 4 * c + jj
                        u = (np.int32(q[base + jj]) >> np.int32(2 * c)) & np.int32(3)
                        if three:
                            w, bit = _third_bit_index(b, k, l)
                            u |= np.int32((qb[t, w] >> bit) & np.uint32(1)) << np.int32(2)
                        if off == 0:
                            o[32 * b + k] = f32(u) * dl - ml
                        else:
                            o[32 * b + k] = f32(u - off) * dl


@njit(nogil=True, cache=True)
def decode_tab(qt, d, tab, ids, out):
    """The table kind (see matvec_tab): w = tab[q] d, as ggml computes it."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            db = _scale(d[t, b * R + l])
            for k in range(16):
                v = np.int32(q[_nibble_index(b, k, l)])
                o[32 * b + k] = f32(tab[v & _I15]) * db
                o[32 * b + 16 + k] = f32(tab[v >> _I4]) * db


@njit(nogil=True, cache=True)
def decode_tab16(qt, sc, d, tab, ids, out):
    """The lattice table kind (see matvec_tab16): w = (d sc) tab[q], exact (every product of the
    scale and a table value fits float32's mantissa), so equal to ggml's."""
    R = ROW_TILE
    nb = sc.shape[1] // (2 * R)
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            ds = _scale(d[t, (b // 8) * R + l])
            d0 = ds * f32(sc[t, 2 * b * R + l])
            d1 = ds * f32(sc[t, (2 * b + 1) * R + l])
            for k in range(16):
                v = np.int32(q[_nibble_index(b, k, l)])
                o[32 * b + k] = f32(tab[v & _I15]) * d0
                o[32 * b + 16 + k] = f32(tab[v >> _I4]) * d1


@njit(nogil=True, cache=True)
def decode_i8(qt, s_lo, s_hi, ids, out):
    """The byte-per-weight kinds (see matvec_i8): w = q s (Q8_0; Q6_K: q holds q - 32)."""
    R = ROW_TILE
    nb = s_lo.shape[1] // R
    for i in range(ids.size):
        t = ids[i] // R
        l = ids[i] % R
        q = qt[t]
        o = out[i]
        for b in range(nb):
            j = b * R + l
            s0 = _scale(s_lo[t, j])
            s1 = _scale(s_hi[t, j])
            for k in range(32):
                o[32 * b + k] = f32(q[_pair_index(b, k, l)]) * (s0 if k < 16 else s1)


@njit(nogil=True, cache=True)
def gather_f32(w, ids, out):
    for i in range(ids.size):
        out[i, :] = w[ids[i]]
