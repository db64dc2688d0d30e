"""What the AVX2 (and AVX-512 VNNI) kernels share: the host's features and the builders of their LLVM IR.

The kinds' integer sums and tile decoders (``kernels.kinds``) are Numba intrinsics written as
LLVM IR for x86-64 hosts with AVX2: LLVM does not find these instruction sequences from a Numba
loop (Numba widens integer products to int64).  Each has a portable Numba loop beside it that
gives identical results (integer sums are exact), chosen when a kernel is compiled: on a host
without AVX2, or when Numba is told to compile for another CPU (``NUMBA_CPU_NAME``), the IR is
never emitted.  Hosts with AVX-512 VNNI (and BW, VL) get a third form of the integer sums, one
``vpdpbusd`` where AVX2 needs ``vpmaddubsw``, an int16 add and (amortised) ``vpmaddwd``
(``ByteSums``).  This module holds the pieces they have in common: vector types, pointers into
Numba arrays, the x86 intrinsics, broadcasting, bit spreading, per-row scale vectors, the
products' accumulator, and the intrinsic factory of the (q, qo, h, ho, xq, xr, xo, out) sums.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic



def _host_has(feature: str) -> bool:
    """The x86-64 host CPU has `feature`, and Numba compiles for the host CPU (with the features
    NUMBA_CPU_FEATURES names, where it is set)."""
    if config.CPU_NAME or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    from llvmlite import binding
    return bool(binding.get_host_cpu_features().get(feature, False))


I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
HOST_AVX2 = _host_has("avx2")
HOST_F16C = _host_has("f16c")
# AVX-512 VNNI, with the byte operations on 512-bit vectors (BW) and the AVX-512 forms of the
# 256-bit ones (VL) that LLVM uses around them.
HOST_VNNI = HOST_AVX2 and all(_host_has(f) for f in ("avx512vnni", "avx512bw", "avx512vl"))

# The forms of the kinds' integer sums, as the kernels' ``simd`` argument names them: plain Numba
# loops, vpmaddubsw + vpmaddwd (AVX2), vpdpbusd (AVX-512 VNNI; where the host lacks it, the AVX2
# form is emitted in its place).  All three give identical int32 sums.
PORTABLE, AVX2, VNNI = 0, 1, 2
SIMD_BEST = VNNI if HOST_VNNI else AVX2 if HOST_AVX2 else PORTABLE
# The forms this host runs, each distinct: what the tests compare.
SIMD_FORMS = tuple(range(SIMD_BEST + 1))


@intrinsic
def half_bits_to_f32(typingctx, h):
    """IEEE half bits (uint16) -> float32 by LLVM's ``fpext half`` (vcvtph2ps with F16C; loops of
    it vectorize).  Exact for every finite value and infinities; only use it where F16C is
    present (HOST_F16C): elsewhere LLVM would need a run-time helper."""
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        bits = builder.trunc(args[0], I16) if args[0].type.width > 16 else args[0]
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return sig, codegen


V32I8, V16I16, V8I32 = ir.VectorType(I8, 32), ir.VectorType(I16, 16), ir.VectorType(I32, 8)
V8F32 = ir.VectorType(ir.FloatType(), 8)


def splat(builder, value, lanes: int = 8):
    """A scalar IR value (i32, float, ...) broadcast to an <lanes x type> vector."""
    undef = ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def spread_bits(builder, word, value):
    """An i32 of 32 bits -> <32 x i8>, byte i = value if bit i is set else 0 (a byte shuffle
    repeating each source byte 8 times, vpand with the bit of each byte, vpcmpeqb)."""
    v4 = builder.bitcast(word, ir.VectorType(I8, 4))
    rep = builder.shuffle_vector(v4, ir.Constant(ir.VectorType(I8, 4), ir.Undefined),
                                 ir.Constant(ir.VectorType(I32, 32), [i // 8 for i in range(32)]))
    bit = ir.Constant(V32I8, [1 << (i % 8) for i in range(32)])
    hit = builder.icmp_unsigned("==", builder.and_(rep, bit), bit)
    return builder.select(hit, ir.Constant(V32I8, [value] * 32), ir.Constant(V32I8, [0] * 32))


def data_ptr(context, builder, arytype, ary, ty):
    """A ty* to the first element of array ary (of Numba type arytype)."""
    data = cgutils.create_struct_proxy(arytype)(context, builder, value=ary).data
    return builder.bitcast(data, ty.as_pointer())


def byte_ptr(context, builder, arytype, ary, offset):
    """i8* to element `offset` of a 1-D uint8/int8 array."""
    return builder.gep(data_ptr(context, builder, arytype, ary, I8), [offset])


def out_ptr(context, builder, arytype, ary):
    """<8 x i32>* to the start of an int32 output array."""
    return builder.bitcast(cgutils.create_struct_proxy(arytype)(context, builder, value=ary).data,
                           V8I32.as_pointer())


def x86(builder, name, ret, *argtypes):
    """A callable emitting a call of the x86 intrinsic `name` (declared once per module)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, list(argtypes)), name)
    return lambda *a: builder.call(fn, list(a))


