"""The Python API: `edgeqwen.load(path)` -> `Model` with generate / stream / logits / tokenize."""
from __future__ import annotations

import numbers
import os
import time
from typing import Iterator, Sequence

import numba
from threadpoolctl import threadpool_limits
import numpy as np

from . import constants as C
from .constrain import compile_format
from .context_shift import check_keep
from .cpu import physical_cores
from .errors import EdgeQwenError, check_text, quote
from .inputs import check_prompt, check_stop
from .generate import Chunk, GenerationResult, Timings, stream_generate
from .gguf_model import ModelFile
from .kv_cache import check_type
from .limits import MAX_CTX, MAX_THREADS
from .model import Qwen3Model
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer

DEFAULT_CTX = 4096


class _CheckedModel(Qwen3Model):
    """The forward, with the one failure non-finite weights cause inside the numba kernels turned
    into a clear error. With eps >= 1e-30 (config.py) and finite activations RMSNorm never divides
    by zero and attention's softmax sum is >= 1; a NaN hidden state makes numba's fastmath
    division check fire (ZeroDivisionError). The other symptom, NaN/inf reaching a matmul or the
    logits, is caught by gguf_model.CheckedWeight and the sampler."""

    def _non_finite(self) -> EdgeQwenError:
        return EdgeQwenError(f"{self.mf.path}: non-finite values (NaN or inf) in the forward pass: the file's "
                             f"weights contain NaN/inf or values too large for float32")

    compile_log = None          # set by the CLI: where "compiling kernels ..." goes (warmup.compile_notice)

    def forward(self, *args, **kwargs):
        try:
            with self._first_call():
                return super().forward(*args, **kwargs)
        except ZeroDivisionError:
            raise self._non_finite() from None

    def forward_many(self, *args, **kwargs):
        try:
            with self._first_call():
                return super().forward_many(*args, **kwargs)
        except ZeroDivisionError:
            raise self._non_finite() from None

    def _first_call(self):
        """The first forward may compile the kernels: say so (warmup.compile_notice)."""
        import contextlib

        if self.compile_log is None or getattr(self, "_warm", False):
            return contextlib.nullcontext()
        self._warm = True
        from .warmup import compile_notice
        return compile_notice(self.mf, _CheckedModel.compile_log)


