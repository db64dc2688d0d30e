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

    def __init__(self, reader, backend, source: str):
        self.reader, self.backend, self.source = reader, backend, source

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
        return None if t is None else self.backend.upload_weight(t)

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
               n_threads: int | None = None, n_gpu_layers: int = 0, backend=None) -> Model:
    """Load a GGUF model (a path or an open ``GGUFReader``) for evaluation.

    n_ctx: KV cache length (default min(trained context, 4096)); n_batch: prompt
    tokens per forward pass; cache_type: "f32" or "f16"; n_threads: CPU threads
    (None: all cores); n_gpu_layers: layers to offload (GPU offload is not
    available in this build: a warning is issued and everything runs on the CPU).
    """
    reader, owns = _open_reader(path_or_reader)
    try:
        return _build(reader, owns, n_ctx, n_batch, cache_type, n_threads, n_gpu_layers, backend)
    except BaseException:
        if owns:
            reader.close()
        raise


def _build(reader, owns, n_ctx, n_batch, cache_type, n_threads, n_gpu_layers, backend) -> Model:
    source = str(getattr(reader, "path", "<gguf>"))
    config = ModelConfig.from_reader(reader)
    if n_ctx is None or n_ctx <= 0:
        n_ctx = min(config.n_ctx_train, DEFAULT_MAX_CTX) if config.n_ctx_train > 0 else DEFAULT_MAX_CTX
    if n_batch <= 0:
        raise ValueError(f"n_batch must be positive, got {n_batch}")
    if n_gpu_layers:
        warnings.warn(f"n_gpu_layers={n_gpu_layers} requested but GPU offload is not available; "
                      f"running all layers on the CPU", RuntimeWarning, stacklevel=3)
    if backend is None:
        from ..backends.cpu import CPUBackend
        backend = CPUBackend(n_threads)
    elif n_threads:
        backend.set_threads(n_threads)

    c = config
    d, H, Hkv, hd, ff = c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff
    T = _Tensors(reader, backend, source)

    # the backend holds its own copies of the weights: the file's pages need not stay resident
    # (dropped as loading goes, which keeps the peak near the final footprint)
    copies = getattr(backend, "copies_weights", False) and hasattr(reader, "release_pages")

    def release():
        if copies:
            reader.release_pages()

    token_embd = T.weight("token_embd.weight", (c.n_vocab, d))
    release()
    output_norm = T.vector("output_norm.weight", (d,))
    output = token_embd if c.tied_output else T.weight("output.weight", (c.n_vocab, d))

    blocks = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        b = Block(
            attn_norm=T.vector(p + "attn_norm.weight", (d,)),
            attn_qkv=backend.fuse([T.weight(p + "attn_q.weight", (H * hd, d)),
                                   T.weight(p + "attn_k.weight", (Hkv * hd, d)),
                                   T.weight(p + "attn_v.weight", (Hkv * hd, d))]),
            attn_output=T.weight(p + "attn_output.weight", (d, H * hd)),
            ffn_norm=T.vector(p + "ffn_norm.weight", (d,)),
            ffn_gate_up=backend.fuse([T.weight(p + "ffn_gate.weight", (ff, d)),
                                      T.weight(p + "ffn_up.weight", (ff, d))]),
            ffn_down=T.weight(p + "ffn_down.weight", (d, ff)),
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

    tf = Transformer(config, backend, token_embd, output_norm, output, blocks, int(n_ctx), cache_type)
    release()
    return Model(tf, reader, n_batch, owns, n_gpu_layers=0)
