"""Decoders of the k-quants (Q2_K .. Q6_K): 256-weight super-blocks made of
16 or 32-weight sub-blocks with quantized sub-block scales.

Bit-exact with ggml's ``dequantize_row_q*_K``: the sub-block factors
(``d * scale`` and ``dmin * min``) are formed in float32 first and each weight is
``factor * q - offset`` in float32.  Signature: ``decode(src: uint8[::1] of n
whole blocks, dst: float32[::1] of n * 256)``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .floats import check_blocks, f16_at, sext8

LAYOUT_Q2_K = """\
Q2_K: 256 weights in 84 bytes, 16 sub-blocks of 16
  scales 16 bytes  per sub-block: low nibble = scale, high nibble = min (4 bits each)
  qs     64 bytes  2-bit quants; weight 128*h + 32*k + l (l < 32) is bits 2k..2k+1 of byte 32*h + l
  d       2 bytes  fp16 super-block scale of the scales
  dmin    2 bytes  fp16 super-block scale of the mins
  weight = (d * scale) * q - (dmin * min), sub-block s = weight index / 16"""


@njit(cache=True, nogil=True)
def decode_q2_k(src, dst):
    nb = check_blocks(src, dst, 84, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 84 * i
        d = f16_at(src, o + 80)
        dmin = f16_at(src, o + 82)
        for h in range(2):
            q = o + 16 + 32 * h
            for k in range(4):
                shift = 2 * k
                for half in range(2):
                    s = 8 * h + 2 * k + half
                    sc = src[o + s]
                    dl = d * np.float32(sc & 0xF)
                    ml = dmin * np.float32(sc >> 4)
                    y = 256 * i + 16 * s
                    for l in range(qk // 16):
                        dst[y + l] = dl * np.float32((src[q + 16 * half + l] >> shift) & 3) - ml


LAYOUT_Q3_K = """\
Q3_K: 256 weights in 110 bytes, 16 sub-blocks of 16
  hmask  32 bytes  high bit of each quant: weight 128*h + 32*k + l has bit (4h + k) of byte l
  qs     64 bytes  low 2 bits; weight 128*h + 32*k + l is bits 2k..2k+1 of byte 32*h + l
  scales 12 bytes  16 six-bit scales (low 4 bits in bytes 0..7, high 2 bits in bytes 8..11), stored +32
  d       2 bytes  fp16 super-block scale
  weight = (d * (scale - 32)) * (q - (0 if high bit set else 4))"""


@njit(cache=True, nogil=True)
def decode_q3_k(src, dst):
    nb = check_blocks(src, dst, 110, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 110 * i
        sc_o = o + 96
        d = f16_at(src, o + 108)
        for h in range(2):
            q = o + 32 + 32 * h
            for k in range(4):
                shift = 2 * k
                mask = 1 << (4 * h + k)
                for half in range(2):
                    s = 8 * h + 2 * k + half
                    g = s >> 2
                    low = (src[sc_o + (s & 3) + 4 * (g & 1)] >> (4 * (g >> 1))) & 0xF
                    high = (src[sc_o + 8 + (s & 3)] >> (2 * g)) & 3
                    dl = d * np.float32(np.int32(low | (high << 4)) - 32)
                    y = 256 * i + 16 * s
                    for l in range(qk // 16):
                        ll = 16 * half + l
                        qv = np.int32((src[q + ll] >> shift) & 3)
                        if (src[o + ll] & mask) == 0:
                            qv -= 4
                        dst[y + l] = dl * np.float32(qv)


LAYOUT_SCALES_K4 = """\
  scales 12 bytes  8 six-bit scales and 8 six-bit mins: for sub-block j < 4, scale = byte j & 63 and
                   min = byte j+4 & 63; for j >= 4, scale = (byte j+4 & 15) | (byte j-4 >> 6) << 4 and
                   min = (byte j+4 >> 4) | (byte j >> 6) << 4"""


@njit(cache=True, nogil=True)
def scale_min_k4(src, sc_o, j):
    """Sub-block j's (scale, min) from the 12 packed scale bytes at src[sc_o:]."""
    if j < 4:
        return src[sc_o + j] & 63, src[sc_o + j + 4] & 63
    sc = (src[sc_o + j + 4] & 0xF) | ((src[sc_o + j - 4] >> 6) << 4)
    m = (src[sc_o + j + 4] >> 4) | ((src[sc_o + j] >> 6) << 4)
    return sc, m


LAYOUT_Q4_K = """\
Q4_K: 256 weights in 144 bytes, 8 sub-blocks of 32
  d       2 bytes  fp16 super-block scale of the scales
  dmin    2 bytes  fp16 super-block scale of the mins
""" + LAYOUT_SCALES_K4 + """
  qs    128 bytes  4-bit quants: weights 64c + l (low nibble) and 64c + 32 + l (high nibble) in byte 32c + l
  weight = (d * scale) * q - (dmin * min)"""


