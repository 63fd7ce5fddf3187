"""Second-order unlearning on a cached Hessian factor, refined to the exact optimum (convex models).

Oracles are independent of the code under test: scikit-learn's ``LogisticRegression`` at a tight
tolerance (same objective: ``C = 1 / l2``, intercept unpenalised) and our Newton retraining to
``max |grad(L/n)| <= 1e-12`` where the intercept is penalised (scikit-learn cannot do that).
"""

import logging

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit import Changes
from unlearnkit.data import load_breast_cancer, load_wine, standardize
from unlearnkit.errors import MethodError, ModelError, SolverError
from unlearnkit.influence import FlatModel, gradient_residual, second_order_update
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.solvers import Exact
from unlearnkit.models import MLP, LogisticRegression
from unlearnkit.training import TrainConfig, train

from conftest import make_logistic_data

L2 = 1.0


def _mixed_changes(data, seed: int) -> Changes:
    """About 5 % of the labels moved to another class, a few rows removed, two features zeroed in a few rows."""
    rng = np.random.default_rng(seed)
    n = len(data)
    rows = rng.permutation(n)
    flip = rows[: max(2, n // 20)]
    removed = rows[n // 20: n // 20 + 4]
    edited = rows[n // 20 + 4: n // 20 + 10]
    C = data.n_classes
    changes = Changes.relabel(data.ids[flip], [(int(data.y[r]) + 1) % C for r in flip])
    changes = changes + Changes.remove(data.ids[removed])
    return changes + Changes.zero_features([0, 1], rows=data.ids[edited])


def _problem(name: str):
    if name == "breast-cancer":
        (data,) = standardize(load_breast_cancer())
        model = LogisticRegression(n_features=data.n_features, l2=L2, penalize_intercept=False)
    elif name == "wine":  # softmax with unpenalised intercepts: flat along a common intercept shift
        (data,) = standardize(load_wine())
        model = LogisticRegression(n_features=data.n_features, n_classes=3, l2=L2, penalize_intercept=False)
    else:
        data = make_logistic_data(800, 6, n_classes=4, seed=3)
        model = LogisticRegression(n_features=6, n_classes=4, l2=L2)
    model = train(model, data, config=TrainConfig(tol=1e-12))
    return data, model, _mixed_changes(data, seed=len(name))


PROBLEMS = ["breast-cancer", "wine", "synthetic-multinomial"]


@pytest.fixture(scope="module", params=PROBLEMS)
def problem(request):
    return _problem(request.param)


def _oracle(model, corrected) -> np.ndarray:
    """The optimum on the corrected data, from an independent solver, in our parameter order."""
    if not model.penalize_intercept:
        from sklearn.linear_model import LogisticRegression as SkLogisticRegression

        clf = SkLogisticRegression(C=1.0 / model.l2, solver="newton-cholesky", tol=1e-12, max_iter=1000)
        clf.fit(corrected.X, corrected.y)
        coef = clf.coef_ if model.n_outputs > 1 else clf.coef_.reshape(1, -1)
        return np.concatenate([coef.ravel(), clf.intercept_.ravel()])
    fresh = train(model.fresh().to(torch.float64), corrected, config=TrainConfig(tol=1e-12))
    return FlatModel(fresh).theta().numpy()


def _gauge_free(model, theta: np.ndarray) -> np.ndarray:
    """Parameters with a softmax model's unpenalised intercepts centred (they are defined up to a common shift)."""
    theta = np.array(theta, dtype=np.float64)
    if model.null_space() is not None:
        n_w = model.n_outputs * model.n_features
        theta[n_w:] -= theta[n_w:].mean()
    return theta


def _rel(model, a, b) -> float:
    a, b = _gauge_free(model, a), _gauge_free(model, b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_refine_reaches_the_exact_optimum(problem):
    data, model, changes = problem
    corrected = changes.apply(data)
    oracle = _oracle(model, corrected)
    cache = CachedCurvature.at(model, data)
    one = second_order_update(model, data, changes, curvature=cache)
    result = second_order_update(model, data, changes, curvature=cache, refine=1e-11)
    rep = result.diagnostics["refine"]
    assert rep["status"] == "converged" and rep["residual"] <= 1e-11
    # the one-step update alone is measurably off, so reaching the oracle is refine's doing
    assert _rel(model, FlatModel(one.model).theta().numpy(), oracle) > 1e-5
    assert _rel(model, FlatModel(result.model).theta().numpy(), oracle) < 1e-8
    # the residual reported is ||grad L(theta; D~)||_2 / n, the one gradient_residual measures
    measured = gradient_residual(FlatModel(result.model), corrected) / len(corrected)
    assert measured == pytest.approx(rep["residual"], rel=1e-6, abs=1e-15)
    assert rep["residuals"][0] > rep["residuals"][-1] and len(rep["residuals"]) == len(rep["step_kinds"]) + 1


def test_cached_factor_update_equals_the_fresh_update(problem):
    data, model, changes = problem
    cache = CachedCurvature.at(model, data)
    H_before, rank_before = cache.H.clone(), cache.rank
    fresh = second_order_update(model, data, changes)  # Hessian of the corrected data, from scratch
    cached = second_order_update(model, data, changes, curvature=cache)
    info = cached.diagnostics["curvature"]
    assert info["source"] == "cached" and info["low_rank_update"] > 0 and info["anchor_drift"] == 0.0
    a, b = FlatModel(cached.model).theta(), FlatModel(fresh.model).theta()
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)) < 1e-8
    # the cache is reused across requests: it must not have absorbed this one
    assert cache.rank == rank_before and torch.equal(cache.H, H_before)


def test_a_fitted_exact_curvature_object_is_checked_and_updated_for_the_request():
    """uk.curvature.fit(kind="exact") holds the same factor: the update uses it with the request's low-rank
    change (so it equals the fresh update for removals and feature edits too) and refuses other data."""
    data, model, changes = _problem("synthetic-multinomial")
    curvature = uk.curvature.fit(model, data, kind="exact")
    fresh = second_order_update(model, data, changes)
    result = second_order_update(model, data, changes, curvature=curvature, refine=1e-10)
    one = second_order_update(model, data, changes, curvature=curvature)
    assert one.diagnostics["curvature"]["source"] == "cached" and one.diagnostics["curvature"]["low_rank_update"] > 0
    a, b = FlatModel(one.model).theta(), FlatModel(fresh.model).theta()
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)) < 1e-8
    assert result.diagnostics["refine"]["status"] == "converged"
    with pytest.raises(SolverError, match="other data"):
        second_order_update(model, changes.apply(data), Changes.remove(data.ids[-2:-1]), curvature=curvature)


def _counting(monkeypatch):
    """Count Cholesky factorisations, dense Hessian passes and gradient / objective passes over the data."""
    import unlearnkit.influence.gradients as gradients

    counts = {"factorisations": 0, "hessian_passes": 0, "gradient_passes": 0, "value_passes": 0}

    def wrap(owner, name, key):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    wrap(torch.linalg, "cholesky_ex", "factorisations")
    wrap(HessianOperator, "dense", "hessian_passes")
    wrap(gradients, "objective_gradient", "gradient_passes")
    wrap(gradients, "objective_value", "value_passes")
    return counts


def test_refine_beats_retraining_in_factorisations_and_passes(monkeypatch):
    """The benchmark's claim at small n, in counted work instead of seconds: 1 % of the labels flipped,
    refine to ||grad L|| / n <= 1e-6 on the cached factor reaches relative distance <= 1e-3 with no new
    factorisation and fewer passes over the data than Newton retraining."""
    rng = np.random.default_rng(5)  # the benchmark's problem (benchmarks/bench_curvature.py) at n = 4000, d = 20
    X = rng.normal(size=(4000, 20))
    y = (X @ (rng.normal(size=20) / np.sqrt(20) * 2.0) + 0.5 + rng.logistic(size=4000) > 0).astype(np.int64)
    data = uk.Dataset(X, y)
    model = train(LogisticRegression(n_features=20, l2=L2, penalize_intercept=False), data)
    rows = rng.choice(len(data), size=40, replace=False)
    changes = Changes.relabel(data.ids[rows], 1 - data.y[rows])
    cache = CachedCurvature.at(model, data)  # computed once, before any request

    counts = _counting(monkeypatch)
    retrained = uk.retrain(model, data, changes)
    retrain_counts = dict(counts)
    for key in counts:
        counts[key] = 0
    result = second_order_update(model, data, changes, curvature=cache, refine=1e-6)
    refine_counts = dict(counts)
    monkeypatch.undo()

    rep = result.diagnostics["refine"]
    refine_passes = rep["gradient_passes"] + refine_counts["hessian_passes"] + refine_counts["value_passes"]
    retrain_passes = retrain_counts["gradient_passes"] + retrain_counts["hessian_passes"] + retrain_counts["value_passes"]
    assert rep["status"] == "converged"
    assert retrain_counts["factorisations"] >= 3 and retrain_counts["hessian_passes"] >= 3
    assert refine_counts["factorisations"] == rep["refreshes"] < retrain_counts["factorisations"]
    assert refine_counts["hessian_passes"] == rep["refreshes"] < retrain_counts["hessian_passes"]
    assert refine_passes < retrain_passes / 2, (refine_passes, retrain_passes)
    a, b = FlatModel(result.model).theta(), FlatModel(retrained).theta()
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)) <= 1e-3


