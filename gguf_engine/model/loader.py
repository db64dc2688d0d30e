"""Build a ``Model`` from a GGUF file: config, weights on the backend, KV cache."""
from __future__ import annotations

import os
import warnings

import numpy as np

from .config import ModelConfig
from .model import Model
from .transformer import Block, Transformer

DEFAULT_MAX_CTX = 4096


class ModelLoadError(ValueError):
    """A tensor the architecture needs is missing or has the wrong shape."""


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

    def weight(self, name: str, shape: tuple[int, int], required: bool = True):
        t = self._get(name, shape, required)
        if t is None:
            return None
        if not self.release:
            return self.backend.upload_weight(t)
        return self.backend.upload_weight(t, lambda r0, r1: self.reader.release_rows(t, r0, r1))

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


def load_model(path_or_reader, n_ctx: int | None = None, n_batch: int = 512, cache_type: str = "f32",
               n_threads: int | None = None, n_gpu_layers: int = 0, backend=None, device=None) -> Model:
    """Load a GGUF model (a path or an open ``GGUFReader``) for evaluation.

    n_ctx: KV cache length (default min(trained context, 4096)); n_batch: prompt
    tokens per forward pass; cache_type: "f32" or "f16"; n_threads: CPU threads
    (None: all cores).

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
    if n_ctx is None or n_ctx <= 0:
        n_ctx = min(config.n_ctx_train, DEFAULT_MAX_CTX) if config.n_ctx_train > 0 else DEFAULT_MAX_CTX
    if n_batch <= 0:
        raise ValueError(f"n_batch must be positive, got {n_batch}")
    if backend is None:
        from ..backends.cpu import CPUBackend
        backend = CPUBackend(n_threads)
    elif n_threads:
        backend.set_threads(n_threads)
    device = _pick_device(n_gpu_layers, device, n_threads)

    c = config
    d, H, Hkv, hd, ff = c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff
    n_dev, output_on_dev = offload_split(c.n_layer, n_gpu_layers) if device is not None else (0, False)
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

    blocks = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        T = tensors(i)
        be = T.backend
        b = Block(
            attn_norm=T.vector(p + "attn_norm.weight", (d,)),
            attn_qkv=be.fuse([T.weight(p + "attn_q.weight", (H * hd, d)),
                              T.weight(p + "attn_k.weight", (Hkv * hd, d)),
                              T.weight(p + "attn_v.weight", (Hkv * hd, d))]),
            attn_output=T.weight(p + "attn_output.weight", (d, H * hd)),
            ffn_norm=T.vector(p + "ffn_norm.weight", (d,)),
            ffn_gate_up=be.fuse([T.weight(p + "ffn_gate.weight", (ff, d)),
                                 T.weight(p + "ffn_up.weight", (ff, d))]),
            ffn_down=T.weight(p + "ffn_down.weight", (d, ff)),
            backend=be,
        )
        if c.qkv_bias:
            b.attn_q_bias = T.vector(p + "attn_q.bias", (H * hd,), reshape=(H, hd))
            b.attn_k_bias = T.vector(p + "attn_k.bias", (Hkv * hd,), reshape=(Hkv, hd))
            b.attn_v_bias = T.vector(p + "attn_v.bias", (Hkv * hd,), reshape=(Hkv, hd))
        if c.qk_norm:
            b.attn_q_norm = T.vector(p + "attn_q_norm.weight", (hd,))
            b.attn_k_norm = T.vector(p + "attn_k_norm.weight", (hd,))
        if c.post_norms:
            b.post_attention_norm = T.vector(p + "post_attention_norm.weight", (d,))
            b.post_ffw_norm = T.vector(p + "post_ffw_norm.weight", (d,))
        blocks.append(b)
        release()
    # the norm after each layer, on that layer's backend: the last layer before a device
    # boundary gets its own copy of the next norm (the residual add and the norm are one call)
    for i, b in enumerate(blocks):
        nxt = blocks[i + 1].attn_norm if i + 1 < len(blocks) else output_norm
        if layer_backend(i + 1) is b.backend:
            b.next_norm = nxt
        else:
            name = f"blk.{i + 1}.attn_norm.weight" if i + 1 < len(blocks) else "output_norm.weight"
            b.next_norm = tensors(i).vector(name, (d,))

    tf = Transformer(config, backend, token_embd, output_norm, output, blocks, int(n_ctx), cache_type,
                     output_backend=layer_backend(c.n_layer))
    release()
    return Model(tf, reader, n_batch, owns, n_gpu_layers=n_dev + int(output_on_dev),
                 device=device if (n_dev or output_on_dev) else None)
