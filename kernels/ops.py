"""Fused transformer operations (Numba).

Everything here works on float32 activations laid out row-major, one row per
token.  The model code (``gguf_engine.model``) calls these through the CPU
backend; they carry no model logic of their own beyond the arithmetic.

KV caches are either float32 or float16.  Numba has no float16 arithmetic on
the CPU, so a float16 cache is handed in as its ``uint16`` bit view together
with ``F16_TABLE`` (all 65536 half values as float32); ``_f32`` picks the right
load at compile time.

Shapes (n = tokens in the batch, H = query heads, Hkv = key/value heads,
hd = head size, C = cache length):
    q3: (n, H, hd)   k3, v3: (n, Hkv, hd)   k_cache, v_cache: (C, Hkv, hd)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .rows import check_unit_rows, head_row, square_sums

# every float16 bit pattern decoded to float32 (index with the uint16 bits)
F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _f32(x, table):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_f32, jit_options={"cache": True})
def _f32_overload(x, table):
    """Load one cache element as float32: a uint16 is float16 bits, decoded by table."""
    if isinstance(x, types.Integer):
        return lambda x, table: table[x]
    return lambda x, table: np.float32(x)


_FAST = {"reassoc", "contract", "nsz"}   # lets LLVM vectorise reductions; no inf/nan assumptions


@njit(cache=True, fastmath=_FAST)
def exp_inplace(x, nbuf):
    """x = exp(x) for float32 x (k,), within 2 ulp, in a form LLVM vectorises (libm's expf is
    scalar): exp(v) = p(r) * 2^n with v = n ln2 + r, the 2^n added to the exponent bits.
    Inputs are clamped to [-86, 88].  nbuf: int32 scratch (>= k,)."""
    k = x.shape[0]
    for i in range(k):
        v = min(max(x[i], np.float32(-86.0)), np.float32(88.0))
        n = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
        r = v - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        x[i] = p * r * r + r + np.float32(1.0)
        nbuf[i] = np.int32(n) << 23
    bits = x[:k].view(np.int32)
    for i in range(k):
        bits[i] += nbuf[i]


@njit(cache=True)
def f32_to_f16_bits(row, out):
    """Round float32 row (k,) to float16 (nearest, ties to even, as numpy) and write the bits to out (k,) uint16."""
    bits = row.view(np.uint32)
    for i in range(row.shape[0]):
        x = bits[i]
        sign = (x >> 16) & 0x8000
        a = x & 0x7FFFFFFF
        if a >= 0x7F800000:                       # inf / nan
            h = 0x7C00 | (0x200 if a > 0x7F800000 else 0)
        elif a >= 0x477FF000:                     # rounds past the largest half: inf
            h = 0x7C00
        elif a < 0x38800000:                      # half subnormal or zero
            h = np.uint32(np.rint(abs(row[i]) * np.float32(16777216.0)))
        else:
            a = a + 0xFFF + ((a >> 13) & 1)
            h = (a - 0x38000000) >> 13
        out[i] = np.uint16(sign | h)


def _store_row(src, dst):  # pragma: no cover - replaced by the overload inside Numba
    raise NotImplementedError


@overload(_store_row, jit_options={"cache": True})
def _store_row_overload(src, dst):
    """Copy a float32 row into a cache row: float16 bits (uint16) are rounded, float32 copied."""
    if isinstance(dst.dtype, types.Integer):
        return lambda src, dst: f32_to_f16_bits(src, dst)

    def copy(src, dst):
        for i in range(src.shape[0]):
            dst[i] = src[i]
    return copy


# ----------------------------------------------------------------------------- norms

@njit(cache=True)
def _rms_scale(row, eps):
    """1 / sqrt(mean(row^2) + eps) as float32; the squares summed in float64 as 4 interleaved
    partial sums (independent add chains, several times faster than one; one vector chain for
    a contiguous row, ``rows.square_sums``), the last d % 4 into the first."""
    d = row.shape[0]
    s0, s1, s2, s3 = square_sums(row)
    for j in range(d - d % 4, d):
        v = np.float64(row[j])
        s0 += v * v
    return np.float32(1.0 / math.sqrt(((s0 + s1) + (s2 + s3)) / d + eps))


@njit(cache=True)
def rms_norm(x, w, eps, out):
    """out[i] = x[i] / rms(x[i]) * w.   x, out: (n, d) float32; w: (d,)."""
    n, d = x.shape
    for i in range(n):
        sc = _rms_scale(x[i], eps)
        for j in range(d):
            out[i, j] = x[i, j] * sc * w[j]


@njit(cache=True, nogil=True)
def add_rms_norm(x, delta, post_w, has_post, w, eps, out):
    """Residual update then the next norm, in one pass.

    delta is first RMS-normed with post_w when has_post (Gemma's post-attention
    / post-FFN norms), then x += delta (in place), then out = rms_norm(x) * w.
    x, delta, out: (n, d) float32; post_w, w: (d,).  Serial and nogil: a caller may
    run it on row ranges from several threads.
    """
    n, d = x.shape
    for i in range(n):
        if has_post:
            sp = _rms_scale(delta[i], eps)
            for j in range(d):
                x[i, j] += delta[i, j] * sp * post_w[j]
        else:
            for j in range(d):
                x[i, j] += delta[i, j]
        sc = _rms_scale(x[i], eps)
        for j in range(d):
            out[i, j] = x[i, j] * sc * w[j]


# ----------------------------------------------------------------------------- rope

@njit(cache=True)
def _rope_row(v, cos, sin, neox):
    """Rotate one head vector v (hd,) in place with the angles of one position.

    cos, sin: (n_rot/2,).  neox: pairs (i, i + n_rot/2); otherwise adjacent
    pairs (2i, 2i+1).  Dimensions past n_rot are left alone.
    """
    half = cos.shape[0]
    if neox:
        for i in range(half):
            a = v[i]
            b = v[i + half]
            v[i] = a * cos[i] - b * sin[i]
            v[i + half] = a * sin[i] + b * cos[i]
    else:
        for i in range(half):
            a = v[2 * i]
            b = v[2 * i + 1]
            v[2 * i] = a * cos[i] - b * sin[i]
            v[2 * i + 1] = a * sin[i] + b * cos[i]


@njit(cache=True)
def _head_rms_norm(v, w, eps):
    sc = _rms_scale(v, eps)
    for j in range(v.shape[0]):
        v[j] = v[j] * sc * w[j]


@njit(cache=True, nogil=True)
def qkv_rotate(q3, k3, v3, bq, bk, bv, has_bias, qn, kn, has_qk_norm, eps, cos, sin, pos0, neox):
    """Everything between the Q/K/V projections and the cache, in place.

    On q3: (n, H, hd), k3, v3: (n, Hkv, hd): adds the Q/K/V biases (has_bias; bq: (H, hd),
    bk, bv: (Hkv, hd)), applies the per-head RMS norms (has_qk_norm; qn, kn: (hd,)), then
    RoPE at positions pos0 .. pos0+n-1 from the tables cos, sin: (n_ctx, n_rot/2).  Each head's
    row must have unit stride (the views of a fused projection's output do), and is taken
    typed contiguous (``rows.head_row``), so its loops vectorize.
    """
    n, H, hd = q3.shape
    Hkv = k3.shape[1]
    check_unit_rows(q3)
    check_unit_rows(k3)
    check_unit_rows(v3)
    for t in range(n):
        c = cos[pos0 + t]
        s = sin[pos0 + t]
        for h in range(H):
            row = head_row(q3, t, h)
            if has_bias:
                for j in range(hd):
                    row[j] += bq[h, j]
            if has_qk_norm:
                _head_rms_norm(row, qn, eps)
            _rope_row(row, c, s, neox)
        for h in range(Hkv):
            row = head_row(k3, t, h)
            if has_bias:
                vrow = head_row(v3, t, h)
                for j in range(hd):
                    row[j] += bk[h, j]
                    vrow[j] += bv[h, j]
            if has_qk_norm:
                _head_rms_norm(row, kn, eps)
            _rope_row(row, c, s, neox)


@njit(cache=True, nogil=True)
def qkv_prepare(q3, k3, v3, bq, bk, bv, has_bias, qn, kn, has_qk_norm, eps,
                cos, sin, pos0, neox, k_cache, v_cache):
    """``qkv_rotate``, then k and v written to the layer's cache rows pos0..
    (k_cache, v_cache: (C, Hkv, hd), float32 or float16 bits).
    """
    qkv_rotate(q3, k3, v3, bq, bk, bv, has_bias, qn, kn, has_qk_norm, eps, cos, sin, pos0, neox)
    n, Hkv = k3.shape[0], k3.shape[1]
    for t in range(n):
        for h in range(Hkv):
            _store_row(head_row(k3, t, h), k_cache[pos0 + t, h])
            _store_row(head_row(v3, t, h), v_cache[pos0 + t, h])


@njit(cache=True)
def rope_inplace(x3, cos, sin, pos0, neox):
    """RoPE alone on x3: (n, heads, hd) at positions pos0.. (for tests and tools)."""
    n, H, hd = x3.shape
    for t in range(n):
        for h in range(H):
            _rope_row(x3[t, h], cos[pos0 + t], sin[pos0 + t], neox)


# ----------------------------------------------------------------------------- attention

_I31, _LOW31 = np.int32(31), np.int32(0x7FFFFFFF)


@njit(cache=True, nogil=True, fastmath=False)   # integer work: never the calling kernel's flags
def _row_max(row, nbuf):
    """The largest of the float32 row (n >= 1,), as a scalar chain of compares gives it, taken
    instead as an int32 maximum (which LLVM vectorizes; a float one it does not without flags
    that let it ignore NaNs): each float's bits b mapped to b ^ ((b >> 31) & 0x7FFFFFFF), an
    order-keeping map of the non-NaN floats onto int32 and its own inverse.  Only -0 against +0
    may differ (the map puts +0 above -0); the max is subtracted from the row and exp(+-0) = 1,
    so the softmax is the same.  nbuf: int32 scratch (>= 1,)."""
    bits = row.view(np.int32)
    m = np.int32(-(1 << 31))
    for j in range(row.shape[0]):
        b = bits[j]
        b = np.int32(b ^ np.int32(np.int32(b >> _I31) & _LOW31))
        if b > m:
            m = b
    nbuf[0] = m ^ ((m >> _I31) & _LOW31)
    return nbuf[:1].view(np.float32)[0]


@njit(cache=True, nogil=True, fastmath=_FAST)   # its own flags, never the calling kernel's
def exp_shifted(row, softcap, nbuf):
    """Soft-cap (softcap > 0) the float32 row (n,), then row = exp(row - max) in place; returns
    (max, sum of the exponentials) as float32, for a softmax or a partial one merged later.
    nbuf: int32 scratch (>= n,)."""
    n = row.shape[0]
    if softcap > 0:
        for j in range(n):
            row[j] = np.float32(softcap * math.tanh(row[j] / softcap))
    m = _row_max(row, nbuf) if n else np.float32(-np.inf)
    for j in range(n):
        row[j] -= m
    exp_inplace(row, nbuf)
    total = 0.0
    for j in range(n):
        total += row[j]
    return m, total


@njit(cache=True)
def _softmax_row(row, softcap, nbuf):
    """Soft-cap (softcap > 0) then softmax the 1-D float32 row (n,), in place.
    nbuf: int32 scratch (>= n,).  An empty row (every key masked) is left as it is."""
    if row.shape[0] == 0:
        return
    _, total = exp_shifted(row, softcap, nbuf)
    inv = np.float32(1.0 / total)
    for j in range(row.shape[0]):
        row[j] *= inv


@njit(cache=True, nogil=True)
def masked_softmax(S, scale, rows_per_pos, pos0, key0, window, softcap):
    """Row softmax of attention scores times scale, with the causal / sliding-window mask, in place.

    S: (R, K) float32 raw scores q.k; row r is a query at position pos0 + r // rows_per_pos,
    column j the key at position key0 + j.  Each visible score is multiplied by scale (float32)
    then, with softcap > 0, soft-capped; masked entries become 0 without being scaled (the
    visible ones see exactly the operations of scaling the whole of S first).  One int32
    scratch serves every row.  Serial and nogil: the caller runs several on its own threads.
    """
    R, K = S.shape
    nbuf = np.empty(K, dtype=np.int32)
    sc = np.float32(scale)
    for r in range(R):
        p = pos0 + r // rows_per_pos
        lo = 0
        if window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        jlo = max(lo - key0, 0)
        jhi = min(p - key0 + 1, K)
        row = S[r]
        for j in range(jlo, jhi):
            row[j] *= sc
        _softmax_row(row[jlo:jhi], softcap, nbuf)
        for j in range(jlo):
            row[j] = 0.0
        for j in range(jhi, K):
            row[j] = 0.0


@njit(cache=True, nogil=True)
def gather_heads(x3, a, b, h0, G, out):
    """out ((b - a) G, hd) = x3[a:b, h0:h0 + G] (n, H, hd) as rows (token, head): one kv head's
    query block laid out for a matrix product.  x3's rows must have unit stride (taken typed
    contiguous, ``rows.head_row``)."""
    hd = x3.shape[2]
    check_unit_rows(x3)
    for t in range(a, b):
        for i in range(G):
            r = (t - a) * G + i
            row = head_row(x3, t, h0 + i)
            for j in range(hd):
                out[r, j] = row[j]


@njit(cache=True, nogil=True)
def scatter_heads(y, a, b, h0, G, x3):
    """x3[a:b, h0:h0 + G] (n, H, hd) = y ((b - a) G, hd) read as rows (token, head): the inverse
    of ``gather_heads``."""
    hd = x3.shape[2]
    for t in range(a, b):
        for i in range(G):
            r = (t - a) * G + i
            for j in range(hd):
                x3[t, h0 + i, j] = y[r, j]


# ----------------------------------------------------------------------------- misc

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.7978845608028654


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _gated_row(gate, up, gelu, out, buf, nbuf):
    """out = act(gate) * up for one row, with act(g) = g * sigmoid(z):
    z = g (SiLU) or z = 2 sqrt(2/pi) (g + 0.044715 g^3) (GELU, tanh form, since
    0.5 (1 + tanh(y)) = sigmoid(2y)).  buf: float32, nbuf: int32 scratch (ff,).
    NumPy's error model: the division is IEEE's (1 + exp(-z) is never 0 anyway) with no
    zero-divisor check per element, so its loop vectorizes (vdivps rounds as vdivss does)."""
    ff = gate.shape[0]
    for j in range(ff):
        g = gate[j]
        if gelu:
            buf[j] = np.float32(-2.0 * SQRT_2_OVER_PI) * g * (np.float32(1.0) + np.float32(GELU_COEF_A) * g * g)
        else:
            buf[j] = -g
    exp_inplace(buf, nbuf)
    for j in range(ff):
        out[j] = gate[j] / (np.float32(1.0) + buf[j]) * up[j]


@njit(cache=True, nogil=True)
def gated_act(gate, up, gelu, out):
    """out = act(gate) * up; act is SiLU, or GELU (tanh form) when gelu.  (n, ff) float32.
    Serial and nogil: a caller may run it on row ranges from several threads."""
    n, ff = gate.shape
    buf = np.empty(ff, dtype=np.float32)
    nbuf = np.empty(ff, dtype=np.int32)
    for i in range(n):
        _gated_row(gate[i], up[i], gelu, out[i], buf, nbuf)


@njit(cache=True, nogil=True)
def gated_act_halves(gu, gelu, out):
    """gated_act of gate = gu[:, :ff] and up = gu[:, ff:] for a fused gate|up output gu (n, 2 ff),
    C-contiguous; out (n, ff).  The same values as gated_act of the two halves, but each row's
    halves are contiguous to Numba, so the row loops vectorize (a strided 2-D slice's rows are
    not known to be contiguous, and their loops stay scalar)."""
    n, ff = out.shape
    buf = np.empty(ff, dtype=np.float32)
    nbuf = np.empty(ff, dtype=np.int32)
    for i in range(n):
        row = gu[i]
        _gated_row(row[:ff], row[ff:], gelu, out[i], buf, nbuf)


@njit(cache=True)
def gated_act_row(gate, up, gelu, out):
    """gated_act for a single token (ff,), without the thread-pool launch."""
    ff = gate.shape[0]
    _gated_row(gate, up, gelu, out, np.empty(ff, dtype=np.float32), np.empty(ff, dtype=np.int32))


@njit(cache=True)
def softcap_inplace(x, cap):
    """x = cap * tanh(x / cap), in place, any float32 array flattened."""
    f = x.reshape(-1)
    for i in range(f.shape[0]):
        f[i] = cap * math.tanh(f[i] / cap)


# ----------------------------------------------------------------------------- attention sinks

@njit(cache=True, parallel=True)
def attention_sink_rescale(q3, k_cache, pos0, scale, window, softcap, sinks, table, out3):
    """Attention sinks (gpt-oss) applied to a finished attention output: head h's softmax also has
    the logit sinks[h] in its denominator, which scales its output by Z / (Z + exp(sinks[h])), Z
    the sum of exp(score) over the keys the query sees (scores as the decode attention computes them:
    scaled, then soft-capped when softcap > 0; sums in float64 from the row maximum).
    q3, out3: (n, H, hd); k_cache (C, Hkv, hd) float32 or float16 bits; sinks (H,) float32."""
    n, H, hd = q3.shape
    G = H // k_cache.shape[1]
    for idx in prange(n * H):
        t = idx // H
        h = idx - t * H
        p = pos0 + t
        lo = 0
        if window > 0 and p - window + 1 > 0:
            lo = p - window + 1
        s = np.empty(p + 1 - lo, dtype=np.float32)
        m = np.float32(sinks[h])
        for j in range(lo, p + 1):
            acc = np.float32(0.0)
            for d in range(hd):
                acc += q3[t, h, d] * _f32(k_cache[j, h // G, d], table)
            v = acc * np.float32(scale)
            if softcap > 0:
                v = np.float32(softcap * math.tanh(v / softcap))
            s[j - lo] = v
            if v > m:
                m = v
        z = 0.0
        for j in range(s.shape[0]):
            z += math.exp(np.float64(s[j]) - m)
        f = np.float32(z / (z + math.exp(np.float64(sinks[h]) - m)))
        for d in range(hd):
            out3[t, h, d] *= f
