"""Integer dot products for the quantized matvecs, written as LLVM IR for AVX2 hosts.

Families: ``nibble_isums`` (4- and 5-bit weights times activations in two int8 terms, for
matvec_nib), ``crumb_isums`` (2- and 3-bit weights, the same way, per 16 weights, for
matvec_crumb), ``table_isums`` (4-bit indices into a value table, the same way, for
matvec_tab; ``table_isums16``: the lattice tables raised to unsigned values, for matvec_tab16) and
``pair_isums`` (int8 weights times int16 activations, for matvec_i8); see their docstrings.

``nibble_isums(q, qo, h, ho, five, xq, xr, xo, out, simd)`` computes, for one 32-weight
block of each of the ``ROW_TILE`` (32) rows of a row tile,

    out[l]      = sum_{k<32} w(k, l) * xq[xo + k]
    out[32 + l] = the same with xr in place of xq

exactly, in int32, where w(k, l) is weight k of row l: the low nibble (k < 16) or high
nibble (k >= 16) of byte k % 16 of the row's block in ``q``, plus 16 times its fifth bit
from ``h`` when ``five``.  ``xq``, ``xr`` hold int8 values in -127..127: the matvec passes
an activation block rounded to int8 and the rounded remainder (two terms, see
quant_matvec.round_activations), so the product is within float32 accuracy of the exact
one at the cost of one more multiply-add per weight pair.

Layout of one tile-block (repack.py, kinds ``q4`` and ``q5``): 512 bytes from ``q[qo]``,
byte k of row l at ``((k // 4) * 32 + l) * 4 + k % 4``: four consecutive bytes of a row
make one 32-bit lane, so a 32-byte load holds bytes 4g..4g+3 of 8 rows, and the four
activations of those bytes are one broadcast 32-bit value.  The fifth bits: 32 words
from ``h[ho]``; word ``2 * (g * 4 + rg) + half`` holds, as its bit ``i``, the bit of the
weight in byte i of load (g, rg) (rows 8rg..8rg+7), low nibble (half 0) or high (half 1).

Two implementations of each give identical results (integer sums are exact):

* ``simd`` true, on an x86-64 host with AVX2 (Numba compiling for the host CPU): LLVM IR
  written here, per 32-byte load ``vpand``/``vpsrlw`` to split the nibbles (5-bit: each
  fifth-bit word spread to 32 bytes of 0/16 by a byte shuffle, ``vpand``, ``vpcmpeqb``
  and or-ed in), ``vpmaddubsw`` (unsigned weight x signed activation, adjacent pairs
  summed to int16; at most 2 * 31 * 127, no saturation), int16 sums over 4 loads (4-bit:
  at most 8 * 15 * 127 * 2 < 2^15) or 2 loads (5-bit), widened by ``vpmaddwd`` by ones
  into int32 sums.  About 3 vector instructions per 8 weights for both terms (4-bit),
  against about 7 for decoding the nibbles to float32 and multiplying there; LLVM does
  not find this form from a Numba loop (Numba widens the integer products to int64).
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


def _host_has(feature: str) -> bool:
    """The x86-64 host CPU has `feature`, and Numba compiles for the host CPU."""
    if config.CPU_NAME or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from llvmlite import binding
    return bool(binding.get_host_cpu_features().get(feature, False))


_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
HOST_AVX2 = _host_has("avx2")
HOST_F16C = _host_has("f16c")


@intrinsic
def half_bits_to_f32(typingctx, h):
    """IEEE half bits (uint16) -> float32 by LLVM's ``fpext half`` (vcvtph2ps with F16C; loops of
    it vectorize).  Exact for every finite value and infinities; only use it where F16C is
    present (HOST_F16C): elsewhere LLVM would need a run-time helper."""
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        bits = builder.trunc(args[0], _I16) if args[0].type.width > 16 else args[0]
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return sig, codegen

_V32I8, _V16I16, _V8I32 = ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)
_V8F32 = ir.VectorType(ir.FloatType(), 8)


def _splat(builder, value):
    """A scalar IR value (i32, float, ...) broadcast to an <8 x type> vector."""
    undef = ir.Constant(ir.VectorType(value.type, 8), ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(_V8I32, [0] * 8))


def _spread_bits(builder, word, value):
    """An i32 of 32 bits -> <32 x i8>, byte i = value if bit i is set else 0 (a byte shuffle
    repeating each source byte 8 times, vpand with the bit of each byte, vpcmpeqb)."""
    v4 = builder.bitcast(word, ir.VectorType(_I8, 4))
    rep = builder.shuffle_vector(v4, ir.Constant(ir.VectorType(_I8, 4), ir.Undefined),
                                 ir.Constant(ir.VectorType(_I32, 32), [i // 8 for i in range(32)]))
    bit = ir.Constant(_V32I8, [1 << (i % 8) for i in range(32)])
    hit = builder.icmp_unsigned("==", builder.and_(rep, bit), bit)
    return builder.select(hit, ir.Constant(_V32I8, [value] * 32), ir.Constant(_V32I8, [0] * 32))


def _data_ptr(context, builder, arytype, ary, ty):
    """A ty* to the first element of array ary (of Numba type arytype)."""
    data = cgutils.create_struct_proxy(arytype)(context, builder, value=ary).data
    return builder.bitcast(data, ty.as_pointer())


def _byte_ptr(context, builder, arytype, ary, offset):
    """i8* to element `offset` of a 1-D uint8/int8 array."""
    return builder.gep(_data_ptr(context, builder, arytype, ary, _I8), [offset])


def _out_ptr(context, builder, arytype, ary):
    """<8 x i32>* to the start of an int32 output array."""
    return builder.bitcast(cgutils.create_struct_proxy(arytype)(context, builder, value=ary).data,
                           _V8I32.as_pointer())


def _x86(builder, name, ret, *argtypes):
    """A callable emitting a call of the x86 intrinsic `name` (declared once per module)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, list(argtypes)), name)
    return lambda *a: builder.call(fn, list(a))


