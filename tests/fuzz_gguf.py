"""A deterministic corpus of mutated GGUF files for `tests/test_fuzz.py`.

The base is a small valid Qwen3 model (2 layers, hidden 64, a 288-token byte-level vocabulary so
that loading takes milliseconds, a mix of Q8_0, Q4_0, F16 and F32 tensors, an untied LM head and
Qwen3's chat template). It is kept as plain data (`Spec`) and written by `serialize`, which writes
whatever it is told -- wrong value types, counts that do not match, offsets anywhere -- unlike
gguf-py's writer. `corpus(base)` yields (name, bytes, commands) for every mutation: header fields,
every hyperparameter and tokenizer key with values of the wrong type / range, tensor infos (dims,
types, offsets, names), tensor data (NaN / inf norms and scales), truncations at every region
boundary, nested arrays, hostile chat templates, and seeded random byte flips.

    python tests/fuzz_gguf.py OUT_DIR      # writes the corpus (and base.gguf) to OUT_DIR
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgeqwen import constants as C
from edgeqwen.chat_template import builtin_chat_template

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType
SCALAR_FMT = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
              VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q",
              VT.FLOAT64: "<d"}

HIDDEN, FF, LAYERS, HEADS, KV_HEADS, HEAD_DIM, CTX = 64, 128, 2, 4, 2, 16, 256
SPECIAL = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4), ("</think>", 4),
           ("<tool_call>", 4), ("</tool_call>", 4)]
MERGE_WORDS = ["the", "he", "th", "in", "an", "and", "on", "er", "re", "ing", "is", "it", "at", "or", "en"]
N_VOCAB = 288

# The commands each file goes through (the driver's `{path}` is the file).
INFO_RUN = (("info", "{path}"),
            ("run", "-m", "{path}", "-p", "Once upon a time", "-n", "2", "-t", "1", "--seed", "0"))
CHAT = ("chat", "-m", "{path}", "--messages", "{messages}", "-n", "2", "-t", "1", "--seed", "0")


@dataclass
class Spec:
    """A GGUF file as data: kv = [(key, value type, value, array element type)], tensors =
    [(name, GGUF dims (cols first), type id, offset relative to the data section)]."""
    kv: list
    tensors: list
    data: bytes
    magic: bytes = b"GGUF"
    version: int = 3
    n_tensors: int | None = None       # None: len(tensors)
    n_kv: int | None = None            # None: len(kv)
    align: int = 32                    # where the data section starts

    def get(self, key):
        return next((e for e in self.kv if e[0] == key), None)

    def set(self, key, vtype, value, sub=None):
        entry = (key, vtype, value, sub)
        for i, e in enumerate(self.kv):
            if e[0] == key:
                self.kv[i] = entry
                return
        self.kv.append(entry)

    def drop(self, key):
        self.kv = [e for e in self.kv if e[0] != key]

    def tensor(self, name) -> int:
        return next(i for i, t in enumerate(self.tensors) if t[0] == name)

    # -- changed copies (the corpus is built from these)
    def but(self, **fields) -> "Spec":
        """A copy with dataclass fields replaced (magic, version, n_tensors, kv, tensors, data...)."""
        return dataclasses.replace(copy.deepcopy(self), **fields)

    def with_key(self, key, value) -> "Spec":
        """A copy with `key` set to `value`, in a value type that can hold it (auto_type)."""
        return self.with_entry(key, *auto_type(value))

    def with_entry(self, key, vtype, value, sub=None) -> "Spec":
        s = copy.deepcopy(self)
        s.set(key, vtype, value, sub)
        return s

    def with_keys(self, values: dict) -> "Spec":
        s = self
        for key, value in values.items():
            s = s.with_key(key, value)
        return s

    def without_key(self, key) -> "Spec":
        return self.but(kv=[e for e in self.kv if e[0] != key])

    def plus_kv(self, key, vtype, value, sub=None) -> "Spec":
        """A copy with one more key/value entry at the end (even a duplicate key)."""
        return self.but(kv=self.kv + [(key, vtype, value, sub)])

    def with_tensor(self, name, dims=None, ttype=None, offset=None, new_name=None) -> "Spec":
        i = self.tensor(name)
        n, d, t, o = self.tensors[i]
        tensors = list(self.tensors)
        tensors[i] = (n if new_name is None else new_name, d if dims is None else dims,
                      t if ttype is None else ttype, o if offset is None else offset)
        return self.but(tensors=tensors)

    def plus_tensor(self, name, dims, ttype, offset) -> "Spec":
        return self.but(tensors=self.tensors + [(name, dims, ttype, offset)])

    def without_tensor(self, name) -> "Spec":
        return self.but(tensors=[t for t in self.tensors if t[0] != name])


# ---------------------------------------------------------------- writing

def _str(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(b)) + b


class Raw(bytes):
    """A value's payload written as is (e.g. arrays nested deeper than Python's recursion limit)."""


def _value(vtype: int, value, sub=None) -> bytes:
    if isinstance(value, Raw):
        return value
    if vtype in SCALAR_FMT:
        return struct.pack(SCALAR_FMT[vtype], value)
    if vtype == VT.STRING:
        return _str(value)
    if vtype == VT.ARRAY:
        out = struct.pack("<IQ", sub, len(value))
        return out + b"".join(_value(sub, v) for v in value)
    return b""                          # an unknown type id: no payload


def serialize(s: Spec) -> bytes:
    out = [s.magic, struct.pack("<I", s.version),
           struct.pack("<QQ", len(s.tensors) if s.n_tensors is None else s.n_tensors,
                       len(s.kv) if s.n_kv is None else s.n_kv)]
    for key, vtype, value, sub in s.kv:
        out += [_str(key), struct.pack("<I", vtype), _value(vtype, value, sub)]
    for name, dims, ttype, off in s.tensors:
        out += [_str(name), struct.pack("<I", len(dims)), b"".join(struct.pack("<Q", d) for d in dims),
                struct.pack("<IQ", ttype, off)]
    head = b"".join(out)
    return head + b"\0" * (-len(head) % s.align) + s.data


def auto_type(value) -> tuple[int, object, int | None]:
    """A value type that can hold `value` (to put values of the wrong kind into a key)."""
    if isinstance(value, bool):
        return VT.BOOL, value, None
    if isinstance(value, int):
        if value < 0:
            return (VT.INT32 if value >= -2**31 else VT.INT64), value, None
        return (VT.UINT32 if value < 2**32 else VT.UINT64), value, None
    if isinstance(value, float):
        return VT.FLOAT32 if (not math.isfinite(value) or abs(value) < 3e38) else VT.FLOAT64, value, None
    if isinstance(value, str):
        return VT.STRING, value, None
    if isinstance(value, list):
        sub = auto_type(value[0])[0] if value else VT.INT32
        return VT.ARRAY, value, sub
    raise TypeError(value)


# ---------------------------------------------------------------- the base model

def _vocab() -> tuple[list[str], list[int], list[str]]:
    from edgeqwen.tokenizer import _byte_alphabet
    alphabet = sorted(_byte_alphabet(), key=lambda ch: _byte_alphabet()[ch])
    tokens, types, merges = list(alphabet), [1] * 256, []
    for w in MERGE_WORDS + ["Ġ" + w for w in MERGE_WORDS[:6]]:
        for i in range(2, len(w) + 1):
            tok = w[:i]
            if tok not in tokens:
                merges.append(f"{w[:i - 1]} {w[i - 1]}")
                tokens.append(tok)
                types.append(1)
    for text, ty in SPECIAL:
        tokens.append(text)
        types.append(ty)
    while len(tokens) < N_VOCAB:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(5)
    assert len(tokens) == N_VOCAB, len(tokens)
    return tokens, types, merges


def base_spec(seed: int = 0) -> Spec:
    """The valid model every mutation starts from."""
    rng = np.random.default_rng(seed)
    tokens, types, merges = _vocab()
    tid = {t: i for i, t in enumerate(tokens)}
    s = Spec(kv=[], tensors=[], data=b"")
    arch = C.ARCH
    for key, value in [
        (C.KEY_ARCH, arch), (C.KEY_NAME, "fuzz base"),
        (C.KEY_BLOCK_COUNT, LAYERS), (C.KEY_CONTEXT_LENGTH, CTX), (C.KEY_EMBEDDING_LENGTH, HIDDEN),
        (C.KEY_FEED_FORWARD_LENGTH, FF), (C.KEY_HEAD_COUNT, HEADS), (C.KEY_HEAD_COUNT_KV, KV_HEADS),
        (C.KEY_ROPE_FREQ_BASE, 1e6), (C.KEY_RMS_EPS, 1e-6), (C.KEY_KEY_LENGTH, HEAD_DIM),
        (C.KEY_VALUE_LENGTH, HEAD_DIM), (C.KEY_FILE_TYPE, 7), (gguf.Keys.General.QUANTIZATION_VERSION, 2),
        (C.KEY_TOK_MODEL, "gpt2"), (C.KEY_TOK_PRE, "qwen2"),
    ]:
        s.set(key, *auto_type(value))
    s.set(C.KEY_TOK_LIST, VT.ARRAY, tokens, VT.STRING)
    s.set(C.KEY_TOK_TYPE, VT.ARRAY, types, VT.INT32)
    s.set(C.KEY_TOK_MERGES, VT.ARRAY, merges, VT.STRING)
    s.set(C.KEY_TOK_EOS, VT.UINT32, tid["<|im_end|>"])
    s.set(C.KEY_TOK_PAD, VT.UINT32, tid["<|endoftext|>"])
    s.set(C.KEY_TOK_BOS, VT.UINT32, tid["<|endoftext|>"])
    s.set(C.KEY_TOK_ADD_BOS, VT.BOOL, False)
    s.set(C.KEY_CHAT_TEMPLATE, VT.STRING, builtin_chat_template())

    blobs = []

    def add(name, arr, qtype):
        arr = np.asarray(arr, np.float32)
        if qtype == QT.F32:
            raw = arr.astype("<f4").tobytes()
        elif qtype == QT.F16:
            raw = arr.astype("<f2").tobytes()
        else:
            raw = gguf.quants.quantize(arr, qtype).tobytes()
        off = sum(len(b) for b in blobs)
        s.tensors.append((name, list(reversed(arr.shape)), int(qtype), off))
        blobs.append(raw + b"\0" * (-len(raw) % 32))

    def lin(rows, cols):
        return rng.standard_normal((rows, cols)) / math.sqrt(cols)

    def norm(n):
        return 1 + 0.1 * rng.standard_normal(n)

    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    add(C.TOKEN_EMBD, rng.standard_normal((N_VOCAB, HIDDEN)), QT.Q8_0)
    for i, mat in enumerate((QT.Q8_0, QT.Q4_0)):
        b = lambda part: C.block_tensor(i, part)  # noqa: E731
        add(b("attn_norm"), norm(HIDDEN), QT.F32)
        add(b("attn_q"), lin(q, HIDDEN), mat)
        add(b("attn_k"), lin(kv, HIDDEN), mat)
        add(b("attn_v"), lin(kv, HIDDEN), mat)
        add(b("attn_q_norm"), norm(HEAD_DIM), QT.F32)
        add(b("attn_k_norm"), norm(HEAD_DIM), QT.F32)
        add(b("attn_output"), lin(HIDDEN, q), mat)
        add(b("ffn_norm"), norm(HIDDEN), QT.F32)
        add(b("ffn_gate"), lin(FF, HIDDEN), mat)
        add(b("ffn_up"), lin(FF, HIDDEN), mat)
        add(b("ffn_down"), lin(HIDDEN, FF), QT.F16 if i == 1 else mat)
    add(C.OUTPUT_NORM, norm(HIDDEN), QT.F32)
    add(C.OUTPUT, lin(N_VOCAB, HIDDEN), QT.Q8_0)
    s.data = b"".join(blobs)
    return s


# ---------------------------------------------------------------- mutations

def _tensor_bytes(s: Spec, name: str) -> tuple[int, int]:
    i = s.tensor(name)
    _, dims, ttype, off = s.tensors[i]
    block, size = gguf.GGML_QUANT_SIZES[QT(ttype)]
    return off, math.prod(dims) // block * size


def _poke_f32(s: Spec, name: str, index: int, value: float) -> Spec:
    """A copy with one float32 value of tensor `name` replaced."""
    off, _ = _tensor_bytes(s, name)
    data = bytearray(s.data)
    struct.pack_into("<f", data, off + 4 * index, value)
    return s.but(data=bytes(data))


def _poke_f16_scale(s: Spec, name: str, row: int, block: int, value: float) -> Spec:
    """A copy with the float16 scale of one Q8_0 / Q4_0 block replaced (its first 2 bytes)."""
    i = s.tensor(name)
    _, dims, ttype, off = s.tensors[i]
    bsz = gguf.GGML_QUANT_SIZES[QT(ttype)][1]
    row_bytes = dims[0] // 32 * bsz
    data = bytearray(s.data)
    data[off + row * row_bytes + block * bsz: off + row * row_bytes + block * bsz + 2] = \
        np.array([value], "<f2").tobytes()
    return s.but(data=bytes(data))


INT_KEYS = [C.KEY_BLOCK_COUNT, C.KEY_CONTEXT_LENGTH, C.KEY_EMBEDDING_LENGTH, C.KEY_FEED_FORWARD_LENGTH,
            C.KEY_HEAD_COUNT, C.KEY_HEAD_COUNT_KV, C.KEY_KEY_LENGTH, C.KEY_VALUE_LENGTH]
INT_VALUES = [0, 1, 3, -1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, 1.5, float("nan"), "64", True, [64]]
FLOAT_KEYS = [C.KEY_RMS_EPS, C.KEY_ROPE_FREQ_BASE]
FLOAT_VALUES = [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 1e38, 1e300, "1e6", True, [1.0]]
TOKEN_ID_KEYS = [C.KEY_TOK_EOS, C.KEY_TOK_BOS, C.KEY_TOK_PAD, C.KEY_TOK_EOT, C.KEY_TOK_EOM]
TOKEN_ID_VALUES = [-1, N_VOCAB, N_VOCAB + 5, 2**32 - 1, 2**64 - 1, "x", 1.5, True]
SAMPLING = {gguf.Keys.General.SAMPLING_TEMP: ["hot", float("nan"), -1.0, 1e30, float("inf"), [1.0]],
            gguf.Keys.General.SAMPLING_TOP_K: ["x", -1, 2**63 - 1, 2**64 - 1, 1.5],
            gguf.Keys.General.SAMPLING_TOP_P: [2.0, float("nan"), "x", -0.5, 0.0],
            gguf.Keys.General.SAMPLING_MIN_P: [-1.0, 2.0, "x", float("nan")]}
YARN = [  # (factor, orig_ctx, extra keys)
    (4.0, 64, {}), (0.0, 64, {}), (-1.0, 64, {}), (float("nan"), 64, {}), (float("inf"), 64, {}),
    ("4", 64, {}), (4.0, 0, {}), (4.0, 2**63 - 1, {}), (4.0, "x", {}), (1e-30, 64, {}), (1e30, 64, {}),
    (4.0, 64, {C.KEY_ROPE_YARN_BETA_FAST: float("nan")}), (4.0, 64, {C.KEY_ROPE_YARN_BETA_SLOW: -1.0}),
    (4.0, 64, {C.KEY_ROPE_YARN_ATTN_FACTOR: float("inf")}), (4.0, 64, {C.KEY_ROPE_YARN_ATTN_FACTOR: "x"}),
    (4.0, 64, {C.KEY_ROPE_YARN_BETA_FAST: 1.0, C.KEY_ROPE_YARN_BETA_SLOW: 1.0}),
    (4.0, 64, {C.KEY_ROPE_YARN_BETA_FAST: 1e-300}),
]
TENSORS = [C.TOKEN_EMBD, C.OUTPUT_NORM, C.OUTPUT, "blk.0.attn_q.weight", "blk.0.attn_q_norm.weight",
           "blk.1.ffn_down.weight", "blk.1.attn_k.weight"]
HOSTILE_TEMPLATES = {
    "range": "{% for i in range(10**9) %}x{% endfor %}",
    "range_overflow": "{{ range(10**30) | list | length }}",
    "recursive_macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "div_zero": "{{ 1 // 0 }}",
    "nested_loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(10**6) }}",
    "big_string": "{{ 'x' * 10**9 }}",
    "big_string_growth": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}{{ ns.s }}",
    "raise_many_lines": "{{ raise_exception('line\\n' * 5000) }}",
    "raise_control": "{{ raise_exception('\\x1b[31mred\\x07' + 'y' * 10000) }}",
    "syntax": "{% for %}",
    "syntax_control": "{% \x1b[2J %}" + "z" * 5000,
    "undefined_attr": "{{ messages.__class__.__mro__ }}",
    "globals": "{{ raise_exception.__globals__ }}",
    "pow": "{{ 10 ** 10 ** 10 }}",
    "format": "{{ '%s' % (('x',) * 10) }}",
    "empty": "",
    "huge_int": "{{ 2 ** 100000 }}",
    "big_join": "{{ ['ab'] * 10**8 | join }}",
    "deep_filter": "{{ messages" + " | list" * 2000 + " }}",
}


def corpus(base: Spec, seed: int = 12):
    """Yield (name, file bytes, commands) for every mutated file; deterministic."""
    clean = serialize(base)

    def out(name, spec_or_bytes, commands=INFO_RUN):
        data = spec_or_bytes if isinstance(spec_or_bytes, bytes) else serialize(spec_or_bytes)
        return name, data, commands

    yield out("base", clean)

    # -- header
    for magic in (b"GGUG", b"FUGG", b"\0\0\0\0"):
        yield out(f"magic_{magic!r}", base.but(magic=magic))
    for v in (0, 1, 2, 4, 2**32 - 1):
        yield out(f"version_{v}", base.but(version=v))
    n_t, n_kv = len(base.tensors), len(base.kv)
    for v in (0, 1, n_t - 1, n_t + 1, 2**20, 2**63 - 1, 2**64 - 1):
        yield out(f"n_tensors_{v}", base.but(n_tensors=v))
    for v in (0, 1, n_kv - 1, n_kv + 1, 2**20, 2**64 - 1):
        yield out(f"n_kv_{v}", base.but(n_kv=v))

    # -- hyperparameters: wrong values and types, missing
    for keys, values in ((INT_KEYS, INT_VALUES), (FLOAT_KEYS, FLOAT_VALUES)):
        for key in keys:
            for v in values:
                yield out(f"{key}={v!r}", base.with_key(key, v))
    for key in INT_KEYS + FLOAT_KEYS + [C.KEY_ARCH, C.KEY_TOK_LIST, C.KEY_TOK_TYPE, C.KEY_TOK_MERGES,
                                        C.KEY_TOK_MODEL, C.KEY_TOK_PRE, C.KEY_TOK_EOS, C.KEY_CHAT_TEMPLATE]:
        yield out(f"drop_{key}", base.without_key(key))
    for v in ("llama", "", "qwen3\0", 3, ["qwen3"]):
        yield out(f"arch={v!r}", base.with_key(C.KEY_ARCH, v))
    for key, values in SAMPLING.items():
        for v in values:
            yield out(f"{key}={v!r}", base.with_key(key, v))
    for i, (factor, orig, extra) in enumerate(YARN):
        keys = {C.KEY_ROPE_SCALING_TYPE: "yarn", C.KEY_ROPE_SCALING_FACTOR: factor,
                C.KEY_ROPE_SCALING_ORIG_CTX: orig, **extra}
        yield out(f"yarn_{i}_factor={factor!r}_orig={orig!r}", base.with_keys(keys))
    for stype in ("linear", "foo", 5, "yarn"):
        yield out(f"rope_scaling_type={stype!r}", base.with_key(C.KEY_ROPE_SCALING_TYPE, stype))
    yield out("rope_linear_factor_str", base.with_keys({C.KEY_ROPE_SCALING_TYPE: "linear",
                                                        C.KEY_ROPE_SCALING_FACTOR: "x"}))
    for v in (0, 3, 1, 64, 2**31, "32", -32):
        valid = isinstance(v, int) and v > 0 and not v & (v - 1) and v <= 64
        s = base.with_key(gguf.Keys.General.ALIGNMENT, v)
        yield out(f"alignment={v!r}", s.but(align=v) if valid else s)

    # -- tokenizer metadata
    tokens = base.get(C.KEY_TOK_LIST)[2]
    types = base.get(C.KEY_TOK_TYPE)[2]
    merges = base.get(C.KEY_TOK_MERGES)[2]
    for key in TOKEN_ID_KEYS:
        for v in TOKEN_ID_VALUES:
            yield out(f"{key}={v!r}", base.with_key(key, v))
    variants = {
        "tokens_empty": (C.KEY_TOK_LIST, VT.ARRAY, [], VT.STRING),
        "tokens_ints": (C.KEY_TOK_LIST, VT.ARRAY, list(range(N_VOCAB)), VT.INT32),
        "tokens_short": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1], VT.STRING),
        "tokens_long": (C.KEY_TOK_LIST, VT.ARRAY, tokens + ["extra"], VT.STRING),
        "tokens_dup": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + [tokens[0]], VT.STRING),
        "tokens_dup_special": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + ["<|im_end|>"], VT.STRING),
        "tokens_str": (C.KEY_TOK_LIST, VT.STRING, "abc", None),
        "tokens_huge_token": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + ["x" * 100_000], VT.STRING),
        "tokens_control_chars": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + ["\x1b[2J\n\r"], VT.STRING),
        "tokens_bad_utf8": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + [b"\xff\xfe\xc3"], VT.STRING),
        "tokens_empty_string": (C.KEY_TOK_LIST, VT.ARRAY, tokens[:-1] + [""], VT.STRING),
        "types_short": (C.KEY_TOK_TYPE, VT.ARRAY, types[:-1], VT.INT32),
        "types_unknown": (C.KEY_TOK_TYPE, VT.ARRAY, types[:-1] + [99], VT.INT32),
        "types_negative": (C.KEY_TOK_TYPE, VT.ARRAY, [-1] + types[1:], VT.INT32),
        "types_float": (C.KEY_TOK_TYPE, VT.ARRAY, [float(t) for t in types], VT.FLOAT32),
        "types_str": (C.KEY_TOK_TYPE, VT.ARRAY, [str(t) for t in types], VT.STRING),
        "types_all_unused": (C.KEY_TOK_TYPE, VT.ARRAY, [5] * N_VOCAB, VT.INT32),
        "types_all_control": (C.KEY_TOK_TYPE, VT.ARRAY, [3] * N_VOCAB, VT.INT32),
        "merges_empty": (C.KEY_TOK_MERGES, VT.ARRAY, [], VT.STRING),
        "merges_one_word": (C.KEY_TOK_MERGES, VT.ARRAY, ["ab"], VT.STRING),
        "merges_ints": (C.KEY_TOK_MERGES, VT.ARRAY, [1, 2], VT.INT32),
        "merges_unknown": (C.KEY_TOK_MERGES, VT.ARRAY, merges + ["zzz qqq"], VT.STRING),
        "merges_three": (C.KEY_TOK_MERGES, VT.ARRAY, merges + ["a b c"], VT.STRING),
        "merges_many": (C.KEY_TOK_MERGES, VT.ARRAY, merges * 20_000, VT.STRING),
        "model_bert": (C.KEY_TOK_MODEL, VT.STRING, "bert", None),
        "model_int": (C.KEY_TOK_MODEL, VT.UINT32, 7, None),
        "pre_llama3": (C.KEY_TOK_PRE, VT.STRING, "llama-bpe", None),
        "add_bos_true": (C.KEY_TOK_ADD_BOS, VT.BOOL, True, None),
        "add_bos_str": (C.KEY_TOK_ADD_BOS, VT.STRING, "yes", None),
        "template_int": (C.KEY_CHAT_TEMPLATE, VT.UINT32, 5, None),
        "name_control": (C.KEY_NAME, VT.STRING, "\x1b[31m" + "n" * 5000 + "\n", None),
        "name_int": (C.KEY_NAME, VT.INT32, -7, None),
    }
    for name, entry in variants.items():
        yield out(name, base.with_entry(*entry))
    for i in range(N_VOCAB - 7, N_VOCAB):
        yield out(f"eos_unused_{i}", base.with_entry(C.KEY_TOK_EOS, VT.UINT32, i))

    # -- keys: duplicates, unknown types, nesting
    yield out("dup_key", base.plus_kv(*base.kv[2]))
    yield out("dup_key_block_count", base.plus_kv(C.KEY_BLOCK_COUNT, VT.UINT32, 2**32 - 1))
    yield out("kv_type_13", base.plus_kv("weird.type", 13, None))
    yield out("kv_elem_type_13", base.plus_kv("weird.elem", VT.ARRAY, [], 13))
    yield out("kv_elem_type_13_one", base.plus_kv("weird.elem2", VT.ARRAY, [1], 13))
    yield out("kv_long_key", base.plus_kv("\x1b[2J" + "k" * 10000, VT.UINT32, 1))
    yield out("kv_empty_key", base.plus_kv("", VT.UINT32, 1))
    for depth in (3, 200, 5000):
        nested = Raw(struct.pack("<IQ", VT.ARRAY, 1) * depth + struct.pack("<IQ", VT.UINT8, 0))
        yield out(f"nested_array_{depth}", base.plus_kv("weird.nested", VT.ARRAY, nested))

    # -- tensor infos
    for name in TENSORS:
        i = base.tensor(name)
        _, dims, ttype, off = base.tensors[i]
        cols = dims[0]
        rows = dims[1] if len(dims) > 1 else None
        variants = {"rows0": [cols, 0] if rows else [0], "cols0": [0] + dims[1:], "rows1": [cols, 1] if rows else [1],
                    "rows_plus1": [cols, rows + 1] if rows else [cols + 32], "swap": list(reversed(dims)),
                    "ndims0": [], "ndims3": dims + [1], "ndims3b": dims + [2], "ndims5": dims + [1, 1, 1],
                    "huge": [cols, 2**40] if rows else [2**40], "huge64": [2**63, 2**63], "cols33": [33] + dims[1:]}
        for vname, d in variants.items():
            yield out(f"tensor_{name}_{vname}", base.with_tensor(name, dims=d))
        for t in (99, int(QT.IQ2_XS), int(QT.F16), int(QT.F32), int(QT.Q4_0), int(QT.Q8_0), int(QT.Q6_K), 2**32 - 1):
            if t != ttype:
                yield out(f"tensor_{name}_type_{t}", base.with_tensor(name, ttype=t))
        other = base.tensors[(i + 1) % len(base.tensors)][3]
        for oname, o in (("plus1", off + 1), ("plus32", off + 32), ("minus32", off - 32 if off >= 32 else off + 64),
                         ("other", other), ("eof", len(base.data)), ("huge", 2**63), ("max", 2**64 - 1),
                         ("end_minus1", len(base.data) - _tensor_bytes(base, name)[1] + 1)):
            yield out(f"tensor_{name}_offset_{oname}", base.with_tensor(name, offset=o))
        yield out(f"tensor_{name}_dup_name", base.with_tensor(name, new_name=base.tensors[0][0]))
    yield out("tensor_dup_entry", base.plus_tensor(*base.tensors[3]))
    yield out("tensor_extra_aliasing", base.plus_tensor("extra.weight", [32], int(QT.F32), 0))
    yield out("tensor_long_name", base.plus_tensor("\x1b[2J" + "t" * 10000, [32], int(QT.F32), 0))
    yield out("tensor_stray_layer", base.plus_tensor("blk.7.attn_q.weight", [32], int(QT.F32), 0))
    for name in (C.OUTPUT, C.TOKEN_EMBD, C.OUTPUT_NORM, "blk.1.ffn_up.weight"):
        yield out(f"tensor_drop_{name}", base.without_tensor(name))
    yield out("tensor_all_offset_0", base.but(tensors=[(n, d, t, 0) for n, d, t, _ in base.tensors]))
    # embedding / output / tokenizer row counts that disagree
    cols = base.tensors[base.tensor(C.TOKEN_EMBD)][1][0]
    for rows in (1, 100, N_VOCAB - 1, 1000):
        yield out(f"vocab_rows_{rows}",
                  base.with_tensor(C.TOKEN_EMBD, dims=[cols, rows]).with_tensor(C.OUTPUT, dims=[cols, rows]))
        yield out(f"vocab_rows_tied_{rows}",
                  base.without_tensor(C.OUTPUT).with_tensor(C.TOKEN_EMBD, dims=[cols, min(rows, N_VOCAB)]))

    # -- tensor data: non-finite and extreme values
    for name in (C.OUTPUT_NORM, "blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "blk.0.attn_q_norm.weight",
                 "blk.1.attn_k_norm.weight"):
        for v in (float("nan"), float("inf"), float("-inf"), 3e38):
            yield out(f"data_{name}_{v}", _poke_f32(base, name, 3, v))
    for name, row in ((C.TOKEN_EMBD, 79), (C.OUTPUT, 5), ("blk.0.attn_v.weight", 1), ("blk.1.attn_q.weight", 0),
                      ("blk.0.ffn_up.weight", 7)):
        for v in (float("nan"), float("inf")):
            yield out(f"data_{name}_scale_{v}", _poke_f16_scale(base, name, row, 0, v))
    off, n = _tensor_bytes(base, "blk.1.ffn_down.weight")
    yield out("data_ffn_down_f16_all_nan",
              base.but(data=base.data[:off] + np.full(n // 2, np.nan, "<f2").tobytes() + base.data[off + n:]))
    yield out("data_all_zero", base.but(data=bytes(len(base.data))))

    # -- hostile chat templates, through `chat --messages`
    for tname, src in HOSTILE_TEMPLATES.items():
        yield out(f"template_{tname}", base.with_entry(C.KEY_CHAT_TEMPLATE, VT.STRING, src), (CHAT,))
    yield out("template_base_chat", base, (CHAT,))

    # -- truncation at every region boundary and inside each region
    n_head = len(clean) - len(base.data)
    cuts = {0, 3, 4, 8, 16, 23, 24, 25, 40, 100, 1000, n_head // 2, n_head - 1, n_head, n_head + 1,
            len(clean) - 1, len(clean) - 100, len(clean) // 2, len(clean) - 33}
    for i in range(10):
        cuts.add(n_head + i * len(base.data) // 10)
    for c in sorted(x for x in cuts if 0 <= x < len(clean)):
        yield out(f"truncate_{c}", clean[:c])
    yield out("append_garbage", clean + b"\xff" * 1000)

    # -- seeded random byte flips in the header region (metadata and tensor infos)
    rng = random.Random(seed)
    info_start = n_head - sum(len(_str(t[0])) + 4 + 8 * len(t[1]) + 12 for t in base.tensors) - (-n_head % 32)
    for k in range(80):
        b = bytearray(clean)
        lo = 0 if k % 2 else max(24, info_start - 64)   # half anywhere in the header, half in the tensor infos
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(lo, n_head)
            b[p] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256), b[p] ^ (1 << rng.randrange(8))))
        yield out(f"flip_{k}", bytes(b))


def write_corpus(out_dir: Path) -> list[tuple[str, Path, tuple]]:
    """Write every corpus file to out_dir; returns (name, path, commands) in corpus order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, data, commands) in enumerate(corpus(base_spec())):
        path = out_dir / f"{i:04d}.gguf"
        path.write_bytes(data)
        files.append((name, path, commands))
    return files


if __name__ == "__main__":
    fs = write_corpus(Path(sys.argv[1]))
    print(f"{len(fs)} files in {sys.argv[1]}")
