"""Metric statistics whose correctness is a property of the formula: checked on synthetic data with known truth."""

import math
from pathlib import Path

import numpy as np
import pytest

from unlearnkit import metrics as M
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MetricError
from unlearnkit.models import LogisticRegression


# ---------------------------------------------------------------------------- U-LiRA under exact unlearning
class SyntheticShadow(M.ShadowSetup):
    """A shadow setup whose "unlearned models" are draws of a per-row statistic with known truth.

    For each row, the statistic of a model that forgot it is drawn from the same distribution as
    that of a model that never saw it, plus ``shift`` (0: exact unlearning; > 0: a model that
    remembers). The outputs are two-class logits ``[0, z]`` with label 1, so the logit-scaled
    confidence is ``z`` and the correctness is ``1[z > 0]``.
    """

    def __init__(self, n, *, n_splits, n_partitions, kind, shift, seed):
        pool = Dataset(np.zeros((n, 1)), np.ones(n, dtype=int), n_classes=2, name=f"synthetic-null{n}")
        super().__init__(pool, LogisticRegression(n_features=1, n_classes=2), n_splits=n_splits,
                         n_partitions=n_partitions, seed=seed)
        rng = np.random.default_rng([seed, n_splits, n_partitions])
        K, P = n_splits, n_partitions
        forgot = self.partitions[:, None, :] == np.arange(P)[None, :, None]
        if kind == "logit":
            mu, sd = rng.normal(2.0, 1.5, size=n), rng.uniform(0.3, 1.5, size=n)
            self.z = mu + sd * rng.normal(size=(K, P, n)) + shift * forgot
        else:  # correctness: a per-row probability of being classified correctly
            q = np.clip(rng.beta(4.0, 1.5, size=n) + shift * forgot, 0.0, 1.0)
            self.z = np.where(rng.random((K, P, n)) < q, 1.0, -1.0)

    def outputs(self, role, s, f=None, **kw):
        z = self.z[s, 0 if f is None else f]
        return M.ModelOutputs(np.stack([np.zeros_like(z), z], axis=1), np.ones(len(z), dtype=int))


