"""Bit-exact float32 helpers shared by the encoders.

ggml quantizes in float32 with a fixed order of operations; every helper here
keeps that order and keeps every intermediate a float32, so the integer
choices (and therefore the bytes) come out the same as ggml's.  Any constant
mixed into float32 arithmetic is a float32 too (`F(...)`), otherwise Numba
would widen the expression to float64.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..numerics import f16_bits_to_f32, fp32_to_fp16_bits

F = np.float32

GROUP_MAX_EPS = F(1e-15)
MAGIC = F(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer, half to even


@intrinsic
def f32_bits(typingctx, v):
    """The IEEE bits of a float32 as an int32 (a register bitcast, like memcpy in C)."""
    if v != types.float32:
        return None
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return sig, codegen


@njit(cache=True, error_model="numpy")
def nearest_int(fval):
    """ggml nearest_int: add 1.5 * 2**23 in float32 and read the mantissa bits (half to even)."""
    val = fval + MAGIC
    return np.int64((f32_bits(val) & 0x007FFFFF) - 0x00400000)


@njit(cache=True, error_model="numpy")
def roundf(v):
    """C roundf: half away from zero (v float32, |v| < 2**31; result int)."""
    r = np.trunc(v)
    if abs(v - r) >= F(0.5):  # v - trunc(v) is exact
        r += np.copysign(F(1.0), v)
    return int(r)


@njit(cache=True, error_model="numpy")
def put_u16(out, off, v):
    out[off] = v & 0xFF
    out[off + 1] = (v >> 8) & 0xFF


@njit(cache=True, error_model="numpy")
def put_f16(out, off, f):
    h = fp32_to_fp16_bits(f)
    out[off] = h & 0xFF
    out[off + 1] = (h >> 8) & 0xFF
    return f16_bits_to_f32(h)


@njit(cache=True, error_model="numpy")
def best_index_int8(n, val, x):
    """Index of the table value nearest x (val sorted ascending, int8 values)."""
    if x <= F(val[0]):
        return 0
    if x >= F(val[n - 1]):
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < F(val[mav]):
            mu = mav
        else:
            ml = mav
    if x - F(val[mu - 1]) < F(val[mu]) - x:
        return mu - 1
    return mu


@njit(cache=True, error_model="numpy")
def _qx_weight(xi, rmse_type, qw, has_qw, i):
    if has_qw:
        return qw[i]
    if rmse_type == 1:
        return xi * xi
    if rmse_type == 2:
        return F(1.0)
    if rmse_type == 3:
        return abs(xi)
    return np.sqrt(abs(xi))


@njit(cache=True, error_model="numpy")
def make_qx_quants(n, nmax, x, L, rmse_type, qw, has_qw):
    """Signed symmetric quantization to [-nmax, nmax-1] (stored shifted by +nmax in L).

    Weights are qw when has_qw, else chosen by rmse_type (1: x^2, 2: 1, 3: |x|, other: sqrt|x|)."""
    mx = F(0.0)
    amax = F(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(-nmax) / mx
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return F(1.0) / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    w = np.empty(n, np.float32)
    for i in range(n):
        w[i] = _qx_weight(x[i], rmse_type, qw, has_qw, i)
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        fl = F(l)
        sumlx += w[i] * x[i] * fl
        suml2 += w[i] * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else F(0.0)
    if return_early:
        if suml2 > 0:
            return F(0.5) * (scale + F(1.0) / iscale)
        return F(1.0) / iscale
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(is_)) / mx
        sumlx = F(0.0)
        suml2 = F(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            fl = F(l)
            sumlx += w[i] * x[i] * fl
            suml2 += w[i] * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True, error_model="numpy")
def make_q3_quants(n, nmax, x, L, do_rmse):
    mx = F(0.0)
    amax = F(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(-nmax) / mx
    if do_rmse:
        sumlx = F(0.0)
        suml2 = F(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = l
            w = x[i] * x[i]
            fl = F(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for itry in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                fli = F(L[i])
                slx = sumlx - w * x[i] * fli
                if slx > 0:
                    sl2 = suml2 - w * fli * fli
                    new_l = nearest_int(x[i] * sl2 / slx)
                    new_l = max(-nmax, min(nmax - 1, new_l))
                    if new_l != L[i]:
                        fn = F(new_l)
                        slx += w * x[i] * fn
                        sl2 += w * fn * fn
                        if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return sumlx / suml2 if suml2 > 0 else F(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
    return F(1.0) / iscale


@njit(cache=True, error_model="numpy")
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric (scale, min) search; returns (scale, -min) like ggml's (scale, *the_min)."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = F(0.0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F(0.0), -mn
    iscale = F(nmax) / (mx - mn)
    scale = F(1.0) / iscale
    best_error = F(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = max(0, min(nmax, l))
        diff = scale * F(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * F(is_) + F(nmax)) / (mx - mn)
        sum_l = F(0.0)
        sum_l2 = F(0.0)
        sum_xl = F(0.0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = F(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = F(0.0)
            for i in range(n):
                diff = this_scale * F(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


# ggml's qkx3 variant differs from qkx2 only where weights may be absent (never here) and in
# testing max <= min instead of max == min, which is the same test since min <= max always.
make_qkx3_quants = make_qkx2_quants


@njit(cache=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, quant_weights):
    """Unsigned scale search for the super-block scales (x >= 0)."""
    mx = F(0.0)
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(nmax) / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])
    scale = F(1.0) / iscale
    best_mse = F(0.0)
    for i in range(n):
        diff = x[i] - scale * F(L[i])
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F(0.1) * F(is_) + F(nmax)) / mx
        scale_is = F(1.0) / iscale_is
        mse = F(0.0)
        for i in range(n):
            l = nearest_int(iscale_is * x[i])
            l = min(nmax, l)
            diff = x[i] - scale_is * F(l)
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = min(nmax, l)
        L[i] = l
        w = quant_weights[i]
        fl = F(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fli = F(L[i])
            slx = sumlx - w * x[i] * fli
            sl2 = suml2 - w * fli * fli
            if slx > 0 and sl2 > 0:
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = min(nmax, new_l)
                if new_l != L[i]:
                    fn = F(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F(0.0)


def run_rows(driver, x: np.ndarray, out: np.ndarray, *args) -> np.ndarray:
    """Run a nogil row driver ``driver(x, *args, out, r0, r1)`` over all rows, split in chunks
    across the kernels' worker threads (``kernels.set_num_threads`` decides how many)."""
    from ..threads import get_num_threads, pool

    n_rows = x.shape[0]
    n_threads = min(get_num_threads(), n_rows)
    if n_threads <= 1 or x.size < 16384:
        driver(x, *args, out, 0, n_rows)
        return out
    n_chunks = min(n_rows, 4 * n_threads)
    bounds = np.linspace(0, n_rows, n_chunks + 1).astype(np.int64)
    futures = [pool().submit(driver, x, *args, out, int(a), int(b))
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for f in futures:
        f.result()
    return out


def rows_and_weights(x: np.ndarray, imatrix, block: int, name: str):
    """Validate rows for an encoder: -> (x float32 C-contiguous (n_rows, n), qw float32 (n,), has_qw)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name}: rows must be 2-D (n_rows, n_per_row), got shape {x.shape}")
    n = x.shape[1]
    if n % block:
        raise ValueError(f"{name}: row length {n} is not a multiple of the block size {block}")
    if imatrix is None:
        return x, np.zeros(n, np.float32), False
    qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if qw.shape[0] != n:
        raise ValueError(f"{name}: imatrix has {qw.shape[0]} entries but rows have {n} columns")
    return x, qw, True
