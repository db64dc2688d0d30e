"""Model quantization: ftypes, llama.cpp's per-tensor type mixture, importance matrices, the driver."""
from .ftypes import QUANT_OPTIONS, LlamaFileType, ParsedFType, default_type, parse_ftype
from .imatrix import (Imatrix, ImatrixCollector, ImatrixEntry, ImatrixError, read_imatrix, write_imatrix_dat,
                      write_imatrix_gguf)
from .mixture import MixtureOptions, MixturePlanner, ModelInfo, TensorPlan, plan_types
from .model_quantizer import KVOverride, QuantizeError, QuantizeResult, quantize_model

__all__ = [
    "QUANT_OPTIONS", "LlamaFileType", "ParsedFType", "default_type", "parse_ftype",
    "Imatrix", "ImatrixCollector", "ImatrixEntry", "ImatrixError", "read_imatrix", "write_imatrix_dat",
    "write_imatrix_gguf",
    "MixtureOptions", "MixturePlanner", "ModelInfo", "TensorPlan", "plan_types",
    "KVOverride", "QuantizeError", "QuantizeResult", "quantize_model",
]
