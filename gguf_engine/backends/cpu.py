"""CPU backend: NumPy arrays, the Numba kernels of ``kernels``, BLAS for batched attention."""
from __future__ import annotations

import itertools

import numpy as np

from kernels import attention_kv, ops
from kernels import experts as moe_kernels
from kernels.experts import ExpertWeights
from kernels.threads import run_all, split
from kernels.weight import Weight, WeightGroup

from ..model.kv_cache import KVCache, cache_rows
from .base import Backend, ExpertFFN, Routing

_EMPTY2 = np.zeros((1, 1), dtype=np.float32)
_EMPTY1 = np.zeros(1, dtype=np.float32)

# below this many new tokens attention runs in the fused kernel; above it through BLAS
BLAS_ATTENTION_MIN_TOKENS = 8
# queries per BLAS attention block (a block multiplies only the keys its last query sees)
ATTENTION_QUERY_BLOCK = 128
# below this many multiply-adds (tokens x heads x keys x head size) attention stays on one thread
PARALLEL_ATTENTION_MIN_WORK = 1 << 20
# from this many tokens the per-token kernels (norms, q/k/v preparation, gated activation) share
# the tokens among the threads
PARALLEL_ROWS_MIN_TOKENS = 16


def _runs(items: list, key) -> list[list]:
    """items cut into runs of consecutive items with equal key(item)."""
    runs: list[list] = []
    for it in items:
        if runs and key(runs[-1][0]) == key(it):
            runs[-1].append(it)
        else:
            runs.append([it])
    return runs


def _unrotate_values(out3, v_cache) -> None:
    """Values stored rotated (a cache type with a Hadamard rotation): rotate the attention output back."""
    rot_v = getattr(v_cache, "rot", 0)
    if rot_v:
        attention_kv.hadamard_rows(out3, rot_v)


