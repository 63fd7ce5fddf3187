"""First- and second-order unlearning updates (Warnecke et al., NDSS 2023).

For a change set resolving to affected points ``Z`` and corrections ``Z~`` (removed points have
no correction), with ``g(S) = sum_{z in S} grad_theta l(z, theta*)``::

    G = g(Z~) - g(Z)
    first order:   theta_new = theta* - tau G
    second order:  theta_new = theta* - H^{-1} G

``H`` is the Hessian of the full objective ``L(theta; D~) = sum_{z in D~} l(z, theta) +
(l2/2)||theta||^2`` **on the corrected data** ``D~`` at ``theta*`` (the convention of the
paper's code, and Newton's step on ``L(.; D~)``: because ``grad L(theta*; D) = 0`` at the
optimum, ``grad L(theta*; D~) = G``). For label edits of logistic regression the corrected and
original Hessians coincide; for feature edits and removals they do not, and using the corrected
one is what makes the update match retraining.

With ``tau="auto"`` the first-order step uses ``tau = G.G / G.H G``, the exact minimiser of the
local quadratic model of ``L(.; D~)`` along ``-G`` (one extra Hessian-vector product).

The second-order step can be **guarded** (:mod:`unlearnkit.influence.guard`): its damping is
chosen by a Levenberg-Marquardt / trust-region rule on an estimate of ``L(.; D~)`` (the corrected
affected rows plus a fixed random sample of the others), and a step that makes that estimate
worse than at ``theta*`` is never returned (the original parameters come back with status
``rejected`` and a warning instead). On by default for non-convex problems; off for convex
ones, where the undamped exact step is the paper's update.

The input model is never modified: the update builds a new model, and any failure raises
before a model is returned.
"""

from __future__ import annotations

import copy
import enum
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearnkit import timing
from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import SolverError
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import summed_gradient
from unlearnkit.influence.guard import GuardStatus, HeldOutErrors, SampledObjective, TrustRegion, refusals, relative_damping
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.solvers import ConjugateGradient, Exact, LiSSA
from unlearnkit.models.base import UnlearnableModel

logger = logging.getLogger(__name__)


@dataclass
class UnlearnResult:
    """An unlearned model and what it took to get there."""

    model: UnlearnableModel
    method: str
    seconds: float
    n_affected: int
    per_sample_gradients: int = 0
    hvps: int = 0
    diagnostics: dict = field(default_factory=dict)
    _gradients: tuple | None = field(default=None, init=False, repr=False, compare=False)
    """``(G, -g(Z))`` at the original parameters, kept by a one-step second-order update for its guard (which would
    otherwise compute them again); not part of the result's record."""

    def to_dict(self) -> dict:
        return {
            "method": self.method, "seconds": self.seconds, "n_affected": self.n_affected,
            "per_sample_gradients": self.per_sample_gradients, "hvps": self.hvps, **self.diagnostics,
        }

    @property
    def status(self) -> str | None:
        """``diagnostics["status"]``: for a guarded update the guard's verdict (``accepted``,
        ``backtracked``, or ``rejected``: the original parameters were returned); None when the
        update states none."""
        return self.diagnostics.get("status")

    @property
    def worse(self) -> list[str]:
        """Names of the measures the update made worse, beyond their tolerance (``diagnostics["check"]``, filled by
        :func:`unlearnkit.unlearn`; see :mod:`unlearnkit.before_after`); empty when none did or none were measured."""
        return [name for name, m in self.diagnostics.get("check", {}).items() if m.get("worse")]


def gradient_difference(flat: FlatModel, resolved: Resolved, *, batch_size: int = 1024) -> torch.Tensor:
    """``G = g(Z~) - g(Z)`` at the model's parameters (``2|Z|`` per-sample gradients at most)."""
    return _gradient_parts(flat, resolved, batch_size=batch_size)[0]


