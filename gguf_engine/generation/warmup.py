"""The first run on a machine: the kernels compile (Numba JIT, cached on disk afterwards).

Compiling takes tens of seconds, once per CPU, Numba version, kernel source and set of weight
types.  ``warm_up`` notices a cold cache by the absence of a marker file written beside Numba's
cache after a successful warm-up, says so on stderr, runs the prompt and generation paths once on
a few tokens (so the compilation happens here, outside any timing of a real prompt) with a
progress line per path, reports the time taken, and writes the marker.  On a warm cache it does
nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

KERNEL_PACKAGE = Path(__file__).resolve().parents[2] / "kernels"


def cache_dir() -> Path:
    """Where Numba caches compiled kernels (NUMBA_CACHE_DIR, else beside the kernel sources)."""
    import numba
    configured = numba.config.CACHE_DIR
    return Path(configured) if configured else KERNEL_PACKAGE / "__pycache__"


def cache_key(model) -> str:
    """What decides which compiled kernels a model needs: the CPU, Numba, the kernel sources, the
    weight types, the architecture and the KV cache type."""
    import llvmlite.binding as llvm
    import numba
    h = hashlib.sha256()
    h.update(f"{llvm.get_host_cpu_name()}|{numba.__version__}|{model.config.arch}|".encode())
    h.update(str(getattr(model.kv_cache, "cache_type", "")).encode())
    h.update(",".join(sorted({t.type.name for t in model.reader.tensors.values()})).encode())
    for src in sorted(KERNEL_PACKAGE.rglob("*.py")):
        st = src.stat()
        h.update(f"{src.relative_to(KERNEL_PACKAGE)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:24]


def marker_path(model) -> Path:
    return cache_dir() / f"gguf-engine-warm-{cache_key(model)}.json"


def warm_up(model, bos: int | None, stream=None) -> float | None:
    """Compiles the kernels a model needs when the cache is cold; returns the seconds it took
    (None when the cache was warm).  The model's cache is empty afterwards."""
    stream = stream or sys.stderr
    marker = marker_path(model)
    if marker.exists():
        return None
    tok = int(bos) if bos is not None and bos >= 0 else 0
    print("compiling kernels for this CPU, first run only (cached afterwards) ...", file=stream, flush=True)
    t0 = time.perf_counter()
    steps = [("prompt path", lambda: model.eval([tok, tok])), ("generation path", lambda: model.eval([tok]))]
    try:
        for i, (name, run) in enumerate(steps, 1):
            t = time.perf_counter()
            run()
            print(f"  [{i}/{len(steps)}] {name}: {time.perf_counter() - t:.1f} s", file=stream, flush=True)
    finally:
        model.reset()
    took = time.perf_counter() - t0
    print(f"kernels compiled in {took:.1f} s", file=stream, flush=True)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": round(took, 2), "arch": str(model.config.arch)}))
        os.replace(tmp, marker)
    except OSError:  # a read-only cache: the next run says so again, nothing else changes
        pass
    return took
