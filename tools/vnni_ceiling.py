"""The integer multi-row product's ceiling on this CPU: cycles per ``vpdpbusd`` in instruction mixes
built up step by step towards the Q4_K multi-row product's inner loop (``kinds.nibble``).

    python tools/vnni_ceiling.py [--reps 7]
    python tools/bench_kernels.py --ceiling       (the same table)

Each mix is a loop of hand-written AVX-512 instructions (inline assembly, so exactly these
instructions run) repeated many times on one core; its CPU time over the loop count, in cycles of
a dependent chain of scalar adds (one cycle each) timed alternately with it, gives cycles per
``vpdpbusd``.  The mixes, per 64 ``vpdpbusd`` (one 16-row group of a 32-weight block times 4
activation rows and their 2 terms, as the kernel runs it):

  regs N acc        512-bit ``vpdpbusd`` on registers, N independent accumulators (N / 2 < the
                    latency in cycles: the chains, not the pipes, bound it)
  ymm 16 acc        the same on 256-bit registers (per instruction: half the work)
  bcast operand     the activations' 4 bytes as an embedded-broadcast memory operand ({1to16})
  vpbroadcastd      the activations broadcast by a separate instruction per use
  + unpack          and the weights' 64-byte loads, ``vpandq`` / ``vgf2p8affineqb`` (the nibbles)
  + combine in regs and the float combine per 16 rows x 4 activation rows: 10 ``vcvtdq2ps``, 4
                    ``vmulps``, 12 FMAs (the per-block scalars as broadcast operands)
  + combine via mem the same with the super-block sums aq, am loaded and stored per block (as the
                    kernel keeps them)
  Q4_K kernel       the real thing: the Q4_K multi-row product (``row_items_nibk``, ROW_ITEMS of
                    16 rows) of a 1024x1024 weight times 64 rounded rows (the rounding left out),
                    32 ``vpdpbusd`` per 32-weight block of 32 rows and activation row

Figures need a core of their own: on a loaded machine the CPU time stays honest but cache and
frequency effects creep in; compare mixes within one run."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernels.simd import HOST_VNNI  # noqa: E402

binding.initialize_native_asmparser()          # Numba leaves it out: inline assembly needs it
I64 = ir.IntType(64)
ZMM_CLOBBERS = ",".join(f"~{{xmm{i}}}" for i in range(32))


def _loop_intrinsic(name: str, body: str):
    """An intrinsic f(n, buf) running the assembly `body` n times (buf: a float32 array whose data
    pointer is %rsi in the body, 4 KiB at least)."""

    def loop(typingctx, n, buf):
        sig = types.int64(n, buf)

        def codegen(context, builder, signature, args):
            n, buf = args
            ptr = cgutils.create_struct_proxy(signature.args[1])(context, builder, value=buf).data
            ptr = builder.ptrtoint(ptr, I64)
            asm = f"1:\n{body}\ndecq $0\njnz 1b"
            fty = ir.FunctionType(I64, [I64, I64])
            fn = ir.InlineAsm(fty, asm, f"=r,0,{{rsi}},{ZMM_CLOBBERS},~{{rax}},~{{memory}},~{{flags}}",
                              side_effect=True)
            return builder.call(fn, [n, ptr])

        return sig, codegen

    loop.__name__ = loop.__qualname__ = name
    return intrinsic(loop)


def _lines(*parts) -> str:
    """Assembly lines (strings or lists of them) joined into one body."""
    return "\n".join(p for part in parts for p in (part if isinstance(part, list) else [part]))


def dp(acc: int, a: int, b: int | str, w: str = "zmm") -> str:
    """vpdpbusd acc += a (unsigned bytes) x b (signed bytes: a register number or a memory operand)."""
    src = f"%{w}{b}" if isinstance(b, int) else b
    return f"vpdpbusd {src}, %{w}{a}, %{w}{acc}"


def bcast(off: int) -> str:
    """The 4 bytes at word `off` of the buffer, broadcast to 16 lanes (an embedded-broadcast operand)."""
    return f"{4 * off}(%rsi){{1to16}}"


def _regs(n_acc: int, w: str = "zmm") -> str:
    """64 vpdpbusd on n_acc accumulators (zmm0..), sources zmm30, zmm31."""
    return _lines([dp(i % n_acc, 30, 31, w) for i in range(64)])


def _unpack_and_dots(operand) -> list[str]:
    """One 16-row group of a block times 4 activation rows x 2 terms: 4 weight loads split into low
    and high nibbles (vpandq, vgf2p8affineqb), each times 8 activation words (operand(i): the 4
    bytes' operand form), 8 accumulators zmm0..7."""
    out = []
    for g in range(4):
        out += [f"vmovdqu64 {1024 + 128 * g}(%rsi), %zmm20", "vpandq %zmm28, %zmm20, %zmm21",
                "vgf2p8affineqb $$0, %zmm29, %zmm20, %zmm22"]
        out += [dp(t, 21, operand(8 * g + t)) for t in range(8)]
        out += [dp(t, 22, operand(8 * g + t + 4)) for t in range(8)]
    return out


def _combine(via_memory: bool) -> list[str]:
    """The float combine of 8 int32 sums (zmm0..7: 4 rows x 2 terms) into 4 aq and 4 am sums:
    2 sub-scale conversions, per row 2 conversions, a multiply and an FMA for p, an FMA into aq and
    one into am (zmm8..15 in registers, or loaded from and stored to memory per block)."""
    out = ["vpmovzxbd 2048(%rsi), %zmm23", "vcvtdq2ps %zmm23, %zmm23",
           "vpmovzxbd 2064(%rsi), %zmm24", "vcvtdq2ps %zmm24, %zmm24"]
    for r in range(4):
        q, s = 2 * r, 2 * r + 1
        out += [f"vcvtdq2ps %zmm{q}, %zmm{q}", f"vcvtdq2ps %zmm{s}, %zmm{s}",
                f"vmulps {bcast(64 + r)}, %zmm{s}, %zmm{s}",
                f"vfmadd231ps {bcast(72 + r)}, %zmm{q}, %zmm{s}"]
        aq, am = 8 + r, 12 + r
        if via_memory:
            out += [f"vmovups {3072 + 64 * r}(%rsi), %zmm{aq}", f"vmovups {3328 + 64 * r}(%rsi), %zmm{am}"]
        out += [f"vfmadd231ps %zmm23, %zmm{s}, %zmm{aq}", f"vfmadd231ps {bcast(80 + r)}, %zmm24, %zmm{am}"]
        if via_memory:
            out += [f"vmovups %zmm{aq}, {3072 + 64 * r}(%rsi)", f"vmovups %zmm{am}, {3328 + 64 * r}(%rsi)"]
        out += [f"vpxord %zmm{q}, %zmm{q}, %zmm{q}", f"vpxord %zmm{s}, %zmm{s}, %zmm{s}"]
    return out


# (label, assembly per iteration, vpdpbusd per iteration)
MIXES = [
    ("regs 4 acc", _regs(4), 64),
    ("regs 8 acc", _regs(8), 64),
    ("regs 16 acc", _regs(16), 64),
    ("ymm 16 acc", _regs(16, "ymm"), 64),
    ("bcast operand", _lines([dp(i % 8, 30, bcast(i % 32)) for i in range(64)]), 64),
    ("vpbroadcastd", _lines([ins for i in range(64) for ins in
                             (f"vpbroadcastd {4 * (i % 32)}(%rsi), %zmm{24 + i % 4}", dp(i % 8, 30, 24 + i % 4))]), 64),
    ("+ unpack", _lines(_unpack_and_dots(bcast)), 64),
    ("+ combine in regs", _lines(_unpack_and_dots(bcast), _combine(False)), 64),
    ("+ combine via mem", _lines(_unpack_and_dots(bcast), _combine(True)), 64),
]
ADDS = 256
_clock_loop = _loop_intrinsic("_adds", _lines(["addq $$1, %rax"] * ADDS))
_loops = [_loop_intrinsic(f"_mix{i}", body) for i, (_, body, _) in enumerate(MIXES)]


def _runner(f):
    """A jitted run(n, buf) of the loop intrinsic f."""
    @njit
    def run(n, buf):
        return f(n, buf)
    return run


def q4k_kernel(n: int = 64, rows: int = 1024, cols: int = 1024):
    """(call, vpdpbusd per call): the Q4_K multi-row product on random weights and pre-rounded rows."""
    import kernels
    from bench_kernels import random_tensor
    from kernels.kinds.tiled import ROW_ITEM_ROWS, ROW_TILE, expert_row_items
    from kernels.types import GGMLType
    rng = np.random.default_rng(0)
    W = kernels.Weight(random_tensor(GGMLType.Q4_K, rows, cols, rng), GGMLType.Q4_K, (rows, cols))
    kind, p = W.kind, W.packed
    act = kind.row_activations(rng.standard_normal((n, cols), dtype=np.float32))
    T = rows // ROW_TILE
    items = expert_row_items(np.array([0, n], np.int64), T, ROW_ITEM_ROWS, 1)
    product = kind.row_items(p)
    out = np.empty((n, rows), np.float32)
    return (lambda: product(act, *items, out)), n * T * (cols // 32) * 32


def ceiling_table(reps: int = 7) -> None:
    """Print cycles per vpdpbusd for each mix (see the module docstring)."""
    if not HOST_VNNI:
        print("no AVX-512 VNNI on this host: nothing to measure")
        return
    buf = np.zeros(1024, np.float32)            # 4 KiB: activations, weights, scales, sums
    clock_run = _runner(_clock_loop)
    runs = [_runner(f) for f in _loops]
    n = 20000

    def timed(run, count):
        run(2, buf)
        t0 = time.process_time()
        run(count, buf)
        return time.process_time() - t0
    import kernels
    kernels.set_num_threads(1)
    kernel, kernel_dps = q4k_kernel()
    kernel()                                     # compiled before timing
    best = [np.inf] * len(runs)
    cycle = k_best = np.inf
    for _ in range(reps):                        # alternating: the clock, then every mix
        cycle = min(cycle, timed(clock_run, 4 * n) / (4 * n * ADDS))
        for i, run in enumerate(runs):
            best[i] = min(best[i], timed(run, n) / n)
        for _ in range(10):
            t0 = time.process_time()
            kernel()
            k_best = min(k_best, time.process_time() - t0)
    print(f"one core, CPU time; clock from dependent adds: {1 / cycle / 1e9:.2f} GHz")
    hdr = f"{'mix':20} {'cycles / vpdpbusd':>17} {'instructions / vpdpbusd':>23}"
    print(hdr)
    print("-" * len(hdr))
    for (label, body, dps), sec in zip(MIXES, best):
        print(f"{label:20} {sec / cycle / dps:17.2f} {len(body.splitlines()) / dps:23.2f}")
    print(f"{'Q4_K kernel':20} {k_best / cycle / kernel_dps:17.2f} {'-':>23}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    ceiling_table(args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
