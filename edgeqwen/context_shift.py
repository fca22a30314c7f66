"""Context shift (llama.cpp's --context-shift): when a sequence's KV cache is full, keep its first
`n_keep` positions (the system prompt / --keep N), drop the oldest half of the rest, move the kept
tail down over the gap and rotate its keys back by the gap, so generation can go on.

The cache holds keys after RoPE: the key of position p is R(p) k (per pair (j, j + hd/2) a rotation
by p * inv_freq[j], times YaRN's attention factor). Moving it to p - d needs R(-d), a rotation by
-d * inv_freq[j] without the factor: the model's own tables at row d divided by row 0 (cos(0) = the
factor), so YaRN's interpolated frequencies are those of the prefill. Works on any cache type
through the KVCache interface (quantized keys are dequantized, rotated and stored again, as
llama.cpp does).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import EdgeQwenError
from .kv_cache import KVCache

CHUNK = 4096          # positions moved at a time (bounds the float32 copies to CHUNK x kv_heads x head_dim)


def check_keep(n_keep, n_ctx: int, what: str = "--keep") -> int:
    """n_keep must leave at least two positions to shift (half of the rest is dropped)."""
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)) or not 0 <= n_keep <= n_ctx - 2:
        raise EdgeQwenError(f"{what} must be an integer in 0..{max(n_ctx - 2, 0)} (the context is {n_ctx} tokens, "
                            f"context shift drops half of what is not kept), got {n_keep!r}")
    return int(n_keep)


def unrotation(cos: np.ndarray, sin: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (hd/2,) float32 of the rotation by d positions, without YaRN's attention factor,
    from a model's RoPE tables (n_ctx, hd/2) (row 0: cos = the factor, sin = 0)."""
    factor = cos[0].astype(np.float64)
    return (cos[d] / factor).astype(np.float32), (sin[d] / factor).astype(np.float32)


def rotate_back(k: np.ndarray, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """k (T, Hkv, hd) float32 keys rotated by -d (NeoX pairs j, j + hd/2), in place."""
    half = k.shape[-1] // 2
    a, b = k[..., :half].copy(), k[..., half:].copy()
    k[..., :half] = a * c + b * s
    k[..., half:] = b * c - a * s
    return k


def shift(model, cache: KVCache, n_keep: int) -> int:
    """Drop positions n_keep .. n_keep + d - 1, d = (cache.n - n_keep) // 2, of every layer of
    `cache` (a cache of `model`, a Qwen3Model); the later ones move down by d with their keys
    re-rotated. Returns d (the caller drops the same tokens from its token list)."""
    n = cache.n
    d = (n - n_keep) // 2
    if n_keep < 0 or d < 1:
        raise EdgeQwenError(f"context shift: nothing to drop ({n} tokens in the cache, {n_keep} kept)")
    c, s = unrotation(model.cos, model.sin, d)
    for layer in range(model.cfg.n_layer):
        for src in range(n_keep + d, n, CHUNK):      # upwards: a chunk's target is below every later source
            end = min(src + CHUNK, n)
            k = rotate_back(cache.keys(layer, src, end), c, s)
            cache.store(layer, src - d, k, cache.values(layer, src, end))
    cache.truncate(n - d)
    return d


def shift_tokens(tokens: list[int], n_keep: int, d: int) -> None:
    """The same drop on the token list that mirrors the cache (in place)."""
    del tokens[n_keep:n_keep + d]


def fit_prompt(ids: Sequence[int], n_keep: int, n_ctx: int) -> list[int]:
    """A prompt that does not leave room to generate (len >= n_ctx) with its middle dropped as a
    shift would: the first n_keep tokens and the last (n_ctx - n_keep) // 2 (half the context is
    left for the answer). Shorter prompts are returned as they are."""
    ids = list(ids)
    if len(ids) < n_ctx:
        return ids
    return ids[:n_keep] + ids[len(ids) - (n_ctx - n_keep) // 2:]
