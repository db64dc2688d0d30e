"""Importance matrices: per-column sums of squared matmul inputs, read, written and collected.

An importance matrix holds, for each weight matrix ``W`` (n_out, n_in) of a model, the sum over
calibration tokens of ``x_j**2`` for every input column ``j`` (``in_sum2``) and the number of
tokens summed (``counts``; one count per expert for 3D expert tensors).  The quantizer divides
the sums by the counts and uses the result as per-column weights in its error measure.

Two file formats, both as llama.cpp writes them:

* GGUF (current): tensors ``<weight>.in_sum2`` (F32, n_in x n_mat) and ``<weight>.counts``
  (F32, 1 x n_mat), metadata ``general.type = imatrix``, ``imatrix.datasets`` (array of str),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32).
* legacy ``.dat``: int32 n_entries; per entry int32 name length, name bytes, int32 ncall,
  int32 nval, nval float32 values already normalized as ``sum / count * ncall``; then optionally
  int32 chunk count, int32 dataset-name length and the dataset name.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import write_bytes_atomic
from ..gguf.reader import GGUFError, GGUFReader

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


class ImatrixError(ValueError):
    """A malformed importance-matrix file or an entry that does not fit its tensor."""


@dataclass
class ImatrixEntry:
    """Raw statistics of one weight: ``sums`` float32 (n_mat * n_in,), ``counts`` int64 (n_mat,)."""
    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return int(self.counts.size)

    @property
    def n_in(self) -> int:
        return int(self.sums.size // max(1, self.counts.size))


@dataclass
class Imatrix:
    """An importance matrix as stored on disk (raw sums and counts for the GGUF format;
    for a legacy file ``sums`` are the stored normalized values and ``counts`` is ``[ncall]``)."""
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False
    has_metadata: bool = False
    path: str | None = None

    # -- what the quantizer uses ---------------------------------------------------------------
    def quant_weights(self) -> dict[str, np.ndarray]:
        """name -> float32 per-column importance (n_mat * n_in,), normalized as llama-quantize does:
        GGUF sums divided by their per-matrix count (1.0 where a matrix has no count);
        legacy values divided by their ncall (kept as stored when ncall is 0)."""
        out = {}
        for name, e in self.entries.items():
            sums = np.asarray(e.sums, dtype=np.float32)
            if self.is_legacy:
                ncall = int(e.counts[0]) if e.counts.size else 0
                out[name] = (sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else sums.copy()
            else:
                n_mat = max(1, e.counts.size)
                per = sums.reshape(n_mat, -1)
                res = np.ones_like(per)
                for j in range(n_mat):
                    c = np.float32(e.counts[j]) if e.counts.size else np.float32(0)
                    if c > 0:
                        res[j] = per[j] / c
                out[name] = res.reshape(-1)
        return out

    def filtered(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> "Imatrix":
        """Keep entries whose name contains one of ``include`` (if any given), drop those
        containing one of ``exclude`` (substring match, as the quantize command's options)."""
        include, exclude = list(include), list(exclude)
        if include and exclude:
            raise ValueError("--include-weights and --exclude-weights cannot be used together")
        ents = dict(self.entries)
        for pat in exclude:
            ents = {n: e for n, e in ents.items() if pat not in n}
        if include:
            ents = {n: e for n, e in ents.items() if any(p in n for p in include)}
        return Imatrix(ents, list(self.datasets), self.chunk_count, self.chunk_size, self.is_legacy,
                       self.has_metadata, self.path)

    def merge(self, other: "Imatrix") -> None:
        """Accumulate another file into this one (raw GGUF-style statistics), as combining runs does."""
        chunk_size = self.chunk_size or other.chunk_size
        for name, e in other.entries.items():
            sums = np.asarray(e.sums, np.float32)
            counts = np.asarray(e.counts, np.int64)
            if other.is_legacy:
                if chunk_size <= 0:
                    raise ImatrixError(f"{other.path}: cannot merge a legacy imatrix without a chunk size")
                sums = sums * np.float32(chunk_size)
                counts = counts[:1] * chunk_size
            cur = self.entries.get(name)
            if cur is None:
                self.entries[name] = ImatrixEntry(sums.copy(), counts.copy())
                continue
            if cur.sums.size != sums.size:
                raise ImatrixError(f"mismatched sums size for {name}: {sums.size} != {cur.sums.size}")
            if cur.counts.size == 1 and counts.size > 1:
                cur.counts = np.full(counts.size, cur.counts[0], np.int64)
            if other.is_legacy:
                counts = np.full(cur.counts.size, counts[0], np.int64)
            if cur.counts.size != counts.size:
                raise ImatrixError(f"mismatched counts size for {name}: {counts.size} != {cur.counts.size}")
            cur.sums = cur.sums + sums
            cur.counts = cur.counts + counts
        self.datasets.extend(other.datasets)
        self.chunk_size = chunk_size
        max_count = max((int(c.max()) for c in (e.counts for e in self.entries.values()) if c.size), default=0)
        self.chunk_count = max_count // chunk_size if chunk_size else self.chunk_count
        self._qw = None                       # the entries changed: recompute the quantizer's weights

    def quant_weights_cached(self) -> dict[str, np.ndarray]:
        """``quant_weights()``, computed once (``merge`` starts it afresh)."""
        if getattr(self, "_qw", None) is None:
            self._qw = self.quant_weights()
        return self._qw


# -- reading ----------------------------------------------------------------------------------

def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read an importance matrix in either format (GGUF is recognized by its magic)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ImatrixError(f"{path}: cannot open: {e.strerror}") from None
    if magic == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path)


