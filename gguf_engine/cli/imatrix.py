"""``gguf-imatrix -m MODEL -f TEXT [-o out] [--chunk-size 512] [--chunks N] [--output-format gguf|dat]``

Collects an importance matrix (sum of squared matmul inputs per column, with token counts) by
running the model over calibration text, as llama-imatrix does; prints the running perplexity.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..atomic import check_output_path
from ._common import CLIError, cli_entry, parse_or_status, refuse_other_flags
from .llama_flags import COMMON
from .quantize import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="gguf-imatrix",
        description="Compute an importance matrix for gguf-quantize --imatrix.",
        epilog="example: gguf-imatrix -m model-f16.gguf -f calibration.txt -o imatrix.gguf --chunk-size 512")
    p.add_argument("-m", "--model", required=True, help="model file (or registry name)")
    p.add_argument("-f", "--file", help="calibration text file")
    p.add_argument("-o", "--output", default="imatrix.gguf", help="output file (default imatrix.gguf)")
    p.add_argument("-c", "--chunk-size", "--ctx-size", dest="chunk_size", type=int, default=512,
                   help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=-1, help="number of chunks to process (default: all)")
    p.add_argument("--output-format", choices=("gguf", "dat"), default=None,
                   help="gguf (default) or the legacy binary format dat")
    p.add_argument("--in-file", action="append", default=[],
                   help="previous imatrix to accumulate into (repeatable); without -f, they are just combined")
    p.add_argument("--process-output", action="store_true", help="also collect data for output.weight")
    p.add_argument("--no-ppl", action="store_true", help="do not compute the perplexity")
    p.add_argument("--parse-special", action="store_true", help="recognize special tokens in the text")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="tokens per forward pass (default chunk size)")
    p.add_argument("--show-statistics", action="store_true",
                   help="print per-tensor statistics of the one --in-file imatrix and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    refuse_other_flags(p, COMMON, "gguf-imatrix")  # llama.cpp flags not implemented: refused by name
    return p


@cli_entry("gguf-imatrix", stop_signals=True)
def main(argv=None) -> int:
    from tqdm import tqdm

    from ..models import resolve_model
    from ..quantize.collect import collect_imatrix
    from ..quantize.evaluate import EvalError
    from ..quantize.imatrix import Imatrix, ImatrixError, read_imatrix, write_imatrix_dat, write_imatrix_gguf

    args, status = parse_or_status(build_parser(), argv)  # --help: 0; a bad or refused flag: 1
    if args is None:
        return status
    if args.chunk_size <= 0:
        raise CLIError("--chunk-size must be positive")
    fmt = args.output_format or "gguf"
    if args.output_format is None and not args.output.endswith(".gguf"):
        print("gguf-imatrix: warning: saving the GGUF format with a suffix other than .gguf "
              "(use --output-format dat for the legacy format)", file=sys.stderr)

    def log(line: str) -> None:
        tqdm.write(line, file=sys.stdout)

    if not args.show_statistics:
        check_output_path(args.output)  # refused before the model runs
    try:
        previous = [read_imatrix(p) for p in args.in_file]
        if args.show_statistics:
            from ..quantize.imatrix import format_statistics, imatrix_statistics
            if len(previous) != 1:
                raise CLIError("a single imatrix file (--in-file) is required to compute tensor statistics")
            for line in format_statistics(imatrix_statistics(previous[0])):
                print(line)
            return 0
        if args.file is None:
            if not previous:
                raise CLIError("no text (-f) and no precomputed matrices (--in-file) to combine")
            combined = Imatrix(chunk_size=args.chunk_size, has_metadata=True)
            for im in previous:
                combined.merge(im)
            result = combined
        else:
            model_path = resolve_model(args.model)
            try:
                with open(args.file, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise CLIError(f"{args.file}: not UTF-8 text ({e})") from None
            t0 = time.perf_counter()
            result = collect_imatrix(model_path, text, args.chunk_size, args.chunks, dataset=args.file,
                                     process_output=args.process_output, compute_ppl=not args.no_ppl,
                                     parse_special=args.parse_special, n_threads=args.threads,
                                     n_batch=args.batch_size, previous=previous, progress=not args.no_progress,
                                     log=log)
            log(f"collected {len(result.entries)} entries over {result.chunk_count} chunks "
                f"in {time.perf_counter() - t0:.1f} s")
        if fmt == "dat":
            write_imatrix_dat(result, args.output, dataset=args.file or "")
        else:
            write_imatrix_gguf(result, args.output)
    except (EvalError, ImatrixError) as e:
        raise CLIError(str(e)) from None
    log(f"saved imatrix ({fmt}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