def _madds(builder):
    """(maddubs, maddwd): vpmaddubsw (u8 x s8, adjacent pairs summed to i16) and vpmaddwd
    (i16 x i16, adjacent pairs summed to i32)."""
    return (_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, _V32I8, _V32I8),
            _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, _V16I16, _V16I16))


def _loader(builder):
    """load(ptr, offset, type): an unaligned load of `type` at byte (or element) `offset` of ptr."""
    def load(ptr, offset, ty):
        p = builder.bitcast(builder.gep(ptr, [ir.Constant(_I32, offset)]), ty.as_pointer())
        return builder.load(p, align=1)
    return load


def _plane_ptrs(context, builder, signature, args):
    """Pointers of the (q, qo, h, ho, xq, xr, xo, out) intrinsics: q + qo, the i32 words from
    h + ho, [xq + xo, xr + xo] and out."""
    q, qo, h, ho, xq, xr, xo, out = args
    aty = signature.args
    qp = _byte_ptr(context, builder, aty[0], q, qo)
    hp = builder.bitcast(_byte_ptr(context, builder, aty[2], h, builder.mul(ho, ir.Constant(ho.type, 4))),
                         _I32.as_pointer())
    xps = [_byte_ptr(context, builder, aty[4], xq, xo), _byte_ptr(context, builder, aty[5], xr, xo)]
    return qp, hp, xps, _out_ptr(context, builder, aty[7], out)


