"""Grammar masking cost per generated token, as a ratio to the unconstrained token time.

    python tools/bench_grammar.py [-m MODEL ...] [-t THREADS] [-n TOKENS] [--rounds R]

For each model: greedy generation of N tokens without a grammar (A) and under llama.cpp's
JSON grammar (B), alternated R times in one process.  In B the time spent computing the token mask
and applying it to the logits row plus advancing the matcher is measured around those calls.
Printed per model: the median unconstrained time per token, the median masking time per token,
and their ratio (the masking overhead), plus B's whole time per token for reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from gguf_engine import Llama  # noqa: E402
from gguf_engine.generation.grammar import Grammar  # noqa: E402

JSON_GBNF = os.path.join(HERE, "..", "tests", "data", "grammars", "json.gbnf")
PROMPT = "A JSON object describing a cat:"


def unconstrained(llm: Llama, n: int) -> float:
    """Seconds per generated token, greedy, no grammar."""
    toks = llm.tokenize(PROMPT)
    llm.reset()
    llm.eval(toks)  # the prompt is evaluated before the clock starts
    t0 = time.perf_counter()
    got = 0
    for _ in llm.generate(toks, temp=0.0):
        got += 1
        if got >= n:
            break
    return (time.perf_counter() - t0) / got


def constrained(llm: Llama, grammar: Grammar, n: int) -> tuple[float, float]:
    """(seconds per token in all, seconds per token spent masking and advancing the matcher)."""
    toks = llm.tokenize(PROMPT)
    llm.reset()
    llm.eval(toks)
    steer = llm.steering(grammar=grammar)
    c = steer.constraint
    spent = [0.0]
    mask, accept = c.mask, c.accept

    def timed_mask(row):
        t = time.perf_counter()
        out = mask(row)
        spent[0] += time.perf_counter() - t
        return out

    def timed_accept(tok):
        t = time.perf_counter()
        accept(tok)
        spent[0] += time.perf_counter() - t

    c.mask, c.accept = timed_mask, timed_accept
    smp = llm.sampler(temp=0.0)
    t0 = time.perf_counter()
    got = 0
    for _ in llm._generate(toks, smp, steer, True):
        got += 1
        if got >= n:
            break
    return (time.perf_counter() - t0) / got, spent[0] / got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="model path or registry name (repeatable; "
                    "default: smollm2-135m-instruct and gemma-3-270m)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    grammar = Grammar.from_file(JSON_GBNF)
    print(f"| model | n_vocab | threads | token ms (no grammar) | mask ms/token | overhead | token ms (grammar) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.model or ["smollm2-135m-instruct", "gemma-3-270m"]:
        with Llama(name, n_ctx=512, n_threads=args.threads, seed=1) as llm:
            t = time.perf_counter()
            llm.steering(grammar=grammar)  # builds the vocabulary for the grammar engine once
            vocab_s = time.perf_counter() - t
            constrained(llm, grammar, 4)   # warm-up (kernels, caches)
            unconstrained(llm, 4)
            a, b, m = [], [], []
            for _ in range(args.rounds):   # alternate A and B so that load changes hit both
                a.append(unconstrained(llm, args.n_gen))
                tb, tm = constrained(llm, grammar, args.n_gen)
                b.append(tb)
                m.append(tm)
            ta, tb, tm = statistics.median(a), statistics.median(b), statistics.median(m)
            print(f"| {name} | {llm.n_vocab()} | {args.threads} | {ta * 1e3:.2f} | {tm * 1e3:.3f} | "
                  f"{tm / ta * 100:.1f}% | {tb * 1e3:.2f} |", flush=True)
            print(f"  (grammar vocabulary built once per model in {vocab_s:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
