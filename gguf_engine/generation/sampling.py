"""Token samplers with llama.cpp's semantics, defaults and order.

The chain applied to one row of logits (n_vocab,) is the one llama.cpp's common
sampler builds by default:

    logits -> logit-bias -> penalties -> top-k -> top-p -> min-p -> temp -> dist

Every stage works on a candidate set: token ids with their (possibly modified)
logits, optionally sorted by logit descending.  Top-p and min-p see
probabilities at temperature 1 because the temperature is applied after them.
A temperature <= 0 keeps only the best candidate, i.e. greedy decoding.

With ``mirostat`` 1 or 2 the chain is llama.cpp's mirostat one instead (penalties, top-k,
top-p and min-p are not part of it there either):

    logits -> logit-bias -> temp -> mirostat (v1: adaptive top-k; v2: surprise cut-off)

The final draw uses a Mersenne Twister (MT19937) seeded exactly as
``std::mt19937(seed)`` and turns two 32-bit words into a double in [0, 1) the way
libstdc++'s ``std::uniform_real_distribution<double>`` does, so one seed gives one
stream of draws: runs with the same seed and the same logits pick the same tokens.
``seed=-1`` (or None) seeds from the operating system's entropy.
"""
from __future__ import annotations

import math
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

DEFAULT_SEED = -1  # -1 / None: a random seed per sampler


def _real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# the accepted range of each sampling setting: (test, what the error message says it must be)
SAMPLING_RANGES = {
    "temperature": (_real, "a finite number (<= 0 is greedy)"),
    "top_k": (lambda v: _integer(v) and v >= -1, "an integer >= -1 (<= 0: the whole vocabulary)"),
    "top_p": (lambda v: _real(v) and 0 <= v <= 1, "in [0, 1]"),
    "min_p": (lambda v: _real(v) and 0 <= v <= 1, "in [0, 1]"),
    "repeat_penalty": (lambda v: _real(v) and v > 0, "a finite number > 0"),
    "repeat_last_n": (lambda v: _integer(v) and v >= -1, "an integer >= -1 (-1: the whole context)"),
    "frequency_penalty": (_real, "a finite number"),
    "presence_penalty": (_real, "a finite number"),
    "logprobs": (lambda v: v is None or (_integer(v) and v >= 0), "None or an integer >= 0"),
    "top_logprobs": (lambda v: v is None or (_integer(v) and v >= 0), "None or an integer >= 0"),
    "mirostat": (lambda v: _integer(v) and v in (0, 1, 2), "0 (off), 1 or 2"),
    "mirostat_tau": (lambda v: _real(v) and v > 0, "a finite number > 0"),
    "mirostat_eta": (lambda v: _real(v) and v > 0, "a finite number > 0"),
}


def check_sampling(names: Mapping[str, str] | None = None, **values) -> None:
    """Raises ValueError naming the first setting outside its range (``SAMPLING_RANGES``); ``names``
    renames settings in the message (a command line's flags).  The one check behind the API and CLIs."""
    for key, value in values.items():
        test, want = SAMPLING_RANGES[key]
        if not test(value):
            raise ValueError(f"{(names or {}).get(key, key)} must be {want}, got {value!r}")


