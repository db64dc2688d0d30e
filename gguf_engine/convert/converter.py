"""Hugging Face safetensors checkpoint -> GGUF, tensor by tensor.

``plan_conversion`` reads config.json, the tokenizer files and the safetensors headers (no weights)
and returns a ``ConvertedModel``: the metadata llama.cpp's converter writes and, for every tensor, its
GGUF name, shape, type and a loader that produces its bytes on demand.  ``convert_model`` writes it:
the float types and Q8_0 directly (``GGUFWriter``, atomic), any other ftype by handing the converted
model to the quantizer as its input, so the result is the file that converting to the source's float
type and then running gguf-quantize would give, without the intermediate file.

Which tensors stay F32 (as llama.cpp): one-dimensional ones, ``*_norm.weight`` and anything not named
``.weight`` (biases, rope_freqs).  Q8_0 falls back to F16 for rows that are not a multiple of 32.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kernels.types import GGMLType, row_bytes

from ..atomic import check_output_path
from ..gguf.constants import GGUFValueType as V
from ..gguf.writer import GGUFWriter
from .architectures import ArchSpec, HParams, SKIPPED_SUFFIXES, arch_for, common_params
from .safetensors import Checkpoint, ConvertError, SafeTensor, open_checkpoint
from .vocab import MetaEntry, bpe_vocab_size, load_vocab

__all__ = ["OUTTYPES", "ConvertOptions", "ConvertedModel", "PlannedTensor", "ConvertResult", "plan_conversion",
           "convert_model"]

QUANTIZATION_VERSION = 2
# --outtype name -> (GGML type of the weights, llama.cpp file type id)
OUTTYPES: dict[str, tuple[GGMLType, int]] = {
    "f32": (GGMLType.F32, 0), "f16": (GGMLType.F16, 1), "bf16": (GGMLType.BF16, 32), "q8_0": (GGMLType.Q8_0, 7),
}


@dataclass
class ConvertOptions:
    """What ``convert_model`` is asked to do (the command line's flags)."""
    outtype: str = "f16"                     # f32|f16|bf16|q8_0|auto, or any gguf-quantize ftype name
    model_name: str | None = None
    vocab_only: bool = False
    imatrix: Any = None                      # quantizing only
    nthreads: int | None = None
    progress: bool = False
    log: Callable[[str], None] | None = None


@dataclass
class PlannedTensor:
    """One output tensor: what the quantizer and writer need (the GGUFReader tensor interface)."""
    name: str
    shape: tuple[int, ...]                   # numpy order
    type: GGMLType
    load: Callable[..., np.ndarray]          # (r0=0, r1=None) -> uint8 bytes of those rows
    src_dtype: str = "F32"

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return self.n_elements // int(self.shape[-1]) * row_bytes(self.type, int(self.shape[-1]))

    @property
    def raw(self) -> np.ndarray:
        """uint8 bytes, computed now (never cached: one tensor in memory at a time)."""
        return self.load().reshape(-1)

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """uint8 bytes of rows [r0, r1) (rows of the innermost dimension), computed now."""
        return self.load(r0, r1)


@dataclass
class ConvertedModel:
    """A GGUF file in waiting: metadata and lazily computed tensors (reader-like, for the quantizer)."""
    path: str
    arch: str
    entries: list[MetaEntry]
    tensors: dict[str, PlannedTensor] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return {e.key: e.value for e in self.entries}

    def type_spec(self, key: str):
        e = next(e for e in self.entries if e.key == key)
        return (V.ARRAY, e.elem) if e.vtype == V.ARRAY else e.vtype

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key.replace("{arch}", self.arch), default)

    def close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()


@dataclass
class ConvertResult:
    out_path: str
    outtype: str
    n_tensors: int
    n_bytes: int
    seconds: float


def _load_config(folder: Path) -> HParams:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{path}: missing (a Hugging Face model folder has a config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path}: not a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    return HParams(cfg)