def _emit_nibble_sums(builder, qp, hp, xps, op, five):
    """The IR of nibble_isums' AVX2 form (see the module docstring)."""
    maddubs, maddwd = _madds(builder)
    load = _loader(builder)
    low4 = ir.Constant(_V32I8, [15] * 32)
    four = ir.Constant(_V32I8, [4] * 32)
    ones = ir.Constant(_V16I16, [1] * 16)

    groups = ROW_TILE // 8
    # int16 partial sums per [term][rows 8rg..8rg+7], widened into int32 before they can
    # overflow: every 4 loads for 4-bit weights (8 * 15 * 127 * 2 < 2^15), every 2 for 5-bit
    flush = 2 if five else 4
    zero16 = ir.Constant(_V16I16, [0] * 16)
    acc = [[zero16] * groups for _ in xps]
    acc32 = [[ir.Constant(_V8I32, [0] * 8)] * groups for _ in xps]
    for g in range(4):                   # bytes 4g..4g+3 of every row
        xs = [[builder.bitcast(_splat(builder, load(xp, o + 4 * g, _I32)), _V32I8)
               for o in (0, 16)] for xp in xps]      # [term][low / high nibbles' activations]
        for rg in range(groups):         # 8 rows per 32-byte load
            v = load(qp, (g * ROW_TILE + rg * 8) * 4, _V32I8)
            lo = builder.and_(v, low4)
            hi = builder.and_(builder.lshr(v, four), low4)
            if five:
                w = 2 * (g * groups + rg)
                lo = builder.or_(lo, _spread_bits(builder, load(hp, w, _I32), 16))
                hi = builder.or_(hi, _spread_bits(builder, load(hp, w + 1, _I32), 16))
            for term, (x_lo, x_hi) in enumerate(xs):
                pair = builder.add(maddubs(lo, x_lo), maddubs(hi, x_hi))
                acc[term][rg] = builder.add(acc[term][rg], pair)
        if (g + 1) % flush == 0:
            for term in range(len(xps)):
                for rg in range(groups):
                    wide = maddwd(acc[term][rg], ones)
                    acc32[term][rg] = builder.add(acc32[term][rg], wide)
                    acc[term][rg] = zero16
    for term in range(len(xps)):
        for rg in range(groups):
            builder.store(acc32[term][rg], builder.gep(op, [ir.Constant(_I32, term * groups + rg)]),
                          align=4)


def _plane_intrinsic(name, emit):
    """An intrinsic of signature (q, qo, h, ho, xq, xr, xo, out) whose IR is
    emit(builder, q + qo, h + ho (i32 words), [xq + xo, xr + xo], out)."""

    def isums(typingctx, q, qo, h, ho, xq, xr, xo, out):
        sig = types.void(q, qo, h, ho, xq, xr, xo, out)

        def codegen(context, builder, signature, args):
            emit(builder, *_plane_ptrs(context, builder, signature, args))
            return context.get_dummy_value()

        return sig, codegen

    isums.__name__ = isums.__qualname__ = name
    return intrinsic(isums)


_isums4_avx2 = _plane_intrinsic("_isums4_avx2", lambda b, *p: _emit_nibble_sums(b, *p, five=False))
_isums5_avx2 = _plane_intrinsic("_isums5_avx2", lambda b, *p: _emit_nibble_sums(b, *p, five=True))


