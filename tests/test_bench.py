"""`edgeqwen bench`'s roofline figures and benchmarks/compare_llama_cpp.py's llama-bench side.
No timing assertions: only what the figures are made of."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from edgeqwen import bench
from edgeqwen.gguf_model import ModelFile

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
# Captured from the real binary (see the docstring of test_parse_llama_bench_sample)
LLAMA_BENCH_SAMPLE = DATA / "llama_bench_sample.json"


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare_llama_cpp", ROOT / "benchmarks" / "compare_llama_cpp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gguf_py_decode_bytes(path) -> int:
    """Independently of edgeqwen's reader: gguf-py's n_bytes of every tensor in the file except
    token_embd, plus one token_embd row, plus the whole token_embd when there is no output.weight
    (tied: the output matmul reads it)."""
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    embd = tensors["token_embd.weight"]
    n_vocab = int(embd.shape[-1])                   # gguf-py: GGUF order, (n_embd, n_vocab)
    total = sum(int(t.n_bytes) for name, t in tensors.items() if name != "token_embd.weight")
    total += int(embd.n_bytes) // n_vocab
    if "output.weight" not in tensors:
        total += int(embd.n_bytes)
    return total


@pytest.mark.parametrize("name, out_type", [("tiny", "q8_0"), ("untied", "q8_0"), ("untied", "f16")])
def test_decode_weight_bytes_equals_gguf_py_sum(gguf_file, name, out_type):
    path = gguf_file(name, out_type)
    mf = ModelFile(path)
    wb = bench.decode_weight_bytes(mf)
    assert wb["total"] == gguf_py_decode_bytes(path)
    assert wb["total"] == wb["layers"] + wb["output_norm"] + wb["output"] + wb["embd_row"]
    embd = mf.gguf.tensors["token_embd.weight"]
    if mf.tied:
        assert wb["output"] == embd.nbytes
    else:
        # untied: one embedding row, not the whole token_embd
        assert wb["output"] == mf.gguf.tensors["output.weight"].nbytes
        assert wb["embd_row"] * mf.config.n_vocab == embd.nbytes
        assert wb["total"] < sum(t.nbytes for t in mf.gguf.tensors.values())


def test_roofline_figures():
    wb = {"layers": 300, "output_norm": 4, "output": 100, "embd_row": 6, "total": 410}
    bw = {"GB_s": 2.0, "samples_GB_s": [1.5, 2.0], "threads": 2, "buffer_bytes": 1 << 30}
    r = bench.roofline(wb, tg_tok_s=1e6, bandwidth=bw)
    assert r["weight_bytes_per_token"] == 410
    assert r["tg_weight_read_GB_s"] == pytest.approx(0.41)
    assert r["pct_of_bandwidth_limit"] == pytest.approx(20.5)
    assert r["tg_tok_s_limit"] == pytest.approx(2e9 / 410)
    r = bench.roofline(wb, tg_tok_s=None, bandwidth=None)
    assert r["tg_weight_read_GB_s"] is None and r["pct_of_bandwidth_limit"] is None


def test_memory_read_bandwidth_small_buffer():
    bw = bench.memory_read_bandwidth(threads=1, nbytes=16 << 20, max_passes=2)
    assert bw["buffer_bytes"] == 16 << 20 and bw["threads"] == 1
    assert bw["GB_s"] > 0 and len(bw["samples_GB_s"]) == 2
    assert bw["GB_s"] == pytest.approx(max(bw["samples_GB_s"]), rel=0.01)


def test_run_bench_reports_roofline(gguf_file):
    path = gguf_file("untied", "q8_0")
    res = bench.run_bench(path, n_prompt=4, n_gen=2, threads=1, reps=1, bandwidth_probe=False)
    roof = res["roofline"]
    assert roof["weight_bytes_per_token"] == gguf_py_decode_bytes(path)
    assert roof["tg_weight_read_GB_s"] == pytest.approx(roof["weight_bytes_per_token"] * res["tg"]["tok_s_mean"] / 1e9)
    assert roof["memory_read_GB_s"] is None and roof["pct_of_bandwidth_limit"] is None
    json.dumps(res)
    text = bench.format_table(res)
    assert "read per decoded token" in text and "memory bandwidth not measured" in text
    # with a bandwidth figure the table shows the percentage
    res["roofline"] = bench.roofline(roof["weight_bytes"], res["tg"]["tok_s_mean"],
                                     {"GB_s": 10.0, "samples_GB_s": [10.0], "threads": 1, "buffer_bytes": 1 << 30,
                                      "seconds": 0.5})
    assert "% of bandwidth limit" in bench.format_table(res)


def test_parse_llama_bench_sample():
    """tests/data/llama_bench_sample.json is the unedited stdout of the real llama-bench (the
    llama.cpp vendored in llama-cpp-python 0.3.36, built with -DGGML_NATIVE=ON and AMX left out,
    as benchmarks/build_llama_bench.sh does), run as
    `llama-bench -m untied-q8_0.gguf -p 8 -n 4 -t 1 -r 1 -o json` on this suite's "untied"
    checkpoint converted to Q8_0 (conftest's CHECKPOINTS["untied"], our converter)."""
    cmp = _compare_module()
    parsed = cmp.parse_llama_bench_json(LLAMA_BENCH_SAMPLE.read_text())
    assert set(parsed["tests"]) == {"pp8", "tg4"}
    pp, tg = parsed["tests"]["pp8"], parsed["tests"]["tg4"]
    assert (pp["n_prompt"], pp["n_gen"], tg["n_prompt"], tg["n_gen"]) == (8, 0, 0, 4)
    for t in (pp, tg):
        assert t["avg_ts"] > 0 and len(t["samples_ts"]) == 1
        assert t["avg_ts"] == pytest.approx(t["samples_ts"][0], rel=1e-3)
        n = t["n_prompt"] + t["n_gen"]
        assert t["avg_ts"] == pytest.approx(n * 1e9 / t["avg_ns"], rel=1e-3)
    assert parsed["n_threads"] == 1 and parsed["build_commit"]
    # stray text around the array (e.g. a log line on stdout) is tolerated
    again = cmp.parse_llama_bench_json("log line\n" + LLAMA_BENCH_SAMPLE.read_text() + "\n")
    assert again["tests"] == parsed["tests"]
    with pytest.raises(ValueError):
        cmp.parse_llama_bench_json("no json here")


def _llama_bench_binary() -> str | None:
    p = os.environ.get("EDGEQWEN_LLAMA_BENCH")
    return p if p and os.access(p, os.X_OK) else None


@pytest.mark.skipif(_llama_bench_binary() is None, reason="set EDGEQWEN_LLAMA_BENCH to a llama-bench binary")
def test_llama_bench_worker_live(gguf_file):
    """The llama-bench worker on the real binary: JSON parsed, RSS from the wrapper's children."""
    path = gguf_file("untied", "q8_0")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_llama_cpp.py"), "--worker", "llama-bench",
           "-m", str(path), "-p", "8", "-n", "4", "-t", "1", "--llama-bench", _llama_bench_binary()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cmp = _compare_module()
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith(cmp.MARK)][-1][len(cmp.MARK):])
    assert res["pp_s"] > 0 and res["tg_s"] > 0
    assert res["peak_rss_bytes"] > os.path.getsize(path) // 2     # the binary's pages, not the wrapper's alone
    assert res["command"][-2:] == ["-o", "json"]


