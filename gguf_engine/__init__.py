"""gguf-engine: a GGUF-native LLM inference engine with Numba-JIT quantized kernels."""
from .gguf import GGUFError, GGUFReader

__all__ = ["GGUFReader", "GGUFError"]
__version__ = "0.1.0"
