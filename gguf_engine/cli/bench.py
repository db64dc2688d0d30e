"""gguf-bench: prompt-processing and generation throughput, in the manner of llama-bench."""
from __future__ import annotations

import argparse
import json
import sys

from ._common import CLIError, cli_entry

EXAMPLES = """examples:
  gguf-bench -m smollm2-135m-instruct                 # pp512 and tg128, all cores, 5 repetitions
  gguf-bench -m model.gguf -p 512 -n 128 -t 2 -r 3
  gguf-bench -m gemma-3-270m -p 0 -n 64 -o json       # generation only, JSON output
  gguf-bench -m model.gguf --cold                     # also time a first run on an empty Numba cache
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gguf-bench", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None, help="model path or registry name (default: SmolLM2)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens for the ppN test (0: skip)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens for the tgN test (0: skip)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="timed repetitions per test")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU")
    p.add_argument("-o", "--output", choices=["md", "json"], default="md", help="output format")
    p.add_argument("--cold", action="store_true", help="also time a first run with an empty Numba cache")
    return p


@cli_entry("gguf-bench")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repetitions < 1 or args.n_prompt < 0 or args.n_gen < 0:
        raise CLIError("repetitions must be >= 1 and token counts >= 0")
    from ..bench import cold_start_seconds, markdown_table, peak_rss_bytes, run_bench
    from ..models import DEFAULT_MODEL, resolve_model
    path = str(resolve_model(args.model or DEFAULT_MODEL))
    try:
        results = run_bench(path, args.n_prompt, args.n_gen, args.threads, args.repetitions, args.n_gpu_layers)
        cold = cold_start_seconds(path, args.threads) if args.cold else None
    except ValueError as e:  # a bad model file or setting (GGUFError is one)
        raise CLIError(str(e)) from None
    rss = peak_rss_bytes()
    if args.output == "json":
        out = {"results": [r.as_dict() for r in results], "peak_rss_bytes": rss}
        if cold is not None:
            out["cold_start_s"] = cold
        print(json.dumps(out, indent=2))
    else:
        print(markdown_table(results))
        print(f"\npeak RSS: {rss / (1 << 20):.1f} MiB")
        if cold is not None:
            print(f"first run on an empty Numba cache: {cold:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
