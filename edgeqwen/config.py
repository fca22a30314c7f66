"""Qwen3 hyperparameters, built from GGUF metadata in one place.

Every value is checked here, once, before anything is allocated or computed from it: type
(integers are not bools or floats, floats are numbers), range (positive, finite, below bounds no
real model comes near, so that a corrupt file cannot make the runtime allocate for minutes) and
consistency (head counts divide, head_dim even, YaRN parameters usable).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from . import constants as C
from .errors import EdgeQwenError, quote

# Upper bounds of the hyperparameters (the largest released models are far below them).
MAX_DIM = 2**16              # hidden size, head_dim x heads
MAX_FF = 2**20               # feed-forward size
MAX_HEADS = 2**12
MAX_HEAD_DIM = 2**12
MAX_LAYERS = 2**12
MAX_CONTEXT = 2**24          # trained / original context lengths
MAX_ROPE_BASE = 1e12
MIN_RMS_EPS = 1e-30
MAX_YARN_FACTOR = 1e4
MIN_YARN_BETA, MAX_YARN_BETA = 1e-3, 1e4    # beta_fast / beta_slow: HF's defaults are 32 and 1
MAX_YARN_ATTN_FACTOR = 100.0
MAX_EXPERTS = 2**12
# The architectures: dense `qwen3`, and `qwen3moe` (sparse FFN: a router picks expert_used_count
# of expert_count SwiGLU experts per token). Their keys differ only in the `{arch}.` prefix, plus
# qwen3moe's expert keys.
ARCHS = (C.ARCH, "qwen3moe")


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
    arch: str = C.ARCH
    n_expert: int = 0           # qwen3moe: experts per layer (0: dense)
    n_expert_used: int = 0      # experts each token is routed to (top-k)
    n_ff_exp: int = 0           # one expert's FFN size
    expert_weights_norm: bool = True   # renormalise the top-k weights to sum 1 (HF norm_topk_prob)

    @classmethod
    def from_metadata(cls, md: dict, source: str, n_vocab: int, arch: str = C.ARCH) -> "Qwen3Config":
        if arch != C.ARCH:       # the same keys under the architecture's own prefix
            md = {C.ARCH + k[len(arch):] if k.startswith(arch + ".") else k: v for k, v in md.items()}

        def named(key: str) -> str:
            return arch + key[len(C.ARCH):] if key.startswith(C.ARCH + ".") else key

        def bad(key, v, expected) -> EdgeQwenError:
            return EdgeQwenError(f"{source}: metadata key {named(key)} = {quote(v)}, expected {expected}")

        def get(key, kind=int, default=None, high=None):
            """An integer in 1..high, or a finite float; `default` when the key is absent."""
            if key not in md:
                if default is not None:
                    return default
                raise EdgeQwenError(f"{source}: missing metadata key {named(key)}")
            v = md[key]
            if kind is int:
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise bad(key, v, "a positive integer")
                if high is not None and v > high:
                    raise bad(key, v, f"a positive integer <= {high}")
                return v
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise bad(key, v, "a number")
            if not math.isfinite(v):
                raise bad(key, v, "a finite number")
            return float(v)

        def get_range(key, default, low, high, low_open=True):
            """A finite float in (low, high] (or [low, high] with low_open=False)."""
            v = get(key, float, default)
            if not (low < v if low_open else low <= v) or v > high:
                raise bad(key, v, f"a number in {'(' if low_open else '['}{low:g}, {high:g}]")
            return v

        n_embd = get(C.KEY_EMBEDDING_LENGTH, high=MAX_DIM)
        n_head = get(C.KEY_HEAD_COUNT, high=MAX_HEADS)
        head_dim = get(C.KEY_KEY_LENGTH, int, max(n_embd // n_head, 1), high=MAX_HEAD_DIM)
        if get(C.KEY_VALUE_LENGTH, int, head_dim, high=MAX_HEAD_DIM) != head_dim:
            raise EdgeQwenError(f"{source}: {named(C.KEY_VALUE_LENGTH)} = {md[C.KEY_VALUE_LENGTH]} differs from "
                                f"{named(C.KEY_KEY_LENGTH)} = {head_dim}")
        n_head_kv = get(C.KEY_HEAD_COUNT_KV, int, n_head, high=MAX_HEADS)
        if n_head % n_head_kv:
            raise EdgeQwenError(f"{source}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        if head_dim % 2:
            raise EdgeQwenError(f"{source}: {named(C.KEY_KEY_LENGTH)} = {head_dim} must be even for RoPE")
        if n_head * head_dim > MAX_DIM:
            raise EdgeQwenError(f"{source}: head_count x key_length = {n_head} x {head_dim} is more than {MAX_DIM}")
        n_ff = get(C.KEY_FEED_FORWARD_LENGTH, high=MAX_FF)
        n_layer = get(C.KEY_BLOCK_COUNT, high=MAX_LAYERS)
        n_ctx_train = get(C.KEY_CONTEXT_LENGTH, int, 32768, high=MAX_CONTEXT)
        # base <= 1 has no decreasing frequencies (and breaks YaRN's log(base) division)
        rope_base = get_range(C.KEY_ROPE_FREQ_BASE, 1e6, 1.0, MAX_ROPE_BASE)
        # in float32 the kernels add eps to a mean square that may be 0: it must not round to 0
        rms_eps = get_range(C.KEY_RMS_EPS, 1e-6, MIN_RMS_EPS, 1.0, low_open=False)
        moe = _experts(md, source, get, bad, named, n_ff) if arch != C.ARCH else {}
        return cls(n_vocab=n_vocab, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head,
                   n_head_kv=n_head_kv, head_dim=head_dim, n_ctx_train=n_ctx_train, rope_base=rope_base,
                   rms_eps=rms_eps, rope_scaling=_rope_scaling(md, source, get, get_range, bad), arch=arch, **moe)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward needs -> shape in numpy order (rows, cols); output.weight optional."""
        d, hd = self.n_embd, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        shapes = {C.TOKEN_EMBD: (self.n_vocab, d), C.OUTPUT_NORM: (d,)}
        per = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
               "attn_q_norm": (hd,), "attn_k_norm": (hd,), "attn_output": (d, q), "ffn_norm": (d,),
               "ffn_gate": (self.n_ff, d), "ffn_up": (self.n_ff, d), "ffn_down": (d, self.n_ff)}
        if self.n_expert:        # qwen3moe: router and the experts stacked in 3-D tensors (E, rows, cols)
            E, f = self.n_expert, self.n_ff_exp
            for part in ("ffn_gate", "ffn_up", "ffn_down"):
                del per[part]
            per.update({"ffn_gate_inp": (E, d), "ffn_gate_exps": (E, f, d), "ffn_up_exps": (E, f, d),
                        "ffn_down_exps": (E, d, f)})
        for i in range(self.n_layer):
            for part, shape in per.items():
                shapes[C.block_tensor(i, part)] = shape
        return shapes