def _weight_type(name: str, shape: tuple[int, ...], want: GGMLType) -> GGMLType:
    """llama.cpp's per-tensor choice: norms, vectors and non-weights stay F32; Q8_0 needs rows of 32."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLType.F32
    if want == GGMLType.Q8_0 and shape[-1] % 32:
        return GGMLType.F16
    return want


def _encode(x: np.ndarray, t: GGMLType) -> np.ndarray:
    """float32/float16 values -> the bytes of type t (float16 inputs only for F16/F32 outputs)."""
    if t == GGMLType.F32:
        return x.astype(np.float32, copy=False)
    if t == GGMLType.F16:
        return x.astype(np.float16, copy=False)
    from kernels import quantize
    rows = np.ascontiguousarray(x.astype(np.float32, copy=False).reshape(-1, x.shape[-1]))
    return np.asarray(quantize(rows, t))


def bf16_passthrough(w: np.ndarray) -> np.ndarray:
    """BF16 -> BF16 as widening to float32 and rounding back gives: the same words, NaNs made quiet."""
    w = np.ascontiguousarray(w)
    nan = (w & np.uint16(0x7FFF)) > np.uint16(0x7F80)
    if nan.any():
        w = w.copy()
        w[nan] |= np.uint16(0x40)
    return w


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs, per head (rows of weights or biases)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _auto_type(ckpt: Checkpoint) -> GGMLType:
    """llama.cpp's ``auto``: BF16 or F16 after the first 2-D tensor stored so, else F16."""
    for t in ckpt.tensors.values():
        if len(t.shape) >= 2:
            if t.dtype == "BF16":
                return GGMLType.BF16
            if t.dtype == "F16":
                return GGMLType.F16
    return GGMLType.F16


def _source_float_type(ckpt: Checkpoint) -> GGMLType:
    """The float type matching the checkpoint (the intermediate of a two-step quantization)."""
    for t in ckpt.tensors.values():
        if len(t.shape) >= 2:
            return {"BF16": GGMLType.BF16, "F16": GGMLType.F16}.get(t.dtype, GGMLType.F32)
    return GGMLType.F32


def model_title(hp: HParams, folder: Path) -> str:
    """general.name as llama.cpp derives it: config.json's ``_name_or_path`` when it is a hub id, else the
    folder's name; dashes become spaces and all-lowercase words are capitalized (not versions or numbers)."""
    ident = hp.get("_name_or_path")
    if not isinstance(ident, str) or ident.count("/") > 1 or not ident:
        ident = folder.resolve().name
    ident = ident.split("/", 1)[-1]
    if " " in ident:
        return ident
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
                    for w in ident.strip().replace("-", " ").split())


def size_label(n_params: int) -> str:
    """Parameter count in llama.cpp's rounded notation (at least two significant digits): 135M, 6.4M, 1.2B."""
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M"), (0, 1e-3, "K")):
        if n_params > limit:
            break
    scaled = n_params * scale
    digits = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{digits}f}{suffix}"


# generation_config.json field -> (general.sampling.* key, type), as llama.cpp records sampling defaults
_SAMPLING = (("sequence", "sequence", V.STRING), ("top_k", "top_k", V.INT32), ("top_p", "top_p", V.FLOAT32),
             ("min_p", "min_p", V.FLOAT32), ("xtc_probability", "xtc_probability", V.FLOAT32),
             ("xtc_threshold", "xtc_threshold", V.FLOAT32), ("temperature", "temp", V.FLOAT32),
             ("penalty_last_n", "penalty_last_n", V.INT32), ("repetition_penalty", "penalty_repeat", V.FLOAT32),
             ("mirostat", "mirostat", V.INT32), ("mirostat_tau", "mirostat_tau", V.FLOAT32),
             ("mirostat_eta", "mirostat_eta", V.FLOAT32))


def sampling_entries(gen: dict) -> list[tuple[str, Any, V]]:
    out = []
    for field_name, key, vtype in _SAMPLING:
        value = gen.get(field_name)
        if field_name == "repetition_penalty" and "penalty_repeat" in gen:
            value = gen["penalty_repeat"]
        if value is not None:
            out.append((f"general.sampling.{key}", value, vtype))
    return out