def _read_gguf(path: str) -> Imatrix:
    try:
        r = GGUFReader(path)
    except GGUFError as e:
        raise ImatrixError(str(e)) from None
    with r:
        if not r.tensors:
            raise ImatrixError(f"{path}: no data in file")
        md = r.metadata
        datasets = md.get(KEY_DATASETS)
        ds_list = [str(s) for s in datasets] if datasets is not None and not isinstance(datasets, str) else []
        im = Imatrix(datasets=ds_list, path=path,
                     has_metadata=all(k in md for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE)),
                     chunk_count=int(md.get(KEY_CHUNK_COUNT, 0) or 0),
                     chunk_size=int(md.get(KEY_CHUNK_SIZE, 0) or 0))
        pairs: dict[str, list] = {}
        for tname, t in r.tensors.items():
            if tname.endswith(SUM_SUFFIX):
                pairs.setdefault(tname[: -len(SUM_SUFFIX)], [None, None])[0] = t
            elif tname.endswith(COUNT_SUFFIX):
                pairs.setdefault(tname[: -len(COUNT_SUFFIX)], [None, None])[1] = t
        for name in sorted(pairs):
            s, c = pairs[name]
            if s is None or c is None:
                raise ImatrixError(f"{path}: mismatched sums and counts for {name}")
            if int(s.type) != 0 or int(c.type) != 0:
                raise ImatrixError(f"{path}: sums and counts for {name} must be F32")
            sums = np.array(s.data, dtype=np.float32).reshape(-1)
            counts = np.rint(np.array(c.data, dtype=np.float64).reshape(-1)).astype(np.int64)
            if counts.size == 0 or sums.size % counts.size:
                raise ImatrixError(f"{path}: {name}: {sums.size} sums do not split into {counts.size} matrices")
            im.entries[name] = ImatrixEntry(sums, counts)
    return im


