"""Build a ``Model`` from a GGUF file: config, weights on the backend, KV cache."""
from __future__ import annotations

import os
import warnings

import numpy as np

from .config import ModelConfig
from .errors import ModelLoadError, UnsupportedModelError
from .components import FUSED_FIELDS, TensorSpec
from .keymap import layer_tensors, model_tensors, rope_factor_tensor, unexpected_reason
from .kv_cache import KVTypes
from .model import Model
from .transformer import Block, Transformer

DEFAULT_MAX_CTX = 4096


def _open_reader(path_or_reader):
    if hasattr(path_or_reader, "tensors") and hasattr(path_or_reader, "metadata"):
        return path_or_reader, False
    from ..gguf import GGUFReader
    return GGUFReader(os.fspath(path_or_reader)), True


class _Tensors:
    """Fetches the model's tensors by GGUF name with shape checks."""

    def __init__(self, reader, backend, source: str, release: bool = False):
        """release: the backend copies the weights; their file pages are dropped as they are copied."""
        self.reader, self.backend, self.source, self.release = reader, backend, source, release

    def _get(self, name: str, shape: tuple[int, ...], required: bool):
        t = self.reader.tensors.get(name)
        if t is None:
            if required:
                raise ModelLoadError(f"{self.source}: tensor {name!r} is missing")
            return None
        if tuple(t.shape) != tuple(shape):
            raise ModelLoadError(f"{self.source}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t

    def _release(self, t):
        """The release callback of tensor t's upload (None: the file pages stay)."""
        if not self.release:
            return None
        return lambda r0, r1: self.reader.release_rows(t, r0, r1)

    def weight(self, name: str, shape: tuple[int, int], required: bool = True):
        t = self._get(name, shape, required)
        if t is None:
            return None
        return self.backend.upload_weight(t, self._release(t))

    def experts(self, name: str, shape: tuple[int, int, int], required: bool = True):
        t = self._get(name, shape, required)
        if t is None:
            return None
        return self.backend.upload_experts(t, self._release(t))

    def vector(self, name: str, shape: tuple[int, ...], required: bool = True, reshape=None):
        t = self._get(name, shape, required)
        if t is None:
            return None
        arr = np.asarray(t.data)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if reshape is not None:
            arr = arr.reshape(reshape)
        return self.backend.upload_array(arr)

    def spec(self, s: TensorSpec):
        if s.kind == "weight":
            return self.weight(s.name, s.shape, s.required)
        if s.kind == "experts":
            return self.experts(s.name, s.shape, s.required)
        return self.vector(s.name, s.shape, s.required, reshape=s.reshape)

    def fields(self, specs: list[TensorSpec]) -> dict:
        """Upload specs into {field: value}.  Fused fields get the backend's fused list: the 2-D
        weights of one are uploaded together (``Backend.upload_fused``, built without a second
        copy), expert tensors one by one and then fused."""
        out: dict = {}
        weights: dict[str, list] = {}
        for s in specs:
            if s.field in FUSED_FIELDS and s.kind == "weight":
                t = self._get(s.name, s.shape, s.required)
                if t is not None:
                    weights.setdefault(s.field, []).append(t)
                continue
            v = self.spec(s)
            if s.field in FUSED_FIELDS:
                out.setdefault(s.field, []).append(v)
            elif v is not None:
                out[s.field] = v
        for f in FUSED_FIELDS:
            if f in weights:
                out[f] = self.backend.upload_fused(weights[f], [self._release(t) for t in weights[f]])
            elif f in out:
                out[f] = self.backend.fuse(out[f])
        return out


def check_tensors(reader, c: ModelConfig, source: str) -> list[str]:
    """Check the file's tensors against what the architecture consumes, before anything is
    uploaded: a required tensor missing or a shape wrong is a ModelLoadError, a tensor that
    nothing consumes an UnsupportedModelError naming it.  Returns the consumed names."""
    present = reader.tensors
    specs = model_tensors(c, present) + [s for il in range(c.n_layer) for s in layer_tensors(c, il, present)]
    used = []
    for s in specs:
        t = present.get(s.name)
        if t is None:
            if s.required:
                raise ModelLoadError(f"{source}: tensor {s.name!r} is missing")
            continue
        if tuple(t.shape) != tuple(s.shape):
            raise ModelLoadError(f"{source}: tensor {s.name!r} has shape {tuple(t.shape)}, expected {tuple(s.shape)}")
        used.append(s.name)
    names = set(used)
    extra = [n for n in present if n not in names]
    if extra:
        listed = "; ".join(f"{n!r}: {unexpected_reason(c, n)}" for n in extra[:4])
        more = f" (and {len(extra) - 4} more)" if len(extra) > 4 else ""
        raise UnsupportedModelError(f"{source}: {len(extra)} tensor(s) that {c.arch} does not consume would change "
                                    f"the model's math; refusing rather than skipping them: {listed}{more}")
    return used


def load_model(path_or_reader, n_ctx: int | None = None, n_batch: int = 512, cache_type: "KVTypes | str" = "f32",
               n_threads: int | None = None, n_gpu_layers: int = 0, backend=None, device=None) -> Model:
    """Load a GGUF model (a path or an open ``GGUFReader``) for evaluation.

    n_ctx: KV cache length (default min(trained context, 4096)); n_batch: prompt
    tokens per forward pass; cache_type: the KV cache's types, one name for keys and values
    ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1") or a ``KVTypes``;
    n_threads: CPU threads (None: all cores).

    n_gpu_layers (as llama.cpp's --n-gpu-layers): the last N repeating layers go to the
    device backend (their weights, norms and KV cache), and when N exceeds the layer count
    the output norm and matmul too; -1 means everything.  The device is ``device`` when
    given, else the GPU backend found by ``backends.device_backend``; without one a single
    warning is issued and everything runs on the CPU.  backend: the host backend (default
    ``CPUBackend``).  ``Model.n_gpu_layers`` reports what was offloaded.
    """
    reader, owns = _open_reader(path_or_reader)
    try:
        return _build(reader, owns, n_ctx, n_batch, cache_type, n_threads, n_gpu_layers, backend, device)
    except BaseException:
        if owns:
            reader.close()
        raise


def offload_split(n_layer: int, n_gpu_layers: int) -> tuple[int, bool]:
    """(repeating layers offloaded, output layer offloaded) for n_gpu_layers (-1 or any
    negative: all), as llama.cpp splits: the last layers go first, the output layer last."""
    n = n_layer + 1 if n_gpu_layers < 0 else int(n_gpu_layers)
    return min(n, n_layer), n > n_layer


def _pick_device(n_gpu_layers: int, device, n_threads):
    if not n_gpu_layers:
        return None
    if device is None:
        from ..backends import device_backend
        device = device_backend(n_threads)
    if device is None:
        warnings.warn(f"n_gpu_layers={n_gpu_layers} requested but CuPy/GPU is not available; running on the CPU",
                      RuntimeWarning, stacklevel=4)
    return device


def _build(reader, owns, n_ctx, n_batch, cache_type, n_threads, n_gpu_layers, backend, device) -> Model:
    source = str(getattr(reader, "path", "<gguf>"))
    config = ModelConfig.from_reader(reader)
    tensors_used = check_tensors(reader, config, source)
    if n_ctx is None or n_ctx <= 0:
        n_ctx = min(config.n_ctx_train, DEFAULT_MAX_CTX) if config.n_ctx_train > 0 else DEFAULT_MAX_CTX
    if n_batch <= 0:
        raise ValueError(f"n_batch must be positive, got {n_batch}")
    if backend is None:
        from ..backends.cpu import CPUBackend
        backend = CPUBackend(n_threads)
    elif n_threads:
        backend.set_threads(n_threads)
    if n_gpu_layers and config.architecture.ffn.moe:
        warnings.warn(f"n_gpu_layers={n_gpu_layers}: {config.arch} is a mixture-of-experts model and the GPU backend "
                      f"has no expert kernels yet; every layer runs on the CPU", RuntimeWarning, stacklevel=3)
        n_gpu_layers = 0
    device = _pick_device(n_gpu_layers, device, n_threads)

    c = config
    d = c.n_embd
    n_dev, output_on_dev = offload_split(c.n_layer, n_gpu_layers) if device is not None else (0, False)
    cache_type = KVTypes.of(cache_type)
    cache_type.check(c.head_dim)                  # refused before any weight is read
    if n_dev:
        device.check_cache_types(cache_type)
    first_dev = c.n_layer - n_dev                 # layers first_dev.. live on the device

    def layer_backend(il: int):
        """The backend of layer il; il == n_layer is the output layer."""
        on_dev = output_on_dev if il == c.n_layer else il >= first_dev
        return device if on_dev else backend

    # the backends hold their own copies of the weights: the file's pages need not stay resident
    # (dropped as loading goes, a large tensor chunk by chunk, which keeps the peak near the
    # final footprint)
    copies = (getattr(backend, "copies_weights", False)
              and (device is None or getattr(device, "copies_weights", False))
              and hasattr(reader, "release_pages"))
    T_host = _Tensors(reader, backend, source, copies)
    T_dev = _Tensors(reader, device, source, copies) if device is not None else None

    def tensors(il: int) -> _Tensors:
        return T_dev if layer_backend(il) is device and device is not None else T_host

    def release():
        if copies:
            reader.release_pages()

    token_embd = T_host.weight("token_embd.weight", (c.n_vocab, d))      # the lookup stays on the host
    release()
    T_out = tensors(c.n_layer)
    output_norm = T_out.vector("output_norm.weight", (d,))
    if c.tied_output:
        output = token_embd if T_out is T_host else T_out.weight("token_embd.weight", (c.n_vocab, d))
    else:
        output = T_out.weight("output.weight", (c.n_vocab, d))
    factors = rope_factor_tensor(c, int(n_ctx), reader.tensors)
    rope_factors = np.array(reader.tensors[factors].data, dtype=np.float32) if factors else None

    blocks = []
    for i in range(c.n_layer):
        T = tensors(i)
        blocks.append(Block(backend=T.backend, **T.fields(layer_tensors(c, i, reader.tensors))))
        release()
    tf = Transformer(config, backend, token_embd, output_norm, output, blocks, int(n_ctx), cache_type,
                     output_backend=layer_backend(c.n_layer), rope_factors=rope_factors, ffn=c.architecture.ffn)
    release()
    return Model(tf, reader, n_batch, owns, n_gpu_layers=n_dev + int(output_on_dev),
                 device=device if (n_dev or output_on_dev) else None, tensors_used=tensors_used)
