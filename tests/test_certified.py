"""Certified unlearning (Guo et al. 2020) of L2-regularised logistic regression.

What is checked:

* the certificate's a-priori bounds really bound the measured gradient residual, for many random
  change sets (label edits, removals, feature edits inside the norm bound), binary and 3-class,
  single requests and sequences of requests;
* the second-order update is far more accurate than the first-order one;
* refinement reaches its target and the exact optimum of the perturbed objective;
* exhausting the budget retrains with fresh noise and resets the accounting;
* the theory's assumptions are enforced;
* :class:`CachedCurvature` solves exactly under low-rank updates;
* statistically, an unlearned model is (epsilon, delta)-indistinguishable from a retrained one,
  while the un-updated model is not (the check has power).

Property tests use ``CertifiedSpec(epsilon=1e6, sigma=1.0)``: a huge budget with noise of a
realistic size. (``CertifiedSpec(budget=1e6)`` at ``epsilon=1`` would draw ``sigma ~ 3e6``:
``theta ~ -b / l2`` saturates every logit, every per-sample gradient vanishes, and the residual
checks become vacuous.)

Torch runs on one thread in this module: on a 2-core machine, each tiny Cholesky factorisation
costs milliseconds with two OpenMP threads and microseconds with one.
"""

from __future__ import annotations

import copy
import functools
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import unlearnkit as uk
from unlearnkit.errors import CertificationError, SolverError
from unlearnkit.influence.certified import CertifiedSpec, certified_train, noise_multiplier
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual, objective_gradient
from unlearnkit.influence.updates import first_order_update

BIG = CertifiedSpec(epsilon=1e6, sigma=1.0)  # budget ~1.4e3: never exhausted, noise of unit size


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: threading costs more than it saves


