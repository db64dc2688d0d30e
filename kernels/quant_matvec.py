"""Quantized matrix-vector products y = W x on repacked weights (see repack.py).

Fast kernels, one per packed kind, parallel over rows with ``prange``:

* The weights are decoded on the fly (``d * q + m`` per 32-weight block is applied to
  the block's partial dot product; W is never materialised as float32).
* Arithmetic, every kind: float32 products and float32 sums (``fastmath``).  Per block
  ``p = sum_k q_k x_k`` over the integer quants, then ``acc += d p + m sum(x_block)``
  (Q6_K: ``acc += s_lo p_lo + s_hi p_hi`` over the (q - 32) values; F16/BF16/F32: a
  plain dot on the converted weights).  Each row is computed by one thread in a fixed
  order, so results do not depend on the thread count.
* Error bound the tests use: ``|y - W x| <= 1e-5 * sum_j |w_j x_j|`` (+1e-30), with W
  the exact dequantization and ``W x`` taken in float64.

Vectorization (checked with ``inspect_asm``, see ``tools/bench_kernels.py --asm``):
the quants are block-transposed, so LLVM vectorizes the loop over blocks (8 blocks
per ymm register: vpmovzxbd, vcvtdq2ps, vfmadd231ps) with no horizontal sums inside
the row.  Three details keep it that way: indices into the quants are uint64 (``_u``;
Numba's negative-index wraparound otherwise turns the loads into byte inserts), bit
fields are extracted with int32 constants (int64 lanes do not vectorize on AVX2), and
each inner loop over the 16 bytes of a block stays small enough for LLVM to unroll it
fully (a larger body makes LLVM vectorize the wrong loop).

``x`` is re-laid out once per call (a few KB) to match the quants:
``xlo[k*nbv + b] = x[32 b + k]``, ``xhi[k*nbv + b] = x[32 b + 16 + k]``, zero for the
padding blocks ``nb <= b < nbv`` (nbv = nb rounded up to 8, so the vector loop over
blocks has no scalar remainder; the padding reads of W land in the next row or in
the zeroed slack after the arrays, and contribute finite * 0 = 0).

The exact decoders (``decode_*``: rows -> float32 for ``Weight.rows``/``dequantize``
and the matmul tiles) are serial and nogil; Weight splits rows over worker threads.
The ``raw`` kind (types without a fast layout) decodes a few rows at a time with the
registry's decoder into a per-thread buffer and dots them (float32, same bound).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

f32 = np.float32
_M15 = np.uint8(15)
_S4 = np.uint8(4)
_I15 = np.int32(15)
_I4 = np.int32(4)
_I32 = np.int32(32)
_I3 = np.int32(3)
_I1 = np.int32(1)


# --------------------------------------------------------------------------- activation layouts


@njit(cache=True, inline="always")
def _u(i):
    """An index known to be >= 0, as uint64: Numba then emits no negative-index wraparound,
    which would otherwise stop LLVM from vectorizing the loads."""
    return np.uint64(i)



@njit(cache=True)
def _x_halves(x, nbv):
    """x (32 nb,) -> xlo, xhi (16 nbv,) block-transposed halves and xs (nbv,) block sums, zero-padded to nbv blocks."""
    nb = x.size // 32
    xlo = np.zeros(16 * nbv, np.float32)
    xhi = np.zeros(16 * nbv, np.float32)
    xs = np.zeros(nbv, np.float32)
    for b in range(nb):
        s = f32(0)
        for k in range(16):
            a = x[32 * b + k]
            c = x[32 * b + 16 + k]
            xlo[k * nbv + b] = a
            xhi[k * nbv + b] = c
            s += a + c
        xs[b] = s
    return xlo, xhi, xs


@njit(cache=True)
def _x_full(x, nbv):
    """x (32 nb,) -> block-transposed copy xt[k*nbv + b] = x[32 b + k], zero-padded to nbv blocks."""
    nb = x.size // 32
    xt = np.zeros(32 * nbv, np.float32)
    for b in range(nb):
        for k in range(32):
            xt[k * nbv + b] = x[32 * b + k]
    return xt


# --------------------------------------------------------------------------- fast kernels


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4(qt, d, m, nbv, x, y):
    """Q4_0 / Q4_1 / Q4_K packed: qt (rows, 16 nb) uint8, d, m (rows, nb) f32; y (rows,) f32.

    Two rows per pass share the activation loads.  Rows are paired by index (2i, 2i+1;
    an odd last row with itself), so results do not depend on the thread count; stacking
    weights with an odd row count shifts the pairing and may change the last bit."""
    rows, nb = d.shape
    xlo, xhi, xs = _x_halves(x, nbv)
    for rr in prange((rows + 1) // 2):
        r = 2 * rr
        r2 = min(r + 1, rows - 1)
        q = qt[r]
        q2 = qt[r2]
        acc = f32(0)
        acc2 = f32(0)
        for b in range(nbv):
            p = f32(0)
            p2 = f32(0)
            # two short loops (not one) so that LLVM unrolls them fully and vectorizes over b
            for k in range(16):
                xl = xlo[k * nbv + b]
                p += f32(q[_u(k * nb + b)] & _M15) * xl
                p2 += f32(q2[_u(k * nb + b)] & _M15) * xl
            for k in range(16):
                xh = xhi[k * nbv + b]
                p += f32(q[_u(k * nb + b)] >> _S4) * xh
                p2 += f32(q2[_u(k * nb + b)] >> _S4) * xh
            acc += d[r, b] * p + m[r, b] * xs[b]
            acc2 += d[r2, b] * p2 + m[r2, b] * xs[b]
        y[r] = acc
        y[r2] = acc2


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5(qt, qh, d, m, nbv, x, y):
    """Q5_0 / Q5_1 / Q5_K packed: as q4 plus qh (rows, nb) int32 holding the 5th bits.

    One row per pass: with two, the loop bodies grow past LLVM's full-unroll limit
    and the block loop is no longer vectorized."""
    rows, nb = d.shape
    xlo, xhi, xs = _x_halves(x, nbv)
    for r in prange(rows):
        q = qt[r]
        h = qh[r]
        dr = d[r]
        mr = m[r]
        acc = f32(0)
        for b in range(nbv):
            p = f32(0)
            hb = h[b]
            # two short loops (not one) so that LLVM unrolls them fully and vectorizes over b
            for k in range(16):
                v = np.int32(q[_u(k * nb + b)])
                lo = (v & _I15) | (((hb >> np.int32(k)) & _I1) << _I4)
                p += f32(lo) * xlo[k * nbv + b]
            for k in range(16):
                v = np.int32(q[_u(k * nb + b)])
                hi = (v >> _I4) | (((hb >> np.int32(k + 16)) & _I1) << _I4)
                p += f32(hi) * xhi[k * nbv + b]
            acc += dr[b] * p + mr[b] * xs[b]
        y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q8(qt, d, nbv, x, y):
    """Q8_0 packed: qt (rows, 32 nb) int8, d (rows, nb) f32."""
    rows, nb = d.shape
    xt = _x_full(x, nbv)
    for r in prange(rows):
        q = qt[r]
        dr = d[r]
        acc = f32(0)
        for b in range(nbv):
            p = f32(0)
            for k in range(32):
                p += f32(q[_u(k * nb + b)]) * xt[k * nbv + b]
            acc += dr[b] * p
        y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q6(qt, hl, hh, sl, sh, nbv, x, y):
    """Q6_K packed: low nibbles qt, top-2-bit words hl/hh, scales sl/sh (weights 0-15 / 16-31)."""
    rows, nb = sl.shape
    xlo, xhi, xs = _x_halves(x, nbv)
    for r in prange(rows):
        q = qt[r]
        hlr = hl[r]
        hhr = hh[r]
        slr = sl[r]
        shr = sh[r]
        acc = f32(0)
        for b in range(nbv):
            pl = f32(0)
            ph = f32(0)
            a = hlr[b]
            c = hhr[b]
            # two short loops (not one) so that LLVM unrolls them fully and vectorizes over b
            for k in range(16):
                v = np.int32(q[_u(k * nb + b)])
                lo = ((v & _I15) | (((a >> np.int32(2 * k)) & _I3) << _I4)) - _I32
                pl += f32(lo) * xlo[k * nbv + b]
            for k in range(16):
                v = np.int32(q[_u(k * nb + b)])
                hi = ((v >> _I4) | (((c >> np.int32(2 * k)) & _I3) << _I4)) - _I32
                ph += f32(hi) * xhi[k * nbv + b]
            acc += slr[b] * pl + shr[b] * ph
        y[r] = acc


@njit(cache=True, inline="always")
def half_to_f32(h):
    """IEEE half bits (uint16) -> float32, exact and branch-free (so it vectorizes).

    The 15 magnitude bits shifted into a float32 are the value times 2^-112 for
    normals and subnormals alike; the multiply by 2^112 is exact.  Inf/NaN keep
    their payload as ggml's conversion does."""
    u = np.uint32(h)
    em = np.uint32(u & np.uint32(0x7FFF))
    v = np.uint32(em << np.uint32(13)).view(np.float32) * np.float32(5.192296858534828e33)
    special = np.uint32(np.uint32(0x7F800000) | ((u & np.uint32(0x3FF)) << np.uint32(13)))
    if em >= np.uint32(0x7C00):
        v = special.view(np.float32)
    return -v if u & np.uint32(0x8000) else v


