"""Load-time repacking of GGUF weight tensors into SIMD-friendly layouts.

A GGUF block interleaves its scales with its quants, and a kernel that walks it
block by block cannot be vectorized by LLVM.  At load time (once; the file stays
untouched) every row is split into separate streams:

* scale and offset per 32-weight block, as float32 ``(rows, nb)`` arrays, so that
  a weight is ``w = d * q + m`` (Q4_0 and Q5_0 get ``m = -8 d`` and ``-16 d``,
  the k-quants ``d * sc`` and ``-dmin * min`` of their 32-weight sub-blocks);
* the quants, *block-transposed* within each row: byte ``k`` of every block is
  stored contiguously, i.e. ``qt[row, k * nb + b]`` is byte ``k`` of block ``b``.

Block-transposing is what makes the matvec fast: the per-block scale becomes a
contiguous vector over eight blocks and LLVM vectorizes *across blocks* (ymm
lanes = 8 blocks), with no horizontal sum inside the loop.

Packed kinds (``Packed.kind``) and their arrays (nb = cols / 32):

``q4``  Q4_0, Q4_1, Q4_K: ``qt`` uint8 (rows, 16*nb): byte k of a block holds
        weight k (low nibble) and weight k+16 (high nibble); ``d``, ``m`` float32.
``q5``  Q5_0, Q5_1, Q5_K: as ``q4`` plus ``qh`` int32 (rows, nb): bit j is the
        5th bit of weight j.
``q8``  Q8_0: ``qt`` int8 (rows, 32*nb), byte k = weight k; ``d`` float32.
``q6``  Q6_K: ``qt`` as ``q4`` (low 4 bits), ``hl``/``hh`` int32 (rows, nb): bits
        2j..2j+1 are the top 2 bits of weight j (hl) or j+16 (hh); ``sl``/``sh``
        float32 (rows, nb): the scales ``d * sc`` of weights 0-15 and 16-31;
        weight = s * (q - 32).
``f32`` F32: ``w`` float32 (rows, cols).
``raw`` every other type: ``raw`` uint8 (rows, row_bytes), decoded by the
        registry's decoder on the fly.

All decoded values are bit-exact with ggml's dequantization: every product of a
float16-derived scale and a small integer is exact in float32, so ``d*q + m``
rounds once, as ggml's expression does (see ``decode_rows`` in matvec.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .types import GGMLType, as_type, row_bytes

# Rows repacked per numpy pass (bounds the load-time temporaries to a few MB).
_CHUNK_ROWS = 2048
# Spare zeroed elements after every packed array (>= 7 blocks of over-read, see _padded).
_SLACK = 64

FAST_KINDS = {
    GGMLType.Q4_0: "q4", GGMLType.Q4_1: "q4", GGMLType.Q4_K: "q4",
    GGMLType.Q5_0: "q5", GGMLType.Q5_1: "q5", GGMLType.Q5_K: "q5",
    GGMLType.Q8_0: "q8", GGMLType.Q6_K: "q6", GGMLType.F32: "f32",
}


@dataclass
class Packed:
    """One weight matrix in its repacked form (see the module docstring)."""
    kind: str
    qtype: GGMLType
    rows: int
    cols: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Blocks per row the matvec loops over: nb rounded up to a multiple of 8 (see _padded).
    nbv: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


# --------------------------------------------------------------------------- field readers


def _padded(rows: int, width: int, dtype) -> np.ndarray:
    """Zeroed (rows, width) array followed by _SLACK spare elements in the same allocation.

    The matvec kernels run their block loop to a multiple of 8 blocks (so that LLVM's
    8-wide vector loop has no scalar remainder) with the activation padded by zeros;
    the extra reads run into the next row or, after the last row, into this slack.
    """
    flat = np.zeros(rows * width + _SLACK, dtype)
    return flat[:rows * width].reshape(rows, width)


def _vector_blocks(p: "Packed") -> int:
    """nb rounded up to 8 when every scale is finite (0 * finite = 0 in the padding), else nb."""
    nb = p.cols // 32
    nbv = -(-nb // 8) * 8
    for k in ("d", "m", "sl", "sh"):
        if k in p.arrays and not np.isfinite(p.arrays[k]).all():
            return nb
    return nbv


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    """(n, row_bytes) uint8 -> (n, nb, block_bytes) view."""
    n = raw.shape[0]
    return raw.reshape(n, -1, block_bytes)


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """float16 field at byte offset `off` of every block -> float32 (exact)."""
    return np.ascontiguousarray(b[..., off:off + 2]).view(np.float16)[..., 0].astype(np.float32)


def _u32(b: np.ndarray, off: int) -> np.ndarray:
    return np.ascontiguousarray(b[..., off:off + 4]).view("<u4")[..., 0]


def _k4_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte packed 6-bit scales (..., 12) -> (scale, min), each (..., 8) uint8."""
    s = sc.astype(np.uint8)
    lo_sc = s[..., 0:4] & 63
    lo_m = s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    hi_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return np.concatenate([lo_sc, hi_sc], -1), np.concatenate([lo_m, hi_m], -1)


