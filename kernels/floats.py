"""Family: the plain types, one value per element (F32, F16, BF16, F64, I8, I16, I32, I64):
layouts, decoders (bit-exact, see kernels.numerics) and the encoders of F32, F16 and BF16.

Decoder signature (shared by every type): ``decode(src, dst)`` with ``src`` a ``uint8[::1]`` of n
whole blocks and ``dst`` a ``float32[::1]`` of n * block_size.  Every decoder of a block type
starts with ``numerics.check_blocks``, which rejects mismatched sizes (the jitted loops do no
bounds checks) and returns n.  Decoders take their inner loop lengths from ``dst.size // n``
rather than writing the constant: a bound LLVM cannot see makes it keep a short loop as a loop
and vectorize it (with run-time alias checks) instead of unrolling it into scalar code.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .kinds import plain
from .numerics import bf16_at, f16_at, f32_at, sext8, u16_at, u32_at, u64_at
from .types import GGMLType, QuantType


def _plain(name: str, nbytes: int, meaning: str) -> str:
    return f"{name}: 1 value in {nbytes} bytes\n  v {nbytes} bytes  {meaning}"

# ================================================================= decoders


# F32 : 4 bytes, little-endian IEEE binary32
@njit(cache=True, nogil=True)
def decode_f32(src, dst):
    for i in range(src.size // 4):
        dst[i] = f32_at(src, 4 * i)


# F16 : 2 bytes, little-endian IEEE binary16; BF16 : 2 bytes, the high half of a binary32
@njit(cache=True, nogil=True, inline="always")
def _decode_halves(src, dst, bf16):
    for i in range(src.size // 2):
        dst[i] = bf16_at(src, 2 * i) if bf16 else f16_at(src, 2 * i)


@njit(cache=True, nogil=True)
def decode_f16(src, dst):
    _decode_halves(src, dst, False)


@njit(cache=True, nogil=True)
def decode_bf16(src, dst):
    _decode_halves(src, dst, True)


# F64 : 8 bytes binary64, rounded to the nearest float32
@njit(cache=True, nogil=True)
def decode_f64(src, dst):
    for i in range(src.size // 8):
        dst[i] = np.float32(np.uint64(u64_at(src, 8 * i)).view(np.float64))


# I8 / I16 / I32 / I64 : little-endian two's complement integers, converted to float32
@njit(cache=True, nogil=True)
def decode_i8(src, dst):
    for i in range(src.size):
        dst[i] = np.float32(sext8(src[i]))


@njit(cache=True, nogil=True)
def decode_i16(src, dst):
    for i in range(src.size // 2):
        dst[i] = np.float32(np.int32(u16_at(src, 2 * i) ^ 0x8000) - 0x8000)


@njit(cache=True, nogil=True)
def decode_i32(src, dst):
    for i in range(src.size // 4):
        dst[i] = np.float32(np.uint32(u32_at(src, 4 * i)).view(np.int32))


@njit(cache=True, nogil=True)
def decode_i64(src, dst):
    for i in range(src.size // 8):
        dst[i] = np.float32(np.uint64(u64_at(src, 8 * i)).view(np.int64))


# ================================================================= encoders


def encode_f32(x: np.ndarray, imatrix=None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape[0], -1)


def encode_f16(x: np.ndarray, imatrix=None) -> np.ndarray:
    """Round to nearest even (as ggml_fp32_to_fp16_row); NaN becomes a quiet NaN 0x7E00 with its sign."""
    with np.errstate(over="ignore"):
        h = x.astype("<f2").view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(0x7E00), h)
    return np.ascontiguousarray(h, dtype="<u2").view(np.uint8).reshape(x.shape[0], -1)


def encode_bf16(x: np.ndarray, imatrix=None) -> np.ndarray:
    """As ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = (u >> 16) & np.uint32(1)                 # 32-bit sums wrap only for NaNs, which are replaced below
    r += np.uint32(0x7FFF)
    r += u
    r >>= 16
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        r[nan] = (u[nan] >> 16) | np.uint32(64)
    return r.astype("<u2").view(np.uint8).reshape(x.shape[0], -1)


TYPES = [
    QuantType(GGMLType.F32, _plain("F32", 4, "little-endian IEEE binary32"), decode_f32, encode_f32, plain.F32),
    QuantType(GGMLType.F16, _plain("F16", 2, "little-endian IEEE binary16"), decode_f16, encode_f16, plain.F16),
    QuantType(GGMLType.BF16, _plain("BF16", 2, "bfloat16: the upper 16 bits of a binary32"), decode_bf16, encode_bf16,
             plain.BF16),
    QuantType(GGMLType.F64, _plain("F64", 8, "IEEE binary64, rounded to float32 when decoded"), decode_f64),
    QuantType(GGMLType.I8, _plain("I8", 1, "int8, converted to float32"), decode_i8),
    QuantType(GGMLType.I16, _plain("I16", 2, "little-endian int16, converted to float32"), decode_i16),
    QuantType(GGMLType.I32, _plain("I32", 4, "little-endian int32, rounded to float32"), decode_i32),
    QuantType(GGMLType.I64, _plain("I64", 8, "little-endian int64, rounded to float32"), decode_i64),
]
