"""Load-time repacking: a GGUF tensor's bytes -> the packed layout of its type's kind.

``repack(data, qtype, shape)`` validates the bytes and hands them to the kind the type repacks
into (``kernels.kinds``: one module per kind holds its layout, repackers and kernels);
``concat`` stacks packed weights of one type and row length (fused QKV, gate/up).
"""
from __future__ import annotations

import numpy as np

from .kinds import Packed, kind_of
from .kinds import lattice, table
from .kinds.tiled import ROW_TILE
from .types import as_type, row_bytes

__all__ = ["CHUNK_BYTES", "LATTICE", "ROW_TILE", "TABLES", "Packed", "as_raw_rows", "concat", "repack",
           "repack_stack"]

# The value table of each table-coded type (kinds t4 and t4s) and the lattice kind's view of its own.
TABLES = {**table.TABLES, **lattice.TABLES}
LATTICE = lattice.LATTICE
# Bytes of a tensor's raw data repacked per chunk (see repack's `release`).
CHUNK_BYTES = 16 << 20


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
    """Repack a (rows, cols) tensor's raw bytes into its kind's layout (a new copy; `data` is only read).

    ``release(r0, r1)``, if given, is called once rows r0..r1-1 have been copied (a loader drops
    their file pages, so a tensor's file pages and its copy are never both resident in full)."""
    t = as_type(qtype)
    rows, cols = (int(s) for s in shape)
    return kind_of(t).pack(as_raw_rows(data, t, (rows, cols)), t, cols, release, CHUNK_BYTES)


def repack_stack(parts: list, qtype, cols: int) -> Packed:
    """Several tensors of one type and row length repacked into one stacked layout (fused QKV,
    gate/up) without packing each alone first.  parts: [(data, rows, release)], each as ``repack``
    takes them (release may be None)."""
    t = as_type(qtype)
    raws = [(as_raw_rows(data, t, (rows, cols)), release) for data, rows, release in parts]
    return kind_of(t).pack_stack(raws, t, int(cols), CHUNK_BYTES)


def concat(packs: list[Packed]) -> Packed:
    """Stack the rows of several packed weights of one type and row length (fused QKV, gate/up)."""
    first = packs[0]
    for p in packs[1:]:
        if p.qtype != first.qtype or p.cols != first.cols:
            raise ValueError(f"cannot stack {p.qtype.name} x{p.cols} rows onto {first.qtype.name} x{first.cols}")
    return first.kind.concat(packs)
