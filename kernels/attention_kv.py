"""Attention over a KV cache stored in GGML block formats (Numba).

A cache of this kind keeps each (position, kv head) row of ``head_dim`` values as the bytes of
one GGML type: F32, F16, BF16 or one of the 32-value block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
IQ4_NL (llama.cpp's cache types).  Rows are written with the types' own bit-exact encoders
(``kernels.legacy``, ``kernels.numerics``) and read back with their exact decoders, so a cache row
decodes to exactly what ggml's dequantization of the same bytes gives.

The attention kernels never make a float copy of the cache.  Over the 32-value block types a
few tokens' attention is integer arithmetic on the stored quants (the section "integer decode
attention" below: the query rounded per block to two int8 terms as the matvecs round
activations, key blocks multiplied as integers; on hosts with AVX-512 VNNI the values too, each
head's softmax weight times the block's scale rounded per 128 positions to two int8 terms and
summed along positions by vpdpbusd over 4 rows' bytes interleaved in registers; elsewhere
value blocks converted to floats once per position
for all the heads that share them, the block's scale riding on each head's weight).
Over F32, F16 and BF16 rows each key row is converted 16 values at a time into registers, once
for all the query heads that share it (grouped-query attention: the section "float key scores").
Key rows of every type are taken every kv head of a position in turn, so that a chunk's keys are
read in one contiguous sweep (a stream the hardware prefetchers follow) while the same
positions' value rows are prefetched into the L2 cache.  Float values are then summed in
registers a few columns of 32 at a time, over a tile of rows that stays in the L1 cache from the
first columns to the last.  Elsewhere (the value sums) each kv head's rows are strided by every
kv head's row, a pattern the hardware prefetchers follow poorly:
the kernels prefetch the rows they read a few rows ahead (PREFETCH_ROWS).  A step's work is split into
chunks of keys; each chunk keeps its own running maximum, sum and weighted values (the
flash-decoding split), and the chunks are merged exactly afterwards, so even a model with one
kv head spreads a long context over every thread.

Shapes (n = new tokens, H = query heads, Hkv = kv heads, hd = head size, C = cache rows,
rb = bytes per row of the type):
    q3, out3: (n, H, hd) float32     k_rows, v_rows: (C, Hkv, rb_k), (C, Hkv, rb_v) uint8
Types are given by their GGML type id (``GGMLType``), a run-time integer.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .floats import decode_bf16, decode_f16, decode_f32
from .kinds.tiled import round_activations
from .legacy import (K_IQ4_NL, K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, decode_iq4_nl, decode_q4_0, decode_q4_1,
                     decode_q5_0, decode_q5_1, decode_q8_0, encode_rows)
from .legacy import KVALUES_IQ4NL
from .numerics import f16_bits_to_f32
from .ops import exp_shifted, f32_to_f16_bits
from .simd import (HOST_AVX2, HOST_AVX512, HOST_F16C, HOST_VNNI, I8, I16, I32, V8I32, V16I16, V32I8, data_ptr,
                   half_bits_to_f32, loader, madds, splat, spread_bits, x86)

# keys per work item of the attention kernels, and values decoded at a time within one (a tile of
# rows of float keys: 8 KiB, a quarter of the L1 data cache, beside the rows it is decoded from)
KEY_CHUNK = 256
TILE_VALUES = 2048
# F32 head sizes from which the values of a lone kv head are summed a whole row at a time, in
# place (``values_f32``), their rows not prefetched during the key scores (``_run_item``): a
# contiguous stream from memory, which the hardware prefetchers follow.  Through the columns'
# passes over tiles (``value_column``) they measured slower there: 1.75x with the first pass
# prefetching whole rows ahead, and the step 1.09x with the rows prefetched by the key scores
WHOLE_ROWS_HEAD = 128

_FAST = {"reassoc", "contract", "nsz"}
# int32 constants: integer literals are int64 in Numba, and int64 -> float32 conversion does not vectorize on AVX2
_I80 = np.int32(0x80)
_NO_WEIGHTS = np.zeros(1, dtype=np.float32)
# float16 bits -> float32 in the decoding loops: vcvtph2ps where the host has F16C, else bit arithmetic
_half_bits = half_bits_to_f32 if HOST_F16C else f16_bits_to_f32
# GGML type id -> ``kernels.legacy``'s encoder code (-1: not a block type of the cache)
LEGACY_KIND = np.full(32, -1, dtype=np.int64)
for _t, _k in ((8, K_Q8_0), (2, K_Q4_0), (3, K_Q4_1), (6, K_Q5_0), (7, K_Q5_1), (20, K_IQ4_NL)):
    LEGACY_KIND[_t] = _k


@njit(cache=True, nogil=True, fastmath=False)   # the exact decoders, never the calling kernel's flags
def decode_row(t, src, dst):
    """One cache row: src uint8 (rb,) of type t -> dst float32 (hd,), exactly as ggml decodes it."""
    if t == 8:
        decode_q8_0(src, dst)
    elif t == 2:
        decode_q4_0(src, dst)
    elif t == 1:
        decode_f16(src, dst)
    elif t == 0:
        decode_f32(src, dst)
    elif t == 30:
        decode_bf16(src, dst)
    elif t == 3:
        decode_q4_1(src, dst)
    elif t == 6:
        decode_q5_0(src, dst)
    elif t == 7:
        decode_q5_1(src, dst)
    elif t == 20:
        decode_iq4_nl(src, dst)
    else:
        raise ValueError("KV cache: unsupported row type")


@njit(cache=True, nogil=True)
def encode_row(t, x, dst, xbuf, ybuf):
    """One cache row: x float32 (hd,) -> dst uint8 (rb,) in type t, as ggml quantizes it (the
    reference rounding, no importance matrix; F16 and BF16 round to nearest even).
    xbuf (1, hd) float32 and ybuf (1, rb) uint8: scratch."""
    hd = x.shape[0]
    if t == 0:
        f = xbuf[0]
        for i in range(hd):
            f[i] = x[i]
        b = f.view(np.uint8)
        for i in range(dst.shape[0]):
            dst[i] = b[i]
        return
    if t == 1 or t == 30:
        for i in range(hd):
            xbuf[0, i] = x[i]
        u = xbuf[0].view(np.uint32)
        h = ybuf[0].view(np.uint16)
        if t == 1:
            f32_to_f16_bits(xbuf[0], h)
        else:
            for i in range(hd):                  # ggml_compute_fp32_to_bf16: nearest even, NaN quiet
                w = u[i]
                if (w & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                    h[i] = np.uint16((w >> np.uint32(16)) | np.uint32(64))
                else:
                    h[i] = np.uint16((w + np.uint32(0x7FFF) + ((w >> np.uint32(16)) & np.uint32(1)))
                                     >> np.uint32(16))
    else:
        for i in range(hd):
            xbuf[0, i] = x[i]
        kind = LEGACY_KIND[t]
        if kind < 0:
            raise ValueError("KV cache: unsupported row type")
        encode_rows(xbuf, _NO_WEIGHTS, False, kind, ybuf, 0, 1)
    for i in range(dst.shape[0]):
        dst[i] = ybuf[0, i]


@njit(cache=True, nogil=True)
def store_rows(k3, v3, tk, tv, k_rows, v_rows, pos0):
    """Encode the n new positions' keys and values into cache rows pos0..pos0+n-1.
    k3, v3: (n, Hkv, hd) float32; k_rows (C, Hkv, rb_k), v_rows (C, Hkv, rb_v) uint8."""
    n, Hkv, hd = k3.shape
    xbuf = np.empty((1, hd), dtype=np.float32)
    ybuf = np.empty((1, max(k_rows.shape[2], v_rows.shape[2])), dtype=np.uint8)
    for t in range(n):
        for h in range(Hkv):
            encode_row(tk, k3[t, h], k_rows[pos0 + t, h], xbuf, ybuf)
            encode_row(tv, v3[t, h], v_rows[pos0 + t, h], xbuf, ybuf)


@njit(cache=True, nogil=True)
def load_rows(t, rows, out):
    """Decode cache rows (m, Hkv, rb) of type t into out (m, Hkv, hd) float32."""
    for p in range(rows.shape[0]):
        for h in range(rows.shape[1]):
            decode_row(t, rows[p, h], out[p, h])


@njit(cache=True, nogil=True)
def load_heads(t, rows, p0, p1, out, part, parts):
    """Decode every kv head's cache rows p0..p1-1 (type t) into out (Hkv, p1 - p0, hd) float32,
    each head's rows contiguous: the keys or values of a batched (BLAS) attention, decoded once
    for all its query blocks.  The work is cut into (kv head, KEY_CHUNK rows) pieces; this call
    decodes share `part` of `parts` of them (nogil: the caller runs the shares on its threads)."""
    Hkv = rows.shape[1]
    nc = (p1 - p0 + KEY_CHUNK - 1) // KEY_CHUNK
    for w in range(Hkv * nc * part // parts, Hkv * nc * (part + 1) // parts):
        h, c = w // nc, w % nc
        j0 = p0 + c * KEY_CHUNK
        j1 = min(p1, j0 + KEY_CHUNK)
        decode_tile(t, rows, h, j0, j1, out[h, j0 - p0:j1 - p0])


@njit(cache=True, nogil=True, fastmath=_FAST)
def decode_tile(t, rows, h, j0, j1, buf):
    """Rows j0..j1-1 of kv head h (type t) into buf[:j1 - j0] (float32, hd wide), exactly as
    ``decode_row`` gives them.  F32, F16, BF16 and Q8_0 are written out here as straight loops,
    which LLVM vectorizes (F16 by vcvtph2ps where the host has F16C); the others go through their
    family decoders row by row."""
    hd = buf.shape[1]
    nb = hd // 32
    qk = hd // nb if nb else 32          # 32, as a run-time value: LLVM vectorizes the block loops instead
                                         # of unrolling them into scalar code
    if t == 8:                                                    # Q8_0: d (f16), 32 int8
        for j in range(j0, j1):
            r = rows[j, h]
            o = buf[j - j0]
            for b in range(nb):
                ob = 34 * b
                d = f16_bits_to_f32(np.uint32(r[ob]) | (np.uint32(r[ob + 1]) << np.uint32(8)))
                for i in range(qk):
                    o[qk * b + i] = np.float32((np.int32(r[ob + 2 + i]) ^ _I80) - _I80) * d
    elif t == 1:                                                  # F16
        u = rows.view(np.uint16)                                 # (C, Hkv, hd): the rows' halves
        for j in range(j0, j1):
            o = buf[j - j0]
            for i in range(hd):
                o[i] = _half_bits(u[j, h, i])
    elif t == 30:                                                 # BF16: the high half of a float32
        u = rows.view(np.uint16)
        for j in range(j0, j1):
            o = buf[j - j0]
            for i in range(hd):
                o[i] = np.uint32(np.uint32(u[j, h, i]) << np.uint32(16)).view(np.float32)
    elif t == 0:                                                  # F32
        f = rows.view(np.float32)                                # (C, Hkv, hd)
        for j in range(j0, j1):
            o = buf[j - j0]
            for i in range(hd):
                o[i] = f[j, h, i]
    else:
        for j in range(j0, j1):
            decode_row(t, rows[j, h], buf[j - j0])


# ---------------------------------------------------------------- integer decode attention
#
# Over a K cache of a 32-value block type the scores are integer dot products, as the matvecs
# form theirs: the query of each head is rounded per 32-block to two int8 terms
# (``round_activations``: x ~ dr (254 xq + xr), within max|x_block| / 64516 of x), kept as one
# int16 value x16 = 254 xq + xr (at most 32640 in magnitude), and each key block's quants u, read
# as unsigned bytes (q8_0 and iq4_nl's signed values offset by 128, the 4- and 5-bit quants as
# they are), give S = sum_k u_k x16_k, exact in int32.  The block's term of the score is then
# d dr (S - c SX) (+ m dr SX for the types with a minimum), SX = sum_k x16_k and c the type's
# offset (128, 8, 16 or 0).  The quants (Q8_0's as stored, signed: its products give S - 128 SX)
# are widened to int16 and multiplied by the query as int16 pairs summed into int32 lanes, one
# product per value and head: vpdpwssd on hosts with AVX-512 VNNI, vpmaddwd on AVX2 hosts
# (neither saturates: |u| <= 255), each
# block's quants unpacked once for a group of HEAD_GROUP query heads (grouped-query attention:
# the heads of one kv head share every key block read), the key loop inside the vector kernel,
# a position's rows of every kv head in turn (the keys one contiguous read, which the hardware
# prefetchers follow: kv head by kv head, each head's rows strided by every kv head's, Q8_0's
# took 1.85x the time from memory), which meanwhile prefetches the same positions' value rows
# into the L2 cache where several kv heads stride them (the key sums' work hides the value sums'
# reads from memory).
# The weighted values are summed one block column at a time.  On hosts with AVX-512 VNNI
# (``int_values``) as integers along the positions: each head's weight of position j times the
# block's scale, w_j = p_j d_j (its sign too), is rounded per VALUE_GROUP positions to two int8
# terms (``round_weights``: within max|w_group| / 64516, the matvecs' rounding of activations;
# the blocks' scales read by gathers of 16 rows, p d formed in the rounding's registers),
# four positions' blocks are unpacked to unsigned bytes and interleaved so that each int32 lane
# holds one dimension's four quants, and one vpdpbusd per term and 16 dimensions adds four
# positions' products for a head
# (``value_isums``); after each group dr (254 A + E - c SX) joins the float sums, and the
# minimum's term of q4_1 and q5_1 (sum_j p_j m_j, in float) is added at the end.  Otherwise
# every position's block is decoded once to floats (d (u - c) + m, ggml's values exactly) and
# added with each head's weight into sums that stay in registers over the positions
# (``value_column``, as the float types' values: the section "float value sums").  Every kernel
# has a portable Numba loop beside it giving identical results: the same integer sums, and the
# float steps through the same explicit fused multiply-adds (``fma32``).

# GGML type id -> bytes per block, offset of the quants in the block, offset of the fifth-bit
# word (-1: none), the integer subtracted from the unsigned quant (c), whether the block has a
# minimum; all -1 / 0 for a type without an integer path
_INT_TYPES = {8: (34, 2, -1, 128, 0), 2: (18, 2, -1, 8, 0), 3: (20, 4, -1, 0, 1), 6: (22, 6, 2, 16, 0),
              7: (24, 8, 4, 0, 1), 20: (18, 2, -1, 128, 0)}
BLOCK_BYTES = np.full(32, -1, np.int64)
QS_AT = np.full(32, -1, np.int64)
QH_AT = np.full(32, -1, np.int64)
OFFSET = np.zeros(32, np.int32)
HAS_MIN = np.zeros(32, np.bool_)
for _t, (_bb, _qs, _qh, _c, _m) in _INT_TYPES.items():
    BLOCK_BYTES[_t], QS_AT[_t], QH_AT[_t], OFFSET[_t], HAS_MIN[_t] = _bb, _qs, _qh, _c, _m
# GGML type id -> bytes of 32 consecutive values of a row (a block of the integer types; 128 for
# F32, 64 for F16 and BF16): a column of ``value_column``
COLUMN_BYTES = BLOCK_BYTES.copy()
COLUMN_BYTES[0], COLUMN_BYTES[1], COLUMN_BYTES[30] = 128, 64, 64
# iq4_nl's values offset by 128 (1..241), as unsigned bytes
IQ4NL_U8 = (KVALUES_IQ4NL.astype(np.int32) + 128).astype(np.uint8)


I64, F32 = ir.IntType(64), ir.FloatType()
# heads per integer-sum call: the query is padded with zero heads to a multiple of this
HEAD_GROUP = 4
# value rows per unit of the rounded weights of ``value_isums`` (a multiple of 16, at most 256: the
# int32 sums over a group, up to 256 x 255 x (254 x 127 + 127), must fit)
VALUE_GROUP = 128
# GGML type id -> the weighted values are summed as integers (``value_isums``; else as floats,
# ``value_column``): the integer types on hosts with AVX-512 VNNI
INT_VALUES = np.zeros(32, np.bool_)
for _t in _INT_TYPES:
    INT_VALUES[_t] = HOST_VNNI


@njit(cache=True, nogil=True, fastmath=_FAST)
def int_values(t):
    """The weighted values over value rows of type t are summed as integers (``values_int``):
    an integer type on a host with AVX-512 VNNI, for any number of heads per kv head."""
    return INT_VALUES[t]


@njit(cache=True, nogil=True, fastmath=_FAST)
def is_int_type(t):
    """Type t has the integer attention path (a 32-value block type of the cache)."""
    return 0 <= t < 32 and BLOCK_BYTES[t] > 0


@njit(cache=True, inline="always")
def block_quants(t, r, o, u):
    """The 32 quants of the block at r[o] (type t) as unsigned values, u (32,) int32."""
    q = o + QS_AT[t]
    if t == 8:
        for k in range(32):
            u[k] = np.int32(r[q + k]) ^ _I80
        return
    for j in range(16):
        u[j] = np.int32(r[q + j]) & np.int32(15)
        u[j + 16] = np.int32(r[q + j]) >> np.int32(4)
    if t == 20:
        for k in range(32):
            u[k] = np.int32(IQ4NL_U8[u[k]])
    elif QH_AT[t] >= 0:
        h = o + QH_AT[t]
        qh = (np.uint32(r[h]) | (np.uint32(r[h + 1]) << np.uint32(8)) | (np.uint32(r[h + 2]) << np.uint32(16))
              | (np.uint32(r[h + 3]) << np.uint32(24)))
        for k in range(32):
            u[k] |= np.int32((qh >> np.uint32(k)) & np.uint32(1)) << np.int32(4)


@njit(cache=True, inline="always")
def _half_at(r, o):
    """The float16 at bytes r[o], r[o + 1] (little-endian), as float32."""
    return f16_bits_to_f32(np.uint32(r[o]) | (np.uint32(r[o + 1]) << np.uint32(8)))


@intrinsic
def fma32(typingctx, a, b, c):
    """a b + c rounded once (float32): the integer kernels' vector and portable forms both round
    through it, so the compiler's own contraction of a multiply and an add (it fuses some and
    not others) cannot make them differ."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.call(_fma_fn(builder, F32), list(args))

    return sig, codegen


