"""The multi-row integer products of a batched decode step (Kind.matmul_rows, Weight.matmul_decode).

The claim is bit-identity, no tolerance: each row of ``Weight.matmul_decode(X)`` has the very bits of
``Weight.matvec`` of that row alone (the same activation rounding, integer sums and float combine
order), for every n (row groups of ISUM_ROWS, 2 and 1 rows), with every form of the integer sums
the host runs (portable loops, AVX2, AVX-512 VNNI), whatever the thread count and the other rows.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import Weight
from kernels.kinds import registered
from kernels.kinds.tiled import PROMPT_TERMS, expert_row_items, round_rows
from kernels.simd import SIMD_BEST, SIMD_FORMS, VNNI

from .test_matvec import bits_equal, random_tensor

ROWS_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "IQ4_XS", "MXFP4"]
ROWS, COLS = 77, 512            # a partial last row tile; two k-quant super-blocks
NS = list(range(1, 17)) + [37]


def at_threads(call, *counts) -> list:
    """call()'s result at each kernel thread count in turn (the count before restored after)."""
    before = kernels.get_num_threads()
    try:
        results = []
        for c in counts:
            kernels.set_num_threads(c)
            results.append(call())
        return results
    finally:
        kernels.set_num_threads(before)


def per_row(W: Weight, X: np.ndarray) -> np.ndarray:
    return np.stack([W.matvec(x) for x in X])


def test_multirow_products_serve_the_expected_kinds():
    """The nibble, Q6_K, Q8_0 and table kinds have a multi-row product; the others run the matvec per row."""
    names = set()
    for k in registered():
        try:
            if k.matmul_rows(None) is not None:
                names.add(k.name)
        except (AttributeError, KeyError, TypeError):      # binds the packed arrays: a kind that has one
            names.add(k.name)
    assert {"q4", "q4m", "q4k", "q5", "q5m", "q5k", "q6", "q8", "t4", "t4x"} <= names


@pytest.mark.parametrize("name", ROWS_TYPES)
def test_decode_rows_are_the_matvec_bit_for_bit(name):
    """n = 1..16 and 37 rows (rows of very different scales, a zero block): each row of
    matmul_decode equals the lone matvec bit for bit, with the SIMD and the portable sums."""
    rng = np.random.default_rng(5)
    W = Weight(random_tensor(name, ROWS, COLS, rng), name, (ROWS, COLS))
    forms = {f: W.kind.matmul_rows(W.packed, simd=f) for f in SIMD_FORMS if f != SIMD_BEST}
    for n in NS:
        X = rng.standard_normal((n, COLS)).astype(np.float32)
        if n > 2:
            X[1] *= 1e4
            X[2, :32] = 0.0
        ref = per_row(W, X)
        assert bits_equal(W.matmul_decode(X), ref), f"{name} n={n}: not the matvec's bits"
        if n in (1, 3, 5, 16):
            for f, product in forms.items():
                Y = np.empty_like(ref)
                product(X, Y)
                assert bits_equal(Y, ref), f"{name} n={n}: the sums of SIMD form {f} differ"


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q8_0", "IQ4_NL"])
def test_decode_rows_do_not_depend_on_threads_or_neighbours(name):
    """The same row gives the same bits at 1 and 2 threads, and beside any other rows; out may be a
    column slice of a wider array (a fused projection's part)."""
    rng = np.random.default_rng(6)
    W = Weight(random_tensor(name, 200, COLS, rng), name, (200, COLS))
    X = rng.standard_normal((9, COLS)).astype(np.float32)
    one, two = at_threads(lambda: W.matmul_decode(X), 1, 2)
    assert bits_equal(one, two)
    other = np.concatenate([rng.standard_normal((4, COLS)).astype(np.float32) * 100, X[3:4]])
    assert bits_equal(W.matmul_decode(other)[-1:], one[3:4])
    wide = np.zeros((9, 300), np.float32)
    W.matmul_decode(X, wide[:, 50:250])
    assert bits_equal(wide[:, 50:250], one) and not wide[:, :50].any() and not wide[:, 250:].any()


@pytest.mark.parametrize("name", ["Q2_K", "IQ2_XS", "F16"])
def test_other_kinds_run_the_matvec_per_row(name):
    """Kinds without a multi-row product give matmul_decode = the matvec per row, bit for bit."""
    rng = np.random.default_rng(7)
    W = Weight(random_tensor(name, 40, 256, rng), name, (40, 256))
    X = rng.standard_normal((5, 256)).astype(np.float32)
    assert bits_equal(W.matmul_decode(X), per_row(W, X))


