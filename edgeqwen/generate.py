"""Generation, layered as in mlx-lm: `generate_step` yields token ids, `stream_generate` yields
text chunks with stop handling, `generate` (on the Model) collects a result."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .context_shift import shift
from .kv_cache import KVCache
from .model import Qwen3Model
from .sampling import Sampler


@dataclass
class Timings:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0      # after the first generated token

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "prompt_seconds": round(self.prompt_seconds, 4),
                "prompt_tok_s": round(self.prompt_tok_s, 2), "generated_tokens": self.generated_tokens,
                "decode_seconds": round(self.decode_seconds, 4), "decode_tok_s": round(self.decode_tok_s, 2)}


@dataclass
class Chunk:
    """One piece of streamed output. The last chunk has `finish_reason` set."""
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "stop" | "length"
    message: str | None = None           # why generation ended, when it is worth telling
    timings: Timings | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    timings: Timings
    message: str | None = None


def generate_step(model: Qwen3Model, cache: KVCache, prompt_ids: Sequence[int], sampler: Sampler,
                  timings: Timings) -> Iterator[int]:
    """Prefill the prompt (batched), then yield sampled tokens forever; the caller stops.
    Each yielded token is already in the cache's history once the next one is requested."""
    t0 = time.perf_counter()
    logits = model.forward(prompt_ids, cache, "last")
    timings.prompt_tokens, timings.prompt_seconds = len(prompt_ids), time.perf_counter() - t0
    generated: list[int] = []
    t_first = None
    while True:
        tok = sampler(logits, prompt_ids, generated)
        generated.append(tok)
        timings.generated_tokens = len(generated)
        if t_first is None:
            t_first = time.perf_counter()
        else:
            timings.decode_seconds = time.perf_counter() - t_first
        yield tok
        if cache.n >= cache.n_ctx:
            return
        logits = model.forward([tok], cache, "last")


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


@dataclass
class Feed:
    """A request from a step generator to its driver: run `ids` through the model after what the
    sequence's cache holds and send back the last position's logits. `prefill` marks the prompt:
    the driver may reuse a cached prefix of it, and sends back (tokens reused, logits)."""
    ids: list[int]
    prefill: bool = False


def drive(steps, feed) -> Iterator:
    """Run a step generator on one sequence: `feed(Feed) -> logits` answers its Feed requests;
    everything else it yields is passed on. (`batch.py` drives many generators at once instead.)"""
    value = None
    while True:
        try:
            item = steps.send(value)
        except StopIteration:
            return
        value = None
        if isinstance(item, Feed):
            value = feed(item)
        else:
            yield item


def completion_steps(tokenizer, prompt_ids: Sequence[int], sampler: Sampler, max_tokens: int, n_ctx: int,
                     stop: Sequence[str] = (), stop_ids: frozenset[int] | None = None) -> Iterator:
    """Raw completion as a step generator: yields `Feed` requests (answered with logits through
    send) and `Chunk`s of text. Never emits a partial UTF-8 character or any part of a stop
    string; ends with a chunk whose finish_reason is "stop" or "length"."""
    timings = Timings()
    stop_ids = tokenizer.stop_ids if stop_ids is None else stop_ids
    dec = tokenizer.stream(skip_special=True)
    pending = ""                        # decoded text not yet emitted (could start a stop string)
    ids: list[int] = []
    if max_tokens <= 0:
        yield Chunk("", [], "length", "max_tokens is 0", timings)
        return
    t0 = time.perf_counter()
    cached, logits = yield Feed(list(prompt_ids), prefill=True)
    timings.prompt_tokens, timings.prompt_seconds = len(prompt_ids) - cached, time.perf_counter() - t0
    n, t_first = len(prompt_ids), None
    while True:
        tok = sampler(logits, prompt_ids, ids)
        timings.generated_tokens = len(ids) + 1
        if t_first is None:
            t_first = time.perf_counter()
        else:
            timings.decode_seconds = time.perf_counter() - t_first
        if tok in stop_ids:
            yield Chunk(pending + dec.flush(), [], "stop", None, timings)
            return
        ids.append(tok)
        pending += dec.feed(tok)
        if sampler.constraint is not None and sampler.constraint.done:
            yield Chunk(pending + dec.flush(), [tok], "stop", None, timings)   # the grammar is complete
            return
        if stop:
            hits = [(pending.find(s), s) for s in stop if s in pending]
            if hits:
                cut = min(hits)[0]
                yield Chunk(pending[:cut], [tok], "stop", None, timings)
                return
            keep = _holdback(pending, stop)
        else:
            keep = 0
        out, pending = (pending[:len(pending) - keep], pending[len(pending) - keep:]) if keep else (pending, "")
        if len(ids) >= max_tokens:
            yield Chunk(out + pending + dec.flush(), [tok], "length", None, timings)
            return
        if n >= n_ctx:
            msg = f"context full ({n_ctx} tokens); raise --ctx-size to generate more"
            yield Chunk(out + pending + dec.flush(), [tok], "length", msg, timings)
            return
        yield Chunk(out, [tok])
        logits = yield Feed([tok])
        n += 1


def stream_generate(model: Qwen3Model, tokenizer, cache: KVCache, prompt_ids: Sequence[int],
                    sampler: Sampler, max_tokens: int, stop: Sequence[str] = (),
                    stop_ids: frozenset[int] | None = None, n_keep: int | None = None) -> Iterator[Chunk]:
    """Yield text chunks as tokens are produced (`completion_steps` on one sequence and cache).
    n_keep: when the cache is full, shift the context keeping the first n_keep positions
    (context_shift.py) instead of ending with finish_reason "length"."""
    def feed(f: Feed):
        if n_keep is not None and cache.n + len(f.ids) > cache.n_ctx:
            shift(model, cache, n_keep)
        logits = model.forward(f.ids, cache, "last")
        return (0, logits) if f.prefill else logits
    room = cache.n_ctx - cache.n if n_keep is None else sys.maxsize
    return drive(completion_steps(tokenizer, prompt_ids, sampler, max_tokens, room, stop, stop_ids), feed)
