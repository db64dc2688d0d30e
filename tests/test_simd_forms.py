"""The SIMD forms of the integer sums follow the features Numba compiles for.

A process whose NUMBA_CPU_FEATURES leave out avx512vnni (an AVX2 host without VNNI, as far as the
kernels can tell) must not emit VNNI instructions (LLVM could not select them): it runs the
portable and AVX2 forms, and a kernel asked for the VNNI form gets the AVX2 one, with results
bit-identical to the portable loops (exact integer sums: tolerance zero).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import numpy as np
import kernels
from kernels.simd import AVX2, HOST_AVX2, HOST_VNNI, PORTABLE, SIMD_FORMS, VNNI
assert not HOST_VNNI
assert SIMD_FORMS == ((PORTABLE, AVX2) if HOST_AVX2 else (PORTABLE,)), SIMD_FORMS
rng = np.random.default_rng(5)
for name in ("Q4_0", "IQ4_NL", "Q5_K"):     # nibble kind, table kind, nibble kind with fifth bits
    bs, ts = kernels.types.BLOCK_SIZES[kernels.types.as_type(name)]
    rows, cols = 64, 512
    raw = rng.integers(0, 256, (rows * cols // bs, ts), dtype=np.uint8)
    raw[:, 0:2] = (rng.uniform(-1, 1, len(raw)) / 64).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if name == "Q5_K":
        raw[:, 2:4] = raw[:, 0:2]
    W = kernels.Weight(raw.reshape(-1), name, (rows, cols))
    x = rng.standard_normal(cols).astype(np.float32)
    ys = []
    for form in (PORTABLE, AVX2, VNNI):
        y = np.empty(rows, np.float32)
        W._matvec_kernel(form)(x, y)
        ys.append(y.view(np.uint32))
    assert all((y == ys[0]).all() for y in ys), name
print("ok")
"""


def test_no_vnni_features_fall_back_to_the_avx2_form():
    """With avx512vnni taken out of NUMBA_CPU_FEATURES, HOST_VNNI is false, SIMD_FORMS holds the
    portable and (AVX2 hosts) AVX2 forms, and every form, the VNNI one asked for included, gives
    the portable loops' bits for a nibble, a table and a 5-bit nibble type."""
    from llvmlite import binding
    feats = binding.get_host_cpu_features()
    if "avx512vnni" in feats:
        feats["avx512vnni"] = False
    env = dict(os.environ, NUMBA_CPU_FEATURES=feats.flatten())
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
