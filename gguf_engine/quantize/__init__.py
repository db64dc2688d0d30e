"""Model quantization: ftypes, llama.cpp's per-tensor type mixture, importance matrices (files and
collection), the quantization driver, and perplexity / KL-divergence evaluation."""
from .ftypes import QUANT_OPTIONS, LlamaFileType, ParsedFType, default_type, parse_ftype
from .imatrix import (Imatrix, ImatrixCollector, ImatrixEntry, ImatrixError, read_imatrix, write_imatrix_dat,
                      write_imatrix_gguf)
from .mixture import MixtureOptions, MixturePlanner, ModelInfo, TensorPlan, plan_types
from .model_quantizer import KVOverride, QuantizeError, QuantizeResult, quantize_model, quantize_source
from .collect import collect_imatrix
from .evaluate import EvalError
from .perplexity import KLDResult, PerplexityResult, kl_divergence, perplexity

__all__ = [
    "QUANT_OPTIONS", "LlamaFileType", "ParsedFType", "default_type", "parse_ftype",
    "Imatrix", "ImatrixCollector", "ImatrixEntry", "ImatrixError", "read_imatrix", "write_imatrix_dat",
    "write_imatrix_gguf",
    "MixtureOptions", "MixturePlanner", "ModelInfo", "TensorPlan", "plan_types",
    "KVOverride", "QuantizeError", "QuantizeResult", "quantize_model", "quantize_source",
    "collect_imatrix", "EvalError", "KLDResult", "PerplexityResult", "kl_divergence", "perplexity",
]
