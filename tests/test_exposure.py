"""Exposure of inserted canaries (Carlini et al., "The Secret Sharer", USENIX Security 2019).

The end-to-end tests train a small interpolated character n-gram model on Python's own help
text with a canary sentence inserted a number of times, and check that exposure behaves as
the paper describes: high for a canary seen often, near chance for secrets never seen, and
the skew-normal extrapolation agreeing with the exact rank where both can be computed.
"""

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
from pydoc_data.topics import topics
from scipy import stats

from unlearnkit.errors import MetricError
from unlearnkit.metrics.exposure import (
    Canary,
    ExposureResult,
    _skewnorm_logcdf,
    canary_exposure,
    exact_exposure,
    exposure_from_rank,
    extrapolated_exposure,
)

PREFIX = "my telephone number is "
SECRET = "0431"
LOG2_R = math.log2(10**4)


# ---------------------------------------------------------------------------- test language model


class CharNGram:
    """Character n-gram model, add-k smoothed at each order and linearly interpolated.

    ``P(c | h) = sum_j lambdas[j] * (count(h_j c) + k) / (count(h_j) + k V)`` where ``h_j`` is
    the last ``j`` characters of the history (``j = 0 .. order-1``) and ``V`` the vocabulary
    size plus one for unseen characters. Interpolating lower orders keeps the scores of the
    10^4 candidates distinct and smoothly distributed, as a neural model's are.
    """

    def __init__(self, text, *, order=4, k=0.5, lambdas=(0.4, 0.3, 0.2, 0.1)):
        self.order, self.k, self.lambdas = order, k, lambdas
        padded = "\x02" * (order - 1) + text
        ends = range(order - 1, len(padded))
        self.grams = [Counter(padded[i - j:i + 1] for i in ends) for j in range(order)]
        self.contexts = [Counter(padded[i - j:i] for i in ends) for j in range(order)]
        self.vocab = len(set(text)) + 1
        self.cache = {}

    def nll(self, text):
        """Negative log-likelihood (nats) of the whole text."""
        if text in self.cache:
            return self.cache[text]
        n, k, kv = self.order, self.k, self.k * self.vocab
        padded = "\x02" * (n - 1) + text
        total = 0.0
        for i in range(n - 1, len(padded)):
            p = 0.0
            for j, lam in enumerate(self.lambdas):
                h = padded[i - j:i]
                p += lam * (self.grams[j].get(h + padded[i], 0) + k) / (self.contexts[j].get(h, 0) + kv)
            total -= math.log(p)
        self.cache[text] = total
        return total

    def __call__(self, texts):
        return np.array([self.nll(t) for t in texts])


def corpus_with(sentence, times, *, seed=0):
    """Python's help text (first 200,000 characters) with ``sentence`` inserted ``times`` times
    at random positions, each on a line of its own."""
    text = " ".join(topics[key] for key in sorted(topics))[:200_000]
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(text)) for _ in range(times))
    pieces, last = [], 0
    for cut in cuts:
        pieces += [text[last:cut], "\n" + sentence + "\n"]
        last = cut
    pieces.append(text[last:])
    return "".join(pieces)


@pytest.fixture(scope="module")
def canary():
    return Canary(PREFIX, SECRET)


@pytest.fixture(scope="module")
def model_20(canary):
    return CharNGram(corpus_with(canary.text(), 20))


@pytest.fixture(scope="module")
def model_2(canary):
    return CharNGram(corpus_with(canary.text(), 2))


# ---------------------------------------------------------------------------- end to end


def test_canary_inserted_often_is_highly_exposed(canary, model_20):
    result = canary_exposure(canary, model_20)  # auto: |R| = 10^4 <= exact_limit
    assert result.method == "exact"
    assert result.space_size == 10**4 and result.n_scored == 10**4
    assert result.exposure >= 0.9 * LOG2_R
    assert result.rank is not None and result.rank <= 2
    assert result.canary_log_perplexity == pytest.approx(model_20.nll(canary.text()))
    # The extrapolated estimate is capped at log2 |R|: a rank below 1 is impossible.
    extrapolated = canary_exposure(canary, model_20, method="extrapolated")
    assert 0.9 * LOG2_R <= extrapolated.exposure <= LOG2_R
    assert extrapolated.rank is None and extrapolated.n_scored == 5_000


def test_never_inserted_secrets_are_near_chance(canary, model_20):
    # Whatever the model, a uniformly random secret has a uniform rank, so its exposure
    # averages 1/ln 2 ~ 1.44 bits; here the model has memorised a *different* secret.
    others = canary.sample(10, seed=123)
    exposures = [canary_exposure(Canary(PREFIX, s), model_20).exposure for s in others]
    assert np.mean(exposures) < 3.0
    assert max(exposures) < 0.7 * LOG2_R


