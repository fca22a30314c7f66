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

    def truncate(self, n: int) -> None:
        """Keep the first n positions (a shared prefix); later writes overwrite the rest."""
        self.n = min(self.n, n)