def _fake_runs(engines, reps=2):
    rng = np.random.default_rng(0)
    runs = {}
    for e in engines:
        rs = []
        for _ in range(reps):
            r = {"pp_s": float(rng.uniform(1, 2)), "tg_s": float(rng.uniform(1, 2)), "peak_rss_bytes": 100 << 20}
            if e == "llama-bench":
                r.update(wall_s=3.0, version="build 1 (abc)", command=["llama-bench"], llama_bench={"build_commit": "abc"})
            else:
                r.update(import_s=0.1, load_s=0.5, warmup_s=0.2, warmup_pp_s=0.3)
                if e == "llama.cpp":
                    r["version"] = "0.3.36"
            rs.append(r)
        runs[e] = rs
    return runs


def _args(**kw):
    return types.SimpleNamespace(model=__file__, threads=2, p=64, n=16, reps=2, **kw)


def test_compare_summary_with_llama_bench():
    cmp = _compare_module()
    a = _args()
    s = cmp.summarize(a, _fake_runs(["edgeqwen", "llama.cpp", "llama-bench"]))
    assert set(s["ratio_vs"]) == {"llama.cpp", "llama-bench"}
    assert s["ratio"] == s["ratio_vs"]["llama.cpp"]          # the wheel ratio keeps its old place
    eq, lb = s["engines"]["edgeqwen"], s["engines"]["llama-bench"]
    tg_ratio = s["ratio_vs"]["llama-bench"]["tg_tok_s"]["of_means"]
    assert tg_ratio == pytest.approx(eq["tg_tok_s"]["mean"] / lb["tg_tok_s"]["mean"])
    assert "RUSAGE_CHILDREN" in lb["peak_rss_method"]
    json.dumps(s)
    text = cmp.format_table(s)
    assert "edgeqwen/llama.cpp" in text and "edgeqwen/llama-bench" in text
    assert "paired per-rep ratio vs llama-bench" in text
    lb_row = [ln for ln in text.splitlines() if ln.startswith("llama-bench ")][0]
    assert lb_row.split()[1:3] == ["-", "-"]                # no load / warm-up figures from llama-bench

    # without llama-bench: the table as it always was
    s = cmp.summarize(a, _fake_runs(["edgeqwen", "llama.cpp"]))
    text = cmp.format_table(s)
    assert "alternating edgeqwen / llama.cpp (one process each)" in text
    assert "llama-bench" not in text and text.count("paired per-rep ratio:") == 1

    # llama-bench only as the baseline (no wheel)
    s = cmp.summarize(a, _fake_runs(["edgeqwen", "llama-bench"]))
    assert s["ratio"] == {} and set(s["ratio_vs"]) == {"llama-bench"}
    cmp.format_table(s)


def test_compare_engines_option(tmp_path):
    cmp = _compare_module()
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)

    class AP:
        def error(self, msg):
            raise SystemExit(msg)

    def sel(engines, lb=None):
        return cmp.select_engines(AP(), types.SimpleNamespace(engines=engines, llama_bench=lb))
    assert sel("llama-bench,edgeqwen", str(fake)) == ["edgeqwen", "llama-bench"]
    assert sel("edgeqwen") == ["edgeqwen"]
    with pytest.raises(SystemExit, match="needs --llama-bench"):
        sel("edgeqwen,llama-bench")
    with pytest.raises(SystemExit, match="unknown"):
        sel("edgeqwen,vllm")
    with pytest.raises(SystemExit, match="not an executable"):
        sel("llama-bench", str(tmp_path / "missing"))
    default = sel(None, str(fake))
    assert default[0] == "edgeqwen" and default[-1] == "llama-bench"