def _int_option(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise EdgeQwenError(f"{name} must be an integer in {low}..{high}, got {quote(value)}")
    return int(value)


def set_threads(threads: int | None) -> int:
    n = physical_cores() if threads is None else _int_option("threads", threads, 1, MAX_THREADS)
    limit = numba.config.NUMBA_NUM_THREADS
    n = min(n, limit)
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")    # numpy's BLAS (prefill GEMMs) likewise
    return n


class Model:
    """A loaded Qwen3 GGUF model. Create with `edgeqwen.load(path, threads=, ctx_size=)`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, ctx_size: int | None = None,
                 batch_size: int = 256, cache_type: str = "f16", cache_type_k: str | None = None,
                 cache_type_v: str | None = None):
        t0 = time.perf_counter()
        self.threads = set_threads(threads)
        self.file = ModelFile(path)
        self.config = self.file.config
        self.tokenizer = Tokenizer.from_gguf_metadata(self.file.metadata, str(self.file.path))
        self._load_model(ctx_size, batch_size, cache_type, cache_type_k, cache_type_v)
        self.load_seconds = time.perf_counter() - t0

    def _load_model(self, ctx_size, batch_size, cache_type, cache_type_k, cache_type_v) -> None:
        n_ctx = (min(self.config.n_ctx_train, DEFAULT_CTX) if ctx_size is None
                 else _int_option("ctx_size", ctx_size, 1, MAX_CTX))
        batch_size = _int_option("batch_size", batch_size, 1, 2**16)
        self.n_ctx = n_ctx
        try:
            self.model = _CheckedModel(self.file, n_ctx, max_batch=batch_size,      # KV cache types: f32, f16, q8_0
                                       type_k=check_type("cache_type_k", cache_type_k or cache_type),
                                       type_v=check_type("cache_type_v", cache_type_v or cache_type))
        except MemoryError:
            raise EdgeQwenError(f"not enough memory for a context of {n_ctx} tokens (-c/--ctx-size, "
                                f"ctx_size)") from None

    # -- text <-> ids
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer.encode(check_prompt(text, "the text to tokenize"), special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def chat_template(self) -> str | None:
        return self.file.metadata.get(C.KEY_CHAT_TEMPLATE)

    def default_sampling(self) -> SamplingParams:
        """Sampling defaults from the file's general.sampling.* keys, else SamplingParams()'s."""
        md, d = self.file.metadata, SamplingParams()
        return SamplingParams(
            temperature=float(md.get(C.K.General.SAMPLING_TEMP, d.temperature)),
            top_k=int(md.get(C.K.General.SAMPLING_TOP_K, d.top_k)),
            top_p=float(md.get(C.K.General.SAMPLING_TOP_P, d.top_p)),
            min_p=float(md.get(C.K.General.SAMPLING_MIN_P, d.min_p)),
        )

    # -- scoring
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 logits (n_tokens, vocab) of a token sequence, each position predicting the next."""
        ids = self._check_ids(token_ids)
        if len(ids) > self.n_ctx:        # the RoPE tables have n_ctx positions
            raise EdgeQwenError(f"{len(ids)} tokens do not fit the context of {self.n_ctx} tokens "
                                f"(raise ctx_size)")
        cache = self.model.new_cache(max(len(ids), 1))
        return self.model.forward(ids, cache, "all")

    def _check_ids(self, token_ids) -> list[int]:
        if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__iter__"):
            raise EdgeQwenError(f"token ids must be a sequence of integers, got {quote(token_ids)}")
        ids = list(token_ids)
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise EdgeQwenError(f"token ids must be integers, got {quote(t)}")
        ids = [int(t) for t in ids]
        if not ids:
            raise EdgeQwenError("no tokens given")
        bad = [t for t in ids if not 0 <= t < self.config.n_vocab]
        if bad:
            raise EdgeQwenError(f"token id {quote(bad[0])} is outside the vocabulary (0..{self.config.n_vocab - 1})")
        return ids

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            check_text(prompt, "the prompt")
        ids = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not ids:
            raise EdgeQwenError("the prompt is empty")
        if len(ids) >= self.n_ctx:
            raise EdgeQwenError(f"the prompt has {len(ids)} tokens, which does not fit the context of "
                                f"{self.n_ctx} tokens (raise --ctx-size / ctx_size)")
        return ids

    # -- generation
    def stream(self, prompt: str | Sequence[int], max_tokens: int = 256, *, sampling: SamplingParams | None = None,
               stop: Sequence[str] = (), response_format: dict | None = None, context_shift: bool = False,
               keep: int = 0, **overrides) -> Iterator[Chunk]:
        """Yield `Chunk`s of text as they are generated; the last one carries finish_reason and timings.
        `overrides` are SamplingParams fields (temperature=0 for greedy, top_k, top_p, min_p, seed, ...).
        `response_format` constrains the output (OpenAI's shapes: {"type": "json_object"}, {"type":
        "json_schema", "json_schema": {"schema": ...}}; also {"type": "regex", "regex": ...}, {"type":
        "grammar", "grammar": LARK}; see constrain.py). `context_shift`: when the context is full, drop the
        oldest half of what follows the first `keep` tokens and go on (context_shift.py) instead of ending
        with finish_reason "length". The arguments are checked here, when `stream` is called, not at the
        first chunk."""
        if sampling is not None and not isinstance(sampling, SamplingParams):
            raise EdgeQwenError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        params = sampling or self.default_sampling()
        unknown = set(overrides) - set(params.__dict__)
        if unknown:
            raise EdgeQwenError(f"unknown option(s) {', '.join(sorted(map(quote, unknown)))}; sampling options: "
                                f"{', '.join(params.__dict__)}")
        if overrides:
            params = SamplingParams(**{**params.__dict__, **overrides})
        fmt = compile_format(self.tokenizer, response_format)
        sampler = Sampler(params, fmt.start() if fmt is not None else None)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 0:
            raise EdgeQwenError(f"max_tokens must be an integer >= 0, got {quote(max_tokens, 60)}")
        stop = check_stop(stop)
        ids = self._prompt_ids(prompt)
        if not isinstance(context_shift, bool):
            raise EdgeQwenError(f"context_shift must be True or False, got {quote(context_shift)}")
        n_keep = check_keep(keep, self.n_ctx, "keep") if context_shift else None
        cache = self.model.new_cache()
        return stream_generate(self.model, self.tokenizer, cache, ids, sampler, int(max_tokens), stop, n_keep=n_keep)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **kw) -> GenerationResult:
        """Generate a completion: text, token ids, finish reason ("stop" or "length") and timings."""
        parts, ids, last = [], [], None
        for ch in self.stream(prompt, max_tokens, **kw):
            parts.append(ch.text)
            ids.extend(ch.token_ids)
            last = ch
        return GenerationResult("".join(parts), ids, last.finish_reason, last.timings or Timings(), last.message)

    # -- chat (edgeqwen/chat.py)
    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, enable_thinking: bool = True,
                            tokenize: bool = False, **kwargs) -> str | list[int]:
        """The prompt for `messages`, rendered from the file's chat template (else Qwen3's) exactly as
        Hugging Face's `tokenizer.apply_chat_template(..., tokenize=False)` renders it."""
        from .chat import ChatEngine

        text = ChatEngine(self).render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                       enable_thinking=enable_thinking, **kwargs)
        return self.tokenize(text) if tokenize else text

    def chat(self, messages: list[dict], enable_thinking: bool = True, thinking_budget: int | None = None,
             tools: list[dict] | None = None, stream: bool = False, max_tokens: int | None = None,
             response_format: dict | None = None, **sampling):
        """The next assistant message: a `ChatResult` (content, reasoning, tool_calls, finish_reason, token
        counts, timings), or with stream=True an iterator of `ChatDelta` (reasoning/content pieces; the last
        has `.result`). Sampling defaults follow the mode (Qwen3 model card); `sampling` overrides them
        (SamplingParams fields, and logits_processor=fn(logits, generated_ids) -> logits).
        `response_format` constrains the content as in `stream` (thinking stays free; the constraint
        starts after </think>).
        Calls share one KV cache: a prompt starting like the previous one is not prefilled again."""
        from .chat import ChatEngine

        if getattr(self, "_chat_engine", None) is None:
            self._chat_engine = ChatEngine(self)
        return self._chat_engine.complete(messages, enable_thinking=enable_thinking, thinking_budget=thinking_budget,
                                          tools=tools, stream=stream, max_tokens=max_tokens,
                                          response_format=response_format, **sampling)


    # -- KV state on disk (edgeqwen/state.py)
    def save_state(self, path: str | os.PathLike) -> int:
        """Write the KV cache of `chat` (the tokens it holds and their keys/values) to `path`, atomically,
        so that another process can `load_state` it instead of prefilling again. Returns the bytes written."""
        return self._engine().save_state(path)

    def load_state(self, path: str | os.PathLike) -> int:
        """Restore a state written by `save_state` with the same model file and cache types (anything else
        is refused with one clear error): the next `chat` whose prompt starts with its tokens prefills only
        what follows. Returns the number of tokens restored."""
        return self._engine().load_state(path)

    def _engine(self):
        from .chat import ChatEngine

        if getattr(self, "_chat_engine", None) is None:
            self._chat_engine = ChatEngine(self)
        return self._chat_engine

    # -- batch (edgeqwen/batch.py)
    def batch(self, items, parallel: int = 4, seed: int | None = None, max_tokens: int = 512,
              enable_thinking: bool = True, thinking_budget: int | None = None, prefix_cache: bool = True,
              response_format: dict | None = None, **sampling) -> Iterator[dict]:
        """Run many prompts with continuous batching, yielding one result dict per item as it completes.
        `items`: strings (raw completion prompts; id = position) or dicts with `id`, `prompt` or `messages`
        (chat) and per-item options (max_tokens, temperature, top_k, top_p, min_p, enable_thinking,
        thinking_budget, stop, seed, tools, response_format). Bad items yield {"id", "error"}; the others go on.
        `response_format` (as in `stream`) applies to every item without its own; compiled once. Records of
        JSON formats that finished carry the parsed value as "json".
        With `seed`, each item's sampling seed is derived from (seed, id): results do not depend on
        `parallel` or order. `sampling`: SamplingParams fields applied to every item."""
        from .batch import BatchRunner, items_from_api

        runner = BatchRunner(self, parallel=parallel, seed=seed, prefix_cache=prefix_cache, max_tokens=max_tokens,
                             enable_thinking=enable_thinking, thinking_budget=thinking_budget, sampling=sampling,
                             response_format=response_format)
        return runner.run(items_from_api(items))


def load(path: str | os.PathLike, threads: int | None = None, ctx_size: int | None = None, **kw) -> Model:
    """Open a Qwen3 GGUF file (mmap; weights are read as they are used). kw: Model's batch_size,
    cache_type, cache_type_k, cache_type_v."""
    return Model(path, threads=threads, ctx_size=ctx_size, **kw)
