"""The built-in demo model: a small random-weight Qwen3 made with our own converter on first
use and cached, so `edgeqwen run` works with no download. Its output is gibberish."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEMO_NAME = "edgeqwen-demo-qwen3-random-q8_0.gguf"
DEMO_SHAPE = dict(hidden=256, intermediate=768, layers=4, heads=8, kv_heads=2, head_dim=64, tied=True, seed=1234)


def cache_dir() -> Path:
    root = os.environ.get("EDGEQWEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeqwen")
    return Path(root)


def demo_model_path(log=None) -> Path:
    """Path of the demo GGUF, building it (a few seconds) if it is not cached yet."""
    from converters.hf_to_gguf import convert
    from converters.synthetic import make_checkpoint

    out = cache_dir() / DEMO_NAME
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the demo model (random weights) into {out} ...")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "demo", **DEMO_SHAPE)
        try:
            convert(ckpt, out, "q8_0", progress=False)
        except Exception:
            if out.is_file():     # another process built it at the same time
                return out
            raise
    return out
