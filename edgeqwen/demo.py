"""The built-in demo model: a tiny Qwen3-architecture model (2.1 M parameters, F16, its own 2k-token
BPE vocabulary with Qwen3's special tokens and chat template) trained by this project with
`examples/train_tiny/train.py` on generated tasks -- step-by-step arithmetic in <think> blocks, tool
calls, JSON answers, letter counting, sorting, unit conversions, dates -- and shipped in the package
(edgeqwen/data), so `run`, `chat`, `batch` and `serve` work with no download. It is not Qwen3's
weights and knows little beyond those tasks."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import EdgeQwenError

DEMO_FILE = "edgeqwen-demo-f16.gguf"     # F16: its kernels compile in seconds, not minutes


def cache_dir() -> Path:
    root = os.environ.get("EDGEQWEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeqwen")
    return Path(root)


def demo_model_path(log=None) -> Path:
    """Path of the shipped demo GGUF (`log` is accepted for callers that report progress; nothing is built)."""
    path = Path(str(resources.files("edgeqwen") / "data" / DEMO_FILE))
    if not path.is_file():
        raise EdgeQwenError(f"the built-in demo model {path} is missing from this installation "
                            "(reinstall edgeqwen, or pass -m FILE.gguf)")
    return path
