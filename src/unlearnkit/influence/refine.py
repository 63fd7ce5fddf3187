"""Second-order unlearning on a cached Hessian factor, and refinement to the exact optimum.

Convex models only (L2-regularised logistic regression, :mod:`unlearnkit.models.linear`).
With the objective ``L(theta; D) = sum_i l_i(theta) + (l2/2)||theta||^2`` (sum over rows, see
:mod:`unlearnkit.models.base`) and the corrected data ``D~``:

**The one-step update on a cached factor.** The Newton step of Warnecke et al. (NDSS 2023),
``theta_1 = theta* - H~^{-1} G`` with ``G = g(Z~) - g(Z)`` and ``H~`` the Hessian of ``L(.; D~)``
at ``theta*``, needs ``H~``. A :class:`~unlearnkit.influence.curvature.CachedCurvature` of the
original model on the original data holds the Cholesky factor of ``H = Hessian of L(.; D)`` at
``theta*``; the rows a request touches change it by a term of low rank,

    H~ = H + F(Z~') F(Z~')^T - F(Z') F(Z')^T

(``Z'`` the removed rows and the rows whose features change, ``Z~'`` the corrected versions of
the latter; label edits leave the logistic Hessian unchanged), which the cache absorbs by the
Woodbury identity. The step then costs ``2k`` per-sample gradients, ``O(k C p^2)`` for the
low-rank update and ``O(p^2)`` for the solve — no pass over the data, no new factorisation
(:func:`cached_second_order_update`). At ``theta*`` it equals the update computed from scratch.

**Refinement.** The one-step update is exact only to first order in the change: for a 1 %
change it can land measurably away from the retrained optimum. :func:`refine` continues with
chord steps ``theta <- theta - M^{-1} grad L(theta; D~)`` on the same factor ``M = H~(theta*)``
(the simplified Newton method; Kelley, *Iterative Methods for Linear and Nonlinear Equations*,
SIAM 1995, ch. 5) until the **scaled gradient residual**

    r(theta) = ||grad L(theta; D~)||_2 / n~          (n~ = rows of D~)

is at most ``tol``. ``||grad L||_2`` is exactly what
:func:`~unlearnkit.influence.gradients.gradient_residual` reports; dividing by ``n~`` makes
``tol`` independent of the data size (it is the residual of the mean objective ``L / n~``).
Each step costs one pass over ``D~`` for the gradient and ``O(p^2)`` for the solve; chord
steps converge linearly with a rate of about ``||H~(theta*)^{-1} (H~(theta) - H~(theta*))||``,
small for small changes. When a step leaves more than :data:`SLOW_CONTRACTION` of the
residual, or fails to reduce it, the factor is recomputed at the current
parameters (one ``O(n p^2)`` Hessian pass and an ``O(p^3)`` factorisation, reported as a
refresh) and the iteration becomes Newton's method, with a backtracking line search on the
residual norm (for the exact Newton direction ``d``, ``d/dt ||grad L(theta - t d)||^2 = -2 r^2``
at ``t = 0``, so backtracking always finds a decrease above the rounding floor).

The one-step update is itself a Newton step from ``theta*`` (where the corrected residual is
``||G||``, the original model being at its optimum). When it overshoots — its residual exceeds
``||G||``, as for confident label flips of near-separable data — refinement restarts at
``theta*`` with that Newton step and backtracks (``restarted`` in the report).

If the residual is not below ``tol`` after ``max_steps`` steps (or stalls at the rounding floor
of the gradient sum), the result says so in its status and a WARNING is logged; the parameters
reached are returned (they are never worse in residual than the one-step update's).
"""

from __future__ import annotations

import copy
import enum
import logging
import math

import numpy as np
import torch

from unlearnkit import timing
from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError, SolverError
from unlearnkit.influence.curvature import CachedCurvature, hessian_row_changes
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import objective_gradient, summed_gradient

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 50
"""Refinement steps allowed by default. Chord steps for a change of a few per cent contract the
residual by 10-100x each, so a tight tolerance is reached in well under 10; large changes of
near-separable data need damped Newton steps first (measured: about 25 for 5 % of the labels of
the standardised breast-cancer data flipped, ``l2 = 1``). Each step is one pass over the data."""