def _emit_table_sums(builder, qp, tp, xps, op, unsigned=False, halves=False, depth=1):
    """The IR of table_isums' AVX2 form, and of table_isums16's (unsigned values: no vpabsb /
    vpsignb; halves: one sum per 16 weights; depth: vpmaddubsw results summed as int16 into
    an accumulator before each widening vpmaddwd; 4 divides the 4 (halves) or 8 it gets)."""
    maddubs, maddwd = _madds(builder)
    pshufb = _x86(builder, "llvm.x86.avx2.pshuf.b", _V32I8, _V32I8, _V32I8)
    psign = _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, _V32I8, _V32I8)
    load = _loader(builder)
    low4 = ir.Constant(_V32I8, [15] * 32)
    four = ir.Constant(_V32I8, [4] * 32)
    zero8 = ir.Constant(_V32I8, [0] * 32)
    ones = ir.Constant(_V16I16, [1] * 16)

    t16 = load(tp, 0, ir.VectorType(_I8, 16))
    table = builder.shuffle_vector(t16, t16, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))
    groups = ROW_TILE // 8
    parts = 2 if halves else 1           # accumulators per term and row group: the two halves, or one
    acc = [[ir.Constant(_V8I32, [0] * 8)] * (parts * groups) for _ in xps]
    part = [[None] * (parts * groups) for _ in xps]     # int16 sums not yet widened
    count = [[0] * (parts * groups) for _ in xps]

    def add(term, a, p16):
        part[term][a] = p16 if part[term][a] is None else builder.add(part[term][a], p16)
        count[term][a] += 1
        if count[term][a] == depth:
            acc[term][a] = builder.add(acc[term][a], maddwd(part[term][a], ones))
            part[term][a], count[term][a] = None, 0

    for g in range(4):
        xs = [[builder.bitcast(_splat(builder, load(xp, o + 4 * g, _I32)), _V32I8)
               for o in (0, 16)] for xp in xps]
        for rg in range(groups):
            v = load(qp, (g * ROW_TILE + rg * 8) * 4, _V32I8)
            for half, nib in enumerate((builder.and_(v, low4), builder.and_(builder.lshr(v, four), low4))):
                w = pshufb(table, nib)                   # the int8 values
                a = (half if halves else 0) * groups + rg
                if unsigned:
                    for term in range(len(xps)):
                        add(term, a, maddubs(w, xs[term][half]))
                    continue
                neg = builder.icmp_signed("<", w, zero8)
                mag = builder.select(neg, builder.sub(zero8, w), w)      # |w| (vpabsb)
                for term in range(len(xps)):
                    sx = psign(xs[term][half], w)        # x with w's sign (0 where w = 0)
                    add(term, a, maddubs(mag, sx))
    for term in range(len(xps)):
        for a in range(parts * groups):
            builder.store(acc[term][a], builder.gep(op, [ir.Constant(_I32, term * parts * groups + a)]), align=4)


def _table_intrinsic(name, **mode):
    """An intrinsic (q, qo, tab, xq, xr, xo, out) of _emit_table_sums in the given mode."""
    def isums(typingctx, q, qo, tab, xq, xr, xo, out):
        sig = types.void(q, qo, tab, xq, xr, xo, out)

        def codegen(context, builder, signature, args):
            q, qo, tab, xq, xr, xo, out = args
            aty = signature.args
            _emit_table_sums(builder, _byte_ptr(context, builder, aty[0], q, qo),
                             _byte_ptr(context, builder, aty[2], tab, ir.Constant(qo.type, 0)),
                             [_byte_ptr(context, builder, aty[3], xq, xo), _byte_ptr(context, builder, aty[4], xr, xo)],
                             _out_ptr(context, builder, aty[6], out), **mode)
            return context.get_dummy_value()

        return sig, codegen

    isums.__name__ = isums.__qualname__ = name
    return intrinsic(isums)


_table_isums_avx2 = _table_intrinsic("_table_isums_avx2")
_lattice_wide32_avx2 = _table_intrinsic("_lattice_wide32_avx2", unsigned=True)
_lattice_wide16_avx2 = _table_intrinsic("_lattice_wide16_avx2", unsigned=True, halves=True)
_lattice_narrow32_avx2 = _table_intrinsic("_lattice_narrow32_avx2", unsigned=True, depth=4)
_lattice_narrow16_avx2 = _table_intrinsic("_lattice_narrow16_avx2", unsigned=True, halves=True, depth=4)


def table_isums(q, qo, tab, xq, xr, xo, out, simd):
    """nibble_isums for 4-bit indices into a 16-entry int8 value table ``tab`` (IQ4_NL, IQ4_XS,
    MXFP4; values in -127..127): w(k, l) = tab[nibble].  Same tile layout and activation terms.
    AVX2 form: per 32-byte load ``vpshufb`` looks the values up, ``vpabsb`` / ``vpsignb`` move
    their signs onto the activations (``vpmaddubsw`` takes one unsigned operand), and each
    int16 pair sum (at most 2 * 127 * 127) is widened by ``vpmaddwd`` at once.
    (Callable from Numba code only.)"""
    raise NotImplementedError("table_isums runs inside Numba kernels")