def _read_legacy(path: str) -> Imatrix:
    data = Path(path).read_bytes()
    off = 0

    def take(fmt: str, what: str):
        nonlocal off
        size = struct.calcsize(fmt)
        if off + size > len(data):
            raise ImatrixError(f"{path}: truncated while reading {what} (offset {off})")
        vals = struct.unpack_from(fmt, data, off)
        off += size
        return vals

    (n_entries,) = take("<i", "entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix file (GGUF or legacy): entry count {n_entries} (offset 0)")
    im = Imatrix(is_legacy=True, path=path)
    for i in range(n_entries):
        (length,) = take("<i", f"name length of entry {i + 1}")
        if length < 0 or off + length > len(data):
            raise ImatrixError(f"{path}: bad name length {length} for entry {i + 1} (offset {off - 4})")
        name = data[off: off + length].decode("utf-8", errors="replace")
        off += length
        ncall, nval = take("<ii", f"ncall/nval of entry {name!r}")
        if nval < 1 or off + 4 * nval > len(data):
            raise ImatrixError(f"{path}: bad value count {nval} for entry {name!r} (offset {off - 4})")
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=off).astype(np.float32)
        off += 4 * nval
        im.entries[name] = ImatrixEntry(sums, np.array([ncall], np.int64))
    if off + 4 <= len(data):
        (im.chunk_count,) = take("<i", "chunk count")
        if off + 4 <= len(data):
            (length,) = take("<i", "dataset name length")
            if 0 < length <= len(data) - off:
                im.datasets.append(data[off: off + length].decode("utf-8", errors="replace"))
    return im


# -- writing ----------------------------------------------------------------------------------

def write_imatrix_gguf(im: Imatrix, path: str | os.PathLike) -> None:
    """Write raw sums and counts in the GGUF format (entries in name order)."""
    from ..gguf.constants import GGUFValueType as V
    from ..gguf.writer import GGUFWriter
    if im.is_legacy:
        raise ImatrixError("a legacy imatrix holds normalized values; merge it into a raw one before saving as GGUF")
    with GGUFWriter(os.fspath(path)) as w:
        w.add_key("general.type", "imatrix", V.STRING)
        w.add_key(KEY_DATASETS, [str(d) for d in im.datasets], V.ARRAY, V.STRING)
        w.add_key(KEY_CHUNK_COUNT, int(im.chunk_count), V.UINT32)
        w.add_key(KEY_CHUNK_SIZE, int(im.chunk_size), V.UINT32)
        for name in sorted(im.entries):
            e = im.entries[name]
            if e.sums.size == 0 or e.counts.size == 0:
                continue
            n_mat = e.counts.size
            # (n_mat, n_in) and (n_mat, 1); a single matrix is stored one-dimensional, as ggml does
            sums = np.asarray(e.sums, np.float32).reshape(n_mat, -1)
            counts = np.asarray(e.counts, np.float32).reshape(n_mat, 1)
            if n_mat == 1:
                sums, counts = sums.reshape(-1), counts.reshape(-1)
            w.add_tensor(name + SUM_SUFFIX, sums)
            w.add_tensor(name + COUNT_SUFFIX, counts)


def write_imatrix_dat(im: Imatrix, path: str | os.PathLike, dataset: str = "") -> None:
    """Write the legacy binary format (values stored as ``sum / count * ncall``; entries with
    no data at all are skipped, matrices without data are stored as 1.0)."""
    if im.is_legacy:
        raise ImatrixError("this imatrix is already legacy data; write it from raw statistics")
    chunk_size = im.chunk_size
    if chunk_size <= 0:
        raise ImatrixError("writing the legacy format needs the chunk size")
    names = sorted(n for n, e in im.entries.items() if e.counts.size and (e.counts != 0).any())
    parts = [struct.pack("<i", len(names))]
    for name in names:
        e = im.entries[name]
        raw = name.encode("utf-8")
        ncall = (int(e.counts.max()) + chunk_size - 1) // chunk_size
        n_mat = e.counts.size
        vals = np.asarray(e.sums, np.float32).reshape(n_mat, -1).copy()
        cnt = np.asarray(e.counts, np.float32).reshape(n_mat, 1).repeat(vals.shape[1], axis=1)
        empty = cnt == 0
        vals[empty] = 1.0
        cnt[empty] = 1.0
        out = ((vals / cnt) * np.float32(ncall)).astype("<f4")
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, out.size), out.tobytes()]
    ds = (dataset or (im.datasets[-1] if im.datasets else "")).encode("utf-8")
    parts += [struct.pack("<i", im.chunk_count), struct.pack("<i", len(ds)), ds]
    write_bytes_atomic(path, b"".join(parts))


# -- collection -------------------------------------------------------------------------------

