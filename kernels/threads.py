"""The kernels' thread count: Numba's parallel loops and the raw-type worker pool.

``import kernels`` (the package, so before this module) sets ``GOMP_SPINCOUNT=20000``
unless the environment already sets it or ``OMP_WAIT_POLICY``: Numba's OpenMP workers
then spin for a few hundred microseconds after each parallel loop and sleep after that.
A decode step runs ~120 kernels a few microseconds apart, so they find the workers
awake (workers that sleep at once, OMP_WAIT_POLICY=PASSIVE, cost generation speed: see
the README's Threads section), while an idle engine or a busy machine sees no endless
spinning (OMP_WAIT_POLICY=ACTIVE costs milliseconds per launch as soon as another process
wants the cores).  It must be set
before the first parallel kernel runs; set either variable yourself to override.

``set_num_threads(n)`` applies to every kernel called afterwards from the calling
thread (Numba keeps the setting per calling thread).  numpy's BLAS (used by
``matmul`` for the float32 GEMM) keeps its own pool, sized by OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS at start-up.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba

_pool: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Use n threads (1 .. the number Numba was started with) in the kernels."""
    n = int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(f"thread count {n} exceeds the {limit} threads available "
                         f"(NUMBA_NUM_THREADS / CPU count)")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    return numba.get_num_threads()


def split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """lo..hi cut into at most max(1, parts) near-equal non-empty ranges (a, b); none if hi == lo."""
    parts = max(1, min(parts, hi - lo))
    return [(lo + (hi - lo) * k // parts, lo + (hi - lo) * (k + 1) // parts) for k in range(parts) if hi > lo]


def run_all(fn, calls) -> None:
    """fn(*args) for every args tuple in calls, on the shared pool (nogil work), or on the
    calling thread when there is only one; returns when all are done (re-raising errors)."""
    calls = list(calls)
    if len(calls) == 1:
        fn(*calls[0])
        return
    for f in [pool().submit(fn, *args) for args in calls]:
        f.result()


def pool() -> ThreadPoolExecutor:
    """A shared worker pool for kernels that run nogil Numba code on Python threads."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS, os.cpu_count() or 1),
                                   thread_name_prefix="kernels")
    return _pool


_blas_controller = None


def single_threaded_blas():
    """Context manager: numpy's BLAS keeps to one thread inside.

    OpenBLAS's workers spin for a while after every call, so between BLAS calls
    the Numba kernels find their cores taken (the README's Dependencies section gives
    the prompt-processing speeds with and without).  The kernels
    parallelize themselves; BLAS runs inside them single-threaded.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")
