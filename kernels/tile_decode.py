"""Exact decoding of whole row tiles into K-major float32 tiles, for the prompt matmul.

``decode_nib_T(qt, qh, d, m, off, t0, t1, out)`` decodes row tiles t0..t1-1 of a nibble
kind (``q4``/``q5``, see repack.py) into ``out`` (cols, >= (t1 - t0) * ROW_TILE) float32:
``out[k, (t - t0) * ROW_TILE + l]`` = weight k of lane l of tile t, the very value the row
decoder (quant_matvec.decode_nib) gives: ``(q - off) * d`` for Q4_0 / Q5_0 (off 8 / 16),
``q * d + m`` for the others (no fused multiply-add, as ggml computes it).
``decode_i8_T(qt, s_lo, s_hi, t0, t1, out)`` does the same for the byte kinds (Q8_0, Q6_K:
``q * s``, quant_matvec.decode_i8).

K-major is the layout the tiled matmul wants: ``X @ out`` is a plain GEMM that BLAS can
write straight into the columns of the product (no transposed copy), and it is the
layout the row tiles decode into fastest: one 32-byte load of a tile holds 4 bytes of
each of 8 rows (byte kinds: 2 bytes of 16 rows); a byte shuffle regroups them by byte,
and each group of 8 rows widens to 8 float32 lanes (``vpmovzxbd``, ``vcvtdq2ps``,
``vmulps`` by the 8 rows' scales, ``vaddps``) stored as 8 consecutive floats of one output
row.  4-6 G weights/s per thread, against 0.7-1.6 for the row decoders (whose lanes cross
the tile's byte lanes).

Written as LLVM IR (simd.py's conventions; the float16 scales widen by ``fpext half``, so
it needs F16C): kernels.weight uses it where simd.HOST_AVX2 and simd.HOST_F16C, and
decodes row-major tiles elsewhere.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .repack import ROW_TILE
from .simd import _I32, _V8F32, _V8I32, _V32I8, _byte_ptr, _data_ptr, _splat, _spread_bits


def _scales8(context, builder, arytype, ary, first):
    """Per-row scales first .. first + ROW_TILE - 1 of a float32 or float16-bits (uint16) array,
    as ROW_TILE / 8 vectors <8 x float> (float16 widened exactly)."""
    half = arytype.dtype.bitwidth == 16
    p = builder.gep(_data_ptr(context, builder, arytype, ary, ir.HalfType() if half else ir.FloatType()), [first])
    out = []
    for rg in range(ROW_TILE // 8):
        v = builder.load(builder.bitcast(builder.gep(p, [ir.Constant(_I32, 8 * rg)]),
                                         ir.VectorType(p.type.pointee, 8).as_pointer()), align=2)
        out.append(builder.fpext(v, _V8F32) if half else v)
    return out


def _nib_block_T(five, sym):
    """The intrinsic decoding block b of one tile: (q, qo, h, ho, d, m, so, off, out, base, ldo)
    with q, h the tile's rows of qt, qh (qo = b * 16 * R bytes, ho = b * R words), d, m its rows
    of scales (so = b * R), and out a flat float32 array: weight k of lane l goes to
    out[base + k * ldo + l]."""

    def block_T(typingctx, q, qo, h, ho, d, m, so, off, out, base, ldo):
        sig = types.void(q, qo, h, ho, d, m, so, off, out, base, ldo)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, d, m, so, off, out, base, ldo = args
            aty = signature.args

            def data(i, ty):
                return _data_ptr(context, builder, aty[i], args[i], ty)

            qp = _byte_ptr(context, builder, aty[0], q, qo)
            hp = builder.gep(data(2, _I32), [ho])
            op = builder.gep(data(8, ir.FloatType()), [base])
            low4 = ir.Constant(_V32I8, [15] * 32)
            four = ir.Constant(_V32I8, [4] * 32)
            groups = ROW_TILE // 8
            ds = _scales8(context, builder, aty[4], d, so)
            ms = None if sym else _scales8(context, builder, aty[5], m, so)
            offs = _splat(builder, builder.sitofp(off, ir.FloatType()))
            for g in range(4):                    # bytes 4g..4g+3 of the block's 16
                for rg in range(groups):          # rows 8rg..8rg+7
                    p = builder.bitcast(builder.gep(qp, [ir.Constant(_I32, (g * ROW_TILE + rg * 8) * 4)]),
                                        _V32I8.as_pointer())
                    v = builder.load(p, align=1)
                    lo = builder.and_(v, low4)
                    hi = builder.and_(builder.lshr(v, four), low4)
                    if five:                      # fifth bits: words 2 (g * groups + rg) + half
                        w = [builder.load(builder.gep(hp, [ir.Constant(_I32, 2 * (g * groups + rg) + i)]))
                             for i in (0, 1)]
                        lo = builder.or_(lo, _spread_bits(builder, w[0], 16))
                        hi = builder.or_(hi, _spread_bits(builder, w[1], 16))
                    for half, nib in enumerate((lo, hi)):
                        for j in range(4):        # weight 16 half + 4g + j of the 8 rows
                            b8 = builder.shuffle_vector(nib, nib, ir.Constant(ir.VectorType(_I32, 8),
                                                                             [4 * i + j for i in range(8)]))
                            u = builder.uitofp(builder.zext(b8, _V8I32), _V8F32)
                            if sym:
                                val = builder.fmul(builder.fsub(u, offs), ds[rg])
                            else:
                                val = builder.fadd(builder.fmul(u, ds[rg]), ms[rg])
                            k = 16 * half + 4 * g + j
                            row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, k)),
                                              ir.Constant(ldo.type, 8 * rg))
                            dst = builder.bitcast(builder.gep(op, [row]), _V8F32.as_pointer())
                            builder.store(val, dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    block_T.__name__ = block_T.__qualname__ = f"_nib{'5' if five else '4'}_{'sym' if sym else 'asym'}_T"
    return intrinsic(block_T)


_nib4_asym_T = _nib_block_T(five=False, sym=False)
_nib4_sym_T = _nib_block_T(five=False, sym=True)
_nib5_asym_T = _nib_block_T(five=True, sym=False)
_nib5_sym_T = _nib_block_T(five=True, sym=True)

# One entry point per variant (a model compiles only those it uses).  Each decodes row tiles
# t0..t1-1 into out (cols, >= (t1 - t0) * ROW_TILE) float32, K-major; serial and nogil (the
# matmul's workers call them per tile).  qt, qh, d, m: the kind's arrays (repack.py).


@njit(nogil=True, cache=True)
def decode_q4_T(qt, qh, d, m, off, t0, t1, out):
    """Q4_1, Q4_K: w = q d + m."""
    R = ROW_TILE
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            _nib4_asym_T(qt[t], b * 16 * R, qh[0], 0, d[t], m[t], b * R, off, flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def decode_q4s_T(qt, qh, d, m, off, t0, t1, out):
    """Q4_0: w = (q - 8) d."""
    R = ROW_TILE
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            _nib4_sym_T(qt[t], b * 16 * R, qh[0], 0, d[t], m[t], b * R, off, flat, 32 * b * ldo + (t - t0) * R, ldo)


@njit(nogil=True, cache=True)
def decode_q5_T(qt, qh, d, m, off, t0, t1, out):
    """Q5_1, Q5_K: w = q d + m, q with its fifth bit."""
    R = ROW_TILE
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            _nib5_asym_T(qt[t], b * 16 * R, qh[t], b * R, d[t], m[t], b * R, off, flat, 32 * b * ldo + (t - t0) * R,
                         ldo)


@njit(nogil=True, cache=True)
def decode_q5s_T(qt, qh, d, m, off, t0, t1, out):
    """Q5_0: w = (q - 16) d, q with its fifth bit."""
    R = ROW_TILE
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(d.shape[1] // R):
            _nib5_sym_T(qt[t], b * 16 * R, qh[t], b * R, d[t], m[t], b * R, off, flat, 32 * b * ldo + (t - t0) * R,
                        ldo)


def decode_nib_T(qt, qh, d, m, off, t0, t1, out):
    """A nibble kind's row tiles t0..t1-1 into K-major out (see the module docstring); off: 0 for
    w = q d + m, else w = (q - off) d."""
    five = qh.shape[1] > 0
    fn = (decode_q5s_T if off else decode_q5_T) if five else (decode_q4s_T if off else decode_q4_T)
    fn(qt, qh, d, m, off, t0, t1, out)


# --------------------------------------------------------------------------- byte kinds (q8, q6)


@intrinsic
def _i8_block_T(typingctx, q, qo, s_lo, s_hi, so, out, base, ldo):
    """Block b of one tile of a byte kind into K-major output: q the tile's row of qt (qo = b * 32 * R
    bytes), s_lo / s_hi its rows of scales (so = b * R); weight k of lane l -> out[base + k * ldo + l]
    = q * (s_lo if k < 16 else s_hi).  One 32-byte load holds weights 2p, 2p+1 of 16 rows."""
    sig = types.void(q, qo, s_lo, s_hi, so, out, base, ldo)

    def codegen(context, builder, signature, args):
        q, qo, s_lo, s_hi, so, out, base, ldo = args
        aty = signature.args

        qp = _byte_ptr(context, builder, aty[0], q, qo)
        op = builder.gep(_data_ptr(context, builder, aty[5], out, ir.FloatType()), [base])
        scales = [_scales8(context, builder, aty[2], s_lo, so), _scales8(context, builder, aty[3], s_hi, so)]
        for p in range(16):                       # weights 2p, 2p+1
            for r16 in range(ROW_TILE // 16):     # rows 16 r16 .. 16 r16 + 15
                ptr = builder.bitcast(builder.gep(qp, [ir.Constant(_I32, (p * ROW_TILE + 16 * r16) * 2)]),
                                      _V32I8.as_pointer())
                v = builder.load(ptr, align=1)
                for e in range(2):
                    k = 2 * p + e
                    for r8 in range(2):           # rows 8 r8 .. 8 r8 + 7 of the 16
                        b8 = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8),
                                                                     [2 * (8 * r8 + i) + e for i in range(8)]))
                        u = builder.sitofp(builder.sext(b8, _V8I32), _V8F32)
                        val = builder.fmul(u, scales[k // 16][2 * r16 + r8])
                        row = builder.add(builder.mul(ldo, ir.Constant(ldo.type, k)),
                                          ir.Constant(ldo.type, 16 * r16 + 8 * r8))
                        builder.store(val, builder.bitcast(builder.gep(op, [row]), _V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def decode_i8_T(qt, s_lo, s_hi, t0, t1, out):
    """Row tiles t0..t1-1 of a byte kind (Q8_0, Q6_K) -> out (cols, >= (t1 - t0) * ROW_TILE) float32,
    K-major, the values of quant_matvec.decode_i8."""
    R = ROW_TILE
    nb = s_lo.shape[1] // R
    ldo = out.shape[1]
    flat = out.reshape(-1)
    for t in range(t0, t1):
        for b in range(nb):
            _i8_block_T(qt[t], b * 32 * R, s_lo[t], s_hi[t], b * R, flat, 32 * b * ldo + (t - t0) * R, ldo)