def prompt_rows(W: Weight, X: np.ndarray) -> np.ndarray:
    """X (n, cols) times W by its kind's multi-row product of the activations rounded to the kind's
    prompt terms (TiledKind.prompt_terms), W's tiles, one thread's items of 16 rows."""
    kind = W.packed.kind
    out = np.empty((X.shape[0], W.shape[0]), np.float32)
    items = expert_row_items(np.array([0, X.shape[0]], np.int64), -(-W.shape[0] // 32), 16, 1)
    kind.row_items(W.packed)(kind.row_activations(np.ascontiguousarray(X), kind.prompt_terms), *items, out)
    return out


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "F32"])
def test_rounded_prompt_takes_the_rows_product_where_it_is_faster(name):
    """Weight.matmul(rounded=True) (a mixture-of-experts model's prompt products): kinds whose
    multi-row integer product beats the tiles here (Kind.rows_prompt) give each row the bits of that
    product of the activations rounded to the kind's prompt terms (one int8 term for Q4_K, Q5_K and
    Q6_K, as a prompt's expert products), into a column slice of a wider out too; the others give matmul's
    very bits (rounded ignored).  No tolerance."""
    rng = np.random.default_rng(8)
    W = Weight(random_tensor(name, 96, COLS, rng), name, (96, COLS))
    X = rng.standard_normal((200, COLS)).astype(np.float32)
    ref = prompt_rows(W, X) if W.kind.rows_prompt else W.matmul(X)
    assert bits_equal(W.matmul(X, rounded=True), ref)
    wide = np.zeros((200, 160), np.float32)
    W.matmul(X, wide[:, 30:126], rounded=True)
    assert bits_equal(wide[:, 30:126], ref) and not wide[:, :30].any() and not wide[:, 126:].any()
    assert W.kind.rows_prompt == (name in ("Q4_K", "Q5_K", "Q6_K") and SIMD_BEST == VNNI)
    if W.kind.rows_prompt:
        assert W.kind.prompt_terms == PROMPT_TERMS == 1


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_one_term_prompt_product_is_the_rounded_product(name):
    """The one-term rounded prompt product of a dense weight (Weight.matmul(rounded=True) of a kind
    with rows_prompt): each row equals the float64 product of the exact dequantized weights and its
    activations rounded once per 32-block to int8 (round_activations1, the xq the kind's
    row_activations(X, 1) holds) within 1e-5 * sum_j |w_j x_j| (+1e-30: the float32 combine of integer
    sums, the matvecs' bound), and the exact activations' product within that plus
    sum_j |w_j| max|x_block(j)| / 254 (the rounding's bound per value, with float32 slack); rows of
    very different scales and a zero block."""
    rng = np.random.default_rng(11)
    W = Weight(random_tensor(name, ROWS, COLS, rng), name, (ROWS, COLS))
    if not W.kind.rows_prompt:
        pytest.skip("the rounded prompt product runs on AVX-512 VNNI hosts only")
    n = 70
    X = (rng.standard_normal((n, COLS)) * np.exp(2 * rng.standard_normal((n, 1)))).astype(np.float32)
    X[3, 64:96] = 0
    xq, _, dx, _, _ = round_rows(X, 1)                         # round_activations1 of each row
    assert np.array_equal(W.kind.row_activations(X, 1)[0], xq)  # what the kind's product multiplies
    xr = (xq.reshape(n, -1, 32) * dx[:, :, None].astype(np.float64)).reshape(n, COLS)
    Wd = W.dequantize().astype(np.float64)
    mag = np.abs(xr) @ np.abs(Wd).T
    Y = W.matmul(X, rounded=True)
    assert np.all(np.abs(Y - xr @ Wd.T) <= 1e-5 * mag + 1e-30)
    amax = np.repeat(np.abs(X).reshape(n, -1, 32).max(2), 32, axis=1).astype(np.float64)   # (n, cols)
    step = amax / 254 * (1 + 2 ** -20) @ np.abs(Wd).T          # the rounding's bound, summed
    assert np.all(np.abs(Y - X.astype(np.float64) @ Wd.T) <= step + 1e-5 * mag + 1e-30)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_rounded_prompt_rows_do_not_depend_on_the_batch(name):
    """A prompt row's rounded product (Weight.matmul(rounded=True)) has the same bits alone, in any
    batch (1..37 rows, beside rows of other scales), at 1 and 2 threads."""
    rng = np.random.default_rng(12)
    W = Weight(random_tensor(name, 200, COLS, rng), name, (200, COLS))
    X = rng.standard_normal((37, COLS)).astype(np.float32)
    one, two = at_threads(lambda: W.matmul(X, rounded=True), 1, 2)
    assert bits_equal(one, two)
    for n in (1, 2, 5, 16, 17):
        other = np.concatenate([rng.standard_normal((n - 1, COLS)).astype(np.float32) * 100, X[6:7]])
        assert bits_equal(W.matmul(other, rounded=True)[-1:], one[6:7]), f"{name}: row differs in a batch of {n}"


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_rounded_pass_keeps_decode_rows_at_the_matvec(name):
    """A batched pass of decode steps and prompt rows (CPUBackend.linear(decode=k, rounded=True), as a
    mixture-of-experts model's projections take it): the k decode rows have their lone matvec's bits,
    the prompt rows those of the rounded prompt product of them alone."""
    from gguf_engine.backends.cpu import CPUBackend
    rng = np.random.default_rng(13)
    W = Weight(random_tensor(name, 96, COLS, rng), name, (96, COLS))
    X = rng.standard_normal((20, COLS)).astype(np.float32)
    be = CPUBackend(2)
    for k in (1, 3, 19):
        Y = be.linear(W, X, decode=k, rounded=True)
        assert bits_equal(Y[:k], per_row(W, X[:k]))
        assert bits_equal(Y[k:], W.matmul(X[k:], rounded=True))
        Yf = be.linear_fused([W, W], X, decode=k, rounded=True)
        assert bits_equal(Yf, np.concatenate([Y, Y], axis=1))
