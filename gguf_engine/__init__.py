"""gguf-engine: a GGUF-native LLM inference engine with Numba-JIT quantized kernels."""
from .gguf import GGUFError, GGUFReader, GGUFValueType, GGUFWriter

__all__ = ["GGUFReader", "GGUFError", "GGUFWriter", "GGUFValueType"]
from .quantize import quantize_model  # noqa: E402

__all__ += ["quantize_model"]
from .tokenizer import Tokenizer  # noqa: E402

__all__ += ["Tokenizer"]
from .api import Llama  # noqa: E402

__all__ += ["Llama"]
__version__ = "0.1.0"