@njit(cache=True, nogil=True)
def decode_q4_k(src, dst):
    nb = check_blocks(src, dst, 144, 256)
    if nb == 0:
        return
    for i in range(nb):
        o = 144 * i
        d = f16_at(src, o)
        dmin = f16_at(src, o + 2)
        for c in range(4):
            sc1, m1 = scale_min_k4(src, o + 4, 2 * c)
            sc2, m2 = scale_min_k4(src, o + 4, 2 * c + 1)
            d1 = d * np.float32(sc1)
            o1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            o2 = dmin * np.float32(m2)
            q = o + 16 + 32 * c
            y = 256 * i + 64 * c
            for l in range(32):
                b = src[q + l]
                dst[y + l] = d1 * np.float32(b & 0xF) - o1
                dst[y + 32 + l] = d2 * np.float32(b >> 4) - o2


LAYOUT_Q5_K = """\
Q5_K: 256 weights in 176 bytes, 8 sub-blocks of 32
  d       2 bytes  fp16 super-block scale of the scales
  dmin    2 bytes  fp16 super-block scale of the mins
""" + LAYOUT_SCALES_K4 + """
  qh     32 bytes  5th bits: weight 64c + l has bit 2c of byte l, weight 64c + 32 + l bit 2c+1
  qs    128 bytes  low 4 bits: weights 64c + l (low nibble) and 64c + 32 + l (high nibble) in byte 32c + l
  weight = (d * scale) * q - (dmin * min)"""


@njit(cache=True, nogil=True)
def decode_q5_k(src, dst):
    nb = check_blocks(src, dst, 176, 256)
    if nb == 0:
        return
    for i in range(nb):
        o = 176 * i
        d = f16_at(src, o)
        dmin = f16_at(src, o + 2)
        for c in range(4):
            sc1, m1 = scale_min_k4(src, o + 4, 2 * c)
            sc2, m2 = scale_min_k4(src, o + 4, 2 * c + 1)
            d1 = d * np.float32(sc1)
            o1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            o2 = dmin * np.float32(m2)
            q = o + 48 + 32 * c
            u1 = 1 << (2 * c)
            u2 = 2 << (2 * c)
            y = 256 * i + 64 * c
            for l in range(32):
                b = np.int32(src[q + l])
                hb = src[o + 16 + l]
                v1 = (b & 0xF) + (16 if hb & u1 else 0)
                v2 = (b >> 4) + (16 if hb & u2 else 0)
                dst[y + l] = d1 * np.float32(v1) - o1
                dst[y + 32 + l] = d2 * np.float32(v2) - o2


LAYOUT_Q6_K = """\
Q6_K: 256 weights in 210 bytes, 16 sub-blocks of 16
  ql    128 bytes  low 4 bits; in half h (128 weights): weights l and 64+l use the low and high nibble
                   of byte 64h + l, weights 32+l and 96+l those of byte 64h + 32 + l (l < 32)
  qh     64 bytes  high 2 bits; byte 32h + l holds them for weights l, 32+l, 64+l, 96+l of half h
  scales 16 bytes  int8 sub-block scales
  d       2 bytes  fp16 super-block scale
  weight = (d * scale) * (q - 32)"""


@njit(cache=True, nogil=True)
def decode_q6_k(src, dst):
    nb = check_blocks(src, dst, 210, 256)
    if nb == 0:
        return
    for i in range(nb):
        o = 210 * i
        d = f16_at(src, o + 208)
        for h in range(2):
            ql = o + 64 * h
            qh = o + 128 + 32 * h
            sc = o + 192 + 8 * h
            y = 256 * i + 128 * h
            for g in range(2):
                # weights y + 16g + l (+0, +32, +64, +96) use scales sc[g], sc[g+2], sc[g+4], sc[g+6]
                f1 = d * np.float32(sext8(src[sc + g]))
                f2 = d * np.float32(sext8(src[sc + g + 2]))
                f3 = d * np.float32(sext8(src[sc + g + 4]))
                f4 = d * np.float32(sext8(src[sc + g + 6]))
                for l in range(16 * g, 16 * g + 16):
                    a = np.int32(src[ql + l])
                    b = np.int32(src[ql + 32 + l])
                    hb = np.int32(src[qh + l])
                    dst[y + l] = f1 * np.float32(((a & 0xF) | ((hb & 3) << 4)) - 32)
                    dst[y + 32 + l] = f2 * np.float32(((b & 0xF) | (((hb >> 2) & 3) << 4)) - 32)
                    dst[y + 64 + l] = f3 * np.float32(((a >> 4) | (((hb >> 4) & 3) << 4)) - 32)
                    dst[y + 96 + l] = f4 * np.float32(((b >> 4) | (((hb >> 6) & 3) << 4)) - 32)