@overload(table_isums, inline="always")
def _table_isums_impl(q, qo, tab, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, tab, xq, xr, xo, out, simd):
            _isums_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, out)
        return portable

    def either(q, qo, tab, xq, xr, xo, out, simd):
        if simd:
            _table_isums_avx2(q, qo, tab, xq, xr, xo, out)
        else:
            _isums_loop(q, qo, _NO_BITS, 0, False, tab, xq, xr, xo, out)
    return either


def table_isums16(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
    """table_isums for the unsigned tables of the lattice i-quants (repack kind ``t4s``: their
    values plus an offset, 0..127) with the sums per 16 weights when ``halves`` (their scales
    are per 16): out[(term * 2 + half) * 32 + l] sums the low nibbles (weights 0-15, half 0) or
    the high nibbles (weights 16-31, half 1) of row l times x_term; else out[term * 32 + l] sums
    all 32.  Exact in int32.  ``narrow``: every value is at most 31.  AVX2 form: ``vpshufb`` looks
    the values up and ``vpmaddubsw`` takes them as they are (no ``vpabsb`` / ``vpsignb``: 17 vector
    instructions per 64 weights and both terms, against 23 for table_isums); narrow tables sum
    four ``vpmaddubsw`` results as int16 (at most 4 * 2 * 31 * 127) before widening them (about
    13 instructions), the others widen each at once (at most 2 * 127 * 127).  (Callable from
    Numba code only.)"""
    raise NotImplementedError("table_isums16 runs inside Numba kernels")


@njit(cache=True, inline="always")
def _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out):
    """The portable form of table_isums16."""
    R = ROW_TILE
    for l in range(R):
        s0 = np.int32(0)
        s1 = np.int32(0)
        r0 = np.int32(0)
        r1 = np.int32(0)
        for g in range(4):
            for j in range(4):
                v = np.int32(q[qo + (g * R + l) * 4 + j])
                lo = np.int32(tab[v & np.int32(15)])
                hi = np.int32(tab[v >> np.int32(4)])
                i = xo + 4 * g + j
                s0 += lo * np.int32(xq[i])
                s1 += hi * np.int32(xq[i + 16])
                r0 += lo * np.int32(xr[i])
                r1 += hi * np.int32(xr[i + 16])
        if halves:
            out[l] = s0
            out[R + l] = s1
            out[2 * R + l] = r0
            out[3 * R + l] = r1
        else:
            out[l] = s0 + s1
            out[R + l] = r0 + r1


@overload(table_isums16, inline="always")
def _table_isums16_impl(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
            _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out)
        return portable

    def either(q, qo, tab, halves, narrow, xq, xr, xo, out, simd):
        if not simd:
            _table_isums16_loop(q, qo, tab, halves, xq, xr, xo, out)
        elif narrow and halves:
            _lattice_narrow16_avx2(q, qo, tab, xq, xr, xo, out)
        elif narrow:
            _lattice_narrow32_avx2(q, qo, tab, xq, xr, xo, out)
        elif halves:
            _lattice_wide16_avx2(q, qo, tab, xq, xr, xo, out)
        else:
            _lattice_wide32_avx2(q, qo, tab, xq, xr, xo, out)
    return either