def _fma_fn(builder, ty):
    """llvm.fma of type ty (float or a vector of floats)."""
    name = "llvm.fma.f32" if ty == F32 else f"llvm.fma.v{ty.count}f32"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)


@njit(cache=True, inline="always")
def heads_per_call(G):
    """Query heads per call of the integer kernels: 1 for one head, else HEAD_GROUP (the query
    padded with zero heads to a multiple of it)."""
    return 1 if G == 1 else HEAD_GROUP


@njit(cache=True, nogil=True, fastmath=False)   # the order written, never a caller's flags
def key_scores_loop(t, n, k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so, out, oo,
                    ldo, ostride, pv, pvoff, pvstride, pvbytes):
    """The portable form of ``key_scores`` (the same integer sums and float operations, in the
    same order: identical results; no prefetches)."""
    u = np.empty(32, np.int32)
    acc = np.empty(n, np.float32)
    c = OFFSET[t]
    bb = BLOCK_BYTES[t]
    has_m = HAS_MIN[t]
    for j in range(count):
        for h in range(heads):
            for g in range(n):
                acc[g] = 0.0
            for b in range(nb):
                o = off + j * stride + h * hstride + b * bb
                block_quants(t, k, o, u)
                dk = _half_at(k, o)
                mk = _half_at(k, o + 2)
                for g in range(n):
                    S = np.int32(0)
                    x0 = xo + h * qstride + g * hd + 32 * b
                    for i in range(32):
                        S += u[i] * np.int32(x16[x0 + i])
                    i = so + h * (qstride // 32) + b * n + g
                    if has_m:
                        acc[g] = fma32(dr[i], fma32(dk, np.float32(S), mk * np.float32(sx[i])), acc[g])
                    else:
                        acc[g] = fma32(dk, dr[i] * np.float32(S - c * sx[i]), acc[g])
            for g in range(n):
                out[oo + h * ostride + g * ldo + j] = acc[g]


@njit(cache=True, nogil=True, fastmath=False)   # the order written, never a caller's flags
def value_column_loop(t, n, v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep):
    """The portable form of ``value_column`` (the same float operations in the same order:
    identical results), one column after another (no prefetches: pk, pkoff and pkstep unused)."""
    u = np.empty(32, np.int32)
    f = np.empty(32, np.float32)
    a = np.empty((n, 32), np.float32)
    c = OFFSET[t]
    folded = is_int_type(t) and not HAS_MIN[t]
    for b in range(hd // 32):
        cb = off + b * COLUMN_BYTES[t]
        for g in range(n):
            for k in range(32):
                a[g, k] = acc[ao + g * hd + 32 * b + k]
        for j in range(count):
            o = cb + j * stride
            if not is_int_type(t):
                decode_row(t, v[o:o + COLUMN_BYTES[t]], f)
            else:
                block_quants(t, v, o, u)
                dv = _half_at(v, o)
                for k in range(32):
                    f[k] = np.float32(u[k] - c) if folded else fma32(dv, np.float32(u[k] - c), _half_at(v, o + 2))
            for g in range(n):
                w = p[po + g * ldp + j]
                if folded:
                    w = w * dv
                for k in range(32):
                    a[g, k] = fma32(w, f[k], a[g, k])
        for g in range(n):
            for k in range(32):
                acc[ao + g * hd + 32 * b + k] = a[g, k]


@njit(cache=True, nogil=True, fastmath=False)   # the order written, never a caller's flags
def value_isums_loop(t, n, v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd):
    """The portable form of ``value_isums`` (the same integer sums, and the same float steps in
    the same order: identical results)."""
    u = np.empty(32, np.int32)
    A = np.empty((n, 32), np.int32)
    E = np.empty((n, 32), np.int32)
    c = OFFSET[t]
    for blk in range((count + VALUE_GROUP - 1) // VALUE_GROUP):
        A[:] = 0
        E[:] = 0
        for j in range(VALUE_GROUP * blk, min(VALUE_GROUP * blk + VALUE_GROUP, count)):
            block_quants(t, v, off + j * stride, u)
            for g in range(n):
                a = np.int32(xq[wo + g * ldw + j])
                e = np.int32(xr[wo + g * ldw + j])
                for k in range(32):
                    A[g, k] += u[k] * a
                    E[g, k] += u[k] * e
        for g in range(n):
            i = so + g * lds + blk
            cs = c * sx[i]
            for k in range(32):
                o = ao + g * hd + k
                acc[o] = fma32(dr[i], np.float32(np.int32(254) * A[g, k] + E[g, k] - cs), acc[o])


# ---------------------------------------------------------------- float key scores
#
# Over an F32, F16 or BF16 K cache whose head size is whole pieces of 16 values, the scores of a
# group of up to HEAD_GROUP query heads are taken one key row at a time: each piece of 16 values
# of the row is converted once (vcvtph2ps for F16) and multiplied into every head's 16 running
# lanes (one fused multiply-add per head; the even and the odd pieces into two sets of lanes, two
# chains of dependent multiply-adds per head instead of one), so the heads of a kv head share each
# row load in registers (grouped-query attention); each head's two sets are then added, and the
# lanes added by halves (lanes l and l + 8, then l and l + 4, l and l + 2, l and l + 1).  One call
# takes every kv head of a row before the next row (``scores_float``): the cache keeps a
# position's kv heads side by side, so a chunk of keys is one contiguous stream rather than one
# strided pass per kv head, and
# the value rows of the same positions are prefetched meanwhile, so that the value sums, kv head
# by kv head, find them in the L2 cache.  Those prefetches go to the L2 cache only (prefetcht1,
# as the integer key scores' do): into the L1 as well, a chunk's 256 KiB of values pushed the
# key pass's own lines out of it and the pass took 1.3x as long (MoE shape, F16: 8.4 against
# 6.4 ms over 16 layers; the whole step 0.74-0.81x with them in the L2 only).  The portable
# loop takes the same steps in the same order (``fma32`` and plain float32 additions):
# identical results.  The vector kernel writes the
# pieces of a row out for head sizes 64 and 128 (no loop to run per row and kv head; 256's
# measured no faster) and adds the lanes of a row's heads together (``_lane_sums``: the same additions).
# On AVX-512 hosts it takes two rows per pass (KEY_ROWS), each query piece loaded once for both
# rows' multiply-adds and both rows' lanes added together (8 vectors for 4 heads): rows j and
# j + count/2 rather than j and j + 1, so that each load of the pass walks its own contiguous
# stream (adjacent rows measured 1.8x slower from memory: the hardware prefetchers lost the
# stream); every score the same operations in the same order as one row alone.  With keys
# from the L2 cache the pass is 0.95x one row's time, and it gets them from there: while a work
# item's values are summed, the next item's keys are prefetched into the L2 cache, spread over
# the rows that the value sums' passes visit (``_next_keys``: one or two lines each), so that
# the memory, idle in the value sums (they read the L2 cache), serves the next key pass, which
# then reads only its value prefetches from memory
# (MoE shape, F16 and BF16: the step 0.91-0.93x; Gemma 3's 0.90-0.92x).

KEY_PIECE = 16
# rows ahead of the current one whose bytes the vector kernels prefetch: a decode step reads
# each kv head's rows with a stride of every kv head's row (a pattern the hardware prefetchers
# follow poorly), so the lines of the rows a few hundred nanoseconds ahead are requested here
# (not for Q8_0, whose sums measured 3-9% slower with them)
PREFETCH_ROWS = 16
# the least row stride (bytes) with prefetches: below it a kv head's pass touches most lines of
# the stretch anyway, which the hardware follows (SmolLM2's q4_0 rows, 36 bytes in 108, measured
# 0.96x with them)
PREFETCH_MIN_STRIDE = 256
# key rows per pass of the float key scores: two where the host has 32 vector registers (AVX-512:
# 16 lane vectors for 4 heads, each query piece loaded once for both rows), else one
KEY_ROWS = 2 if HOST_AVX512 else 1


@intrinsic
def prefetch(typingctx, a, off, nbytes):
    """Read prefetches of the nbytes from byte off of the contiguous array a (any dtype), one
    per 64-byte line: a hint with no effect on any result (addresses past the array are harmless:
    a prefetch never faults)."""
    sig = types.void(a, off, nbytes)

    def codegen(context, builder, signature, args):
        a, off, nbytes = args
        base = builder.gep(data_ptr(context, builder, signature.args[0], a, I8), [_i64(builder, off)])
        prefetch_row(builder, base, _i64(builder, nbytes))
        return context.get_dummy_value()

    return sig, codegen


def prefetch_ahead(builder, rp, stride, nbytes, locality=3):
    """IR: prefetch_row of the nbytes (i64) at PREFETCH_ROWS rows (of stride bytes) past i8* rp."""
    prefetch_row(builder, builder.gep(rp, [builder.mul(stride, ir.Constant(I64, PREFETCH_ROWS))]), nbytes, locality)


def strided_rows(builder, count, stride, row_bytes, row, prefetches=True):
    """IR: row(j, pf) for j in range(count), the loop emitted twice and one copy chosen before it:
    pf true (the row is to prefetch the rows ahead, ``prefetch_ahead``) where the rows are strided
    (stride > row_bytes: several kv heads) by PREFETCH_MIN_STRIDE bytes or more, false elsewhere
    (contiguous rows are left to the hardware prefetchers, which follow them; software
    prefetches there measured slower) or without prefetches."""
    if not prefetches:
        with cgutils.for_range(builder, count) as loop:
            row(loop.index, False)
        return
    strided = builder.and_(builder.icmp_signed(">", stride, row_bytes),
                           builder.icmp_signed(">=", stride, ir.Constant(I64, PREFETCH_MIN_STRIDE)))
    with builder.if_else(strided) as (then, otherwise):
        for branch, pf in ((then, True), (otherwise, False)):
            with branch:
                with cgutils.for_range(builder, count) as loop:
                    row(loop.index, pf)


def prefetch_row(builder, p, nbytes, locality=3):
    """IR: read prefetches of the nbytes (i64) from i8* p, one per 64-byte line: to every cache
    level (locality 3), or to the L2 cache and beyond only (2: prefetcht1, for rows read after
    the current loop, which would otherwise push its own data out of the L1)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32,
                                                                                         I32]), "llvm.prefetch.p0i8")
    with cgutils.for_range_slice(builder, ir.Constant(I64, 0), nbytes, ir.Constant(I64, 64)) as (i, _):
        builder.call(fn, [builder.gep(p, [i]), ir.Constant(I32, 0), ir.Constant(I32, locality), ir.Constant(I32, 1)])


@njit(cache=True, nogil=True, fastmath=False)   # the order written, never a caller's flags
def float_key_scores_loop(t, n, k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo, ldo, ostride,
                          pv, pvoff, pvbytes):
    """The portable form of ``float_key_scores`` (the same float operations in the same order:
    identical results; no prefetches)."""
    acc = np.empty((n, 2, KEY_PIECE), np.float32)
    f = np.empty(KEY_PIECE, np.float32)
    r = np.empty(KEY_PIECE, np.float32)
    pb = COLUMN_BYTES[t] // 2                    # bytes of a piece of 16 values
    for j in range(count):
        for u in range(heads):
            for g in range(n):
                for i in range(KEY_PIECE):
                    acc[g, 0, i] = 0.0
                    acc[g, 1, i] = 0.0
            for c in range(hd // KEY_PIECE):
                o = off + j * stride + u * hstride + c * pb
                decode_row(t, k[o:o + pb], f)
                for g in range(n):
                    x0 = qo + u * qstride + g * hd + KEY_PIECE * c
                    for i in range(KEY_PIECE):
                        acc[g, c & 1, i] = fma32(q[x0 + i], f[i], acc[g, c & 1, i])
            for g in range(n):
                w = KEY_PIECE
                for i in range(w):
                    r[i] = acc[g, 0, i] + acc[g, 1, i]
                while w > 1:
                    w //= 2
                    for i in range(w):
                        r[i] = r[i] + r[i + w]
                out[oo + u * ostride + g * ldo + j] = r[0]


def _float_values(builder, load, p, t, lanes):
    """IR: the ``lanes`` values of float type t (F32, F16 by vcvtph2ps, BF16 as the high halves)
    at i8* p, as a <lanes x float>."""
    vf, vi = ir.VectorType(F32, lanes), ir.VectorType(I32, lanes)
    if t == 0:
        return load(p, 0, vf)
    if t == 1:
        return builder.fpext(load(p, 0, ir.VectorType(ir.HalfType(), lanes)), vf)
    w = builder.zext(load(p, 0, ir.VectorType(ir.IntType(16), lanes)), vi)
    return builder.bitcast(builder.shl(w, ir.Constant(vi, [16] * lanes)), vf)


def _lane_sums(builder, vs):
    """IR: the sums of the 16 lanes of each <16 x float> of vs (1 to 8 of them), each added by
    halves (lanes l and l + 8, then l and l + 4, l and l + 2, l and l + 1), as float scalars.
    Several vectors are reduced together (padded with zero vectors to 4 or 8), the halves of two
    vectors gathered into one by each shuffle (a transpose) while two or more remain, then the
    last vector's halves added in place: the same additions of the same operands as one vector
    at a time, in fewer instructions."""
    vf, i16 = vs[0].type, ir.VectorType(I32, 16)
    if len(vs) == 1:
        v, w = vs[0], 16
        while w > 1:
            w //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, w), list(range(w))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, w), list(range(w, 2 * w))))
            v = builder.fadd(lo, hi)
        return [builder.extract_element(v, ir.Constant(I32, 0))]
    cur = list(vs) + [ir.Constant(vf, [0.0] * 16)] * ((4 if len(vs) <= 4 else 8) - len(vs))
    gs, w = 16, 16          # each vector: groups of gs lanes, one per vector of vs, its sums in the first w
    while w > 1:
        w //= 2
        if len(cur) > 1:    # pairs into one: lanes l < w of each group (a's then b's) plus lanes l + w
            lo = [k + l for k in range(0, 16, gs) for l in range(w)]
            lo = lo + [16 + i for i in lo]
            hi = [i + w for i in lo]
            cur = [builder.fadd(builder.shuffle_vector(a, b, ir.Constant(i16, lo)),
                                builder.shuffle_vector(a, b, ir.Constant(i16, hi)))
                   for a, b in zip(cur[0::2], cur[1::2])]
            gs = w
        else:               # in place: lane l of each group plus lane l + w
            e = cur[0]
            cur = [builder.fadd(e, builder.shuffle_vector(e, e, ir.Constant(i16, [i ^ w for i in range(16)])))]
    return [builder.extract_element(cur[0], ir.Constant(I32, gs * g)) for g in range(len(vs))]


def _float_key_scores_ir(t, n):
    """The intrinsic (k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo, ldo, ostride,
    pv, pvoff, pvbytes) of ``float_key_scores`` for float type t (F32, F16, BF16) and n (1 to
    HEAD_GROUP) heads: per pass of KEY_ROWS rows (rows j and j + count // KEY_ROWS; an odd
    count's last row alone), for each of the ``heads`` kv heads in turn (one contiguous sweep of
    each row when they are all of them), each piece of 16 values of each row converted once into
    a <16 x float> and fused-multiply-added into the n heads' lane vectors of the row (each query
    piece loaded once for the rows), which stay in registers over the kv head's rows; then each
    head's lanes added by halves, the rows' heads together.  Meanwhile the
    pvbytes bytes of row j + PREFETCH_ROWS of pv (the value rows of the same positions, read
    next) are prefetched into the L2 cache (not the L1: see the section comment), so that the
    value sums find them there."""

    def fk(typingctx, k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo, ldo, ostride, pv, pvoff,
           pvbytes):
        sig = types.void(k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo, ldo, ostride, pv, pvoff,
                         pvbytes)

        def codegen(context, builder, signature, args):
            (k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo, ldo, ostride, pv, pvoff,
             pvbytes) = args
            aty = signature.args
            off, stride, count, heads, hstride, qo, qstride, hd, oo, ldo, ostride, pvoff, pvbytes = (
                _i64(builder, v) for v in (off, stride, count, heads, hstride, qo, qstride, hd, oo, ldo, ostride,
                                           pvoff, pvbytes))
            load = loader(builder)
            L = KEY_PIECE
            vf = ir.VectorType(F32, L)
            kbase = builder.gep(data_ptr(context, builder, aty[0], k, I8), [off])
            qbase0 = builder.gep(data_ptr(context, builder, aty[6], q, F32), [qo])
            op0 = builder.gep(data_ptr(context, builder, aty[10], out, F32), [oo])
            pvbase = builder.gep(data_ptr(context, builder, aty[14], pv, I8), [pvoff])
            fma = _fma_fn(builder, vf)
            zero = ir.Constant(vf, [0.0] * L)
            # accs[r][g][parity]: row r of the pass, head g, the even or odd pieces' lanes
            accs = [[[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(n)]
                    for _ in range(KEY_ROWS)]
            pieces = builder.udiv(hd, ir.Constant(I64, L))
            pb = int(COLUMN_BYTES[t]) // 2

            def piece(rbases, qbase, c, parity):    # piece c of the rows into each head's lanes of this parity
                fs = [_float_values(builder, load, builder.gep(rb, [builder.mul(c, ir.Constant(I64, pb))]), t, L)
                      for rb in rbases]
                x16 = builder.mul(c, ir.Constant(I64, L))
                for g in range(n):                  # each query piece loaded once for the rows
                    xp = builder.gep(qbase, [builder.add(builder.mul(hd, ir.Constant(I64, g)), x16)])
                    xv = builder.load(builder.bitcast(xp, vf.as_pointer()), align=4)
                    for r, f in enumerate(fs):
                        a = accs[r][g][parity]
                        builder.store(builder.call(fma, [xv, f, builder.load(a)]), a)

            def head_rows(js, u):                   # kv head u of the rows js (1 or KEY_ROWS of them)
                rbases = [builder.gep(kbase, [builder.add(builder.mul(j, stride), builder.mul(u, hstride))])
                          for j in js]
                qbase = builder.gep(qbase0, [builder.mul(u, qstride)])
                op = builder.gep(op0, [builder.mul(u, ostride)])
                for r in range(len(js)):
                    for pair in accs[r]:
                        for a in pair:
                            builder.store(zero, a)

                def any_size():
                    with cgutils.for_range(builder, builder.udiv(pieces, ir.Constant(I64, 2))) as loop:
                        c = builder.mul(loop.index, ir.Constant(I64, 2))
                        piece(rbases, qbase, c, 0)
                        piece(rbases, qbase, builder.add(c, ir.Constant(I64, 1)), 1)
                    odd = builder.icmp_unsigned("!=", builder.urem(pieces, ir.Constant(I64, 2)), ir.Constant(I64, 0))
                    with builder.if_then(odd):
                        piece(rbases, qbase, builder.sub(pieces, ir.Constant(I64, 1)), 0)

                def unrolled(size, otherwise):     # the common head sizes: the pieces written out
                    def emit():
                        with builder.if_else(builder.icmp_unsigned("==", hd, ir.Constant(I64, size))) as (yes, no):
                            with yes:
                                for c in range(size // L):
                                    piece(rbases, qbase, ir.Constant(I64, c), c & 1)
                            with no:
                                otherwise()
                    return emit
                unrolled(128, unrolled(64, any_size))()
                sums = _lane_sums(builder, [builder.fadd(builder.load(accs[r][g][0]), builder.load(accs[r][g][1]))
                                            for r in range(len(js)) for g in range(n)])
                for r, j in enumerate(js):
                    for g in range(n):
                        dst = builder.gep(op, [builder.add(builder.mul(ldo, ir.Constant(I64, g)), j)])
                        builder.store(sums[r * n + g], dst)

            def rows(js):                           # the rows js, every kv head of each
                for j in js:
                    ahead = builder.add(j, ir.Constant(I64, PREFETCH_ROWS))
                    prefetch_row(builder, builder.gep(pvbase, [builder.mul(ahead, pvbytes)]), pvbytes, 2)
                with cgutils.for_range(builder, heads) as kvh:
                    head_rows(js, kvh.index)

            # rows j and j + h together (h = count // KEY_ROWS), so that each load of the pass
            # walks its own contiguous stream of the keys; an odd count's last row alone
            h = builder.udiv(count, ir.Constant(I64, KEY_ROWS))
            with cgutils.for_range(builder, h) as loop:
                rows([builder.add(loop.index, builder.mul(h, ir.Constant(I64, r))) for r in range(KEY_ROWS)])
            with cgutils.for_range_slice(builder, builder.mul(h, ir.Constant(I64, KEY_ROWS)), count,
                                         ir.Constant(I64, 1)) as (j, _):
                rows([j])
            return context.get_dummy_value()

        return sig, codegen

    fk.__name__ = fk.__qualname__ = f"float_key_scores_{t}_{n}"
    return intrinsic(fk)


def _float_switch(make, n):
    """A Numba function (t, *args) calling make(t, n)(*args) for the run-time float type t (F32,
    F16 or BF16)."""
    f32, f16, bf16 = (make(t, n) for t in (0, 1, 30))

    @njit(nogil=True)
    def switch(t, *args):
        if t == 1:
            f16(*args)
        elif t == 0:
            f32(*args)
        else:
            bf16(*args)
    return switch


def float_key_scores(t, n, simd, *args):
    """float_key_scores(t, n, simd, k, off, stride, count, heads, hstride, q, qo, qstride, hd, out, oo,
    ldo, ostride, pv, pvoff, pvbytes): the scores of ``count`` key rows, for each of ``heads`` kv
    heads, of hd values (a multiple of KEY_PIECE) of float type t (F32, F16, BF16), kv head u of row
    j at bytes k[off + j stride + u hstride], for n (1 to HEAD_GROUP) query heads per kv head, head g
    of kv head u at q[qo + u qstride + g hd]: out[oo + u ostride + g ldo + j] = the dot product of
    the two, in the order of the section comment.  The pvbytes bytes of pv from pvoff + (j +
    PREFETCH_ROWS) pvbytes are prefetched with row j (pvbytes 0: none).  simd: by 16-lane vectors
    (one zmm register on AVX-512 hosts, two ymm on AVX2 hosts) where the host has AVX2 and F16C,
    else the portable loop; the same results.  (Callable
    from Numba code only.)"""
    raise NotImplementedError("float_key_scores runs inside Numba kernels")


@overload(float_key_scores)
def _float_key_scores_impl(t, n, simd, *args):
    return _dispatch(_float_key_scores_ir, float_key_scores_loop, HOST_AVX2 and HOST_F16C, every_n=True,
                     switch=_float_switch)


def _emit_block_quants(builder, load, rp, t):
    """IR: the <32 x i8> unsigned quants of the block at i8* rp of type t (as block_quants)."""
    q = int(QS_AT[t])
    if t == 8:
        return builder.xor(load(rp, q, V32I8), ir.Constant(V32I8, [0x80] * 32))
    u = _emit_nibbles(builder, load, rp, t)
    if t == 20:
        shuf = x86(builder, "llvm.x86.avx2.pshuf.b", V32I8, V32I8, V32I8)
        return shuf(ir.Constant(V32I8, [int(v) for v in IQ4NL_U8] * 2), u)
    if QH_AT[t] >= 0:
        u = builder.or_(u, spread_bits(builder, load(rp, int(QH_AT[t]), I32), 16))
    return u


def _emit_nibbles(builder, load, rp, t):
    """IR: the <32 x i8> 4-bit quants of the block at i8* rp of a 4- or 5-bit type t (the low
    nibbles of its 16 bytes, then the high ones)."""
    v16 = ir.VectorType(I8, 16)
    qs = load(rp, int(QS_AT[t]), v16)
    lo = builder.and_(qs, ir.Constant(v16, [15] * 16))
    hi = builder.lshr(qs, ir.Constant(v16, [4] * 16))
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 32), list(range(32))))


def _i64(builder, v):
    return builder.sext(v, I64) if v.type.width < 64 else v


def _half_from(builder, p):
    """IR: the float16 at i8* p widened to float (vcvtph2ps)."""
    h = builder.load(builder.bitcast(p, ir.HalfType().as_pointer()), align=1)
    return builder.fpext(h, F32)


def _block_products(builder, load, t):
    """IR: quants(rp) -> times(xp): the block of type t at i8* rp unpacked once into its 32
    unsigned quants u (at most 255) widened to int16, Q8_0's as stored (u - 128, signed: S - 128
    SX comes out of the products exactly, with no offset to add and take away; for the 4- and
    5-bit types a subtraction before widening measured slower than the correction after the
    sums), then times(xp), the block's 32 int16 query values x16 at i16* xp -> <8 x i32>, the
    products summed four to an int32 lane (the lanes' total: S, or S - 128 SX): per half of 16
    values one vpdpwssd where the host has AVX-512 VNNI, else one vpmaddwd and an add (AVX2).
    Neither can saturate or wrap: a pair sum is at most 2 x 255 x 32640 in magnitude, a lane's
    four at most 4 x 255 x 32640 < 2^31."""
    if HOST_VNNI:
        dp = x86(builder, "llvm.x86.avx512.vpdpwssd.256", V8I32, V8I32, V8I32, V8I32)
        zero = ir.Constant(V8I32, [0] * 8)

        def product(acc, u, x):
            return dp(zero if acc is None else acc, builder.bitcast(u, V8I32), builder.bitcast(x, V8I32))
    else:
        _, maddwd = madds(builder)

        def product(acc, u, x):
            p = maddwd(u, x)
            return p if acc is None else builder.add(acc, p)

    def quants(rp):
        if t == 8:             # Q8_0's bytes as stored, signed: the products give S - 128 SX
            u, widen = load(rp, int(QS_AT[t]), V32I8), builder.sext
        else:
            u, widen = _emit_block_quants(builder, load, rp, t), builder.zext
        halves = [widen(builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(I32, 16),
                                                                 list(range(16 * h, 16 * h + 16)))), V16I16)
                  for h in range(2)]

        def times(xp):
            acc = None
            for h in range(2):
                acc = product(acc, halves[h], builder.load(builder.bitcast(builder.gep(xp, [ir.Constant(I32, 16 * h)]),
                                                                           V16I16.as_pointer()), align=2))
            return acc
        return times
    return quants


def _key_scores_ir(t, n):
    """The intrinsic (k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so,
    out, oo, ldo, ostride, pv, pvoff, pvstride, pvbytes) of ``key_scores`` for type t and n (1 or
    HEAD_GROUP) heads, a loop over the positions, each prefetching the pvbytes at position
    j + PREFETCH_ROWS (pv + pvoff + that position times pvstride) meanwhile, so that the value sums
    find them in the L2 cache, then taking the position's row of each kv head in turn: per block, the
    quants unpacked once and widened to int16, each head's int16 query values multiplied in by
    ``_block_products`` (AVX-512 VNNI's vpdpwssd, or AVX2's vpmaddwd), the n heads' lane totals
    S by one vphaddd tree, then the float combine on the n heads at once."""

    def ks(typingctx, k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so, out, oo, ldo,
           ostride, pv, pvoff, pvstride, pvbytes):
        sig = types.void(k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so, out, oo, ldo,
                         ostride, pv, pvoff, pvstride, pvbytes)

        def codegen(context, builder, signature, args):
            (k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so, out, oo, ldo, ostride, pv,
             pvoff, pvstride, pvbytes) = args
            aty = signature.args
            (off, stride, count, heads, hstride, nb, xo, qstride, hd, so, oo, ldo, ostride, pvoff, pvstride,
             pvbytes) = (_i64(builder, v) for v in (off, stride, count, heads, hstride, nb, xo, qstride, hd, so, oo,
                                                     ldo, ostride, pvoff, pvstride, pvbytes))
            pvbase = builder.gep(data_ptr(context, builder, aty[18], pv, I8), [pvoff])
            load = loader(builder)
            hadd = x86(builder, "llvm.x86.avx2.phadd.d", V8I32, V8I32, V8I32)
            quants = _block_products(builder, load, t)
            kbase0 = builder.gep(data_ptr(context, builder, aty[0], k, I8), [off])
            xbase0 = builder.gep(data_ptr(context, builder, aty[7], x16, I16), [xo])
            drp = data_ptr(context, builder, aty[11], dr, F32)
            sxp = data_ptr(context, builder, aty[12], sx, I32)
            op0 = builder.gep(data_ptr(context, builder, aty[14], out, F32), [oo])
            vf, vi = ir.VectorType(F32, n), ir.VectorType(I32, n)
            accp = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * n))
            v4 = ir.VectorType(I32, 4)
            undef = ir.Constant(V8I32, ir.Undefined)

            def halves(v):       # the two 128-bit halves of v added: <4 x i32>
                lo = builder.shuffle_vector(v, undef, ir.Constant(v4, [0, 1, 2, 3]))
                hi = builder.shuffle_vector(v, undef, ir.Constant(v4, [4, 5, 6, 7]))
                return builder.add(lo, hi)

            def splat_n(x):
                v = builder.insert_element(ir.Constant(vf, ir.Undefined), x, ir.Constant(I32, 0))
                return builder.shuffle_vector(v, ir.Constant(vf, ir.Undefined), ir.Constant(vi, [0] * n))

            sqstride = builder.sdiv(qstride, ir.Constant(I64, 32))

            def row(j, pfv, one):
                if pfv:
                    prefetch_ahead(builder, builder.gep(pvbase, [builder.mul(j, pvstride)]), pvstride, pvbytes, 2)
                if one:
                    head_row(j, ir.Constant(I64, 0))
                    return
                with cgutils.for_range(builder, heads) as hloop:
                    head_row(j, hloop.index)

            def head_row(j, h):
                rbase = builder.gep(kbase0, [builder.add(builder.mul(j, stride), builder.mul(h, hstride))])
                xbase = builder.gep(xbase0, [builder.mul(h, qstride)])
                so_h = builder.add(so, builder.mul(h, sqstride))
                op = builder.gep(op0, [builder.mul(h, ostride)])
                builder.store(ir.Constant(vf, [0.0] * n), accp)
                with cgutils.for_range(builder, nb) as loop:
                    b = loop.index
                    rp = builder.gep(rbase, [builder.mul(b, ir.Constant(I64, int(BLOCK_BYTES[t])))])
                    times = quants(rp)
                    x32 = builder.mul(b, ir.Constant(I64, 32))
                    ps = [times(builder.gep(xbase, [builder.add(builder.mul(hd, ir.Constant(I64, g)), x32)]))
                          for g in range(n)]
                    if n == 1:       # [S, S, S, S] -> <1 x i32>
                        s4 = halves(hadd(hadd(ps[0], ps[0]), hadd(ps[0], ps[0])))
                        S = builder.shuffle_vector(s4, s4, ir.Constant(vi, [0]))
                    else:            # [S_0, S_1, S_2, S_3]
                        S = halves(hadd(hadd(ps[0], ps[1]), hadd(ps[2], ps[3])))
                    i = builder.add(so_h, builder.mul(b, ir.Constant(I64, n)))
                    drv = builder.load(builder.bitcast(builder.gep(drp, [i]), vf.as_pointer()), align=4)
                    if t != 8:       # SX: Q8_0's products gave S - 128 SX
                        sxv = builder.load(builder.bitcast(builder.gep(sxp, [i]), vi.as_pointer()), align=4)
                    dk = splat_n(_half_from(builder, rp))
                    fma = _fma_fn(builder, vf)
                    if t != 8 and not HAS_MIN[t]:   # S - c SX
                        S = builder.sub(S, builder.mul(ir.Constant(vi, [int(OFFSET[t])] * n), sxv))
                    if HAS_MIN[t]:
                        mk = splat_n(_half_from(builder, builder.gep(rp, [ir.Constant(I32, 2)])))
                        msx = builder.fmul(mk, builder.sitofp(sxv, vf))
                        inner = builder.call(fma, [dk, builder.sitofp(S, vf), msx])
                        acc = builder.call(fma, [drv, inner, builder.load(accp)])
                    else:
                        acc = builder.call(fma, [dk, builder.fmul(drv, builder.sitofp(S, vf)), builder.load(accp)])
                    builder.store(acc, accp)
                acc = builder.load(accp)
                for g in range(n):
                    dst = builder.gep(op, [builder.add(builder.mul(ldo, ir.Constant(I64, g)), j)])
                    builder.store(builder.extract_element(acc, ir.Constant(I32, g)), dst)
            # the loops with and without the value rows' prefetches (a loop that tests for them
            # measured slower where there are none), and for a lone kv head without the loop over
            # the kv heads (1.02-1.05x the time with it); the keys are left to the hardware
            # prefetchers (a position's rows of every kv head: one contiguous stream)
            with builder.if_else(builder.icmp_signed(">", pvbytes, ir.Constant(I64, 0))) as (then, otherwise):
                with then:
                    with cgutils.for_range(builder, count) as loop:
                        row(loop.index, True, False)
                with otherwise:
                    with builder.if_else(builder.icmp_signed("==", heads, ir.Constant(I64, 1))) as (lone, several):
                        for branch, one in ((lone, True), (several, False)):
                            with branch:
                                with cgutils.for_range(builder, count) as loop:
                                    row(loop.index, False, one)
            return context.get_dummy_value()

        return sig, codegen

    ks.__name__ = ks.__qualname__ = f"key_scores_{t}_{n}"
    return intrinsic(ks)


def _quad_quants(builder, load, rps, t):
    """IR: the blocks of type t at the four i8* rps as two <16 x i32> (bytes 4l + i: row i's
    unsigned quant of dimension l, then of dimension 16 + l), with AVX-512 VBMI: Q8_0's rows
    (as the key scores unpack them) interleaved by a vpermt2b pair; the 4- and 5-bit types'
    four rows of 16 nibble bytes split once as one <64 x i8> (IQ4_NL's values looked up there,
    vpshufb), each half placed by one vpermb, and the fifth bits (Q5_0, Q5_1) of the four rows'
    words set by one byte shuffle and bit test per half."""
    v16i, v16b, v64b = ir.VectorType(I32, 16), ir.VectorType(I8, 16), ir.VectorType(I8, 64)

    def cat(a, b):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 2 * a.type.count),
                                                        list(range(2 * a.type.count))))

    if t == 8:
        us = [_emit_block_quants(builder, load, rp, t) for rp in rps]
        a01, a23 = cat(us[0], us[1]), cat(us[2], us[3])
        return [builder.bitcast(builder.shuffle_vector(a01, a23, ir.Constant(ir.VectorType(I32, 64), [
            32 * i + 16 * h + l for l in range(16) for i in range(4)])), v16i) for h in range(2)]
    qs = [load(rp, int(QS_AT[t]), v16b) for rp in rps]
    q = cat(cat(qs[0], qs[1]), cat(qs[2], qs[3]))                 # byte 16 i + k: row i's byte k
    halves = [builder.and_(q, ir.Constant(v64b, [15] * 64)), builder.lshr(q, ir.Constant(v64b, [4] * 64))]
    if t == 20:
        shuf = x86(builder, "llvm.x86.avx512.pshuf.b.512", v64b, v64b, v64b)
        halves = [shuf(ir.Constant(v64b, [int(v) for v in IQ4NL_U8] * 4), x) for x in halves]
    place = ir.Constant(ir.VectorType(I32, 64), [16 * i + l for l in range(16) for i in range(4)])
    U = [builder.shuffle_vector(x, ir.Constant(v64b, ir.Undefined), place) for x in halves]
    if QH_AT[t] >= 0:
        v4b = ir.VectorType(I8, 4)
        w = [builder.bitcast(load(rp, int(QH_AT[t]), I32), v4b) for rp in rps]
        w = cat(cat(w[0], w[1]), cat(w[2], w[3]))                  # byte 4 i + k: row i's bits 8k..8k+7
        bit = ir.Constant(v64b, [1 << (l % 8) for l in range(16) for i in range(4)])
        for h in range(2):
            rep = builder.shuffle_vector(w, ir.Constant(ir.VectorType(I8, 16), ir.Undefined), ir.Constant(
                ir.VectorType(I32, 64), [4 * i + 2 * h + l // 8 for l in range(16) for i in range(4)]))
            hit = builder.icmp_unsigned("==", builder.and_(rep, bit), bit)
            U[h] = builder.or_(U[h], builder.select(hit, ir.Constant(v64b, [16] * 64), ir.Constant(v64b, [0] * 64)))
    return [builder.bitcast(u, v16i) for u in U]


def _value_isums_ir(t, n):
    """The intrinsic (v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd) of
    ``value_isums`` for integer type t and n (1 to HEAD_GROUP) heads: per 4 rows, the rows'
    blocks unpacked to unsigned bytes and interleaved into two <64 x i8> (byte 4l + i: row i's
    value of dimension l, l < 16, then 16 + l: ``_quad_quants``), and per head each weight
    term's 4 bytes broadcast and multiplied in by one 512-bit vpdpbusd per 16 dimensions (int32
    lane l: that dimension's 4 products); after every VALUE_GROUP rows each head's sums are
    combined into the float sums in acc (254 A + E - c SX, times the group's unit, one fused
    multiply-add).  Only a group's last 4 rows, where they pass count, are clamped to the last row."""

    def vi(typingctx, v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd):
        sig = types.void(v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd)

        def codegen(context, builder, signature, args):
            v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd = args
            aty = signature.args
            off, stride, count, wo, ldw, so, lds, ao, hd = (_i64(builder, x) for x in
                                                            (off, stride, count, wo, ldw, so, lds, ao, hd))
            load = loader(builder)
            vbase = builder.gep(data_ptr(context, builder, aty[0], v, I8), [off])
            wps = [builder.gep(data_ptr(context, builder, aty[i], x, I8), [wo]) for i, x in ((4, xq), (5, xr))]
            drp = builder.gep(data_ptr(context, builder, aty[8], dr, F32), [so])
            sxp = builder.gep(data_ptr(context, builder, aty[9], sx, I32), [so])
            ap = builder.gep(data_ptr(context, builder, aty[12], acc, F32), [ao])
            v16i, v16f = ir.VectorType(I32, 16), ir.VectorType(F32, 16)
            dp = x86(builder, "llvm.x86.avx512.vpdpbusd.512", v16i, v16i, v16i, v16i)
            fma = _fma_fn(builder, v16f)
            zero = ir.Constant(v16i, [0] * 16)
            # per head: the sums of the first term (dimensions 0-15, 16-31), then of the second
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(4)] for _ in range(n)]
            last = builder.sub(count, ir.Constant(I64, 1))
            grp = ir.Constant(I64, VALUE_GROUP)
            nblk = builder.udiv(builder.add(count, ir.Constant(I64, VALUE_GROUP - 1)), grp)

            def splat16(x):
                w = builder.insert_element(ir.Constant(ir.VectorType(x.type, 16), ir.Undefined), x,
                                           ir.Constant(I32, 0))
                return builder.shuffle_vector(w, ir.Constant(ir.VectorType(x.type, 16), ir.Undefined),
                                              ir.Constant(v16i, [0] * 16))

            def quad(j, clamp):      # rows j..j+3 (clamp: rows past the last read the last again, weights 0)
                rps = []
                for i in range(4):
                    ji = builder.add(j, ir.Constant(I64, i))
                    if clamp:
                        ji = builder.select(builder.icmp_signed(">", ji, last), last, ji)
                    rps.append(builder.gep(vbase, [builder.mul(ji, stride)]))
                U = _quad_quants(builder, load, rps, t)
                for g in range(n):
                    wj = builder.add(builder.mul(ldw, ir.Constant(I64, g)), j)
                    for term in range(2):
                        w = splat16(builder.load(builder.bitcast(builder.gep(wps[term], [wj]), I32.as_pointer()),
                                                 align=1))
                        for h in range(2):
                            a = sums[g][2 * term + h]
                            builder.store(dp(builder.load(a), U[h], w), a)

            with cgutils.for_range(builder, nblk) as bl:
                blk = bl.index
                for hs in sums:
                    for a in hs:
                        builder.store(zero, a)
                j0 = builder.mul(blk, grp)
                left = builder.sub(count, j0)
                rows = builder.select(builder.icmp_signed("<", left, grp), left, grp)
                whole = builder.udiv(rows, ir.Constant(I64, 4))
                with cgutils.for_range(builder, whole) as ql:
                    quad(builder.add(j0, builder.mul(ql.index, ir.Constant(I64, 4))), False)
                with builder.if_then(builder.icmp_signed("!=", builder.mul(whole, ir.Constant(I64, 4)), rows)):
                    quad(builder.add(j0, builder.mul(whole, ir.Constant(I64, 4))), True)
                for g in range(n):
                    i = builder.add(builder.mul(lds, ir.Constant(I64, g)), blk)
                    d = splat16(builder.load(builder.gep(drp, [i])))
                    cs = splat16(builder.mul(builder.load(builder.gep(sxp, [i])), ir.Constant(I32, int(OFFSET[t]))))
                    for h in range(2):
                        S = builder.add(builder.mul(builder.load(sums[g][h]), ir.Constant(v16i, [254] * 16)),
                                        builder.load(sums[g][2 + h]))
                        f = builder.sitofp(builder.sub(S, cs), v16f)
                        pa = builder.bitcast(builder.gep(ap, [builder.add(builder.mul(hd, ir.Constant(I64, g)),
                                                                          ir.Constant(I64, 16 * h))]),
                                             v16f.as_pointer())
                        builder.store(builder.call(fma, [d, f, builder.load(pa, align=4)]), pa, align=4)
            return context.get_dummy_value()

        return sig, codegen

    vi.__name__ = vi.__qualname__ = f"value_isums_{t}_{n}"
    return intrinsic(vi)


