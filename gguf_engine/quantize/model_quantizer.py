"""Quantize a whole GGUF model file: ``quantize_model(in_path, out_path, ftype, imatrix=None, ...)``.

The output is what ``llama-quantize`` makes from the same input: the same tensor types (the
mixture rules of ``mixture.py``), the same tensor order, every metadata key kept with its
stored type, ``general.quantization_version`` and ``general.file_type`` set, and the
``quantize.imatrix.*`` keys recorded when an importance matrix was used.

Tensors are streamed one at a time (and big ones in slabs of rows): read from the memory-mapped
input, converted to float32, quantized by the kernels, written to a temporary file that replaces
the output only when everything succeeded.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kernels.types import GGMLType, as_type, row_bytes

from ..gguf.constants import GGUFValueType as V
from ..gguf.reader import GGUFReader
from ..atomic import check_output_path
from ..gguf.writer import GGUFWriter
from .ftypes import LlamaFileType, ParsedFType, parse_ftype
from .imatrix import Imatrix, ImatrixEntry, ImatrixError, read_imatrix
from .mixture import MixtureOptions, ModelInfo, plan_types

QUANTIZATION_VERSION = 2
KEY_FILE_TYPE = "general.file_type"
KEY_QUANT_VERSION = "general.quantization_version"
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

SLAB_BYTES = 256 << 20   # float32 working set per slab of rows
STREAM_SLAB_BYTES = 64 << 20   # the same for an input that computes its rows (a model being converted)

_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


class QuantizeError(ValueError):
    """The quantization cannot proceed (bad input, missing importance data, ...)."""


# -- options ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVOverride:
    """A metadata value forced into the output (``--override-kv KEY=TYPE:VALUE``)."""
    key: str
    vtype: V
    value: Any

    @classmethod
    def parse(cls, text: str) -> "KVOverride":
        """``KEY=int:N`` | ``KEY=float:X`` | ``KEY=bool:true|false`` | ``KEY=str:TEXT`` (as llama.cpp;
        integers are stored as UINT32 of their absolute value, floats as FLOAT32)."""
        key, sep, rest = text.partition("=")
        if not sep or not key or len(key) >= 128:
            raise ValueError(f"malformed KV override {text!r}: expected KEY=TYPE:VALUE")
        kind, sep, val = rest.partition(":")
        if not sep:
            raise ValueError(f"invalid type for KV override {text!r}: expected int:, float:, bool: or str:")
        if kind == "int":
            try:
                n = abs(int(val.strip() or "0"))
            except ValueError:
                raise ValueError(f"invalid integer in KV override {text!r}") from None
            if n > 0xFFFFFFFF:
                raise ValueError(f"KV override {text!r}: {n} does not fit in UINT32")
            return cls(key, V.UINT32, n)
        if kind == "float":
            try:
                return cls(key, V.FLOAT32, float(val))
            except ValueError:
                raise ValueError(f"invalid float in KV override {text!r}") from None
        if kind == "bool":
            if val not in ("true", "false"):
                raise ValueError(f"invalid boolean value for KV override {text!r} (true or false)")
            return cls(key, V.BOOL, val == "true")
        if kind == "str":
            if len(val) > 127:
                raise ValueError(f"malformed KV override {text!r}: value cannot exceed 127 chars")
            return cls(key, V.STRING, val)
        raise ValueError(f"invalid type for KV override {text!r}: expected int:, float:, bool: or str:")


@dataclass
class QuantizeResult:
    """What was written."""
    out_path: str
    ftype: LlamaFileType
    types: dict[str, GGMLType]
    n_tensors: int
    n_elements: int
    size_before: int
    size_after: int
    n_fallback: int
    seconds: float
    imatrix_entries: int = 0

    @property
    def bpw_before(self) -> float:
        return self.size_before * 8.0 / max(1, self.n_elements)

    @property
    def bpw_after(self) -> float:
        return self.size_after * 8.0 / max(1, self.n_elements)


# -- kernels adapters ---------------------------------------------------------------------------

def _kernel_quantize(x: np.ndarray, qtype: GGMLType, imatrix: np.ndarray | None) -> np.ndarray:
    """float32 (n_rows, n_per_row) -> uint8 (n_rows, row_bytes) through the kernels."""
    from kernels import quantize
    # the float types take no importance matrix (ggml ignores it for them)
    return quantize(x, qtype, imatrix=None if qtype in _FLOAT_TYPES else imatrix)


def _can_encode(qtype: GGMLType) -> bool:
    from kernels.encoders import ENCODERS
    return qtype in ENCODERS


def _to_float32(raw: np.ndarray, qtype: GGMLType, n_rows: int, n_per_row: int,
                allow_requantize: bool, name: str) -> np.ndarray:
    """Raw bytes of n_rows rows -> float32 (n_rows, n_per_row)."""
    if qtype == GGMLType.F32:
        return raw.view(np.float32).reshape(n_rows, n_per_row)
    if qtype == GGMLType.F16:
        return raw.view(np.float16).reshape(n_rows, n_per_row).astype(np.float32)
    if qtype == GGMLType.BF16:
        u = raw.view(np.uint16).astype(np.uint32)
        u <<= 16
        return u.view(np.float32).reshape(n_rows, n_per_row)
    if not allow_requantize:
        raise QuantizeError(f"requantizing from type {qtype.name} is disabled (tensor {name}); "
                            "pass --allow-requantize (allow_requantize=True) to quantize an already "
                            "quantized model, at a cost in quality")
    from kernels.dequantize import dequantize
    return dequantize(raw, qtype, (n_rows, n_per_row))


@contextmanager
def _threads(n: int | None):
    """Run the kernels on n threads (bounded by what the kernels were started with)."""
    if not n or n <= 0:
        yield
        return
    from kernels.threads import get_num_threads, set_num_threads
    import numba
    old = get_num_threads()
    set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        set_num_threads(old)


# -- helpers --------------------------------------------------------------------------------------

def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _load_imatrix(imatrix, include: Sequence[str], exclude: Sequence[str]) -> Imatrix | None:
    if imatrix is None:
        return None
    if isinstance(imatrix, Imatrix):
        im = imatrix
    elif isinstance(imatrix, Mapping):
        # name -> per-column weights, already normalized: store as one count of 1
        im = Imatrix({n: ImatrixEntry(np.asarray(v, np.float32).reshape(-1), np.ones(1, np.int64))
                      for n, v in imatrix.items()}, has_metadata=True)
    else:
        im = read_imatrix(imatrix)
        if not im.is_legacy and not im.has_metadata:
            raise ImatrixError(f"missing imatrix metadata in file {im.path}")
    for name, w in im.quant_weights_cached().items():
        if not np.isfinite(w).all():
            raise ImatrixError(f"imatrix contains non-finite values for {name}")
    if include or exclude:
        im = im.filtered(include, exclude)
    return im


def _guess_ftype(reader: GGUFReader) -> LlamaFileType:
    """The file's ftype: general.file_type if stored, else from its most common weight type."""
    ft = reader.get(KEY_FILE_TYPE)
    if ft is not None:
        try:
            return LlamaFileType(int(ft))
        except ValueError:
            pass
    counts = Counter(t.type for t in reader.tensors.values() if len(t.shape) >= 2)
    common = counts.most_common(1)[0][0] if counts else GGMLType.F32
    by_type = {GGMLType.F32: LlamaFileType.ALL_F32, GGMLType.F16: LlamaFileType.MOSTLY_F16,
               GGMLType.BF16: LlamaFileType.MOSTLY_BF16, GGMLType.Q4_0: LlamaFileType.MOSTLY_Q4_0,
               GGMLType.Q4_1: LlamaFileType.MOSTLY_Q4_1, GGMLType.Q5_0: LlamaFileType.MOSTLY_Q5_0,
               GGMLType.Q5_1: LlamaFileType.MOSTLY_Q5_1, GGMLType.Q8_0: LlamaFileType.MOSTLY_Q8_0,
               GGMLType.Q2_K: LlamaFileType.MOSTLY_Q2_K, GGMLType.Q3_K: LlamaFileType.MOSTLY_Q3_K_M,
               GGMLType.Q4_K: LlamaFileType.MOSTLY_Q4_K_M, GGMLType.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
               GGMLType.Q6_K: LlamaFileType.MOSTLY_Q6_K, GGMLType.IQ4_XS: LlamaFileType.MOSTLY_IQ4_XS,
               GGMLType.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL}
    return by_type.get(common, LlamaFileType.ALL_F32)


