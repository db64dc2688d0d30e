"""CUDA backend through CuPy: the layers offloaded with ``n_gpu_layers``.

Weights go to the GPU in their GGUF form (quantized blocks, byte for byte) and are decoded
on the fly by the kernels of ``kernels/cuda``:

- one token (decode): ``matvec<T>``, one thread block per output row, decodes 8 weights at a
  time in registers and multiplies them with float32 activations (float32 accumulation);
- a batch (prompt): ``dequant<T>`` decodes the whole matrix to float32 (bit-exact with the CPU
  decoders) into one reused scratch buffer, then cuBLAS multiplies in float32 (no TF32).

The KV cache of the offloaded layers, their norms and RoPE tables live on the GPU; the
per-layer operations are the fused kernels of ``kernels/cuda/ops.cu``.  All work is queued on
the backend's stream.  A single-token pass over a run of layers can be captured once as a
CUDA graph and replayed (``run_layers``): the position is then read from device memory.

Kernel arguments: CuPy arrays pass their data pointers (views included) and None a null
pointer; scalars are typed numpy values matching the C signatures.

Importing this module imports CuPy; ``backends.device_backend`` imports it only when asked
for layers, and treats a missing CuPy as "no GPU".
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from kernels.cuda import CHUNK, GPU_TYPES, OPS_OPTIONS, WEIGHT_OPTIONS, ops_source, type_source
from kernels.types import GGMLType, as_type, row_bytes

from ..model.kv_cache import KVCache, KVTypes
from .base import Backend

MATVEC_WARPS = 4                 # matvec: warps sharing one row
NORM_THREADS = 256
MAX_HEAD_DIM = 512               # ops.cu: MAX_HEAD_DIM
# attention: warps per (head, token) block, splitting its keys (ops.cu: at most ATT_MAX_WARPS);
# a single token has few blocks (one per head), so each gets many warps
ATTENTION_WARPS_STEP = 16
ATTENTION_WARPS_BATCH = 4
ELEMENTWISE_THREADS = 256
MAX_GRID = 132 * 32              # grid-stride kernels: enough blocks to fill any current GPU


def _blocks(n: int, threads: int) -> int:
    return max(1, min(MAX_GRID, -(-n // threads)))


def _row_stride(a) -> np.int64:
    """Floats between the rows of a (n, ...) float32 view (0 for one row, whose stride a view
    need not report)."""
    return np.int64(a.strides[0] // 4 if a.shape[0] > 1 else 0)


class CudaWeight:
    """A (rows, cols) weight on the GPU: its GGUF bytes, rows of ``row_bytes`` bytes."""
    __slots__ = ("data", "qtype", "shape", "row_bytes")

    def __init__(self, data, qtype: GGMLType, shape: tuple[int, int], row_bytes_: int):
        self.data = data                # cupy uint8 (rows * row_bytes,)
        self.qtype = qtype
        self.shape = shape
        self.row_bytes = row_bytes_

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return f"CudaWeight({self.qtype.name}, shape={self.shape})"


class _Kernels:
    """The compiled kernels, each type's module built on first use (CuPy caches the binaries
    on disk, so a second run loads them without compiling)."""

    def __init__(self):
        self._types: dict[GGMLType, tuple] = {}
        self._ops = None

    def weight(self, t: GGMLType):
        """(dequant, matvec) kernels of type t."""
        k = self._types.get(t)
        if k is None:
            src, names = type_source(t)
            mod = cp.RawModule(code=src, options=WEIGHT_OPTIONS, name_expressions=names)
            k = self._types[t] = tuple(mod.get_function(n).kernel for n in names)
        return k

    def op(self, name: str):
        if self._ops is None:
            self._ops = cp.RawModule(code=ops_source(), options=OPS_OPTIONS)
        return self._ops.get_function(name).kernel


class CudaBackend(Backend):
    name = "CUDA"
    xp = cp
    copies_weights = True           # weights are copied to the GPU; the file pages can go
    float_cache_only = True         # the attention kernel reads f32 / f16 caches

    def __init__(self, n_threads: int | None = None, device: int = 0, graphs: bool = True):
        """graphs: replay single-token passes as CUDA graphs (see run_layers)."""
        self.device = cp.cuda.Device(device)
        self.graphs = graphs
        self.device.use()
        self.n_threads = n_threads
        # a blocking stream: it stays ordered with CuPy work that callers queue on the default
        # stream (a copy of an output, an array made with cupy.asarray), and graphs capture on it
        self.stream = cp.cuda.Stream(non_blocking=False)
        self._k = _Kernels()
        self._scratch = None            # float32 scratch for decoded matrices (prompt batches)
        self._pos = cp.zeros(1, dtype=np.int32)   # the position a captured graph reads
        self._pos_ptr = None            # _pos while capturing, else None (positions as arguments)
        self._graphs: dict = {}
        self._graph_pool = None
        k = self._k
        self._rms, self._add_rms = k.op("rms_norm"), k.op("add_rms_norm")
        self._qkv, self._attn = k.op("qkv_prepare"), k.op("attention")
        self._gated, self._softcap = k.op("gated_act"), k.op("softcap")

    @staticmethod
    def available() -> bool:
        """True when the CUDA driver sees at least one GPU."""
        try:
            return cp.cuda.runtime.getDeviceCount() > 0
        except cp.cuda.runtime.CUDARuntimeError:
            return False

    @property
    def buffer_name(self) -> str:
        return f"CUDA{self.device.id}"

    @property
    def device_name(self) -> str:
        return cp.cuda.runtime.getDeviceProperties(self.device.id)["name"].decode()

    def set_threads(self, n_threads):
        self.n_threads = n_threads

    # --- memory -------------------------------------------------------------------------
    def upload_weight(self, tensor, release=None):
        """The tensor's GGUF bytes -> GPU.  Types without a GPU decoder (the integer and F64
        types, never used for weights by llama.cpp) are decoded on the host to F32 first."""
        t = as_type(tensor.type)
        rows, cols = (int(s) for s in tensor.shape)
        raw = np.ascontiguousarray(tensor.raw).reshape(-1).view(np.uint8)
        if t not in GPU_TYPES:
            from kernels import dequantize
            raw = dequantize(raw, t, (rows, cols)).reshape(-1).view(np.uint8)
            t = GGMLType.F32
        if cols % CHUNK:
            raise ValueError(f"tensor {getattr(tensor, 'name', '?')!r}: {t.name} row length {cols} is not a "
                             f"multiple of {CHUNK}, which the GPU kernels need")
        rb = row_bytes(t, cols)
        if raw.size != rows * rb:
            raise ValueError(f"tensor {getattr(tensor, 'name', '?')!r}: {raw.size} bytes, expected {rows * rb}")
        self._k.weight(t)                       # compile (or load) the type's kernels now
        with self.stream:
            data = cp.asarray(raw)
        self.stream.synchronize()
        if release is not None:
            release(0, rows)
        return CudaWeight(data, t, (rows, cols), rb)

    def fuse(self, weights):
        """Consecutive weights of one type and row length become one (their rows stacked)."""
        groups: list[list[CudaWeight]] = []
        for w in weights:
            g = groups[-1] if groups else None
            if g and g[0].qtype == w.qtype and g[0].shape[1] == w.shape[1]:
                g.append(w)
            else:
                groups.append([w])
        out = []
        with self.stream:
            for g in groups:
                if len(g) == 1:
                    out.append(g[0])
                else:
                    data = cp.concatenate([w.data for w in g])
                    out.append(CudaWeight(data, g[0].qtype, (sum(w.shape[0] for w in g), g[0].shape[1]),
                                          g[0].row_bytes))
        return out

    def upload_array(self, arr):
        with self.stream:
            return cp.asarray(np.ascontiguousarray(arr, dtype=np.float32))

    def kv_cache(self, n_layer, n_ctx, n_head_kv, head_dim, cache_type):
        self.check_cache_types(KVTypes.of(cache_type))
        if head_dim > MAX_HEAD_DIM:
            raise ValueError(f"the GPU attention kernel supports head sizes up to {MAX_HEAD_DIM}, got {head_dim}")
        with self.stream:
            cache = KVCache(n_layer, n_ctx, n_head_kv, head_dim, cache_type, xp=cp)
        return cache

    def empty(self, shape, dtype=np.float32):
        with self.stream:
            return cp.empty(shape, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        return cp.asnumpy(x, stream=self.stream)       # waits for the stream

    def from_host(self, x):
        with self.stream:
            return cp.asarray(np.ascontiguousarray(x, dtype=np.float32))

    # --- weights ------------------------------------------------------------------------
    def scratch_bytes(self, weights, n, n_keys, config):
        """A batch decodes each weight whole to float32 into one reused buffer (``_decoded``)."""
        return max((4 * w.shape[0] * w.shape[1] for w in weights), default=0) if n > 1 else 0

    def _decoded(self, w: CudaWeight, ids=None):
        """float32 rows of w (all, or the rows ids) decoded into the scratch buffer."""
        rows, cols = w.shape
        n = rows if ids is None else int(ids.size)
        need = n * cols
        if self._scratch is None or self._scratch.size < need:
            self._scratch = None
            self._scratch = cp.empty(need, dtype=np.float32)
        out = self._scratch[:need].reshape(n, cols)
        total = n * (cols // CHUNK)
        self._k.weight(w.qtype)[0]((_blocks(total, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
                                   (w.data, out, np.int64(n), np.int32(cols), np.int64(w.row_bytes),
                                    ids), stream=self.stream)
        return out

    def _matvec(self, w: CudaWeight, x, y) -> None:
        """y (rows,) = w x for one token; x (cols,) contiguous float32."""
        rows, cols = w.shape
        self._k.weight(w.qtype)[1]((rows,), (32, MATVEC_WARPS),
                                   (w.data, x, y, np.int32(rows), np.int32(cols), np.int64(w.row_bytes)),
                                   stream=self.stream)

    def dequantize(self, w: CudaWeight):
        """The whole weight as a new float32 (rows, cols) device array (exact)."""
        with self.stream:
            return self._decoded(w).copy()

    # --- compute ------------------------------------------------------------------------
    def embed(self, w, ids):
        with self.stream:
            idx = cp.asarray(np.asarray(ids, dtype=np.int64))
            return self._decoded(w, idx).copy()

    def linear(self, w, x, out=None, decode=None, rounded=False):
        return self.linear_fused([w], x, decode=decode)

    def linear_fused(self, ws, x, out=None, decode=None, rounded=False):
        # out is not used: CuPy's memory pool already reuses the blocks of earlier results;
        # rounded neither: the GPU's prompt products are its own
        if decode is not None:
            raise ValueError("batched passes of several sequences run on the CPU only")
        n = x.shape[0]
        total = sum(w.shape[0] for w in ws)
        with self.stream:
            if n == 1:
                y = cp.empty((1, total), dtype=np.float32)
                x0 = x.reshape(-1)
                off = 0
                for w in ws:
                    self._matvec(w, x0, y[0, off:off + w.shape[0]])
                    off += w.shape[0]
                return y
            outs = [cp.matmul(x, self._decoded(w).T) for w in ws]     # (n, rows) each, float32 cuBLAS
            return outs[0] if len(outs) == 1 else cp.concatenate(outs, axis=1)

    def rms_norm(self, x, w, eps, out):
        n, d = x.shape
        self._rms((n,), (NORM_THREADS,), (x, w, np.float32(eps), out, np.int32(d)), stream=self.stream)

    def add_rms_norm(self, x, delta, post_w, w, eps, out):
        n, d = x.shape
        self._add_rms((n,), (NORM_THREADS,),
                      (x, delta, post_w, w, np.float32(eps), out, np.int32(d)),
                      stream=self.stream)

    def qkv_prepare(self, q3, k3, v3, bq, bk, bv, q_norm, k_norm, eps, rope, pos0, neox, k_cache, v_cache):
        n, H, hd = q3.shape
        Hkv = k3.shape[1]
        stride = _row_stride(q3)
        if _row_stride(k3) != stride or _row_stride(v3) != stride:
            raise ValueError("q, k and v must be views of one fused projection output")
        cos, sin = rope
        self._qkv((H + Hkv, n), (32,),
                  (q3, k3, v3, stride, np.int32(H), np.int32(Hkv), np.int32(hd),
                   bq, bk, bv, q_norm, k_norm, np.float32(eps),
                   cos, sin, np.int32(cos.shape[1]), np.int32(bool(neox)), np.int32(pos0), self._pos_ptr,
                   k_cache, v_cache, np.int32(k_cache.dtype == np.float16)), stream=self.stream)

    def attention(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3, sinks=None):
        if sinks is not None:
            raise ValueError("attention sinks (gpt-oss) run on the CPU backend only; offload no layers (-ngl 0)")
        n, H, hd = q3.shape
        Hkv = k_cache.shape[1]
        warps = ATTENTION_WARPS_STEP if n == 1 else ATTENTION_WARPS_BATCH
        self._attn((H, n), (32 * warps,),
                   (q3, _row_stride(q3), k_cache, v_cache, np.int32(k_cache.dtype == np.float16),
                    np.int32(H), np.int32(Hkv), np.int32(hd), np.int32(pos0), self._pos_ptr,
                    np.float32(scale), np.int32(window), np.float32(softcap), out3), stream=self.stream)

    def gated_act(self, gate, up, gelu, out):
        n, ff = out.shape
        self._gated((_blocks(n * ff, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
                    (gate, up, _row_stride(gate), np.int32(bool(gelu)), out, np.int32(n), np.int32(ff)),
                    stream=self.stream)

    def softcap(self, x, cap):
        self._softcap((_blocks(x.size, ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
                      (x, np.int64(x.size), np.float32(cap)), stream=self.stream)

    # --- graphs -------------------------------------------------------------------------
    def run_layers(self, key, fn, x, pos0: int):
        """fn(x) -> (x, xn): one token's pass over a run of this backend's layers.

        With graphs on, the first call for a key runs fn once eagerly (so that the memory
        pool kept for the graphs holds every buffer the pass allocates) and then captures it
        into a CUDA graph whose kernels read the position from device memory; every call then
        copies x into the captured input, sets the position and replays the graph, returning
        the captured output arrays (overwritten by the next replay).  A pass that cannot be
        captured runs eagerly from then on, with one warning."""
        if not self.graphs:
            return fn(x)
        entry = self._graphs.get(key, False)
        if entry is False:
            entry = self._graphs[key] = self._capture(fn, x)
        if entry is None:
            return fn(x)
        graph, x_in, outs = entry
        with self.stream:
            x_in[...] = x
            self._pos.fill(pos0)
        graph.launch(stream=self.stream)
        return outs

    def _capture(self, fn, x):
        if self._graph_pool is None:
            self._graph_pool = cp.cuda.MemoryPool()
        pool = self._graph_pool
        with self.stream, cp.cuda.using_allocator(pool.malloc):
            x_in = x.copy()
            fn(x_in)                                    # warm-up: the pool now caches every buffer
            self.stream.synchronize()
            self._pos_ptr = self._pos
            try:
                self.stream.begin_capture()
                try:
                    outs = fn(x_in)
                finally:
                    graph = self.stream.end_capture()
            except Exception as e:                      # a pass that cannot be captured runs eagerly
                import warnings
                warnings.warn(f"CUDA graph capture failed ({e}); running the layers without graphs",
                              RuntimeWarning, stacklevel=3)
                return None
            finally:
                self._pos_ptr = None
        return graph, x_in, outs
