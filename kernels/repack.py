"""Load-time repacking of GGUF weight tensors into SIMD-friendly layouts.

A GGUF block interleaves its scales with its quants, and a kernel that walks it
block by block cannot be vectorized by LLVM.  At load time (once; the file stays
untouched) the matrix is cut into *row tiles* of ``ROW_TILE`` (32) consecutive rows
and every tile is split into separate streams:

* scale and offset per 32-weight block, as float32, so that a weight is
  ``w = d * q + m`` (Q4_0 and Q5_0 get ``m = -8 d`` and ``-16 d``, the k-quants
  ``d * sc`` and ``-dmin * min`` of their 32-weight sub-blocks);
* the quants, *row-interleaved*: for block ``b`` and byte ``k`` of a block, the
  byte of each of the tile's 32 rows is stored contiguously.

Index of row ``r`` (tile ``t = r // ROW_TILE``, lane ``l = r % ROW_TILE``), block ``b``:
  quant byte k:        ``qt[t, (b * K + k) * ROW_TILE + l]``   (K bytes per block)
  per-block value:     ``d[t, b * ROW_TILE + l]`` (same for m, qh, hl, hh, sl, sh)

Row-interleaving is what makes the matvec fast (like ggml's CPU "repack" layouts):
SIMD lanes are rows, so one broadcast activation multiplies 8 rows' weights per ymm
register, with no horizontal sums and no padding of the block count (only the row
count is padded to a whole tile, with zeros).

Packed kinds (``Packed.kind``) and their arrays (nb = cols / 32, T = tiles):

``q4``  Q4_0, Q4_1, Q4_K: ``qt`` uint8 (T, nb*16*ROW_TILE): byte k of a block holds
        weight k (low nibble) and weight k+16 (high nibble); ``d``, ``m`` (T, nb*ROW_TILE).
        Here a lane holds 4 consecutive bytes of its row at a time (the 32-bit lanes of
        the integer dot products, see simd.py): byte k of block b of lane l is at
        ``qt[t, ((b * 4 + k // 4) * ROW_TILE + l) * 4 + k % 4]``.
``q5``  Q5_0, Q5_1, Q5_K: ``qt`` as ``q4`` (the low 4 bits of each weight) and ``qh``
        uint32 (T, nb*ROW_TILE), the fifth bits: per block ROW_TILE words, word
        ``2 * ((k % 16) // 4 * (ROW_TILE // 8) + l // 8) + k // 16`` of block b holds the bit
        of weight k of lane l as its bit ``(l % 8) * 4 + k % 4``, so one word covers the 32
        weights of one 32-byte load of qt (see simd.py); ``d``, ``m``.  Q4_0 and Q4_1 have
        a ``qh`` of shape (1, 0).
``q2``  Q2_K, Q3_K, TQ2_0, TQ1_0: ``qt`` uint8 (T, nb*8*ROW_TILE), 2-bit values: byte j of dword
        half (0, 1) of block b of lane l, ``qt[t, ((b * 2 + half) * ROW_TILE + l) * 4 + j]``,
        holds weights 16 half + 4c + j as its bit pairs c = 0..3 (see simd.crumb_isums);
        ``qb`` uint32 (T, nb*ROW_TILE), Q3_K's third bits (word ``(half * 4 + c) *
        (ROW_TILE // 8) + l // 8`` of block b, bit ``(l % 8) * 4 + j``; others (1, 0));
        ``sc``, ``mn`` int8 (T, nb*2*ROW_TILE), the integer scale and min of each 16 weights
        (index ``(b * 2 + half) * ROW_TILE + l``); ``d``, ``dm`` (T, ns*ROW_TILE) per 256-weight
        super-block s.  weight = d * sc * u - dm * mn for the unsigned value u; Q3_K
        (u = q + 4, mn = 4 sc, dm = d) and TQ2_0 / TQ1_0 (u = q + 1, sc = mn = 1, dm = d) decode as
        ``(u - off) * (d * sc)``, as ggml does.
``t4``  IQ4_NL, IQ4_XS, MXFP4: ``qt`` as ``q4`` holding the 4-bit indices into the type's
        value table (``TABLES``); ``d`` the scale of each 32-weight block (IQ4_XS:
        ``d * (scale - 32)``, MXFP4: its E8M0 exponent halved); weight = d * table[q].
``t4s`` the lattice i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: ``qt`` as ``q4``
        holding 4-bit codes into the type's table of signed values (``TABLES``: a grid
        magnitude's index plus 8 for a negative sign; IQ1: grid value + 1 plus 8 for the negative
        shift), so no grid lookup is left for the kernel; ``sc`` int8 (T, nb*2*R), the odd
        sub-scale 2s+1 of each 16 weights (index as ``q2``'s); ``d`` (T, ns*R) per 256 weights,
        the file's scale times the type's factor (IQ2, IQ1: 1/8; IQ3_XXS: 1/4; IQ3_S: 1);
        weight = d * sc * table[code], exactly ggml's value.  4.6 bits per weight against the
        file's 1.6-3.4: the price of decoding by one byte shuffle instead of table gathers
        (2.5-4x the speed of a matvec straight from the file's bytes).
``q8``  Q8_0: ``qt`` int8 (T, nb*32*ROW_TILE), byte k = weight k; ``d``.  A lane holds 2
        consecutive bytes of its row at a time (the int16 pairs of the integer dot
        products, see simd.pair_isums): byte k of block b of lane l is at
        ``qt[t, ((b * 16 + k // 2) * ROW_TILE + l) * 2 + k % 2]``.
``q6``  Q6_K: ``qt`` int8 as ``q8`` holding q - 32; ``sl``/``sh``: the scales ``d * sc``
        of weights 0-15 and 16-31; weight = s * (q - 32).
        (Q6_K spends a whole byte per weight: 10 bits per weight in memory against 6.6 in
        the file, but the kernel does no bit assembly and runs at the speed of Q8_0's.)
Per-block scales are float32, or float16 bits (uint16) where that is lossless.
``f32`` F32: ``w`` float32 (rows, cols).
``f16``, ``bf16``  F16, BF16: ``w`` uint16 (rows, cols), the values' bits.
``raw`` every other type: ``raw`` uint8 (rows, row_bytes), decoded by the
        registry's decoder on the fly.

All decoded values are bit-exact with ggml's dequantization: every product of a
float16-derived scale and a small integer is exact in float32, so ``d*q + m``
rounds once, as ggml's expression does (see the ``decode_*`` functions of quant_matvec.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from numba import njit

from .floats import e8m0_half_to_f32, f16_at, f16_bits_to_f32, sext8, u16_at, u32_at
from .iquant_tables import (iq1s_grid_i8, iq2s_grid_u8, iq2xs_grid_u8, iq2xxs_grid_u8, iq3s_grid_u8,
                            iq3xxs_grid_u8, ksigns_iq2xs, kvalues_iq4nl, kvalues_mxfp4)
from .kquants import scale_min_k4
from .threads import get_num_threads, run_all
from .types import GGMLType, as_type, row_bytes

# Legacy 32-weight types: bytes per block, has an fp16 min, has 32 high bits, offset of the symmetric types.
_LEGACY = {GGMLType.Q4_0: (18, False, False, 8), GGMLType.Q4_1: (20, True, False, 0),
           GGMLType.Q5_0: (22, False, True, 16), GGMLType.Q5_1: (24, True, True, 0)}
# Rows per tile (SIMD lanes of the matvec: 4 ymm registers of float32).
ROW_TILE = 32
# Bytes of a tensor's raw data repacked per chunk (see repack's `release`).
CHUNK_BYTES = 16 << 20
# Quant bytes per 32-weight block in each tiled kind.
_QBYTES = {"q2": 8, "q4": 16, "q5": 16, "t4": 16, "t4s": 16, "q6": 32, "q8": 32}
# Per-block float arrays of each tiled kind (stored as float16 bits where lossless).
_SCALES = {"q2": ("d", "dm"), "q4": ("d", "m"), "q5": ("d", "m"), "t4": ("d",), "t4s": ("d",), "q8": ("d",),
           "q6": ("sl", "sh")}

FAST_KINDS = {
    GGMLType.Q4_0: "q4", GGMLType.Q4_1: "q4", GGMLType.Q4_K: "q4",
    GGMLType.Q5_0: "q5", GGMLType.Q5_1: "q5", GGMLType.Q5_K: "q5",
    GGMLType.Q8_0: "q8", GGMLType.Q6_K: "q6", GGMLType.F32: "f32",
    GGMLType.IQ4_NL: "t4", GGMLType.IQ4_XS: "t4", GGMLType.MXFP4: "t4",
    GGMLType.Q2_K: "q2", GGMLType.Q3_K: "q2", GGMLType.TQ2_0: "q2", GGMLType.TQ1_0: "q2",
    GGMLType.F16: "f16", GGMLType.BF16: "bf16",
    GGMLType.IQ1_S: "t4s", GGMLType.IQ1_M: "t4s", GGMLType.IQ2_XXS: "t4s", GGMLType.IQ2_XS: "t4s",
    GGMLType.IQ2_S: "t4s", GGMLType.IQ3_XXS: "t4s", GGMLType.IQ3_S: "t4s",
}
TILED_KINDS = ("q2", "q4", "q5", "t4", "t4s", "q8", "q6")
NIBBLE_KINDS = ("q4", "q5")         # quant_matvec.matvec_nib / decode_nib


def _signed(mags) -> np.ndarray:
    """A lattice table: codes 0-7 the magnitudes, codes 8-15 their negatives (unused codes 0)."""
    pad = [0] * (8 - len(mags))
    return np.array(list(mags) + pad + [-m for m in mags] + pad, np.int8)


# The value table per type of the ``t4`` kind (quant_matvec.matvec_tab / decode_tab) and of the
# lattice kind ``t4s`` (decode_tab16; code = magnitude index + 8 for a negative sign, the grids'
# magnitudes in order; IQ1: 8 (g + delta) for code g + 1 (shift delta +1/8) or g + 9 (-1/8)).
_T_IQ2, _T_IQ3XXS, _T_IQ3S = _signed([8, 25, 43]), _signed([4, 12, 20, 28, 36, 44, 52, 62]), _signed(range(1, 16, 2))
_T_IQ1 = np.array([-7, 1, 9, 0, 0, 0, 0, 0, -9, -1, 7, 0, 0, 0, 0, 0], np.int8)
TABLES = {GGMLType.IQ4_NL: kvalues_iq4nl, GGMLType.IQ4_XS: kvalues_iq4nl, GGMLType.MXFP4: kvalues_mxfp4,
          GGMLType.IQ2_XXS: _T_IQ2, GGMLType.IQ2_XS: _T_IQ2, GGMLType.IQ2_S: _T_IQ2,
          GGMLType.IQ3_XXS: _T_IQ3XXS, GGMLType.IQ3_S: _T_IQ3S, GGMLType.IQ1_S: _T_IQ1, GGMLType.IQ1_M: _T_IQ1}
# The matvec's view of each lattice table (quant_matvec.matvec_tab16): (the values plus the offset
# that makes them non-negative, as uint8; that offset; scales per 16 weights rather than per 32;
# every raised value at most 31).
LATTICE = {t: ((TABLES[t].astype(np.int32) + off).astype(np.uint8), off, per16, off <= 15)
           for t, off, per16 in ((GGMLType.IQ1_S, 9, False), (GGMLType.IQ1_M, 9, True),
                                 (GGMLType.IQ2_XXS, 43, False), (GGMLType.IQ2_XS, 43, True),
                                 (GGMLType.IQ2_S, 43, True), (GGMLType.IQ3_XXS, 62, False),
                                 (GGMLType.IQ3_S, 15, False))}
# Each grid entry as the codes of its magnitudes (rows of 8, or 4 for IQ3): a magnitude m is the
# table entry m // 16 (IQ2), m // 8 (IQ3_XXS), m // 2 (IQ3_S); IQ1: g + 1.
_C_IQ2XXS, _C_IQ2XS, _C_IQ2S = (np.ascontiguousarray(g // 16) for g in (iq2xxs_grid_u8, iq2xs_grid_u8, iq2s_grid_u8))
_C_IQ3XXS, _C_IQ3S = np.ascontiguousarray(iq3xxs_grid_u8 // 8), np.ascontiguousarray(iq3s_grid_u8 // 2)
_C_IQ1 = np.ascontiguousarray((iq1s_grid_i8 + 1).astype(np.uint8))
BYTE_KINDS = ("q8", "q6")           # one byte per weight: quant_matvec.matvec_i8 / decode_i8


@dataclass
class Packed:
    """One weight matrix in its repacked form (see the module docstring)."""
    kind: str
    qtype: GGMLType
    rows: int
    cols: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def tiles(self) -> int:
        return -(-self.rows // ROW_TILE)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


# --------------------------------------------------------------------------- per-type repackers
# Serial nogil Numba loops over the raw rows r0..r1 (raw: (rows, row_bytes) uint8), writing the
# tiled arrays (see the module docstring for the index formulas; R = ROW_TILE).  Field layouts
# are those of ggml-common.h (see the registry's layout strings).


@njit(cache=True, inline="always")
def _nibble_index(b, k, l):
    """Where byte k of block b of lane l lives in a ``q4`` tile (see the module docstring)."""
    return ((b * 4 + k // 4) * ROW_TILE + l) * 4 + k % 4


@njit(cache=True, inline="always")
def _crumb_index(b, k, l):
    """(byte, shift) of weight k (0..31) of block b of lane l in a ``q2`` tile."""
    return ((b * 2 + k // 16) * ROW_TILE + l) * 4 + k % 4, np.int32(2 * ((k % 16) // 4))


@njit(cache=True, inline="always")
def _third_bit_index(b, k, l):
    """(word, bit) of the third bit of weight k (0..31) of block b of lane l in a ``q2`` tile's qb."""
    return (b * ROW_TILE + ((k // 16) * 4 + (k % 16) // 4) * (ROW_TILE // 8) + l // 8,
            np.uint32((l % 8) * 4 + k % 4))


@njit(cache=True, inline="always")
def _fifth_bit_index(b, k, l):
    """(word, bit) of the fifth bit of weight k (0..31) of block b of lane l in a ``q5`` tile's qh."""
    kk = k % 16
    return (b * ROW_TILE + 2 * ((kk // 4) * (ROW_TILE // 8) + l // 8) + k // 16,
            np.uint32((l % 8) * 4 + kk % 4))


@njit(cache=True, nogil=True)
def _put_nibbles(dst, b, l, e):
    """Store weights e[0..31] (values < 16 used) of block b of lane l as nibble bytes."""
    for k in range(16):
        dst[_nibble_index(b, k, l)] = np.uint8((e[k] & 15) | ((e[k + 16] & 15) << 4))


@njit(cache=True, nogil=True)
def _put_fifth_bits(qh, b, l, e):
    """Set the fifth bits (value 16) of weights e[0..31] of block b of lane l in qh (zeroed)."""
    for k in range(32):
        if e[k] & 16:
            w, bit = _fifth_bit_index(b, k, l)
            qh[w] |= np.uint32(1) << bit


@njit(cache=True, inline="always")
def _pair_index(b, k, l):
    """Where byte k of block b of lane l lives in a ``q8``/``q6`` tile (see the module docstring)."""
    return ((b * 16 + k // 2) * ROW_TILE + l) * 2 + k % 2


@njit(cache=True, nogil=True)
def _put_bytes(dst, b, l, e, off):
    """Store weights e[0..31] of block b of lane l as bytes e - off."""
    for k in range(32):
        dst[_pair_index(b, k, l)] = e[k] - off


@njit(cache=True, nogil=True)
def repack_legacy(raw, ts, has_m, has_h, off, qt, qh, d, m, r0, r1):
    """Q4_0 (ts 18), Q4_1 (20), Q5_0 (22), Q5_1 (24): d [m] [qh] qs[16].  off: 8 or 16 for the
    symmetric types (m = -off * d), 0 otherwise."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for b in range(nb):
            o = b * ts
            i = b * R + l
            db = f16_at(src, o)
            d[t, i] = db
            o += 2
            if has_m:
                m[t, i] = f16_at(src, o)
                o += 2
            else:
                m[t, i] = np.float32(-off) * db
            if has_h:
                h = u32_at(src, o)
                o += 4
            for k in range(16):
                q[_nibble_index(b, k, l)] = src[o + k]
            if has_h:
                for k in range(32):
                    if (h >> k) & 1:
                        w, bit = _fifth_bit_index(b, k, l)
                        qh[t, w] |= np.uint32(1) << bit


@njit(cache=True, inline="always")
def _trit(src, o, w):
    """Base-3 digit (0..2) of weight w of the TQ1_0 block at src[o]."""
    if w < 160:
        byte, n = src[o + w % 32], w // 32
    elif w < 240:
        byte, n = src[o + 32 + (w - 160) % 16], (w - 160) // 16
    else:
        byte, n = src[o + 48 + (w - 240) % 4], (w - 240) // 4
    return (((np.int32(byte) * np.int32(3 ** n)) & 255) * 3) >> 8


@njit(cache=True, nogil=True)
def repack_q2(raw, ts, qt, qb, sc, mn, d, dm, r0, r1):
    """Q2_K (ts 84: scales[16], qs[64], d, dmin), Q3_K (110: hmask[32], qs[64], scales[12], d),
    TQ2_0 (66: qs[64], d) and TQ1_0 (54: base-3 digits qs[48] and qh[4], d; see ternary.py):
    block b8 = 4h + k of a super-block is bit pair k of bytes 32h..32h+31 of qs (Q3_K: plus bit
    4h + k of hmask byte l as the third bit)."""
    R = ROW_TILE
    nb = sc.shape[1] // (2 * R)
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for i in range(nb // 8):
            o = ts * i
            if ts == 84:
                dd = f16_at(src, o + 80)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = f16_at(src, o + 82)
                qs = o + 16
            elif ts == 110:
                dd = f16_at(src, o + 108)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = dd
                qs = o + 32
            else:
                dd = f16_at(src, o + ts - 2)
                d[t, i * R + l] = dd
                dm[t, i * R + l] = dd
                qs = o
            for b8 in range(8):
                hh = b8 // 4
                kk = b8 % 4
                b = 8 * i + b8
                for half in range(2):
                    s16 = 8 * hh + 2 * kk + half          # the 16-weight sub-block
                    j = (b * 2 + half) * R + l
                    if ts == 84:
                        sc[t, j] = src[o + s16] & 15
                        mn[t, j] = src[o + s16] >> 4
                    elif ts == 110:
                        g = s16 >> 2
                        low = (np.int32(src[o + 96 + (s16 & 3) + 4 * (g & 1)]) >> (4 * (g >> 1))) & 15
                        high = (np.int32(src[o + 104 + (s16 & 3)]) >> (2 * g)) & 3
                        sc[t, j] = (low | (high << 4)) - 32
                        mn[t, j] = 4 * ((low | (high << 4)) - 32)
                    else:
                        sc[t, j] = 1
                        mn[t, j] = 1
                for k in range(32):
                    if ts == 54:
                        u = _trit(src, o, 32 * b8 + k)
                    else:
                        u = (np.int32(src[qs + 32 * hh + k]) >> (2 * kk)) & 3
                    byte, shift = _crumb_index(b, k, l)
                    q[byte] |= np.uint8(u << shift)
                    if ts == 110 and (src[o + k] >> b8) & 1:
                        w, bit = _third_bit_index(b, k, l)
                        qb[t, w] |= np.uint32(1) << bit


@njit(cache=True, nogil=True)
def repack_t4(raw, ts, qt, d, r0, r1):
    """IQ4_NL (ts 18: d fp16, qs[16]), MXFP4 (17: e8m0, qs[16]) and IQ4_XS (136: d, scales_h,
    scales_l[4], qs[128] per 256 weights): the index nibbles as they are, and the scale of each
    32-weight block."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for b in range(nb):
            if ts == 136:
                o = 136 * (b // 8)
                j = b % 8
                ls = ((np.int32(src[o + 4 + j // 2]) >> (4 * (j % 2))) & 15) | \
                    (((np.int32(u16_at(src, o + 2)) >> (2 * j)) & 3) << 4)
                d[t, b * R + l] = f16_at(src, o) * np.float32(ls - 32)
                qo = o + 8 + 16 * j
            else:
                o = ts * b
                d[t, b * R + l] = f16_at(src, o) if ts == 18 else e8m0_half_to_f32(src[o])
                qo = o + ts - 16
            for k in range(16):
                q[_nibble_index(b, k, l)] = src[qo + k]


@njit(cache=True, inline="always")
def _signed_codes(c, w, codes, signs):
    """Weights w.. of a lattice block: grid codes (len(codes) of them) with sign bits j -> +8."""
    for j in range(codes.size):
        c[w + j] = codes[j] | (((np.int32(signs) >> j) & 1) << 3)


@njit(cache=True, nogil=True)
def _lattice_block(src, o, ts, c, s16):
    """The 256-weight lattice block at src[o] (its type told by ts, its size in bytes) -> codes c
    (256,) into the type's TABLES entry, odd sub-scales s16 (16,) (2 s + 1, one per 16 weights)
    and the returned super-block scale: weight = scale * s16 * TABLES[c], exactly ggml's value."""
    for ib in range(8):
        w = 32 * ib
        if ts == 66:                                    # IQ2_XXS
            qo = o + 2 + 8 * ib
            aux = np.int32(u32_at(src, qo + 4))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((aux >> 28) & 15) + 1
            for l in range(4):
                _signed_codes(c, w + 8 * l, _C_IQ2XXS[src[qo + l]], ksigns_iq2xs[(aux >> (7 * l)) & 127])
        elif ts == 74:                                  # IQ2_XS
            sc = np.int32(src[o + 66 + ib])
            s16[2 * ib] = 2 * (sc & 15) + 1
            s16[2 * ib + 1] = 2 * (sc >> 4) + 1
            for l in range(4):
                q = np.int32(u16_at(src, o + 2 + 2 * (4 * ib + l)))
                _signed_codes(c, w + 8 * l, _C_IQ2XS[q & 511], ksigns_iq2xs[q >> 9])
        elif ts == 82:                                  # IQ2_S
            sc = np.int32(src[o + 74 + ib])
            s16[2 * ib] = 2 * (sc & 15) + 1
            s16[2 * ib + 1] = 2 * (sc >> 4) + 1
            qh = np.int32(src[o + 66 + ib])
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                _signed_codes(c, w + 8 * l, _C_IQ2S[idx], src[o + 34 + 4 * ib + l])
        elif ts == 98:                                  # IQ3_XXS
            aux = np.int32(u32_at(src, o + 66 + 4 * ib))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((aux >> 28) & 15) + 1
            qo = o + 2 + 8 * ib
            for l in range(4):
                signs = np.int32(ksigns_iq2xs[(aux >> (7 * l)) & 127])
                _signed_codes(c, w + 8 * l, _C_IQ3XXS[src[qo + 2 * l]], signs)
                _signed_codes(c, w + 8 * l + 4, _C_IQ3XXS[src[qo + 2 * l + 1]], signs >> 4)
        elif ts == 110:                                 # IQ3_S
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((np.int32(src[o + 106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1
            qh = np.int32(src[o + 66 + ib])
            qo = o + 2 + 8 * ib
            for l in range(4):
                signs = np.int32(src[o + 74 + 4 * ib + l])
                i1 = np.int32(src[qo + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                i2 = np.int32(src[qo + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                _signed_codes(c, w + 8 * l, _C_IQ3S[i1], signs)
                _signed_codes(c, w + 8 * l + 4, _C_IQ3S[i2], signs >> 4)
        elif ts == 50:                                  # IQ1_S: the sign bit is the shift's
            qh = np.int32(u16_at(src, o + 34 + 2 * ib))
            s16[2 * ib] = s16[2 * ib + 1] = 2 * ((qh >> 12) & 7) + 1
            for l in range(4):
                idx = np.int32(src[o + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                _signed_codes(c, w + 8 * l, _C_IQ1[idx], -((qh >> 15) & 1))
        else:                                           # IQ1_M (56)
            sc = np.int32(u16_at(src, o + 48 + 2 * (ib // 2)))
            sh = 6 * (ib % 2)
            s16[2 * ib] = 2 * ((sc >> sh) & 7) + 1
            s16[2 * ib + 1] = 2 * ((sc >> (sh + 3)) & 7) + 1
            for l in range(4):
                qh = np.int32(src[o + 32 + 2 * ib + l // 2]) >> (4 * (l % 2))
                idx = np.int32(src[o + 4 * ib + l]) | ((qh & 7) << 8)
                _signed_codes(c, w + 8 * l, _C_IQ1[idx], -((qh >> 3) & 1))
    if ts == 56:
        s0, s1 = u16_at(src, o + 48), u16_at(src, o + 50)
        s2, s3 = u16_at(src, o + 52), u16_at(src, o + 54)
        return f16_bits_to_f32((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)) * np.float32(0.125)
    return f16_at(src, o) * np.float32(1.0 if ts == 110 else 0.25 if ts == 98 else 0.125)


@njit(cache=True, nogil=True)
def repack_t4s(raw, ts, qt, sc, d, r0, r1):
    """The lattice i-quants (ts: bytes per 256 weights, see _lattice_block): 4-bit codes, the
    sub-scales per 16 weights and the scale per 256."""
    R = ROW_TILE
    ns = d.shape[1] // R
    c = np.empty(256, np.uint8)
    s16 = np.empty(16, np.int32)
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for i in range(ns):
            d[t, i * R + l] = _lattice_block(src, ts * i, ts, c, s16)
            for j in range(8):
                b = 8 * i + j
                sc[t, 2 * b * R + l] = s16[2 * j]
                sc[t, (2 * b + 1) * R + l] = s16[2 * j + 1]
                for k in range(16):
                    q[_nibble_index(b, k, l)] = c[32 * j + k] | (c[32 * j + 16 + k] << 4)


@njit(cache=True, nogil=True)
def repack_q8_0(raw, qt, d, r0, r1):
    """Q8_0: d (fp16), qs int8[32]."""
    R = ROW_TILE
    nb = d.shape[1] // R
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for b in range(nb):
            o = b * 34
            d[t, b * R + l] = f16_at(src, o)
            for k in range(32):
                q[_pair_index(b, k, l)] = np.int8(sext8(src[o + 2 + k]))


@njit(cache=True, nogil=True)
def repack_k45(raw, five, qt, qh, d, m, r0, r1):
    """Q4_K (144 bytes: d, dmin, scales[12], qs[128]) and Q5_K (176: d, dmin, scales[12], qh[32], qs[128])
    -> 32-weight sub-blocks with scale d*sc and offset -dmin*min."""
    R = ROW_TILE
    nb = d.shape[1] // R
    ts = 176 if five else 144
    qs_off = 48 if five else 16
    e = np.empty(32, np.int32)
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for i in range(nb // 8):
            o = i * ts
            dd = f16_at(src, o)
            dmin = f16_at(src, o + 2)
            for j in range(8):
                sc, mn = scale_min_k4(src, o + 4, j)
                b = 8 * i + j
                d[t, b * R + l] = dd * np.float32(sc)
                m[t, b * R + l] = -(dmin * np.float32(mn))
                c = j // 2
                sh = 4 * (j % 2)
                for k in range(32):
                    e[k] = (src[o + qs_off + 32 * c + k] >> sh) & 15
                    if five:
                        e[k] |= ((src[o + 16 + k] >> j) & 1) << 4
                _put_nibbles(q, b, l, e)
                if five:
                    _put_fifth_bits(qh[t], b, l, e)


@njit(cache=True, nogil=True)
def repack_q6_k(raw, qt, sl, sh, r0, r1):
    """Q6_K (210 bytes: ql[128], qh[64], scales int8[16], d) -> bytes q - 32, per-16 scales d * sc."""
    R = ROW_TILE
    nb = sl.shape[1] // R
    e = np.empty(32, np.int32)
    for r in range(r0, r1):
        src = raw[r]
        t = r // R
        l = r % R
        q = qt[t]
        for i in range(nb // 8):
            o = i * 210
            dd = f16_at(src, o + 208)
            for b8 in range(8):              # 32-weight block b8 of the super-block
                half = b8 // 4               # which 128-weight half
                kk = b8 % 4                  # q1..q4 of ggml's loop
                ql = o + 64 * half + (32 if kk % 2 else 0)
                qhh = o + 128 + 32 * half
                shift_l = 4 if kk >= 2 else 0
                for k in range(32):
                    lo = (src[ql + k] >> shift_l) & 15
                    top = (src[qhh + k] >> (2 * kk)) & 3
                    e[k] = lo | (top << 4)
                b = 8 * i + b8
                _put_bytes(q, b, l, e, 32)
                i2 = b * R + l
                isc = o + 192 + 8 * half + 2 * kk
                sl[t, i2] = dd * np.float32(sext8(src[isc]))
                sh[t, i2] = dd * np.float32(sext8(src[isc + 1]))


# --------------------------------------------------------------------------- tiles <-> rows (numpy)


def _group(p: "Packed", key: str) -> int:
    """Bytes per lane group of a tiled array: 2 for the byte kinds' quants, 4 for the other
    tiled kinds' quants (nibbles), else 1."""
    if key != "qt":
        return 1
    return 2 if p.kind in BYTE_KINDS else 4


def _bit_map(key: str) -> tuple[np.ndarray, np.ndarray]:
    """(word, bit) of the extra bit of weight k of lane l in block 0, both (32 k, ROW_TILE l): the
    fifth bits (``qh``) or the third bits (``qb``)."""
    index = _fifth_bit_index if key == "qh" else _third_bit_index
    return index.py_func(0, np.arange(32)[:, None], np.arange(ROW_TILE)[None, :])


def _untile_bits(a: np.ndarray, key: str, rows: int, nb: int) -> np.ndarray:
    """A bit plane (T, nb*R) -> the bits as row-major (rows, nb, 32) uint8."""
    word, bit = _bit_map(key)
    T = a.shape[0]
    v = (a.reshape(T, nb, ROW_TILE)[:, :, word] >> bit) & 1     # (T, nb, 32 k, R l)
    return v.astype(np.uint8).transpose(0, 3, 1, 2).reshape(T * ROW_TILE, nb, 32)[:rows]


def _tile_bits(bits: np.ndarray, key: str) -> np.ndarray:
    """Row-major bits (rows, nb, 32) -> a bit plane (T, nb*R) (inverse of _untile_bits)."""
    rows, nb, _ = bits.shape
    T = -(-rows // ROW_TILE)
    full = np.zeros((T * ROW_TILE, nb, 32), np.uint32)
    full[:rows] = bits
    full = full.reshape(T, ROW_TILE, nb, 32)
    word, bit = _bit_map(key)
    out = np.zeros((T, nb, ROW_TILE), np.uint32)
    for k in range(32):
        for l in range(ROW_TILE):
            out[:, :, word[k, l]] |= full[:, l, :, k] << np.uint32(bit[k, l])
    return out.reshape(T, nb * ROW_TILE)


def _untile(a: np.ndarray, rows: int, nb: int, g: int = 1) -> np.ndarray:
    """Tiled (T, nb*K*R) -> row-major (rows, nb, K) copy (K = 1 for per-block arrays); each
    lane holds g consecutive bytes of a block at a time (see the module docstring)."""
    T = a.shape[0]
    K = a.shape[1] // (nb * ROW_TILE)
    return (a.reshape(T, nb, K // g, ROW_TILE, g).transpose(0, 3, 1, 2, 4)
            .reshape(T * ROW_TILE, nb, K)[:rows])


def _tile(a: np.ndarray, g: int = 1) -> np.ndarray:
    """Row-major (rows, nb, K) -> tiled (T, nb*K*R), the padding rows zero (inverse of _untile)."""
    rows, nb, K = a.shape
    T = -(-rows // ROW_TILE)
    full = np.zeros((T * ROW_TILE, nb, K), a.dtype)
    full[:rows] = a
    out = full.reshape(T, ROW_TILE, nb, K // g, g).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(out).reshape(T, nb * K * ROW_TILE)


# --------------------------------------------------------------------------- entry point


def as_raw_rows(data: np.ndarray, qtype, shape) -> np.ndarray:
    """Any array holding a tensor's bytes -> (rows, row_bytes) uint8 view, validated."""
    t = as_type(qtype)
    rows, cols = (int(s) for s in shape)
    rb = row_bytes(t, cols)
    arr = np.asarray(data)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    flat = arr.reshape(-1).view(np.uint8)
    if flat.size != rows * rb:
        raise ValueError(f"{t.name} weight of shape {(rows, cols)} needs {rows * rb} bytes "
                         f"({rb} per row), got {flat.size}")
    flat = flat.view()
    flat.flags.writeable = False     # one compiled repacker for file-backed and in-memory data
    return flat.reshape(rows, rb)


def repack(data: np.ndarray, qtype, shape, release=None) -> Packed:
    """Repack a (rows, cols) tensor's raw bytes into its fast layout (a new copy; `data` is only read).

    Tiled kinds are repacked in chunks of about CHUNK_BYTES of `data`; ``release(r0, r1)``, if
    given, is called once rows r0..r1-1 have been copied (a loader drops their file pages, so a
    tensor's file pages and its copy are never both resident in full)."""
    t = as_type(qtype)
    rows, cols = (int(s) for s in shape)
    raw = as_raw_rows(data, t, (rows, cols))
    kind = FAST_KINDS.get(t, "raw")
    p = Packed(kind, t, rows, cols)
    if kind == "raw":
        p.arrays["raw"] = np.array(raw, copy=True)
        return p
    if kind == "f32":
        p.arrays["w"] = np.array(raw.view(np.float32), copy=True)
        return p
    if kind in ("f16", "bf16"):
        p.arrays["w"] = np.array(raw.view(np.uint16), copy=True)
        return p

    nb = cols // 32
    T = p.tiles
    A = p.arrays
    A["qt"] = np.zeros((T, _QBYTES[kind] * nb * ROW_TILE), np.int8 if kind in ("q8", "q6") else np.uint8)
    if kind in NIBBLE_KINDS:
        A["qh"] = np.zeros((T, nb * ROW_TILE) if kind == "q5" else (1, 0), np.uint32)
    if kind == "q2":
        A["qb"] = np.zeros((T, nb * ROW_TILE) if t == GGMLType.Q3_K else (1, 0), np.uint32)
    if kind in ("q2", "t4s"):
        A["sc"] = np.zeros((T, 2 * nb * ROW_TILE), np.int8)
    if kind == "q2":
        A["mn"] = np.zeros((T, 2 * nb * ROW_TILE), np.int8)
    per_block = nb // 8 if kind in ("q2", "t4s") else nb          # q2's d, dm and t4s' d: one per 256 weights
    for k in _SCALES[kind]:
        A[k] = np.zeros((T, per_block * ROW_TILE), np.float32)

    def work(r0, r1):
        if kind == "q8":
            repack_q8_0(raw, A["qt"], A["d"], r0, r1)
        elif kind == "q2":
            repack_q2(raw, row_bytes(t, 256), A["qt"], A["qb"], A["sc"], A["mn"], A["d"], A["dm"], r0, r1)
        elif kind == "t4":
            repack_t4(raw, row_bytes(t, 256 if t == GGMLType.IQ4_XS else 32), A["qt"], A["d"], r0, r1)
        elif kind == "t4s":
            repack_t4s(raw, row_bytes(t, 256), A["qt"], A["sc"], A["d"], r0, r1)
        elif kind == "q6":
            repack_q6_k(raw, A["qt"], A["sl"], A["sh"], r0, r1)
        elif t in (GGMLType.Q4_K, GGMLType.Q5_K):
            repack_k45(raw, t == GGMLType.Q5_K, A["qt"], A["qh"], A["d"], A["m"], r0, r1)
        else:
            ts, has_m, has_h, off = _LEGACY[t]
            repack_legacy(raw, ts, has_m, has_h, off, A["qt"], A["qh"], A["d"], A["m"], r0, r1)

    # chunks of whole tiles, each split over the worker threads (the loops are nogil)
    step = max(1, CHUNK_BYTES // max(1, raw.shape[1] * ROW_TILE)) * ROW_TILE
    for c0 in range(0, rows, step):
        c1 = min(rows, c0 + step)
        tiles = -(-(c1 - c0) // ROW_TILE)
        parts = max(1, min(get_num_threads(), (c1 - c0) // 256))
        bounds = (c0 + np.linspace(0, tiles, parts + 1).astype(np.int64) * ROW_TILE).clip(0, c1)
        run_all(work, [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])])
        if release is not None:
            release(c0, c1)
    _halve_scales(p)
    return p


def _halve_scales(p: Packed) -> None:
    """Store the per-block scales (_SCALES) as float16 bits (uint16) when that is lossless
    (always for the legacy types' own fp16 fields, unless -8d / -16d overflows): fewer
    bytes per token to stream.
    The kernels read either form (quant_matvec._scale)."""
    keys = _SCALES[p.kind]
    halves = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for k in keys:
            a = p.arrays[k]
            h = a.astype(np.float16)
            if not np.array_equal(h.astype(np.float32), a):     # inexact, overflow or NaN
                return
            halves[k] = h.view(np.uint16)
    p.arrays.update(halves)


def _as_f32_scales(a: np.ndarray) -> np.ndarray:
    """Per-block scales in float32 whichever way they are stored."""
    return a.view(np.float16).astype(np.float32) if a.dtype == np.uint16 else a


def concat(packs: list[Packed]) -> Packed:
    """Stack the rows of several packed weights of one type and row length (fused QKV, gate/up)."""
    first = packs[0]
    for p in packs[1:]:
        if p.qtype != first.qtype or p.cols != first.cols:
            raise ValueError(f"cannot stack {p.qtype.name} x{p.cols} rows onto {first.qtype.name} x{first.cols}")
    out = Packed(first.kind, first.qtype, sum(p.rows for p in packs), first.cols)
    tiled = out.kind in TILED_KINDS
    aligned = all(p.rows % ROW_TILE == 0 for p in packs[:-1])
    nb = first.cols // 32
    for k in first.arrays:
        parts = [p.arrays[k] for p in packs]
        if len({a.dtype for a in parts}) > 1:       # some parts keep float32 scales: all do
            parts = [_as_f32_scales(a) for a in parts]
        if k in ("qh", "qb") and parts[0].shape[1] == 0:    # no extra bits: the (1, 0) stand-in
            out.arrays[k] = parts[0]
        elif k in ("qh", "qb") and not aligned:
            out.arrays[k] = _tile_bits(np.concatenate([_untile_bits(a, k, p.rows, nb) for a, p in zip(parts, packs)]), k)
        elif tiled and not aligned:     # re-tile: row-major copies, stacked, tiled again
            g = _group(first, k)
            units = nb if parts[0].shape[1] >= nb * ROW_TILE else parts[0].shape[1] // ROW_TILE   # q2's d, dm
            out.arrays[k] = _tile(np.concatenate([_untile(a, p.rows, units, g) for a, p in zip(parts, packs)]), g)
        else:                           # whole tiles (or plain rows) stack as they are
            out.arrays[k] = np.concatenate(parts, axis=0)
    return out
