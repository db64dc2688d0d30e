"""Perplexity and KL divergence over a text, computed and printed as llama.cpp's perplexity tool does.

* ``perplexity``: chunks of n_ctx tokens, second half of each scored; running ``[i]ppl,`` values and
  ``Final estimate: PPL = x +/- y``.  With ``save_base`` it also writes the base model's
  log-probabilities in llama.cpp's ``--kl-divergence-base`` file format.
* ``kl_divergence``: evaluates another (e.g. quantized) model on the tokens stored in such a file and
  reports PPL(Q) vs PPL(base), mean KLD with its percentiles, Δp statistics and "same top p".

Base file format (little-endian): ``_logits_``, u32 n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens
(n_chunk * n_ctx), then for every scored position (n_ctx - 1 - n_ctx/2 per chunk) a row of
``nv = 2*((n_vocab+1)//2) + 4`` uint16: two float32 (scale, min log-prob) then each token's
log-probability quantized to 16 bits over the 16 nats below the maximum.
"""
from __future__ import annotations

import math
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from ..atomic import AtomicFile
from .evaluate import (EvalError, PPLAccumulator, eval_chunks, load_for_eval, nll_rows, plan_chunks,
                       progress_bar, tokenize_text)

MAGIC = b"_logits_"


# -- base log-probabilities ---------------------------------------------------------------------

