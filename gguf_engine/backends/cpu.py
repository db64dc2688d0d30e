"""CPU backend: NumPy arrays, the Numba kernels of ``kernels``, BLAS for batched attention."""
from __future__ import annotations

import numpy as np

from kernels import ops
from kernels.weight import Weight

from ..model.kv_cache import KVCache
from .base import Backend

_EMPTY2 = np.zeros((1, 1), dtype=np.float32)
_EMPTY1 = np.zeros(1, dtype=np.float32)

# below this many new tokens attention runs in the fused kernel; above it through BLAS
BLAS_ATTENTION_MIN_TOKENS = 8
# queries per BLAS attention block
ATTENTION_QUERY_BLOCK = 512
# below this many multiply-adds (tokens x heads x keys x head size) attention stays on one thread
PARALLEL_ATTENTION_MIN_WORK = 1 << 20


class CPUBackend(Backend):
    name = "CPU"
    xp = np
    copies_weights = True      # kernels.Weight repacks the tensor bytes; it keeps no view of the file

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
    def upload_weight(self, tensor):
        """Quantized (or float) tensor -> kernels.Weight, repacked for the matvec/matmul kernels."""
        return Weight(tensor.raw, tensor.type, tensor.shape)

    def fuse(self, weights):
        """Stack runs of consecutive weights of one type and row length (Weight.concat)."""
        W = Weight
        groups: list[list] = []
        for w in weights:
            if groups and W.can_concat([groups[-1][0], w]):
                groups[-1].append(w)
            else:
                groups.append([w])
        return [g[0] if len(g) == 1 else W.concat(g) for g in groups]

    def upload_array(self, arr):
        return np.array(arr, dtype=np.float32, order="C", copy=True)   # never a view of the file

    def kv_cache(self, n_layer, n_ctx, n_head_kv, head_dim, cache_type):
        return KVCache(n_layer, n_ctx, n_head_kv, head_dim, cache_type, xp=np)

    # --- compute ------------------------------------------------------------------------
    def embed(self, w, ids):
        return np.ascontiguousarray(w.rows(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def linear(self, w, x):
        if x.shape[0] == 1:
            return w.matvec(x[0]).reshape(1, -1)
        return w.matmul(x)

    def rms_norm(self, x, w, eps, out):
        ops.rms_norm(x, w, eps, out)

    def add_rms_norm(self, x, delta, post_w, w, eps, out):
        if post_w is None:
            ops.add_rms_norm(x, delta, _EMPTY1, False, w, eps, out)
        else:
            ops.add_rms_norm(x, delta, post_w, True, w, eps, out)

    def qkv_prepare(self, q3, k3, v3, bq, bk, bv, q_norm, k_norm, eps, rope, pos0, neox, k_cache, v_cache):
        has_bias = bq is not None
        has_norm = q_norm is not None
        if k_cache.dtype == np.float16:
            k_cache, v_cache = k_cache.view(np.uint16), v_cache.view(np.uint16)
        ops.qkv_prepare(q3, k3, v3,
                        bq if has_bias else _EMPTY2, bk if has_bias else _EMPTY2, bv if has_bias else _EMPTY2,
                        has_bias,
                        q_norm if has_norm else _EMPTY1, k_norm if has_norm else _EMPTY1, has_norm, eps,
                        rope[0], rope[1], pos0, neox, k_cache, v_cache)

    def attention(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3):
        n, H, hd = q3.shape
        if n < BLAS_ATTENTION_MIN_TOKENS:
            n_keys = pos0 + n if window <= 0 else min(pos0 + n, window)
            kernel = ops.attention if n * H * n_keys * hd >= PARALLEL_ATTENTION_MIN_WORK else ops.attention_serial
            if k_cache.dtype == np.float16:
                kernel(q3, k_cache.view(np.uint16), v_cache.view(np.uint16), pos0, scale, window, softcap,
                       ops.F16_TABLE, out3)
            else:
                kernel(q3, k_cache, v_cache, pos0, scale, window, softcap, ops.F16_TABLE, out3)
            return
        self._attention_blas(q3, k_cache, v_cache, pos0, scale, window, softcap, out3)

    @classmethod
    def _attention_blas(cls, q3, k_cache, v_cache, pos0, scale, window, softcap, out3):
        """Batched attention through BLAS, in query blocks so each block only multiplies the
        keys it can see (about half the work of the full square for a causal prompt)."""
        n = q3.shape[0]
        for a in range(0, n, ATTENTION_QUERY_BLOCK):
            b = min(n, a + ATTENTION_QUERY_BLOCK)
            cls._attention_blas_block(q3[a:b], k_cache, v_cache, pos0 + a, scale, window, softcap, out3[a:b])

    @staticmethod
    def _attention_blas_block(q3, k_cache, v_cache, pos0, scale, window, softcap, out3):
        n, H, hd = q3.shape
        Hkv = k_cache.shape[1]
        G = H // Hkv
        key0 = max(0, pos0 - window + 1) if window > 0 else 0
        K = k_cache[key0:pos0 + n]                         # (nk, Hkv, hd)
        V = v_cache[key0:pos0 + n]                         # (nk, Hkv, hd)
        if K.dtype != np.float32:
            K = K.astype(np.float32)
            V = V.astype(np.float32)
        for g in range(Hkv):
            # rows (token, head-in-group): one contiguous 2-D GEMM per kv head
            Q = q3[:, g * G:(g + 1) * G, :].reshape(n * G, hd)          # (n G, hd)
            S = Q @ np.ascontiguousarray(K[:, g, :]).T                 # (n G, nk)
            S *= np.float32(scale)
            ops.masked_softmax(S, G, pos0, key0, window, softcap)
            O = S @ np.ascontiguousarray(V[:, g, :])                   # (n G, hd)
            out3[:, g * G:(g + 1) * G, :] = O.reshape(n, G, hd)

    def gated_act(self, gate, up, gelu, out):
        if gate.shape[0] == 1:
            ops.gated_act_row(gate[0], up[0], gelu, out[0])
        else:
            ops.gated_act(gate, up, gelu, out)

    def softcap(self, x, cap):
        ops.softcap_inplace(x, np.float32(cap))