def _experts(md: dict, source: str, get, bad, named, n_ff: int) -> dict:
    """qwen3moe's expert keys, as llama.cpp reads them (expert_feed_forward_length defaults to
    feed_forward_length / expert_used_count)."""
    n_expert = get(C.arch_key(C.K.LLM.EXPERT_COUNT), high=MAX_EXPERTS)
    n_used = get(C.arch_key(C.K.LLM.EXPERT_USED_COUNT), high=MAX_EXPERTS)
    if n_used > n_expert:
        raise EdgeQwenError(f"{source}: {named(C.arch_key(C.K.LLM.EXPERT_USED_COUNT))} = {n_used} is more than "
                            f"{named(C.arch_key(C.K.LLM.EXPERT_COUNT))} = {n_expert}")
    n_ff_exp = get(C.arch_key(C.K.LLM.EXPERT_FEED_FORWARD_LENGTH), int, max(n_ff // n_used, 1), high=MAX_FF)
    key = C.arch_key(C.K.LLM.EXPERT_WEIGHTS_NORM)
    norm = md.get(key, True)
    if not isinstance(norm, bool):
        raise bad(key, norm, "a boolean")
    return {"n_expert": n_expert, "n_expert_used": n_used, "n_ff_exp": n_ff_exp, "expert_weights_norm": norm}


def _rope_scaling(md: dict, source: str, get, get_range, bad) -> dict | None:
    """The YaRN parameters, or None. A value of 0 for an optional YaRN key means "the default"
    (as llama.cpp writes them)."""
    stype = md.get(C.KEY_ROPE_SCALING_TYPE)
    if stype is not None and not isinstance(stype, str):
        raise bad(C.KEY_ROPE_SCALING_TYPE, stype, "a string (none, yarn)")
    if stype not in (None, "none", "linear", "yarn"):
        raise EdgeQwenError(f"{source}: rope scaling type {quote(stype)} is not supported (none, yarn)")
    if stype == "linear" and get(C.KEY_ROPE_SCALING_FACTOR, float, 1.0) != 1.0:
        raise EdgeQwenError(f"{source}: linear rope scaling is not supported for qwen3")
    if stype != "yarn":
        return None

    def optional(key, low, high):
        if md.get(key, 0) == 0 and not isinstance(md.get(key), (bool, str)):
            return None
        return get_range(key, None, low, high, low_open=low == 0)

    return {
        "type": "yarn",
        # HF requires factor >= 1 (YaRN stretches the context, never shrinks it)
        "factor": get_range(C.KEY_ROPE_SCALING_FACTOR, None, 1.0, MAX_YARN_FACTOR, low_open=False),
        "orig_ctx": get(C.KEY_ROPE_SCALING_ORIG_CTX, high=MAX_CONTEXT),
        "beta_fast": optional(C.KEY_ROPE_YARN_BETA_FAST, MIN_YARN_BETA, MAX_YARN_BETA),
        "beta_slow": optional(C.KEY_ROPE_YARN_BETA_SLOW, MIN_YARN_BETA, MAX_YARN_BETA),
        "attn_factor": optional(C.KEY_ROPE_YARN_ATTN_FACTOR, 0.0, MAX_YARN_ATTN_FACTOR),
    }
