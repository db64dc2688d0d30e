"""Kinds ``q8`` and ``q6``: one byte per weight (Q8_0; Q6_K as q - 32).

Layout (nb = cols / 32 blocks, T = row tiles, R = ROW_TILE):

  qt  int8   (T, nb*32*R)  byte k = weight k; a lane holds 2 consecutive bytes of its row at a
                           time (the int16 pairs of the integer sums): byte k of block b of lane l
                           is at ``((b * 16 + k // 2) * R + l) * 2 + k % 2`` (``pair_index``)
  d   f32 / f16 bits (T, nb*R)  ``q8``: the scale of each block
  sl, sh  int8 (T, nb*R)   ``q6``: the file's integer scales sc of weights 0-15 and 16-31 of each block
  d   f16 bits (T, nb/8*R) ``q6``: the scale of each 256 weights (index ``(b // 8) * R + l``)

weight = s * q, s = d (Q8_0) or d * sc (Q6_K).  (Q6_K spends a whole byte per weight: 8.6 bits per
weight in memory against 6.6 in the file, but the kernel does no bit assembly and runs at the
speed of Q8_0's.)

Matvec: x rounded to int16 per block (``tiled.round_activations16``, within max|x_block| / 65534),
``acc += dx (s_lo isum_lo + s_hi isum_hi)`` with the integer sums from ``pair_isums``; Q6_K sums
``dx (sl isum_lo + sh isum_hi)`` over each 256 and scales the sum by d (``matvec_q6``).  AVX2 form:
``vpmovsxbw`` loads of 8 rows' pairs and ``vpmaddwd`` by the broadcast activation pair (on hosts
with AVX-512 VNNI, LLVM fuses each ``vpmaddwd`` and its add into a ``vpdpwssd`` by itself, so
the VNNI form of the sums is the AVX2 one).

Tile decoder (prompt matmul, AVX2 and F16C): one 32-byte load holds weights 2p, 2p+1 of 16 rows,
shuffled into groups of 8 rows, widened to float32 and multiplied by the rows' scales.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ..numerics import f16_at, sext8
from ..simd import HOST_AVX2, HOST_F16C, I8, I32, PORTABLE, SIMD_BEST, V8F32, V8I32, V16I16, V32I8, byte_ptr, data_ptr, loader, madds, \
    out_ptr, scales8, splat
from ..types import GGMLType
from . import Packed, register
from .tiled import (BLOCK_CHUNK, FM, ROW_CHUNK, ROW_TILE, TiledKind, add_scaled, block_scales, fma_rows, load_rows,
                    nonneg, round_activations16, scale, small_product, store_rows, store_tile)

f32 = np.float32
R = ROW_TILE        # rows per tile, in the index arithmetic


# ---------------------------------------------------------------- index helpers and repackers


@njit(cache=True, inline="always")
def pair_index(b, k, l):
    """Where byte k of block b of lane l lives in a ``q8``/``q6`` tile (see the module docstring)."""
    return ((b * 16 + k // 2) * ROW_TILE + l) * 2 + k % 2


@njit(cache=True, nogil=True)
def put_bytes(dst, b, l, e, off):
    """Store weights e[0..31] of block b of lane l as bytes e - off."""
    for k in range(32):
        dst[pair_index(b, k, l)] = e[k] - off


@njit(cache=True, nogil=True)
def repack_q8_0(raw, qt, d, r0, r1):
    """Q8_0: d (fp16), qs int8[32]."""
    nb = d.shape[1] // R
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for b in range(nb):
            o = b * 34
            d[t, b * R + l] = f16_at(src, o)
            for k in range(32):
                q[pair_index(b, k, l)] = np.int8(sext8(src[o + 2 + k]))


@njit(cache=True, nogil=True)
def repack_q6_k(raw, qt, sl, sh, d, r0, r1):
    """Q6_K (210 bytes: ql[128], qh[64], scales int8[16], d) -> bytes q - 32, the int8 scales of
    weights 0-15 and 16-31 of each block (sl, sh) and each 256's d."""
    nb = sl.shape[1] // R
    e = np.empty(32, np.int32)
    for r in range(r0, r1):
        t, l = divmod(r, R)
        src, q = raw[r], qt[t]
        for i in range(nb // 8):
            o = i * 210
            d[t, i * R + l] = f16_at(src, o + 208)
            for b8 in range(8):              # 32-weight block b8 of the super-block
                half = b8 // 4               # which 128-weight half
                kk = b8 % 4                  # q1..q4 of ggml's loop
                ql = o + 64 * half + (32 if kk % 2 else 0)
                qhh = o + 128 + 32 * half
                shift_l = 4 if kk >= 2 else 0
                for k in range(32):
                    lo = (src[ql + k] >> shift_l) & 15
                    top = (src[qhh + k] >> (2 * kk)) & 3
                    e[k] = lo | (top << 4)
                b = 8 * i + b8
                put_bytes(q, b, l, e, 32)
                i2 = b * R + l
                isc = o + 192 + 8 * half + 2 * kk
                sl[t, i2] = np.int8(sext8(src[isc]))
                sh[t, i2] = np.int8(sext8(src[isc + 1]))


# ---------------------------------------------------------------- integer sums


@intrinsic
def _pair_isums_avx2(typingctx, q, qo, xq, xo, out):
    """The AVX2 form of pair_isums (see its docstring)."""
    sig = types.void(q, qo, xq, xo, out)

    def codegen(context, builder, signature, args):
        q, qo, xq, xo, out = args
        aty = signature.args
        qp = byte_ptr(context, builder, aty[0], q, qo)
        xp = byte_ptr(context, builder, aty[2], xq, builder.mul(xo, ir.Constant(xo.type, 2)))
        op = out_ptr(context, builder, aty[4], out)
        _, maddwd = madds(builder)
        load = loader(builder)
        v16i8 = ir.VectorType(I8, 16)

        groups = ROW_TILE // 8
        for half in range(2):                    # weights 0-15, 16-31: one int32 sum each
            acc = [ir.Constant(V8I32, [0] * 8)] * groups
            for p in range(8 * half, 8 * half + 8):      # the pair of weights 2p, 2p+1
                x = builder.bitcast(splat(builder, load(xp, 4 * p, I32)), V16I16)
                for rg in range(groups):         # 8 rows: 16 bytes, widened to int16
                    w = builder.sext(load(qp, (p * ROW_TILE + rg * 8) * 2, v16i8), V16I16)
                    acc[rg] = builder.add(acc[rg], maddwd(w, x))
            for rg in range(groups):
                builder.store(acc[rg], builder.gep(op, [ir.Constant(I32, half * groups + rg)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _pair_isums_loop(q, qo, xq, xo, out):
    """The portable form of pair_isums."""
    for half in range(2):
        for l in range(R):
            s = np.int32(0)
            for p in range(8 * half, 8 * half + 8):
                i = qo + (p * R + l) * 2
                s += np.int32(np.int32(q[i]) * np.int32(xq[xo + 2 * p])
                              + np.int32(q[i + 1]) * np.int32(xq[xo + 2 * p + 1]))
            out[half * R + l] = s


def pair_isums(q, qo, xq, xo, out, simd):
    """For one 32-weight block of each of the ROW_TILE rows of a tile of int8 weights (layout:
    weight k of row l at ``q[qo + ((k // 2) * ROW_TILE + l) * 2 + k % 2]``) and int16
    activations ``xq[xo:xo + 32]``: out[l] = sum over weights 0-15 of w * x, out[32 + l] the
    same over weights 16-31, exact in int32 (|out| <= 16 * 128 * 32767).  AVX2 form:
    ``vpmovsxbw`` loads of 8 rows' pairs and ``vpmaddwd`` by the broadcast activation pair.
    (Callable from Numba code only.)"""
    raise NotImplementedError("pair_isums runs inside Numba kernels")


@overload(pair_isums, inline="always")
def _pair_isums_impl(q, qo, xq, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, xq, xo, out, simd):
            _pair_isums_loop(q, qo, xq, xo, out)
        return portable

    def either(q, qo, xq, xo, out, simd):
        if simd != PORTABLE:
            _pair_isums_avx2(q, qo, xq, xo, out)
        else:
            _pair_isums_loop(q, qo, xq, xo, out)
    return either


# ---------------------------------------------------------------- matvec and exact decoders


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_i8(qt, s_lo, s_hi, x, simd, y):
    """One byte per weight (Q8_0) tiled: qt (T, nb*32*R) int8; scales s_lo / s_hi
    (T, nb*R) of weights 0-15 / 16-31 of each block (the same array when the type has
    one scale per block); w = s q.  x is rounded to int16 per block (round_activations16)
    and the integer sums come from pair_isums (simd: their form, kernels.simd.SIMD_FORMS)."""
    nb = x.size // 32
    xq, dx = round_activations16(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        lt = s_lo[t]
        ht = s_hi[t]
        acc = np.zeros(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        for b in range(nb):
            pair_isums(q, b * 32 * R, xq, 32 * b, isum, simd)
            dxb = dx[b]
            for l in range(R):
                i = nonneg(b * R + l)
                acc[l] += (scale(lt[i]) * f32(isum[l]) + scale(ht[i]) * f32(isum[R + l])) * dxb
        store_tile(acc, t, y)


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_q6(qt, sl, sh, d, x, simd, y):
    """Q6_K tiled: qt as matvec_i8's (q - 32); sl, sh (T, nb*R) int8 the scales of weights 0-15 and
    16-31 of each block, d (T, nb/8*R) each 256's scale.  Per 256 weights
    ``acc += d sum(dx (sl isum_lo + sh isum_hi))``, as ggml sums a Q6_K block: the scales stay
    integers, so a block streams 34.25 bytes instead of the 40 of float scales."""
    nb = x.size // 32
    xq, dx = round_activations16(x)
    for t in prange(qt.shape[0]):
        q = qt[t]
        lt = sl[t]
        ht = sh[t]
        dt = d[t]
        acc = np.zeros(R, np.float32)
        aq = np.empty(R, np.float32)        # one super-block's sum of sc * (q . x)
        isum = np.empty(2 * R, np.int32)
        for s in range(nb // 8):
            aq[:] = 0
            for b in range(8 * s, 8 * s + 8):
                pair_isums(q, b * 32 * R, xq, 32 * b, isum, simd)
                dxb = dx[b]
                for l in range(R):
                    i = nonneg(b * R + l)
                    aq[l] += (f32(lt[i]) * f32(isum[l]) + f32(ht[i]) * f32(isum[R + l])) * dxb
            add_scaled(acc, dt, s, aq)
        store_tile(acc, t, y)


@njit(cache=True, inline="always")
def decode_i8_block(q, b, l, s0, s1, o):
    """Block b of lane l of a tile (q = qt[t]) into o[32 b: 32 b + 32]: w = q s0 (weights 0-15), q s1."""
    for k in range(32):
        o[32 * b + k] = f32(q[pair_index(b, k, l)]) * (s0 if k < 16 else s1)


@njit(nogil=True, cache=True)
def decode_i8(qt, s_lo, s_hi, ids, out):
    """The byte-per-weight kinds (see matvec_i8): w = q s (Q8_0)."""
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(s_lo.shape[1] // R):
            j = b * R + l
            decode_i8_block(qt[t], b, l, scale(s_lo[t, j]), scale(s_hi[t, j]), out[i])


@njit(nogil=True, cache=True)
def decode_q6(qt, sl, sh, d, ids, out):
    """Q6_K (see matvec_q6): w = q (d sc), decode_i8's values with the scales made float."""
    for i in range(ids.size):
        t, l = divmod(ids[i], R)
        for b in range(sl.shape[1] // R):
            dd = scale(d[t, (b // 8) * R + l])
            j = b * R + l
            decode_i8_block(qt[t], b, l, dd * f32(sl[t, j]), dd * f32(sh[t, j]), out[i])


@intrinsic
def _i8_block_T(typingctx, q, qo, s_lo, s_hi, so, out, base, ldo):
    """Block b of one tile of a byte kind into K-major output: q the tile's row of qt (qo = b * 32 * R
    bytes), s_lo / s_hi its rows of scales (so = b * R); weight k of lane l -> out[base + k * ldo + l]
    = q * (s_lo if k < 16 else s_hi).  One 32-byte load holds weights 2p, 2p+1 of 16 rows."""
    sig = types.void(q, qo, s_lo, s_hi, so, out, base, ldo)

    def codegen(context, builder, signature, args):
        q, qo, s_lo, s_hi, so, out, base, ldo = args
        aty = signature.args

        qp = byte_ptr(context, builder, aty[0], q, qo)
        op = builder.gep(data_ptr(context, builder, aty[5], out, ir.FloatType()), [base])
        scales = [scales8(context, builder, aty[2], s_lo, so, ROW_TILE), scales8(context, builder, aty[3], s_hi, so, ROW_TILE)]
        for p in range(16):                       # weights 2p, 2p+1
            for r16 in range(ROW_TILE // 16):     # rows 16 r16 .. 16 r16 + 15
                ptr = builder.bitcast(builder.gep(qp, [ir.Constant(I32, (p * ROW_TILE + 16 * r16) * 2)]),
                                      V32I8.as_pointer())
                v = builder.load(ptr, align=1)
                for e in range(2):
                    k = 2 * p + e
                    for r8 in range(2):           # rows 8 r8 .. 8 r8 + 7 of the 16
                        b8 = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 8),
                                                                     [2 * (8 * r8 + i) + e for i in range(8)]))
                        u = builder.sitofp(builder.sext(b8, V8I32), V8F32)
                        val = builder.fmul(u, scales[k // 16][2 * r16 + r8])
                        row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, k)),
                                          ir.Constant(ldo.type, 16 * r16 + 8 * r8))
                        builder.store(val, builder.bitcast(builder.gep(op, [row]), V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def decode_i8_T(qt, s_lo, s_hi, t0, t1, out):
    """Row tiles t0..t1-1 of a byte kind (Q8_0, Q6_K) -> out (cols, >= (t1 - t0) * ROW_TILE) float32,
    K-major, the values of decode_i8."""
    nb = s_lo.shape[1] // R
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(nb):
            _i8_block_T(qt[t], b * 32 * R, s_lo[t], s_hi[t], b * R, flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def matmul_small_i8(qt, s_lo, s_hi, x, n, t0, t1, out):
    """out (n, rows) = X W^T on row tiles t0..t1-1 for X given block-major as x (Kind.small_matmul,
    tiled.small_product): each block decoded exactly (_i8_block_T) into a scratch block and applied
    to the rows of X (tiled.fma_rows)."""
    nb = x.size // (32 * n)
    wb = np.empty(32 * R, np.float32)               # (32 k, R lanes)
    for i0 in range(0, n, ROW_CHUNK):
        c = min(ROW_CHUNK, n - i0)
        for b0 in range(0, nb, BLOCK_CHUNK):
            for t in range(t0, t1):
                acc = load_rows(c, i0, t, out, b0)  # (c rows, R lanes)
                for b in range(b0, min(nb, b0 + BLOCK_CHUNK)):
                    _i8_block_T(qt[t], b * 32 * R, s_lo[t], s_hi[t], b * R, wb, 0, R)
                    fma_rows(wb, x, 32 * (nb * i0 + c * b), 32, c, acc)
                store_rows(acc, c, i0, t, out)


@njit(nogil=True, cache=True)
def matmul_small_q6(qt, sl, sh, d, x, n, t0, t1, out):
    """matmul_small_i8 for Q6_K: each tile's int8 scales made float (tiled.block_scales, cache-resident)
    before its blocks are decoded."""
    for t in range(t0, t1):
        matmul_small_i8(qt[t:t + 1], block_scales(sl, d, t, t + 1, 1), block_scales(sh, d, t, t + 1, 1), x, n, 0, 1,
                        out[:, t * R:])


# ---------------------------------------------------------------- the kind


class ByteKind(TiledKind):
    """q8: Q8_0, one float scale per block (see the module docstring)."""
    qbytes = 32
    lane_bytes = 2
    qdtype = np.int8

    def __init__(self, name: str, t: GGMLType):
        self.name, self.types, self.scales = name, {t: None}, ("d",)
        if HOST_AVX2 and HOST_F16C:
            self.decode_T = self._decode_T
            self.small_matmul = self._small_matmul

    def repack_rows(self, raw, t, A, r0, r1):
        repack_q8_0(raw, A["qt"], A["d"], r0, r1)

    def matvec(self, p: Packed, simd: int = SIMD_BEST):
        a = (p.arrays["qt"], p.arrays["d"], p.arrays["d"])
        return lambda x, out: matvec_i8(*a, x, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_i8(p.arrays["qt"], p.arrays["d"], p.arrays["d"], ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        decode_i8_T(p.arrays["qt"], p.arrays["d"], p.arrays["d"], t0, t1, out)

    def _small_matmul(self, p: Packed, X, out) -> None:
        small_product(matmul_small_i8, (p.arrays["qt"], p.arrays["d"], p.arrays["d"]), X, out)

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """x rounded to int16 per 32-block (within max|x_block| / 65534)."""
        xq, dx = round_activations16(x)
        return (xq.reshape(-1, 32) * dx[:, None].astype(np.float64)).reshape(-1)


class Q6Kind(ByteKind):
    """q6: Q6_K as bytes q - 32 with its int8 scales per 16 weights and d per 256 (see the module
    docstring)."""
    per256 = True

    def extra_arrays(self, t, T, nb):
        return {"sl": np.zeros((T, nb * ROW_TILE), np.int8), "sh": np.zeros((T, nb * ROW_TILE), np.int8)}

    def repack_rows(self, raw, t, A, r0, r1):
        repack_q6_k(raw, A["qt"], A["sl"], A["sh"], A["d"], r0, r1)

    @staticmethod
    def _arrays(p: Packed):
        return p.arrays["qt"], p.arrays["sl"], p.arrays["sh"], p.arrays["d"]

    def matvec(self, p: Packed, simd: int = SIMD_BEST):
        a = self._arrays(p)
        return lambda x, out: matvec_q6(*a, x, simd, out)

    def decode(self, p: Packed, ids, out) -> None:
        decode_q6(*self._arrays(p), ids, out)

    def _decode_T(self, p: Packed, t0: int, t1: int, out) -> None:
        qt, sl, sh, d = self._arrays(p)
        decode_i8_T(qt[t0:t1], block_scales(sl, d, t0, t1, 1), block_scales(sh, d, t0, t1, 1), 0, t1 - t0, out)

    def _small_matmul(self, p: Packed, X, out) -> None:
        small_product(matmul_small_q6, self._arrays(p), X, out)


Q8 = register(ByteKind("q8", GGMLType.Q8_0))
Q6 = register(Q6Kind("q6", GGMLType.Q6_K))
