"""edgeqwen: a CPU/edge inference runtime for Qwen3 GGUF models.

    import edgeqwen
    model = edgeqwen.load("Qwen3-0.6B-Q8_0.gguf", threads=2)
    print(model.generate("The capital of France is", max_tokens=16, temperature=0).text)
"""
from .api import Model, load
from .errors import EdgeQwenError
from .generate import Chunk, GenerationResult
from .sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["load", "Model", "EdgeQwenError", "SamplingParams", "Chunk", "GenerationResult", "__version__"]