@njit(cache=True, inline="always")
def bf16_to_f32(h):
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_f16(w, x, y):
    """F16 weights kept as their uint16 bits, converted on the fly."""
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += half_to_f32(wr[j]) * x[j]
        y[r] = acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_bf16(w, x, y):
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += bf16_to_f32(wr[j]) * x[j]
        y[r] = acc


@njit(nogil=True, cache=True)
def decode_f16(w, ids, out):
    cols = w.shape[1]
    for i in range(ids.size):
        wr = w[ids[i]]
        o = out[i]
        for j in range(cols):
            o[j] = half_to_f32(wr[j])


@njit(nogil=True, cache=True)
def decode_bf16(w, ids, out):
    cols = w.shape[1]
    for i in range(ids.size):
        wr = w[ids[i]]
        o = out[i]
        for j in range(cols):
            o[j] = bf16_to_f32(wr[j])


@njit(parallel=True, fastmath=True, cache=True)
def matvec_f32(w, x, y):
    rows, cols = w.shape
    for r in prange(rows):
        wr = w[r]
        acc = f32(0)
        for j in range(cols):
            acc += wr[j] * x[j]
        y[r] = acc


@njit(nogil=True, fastmath=True, cache=True)
def dot_rows(w, x, y):
    """y[i] = w[i] . x for a small float32 tile (serial; called per thread by the raw path)."""
    n, cols = w.shape
    for i in range(n):
        acc = f32(0)
        wr = w[i]
        for j in range(cols):
            acc += wr[j] * x[j]
        y[i] = acc