def _gradient_parts(flat: FlatModel, resolved: Resolved, *, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, -g(Z))`` at the model's parameters: :func:`gradient_difference` and its first term."""
    theta = flat.theta()
    minus_gz = -summed_gradient(flat, resolved.Z, theta, batch_size=batch_size)
    G = minus_gz
    if len(resolved.Z_tilde):
        G = G + summed_gradient(flat, resolved.Z_tilde, theta, batch_size=batch_size)
    if not torch.all(torch.isfinite(G)):
        raise SolverError("The gradient difference G contains NaN or infinite values; the model was not changed.")
    return G, minus_gz


class Params(str, enum.Enum):
    """Which parameters an update changes: all of them, or only the classifier head (the reference
    code's CIFAR experiment updates only the last layers; cheaper, and convex in the head for a
    cross-entropy output layer)."""

    ALL = "all"
    HEAD = "head"


def parameter_names(model: UnlearnableModel, params: str | Params = Params.ALL) -> list[str] | None:
    """Names of the parameters ``params`` selects (``None`` = all trainable ones)."""
    try:
        params = Params(params)
    except ValueError:
        raise SolverError(f"params must be one of {[p.value for p in Params]}, got {params!r}.") from None
    if params is Params.ALL:
        return None
    head = {id(p) for p in model.head().parameters()}
    return [name for name, p in model.named_parameters() if id(p) in head and p.requires_grad]


def hessian_sample(corrected: Dataset, hessian_rows: int | None, seed: int) -> tuple[Dataset, float]:
    """The rows the curvature is estimated on and their weight: ``m`` rows of ``D~`` drawn with
    ``seed`` and weighted ``n/m`` (unbiased), or all rows with weight 1 when ``hessian_rows`` is
    None or at least ``n``."""
    if hessian_rows is None or hessian_rows >= len(corrected):
        return corrected, 1.0
    if hessian_rows < 1:
        raise SolverError(f"hessian_rows must be >= 1 or None, got {hessian_rows}.")
    rows = np.sort(np.random.default_rng(seed).choice(len(corrected), size=hessian_rows, replace=False))
    return corrected.subset(rows), len(corrected) / hessian_rows


def _prepare(model: UnlearnableModel, data: Dataset, changes: Changes, device, params=Params.ALL):
    model.check_data(data)
    resolved = changes.resolve(data)
    if device is not None:
        import copy

        model = copy.deepcopy(model).to(device)
    return FlatModel(model, parameter_names(model, params)), resolved


def first_order_update(
    model: UnlearnableModel,
    data: Dataset,
    changes: Changes,
    *,
    tau: float | str = "auto",
    curvature: str = "hessian",
    params: str = "all",
    batch_size: int = 1024,
    device=None,
) -> UnlearnResult:
    """``theta* - tau G``; ``tau="auto"`` is the exact line minimiser ``G.G / G.H~G``.

    ``curvature="ggn"`` measures the curvature along ``G`` with the generalised Gauss-Newton
    matrix instead of the Hessian (positive for deep models, where the Hessian may not be).
    ``params="head"`` updates only the classifier head (see :class:`Params`).
    """
    start = timing.start()
    flat, resolved = _prepare(model, data, changes, device, params)
    G = gradient_difference(flat, resolved, batch_size=batch_size)
    hvps = 0
    if tau == "auto":
        H = HessianOperator(flat, resolved.corrected, batch_size=batch_size, curvature=curvature)
        curvature = float(G @ H.matvec(G))
        hvps = 1
        gg = float(G @ G)
        if gg == 0:
            tau_value = 0.0
        elif not curvature > 0:
            raise SolverError(
                f"tau='auto' needs positive curvature along G, got {curvature:.3g} (non-convex region); pass tau=<float>."
            )
        else:
            tau_value = gg / curvature
    else:
        tau_value = float(tau)
        if not (math.isfinite(tau_value) and tau_value > 0):
            raise SolverError(f"tau must be a positive number or 'auto', got {tau!r}.")
    theta = flat.theta() - tau_value * G
    new = flat.to_model(theta)
    return UnlearnResult(
        new, "first-order", timing.since(start), resolved.n_affected,
        per_sample_gradients=len(resolved.Z) + len(resolved.Z_tilde), hvps=hvps,
        diagnostics={"tau": tau_value, "grad_diff_norm": float(torch.linalg.vector_norm(G)),
                     "update_norm": tau_value * float(torch.linalg.vector_norm(G))},
    )


