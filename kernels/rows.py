"""Rows of activation views typed contiguous, so that Numba's loops over them vectorize.

A model's per-head activations are views into one fused projection output: q3 = qkv[:, :H hd]
reshaped to (n, H, hd) is not C-contiguous, so Numba types it 'A' (any strides) and every row
q3[t, h] it hands to a loop is 'A' too: LLVM cannot assume unit steps and keeps those loops
scalar.  Each row is contiguous all the same (the last axis has unit stride); ``head_row`` gives
it typed as a contiguous 1-D array, a view of the same memory.  A kernel that takes such views
checks the last stride once (``check_unit_rows``), so a row is never read with the wrong step.
"""
from __future__ import annotations

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
