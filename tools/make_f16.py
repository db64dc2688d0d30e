"""Turn a quantized GGUF model into an F16 one by exact dequantization.

    python tools/make_f16.py models/smollm2-135m-instruct-q4_1.gguf models/smollm2-135m-instruct-f16.gguf

Every metadata key is copied with its stored type; ``general.file_type`` becomes
MOSTLY_F16.  Each matrix (2-D or more) is decoded to float32 by the project's
bit-exact dequantizer and stored as F16 (the only rounding is float32 -> float16);
one-dimensional tensors (norm weights, biases) are stored as F32, as the model
converters do.  Tensors keep their order.  The result is the starting point for
measuring quantization quality: re-quantizing it compares quantizers on the same
weights, with no original float checkpoint needed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from gguf_engine.gguf.constants import GGUFValueType  # noqa: E402
from gguf_engine.gguf.reader import GGUFReader  # noqa: E402
from gguf_engine.gguf.writer import GGUFWriter  # noqa: E402
from kernels import dequantize  # noqa: E402
from kernels.types import GGMLType  # noqa: E402

FILE_TYPE_KEY = "general.file_type"
MOSTLY_F16 = 1
F16_MAX = float(np.finfo(np.float16).max)


def target_type(shape: tuple[int, ...]) -> GGMLType:
    """F16 for matrices, F32 for vectors (norms, biases)."""
    return GGMLType.F16 if len(shape) >= 2 else GGMLType.F32


def convert_tensor(t) -> np.ndarray:
    """Decode one tensor to float32 and cast it to its target dtype (numpy shape kept)."""
    x = dequantize(t.raw, t.type, t.shape)                       # (rows, cols) float32
    if target_type(t.shape) == GGMLType.F32:
        return x
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.isfinite(peak) or peak > F16_MAX:
        raise ValueError(f"tensor {t.name}: values up to {peak} do not fit in F16")
    return x.astype(np.float16)


def make_f16(in_path: str, out_path: str, log=print) -> dict:
    """Write ``out_path`` (F16) from ``in_path``; returns a small summary."""
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise ValueError("input and output are the same file")
    t0 = time.perf_counter()
    n_bytes = 0
    with GGUFReader(in_path) as reader:
        with GGUFWriter(out_path) as writer:
            for key, value in reader.metadata.items():           # file order, stored types
                if key == FILE_TYPE_KEY:
                    writer.add_key(key, MOSTLY_F16, GGUFValueType.UINT32)
                else:
                    writer.add_key(key, value, reader.type_spec(key))
            if FILE_TYPE_KEY not in reader.metadata:
                writer.add_key(FILE_TYPE_KEY, MOSTLY_F16, GGUFValueType.UINT32)
            tensors = list(reader.tensors.values())
            for t in tensors:
                writer.add_tensor_info(t.name, t.shape, target_type(t.shape))
            for t in tensors:
                data = convert_tensor(t)
                writer.write_tensor_data(t.name, data)
                n_bytes += data.nbytes
                log(f"{t.name:<32s} {str(t.shape):<16s} {t.type.name:>6s} -> {target_type(t.shape).name}")
    log(f"wrote {out_path}: {len(tensors)} tensors, {n_bytes / 2**20:.1f} MiB of data, "
        f"{time.perf_counter() - t0:.1f} s")
    return {"tensors": len(tensors), "bytes": n_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="quantized GGUF model")
    ap.add_argument("output", help="F16 GGUF to write")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    args = ap.parse_args(argv)
    lines = []
    make_f16(args.input, args.output, log=(lines.append if args.quiet else print))
    if args.quiet:
        print(lines[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