def format_shape(shape: Sequence[int]) -> str:
    """GGUF order (innermost first), as llama.cpp prints tensor shapes."""
    ne = list(reversed([int(s) for s in shape]))
    return ", ".join(f"{d:5d}" for d in ne)


def _mib(n: int) -> float:
    return n / 1024.0 / 1024.0


# -- the driver -----------------------------------------------------------------------------------

def quantize_model(in_path: str | os.PathLike, out_path: str | os.PathLike,
                   ftype: "str | int | LlamaFileType | ParsedFType",
                   imatrix: "str | os.PathLike | Imatrix | Mapping[str, np.ndarray] | None" = None,
                   nthreads: int | None = None, *, dry_run: bool = False, **options: Any) -> QuantizeResult:
    """Quantize the GGUF model ``in_path`` to ``out_path`` with file type ``ftype``.

    ``ftype``: a TYPE name as the command accepts it ("Q4_K_M", "iq4_xs", "COPY", ...), an ftype id
    or ``LlamaFileType``.  ``imatrix``: a path (GGUF or legacy format), an ``Imatrix``, or a mapping
    tensor name -> per-column weights.  The other options are ``quantize_source``'s.
    Raises QuantizeError / ImatrixError / GGUFError with a message naming the problem.
    """
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if not os.path.exists(in_path):
        raise QuantizeError(f"input model {in_path!r} does not exist")
    if not dry_run and _same_file(in_path, out_path):
        raise QuantizeError(f"input and output files are the same: {in_path!r}")
    if not dry_run:
        check_output_path(out_path)  # a directory or an unwritable place is refused before any work
    with GGUFReader(in_path) as reader:
        return quantize_source(reader, out_path, ftype, imatrix, nthreads, dry_run=dry_run, **options)


