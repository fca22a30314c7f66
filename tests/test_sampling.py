"""edgeqwen.sampling against independent references.

* The filter chain is checked against transformers' warpers, applied in the order
  edgeqwen documents: Temperature -> TopK -> TopP -> MinP (min_tokens_to_keep=1), in float64.
* The repetition penalty is checked against RepetitionPenaltyLogitsProcessor (bit-exact, float32).
* Presence/frequency penalties are checked against the OpenAI formula, written here.
* Sampling is checked with seeded determinism and a chi-square goodness-of-fit test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from edgeqwen.errors import EdgeQwenError
from edgeqwen.sampling import Sampler, SamplingParams, apply_penalties, filter_probs, make_sampler

VOCAB = 151_936


# ----------------------------------------------------------------------------- references

def hf_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """transformers' warpers in edgeqwen's documented order, in float64: the full (vocab,)
    probability vector after Temperature -> TopK -> TopP -> MinP, then softmax."""
    scores = torch.from_numpy(np.asarray(logits, dtype=np.float64).copy())[None]
    input_ids = torch.zeros((1, 1), dtype=torch.long)
    warpers = [TemperatureLogitsWarper(float(p.temperature))]
    if p.top_k > 0:
        warpers.append(TopKLogitsWarper(int(p.top_k)))
    # top_p=1 and min_p=0 go through the warpers too: they must be no-ops, as in edgeqwen
    warpers.append(TopPLogitsWarper(float(p.top_p)))
    warpers.append(MinPLogitsWarper(float(p.min_p)))
    for w in warpers:
        scores = w(input_ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


def openai_penalties(logits: np.ndarray, generated: list[int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI: mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence."""
    out = np.asarray(logits, dtype=np.float64).copy()
    counts: dict[int, int] = {}
    for t in generated:
        counts[t] = counts.get(t, 0) + 1
    for t, c in counts.items():
        out[t] = out[t] - c * frequency - (1.0 if c > 0 else 0.0) * presence
    return out


def assert_matches_hf(logits: np.ndarray, p: SamplingParams, atol: float = 1e-6) -> None:
    ids, probs = filter_probs(logits, p)
    ref = hf_probs(logits, p)
    ref_ids = np.flatnonzero(ref > 0)

    assert ids.dtype == np.int64 and probs.dtype == np.float64
    assert np.all(np.diff(ids) > 0), "ids must be ascending and unique"
    assert np.all(probs > 0)
    assert abs(probs.sum() - 1.0) < 1e-9

    if np.array_equal(ids, ref_ids):
        np.testing.assert_allclose(probs, ref[ids], rtol=0, atol=atol)
        return
    # The only allowed difference: top_p cut a group of equal logits, and transformers kept a
    # different subset of it (its sort order of ties is unspecified). Same size, same values.
    x = np.asarray(logits)
    assert ids.shape == ref_ids.shape, (ids.shape, ref_ids.shape)
    np.testing.assert_array_equal(np.sort(x[ids]), np.sort(x[ref_ids]))
    np.testing.assert_allclose(np.sort(probs), np.sort(ref[ref_ids]), rtol=0, atol=atol)
    diff = np.setxor1d(ids, ref_ids)
    v = x[diff[0]]
    assert np.all(x[diff] == v) and v == x[ids].min(), "differences must be one boundary tie group"
    # edgeqwen's documented tie rule: the lowest ids of the cut group survive
    group = np.flatnonzero(x == v)
    ours = ids[x[ids] == v]
    np.testing.assert_array_equal(ours, group[: ours.shape[0]])


# ----------------------------------------------------------------------------- filter chain vs transformers

