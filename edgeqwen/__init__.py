"""edgeqwen: a CPU/edge inference runtime for Qwen3 GGUF models.

    import edgeqwen
    model = edgeqwen.load("Qwen3-0.6B-Q8_0.gguf", threads=2)
    print(model.generate("The capital of France is", max_tokens=16, temperature=0).text)
"""
import os as _os

# OpenBLAS's idle worker threads spin for a while after each BLAS call (2^28 cycles by default) and
# then steal the cores from numba's threads in the prompt path, which alternates BLAS (attention
# scores) with numba's parallel regions (int8 GEMM, norms): pp256 on 2 threads measured 68.6 tok/s
# with the default, 179.6 with this (0.6B Q4_K_M; 86 -> 197 on Q4_0). Decode does not use BLAS.
# It takes effect only if OpenBLAS is not loaded yet (numpy imported before edgeqwen keeps the
# default); an explicit setting is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .api import Model, load  # noqa: E402
from .errors import EdgeQwenError  # noqa: E402
from .generate import Chunk, GenerationResult  # noqa: E402
from .sampling import SamplingParams  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "Model", "EdgeQwenError", "SamplingParams", "Chunk", "GenerationResult", "__version__"]
