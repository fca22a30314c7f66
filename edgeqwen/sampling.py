"""Token samplers and logits processors for generation (numpy only).

In the style of mlx-lm's ``sample_utils``: the parameters are a small frozen dataclass,
and a :class:`Sampler` is built once per request. Building it checks the parameters and
picks the steps that are switched on, so calling it per token only runs those steps.

Pipeline for one step, given the float logits of the last position:

1. **Penalties** (:func:`apply_penalties`), applied to a copy of the logits:

   a. ``repetition_penalty`` (HF/CTRL semantics, as ``RepetitionPenaltyLogitsProcessor``):
      for every distinct id seen so far (prompt + generated), a positive logit is divided
      by the penalty and a negative one is multiplied by it. It is applied once per id,
      however often the id occurred.
   b. ``frequency_penalty`` / ``presence_penalty`` (OpenAI semantics), over the
      *generated* ids only: ``logit[t] -= count[t] * frequency_penalty
      + (count[t] > 0) * presence_penalty``.

   Ids outside ``[0, vocab)`` are ignored, as transformers does for ids past the LM head.

2. **Greedy** when ``temperature == 0``: argmax of the penalized logits. Ties go to the
   lowest id.

3. Otherwise the **filter chain**, in transformers' (and vLLM's) order:
   ``temperature -> top_k -> top_p -> min_p``. The temperature is applied *first*, so
   top_p and min_p see the tempered distribution. This is ``TemperatureLogitsWarper``,
   ``TopKLogitsWarper``, ``TopPLogitsWarper``, ``MinPLogitsWarper`` applied in that order,
   each with ``min_tokens_to_keep=1``. (llama.cpp's default chain applies the temperature
   *last*, after top_k/top_p/min_p. That gives a different distribution whenever
   temperature != 1 and top_p or min_p is on.)

   * top_k: keep every token whose logit is >= the k-th largest. Like transformers, all
     tokens tied with the k-th are kept, so more than k can survive. ``0`` or
     ``k >= vocab`` turns it off.
   * top_p: rank the tokens by probability, ties broken by lower id first. Keep the
     smallest leading set whose cumulative probability is >= top_p, and always at least
     one token. Token *j* is kept iff the mass of the tokens ranked above it is
     < top_p. ``1.0`` turns it off.
   * min_p: keep the tokens with ``p >= min_p * p_max``. ``0`` turns it off.

   Then the survivors are renormalized and sampled: inverse CDF with one uniform draw
   from the sampler's own ``numpy.random.Generator``.

:func:`filter_probs` exposes steps 2-3 (without penalties). It returns the surviving ids
(ascending) and their renormalized float64 probabilities. Tokens whose probability is
exactly 0 (a logit of ``-inf``, or float64 underflow) never survive.

Cost on a 151,936-entry vocab: top_k uses ``np.argpartition``-style selection
(``np.partition``) and then works on the k candidates only. min_p is a threshold. top_p
without top_k/min_p does not sort the whole vocab: it partitions out a growing head
(256, 2048, ... tokens) until that head holds >= top_p of the mass, and sorts only the
head. Penalties use ``np.unique`` over the ids. There is no Python loop over the vocab.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import EdgeQwenError, quote
from .limits import MAX_SEED

__all__ = ["SamplingParams", "Sampler", "filter_probs", "apply_penalties", "make_sampler"]

# First head size tried by top_p when nothing has narrowed the candidates yet, and the
# factor by which it grows.
_TOP_P_HEAD = 256
_TOP_P_GROW = 8


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0 => greedy
    top_k: int = 40  # 0 => disabled
    top_p: float = 0.95  # 1.0 => disabled
    min_p: float = 0.05  # 0 => disabled
    repetition_penalty: float = 1.0  # 1.0 => disabled; HF/CTRL semantics over prompt + generated ids
    presence_penalty: float = 0.0  # 0 => disabled; OpenAI semantics over generated ids
    frequency_penalty: float = 0.0  # 0 => disabled; OpenAI semantics over generated ids
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> None:
        """Raise EdgeQwenError naming the first out-of-range field."""

        def real(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise EdgeQwenError(f"{name} must be a number, got {quote(v, 60)}")
            try:
                v = float(v)
            except OverflowError:            # an int past float's range
                raise EdgeQwenError(f"{name} is out of range: {quote(v, 60)}") from None
            if not math.isfinite(v):
                raise EdgeQwenError(f"{name} must be finite, got {v!r}")
            return v

        t = real("temperature")
        if t < 0:
            raise EdgeQwenError(f"temperature must be >= 0 (0 = greedy), got {t}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise EdgeQwenError(f"top_k must be an integer, got {k!r}")
        if k < 0:
            raise EdgeQwenError(f"top_k must be >= 0 (0 = disabled), got {k}")
        p = real("top_p")
        if not 0 < p <= 1:
            raise EdgeQwenError(f"top_p must be in (0, 1] (1 = disabled), got {p}")
        m = real("min_p")
        if not 0 <= m <= 1:
            raise EdgeQwenError(f"min_p must be in [0, 1] (0 = disabled), got {m}")
        r = real("repetition_penalty")
        if r <= 0:
            raise EdgeQwenError(f"repetition_penalty must be > 0 (1 = disabled), got {r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = real(name)
            if not -2 <= v <= 2:
                raise EdgeQwenError(f"{name} must be in [-2, 2] (0 = disabled), got {v}")
        s = self.seed
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise EdgeQwenError(f"seed must be an integer or None, got {quote(s, 60)}")
            if not 0 <= s <= MAX_SEED:
                raise EdgeQwenError(f"seed must be in 0..2**64-1, got {quote(s, 60)}")


def _as_logits(logits) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1 or x.shape[0] == 0:
        raise EdgeQwenError(f"logits must be a non-empty 1-D array (vocab,), got shape {x.shape}")
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float32)
    return x


def _ids_in_vocab(ids: Sequence[int], vocab: int) -> np.ndarray:
    a = np.asarray(ids, dtype=np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= vocab):
        a = a[(a >= 0) & (a < vocab)]
    return a


def _repetition(x: np.ndarray, ids: np.ndarray, penalty: float) -> None:
    """In place: HF/CTRL repetition penalty on the distinct `ids`."""
    if ids.size == 0:
        return
    u = np.unique(ids)
    v = x[u]
    pen = x.dtype.type(penalty)
    x[u] = np.where(v < 0, v * pen, v / pen)


def _presence_frequency(x: np.ndarray, ids: np.ndarray, presence: float, frequency: float) -> None:
    """In place: OpenAI presence/frequency penalties for the generated `ids`."""
    if ids.size == 0:
        return
    u, counts = np.unique(ids, return_counts=True)
    x[u] -= (counts * frequency + presence).astype(x.dtype)


def apply_penalties(logits: np.ndarray, prompt_ids: Sequence[int], generated_ids: Sequence[int],
                    params: SamplingParams) -> np.ndarray:
    """Return a penalized copy of `logits` (repetition, then presence/frequency). The input is not modified."""
    x = _as_logits(logits).copy()
    vocab = x.shape[0]
    if params.repetition_penalty != 1.0:
        seen = np.concatenate([_ids_in_vocab(prompt_ids, vocab), _ids_in_vocab(generated_ids, vocab)])
        _repetition(x, seen, params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        _presence_frequency(x, _ids_in_vocab(generated_ids, vocab), params.presence_penalty,
                            params.frequency_penalty)
    return x


def _top_p_keep(e: np.ndarray, total: float, top_p: float) -> np.ndarray:
    """Positions in `e` that top_p keeps. `e` holds unnormalized probabilities of a head of the
    ranking (a set closed under "greater probability"); the whole distribution sums to `total`."""
    n = e.shape[0]
    need = top_p * total
    m = min(n, _TOP_P_HEAD)
    while m < n:
        thr = np.partition(e, n - m)[n - m]
        head = np.flatnonzero(e >= thr)  # with all ties at the cut: a true head of the ranking
        if e[head].sum() >= need:  # the kept set ends inside this head: sort only the head
            break
        m *= _TOP_P_GROW
    else:
        head = np.arange(n)
    # Unstable sort (3x faster than a stable one): equal values give the same cumulative sums in
    # any order, so only the membership of a tie group cut by the boundary needs fixing below.
    order = head[np.argsort(-e[head])]
    p = e[order] / total
    before = np.cumsum(p) - p  # mass ranked strictly above each token
    before[0] = 0.0
    keep = max(1, int(np.searchsorted(before, top_p, side="left")))
    kept = order[:keep]
    if keep < order.shape[0]:
        v = e[order[keep - 1]]
        if e[order[keep]] == v:  # the cut splits a tie group: keep its lowest positions
            eh = e[head]
            above = head[eh > v]
            kept = np.concatenate([above, head[eh == v][: keep - above.shape[0]]])
    return kept


def _filter(x: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    vocab = x.shape[0]
    top = x.max()  # NaN propagates
    if not np.isfinite(top):
        raise EdgeQwenError(f"logits must be finite with at least one value > -inf (max is {top})")
    if params.temperature == 0:
        return np.array([int(np.argmax(x))], dtype=np.int64), np.ones(1)

    # top_k on the raw logits: dividing by T > 0 keeps the order (and, in float64, keeps
    # distinct float32 values distinct), so this is top_k on the tempered logits.
    k = params.top_k
    ids: np.ndarray | None = None
    if 0 < k < vocab:
        kth = np.partition(x, vocab - k)[vocab - k]
        ids = np.flatnonzero(x >= kth)
        z = x[ids].astype(np.float64)
    else:
        z = x.astype(np.float64)
    # Shift before dividing so that a tiny temperature cannot overflow to inf - inf.
    z -= float(top)
    z /= params.temperature
    e = np.exp(z)  # the top token's is exactly 1
    total = e.sum()

    # top_p and min_p each keep a head of the ranking, so together they keep the shorter
    # head. min_p's threshold is relative to the top token, which top_p always keeps, so it
    # can run first as a cheap threshold. top_p's cumulative mass is still normalized by the
    # mass *before* min_p (`total`), as in the chain top_p -> min_p.
    pos: np.ndarray | None = None
    if params.min_p > 0:
        pos = np.flatnonzero(e >= params.min_p)
    if params.top_p < 1:
        if pos is None:
            pos = _top_p_keep(e, total, params.top_p)
        else:
            pos = pos[_top_p_keep(e[pos], total, params.top_p)]
        pos.sort()
    if pos is not None:
        e = e[pos]
        ids = pos if ids is None else ids[pos]
    elif ids is None:
        ids = np.arange(vocab, dtype=np.int64)
    nz = e > 0
    if not nz.all():
        e, ids = e[nz], ids[nz]
    return ids.astype(np.int64, copy=False), e / e.sum()


def filter_probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Surviving candidate ids (ascending, int64) and their renormalized probabilities (float64)
    after temperature -> top_k -> top_p -> min_p. No penalties. Greedy (temperature 0) gives
    ``([argmax], [1.0])``."""
    params.validate()
    return _filter(_as_logits(logits), params)