PARAMS = [
    SamplingParams(),  # defaults: T=0.8, top_k=40, top_p=0.95, min_p=0.05
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.1),
    SamplingParams(temperature=0.7, top_k=200, top_p=0.5, min_p=0.0),
    SamplingParams(temperature=1.2, top_k=10**7, top_p=0.99, min_p=0.02),  # top_k > vocab
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),  # no filter at all
    SamplingParams(temperature=0.5, top_k=1, top_p=0.95, min_p=0.05),
    SamplingParams(temperature=2.0, top_k=0, top_p=0.999, min_p=0.0),  # wide: grows top_p's head
    SamplingParams(temperature=0.9, top_k=0, top_p=1e-6, min_p=0.0),  # keeps exactly one
    SamplingParams(temperature=1.0, top_k=50, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=0.6, top_k=0, top_p=0.8, min_p=0.2),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0),  # only the max (and its ties)
]


@pytest.mark.parametrize("vocab", [VOCAB, 1000, 7])
@pytest.mark.parametrize("pi", range(len(PARAMS)))
def test_filter_matches_transformers(vocab, pi):
    p = PARAMS[pi]
    for seed in range(3):
        rng = np.random.default_rng(1000 * seed + vocab + pi)
        scale = (1.0, 3.0, 8.0)[seed]
        logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
        assert_matches_hf(logits, p)


@pytest.mark.parametrize("vocab", [VOCAB, 1000, 30])
@pytest.mark.parametrize("pi", range(len(PARAMS)))
def test_filter_matches_transformers_with_ties(vocab, pi):
    """Logits on a coarse grid: many exact ties, also at the top_k, top_p and min_p cuts."""
    p = PARAMS[pi]
    for seed in range(2):
        rng = np.random.default_rng(7 + 31 * seed + vocab + pi)
        logits = (np.round(rng.standard_normal(vocab) * 4) / 2).astype(np.float32)
        assert_matches_hf(logits, p)


@pytest.mark.parametrize("pi", range(len(PARAMS)))
def test_filter_with_masked_logits(pi):
    """-inf logits (e.g. a grammar mask) never survive and do not disturb the rest."""
    rng = np.random.default_rng(pi)
    logits = (rng.standard_normal(5000) * 2).astype(np.float32)
    logits[rng.random(5000) < 0.7] = -np.inf
    assert_matches_hf(logits, PARAMS[pi])
    ids, _ = filter_probs(logits, PARAMS[pi])
    assert np.all(np.isfinite(logits[ids]))


def test_top_k_keeps_ties_like_transformers():
    logits = np.array([3.0, 2.0, 2.0, 2.0, 1.0], dtype=np.float32)
    p = SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)
    ids, probs = filter_probs(logits, p)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])
    assert_matches_hf(logits, p)


def test_top_p_boundary_tie_keeps_lowest_ids():
    logits = np.zeros(8, dtype=np.float32)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0)
    ids, probs = filter_probs(logits, p)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])  # 4 * 1/8 = 0.5 >= top_p
    np.testing.assert_allclose(probs, 0.25)
    assert_matches_hf(logits, p)
    # top_p tiny with a tie at the top: exactly one token, the lowest id
    logits = np.array([0.0, 5.0, 1.0, 5.0], dtype=np.float32)
    ids, probs = filter_probs(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1e-9, min_p=0.0))
    np.testing.assert_array_equal(ids, [1])
    np.testing.assert_array_equal(probs, [1.0])


def test_top_p_smallest_set_reaching_mass():
    # probabilities 0.5, 0.3, 0.15, 0.05 (as logits = log p, temperature 1); cuts away from
    # the exact cumulative sums, where float rounding decides
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3])).astype(np.float64)
    for top_p, want in [(0.4, [1]), (0.49, [1]), (0.51, [1, 3]), (0.79, [1, 3]), (0.81, [1, 2, 3]),
                         (0.94, [1, 2, 3]), (0.96, [0, 1, 2, 3])]:
        ids, _ = filter_probs(logits, SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0))
        np.testing.assert_array_equal(ids, want, err_msg=f"top_p={top_p}")


