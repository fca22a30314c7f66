"""Memory for small boards (edgeqwen/memory.py): the weights stay in the read-only mmap, the KV
cache size is what the cache allocates and what `run` / `chat` print before generating,
`info --ctx-size N` prints the expected resident memory, which bounds the measured peak RSS, and
the README table's llama.cpp recipes match llama.cpp's own quantizer."""
from __future__ import annotations

import importlib.util
import json
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from click.testing import CliRunner

import edgeqwen
from edgeqwen import memory
from edgeqwen.api import set_threads
from edgeqwen.cli import main
from edgeqwen.config import Qwen3Config
from edgeqwen.gguf_model import ModelFile

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def info_rows(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^(\S.*?)\s{2,}(.*)$", stdout, re.M)}


@pytest.fixture(autouse=True)
def one_thread():
    before = numba.get_num_threads()
    set_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def path(gguf_file):
    return gguf_file("tiny", "q8_0")


def memory_table():
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "benchmarks" / "memory_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kv_cache_size_is_what_the_cache_allocates(path):
    model = edgeqwen.load(path, ctx_size=100)
    cache = model.model.new_cache()
    assert cache.k.nbytes + cache.v.nbytes == memory.kv_cache_bytes(model.config, 100, "f16", "f16") \
        == memory.for_model(model).kv_cache                     # the default: f16, as llama.cpp
    # Qwen3-4B (36 layers, 8 KV heads of 128): 288 KiB per token, float32 K and V; 144 KiB f16 (the CLI's default)
    cfg4b = memory_table().config("Qwen3-4B")
    assert memory.kv_cache_bytes(cfg4b, 1, "f32", "f32") == 2 * 36 * 8 * 128 * 4 == 288 * 1024
    assert memory.kv_cache_bytes(cfg4b, 4096, "f32", "f32") == int(1.125 * 2**30)
    assert memory.kv_cache_bytes(cfg4b, 1, "f16", "f16") == 144 * 1024


def _base(a):
    """The object owning an array's memory (through views and memoryviews)."""
    while isinstance(a, (np.ndarray, memoryview)):
        a = a.base if isinstance(a, np.ndarray) else a.obj
    return a


def test_weights_stay_in_the_mmap(path):
    model = edgeqwen.load(path, ctx_size=64)
    mf = model.file
    weights = [mf.token_embd, mf.output] + [getattr(L, n) for L in mf.layers
                                            for n in ("q", "k", "v", "o", "gate", "up", "down")]
    mm = mf.gguf._mm
    assert isinstance(mm, mmap.mmap)
    for w in weights:
        assert _base(w.raw) is mm, w.name                         # a view of the file's mapping,
        assert np.shares_memory(w.data, w.raw), w.name            # and so is what the kernels read
    model.logits([1, 2, 3])
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("no /proc/self/smaps")
    # The file's mapping: resident as read (the tied embedding is the LM head: all of it), and no
    # anonymous (copied-on-write) pages in it.
    rss = anon = 0
    inside = False
    for line in smaps.read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(Path(path).resolve())) or line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1]) * 1024
        elif inside and line.startswith("Anonymous:"):
            anon += int(line.split()[1]) * 1024
    assert rss >= mf.token_embd.raw.nbytes and anon == 0, (rss, anon)


def test_info_prints_expected_memory_for_the_ctx_size(path):
    cfg = ModelFile(path).config
    size = os.path.getsize(path)
    rows = {}
    for n in (512, 8192):
        r = cli("info", path, "--ctx-size", n)
        assert r.exit_code == 0, r.stderr
        rows[n] = info_rows(r.stdout)
        est = memory.estimate(cfg, size, n, type_k="f16", type_v="f16")     # info's default cache type
        assert rows[n]["KV cache"] == est.kv_text() and f"for {n} tokens" in est.kv_text()
        assert rows[n]["memory (expected)"] == est.text()
        assert est.total == size + memory.kv_cache_bytes(cfg, n, "f16", "f16") + est.buffers + memory.RUNTIME_BYTES
    assert memory.kv_cache_bytes(cfg, 8192) == 16 * memory.kv_cache_bytes(cfg, 512)
    assert "for 4096 tokens" in info_rows(cli("info", path).stdout)["KV cache"]     # run's default
    assert "cpu" in rows[512] and "numba target" in rows[512]["cpu"]
    r = cli("info", path, "-c", 0)
    assert r.exit_code == 2 and "Invalid value for '-c' / '--ctx-size': 0 is not in the range 1<=x<=1048576" in r.stderr


def test_run_and_chat_print_the_kv_cache_before_generating(path, tmp_path):
    r = cli("run", "-m", path, "-p", "Hello", "-n", 2, "-c", 128, "-t", 1, "--temperature", 0)
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    est = memory.for_model(edgeqwen.load(path, ctx_size=128))
    assert lines[0] in (est.note(), est.note(first_run=True))          # first run: before any compile here
    assert lines[0].startswith("KV cache ") and "for 128 tokens" in lines[0]
    assert lines[-1].startswith("load ")                              # the timings come after
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    r = cli("chat", "-m", path, "--messages", conv, "-n", 2, "-c", 128, "-t", 1, "--no-think")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines()[0] == est.note()                    # compiled by the run above
    assert json.loads(r.stdout)["role"] == "assistant"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/self/status (Linux)")
def test_expected_memory_bounds_the_measured_peak(path):
    """`edgeqwen run`'s work in a fresh process (default context 4096, a prompt long enough for the
    batched prefill): its peak RSS stays under the estimate, the first-run one when the process
    may have compiled kernels, the cached one after that."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of this (large) pytest
    # process would report the parent's size.
    code = (f"import re, edgeqwen\nfrom edgeqwen.memory import for_model\n"
            f"m = edgeqwen.load({str(path)!r}, threads=1)\n"
            f"m.generate('Once upon a time ' * 8, max_tokens=8, temperature=0)\n"
            f"e = for_model(m)\n"
            f"hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1]) * 1024\n"
            f"print(hwm, e.first_run_total, e.total, e.weights)\n")
    for run in range(2):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peak, first_total, total, weights = map(int, r.stdout.split())
        bound = first_total if run == 0 else total
        assert weights < peak <= bound, (run, peak / 2**20, bound / 2**20)


@pytest.mark.parametrize("recipe", ["Q4_0", "Q4_K_M", "Q8_0"])
def test_memory_table_recipes_match_llama_cpp(recipe, llama_quantized):
    """benchmarks/memory_table.py predicts the type of every tensor llama.cpp's quantizer writes
    (here 2 layers: Q4_K_M gives layer 1's attn_v and ffn_down Q6_K) and so the tensor bytes."""
    mt = memory_table()
    mf = ModelFile(llama_quantized(recipe))
    cfg: Qwen3Config = mf.config
    predicted = mt.tensor_types(cfg, mf.tied, recipe)
    actual = {n: t.qtype for n, t in mf.gguf.tensors.items()}
    assert {n: t.name for n, t in predicted.items()} == {n: t.name for n, t in actual.items()}
    shapes = {n: t.shape for n, t in mf.gguf.tensors.items()}
    assert sum(mt.tensor_bytes(shapes[n], t) for n, t in predicted.items()) == \
        sum(t.nbytes for t in mf.gguf.tensors.values())
    if recipe == "Q4_K_M":
        assert actual["blk.1.ffn_down.weight"].name == "Q6_K" and actual["blk.0.ffn_down.weight"].name == "Q4_K"
