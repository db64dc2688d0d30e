"""Accuracy of the quantized KV cache: mean KL divergence to the f32-cache logits, ours and llama.cpp's.

    python tools/kv_cache_accuracy.py --llama-perplexity PATH/llama-perplexity --text calibration.txt \\
        [-m smollm2-135m-instruct,gemma-3-270m] [-c 1024,4096] [--types q8_0,q4_0] [--chunks 1] [-t 2]

For each model and context size, on the same text and the same chunks (the first --chunks chunks of
-c tokens; the second half of each chunk is scored, as llama.cpp's perplexity tool scores it):

1. llama.cpp: ``llama-perplexity --kl-divergence-base`` with an f32 cache, then
   ``--kl-divergence -ctk T -ctv T -fa on`` for each type T; its "Mean KLD" line is read.
2. gguf-engine: the same with gguf-perplexity's functions (``perplexity(save_base=...)`` with an f32
   cache, then ``kl_divergence(cache_type=T)``).

Prints one table row per (model, context, type): both mean KLDs and their ratio (ours / llama.cpp's;
at most 1 means the engine's quantized cache is no worse than llama.cpp's).  Base files go to
--workdir (default: a temporary folder, removed afterwards).  Runs one process at a time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gguf_engine.models import resolve_model  # noqa: E402
from gguf_engine.quantize.perplexity import kl_divergence, perplexity  # noqa: E402

MEAN_KLD = re.compile(r"Mean\s+KLD:\s+([-0-9.eE+]+)")


def llama_kld(exe: str, model: str, text: str, n_ctx: int, chunks: int, cache_type: str, base: str,
              threads: int) -> float | None:
    """llama.cpp's mean KLD of cache_type against its f32-cache base (written first when missing)."""
    common = [exe, "-m", model, "-c", str(n_ctx), "-b", str(n_ctx), "--chunks", str(chunks), "-t", str(threads)]
    if not os.path.exists(base):
        subprocess.run(common + ["-f", text, "-ctk", "f32", "-ctv", "f32", "--kl-divergence-base", base],
                       check=True, capture_output=True, text=True)
    out = subprocess.run(common + ["--kl-divergence-base", base, "--kl-divergence", "-ctk", cache_type,
                                   "-ctv", cache_type, "-fa", "on"], check=True, capture_output=True, text=True)
    m = MEAN_KLD.search(out.stdout + out.stderr)
    return float(m.group(1)) if m else None


def our_kld(model: str, text: str, n_ctx: int, chunks: int, cache_type: str, base: str, threads: int) -> float:
    """gguf-engine's mean KLD of cache_type against its own f32-cache base (written first when missing)."""
    if not os.path.exists(base):
        with open(text, encoding="utf-8") as f:
            perplexity(model, f.read(), n_ctx, chunks, save_base=base, n_threads=threads, cache_type="f32")
    return kl_divergence(model, base, chunks, n_threads=threads, cache_type=cache_type).mean_kld


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-perplexity", required=True, help="path of llama.cpp's llama-perplexity")
    ap.add_argument("--text", required=True, help="text to evaluate (UTF-8)")
    ap.add_argument("-m", "--models", default="smollm2-135m-instruct,gemma-3-270m",
                    help="registry names or GGUF paths, comma-separated")
    ap.add_argument("-c", "--ctx", default="1024,4096", help="context sizes, comma-separated")
    ap.add_argument("--types", default="q8_0,q4_0", help="cache types, comma-separated")
    ap.add_argument("--chunks", type=int, default=1, help="chunks of each context size (default: 1)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the base files go (default: a temporary folder)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        print(f"{'model':28} {'n_ctx':>6} {'type':>6} {'KLD llama.cpp':>14} {'KLD ours':>12} {'ours/llama':>10}",
              flush=True)
        for name in args.models.split(","):
            model = str(resolve_model(name))
            stem = os.path.splitext(os.path.basename(model))[0]
            for n_ctx in (int(c) for c in args.ctx.split(",")):
                for t in args.types.split(","):
                    ref = llama_kld(args.llama_perplexity, model, args.text, n_ctx, args.chunks, t,
                                    os.path.join(work, f"{stem}-{n_ctx}.llama.kld"), args.threads)
                    ours = our_kld(model, args.text, n_ctx, args.chunks, t,
                                   os.path.join(work, f"{stem}-{n_ctx}.ours.kld"), args.threads)
                    ratio = f"{ours / ref:10.2f}" if ref else f"{'-':>10}"
                    print(f"{stem:28} {n_ctx:6d} {t:>6} {ref if ref is not None else float('nan'):14.6f} "
                          f"{ours:12.6f} {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
