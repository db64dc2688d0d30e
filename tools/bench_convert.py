"""Conversion speed and memory: gguf-convert against llama.cpp's convert_hf_to_gguf.py, and straight to a
quantization type against converting and then quantizing.

    python tools/bench_convert.py --llama-cpp PATH/llama.cpp --python PATH/venv/bin/python \
        [--layers 16] [--ftype Q4_0] [--rounds 2] [--workdir DIR]

The input is a random checkpoint shaped like Llama 3.2 1B (hidden 2048, 16 layers, 32 query / 8 KV heads,
FFN 8192, 128256-token vocabulary, tied embeddings, bf16 safetensors in two shards) with a Llama 3 BPE
tokenizer rebuilt from llama.cpp's vocabulary file; ``--layers`` makes it shallower.  Every measurement is
one whole command in a fresh process, as a user runs it, and its peak resident memory is read from the
kernel's accounting for that process (``wait4``).  Runs alternate (llama.cpp, ours, two-step, direct, ...)
so that load from other programs hits all of them; the table gives median wall seconds, the ratio against
the baseline of the same row pair, and peak RSS.  The environment named by ``--python`` needs torch and
transformers (llama.cpp's converter); without ``--llama-cpp`` only our side is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hf_checkpoints import VOCAB_DIR, make_config, write_bpe_tokenizer  # noqa: E402

SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
         "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072,
         "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}}


def _write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng) -> None:
    """A bf16 safetensors file written tensor by tensor (random values, never the whole model in memory)."""
    header, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, shape in tensors:
            x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())


def make_checkpoint(folder: Path, layers: int) -> int:
    """The benchmark checkpoint; returns the byte size of its largest tensor (as bf16)."""
    folder.mkdir(parents=True, exist_ok=True)
    special = write_bpe_tokenizer(VOCAB_DIR / "ggml-vocab-llama-bpe.gguf", "llama-bpe", folder)
    cfg = make_config("llama", 128256, special, num_hidden_layers=layers, torch_dtype="bfloat16", **SHAPE)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    d, ff, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    names = [("model.embed_tokens.weight", (cfg["vocab_size"], d)), ("model.norm.weight", (d,))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,)),
                  (p + "self_attn.q_proj.weight", (nq, d)), (p + "self_attn.k_proj.weight", (nkv, d)),
                  (p + "self_attn.v_proj.weight", (nkv, d)), (p + "self_attn.o_proj.weight", (d, nq)),
                  (p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d)),
                  (p + "mlp.down_proj.weight", (d, ff))]
    rng = np.random.default_rng(0)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        _write_safetensors(folder / fname, sorted(part), rng)
        weight_map.update({n: fname for n, _ in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    return max(int(np.prod(s)) * 2 for _, s in names)


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command run to completion."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{out[-3000:].decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", help="llama.cpp source tree (convert_hf_to_gguf.py and gguf-py)")
    ap.add_argument("--python", help="python of an environment with torch and transformers, for llama.cpp's converter")
    ap.add_argument("--layers", type=int, default=16, help="transformer blocks (default 16, as Llama 3.2 1B)")
    ap.add_argument("--outtype", default="bf16", help="--outtype of the plain conversions (default bf16)")
    ap.add_argument("--ftype", default="Q4_0", help="quantization type of the direct/two-step pair (default Q4_0)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", help="where the checkpoint and outputs go (default: a temporary directory)")
    ap.add_argument("--make-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-convert-"))
    model = work / "llama-1b-shaped"
    if args.make_checkpoint:
        print(make_checkpoint(model, args.layers))
        return 0
    # made in a child process: Linux carries a parent's peak RSS into the children it starts, so this process
    # must stay small for the children's peaks to be their own
    largest = int(subprocess.run([sys.executable, __file__, "--make-checkpoint", "--layers", str(args.layers),
                                  "--workdir", str(work)], check=True, capture_output=True, text=True).stdout)
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"checkpoint: {args.layers} layers, {size / 2**30:.2f} GiB bf16, largest tensor {largest / 2**20:.0f} MiB")
    ours = [sys.executable, "-m", "gguf_engine.cli.convert", str(model), "--no-progress", "--quiet"]
    quant = [sys.executable, "-m", "gguf_engine.cli.quantize", "--no-progress", "--quiet"]
    runs: dict[str, list[tuple[float, float]]] = {}
    pairs = []
    if args.llama_cpp and args.python:
        llama = Path(args.llama_cpp).resolve()
        env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
        pairs.append(("llama.cpp convert", lambda: measure(
            [args.python, str(llama / "convert_hf_to_gguf.py"), str(model), "--outfile", str(work / "ref.gguf"),
             "--outtype", args.outtype], env)))
    pairs.append((f"gguf-convert {args.outtype}", lambda: measure(
        ours + ["--outtype", args.outtype, "--outfile", str(work / "ours.gguf")])))
    src = "bf16"

    def two_step():
        w1, r1 = measure(ours + ["--outtype", src, "--outfile", str(work / "mid.gguf")])
        w2, r2 = measure(quant + [str(work / "mid.gguf"), str(work / "two.gguf"), args.ftype])
        return w1 + w2, max(r1, r2)
    pairs.append((f"convert {src} + quantize {args.ftype}", two_step))
    pairs.append((f"gguf-convert {args.ftype}", lambda: measure(
        ours + ["--outtype", args.ftype, "--outfile", str(work / "direct.gguf")])))
    measure(ours + ["--outtype", args.ftype, "--outfile", str(work / "direct.gguf")])   # fill Numba's cache
    for _ in range(args.rounds):
        for name, fn in pairs:
            runs.setdefault(name, []).append(fn())
            print(f"  {name}: {runs[name][-1][0]:.1f} s, peak RSS {runs[name][-1][1]:.0f} MiB", flush=True)
    same = (work / "direct.gguf").read_bytes() == (work / "two.gguf").read_bytes()
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    baseline = {f"gguf-convert {args.outtype}": "llama.cpp convert",
                f"gguf-convert {args.ftype}": f"convert {src} + quantize {args.ftype}"}
    print("\n| run | median wall s | ratio to its baseline | peak RSS MiB |\n|---|---|---|---|")
    for name in runs:
        base = baseline.get(name)
        ratio = f"{med[name] / med[base]:.2f} (vs {base})" if base in med else "baseline"
        print(f"| {name} | {med[name]:.1f} | {ratio} | {max(r for _, r in runs[name]):.0f} |")
    print(f"\ndirect {args.ftype} file identical to the two-step file: {same}")
    print(f"memory bound (500 MiB + largest tensor): {500 + largest / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