def madds(builder):
    """(maddubs, maddwd): vpmaddubsw (u8 x s8, adjacent pairs summed to i16) and vpmaddwd
    (i16 x i16, adjacent pairs summed to i32)."""
    return (x86(builder, "llvm.x86.avx2.pmadd.ub.sw", V16I16, V32I8, V32I8),
            x86(builder, "llvm.x86.avx2.pmadd.wd", V8I32, V16I16, V16I16))


def sum_lanes(vnni: bool) -> int:
    """The int32 lanes (rows of a tile) per vector of ByteSums in the VNNI (vnni) or AVX2 form."""
    return 16 if vnni and HOST_VNNI else 8


class ByteSums:
    """Running int32 sums, one per key, of products of unsigned bytes by signed bytes, each int32
    lane i of a sum adding bytes 4i..4i+3's four products: what every kind's integer sums are
    made of.

    vnni (and a host with it): one ``vpdpbusd`` per product on 512-bit vectors (``lanes`` 16),
    accumulating in int32 (no saturation); half as many instructions per byte as on 256-bit
    vectors, which measured faster on Zen 4 too, where a 512-bit operation takes two 256-bit
    halves.  Otherwise (AVX2): ``vpmaddubsw`` results (pairs of products as int16: the
    caller keeps each at most 2^15 - 1) summed as int16, `depth` products at a time (the caller
    bounds that sum too), then widened into the int32 sum by ``vpmaddwd`` by ones.  Both give
    the same int32 sums."""

    def __init__(self, builder, vnni: bool, depth: int = 1):
        self.b, self.depth = builder, depth
        self.vnni = vnni and HOST_VNNI
        self.lanes = lanes = sum_lanes(vnni)             # int32 lanes (rows of a tile) per vector
        self.vec = ir.VectorType(I32, lanes)
        self.bytes = ir.VectorType(I8, 4 * lanes)
        if self.vnni:
            self.dpbusd = x86(builder, f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", self.vec, self.vec, self.vec, self.vec)
        else:
            self.maddubs, self.maddwd = madds(builder)
        self.acc, self.part, self.count = {}, {}, {}

    def add(self, key, *products) -> None:
        """acc[key] += the (u, s) products' lane sums (each u, s a vector of 4 * lanes bytes: u taken
        unsigned)."""
        b = self.b
        if self.vnni:
            for u, s in products:
                self.acc[key] = self.dpbusd(self.acc.get(key, ir.Constant(self.vec, [0] * self.vec.count)),
                                            b.bitcast(u, self.vec), b.bitcast(s, self.vec))
            return
        m = [self.maddubs(u, s) for u, s in products]
        p16 = m[0]
        for v in m[1:]:
            p16 = b.add(p16, v)
        self.part[key] = p16 if self.part.get(key) is None else b.add(self.part[key], p16)
        self.count[key] = self.count.get(key, 0) + len(products)
        if self.count[key] >= self.depth:
            self._widen(key)

    def const(self, byte: int):
        """A vector of 4 * lanes equal bytes."""
        return ir.Constant(self.bytes, [byte] * (4 * self.lanes))

    def splat(self, word):
        """An i32 (4 bytes) repeated in every lane, as bytes."""
        return self.b.bitcast(splat(self.b, word, self.lanes), self.bytes)

    def spread(self, words, value):
        """spread_bits of the i32 `words` (one per 8 lanes), side by side: 4 * lanes bytes."""
        parts = [spread_bits(self.b, w, value) for w in words]
        while len(parts) > 1:
            n = 2 * parts[0].type.count
            parts = [self.b.shuffle_vector(parts[i], parts[i + 1], ir.Constant(ir.VectorType(I32, n), list(range(n))))
                     for i in range(0, len(parts), 2)]
        return parts[0]

    def store(self, op, index, key, minus=None) -> None:
        """Store the sum of `key` (less the vector `minus`, if given) as vector `index` (of lanes
        int32) from int32 pointer op."""
        total = self.total(key) if minus is None else self.b.sub(self.total(key), minus)
        p = self.b.bitcast(op, self.vec.as_pointer())
        self.b.store(total, self.b.gep(p, [ir.Constant(I32, index)]), align=4)

    def _widen(self, key) -> None:
        wide = self.maddwd(self.part[key], ir.Constant(V16I16, [1] * 16))
        self.acc[key] = wide if key not in self.acc else self.b.add(self.acc[key], wide)
        self.part[key], self.count[key] = None, 0

    def total(self, key):
        """The int32 sum of `key` (zero where nothing was added)."""
        if self.part.get(key) is not None:
            self._widen(key)
        return self.acc.get(key, ir.Constant(self.vec, [0] * self.vec.count))


# Bytes ahead of the current block that the integer sums prefetch: a few blocks further along the
# tile's stream (its quants are contiguous), so those lines are in flight while this block's
# multiply-adds run.  Generation streams every weight from memory once per token; on one core
# the hardware prefetcher alone kept about 3/4 of the read rate this reaches with the 4-bit
# kinds (the byte kinds, with half the work per byte, gain nothing and do without).
PREFETCH_AHEAD = 4096


def prefetch_block(builder, ptr, nbytes: int) -> None:
    """Read prefetches (llvm.prefetch, to every cache level) of the nbytes at PREFETCH_AHEAD bytes
    past i8* ptr, one per 64-byte cache line."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]),
                                        "llvm.prefetch.p0i8")
    for line in range(0, nbytes, 64):
        builder.call(fn, [builder.gep(ptr, [ir.Constant(I32, PREFETCH_AHEAD + line)]), ir.Constant(I32, 0),
                          ir.Constant(I32, 3), ir.Constant(I32, 1)])


def loader(builder):
    """load(ptr, offset, type): an unaligned load of `type` at byte (or element) `offset` of ptr."""
    def load(ptr, offset, ty):
        p = builder.bitcast(builder.gep(ptr, [ir.Constant(I32, offset)]), ty.as_pointer())
        return builder.load(p, align=1)
    return load


def plane_ptrs(context, builder, signature, args):
    """Pointers of the (q, qo, h, ho, xq, xr, xo, out) intrinsics: q + qo, the i32 words from
    h + ho, [xq + xo, xr + xo] and out."""
    q, qo, h, ho, xq, xr, xo, out = args
    aty = signature.args
    qp = byte_ptr(context, builder, aty[0], q, qo)
    hp = builder.bitcast(byte_ptr(context, builder, aty[2], h, builder.mul(ho, ir.Constant(ho.type, 4))),
                         I32.as_pointer())
    xps = [byte_ptr(context, builder, aty[4], xq, xo), byte_ptr(context, builder, aty[5], xr, xo)]
    return qp, hp, xps, out_ptr(context, builder, aty[7], out)



def plane_intrinsic(name, emit):
    """An intrinsic of signature (q, qo, h, ho, xq, xr, xo, out) whose IR is
    emit(builder, q + qo, h + ho (i32 words), [xq + xo, xr + xo], out)."""

    def isums(typingctx, q, qo, h, ho, xq, xr, xo, out):
        sig = types.void(q, qo, h, ho, xq, xr, xo, out)

        def codegen(context, builder, signature, args):
            emit(builder, *plane_ptrs(context, builder, signature, args))
            return context.get_dummy_value()

        return sig, codegen

    isums.__name__ = isums.__qualname__ = name
    return intrinsic(isums)


def scales8(context, builder, arytype, ary, first, rows):
    """Per-row scales first .. first + rows - 1 of a float32 or float16-bits (uint16) array,
    as rows / 8 vectors <8 x float> (float16 widened exactly)."""
    half = arytype.dtype.bitwidth == 16
    p = builder.gep(data_ptr(context, builder, arytype, ary, ir.HalfType() if half else ir.FloatType()), [first])
    out = []
    for rg in range(rows // 8):
        v = builder.load(builder.bitcast(builder.gep(p, [ir.Constant(I32, 8 * rg)]),
                                         ir.VectorType(p.type.pointee, 8).as_pointer()), align=2)
        out.append(builder.fpext(v, V8F32) if half else v)
    return out


HOST_AVX512 = _host_has("avx512vl")
# Activation rows per block_fma call: 4 rows' partial sums (16 vectors) plus the 4 weight vectors
# fit the 32 vector registers of AVX-512VL hosts; AVX2 hosts have 16, room for 2 rows.
FMA_ROWS = 4 if HOST_AVX512 else 2


def block_fma_intrinsic(rows: int):
    """An intrinsic ``(wb, x, xo, ldx, acc, ao)`` applying one decoded block of a row tile to
    `rows` activation rows: wb float32 (32 * 32,) holds weight k of lane l at ``wb[32 k + l]``
    (a block_T decoder's output with ldo 32), row r's 32 activations are ``x[xo + r ldx + k]``,
    and ``acc[ao + 32 r + l] += sum_k wb[32 k + l] x[xo + r ldx + k]``: the block's sum is formed
    on its own from zero in k order by fused multiply-adds (vfmadd231ps on a broadcast
    activation; 32 terms) and then added to acc, so a product of K weights rounds like a sum of
    K / 32 partial sums (the error stays near that of a pairwise sum, whatever the row length)."""

    def block_fma(typingctx, wb, x, xo, ldx, acc, ao):
        sig = types.void(wb, x, xo, ldx, acc, ao)

        def codegen(context, builder, signature, args):
            wb, x, xo, ldx, acc, ao = args
            aty = signature.args
            f32 = ir.FloatType()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V8F32, [V8F32] * 3),
                                                 "llvm.fma.v8f32")
            wp = data_ptr(context, builder, aty[0], wb, f32)
            xp = builder.gep(data_ptr(context, builder, aty[1], x, f32), [xo])
            ap = builder.gep(data_ptr(context, builder, aty[4], acc, f32), [ao])
            xrows = [builder.gep(xp, [builder.mul(ldx, ir.Constant(ldx.type, r))]) for r in range(rows)]

            def vec(p, i):
                return builder.bitcast(builder.gep(p, [ir.Constant(I32, i)]), V8F32.as_pointer())

            zero = ir.Constant(V8F32, [0.0] * 8)
            part = [[zero] * 4 for _ in range(rows)]          # [row][lanes 8g..8g+7]
            for k in range(32):
                w = [builder.load(vec(wp, 32 * k + 8 * g), align=4) for g in range(4)]
                for r in range(rows):
                    xv = splat(builder, builder.load(builder.gep(xrows[r], [ir.Constant(I32, k)]), align=4))
                    for g in range(4):
                        part[r][g] = builder.call(fma, [w[g], xv, part[r][g]])
            for r in range(rows):
                for g in range(4):
                    p = vec(ap, 32 * r + 8 * g)
                    builder.store(builder.fadd(builder.load(p, align=4), part[r][g]), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    block_fma.__name__ = block_fma.__qualname__ = f"block_fma{rows}"
    return intrinsic(block_fma)


# Activation rows the multi-row integer sums take per call: each row's two int8 terms keep one
# int16 and one int32 accumulator per 8 weight rows in registers, 4 rows' worth beside the
# unpacked quants within the 32 vector registers of AVX-512VL hosts (2 on AVX2's 16).
ISUM_ROWS = 4 if HOST_AVX512 else 2


def rows_intrinsic(name, emit, rows: int, terms: int = 2):
    """An intrinsic (q, qo, h, ho, xq, xr, xo, ldx, out) of the integer sums of one block for
    `rows` activation rows at once: emit(builder, q + qo, h + ho (i32 words), xps, out) with
    xps = [xq + xo + r ldx, xr + xo + r ldx] per row r (the first `terms` of the two; xo and ldx
    in bytes), so the emitter's sums of term j of row r land at out[(terms r + j) ROW_TILE ..].
    The quants are loaded and unpacked once for all the rows."""

    def isums(typingctx, q, qo, h, ho, xq, xr, xo, ldx, out):
        sig = types.void(q, qo, h, ho, xq, xr, xo, ldx, out)

        def codegen(context, builder, signature, args):
            q, qo, h, ho, xq, xr, xo, ldx, out = args
            aty = signature.args
            qp, hp, (xq0, xr0), op = plane_ptrs(context, builder, types.void(*aty[:7], aty[8]),
                                                (q, qo, h, ho, xq, xr, xo, out))
            xps = []
            for r in range(rows):
                step = builder.mul(ldx, ir.Constant(ldx.type, r))
                xps.extend(builder.gep(p, [step]) for p in (xq0, xr0)[:terms])
            emit(builder, qp, hp, xps, op)
            return context.get_dummy_value()

        return sig, codegen

    isums.__name__ = isums.__qualname__ = f"{name}{rows}"
    return intrinsic(isums)


def rows_call(name: str, emit, terms: int = 2):
    """A Numba function call(q, qo, h, ho, xq, xr, xo, ldx, c, out) running the rows_intrinsic of
    emit (and terms) for c = 1, 2 or ISUM_ROWS activation rows (the counts tiled.row_step hands out)."""
    one, two, full = (rows_intrinsic(name, emit, c, terms) for c in (1, 2, ISUM_ROWS))

    @njit(inline="always")
    def call(q, qo, h, ho, xq, xr, xo, ldx, c, out):
        if c == ISUM_ROWS:
            full(q, qo, h, ho, xq, xr, xo, ldx, out)
        elif c == 2:
            two(q, qo, h, ho, xq, xr, xo, ldx, out)
        else:
            one(q, qo, h, ho, xq, xr, xo, ldx, out)
    return call


def by_row_group(emit, groups: int, **mode):
    """An emitter (builder, qp, hp, xps, op) running emit(..., rgs=(rg,), prefetch=rg == 0, **mode)
    once per group rg of 8 weight rows: with many activation terms (rows_intrinsic), only one
    group's accumulators are live at a time; the quants of each group are still loaded once."""

    def emit_rows(builder, qp, hp, xps, op):
        for rg in range(groups):
            emit(builder, qp, hp, xps, op, rgs=(rg,), prefetch=rg == 0, **mode)

    return emit_rows
