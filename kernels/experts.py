"""Mixture-of-experts kernels: the experts of a 3-D tensor, expert routing, and the products of
tokens with the experts they were routed to (ggml's ``mul_mat_id``).

    E = ExpertWeights(data, qtype, (n_expert, rows, cols))   # the file's 3-D tensor bytes
    ids, w = route(logits, k, GATING_SOFTMAX, True, 0.0)     # (n, k) experts and weights per token
    Y = E.mul_ids(X, ids)                                     # X (n, 1 or k, cols) -> Y (n, k, rows)
    order, bounds, inverse = group_by_expert(ids, n_expert)   # a batch's (token, slot) pairs by expert
    Yg = E.mul_grouped(X2, src, bounds)                       # the same products, rows in that order
    F = E.dequantize(e)                                       # expert e, (rows, cols), exact

A 3-D expert tensor is stored as the file stores it, expert after expert; each expert is
repacked into its type's kind exactly like a 2-D weight (``Weight``), so every type decodes
bit-exactly and multiplies with the same kernels, and the file's bytes are copied once (no
second copy: the loader drops the file pages as each expert is repacked).

Products: a decode step (one token) runs the matvec of each of its k selected experts only,
so a token reads k experts' bytes, not all of them.  A batch groups its (token, slot) pairs by
expert and runs one product per expert that has tokens: for the kinds with a multi-row integer
product in the ROW_ITEMS form (``TiledKind.row_items``: the nibble kinds and Q6_K), every expert's
rows through it in one launch (prompt rows rounded to the kind's prompt_terms: one int8 term for Q4_K
and Q5_K, kinds.tiled.PROMPT_TERMS; other rows, and decode steps, the matvec's bits); for the others
the matvec's integer product (``Weight.matmul_decode``) up to ``MATVEC_MAX_BATCH`` rows, the
small-batch product (each block decoded once for all the rows) up to ``SMALL_BATCH_MAX``, decoded
weight tiles times BLAS above.
Gate and up stacked per expert (``ExpertWeights.concat``) make one product per expert for both.
A prompt's MoE layer keeps its batch grouped from the gate|up product to the weighted sum
(``mul_grouped``, ``combine_grouped``): no product's output moves back to token order between.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .kinds import Packed, kind_of
from .kinds.tiled import ROW_TILE, TiledKind, expert_row_items, small_products, take_rows
from .ops import gated_act_halves
from .quant_matmul import MATVEC_MAX_BATCH, SMALL_BATCH_MAX
from .threads import get_num_threads
from .types import as_type, row_bytes
from .weight import Weight

# gating functions (llama.cpp's llama_expert_gating_func_type, the ones implemented here)
GATING_SOFTMAX = 0            # weights = softmax over all experts, taken at the top k
GATING_SOFTMAX_WEIGHT = 1     # top k of the logits; weights = softmax over those k (gpt-oss)
GATING_NAMES = {GATING_SOFTMAX: "softmax", GATING_SOFTMAX_WEIGHT: "softmax_weight"}
# the smallest weight sum the renormalisation divides by (the smallest normal float16, as llama.cpp)
MIN_WEIGHT_SUM = np.float32(6.103515625e-5)


# Rows per run of a batch's grouped expert products (ROW_ITEMS items, ExpertWeights._grouped_rows): a
# run of 8 rounded rows (8 KB at d 1024 and one int8 term) stays in the L1 cache while each of the expert's
# row tiles passes over it; runs of ROW_ITEM_ROWS (16) ran the kernel 4-9% slower at 512 tokens of the MoE
# shape, 1 thread, one term (Q4_K and Q6_K; two terms no slower at 8; tools/bench_kernels.py --experts).
# At 64 tokens (about 8 rows an expert) Q4_K is level and Q6_K down 0-8% slower: an expert's few rows left
# over past a full run take a second pass over its tiles.
EXPERT_RUN_ROWS = 8


class ExpertWeights:
    """A (n_expert, rows, cols) expert tensor of GGML type ``qtype``: one ``Weight`` per expert.

    Where the type repacks into a tiled kind and rows fill whole row tiles, the experts are one
    stacked packed matrix (``stacked``: expert e's tiles follow expert e-1's, ``tiles`` per expert;
    gate|up stacked per expert), each expert's Weight a view of its tiles; the selected experts'
    tiles are then multiplied in one launch (the kinds' TILE_ITEMS form).  Otherwise ``stacked``
    is None and each expert is its own Weight."""

    __slots__ = ("qtype", "shape", "experts", "stacked", "tiles", "_items", "_row_items", "_decode")

    def __init__(self, data: np.ndarray, qtype, shape, release=None):
        """data: the tensor's raw bytes (expert-major, as GGUF stores a 3-D tensor).  release(r0, r1):
        called once rows r0..r1-1 of the (n_expert * rows, cols) matrix have been copied."""
        t = as_type(qtype)
        if len(tuple(shape)) != 3:
            raise ValueError(f"ExpertWeights needs a 3-D shape (n_expert, rows, cols), got {tuple(shape)}")
        n_expert, rows, cols = (int(s) for s in shape)
        if n_expert < 1:
            raise ValueError(f"{t.name} expert tensor: no experts in shape {tuple(shape)}")
        arr = np.asarray(data)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        flat = arr.reshape(-1).view(np.uint8)
        per = rows * row_bytes(t, cols)
        if flat.size != n_expert * per:
            raise ValueError(f"{t.name} expert tensor of shape {(n_expert, rows, cols)} needs "
                             f"{n_expert * per} bytes, got {flat.size}")
        if _stackable(t, rows):       # the file's bytes are the (n_expert rows, cols) matrix
            self._init_stacked(Weight(flat, t, (n_expert * rows, cols), release).packed, n_expert, (rows,))
            return
        experts = []
        for e in range(n_expert):
            done = None if release is None else (lambda r0, r1, base=e * rows: release(base + r0, base + r1))
            experts.append(Weight(flat[e * per:(e + 1) * per], t, (rows, cols), done))
        self._init(t, experts, None)

    def _init(self, qtype, experts: list[Weight], stacked: Packed | None) -> None:
        self.qtype = qtype
        self.experts = experts
        self.shape = (len(experts), *experts[0].shape)
        self.stacked = stacked
        self.tiles = experts[0].shape[0] // ROW_TILE if stacked is not None else 0
        self._items = None if stacked is None else stacked.kind.tile_product(stacked)
        self._row_items = None if stacked is None else stacked.kind.row_items(stacked)
        self._decode: dict = {}

    def decode_buffers(self, down: "ExpertWeights", k: int) -> "DecodeBuffers":
        """The ``DecodeBuffers`` of decode_step for these gate|up experts with down and top-k k
        (made on first use; a model evaluates one token at a time per layer)."""
        buf = self._decode.get(k)
        if buf is None:
            buf = self._decode[k] = DecodeBuffers(self, down, k)
        return buf

    def _init_stacked(self, stacked: Packed, n_expert: int, splits) -> None:
        """Experts as views of the stacked matrix's tiles (each expert splits into ``splits`` rows)."""
        tiles = stacked.rows // n_expert // ROW_TILE
        views = [Weight.from_packed(expert_tiles(stacked, e * tiles, (e + 1) * tiles), splits) for e in range(n_expert)]
        self._init(stacked.qtype, views, stacked)

    @classmethod
    def concat(cls, parts: "list[ExpertWeights]") -> "ExpertWeights":
        """Per expert, the rows of ``parts`` stacked (gate and up: one product per expert for both)."""
        out = cls.__new__(cls)
        if all(p.stacked is not None for p in parts):
            kind = parts[0].stacked.kind
            stacked = kind.concat([w.packed for ws in zip(*(p.experts for p in parts)) for w in ws])
            out._init_stacked(stacked, parts[0].shape[0], [p.shape[1] for p in parts])
        else:
            out._init(parts[0].qtype, [Weight.concat(list(ws)) for ws in zip(*(p.experts for p in parts))], None)
        return out

    def scratch_bytes(self, n: int) -> int:
        """Bytes of float32 scratch one worker thread keeps for an expert's matmul of up to n rows
        (``Weight.scratch_bytes``; every expert has the same shape)."""
        return self.experts[0].scratch_bytes(n)

    @staticmethod
    def can_concat(parts: "list[ExpertWeights]") -> bool:
        return len({(p.qtype, p.shape[0], p.shape[2]) for p in parts}) == 1

    @property
    def nbytes(self) -> int:
        if self.stacked is not None:
            return self.stacked.nbytes
        return sum(w.nbytes for w in self.experts)

    def __repr__(self) -> str:
        return f"ExpertWeights({self.qtype.name}, {self.shape})"

    def dequantize(self, e: int) -> np.ndarray:
        """Expert e as float32 (rows, cols), exact (bit-identical to kernels.dequantize)."""
        return self.experts[e].dequantize()

    def mul_ids(self, X: np.ndarray, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Y[t, j] = W[ids[t, j]] X[t, j or 0]: X (n, 1, cols) shared by a token's k slots or
        (n, k, cols) one input per slot; ids (n, k) expert ids.  Returns Y (n, k, rows) float32:
        one token is a decode step (its experts' matvecs), several are prompt rows (``mul_grouped``),
        each (token, slot) the same bits whatever the other tokens."""
        n_expert, rows, cols = self.shape
        ids = np.asarray(ids)
        n, k = ids.shape
        if X.ndim != 3 or X.shape[0] != n or X.shape[1] not in (1, k) or X.shape[2] != cols:
            raise ValueError(f"X must have shape ({n}, 1 or {k}, {cols}), got {X.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= n_expert):
            raise IndexError(f"expert id out of range for {n_expert} experts")
        if out is None or not out.flags.c_contiguous:
            res = np.empty((n, k, rows), np.float32)
        else:
            res = out
        X = np.ascontiguousarray(X, dtype=np.float32)
        shared = X.shape[1] == 1
        if n == 1:                                   # a decode step: the k selected experts' matvecs
            self._decode_step(X[0], ids[0], res[0])
        else:
            order, bounds, _ = group_by_expert(ids.astype(np.int64), n_expert)
            src = order // k if shared else order
            res.reshape(n * k, -1)[order] = self.mul_grouped(X.reshape(-1, cols), src, bounds)
        if res is not out and out is not None:
            out[...] = res
        return res

    def mul_grouped(self, X: np.ndarray, src: np.ndarray | None, bounds: np.ndarray,
                    decode: bool = False) -> np.ndarray:
        """A batch already grouped by expert (``group_by_expert``): grouped row i is row src[i] of X
        (m, cols) float32 (src None: row i, X already grouped), rows bounds[e]..bounds[e+1]-1 routed
        to expert e.  Returns Yg (len(src) or m, rows) float32 in the same grouped order, each row
        bit-identical to its expert's product as ``mul_ids`` computes it (the MoE layer keeps its
        batch in this order from the gate|up product to the weighted sum, so no rows move between).
        decode: the rows are decode steps, each rounded as its matvec rounds it (``mul_ids``);
        otherwise prompt rows, rounded to the kind's prompt terms (TiledKind.prompt_terms)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        m = X.shape[0] if src is None else src.size
        if m == 0:
            return np.empty((0, self.shape[1]), np.float32)
        if self._row_items is not None:
            return self._grouped_rows(X, src, bounds, decode)
        return self._grouped(X if src is None else X[src], bounds)

    def mul_items(self, X: np.ndarray, tiles: np.ndarray, xrow: np.ndarray, out: np.ndarray) -> None:
        """The stacked experts' TILE_ITEMS product in one parallel launch (``decode_step``'s two
        products): item i is row tile tiles[i] of the stacked matrix times row xrow[i] of X (m, cols)
        float32, stored at out[ROW_TILE i: ROW_TILE (i + 1)] (out flat float32; ``expert_items``)."""
        self._items(X, tiles, xrow, out)

    def _decode_step(self, X: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
        """out (k, rows) = W[ids[j]] X[j or 0]: with stacked experts, every selected expert's tiles in
        one launch (each tile on one thread, so both threads read near-equal bytes), else one
        matvec per expert."""
        k = ids.size
        if self._items is not None:
            slots = np.arange(k) if X.shape[0] > 1 else np.zeros(k, np.int64)      # X row of each slot
            tiles, xrow = expert_items(ids.astype(np.int64), slots, self.tiles)
            self._items(X, tiles, xrow, out.reshape(-1))
            return
        for j in range(k):
            self.experts[ids[j]].matvec(X[0 if X.shape[0] == 1 else j], out[j])

    def _grouped(self, Xg: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """A grouped batch (``mul_grouped``; Xg (m, cols) grouped by expert): each expert's rows multiplied as
        ``Weight.matmul`` multiplies them (the matvec up to MATVEC_MAX_BATCH rows, the small-batch
        product up to SMALL_BATCH_MAX, tiles and BLAS above), the experts of the first two sizes
        together: one launch for all the matvec rows, one pass of the worker threads for all the
        small-batch products.  Returns Yg (m, rows) in the same order."""
        n_expert = self.shape[0]
        Yg = np.empty((Xg.shape[0], self.shape[1]), np.float32)         # (m, rows)
        counts = np.diff(bounds)
        batched = self._items is not None          # every expert of at most MATVEC_MAX_BATCH rows at once
        vec = [e for e in range(n_expert) if 0 < counts[e] <= MATVEC_MAX_BATCH]
        if batched and vec:
            sel = np.concatenate([np.arange(bounds[e], bounds[e + 1]) for e in vec])
            tiles, xrow = expert_items(np.repeat(np.asarray(vec, np.int64), counts[vec]), np.arange(sel.size), self.tiles)
            Yv = np.empty((sel.size, self.shape[1]), np.float32)
            self._items(np.ascontiguousarray(Xg[sel]), tiles, xrow, Yv.reshape(-1))
            Yg[sel] = Yv
        small = self.experts[0].kind.small_matmul is not None
        groups = []
        for e in range(n_expert):
            a, b = bounds[e], bounds[e + 1]
            if b == a or (batched and b - a <= MATVEC_MAX_BATCH):
                continue
            if small and MATVEC_MAX_BATCH < b - a <= SMALL_BATCH_MAX:
                groups.append((self.experts[e].packed, Xg[a:b], Yg[a:b]))
            else:
                W = self.experts[e]                  # few rows: the matvec's integer product, more: float
                (W.matmul_decode if b - a <= MATVEC_MAX_BATCH else W.matmul)(Xg[a:b], Yg[a:b])
        if groups:
            kind = groups[0][0].kind
            small_products(kind.small_kernel(groups[0][0])[0], [(kind.small_kernel(p)[1], x, y) for p, x, y in groups])
        return Yg

    def _grouped_rows(self, X: np.ndarray, src: np.ndarray | None, bounds: np.ndarray, decode: bool) -> np.ndarray:
        """A grouped batch (``mul_grouped``) of a kind with a multi-row integer product
        (``TiledKind.row_items``): the rows of X rounded once each (prompt rows to the kind's
        prompt_terms, kinds.tiled.PROMPT_TERMS where it takes them, decode steps as the matvec rounds
        them; a token's row shared by its k slots is rounded once, then taken for each), and every
        expert's row tiles times the rows routed to it in one launch (ROW_ITEMS, runs of at most
        EXPERT_RUN_ROWS rows, so the threads get near-equal work however the batch is routed).
        Each row of two terms is bit-identical to its expert's matvec of that input, and every row's
        bits are the same whatever the rest of the batch."""
        kind = self.stacked.kind
        terms = 2 if decode else kind.prompt_terms
        act = kind.row_activations(X, terms)
        if src is not None:
            act = take_rows(act, X.shape[0], src)
        tiles, r0, r1, yt = expert_row_items(bounds, self.tiles, EXPERT_RUN_ROWS, get_num_threads(),
                                             kind.row_call_rows(terms))
        Yg = np.empty((int(bounds[-1]), self.shape[1]), np.float32)     # (m, rows) grouped by expert
        self._row_items(act, tiles, r0, r1, yt, Yg)
        return Yg


@njit(cache=True, nogil=True)
def group_by_expert(ids, n_expert):
    """A batch's (token, slot) pairs grouped by expert, stably (pairs of one expert in pair order):
    ids (n, k) int64 -> order (n k,): the pair p = token k + slot of grouped row i; bounds
    (n_expert + 1,): expert e's grouped rows are bounds[e]..bounds[e+1]-1; inverse (n k,): the
    grouped row of pair p.  (np.argsort(ids.ravel(), kind="stable")'s order, by counting.)"""
    flat = ids.reshape(-1)
    bounds = np.zeros(n_expert + 1, np.int64)
    for p in range(flat.size):
        bounds[flat[p] + 1] += 1
    for e in range(n_expert):
        bounds[e + 1] += bounds[e]
    fill = bounds[:-1].copy()
    order = np.empty(flat.size, np.int64)
    inverse = np.empty(flat.size, np.int64)
    for p in range(flat.size):
        i = fill[flat[p]]
        fill[flat[p]] += 1
        order[i] = p
        inverse[p] = i
    return order, bounds, inverse


@njit(cache=True, nogil=True)
def route(logits, k, gating, norm, scale):
    """The experts and weights of each token, as llama.cpp's build_moe_ffn chooses them.
    logits (n, n_expert) float32 (the router's output, biases added) -> ids (n, k) int64 in
    descending order of the selection score, w (n, k) float32:

    - GATING_SOFTMAX: probabilities p = softmax(logits); the k largest are chosen, their weights p;
    - GATING_SOFTMAX_WEIGHT: the k largest logits are chosen, their weights softmax over those k;
    - norm: the weights divided by their sum (at least MIN_WEIGHT_SUM);
    - scale (0 or 1: none): the weights multiplied by it.

    The probabilities are computed in float64 and rounded once."""
    n = logits.shape[0]
    ids = np.empty((n, k), np.int64)
    w = np.empty((n, k), np.float32)
    route_into(logits, k, gating, norm, scale, ids, w)
    return ids, w


@njit(cache=True, nogil=True)
def route_into(logits, k, gating, norm, scale, ids, w):
    """route's choice of every token of logits (n, n_expert) into ids (n, k), w (n, k).  Each
    token is routed alone: a caller may run token ranges on several threads."""
    for t in range(logits.shape[0]):
        _route_token(logits, t, k, gating, norm, scale, ids, w)


@njit(cache=True, inline="always")
def _top_k(p, k, out):
    """out[:k] = the indices of the k largest p in descending order, ties (and NaNs, which come
    last) in ascending index order: the first k of a stable argsort of -p, found by k passes
    over p instead of a sort (a decode step routes one token over a few dozen experts)."""
    taken = np.zeros(p.size, np.bool_)
    for j in range(k):
        best = -1
        for e in range(p.size):
            if taken[e]:
                continue
            if best < 0 or p[e] > p[best] or (np.isnan(p[best]) and not np.isnan(p[e])):
                best = e
        taken[best] = True
        out[j] = best


@njit(cache=True, inline="always")
def _route_token(logits, t, k, gating, norm, scale, ids, w):
    """route's choice for token t, into ids[t], w[t]."""
    n_expert = logits.shape[1]
    p = np.empty(n_expert, np.float64)
    mx = -np.inf
    for e in range(n_expert):
        mx = max(mx, np.float64(logits[t, e]))
    if gating == GATING_SOFTMAX:
        s = 0.0
        for e in range(n_expert):
            p[e] = np.exp(np.float64(logits[t, e]) - mx)
            s += p[e]
        for e in range(n_expert):
            p[e] /= s
    else:
        for e in range(n_expert):
            p[e] = logits[t, e]
    _top_k(p, k, ids[t])
    sel = np.empty(k, np.float64)
    for j in range(k):
        sel[j] = p[ids[t, j]]
    if gating == GATING_SOFTMAX_WEIGHT:
        m = sel[0]
        s = 0.0
        for j in range(k):
            sel[j] = np.exp(sel[j] - m)
            s += sel[j]
        for j in range(k):
            sel[j] /= s
    if norm:
        s = 0.0
        for j in range(k):
            s += sel[j]
        s = max(s, np.float64(MIN_WEIGHT_SUM))
        for j in range(k):
            sel[j] /= s
    for j in range(k):
        v = sel[j] * scale if scale != 0.0 and scale != 1.0 else sel[j]
        w[t, j] = np.float32(v)


@njit(cache=True, inline="always")
def _combine_token(Y2, rows, w, bias, ids, has_bias, t, acc, out):
    """out[t] = sum_j w[t, j] * (Y2[rows[t k + j]] + bias[ids[t, j]]), accumulated in float32 in
    slot order (as ggml adds the views): token t's weighted sum of its k expert outputs, Y2 (P, d).
    Slot by slot over the whole row in acc (d,) float32 scratch (contiguous, so the inner loop
    vectorizes whatever out's layout), each element's sum in slot order."""
    k = ids.shape[1]
    acc[:] = 0
    for j in range(k):
        y = Y2[rows[t * k + j]]
        wj = w[t, j]
        if has_bias:
            b = bias[ids[t, j]]
            for i in range(acc.shape[0]):
                acc[i] += wj * (y[i] + b[i])
        else:
            for i in range(acc.shape[0]):
                acc[i] += wj * y[i]
    out[t, :] = acc


@njit(cache=True, nogil=True)
def combine(Y, w, bias, ids, has_bias, out):
    """out[t] = sum_j w[t, j] * (Y[t, j] + bias[ids[t, j]]): the weighted sum of a token's k expert
    outputs, Y (n, k, d), accumulated in float32 in slot order (as ggml adds the views)."""
    n, k, d = Y.shape
    rows = np.arange(n * k)
    acc = np.empty(d, np.float32)
    for t in range(n):
        _combine_token(Y.reshape(n * k, d), rows, w, bias, ids, has_bias, t, acc, out)


@njit(cache=True, nogil=True)
def combine_grouped(Yg, inverse, w, bias, ids, has_bias, out):
    """combine of expert outputs in grouped order (``group_by_expert``): Yg (n k, d), the output of
    pair p = token k + slot at row inverse[p]; each token's sum bit-identical to combine's.  Serial
    and nogil: a caller may run token ranges on several threads (ids, w, out cut to the range's
    tokens, inverse to its pairs)."""
    acc = np.empty(Yg.shape[1], np.float32)
    for t in range(ids.shape[0]):
        _combine_token(Yg, inverse, w, bias, ids, has_bias, t, acc, out)


@njit(cache=True, nogil=True)
def add_expert_bias(Y, bias, ids, c0):
    """Y[t, j, c0:c0+m] += bias[ids[t, j]]: per-expert biases (n_expert, m) on expert outputs (n, k, >= c0+m)."""
    n, k, _ = Y.shape
    m = bias.shape[1]
    for t in range(n):
        for j in range(k):
            b = bias[ids[t, j]]
            for i in range(m):
                Y[t, j, c0 + i] += b[i]


# gpt-oss's clamped SwiGLU (llama.cpp's LLM_FFN_SWIGLU_OAI_MOE constants)
OAI_ALPHA = np.float32(1.702)
OAI_LIMIT = np.float32(7.0)


@njit(cache=True, nogil=True)
def swiglu_oai(gate, up, out):
    """out = g * sigmoid(1.702 g) * (u + 1) with g = min(gate, 7) and u = clamp(up, -7, 7), in
    float32 as ggml computes it.  gate, up, out (m, ff)."""
    m, ff = gate.shape
    for r in range(m):
        for i in range(ff):
            g = min(gate[r, i], OAI_LIMIT)
            u = min(max(up[r, i], -OAI_LIMIT), OAI_LIMIT)
            out[r, i] = (g / (np.float32(1.0) + np.exp(OAI_ALPHA * (-g)))) * (u + np.float32(1.0))


# ---------------------------------------------------------------- a decode step, fused


@njit(cache=True, nogil=True)
def decode_route(logits, bias, has_bias, k, gating, norm, scale, gu_tiles, dn_tiles, ids, w, gu_t, gu_x, dn_t, dn_x):
    """The routing of one token and the work items of its two expert products, in one call:
    logits (E,) float32 [+ bias (E,)] -> ids (k,) int64, w (k,) float32 as ``route`` gives them
    (the biased logits rounded to float32 first, as the numpy sum did), then the TILE_ITEMS of
    gate|up (every tile of expert ids[j], all times the one input row: xrow 0) into gu_t, gu_x and
    of down (every tile of expert ids[j] times activation row j) into dn_t, dn_x, each slot-major
    (k * tiles,) int64.  Everything is written into the caller's buffers (``DecodeBuffers``):
    returning new arrays to Python costs more than the routing itself."""
    E = logits.shape[0]
    lg = np.empty((1, E), np.float32)
    for e in range(E):
        lg[0, e] = logits[e] + bias[e] if has_bias else logits[e]
    _route_token(lg, 0, k, gating, norm, scale, ids.reshape(1, k), w.reshape(1, k))
    _expert_items_into(ids, np.zeros(k, np.int64), gu_tiles, gu_t, gu_x)
    _expert_items_into(ids, np.arange(k), dn_tiles, dn_t, dn_x)


@njit(cache=True, nogil=True)
def expert_act(gu, ids, gate_b, up_b, has_bias, oai, out):
    """The k selected experts' activations: gu (k, 2 ff) = [gate | up] of each slot (the per-expert
    biases gate_b, up_b (E, ff) added in place first where has_bias) -> out (k, ff) = SiLU(gate) up,
    or gpt-oss's clamped SwiGLU where oai; the same float32 operations as add_expert_bias, then
    ops.gated_act_halves or swiglu_oai, so the values are bit-identical to those calls'."""
    k = gu.shape[0]
    ff = out.shape[1]
    if has_bias:
        gu3 = gu.reshape(1, k, 2 * ff)
        add_expert_bias(gu3, gate_b, ids.reshape(1, k), 0)
        add_expert_bias(gu3, up_b, ids.reshape(1, k), ff)
    if oai:
        swiglu_oai(gu[:, :ff], gu[:, ff:], out)
    else:
        gated_act_halves(gu, False, out)


class DecodeBuffers:
    """decode_step's buffers for one expert layer and top-k, made once and reused every token:
    the routing (ids, w), both products' work items and their outputs."""

    __slots__ = ("ids", "w", "gu_t", "gu_x", "dn_t", "dn_x", "gu", "act", "Y")

    def __init__(self, gate_up: ExpertWeights, down: ExpertWeights, k: int):
        ff, d = down.shape[2], down.shape[1]
        self.ids = np.empty(k, np.int64)                       # (k,) selected experts
        self.w = np.empty(k, np.float32)                       # (k,) their weights
        self.gu_t, self.gu_x = (np.empty(k * gate_up.tiles, np.int64) for _ in range(2))
        self.dn_t, self.dn_x = (np.empty(k * down.tiles, np.int64) for _ in range(2))
        self.gu = np.empty((k, 2 * ff), np.float32)            # (k, 2 ff) [gate | up] per slot
        self.act = np.empty((k, ff), np.float32)               # (k, ff)
        self.Y = np.empty((k, d), np.float32)                  # (k, d)


def decode_step(gate_up: ExpertWeights, down: ExpertWeights, x: np.ndarray, logits: np.ndarray, k: int,
                gating: int, norm: bool, scale, oai: bool, biases, out: np.ndarray) -> None:
    """A mixture-of-experts layer for one token, as ``route``, ``ExpertWeights.mul_ids`` of gate|up,
    the activation, mul_ids of down and ``combine`` compute it (bit-identical), in five kernel
    calls with no numpy work between them: the routing with both products' work items
    (decode_route), the k experts' gate|up tiles in one parallel loop, their activations
    (expert_act), their down tiles in one parallel loop, the weighted sum (combine), all into
    the layer's ``DecodeBuffers`` (kept on gate_up, one per k).  Both
    expert tensors must be stacked (``fused_decode``).  x (d,) float32; logits (E,) float32;
    biases: None or (router (E,), gate (E, ff), up (E, ff), down (E, d)); out (d,) float32."""
    rb, gb, ub, db = (_EMPTY1, _EMPTY2, _EMPTY2, _EMPTY2) if biases is None else biases
    has_bias = biases is not None
    buf = gate_up.decode_buffers(down, k)
    ids, w = buf.ids, buf.w
    decode_route(logits, rb, has_bias, k, gating, norm, scale, gate_up.tiles, down.tiles,
                 ids, w, buf.gu_t, buf.gu_x, buf.dn_t, buf.dn_x)
    gate_up.mul_items(x.reshape(1, -1), buf.gu_t, buf.gu_x, buf.gu.reshape(-1))
    expert_act(buf.gu, ids, gb, ub, has_bias, oai, buf.act)
    down.mul_items(buf.act, buf.dn_t, buf.dn_x, buf.Y.reshape(-1))
    combine(buf.Y.reshape(1, k, -1), w.reshape(1, k), db, ids.reshape(1, k), has_bias, out.reshape(1, -1))


def fused_decode(gate_up: list, down: ExpertWeights) -> bool:
    """decode_step serves these expert tensors: gate and up stacked into one, both stacked tiled matrices."""
    return len(gate_up) == 1 and gate_up[0]._items is not None and down._items is not None


_EMPTY1 = np.zeros(1, np.float32)
_EMPTY2 = np.zeros((1, 1), np.float32)


def _stackable(t, rows: int) -> bool:
    """Experts of type t with this many rows stack into one tiled matrix (whole tiles each)."""
    return rows % ROW_TILE == 0 and isinstance(kind_of(t), TiledKind)


def expert_tiles(p: Packed, t0: int, t1: int) -> Packed:
    """Row tiles t0..t1-1 of a tiled packed matrix, as a view (its (1, 0) stand-in arrays as they are)."""
    T = p.arrays["qt"].shape[0]
    return Packed(p.kind, p.qtype, (t1 - t0) * ROW_TILE, p.cols,
                  {k: a[t0:t1] if a.shape[0] == T and a.shape[1] > 0 else a for k, a in p.arrays.items()})


@njit(cache=True, nogil=True)
def expert_items(experts, xrows, tiles):
    """TILE_ITEMS for inputs routed to experts of a stacked matrix (tiles per expert): every tile of
    expert experts[r] times X row xrows[r], for each r.  -> (tiles, xrow) int64, (len(experts) tiles,)
    each, r-major (so input r's outputs are row r of a (len(experts), rows) result)."""
    m = experts.size
    t = np.empty(m * tiles, np.int64)
    x = np.empty(m * tiles, np.int64)
    _expert_items_into(experts, xrows, tiles, t, x)
    return t, x


@njit(cache=True, inline="always")
def _expert_items_into(experts, xrows, tiles, t, x):
    """expert_items into t, x (len(experts) tiles,) int64."""
    for r in range(experts.size):
        for i in range(tiles):
            t[r * tiles + i] = experts[r] * tiles + i
            x[r * tiles + i] = xrows[r]
