"""A stand-in accelerator for testing layer offload without a GPU.

``StandinDevice`` is a full ``Backend`` whose arrays are ``DeviceArray`` holders and whose
weights are ``DeviceWeight`` holders: neither is a NumPy array, so any host/device mix-up
outside ``to_host`` / ``from_host`` fails loudly (a device array in a NumPy expression or a
Numba kernel raises ``TypeError``; a host array handed to the device raises ``TypeError``).
The arithmetic itself is the CPU backend's, run on the unwrapped arrays, so offloaded
results must equal CPU results.  ``n_up`` / ``n_down`` count host->device and device->host
transfers.
"""
from __future__ import annotations

import numpy as np

from gguf_engine.backends.base import Backend
from gguf_engine.backends.cpu import CPUBackend
from gguf_engine.model.kv_cache import KVCache, KVTypes
from kernels.weight import Weight


class DeviceArray:
    """An array living on a ``StandinDevice``: views, reshapes and copies stay on the device;
    anything that would read it as a host array raises."""
    __slots__ = ("_a", "device")
    __array_ufunc__ = None           # NumPy operators with a DeviceArray operand raise TypeError

    def __init__(self, a: np.ndarray, device: "StandinDevice"):
        self._a = a
        self.device = device

    def __array__(self, *args, **kwargs):
        raise TypeError("a device array was used as a host array (move it with to_host)")

    # metadata
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    # device-side views and copies
    def __getitem__(self, idx):
        return DeviceArray(self._a[idx], self.device)

    def __setitem__(self, idx, value):
        self._a[idx] = self.device.unwrap(value)

    def reshape(self, *shape):
        return DeviceArray(self._a.reshape(*shape), self.device)

    def copy(self):
        return DeviceArray(self._a.copy(), self.device)


class DeviceWeight:
    """A weight uploaded to a ``StandinDevice`` (the CPU kernels' ``Weight`` inside)."""
    __slots__ = ("w", "device")

    def __init__(self, w: Weight, device: "StandinDevice"):
        self.w = w
        self.device = device

    @property
    def shape(self):
        return self.w.shape

    def __repr__(self) -> str:
        return f"DeviceWeight({self.w!r})"


class _DeviceArrayModule:
    """The array-creation functions ``KVCache`` and the scratch buffers need, on the device."""

    def __init__(self, device: "StandinDevice"):
        self._device = device

    def zeros(self, shape, dtype=np.float32):
        return DeviceArray(np.zeros(shape, dtype=dtype), self._device)

    def empty(self, shape, dtype=np.float32):
        return DeviceArray(np.empty(shape, dtype=dtype), self._device)


class StandinDevice(Backend):
    """A NumPy-backed device backend that counts boundary crossings and rejects host arrays."""
    name = "StandinDevice"
    copies_weights = True
    float_cache_only = True    # as the CUDA backend

    def __init__(self, n_threads: int | None = None):
        self.cpu = CPUBackend(n_threads)
        self.xp = _DeviceArrayModule(self)
        self.n_up = 0          # from_host calls
        self.n_down = 0        # to_host calls

    def reset_counts(self) -> None:
        self.n_up = self.n_down = 0

    # --- strict unwrapping --------------------------------------------------------------
    def unwrap(self, x):
        """The NumPy array inside a DeviceArray of this device; scalars pass; anything else raises."""
        if isinstance(x, DeviceArray):
            if x.device is not self:
                raise TypeError("array belongs to another device")
            return x._a
        if isinstance(x, (int, float, np.generic)):
            return x
        raise TypeError(f"host object {type(x).__name__} passed to the device (move it with from_host)")

    def _opt(self, x):
        return None if x is None else self.unwrap(x)

    def _weight(self, w) -> Weight:
        if not isinstance(w, DeviceWeight) or w.device is not self:
            raise TypeError(f"weight {type(w).__name__} is not on this device")
        return w.w

    def _wrap(self, a: np.ndarray) -> DeviceArray:
        return DeviceArray(a, self)

    # --- memory -------------------------------------------------------------------------
    def upload_weight(self, tensor, release=None):
        return DeviceWeight(self.cpu.upload_weight(tensor, release), self)

    def fuse(self, weights):
        return [DeviceWeight(w, self) for w in self.cpu.fuse([self._weight(w) for w in weights])]

    def upload_array(self, arr):
        if isinstance(arr, DeviceArray) or not isinstance(arr, np.ndarray):
            raise TypeError(f"upload_array needs a host array, got {type(arr).__name__}")
        return self._wrap(self.cpu.upload_array(arr))

    def kv_cache(self, n_layer, n_ctx, n_head_kv, head_dim, cache_type):
        self.check_cache_types(KVTypes.of(cache_type))
        return KVCache(n_layer, n_ctx, n_head_kv, head_dim, cache_type, xp=self.xp)

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def to_host(self, x) -> np.ndarray:
        a = self.unwrap(x)
        self.n_down += 1
        return np.array(a, copy=True)

    def from_host(self, x):
        if isinstance(x, DeviceArray) or not isinstance(x, np.ndarray):
            raise TypeError(f"from_host needs a host array, got {type(x).__name__}")
        self.n_up += 1
        return self._wrap(np.array(x, dtype=np.float32, copy=True))

    # --- compute ------------------------------------------------------------------------
    def embed(self, w, ids):
        return self._wrap(self.cpu.embed(self._weight(w), np.asarray(ids)))

    def linear(self, w, x, out=None, decode=None, rounded=False):
        return self._wrap(self.cpu.linear(self._weight(w), self.unwrap(x), self._opt(out), decode, rounded))

    def linear_fused(self, ws, x, out=None, decode=None, rounded=False):
        return self._wrap(self.cpu.linear_fused([self._weight(w) for w in ws], self.unwrap(x), self._opt(out), decode,
                                                rounded))

    def rms_norm(self, x, w, eps, out):
        self.cpu.rms_norm(self.unwrap(x), self.unwrap(w), eps, self.unwrap(out))

    def add_rms_norm(self, x, delta, post_w, w, eps, out):
        u = self.unwrap
        self.cpu.add_rms_norm(u(x), u(delta), self._opt(post_w), u(w), eps, u(out))

    def qkv_prepare(self, q3, k3, v3, bq, bk, bv, q_norm, k_norm, eps, rope, pos0, neox, k_cache, v_cache):
        u, o = self.unwrap, self._opt
        self.cpu.qkv_prepare(u(q3), u(k3), u(v3), o(bq), o(bk), o(bv), o(q_norm), o(k_norm), eps,
                             (u(rope[0]), u(rope[1])), pos0, neox, u(k_cache), u(v_cache))

    def attention(self, q3, k_cache, v_cache, pos0, scale, window, softcap, out3, sinks=None):
        u = self.unwrap
        self.cpu.attention(u(q3), u(k_cache), u(v_cache), pos0, scale, window, softcap, u(out3), sinks=self._opt(sinks))

    def gated_act(self, gate, up, gelu, out):
        self.cpu.gated_act(self.unwrap(gate), self.unwrap(up), gelu, self.unwrap(out))

    def softcap(self, x, cap):
        self.cpu.softcap(self.unwrap(x), cap)

    def set_threads(self, n_threads):
        self.cpu.set_threads(n_threads)
