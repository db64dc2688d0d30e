"""gguf-bench: prompt-processing and generation throughput, in the manner of llama-bench.

Flags follow llama-bench: -m, -p, -n, -d, -t, -ngl and -b take comma-separated lists (every combination
is run), -pg PP,TG adds a prompt-then-generate test (repeatable), -d D runs the tests on a cache
already holding D tokens (filled untimed, shown as "tg128 @ d512"), -r sets the repetitions and
-o md|json|jsonl|csv the output; JSON output carries llama-bench's field names.  llama-bench's
other flags are refused by name (exit status 1).
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import platform
import sys

from ._common import CLIError, add_cache_type_flags, cli_entry, parse_or_status, refuse_other_flags
from .llama_flags import BENCH

EXAMPLES = """examples:
  gguf-bench -m smollm2-135m-instruct                 # pp512 and tg128, all cores, 5 repetitions
  gguf-bench -m model.gguf -p 512 -n 128 -t 2 -r 3
  gguf-bench -m gemma-3-270m -p 0 -n 64 -o json       # generation only, llama-bench's JSON fields
  gguf-bench -p 64,256 -n 0 -t 1,2                    # every combination of the lists
  gguf-bench -p 0 -n 0 -pg 128,32                     # 128 prompt tokens then 32 generated, as one test
  gguf-bench -p 512 -n 128 -d 0,4096                  # also both tests after 4096 tokens in the cache
  gguf-bench -m model.gguf --cold                     # also time a first run on an empty Numba cache
  gguf-bench -p 512 -n 128 -ctk f16,q8_0 -ctv f16,q8_0 -c 8192    # KV cache types, an 8192-token cache
"""


def int_list(text: str) -> list[int]:
    """llama-bench's comma list of integers ("1,2,4")."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def pg_pair(text: str) -> tuple[int, int]:
    values = int_list(text)
    if len(values) != 2 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"-pg takes PP,TG (two counts >= 0), got {text!r}")
    return values[0], values[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gguf-bench", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", action="append", default=None,
                   help="model path or registry name; repeatable or comma-separated (default: SmolLM2)")
    p.add_argument("-p", "--n-prompt", type=int_list, default=[512], help="prompt tokens for ppN tests (0: skip)")
    p.add_argument("-n", "--n-gen", type=int_list, default=[128], help="generated tokens for tgN tests (0: skip)")
    p.add_argument("-pg", action="append", type=pg_pair, default=[], metavar="PP,TG",
                   help="a test of PP prompt tokens then TG generated ones (repeatable)")
    p.add_argument("-d", "--n-depth", type=int_list, default=[0],
                   help="tokens already in the KV cache when each test starts (filled untimed; default 0)")
    p.add_argument("-t", "--threads", type=int_list, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-b", "--batch-size", type=int_list, default=None,
                   help="prompt tokens per forward pass (default: the whole prompt)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="timed repetitions per test")
    p.add_argument("-ngl", "--n-gpu-layers", type=int_list, default=[0], help="layers to offload to a GPU")
    p.add_argument("-o", "--output", choices=["md", "json", "jsonl", "csv"], default="md", help="output format")
    add_cache_type_flags(p, lists=True)
    p.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="KV cache size in tokens (our own flag; default 0: the largest test's tokens, as "
                        "llama-bench sizes it)")
    p.add_argument("--cold", action="store_true", help="also time a first run with an empty Numba cache")
    refuse_other_flags(p, BENCH, "gguf-bench")
    return p


