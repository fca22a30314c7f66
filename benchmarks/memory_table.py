"""Expected resident memory of Qwen3 dense models on a small board, computed from the real shapes
(/work/shared/docs/QWEN3.md: the released config.json files) — the README's Raspberry Pi table.

    python benchmarks/memory_table.py [--ctx 2048 4096] [--cache-type f16|q8_0|f32] [--markdown]

Per model and weight type: the GGUF file size (tensor bytes of every tensor at its type + 32-byte
alignment + the header with Qwen3's tokenizer and chat template, measured on our converter's
output) and `edgeqwen.memory.estimate` (file + KV cache of the chosen type, f16 by default as in
the CLI, + forward buffers + runtime).

Tensor types per recipe:
  Q8_0    every matrix Q8_0, norms F32 (our converter and llama.cpp alike).
  Q4_0    llama.cpp's recipe (community Q4_0 downloads): matrices Q4_0, the output matrix (the
          token embedding when tied) Q6_K. `edgeqwen convert --type q4_0` writes that matrix as
          Q8_0 instead (the 'ours' column of --verbose).
  Q4_K_M  llama.cpp's recipe (llama-quant.cpp, llama_tensor_get_type_impl, no imatrix, dense,
          non-Falcon): Q4_K, with attn_v and ffn_down Q6_K in the layers where use_more_bits(i, n)
          holds, the output matrix (tied: the token embedding) Q6_K. tests/test_arm_memory.py
          checks this against llama.cpp's own quantizer on a fixture.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeqwen import constants as C                      # noqa: E402
from edgeqwen.config import Qwen3Config                   # noqa: E402
from edgeqwen.memory import RUNTIME_BYTES, estimate, fmt_bytes   # noqa: E402

T = gguf.GGMLQuantizationType
ALIGN = 32
# Bytes before the tensor data of our converter's Qwen3 files (keys, 151,936 tokens, their types,
# 151,387 merges, the chat template), padded: measured on tests' fixtures, identical for every size.
HEADER_BYTES = 5_934_272

# QWEN3.md: hidden, FFN, layers, Q heads, tied (vocab 151,936, head_dim 128, 8 KV heads for all)
MODELS = {
    "Qwen3-0.6B": (1024, 3072, 28, 16, True),
    "Qwen3-1.7B": (2048, 6144, 28, 16, True),
    "Qwen3-4B": (2560, 9728, 36, 32, True),
    "Qwen3-8B": (4096, 12288, 36, 32, False),
}
RECIPES = ("Q4_0", "Q4_K_M", "Q8_0")


def config(name: str) -> Qwen3Config:
    d, ff, layers, heads, _ = MODELS[name]
    return Qwen3Config(n_vocab=151936, n_embd=d, n_ff=ff, n_layer=layers, n_head=heads, n_head_kv=8,
                       head_dim=128, n_ctx_train=40960, rope_base=1e6, rms_eps=1e-6, rope_scaling=None)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the _M recipes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_types(cfg: Qwen3Config, tied: bool, recipe: str, ours: bool = False) -> dict[str, T]:
    """Tensor name -> type for a recipe (see the module docstring); `ours`: edgeqwen's converter."""
    base = {"Q4_0": T.Q4_0, "Q4_K_M": T.Q4_K, "Q8_0": T.Q8_0}[recipe]
    out_type = T.Q8_0 if recipe == "Q8_0" or ours else T.Q6_K
    types = {}
    for name, shape in cfg.tensor_shapes().items():
        if len(shape) == 1:
            types[name] = T.F32
        elif name == C.TOKEN_EMBD:
            types[name] = out_type if tied else base
        else:
            types[name] = base
            if recipe == "Q4_K_M" and (name.endswith(".attn_v.weight") or name.endswith(".ffn_down.weight")):
                if use_more_bits(int(name.split(".")[1]), cfg.n_layer):
                    types[name] = T.Q6_K
    if not tied:
        types[C.OUTPUT] = out_type
    return types


def tensor_bytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for s in shape:
        n *= s
    return n // block * size


def file_bytes(cfg: Qwen3Config, tied: bool, recipe: str, ours: bool = False, header: int = HEADER_BYTES) -> int:
    shapes = cfg.tensor_shapes()
    if not tied:
        shapes[C.OUTPUT] = (cfg.n_vocab, cfg.n_embd)
    total = header
    for name, qtype in tensor_types(cfg, tied, recipe, ours).items():
        total += -(-tensor_bytes(shapes[name], qtype) // ALIGN) * ALIGN
    return total


def rows(ctxs: list[int], cache_type: str = "f16"):
    for name, (*_, tied) in MODELS.items():
        cfg = config(name)
        for recipe in RECIPES:
            size = file_bytes(cfg, tied, recipe)
            yield name, recipe, size, [estimate(cfg, size, n, type_k=cache_type, type_v=cache_type) for n in ctxs]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--cache-type", default="f16", choices=["f32", "f16", "q8_0"], help="KV cache type (default f16)")
    ap.add_argument("--markdown", action="store_true", help="README table")
    a = ap.parse_args(argv)
    gib = lambda n: f"{n / 2**30:.2f}"                   # noqa: E731
    if a.markdown:
        head = ["model", "type", "file GiB"] + [f"KV {n // 1024}k GiB" for n in a.ctx] + \
               [f"total {n // 1024}k GiB" for n in a.ctx]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * 2 + "---:|" * (len(head) - 2))
        for name, recipe, size, ests in rows(a.ctx, a.cache_type):
            cells = [name, recipe, gib(size)] + [gib(e.kv_cache) for e in ests] + [gib(e.total) for e in ests]
            print("| " + " | ".join(cells) + " |")
    else:
        for name, recipe, size, ests in rows(a.ctx, a.cache_type):
            cfg = config(name)
            ours = file_bytes(cfg, MODELS[name][4], recipe, ours=True)
            print(f"{name:11s} {recipe:7s} file {fmt_bytes(size):>10s} (edgeqwen convert: {fmt_bytes(ours)})")
            for e in ests:
                print(f"    ctx {e.n_ctx:5d}: {e.text()}")
    print(f"\nruntime (Python, numba, kernels, tokenizer) counted as {fmt_bytes(RUNTIME_BYTES)}; "
          f"buffers for a 256-token prefill batch; KV cache {a.cache_type}, full context.")


if __name__ == "__main__":
    main()
