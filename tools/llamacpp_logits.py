"""llama.cpp's logits and greedy continuation for a model (run by tools/arch_models.py).

    LLAMA_CPP_LIB_PATH=<llama.cpp build>/bin python tools/llamacpp_logits.py REQUEST.json

Runs under an interpreter that can import llama_cpp (llama-cpp-python) and needs only NumPy
besides.  REQUEST.json: {"model", "n_ctx", "tokens", "prompt", "n_greedy", "out"}; writes ``out`` (npz)
with ``logits`` (every position of ``tokens``, float32) and ``greedy`` (n_greedy tokens after
``prompt``), with llama.cpp's defaults (F16 KV cache) on 2 threads.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from llama_cpp import Llama


def main(request: str) -> None:
    req = json.loads(open(request).read())
    m = Llama(req["model"], n_ctx=req["n_ctx"], n_batch=256, logits_all=True, n_threads=2, verbose=False)
    tokens = req["tokens"]
    m.eval(tokens)
    logits = np.array(m.scores[:len(tokens)], dtype=np.float32)
    m.reset()
    m.eval(req["prompt"])
    greedy = []
    for _ in range(req["n_greedy"]):
        tok = int(np.argmax(m.scores[m.n_tokens - 1]))
        greedy.append(tok)
        m.eval([tok])
    np.savez(req["out"], logits=logits, greedy=np.array(greedy, dtype=np.int32))


if __name__ == "__main__":
    main(sys.argv[1])