def second_order_update(
    model: UnlearnableModel,
    data: Dataset,
    changes: Changes,
    *,
    solver=None,
    hessian_rows: int | None = None,
    curvature="hessian",
    params: str = "all",
    seed: int = 0,
    batch_size: int = 1024,
    device=None,
    guard: bool | str | TrustRegion = "auto",
    damping: float | None = None,
    refine: float | None = None,
    refine_max_steps: int | None = None,
    held_out: Dataset | None = None,
) -> UnlearnResult:
    """``theta* - H~^{-1} G`` with ``H~`` the Hessian of ``L(.; D~)`` at ``theta*``.

    ``solver`` is an inverse-HVP solver from :mod:`unlearnkit.influence.solvers`
    (default :class:`~unlearnkit.influence.solvers.Exact`). ``hessian_rows=m`` estimates
    ``H~`` from ``m`` rows of ``D~`` drawn with ``seed``, weighted ``n/m`` (unbiased; the
    reference code's mini-batch Hessian) — cheaper HVPs for large data, at the cost of
    exactness; ``None`` uses every row. ``curvature="ggn"`` uses the generalised
    Gauss-Newton matrix instead of the Hessian (PSD; the same for logistic regression).
    ``params="head"`` updates only the classifier head: ``G`` and ``H`` are then the gradient and
    Hessian with respect to the head's parameters, the rest of the network held fixed.

    ``curvature`` may also be a curvature object fitted once and reused (anything with
    ``solve(v, damping=...)`` returning ``(H + damping I)^{-1} v``, and optionally ``matvec(v)``
    and ``n_params``): it replaces the Hessian operator and ``solver``; ``hessian_rows`` then
    does not apply.

    ``guard`` applies the trust-region rule of :mod:`unlearnkit.influence.guard`: ``"auto"`` (the
    default) guards non-convex problems and leaves convex ones (a convex model, or
    ``params="head"``) to the paper's undamped step (this low-level function is the paper's step; the
    registered ``second-order`` method, what :func:`unlearnkit.unlearn` runs, judges convex steps too and
    returns them unchanged when they pass); ``True`` / ``False`` force it on / off; a
    :class:`~unlearnkit.influence.guard.TrustRegion` gives its settings. ``damping`` is the
    damping of the step (the guard's initial damping); None takes the solver's own
    (``solver.damping``; for LiSSA its effective damping ``damping x scale``), or 0 for a
    curvature object. A guarded result carries ``diagnostics["guard"]`` and :attr:`UnlearnResult.status`;
    a rejected update returns a copy of the original parameters and logs a warning. ``held_out``
    (rows the model was not trained on, e.g. a validation split) adds the guard's held-out test: a
    guarded step that corrects rows must not misclassify more of them (unguarded updates and
    removals do not look at them).

    Convex models: ``curvature`` may be a :class:`~unlearnkit.influence.curvature.CachedCurvature`
    of the model on the original data (computed once, reused for every request; a copy is updated
    by Woodbury for the rows the request touches, ``O(k C p^2)``), and ``refine=tol`` continues
    with chord / Newton steps until ``||grad L(theta; D~)||_2 / n~ <= tol`` (at most
    ``refine_max_steps``); see :mod:`unlearnkit.influence.refine`.
    """
    from unlearnkit.influence.refine import exact_factor

    factor = exact_factor(model, data, curvature, refine=refine, guard=guard, damping=damping)
    if refine is not None or factor is not None:
        from unlearnkit.influence.refine import DEFAULT_MAX_STEPS, cached_second_order_update, check_refinable

        check_refinable(model)
        if (solver is not None and not isinstance(solver, Exact)) or getattr(solver, "damping", 0.0) or damping \
                or hessian_rows is not None or getattr(params, "value", params) != "all" \
                or (isinstance(curvature, str) and curvature != "hessian") or not (guard == "auto" or guard is False):
            raise SolverError("refine= and a cached factor take exact undamped steps on the Hessian of all parameters on "
                              "all rows (refine itself reaches the optimum): leave solver, damping, hessian_rows, params, "
                              "curvature and guard at their defaults.")
        return cached_second_order_update(
            model, data, changes, curvature=factor, refine_tol=refine,
            max_steps=DEFAULT_MAX_STEPS if refine_max_steps is None else refine_max_steps,
            max_params=getattr(solver, "max_params", 5000), batch_size=batch_size, device=device)
    start = timing.start()
    convex = model.convex or Params(params) is Params.HEAD
    trust = _trust_region(guard, convex)
    flat, resolved = _prepare(model, data, changes, device, params)
    G, minus_gz = _gradient_parts(flat, resolved, batch_size=batch_size)
    cached = None if isinstance(curvature, str) else curvature
    if cached is not None:
        _check_curvature_object(cached, flat)
        check = getattr(cached, "check", None)
        if callable(check):  # a fitted curvature is tied to its model's parameters and its data: refused otherwise
            check(model, data)
        H, rows_used = None, None
    else:
        corrected, weight = hessian_sample(resolved.corrected, hessian_rows, seed)
        H = HessianOperator(flat, corrected, batch_size=batch_size, weight=weight, curvature=curvature)
        rows_used = len(corrected)
    diagnostics = {"grad_diff_norm": float(torch.linalg.vector_norm(G))}
    if rows_used is not None:
        diagnostics["hessian_rows"] = rows_used
    if trust is None:
        if cached is not None:
            d = 0.0 if damping is None else _check_damping(damping)
            step = _solve_cached(cached, G, d)
            report, hvps = {"solver": "curvature object", "damping": d}, 0
        else:
            solver = solver if solver is not None else Exact()
            if damping is not None:
                solver = _with_damping(solver, _check_damping(damping))
            step, rep = solver.solve(H, G)
            report, hvps = rep.to_dict(), rep.hvps
        theta = flat.theta() - step
        diagnostics.update(update_norm=float(torch.linalg.vector_norm(step)), solver=report)
        result = UnlearnResult(
            flat.to_model(theta), "second-order", timing.since(start), resolved.n_affected,
            per_sample_gradients=len(resolved.Z) + len(resolved.Z_tilde), hvps=hvps, diagnostics=diagnostics,
        )
        result._gradients = (G, minus_gz)
        return result
    solve, matvec, initial, rule, counter = _damped_problem(cached, H, solver, damping)
    objective = SampledObjective(flat, resolved.corrected, resolved.Z_tilde, rows=trust.rows, seed=trust.seed,
                                 batch_size=batch_size)
    check = HeldOutErrors(flat, held_out, batch_size=batch_size) if _held_out_applies(held_out, changes) else None
    theta0 = flat.theta()

    def scale() -> float:
        return relative_damping(matvec, flat.n_params, seed=seed, dtype=flat.dtype, device=flat.device)

    outcome = trust.step(theta0, G, solve, objective, initial_damping=initial, matvec=matvec,
                         scale=scale if matvec is not None else None, initial_damping_rule=rule, held_out=check)
    guard_diag = {**outcome.diagnostics, "objective": objective.describe(), "objective_evaluations": objective.evaluations}
    if check is not None:
        guard_diag["held_out"] = {**check.describe(), "evaluations": check.evaluations}
    elif held_out is not None:
        guard_diag["held_out"] = {"rows": len(held_out), "applied": False, "reason": HELD_OUT_SKIPPED}
    accepted = [r for d, r in counter["reports"] if d == outcome.damping]
    diagnostics.update(update_norm=float(torch.linalg.vector_norm(outcome.step)),
                       solver=accepted[0] if accepted else None, guard=guard_diag, status=outcome.status.value)
    if outcome.status is GuardStatus.REJECTED:
        logger.warning("second-order update rejected by its guard (%s); the original parameters are returned.",
                       refusals(guard_diag))
    return UnlearnResult(
        flat.to_model(outcome.theta), "second-order", timing.since(start), resolved.n_affected,
        per_sample_gradients=len(resolved.Z) + len(resolved.Z_tilde), hvps=counter["hvps"], diagnostics=diagnostics,
    )


