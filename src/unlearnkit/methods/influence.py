"""The closed-form influence updates of Warnecke et al. as registered methods."""

from __future__ import annotations

import abc
import logging

import torch

from unlearnkit import timing
from unlearnkit.errors import MethodError, SolverError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.refine import DEFAULT_MAX_STEPS as REFINE_MAX_STEPS
from unlearnkit.influence.guard import SOURCE as TRUST_REGION_SOURCE
from unlearnkit.methods.task import check_val
from unlearnkit.influence.guard import TrustRegion, relative_damping
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.solvers import make_solver
from unlearnkit.influence.updates import (
    Params,
    first_order_update,
    hessian_sample,
    iterative_update,
    parameter_names,
    second_order_update,
)
from unlearnkit.methods.base import Hyperparameter, Method, register

log = logging.getLogger(__name__)

WARNECKE = "Warnecke, Pirch, Wressnegger, Rieck. Machine Unlearning of Features and Labels. NDSS 2023."

_BATCH = Hyperparameter("batch_size", int, 1024, "rows per block for gradients and HVPs (bounds memory)", ">= 1", "engineering")
_PARAMS = Hyperparameter("params", str, "all", "parameters the update changes: all, or head (the classifier layer only; the rest "
                         "of the network is held fixed)", "all|head", "paper code: CIFAR updates only the last layers")
_CHUNKS = Hyperparameter("chunks", int, 1, "apply the change in this many chunks, recomputing G and H in between", ">= 1", "paper (iterative variant)")