SLOW_CONTRACTION = 0.25
"""A chord step that leaves more than this fraction of the residual triggers a refresh of the
factor at the current parameters (from then on: Newton's method). At this rate the chord steps
would need more passes over the data than the one Hessian pass a refresh costs for ``p`` up to
a few hundred; it is an engineering threshold, not tuned on evaluation data."""

MAX_BACKTRACKS = 30
"""Halvings of a Newton step tried before the iteration is declared stalled."""


class RefineStatus(str, enum.Enum):
    """How refinement ended."""

    CONVERGED = "converged"  # residual <= tol
    MAX_STEPS = "max_steps"  # residual > tol after max_steps steps
    STALLED = "stalled"  # no step reduces the residual: the rounding floor of the gradient sum is above tol


def check_refinable(model) -> None:
    """Refuse models the cached-factor update and refinement do not apply to (:class:`ModelError`)."""
    if not getattr(model, "convex", False):
        raise ModelError(
            f"Refinement to the exact optimum and the cached Hessian factor need a convex model (L2-regularised "
            f"logistic regression); the {getattr(model, 'kind', type(model).__name__)} model is not convex, so its "
            "Hessian may be indefinite and Newton's iteration has no guarantee. Drop refine= and curvature= for "
            "this model (the second-order update then uses its generalised Gauss-Newton solve)."
        )
    if float(getattr(model, "l2", 0.0)) <= 0.0:
        raise ModelError("Refinement needs a strongly convex objective: set l2 > 0 on the model.")


def _check_tol(tol: float) -> float:
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise SolverError(f"refine must be a positive number (the target of ||grad L||_2 / n), got {tol!r}.") from None
    if not (math.isfinite(tol) and tol > 0):
        raise SolverError(f"refine must be a positive number (the target of ||grad L||_2 / n), got {tol!r}.")
    return tol


def exact_factor(model, data: Dataset, curvature, *, refine=None, guard="auto", damping=None) -> CachedCurvature | None:
    """The exact Cholesky factor a second-order update should use on the cached path, or None.

    ``curvature`` may be a :class:`~unlearnkit.influence.curvature.CachedCurvature`, or a fitted
    curvature object (:func:`unlearnkit.curvature.fit`, ``kind="exact"``) holding one as ``factor``:
    for a convex model with an unguarded, undamped step that object is first checked against
    ``model`` and ``data`` (its ``check``) and its factor used, so the rows a request touches are
    absorbed by Woodbury. Other curvature objects return None (they are used as they are), unless
    ``refine`` is asked, which needs the exact factor (:class:`SolverError`).
    """
    if curvature is None or isinstance(curvature, str):
        return None
    if isinstance(curvature, CachedCurvature):
        return curvature
    factor = getattr(curvature, "factor", None)
    usable = (isinstance(factor, CachedCurvature) and getattr(model, "convex", False)
              and (guard == "auto" or guard is False) and not damping)
    if usable:
        check = getattr(curvature, "check", None)
        if callable(check):
            check(model, data)
        return factor
    if refine is not None:
        raise SolverError(f"refine= needs the exact Hessian factor of a convex model; the curvature given "
                          f"({getattr(getattr(curvature, 'kind', None), 'value', type(curvature).__name__)}) has none. "
                          "Fit it with uk.curvature.fit(model, data, kind='exact'), or pass no curvature.")
    return None


