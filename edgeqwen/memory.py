"""Expected resident memory of a run, computed from the model's shapes (no allocation):

  weights   the GGUF file. It stays in one read-only mmap (`Weight` arrays are views of it, never
            copies) and becomes resident as it is read: at most the file's size.
  KV cache  position-major (kv_cache.py): layers x ctx x kv_heads x head_dim values for K and for V
            at 4 (f32, the default for now), 2 (f16) or 34/32 (q8_0) bytes each, resident as
            positions fill; this counts the full context.
  buffers   the forward's scratch for a prefill batch of `max_batch` tokens (model.py,
            quants/prefill.py): quantized activations, hidden states, Q/K/V, FFN, one dequantized
            weight tile, logits and the RoPE tables.
  runtime   Python, numpy/OpenBLAS, numba/LLVM and the compiled kernels, and the tokenizer
            (Qwen3's 151,936-token vocabulary is the same for every size): measured, RUNTIME_BYTES;
            on a first run numba also compiles the kernels (cached on disk afterwards), which
            takes up to COMPILE_BYTES more at the peak.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import Qwen3Config
from .kv_cache import KVCache
from .quants.prefill import TILE_ROWS

# Peak RSS minus file, KV cache and buffers of a generation (prompt prefilled as a batch, then
# decode) in a fresh process, measured on 16-46 MiB Q8_0 and Q4_K_M files with the Qwen3
# vocabulary (x86-64, Python 3.11, numba 0.68.1): 245 MiB with the kernels in numba's cache,
# 279 MiB since every quantized type has AVX2 kernels (the drivers' machine code holds them all),
# counted with ~9% headroom for other machines' libraries; 290-320 MiB when the process
# compiles the kernels first, and up to ~530 MiB since the one-region decode step
# (simd/avx2.py `layers`, one large function) is compiled too (16 MiB Q8_0 file).
RUNTIME_BYTES = 304 * 2**20
COMPILE_BYTES = 272 * 2**20
# Q8_0 activation scratch per value: int8 value + (float32 scale + int32 sum) per 32 values
_ACT_BYTES = 1 + 8 / 32


@dataclass(frozen=True)
class MemoryEstimate:
    n_ctx: int
    weights: int
    kv_cache: int
    kv_per_token: int
    buffers: int
    runtime: int = RUNTIME_BYTES
    compile: int = COMPILE_BYTES
    type_k: str = "f32"
    type_v: str = "f32"

    @property
    def total(self) -> int:
        """With the kernels in numba's cache (every run after the first)."""
        return self.weights + self.kv_cache + self.buffers + self.runtime

    @property
    def first_run_total(self) -> int:
        return self.total + self.compile

    def kv_text(self) -> str:
        types = self.type_k if self.type_k == self.type_v else f"K {self.type_k}, V {self.type_v}"
        return f"{fmt_bytes(self.kv_cache)} for {self.n_ctx} tokens ({fmt_bytes(self.kv_per_token)}/token, {types})"

    def note(self, first_run: bool = False) -> str:
        """The line `edgeqwen run` and `chat` print on stderr before generating. On a first run (the kernels
        not compiled yet: warmup.compiled_before) the total leads with the compile's peak, which it reaches."""
        if first_run:
            return (f"KV cache {self.kv_text()}, -c/--ctx-size to change; expected memory "
                    f"~{fmt_bytes(self.first_run_total)} on this first run (numba compiles the kernels: "
                    f"+{fmt_bytes(self.compile)}), {self.text().split(';')[0]} afterwards")
        return f"KV cache {self.kv_text()}, -c/--ctx-size to change; expected memory {self.text()}"

    def text(self) -> str:
        return (f"~{fmt_bytes(self.total)} = weights {fmt_bytes(self.weights)} (mmapped) + "
                f"KV cache {fmt_bytes(self.kv_cache)} + buffers {fmt_bytes(self.buffers)} + "
                f"runtime {fmt_bytes(self.runtime)}; first run +{fmt_bytes(self.compile)} (numba compiles)")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def kv_cache_bytes(cfg: Qwen3Config, n_ctx: int, type_k: str = "f32", type_v: str = "f32") -> int:
    return KVCache.nbytes_for(cfg, n_ctx, type_k, type_v)


def buffer_bytes(cfg: Qwen3Config, n_ctx: int, max_batch: int) -> int:
    """Scratch of the forward at its largest: a batch of max_batch tokens (see model.py)."""
    B, d, qd, kvd, ff = max_batch, cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim, cfg.n_ff
    acts = _ACT_BYTES * B * (d + qd + ff)                   # QuantizedActivation for d, q*hd, ff inputs
    hidden = 4 * B * (3 * d + 2 * qd + 2 * kvd + 2 * ff)   # x, h, a matmul output; q, attn; k, v; g, u
    k_max = max(d, qd, ff)
    prefill = 4 * (B * k_max + TILE_ROWS * k_max + B * TILE_ROWS)   # dequantized activation, weight tile, product
    logits = 4 * cfg.n_vocab * 4                            # last-token logits and the sampler's copies
    rope = 2 * 4 * n_ctx * (cfg.head_dim // 2)
    return int(acts + hidden + prefill + logits + rope)


def estimate(cfg: Qwen3Config, file_bytes: int, n_ctx: int, max_batch: int = 256,
             type_k: str = "f32", type_v: str = "f32") -> MemoryEstimate:
    """Expected resident memory of generating with a context of n_ctx tokens from a GGUF file of
    file_bytes bytes, with a KV cache of those types."""
    return MemoryEstimate(n_ctx=n_ctx, weights=int(file_bytes), kv_cache=kv_cache_bytes(cfg, n_ctx, type_k, type_v),
                          kv_per_token=kv_cache_bytes(cfg, 1, type_k, type_v),
                          buffers=buffer_bytes(cfg, n_ctx, max_batch), type_k=type_k, type_v=type_v)


def for_model(model) -> MemoryEstimate:
    """The estimate for a loaded `edgeqwen.Model` (its context and batch size)."""
    return estimate(model.config, model.file.gguf.size, model.n_ctx, model.model.max_batch,
                    model.model.type_k, model.model.type_v)
