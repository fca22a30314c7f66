"""Qwen3 hyperparameters, built from GGUF metadata in one place."""
from __future__ import annotations

from dataclasses import dataclass

from . import constants as C
from .errors import EdgeQwenError


@dataclass(frozen=True)
class Qwen3Config:
    n_vocab: int
    n_embd: int          # hidden size
    n_ff: int            # FFN (intermediate) size
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    rope_base: float
    rms_eps: float
    rope_scaling: dict | None   # {"type": "yarn", "factor", "orig_ctx", "beta_fast", ...} or None

    @classmethod
    def from_metadata(cls, md: dict, source: str, n_vocab: int) -> "Qwen3Config":
        def get(key, kind=int, default=None):
            if key not in md:
                if default is not None:
                    return default
                raise EdgeQwenError(f"{source}: missing metadata key {key}")
            v = md[key]
            if kind is int and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise EdgeQwenError(f"{source}: metadata key {key} = {v!r}, expected a positive integer")
            if kind is float and not isinstance(v, (int, float)):
                raise EdgeQwenError(f"{source}: metadata key {key} = {v!r}, expected a number")
            return kind(v)

        n_embd, n_head = get(C.KEY_EMBEDDING_LENGTH), get(C.KEY_HEAD_COUNT)
        head_dim = get(C.KEY_KEY_LENGTH, int, n_embd // n_head)
        if get(C.KEY_VALUE_LENGTH, int, head_dim) != head_dim:
            raise EdgeQwenError(f"{source}: {C.KEY_VALUE_LENGTH} differs from {C.KEY_KEY_LENGTH}")
        n_head_kv = get(C.KEY_HEAD_COUNT_KV, int, n_head)
        if n_head % n_head_kv:
            raise EdgeQwenError(f"{source}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        if head_dim % 2:
            raise EdgeQwenError(f"{source}: {C.KEY_KEY_LENGTH} = {head_dim} must be even for RoPE")
        scaling = None
        stype = md.get(C.KEY_ROPE_SCALING_TYPE)
        if stype not in (None, "none", "linear", "yarn"):
            raise EdgeQwenError(f"{source}: rope scaling type {stype!r} is not supported (none, yarn)")
        if stype == "linear" and float(md.get(C.KEY_ROPE_SCALING_FACTOR, 1.0)) != 1.0:
            raise EdgeQwenError(f"{source}: linear rope scaling is not supported for qwen3")
        if stype == "yarn":
            scaling = {
                "type": "yarn",
                "factor": get(C.KEY_ROPE_SCALING_FACTOR, float),
                "orig_ctx": get(C.KEY_ROPE_SCALING_ORIG_CTX),
                "beta_fast": float(md.get(C.KEY_ROPE_YARN_BETA_FAST, 0.0)) or None,
                "beta_slow": float(md.get(C.KEY_ROPE_YARN_BETA_SLOW, 0.0)) or None,
                "attn_factor": float(md.get(C.KEY_ROPE_YARN_ATTN_FACTOR, 0.0)) or None,
            }
        return cls(
            n_vocab=n_vocab, n_embd=n_embd, n_ff=get(C.KEY_FEED_FORWARD_LENGTH),
            n_layer=get(C.KEY_BLOCK_COUNT), n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
            n_ctx_train=get(C.KEY_CONTEXT_LENGTH, int, 32768),
            rope_base=get(C.KEY_ROPE_FREQ_BASE, float, 1e6), rms_eps=get(C.KEY_RMS_EPS, float, 1e-6),
            rope_scaling=scaling,
        )

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward needs -> shape in numpy order (rows, cols); output.weight optional."""
        d, hd = self.n_embd, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        shapes = {C.TOKEN_EMBD: (self.n_vocab, d), C.OUTPUT_NORM: (d,)}
        per = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
               "attn_q_norm": (hd,), "attn_k_norm": (hd,), "attn_output": (d, q), "ffn_norm": (d,),
               "ffn_gate": (self.n_ff, d), "ffn_up": (self.n_ff, d), "ffn_down": (d, self.n_ff)}
        for i in range(self.n_layer):
            for part, shape in per.items():
                shapes[C.block_tensor(i, part)] = shape
        return shapes