def test_temperature_is_applied_before_top_p_and_min_p():
    """The documented order: a higher temperature flattens the distribution that top_p/min_p see,
    so more tokens survive (llama.cpp's temperature-last chain would keep the same set)."""
    logits = np.log(np.array([0.6, 0.25, 0.1, 0.05]))
    cold = SamplingParams(temperature=0.5, top_k=0, top_p=0.9, min_p=0.0)
    hot = SamplingParams(temperature=3.0, top_k=0, top_p=0.9, min_p=0.0)
    assert len(filter_probs(logits, cold)[0]) < len(filter_probs(logits, hot)[0])
    cold = SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.2)
    hot = SamplingParams(temperature=3.0, top_k=0, top_p=1.0, min_p=0.2)
    assert len(filter_probs(logits, cold)[0]) < len(filter_probs(logits, hot)[0])


def test_filter_does_not_modify_input_and_accepts_dtypes():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(1000).astype(np.float32)
    before = logits.copy()
    p = SamplingParams()
    ids32, probs32 = filter_probs(logits, p)
    np.testing.assert_array_equal(logits, before)
    x16 = logits.astype(np.float16)
    ids16, probs16 = filter_probs(x16, p)  # computed as float32
    np.testing.assert_array_equal(ids16, filter_probs(x16.astype(np.float32), p)[0])
    ids64, probs64 = filter_probs(logits.astype(np.float64), p)
    np.testing.assert_array_equal(ids64, ids32)
    np.testing.assert_allclose(probs64, probs32, atol=1e-12)


def test_bad_logits():
    p = SamplingParams()
    with pytest.raises(EdgeQwenError):
        filter_probs(np.array([0.0, np.nan, 1.0], dtype=np.float32), p)
    with pytest.raises(EdgeQwenError):
        filter_probs(np.full(4, -np.inf, dtype=np.float32), p)
    with pytest.raises(EdgeQwenError):
        filter_probs(np.zeros((2, 4), dtype=np.float32), p)
    with pytest.raises(EdgeQwenError):
        Sampler(SamplingParams(temperature=0))(np.array([np.nan, 1.0]), [], [])


# ----------------------------------------------------------------------------- greedy

def test_greedy_is_argmax():
    s = Sampler(SamplingParams(temperature=0))
    for seed in range(5):
        logits = np.random.default_rng(seed).standard_normal(VOCAB).astype(np.float32)
        assert s(logits, [], []) == int(np.argmax(logits))
        ids, probs = filter_probs(logits, SamplingParams(temperature=0))
        np.testing.assert_array_equal(ids, [np.argmax(logits)])
        np.testing.assert_array_equal(probs, [1.0])


def test_greedy_ties_lowest_id():
    logits = np.array([1.0, 4.0, 2.0, 4.0, 4.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0))(logits, [], []) == 1


def test_greedy_sees_penalties():
    logits = np.array([0.0, 5.0, 4.9, 1.0], dtype=np.float32)
    p = SamplingParams(temperature=0, presence_penalty=0.5)
    assert Sampler(p)(logits, [1], []) == 1  # presence applies to generated ids only
    assert Sampler(p)(logits, [], [1]) == 2
    p = SamplingParams(temperature=0, repetition_penalty=1.1)
    assert Sampler(p)(logits, [1], []) == 2  # repetition covers the prompt too


# ----------------------------------------------------------------------------- penalties