HELD_OUT_SKIPPED = ("the request removes rows or features: forgetting may rightly cost held-out rows like them (a "
                    "removed class, a removed feature), so the held-out test applies only to requests that only relabel")


def _held_out_applies(held_out: Dataset | None, changes: Changes) -> bool:
    """The guard's held-out test applies to requests that only relabel rows (corrections), not to removals of rows or
    features, nor to requests mixing them with relabels (their forgetting may rightly cost held-out rows)."""
    return held_out is not None and bool(changes.label_edits) and not changes.removals and not changes.feature_edits


def _trust_region(guard, convex: bool) -> TrustRegion | None:
    """The guard's settings for a ``guard`` argument (None: unguarded)."""
    if isinstance(guard, TrustRegion):
        guard.check()
        return guard
    if isinstance(guard, str) and guard == "auto":
        return None if convex else TrustRegion()
    if guard is True:
        return TrustRegion()
    if guard is False:
        return None
    raise SolverError(f"guard must be True, False, 'auto' or a TrustRegion, got {guard!r}.")


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not (math.isfinite(damping) and damping >= 0):
        raise SolverError(f"damping must be a finite number >= 0 or None, got {damping!r}.")
    return float(damping)


def _check_curvature_object(cached, flat: FlatModel) -> None:
    if not callable(getattr(cached, "solve", None)):
        raise SolverError(f"curvature must be 'hessian', 'ggn' or a curvature object with solve(v, damping=...), got "
                          f"{type(cached).__name__}.")
    n = getattr(cached, "n_params", None)
    if n is not None and int(n) != flat.n_params:
        raise SolverError(f"The curvature object covers {int(n)} parameters but the update changes {flat.n_params}: it was "
                          "fitted for another model or another parameter subset (params=). Fit it for this model and subset.")


