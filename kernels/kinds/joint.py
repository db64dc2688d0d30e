"""Joint matvecs: weights of two tiled kinds that share one input, multiplied in one parallel launch.

The k-quant mixtures leave a layer's projections of one input in two types: Q4_K_M (and Q5_K_M)
store Q and K in Q4_K (Q5_K) and V in Q6_K in some layers, so Q|K stack into one weight but V
cannot join them.  Two matvecs cost two launches, two barriers and two calls from Python; a
joint kernel runs every row tile of both in one parallel loop, each tile by its own kind's tile
function (``nibble.nibk_tile``, ``byte.q6_tile``: the bodies of the kinds' own matvecs), so each
output row is bit-identical to its weight's own matvec.  The input is rounded once per kind
before the loop, as each matvec rounds it.

Each thread takes one share of the loop: an equal run of each weight's row tiles, each run
streamed in order as the weight's own matvec streams it (tiles of the two weights interleaved
one by one would start every tile cold: a pass over them measured 0.87x the two matvecs at one
thread), so both threads read near-equal bytes of each type.

``joint_matvec(a, b)`` returns ``product(x, out)`` for a pair of packed weights of such kinds, or
None where no joint kernel serves them (the caller then runs each matvec in turn).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..simd import SIMD_BEST
from ..threads import get_num_threads
from . import Packed
from .byte import Q6Kind, offset_sums, q6_tile
from .nibble import NibbleKKind, nibk_tile
from .tiled import FM, ROW_TILE, round_activations, round_activations16, store_tile

R = ROW_TILE
f32 = np.float32


@njit(parallel=True, fastmath=FM, cache=True)
def matvec_nibk_q6(qt, qh, sc, mn, d, dm, qt6, qh6, sl, sh, d6, x, parts, simd, y):
    """y (rows1 + rows2,) = [A x | B x]: A a k-quant nibble weight of whole row tiles (arrays as
    matvec_nibk's), B a Q6_K weight (qt6, qh6, sl, sh, d6: matvec_q6's arrays); x (cols,) float32.
    The loop runs parts shares (one per thread), share c the run of A's tiles
    n1 c / parts .. n1 (c + 1) / parts, then that of B's; tile t of the stacked rows (B's tiles
    after A's n1) goes to y[R t: R (t + 1)] (cut at the end of y)."""
    nb = x.size // 32
    n1 = qt.shape[0]
    n2 = qt6.shape[0]
    five = qh.shape[1] > 0
    xq, xr, dx, dr, xs = round_activations(x)
    xq16, dx16 = round_activations16(x)
    xo = offset_sums(xq16)
    for c in prange(parts):
        acc = np.empty(R, np.float32)           # each share's scratch made once (tiled.shares)
        aq = np.empty(R, np.float32)
        am = np.empty(R, np.float32)
        isum = np.empty(2 * R, np.int32)
        for t in range(n1 * c // parts, n1 * (c + 1) // parts):
            acc[:] = 0
            nibk_tile(qt[t], qh[t % qh.shape[0]], sc[t], mn[t], d[t], dm[t], five, xq, xr, dx, dr, xs,
                      0, nb, simd, acc, aq, am, isum)
            store_tile(acc, t, y)
        for u in range(n2 * c // parts, n2 * (c + 1) // parts):
            acc[:] = 0
            q6_tile(qt6[u], qh6[u], sl[u], sh[u], d6[u], xq16, dx16, xo, 0, nb, simd, acc, aq, isum)
            store_tile(acc, n1 + u, y)


def joint_matvec(a: Packed, b: Packed, simd: int = SIMD_BEST):
    """product(x (cols,) float32, out (a.rows + b.rows,) float32) = [A x | B x] in one launch, for a
    k-quant nibble weight a (Q4_K, Q5_K) of whole row tiles and a Q6_K weight b of the same row
    length; None for any other pair.  Each thread takes one share: an equal run of each weight's
    tiles, each run streamed in order as the weight's own matvec streams it."""
    if not (isinstance(a.kind, NibbleKKind) and isinstance(b.kind, Q6Kind)):
        return None
    if a.rows % R or a.cols != b.cols:
        return None
    arrays = (*a.kind.tile_kernel(a)[1], *b.kind.tile_kernel(b)[1])
    return lambda x, out: matvec_nibk_q6(*arrays, x, np.int64(get_num_threads()), simd, out)
