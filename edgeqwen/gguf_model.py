"""Open a Qwen3 GGUF file: validate architecture, tensors and types before any kernel runs,
and expose typed zero-copy weight views."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from . import constants as C
from .config import ARCHS, Qwen3Config
from .errors import EdgeQwenError, quote
from .gguf_reader import GGUFFile
from .quants import SUPPORTED_TYPES, Weight

# general.sampling.* defaults the runtime uses: key -> (kind, low, high, closed low end)
SAMPLING_KEYS = {C.K.General.SAMPLING_TEMP: (float, 0.0, math.inf, True),
                 C.K.General.SAMPLING_TOP_K: (int, 0, 2**31 - 1, True),
                 C.K.General.SAMPLING_TOP_P: (float, 0.0, 1.0, False),
                 C.K.General.SAMPLING_MIN_P: (float, 0.0, 1.0, True)}


class CheckedWeight(Weight):
    """A `Weight` that checks what reaches it from outside the kernels. `row` (the embedding
    lookup) refuses a row index outside the matrix -- numba does no bounds checks, so an id past
    the vocabulary would read other memory -- and a non-finite row. For the matrices whose input
    the forward does not quantize first (attention output, FFN down, the LM head), `matmul`
    refuses a non-finite input. NaN/inf weights anywhere make the hidden state non-finite; the
    Q8_0 activation quantization would otherwise turn NaN into arbitrary integers and the model
    would go on generating text from garbage."""

    def __init__(self, name, qtype, shape, raw, source: str, check_input: bool):
        super().__init__(name, qtype, shape, raw)
        self.source, self.check_input = source, check_input

    def row(self, r, out, *args, **kwargs):
        if not 0 <= r < self.rows:
            raise EdgeQwenError(f"token id {r} is outside the vocabulary (0..{self.rows - 1}) of {self.source}")
        out = super().row(r, out, *args, **kwargs)
        if not np.isfinite(out).all():      # only the prompt's own row would see it, through laundered K/V
            raise EdgeQwenError(f"{self.source}: the embedding of token {r} ({self.name} row {r}) has non-finite "
                                f"values (NaN or inf)")
        return out

    def matmul(self, x, *args, **kwargs):
        if self.check_input and not np.isfinite(x).all():
            self.refuse_non_finite()
        return super().matmul(x, *args, **kwargs)

    def refuse_non_finite(self):
        """The error for a non-finite input (also raised when the fused decode step saw one)."""
        raise EdgeQwenError(f"{self.source}: non-finite values (NaN or inf) reached {self.name}: the "
                            f"file's weights contain NaN/inf or values too large for float32")


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
    gate: Weight | None        # (ff, d); None in a qwen3moe layer
    up: Weight | None          # (ff, d)
    down: Weight | None        # (d, ff)
    moe: "ExpertWeights | None" = None    # qwen3moe: the sparse FFN instead of gate/up/down


@dataclass
class ExpertWeights:
    """A qwen3moe layer's sparse FFN: the router and, per expert e, zero-copy views of expert e's
    slice of the 3-D `ffn_{gate,up,down}_exps` tensors (the mapped bytes, never copied)."""
    router: Weight             # (n_expert, d)
    gate: list[Weight]         # n_expert x (ff_exp, d)
    up: list[Weight]           # n_expert x (ff_exp, d)
    down: list[Weight]         # n_expert x (d, ff_exp)


class ModelFile:
    """A validated Qwen3 GGUF: `config`, `metadata`, `token_embd`, `output`, `output_norm`, `layers`."""

    def __init__(self, path: str | os.PathLike):
        self.gguf = g = GGUFFile(path)
        self.path, self.metadata, src = g.path, g.metadata, str(g.path)
        arch = self.metadata.get(C.KEY_ARCH)
        if arch not in ARCHS:
            raise EdgeQwenError(f"{src}: architecture {quote(arch)} is not supported (expected "
                                f"{' or '.join(map(repr, ARCHS))})")
        if C.TOKEN_EMBD not in g.tensors:
            raise EdgeQwenError(f"{src}: missing tensor {C.TOKEN_EMBD}")
        n_vocab = g.tensors[C.TOKEN_EMBD].shape[0]
        self.config = cfg = Qwen3Config.from_metadata(self.metadata, src, n_vocab, arch)
        self._check_sampling_keys()
        self._check_vocab_size()
        for key in (C.KEY_NAME, C.KEY_CHAT_TEMPLATE):
            if key in self.metadata and not isinstance(self.metadata[key], str):
                raise EdgeQwenError(f"{src}: metadata key {key} = {quote(self.metadata[key])}, expected a string")

        blocks = {C.layer_of(name) for name in g.tensors} - {None}
        if cfg.n_layer > len(blocks):
            raise EdgeQwenError(f"{src}: {C.KEY_BLOCK_COUNT} = {cfg.n_layer}, but the file has tensors of only "
                                f"{len(blocks)} layers")
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

        self.token_embd = self._weight(C.TOKEN_EMBD, check_input=C.OUTPUT not in g.tensors)
        self.output = self._weight(C.OUTPUT, check_input=True) if C.OUTPUT in g.tensors else self.token_embd
        self.tied = C.OUTPUT not in g.tensors
        self.output_norm = self._vector(C.OUTPUT_NORM)
        self.layers = []
        for i in range(cfg.n_layer):
            b = lambda part: C.block_tensor(i, part)  # noqa: E731
            if cfg.n_expert:
                ffn = dict(gate=None, up=None, down=None, moe=ExpertWeights(
                    router=self._weight(b("ffn_gate_inp")), gate=self._experts(b("ffn_gate_exps")),
                    up=self._experts(b("ffn_up_exps")), down=self._experts(b("ffn_down_exps"), check_input=True)))
            else:
                ffn = dict(gate=self._weight(b("ffn_gate")), up=self._weight(b("ffn_up")),
                           down=self._weight(b("ffn_down"), check_input=True))
            self.layers.append(LayerWeights(
                attn_norm=self._vector(b("attn_norm")), q=self._weight(b("attn_q")), k=self._weight(b("attn_k")),
                v=self._weight(b("attn_v")), q_norm=self._vector(b("attn_q_norm")),
                k_norm=self._vector(b("attn_k_norm")), o=self._weight(b("attn_output"), check_input=True),
                ffn_norm=self._vector(b("ffn_norm")), **ffn))

    def _weight(self, name: str, check_input: bool = False) -> Weight:
        t = self.gguf.tensors[name]
        return CheckedWeight(name, t.qtype, t.shape, t.raw(), str(self.path), check_input)

    def _experts(self, name: str, check_input: bool = False) -> list[Weight]:
        """One (rows, cols) weight per expert of a 3-D tensor: row slices of its mapped bytes."""
        t = self.gguf.tensors[name]
        n, rows, cols = t.shape
        raw = t.raw()                                     # (n * rows, bytes_per_row)
        return [CheckedWeight(f"{name} (expert {e})", t.qtype, (rows, cols), raw[e * rows:(e + 1) * rows],
                              str(self.path), check_input) for e in range(n)]

    def _vector(self, name: str) -> np.ndarray:
        # Norm weights are tiny: copy them into writeable, aligned float32 arrays, and check them
        # (a NaN norm weight would reach the quantized matmuls, which do not propagate NaN).
        v = np.array(self.gguf.tensors[name].raw().view(np.float32).ravel(), dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise EdgeQwenError(f"{self.path}: tensor {name} has {bad.size} non-finite values "
                                f"({v[bad[0]]} at index {bad[0]})")
        return v

    def _check_sampling_keys(self) -> None:
        """general.sampling.* (the default sampling): numbers in the range SamplingParams accepts."""
        for key, (kind, low, high, closed) in SAMPLING_KEYS.items():
            if key not in self.metadata:
                continue
            v = self.metadata[key]
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
            ok = ok and math.isfinite(v) and (low <= v if closed else low < v) and v <= high
            if not ok:
                what = "an integer" if kind is int else "a number"
                raise EdgeQwenError(f"{self.path}: metadata key {key} = {quote(v)}, expected {what} in "
                                    f"{'[' if closed else '('}{low:g}, {high:g}]")

    def _check_vocab_size(self) -> None:
        """The tokenizer's token list, the embedding's rows (and the LM head's, checked with the
        shapes) must agree: any token id the tokenizer makes must have an embedding row."""
        tokens = self.metadata.get(C.KEY_TOK_LIST)
        n = self.config.n_vocab
        if isinstance(tokens, list) and len(tokens) != n:
            raise EdgeQwenError(f"{self.path}: the tokenizer has {len(tokens)} tokens ({C.KEY_TOK_LIST}) but "
                                f"{C.TOKEN_EMBD} has {n} rows")

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.gguf.tensors.values():
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
        return counts
