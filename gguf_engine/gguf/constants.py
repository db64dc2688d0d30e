"""GGUF format constants: magic, versions, metadata value types and their encodings.

The tensor type table (block sizes) lives in ``kernels.types``; this module
only describes the container format.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)          # v2 and v3 share the layout (64-bit counts and lengths)
GGUF_DEFAULT_VERSION = 3
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
ARCHITECTURE_KEY = "general.architecture"


class GGUFValueType(IntEnum):
    """Metadata value types as numbered by the GGUF specification."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# fixed-size value type -> numpy dtype (little-endian, as stored)
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

INTEGER_TYPES = frozenset({
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
})
FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})

# numpy dtype kind+size -> value type, used when an array's element type is read off a numpy array
# (an exact correspondence: a uint32 array is a UINT32 array, a bool array a BOOL array)
DTYPE_TO_VALUE_TYPE: dict[str, GGUFValueType] = {
    "u1": GGUFValueType.UINT8, "i1": GGUFValueType.INT8,
    "u2": GGUFValueType.UINT16, "i2": GGUFValueType.INT16,
    "u4": GGUFValueType.UINT32, "i4": GGUFValueType.INT32,
    "u8": GGUFValueType.UINT64, "i8": GGUFValueType.INT64,
    "f4": GGUFValueType.FLOAT32, "f8": GGUFValueType.FLOAT64,
    "b1": GGUFValueType.BOOL,
}


def value_type_of_dtype(dtype: np.dtype) -> GGUFValueType | None:
    dt = np.dtype(dtype)
    return DTYPE_TO_VALUE_TYPE.get(f"{dt.kind}{dt.itemsize}")
