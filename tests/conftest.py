"""Session fixtures: tiny random Qwen3 checkpoints in the real HF layout, built once, and their
GGUF conversions, made on demand and memoized for the session."""
from __future__ import annotations

import functools
import importlib
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


IN_CI = os.environ.get("CI") == "true"


def missing_reference(reason: str, module_level: bool = False):
    """A reference (llama.cpp, its source, torch) is not available: skip the test on a developer's
    machine, fail it in CI (CI=true), where everything the suite compares against is installed
    (.ci/run) and a vanished reference must not turn into a green run of skips."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing reference fails instead of skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def import_reference(name: str, reason: str, module_level: bool = False):
    """importlib.import_module(name), or missing_reference(reason) when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_reference(reason, module_level)


LLAMA_CPP_MISSING = "llama-cpp-python is not installed (pip install -e .[llama])"


def llama_cpp_source() -> Path | None:
    """llama.cpp's source tree (for its convert_hf_to_gguf.py): $EDGEQWEN_LLAMA_CPP_SRC, else the
    `vendor/llama.cpp` of the llama-cpp-python sdist, downloaded once from PyPI into the cache.
    None when neither is available (the caller calls missing_reference: a failure in CI)."""
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


def assert_greedy_generation(model, prompt: list[int], n: int):
    """model.generate(prompt, n, temperature=0) gives the tokens of n argmaxes of the batched
    forward (model.logits over the growing sequence: no KV cache reuse, so an independent path),
    with finish_reason "length" (or "stop" at the end-of-turn token, if the argmax is one)."""
    r = model.generate(list(prompt), max_tokens=n, temperature=0)
    ids, expect = list(prompt), []
    stop_ids = model.tokenizer.stop_ids
    for _ in range(n):
        t = int(model.logits(ids)[-1].argmax())
        expect.append(t)
        ids.append(t)
        if t in stop_ids:
            break
    stopped = expect[-1] in stop_ids
    assert r.finish_reason == ("stop" if stopped else "length"), (r.finish_reason, expect)
    assert r.token_ids in (expect, expect[:-1] if stopped else expect), (r.token_ids, expect)
    return r


@pytest.fixture(scope="session")
def llama_quantized(gguf_file, tmp_path_factory):
    """llama_quantized(ftype) -> the k256 checkpoint quantized by llama.cpp's own quantizer
    (llama_model_quantize from our F16 file; ftype as in LLAMA_FTYPE_MOSTLY_<ftype>), memoized."""
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    root = tmp_path_factory.mktemp("llama-quantized")

    def get(ftype):
        out = root / f"k256-{ftype}.gguf"
        if not out.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
            assert llama_cpp.llama_model_quantize(str(gguf_file("k256", "f16")).encode(), str(out).encode(), params) == 0
        return out

    return get
