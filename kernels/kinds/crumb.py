"""Kind ``q2``: 2-bit values with integer scales and mins per 16 weights (Q2_K, TQ2_0, TQ1_0; Q3_K with a third bit).

Layout (nb = cols / 32 blocks, ns = nb / 8 super-blocks of 256, T = row tiles, R = ROW_TILE):

  qt  uint8  (T, nb*8*R)   2-bit values: byte j of dword half (0, 1) of block b of lane l,
                           ``((b * 2 + half) * R + l) * 4 + j`` (``crumb_index``), holds weights
                           16 half + 4c + j as its bit pairs c = 0..3
  qb  uint32 (T, nb*R)     Q3_K's third bits: word ``(half * 4 + c) * (R // 8) + l // 8`` of block
                           b, bit ``(l % 8) * 4 + j`` (``third_bit_index``); the others (1, 0)
  sc  int8   (T, nb*2*R)   the integer scale of each 16 weights, index ``(b * 2 + half) * R + l``
  mn  int8   (T, nb*2*R)   the integer min of each 16 weights, indexed as sc
  d   f32 / f16 bits (T, ns*R)  the scale per 256-weight super-block
  dm  f32 / f16 bits (T, ns*R)  the scale of the mins per super-block

weight = d * sc * u - dm * mn for the unsigned value u; Q3_K (u = q + 4, mn = 4 sc, dm = d) and
TQ2_0 / TQ1_0 (u = q + 1, sc = mn = 1, dm = d) decode as ``(u - off) * (d * sc)``, as ggml does.

Matvec: the activations' two int8 terms (``tiled``), per super-block
``acc += d sum(sc_h p_h) - dm sum(mn_h xs_h)`` with the integer sums per 16 weights from
``crumb_isums``.  AVX2 form: per 32-byte load four shift-and-mask planes, each a ``vpmaddubsw``
with the 4 activations of its weights broadcast (VNNI form: a ``vpdpbusd``, summing in int32).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ..numerics import f16_at
from ..simd import HOST_AVX2, I32, PORTABLE, VNNI, ByteSums, loader, plane_intrinsic
from ..types import GGMLType
from . import Packed, register
from .tiled import FM, ROW_TILE, TiledKind, nonneg, round_activations, scale, share, shares, store_tile, sums16

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic


# ---------------------------------------------------------------- index helpers and repacker


@njit(cache=True, inline="always")
def crumb_index(b, k, l):
    """(byte, shift) of weight k (0..31) of block b of lane l in a ``q2`` tile."""
    return ((b * 2 + k // 16) * ROW_TILE + l) * 4 + k % 4, np.int32(2 * ((k % 16) // 4))


@njit(cache=True, inline="always")
def third_bit_index(b, k, l):
    """(word, bit) of the third bit of weight k (0..31) of block b of lane l in a ``q2`` tile's qb."""
    return (b * ROW_TILE + ((k // 16) * 4 + (k % 16) // 4) * (ROW_TILE // 8) + l // 8,
            np.uint32((l % 8) * 4 + k % 4))


@njit(cache=True, inline="always")
def _trit(src, o, w):
    """Base-3 digit (0..2) of weight w of the TQ1_0 block at src[o]."""
    if w < 160:
        byte, n = src[o + w % 32], w // 32
    elif w < 240:
        byte, n = src[o + 32 + (w - 160) % 16], (w - 160) // 16
    else:
        byte, n = src[o + 48 + (w - 240) % 4], (w - 240) // 4
    return (((np.int32(byte) * np.int32(3 ** n)) & 255) * 3) >> 8


@njit(cache=True, nogil=True)
def repack_q2(raw, ts, qt, qb, sc, mn, d, dm, r0, r1):
    """Q2_K (ts 84: scales[16], qs[64], d, dmin), Q3_K (110: hmask[32], qs[64], scales[12], d),
    TQ2_0 (66: qs[64], d) and TQ1_0 (54: base-3 digits qs[48] and qh[4], d; see kernels.ternary):
    block b8 = 4h + k of a super-block is bit pair k of bytes 32h..32h+31 of qs (Q3_K: plus bit
    4h + k of hmask byte l as the third bit)."""
    nb = sc.shape[1] // (2 * R)
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for i in range(nb // 8):
            o = ts * i
            if ts == 84:
                dd = f16_at(src, o + 80)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = f16_at(src, o + 82)
                qs = o + 16
            elif ts == 110:
                dd = f16_at(src, o + 108)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = dd
                qs = o + 32
            else:
                dd = f16_at(src, o + ts - 2)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = dd
                qs = o
            for b8 in range(8):
                hh = b8 // 4
                kk = b8 % 4
                b = 8 * i + b8
                for half in range(2):
                    s16 = 8 * hh + 2 * kk + half          # the 16-weight sub-block
                    j = (b * 2 + half) * R + l
                    if ts == 84:
                        sc[t, j] = src[o + s16] & 15
                        mn[t, j] = src[o + s16] >> 4
                    elif ts == 110:
                        g = s16 >> 2
                        low = (np.int32(src[o + 96 + (s16 & 3) + 4 * (g & 1)]) >> (4 * (g >> 1))) & 15
                        high = (np.int32(src[o + 104 + (s16 & 3)]) >> (2 * g)) & 3
                        sc[t, j] = (low | (high << 4)) - 32
                        mn[t, j] = 4 * ((low | (high << 4)) - 32)
                    else:
                        sc[t, j] = 1
                        mn[t, j] = 1
                for k in range(32):
                    if ts == 54:
                        u = _trit(src, o, 32 * b8 + k)
                    else:
                        u = (np.int32(src[qs + 32 * hh + k]) >> (2 * kk)) & 3
                    byte, shift = crumb_index(b, k, l)
                    q[byte] |= np.uint8(u << shift)
                    if ts == 110 and (src[o + k] >> b8) & 1:
                        w, bit = third_bit_index(b, k, l)
                        qb[t, w] |= np.uint32(1) << bit


# ---------------------------------------------------------------- integer sums


def _emit_crumb_sums(builder, qp, hp, xps, op, three, vnni):
    """The IR of crumb_isums' AVX2 form, or with vnni its VNNI form (see its docstring)."""
    load = loader(builder)
    for g in range(2):                   # weights 16g..16g+15: one int32 sum per term
        # AVX2: int16 sums over the 4 crumb planes: at most 4 * 2 * 7 * 127 < 2^15
        sums = ByteSums(builder, vnni, depth=4)
        lanes = sums.lanes               # rows per load
        groups = ROW_TILE // lanes
        for c in range(4):               # crumb c of each byte: weights 16g + 4c + j
            xs = [sums.splat(load(xp, 16 * g + 4 * c, I32)) for xp in xps]
            for rg in range(groups):
                v = load(qp, (g * ROW_TILE + rg * lanes) * 4, sums.bytes)
                u = builder.and_(builder.lshr(v, sums.const(2 * c)) if c else v, sums.const(3))
                if three:                # the word of each 8 rows: (g * 4 + c) R / 8 + 8-row group
                    w = [(g * 4 + c) * (ROW_TILE // 8) + rg * lanes // 8 + i for i in range(lanes // 8)]
                    u = builder.or_(u, sums.spread([load(hp, j, I32) for j in w], 4))
                for term, x in enumerate(xs):
                    sums.add((term, rg), (u, x))
        for term in range(len(xps)):
            for rg in range(groups):
                sums.store(op, (term * 2 + g) * groups + rg, (term, rg))


_crumb2_isums_avx2 = plane_intrinsic("_crumb2_isums_avx2", lambda b, *p: _emit_crumb_sums(b, *p, three=False, vnni=False))
_crumb3_isums_avx2 = plane_intrinsic("_crumb3_isums_avx2", lambda b, *p: _emit_crumb_sums(b, *p, three=True, vnni=False))
_crumb2_isums_vnni = plane_intrinsic("_crumb2_isums_vnni", lambda b, *p: _emit_crumb_sums(b, *p, three=False, vnni=True))
_crumb3_isums_vnni = plane_intrinsic("_crumb3_isums_vnni", lambda b, *p: _emit_crumb_sums(b, *p, three=True, vnni=True))


@njit(cache=True, inline="always")
def _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out):
    """The portable form of crumb_isums."""
    for g in range(2):
        for l in range(R):
            s = np.int32(0)
            r = np.int32(0)
            for c in range(4):
                for j in range(4):
                    u = (np.int32(q[qo + (g * R + l) * 4 + j]) >> np.int32(2 * c)) & np.int32(3)
                    if three:
                        w = ho + (g * 4 + c) * (R // 8) + l // 8
                        u |= np.int32((h[w] >> np.uint32((l % 8) * 4 + j)) & np.uint32(1)) << np.int32(2)
                    i = xo + 16 * g + 4 * c + j
                    s += np.int32(u * np.int32(xq[i]))
                    r += np.int32(u * np.int32(xr[i]))
            out[g * R + l] = s
            out[(2 + g) * R + l] = r


def crumb_isums(q, qo, h, ho, three, xq, xr, xo, out, simd):
    """For one 32-weight block of each of the ROW_TILE rows of a tile of 2-bit weights (plus a third
    bit from ``h`` when ``three``; values 0..7) and the two int8 activation terms of nibble_isums:
    out[(term * 2 + half) * 32 + l] = sum over weights 16 half .. 16 half + 15 of row l of w * x_term,
    exact in int32.  Layout (the module docstring): 256 bytes from ``q[qo]``; byte j of dword
    half of row l, ``q[qo + ((half * 32) + l) * 4 + j]``, holds weights 16 half + 4c + j as its bit
    pairs c = 0..3; the third bits: 32 words from ``h[ho]``, word ``(half * 4 + c) * 4 + l // 8``,
    bit ``(l % 8) * 4 + j``.  AVX2 form: per 32-byte load four shift-and-mask planes, each a
    ``vpmaddubsw`` with the 4 activations of its weights broadcast.  (Callable from Numba code only.)"""
    raise NotImplementedError("crumb_isums runs inside Numba kernels")


@overload(crumb_isums, inline="always")
def _crumb_isums_impl(q, qo, h, ho, three, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, three, xq, xr, xo, out, simd):
            _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out)
        return portable

    def either(q, qo, h, ho, three, xq, xr, xo, out, simd):
        if simd == PORTABLE:
            _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out)
        elif simd == VNNI and three:
            _crumb3_isums_vnni(q, qo, h, ho, xq, xr, xo, out)
        elif simd == VNNI:
            _crumb2_isums_vnni(q, qo, h, ho, xq, xr, xo, out)
        elif three:
            _crumb3_isums_avx2(q, qo, h, ho, xq, xr, xo, out)
        else:
            _crumb2_isums_avx2(q, qo, h, ho, xq, xr, xo, out)
    return either


# ---------------------------------------------------------------- matvec and exact decoder


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_crumb(qt, qb, sc, mn, d, dm, X, tiles, xrow, simd, y):
    """The 2-bit kind (Q2_K, Q3_K with its third bits qb, TQ2_0, TQ1_0), tiled: w = d sc u - dm mn per
    16 weights (see the module docstring); y (rows,) f32.  Activations in two int8 terms
    (kinds.tiled); the integer sums per 16 weights come from crumb_isums.
    Items: row tiles times rows of X (kinds.tiled.TILE_ITEMS)."""
    nb = X.shape[1] // 32
    three = qb.shape[1] > 0
    xq, xr, dx, dr, _ = round_activations(X.reshape(-1))
    sq16, sr16 = sums16(xq, xr)
    xs16 = np.empty(sq16.size, np.float32)  # sums of the rounded x over each 16
    for h in range(sq16.size):
        xs16[h] = dx[h // 2] * f32(sq16[h]) + dr[h // 2] * f32(sr16[h])
    parts = shares(tiles.size)
    for c in prange(parts):
        acc = np.empty(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sums of sc * (q . x)
        am = np.empty(R, np.float32)        # and of mn * (sums of x)
        isum = np.empty(4 * R, np.int32)
        it0, it1 = share(tiles.size, c, parts)
        for it in range(it0, it1):
            t = tiles[it]
            o = xrow[it] * nb
            q = qt[t]
            h = qb[t % qb.shape[0]]
            sct = sc[t]
            mnt = mn[t]
            dt = d[t]
            dmt = dm[t]
            acc[:] = 0
            for s in range(nb // 8):
                aq[:] = 0
                am[:] = 0
                for b in range(8 * s, 8 * s + 8):
                    crumb_isums(q, b * 8 * R, h, b * R, three, xq, xr, 32 * (o + b), isum, simd)
                    dxb = dx[o + b]
                    drb = dr[o + b]
                    x0 = xs16[2 * (o + b)]
                    x1 = xs16[2 * (o + b) + 1]
                    for l in range(R):
                        p0 = f32(isum[l]) * dxb + f32(isum[2 * R + l]) * drb
                        p1 = f32(isum[R + l]) * dxb + f32(isum[3 * R + l]) * drb
                        i0 = nonneg(2 * b * R + l)
                        i1 = i0 + nonneg(R)
                        aq[l] += f32(sct[i0]) * p0 + f32(sct[i1]) * p1
                        am[l] += f32(mnt[i0]) * x0 + f32(mnt[i1]) * x1
                for l in range(R):
                    j = nonneg(s * R + l)
                    acc[l] += scale(dt[j]) * aq[l] - scale(dmt[j]) * am[l]
            store_tile(acc, it, y)


@njit(nogil=True, cache=True)
def decode_crumb(qt, qb, sc, mn, d, dm, off, ids, out):
    """The 2-bit kind (see matvec_crumb) as ggml computes it: off = 0 (Q2_K): w = u (d sc) - dm mn;
    off = 4 (Q3_K), 1 (TQ2_0, TQ1_0): w = (u - off) (d sc)."""
    nb = sc.shape[1] // (2 * R)
    three = qb.shape[1] > 0
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        q, o = qt[t], out[i]
        for b in range(nb):
            ds = scale(d[t, (b // 8) * R + l])
            dms = scale(dm[t, (b // 8) * R + l])
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
                            w, bit = third_bit_index(b, k, l)
                            u |= np.int32((qb[t, w] >> bit) & np.uint32(1)) << np.int32(2)
                        if off == 0:
                            o[32 * b + k] = f32(u) * dl - ml
                        else:
                            o[32 * b + k] = f32(u - off) * dl


# ---------------------------------------------------------------- the kind


@dataclass(frozen=True)
class Crumbs:
    """How a GGML type repacks into q2: its bytes per 256 weights (which tell the repacker its
    layout) and off, the value its unsigned 2- or 3-bit u is decoded less by (0: Q2_K's mins)."""
    block_bytes: int
    off: int


class CrumbKind(TiledKind):
    """q2 (see the module docstring)."""
    name = "q2"
    qbytes = 8
    scales = ("d", "dm")
    per256 = True
    bits = ("qb", third_bit_index)
    types = {GGMLType.Q2_K: Crumbs(84, 0), GGMLType.Q3_K: Crumbs(110, 4), GGMLType.TQ2_0: Crumbs(66, 1),
             GGMLType.TQ1_0: Crumbs(54, 1)}

    def has_bits(self, t) -> bool:
        return t == GGMLType.Q3_K

    def extra_arrays(self, t, T, nb):
        return {"sc": np.zeros((T, 2 * nb * ROW_TILE), np.int8), "mn": np.zeros((T, 2 * nb * ROW_TILE), np.int8)}

    def repack_rows(self, raw, t, A, r0, r1):
        repack_q2(raw, self.types[t].block_bytes, A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"], r0, r1)

    def tile_kernel(self, p: Packed):
        A = p.arrays
        return matvec_crumb, (A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"])

    def decode(self, p: Packed, ids, out) -> None:
        A = p.arrays
        decode_crumb(A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"], np.int32(self.types[p.qtype].off), ids, out)


Q2 = register(CrumbKind())