def test_exact_and_extrapolated_agree_on_ngram_model(canary, model_2):
    # Inserted twice, the canary is moderately exposed (rank ~100 of 10^4, ~6.6 bits).
    exact = canary_exposure(canary, model_2, method="exact")
    assert 4.0 < exact.exposure < 0.9 * LOG2_R
    # Measured |extrapolated - exact| <= 0.42 bit over secrets 0431, 7259, 3318 inserted once
    # or twice and sample seeds 0-2 (0.30 bit at most for this canary); the tolerance of 1 bit
    # leaves more than a factor 2 for the skew-normal fit's sampling error.
    for seed in range(3):
        extrapolated = canary_exposure(canary, model_2, method="extrapolated", seed=seed)
        assert extrapolated.exposure == pytest.approx(exact.exposure, abs=1.0)
        assert extrapolated.canary_log_perplexity == exact.canary_log_perplexity


@pytest.mark.parametrize("shape", [-4.0, 0.0])
def test_exact_and_extrapolated_agree_on_skew_normal_scores(shape):
    rng = np.random.default_rng(0)
    space = stats.skewnorm.rvs(shape, loc=60.0, scale=8.0, size=100_000, random_state=rng)
    ordered = np.sort(space)
    for bits in (2, 4, 6, 8, 10):
        canary_score = ordered[round(2.0**-bits * space.size) - 1]
        exact, rank = exact_exposure(canary_score, space)
        assert exact == pytest.approx(bits, abs=0.01)
        others = np.flatnonzero(space != canary_score)
        sample = space[rng.choice(others, 5_000, replace=False)]
        # Over 60 seeds the error's maximum was 0.43 bit up to 8 bits (shape -4; 0.43 for
        # shape 0) but 0.63 (0.86) at 10 bits, where only ~5 of the 5,000 sampled scores lie
        # beyond the canary and the fitted tail rests on the shape estimate.
        tolerance = 0.5 if bits <= 8 else 1.0
        assert extrapolated_exposure(canary_score, sample) == pytest.approx(exact, abs=tolerance)


# ---------------------------------------------------------------------------- rank and exposure


def test_exposure_from_rank_endpoints():
    assert exposure_from_rank(1, 10**4) == pytest.approx(LOG2_R)
    assert exposure_from_rank(10**4, 10**4) == 0.0
    assert exposure_from_rank(5_000, 10**4) == pytest.approx(1.0)
    assert exposure_from_rank(1, 2**100) == pytest.approx(100.0)


def test_exact_exposure_rank_and_ties():
    scores = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    assert exact_exposure(1.0, scores) == (pytest.approx(math.log2(5)), 1.0)
    assert exact_exposure(5.0, scores) == (0.0, 5.0)
    # Two candidates at 2.0: one below, the other tied counts half.
    assert exact_exposure(2.0, scores)[1] == 2.5
    # A model that scores everything alike gives rank (|R|+1)/2: about 1 bit, not 0 or max.
    exposure, rank = exact_exposure(7.0, np.full(10**4, 7.0))
    assert rank == (10**4 + 1) / 2
    assert exposure == pytest.approx(1.0, abs=1e-3)


def test_uniform_rank_averages_one_over_ln2():
    size = 10**4
    mean = np.mean([exposure_from_rank(r, size) for r in range(1, size + 1)])
    assert mean == pytest.approx(1 / math.log(2), abs=0.01)


def test_extrapolated_tail_is_finite_and_capped():
    sample = np.random.default_rng(1).normal(size=5_000)
    deep = extrapolated_exposure(-60.0, sample)
    # For a normal fit, -log2 Phi(-60) ~ 2,600 bits; scipy's own logcdf gives -inf here.
    assert math.isfinite(deep) and 1_000 < deep < 10_000
    assert extrapolated_exposure(-60.0, sample, space_size=10**4) == pytest.approx(LOG2_R)
    assert extrapolated_exposure(60.0, sample) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", [-3.0, 0.0, 3.0])
def test_skewnorm_logcdf_is_continuous_into_the_tail(shape):
    # Where scipy's logcdf is still accurate, the tail integral must agree with it.
    for z in (-2.0, -4.0, -6.0, -8.0):
        reference = stats.skewnorm.logcdf(z, shape)
        if math.isfinite(reference) and reference > -700:
            assert _skewnorm_logcdf(z, shape, 0.0, 1.0) == pytest.approx(reference, rel=1e-6)
    if shape == 0.0:
        assert _skewnorm_logcdf(-50.0, 0.0, 0.0, 1.0) == pytest.approx(stats.norm.logcdf(-50.0), rel=1e-8)


# ---------------------------------------------------------------------------- canaries


