"""Scalar numerics shared by the decoders, encoders and kernels, each written once.

Byte readers (``u16_at``, ``u32_at``, ``f16_at``, ``f32_at``, ``bf16_at``: little-endian fields
at a byte offset), the exact float conversions (IEEE half, bfloat16, E8M0, unsigned E4M3 and
back: float32 to half bits, rounding to nearest even), two's-complement bytes and the k-quants'
packed 6-bit scales.  All conversions are bit-exact: they build the float32 bit pattern and
reinterpret it, so signed zeros, subnormals, infinities and NaN payloads come out as ggml's
conversions produce them.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def f16_bits_to_f32(h):
    """IEEE half bits (an integer 0..65535) -> float32, exact and branch-free (loops of it vectorize).

    The 15 magnitude bits shifted into a float32 are the value times 2^-112 for normals and
    subnormals alike; the multiply by 2^112 is exact.  Inf/NaN keep their payload as ggml's
    conversion does.  (kernels.simd.half_bits_to_f32 is the F16C form, for hosts that have it.)"""
    u = np.uint32(h)
    em = np.uint32(u & np.uint32(0x7FFF))
    v = np.uint32(em << np.uint32(13)).view(np.float32) * np.float32(5.192296858534828e33)
    special = np.uint32(np.uint32(0x7F800000) | ((u & np.uint32(0x3FF)) << np.uint32(13)))
    if em >= np.uint32(0x7C00):
        v = special.view(np.float32)
    return -v if u & np.uint32(0x8000) else v


@njit(cache=True, inline="always")
def bf16_bits_to_f32(h):
    """bfloat16 bits -> float32: the 16 bits become the high half of the float32."""
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


@njit(cache=True, error_model="numpy")
def fp32_to_fp16_bits(f):
    """Round-to-nearest-even float32 -> IEEE half bits (as ggml_compute_fp32_to_fp16)."""
    d = float(f)
    sign = 0
    if d != d:
        return 0x7E00 | (0x8000 if math.copysign(1.0, d) < 0 else 0)
    if math.copysign(1.0, d) < 0:
        sign = 0x8000
        d = -d
    if d == 0.0:
        return sign
    if math.isinf(d) or d >= 65520.0:
        return sign | 0x7C00
    if d < 6.103515625e-05:  # below 2**-14: subnormal half
        q = int(np.rint(d * 16777216.0))  # exact product, RNE
        return sign | q
    m, e = math.frexp(d)  # d = m * 2**e, m in [0.5, 1)
    E = e - 1
    q = int(np.rint(m * 2048.0))  # 1.f * 1024 with 10 fraction bits, RNE
    if q == 2048:
        q = 1024
        E += 1
    if E + 15 >= 31:
        return sign | 0x7C00
    return sign | ((E + 15) << 10) | (q - 1024)


@njit(cache=True, nogil=True)
def u16_at(src, o):
    return np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)


@njit(cache=True, nogil=True)
def u32_at(src, o):
    return np.uint32(np.uint32(src[o]) | (np.uint32(src[o + 1]) << 8)
                     | (np.uint32(src[o + 2]) << 16) | (np.uint32(src[o + 3]) << 24))


@njit(cache=True, nogil=True)
def u64_at(src, o):
    return np.uint64(np.uint64(u32_at(src, o)) | (np.uint64(u32_at(src, o + 4)) << np.uint64(32)))


# Byte-wise masks of 64-bit words (the repackers handle 8 bytes at a time): each byte's low 4 and
# low 2 bits, and the shift of a nibble to the top of its byte.
M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
M2 = np.uint64(0x0303030303030303)
U4 = np.uint64(4)


@njit(cache=True, nogil=True)
def f16_at(src, o):
    """The little-endian fp16 at byte offset o of src, as float32."""
    return f16_bits_to_f32(u16_at(src, o))


@njit(cache=True, nogil=True)
def f32_at(src, o):
    return np.uint32(u32_at(src, o)).view(np.float32)


@njit(cache=True, nogil=True)
def bf16_at(src, o):
    return bf16_bits_to_f32(u16_at(src, o))


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
def scale_min_k4(src, sc_o, j):
    """Sub-block j's (scale, min) from the 12 packed 6-bit scale bytes of Q4_K / Q5_K at src[sc_o:]."""
    if j < 4:
        return src[sc_o + j] & 63, src[sc_o + j + 4] & 63
    sc = (src[sc_o + j + 4] & 0xF) | ((src[sc_o + j - 4] >> 6) << 4)
    m = (src[sc_o + j + 4] >> 4) | ((src[sc_o + j] >> 6) << 4)
    return sc, m


@njit(cache=True, nogil=True)
def check_blocks(src, dst, type_size, block_size):
    """(number of blocks in src, the block size as a run-time value: dst.size // blocks, 0 for none);
    raises if src is not whole blocks or dst is not exactly their size.  Decoders take their inner
    loop lengths from the second: a bound LLVM cannot see makes it keep a short loop as a loop and
    vectorize it (with run-time alias checks) instead of unrolling it into scalar code."""
    nb = src.size // type_size
    if nb * type_size != src.size:
        raise ValueError("decode: source size is not a whole number of blocks")
    if dst.size != nb * block_size:
        raise ValueError("decode: destination size differs from blocks * block_size")
    return nb, dst.size // nb if nb else 0