def llama_bench_record(r, threads: int) -> dict:
    """One result with llama-bench's JSON field names and types (fields that describe llama.cpp
    options this engine does not have carry their llama-bench defaults)."""
    ns = [round(1e9 * (r.n_prompt + r.n_gen) / ts) for ts in r.samples_ts]
    avg_ns = round(sum(ns) / len(ns))
    sd_ns = round((sum((x - avg_ns) ** 2 for x in ns) / (len(ns) - 1)) ** 0.5) if len(ns) > 1 else 0
    return {
        "build_commit": "gguf-engine", "build_number": 0, "cpu_info": platform.processor() or platform.machine(),
        "gpu_info": "", "backends": r.backend, "model_filename": r.model_filename, "model_type": r.model_type,
        "model_size": r.size_bytes, "model_n_params": r.n_params, "n_batch": r.n_batch, "n_ubatch": r.n_batch,
        "n_threads": threads, "cpu_mask": "0x0", "cpu_strict": False, "poll": 50, "type_k": r.type_k,
        "type_v": r.type_v, "n_gpu_layers": r.n_gpu_layers, "n_cpu_moe": 0, "split_mode": "layer",
        "main_gpu": 0, "no_kv_offload": False, "flash_attn": 0, "devices": "auto", "tensor_split": "0.00",
        "tensor_buft_overrides": "none", "load_mode": "mmap", "lazy_mode": "off", "embeddings": False,
        "no_op_offload": 0, "no_host": False, "repack": False, "fit_target": 0, "fit_min_ctx": 0,
        "n_prompt": r.n_prompt, "n_gen": r.n_gen, "n_depth": r.n_depth, "test_time": r.test_time,
        "avg_ns": avg_ns, "stddev_ns": sd_ns, "avg_ts": r.avg_ts, "stddev_ts": r.stddev_ts,
        "samples_ns": ns, "samples_ts": list(r.samples_ts),
        "memory": r.memory,
    }


@cli_entry("gguf-bench")
def main(argv=None) -> int:
    args, status = parse_or_status(build_parser(), argv)
    if args is None:
        return status
    counts = args.n_prompt + args.n_gen + [v for pair in args.pg for v in pair]
    if args.repetitions < 1 or min(counts) < 0:
        raise CLIError("repetitions must be >= 1 and token counts >= 0")
    if min(args.n_depth) < 0:
        raise CLIError(f"--n-depth values must be >= 0, got {min(args.n_depth)}")
    for name, values in (("threads", args.threads), ("batch-size", args.batch_size)):
        if values is not None and min(values) < 1:
            raise CLIError(f"--{name} values must be >= 1")
    tests = ([(p, 0) for p in args.n_prompt if p > 0] + [(0, n) for n in args.n_gen if n > 0]
             + [(p, g) for p, g in args.pg if p + g > 0])
    if not tests:
        raise CLIError("nothing to run: every -p, -n and -pg count is 0")
    from ..bench import cold_start_seconds, markdown_table, peak_rss_bytes, run_tests
    from ..models import DEFAULT_MODEL, resolve_model
    names = [n for m in (args.model or [DEFAULT_MODEL]) for n in m.split(",") if n]
    results, records, cold = [], [], {}
    if args.ctx_size < 0:
        raise CLIError("--ctx-size must be >= 0")
    for name, threads, ngl, batch, ctk, ctv in itertools.product(
            names, args.threads or [os.cpu_count() or 1], args.n_gpu_layers, args.batch_size or [None],
            args.cache_type_k, args.cache_type_v):
        path = str(resolve_model(name))
        try:
            rs = run_tests(path, tests, threads, args.repetitions, ngl, n_batch=batch, cache_type=(ctk, ctv),
                           n_ctx=args.ctx_size or None, depths=tuple(args.n_depth))
            if args.cold and path not in cold:
                cold[path] = cold_start_seconds(path, threads)
        except ValueError as e:  # a bad model file or setting (GGUFError is one)
            raise CLIError(str(e)) from None
        results += rs
        records += [llama_bench_record(r, threads) for r in rs]
    rss = peak_rss_bytes()
    if args.output == "json":
        print(json.dumps(records, indent=2))
    elif args.output == "jsonl":
        for rec in records:
            print(json.dumps(rec))
    elif args.output == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[k for k in records[0] if not k.startswith("samples_") and k != "memory"],
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        print(buf.getvalue(), end="")
    else:
        print(markdown_table(results))
        print(f"\npeak RSS: {rss / (1 << 20):.1f} MiB")
    for path, seconds in cold.items():
        print(f"first run of {os.path.basename(path)} on an empty Numba cache: {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