def test_canary_text_space_and_candidates():
    c = Canary("pin ", "ba", alphabet="ba", suffix=".")
    assert (c.length, c.space_size) == (2, 4)
    assert c.text() == "pin ba." and c.text("ab") == "pin ab."
    assert c.candidates() == ["bb", "ba", "ab", "aa"]  # the alphabet's own order
    assert all(c.candidates().index(s) == c.index(s) for s in c.candidates())
    assert Canary(PREFIX, "999").candidates()[-1] == "999"


def test_canary_sample_is_uniform_without_own_secret_and_seeded():
    c = Canary("x", "3")
    draws = c.sample(9_000, seed=5)
    counts = Counter(draws)
    assert "3" not in counts and len(counts) == 9
    assert all(800 < n < 1_200 for n in counts.values())
    assert draws == c.sample(9_000, seed=5)
    assert Canary("x", "0", alphabet="01").sample(50, seed=0) == ["1"] * 50


def test_result_to_dict_is_json_ready(canary, model_2):
    result = canary_exposure(canary, model_2, method="extrapolated", n_samples=200)
    d = result.to_dict()
    assert set(d) == {"exposure", "method", "space_size", "n_scored", "canary_log_perplexity", "rank"}
    assert json.loads(json.dumps(d)) == d
    assert isinstance(result, ExposureResult) and d["rank"] is None


def digit_scorer(texts):
    """Deterministic, distinct scores for digit secrets: the secret read as a number."""
    return np.array([float(t[1:] or 0) for t in texts])


def test_scorer_is_called_in_bounded_batches():
    sizes = []

    def scorer(texts):
        sizes.append(len(texts))
        return digit_scorer(texts)

    canary_exposure(Canary("x", "123"), scorer, batch_size=64)
    assert max(sizes) <= 64 and sum(sizes) == 1_000
    sizes.clear()
    canary_exposure(Canary("x", "123"), scorer, method="extrapolated", n_samples=300, batch_size=100)
    assert max(sizes) <= 100 and sum(sizes) == 301


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: exact_exposure(float("nan"), np.arange(5.0)), "canary_score is nan"),
        (lambda: exact_exposure(1.0, np.array([1.0, np.nan, np.inf])), "2 non-finite"),
        (lambda: exact_exposure(1.0, np.array([])), "empty"),
        (lambda: exact_exposure(1.0, np.array([1.0])), "at least 2"),
        (lambda: exact_exposure(1.5, np.arange(5.0)), "not among candidate_scores"),
        (lambda: exposure_from_rank(0, 10), r"rank must lie in \[1, space_size\]"),
        (lambda: exposure_from_rank(11, 10), r"rank must lie in \[1, space_size\]"),
        (lambda: exposure_from_rank(1, 1), "space_size must be >= 2"),
        (lambda: extrapolated_exposure(0.0, np.arange(49.0)), "at least 50"),
        (lambda: extrapolated_exposure(0.0, np.ones(100)), "all equal"),
        (lambda: extrapolated_exposure(0.0, np.r_[np.arange(99.0), np.nan]), "1 non-finite"),
        (lambda: Canary(PREFIX, "04a1"), r"symbol\(s\) \['a'\] that are not in the alphabet"),
        (lambda: Canary(PREFIX, ""), "secret is empty"),
        (lambda: Canary(PREFIX, "0", alphabet="0"), "at least 2 symbols"),
        (lambda: Canary(PREFIX, "0", alphabet="001"), "duplicate"),
        (lambda: Canary(PREFIX, "0").text("12"), "has 2 symbol"),
        (lambda: Canary("x", "0" * 7).candidates(), "method='extrapolated'"),
        (lambda: canary_exposure(Canary("x", "12"), digit_scorer, method="best"), "unknown method 'best'"),
        (lambda: canary_exposure(Canary("x", "12"), lambda t: np.zeros(len(t) + 1)), r"shape \(101,\)"),
        (lambda: canary_exposure(Canary("x", "12"), lambda t: np.full(len(t), np.nan)), "100 non-finite"),
        (lambda: canary_exposure(Canary("x", "12"), digit_scorer, n_samples=10), "n_samples must be >= 50"),
        (lambda: canary_exposure(Canary("x", "12"), digit_scorer, batch_size=0), "batch_size must be >= 1"),
        (lambda: canary_exposure("x12", digit_scorer), "must be a Canary"),
    ],
)
def test_bad_input_is_a_named_error(call, match):
    with pytest.raises(MetricError, match=match):
        call()


def test_metric_error_is_a_value_error():
    with pytest.raises(ValueError):
        exposure_from_rank(float("inf"), 10)


def test_digit_scorer_exposure_matches_its_rank():
    # Secret "12" scored 12.0 among 0..99: 12 candidates lower, rank 13.
    result = canary_exposure(Canary("x", "12"), digit_scorer)
    assert result.rank == 13.0
    assert result.exposure == pytest.approx(math.log2(100) - math.log2(13))