# ---------------------------------------------------------------- float value sums
#
# Without integer sums (F32, F16 and BF16 values; the integer types on hosts without AVX-512
# VNNI) the heads' weighted values are summed as floats, one fused multiply-add per value, head
# and row, each value's chain in the order of the rows (``value_column``; ``value_column_loop``
# takes the same steps: identical results).  Of the measured time (F16, 4 heads per kv head of
# 128, one thread: 83 cycles a row where the multiply-adds take 32) the rest went to the walk:
# one column of 32 values per pass over a kv head's rows, which lie a kilobyte or more apart
# (every kv head's row), loaded and broadcast each head's weight for 2 <16 x float>
# multiply-adds, and fetched a row's lines from the L2 cache once per column.  On AVX-512 hosts
# a pass takes PASS_COLUMNS adjacent columns (16 registers of sums), and where a row still takes
# several passes over strided rows ``_columns`` goes a tile of rows at a time (VALUE_TILE_BYTES)
# so that the later passes find the tile's rows in the L1 cache.  The F32 rows of several kv
# heads of 128 values and more, once summed a whole row at a time into sums kept in memory (a
# load and a store beside every multiply-add: 3x the columns' time at 4 heads, in the L2
# cache), take the same columns (a lone kv head's still go whole rows: ``whole_rows_f32``).
# Measured, one thread, 4096 positions (bench_kernels --attention --parts): the value sums
# 0.57-0.69x for 4 heads per kv head of 128 (F16, BF16), 0.80-0.89x for Gemma's shape,
# 0.84-0.87x for SmolLM2's (3 heads of 64: one pass), 0.73x for F32 with 4 kv heads of 128.