class ImatrixCollector:
    """Accumulates squared matmul inputs per weight, as llama-imatrix does.

    Call ``add(weight_name, x)`` with the float32 input activations ``x`` (n_tokens, n_in) of every
    matmul against ``weight_name``; for expert (3D) weights call ``add_experts(name, x, ids, n_expert)``.
    Like llama.cpp it only records weights of the repeating blocks (``blk.*``) and, with
    ``process_output``, ``output.weight``, and it ignores batches of fewer than 16 tokens.
    """

    MIN_TOKENS = 16

    def __init__(self, chunk_size: int, process_output: bool = False):
        self.chunk_size = int(chunk_size)
        self.process_output = process_output
        self.stats: dict[str, ImatrixEntry] = {}
        self.datasets: list[str] = []
        self.last_chunk = 0

    def wants(self, name: str, n_tokens: int) -> bool:
        if n_tokens < self.MIN_TOKENS:
            return False
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def add(self, name: str, x: np.ndarray) -> None:
        """Dense matmul: x (n_tokens, n_in) or (..., n_in); every row counts once."""
        x = np.asarray(x)
        n_in = x.shape[-1]
        x2 = x.reshape(-1, n_in)
        if not self.wants(name, x2.shape[0]):
            return
        x2 = x2.astype(np.float32, copy=False)
        e = self.stats.get(name)
        if e is None:
            e = self.stats[name] = ImatrixEntry(np.zeros(n_in, np.float32), np.zeros(1, np.int64))
        elif e.sums.size != n_in:
            raise ImatrixError(f"inconsistent size for {name} ({e.sums.size} vs {n_in})")
        if e.counts.size > 1 and (e.counts == e.counts[0]).all():
            e.counts = e.counts[:1].copy()
        sq = np.einsum("ij,ij->j", x2, x2, dtype=np.float32)   # (n_in,) sum of squares per column
        if not np.isfinite(sq).all():
            raise ImatrixError(f"non-finite values detected in {name}")
        e.sums += sq
        e.counts += x2.shape[0]
        self._update_chunk(int(e.counts.max()))

    def add_experts(self, name: str, x: np.ndarray, ids: np.ndarray, n_expert: int) -> None:
        """Expert matmul: x (n_tokens, n_used, n_in) or (n_tokens, 1, n_in) broadcast over the
        selected experts; ids int (n_tokens, n_used) the expert of each slot."""
        x = np.asarray(x, dtype=np.float32)
        ids = np.asarray(ids)
        n_tokens, n_used = ids.shape
        n_in = x.shape[-1]
        e = self.stats.get(name)
        if e is None:
            e = self.stats[name] = ImatrixEntry(np.zeros(n_in * n_expert, np.float32),
                                                np.zeros(n_expert, np.int64))
        if e.counts.size == 1 and n_expert > 1:
            e.counts = np.full(n_expert, e.counts[0], np.int64)
        if e.sums.size != n_in * n_expert:
            raise ImatrixError(f"inconsistent size for {name} ({e.sums.size} vs {n_in * n_expert})")
        acc = e.sums.reshape(n_expert, n_in)
        for slot in range(n_used):
            xs = x[:, slot % x.shape[1], :]
            for ex in np.unique(ids[:, slot]):
                if not 0 <= ex < n_expert:
                    raise ImatrixError(f"{name}: expert id {ex} outside [0, {n_expert})")
                rows = xs[ids[:, slot] == ex]
                acc[ex] += np.einsum("ij,ij->j", rows, rows, dtype=np.float32)
                e.counts[ex] += rows.shape[0]
        if not np.isfinite(acc).all():
            raise ImatrixError(f"non-finite values detected in {name}")
        self._update_chunk(int(e.counts.max()))

    def _update_chunk(self, count: int) -> None:
        n_chunk = count // self.chunk_size if self.chunk_size else 0
        if n_chunk > self.last_chunk:
            self.last_chunk = n_chunk

    def to_imatrix(self, dataset: str | None = None) -> Imatrix:
        datasets = list(self.datasets) + ([dataset] if dataset else [])
        return Imatrix({n: ImatrixEntry(e.sums.copy(), e.counts.copy()) for n, e in self.stats.items()},
                       datasets=datasets, chunk_count=self.last_chunk, chunk_size=self.chunk_size,
                       has_metadata=True)

    def load(self, im: Imatrix) -> None:
        """Start from a previous result (--in-file), as llama-imatrix does."""
        base = Imatrix({n: e for n, e in self.stats.items()}, list(self.datasets), self.last_chunk,
                       self.chunk_size)
        base.merge(im)
        self.stats, self.datasets = base.entries, base.datasets
        self.last_chunk = base.chunk_count


