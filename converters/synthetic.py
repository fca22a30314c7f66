"""Deterministic random Qwen3 checkpoints in the real Hugging Face layout.

Used for the test fixtures and the built-in demo model: config.json, model.safetensors (or
shards with an index), generation_config.json and Qwen3's real tokenizer files. The weights
are random, so the text they generate is gibberish; shapes and conventions are real.
"""
from __future__ import annotations

import gzip
import json
import struct
from importlib import resources
from pathlib import Path

import numpy as np

QWEN3_VOCAB = 151936


def tokenizer_files() -> dict[str, bytes]:
    data = resources.files("edgeqwen") / "data"
    return {
        "tokenizer.json": gzip.decompress((data / "tokenizer.json.gz").read_bytes()),
        "tokenizer_config.json": (data / "tokenizer_config.json").read_bytes(),
    }


def _raw(arr: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
    """float32 values -> (little-endian array as stored, safetensors dtype)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "bf16":
        bits = arr.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2"), "BF16"
    return arr.astype("<f4"), "F32"


def _header(entries: list[tuple[str, tuple[int, ...], str, int]]) -> bytes:
    """Length prefix + JSON header for (name, shape, safetensors dtype, nbytes) in file order."""
    header, offset = {}, 0
    for name, shape, st_dtype, nbytes in entries:
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    return struct.pack("<Q", len(hbytes)) + hbytes


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Write float32 arrays as F32 or BF16 (round-to-nearest-even) safetensors, without torch."""
    raws = {name: _raw(arr, dtype) for name, arr in tensors.items()}
    with open(path, "wb") as f:
        f.write(_header([(name, raw.shape, st, raw.nbytes) for name, (raw, st) in raws.items()]))
        for raw, _ in raws.values():
            f.write(raw.tobytes())


def make_checkpoint(out_dir, *, hidden: int = 64, intermediate: int = 128, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, head_dim: int = 32, vocab: int = QWEN3_VOCAB,
                    tied: bool = True, dtype: str = "f32", shards: int = 1, seed: int = 0,
                    rope_scaling: dict | None = None, max_position_embeddings: int = 40960,
                    low_memory: bool = False, experts: int = 0, experts_used: int = 2, expert_ff: int = 32,
                    norm_topk_prob: bool = True) -> Path:
    """Write a random Qwen3ForCausalLM checkpoint to `out_dir` and return its path; with
    `experts` > 0 a Qwen3MoeForCausalLM (every layer sparse: a router over `experts` SwiGLU
    experts of size `expert_ff`, `experts_used` per token), in the hub's layout (one tensor per
    expert).

    With `low_memory`, tensors are generated and written a row-chunk at a time (peak memory a
    few tens of MB instead of ~3.5x the float32 model); the files are byte-identical.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # (name, shape, init) in generation order. init: "embed" N(0, 1), "lin" N(0, 1/n_in),
    # "norm" 1 + 0.1 N(0, 1).
    specs: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (vocab, hidden), "embed")]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (hidden,), "norm"),
            (p + "self_attn.q_proj.weight", (heads * head_dim, hidden), "lin"),
            (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden), "lin"),
            (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden), "lin"),
            (p + "self_attn.q_norm.weight", (head_dim,), "norm"),
            (p + "self_attn.k_norm.weight", (head_dim,), "norm"),
            (p + "self_attn.o_proj.weight", (hidden, heads * head_dim), "lin"),
            (p + "post_attention_layernorm.weight", (hidden,), "norm"),
        ]
        if experts:
            specs.append((p + "mlp.gate.weight", (experts, hidden), "lin"))
            for e in range(experts):
                specs += [(p + f"mlp.experts.{e}.gate_proj.weight", (expert_ff, hidden), "lin"),
                          (p + f"mlp.experts.{e}.up_proj.weight", (expert_ff, hidden), "lin"),
                          (p + f"mlp.experts.{e}.down_proj.weight", (hidden, expert_ff), "lin")]
        else:
            specs += [
                (p + "mlp.gate_proj.weight", (intermediate, hidden), "lin"),
                (p + "mlp.up_proj.weight", (intermediate, hidden), "lin"),
                (p + "mlp.down_proj.weight", (hidden, intermediate), "lin"),
            ]
    specs.append(("model.norm.weight", (hidden,), "norm"))
    if not tied:
        specs.append(("lm_head.weight", (vocab, hidden), "lin"))

    def generate(shape: tuple[int, ...], init: str) -> np.ndarray:
        # Drawing a matrix in consecutive row blocks gives the same numbers as in one call.
        x = rng.standard_normal(shape)
        if init == "lin":
            return (x / np.sqrt(shape[-1])).astype(np.float32)
        if init == "norm":
            return (1.0 + 0.1 * x).astype(np.float32)
        return x.astype(np.float32)

    names = [name for name, _, _ in specs]
    if shards <= 1:
        files = [("model.safetensors", names)]
    else:
        files = [(f"model-{s + 1:05d}-of-{shards:05d}.safetensors", names[s::shards]) for s in range(shards)]
    if not low_memory:
        t = {name: generate(shape, init) for name, shape, init in specs}
        for fname, part in files:
            save_safetensors(out / fname, {n: t[n] for n in part}, dtype)
        del t
    else:
        shape_of = {name: shape for name, shape, _ in specs}
        st_dtype, itemsize = ("BF16", 2) if dtype == "bf16" else ("F32", 4)
        file_of = {n: fname for fname, part in files for n in part}
        handles = {}
        try:
            for fname, part in files:
                handles[fname] = open(out / fname, "wb")
                handles[fname].write(_header(
                    [(n, shape_of[n], st_dtype, int(np.prod(shape_of[n])) * itemsize) for n in part]))
            for name, shape, init in specs:
                rows = max(1, (1 << 22) // int(np.prod(shape[1:]))) if len(shape) > 1 else shape[0]
                for start in range(0, shape[0], rows):
                    block = (min(rows, shape[0] - start), *shape[1:]) if len(shape) > 1 else shape
                    handles[file_of[name]].write(_raw(generate(block, init), dtype)[0].tobytes())
        finally:
            for h in handles.values():
                h.close()
    if shards > 1:
        weight_map = {n: fname for fname, part in files for n in part}
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))

    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "hidden_act": "silu", "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
        "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
        "bos_token_id": 151643, "eos_token_id": 151645, "sliding_window": None,
        "use_sliding_window": False, "max_window_layers": layers, "initializer_range": 0.02,
    }
    if experts:
        config.update({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": experts,
                       "num_experts_per_tok": experts_used, "moe_intermediate_size": expert_ff,
                       "norm_topk_prob": norm_topk_prob, "decoder_sparse_step": 1, "mlp_only_layers": [],
                       "output_router_logits": False, "router_aux_loss_coef": 0.001})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
         "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}, indent=2))
    for name, data in tokenizer_files().items():
        (out / name).write_bytes(data)
    return out