# heads n -> columns of 32 values summed per pass of ``value_column`` over the rows: on AVX-512
# hosts as many as fill 16 of the 32 vector registers with the n heads' sums (2 columns for 3 or 4
# heads, 4 for 2, 8 for 1), else 1 (AVX2's 16 registers hold one column's sums of 4 heads already)
PASS_COLUMNS = np.array([1] + [max(1, 8 // n) if HOST_AVX512 else 1 for n in range(1, HEAD_GROUP + 1)], np.int64)
# bytes of value rows per tile of ``_columns`` where a row takes several passes (half the L1 data
# cache: a tile's rows stay there from the first pass to the last), and its least number of rows
VALUE_TILE_BYTES = 16384
VALUE_TILE_ROWS = 16


@njit(cache=True, inline="always")
def column_passes(nb, n):
    """Passes over the rows that ``value_column`` makes for nb columns of 32 values and n heads:
    the whole passes of PASS_COLUMNS[n] columns, then one per column left."""
    return nb // PASS_COLUMNS[n] + nb % PASS_COLUMNS[n]


def _value_column_ir(t, n):
    """The intrinsic (v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep) of
    ``value_column`` for type t and n heads: every column of the rows, in passes of PASS_COLUMNS[n] adjacent
    columns (then single columns for the rest), the n heads' sums of a pass's columns kept in
    registers over the rows.  A float row's column is converted once into a <32 x float>, then
    one fused multiply-add per value and head (``fma32`` in the portable loop: the same
    roundings).  A block's quants are converted once to floats (u - c); without a minimum each
    head's weight w is multiplied by the block's scale d once, so that a value costs one
    multiply-add per head, (w d) (u - c), and no decoding besides; q4_1 and q5_1 blocks are
    decoded (d (u - c) + m, ggml's values exactly) and then weighted.  Several columns per pass
    let each weight's load and broadcast serve as many
    multiply-adds and each row's lines be visited once per pass instead of once per column.  Each
    row of each pass prefetches the next pkstep bytes of pk (the next item's keys) into the L2
    cache."""
    nc = int(PASS_COLUMNS[n])
    cb = int(COLUMN_BYTES[t])

    def vc(typingctx, v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep):
        sig = types.void(v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep)

        def codegen(context, builder, signature, args):
            v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep = args
            aty = signature.args
            off, stride, count, po, ldp, ao, hd, pkoff, pkstep = (_i64(builder, x) for x in (
                off, stride, count, po, ldp, ao, hd, pkoff, pkstep))
            pkbase = builder.gep(data_ptr(context, builder, aty[10], pk, I8), [pkoff])
            load = loader(builder)
            v32i, v32f = ir.VectorType(I32, 32), ir.VectorType(F32, 32)
            vbase = builder.gep(data_ptr(context, builder, aty[0], v, I8), [off])
            pbase = builder.gep(data_ptr(context, builder, aty[4], p, F32), [po])
            abase = builder.gep(data_ptr(context, builder, aty[7], acc, F32), [ao])
            fma = _fma_fn(builder, v32f)
            columns = builder.udiv(hd, ir.Constant(I64, 32))
            row_bytes = builder.mul(columns, ir.Constant(I64, cb))
            folded = t not in (0, 1, 30) and not HAS_MIN[t]

            def splat32(x):
                w = builder.insert_element(ir.Constant(v32f, ir.Undefined), x, ir.Constant(I32, 0))
                return builder.shuffle_vector(w, ir.Constant(v32f, ir.Undefined), ir.Constant(v32i, [0] * 32))

            def column(rp):
                """The column at i8* rp as a <32 x float>, and the block's scale (None for floats)."""
                if t in (0, 1, 30):
                    return _float_values(builder, load, rp, t, 32), None
                u = builder.zext(_emit_block_quants(builder, load, rp, t), v32i)
                f = builder.sitofp(builder.sub(u, ir.Constant(v32i, [int(OFFSET[t])] * 32)), v32f)
                dv = _half_from(builder, rp)
                if HAS_MIN[t]:
                    mv = splat32(_half_from(builder, builder.gep(rp, [ir.Constant(I32, 2)])))
                    f = builder.call(fma, [splat32(dv), f, mv])
                return f, dv

            def columns_pass(c0, k, i):
                """Columns c0 .. c0 + k - 1 (c0: i64) of every row into the sums (pass i: i64)."""
                cp = builder.gep(vbase, [builder.mul(c0, ir.Constant(I64, cb))])
                pkp = builder.gep(pkbase, [builder.mul(builder.mul(i, count), pkstep)])
                ap = builder.gep(abase, [builder.mul(c0, ir.Constant(I64, 32))])
                dsts = [[builder.bitcast(builder.gep(ap, [builder.add(builder.mul(hd, ir.Constant(I64, g)),
                                                                      ir.Constant(I64, 32 * c))]), v32f.as_pointer())
                         for c in range(k)] for g in range(n)]
                accs = [[cgutils.alloca_once_value(builder, builder.load(d, align=4)) for d in ds] for ds in dsts]

                def row(j, pf):
                    rp = builder.gep(cp, [builder.mul(j, stride)])
                    if pf:
                        prefetch_ahead(builder, rp, stride, ir.Constant(I64, k * cb))
                    prefetch_row(builder, builder.gep(pkp, [builder.mul(j, pkstep)]), pkstep, 2)   # next keys
                    fs = [column(builder.gep(rp, [ir.Constant(I64, c * cb)])) for c in range(k)]
                    for g in range(n):
                        w = builder.load(builder.gep(pbase, [builder.add(builder.mul(ldp, ir.Constant(I64, g)), j)]))
                        for c, (f, dv) in enumerate(fs):
                            wc = splat32(builder.fmul(w, dv) if folded else w)
                            builder.store(builder.call(fma, [wc, f, builder.load(accs[g][c])]), accs[g][c])
                strided_rows(builder, count, stride, row_bytes, row, t != 8)   # Q8_0: slower with them
                for g in range(n):
                    for c in range(k):
                        builder.store(builder.load(accs[g][c]), dsts[g][c], align=4)

            passes = builder.udiv(columns, ir.Constant(I64, nc))     # whole passes of nc columns
            whole = builder.mul(passes, ir.Constant(I64, nc))
            with cgutils.for_range_slice(builder, ir.Constant(I64, 0), whole, ir.Constant(I64, nc)) as (c0, _):
                columns_pass(c0, nc, builder.udiv(c0, ir.Constant(I64, nc)))
            if nc > 1:
                with cgutils.for_range_slice(builder, whole, columns, ir.Constant(I64, 1)) as (c0, _):
                    columns_pass(c0, 1, builder.add(passes, builder.sub(c0, whole)))
            return context.get_dummy_value()

        return sig, codegen

    vc.__name__ = vc.__qualname__ = f"value_column_{t}_{n}"
    return intrinsic(vc)


def _dispatch(make, loop, host: bool, floats: bool = False, every_n: bool = False, switch=None):
    """An overload body choosing, by the run-time type t and head count n, among the intrinsics
    make(t, n) (where the host has the instructions and simd is true) and the portable loop.
    floats: the float types F32, F16 and BF16 have intrinsics too; every_n: n may be 1 to
    HEAD_GROUP (else 1 or HEAD_GROUP); switch(make, n): the type switch (default: the integer
    types, with floats also the float ones)."""
    if not host:
        def portable(t, n, simd, *args):
            loop(t, n, *args)
        return portable
    if switch is None:
        def switch(make, n):
            return _type_switch(make, n, floats)
    one, group = switch(make, 1), switch(make, HEAD_GROUP)
    two, three = (switch(make, 2), switch(make, 3)) if every_n else (group, group)

    def either(t, n, simd, *args):
        if not simd:
            loop(t, n, *args)
        elif n == 1:
            one(t, *args)
        elif n == 2:
            two(t, *args)
        elif n == 3:
            three(t, *args)
        else:
            group(t, *args)
    return either


@njit(nogil=True)
def _no_call(t, *args):
    """The float branch of a ``_type_switch`` without float types (never reached)."""


def _type_switch(make, n, floats: bool = False):
    """A Numba function (t, *args) calling make(t, n)(*args) for the run-time type t (one of the
    integer types, or with floats also F32, F16 or BF16)."""
    q8, q40, q41, q50, q51, iq = (make(t, n) for t in (8, 2, 3, 6, 7, 20))
    other = _float_switch(make, n) if floats else _no_call

    @njit(nogil=True)
    def switch(t, *args):
        if t == 8:
            q8(*args)
        elif t == 2:
            q40(*args)
        elif t == 3:
            q41(*args)
        elif t == 6:
            q50(*args)
        elif t == 7:
            q51(*args)
        elif t == 20 or not floats:
            iq(*args)
        else:
            other(t, *args)
    return switch


def key_scores(t, n, simd, *args):
    """key_scores(t, n, simd, k, off, stride, count, heads, hstride, nb, x16, xo, qstride, hd, dr, sx, so,
    out, oo, ldo, ostride, pv, pvoff, pvstride, pvbytes):
    the scores of ``count`` positions' key rows of nb blocks of type t (an integer type) for
    ``heads`` kv heads, the row of position j and kv head h at k[off + j stride + h hstride], each
    kv head's n (1 or HEAD_GROUP) query heads rounded by ``round_query``, head g's int16 values of
    block b at x16[xo + h qstride + g hd + 32 b] and its dr, sx at [so + h qstride / 32 + b n + g]:
    out[oo + h ostride + g ldo + j] = the sum over the row's blocks of d dr (S - c SX)
    (+ m dr SX for the types with a minimum), S the exact integer sum (see the section comment).
    A position's rows of every kv head in turn: where they are adjacent (hstride the row's bytes,
    stride every kv head's), the keys are one contiguous read.
    With position j the pvbytes bytes at pv[pvoff + (j + PREFETCH_ROWS) pvstride] are prefetched (the
    value rows of the same positions, read next; pvbytes 0: none).  simd: by vpdpwssd where the
    host has AVX-512 VNNI, by vpmaddwd where it has AVX2 (and F16C), else the portable loop; the
    same results (the same integers).
    (Callable from Numba code only.)"""
    raise NotImplementedError("key_scores runs inside Numba kernels")


@overload(key_scores)
def _key_scores_impl(t, n, simd, *args):
    return _dispatch(_key_scores_ir, key_scores_loop, HOST_AVX2 and HOST_F16C)


def value_column(t, n, simd, *args):
    """value_column(t, n, simd, v, off, stride, count, p, po, ldp, acc, ao, hd, pk, pkoff, pkstep): the
    hd / 32 columns of 32 values of ``count`` value rows (type t, an integer type or F32, F16,
    BF16), column b of row j at v[off + j stride + b COLUMN_BYTES[t]] (a block of an integer
    type), weighted for n heads: acc[ao + g hd + k] += sum_j p[po + g ldp + j] x_jk for k < hd,
    g < n, x_jk the row's decoded values (each sum continued from acc's value by one fused
    multiply-add per row, in the order of j), n from 1 to HEAD_GROUP.  At each row of each pass
    (``column_passes`` passes of the rows) the pkstep bytes at pk[pkoff + (pass count + j)
    pkstep] are prefetched into the L2 cache (the next work item's keys, ``_next_keys``; pkstep
    0: none).  simd: by AVX2 or AVX-512 vectors where the host has them (and F16C), else the
    portable loop; the same results.  (Callable from Numba code only.)"""
    raise NotImplementedError("value_column runs inside Numba kernels")


@overload(value_column)
def _value_column_impl(t, n, simd, *args):
    return _dispatch(_value_column_ir, value_column_loop, HOST_AVX2 and HOST_F16C, floats=True, every_n=True)


def value_isums(t, n, simd, *args):
    """value_isums(t, n, simd, v, off, stride, count, xq, xr, wo, ldw, dr, sx, so, lds, acc, ao, hd):
    one column (block) of ``count`` value rows of integer type t, row j's block at v[off + j
    stride], weighted for n (1 to HEAD_GROUP) heads by weights rounded per VALUE_GROUP rows to
    two int8 terms (``round_weights``): head g's terms of row j at xq[wo + g ldw + j] (xr
    alike; zero past count, up to a whole group), its group blk's unit at dr[so + g lds + blk]
    and sum of 254 xq + xr at sx[...]: acc[ao + g hd + k] += dr (254 A_k + E_k - c sx) group by
    group, A_k (E_k) the exact int32 sum over the group's rows of xq_j (xr_j) times the unsigned
    quant u_jk, c the type's offset.  simd: by vpdpbusd where the host has AVX-512 VNNI, else the
    portable loop; the same results.  (Callable from Numba code only.)"""
    raise NotImplementedError("value_isums runs inside Numba kernels")


@overload(value_isums)
def _value_isums_impl(t, n, simd, *args):
    return _dispatch(_value_isums_ir, value_isums_loop, HOST_VNNI, every_n=True)


@njit(cache=True, nogil=True)
def round_query(qs):
    """The G scaled query heads qs (G, hd) rounded per 32-block (``round_activations``: two int8
    terms xq, xr) for ``key_scores``: x16 int16 (Gp hd,), the heads' values 254 xq + xr (at most
    254 x 128 + 128 = 32640 in magnitude: one int16 each, so that a key block's sum is one int16
    product per value) one after the other, padded with zero heads to Gp (a multiple of
    ``heads_per_call``); dr (Gp nb,) float32, the blocks' units (x ~ dr x16), and sx (Gp nb,)
    int32, the blocks' sums of x16, both at [g0 nb + b n + g - g0] for head g of the call at g0
    (n = heads_per_call)."""
    G, hd = qs.shape
    nb = hd // 32
    n = heads_per_call(G)
    Gp = -(-G // n) * n
    x16 = np.zeros(Gp * hd, np.int16)
    dr = np.zeros(Gp * nb, np.float32)
    sx = np.zeros(Gp * nb, np.int32)
    for g in range(G):
        a, e, _, d2, _ = round_activations(qs[g])
        g0 = g - g % n
        for k in range(hd):
            x16[g * hd + k] = np.int16(np.int32(254) * np.int32(a[k]) + np.int32(e[k]))
        for b in range(nb):
            i = g0 * nb + b * n + g - g0
            dr[i] = d2[b]
            s = np.int32(0)
            for k in range(32 * b, 32 * b + 32):
                s += np.int32(x16[g * hd + k])
            sx[i] = s
    return x16, dr, sx


def rounded_query(qs: np.ndarray) -> np.ndarray:
    """The query heads qs (G, hd) as the integer kernels multiply them (``round_query``), float64:
    within max|x_block| / 64516 of qs (the reference of the tests)."""
    x16, dr, _ = round_query(np.ascontiguousarray(qs, dtype=np.float32))
    G, hd = qs.shape
    d = dr.astype(np.float64)
    n = 1 if G == 1 else HEAD_GROUP
    out = np.empty((G, hd))
    for g in range(G):
        g0 = g - g % n
        for b in range(hd // 32):
            k = slice(g * hd + 32 * b, g * hd + 32 * b + 32)
            out[g, 32 * b:32 * b + 32] = d[g0 * (hd // 32) + b * n + g - g0] * x16[k]
    return out


@njit(cache=True, nogil=True, fastmath=_FAST)
def scores_int(t, k_rows, lo, hi, hd, rq, s, simd, v_rows):
    """s[h, g, j - lo] = the scores of keys j = lo..hi-1 of every kv head h (type t, an integer
    type) for its query heads rounded by ``round_query`` (rq: x16, dr, sx with a row per kv head),
    through ``key_scores``, a position's rows of every kv head in turn (one contiguous read of the
    keys: the section "integer decode attention"), which prefetches the same positions' value rows
    (v_rows (C, Hkv, rb_v), of any type) into the L2 cache meanwhile where a position's are
    PREFETCH_MIN_STRIDE bytes or more (several kv heads, whose value sums then read them strided;
    elsewhere the hardware prefetchers follow them): the key sums' work hides their reads from
    memory.  s: (Hkv, Gp, >= hi - lo), C order, a row for every head of rq including the padding
    ones."""
    x16, dr, sx = rq
    Hkv, Gp, lds = s.shape
    if x16.shape[0] != Hkv or Gp * hd != x16.shape[1] or lds < hi - lo:
        raise ValueError("scores_int: s must have a row per kv head and rounded query head and a column per key")
    nb = hd // 32
    n = heads_per_call(Gp)
    C, _, rb = k_rows.shape
    k = k_rows.reshape(C * Hkv * rb)
    o = s.reshape(Hkv * Gp * lds)
    rbv = v_rows.shape[2]
    v = v_rows.reshape(v_rows.shape[0] * Hkv * rbv)
    pv = Hkv * rbv if Hkv > 1 and Hkv * rbv >= PREFETCH_MIN_STRIDE else 0
    x = x16.reshape(Hkv * Gp * hd)
    d = dr.reshape(Hkv * Gp * nb)
    e = sx.reshape(Hkv * Gp * nb)
    for g0 in range(0, Gp, n):
        key_scores(t, n, simd, k, lo * Hkv * rb, Hkv * rb, hi - lo, Hkv, rb, nb, x, g0 * hd, Gp * hd, hd, d, e,
                   g0 * nb, o, g0 * lds, lds, Gp * lds, v, lo * Hkv * rbv, Hkv * rbv, pv if g0 == 0 else 0)


@njit(cache=True, inline="always")
def _columns(t, G, hd, simd, v, off, stride, count, pf, po, ldp, a, pk, pkoff, pkstep):
    """Every column of 32 values of ``count`` rows (row j at v[off + j stride]) added into a
    (G hd,) for the G heads, by ``value_column`` in groups of HEAD_GROUP heads (the last 1 to 4).
    Where a row takes several passes of ``value_column`` and the rows are strided (several kv
    heads) they go a tile at a time (about VALUE_TILE_BYTES), so that the later passes find a
    tile's rows in the L1 cache rather than fetching each row's lines again from the L2 cache, a
    kilobyte or more apart (the sums' order, row after row for each value, is unchanged).  A lone
    kv head's contiguous rows measured 1.12-1.17x slower in tiles on AVX2 hosts (Gemma's shape,
    F16 and Q8_0): they go whole passes.  Each row visited prefetches the next pkstep bytes of pk
    from pkoff on (``_next_keys``)."""
    nb = hd // 32
    T = count
    if nb > PASS_COLUMNS[min(HEAD_GROUP, G)] and stride > nb * COLUMN_BYTES[t]:
        T = max(VALUE_TILE_ROWS, VALUE_TILE_BYTES // (nb * COLUMN_BYTES[t]))
    o = pkoff
    for j0 in range(0, count, T):
        rows = min(T, count - j0)
        for g0 in range(0, G, HEAD_GROUP):
            n = min(HEAD_GROUP, G - g0)
            value_column(t, n, simd, v, off + j0 * stride, stride, rows, pf, po + g0 * ldp + j0, ldp, a, g0 * hd,
                         hd, pk, o, pkstep)
            o += column_passes(nb, n) * rows * pkstep


@intrinsic
def round_group(typingctx, p, po, d, do, xq, xr, qo, dr, sx, i):
    """The VALUE_GROUP weights w_k = p[po + k] d[do + k] (the product formed here, in registers)
    rounded to two int8 terms as ``round_activations`` rounds a block, with one unit for the
    group (ties to even; every step an exact IEEE operation, so any form of it gives the same
    bytes): xq[qo + k], xr[qo + k], the unit dr[i] = max|w| / 32258 and sx[i] = the sum of
    254 xq + xr, by 512-bit vectors."""
    sig = types.void(p, po, d, do, xq, xr, qo, dr, sx, i)

    def codegen(context, builder, signature, args):
        p, po, d, do, xq, xr, qo, dr, sx, i = args
        aty = signature.args
        po, do, qo, i = (_i64(builder, x) for x in (po, do, qo, i))
        v16f, v16i, v16b = ir.VectorType(F32, 16), ir.VectorType(I32, 16), ir.VectorType(I8, 16)
        nv = VALUE_GROUP // 16
        pp, dp = (builder.bitcast(builder.gep(data_ptr(context, builder, aty[k], a, F32), [o]), v16f.as_pointer())
                  for k, a, o in ((0, p, po), (2, d, do)))
        x = [builder.fmul(builder.load(builder.gep(pp, [ir.Constant(I32, h)]), align=4),
                          builder.load(builder.gep(dp, [ir.Constant(I32, h)]), align=4)) for h in range(nv)]
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f]), "llvm.fabs.v16f32")
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f]), "llvm.rint.v16f32")

        def vmax(a, b):
            return builder.select(builder.fcmp_ordered(">", b, a), b, a)

        m = [builder.call(fabs, [v]) for v in x]
        while len(m) > 1:
            m = [vmax(m[k], m[k + 1]) for k in range(0, len(m), 2)]
        m, n = m[0], 16
        while n > 1:
            n //= 2
            m = vmax(builder.shuffle_vector(m, m, ir.Constant(ir.VectorType(I32, n), list(range(n)))),
                     builder.shuffle_vector(m, m, ir.Constant(ir.VectorType(I32, n), list(range(n, 2 * n)))))
        amax = builder.extract_element(m, ir.Constant(I32, 0))
        inv = builder.select(builder.fcmp_ordered(">", amax, ir.Constant(F32, 0.0)),
                             builder.fdiv(ir.Constant(F32, 127.0), amax), ir.Constant(F32, 0.0))
        invs = splat(builder, inv, 16)
        total = ir.Constant(v16i, [0] * 16)
        qp = [builder.bitcast(builder.gep(data_ptr(context, builder, aty[k], a, I8), [qo]), v16b.as_pointer())
              for k, a in ((4, xq), (5, xr))]
        for h in range(nv):
            u = builder.fmul(x[h], invs)                              # |u| <= 127
            a = builder.call(rint, [u])
            e = builder.call(rint, [builder.fmul(builder.fsub(u, a), ir.Constant(v16f, [254.0] * 16))])
            ai, ei = builder.fptosi(a, v16i), builder.fptosi(e, v16i)
            builder.store(builder.trunc(ai, v16b), builder.gep(qp[0], [ir.Constant(I32, h)]), align=1)
            builder.store(builder.trunc(ei, v16b), builder.gep(qp[1], [ir.Constant(I32, h)]), align=1)
            total = builder.add(total, builder.add(builder.mul(ai, ir.Constant(v16i, [254] * 16)), ei))
        n = 16
        while n > 1:
            n //= 2
            total = builder.add(builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(I32, n), list(range(n)))),
                                builder.shuffle_vector(total, total,
                                                       ir.Constant(ir.VectorType(I32, n), list(range(n, 2 * n)))))
        builder.store(builder.fdiv(amax, ir.Constant(F32, 127.0 * 254.0)),
                      builder.gep(data_ptr(context, builder, aty[7], dr, F32), [i]))
        builder.store(builder.extract_element(total, ir.Constant(I32, 0)),
                      builder.gep(data_ptr(context, builder, aty[8], sx, I32), [i]))
        return context.get_dummy_value()

    return sig, codegen


