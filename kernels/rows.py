"""Rows of activations in forms whose loops vectorize: views typed contiguous, and a row's
interleaved float64 sums of squares as one vector.

A model's per-head activations are views into one fused projection output: q3 = qkv[:, :H hd]
reshaped to (n, H, hd) is not C-contiguous, so Numba types it 'A' (any strides) and every row
q3[t, h] it hands to a loop is 'A' too: LLVM cannot assume unit steps and keeps those loops
scalar.  Each row is contiguous all the same (the last axis has unit stride); ``head_row`` gives
it typed as a contiguous 1-D array, a view of the same memory.  A kernel that takes such views
checks the last stride once (``check_unit_rows``), so a row is never read with the wrong step.

``square_sums`` gives the four interleaved float64 sums of squares of a row (the RMS norms'), each
lane in its own order as four scalar chains give it, but as one <4 x double> chain: LLVM does
not vectorize the four scalar chains itself.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array


@intrinsic
def _row_view(typingctx, x, t, h):
    """x[t, h] of a 3-D array as a 1-D C-contiguous array (the caller guarantees the unit stride)."""
    row_type = types.Array(x.dtype, 1, "C")
    sig = row_type(x, t, h)

    def codegen(context, builder, signature, args):
        xty = signature.args[0]
        ary = make_array(xty)(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, ary.shape, 3)
        strides = cgutils.unpack_tuple(builder, ary.strides, 3)
        ti = context.cast(builder, args[1], signature.args[1], types.intp)
        hi = context.cast(builder, args[2], signature.args[2], types.intp)
        offset = builder.add(builder.mul(ti, strides[0]), builder.mul(hi, strides[1]))
        data = builder.bitcast(builder.gep(builder.bitcast(ary.data, cgutils.voidptr_t), [offset]), ary.data.type)
        out = make_array(row_type)(context, builder)
        populate_array(out, data=data, shape=[shape[2]], strides=[strides[2]], itemsize=ary.itemsize,
                       meminfo=ary.meminfo, parent=ary.parent)
        return impl_ret_borrowed(context, builder, row_type, out._getvalue())

    return sig, codegen


def head_row(x, t, h):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(head_row, jit_options={"cache": True})
def _head_row_overload(x, t, h):
    """x[t, h] (hd,) of x (n, heads, hd) whose last axis has unit stride (``check_unit_rows``),
    typed C-contiguous whatever x's layout."""
    if x.layout == "C":
        return lambda x, t, h: x[t, h]
    return lambda x, t, h: _row_view(x, t, h)


@njit(cache=True, nogil=True)
def check_unit_rows(x):
    """Raise unless x (..., hd)'s last axis has unit stride (its rows may be taken by head_row)."""
    if x.shape[x.ndim - 1] > 1 and x.strides[x.ndim - 1] != x.itemsize:
        raise ValueError("rows must have unit stride")


_F32X4, _F64X4 = ir.VectorType(ir.FloatType(), 4), ir.VectorType(ir.DoubleType(), 4)


@intrinsic
def _square_sums_c(typingctx, row):
    """(s0, s1, s2, s3) of a C-contiguous float32 row (n,): s_l = sum over i < n // 4 of
    float64(row[4 i + l])^2, each added in order of i from 0.0 (products and sums unfused)."""
    sig = types.UniTuple(types.float64, 4)(row)

    def codegen(context, builder, signature, args):
        ary = make_array(signature.args[0])(context, builder, args[0])
        n = cgutils.unpack_tuple(builder, ary.shape, 1)[0]
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F64X4, [0.0] * 4))
        quads = builder.bitcast(ary.data, _F32X4.as_pointer())
        with cgutils.for_range(builder, builder.lshr(n, ir.Constant(n.type, 2))) as loop:
            x = builder.fpext(builder.load(builder.gep(quads, [loop.index]), align=4), _F64X4)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(x, x)), acc)
        v = builder.load(acc)
        lanes = [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in range(4)]
        return context.make_tuple(builder, signature.return_type, lanes)

    return sig, codegen


def square_sums(row):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(square_sums, jit_options={"cache": True})
def _square_sums_overload(row):
    """(s0, s1, s2, s3): s_l the float64 sum of squares of row[j] (float32 (n,)) over the j < n - n % 4
    with j % 4 == l, in order of j: one vector chain for a contiguous row, four scalar ones else
    (the same values)."""
    if row.layout == "C":
        return lambda row: _square_sums_c(row)

    def chains(row):
        s0 = s1 = s2 = s3 = 0.0
        for j in range(0, row.shape[0] - row.shape[0] % 4, 4):
            v0 = np.float64(row[j])
            v1 = np.float64(row[j + 1])
            v2 = np.float64(row[j + 2])
            v3 = np.float64(row[j + 3])
            s0 += v0 * v0
            s1 += v1 * v1
            s2 += v2 * v2
            s3 += v3 * v3
        return s0, s1, s2, s3
    return chains
