"""Family: the k-quants (Q2_K .. Q6_K, 256-weight super-blocks of 16- or 32-weight sub-blocks with
quantized sub-block scales, and Q8_K, the 8-bit intermediate of their dot products): layouts,
decoders and encoders.

Decoders are bit-exact with ggml's ``dequantize_row_q*_K``: the sub-block factors (``d * scale``
and ``dmin * min``) are formed in float32 first and each weight is ``factor * q - offset`` in
float32.  Signature: ``decode(src: uint8[::1] of n whole blocks, dst: float32[::1] of n * 256)``.

Encoders: without an importance matrix ggml uses the reference path (quantize_row_*_ref:
per-sub-block scale/min search with fixed weights, then the scales are rounded linearly against
their maximum).  With one, the sub-block search is weighted by qw[j] * sqrt(sigma2 + x[j]^2)
(Q6_K: qw[j] alone) and the sub-block scales are themselves quantized with a weighted search
(make_qp_quants / make_qx_quants).  Q8_K takes no importance matrix.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .encoders.common import (F, GROUP_MAX_EPS, make_q3_quants, make_qkx2_quants, make_qkx3_quants,
                              make_qp_quants, make_qx_quants, nearest_int, put_f16, rows_and_weights, run_rows)
from .kinds import byte, crumb, nibble
from .numerics import check_blocks, f16_at, f16_bits_to_f32, f32_at, scale_min_k4, sext8
from .types import GGMLType, QuantType

# ================================================================= decoders


LAYOUT_Q2_K = """\
Q2_K: 256 weights in 84 bytes, 16 sub-blocks of 16
  scales 16 bytes  per sub-block: low nibble = scale, high nibble = min (4 bits each)
  qs     64 bytes  2-bit quants; weight 128*h + 32*k + l (l < 32) is bits 2k..2k+1 of byte 32*h + l
  d       2 bytes  fp16 super-block scale of the scales
  dmin    2 bytes  fp16 super-block scale of the mins
  weight = (d * scale) * q - (dmin * min), sub-block s = weight index / 16"""


@njit(cache=True, nogil=True)
def decode_q2_k(src, dst):
    nb, qk = check_blocks(src, dst, 84, 256)
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
    nb, qk = check_blocks(src, dst, 110, 256)
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


LAYOUT_Q4_K = """\
Q4_K: 256 weights in 144 bytes, 8 sub-blocks of 32
  d       2 bytes  fp16 super-block scale of the scales
  dmin    2 bytes  fp16 super-block scale of the mins
