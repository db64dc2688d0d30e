"""Encoders: float32 rows -> each GGML type's bytes, exactly as ggml makes them.

Each encoder sits beside its type's decoder in the type's family module (kernels.legacy, kquants,
iquants, ternary, floats); this package holds what they share: the float32 search helpers
(``common``) and the i-quants' lattice neighbour tables (``grids``).

``ENCODERS[type](x, imatrix)`` takes x float32 (n_rows, n_per_row), n_per_row a whole number of
blocks, and an optional per-column importance matrix float32 (n_per_row,), and returns uint8
(n_rows, row_bytes).  Use ``kernels.quantize`` for the validated public entry point.
"""
from __future__ import annotations

from ..types import GGMLType

# Types ggml refuses to quantize without an importance matrix.
REQUIRES_IMATRIX = frozenset({GGMLType.IQ1_S, GGMLType.IQ2_XXS, GGMLType.IQ2_XS})

__all__ = ["ENCODERS", "REQUIRES_IMATRIX"]


def __getattr__(name: str):
    """ENCODERS, collected from the registry on first use (the family modules import this package's
    helpers, so it cannot import them when it loads)."""
    if name != "ENCODERS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..registry import QTYPES
    encoders = {t: q.encode for t, q in QTYPES.items() if q.encode is not None}
    globals()["ENCODERS"] = encoders
    return encoders
