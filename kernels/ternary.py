"""Decoders of the ternary types (TQ1_0, TQ2_0) and the FP4 micro-scaling types
(MXFP4, NVFP4).

Bit-exact with ggml's ``dequantize_row_*``.  Signature: ``decode(src: uint8[::1] of
n whole blocks, dst: float32[::1] of n * block_size)``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .floats import check_blocks, e8m0_half_to_f32, f16_at, ue4m3_to_f32
from .iquant_tables import kvalues_mxfp4

_POW3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.int32)

LAYOUT_TQ1_0 = """\
TQ1_0: 256 weights in 54 bytes (base-3 digits, 1.6875 bits per weight)
  qs 48 bytes  5 ternary digits per byte, stored as ceil(q * 256 / 243); digit n of byte b is
               ((b * 3^n mod 256) * 3) >> 8.  Bytes 0..31 give weights 32n + m (m < 32, n < 5),
               bytes 32..47 give weights 160 + 16n + m (m < 16, n < 5)
  qh  4 bytes  4 digits per byte, same scheme: weight 240 + 4n + j is digit n of byte j
  d   2 bytes  fp16 scale
  weight = (digit - 1) * d"""


@njit(cache=True, nogil=True)
def _trit(b, n):
    q = (np.int32(b) * _POW3[n]) & 0xFF
    return np.float32(((q * 3) >> 8) - 1)


@njit(cache=True, nogil=True)
def decode_tq1_0(src, dst):
    nb = check_blocks(src, dst, 54, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 54 * i
        y = 256 * i
        d = f16_at(src, o + 52)
        for n in range(5):
            for m in range(qk // 8):
                dst[y + 32 * n + m] = _trit(src[o + m], n) * d
        for n in range(5):
            for m in range(qk // 16):
                dst[y + 160 + 16 * n + m] = _trit(src[o + 32 + m], n) * d
        for n in range(4):
            for j in range(4):
                dst[y + 240 + 4 * n + j] = _trit(src[o + 48 + j], n) * d


LAYOUT_TQ2_0 = """\
TQ2_0: 256 weights in 66 bytes
  qs 64 bytes  2-bit digits: weight 128h + 32l + m is bits 2l..2l+1 of byte 32h + m (0, 1, 2 mean -1, 0, +1)
  d   2 bytes  fp16 scale
  weight = (q - 1) * d"""


@njit(cache=True, nogil=True)
def decode_tq2_0(src, dst):
    nb = check_blocks(src, dst, 66, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 66 * i
        d = f16_at(src, o + 64)
        for h in range(2):
            for l in range(4):
                y = 256 * i + 128 * h + 32 * l
                for m in range(qk // 8):
                    q = np.int32((src[o + 32 * h + m] >> (2 * l)) & 3)
                    dst[y + m] = np.float32(q - 1) * d


LAYOUT_MXFP4 = """\
MXFP4: 32 weights in 17 bytes
  e   1 byte   E8M0 shared exponent: scale 2^(e - 127), applied halved because the element table is doubled
  qs 16 bytes  4-bit E2M1 codes: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = kvalues_mxfp4[q] * 2^(e - 128)"""


@njit(cache=True, nogil=True)
def decode_mxfp4(src, dst):
    nb = check_blocks(src, dst, 17, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 17 * i
        y = 32 * i
        d = e8m0_half_to_f32(src[o])
        for j in range(qk // 2):
            b = src[o + 1 + j]
            dst[y + j] = np.float32(kvalues_mxfp4[b & 0xF]) * d
            dst[y + j + 16] = np.float32(kvalues_mxfp4[b >> 4]) * d


LAYOUT_NVFP4 = """\
NVFP4: 64 weights in 36 bytes, 4 sub-blocks of 16
  d   4 bytes  one unsigned E4M3 scale per sub-block (applied halved: the element table is doubled)
  qs 32 bytes  4-bit E2M1 codes; sub-block s: byte 8s + j holds weight 16s + j (low nibble)
               and weight 16s + 8 + j (high nibble)
  weight = kvalues_mxfp4[q] * ue4m3(d[s]) / 2"""


@njit(cache=True, nogil=True)
def decode_nvfp4(src, dst):
    nb = check_blocks(src, dst, 36, 64)
    if nb == 0:
        return
    qk = dst.size // nb  # == 64, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 36 * i
        for s in range(4):
            d = ue4m3_to_f32(src[o + s])
            y = 64 * i + 16 * s
            for j in range(qk // 8):
                b = src[o + 4 + 8 * s + j]
                dst[y + j] = np.float32(kvalues_mxfp4[b & 0xF]) * d
                dst[y + j + 8] = np.float32(kvalues_mxfp4[b >> 4]) * d