# rows per setup: about 60,000 forgotten cases each, so the standard error of the mean p is ~0.002
NULL_CASES = [(K, P, 120_000 // K) for K in (8, 16, 32) for P in (2, 3, 4)]


@pytest.mark.parametrize("kind", ["correctness", "logit"])
@pytest.mark.parametrize("K,P,n", NULL_CASES)
def test_ulira_is_unbiased_under_exact_unlearning(kind, K, P, n):
    """Forgotten and never-seen statistics from one distribution: mean p_member 0.5 and AUC 0.5 (within 0.01)."""
    setup = SyntheticShadow(n, n_splits=K, n_partitions=P, kind=kind, shift=0.0, seed=K * 10 + P)
    res = M.ulira(setup, "retrain", kind=kind)
    assert abs(res.mean_p_member - 0.5) < 0.01, (kind, K, P, res.mean_p_member)
    assert abs(res.auc - 0.5) < 0.01, (kind, K, P, res.auc)


@pytest.mark.parametrize("K", [8, 16, 32])
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_ulira_from_statistics_is_unbiased_for_every_partition_count(K, P):
    """The scoring alone, also for P = 1 (each split forgets its whole training half)."""
    rng = np.random.default_rng([K, P])
    n = 120_000 // K
    in_mask = np.zeros((K, n), dtype=bool)
    parts = np.full((K, n), -1)
    for s in range(K):
        inside = rng.permutation(n)[: n // 2]
        in_mask[s, inside] = True
        parts[s, inside] = rng.integers(P, size=inside.size)
    mu, sd = rng.normal(0.0, 2.0, size=n), rng.uniform(0.2, 2.0, size=n)
    stats = mu + sd * rng.normal(size=(K, P, n))
    for kind, values in (("logit", stats), ("correctness", (stats > 0).astype(float))):
        res = M.ulira_from_statistics(values, in_mask, parts, kind=kind, seed=1)
        assert abs(res.mean_p_member - 0.5) < 0.01, (kind, K, P, res.mean_p_member)


@pytest.mark.parametrize("kind,shift", [("correctness", 0.1), ("logit", 0.5)])
def test_a_model_that_does_not_forget_is_rated_farther_from_half_than_exact_unlearning(kind, shift):
    exact = M.ulira(SyntheticShadow(8000, n_splits=16, n_partitions=4, kind=kind, shift=0.0, seed=3), "retrain",
                    kind=kind)
    remembers = M.ulira(SyntheticShadow(8000, n_splits=16, n_partitions=4, kind=kind, shift=shift, seed=3),
                        "retrain", kind=kind)
    assert abs(remembers.mean_p_member - 0.5) > abs(exact.mean_p_member - 0.5) + 0.01
    assert remembers.mean_p_member > 0.51 and remembers.auc > exact.auc + 0.01


def test_ulira_from_statistics_refuses_inconsistent_inputs():
    stats = np.zeros((8, 2, 10))
    in_mask = np.zeros((8, 10), dtype=bool)
    in_mask[:, :5] = True
    parts = np.where(in_mask, 0, -1)
    with pytest.raises(MetricError, match="partitions"):
        M.ulira_from_statistics(stats, in_mask, np.zeros((8, 10), dtype=int))
    with pytest.raises(MetricError, match="non-finite"):
        M.ulira_from_statistics(np.full((8, 2, 10), np.nan), in_mask, parts)
    with pytest.raises(MetricError, match="shape"):
        M.ulira_from_statistics(np.zeros((8, 10)), in_mask, parts)


# ---------------------------------------------------------------------------- loss-attack interval coverage
def _null_coverage(rows_per_side: int, draws: int, seed: int) -> float:
    """Fraction of loss attacks on two samples of one distribution whose 95% interval contains 0.5."""
    rng = np.random.default_rng([seed, rows_per_side])
    covered = 0
    for draw in range(draws):
        members = rng.exponential(size=rows_per_side)
        nonmembers = rng.exponential(size=rows_per_side + rows_per_side // 2)  # truncated to the same size
        res = M.loss_attack(members, nonmembers, seed=draw)
        covered += res.low <= 0.5 <= res.high
    return covered / draws


def test_loss_attack_interval_covers_chance_under_the_null():
    """Members and non-members from one distribution: the 95% interval must contain 0.5 at least 94% of the time."""
    assert _null_coverage(100, 150, seed=0) >= 0.94


@pytest.mark.slow
@pytest.mark.parametrize("rows", [30, 300, 2000])
def test_loss_attack_interval_coverage_at_several_sizes(rows):
    assert _null_coverage(rows, 300, seed=1) >= 0.94


def test_clopper_pearson_interval_closed_forms():
    from unlearnkit.metrics.mia import clopper_pearson_interval

    low, high = clopper_pearson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))  # (1 - high)^10 = 0.025
    low, high = clopper_pearson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    low, high = clopper_pearson_interval(50, 100)
    assert low == pytest.approx(1 - high) and 0.39 < low < 0.40
    assert all(math.isnan(v) for v in clopper_pearson_interval(0, 0))


# ---------------------------------------------------------------------------- references and directions
def test_metric_references_are_public_and_formulas_reconstructed_say_so():
    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    for name in M.names():
        meta = M.info(name)
        text = f"{meta.reference}\n{meta.doc}".lower()
        assert "digest" not in text and "research/" not in text, name
    assert "digest" not in page.lower()
    assert "reconstructed" in M.info("retdev").reference and "arXiv:2410.01276" in M.info("retdev").reference


def test_exposure_states_its_direction_and_the_never_seen_average():
    meta = M.info("exposure")
    assert meta.higher_is_better is False
    assert meta.direction == "lower is better, ~1.44 bits is what a model that never saw the secret scores on average"
    # the stated average: a secret the model never saw has a uniform rank, and its mean exposure is ~1/ln 2
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    mean = np.mean([M.exact_exposure(s, scores)[0] for s in scores[rng.permutation(scores.size)[:4000]]])
    assert mean == pytest.approx(1 / math.log(2), abs=0.05)
