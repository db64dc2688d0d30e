"""Kinds ``q8`` and ``q6``: one byte per weight (Q8_0) and six bits per weight (Q6_K).

Layout (nb = cols / 32 blocks, T = row tiles, R = ROW_TILE):

  ``q8``
  qt  int8   (T, nb*32*R)  byte k = weight k; a lane holds 2 consecutive bytes of its row at a
                           time (the int16 pairs of the integer sums): byte k of block b of lane l
                           is at ``((b * 16 + k // 2) * R + l) * 2 + k % 2`` (``pair_index``)
  d   f32 / f16 bits (T, nb*R)  the scale of each block

  ``q6`` (Q6_K's unsigned 6-bit q, weight = d sc (q - 32)): the pair layout above split into a 4-bit
  plane and a 2-bit plane, so the packed matrix takes the file's 6.56 bits per weight
  qt  uint8  (T, nb*16*R)  the low 4 bits: byte ``((b * 8 + (k // 2) % 8) * R + l) * 2 + k % 2``,
                           low nibble for weights 0-15, high nibble for weights 16-31
  qh  uint8  (T, nb*8*R)   the top 2 bits: byte ``((b * 4 + (k // 2) % 4) * R + l) * 2 + k % 2``,
                           bits ``2 * (k // 8)`` (``q6_index``)
  sl, sh  int8 (T, nb*R)   the file's integer scales sc of weights 0-15 and 16-31 of each block
  d   f16 bits (T, nb/8*R) the scale of each 256 weights (index ``(b // 8) * R + l``)
  So 32 bytes of qt (with 32 bytes of qh) rebuild the 32-byte groups of the ``q8`` layout (weights
  2p, 2p+1 of 16 rows) of two pairs p and p + 8 (of four: p, p + 4, p + 8, p + 12).

weight = s * q, s = d (Q8_0) or d * sc (Q6_K).

Matvec: x rounded to int16 per block (``tiled.round_activations16``, within max|x_block| / 65534),
``acc += dx (s_lo isum_lo + s_hi isum_hi)`` with the integer sums from ``pair_isums``; Q6_K sums
``dx (sl isum_lo + sh isum_hi)`` over each 256 and scales the sum by d (``matvec_q6``).  AVX2 form
(``q8``): ``vpmovsxbw`` loads of 8 rows' pairs and ``vpmaddwd`` by the broadcast activation pair.
``q6`` (``q6_isums``): per 32-byte group the nibble (``vpand``/``vpsrlw``) or-ed with the shifted
crumb gives the unsigned q of 16 rows' pairs, ``vpunpcklbw``/``vpunpckhbw`` with zero widen it
to int16 (rows 0-3, 8-11 and 4-7, 12-15 of the 16), ``vpmaddwd`` by the activation pair; the
row order is restored once per block, and ``32 sum(x)`` of each 16 weights is taken off the
integer sums, which are then the very sums of q - 32 (so the result is that of the byte layout).
On hosts with AVX-512 VNNI, LLVM fuses each ``vpmaddwd`` and its add into a ``vpdpwssd`` by
itself, so the VNNI form of both kinds' matvec sums is the AVX2 one.

Multi-row product of ``q6`` (``q6_combine_rows``: a batched decode step and a prompt's Q6_K experts;
ROW_ITEMS of runs of 16 activation rows times every tile): on AVX-512 VNNI hosts, per 16 rows of a block and pair of weights, the
rebuilt unsigned q (the 32 bytes above, in row order) is widened once (``vpmovzxbw``) to 16 int32
lanes of two int16 each, and each of 8 activation rows adds one 512-bit ``vpdpwssd`` by its
broadcast activation pair (the rows' int16 x, a memory-broadcast operand): 256 ``vpdpwssd`` and
about 400 other vector instructions per 32-row block and 8 rows (83 per row) where the AVX2 form
took 162 per row before its float loop.  The offsets ``32 sum(x)`` come off in registers and the
float combine is q6_tile's (``fma(fma(sl, isum_lo, sh isum_hi), dx, aq)``, the operations LLVM
contracts the matvec's into), so each row keeps the matvec's bits.  (Splitting each x into two
bytes for ``vpdpbusd`` gives the same 32 weight-activation products per 512-bit instruction, 64 byte
products at two per weight, and would need 4 weights per lane: the int16 form keeps the layout.)
A prompt's rows rounded to one int8 term (``tiled.PROMPT_TERMS``, ``row_activations(X, 1)``) take
``vpdpbusd`` instead: the rebuilt q of pairs 2j and 2j + 1 joined per row (one 64-byte shuffle per 4
weights of 16 rows, for all the rows) and one ``vpdpbusd`` per activation row by its broadcast 4
bytes, half the multiply-adds of the int16 form; the offsets and the float combine are the same.

Tile decoder (prompt matmul, AVX2 and F16C): a 32-byte group holds weights 2p, 2p+1 of 16 rows
(loaded, or rebuilt from the two planes), shuffled into groups of 8 rows, widened to float32 and
multiplied by the rows' scales.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..numerics import M2, M4, U4, f16_at, sext8, u64_at
from ..simd import HOST_AVX2, HOST_F16C, HOST_VNNI, I8, I32, ISUM_ROWS, PORTABLE, SIMD_BEST, V8F32, V8I32, V16I16, V32I8, \
    VNNI, by_row_group, byte_ptr, data_ptr, loader, madds, out_ptr, rows_call, scales8, splat, x86
from ..types import GGMLType
from . import Packed, register
from .tiled import (BLOCK_CHUNK, FM, ROW_CHUNK, ROW_ITEM_ROWS, ROW_TILE, TiledKind, add_scaled, add_scaled_rows, block_scales, fma_rows, interleave_rows,
                    load_rows, nonneg, round_activations16, round_rows, round_rows16, round_rows_parallel, row_offsets,
                    row_step, scale,
                    share, shares, store_row_tiles, store_rows, store_tile, two_halves)

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic
NIB = 16 * ROW_TILE     # bytes of qt per block of a ``q6`` tile
CRUMB = 8 * ROW_TILE    # bytes of qh per block of a ``q6`` tile


# ---------------------------------------------------------------- index helpers and repackers


@njit(cache=True, inline="always")
def pair_index(b, k, l):
    """Where byte k of block b of lane l lives in a ``q8`` tile (see the module docstring)."""
    return ((b * 16 + k // 2) * ROW_TILE + l) * 2 + k % 2


@njit(cache=True, inline="always")
def q6_index(b, k, l):
    """(qt byte, its shift, qh byte, its shift) of weight k of block b of lane l of a ``q6`` tile."""
    j = l * 2 + k % 2
    p = k // 2
    return ((b * 8 + p % 8) * ROW_TILE) * 2 + j, 4 * (k // 16), ((b * 4 + p % 4) * ROW_TILE) * 2 + j, 2 * (k // 8)


@njit(cache=True, inline="always")
def q6_value(q, h, b, k, l):
    """The unsigned 6-bit q (0..63) of weight k of block b of lane l (q, h: a tile's rows of qt, qh)."""
    i, si, j, sj = q6_index(b, k, l)
    return np.int32((q[i] >> si) & 15) | (np.int32((h[j] >> sj) & 3) << 4)


@njit(cache=True, nogil=True)
def repack_q8_0(raw, qt, d, r0, r1):
    """Q8_0: d (fp16), qs int8[32]."""
    nb = d.shape[1] // R
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for b in range(nb):
            o = b * 34
            d[t, b * R + l] = f16_at(src, o)
            for k in range(32):
                q[pair_index(b, k, l)] = np.int8(sext8(src[o + 2 + k]))


@njit(cache=True, nogil=True)
def repack_q6_k(raw, qt, qh, sl, sh, d, r0, r1):
    """Q6_K (210 bytes: ql[128], qh[64], scales int8[16], d) -> the 4-bit and 2-bit planes of q,
    the int8 scales of weights 0-15 and 16-31 of each block (sl, sh) and each 256's d.  Tile by
    tile: each row's bytes of the two planes are formed in row order, 8 at a time in 64-bit words,
    then the tile's rows are interleaved two bytes at a time (tiled.interleave_rows)."""
    nb = sl.shape[1] // R
    nib = np.zeros((R, nb * 8), np.uint16)         # a tile's rows of qt, row-major
    crumb = np.zeros((R, nb * 4), np.uint16)       # and of qh
    nib64 = nib.reshape(-1).view(np.uint64)
    crumb64 = crumb.reshape(-1).view(np.uint64)
    for c0 in range(r0, r1, R):
        t = c0 // R
        for l in range(min(R, r1 - c0)):
            src = raw[c0 + l]
            no = l * nb * 2                      # words of the row in nib64, crumb64
            co = l * nb
            for i in range(nb // 8):
                o = i * 210
                d[t, i * R + l] = f16_at(src, o + 208)
                for b8 in range(8):              # 32-weight block b8 of the super-block
                    half = b8 // 4               # which 128-weight half
                    kk = b8 % 4                  # q1..q4 of ggml's loop
                    ql = o + 64 * half + (32 if kk % 2 else 0)
                    qhh = o + 128 + 32 * half
                    shift_l = np.uint64(4 if kk >= 2 else 0)
                    shift_h = np.uint64(2 * kk)
                    b = 8 * i + b8
                    for j in range(2):           # weights 8j.. and 16 + 8j..: 8 nibble bytes
                        lo = (u64_at(src, ql + 8 * j) >> shift_l) & M4
                        hi = (u64_at(src, ql + 16 + 8 * j) >> shift_l) & M4
                        nib64[no + b * 2 + j] = lo | (hi << U4)
                    c = np.uint64(0)
                    for s4 in range(4):          # weights 8 s4 + k: bits 2 s4 of crumb byte k
                        c |= ((u64_at(src, qhh + 8 * s4) >> shift_h) & M2) << np.uint64(2 * s4)
                    crumb64[co + b] = c
                    i2 = b * R + l
                    isc = o + 192 + 8 * half + 2 * kk
                    sl[t, i2] = np.int8(sext8(src[isc]))
                    sh[t, i2] = np.int8(sext8(src[isc + 1]))
        for l in range(min(R, r1 - c0), R):      # padding rows: zeros
            nib[l, :] = 0
            crumb[l, :] = 0
        interleave_rows(nib, qt[t].view(np.uint16))
        interleave_rows(crumb, qh[t].view(np.uint16))


# ---------------------------------------------------------------- integer sums


def _emit_pair_sums(builder, qp, hp, xps, op, rgs=None, prefetch=False):
    """The IR of pair_isums' AVX2 form for the row groups rgs (groups of 8 weight rows; all by
    default) and any number of activation rows xps (int16, i8* pointers): row j's sums at
    out[2 ROW_TILE j ..].  hp and prefetch are unused (the byte kinds stream without prefetches)."""
    _, maddwd = madds(builder)
    load = loader(builder)
    v16i8 = ir.VectorType(I8, 16)
    groups = ROW_TILE // 8
    rgs = range(groups) if rgs is None else rgs
    for half in range(2):                        # weights 0-15, 16-31: one int32 sum each
        acc = {(j, rg): ir.Constant(V8I32, [0] * 8) for j in range(len(xps)) for rg in rgs}
        for p in range(8 * half, 8 * half + 8):          # the pair of weights 2p, 2p+1
            xs = [builder.bitcast(splat(builder, load(xp, 4 * p, I32)), V16I16) for xp in xps]
            for rg in rgs:                       # 8 rows: 16 bytes, widened to int16
                w = builder.sext(load(qp, (p * ROW_TILE + rg * 8) * 2, v16i8), V16I16)
                for j, x in enumerate(xs):
                    acc[j, rg] = builder.add(acc[j, rg], maddwd(w, x))
        for (j, rg), a in acc.items():
            builder.store(a, builder.gep(op, [ir.Constant(I32, (2 * j + half) * groups + rg)]), align=4)


@intrinsic
def _pair_isums_avx2(typingctx, q, qo, xq, xo, out):
    """The AVX2 form of pair_isums (see its docstring)."""
    sig = types.void(q, qo, xq, xo, out)

    def codegen(context, builder, signature, args):
        q, qo, xq, xo, out = args
        aty = signature.args
        qp = byte_ptr(context, builder, aty[0], q, qo)
        xp = byte_ptr(context, builder, aty[2], xq, builder.mul(xo, ir.Constant(xo.type, 2)))
        _emit_pair_sums(builder, qp, None, [xp], out_ptr(context, builder, aty[4], out))
        return context.get_dummy_value()

    return sig, codegen


_pair_rows = rows_call("_pair_isums_rows", by_row_group(_emit_pair_sums, ROW_TILE // 8), terms=1)


@njit(cache=True, inline="always")
def pair_isums_rows(q, qo, xq, xo, ldx, c, out, simd):
    """pair_isums for c activation rows at once (c = tiled.row_step's count), row r's from
    ``xq[xo + r ldx]``: its sums at ``out[2 R r:2 R (r + 1)]``, each row's exactly those of
    pair_isums, the weights widened once for all the rows."""
    if HOST_AVX2 and simd != PORTABLE:
        _pair_rows(q, qo, q, 0, xq, xq, 2 * xo, 2 * ldx, c, out)
    else:
        for r in range(c):
            _pair_isums_loop(q, qo, xq, xo + r * ldx, out[2 * R * r:])


@njit(cache=True, inline="always")
def _pair_isums_loop(q, qo, xq, xo, out):
    """The portable form of pair_isums."""
    for half in range(2):
        for l in range(R):
            s = np.int32(0)
            for p in range(8 * half, 8 * half + 8):
                i = qo + (p * R + l) * 2
                s += np.int32(np.int32(q[i]) * np.int32(xq[xo + 2 * p])
                              + np.int32(q[i + 1]) * np.int32(xq[xo + 2 * p + 1]))
            out[half * R + l] = s


def pair_isums(q, qo, xq, xo, out, simd):
    """For one 32-weight block of each of the ROW_TILE rows of a tile of int8 weights (layout:
    weight k of row l at ``q[qo + ((k // 2) * ROW_TILE + l) * 2 + k % 2]``) and int16
    activations ``xq[xo:xo + 32]``: out[l] = sum over weights 0-15 of w * x, out[32 + l] the
    same over weights 16-31, exact in int32 (|out| <= 16 * 128 * 32767).  AVX2 form:
    ``vpmovsxbw`` loads of 8 rows' pairs and ``vpmaddwd`` by the broadcast activation pair.
    (Callable from Numba code only.)"""
    raise NotImplementedError("pair_isums runs inside Numba kernels")


@overload(pair_isums, inline="always")
def _pair_isums_impl(q, qo, xq, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, xq, xo, out, simd):
            _pair_isums_loop(q, qo, xq, xo, out)
        return portable

    def either(q, qo, xq, xo, out, simd):
        if simd != PORTABLE:
            _pair_isums_avx2(q, qo, xq, xo, out)
        else:
            _pair_isums_loop(q, qo, xq, xo, out)
    return either


def _q6_groups(builder, load, qp, hp, r16):
    """The unsigned q (0..63) of the 16 pairs of rows 16 r16 .. 16 r16 + 15 of a ``q6`` block, each
    as (p, <32 x i8>) (weights 2p, 2p+1 of the 16 rows, the ``q8`` order), four pairs per load of the
    crumb plane: crumb m holds pairs m, m + 4, m + 8, m + 12, nibbles m and m + 4 the low (pairs m,
    m + 4) and high (m + 8, m + 12) nibbles of two of them."""
    low4 = ir.Constant(V32I8, [15] * 32)
    top = ir.Constant(V32I8, [0x30] * 32)
    for m in range(4):
        c = load(hp, (m * ROW_TILE + 16 * r16) * 2, V32I8)
        nib = [load(qp, ((m + 4 * i) * ROW_TILE + 16 * r16) * 2, V32I8) for i in range(2)]
        for p in (m, m + 4, m + 8, m + 12):
            v = nib[(p // 4) % 2]
            n = builder.and_(v, low4) if p < 8 else builder.and_(builder.lshr(v, ir.Constant(V32I8, [4] * 32)), low4)
            s = 2 * (p // 4)                 # the crumb's bits s, s + 1 -> bits 4, 5
            h = builder.shl(c, ir.Constant(V32I8, [4 - s] * 32)) if s < 4 else (
                builder.lshr(c, ir.Constant(V32I8, [s - 4] * 32)) if s > 4 else c)
            yield p, builder.or_(n, builder.and_(h, top))


@intrinsic
def _q6_isums_avx2(typingctx, q, qo, h, ho, xq, xo, xoff, out):
    """The AVX2 form of q6_isums (see its docstring)."""
    sig = types.void(q, qo, h, ho, xq, xo, xoff, out)

    def codegen(context, builder, signature, args):
        q, qo, h, ho, xq, xo, xoff, out = args
        aty = signature.args
        qp = byte_ptr(context, builder, aty[0], q, qo)
        hp = byte_ptr(context, builder, aty[2], h, ho)
        xp = byte_ptr(context, builder, aty[4], xq, builder.mul(xo, ir.Constant(xo.type, 2)))
        offp = builder.gep(data_ptr(context, builder, aty[6], xoff, I32), [builder.udiv(xo, ir.Constant(xo.type, 16))])
        offs = [splat(builder, builder.load(builder.gep(offp, [ir.Constant(I32, half)]))) for half in range(2)]
        op = out_ptr(context, builder, aty[7], out)
        _, maddwd = madds(builder)
        load = loader(builder)
        zero = ir.Constant(V32I8, [0] * 32)
        lo_mask = ir.Constant(ir.VectorType(I32, 32), [i + 32 * e for i in (*range(8), *range(16, 24)) for e in (0, 1)])
        hi_mask = ir.Constant(ir.VectorType(I32, 32), [i + 32 * e for i in (*range(8, 16), *range(24, 32))
                                                       for e in (0, 1)])
        for r16 in range(ROW_TILE // 16):
            # [half][unpack lo / hi: rows 0-3, 8-11 / 4-7, 12-15 of the 16][pair p % 2]: 8 chains of 4
            # multiply-adds (one chain of 8 would wait on each add's latency)
            acc = [[[ir.Constant(V8I32, [0] * 8)] * 2 for _ in range(2)] for _ in range(2)]
            for p, v in _q6_groups(builder, load, qp, hp, r16):
                x = builder.bitcast(splat(builder, load(xp, 4 * p, I32)), V16I16)
                for u, mask in enumerate((lo_mask, hi_mask)):
                    w = builder.bitcast(builder.shuffle_vector(v, zero, mask), V16I16)
                    acc[p // 8][u][p % 2] = builder.add(acc[p // 8][u][p % 2], maddwd(w, x))
            for half in range(2):
                lo, hi = (builder.add(*acc[half][u]) for u in range(2))
                for r8 in range(2):          # rows 8 r8 .. 8 r8 + 7 of the 16
                    rows = builder.shuffle_vector(lo, hi, ir.Constant(V8I32, [4 * r8 + i + (4 if i >= 4 else 0)
                                                                               for i in range(8)]))
                    rows = builder.sub(rows, offs[half])
                    builder.store(rows, builder.gep(op, [ir.Constant(I32, half * (ROW_TILE // 8) + 2 * r16 + r8)]),
                                  align=4)
        return context.get_dummy_value()

    return sig, codegen


def _emit_q6_rows(builder, qp, hp, xps, op):
    """The IR of q6_isums_rows' AVX2 form for the activation rows xps (int16, i8* pointers; hp the
    block's i32 words of qh): row j's sums of the unsigned q at out[2 ROW_TILE j ..] (q6_isums'
    order), the quants of each 16 rows rebuilt once for all the rows."""
    _, maddwd = madds(builder)
    load = loader(builder)
    hp = builder.bitcast(hp, I8.as_pointer())
    zero = ir.Constant(V32I8, [0] * 32)
    masks = [ir.Constant(ir.VectorType(I32, 32), [i + 32 * e for i in rows for e in (0, 1)])
             for rows in ((*range(8), *range(16, 24)), (*range(8, 16), *range(24, 32)))]
    for r16 in range(ROW_TILE // 16):
        # [row][half][unpack lo / hi: rows 0-3, 8-11 / 4-7, 12-15 of the 16]
        acc = [[[ir.Constant(V8I32, [0] * 8)] * 2 for _ in range(2)] for _ in xps]
        for p, v in _q6_groups(builder, load, qp, hp, r16):
            ws = [builder.bitcast(builder.shuffle_vector(v, zero, m), V16I16) for m in masks]
            for j, xp in enumerate(xps):
                x = builder.bitcast(splat(builder, load(xp, 4 * p, I32)), V16I16)
                for u in range(2):
                    acc[j][p // 8][u] = builder.add(acc[j][p // 8][u], maddwd(ws[u], x))
        for j in range(len(xps)):
            for half in range(2):
                lo, hi = acc[j][half]
                for r8 in range(2):          # rows 8 r8 .. 8 r8 + 7 of the 16
                    rows = builder.shuffle_vector(lo, hi, ir.Constant(V8I32, [4 * r8 + i + (4 if i >= 4 else 0)
                                                                               for i in range(8)]))
                    builder.store(rows, builder.gep(op, [ir.Constant(I32, (2 * j + half) * (ROW_TILE // 8)
                                                                      + 2 * r16 + r8)]), align=4)


_q6_rows = rows_call("_q6_isums_rows", _emit_q6_rows, terms=1)


def _q6_combine_intrinsic(rows: int):
    """An intrinsic (q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xfo, ldf, aq): one
    32-weight block of a ``q6`` tile (planes at q[qo], h[ho]; scales at sl[so], sh[so]) times `rows`
    int16 activation rows (or int8 ones, the type of xq deciding: one term, vpdpbusd, see the module
    docstring) (row r at xq[xo + r ldx], its dx at dx[xso + r lds], its offset sums at
    xoff[xfo + r ldf]), combined in registers: for row r and lane l, with the integer sums
    isum_lo, isum_hi of (q - 32) x over weights 0-15, 16-31,
    ``aq[R r + l] = fma(fma(sl, isum_lo, sh isum_hi), dx, aq[R r + l])``: q6_tile's combine (its
    float operations as LLVM contracts them there), without storing the integer sums.  AVX-512 VNNI
    form: per 16 rows and pair of weights, the rebuilt unsigned q (32 bytes, ``_q6_groups``) widened
    once to int16 (``vpmovzxbw``, rows in order) and one 512-bit ``vpdpwssd`` per activation row by
    the broadcast activation pair: 8 per 16 weights of 16 rows, where the AVX2 form needs 16
    ``vpmaddwd`` (256-bit) and 16 unpacks, then the row shuffles, stores and a float loop."""

    def fused(typingctx, q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xfo, ldf, aq):
        sig = types.void(q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xfo, ldf, aq)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xfo, ldf, aq = args
            aty = signature.args
            f32t = ir.FloatType()
            v16i32 = ir.VectorType(I32, 16)
            v16f = ir.VectorType(f32t, 16)
            qp = byte_ptr(context, builder, aty[0], q, qo)
            hp = byte_ptr(context, builder, aty[2], h, ho)
            xb = aty[4].dtype.bitwidth // 8          # bytes per activation: 2 (int16), 1 (one int8 term)
            xps = [byte_ptr(context, builder, aty[4], xq,
                            builder.mul(builder.add(xo, builder.mul(ldx, ir.Constant(ldx.type, r))),
                                        ir.Constant(xo.type, xb))) for r in range(rows)]
            slp, shp = (byte_ptr(context, builder, aty[i], args[i], so) for i in (7, 8))
            dxp = builder.gep(data_ptr(context, builder, aty[10], dx, f32t), [xso])
            offp = builder.gep(data_ptr(context, builder, aty[13], xoff, I32), [xfo])
            aqp = data_ptr(context, builder, aty[16], aq, f32t)
            dpwssd = x86(builder, "llvm.x86.avx512.vpdpwssd.512", v16i32, v16i32, v16i32, v16i32)
            dpbusd = x86(builder, "llvm.x86.avx512.vpdpbusd.512", v16i32, v16i32, v16i32, v16i32)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f] * 3), "llvm.fma.v16f32")
            load = loader(builder)
            zero = ir.Constant(v16i32, [0] * 16)

            # row r's dx and its two offset sums (32 sum(x) of weights 0-15, 16-31), broadcast: with
            # ISUM_ROWS rows or more loaded where they are used (loaded for all the rows up front, they
            # were spilled across the products), with fewer once, up front (registers to spare)
            def dx_of(r):
                return splat(builder, builder.load(builder.gep(dxp, [builder.mul(lds, ir.Constant(lds.type, r))])), 16)

            def off_of(r, half):
                o = builder.gep(offp, [builder.add(builder.mul(ldf, ir.Constant(ldf.type, r)), ir.Constant(ldf.type, half))])
                return splat(builder, builder.load(o), 16)

            dxs, offs = dx_of, off_of
            if rows < ISUM_ROWS:
                kept = [(dx_of(r), off_of(r, 0), off_of(r, 1)) for r in range(rows)]
                dxs, offs = (lambda r: kept[r][0]), (lambda r, half: kept[r][1 + half])

            for r16 in range(ROW_TILE // 16):
                # [row][half][chain]: with few rows, two chains per half (pair p % 2), so the products
                # do not wait on one add's latency
                chains = 2 if rows < 4 else 1
                acc = [[[zero] * chains for _ in range(2)] for _ in range(rows)]
                if xb == 2:
                    for p, v in _q6_groups(builder, load, qp, hp, r16):
                        w = builder.bitcast(builder.zext(v, ir.VectorType(ir.IntType(16), 32)), v16i32)
                        for r in range(rows):
                            x = splat(builder, load(xps[r], 4 * p, I32), 16)
                            acc[r][p // 8][p % chains] = dpwssd(acc[r][p // 8][p % chains], w, x)
                else:
                    # one int8 term: pairs 2j, 2j + 1 joined into weights 4j..4j+3 of each of the 16 rows
                    # (one 512-bit vector, rows in order) and one vpdpbusd per activation row by its
                    # broadcast 4 bytes: half the multiply-adds of the int16 form
                    v = dict(_q6_groups(builder, load, qp, hp, r16))
                    for j in range(8):
                        w = builder.bitcast(builder.shuffle_vector(v[2 * j], v[2 * j + 1], ir.Constant(
                            ir.VectorType(I32, 64), [2 * i + e + 32 * u for i in range(16) for u in (0, 1)
                                                     for e in (0, 1)])), v16i32)
                        for r in range(rows):
                            x = splat(builder, load(xps[r], 4 * j, I32), 16)
                            acc[r][j // 4][j % chains] = dpbusd(acc[r][j // 4][j % chains], w, x)
                slv, shv = (builder.sitofp(load(sp, 16 * r16, ir.VectorType(I8, 16)), v16f) for sp in (slp, shp))
                for r in range(rows):
                    sums = [acc[r][half][0] if chains == 1 else builder.add(*acc[r][half]) for half in range(2)]
                    lo, hi = (builder.sitofp(builder.sub(sums[half], offs(r, half)), v16f) for half in range(2))
                    t = builder.call(fma, [slv, lo, builder.fmul(shv, hi)])
                    a = builder.bitcast(builder.gep(aqp, [ir.Constant(I32, r * ROW_TILE + 16 * r16)]), v16f.as_pointer())
                    builder.store(builder.call(fma, [t, dxs(r), builder.load(a, align=4)]), a, align=4)
            return context.get_dummy_value()

        return sig, codegen

    fused.__name__ = fused.__qualname__ = f"_q6_vnni_combine{rows}"
    return intrinsic(fused)


# Activation rows per call of the VNNI combine: the widened quants of each 16 weight rows feed 8 rows'
# vpdpwssd (16 accumulators), so their rebuilding costs half as much per product as with ISUM_ROWS 4.
Q6_ROWS = 8
_q6c1, _q6c2, _q6cN, _q6c8 = (_q6_combine_intrinsic(c) for c in (1, 2, ISUM_ROWS, Q6_ROWS))


@njit(cache=True, inline="always")
def q6_rows_most(vnni):
    """The widest call of q6_combine_rows (the `most` of tiled.row_step) in the VNNI form (vnni) or
    another: Q6_ROWS where the host has AVX-512 VNNI and the VNNI form runs, else ISUM_ROWS."""
    return Q6_ROWS if HOST_VNNI and vnni else ISUM_ROWS


@njit(cache=True, inline="always")
def q6_combine_loop(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd):
    """The AVX2 and portable forms of q6_combine_rows: the integer sums (q6_isums_rows) into isum
    (>= 2 R c int32), then q6_tile's float combine per row and lane."""
    q6_isums_rows(q, qo, h, ho, xq, xo, ldx, xoff, c, isum, simd)
    for r in range(c):
        dxb = dx[xso + r * lds]
        a, o = row_offsets(r)
        for l in range(R):
            i = nonneg(so + l)
            aq[a + l] += two_halves(f32(sl[i]), f32(sh[i]), isum, o, l) * dxb


def q6_combine_rows(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd):
    """One 32-weight block (planes at q[qo], h[ho], scales at sl[so], sh[so]) of a ``q6`` tile times
    c int16 (or one-term int8) activation rows (row r at xq[xo + r ldx], its dx at dx[xso + r lds]; xoff the rows'
    offset_sums), added into the super-block sums aq (row r lane l at R r + l) exactly as q6_tile
    adds one row's: the VNNI form in registers (_q6_combine_intrinsic), the others through isum
    (>= 2 R c int32 scratch).  (Callable from Numba code only.)"""
    raise NotImplementedError("q6_combine_rows runs inside Numba kernels")


@overload(q6_combine_rows, inline="always")
def _q6_combine_rows_impl(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd):
    if not HOST_VNNI:
        def other(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd):
            q6_combine_loop(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd)
        return other

    def either(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd):
        if simd != VNNI:
            q6_combine_loop(q, qo, h, ho, xq, xo, ldx, c, sl, sh, so, dx, xso, lds, xoff, aq, isum, simd)
        elif c == Q6_ROWS:
            _q6c8(q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xo // 16, ldx // 16, aq)
        elif c == ISUM_ROWS:
            _q6cN(q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xo // 16, ldx // 16, aq)
        elif c == 2:
            _q6c2(q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xo // 16, ldx // 16, aq)
        else:
            _q6c1(q, qo, h, ho, xq, xo, ldx, sl, sh, so, dx, xso, lds, xoff, xo // 16, ldx // 16, aq)
    return either


@njit(cache=True, inline="always")
def q6_isums_rows(q, qo, h, ho, xq, xo, ldx, xoff, c, out, simd):
    """q6_isums for c activation rows at once (c = tiled.row_step's count), row r's int16 (or int8:
    one term, the portable loop's sums) activations at ``xq[xo + r ldx]`` and its offset sums at ``xoff[(xo + r ldx) / 16 ..]``: its
    sums at ``out[2 R r:2 R (r + 1)]``, each row's exactly those of q6_isums (integer sums), the
    quants rebuilt from the two planes once for all the rows."""
    if HOST_AVX2 and simd != PORTABLE and xq.itemsize == 2:     # one int8 term: the portable loop
        _q6_rows(q, qo, h, ho // 4, xq, xq, 2 * xo, 2 * ldx, c, out)
        for r in range(c):
            x = (xo + r * ldx) // 16
            for half in range(2):
                for l in range(R):
                    out[2 * R * r + half * R + l] -= xoff[x + half]
    else:
        for r in range(c):
            _q6_isums_loop(q, qo, h, ho, xq, xo + r * ldx, xoff, out[2 * R * r:])


@njit(cache=True, inline="always")
def _q6_isums_loop(q, qo, h, ho, xq, xo, xoff, out):
    """The portable form of q6_isums."""
    b = qo // NIB
    for half in range(2):
        for l in range(R):
            s = np.int32(0)
            for k in range(16 * half, 16 * half + 16):
                s += q6_value(q, h, b, k, l) * np.int32(xq[xo + k])
            out[half * R + l] = s - xoff[xo // 16 + half]


def q6_isums(q, qo, h, ho, xq, xo, xoff, out, simd):
    """For block qo / NIB (qo = b NIB, ho = b CRUMB, xo = 32 b) of a ``q6`` tile (q, h: its rows of
    qt, qh) and int16 activations ``xq[xo:xo + 32]``: out[l] = sum over weights 0-15 of lane l of
    (q - 32) x, out[R + l] the same over weights 16-31, exact in int32 (|out| <= 16 * 32 * 32767):
    the sums of the unsigned q (0..63) less xoff[xo / 16 + half] (offset_sums).  (Callable from
    Numba code only.)"""
    raise NotImplementedError("q6_isums runs inside Numba kernels")


@overload(q6_isums, inline="always")
def _q6_isums_impl(q, qo, h, ho, xq, xo, xoff, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, xq, xo, xoff, out, simd):
            _q6_isums_loop(q, qo, h, ho, xq, xo, xoff, out)
        return portable

    def either(q, qo, h, ho, xq, xo, xoff, out, simd):
        if simd != PORTABLE:
            _q6_isums_avx2(q, qo, h, ho, xq, xo, xoff, out)
        else:
            _q6_isums_loop(q, qo, h, ho, xq, xo, xoff, out)
    return either


@njit(cache=True, inline="always")
def offset_sums(xq):
    """32 times the sum of each 16 int16 activations, (2 nb,) int32: what q6_isums' unsigned q
    adds over q - 32."""
    out = np.empty(xq.size // 16, np.int32)
    for i in range(out.size):
        s = np.int32(0)
        for k in range(16 * i, 16 * i + 16):
            s += np.int32(xq[k])
        out[i] = s * np.int32(32)
    return out


# ---------------------------------------------------------------- matvec and exact decoders


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_i8(qt, s_lo, s_hi, X, tiles, xrow, simd, y):
    """One byte per weight (Q8_0) tiled: qt (T, nb*32*R) int8; scales s_lo / s_hi
    (T, nb*R) of weights 0-15 / 16-31 of each block (the same array when the type has
    one scale per block); w = s q.  x is rounded to int16 per block (round_activations16)
    and the integer sums come from pair_isums (simd: their form, kernels.simd.SIMD_FORMS).
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    xq, dx = round_activations16(X.reshape(-1))
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            o = xrow[it] * nb
            q = qt[t]
            lt = s_lo[t]
            ht = s_hi[t]
            acc[:] = 0
            for b in range(nb):
                pair_isums(q, b * 32 * R, xq, 32 * (o + b), isum, simd)
                dxb = dx[o + b]
                for l in range(R):
                    i = nonneg(b * R + l)
                    acc[l] += two_halves(scale(lt[i]), scale(ht[i]), isum, 0, l) * dxb
            store_tile(acc, it, y)


@njit(cache=True, inline="always")
def q6_tile(q, h, lt, ht, dt, xq, dx, xo, o, nb, simd, acc, aq, isum):
    """One row tile of Q6_K (q, h, lt, ht, dt: the tile's rows of matvec_q6's arrays) times the
    activation row at block o of round_activations16's arrays (xo: their offset_sums): acc (R,)
    float32, zero on entry, gets the tile's 32 results (matvec_q6's item).  Scratch: aq (R,)
    float32 (one super-block's sums of sc * (q . x)), isum (2 R,) int32."""
    for s in range(nb // 8):
        aq[:] = 0
        for b in range(8 * s, 8 * s + 8):
            if HOST_VNNI and simd == VNNI:      # the multi-row product's form for one row: the same bits
                q6_combine_rows(q, b * NIB, h, b * CRUMB, xq, 32 * (o + b), 0, 1, lt, ht, b * R, dx, o + b, 0, xo,
                                aq, isum, simd)
                continue
            q6_isums(q, b * NIB, h, b * CRUMB, xq, 32 * (o + b), xo, isum, simd)
            dxb = dx[o + b]
            for l in range(R):
                i = nonneg(b * R + l)
                aq[l] += two_halves(f32(lt[i]), f32(ht[i]), isum, 0, l) * dxb
        add_scaled(acc, dt, s, aq)


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_q6(qt, qh, sl, sh, d, X, tiles, xrow, simd, y):
    """Q6_K tiled: qt, qh the 4-bit and 2-bit planes of q; sl, sh (T, nb*R) int8 the scales of
    weights 0-15 and 16-31 of each block, d (T, nb/8*R) each 256's scale.  Per 256 weights
    ``acc += d sum(dx (sl isum_lo + sh isum_hi))`` with the sums of (q - 32) x, as ggml sums a
    Q6_K block: the scales stay integers, so a block streams 26.25 bytes, as many as the file's.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS); each item is q6_tile."""
    nb = X.shape[1] // 32
    xq, dx = round_activations16(X.reshape(-1))
    xo = offset_sums(xq)
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        aq = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            acc[:] = 0
            q6_tile(qt[t], qh[t], sl[t], sh[t], d[t], xq, dx, xo, xrow[it] * nb, nb, simd, acc, aq, isum)
            store_tile(acc, it, y)


@njit(parallel=True, fastmath=FM, cache=True)
def matmul_rows_i8(qt, s_lo, s_hi, X, simd, Y):
    """Y (n, rows) = X W^T for Q8_0 (arrays as matvec_i8's), each row of Y bit-identical to
    matvec_i8 of that row alone, each block's weights widened once per ISUM_ROWS rows."""
    n, cols = X.shape
    nb = cols // 32
    xq, dx = round_rows16(X)
    for t in prange(qt.shape[0]):
        q = qt[t]
        lt = s_lo[t]
        ht = s_hi[t]
        acc = np.empty(ISUM_ROWS * R, np.float32)     # (rows, R lanes)
        isum = np.empty(2 * R * ISUM_ROWS, np.int32)
        i0 = 0
        while i0 < n:
            c = row_step(n - i0)
            acc[:] = 0
            for b in range(nb):
                pair_isums_rows(q, b * 32 * R, xq, i0 * cols + 32 * b, cols, c, isum, simd)
                for r in range(c):
                    dxb = dx[i0 + r, b]
                    a, o = row_offsets(r)
                    for l in range(R):
                        i = nonneg(b * R + l)
                        acc[a + l] += two_halves(scale(lt[i]), scale(ht[i]), isum, o, l) * dxb
            store_row_tiles(acc, c, t, Y, i0)
            i0 += c


@njit(cache=True, inline="always")
def q6_tile_rows(q, h, lt, ht, dt, xq, dx, xoff, cols, i0, i1, simd, Y, yt, acc, aq, isum):
    """Rows i0..i1-1 of the int16 activations (q6_round_rows', row i at xq[i cols]; xoff their
    offset_sums; or q6_row_activations(X, 1)'s int8 ones, then not the matvec's bits) times one row tile of Q6_K (q, h, lt, ht, dt: the tile's rows of matvec_q6's arrays) into tile yt of
    rows i0..i1-1 of Y: each row bit-identical to matvec_q6 of it alone (the same integer sums and
    float combine, in the same order).  Scratch (q6_scratch): acc, aq, isum."""
    nb = cols // 32
    dxf = dx.reshape(-1)
    while i0 < i1:
        c = row_step(i1 - i0, q6_rows_most(simd == VNNI))
        acc[:] = 0
        for s in range(nb // 8):
            aq[:] = 0
            for b in range(8 * s, 8 * s + 8):
                q6_combine_rows(q, b * NIB, h, b * CRUMB, xq, i0 * cols + 32 * b, cols, c, lt, ht, b * R,
                                dxf, i0 * nb + b, nb, xoff, aq, isum, simd)
            add_scaled_rows(acc, dt, s, aq, c)
        store_row_tiles(acc, c, yt, Y, i0)
        i0 += c


@njit(parallel=True, fastmath=FM, cache=True)
def row_items_q6(qt, qh, sl, sh, d, xq, dx, xoff, tiles, r0, r1, yt, simd, Y):
    """The multi-row product of Q6_K as ROW_ITEMS (kinds.tiled): item i is row tile tiles[i] times
    the rounded rows r0[i]..r1[i]-1 (q6_row_activations' arrays), stored at tile yt[i] of those rows
    of Y; each row bit-identical to matvec_q6 of it alone."""
    cols = dx.shape[1] * 32
    parts = shares(tiles.size)
    for c in prange(parts):         # each share's scratch made once (tiled.shares)
        acc, aq, isum = q6_scratch()
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            q6_tile_rows(qt[t], qh[t], sl[t], sh[t], d[t], xq, dx, xoff, cols, r0[it], r1[it], simd, Y, yt[it],
                         acc, aq, isum)


@njit(cache=True, inline="always")
def q6_scratch():
    """q6_tile_rows' scratch: acc and aq (Q6_ROWS R,) float32 (the rows' lanes and one super-block's
    sums of sc (q . x) of them), isum (2 R ISUM_ROWS,) int32 (the integer sums of the forms that store
    them)."""
    return (np.empty(Q6_ROWS * R, np.float32), np.empty(Q6_ROWS * R, np.float32),
            np.empty(2 * R * ISUM_ROWS, np.int32))


@njit(cache=True, inline="always")
def _q6_round_row(X, i, xq, dx, xoff):
    """Row i of X as matvec_q6 rounds it, into row i of q6_round_rows' arrays."""
    cols = X.shape[1]
    q, a = round_activations16(X[i])
    xq[i * cols:(i + 1) * cols] = q
    dx[i] = a
    xoff[i * (cols // 16):(i + 1) * (cols // 16)] = offset_sums(q)


@njit(cache=True)
def q6_round_rows(X):
    """Each row of X (n, 32 nb) as matvec_q6 rounds it: xq (n 32 nb,) int16 and xoff (n 2 nb,) int32
    (offset_sums), row i at i 32 nb and i 2 nb; dx (n, nb) float32 (the arrays row_items_q6 takes)."""
    xq, dx = round_rows16(X)
    return xq, dx, offset_sums(xq)


@njit(parallel=True, cache=True)
def q6_round_rows_parallel(X):
    """q6_round_rows, the rows split over the threads (each row's values are those of its own call)."""
    n, cols = X.shape
    xq, dx, xoff = np.empty(n * cols, np.int16), np.empty((n, cols // 32), np.float32), np.empty(n * cols // 16, np.int32)
    for i in prange(n):
        _q6_round_row(X, i, xq, dx, xoff)
    return xq, dx, xoff


def q6_row_activations(X: np.ndarray, terms: int = 2) -> tuple:
    """q6_round_rows of X (terms 2: the matvec's int16 rounding), or its rows rounded to one int8 term
    per 32-block (terms 1: tiled.round_rows(X, 1)'s xq and dx with their offset_sums), split over the
    threads for a prompt batch (a parallel launch costs more than rounding a decode step's few rows)."""
    many = X.shape[0] > ROW_ITEM_ROWS
    if terms == 2:
        return (q6_round_rows_parallel if many else q6_round_rows)(X)
    xq, _, dx, _, _ = (round_rows_parallel if many else round_rows)(X, 1)
    return xq, dx, offset_sums(xq)


@njit(cache=True, inline="always")
def decode_i8_block(q, h, b, l, s0, s1, o):
    """Block b of lane l of a tile (q, h = qt[t], qh[t]) into o[32 b: 32 b + 32]: w = q s0 (weights
    0-15), q s1; q the byte (``q8``: h empty) or the 6-bit q - 32 (``q6``)."""
    six = h.size > 0
    for k in range(32):
        v = q6_value(q, h, b, k, l) - 32 if six else np.int32(q[pair_index(b, k, l)])
        o[32 * b + k] = f32(v) * (s0 if k < 16 else s1)


@njit(nogil=True, cache=True)
def decode_i8(qt, s_lo, s_hi, ids, out):
    """The byte-per-weight kinds (see matvec_i8): w = q s (Q8_0)."""
    none = np.empty(0, np.uint8)
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(s_lo.shape[1] // R):
            j = b * R + l
            decode_i8_block(qt[t], none, b, l, scale(s_lo[t, j]), scale(s_hi[t, j]), out[i])


@njit(nogil=True, cache=True)
def decode_q6(qt, qh, sl, sh, d, ids, out):
    """Q6_K (see matvec_q6): w = (q - 32) (d sc)."""
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(sl.shape[1] // R):
            dd = scale(d[t, (b // 8) * R + l])
            j = b * R + l
            decode_i8_block(qt[t], qh[t], b, l, dd * f32(sl[t, j]), dd * f32(sh[t, j]), out[i])


def _emit_pairs_T(context, builder, groups, scales, op, ldo):
    """Store one block's weights K-major: groups(r16) gives the 16 (p, signed <32 x i8>) pair groups of
    rows 16 r16 .. 16 r16 + 15 (the ``q8`` order), scales [lo, hi][8-row group] the rows' scales;
    weight k of lane l -> op[k * ldo + l] = q * scale."""
    for r16 in range(ROW_TILE // 16):         # rows 16 r16 .. 16 r16 + 15
        for p, v in groups(r16):              # weights 2p, 2p+1
            for e in range(2):
                k = 2 * p + e
                for r8 in range(2):           # rows 8 r8 .. 8 r8 + 7 of the 16
                    b8 = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 8),
                                                                 [2 * (8 * r8 + i) + e for i in range(8)]))
                    u = builder.sitofp(builder.sext(b8, V8I32), V8F32)
                    val = builder.fmul(u, scales[k // 16][2 * r16 + r8])
                    row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, k)),
                                      ir.Constant(ldo.type, 16 * r16 + 8 * r8))
                    builder.store(val, builder.bitcast(builder.gep(op, [row]), V8F32.as_pointer()), align=4)


def _pair_block_T(six):
    """The intrinsic decoding block b of one tile into K-major output: (q, qo, h, ho, s_lo, s_hi, so,
    out, base, ldo) with q, h the tile's rows of qt, qh (``q8``: qo = b * 32 * R bytes, h unread;
    ``q6``: qo = b NIB, ho = b CRUMB), s_lo / s_hi its rows of scales (so = b * R); weight k of
    lane l -> out[base + k * ldo + l] = q * (s_lo if k < 16 else s_hi)."""

    def block_T(typingctx, q, qo, h, ho, s_lo, s_hi, so, out, base, ldo):
        sig = types.void(q, qo, h, ho, s_lo, s_hi, so, out, base, ldo)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, s_lo, s_hi, so, out, base, ldo = args
            aty = signature.args
            qp = byte_ptr(context, builder, aty[0], q, qo)
            op = builder.gep(data_ptr(context, builder, aty[7], out, ir.FloatType()), [base])
            scales = [scales8(context, builder, aty[4], s_lo, so, ROW_TILE),
                      scales8(context, builder, aty[5], s_hi, so, ROW_TILE)]
            load = loader(builder)
            if six:
                hp = byte_ptr(context, builder, aty[2], h, ho)
                off = ir.Constant(V32I8, [32] * 32)

                def groups(r16):
                    return [(p, builder.sub(v, off)) for p, v in _q6_groups(builder, load, qp, hp, r16)]
            else:
                def groups(r16):
                    return [(p, load(qp, (p * ROW_TILE + 16 * r16) * 2, V32I8)) for p in range(16)]
            _emit_pairs_T(context, builder, groups, scales, op, ldo)
            return context.get_dummy_value()

        return sig, codegen

    block_T.__name__ = block_T.__qualname__ = f"_{'q6' if six else 'i8'}_block_T"
    return intrinsic(block_T)


_i8_block_T = _pair_block_T(six=False)
_q6_block_T = _pair_block_T(six=True)


@njit(cache=True, inline="always")
def pair_block_T(q, h, b, s_lo, s_hi, out, base, ldo):
    """Block b of a tile (q, h = qt[t], qh[t]; ``q8``: h empty) into out (flat float32): weight k of
    lane l -> out[base + k ldo + l], decode_i8_block's very value."""
    if h.size > 0:
        _q6_block_T(q, b * NIB, h, b * CRUMB, s_lo, s_hi, b * R, out, base, ldo)
    else:
        _i8_block_T(q, b * 32 * R, h, 0, s_lo, s_hi, b * R, out, base, ldo)


@njit(nogil=True, cache=True)
def decode_i8_T(qt, qh, s_lo, s_hi, t0, t1, out):
    """Row tiles t0..t1-1 of a byte kind (Q8_0: qh of shape (1, 0); Q6_K) -> out (cols, >= (t1 - t0)
    * ROW_TILE) float32, K-major, the values of decode_i8 / decode_q6."""
    nb = s_lo.shape[1] // R
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        h = qh[t] if qh.shape[1] > 0 else qh[0]
        for b in range(nb):
            pair_block_T(qt[t], h, b, s_lo[t], s_hi[t], flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def matmul_small_i8(qt, qh, s_lo, s_hi, x, n, t0, t1, out):
    """out (n, rows) = X W^T on row tiles t0..t1-1 for X given block-major as x (Kind.small_matmul,
    tiled.small_product): each block decoded exactly (pair_block_T) into a scratch block and applied
    to the rows of X (tiled.fma_rows).  qh: as decode_i8_T takes it."""
    nb = x.size // (32 * n)
    wb = np.empty(32 * R, np.float32)               # (32 k, R lanes)
    for i0 in range(0, n, ROW_CHUNK):
        c = min(ROW_CHUNK, n - i0)
        for b0 in range(0, nb, BLOCK_CHUNK):
            for t in range(t0, t1):
                h = qh[t] if qh.shape[1] > 0 else qh[0]
                acc = load_rows(c, i0, t, out, b0)  # (c rows, R lanes)
                for b in range(b0, min(nb, b0 + BLOCK_CHUNK)):
                    pair_block_T(qt[t], h, b, s_lo[t], s_hi[t], wb, 0, R)
                    fma_rows(wb, x, 32 * (nb * i0 + c * b), 32, c, acc)
                store_rows(acc, c, i0, t, out)


@njit(nogil=True, cache=True)
def matmul_small_q6(qt, qh, sl, sh, d, x, n, t0, t1, out):
    """matmul_small_i8 for Q6_K: each tile's int8 scales made float (tiled.block_scales, cache-resident)
    before its blocks are decoded."""
    for t in range(t0, t1):
        matmul_small_i8(qt[t:t + 1], qh[t:t + 1], block_scales(sl, d, t, t + 1, 1), block_scales(sh, d, t, t + 1, 1),
                        x, n, 0, 1, out[:, t * R:])


# ---------------------------------------------------------------- the kind


NO_PLANE = np.zeros((1, 0), np.uint8)       # ``q8``'s stand-in for ``q6``'s 2-bit plane


class ByteKind(TiledKind):
    """q8: Q8_0, one float scale per block (see the module docstring)."""
    qbytes = 32
    lane_bytes = 2
    qdtype = np.int8

    def __init__(self, name: str, t: GGMLType):
        self.name, self.types, self.scales = name, {t: None}, ("d",)
        if HOST_AVX2 and HOST_F16C:
            self.decode_T = self._decode_T
            self.small_matmul = self._small_matmul

    def repack_rows(self, raw, t, A, r0, r1):
        repack_q8_0(raw, A["qt"], A["d"], r0, r1)

    def tile_kernel(self, p: Packed):
        return matvec_i8, (p.arrays["qt"], p.arrays["d"], p.arrays["d"])

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        a = (p.arrays["qt"], p.arrays["d"], p.arrays["d"])
        return lambda X, out: matmul_rows_i8(*a, X, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_i8(p.arrays["qt"], p.arrays["d"], p.arrays["d"], ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        decode_i8_T(p.arrays["qt"], NO_PLANE, p.arrays["d"], p.arrays["d"], t0, t1, out)

    def small_kernel(self, p: Packed):
        return matmul_small_i8, (p.arrays["qt"], NO_PLANE, p.arrays["d"], p.arrays["d"])

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """x rounded to int16 per 32-block (within max|x_block| / 65534)."""
        xq, dx = round_activations16(x)
        return (xq.reshape(-1, 32) * dx[:, None].astype(np.float64)).reshape(-1)


class Q6Kind(ByteKind):
    """q6: Q6_K's q as a 4-bit and a 2-bit plane with its int8 scales per 16 weights and d per 256
    (see the module docstring)."""
    per256 = True
    qbytes = 16
    qdtype = np.uint8
    lane_planes = ("qt", "qh")
    # rows_prompt on AVX-512 VNNI hosts: a MoE prompt's rounded Q6_K products (attention V) take the
    # multi-row product of one int8 term (row_terms), 1.4-1.5x the int16 form's speed and 1.9-2.2x the
    # float tiles' at 512 rows (MoE shape, tools/bench_kernels.py --rounded); the int16 form alone was
    # level with the tiles there and made the whole prompt slower (README, MoE speed)
    rows_prompt = SIMD_BEST == VNNI

    def extra_arrays(self, t, T, nb):
        return {"qh": np.zeros((T, nb * CRUMB), np.uint8),
                "sl": np.zeros((T, nb * ROW_TILE), np.int8), "sh": np.zeros((T, nb * ROW_TILE), np.int8)}

    def repack_rows(self, raw, t, A, r0, r1):
        repack_q6_k(raw, A["qt"], A["qh"], A["sl"], A["sh"], A["d"], r0, r1)

    @staticmethod
    def _arrays(p: Packed):
        return p.arrays["qt"], p.arrays["qh"], p.arrays["sl"], p.arrays["sh"], p.arrays["d"]

    def tile_kernel(self, p: Packed):
        return matvec_q6, self._arrays(p)

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        return self.rows_by_items(p, simd, self._rows_product(p, simd))

    def _rows_product(self, p: Packed, simd: int):
        a = self._arrays(p)
        return lambda act, tiles, r0, r1, yt, out: row_items_q6(*a, *act, tiles, r0, r1, yt, simd, out)

    # one int8 term (a prompt's rows, tiled.PROMPT_TERMS) where the VNNI combine takes it
    row_terms = (1, 2) if HOST_VNNI else (2,)

    def row_call_rows(self, terms: int) -> int:
        return q6_rows_most(SIMD_BEST == VNNI)

    def row_items(self, p: Packed, simd: int = SIMD_BEST):
        """The ROW_ITEMS product on AVX-512 VNNI hosts only: a batch's rows of one int8 term run at
        1.95-2.15x the float small-batch products called expert by expert (512 tokens of the MoE shape,
        1 thread, tools/bench_kernels.py --experts); the AVX2 form (integer sums stored, then a float
        loop) ran at 0.45-0.52x of the float product, so there a batch's Q6_K experts take that."""
        return self._rows_product(p, simd) if HOST_VNNI else None

    def row_activations(self, X: np.ndarray, terms: int = 2) -> tuple:
        """q6_row_activations: terms 2 the matvec's int16 rounding (one vpdpwssd per weight pair and
        row), 1 one int8 term (one vpdpbusd per 4 weights and row, row_terms)."""
        return q6_row_activations(X, terms)

    def decode(self, p: Packed, ids, out) -> None:
        decode_q6(*self._arrays(p), ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        qt, qh, sl, sh, d = self._arrays(p)
        decode_i8_T(qt[t0:t1], qh[t0:t1], block_scales(sl, d, t0, t1, 1), block_scales(sh, d, t0, t1, 1), 0, t1 - t0,
                    out)

    def small_kernel(self, p: Packed):
        return matmul_small_q6, self._arrays(p)


Q8 = register(ByteKind("q8", GGMLType.Q8_0))
Q6 = register(Q6Kind("q6", GGMLType.Q6_K))