def _metadata(folder: Path, hp: HParams, spec: ArchSpec, file_type: int, model_name: str | None,
              vocab_entries: list[MetaEntry], n_params: int) -> list[MetaEntry]:
    entries: list[MetaEntry] = []

    def put(key: str, value: Any, vtype: V, elem: V | None = None) -> None:
        for i, e in enumerate(entries):
            if e.key == key:
                entries[i] = MetaEntry(key, value, vtype, elem)
                return
        entries.append(MetaEntry(key, value, vtype, elem))

    def arch_key(key: str, value: Any, vtype: V) -> None:
        put(f"{spec.gguf_arch}.{key}", value, vtype)

    put("general.architecture", spec.gguf_arch, V.STRING)
    put("general.type", "model", V.STRING)
    gen = folder / "generation_config.json"
    if gen.is_file():
        for key, value, vtype in sampling_entries(json.loads(gen.read_text(encoding="utf-8"))):
            put(key, value, vtype)
    put("general.name", model_name or model_title(hp, folder), V.STRING)
    if n_params > 0:
        put("general.size_label", size_label(n_params), V.STRING)
    if spec.common:
        common_params(hp, arch_key)
    put("general.file_type", file_type, V.UINT32)
    if spec.params is not None:
        spec.params(hp, arch_key)
    put("general.quantization_version", QUANTIZATION_VERSION, V.UINT32)
    if spec.gguf_arch == "llama":
        cfg = folder / "tokenizer_config.json"
        if cfg.is_file():
            flag = json.loads(cfg.read_text(encoding="utf-8")).get("add_prefix_space")
            if isinstance(flag, bool):
                put("tokenizer.ggml.add_space_prefix", flag, V.BOOL)
    for e in vocab_entries:
        put(e.key, e.value, e.vtype, e.elem)
    if spec.no_space_prefix and (folder / "tokenizer.model").is_file():
        put("tokenizer.ggml.add_space_prefix", False, V.BOOL)
    return entries


