"""A preallocated KV cache for one sequence: per layer, positions are rows of (kv_head, head_dim)
floats. Position-major, so memory becomes resident as positions fill (with transparent huge
pages, a head-major layout touched one 2 MB page per head and layer at the first token, making
the whole cache resident at once)."""
from __future__ import annotations

import numpy as np

from .config import Qwen3Config
from .errors import EdgeQwenError


class KVCache:
    def __init__(self, cfg: Qwen3Config, n_ctx: int):
        self.n_ctx = n_ctx
        shape = (cfg.n_layer, n_ctx, cfg.n_head_kv, cfg.head_dim)
        try:
            self.k = np.zeros(shape, np.float32)   # (layer, pos, kv_head, head_dim)
            self.v = np.zeros(shape, np.float32)
        except MemoryError:
            raise EdgeQwenError(f"not enough memory for a KV cache of {n_ctx} tokens "
                                f"({self.nbytes_for(cfg, n_ctx) / 2**30:.1f} GiB); "
                                f"use a smaller -c/--ctx-size") from None
        self.n = 0                             # positions filled

    @staticmethod
    def nbytes_for(cfg: Qwen3Config, n_ctx: int) -> int:
        return 2 * cfg.n_layer * cfg.n_head_kv * n_ctx * cfg.head_dim * 4

    # The interface the rest of the runtime uses (the storage type may change: see type_k/type_v).
    def store(self, layer: int, p0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (T, Hkv, hd) float32 at positions p0..p0+T-1 of `layer`."""
        self.k[layer, p0:p0 + len(k)] = k
        self.v[layer, p0:p0 + len(v)] = v

    def keys(self, layer: int, start: int, end: int) -> np.ndarray:
        """Positions start..end-1 of `layer` as float32 (T, Hkv, hd) (a copy)."""
        return np.array(self.k[layer, start:end], np.float32)

    def values(self, layer: int, start: int, end: int) -> np.ndarray:
        return np.array(self.v[layer, start:end], np.float32)

    def copy_prefix_from(self, src: "KVCache", n: int) -> None:
        """Take src's first n positions (all layers) as this cache's own; same shape and types."""
        self.k[:, :n] = src.k[:, :n]
        self.v[:, :n] = src.v[:, :n]
        self.n = n

    def buffers(self) -> dict[str, np.ndarray]:
        """The raw storage arrays by name (for saving and loading a state)."""
        return {"k": self.k, "v": self.v}

    def truncate(self, n: int) -> None:
        """Keep the first n positions (a shared prefix); later writes overwrite the rest."""
        self.n = min(self.n, n)