# -- statistics (--show-statistics) -----------------------------------------------------------

def _split_name(name: str) -> tuple[str, str]:
    """(layer, short tensor name): blk.3.attn_q.weight -> ("3", "attn_q"); no block -> "-"."""
    parts = name.split(".")
    layer = next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "blk"), "-")
    tensor = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), name)
    return layer, tensor


def imatrix_statistics(im: Imatrix) -> list[dict]:
    """Per-entry statistics of the mean squared activations (as llama-imatrix --show-statistics):
    sum, min, max, mean, std, share of active columns (> 1e-5), entropy and its normalized form,
    share of columns more than one std above the mean (ZD), cosine similarity with the same tensor
    of the previous layer.  Sorted by tensor name, then by decreasing sum."""
    rows = []
    acts_by_name = {}
    for name, e in im.entries.items():
        per = np.asarray(e.sums, np.float32).reshape(max(1, e.counts.size), -1)
        cnt = np.asarray(e.counts, np.float64)
        if im.is_legacy:
            acts = per.reshape(-1)
        else:
            keep = cnt > 0
            if not keep.any():
                continue
            acts = (per[keep] / cnt[keep][:, None]).astype(np.float32).reshape(-1)
        total = float(acts.sum(dtype=np.float32))
        mean = total / acts.size
        std = float(np.sqrt(max(0.0, float((acts * acts).sum(dtype=np.float32)) / acts.size - mean * mean)))
        p = acts / total if total > 0 else np.zeros_like(acts)
        entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum()) if total > 0 else 0.0
        zd = float(((acts - mean) / std > 1).mean()) if std > 0 else 0.0
        layer, tensor = _split_name(name)
        rows.append(dict(name=name, layer=layer, tensor=tensor, sum=total, min=float(acts.min()),
                         max=float(acts.max()), mean=mean, std=std, active=float((np.abs(acts) > 1e-5).mean()),
                         n=int(acts.size), entropy=entropy,
                         entropy_norm=100.0 * entropy / np.log2(acts.size) if acts.size > 1 else 0.0,
                         zd=zd, cossim=0.0))
        acts_by_name[name] = np.asarray(e.sums, np.float64)
    for r in rows:
        if r["layer"] != "-":
            prev = r["name"].replace(f"blk.{r['layer']}.", f"blk.{int(r['layer']) - 1}.", 1)
            if prev in acts_by_name:
                a, b = acts_by_name[r["name"]], acts_by_name[prev]
                if a.size == b.size:
                    r["cossim"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rows.sort(key=lambda r: (r["tensor"], -r["sum"]))
    return rows


def format_statistics(rows: list[dict]) -> list[str]:
    out = [" Layer\t       Tensor\t          Σ(Act²)\t  Min\t            Max\t           μ\t   σ\t % Active\t"
           "N\t   Entropy\tE (norm)\tZD\t  CosSim", "=" * 120]
    for r in rows:
        out.append(f"{r['layer']:>5s}\t{r['tensor']:<20s}\t{r['sum']:10.2f}\t{r['min']:8.4f}\t{r['max']:11.4f}\t"
                   f"{r['mean']:6.2f}\t{r['std']:6.2f}\t{100 * r['active']:8.2f}%\t{r['n']:6d}\t"
                   f"{r['entropy']:10.4f}\t{r['entropy_norm']:6.2f}%\t{100 * r['zd']:10.2f}%\t{r['cossim']:8.4f}")
    return out