# --------------------------------------------------------------------------- per type: raw -> (elements, d, m)
# Each returns the integer quants as uint8 (n, nb32, 32) in natural weight order, and
# per-32 block float32 (n, nb32) scale d and offset m with weight = d * q + m.


def _q4_0(raw):
    b = _blocks(raw, 18)
    d = _f16(b, 0)
    qs = b[..., 2:18]
    e = np.concatenate([qs & 0xF, qs >> 4], -1)
    return e, d, np.float32(-8) * d


def _q4_1(raw):
    b = _blocks(raw, 20)
    qs = b[..., 4:20]
    return np.concatenate([qs & 0xF, qs >> 4], -1), _f16(b, 0), _f16(b, 2)


def _q5_0(raw):
    b = _blocks(raw, 22)
    d = _f16(b, 0)
    qh = _u32(b, 2)
    qs = b[..., 6:22]
    e = np.concatenate([qs & 0xF, qs >> 4], -1)
    bits = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    return e | (bits << 4), d, np.float32(-16) * d


def _q5_1(raw):
    b = _blocks(raw, 24)
    qh = _u32(b, 4)
    qs = b[..., 8:24]
    e = np.concatenate([qs & 0xF, qs >> 4], -1)
    bits = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    return e | (bits << 4), _f16(b, 0), _f16(b, 2)


def _kquant_scales(b):
    d = _f16(b, 0)
    dmin = _f16(b, 2)
    sc, mn = _k4_scales(b[..., 4:16])
    n, nsb = d.shape
    ds = (d[..., None] * sc.astype(np.float32)).reshape(n, nsb * 8)   # exact: 11 x 6 bits
    ms = (-(dmin[..., None] * mn.astype(np.float32))).reshape(n, nsb * 8)
    return ds, ms


def _q4_k(raw):
    b = _blocks(raw, 144)
    ds, ms = _kquant_scales(b)
    qs = b[..., 16:144].reshape(b.shape[0], -1, 4, 32)          # 4 chunks of 32 bytes
    e = np.stack([qs & 0xF, qs >> 4], axis=3)                    # (n, nsb, 4, 2, 32): sub-block 2c, 2c+1
    return e.reshape(b.shape[0], -1, 32), ds, ms


def _q5_k(raw):
    b = _blocks(raw, 176)
    ds, ms = _kquant_scales(b)
    n = b.shape[0]
    qh = b[..., 16:48]                                            # (n, nsb, 32)
    qs = b[..., 48:176].reshape(n, -1, 4, 32)
    e = np.stack([qs & 0xF, qs >> 4], axis=3)                    # (n, nsb, 4, 2, 32)
    shifts = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)       # sub-block 2c+h uses bit 2c+h
    hb = (qh[:, :, None, None, :] >> shifts) & 1
    return (e | (hb << 4)).reshape(n, -1, 32), ds, ms


def _q6_k(raw):
    """Returns (elements 0..63 as uint8 (n, nb32, 32), per-16 scales float32 (n, nb32, 2))."""
    b = _blocks(raw, 210)
    n = b.shape[0]
    ql = b[..., 0:128].reshape(n, -1, 2, 64)                     # two 128-weight halves
    qh = b[..., 128:192].reshape(n, -1, 2, 32)
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)   # (n, nsb, 16)
    d = _f16(b, 208)
    lo = ql[..., 0:32]
    hi = ql[..., 32:64]
    q1 = (lo & 0xF) | (((qh >> 0) & 3) << 4)
    q2 = (hi & 0xF) | (((qh >> 2) & 3) << 4)
    q3 = (lo >> 4) | (((qh >> 4) & 3) << 4)
    q4 = (hi >> 4) | (((qh >> 6) & 3) << 4)
    e = np.stack([q1, q2, q3, q4], axis=3)                       # (n, nsb, 2, 4, 32): weights n*128 + k*32 + l
    s = d[..., None] * sc                                        # exact: 11 x 8 bits
    return e.reshape(n, -1, 32), s.reshape(n, -1, 2)


