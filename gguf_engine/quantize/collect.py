"""Collect an importance matrix by running the engine over calibration text (as llama-imatrix)."""
from __future__ import annotations

import os
import time
from typing import Callable

from .evaluate import (PPLAccumulator, eval_chunks, load_for_eval, nll_rows, plan_chunks, progress_bar,
                       tokenize_text)
from .imatrix import Imatrix, ImatrixCollector


def collect_imatrix(model_path: str | os.PathLike, text: str, chunk_size: int = 512, n_chunks: int | None = None,
                    *, dataset: str | None = None, process_output: bool = False, compute_ppl: bool = True,
                    parse_special: bool = False, n_threads: int | None = None, n_batch: int | None = None,
                    previous: list[Imatrix] | None = None, progress: bool = False,
                    log: Callable[[str], None] | None = None) -> Imatrix:
    """Sum of squared inputs per column of every matmul weight in the repeating blocks (and
    ``output.weight`` with ``process_output``), with token counts, over ``n_chunks`` chunks of
    ``chunk_size`` tokens of ``text``.  ``previous`` imatrices are accumulated first (--in-file).
    ``log`` receives the running perplexity ("[1]12.3456,[2]...") and the final estimate."""
    emit = log or (lambda s: None)
    collector = ImatrixCollector(chunk_size, process_output=process_output)
    for im in previous or []:
        collector.load(im)
    model, tok = load_for_eval(model_path, chunk_size, n_batch=n_batch, n_threads=n_threads, hook=collector.add,
                               expert_hook=collector.add_experts)
    try:
        t0 = time.perf_counter()
        tokens = tokenize_text(tok, text, parse_special)
        emit(f"tokenized the input: {tokens.size} tokens in {(time.perf_counter() - t0) * 1000:.1f} ms")
        n_chunk = plan_chunks(tokens.size, chunk_size, n_chunks, "compute an importance matrix")
        emit(f"computing over {n_chunk} chunks, n_ctx={chunk_size}, batch_size={model.n_batch}")
        first = chunk_size // 2
        acc = PPLAccumulator()
        bar = progress_bar(progress, n_chunk, "imatrix", leave=True)
        line = []
        for i, chunk, logits in eval_chunks(model, tok, tokens, chunk_size, n_chunk, first):
            if compute_ppl:
                acc.add(nll_rows(logits[:-1], chunk[first + 1:]))       # (n_ctx - 1 - first,) scored
                line.append(f"[{i + 1}]{acc.ppl:.4f},")
                if bar is not None:
                    bar.set_postfix_str(f"ppl {acc.ppl:.4f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if compute_ppl and acc.count:
            emit("".join(line))
            ppl, err = acc.estimate()
            emit(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
    finally:
        model.close()
    return collector.to_imatrix(dataset)
