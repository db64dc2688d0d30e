"""Kind ``t4s``: the lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) as 4-bit codes.

Layout (nb = cols / 32 blocks, ns = nb / 8 super-blocks of 256, T = row tiles, R = ROW_TILE):

  qt  uint8  (T, nb*16*R)  4-bit codes into the type's table of signed values (``TABLES``: a grid
                           magnitude's index plus 8 for a negative sign; IQ1: grid value + 1 plus
                           8 for the negative shift), laid out as the ``q4`` kind's nibbles, so no
                           grid lookup is left for the kernel
  sc  int8   (T, nb*2*R)   the odd sub-scale 2s+1 of each 16 weights (index as ``q2``'s)
  d   f32 / f16 bits (T, ns*R)  per 256 weights: the file's scale times the type's factor (IQ2,
                           IQ1: 1/8; IQ3_XXS: 1/4; IQ3_S: 1)

weight = d * sc * table[code], exactly ggml's value.  4.6 bits per weight against the file's
1.6-3.4: the price of decoding by one byte shuffle instead of table gathers.

Matvec: the activations' two int8 terms (``tiled``), per super-block ``acc += d sum(sc_h p_h)``,
the integer sums from ``table_isums16`` on the table raised to unsigned values (``LATTICE``), the
offset times the sums of x taken off again, exactly, in int32.  AVX2 form: ``vpshufb`` looks the
values up and ``vpmaddubsw`` takes them as they are (no ``vpabsb`` / ``vpsignb``); narrow tables
(every raised value at most 31) sum four ``vpmaddubsw`` results as int16 (at most 4 * 2 * 31 * 127)
before widening them, the others widen each at once (at most 2 * 127 * 127); VNNI form: a
``vpdpbusd`` per ``vpmaddubsw``, summing in int32.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..iquant_tables import (iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8, iq3s_grid_u8, iq3xxs_grid_u8,
                             ksigns_iq2xs)
from ..numerics import f16_at, f16_bits_to_f32, u16_at, u32_at
from ..simd import HOST_AVX2, PORTABLE, VNNI
from ..types import GGMLType
from . import Packed, register
from .nibble import nibble_index
from .table import table_intrinsic
from .tiled import FM, ROW_TILE, TiledKind, nonneg, round_activations, scale, share, shares, store_tile, sums16

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic
_I15 = np.int32(15)
_I4 = np.int32(4)


def _signed(mags) -> np.ndarray:
    """A lattice table: codes 0-7 the magnitudes, codes 8-15 their negatives (unused codes 0)."""
    pad = [0] * (8 - len(mags))
    return np.array(list(mags) + pad + [-m for m in mags] + pad, np.int8)


# The table per type (code = magnitude index + 8 for a negative sign, the grids' magnitudes in
# order; IQ1: 8 (g + delta) for code g + 1 (shift delta +1/8) or g + 9 (-1/8)).
_T_IQ2, _T_IQ3XXS, _T_IQ3S = _signed([8, 25, 43]), _signed([4, 12, 20, 28, 36, 44, 52, 62]), _signed(range(1, 16, 2))
_T_IQ1 = np.array([-7, 1, 9, 0, 0, 0, 0, 0, -9, -1, 7, 0, 0, 0, 0, 0], np.int8)
TABLES = {GGMLType.IQ2_XXS: _T_IQ2, GGMLType.IQ2_XS: _T_IQ2, GGMLType.IQ2_S: _T_IQ2,
          GGMLType.IQ3_XXS: _T_IQ3XXS, GGMLType.IQ3_S: _T_IQ3S, GGMLType.IQ1_S: _T_IQ1, GGMLType.IQ1_M: _T_IQ1}
# The matvec's view of each table (matvec_tab16): (the values plus the offset
# that makes them non-negative, as uint8; that offset; scales per 16 weights rather than per 32;
# every raised value at most 31).
LATTICE = {t: ((TABLES[t].astype(np.int32) + off).astype(np.uint8), off, per16, off <= 15)
           for t, off, per16 in ((GGMLType.IQ1_S, 9, False), (GGMLType.IQ1_M, 9, True),
                                 (GGMLType.IQ2_XXS, 43, False), (GGMLType.IQ2_XS, 43, True),
                                 (GGMLType.IQ2_S, 43, True), (GGMLType.IQ3_XXS, 62, False),
                                 (GGMLType.IQ3_S, 15, False))}
# Each grid entry as the codes of its magnitudes (rows of 8, or 4 for IQ3): a magnitude m is the
# table entry m // 16 (IQ2), m // 8 (IQ3_XXS), m // 2 (IQ3_S); IQ1: g + 1.
_C_IQ2XXS, _C_IQ2XS, _C_IQ2S = (np.ascontiguousarray(g // 16) for g in (iq2xxs_grid_u8, iq2xs_grid_u8, iq2s_grid_u8))
_C_IQ3XXS, _C_IQ3S = np.ascontiguousarray(iq3xxs_grid_u8 // 8), np.ascontiguousarray(iq3s_grid_u8 // 2)
_C_IQ1 = np.ascontiguousarray((iq1s_grid_i8 + 1).astype(np.uint8))


# ---------------------------------------------------------------- repacker


@njit(cache=True, inline="always")
def _signed_codes(c, w, codes, signs):
    """Weights w.. of a lattice block: grid codes (len(codes) of them) with sign bits j -> +8."""
    for j in range(codes.size):
        c[w + j] = codes[j] | (((np.int32(signs) >> j) & 1) << 3)


@njit(cache=True, nogil=True)
def _lattice_block(src, o, ts, c, s16):
    """The 256-weight lattice block at src[o] (its type told by ts, its size in bytes) -> codes c
    (256,) into the type's TABLES entry, odd sub-scales s16 (16,) (2 s + 1, one per 16 weights)
    and the returned super-block scale: weight = scale * s16 * TABLES[c], exactly ggml's value."""
    for ib in range(8):
        w = 32 * ib
        if ts == 66:                                    # IQ2_XXS
            qo = o + 2 + 8 * ib
            aux = np.int32(u32_at(src, qo + 4))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((aux >> 28) & 15) + 1
            for l in range(4):
                _signed_codes(c, w + 8 * l, _C_IQ2XXS[src[qo + l]], ksigns_iq2xs[(aux >> (7 * l)) & 127])
        elif ts == 74:                                  # IQ2_XS
            sc = np.int32(src[o + 66 + ib])
            s16[2 * ib] = 2 * (sc & 15) + 1
            s16[2 * ib + 1] = 2 * (sc >> 4) + 1
            for l in range(4):
                q = np.int32(u16_at(src, o + 2 + 2 * (4 * ib + l)))
                _signed_codes(c, w + 8 * l, _C_IQ2XS[q & 511], ksigns_iq2xs[q >> 9])
        elif ts == 82:                                  # IQ2_S
            sc = np.int32(src[o + 74 + ib])
            s16[2 * ib] = 2 * (sc & 15) + 1
            s16[2 * ib + 1] = 2 * (sc >> 4) + 1
            qh = np.int32(src[o + 66 + ib])
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                _signed_codes(c, w + 8 * l, _C_IQ2S[idx], src[o + 34 + 4 * ib + l])
        elif ts == 98:                                  # IQ3_XXS
            aux = np.int32(u32_at(src, o + 66 + 4 * ib))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((aux >> 28) & 15) + 1
            qo = o + 2 + 8 * ib
            for l in range(4):
                signs = np.int32(ksigns_iq2xs[(aux >> (7 * l)) & 127])
                _signed_codes(c, w + 8 * l, _C_IQ3XXS[src[qo + 2 * l]], signs)
                _signed_codes(c, w + 8 * l + 4, _C_IQ3XXS[src[qo + 2 * l + 1]], signs >> 4)
        elif ts == 110:                                 # IQ3_S
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((np.int32(src[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1
            qh = np.int32(src[o + 66 + ib])
            qo = o + 2 + 8 * ib
            for l in range(4):
                signs = np.int32(src[o + 74 + 4 * ib + l])
                i1 = np.int32(src[qo + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                i2 = np.int32(src[qo + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                _signed_codes(c, w + 8 * l, _C_IQ3S[i1], signs)
                _signed_codes(c, w + 8 * l + 4, _C_IQ3S[i2], signs >> 4)
        elif ts == 50:                                  # IQ1_S: the sign bit is the shift's
            qh = np.int32(u16_at(src, o + 34 + 2 * ib))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((qh >> 12) & 7) + 1
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                _signed_codes(c, w + 8 * l, _C_IQ1[idx], -((qh >> 15) & 1))
        else:                                           # IQ1_M (56)
            sc = np.int32(u16_at(src, o + 48 + 2 * (ib // 2)))
            sh = 6 * (ib % 2)
            s16[2 * ib] = 2 * ((sc >> sh) & 7) + 1
            s16[2 * ib + 1] = 2 * ((sc >> (sh + 3)) & 7) + 1
            for l in range(4):
                qh = np.int32(src[o + 32 + 2 * ib + l // 2]) >> (4 * (l % 2))
                idx = np.int32(src[o + 4 * ib + l]) | ((qh & 7) << 8)
                _signed_codes(c, w + 8 * l, _C_IQ1[idx], -((qh >> 3) & 1))
    if ts == 56:
        s0, s1 = u16_at(src, o + 48), u16_at(src, o + 50)
        s2, s3 = u16_at(src, o + 52), u16_at(src, o + 54)
        return f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)) * np.float32(0.125)
    return f16_at(src, o) * np.float32(1.0 if ts == 110 else 0.25 if ts == 98 else 0.125)


@njit(cache=True, nogil=True)
def repack_t4s(raw, ts, qt, sc, d, r0, r1):
    """The lattice i-quants (ts: bytes per 256 weights, see _lattice_block): 4-bit codes, the
    sub-scales per 16 weights and the scale per 256."""
    ns = d.shape[1] // R
    c = np.empty(256, np.uint8)
    s16 = np.empty(16, np.int32)
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for i in range(ns):
            d[t, i * R + l] = _lattice_block(src, ts * i, ts, c, s16)
            for j in range(8):
                b = 8 * i + j
                sc[t, 2 * b * R + l] = s16[2 * j]
                sc[t, (2 * b + 1) * R + l] = s16[2 * j + 1]
                for k in range(16):
                    q[nibble_index(b, k, l)] = c[32 * j + k] | (c[32 * j + 16 + k] << 4)


# ---------------------------------------------------------------- integer sums


_lattice_wide32_avx2 = table_intrinsic("_lattice_wide32_avx2", unsigned=True)
_lattice_wide16_avx2 = table_intrinsic("_lattice_wide16_avx2", unsigned=True, halves=True)
_lattice_narrow32_avx2 = table_intrinsic("_lattice_narrow32_avx2", unsigned=True, depth=4)
_lattice_narrow16_avx2 = table_intrinsic("_lattice_narrow16_avx2", unsigned=True, halves=True, depth=4)
_lattice_wide32_vnni = table_intrinsic("_lattice_wide32_vnni", unsigned=True, vnni=True)
_lattice_wide16_vnni = table_intrinsic("_lattice_wide16_vnni", unsigned=True, halves=True, vnni=True)
_lattice_narrow32_vnni = table_intrinsic("_lattice_narrow32_vnni", unsigned=True, depth=4, vnni=True)
_lattice_narrow16_vnni = table_intrinsic("_lattice_narrow16_vnni", unsigned=True, halves=True, depth=4, vnni=True)


def table_isums16(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
    """table_isums for the unsigned tables of the lattice i-quants (repack kind ``t4s``: their
    values plus an offset, 0..127) with the sums per 16 weights when ``halves`` (their scales
    are per 16): out[(term * 2 + half) * 32 + l] sums the low nibbles (weights 0-15, half 0) or
    the high nibbles (weights 16-31, half 1) of row l times x_term; else out[term * 32 + l] sums
    all 32.  Exact in int32.  ``narrow``: every value is at most 31.  AVX2 form: ``vpshufb`` looks
    the values up and ``vpmaddubsw`` takes them as they are (no ``vpabsb`` / ``vpsignb``: 17 vector
    instructions per 64 weights and both terms, against 23 for table_isums); narrow tables sum
    four ``vpmaddubsw`` results as int16 (at most 4 * 2 * 31 * 127) before widening them (about
    13 instructions), the others widen each at once (at most 2 * 127 * 127).  (Callable from
    Numba code only.)"""
    raise NotImplementedError("table_isums16 runs inside Numba kernels")


@njit(cache=True, inline="always")
def _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out):
    """The portable form of table_isums16."""
    for l in range(R):
        s0 = np.int32(0)
        s1 = np.int32(0)
        r0 = np.int32(0)
        r1 = np.int32(0)
        for g in range(4):
            for j in range(4):
                v = np.int32(q[qo + (g * R + l) * 4 + j])
                lo = np.int32(tab[v & np.int32(15)])
                hi = np.int32(tab[v >> np.int32(4)])
                i = xo + 4 * g + j
                s0 += lo * np.int32(xq[i])
                s1 += hi * np.int32(xq[i + 16])
                r0 += lo * np.int32(xr[i])
                r1 += hi * np.int32(xr[i + 16])
        if halves:
            out[l] = s0
            out[R + l] = s1
            out[2 * R + l] = r0
            out[3 * R + l] = r1
        else:
            out[l] = s0 + s1
            out[R + l] = r0 + r1


@overload(table_isums16, inline="always")
def _table_isums16_impl(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
            _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out)
        return portable

    def either(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
        if simd == PORTABLE:
            _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out)
        elif simd == VNNI and narrow and halves:
            _lattice_narrow16_vnni(q, qo, tab, xq, xr, xo, out)
        elif simd == VNNI and narrow:
            _lattice_narrow32_vnni(q, qo, tab, xq, xr, xo, out)
        elif simd == VNNI and halves:
            _lattice_wide16_vnni(q, qo, tab, xq, xr, xo, out)
        elif simd == VNNI:
            _lattice_wide32_vnni(q, qo, tab, xq, xr, xo, out)
        elif narrow and halves:
            _lattice_narrow16_avx2(q, qo, tab, xq, xr, xo, out)
        elif narrow:
            _lattice_narrow32_avx2(q, qo, tab, xq, xr, xo, out)
        elif halves:
            _lattice_wide16_avx2(q, qo, tab, xq, xr, xo, out)
        else:
            _lattice_wide32_avx2(q, qo, tab, xq, xr, xo, out)
    return either


# ---------------------------------------------------------------- matvec and exact decoder


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_tab16(qt, sc, d, utab, off, halves, narrow, X, tiles, xrow, simd, y):
    """The lattice table kind (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S), tiled: qt as
    matvec_tab's, sc (T, nb*2*R) int8 scales per 16 weights, d (T, nb/8*R) per 256; w = d sc tab[q]
    (see the module docstring).  utab = tab + off >= 0 and the flags are LATTICE's
    (halves: the two 16s of a block have their own scales).  Activations in two int8 terms
    (kinds.tiled); the integer sums come from table_isums16 on utab, and off times the sums of x is taken off
    again, exactly, in int32; per super-block ``acc += d sum(sc_h p_h)`` as in matvec_crumb.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    xq, xr, dx, dr, _ = round_activations(X.reshape(-1))
    sq16, sr16 = sums16(xq, xr)
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sums of sc * (q . x)
        isum = np.empty(4 * R, np.int32)
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
                    table_isums16(q, b * 16 * R, utab, halves, narrow, xq, xr, 32 * (o + b), isum, simd)
                    dxb = dx[o + b]
                    drb = dr[o + b]
                    q0 = np.int32(off * sq16[2 * (o + b)])        # the offset's share of the sums
                    q1 = np.int32(off * sq16[2 * (o + b) + 1])
                    r0 = np.int32(off * sr16[2 * (o + b)])
                    r1 = np.int32(off * sr16[2 * (o + b) + 1])
                    if halves:
                        for l in range(R):
                            p0 = f32(np.int32(isum[l] - q0)) * dxb + f32(np.int32(isum[2 * R + l] - r0)) * drb
                            p1 = f32(np.int32(isum[R + l] - q1)) * dxb + f32(np.int32(isum[3 * R + l] - r1)) * drb
                            i0 = nonneg(2 * b * R + l)
                            aq[l] += f32(sct[i0]) * p0 + f32(sct[i0 + nonneg(R)]) * p1
                    else:
                        qb = np.int32(q0 + q1)
                        rb = np.int32(r0 + r1)
                        for l in range(R):
                            p = f32(np.int32(isum[l] - qb)) * dxb + f32(np.int32(isum[R + l] - rb)) * drb
                            aq[l] += f32(sct[nonneg(2 * b * R + l)]) * p
                for l in range(R):
                    acc[l] += scale(dt[nonneg(s * R + l)]) * aq[l]
            store_tile(acc, it, y)


@njit(nogil=True, cache=True)
def decode_tab16(qt, sc, d, tab, ids, out):
    """The lattice table kind (see matvec_tab16): w = (d sc) tab[q], exact (every product of the
    scale and a table value fits float32's mantissa), so equal to ggml's."""
    nb = sc.shape[1] // (2 * R)
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        q, o = qt[t], out[i]
        for b in range(nb):
            ds = scale(d[t, (b // 8) * R + l])
            d0 = ds * f32(sc[t, 2 * b * R + l])
            d1 = ds * f32(sc[t, (2 * b + 1) * R + l])
            for k in range(16):
                v = np.int32(q[nibble_index(b, k, l)])
                o[32 * b + k] = f32(tab[v & _I15]) * d0
                o[32 * b + 16 + k] = f32(tab[v >> _I4]) * d1


# ---------------------------------------------------------------- the kind


class LatticeKind(TiledKind):
    """t4s (see the module docstring); types: each type's bytes per 256 weights (its layout for
    the repacker)."""
    name = "t4s"
    per256 = True
    types = {GGMLType.IQ1_S: 50, GGMLType.IQ1_M: 56, GGMLType.IQ2_XXS: 66, GGMLType.IQ2_XS: 74, GGMLType.IQ2_S: 82,
             GGMLType.IQ3_XXS: 98, GGMLType.IQ3_S: 110}

    def extra_arrays(self, t, T, nb):
        return {"sc": np.zeros((T, 2 * nb * ROW_TILE), np.int8)}

    def repack_rows(self, raw, t, A, r0, r1):
        repack_t4s(raw, self.types[t], A["qt"], A["sc"], A["d"], r0, r1)

    def tile_kernel(self, p: Packed):
        return matvec_tab16, (p.arrays["qt"], p.arrays["sc"], p.arrays["d"], *LATTICE[p.qtype])

    def decode(self, p: Packed, ids, out) -> None:
        decode_tab16(p.arrays["qt"], p.arrays["sc"], p.arrays["d"], TABLES[p.qtype], ids, out)


T4S = register(LatticeKind())

