"""A preallocated KV cache for one sequence: per layer, positions are rows of (kv_head, head_dim)
values. Position-major, so memory becomes resident as positions fill (with transparent huge
pages, a head-major layout touched one 2 MB page per head and layer at the first token, making
the whole cache resident at once).

Storage types (llama.cpp's -ctk/-ctv; K and V may differ):
  f32   float32 values: `.k` / `.v` are the float32 arrays (layer, pos, kv_head, head_dim).
  f16   IEEE half values stored as their uint16 bit patterns (numba has no float16 arithmetic).
  q8_0  ggml's Q8_0 over each position's row of kv_heads x head_dim values: per 32 values one
        float16 scale d (uint16 bits in `.k_scale` / `.v_scale`, (layer, pos, row / 32)) and 32
        int8 q (in `.k` / `.v`), value = q * d; quantized as ggml's quantize_row_q8_0_ref.
"""
from __future__ import annotations

import mmap

import numpy as np
from numba import njit

from . import simd
from .config import Qwen3Config
from .errors import EdgeQwenError
from .quants.common import F16_TABLE

CACHE_TYPES = ("f32", "f16", "q8_0")
QK8 = 32
_BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "q8_0": (QK8 + 2) / QK8}    # q8_0: 32 int8 + an f16 scale


def check_type(name: str, t) -> str:
    if t not in CACHE_TYPES:
        raise EdgeQwenError(f"{name}: unknown KV cache type {t!r}; expected one of {', '.join(CACHE_TYPES)}")
    return t