# ``block_scales``' rows per gather
SCALE_LANES = 16


@njit(cache=True, nogil=True, fastmath=False)   # the exact conversions, never a caller's flags
def block_scales_loop(v, off, stride, count, nb, bb, has_m, pfb, d, m, Np):
    """The portable form of ``block_scales`` (the same values: the conversions are exact), a row
    at a time; also the faster form for Q8_0's rows in one stream (one kv head, read from memory:
    the hardware prefetchers follow the rows' loads there, and Q8_0's are not prefetched)."""
    h = v.view(np.uint16)                      # blocks, rows and their offsets are whole halves
    step = np.uint64(stride >> 1)
    h0 = np.uint64(off >> 1)
    hb = np.uint64(bb >> 1)
    for j in range(count):
        if pfb > 0:
            prefetch(v, off + (j + PREFETCH_ROWS) * stride, pfb)
        hj = h0 + np.uint64(j) * step
        for b in range(nb):
            d[b * Np + j] = _half_bits(h[hj + np.uint64(b) * hb])
            if has_m:
                m[b * Np + j] = _half_bits(h[hj + np.uint64(b) * hb + np.uint64(1)])


def _block_scales_ir():
    """The intrinsic of ``block_scales`` on hosts with AVX-512: per SCALE_LANES rows and block
    column one vpgatherdd of the blocks' first 4 bytes (the scale d, then q4_1's and q5_1's
    minimum m), the halves widened by vcvtph2ps."""

    def bs(typingctx, v, off, stride, count, nb, bb, has_m, pfb, d, m, Np):
        sig = types.void(v, off, stride, count, nb, bb, has_m, pfb, d, m, Np)

        def codegen(context, builder, signature, args):
            v, off, stride, count, nb, bb, has_m, pfb, d, m, Np = args
            aty = signature.args
            off, stride, count, nb, bb, pfb, Np = (_i64(builder, x) for x in (off, stride, count, nb, bb, pfb, Np))
            L = SCALE_LANES
            v16i, v16f, v16h = ir.VectorType(I32, L), ir.VectorType(F32, L), ir.VectorType(ir.HalfType(), L)
            gather = x86(builder, "llvm.x86.avx512.mask.gather.dpi.512", v16i, v16i, I8.as_pointer(), v16i,
                         ir.VectorType(ir.IntType(1), L), I32)
            every = ir.Constant(ir.VectorType(ir.IntType(1), L), [1] * L)
            zero = ir.Constant(v16i, [0] * L)
            lane = ir.Constant(v16i, list(range(L)))
            vbase = builder.gep(data_ptr(context, builder, aty[0], v, I8), [off])
            dp, mp = (data_ptr(context, builder, aty[k], a, F32) for k, a in ((8, d), (9, m)))
            s32, bb32 = (splat(builder, builder.trunc(x, I32), L) for x in (stride, bb))
            last = builder.sub(count, ir.Constant(I64, 1))
            with_m = builder.icmp_unsigned("!=", has_m, ir.Constant(has_m.type, 0))

            def halves(words, high):     # the low (high) halves of 16 words, as floats
                if high:
                    words = builder.lshr(words, ir.Constant(v16i, [16] * L))
                return builder.fpext(builder.bitcast(builder.trunc(words, ir.VectorType(ir.IntType(16), L)), v16h),
                                     v16f)

            def store(x, p, o):
                builder.store(x, builder.bitcast(builder.gep(p, [o]), v16f.as_pointer()), align=4)

            nq = builder.udiv(builder.add(count, ir.Constant(I64, L - 1)), ir.Constant(I64, L))
            with cgutils.for_range(builder, nq) as ql:
                j0 = builder.mul(ql.index, ir.Constant(I64, L))
                rbase = builder.gep(vbase, [builder.mul(j0, stride)])
                with cgutils.for_range(builder, ir.Constant(I64, L)) as pl:     # rows ahead (pfb 0: none)
                    prefetch_row(builder, builder.gep(rbase, [builder.mul(builder.add(pl.index, ir.Constant(I64, L)),
                                                                        stride)]), pfb)
                lim = splat(builder, builder.trunc(builder.sub(last, j0), I32), L)   # rows past count: the last
                ridx = builder.mul(builder.select(builder.icmp_signed(">", lane, lim), lim, lane), s32)
                with cgutils.for_range(builder, nb) as bl:
                    b32 = splat(builder, builder.trunc(bl.index, I32), L)
                    w = gather(zero, rbase, builder.add(ridx, builder.mul(b32, bb32)), every, ir.Constant(I32, 1))
                    o = builder.add(builder.mul(bl.index, Np), j0)
                    store(halves(w, False), dp, o)
                    with builder.if_then(with_m):
                        store(halves(w, True), mp, o)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(bs)


