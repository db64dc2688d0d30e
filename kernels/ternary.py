"""Family: the ternary types (TQ1_0, TQ2_0: values -1, 0, +1 times one fp16 scale per 256) and the
decode-only NVFP4: layouts, decoders and encoders.

Decoders are bit-exact with ggml's ``dequantize_row_*``.  Signature: ``decode(src: uint8[::1] of
n whole blocks, dst: float32[::1] of n * block_size)``.  Encoders: ggml ignores the importance
matrix for both ternary types; rounding is lroundf (half away from zero) of x / amax.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .encoders.common import F, put_f16, roundf, rows_and_weights, run_rows
from .iquant_tables import kvalues_mxfp4
from .kinds import crumb
from .numerics import check_blocks, f16_at, ue4m3_to_f32
from .types import GGMLType, QuantType

# ================================================================= decoders


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
    nb, qk = check_blocks(src, dst, 54, 256)
    for i in range(nb):
        o, y = 54 * i, 256 * i
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
    nb, qk = check_blocks(src, dst, 66, 256)
    for i in range(nb):
        d = f16_at(src, 66 * i + 64)
        o = 66 * i
        for h in range(2):
            for l in range(4):
                y = 256 * i + 128 * h + 32 * l
                for m in range(qk // 8):
                    q = np.int32((src[o + 32 * h + m] >> (2 * l)) & 3)
                    dst[y + m] = np.float32(q - 1) * d


LAYOUT_NVFP4 = """\
NVFP4: 64 weights in 36 bytes, 4 sub-blocks of 16
  d   4 bytes  one unsigned E4M3 scale per sub-block (applied halved: the element table is doubled)
  qs 32 bytes  4-bit E2M1 codes; sub-block s: byte 8s + j holds weight 16s + j (low nibble)
               and weight 16s + 8 + j (high nibble)
  weight = kvalues_mxfp4[q] * ue4m3(d[s]) / 2"""


@njit(cache=True, nogil=True)
def decode_nvfp4(src, dst):
    nb, qk = check_blocks(src, dst, 36, 64)
    for i in range(nb):
        o = 36 * i
        for s in range(4):
            d = ue4m3_to_f32(src[o + s])
            y = 64 * i + 16 * s
            for j in range(qk // 8):
                b = src[o + 4 + 8 * s + j]
                dst[y + j] = np.float32(kvalues_mxfp4[b & 0xF]) * d
                dst[y + j + 8] = np.float32(kvalues_mxfp4[b >> 4]) * d


# ================================================================= encoders


QK_K = 256


@njit(cache=True, error_model="numpy")
def _put_amax_scale(x, o, y, at):
    """The fp16 scale max|x[o:o+256]| stored at y[at]; returns its float32 inverse (0 for a zero block)."""
    amax = F(0.0)
    for j in range(QK_K):
        amax = max(amax, abs(x[o + j]))
    put_f16(y, at, amax)
    return F(1.0) / amax if amax != 0 else F(0.0)


@njit(cache=True, error_model="numpy")
def _tq1_0(x, y):
    for i in range(x.shape[0] // QK_K):
        o, b = QK_K * i, 54 * i
        idd = _put_amax_scale(x, o, y, b + 52)
        xo = o
        # 5 trits per byte along 32 bytes
        for m in range(32):
            q = 0
            for n in range(5):
                q = (q * 3 + roundf(x[xo + m + n * 32] * idd) + 1) & 0xFF
            y[b + m] = ((q * 256 + 242) // 243) & 0xFF
        xo += 160
        # then along 16 bytes
        for m in range(16):
            q = 0
            for n in range(5):
                q = (q * 3 + roundf(x[xo + m + n * 16] * idd) + 1) & 0xFF
            y[b + 32 + m] = ((q * 256 + 242) // 243) & 0xFF
        xo += 80
        # 4 trits per byte
        for j in range(4):
            q = 0
            for m in range(4):
                q = (q * 3 + roundf(x[xo + j + m * 4] * idd) + 1) & 0xFF
            q = (q * 3) & 0xFF
            y[b + 48 + j] = ((q * 256 + 242) // 243) & 0xFF


@njit(cache=True, error_model="numpy")
def _tq2_0(x, y):
    for i in range(x.shape[0] // QK_K):
        o, b = QK_K * i, 66 * i
        idd = _put_amax_scale(x, o, y, b + 64)
        for j in range(0, 64, 32):
            xo = o + 4 * j
            for m in range(32):
                q = 0
                for n in range(4):
                    xi = roundf(x[xo + m + n * 32] * idd) + 1
                    q += (xi & 3) << (2 * n)
                y[b + j + m] = q & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def encode_rows(x, kind, out, r0, r1):
    for r in range(r0, r1):
        if kind == 1:
            _tq1_0(x[r], out[r])
        else:
            _tq2_0(x[r], out[r])


def encode_tq1_0(x: np.ndarray, imatrix=None) -> np.ndarray:
    x, _, _ = rows_and_weights(x, None, QK_K, "TQ1_0")
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 54), np.uint8)
    return run_rows(encode_rows, x, out, 1)


def encode_tq2_0(x: np.ndarray, imatrix=None) -> np.ndarray:
    x, _, _ = rows_and_weights(x, None, QK_K, "TQ2_0")
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * 66), np.uint8)
    return run_rows(encode_rows, x, out, 2)


TYPES = [
    QuantType(GGMLType.TQ1_0, LAYOUT_TQ1_0, decode_tq1_0, encode_tq1_0, crumb.Q2),
    QuantType(GGMLType.TQ2_0, LAYOUT_TQ2_0, decode_tq2_0, encode_tq2_0, crumb.Q2),
    QuantType(GGMLType.NVFP4, LAYOUT_NVFP4, decode_nvfp4),
]
