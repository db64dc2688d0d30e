"""Family: the block types with one scale per block of 32 weights or more (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q8_1, IQ4_NL, MXFP4, and the decode-only Q1_0, Q2_0): layouts, decoders and encoders.

Every decoder reproduces ggml's ``dequantize_row_*`` bit for bit: the same float32 operations in
the same order (integers are converted to float32 first, then multiplied, then offset).
Signature: ``decode(src: uint8[::1] of n whole blocks, dst: float32[::1] of n * block_size)``.

Encoders: without an importance matrix ggml uses the deterministic reference rounding
(quantize_row_*_ref); with one, Q4_0/Q5_0 search a symmetric scale and Q4_1/Q5_1 a (scale, min)
pair weighted by qw[j] * sqrt(sigma2 + x[j]^2).  Q8_0, Q8_1 and MXFP4 ignore the importance
matrix, as ggml does.  IQ4_NL always takes the search path (quantize_iq4_nl), with weights x^2
when there is no importance matrix; IQ4_XS (kernels.iquants) shares it (``iq4_impl``).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .encoders.common import (F, GROUP_MAX_EPS, best_index_int8, make_qkx3_quants, make_qx_quants, nearest_int,
                              put_f16, put_u16, roundf, rows_and_weights, run_rows)
from .iquant_tables import kvalues_iq4nl, kvalues_mxfp4
from .kinds import byte, nibble, table
from .numerics import check_blocks, e8m0_half_to_f32, f16_at, sext8, u32_at
from .types import GGMLType, QuantType

# ================================================================= decoders


LAYOUT_Q4_0 = """\
Q4_0: 32 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  4-bit quants: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = (q - 8) * d"""


@njit(cache=True, nogil=True)
def decode_q4_0(src, dst):
    nb, qk = check_blocks(src, dst, 18, 32)
    for i in range(nb):
        o, y = 18 * i, 32 * i
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
    nb, qk = check_blocks(src, dst, 20, 32)
    for i in range(nb):
        o, y = 20 * i, 32 * i
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
    nb, qk = check_blocks(src, dst, 22, 32)
    for i in range(nb):
        o, y = 22 * i, 32 * i
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
    nb, qk = check_blocks(src, dst, 24, 32)
    for i in range(nb):
        o, y = 24 * i, 32 * i
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
    nb, qk = check_blocks(src, dst, 34, 32)
    for i in range(nb):
        o, y = 34 * i, 32 * i
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
    nb, qk = check_blocks(src, dst, 36, 32)
    for i in range(nb):
        o, y = 36 * i, 32 * i
        d = f16_at(src, o)
        for j in range(qk):
            dst[y + j] = np.float32(sext8(src[o + 4 + j])) * d


LAYOUT_Q1_0 = """\
Q1_0: 128 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  one bit per weight, weight j at bit j%8 of byte j/8
  weight = +d if the bit is set else -d"""


@njit(cache=True, nogil=True)
def decode_q1_0(src, dst):
    nb, qk = check_blocks(src, dst, 18, 128)
    for i in range(nb):
        o, y = 18 * i, 128 * i
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
    nb, qk = check_blocks(src, dst, 18, 64)
    for i in range(nb):
        o, y = 18 * i, 64 * i
        d = f16_at(src, o)
        for j in range(qk):
            q = (src[o + 2 + (j >> 2)] >> (2 * (j & 3))) & 3
            dst[y + j] = np.float32(np.int32(q) - 1) * d


LAYOUT_IQ4_NL = """\
IQ4_NL: 32 weights in 18 bytes
  d   2 bytes  fp16 scale
  qs 16 bytes  4-bit indices into kvalues_iq4nl: byte j holds weight j (low nibble) and j+16 (high)
  weight = d * kvalues_iq4nl[q]"""


@njit(cache=True, nogil=True)
def decode_iq4_nl(src, dst):
    nb, qk = check_blocks(src, dst, 18, 32)
    for i in range(nb):
        o, y = 18 * i, 32 * i
        d = f16_at(src, o)
        for j in range(qk // 2):
            b = src[o + 2 + j]
            dst[y + j] = d * np.float32(kvalues_iq4nl[b & 0xF])
            dst[y + j + 16] = d * np.float32(kvalues_iq4nl[b >> 4])


LAYOUT_MXFP4 = """\
MXFP4: 32 weights in 17 bytes
  e   1 byte   E8M0 shared exponent: scale 2^(e - 127), applied halved because the element table is doubled
  qs 16 bytes  4-bit E2M1 codes: byte j holds weight j (low nibble) and weight j+16 (high nibble)
  weight = kvalues_mxfp4[q] * 2^(e - 128)"""


@njit(cache=True, nogil=True)
def decode_mxfp4(src, dst):
    nb, qk = check_blocks(src, dst, 17, 32)
    for i in range(nb):
        o, y = 17 * i, 32 * i
        d = e8m0_half_to_f32(src[o])
        for j in range(qk // 2):
            b = src[o + 1 + j]
            dst[y + j] = np.float32(kvalues_mxfp4[b & 0xF]) * d
            dst[y + j + 16] = np.float32(kvalues_mxfp4[b >> 4]) * d


# ================================================================= encoders


KVALUES_IQ4NL = kvalues_iq4nl
KVALUES_MXFP4 = kvalues_mxfp4

# kind codes for the shared row driver
K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, K_Q8_1, K_IQ4_NL, K_MXFP4 = range(8)


# ----------------------------------------------------------------- reference (no imatrix)

@njit(cache=True, error_model="numpy")
def _absmax_signed(x, o):
    amax = F(0.0)
    mx = F(0.0)
    for j in range(32):
        v = x[o + j]
        if amax < abs(v):
            amax = abs(v)
            mx = v
    return mx


@njit(cache=True, error_model="numpy")
def _q4_0_ref(x, y):
    nb = x.shape[0] // 32
    for i in range(nb):
        o = 32 * i
        b = 18 * i
        mx = _absmax_signed(x, o)
        d = mx / F(-8.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        for j in range(16):
            x0 = x[o + j] * idd
            x1 = x[o + 16 + j] * idd
            xi0 = min(15, int(np.float32(x0 + F(8.5))))
            xi1 = min(15, int(np.float32(x1 + F(8.5))))
            y[b + 2 + j] = xi0 | (xi1 << 4)


@njit(cache=True, error_model="numpy")
def _minmax(x, o):
    mn = F(3.4028234663852886e38)
    mx = F(-3.4028234663852886e38)
    for j in range(32):
        v = x[o + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


@njit(cache=True, error_model="numpy")
def _q4_1_ref(x, y):
    nb = x.shape[0] // 32
    for i in range(nb):
        o = 32 * i
        b = 20 * i
        mn, mx = _minmax(x, o)
        d = (mx - mn) / F(15.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        put_f16(y, b + 2, mn)
        for j in range(16):
            x0 = (x[o + j] - mn) * idd
            x1 = (x[o + 16 + j] - mn) * idd
            xi0 = min(15, int(np.float32(x0 + F(0.5))))
            xi1 = min(15, int(np.float32(x1 + F(0.5))))
            y[b + 4 + j] = xi0 | (xi1 << 4)


@njit(cache=True, error_model="numpy")
def _put_q5(y, b, qh_off, qs_off, L):
    qh = 0
    for j in range(16):
        xi0 = L[j]
        xi1 = L[j + 16]
        y[qs_off + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4)
        qh |= ((xi0 & 0x10) >> 4) << j
        qh |= ((xi1 & 0x10) >> 4) << (j + 16)
    for k in range(4):
        y[qh_off + k] = (qh >> (8 * k)) & 0xFF


@njit(cache=True, error_model="numpy")
def _q5_0_ref(x, y):
    nb = x.shape[0] // 32
    L = np.empty(32, np.int64)
    for i in range(nb):
        o = 32 * i
        b = 22 * i
        mx = _absmax_signed(x, o)
        d = mx / F(-16.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        for j in range(32):
            L[j] = min(31, int(np.float32(x[o + j] * idd + F(16.5))))
        _put_q5(y, b, b + 2, b + 6, L)


@njit(cache=True, error_model="numpy")
def _q5_1_ref(x, y):
    nb = x.shape[0] // 32
    L = np.empty(32, np.int64)
    for i in range(nb):
        o = 32 * i
        b = 24 * i
        mn, mx = _minmax(x, o)
        d = (mx - mn) / F(31.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        put_f16(y, b + 2, mn)
        for j in range(32):
            L[j] = int(np.float32((x[o + j] - mn) * idd + F(0.5))) & 0xFF
        _put_q5(y, b, b + 4, b + 8, L)


@njit(cache=True, error_model="numpy")
def _q8_0(x, y):
    nb = x.shape[0] // 32
    for i in range(nb):
        o = 32 * i
        b = 34 * i
        amax = F(0.0)
        for j in range(32):
            amax = max(amax, abs(x[o + j]))
        d = amax / F(127.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        for j in range(32):
            y[b + 2 + j] = roundf(x[o + j] * idd) & 0xFF


@njit(cache=True, error_model="numpy")
def _q8_1(x, y):
    nb = x.shape[0] // 32
    for i in range(nb):
        o = 32 * i
        b = 36 * i
        amax = F(0.0)
        for j in range(32):
            amax = max(amax, abs(x[o + j]))
        d = amax / F(127.0)
        idd = F(1.0) / d if d != 0 else F(0.0)
        put_f16(y, b, d)
        s = 0
        for j in range(32):
            q = roundf(x[o + j] * idd)
            q = ((q + 128) & 0xFF) - 128  # int8 store
            y[b + 4 + j] = q & 0xFF
            s += q
        put_f16(y, b + 2, F(s) * d)


@njit(cache=True, error_model="numpy")
def _best_index_mxfp4(v, e):
    best_index = 0
    best_err = abs(F(KVALUES_MXFP4[0]) * e - v)
    for i in range(1, 16):
        err = abs(F(KVALUES_MXFP4[i]) * e - v)
        if err < best_err:
            best_index = i
            best_err = err
    return best_index


@njit(cache=True, error_model="numpy")
def _mxfp4(x, y):
    nb = x.shape[0] // 32
    for i in range(nb):
        o = 32 * i
        b = 17 * i
        amax = F(0.0)
        for j in range(32):
            if amax < abs(x[o + j]):
                amax = abs(x[o + j])
        e = 0
        if amax > 0:
            e = int(np.float32(np.floor(np.log2(amax)) - F(2.0) + F(127.0))) & 0xFF
        d = e8m0_half_to_f32(e)
        y[b] = e
        for j in range(16):
            x0 = _best_index_mxfp4(x[o + j], d)
            x1 = _best_index_mxfp4(x[o + 16 + j], d)
            y[b + 1 + j] = x0 | (x1 << 4)


# ----------------------------------------------------------------- imatrix-aware

@njit(cache=True, error_model="numpy")
def _row_sigma2(x):
    s = F(0.0)
    for j in range(x.shape[0]):
        s += x[j] * x[j]
    return s / F(x.shape[0])


@njit(cache=True, error_model="numpy")
def _q4_0_im(x, y, qw):
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int8)
    for ib in range(x.shape[0] // 32):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j])
        d = make_qx_quants(32, 8, xb, L, 1, weight, True)
        b = 18 * ib
        put_f16(y, b, d)
        for j in range(16):
            y[b + 2 + j] = L[j] | (L[j + 16] << 4)


@njit(cache=True, error_model="numpy")
def _q5_0_im(x, y, qw):
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.int8)
    Li = np.empty(32, np.int64)
    for ib in range(x.shape[0] // 32):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j])
        d = make_qx_quants(32, 16, xb, L, 1, weight, True)
        b = 22 * ib
        put_f16(y, b, d)
        for j in range(32):
            Li[j] = L[j] & 0xFF
        _put_q5(y, b, b + 2, b + 6, Li)


@njit(cache=True, error_model="numpy")
def _q4_1_im(x, y, qw):
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.uint8)
    Laux = np.empty(32, np.uint8)
    for ib in range(x.shape[0] // 32):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j])
        d, the_min = make_qkx3_quants(32, 15, xb, weight, L, Laux, F(-0.9), F(0.05), 36, False)
        b = 20 * ib
        put_f16(y, b, d)
        put_f16(y, b + 2, -the_min)
        for j in range(16):
            y[b + 4 + j] = L[j] | (L[j + 16] << 4)


@njit(cache=True, error_model="numpy")
def _q5_1_im(x, y, qw):
    sigma2 = _row_sigma2(x)
    weight = np.empty(32, np.float32)
    L = np.empty(32, np.uint8)
    Laux = np.empty(32, np.uint8)
    Li = np.empty(32, np.int64)
    for ib in range(x.shape[0] // 32):
        xb = x[32 * ib:32 * ib + 32]
        for j in range(32):
            weight[j] = qw[32 * ib + j] * np.sqrt(sigma2 + xb[j] * xb[j])
        d, the_min = make_qkx3_quants(32, 31, xb, weight, L, Laux, F(-0.9), F(0.05), 36, False)
        b = 24 * ib
        put_f16(y, b, d)
        put_f16(y, b + 2, -the_min)
        for j in range(32):
            Li[j] = L[j]
        _put_q5(y, b, b + 4, b + 8, Li)


# ----------------------------------------------------------------- IQ4_NL / IQ4_XS core

@njit(cache=True, error_model="numpy")
def iq4_impl(super_block_size, block_size, x, y, d_off, qs_off, sh_off, sl_off,
             scales, weight, L, values, qw, has_qw, ntry):
    """ggml's quantize_row_iq4_nl_impl for one super-block starting at x[0].

    Writes the fp16 scale at y[d_off], the packed nibbles at y[qs_off]; when the
    super-block holds several 32-blocks also the 6-bit block scales
    (high bits as a uint16 at y[sh_off], low nibbles at y[sl_off]).
    """
    sigma2 = F(0.0)
    for j in range(super_block_size):
        sigma2 += x[j] * x[j]
    sigma2 *= F(2.0) / F(super_block_size)
    for j in range(super_block_size // 2):
        y[qs_off + j] = 0
    put_u16(y, d_off, 0)
    max_scale = F(0.0)
    amax_scale = F(0.0)
    v0 = F(values[0])
    nblk = super_block_size // block_size
    for ib in range(nblk):
        o = ib * block_size
        if has_qw:
            for j in range(block_size):
                weight[j] = qw[o + j] * np.sqrt(sigma2 + x[o + j] * x[o + j])
        else:
            for j in range(block_size):
                weight[j] = x[o + j] * x[o + j]
        amax = F(0.0)
        mx = F(0.0)
        for j in range(block_size):
            ax = abs(x[o + j])
            if ax > amax:
                amax = ax
                mx = x[o + j]
        if amax < GROUP_MAX_EPS:
            scales[ib] = 0
            continue
        d = -mx / v0 if ntry > 0 else mx / v0
        idd = F(1.0) / d
        sumqx = F(0.0)
        sumq2 = F(0.0)
        for j in range(block_size):
            al = idd * x[o + j]
            l = best_index_int8(16, values, al)
            L[o + j] = l
            q = F(values[l])
            w = weight[j]
            sumqx += w * q * x[o + j]
            sumq2 += w * q * q
        d = sumqx / sumq2 if sumq2 > 0 else F(0.0)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            idd = (F(itry) + v0) / mx
            sumqx = F(0.0)
            sumq2 = F(0.0)
            for j in range(block_size):
                al = idd * x[o + j]
                l = best_index_int8(16, values, al)
                q = F(values[l])
                w = weight[j]
                sumqx += w * q * x[o + j]
                sumq2 += w * q * q
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        abs_d = abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d
    if nblk > 1:
        sh = 0
        d = -max_scale / F(32.0)
        put_f16(y, d_off, d)
        idd = F(1.0) / d if d != 0 else F(0.0)
        for ib in range(nblk):
            o = ib * block_size
            l = nearest_int(idd * scales[ib])
            l = max(-32, min(31, l))
            dl = d * F(l)
            idl = F(1.0) / dl if dl != 0 else F(0.0)
            for j in range(block_size):
                L[o + j] = best_index_int8(16, values, idl * x[o + j])
            l += 32
            l_l = l & 0xF
            l_h = l >> 4
            if ib % 2 == 0:
                y[sl_off + ib // 2] = l_l
            else:
                y[sl_off + ib // 2] |= l_l << 4
            sh |= l_h << (2 * (ib % 8))
        put_u16(y, sh_off, sh)
    else:
        put_f16(y, d_off, scales[0])
        if ntry > 0:
            idd = F(1.0) / scales[0] if scales[0] != 0 else F(0.0)
            for j in range(super_block_size):
                L[j] = best_index_int8(16, values, idd * x[j])
    for i in range(super_block_size // 32):
        for j in range(16):
            y[qs_off + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(cache=True, error_model="numpy")
def _iq4_nl(x, y, qw, has_qw):
    scales = np.zeros(1, np.float32)
    weight = np.empty(32, np.float32)
    L = np.zeros(32, np.uint8)
    for ib in range(x.shape[0] // 32):
        b = 18 * ib
        iq4_impl(32, 32, x[32 * ib:32 * ib + 32], y, b, b + 2, 0, 0, scales, weight, L,
                 KVALUES_IQ4NL, qw[32 * ib:32 * ib + 32] if has_qw else qw, has_qw, 7)


# ----------------------------------------------------------------- row driver

@njit(cache=True, nogil=True, error_model="numpy")
def encode_rows(x, qw, has_qw, kind, out, r0, r1):
    """Rows r0..r1 of x (n_rows, n_per_row) float32, qw (n_per_row,) -> out (n_rows, row_bytes) uint8."""
    for r in range(r0, r1):
        xr = x[r]
        yr = out[r]
        if kind == K_Q8_0:
            _q8_0(xr, yr)
        elif kind == K_Q8_1:
            _q8_1(xr, yr)
        elif kind == K_MXFP4:
            _mxfp4(xr, yr)
        elif kind == K_IQ4_NL:
            _iq4_nl(xr, yr, qw, has_qw)
        elif kind == K_Q4_0:
            if has_qw:
                _q4_0_im(xr, yr, qw)
            else:
                _q4_0_ref(xr, yr)
        elif kind == K_Q4_1:
            if has_qw:
                _q4_1_im(xr, yr, qw)
            else:
                _q4_1_ref(xr, yr)
        elif kind == K_Q5_0:
            if has_qw:
                _q5_0_im(xr, yr, qw)
            else:
                _q5_0_ref(xr, yr)
        elif kind == K_Q5_1:
            if has_qw:
                _q5_1_im(xr, yr, qw)
            else:
                _q5_1_ref(xr, yr)


def _encoder(kind, bpb, name):
    def encode(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        x, qw, has_qw = rows_and_weights(x, imatrix, 32, name)
        n_rows, n = x.shape
        out = np.zeros((n_rows, n // 32 * bpb), np.uint8)
        return run_rows(encode_rows, x, out, qw, has_qw, kind)
    return encode


encode_q4_0 = _encoder(K_Q4_0, 18, "Q4_0")
encode_q4_1 = _encoder(K_Q4_1, 20, "Q4_1")
encode_q5_0 = _encoder(K_Q5_0, 22, "Q5_0")
encode_q5_1 = _encoder(K_Q5_1, 24, "Q5_1")
encode_q8_0 = _encoder(K_Q8_0, 34, "Q8_0")
encode_q8_1 = _encoder(K_Q8_1, 36, "Q8_1")
encode_iq4_nl = _encoder(K_IQ4_NL, 18, "IQ4_NL")
encode_mxfp4 = _encoder(K_MXFP4, 17, "MXFP4")


TYPES = [
    QuantType(GGMLType.Q4_0, LAYOUT_Q4_0, decode_q4_0, encode_q4_0, nibble.Q4),
    QuantType(GGMLType.Q4_1, LAYOUT_Q4_1, decode_q4_1, encode_q4_1, nibble.Q4M),
    QuantType(GGMLType.Q5_0, LAYOUT_Q5_0, decode_q5_0, encode_q5_0, nibble.Q5),
    QuantType(GGMLType.Q5_1, LAYOUT_Q5_1, decode_q5_1, encode_q5_1, nibble.Q5M),
    QuantType(GGMLType.Q8_0, LAYOUT_Q8_0, decode_q8_0, encode_q8_0, byte.Q8),
    QuantType(GGMLType.Q8_1, LAYOUT_Q8_1, decode_q8_1, encode_q8_1),
    QuantType(GGMLType.IQ4_NL, LAYOUT_IQ4_NL, decode_iq4_nl, encode_iq4_nl, table.T4),
    QuantType(GGMLType.MXFP4, LAYOUT_MXFP4, decode_mxfp4, encode_mxfp4, table.T4),
    QuantType(GGMLType.Q1_0, LAYOUT_Q1_0, decode_q1_0),
    QuantType(GGMLType.Q2_0, LAYOUT_Q2_0, decode_q2_0),
]
