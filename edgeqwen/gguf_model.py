"""Open a Qwen3 GGUF file: validate architecture, tensors and types before any kernel runs,
and expose typed zero-copy weight views."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import constants as C
from .config import Qwen3Config
from .errors import EdgeQwenError
from .gguf_reader import GGUFFile
from .quants import SUPPORTED_TYPES, Weight


@dataclass
class LayerWeights:
    attn_norm: np.ndarray      # (d,) f32
    q: Weight                  # (n_head*hd, d)
    k: Weight                  # (n_kv*hd, d)
    v: Weight                  # (n_kv*hd, d)
    q_norm: np.ndarray         # (hd,) f32
    k_norm: np.ndarray         # (hd,) f32
    o: Weight                  # (d, n_head*hd)
    ffn_norm: np.ndarray       # (d,) f32
    gate: Weight               # (ff, d)
    up: Weight                 # (ff, d)
    down: Weight               # (d, ff)


class ModelFile:
    """A validated Qwen3 GGUF: `config`, `metadata`, `token_embd`, `output`, `output_norm`, `layers`."""

    def __init__(self, path: str | os.PathLike):
        self.gguf = g = GGUFFile(path)
        self.path, self.metadata, src = g.path, g.metadata, str(g.path)
        arch = self.metadata.get(C.KEY_ARCH)
        if arch != C.ARCH:
            raise EdgeQwenError(f"{src}: architecture {arch!r} is not supported (expected {C.ARCH!r})")
        if C.TOKEN_EMBD not in g.tensors:
            raise EdgeQwenError(f"{src}: missing tensor {C.TOKEN_EMBD}")
        n_vocab = g.tensors[C.TOKEN_EMBD].shape[0]
        self.config = cfg = Qwen3Config.from_metadata(self.metadata, src, n_vocab)

        want = cfg.tensor_shapes()
        if C.OUTPUT in g.tensors:
            want[C.OUTPUT] = (n_vocab, cfg.n_embd)
        for name, shape in want.items():
            t = g.tensors.get(name)
            if t is None:
                raise EdgeQwenError(f"{src}: missing tensor {name} (block_count={cfg.n_layer})")
            if t.shape != shape:
                raise EdgeQwenError(f"{src}: tensor {name} has shape {list(reversed(t.shape))}, "
                                    f"expected {list(reversed(shape))} from the metadata")
        bad = {n: t.qtype.name for n, t in g.tensors.items() if n in want and t.qtype not in SUPPORTED_TYPES}
        if bad:
            listed = ", ".join(f"{n} ({q})" for n, q in list(bad.items())[:6])
            more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
            raise EdgeQwenError(f"{src}: unsupported tensor types: {listed}{more} "
                                f"(supported: {', '.join(t.name for t in SUPPORTED_TYPES)})")
        for name, shape in want.items():
            if len(shape) == 1 and g.tensors[name].qtype.name != "F32":
                raise EdgeQwenError(f"{src}: norm tensor {name} has type {g.tensors[name].qtype.name}, expected F32")

        self.token_embd = self._weight(C.TOKEN_EMBD)
        self.output = self._weight(C.OUTPUT) if C.OUTPUT in g.tensors else self.token_embd
        self.tied = C.OUTPUT not in g.tensors
        self.output_norm = self._vector(C.OUTPUT_NORM)
        self.layers = []
        for i in range(cfg.n_layer):
            b = lambda part: C.block_tensor(i, part)  # noqa: E731
            self.layers.append(LayerWeights(
                attn_norm=self._vector(b("attn_norm")), q=self._weight(b("attn_q")), k=self._weight(b("attn_k")),
                v=self._weight(b("attn_v")), q_norm=self._vector(b("attn_q_norm")),
                k_norm=self._vector(b("attn_k_norm")), o=self._weight(b("attn_output")),
                ffn_norm=self._vector(b("ffn_norm")), gate=self._weight(b("ffn_gate")),
                up=self._weight(b("ffn_up")), down=self._weight(b("ffn_down"))))

    def _weight(self, name: str) -> Weight:
        t = self.gguf.tensors[name]
        return Weight(name, t.qtype, t.shape, t.raw())

    def _vector(self, name: str) -> np.ndarray:
        # Norm weights are tiny: copy them into writeable, aligned float32 arrays.
        return np.array(self.gguf.tensors[name].raw().view(np.float32).ravel(), dtype=np.float32)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.gguf.tensors.values():
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return counts
