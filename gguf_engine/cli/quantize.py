"""``gguf-quantize [options] in.gguf out.gguf TYPE [nthreads]``: quantize a GGUF model file."""
from __future__ import annotations

import argparse
import os
import sys
import time

from kernels.types import GGMLType, as_type

from ..quantize.ftypes import help_lines, parse_ftype
from ._common import CLIError, cli_entry

EPILOG_EXAMPLES = """\
examples:
  gguf-quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M
  gguf-quantize --imatrix imatrix.gguf model-f16.gguf model-IQ2_XS.gguf iq2_xs 8
  gguf-quantize --tensor-type attn_v=q8_0 --output-tensor-type q8_0 model-f16.gguf out.gguf Q4_K_S
  gguf-quantize --override-kv general.name=str:my-model model-f16.gguf out.gguf Q8_0

notes:
  TYPE is case-insensitive; a number selects the ftype with that id.
  --include-weights and --exclude-weights cannot be used together.
  IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S and Q2_K_S need an importance matrix (--imatrix).
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors exit with status 1 (not 2), like the llama.cpp tools."""

    def error(self, message: str):
        raise CLIError(f"{message} (see {self.prog} --help)")


def _ggml_type(text: str) -> GGMLType:
    try:
        return as_type(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ggml_type {text!r}") from None


def _tensor_type(text: str) -> tuple[str, GGMLType]:
    name, sep, qtype = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"malformed tensor type {text!r} (expected NAME_REGEX=TYPE)")
    if not name:
        raise argparse.ArgumentTypeError("missing tensor name in --tensor-type")
    if not qtype:
        raise argparse.ArgumentTypeError("missing quantization type in --tensor-type")
    return name.lower(), _ggml_type(qtype)


def build_parser() -> argparse.ArgumentParser:
    types = "\n".join(help_lines())
    p = ArgumentParser(
        prog="gguf-quantize",
        usage="gguf-quantize [options] in.gguf out.gguf TYPE [nthreads]",
        description="Quantize a GGUF model with llama.cpp's per-tensor type mixtures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="allowed quantization types (id or name):\n" + types + "\n\n" + EPILOG_EXAMPLES)
    p.add_argument("positional", nargs="+", metavar="in.gguf out.gguf TYPE [nthreads]",
                   help="model to quantize (F32/F16/BF16, or quantized with --allow-requantize), the file to "
                        "write (must differ from the input; when left out it is ggml-model-TYPE.gguf beside "
                        "the input), the quantization type (see below) and the encoder thread count")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow requantizing tensors that are already quantized (costs quality)")
    p.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight un(re)quantized")
    p.add_argument("--pure", action="store_true",
                   help="disable the k-quant mixtures and quantize all tensors to the same type")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix (GGUF or legacy .dat)")
    p.add_argument("--include-weights", metavar="NAME", action="append", default=[],
                   help="use the importance matrix only for tensors whose name contains NAME (repeatable)")
    p.add_argument("--exclude-weights", metavar="NAME", action="append", default=[],
                   help="do not use the importance matrix for tensors whose name contains NAME (repeatable)")
    p.add_argument("--output-tensor-type", metavar="GGML_TYPE", type=_ggml_type,
                   help="type for output.weight")
    p.add_argument("--token-embedding-type", metavar="GGML_TYPE", type=_ggml_type,
                   help="type for the token embeddings")
    p.add_argument("--tensor-type", metavar="NAME_REGEX=TYPE", type=_tensor_type, action="append", default=[],
                   help="quantize tensors matching the regex to TYPE (repeatable; first match wins), "
                        "e.g. attn_q=q8_0")
    p.add_argument("--tensor-type-file", metavar="FILE", action="append", default=[],
                   help="NAME_REGEX=TYPE entries separated by spaces or newlines, as --tensor-type")
    p.add_argument("--dry-run", action="store_true",
                   help="show the tensor types and the final size without quantizing (out.gguf may be left out)")
    p.add_argument("--override-kv", metavar="KEY=TYPE:VALUE", action="append", default=[],
                   help="set a metadata value in the output: TYPE is int, float, bool or str (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-tensor log lines")
    return p


def _positionals(pos: list[str]):
    """``in out TYPE [nthreads]`` or, as llama-quantize also accepts, ``in TYPE [nthreads]``."""
    if len(pos) < 2:
        raise CLIError("bad arguments: expected in.gguf out.gguf TYPE [nthreads] (see gguf-quantize --help)")
    inp = pos[0]
    try:
        ftype = parse_ftype(pos[1])
        out = os.path.join(os.path.dirname(inp), f"ggml-model-{ftype.name}.gguf")
        rest = pos[2:]
    except ValueError:
        out = pos[1]
        if len(pos) < 3:
            raise CLIError("missing quantization type (see gguf-quantize --help)") from None
        try:
            ftype = parse_ftype(pos[2])
        except ValueError as e:
            raise CLIError(str(e)) from None
        rest = pos[3:]
    if len(rest) > 1:
        raise CLIError(f"unexpected arguments: {' '.join(rest[1:])}")
    nthreads = None
    if rest:
        try:
            nthreads = int(rest[0])
        except ValueError:
            raise CLIError(f"invalid nthreads {rest[0]!r}") from None
    return ftype, inp, out, nthreads


@cli_entry("gguf-quantize", stop_signals=True)
def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from ..quantize.model_quantizer import KVOverride, quantize_model

    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        raise CLIError(msg)

    ftype, args.input, args.output, args.nthreads = _positionals(args.positional)
    for path in args.tensor_type_file:
        try:
            with open(path, encoding="utf-8") as f:
                entries = f.read().split()
        except OSError as e:
            raise CLIError(f"failed to open file {path!r}: {e.strerror}") from None
        try:
            args.tensor_type.extend(_tensor_type(entry) for entry in entries)
        except argparse.ArgumentTypeError as e:
            raise CLIError(f"{path}: {e}") from None
    if args.include_weights and args.exclude_weights:
        return fail("--include-weights and --exclude-weights cannot be used together")
    try:
        overrides = [KVOverride.parse(o) for o in args.override_kv]
    except ValueError as e:
        return fail(str(e))
    if args.nthreads is not None and args.nthreads < 0:
        return fail(f"invalid nthreads {args.nthreads}")

    def log(line: str) -> None:
        if args.quiet and line.startswith("["):
            return
        tqdm.write(line, file=sys.stdout)

    t0 = time.perf_counter()
    try:
        res = quantize_model(args.input, args.output, ftype, imatrix=args.imatrix, nthreads=args.nthreads,
                             include_weights=args.include_weights, exclude_weights=args.exclude_weights,
                             output_tensor_type=args.output_tensor_type,
                             token_embedding_type=args.token_embedding_type,
                             tensor_types=args.tensor_type, leave_output_tensor=args.leave_output_tensor,
                             pure=args.pure, allow_requantize=args.allow_requantize, override_kv=overrides,
                             dry_run=args.dry_run, log=log, progress=not args.no_progress and not args.dry_run)
    except ValueError as e:   # QuantizeError, ImatrixError, GGUFError are ValueErrors
        return fail(str(e))
    if args.dry_run:
        return 0
    print(f"quantize time = {(time.perf_counter() - t0) * 1000:8.2f} ms")
    print(f"wrote {res.out_path}: {res.size_after / 2**20:.2f} MiB, {res.bpw_after:.2f} bits per weight "
          f"(from {res.size_before / 2**20:.2f} MiB, {res.bpw_before:.2f} bpw)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
