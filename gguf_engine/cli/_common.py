"""Shared command-line plumbing: expected errors become one line on stderr and exit status 1."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..atomic import Terminated, exit_signals
from ..gguf import GGUFError
from ..models import ModelError


class CLIError(Exception):
    """A user-facing command-line error (bad arguments, missing input): printed without a traceback."""


# OSError: the file system's answers (no such file, a directory, no permission, a full disk, a
# read-only file system) are the user's to fix, reported as ``FILE: reason``
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (GGUFError, ModelError, CLIError, OSError)


def cli_entry(prog: str, stop_signals: bool = False
              ) -> Callable[[Callable[[Sequence[str] | None], int | None]], Callable[..., int]]:
    """Decorate ``main(argv) -> status``: expected errors print ``prog: error: message`` and return 1,
    Ctrl-C returns 130, a closed stdout pipe (``| head``) returns quietly.  With ``stop_signals``
    (commands that write files) SIGTERM and SIGHUP stop the command as Ctrl-C does, so its partial
    output is removed, and it returns 128 + the signal's number."""
    def wrap(func):
        @functools.wraps(func)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                if stop_signals:
                    with exit_signals():
                        return int(func(argv) or 0)
                return int(func(argv) or 0)
            except Terminated as e:
                print(f"{prog}: {e}", file=sys.stderr)
                return 128 + e.signum
            except EXPECTED_ERRORS as e:
                msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except BrokenPipeError:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                return 0
        return main
    return wrap


HUB_FLAGS = ("-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-hft", "--hf-token", "-hfd", "-hfrd",
             "--hf-repo-draft", "-mu", "--model-url", "-dr", "--docker-repo")


def hub_message() -> str:
    from ..models import MODELS
    return (f"no model hub is reachable from here: download the GGUF file and pass it with -m FILE, or use "
            f"a registry model with -m NAME ({', '.join(MODELS)}; see `python -m gguf_engine.models list`)")


class RefuseFlag(argparse.Action):
    """A llama.cpp flag this CLI does not implement: refused by name (exit status 1), never misread."""

    def __init__(self, option_strings, dest, prog: str = "", **kwargs):
        self.prog = prog
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in HUB_FLAGS:
            raise argparse.ArgumentError(self, hub_message())
        raise argparse.ArgumentError(self, f"the llama.cpp option {option_string} is not implemented by {self.prog}")


def refuse_other_flags(parser: argparse.ArgumentParser, flags: Iterable[str], prog: str) -> None:
    """Declares every flag of ``flags`` the parser does not define yet as refused, so that argparse
    never reads a multi-letter short flag (``-fa``) as a short one with a value (``-f a``)."""
    for flag in flags:
        try:
            parser.add_argument(flag, action=RefuseFlag, prog=prog)
        except argparse.ArgumentError:  # the CLI implements it
            pass


def parse_or_status(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace | None, int]:
    """(arguments, 0), or (None, status) when argparse exits: 0 after --help, 1 on a usage error."""
    try:
        return parser.parse_args(argv), 0
    except SystemExit as e:
        return None, 0 if e.code in (0, None) else 1


def add_context_shift_args(g, full: str) -> None:
    """llama.cpp's ``--keep`` and ``--context-shift`` / ``--no-context-shift`` (default: disabled);
    full: what happens at a full context without the shift."""
    g.add_argument("--keep", type=int, default=0,
                   help="context shift: tokens of the initial prompt to keep after BOS (default: 0, -1 = all)")
    cs = g.add_mutually_exclusive_group()
    cs.add_argument("--context-shift", dest="context_shift", action="store_true", default=False,
                    help=f"when the context is full, drop the oldest half after --keep and go on generating "
                         f"(default: disabled, {full})")
    cs.add_argument("--no-context-shift", dest="context_shift", action="store_false",
                    help=f"{full} (the default)")