# ---------------------------------------------------------------------------- data and models
def scaled_data(n: int, d: int, n_classes: int, seed: int) -> uk.Dataset:
    """Planted (multinomial) logistic data with anisotropic columns, rows scaled to max norm 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.geomspace(1.0, 0.15, d)
    X /= np.linalg.norm(X, axis=1).max()
    W = 4.0 * rng.normal(size=(d, n_classes))
    y = np.argmax(X @ W + rng.gumbel(size=(n, n_classes)), axis=1)
    return uk.Dataset(X, y, n_classes=n_classes, name=f"scaled{n}x{d}c{n_classes}")


# binary n=400; 3-class n=800 (the softmax step is larger per changed row, see the ratio test)
CASES = {"binary": (400, 3, 2), "3-class": (800, 3, 3)}


@functools.lru_cache(maxsize=None)
def fitted(kind: str):
    n, d, C = CASES[kind]
    data = scaled_data(n, d, C, seed=0)
    cm = certified_train(uk.models.LogisticRegression(n_features=d, n_classes=C, l2=1.0), data, BIG, seed=0)
    return data, cm


def row_norms(data: uk.Dataset) -> np.ndarray:
    return np.linalg.norm(data.X.reshape(len(data), -1), axis=1)


@st.composite
def change_sets(draw, data: uk.Dataset, R: float, max_rows: int):
    """A random mix of per-row edits on distinct rows of ``data`` (its current ids).

    Feature edits name their rows explicitly and keep ``||x|| <= R``: the new value of column
    ``j`` is ``u * sqrt(R^2 - (||x||^2 - x_j^2))`` with ``u`` in [-1, 1].
    """
    C, d = data.n_classes, data.n_features
    k = draw(st.integers(1, max_rows))
    rows = draw(st.lists(st.sampled_from(data.ids.tolist()), min_size=k, max_size=k, unique=True))
    out = None
    for r in rows:
        pos = int(data.positions([r])[0])
        x, y = data.X[pos], int(data.y[pos])
        kind = draw(st.sampled_from(["relabel", "remove", "set", "zero"]))
        if kind == "relabel":
            ch = uk.Changes.relabel([r], [(y + draw(st.integers(1, C - 1))) % C])
        elif kind == "remove":
            ch = uk.Changes.remove([r])
        else:
            j = draw(st.integers(0, d - 1))
            if kind == "zero":
                ch = uk.Changes.zero_features([j], rows=[r])
            else:
                room = math.sqrt(max(R * R * (1 - 1e-9) - (float(x @ x) - float(x[j]) ** 2), 0.0))
                u = draw(st.floats(-1.0, 1.0, allow_nan=False))
                ch = uk.Changes.set_features([j], [u * room], rows=[r])
        out = ch if out is None else out + ch
    return out, k


def exact_delta(eps: float, sensitivity: float, sigma: float) -> float:
    """The Gaussian mechanism's exact privacy profile (Balle & Wang 2018, Theorem 8), written out
    independently in 50-digit arithmetic: ``Phi(D/2s - eps s/D) - e^eps Phi(-D/2s - eps s/D)``."""
    with mpmath.workdps(50):
        eps, D, s = mpmath.mpf(eps), mpmath.mpf(sensitivity), mpmath.mpf(sigma)
        return float(mpmath.ncdf(D / (2 * s) - eps * s / D) - mpmath.exp(eps) * mpmath.ncdf(-D / (2 * s) - eps * s / D))


def check_epsilon_spent(cert) -> None:
    """``epsilon_spent`` is the smallest epsilon the exact profile allows for the cumulative bound."""
    if cert.epsilon_spent == 0.0:
        assert exact_delta(0.0, cert.cumulative_bound, cert.sigma) <= cert.delta
    else:
        assert exact_delta(cert.epsilon_spent, cert.cumulative_bound, cert.sigma) == pytest.approx(cert.delta, rel=1e-8)


def residual_on(model, data) -> float:
    return gradient_residual(FlatModel(model), data)


# ---------------------------------------------------------------------------- bounds, single requests
@pytest.mark.parametrize("kind", ["binary", "3-class"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_one_request_residual_is_within_its_bounds(kind, draw):
    data, cm0 = fitted(kind)
    R = cm0.state.feature_bound
    assert R == pytest.approx(row_norms(data).max(), rel=1e-12)
    changes, k = draw.draw(change_sets(data, R, max_rows=4))
    cm = copy.deepcopy(cm0)
    before = cm.state.cumulative_bound
    corrected = changes.apply(data)
    first = first_order_update(cm.model, data, changes).model
    first_residual = residual_on(first, corrected)

    result = cm.unlearn(changes, exact_residual=True, on_exhausted="error")
    cert = result.certificate
    assert result.method == "certified-second-order" and not cert.retrained
    # the reported exact residual is the residual of the returned model on the corrected data
    measured = residual_on(result.model, corrected)
    assert cert.exact_residual == pytest.approx(measured, rel=1e-9, abs=1e-13)
    # the a-priori bounds hold (a theorem: only float rounding as slack)
    assert measured <= before + cert.residual_bound + 1e-12, (measured, before, cert)
    assert measured <= before + cert.worst_case_bound + 1e-12, (measured, before, cert)
    assert cert.cumulative_bound == pytest.approx(before + cert.residual_bound, rel=1e-12)
    assert cert.valid and cert.remaining > 0
    # second order is far more accurate than first order for small change sets
    if k <= 2:
        assert 10 * measured <= first_residual + 1e-9, (measured, first_residual, changes)
    # the model's rows are the corrected data
    full = cm.rows.full()
    np.testing.assert_array_equal(full.ids, corrected.ids)
    np.testing.assert_array_equal(full.y, corrected.y)
    np.testing.assert_array_equal(full.X, corrected.X)


def test_worst_case_bound_kind_spends_the_worst_case_bound():
    data, _ = fitted("binary")
    spec = CertifiedSpec(epsilon=1e6, sigma=1.0, bound="worst")
    cm = certified_train(uk.models.LogisticRegression(n_features=3, l2=1.0), data, spec, seed=0)
    before = cm.state.cumulative_bound
    cert = cm.unlearn(uk.Changes.relabel([5, 9], [1 - int(data.y[5]), 1 - int(data.y[9])]), exact_residual=True).certificate
    assert cert.bound_kind == "worst"
    assert cert.cumulative_bound == pytest.approx(before + cert.worst_case_bound, rel=1e-12)
    assert cert.residual_bound < cert.worst_case_bound
    assert cert.exact_residual <= cert.cumulative_bound


# ---------------------------------------------------------------------------- sequences of requests
@pytest.mark.parametrize("kind", ["binary", "3-class"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_sequential_requests_cumulative_bound_is_monotone_and_sound(kind, draw):
    data, cm0 = fitted(kind)
    cm = copy.deepcopy(cm0)
    R = cm.state.feature_bound
    expected = data
    n_requests = draw.draw(st.integers(2, 4))
    cumulative = cm.state.cumulative_bound
    assert cm.exact_residual() <= cumulative
    for _ in range(n_requests):
        current = cm.rows.full()
        changes, _ = draw.draw(change_sets(current, R, max_rows=3))
        expected = changes.apply(expected)
        cert = cm.unlearn(changes, exact_residual=True, on_exhausted="error").certificate
        measured = residual_on(cm.model, expected)
        assert cert.exact_residual == pytest.approx(measured, rel=1e-9, abs=1e-13)
        assert cert.cumulative_bound >= cumulative  # monotone
        assert cert.cumulative_bound == pytest.approx(cumulative + cert.residual_bound, rel=1e-12)
        assert measured <= cert.cumulative_bound + 1e-12, (measured, cert)
        assert measured <= cumulative + cert.worst_case_bound + 1e-12, (measured, cumulative, cert)
        check_epsilon_spent(cert)
        cumulative = cert.cumulative_bound
    # requests compose: the model's rows are every change applied in sequence
    full = cm.rows.full()
    np.testing.assert_array_equal(full.ids, expected.ids)
    np.testing.assert_array_equal(full.y, expected.y)
    np.testing.assert_array_equal(full.X, expected.X)


# ---------------------------------------------------------------------------- refinement
def newton_optimum(model, data: uk.Dataset, theta: torch.Tensor) -> torch.Tensor:
    """The minimiser of ``L_b(.; data)`` by plain Newton with the closed-form Hessian (independent
    of CachedCurvature and of the training code)."""
    flat = FlatModel(model)
    X, y = data.tensors(dtype=torch.float64)
    eye = torch.eye(flat.n_params, dtype=torch.float64)
    for _ in range(100):
        g = objective_gradient(flat, data, theta)
        step = torch.linalg.solve(model.loss_hessian(theta, X, y) + model.l2 * eye, g)
        theta = theta - step
        if float(torch.linalg.vector_norm(step)) <= 1e-14 * (1 + float(torch.linalg.vector_norm(theta))):
            break
    return theta


@pytest.mark.parametrize("kind", ["binary", "3-class"])
def test_refine_reaches_the_exact_optimum_with_the_same_noise(kind):
    data, cm0 = fitted(kind)
    cm = copy.deepcopy(cm0)
    rng = np.random.default_rng(3)
    rows = rng.choice(data.ids, size=30, replace=False)
    C = data.n_classes
    pos = data.positions(rows)
    changes = uk.Changes.relabel(rows[:20], (data.y[pos[:20]] + 1) % C) + uk.Changes.remove(rows[20:])
    corrected = changes.apply(data)
    cm.unlearn(changes, on_exhausted="error")
    cm.unlearn(uk.Changes.zero_features([0], rows=corrected.ids[:5]), on_exhausted="error")
    corrected = uk.Changes.zero_features([0], rows=corrected.ids[:5]).apply(corrected)
    assert residual_on(cm.model, corrected) > 1e-4  # something left to refine

    b_before = cm.model.perturbation.clone()
    info = cm.refine()
    assert info["reached"] and info["residual"] <= info["target"] == pytest.approx(len(corrected) * 1e-10)
    measured = residual_on(cm.model, corrected)
    assert measured <= info["target"]
    assert info["residual"] == pytest.approx(measured, rel=1e-6, abs=1e-13)
    assert cm.state.cumulative_bound == info["residual"]  # the bound becomes the measured residual
    assert torch.equal(cm.model.perturbation, b_before)  # same b: the same objective
    theta = cm.theta
    optimum = newton_optimum(cm.model, corrected, theta.clone())
    rel = float(torch.linalg.vector_norm(theta - optimum) / torch.linalg.vector_norm(optimum))
    assert rel < 1e-6, rel
    # retraining with the same b (a fresh certified training whose b is overwritten) agrees too
    retrained = uk.train(copy.deepcopy(cm.model), corrected, config=uk.TrainConfig(dtype="float64"))
    assert torch.equal(retrained.perturbation, b_before)
    rel_retrained = float(torch.linalg.vector_norm(theta - FlatModel(retrained).theta()) / torch.linalg.vector_norm(optimum))
    assert rel_retrained < 1e-6, rel_retrained
    # a looser explicit target is met without steps; bad targets are refused
    assert cm.refine(1e-3)["steps"] == 0
    with pytest.raises(CertificationError, match="target"):
        cm.refine(0.0)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_refine_after_random_requests_reaches_its_target(draw):
    data, cm0 = fitted("binary")
    cm = copy.deepcopy(cm0)
    expected = data
    for _ in range(draw.draw(st.integers(1, 3))):
        changes, _ = draw.draw(change_sets(cm.rows.full(), cm.state.feature_bound, max_rows=8))
        expected = changes.apply(expected)
        cm.unlearn(changes, on_exhausted="error")
    target = draw.draw(st.sampled_from([None, 1e-6, 1e-9]))
    info = cm.refine(target)
    assert info["reached"], info
    assert residual_on(cm.model, expected) <= info["target"]
    assert info["steps"] <= 10, info


def test_refine_converges_near_the_precision_floor():
    """From a small residual, a Newton step reaches ~1e-14 in float64 (checked by hand in extended
    precision for this case); refinement must not stall above the target."""
    data, cm0 = fitted("binary")
    cm = copy.deepcopy(cm0)
    changes = uk.Changes.relabel([0, 1], [1 - int(data.y[0]), 1 - int(data.y[1])])
    cm.unlearn(changes, on_exhausted="error")
    info = cm.refine(1e-9)
    assert info["reached"] and info["steps"] <= 5, info
    assert residual_on(cm.model, changes.apply(data)) <= 1e-9


def test_certified_training_reaches_the_optimiser_tolerance_with_large_noise():
    """Training stops at ``max |grad L_b / n| <= tol`` (TrainConfig's default 1e-10); a large
    ``b`` must not leave it short of that (this noise draw did, after 2000 Newton iterations)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(40, 1))
    y = (rng.uniform(size=40) < 1 / (1 + np.exp(-3 * x[:, 0]))).astype(int)
    data = uk.Dataset(x, y)
    cm = certified_train(uk.models.LogisticRegression(n_features=1, l2=1.0), data,
                         CertifiedSpec(epsilon=1e9, delta=1e-3, sigma=3.8), seed=1000021)
    g = objective_gradient(FlatModel(cm.model), data) / len(data)
    assert float(g.abs().max()) <= 1e-10, float(g.abs().max())


