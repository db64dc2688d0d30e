"""Packed kinds: the in-memory layouts a weight matrix is repacked into at load, one module each.

A GGUF block interleaves its scales with its quants, which no SIMD loop walks well; at load a
matrix is copied once into the layout of its *kind*, which the kind's matvec streams.  Each
kind module holds everything about its layout: the layout itself (a comment: array, bytes,
meaning), its index helpers, the repacker of each GGML type it takes, the exact row decoder, the
K-major tile decoder of the prompt matmul where it has one, the matvec and its integer sums
(AVX2 IR with a portable loop beside it).  It registers one ``Kind`` object, naming the GGML
types it takes; ``kernels.weight.Weight`` only delegates to that object.

=========  ==========================================================  ===================
kind       types                                                       module
=========  ==========================================================  ===================
``q4``     Q4_0, Q4_1 as ``q4m`` (``q5``, ``q5m``: Q5_0, Q5_1, a fifth bit) ``nibble``
``q4k``    Q4_K (``q5k``: Q5_K), integer sub-scales                    ``nibble``
``q2``     Q2_K, Q3_K (a third bit), TQ2_0, TQ1_0                      ``crumb``
``t4``     IQ4_NL, MXFP4 (4-bit indices into a value table; ``t4x``:  ``table``
           IQ4_XS, integer block scales)
``t4s``    IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S        ``lattice``
``q8``     Q8_0 (``q6``: Q6_K as a 4-bit and a 2-bit plane)            ``byte``
``f32``    F32, F16, BF16 (their own values)                           ``plain``
``raw``    every other type: the file's bytes, the type's decoder      ``raw``
=========  ==========================================================  ===================

The tiled kinds share their row tiles, scale storage, activation rounding, chunked repacking
and stacking (``tiled``); ``kernels.simd`` holds what their AVX2 IR shares.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..simd import SIMD_BEST
from ..types import GGMLType


@dataclass
class Packed:
    """One weight matrix in its kind's layout: the kind's named arrays (see its module)."""
    kind: "Kind"
    qtype: GGMLType
    rows: int
    cols: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class Kind:
    """A packed layout and its kernels.  Subclasses override what their layout does differently.

    ``types`` maps each GGML type that repacks into the kind to what the kind needs to know of
    it (its repacker's parameters, value table, decoding offset)."""
    name = ""
    types: dict = {}
    # decode_T(packed, t0, t1, out): row tiles t0..t1-1 decoded exactly into out (cols, >= 32 (t1 - t0))
    # float32, K-major (out[k, 32 (t - t0) + l] = weight k of row 32 t + l), where the host has
    # the instructions it is written with; None elsewhere and for kinds without one.
    decode_T: Callable | None = None
    # small_matmul(packed, X, out): out (n, rows) = X (n, cols) W^T for a small batch (kernels.quant_matmul:
    # SMALL_BATCH_MAX rows at most), each weight block decoded once into a float32 scratch block and
    # applied to all n rows by fused multiply-adds on the exact float32 activations, the worker
    # threads splitting the row tiles (tiled.fma_rows); None where the kind has no block decoder.
    small_matmul: Callable | None = None
    # The kind's multi-row integer product (prompt_rows) beats the tiles + BLAS on a prompt batch on
    # this host: what a prompt that accepts rounded activations takes (Weight.matmul's rounded).
    rows_prompt: bool = False

    def __repr__(self) -> str:
        return f"Kind({self.name}: {', '.join(t.name for t in self.types)})"

    def pack(self, raw: np.ndarray, t: GGMLType, cols: int, release=None, chunk_bytes: int = 1 << 24) -> Packed:
        """raw (rows, row_bytes) uint8 of type t, rows of cols weights -> a new Packed copy (raw is
        only read).  A kind that copies in chunks of about chunk_bytes of raw calls release(r0, r1),
        if given, once rows r0..r1-1 have been copied."""
        raise NotImplementedError

    def pack_stack(self, parts: list, t: GGMLType, cols: int, chunk_bytes: int = 1 << 24) -> Packed:
        """Several tensors of type t and row length cols stacked row-wise into one new Packed (fused
        Q|K|V, gate|up).  parts: [(raw, release)], each as ``pack`` takes them.  Default: each part
        packed, then ``concat``."""
        packs = [self.pack(raw, t, cols, release, chunk_bytes) for raw, release in parts]
        return packs[0] if len(packs) == 1 else self.concat(packs)

    def matvec(self, p: Packed, simd: int = SIMD_BEST) -> Callable:
        """product(x, out): y = W x with p's arrays bound (chosen once per weight: a decode step
        makes a hundred small matvecs, where each microsecond of dispatch shows).  simd: the form of the
        integer sums (kernels.simd: PORTABLE, AVX2, VNNI; identical results), the host's best by default."""
        raise NotImplementedError

    def tile_product(self, p: Packed, simd: int = SIMD_BEST) -> Callable | None:
        """product(X, tiles, xrow, y): row tiles times rows of X in one parallel launch (the tiled
        kinds' TILE_ITEMS form, see kinds.tiled); None for a kind without row tiles."""
        return None

    def matmul_rows(self, p: Packed, simd: int = SIMD_BEST) -> Callable | None:
        """product(X, out): out (n, rows) = X (n, cols) W^T with each row computed exactly as
        ``matvec`` computes it alone (the same activation rounding, integer sums and float
        combine: bit-identical), each block's quants unpacked once for several rows; out rows
        contiguous.  None where the kind has none (the caller runs the matvec per row)."""
        return None

    def prompt_rows(self, p: Packed, simd: int = SIMD_BEST) -> Callable | None:
        """product(X, out): out (n, rows) = X (n, cols) W^T for prompt rows that accept rounded
        activations (Weight.matmul's rounded), where rows_prompt: the activations rounded as a
        prompt's expert products round them (kinds.tiled.PROMPT_TERMS where the kind's multi-row
        product takes them, else as the matvec: matmul_rows), each row's bits independent of the
        other rows; None where rows_prompt is False (the caller keeps its float product)."""
        return self.matmul_rows(p, simd) if self.rows_prompt else None

    def decode(self, p: Packed, ids: np.ndarray, out: np.ndarray) -> None:
        """Rows ids (int64) exactly into out (len(ids), cols) float32; serial (callers split rows)."""
        raise NotImplementedError

    def tile(self, p: Packed, r0: int, r1: int, buf: np.ndarray) -> np.ndarray:
        """Rows r0..r1-1 as float32 for the matmul, decoded serially into buf (r1-r0, cols)."""
        self.decode(p, np.arange(r0, r1, dtype=np.int64), buf)
        return buf

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """x (cols,) float32 as the matvec multiplies it, in float64."""
        return x.astype(np.float64)

    def concat(self, packs: "list[Packed]") -> Packed:
        """The rows of several packed weights of one type and row length, stacked."""
        first = packs[0]
        out = Packed(self, first.qtype, sum(p.rows for p in packs), first.cols)
        for k in first.arrays:
            out.arrays[k] = np.concatenate([p.arrays[k] for p in packs], axis=0)
        return out


KINDS: dict[GGMLType, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make `kind` the kind of each of its types (a type belongs to one kind)."""
    for t in kind.types:
        if t in KINDS:
            raise ValueError(f"{t.name} already repacks into kind {KINDS[t].name}")
        KINDS[t] = kind
    return kind


def registered() -> list[Kind]:
    """Every registered kind, once."""
    return list({id(k): k for k in KINDS.values()}.values())


def kind_of(t: GGMLType) -> Kind:
    """The kind type t repacks into (the raw kind for types without a layout of their own)."""
    return KINDS.get(t, raw.KIND)


from . import byte, crumb, lattice, nibble, plain, raw, table  # noqa: E402,F401  (each registers its kind)
