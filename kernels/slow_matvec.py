"""Fused matvec y = W x for the types without a repacked layout, straight from the GGML bytes.

These float kernels are the portable form; on AVX2 hosts ``slow_matvec`` runs the integer
kernels of lattice_isums.py instead (1.5-2x faster, on activations rounded to two int8 terms).

Types: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (the k-quants, the ternary types,
IQ4_NL, IQ4_XS and MXFP4 have repacked layouts, see repack.py).  ``slow_matvec(raw, qtype, x, y)``
with raw (rows, row_bytes) uint8 (the tensor's own bytes, untouched: no repack, no extra
memory), x (cols,) float32, y (rows,) float32.

Parallel over rows (``prange`` over row chunks, each with its own small scratch arrays); each
row is a loop over its 256-weight blocks.  Written for LLVM's loop vectorizer (Numba does not
run the SLP vectorizer, so only loops vectorize, and only loops LLVM does not fully unroll: the
inner trip counts are derived from an argument, ``n8`` = 8, instead of written as constants):

* Every weight is d * (2 s + 1) * grid * sign (IQ1: plus a
  shift delta) up to a power of two.  A scalar pass per block copies one 8-lane grid word and one
  8-lane signed-scale word per 8 weights (tables built once at import); the dot then runs over
  256 contiguous int8 lanes (no branch on signs, no float decode).

Arithmetic: integer lane products (exact), float32 sums with ``fastmath`` (FMA, reassociated).
Each row is computed by one thread in a fixed order, so results do not depend on the thread
count.  Error bound (the tests use it): ``|y - W x| <= 1e-5 * sum_j |w_j x_j|`` with W the exact
dequantization (kquants/iquants/ternary decoders, which stay the bit-exact reference) and W x
in float64.

Each kernel is compiled (and cached) the first time its type is used.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .floats import f16_at, f16_bits_to_f32, u16_at, u32_at
from .iquant_tables import (IQ1S_DELTA, iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8,
                            iq3s_grid_u8, iq3xxs_grid_u8, ksigns_iq2xs)
from .lattice_isums import MATVEC_INT
from .quant_matvec import _u
from .types import GGMLType

f32 = np.float32

# --------------------------------------------------------------------------- lane tables (built once at import)


def _signed_scales(patterns: np.ndarray) -> np.ndarray:
    """Sign bytes x 4-bit scales s -> uint64 words of 8 int8 lanes: lane j = +-(2 s + 1), negative
    where bit j of the sign byte is set.  Entry 16 * pattern + s."""
    bits = (patterns.astype(np.int32)[:, None] >> np.arange(8)) & 1            # (n, 8)
    odd = 2 * np.arange(16, dtype=np.int32) + 1                                  # (16,)
    lanes = (1 - 2 * bits)[:, None, :] * odd[None, :, None]                      # (n, 16, 8)
    return np.ascontiguousarray(lanes.astype(np.int8)).view(np.uint64).reshape(-1)


def _words(grid_bytes: np.ndarray, dtype) -> np.ndarray:
    """(n, 8) or (n, 4) grid bytes -> one native word per entry (byte j stays lane j when viewed back)."""
    return np.ascontiguousarray(grid_bytes).view(dtype).reshape(-1)


# grid entries as words: 8 lanes (uint64) or 4 lanes (uint32) of magnitudes (IQ1: int8 -1/0/+1)
GR_IQ2XXS = _words(iq2xxs_grid_u8, np.uint64)
GR_IQ2XS = _words(iq2xs_grid_u8, np.uint64)
GR_IQ2S = _words(iq2s_grid_u8, np.uint64)
GR_IQ1S = _words(iq1s_grid_i8, np.uint64)
GR_IQ3XXS = _words(iq3xxs_grid_u8, np.uint32)
GR_IQ3S = _words(iq3s_grid_u8, np.uint32)
# signed odd scales: SS7 indexed by 16 * (7-bit ksigns index) + s, SS8 by 16 * (sign byte) + s
SS7 = _signed_scales(ksigns_iq2xs)
SS8 = _signed_scales(np.arange(256))
_BYTES1 = np.uint64(0x0101010101010101)   # a small integer times this: the integer in all 8 lanes
# The kernels take the group width 8 as an argument (``n8``) rather than as a constant: LLVM
# fully unrolls short constant-bound loops into scalar code (Numba does not run the SLP
# vectorizer), while a loop whose bound it cannot see stays a loop and is vectorized.
_N8 = 8


@njit(cache=True, inline="always")
def _nchunks(rows):
    """Row chunks for prange (each allocates its small scratch arrays once); results do not depend on it."""
    return min(rows, 64)


# --------------------------------------------------------------------------- lattice (grid) types
# Every lattice weight is  d * (2 s + 1) * grid * sign  (IQ1: d * (2 s + 1) * (grid + delta)) with
# small integers, up to a per-type power of two.  Per 256-weight block a scalar pass writes,
# for each group of 8 weights, one word of 8 grid lanes (gq) and one word of 8 signed-scale lanes
# (sq, from the SS tables); the dot then runs over 256 contiguous lanes:
#     block = factor * sum_k f32(g_k * s_k) x_k
# (vpmovzxbd / vpmovsxbd, vpmulld, vcvtdq2ps, vfmadd over 8 lanes).  IQ1's shift delta adds
# factor * 0.125 * sum_groups (+-(2 s + 1)) * (sum of x over the group), with the group sums of x
# computed once per call.


@njit(cache=True, inline="always")
def _idot(g8, s8, x, off, n):
    acc = f32(0)
    for k in range(n):
        acc += f32(np.int32(g8[k]) * np.int32(s8[k])) * x[_u(off + k)]
    return acc


@njit(cache=True)
def _x_sums8(x):
    """(cols,) -> (cols // 8,) sums of x over each group of 8."""
    n = x.size // 8
    out = np.empty(n, np.float32)
    for g in range(n):
        acc = f32(0)
        for j in range(8):
            acc += x[8 * g + j]
        out[g] = acc
    return out


@njit(cache=True, inline="always")
def _grp_iq2_xxs(src, o, gq, sq):
    for ib in range(8):
        qo = o + 2 + 8 * ib
        aux = u32_at(src, qo + 4)
        s = np.int64(aux >> np.uint32(28))
        for l in range(4):
            gq[4 * ib + l] = GR_IQ2XXS[_u(src[_u(qo + l)])]
            sq[4 * ib + l] = SS7[_u(16 * np.int64((aux >> np.uint32(7 * l)) & np.uint32(127)) + s)]
    return f16_at(src, o) * f32(0.125)          # d (0.5 + s) / 4 = d (2 s + 1) / 8


@njit(cache=True, inline="always")
def _grp_iq2_xs(src, o, gq, sq):
    for ib in range(8):
        sc = np.int64(src[_u(o + 66 + ib)])
        for l in range(4):
            q = np.int64(u16_at(src, o + 2 + 2 * (4 * ib + l)))
            s = (sc & 15) if l < 2 else (sc >> 4)
            gq[4 * ib + l] = GR_IQ2XS[_u(q & 511)]
            sq[4 * ib + l] = SS7[_u(16 * (q >> 9) + s)]
    return f16_at(src, o) * f32(0.125)


@njit(cache=True, inline="always")
def _grp_iq2_s(src, o, gq, sq):
    for ib in range(8):
        sc = np.int64(src[_u(o + 74 + ib)])
        qh = np.int64(src[_u(o + 66 + ib)])
        for l in range(4):
            s = (sc & 15) if l < 2 else (sc >> 4)
            idx = np.int64(src[_u(o + 2 + 4 * ib + l)]) | ((qh << (8 - 2 * l)) & 0x300)
            gq[4 * ib + l] = GR_IQ2S[_u(idx)]
            sq[4 * ib + l] = SS8[_u(16 * np.int64(src[_u(o + 34 + 4 * ib + l)]) + s)]
    return f16_at(src, o) * f32(0.125)


@njit(cache=True, inline="always")
def _grp_iq3_xxs(src, o, g32, sq):
    for ib in range(8):
        aux = u32_at(src, o + 66 + 4 * ib)
        s = np.int64(aux >> np.uint32(28))
        qo = o + 2 + 8 * ib
        for l in range(4):
            g = 4 * ib + l
            g32[2 * g] = GR_IQ3XXS[_u(src[_u(qo + 2 * l)])]
            g32[2 * g + 1] = GR_IQ3XXS[_u(src[_u(qo + 2 * l + 1)])]
            sq[g] = SS7[_u(16 * np.int64((aux >> np.uint32(7 * l)) & np.uint32(127)) + s)]
    return f16_at(src, o) * f32(0.25)           # d (0.5 + s) / 2 = d (2 s + 1) / 4


@njit(cache=True, inline="always")
def _grp_iq3_s(src, o, g32, sq):
    for ib in range(8):
        sc = np.int64(src[_u(o + 106 + ib // 2)])
        s = (sc & 15) if ib % 2 == 0 else (sc >> 4)
        qh = np.int64(src[_u(o + 66 + ib)])
        qo = o + 2 + 8 * ib
        for l in range(4):
            g = 4 * ib + l
            i1 = np.int64(src[_u(qo + 2 * l)]) | ((qh << (8 - 2 * l)) & 256)
            i2 = np.int64(src[_u(qo + 2 * l + 1)]) | ((qh << (7 - 2 * l)) & 256)
            g32[2 * g] = GR_IQ3S[_u(i1)]
            g32[2 * g + 1] = GR_IQ3S[_u(i2)]
            sq[g] = SS8[_u(16 * np.int64(src[_u(o + 74 + 4 * ib + l)]) + s)]
    return f16_at(src, o)                       # d (1 + 2 s)


@njit(cache=True, inline="always")
def _grp_iq1_s(src, o, gq, sq, xs8, g0):
    """Returns (d, sum over groups of +-(2 s + 1) * group sum of x); g0 = first group of the block in xs8."""
    dsum = f32(0)
    for ib in range(8):
        qh = np.int64(u16_at(src, o + 34 + 2 * ib))
        m = 2 * ((qh >> 12) & 7) + 1
        sm = np.uint64(m) * _BYTES1
        xg = xs8[g0 + 4 * ib] + xs8[g0 + 4 * ib + 1] + xs8[g0 + 4 * ib + 2] + xs8[g0 + 4 * ib + 3]
        dsum += f32(-m if qh & 0x8000 else m) * xg
        for l in range(4):
            idx = np.int64(src[_u(o + 2 + 4 * ib + l)]) | (((qh >> (3 * l)) & 7) << 8)
            gq[4 * ib + l] = GR_IQ1S[_u(idx)]
            sq[4 * ib + l] = sm
    return f16_at(src, o), dsum


@njit(cache=True, inline="always")
def _grp_iq1_m(src, o, gq, sq, xs8, g0):
    s0 = u16_at(src, o + 48)
    s1 = u16_at(src, o + 50)
    s2 = u16_at(src, o + 52)
    s3 = u16_at(src, o + 54)
    d = f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000))
    dsum = f32(0)
    for ib in range(8):
        sc = np.int64(u16_at(src, o + 48 + 2 * (ib // 2)))
        sh = 6 * (ib % 2)
        m1 = 2 * ((sc >> sh) & 7) + 1
        m2 = 2 * ((sc >> (sh + 3)) & 7) + 1
        for l in range(4):
            qh = np.int64(src[_u(o + 32 + 2 * ib + l // 2)])
            hi = (qh << 8) if l % 2 == 0 else (qh << 4)
            idx = np.int64(src[_u(o + 4 * ib + l)]) | (hi & 0x700)
            neg = (qh & 0x08) if l % 2 == 0 else (qh & 0x80)
            m = m1 if l < 2 else m2
            dsum += f32(-m if neg else m) * xs8[g0 + 4 * ib + l]
            gq[4 * ib + l] = GR_IQ1S[_u(idx)]
            sq[4 * ib + l] = np.uint64(m) * _BYTES1
    return d, dsum


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_xxs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        gq = np.empty(32, np.uint64)
        sq = np.empty(32, np.uint64)
        g8 = gq.view(np.uint8)
        s8 = sq.view(np.int8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                f = _grp_iq2_xxs(src, 66 * i, gq, sq)
                acc += f * _idot(g8, s8, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_xs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        gq = np.empty(32, np.uint64)
        sq = np.empty(32, np.uint64)
        g8 = gq.view(np.uint8)
        s8 = sq.view(np.int8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                f = _grp_iq2_xs(src, 74 * i, gq, sq)
                acc += f * _idot(g8, s8, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        gq = np.empty(32, np.uint64)
        sq = np.empty(32, np.uint64)
        g8 = gq.view(np.uint8)
        s8 = sq.view(np.int8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                f = _grp_iq2_s(src, 82 * i, gq, sq)
                acc += f * _idot(g8, s8, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq3_xxs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        g32 = np.empty(64, np.uint32)
        sq = np.empty(32, np.uint64)
        g8 = g32.view(np.uint8)
        s8 = sq.view(np.int8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                f = _grp_iq3_xxs(src, 98 * i, g32, sq)
                acc += f * _idot(g8, s8, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq3_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        g32 = np.empty(64, np.uint32)
        sq = np.empty(32, np.uint64)
        g8 = g32.view(np.uint8)
        s8 = sq.view(np.int8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                f = _grp_iq3_s(src, 110 * i, g32, sq)
                acc += f * _idot(g8, s8, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq1_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    xs8 = _x_sums8(x)
    nch = _nchunks(rows)
    for c in prange(nch):
        gq = np.empty(32, np.uint64)
        sq = np.empty(32, np.uint64)
        g8 = gq.view(np.int8)
        s8 = sq.view(np.uint8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                d, dsum = _grp_iq1_s(src, 50 * i, gq, sq, xs8, 32 * i)
                acc += d * (_idot(g8, s8, x, 256 * i, 32 * n8) + IQ1S_DELTA * dsum)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq1_m(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    xs8 = _x_sums8(x)
    nch = _nchunks(rows)
    for c in prange(nch):
        gq = np.empty(32, np.uint64)
        sq = np.empty(32, np.uint64)
        g8 = gq.view(np.int8)
        s8 = sq.view(np.uint8)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                d, dsum = _grp_iq1_m(src, 56 * i, gq, sq, xs8, 32 * i)
                acc += d * (_idot(g8, s8, x, 256 * i, 32 * n8) + IQ1S_DELTA * dsum)
            y[r] = acc


# type -> kernel(raw (rows, row_bytes) uint8, x (cols,) f32, y (rows,) f32)
MATVEC = {
    GGMLType.IQ1_S: matvec_iq1_s,
    GGMLType.IQ1_M: matvec_iq1_m,
    GGMLType.IQ2_XXS: matvec_iq2_xxs,
    GGMLType.IQ2_XS: matvec_iq2_xs,
    GGMLType.IQ2_S: matvec_iq2_s,
    GGMLType.IQ3_XXS: matvec_iq3_xxs,
    GGMLType.IQ3_S: matvec_iq3_s,
}


def rounds_activations(qtype) -> bool:
    """Whether slow_matvec multiplies `qtype` by activations rounded to two int8 terms per
    32-block (the integer kernels of lattice_isums.py, on AVX2 hosts) rather than x itself."""
    return qtype in MATVEC_INT


def slow_matvec(raw: np.ndarray, qtype, x: np.ndarray, y: np.ndarray) -> bool:
    """y = W x with the fused kernel of `qtype` if it has one (returns True), else False: the
    integer kernel where the host has one (lattice_isums.py), else the float one above."""
    fn = MATVEC_INT.get(qtype)
    if fn is not None:
        fn(raw, x, y)
        return True
    fn = MATVEC.get(qtype)
    if fn is None:
        return False
    fn(raw, x, y, _N8)
    return True


__all__ = ["MATVEC", "rounds_activations", "slow_matvec"]
