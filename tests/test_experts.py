"""Mixture-of-experts kernels (kernels/experts.py): expert tensors of every GGML type decode
bit-exactly, products with the routed experts equal the per-expert products, and routing equals
llama.cpp's top-k choice and weights.

The expert bytes are ggml's own (``../shared/fixtures/quant_blocks``: 16 rows of 512 weights
quantized by llama.cpp), cut into 2 experts of 8 rows.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels import dequantize
from kernels.experts import (GATING_SOFTMAX, GATING_SOFTMAX_WEIGHT, ExpertWeights, add_expert_bias,
                             combine, combine_grouped, decode_step, expert_row_items, fused_decode, group_by_expert,
                             route, swiglu_oai)
from kernels.ops import gated_act
from kernels.types import GGMLType
from kernels.quant_matmul import MATVEC_MAX_BATCH
from kernels.simd import HOST_VNNI
from kernels.weight import Weight
from tests.conftest import fixture_path
from tests.test_dequant import FIXTURE_TYPES

QUANT_TYPES = [t for t in FIXTURE_TYPES if t not in ("F16", "BF16")]


def _expert_bytes(name: str) -> tuple[np.ndarray, GGMLType]:
    with np.load(fixture_path("quant_blocks", f"{name}.npz")) as z:
        q = z["q"] if "q" in z.files else z["q_im"]                 # (16, row_bytes) ggml's bytes
    return np.ascontiguousarray(q), GGMLType[name]


@pytest.mark.parametrize("name", FIXTURE_TYPES)
def test_expert_decode_bit_exact(name):
    """Each expert of a (2, 8, 512) tensor of every type decodes to exactly kernels.dequantize of
    its own bytes (tolerance 0: bitwise equal), and the concatenation of two expert tensors
    (gate|up) decodes to both parts in order."""
    q, t = _expert_bytes(name)
    E = ExpertWeights(q, t, (2, 8, 512))
    for e in range(2):
        want = dequantize(q[e * 8:(e + 1) * 8], t, (8, 512))
        np.testing.assert_array_equal(E.dequantize(e).view(np.uint32), want.view(np.uint32))
    both = ExpertWeights.concat([E, E])
    assert both.shape == (2, 16, 512)
    np.testing.assert_array_equal(both.dequantize(1), np.concatenate([E.dequantize(1)] * 2))


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q8_0", "MXFP4", "IQ2_XS", "F16"])
def test_mul_ids_matches_each_expert(name):
    """mul_ids (decode: one token's matvecs; batch: grouped by expert) gives, for every (token, slot),
    exactly the product of that slot's input with its expert's Weight (the same kernels: matvec for
    groups of up to 3 rows, the tiled matmul above), shared or per-slot inputs."""
    q, t = _expert_bytes(name)
    q4 = np.concatenate([q, q[::-1]])                                # 32 rows: 4 experts of 8
    E = ExpertWeights(q4, t, (4, 8, 512))
    rng = np.random.default_rng(0)
    n, k = 24, 2
    ids = np.stack([rng.permutation(4)[:k] for _ in range(n)])        # (n, k) distinct per token
    ids[:6] = [0, 3]                                                  # expert 0 gets > 3 rows (matmul)
    X = rng.standard_normal((n, k, 512)).astype(np.float32)
    for shared in (True, False):
        Xs = X[:, :1] if shared else X
        Y = E.mul_ids(Xs, ids)
        for e in range(4):
            rows = np.argwhere(ids == e)
            if not len(rows):
                continue
            Xe = np.stack([Xs[a, 0 if shared else b] for a, b in rows])
            np.testing.assert_array_equal(Y[rows[:, 0], rows[:, 1]], E.experts[e].matmul(Xe))
        one = E.mul_ids(Xs[5:6], ids[5:6])                           # the decode path
        for j in range(k):
            np.testing.assert_array_equal(one[0, j], E.experts[ids[5, j]].matvec(Xs[5, 0 if shared else j]))
        ref = np.einsum("tkc,tkrc->tkr", np.broadcast_to(Xs, X.shape).astype(np.float64),
                        np.stack([[E.dequantize(e) for e in row] for row in ids]).astype(np.float64))
        np.testing.assert_allclose(Y, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def _route_ref(logits, k, gating, norm):
    """llama.cpp's selection in float64: softmax probabilities (or raw logits), top k, then the
    softmax over the k (softmax_weight) and the renormalisation."""
    p = logits.astype(np.float64)
    if gating == GATING_SOFTMAX:
        p = np.exp(p - p.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(p, ids, 1)
    if gating == GATING_SOFTMAX_WEIGHT:
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
    if norm:
        w /= np.maximum(w.sum(-1, keepdims=True), 6.103515625e-5)
    return ids, w


@pytest.mark.parametrize("gating", [GATING_SOFTMAX, GATING_SOFTMAX_WEIGHT])
@pytest.mark.parametrize("norm", [True, False])
def test_route_matches_llama_cpp_rule(gating, norm):
    """route: the same experts as the float64 rule (top k in descending order) and weights within
    1 float32 ulp (rtol 1.2e-7)."""
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((50, 16)) * 3).astype(np.float32)
    ids, w = route(logits, 4, gating, norm, np.float32(0.0))
    rids, rw = _route_ref(logits, 4, gating, norm)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(w, rw, rtol=1.2e-7, atol=0)
    if norm:
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)


def test_route_ties_and_nans_as_a_stable_sort():
    """route's top k (a selection, not a sort) picks exactly the first k of a stable descending
    argsort (tolerance 0): equal scores keep the lower expert first and NaN scores come last,
    on logits drawn from a few values (many ties) with some NaNs, k from 1 to every expert."""
    rng = np.random.default_rng(7)
    logits = rng.integers(-2, 3, (200, 12)).astype(np.float32)
    logits[rng.random(logits.shape) < 0.1] = np.nan
    logits[:3] = np.nan                                  # rows with nothing but NaNs
    for k in (1, 2, 4, 12):
        ids, _ = route(logits, k, GATING_SOFTMAX_WEIGHT, False, np.float32(0.0))
        want = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(ids, want)


def test_grouped_batch_helpers():
    """group_by_expert is numpy's stable argsort of the pairs' experts with its bounds and inverse;
    combine_grouped of the grouped rows equals combine of the same outputs in token order
    (tolerance 0: bitwise, with and without biases)."""
    rng = np.random.default_rng(5)
    n, k, E, d = 37, 3, 6, 40
    ids = np.stack([rng.permutation(E)[:k] for _ in range(n)]).astype(np.int64)
    order, bounds, inverse = group_by_expert(ids, E)
    flat = ids.reshape(-1)
    np.testing.assert_array_equal(order, np.argsort(flat, kind="stable"))
    np.testing.assert_array_equal(bounds, np.searchsorted(flat[order], np.arange(E + 1)))
    np.testing.assert_array_equal(inverse[order], np.arange(n * k))
    Y = rng.standard_normal((n, k, d)).astype(np.float32)
    w = rng.random((n, k)).astype(np.float32)
    bias = rng.standard_normal((E, d)).astype(np.float32)
    Yg = np.ascontiguousarray(Y.reshape(n * k, d)[order])
    for has_bias in (False, True):
        want, got = np.empty((n, d), np.float32), np.empty((n, d), np.float32)
        combine(Y, w, bias, ids, has_bias, want)
        combine_grouped(Yg, inverse, w, bias, ids, has_bias, got)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_row_items_dealt_by_work(parts):
    """expert_row_items for `parts` threads: the same (tile, run) items as for one thread, each
    once, plus empty runs (r0 == r1), in `parts` equal counts whose work (1 per row and per 4-row
    step) differs by at most one item's (an uneven routing: experts of 1 to 40 rows)."""
    rng = np.random.default_rng(6)
    counts = rng.integers(0, 41, 12)
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    one = expert_row_items(bounds, 4, 16, 1)
    t, r0, r1, yt = expert_row_items(bounds, 4, 16, parts)
    assert t.size % parts == 0
    real = r1 > r0
    assert sorted(zip(*(a[real] for a in (t, r0, r1, yt)))) == sorted(zip(*one))
    rows = r1 - r0
    work = rows + -(-rows // 4) + (rows % 4 == 3)
    shares = work.reshape(parts, -1).sum(1)
    assert shares.max() - shares.min() <= work.max()


def test_combine_and_oai_swiglu():
    """combine: the weighted sum of a token's expert outputs plus per-expert biases (float32, rtol
    1e-6); swiglu_oai: gpt-oss's clamped SwiGLU at alpha 1.702, limit 7 (rtol 1e-6)."""
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((5, 3, 8)).astype(np.float32)
    w = rng.random((5, 3)).astype(np.float32)
    ids = np.array([[0, 1, 2], [3, 2, 1], [0, 3, 1], [1, 0, 2], [2, 3, 0]])
    bias = rng.standard_normal((4, 8)).astype(np.float32)
    out = np.empty((5, 8), np.float32)
    combine(Y, w, bias, ids, True, out)
    np.testing.assert_allclose(out, np.einsum("tk,tkd->td", w, Y + bias[ids]), rtol=1e-6, atol=1e-6)
    g = np.linspace(-12, 12, 64, dtype=np.float32).reshape(4, 16)
    u = np.linspace(9, -9, 64, dtype=np.float32).reshape(4, 16)
    act = np.empty_like(g)
    swiglu_oai(g, u, act)
    gc, uc = np.minimum(g, 7.0).astype(np.float64), np.clip(u, -7.0, 7.0).astype(np.float64)
    np.testing.assert_allclose(act, gc / (1 + np.exp(-1.702 * gc)) * (uc + 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "MXFP4", "IQ4_XS", "Q2_K", "IQ2_XS", "F16"])
def test_stacked_experts_match_separate_weights(name):
    """Experts of whole 32-row tiles are one stacked matrix multiplied in one launch per product
    (decode: every selected expert's tiles; batch of the kinds with ROW_ITEMS (the nibble kinds, Q6_K
    on AVX-512 VNNI hosts):
    every expert's multi-row integer product in one launch; of the others: all experts of at most
    3 rows in one launch, the small-batch products of all experts of 4-128 rows in one pass, tiles
    and BLAS above).  For every (token, slot), the result is bitwise equal (tolerance 0) to the
    product by that expert built as a Weight of its own: its matvec in a decode step; in a batch
    its multi-row product of the activations rounded to one int8 term (prompt_terms 1) for the kinds
    that take them (Q4_K, Q5_K, Q6_K on AVX-512 VNNI hosts: the same bits whatever the batch, the
    routing and the stacking), its integer product (matmul_decode: the matvec's bits) for the other ROW_ITEMS kinds and for groups
    of up to 3 rows, else its matmul (small-batch product or tiled matmul by the row count); shared
    and per-slot inputs, gate|up stacked per expert too."""
    q, t = _expert_bytes(name)
    rng = np.random.default_rng(1)
    n_expert, rows, cols = 4, 64, 512
    raw = np.concatenate([q[rng.permutation(16)] for _ in range(n_expert * rows // 16)])   # (256, row bytes)
    E = ExpertWeights(raw, t, (n_expert, rows, cols))
    own = [Weight(raw[e * rows:(e + 1) * rows], t, (rows, cols)) for e in range(n_expert)]
    assert (E.stacked is not None) == (name != "F16")
    integer = E.stacked is not None and E.stacked.kind.row_items(E.stacked) is not None
    assert integer == (name in ("Q4_K", "Q5_K", "Q4_0") or name == "Q6_K" and HOST_VNNI)   # Q6_K: kinds.byte
    one_term = integer and E.stacked.kind.prompt_terms == 1
    assert one_term == (name in ("Q4_K", "Q5_K") or name == "Q6_K" and HOST_VNNI)
    n, k = 160, 2
    ids = np.stack([rng.permutation(n_expert)[:k] for _ in range(n)])
    ids[:, 0] = 0                                     # expert 0: 160 rows (tiled matmul)
    ids[:40, 1] = 1                                   # expert 1: 40 rows or more (small-batch product)
    ids[40:, 1] = 2
    ids[40:43, 1] = 3                                 # expert 3: 3 rows (matvec)
    X = rng.standard_normal((n, k, cols)).astype(np.float32)
    for shared in (True, False):
        Xs = X[:, :1] if shared else X
        for m in (n, 50, 12):                         # expert 0: 160, 50 and 12 rows
            Y = E.mul_ids(Xs[:m], ids[:m])
            for e in range(n_expert):
                pairs = np.argwhere(ids[:m] == e)
                if len(pairs):
                    Xe = np.stack([Xs[a, 0 if shared else b] for a, b in pairs])
                    W = own[e]                        # the matvec's integer product, or the float one
                    if one_term:
                        ref = _one_term_rows(W, Xe)
                    else:
                        ref = W.matmul_decode(Xe) if len(Xe) <= MATVEC_MAX_BATCH or integer else W.matmul(Xe)
                    np.testing.assert_array_equal(Y[pairs[:, 0], pairs[:, 1]], ref)
        one = E.mul_ids(Xs[41:42], ids[41:42])                       # a decode step
        for j in range(k):
            np.testing.assert_array_equal(one[0, j], own[ids[41, j]].matvec(Xs[41, 0 if shared else j]))
    both = ExpertWeights.concat([E, E])                             # gate|up stacked per expert
    y = both.mul_ids(X[:1, :1], ids[:1])
    for j in range(k):
        w = own[ids[0, j]]
        np.testing.assert_array_equal(y[0, j], np.concatenate([w.matvec(X[0, 0])] * 2))


def _one_term_rows(W: Weight, X: np.ndarray) -> np.ndarray:
    """X (n, cols) times W's rows by its kind's multi-row product of activations rounded to one int8
    term per 32-block (row_activations(X, 1)), W's tiles alone, one thread's items."""
    kind = W.packed.kind
    out = np.empty((X.shape[0], W.shape[0]), np.float32)
    items = expert_row_items(np.array([0, X.shape[0]], np.int64), -(-W.shape[0] // 32), 16, 1)
    kind.row_items(W.packed)(kind.row_activations(np.ascontiguousarray(X), 1), *items, out)
    return out


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K"])
def test_one_term_batch_product(name):
    """A batch's expert products of the kinds that take one int8 activation term (PROMPT_TERMS):
    the activations are rounded once per 32-block as ggml's Q8_0 rounds them (the very xq and dx of
    round_activations' first term, within max|x_block| / 254 + 1 float32 ulp of x), and each
    (token, slot) equals the float64 product of the exact dequantized weights and those rounded
    activations within 1e-5 * sum_j |w_j x_j| (+1e-30: the float32 combine of integer sums, as
    the matvecs' bound), in every SIMD form, the portable loops bitwise equal to the SIMD forms.
    Against the exact activations the error is the rounding's: within 2e-3 * sum_j |w_j x_j|."""
    from kernels.kinds.tiled import round_activations, round_activations1
    from kernels.simd import SIMD_FORMS
    q, t = _expert_bytes(name)
    rng = np.random.default_rng(3)
    n_expert, rows, cols, n = 3, 64, 512, 41
    raw = np.concatenate([q[rng.permutation(16)] for _ in range(n_expert * rows // 16)])
    E = ExpertWeights(raw, t, (n_expert, rows, cols))
    kind = E.stacked.kind
    X = (rng.standard_normal((n, cols)) * np.exp(rng.standard_normal((n, 1)))).astype(np.float32)
    X[2, 32:64] = 0                                             # a zero block
    bounds = np.array([0, 20, 21, n], np.int64)                 # 20 rows, 1 row, 20 rows
    act = kind.row_activations(X, 1)
    assert act[1].size == 0 and act[3].size == 0                # no second term
    for i in range(n):
        xq, dx, xs = round_activations1(X[i])
        q2, _, d2, _, _ = round_activations(X[i])
        np.testing.assert_array_equal(xq, q2)
        np.testing.assert_array_equal(dx, d2)
        np.testing.assert_array_equal(act[0][i * cols:(i + 1) * cols], xq)
        xr = xq.reshape(-1, 32) * dx[:, None].astype(np.float64)
        amax = np.abs(X[i]).reshape(-1, 32).max(1, keepdims=True).astype(np.float64)
        assert np.all(np.abs(xr - X[i].reshape(-1, 32)) <= amax / 254 * (1 + 2 ** -22))
        np.testing.assert_allclose(xs, xr.sum(1), rtol=1e-6, atol=0)
    xr = (act[0].reshape(n, -1, 32) * act[2][:, :, None].astype(np.float64)).reshape(n, cols)
    W = [E.dequantize(e).astype(np.float64) for e in range(n_expert)]
    spans = list(enumerate(zip(bounds[:-1], bounds[1:])))      # (expert, its rows a..b-1)
    ref = np.concatenate([xr[a:b] @ W[e].T for e, (a, b) in spans])
    mag = np.concatenate([np.abs(xr[a:b]) @ np.abs(W[e]).T for e, (a, b) in spans])
    exact = np.concatenate([X[a:b].astype(np.float64) @ W[e].T for e, (a, b) in spans])
    items = expert_row_items(bounds, E.tiles, 16, 2)
    forms = []
    for simd in SIMD_FORMS:
        Y = np.empty((n, rows), np.float32)
        kind.row_items(E.stacked, simd)(act, *items, Y)
        assert np.all(np.abs(Y - ref) <= 1e-5 * mag + 1e-30), f"form {simd}: off the float64 product"
        forms.append(Y)
    for Y in forms[1:]:
        np.testing.assert_array_equal(Y.view(np.uint32), forms[0].view(np.uint32))
    Yg = E.mul_grouped(X, None, bounds)                         # the experts' own choice: one term
    np.testing.assert_array_equal(Yg.view(np.uint32), forms[-1].view(np.uint32))
    assert np.all(np.abs(Yg - exact) <= 2e-3 * mag)


def _moe_by_parts(gate_up, down, x, logits, k, gating, oai, biases):
    """One token's MoE layer by the general kernels, step by step (route, mul_ids, biases, activation,
    mul_ids, combine): what decode_step must equal."""
    rb, gb, ub, db = biases if biases is not None else (None,) * 4
    lg = (logits + rb if rb is not None else logits).reshape(1, -1).astype(np.float32)
    ids, w = route(lg, k, gating, True, np.float32(0.0))
    gu = gate_up.mul_ids(x.reshape(1, 1, -1), ids)                        # (1, k, 2 ff)
    ff = gu.shape[2] // 2
    if gb is not None:
        add_expert_bias(gu, gb, ids, 0)
        add_expert_bias(gu, ub, ids, ff)
    g2 = gu.reshape(k, 2 * ff)
    act = np.empty((k, ff), np.float32)
    (swiglu_oai if oai else (lambda g, u, o: gated_act(g, u, False, o)))(g2[:, :ff], g2[:, ff:], act)
    Y = down.mul_ids(act.reshape(1, k, ff), ids)                          # (1, k, d)
    out = np.empty((1, Y.shape[2]), np.float32)
    combine(Y, w, db if db is not None else np.zeros((1, 1), np.float32), ids, db is not None, out)
    return out[0]


@pytest.mark.parametrize("gu_name,down_name", [("Q4_K", "Q6_K"), ("Q4_K", "Q4_K"), ("Q8_0", "MXFP4")])
def test_decode_step_equals_the_general_path(gu_name, down_name):
    """decode_step (one token: routing and both products' items in one call, the two products, the
    activation with the experts' biases, the weighted sum) is bitwise equal (tolerance 0) to the
    general kernels called one by one, for both gating functions, SiLU and gpt-oss's clamped
    SwiGLU, with and without router and expert biases; gate and up stacked per expert, 8 experts,
    top 2 and top 3."""
    rng = np.random.default_rng(5)
    n_expert, d, ff = 8, 512, 256

    def experts(name, rows, cols):              # ggml's rows of 512 weights, cut to cols
        q, t = _expert_bytes(name)
        rb = q.shape[1] * cols // 512
        pieces = q.reshape(16 * 512 // cols, rb)
        return ExpertWeights(pieces[rng.integers(0, pieces.shape[0], n_expert * rows)], t, (n_expert, rows, cols))

    gate_up = ExpertWeights.concat([experts(gu_name, ff, d), experts(gu_name, ff, d)])
    down = experts(down_name, d, ff)
    assert fused_decode([gate_up], down)
    for trial in range(6):
        k = 2 + trial % 2
        gating = GATING_SOFTMAX if trial < 3 else GATING_SOFTMAX_WEIGHT
        oai = trial % 3 == 2
        x = rng.standard_normal(d).astype(np.float32)
        logits = (rng.standard_normal(n_expert) * 2).astype(np.float32)
        biases = None if trial % 3 == 0 else tuple(
            (rng.standard_normal(s) * 0.1).astype(np.float32) for s in ((n_expert,), (n_expert, ff), (n_expert, ff),
                                                                       (n_expert, d)))
        out = np.empty(d, np.float32)
        decode_step(gate_up, down, x, logits, k, gating, True, np.float32(0.0), oai, biases, out)
        want = _moe_by_parts(gate_up, down, x, logits, k, gating, oai, biases)
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