# block_scales(v, off, stride, count, nb, bb, has_m, pfb, d, m, Np): the scales of the nb blocks
# (bb bytes each) of ``count`` value rows, row j at v[off + j stride]: d[b Np + j] = block b's
# scale d (float32), and where has_m, m[b Np + j] = its minimum m, for j < count (the gathers
# write up to count rounded up to SCALE_LANES, the last row's again); with pfb > 0, the pfb
# bytes of the rows ahead are prefetched.  Gathered where the host has AVX-512, else the loop
# (the same values).
block_scales = _block_scales_ir() if HOST_VNNI else block_scales_loop


@njit(cache=True, nogil=True, fastmath=False)   # the order written, never a caller's flags
def minimum_sums_loop(p, ldp, g0, G, m, Np, b0, nb, count, M, ldm):
    """The portable form of ``minimum_sums``: each sum its chain of ``fma32`` in the order of j
    (identical results)."""
    for h in range(HEAD_GROUP):
        g = min(g0 + h, G - 1)
        for a in range(HEAD_GROUP):
            b = min(b0 + a, nb - 1)
            s = np.float32(0.0)
            for j in range(count):
                s = fma32(p[g * ldp + j], m[b * Np + j], s)
            M[(g0 + h) * ldm + b0 + a] = s


