"""Memory-mapped GGUF reader (versions 2 and 3, little-endian).

Opening a file parses only its header (metadata and tensor infos); tensor
data stays in the memory map and each tensor's ``.data`` is a zero-copy view.

Dimension order: GGUF stores ``ne[0]`` first, the innermost (fastest
varying) dimension.  ``ReaderTensor.shape`` is numpy order, outermost first;
the reversal happens in exactly one place, ``_numpy_shape``.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterator, Mapping

import numpy as np

from kernels.types import BLOCK_SIZES, GGMLType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


class GGUFError(ValueError):
    """A malformed or unsupported GGUF file."""


class GGUFValueType(IntEnum):
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


# scalar value type -> numpy dtype (little-endian)
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

# types whose .data is a typed view rather than raw bytes
_TYPED_VIEWS = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.BF16: None}


def _numpy_shape(ne: tuple[int, ...]) -> tuple[int, ...]:
    """GGUF dims (innermost first) -> numpy shape (outermost first). The one reversal."""
    return tuple(reversed(ne))


@dataclass(frozen=True)
class ReaderTensor:
    name: str
    type: GGMLType
    shape: tuple[int, ...]      # numpy order, outermost first
    n_elements: int
    n_bytes: int
    offset: int                 # absolute file offset of the data
    raw: np.ndarray             # uint8 view of the data in the map

    @property
    def data(self) -> np.ndarray:
        """uint8 bytes for quantized types; a typed view shaped like the tensor for F32/F16 (BF16 as uint16)."""
        if self.type == GGMLType.F32:
            return self.raw.view(np.float32).reshape(self.shape)
        if self.type == GGMLType.F16:
            return self.raw.view(np.float16).reshape(self.shape)
        if self.type == GGMLType.BF16:
            return self.raw.view(np.uint16).reshape(self.shape)
        return self.raw


class GGUFReader:
    """Read a GGUF file.  ``metadata`` maps key -> Python value; ``tensors`` maps name -> ReaderTensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror}") from None
        size = os.fstat(self._file.fileno()).st_size
        self.file_size = size
        if size == 0:
            self._file.close()
            raise GGUFError(f"{self.path}: empty file (offset 0)")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = np.frombuffer(self._map, dtype=np.uint8)
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise

    # -- low level -------------------------------------------------------
    def _err(self, what: str, offset: int) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (offset {offset})")

    def _need(self, off: int, n: int, what: str) -> None:
        if n < 0 or off + n > self.file_size:
            raise self._err(f"{what}: needs {n} bytes but only {max(self.file_size - off, 0)} remain", off)

    def _scalar(self, off: int, fmt: str, what: str) -> tuple[Any, int]:
        n = struct.calcsize(fmt)
        self._need(off, n, what)
        return struct.unpack_from(fmt, self._map, off)[0], off + n

    def _string(self, off: int, what: str) -> tuple[str, int]:
        n, off = self._scalar(off, "<Q", f"{what} length")
        self._need(off, n, f"{what} of length {n}")
        raw = self._map[off:off + n]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._err(f"{what} is not valid UTF-8", off) from None
        return s, off + n

    def _value(self, off: int, vtype: int, key: str, depth: int = 0) -> tuple[Any, int]:
        try:
            vt = GGUFValueType(vtype)
        except ValueError:
            raise self._err(f"key {key!r}: unknown value type {vtype}", off) from None
        if vt == GGUFValueType.STRING:
            return self._string(off, f"key {key!r} string value")
        if vt == GGUFValueType.ARRAY:
            if depth > 8:
                raise self._err(f"key {key!r}: arrays nested too deeply", off)
            et, off = self._scalar(off, "<I", f"key {key!r} array type")
            n, off = self._scalar(off, "<Q", f"key {key!r} array length")
            try:
                evt = GGUFValueType(et)
            except ValueError:
                raise self._err(f"key {key!r}: unknown array element type {et}", off - 12) from None
            if evt in SCALAR_DTYPES:
                dt = SCALAR_DTYPES[evt]
                self._need(off, n * dt.itemsize, f"key {key!r} array of {n} {evt.name}")
                arr = self._buf[off:off + n * dt.itemsize].view(dt)
                if evt == GGUFValueType.BOOL:
                    arr = arr.astype(bool)
                return arr, off + n * dt.itemsize
            # strings or nested arrays: each element takes at least 8 bytes
            self._need(off, n * 8, f"key {key!r} array of {n} {evt.name}")
            out = []
            for _ in range(n):
                v, off = self._value(off, et, key, depth + 1)
                out.append(v)
            return out, off
        dt = SCALAR_DTYPES[vt]
        self._need(off, dt.itemsize, f"key {key!r} value")
        v = self._buf[off:off + dt.itemsize].view(dt)[0]
        v = bool(v) if vt == GGUFValueType.BOOL else v.item()
        return v, off + dt.itemsize

    # -- header ----------------------------------------------------------
    def _parse(self) -> None:
        self._need(0, 4, "magic")
        magic = bytes(self._map[0:4])
        if magic != GGUF_MAGIC:
            raise self._err(f"bad magic {magic!r}, not a GGUF file", 0)
        version, off = self._scalar(4, "<I", "version")
        if version not in (2, 3):
            if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
                raise self._err("big-endian GGUF files are not supported", 4)
            raise self._err(f"unsupported GGUF version {version} (supported: 2, 3)", 4)
        self.version = version
        n_tensors, off = self._scalar(off, "<Q", "tensor count")
        n_kv, off = self._scalar(off, "<Q", "metadata count")
        # every kv takes >= 8+1+4+1 bytes, every tensor info >= 8+4+8+4+8
        if n_kv * 13 > self.file_size - off:
            raise self._err(f"metadata count {n_kv} cannot fit in the file", 16)
        if n_tensors * 32 > self.file_size - off:
            raise self._err(f"tensor count {n_tensors} cannot fit in the file", 8)

        md: dict[str, Any] = {}
        self.value_types: dict[str, GGUFValueType] = {}
        for _ in range(n_kv):
            kstart = off
            key, off = self._string(off, "metadata key")
            if key in md:
                raise self._err(f"duplicate metadata key {key!r}", kstart)
            vtype, off = self._scalar(off, "<I", f"key {key!r} value type")
            val, off = self._value(off, vtype, key)
            md[key] = val
            self.value_types[key] = GGUFValueType(vtype)
        self.metadata: dict[str, Any] = md

        align = md.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise self._err(f"general.alignment {align!r} is not a power of two", 0)
        self.alignment = align

        infos = []
        names = set()
        for _ in range(n_tensors):
            tstart = off
            name, off = self._string(off, "tensor name")
            if name in names:
                raise self._err(f"duplicate tensor name {name!r}", tstart)
            names.add(name)
            n_dims, off = self._scalar(off, "<I", f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= 4:
                raise self._err(f"tensor {name!r}: n_dims {n_dims} outside 1..4", off - 4)
            self._need(off, 8 * n_dims, f"tensor {name!r} dims")
            ne = struct.unpack_from(f"<{n_dims}Q", self._map, off)
            off += 8 * n_dims
            ttype, off = self._scalar(off, "<I", f"tensor {name!r} type")
            try:
                gt = GGMLType(ttype)
            except ValueError:
                raise self._err(f"tensor {name!r}: unknown tensor type {ttype}", off - 4) from None
            toff, off = self._scalar(off, "<Q", f"tensor {name!r} offset")
            n_el = 1
            for d in ne:
                n_el *= d
                if n_el >= 1 << 62:
                    raise self._err(f"tensor {name!r}: dimensions {list(ne)} overflow", tstart)
            bs, ts = BLOCK_SIZES[gt]
            if ne[0] % bs:
                raise self._err(f"tensor {name!r}: row length {ne[0]} is not a multiple of {gt.name} block size {bs}", tstart)
            infos.append((name, gt, ne, n_el, n_el // bs * ts, toff, tstart))

        data_start = off + (-off) % align
        self.data_offset = data_start
        tensors: dict[str, ReaderTensor] = {}
        spans = []
        for name, gt, ne, n_el, nb, toff, tstart in infos:
            if toff % align:
                raise self._err(f"tensor {name!r}: data offset {toff} is not aligned to {align}", tstart)
            start = data_start + toff
            if start + nb > self.file_size:
                raise self._err(f"tensor {name!r}: data [{start}, {start + nb}) lies outside the file of {self.file_size} bytes", tstart)
            spans.append((start, start + nb, name, tstart))
            tensors[name] = ReaderTensor(name, gt, _numpy_shape(ne), n_el, nb, start, self._buf[start:start + nb])
        spans.sort()
        for (s0, e0, n0, _), (s1, e1, n1, t1) in zip(spans, spans[1:]):
            if s1 < e0 and e1 > s1 and e0 > s0:
                raise self._err(f"tensor {n1!r} data overlaps tensor {n0!r}", t1)
        self.tensors: dict[str, ReaderTensor] = tensors

    # -- conveniences ----------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value; a key starting with '{arch}.' resolves to the model's architecture."""
        if key.startswith("{arch}."):
            key = self.architecture + key[6:]
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key.startswith("{arch}."):
            key = self.architecture + key[6:]
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        return self.metadata[key]

    def tensor(self, name: str) -> ReaderTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None

    def close(self) -> None:
        self.tensors = {}
        self._buf = None
        try:
            self._map.close()
        except (BufferError, AttributeError):
            pass  # views still alive; the map closes when they are collected
        try:
            self._file.close()
        except AttributeError:
            pass

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
