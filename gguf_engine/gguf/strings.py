"""A lazily decoded GGUF string array.

A 262k-token vocabulary is a quarter of a million length-prefixed strings;
decoding them all when the file is opened costs half a second.  The reader
only walks the length fields to find where the array ends and hands out a
``StringArray``: it behaves like a read-only ``list`` of ``str`` (``len``,
indexing, negative indices, slicing, iteration, ``==`` with a list) and
decodes on first access.  The bytes stay in the memory map until then.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Iterator

import numpy as np

_U64 = struct.Struct("<Q")


def _le_u64_at(region: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Little-endian u64 read at each (unaligned) byte offset of region -> int64 array."""
    idx = offsets[:, None] + np.arange(8)
    b = region[idx].astype(np.uint64)
    return (b << (np.arange(8, dtype=np.uint64) * np.uint64(8))).sum(axis=1).astype(np.int64)


class StringArray(Sequence):
    """Read-only sequence of ``str`` decoded on demand from a GGUF array of strings.

    ``region`` is a uint8 view holding exactly the array's elements (each a u64
    length followed by UTF-8 bytes), already validated to lie inside the file.
    """

    __slots__ = ("_region", "_n", "_where", "_starts", "_ends", "_list")

    def __init__(self, region: np.ndarray, n: int, where: tuple[str, int] = ("", 0),
                 _list: list[str] | None = None):
        self._region = region
        self._n = n
        self._where = where          # ("FILE: key 'K'", file offset of the region), for errors
        self._starts: np.ndarray | None = None
        self._ends: np.ndarray | None = None
        self._list = _list

    @classmethod
    def from_list(cls, items: list[str]) -> "StringArray":
        return cls(np.empty(0, np.uint8), len(items), ("", 0), list(items))

    # -- index -------------------------------------------------------------
    def _index(self) -> None:
        if self._starts is not None:
            return
        mv = memoryview(self._region)
        starts = [0] * self._n
        unpack = _U64.unpack_from
        off = 0
        for i in range(self._n):
            off += 8
            starts[i] = off
            off += unpack(mv, off - 8)[0]
        self._starts = np.array(starts, dtype=np.int64)
        lengths = _le_u64_at(self._region, self._starts - 8)
        self._ends = self._starts + lengths

    def _decode(self, i: int) -> str:
        s, e = int(self._starts[i]), int(self._ends[i])
        try:
            return str(self._region[s:e], "utf-8")
        except UnicodeDecodeError:
            from .reader import GGUFError
            where, base = self._where
            raise GGUFError(f"{where} element {i} is not valid UTF-8 (offset {base + s})") from None

    def raw(self, i: int) -> bytes:
        """The undecoded bytes of element ``i``."""
        if self._list is not None and not len(self._region):
            return self._list[i].encode("utf-8")
        self._index()
        i = range(self._n)[i]
        return self._region[int(self._starts[i]):int(self._ends[i])].tobytes()

    def tolist(self) -> list[str]:
        """All elements as a list of ``str`` (decoded once, then cached)."""
        if self._list is None:
            data = self._region.tobytes()
            unpack = _U64.unpack_from
            out = [""] * self._n
            off = 0
            try:
                for i in range(self._n):
                    (length,) = unpack(data, off)
                    off += 8
                    out[i] = data[off:off + length].decode("utf-8")
                    off += length
            except UnicodeDecodeError:
                self._index()
                self._decode(i)  # raises GGUFError naming the element and its offset
                raise
            self._list = out
        return self._list

    # -- Sequence ----------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if self._list is not None:
            return self._list[i]
        if isinstance(i, slice):
            self._index()
            return [self._decode(j) for j in range(self._n)[i]]
        i = range(self._n)[i]       # normalises negative indices, raises IndexError
        self._index()
        return self._decode(i)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __contains__(self, value) -> bool:
        return value in self.tolist()

    def __eq__(self, other) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # mutable-list semantics: unhashable

    def __repr__(self) -> str:
        if self._n <= 6:
            return f"StringArray({self.tolist()!r})"
        head = ", ".join(repr(self[i]) for i in range(3))
        return f"StringArray([{head}, ... {self._n} strings])"