# --------------------------------------------------------------------------- exact decoders (rows -> float32)
# Serial and nogil (Weight splits the rows over its worker threads; cheaper to compile than prange).
# No fastmath: d*q is exact in float32 and "+ m" rounds once, exactly as ggml's expressions;
# the symmetric types use (q - off) * d as ggml does, which also keeps the sign of zero.


@njit(nogil=True, cache=True)
def decode_q4(qt, d, m, off, ids, out):
    """off = 0: w = q d + m (Q4_1, Q4_K); off = 8: w = (q - 8) d (Q4_0, m unused)."""
    nb = d.shape[1]
    for i in range(ids.size):
        r = ids[i]
        q = qt[r]
        o = out[i]
        for b in range(nb):
            db = d[r, b]
            mb = m[r, b]
            for k in range(16):
                v = np.int32(q[k * nb + b])
                lo = v & _I15
                hi = v >> _I4
                if off == 0:
                    o[32 * b + k] = f32(lo) * db + mb
                    o[32 * b + 16 + k] = f32(hi) * db + mb
                else:
                    o[32 * b + k] = f32(lo - off) * db
                    o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_q5(qt, qh, d, m, off, ids, out):
    """off = 0: w = q d + m (Q5_1, Q5_K); off = 16: w = (q - 16) d (Q5_0, m unused)."""
    nb = d.shape[1]
    for i in range(ids.size):
        r = ids[i]
        q = qt[r]
        o = out[i]
        for b in range(nb):
            db = d[r, b]
            mb = m[r, b]
            hb = qh[r, b]
            for k in range(16):
                v = np.int32(q[k * nb + b])
                lo = (v & _I15) | (((hb >> k) & 1) << 4)
                hi = (v >> _I4) | (((hb >> (k + 16)) & 1) << 4)
                if off == 0:
                    o[32 * b + k] = f32(lo) * db + mb
                    o[32 * b + 16 + k] = f32(hi) * db + mb
                else:
                    o[32 * b + k] = f32(lo - off) * db
                    o[32 * b + 16 + k] = f32(hi - off) * db


@njit(nogil=True, cache=True)
def decode_q8(qt, d, ids, out):
    nb = d.shape[1]
    for i in range(ids.size):
        r = ids[i]
        q = qt[r]
        o = out[i]
        for b in range(nb):
            db = d[r, b]
            for k in range(32):
                o[32 * b + k] = f32(q[k * nb + b]) * db


@njit(nogil=True, cache=True)
def decode_q6(qt, hl, hh, sl, sh, ids, out):
    nb = sl.shape[1]
    for i in range(ids.size):
        r = ids[i]
        q = qt[r]
        o = out[i]
        for b in range(nb):
            a = hl[r, b]
            c = hh[r, b]
            s0 = sl[r, b]
            s1 = sh[r, b]
            for k in range(16):
                v = np.int32(q[k * nb + b])
                lo = ((v & _I15) | (((a >> (2 * k)) & 3) << 4)) - _I32
                hi = ((v >> _I4) | (((c >> (2 * k)) & 3) << 4)) - _I32
                o[32 * b + k] = s0 * f32(lo)
                o[32 * b + 16 + k] = s1 * f32(hi)


@njit(nogil=True, cache=True)
def gather_f32(w, ids, out):
    for i in range(ids.size):
        out[i, :] = w[ids[i]]