""" + LAYOUT_SCALES_K4 + """
  qs    128 bytes  4-bit quants: weights 64c + l (low nibble) and 64c + 32 + l (high nibble) in byte 32c + l
  weight = (d * scale) * q - (dmin * min)"""


@njit(cache=True, nogil=True)
def decode_q4_k(src, dst):
    nb, _ = check_blocks(src, dst, 144, 256)
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
    nb, _ = check_blocks(src, dst, 176, 256)
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
    nb, _ = check_blocks(src, dst, 210, 256)
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


LAYOUT_Q8_K = """\
Q8_K: 256 weights in 292 bytes (intermediate format of the k-quant dot products)
  d       4 bytes  float32 scale
  qs    256 bytes  int8 quants
  bsums  32 bytes  int16 sums of each group of 16 quants (not needed to decode)
  weight = d * q"""


@njit(cache=True, nogil=True)
def decode_q8_k(src, dst):
    nb, qk = check_blocks(src, dst, 292, 256)
    for i in range(nb):
        o, y = 292 * i, 256 * i
        d = f32_at(src, o)
        for j in range(qk):
            dst[y + j] = d * np.float32(sext8(src[o + 4 + j]))


# ================================================================= encoders


QK_K = 256
K_Q2_K, K_Q3_K, K_Q4_K, K_Q5_K, K_Q6_K, K_Q8_K = range(6)
BYTES = {K_Q2_K: 84, K_Q3_K: 110, K_Q4_K: 144, K_Q5_K: 176, K_Q6_K: 210, K_Q8_K: 292}


@njit(cache=True, error_model="numpy")
def _pack_2bit(y, qs_off, L):
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[qs_off + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                      | (L[j + l + 96] << 6)) & 0xFF


# ----------------------------------------------------------------- Q2_K
# layout: scales[16] qs[64] d dmin

@njit(cache=True, error_model="numpy")
def _q2_k_finish(x, y, b, L, dm, mm):
    for j in range(16):
        sc = y[b + j]
        d = dm * F(sc & 0xF)
        if d == 0:
            continue
        m = mm * F(sc >> 4)
        for ii in range(16):
            l = nearest_int((x[16 * j + ii] + m) / d)
            L[16 * j + ii] = max(0, min(3, l))
    _pack_2bit(y, b + 16, L)


@njit(cache=True, error_model="numpy")
def _q2_k_ref(x, y):
    L = np.zeros(QK_K, np.uint8)
    Laux = np.zeros(16, np.uint8)
    weights = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    q4scale = F(15.0)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 84 * i
        max_scale = F(0.0)
        max_min = F(0.0)
        for j in range(16):
            xb = xs[16 * j:16 * j + 16]
            for l in range(16):
                weights[l] = abs(xb[l])
            scales[j], mins[j] = make_qkx2_quants(16, 3, xb, weights, L[16 * j:16 * j + 16], Laux,
                                                  F(-0.5), F(0.1), 15, True)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        if max_scale > 0:
            iscale = q4scale / max_scale
            for j in range(16):
                y[b + j] = nearest_int(iscale * scales[j]) & 0xFF
            dm = put_f16(y, b + 80, max_scale / q4scale)
        else:
            for j in range(16):
                y[b + j] = 0
            dm = put_f16(y, b + 80, F(0.0))
        if max_min > 0:
            iscale = q4scale / max_min
            for j in range(16):
                y[b + j] = (y[b + j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
            mm = put_f16(y, b + 82, max_min / q4scale)
        else:
            mm = put_f16(y, b + 82, F(0.0))
        _q2_k_finish(xs, y, b, L, dm, mm)


@njit(cache=True, error_model="numpy")
def _q2_k_im(x, y, qw):
    L = np.zeros(QK_K, np.uint8)
    Laux = np.zeros(16, np.uint8)
    mins = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    Ls = np.zeros(16, np.uint8)
    Lm = np.zeros(16, np.uint8)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 84 * i
        sumx2 = F(0.0)
        for j in range(QK_K):
            sumx2 += xs[j] * xs[j]
        sigma2 = sumx2 / F(QK_K)
        for j in range(16):
            xb = xs[16 * j:16 * j + 16]
            o = QK_K * i + 16 * j
            for l in range(16):
                weight[l] = qw[o + l] * np.sqrt(sigma2 + xb[l] * xb[l])
            s = F(0.0)
            for l in range(16):
                s += weight[l]
            sw[j] = s
            scales[j], mins[j] = make_qkx3_quants(16, 3, xb, weight, L[16 * j:16 * j + 16], Laux,
                                                  F(-0.9), F(0.05), 36, False)
        dm = make_qp_quants(16, 15, scales, Ls, sw)
        mm = make_qp_quants(16, 15, mins, Lm, sw)
        dm = put_f16(y, b + 80, dm)
        mm = put_f16(y, b + 82, mm)
        for j in range(16):
            y[b + j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
        _q2_k_finish(xs, y, b, L, dm, mm)


# ----------------------------------------------------------------- Q3_K
# layout: hmask[32] qs[64] scales[12] d

@njit(cache=True, error_model="numpy")
def _q3_k_finish(x, y, b, L):
    d_all = put_f16_read(y, b + 108)
    for j in range(16):
        if j < 8:
            sc = np.int64(y[b + 96 + j]) & 0xF
        else:
            sc = np.int64(y[b + 96 + j - 8]) >> 4
        hi = (np.int64(y[b + 104 + j % 4]) >> (2 * (j // 4))) & 3
        sc = (sc | (hi << 4)) - 32
        d = d_all * F(sc)
        if d == 0:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            L[16 * j + ii] = max(-4, min(3, l)) + 4
    for k in range(32):
        y[b + k] = 0
    m = 0
    hm = 1
    for j in range(QK_K):
        if L[j] > 3:
            y[b + m] |= hm
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    _pack_2bit(y, b + 32, L)


@njit(cache=True, error_model="numpy")
def put_f16_read(y, off):
    return f16_bits_to_f32(y[off] | (y[off + 1] << 8))


@njit(cache=True, error_model="numpy")
def _q3_k_put_scale(y, b, j, l):
    if j < 8:
        y[b + 96 + j] = l & 0xF
    else:
        y[b + 96 + j - 8] |= (l & 0xF) << 4
    l >>= 4
    y[b + 96 + 8 + j % 4] |= (l << (2 * (j // 4))) & 0xFF


@njit(cache=True, error_model="numpy")
def _q3_k_ref(x, y):
    L = np.zeros(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 110 * i
        max_scale = F(0.0)
        amax = F(0.0)
        for j in range(16):
            scales[j] = make_q3_quants(16, 4, xs[16 * j:16 * j + 16], L[16 * j:16 * j + 16], True)
            scale = abs(scales[j])
            if scale > amax:
                amax = scale
                max_scale = scales[j]
        for k in range(12):
            y[b + 96 + k] = 0
        if max_scale != 0:
            iscale = F(-32.0) / max_scale
            for j in range(16):
                l = nearest_int(iscale * scales[j])
                l = ((l + 128) & 0xFF) - 128  # int8_t
                l = max(-32, min(31, l)) + 32
                _q3_k_put_scale(y, b, j, l)
            put_f16(y, b + 108, F(1.0) / iscale)
        else:
            put_f16(y, b + 108, F(0.0))
        _q3_k_finish(xs, y, b, L)


@njit(cache=True, error_model="numpy")
def _q3_k_im(x, y, qw):
    L = np.zeros(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.zeros(16, np.int8)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 110 * i
        sumx2 = F(0.0)
        for j in range(QK_K):
            sumx2 += xs[j] * xs[j]
        sigma2 = F(2.0) * sumx2 / F(QK_K)
        for j in range(16):
            xb = xs[16 * j:16 * j + 16]
            o = QK_K * i + 16 * j
            for l in range(16):
                weight[l] = qw[o + l] * np.sqrt(sigma2 + xb[l] * xb[l])
            s = F(0.0)
            for l in range(16):
                s += weight[l]
            sw[j] = s
            scales[j] = make_qx_quants(16, 4, xb, L[16 * j:16 * j + 16], 1, weight, True)
        for k in range(12):
            y[b + 96 + k] = 0
        d_block = make_qx_quants(16, 32, scales, Ls, 1, sw, True)
        for j in range(16):
            _q3_k_put_scale(y, b, j, int(Ls[j]))
        put_f16(y, b + 108, d_block)
        _q3_k_finish(xs, y, b, L)


# ----------------------------------------------------------------- Q4_K / Q5_K
# layout Q4_K: d dmin scales[12] qs[128]; Q5_K: d dmin scales[12] qh[32] qs[128]

@njit(cache=True, error_model="numpy")
def _put_scale_min_k4(y, so, j, ls, lm):
    if j < 4:
        y[so + j] = ls
        y[so + j + 4] = lm
    else:
        y[so + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
        y[so + j - 4] |= (ls >> 4) << 6
        y[so + j] |= (lm >> 4) << 6


@njit(cache=True, error_model="numpy")
def _qk_requant(x, y, b, L, dq, mq, nmax):
    for j in range(8):
        sc, m = scale_min_k4(y, b + 4, j)
        d = dq * F(sc)
        if d == 0:
            continue
        dm = mq * F(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))


@njit(cache=True, error_model="numpy")
def _pack_q4(y, qo, L):
    for j in range(0, QK_K, 64):
        for l in range(32):
            y[qo + j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)


@njit(cache=True, error_model="numpy")
def _pack_q5(y, qho, qo, L):
    for k in range(32):
        y[qho + k] = 0
    m1 = 1
    m2 = 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1 = int(L[n + j])
            if l1 > 15:
                l1 -= 16
                y[qho + j] |= m1
            l2 = int(L[n + j + 32])
            if l2 > 15:
                l2 -= 16
                y[qho + j] |= m2
            y[qo + n // 2 + j] = l1 | (l2 << 4)
        m1 <<= 2
        m2 <<= 2


@njit(cache=True, error_model="numpy")
def _qk45_ref(x, y, nmax, bpb, rmin, rdelta, nstep):
    L = np.zeros(QK_K, np.uint8)
    Laux = np.zeros(32, np.uint8)
    weights = np.empty(32, np.float32)
    mins = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = bpb * i
        max_scale = F(0.0)
        max_min = F(0.0)
        for j in range(8):
            xb = xs[32 * j:32 * j + 32]
            sum_x2 = F(0.0)
            for l in range(32):
                sum_x2 += xb[l] * xb[l]
            av_x = np.sqrt(sum_x2 / F(32.0))
            for l in range(32):
                weights[l] = av_x + abs(xb[l])
            scales[j], mins[j] = make_qkx2_quants(32, nmax, xb, weights, L[32 * j:32 * j + 32], Laux,
                                                  rmin, rdelta, nstep, False)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = F(63.0) / max_scale if max_scale > 0 else F(0.0)
        inv_min = F(63.0) / max_min if max_min > 0 else F(0.0)
        for k in range(12):
            y[b + 4 + k] = 0
        for j in range(8):
            ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
            _put_scale_min_k4(y, b + 4, j, ls, lm)
        dq = put_f16(y, b, max_scale / F(63.0))
        mq = put_f16(y, b + 2, max_min / F(63.0))
        _qk_requant(xs, y, b, L, dq, mq, nmax)
        if nmax == 15:
            _pack_q4(y, b + 16, L)
        else:
            _pack_q5(y, b + 16, b + 48, L)


@njit(cache=True, error_model="numpy")
def _qk45_im(x, y, qw, has_qw, nmax, bpb):
    L = np.zeros(QK_K, np.uint8)
    Laux = np.zeros(32, np.uint8)
    Ls = np.zeros(8, np.uint8)
    Lm = np.zeros(8, np.uint8)
    weights = np.empty(32, np.float32)
    sw = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = bpb * i
        sum_x2 = F(0.0)
        for l in range(QK_K):
            sum_x2 += xs[l] * xs[l]
        sigma2 = F(2.0) * sum_x2 / F(QK_K)
        av_x = np.sqrt(sigma2)
        for j in range(8):
            xb = xs[32 * j:32 * j + 32]
            if has_qw:
                o = QK_K * i + 32 * j
                for l in range(32):
                    weights[l] = qw[o + l] * np.sqrt(sigma2 + xb[l] * xb[l])
            else:
                for l in range(32):
                    weights[l] = av_x + abs(xb[l])
            s = F(0.0)
            for l in range(32):
                s += weights[l]
            sw[j] = s
            scales[j], mins[j] = make_qkx3_quants(32, nmax, xb, weights, L[32 * j:32 * j + 32], Laux,
                                                  F(-0.9), F(0.05), 36, False)
        d_block = make_qp_quants(8, 63, scales, Ls, sw)
        m_block = make_qp_quants(8, 63, mins, Lm, sw)
        for k in range(12):
            y[b + 4 + k] = 0
        for j in range(8):
            _put_scale_min_k4(y, b + 4, j, min(63, int(Ls[j])), min(63, int(Lm[j])))
        dq = put_f16(y, b, d_block)
        mq = put_f16(y, b + 2, m_block)
        _qk_requant(xs, y, b, L, dq, mq, nmax)
        if nmax == 15:
            _pack_q4(y, b + 16, L)
        else:
            _pack_q5(y, b + 16, b + 48, L)


# ----------------------------------------------------------------- Q6_K
# layout: ql[128] qh[64] scales[16] (int8) d

@njit(cache=True, error_model="numpy")
def _q6_k(x, y, qw, has_qw):
    L = np.zeros(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 210 * i
        max_scale = F(0.0)
        max_abs_scale = F(0.0)
        for ib in range(16):
            xb = xs[16 * ib:16 * ib + 16]
            if has_qw:
                o = QK_K * i + 16 * ib
                scale = make_qx_quants(16, 32, xb, L[16 * ib:16 * ib + 16], 1, qw[o:o + 16], True)
            else:
                scale = make_qx_quants(16, 32, xb, L[16 * ib:16 * ib + 16], 1, qw, False)
            scales[ib] = scale
            abs_scale = abs(scale)
            if abs_scale > max_abs_scale:
                max_abs_scale = abs_scale
                max_scale = scale
        if max_abs_scale < GROUP_MAX_EPS:
            for k in range(210):
                y[b + k] = 0
            continue
        iscale = F(-128.0) / max_scale
        dq = put_f16(y, b + 208, F(1.0) / iscale)
        for ib in range(16):
            y[b + 192 + ib] = min(127, nearest_int(iscale * scales[ib])) & 0xFF
        for j in range(16):
            sc = np.int64(y[b + 192 + j])
            sc = sc - 256 if sc > 127 else sc
            d = dq * F(sc)
            if d == 0:
                continue
            for ii in range(16):
                l = nearest_int(xs[16 * j + ii] / d)
                L[16 * j + ii] = max(-32, min(31, l)) + 32
        for j in range(0, QK_K, 128):
            ql = b + j // 2
            qh = b + 128 + j // 4
            for l in range(32):
                q1 = L[j + l] & 0xF
                q2 = L[j + l + 32] & 0xF
                q3 = L[j + l + 64] & 0xF
                q4 = L[j + l + 96] & 0xF
                y[ql + l] = q1 | (q3 << 4)
                y[ql + l + 32] = q2 | (q4 << 4)
                y[qh + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4)
                             | ((L[j + l + 96] >> 4) << 6)) & 0xFF


# ----------------------------------------------------------------- Q8_K
# layout: d float32, qs int8[256], bsums int16[16] (sums of 16 quants)

@njit(cache=True, error_model="numpy")
def _q8_k(x, y):
    qs = np.zeros(QK_K, np.int64)
    for i in range(x.shape[0] // QK_K):
        xs = x[QK_K * i:QK_K * (i + 1)]
        b = 292 * i
        mx = F(0.0)
        amax = F(0.0)
        for j in range(QK_K):
            ax = abs(xs[j])
            if ax > amax:
                amax = ax
                mx = xs[j]
        d = F(0.0)
        qs[:] = 0
        if amax != 0:
            iscale = F(-127.0) / mx
            for j in range(QK_K):
                qs[j] = ((min(127, nearest_int(iscale * xs[j])) + 128) & 0xFF) - 128  # int8 store
            d = F(1.0) / iscale
        db = np.empty(1, np.float32)
        db[0] = d
        dbytes = db.view(np.uint8)
        for k in range(4):
            y[b + k] = dbytes[k]
        for j in range(QK_K):
            y[b + 4 + j] = qs[j] & 0xFF
        for j in range(16):
            sm = 0
            for ii in range(16):
                sm += qs[16 * j + ii]
            y[b + 260 + 2 * j] = sm & 0xFF
            y[b + 261 + 2 * j] = (sm >> 8) & 0xFF


# ----------------------------------------------------------------- row driver

@njit(cache=True, nogil=True, error_model="numpy")
def encode_rows(x, qw, has_qw, kind, out, r0, r1):
    for r in range(r0, r1):
        xr = x[r]
        yr = out[r]
        if kind == K_Q6_K:
            _q6_k(xr, yr, qw, has_qw)
        elif kind == K_Q4_K:
            if has_qw:
                _qk45_im(xr, yr, qw, True, 15, 144)
            else:
                _qk45_ref(xr, yr, 15, 144, F(-1.0), F(0.1), 20)
        elif kind == K_Q5_K:
            if has_qw:
                _qk45_im(xr, yr, qw, True, 31, 176)
            else:
                _qk45_ref(xr, yr, 31, 176, F(-0.5), F(0.1), 15)
        elif kind == K_Q3_K:
            if has_qw:
                _q3_k_im(xr, yr, qw)
            else:
                _q3_k_ref(xr, yr)
        elif kind == K_Q2_K:
            if has_qw:
                _q2_k_im(xr, yr, qw)
            else:
                _q2_k_ref(xr, yr)
        elif kind == K_Q8_K:
            _q8_k(xr, yr)


def _encoder(kind):
    bpb = BYTES[kind]

    def encode(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        x, qw, has_qw = rows_and_weights(x, imatrix, QK_K, "k-quant encoder")
        n_rows, n = x.shape
        out = np.zeros((n_rows, n // QK_K * bpb), np.uint8)
        return run_rows(encode_rows, x, out, qw, has_qw, kind)
    return encode


encode_q2_k = _encoder(K_Q2_K)
encode_q3_k = _encoder(K_Q3_K)
encode_q4_k = _encoder(K_Q4_K)
encode_q5_k = _encoder(K_Q5_K)
encode_q6_k = _encoder(K_Q6_K)
encode_q8_k = _encoder(K_Q8_K)


TYPES = [
    QuantType(GGMLType.Q2_K, LAYOUT_Q2_K, decode_q2_k, encode_q2_k, crumb.Q2),
    QuantType(GGMLType.Q3_K, LAYOUT_Q3_K, decode_q3_k, encode_q3_k, crumb.Q2),
    QuantType(GGMLType.Q4_K, LAYOUT_Q4_K, decode_q4_k, encode_q4_k, nibble.Q4K),
    QuantType(GGMLType.Q5_K, LAYOUT_Q5_K, decode_q5_k, encode_q5_k, nibble.Q5K),
    QuantType(GGMLType.Q6_K, LAYOUT_Q6_K, decode_q6_k, encode_q6_k, byte.Q6),
    QuantType(GGMLType.Q8_K, LAYOUT_Q8_K, decode_q8_k, encode_q8_k),
]
