"""Encoders for the ternary types TQ1_0 and TQ2_0 (values -1, 0, +1 times one fp16 scale per 256).

ggml ignores the importance matrix for both.  Rounding is lroundf (half away
from zero) of x / amax.
TQ1_0 layout: qs[48] (5 trits per byte, base-3, stored as ceil(q * 256 / 243)),
qh[4] (4 trits per byte), d.  TQ2_0 layout: qs[64] (2 bits per value), d.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .common import F, put_f16, roundf, rows_and_weights, run_rows

QK_K = 256


@njit(cache=True, error_model="numpy")
def _amax_scale(x, o):
    amax = F(0.0)
    for j in range(QK_K):
        amax = max(amax, abs(x[o + j]))
    idd = F(1.0) / amax if amax != 0 else F(0.0)
    return amax, idd


@njit(cache=True, error_model="numpy")
def _tq1_0(x, y):
    for i in range(x.shape[0] // QK_K):
        o = QK_K * i
        b = 54 * i
        d, idd = _amax_scale(x, o)
        put_f16(y, b + 52, d)
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
        o = QK_K * i
        b = 66 * i
        d, idd = _amax_scale(x, o)
        put_f16(y, b + 64, d)
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
