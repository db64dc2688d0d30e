"""Fused matvec y = W x for the types without a repacked layout, straight from the GGML bytes.

Types: Q2_K, Q3_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS,
TQ1_0, TQ2_0, MXFP4.  ``MATVEC[type](raw, x, y)`` with raw (rows, row_bytes) uint8 (the
tensor's own bytes, untouched), x (cols,) float32, y (rows,) float32.

How: parallel over rows (``prange`` over row chunks; each chunk owns a 256-float
buffer).  Per 256 weights of a row the kernel decodes into the buffer, then dots the
buffer with x.  The decoders here are written for the vectorizer rather than for bit
exactness (the exact decoders in kquants/iquants/ternary stay the reference):

* lattice grids and sign patterns come from float32 tables built once at import
  (one grid row = 8 (or 4) weights, one sign row = 8 factors of +-1.0), so each group of
  8 weights is two contiguous 32-byte loads and two multiplies, with no branch on signs;
* bit-field types (Q2_K, Q3_K, TQ1_0, TQ2_0) decode 16-32 contiguous bytes per inner
  loop with int32 shifts and masks, which LLVM vectorizes;
* the 16-entry value tables (IQ4_NL, IQ4_XS, MXFP4) are looked up per nibble.

Arithmetic: float32 with ``fastmath`` (FMA, reassociated sums).  Each row is computed by
one thread in a fixed order, so results do not depend on the thread count.  Error bound
(the tests use it): ``|y - W x| <= 1e-5 * sum_j |w_j x_j|`` with W the exact dequantization
and W x in float64.

Each kernel is compiled (and cached) the first time its type is used.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .floats import e8m0_half_to_f32, f16_at, f16_bits_to_f32, u16_at, u32_at
from .iquant_tables import (IQ1S_DELTA, iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8,
                            iq3s_grid_u8, iq3xxs_grid_u8, ksigns_iq2xs, kvalues_iq4nl, kvalues_mxfp4)
from .types import GGMLType

f32 = np.float32
_I1 = np.int32(1)
_I3 = np.int32(3)
_I4 = np.int32(4)
_I7 = np.int32(7)
_I15 = np.int32(15)
_I127 = np.int32(127)
_I255 = np.int32(255)
_HALF = np.float32(0.5)
_QUARTER = np.float32(0.25)

# --------------------------------------------------------------------------- float tables (built once)


def _sign_rows(patterns: np.ndarray) -> np.ndarray:
    """Sign bytes -> flat float32 rows of 8 factors: bit j set -> -1.0, else +1.0."""
    bits = (patterns.astype(np.int32)[:, None] >> np.arange(8)) & 1
    return np.ascontiguousarray((1 - 2 * bits).astype(np.float32).reshape(-1))


# grid tables, flat: entry i occupies [8 i, 8 i + 8) (or [4 i, 4 i + 4) for the 4-wide grids)
G_IQ2XXS = np.ascontiguousarray(iq2xxs_grid_u8.astype(np.float32).reshape(-1))
G_IQ2XS = np.ascontiguousarray(iq2xs_grid_u8.astype(np.float32).reshape(-1))
G_IQ2S = np.ascontiguousarray(iq2s_grid_u8.astype(np.float32).reshape(-1))
G_IQ3XXS = np.ascontiguousarray(iq3xxs_grid_u8.astype(np.float32).reshape(-1))
G_IQ3S = np.ascontiguousarray(iq3s_grid_u8.astype(np.float32).reshape(-1))
G_IQ1S = np.ascontiguousarray(iq1s_grid_i8.astype(np.float32).reshape(-1))
# sign rows: S7 indexed by the 7-bit ksigns index, S8 by a raw sign byte
S7 = _sign_rows(ksigns_iq2xs)
S8 = _sign_rows(np.arange(256))
KV_IQ4 = kvalues_iq4nl.astype(np.float32)
KV_FP4 = kvalues_mxfp4.astype(np.float32)
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int32)
# The kernels take the group width 8 as an argument (``n8``) rather than as a constant: LLVM
# fully unrolls short constant-bound loops into scalar code (Numba does not run the SLP
# vectorizer), while a loop whose bound it cannot see stays a loop and is vectorized.
_N8 = 8


@njit(cache=True, inline="always")
def _u(i):
    """A non-negative index as uint64 (no wraparound code, so LLVM can vectorize the loads)."""
    return np.uint64(i)


@njit(cache=True, inline="always")
def _dot(buf, x, off, n):
    acc = f32(0)
    for j in range(n):
        acc += buf[j] * x[_u(off + j)]
    return acc


@njit(cache=True, inline="always")
def _nchunks(rows):
    """Row chunks for prange (each allocates one small buffer); results do not depend on it."""
    return min(rows, 64)


# --------------------------------------------------------------------------- block decoders -> buf[0:256]
# src: one row's bytes, o: byte offset of the block, buf: float32 (256,).


@njit(cache=True, inline="always", fastmath=True)
def _dec_q2_k(src, o, buf, n8):
    d = f16_at(src, o + 80)
    dmin = f16_at(src, o + 82)
    for h in range(2):
        for k in range(4):
            sh = np.int32(2 * k)
            for half in range(2):
                s = 8 * h + 2 * k + half
                sc = np.int32(src[_u(o + s)])
                dl = d * f32(sc & _I15)
                ml = dmin * f32(sc >> _I4)
                q = o + 16 + 32 * h + 16 * half
                y = 16 * s
                for l in range(2 * n8):
                    v = (np.int32(src[_u(q + l)]) >> sh) & _I3
                    buf[_u(y + l)] = dl * f32(v) - ml


@njit(cache=True, inline="always", fastmath=True)
def _dec_q3_k(src, o, buf, n8):
    d = f16_at(src, o + 108)
    sc_o = o + 96
    for h in range(2):
        for k in range(4):
            sh = np.int32(2 * k)
            hb = np.int32(4 * h + k)
            for half in range(2):
                s = 8 * h + 2 * k + half
                g = s >> 2
                low = (np.int32(src[_u(sc_o + (s & 3) + 4 * (g & 1))]) >> np.int32(4 * (g >> 1))) & _I15
                high = (np.int32(src[_u(sc_o + 8 + (s & 3))]) >> np.int32(2 * g)) & _I3
                dl = d * f32((low | (high << _I4)) - np.int32(32))
                q = o + 32 + 32 * h + 16 * half
                m = o + 16 * half
                y = 16 * s
                for l in range(2 * n8):
                    v = (np.int32(src[_u(q + l)]) >> sh) & _I3
                    hi = (np.int32(src[_u(m + l)]) >> hb) & _I1
                    buf[_u(y + l)] = dl * f32(v - _I4 + (hi << np.int32(2)))


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq2_xxs(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        qo = o + 2 + 8 * ib
        aux = u32_at(src, qo + 4)
        db = d * (_HALF + f32(aux >> 28)) * _QUARTER
        for l in range(4):
            gi = _u(8 * np.int32(src[_u(qo + l)]))
            si = _u(8 * np.int32((aux >> np.uint32(7 * l)) & np.uint32(127)))
            y = 32 * ib + 8 * l
            for j in range(n8):
                buf[_u(y + j)] = db * G_IQ2XXS[gi + _u(j)] * S7[si + _u(j)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq2_xs(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        sc = np.int32(src[_u(o + 66 + ib)])
        db0 = d * (_HALF + f32(sc & _I15)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> _I4)) * _QUARTER
        for l in range(4):
            q = np.int32(u16_at(src, o + 2 + 2 * (4 * ib + l)))
            gi = _u(8 * (q & np.int32(511)))
            si = _u(8 * (q >> np.int32(9)))
            db = db0 if l < 2 else db1
            y = 32 * ib + 8 * l
            for j in range(n8):
                buf[_u(y + j)] = db * G_IQ2XS[gi + _u(j)] * S7[si + _u(j)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq2_s(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        sc = np.int32(src[_u(o + 74 + ib)])
        db0 = d * (_HALF + f32(sc & _I15)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> _I4)) * _QUARTER
        qh = np.int32(src[_u(o + 66 + ib)])
        for l in range(4):
            idx = np.int32(src[_u(o + 2 + 4 * ib + l)]) | ((qh << np.int32(8 - 2 * l)) & np.int32(0x300))
            gi = _u(8 * idx)
            si = _u(8 * np.int32(src[_u(o + 34 + 4 * ib + l)]))
            db = db0 if l < 2 else db1
            y = 32 * ib + 8 * l
            for j in range(n8):
                buf[_u(y + j)] = db * G_IQ2S[gi + _u(j)] * S8[si + _u(j)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq3_xxs(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        aux = u32_at(src, o + 66 + 4 * ib)
        db = d * (_HALF + f32(aux >> 28)) * _HALF
        qo = o + 2 + 8 * ib
        for l in range(4):
            si = _u(8 * np.int32((aux >> np.uint32(7 * l)) & np.uint32(127)))
            g1 = _u(4 * np.int32(src[_u(qo + 2 * l)]))
            g2 = _u(4 * np.int32(src[_u(qo + 2 * l + 1)]))
            y = 32 * ib + 8 * l
            for j in range(n8 // 2):
                buf[_u(y + j)] = db * G_IQ3XXS[g1 + _u(j)] * S7[si + _u(j)]
            for j in range(n8 // 2):
                buf[_u(y + 4 + j)] = db * G_IQ3XXS[g2 + _u(j)] * S7[si + _u(4 + j)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq3_s(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        sc = np.int32(src[_u(o + 106 + ib // 2)])
        s = (sc & _I15) if ib % 2 == 0 else (sc >> _I4)
        db = d * f32(_I1 + 2 * s)
        qh = np.int32(src[_u(o + 66 + ib)])
        qo = o + 2 + 8 * ib
        for l in range(4):
            i1 = np.int32(src[_u(qo + 2 * l)]) | ((qh << np.int32(8 - 2 * l)) & np.int32(256))
            i2 = np.int32(src[_u(qo + 2 * l + 1)]) | ((qh << np.int32(7 - 2 * l)) & np.int32(256))
            g1 = _u(4 * i1)
            g2 = _u(4 * i2)
            si = _u(8 * np.int32(src[_u(o + 74 + 4 * ib + l)]))
            y = 32 * ib + 8 * l
            for j in range(n8 // 2):
                buf[_u(y + j)] = db * G_IQ3S[g1 + _u(j)] * S8[si + _u(j)]
            for j in range(n8 // 2):
                buf[_u(y + 4 + j)] = db * G_IQ3S[g2 + _u(j)] * S8[si + _u(4 + j)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq1_s(src, o, buf, n8):
    d = f16_at(src, o)
    for ib in range(8):
        qh = np.int32(u16_at(src, o + 34 + 2 * ib))
        dl = d * f32(2 * ((qh >> np.int32(12)) & _I7) + 1)
        delta = -IQ1S_DELTA if qh & np.int32(0x8000) else IQ1S_DELTA
        dd = dl * delta
        for l in range(4):
            idx = np.int32(src[_u(o + 2 + 4 * ib + l)]) | (((qh >> np.int32(3 * l)) & _I7) << np.int32(8))
            gi = _u(8 * idx)
            y = 32 * ib + 8 * l
            for j in range(n8):
                buf[_u(y + j)] = dl * G_IQ1S[gi + _u(j)] + dd


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq1_m(src, o, buf, n8):
    s0 = u16_at(src, o + 48)
    s1 = u16_at(src, o + 50)
    s2 = u16_at(src, o + 52)
    s3 = u16_at(src, o + 54)
    d = f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000))
    for ib in range(8):
        sc = np.int32(u16_at(src, o + 48 + 2 * (ib // 2)))
        sh = np.int32(6 * (ib % 2))
        dl1 = d * f32(2 * ((sc >> sh) & _I7) + 1)
        dl2 = d * f32(2 * ((sc >> (sh + _I3)) & _I7) + 1)
        for l in range(4):
            qh = np.int32(src[_u(o + 32 + 2 * ib + l // 2)])
            hi = (qh << np.int32(8)) if l % 2 == 0 else (qh << _I4)
            idx = np.int32(src[_u(o + 4 * ib + l)]) | (hi & np.int32(0x700))
            neg = (qh & np.int32(0x08)) if l % 2 == 0 else (qh & np.int32(0x80))
            delta = -IQ1S_DELTA if neg else IQ1S_DELTA
            dl = dl1 if l < 2 else dl2
            dd = dl * delta
            gi = _u(8 * idx)
            y = 32 * ib + 8 * l
            for j in range(n8):
                buf[_u(y + j)] = dl * G_IQ1S[gi + _u(j)] + dd


@njit(cache=True, inline="always", fastmath=True)
def _dec_iq4_xs(src, o, buf, n8):
    d = f16_at(src, o)
    sh = np.int32(u16_at(src, o + 2))
    for ib in range(8):
        ls = ((np.int32(src[_u(o + 4 + ib // 2)]) >> np.int32(4 * (ib % 2))) & _I15) \
            | (((sh >> np.int32(2 * ib)) & _I3) << _I4)
        dl = d * f32(ls - np.int32(32))
        q = o + 8 + 16 * ib
        y = 32 * ib
        for j in range(2 * n8):
            b = np.int32(src[_u(q + j)])
            buf[_u(y + j)] = dl * KV_IQ4[_u(b & _I15)]
            buf[_u(y + 16 + j)] = dl * KV_IQ4[_u(b >> _I4)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_tq1_0(src, o, buf, n8):
    d = f16_at(src, o + 52)
    for n in range(5):
        p = _POW3[n]
        for m in range(4 * n8):
            q = (np.int32(src[_u(o + m)]) * p) & _I255
            buf[_u(32 * n + m)] = f32(((q * _I3) >> np.int32(8)) - _I1) * d
    for n in range(5):
        p = _POW3[n]
        for m in range(2 * n8):
            q = (np.int32(src[_u(o + 32 + m)]) * p) & _I255
            buf[_u(160 + 16 * n + m)] = f32(((q * _I3) >> np.int32(8)) - _I1) * d
    for n in range(4):
        p = _POW3[n]
        for j in range(n8 // 2):
            q = (np.int32(src[_u(o + 48 + j)]) * p) & _I255
            buf[_u(240 + 4 * n + j)] = f32(((q * _I3) >> np.int32(8)) - _I1) * d


@njit(cache=True, inline="always", fastmath=True)
def _dec_tq2_0(src, o, buf, n8):
    d = f16_at(src, o + 64)
    for h in range(2):
        for l in range(4):
            sh = np.int32(2 * l)
            y = 128 * h + 32 * l
            for m in range(4 * n8):
                q = (np.int32(src[_u(o + 32 * h + m)]) >> sh) & _I3
                buf[_u(y + m)] = f32(q - _I1) * d


# 32-weight blocks: decode blocks [b0, b0 + n) of the row into buf[0:32 n]

@njit(cache=True, inline="always", fastmath=True)
def _dec_iq4_nl(src, b0, n, buf, n8):
    for i in range(n):
        o = 18 * (b0 + i)
        d = f16_at(src, o)
        for j in range(2 * n8):
            b = np.int32(src[_u(o + 2 + j)])
            buf[_u(32 * i + j)] = d * KV_IQ4[_u(b & _I15)]
            buf[_u(32 * i + 16 + j)] = d * KV_IQ4[_u(b >> _I4)]


@njit(cache=True, inline="always", fastmath=True)
def _dec_mxfp4(src, b0, n, buf, n8):
    for i in range(n):
        o = 17 * (b0 + i)
        d = e8m0_half_to_f32(src[_u(o)])
        for j in range(2 * n8):
            b = np.int32(src[_u(o + 1 + j)])
            buf[_u(32 * i + j)] = KV_FP4[_u(b & _I15)] * d
            buf[_u(32 * i + 16 + j)] = KV_FP4[_u(b >> _I4)] * d


# --------------------------------------------------------------------------- kernels
# One per type (so that only the types in use get compiled).  raw (rows, row_bytes) uint8,
# x (cols,) f32, y (rows,) f32.  Super-block types: ts bytes per 256 weights.


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q2_k(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_q2_k(src, 84 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q3_k(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_q3_k(src, 110 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_xxs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq2_xxs(src, 66 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_xs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq2_xs(src, 74 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq2_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq2_s(src, 82 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq3_xxs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq3_xxs(src, 98 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq3_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq3_s(src, 110 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq1_s(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq1_s(src, 50 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq1_m(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq1_m(src, 56 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq4_xs(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_iq4_xs(src, 136 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_tq1_0(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_tq1_0(src, 54 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_tq2_0(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 256
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for i in range(nb):
                _dec_tq2_0(src, 66 * i, buf, n8)
                acc += _dot(buf, x, 256 * i, 32 * n8)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq4_nl(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 32
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for b0 in range(0, nb, 8):
                n = min(8, nb - b0)
                _dec_iq4_nl(src, b0, n, buf, n8)
                acc += _dot(buf, x, 32 * b0, 32 * n)
            y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_mxfp4(raw, x, y, n8):
    rows = raw.shape[0]
    nb = x.size // 32
    nch = _nchunks(rows)
    for c in prange(nch):
        buf = np.empty(256, np.float32)
        for r in range(c * rows // nch, (c + 1) * rows // nch):
            src = raw[r]
            acc = f32(0)
            for b0 in range(0, nb, 8):
                n = min(8, nb - b0)
                _dec_mxfp4(src, b0, n, buf, n8)
                acc += _dot(buf, x, 32 * b0, 32 * n)
            y[r] = acc


# type -> kernel(raw (rows, row_bytes) uint8, x (cols,) f32, y (rows,) f32)
MATVEC = {
    GGMLType.Q2_K: matvec_q2_k,
    GGMLType.Q3_K: matvec_q3_k,
    GGMLType.IQ1_S: matvec_iq1_s,
    GGMLType.IQ1_M: matvec_iq1_m,
    GGMLType.IQ2_XXS: matvec_iq2_xxs,
    GGMLType.IQ2_XS: matvec_iq2_xs,
    GGMLType.IQ2_S: matvec_iq2_s,
    GGMLType.IQ3_XXS: matvec_iq3_xxs,
    GGMLType.IQ3_S: matvec_iq3_s,
    GGMLType.IQ4_NL: matvec_iq4_nl,
    GGMLType.IQ4_XS: matvec_iq4_xs,
    GGMLType.TQ1_0: matvec_tq1_0,
    GGMLType.TQ2_0: matvec_tq2_0,
    GGMLType.MXFP4: matvec_mxfp4,
}


def slow_matvec(raw: np.ndarray, qtype, x: np.ndarray, y: np.ndarray) -> bool:
    """y = W x with the fused kernel of `qtype` if it has one (returns True), else False."""
    fn = MATVEC.get(qtype)
    if fn is None:
        return False
    fn(raw, x, y, _N8)
    return True


__all__ = ["MATVEC", "slow_matvec"]