def plan_conversion(model_dir: str | os.PathLike, outtype: str = "f16", model_name: str | None = None,
                    vocab_only: bool = False) -> ConvertedModel:
    """Everything about the output except the tensor bytes.  ``outtype``: f32|f16|bf16|q8_0|auto, or
    ``source`` for the float type matching the checkpoint (F32/F16/BF16)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a directory (expected a Hugging Face model folder)")
    hp = _load_config(folder)
    _, spec = arch_for(hp, str(folder / "config.json"))
    ckpt = None if vocab_only else open_checkpoint(folder)
    try:
        if outtype == "auto":
            want = _auto_type(ckpt) if ckpt else GGMLType.F16
        elif outtype == "source":
            want = _source_float_type(ckpt) if ckpt else GGMLType.F32
        elif outtype in OUTTYPES:
            want = OUTTYPES[outtype][0]
        else:
            raise ConvertError(f"unknown outtype {outtype!r} (f32, f16, bf16, q8_0, auto or a quantization type)")
        file_type = next(ft for t, ft in OUTTYPES.values() if t == want)
        vocab_size = hp.get("vocab_size")
        vocab = load_vocab(folder, vocab_size, spec.vocab)
        model = ConvertedModel(str(folder), spec.gguf_arch, [], checkpoint=ckpt)
        if ckpt is not None:
            _plan_tensors(model, ckpt, hp, spec, want, vocab.n_tokens, folder)
        n_params = sum(t.n_elements for t in model.tensors.values())
        model.entries = _metadata(folder, hp, spec, file_type, model_name, vocab.entries, n_params)
        return model
    except BaseException:
        if ckpt is not None:
            ckpt.close()
        raise


def _plan_tensors(model: ConvertedModel, ckpt: Checkpoint, hp: HParams, spec: ArchSpec, want: GGMLType,
                  n_tokens: int, folder: Path) -> None:
    n_head = hp.find("num_attention_heads", "n_heads")
    n_head_kv = hp.find("num_key_value_heads", "n_kv_heads", default=n_head)
    n_embd = hp.find("hidden_size", "n_embd", "dim")
    n_vocab = hp.get("vocab_size")
    for name, values in (spec.extra_tensors(hp) if spec.extra_tensors else {}).items():
        arr = np.asarray(values, dtype=np.float32)
        model.tensors[name] = PlannedTensor(name, arr.shape, GGMLType.F32,
                                            lambda r0=0, r1=None, a=arr: a.view(np.uint8)[None])
    n_rows_embd = None
    if spec.trim_embeddings:
        n_rows_embd = n_tokens if (folder / "tokenizer.model").is_file() else bpe_vocab_size(folder)
    for hf_name, st in ckpt.tensors.items():
        if hf_name.endswith(SKIPPED_SUFFIXES) or hf_name in spec.skipped:
            continue
        name = spec.tensor_name(hf_name)
        if name is None:
            raise ConvertError(f"{st.file}: tensor {hf_name}: no GGUF name for it in a {spec.gguf_arch} model")
        if st.dtype not in ("F32", "F16", "BF16"):
            raise ConvertError(f"{st.file}: tensor {hf_name}: dtype {st.dtype} is not supported "
                               "(F32, F16 or BF16 weights)")
        shape = tuple(st.shape)
        _check_shape(st, name, shape, n_embd, n_vocab)
        rows = None
        if name == "token_embd.weight" and n_rows_embd is not None and n_rows_embd < shape[0]:
            rows = n_rows_embd
            shape = (rows,) + shape[1:]
        heads = None
        if spec.permute_qk and name.endswith(("attn_q.weight", "attn_q.bias")):
            heads = n_head
        elif spec.permute_qk and name.endswith(("attn_k.weight", "attn_k.bias")):
            heads = n_head_kv
        if heads is not None and shape[0] % (2 * heads):
            raise ConvertError(f"{st.file}: tensor {hf_name}: {shape[0]} rows do not split into {heads} heads "
                               "of rotary pairs (config.json head counts)")
        shift = spec.norm_shift and name.endswith("norm.weight")
        gtype = _weight_type(name, shape, want)
        model.tensors[name] = PlannedTensor(name, shape, gtype, _loader(st, rows, heads, shift, gtype), st.dtype)


def _check_shape(st: SafeTensor, name: str, shape: tuple, n_embd: Any, n_vocab: Any) -> None:
    """Shapes that must agree with config.json (the others are checked by the engine at load)."""
    bad = None
    if name in ("token_embd.weight", "output.weight"):
        if len(shape) != 2 or (n_embd and shape[1] != n_embd) or (n_vocab and shape[0] != n_vocab):
            bad = f"[{n_vocab}, {n_embd}] (vocab_size, hidden_size)"
    elif name.endswith(("attn_norm.weight", "ffn_norm.weight")) or name == "output_norm.weight":
        if n_embd and shape != (n_embd,):
            bad = f"[{n_embd}] (hidden_size)"
    if bad:
        raise ConvertError(f"{st.file}: tensor {st.name}: shape {list(shape)} disagrees with config.json: "
                           f"expected {bad}")


SLAB_BYTES = 64 << 20     # float32 working set per slab of rows


def _loader(st: SafeTensor, rows: int | None, heads: int | None, shift: bool, gtype: GGMLType):
    """``load(r0, r1)``: output bytes of rows [r0, r1) (all by default), computed in slabs of rows so that
    memory stays near the size of what is asked for (a Q/K permutation or a vector is computed whole: they
    are small)."""
    whole = heads is not None or len(st.shape) < 2
    n_rows = rows if rows is not None else (1 if len(st.shape) < 2 else st.shape[0])
    per_row = int(np.prod(st.shape[1:] if len(st.shape) > 1 else st.shape, dtype=np.int64))
    inner = st.shape[-1] if st.shape else 1
    out_row = per_row // inner * row_bytes(gtype, inner)

    def rows_of(r0: int, r1: int) -> np.ndarray:
        passthrough = gtype == GGMLType.BF16 and st.dtype == "BF16" and not shift
        if passthrough:
            x = st.array() if whole else st.array(r0, r1)
        else:
            x = st.float_array() if whole else st.float_array(r0, r1)
        if heads is not None:
            x = _permute_qk(x, heads)
        if passthrough:
            y = bf16_passthrough(x)
        else:
            if shift:
                x = x + x.dtype.type(1)             # in the stored precision, as llama.cpp adds it
            y = np.ascontiguousarray(_encode(x, gtype))
        y = np.ascontiguousarray(y).reshape(-1).view(np.uint8).reshape(-1, out_row)
        return y[r0:r1] if whole else y

    def load(r0: int = 0, r1: int | None = None) -> np.ndarray:
        r1 = n_rows if r1 is None else r1
        if whole:
            return rows_of(r0, r1)
        out = np.empty((r1 - r0, out_row), dtype=np.uint8)
        step = max(1, SLAB_BYTES // (4 * per_row))
        for s0 in range(r0, r1, step):
            s1 = min(r1, s0 + step)
            out[s0 - r0:s1 - r0] = rows_of(s0, s1)
        return out
    return load


def _write(model: ConvertedModel, out_path: str, progress: bool, log: Callable[[str], None]) -> int:
    total = 0
    with GGUFWriter(out_path) as w:
        for e in model.entries:
            w.add_key(e.key, e.value, e.vtype, e.elem)
        for t in model.tensors.values():
            w.add_tensor_info(t.name, t.shape, t.type)
        bar = None
        if progress and model.tensors:
            from tqdm import tqdm
            bar = tqdm(total=len(model.tensors), unit="tensor", desc="converting", file=sys.stderr,
                       dynamic_ncols=True, leave=False)
        for idx, t in enumerate(model.tensors.values(), 1):
            data = t.raw
            w.write_tensor_data(t.name, data)
            total += data.nbytes
            log(f"[{idx:4d}/{len(model.tensors):4d}] {t.name:<32s} {t.src_dtype:>4s} -> {t.type.name:<5s} "
                f"shape = {{{', '.join(str(d) for d in reversed(t.shape))}}}")
            del data
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return total


def default_outfile(model_dir: str | os.PathLike, outtype: str) -> str:
    folder = Path(model_dir).resolve()
    return str(folder / f"{folder.name}-{outtype.upper()}.gguf")


def convert_model(model_dir: str | os.PathLike, outfile: str | os.PathLike | None = None,
                  options: ConvertOptions | None = None, **kw: Any) -> ConvertResult:
    """Convert a Hugging Face folder to GGUF.  Options as ``ConvertOptions`` (or its fields as keywords)."""
    opts = options or ConvertOptions(**kw)
    t0 = time.perf_counter()
    log = opts.log or (lambda s: None)
    outtype = opts.outtype.lower() if opts.outtype.lower() in (*OUTTYPES, "auto") else opts.outtype
    quant = outtype not in (*OUTTYPES, "auto")
    if quant:
        from ..quantize.ftypes import parse_ftype
        try:
            parse_ftype(outtype)
        except ValueError as e:
            raise ConvertError(f"unknown outtype {opts.outtype!r}: not f32, f16, bf16, q8_0, auto or a "
                               f"quantization type ({e})") from None
    elif opts.imatrix is not None or opts.nthreads:
        raise ConvertError(f"--imatrix and --threads apply only to quantization types, not --outtype {outtype}")
    out = os.fspath(outfile) if outfile is not None else default_outfile(model_dir, outtype)
    check_output_path(out)          # a directory or an unwritable place is refused before any work
    model = plan_conversion(model_dir, "source" if quant else outtype, opts.model_name, opts.vocab_only)
    try:
        if quant:
            from ..quantize.model_quantizer import quantize_source
            res = quantize_source(model, out, outtype, imatrix=opts.imatrix, nthreads=opts.nthreads, log=log,
                                  progress=opts.progress)
            n_bytes = res.size_after
        else:
            n_bytes = _write(model, out, opts.progress, log)
        return ConvertResult(out, outtype, len(model.tensors), n_bytes, time.perf_counter() - t0)
    finally:
        model.close()
