"""Measure what the q4_0 policy's Q8_0 output matrix buys: logits error against transformers
(float32) for a q4_0 file with the output matrix in Q8_0 (our policy) vs in Q4_0.

    python benchmarks/q4_output_policy.py [--hidden 256]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3ForCausalLM

import edgeqwen
from converters import hf_to_gguf
from converters.synthetic import make_checkpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    a = ap.parse_args()
    ids = list(range(1000, 1064))
    policy = hf_to_gguf.tensor_type
    with tempfile.TemporaryDirectory() as tmp:
        for tied in (True, False):
            ck = make_checkpoint(Path(tmp) / f"ck{tied}", hidden=a.hidden, intermediate=3 * a.hidden, layers=4,
                                 heads=8, kv_heads=2, head_dim=64, tied=tied, seed=5)
            hf = Qwen3ForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
            with torch.no_grad():
                ref = hf(torch.tensor([ids])).logits[0].numpy()
            def all_q4(name, shape, out_type, tied_, **_):
                return hf_to_gguf.T.F32 if len(shape) == 1 else hf_to_gguf.T.Q4_0

            for label, fn in (("output Q8_0 (policy)", policy), ("output Q4_0", all_q4)):
                hf_to_gguf.tensor_type = fn
                out = Path(tmp) / f"{tied}-{label[:9].replace(' ', '')}.gguf"
                hf_to_gguf.convert(ck, out, "q4_0", progress=False)
                hf_to_gguf.tensor_type = policy
                lg = edgeqwen.load(out, ctx_size=128).logits(ids)
                err = np.abs(lg - ref).max() / np.abs(ref).max()
                rms = np.sqrt(((lg - ref) ** 2).mean()) / np.sqrt((ref ** 2).mean())
                top1 = (lg.argmax(-1) == ref.argmax(-1)).mean()
                print(f"{'tied' if tied else 'untied':6s} {label:22s} size {out.stat().st_size / 2**20:6.1f} MiB  "
                      f"max err {err:.4f}  rel RMS err {rms:.4f}  top-1 agreement {top1:.3f}")


if __name__ == "__main__":
    main()
