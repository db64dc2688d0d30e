"""Several sequences in one forward pass (``Model.eval_batch`` over a ``SlotKVCache``).

The claim: a sequence's greedy output does not depend on what else shares its passes.  The same
8 prompts run alone (the single-sequence path, ``Model.eval``) and together (one pass per step,
prompts arriving at different steps and fed in chunks that ride beside other sequences' decode
steps, the decode steps first as the server puts them) must give the same tokens.

On the quantized models (SmolLM2 Q4_1, Gemma 3 Q4_K_M: kinds with a multi-row integer product and
a small-batch float product) the tokens must be identical: a decode step's row is computed
bit-identically alone or batched (``Weight.matmul_decode``), and a prompt row's float product does
not depend on the other rows of its pass.  Elsewhere (float32 weights through BLAS, experts
products whose path depends on each expert's row count) the tolerance is the first near-tie:
where the tokens first differ, the lone run's best and second-best logits must be within
NEAR_TIE of each other; anywhere else they must agree.
"""
from __future__ import annotations

import numpy as np
import pytest

from gguf_engine.model import load_model
from gguf_engine.model.batch import TokenBatch

from .conftest import fixture_path

NEAR_TIE = 0.05          # logits: a best/second-best gap below this may flip under rounding
N_GEN = 10               # greedy tokens per sequence
CHUNK = 5                # prompt tokens per sequence per pass


def _prompts(n_vocab: int, bos: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [[bos] + rng.integers(50, min(n_vocab, 5000), size=int(n)).tolist()
            for n in (3, 12, 7, 20, 1, 9, 15, 4)]


def _alone(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    """Greedy tokens of one sequence through the single-sequence path, with each step's gap."""
    model.reset()
    logits = model.eval(prompt)
    toks, gaps = [], []
    for _ in range(N_GEN):
        top2 = np.sort(logits)[-2:]
        toks.append(int(np.argmax(logits)))
        gaps.append(float(top2[1] - top2[0]))
        logits = model.eval([toks[-1]])
    return toks, gaps


def _together(model, prompts: list[list[int]]) -> list[list[int]]:
    """All prompts through shared passes: sequence i joins at pass i // 2, its prompt fed CHUNK
    tokens per pass, decode steps of the others in the same passes."""
    slots = model.slot_cache(len(prompts), 64)
    fed = [0] * len(prompts)              # prompt tokens evaluated
    nxt: list[int | None] = [None] * len(prompts)
    outs: list[list[int]] = [[] for _ in prompts]
    step = 0
    while any(len(o) < N_GEN for o in outs):
        parts, who, prompt_parts, prompt_who = [], [], [], []
        for i, p in enumerate(prompts):
            if step < i // 2 or len(outs[i]) >= N_GEN:
                continue
            if fed[i] < len(p):
                chunk = p[fed[i]:fed[i] + CHUNK]
                prompt_parts.append((i, fed[i], chunk, fed[i] + len(chunk) == len(p)))
                fed[i] += len(chunk)
                if fed[i] == len(p):
                    prompt_who.append(i)
            else:
                parts.append((i, len(p) + len(outs[i]) - 1, [nxt[i]], True))
                who.append(i)
        n_decode = len(parts)
        parts += prompt_parts
        who += prompt_who
        logits = model.eval_batch(TokenBatch.build(parts, n_decode=n_decode), slots)
        assert logits.shape == (len(who), model.n_vocab)
        for i, row in zip(who, logits):
            nxt[i] = int(np.argmax(row))
            outs[i].append(nxt[i])
        step += 1
    return outs


def _check_same_up_to_near_tie(model, bos: int, exact: bool = False) -> None:
    prompts = _prompts(model.n_vocab, bos)
    together = _together(model, prompts)
    for i, p in enumerate(prompts):
        alone, gaps = _alone(model, p)
        if exact:
            assert alone == together[i], f"prompt {i}: alone {alone}, batched {together[i]}"
        for j, (a, b) in enumerate(zip(alone, together[i])):
            if a != b:
                assert gaps[j] < NEAR_TIE, (f"prompt {i} step {j}: alone {a}, batched {b}, "
                                            f"gap {gaps[j]:.4f} >= {NEAR_TIE}")
                break


def test_smollm2_greedy_alone_equals_together(smollm2_path):
    """SmolLM2 (llama, Q4_1): 8 sequences sharing passes give exactly their lone greedy tokens."""
    with load_model(str(smollm2_path), n_ctx=64, n_threads=2) as model:
        _check_same_up_to_near_tie(model, bos=1, exact=True)


def test_tiny_qwen2_greedy_alone_equals_together():
    """Tiny qwen2 (Q/K/V biases, NeoX RoPE, F32): the same claim on a second architecture."""
    with load_model(str(fixture_path("models", "tiny-qwen2-f32.gguf")), n_ctx=64, n_threads=2) as model:
        _check_same_up_to_near_tie(model, bos=1)


def test_gemma3_greedy_alone_equals_together(gemma3_path):
    """Gemma 3 (Q4_K_M; sliding-window layers, per-head norms, embedding scale): the same exact claim."""
    with load_model(str(gemma3_path), n_ctx=64, n_threads=2) as model:
        _check_same_up_to_near_tie(model, bos=2, exact=True)


@pytest.mark.parametrize("name", ["qwen3moe", "qwen3moe-q4km", "gpt-oss"])
def test_moe_greedy_alone_equals_together(tmp_path, name):
    """Mixture-of-experts models (tiny qwen3moe and gpt-oss of tools/arch_models.py; the batch's rows
    are routed each to its own experts, gpt-oss's sinks and windows per sequence): the same claim;
    exact for the Q4_K_M qwen3moe, whose prompt rows round the Q4_K experts' activations to one
    term and decode steps to two: a pass of both multiplies them apart (CPUBackend.moe)."""
    from tests.test_arch import _tool
    fixture_path("models", "tiny-llama-f32.gguf")                   # the vocabulary source
    path = tmp_path / f"{name}.gguf"
    _tool().build(name, path)
    with load_model(str(path), n_ctx=64, n_threads=2) as model:
        _check_same_up_to_near_tie(model, bos=1, exact=name == "qwen3moe-q4km")


def test_eval_batch_refuses_spans_outside_their_slot():
    """A span past its slot's context or naming a missing slot is a ValueError naming it."""
    with load_model(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=16, n_threads=1) as model:
        slots = model.slot_cache(2, 8)
        with pytest.raises(ValueError, match="slot 1: positions 6..9"):
            model.eval_batch(TokenBatch.build([(1, 6, [5, 6, 7, 8], True)]), slots)
        with pytest.raises(ValueError, match="slot 2 does not exist"):
            model.eval_batch(TokenBatch.build([(2, 0, [5], True)]), slots)


def test_batch_decode_steps_are_single_tokens():
    """TokenBatch.build refuses n_decode parts that are not one token each (or more parts than given)."""
    with pytest.raises(ValueError, match="decode steps of one token"):
        TokenBatch.build([(0, 3, [5, 6], True)], n_decode=1)
    with pytest.raises(ValueError, match="decode steps of one token"):
        TokenBatch.build([(0, 3, [5], True)], n_decode=2)
    assert TokenBatch.build([(0, 3, [5], True), (1, 0, [1, 2], True)], n_decode=1).n_decode == 1
