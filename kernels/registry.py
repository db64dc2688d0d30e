"""The per-type registry: block geometry, layout, decoder and (later) encoder.

``QTYPES[GGMLType.Q4_K]`` is the one entry the rest of the engine consults for a
tensor type.  Decoders share one signature::

    decode(src: uint8[::1] holding n whole blocks, dst: float32[::1] of n * block_size)

They are serial, ``nogil`` Numba functions (``cache=True``), safe to call from
other jitted code or from several threads on disjoint slices; ``dequantize``
splits big tensors over threads.  Encoders come from ``kernels.encoders.ENCODERS``
(type -> function) when that module exists.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from . import floats, iquants, kquants, legacy, ternary
from .types import BLOCK_SIZES, GGMLType, as_type, row_bytes


@dataclass(frozen=True)
class QuantType:
    type: GGMLType
    block_size: int        # weights per block
    type_size: int         # bytes per block
    layout: str            # the block layout: field, bytes, meaning
    decode: Callable       # numba decode(src uint8[::1], dst float32[::1])

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def encode(self) -> Callable | None:
        """The type's encoder from ``kernels.encoders.ENCODERS``, or None while there is none."""
        try:
            mod = importlib.import_module(__package__ + ".encoders")
        except ModuleNotFoundError as e:
            if e.name != __package__ + ".encoders":
                raise
            return None
        return getattr(mod, "ENCODERS", {}).get(self.type)

    def row_bytes(self, n_per_row: int) -> int:
        return row_bytes(self.type, n_per_row)


def _plain(name: str, nbytes: int, meaning: str) -> str:
    return f"{name}: 1 value in {nbytes} bytes\n  v {nbytes} bytes  {meaning}"


_ENTRIES: list[tuple[GGMLType, str, Callable]] = [
    (GGMLType.F32, _plain("F32", 4, "little-endian IEEE binary32"), floats.decode_f32),
    (GGMLType.F16, _plain("F16", 2, "little-endian IEEE binary16"), floats.decode_f16),
    (GGMLType.BF16, _plain("BF16", 2, "bfloat16: the upper 16 bits of a binary32"), floats.decode_bf16),
    (GGMLType.F64, _plain("F64", 8, "IEEE binary64, rounded to float32 when decoded"), floats.decode_f64),
    (GGMLType.I8, _plain("I8", 1, "int8, converted to float32"), floats.decode_i8),
    (GGMLType.I16, _plain("I16", 2, "little-endian int16, converted to float32"), floats.decode_i16),
    (GGMLType.I32, _plain("I32", 4, "little-endian int32, rounded to float32"), floats.decode_i32),
    (GGMLType.I64, _plain("I64", 8, "little-endian int64, rounded to float32"), floats.decode_i64),
    (GGMLType.Q4_0, legacy.LAYOUT_Q4_0, legacy.decode_q4_0),
    (GGMLType.Q4_1, legacy.LAYOUT_Q4_1, legacy.decode_q4_1),
    (GGMLType.Q5_0, legacy.LAYOUT_Q5_0, legacy.decode_q5_0),
    (GGMLType.Q5_1, legacy.LAYOUT_Q5_1, legacy.decode_q5_1),
    (GGMLType.Q8_0, legacy.LAYOUT_Q8_0, legacy.decode_q8_0),
    (GGMLType.Q8_1, legacy.LAYOUT_Q8_1, legacy.decode_q8_1),
    (GGMLType.Q8_K, legacy.LAYOUT_Q8_K, legacy.decode_q8_k),
    (GGMLType.Q1_0, legacy.LAYOUT_Q1_0, legacy.decode_q1_0),
    (GGMLType.Q2_0, legacy.LAYOUT_Q2_0, legacy.decode_q2_0),
    (GGMLType.Q2_K, kquants.LAYOUT_Q2_K, kquants.decode_q2_k),
    (GGMLType.Q3_K, kquants.LAYOUT_Q3_K, kquants.decode_q3_k),
    (GGMLType.Q4_K, kquants.LAYOUT_Q4_K, kquants.decode_q4_k),
    (GGMLType.Q5_K, kquants.LAYOUT_Q5_K, kquants.decode_q5_k),
    (GGMLType.Q6_K, kquants.LAYOUT_Q6_K, kquants.decode_q6_k),
    (GGMLType.IQ2_XXS, iquants.LAYOUT_IQ2_XXS, iquants.decode_iq2_xxs),
    (GGMLType.IQ2_XS, iquants.LAYOUT_IQ2_XS, iquants.decode_iq2_xs),
    (GGMLType.IQ2_S, iquants.LAYOUT_IQ2_S, iquants.decode_iq2_s),
    (GGMLType.IQ3_XXS, iquants.LAYOUT_IQ3_XXS, iquants.decode_iq3_xxs),
    (GGMLType.IQ3_S, iquants.LAYOUT_IQ3_S, iquants.decode_iq3_s),
    (GGMLType.IQ1_S, iquants.LAYOUT_IQ1_S, iquants.decode_iq1_s),
    (GGMLType.IQ1_M, iquants.LAYOUT_IQ1_M, iquants.decode_iq1_m),
    (GGMLType.IQ4_NL, iquants.LAYOUT_IQ4_NL, iquants.decode_iq4_nl),
    (GGMLType.IQ4_XS, iquants.LAYOUT_IQ4_XS, iquants.decode_iq4_xs),
    (GGMLType.TQ1_0, ternary.LAYOUT_TQ1_0, ternary.decode_tq1_0),
    (GGMLType.TQ2_0, ternary.LAYOUT_TQ2_0, ternary.decode_tq2_0),
    (GGMLType.MXFP4, ternary.LAYOUT_MXFP4, ternary.decode_mxfp4),
    (GGMLType.NVFP4, ternary.LAYOUT_NVFP4, ternary.decode_nvfp4),
]

QTYPES: dict[GGMLType, QuantType] = {
    t: QuantType(t, BLOCK_SIZES[t][0], BLOCK_SIZES[t][1], layout, dec) for t, layout, dec in _ENTRIES
}

# Types that exist in the enum but have no decoder, with the reason.
UNSUPPORTED: dict[GGMLType, str] = {}


def get_qtype(t: "GGMLType | int | str") -> QuantType:
    """The registry entry of a type (enum, id or name); ValueError naming the type if there is none."""
    tt = as_type(t)
    try:
        return QTYPES[tt]
    except KeyError:
        why = UNSUPPORTED.get(tt, "no decoder is registered for it")
        raise ValueError(f"unsupported GGML type {tt.name} (id {int(tt)}): {why}") from None