@intrinsic
def minimum_sums(typingctx, p, ldp, g0, G, m, Np, b0, nb, count, M, ldm):
    """The minimum's terms of the heads g0 + h and block columns b0 + a (h, a < HEAD_GROUP):
    M[(g0 + h) ldm + b0 + a] = sum_j p[g ldp + j] m[b Np + j] over j < count, g = min(g0 + h, G - 1),
    b = min(b0 + a, nb - 1) (the heads past G and the columns past nb are dropped by the caller),
    each sum one chain of fused multiply-adds in the order of j from 0 (``fma32``'s roundings).
    The lanes of a vector are the heads, one vector per block column: per 16 positions the
    heads' weights are loaded as 4 vectors and transposed, each position's 4 weights then
    broadcast to every 128-bit lane and multiplied by the column's m (a broadcast load): the
    columns' chains interleave, each multiply-add waiting on its own sum's previous one only."""
    sig = types.void(p, ldp, g0, G, m, Np, b0, nb, count, M, ldm)

    def codegen(context, builder, signature, args):
        p, ldp, g0, G, m, Np, b0, nb, count, M, ldm = args
        aty = signature.args
        ldp, g0, G, Np, b0, nb, count, ldm = (_i64(builder, x) for x in (ldp, g0, G, Np, b0, nb, count, ldm))
        K = HEAD_GROUP
        v16f = ir.VectorType(F32, 16)
        pp = data_ptr(context, builder, aty[0], p, F32)
        mp = data_ptr(context, builder, aty[4], m, F32)
        Mp = data_ptr(context, builder, aty[9], M, F32)
        fma = _fma_fn(builder, v16f)

        def clamped(first, a, top):
            x = builder.add(first, ir.Constant(I64, a))
            return builder.select(builder.icmp_signed(">", x, top), top, x)
        prows = [builder.gep(pp, [builder.mul(ldp, clamped(g0, h, builder.sub(G, ir.Constant(I64, 1))))])
                 for h in range(K)]
        mrows = [builder.gep(mp, [builder.mul(Np, clamped(b0, a, builder.sub(nb, ir.Constant(I64, 1))))])
                 for a in range(K)]
        sums = [cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * 16)) for _ in range(K)]

        def step(j, P):          # position j's multiply-adds; P: the heads' weights, lanes 0..3 of each 128 bits
            for a in range(K):
                mj = splat(builder, builder.load(builder.gep(mrows[a], [j])), 16)
                builder.store(builder.call(fma, [P, mj, builder.load(sums[a])]), sums[a])

        whole = builder.udiv(count, ir.Constant(I64, 16))
        with cgutils.for_range(builder, whole) as ql:
            j0 = builder.mul(ql.index, ir.Constant(I64, 16))
            x = [builder.load(builder.bitcast(builder.gep(r, [j0]), v16f.as_pointer()), align=4) for r in prows]
            x01 = builder.shuffle_vector(x[0], x[1], ir.Constant(ir.VectorType(I32, 32), list(range(32))))
            x23 = builder.shuffle_vector(x[2], x[3], ir.Constant(ir.VectorType(I32, 32), list(range(32))))
            for k in range(4):   # positions 4k..4k+3: lane 4i + h = head h's weight of position 4k + i
                Q = builder.shuffle_vector(x01, x23, ir.Constant(ir.VectorType(I32, 16), [
                    16 * h + 4 * k + i for i in range(4) for h in range(4)]))
                for i in range(4):
                    P = builder.shuffle_vector(Q, Q, ir.Constant(ir.VectorType(I32, 16),
                                                                 [4 * i + h % 4 for h in range(16)]))
                    step(builder.add(j0, ir.Constant(I64, 4 * k + i)), P)
        with cgutils.for_range_slice(builder, builder.mul(whole, ir.Constant(I64, 16)), count,
                                     ir.Constant(I64, 1)) as (j, _):
            P = ir.Constant(v16f, ir.Undefined)
            for h in range(K):
                P = builder.insert_element(P, builder.load(builder.gep(prows[h], [j])), ir.Constant(I32, h))
            P = builder.shuffle_vector(P, P, ir.Constant(ir.VectorType(I32, 16), [h % 4 for h in range(16)]))
            step(j, P)
        for a in range(K):
            acc = builder.load(sums[a])
            for h in range(K):
                dst = builder.gep(Mp, [builder.add(builder.mul(builder.add(g0, ir.Constant(I64, h)), ldm),
                                                   builder.add(b0, ir.Constant(I64, a)))])
                builder.store(builder.extract_element(acc, ir.Constant(I32, h)), dst)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz"})   # never reassociated: the rounding