class CPUBackend(Backend):
    name = "CPU"
    xp = np
    copies_weights = True      # kernels.Weight repacks the tensor bytes; it keeps no view of the file
    weight_buffer_name = "CPU_REPACK"

    def __init__(self, n_threads: int | None = None):
        self.set_threads(n_threads)

    def set_threads(self, n_threads: int | None) -> None:
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        n = limit if not n_threads or n_threads <= 0 else min(int(n_threads), limit)
        numba.set_num_threads(n)
        self.n_threads = n

    def scope(self):
        """numpy's BLAS on one thread while the model runs: the kernels bring their own threads."""
        from kernels.threads import single_threaded_blas
        return single_threaded_blas()

    # --- memory -------------------------------------------------------------------------
    def upload_weight(self, tensor, release=None):
        """Quantized (or float) tensor -> kernels.Weight, repacked for the matvec/matmul kernels."""
        return Weight(tensor.raw, tensor.type, tensor.shape, release)

    def upload_experts(self, tensor, release=None):
        """(n_expert, rows, cols) tensor -> kernels.ExpertWeights, each expert repacked like a Weight."""
        return ExpertWeights(tensor.raw, tensor.type, tensor.shape, release)

    def fuse(self, weights):
        """Stack runs of consecutive weights of one type and row length (Weight.concat; expert
        tensors per expert, ExpertWeights.concat)."""
        W = ExpertWeights if isinstance(weights[0], ExpertWeights) else Weight
        key = lambda w: (w.qtype, *w.shape[:-2], w.shape[-1])      # noqa: E731  type, [experts,] row length
        fused = [g[0] if len(g) == 1 else W.concat(g) for g in _runs(weights, key)]
        return fused if W is ExpertWeights else WeightGroup(fused)

    def upload_fused(self, tensors, releases):
        """Runs of consecutive tensors of one type and row length, each repacked straight into its
        place in one stacked Weight (Weight.stack: the same weights as fuse of their uploads)."""
        pairs = list(zip(tensors, releases))
        return WeightGroup([Weight.stack([(t.raw, t.shape[0], r) for t, r in g], g[0][0].type, g[0][0].shape[1])
                            for g in _runs(pairs, lambda tr: (tr[0].type, tr[0].shape[1]))])

    def upload_array(self, arr):
        return np.array(arr, dtype=np.float32, order="C", copy=True)   # never a view of the file

    def scratch_bytes(self, weights, n, n_keys, config):
        """Each kernel thread's matmul tile buffers (kept once grown), plus the batched
        attention's float32 keys and values (per kv head) and each worker's queries, scores and
        their product (``_attention_blas``)."""
        per_thread = max((w.scratch_bytes(n) for w in weights), default=0)
        total = self.n_threads * per_thread
        if n >= BLAS_ATTENTION_MIN_TOKENS:
            c = config
            rows = min(n, ATTENTION_QUERY_BLOCK) * (c.n_head // c.n_head_kv)     # one item's query rows
            workers = min(self.n_threads, -(-n // ATTENTION_QUERY_BLOCK) * c.n_head_kv)
            total += 4 * (2 * c.n_head_kv * n_keys * c.head_dim + workers * rows * (n_keys + 2 * c.head_dim))
        return total

    def kv_cache(self, n_layer, n_ctx, n_head_kv, head_dim, cache_type):
        return KVCache(n_layer, n_ctx, n_head_kv, head_dim, cache_type, xp=np)

    # --- compute ------------------------------------------------------------------------
    def embed(self, w, ids):
        return np.ascontiguousarray(w.rows(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def linear(self, w, x, out=None, decode=None, rounded=False):
        """Decode-step rows through Weight.matmul_decode (one row: the matvec), prompt rows
        through Weight.matmul (with its rounded; see Backend.linear)."""
        n = x.shape[0]
        if decode is None:
            decode = 1 if n == 1 else 0
        if decode == n == 1:
            return w.matvec(x[0], None if out is None else out[0]).reshape(1, -1)
        if out is None:
            out = np.empty((n, w.shape[0]), np.float32)
        if decode:
            w.matmul_decode(x[:decode], out[:decode])
        if decode < n:
            w.matmul(x[decode:], out[decode:], rounded=rounded)
        return out

    def linear_fused(self, ws, x, out=None, decode=None, rounded=False):
        """Each weight's product written straight into its columns of out (n, sum of out); a decode
        step's row through the group's matvec (``WeightGroup``: one launch where its kinds have a
        joint kernel)."""
        if len(ws) == 1:
            return self.linear(ws[0], x, out, decode, rounded)
        if x.shape[0] == 1 and decode != 0 and isinstance(ws, WeightGroup):    # a decode step's row
            if out is None:
                out = np.empty((1, ws.rows), np.float32)
            if (out[0].flags.c_contiguous and x.dtype == np.float32 and x[0].flags.c_contiguous
                    and x.shape[1] == ws[0].shape[1]):
                ws.matvec(x[0], out[0])
                return out
        if out is None:
            out = np.empty((x.shape[0], sum(w.shape[0] for w in ws)), np.float32)
        c0 = 0
        for w in ws:
            c1 = c0 + w.shape[0]
            self.linear(w, x, out[:, c0:c1], decode, rounded)
            c0 = c1
        return out

    def rms_norm(self, x, w, eps, out):
        ops.rms_norm(x, w, eps, out)

    def _by_rows(self, n: int, call) -> None:
        """call(a, b) over token ranges covering 0..n: on the kernel threads' shared pool for a
        prompt batch (the same pool as the matmul's, so no other thread pool spins beside it),
        on the calling thread for a few tokens.  Each token's result is the same either way."""
        run_all(call, split(0, n, self.n_threads if n >= PARALLEL_ROWS_MIN_TOKENS else 1))

    def add_rms_norm(self, x, delta, post_w, w, eps, out):
        post = _EMPTY1 if post_w is None else post_w
        if x.shape[0] == 1:                      # a decode step: straight to the kernel
            ops.add_rms_norm(x, delta, post, post_w is not None, w, eps, out)
            return
        self._by_rows(x.shape[0], lambda a, b: ops.add_rms_norm(x[a:b], delta[a:b], post, post_w is not None,
                                                                  w, eps, out[a:b]))

    def qkv_prepare(self, q3, k3, v3, bq, bk, bv, q_norm, k_norm, eps, rope, pos0, neox, k_cache, v_cache):
        has_bias = bq is not None
        has_norm = q_norm is not None
        if not has_bias:
            bq = bk = bv = _EMPTY2
        if not has_norm:
            q_norm = k_norm = _EMPTY1
        if _float_pair(k_cache, v_cache):        # f32 / f16 arrays: the rows stored by the same kernel
            if k_cache.dtype == np.float16:
                k_cache, v_cache = k_cache.view(np.uint16), v_cache.view(np.uint16)

            def prepare(a, b):
                ops.qkv_prepare(q3[a:b], k3[a:b], v3[a:b], bq, bk, bv, has_bias, q_norm, k_norm, has_norm, eps,
                                rope[0], rope[1], pos0 + a, neox, k_cache, v_cache)
        else:                                    # a block-format side: RoPE, rotations, then encode the rows
            (kr, tk), (vr, tv) = cache_rows(k_cache), cache_rows(v_cache)
            rot_k, rot_v = getattr(k_cache, "rot", 0), getattr(v_cache, "rot", 0)

            def prepare(a, b):
                ops.qkv_rotate(q3[a:b], k3[a:b], v3[a:b], bq, bk, bv, has_bias, q_norm, k_norm, has_norm, eps,
                               rope[0], rope[1], pos0 + a, neox)
                if rot_k:                        # q.k is unchanged: both rotated
                    attention_kv.hadamard_rows(q3[a:b], rot_k)
                    attention_kv.hadamard_rows(k3[a:b], rot_k)
                if rot_v:                        # undone on the attention output
                    attention_kv.hadamard_rows(v3[a:b], rot_v)
                attention_kv.store_rows(k3[a:b], v3[a:b], tk, tv, kr, vr, pos0 + a)
        if q3.shape[0] == 1:                     # a decode step: straight to the kernel
            prepare(0, 1)
            return
        self._by_rows(q3.shape[0], prepare)

    def attention(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3, sinks=None):
        if sinks is not None and not _float_pair(k_cache, v_cache):
            raise ValueError("attention sinks need an f32 or f16 KV cache (one type for K and V); use -ctk/-ctv f16")
        self._attention(q3, k_cache, v_cache, pos0, scale, window, softcap, out3)
        if sinks is not None:                    # rescale each head's output by its share beside the sink
            kc = k_cache.view(np.uint16) if k_cache.dtype == np.float16 else k_cache
            ops.attention_sink_rescale(q3, kc, pos0, scale, window, softcap, sinks, ops.F16_TABLE, out3)
        _unrotate_values(out3, v_cache)

    def attention_steps(self, q3, k_cache, v_cache, base, pos, n_ctx_seq, scale, window, softcap, out3, sinks=None):
        """Every cache type: one kernel call, threads over (sequence, chunk of keys), each sequence's
        result exactly that of its lone attention (attention_kv.attention_steps).  With sinks,
        sequence by sequence."""
        if sinks is not None:
            super().attention_steps(q3, k_cache, v_cache, base, pos, n_ctx_seq, scale, window, softcap, out3, sinks)
            return
        n_keys = int(np.minimum(pos + 1, window).sum()) if window > 0 else int((pos + 1).sum())
        H, hd = q3.shape[1], q3.shape[2]
        kernel = (attention_kv.attention_steps if H * n_keys * hd >= PARALLEL_ATTENTION_MIN_WORK
                  else attention_kv.attention_steps_serial)
        kernel(q3, *cache_rows(k_cache), *cache_rows(v_cache), base, pos, scale, window, softcap, out3)
        _unrotate_values(out3, v_cache)

    def _attention(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3):
        n, H, hd = q3.shape
        if n < BLAS_ATTENTION_MIN_TOKENS:
            n_keys = pos0 + n if window <= 0 else min(pos0 + n, window)
            parallel = n * H * n_keys * hd >= PARALLEL_ATTENTION_MIN_WORK
            # every cache type, f32 and f16 as their bytes: rows decoded as they are read, the keys
            # split into chunks over the threads
            kernel = attention_kv.attention_rows if parallel else attention_kv.attention_rows_serial
            kernel(q3, *cache_rows(k_cache), *cache_rows(v_cache), pos0, scale, window, softcap, out3)
            return
        self._attention_blas(q3, k_cache, v_cache, pos0, scale, window, softcap, out3)

    def _attention_blas(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3):
        """Batched attention through BLAS.  The work is cut into (query block, kv head) items;
        a block of ATTENTION_QUERY_BLOCK queries multiplies only the keys its queries can see
        (causal: about half of the full square for a long prompt), and the items are shared
        among the kernel threads, each running single-threaded GEMMs (numpy releases the GIL).
        Every item is computed the same way whatever the thread count.  Every cache type is
        first decoded to float32 once per call (each kv head's visible rows, contiguous), shared
        among the same threads; the glue between the two products (gathering a block's queries;
        scaling, masking and softmax of the scores; scattering the outputs) is nogil kernels."""
        n, H, hd = q3.shape
        Hkv = k_cache.shape[1]
        lo = max(0, pos0 - window + 1) if window > 0 else 0     # the first key any query sees
        (kr, tk), (vr, tv) = cache_rows(k_cache), cache_rows(v_cache)
        Ks = np.empty((Hkv, pos0 + n - lo, hd), np.float32)      # (Hkv, nk, hd): keys lo..pos0+n-1
        Vs = np.empty_like(Ks)
        parts = self.n_threads

        def load(part):
            attention_kv.load_heads(tk, kr, lo, pos0 + n, Ks, part, parts)
            attention_kv.load_heads(tv, vr, lo, pos0 + n, Vs, part, parts)

        run_all(load, [(i,) for i in range(parts)])
        B = ATTENTION_QUERY_BLOCK
        items = [(a, min(n, a + B), g) for a in range(0, n, B) for g in range(Hkv)]
        items.sort(key=lambda it: -it[1])                        # the longest (latest) blocks first
        taken = itertools.count()                                # each worker takes the next item left

        def run():
            Q = np.empty((min(n, B) * (H // Hkv), hd), np.float32)   # a block's queries, rows (token, head)
            while (i := next(taken)) < len(items):
                a, b, g = items[i]
                self._attention_item(q3, Ks[g], Vs[g], lo, a, b, g, H // Hkv, pos0, scale, window, softcap,
                                     Q, out3)

        workers = max(1, min(self.n_threads, len(items)))
        run_all(run, [()] * workers)

    @staticmethod
    def _attention_item(q3, K, V, lo, a, b, g, G, pos0, scale, window, softcap, Q, out3):
        """Queries a..b-1 of kv head g's G query heads over the keys they see; K, V: that kv
        head's keys and values (nk, hd) of positions lo..; Q: scratch (>= (b - a) G, hd)."""
        p0 = pos0 + a                                            # the block's first query position
        key0 = max(lo, p0 - window + 1) if window > 0 else lo   # the first key it sees
        key1 = pos0 + b                                          # one past the last key it sees
        Q = Q[:(b - a) * G]
        ops.gather_heads(q3, a, b, g * G, G, Q)
        S = Q @ K[key0 - lo:key1 - lo].T                         # ((b-a) G, key1 - key0)
        ops.masked_softmax(S, scale, G, p0, key0, window, softcap)
        ops.scatter_heads(S @ V[key0 - lo:key1 - lo], a, b, g * G, G, out3)

    def gated_act(self, gate, up, gelu, out):
        """A fused gate|up output's two halves (the model's case) through ops.gated_act_halves,
        whose row loops vectorize; other operands through ops.gated_act (the same values)."""
        if gate.shape[0] == 1:
            ops.gated_act_row(gate[0], up[0], gelu, out[0])
            return
        gu = _fused_halves(gate, up)
        if gu is None:
            self._by_rows(gate.shape[0], lambda a, b: ops.gated_act(gate[a:b], up[a:b], gelu, out[a:b]))
        else:
            self._by_rows(gate.shape[0], lambda a, b: ops.gated_act_halves(gu[a:b], gelu, out[a:b]))

    def moe(self, x, logits, experts: ExpertFFN, routing: Routing, out=None, observe=None, decode=None):
        """Route (kernels.experts.route_into), then the selected experts' products (ExpertWeights.mul_ids:
        only the chosen experts' rows are read; a batch is grouped by expert), the activation and
        the weighted sum (kernels.experts.combine_grouped); the routing and the sum on the threads'
        token ranges.  A decode step of stacked experts runs all of
        that as kernels.experts.decode_step (bit-identical, five kernel calls).  Decode steps and
        prompt rows round the expert products' activations as ExpertWeights.mul_grouped says
        (``decode``); a pass holding both runs its decode steps, then its prompt rows, as two
        batches, so each row gets the bits it gets alone."""
        n, d = x.shape
        decode = (1 if n == 1 else 0) if decode is None else decode
        if 0 < decode < n:
            if out is None:
                out = np.empty((n, d), np.float32)
            for a, b, dec in ((0, decode, decode), (decode, n, 0)):
                self.moe(x[a:b], logits[a:b], experts, routing, out[a:b], observe, dec)
            return out
        gating = moe_kernels.GATING_SOFTMAX if routing.gating == "softmax" else moe_kernels.GATING_SOFTMAX_WEIGHT
        biases = (experts.router_bias, experts.gate_bias, experts.up_bias, experts.down_bias)
        all_or_none = len({b is None for b in biases}) == 1
        if n == 1 and observe is None and all_or_none and moe_kernels.fused_decode(experts.gate_up, experts.down):
            if out is None:
                out = np.empty((1, d), np.float32)
            biases = None if experts.router_bias is None else biases
            moe_kernels.decode_step(experts.gate_up[0], experts.down, x[0], logits[0], routing.n_used, gating,
                                    routing.norm, np.float32(routing.scale), routing.oai_swiglu, biases, out[0])
            return out
        if experts.router_bias is not None:
            logits = logits + experts.router_bias                           # (n, E)
        k = routing.n_used
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        ids, w = np.empty((n, k), np.int64), np.empty((n, k), np.float32)   # (n, k) each
        # per-token work on the threads' token ranges (route, the weighted sum): not left on one
        # thread between the parallel products
        self._by_rows(n, lambda a, b: moe_kernels.route_into(logits[a:b], k, gating, routing.norm,
                                                             np.float32(routing.scale), ids[a:b], w[a:b]))
        # the (token, slot) pairs grouped by expert stay in that order from the gate|up product to the sum
        order, bounds, inverse = moe_kernels.group_by_expert(ids, experts.down.shape[0])
        parts = []
        for W in experts.gate_up:
            if observe is not None:
                observe(W, x.reshape(n, 1, d), ids)
            parts.append(W.mul_grouped(x, order // k, bounds, decode > 0))  # (n k, rows of W) grouped
        gu = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)   # (n k, 2 ff) grouped
        ff = gu.shape[1] // 2
        if experts.gate_bias is not None:
            experts_of = ids.reshape(-1)[order].reshape(-1, 1)              # (n k, 1) expert of each row
            g3 = gu.reshape(n * k, 1, 2 * ff)
            moe_kernels.add_expert_bias(g3, experts.gate_bias, experts_of, 0)
            moe_kernels.add_expert_bias(g3, experts.up_bias, experts_of, ff)
        act = np.empty((n * k, ff), np.float32)                            # (n k, ff) grouped
        if routing.oai_swiglu:
            self._by_rows(n * k, lambda a, b: moe_kernels.swiglu_oai(gu[a:b, :ff], gu[a:b, ff:], act[a:b]))
        else:
            self.gated_act(gu[:, :ff], gu[:, ff:], False, act)
        if observe is not None:
            A = np.empty((n, k, ff), np.float32)                           # (n, k, ff) in pair order
            A.reshape(n * k, ff)[order] = act
            observe(experts.down, A, ids)
        Y = experts.down.mul_grouped(act, None, bounds, decode > 0)         # (n k, d) grouped
        if out is None:
            out = np.empty((n, d), np.float32)
        bias, has_bias = (_EMPTY2, False) if experts.down_bias is None else (experts.down_bias, True)
        self._by_rows(n, lambda a, b: moe_kernels.combine_grouped(Y, inverse[a * k:b * k], w[a:b], bias, ids[a:b],
                                                                  has_bias, out[a:b]))
        return out

    def softcap(self, x, cap):
        ops.softcap_inplace(x, np.float32(cap))


def _fused_halves(gate, up):
    """The C-contiguous (n, 2 ff) float32 block whose column halves are gate and up (n, ff), as a
    view of their memory, when they are exactly that; else None."""
    n, ff = gate.shape
    row = (2 * ff * 4, 4)
    if (gate.dtype == up.dtype == np.float32 and up.shape == gate.shape and gate.strides == up.strides == row
            and up.ctypes.data == gate.ctypes.data + 4 * ff):
        return np.lib.stride_tricks.as_strided(gate, (n, 2 * ff), row)
    return None


def _float_pair(k_cache, v_cache) -> bool:
    """Both sides are float arrays of one dtype (the f32 / f16 kernels take them as they are)."""
    return isinstance(k_cache, np.ndarray) and isinstance(v_cache, np.ndarray) and k_cache.dtype == v_cache.dtype