@dataclass
class SamplingParams:
    """Sampler settings; the defaults are llama.cpp's (common_params_sampling)."""

    temperature: float = 0.8       # <= 0: greedy
    top_k: int = 40                # <= 0: whole vocabulary
    top_p: float = 0.95            # 1.0: off
    min_p: float = 0.05            # 0.0: off
    repeat_penalty: float = 1.0    # 1.0: off
    repeat_last_n: int = 64        # 0: off, -1: whole context
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None
    min_keep: int = 0              # top-p / min-p keep at least this many candidates
    seed: int | None = DEFAULT_SEED
    mirostat: int = 0              # 0: off, 1: mirostat, 2: mirostat 2.0
    mirostat_tau: float = 5.0      # target surprise (bits)
    mirostat_eta: float = 0.1      # learning rate

    def validate(self) -> None:
        """ValueError naming the first setting outside its range."""
        check_sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                       repeat_penalty=self.repeat_penalty, repeat_last_n=self.repeat_last_n,
                       frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                       mirostat=self.mirostat, mirostat_tau=self.mirostat_tau, mirostat_eta=self.mirostat_eta)

    def describe(self) -> str:
        """One line in the form llama.cpp logs its sampler parameters."""
        return (f"repeat_last_n = {self.repeat_last_n}, repeat_penalty = {self.repeat_penalty:.3f}, "
                f"frequency_penalty = {self.frequency_penalty:.3f}, presence_penalty = {self.presence_penalty:.3f}\n"
                f"\ttop_k = {self.top_k}, top_p = {self.top_p:.3f}, min_p = {self.min_p:.3f}, "
                f"temp = {self.temperature:.3f}")


def chain_description(params: SamplingParams) -> str:
    stages = ["logits"]
    if params.logit_bias:
        stages.append("logit-bias")
    if params.mirostat:
        stages += ["temp", "mirostat" if params.mirostat == 1 else "mirostat-v2"]
    else:
        stages += ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]
    return " -> ".join(stages)


# ----------------------------------------------------------------------------- random stream

def resolve_seed(seed: int | None) -> int:
    """The 32-bit seed actually used: -1 / None draws one from the OS."""
    if seed is None or seed == -1 or seed == 0xFFFFFFFF:
        return secrets.randbits(32) % 0xFFFFFFFF  # never the "random" sentinel itself
    if seed < 0:
        raise ValueError(f"seed must be >= 0 or -1 for random, got {seed}")
    return int(seed) & 0xFFFFFFFF


class UniformStream:
    """Doubles in [0, 1) from MT19937, as ``uniform_real_distribution<double>(0, 1)(std::mt19937(seed))``."""

    _TWO32 = 4294967296.0
    _ONE_BELOW = math.nextafter(1.0, 0.0)

    def __init__(self, seed: int | None = DEFAULT_SEED):
        self.seed = resolve_seed(seed)
        # RandomState seeded with an int uses MT19937's classic init_genrand(seed), the same
        # state std::mt19937(seed) starts from; randint over the full 32-bit range returns raw words.
        self._mt = np.random.RandomState(self.seed)

    def next_words(self, n: int) -> np.ndarray:
        return self._mt.randint(0, 1 << 32, size=n, dtype=np.uint64)

    def uniform(self) -> float:
        w0, w1 = self.next_words(2)
        u = (float(w0) + float(w1) * self._TWO32) / (self._TWO32 * self._TWO32)
        return self._ONE_BELOW if u >= 1.0 else u


# ----------------------------------------------------------------------------- candidate stages
# Each stage takes candidate ids (n,) int64 and logits (n,) float32 (plus whether they are sorted
# by logit, descending) and returns the surviving candidates in the same form.

