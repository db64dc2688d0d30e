"""Exact scalar conversions and the decoders of the plain (one value per element) types.

All conversions are bit-exact: they build the IEEE-754 float32 bit pattern and
reinterpret it, so signed zeros, subnormals, infinities and NaN payloads come out
exactly as ggml's conversions produce them.

Decoder signature (shared by every type): ``decode(src, dst)`` with ``src`` a
``uint8[::1]`` of n whole blocks and ``dst`` a ``float32[::1]`` of n * block_size.
Every decoder starts with ``check_blocks``, which rejects mismatched sizes (the
jitted loops do no bounds checks) and returns n.  Decoders take their inner loop
lengths from ``dst.size // n`` rather than writing the constant: a bound LLVM cannot
see makes it keep a short loop as a loop and vectorize it (with run-time alias
checks) instead of unrolling it into scalar code, which is about 3-4x faster.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# --------------------------------------------------------------------------- scalars


@njit(cache=True, nogil=True)
def f16_bits_to_f32(h):
    """IEEE half (as an integer 0..65535) -> float32, exact."""
    h = np.uint32(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        # zero or subnormal: m * 2^-24 is exact in float32
        v = np.float32(m) * np.float32(5.960464477539063e-08)
        return -v if sign else v
    if e == 31:
        bits = sign | 0x7F800000 | (m << 13)
    else:
        bits = sign | ((e + 112) << 23) | (m << 13)
    return np.uint32(bits).view(np.float32)


@njit(cache=True, nogil=True)
def f16_at(src, o):
    """The little-endian fp16 at byte offset o of src, as float32."""
    return f16_bits_to_f32(np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8))


@njit(cache=True, nogil=True)
def u16_at(src, o):
    return np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)


@njit(cache=True, nogil=True)
def u32_at(src, o):
    return np.uint32(np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)
                     | (np.uint32(src[o + 2]) << 16) | (np.uint32(src[o + 3]) << 24))


@njit(cache=True, nogil=True)
def f32_at(src, o):
    return np.uint32(u32_at(src, o)).view(np.float32)


@njit(cache=True, nogil=True)
def bf16_at(src, o):
    """bfloat16 -> float32: the 16 bits become the high half of the float32."""
    return np.uint32(u16_at(src, o) << 16).view(np.float32)


@njit(cache=True, nogil=True)
def e8m0_half_to_f32(x):
    """E8M0 exponent byte -> 2^(x-128) (half the E8M0 value, as ggml's MXFP4 uses it).

    x = 0, 1 give the float32 subnormals 2^-128, 2^-127; x = 255 gives 2^127
    (ggml does not treat 255 as NaN here).
    """
    x = np.uint32(x)
    if x < 2:
        bits = np.uint32(0x00200000) << x
    else:
        bits = (x - 1) << 23
    return np.uint32(bits).view(np.float32)


@njit(cache=True, nogil=True)
def ue4m3_to_f32(x):
    """Unsigned E4M3 (NVFP4 sub-block scale) -> float32, halved as ggml does.

    0 and 0x7F decode to 0; the top bit is ignored.
    """
    x = np.uint32(x)
    if x == 0 or x == 0x7F:
        return np.float32(0.0)
    e = (x >> 3) & 0xF
    m = x & 0x7
    if e == 0:
        return np.float32(m) * np.float32(2.0 ** -10)   # m * 2^-9, halved
    # (1 + m/8) * 2^(e-7), halved: a normal float32 with exponent e - 8
    return np.uint32(((e + 119) << 23) | (m << 20)).view(np.float32)


@njit(cache=True, nogil=True)
def sext8(b):
    """uint8 byte -> its int8 value (two's complement)."""
    return (np.int32(b) ^ 0x80) - 0x80


@njit(cache=True, nogil=True)
def check_blocks(src, dst, type_size, block_size):
    """Number of blocks in src; raises if src is not whole blocks or dst is not exactly their size."""
    nb = src.size // type_size
    if nb * type_size != src.size:
        raise ValueError("decode: source size is not a whole number of blocks")
    if dst.size != nb * block_size:
        raise ValueError("decode: destination size differs from blocks * block_size")
    return nb


# --------------------------------------------------------------------------- decoders

# F32 : 4 bytes, little-endian IEEE binary32
@njit(cache=True, nogil=True)
def decode_f32(src, dst):
    for i in range(src.size // 4):
        dst[i] = f32_at(src, 4 * i)


# F16 : 2 bytes, little-endian IEEE binary16
@njit(cache=True, nogil=True)
def decode_f16(src, dst):
    for i in range(src.size // 2):
        dst[i] = f16_at(src, 2 * i)


# BF16 : 2 bytes, the high half of a binary32
@njit(cache=True, nogil=True)
def decode_bf16(src, dst):
    for i in range(src.size // 2):
        dst[i] = bf16_at(src, 2 * i)


# F64 : 8 bytes binary64, rounded to the nearest float32
@njit(cache=True, nogil=True)
def decode_f64(src, dst):
    for i in range(src.size // 8):
        lo = np.uint64(u32_at(src, 8 * i))
        hi = np.uint64(u32_at(src, 8 * i + 4))
        dst[i] = np.float32(np.uint64(lo | (hi << np.uint64(32))).view(np.float64))


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
        lo = np.uint64(u32_at(src, 8 * i))
        hi = np.uint64(u32_at(src, 8 * i + 4))
        dst[i] = np.float32(np.uint64(lo | (hi << np.uint64(32))).view(np.int64))
