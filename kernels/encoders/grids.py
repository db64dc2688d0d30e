"""The i-quant lattice search structures, as ggml's iq2xs_init_impl / iq3xs_init_impl build them.

For each grid: ``pos`` (n_grid, group) int8, the grid points as odd integers
2*l + 1 (l the level index of each coordinate); ``kmap`` int32 over every
possible group of level indices (2 bits per coordinate for the 8-wide grids, 3
bits for the 4-wide ones): the grid index when the point is on the grid, else
-(offset + 1) where ``neigh[offset]`` is the count of neighbours and the
following entries are their grid indices: every grid point whose squared
distance is among the ``nwant`` smallest distinct distances, ordered by
(distance, index).

The grids themselves come from kernels.iquant_tables (their decoded byte
values map one-to-one, in order, to the level indices).  Everything is
built once per process, on first use.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .. import iquant_tables as T

_lock = threading.Lock()
_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

# name -> (decoded grid, bits per coordinate, kmap size, nwant)
_SPECS = {
    "iq2xxs": (lambda: T.iq2xxs_grid_u8, 2, 43692, 2),
    "iq2xs": (lambda: T.iq2xs_grid_u8, 2, 43692, 2),
    "iq2s": (lambda: T.iq2s_grid_u8, 2, 43692, 1),
    "iq1s": (lambda: T.iq1s_grid_i8, 2, 43692, 3),
    "iq3xxs": (lambda: T.iq3xxs_grid_u8, 3, 4096, 2),
    "iq3s": (lambda: T.iq3s_grid_u8, 3, 4096, 3),
}


@njit(cache=True, error_model="numpy")
def _neighbour_row(i, dtab, bits, nwant, d2, out, write_at):
    """Neighbours of the off-grid point with level code i; returns their count.

    dtab[k, l, j] = (pos[j, k] - (2l + 1))^2.  When write_at >= 0 the indices are
    written to out[write_at:], ordered by (distance, grid index)."""
    group, nlev, n_grid = dtab.shape
    mask = (1 << bits) - 1
    d2[:] = 0
    for k in range(group):
        row = dtab[k, (i >> (bits * k)) & mask]
        for j in range(n_grid):
            d2[j] += row[j]
    # the nwant smallest distinct distances, ascending
    big = np.iinfo(np.int32).max
    best = np.full(nwant, big, np.int32)
    for j in range(n_grid):
        v = d2[j]
        if v >= best[nwant - 1]:
            continue
        for t in range(nwant):
            if v == best[t]:
                break
            if v < best[t]:
                for u in range(nwant - 1, t, -1):
                    best[u] = best[u - 1]
                best[t] = v
                break
    n = 0
    for t in range(nwant):
        if best[t] == big:
            break
        for j in range(n_grid):
            if d2[j] == best[t]:
                if write_at >= 0:
                    out[write_at + n] = j
                n += 1
    return n


@njit(cache=True, error_model="numpy")
def _prepare(pos, bits, kmap_size):
    """Squared coordinate distances dtab[k, l, j] and the on-grid part of kmap."""
    n_grid, group = pos.shape
    nlev = 1 << bits
    dtab = np.empty((group, nlev, n_grid), np.int32)
    for k in range(group):
        for l in range(nlev):
            for j in range(n_grid):
                dd = np.int32(pos[j, k]) - (2 * l + 1)
                dtab[k, l, j] = dd * dd
    kmap = np.full(kmap_size, -1, np.int32)
    for j in range(n_grid):
        idx = 0
        for k in range(group):
            idx |= ((pos[j, k] - 1) // 2) << (bits * k)
        kmap[idx] = j
    return dtab, kmap


@njit(cache=True, nogil=True, error_model="numpy")
def _count_range(dtab, kmap, bits, nwant, counts, i0, i1):
    d2 = np.empty(dtab.shape[2], np.int32)
    dummy = np.zeros(1, np.uint16)
    for i in range(i0, i1):
        if kmap[i] < 0:
            counts[i] = _neighbour_row(i, dtab, bits, nwant, d2, dummy, -1)


@njit(cache=True, nogil=True, error_model="numpy")
def _fill_range(dtab, kmap, bits, nwant, offsets, neigh, i0, i1):
    d2 = np.empty(dtab.shape[2], np.int32)
    for i in range(i0, i1):
        if kmap[i] < 0:
            o = offsets[i]
            neigh[o] = _neighbour_row(i, dtab, bits, nwant, d2, neigh, o + 1)
            kmap[i] = -(o + 1)


def _parallel(fn, n, *args):
    from ..threads import get_num_threads, pool
    chunks = max(1, 4 * get_num_threads())
    bounds = np.linspace(0, n, chunks + 1).astype(np.int64)
    for f in [pool().submit(fn, *args, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
        f.result()


def _build(pos, bits, kmap_size, nwant):
    dtab, kmap = _prepare(pos, bits, kmap_size)
    counts = np.zeros(kmap_size, np.int64)
    _parallel(_count_range, kmap_size, dtab, kmap, bits, nwant, counts)
    off_grid = kmap < 0
    sizes = np.where(off_grid, counts + 1, 0)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    neigh = np.zeros(int(sizes.sum()), np.uint16)
    _parallel(_fill_range, kmap_size, dtab, kmap, bits, nwant, offsets, neigh)
    return kmap, neigh


def grid_positions(name: str) -> np.ndarray:
    """(n_grid, group) int8 grid points as 2*level + 1."""
    grid = _SPECS[name][0]()
    levels = np.unique(grid)
    return (2 * np.searchsorted(levels, grid) + 1).astype(np.int8)


def get(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pos int8 (n_grid, group), kmap int32, neigh uint16) for one grid, built on first use."""
    hit = _cache.get(name)
    if hit is not None:
        return hit
    with _lock:
        hit = _cache.get(name)
        if hit is None:
            _, bits, kmap_size, nwant = _SPECS[name]
            pos = grid_positions(name)
            kmap, neigh = _build(pos, bits, kmap_size, nwant)
            hit = (pos, kmap, neigh)
            _cache[name] = hit
    return hit
