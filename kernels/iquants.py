"""Decoders of the i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S)
and the non-linear 4-bit types (IQ4_NL, IQ4_XS).

The lattice types store, per group of 8 (or 4) weights, an index into a fixed grid
of magnitudes (see ``iquant_tables``) plus sign bits.  Bit-exact with ggml's
``dequantize_row_iq*``: the group factor is formed in float32 exactly as there,
then ``weight = factor * grid value``, times -1 where the sign bit is set.
Signature: ``decode(src: uint8[::1] of n whole blocks, dst: float32[::1] of n * 256 or 32)``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .floats import check_blocks, f16_at, f16_bits_to_f32, u16_at, u32_at
from .iquant_tables import (IQ1S_DELTA, iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8,
                            iq3s_grid_u8, iq3xxs_grid_u8, ksigns_iq2xs, kvalues_iq4nl)

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
    nb = check_blocks(src, dst, 66, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 74, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 82, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 98, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 110, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 50, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
    nb = check_blocks(src, dst, 56, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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


LAYOUT_IQ4_NL = """\
IQ4_NL: 32 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  4-bit indices into kvalues_iq4nl: byte j holds weight j (low nibble) and j+16 (high)
  weight = d * kvalues_iq4nl[q]"""


@njit(cache=True, nogil=True)
def decode_iq4_nl(src, dst):
    nb = check_blocks(src, dst, 18, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 18 * i
        y = 32 * i
        d = f16_at(src, o)
        for j in range(qk // 2):
            b = src[o + 2 + j]
            dst[y + j] = d * np.float32(kvalues_iq4nl[b & 0xF])
            dst[y + j + 16] = d * np.float32(kvalues_iq4nl[b >> 4])


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
    nb = check_blocks(src, dst, 136, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
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