# ---------------------------------------------------------------------------- budget exhaustion
def test_exhausted_budget_retrains_with_fresh_noise():
    data = scaled_data(120, 3, 2, seed=4)
    spec = CertifiedSpec(epsilon=1.0, delta=1e-4, budget=1e-4)
    model = uk.models.LogisticRegression(n_features=3, l2=1.0)
    cm = certified_train(model, data, spec, seed=7)
    assert cm.state.noise_seed == 7 and cm.state.cumulative_bound <= spec.budget
    b_before, theta_before = cm.model.perturbation.clone(), cm.theta
    changes = uk.Changes.relabel([1, 2, 3], [1 - int(v) for v in data.y[[1, 2, 3]]]) + uk.Changes.remove([10])
    corrected = changes.apply(data)

    # on_exhausted="error": refused, nothing changed
    with pytest.raises(CertificationError, match="over the budget"):
        cm.unlearn(changes, on_exhausted="error")
    assert torch.equal(cm.theta, theta_before) and len(cm.rows.full()) == len(data)
    assert cm.state.noise_seed == 7

    result = cm.unlearn(changes)
    cert = result.certificate
    assert result.method == "certified-retrain" and cert.retrained
    assert cert.residual_bound > spec.budget  # the request really did not fit
    assert cm.state.noise_seed != 7 and cm.state.trainings == 2
    assert not torch.equal(cm.model.perturbation, b_before)  # fresh noise
    measured = residual_on(result.model, corrected)
    assert cert.cumulative_bound == pytest.approx(measured, rel=1e-9, abs=1e-14)
    assert cert.exact_residual == cert.cumulative_bound
    assert cert.cumulative_bound < 1e-8 and cert.valid
    # it is exactly a certified training on the corrected data with the new noise seed
    fresh = certified_train(model, corrected, spec, seed=cm.state.noise_seed)
    assert torch.equal(fresh.model.perturbation, cm.model.perturbation)
    torch.testing.assert_close(fresh.theta, cm.theta, rtol=1e-9, atol=1e-12)
    # and the next request is accounted from the reset bound
    cert2 = cm.unlearn(uk.Changes.remove([int(corrected.ids[0])]), on_exhausted="retrain").certificate
    assert cert2.retrained or cert2.cumulative_bound == pytest.approx(cert.cumulative_bound + cert2.residual_bound)


