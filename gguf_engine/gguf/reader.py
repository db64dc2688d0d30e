"""Memory-mapped GGUF reader (versions 2 and 3, little-endian).

Opening a file parses only its header (metadata and tensor infos); tensor
data stays in the memory map and each tensor's ``.data`` is a zero-copy view.
Numeric metadata arrays are zero-copy views too, and string arrays are
``StringArray`` objects that decode on first access (a list of ``str`` in
every way a consumer needs).

Dimension order: GGUF stores ``ne[0]`` first, the innermost (fastest
varying) dimension.  ``ReaderTensor.shape`` is numpy order, outermost first;
the reversal happens in exactly one place, ``_numpy_shape``.

Every count and length is checked against the bytes left in the file before
it is used, so a corrupt file raises ``GGUFError`` (naming the file, the
problem and the byte offset) instead of allocating or reading out of range.

Metadata types: ``value_types[key]`` is the stored ``GGUFValueType``;
``array_types[key]`` the element type of an ARRAY; ``type_spec(key)`` the full
type (``(ARRAY, element_spec)`` for arrays, recursively), which is what
``GGUFWriter.add_key`` takes to write the value back with the same types.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from kernels.types import BLOCK_SIZES, GGMLType

from .constants import (ALIGNMENT_KEY, ARCHITECTURE_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSIONS,
                        INTEGER_TYPES, SCALAR_DTYPES, GGUFValueType)
from .strings import StringArray

__all__ = ["GGUFReader", "GGUFError", "GGUFValueType", "ReaderTensor", "StringArray", "TypeSpec",
           "GGUF_MAGIC", "DEFAULT_ALIGNMENT", "SCALAR_DTYPES"]

# A value's full type: a GGUFValueType, or (ARRAY, element spec) for arrays.  For an array of
# arrays whose members differ in type the element spec is a list with one spec per member.
TypeSpec = Union[GGUFValueType, tuple]

MAX_ARRAY_DEPTH = 8
# arrays inside arrays, over the whole file: each is a Python object (real models have none), so
# millions of tiny ones would cost minutes and gigabytes to open
MAX_NESTED_ARRAYS = 1 << 16
# a tensor dimension is a signed 64-bit count in ggml; with the element count below 2^62
MAX_DIM = 1 << 62
_MIN_KV_BYTES = 8 + 4 + 1              # key length (key may be empty), value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GGUFError(ValueError):
    """A malformed or unsupported GGUF file."""


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
    """Read a GGUF file.  ``metadata`` maps key -> Python value; ``tensors`` maps name -> ReaderTensor.

    Scalars come back as ``int``/``float``/``bool``/``str``; numeric arrays as read-only numpy views
    (BOOL arrays as a ``bool`` array); string arrays as ``StringArray``; arrays of arrays as lists.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, GGUFValueType] = {}
        self.array_types: dict[str, GGUFValueType] = {}
        self.tensors: dict[str, ReaderTensor] = {}
        self._specs: dict[str, TypeSpec] = {}
        self._n_nested = 0
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.file_size = size
            if size == 0:
                raise self._err("empty file", 0)
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._buf = np.frombuffer(self._map, dtype=np.uint8)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- low level -------------------------------------------------------
    def _err(self, what: str, offset: int) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (offset {offset})")

    def _need(self, off: int, n: int, what: str) -> None:
        if n < 0 or off + n > self.file_size:
            raise self._err(f"{what} needs {n} bytes but only {max(self.file_size - off, 0)} remain", off)

    def _u32(self, off: int, what: str) -> tuple[int, int]:
        self._need(off, 4, what)
        return _U32.unpack_from(self._map, off)[0], off + 4

    def _u64(self, off: int, what: str) -> tuple[int, int]:
        self._need(off, 8, what)
        return _U64.unpack_from(self._map, off)[0], off + 8

    def _string(self, off: int, what: str) -> tuple[str, int]:
        n, off = self._u64(off, f"{what} length")
        self._need(off, n, f"{what} of length {n}")
        try:
            s = self._map[off:off + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self._err(f"{what} is not valid UTF-8", off) from None
        return s, off + n

    def _value_type(self, code: int, off: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(code)
        except ValueError:
            raise self._err(f"{what}: unknown value type {code}", off) from None

    def _string_array(self, off: int, n: int, key: str) -> tuple[StringArray, int]:
        """Walk the length prefixes of n strings (checking each against the file) without decoding."""
        start = off
        size = self.file_size
        m = self._map
        unpack = _U64.unpack_from
        for i in range(n):
            if off + 8 > size:
                raise self._err(f"key {key!r}: string {i} of {n} length needs 8 bytes but only "
                                f"{max(size - off, 0)} remain", off)
            (length,) = unpack(m, off)
            off += 8 + length
            if off > size:
                raise self._err(f"key {key!r}: string {i} of {n} has length {length} but only "
                                f"{size - off + length} bytes remain", off - length - 8)
        region = self._buf[start:off]
        return StringArray(region, n, (f"{self.path}: key {key!r}", start)), off

    def _value(self, off: int, vt: GGUFValueType, key: str, depth: int = 0) -> tuple[Any, int, TypeSpec]:
        """Parse one value of type vt at off -> (value, next offset, type spec)."""
        if vt == GGUFValueType.STRING:
            s, off = self._string(off, f"key {key!r} string value")
            return s, off, vt
        if vt == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self._err(f"key {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}", off)
            if depth:
                self._n_nested += 1
                if self._n_nested > MAX_NESTED_ARRAYS:
                    raise self._err(f"key {key!r}: more than {MAX_NESTED_ARRAYS} arrays nested in arrays "
                                    "in the file", off)
            astart = off
            et, off = self._u32(off, f"key {key!r} array element type")
            evt = self._value_type(et, astart, f"key {key!r} array element")
            n, off = self._u64(off, f"key {key!r} array length")
            if evt in SCALAR_DTYPES:
                dt = SCALAR_DTYPES[evt]
                self._need(off, n * dt.itemsize, f"key {key!r}: array of {n} {evt.name}")
                arr = self._buf[off:off + n * dt.itemsize].view(dt)
                if evt == GGUFValueType.BOOL:
                    arr = arr != 0
                return arr, off + n * dt.itemsize, (vt, evt)
            if evt == GGUFValueType.STRING:
                self._need(off, n * 8, f"key {key!r}: array of {n} strings")
                arr, off = self._string_array(off, n, key)
                return arr, off, (vt, evt)
            # array of arrays: every member takes at least 12 bytes (element type + length)
            self._need(off, n * 12, f"key {key!r}: array of {n} arrays")
            out, specs = [], []
            for _ in range(n):
                v, off, spec = self._value(off, GGUFValueType.ARRAY, key, depth + 1)
                out.append(v)
                specs.append(spec)
            if not specs:
                return out, off, (vt, GGUFValueType.ARRAY)
            same = all(s == specs[0] for s in specs)
            return out, off, (vt, specs[0] if same else specs)
        dt = SCALAR_DTYPES[vt]
        self._need(off, dt.itemsize, f"key {key!r} {vt.name} value")
        v = self._buf[off:off + dt.itemsize].view(dt)[0]
        v = bool(v) if vt == GGUFValueType.BOOL else v.item()
        return v, off + dt.itemsize, vt

    # -- header ----------------------------------------------------------
    def _parse(self) -> None:
        self._need(0, 4, "magic")
        magic = bytes(self._map[0:4])
        if magic != GGUF_MAGIC:
            raise self._err(f"bad magic {magic!r}, not a GGUF file", 0)
        version, off = self._u32(4, "version")
        if version not in GGUF_VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped in GGUF_VERSIONS:
                raise self._err(f"big-endian GGUF file (version {swapped} byte-swapped); "
                                "only little-endian files are supported", 4)
            raise self._err(f"unsupported GGUF version {version} (supported: 2, 3)", 4)
        self.version = version
        n_tensors, off = self._u64(off, "tensor count")
        n_kv, off = self._u64(off, "metadata count")
        if n_kv * _MIN_KV_BYTES > self.file_size - off:
            raise self._err(f"metadata count {n_kv} cannot fit in the {self.file_size - off} bytes left", 16)
        if n_tensors * _MIN_TENSOR_INFO_BYTES > self.file_size - off:
            raise self._err(f"tensor count {n_tensors} cannot fit in the {self.file_size - off} bytes left", 8)

        md = self.metadata
        align_at = 0
        for _ in range(n_kv):
            kstart = off
            key, off = self._string(off, "metadata key")
            if key in md:
                raise self._err(f"duplicate metadata key {key!r}", kstart)
            tstart = off
            code, off = self._u32(off, f"key {key!r} value type")
            vt = self._value_type(code, tstart, f"key {key!r}")
            if key == ALIGNMENT_KEY:
                align_at = off
            val, off, spec = self._value(off, vt, key)
            md[key] = val
            self.value_types[key] = vt
            if vt == GGUFValueType.ARRAY:
                self._specs[key] = spec
                self.array_types[key] = spec[1] if isinstance(spec[1], GGUFValueType) else GGUFValueType.ARRAY

        align = md.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
        if (ALIGNMENT_KEY in md and self.value_types[ALIGNMENT_KEY] not in INTEGER_TYPES) \
                or not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise self._err(f"{ALIGNMENT_KEY} {align!r} is not a power of two", align_at)
        self.alignment = align

        infos = []
        names: set[str] = set()
        for _ in range(n_tensors):
            tstart = off
            name, off = self._string(off, "tensor name")
            if name in names:
                raise self._err(f"duplicate tensor name {name!r}", tstart)
            names.add(name)
            n_dims, off = self._u32(off, f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= 4:
                raise self._err(f"tensor {name!r}: n_dims {n_dims} outside 1..4", off - 4)
            self._need(off, 8 * n_dims, f"tensor {name!r} dims")
            ne = struct.unpack_from(f"<{n_dims}Q", self._map, off)
            dims_at = off
            off += 8 * n_dims
            ttype, off = self._u32(off, f"tensor {name!r} type")
            try:
                gt = GGMLType(ttype)
            except ValueError:
                raise self._err(f"tensor {name!r}: unknown tensor type {ttype}", off - 4) from None
            toff, off = self._u64(off, f"tensor {name!r} data offset")
            n_el = 1
            for d in ne:
                if d >= MAX_DIM:
                    raise self._err(f"tensor {name!r}: dimension {d} of {list(ne)} is out of range", dims_at)
                n_el *= d
                if n_el >= 1 << 62:
                    raise self._err(f"tensor {name!r}: dimensions {list(ne)} overflow 64 bits", dims_at)
            bs, ts = BLOCK_SIZES[gt]
            if ne[0] % bs:
                raise self._err(f"tensor {name!r}: row length {ne[0]} is not a multiple of the "
                                f"{gt.name} block size {bs}", dims_at)
            infos.append((name, gt, ne, n_el, n_el // bs * ts, toff, tstart))

        data_start = off + (-off) % self.alignment
        self.data_offset = data_start
        spans = []
        for name, gt, ne, n_el, nb, toff, tstart in infos:
            if toff % self.alignment:
                raise self._err(f"tensor {name!r}: data offset {toff} is not a multiple of the "
                                f"alignment {self.alignment}", tstart)
            start = data_start + toff
            if start + nb > self.file_size:
                raise self._err(f"tensor {name!r}: data [{start}, {start + nb}) lies outside the file "
                                f"of {self.file_size} bytes", tstart)
            if nb:
                spans.append((start, start + nb, name, tstart))
            self.tensors[name] = ReaderTensor(name, gt, _numpy_shape(ne), n_el, nb, start,
                                              self._buf[start:start + nb])
        spans.sort()
        for (s0, e0, n0, _), (s1, e1, n1, t1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise self._err(f"tensor {n1!r} data [{s1}, {e1}) overlaps tensor {n0!r} data [{s0}, {e0})", t1)

    # -- conveniences ----------------------------------------------------
    @property
    def architecture(self) -> str:
        arch = self.metadata.get(ARCHITECTURE_KEY, "")
        return arch if isinstance(arch, str) else ""

    def _resolve(self, key: str) -> str:
        if key.startswith("{arch}."):
            return self.architecture + key[6:]
        return key

    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value; a key starting with '{arch}.' resolves to the model's architecture."""
        return self.metadata.get(self._resolve(key), default)

    def require(self, key: str) -> Any:
        """Metadata value that must be present ('{arch}.' resolved); GGUFError names the key if not."""
        key = self._resolve(key)
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        return self.metadata[key]

    def type_spec(self, key: str) -> TypeSpec:
        """Full stored type of a key: a GGUFValueType, or (ARRAY, element spec) for arrays."""
        key = self._resolve(key)
        if key not in self.value_types:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        return self._specs.get(key, self.value_types[key])

    def field(self, key: str) -> tuple[Any, TypeSpec]:
        """(value, type spec) of a key: exactly what ``GGUFWriter.add_key(key, value, spec)`` takes."""
        return self.require(key), self.type_spec(key)

    def tensor(self, name: str) -> ReaderTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None

    def release_rows(self, tensor: ReaderTensor, r0: int, r1: int) -> None:
        """release_pages for the whole file pages inside rows r0..r1-1 of a 2-D tensor (of a 3-D
        one: the rows of all its matrices in order, as if flattened to 2-D)."""
        m = getattr(self, "_map", None)
        if m is None or not hasattr(mmap, "MADV_DONTNEED") or len(tensor.shape) not in (2, 3):
            return
        row = tensor.n_bytes // (tensor.shape[0] * (tensor.shape[1] if len(tensor.shape) == 3 else 1))
        page = mmap.PAGESIZE
        a = -(-(tensor.offset + r0 * row) // page) * page
        b = (tensor.offset + r1 * row) // page * page
        if b > a:
            try:
                m.madvise(mmap.MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):
                pass

    def release_pages(self) -> None:
        """Tell the OS the mapped file pages read so far are no longer needed (they stay
        valid: a later access reads them back).  For callers that copied the tensors."""
        m = getattr(self, "_map", None)
        if m is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                m.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Release the file.  Views handed out earlier keep the map alive until they are collected."""
        self.tensors = {}
        self._buf = None
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views still alive; the map closes when they are collected
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFReader({self.path!r}: v{getattr(self, 'version', '?')}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")
