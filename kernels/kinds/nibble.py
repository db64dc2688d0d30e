"""Kinds ``q4`` / ``q4m`` and ``q5`` / ``q5m``: 4-bit weights as nibbles (Q4_0 / Q4_1), with a fifth bit
(Q5_0 / Q5_1);
``q4k`` and ``q5k``: the same for the k-quants (Q4_K, Q5_K) with integer sub-scales.

Layout (nb = cols / 32 blocks, T = row tiles, R = ROW_TILE; see ``tiled``):

  qt  uint8  (T, nb*16*R)  byte k of a block holds weight k (low nibble) and weight k+16 (high
                           nibble); a lane holds 4 consecutive bytes of its row at a time (the
                           32-bit lanes of the integer sums): byte k of block b of lane l is at
                           ``((b * 4 + k // 4) * R + l) * 4 + k % 4`` (``nibble_index``)
  qh  uint32 (T, nb*R)     ``q5``: the fifth bits.  Per block R words; word
                           ``2 * ((k % 16) // 4 * (R // 8) + l // 8) + k // 16`` of block b holds the
                           bit of weight k of lane l as its bit ``(l % 8) * 4 + k % 4``, so one word
                           covers the 32 weights of one 32-byte load of qt (``fifth_bit_index``).
                           ``q4``: shape (1, 0)
  d   f32 / f16 bits (T, nb*R)  scale of each 32-weight block
  m   f32 / f16 bits (T, nb*R)  ``q4m`` / ``q5m`` (Q4_1, Q5_1): the offset of each block, weight =
                           d * q + m.  ``q4`` / ``q5`` (Q4_0, Q5_0) store none: weight = (q - off) d,
                           off = 8 / 16, ggml's expression (it keeps the sign of zero)

``q4k`` / ``q5k`` keep qt and qh, and instead of d and m the file's integer sub-scales, so a
32-weight block streams 18.5 bytes (Q4_K) instead of the 24 float scales would take:

  sc  uint8 (T, nb*R)      the 6-bit scale of each 32-weight sub-block
  mn  uint8 (T, nb*R)      its 6-bit min: weight = (d sc) q - dmin mn
  d   f16 bits (T, nb/8*R) the scale of each 256 weights (index ``(b // 8) * R + l``)
  dm  f16 bits (T, nb/8*R) the scale of the mins of each 256

Matvec: per block ``acc += d (dx isum_q + dr isum_r) + m xs`` in float32 (xs: the block sum of
the rounded x; ``d (dx isum_q + dr isum_r - off xs)`` for Q4_0 / Q5_0), the integer sums from
``nibble_isums``; the k-quants sum ``sc p`` and ``mn xs``
over each 256 and scale the sums by d and dmin (``matvec_nibk``).  AVX2 form: per 32-byte load (bytes
4g..4g+3 of 8 rows) ``vpand``/``vpsrlw`` split the nibbles (5-bit: each fifth-bit word spread to
32 bytes of 0/16 and or-ed in), ``vpmaddubsw`` (unsigned weight x signed activation, pairs summed
to int16; at most 2 * 31 * 127), int16 sums over 4 loads (4-bit: at most 8 * 15 * 127 * 2 < 2^15)
or 2 loads (5-bit), widened by ``vpmaddwd`` by ones into int32: about 3 vector instructions per 8
weights for both terms (4-bit), against about 7 for decoding the nibbles to float32.  VNNI form
(hosts with AVX-512 VNNI, ``simd.ByteSums``): 64-byte loads (16 rows), one ``vpdpbusd`` per
``vpmaddubsw``, accumulating in int32 with no int16 sums or widening: 94 instructions for a
32-row block of Q4_0 against 224.

Tile decoder (prompt matmul, AVX2 and F16C): one 32-byte load of a tile holds 4 bytes of each of 8
rows; a byte shuffle regroups them by byte, and each group of 8 rows widens to 8 float32 lanes
(``vpmovzxbd``, ``vcvtdq2ps``, ``vmulps`` by the 8 rows' scales, ``vaddps``) stored as 8
consecutive floats of one K-major output row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..numerics import M4, U4, f16_at, scale_min_k4, u32_at, u64_at
from ..simd import (HOST_AVX2, HOST_F16C, I8, I32, ISUM_ROWS, PORTABLE, SIMD_BEST, V8F32, V8I32, V32I8, VNNI, ByteSums,
                    by_row_group, byte_ptr, data_ptr, loader, plane_intrinsic, plane_ptrs, prefetch_block, rows_call,
                    scales8, splat, spread_bits, sum_lanes)
from ..types import GGMLType
from . import Packed, register
from .tiled import (BLOCK_CHUNK, FM, ROW_CHUNK, ROW_TILE, TiledKind, block_scales, fma_rows, interleave_rows,
                    load_rows, nonneg, round_activations, round_rows, row_offsets, row_step, scale, share, shares,
                    store_row_tiles, store_rows, store_tile, terms_product, two_terms)

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic
_I15 = np.int32(15)
_I4 = np.int32(4)



# ---------------------------------------------------------------- index helpers and repackers


@njit(cache=True, inline="always")
def nibble_index(b, k, l):
    """Where byte k of block b of lane l lives in a ``q4`` tile (see the module docstring)."""
    return ((b * 4 + k // 4) * ROW_TILE + l) * 4 + k % 4


@njit(cache=True, inline="always")
def fifth_bit_index(b, k, l):
    """(word, bit) of the fifth bit of weight k (0..31) of block b of lane l in a ``q5`` tile's qh."""
    kk = k % 16
    return (b * ROW_TILE + 2 * ((kk // 4) * (ROW_TILE // 8) + l // 8) + k // 16,
            np.uint32((l % 8) * 4 + kk % 4))


@njit(cache=True, nogil=True)
def put_nibbles(dst, b, l, e):
    """Store weights e[0..31] (values < 16 used) of block b of lane l as nibble bytes."""
    for k in range(16):
        dst[nibble_index(b, k, l)] = np.uint8((e[k] & 15) | ((e[k + 16] & 15) << 4))


@njit(cache=True, nogil=True)
def put_fifth_bits(qh, b, l, e):
    """Set the fifth bits (value 16) of weights e[0..31] of block b of lane l in qh (zeroed)."""
    for k in range(32):
        if e[k] & 16:
            w, bit = fifth_bit_index(b, k, l)
            qh[w] |= np.uint32(1) << bit


@njit(cache=True, nogil=True)
def repack_legacy(raw, ts, has_m, has_h, off, qt, qh, d, m, r0, r1):
    """Q4_0 (ts 18), Q4_1 (20), Q5_0 (22), Q5_1 (24): d [m] [qh] qs[16] (m only written where the
    type has it, has_m)."""
    nb = d.shape[1] // R
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for b in range(nb):
            o = b * ts
            i = b * R + l
            db = f16_at(src, o)
            d[t, i] = db
            o += 2
            if has_m:
                m[t, i] = f16_at(src, o)
                o += 2
            if has_h:
                h = u32_at(src, o)
                o += 4
            for k in range(16):
                q[nibble_index(b, k, l)] = src[o + k]
            if has_h:
                for k in range(32):
                    if (h >> k) & 1:
                        w, bit = fifth_bit_index(b, k, l)
                        qh[t, w] |= np.uint32(1) << bit


@njit(cache=True, inline="always")
def put_k_scales(src, o, t, l, i, sc, mn, d, dm):
    """Super-block i of a Q4_K / Q5_K row (at byte o of src: d, dmin, scales[12]) of lane l of tile
    t: its d, dmin and each 32-weight sub-block's 6-bit scale and min."""
    d[t, i * R + l] = f16_at(src, o)
    dm[t, i * R + l] = f16_at(src, o + 2)
    for j in range(8):
        s, mi = scale_min_k4(src, o + 4, j)
        sc[t, (8 * i + j) * R + l] = np.uint8(s)
        mn[t, (8 * i + j) * R + l] = np.uint8(mi)


@njit(cache=True, nogil=True)
def repack_q5_k(raw, qt, qh, sc, mn, d, dm, r0, r1):
    """Q5_K (176 bytes: d, dmin, scales[12], qh[32], qs[128]) -> the nibbles and fifth bits, each
    32-weight sub-block's 6-bit scale and min (sc, mn) and each 256's d, dmin."""
    nb = sc.shape[1] // R
    e = np.empty(32, np.int32)
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for i in range(nb // 8):
            o = i * 176
            put_k_scales(src, o, t, l, i, sc, mn, d, dm)
            for j in range(8):
                b = 8 * i + j
                c = j // 2
                sh = 4 * (j % 2)
                for k in range(32):
                    e[k] = ((src[o + 48 + 32 * c + k] >> sh) & 15) | (((src[o + 16 + k] >> j) & 1) << 4)
                put_nibbles(q, b, l, e)
                put_fifth_bits(qh[t], b, l, e)


@njit(cache=True, nogil=True)
def repack_q4_k(raw, qt, sc, mn, d, dm, r0, r1):
    """Q4_K (144 bytes: d, dmin, scales[12], qs[128]) -> the nibbles, each 32-weight sub-block's 6-bit
    scale and min (sc, mn) and each 256's d, dmin.  Tile by tile: each row's nibble bytes formed 8
    at a time in 64-bit words (byte k of a block: the low nibbles of weights k and k + 16, ggml's
    bytes k, k + 16 of the sub-block's 32), then the tile's rows interleaved four bytes at a time
    (tiled.interleave_rows)."""
    nb = sc.shape[1] // R
    rows = np.zeros((R, nb * 4), np.uint32)          # a tile's rows of qt, row-major
    rows64 = rows.reshape(-1).view(np.uint64)
    for c0 in range(r0, r1, R):
        t = c0 // R
        for l in range(min(R, r1 - c0)):
            src = raw[c0 + l]
            ro = l * nb * 2                           # the row's words in rows64
            for i in range(nb // 8):
                o = i * 144
                put_k_scales(src, o, t, l, i, sc, mn, d, dm)
                for j in range(8):
                    b = 8 * i + j
                    q = o + 16 + 32 * (j // 2)
                    shift = np.uint64(4 * (j % 2))
                    for w in range(2):                # weights 8w.. (low nibbles) and 16 + 8w.. (high)
                        lo = (u64_at(src, q + 8 * w) >> shift) & M4
                        hi = (u64_at(src, q + 16 + 8 * w) >> shift) & M4
                        rows64[ro + 2 * b + w] = lo | (hi << U4)
        for l in range(min(R, r1 - c0), R):           # padding rows: zeros
            rows[l, :] = 0
        interleave_rows(rows, qt[t].view(np.uint32))


@njit(cache=True, inline="always")
def k_block_scales(sc, mn, d, dm, t, b, l):
    """(scale, offset) of 32-weight block b of lane l of tile t of a k-quant (``q4k`` / ``q5k``):
    d * sc and -dmin * min, both exact in float32 (an 11-bit significand times a 6-bit integer)."""
    j = (b // 8) * R + l
    i = b * R + l
    return scale(d[t, j]) * f32(sc[t, i]), -(scale(dm[t, j]) * f32(mn[t, i]))


@njit(cache=True, nogil=True)
def expand_k_scales(sc, mn, d, dm, t0, t1):
    """Tiles t0..t1-1 of a k-quant's integer sub-scales as the ``q4`` / ``q5`` kinds' per-block
    float32 d, m (t1 - t0, nb*R): what their K-major block decoders read."""
    return block_scales(sc, d, t0, t1, 1), block_scales(mn, dm, t0, t1, -1)


# ---------------------------------------------------------------- integer sums


def _emit_nibble_sums(builder, qp, hp, xps, op, five, vnni, rgs=None, prefetch=True):
    """The IR of nibble_isums' AVX2 form, or with vnni its VNNI form (see the module docstring), for
    the row groups rgs (groups of ``lanes`` weight rows; all by default) and any number of
    activation terms xps."""
    load = loader(builder)
    if prefetch:
        prefetch_block(builder, qp, 16 * ROW_TILE)
    # AVX2: int16 partial sums widened into int32 before they can overflow: every 4 loads (8
    # products) for 4-bit weights (8 * 15 * 127 * 2 < 2^15), every 2 for 5-bit
    sums = ByteSums(builder, vnni, depth=4 if five else 8)
    lanes = sums.lanes                   # rows per load
    groups = ROW_TILE // lanes
    rgs = range(groups) if rgs is None else rgs
    for g in range(4):                   # bytes 4g..4g+3 of every row
        xs = [[sums.splat(load(xp, o + 4 * g, I32)) for o in (0, 16)]
              for xp in xps]             # [term][low / high nibbles' activations]
        for rg in rgs:                   # rows lanes rg .. lanes (rg + 1) - 1
            v = load(qp, (g * ROW_TILE + rg * lanes) * 4, sums.bytes)
            lo = builder.and_(v, sums.const(15))
            hi = builder.and_(builder.lshr(v, sums.const(4)), sums.const(15))
            if five:                     # the words of each 8 rows: 2 (g R / 8 + 8-row group) + half
                w = [2 * (g * (ROW_TILE // 8) + rg * lanes // 8 + i) for i in range(lanes // 8)]
                lo = builder.or_(lo, sums.spread([load(hp, j, I32) for j in w], 16))
                hi = builder.or_(hi, sums.spread([load(hp, j + 1, I32) for j in w], 16))
            for term, (x_lo, x_hi) in enumerate(xs):
                sums.add((term, rg), (lo, x_lo), (hi, x_hi))
    if op is None:                       # the caller combines the sums in registers
        return sums
    for term in range(len(xps)):
        for rg in rgs:
            sums.store(op, term * groups + rg, (term, rg))
    return sums


_isums4_avx2 = plane_intrinsic("_isums4_avx2", lambda b, *p: _emit_nibble_sums(b, *p, five=False, vnni=False))
_isums5_avx2 = plane_intrinsic("_isums5_avx2", lambda b, *p: _emit_nibble_sums(b, *p, five=True, vnni=False))
_isums4_vnni = plane_intrinsic("_isums4_vnni", lambda b, *p: _emit_nibble_sums(b, *p, five=False, vnni=True))
_isums5_vnni = plane_intrinsic("_isums5_vnni", lambda b, *p: _emit_nibble_sums(b, *p, five=True, vnni=True))


@njit(cache=True, inline="always")
def isums_loop(q, qo, h, ho, five, tab, xq, xr, xo, out):
    """The portable form of nibble_isums (tab: the identity) and table_isums (five false): the
    same int32 sums as plain loops (the xr term's only where xr is not empty: one-term activations,
    round_activations1, have none)."""
    two = xr.size > 0
    for l in range((2 if two else 1) * R):
        out[l] = 0
    for g in range(4):
        for l in range(R):
            s = np.int32(0)
            r = np.int32(0)
            for j in range(4):
                v = np.int32(q[qo + (g * R + l) * 4 + j])
                lo = np.int32(tab[v & np.int32(15)])
                hi = np.int32(tab[v >> np.int32(4)])
                if five:
                    w = ho + 2 * (g * (R // 8) + l // 8)
                    i = np.uint32((l % 8) * 4 + j)
                    lo |= np.int32((h[w] >> i) & np.uint32(1)) << np.int32(4)
                    hi |= np.int32((h[w + 1] >> i) & np.uint32(1)) << np.int32(4)
                i = xo + 4 * g + j
                s += np.int32(lo * np.int32(xq[i]) + hi * np.int32(xq[i + 16]))
                if two:
                    r += np.int32(lo * np.int32(xr[i]) + hi * np.int32(xr[i + 16]))
            out[l] += s
            if two:
                out[R + l] += r


IDENTITY = np.arange(16, dtype=np.int8)     # nibble -> its value


def nibble_isums(q, qo, h, ho, five, xq, xr, xo, out, simd):
    """For one 32-weight block of each of the R rows of a tile (from ``q[qo]``, fifth bits from
    ``h[ho]`` when ``five``) and activations ``xq``, ``xr`` (int8, -127..127) from ``xo``:
    ``out[l]`` = sum over k < 32 of w(k, l) xq[xo + k], ``out[R + l]`` the same with xr, exact in
    int32.  (Callable from Numba code only.)"""
    raise NotImplementedError("nibble_isums runs inside Numba kernels")


@overload(nibble_isums, inline="always")
def _nibble_isums_impl(q, qo, h, ho, five, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, five, xq, xr, xo, out, simd):
            isums_loop(q, qo, h, ho, five, IDENTITY, xq, xr, xo, out)
        return portable

    def either(q, qo, h, ho, five, xq, xr, xo, out, simd):
        if simd == PORTABLE:
            isums_loop(q, qo, h, ho, five, IDENTITY, xq, xr, xo, out)
        elif simd == VNNI and five:
            _isums5_vnni(q, qo, h, ho, xq, xr, xo, out)
        elif simd == VNNI:
            _isums4_vnni(q, qo, h, ho, xq, xr, xo, out)
        elif five:
            _isums5_avx2(q, qo, h, ho, xq, xr, xo, out)
        else:
            _isums4_avx2(q, qo, h, ho, xq, xr, xo, out)
    return either


def _nibble_rows(five, vnni):
    """A call(q, qo, h, ho, xq, xr, xo, ldx, c, out) of the nibble sums for c activation rows
    (simd.rows_call), in the AVX2 or the VNNI form."""
    emit = by_row_group(_emit_nibble_sums, ROW_TILE // sum_lanes(vnni), five=five, vnni=vnni)
    return rows_call(f"_isums{5 if five else 4}_{'vnni' if vnni else 'avx2'}_rows", emit)


_rows4_avx2, _rows5_avx2 = _nibble_rows(False, False), _nibble_rows(True, False)
_rows4_vnni, _rows5_vnni = _nibble_rows(False, True), _nibble_rows(True, True)


def _nibk_combine_intrinsic(five: bool, vnni: bool, rows: int, terms: int = 2):
    """An intrinsic (q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am): one
    32-weight block of a k-quant nibble tile times `rows` rounded activation rows, combined in
    registers: for row r (terms at xq, xr + xo + r ldx; scales dx, dr, xs flat at xso + r lds) and
    lane l, ``p = fma(isum_q, dx, isum_r * dr)`` (terms 1: the rows rounded by round_activations1,
    xr and dr unread, ``p = isum_q dx``: one ``vpdpbusd`` per 4 weights and row instead of two),
    ``aq[R r + l] = fma(sc[so + l], p, aq[R r + l])``,
    ``am[R r + l] = fma(mn[so + l], xs, am[R r + l])``: matvec_nibk's combine (its float operations
    as LLVM contracts them there), without storing the integer sums or converting the sub-scales
    once per row.  The quants are unpacked once for all the rows (one group of weight rows at a
    time, so only that group's accumulators are live)."""

    def fused(typingctx, q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am):
        sig = types.void(q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am = args
            aty = signature.args
            f32t = ir.FloatType()
            qp, hp, (xq0, xr0), _ = plane_ptrs(context, builder, types.void(*aty[:7], aty[16]),
                                               (q, qo, h, ho, xq, xr, xo, aq))
            xps = []
            for r in range(rows):
                step = builder.mul(ldx, ir.Constant(ldx.type, r))
                xps.extend(builder.gep(p, [step]) for p in (xq0, xr0)[:terms])
            scp, mnp = (builder.gep(data_ptr(context, builder, aty[i], args[i], I8), [so]) for i in (8, 9))
            sp = [builder.gep(data_ptr(context, builder, aty[i], args[i], f32t), [xso]) for i in (11, 12, 13)]
            aqp, amp = (data_ptr(context, builder, aty[i], args[i], f32t) for i in (16, 17))
            lanes = sum_lanes(vnni)
            vf = ir.VectorType(f32t, lanes)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf] * 3),
                                                 f"llvm.fma.v{lanes}f32")
            # per row: its dx, dr, xs broadcast (dr None with one term)
            scal = [[None if p is None else
                     splat(builder, builder.load(builder.gep(p, [builder.mul(lds, ir.Constant(lds.type, r))])), lanes)
                     for p in (sp if terms == 2 else (sp[0], None, sp[2]))] for r in range(rows)]

            def vec(p, i, ty):
                return builder.bitcast(builder.gep(p, [ir.Constant(I32, i)]), ty.as_pointer())

            for rg in range(ROW_TILE // lanes):
                sums = _emit_nibble_sums(builder, qp, hp, xps, None, five, vnni, rgs=(rg,), prefetch=rg == 0)
                vi8 = ir.VectorType(I8, lanes)
                scv, mnv = (builder.uitofp(builder.load(vec(p, rg * lanes, vi8), align=1), vf) for p in (scp, mnp))
                for r in range(rows):
                    dxs, drs, xss = scal[r]
                    iq = builder.sitofp(sums.total((terms * r, rg)), vf)
                    if terms == 2:
                        ir_ = builder.sitofp(sums.total((2 * r + 1, rg)), vf)
                        p = builder.call(fma, [iq, dxs, builder.fmul(ir_, drs)])
                    else:
                        p = builder.fmul(iq, dxs)
                    a = vec(aqp, r * ROW_TILE + rg * lanes, vf)
                    builder.store(builder.call(fma, [scv, p, builder.load(a, align=4)]), a, align=4)
                    m = vec(amp, r * ROW_TILE + rg * lanes, vf)
                    builder.store(builder.call(fma, [mnv, xss, builder.load(m, align=4)]), m, align=4)
            return context.get_dummy_value()

        return sig, codegen

    name = f"_nibk{5 if five else 4}_{'vnni' if vnni else 'avx2'}_combine{rows}{'' if terms == 2 else '_one'}"
    fused.__name__ = fused.__qualname__ = name
    return intrinsic(fused)


# Activation rows per call of the VNNI combine of one-term rows (round_activations1: a MoE prompt's):
# with one vpdpbusd accumulator per row and 16 weight rows, 8 rows' sums fit the 32 vector registers
# beside the unpacked quants, so each block's unpack and sub-scale conversions serve twice ISUM_ROWS
# rows (the two-term form keeps ISUM_ROWS: its 8 rows ran slower).  Each row's operations, and bits,
# are those of any other call.
ONE_TERM_ROWS = 8


@njit(cache=True, inline="always")
def combine_rows_most(terms, vnni):
    """The widest call of _nibk_combine_by_rows (the `most` of tiled.row_step) for rows of `terms`
    int8 terms in the VNNI (vnni) or AVX2 form: ONE_TERM_ROWS for one term on VNNI, else ISUM_ROWS."""
    return ONE_TERM_ROWS if terms == 1 and vnni else ISUM_ROWS


def _nibk_combine_by_rows(five: bool, vnni: bool, terms: int):
    """call(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am) of the
    _nibk_combine_intrinsic of `terms` activation terms for c = 1, 2, ISUM_ROWS or
    combine_rows_most's rows (tiled.row_step's counts)."""
    one, two, full = (_nibk_combine_intrinsic(five, vnni, c, terms) for c in (1, 2, ISUM_ROWS))
    most = combine_rows_most(terms, vnni)
    widest = full if most == ISUM_ROWS else _nibk_combine_intrinsic(five, vnni, most, terms)

    @njit(inline="always")
    def call(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am):
        if c == most:
            widest(q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        elif c == ISUM_ROWS:
            full(q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        elif c == 2:
            two(q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        else:
            one(q, qo, h, ho, xq, xr, xo, ldx, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
    return call


def _nibk_combine_call(five: bool, vnni: bool):
    """The _nibk_combine_by_rows call of two activation terms, or of one where xr is empty
    (round_rows(X, 1)), with the same arguments."""
    by_two, by_one = (_nibk_combine_by_rows(five, vnni, terms) for terms in (2, 1))

    @njit(inline="always")
    def call(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am):
        if xr.size == 0:
            by_one(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        else:
            by_two(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
    return call


_nibk4_avx2, _nibk5_avx2 = _nibk_combine_call(False, False), _nibk_combine_call(True, False)
_nibk4_vnni, _nibk5_vnni = _nibk_combine_call(False, True), _nibk_combine_call(True, True)


@njit(cache=True, inline="always")
def nibk_combine_loop(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum):
    """The portable form of nibk_combine_rows: the integer sums by plain loops into isum
    (>= 2 R c int32), then the float combine per row and lane (one term where xr is empty)."""
    terms = 2 if xr.size > 0 else 1
    isums_rows_loop(q, qo, h, ho, five, IDENTITY, xq, xr, xo, ldx, c, isum)
    for r in range(c):
        dxb = dx[xso + r * lds]
        drb = dr[xso + r * lds] if terms == 2 else f32(0)
        xsb = xs[xso + r * lds]
        a, o = row_offsets(r, terms)
        for l in range(R):
            i = nonneg(so + l)
            p = terms_product(isum, o, l, dxb, drb, terms)
            aq[a + l] += f32(sc[i]) * p
            am[a + l] += f32(mn[i]) * xsb


def nibk_combine_rows(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum, simd):
    """One 32-weight block (quants at q[qo], fifth bits at h[ho] when five, sub-scales at
    sc[so], mn[so]) of a k-quant nibble tile times c rounded activation rows (row r's terms at
    xq, xr[xo + r ldx], its dx, dr, xs at [xso + r lds] of the flat arrays), added into the
    super-block sums aq, am (row r lane l at R r + l) exactly as matvec_nibk adds one row's (rows
    of one int8 term, xr empty: as it would add them with p = isum_q dx): the SIMD forms combine
    in registers (_nibk_combine_intrinsic), the portable one through isum (>= 2 R c int32
    scratch).  (Callable from Numba code only.)"""
    raise NotImplementedError("nibk_combine_rows runs inside Numba kernels")


@overload(nibk_combine_rows, inline="always")
def _nibk_combine_rows_impl(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum,
                            simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum, simd):
            nibk_combine_loop(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum)
        return portable

    def either(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum, simd):
        if simd == PORTABLE:
            nibk_combine_loop(q, qo, h, ho, five, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am, isum)
        elif simd == VNNI and five:
            _nibk5_vnni(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        elif simd == VNNI:
            _nibk4_vnni(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        elif five:
            _nibk5_avx2(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
        else:
            _nibk4_avx2(q, qo, h, ho, xq, xr, xo, ldx, c, sc, mn, so, dx, dr, xs, xso, lds, aq, am)
    return either


def nibble_isums_rows(q, qo, h, ho, five, xq, xr, xo, ldx, c, out, simd):
    """nibble_isums for c activation rows at once (c = tiled.row_step's count), row r's terms at
    ``xq[xo + r ldx]``, ``xr[xo + r ldx]``: its sums at ``out[2 R r:2 R (r + 1)]``, each row's
    exactly those of nibble_isums (integer sums), the quants unpacked once for all the rows.
    (Callable from Numba code only.)"""
    raise NotImplementedError("nibble_isums_rows runs inside Numba kernels")


@njit(cache=True, inline="always")
def isums_rows_loop(q, qo, h, ho, five, tab, xq, xr, xo, ldx, c, out):
    """The portable form of nibble_isums_rows and table_isums_rows: isums_loop per row (row r's
    sums at row_offsets(r, terms), terms = 1 where xr is empty)."""
    terms = 2 if xr.size > 0 else 1
    for r in range(c):
        isums_loop(q, qo, h, ho, five, tab, xq, xr, xo + r * ldx, out[row_offsets(r, terms)[1]:])


@overload(nibble_isums_rows, inline="always")
def _nibble_isums_rows_impl(q, qo, h, ho, five, xq, xr, xo, ldx, c, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, five, xq, xr, xo, ldx, c, out, simd):
            isums_rows_loop(q, qo, h, ho, five, IDENTITY, xq, xr, xo, ldx, c, out)
        return portable

    def either(q, qo, h, ho, five, xq, xr, xo, ldx, c, out, simd):
        if simd == PORTABLE:
            isums_rows_loop(q, qo, h, ho, five, IDENTITY, xq, xr, xo, ldx, c, out)
        elif simd == VNNI and five:
            _rows5_vnni(q, qo, h, ho, xq, xr, xo, ldx, c, out)
        elif simd == VNNI:
            _rows4_vnni(q, qo, h, ho, xq, xr, xo, ldx, c, out)
        elif five:
            _rows5_avx2(q, qo, h, ho, xq, xr, xo, ldx, c, out)
        else:
            _rows4_avx2(q, qo, h, ho, xq, xr, xo, ldx, c, out)
    return either


# ---------------------------------------------------------------- matvec and exact decoders


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_nib(qt, qh, d, m, off, X, tiles, xrow, simd, y):
    """The legacy nibble kinds, tiled: qt (T, nb*16*R) uint8; 5-bit types (Q5_0, Q5_1) also qh
    (T, nb*R) uint32, their fifth bits (4-bit types: qh of shape (1, 0)); d, m (T, nb*R): w = d q + m,
    or for off = 8 / 16 (Q4_0, Q5_0; m unused) w = d (q - off); y (rows,) f32.  x is split into
    two int8 terms per block (round_activations); per block the integer sums come from
    nibble_isums (simd: their form, kernels.simd.SIMD_FORMS).
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    five = qh.shape[1] > 0
    moff = f32(-off)
    xq, xr, dx, dr, xs = round_activations(X.reshape(-1))
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            o = xrow[it] * nb
            q = qt[t]
            h = qh[t % qh.shape[0]]
            dt = d[t]
            mt = m[t]
            acc[:] = 0
            for b in range(nb):
                nibble_isums(q, b * 16 * R, h, b * R, five, xq, xr, 32 * (o + b), isum, simd)
                dxb = dx[o + b]
                drb = dr[o + b]
                xsb = xs[o + b]
                if off:
                    xo = moff * xsb
                    for l in range(R):
                        i = nonneg(b * R + l)
                        p = two_terms(isum, 0, l, dxb, drb)
                        acc[l] += scale(dt[i]) * (p + xo)
                else:
                    for l in range(R):
                        i = nonneg(b * R + l)
                        p = two_terms(isum, 0, l, dxb, drb)
                        acc[l] += scale(dt[i]) * p + scale(mt[i]) * xsb
            store_tile(acc, it, y)


@njit(cache=True, inline="always")
def nibk_tile(q, h, sct, mnt, dt, dmt, five, xq, xr, dx, dr, xs, o, nb, simd, acc, aq, am, isum):
    """One row tile of a k-quant nibble kind (q, h, sct, mnt, dt, dmt: the tile's rows of
    matvec_nibk's arrays) times the activation row at block o of round_activations' arrays:
    acc (R,) float32, zero on entry, gets the tile's 32 results (matvec_nibk's item).  Scratch:
    aq, am (R,) float32 (one super-block's sums of sc * p and of mn * xs), isum (2 R,) int32."""
    for s in range(nb // 8):
        aq[:] = 0
        am[:] = 0
        for b in range(8 * s, 8 * s + 8):
            nibble_isums(q, b * 16 * R, h, b * R, five, xq, xr, 32 * (o + b), isum, simd)
            dxb = dx[o + b]
            drb = dr[o + b]
            xsb = xs[o + b]
            for l in range(R):
                i = nonneg(b * R + l)
                p = two_terms(isum, 0, l, dxb, drb)
                aq[l] += f32(sct[i]) * p
                am[l] += f32(mnt[i]) * xsb
        for l in range(R):
            j = nonneg(s * R + l)
            acc[l] += scale(dt[j]) * aq[l] - scale(dmt[j]) * am[l]


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_nibk(qt, qh, sc, mn, d, dm, X, tiles, xrow, simd, y):
    """The k-quant nibble kinds (Q4_K, Q5_K), tiled: qt and qh as matvec_nib's; sc, mn (T, nb*R)
    uint8 the 6-bit scale and min of each 32-weight sub-block; d, dm (T, nb/8*R) each 256's
    scales.  Per 256 weights ``acc += d sum(sc p) - dmin sum(mn xs)`` (p: the block's product
    from nibble_isums, xs: the block sum of the rounded x), as ggml sums a k-quant block: the
    sub-scales stay integers, so a block streams 18.5 bytes instead of 24 of float scales.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS); each item is nibk_tile."""
    nb = X.shape[1] // 32
    five = qh.shape[1] > 0
    xq, xr, dx, dr, xs = round_activations(X.reshape(-1))
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        aq = np.empty(R, np.float32)
        am = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            acc[:] = 0
            nibk_tile(qt[t], qh[t % qh.shape[0]], sc[t], mn[t], d[t], dm[t], five, xq, xr, dx, dr, xs,
                      xrow[it] * nb, nb, simd, acc, aq, am, isum)
            store_tile(acc, it, y)


@njit(cache=True, inline="always")
def nib_tile_rows(q, h, dt, mt, off, five, xq, xr, dx, dr, xs, cols, i0, i1, simd, Y, yt):
    """Rows i0..i1-1 of the rounded activations (round_rows' arrays, row i at xq[i cols]) times one
    row tile of a legacy nibble kind (q, h, dt, mt: the tile's rows of matvec_nib's arrays) into tile
    yt of rows i0..i1-1 of Y: each row bit-identical to matvec_nib of it alone (the same integer
    sums and float combine, in the same order)."""
    nb = cols // 32
    moff = f32(-off)
    acc = np.empty(ISUM_ROWS * R, np.float32)     # (rows, R lanes)
    isum = np.empty(2 * R * ISUM_ROWS, np.int32)
    while i0 < i1:
        c = row_step(i1 - i0)
        acc[:] = 0
        for b in range(nb):
            nibble_isums_rows(q, b * 16 * R, h, b * R, five, xq, xr, i0 * cols + 32 * b, cols, c, isum, simd)
            for r in range(c):
                dxb = dx[i0 + r, b]
                drb = dr[i0 + r, b]
                xsb = xs[i0 + r, b]
                a, s = row_offsets(r)
                if off:
                    xo = moff * xsb
                    for l in range(R):
                        i = nonneg(b * R + l)
                        p = two_terms(isum, s, l, dxb, drb)
                        acc[a + l] += scale(dt[i]) * (p + xo)
                else:
                    for l in range(R):
                        i = nonneg(b * R + l)
                        p = two_terms(isum, s, l, dxb, drb)
                        acc[a + l] += scale(dt[i]) * p + scale(mt[i]) * xsb
        store_row_tiles(acc, c, yt, Y, i0)
        i0 += c


@njit(parallel=True, fastmath=FM, cache=True)
def matmul_rows_nib(qt, qh, d, m, off, X, simd, Y):
    """Y (n, rows) = X W^T for the legacy nibble kinds (arrays as matvec_nib's), each row of Y
    bit-identical to matvec_nib of that row of X alone (the same rounding, integer sums and float
    combine), the quants of each block unpacked once per ISUM_ROWS rows (nibble_isums_rows)."""
    n, cols = X.shape
    five = qh.shape[1] > 0
    xq, xr, dx, dr, xs = round_rows(X)
    for t in prange(qt.shape[0]):
        nib_tile_rows(qt[t], qh[t % qh.shape[0]], d[t], m[t], off, five, xq, xr, dx, dr, xs, cols, 0, n, simd, Y, t)


@njit(parallel=True, fastmath=FM, cache=True)
def row_items_nib(qt, qh, d, m, off, xq, xr, dx, dr, xs, tiles, r0, r1, yt, simd, Y):
    """The multi-row product of the legacy nibble kinds as ROW_ITEMS (kinds.tiled): item i is row
    tile tiles[i] times the rounded rows r0[i]..r1[i]-1 (round_rows' arrays), stored at tile yt[i]
    of those rows of Y; each row bit-identical to matvec_nib of it alone."""
    cols = dx.shape[1] * 32
    five = qh.shape[1] > 0
    for it in prange(tiles.size):
        t = tiles[it]
        nib_tile_rows(qt[t], qh[t % qh.shape[0]], d[t], m[t], off, five, xq, xr, dx, dr, xs, cols, r0[it], r1[it],
                      simd, Y, yt[it])


@njit(cache=True, inline="always")
def nibk_scratch():
    """Scratch of nibk_tile_rows for its widest call (acc, aq, am float32, isum int32): made once per
    share of a parallel loop's items (tiled.shares, as the matvecs' items do), not four arrays per
    item: a batch's expert product holds thousands of items, many of them empty padding."""
    most = max(ISUM_ROWS, ONE_TERM_ROWS)
    return (np.empty(most * R, np.float32), np.empty(most * R, np.float32), np.empty(most * R, np.float32),
            np.empty(2 * R * most, np.int32))


@njit(cache=True, inline="always")
def nibk_tile_rows(q, h, sct, mnt, dt, dmt, five, xq, xr, dx, dr, xs, cols, i0, i1, simd, Y, yt, acc, aq, am, isum):
    """Rows i0..i1-1 of the rounded activations (round_rows' arrays, row i at xq[i cols]) times one
    row tile of a k-quant nibble kind (q, h, sct, mnt, dt, dmt: the tile's rows of matvec_nibk's
    arrays) into tile yt of rows i0..i1-1 of Y: each row bit-identical to matvec_nibk of it alone
    (the same integer sums and float combine, in the same order).  Scratch (nibk_scratch): acc
    (rows, R lanes), aq, am (one super-block's sums of sc * p and of mn * xs per row), isum (the
    portable form's integer sums)."""
    nb = cols // 32
    most = combine_rows_most(1 if xr.size == 0 else 2, simd == VNNI)
    dxf, drf, xsf = dx.reshape(-1), dr.reshape(-1), xs.reshape(-1)
    while i0 < i1:
        c = row_step(i1 - i0, most)
        acc[:] = 0
        for s in range(nb // 8):
            aq[:] = 0
            am[:] = 0
            for b in range(8 * s, 8 * s + 8):
                nibk_combine_rows(q, b * 16 * R, h, b * R, five, xq, xr, i0 * cols + 32 * b, cols, c, sct, mnt, b * R,
                                  dxf, drf, xsf, i0 * nb + b, nb, aq, am, isum, simd)
            for r in range(c):
                a = r * R
                for l in range(R):
                    j = nonneg(s * R + l)
                    acc[a + l] += scale(dt[j]) * aq[a + l] - scale(dmt[j]) * am[a + l]
        store_row_tiles(acc, c, yt, Y, i0)
        i0 += c


@njit(parallel=True, fastmath=FM, cache=True)
def row_items_nibk(qt, qh, sc, mn, d, dm, xq, xr, dx, dr, xs, tiles, r0, r1, yt, simd, Y):
    """The multi-row product of the k-quant nibble kinds as ROW_ITEMS (kinds.tiled): item i is row
    tile tiles[i] times the rounded rows r0[i]..r1[i]-1 (round_rows' arrays), stored at tile yt[i] of
    those rows of Y; each row of two terms bit-identical to matvec_nibk of it alone; rows of one
    term (round_rows(X, 1), xr empty) take one vpdpbusd per 4 weights instead of two, each row
    still the same bits whatever the other rows and items."""
    cols = dx.shape[1] * 32
    five = qh.shape[1] > 0
    parts = shares(tiles.size)
    for c in prange(parts):
        acc, aq, am, isum = nibk_scratch()
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            nibk_tile_rows(qt[t], qh[t % qh.shape[0]], sc[t], mn[t], d[t], dm[t], five, xq, xr, dx, dr, xs, cols,
                           r0[it], r1[it], simd, Y, yt[it], acc, aq, am, isum)


@njit(cache=True, inline="always")
def decode_nib_block(q, qh, t, b, l, five, db, mb, off, o):
    """Block b of lane l of tile t (q = qt[t]) into o[32 b: 32 b + 32]: off = 0: w = q db + mb,
    off = 8 / 16: w = (q - off) db; q = nibble + 16 * fifth bit."""
    for k in range(16):
        v = np.int32(q[nibble_index(b, k, l)])
        lo = v & _I15
        hi = v >> _I4
        if five:
            w, bit = fifth_bit_index(b, k, l)
            lo |= np.int32((qh[t, w] >> bit) & np.uint32(1)) << _I4
            hi |= np.int32((qh[t, w + 1] >> bit) & np.uint32(1)) << _I4
        if off == 0:
            o[32 * b + k] = f32(lo) * db + mb
            o[32 * b + 16 + k] = f32(hi) * db + mb
        else:
            o[32 * b + k] = f32(lo - off) * db
            o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_nib(qt, qh, d, m, off, ids, out):
    """The nibble kinds (see matvec_nib): off = 0: w = q d + m (Q4_1, Q5_1);
    off = 8 / 16: w = (q - off) d (Q4_0 / Q5_0, m unused); q = nibble + 16 * fifth bit."""
    nb = d.shape[1] // R
    five = qh.shape[1] > 0
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(nb):
            decode_nib_block(qt[t], qh, t, b, l, five, scale(d[t, b * R + l]), scale(m[t, b * R + l]), off,
                             out[i])


@njit(nogil=True, cache=True)
def decode_nibk(qt, qh, sc, mn, d, dm, ids, out):
    """The k-quant nibble kinds (see matvec_nibk): w = q (d sc) - dmin mn, decode_nib's values."""
    nb = sc.shape[1] // R
    five = qh.shape[1] > 0
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(nb):
            db, mb = k_block_scales(sc, mn, d, dm, t, b, l)
            decode_nib_block(qt[t], qh, t, b, l, five, db, mb, 0, out[i])


def _nib_block_T(five, sym):
    """The intrinsic decoding block b of one tile: (q, qo, h, ho, d, m, so, off, out, base, ldo)
    with q, h the tile's rows of qt, qh (qo = b * 16 * R bytes, ho = b * R words), d, m its rows
    of scales (so = b * R), and out a flat float32 array: weight k of lane l goes to
    out[base + k * ldo + l]."""

    def block_T(typingctx, q, qo, h, ho, d, m, so, off, out, base, ldo):
        sig = types.void(q, qo, h, ho, d, m, so, off, out, base, ldo)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, d, m, so, off, out, base, ldo = args
            aty = signature.args

            def data(i, ty):
                return data_ptr(context, builder, aty[i], args[i], ty)

            qp = byte_ptr(context, builder, aty[0], q, qo)
            hp = builder.gep(data(2, I32), [ho])
            op = builder.gep(data(8, ir.FloatType()), [base])
            low4 = ir.Constant(V32I8, [15] * 32)
            four = ir.Constant(V32I8, [4] * 32)
            groups = ROW_TILE // 8
            ds = scales8(context, builder, aty[4], d, so, ROW_TILE)
            ms = None if sym else scales8(context, builder, aty[5], m, so, ROW_TILE)
            offs = splat(builder, builder.sitofp(off, ir.FloatType()))
            for g in range(4):                    # bytes 4g..4g+3 of the block's 16
                for rg in range(groups):          # rows 8rg..8rg+7
                    p = builder.bitcast(builder.gep(qp, [ir.Constant(I32, (g * ROW_TILE + rg * 8) * 4)]),
                                        V32I8.as_pointer())
                    v = builder.load(p, align=1)
                    lo = builder.and_(v, low4)
                    hi = builder.and_(builder.lshr(v, four), low4)
                    if five:                      # fifth bits: words 2 (g * groups + rg) + half
                        w = [builder.load(builder.gep(hp, [ir.Constant(I32, 2 * (g * groups + rg) + i)]))
                             for i in (0, 1)]
                        lo = builder.or_(lo, spread_bits(builder, w[0], 16))
                        hi = builder.or_(hi, spread_bits(builder, w[1], 16))
                    for half, nib in enumerate((lo, hi)):
                        for j in range(4):        # weight 16 half + 4g + j of the 8 rows
                            b8 = builder.shuffle_vector(nib, nib, ir.Constant(ir.VectorType(I32, 8),
                                                                             [4 * i + j for i in range(8)]))
                            u = builder.uitofp(builder.zext(b8, V8I32), V8F32)
                            if sym:
                                val = builder.fmul(builder.fsub(u, offs), ds[rg])
                            else:
                                val = builder.fadd(builder.fmul(u, ds[rg]), ms[rg])
                            k = 16 * half + 4 * g + j
                            row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, k)),
                                              ir.Constant(ldo.type, 8 * rg))
                            dst = builder.bitcast(builder.gep(op, [row]), V8F32.as_pointer())
                            builder.store(val, dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    block_T.__name__ = block_T.__qualname__ = f"_nib{'5' if five else '4'}_{'sym' if sym else 'asym'}_T"
    return intrinsic(block_T)


_nib4_asym_T = _nib_block_T(five=False, sym=False)
_nib4_sym_T = _nib_block_T(five=False, sym=True)
_nib5_asym_T = _nib_block_T(five=True, sym=False)
_nib5_sym_T = _nib_block_T(five=True, sym=True)


@njit(cache=True, inline="always")
def nib_block_T(qt, qh, d, m, off, t, b, out, base, ldo):
    """Block b of row tile t into out (flat float32): weight k of lane l -> out[base + k ldo + l],
    decode_nib's very value (no fused multiply-add)."""
    five = qh.shape[1] > 0
    a = (qt[t], b * 16 * R, qh[t % qh.shape[0]], b * R if five else 0, d[t], m[t], b * R, off, out, base, ldo)
    if five and off:
        _nib5_sym_T(*a)
    elif five:
        _nib5_asym_T(*a)
    elif off:
        _nib4_sym_T(*a)
    else:
        _nib4_asym_T(*a)


@njit(nogil=True, cache=True)
def decode_nib_T(qt, qh, d, m, off, t0, t1, out):
    """Row tiles t0..t1-1 into out (cols, >= (t1 - t0) * R) float32, K-major: out[k, (t - t0) R + l]
    = weight k of lane l of tile t, decode_nib's very value (no fused multiply-add).  Serial and
    nogil (the matmul's workers call it per tile)."""
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            nib_block_T(qt, qh, d, m, off, t, b, flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def matmul_small_nib(qt, qh, d, m, off, x, n, t0, t1, out):
    """out (n, rows) = X W^T on row tiles t0..t1-1 for X given block-major as x (Kind.small_matmul,
    tiled.small_product): each block decoded exactly (nib_block_T) into a scratch block and applied
    to the rows of X (tiled.fma_rows)."""
    nb = x.size // (32 * n)
    wb = np.empty(32 * R, np.float32)               # (32 k, R lanes)
    for i0 in range(0, n, ROW_CHUNK):
        c = min(ROW_CHUNK, n - i0)
        for b0 in range(0, nb, BLOCK_CHUNK):
            for t in range(t0, t1):
                acc = load_rows(c, i0, t, out, b0)  # (c rows, R lanes)
                for b in range(b0, min(nb, b0 + BLOCK_CHUNK)):
                    nib_block_T(qt, qh, d, m, off, t, b, wb, 0, R)
                    fma_rows(wb, x, 32 * (nb * i0 + c * b), 32, c, acc)
                store_rows(acc, c, i0, t, out)


@njit(nogil=True, cache=True)
def matmul_small_nibk(qt, qh, sc, mn, d, dm, x, n, t0, t1, out):
    """matmul_small_nib for the k-quant kinds: each tile's integer sub-scales made float
    (expand_k_scales: 2 KB per 256 columns, cache-resident) before its blocks are decoded."""
    five = qh.shape[1] > 0
    for t in range(t0, t1):
        d32, m32 = expand_k_scales(sc, mn, d, dm, t, t + 1)
        matmul_small_nib(qt[t:t + 1], qh[t:t + 1] if five else qh[0:1], d32, m32, np.int32(0), x, n, 0, 1,
                         out[:, t * R:])


# ---------------------------------------------------------------- the kind


@dataclass(frozen=True)
class Nibbles:
    """How a GGML type repacks into q4 / q5 / q4k / q5k: its block bytes, whether a legacy type
    stores a min, and off: 8 / 16 for the symmetric types (w = (q - off) d), else 0."""
    block_bytes: int
    has_min: bool = False
    off: int = 0


class NibbleKind(TiledKind):
    """q4 / q5 and q4m / q5m: the legacy types, a float scale (and offset: ``m``) per 32-block (see
    the module docstring).  sym: the symmetric types (Q4_0, Q5_0) store no offset."""

    def __init__(self, name: str, five: bool, types: dict, sym: bool = False):
        self.name, self.five, self.types = name, five, types
        self.scales = ("d",) if sym else ("d", "m")
        self.bits = ("qh", fifth_bit_index)
        if HOST_AVX2 and HOST_F16C:
            self.decode_T = self._decode_T
            self.small_matmul = self._small_matmul

    def has_bits(self, t) -> bool:
        return self.five

    @staticmethod
    def _dm(p: Packed):
        """(d, m), d standing in for the offsets of a symmetric type (never read there)."""
        return p.arrays["d"], p.arrays.get("m", p.arrays["d"])

    def repack_rows(self, raw, t, A, r0, r1):
        n = self.types[t]
        repack_legacy(raw, n.block_bytes, n.has_min, self.five, n.off, A["qt"], A["qh"], A["d"], A.get("m", A["d"]),
                      r0, r1)

    def tile_kernel(self, p: Packed):
        return matvec_nib, (p.arrays["qt"], p.arrays["qh"], *self._dm(p), np.int32(self.types[p.qtype].off))

    def _legacy_arrays(self, p: Packed):
        return p.arrays["qt"], p.arrays["qh"], *self._dm(p), np.int32(self.types[p.qtype].off)

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        a = self._legacy_arrays(p)
        return lambda X, out: matmul_rows_nib(*a, X, simd, out)

    def row_items(self, p: Packed, simd: int = SIMD_BEST):
        a = self._legacy_arrays(p)
        return lambda act, tiles, r0, r1, yt, out: row_items_nib(*a, *act, tiles, r0, r1, yt, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_nib(p.arrays["qt"], p.arrays["qh"], *self._dm(p), np.int32(self.types[p.qtype].off), ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        decode_nib_T(p.arrays["qt"], p.arrays["qh"], *self._dm(p), np.int32(self.types[p.qtype].off), t0, t1, out)

    def small_kernel(self, p: Packed):
        return matmul_small_nib, (p.arrays["qt"], p.arrays["qh"], *self._dm(p), np.int32(self.types[p.qtype].off))


class NibbleKKind(NibbleKind):
    """q4k / q5k: the k-quants' nibbles (and fifth bits) as q4 / q5 lay them out, with integer
    sub-scales: sc, mn uint8 (T, nb*R), the 6-bit scale and min of each 32-weight sub-block, and
    d, dm (T, nb/8*R) the scales of each 256 (float16 bits, as the file has them)."""

    def __init__(self, name: str, five: bool, types: dict):
        super().__init__(name, five, types)
        self.scales = ("d", "dm")
        self.per256 = True
        # with the sums combined in registers (nibk_combine_rows) and vpdpbusd, 1.3x the float
        # tiles at 512 rows (README, MoE speed); the AVX2 form was not measured against them
        self.rows_prompt = SIMD_BEST == VNNI
        self.row_terms = (1, 2)

    def extra_arrays(self, t, T, nb):
        return {"sc": np.zeros((T, nb * ROW_TILE), np.uint8), "mn": np.zeros((T, nb * ROW_TILE), np.uint8)}

    def repack_rows(self, raw, t, A, r0, r1):
        if self.five:
            repack_q5_k(raw, A["qt"], A["qh"], A["sc"], A["mn"], A["d"], A["dm"], r0, r1)
        else:
            repack_q4_k(raw, A["qt"], A["sc"], A["mn"], A["d"], A["dm"], r0, r1)

    @staticmethod
    def _arrays(p: Packed):
        A = p.arrays
        return A["qt"], A["qh"], A["sc"], A["mn"], A["d"], A["dm"]

    def tile_kernel(self, p: Packed):
        return matvec_nibk, self._arrays(p)

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        return self.rows_by_items(p, simd)

    def row_call_rows(self, terms: int) -> int:
        return combine_rows_most(terms, SIMD_BEST == VNNI)

    def row_items(self, p: Packed, simd: int = SIMD_BEST):
        a = self._arrays(p)
        return lambda act, tiles, r0, r1, yt, out: row_items_nibk(*a, *act, tiles, r0, r1, yt, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_nibk(*self._arrays(p), ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        qt, qh, sc, mn, d, dm = self._arrays(p)
        d32, m32 = expand_k_scales(sc, mn, d, dm, t0, t1)
        decode_nib_T(qt[t0:t1], qh[t0:t1] if self.five else qh, d32, m32, np.int32(0), 0, t1 - t0, out)

    def small_kernel(self, p: Packed):
        return matmul_small_nibk, self._arrays(p)


Q4 = register(NibbleKind("q4", False, {GGMLType.Q4_0: Nibbles(18, off=8)}, sym=True))
Q5 = register(NibbleKind("q5", True, {GGMLType.Q5_0: Nibbles(22, off=16)}, sym=True))
Q4M = register(NibbleKind("q4m", False, {GGMLType.Q4_1: Nibbles(20, has_min=True)}))
Q5M = register(NibbleKind("q5m", True, {GGMLType.Q5_1: Nibbles(24, has_min=True)}))
Q4K = register(NibbleKKind("q4k", False, {GGMLType.Q4_K: Nibbles(144)}))
Q5K = register(NibbleKKind("q5k", True, {GGMLType.Q5_K: Nibbles(176)}))
