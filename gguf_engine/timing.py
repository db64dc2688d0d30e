"""Performance counters and a llama.cpp-style timing summary.

Prompt evaluation (batches of more than one token) and single-token evaluation are counted
separately, as llama.cpp does, so the summary reads like llama.cpp's:

    load time        =     812.44 ms
    prompt eval time =     130.02 ms /    31 tokens (    4.19 ms per token,   238.42 tokens per second)
    eval time        =    1201.50 ms /    63 runs   (   19.07 ms per token,    52.43 tokens per second)
    total time       =    1460.12 ms /    94 tokens
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


def now_ms() -> float:
    return time.perf_counter() * 1e3


@dataclass
class PerfStats:
    t_load_ms: float = 0.0
    t_p_eval_ms: float = 0.0
    n_p_eval: int = 0
    t_eval_ms: float = 0.0
    n_eval: int = 0
    t_sample_ms: float = 0.0
    n_sample: int = 0
    t_start_ms: float = field(default_factory=now_ms)

    def reset(self, keep_load: bool = True) -> None:
        """Zeroes the counters (the load time stays unless asked) and restarts the total clock."""
        load = self.t_load_ms if keep_load else 0.0
        self.__init__()
        self.t_load_ms = load

    def add_eval(self, n_tokens: int, ms: float) -> None:
        """One model evaluation of n_tokens: a batch of > 1 counts as prompt evaluation."""
        if n_tokens > 1:
            self.t_p_eval_ms += ms
            self.n_p_eval += n_tokens
        elif n_tokens == 1:
            self.t_eval_ms += ms
            self.n_eval += 1

    def add_sample(self, ms: float) -> None:
        self.t_sample_ms += ms
        self.n_sample += 1

    @contextmanager
    def time_sample(self) -> Iterator[None]:
        t0 = now_ms()
        try:
            yield
        finally:
            self.add_sample(now_ms() - t0)

    def summary_lines(self, prefix: str = "perf_print") -> list[str]:
        """The summary as llama.cpp prints it at the end of a run."""
        def rate(ms: float, n: int) -> tuple[float, float]:
            if n <= 0 or ms <= 0:
                return 0.0, 0.0
            return ms / n, 1e3 * n / ms

        total = now_ms() - self.t_start_ms
        sp, sr = rate(self.t_sample_ms, self.n_sample)
        pp, pr = rate(self.t_p_eval_ms, self.n_p_eval)
        ep, er = rate(self.t_eval_ms, self.n_eval)
        return [
            f"{prefix}:        load time = {self.t_load_ms:10.2f} ms",
            f"{prefix}:    sampling time = {self.t_sample_ms:10.2f} ms / {self.n_sample:5d} runs   "
            f"({sp:8.2f} ms per token, {sr:8.2f} tokens per second)",
            f"{prefix}: prompt eval time = {self.t_p_eval_ms:10.2f} ms / {self.n_p_eval:5d} tokens "
            f"({pp:8.2f} ms per token, {pr:8.2f} tokens per second)",
            f"{prefix}:        eval time = {self.t_eval_ms:10.2f} ms / {self.n_eval:5d} runs   "
            f"({ep:8.2f} ms per token, {er:8.2f} tokens per second)",
            f"{prefix}:       total time = {total:10.2f} ms / {self.n_p_eval + self.n_eval:5d} tokens",
        ]

    def summary(self, prefix: str = "perf_print") -> str:
        return "\n".join(self.summary_lines(prefix))
