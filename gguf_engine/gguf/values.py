"""How error messages show a GGUF metadata value: its type and a short form of the value."""
from __future__ import annotations

from typing import Any

import numpy as np


def is_array(value: Any) -> bool:
    """A GGUF array value (list, numpy array or the reader's lazy string array), not a string."""
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes))


def describe(value: Any) -> str:
    """A short description of a metadata value for an error message: its type and value."""
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return f"string {text[:60] + '...' if len(text) > 60 else text}"
    if is_array(value):
        n = len(value)
        head = ", ".join(repr(v) for v in list(value[:4]))
        return f"array of {n} [{head}{', ...' if n > 4 else ''}]"
    if isinstance(value, (bool, np.bool_)):
        return f"bool {bool(value)}"
    if isinstance(value, (int, np.integer)):
        return f"integer {int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"float {float(value)!r}"
    return f"{type(value).__name__} {value!r}"[:80]