def _emit_crumb_sums(builder, qp, hp, xps, op, three):
    """The IR of crumb_isums' AVX2 form (see its docstring)."""
    maddubs, maddwd = _madds(builder)
    load = _loader(builder)
    low2 = ir.Constant(_V32I8, [3] * 32)
    ones = ir.Constant(_V16I16, [1] * 16)

    groups = ROW_TILE // 8
    for g in range(2):                   # weights 16g..16g+15: one int32 sum per term
        # int16 sums over the 4 crumb planes: at most 4 * 2 * 7 * 127 < 2^15
        acc = [[ir.Constant(_V16I16, [0] * 16)] * groups for _ in xps]
        for c in range(4):               # crumb c of each byte: weights 16g + 4c + j
            xs = [builder.bitcast(_splat(builder, load(xp, 16 * g + 4 * c, _I32)), _V32I8)
                  for xp in xps]
            for rg in range(groups):
                v = load(qp, (g * ROW_TILE + rg * 8) * 4, _V32I8)
                u = builder.and_(builder.lshr(v, ir.Constant(_V32I8, [2 * c] * 32)) if c else v, low2)
                if three:
                    u = builder.or_(u, _spread_bits(builder, load(hp, (g * 4 + c) * groups + rg, _I32), 4))
                for term, x in enumerate(xs):
                    acc[term][rg] = builder.add(acc[term][rg], maddubs(u, x))
        for term in range(len(xps)):
            for rg in range(groups):
                builder.store(maddwd(acc[term][rg], ones),
                              builder.gep(op, [ir.Constant(_I32, (term * 2 + g) * groups + rg)]), align=4)


_crumb2_isums_avx2 = _plane_intrinsic("_crumb2_isums_avx2", lambda b, *p: _emit_crumb_sums(b, *p, three=False))
_crumb3_isums_avx2 = _plane_intrinsic("_crumb3_isums_avx2", lambda b, *p: _emit_crumb_sums(b, *p, three=True))


@njit(cache=True, inline="always")
def _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out):
    """The portable form of crumb_isums."""
    R = ROW_TILE
    for g in range(2):
        for l in range(R):
            s = np.int32(0)
            r = np.int32(0)
            for c in range(4):
                for j in range(4):
                    u = (np.int32(q[qo + (g * R + l) * 4 + j]) >> np.int32(2 * c)) & np.int32(3)
                    if three:
                        w = ho + (g * 4 + c) * (R // 8) + l // 8
                        u |= np.int32((h[w] >> np.uint32((l % 8) * 4 + j)) & np.uint32(1)) << np.int32(2)
                    i = xo + 16 * g + 4 * c + j
                    s += np.int32(u * np.int32(xq[i]))
                    r += np.int32(u * np.int32(xr[i]))
            out[g * R + l] = s
            out[(2 + g) * R + l] = r


def crumb_isums(q, qo, h, ho, three, xq, xr, xo, out, simd):
    """For one 32-weight block of each of the ROW_TILE rows of a tile of 2-bit weights (plus a third
    bit from ``h`` when ``three``; values 0..7) and the two int8 activation terms of nibble_isums:
    out[(term * 2 + half) * 32 + l] = sum over weights 16 half .. 16 half + 15 of row l of w * x_term,
    exact in int32.  Layout (repack.py, kind ``q2``): 256 bytes from ``q[qo]``; byte j of dword
    half of row l, ``q[qo + ((half * 32) + l) * 4 + j]``, holds weights 16 half + 4c + j as its bit
    pairs c = 0..3; the third bits: 32 words from ``h[ho]``, word ``(half * 4 + c) * 4 + l // 8``,
    bit ``(l % 8) * 4 + j``.  AVX2 form: per 32-byte load four shift-and-mask planes, each a
    ``vpmaddubsw`` with the 4 activations of its weights broadcast.  (Callable from Numba code only.)"""
    raise NotImplementedError("crumb_isums runs inside Numba kernels")


@overload(crumb_isums, inline="always")
def _crumb_isums_impl(q, qo, h, ho, three, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, three, xq, xr, xo, out, simd):
            _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out)
        return portable

    def either(q, qo, h, ho, three, xq, xr, xo, out, simd):
        if not simd:
            _crumb_isums_loop(q, qo, h, ho, three, xq, xr, xo, out)
        elif three:
            _crumb3_isums_avx2(q, qo, h, ho, xq, xr, xo, out)
        else:
            _crumb2_isums_avx2(q, qo, h, ho, xq, xr, xo, out)
    return either


