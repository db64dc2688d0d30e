"""Chunked evaluation of a model over a text, as llama.cpp's perplexity and imatrix tools do it.

The text is tokenized once (with BOS when the model wants one); the tokens are cut into
``n_chunks`` chunks of ``n_ctx`` tokens; each chunk is evaluated from an empty cache with its
first token replaced by BOS (when the model adds BOS), and only the second half of each chunk
is scored (``first = n_ctx // 2``: logits at positions first .. n_ctx-2 predict tokens
first+1 .. n_ctx-1), so every scored token has at least n_ctx/2 tokens of context.

``ObservingBackend`` wraps the engine's backend to show every matmul input to a hook, which is
how importance matrices are collected without touching the model code.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


class EvalError(ValueError):
    """Not enough text for the requested context, or an unusable model/text."""


# -- matmul observation ---------------------------------------------------------------------------

class ObservingBackend:
    """A backend proxy: ``hook(weight_name, x)`` sees the float32 input (n_tokens, n_in) of each
    ``linear`` call before it runs, and ``expert_hook(weight_name, x, ids, n_expert)`` the input
    of each expert product of the ``moe`` operation (x (n_tokens, 1 or k, n_in), ids (n_tokens, k)
    the experts each token was routed to); everything else is passed through to the wrapped backend."""

    def __init__(self, inner, hook: Callable[[str, np.ndarray], None],
                 expert_hook: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None):
        self._inner = inner
        self._hook = hook
        self._expert_hook = expert_hook
        self._names: dict[int, str | list[str]] = {}
        self._keep: list = []          # keep weights alive so their ids stay unique

    def upload_weight(self, tensor, release=None):
        w = self._inner.upload_weight(tensor, release)
        self._names[id(w)] = tensor.name
        self._keep.append(w)
        return w

    def upload_experts(self, tensor, release=None):
        w = self._inner.upload_experts(tensor, release)
        self._names[id(w)] = tensor.name
        self._keep.append(w)
        return w

    def upload_fused(self, tensors: list, releases: list) -> list:
        """Each tensor uploaded through ``upload_weight`` (its name recorded), then ``fuse``d."""
        return self.fuse([self.upload_weight(t, r) for t, r in zip(tensors, releases)])

    def fuse(self, weights: list) -> list:
        """Weights sharing one input, stacked by the wrapped backend: every member's name is
        reported for the group's input (for the group, and for a single stacked member)."""
        names = [self._names[id(w)] for w in weights if id(w) in self._names]
        group = self._inner.fuse(weights)
        self._names[id(group)] = names          # the group object is what linear_fused receives
        if len(group) == 1 and group[0] is not weights[0]:
            self._names[id(group[0])] = names   # what the moe operation multiplies with
        self._keep.append(group)
        return group

    def moe(self, x, logits, experts, routing, out=None, observe=None, decode=None):
        def seen(w, X, ids):
            names = self._names.get(id(w), [])
            for name in [names] if isinstance(names, str) else names:
                self._expert_hook(name, np.asarray(self._inner.to_host(X)), np.asarray(ids), w.shape[0])
        return self._inner.moe(x, logits, experts, routing, out=out,
                               observe=seen if self._expert_hook is not None else observe, decode=decode)

    def linear(self, w, x, out=None, decode=None, rounded=False):
        name = self._names.get(id(w))
        if name is not None:
            self._hook(name, np.asarray(self._inner.to_host(x)))
        return self._inner.linear(w, x, out=out, decode=decode, rounded=rounded)

    def linear_fused(self, ws, x, out=None, decode=None, rounded=False):
        names = self._names.get(id(ws))
        if names is None:               # not made by fuse: its members may be known weights
            names = [self._names[id(w)] for w in ws if id(w) in self._names]
        if names:
            xh = np.asarray(self._inner.to_host(x))
            for name in names:
                self._hook(name, xh)
        return self._inner.linear_fused(ws, x, out=out, decode=decode, rounded=rounded)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def load_for_eval(model_path: str | os.PathLike, n_ctx: int, n_batch: int | None = None,
                  n_threads: int | None = None, hook: Callable[[str, np.ndarray], None] | None = None,
                  expert_hook: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None,
                  cache_type="f32", memory_log: Callable[[str], None] | None = None):
    """Load a model with a cache of n_ctx tokens of cache_type (a ``KVTypes`` or one type name)
    and matmul hooks if given (see ``ObservingBackend``).  Returns (model, tokenizer).
    memory_log: given, receives the memory report's lines (``model.memory.summary_lines``)."""
    from ..model import load_model
    from ..tokenizer import Tokenizer
    backend = None
    if hook is not None:
        from ..backends.cpu import CPUBackend
        backend = ObservingBackend(CPUBackend(n_threads), hook, expert_hook)
    model = load_model(os.fspath(model_path), n_ctx=n_ctx, n_batch=min(n_batch or n_ctx, n_ctx),
                       n_threads=n_threads, backend=backend, cache_type=cache_type)
    tok = Tokenizer.from_reader(model.reader, source=os.fspath(model_path))
    if memory_log is not None:
        from ..model.memory import resident_bytes, summary_lines
        for line in summary_lines(model.memory_breakdown(resident_bytes())):
            memory_log(line)
    return model, tok


