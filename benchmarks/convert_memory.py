#!/usr/bin/env python
"""Peak memory (RSS) and wall time of `edgeqwen convert` on a Qwen3-0.6B-shaped checkpoint.

Writes a random bf16 checkpoint with Qwen3-0.6B's shapes (hidden 1024, intermediate 3072,
28 layers, 16 query / 8 KV heads of 128, tied embeddings, vocab 151,936; ~1.2 GB) with
`converters.synthetic.make_checkpoint(low_memory=True)` unless it already exists, then runs
`python -m edgeqwen convert` on it once per requested type, in a fresh process each, measured
with GNU `/usr/bin/time -v` when available (else the child's rusage from os.wait4).

    python benchmarks/convert_memory.py                       # q8_0
    python benchmarks/convert_memory.py --types q8_0 q4_0 --checkpoint /data/qwen3-0.6b-synthetic

Exit status 1 when a conversion fails or its peak RSS exceeds --max-rss-mib (default 1536 = 1.5 GiB).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN3_0_6B = dict(hidden=1024, intermediate=3072, layers=28, heads=16, kv_heads=8, head_dim=128,
                  tied=True, dtype="bf16", max_position_embeddings=40960, seed=0)
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


def ensure_checkpoint(path: Path) -> None:
    if (path / "config.json").is_file():
        print(f"checkpoint: {path} (exists, reused)")
        return
    from converters.synthetic import make_checkpoint

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"checkpoint: writing a Qwen3-0.6B-shaped bf16 checkpoint to {path} ...", flush=True)
    t0 = time.perf_counter()
    make_checkpoint(tmp, low_memory=True, **QWEN3_0_6B)
    tmp.rename(path)   # only a complete checkpoint gets the final name
    print(f"checkpoint: written in {time.perf_counter() - t0:.1f} s")


def measure(cmd: list[str]) -> tuple[int, float, int, str]:
    """Run cmd; return (exit status, wall seconds, peak RSS in bytes, stderr)."""
    gnu_time = Path("/usr/bin/time")
    if gnu_time.is_file() and os.access(gnu_time, os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            t0 = time.perf_counter()
            r = subprocess.run([str(gnu_time), "-v", "-o", report.name, *cmd], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(report.name).read_text())
        if m is None:
            raise RuntimeError(f"no peak RSS in /usr/bin/time's report; stderr: {r.stderr[-500:]}")
        return r.returncode, wall, int(m.group(1)) * 1024, r.stderr
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)   # reaps the child: its own rusage, not all children's
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        unit = 1 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KiB on Linux
        return proc.returncode, wall, usage.ru_maxrss * unit, err.read()


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path,
                    default=Path(tempfile.gettempdir()) / "edgeqwen-bench-qwen3-0.6b-bf16",
                    help="checkpoint directory, written if absent (default: %(default)s)")
    ap.add_argument("--types", nargs="+", default=["q8_0"], choices=TYPES, help="output types (default: q8_0)")
    ap.add_argument("--out-dir", type=Path, help="keep the GGUF files here (default: a temp dir, removed)")
    ap.add_argument("--max-rss-mib", type=float, default=1536.0, help="fail above this peak RSS (default: 1536)")
    args = ap.parse_args()

    ensure_checkpoint(args.checkpoint)
    ckpt_bytes = sum(p.stat().st_size for p in args.checkpoint.glob("*.safetensors"))
    print(f"checkpoint: {ckpt_bytes / 1e9:.2f} GB of safetensors ({ckpt_bytes / 2**20:.0f} MiB)")

    rc, wall, base_rss, err = measure([sys.executable, "-c", "import edgeqwen.cli, converters.hf_to_gguf"])
    if rc:
        print(err, file=sys.stderr)
        return 1
    print(f"baseline (python + imports only): peak RSS {mib(base_rss)}")

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="edgeqwen-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        print(f"{'type':6s} {'peak RSS':>12s} {'wall':>8s} {'output':>12s}  command")
        for out_type in args.types:
            out = out_dir / f"qwen3-0.6b-synthetic-{out_type}.gguf"
            cmd = [sys.executable, "-m", "edgeqwen", "convert", str(args.checkpoint), "-o", str(out),
                   "--type", out_type, "--force", "-q"]
            rc, wall, rss, err = measure(cmd)
            if rc:
                print(f"{out_type:6s} FAILED (exit {rc}):\n{err}", file=sys.stderr)
                failed = True
                continue
            over = rss / 2**20 > args.max_rss_mib
            failed |= over
            print(f"{out_type:6s} {mib(rss)} {wall:7.1f}s {mib(out.stat().st_size)}  "
                  f"{' '.join(['edgeqwen', *cmd[3:]])}{'  OVER LIMIT' if over else ''}", flush=True)
            if args.out_dir is None:
                out.unlink()
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"limit: {args.max_rss_mib:.0f} MiB -> {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
