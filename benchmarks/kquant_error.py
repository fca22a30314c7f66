#!/usr/bin/env python
"""Quantization error of `edgeqwen convert --type q4_k_m|q5_k_m|q6_k` vs llama.cpp's quantizer.

For each type: converts the checkpoint with edgeqwen directly, and quantizes edgeqwen's F32
conversion of it with llama.cpp (`llama_cpp.llama_model_quantize`, the code of `llama-quantize`,
no imatrix). Then, per tensor, the relative RMS error ||deq(w) - w|| / ||w|| of both files
against the original float32 weights (gguf-py's dequantize), whether the bytes are identical,
and a summary (errors over all matrices, sizes, times). The ratio column is ours / llama.cpp.

    python benchmarks/kquant_error.py                                 # Qwen3-0.6B shapes, 4 layers, random bf16
    python benchmarks/kquant_error.py --layers 28 --types q4_k_m      # the full 0.6B shape
    python benchmarks/kquant_error.py --checkpoint ./Qwen3-0.6B       # a real checkpoint

Needs llama-cpp-python (pip install -e .[llama]). Exit status 1 when a ratio leaves [0.95, 1.05].
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters.hf_to_gguf import convert, load_checkpoint  # noqa: E402
from converters.synthetic import make_checkpoint  # noqa: E402
from edgeqwen.gguf_reader import GGUFFile  # noqa: E402

T = gguf.GGMLQuantizationType
FTYPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
QWEN3_0_6B = dict(hidden=1024, intermediate=3072, heads=16, kv_heads=8, head_dim=128, tied=True,
                  dtype="bf16", seed=0)
ROWS = 8192                      # rows dequantized at a time


def dequantized_rows(info, rows: int):
    raw = info.raw()
    for r0 in range(0, raw.shape[0], rows):
        chunk = raw[r0:r0 + rows]
        if info.qtype == T.F32:
            yield chunk.view(np.float32)
        elif info.qtype == T.F16:
            yield chunk.view(np.float16).astype(np.float32)
        else:
            yield gguf.quants.dequantize(chunk, info.qtype).reshape(chunk.shape[0], -1)


def errors(ref, ours, theirs) -> tuple[float, float, float]:
    """(sum of squares of the original, sum of squared errors ours, llama.cpp's), in float64."""
    ss = se_a = se_b = 0.0
    for w, a, b in zip(ref.rows(ROWS), dequantized_rows(ours, ROWS), dequantized_rows(theirs, ROWS)):
        w = w.astype(np.float64)
        ss += float(np.sum(w * w))
        se_a += float(np.sum((a - w) ** 2))
        se_b += float(np.sum((b - w) ** 2))
    return ss, se_a, se_b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="HF Qwen3 checkpoint (default: a random one with 0.6B shapes)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the random checkpoint (default 4; 0.6B has 28)")
    ap.add_argument("--types", nargs="+", default=list(FTYPES), choices=list(FTYPES))
    ap.add_argument("--work-dir", type=Path, help="keep the checkpoint and files here (default: a temp dir)")
    args = ap.parse_args()
    import ctypes

    import llama_cpp

    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)   # llama.cpp's log off
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edgeqwen-kquant-error-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = work / f"qwen3-0.6b-shapes-{args.layers}l"
        if not (ckpt / "config.json").is_file():
            print(f"writing a random checkpoint ({args.layers} layers, Qwen3-0.6B widths, bf16) to {ckpt}", flush=True)
            make_checkpoint(ckpt, layers=args.layers, low_memory=True, **QWEN3_0_6B)
    refs = load_checkpoint(ckpt).tensors
    f32 = work / "model-f32.gguf"
    if not f32.is_file():
        convert(ckpt, f32, "f32", progress=False)

    ok = True
    for out_type in args.types:
        ours_path, llama_path = work / f"ours-{out_type}.gguf", work / f"llama-{FTYPES[out_type]}.gguf"
        t0 = time.perf_counter()
        convert(ckpt, ours_path, out_type, force=True, progress=False)
        t_ours = time.perf_counter() - t0
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{FTYPES[out_type]}")
        t0 = time.perf_counter()
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(llama_path).encode(), params) != 0:
            raise SystemExit(f"llama.cpp failed to quantize {f32} to {FTYPES[out_type]}")
        t_llama = time.perf_counter() - t0
        ours, theirs = GGUFFile(ours_path), GGUFFile(llama_path)

        print(f"\n== {out_type}: edgeqwen convert {t_ours:.1f} s (from the checkpoint), "
              f"llama.cpp quantize {t_llama:.1f} s (from the F32 GGUF)")
        print(f"{'tensor':28s} {'shape':>14s} {'ours':>5s} {'llama':>5s} {'rel RMS ours':>12s} "
              f"{'llama.cpp':>10s} {'ratio':>7s}  bytes")
        tot = np.zeros(3)
        per_tensor = []
        n_same = n_mat = 0
        worst = 1.0
        for name, ref in refs.items():
            a, b = ours.tensors[name], theirs.tensors[name]
            same = a.qtype == b.qtype and np.array_equal(a.raw(), b.raw())
            if len(ref.shape) == 1:
                if not same:
                    print(f"{name:28s} {'':>14s} {a.qtype.name:>5s} {b.qtype.name:>5s}  (1-D) bytes DIFFER")
                    ok = False
                continue
            ss, ea, eb = errors(ref, a, b)
            tot += (ss, ea, eb)
            ra, rb = (ea / ss) ** 0.5, (eb / ss) ** 0.5
            ratio = ra / rb if rb > 0 else (1.0 if ra == 0 else float("inf"))
            worst = max(worst, ratio, 1 / ratio if ratio > 0 else float("inf"))
            n_mat += 1
            n_same += same
            per_tensor.append((ra, rb))
            print(f"{name:28s} {'x'.join(map(str, ref.shape)):>14s} {a.qtype.name:>5s} {b.qtype.name:>5s} "
                  f"{ra:12.5f} {rb:10.5f} {ratio:7.4f}  {'identical' if same else 'DIFFER'}")
        ra, rb = (tot[1] / tot[0]) ** 0.5, (tot[2] / tot[0]) ** 0.5
        ma, mb = np.mean(per_tensor, axis=0)
        within = worst <= 1.05
        ok &= within
        print(f"summary {out_type}: {n_same}/{n_mat} matrices byte-identical; mean per-tensor rel RMS error "
              f"ours {ma:.5f}, llama.cpp {mb:.5f}; over all matrices together (weighted by ||w||^2) "
              f"ours {ra:.5f}, llama.cpp {rb:.5f} (ratio {ra / rb:.4f}); worst per-tensor ratio "
              f"{worst:.4f} ({'within' if within else 'OUTSIDE'} 5%); size ours "
              f"{ours_path.stat().st_size / 2**20:.1f} MiB, llama.cpp {llama_path.stat().st_size / 2**20:.1f} MiB")
    if args.work_dir is None:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
