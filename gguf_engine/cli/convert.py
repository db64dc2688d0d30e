"""``gguf-convert MODEL_DIR [--outfile OUT.gguf] [--outtype TYPE]``: a Hugging Face folder to GGUF."""
from __future__ import annotations

import argparse
import sys

from ._common import CLIError, cli_entry
from .quantize import ArgumentParser

EPILOG = """\
examples:
  gguf-convert ./SmolLM2-135M-Instruct                          # F16 (or BF16 for a bf16 checkpoint with auto)
  gguf-convert ./Qwen3-0.6B --outtype q8_0 --outfile qwen3-q8_0.gguf
  gguf-convert ./Llama-3.2-1B --outtype Q4_K_M                   # straight to a quantization type
  gguf-convert ./model --outtype IQ4_XS --imatrix imatrix.gguf
  gguf-convert ./model --vocab-only --outfile vocab.gguf

notes:
  --outtype f32|f16|bf16|q8_0|auto as llama.cpp's convert_hf_to_gguf.py (auto keeps bf16/f16 sources);
  any other gguf-quantize type converts to the source's float type and quantizes tensor by tensor,
  giving the same bytes as converting and then running gguf-quantize.
  Only safetensors weights are read; PyTorch .bin pickles are refused.
"""


def build_parser() -> argparse.ArgumentParser:
    from ..convert.architectures import ARCHITECTURES
    p = ArgumentParser(prog="gguf-convert", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a Hugging Face model folder (config.json, safetensors, tokenizer) "
                                   "to GGUF. Architectures: " + ", ".join(sorted(ARCHITECTURES)) + ".",
                       epilog=EPILOG)
    p.add_argument("model", metavar="MODEL_DIR", help="the Hugging Face model folder")
    p.add_argument("--outfile", metavar="OUT.gguf",
                   help="output file (default: MODEL_DIR/NAME-TYPE.gguf inside the folder)")
    p.add_argument("--outtype", metavar="TYPE", default="f16",
                   help="f32, f16, bf16, q8_0, auto, or a quantization type such as Q4_K_M (default: f16)")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix, for quantization types only")
    p.add_argument("--vocab-only", action="store_true", help="write only the tokenizer and hyperparameters")
    p.add_argument("--model-name", metavar="NAME", help="general.name (default: the folder's name)")
    p.add_argument("--dry-run", action="store_true", help="list the tensors and their types, write nothing")
    p.add_argument("-t", "--threads", type=int, metavar="N", help="quantization threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-tensor log lines")
    return p


def _dry_run(args, log) -> int:
    """The tensors and their types, written nowhere: the converter's plan, or the quantizer's for its types."""
    from ..convert import plan_conversion
    from ..convert.converter import OUTTYPES
    from ..quantize.model_quantizer import quantize_source
    outtype = args.outtype.lower()
    quant = outtype not in (*OUTTYPES, "auto")
    model = plan_conversion(args.model, "source" if quant else outtype, args.model_name, args.vocab_only)
    try:
        if quant:
            quantize_source(model, "", args.outtype, imatrix=args.imatrix, dry_run=True,
                            log=lambda line: print(line))
            return 0
        for t in model.tensors.values():
            print(f"{t.name:<32s} {t.src_dtype:>4s} -> {t.type.name:<5s} "
                  f"shape = {{{', '.join(str(d) for d in reversed(t.shape))}}}")
        print(f"{len(model.entries)} metadata keys, {len(model.tensors)} tensors, "
              f"{sum(t.n_bytes for t in model.tensors.values()) / 2**20:.2f} MiB of data")
    finally:
        model.close()
    return 0


@cli_entry("gguf-convert", stop_signals=True)
def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from ..convert import ConvertOptions, convert_model

    args = build_parser().parse_args(argv)

    def log(line: str) -> None:
        if not args.quiet:
            tqdm.write(line, file=sys.stdout)

    try:
        if args.dry_run:
            return _dry_run(args, log)
        res = convert_model(args.model, args.outfile, ConvertOptions(
            outtype=args.outtype, model_name=args.model_name, vocab_only=args.vocab_only, imatrix=args.imatrix,
            nthreads=args.threads, progress=not args.no_progress, log=log))
    except ValueError as e:      # ConvertError, QuantizeError, ImatrixError, GGUFError
        raise CLIError(str(e)) from None
    print(f"wrote {res.out_path}: {res.n_tensors} tensors, {res.n_bytes / 2**20:.2f} MiB in {res.seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
