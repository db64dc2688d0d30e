"""Typed, range-checked reads of GGUF metadata values.

A model file comes from anywhere: every value the config reads is checked for its type
(an integer, a finite number, a string, a per-layer array) and its range before any size
derived from it is used, and a bad one is refused with an error naming the key, its type
and its value.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..gguf.values import describe, is_array
from .errors import UnsupportedModelError

INT_MAX = 2 ** 31 - 1
_MISSING = object()


class MetadataError(UnsupportedModelError):
    """A metadata value has the wrong type, is out of range, or is missing."""


class MetadataKeys:
    """Reads ``{arch}.<key>`` values from a metadata dict with type and range checks;
    errors name the file, the full key, its type and its value."""

    def __init__(self, md: dict[str, Any], arch: str, source: str):
        self.md, self.arch, self.source = md, arch, source

    def full(self, key: str) -> str:
        return f"{self.arch}.{key}"

    def has(self, key: str) -> bool:
        return self.full(key) in self.md

    def fail(self, key: str, problem: str) -> MetadataError:
        full = self.full(key)
        return MetadataError(f"{self.source}: metadata key {full!r} ({describe(self.md[full])}) {problem}")

    def _raw(self, key: str, default: Any) -> Any:
        full = self.full(key)
        if full in self.md:
            return self.md[full]
        if default is _MISSING:
            raise MetadataError(f"{self.source}: required metadata key {full!r} is missing")
        return default

    def int(self, key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
        """An integer scalar in lo..hi (a float is accepted when it is integral, as llama.cpp casts)."""
        v = self._raw(key, default)
        if v is default and not self.has(key):
            return v
        return self._check_int(key, v, lo, hi)

    def _check_int(self, key: str, v: Any, lo: int, hi: int, what: str = "") -> int:
        if is_array(v) or isinstance(v, (str, bytes, bool, np.bool_)):
            raise self.fail(key, f"must be an integer{what}")
        if isinstance(v, (float, np.floating)):
            if not math.isfinite(v) or v != math.floor(v):
                raise self.fail(key, f"must be an integer{what}")
            v = int(v)
        if not isinstance(v, (int, np.integer)):
            raise self.fail(key, f"must be an integer{what}")
        v = int(v)
        if not lo <= v <= hi:
            raise self.fail(key, f"is out of range{what} (allowed: {lo}..{hi})")
        return v

    def float(self, key: str, lo: float, hi: float, default: Any = _MISSING, lo_open: bool = False) -> float:
        """A finite number in [lo, hi] ((lo, hi] with lo_open)."""
        v = self._raw(key, default)
        if v is default and not self.has(key):
            return v
        if is_array(v) or isinstance(v, (str, bytes, bool, np.bool_)) or \
                not isinstance(v, (int, float, np.integer, np.floating)):
            raise self.fail(key, "must be a number")
        v = float(v)
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise self.fail(key, f"is out of range (allowed: {'(' if lo_open else '['}{lo:g}, {hi:g}])")
        return v

    def str(self, key: str, default: Any = _MISSING) -> str:
        v = self._raw(key, default)
        if v is default and not self.has(key):
            return v
        if not isinstance(v, str):
            raise self.fail(key, "must be a string")
        return v

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        v = self._raw(key, default)
        if v is default and not self.has(key):
            return v
        if not isinstance(v, (bool, np.bool_)):
            raise self.fail(key, "must be a bool")
        return bool(v)

    def uniform_int(self, key: str, lo: int, hi: int, n_layer: int, default: Any = _MISSING) -> int:
        """An integer given once or per layer (an array of n_layer entries); this engine needs
        the per-layer values to be equal."""
        v = self._raw(key, default)
        if v is default and not self.has(key):
            return v
        if not is_array(v):
            return self._check_int(key, v, lo, hi)
        if len(v) != n_layer:
            raise self.fail(key, f"has {len(v)} entries for {n_layer} layers")
        vals = {self._check_int(key, x, lo, hi, " in every entry") for x in list(v)}
        if len(vals) != 1:
            raise self.fail(key, f"varies across layers ({sorted(vals)}); not supported")
        return vals.pop()

    def bool_per_layer(self, key: str, n_layer: int) -> tuple[bool, ...]:
        """An array of n_layer booleans (or 0/1 integers)."""
        v = self.md[self.full(key)]
        if not is_array(v) or len(v) != n_layer:
            raise self.fail(key, f"must be an array of {n_layer} booleans (one per layer)")
        out = []
        for x in list(v):
            if isinstance(x, (bool, np.bool_)) or (isinstance(x, (int, np.integer)) and int(x) in (0, 1)):
                out.append(bool(x))
            else:
                raise self.fail(key, "must hold booleans")
        return tuple(out)