@register(
    "first-order",
    summary="theta - tau * (g(Z~) - g(Z)): one gradient step on the difference loss",
    hyperparameters=(
        Hyperparameter("tau", (float, str), "auto", "unlearning rate; 'auto' = G.G / G.H~G (exact line minimiser along -G; "
                       "H~ is the generalised Gauss-Newton matrix for non-convex models, whose curvature is positive)",
                       "> 0 or 'auto'", "paper: tuned by hand; 'auto' is ours"),
        Hyperparameter("guard", (bool, str), "auto", "convex problems (a convex model or params='head'): judge the step "
                       "on the exact corrected objective and shorten it (halvings) until the objective falls by a "
                       "share of the predicted decrease; nothing passes: the original parameters, status "
                       "'rejected'. A step that passes as it is comes back unchanged. auto = on for convex "
                       "problems, off for non-convex ones (use second-order, whose guard covers them); False = the "
                       "raw step", "auto; or True/False",
                       TRUST_REGION_SOURCE),
        _PARAMS,
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class FirstOrder(Method):
    def __init__(self, *, tau="auto", guard="auto", params: str = "all", chunks: int = 1, batch_size: int = 1024) -> None:
        self.tau = tau
        self.guard = guard
        self.params = params
        self.chunks = chunks
        self.batch_size = batch_size

    def unlearn(self, model, data, changes, *, val=None, device=None):
        with changes._remember(data):  # the update and its guard share one resolution (Z, Z~, D~)
            return self._unlearn(model, data, changes, val=val, device=device)

    def _unlearn(self, model, data, changes, *, val=None, device=None):
        if not (isinstance(self.guard, bool) or self.guard == "auto"):
            raise MethodError(f"first-order: guard must be 'auto', True or False, got {self.guard!r}.")
        convex = model.convex or parameter_names(model, self.params) is not None
        if self.guard is True and not convex:
            raise MethodError("first-order: guard=True applies to convex problems (a convex model or params='head'); "
                              "for a network use second-order, whose guard covers it.")
        kwargs = dict(tau=self.tau, batch_size=self.batch_size, device=device, params=self.params,
                      curvature="hessian" if model.convex else "ggn")
        if self.chunks > 1:
            fast = iterative_update(first_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        else:
            fast = first_order_update(model, data, changes, **kwargs)
        if self.guard is False or not convex:
            return fast
        return self._guarded(model, data, changes, fast)

    def _guarded(self, model, data, changes, fast):
        """Backtracking along the step on the exact corrected objective (rules 2 and 6 of
        :mod:`unlearnkit.influence.guard`; no damping: a first-order step has none).

        Only the objective judges the step, not the gradient residual (rule 3b of the second-order guard): a gradient
        step minimises the objective along ``-G``, it does not aim to lower the gradient's norm, and halving it
        whenever the residual rose left it farther from retraining (measured on standardised breast cancer: 5 of 36
        requests shortened that way, each one farther from the retrained parameters than the raw step)."""
        from unlearnkit.influence.guard import GuardStatus, SampledObjective, float64_view
        from unlearnkit.influence.updates import gradient_difference

        names = parameter_names(model, self.params)
        flat = FlatModel(model, names)
        theta0 = flat.theta()
        resolved = changes.resolve(data)
        step = theta0 - FlatModel(fast.model, parameter_names(fast.model, self.params)).theta().to(theta0)
        G = gradient_difference(flat, resolved, batch_size=self.batch_size)
        judge = float64_view(flat) if model.convex else flat  # as the second-order guard (see its _convex_guard)
        objective = SampledObjective(judge, resolved.corrected, resolved.Z_tilde, rows=None, batch_size=self.batch_size)
        matvec = None  # tau = G.G / G.HG (one chunk): the quadratic model's s.Hs is G.s, which the rule then uses
        if self.tau != "auto" or self.chunks > 1:
            H = HessianOperator(flat, resolved.corrected, batch_size=self.batch_size, curvature="hessian")
            matvec = H.matvec
        rule = TrustRegion(max_tries=1, untouched_slack=None, below_floor="accept")
        outcome = rule.step(theta0, G, lambda v, damping: step, objective, initial_damping=0.0, matvec=matvec,
                            initial_damping_rule="none (a first-order step: shortened, not damped)")
        diag = {**outcome.diagnostics, "objective": objective.describe(), "objective_evaluations": objective.evaluations,
                "residual": "not judged (a gradient step does not aim to lower it)"}
        fast.per_sample_gradients += len(resolved.Z) + len(resolved.Z_tilde)
        fast.hvps += 1 if matvec is not None else 0
        return _apply_outcome(fast, flat, outcome, diag, "first-order", unchanged=outcome.status is GuardStatus.ACCEPTED)


def _apply_outcome(fast, flat: FlatModel, outcome, diag: dict, name: str, *, unchanged: bool):
    """``fast`` (the update computed without the guard) with the guard's verdict recorded: returned as it is when
    ``unchanged`` (its first try passed), else carrying the guard's parameters; a rejection is logged as a warning."""
    from unlearnkit.influence.guard import GuardStatus, refusals

    if unchanged:
        fast.diagnostics.update(guard=diag, status=outcome.status.value)
        return fast
    fast.model = flat.to_model(outcome.theta)
    fast.diagnostics.update(update_norm=float(torch.linalg.vector_norm(outcome.step)), guard=diag,
                            status=outcome.status.value)
    if outcome.status is GuardStatus.REJECTED:
        log.warning("%s update rejected by its guard (%s); the original parameters are returned.", name,
                    refusals(diag))
    return fast


DEEP_RELATIVE_DAMPING = 1e-3
"""For non-convex models, ``damping="auto"`` adds ``1e-3 x`` the largest eigenvalue of the curvature (measured
on the digits CNN: smaller values let the step blow up, larger ones make it vanish; see ``docs/methods.md``)."""

EXACT_AUTO_PARAMS = 1000
"""``solver="auto"`` factors the dense Hessian (Cholesky) up to this many parameters and uses CG beyond: building and
factoring a ``p x p`` Hessian costs ``O(n p^2 + p^3)``, while CG's products cost ``O(nnz)`` each and converge in tens of
iterations on an L2-regularised objective (measured on the fortunes bag of words, p = 4,200: Cholesky 4.5 s, CG 0.3 s)."""

DEEP_HESSIAN_ROWS = 1024
"""For non-convex models, ``hessian_rows="auto"`` estimates the curvature on ``max(1024, |Z|)`` rows of the
corrected data (all rows if there are fewer): a Gauss-Newton estimate from a thousand rows is accurate to a few per
cent along the directions the damped step uses, and each product then costs a fixed amount, not a pass over the
data (the reference code's mini-batch Hessian, B = 500-1024)."""


GUARD_ROWS = 4096
"""``guard_rows="auto"`` on non-convex problems: the rows (besides ``Z~``) of the guard's objective estimate."""

CACHED_GUARD_ROWS = 1024
"""``guard_rows="auto"`` for a convex model with an exact cached curvature. The sample there uses the rows'
linearisation at the original parameters as a control variate, so it estimates only the curvature part of the
untouched rows' change (the linear part is exact): measured on a planted logistic model (``n = 20,000`` and ``1e5``,
``d = 10`` and ``100``, 10 random relabels) the exact steps' ratio ``rho`` was 0.83-1.03 with 512 rows and 1.03 with
4,096. Fewer rows keep the guard's cost near the request's own: at ``n = 1e5, d = 100, k = 10`` on one thread the
unguarded update took 1.6 ms of CPU time (median of 60 requests, ``check=False``), guarded with 1,024 / 4,096 rows
6.6 / 12.2 ms (an earlier run: 512 rows 0.5 ms less than 1,024)."""

class CurvatureObject(abc.ABC):
    """A curvature fitted once and reused (:func:`unlearnkit.curvature.fit`, or a
    :class:`~unlearnkit.influence.curvature.CachedCurvature`): anything with ``solve(v, damping=...)``."""

    @classmethod
    def __subclasshook__(cls, other):
        return callable(getattr(other, "solve", None)) or NotImplemented


@register(
    "second-order",
    summary="theta - H~^-1 (g(Z~) - g(Z)), H~ the Hessian of the objective on the corrected data",
    hyperparameters=(
        Hyperparameter("solver", str, "auto", "inverse-HVP solver: exact (Cholesky), cg or lissa; auto = exact for convex problems "
                       f"(a convex model, or params='head') with at most {EXACT_AUTO_PARAMS} parameters, cg otherwise", "auto|exact|cg|lissa", "ours"),
        Hyperparameter("damping", (float, str), "auto", "added to the curvature's diagonal (LiSSA: in units of scale); auto = 0 "
                       "for convex models, relative_damping x the largest curvature eigenvalue (power iteration) otherwise",
                       ">= 0 or 'auto'", "ours: a rule from the data, not tuned per run"),
        Hyperparameter("relative_damping", float, DEEP_RELATIVE_DAMPING, "damping='auto' on non-convex models: this fraction of "
                       "the largest eigenvalue", "> 0", "ours: measured on the digits CNN"),
        Hyperparameter("tol", float, 1e-8, "CG relative residual tolerance", "> 0", "engineering"),
        Hyperparameter("max_iter", (int, str), "auto", "CG iteration cap; auto = 200 for convex models, 50 otherwise", ">= 1 or 'auto'",
                       "engineering"),
        Hyperparameter("scale", (float, type(None)), None, "LiSSA scale; None = 1.1 x largest Hessian eigenvalue", "> 0", "ours"),
        Hyperparameter("depth", int, 1000, "LiSSA recursion depth", ">= 1", "paper code: up to 100 epochs"),
        Hyperparameter("lissa_batch_size", (int, type(None)), None, "LiSSA Hessian mini-batch; None = full data", ">= 1", "paper code: 500-1024"),
        Hyperparameter("hessian_rows", (int, str, type(None)), "auto", "estimate H~ (and the damping's eigenvalue) from this many "
                       "random rows of the corrected data, weighted n/m; None = all; auto = all for convex models, "
                       f"max({DEEP_HESSIAN_ROWS}, |Z|) otherwise", ">= 1, None or 'auto'", "paper code: mini-batch Hessian; the rule is ours"),
        Hyperparameter("curvature", (str, CurvatureObject), "auto", "hessian, or ggn (generalised Gauss-Newton: PSD, for deep "
                       "models); auto = hessian for convex models, ggn otherwise; or a curvature fitted once with "
                       "unlearnkit.curvature.fit(...) (exact, kfac, ekfac), reused for every request: no solver, no "
                       "damping estimate, no pass over the data for the curvature", "auto|hessian|ggn or a fitted curvature",
                       "paper: Hessian; GGN and the cached curvature are ours"),
        Hyperparameter("seed", int, 0, "seed of the Hessian row sample, the power iteration and LiSSA", "", "engineering"),
        Hyperparameter("max_params", int, 5000, "exact solver refuses models larger than this", ">= 1", "engineering"),
        Hyperparameter("refine", (float, type(None)), None, "convex models: after the one-step update, chord / Newton steps on "
                       "the Cholesky factor until ||grad L(theta; D~)||_2 / n~ <= refine (the retrained optimum to that "
                       "tolerance); None = the one-step update", "> 0 or None",
                       "ours: simplified Newton method (Kelley, Iterative Methods for Linear and Nonlinear Equations, 1995)"),
        Hyperparameter("refine_max_steps", int, REFINE_MAX_STEPS, "refine: most steps (one pass over the data each); the result's status "
                       "says when refine was not reached", ">= 0", "engineering"),
        Hyperparameter("guard", (bool, str), "auto", "choose the damping by a Levenberg-Marquardt / trust-region rule on an "
                       "estimate of the corrected objective (Z~ plus a fixed sample of the other rows), starting from "
                       "'damping', and never return a step that makes that estimate worse than the original model's "
                       "(status 'rejected': the original parameters); auto = on for every model, but off with refine= "
                       "(refine's Newton steps are safeguarded themselves and end at the corrected optimum). Convex "
                       "problems (a convex model or params='head'): the update is computed as without the guard and "
                       "returned unchanged when its step passes the first try (ratio test, and the gradient residual "
                       "on the corrected data must not rise, in place of guard_untouched); only otherwise are damped "
                       "steps computed (with an exact cached curvature: the corrected Hessian, one pass). False = "
                       "the raw one-step update", "auto; or True/False",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_eta", float, 0.1, "guard: accept a step when actual / predicted decrease > guard_eta", "[0, 1)",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_tries", int, 6, "guard: dampings tried (x10 after each failure) before backtracking", ">= 1",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_backtrack", int, 10, "guard: halvings of the best step tried last", ">= 0", TRUST_REGION_SOURCE),
        Hyperparameter("guard_untouched", float, 1.0, "guard, non-convex problems: the objective's part outside Z~ (the rows the request did "
                       "not touch, and the L2 term) may rise by at most this multiple of the step's decrease of the "
                       "estimate (1: never more than the whole objective gains, which retraining satisfies in the "
                       "quadratic model; 0: must not rise)", ">= 0", TRUST_REGION_SOURCE),
        Hyperparameter("guard_val", bool, True, "guard, non-convex problems: when val is given and the request only relabels rows "
                       "(corrections; not removals of rows or features), a step must also not misclassify more of those held-out rows than the "
                       "original model (a network can keep its training rows while unseen rows change class)",
                       "True/False", TRUST_REGION_SOURCE),
        Hyperparameter("guard_rows", (int, str, type(None)), "auto", "guard: rows of the corrected data (besides Z~) in the "
                       "objective estimate, drawn with seed and weighted; None = all rows (the exact objective); auto = "
                       f"{GUARD_ROWS} on non-convex problems; on convex ones all rows (the Hessian pass reads them "
                       f"all anyway), or {CACHED_GUARD_ROWS} with an exact cached curvature (no pass over the data; the "
                       "sample then uses the rows' linearisation as a control variate)", ">= 1, None or 'auto'",
                       TRUST_REGION_SOURCE),
        _PARAMS,
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class SecondOrder(Method):
    def __init__(self, *, solver="auto", damping="auto", relative_damping=DEEP_RELATIVE_DAMPING, tol=1e-8, max_iter="auto",
                 scale=None, depth=1000, lissa_batch_size=None, hessian_rows="auto", curvature="auto", seed=0, max_params=5000,
                 refine=None, refine_max_steps=REFINE_MAX_STEPS, guard="auto", guard_eta=0.1, guard_tries=6, guard_backtrack=10,
                 guard_untouched=1.0, guard_val=True, guard_rows="auto", params="all", chunks=1, batch_size=1024) -> None:
        self.guard = guard
        self.guard_eta = guard_eta
        self.guard_tries = guard_tries
        self.guard_backtrack = guard_backtrack
        self.guard_rows = guard_rows
        self.guard_untouched = guard_untouched
        self.guard_val = guard_val
        self.refine = refine
        self.refine_max_steps = refine_max_steps
        self.params = params
        self.hessian_rows = hessian_rows
        self.curvature = curvature
        self.seed = seed
        self.solver = solver
        self.damping = damping
        self.relative_damping = relative_damping
        self.tol = tol
        self.max_iter = max_iter
        self.scale = scale
        self.depth = depth
        self.lissa_batch_size = lissa_batch_size
        self.max_params = max_params
        self.chunks = chunks
        self.batch_size = batch_size

    def resolved(self, model, data, changes) -> dict:
        """The concrete solver, curvature, damping, Hessian rows and iteration cap the "auto" settings give for ``model``."""
        cached = not isinstance(self.curvature, str)
        for key, value, allowed in (("solver", self.solver, ("auto", "exact", "cg", "lissa")),
                                    ("curvature", "auto" if cached else self.curvature, ("auto", "hessian", "ggn"))):
            if value not in allowed:
                raise MethodError(f"second-order: {key} must be one of {allowed}, got {value!r}.")
        if cached:
            return self._resolved_cached(model)
        names = parameter_names(model, self.params)
        flat = FlatModel(model, names)
        n_params = flat.n_params
        # the objective restricted to the output layer is convex (cross-entropy of an affine map): treat it as a convex model
        convex = model.convex or names is not None
        solver = self.solver if self.solver != "auto" else ("exact" if convex and n_params <= min(EXACT_AUTO_PARAMS, self.max_params) else "cg")
        curvature = self.curvature if self.curvature != "auto" else ("hessian" if convex else "ggn")
        max_iter = self.max_iter if self.max_iter != "auto" else (200 if convex else 50)
        if isinstance(max_iter, str) or max_iter < 1:
            raise MethodError(f"second-order: max_iter must be an integer >= 1 or 'auto', got {self.max_iter!r}.")
        resolved = changes.resolve(data)
        n_corrected = len(data) - len(resolved.Z) + len(resolved.Z_tilde)  # len(D~), without building it
        rows = self.hessian_rows
        if rows == "auto":
            rows = None if convex else min(n_corrected, max(DEEP_HESSIAN_ROWS, resolved.n_affected))
        elif rows is not None and (isinstance(rows, str) or rows < 1):
            raise MethodError(f"second-order: hessian_rows must be an integer >= 1, None or 'auto', got {rows!r}.")
        if not (isinstance(self.guard, bool) or self.guard == "auto"):
            raise MethodError(f"second-order: guard must be 'auto', True or False, got {self.guard!r}.")
        guarded = True if isinstance(self.guard, str) else self.guard
        out = {"solver": solver, "curvature": curvature, "max_iter": int(max_iter), "params": Params(self.params).value,
               "n_params": n_params, "convex": convex, "hessian_rows": rows, "damping_hvps": 0, "guard": guarded}
        if self.damping != "auto":
            if isinstance(self.damping, str) or not self.damping >= 0:
                raise MethodError(f"second-order: damping must be a number >= 0 or 'auto', got {self.damping!r}.")
            out["damping"] = float(self.damping)
        elif convex:
            out["damping"] = 0.0
        else:
            if not self.relative_damping > 0:
                raise MethodError(f"second-order: relative_damping must be > 0, got {self.relative_damping!r}.")
            sample, weight = hessian_sample(resolved.corrected, rows, self.seed)
            H = HessianOperator(flat, sample, batch_size=self.batch_size, weight=weight, curvature=curvature)
            lam = H.largest_eigenvalue(iterations=20, seed=self.seed)
            out["damping"] = self.relative_damping * lam
            out["largest_eigenvalue"] = lam
            out["damping_hvps"] = H.n_hvp
        return out

    def _resolved_cached(self, model) -> dict:
        """Settings with a fitted curvature: it replaces the solver, the row sample and the damping estimate."""
        if self.solver != "auto" or self.hessian_rows != "auto":
            raise MethodError("second-order: a fitted curvature replaces solver and hessian_rows; leave them at 'auto'.")
        names = parameter_names(model, self.params)
        convex = model.convex or names is not None
        if not (isinstance(self.guard, bool) or self.guard == "auto"):
            raise MethodError(f"second-order: guard must be 'auto', True or False, got {self.guard!r}.")
        if self.damping != "auto" and (isinstance(self.damping, str) or not self.damping >= 0):
            raise MethodError(f"second-order: damping must be a number >= 0 or 'auto', got {self.damping!r}.")
        kind = getattr(self.curvature, "kind", None)
        flat = FlatModel(model, names)
        out = {"solver": "cached", "curvature": getattr(kind, "value", kind) or type(self.curvature).__name__,
               "max_iter": 0, "params": Params(self.params).value, "n_params": flat.n_params,
               "convex": convex, "hessian_rows": None, "damping_hvps": 0,
               "guard": True if isinstance(self.guard, str) else self.guard}
        matvec = getattr(self.curvature, "matvec", None)
        if self.damping != "auto":
            out["damping"] = float(self.damping)
        elif convex or not callable(matvec):
            out["damping"] = 0.0
        else:  # the same rule as without a fitted curvature, on its own products (cheap: no pass over the data)
            if not self.relative_damping > 0:
                raise MethodError(f"second-order: relative_damping must be > 0, got {self.relative_damping!r}.")
            counted = {"n": 0}

            def products(v):
                counted["n"] += 1
                return matvec(v).to(dtype=v.dtype, device=v.device)

            out["damping"] = relative_damping(products, flat.n_params, relative=self.relative_damping, seed=self.seed,
                                              dtype=flat.dtype, device=flat.device)
            out["largest_eigenvalue"] = out["damping"] / self.relative_damping
            out["damping_hvps"] = counted["n"]
        return out

    def make_solver(self, settings: dict):
        if settings["solver"] == "exact":
            # an output layer alone is convex but only semi-definite (softmax shift): the min-norm solution is exact
            singular = "pinv" if settings["params"] == Params.HEAD.value and settings["damping"] == 0 else "raise"
            return make_solver("exact", damping=settings["damping"], max_params=self.max_params, singular=singular)
        if settings["solver"] == "cg":
            return make_solver("cg", damping=settings["damping"], tol=self.tol, max_iter=settings["max_iter"])
        return make_solver("lissa", scale=self.scale, damping=settings["damping"], depth=self.depth,
                           batch_size=self.lissa_batch_size, seed=self.seed)

    def trust_region(self, rows=GUARD_ROWS) -> TrustRegion:
        """The guard's rule with this method's settings (its objective sample drawn with ``seed``; ``rows``: what
        ``guard_rows="auto"`` resolves to)."""
        if self.guard_rows != "auto" and (isinstance(self.guard_rows, (str, bool)) or
                                          (self.guard_rows is not None and self.guard_rows < 1)):
            raise MethodError(f"second-order: guard_rows must be an integer >= 1, None or 'auto', got {self.guard_rows!r}.")
        trust = TrustRegion(eta=self.guard_eta, max_tries=self.guard_tries, backtrack_steps=self.guard_backtrack,
                            untouched_slack=self.guard_untouched,
                            rows=rows if self.guard_rows == "auto" else self.guard_rows, seed=self.seed)
        try:
            trust.check()
        except SolverError as exc:
            raise MethodError(f"second-order: {exc}") from None
        return trust

    def unlearn(self, model, data, changes, *, val=None, device=None):
        with changes._remember(data):  # the settings, the update and its guard share one resolution (Z, Z~, D~)
            return self._unlearn(model, data, changes, val=val, device=device)

    def _unlearn(self, model, data, changes, *, val=None, device=None):
        start = timing.start()  # the damping estimate is part of the method's cost
        if self.refine is not None:
            from unlearnkit.influence.refine import check_refinable

            check_refinable(model)
            if self.chunks > 1:
                raise MethodError("second-order: refine= reaches the optimum of the whole corrected data; use chunks=1 with it.")
        settings = self.resolved(model, data, changes)
        if self.refine is not None and self.solver == "auto":
            settings["solver"] = "exact"  # refine works on the Cholesky factor, whatever the size
        if self.refine is not None and self.guard == "auto":
            # refine's own iterations are safeguarded (an overshooting first step restarts from the original
            # parameters with a backtracking Newton step) and end at the corrected optimum: no guard on top
            settings["guard"] = False
            settings["guard_rule"] = "off: refine= continues to the corrected optimum with its own safeguarded Newton steps"
        cached = settings["solver"] == "cached"
        factor_path = cached and settings["convex"] and self._exact_factor() and not settings["damping"]
        rows = (CACHED_GUARD_ROWS if factor_path else None) if settings["convex"] else GUARD_ROWS
        trust = self.trust_region(rows) if settings["guard"] else False
        if trust:
            settings["guard_rows"] = trust.rows
        kwargs = dict(solver=None if cached else self.make_solver(settings), hessian_rows=settings["hessian_rows"],
                      curvature=self.curvature if cached else settings["curvature"],
                      params=settings["params"], guard=trust,
                      seed=self.seed, batch_size=self.batch_size, device=device)
        if cached and settings["damping"]:
            kwargs["damping"] = settings["damping"]
        if self.refine is not None:
            kwargs.update(refine=self.refine, refine_max_steps=self.refine_max_steps)
        # the held-out test is for networks (rows they never saw can change class while their training rows keep
        # their margins); a convex model's corrected objective is what retraining minimises, and its exact step
        # should not be refused because retraining itself would misclassify another held-out row
        if settings["guard"] and self.guard_val and val is not None and not settings["convex"]:
            check_val(data, val, model)
            kwargs["held_out"] = val
        settings["guard_held_out_rows"] = len(val) if "held_out" in kwargs else 0
        convex_guard = bool(settings["guard"]) and settings["convex"] and self.refine is None
        if convex_guard:
            settings["guard_rule"] = ("convex: the one-step update, judged by the guard (ratio test and gradient "
                                      "residual); returned unchanged when its first try passes")
        update = (lambda **kw: iterative_update(second_order_update, model, data, changes, chunks=self.chunks, **kw)) \
            if self.chunks > 1 else (lambda **kw: second_order_update(model, data, changes, **kw))
        if convex_guard:
            result = self._convex_guard(model, data, changes, update(**{**kwargs, "guard": False}), trust, settings,
                                        factor_path)
        else:
            result = update(**kwargs)
        result.hvps += settings.pop("damping_hvps")
        result.diagnostics["settings"] = settings
        result.seconds = timing.since(start)
        return result

    def _exact_factor(self) -> bool:
        """Whether ``curvature=`` carries an exact Cholesky factor (a CachedCurvature, or a fitted ``exact`` curvature)."""
        from unlearnkit.influence.curvature import CachedCurvature

        return isinstance(self.curvature, CachedCurvature) or isinstance(getattr(self.curvature, "factor", None),
                                                                          CachedCurvature)

    def _convex_guard(self, model, data, changes, fast, trust: TrustRegion, settings: dict, factor_path: bool):
        """The guard on a convex problem, around the update ``fast`` computed without it (its parameters unchanged
        when the guard's first try, the undamped step, passes).

        The step ``s = theta* - theta_fast`` is judged by the trust-region rule of
        :mod:`unlearnkit.influence.guard` with the gradient residual (rule 3b) in place of the untouched-rows test.
        Only when that first try fails are damped steps computed: on the same curvature (a curvature object's own
        damped solve; the corrected Hessian, computed then, for an exact cached factor); a chunked update is
        shortened along its total step (backtracking only). With an exact cached factor the first try costs
        ``O(|Z~| + guard_rows)`` rows (sampled objective and residual, with the control variate of
        :meth:`~unlearnkit.influence.guard.SampledObjective.with_control_variate`); otherwise the objective and the
        residual are exact (one pass over the data each evaluation, as the Hessian pass of the update).
        """
        import copy

        from unlearnkit.influence.gradients import summed_gradient
        from unlearnkit.influence.guard import GradientResidual, GuardStatus, SampledObjective, float64_view
        from unlearnkit.influence.updates import _damped_problem, gradient_difference

        names = parameter_names(model, settings["params"])
        flat = FlatModel(model, names)
        theta0 = flat.theta()
        resolved = changes.resolve(data)
        step = theta0 - FlatModel(fast.model, parameter_names(fast.model, settings["params"])).theta().to(theta0)
        chunked = self.chunks > 1
        # G and -g(Z) at theta0 as the one-step update computed them (on the same rows, parameters and batches)
        kept = None if chunked else fast._gradients
        if kept is not None and not all(t.dtype == theta0.dtype and t.device == theta0.device and t.shape == theta0.shape
                                        for t in kept):
            kept = None  # (computed on another device: the update's `device=`)
        G = kept[0] if kept is not None else gradient_difference(flat, resolved, batch_size=self.batch_size)
        # a convex model's objective and residual in float64 (one copy of a linear model): float32's rounding floor
        # exceeds the decrease of ordinary requests; with params="head" the network's body would have to run in
        # float64 too, so there the model's dtype and its rounding floor apply
        judge = float64_view(flat) if model.convex else flat
        objective = SampledObjective.for_request(judge, data, resolved, rows=trust.rows, seed=trust.seed,
                                                 batch_size=self.batch_size)
        grads = 0 if kept is not None else len(resolved.Z) + len(resolved.Z_tilde)  # (per-sample gradients computed here)
        if not objective.exact:  # the original model at its optimum (what the update assumes): the rest's gradient is -g(Z)
            if kept is not None and judge is flat:  # the judge in the model's own dtype: the update's -g(Z) is its own
                minus_gz = kept[1]
            else:
                minus_gz = -summed_gradient(judge, resolved.Z, theta0.to(judge.dtype), batch_size=self.batch_size)
                grads += len(resolved.Z)
            objective.with_control_variate(theta0, minus_gz)
            grads += len(objective.sample)
        # rule 3b needs the exact residual: estimated from the guard's sample (weight n/m) its noise exceeds what it
        # must detect (measured at n = 1e5, k = 10: exact Newton steps, rho = 0.99, refused for a sampled residual
        # of 51 against 31 at theta0), so on a sampled objective only the objective's rule judges the step
        residual = GradientResidual(judge, data, resolved, theta0, batch_size=self.batch_size) if objective.exact else None
        initial = float(settings["damping"])
        cached = settings["solver"] == "cached"
        # a curvature object's own damped solves (K-FAC, EK-FAC, ...): no Hessian to build
        own_solves = cached and not factor_path and not chunked
        built = {}

        def problem():
            """The damped solves and curvature products, built on first use (only when the first try failed)."""
            if "p" not in built:
                if own_solves:
                    built["p"] = _damped_problem(self.curvature, None, None, None)
                else:
                    from unlearnkit.influence.hessian import HessianOperator
                    from unlearnkit.influence.updates import hessian_sample

                    rows, weight = hessian_sample(resolved.corrected, settings["hessian_rows"], self.seed)
                    H = HessianOperator(flat, rows, batch_size=self.batch_size, weight=weight,
                                        curvature="hessian" if cached else settings["curvature"])
                    solver = make_solver("exact", max_params=self.max_params) if cached else self.make_solver(settings)
                    built["p"] = _damped_problem(None, H, solver, initial)
            return built["p"]

        def solve(v, damping):
            return step if damping == initial else problem()[0](v, damping)

        exact_solve = not chunked and (factor_path or (not cached and settings["solver"] == "exact"))

        def matvec(v):
            return problem()[1](v)

        rule = copy.copy(trust)
        rule.untouched_slack = None  # rule 3b: the residual replaces the untouched-rows test
        rule.below_floor = "accept"  # an undamped step whose effect the precision cannot measure is not refused
        if chunked:
            rule.max_tries = 1  # the chunks' total step: shortened along it, not re-solved
        has_matvec = not own_solves or callable(getattr(self.curvature, "matvec", None))
        outcome = rule.step(theta0, G, solve, objective, initial_damping=initial,
                            matvec=None if exact_solve or not has_matvec else matvec,
                            initial_damping_rule="the update's own damping (its step, computed without the guard)",
                            residual=residual)
        diag = {**outcome.diagnostics, "objective": objective.describe(), "objective_evaluations": objective.evaluations,
                "residual": residual.describe() if residual is not None else "not judged (sampled objective)", "untouched_slack": None,
                "convex": "rule 3b: the gradient residual on the corrected data in place of the untouched-rows test"}
        fast.per_sample_gradients += grads
        if "p" in built:
            fast.hvps += built["p"][4]["hvps"]
        unchanged = outcome.status is GuardStatus.ACCEPTED and outcome.damping == initial
        fast = _apply_outcome(fast, flat, outcome, diag, "second-order", unchanged=unchanged)
        if not unchanged and outcome.status is not GuardStatus.REJECTED:
            log.info("second-order update %s by its guard at damping %s (the undamped step: %s).", outcome.status.value,
                     outcome.damping, diag["tries"][0].get("refused", f"rho {diag['tries'][0].get('rho')}"))
        return fast
