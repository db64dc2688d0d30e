"""Context shift: room for more tokens in a full context without evaluating anything again.

When a sequence fills its context, llama.cpp keeps its first ``n_keep`` tokens, drops the oldest
half of the rest and moves the later tokens down into the gap.  Their values are unchanged; their
keys were stored after RoPE at their old positions, and since every RoPE variant's angle is linear
in the position (theta[p, i] = p * f_i, whatever f_i is: plain, with rope_freqs factors, YaRN or
LongRoPE mixing), rotating a stored key by -theta[d, i] places it exactly at position p - d.  The
rotation uses each layer's own tables (so sliding-window layers with their own base get theirs),
with the tables' magnitude (YaRN's attention factor) divided out.

The moved tokens keep what they computed while the dropped ones were still there (as in llama.cpp):
a shift is not a re-evaluation, and the model only loses the dropped tokens from its view.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShiftPolicy:
    """Context shift allowed, with llama.cpp's settings: n_keep (``--keep``: tokens of the initial
    prompt kept after BOS; -1 the whole initial prompt) and n_discard (0: half of the rest)."""
    n_keep: int = 0
    n_discard: int = 0


@dataclass(frozen=True)
class ShiftPlan:
    """Positions [n_keep, n_keep + n_discard) are dropped; the n_past - n_keep - n_discard after
    them move down by n_discard."""
    n_keep: int
    n_discard: int


def plan_shift(n_past: int, n_keep: int, n_ctx: int, n_discard: int = 0) -> ShiftPlan | None:
    """llama.cpp's choice for a full sequence of n_past tokens: keep at most n_ctx - 4 tokens at the
    start (n_keep, already counting BOS), drop n_discard of the rest (0: half of it; at least one
    token must remain after the gap); None when nothing can be dropped."""
    keep = max(0, min(int(n_keep), n_ctx - 4, n_past))
    n_left = n_past - keep
    n_discard = min(int(n_discard) if n_discard > 0 else n_left // 2, max(0, n_left - 1))
    if n_discard <= 0:
        return None
    return ShiftPlan(keep, n_discard)


def keep_count(n_keep: int, n_prompt: int, add_bos: bool) -> int:
    """The tokens a shift keeps, from the ``--keep`` setting as llama.cpp reads it: -1 (or more than
    the prompt) keeps the whole initial prompt; otherwise n_keep tokens after BOS, BOS kept too."""
    if n_keep < 0 or n_keep > n_prompt:
        return int(n_prompt)
    return int(n_keep) + (1 if add_bos else 0)


def rerotate(k3: np.ndarray, cos: np.ndarray, sin: np.ndarray, delta: int, neox: bool) -> np.ndarray:
    """Keys k3 (n, n_head_kv, head_dim) stored after RoPE, rotated back by delta positions.

    cos, sin: the layer's RoPE tables (n_ctx, n_rot/2), row delta holding the angles of delta
    positions times the tables' magnitude; neox: pairs (i, i + n_rot/2), else adjacent pairs
    (2i, 2i + 1), as the forward pass pairs them.  Dimensions past n_rot are unchanged.
    Computed in float64, returned as float32 (n, n_head_kv, head_dim)."""
    c = np.asarray(cos[delta], dtype=np.float64)                  # (n_rot/2,)
    s = np.asarray(sin[delta], dtype=np.float64)
    mag = np.sqrt(c * c + s * s)
    c, s = c / mag, s / mag
    half = c.shape[0]
    k = np.array(k3, dtype=np.float64)
    if neox:
        a, b = k[..., :half].copy(), k[..., half:2 * half].copy()
        k[..., :half] = a * c + b * s
        k[..., half:2 * half] = b * c - a * s
    else:
        a, b = k[..., 0:2 * half:2].copy(), k[..., 1:2 * half:2].copy()
        k[..., 0:2 * half:2] = a * c + b * s
        k[..., 1:2 * half:2] = b * c - a * s
    return k.astype(np.float32)


def shift_cache(cache, tables: list[tuple[np.ndarray, np.ndarray]], neox: bool, plan: ShiftPlan,
                n_past: int, base: int = 0) -> None:
    """Apply plan to one sequence of n_past tokens stored at rows base.. of cache (a cache with
    ``read_k``/``write_k``/``move``): every layer's entries after the gap move down into it, their
    keys re-rotated with that layer's host tables (cos, sin).  The caller updates its own count."""
    src0 = base + plan.n_keep + plan.n_discard
    dst0 = base + plan.n_keep
    n = n_past - plan.n_keep - plan.n_discard
    if n <= 0:
        return
    for il, (cos, sin) in enumerate(tables):
        cache.move(il, src0, dst0, n)
        cache.write_k(il, dst0, rerotate(cache.read_k(il, dst0, dst0 + n), cos, sin, plan.n_discard, neox))
