"""Transformer models over GGUF weights: ``load_model(path) -> Model``."""
from .config import ARCHITECTURES, ModelConfig, UnsupportedModelError
from .errors import ContextFullError
from .kv_cache import KVCache
from .loader import ModelLoadError, load_model
from .model import Model

__all__ = ["load_model", "Model", "ModelConfig", "ContextFullError", "UnsupportedModelError", "ModelLoadError",
           "KVCache", "ARCHITECTURES"]
