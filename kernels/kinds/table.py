"""Kinds ``t4`` and ``t4x``: 4-bit indices into a 16-entry value table (IQ4_NL, MXFP4; IQ4_XS).

Layout (nb = cols / 32 blocks, T = row tiles, R = ROW_TILE):

  qt  uint8  (T, nb*16*R)  the index nibbles as the file has them, laid out as the ``q4`` kind's
                           (``kinds.nibble.nibble_index``)
  d   f32 / f16 bits (T, nb*R)  the scale of each 32-weight block (MXFP4: its E8M0 exponent halved)

weight = d * table[q], with the type's table (``TABLES``).  Kind ``t4x`` (IQ4_XS) keeps qt and the
file's integer block scales instead of float ones (17.25 bytes per 32 weights instead of 20):

  sc  int8 (T, nb*R)       each block's 6-bit scale minus 32: weight = d * sc * table[q]
  d   f16 bits (T, nb/8*R) the scale of each 256 weights (index ``(b // 8) * R + l``)

Matvec: the activations' two int8 terms (``tiled``), per block ``acc += d (dx isum_q + dr isum_r)``
with the integer sums from ``table_isums``.  AVX2 form: per 32-byte load ``vpshufb`` looks the
values up, ``vpabsb`` / ``vpsignb`` move their signs onto the activations (``vpmaddubsw`` takes one
unsigned operand), and each int16 pair sum (at most 2 * 127 * 127) is widened by ``vpmaddwd`` at
once.  VNNI form: ``vpdpbusd`` sums in int32, so the values are looked up raised by 128 (unsigned:
no ``vpabsb`` / ``vpsignb``) and 128 times each block's sum of x is taken off the int32 sums.  ``emit_table_sums``
also serves the lattice kind's unsigned tables.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ..iquant_tables import kvalues_iq4nl, kvalues_mxfp4
from ..numerics import e8m0_half_to_f32, f16_at, u16_at
from ..simd import (HOST_AVX2, HOST_F16C, I8, I32, ISUM_ROWS, PORTABLE, SIMD_BEST, V8F32, V8I32, V32I8, VNNI, ByteSums,
                    by_row_group, byte_ptr, data_ptr, loader, out_ptr, prefetch_block, rows_call, scales8, sum_lanes,
                    x86)
from ..types import GGMLType
from . import Packed, register
from .nibble import isums_loop, isums_rows_loop, nibble_index
from .tiled import (BLOCK_CHUNK, FM, ROW_CHUNK, ROW_TILE, TiledKind, add_scaled, add_scaled_rows, block_scales, fma_rows, load_rows,
                    nonneg, round_activations, round_rows, row_offsets, row_step, scale, store_row_tiles,
                    share, shares, store_rows, store_tile, two_terms)

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic
_I15 = np.int32(15)
_I4 = np.int32(4)
_NO_BITS = np.zeros(0, np.uint32)             # no fifth bits
# The value table of each type.
TABLES = {GGMLType.IQ4_NL: kvalues_iq4nl, GGMLType.IQ4_XS: kvalues_iq4nl, GGMLType.MXFP4: kvalues_mxfp4}


# ---------------------------------------------------------------- repacker


@njit(cache=True, nogil=True)
def repack_t4(raw, ts, qt, d, r0, r1):
    """IQ4_NL (ts 18: d fp16, qs[16]) and MXFP4 (17: e8m0, qs[16]): the index nibbles as they are,
    and the scale of each 32-weight block."""
    nb = d.shape[1] // R
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for b in range(nb):
            o = ts * b
            d[t, b * R + l] = f16_at(src, o) if ts == 18 else e8m0_half_to_f32(src[o])
            for k in range(16):
                q[nibble_index(b, k, l)] = src[o + ts - 16 + k]


@njit(cache=True, nogil=True)
def repack_iq4_xs(raw, qt, sc, d, r0, r1):
    """IQ4_XS (136 bytes: d, scales_h, scales_l[4], qs[128] per 256 weights): the index nibbles as
    they are, each 32-weight block's 6-bit scale minus 32 (sc) and each 256's d."""
    nb = sc.shape[1] // R
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for b in range(nb):
            o = 136 * (b // 8)
            j = b % 8
            ls = ((np.int32(src[o + 4 + j // 2]) >> (4 * (j % 2))) & 15) | \
                (((np.int32(u16_at(src, o + 2)) >> (2 * j)) & 3) << 4)
            sc[t, b * R + l] = np.int8(ls - 32)
            if j == 0:
                d[t, (b // 8) * R + l] = f16_at(src, o)
            for k in range(16):
                q[nibble_index(b, k, l)] = src[o + 8 + 16 * j + k]


# ---------------------------------------------------------------- integer sums


def emit_table_sums(builder, qp, tp, xps, op, unsigned=False, halves=False, depth=1, vnni=False, rgs=None,
                    prefetch=True):
    """The IR of table_isums' AVX2 form (vnni: its VNNI form), and of table_isums16's (unsigned
    values: no vpabsb / vpsignb; halves: one sum per 16 weights; depth: AVX2's vpmaddubsw results
    summed as int16 into an accumulator before each widening vpmaddwd; 4 divides the 4 (halves)
    or 8 it gets), for the row groups rgs (groups of ``lanes`` weight rows; all by default) and
    any number of activation terms xps."""
    load = loader(builder)
    if prefetch:
        prefetch_block(builder, qp, 16 * ROW_TILE)
    tp = builder.bitcast(tp, I8.as_pointer())
    sums = ByteSums(builder, vnni, depth)
    lanes = sums.lanes                   # rows per load
    groups = ROW_TILE // lanes
    rgs = range(groups) if rgs is None else rgs
    pshufb = x86(builder, "llvm.x86.avx512.pshuf.b.512" if lanes == 16 else "llvm.x86.avx2.pshuf.b",
                 sums.bytes, sums.bytes, sums.bytes)
    psign = x86(builder, "llvm.x86.avx2.psign.b", V32I8, V32I8, V32I8)
    zero8 = sums.const(0)

    t16 = load(tp, 0, ir.VectorType(I8, 16))
    table = builder.shuffle_vector(t16, t16, ir.Constant(ir.VectorType(I32, 4 * lanes), list(range(16)) * (lanes // 4)))
    parts = 2 if halves else 1           # sums per term and row group: the two halves, or one
    # VNNI, signed values: vpdpbusd sums in int32, so the values raised by 128 (unsigned) need no
    # vpabsb / vpsignb; 128 times the block's sum of x (xsum: ones . x) is taken off at the end
    raised = sums.vnni and not unsigned
    assert not (raised and halves)
    if raised:
        table = builder.add(table, sums.const(-128))
        xsum = ByteSums(builder, True)
    for g in range(4):
        xs = [[sums.splat(load(xp, o + 4 * g, I32)) for o in (0, 16)] for xp in xps]
        if raised:
            for term in range(len(xps)):
                xsum.add(term, *((sums.const(1), x) for x in xs[term]))
        for rg in rgs:
            v = load(qp, (g * ROW_TILE + rg * lanes) * 4, sums.bytes)
            for half, nib in enumerate((builder.and_(v, sums.const(15)),
                                        builder.and_(builder.lshr(v, sums.const(4)), sums.const(15)))):
                w = pshufb(table, nib)                   # the int8 values (raised: plus 128, as uint8)
                a = (half if halves else 0) * groups + rg
                if unsigned or raised:
                    for term in range(len(xps)):
                        sums.add((term, a), (w, xs[term][half]))
                    continue
                neg = builder.icmp_signed("<", w, zero8)
                mag = builder.select(neg, builder.sub(zero8, w), w)      # |w| (vpabsb)
                for term in range(len(xps)):
                    sx = psign(xs[term][half], w)        # x with w's sign (0 where w = 0)
                    sums.add((term, a), (mag, sx))
    for term in range(len(xps)):
        off = builder.shl(xsum.total(term), ir.Constant(sums.vec, [7] * lanes)) if raised else None
        for a in range(parts * groups):
            if a % groups in rgs:
                sums.store(op, term * parts * groups + a, (term, a), minus=off)


def table_intrinsic(name, **mode):
    """An intrinsic (q, qo, tab, xq, xr, xo, out) of emit_table_sums in the given mode."""
    def isums(typingctx, q, qo, tab, xq, xr, xo, out):
        sig = types.void(q, qo, tab, xq, xr, xo, out)

        def codegen(context, builder, signature, args):
            q, qo, tab, xq, xr, xo, out = args
            aty = signature.args
            emit_table_sums(builder, byte_ptr(context, builder, aty[0], q, qo),
                             byte_ptr(context, builder, aty[2], tab, ir.Constant(qo.type, 0)),
                             [byte_ptr(context, builder, aty[3], xq, xo), byte_ptr(context, builder, aty[4], xr, xo)],
                             out_ptr(context, builder, aty[6], out), **mode)
            return context.get_dummy_value()

        return sig, codegen

    isums.__name__ = isums.__qualname__ = name
    return intrinsic(isums)


_table_isums_avx2 = table_intrinsic("_table_isums_avx2")
_table_isums_vnni = table_intrinsic("_table_isums_vnni", vnni=True)


def table_isums(q, qo, tab, xq, xr, xo, out, simd):
    """kinds.nibble.nibble_isums for 4-bit indices into a 16-entry int8 value table ``tab`` (IQ4_NL, IQ4_XS,
    MXFP4; values in -127..127): w(k, l) = tab[nibble].  Same tile layout and activation terms.
    AVX2 form: per 32-byte load ``vpshufb`` looks the values up, ``vpabsb`` / ``vpsignb`` move
    their signs onto the activations (``vpmaddubsw`` takes one unsigned operand), and each
    int16 pair sum (at most 2 * 127 * 127) is widened by ``vpmaddwd`` at once.
    (Callable from Numba code only.)"""
    raise NotImplementedError("table_isums runs inside Numba kernels")


@overload(table_isums, inline="always")
def _table_isums_impl(q, qo, tab, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, tab, xq, xr, xo, out, simd):
            isums_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, out)
        return portable

    def either(q, qo, tab, xq, xr, xo, out, simd):
        if simd == PORTABLE:
            isums_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, out)
        elif simd == VNNI:
            _table_isums_vnni(q, qo, tab, xq, xr, xo, out)
        else:
            _table_isums_avx2(q, qo, tab, xq, xr, xo, out)
    return either


_rows_avx2, _rows_vnni = (rows_call(f"_table_isums_{'vnni' if v else 'avx2'}_rows",
                                     by_row_group(emit_table_sums, ROW_TILE // sum_lanes(v), vnni=v))
                           for v in (False, True))


def table_isums_rows(q, qo, tab, xq, xr, xo, ldx, c, out, simd):
    """table_isums for c activation rows at once, as kinds.nibble.nibble_isums_rows takes them.
    (Callable from Numba code only.)"""
    raise NotImplementedError("table_isums_rows runs inside Numba kernels")


@overload(table_isums_rows, inline="always")
def _table_isums_rows_impl(q, qo, tab, xq, xr, xo, ldx, c, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, tab, xq, xr, xo, ldx, c, out, simd):
            isums_rows_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, ldx, c, out)
        return portable

    def either(q, qo, tab, xq, xr, xo, ldx, c, out, simd):
        if simd == PORTABLE:
            isums_rows_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, ldx, c, out)
        elif simd == VNNI:
            _rows_vnni(q, qo, tab, 0, xq, xr, xo, ldx, c, out)
        else:
            _rows_avx2(q, qo, tab, 0, xq, xr, xo, ldx, c, out)
    return either


# ---------------------------------------------------------------- matvec and exact decoder


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_tab(qt, d, tab, X, tiles, xrow, simd, y):
    """The table kind (IQ4_NL, IQ4_XS, MXFP4), tiled: qt (T, nb*16*R) uint8 nibble indices into
    tab (16,) int8, d (T, nb*R) per-block scales; w = d tab[q].  Activations in two int8 terms
    (kinds.tiled); the integer sums come from table_isums.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    xq, xr, dx, dr, _ = round_activations(X.reshape(-1))
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            o = xrow[it] * nb
            q = qt[t]
            dt = d[t]
            acc[:] = 0
            for b in range(nb):
                table_isums(q, b * 16 * R, tab, xq, xr, 32 * (o + b), isum, simd)
                dxb = dx[o + b]
                drb = dr[o + b]
                for l in range(R):
                    p = two_terms(isum, 0, l, dxb, drb)
                    acc[l] += scale(dt[nonneg(b * R + l)]) * p
            store_tile(acc, it, y)


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_tab_xs(qt, sc, d, tab, X, tiles, xrow, simd, y):
    """IQ4_XS tiled: qt as matvec_tab's; sc (T, nb*R) int8 each block's scale (the file's 6-bit
    scale minus 32), d (T, nb/8*R) each 256's; w = d sc tab[q].  Per 256 weights
    ``acc += d sum(sc p)``, as ggml sums an IQ4_XS block: the scales stay integers, so a block
    streams 17.25 bytes instead of 20 with float scales.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    xq, xr, dx, dr, _ = round_activations(X.reshape(-1))
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sum of sc * p
        isum = np.empty(2 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            o = xrow[it] * nb
            q = qt[t]
            sct = sc[t]
            dt = d[t]
            acc[:] = 0
            for s in range(nb // 8):
                aq[:] = 0
                for b in range(8 * s, 8 * s + 8):
                    table_isums(q, b * 16 * R, tab, xq, xr, 32 * (o + b), isum, simd)
                    dxb = dx[o + b]
                    drb = dr[o + b]
                    for l in range(R):
                        p = two_terms(isum, 0, l, dxb, drb)
                        aq[l] += f32(sct[nonneg(b * R + l)]) * p
                add_scaled(acc, dt, s, aq)
            store_tile(acc, it, y)


@njit(parallel=True, fastmath=FM, cache=True)
def matmul_rows_tab(qt, d, tab, X, simd, Y):
    """Y (n, rows) = X W^T for the table kind (arrays as matvec_tab's), each row of Y bit-identical
    to matvec_tab of that row alone, the values of each block looked up once per ISUM_ROWS rows."""
    n, cols = X.shape
    nb = cols // 32
    xq, xr, dx, dr, _ = round_rows(X)
    for t in prange(qt.shape[0]):
        q = qt[t]
        dt = d[t]
        acc = np.empty(ISUM_ROWS * R, np.float32)     # (rows, R lanes)
        isum = np.empty(2 * R * ISUM_ROWS, np.int32)
        i0 = 0
        while i0 < n:
            c = row_step(n - i0)
            acc[:] = 0
            for b in range(nb):
                table_isums_rows(q, b * 16 * R, tab, xq, xr, i0 * cols + 32 * b, cols, c, isum, simd)
                for r in range(c):
                    dxb = dx[i0 + r, b]
                    drb = dr[i0 + r, b]
                    a, o = row_offsets(r)
                    for l in range(R):
                        p = two_terms(isum, o, l, dxb, drb)
                        acc[a + l] += scale(dt[nonneg(b * R + l)]) * p
            store_row_tiles(acc, c, t, Y, i0)
            i0 += c


@njit(parallel=True, fastmath=FM, cache=True)
def matmul_rows_tab_xs(qt, sc, d, tab, X, simd, Y):
    """matmul_rows_tab for IQ4_XS (arrays as matvec_tab_xs's): each row of Y bit-identical to
    matvec_tab_xs of that row alone."""
    n, cols = X.shape
    nb = cols // 32
    xq, xr, dx, dr, _ = round_rows(X)
    for t in prange(qt.shape[0]):
        q = qt[t]
        sct = sc[t]
        dt = d[t]
        acc = np.empty(ISUM_ROWS * R, np.float32)     # (rows, R lanes)
        aq = np.empty(ISUM_ROWS * R, np.float32)      # one super-block's sum of sc * p per row
        isum = np.empty(2 * R * ISUM_ROWS, np.int32)
        i0 = 0
        while i0 < n:
            c = row_step(n - i0)
            acc[:] = 0
            for s in range(nb // 8):
                aq[:] = 0
                for b in range(8 * s, 8 * s + 8):
                    table_isums_rows(q, b * 16 * R, tab, xq, xr, i0 * cols + 32 * b, cols, c, isum, simd)
                    for r in range(c):
                        dxb = dx[i0 + r, b]
                        drb = dr[i0 + r, b]
                        a, o = row_offsets(r)
                        for l in range(R):
                            p = two_terms(isum, o, l, dxb, drb)
                            aq[a + l] += f32(sct[nonneg(b * R + l)]) * p
                add_scaled_rows(acc, dt, s, aq, c)
            store_row_tiles(acc, c, t, Y, i0)
            i0 += c


@njit(cache=True, inline="always")
def decode_tab_block(q, b, l, tab, db, o):
    """Block b of lane l of a tile (q = qt[t]) into o[32 b: 32 b + 32]: w = tab[q] db."""
    for k in range(16):
        v = np.int32(q[nibble_index(b, k, l)])
        o[32 * b + k] = f32(tab[v & _I15]) * db
        o[32 * b + 16 + k] = f32(tab[v >> _I4]) * db


@njit(nogil=True, cache=True)
def decode_tab(qt, d, tab, ids, out):
    """The table kind (see matvec_tab): w = tab[q] d, as ggml computes it."""
    nb = d.shape[1] // R
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(nb):
            decode_tab_block(qt[t], b, l, tab, scale(d[t, b * R + l]), out[i])


@njit(nogil=True, cache=True)
def decode_tab_xs(qt, sc, d, tab, ids, out):
    """IQ4_XS (see matvec_tab_xs): w = tab[q] (d sc), d sc exact in float32 as ggml's product is."""
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(sc.shape[1] // R):
            db = scale(d[t, (b // 8) * R + l]) * f32(sc[t, b * R + l])
            decode_tab_block(qt[t], b, l, tab, db, out[i])


@intrinsic
def _tab_block_T(typingctx, q, qo, tab, d, so, out, base, ldo):
    """Block b of one tile of the table kind into K-major output: q the tile's row of qt (qo = b * 16
    * R bytes), d its row of scales (so = b * R); weight k of lane l -> out[base + k * ldo + l] =
    tab[q] * d, decode_tab's value.  Per 32-byte load (bytes 4g..4g+3 of 8 rows) ``vpshufb`` looks
    both nibbles' values up, and each weight of the 8 rows is gathered by a byte shuffle, widened
    to float32 and multiplied by the rows' scales."""
    sig = types.void(q, qo, tab, d, so, out, base, ldo)

    def codegen(context, builder, signature, args):
        q, qo, tab, d, so, out, base, ldo = args
        aty = signature.args
        pshufb = x86(builder, "llvm.x86.avx2.pshuf.b", V32I8, V32I8, V32I8)
        load = loader(builder)
        qp = byte_ptr(context, builder, aty[0], q, qo)
        t16 = load(byte_ptr(context, builder, aty[2], tab, ir.Constant(qo.type, 0)), 0, ir.VectorType(I8, 16))
        table = builder.shuffle_vector(t16, t16, ir.Constant(ir.VectorType(I32, 32), list(range(16)) * 2))
        op = builder.gep(data_ptr(context, builder, aty[5], out, ir.FloatType()), [base])
        low4 = ir.Constant(V32I8, [15] * 32)
        four = ir.Constant(V32I8, [4] * 32)
        ds = scales8(context, builder, aty[3], d, so, ROW_TILE)
        for g in range(4):                        # bytes 4g..4g+3 of the block's 16
            for rg in range(ROW_TILE // 8):       # rows 8rg..8rg+7
                v = load(qp, (g * ROW_TILE + rg * 8) * 4, V32I8)
                for half, nib in enumerate((builder.and_(v, low4), builder.and_(builder.lshr(v, four), low4))):
                    w = pshufb(table, nib)
                    for j in range(4):            # weight 16 half + 4g + j of the 8 rows
                        b8 = builder.shuffle_vector(w, w, ir.Constant(ir.VectorType(I32, 8), [4 * i + j for i in range(8)]))
                        val = builder.fmul(builder.sitofp(builder.sext(b8, V8I32), V8F32), ds[rg])
                        row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, 16 * half + 4 * g + j)),
                                          ir.Constant(ldo.type, 8 * rg))
                        builder.store(val, builder.bitcast(builder.gep(op, [row]), V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def decode_tab_T(qt, d, tab, t0, t1, out):
    """Row tiles t0..t1-1 of the table kind -> out (cols, >= (t1 - t0) * R) float32, K-major,
    the values of decode_tab.  Serial and nogil (the matmul's workers call it per tile)."""
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            _tab_block_T(qt[t], b * 16 * R, tab, d[t], b * R, flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def matmul_small_tab(qt, d, tab, x, n, t0, t1, out):
    """out (n, rows) = X W^T on row tiles t0..t1-1 for X given block-major as x (Kind.small_matmul,
    tiled.small_product): each block decoded exactly (_tab_block_T) into a scratch block and applied
    to the rows of X (tiled.fma_rows)."""
    nb = x.size // (32 * n)
    wb = np.empty(32 * R, np.float32)               # (32 k, R lanes)
    for i0 in range(0, n, ROW_CHUNK):
        c = min(ROW_CHUNK, n - i0)
        for b0 in range(0, nb, BLOCK_CHUNK):
            for t in range(t0, t1):
                acc = load_rows(c, i0, t, out, b0)  # (c rows, R lanes)
                for b in range(b0, min(nb, b0 + BLOCK_CHUNK)):
                    _tab_block_T(qt[t], b * 16 * R, tab, d[t], b * R, wb, 0, R)
                    fma_rows(wb, x, 32 * (nb * i0 + c * b), 32, c, acc)
                store_rows(acc, c, i0, t, out)


@njit(nogil=True, cache=True)
def matmul_small_tab_xs(qt, sc, d, tab, x, n, t0, t1, out):
    """matmul_small_tab for IQ4_XS: each tile's int8 block scales made float (tiled.block_scales,
    cache-resident) before its blocks are decoded."""
    for t in range(t0, t1):
        matmul_small_tab(qt[t:t + 1], block_scales(sc, d, t, t + 1, 1), tab, x, n, 0, 1, out[:, t * R:])


# ---------------------------------------------------------------- the kind


class TableKind(TiledKind):
    """t4 (see the module docstring); types: each type's bytes per block."""
    name = "t4"
    types = {GGMLType.IQ4_NL: 18, GGMLType.MXFP4: 17}

    def __init__(self):
        if HOST_AVX2 and HOST_F16C:
            self.decode_T = self._decode_T
            self.small_matmul = self._small_matmul

    def repack_rows(self, raw, t, A, r0, r1):
        repack_t4(raw, self.types[t], A["qt"], A["d"], r0, r1)

    def tile_kernel(self, p: Packed):
        return matvec_tab, (p.arrays["qt"], p.arrays["d"], TABLES[p.qtype])

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        a = (p.arrays["qt"], p.arrays["d"], TABLES[p.qtype])
        return lambda X, out: matmul_rows_tab(*a, X, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_tab(p.arrays["qt"], p.arrays["d"], TABLES[p.qtype], ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        decode_tab_T(p.arrays["qt"], p.arrays["d"], TABLES[p.qtype], t0, t1, out)

    def small_kernel(self, p: Packed):
        return matmul_small_tab, (p.arrays["qt"], p.arrays["d"], TABLES[p.qtype])


class XSKind(TableKind):
    """t4x: IQ4_XS, the t4 layout with integer block scales (see the module docstring)."""
    name = "t4x"
    types = {GGMLType.IQ4_XS: 136}
    per256 = True

    def extra_arrays(self, t, T, nb):
        return {"sc": np.zeros((T, nb * ROW_TILE), np.int8)}

    def repack_rows(self, raw, t, A, r0, r1):
        repack_iq4_xs(raw, A["qt"], A["sc"], A["d"], r0, r1)

    def tile_kernel(self, p: Packed):
        return matvec_tab_xs, (p.arrays["qt"], p.arrays["sc"], p.arrays["d"], TABLES[p.qtype])

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST):
        a = (p.arrays["qt"], p.arrays["sc"], p.arrays["d"], TABLES[p.qtype])
        return lambda X, out: matmul_rows_tab_xs(*a, X, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_tab_xs(p.arrays["qt"], p.arrays["sc"], p.arrays["d"], TABLES[p.qtype], ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        A = p.arrays
        decode_tab_T(A["qt"][t0:t1], block_scales(A["sc"], A["d"], t0, t1, 1), TABLES[p.qtype], 0, t1 - t0, out)

    def small_kernel(self, p: Packed):
        return matmul_small_tab_xs, (p.arrays["qt"], p.arrays["sc"], p.arrays["d"], TABLES[p.qtype])


T4 = register(TableKind())
T4X = register(XSKind())
