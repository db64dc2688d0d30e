"""Backends: where a model's weights live and its arithmetic runs.

``cpu.CPUBackend`` (NumPy + the Numba kernels) always exists.  ``device_backend`` picks the
accelerator backend that layers are offloaded to (``n_gpu_layers``), or None when there is
none; importing this package never imports an accelerator library.
"""
from __future__ import annotations


def device_backend(n_threads: int | None = None):
    """The GPU backend (CuPy) when CuPy imports and a CUDA device is present, else None.

    n_threads: CPU threads the device backend may use for host-side work."""
    try:
        # the CuPy backend module (``cuda.py``, class ``CudaBackend``) is optional: it imports
        # cupy at module level, so a missing module or a missing cupy both land here
        from .cuda import CudaBackend
    except ImportError:
        return None
    if not CudaBackend.available():
        return None
    return CudaBackend(n_threads)
