"""Hugging Face checkpoints (safetensors, no torch) to GGUF, as llama.cpp's converter writes them, or
straight to any quantization type."""
from .architectures import ARCHITECTURES, ArchSpec
from .converter import (OUTTYPES, ConvertedModel, ConvertOptions, ConvertResult, PlannedTensor, convert_model,
                        plan_conversion)
from .safetensors import ConvertError, open_checkpoint
from .vocab import load_vocab, pre_tokenizer_name

__all__ = ["ARCHITECTURES", "ArchSpec", "OUTTYPES", "ConvertedModel", "ConvertOptions", "ConvertResult",
           "PlannedTensor", "convert_model", "plan_conversion", "ConvertError", "open_checkpoint", "load_vocab",
           "pre_tokenizer_name"]
