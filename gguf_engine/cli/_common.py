"""Shared command-line plumbing: expected errors become one line on stderr and exit status 1."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

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