def _sort_desc(ids: np.ndarray, logits: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates (all when k is None), by logit descending, ties by token id."""
    n = logits.shape[0]
    if k is not None and k < n:
        part = np.argpartition(logits, n - k)[n - k:]  # the k largest, unordered
        ids, logits = ids[part], logits[part]
        order = np.lexsort((ids, -logits))
    elif n > 4096:
        # a stable sort keeps equal logits in their current (ascending id) order, and is far
        # quicker than a two-key sort on a whole vocabulary
        order = np.argsort(-logits, kind="stable")
    else:
        order = np.lexsort((ids, -logits))
    return ids[order], logits[order]


def apply_logit_bias(logits: np.ndarray, bias: Mapping[int, float] | None) -> np.ndarray:
    """Adds bias[token] to the full logits row (n_vocab,); ids outside the vocabulary are an error."""
    if not bias:
        return logits
    n_vocab = logits.shape[0]
    for tok, b in bias.items():
        tok = int(tok)
        if not 0 <= tok < n_vocab:
            raise ValueError(f"logit_bias token id {tok} outside the vocabulary (n_vocab={n_vocab})")
        logits[tok] += np.float32(b)
    return logits


def apply_penalties(logits: np.ndarray, counts: Mapping[int, int], repeat: float,
                    frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    """Repetition / frequency / presence penalties on the full logits row for the recent tokens.

    A positive logit is divided by ``repeat``, a non-positive one multiplied by it (so a penalty
    > 1 always makes the token less likely); then ``count * frequency + presence`` is subtracted.
    """
    if not counts or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    toks = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    cnt = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    vals = logits[toks]
    vals = np.where(vals <= 0, vals * np.float32(repeat), vals / np.float32(repeat)).astype(np.float32)
    vals -= cnt * np.float32(frequency) + (cnt > 0).astype(np.float32) * np.float32(presence)
    logits[toks] = vals
    return logits


def top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Keeps the k highest logits, sorted; k <= 0 leaves the candidates untouched (and unsorted)."""
    if k <= 0:
        return ids, logits, False
    ids, logits = _sort_desc(ids, logits, min(k, logits.shape[0]))
    return ids, logits, True


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities as llama.cpp computes them (exp(l - max) / sum, in float32)."""
    e = np.exp(logits - logits.max(), dtype=np.float32)
    return e / np.float32(e.sum(dtype=np.float32))


def top_p(ids: np.ndarray, logits: np.ndarray, sorted_: bool, p: float,
          min_keep: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Keeps the smallest prefix (by probability, descending) whose cumulative probability reaches p.

    The probabilities are the softmax over all current candidates.  The prefix is also at least
    ``min_keep`` long; when no prefix reaches p (rounding), every candidate stays.  p >= 1: off.
    """
    n = logits.shape[0]
    if p >= 1.0 or n == 0:
        return ids, logits, sorted_
    max_l = logits.max()
    denom = np.exp(logits - max_l, dtype=np.float32).sum(dtype=np.float32)

    def cut(s_ids: np.ndarray, s_logits: np.ndarray) -> int | None:
        probs = np.exp(s_logits - max_l, dtype=np.float32) / denom
        cum = np.cumsum(probs, dtype=np.float32)  # running float32 sum, as a loop would give
        ok = cum >= np.float32(p)
        if min_keep > 1:
            ok &= np.arange(1, cum.shape[0] + 1) >= min_keep
        hit = np.flatnonzero(ok)
        return int(hit[0]) + 1 if hit.size else None

    if sorted_:
        last = cut(ids, logits)
        last = n if last is None else last
        return ids[:last], logits[:last], True
    k = 256
    while k * 4 <= n:
        # Most of the mass usually sits in a few tokens: try the best k before sorting everything.
        s_ids, s_logits = _sort_desc(ids, logits, k)
        last = cut(s_ids, s_logits)
        if last is not None:
            return s_ids[:last], s_logits[:last], True
        k *= 8
    s_ids, s_logits = _sort_desc(ids, logits)
    last = cut(s_ids, s_logits)
    last = n if last is None else last
    return s_ids[:last], s_logits[:last], True


def min_p(ids: np.ndarray, logits: np.ndarray, sorted_: bool, p: float,
          min_keep: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Keeps candidates whose probability is at least p times the best one's (logit >= max + log p).

    Order is preserved.  When fewer than ``min_keep`` pass, the ``min_keep`` best stay.  p <= 0: off.
    """
    n = logits.shape[0]
    if p <= 0.0 or n == 0:
        return ids, logits, sorted_
    min_logit = np.float32(logits.max()) + np.float32(math.log(p))
    keep = logits >= min_logit
    if int(keep.sum()) >= max(min_keep, 1):
        return ids[keep], logits[keep], sorted_
    s_ids, s_logits = (ids, logits) if sorted_ else _sort_desc(ids, logits)
    k = min(max(min_keep, 1), n)
    return s_ids[:k], s_logits[:k], True


def temperature(ids: np.ndarray, logits: np.ndarray, sorted_: bool,
                temp: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Divides logits by temp; temp <= 0 keeps only the best candidate (the first one on ties)."""
    if logits.shape[0] == 0:
        return ids, logits, sorted_
    if temp <= 0.0:
        i = int(np.argmax(logits))
        return ids[i:i + 1], logits[i:i + 1], True
    return ids, (logits / np.float32(temp)).astype(np.float32), sorted_


def dist(logits: np.ndarray, u: float) -> int:
    """Index of the candidate drawn with uniform number u in [0, 1) from softmax(logits).

    Walks the candidates in their current order and takes the first whose running
    probability sum reaches u times the total, like llama.cpp's dist sampler.
    """
    n = logits.shape[0]
    if n == 0:
        raise ValueError("no candidate tokens left to sample from")
    if n == 1:
        return 0
    p = np.exp(logits - logits.max(), dtype=np.float32).astype(np.float64)
    cum = np.cumsum(p)
    idx = int(np.searchsorted(cum, cum[-1] * u, side="left"))
    return min(idx, n - 1)


def _probs_sorted(ids: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates sorted by logit (descending) with their float32 softmax probabilities."""
    ids, logits = _sort_desc(ids, logits)
    return ids, logits, softmax(logits)


def mirostat_v1(ids: np.ndarray, logits: np.ndarray, mu: float, n_vocab: int,
                m: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Mirostat 1.0's cut: estimates the Zipf exponent s from the m best candidates and keeps the
    k best, k = (eps * 2^mu / (1 - n_vocab^-eps))^(1/s) with eps = s - 1 (at least one)."""
    ids, logits, p = _probs_sorted(ids, logits)
    n = min(m - 1, p.shape[0] - 1)
    if n > 0:
        i = np.arange(n, dtype=np.float32)
        t = np.log((i + 2) / (i + 1)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.log(p[:n] / p[1:n + 1]).astype(np.float32)
        s_hat = float(np.float32((t * b).sum(dtype=np.float32)) / np.float32((t * t).sum(dtype=np.float32)))
    else:
        s_hat = float("nan")  # llama.cpp divides 0 by 0 here too; k then falls back to 1
    eps = s_hat - 1.0
    with np.errstate(all="ignore"):
        try:
            k = ((eps * 2.0 ** mu) / (1.0 - float(n_vocab) ** (-eps))) ** (1.0 / s_hat)
        except (OverflowError, ZeroDivisionError):
            k = float("inf")
    k = int(k) if math.isfinite(k) else (p.shape[0] if k == float("inf") else 1)
    k = max(min(k, p.shape[0]), 1)
    return ids[:k], logits[:k]


def mirostat_v2(ids: np.ndarray, logits: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """Mirostat 2.0's cut: keeps the leading candidates whose surprise -log2(p) is at most mu
    (stopping at the first that exceeds it; at least one)."""
    ids, logits, p = _probs_sorted(ids, logits)
    with np.errstate(divide="ignore"):  # p == 0: infinite surprise, cut like any above mu
        over = np.flatnonzero(-np.log2(p) > np.float32(mu))
    k = int(over[0]) if over.size else p.shape[0]
    k = max(k, 1)
    return ids[:k], logits[:k]


# ----------------------------------------------------------------------------- the chain

@dataclass
class Sampler:
    """llama.cpp's default sampler chain with its own token history and random stream.

    ``accept(token)`` feeds the penalty history (prompt tokens included, as llama.cpp does);
    ``sample(logits)`` picks the next token from one row of logits (n_vocab,) and does not
    accept it: the caller decides (generation accepts every token it emits).
    """

    params: SamplingParams = field(default_factory=SamplingParams)
    n_ctx: int = 0  # resolves repeat_last_n = -1

    def __post_init__(self) -> None:
        p = self.params
        p.validate()
        last_n = p.repeat_last_n
        if last_n < 0:
            last_n = self.n_ctx if self.n_ctx > 0 else 0
        self._last_n = last_n
        self._history: deque[int] = deque()
        self._counts: Counter[int] = Counter()
        self._bias = {int(k): float(v) for k, v in (p.logit_bias or {}).items()}
        self.rng = UniformStream(p.seed)
        self.seed = self.rng.seed
        self.n_sample = 0
        self.mu = 2.0 * p.mirostat_tau  # mirostat's running surprise bound

    # -- history
    def accept(self, token: int) -> None:
        if self._last_n == 0:
            return
        token = int(token)
        if len(self._history) >= self._last_n:
            old = self._history.popleft()
            self._counts[old] -= 1
            if self._counts[old] == 0:
                del self._counts[old]
        self._history.append(token)
        self._counts[token] += 1

    def accept_many(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.accept(t)

    def reset(self) -> None:
        """Clears the history and restarts the random stream from the seed."""
        self._history.clear()
        self._counts.clear()
        self.rng = UniformStream(self.seed)
        self.mu = 2.0 * self.params.mirostat_tau

    def add_bias(self, token: int, bias: float) -> None:
        self._bias[int(token)] = self._bias.get(int(token), 0.0) + float(bias)

    # -- the chain
    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their final logits (after temperature) for one row (n_vocab,)."""
        p = self.params
        row = np.array(logits, dtype=np.float32, copy=True).reshape(-1)  # (n_vocab,)
        apply_logit_bias(row, self._bias)
        if p.mirostat:
            return self._mirostat_candidates(row)
        if self._last_n:
            apply_penalties(row, self._counts, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
        if p.temperature <= 0.0:
            # top-k / top-p / min-p never drop the best token, so greedy is the argmax here.
            i = int(np.argmax(row))
            return np.array([i], dtype=np.int64), row[i:i + 1]
        n = row.shape[0]
        if 0 < p.top_k < n:  # the usual case: select k of the vocabulary without building all ids
            part = np.argpartition(row, n - p.top_k)[n - p.top_k:].astype(np.int64)
            ids, row = _sort_desc(part, row[part])
            srt = True
        else:
            ids, row, srt = top_k(np.arange(n, dtype=np.int64), row, p.top_k)
        ids, row, srt = top_p(ids, row, srt, p.top_p, p.min_keep)
        ids, row, srt = min_p(ids, row, srt, p.min_p, p.min_keep)
        ids, row, srt = temperature(ids, row, srt, p.temperature)
        return ids, row

    def _mirostat_candidates(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """temp -> the mirostat cut, on a biased row (n_vocab,); no penalties, as llama.cpp chains it."""
        p = self.params
        n_vocab = row.shape[0]
        ids, row, _ = temperature(np.arange(n_vocab, dtype=np.int64), row, False, p.temperature)
        if p.mirostat == 1:
            return mirostat_v1(ids, row, self.mu, n_vocab)
        return mirostat_v2(ids, row, self.mu)

    def sample(self, logits: np.ndarray) -> int:
        ids, row = self.candidates(logits)
        u = self.rng.uniform()  # drawn even for a single candidate, as llama.cpp does
        self.n_sample += 1
        i = dist(row, u)
        if self.params.mirostat:  # move mu towards the target surprise
            surprise = -math.log2(float(softmax(row)[i]))
            self.mu -= self.params.mirostat_eta * (surprise - self.params.mirostat_tau)
        return int(ids[i])


def greedy(logits: np.ndarray) -> int:
    """The arg-max token of one row of logits."""
    return int(np.argmax(np.asarray(logits).reshape(-1)))