def test_refine_refreshes_the_factor_when_chord_steps_stall():
    """A large change (30 % of the labels) makes the anchor's Hessian a poor model: the factor is
    refreshed, said so, and the iteration still reaches the optimum."""
    data = make_logistic_data(1500, 5, seed=7)
    model = train(LogisticRegression(n_features=5, l2=0.1), data)
    rows = np.flatnonzero(data.y == 1)[:450]
    changes = Changes.relabel(data.ids[rows], [0] * len(rows))
    result = second_order_update(model, data, changes, curvature=CachedCurvature.at(model, data), refine=1e-10)
    rep = result.diagnostics["refine"]
    assert rep["status"] == "converged" and rep["factor_refreshed"] and rep["refreshes"] >= 1
    assert any(kind.startswith("newton") for kind in rep["step_kinds"])
    ref = train(model.fresh().to(torch.float64), changes.apply(data), config=TrainConfig(tol=1e-12))
    a, b = FlatModel(result.model).theta(), FlatModel(ref).theta()
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)) < 1e-8


def test_an_overshooting_one_step_update_is_restarted_from_the_original():
    """Confident label flips of near-separable data (standardised breast cancer, l2 = 1): the one-step
    update ends with a larger corrected residual than the original model; refinement notices, restarts
    from the original parameters and still converges."""
    data, model, changes = _problem("breast-cancer")
    corrected = changes.apply(data)
    cache = CachedCurvature.at(model, data)
    one = second_order_update(model, data, changes, curvature=cache)
    assert gradient_residual(FlatModel(one.model), corrected) > gradient_residual(FlatModel(model), corrected)
    rep = second_order_update(model, data, changes, curvature=cache, refine=1e-9).diagnostics["refine"]
    assert rep["restarted"] and rep["status"] == "converged"
    assert rep["residuals"][0] == pytest.approx(gradient_residual(FlatModel(model), corrected) / len(corrected), rel=1e-9)


