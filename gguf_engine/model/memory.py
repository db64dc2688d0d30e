"""What a loaded model holds in memory, per backend, as llama.cpp reports it at load.

llama.cpp prints, once a model and its context are loaded, the size of each buffer it
allocated: the model's weights per backend (``load_tensors: CPU_REPACK model buffer size``),
the KV cache (``llama_kv_cache: size = ... K (f16): ..., V (f16): ...``) and the compute
buffers (``llama_context: CPU compute buffer size``), then a table of them by device
(``memory breakdown [MiB]``).  ``memory_breakdown`` gives the same figures for a model
(sizes of the arrays it holds, not estimates of the file) plus the process's resident set, and
``summary_lines`` formats them the way llama.cpp logs them.

Buffer names: ``CPU_REPACK`` holds the CPU backend's repacked weights (every weight: none stays
mapped from the file), ``CPU`` its float arrays (norms, biases, RoPE tables), the KV cache and
the run state; a GPU's buffers are named by device (``CUDA0``).
"""
from __future__ import annotations

import os
from typing import TypedDict

import numpy as np

MiB = 1 << 20
HOST = "Host"


class MemoryBreakdownData(TypedDict):
    """One device's bytes by use, as llama.cpp's ``llama_memory_breakdown_data``."""
    model: int                    # weights, norms, biases, RoPE tables
    context: int                  # the KV cache
    compute: int                  # run state, kernel scratch, logits


class KVCacheSize(TypedDict):
    """The KV cache as llama.cpp's ``llama_kv_cache: size = ...`` line describes it."""
    size: int                     # bytes, keys and values
    cells: int                    # positions (n_ctx)
    layers: int
    seqs: int
    type_k: str
    type_v: str
    k: int                        # bytes of keys
    v: int                        # bytes of values


class MemoryBreakdown(TypedDict):
    """What a loaded model holds (bytes), from ``memory_breakdown``."""
    model_buffers: dict[str, int]         # buffer name -> weights and arrays ("CPU_REPACK", "CPU", "CUDA0")
    kv_buffers: dict[str, int]            # buffer name -> KV cache
    kv_cache: KVCacheSize
    compute_buffers: dict[str, int]       # buffer name -> run state and scratch of an n_batch pass
    devices: dict[str, MemoryBreakdownData]   # "Host" and each GPU
    file_size: int                        # the GGUF file
    rss: int                              # the process's resident set when measured (0: not measured)


def resident_bytes() -> int:
    """This process's resident set size now, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil
        return int(psutil.Process().memory_info().rss)


def memory_breakdown(tf, n_batch: int, path: str | None, rss: int = 0) -> MemoryBreakdown:
    """The buffers a loaded ``Transformer`` holds, by name and by device, for passes of up to
    n_batch tokens.  path: the model file (its size is reported); rss: the resident set measured
    by the caller (``resident_bytes``), reported as given.  ``Model.memory_breakdown`` calls it."""
    model_buffers: dict[str, int] = {}
    for be, t in tf.held_tensors():
        name = be.weight_buffer_name if hasattr(t, "qtype") else be.buffer_name
        model_buffers[name] = model_buffers.get(name, 0) + int(t.nbytes)
    kv_buffers: dict[str, int] = {}
    k_bytes = v_bytes = 0
    for be, part in tf.cache_parts():
        kv_buffers[be.buffer_name] = kv_buffers.get(be.buffer_name, 0) + int(part.nbytes)
        k_bytes += int(part.k.nbytes)
        v_bytes += int(part.v.nbytes)
    cache = tf.cache
    backends = {id(be): be for be, _ in tf.held_tensors()}
    compute_buffers = {be.buffer_name: tf.compute_bytes(be, n_batch) for be in backends.values()}
    devices: dict[str, MemoryBreakdownData] = {}
    for be in backends.values():
        dev = devices.setdefault(HOST if be.xp is np else be.buffer_name,
                                 MemoryBreakdownData(model=0, context=0, compute=0))
        dev["model"] += sum(n for name, n in model_buffers.items() if name in (be.buffer_name, be.weight_buffer_name))
        dev["context"] += kv_buffers.get(be.buffer_name, 0)
        dev["compute"] += compute_buffers[be.buffer_name]
    return MemoryBreakdown(
        model_buffers=model_buffers, kv_buffers=kv_buffers,
        kv_cache=KVCacheSize(size=k_bytes + v_bytes, cells=int(tf.n_ctx), layers=int(tf.config.n_layer), seqs=1,
                             type_k=str(cache.type_k), type_v=str(cache.type_v), k=k_bytes, v=v_bytes),
        compute_buffers=compute_buffers, devices=devices,
        file_size=os.path.getsize(path) if path and os.path.isfile(path) else 0, rss=int(rss))


def summary_lines(mb: MemoryBreakdown) -> list[str]:
    """llama.cpp's load summary for ``mb``: the model, KV and compute buffers, the breakdown by
    device, and the resident set after load."""
    kv = mb["kv_cache"]
    lines = [f"load_tensors: {name:>12s} model buffer size = {n / MiB:8.2f} MiB" for name, n in mb["model_buffers"].items()]
    lines += [f"llama_kv_cache: {name:>10s} KV buffer size = {n / MiB:8.2f} MiB" for name, n in mb["kv_buffers"].items()]
    lines.append(f"llama_kv_cache: size = {kv['size'] / MiB:7.2f} MiB ({kv['cells']:6d} cells, {kv['layers']:3d} layers, "
                 f"{kv['seqs']:2d}/{kv['seqs']} seqs), K ({kv['type_k']}): {kv['k'] / MiB:7.2f} MiB, "
                 f"V ({kv['type_v']}): {kv['v'] / MiB:7.2f} MiB")
    lines += [f"llama_context: {name:>10s} compute buffer size = {n / MiB:8.2f} MiB"
              for name, n in mb["compute_buffers"].items()]
    lines.append("memory_breakdown: | memory breakdown [MiB] | self   model   context   compute |")
    for dev, d in mb["devices"].items():
        self_ = d["model"] + d["context"] + d["compute"]
        lines.append(f"memory_breakdown: | {'  - ' + dev:<22s} | {self_ // MiB:4d} = {d['model'] // MiB:5d} + "
                     f"{d['context'] // MiB:7d} + {d['compute'] // MiB:7d} |")
    if mb["rss"]:
        lines.append(f"load: resident set after load = {mb['rss'] / MiB:.2f} MiB (file {mb['file_size'] / MiB:.2f} MiB)")
    return lines