def quantize_source(reader, out_path: str | os.PathLike,
                    ftype: "str | int | LlamaFileType | ParsedFType",
                    imatrix: "str | os.PathLike | Imatrix | Mapping[str, np.ndarray] | None" = None,
                    nthreads: int | None = None, *,
                    include_weights: Iterable[str] = (), exclude_weights: Iterable[str] = (),
                    output_tensor_type: "GGMLType | str | int | None" = None,
                    token_embedding_type: "GGMLType | str | int | None" = None,
                    tensor_types: Iterable[tuple[str, Any]] | Mapping[str, Any] = (),
                    leave_output_tensor: bool = False, pure: bool = False,
                    allow_requantize: bool = False, dry_run: bool = False,
                    override_kv: Iterable["KVOverride | str"] = (),
                    log: Callable[[str], None] | None = None,
                    progress: bool = False) -> QuantizeResult:
    """``quantize_model`` on an open input: a ``GGUFReader``, or any object with its interface
    (``path``, ``metadata``, ``type_spec(key)``, ``get(key)``, ``tensors`` of objects with ``name``,
    ``shape``, ``type``, ``n_elements``, ``n_bytes`` and ``raw``), such as a model being converted.

    ``tensor_types``: (regex, type) pairs (first match wins) or a mapping.  ``log`` receives one line
    per tensor and the summary; ``progress`` shows a tqdm bar."""
    t0 = time.perf_counter()
    out_path = os.fspath(out_path)
    in_path = os.fspath(reader.path)
    parsed = parse_ftype(ftype)
    emit = log or (lambda s: None)
    include_weights, exclude_weights = list(include_weights), list(exclude_weights)
    if include_weights and exclude_weights:
        raise QuantizeError("include_weights and exclude_weights cannot be used together")
    overrides = [o if isinstance(o, KVOverride) else KVOverride.parse(o) for o in override_kv]
    if isinstance(tensor_types, Mapping):
        tensor_types = list(tensor_types.items())
    tt = [(str(p).lower(), as_type(t)) for p, t in tensor_types]

    im = _load_imatrix(imatrix, include_weights, exclude_weights)
    qweights = im.quant_weights_cached() if im is not None else {}
    has_imatrix = bool(qweights)

    model = ModelInfo.from_metadata(reader.metadata)
    only_copy = parsed.only_copy
    out_ftype = _guess_ftype(reader) if only_copy else parsed.ftype
    opts = MixtureOptions(parsed.ftype, has_imatrix=has_imatrix, pure=pure, only_copy=only_copy,
                          quantize_output_tensor=not leave_output_tensor,
                          output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                          tensor_types=tt)
    tensors = {n: (t.shape, t.type) for n, t in reader.tensors.items()}
    plan = plan_types(tensors, model, opts)
    for msg in plan.messages:
        emit("warning: " + msg)
    if dry_run:
        return _dry_run(reader, plan, parsed, out_ftype, has_imatrix, emit, t0)
    if not has_imatrix:
        for name in plan.order:
            if plan.quantizable[name] and plan.needs_imatrix[name]:
                raise QuantizeError(
                    f"this quantization requires an importance matrix (offending tensor: {name}, "
                    f"target type: {plan.types[name].name}); make one with gguf-imatrix and pass --imatrix")

    else:
        for name in plan.order:             # check every entry before any work is done
            t = reader.tensors[name]
            if plan.types[name] != t.type:
                _imatrix_for(name, t.shape, qweights, plan.needs_imatrix[name] and plan.quantizable[name],
                             lambda s: None)
    missing = sorted({plan.types[n].name for n in plan.order
                      if plan.types[n] != reader.tensors[n].type and not _can_encode(plan.types[n])})
    if missing:
        raise QuantizeError(f"no encoder for {', '.join(missing)}: cannot quantize to {parsed.name}")
    if not allow_requantize:
        for name in plan.order:
            cur = reader.tensors[name].type
            if plan.types[name] != cur and cur not in _FLOAT_TYPES:
                raise QuantizeError(
                    f"requantizing from type {cur.name} is disabled (tensor {name} of {in_path}); pass "
                    "--allow-requantize (allow_requantize=True) to quantize an already quantized model, "
                    "at a cost in quality")

    writer = GGUFWriter(out_path)
    try:
        _write_metadata(writer, reader, out_ftype, overrides, im if has_imatrix else None, imatrix,
                        len(qweights))
        for name in plan.order:
            t = reader.tensors[name]
            writer.add_tensor_info(name, t.shape, plan.types[name])

        emit(f"quantizing '{in_path}' to '{out_path}' as {parsed.name}"
             + (f" using {nthreads} threads" if nthreads else ""))
        if has_imatrix:
            emit(f"have importance matrix data with {len(qweights)} entries")
        size_before = size_after = n_elements = 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(plan.order), unit="tensor", desc="quantizing", file=sys.stderr,
                       dynamic_ncols=True, leave=False)
        with _threads(nthreads):
            for idx, name in enumerate(plan.order, 1):
                t = reader.tensors[name]
                new_type = plan.types[name]
                head = (f"[{idx:4d}/{len(plan.order):4d}] {name:<36s} - [{format_shape(t.shape)}], "
                        f"type = {t.type.name:>6s}, ")
                if new_type == t.type:
                    writer.write_tensor_data(name, t.raw)
                    new_size = t.n_bytes
                    emit(head + f"size = {_mib(new_size):8.3f} MiB")
                else:
                    w = _imatrix_for(name, t.shape, qweights, plan.needs_imatrix[name] and plan.quantizable[name],
                                     emit)
                    data = _quantize_tensor(t, new_type, w, allow_requantize)
                    writer.write_tensor_data(name, data)
                    new_size = data.nbytes
                    emit(head + f"converting to {new_type.name} .. "
                         f"size = {_mib(t.n_bytes):8.2f} MiB -> {_mib(new_size):8.2f} MiB")
                size_before += t.n_bytes
                size_after += new_size
                n_elements += t.n_elements
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        writer.finish()
    except BaseException:
        writer.abort()
        raise

    res = QuantizeResult(out_path, out_ftype, dict(plan.types), len(plan.order), n_elements, size_before,
                         size_after, plan.n_fallback, time.perf_counter() - t0, len(qweights))
    emit(f"model size  = {_mib(size_before):8.2f} MiB ({res.bpw_before:.2f} BPW)")
    emit(f"quant size  = {_mib(size_after):8.2f} MiB ({res.bpw_after:.2f} BPW)")
    if plan.n_fallback:
        emit(f"WARNING: {plan.n_fallback} of {len(plan.order)} tensor(s) required fallback quantization")
    return res