def test_non_convergence_is_reported_not_silent(binary_10k, caplog):
    data, model = binary_10k
    changes = Changes.relabel(data.ids[:100], 1 - data.y[:100])
    with caplog.at_level(logging.WARNING, logger="unlearnkit.influence.refine"):
        result = uk.unlearn(model, data, changes, method="second-order", refine=1e-15, refine_max_steps=1)
    rep = result.diagnostics["refine"]
    assert rep["status"] == "max_steps" and rep["steps"] == 1 and rep["residual"] > 1e-15
    assert result.diagnostics["status"] == "refine-max_steps"
    assert any("did not reach" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # the same request with room to converge says so
    ok = uk.unlearn(model, data, changes, method="second-order", refine=1e-9)
    assert ok.diagnostics["refine"]["status"] == "converged" and ok.diagnostics["status"] == "refined"


def test_refine_is_refused_for_non_convex_models(tiny_mlp):
    data, model = tiny_mlp
    changes = Changes.relabel(data.ids[:3], (data.y[:3] + 1) % 3)
    with pytest.raises(ModelError, match="convex"):
        uk.unlearn(model, data, changes, method="second-order", refine=1e-6)
    with pytest.raises(ModelError, match="convex"):
        second_order_update(model, data, changes, refine=1e-6)
    assert isinstance(model, MLP)


def test_refine_rejects_bad_settings(multiclass_small):
    data, model = multiclass_small
    changes = Changes.relabel(data.ids[:3], (data.y[:3] + 1) % 3)
    with pytest.raises(MethodError, match="refine"):
        uk.unlearn(model, data, changes, method="second-order", refine=-1.0)
    with pytest.raises(SolverError, match="refine"):
        second_order_update(model, data, changes, refine=0.0)
    with pytest.raises(SolverError, match="defaults"):
        second_order_update(model, data, changes, refine=1e-6, hessian_rows=100)
    with pytest.raises(SolverError, match="max_params"):
        second_order_update(model, data, changes, refine=1e-6, solver=Exact(max_params=10))
    with pytest.raises(MethodError, match="chunks"):
        uk.unlearn(model, data, changes, method="second-order", refine=1e-6, chunks=2)
    other = LogisticRegression(n_features=5, n_classes=2, l2=1.0).to(torch.float64)
    with pytest.raises(SolverError, match="parameters"):
        second_order_update(model, data, changes, curvature=CachedCurvature.at(other, data.replace(y=data.y % 2, n_classes=2)))


# ---------------------------------------------------------------------------- a fitted curvature through uk.unlearn
def test_unlearn_takes_a_fitted_curvature_for_convex_and_deep_models():
    data = uk.data.load("breast-cancer:train")
    (data,) = uk.data.standardize(data)
    model = uk.train(uk.models.for_data("logreg", data, l2=1.0), data)
    fitted = uk.curvature.fit(model, data, kind="exact")
    changes = uk.Changes.relabel([10, 11, 12], [1, 0, 1]) + uk.Changes.remove([3, 4])
    fresh = uk.unlearn(model, data, changes, method="second-order")
    cached = uk.unlearn(model, data, changes, method="second-order", curvature=fitted)
    assert cached.diagnostics["settings"]["solver"] == "cached"
    for p, q in zip(fresh.model.parameters(), cached.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-8)
    chunked = uk.unlearn(model, data, changes, method="second-order", curvature=fitted, chunks=2)  # the factor reused, stale
    assert chunked.diagnostics["curvature"]["rule"].startswith("stale") and len(chunked.diagnostics["curvature"]["drift"]) == 2
    with pytest.raises(MethodError, match="refine"):
        uk.unlearn(model, data, changes, method="second-order", curvature=fitted, chunks=2, refine=1e-8)
    with pytest.raises(MethodError, match="replaces solver"):
        uk.unlearn(model, data, changes, method="second-order", curvature=fitted, solver="cg")

    digits = uk.data.load_digits()
    net = uk.train(uk.models.for_data("mlp", digits, hidden=(16,), l2=1e-2), digits,
                   config=uk.TrainConfig(optimizer="adam", epochs=10, lr=1e-2, batch_size=64))
    ekfac = uk.curvature.fit(net, digits, kind="ekfac")
    result = uk.unlearn(net, digits, uk.Changes.remove(list(range(30))), method="second-order", curvature=ekfac)
    assert result.diagnostics["settings"]["curvature"] == "ekfac" and result.diagnostics["guard"]["status"]
    # damping="auto": the usual rule (relative_damping x lambda_max), on the fitted curvature's own products
    settings = result.diagnostics["settings"]
    assert settings["damping"] > 0 and settings["largest_eigenvalue"] > 0 and result.diagnostics["guard"]["initial_damping"] == settings["damping"]
    assert result.status in ("accepted", "backtracked", "rejected")