class Sampler:
    """One request's sampler: ``sampler(logits, prompt_ids, generated_ids) -> token id``.

    Its only state is a ``numpy.random.Generator`` seeded from ``params.seed``, so the same
    seed and the same inputs give the same tokens.
    """

    __slots__ = ("params", "rng", "_penalize", "constraint")

    def __init__(self, params: SamplingParams, constraint=None):
        params.validate()
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        # structured output (constrain.Constraint): masks the penalized logits before temperature/top-k/
        # top-p/min-p (and greedy), and is advanced by each sampled token. Settable later (chat: after </think>).
        self.constraint = constraint
        rep = params.repetition_penalty != 1.0
        pf = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._penalize: Callable | None = None
        if rep or pf:
            def penalize(x: np.ndarray, prompt_ids, generated_ids) -> np.ndarray:
                return apply_penalties(x, prompt_ids, generated_ids, params)
            self._penalize = penalize

    def __call__(self, logits: np.ndarray, prompt_ids: Sequence[int] = (),
                 generated_ids: Sequence[int] = ()) -> int:
        x = _as_logits(logits)
        if self._penalize is not None:
            x = self._penalize(x, prompt_ids, generated_ids)
        if self.constraint is None:
            return self._pick(x)
        tok = self._pick(self.constraint.mask(x))
        self.constraint.advance(tok)
        return tok

    def _pick(self, x: np.ndarray) -> int:
        if self.params.temperature == 0:
            if not np.isfinite(x.max()):
                raise EdgeQwenError(f"logits must be finite with at least one value > -inf (max is {x.max()})")
            return int(np.argmax(x))
        ids, probs = _filter(x, self.params)
        if ids.shape[0] == 1:
            return int(ids[0])
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.shape[0] - 1)])


def make_sampler(params: SamplingParams) -> Sampler:
    """mlx-lm-style constructor: ``make_sampler(params)(logits, prompt_ids, generated_ids)``."""
    return Sampler(params)
