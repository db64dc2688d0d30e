"""Atomic output files and the ways a writing command can be stopped.

Real signals are sent to real ``gguf-quantize`` / ``gguf-imatrix`` / ``gguf-convert`` subprocesses while they write
(the child's first tensor write says so through a file and then waits, so the signal lands mid-file
however loaded the machine is): SIGINT, SIGTERM and
SIGHUP leave no partial file and the previous target untouched, with exit status 128 + signum.  A
SIGKILLed run leaves its ``.OUT.partial-PID``, which the next run to the same target removes.  A full
disk is reported in one line naming the output; a directory as output is refused before any work.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gguf_engine import atomic
from gguf_engine.atomic import AtomicFile, partial_path, remove_stale_partials
from gguf_engine.cli.quantize import main as quantize_main

from .conftest import fixture_path

# The child restores Python's own Ctrl-C handler: a shell starts background jobs with SIGINT ignored,
# and Python keeps an inherited "ignore", so a suite run in the background would otherwise never
# see its child interrupted.
STALLED_CHILD = r"""
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from gguf_engine.gguf import writer
def stalled(self, data):
    pathlib.Path(sys.argv[1]).touch()
    while True:
        time.sleep(1)
writer.GGUFWriter._write_next = stalled
from gguf_engine.cli import convert, quantize, imatrix
tool = {"quantize": quantize.main, "imatrix": imatrix.main, "convert": convert.main}[sys.argv[2]]
sys.exit(tool(sys.argv[3:]))
"""


def _f16() -> Path:
    return fixture_path("models", "tiny-llama-f16.gguf")


def _start(tool: str, args: list[str], ready: Path) -> subprocess.Popen:
    """The tool in a child whose first tensor write touches ``ready`` and then waits for a signal."""
    return subprocess.Popen([sys.executable, "-c", STALLED_CHILD, str(ready), tool, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_mid_write(proc: subprocess.Popen, out: Path, ready: Path, timeout: float = 240.0) -> Path:
    """Waits until the child is inside its first tensor write; returns its partial file."""
    t0 = time.monotonic()
    while not ready.exists():
        assert proc.poll() is None, f"the command ended before writing: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, "the command never started writing tensor data"
        time.sleep(0.02)
    part = partial_path(out, proc.pid)
    assert part.exists()
    return part


def _args(tool: str, out: Path) -> list[str]:
    if tool == "convert":                    # a tiny Hugging Face checkpoint beside the output
        from tests.hf_checkpoints import build_case
        folder = out.parent / "checkpoint"
        folder.mkdir()
        build_case("qwen3", folder)
        return [str(folder), "--outfile", str(out), "--outtype", "f32", "--no-progress", "-q"]
    if tool == "quantize":
        return [str(_f16()), str(out), "Q8_0", "1", "--no-progress", "-q"]
    return ["-m", str(fixture_path("models", "tiny-llama-f32.gguf")), "-f",
            str(fixture_path("models", "calibration.txt")), "-o", str(out), "--chunk-size", "64",
            "--chunks", "2", "--no-progress", "--no-ppl"]


@pytest.mark.parametrize("tool,sig", [("quantize", signal.SIGINT), ("quantize", signal.SIGTERM),
                                      ("quantize", signal.SIGHUP), ("imatrix", signal.SIGTERM),
                                      ("convert", signal.SIGTERM)])
def test_catchable_signal_leaves_nothing(tmp_path, tool, sig):
    """A signal mid-write: exit status 128 + signum, a one-line message, no partial file, and the
    existing target unchanged."""
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous")
    ready = tmp_path.parent / f"{tmp_path.name}-ready"
    proc = _start(tool, _args(tool, out), ready)
    try:
        part = _wait_mid_write(proc, out, ready)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == (f"gguf-{tool}: interrupted" if sig == signal.SIGINT
                                            else f"gguf-{tool}: terminated by {sig.name}")
    assert not part.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint") == ["out.gguf"]
    assert out.read_bytes() == b"previous"


def test_sigkill_partial_removed_by_next_run(tmp_path):
    """SIGKILL leaves ``.out.gguf.partial-PID``; the next run to the same target removes it and
    writes the file."""
    out = tmp_path / "out.gguf"
    proc = _start("quantize", _args("quantize", out), tmp_path.parent / f"{tmp_path.name}-ready")
    part = _wait_mid_write(proc, out, tmp_path.parent / f"{tmp_path.name}-ready")
    proc.kill()
    proc.communicate(timeout=60)
    assert part.exists() and not out.exists()
    assert quantize_main(_args("quantize", out)) == 0
    assert not part.exists() and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint") == ["out.gguf"]


def test_stale_partials_only_of_dead_processes(tmp_path):
    """remove_stale_partials removes partial files whose process is gone, and keeps a live one's
    and other files."""
    out = tmp_path / "x.bin"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, live.pid):
            partial_path(out, pid).write_bytes(b"x")
        (tmp_path / ".x.bin.partial-notapid").write_bytes(b"x")
        (tmp_path / ".y.bin.partial-1").write_bytes(b"x")
        assert remove_stale_partials(out) == [partial_path(out, dead.pid)]
        with AtomicFile(out) as f:
            f.write(b"new")
        assert out.read_bytes() == b"new"
        assert partial_path(out, live.pid).exists()
    finally:
        live.kill()
        live.wait()


def test_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """Writes that fail with ENOSPC (the partial file's descriptor points at /dev/full) give
    ``gguf-quantize: error: OUT: No space left on device``, exit status 1, and no partial file."""
    real_open = open

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, f.fileno())
        os.close(full)
        return f

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    out = tmp_path / "out.gguf"
    assert quantize_main([str(_f16()), str(out), "Q8_0", "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err
    assert err == f"gguf-quantize: error: {out}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_directory_output_refused_before_work(tmp_path, capsys):
    """A directory given as the output is refused at once: no tensor is quantized."""
    assert quantize_main([str(_f16()), str(tmp_path), "Q8_0", "--no-progress"]) == 1
    cap = capsys.readouterr()
    assert cap.err == f"gguf-quantize: error: {tmp_path}: is a directory, not a file\n"
    assert "converting" not in cap.out and list(tmp_path.iterdir()) == []
