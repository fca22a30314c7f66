"""Deterministic random Qwen3 checkpoints in the real Hugging Face layout.

Used for the test fixtures and the built-in demo model: config.json, model.safetensors (or
shards with an index), generation_config.json and Qwen3's real tokenizer files. The weights
are random, so the text they generate is gibberish; shapes and conventions are real.
"""
from __future__ import annotations

import gzip
import json
import shutil
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


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Write float32 arrays as F32 or BF16 (round-to-nearest-even) safetensors, without torch."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if dtype == "bf16":
            bits = arr.view(np.uint32)
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
            st_dtype = "BF16"
        else:
            raw, st_dtype = arr.astype("<f4"), "F32"
        b = raw.tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def make_checkpoint(out_dir, *, hidden: int = 64, intermediate: int = 128, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, head_dim: int = 32, vocab: int = QWEN3_VOCAB,
                    tied: bool = True, dtype: str = "f32", shards: int = 1, seed: int = 0,
                    rope_scaling: dict | None = None, max_position_embeddings: int = 40960) -> Path:
    """Write a random Qwen3ForCausalLM checkpoint to `out_dir` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def lin(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(hidden)
        t[p + "self_attn.q_proj.weight"] = lin(heads * head_dim, hidden)
        t[p + "self_attn.k_proj.weight"] = lin(kv_heads * head_dim, hidden)
        t[p + "self_attn.v_proj.weight"] = lin(kv_heads * head_dim, hidden)
        t[p + "self_attn.q_norm.weight"] = norm(head_dim)
        t[p + "self_attn.k_norm.weight"] = norm(head_dim)
        t[p + "self_attn.o_proj.weight"] = lin(hidden, heads * head_dim)
        t[p + "post_attention_layernorm.weight"] = norm(hidden)
        t[p + "mlp.gate_proj.weight"] = lin(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = lin(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = lin(hidden, intermediate)
    t["model.norm.weight"] = norm(hidden)
    if not tied:
        t["lm_head.weight"] = lin(vocab, hidden)

    names = list(t)
    if shards <= 1:
        save_safetensors(out / "model.safetensors", t, dtype)
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: t[n] for n in names[s::shards]}
            save_safetensors(out / fname, part, dtype)
            weight_map.update({n: fname for n in part})
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
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
         "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}, indent=2))
    for name, data in tokenizer_files().items():
        (out / name).write_bytes(data)
    return out


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
