"""A preallocated KV cache for one sequence, laid out for GQA decode: per layer and KV head,
positions are contiguous rows of head_dim floats."""
from __future__ import annotations

import numpy as np

from .config import Qwen3Config


class KVCache:
    def __init__(self, cfg: Qwen3Config, n_ctx: int):
        self.n_ctx = n_ctx
        shape = (cfg.n_layer, cfg.n_head_kv, n_ctx, cfg.head_dim)
        self.k = np.zeros(shape, np.float32)   # (layer, kv_head, pos, head_dim)
        self.v = np.zeros(shape, np.float32)
        self.n = 0                             # positions filled

    @staticmethod
    def nbytes_for(cfg: Qwen3Config, n_ctx: int) -> int:
        return 2 * cfg.n_layer * cfg.n_head_kv * n_ctx * cfg.head_dim * 4

    def truncate(self, n: int) -> None:
        """Keep the first n positions (a shared prefix); later writes overwrite the rest."""
        self.n = min(self.n, n)