# ---------------------------------------------------------------------------- assumptions
def test_assumptions_are_checked_with_clear_messages():
    data = scaled_data(60, 3, 2, seed=5)
    LR = uk.models.LogisticRegression
    with pytest.raises(CertificationError, match="l2 > 0"):
        certified_train(LR(n_features=3, l2=0.0), data, BIG)
    with pytest.raises(CertificationError, match="penali[sz]ed intercept"):
        certified_train(LR(n_features=3, l2=1.0, penalize_intercept=False), data, BIG)
    with pytest.raises(CertificationError, match="strongly convex model"):
        certified_train(uk.models.MLP(n_features=3, n_classes=2, hidden=(4,)), data, BIG)
    # rows above a stated feature bound are refused at training
    with pytest.raises(CertificationError, match="feature norm"):
        certified_train(LR(n_features=3, l2=1.0), data, CertifiedSpec(epsilon=1e6, sigma=1.0, feature_bound=0.5))

    cm = certified_train(LR(n_features=3, l2=1.0), data, BIG)
    theta, n = cm.theta, len(cm.rows.full())
    # a feature edit that pushes a row above R = max training norm (here 1)
    with pytest.raises(CertificationError, match=r"row 4 has feature norm .* > the certified bound R"):
        cm.unlearn(uk.Changes.set_features([0], [1.5], rows=[4]))
    assert torch.equal(cm.theta, theta) and len(cm.rows.full()) == n
    with pytest.raises(CertificationError, match="on_exhausted"):
        cm.unlearn(uk.Changes.remove([4]), on_exhausted="ignore")

    for kwargs, msg in [
        ({"epsilon": 0.0}, "epsilon must be a positive"),
        ({"epsilon": -1.0}, "epsilon must be a positive"),
        ({"epsilon": math.nan}, "epsilon must be a positive"),
        ({"epsilon": math.inf}, "epsilon must be a positive"),
        ({"delta": 0.0}, "delta must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"delta": -0.5}, "delta must be in"),
        ({"sigma": 0.0}, "sigma must be a positive"),
        ({"sigma": -2.0}, "sigma must be a positive"),
        ({"sigma": math.nan}, "sigma must be a positive"),
        ({"budget": 0.0}, "budget must be a positive"),
        ({"budget": math.inf}, "budget must be a positive"),
        ({"sigma": 1.0, "budget": 1.0}, "sigma or budget, not both"),
        ({"feature_bound": -1.0}, "feature_bound must be"),
        ({"bound": "tight"}, "bound must be one of"),
    ]:
        with pytest.raises(CertificationError, match=msg):
            CertifiedSpec(**kwargs)
    # budget and sigma are two views of one number (the analytic Gaussian mechanism)
    spec = CertifiedSpec(epsilon=0.5, delta=1e-5, budget=0.2)
    assert exact_delta(0.5, 0.2, spec.sigma) == pytest.approx(1e-5, rel=1e-9)
    assert spec.sigma == pytest.approx(noise_multiplier(epsilon=0.5, delta=1e-5) * 0.2 / 0.5) == pytest.approx(spec.c * 0.2 / 0.5)
    assert CertifiedSpec(epsilon=0.5, delta=1e-5, sigma=spec.sigma).budget == pytest.approx(0.2)


# ---------------------------------------------------------------------------- cached curvature
def random_spd(p: int, seed: int, floor: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(p, p, generator=g, dtype=torch.float64)
    return A @ A.T / p + floor * torch.eye(p, dtype=torch.float64)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


def test_cached_curvature_low_rank_updates_solve_exactly():
    p = 12
    H = random_spd(p, 0)
    g = torch.Generator().manual_seed(1)
    cc = CachedCurvature(H, torch.zeros(p, dtype=torch.float64), max_rank=40)
    dense = H.clone()
    added = []
    for step in range(6):
        add = 0.5 * torch.randn(p, 2, generator=g, dtype=torch.float64)
        # remove a column added earlier: the matrix stays positive definite
        remove = added.pop(0) if step % 2 == 1 else None
        cc.update(add, remove)
        added.append(add)
        dense = dense + add @ add.T - (remove @ remove.T if remove is not None else 0)
        rhs = torch.randn(p, generator=g, dtype=torch.float64)
        assert cc.rank > 0 and cc.refactorisations == 1  # the Woodbury path, no refactorisation
        assert rel_err(cc.solve(rhs), torch.linalg.solve(dense, rhs)) < 1e-10
    torch.testing.assert_close(cc.H, dense, rtol=0, atol=1e-12)

    # state round trip: the rebuilt cache solves identically
    rebuilt = CachedCurvature.from_state(cc.state())
    assert rebuilt.rank == cc.rank
    rhs = torch.randn(p, generator=g, dtype=torch.float64)
    assert rel_err(rebuilt.solve(rhs), cc.solve(rhs)) < 1e-13
    with pytest.raises(SolverError, match="Malformed cached curvature"):
        CachedCurvature.from_state({k: v for k, v in cc.state().items() if k != "L0"})
    bad = cc.state()
    bad["signs"] = bad["signs"][:-1]
    with pytest.raises(SolverError, match="Malformed cached curvature"):
        CachedCurvature.from_state(bad)
    with pytest.raises(SolverError, match="must have shape"):
        cc.update(torch.ones(p + 1, 1, dtype=torch.float64))


def test_cached_curvature_rank_overflow_refactorises():
    p = 10
    H = random_spd(p, 2)
    g = torch.Generator().manual_seed(3)
    cc = CachedCurvature(H, torch.zeros(p, dtype=torch.float64), max_rank=5)
    dense = H.clone()
    for step in range(8):
        add = torch.randn(p, 2, generator=g, dtype=torch.float64)
        cc.update(add)
        dense = dense + add @ add.T
        assert cc.rank <= 5
        rhs = torch.randn(p, generator=g, dtype=torch.float64)
        assert rel_err(cc.solve(rhs), torch.linalg.solve(dense, rhs)) < 1e-10
    assert cc.refactorisations >= 3  # 2 + 2 fit, the third update overflows, and so on
    torch.testing.assert_close(cc.L0 @ cc.L0.T, dense - cc.U @ torch.diag(cc.signs) @ cc.U.T, rtol=0, atol=1e-10)


def test_cached_curvature_null_space():
    p = 8
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.5, 4.0, p, dtype=torch.float64)
    eig[0] = 0.0  # H is singular along u = Q[:, 0]
    u = Q[:, :1]
    H = Q @ torch.diag(eig) @ Q.T
    singular = torch.diag(eig)  # the same spectrum, axis-aligned: an exactly zero pivot
    with pytest.raises(SolverError, match="not positive definite"):
        CachedCurvature(singular, torch.zeros(p, dtype=torch.float64))
    cc = CachedCurvature(H, torch.zeros(p, dtype=torch.float64), null_space=u)
    rhs = torch.randn(p, generator=g, dtype=torch.float64)
    rhs = rhs - u[:, 0] * (u[:, 0] @ rhs)  # orthogonal to the null direction
    x = cc.solve(rhs)
    assert rel_err(H @ x, rhs) < 1e-10
    assert abs(float(u[:, 0] @ x)) < 1e-10  # the minimum-norm solution
    # low-rank updates orthogonal to u keep the convention exact
    F = torch.randn(p, 3, generator=g, dtype=torch.float64)
    F = F - u @ (u.T @ F)
    cc.update(F)
    x = cc.solve(rhs)
    assert rel_err((H + F @ F.T) @ x, rhs) < 1e-10
    assert rel_err(CachedCurvature.from_state(cc.state()).solve(rhs), x) < 1e-12


# ---------------------------------------------------------------------------- the certificate, statistically
def one_feature_data(n: int = 60, seed: int = 0) -> uk.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 1))
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-3.0 * x[:, 0]))).astype(int)
    return uk.Dataset(x, y, name=f"one-feature{n}")


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper confidence bounds for a binomial proportion."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))
    return lo, hi


