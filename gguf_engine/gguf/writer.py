"""Streaming, atomic GGUF writer (version 3 by default, little-endian).

Usage::

    with GGUFWriter("out.gguf", arch="llama") as w:
        w.copy_metadata(reader, skip={"general.file_type"})      # keeps every stored type
        w.add_uint32("general.file_type", 15)
        for t in tensors:                                        # 1. declare every tensor
            w.add_tensor_info(t.name, t.shape, GGMLType.Q4_K)
        for t in tensors:                                        # 2. stream the data, same order
            w.write_tensor_data(t.name, quantize(t))
    # leaving the block finishes the file: out.gguf appears only now, atomically

Metadata types are always stated, never guessed from Python values: ``add_uint32``,
``add_float64``, ... or ``add_key(key, value, vtype)``.  For arrays the element type is
given (``add_array(key, values, elem_type)``) or read off a value that carries it exactly
(a numpy array's dtype, a ``StringArray``); ``add_key(key, value, reader.type_spec(key))``
reproduces any stored value, nested arrays included.

Tensor shapes are numpy order (outermost first), as everywhere in the project; they are
reversed into GGUF's innermost-first order by the reader's one reversal function.

The file is written to ``.NAME.partial-PID`` beside the target (``gguf_engine.atomic``) and renamed over it by
``finish()``; on any exception (Ctrl-C included) inside the ``with`` block, or on
``abort()``, the temporary is removed and an existing target is left untouched.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import numpy as np

from kernels.types import BLOCK_SIZES, GGMLType, as_type

from ..atomic import AtomicFile
from .constants import (ALIGNMENT_KEY, ARCHITECTURE_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC,
                        GGUF_VERSIONS, INTEGER_TYPES, SCALAR_DTYPES, GGUFValueType, value_type_of_dtype)
from .reader import GGUFReader, TypeSpec, _numpy_shape
from .strings import StringArray

__all__ = ["GGUFWriter"]

TensorData = Union[bytes, bytearray, memoryview, np.ndarray]

# numpy dtype of a tensor passed to add_tensor without a type -> its GGML type (an exact match)
_DTYPE_TO_GGML = {
    np.dtype(np.float32): GGMLType.F32, np.dtype(np.float16): GGMLType.F16,
    np.dtype(np.float64): GGMLType.F64, np.dtype(np.int8): GGMLType.I8,
    np.dtype(np.int16): GGMLType.I16, np.dtype(np.int32): GGMLType.I32, np.dtype(np.int64): GGMLType.I64,
}


def _as_value_type(t: Any) -> GGUFValueType:
    if isinstance(t, GGUFValueType):
        return t
    if isinstance(t, str):
        try:
            return GGUFValueType[t.upper()]
        except KeyError:
            raise ValueError(f"unknown GGUF value type name {t!r}") from None
    try:
        return GGUFValueType(int(t))
    except (ValueError, TypeError):
        raise ValueError(f"unknown GGUF value type {t!r}") from None


class _Tensor:
    __slots__ = ("name", "ne", "type", "n_bytes", "offset", "source", "written")

    def __init__(self, name, ne, gtype, n_bytes, source):
        self.name, self.ne, self.type, self.n_bytes, self.source = name, ne, gtype, n_bytes, source
        self.offset = 0
        self.written = False


class GGUFWriter:
    """Write a GGUF file: typed metadata, tensor infos, then tensor data streamed one at a time."""

    def __init__(self, path: str | os.PathLike, arch: str | None = None, *,
                 alignment: int | None = None, version: int = 3):
        if version not in GGUF_VERSIONS:
            raise ValueError(f"cannot write GGUF version {version}; supported: {GGUF_VERSIONS}")
        self.path = Path(path)
        self.version = version
        self.alignment = DEFAULT_ALIGNMENT
        self._kv: dict[str, bytes] = {}          # key -> encoded (type + value)
        self._tensors: list[_Tensor] = []
        self._by_name: dict[str, _Tensor] = {}
        self._next = 0                           # index of the next tensor whose data is due
        self._file: AtomicFile | None = None
        self._state = "open"                     # open -> data (header written) -> finished | aborted
        if arch is not None:
            self.add_string(ARCHITECTURE_KEY, arch)
        if alignment is not None:
            self.add_uint32(ALIGNMENT_KEY, alignment)

    # -- metadata ----------------------------------------------------------
    def add_key(self, key: str, value: Any, vtype: Any, elem_type: Any = None) -> None:
        """Add one metadata key with its type stated.

        ``vtype`` is a GGUFValueType (or its name or number), or a full type spec as returned
        by ``GGUFReader.type_spec`` (``(ARRAY, element spec)``).  For ARRAY, ``elem_type`` names
        the element type; it may be left out only when the value carries it exactly (a numpy
        array, a ``StringArray``, a non-empty list of ``str``).
        """
        self._check_open("add metadata")
        if not isinstance(key, str):
            raise TypeError(f"metadata key must be a str, got {type(key).__name__}")
        if key in self._kv:
            raise ValueError(f"{self.path}: duplicate metadata key {key!r}")
        if isinstance(vtype, tuple):
            spec: TypeSpec = vtype
        else:
            vt = _as_value_type(vtype)
            spec = (vt, elem_type if elem_type is not None else None) if vt == GGUFValueType.ARRAY else vt
        if key == ALIGNMENT_KEY:
            vt = spec[0] if isinstance(spec, tuple) else spec
            if vt not in INTEGER_TYPES or isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value <= 0 or value & (value - 1):
                raise ValueError(f"{ALIGNMENT_KEY} must be a positive power of two integer, got {value!r}")
        out = bytearray()
        self._encode(out, value, spec, key)
        self._kv[key] = bytes(out)
        if key == ALIGNMENT_KEY:
            self.alignment = int(value)

    def remove_key(self, key: str) -> None:
        self._check_open("remove metadata")
        del self._kv[key]
        if key == ALIGNMENT_KEY:
            self.alignment = DEFAULT_ALIGNMENT

    def has_key(self, key: str) -> bool:
        return key in self._kv

    def add_uint8(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.UINT8)
    def add_int8(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.INT8)
    def add_uint16(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.UINT16)
    def add_int16(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.INT16)
    def add_uint32(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.UINT32)
    def add_int32(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.INT32)
    def add_uint64(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.UINT64)
    def add_int64(self, key: str, v: int) -> None: self.add_key(key, v, GGUFValueType.INT64)
    def add_float32(self, key: str, v: float) -> None: self.add_key(key, v, GGUFValueType.FLOAT32)
    def add_float64(self, key: str, v: float) -> None: self.add_key(key, v, GGUFValueType.FLOAT64)
    def add_bool(self, key: str, v: bool) -> None: self.add_key(key, v, GGUFValueType.BOOL)
    def add_string(self, key: str, v: str) -> None: self.add_key(key, v, GGUFValueType.STRING)

    def add_array(self, key: str, values: Any, elem_type: Any) -> None:
        """An array whose elements all have ``elem_type`` (a GGUFValueType or a nested spec)."""
        self.add_key(key, values, GGUFValueType.ARRAY, elem_type)

    def copy_metadata(self, reader: GGUFReader, skip: Iterable[str] = ()) -> None:
        """Copy every key of ``reader`` (except ``skip``) with exactly its stored types, in file order."""
        skip = set(skip)
        for key, value in reader.metadata.items():
            if key not in skip:
                self.add_key(key, value, reader.type_spec(key))

    # -- value encoding ----------------------------------------------------
    def _encode(self, out: bytearray, value: Any, spec: Any, key: str, depth: int = 0) -> None:
        """Append the value type code and the value."""
        vt = _as_value_type(spec[0] if isinstance(spec, tuple) else spec)
        out += struct.pack("<I", vt)
        if vt == GGUFValueType.ARRAY:
            elem = spec[1] if isinstance(spec, tuple) else None
            self._encode_array(out, value, elem, key, depth)
        else:
            self._encode_scalar(out, value, vt, key)

    def _encode_scalar(self, out: bytearray, value: Any, vt: GGUFValueType, key: str) -> None:
        if vt == GGUFValueType.STRING:
            if not isinstance(value, str):
                raise TypeError(f"key {key!r}: STRING value must be a str, got {type(value).__name__}")
            b = value.encode("utf-8")
            out += struct.pack("<Q", len(b)) + b
            return
        dt = SCALAR_DTYPES[vt]
        out += self._numeric_array([value], vt, key).astype(dt).tobytes()

    @staticmethod
    def _numeric_array(values: Any, et: GGUFValueType, key: str) -> np.ndarray:
        """values -> little-endian numpy array of et, refusing anything that would change a value."""
        dt = SCALAR_DTYPES[et]
        arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object if len(values) else dt)
        if arr.ndim != 1:
            raise ValueError(f"key {key!r}: array values must be one-dimensional, got shape {arr.shape}")
        if arr.dtype == object:
            items = arr.tolist()
            if et == GGUFValueType.BOOL:
                if not all(isinstance(x, (bool, np.bool_)) for x in items):
                    raise TypeError(f"key {key!r}: BOOL values must be bools")
            elif et in INTEGER_TYPES:
                if not all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in items):
                    raise TypeError(f"key {key!r}: {et.name} values must be integers")
            elif not all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
                         for x in items):
                raise TypeError(f"key {key!r}: {et.name} values must be numbers")
            if et in INTEGER_TYPES:
                info = np.iinfo(dt)
                bad = [x for x in items if not info.min <= int(x) <= info.max]
                if bad:
                    raise ValueError(f"key {key!r}: {bad[0]} does not fit in {et.name}")
                return np.array([int(x) for x in items], dtype=dt)
            return np.array(items, dtype=dt)
        kind = arr.dtype.kind
        if et == GGUFValueType.BOOL:
            if kind != "b":
                raise TypeError(f"key {key!r}: BOOL array needs a bool array, got {arr.dtype}")
            return arr.astype(dt)
        if et in INTEGER_TYPES:
            if kind not in "iu":
                raise TypeError(f"key {key!r}: {et.name} array needs integers, got {arr.dtype}")
            if arr.size:
                info = np.iinfo(dt)
                lo, hi = int(arr.min()), int(arr.max())
                if lo < info.min or hi > info.max:
                    raise ValueError(f"key {key!r}: values [{lo}, {hi}] do not fit in {et.name}")
            return arr.astype(dt)
        if kind not in "fiu":
            raise TypeError(f"key {key!r}: {et.name} array needs numbers, got {arr.dtype}")
        return arr.astype(dt)

    def _encode_array(self, out: bytearray, value: Any, elem: Any, key: str, depth: int) -> None:
        if depth >= 8:
            raise ValueError(f"key {key!r}: arrays nested deeper than 8")
        per_member = None
        if isinstance(elem, list):                          # one spec per member of an array of arrays
            per_member, et = elem, GGUFValueType.ARRAY
        elif isinstance(elem, tuple):                       # (ARRAY, inner): every member has this spec
            et = _as_value_type(elem[0])
        elif elem is None:
            et = self._infer_elem(value, key)
        else:
            et = _as_value_type(elem)
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
            raise TypeError(f"key {key!r}: ARRAY value must be a sequence, got {type(value).__name__}")
        n = len(value)
        out += struct.pack("<IQ", et, n)
        if et in SCALAR_DTYPES:
            out += self._numeric_array(value, et, key).tobytes()
        elif et == GGUFValueType.STRING:
            if isinstance(value, StringArray) and (value._region.size or n == 0):
                out += value._region.tobytes()          # already encoded exactly as GGUF stores it
                return
            for s in value:
                if not isinstance(s, str):
                    raise TypeError(f"key {key!r}: STRING array element must be a str, got {type(s).__name__}")
                b = s.encode("utf-8")
                out += struct.pack("<Q", len(b)) + b
        else:                                               # array of arrays
            if per_member is not None and len(per_member) != n:
                raise ValueError(f"key {key!r}: {len(per_member)} member specs for {n} members")
            for i, member in enumerate(value):
                inner = per_member[i] if per_member is not None else (
                    elem if isinstance(elem, tuple) else GGUFValueType.ARRAY)
                inner_elem = inner[1] if isinstance(inner, tuple) else None
                self._encode_array(out, member, inner_elem, key, depth + 1)

    @staticmethod
    def _infer_elem(value: Any, key: str) -> GGUFValueType:
        """Element type carried exactly by the value itself; anything else must be stated."""
        if isinstance(value, np.ndarray):
            vt = value_type_of_dtype(value.dtype)
            if vt is None:
                raise TypeError(f"key {key!r}: no GGUF element type for numpy dtype {value.dtype}")
            return vt
        if isinstance(value, StringArray):
            return GGUFValueType.STRING
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return GGUFValueType.STRING
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (np.ndarray, StringArray)) for v in value):
            return GGUFValueType.ARRAY
        raise TypeError(f"key {key!r}: state the array element type (elem_type=GGUFValueType.X)")

    # -- tensors -----------------------------------------------------------
    def add_tensor_info(self, name: str, shape: Iterable[int], ggml_type: Any,
                        n_bytes: int | None = None) -> None:
        """Declare a tensor: ``shape`` in numpy order (outermost first), its GGML type, and
        optionally its byte size (checked against the shape).  Data follows with write_tensor_data."""
        self._add_tensor(name, shape, ggml_type, n_bytes, None)

    def add_tensor(self, name: str, data: TensorData | Callable[[], TensorData], ggml_type: Any = None,
                   shape: Iterable[int] | None = None) -> None:
        """Declare a tensor together with its data, written when the file is finished.

        ``data`` is an array, raw bytes, or a zero-argument callable returning either (called only
        when the tensor's turn comes, so a model need never be held in memory whole; a memory-mapped
        view costs nothing to keep).  The type defaults to the array's dtype (float32 -> F32, float16
        -> F16, ...); raw quantized bytes need ``ggml_type`` and ``shape`` (numpy order, in weights).
        """
        if ggml_type is None:
            if not isinstance(data, np.ndarray) or data.dtype not in _DTYPE_TO_GGML:
                raise TypeError(f"tensor {name!r}: state ggml_type (data is not a float32/float16/... array)")
            ggml_type = _DTYPE_TO_GGML[data.dtype]
        gt = as_type(ggml_type)
        if shape is None:
            if not isinstance(data, np.ndarray) or _DTYPE_TO_GGML.get(data.dtype) != gt:
                raise TypeError(f"tensor {name!r}: state the shape of the {gt.name} tensor")
            shape = data.shape
        self._add_tensor(name, shape, gt, None, data)

    def _add_tensor(self, name, shape, ggml_type, n_bytes, source) -> None:
        self._check_open("add tensors")
        if not isinstance(name, str):
            raise TypeError(f"tensor name must be a str, got {type(name).__name__}")
        if name in self._by_name:
            raise ValueError(f"{self.path}: duplicate tensor name {name!r}")
        gt = as_type(ggml_type)
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= 4 or any(d < 0 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape} must have 1..4 non-negative dims")
        ne = _numpy_shape(shape)                            # GGUF order, innermost first
        bs, ts = BLOCK_SIZES[gt]
        if ne[0] % bs:
            raise ValueError(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {gt.name} "
                             f"block size {bs}")
        expected = int(np.prod(ne, dtype=object)) // bs * ts
        if n_bytes is not None and int(n_bytes) != expected:
            raise ValueError(f"tensor {name!r}: {n_bytes} bytes given, but a {gt.name} tensor of shape "
                             f"{shape} takes {expected}")
        t = _Tensor(name, ne, gt, expected, source)
        self._tensors.append(t)
        self._by_name[name] = t

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self._tensors]

    # -- output ------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self.path}: cannot {what} after the header is written ({self._state})")

    def _pad(self, n: int) -> bytes:
        return b"\0" * ((-n) % self.alignment)

    def write_header(self) -> None:
        """Write the header and tensor infos (done automatically by the first data write)."""
        self._check_open("write the header")
        self._file = AtomicFile(self.path).open()
        self._state = "data"
        head = bytearray(GGUF_MAGIC)
        head += struct.pack("<IQQ", self.version, len(self._tensors), len(self._kv))
        for key, enc in self._kv.items():
            kb = key.encode("utf-8")
            head += struct.pack("<Q", len(kb)) + kb + enc
        off = 0
        for t in self._tensors:
            off += (-off) % self.alignment
            t.offset = off
            off += t.n_bytes
            nb = t.name.encode("utf-8")
            head += struct.pack("<Q", len(nb)) + nb + struct.pack(f"<I{len(t.ne)}Q", len(t.ne), *t.ne)
            head += struct.pack("<IQ", t.type, t.offset)
        if self._tensors:                                   # the data section starts aligned
            head += self._pad(len(head))
        self._file.write(head)

    def write_tensor_data(self, name: str, data: TensorData) -> None:
        """Write the data of the next declared tensor (tensors are written in declaration order)."""
        if self._state == "open":
            self.write_header()
        if self._state != "data":
            raise RuntimeError(f"{self.path}: cannot write tensor data, the writer is {self._state}")
        while self._next < len(self._tensors) and self._tensors[self._next].name != name \
                and self._tensors[self._next].source is not None:
            self._write_next(self._tensors[self._next].source)     # queued add_tensor data comes first
        if self._next >= len(self._tensors) or self._tensors[self._next].name != name:
            due = self._tensors[self._next].name if self._next < len(self._tensors) else "none"
            if name not in self._by_name:
                raise ValueError(f"{self.path}: no tensor {name!r} was declared")
            raise ValueError(f"{self.path}: tensor data out of order: got {name!r}, next due is {due!r}")
        self._write_next(data)

    def _write_next(self, data: TensorData | Callable[[], TensorData]) -> None:
        t = self._tensors[self._next]
        if callable(data):
            data = data()
        if isinstance(data, np.ndarray):
            if data.dtype.byteorder == ">":                 # GGUF is little-endian
                data = data.astype(data.dtype.newbyteorder("<"))
            buf = memoryview(np.ascontiguousarray(data)).cast("B")
        else:
            buf = memoryview(data).cast("B")
        if buf.nbytes != t.n_bytes:
            raise ValueError(f"tensor {t.name!r}: got {buf.nbytes} bytes of data, its {t.type.name} shape "
                             f"{_numpy_shape(t.ne)} needs {t.n_bytes}")
        self._file.write(buf)
        self._file.write(self._pad(t.n_bytes))
        t.written = True
        t.source = None
        self._next += 1

    def finish(self) -> Path:
        """Write what is still due, flush, and move the file into place.  Returns the path."""
        try:
            if self._state == "open":
                self.write_header()
            if self._state != "data":
                raise RuntimeError(f"{self.path}: cannot finish, the writer is {self._state}")
            while self._next < len(self._tensors):
                t = self._tensors[self._next]
                if t.source is None:
                    raise ValueError(f"{self.path}: tensor {t.name!r} was declared but its data never written")
                self._write_next(t.source)
            self._file.commit()
            self._state = "finished"
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the partial file; the target is left as it was."""
        if self._file is not None and self._state != "finished":
            self._file.abort()
        if self._state != "finished":
            self._state = "aborted"

    close = finish

    def __enter__(self) -> "GGUFWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