def _dry_run(reader: GGUFReader, plan, parsed: ParsedFType, out_ftype: LlamaFileType, has_imatrix: bool,
             emit: Callable[[str], None], t0: float) -> QuantizeResult:
    """Sizes only: what quantizing would produce, without encoding or writing anything."""
    emit(f"calculating quantization size for '{reader.path}' as {parsed.name}")
    before = after = n_el = 0
    needs = False
    for idx, name in enumerate(plan.order, 1):
        t = reader.tensors[name]
        new_type = plan.types[name]
        head = (f"[{idx:4d}/{len(plan.order):4d}] {name:<36s} - [{format_shape(t.shape)}], "
                f"type = {t.type.name:>6s}, ")
        if new_type != t.type:
            size = t.n_elements // int(t.shape[-1]) * row_bytes(new_type, int(t.shape[-1]))
            emit(head + f"size = {_mib(t.n_bytes):8.2f} MiB -> {_mib(size):8.2f} MiB ({new_type.name})")
            needs = needs or (plan.quantizable[name] and plan.needs_imatrix[name])
        else:
            size = t.n_bytes
            emit(head + f"size = {_mib(size):8.3f} MiB")
        before, after, n_el = before + t.n_bytes, after + size, n_el + t.n_elements
    res = QuantizeResult("", out_ftype, dict(plan.types), len(plan.order), n_el, before, after,
                         plan.n_fallback, time.perf_counter() - t0)
    emit(f"model size  = {_mib(before):8.2f} MiB ({res.bpw_before:.2f} BPW)")
    emit(f"quant size  = {_mib(after):8.2f} MiB ({res.bpw_after:.2f} BPW)")
    if needs and not has_imatrix:
        emit("WARNING: dry run completed successfully, but actually completing this quantization will "
             "require an imatrix!")
    return res


