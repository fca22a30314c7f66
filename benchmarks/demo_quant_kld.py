"""What each quantization type costs on the demo model: KL divergence from the F16 file, top-1
agreement and perplexity (`edgeqwen perplexity --kl-base`), on generated chat conversations that the
training did not draw (tasks.py with another seed), rendered with the chat template.

    python benchmarks/demo_quant_kld.py --checkpoint examples/train_tiny/out/hf [--types q8_0 q4_0 q4_k_m q6_k]

The checkpoint is the HF directory examples/train_tiny/train.py writes (not in git: run the training).
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "train_tiny")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "examples" / "train_tiny" / "out" / "hf")
    ap.add_argument("--types", nargs="+", default=["q8_0", "q6_k", "q4_k_m", "q4_0"])
    ap.add_argument("--conversations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args()

    import tasks
    from converters.hf_to_gguf import convert
    from edgeqwen import load
    from edgeqwen.perplexity import perplexity

    docs = ["".join(text for text, _ in seq) for seq in tasks.examples(args.seed, args.conversations)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {t: Path(tmp) / f"demo-{t}.gguf" for t in ["f16", *args.types]}
        for t, path in files.items():
            convert(args.checkpoint, path, t, progress=False)
        base = load(files["f16"], threads=args.threads)
        rows = []
        for t in ["f16", *args.types]:
            r = perplexity(load(files[t], threads=args.threads), docs, ctx=512, base=base).as_dict()
            rows.append((t, files[t].stat().st_size, r))
            print(json.dumps({"type": t, "bytes": files[t].stat().st_size, **r}), file=sys.stderr, flush=True)
    print(f"{len(docs)} documents, {rows[0][2]['tokens']} tokens scored; base: F16\n")
    print("| type | file MiB | PPL | ln(PPL/PPL_f16) | mean KLD | 99th pct KLD | max KLD | same top token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, size, r in rows:
        print(f"| {t.upper()} | {size / 2**20:.2f} | {r['ppl']:.4f} | {math.log(r['ppl'] / r['base_ppl']):+.5f} | "
              f"{r['kld_mean']:.6f} | {r['kld_p99']:.5f} | {r['kld_max']:.4f} | {100 * r['same_top']:.2f} % |")


if __name__ == "__main__":
    main()
