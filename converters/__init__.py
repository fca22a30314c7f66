"""Converters into GGUF: Hugging Face Qwen3 checkpoints -> llama.cpp-compatible GGUF files."""