@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0, 1.05])
@pytest.mark.parametrize("vocab", [VOCAB, 50])
def test_repetition_penalty_matches_transformers(penalty, vocab):
    rng = np.random.default_rng(int(penalty * 100) + vocab)
    logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
    logits[:3] = 0.0  # zero logits stay zero
    prompt = rng.integers(0, vocab, 40).tolist() + [0, 1, 1]
    generated = rng.integers(0, vocab, 25).tolist() + prompt[:5]  # repeats within and across
    ours = apply_penalties(logits, prompt, generated, SamplingParams(repetition_penalty=penalty))

    proc = RepetitionPenaltyLogitsProcessor(penalty=penalty)
    input_ids = torch.tensor([prompt + generated], dtype=torch.long)
    ref = proc(input_ids, torch.from_numpy(logits.copy())[None])[0].numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_repetition_penalty_ignores_ids_outside_vocab():
    logits = np.array([1.0, -1.0, 2.0, 3.0], dtype=np.float32)
    out = apply_penalties(logits, [1, 4, 99], [2, -1], SamplingParams(repetition_penalty=2.0))
    np.testing.assert_array_equal(out, [1.0, -2.0, 1.0, 3.0])
    proc = RepetitionPenaltyLogitsProcessor(penalty=2.0)
    ref = proc(torch.tensor([[1, 4, 99, 2]]), torch.from_numpy(logits.copy())[None])[0].numpy()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.3), (1.5, 0.7), (-0.8, -0.2), (2.0, 2.0)])
def test_presence_frequency_match_openai(presence, frequency):
    rng = np.random.default_rng(int(presence * 10 + frequency * 100) % 1000)
    vocab = 2000
    logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
    prompt = rng.integers(0, vocab, 100).tolist()
    generated = rng.integers(0, 30, 200).tolist()  # heavy repetition
    p = SamplingParams(presence_penalty=presence, frequency_penalty=frequency)
    ours = apply_penalties(logits, prompt, generated, p)
    ref = openai_penalties(logits, generated, presence, frequency)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5)
    # the prompt does not count for presence/frequency
    untouched = np.setdiff1d(np.arange(vocab), generated)
    np.testing.assert_array_equal(ours[untouched], logits[untouched])


def test_penalties_order_repetition_then_openai():
    rng = np.random.default_rng(11)
    vocab = 500
    logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
    prompt = rng.integers(0, vocab, 50).tolist()
    generated = rng.integers(0, vocab, 80).tolist()
    p = SamplingParams(repetition_penalty=1.2, presence_penalty=0.4, frequency_penalty=0.1)
    ours = apply_penalties(logits, prompt, generated, p)
    rep = RepetitionPenaltyLogitsProcessor(penalty=1.2)(
        torch.tensor([prompt + generated]), torch.from_numpy(logits.copy())[None])[0].numpy()
    ref = openai_penalties(rep, generated, 0.4, 0.1)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5)


def test_penalties_do_not_modify_input():
    logits = np.array([1.0, -1.0, 2.0], dtype=np.float32)
    before = logits.copy()
    apply_penalties(logits, [0, 1], [2, 2], SamplingParams(repetition_penalty=1.5, frequency_penalty=1.0))
    np.testing.assert_array_equal(logits, before)


def test_sampler_applies_penalties_before_filters():
    """Sampler == filter_probs(apply_penalties(...)): its draws fall in that filtered set."""
    rng = np.random.default_rng(5)
    vocab = 300
    logits = (rng.standard_normal(vocab) * 2).astype(np.float32)
    prompt = list(range(0, 300, 7))
    generated = list(np.argsort(-logits)[:5])  # penalize the current favourites
    p = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
                       presence_penalty=1.0, frequency_penalty=0.5, seed=3)
    ids, _ = filter_probs(apply_penalties(logits, prompt, generated, p), p)
    s = Sampler(p)
    drawn = {s(logits, prompt, generated) for _ in range(300)}
    assert drawn <= set(ids.tolist())
    plain, _ = filter_probs(logits, p)
    assert set(ids.tolist()) != set(plain.tolist())  # the penalties did change the candidates
    assert set(generated) <= set(plain.tolist())


# ----------------------------------------------------------------------------- sampling

def _run(sampler: Sampler, steps: int = 50, vocab: int = VOCAB) -> list[int]:
    rng = np.random.default_rng(42)  # same logits stream for every run
    prompt = rng.integers(0, vocab, 20).tolist()
    out: list[int] = []
    for _ in range(steps):
        logits = (rng.standard_normal(vocab) * 2).astype(np.float32)
        out.append(sampler(logits, prompt, out))
    return out