def round_weights(t, v, off, stride, count, p, G, nb):
    """The weights of ``value_isums`` for G heads' softmax weights p (>= G, >= count; C order)
    over ``count`` value rows of integer type t (row j's blocks at v[off + j stride]): per head g
    and block column b, w_j = p[g, j] d_jb (the block's scale folded in, its sign too) rounded per
    VALUE_GROUP rows to two int8 terms as the matvecs round activations (w ~ dr (254 xq + xr),
    xq = round(w 127 / max|w|), xr = round of the remainder in units of dr = max|w| / 32258,
    ties to even: within max|w_group| / 64516), rows past count zero.  Returns (xq, xr (G nb Np,)
    int8 at (g nb + b) Np + j, Np = count rounded up to whole groups; dr (G nb ng,) float32 and
    sx (G nb ng,) int32 at (g nb + b) ng + group: the units and the sums of 254 xq + xr; M
    float32 (G and nb rounded up to HEAD_GROUP), M[g, b] = sum_j p[g, j] m_jb, the minimum's
    term of q4_1 and q5_1 (zero for the others; ``minimum_sums``)).  The scales are read first,
    all of a row's blocks at once (``block_scales``; Q8_0's single stream of rows by its loop);
    the products p d are formed in registers as each group is rounded (``round_group``), a group
    past count from its weights copied with zeros after them."""
    ng = (count + VALUE_GROUP - 1) // VALUE_GROUP
    Np = ng * VALUE_GROUP
    bb = BLOCK_BYTES[t]
    has_m = HAS_MIN[t]
    nbp = -(-nb // HEAD_GROUP) * HEAD_GROUP
    Gp = -(-G // HEAD_GROUP) * HEAD_GROUP
    ldp = p.shape[1]
    pf = p.reshape(p.shape[0] * ldp)
    nm = nb * Np if has_m else 0
    f = np.empty(nb * Np + nm + VALUE_GROUP + G * nb * ng + Gp * nbp, np.float32)
    d, m = f[:nb * Np], f[nb * Np:nb * Np + nm]
    tail = f[nb * Np + nm:nb * Np + nm + VALUE_GROUP]
    dr, M = f[nb * Np + nm + VALUE_GROUP:nb * Np + nm + VALUE_GROUP + G * nb * ng], f[f.size - Gp * nbp:]
    xb = np.empty(2 * G * nb * Np, np.int8)
    xq, xr = xb[:G * nb * Np], xb[G * nb * Np:]
    sx = np.empty(G * nb * ng, np.int32)
    # the rows are gathered and prefetched ahead here (not Q8_0's, as the float columns do not
    # prefetch theirs); Q8_0's rows in one stream (one kv head, read from memory here, where the key
    # scores did not prefetch them) a row at a time: gathered, they measured 1.3x slower
    strided = stride > nb * bb and stride >= PREFETCH_MIN_STRIDE
    if t != 8 or strided:
        block_scales(v, off, stride, count, nb, bb, has_m, nb * bb if t != 8 else 0, d, m, Np)
    else:
        block_scales_loop(v, off, stride, count, nb, bb, has_m, 0, d, m, Np)
    for b in range(nb):
        for j in range(count, Np):
            d[b * Np + j] = 0.0
    if has_m:
        for g0 in range(0, G, HEAD_GROUP):
            for b0 in range(0, nb, HEAD_GROUP):
                minimum_sums(pf, ldp, g0, G, m, Np, b0, nb, count, M, nbp)
    else:
        M[:] = 0.0
    for g in range(G):
        for b in range(nb):
            r = g * nb + b
            for grp in range(ng):
                j0 = grp * VALUE_GROUP
                if j0 + VALUE_GROUP <= count:
                    round_group(pf, g * ldp + j0, d, b * Np + j0, xq, xr, r * Np + j0, dr, sx, r * ng + grp)
                else:
                    for k in range(VALUE_GROUP):
                        tail[k] = pf[g * ldp + j0 + k] if j0 + k < count else np.float32(0.0)
                    round_group(tail, 0, d, b * Np + j0, xq, xr, r * Np + j0, dr, sx, r * ng + grp)
    return xq, xr, dr, sx, M.reshape(Gp, nbp)


@njit(cache=True, nogil=True, fastmath=_FAST)
def values_int(t, v, off, stride, count, p, a, G, hd, simd):
    """a (G hd,) = the weighted sums of ``values_rows`` over ``count`` value rows of integer type
    t (row j at v[off + j stride]) as integer sums: ``round_weights`` then ``value_isums`` per
    block column and group of up to HEAD_GROUP heads, then the minimum's term."""
    nb = hd // 32
    ng = (count + VALUE_GROUP - 1) // VALUE_GROUP
    xq, xr, dr, sx, M = round_weights(t, v, off, stride, count, p, G, nb)
    for b in range(nb):
        for g0 in range(0, G, HEAD_GROUP):
            value_isums(t, min(HEAD_GROUP, G - g0), simd, v, off + b * BLOCK_BYTES[t], stride, count, xq, xr,
                        (g0 * nb + b) * ng * VALUE_GROUP, nb * ng * VALUE_GROUP, dr, sx, (g0 * nb + b) * ng, nb * ng,
                        a, g0 * hd + 32 * b, hd)
    if HAS_MIN[t]:
        for g in range(G):
            for b in range(nb):
                for k in range(32):
                    a[g * hd + 32 * b + k] += M[g, b]


@njit(cache=True, nogil=True, fastmath=_FAST)
def values_rows(t, v_rows, kvh, lo, hi, p, acc, simd, pk, pkoff, pkstep):
    """acc[g] (hd,) = sum over keys j = lo..hi-1 of p[g, j - lo] (p: (>= G, >= hi - lo), C order)
    times value row j of kv head kvh (type t: an integer type, or F32, F16, BF16 with hd a multiple
    of 32), read in place: one column of 32 values at a time as integers where ``int_values`` says
    so (``values_int``), else by ``value_column`` (``_columns``), a few columns per pass over a tile
    of rows, every column decoded once for the G heads, their sums kept in registers over the
    keys.  After float key scores the rows come from the L2 cache (``scores_float`` prefetched
    them).  The column passes prefetch pk's bytes from pkoff, pkstep per row visited
    (``_next_keys``: the next item's keys; pkstep 0: none)."""
    G, hd = acc.shape
    C, Hkv, rb = v_rows.shape
    ldp = p.shape[1]
    pf = p.reshape(p.shape[0] * ldp)
    a = np.zeros(G * hd, np.float32)
    if int_values(t):
        values_int(t, v_rows.reshape(C * Hkv * rb), (lo * Hkv + kvh) * rb, Hkv * rb, hi - lo, p, a, G, hd, simd)
    else:
        _columns(t, G, hd, simd, v_rows.reshape(C * Hkv * rb), (lo * Hkv + kvh) * rb, Hkv * rb, hi - lo, pf, 0,
                 ldp, a, pk, pkoff, pkstep)
    for g in range(G):
        for d in range(hd):
            acc[g, d] = a[g * hd + d]


@njit(cache=True, nogil=True, fastmath=_FAST)
def scores_float(t, k_rows, lo, hi, qs, s, simd, v_rows, pf):
    """s[h, g, j - lo] = qs[h, g] . key row j of kv head h (float type t: F32, F16, BF16; hd a
    multiple of KEY_PIECE), j = lo..hi-1, for every kv head h in one sweep of the rows (the
    cache's rows of one position are contiguous: a stream the hardware prefetchers follow),
    through ``float_key_scores`` in groups of up to HEAD_GROUP heads; with pf, the value rows
    lo..hi-1 of every kv head (v_rows) are prefetched meanwhile, for value sums that read them
    a column at a time.  qs (Hkv, G, hd) and s (Hkv, >= G, >= hi - lo): C order."""
    Hkv, G, hd = qs.shape
    Gs, lds = s.shape[1], s.shape[2]
    C, _, rb = k_rows.shape
    vb = v_rows.shape[1] * v_rows.shape[2]
    k = k_rows.reshape(C * Hkv * rb)
    v = v_rows.reshape(v_rows.shape[0] * vb)
    q = qs.reshape(Hkv * G * hd)
    o = s.reshape(Hkv * Gs * lds)
    for g0 in range(0, G, HEAD_GROUP):
        float_key_scores(t, min(HEAD_GROUP, G - g0), simd, k, lo * Hkv * rb, Hkv * rb, hi - lo, Hkv, rb, q, g0 * hd,
                         G * hd, hd, o, g0 * lds, lds, Gs * lds, v, lo * vb, vb if g0 == 0 and pf else 0)


@njit(cache=True, inline="always")
def whole_rows_f32(tv, hd, Hkv):
    """The values (type tv, head size hd, Hkv kv heads) are summed a whole row at a time by
    ``values_f32``, their rows not prefetched during the key scores: F32 rows of a lone kv head
    of WHOLE_ROWS_HEAD values and more (see WHOLE_ROWS_HEAD)."""
    return tv == 0 and hd >= WHOLE_ROWS_HEAD and Hkv == 1


@njit(cache=True, nogil=True, fastmath=_FAST)
def values_f32(vf, kvh, lo, hi, p, acc):
    """acc[g] (hd,) = sum over j = lo..hi-1 of p[g, j - lo] times value row j of kv head kvh, over an
    F32 cache read in place (vf: (C, Hkv, hd) float32), a whole row at a time into sums held in
    the L1 cache: for a lone kv head (contiguous rows, one stream from memory: see
    WHOLE_ROWS_HEAD) with head sizes of WHOLE_ROWS_HEAD and more."""
    G, hd = acc.shape
    for g in range(G):
        for d in range(hd):
            acc[g, d] = 0.0
    for j in range(lo, hi):
        vr = vf[j, kvh]
        for g in range(G):
            w = p[g, j - lo]
            a = acc[g]
            for d in range(hd):
                a[d] += w * vr[d]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _chunk(qs, kvh, k_rows, tk, v_rows, tv, lo, hi, softcap, tile, s, nbuf, m, l, acc, simd, pk, pkoff, pkstep):
    """Keys lo..hi-1 of kv head kvh for G query heads qs (G, hd) (already scaled): scores s
    (G, hi-lo), then per head g the chunk's maximum m[g], sum l[g] of exp(score - m[g]) and
    acc[g] (hd,) = the sum of those weights times the value rows.  Integer K types and float K
    types whose head size is whole pieces of 16 come with their scores in s (``scores_int``,
    ``scores_float``, every kv head at once, by the caller), other float ones are decoded a tile
    of rows at a time (tile: (T, hd)
    float32, once for all G heads); the values through ``values_rows``
    (a float type whose head size is not whole columns of 32: a tile at a time).  The F32 values
    of a lone kv head of WHOLE_ROWS_HEAD values and more are read in place a whole row at a time
    (``values_f32``).  pk, pkoff, pkstep: the prefetches of ``values_rows`` (the next item's
    keys)."""
    G, hd = qs.shape
    T = tile.shape[0]
    if not is_int_type(tk) and hd % KEY_PIECE != 0:
        for j0 in range(lo, hi, T):
            j1 = min(j0 + T, hi)
            decode_tile(tk, k_rows, kvh, j0, j1, tile)
            for jj in range(j1 - j0):
                kr = tile[jj]
                for g in range(G):
                    a = np.float32(0.0)
                    for d in range(hd):
                        a += qs[g, d] * kr[d]
                    s[g, j0 - lo + jj] = a
    for g in range(G):
        m[g], l[g] = exp_shifted(s[g, :hi - lo], softcap, nbuf)
    if whole_rows_f32(tv, hd, v_rows.shape[1]):
        values_f32(v_rows.view(np.float32), kvh, lo, hi, s, acc)
        return
    if hd % 32 == 0:
        values_rows(tv, v_rows, kvh, lo, hi, s, acc, simd, pk, pkoff, pkstep)
        return
    for g in range(G):
        for d in range(hd):
            acc[g, d] = 0.0
    for j0 in range(lo, hi, T):
        j1 = min(j0 + T, hi)
        decode_tile(tv, v_rows, kvh, j0, j1, tile)
        for jj in range(j1 - j0):
            vr = tile[jj]
            for g in range(G):
                p = s[g, j0 - lo + jj]
                for d in range(hd):
                    acc[g, d] += p * vr[d]


@njit(cache=True, nogil=True)
def _plan(base, pos, window, chunk):
    """Work items (token, first key row, one past the last) of n new tokens, token t at position
    pos[t] of a sequence whose rows start at cache row base[t]: each token's visible keys cut into
    runs of at most ``chunk`` from the first it sees, an item covering every kv head of its run (a
    thread then reads one contiguous stretch of the cache).  Returns (items (k, 3) int64, first
    item of each token (n + 1,))."""
    n = pos.shape[0]
    count = 0
    for t in range(n):
        p = pos[t]
        lo = max(0, p - window + 1) if window > 0 else 0
        count += (p + 1 - lo + chunk - 1) // chunk
    items = np.empty((count, 3), dtype=np.int64)
    first = np.empty(n + 1, dtype=np.int64)
    k = 0
    for t in range(n):
        p = pos[t]
        lo = max(0, p - window + 1) if window > 0 else 0
        first[t] = k
        for a in range(lo, p + 1, chunk):
            items[k, 0] = t
            items[k, 1] = base[t] + a
            items[k, 2] = base[t] + min(a + chunk, p + 1)
            k += 1
    first[n] = k
    return items, first


@njit(cache=True, nogil=True)
def _next_keys(k_rows, tk, items, i, G, hd):
    """The keys of work item i + 1 (the item the thread running item i most often runs next: a
    parallel loop gives each thread a contiguous run of items), to be prefetched into the L2
    cache while item i's values are summed, so that item i + 1's float key pass reads its keys
    from there while its own value prefetches use the memory (the key pass alone had the memory
    to itself, then the value pass left it idle).  Returns (the flat keys, the first byte, bytes
    per value row visited by a ``value_column`` call (step), and bytes per kv head's value pass
    (per)): the value column calls of kv head h prefetch the bytes from first + h per, step at
    each row, one line for the MoE shape.  step 0 (none) for an integer K type (its key pass
    untried with them), a head size not whole pieces of 16, or the last item."""
    C, Hkv, rb = k_rows.shape
    kflat = k_rows.reshape(C * Hkv * rb)
    if i + 1 >= items.shape[0] or is_int_type(tk) or hd % KEY_PIECE != 0 or hd % 32 != 0:
        return kflat, 0, 0, 0
    visits = 0                                          # rows a kv head's value column passes visit
    for g0 in range(0, G, HEAD_GROUP):
        visits += column_passes(hd // 32, min(HEAD_GROUP, G - g0)) * (items[i, 2] - items[i, 1])
    nbytes = (items[i + 1, 2] - items[i + 1, 1]) * Hkv * rb
    step = (-(-nbytes // (visits * Hkv)) + 63) // 64 * 64
    return kflat, items[i + 1, 1] * Hkv * rb, step, visits * step


@njit(cache=True, nogil=True)
def _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, chunk, simd, Q):
    """Work item i of ``_plan``: its token's query heads, scaled, over its keys, the scores of every
    kv head at once (Q: the heads rounded by ``round_queries`` for an integer K type), then the
    rest kv head by kv head, the next item's keys
    prefetched meanwhile (``_next_keys``).  m, l (k, H), acc (k, H, hd): each head's maximum, sum
    and weighted values over the item's keys."""
    hd = q3.shape[2]
    Hkv = k_rows.shape[1]
    t, lo, hi = items[i, 0], items[i, 1], items[i, 2]
    qs = np.empty((Hkv, G, hd), dtype=np.float32)
    tile = np.empty((max(1, TILE_VALUES // hd), hd), dtype=np.float32)
    s = np.empty((Hkv, Q[0].shape[1] // hd if is_int_type(tk) else G, chunk), dtype=np.float32)  # + padding heads
    nbuf = np.empty(chunk, dtype=np.int32)
    for h in range(Hkv):
        for g in range(G):
            for d in range(hd):
                qs[h, g, d] = q3[t, h * G + g, d] * np.float32(scale)
    if is_int_type(tk):
        r = t * Hkv
        scores_int(tk, k_rows, lo, hi, hd, (Q[0][r:r + Hkv], Q[1][r:r + Hkv], Q[2][r:r + Hkv]), s, simd, v_rows)
    elif hd % KEY_PIECE == 0:
        # the value rows prefetched unless they are read whole rows in turn (one contiguous stream)
        scores_float(tk, k_rows, lo, hi, qs, s, simd, v_rows, not whole_rows_f32(tv, hd, Hkv))
    kflat, nk0, step, per = _next_keys(k_rows, tk, items, i, G, hd)
    for h in range(Hkv):
        g0 = h * G
        _chunk(qs[h], h, k_rows, tk, v_rows, tv, lo, hi, softcap, tile, s[h], nbuf,
               m[i, g0:g0 + G], l[i, g0:g0 + G], acc[i, g0:g0 + G], simd, kflat, nk0 + h * per, step)


@njit(cache=True, nogil=True)
def _merge(items, first, m, l, acc, out3):
    """out3[t, head] = the exact combination of token t's chunks, head by head."""
    H, hd = out3.shape[1], out3.shape[2]
    for t in range(first.shape[0] - 1):
        i0, i1 = first[t], first[t + 1]
        if i0 == i1:
            continue
        for g in range(H):
            mx = np.float32(-np.inf)
            for i in range(i0, i1):
                mx = max(mx, m[i, g])
            total = np.float32(0.0)
            o = out3[t, g]
            for d in range(hd):
                o[d] = 0.0
            for i in range(i0, i1):
                w = np.float32(np.exp(m[i, g] - mx))
                total += w * l[i, g]
                for d in range(hd):
                    o[d] += w * acc[i, g, d]
            inv = np.float32(1.0) / total
            for d in range(hd):
                o[d] *= inv


@njit(cache=True, nogil=True)
def _work(q3, Hkv, base, pos, window):
    """(G, the work items and their token starts from ``_plan``, and each item's results: maxima
    m (k, H), sums l (k, H), weighted values acc (k, H, hd))."""
    n, H, hd = q3.shape
    items, first = _plan(base, pos, window, KEY_CHUNK)
    k = items.shape[0]
    return (H // Hkv, items, first, np.empty((k, H), dtype=np.float32), np.empty((k, H), dtype=np.float32),
            np.empty((k, H, hd), dtype=np.float32))


@njit(cache=True, nogil=True)
def round_queries(q3, Hkv, scale, t):
    """``round_query`` of every (token, kv head) pair's scaled query heads, once per step (not per
    chunk of keys), as (x16, dr, sx) with a row per pair, t * Hkv + h; a single zero row when K
    type t has no integer path."""
    n, H, hd = q3.shape
    G = H // Hkv
    nb = hd // 32
    per = heads_per_call(G)
    Gp = -(-G // per) * per
    rows = n * Hkv if is_int_type(t) else 1
    x16 = np.zeros((rows, Gp * hd), np.int16)
    dr = np.zeros((rows, Gp * nb), np.float32)
    sx = np.zeros((rows, Gp * nb), np.int32)
    if not is_int_type(t):
        return x16, dr, sx
    qs = np.empty((G, hd), np.float32)
    for tok in range(n):
        for h in range(Hkv):
            for g in range(G):
                for d in range(hd):
                    qs[g, d] = q3[tok, h * G + g, d] * np.float32(scale)
            a, c, e = round_query(qs)
            r = tok * Hkv + h
            x16[r], dr[r], sx[r] = a, c, e
    return x16, dr, sx


@njit(cache=True, nogil=True)
def _prepare(q3, k_rows, tk, base, pos, scale, window):
    """The work of ``attention_steps``: ``_work``'s tuple and the rounded queries."""
    G, items, first, m, l, acc = _work(q3, k_rows.shape[1], base, pos, window)
    return G, items, first, m, l, acc, round_queries(q3, k_rows.shape[1], scale, tk)


@njit(cache=True, parallel=True)
def attention_steps(q3, k_rows, tk, v_rows, tv, base, pos, scale, window, softcap, out3, simd=True):
    """Causal attention of n query tokens over a cache of rows in any cache type (f32 and f16 too,
    as their bytes), threads over (token, chunk of keys), an item taking every kv head of its
    chunk.  Token t is at position pos[t] of a sequence whose rows start at cache row base[t], and
    sees that sequence's keys max(0, p-window+1)..p (window <= 0: all); head h reads kv head
    h // (H / Hkv); softcap > 0 caps the scores.  A token's result depends on its own sequence's
    rows only, so decode steps of several sequences in one call give each what it gets alone.
    q3, out3: (n, H, hd) float32; k_rows, v_rows: (C, Hkv, rb) uint8 in types tk, tv.  simd:
    the integer sums by the host's vector instructions (False: the portable loops; the same
    results)."""
    G, items, first, m, l, acc, Q = _prepare(q3, k_rows, tk, base, pos, scale, window)
    for i in prange(items.shape[0]):
        _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, KEY_CHUNK, simd, Q)
    _merge(items, first, m, l, acc, out3)


@njit(cache=True, nogil=True)
def attention_steps_serial(q3, k_rows, tk, v_rows, tv, base, pos, scale, window, softcap, out3, simd=True):
    """``attention_steps`` on the calling thread only (short contexts: no thread-pool launch)."""
    G, items, first, m, l, acc, Q = _prepare(q3, k_rows, tk, base, pos, scale, window)
    for i in range(items.shape[0]):
        _run_item(q3, G, k_rows, tk, v_rows, tv, items, i, scale, softcap, m, l, acc, KEY_CHUNK, simd, Q)
    _merge(items, first, m, l, acc, out3)


def _one_sequence(n: int, pos0: int):
    """(base, pos) of n tokens of one sequence at positions pos0.. over the rows from 0."""
    return np.zeros(n, np.int64), np.arange(pos0, pos0 + n, dtype=np.int64)


def attention_rows(q3, k_rows, tk, v_rows, tv, pos0, scale, window, softcap, out3, simd=True):
    """``attention_steps`` of the n tokens of one sequence at positions pos0.. (its rows from 0)."""
    attention_steps(q3, k_rows, tk, v_rows, tv, *_one_sequence(q3.shape[0], pos0), scale, window, softcap, out3,
                    simd)


def attention_rows_serial(q3, k_rows, tk, v_rows, tv, pos0, scale, window, softcap, out3, simd=True):
    """``attention_rows`` on the calling thread only."""
    attention_steps_serial(q3, k_rows, tk, v_rows, tv, *_one_sequence(q3.shape[0], pos0), scale, window, softcap,
                           out3, simd)


@njit(cache=True, nogil=True)
def hadamard_rows(x3, n):
    """In place on x3 (m, heads, hd) float32: every run of n values (n a power of two dividing hd)
    is multiplied by the orthonormal Walsh-Hadamard matrix of order n in Sylvester order (symmetric
    and its own inverse), by the fast transform's butterflies, then scaled by 1/sqrt(n)."""
    m, H, hd = x3.shape
    scale = np.float32(1.0 / np.sqrt(n))
    for t in range(m):
        for h in range(H):
            row = x3[t, h]
            for c0 in range(0, hd, n):
                s = 1
                while s < n:
                    for i in range(c0, c0 + n, 2 * s):
                        for j in range(i, i + s):
                            a = row[j]
                            b = row[j + s]
                            row[j] = a + b
                            row[j + s] = a - b
                    s *= 2
                for j in range(c0, c0 + n):
                    row[j] *= scale
