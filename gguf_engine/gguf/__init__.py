"""GGUF container format: memory-mapped reader and streaming, atomic writer."""
from .constants import DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType
from .reader import GGUFError, GGUFReader, ReaderTensor, TypeSpec
from .strings import StringArray
from .writer import GGUFWriter

__all__ = ["GGUFReader", "GGUFWriter", "GGUFError", "GGUFValueType", "ReaderTensor", "StringArray",
           "TypeSpec", "GGUF_MAGIC", "DEFAULT_ALIGNMENT"]
