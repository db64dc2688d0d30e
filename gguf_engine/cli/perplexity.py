"""``gguf-perplexity -m MODEL -f TEXT [-c 512] [--kl-divergence-base FILE] [--kl-divergence]``

Perplexity over chunks of a text, scored and printed as llama.cpp's perplexity tool does, so the
numbers are comparable.  ``--kl-divergence-base FILE`` (without ``--kl-divergence``) also saves the
model's log-probabilities; ``--kl-divergence`` then compares another model against that file
(the text is taken from the file, -f is not needed).
"""
from __future__ import annotations

import argparse
import sys

from ..atomic import check_output_path
from ._common import CLIError, add_cache_type_flags, cache_types_of, cli_entry, parse_or_status, refuse_other_flags
from .llama_flags import COMMON
from .quantize import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="gguf-perplexity",
        description="Perplexity and KL divergence of a GGUF model over a text.",
        epilog="examples:\n"
               "  gguf-perplexity -m model-f16.gguf -f wiki.test.raw -c 512 --kl-divergence-base base.kld\n"
               "  gguf-perplexity -m model-Q4_K_M.gguf --kl-divergence-base base.kld --kl-divergence\n"
               "  gguf-perplexity -m model.gguf --kl-divergence-base base.kld --kl-divergence -ctk q8_0 -ctv q8_0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model file (or registry name)")
    p.add_argument("-f", "--file", help="text file to evaluate")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=-1, help="max number of chunks (default: all)")
    p.add_argument("--kl-divergence-base", metavar="FILE",
                   help="file of base log-probabilities: written by a plain run, read with --kl-divergence")
    p.add_argument("--kl-divergence", action="store_true",
                   help="compare against the --kl-divergence-base file (KLD, percentiles, same top p)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="tokens per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cache_type_flags(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the memory report after loading (model, KV cache and compute buffers, resident set)")
    refuse_other_flags(p, COMMON, "gguf-perplexity")  # llama.cpp flags not implemented: refused by name
    return p


@cli_entry("gguf-perplexity", stop_signals=True)
def main(argv=None) -> int:
    from tqdm import tqdm

    from ..models import resolve_model
    from ..quantize.evaluate import EvalError
    from ..quantize.perplexity import kl_divergence, perplexity

    args, status = parse_or_status(build_parser(), argv)  # --help: 0; a bad or refused flag: 1
    if args is None:
        return status

    def log(line: str) -> None:
        tqdm.write(line, file=sys.stdout)

    if args.ctx_size <= 0:
        raise CLIError("--ctx-size must be positive")
    cache_type = cache_types_of(args)
    model_path = resolve_model(args.model)
    try:
        if args.kl_divergence:
            if not args.kl_divergence_base:
                raise CLIError("--kl-divergence needs --kl-divergence-base FILE (made by a run of the base model)")
            kl_divergence(model_path, args.kl_divergence_base, args.chunks, n_threads=args.threads,
                          n_batch=args.batch_size, progress=not args.no_progress, log=log, cache_type=cache_type,
                   verbose=args.verbose)
            return 0
        if not args.file:
            raise CLIError("a text file (-f) is required")
        if args.kl_divergence_base:
            check_output_path(args.kl_divergence_base)  # refused before the model runs
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise CLIError(f"{args.file}: not UTF-8 text ({e})") from None
        perplexity(model_path, text, args.ctx_size, args.chunks, save_base=args.kl_divergence_base,
                   n_threads=args.threads, n_batch=args.batch_size, progress=not args.no_progress, log=log,
                   cache_type=cache_type,
                   verbose=args.verbose)
    except EvalError as e:
        raise CLIError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
