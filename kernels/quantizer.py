"""Public quantization entry point: float32 rows -> one GGML type's raw bytes."""
from __future__ import annotations

import numpy as np

from .types import BLOCK_SIZES, GGMLType, as_type  # noqa: F401  (GGMLType: annotation)


def quantize(x: np.ndarray, qtype: "GGMLType | int | str", imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize rows exactly as ggml's ggml_quantize_chunk does.

    x: float32 (n_rows, n_per_row) (a 1-D array is one row); n_per_row must be a
    multiple of the type's block size.  imatrix: optional float32 (n_per_row,)
    per-column importance weights (the sums of squared activations from an
    importance matrix); with it the k-quants and i-quants weight their search.
    Returns uint8 (n_rows, row_bytes).  Rows are encoded in parallel.
    """
    from .encoders import ENCODERS, REQUIRES_IMATRIX

    t = as_type(qtype)
    enc = ENCODERS.get(t)
    if enc is None:
        raise ValueError(f"quantize: no encoder for GGML type {t.name}; supported: "
                         + ", ".join(k.name for k in ENCODERS))
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"quantize: x must be 2-D (n_rows, n_per_row), got shape {x.shape}")
    n_rows, n_per_row = x.shape
    bs = BLOCK_SIZES[t][0]
    if n_per_row % bs:
        raise ValueError(f"quantize: {t.name} needs rows whose length is a multiple of {bs}; "
                         f"got n_per_row={n_per_row}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if imatrix.shape[0] != n_per_row:
            raise ValueError(f"quantize: imatrix has {imatrix.shape[0]} entries but rows have "
                             f"{n_per_row} columns")
        if not np.all(np.isfinite(imatrix)):
            raise ValueError("quantize: imatrix contains NaN or infinite values")
    elif t in REQUIRES_IMATRIX:
        raise ValueError(f"quantize: {t.name} needs an importance matrix: this type is too coarse to be "
                         "made without one (results would be garbage); compute an imatrix "
                         "(gguf-imatrix) and pass it, or choose another type")
    if bs > 1 and not np.isfinite(x).all():
        bad = int(np.nonzero(~np.isfinite(x).all(axis=1))[0][0])
        raise ValueError(f"quantize: row {bad} contains NaN or infinite values; {t.name} cannot encode them")
    if n_rows == 0:
        return np.zeros((0, n_per_row // bs * BLOCK_SIZES[t][1]), np.uint8)
    return enc(x, imatrix)