def request_curvature(model, curvature: CachedCurvature, resolved: Resolved) -> tuple[CachedCurvature, int]:
    """A copy of ``curvature`` (Hessian of ``L(.; D)`` at its anchor) updated to ``L(.; D~)`` for a request.

    Removes the Hessian factors of the removed rows and of the rows whose features change, and
    adds those of their corrected versions, all evaluated at the cache's anchor (label edits do
    not enter the logistic Hessian). Returns the updated copy and the rank of the update.
    ``curvature`` itself is not changed. Costs ``O(k C p^2)`` for ``k`` affected rows.
    """
    factors = getattr(model, "hessian_factors", None)
    if not callable(factors):
        raise ModelError(f"The {model.kind} model has no closed-form Hessian factors, so a cached factor cannot be "
                         "updated for a request; compute the update without curvature= (a fresh Hessian).")
    Xz, Xt, old_rows, new_rows, _, _ = hessian_row_changes(resolved)
    anchor = curvature.anchor
    dt, dev = anchor.dtype, anchor.device
    add = factors(anchor, torch.as_tensor(Xt[new_rows], dtype=dt, device=dev)) if new_rows.size else None
    remove = factors(anchor, torch.as_tensor(Xz[old_rows], dtype=dt, device=dev)) if old_rows.size else None
    updated = copy.copy(curvature)  # update() replaces tensors, never mutates them
    updated.update(add, remove)
    return updated, sum(F.shape[1] for F in (add, remove) if F is not None)


class ObjectiveGradient:
    """``theta -> grad L(theta; data)``, one pass over ``data`` per call (what :func:`refine` iterates on).

    For a logistic regression on dense in-memory rows it uses the closed form
    ``J^T (p - y) + l2 theta`` (``J`` the Jacobian of the logits: the rows with a column of ones),
    on row blocks of ``batch_size``, with the rows converted to tensors once; otherwise (sparse rows,
    other models, streamed data) :func:`~unlearnkit.influence.gradients.objective_gradient`. Both
    compute the same quantity; :attr:`path` says which one ran.
    """

    def __init__(self, flat: FlatModel, data: Dataset, *, batch_size: int = 1024) -> None:
        from unlearnkit.models.linear import LogisticRegression

        self.flat, self.data, self.batch_size = flat, data, int(batch_size)
        X = getattr(data, "X", None)
        self.closed_form = (isinstance(flat.model, LogisticRegression) and flat.sparse_rows_ok
                            and isinstance(X, np.ndarray) and len(data) > 0)
        self.path = "closed-form" if self.closed_form else "autodiff"
        if self.closed_form:
            self.X = torch.as_tensor(X.reshape(len(data), -1), dtype=flat.dtype, device=flat.device)
            self.y = torch.as_tensor(data.y, device=flat.device)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        if not self.closed_form:
            return objective_gradient(self.flat, self.data, theta, batch_size=self.batch_size)
        model = self.flat.model
        W, b = model._split(theta)
        gW = torch.zeros_like(W)
        gb = None if b is None else torch.zeros_like(b)
        for lo in range(0, self.X.shape[0], self.batch_size):
            Xb = self.X[lo:lo + self.batch_size]
            z = Xb @ W.T if b is None else torch.addmm(b, Xb, W.T)
            R = model._output_residual(z, self.y[lo:lo + self.batch_size])  # d l_i / d z_i, (m, C)
            gW += R.T @ Xb
            if gb is not None:
                gb += R.sum(0)
        g = gW.reshape(-1) if gb is None else torch.cat([gW.reshape(-1), gb])
        return g + self.flat.reg_gradient(theta)