def dp_violation(A: np.ndarray, B: np.ndarray, thresholds, eps: float, delta: float, alpha: float) -> float:
    """Largest ``LCB(P_A(E)) - (e^eps UCB(P_B(E)) + delta)`` over the events ``E`` in
    ``{proj > t}, {proj <= t}`` for every threshold, in both directions (A vs B and B vs A).

    Each confidence bound holds with probability ``1 - alpha'``, ``alpha' = alpha / (2 m)`` for
    the ``m = 4 len(thresholds)`` comparisons (Bonferroni): if the guarantee holds, the result
    is <= 0 with probability >= 1 - alpha. A positive result is evidence of a violation.
    """
    m = 4 * len(thresholds)
    a = alpha / (2 * m)
    worst = -math.inf
    for t in thresholds:
        for above in (True, False):
            ka = int(np.sum(A > t if above else A <= t))
            kb = int(np.sum(B > t if above else B <= t))
            for (k1, n1), (k2, n2) in (((ka, len(A)), (kb, len(B))), ((kb, len(B)), (ka, len(A)))):
                lo, _ = clopper_pearson(k1, n1, a)
                _, hi = clopper_pearson(k2, n2, a)
                worst = max(worst, lo - (math.exp(eps) * hi + delta))
    return worst


def indistinguishability_experiment(n_draws: int, eps: float = 1.0, delta: float = 1e-3, alpha: float = 1e-3):
    data = one_feature_data()
    # the request: remove the two most confidently classified positives
    pos = np.flatnonzero(data.y == 1)
    rows = data.ids[pos[np.argsort(-data.X[pos, 0])][:2]]
    changes = uk.Changes.remove(rows.tolist())
    corrected = changes.apply(data)
    model = uk.models.LogisticRegression(n_features=1, l2=1.0)

    # 1. calibrate sigma on pilot draws (seeds 10^6 + s, disjoint from the test draws): the
    #    request's cumulative bound depends on theta, hence on sigma; iterate sigma to the noise that
    #    certifies 1.5 B at (eps, delta) (B the largest pilot bound) to a fixed point, so that every
    #    draw fits the budget.
    sigma = 0.3
    for _ in range(8):
        bounds = []
        for s in range(80):
            cm = certified_train(model, data, CertifiedSpec(epsilon=1e9, delta=delta, sigma=sigma), seed=10**6 + s)
            bounds.append(cm.unlearn(changes, on_exhausted="error").certificate.cumulative_bound)
        target = CertifiedSpec(epsilon=eps, delta=delta, budget=1.5 * max(bounds)).sigma
        if abs(target - sigma) <= 0.05 * sigma:
            break
        sigma = target
    else:
        pytest.fail(f"sigma calibration did not converge (last {sigma:.4g} -> {target:.4g})")
    spec = CertifiedSpec(epsilon=eps, delta=delta, sigma=sigma)
    assert exact_delta(eps, spec.budget, sigma) == pytest.approx(delta, rel=1e-9)  # the analytic calibration
    assert max(bounds) <= spec.budget / 1.4

    # 2. a fixed projection and threshold grid, chosen before the test draws: the direction from
    #    the original to the retrained noiseless optimum, thresholds at the 2%..98% quantiles of
    #    pilot retrained models (seeds 2 * 10^6 + s)
    theta0 = FlatModel(uk.train(model, data)).theta().numpy()
    theta1 = FlatModel(uk.train(model, corrected)).theta().numpy()
    direction = (theta1 - theta0) / np.linalg.norm(theta1 - theta0)
    pilot_retrained = [certified_train(model, corrected, spec, seed=2 * 10**6 + s).theta.numpy() for s in range(100)]
    thresholds = np.quantile(np.asarray(pilot_retrained) @ direction, np.linspace(0.02, 0.98, 13))

    # 3. the draws: unlearned (seeds 0..N-1), un-updated original (same draws, before
    #    unlearning), retrained on the corrected data (seeds N..2N-1)
    unlearned, original, retrained, exact, original_residual = [], [], [], [], []
    for s in range(n_draws):
        cm = certified_train(model, data, spec, seed=s)
        original.append(cm.theta.numpy())
        if s < 20:
            original_residual.append(residual_on(cm.model, corrected))
        cert = cm.unlearn(changes, exact_residual=s < 20, on_exhausted="error").certificate
        assert not cert.retrained and cert.valid
        if s < 20:
            exact.append(cert.exact_residual)
        unlearned.append(cm.theta.numpy())
        retrained.append(certified_train(model, corrected, spec, seed=n_draws + s).theta.numpy())
    U, O, R = (np.asarray(v) @ direction for v in (unlearned, original, retrained))
    return {
        "spec": spec, "max_bound": max(bounds), "exact": max(exact), "original_residual": min(original_residual),
        "unlearned": dp_violation(U, R, thresholds, eps, delta, alpha),
        "original": dp_violation(O, R, thresholds, eps, delta, alpha),
    }


