"""What the tiled kinds share: row tiles, scale storage, activation rounding, repacking and stacking.

A tiled kind cuts the matrix into *row tiles* of ``ROW_TILE`` (32) consecutive rows, the SIMD
lanes of its matvec (4 ymm registers of float32): one broadcast activation multiplies 8 rows'
weights per register, with no horizontal sums and no padding of the block count (only the row
count is padded to a whole tile, with zeros).  Row ``r`` is lane ``l = r % ROW_TILE`` of tile
``t = r // ROW_TILE``; every array of a packed weight has one row per tile, ``(T, ...)``:

* the quants, *row-interleaved*: a lane holds ``lane_bytes`` consecutive bytes of its row at a
  time (the 32-bit or 16-bit lanes of the integer dot products), and the next such group of the
  tile's 32 rows follows; each kind module says where byte k of block b of lane l lives;
* per-block values (scales, offsets, extra bit planes) at ``[t, b * ROW_TILE + l]``.

Per-block float scales are float32, or float16 bits (uint16) where that is lossless (fewer
bytes per token to stream; the kernels read either form through ``scale``).

All decoded values are bit-exact with ggml's dequantization: every product of a
float16-derived scale and a small integer is exact in float32, so ``d*q + m`` rounds once,
as ggml's expression does.

The matvecs take activations rounded per 32-block (``round_activations``): x split into two
int8 terms, ``x ~ dx xq + dr xr`` (the block rounded to int8 as ggml's Q8_0 does, plus its
rounded remainder, within max|x_block| / 64516 of x); llama.cpp rounds x once, to int8; the
second term makes the product as accurate as a float one at a fraction of the cost.  Each row is
computed by one thread in a fixed order, so results depend neither on the thread count nor on
how weights were stacked.  Error bound the tests use: ``|y - W x| <= 1e-5 * sum_j |w_j x_j|``
(+1e-30), with W the exact dequantization and x the activations the kernel multiplies
(``Weight.rounded``).

What keeps the float combine of the matvecs vector and fast (checked with ``inspect_asm``, see
``tools/bench_kernels.py --asm``): the lanes of every loop are the 32 rows of a tile;
``FM`` (contraction without reassociation); no branch inside a lane loop; float16 scale bits
widened by ``fpext half`` (vcvtph2ps) where the host has F16C; indices as uint64 (``nonneg``)
so Numba emits no negative-index wraparound.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..numerics import bf16_bits_to_f32, f16_bits_to_f32
from ..simd import FMA_ROWS, HOST_F16C, ISUM_ROWS, SIMD_BEST, block_fma_intrinsic, half_bits_to_f32
from ..threads import get_num_threads, run_all
from . import Kind, Packed

f32 = np.float32
# Rows per tile (SIMD lanes of the matvec: 4 ymm registers of float32).
ROW_TILE = 32
# TILE_ITEMS: every tiled kind's matvec kernel computes a list of (row tile, activation row) items
# in one parallel loop, ``kernel(*arrays, X, tiles, xrow, simd, y)``: item i is row tile tiles[i]
# times row xrow[i] of X (m, cols) float32, stored at y[ROW_TILE i: ROW_TILE (i + 1)] (cut at the
# end of y).  A plain matvec is every tile times one row; a mixture-of-experts step is the selected
# experts' tiles of one stacked expert tensor, each times its own input row, in one launch.  Each
# row of X is rounded once, as a matvec of it alone rounds it, and each item is summed by one
# thread in a fixed order: an item's result is bit-identical to the same row's plain matvec.
# ROW_ITEMS: the multi-row integer products of some kinds (``TiledKind.row_items``) take a list of
# (row tile, run of activation rows) items in one parallel loop, ``product(act, tiles, r0, r1, yt, Y)``:
# item i is row tile tiles[i] times rows r0[i]..r1[i]-1 of the rounded activations act (the kind's
# ``row_activations`` of X), stored in the columns of tile yt[i] of those rows of Y (an item may be
# empty, r0[i] == r1[i]: the padding that evens the threads' shares, expert_row_items).  The quants of
# each block are unpacked once per ISUM_ROWS rows, and each row is summed as the matvec sums it
# alone (bit-identical): a mixture-of-experts batch is every expert's tiles times the rows routed to
# it, in one launch.
# Float flags of the tiled matvecs: fused multiply-add, no reassociation (see the module docstring).
FM = {"contract", "nsz", "arcp", "afn"}
# The int8 activation terms per 32-block of a prompt's rounded products (a mixture-of-experts model's
# prompt: its expert products, kernels.experts.mul_grouped, and its dense quantized products,
# Weight.matmul's rounded), for the kinds whose multi-row product takes them (``TiledKind.row_terms``:
# Q4_K, Q5_K): one, ggml's Q8_0 rounding (round_activations1, within max|x_block| / 254), so one
# multiply-add (vpdpbusd, vpmaddubsw) per 4 weights instead of two; still finer than llama.cpp's one
# int8 term per 256 values.  Decode steps keep their matvec's two terms: they are memory-bound, and one
# term measured no faster there (one token's Q4_K gate|up and down at the MoE benchmark shape through
# the one-term multi-row product, one row per slot: 1.01-1.04x and 0.95-1.32x the two-term matvecs'
# time, 1 thread), so they keep the finer rounding; a prompt's rows then differ from the same tokens
# decoded one by one, within the rounding's bound.  ``TiledKind.prompt_terms`` is each kind's choice.
PROMPT_TERMS = 1


@njit(cache=True, inline="always")
def nonneg(i):
    """An index known to be >= 0, as uint64: Numba then emits no negative-index wraparound,
    which would otherwise stop LLVM from vectorizing the loads."""
    return np.uint64(i)


def scale(v):
    """A stored value as float32: float32 as it is, float16 bits (uint16) converted by F16C's
    vcvtph2ps where the host has it (exact; it quiets a signalling NaN, which a stored half scale
    never is: TiledKind.pack keeps those in float32), else by numerics.f16_bits_to_f32, and
    bfloat16 bits (int16, the plain kind's BF16 weights) widened.  (Callable from Numba code only.)"""
    raise NotImplementedError("scale runs inside Numba kernels")


@overload(scale, inline="always")
def scale_impl(v):
    if v == types.int16:
        return lambda v: bf16_bits_to_f32(np.uint16(v))
    if isinstance(v, types.Integer):
        if HOST_F16C:
            return lambda v: half_bits_to_f32(v)
        return lambda v: f16_bits_to_f32(v)
    return lambda v: np.float32(v)


# Shares a TILE_ITEMS kernel deals its items into (at most): a multiple of every thread count up to 4
# and of 6, 8, 12, 16, 24, so the static schedule gives each thread an equal count of shares.
SHARES = 48


@njit(cache=True, inline="always")
def shares(n):
    """The shares a TILE_ITEMS kernel deals its n items into (at least one, at most n and SHARES):
    each share's parallel iteration makes its scratch (the tile sums) once and runs its items in
    turn (``share``): made per item instead, four small allocations cost about a tenth of a decode
    step's matvec time.  (A constant, not the thread count: reading that from compiled code would
    keep the kernels out of Numba's cache.)"""
    return max(1, min(SHARES, n))


@njit(cache=True, inline="always")
def share(n, c, parts):
    """Items n c / parts .. n (c + 1) / parts - 1 of n: share c of ``shares``, as (start, stop)
    (the static schedule of a parallel loop over the items)."""
    return n * c // parts, n * (c + 1) // parts


@njit(cache=True, inline="always")
def store_tile(acc, t, y):
    """The tile's results into y, leaving out the padding rows past the end."""
    o = np.int64(t) * ROW_TILE                 # t may be a parallel loop's unsigned index
    n = min(ROW_TILE, y.size - o)
    for l in range(n):
        y[o + l] = acc[l]


@njit(cache=True, nogil=True)
def block_scales(sc, d, t0, t1, sign):
    """Tiles t0..t1-1 of integer block scales sc (T, nb*R) times the scales of their 256 weights
    d (T, nb/8*R): float32 (t1 - t0, nb*R), sign * d * sc, exact (an 11-bit significand times an
    integer of at most 8 bits): the per-block float scales the K-major block decoders take."""
    nb = sc.shape[1] // ROW_TILE
    out = np.empty((t1 - t0, nb * ROW_TILE), np.float32)
    for t in range(t0, t1):
        for b in range(nb):
            for l in range(ROW_TILE):
                out[t - t0, b * ROW_TILE + l] = f32(sign) * (scale(d[t, (b // 8) * ROW_TILE + l])
                                                             * f32(sc[t, b * ROW_TILE + l]))
    return out


@njit(cache=True, nogil=True)
def interleave_rows(rows, dst):
    """A tile's rows, each as units (uint16 / uint32) in row order, rows (ROW_TILE, n), into the
    tile's interleaved layout dst (n * ROW_TILE,): unit u of lane l at dst[u * ROW_TILE + l] (the
    lane_bytes-at-a-time order of the quants).  The repackers form each row's bytes with
    contiguous loops and interleave them here, in sequential writes."""
    for u in range(rows.shape[1]):
        for l in range(ROW_TILE):
            dst[u * ROW_TILE + l] = rows[l, u]


@njit(cache=True, inline="always")
def add_scaled_rows(acc, dt, s, aq, c):
    """add_scaled for rows 0..c-1 of a multi-row product (acc, aq: row r lane l at r R + l): indexed
    whole, not as slices of the rows, so that LLVM makes each row one vector loop (a slice's bounds
    kept it to scalar conversions and multiply-adds, as many instructions as a block's products)."""
    for r in range(c):
        o = r * ROW_TILE
        for l in range(ROW_TILE):
            acc[nonneg(o + l)] += scale(dt[nonneg(s * ROW_TILE + l)]) * aq[nonneg(o + l)]


@njit(cache=True, inline="always")
def add_scaled(acc, dt, s, aq):
    """acc[l] += scale(dt[s R + l]) aq[l] for the R lanes: a super-block's sums (aq) times the
    lanes' scales of super-block s (dt: a tile's row of per-256 scales)."""
    for l in range(ROW_TILE):
        acc[l] += scale(dt[nonneg(s * ROW_TILE + l)]) * aq[l]


# ---------------------------------------------------------------- the small-batch products


_fma1, _fma2, _fma4 = (block_fma_intrinsic(r) for r in (1, 2, 4))
# A small-batch product takes X in chunks of ROW_CHUNK rows by BLOCK_CHUNK blocks (each chunk's
# activations, 256 KB, stay in the second-level cache while every row tile passes over them; a
# block is decoded again for each chunk of rows).  Per tile, the chunk's partial sums (4 KB) and
# its activations of one block (4 KB) stay in the first-level cache beside the decoded block (4 KB).
ROW_CHUNK = 32
BLOCK_CHUNK = 64
# Chunks per thread a pass of several small-batch products is cut into (small_products).
SMALL_CHUNKS = 4


@njit(cache=True, inline="always")
def fma_rows(wb, x, xo, ldx, n, acc):
    """One decoded block wb (32 k x ROW_TILE lanes, K-major) applied to n activation rows:
    acc (n * ROW_TILE,) row i lane l += sum_k wb[k R + l] x[xo + i ldx + k] (simd.block_fma_intrinsic:
    FMA_ROWS rows per call while they last)."""
    i = 0
    if FMA_ROWS == 4:
        while i + 4 <= n:
            _fma4(wb, x, xo + i * ldx, ldx, acc, i * ROW_TILE)
            i += 4
    while i + 2 <= n:
        _fma2(wb, x, xo + i * ldx, ldx, acc, i * ROW_TILE)
        i += 2
    if i < n:
        _fma1(wb, x, xo + i * ldx, ldx, acc, i * ROW_TILE)


def block_major(X: np.ndarray) -> np.ndarray:
    """X (n, cols) float32 -> flat (n * cols,) in the order the small-batch products read it: by
    chunks of ROW_CHUNK rows (the last one c <= ROW_CHUNK rows), each block-major: block b of row
    i0 + i of the chunk of rows i0.. at [i0 cols + 32 (c b + i)].  The chunk's activations of one
    weight block lie side by side and a chunk is one sequential stream (rows of X a power of two
    apart would also alias in the first-level cache)."""
    n, cols = X.shape
    nb = cols // 32
    out = np.empty(n * cols, np.float32)
    for i0 in range(0, n, ROW_CHUNK):
        c = min(ROW_CHUNK, n - i0)
        out[i0 * cols:(i0 + c) * cols].reshape(nb, c, 32)[...] = X[i0:i0 + c].reshape(c, nb, 32).transpose(1, 0, 2)
    return out


def small_product(kernel, arrays: tuple, X: np.ndarray, out: np.ndarray) -> None:
    """out (n, rows) = X (n, cols) W^T by a kind's small-batch kernel(*arrays, x, n, t0, t1, out)
    (serial, nogil: row tiles t0..t1-1, X given block-major as x), the row tiles split over the
    worker threads (the pool the prompt's other kernels use, so no OpenMP worker spins beside
    them).  Each tile is summed by one thread in a fixed order: the result depends neither on the
    thread count nor on the other rows of X."""
    small_products(kernel, [(arrays, X, out)])


def small_products(kernel, groups: list) -> None:
    """out = X W^T for every (arrays, X (n, cols), out (n, rows)) in groups (one weight each, all of
    one kind: a mixture-of-experts batch, one group per expert with tokens) by the kind's
    small-batch kernel (see small_product), in one pass of the worker threads: the (group, row
    tile) work is cut into chunks of near-equal cost (rows times tiles), SMALL_CHUNKS per thread
    for several groups, which the threads take in turn until none is left (a thread the system
    holds back leaves its chunks to the others), with no barrier per weight.  Results as
    small_product's for each group."""
    work = [(arrays, X, X.shape[0], out, -(-out.shape[1] // ROW_TILE)) for arrays, X, out in groups]
    total = sum(n * tiles for _, _, n, _, tiles in work)
    threads = get_num_threads()
    parts = max(1, min(threads * (SMALL_CHUNKS if len(work) > 1 else 1), total))
    chunks: list[list] = [[] for _ in range(parts)]
    start = 0
    for g, (_, _, n, _, tiles) in enumerate(work):     # tile t of group g goes to the chunk its cost falls in
        for c, t0, t1 in _cuts(start, n, tiles, total, parts):
            chunks[c].append((g, t0, t1))
        start += n * tiles
    chunks = [c for c in chunks if c]
    laid = [block_major(work[0][1])] if len(work) == 1 else None
    order = iter(range(len(chunks)))                   # shared: each next() hands out one chunk

    def run():
        x, last = None, -1
        for c in order:
            for g, t0, t1 in chunks[c]:     # a group's X laid out by the thread that uses it, just before
                arrays, X, n, out, _ = work[g]
                if g != last:
                    x, last = (laid[0] if laid else block_major(X)), g
                kernel(*arrays, x, n, t0, t1, out)
    run_all(run, [()] * min(threads, len(chunks)))


def _cuts(start: int, n: int, tiles: int, total: int, parts: int) -> list[tuple[int, int, int]]:
    """Tiles 0..tiles-1 of a group whose tile t costs n and starts at start + n t, in a total cost
    cut into parts equal shares: (share, t0, t1) for each run of tiles that starts in one share."""
    out = []
    t0 = 0
    while t0 < tiles:
        share = min(parts - 1, (start + n * t0) * parts // total)
        end = -(-((share + 1) * total) // parts)           # the first cost of the next share
        t1 = min(tiles, max(t0 + 1, -(-(end - start) // n)))
        out.append((share, t0, t1))
        t0 = t1
    return out


@njit(cache=True, inline="always")
def load_rows(n, i0, t, out, b0):
    """The partial sums (n * ROW_TILE,) of rows i0 .. i0 + n - 1 of row tile t: zero at the first
    chunk of blocks (b0 = 0), else what store_rows left in out (float32 both ways, so chunking
    leaves the order of the additions, and the result, as they are)."""
    acc = np.zeros(n * ROW_TILE, np.float32)
    if b0 > 0:
        m = min(ROW_TILE, out.shape[1] - t * ROW_TILE)
        for i in range(n):
            for l in range(m):
                acc[i * ROW_TILE + l] = out[i0 + i, t * ROW_TILE + l]
    return acc


@njit(cache=True, inline="always")
def store_rows(acc, n, i0, t, out):
    """The tile's results acc (n * ROW_TILE,) for rows i0 .. i0 + n - 1 of out (.., rows) into its
    columns t R .., leaving out the padding rows past the end."""
    m = min(ROW_TILE, out.shape[1] - t * ROW_TILE)
    for i in range(n):
        for l in range(m):
            out[i0 + i, t * ROW_TILE + l] = acc[i * ROW_TILE + l]


_ROUNDER = f32(12582912.0)      # 1.5 * 2^23: (u + R) - R rounds |u| < 2^22 to an integer, ties to even


@njit(cache=True, inline="always")
def _round_even(u):
    """u rounded to the nearest integer (ties to even) as float32, |u| < 2^22; branch-free (it
    vectorizes; no reassociating flags, so the two adds are kept)."""
    return (u + _ROUNDER) - _ROUNDER


@njit(cache=True, inline="always")
def _larger(a, m):
    """a if a > m else m: a running maximum's step (a NaN is never taken)."""
    return a if a > m else m


@njit(cache=True, inline="always")
def _block_absmax(x, o):
    """max |x[o:o+32]| (0 for a zero block; NaNs skipped) as eight running maxima of every eighth
    value, then combined: the same value as one running maximum over the block (a maximum is
    exact whatever the order), without a 32-long chain of dependent compares."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = f32(0)
    for k in range(0, 32, 8):
        i = o + k
        m0 = _larger(abs(x[nonneg(i)]), m0)
        m1 = _larger(abs(x[nonneg(i + 1)]), m1)
        m2 = _larger(abs(x[nonneg(i + 2)]), m2)
        m3 = _larger(abs(x[nonneg(i + 3)]), m3)
        m4 = _larger(abs(x[nonneg(i + 4)]), m4)
        m5 = _larger(abs(x[nonneg(i + 5)]), m5)
        m6 = _larger(abs(x[nonneg(i + 6)]), m6)
        m7 = _larger(abs(x[nonneg(i + 7)]), m7)
    return _larger(_larger(_larger(m7, m3), _larger(m5, m1)), _larger(_larger(m6, m2), _larger(m4, m0)))


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_into(x, xq, xr, qo, dx, dr, xs):
    """round_activations (two int8 terms) of x (32 nb,) f32 into the caller's arrays: xq, xr at
    [qo: qo + 32 nb] (int8), dx, dr, xs (nb,) float32; where xr is empty, round_activations1 (one
    term: xq, dx, xs; dr unused).  Written in place, so a batch's rows go straight into
    round_rows' arrays."""
    nb = x.size // 32
    two = xr.size > 0
    for b in range(nb):
        o = 32 * b
        amax = _block_absmax(x, o)
        inv = f32(127) / amax if amax > 0 else f32(0)
        sq = np.int32(0)
        sr = np.int32(0)
        if two:
            for k in range(32):
                u = x[nonneg(o + k)] * inv           # in units of dx: |u| <= 127
                v = _round_even(u)
                w = _round_even((u - v) * f32(254))  # the remainder in units of dr: |w| <= 127
                xq[nonneg(qo + o + k)] = np.int8(v)
                xr[nonneg(qo + o + k)] = np.int8(w)
                sq += np.int32(v)
                sr += np.int32(w)
        else:
            for k in range(32):
                v = _round_even(x[nonneg(o + k)] * inv)
                xq[nonneg(qo + o + k)] = np.int8(v)
                sq += np.int32(v)
        dx[b] = amax / f32(127)
        if two:
            dr[b] = amax / f32(127 * 254)
            xs[b] = dx[b] * f32(sq) + dr[b] * f32(sr)
        else:
            xs[b] = dx[b] * f32(sq)


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_activations(x):
    """x (32 nb,) f32 -> (xq, xr, dx, dr, xs): each 32-element block as two int8 terms,
    x ~ dx xq + dr xr with dx = max|x| / 127, xq = round(x / dx) (ggml's Q8_0 rounding,
    ties to even), dr = dx / 254 and xr = round((x - dx xq) / dr), so |x - dx xq - dr xr|
    <= dr / 2 = max|x| / 64516 (plus float32 rounding); xs (nb,) = the blocks' sums of
    those values.  Zero blocks give zeros."""
    nb = x.size // 32
    xq = np.empty(x.size, np.int8)
    xr = np.empty(x.size, np.int8)
    dx = np.empty(nb, np.float32)
    dr = np.empty(nb, np.float32)
    xs = np.empty(nb, np.float32)
    round_into(x, xq, xr, 0, dx, dr, xs)
    return xq, xr, dx, dr, xs


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_activations1(x):
    """x (32 nb,) f32 -> (xq, dx, xs): each 32-element block rounded once to int8, x ~ dx xq with
    dx = max|x| / 127 and xq = round(x / dx), ties to even (ggml's Q8_0 rounding; the very xq and
    dx of round_activations' first term), so |x - dx xq| <= dx / 2 = max|x| / 254 (plus float32
    rounding): 254 times round_activations' bound, still finer than llama.cpp's one int8 term per
    256 values of the k-quants' products.  xs (nb,) = the blocks' sums dx sum(xq) of those values.
    Zero blocks give zeros."""
    nb = x.size // 32
    xq = np.empty(x.size, np.int8)
    dx = np.empty(nb, np.float32)
    xs = np.empty(nb, np.float32)
    round_into(x, xq, xq[:0], 0, dx, dx[:0], xs)
    return xq, dx, xs


@njit(cache=True, inline="always")
def _rows_arrays(X, terms):
    """Empty arrays of round_rows' result for X (n, 32 nb) and `terms` int8 terms (one: xr, dr empty)."""
    n, cols = X.shape
    nb = cols // 32
    two = terms == 2
    return (np.empty(n * cols, np.int8), np.empty(n * cols if two else 0, np.int8), np.empty((n, nb), np.float32),
            np.empty((n, nb if two else 0), np.float32), np.empty((n, nb), np.float32))


@njit(cache=True, inline="always")
def _round_row(X, i, xq, xr, dx, dr, xs):
    """round_activations (round_activations1 where xr is empty) of row i of X into row i of
    round_rows' arrays."""
    round_into(X[i], xq, xr, i * X.shape[1], dx[i], dr[i], xs[i])


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_rows(X, terms=2):
    """round_activations (terms 2) or round_activations1 (terms 1) of each row of X (n, 32 nb):
    xq, xr (n * 32 nb,) int8, row i at i * 32 nb; dx, dr, xs (n, nb) float32; with one term xr
    and dr are empty ((0,) and (n, 0)), which is how the multi-row products tell the forms apart.
    Each row's values are those of its own call."""
    xq, xr, dx, dr, xs = _rows_arrays(X, terms)
    for i in range(X.shape[0]):
        _round_row(X, i, xq, xr, dx, dr, xs)
    return xq, xr, dx, dr, xs


@njit(parallel=True, cache=True)
def round_rows_parallel(X, terms=2):
    """round_rows, the rows split over the threads (each row's values are those of its own call)."""
    xq, xr, dx, dr, xs = _rows_arrays(X, terms)
    for i in prange(X.shape[0]):
        _round_row(X, i, xq, xr, dx, dr, xs)
    return xq, xr, dx, dr, xs


def take_rows(act: tuple, n: int, rows: np.ndarray) -> tuple:
    """Rows ``rows`` of rounded activations (a row_activations tuple for n rows: 2-D arrays one row
    per activation row, flat ones n equal runs) as the same tuple for len(rows) rows."""
    return tuple(a.reshape(n, -1)[rows].reshape(-1) if a.ndim == 1 else a[rows] for a in act)


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_rows16(X):
    """round_activations16 of each row of X (n, 32 nb): xq (n * 32 nb,) int16, row i at i * 32 nb;
    dx (n, nb) float32."""
    n, cols = X.shape
    xq = np.empty(n * cols, np.int16)
    dx = np.empty((n, cols // 32), np.float32)
    for i in range(n):
        q, a = round_activations16(X[i])
        xq[i * cols:(i + 1) * cols] = q
        dx[i] = a
    return xq, dx


# Activation rows per ROW_ITEMS item of a dense batch (rows_by_items; a batch grouped by expert takes
# kernels.experts.EXPERT_RUN_ROWS): a run's activations stay in the core's caches while every row tile
# passes over them.
ROW_ITEM_ROWS = 16


@njit(cache=True, nogil=True)
def expert_row_items(bounds, tiles, chunk, parts, most=ISUM_ROWS):
    """ROW_ITEMS of a batch grouped by expert (rows bounds[e]..bounds[e+1]-1 routed to expert e of a
    stacked matrix, tiles per expert): for each expert with rows, each run of at most chunk of its
    rows, each of its tiles; dealt to ``parts`` threads.  -> (tiles, r0, r1, yt) int64: the stacked
    tile, the run, the output tile.

    A parallel loop gives each of its threads an equal count of consecutive items, but items differ
    in work (a run's rows, and the quants unpacked once per call of the product: row_step's steps of
    up to ``most`` rows, the kind's widest call, ``TiledKind.row_call_rows``): the list
    is cut where the work so far reaches each part's share, and each part padded with empty items
    (r0 == r1, no work) to the longest part's count, so the threads get near-equal work and each
    keeps consecutive runs of the same expert's tiles (read from its own cache)."""
    n_expert = bounds.size - 1
    m = 0
    for e in range(n_expert):
        m += -(-(bounds[e + 1] - bounds[e]) // chunk) * tiles
    t = np.empty(m, np.int64)
    a = np.empty(m, np.int64)
    b = np.empty(m, np.int64)
    y = np.empty(m, np.int64)
    i = 0
    for e in range(n_expert):
        for s in range(bounds[e], bounds[e + 1], chunk):
            for j in range(tiles):
                t[i] = e * tiles + j
                a[i] = s
                b[i] = min(s + chunk, bounds[e + 1])
                y[i] = j
                i += 1
    if parts <= 1 or m == 0:
        return t, a, b, y
    cost = np.empty(m + 1, np.float64)            # work before item i: 1 per row, 1 per step (row_step's)
    cost[0] = 0.0
    for i in range(m):
        rows = b[i] - a[i]
        steps = 0
        left = rows
        while left > 0:
            left -= row_step(left, most)
            steps += 1
        cost[i + 1] = cost[i] + rows + steps
    cut = np.empty(parts + 1, np.int64)             # part p: items cut[p]..cut[p+1]-1
    cut[0] = 0
    i = 0
    for p in range(1, parts):
        share = cost[m] * p / parts
        while i < m and cost[i + 1] <= share:
            i += 1
        if i < m and cost[i + 1] - share < share - cost[i]:    # the cut nearest the share
            i += 1
        cut[p] = i
    cut[parts] = m
    longest = 0
    for p in range(parts):
        longest = max(longest, cut[p + 1] - cut[p])
    n = parts * longest
    T = np.zeros(n, np.int64)                       # empty items: tile 0, rows 0..-1
    A = np.zeros(n, np.int64)
    B = np.zeros(n, np.int64)
    Y = np.zeros(n, np.int64)
    for p in range(parts):
        k = cut[p + 1] - cut[p]
        T[p * longest:p * longest + k] = t[cut[p]:cut[p + 1]]
        A[p * longest:p * longest + k] = a[cut[p]:cut[p + 1]]
        B[p * longest:p * longest + k] = b[cut[p]:cut[p + 1]]
        Y[p * longest:p * longest + k] = y[cut[p]:cut[p + 1]]
    return T, A, B, Y


@njit(cache=True, inline="always")
def row_step(left, most=ISUM_ROWS):
    """Activation rows the next call of a multi-row integer sum takes when `left` remain: `most` (a
    kind's widest call where it builds one beyond ISUM_ROWS) while there are that many, then
    ISUM_ROWS, then 2, then 1 (the row counts the kinds build intrinsics for)."""
    if left >= most:
        return most
    if left >= ISUM_ROWS:
        return ISUM_ROWS
    return 2 if left >= 2 else 1


@njit(cache=True, inline="always")
def row_offsets(r, terms=2):
    """Where activation row r of a multi-row product keeps its lanes: (its float accumulators'
    offset r ROW_TILE, its integer sums' offset terms ROW_TILE r: one sum per lane and term)."""
    return r * ROW_TILE, terms * ROW_TILE * r


@njit(cache=True, inline="always")
def two_terms(isum, o, l, dxb, drb):
    """One block's float product for lane l from its integer sums by the two int8 activation terms
    (round_activations), the xq term's at isum[o + l] and the xr term's at isum[o + ROW_TILE + l]:
    ``dx isum_q + dr isum_r``, written once so that every kind's matvec and multi-row product
    combine it alike."""
    return f32(isum[o + l]) * dxb + f32(isum[o + ROW_TILE + l]) * drb


@njit(cache=True, inline="always")
def terms_product(isum, o, l, dxb, drb, terms):
    """two_terms, or for activations of one int8 term (round_activations1) ``dx isum_q`` (drb unused)."""
    if terms == 1:
        return f32(isum[o + l]) * dxb
    return two_terms(isum, o, l, dxb, drb)


@njit(cache=True, inline="always")
def two_halves(s0, s1, isum, o, l):
    """One block's product for lane l from its two 16-weight halves' integer sums (isum[o + l] and
    isum[o + ROW_TILE + l]) and their scales s0, s1: ``s0 isum_0 + s1 isum_1`` (Q8_0, Q6_K)."""
    return s0 * f32(isum[o + l]) + s1 * f32(isum[o + ROW_TILE + l])


@njit(cache=True, inline="always")
def store_row_tiles(acc, c, t, Y, i0):
    """Rows i0 .. i0 + c - 1 of a multi-row product: acc (>= c ROW_TILE,) row r lane l at
    acc[r ROW_TILE + l], into their tile t of Y (n, rows) (store_tile for each)."""
    for r in range(c):
        store_tile(acc[r * ROW_TILE:(r + 1) * ROW_TILE], t, Y[i0 + r])


@njit(cache=True, inline="always")
def sums16(xq, xr):
    """The sums of the int8 activation terms over each 16 values, (2 nb,) int32 each."""
    sq = np.empty(xq.size // 16, np.int32)
    sr = np.empty(xq.size // 16, np.int32)
    for h in range(sq.size):
        a = 0
        b = 0
        for k in range(16 * h, 16 * h + 16):
            a += np.int32(xq[k])
            b += np.int32(xr[k])
        sq[h] = a
        sr[h] = b
    return sq, sr


@njit(cache=True, fastmath=False)   # exact: never the calling kernel's flags
def round_activations16(x):
    """x (32 nb,) f32 -> (xq int16 (32 nb,), dx (nb,)): each 32-element block rounded to int16,
    x ~ dx xq with dx = max|x| / 32767 (ties to even), within dx / 2 = max|x| / 65534."""
    nb = x.size // 32
    xq = np.empty(x.size, np.int16)
    dx = np.empty(nb, np.float32)
    for b in range(nb):
        o = 32 * b
        amax = _block_absmax(x, o)
        inv = f32(32767) / amax if amax > 0 else f32(0)
        for k in range(32):
            xq[nonneg(o + k)] = np.int16(_round_even(x[nonneg(o + k)] * inv))
        dx[b] = amax / f32(32767)
    return xq, dx


# ---------------------------------------------------------------- tiles <-> rows (numpy, for stacking)


def as_f32_scales(a: np.ndarray) -> np.ndarray:
    """Per-block scales in float32 whichever way they are stored."""
    return a.view(np.float16).astype(np.float32) if a.dtype == np.uint16 else a


def _bit_map(index) -> tuple[np.ndarray, np.ndarray]:
    """(word, bit) of the extra bit of weight k of lane l in block 0, both (32 k, ROW_TILE l)."""
    return index.py_func(0, np.arange(32)[:, None], np.arange(ROW_TILE)[None, :])


def untile_bits(a: np.ndarray, index, rows: int, nb: int) -> np.ndarray:
    """A bit plane (T, nb*R) -> the bits as row-major (rows, nb, 32) uint8; index(b, k, l) -> (word,
    bit) is the kind's index helper of the plane."""
    word, bit = _bit_map(index)
    T = a.shape[0]
    v = (a.reshape(T, nb, ROW_TILE)[:, :, word] >> bit) & 1     # (T, nb, 32 k, R l)
    return v.astype(np.uint8).transpose(0, 3, 1, 2).reshape(T * ROW_TILE, nb, 32)[:rows]


def tile_bits(bits: np.ndarray, index) -> np.ndarray:
    """Row-major bits (rows, nb, 32) -> a bit plane (T, nb*R) (inverse of untile_bits)."""
    rows, nb, _ = bits.shape
    T = -(-rows // ROW_TILE)
    full = np.zeros((T * ROW_TILE, nb, 32), np.uint32)
    full[:rows] = bits
    full = full.reshape(T, ROW_TILE, nb, 32)
    word, bit = _bit_map(index)
    out = np.zeros((T, nb, ROW_TILE), np.uint32)
    for k in range(32):
        for l in range(ROW_TILE):
            out[:, :, word[k, l]] |= full[:, l, :, k] << np.uint32(bit[k, l])
    return out.reshape(T, nb * ROW_TILE)


def untile(a: np.ndarray, rows: int, nb: int, g: int = 1) -> np.ndarray:
    """Tiled (T, nb*K*R) -> row-major (rows, nb, K) copy (K = 1 for per-block arrays); each
    lane holds g consecutive bytes of a block at a time (see the module docstring)."""
    T = a.shape[0]
    K = a.shape[1] // (nb * ROW_TILE)
    return (a.reshape(T, nb, K // g, ROW_TILE, g).transpose(0, 3, 1, 2, 4)
            .reshape(T * ROW_TILE, nb, K)[:rows])


def tile(a: np.ndarray, g: int = 1) -> np.ndarray:
    """Row-major (rows, nb, K) -> tiled (T, nb*K*R), the padding rows zero (inverse of untile)."""
    rows, nb, K = a.shape
    T = -(-rows // ROW_TILE)
    full = np.zeros((T * ROW_TILE, nb, K), a.dtype)
    full[:rows] = a
    out = full.reshape(T, ROW_TILE, nb, K // g, g).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(out).reshape(T, nb * K * ROW_TILE)


# ---------------------------------------------------------------- the tiled kinds' common part


class TiledKind(Kind):
    """A row-tiled kind.  Subclasses say how many quant bytes a 32-weight block takes
    (``qbytes``), how many consecutive bytes of a row a lane holds (``lane_bytes``), the dtype of
    the quants, the per-block float arrays (``scales``, one per 256 weights where ``per256``),
    the extra bit plane (``bits``: its array name and (word, bit) index helper) and any other
    arrays (``extra_arrays``), and they repack rows (``repack_rows``)."""
    qbytes = 16
    lane_bytes = 4
    qdtype = np.uint8
    scales: tuple[str, ...] = ("d",)
    per256 = False
    bits: tuple | None = None
    lane_planes: tuple[str, ...] = ("qt",)     # the arrays laid out lane_bytes at a time

    def extra_arrays(self, t, T: int, nb: int) -> dict[str, np.ndarray]:
        """Zeroed arrays besides the quants and scales, for T tiles of nb blocks."""
        return {}

    def repack_rows(self, raw: np.ndarray, t, A: dict[str, np.ndarray], r0: int, r1: int) -> None:
        """Copy raw rows r0..r1-1 (whole tiles) into the arrays A (nogil work: called on worker threads)."""
        raise NotImplementedError

    def pack(self, raw, t, cols, release=None, chunk_bytes=1 << 24) -> Packed:
        return self.pack_stack([(raw, release)], t, cols, chunk_bytes)

    def pack_stack(self, parts, t, cols, chunk_bytes=1 << 24) -> Packed:
        """Each part is repacked straight into its own tiles of the stacked arrays, so no part is
        ever held twice (packed alone, then copied into the stack), when every part but the last
        fills whole tiles; otherwise as ``Kind.pack_stack``."""
        if any(raw.shape[0] % ROW_TILE for raw, _ in parts[:-1]):
            return super().pack_stack(parts, t, cols, chunk_bytes)
        p = Packed(self, t, sum(raw.shape[0] for raw, _ in parts), cols)
        nb = cols // 32
        T = -(-p.rows // ROW_TILE)
        A = p.arrays
        A["qt"] = np.zeros((T, self.qbytes * nb * ROW_TILE), self.qdtype)
        if self.bits is not None:
            A[self.bits[0]] = np.zeros((T, nb * ROW_TILE) if self.has_bits(t) else (1, 0), np.uint32)
        A.update(self.extra_arrays(t, T, nb))
        for k in self.scales:
            A[k] = np.zeros((T, (nb // 8 if self.per256 else nb) * ROW_TILE), np.float32)
        t0 = 0
        for raw, release in parts:
            tiles = -(-raw.shape[0] // ROW_TILE)
            self._repack_chunks(raw, t, {k: a if a.shape[1] == 0 else a[t0:t0 + tiles] for k, a in A.items()},
                                release, chunk_bytes)
            t0 += tiles
        self._halve_scales(p)
        return p

    def _repack_chunks(self, raw, t, A, release, chunk_bytes) -> None:
        """repack_rows over all of raw into A (views of the part's tiles): chunks of whole tiles,
        each split over the worker threads (the loops are nogil), release(r0, r1) after each."""
        rows = raw.shape[0]
        step = max(1, chunk_bytes // max(1, raw.shape[1] * ROW_TILE)) * ROW_TILE
        for c0 in range(0, rows, step):
            c1 = min(rows, c0 + step)
            tiles = -(-(c1 - c0) // ROW_TILE)
            parts = max(1, min(get_num_threads(), (c1 - c0) // 256))
            bounds = (c0 + np.linspace(0, tiles, parts + 1).astype(np.int64) * ROW_TILE).clip(0, c1)
            run_all(lambda a, b: self.repack_rows(raw, t, A, a, b),
                    [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])])
            if release is not None:
                release(c0, c1)

    def has_bits(self, t) -> bool:
        """Type t fills the extra bit plane (the others hold a (1, 0) stand-in)."""
        return True

    def tile_kernel(self, p: Packed):
        """(kernel, arrays): the kind's matvec kernel and p's arrays it takes first, called as
        ``kernel(*arrays, X, tiles, xrow, simd, y)`` (the TILE_ITEMS form)."""
        raise NotImplementedError

    def matvec(self, p: Packed, simd: int = SIMD_BEST):
        kernel, a = self.tile_kernel(p)
        tiles = np.arange(-(-p.rows // ROW_TILE), dtype=np.int64)     # every tile, times the one x
        xrow = np.zeros_like(tiles)
        return lambda x, out: kernel(*a, x.reshape(1, -1), tiles, xrow, simd, out)

    def small_kernel(self, p: Packed):
        """(kernel, arrays): the kind's small-batch kernel and p's arrays it takes first, called as
        ``kernel(*arrays, x, n, t0, t1, out)`` (see small_product), where the kind has one."""
        raise NotImplementedError

    def _small_matmul(self, p: Packed, X, out) -> None:
        """Kind.small_matmul of a kind with a small_kernel (set as small_matmul where the host runs it)."""
        small_product(*self.small_kernel(p), X, out)

    def row_items(self, p: Packed, simd: int = SIMD_BEST):
        """product(act, tiles, r0, r1, yt, out): the kind's multi-row integer product in the
        ROW_ITEMS form, for the kinds where it beats the small-batch float product on batches
        (tools/bench_kernels.py --experts); None for the others."""
        return None

    # the activation forms row_items takes, by their count of int8 terms: the matvec's (2), and 1
    # where the product also takes round_activations1's single term (row_activations(X, 1))
    row_terms: tuple[int, ...] = (2,)

    @property
    def prompt_terms(self) -> int:
        """The int8 activation terms of the kind's prompt rows in a rounded product: PROMPT_TERMS where
        its multi-row product takes them (row_terms), else the matvec's two."""
        return PROMPT_TERMS if PROMPT_TERMS in self.row_terms else 2

    def row_call_rows(self, terms: int) -> int:
        """The widest call of the kind's multi-row product (row_items) on rows of `terms` int8 terms on
        this host: the ``most`` of row_step, the step expert_row_items' cost model counts."""
        return ISUM_ROWS

    def prompt_rows(self, p: Packed, simd: int = SIMD_BEST):
        """Kind.prompt_rows: a kind with a ROW_ITEMS product runs it on the rows rounded to prompt_terms
        terms (each row's bits those of its own call, whatever the batch)."""
        if not self.rows_prompt or self.row_items(p, simd) is None:
            return super().prompt_rows(p, simd)
        return self.rows_by_items(p, simd, terms=self.prompt_terms)

    def row_activations(self, X: np.ndarray, terms: int = 2) -> tuple:
        """X (n, cols) rounded as the kind's matvec rounds each row (terms 2), or to one int8 term per
        32-block (terms 1, round_activations1: kinds with 1 in row_terms), the arrays row_items takes
        (split over the threads for a prompt batch: a parallel launch costs more than a few rows'
        rounding)."""
        return (round_rows_parallel if X.shape[0] > ROW_ITEM_ROWS else round_rows)(X, terms)

    def rows_by_items(self, p: Packed, simd: int = SIMD_BEST, product=None, terms: int = 2):
        """matmul_rows from the kind's ROW_ITEMS product (row_items', or `product` of that form): runs
        of ROW_ITEM_ROWS rows times every tile, runs outermost (a run's activations stay in the cache
        while the tiles pass over them; a tile's rows times the whole batch would read all of a
        prompt's activations once per tile), the rows rounded once to `terms` int8 terms
        (row_activations), by all the threads."""
        product = self.row_items(p, simd) if product is None else product
        T = p.arrays["qt"].shape[0]

        def run(X, out):
            items = expert_row_items(np.array([0, X.shape[0]], np.int64), T, ROW_ITEM_ROWS, get_num_threads())
            product(self.row_activations(X, terms), *items, out)
        return run

    def tile_product(self, p: Packed, simd: int = SIMD_BEST):
        kernel, a = self.tile_kernel(p)
        return lambda X, tiles, xrow, out: kernel(*a, X, tiles, xrow, simd, out)

    def _halve_scales(self, p: Packed) -> None:
        """Store the per-block scales as float16 bits (uint16) when that is lossless (always for
        the legacy types' own fp16 fields, unless -8d / -16d overflows)."""
        halves = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for k in self.scales:
                a = p.arrays[k]
                h = a.astype(np.float16)
                if not np.array_equal(h.astype(np.float32), a):     # inexact, overflow or NaN
                    return
                halves[k] = h.view(np.uint16)
        p.arrays.update(halves)

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """The two int8 terms per 32-block of round_activations (within max|x_block| / 64516 of x)."""
        xq, xr, dx, dr, _ = round_activations(x)
        return _combine([(xq, dx), (xr, dr)])

    def concat(self, packs: "list[Packed]") -> Packed:
        """Whole tiles stack as they are; otherwise every array is re-tiled (row-major copies,
        stacked, tiled again), a part's float32 scales making all of them float32."""
        first = packs[0]
        aligned = all(p.rows % ROW_TILE == 0 for p in packs[:-1])
        out = Packed(self, first.qtype, sum(p.rows for p in packs), first.cols)
        nb = first.cols // 32
        for k in first.arrays:
            parts = [_same_scale_dtypes(p, packs).arrays[k] for p in packs]
            bits = self.bits is not None and k == self.bits[0]
            if bits and parts[0].shape[1] == 0:     # no extra bits: the (1, 0) stand-in
                out.arrays[k] = parts[0]
            elif aligned:                           # whole tiles stack as they are
                out.arrays[k] = np.concatenate(parts, axis=0)
            elif bits:
                index = self.bits[1]
                out.arrays[k] = tile_bits(np.concatenate([untile_bits(a, index, p.rows, nb)
                                                          for a, p in zip(parts, packs)]), index)
            else:
                g = self.lane_bytes if k in self.lane_planes else 1
                units = nb if parts[0].shape[1] >= nb * ROW_TILE else parts[0].shape[1] // ROW_TILE  # per 256
                out.arrays[k] = tile(np.concatenate([untile(a, p.rows, units, g) for a, p in zip(parts, packs)]), g)
        return out


def _same_scale_dtypes(p: Packed, packs: "list[Packed]") -> Packed:
    """p, with its scales as float32 where any of packs keeps float32 scales (else as it is)."""
    keys = [k for k in p.arrays if any(q.arrays[k].dtype != p.arrays[k].dtype for q in packs)]
    if not keys:
        return p
    return Packed(p.kind, p.qtype, p.rows, p.cols, {k: as_f32_scales(a) if k in keys else a
                                                    for k, a in p.arrays.items()})


def _combine(terms) -> np.ndarray:
    """sum of q * d per 32-block over the (q (32 nb,), d (nb,)) terms, in float64."""
    return sum(q.reshape(-1, 32) * d[:, None].astype(np.float64) for q, d in terms).reshape(-1)
