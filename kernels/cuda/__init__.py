"""CUDA C sources of the GPU kernels, assembled for run-time compilation.

Nothing here needs CuPy: this module only builds source text.  ``type_source(t)`` is the
decoder and the two weight kernels of one tensor type, ``dequant<T>`` (decode rows to
float32) and ``matvec<T>`` (fused decode + dot product), with the grid tables of
``kernels.iquant_tables`` emitted as C arrays, so the tables exist in one place only.
``ops_source()`` holds the per-layer operations.  ``GPU_TYPES`` lists the types with a GPU
decoder (``quants.cuh`` specializes ``Q<type id>`` for each).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import iquant_tables as tables
from ..types import GGMLType

_DIR = Path(__file__).resolve().parent

GPU_TYPES = frozenset(GGMLType[n] for n in (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q8_K", "Q1_0", "Q2_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
    "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"))

# weights a GPU decoder produces at a time (dq8); a weight's row length must be a multiple
# (the quantized types' blocks are, the plain types are decoded in runs of 8 values)
CHUNK = 8

# the compiler flags: the weight kernels keep every multiply and add separately rounded
# (no fused multiply-add contraction) so that decoding is bit-exact with the CPU decoders
WEIGHT_OPTIONS = ("--std=c++17", "--fmad=false")
OPS_OPTIONS = ("--std=c++17",)


def _c_array(name: str, ctype: str, values: np.ndarray, fmt: str) -> str:
    body = ",".join(fmt.format(int(v)) for v in values.reshape(-1))
    return f"__device__ const {ctype} {name}[{values.size}] = {{{body}}};\n"


@lru_cache(maxsize=None)
def _tables() -> str:
    return "".join([
        _c_array("iq2xxs_grid", "u64", tables.iq2xxs_grid, "0x{:x}ull"),
        _c_array("iq2xs_grid", "u64", tables.iq2xs_grid, "0x{:x}ull"),
        _c_array("iq2s_grid", "u64", tables.iq2s_grid, "0x{:x}ull"),
        _c_array("iq1s_grid", "u64", tables.iq1s_grid, "0x{:x}ull"),
        _c_array("iq3xxs_grid", "u32", tables.iq3xxs_grid, "0x{:x}u"),
        _c_array("iq3s_grid", "u32", tables.iq3s_grid, "0x{:x}u"),
        _c_array("ksigns_iq2xs", "u8", tables.ksigns_iq2xs, "{}"),
        _c_array("kvalues_iq4nl", "signed char", tables.kvalues_iq4nl, "{}"),
        _c_array("kvalues_fp4", "signed char", tables.kvalues_fp4, "{}"),
        _c_array("pow3", "u32", np.array([1, 3, 9, 27, 81, 243]), "{}"),
    ])


def _read(name: str) -> str:
    return (_DIR / name).read_text()


def _quants() -> tuple[str, str]:
    """quants.cuh cut before its decoders: (typedefs and scalar helpers, decoders)."""
    q = _read("quants.cuh")
    cut = q.index("template <int T> struct Q;")
    return q[:cut], q[cut:]


@lru_cache(maxsize=None)
def _weight_source() -> str:
    helpers, decoders = _quants()
    return helpers + _tables() + decoders + _read("linear.cu")    # the decoders read the tables


def type_source(t: GGMLType) -> tuple[str, tuple[str, str]]:
    """(source, (dequant kernel name, matvec kernel name)) of one type: the source is shared,
    the names pick the type's template instances."""
    t = GGMLType(t)
    if t not in GPU_TYPES:
        raise ValueError(f"no GPU decoder for type {t.name}")
    return _weight_source(), (f"dequant<{int(t)}>", f"matvec<{int(t)}>")


@lru_cache(maxsize=None)
def ops_source() -> str:
    return _quants()[0] + _read("ops.cu")          # typedefs, half_bits
