"""The per-type registry: ``QTYPES[GGMLType.Q4_K]`` is the one entry the rest of the engine consults
for a tensor type (its block geometry, layout, decoder, encoder and packed kind).

Each family module (``floats``, ``legacy``, ``kquants``, ``iquants``, ``ternary``) lists its types
as ``TYPES``, their decoders and encoders side by side; this module collects them.  Decoders are
serial, ``nogil`` Numba functions (``cache=True``), safe to call from other jitted code or from
several threads on disjoint slices; ``dequantize`` splits big tensors over threads.
"""
from __future__ import annotations

from . import floats, iquants, kquants, legacy, ternary
from .kinds import kind_of
from .types import GGMLType, QuantType, as_type

__all__ = ["QTYPES", "QuantType", "get_qtype"]

QTYPES: dict[GGMLType, QuantType] = {q.type: q for family in (floats, legacy, kquants, iquants, ternary)
                                     for q in family.TYPES}

for _q in QTYPES.values():        # a family names the kind that takes the type (kinds register their types)
    if _q.kind is not None and kind_of(_q.type) is not _q.kind:
        raise ImportError(f"{_q.name}: its family names kind {_q.kind.name}, but kind {kind_of(_q.type).name} takes it")


def get_qtype(t: "GGMLType | int | str") -> QuantType:
    """The registry entry of a type (enum, id or name); ValueError naming the type if there is none."""
    tt = as_type(t)
    try:
        return QTYPES[tt]
    except KeyError:
        raise ValueError(f"unsupported GGML type {tt.name} (id {int(tt)}): no decoder is registered for it") from None