def _write_metadata(writer: GGUFWriter, reader: GGUFReader, out_ftype: LlamaFileType,
                    overrides: list[KVOverride], im: Imatrix | None, imatrix_arg, n_entries: int) -> None:
    """All input keys with their stored types; then (each replacing any earlier value and moving to
    the end, as llama.cpp does) the quantization version, the file type, the user's overrides and
    the importance-matrix provenance."""
    late: list[tuple[str, Any, V]] = [(KEY_QUANT_VERSION, QUANTIZATION_VERSION, V.UINT32),
                                      (KEY_FILE_TYPE, int(out_ftype), V.UINT32)]
    late += [(o.key, o.value, o.vtype) for o in overrides]
    if im is not None:
        src = im.path if im.path else (os.fspath(imatrix_arg) if isinstance(imatrix_arg, (str, os.PathLike))
                                       else "")
        late.append((KEY_IMATRIX_FILE, src[:127], V.STRING))
        if im.datasets:
            late.append((KEY_IMATRIX_DATASET, str(im.datasets[0])[:127], V.STRING))
        late.append((KEY_IMATRIX_ENTRIES, n_entries, V.UINT32))
        if im.chunk_count > 0:
            late.append((KEY_IMATRIX_CHUNKS, int(im.chunk_count), V.UINT32))
    # a key set twice keeps the position of its last setting
    final: dict[str, tuple[Any, V]] = {}
    for key, value, vt in late:
        final.pop(key, None)
        final[key] = (value, vt)
    writer.copy_metadata(reader, skip=set(final) | set(_SPLIT_KEYS))
    for key, (value, vt) in final.items():
        writer.add_key(key, value, vt)