# -- scoring --------------------------------------------------------------------------------------

def nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target under softmax(logits row): float64 (n,)."""
    lg = np.asarray(logits, dtype=np.float32)
    mx = lg.max(axis=1)                                                   # (n,)
    sum_exp = np.exp((lg - mx[:, None]).astype(np.float64)).sum(axis=1)   # (n,)
    return mx.astype(np.float64) + np.log(sum_exp) - lg[np.arange(lg.shape[0]), targets].astype(np.float64)


@dataclass
class PPLAccumulator:
    """Running sums of the NLL, as llama.cpp keeps them."""
    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0

    def add(self, v: np.ndarray) -> None:
        self.nll += float(v.sum())
        self.nll2 += float((v * v).sum())
        self.count += int(v.size)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else float("nan")

    def estimate(self) -> tuple[float, float]:
        """(PPL, its standard error), as llama.cpp's final estimate."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        ppl = math.exp(mean)
        if var <= 0 or self.count < 2:
            return ppl, float("nan")
        return ppl, math.sqrt(var / (self.count - 1)) * ppl


def progress_bar(enabled: bool, total: int, desc: str, leave: bool = False):
    """A tqdm bar over ``total`` chunks on stderr, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="chunk", desc=desc, file=sys.stderr, dynamic_ncols=True, leave=leave)


# -- chunking -------------------------------------------------------------------------------------

def tokenize_text(tok, text: str, parse_special: bool = False) -> np.ndarray:
    return np.asarray(tok.encode(text, add_bos=True, special=parse_special), dtype=np.int32)


def plan_chunks(n_tokens: int, n_ctx: int, n_chunks: int | None, what: str) -> int:
    """Number of chunks to run; EvalError when the text is shorter than two contexts."""
    if n_ctx < 4:
        raise EvalError(f"context size {n_ctx} is too small")
    if n_tokens < 2 * n_ctx:
        raise EvalError(f"you need at least {2 * n_ctx} tokens to {what} with a context of {n_ctx}; "
                        f"the text tokenizes to only {n_tokens} tokens")
    n_max = n_tokens // n_ctx
    return n_max if n_chunks is None or n_chunks < 0 else min(n_chunks, n_max)


def eval_chunks(model, tok, tokens: np.ndarray, n_ctx: int, n_chunk: int,
                logits_from: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each chunk: (index, its tokens as stored (BOS not substituted), logits for positions
    logits_from .. n_ctx-1 as float32 (n_ctx - logits_from, n_vocab))."""
    add_bos = bool(getattr(tok, "add_bos", False))
    bos = tok.bos_id
    for i in range(n_chunk):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        ids = chunk.copy()
        if add_bos and bos is not None:
            ids[0] = bos
        model.reset()
        if logits_from > 0:                                   # logits only where they are used
            model.eval(ids[:logits_from])
        yield i, chunk, model.eval(ids[logits_from:], logits_all=True)   # (n_ctx - logits_from, n_vocab)