class KVCache:
    def __init__(self, cfg: Qwen3Config, n_ctx: int, type_k: str = "f32", type_v: str = "f32"):
        self.type_k, self.type_v = check_type("cache type of K", type_k), check_type("cache type of V", type_v)
        row = cfg.n_head_kv * cfg.head_dim
        if "q8_0" in (type_k, type_v) and row % QK8:
            raise EdgeQwenError(f"a q8_0 KV cache needs kv_heads x head_dim to be a multiple of {QK8}, "
                                f"this model has {cfg.n_head_kv} x {cfg.head_dim}; use --cache-type f16")
        self.n_ctx = n_ctx
        shape = (cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim)
        try:
            self.k, self.k_scale = _alloc(type_k, shape)   # (layer, pos, kv_head, head_dim)
            self.v, self.v_scale = _alloc(type_v, shape)
        except MemoryError:
            raise EdgeQwenError(f"not enough memory for a KV cache of {n_ctx} tokens "
                                f"({self.nbytes_for(cfg, n_ctx, type_k, type_v) / 2**30:.1f} GiB); "
                                f"use a smaller -c/--ctx-size or --cache-type q8_0") from None
        self.n = 0                             # positions filled

    @staticmethod
    def nbytes_for(cfg: Qwen3Config, n_ctx: int, type_k: str = "f32", type_v: str = "f32") -> int:
        values = cfg.n_layer * cfg.n_head_kv * n_ctx * cfg.head_dim
        return int(values * (_BYTES_PER_VALUE[type_k] + _BYTES_PER_VALUE[type_v]))

    # The interface the rest of the runtime uses.
    def store(self, layer: int, p0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (T, Hkv, hd) float32 at positions p0..p0+T-1 of `layer`."""
        _put(self.type_k, self.k, self.k_scale, layer, p0, k)
        _put(self.type_v, self.v, self.v_scale, layer, p0, v)

    def keys(self, layer: int, start: int, end: int) -> np.ndarray:
        """Positions start..end-1 of `layer` as float32 (T, Hkv, hd) (a copy)."""
        return _get(self.type_k, self.k, self.k_scale, layer, start, end)

    def values(self, layer: int, start: int, end: int) -> np.ndarray:
        return _get(self.type_v, self.v, self.v_scale, layer, start, end)

    def copy_prefix_from(self, src: "KVCache", n: int) -> None:
        """Take src's first n positions (all layers) as this cache's own; same shape and types."""
        for name, a in self.buffers().items():
            a[:, :n] = src.buffers()[name][:, :n]
        self.n = n

    def buffers(self) -> dict[str, np.ndarray]:
        """The raw storage arrays by name (for saving and loading a state)."""
        out = {"k": self.k, "v": self.v}
        if self.k_scale is not None:
            out["k_scale"] = self.k_scale
        if self.v_scale is not None:
            out["v_scale"] = self.v_scale
        return out

    def truncate(self, n: int) -> None:
        """Keep the first n positions (a shared prefix); later writes overwrite the rest."""
        self.n = min(self.n, n)


def _zeros(shape, dtype) -> np.ndarray:
    """np.zeros on small 4 KiB pages: numpy asks for transparent huge pages on large arrays, and
    a 2 MiB page per layer of K and of V became resident at the first token (112 MiB for 0.6B's
    28 layers, 160 MiB for 14B's 40, whatever the context used)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n < 1 << 22 or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros(shape, dtype)
    try:
        mm = mmap.mmap(-1, n)                 # anonymous: zero pages, resident as they are written
    except OSError:                           # ENOMEM: reported as np.zeros would
        raise MemoryError from None
    mm.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mm, dtype).reshape(shape)


def _alloc(t: str, shape):
    if t == "f32":
        return _zeros(shape, np.float32), None
    if t == "f16":
        return _zeros(shape, np.uint16), None
    L, n, hkv, hd = shape
    return _zeros(shape, np.int8), _zeros((L, n, hkv * hd // QK8), np.uint16)


def _put(t, a, scale, layer, p0, x):
    p1 = p0 + len(x)
    if t == "f32":
        a[layer, p0:p1] = x
    elif t == "f16" and simd.PATH == "avx2" and x.flags.c_contiguous and x.dtype == np.float32:
        simd.kernels.to_f16(x.reshape(-1), a[layer, p0:p1].reshape(-1))      # vcvtps2ph, as numpy rounds
    elif t == "f16":
        a[layer, p0:p1] = x.astype(np.float16).view(np.uint16)
    else:
        d = np.empty(scale.shape[2] * len(x), np.float32)
        quantize_q8_0(np.ascontiguousarray(x, np.float32).reshape(-1), a[layer, p0:p1].reshape(-1), d)
        scale[layer, p0:p1] = d.astype(np.float16).view(np.uint16).reshape(scale[layer, p0:p1].shape)


def _get(t, a, scale, layer, start, end):
    if t == "f32":
        return np.array(a[layer, start:end], np.float32)
    if t == "f16":
        return F16_TABLE[a[layer, start:end]]
    q = a[layer, start:end]
    d = F16_TABLE[scale[layer, start:end]]                       # (T, row / 32)
    return (q.reshape(len(q), -1, QK8) * d[:, :, None]).reshape(q.shape)


@njit(cache=True)              # no fastmath: the same float32 operations as ggml's reference
def quantize_q8_0(x, q, d):
    """x (n,) float32 -> q (n,) int8 and d (n / 32,) float32 scales (rounded to float16 by the
    caller): d = max|x| / 127, q = roundf(x / d) (x * (1/d), rounding halves away from zero)."""
    if len(q) != len(x) or len(d) * QK8 != len(x):
        raise ValueError("quantize_q8_0: x, q and d sizes do not match")
    for b in range(len(x) // QK8):
        amax = np.float32(0.0)
        for i in range(b * QK8, (b + 1) * QK8):
            amax = max(amax, abs(x[i]))
        db = amax / np.float32(127.0)
        inv = np.float32(1.0) / db if db != 0 else np.float32(0.0)
        d[b] = db
        for i in range(b * QK8, (b + 1) * QK8):
            v = x[i] * inv
            a = abs(v)
            fl = np.floor(a)
            r = fl + np.floor(np.float32(2.0) * (a - fl))
            q[i] = np.int8(r if v >= 0 else -r)
