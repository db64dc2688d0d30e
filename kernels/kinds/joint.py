"""Joint matvecs: weights of two tiled kinds that share one input, multiplied in one parallel launch.

The k-quant mixtures leave a layer's projections of one input in two types: Q4_K_M (and Q5_K_M)
store Q and K in Q4_K (Q5_K) and V in Q6_K in some layers, so Q|K stack into one weight but V
cannot join them.  Two matvecs cost two launches, two barriers and two calls from Python; a
joint kernel runs every row tile of both in one parallel loop, each tile by its own kind's tile
function (``nibble.nibk_tile``, ``byte.q6_tile``: the bodies of the kinds' own matvecs), so each
output row is bit-identical to its weight's own matvec.  The input is rounded once per kind
before the loop, as each matvec rounds it.

The loop visits the tiles in an interleaved order (``interleaved``): the tiles of the second
weight spread evenly among the first's, so that the equal contiguous shares the threads take
hold near-equal shares of each weight (a Q6_K tile costs more than a Q4_K one).

``joint_matvec(a, b)`` returns ``product(x, out)`` for a pair of packed weights of such kinds, or
None where no joint kernel serves them (the caller then runs each matvec in turn).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..simd import SIMD_BEST
from . import Packed
from .byte import Q6Kind, offset_sums, q6_tile
from .nibble import NibbleKKind, nibk_tile
from .tiled import FM, ROW_TILE, round_activations, round_activations16, store_tile

R = ROW_TILE
f32 = np.float32


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_nibk_q6(qt, qh, sc, mn, d, dm, qt6, qh6, sl, sh, d6, x, order, n1, simd, y):
    """y (rows1 + rows2,) = [A x | B x]: A a k-quant nibble weight of n1 whole row tiles (arrays as
    matvec_nibk's), B a Q6_K weight (qt6, qh6, sl, sh, d6: matvec_q6's arrays); x (cols,) float32.
    order: every tile index 0 .. n1 + T6 - 1 once (tiles n1.. are B's), in the order the parallel
    loop visits them; tile t's results go to y[R t: R (t + 1)] (cut at the end of y)."""
    nb = x.size // 32
    five = qh.shape[1] > 0
    xq, xr, dx, dr, xs = round_activations(x)
    xq16, dx16 = round_activations16(x)
    xo = offset_sums(xq16)
    for i in prange(order.size):
        t = order[i]
        acc = np.zeros(R, np.float32)
        if t < n1:
            nibk_tile(qt[t], qh[t % qh.shape[0]], sc[t], mn[t], d[t], dm[t], five, xq, xr, dx, dr, xs,
                      0, nb, simd, acc)
        else:
            u = t - n1
            q6_tile(qt6[u], qh6[u], sl[u], sh[u], d6[u], xq16, dx16, xo, 0, nb, simd, acc)
        store_tile(acc, t, y)


def interleaved(n1: int, n2: int) -> np.ndarray:
    """Tile indices 0 .. n1 + n2 - 1 (the second weight's tiles n1..), the n2 spread evenly among
    the n1 in their own order: any contiguous share of the result holds its share of each."""
    keys = np.concatenate([(np.arange(n1) + 0.5) / max(n1, 1), (np.arange(n2) + 0.5) / max(n2, 1)])
    return np.argsort(keys, kind="stable").astype(np.int64)


def joint_matvec(a: Packed, b: Packed, simd: int = SIMD_BEST):
    """product(x (cols,) float32, out (a.rows + b.rows,) float32) = [A x | B x] in one launch, for a
    k-quant nibble weight a (Q4_K, Q5_K) of whole row tiles and a Q6_K weight b of the same row
    length; None for any other pair."""
    if not (isinstance(a.kind, NibbleKKind) and isinstance(b.kind, Q6Kind)):
        return None
    if a.rows % R or a.cols != b.cols:
        return None
    n1, n2 = a.rows // R, -(-b.rows // R)
    order = interleaved(n1, n2)
    arrays = (*a.kind.tile_kernel(a)[1], *b.kind.tile_kernel(b)[1])
    return lambda x, out: matvec_nibk_q6(*arrays, x, order, np.int64(n1), simd, out)
