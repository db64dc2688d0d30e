"""gguf-engine: a GGUF-native LLM inference engine with Numba-JIT quantized kernels.

The public names are imported lazily, so a command that only reads a file
(``gguf-dump``) does not pay for the kernels, the tokenizer or the model.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "GGUFReader": ".gguf", "GGUFError": ".gguf", "GGUFWriter": ".gguf", "GGUFValueType": ".gguf",
    "Tokenizer": ".tokenizer",
    "Llama": ".api", "LlamaState": ".api",
    "Grammar": ".generation.grammar", "GrammarError": ".generation.grammar",
    "quantize_model": ".quantize",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'gguf_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
