"""Decoders of the 32-weight block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the
other small-block formats (Q1_0, Q2_0, Q8_K).

Every decoder reproduces ggml's ``dequantize_row_*`` bit for bit: the same
float32 operations in the same order (integers are converted to float32 first,
then multiplied, then offset).  Signature: ``decode(src: uint8[::1] of n whole
blocks, dst: float32[::1] of n * block_size)``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .floats import check_blocks, f16_at, f32_at, sext8, u32_at

LAYOUT_Q4_0 = """\
Q4_0: 32 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  4-bit quants: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = (q - 8) * d"""


@njit(cache=True, nogil=True)
def decode_q4_0(src, dst):
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
            dst[y + j] = np.float32(np.int32(b & 0xF) - 8) * d
            dst[y + j + 16] = np.float32(np.int32(b >> 4) - 8) * d


LAYOUT_Q4_1 = """\
Q4_1: 32 weights in 20 bytes
  d   2 bytes  fp16 scale
  m   2 bytes  fp16 minimum
  qs 16 bytes  4-bit quants: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = q * d + m"""


@njit(cache=True, nogil=True)
def decode_q4_1(src, dst):
    nb = check_blocks(src, dst, 20, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 20 * i
        y = 32 * i
        d = f16_at(src, o)
        m = f16_at(src, o + 2)
        for j in range(qk // 2):
            b = src[o + 4 + j]
            dst[y + j] = np.float32(b & 0xF) * d + m
            dst[y + j + 16] = np.float32(b >> 4) * d + m


LAYOUT_Q5_0 = """\
Q5_0: 32 weights in 22 bytes
  d   2 bytes  fp16 scale
  qh  4 bytes  uint32 (little-endian): bit j is the 5th bit of weight j
  qs 16 bytes  low 4 bits: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = (q - 16) * d"""


@njit(cache=True, nogil=True)
def decode_q5_0(src, dst):
    nb = check_blocks(src, dst, 22, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 22 * i
        y = 32 * i
        d = f16_at(src, o)
        qh = u32_at(src, o + 2)
        for j in range(qk // 2):
            b = np.uint32(src[o + 6 + j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            dst[y + j] = np.float32(np.int32((b & 0xF) | h0) - 16) * d
            dst[y + j + 16] = np.float32(np.int32((b >> 4) | h1) - 16) * d


LAYOUT_Q5_1 = """\
Q5_1: 32 weights in 24 bytes
  d   2 bytes  fp16 scale
  m   2 bytes  fp16 minimum
  qh  4 bytes  uint32 (little-endian): bit j is the 5th bit of weight j
  qs 16 bytes  low 4 bits: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = q * d + m"""


@njit(cache=True, nogil=True)
def decode_q5_1(src, dst):
    nb = check_blocks(src, dst, 24, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 24 * i
        y = 32 * i
        d = f16_at(src, o)
        m = f16_at(src, o + 2)
        qh = u32_at(src, o + 4)
        for j in range(qk // 2):
            b = np.uint32(src[o + 8 + j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            dst[y + j] = np.float32((b & 0xF) | h0) * d + m
            dst[y + j + 16] = np.float32((b >> 4) | h1) * d + m


LAYOUT_Q8_0 = """\
Q8_0: 32 weights in 34 bytes
  d   2 bytes  fp16 scale
  qs 32 bytes  int8 quants, weight j in byte j
  weight = q * d"""


@njit(cache=True, nogil=True)
def decode_q8_0(src, dst):
    nb = check_blocks(src, dst, 34, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 34 * i
        y = 32 * i
        d = f16_at(src, o)
        for j in range(qk):
            dst[y + j] = np.float32(sext8(src[o + 2 + j])) * d


LAYOUT_Q8_1 = """\
Q8_1: 32 weights in 36 bytes (activation format of the legacy dot products)
  d   2 bytes  fp16 scale
  s   2 bytes  fp16 d * sum(q) (not needed to decode)
  qs 32 bytes  int8 quants
  weight = q * d  (ggml has no decoder for this type; this is the plain inverse of its encoder)"""


@njit(cache=True, nogil=True)
def decode_q8_1(src, dst):
    nb = check_blocks(src, dst, 36, 32)
    if nb == 0:
        return
    qk = dst.size // nb  # == 32, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 36 * i
        y = 32 * i
        d = f16_at(src, o)
        for j in range(qk):
            dst[y + j] = np.float32(sext8(src[o + 4 + j])) * d


LAYOUT_Q8_K = """\
Q8_K: 256 weights in 292 bytes (intermediate format of the k-quant dot products)
  d       4 bytes  float32 scale
  qs    256 bytes  int8 quants
  bsums  32 bytes  int16 sums of each group of 16 quants (not needed to decode)
  weight = d * q"""


@njit(cache=True, nogil=True)
def decode_q8_k(src, dst):
    nb = check_blocks(src, dst, 292, 256)
    if nb == 0:
        return
    qk = dst.size // nb  # == 256, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 292 * i
        y = 256 * i
        d = f32_at(src, o)
        for j in range(qk):
            dst[y + j] = d * np.float32(sext8(src[o + 4 + j]))


LAYOUT_Q1_0 = """\
Q1_0: 128 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  one bit per weight, weight j at bit j%8 of byte j/8
  weight = +d if the bit is set else -d"""


@njit(cache=True, nogil=True)
def decode_q1_0(src, dst):
    nb = check_blocks(src, dst, 18, 128)
    if nb == 0:
        return
    qk = dst.size // nb  # == 128, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 18 * i
        y = 128 * i
        d = f16_at(src, o)
        for j in range(qk):
            bit = (src[o + 2 + (j >> 3)] >> (j & 7)) & 1
            dst[y + j] = d if bit else -d


LAYOUT_Q2_0 = """\
Q2_0: 64 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  2 bits per weight, weight j at bits 2*(j%4) of byte j/4; 0,1,2,3 mean -1,0,+1,+2
  weight = (q - 1) * d"""


@njit(cache=True, nogil=True)
def decode_q2_0(src, dst):
    nb = check_blocks(src, dst, 18, 64)
    if nb == 0:
        return
    qk = dst.size // nb  # == 64, as a run-time loop bound (see floats)
    for i in range(nb):
        o = 18 * i
        y = 64 * i
        d = f16_at(src, o)
        for j in range(qk):
            q = (src[o + 2 + (j >> 2)] >> (2 * (j & 3))) & 3
            dst[y + j] = np.float32(np.int32(q) - 1) * d