def check_indistinguishability(n_draws: int) -> None:
    out = indistinguishability_experiment(n_draws)
    spec = out["spec"]
    # the un-updated model's residual on the corrected data is far above the budget ...
    assert out["original_residual"] > 10 * spec.budget, out
    # ... while the unlearned one is within it
    assert out["exact"] <= spec.budget, out
    # the guarantee: no event separates unlearned from retrained beyond e^eps, delta
    assert out["unlearned"] <= 0.0, out
    # power: the same procedure at the same epsilon rejects the un-updated model
    assert out["original"] > 0.0, out


def test_unlearned_is_indistinguishable_from_retrained():
    """The certificate means something: a two-sample test of (epsilon, delta)-indistinguishability.

    Design. A tiny binary model (one feature plus intercept, n = 60 rows with |x| <= 1, l2 = 1)
    and a fixed request (remove two rows). Over many noise draws ``b`` we collect
    (a) *unlearned* models: ``certified_train(seed=s)`` then ``unlearn(on_exhausted="error")``,
    (b) *retrained* models: ``certified_train`` on the corrected data with seeds from a disjoint
    range, and (c) the *un-updated* originals of (a) (the same draws, before unlearning).

    ``sigma`` is calibrated on separate pilot draws so that the request's cumulative bound fits
    the budget at (epsilon = 1, delta = 1e-3) in every draw (``on_exhausted="error"`` fails the
    test otherwise). The certificate then claims ``P_U(E) <= e^eps P_R(E) + delta`` and the
    symmetric inequality for every event ``E``. We test the events ``{proj > t}`` and
    ``{proj <= t}`` on a 1-D projection (the direction from the original to the retrained
    noiseless optimum) at 13 thresholds (pilot quantiles) — projection and thresholds are fixed
    before the test draws, so the confidence statements are valid. Each probability gets a
    one-sided Clopper-Pearson bound, Bonferroni-corrected over all comparisons at family level
    alpha = 1e-3: when the guarantee holds, a violation is reported with probability <= 1e-3 (the
    seeds are fixed, so the outcome is deterministic). The same procedure is applied to the
    un-updated originals, whose residual on the corrected data is > 10x the budget: it must be
    rejected, showing the check has power at this epsilon and sample size.

    What it cannot show: the data-dependent bound is conservative (the measured residual is about
    a quarter of the budget here), so the unlearned models are closer to retraining than the
    stated epsilon. Checked by hand: dividing the library's Lipschitz constant by 30 (so sigma
    shrinks 30x) makes the unlearned arm fail this two-sample check, by 10 it does not; the direct
    check ``exact residual <= budget`` below catches a factor of ~4, and the property tests catch
    any bound that is smaller than a measured residual.
    """
    check_indistinguishability(600)


@pytest.mark.slow
def test_unlearned_is_indistinguishable_from_retrained_many_draws():
    """The same experiment with 3000 draws per arm (tighter confidence bounds)."""
    check_indistinguishability(3000)
