"""Samplers and stop strings: unit tests on hand-made logits (no model needed).

Expected values follow llama.cpp's sampler semantics (src/llama-sampler.cpp): the default chain
logit-bias -> penalties -> top-k -> top-p -> min-p -> temperature -> dist.
Tolerances: exact (token sets, ids) unless a test states otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from gguf_engine.generation.sampling import (
    Sampler, SamplingParams, UniformStream, apply_logit_bias, apply_penalties, dist, min_p,
    resolve_seed, softmax, temperature, top_k, top_p)
from gguf_engine.generation.stops import StopMatcher


def logits_from_probs(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def ids_of(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


# ------------------------------------------------------------------ individual stages

def test_top_k_keeps_k_best_sorted_descending():
    lg = np.array([0.1, 3.0, -1.0, 2.0, 2.5], dtype=np.float32)
    ids, out, srt = top_k(ids_of(5), lg, 3)
    assert srt and ids.tolist() == [1, 4, 3] and out.tolist() == [3.0, 2.5, 2.0]


def test_top_k_nonpositive_is_off_and_k_clamps_to_vocab():
    lg = np.array([0.1, 3.0, -1.0], dtype=np.float32)
    ids, _, srt = top_k(ids_of(3), lg, 0)
    assert ids.tolist() == [0, 1, 2] and not srt
    ids, _, _ = top_k(ids_of(3), lg, 10)
    assert ids.tolist() == [1, 0, 2]


@pytest.mark.parametrize("p, kept", [(0.45, 1), (0.75, 2), (0.85, 3), (0.99, 4)])
def test_top_p_keeps_smallest_prefix_reaching_p(p, kept):
    """probs 0.5, 0.3, 0.15, 0.05: the kept set is the shortest prefix whose sum is >= p."""
    lg = logits_from_probs([0.15, 0.5, 0.05, 0.3])
    ids, _, _ = top_p(ids_of(4), lg, False, p)
    assert ids.tolist() == [1, 3, 0, 2][:kept]


def test_top_p_one_is_off():
    lg = logits_from_probs([0.15, 0.5, 0.05, 0.3])
    ids, _, srt = top_p(ids_of(4), lg, False, 1.0)
    assert ids.tolist() == [0, 1, 2, 3] and not srt


def test_top_p_min_keep():
    lg = logits_from_probs([0.9, 0.05, 0.05])
    ids, _, _ = top_p(ids_of(3), lg, False, 0.5, min_keep=2)
    assert len(ids) == 2


def test_top_p_large_vocab_fast_path_matches_full_sort():
    """Above 1024 candidates the best 256 are tried first; the result must equal a full sort's."""
    rng = np.random.default_rng(0)
    for scale in (0.5, 3.0, 8.0):  # flat (needs the full sort) to peaked (256 suffice)
        lg = (rng.standard_normal(5000) * scale).astype(np.float32)
        ids, _, _ = top_p(ids_of(5000), lg, False, 0.9)
        order = np.lexsort((ids_of(5000), -lg))
        probs = softmax(lg)[order]
        n = int(np.searchsorted(np.cumsum(probs, dtype=np.float32), np.float32(0.9))) + 1
        assert ids.tolist() == order[:n].tolist()


def test_min_p_is_relative_to_best_probability():
    """min_p 0.1 keeps tokens with prob >= 0.1 * max prob, in their current order."""
    lg = logits_from_probs([0.04, 0.5, 0.06, 0.3, 0.049])
    ids, _, _ = min_p(ids_of(5), lg, False, 0.1)
    assert ids.tolist() == [1, 2, 3]
    ids, _, _ = min_p(ids_of(5), lg, False, 0.0)
    assert ids.tolist() == [0, 1, 2, 3, 4]


def test_min_p_min_keep_falls_back_to_best():
    lg = logits_from_probs([0.01, 0.97, 0.02])
    ids, _, _ = min_p(ids_of(3), lg, False, 0.5, min_keep=2)
    assert ids.tolist() == [1, 2]


