#!/usr/bin/env python
"""Time to build edgeqwen's tokenizer from a GGUF file's metadata (151,936 tokens, 151,387 merges),
moved out of the test suite (a timing is not a test: it depends on the machine's load).

    python benchmarks/tokenizer_build.py MODEL.gguf [--repeat 5]

Prints each build's seconds and the best; ~0.6 s on an idle laptop core.
"""
from __future__ import annotations

import argparse
import time

from edgeqwen.gguf_reader import GGUFFile
from edgeqwen.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    md = GGUFFile(a.model).metadata
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        Tokenizer.from_gguf_metadata(md, a.model)
        times.append(time.perf_counter() - t0)
    print(" ".join(f"{t:.3f}" for t in times), f"s; best {min(times):.3f} s")


if __name__ == "__main__":
    main()