class CorrectedGradient:
    """``theta -> grad L(theta; D~) = grad L(theta; D) - g(Z) + g(Z~)``: one pass over the original data.

    The corrected data set differs from ``D`` only in the affected rows, so its gradient is the
    original data's (:class:`ObjectiveGradient`, closed form where it applies) corrected by the
    ``k`` affected rows — no copy of the data is ever made.
    """

    def __init__(self, flat: FlatModel, data: Dataset, resolved: Resolved, *, batch_size: int = 1024) -> None:
        self.flat, self.resolved, self.batch_size = flat, resolved, int(batch_size)
        self.base = ObjectiveGradient(flat, data, batch_size=batch_size)
        self.path = f"{self.base.path} on D, corrected by Z and Z~"

    def __call__(self, theta: torch.Tensor, *, base: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient at ``theta``; ``base``: ``grad L(theta; D)`` when already computed (no pass over ``D``)."""
        g = self.base(theta) if base is None else base
        if len(self.resolved.Z):
            g = g - summed_gradient(self.flat, self.resolved.Z, theta, batch_size=self.batch_size)
        if len(self.resolved.Z_tilde):
            g = g + summed_gradient(self.flat, self.resolved.Z_tilde, theta, batch_size=self.batch_size)
        return g


def refine(flat: FlatModel, data: Dataset, theta: torch.Tensor, curvature: CachedCurvature, *, tol: float,
           max_steps: int = DEFAULT_MAX_STEPS, batch_size: int = 1024,
           origin: tuple[torch.Tensor, float] | None = None,
           resolved: Resolved | None = None) -> tuple[torch.Tensor, dict]:
    """Chord / Newton steps on ``L(.; data)`` from ``theta`` until ``||grad L||_2 / len(data) <= tol``.

    With ``resolved`` (a change set resolved against ``data``) the objective is that of the
    corrected data ``D~`` instead, its gradient computed from ``data`` and the affected rows
    (:class:`CorrectedGradient`): ``D~`` itself is built only if the factor must be recomputed.

    ``curvature`` is the factor to start with (the corrected Hessian at the original optimum for
    an unlearning request); it is not changed. ``origin = (theta0, residual0)``: ``theta`` is the step
    ``theta0 - curvature^{-1} grad L(theta0)`` with ``curvature`` the exact Hessian at ``theta0``, whose
    residual ``||grad L(theta0)||_2`` is about ``residual0``; when the step overshot (the residual at
    ``theta`` exceeds ``residual0``) refinement restarts at ``theta0`` with a Newton step that
    backtracks (``restarted`` in the report; one more pass).

    Returns the final parameters and a report: ``status`` (:class:`RefineStatus`), ``steps``
    (solves), ``residuals`` (the scaled residual at the start and after each accepted step),
    ``step_kinds`` (``chord`` on an earlier factor, ``newton`` on one computed at that point,
    ``(t=...)`` when shortened), ``gradient_passes`` and ``gradient`` (closed-form or autodiff),
    ``backtracks``, ``restarted``, ``factor_refreshed`` and ``refreshes`` (Hessian passes, each
    with a factorisation), ``tol``, ``max_steps``, ``residual`` (scaled), ``residual_norm``
    (``||grad L||_2``, as :func:`~unlearnkit.influence.gradients.gradient_residual` reports it)
    and ``seconds``.
    """
    tol = _check_tol(tol)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise SolverError(f"max_steps must be an integer >= 0, got {max_steps!r}.")
    n = len(data) if resolved is None else len(data) - len(resolved.Z) + len(resolved.Z_tilde)
    if n == 0:
        raise SolverError("Cannot refine on an empty dataset.")
    start = timing.start()
    passes = 0
    objective = (ObjectiveGradient(flat, data, batch_size=batch_size) if resolved is None
                 else CorrectedGradient(flat, data, resolved, batch_size=batch_size))

    def grad_at(t: torch.Tensor) -> tuple[torch.Tensor, float]:
        nonlocal passes
        passes += 1
        g_ = objective(t)
        return g_, float(torch.linalg.vector_norm(g_))

    g, r = grad_at(theta)
    M, fresh = curvature, False  # fresh: M is the Hessian at the current theta
    restarted = False
    if origin is not None and not r <= origin[1]:  # the first step overshot: restart from theta0, where M is exact
        theta = origin[0]
        g, r = grad_at(theta)
        fresh = restarted = True
    if not math.isfinite(r):
        raise SolverError("Refinement met a non-finite gradient; the model was not changed.")
    residuals, kinds = [r / n], []
    steps = refreshes = backtracks = 0
    status = RefineStatus.CONVERGED

    def refresh() -> None:
        nonlocal M, fresh, refreshes
        rows = data if resolved is None else resolved.corrected
        M = CachedCurvature.at(flat.model, rows, theta, batch_size=batch_size, null_space=curvature.null_space)
        fresh, refreshes = True, refreshes + 1

    while r / n > tol:
        if steps >= max_steps:
            status = RefineStatus.MAX_STEPS
            break
        d = M.solve(g)
        steps += 1
        kind = "newton" if fresh else "chord"
        t, accepted = 1.0, False
        for _ in range(MAX_BACKTRACKS if fresh else 1):
            g_new, r_new = grad_at(theta - t * d)
            if math.isfinite(r_new) and (r_new <= (1.0 - 1e-4 * t) * r if fresh else r_new < r):
                accepted = True
                break
            t *= 0.5
            backtracks += 1
        if not accepted:
            if fresh:  # the exact Newton direction found no decrease: the rounding floor of the gradient sum
                status = RefineStatus.STALLED
                break
            refresh()  # the chord step did not help: the anchor is too far, switch to Newton at theta
            continue
        moved_from = r
        theta, g, r = theta - t * d, g_new, r_new
        residuals.append(r / n)
        kinds.append(kind if t == 1.0 else f"{kind}(t={t:g})")
        fresh = False  # M was computed at an earlier point: the next step is a chord step on it
        if r / n > tol and r > SLOW_CONTRACTION * moved_from and steps < max_steps:  # slow contraction: stale factor
            refresh()
    report = {
        "status": status.value, "tol": tol, "residual_scaling": "||grad L(theta; D~)||_2 / n", "n_rows": n,
        "max_steps": max_steps, "steps": steps, "residuals": residuals, "step_kinds": kinds,
        "residual": r / n, "residual_norm": r, "gradient_passes": passes, "gradient": objective.path, "backtracks": backtracks,
        "restarted": restarted, "factor_refreshed": refreshes > 0, "refreshes": refreshes, "seconds": timing.since(start),
    }
    if status is not RefineStatus.CONVERGED:
        log.warning(
            "Refinement did not reach ||grad L||_2 / n <= %.3g: %s after %d steps with residual %.3g%s. The model "
            "returned is the last iterate; raise refine_max_steps%s.", tol, status.value, steps, r / n,
            "" if status is RefineStatus.MAX_STEPS else " (no step reduces it: rounding floor of the gradient sum)",
            "" if status is RefineStatus.MAX_STEPS else " or loosen refine (tol)",
        )
    return theta, report


def cached_second_order_update(
    model,
    data: Dataset,
    changes: Changes,
    *,
    curvature: CachedCurvature | None = None,
    refine_tol: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    max_params: int = 5000,
    batch_size: int = 1024,
    device=None,
):
    """Second-order update ``theta* - H~^{-1} G`` on a Cholesky factor, optionally refined to ``refine_tol``.

    ``curvature``: a :class:`~unlearnkit.influence.curvature.CachedCurvature` of ``model`` on
    ``data`` (the *original* data; e.g. ``CachedCurvature.at(model, data)``, computed once and
    reused for every request). A copy is updated by Woodbury for the rows this request touches
    (see :func:`request_curvature`): the request then costs ``O(k C p^2)``, no pass over the data.
    When the cache's anchor is not the model's parameters (it was computed for an earlier model)
    the step is a quasi-Newton step; ``diagnostics["curvature"]["anchor_drift"]`` reports
    ``||theta* - anchor||``. Without ``curvature`` the corrected Hessian is computed and
    factorised here (``O(n p^2 + p^3)``, ``8 p^2`` bytes; refused above ``max_params`` parameters),
    which equals the Exact solver's update.

    ``refine_tol``: continue with :func:`refine` until ``||grad L(theta; D~)||_2 / n~ <= refine_tol``
    (at most ``max_steps`` steps; diagnostics ``"refine"``). None: the one-step update.
    """
    from unlearnkit.influence.updates import UnlearnResult, _gradient_parts, _prepare

    start = timing.start()
    check_refinable(model)
    if refine_tol is not None:
        refine_tol = _check_tol(refine_tol)
    flat, resolved = _prepare(model, data, changes, device)
    theta0 = flat.theta()
    G, minus_gz = _gradient_parts(flat, resolved, batch_size=batch_size)
    # the corrected data set (a copy of the data) is built only when a pass over it is needed: to compute the
    # Hessian, or to refine; a request on a cached factor touches only Z and Z~
    n_corrected = len(data) - len(changes.removed_ids)
    if curvature is not None:
        if not isinstance(curvature, CachedCurvature):
            raise SolverError(f"curvature must be a CachedCurvature of the model on its training data, got "
                              f"{type(curvature).__name__}.")
        if curvature.n_params != flat.n_params:
            raise SolverError(f"The cached curvature is for {curvature.n_params} parameters; this model has "
                              f"{flat.n_params}. Compute it for this model: CachedCurvature.at(model, data).")
        recorded = getattr(curvature, "data_fingerprint", None)
        if recorded is not None and recorded != data.fingerprint():
            raise SolverError(f"The cached curvature was computed on other data (fingerprint {recorded}, this data "
                              f"{data.fingerprint()}): compute it on the data the request is resolved against, "
                              "CachedCurvature.at(model, data).")
        if curvature.anchor.device != theta0.device or curvature.anchor.dtype != theta0.dtype:
            recorded = curvature.data_fingerprint
            curvature = CachedCurvature.from_state(curvature.state(), device=theta0.device)
            curvature.data_fingerprint = recorded
            if curvature.H.dtype != theta0.dtype:
                raise SolverError(f"The cached curvature is in {curvature.H.dtype}, the model in {theta0.dtype}; "
                                  "compute it from the model as it is.")
        before = curvature.refactorisations
        M, rank = request_curvature(flat.model, curvature, resolved)
        info = {"source": "cached", "low_rank_update": rank, "refactorised": M.refactorisations > before,
                "anchor_drift": float(torch.linalg.vector_norm(theta0 - curvature.anchor))}
    else:
        if flat.n_params > max_params:
            raise SolverError(f"The dense Hessian of {flat.n_params} parameters ({8 * flat.n_params ** 2 / 1e9:.2g} GB) "
                              f"is over max_params={max_params}; raise max_params if it fits in memory, or drop refine= "
                              "and use the conjugate-gradient solver.")
        M = CachedCurvature.at(flat.model, resolved.corrected, theta0, batch_size=batch_size)
        info = {"source": "computed", "low_rank_update": 0, "anchor_drift": 0.0, "refactorised": True}
    step = M.solve(G)
    if not torch.all(torch.isfinite(step)):
        raise SolverError("The second-order step is not finite; the model was not changed.")
    theta = theta0 - step
    diagnostics = {"grad_diff_norm": float(torch.linalg.vector_norm(G)), "update_norm": float(torch.linalg.vector_norm(step)),
                   "hessian_rows": n_corrected, "solver": {"kind": "cholesky", "hvps": 0}, "curvature": info}
    if refine_tol is not None:
        # with the factor at theta* itself (no drift) the one-step update is a Newton step from theta*, where the
        # residual is ||G|| (up to the original model's own, ~0): if it overshot, restart there and backtrack
        origin = (theta0, float(torch.linalg.vector_norm(G))) if info["anchor_drift"] == 0.0 else None
        theta, report = refine(flat, data, theta, M, resolved=resolved, tol=refine_tol, max_steps=max_steps, batch_size=batch_size,
                               origin=origin)
        diagnostics["refine"] = report
        diagnostics["status"] = "refined" if report["status"] == RefineStatus.CONVERGED.value else f"refine-{report['status']}"
    new = flat.to_model(theta)
    result = UnlearnResult(
        new, "second-order", timing.since(start), resolved.n_affected,
        per_sample_gradients=len(resolved.Z) + len(resolved.Z_tilde), hvps=0, diagnostics=diagnostics,
    )
    result._gradients = (G, minus_gz)
    return result
