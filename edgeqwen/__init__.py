"""edgeqwen: a CPU/edge inference runtime for Qwen3 GGUF models."""
from .errors import EdgeQwenError

__version__ = "0.1.0"
__all__ = ["EdgeQwenError", "__version__"]
