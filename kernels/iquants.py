"""Family: the i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and the non-linear
4-bit IQ4_XS): layouts, decoders and encoders.

The lattice types store, per group of 8 (or 4) weights, an index into a fixed grid of magnitudes
(see ``iquant_tables``) plus sign bits.  Decoders are bit-exact with ggml's
``dequantize_row_iq*``: the group factor is formed in float32 exactly as there, then
``weight = factor * grid value``, times -1 where the sign bit is set.
Signature: ``decode(src: uint8[::1] of n whole blocks, dst: float32[::1] of n * 256)``.

Encoders follow ggml's quantize_row_iq*_impl: per 32- (or 16-) weight block the signs are split
off (for IQ2_XXS/IQ2_XS/IQ3_XXS an even number of them, flipping the least important weight when
needed), a range of trial scales is scanned, each group of 8 (or 4) magnitudes is rounded to the
level grid and, when that point is not on the type's lattice, replaced by its best-weighted
neighbour (encoders/grids.py); the scale with the best weighted fit wins.  Weights are
qw[j] * sqrt(sigma2 + x[j]^2) with an importance matrix, x[j]^2 without one (where ggml allows
that).  IQ4_XS shares ggml's non-linear 4-bit search with IQ4_NL (legacy.iq4_impl).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .encoders import grids
from .encoders.common import (F, GROUP_MAX_EPS, fp32_to_fp16_bits, make_qp_quants, nearest_int, put_f16, put_u16,
                              rows_and_weights, run_rows)
from .iquant_tables import (IQ1S_DELTA, iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8,
                            iq3s_grid_u8, iq3xxs_grid_u8, ksigns_iq2xs, kvalues_iq4nl)
from .kinds import lattice, table
from .legacy import KVALUES_IQ4NL, iq4_impl
from .numerics import check_blocks, f16_at, f16_bits_to_f32, u16_at, u32_at
from .types import GGMLType, QuantType

# ================================================================= decoders


_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_QUARTER = np.float32(0.25)

@njit(cache=True, nogil=True)
def _sign(signs, j):
    """-1.0 if bit j of the sign byte is set, else 1.0 (a multiply, as ggml does; no branch)."""
    return np.float32(1 - 2 * ((np.int32(signs) >> j) & 1))


LAYOUT_IQ2_XXS = """\
IQ2_XXS: 256 weights in 66 bytes, 8 groups of 32
  d   2 bytes  fp16 super-block scale
  qs 64 bytes  per group of 32: two little-endian uint32 a, b; byte l of a (l < 4) indexes
               iq2xxs_grid (8 magnitudes) for weights 8l..8l+7; bits 7l..7l+6 of b index ksigns_iq2xs
               (sign bit j set -> weight 8l+j negative); b >> 28 is the 4-bit group scale s
  weight = (d * (0.5 + s) * 0.25) * grid[j] * sign"""


@njit(cache=True, nogil=True)
def decode_iq2_xxs(src, dst):
    nb, qk = check_blocks(src, dst, 66, 256)
    for i in range(nb):
        o = 66 * i
        d = f16_at(src, o)
        for ib in range(8):
            qo = o + 2 + 8 * ib
            aux1 = u32_at(src, qo + 4)
            db = d * (_HALF + np.float32(aux1 >> 28)) * _QUARTER
            for l in range(4):
                grid = iq2xxs_grid_u8[src[qo + l]]
                signs = ksigns_iq2xs[(aux1 >> (7 * l)) & 127]
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 32):
                    v = db * np.float32(grid[j])
                    dst[y + j] = v * _sign(signs, j)


LAYOUT_IQ2_XS = """\
IQ2_XS: 256 weights in 74 bytes, 8 groups of 32
  d       2 bytes  fp16 super-block scale
  qs     64 bytes  32 little-endian uint16, one per 8 weights: bits 0..8 index iq2xs_grid,
                   bits 9..15 index ksigns_iq2xs
  scales  8 bytes  per group: low nibble scales its first 16 weights, high nibble the last 16
  weight = (d * (0.5 + s) * 0.25) * grid[j] * sign"""


@njit(cache=True, nogil=True)
def decode_iq2_xs(src, dst):
    nb, qk = check_blocks(src, dst, 74, 256)
    for i in range(nb):
        o = 74 * i
        d = f16_at(src, o)
        for ib in range(8):
            sc = src[o + 66 + ib]
            db0 = d * (_HALF + np.float32(sc & 0xF)) * _QUARTER
            db1 = d * (_HALF + np.float32(sc >> 4)) * _QUARTER
            for l in range(4):
                q = u16_at(src, o + 2 + 2 * (4 * ib + l))
                grid = iq2xs_grid_u8[q & 511]
                signs = ksigns_iq2xs[q >> 9]
                db = db0 if l < 2 else db1
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 32):
                    v = db * np.float32(grid[j])
                    dst[y + j] = v * _sign(signs, j)


LAYOUT_IQ2_S = """\
IQ2_S: 256 weights in 82 bytes, 8 groups of 32
  d       2 bytes  fp16 super-block scale
  qs     32 bytes  low 8 bits of the iq2s_grid index of each 8 weights
  signs  32 bytes  one sign byte per 8 weights (bit j set -> weight j negative)
  qh      8 bytes  per group: bits 2l..2l+1 are bits 8..9 of the grid index of its l-th 8 weights
  scales  8 bytes  per group: low nibble scales its first 16 weights, high nibble the last 16
  weight = (d * (0.5 + s) * 0.25) * grid[j] * sign"""


@njit(cache=True, nogil=True)
def decode_iq2_s(src, dst):
    nb, qk = check_blocks(src, dst, 82, 256)
    for i in range(nb):
        o = 82 * i
        d = f16_at(src, o)
        for ib in range(8):
            sc = src[o + 74 + ib]
            db0 = d * (_HALF + np.float32(sc & 0xF)) * _QUARTER
            db1 = d * (_HALF + np.float32(sc >> 4)) * _QUARTER
            qh = np.int32(src[o + 66 + ib])
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                grid = iq2s_grid_u8[idx]
                signs = src[o + 34 + 4 * ib + l]
                db = db0 if l < 2 else db1
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 32):
                    v = db * np.float32(grid[j])
                    dst[y + j] = v * _sign(signs, j)


LAYOUT_IQ3_XXS = """\
IQ3_XXS: 256 weights in 98 bytes, 8 groups of 32
  d       2 bytes  fp16 super-block scale
  qs     64 bytes  one iq3xxs_grid index (4 magnitudes) per 4 weights
  signs  32 bytes  per group a little-endian uint32: bits 7l..7l+6 index ksigns_iq2xs for weights
                   8l..8l+7, bits 28..31 are the group scale s
  weight = (d * (0.5 + s) * 0.5) * grid[j] * sign"""


@njit(cache=True, nogil=True)
def decode_iq3_xxs(src, dst):
    nb, qk = check_blocks(src, dst, 98, 256)
    for i in range(nb):
        o = 98 * i
        d = f16_at(src, o)
        for ib in range(8):
            aux = u32_at(src, o + 66 + 4 * ib)
            db = d * (_HALF + np.float32(aux >> 28)) * _HALF
            qo = o + 2 + 8 * ib
            for l in range(4):
                signs = ksigns_iq2xs[(aux >> (7 * l)) & 127]
                g1 = iq3xxs_grid_u8[src[qo + 2 * l]]
                g2 = iq3xxs_grid_u8[src[qo + 2 * l + 1]]
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 64):
                    v1 = db * np.float32(g1[j])
                    v2 = db * np.float32(g2[j])
                    dst[y + j] = v1 * _sign(signs, j)
                    dst[y + j + 4] = v2 * _sign(signs, j + 4)


LAYOUT_IQ3_S = """\
IQ3_S: 256 weights in 110 bytes, 8 groups of 32
  d       2 bytes  fp16 super-block scale
  qs     64 bytes  low 8 bits of the iq3s_grid index (4 magnitudes) of each 4 weights
  qh      8 bytes  per group: bit k is bit 8 of the grid index of its k-th 4 weights
  signs  32 bytes  one sign byte per 8 weights (bit j set -> weight j negative)
  scales  4 bytes  per pair of groups: low nibble for the first, high nibble for the second (s)
  weight = (d * (1 + 2 s)) * grid[j] * sign"""


@njit(cache=True, nogil=True)
def decode_iq3_s(src, dst):
    nb, qk = check_blocks(src, dst, 110, 256)
    for i in range(nb):
        o = 110 * i
        d = f16_at(src, o)
        for ib in range(8):
            sc = np.int32(src[o + 106 + ib // 2])
            s = (sc & 0xF) if ib % 2 == 0 else (sc >> 4)
            db = d * np.float32(1 + 2 * s)
            qh = np.int32(src[o + 66 + ib])
            qo = o + 2 + 8 * ib
            for l in range(4):
                i1 = np.int32(src[qo + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                i2 = np.int32(src[qo + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                g1 = iq3s_grid_u8[i1]
                g2 = iq3s_grid_u8[i2]
                signs = src[o + 74 + 4 * ib + l]
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 64):
                    v1 = db * np.float32(g1[j])
                    v2 = db * np.float32(g2[j])
                    dst[y + j] = v1 * _sign(signs, j)
                    dst[y + j + 4] = v2 * _sign(signs, j + 4)


LAYOUT_IQ1_S = """\
IQ1_S: 256 weights in 50 bytes, 8 groups of 32
  d   2 bytes  fp16 super-block scale
  qs 32 bytes  low 8 bits of the iq1s_grid index (8 values in {-1, 0, 1}) of each 8 weights
  qh 16 bytes  per group a little-endian uint16: bits 3l..3l+2 = bits 8..10 of the l-th index,
               bits 12..14 = group scale s, bit 15 = sign of the shift delta (0.125)
  weight = (d * (2 s + 1)) * (grid[j] + delta)"""


@njit(cache=True, nogil=True)
def decode_iq1_s(src, dst):
    nb, qk = check_blocks(src, dst, 50, 256)
    for i in range(nb):
        o = 50 * i
        d = f16_at(src, o)
        for ib in range(8):
            qh = np.int32(u16_at(src, o + 34 + 2 * ib))
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                grid = iq1s_grid_i8[idx]
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 32):
                    dst[y + j] = dl * (np.float32(grid[j]) + delta)


LAYOUT_IQ1_M = """\
IQ1_M: 256 weights in 56 bytes, 8 groups of 32
  qs     32 bytes  low 8 bits of the iq1s_grid index of each 8 weights
  qh     16 bytes  per 16 weights one byte: bits 0..2 / 4..6 = bits 8..10 of the first / second index,
                   bit 3 / bit 7 = sign of the shift delta (0.125) of the first / second 8
  scales  8 bytes  four little-endian uint16: 3-bit sub-scales s (bits 6k..6k+5 = two 16-weight halves of
                   group 2k / 2k+1), the top nibbles together form the fp16 super-block scale d
  weight = (d * (2 s + 1)) * (grid[j] + delta)"""


@njit(cache=True, nogil=True)
def decode_iq1_m(src, dst):
    nb, qk = check_blocks(src, dst, 56, 256)
    for i in range(nb):
        o = 56 * i
        s0 = u16_at(src, o + 48)
        s1 = u16_at(src, o + 50)
        s2 = u16_at(src, o + 52)
        s3 = u16_at(src, o + 54)
        d = f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000))
        for ib in range(8):
            sc = np.int32(u16_at(src, o + 48 + 2 * (ib // 2)))
            sh = 6 * (ib % 2)
            dl1 = d * np.float32(2 * ((sc >> sh) & 7) + 1)
            dl2 = d * np.float32(2 * ((sc >> (sh + 3)) & 7) + 1)
            for l in range(4):
                qh = np.int32(src[o + 32 + 2 * ib + l // 2])
                hi = (qh << 8) if l % 2 == 0 else (qh << 4)
                idx = np.int32(src[o + 4 * ib + l]) | (hi & 0x700)
                neg = (qh & 0x08) if l % 2 == 0 else (qh & 0x80)
                delta = -IQ1S_DELTA if neg else IQ1S_DELTA
                dl = dl1 if l < 2 else dl2
                grid = iq1s_grid_i8[idx]
                y = 256 * i + 32 * ib + 8 * l
                for j in range(qk // 32):
                    dst[y + j] = dl * (np.float32(grid[j]) + delta)


LAYOUT_IQ4_XS = """\
IQ4_XS: 256 weights in 136 bytes, 8 groups of 32
  d          2 bytes  fp16 super-block scale
  scales_h   2 bytes  little-endian uint16: bits 2k..2k+1 = high 2 bits of group k's 6-bit scale
  scales_l   4 bytes  low 4 bits of the group scales (group k: nibble k%2 of byte k/2)
  qs       128 bytes  4-bit indices into kvalues_iq4nl; group k: byte 16k + j holds weight j (low nibble)
                      and weight j + 16 (high nibble)
  weight = (d * (scale - 32)) * kvalues_iq4nl[q]"""


@njit(cache=True, nogil=True)
def decode_iq4_xs(src, dst):
    nb, qk = check_blocks(src, dst, 136, 256)
    for i in range(nb):
        o = 136 * i
        d = f16_at(src, o)
        sh = np.int32(u16_at(src, o + 2))
        for ib in range(8):
            ls = ((np.int32(src[o + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            q = o + 8 + 16 * ib
            y = 256 * i + 32 * ib
            for j in range(qk // 16):
                b = src[q + j]
                dst[y + j] = dl * np.float32(kvalues_iq4nl[b & 0xF])
                dst[y + j + 16] = dl * np.float32(kvalues_iq4nl[b >> 4])


# ================================================================= encoders


QK_K = 256
FLT_MAX = F(3.4028234663852886e38)
EPS_IQ3_XXS = F(1e-8)
EPS_IQ2_S = F(1e-8)


# ----------------------------------------------------------------- IQ4_XS

@njit(cache=True, error_model="numpy")
def _iq4_xs(x, y, qw, has_qw):
    scales = np.zeros(8, np.float32)
    weight = np.empty(32, np.float32)
    L = np.zeros(QK_K, np.uint8)
    for ibl in range(x.shape[0] // QK_K):
        b = 136 * ibl
        o = QK_K * ibl
        iq4_impl(QK_K, 32, x[o:o + QK_K], y, b, b + 8, b + 2, b + 4, scales, weight, L,
                 KVALUES_IQ4NL, qw[o:o + QK_K] if has_qw else qw, has_qw, 7)


# ----------------------------------------------------------------- shared lattice helpers

@njit(cache=True, error_model="numpy")
def _find_best_neighbour(neigh, off, pos, xval, xo, waux, scale, L, n):
    """Best-weighted lattice neighbour of a group; writes its levels to L[xo:xo+n]."""
    num = np.int64(neigh[off])
    best_d2 = FLT_MAX
    gi = -1
    for j in range(1, num + 1):
        g = np.int64(neigh[off + j])
        d2 = F(0.0)
        for i in range(n):
            q = F(pos[g, i])
            diff = scale * q - xval[xo + i]
            d2 += waux[xo + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            gi = g
    for i in range(n):
        L[xo + i] = (pos[gi, i] - 1) // 2
    return gi


@njit(cache=True, error_model="numpy")
def _split_signs_even(xb, weight, xval, block_signs, ngroups):
    """|x| into xval with an even number of sign flips per group of 8 (the least important one
    is kept unflipped and its magnitude negated when the count is odd)."""
    for k in range(ngroups):
        nflip = 0
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= 0:
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                nflip += 1
                s |= 1 << i
        if nflip % 2:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        block_signs[k] = s & 127


@njit(cache=True, error_model="numpy")
def _round_group(xval, o, idd, n, kmax_minus1, L, bits):
    """Levels of one group at inverse scale idd; returns the level code."""
    u = 0
    for i in range(n):
        l = nearest_int(F(0.5) * (idd * xval[o + i] - F(1.0)))
        l = max(0, min(kmax_minus1, l))
        L[o + i] = l
        u |= l << (bits * i)
    return u


@njit(cache=True, error_model="numpy")
def _code(L, o, n, bits):
    u = 0
    for i in range(n):
        u |= np.int64(L[o + i]) << (bits * i)
    return u


@njit(cache=True, error_model="numpy")
def _fit(weight, xval, L, n):
    sumqx = F(0.0)
    sumq2 = F(0.0)
    for i in range(n):
        w = weight[i]
        q = F(2 * np.int64(L[i]) + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(cache=True, error_model="numpy")
def _block_weights(xb, qw, qo, has_qw, sigma2, weight, waux, n):
    if has_qw:
        for i in range(n):
            weight[i] = qw[qo + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(n):
            weight[i] = xb[i] * xb[i]
    for i in range(n):
        waux[i] = np.sqrt(weight[i])


@njit(cache=True, error_model="numpy")
def _sumsq(xs):
    s = F(0.0)
    for i in range(xs.shape[0]):
        s += xs[i] * xs[i]
    return s


# ----------------------------------------------------------------- IQ2_XXS
# layout: d, qs uint32[16]: per 32-block (grid idx x4 bytes) and (signs 4x7 bits | scale << 28)

@njit(cache=True, error_model="numpy")
def _iq2_xxs(x, y, qw, pos, kmap, neigh):
    kmax = 3
    scales = np.zeros(8, np.float32)
    weight = np.zeros(32, np.float32)
    xval = np.zeros(32, np.float32)
    L = np.zeros(32, np.int8)
    Laux = np.zeros(32, np.int8)
    Lq = np.zeros(32, np.uint8)
    waux = np.zeros(32, np.float32)
    block_signs = np.zeros(4, np.int64)
    q2 = np.zeros(16, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 66 * ibl
        for k in range(66):
            y[b + k] = 0
        q2[:] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = _sumsq(xbl) / F(QK_K)
        for ib in range(8):
            xb = xbl[32 * ib:32 * ib + 32]
            _block_weights(xb, qw, QK_K * ibl + 32 * ib, True, sigma2, weight, waux, 32)
            _split_signs_even(xb, weight, xval, block_signs, 4)
            mx = xval[0]
            for i in range(1, 32):
                mx = max(mx, xval[i])
            if mx < GROUP_MAX_EPS:
                scales[ib] = 0
                L[:] = 0
                continue
            scale = make_qp_quants(32, kmax + 1, xval, Lq, weight)
            for i in range(32):
                L[i] = Lq[i]
            eff_max = scale * F(kmax)
            if eff_max <= 0:
                scales[ib] = 0
                L[:] = 0
                continue
            best = F(0.0)
            for is_ in range(-6, 7):
                idd = (F(2 * kmax - 1) + F(is_) * F(0.1)) / eff_max
                this_scale = F(1.0) / idd
                for k in range(4):
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, Laux, 2)
                    if kmap[u] < 0:
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, this_scale, Laux, 8)
                sumqx, sumq2 = _fit(weight, xval, Laux, 32)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
            if scale > 0:
                idd = F(1.0) / scale
                for k in range(4):
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, L, 2)
                    gi = kmap[u]
                    if gi < 0:
                        gi = _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, scale, L, 8)
                    for i in range(8):
                        L[8 * k + i] = (pos[gi, i] - 1) // 2
                sumqx, sumq2 = _fit(weight, xval, L, 32)
                if sumq2 > 0:
                    scale = sumqx / sumq2
            if scale < 0:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & 127
            for k in range(4):
                gi = kmap[_code(L, 8 * k, 8, 2)]
                if gi < 0:
                    raise RuntimeError("IQ2_XXS: quantized point is not on the grid")
                q2[2 * ib] |= np.int64(gi) << (8 * k)
                q2[2 * ib + 1] |= block_signs[k] << (7 * k)
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(31.0)
        put_f16(y, b, d)
        idd = F(1.0) / d
        for ib in range(8):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(15, l))
            q2[2 * ib + 1] |= np.int64(l) << 28
        for k in range(16):
            v = q2[k]
            for t in range(4):
                y[b + 2 + 4 * k + t] = (v >> (8 * t)) & 0xFF


# ----------------------------------------------------------------- IQ2_XS
# layout: d, qs uint16[32] (grid idx 9 bits | signs << 9), scales[8] (4 bits per 16-block)

@njit(cache=True, error_model="numpy")
def _iq2_xs(x, y, qw, pos, kmap, neigh):
    kmax = 3
    scales = np.zeros(16, np.float32)
    weight = np.zeros(16, np.float32)
    xval = np.zeros(16, np.float32)
    L = np.zeros(16, np.int8)
    Laux = np.zeros(16, np.int8)
    waux = np.zeros(16, np.float32)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    block_signs = np.zeros(2, np.int64)
    q2 = np.zeros(32, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 74 * ibl
        for k in range(74):
            y[b + k] = 0
        q2[:] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = _sumsq(xbl) / F(QK_K)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            _block_weights(xb, qw, QK_K * ibl + 16 * ib, True, sigma2, weight, waux, 16)
            _split_signs_even(xb, weight, xval, block_signs, 2)
            mx = xval[0]
            for i in range(1, 16):
                mx = max(mx, xval[i])
            L[:] = 0
            if mx < GROUP_MAX_EPS:
                scales[ib] = 0
                continue
            best = F(0.0)
            scale = mx / F(2 * kmax - 1)
            on_grid[:] = True
            for is_ in range(-9, 10):
                idd = (F(2 * kmax - 1) + F(is_) * F(0.1)) / mx
                this_scale = F(1.0) / idd
                for k in range(2):
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, Laux, 2)
                    on_grid_aux[k] = True
                    if kmap[u] < 0:
                        on_grid_aux[k] = False
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, this_scale, Laux, 8)
                sumqx, sumq2 = _fit(weight, xval, Laux, 16)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not = 0
            for k in range(2):
                if not on_grid[k]:
                    n_not += 1
            if n_not > 0 and scale > 0:
                idd = F(1.0) / scale
                for k in range(2):
                    if on_grid[k]:
                        continue
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, L, 2)
                    if kmap[u] < 0:
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, scale, L, 8)
                sumqx, sumq2 = _fit(weight, xval, L, 16)
                if sumq2 > 0:
                    scale = sumqx / sumq2
            if scale < 0:
                scale = -scale
                for k in range(2):
                    block_signs[k] = (~block_signs[k]) & 127
            for k in range(2):
                gi = kmap[_code(L, 8 * k, 8, 2)]
                if gi < 0:
                    raise RuntimeError("IQ2_XS: quantized point is not on the grid")
                q2[2 * ib + k] = np.int64(gi) | (block_signs[k] << 9)
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(31.0)
        put_f16(y, b, d)
        idd = F(1.0) / d
        for ib in range(16):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(15, l))
            if ib % 2 == 0:
                y[b + 66 + ib // 2] = l
            else:
                y[b + 66 + ib // 2] |= l << 4
        for k in range(32):
            put_u16(y, b + 2 + 2 * k, q2[k] & 0xFFFF)


# ----------------------------------------------------------------- IQ3_XXS
# layout: d, grid idx [64], uint32[8] (signs 4x7 bits | scale << 28)

@njit(cache=True, error_model="numpy")
def _iq3_xxs(x, y, qw, has_qw, pos, kmap, neigh):
    kmax = 8
    scales = np.zeros(8, np.float32)
    weight = np.zeros(32, np.float32)
    xval = np.zeros(32, np.float32)
    L = np.zeros(32, np.int8)
    Laux = np.zeros(32, np.int8)
    waux = np.zeros(32, np.float32)
    on_grid = np.zeros(8, np.bool_)
    on_grid_aux = np.zeros(8, np.bool_)
    block_signs = np.zeros(4, np.int64)
    sas = np.zeros(8, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 98 * ibl
        for k in range(98):
            y[b + k] = 0
        sas[:] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = F(2.0) * _sumsq(xbl) / F(QK_K)
        for ib in range(8):
            xb = xbl[32 * ib:32 * ib + 32]
            _block_weights(xb, qw, QK_K * ibl + 32 * ib, has_qw, sigma2, weight, waux, 32)
            _split_signs_even(xb, weight, xval, block_signs, 4)
            mx = xval[0]
            for i in range(1, 32):
                mx = max(mx, xval[i])
            L[:] = 0
            if mx < EPS_IQ3_XXS:
                scales[ib] = 0
                continue
            best = F(0.0)
            scale = mx / F(2 * kmax - 1)
            on_grid[:] = True
            for is_ in range(-15, 16):
                idd = (F(2 * kmax - 1) + F(is_) * F(0.2)) / mx
                this_scale = F(1.0) / idd
                for k in range(8):
                    u = _round_group(xval, 4 * k, idd, 4, kmax - 1, Laux, 3)
                    on_grid_aux[k] = True
                    if kmap[u] < 0:
                        on_grid_aux[k] = False
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 4 * k, waux, this_scale, Laux, 4)
                sumqx, sumq2 = _fit(weight, xval, Laux, 32)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not = 0
            for k in range(8):
                if not on_grid[k]:
                    n_not += 1
            if n_not > 0 and scale > 0:
                idd = F(1.0) / scale
                for k in range(8):
                    if on_grid[k]:
                        continue
                    u = _round_group(xval, 4 * k, idd, 4, kmax - 1, Laux, 3)
                    gi = kmap[u]
                    if gi < 0:
                        gi = _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 4 * k, waux, scale, L, 4)
                    for i in range(4):
                        L[4 * k + i] = (pos[gi, i] - 1) // 2
                sumqx, sumq2 = _fit(weight, xval, L, 32)
                if sumq2 > 0:
                    scale = sumqx / sumq2
            if scale < 0:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & 127
            for k in range(8):
                gi = kmap[_code(L, 4 * k, 4, 3)]
                if gi < 0:
                    raise RuntimeError("IQ3_XXS: quantized point is not on the grid")
                y[b + 2 + 8 * ib + k] = gi & 0xFF
            sas[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21)
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            for k in range(96):
                y[b + 2 + k] = 0
            continue
        d = max_scale / F(31.0)
        put_f16(y, b, d * F(1.0125))
        idd = F(1.0) / d
        for ib in range(8):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(15, l))
            v = sas[ib] | (np.int64(l) << 28)
            for t in range(4):
                y[b + 66 + 4 * ib + t] = (v >> (8 * t)) & 0xFF


# ----------------------------------------------------------------- IQ3_S
# layout: d, qs[64] (grid idx low 8 bits), qh[8] (bit 9), signs[32], scales[4] (4 bits per 32-block)

@njit(cache=True, error_model="numpy")
def _iq3_s(x, y, qw, has_qw, pos, kmap, neigh):
    kmax = 8
    bs = 32
    bs4 = 8
    bs8 = 4
    scales = np.zeros(8, np.float32)
    weight = np.zeros(32, np.float32)
    xval = np.zeros(32, np.float32)
    L = np.zeros(32, np.int8)
    Laux = np.zeros(32, np.int8)
    waux = np.zeros(32, np.float32)
    on_grid = np.zeros(8, np.bool_)
    on_grid_aux = np.zeros(8, np.bool_)
    block_signs = np.zeros(4, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 110 * ibl
        for k in range(110):
            y[b + k] = 0
        qs = b + 2
        qh = b + 66
        signs = b + 74
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = F(2.0) * _sumsq(xbl) / F(QK_K)
        for ib in range(QK_K // bs):
            xb = xbl[bs * ib:bs * ib + bs]
            _block_weights(xb, qw, QK_K * ibl + bs * ib, has_qw, sigma2, weight, waux, bs)
            for k in range(bs8):
                s = 0
                for i in range(8):
                    v = xb[8 * k + i]
                    if v >= 0:
                        xval[8 * k + i] = v
                    else:
                        xval[8 * k + i] = -v
                        s |= 1 << i
                block_signs[k] = s
            mx = xval[0]
            for i in range(1, bs):
                mx = max(mx, xval[i])
            L[:] = 0
            if mx == 0:
                scales[ib] = 0
                continue
            best = F(0.0)
            scale = mx / F(2 * kmax - 1)
            on_grid[:] = False
            for is_ in range(-9, 10):
                idd = (F(2 * kmax - 1) + F(is_) * F(0.2)) / mx
                this_scale = F(1.0) / idd
                for k in range(bs4):
                    u = _round_group(xval, 4 * k, idd, 4, kmax - 1, Laux, 3)
                    on_grid_aux[k] = True
                    if kmap[u] < 0:
                        on_grid_aux[k] = False
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 4 * k, waux, this_scale, Laux, 4)
                sumqx, sumq2 = _fit(weight, xval, Laux, bs)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not = 0
            for k in range(bs4):
                if not on_grid[k]:
                    n_not += 1
            if n_not > 0 and scale > 0:
                idd = F(1.0) / scale
                for k in range(bs4):
                    u = _round_group(xval, 4 * k, idd, 4, kmax - 1, Laux, 3)
                    gi = kmap[u]
                    if gi < 0:
                        gi = _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 4 * k, waux, scale, L, 4)
                    for i in range(4):
                        L[4 * k + i] = (pos[gi, i] - 1) // 2
                sumqx, sumq2 = _fit(weight, xval, L, bs)
                if sumq2 > 0:
                    scale = sumqx / sumq2
            if scale < 0:
                scale = -scale
                for k in range(bs8):
                    block_signs[k] = (~block_signs[k]) & 0xFF
            for k in range(bs4):
                gi = kmap[_code(L, 4 * k, 4, 3)]
                if gi < 0:
                    raise RuntimeError("IQ3_S: quantized point is not on the grid")
                y[qs + k] = gi & 255
                t = ib * bs4 + k
                y[qh + t // 8] |= ((gi >> 8) << (t % 8)) & 0xFF
            qs += bs4
            for k in range(bs8):
                y[signs + k] = block_signs[k]
            signs += bs8
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(31.0)
        put_f16(y, b, d * F(1.033))
        idd = F(1.0) / d
        for ib in range(0, QK_K // bs, 2):
            l1 = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l1 = max(0, min(15, l1))
            l2 = nearest_int(F(0.5) * (idd * scales[ib + 1] - F(1.0)))
            l2 = max(0, min(15, l2))
            y[b + 106 + ib // 2] = l1 | (l2 << 4)


# ----------------------------------------------------------------- IQ2_S
# layout: d, qs[32] (grid idx low 8 bits), signs[32], qh[8] (2 high bits per group), scales[8]

@njit(cache=True, error_model="numpy")
def _iq2_s(x, y, qw, has_qw, pos, kmap, neigh):
    kmax = 3
    scales = np.zeros(16, np.float32)
    weight = np.zeros(16, np.float32)
    xval = np.zeros(16, np.float32)
    L = np.zeros(16, np.int8)
    Laux = np.zeros(16, np.int8)
    waux = np.zeros(16, np.float32)
    on_grid = np.zeros(2, np.bool_)
    on_grid_aux = np.zeros(2, np.bool_)
    block_signs = np.zeros(2, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 82 * ibl
        for k in range(82):
            y[b + k] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = F(2.0) * _sumsq(xbl) / F(QK_K)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            if has_qw:
                _block_weights(xb, qw, QK_K * ibl + 16 * ib, True, sigma2, weight, waux, 16)
            else:
                for i in range(16):
                    weight[i] = F(0.25) * sigma2 + xb[i] * xb[i]
                for i in range(16):
                    waux[i] = np.sqrt(weight[i])
            for k in range(2):
                sgn = 0
                for i in range(8):
                    v = xb[8 * k + i]
                    if v >= 0:
                        xval[8 * k + i] = v
                    else:
                        xval[8 * k + i] = -v
                        sgn |= 1 << i
                block_signs[k] = sgn
            mx = xval[0]
            for i in range(1, 16):
                mx = max(mx, xval[i])
            L[:] = 0
            if mx < EPS_IQ2_S:
                scales[ib] = 0
                continue
            best = F(0.0)
            scale = mx / F(2 * kmax - 1)
            on_grid[:] = True
            for is_ in range(-9, 10):
                idd = (F(2 * kmax - 1) + F(is_) * F(0.1)) / mx
                this_scale = F(1.0) / idd
                for k in range(2):
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, Laux, 2)
                    on_grid_aux[k] = True
                    if kmap[u] < 0:
                        on_grid_aux[k] = False
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, this_scale, Laux, 8)
                sumqx, sumq2 = _fit(weight, xval, Laux, 16)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not = 0
            for k in range(2):
                if not on_grid[k]:
                    n_not += 1
            if n_not > 0 and scale > 0:
                idd = F(1.0) / scale
                for k in range(2):
                    if on_grid[k]:
                        continue
                    u = _round_group(xval, 8 * k, idd, 8, kmax - 1, L, 2)
                    if kmap[u] < 0:
                        _find_best_neighbour(neigh, -kmap[u] - 1, pos, xval, 8 * k, waux, scale, L, 8)
                sumqx, sumq2 = _fit(weight, xval, L, 16)
                if sumq2 > 0:
                    scale = sumqx / sumq2
            if scale < 0:
                scale = -scale
                for k in range(2):
                    block_signs[k] = (~block_signs[k]) & 0xFF
            for k in range(2):
                gi = kmap[_code(L, 8 * k, 8, 2)]
                if gi < 0:
                    raise RuntimeError("IQ2_S: quantized point is not on the grid")
                i8 = 2 * ib + k
                y[b + 2 + i8] = gi & 255
                y[b + 66 + i8 // 4] |= ((gi >> 8) << (2 * (i8 % 4))) & 0xFF
                y[b + 34 + i8] = block_signs[k]
            scales[ib] = scale
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(31.0)
        put_f16(y, b, d * F(0.9875))
        idd = F(1.0) / d
        for ib in range(16):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(15, l))
            if ib % 2 == 0:
                y[b + 74 + ib // 2] = l
            else:
                y[b + 74 + ib // 2] |= l << 4


# ----------------------------------------------------------------- IQ1_S / IQ1_M shared

@njit(cache=True, error_model="numpy")
def _sort_order(xb, idx, n):
    """Indices of xb in ascending order (ties keep their original order)."""
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        v = idx[j]
        t = j - 1
        while t >= 0 and xb[idx[t]] > xb[v]:
            idx[t + 1] = idx[t]
            t -= 1
        idx[t + 1] = v


@njit(cache=True, error_model="numpy")
def _find_best_neighbour1(neigh, off, pos, xb, xo, weight, scale, xx, L, ngrid):
    """iq1_find_best_neighbour2: the neighbour closest to x at this scale with levels xx."""
    num = np.int64(neigh[off])
    best = FLT_MAX
    gi = -1
    for j in range(1, num + 1):
        g = np.int64(neigh[off + j])
        d2 = F(0.0)
        for i in range(8):
            q = xx[(pos[g, i] - 1) // 2]
            diff = scale * q - xb[xo + i]
            d2 += weight[xo + i] * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:
        for i in range(ngrid):
            d2 = F(0.0)
            for j in range(8):
                q = xx[(pos[i, j] - 1) // 2]
                diff = scale * q - xb[xo + i]  # (sic) ggml indexes x by the grid entry here
                d2 += weight[xo + j] * diff * diff
            if d2 < best:
                best = d2
                gi = i
    if gi < 0:
        raise RuntimeError("IQ1: no grid point found")
    for i in range(8):
        L[xo + i] = (pos[gi, i] - 1) // 2
    return gi


# ----------------------------------------------------------------- IQ1_S
# layout: d, qs[32] (grid idx low 8 bits), qh uint16[8] (3 high bits x4 | scale << 12 | shift sign << 15)

@njit(cache=True, error_model="numpy")
def _iq1_s(x, y, qw, pos, kmap, neigh):
    bs = 32
    delta = F(0.125)
    x_p = np.array([F(-1.0) + delta, delta, F(1.0) + delta], np.float32)
    x_m = np.array([F(-1.0) - delta, -delta, F(1.0) - delta], np.float32)
    scales = np.zeros(8, np.float32)
    shifts = np.zeros(8, np.int64)
    weight = np.zeros(bs, np.float32)
    L = np.zeros(bs, np.int8)
    sumx = np.zeros(bs + 1, np.float32)
    sumw = np.zeros(bs + 1, np.float32)
    idx = np.zeros(bs, np.int64)
    index = np.zeros(4, np.int64)
    qh = np.zeros(8, np.int64)
    for ibl in range(x.shape[0] // QK_K):
        b = 50 * ibl
        for k in range(50):
            y[b + k] = 0
        qh[:] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = F(2.0) * _sumsq(xbl) / F(QK_K)
        for ib in range(QK_K // bs):
            xb = xbl[bs * ib:bs * ib + bs]
            o = QK_K * ibl + bs * ib
            for i in range(bs):
                weight[i] = qw[o + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            mx = abs(xb[0])
            for i in range(1, bs):
                mx = max(mx, abs(xb[i]))
            if mx < F(1e-12):
                scales[ib] = 0
                shifts[ib] = 1
                continue
            _sort_order(xb, idx, bs)
            sumx[0] = 0
            sumw[0] = 0
            for j in range(bs):
                i = idx[j]
                sumx[j + 1] = sumx[j] + weight[i] * xb[i]
                sumw[j + 1] = sumw[j] + weight[i]
            best_score = -FLT_MAX
            scale = mx
            besti1 = -1
            besti2 = -1
            best_shift = 0
            for i1 in range(bs + 1):
                for i2 in range(i1, bs + 1):
                    a = sumx[i1] - sumx[0]
                    bb = sumx[i2] - sumx[i1]
                    c = sumx[bs] - sumx[i2]
                    wa = sumw[i1] - sumw[0]
                    wb = sumw[i2] - sumw[i1]
                    wc = sumw[bs] - sumw[i2]
                    sumqx = a * x_p[0] + bb * x_p[1] + c * x_p[2]
                    sumq2 = wa * x_p[0] * x_p[0] + wb * x_p[1] * x_p[1] + wc * x_p[2] * x_p[2]
                    if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = 1
                    sumqx = a * x_m[0] + bb * x_m[1] + c * x_m[2]
                    sumq2 = wa * x_m[0] * x_m[0] + wb * x_m[1] * x_m[1] + wc * x_m[2] * x_m[2]
                    if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = -1
            if besti1 < 0 or besti2 < 0 or best_shift == 0:
                scales[ib] = 0
                shifts[ib] = 1
                continue
            for j in range(0, besti1):
                L[idx[j]] = 0
            for j in range(besti1, besti2):
                L[idx[j]] = 1
            for j in range(besti2, bs):
                L[idx[j]] = 2
            if scale < 0:
                for j in range(bs):
                    L[j] = 2 - L[j]
                scale = -scale
                best_shift = -best_shift
            all_on_grid = True
            xx = x_p if best_shift == 1 else x_m
            for k in range(bs // 8):
                gi = kmap[_code(L, 8 * k, 8, 2)]
                if gi < 0:
                    all_on_grid = False
                    gi = _find_best_neighbour1(neigh, -gi - 1, pos, xb, 8 * k, weight, scale, xx, L, 2048)
                index[k] = gi
            if not all_on_grid:
                sumqx = F(0.0)
                sumq2 = F(0.0)
                for k in range(bs // 8):
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(pos[index[k], j] - 1) // 2]
                        sumqx += w * q * xb[8 * k + j]
                        sumq2 += w * q * q
                if sumqx > 0 and sumq2 > 0:
                    scale = sumqx / sumq2
            h = 0
            for k in range(bs // 8):
                y[b + 2 + (bs // 8) * ib + k] = index[k] & 255
                h |= (index[k] >> 8) << (3 * k)
            qh[ib] = h
            scales[ib] = scale
            shifts[ib] = best_shift
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(15.0)
        put_f16(y, b, d * F(1.125))
        idd = F(1.0) / d
        for ib in range(QK_K // bs):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(7, l))
            if shifts[ib] == -1:
                l |= 8
            put_u16(y, b + 34 + 2 * ib, (qh[ib] | (l << 12)) & 0xFFFF)


# ----------------------------------------------------------------- IQ1_M
# layout: qs[32] (grid idx low 8 bits), qh[16] (3 high bits + shift flag per group of 8),
# scales uint16[4] (3-bit block scales; the fp16 super-scale in the top nibbles)

@njit(cache=True, error_model="numpy")
def _iq1_m(x, y, qw, has_qw, pos, kmap, neigh):
    bs = 16
    delta = F(0.125)
    x_p = np.array([F(-1.0) + delta, delta, F(1.0) + delta], np.float32)
    x_m = np.array([F(-1.0) - delta, -delta, F(1.0) - delta], np.float32)
    masks = np.array([0x00, 0x80, 0x08, 0x88], np.int64)
    scales = np.zeros(16, np.float32)
    shifts = np.zeros(16, np.int64)
    weight = np.zeros(bs, np.float32)
    L = np.zeros(bs, np.int8)
    idx = np.zeros(bs, np.int64)
    index = np.zeros(2, np.int64)
    px = np.zeros((2, bs + 1), np.float32)
    pw = np.zeros((2, bs + 1), np.float32)
    sc = np.zeros(4, np.int64)
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    for ibl in range(x.shape[0] // QK_K):
        b = 56 * ibl
        for k in range(56):
            y[b + k] = 0
        sc[:] = 0
        max_scale = F(0.0)
        xbl = x[QK_K * ibl:QK_K * (ibl + 1)]
        sigma2 = F(2.0) * _sumsq(xbl) / F(QK_K)
        for ib in range(QK_K // bs):
            xb = xbl[bs * ib:bs * ib + bs]
            o = QK_K * ibl + bs * ib
            if has_qw:
                for i in range(bs):
                    weight[i] = qw[o + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            else:
                for i in range(bs):
                    weight[i] = xb[i] * xb[i]
            mx = abs(xb[0])
            for i in range(1, bs):
                mx = max(mx, abs(xb[i]))
            if mx < F(1e-7):
                scales[ib] = 0
                shifts[ib] = 0
                continue
            _sort_order(xb, idx, bs)
            best_score = -FLT_MAX
            scale = mx
            besti1 = -1
            besti2 = -1
            best_k = -1
            px[0, 0] = 0
            px[1, 0] = 0
            pw[0, 0] = 0
            pw[1, 0] = 0
            for j in range(bs):
                i = idx[j]
                h = 0 if i < bs // 2 else 1
                px[h, j + 1] = px[h, j] + weight[i] * xb[i]
                px[1 - h, j + 1] = px[1 - h, j]
                pw[h, j + 1] = pw[h, j] + weight[i]
                pw[1 - h, j + 1] = pw[1 - h, j]
            tx0 = px[0, bs]
            tx1 = px[1, bs]
            tw0 = pw[0, bs]
            tw1 = pw[1, bs]
            for i1 in range(bs + 1):
                for i2 in range(i1, bs + 1):
                    sx0 = px[0, i1] + px[0, i2]
                    qx_p0 = tx0 * p2 - sx0
                    qx_m0 = tx0 * m2 - sx0
                    q2_p0 = tw0 * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                    q2_m0 = tw0 * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                    sx1 = px[1, i1] + px[1, i2]
                    qx_p1 = tx1 * p2 - sx1
                    qx_m1 = tx1 * m2 - sx1
                    q2_p1 = tw1 * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                    q2_m1 = tw1 * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                    for k in range(4):
                        # k: sign pattern of the two halves (0: ++, 1: +-, 2: -+, 3: --)
                        sqx = (qx_p0 if k < 2 else qx_m0) + (qx_p1 if k % 2 == 0 else qx_m1)
                        sq2 = (q2_p0 if k < 2 else q2_m0) + (q2_p1 if k % 2 == 0 else q2_m1)
                        if sq2 > 0 and sqx * sqx > best_score * sq2:
                            scale = sqx / sq2
                            best_score = scale * sqx
                            besti1 = i1
                            besti2 = i2
                            best_k = k
            if besti1 < 0 or besti2 < 0 or best_k < 0:
                scales[ib] = 0
                shifts[ib] = 0
                continue
            for j in range(0, besti1):
                L[idx[j]] = 0
            for j in range(besti1, besti2):
                L[idx[j]] = 1
            for j in range(besti2, bs):
                L[idx[j]] = 2
            if scale < 0:
                for j in range(bs):
                    L[j] = 2 - L[j]
                scale = -scale
                best_k = 3 - best_k
            all_on_grid = True
            for k in range(bs // 8):
                if k == 0:
                    xx = x_p if best_k < 2 else x_m
                else:
                    xx = x_p if best_k % 2 == 0 else x_m
                gi = kmap[_code(L, 8 * k, 8, 2)]
                if gi < 0:
                    all_on_grid = False
                    gi = _find_best_neighbour1(neigh, -gi - 1, pos, xb, 8 * k, weight, scale, xx, L, 2048)
                index[k] = gi
            if not all_on_grid:
                sqx = F(0.0)
                sq2 = F(0.0)
                for k in range(bs // 8):
                    if k == 0:
                        xx = x_p if best_k < 2 else x_m
                    else:
                        xx = x_p if best_k % 2 == 0 else x_m
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(pos[index[k], j] - 1) // 2]
                        sqx += w * q * xb[8 * k + j]
                        sq2 += w * q * q
                if sqx > 0 and sq2 > 0:
                    scale = sqx / sq2
            y[b + 2 * ib] = index[0] & 255
            y[b + 2 * ib + 1] = index[1] & 255
            y[b + 32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) & 0xFF
            scales[ib] = scale
            shifts[ib] = best_k
            max_scale = max(max_scale, scale)
        if max_scale == 0:
            continue
        d = max_scale / F(15.0)
        idd = F(1.0) / d
        sqx = F(0.0)
        sq2 = F(0.0)
        for ib in range(QK_K // bs):
            l = nearest_int(F(0.5) * (idd * scales[ib] - F(1.0)))
            l = max(0, min(7, l))
            sc[ib // 4] |= l << (3 * (ib % 4))
            y[b + 32 + ib] |= masks[shifts[ib]]
            xb = xbl[bs * ib:bs * ib + bs]
            o = QK_K * ibl + bs * ib
            if has_qw:
                for i in range(bs):
                    weight[i] = qw[o + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            else:
                for i in range(bs):
                    weight[i] = xb[i] * xb[i]
            for k in range(bs // 8):
                if k == 0:
                    xx = x_p if shifts[ib] < 2 else x_m
                else:
                    xx = x_p if shifts[ib] % 2 == 0 else x_m
                g = np.int64(y[b + 2 * ib + k]) + ((np.int64(y[b + 32 + ib]) << (8 - 4 * k)) & 0x700)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(pos[g, j] - 1) // 2] * F(2 * l + 1)
                    sqx += w * q * xb[8 * k + j]
                    sq2 += w * q * q
        if sq2 > 0:
            d = sqx / sq2
        s = fp32_to_fp16_bits(d * F(1.1125))
        sc[0] |= (s & 0x000F) << 12
        sc[1] |= (s & 0x00F0) << 8
        sc[2] |= (s & 0x0F00) << 4
        sc[3] |= (s & 0xF000)
        for k in range(4):
            put_u16(y, b + 48 + 2 * k, sc[k] & 0xFFFF)


# ----------------------------------------------------------------- row driver

K_IQ4_XS, K_IQ3_S, K_IQ3_XXS, K_IQ2_S, K_IQ2_XS, K_IQ2_XXS, K_IQ1_S, K_IQ1_M = range(8)
_GRID = {K_IQ3_S: "iq3s", K_IQ3_XXS: "iq3xxs", K_IQ2_S: "iq2s", K_IQ2_XS: "iq2xs",
         K_IQ2_XXS: "iq2xxs", K_IQ1_S: "iq1s", K_IQ1_M: "iq1s"}
_BYTES = {K_IQ4_XS: 136, K_IQ3_S: 110, K_IQ3_XXS: 98, K_IQ2_S: 82, K_IQ2_XS: 74, K_IQ2_XXS: 66,
          K_IQ1_S: 50, K_IQ1_M: 56}


@njit(cache=True, nogil=True, error_model="numpy")
def encode_rows(x, qw, has_qw, kind, pos, kmap, neigh, out, r0, r1):
    for r in range(r0, r1):
        xr = x[r]
        yr = out[r]
        if kind == K_IQ4_XS:
            _iq4_xs(xr, yr, qw, has_qw)
        elif kind == K_IQ3_S:
            _iq3_s(xr, yr, qw, has_qw, pos, kmap, neigh)
        elif kind == K_IQ3_XXS:
            _iq3_xxs(xr, yr, qw, has_qw, pos, kmap, neigh)
        elif kind == K_IQ2_XS:
            _iq2_xs(xr, yr, qw, pos, kmap, neigh)
        elif kind == K_IQ2_XXS:
            _iq2_xxs(xr, yr, qw, pos, kmap, neigh)
        elif kind == K_IQ2_S:
            _iq2_s(xr, yr, qw, has_qw, pos, kmap, neigh)
        elif kind == K_IQ1_S:
            _iq1_s(xr, yr, qw, pos, kmap, neigh)
        elif kind == K_IQ1_M:
            _iq1_m(xr, yr, qw, has_qw, pos, kmap, neigh)


_NEEDS_QW = (K_IQ2_XXS, K_IQ2_XS, K_IQ1_S)
_NO_GRID = (np.zeros((1, 1), np.int8), np.zeros(1, np.int32), np.zeros(1, np.uint16))


def _encoder(kind):
    bpb = _BYTES[kind]

    def encode(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        x, qw, has_qw = rows_and_weights(x, imatrix, QK_K, "i-quant encoder")
        if kind in _NEEDS_QW and not has_qw:
            raise ValueError("this i-quant type needs an importance matrix")
        n_rows, n = x.shape
        out = np.zeros((n_rows, n // QK_K * bpb), np.uint8)
        pos, kmap, neigh = grids.get(_GRID[kind]) if kind in _GRID else _NO_GRID
        return run_rows(encode_rows, x, out, qw, has_qw, kind, pos, kmap, neigh)
    return encode


TYPES = [
    QuantType(GGMLType.IQ2_XXS, LAYOUT_IQ2_XXS, decode_iq2_xxs, _encoder(K_IQ2_XXS), lattice.T4S),
    QuantType(GGMLType.IQ2_XS, LAYOUT_IQ2_XS, decode_iq2_xs, _encoder(K_IQ2_XS), lattice.T4S),
    QuantType(GGMLType.IQ2_S, LAYOUT_IQ2_S, decode_iq2_s, _encoder(K_IQ2_S), lattice.T4S),
    QuantType(GGMLType.IQ3_XXS, LAYOUT_IQ3_XXS, decode_iq3_xxs, _encoder(K_IQ3_XXS), lattice.T4S),
    QuantType(GGMLType.IQ3_S, LAYOUT_IQ3_S, decode_iq3_s, _encoder(K_IQ3_S), lattice.T4S),
    QuantType(GGMLType.IQ1_S, LAYOUT_IQ1_S, decode_iq1_s, _encoder(K_IQ1_S), lattice.T4S),
    QuantType(GGMLType.IQ1_M, LAYOUT_IQ1_M, decode_iq1_m, _encoder(K_IQ1_M), lattice.T4S),
    QuantType(GGMLType.IQ4_XS, LAYOUT_IQ4_XS, decode_iq4_xs, _encoder(K_IQ4_XS), table.T4X),
]
