"""Integer dot products of 4-bit weights with 8-bit activations, for the nibble matvec.

``nibble_isums(q, qo, xq, xr, xo, out, simd)`` computes, for one 32-weight block of each
of the ``ROW_TILE`` (32) rows of a row tile,

    out[l]      = sum_{k<16} lo(byte k of row l) * xq[xo + k] + hi(byte k of row l) * xq[xo + 16 + k]
    out[32 + l] = the same with xr in place of xq

exactly, in int32 (|out| <= 32 * 15 * 127), where lo/hi are a byte's low and high
nibbles (0..15) and ``xq``, ``xr`` hold int8 values in -127..127: the matvec passes an
activation block rounded to int8 and the rounded remainder (two terms, see
quant_matvec.round_activations), so the product is within float32 accuracy of the
exact one at the cost of one more multiply-add per weight pair.

Byte layout of one tile-block (512 bytes from ``q[qo]``): byte k of row l lives at
``((k // 4) * 32 + l) * 4 + k % 4``: four consecutive bytes of a row make one 32-bit
lane, so a 32-byte load holds bytes 4g..4g+3 of 8 rows, and the four activations of
those bytes are one broadcast 32-bit value.

Two implementations give identical results (integer sums are exact):

* ``simd`` true, on an x86-64 host with AVX2 (Numba compiling for the host CPU): LLVM IR
  written here, per 32-byte load ``vpand``/``vpsrlw`` to split the nibbles, ``vpmaddubsw``
  (unsigned nibble x signed activation, adjacent pairs summed to int16; at most
  2 * 15 * 127, no saturation), int16 sums over the block's 4 loads (at most
  8 * 15 * 127 * 2 < 2^15), then one ``vpmaddwd`` by ones per 8 rows to int32.
  That is about 3 vector instructions per 8 weights for both terms, against about 7 for
  decoding the nibbles to float32 and multiplying there; LLVM does not find this form
  from a Numba loop (Numba widens the integer products to int64).
* otherwise: the same sums as a plain Numba loop (any CPU; also what tests compare against).

The choice between them is made when a kernel is compiled: on a host without AVX2, or
when Numba is told to compile for another CPU (``NUMBA_CPU_NAME``), the IR version is
never emitted and ``simd`` is ignored.
"""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

from .repack import ROW_TILE



def _host_has_avx2() -> bool:
    if config.CPU_NAME or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from llvmlite import binding
    return bool(binding.get_host_cpu_features().get("avx2", False))


HOST_AVX2 = _host_has_avx2()

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V32I8, _V16I16, _V8I32 = ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)


def _splat_i32(builder, value):
    """An i32 value broadcast to <8 x i32>."""
    undef = ir.Constant(_V8I32, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(_V8I32, [0] * 8))


def _byte_ptr(context, builder, arytype, ary, offset):
    """i8* to element `offset` of a 1-D uint8/int8 array."""
    data = cgutils.create_struct_proxy(arytype)(context, builder, value=ary).data
    return builder.gep(builder.bitcast(data, _I8.as_pointer()), [offset])


@intrinsic
def _nibble_isums_avx2(typingctx, q, qo, xq, xr, xo, out):
    """See the module docstring (the AVX2 form); out: int32 array of 2 * ROW_TILE."""
    sig = types.void(q, qo, xq, xr, xo, out)

    def codegen(context, builder, signature, args):
        q, qo, xq, xr, xo, out = args
        aty = signature.args
        qp = _byte_ptr(context, builder, aty[0], q, qo)
        xps = [_byte_ptr(context, builder, aty[2], xq, xo), _byte_ptr(context, builder, aty[3], xr, xo)]
        op = builder.bitcast(cgutils.create_struct_proxy(aty[5])(context, builder, value=out).data,
                             _V8I32.as_pointer())
        mod = builder.module
        maddubs = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I16, [_V32I8, _V32I8]), "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V8I32, [_V16I16, _V16I16]), "llvm.x86.avx2.pmadd.wd")
        low4 = ir.Constant(_V32I8, [15] * 32)
        four = ir.Constant(_V32I8, [4] * 32)

        def load(ptr, offset, ty):
            p = builder.bitcast(builder.gep(ptr, [ir.Constant(_I32, offset)]), ty.as_pointer())
            return builder.load(p, align=1)

        groups = ROW_TILE // 8
        acc = [[ir.Constant(_V16I16, [0] * 16)] * groups for _ in xps]     # [term][rows 8rg..8rg+7]
        for g in range(4):                   # bytes 4g..4g+3 of every row
            xs = [[builder.bitcast(_splat_i32(builder, load(xp, o + 4 * g, _I32)), _V32I8) for o in (0, 16)]
                  for xp in xps]             # [term][low / high nibbles' activations]
            for rg in range(groups):         # 8 rows per 32-byte load
                v = load(qp, (g * ROW_TILE + rg * 8) * 4, _V32I8)
                lo = builder.and_(v, low4)
                hi = builder.and_(builder.lshr(v, four), low4)
                for term, (x_lo, x_hi) in enumerate(xs):
                    pair = builder.add(builder.call(maddubs, [lo, x_lo]), builder.call(maddubs, [hi, x_hi]))
                    acc[term][rg] = builder.add(acc[term][rg], pair)
        ones = ir.Constant(_V16I16, [1] * 16)
        for term in range(len(xps)):
            for rg in range(groups):
                builder.store(builder.call(maddwd, [acc[term][rg], ones]),
                              builder.gep(op, [ir.Constant(_I32, term * groups + rg)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _nibble_isums_loop(q, qo, xq, xr, xo, out):
    """The portable form: the same int32 sums as plain loops."""
    R = ROW_TILE
    for l in range(2 * R):
        out[l] = 0
    for g in range(4):
        for l in range(R):
            s = np.int32(0)
            r = np.int32(0)
            for j in range(4):
                v = np.int32(q[qo + (g * R + l) * 4 + j])
                lo = v & np.int32(15)
                hi = v >> np.int32(4)
                i = xo + 4 * g + j
                s += np.int32(lo * np.int32(xq[i]) + hi * np.int32(xq[i + 16]))
                r += np.int32(lo * np.int32(xr[i]) + hi * np.int32(xr[i + 16]))
            out[l] += s
            out[R + l] += r


def nibble_isums(q, qo, xq, xr, xo, out, simd):
    """See the module docstring (callable from Numba code only)."""
    raise NotImplementedError("nibble_isums runs inside Numba kernels")


@overload(nibble_isums, inline="always")
def _nibble_isums_impl(q, qo, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, xq, xr, xo, out, simd):
            _nibble_isums_loop(q, qo, xq, xr, xo, out)
        return portable

    def either(q, qo, xq, xr, xo, out, simd):
        if simd:
            _nibble_isums_avx2(q, qo, xq, xr, xo, out)
        else:
            _nibble_isums_loop(q, qo, xq, xr, xo, out)
    return either
