"""Numba kernels of gguf-engine: per-type decoders, dequantization and the fused math.

``kernels.types`` (the type enum and block table) is plain Python; everything
that compiles is imported on first use of its name, so reading a GGUF header
never loads Numba.
"""
from __future__ import annotations

import importlib
import os

# Numba's OpenMP workers spin a bounded while (a few hundred microseconds) after each
# parallel loop, then sleep (see threads.py); set before any parallel kernel can run, and
# only when the user has not chosen a wait policy.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "20000"

from .types import GGMLType  # noqa: E402

_EXPORTS = {
    "dequantize": ".dequantize",
    "QTYPES": ".registry", "QuantType": ".registry", "get_qtype": ".registry",
    "quantize": ".quantizer",
    "get_num_threads": ".threads", "set_num_threads": ".threads",
    "Weight": ".weight", "fused_matvec": ".weight", "matvec": ".weight", "matmul": ".weight",
}
__all__ = ["GGMLType", *_EXPORTS]


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
