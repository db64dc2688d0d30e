"""Numba kernels of gguf-engine: per-type decoders, dequantization and the fused math."""
from . import threads  # first: sets the OpenMP wait policy before any parallel kernel runs
from .dequantize import dequantize
from .registry import QTYPES, QuantType, get_qtype
from .quantize import quantize
from .threads import get_num_threads, set_num_threads
from .types import GGMLType
from .weight import Weight, fused_matvec, matmul, matvec

__all__ = ["dequantize", "GGMLType", "QTYPES", "QuantType", "get_qtype", "quantize",
           "Weight", "fused_matvec", "matvec", "matmul", "set_num_threads", "get_num_threads"]
