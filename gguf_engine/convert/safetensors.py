"""safetensors reader without torch: headers are indexed up front, each tensor is read when asked for.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), then the data.  ``open_checkpoint`` indexes a Hugging Face model folder: one
``model.safetensors`` or the shards named by ``model.safetensors.index.json``.  Tensors are listed
shard by shard (shards in sorted file-name order), sorted by name inside each shard, which is the
order llama.cpp's converter writes them in.  BF16 is read as raw 16-bit words and widened exactly.
A tensor is read into memory of its own (not memory-mapped), so the pages of tensors already converted
do not stay in the process's resident set: memory stays one tensor deep whatever the model size.
Pickle checkpoints (``*.bin``, ``*.pt``) are refused: loading them can execute code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ConvertError", "SafeTensor", "Checkpoint", "open_checkpoint", "to_float32"]

# safetensors dtype name -> numpy dtype of the stored words (BF16 as uint16 bit patterns)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_MAX_HEADER = 100 << 20


class ConvertError(ValueError):
    """A checkpoint cannot be converted; the message names the file and tensor."""


@dataclass
class SafeTensor:
    """One tensor of a safetensors file: where it lives and what it is."""
    name: str
    dtype: str                 # safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]     # numpy order
    file: Path
    _fh: Any                   # the open file, shared by the tensors of one shard
    _begin: int
    _end: int

    def array(self, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """The stored words of rows [r0, r1) (outermost dimension; all by default), read from the file into
        a new array (BF16 as uint16)."""
        if self.dtype not in _DTYPES:
            raise ConvertError(f"{self.file}: tensor {self.name}: dtype {self.dtype} is not supported "
                               f"(supported: {', '.join(_DTYPES)})")
        dt = _DTYPES[self.dtype]
        shape = self.shape if self.shape else (1,)
        r1 = shape[0] if r1 is None else r1
        row = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize
        out = np.empty((r1 - r0,) + tuple(shape[1:]), dtype=dt)
        view = memoryview(out.reshape(-1).view(np.uint8))
        self._fh.seek(self._begin + r0 * row)
        got = self._fh.readinto(view) if view.nbytes else 0
        if got != view.nbytes:
            raise ConvertError(f"{self.file}: tensor {self.name}: file ends inside its data")
        return out.reshape(self.shape) if not self.shape else out

    def float_array(self, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Rows [r0, r1) as float32, or float16 when stored so (what llama.cpp's converter computes in)."""
        if self.dtype not in FLOAT_DTYPES:
            raise ConvertError(f"{self.file}: tensor {self.name}: dtype {self.dtype} cannot be converted "
                               f"(floating-point weights only: {', '.join(FLOAT_DTYPES)})")
        a = self.array(r0, r1)
        if self.dtype == "F16":
            return a
        return to_float32(a, self.dtype)


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored words -> float32 (BF16 widened exactly by a 16-bit shift)."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)


@dataclass
class Checkpoint:
    """Every tensor of a model folder, in conversion order."""
    folder: Path
    tensors: dict[str, SafeTensor]
    _files: list

    def close(self) -> None:
        self.tensors = {}
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_file(path: Path, files: list) -> dict[str, SafeTensor]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConvertError(f"{path}: cannot open: {e.strerror}") from None
    files.append(f)
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise ConvertError(f"{path}: not a safetensors file (only {size} bytes)")
    n = int.from_bytes(head, "little")
    if n > min(_MAX_HEADER, size - 8):
        raise ConvertError(f"{path}: safetensors header length {n} does not fit the file ({size} bytes)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: safetensors header is not a JSON object")
    data0 = 8 + n
    out: dict[str, SafeTensor] = {}
    for name in sorted(k for k in header if k != "__metadata__"):
        meta = header[name]
        try:
            dtype, shape, (b, e) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path}: tensor {name}: malformed header entry {meta!r}") from None
        itemsize = _DTYPES[dtype].itemsize if dtype in _DTYPES else None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= b <= e or data0 + e > size or (itemsize is not None and e - b != count * itemsize):
            raise ConvertError(f"{path}: tensor {name}: data offsets [{b}, {e}] do not match shape {list(shape)} "
                               f"of {dtype} in a file of {size} bytes")
        out[name] = SafeTensor(name, dtype, shape, path, f, data0 + b, data0 + e)
    return out


def open_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Index the safetensors weights of a Hugging Face model folder (headers only; the files stay open)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            raise ConvertError(f"{index}: no 'weight_map' object") from None
        parts = sorted(set(weight_map.values()))
        missing = [p for p in parts if not (folder / p).is_file()]
        if missing:
            names = sorted(n for n, p in weight_map.items() if p == missing[0])
            raise ConvertError(f"{folder / missing[0]}: shard named by {index.name} is missing "
                               f"(it holds {len(names)} tensors, e.g. {names[0]})")
    elif single.is_file():
        parts, weight_map = [single.name], None
    else:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        if pickles:
            raise ConvertError(f"{folder / pickles[0]}: PyTorch pickle checkpoints are refused (loading them can "
                               "execute arbitrary code); convert the model to safetensors first")
        raise ConvertError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    files: list = []
    tensors: dict[str, SafeTensor] = {}
    try:
        for p in parts:
            for name, t in _read_file(folder / p, files).items():
                if name in tensors:
                    raise ConvertError(f"{folder / p}: tensor {name} is also in {tensors[name].file.name}")
                if weight_map is not None and weight_map.get(name) != p:
                    raise ConvertError(f"{folder / p}: tensor {name} is not listed for this shard in {index.name}")
                tensors[name] = t
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(tensors))
            if absent:
                raise ConvertError(f"{folder / weight_map[absent[0]]}: tensor {absent[0]} listed in {index.name} "
                                   f"is not in the file ({len(absent)} missing)")
    except BaseException:
        for f in files:
            f.close()
        raise
    return Checkpoint(folder, tensors, files)
