"""gguf-bench's depth (llama-bench's -d): a test runs after D tokens fill the cache, the filling is
not timed, and later repetitions keep the filled tokens instead of evaluating them again (as
llama-bench restores its saved depth state).  Checked on a stand-in model whose clock advances one
unit per evaluated token, so the measured time is exactly the test's own token count."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from gguf_engine import bench


class CountingModel:
    """Records (position, token count) of every eval; the clock moves by the tokens evaluated."""

    def __init__(self):
        self.config = SimpleNamespace(n_vocab=50)
        self.n_past = 0
        self.clock = 0.0
        self.evals: list[tuple[int, int]] = []

    def eval(self, toks):
        self.evals.append((self.n_past, len(toks)))
        self.n_past += len(toks)
        self.clock += len(toks)

    def reset(self):
        self.n_past = 0

    def truncate(self, n):
        self.n_past = min(self.n_past, n)


def test_depth_filled_untimed_and_kept(monkeypatch):
    """Timed: only the test's tokens, each evaluated after the depth; the depth is evaluated once
    for several repetitions and tests at that depth, again for another depth, never at depth 0."""
    m = CountingModel()
    monkeypatch.setattr(bench.time, "perf_counter", lambda: m.clock)
    rng = np.random.default_rng(0)
    state = bench.DepthState()
    assert bench.time_test(m, 8, 2, rng, 16, state) == 10
    assert m.evals == [(0, 16), (16, 8), (24, 1), (25, 1)]
    m.evals.clear()
    assert bench.time_test(m, 0, 3, rng, 16, state) == 3
    assert m.evals == [(16, 1), (17, 1), (18, 1)]
    m.evals.clear()
    assert bench.time_test(m, 4, 0, rng, 32, state) == 4 and m.evals == [(0, 32), (32, 4)]
    m.evals.clear()
    assert bench.time_test(m, 4, 0, rng, 0, state) == 4 and m.evals == [(0, 4)]
