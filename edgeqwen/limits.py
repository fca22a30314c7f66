"""Bounds on what the runtime accepts from users (CLI options, API arguments, input files), in
one light module the CLI can import before anything heavy. Values past them are refused up front
with one clear line, instead of an allocation that takes minutes or a traceback."""

MAX_CTX = 2**20              # context tokens (a 0.6B model's KV cache alone is 224 GiB there)
MAX_THREADS = 1024
MAX_SEED = 2**64 - 1         # numpy's generators take any int, reproducibility needs a bound
MAX_TOP_K = 2**31 - 1
MAX_TOKENS = 2**31 - 1       # -n / max_tokens (the context ends generation long before)
MAX_PROMPT_BYTES = 16 * 2**20    # a prompt file (any context fills up well before)
MAX_TEMPLATE_BYTES = 1 * 2**20   # a chat template file