def _imatrix_for(name: str, shape: Sequence[int], qweights: Mapping[str, np.ndarray], required: bool,
                 emit: Callable[[str], None]) -> np.ndarray | None:
    n_in = int(shape[-1])
    n_mat = int(shape[-3]) if len(shape) >= 3 else 1
    w = qweights.get(name) if qweights else None
    if w is None:
        if qweights:
            emit(f"====== did not find weights for {name}")
        if required:
            raise QuantizeError(f"missing importance matrix for tensor {name} in a very low-bit quantization: "
                                "the result would be garbage")
        return None
    if w.size != n_in * n_mat:
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            emit(f"====== imatrix size {w.size} is different from tensor size {n_in * n_mat} for {name}")
            return None
        raise ImatrixError(f"imatrix size {w.size} is different from tensor size {n_in * n_mat} for {name}")
    return w.reshape(n_mat, n_in)


def _quantize_tensor(t, new_type: GGMLType, w: np.ndarray | None, allow_requantize: bool) -> np.ndarray:
    """One tensor -> its new bytes, processed per expert matrix and in slabs of rows."""
    n_per_row = int(t.shape[-1])
    n_rows_total = t.n_elements // n_per_row
    n_mat = int(np.prod(t.shape[:-2])) if len(t.shape) > 2 else 1
    rows_per_mat = n_rows_total // n_mat
    src_row = row_bytes(t.type, n_per_row)
    dst_row = row_bytes(new_type, n_per_row)
    # an input that computes its bytes (a model being converted) hands over one slab of rows at a time
    read_rows = getattr(t, "read_rows", None)
    raw = None if read_rows is not None else t.raw.reshape(n_rows_total, src_row)
    out = np.empty((n_rows_total, dst_row), dtype=np.uint8)
    slab = max(1, min(rows_per_mat, (SLAB_BYTES if raw is not None else STREAM_SLAB_BYTES) // (4 * n_per_row)))
    for m in range(n_mat):
        qw = None
        if w is not None:
            qw = np.ascontiguousarray(w[m % w.shape[0]], dtype=np.float32)
        base = m * rows_per_mat
        for r0 in range(0, rows_per_mat, slab):
            r1 = min(rows_per_mat, r0 + slab)
            chunk = read_rows(base + r0, base + r1) if raw is None else raw[base + r0: base + r1]
            x = _to_float32(chunk.reshape(-1), t.type, r1 - r0, n_per_row,
                            allow_requantize, t.name)
            q = _kernel_quantize(np.ascontiguousarray(x, dtype=np.float32), new_type, qw)
            q = np.asarray(q)
            if q.dtype != np.uint8 or q.size != (r1 - r0) * dst_row:
                raise QuantizeError(f"encoder for {new_type.name} returned {q.dtype} of {q.size} bytes for "
                                    f"{r1 - r0} rows of {n_per_row} (expected {(r1 - r0) * dst_row})")
            out[base + r0: base + r1] = q.reshape(r1 - r0, dst_row)
    return out.reshape(-1)