_ELEMENTS = {GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q4_K: _q4_k,
             GGMLType.Q5_0: _q5_0, GGMLType.Q5_1: _q5_1, GGMLType.Q5_K: _q5_k}


def _transpose_nibbles(e: np.ndarray) -> np.ndarray:
    """(n, nb, 32) values < 16 -> block-transposed nibble bytes (n, 16 * nb)."""
    low = e[..., 0:16] & 0xF
    high = e[..., 16:32] & 0xF
    byte = (low | (high << 4)).astype(np.uint8)                  # (n, nb, 16)
    return byte.transpose(0, 2, 1).reshape(e.shape[0], -1)


def _bits(e: np.ndarray, shift: int, width: int, lo: int, hi: int) -> np.ndarray:
    """Pack field (e >> shift) & mask of weights lo..hi-1 of each block into one int32 per block."""
    mask = (1 << width) - 1
    v = ((e[..., lo:hi].astype(np.uint32) >> shift) & mask)
    pos = (np.arange(hi - lo, dtype=np.uint32) * width)
    return np.bitwise_or.reduce(v << pos, axis=-1).view(np.int32)


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
    return flat.reshape(rows, rb)


def repack(data: np.ndarray, qtype, shape) -> Packed:
    """Repack a (rows, cols) tensor's raw bytes into its fast layout (a new copy; `data` is only read)."""
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

    nb = cols // 32
    A = p.arrays
    A["qt"] = _padded(rows, (32 if kind == "q8" else 16) * nb, np.int8 if kind == "q8" else np.uint8)
    if kind == "q6":
        for k in ("hl", "hh"):
            A[k] = _padded(rows, nb, np.int32)
        for k in ("sl", "sh"):
            A[k] = _padded(rows, nb, np.float32)
    else:
        A["d"] = _padded(rows, nb, np.float32)
        if kind in ("q4", "q5"):
            A["m"] = _padded(rows, nb, np.float32)
        if kind == "q5":
            A["qh"] = _padded(rows, nb, np.int32)

    for r0 in range(0, rows, _CHUNK_ROWS):
        r1 = min(rows, r0 + _CHUNK_ROWS)
        chunk = raw[r0:r1]
        n = r1 - r0
        if kind == "q8":
            b = _blocks(chunk, 34)
            A["d"][r0:r1] = _f16(b, 0)
            q = np.ascontiguousarray(b[..., 2:34]).view(np.int8)           # (n, nb, 32)
            A["qt"][r0:r1] = q.transpose(0, 2, 1).reshape(n, -1)
        elif kind == "q6":
            e, s = _q6_k(chunk)
            A["qt"][r0:r1] = _transpose_nibbles(e)
            A["hl"][r0:r1] = _bits(e, 4, 2, 0, 16)
            A["hh"][r0:r1] = _bits(e, 4, 2, 16, 32)
            A["sl"][r0:r1] = s[..., 0]
            A["sh"][r0:r1] = s[..., 1]
        else:
            e, d, m = _ELEMENTS[t](chunk)
            A["qt"][r0:r1] = _transpose_nibbles(e)
            A["d"][r0:r1] = d
            A["m"][r0:r1] = m
            if kind == "q5":
                A["qh"][r0:r1] = _bits(e, 4, 1, 0, 32)
    p.nbv = _vector_blocks(p)
    return p


def concat(packs: list[Packed]) -> Packed:
    """Stack the rows of several packed weights of one type and row length (fused QKV, gate/up)."""
    first = packs[0]
    for p in packs[1:]:
        if p.qtype != first.qtype or p.cols != first.cols:
            raise ValueError(f"cannot stack {p.qtype.name} x{p.cols} rows onto {first.qtype.name} x{first.cols}")
    out = Packed(first.kind, first.qtype, sum(p.rows for p in packs), first.cols)
    for k, a in first.arrays.items():
        dst = _padded(out.rows, a.shape[1], a.dtype) if out.kind not in ("raw", "f32") else \
            np.empty((out.rows, a.shape[1]), a.dtype)
        np.concatenate([p.arrays[k] for p in packs], axis=0, out=dst)
        out.arrays[k] = dst
    out.nbv = min(p.nbv for p in packs)
    return out
