"""Atomic output files, and the signals that stop the programs writing them.

An output is written to ``.NAME.partial-PID`` beside its target ``NAME`` and renamed onto the target
only once complete, so the target is always either the previous file or the whole new one.  An
interrupted run removes its partial file: inside ``exit_signals()`` SIGTERM and SIGHUP raise
``Terminated`` (a KeyboardInterrupt) just as Ctrl-C raises KeyboardInterrupt, so the same cleanup
runs.  SIGKILL cannot be caught: the next write to the same target removes the partial files of
processes that are gone.

Errors of the file system (a full disk, a read-only directory) are raised as ``OSError`` naming the
target, so a command can report them in one line: ``out.gguf: No space left on device``.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL_INFIX = ".partial-"


def partial_path(target: str | os.PathLike, pid: int | None = None) -> Path:
    """Where a process writes ``target`` before renaming it: ``.NAME.partial-PID`` beside it."""
    t = Path(target)
    return t.with_name(f".{t.name}{PARTIAL_INFIX}{os.getpid() if pid is None else pid}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Removes the partial files of ``target`` left by processes that no longer exist (SIGKILL,
    power loss); returns them."""
    t = Path(target)
    removed = []
    try:
        candidates = list(t.parent.glob(f".{t.name}{PARTIAL_INFIX}*"))
    except OSError:
        return removed
    for p in candidates:
        pid = p.name.rpartition(PARTIAL_INFIX)[2]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def named_os_error(e: OSError, target: str | os.PathLike) -> OSError:
    """The same error with ``target`` as its file name (a write error names no file at all)."""
    return type(e)(e.errno, e.strerror or str(e), os.fspath(target))


def check_output_path(target: str | os.PathLike) -> Path:
    """Refuses, before any work is done, an output path that is a directory or where no file can be
    created (missing permission, read-only file system): raises OSError naming the target."""
    t = Path(target)
    if t.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", os.fspath(t))
    probe = partial_path(t)
    try:
        t.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        pass  # our own partial file: writable
    except OSError as e:
        raise named_os_error(e, t) from None
    return t


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class AtomicFile:
    """A file written under its partial name and moved onto ``target`` by ``commit``.

        with AtomicFile("out.bin") as f:   # committed on success, removed on any exception
            f.write(b"...")

    The partial file is also removed if the object is dropped, or the interpreter exits, before
    ``commit``."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.partial: Path | None = None
        self._file = None
        self._finalizer = None

    def open(self) -> "AtomicFile":
        check_output_path(self.target)
        remove_stale_partials(self.target)
        self.partial = partial_path(self.target)
        try:
            self._file = open(self.partial, "wb")
        except OSError as e:
            raise named_os_error(e, self.target) from None
        self._finalizer = weakref.finalize(self, _remove_quietly, os.fspath(self.partial))
        return self

    def write(self, data) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise named_os_error(e, self.target) from None

    def commit(self) -> Path:
        """Flushes to disk and renames onto the target (permissions as a new file's under the umask)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.partial, 0o666 & ~umask)
            os.replace(self.partial, self.target)
        except OSError as e:
            self.abort()
            raise named_os_error(e, self.target) from None
        self._finalizer.detach()
        return self.target

    def abort(self) -> None:
        """Closes and removes the partial file; the target is left as it was."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass  # the buffered bytes that did not fit are dropped with the file
        if self._finalizer is not None and self._finalizer.alive:
            self._finalizer()

    def __enter__(self) -> "AtomicFile":
        return self.open() if self._file is None else self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_bytes_atomic(target: str | os.PathLike, payload: bytes) -> Path:
    """Writes ``payload`` to ``target`` atomically."""
    with AtomicFile(target) as f:
        f.write(payload)
    return Path(target)


# -- signals -----------------------------------------------------------------------------------

EXIT_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; handled like Ctrl-C (exit status 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def exit_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise ``Terminated`` in the main thread; a repeated
    signal while the first one's cleanup runs is ignored.  Elsewhere than in the main thread
    (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in EXIT_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["AtomicFile", "Terminated", "check_output_path", "exit_signals", "named_os_error",
           "partial_path", "remove_stale_partials", "write_bytes_atomic"]