def _solve_cached(cached, v: torch.Tensor, damping: float) -> torch.Tensor:
    out = cached.solve(v, damping=damping)
    x = out[0] if isinstance(out, tuple) else out
    if not isinstance(x, torch.Tensor) or x.shape != v.shape:
        raise SolverError(f"The curvature object's solve returned {type(x).__name__} of shape {getattr(x, 'shape', None)}; "
                          f"expected a tensor of shape {tuple(v.shape)}.")
    return x.to(dtype=v.dtype, device=v.device)


class _DenseOnce:
    """A Hessian operator whose dense matrix is built once (the guard re-solves at several dampings)."""

    def __init__(self, H: HessianOperator) -> None:
        self._H = H
        self._dense = None

    def dense(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = self._H.dense()
        return self._dense.clone()

    def __getattr__(self, name):
        return getattr(self._H, name)


def _with_damping(solver, damping: float):
    """A copy of ``solver`` with effective damping ``damping`` (the input solver is not changed)."""
    out = copy.copy(solver)
    if isinstance(solver, LiSSA):
        if solver.scale is None:
            raise SolverError("LiSSA's damping is in units of its scale: give the solver an explicit scale= to set damping=.")
        out.damping = damping / solver.scale
    elif hasattr(solver, "damping"):
        out.damping = damping
    else:
        raise SolverError(f"The solver {type(solver).__name__} has no damping to set; use exact, cg or lissa.")
    return out


def _damped_problem(cached, H, solver, damping):
    """``solve(v, d)``, ``matvec``, the initial damping and its rule, and a counter of products and reports."""
    counter = {"hvps": 0, "reports": []}
    if cached is not None:
        initial = 0.0 if damping is None else _check_damping(damping)
        rule = "given (damping=)" if damping is not None else "0 (curvature object, no damping given)"
        own = getattr(cached, "matvec", None)
        matvec = None
        if callable(own):
            def matvec(v):
                counter["hvps"] += 1
                return own(v).to(dtype=v.dtype, device=v.device)

        def solve(v, d):
            x = _solve_cached(cached, v, d)
            counter["reports"].append((d, {"solver": "curvature object", "damping": d}))
            return x
        return solve, matvec, initial, rule, counter
    solver = solver if solver is not None else Exact()
    if isinstance(solver, Exact):
        op = _DenseOnce(H)
    elif isinstance(solver, (ConjugateGradient, LiSSA)):
        op = H
    else:
        raise SolverError(f"The guard needs a solver whose damping it can set (exact, cg or lissa), got {type(solver).__name__}.")
    if isinstance(solver, LiSSA):
        hvps_before = H.n_hvp
        lam = solver.scale / 1.1 if solver.scale is not None else H.largest_eigenvalue(seed=solver.seed)
        counter["hvps"] += H.n_hvp - hvps_before
        own_damping = solver.damping * 1.1 * lam

        def configure(d):
            # LiSSA converges when every eigenvalue of (H + d I) / scale lies in (0, 2): rescale with the damping
            out = copy.copy(solver)
            out.scale = 1.1 * (lam + d)
            out.damping = d / out.scale
            return out
    else:
        own_damping = solver.damping

        def configure(d):
            out = copy.copy(solver)
            out.damping = d
            return out
    initial = own_damping if damping is None else _check_damping(damping)
    rule = f"given (damping=); solver {type(solver).__name__}" if damping is not None else \
        f"the solver's own damping ({type(solver).__name__})"

    def solve(v, d):
        x, report = configure(d).solve(op, v)
        counter["hvps"] += report.hvps
        counter["reports"].append((d, report.to_dict()))
        return x

    def matvec(v):
        counter["hvps"] += 1
        return H.matvec(v)
    return solve, matvec, initial, rule, counter


def split_changes(changes: Changes, data: Dataset, chunks: int) -> list[Changes]:
    """Split a change set into up to ``chunks`` change sets over disjoint groups of affected rows.

    Used by the iterative variants, which apply the update chunk by chunk and recompute ``G``
    and ``H`` in between (the error of a linearisation grows with the size of the change).
    """
    return _split_resolved(changes, changes.resolve(data), chunks)


def _split_resolved(changes: Changes, resolved: Resolved, chunks: int) -> list[Changes]:
    ids = resolved.affected_ids
    if chunks < 1:
        raise SolverError(f"chunks must be >= 1, got {chunks}.")
    groups = [g for g in np.array_split(ids, min(chunks, len(ids))) if len(g)]
    out = []
    z_tilde = resolved.Z_tilde
    removed = changes.removed_ids
    for group in groups:
        group_set = set(group.tolist())
        parts = []
        rem = sorted(group_set & removed)
        if rem:
            parts.append(Changes.remove(rem))
        keep = np.flatnonzero(np.isin(z_tilde.ids, group))
        if keep.size:
            sub = z_tilde.subset(keep)
            orig = resolved.Z.subset(np.flatnonzero(np.isin(resolved.Z.ids, sub.ids)))
            label_rows = sub.ids[sub.y != orig.y]
            if label_rows.size:
                parts.append(Changes.relabel(label_rows, sub.y[sub.y != orig.y]))
            flat_new = sub.dense_rows().reshape(len(sub), -1)
            flat_old = orig.dense_rows().reshape(len(orig), -1)
            for k in range(len(sub)):
                cols = np.flatnonzero(flat_new[k] != flat_old[k])
                if cols.size:
                    parts.append(Changes.set_features(cols, flat_new[k, cols], rows=[int(sub.ids[k])]))
        if parts:  # one change set, checked once (adding the parts one by one re-checks every prefix)
            out.append(Changes.join(parts))
    return out


def iterative_update(
    update,
    model: UnlearnableModel,
    data: Dataset,
    changes: Changes,
    *,
    chunks: int,
    **kwargs,
) -> UnlearnResult:
    """Apply ``update`` (first or second order) chunk by chunk, on the data corrected so far.

    A guarded second-order update (see :func:`second_order_update`) is guarded per chunk: each
    chunk starts from the damping the previous chunk's rule proposed, and a chunk whose step is
    rejected is merged into the next one (its rows are not yet unlearned, so the data stays
    uncorrected for them). At the end the estimate of the objective on the fully corrected data
    (the guard's sample rule, drawn again on it) is compared at the original and the final
    parameters: if the final ones are not strictly better, the original parameters are returned
    with status ``rejected`` and a warning; otherwise the status is ``accepted`` when every chunk's
    step was, ``backtracked`` when some chunk was shortened or deferred (``chunk_status`` lists
    them). Rows a rejected last chunk left behind are counted in
    ``diagnostics["guard"]["rows_not_unlearned"]`` (with a warning).

    A fitted curvature (``curvature=`` an object) is checked once against ``model`` and ``data``
    and then serves every chunk as it is: the factors are not refitted after each chunk (that
    would cost a pass over the data per chunk). How far each chunk starts from where they were
    fitted is reported in ``diagnostics["curvature"]["drift"]``: the relative change of the
    parameters and the share of rows already corrected.
    """
    start = timing.start()
    current_model, current_data = model, data
    grads = hvps = 0
    resolved = changes.resolve(data)
    parts = _split_resolved(changes, resolved, chunks)
    reuse = None
    curvature = kwargs.get("curvature")
    if isinstance(curvature, CachedCurvature):
        raise SolverError("A CachedCurvature is tied to the data it was computed on and answers one request at a time; "
                          "for chunks > 1 fit a curvature object with unlearnkit.curvature.fit(model, data), or use chunks=1.")
    if curvature is not None and not isinstance(curvature, str):
        check = getattr(curvature, "check", None)
        if callable(check):  # tied to the model and data it was fitted on: checked here, before the first chunk
            check(model, data)
        kwargs["curvature"] = _Stale(curvature)
        theta_fit = _all_parameters(model)
        reuse = {"rule": "stale: fitted once on the original model and data, reused unchanged by every chunk",
                 "drift": []}
    corrected_rows = 0
    chunk_guards = []
    pending = None  # changes of rejected chunks, merged into the next one
    damping = kwargs.pop("damping", None)
    for part in parts:
        part = part if pending is None else pending + part
        if reuse is not None:
            theta = _all_parameters(current_model)
            reuse["drift"].append({
                "parameter_change": float(torch.linalg.vector_norm(theta - theta_fit)
                                          / max(float(torch.linalg.vector_norm(theta_fit)), 1e-300)),
                "rows_corrected_share": corrected_rows / max(len(data), 1)})
        call = dict(kwargs) if damping is None else {**kwargs, "damping": damping}
        result = update(current_model, current_data, part, **call)
        grads += result.per_sample_gradients
        hvps += result.hvps
        guard = result.diagnostics.get("guard")
        if guard is None:
            current_model, current_data = result.model, part.apply(current_data)
            corrected_rows += _n_rows(part)
            continue
        chunk_guards.append(guard)
        damping = guard["next_damping"]
        if guard["status"] == GuardStatus.REJECTED.value:
            pending = part
            continue
        pending = None
        current_model, current_data = result.model, part.apply(current_data)
        corrected_rows += _n_rows(part)
    diagnostics = {"chunks": len(parts)}
    if reuse is not None:
        diagnostics["curvature"] = reuse
    method = f"{result.method}-iterative"
    if chunk_guards:
        current_model, summary = _final_check(model, current_model, resolved, chunk_guards, pending, kwargs,
                                              held_out_applies=_held_out_applies(kwargs.get("held_out"), changes))
        diagnostics.update(guard=summary, status=summary["status"])
    return UnlearnResult(
        current_model, method, timing.since(start),
        resolved.n_affected, per_sample_gradients=grads, hvps=hvps, diagnostics=diagnostics,
    )


class _Stale:
    """A fitted curvature used unchanged on later chunks: everything but its ``check`` (it was checked once, against
    the model and data it was fitted on; later chunks see changed parameters and data on purpose) and its exact
    ``factor`` (whose low-rank request updates assume the original data)."""

    _hidden = frozenset({"check", "factor"})

    def __init__(self, curvature) -> None:
        self._curvature = curvature

    def __getattr__(self, name):
        if name in _Stale._hidden or name == "_curvature":  # (also while copying, before __init__ ran)
            raise AttributeError(name)
        return getattr(self._curvature, name)

    def __deepcopy__(self, memo) -> "_Stale":  # (not the wrapped object's own, found through __getattr__)
        return _Stale(copy.deepcopy(self._curvature, memo))


def _all_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])