def test_temperature_scales_and_zero_is_greedy():
    lg = np.array([1.0, 4.0, 2.0], dtype=np.float32)
    ids, out, _ = temperature(ids_of(3), lg, False, 2.0)
    assert out.tolist() == [0.5, 2.0, 1.0]
    ids, out, _ = temperature(ids_of(3), lg, False, 0.0)
    assert ids.tolist() == [1]


def test_repeat_penalty_divides_positive_multiplies_negative():
    lg = np.array([2.0, -2.0, 1.0, 0.0], dtype=np.float32)
    apply_penalties(lg, {0: 1, 1: 3}, repeat=2.0)
    assert lg.tolist() == [1.0, -4.0, 1.0, 0.0]


def test_frequency_and_presence_penalties():
    lg = np.zeros(3, dtype=np.float32)
    apply_penalties(lg, {2: 3}, repeat=1.0, frequency=0.5, presence=0.25)
    assert lg.tolist() == [0.0, 0.0, -1.75]


def test_logit_bias_and_bad_id():
    lg = np.zeros(4, dtype=np.float32)
    apply_logit_bias(lg, {1: 2.0, 3: float("-inf")})
    assert lg[1] == 2.0 and lg[3] == -np.inf
    with pytest.raises(ValueError, match="outside the vocabulary"):
        apply_logit_bias(lg, {9: 1.0})


def test_dist_walks_cumulative_probabilities():
    lg = logits_from_probs([0.25, 0.25, 0.5])
    assert dist(lg, 0.0) == 0
    assert dist(lg, 0.24) == 0
    assert dist(lg, 0.26) == 1
    assert dist(lg, 0.51) == 2
    assert dist(lg, 0.999999) == 2


# ------------------------------------------------------------------ random stream

def test_uniform_stream_is_std_mt19937():
    """std::mt19937(5489) starts 3499211612, 581869302; the double is (w0 + w1 * 2^32) / 2^64."""
    s = UniformStream(5489)
    assert s.next_words(2).tolist() == [3499211612, 581869302]
    s = UniformStream(5489)
    u = s.uniform()
    assert u == (3499211612 + 581869302 * 2.0 ** 32) / 2.0 ** 64
    assert 0.0 <= u < 1.0


def test_seed_resolution():
    assert resolve_seed(42) == 42
    seeds = {resolve_seed(-1) for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s < 0xFFFFFFFF for s in seeds)
    with pytest.raises(ValueError):
        resolve_seed(-5)


# ------------------------------------------------------------------ the chain

def draw(sampler: Sampler, logits: np.ndarray, n: int) -> list[int]:
    return [sampler.sample(logits) for _ in range(n)]


def test_same_seed_same_tokens_different_seed_differs():
    lg = (np.random.default_rng(1).standard_normal(1000) * 2).astype(np.float32)
    a = draw(Sampler(SamplingParams(seed=7, top_k=0, min_p=0.0)), lg, 50)
    b = draw(Sampler(SamplingParams(seed=7, top_k=0, min_p=0.0)), lg, 50)
    c = draw(Sampler(SamplingParams(seed=8, top_k=0, min_p=0.0)), lg, 50)
    assert a == b and a != c
    s = Sampler(SamplingParams(seed=7, top_k=0, min_p=0.0))
    draw(s, lg, 5)
    s.reset()
    assert draw(s, lg, 50) == a


def test_greedy_is_argmax_after_penalties():
    lg = np.array([1.0, 3.0, 2.9], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.1))
    assert s.sample(lg) == 1
    s.accept(1)  # 3.0 / 1.1 = 2.73 < 2.9
    assert s.sample(lg) == 2


