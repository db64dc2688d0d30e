"""Encoders: float32 rows -> each GGML type's bytes, exactly as ggml makes them.

``ENCODERS[type](x, imatrix)`` takes x float32 (n_rows, n_per_row), n_per_row a
whole number of blocks, and an optional per-column importance matrix float32
(n_per_row,), and returns uint8 (n_rows, row_bytes).  Use ``kernels.quantize``
for the validated public entry point.
"""
from __future__ import annotations

from ..types import GGMLType
from . import iquants, kquants, legacy, ternary

ENCODERS = {
    GGMLType.F32: legacy.encode_f32,
    GGMLType.F16: legacy.encode_f16,
    GGMLType.BF16: legacy.encode_bf16,
    GGMLType.Q4_0: legacy.encode_q4_0,
    GGMLType.Q4_1: legacy.encode_q4_1,
    GGMLType.Q5_0: legacy.encode_q5_0,
    GGMLType.Q5_1: legacy.encode_q5_1,
    GGMLType.Q8_0: legacy.encode_q8_0,
    GGMLType.Q8_1: legacy.encode_q8_1,
    GGMLType.MXFP4: legacy.encode_mxfp4,
    GGMLType.IQ4_NL: legacy.encode_iq4_nl,
    GGMLType.Q2_K: kquants.encode_q2_k,
    GGMLType.Q3_K: kquants.encode_q3_k,
    GGMLType.Q4_K: kquants.encode_q4_k,
    GGMLType.Q5_K: kquants.encode_q5_k,
    GGMLType.Q6_K: kquants.encode_q6_k,
    GGMLType.Q8_K: kquants.encode_q8_k,
    GGMLType.TQ1_0: ternary.encode_tq1_0,
    GGMLType.TQ2_0: ternary.encode_tq2_0,
    **iquants.ENCODERS,
}

# Types ggml refuses to quantize without an importance matrix.
REQUIRES_IMATRIX = frozenset({GGMLType.IQ1_S, GGMLType.IQ2_XXS, GGMLType.IQ2_XS})

__all__ = ["ENCODERS", "REQUIRES_IMATRIX"]