def test_same_seed_same_sequence():
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.98, min_p=0.0, repetition_penalty=1.1,
                       presence_penalty=0.3, seed=1234)
    a = _run(Sampler(p))
    b = _run(make_sampler(p))
    assert a == b
    assert len(set(a)) > 40  # it really sampled: a wide distribution over 151,936 ids


def test_different_seeds_different_sequences():
    # uniform over 1000 tokens: two seeds agreeing on 50 draws has probability 1000**-50
    logits = np.zeros(1000, dtype=np.float32)
    p = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    seqs = []
    for seed in (0, 1, 2):
        s = Sampler(SamplingParams(seed=seed, **p))
        seqs.append([s(logits, [], []) for _ in range(50)])
    assert seqs[0] != seqs[1] and seqs[1] != seqs[2] and seqs[0] != seqs[2]
    s = Sampler(SamplingParams(seed=None, **p))  # OS entropy
    assert all(0 <= s(logits, [], []) < 1000 for _ in range(10))


# 0.999 quantiles of the chi-square distribution, df = 1..15
CHI2_999 = [10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588,
            31.264, 32.909, 34.528, 36.123, 37.697]


@pytest.mark.parametrize("p", [
    SamplingParams(temperature=0.9, top_k=8, top_p=0.9, min_p=0.05, seed=0),
    SamplingParams(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0, seed=1),
    SamplingParams(temperature=0.7, top_k=0, top_p=0.95, min_p=0.1, seed=2),
])
def test_sampling_distribution_chi_square(p):
    logits = np.array([2.0, 1.5, -1.0, 1.0, 0.7, 0.5, 0.2, -0.3, -2.0, 0.0, 1.9, -4.0], dtype=np.float32)
    ids, probs = filter_probs(logits, p)
    assert 3 <= len(ids) <= 12
    n = 20_000
    s = Sampler(p)
    draws = np.array([s(logits, [], []) for _ in range(n)])
    assert set(np.unique(draws)) <= set(ids.tolist()), "drew a filtered-out token"
    observed = np.array([(draws == i).sum() for i in ids])
    expected = probs * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[len(ids) - 2], (chi2, observed, expected)
    assert np.abs(observed / n - probs).max() < 0.015


def test_single_candidate_is_deterministic():
    logits = np.array([0.0, 3.0, 1.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=None))
    assert all(s(logits, [], []) == 1 for _ in range(20))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 1.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.01), ("top_p", math.nan),
    ("min_p", -0.01), ("min_p", 1.01),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", math.inf),
    ("presence_penalty", 2.5), ("presence_penalty", -2.1),
    ("frequency_penalty", 3.0), ("frequency_penalty", -2.5),
    ("seed", -1), ("seed", 1.5),
])
def test_validate_rejects(field, value):
    p = SamplingParams(**{field: value})
    with pytest.raises(EdgeQwenError, match=field):
        p.validate()
    with pytest.raises(EdgeQwenError, match=field):
        Sampler(p)
    with pytest.raises(EdgeQwenError, match=field):
        filter_probs(np.zeros(4, dtype=np.float32), p)


@pytest.mark.parametrize("kw", [
    dict(), dict(temperature=0), dict(top_k=0), dict(top_p=1.0), dict(min_p=0.0), dict(min_p=1.0),
    dict(presence_penalty=2.0), dict(presence_penalty=-2.0), dict(frequency_penalty=-2.0),
    dict(repetition_penalty=0.5), dict(seed=0), dict(seed=2**40), dict(top_k=np.int64(5), temperature=np.float32(0.5)),
])
def test_validate_accepts(kw):
    SamplingParams(**kw).validate()
    Sampler(SamplingParams(**kw))


def test_params_frozen():
    p = SamplingParams()
    with pytest.raises(Exception):
        p.temperature = 1.0  # type: ignore[misc]
