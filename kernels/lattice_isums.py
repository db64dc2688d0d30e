"""Integer matvec y = W x for the lattice i-quants on AVX2 hosts, straight from the GGML bytes.

Types: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S.  Their weights are small
integers times per-block float scales: per 32-weight sub-block j of a 256-weight block,

    w = factor * d * c_h * u * s        u: grid magnitudes (uint8, at most 62),
                                        s: signs (+-1), c_h = 2 sc + 1 per 16 or 32 weights

(IQ1: u * s = 8 * grid +- 1, the grid value -1/0/+1 plus the block's shift delta of +-1/8,
so factor carries the 1/8).  Activations are rounded as for the nibble kinds
(quant_matvec.round_activations: per 32-block, x ~ dx xq + dr xr with dr = dx / 254, two
int8 terms), and per block the kernel computes, exactly in int32 per lane,

    isum_t = sum_k c_h(k) u_k (s_k x_t,k)              t = q, r

with ``vpsignb`` (s onto x), ``vpmaddubsw`` (u times the signed x, adjacent pairs to int16: at
most 2 * 62 * 127 < 2^15) and ``vpmaddwd`` by the scales c_h (to int32), then
``block += dr_b * float(254 isum_q + isum_r)`` in a float32 vector (``vfmadd``; 254 isum_q
+ isum_r stays below 2^28), summed across lanes once per 256 weights.  Grid words come
from the type's table by scalar loads inserted into vectors (4 x 8 bytes or 8 x 4 bytes
per 32 weights), signs from a table of +-1 words (IQ2_XXS/XS, IQ3_XXS: 7-bit index, the
eighth sign is the parity) or spread from the file's sign bits (IQ2_S, IQ3_S); no float
decode, no scratch memory: 43-55 instructions per 32 weights (a third of them the index
arithmetic of the grid lookups), 1.5-2x the speed of the portable float kernels of
slow_matvec.py, which stay the fallback elsewhere.

Error bound: the product of the rounded activations (Weight.rounded) is exact up to
float32 sums: |y - W x_hat| <= 1e-5 sum |w x_hat|, as for every matvec.  Each row is
summed by one thread in a fixed order: results do not depend on the thread count.

``MATVEC_INT[type](raw (rows, row_bytes) uint8, x (cols,) f32, y (rows,) f32)``; present
only where simd.HOST_AVX2 (the IR uses AVX2 intrinsics).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .floats import f16_at, f16_bits_to_f32, u16_at
from .iquant_tables import (iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8, iq3s_grid_u8,
                            iq3xxs_grid_u8, ksigns_iq2xs)
from .quant_matvec import round_activations
from .simd import (_I8, _I16, _I32, _V8F32, _V8I32, _V32I8, HOST_AVX2, _byte_ptr, _data_ptr, _madds, _splat,
                   _spread_bits, _x86)
from .types import GGMLType

f32 = np.float32
_I64 = ir.IntType(64)

# --------------------------------------------------------------------------- tables (built once at import)


def _pm_one_words(sign_bytes: np.ndarray) -> np.ndarray:
    """Sign bytes -> one uint64 word each, lane j = -1 where bit j is set, else +1."""
    bits = (sign_bytes.astype(np.int32)[:, None] >> np.arange(8)) & 1
    return np.ascontiguousarray((1 - 2 * bits).astype(np.int8)).view(np.uint64).reshape(-1)


SIGNS7 = _pm_one_words(ksigns_iq2xs)                    # (128,): 7-bit sign index -> 8 signs
GRID_IQ2XXS = np.ascontiguousarray(iq2xxs_grid_u8).view(np.uint64).reshape(-1)   # (256,)
GRID_IQ2XS = np.ascontiguousarray(iq2xs_grid_u8).view(np.uint64).reshape(-1)     # (512,)
GRID_IQ2S = np.ascontiguousarray(iq2s_grid_u8).view(np.uint64).reshape(-1)       # (1024,)
GRID_IQ3XXS = np.ascontiguousarray(iq3xxs_grid_u8).view(np.uint32).reshape(-1)   # (256,)
GRID_IQ3S = np.ascontiguousarray(iq3s_grid_u8).view(np.uint32).reshape(-1)       # (512,)
# IQ1: 8 * grid + 1 (entries 0..2047, positive shift) and 8 * grid - 1 (2048.., negative)
GRID_IQ1 = np.ascontiguousarray(np.concatenate([8 * iq1s_grid_i8.astype(np.int16) + 1,
                                                8 * iq1s_grid_i8.astype(np.int16) - 1])
                                .astype(np.int8)).view(np.uint64).reshape(-1)   # (4096,)
_NONE = np.zeros(1, np.uint64)                          # the sign table of types that have none

# --------------------------------------------------------------------------- IR pieces


class _Block:
    """Loads from one 256-weight block (byte pointer bp) and table lookups, as IR values."""

    def __init__(self, builder, bp, grid, signs):
        self.b, self.bp, self.grid, self.signs = builder, bp, grid, signs

    def _load(self, off, ty):
        p = self.b.bitcast(self.b.gep(self.bp, [ir.Constant(_I32, off)]), ty.as_pointer())
        return self.b.zext(self.b.load(p, align=1), _I32) if ty.width < 32 else self.b.load(p, align=1)

    def u8(self, off):
        return self._load(off, _I8)

    def u16(self, off):
        return self._load(off, _I16)

    def u32(self, off):
        return self._load(off, _I32)

    def bits(self, v, shift, mask):
        """(v >> shift) & mask, for an i32 v and constants."""
        b = self.b
        return b.and_(b.lshr(v, ir.Constant(_I32, shift)) if shift else v, ir.Constant(_I32, mask))

    def gather(self, table, idxs):
        """Table words at idxs (i32 values) -> <32 x i8>: 4 uint64 or 8 uint32 entries."""
        b = self.b
        vec = ir.VectorType(table.type.pointee, len(idxs))
        v = ir.Constant(vec, ir.Undefined)
        for k, i in enumerate(idxs):
            v = b.insert_element(v, b.load(b.gep(table, [b.zext(i, _I64)])), ir.Constant(_I32, k))
        return b.bitcast(v, _V32I8)

    def sign_bits(self, word):
        """An i32 of 32 sign bits -> <32 x i8>, lane i = -1 where bit i is set, else +1."""
        return self.b.or_(_spread_bits(self.b, word, -2), ir.Constant(_V32I8, [1] * 32))

    def odd(self, s):
        """2 s + 1 for an i32 s."""
        b = self.b
        return b.add(b.shl(s, ir.Constant(_I32, 1)), ir.Constant(_I32, 1))

    def scales(self, lo, hi=None):
        """<16 x i16>: lanes 0-7 (weights 0-15) lo, lanes 8-15 (weights 16-31) hi (default lo)."""
        b = self.b
        v = ir.Constant(ir.VectorType(_I16, 2), ir.Undefined)
        v = b.insert_element(v, b.trunc(lo, _I16), ir.Constant(_I32, 0))
        v = b.insert_element(v, b.trunc(hi if hi is not None else lo, _I16), ir.Constant(_I32, 1))
        return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 16), [0] * 8 + [1] * 8))

    def signed(self, w):
        """A signed int8 weight vector -> (|w|, w) as (magnitudes, sign carrier); w never 0."""
        b = self.b
        zero = ir.Constant(_V32I8, [0] * 32)
        return b.select(b.icmp_signed("<", w, zero), b.sub(zero, w), w), w


# Per type: sub-block j -> (magnitudes <32 x i8>, signs <32 x i8>, scales <16 x i16>).  Byte
# offsets and bit fields are those of the type's block (see iquants.py for the layouts).

def _iq2_xxs(k: _Block, j):
    qo = 2 + 8 * j
    aux = k.u32(qo + 4)
    mag = k.gather(k.grid, [k.u8(qo + l) for l in range(4)])
    sgn = k.gather(k.signs, [k.bits(aux, 7 * l, 127) for l in range(4)])
    return mag, sgn, k.scales(k.odd(k.bits(aux, 28, 15)))


def _iq2_xs(k: _Block, j):
    q = [k.u16(2 + 2 * (4 * j + l)) for l in range(4)]
    sc = k.u8(66 + j)
    mag = k.gather(k.grid, [k.bits(v, 0, 511) for v in q])
    sgn = k.gather(k.signs, [k.bits(v, 9, 127) for v in q])
    return mag, sgn, k.scales(k.odd(k.bits(sc, 0, 15)), k.odd(k.bits(sc, 4, 15)))


def _iq2_s(k: _Block, j):
    b = k.b
    qh = k.u8(66 + j)
    idx = [b.or_(k.u8(2 + 4 * j + l), b.and_(b.shl(qh, ir.Constant(_I32, 8 - 2 * l)), ir.Constant(_I32, 0x300)))
           for l in range(4)]
    sc = k.u8(74 + j)
    return (k.gather(k.grid, idx), k.sign_bits(k.u32(34 + 4 * j)),
            k.scales(k.odd(k.bits(sc, 0, 15)), k.odd(k.bits(sc, 4, 15))))


def _iq3_xxs(k: _Block, j):
    qo = 2 + 8 * j
    aux = k.u32(66 + 4 * j)
    mag = k.gather(k.grid, [k.u8(qo + m) for m in range(8)])
    sgn = k.gather(k.signs, [k.bits(aux, 7 * l, 127) for l in range(4)])
    return mag, sgn, k.scales(k.odd(k.bits(aux, 28, 15)))


def _iq3_s(k: _Block, j):
    b = k.b
    qo = 2 + 8 * j
    qh = k.u8(66 + j)
    idx = []
    for l in range(4):
        for m, shift in ((2 * l, 8 - 2 * l), (2 * l + 1, 7 - 2 * l)):
            idx.append(b.or_(k.u8(qo + m), b.and_(b.shl(qh, ir.Constant(_I32, shift)), ir.Constant(_I32, 256))))
    s = k.bits(k.u8(106 + j // 2), 4 * (j % 2), 15)
    return k.gather(k.grid, idx), k.sign_bits(k.u32(74 + 4 * j)), k.scales(k.odd(s))


def _iq1_s(k: _Block, j):
    b = k.b
    qh = k.u16(34 + 2 * j)
    neg = b.shl(k.bits(qh, 15, 1), ir.Constant(_I32, 11))               # + 2048: the 8 g - 1 entries
    idx = [b.or_(b.or_(k.u8(2 + 4 * j + l), b.shl(k.bits(qh, 3 * l, 7), ir.Constant(_I32, 8))), neg)
           for l in range(4)]
    mag, sgn = k.signed(k.gather(k.grid, idx))
    return mag, sgn, k.scales(k.odd(k.bits(qh, 12, 7)))


def _iq1_m(k: _Block, j):
    b = k.b
    sc = k.u16(48 + 2 * (j // 2))
    sh = 6 * (j % 2)
    idx = []
    for l in range(4):
        qh = k.u8(32 + 2 * j + l // 2)
        hi = k.bits(qh, 0, 7) if l % 2 == 0 else k.bits(qh, 4, 7)
        neg = k.bits(qh, 3, 1) if l % 2 == 0 else k.bits(qh, 7, 1)
        idx.append(b.or_(b.or_(k.u8(4 * j + l), b.shl(hi, ir.Constant(_I32, 8))),
                         b.shl(neg, ir.Constant(_I32, 11))))
    mag, sgn = k.signed(k.gather(k.grid, idx))
    return mag, sgn, k.scales(k.odd(k.bits(sc, sh, 7)), k.odd(k.bits(sc, sh + 3, 7)))


def _block_intrinsic(name, parts):
    """An intrinsic (src, o, grid, signs, xq, xr, dr, b0) -> float32: the block of src at byte o
    (weights 256 * b0 / 8 ..) times the activation terms, sum_j dr[b0 + j] (254 isum_q + isum_r)."""

    def block_sum(typingctx, src, o, grid, signs, xq, xr, dr, b0):
        sig = types.float32(src, o, grid, signs, xq, xr, dr, b0)

        def codegen(context, builder, signature, args):
            src, o, grid, signs, xq, xr, dr, b0 = args
            aty = signature.args

            def data(i, ty):
                return _data_ptr(context, builder, aty[i], args[i], ty)

            bp = _byte_ptr(context, builder, aty[0], src, o)
            x0 = builder.mul(b0, ir.Constant(b0.type, 32))
            xps = [_byte_ptr(context, builder, aty[4], xq, x0), _byte_ptr(context, builder, aty[5], xr, x0)]
            drp = builder.gep(data(6, ir.FloatType()), [b0])
            k = _Block(builder, bp, data(2, _I32 if aty[2].dtype.bitwidth == 32 else _I64), data(3, _I64))
            maddubs, maddwd = _madds(builder)
            psign = _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, _V32I8, _V32I8)
            fma = _x86(builder, "llvm.fma.v8f32", _V8F32, _V8F32, _V8F32, _V8F32)
            c254 = ir.Constant(_V8I32, [254] * 8)
            acc = ir.Constant(_V8F32, [0.0] * 8)
            for j in range(8):
                mag, sgn, sc = parts(k, j)
                isum = []
                for xp in xps:
                    p = builder.bitcast(builder.gep(xp, [ir.Constant(_I32, 32 * j)]), _V32I8.as_pointer())
                    isum.append(maddwd(maddubs(mag, psign(builder.load(p, align=1), sgn)), sc))
                t = builder.add(builder.mul(isum[0], c254), isum[1])
                dv = _splat(builder, builder.load(builder.gep(drp, [ir.Constant(_I32, j)])))
                acc = fma(builder.sitofp(t, _V8F32), dv, acc)
            for width in (4, 2, 1):          # lanes summed pairwise, in a fixed order
                lo = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
                hi = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(_I32, width),
                                                                  list(range(width, 2 * width))))
                acc = builder.fadd(lo, hi)
            return builder.extract_element(acc, ir.Constant(_I32, 0))

        return sig, codegen

    block_sum.__name__ = block_sum.__qualname__ = name
    return intrinsic(block_sum)


_sum_iq2_xxs = _block_intrinsic("_sum_iq2_xxs", _iq2_xxs)
_sum_iq2_xs = _block_intrinsic("_sum_iq2_xs", _iq2_xs)
_sum_iq2_s = _block_intrinsic("_sum_iq2_s", _iq2_s)
_sum_iq3_xxs = _block_intrinsic("_sum_iq3_xxs", _iq3_xxs)
_sum_iq3_s = _block_intrinsic("_sum_iq3_s", _iq3_s)
_sum_iq1_s = _block_intrinsic("_sum_iq1_s", _iq1_s)
_sum_iq1_m = _block_intrinsic("_sum_iq1_m", _iq1_m)

# --------------------------------------------------------------------------- kernels
# y[r] = factor * sum_blocks d_block * block_sum; d is the block's fp16 scale (IQ1_M: spread over
# the top nibbles of its four scale words); factor: IQ2 1/8, IQ3_XXS 1/4, IQ3_S 1, IQ1 1/8.


@njit(cache=True, inline="always")
def _iq1m_d(src, o):
    s0 = u16_at(src, o + 48)
    s1 = u16_at(src, o + 50)
    s2 = u16_at(src, o + 52)
    s3 = u16_at(src, o + 54)
    return f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000))


@njit(parallel=True, cache=True)
def imatvec_iq2_xxs(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 66 * i
            acc += f16_at(src, o) * _sum_iq2_xxs(src, o, GRID_IQ2XXS, SIGNS7, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.125)


@njit(parallel=True, cache=True)
def imatvec_iq2_xs(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 74 * i
            acc += f16_at(src, o) * _sum_iq2_xs(src, o, GRID_IQ2XS, SIGNS7, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.125)


@njit(parallel=True, cache=True)
def imatvec_iq2_s(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 82 * i
            acc += f16_at(src, o) * _sum_iq2_s(src, o, GRID_IQ2S, _NONE, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.125)


@njit(parallel=True, cache=True)
def imatvec_iq3_xxs(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 98 * i
            acc += f16_at(src, o) * _sum_iq3_xxs(src, o, GRID_IQ3XXS, SIGNS7, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.25)


@njit(parallel=True, cache=True)
def imatvec_iq3_s(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 110 * i
            acc += f16_at(src, o) * _sum_iq3_s(src, o, GRID_IQ3S, _NONE, xq, xr, dr, 8 * i)
        y[r] = acc


@njit(parallel=True, cache=True)
def imatvec_iq1_s(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 50 * i
            acc += f16_at(src, o) * _sum_iq1_s(src, o, GRID_IQ1, _NONE, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.125)


@njit(parallel=True, cache=True)
def imatvec_iq1_m(raw, x, y):
    xq, xr, _, dr, _ = round_activations(x)
    for r in prange(raw.shape[0]):
        src = raw[r]
        acc = f32(0)
        for i in range(x.size // 256):
            o = 56 * i
            acc += _iq1m_d(src, o) * _sum_iq1_m(src, o, GRID_IQ1, _NONE, xq, xr, dr, 8 * i)
        y[r] = acc * f32(0.125)


# type -> kernel(raw (rows, row_bytes) uint8, x (cols,) f32, y (rows,) f32); empty without AVX2
MATVEC_INT = {
    GGMLType.IQ1_S: imatvec_iq1_s,
    GGMLType.IQ1_M: imatvec_iq1_m,
    GGMLType.IQ2_XXS: imatvec_iq2_xxs,
    GGMLType.IQ2_XS: imatvec_iq2_xs,
    GGMLType.IQ2_S: imatvec_iq2_s,
    GGMLType.IQ3_XXS: imatvec_iq3_xxs,
    GGMLType.IQ3_S: imatvec_iq3_s,
} if HOST_AVX2 else {}

__all__ = ["MATVEC_INT"]