@intrinsic
def _pair_isums_avx2(typingctx, q, qo, xq, xo, out):
    """The AVX2 form of pair_isums (see its docstring)."""
    sig = types.void(q, qo, xq, xo, out)

    def codegen(context, builder, signature, args):
        q, qo, xq, xo, out = args
        aty = signature.args
        qp = _byte_ptr(context, builder, aty[0], q, qo)
        xp = _byte_ptr(context, builder, aty[2], xq, builder.mul(xo, ir.Constant(xo.type, 2)))
        op = _out_ptr(context, builder, aty[4], out)
        _, maddwd = _madds(builder)
        load = _loader(builder)
        v16i8 = ir.VectorType(_I8, 16)

        groups = ROW_TILE // 8
        for half in range(2):                    # weights 0-15, 16-31: one int32 sum each
            acc = [ir.Constant(_V8I32, [0] * 8)] * groups
            for p in range(8 * half, 8 * half + 8):      # the pair of weights 2p, 2p+1
                x = builder.bitcast(_splat(builder, load(xp, 4 * p, _I32)), _V16I16)
                for rg in range(groups):         # 8 rows: 16 bytes, widened to int16
                    w = builder.sext(load(qp, (p * ROW_TILE + rg * 8) * 2, v16i8), _V16I16)
                    acc[rg] = builder.add(acc[rg], maddwd(w, x))
            for rg in range(groups):
                builder.store(acc[rg], builder.gep(op, [ir.Constant(_I32, half * groups + rg)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _pair_isums_loop(q, qo, xq, xo, out):
    """The portable form of pair_isums."""
    R = ROW_TILE
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
        if simd:
            _pair_isums_avx2(q, qo, xq, xo, out)
        else:
            _pair_isums_loop(q, qo, xq, xo, out)
    return either


@njit(cache=True, inline="always")
def _isums_loop(q, qo, h, ho, five, tab, xq, xr, xo, out):
    """The portable form of nibble_isums (tab: the identity) and table_isums (five false): the
    same int32 sums as plain loops."""
    R = ROW_TILE
    for l in range(2 * R):
        out[l] = 0
    for g in range(4):
        for l in range(R):
            s = np.int32(0)
            r = np.int32(0)
            for j in range(4):
                v = np.int32(q[qo + (g * R + l) * 4 + j])
                lo = np.int32(tab[v & np.int32(15)])
                hi = np.int32(tab[v >> np.int32(4)])
                if five:
                    w = ho + 2 * (g * (R // 8) + l // 8)
                    i = np.uint32((l % 8) * 4 + j)
                    lo |= np.int32((h[w] >> i) & np.uint32(1)) << np.int32(4)
                    hi |= np.int32((h[w + 1] >> i) & np.uint32(1)) << np.int32(4)
                i = xo + 4 * g + j
                s += np.int32(lo * np.int32(xq[i]) + hi * np.int32(xq[i + 16]))
                r += np.int32(lo * np.int32(xr[i]) + hi * np.int32(xr[i + 16]))
            out[l] += s
            out[R + l] += r


_IDENTITY = np.arange(16, dtype=np.int8)     # nibble -> its value
_NO_BITS = np.zeros(0, np.uint32)             # no fifth bits


def nibble_isums(q, qo, h, ho, five, xq, xr, xo, out, simd):
    """See the module docstring (callable from Numba code only)."""
    raise NotImplementedError("nibble_isums runs inside Numba kernels")


@overload(nibble_isums, inline="always")
def _nibble_isums_impl(q, qo, h, ho, five, xq, xr, xo, out, simd):
    if not HOST_AVX2:
        def portable(q, qo, h, ho, five, xq, xr, xo, out, simd):
            _isums_loop(q, qo, h, ho, five, _IDENTITY, xq, xr, xo, out)
        return portable

    def either(q, qo, h, ho, five, xq, xr, xo, out, simd):
        if not simd:
            _isums_loop(q, qo, h, ho, five, _IDENTITY, xq, xr, xo, out)
        elif five:
            _isums5_avx2(q, qo, h, ho, xq, xr, xo, out)
        else:
            _isums4_avx2(q, qo, h, ho, xq, xr, xo, out)
    return either
