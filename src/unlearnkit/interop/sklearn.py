"""Unlearning for a fitted scikit-learn ``LogisticRegression``.

scikit-learn's L2 logistic regression minimises ``C sum_i l_i + ||W||^2 / 2`` with an
unpenalised intercept — in unlearnkit's summed form, ``l2 = 1 / C`` on the weights and none on
the intercept (:class:`~unlearnkit.models.linear.LogisticRegression` with
``penalize_intercept=False``). Binary models have one logit for ``classes_[1]``; multiclass
models (lbfgs, newton-cg, newton-cholesky, sag, saga) are multinomial with ``C`` logits. The
softmax loss does not change when the same constant is added to every intercept, so that
direction is flat; gradients are orthogonal to it and the solves use
:class:`~unlearnkit.influence.curvature.CachedCurvature`'s ``null_space`` (the update keeps
the sum of intercepts where the fit left it).

:func:`unlearn_logistic_regression` applies a :class:`~unlearnkit.data.changes.Changes` by
the second-order update ``theta - H~^{-1} (g(Z~) - g(Z))`` (Warnecke et al.) and, with
``refine=True``, Newton steps on the corrected objective until its gradient vanishes to
``tol`` — the exact optimum scikit-learn's own retraining approaches. Labels in the change set
are *indices into* ``estimator.classes_``. Settings we cannot honour are refused with the
reason: L1 or elastic-net penalties, no penalty, class weights, liblinear (it penalises the
intercept and fits one-vs-rest), one-vs-rest multiclass. The estimator is assumed to have been
fitted without ``sample_weight``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearnkit import timing
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError
from unlearnkit.influence.certified import newton_refine
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual
from unlearnkit.influence.updates import gradient_difference
from unlearnkit.models.linear import LogisticRegression


@dataclass
class SklearnUnlearnResult:
    """The updated estimator and what it took.

    ``one_step_distance`` is the relative distance of the one-step update to the refined
    parameters (the linearisation error; NaN without refinement); residuals are
    ``||grad L(theta; D~)||`` of scikit-learn's objective in summed form.
    """

    estimator: object
    seconds: float
    n_affected: int
    one_step_residual: float
    residual: float
    refine_steps: int
    one_step_distance: float
    diagnostics: dict = field(default_factory=dict)


def _refuse(reason: str) -> None:
    raise ModelError(f"Cannot unlearn this LogisticRegression: {reason}")


def check_estimator(estimator) -> None:
    """Raise :class:`ModelError` unless ``estimator`` is a fitted L2 logistic regression we can honour."""
    try:
        from sklearn.linear_model import LogisticRegression as SkLR
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        _refuse("scikit-learn is not installed.")
    if not isinstance(estimator, SkLR):
        _refuse(f"expected sklearn.linear_model.LogisticRegression, got {type(estimator).__name__}.")
    if not hasattr(estimator, "coef_"):
        _refuse("it is not fitted; call fit(X, y) first.")
    params = estimator.get_params()
    penalty = params.get("penalty", "l2")
    l1_ratio = params.get("l1_ratio")
    if penalty not in ("l2", "deprecated") or (penalty == "deprecated" and l1_ratio not in (None, 0, 0.0)):
        _refuse(f"penalty={penalty!r}, l1_ratio={l1_ratio!r}: only the L2 penalty gives the smooth, strongly convex "
                "objective the second-order update needs (L1 and elastic net are not twice differentiable).")
    C = params.get("C", 1.0)
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        _refuse(f"C={C!r}: an unpenalised fit (C=inf) is not strongly convex; use a finite C.")
    if params.get("class_weight") is not None:
        _refuse("class_weight is set: the reweighted objective is not what the update assumes (weights per class "
                "change when labels are edited).")
    if params.get("solver") == "liblinear":
        _refuse("solver='liblinear' penalises the intercept (intercept_scaling) and fits one-vs-rest; refit with "
                "lbfgs, newton-cg, newton-cholesky, sag or saga.")
    multi = params.get("multi_class", "auto")
    if multi == "ovr" and len(estimator.classes_) > 2:
        _refuse("multi_class='ovr' fits one binary model per class; refit with the multinomial loss.")


def _to_model(estimator) -> LogisticRegression:
    n_classes = len(estimator.classes_)
    fit_intercept = bool(estimator.get_params().get("fit_intercept", True))
    model = LogisticRegression(n_features=estimator.coef_.shape[1], n_classes=n_classes, l2=1.0 / estimator.C,
                               fit_intercept=fit_intercept, penalize_intercept=False).to(torch.float64)
    theta = np.concatenate([np.asarray(estimator.coef_, dtype=np.float64).reshape(-1),
                            np.asarray(estimator.intercept_, dtype=np.float64).reshape(-1) if fit_intercept else []])
    return FlatModel(model).to_model(torch.from_numpy(theta))


def _labels(estimator, y) -> np.ndarray:
    y = np.asarray(y)
    classes = estimator.classes_
    idx = np.searchsorted(classes, y)
    ok = (idx < len(classes)) & (classes[np.minimum(idx, len(classes) - 1)] == y)
    if not np.all(ok):
        bad = y[~ok][:5].tolist()
        raise ModelError(f"y holds labels {bad} that the estimator was not fitted on (classes_ = {classes.tolist()}).")
    return idx.astype(np.int64)


def unlearn_logistic_regression(
    estimator, X, y, changes: Changes, *, refine: bool = True, tol: float = 1e-10, max_steps: int = 50,
    batch_size: int = 8192, device=None,
) -> SklearnUnlearnResult:
    """Apply ``changes`` to a fitted scikit-learn ``LogisticRegression`` trained on ``(X, y)``.

    Returns a copy of ``estimator`` whose ``coef_``/``intercept_`` carry the update (the input is
    not modified). ``refine=True`` continues with Newton steps until the mean gradient norm of
    the corrected objective, ``||grad L|| / n``, is at most ``tol``. Costs: one Hessian on the
    corrected data (``O(n p^2)``) and ``2k`` per-sample gradients for the one-step update; one
    gradient pass per refinement step (and a Hessian pass when a step contracts slowly).
    """
    start = timing.start()
    check_estimator(estimator)
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != estimator.coef_.shape[1]:
        raise ModelError(f"X must have shape (n, {estimator.coef_.shape[1]}) like the data the estimator was fitted on; got {X.shape}.")
    data = Dataset(X, _labels(estimator, y), n_classes=max(2, len(estimator.classes_)), name="sklearn data")
    model = _to_model(estimator)
    if device is not None:
        model = model.to(device)
    resolved = changes.resolve(data)
    corrected = resolved.corrected
    if len(corrected) == 0:
        raise ModelError("The change set removes every row; there is nothing left to fit.")
    flat = FlatModel(model)
    null = None
    if model.n_outputs > 1 and model.fit_intercept:
        null = torch.zeros(flat.n_params, 1, dtype=flat.dtype, device=flat.device)
        null[model.linear.weight.numel():, 0] = 1.0 / math.sqrt(model.n_outputs)
    theta0 = flat.theta()
    curvature = CachedCurvature.at(model, corrected, theta0, batch_size=batch_size, null_space=null)
    G = gradient_difference(flat, resolved, batch_size=batch_size)
    theta1 = theta0 - curvature.solve(G)
    one_step = flat.to_model(theta1)
    one_step_residual = gradient_residual(FlatModel(one_step), corrected, batch_size=batch_size)
    theta, steps, info = theta1, 0, {}
    if refine:
        theta, _, info = newton_refine(FlatModel(one_step), corrected, theta1, curvature, target=tol * len(corrected),
                                       max_steps=max_steps, batch_size=batch_size)
        steps = info["steps"]
    residual = info.get("residual", one_step_residual)
    distance = (float(torch.linalg.vector_norm(theta1 - theta) / max(float(torch.linalg.vector_norm(theta)), 1e-300))
                if refine else float("nan"))
    out = copy.deepcopy(estimator)
    values = theta.detach().cpu().numpy()
    n_w = estimator.coef_.size
    out.coef_ = values[:n_w].reshape(estimator.coef_.shape).copy()
    if model.fit_intercept:
        out.intercept_ = values[n_w:].reshape(np.shape(estimator.intercept_)).copy()
    return SklearnUnlearnResult(
        out, timing.since(start), resolved.n_affected, one_step_residual, residual, steps, distance,
        diagnostics={"initial_residual": gradient_residual(flat, data, batch_size=batch_size),
                     "hessian_refreshes": info.get("hessian_refreshes", 0), "reached": info.get("reached", not refine)},
    )


__all__ = ["SklearnUnlearnResult", "check_estimator", "unlearn_logistic_regression"]