def _final_check(original: UnlearnableModel, final: UnlearnableModel, resolved: Resolved, chunk_guards: list[dict],
                 pending: Changes | None, kwargs: dict, *, held_out_applies: bool) -> tuple[UnlearnableModel, dict]:
    """Compare the objective estimate on the fully corrected data at the original and the final parameters."""
    trust = _trust_region(kwargs.get("guard", "auto"), convex=False) or TrustRegion()
    names = parameter_names(final, kwargs.get("params", Params.ALL))
    flat = FlatModel(final, names)
    theta_final = flat.theta()
    theta0 = FlatModel(original, names).theta().to(dtype=flat.dtype, device=flat.device)
    objective = SampledObjective(flat, resolved.corrected, resolved.Z_tilde, rows=trust.rows, seed=trust.seed,
                                 batch_size=kwargs.get("batch_size", 1024))
    f0 = objective(theta0)
    u0, u0_noise = objective.untouched, objective.untouched_noise
    f = objective(theta_final)
    rise = objective.untouched - u0
    held_out = kwargs.get("held_out")
    check = HeldOutErrors(flat, held_out, batch_size=kwargs.get("batch_size", 1024)) if held_out_applies else None
    held_out_rise = check(theta_final) - check(theta0) if check is not None else None
    statuses = [g["status"] for g in chunk_guards]
    summary = {"rule": chunk_guards[0]["rule"], "chunk_status": statuses, "chunks": chunk_guards,
               "objective": objective.describe(), "objective_original": f0, "objective_final": f,
               "untouched_original": u0, "untouched_rise": rise, "held_out_rise": held_out_rise, "rows_not_unlearned": 0}
    if pending is not None:
        summary["rows_not_unlearned"] = _n_rows(pending)
        logger.warning("iterative second-order update: the last chunk's step was rejected by its guard; %d affected rows "
                       "were not unlearned.", summary["rows_not_unlearned"])
    worse = rise > trust.untouched_slack * max(f0 - f, 0.0) + max(u0_noise, objective.untouched_noise)
    held_out_worse = held_out_rise is not None and not held_out_rise <= check.noise
    if held_out_worse:
        summary["status"] = GuardStatus.REJECTED.value
        summary["objective_final"] = f0
        logger.warning("iterative second-order update rejected by its guard: the chunked updates misclassify %d more "
                       "held-out rows; the original parameters are returned.", int(held_out_rise))
        return flat.to_model(theta0), summary
    if not f < f0 or worse:
        summary["status"] = GuardStatus.REJECTED.value
        summary["objective_final"] = f0
        logger.warning(
            "iterative second-order update rejected by its guard: %s (%.6g at the original parameters, %.6g after the "
            "chunks); the original parameters are returned.",
            "the chunked updates made the rows the request did not touch worse" if worse else
            "the chunked updates did not lower the estimate of the corrected objective",
            u0 if worse else f0, objective.untouched if worse else f)
        return flat.to_model(theta0), summary
    summary["status"] = (GuardStatus.BACKTRACKED.value if any(s != GuardStatus.ACCEPTED.value for s in statuses)
                         else GuardStatus.ACCEPTED.value)
    return final, summary


def _n_rows(changes: Changes) -> int:
    """Rows a change set names explicitly (the chunks of :func:`_split_resolved` name every row)."""
    rows = set(changes.removed_ids)
    for edit in changes.label_edits:
        rows.update(edit.rows)
    for edit in changes.feature_edits:
        if edit.rows is not None:
            rows.update(edit.rows)
    return len(rows)
