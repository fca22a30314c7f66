"""Session fixtures: tiny random Qwen3 checkpoints in the real HF layout, built once, and their
GGUF conversions, made on demand and memoized for the session."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from converters.hf_to_gguf import convert
from converters.synthetic import make_checkpoint

# name -> make_checkpoint arguments. All use the real Qwen3 tokenizer and vocab (151,936).
CHECKPOINTS = {
    # GQA (4 query heads per 2 KV heads) and n_heads*head_dim (128) != hidden (64), as in 0.6B
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=32, tied=True, seed=1),
    # untied LM head, sharded safetensors, 4 query heads per KV head
    "untied": dict(hidden=64, intermediate=96, layers=2, heads=8, kv_heads=2, head_dim=16, tied=False,
                   shards=3, seed=2),
    # bf16 weights on disk
    "bf16": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=32, tied=True,
                 dtype="bf16", seed=3),
    # YaRN rope scaling keys
    # YaRN rope scaling keys (max_position_embeddings = factor x original, as Qwen advises, so that
    # transformers and llama.cpp use the same factor)
    "yarn": dict(hidden=64, intermediate=128, layers=1, heads=4, kv_heads=1, head_dim=32, tied=True, seed=4,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
                 max_position_embeddings=131072),
    # widths that are multiples of 256 (K-quant super-blocks), for files quantized by llama.cpp
    "k256": dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, head_dim=64, tied=True, seed=5),
}


class _Checkpoints(dict):
    """name -> checkpoint directory, each built on first use (the 256-wide one is ~160 MB)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        self[name] = path = make_checkpoint(self.root / name, **CHECKPOINTS[name])
        return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return _Checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def gguf_file(checkpoints, tmp_path_factory):
    """gguf_file(checkpoint_name, type) -> path of our converter's output (memoized)."""
    root = tmp_path_factory.mktemp("gguf")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, out_type: str) -> Path:
        key = (name, out_type)
        if key not in made:
            out = root / f"{name}-{out_type}.gguf"
            convert(checkpoints[name], out, out_type, progress=False)
            made[key] = out
        return made[key]

    return get


def llama_cpp_source() -> Path | None:
    """llama.cpp's source tree (for its convert_hf_to_gguf.py): $EDGEQWEN_LLAMA_CPP_SRC, else the
    `vendor/llama.cpp` of the llama-cpp-python sdist, downloaded once from PyPI into the cache.
    None when neither is available (the caller skips with that reason)."""
    src = os.environ.get("EDGEQWEN_LLAMA_CPP_SRC")
    if src and (Path(src) / "convert_hf_to_gguf.py").is_file():
        return Path(src)
    return _downloaded_llama_cpp_source()


@functools.lru_cache(maxsize=1)
def _downloaded_llama_cpp_source() -> Path | None:
    try:
        import llama_cpp
        spec = f"llama-cpp-python=={llama_cpp.__version__}"
    except ImportError:
        spec = "llama-cpp-python"
    from edgeqwen.demo import cache_dir

    dest = cache_dir() / f"llama.cpp-src-{spec.split('==')[-1]}"
    script = dest / "convert_hf_to_gguf.py"
    if script.is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, spec], capture_output=True, timeout=600)
        tars = list(Path(tmp).glob("*.tar.gz"))
        if r.returncode or not tars:
            return None
        with tarfile.open(tars[0]) as tf:
            members = []
            for m in tf.getmembers():
                parts = m.name.split("/")
                if parts[1:3] == ["vendor", "llama.cpp"] and len(parts) > 3 and (
                        parts[3] in ("convert_hf_to_gguf.py", "conversion", "gguf-py")):
                    m.name = "/".join(parts[3:])
                    members.append(m)
            staging = Path(tempfile.mkdtemp(dir=tmp))
            tf.extractall(staging, members=members, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    return dest if script.is_file() else None
