from .reader import GGUFReader, GGUFError, GGUFValueType, ReaderTensor

__all__ = ["GGUFReader", "GGUFError", "GGUFValueType", "ReaderTensor"]