def add_cache_type_flags(parser, lists: bool = False) -> None:
    """llama.cpp's -ctk/--cache-type-k and -ctv/--cache-type-v (KV cache types, default f32 here);
    with ``lists`` they take llama-bench's comma-separated lists, else -fa/--flash-attn comes too
    (a quantized V cache needs it, as in llama.cpp)."""
    from ..model.kv_cache import CACHE_TYPES

    def one(text: str) -> str:
        if text not in CACHE_TYPES:
            raise argparse.ArgumentTypeError(f"unsupported cache type {text!r}; allowed: {', '.join(CACHE_TYPES)}")
        return text

    def several(text: str) -> list[str]:
        return [one(t) for t in text.split(",") if t] or [one("")]

    kind = several if lists else one
    default = ["f32"] if lists else "f32"
    allowed = ", ".join(CACHE_TYPES)
    parser.add_argument("-ctk", "--cache-type-k", dest="cache_type_k", type=kind, default=default, metavar="TYPE",
                        help=f"KV cache data type for K{' (comma list)' if lists else ''}; allowed: {allowed} "
                             f"(default: f32)")
    parser.add_argument("-ctv", "--cache-type-v", dest="cache_type_v", type=kind, default=default, metavar="TYPE",
                        help=f"KV cache data type for V{' (comma list)' if lists else ''}; a quantized type "
                             f"needs flash attention (default: f32)")
    if not lists:
        parser.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], default="auto",
                            help="as in llama.cpp; attention is computed exactly either way, and -fa off refuses "
                                 "a quantized V cache as llama.cpp does (default: auto)")


def cache_types_of(args):
    """The ``KVTypes`` of the flags of ``add_cache_type_flags`` (without lists); CLIError when
    -fa off meets a quantized V cache."""
    from ..model.kv_cache import KVTypes
    types = KVTypes(args.cache_type_k, args.cache_type_v)
    try:
        types.check_flash_attn(args.flash_attn != "off", "-fa off")
    except ValueError as e:
        raise CLIError(str(e)) from None
    return types


def add_reasoning_args(g, where: str) -> None:
    """llama.cpp's --reasoning-format, -rea/--reasoning, --reasoning-budget and
    --reasoning-budget-message with its defaults (where: what the extracted reasoning becomes,
    for the help text)."""
    from ..generation.reasoning import REASONING_FORMATS
    g.add_argument("--reasoning-format", default="auto", choices=REASONING_FORMATS, metavar="FORMAT",
                   help=f"a thinking model's reasoning: none (left in the answer as written), auto, deepseek, "
                        f"deepseek-legacy ({where}) (default: auto)")
    g.add_argument("-rea", "--reasoning", default="auto", choices=("on", "off", "auto"),
                   help="thinking in the chat: on or off (the chat template gets enable_thinking=true/false); "
                        "auto leaves it to the request, else true as in llama.cpp (default: auto)")
    g.add_argument("--reasoning-budget", type=int, default=-1, metavar="N",
                   help="token budget for thinking: -1 unrestricted, 0 end the thinking at once, N>0 end it "
                        "after N tokens (the end tag, e.g. </think> or gpt-oss's <|end|>, is forced) (default: -1)")
    g.add_argument("--reasoning-budget-message", default="", metavar="MESSAGE",
                   help="text forced before the end-of-thinking tag when the budget runs out (default: none)")


@dataclass(frozen=True)
class ReasoningFlags:
    """What the reasoning flags set: chat template variables and the thinking budget."""
    template_kwargs: dict
    budget: Any


def reasoning_flags(args) -> ReasoningFlags:
    """The template variables and ``BudgetSettings`` of add_reasoning_args' flags; CLIError for
    a budget below -1."""
    from ..generation.reasoning_budget import BudgetSettings
    if args.reasoning_budget < -1:
        raise CLIError(f"--reasoning-budget must be -1 (unrestricted), 0 (end thinking at once) or a token "
                       f"budget N > 0, got {args.reasoning_budget}")
    kwargs = {} if args.reasoning == "auto" else {"enable_thinking": args.reasoning == "on"}
    return ReasoningFlags(kwargs, BudgetSettings(args.reasoning_budget, args.reasoning_budget_message))