def test_penalty_window_is_last_n_tokens():
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=10.0, repeat_last_n=2))
    lg = np.array([5.0, 4.0, 1.0], dtype=np.float32)
    s.accept(0)
    assert s.sample(lg) == 1            # 0 is penalised
    s.accept(2)
    s.accept(2)                         # 0 left the window of 2
    assert s.sample(lg) == 0


def test_chain_order_top_p_before_temperature():
    """Top-p sees temperature-1 probabilities: a huge temperature cannot bring back cut tokens."""
    lg = logits_from_probs([0.96, 0.02, 0.02])
    s = Sampler(SamplingParams(temperature=50.0, top_k=0, top_p=0.9, min_p=0.0, seed=3))
    assert set(draw(s, lg, 50)) == {0}


def test_logit_bias_bans_token_in_chain():
    lg = np.array([5.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, logit_bias={0: float("-inf")}))
    assert s.sample(lg) == 1


def test_sample_frequencies_match_softmax():
    """8 tokens at temperature 0.7, 6000 draws: empirical frequencies within 0.03 of softmax(l / T)."""
    lg = np.array([1.0, 0.5, 0.0, -0.5, 1.2, 0.3, -1.0, 0.8], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=11))
    counts = np.bincount(draw(s, lg, 6000), minlength=8) / 6000
    expect = softmax(lg / np.float32(0.7))
    assert np.abs(counts - expect).max() < 0.03


def test_default_chain_restricts_to_top_k():
    lg = np.linspace(0, 1, 100).astype(np.float32)  # nearly flat: only top-k limits the set
    s = Sampler(SamplingParams(top_k=5, top_p=1.0, min_p=0.0, seed=0))
    assert set(draw(s, lg, 200)) <= set(range(95, 100))


def test_invalid_params():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(repeat_penalty=0.0))
    with pytest.raises(ValueError):
        Sampler(SamplingParams(top_p=-0.1))


# ------------------------------------------------------------------ stop strings

def feed(m: StopMatcher, pieces) -> str:
    return "".join(m.push(p) for p in pieces) + m.flush()


def test_stop_string_not_emitted_and_prefix_held_back():
    m = StopMatcher(["###"])
    assert m.push("Hello #") == "Hello "     # "#" could start "###"
    assert m.held == "#"
    assert m.push("#") == ""
    assert m.push("# tail") == ""
    assert m.stopped and m.matched == "###"
    assert m.flush() == ""


def test_false_alarm_prefix_is_released():
    m = StopMatcher(["</s>", "STOP"])
    assert feed(m, ["a <", "/x> ST", "OP? no"]) == "a </x> "
    assert m.stopped
    m = StopMatcher("STOP")
    assert feed(m, ["ST", "ILL here ST"]) == "STILL here ST"  # held tail released at the end
    assert not m.stopped


def test_earliest_stop_wins_and_no_stops_pass_through():
    m = StopMatcher(["bc", "ab"])
    assert feed(m, ["xabc"]) == "x"
    assert m.matched == "ab"
    assert feed(StopMatcher(None), ["a", "b"]) == "ab"


# ------------------------------------------------------------------ timing summary

def test_perf_summary_in_llama_cpp_form():
    """Batches of > 1 token count as prompt eval, single tokens as eval runs; rates derived exactly."""
    from gguf_engine.timing import PerfStats
    p = PerfStats(t_load_ms=12.5)
    p.add_eval(10, 50.0)
    p.add_eval(1, 20.0)
    p.add_eval(1, 30.0)
    lines = p.summary_lines("x")
    text = "\n".join(lines)
    assert "load time =      12.50 ms" in text
    assert "prompt eval time =      50.00 ms /    10 tokens (    5.00 ms per token,   200.00 tokens per second)" in text
    assert "eval time =      50.00 ms /     2 runs   (   25.00 ms per token,    40.00 tokens per second)" in text
    assert "total time =" in lines[-1] and lines[-1].endswith("/    12 tokens")
    empty = PerfStats().summary()  # no evaluation yet: no division by zero
    assert "0 tokens" in empty