def row_width(n_vocab: int) -> int:
    return 2 * ((n_vocab + 1) // 2) + 4


def quantize_log_probs(logits: np.ndarray) -> np.ndarray:
    """float32 logits (n, n_vocab) -> uint16 rows (n, nv) in the base-file encoding."""
    lg = np.asarray(logits, dtype=np.float32)
    n, n_vocab = lg.shape
    mx = lg.max(axis=1)                                                    # (n,)
    mn = np.maximum(lg.min(axis=1), mx - np.float32(16))                   # (n,)
    lse = np.log(np.exp((lg - mx[:, None]).astype(np.float32)).astype(np.float64).sum(axis=1)).astype(np.float32)
    min_log_prob = (mn - mx - lse).astype(np.float32)
    scale = ((mx - mn) / np.float32(65535)).astype(np.float32)
    out = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    head = np.stack([scale, min_log_prob], axis=1).astype(np.float32)     # (n, 2)
    out[:, :4] = head.view(np.uint16).reshape(n, 4)
    ok = scale != 0
    if ok.any():
        inv = (np.float32(1) / scale[ok]).astype(np.float32)
        q = np.rint(inv[:, None] * (lg[ok] - mn[ok][:, None])).astype(np.int64)
        q = np.where(lg[ok] > mn[ok][:, None], q, 0)
        out[np.flatnonzero(ok)[:, None], 4 + np.arange(n_vocab)[None, :]] = q.astype(np.uint16)
    return out


def decode_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """uint16 rows (n, nv) -> float32 log-probabilities (n, n_vocab)."""
    head = np.ascontiguousarray(rows[:, :4]).view(np.float32)              # (n, 2)
    scale, min_lp = head[:, 0], head[:, 1]
    return (scale[:, None] * rows[:, 4:4 + n_vocab].astype(np.float32) + min_lp[:, None]).astype(np.float32)


class BaseLogitsWriter:
    """Streams a ``--kl-divergence-base`` file (written to a temporary name, renamed when closed)."""

    def __init__(self, path: str | os.PathLike, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray):
        self.path = os.fspath(path)
        self._f = AtomicFile(self.path).open()
        self._f.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
        self._f.write(np.ascontiguousarray(tokens[: n_chunk * n_ctx], dtype="<i4").tobytes())

    def add(self, logits: np.ndarray) -> None:
        self._f.write(quantize_log_probs(logits).astype("<u2").tobytes())

    def close(self) -> None:
        self._f.commit()

    def abort(self) -> None:
        self._f.abort()


@dataclass
class BaseLogits:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray      # int32 (n_chunk * n_ctx,)
    path: str
    data_offset: int

    @classmethod
    def open(cls, path: str | os.PathLike) -> "BaseLogits":
        path = os.fspath(path)
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:8] != MAGIC:
                raise EvalError(f"{path} does not look like a file containing log-probabilities")
            n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", head[8:20])
            if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
                raise EvalError(f"{path}: bad header (n_ctx={n_ctx}, n_vocab={n_vocab}, n_chunk={n_chunk})")
            raw = f.read(4 * n_ctx * n_chunk)
            if len(raw) != 4 * n_ctx * n_chunk:
                raise EvalError(f"{path}: failed reading evaluation tokens (offset 20)")
        size = os.path.getsize(path)
        need = 20 + 4 * n_ctx * n_chunk + n_chunk * (n_ctx - 1 - n_ctx // 2) * row_width(n_vocab) * 2
        if size < need:
            raise EvalError(f"{path}: truncated: {size} bytes, the header promises {need}")
        return cls(n_ctx, n_vocab, n_chunk, np.frombuffer(raw, dtype="<i4").astype(np.int32), path,
                   20 + 4 * n_ctx * n_chunk)

    def chunk_rows(self, i: int) -> np.ndarray:
        n_tok = self.n_ctx - 1 - self.n_ctx // 2
        nv = row_width(self.n_vocab)
        off = self.data_offset + i * n_tok * nv * 2
        return np.fromfile(self.path, dtype="<u2", count=n_tok * nv, offset=off).reshape(n_tok, nv)


# -- perplexity ---------------------------------------------------------------------------------

@dataclass
class PerplexityResult:
    ppl: float
    err: float
    n_chunk: int
    n_ctx: int
    n_scored: int
    running: list[float] = field(default_factory=list)


def perplexity(model_path: str | os.PathLike, text: str, n_ctx: int = 512, n_chunks: int | None = None, *,
               save_base: str | os.PathLike | None = None, n_threads: int | None = None,
               n_batch: int | None = None, progress: bool = False,
               log: Callable[[str], None] | None = None, cache_type="f32", verbose: bool = False) -> PerplexityResult:
    """Perplexity of the model over ``text`` (see the module docstring); cache_type: the KV cache's
    types (a ``KVTypes`` or one name); verbose: log the memory report after loading."""
    emit = log or (lambda s: None)
    model, tok = load_for_eval(model_path, n_ctx, n_batch=n_batch, n_threads=n_threads, cache_type=cache_type,
                               memory_log=emit if verbose else None)
    writer = None
    try:
        t0 = time.perf_counter()
        tokens = tokenize_text(tok, text)
        emit(f"perplexity: tokenization took {(time.perf_counter() - t0) * 1000:.3f} ms ({tokens.size} tokens)")
        n_chunk = plan_chunks(tokens.size, n_ctx, n_chunks, "evaluate perplexity")
        emit(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={n_ctx}, batch_size={model.n_batch}")
        if save_base is not None:
            writer = BaseLogitsWriter(save_base, n_ctx, model.n_vocab, n_chunk, tokens)
            emit(f"perplexity: saving all logits to {os.fspath(save_base)}")
        first = n_ctx // 2
        acc = PPLAccumulator()
        running = []
        bar = progress_bar(progress, n_chunk, "perplexity")
        for i, chunk, logits in eval_chunks(model, tok, tokens, n_ctx, n_chunk, first):
            scored = logits[:-1]                                     # (n_ctx - 1 - first, n_vocab)
            acc.add(nll_rows(scored, chunk[first + 1:]))
            if writer is not None:
                writer.add(scored)
            running.append(acc.ppl)
            if bar is not None:
                bar.set_postfix_str(f"ppl {acc.ppl:.4f}")
                bar.update(1)
            if i == 0:
                dt = time.perf_counter() - t0
                emit(f"perplexity: {dt:.2f} seconds per pass - ETA {dt * n_chunk / 60:.2f} minutes")
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        model.close()
    emit("".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(running)))
    ppl, err = acc.estimate()
    if math.isnan(err):
        emit("Unexpected negative standard deviation of log(prob)")
    else:
        emit(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
    return PerplexityResult(ppl, err, n_chunk, n_ctx, acc.count, running)


# -- KL divergence ------------------------------------------------------------------------------

@dataclass
class KLDSums:
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0


# Rows of logits compared at a time: the comparison's float64 temporaries take 8 x n_vocab bytes
# per row each (a 262144-token vocabulary: 128 MiB per temporary for 64 rows), not per chunk.
KLD_ROWS = 64


def kld_rows(logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray, sums: KLDSums
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-token KL(base || model) and Δp = p_model(target) - p_base(target); updates ``sums``.
    Taken KLD_ROWS rows at a time, so memory stays bounded whatever the chunk size."""
    parts = [_kld_piece(logits[a:a + KLD_ROWS], base_rows[a:a + KLD_ROWS], targets[a:a + KLD_ROWS], sums)
             for a in range(0, len(logits), KLD_ROWS)]
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate([k for k, _ in parts]), np.concatenate([d for _, d in parts])


def _kld_piece(logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray, sums: KLDSums
               ) -> tuple[np.ndarray, np.ndarray]:
    """kld_rows for a few rows."""
    lg = np.asarray(logits, dtype=np.float32)
    n, n_vocab = lg.shape
    mx = lg.max(axis=1)
    imax = lg.argmax(axis=1)
    lse = np.log(np.exp((lg - mx[:, None]).astype(np.float32)).astype(np.float64).sum(axis=1)).astype(np.float32)
    rows = np.arange(n)
    nll = (mx + lse - lg[rows, targets]).astype(np.float32)
    base_lp = decode_log_probs(base_rows, n_vocab)                        # (n, n_vocab)
    nll_base = (-base_lp[rows, targets]).astype(np.float32)
    log_norm = (mx + lse).astype(np.float32)
    mask = base_lp > np.float32(-16)
    p_base = np.where(mask, np.exp(np.where(mask, base_lp, 0)), 0).astype(np.float64)
    kld = (p_base * (base_lp - lg + log_norm[:, None]).astype(np.float64)).sum(axis=1)   # (n,)
    p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(np.float32)
    nll64, nb64 = nll.astype(np.float64), nll_base.astype(np.float64)
    sums.sum_nll += float(nll64.sum())
    sums.sum_nll2 += float((nll64 * nll64).sum())
    sums.sum_nll_base += float(nb64.sum())
    sums.sum_nll_base2 += float((nb64 * nb64).sum())
    sums.sum_nll_nll_base += float((nll64 * nb64).sum())
    sums.sum_kld += float(kld.sum())
    sums.sum_kld2 += float((kld * kld).sum())
    pd = p_diff.astype(np.float64)
    sums.sum_p_diff += float(pd.sum())
    sums.sum_p_diff2 += float((pd * pd).sum())
    sums.sum_p_diff4 += float((pd ** 4).sum())
    sums.max_p_diff = max(sums.max_p_diff, float(np.abs(p_diff).max()) if n else 0.0)
    sums.n_same_top += int((imax == base_lp.argmax(axis=1)).sum())
    sums.count += n
    return kld.astype(np.float32), p_diff


def _mean_unc(s: float, s2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    f = s / count
    df = s2 / count - f * f
    return f, (math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0)


def _cov(a: float, b: float, ab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (ab / count - (a / count) * (b / count)) / (count - 1)


class _KLDStats(NamedTuple):
    """The running statistics of KLDSums: (mean, uncertainty) pairs and the derived figures."""
    lp: tuple[float, float]          # ln PPL(Q)
    lpb: tuple[float, float]         # ln PPL(base)
    cov: float                       # their covariance
    ratio_unc: float                 # uncertainty of ln(PPL(Q)/PPL(base))
    kd: tuple[float, float]          # KL divergence
    rms: float                       # RMS Δp
    rms_unc: float
    top: float                       # fraction with the same top token
    top_unc: float


def _kld_stats(s: KLDSums) -> _KLDStats:
    lp = _mean_unc(s.sum_nll, s.sum_nll2, s.count)
    lpb = _mean_unc(s.sum_nll_base, s.sum_nll_base2, s.count)
    cov = _cov(s.sum_nll, s.sum_nll_base, s.sum_nll_nll_base, s.count)
    pm = _mean_unc(s.sum_p_diff2, s.sum_p_diff4, s.count)
    rms = math.sqrt(pm[0])
    top = s.n_same_top / s.count
    return _KLDStats(lp, lpb, cov, math.sqrt(max(0.0, lp[1] ** 2 + lpb[1] ** 2 - 2 * cov)),
                     _mean_unc(s.sum_kld, s.sum_kld2, s.count), rms, 0.5 / rms * pm[1] if rms else 0,
                     top, math.sqrt(top * (1 - top) / max(1, s.count - 1)))


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's linear-interpolation percentile of an ascending array."""
    v = sorted_values
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = np.float32(fraction) * np.float32(v.size - 1)
    ip = int(p)
    p = float(p) - ip
    return float((1 - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])


def _median(v: np.ndarray) -> float:
    n = v.size
    return float(0.5 * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


@dataclass
class KLDResult:
    ppl: float
    ppl_err: float
    ppl_base: float
    ppl_base_err: float
    mean_kld: float
    mean_kld_err: float
    kld_percentiles: dict[str, float]
    same_top: float
    same_top_err: float
    rms_p_diff: float
    count: int


def kl_divergence(model_path: str | os.PathLike, base_path: str | os.PathLike, n_chunks: int | None = None, *,
                  n_threads: int | None = None, n_batch: int | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None, cache_type="f32", verbose: bool = False) -> KLDResult:
    """Compare the model's predictions with the base log-probabilities saved in ``base_path``;
    cache_type: the KV cache's types (a ``KVTypes`` or one name); verbose: log the memory report after loading."""
    emit = log or (lambda s: None)
    base = BaseLogits.open(base_path)
    model, tok = load_for_eval(model_path, base.n_ctx, n_batch=n_batch, n_threads=n_threads, cache_type=cache_type,
                               memory_log=emit if verbose else None)
    try:
        if model.n_vocab != base.n_vocab:
            raise EvalError(f"inconsistent vocabulary ({base.n_vocab} in {base.path} vs {model.n_vocab})")
        n_ctx = base.n_ctx
        n_chunk = base.n_chunk if n_chunks is None or n_chunks < 0 else min(n_chunks, base.n_chunk)
        first = n_ctx // 2
        emit(f"kl_divergence: computing over {n_chunk} chunks, n_ctx={n_ctx}, batch_size={model.n_batch}")
        emit("")
        emit("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
             "Δp RMS            Same top p")
        s = KLDSums()
        klds, pdiffs = [], []
        bar = progress_bar(progress, n_chunk, "kl-divergence")
        for i, chunk, logits in eval_chunks(model, tok, base.tokens, n_ctx, n_chunk, first):
            k, pdiff = kld_rows(logits[:-1], base.chunk_rows(i), chunk[first + 1:], s)
            klds.append(k)
            pdiffs.append(pdiff)
            st = _kld_stats(s)
            lp = st.lp
            emit(f"{i + 1:4d}    {math.exp(lp[0]):9.4f} ± {math.exp(lp[0]) * lp[1]:9.4f}"
                 f"    {lp[0] - st.lpb[0]:10.5f} ± {st.ratio_unc:10.5f}"
                 f"    {st.kd[0]:10.5f} ± {st.kd[1]:10.5f}"
                 f"    {100 * st.rms:6.3f} ± {100 * st.rms_unc:6.3f} %"
                 f"    {100 * st.top:6.3f} ± {100 * st.top_unc:6.3f} %")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        model.close()
    kv = np.sort(np.concatenate(klds))
    pv = np.sort(np.concatenate(pdiffs))
    return _kld_report(s, kv, pv, emit)


def _kld_report(s: KLDSums, kv: np.ndarray, pv: np.ndarray, emit: Callable[[str], None]) -> KLDResult:
    st = _kld_stats(s)
    lp, lpb, cov, ratio_unc, kd = st.lp, st.lpb, st.cov, st.ratio_unc, st.kd
    rms, top, top_unc = st.rms, st.top, st.top_unc
    ppl, ppl_unc = math.exp(lp[0]), math.exp(lp[0]) * lp[1]
    ppl_b, ppl_b_unc = math.exp(lpb[0]), math.exp(lpb[0]) * lpb[1]
    pct = {"max": float(kv[-1]), "99.9": percentile(kv, 0.999), "99.0": percentile(kv, 0.990),
           "95.0": percentile(kv, 0.950), "90.0": percentile(kv, 0.900), "median": _median(kv),
           "10.0": percentile(kv, 0.100), "5.0": percentile(kv, 0.050), "1.0": percentile(kv, 0.010),
           "0.1": percentile(kv, 0.001), "min": float(kv[0])}
    res = KLDResult(ppl, ppl_unc, ppl_b, ppl_b_unc, kd[0], kd[1], pct, top, top_unc, rms, s.count)
    emit("")
    if s.count < 100:          # too few values for statistics, as llama.cpp
        return res
    emit("====== Perplexity statistics ======")
    emit(f"Mean PPL(Q)                   : {ppl:10.6f} ± {ppl_unc:10.6f}")
    emit(f"Mean PPL(base)                : {ppl_b:10.6f} ± {ppl_b_unc:10.6f}")
    if lp[1] > 0 and lpb[1] > 0:
        emit(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cov / (lp[1] * lpb[1]):6.2f}%")
    emit(f"Mean ln(PPL(Q)/PPL(base))     : {lp[0] - lpb[0]:10.6f} ± {ratio_unc:10.6f}")
    emit(f"Mean PPL(Q)/PPL(base)         : {math.exp(lp[0] - lpb[0]):10.6f} ± "
         f"{math.exp(lp[0] - lpb[0]) * ratio_unc:10.6f}")
    ppl_cov = ppl * ppl_b * cov
    emit(f"Mean PPL(Q)-PPL(base)         : {ppl - ppl_b:10.6f} ± "
         f"{math.sqrt(max(0.0, ppl_unc ** 2 + ppl_b_unc ** 2 - 2 * ppl_cov)):10.6f}")
    emit("")
    emit("====== KL divergence statistics ======")
    emit(f"Mean    KLD: {kd[0]:10.6f} ± {kd[1]:10.6f}")
    emit(f"Maximum KLD: {pct['max']:10.6f}")
    for label, key in (("99.9%", "99.9"), ("99.0%", "99.0"), ("95.0%", "95.0"), ("90.0%", "90.0")):
        emit(f"{label}   KLD: {pct[key]:10.6f}")
    emit(f"Median  KLD: {pct['median']:10.6f}")
    for label, key in (("10.0%", "10.0"), (" 5.0%", "5.0"), (" 1.0%", "1.0"), (" 0.1%", "0.1")):
        emit(f"{label}   KLD: {pct[key]:10.6f}")
    emit(f"Minimum KLD: {pct['min']:10.6f}")
    emit("")
    emit("====== Token probability statistics ======")
    pdm = _mean_unc(s.sum_p_diff, s.sum_p_diff2, s.count)
    emit(f"Mean    Δp: {100 * pdm[0]:6.3f} ± {100 * pdm[1]:5.3f} %")
    emit(f"Maximum Δp: {100 * pv[-1]:6.3f}%")
    for label, f in (("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95), ("90.0%", 0.90), ("75.0%", 0.75)):
        emit(f"{label}   Δp: {100 * percentile(pv, f):6.3f}%")
    emit(f"Median  Δp: {100 * _median(pv):6.3f}%")
    for label, f in (("25.0%", 0.25), ("10.0%", 0.10), (" 5.0%", 0.05), (" 1.0%", 0.01), (" 0.1%", 0.001)):
        emit(f"{label}   Δp: {100 * percentile(pv, f):6.3f}%")
    emit(f"Minimum Δp: {100 * pv[0]:6.3f}%")
    emit(f"RMS Δp    : {100 * rms:6.3f} ± {100 * st.rms_unc:5.3f} %")
    emit(f"Same top p: {100 * top:6.3f} ± {100 * top_unc:5.3f} %")
    return res
