"""The closed-form influence updates of Warnecke et al. as registered methods."""

from __future__ import annotations

import abc

import time

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
        _PARAMS,
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class FirstOrder(Method):
    def __init__(self, *, tau="auto", params: str = "all", chunks: int = 1, batch_size: int = 1024) -> None:
        self.tau = tau
        self.params = params
        self.chunks = chunks
        self.batch_size = batch_size

    def unlearn(self, model, data, changes, *, val=None, device=None):
        kwargs = dict(tau=self.tau, batch_size=self.batch_size, device=device, params=self.params,
                      curvature="hessian" if model.convex else "ggn")
        if self.chunks > 1:
            return iterative_update(first_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        return first_order_update(model, data, changes, **kwargs)


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
                       "(status 'rejected': the original parameters); auto = on for non-convex problems, off for convex "
                       "ones (a convex model or params='head': the paper's undamped step)", "auto; or True/False",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_eta", float, 0.1, "guard: accept a step when actual / predicted decrease > guard_eta", "[0, 1)",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_tries", int, 6, "guard: dampings tried (x10 after each failure) before backtracking", ">= 1",
                       TRUST_REGION_SOURCE),
        Hyperparameter("guard_backtrack", int, 10, "guard: halvings of the best step tried last", ">= 0", TRUST_REGION_SOURCE),
        Hyperparameter("guard_untouched", float, 1.0, "guard: the objective's part outside Z~ (the rows the request did "
                       "not touch, and the L2 term) may rise by at most this multiple of the step's decrease of the "
                       "estimate (1: never more than the whole objective gains, which retraining satisfies in the "
                       "quadratic model; 0: must not rise)", ">= 0", TRUST_REGION_SOURCE),
        Hyperparameter("guard_val", bool, True, "guard: when val is given and the request only relabels rows "
                       "(corrections; not removals of rows or features), a step must also not misclassify more of those held-out rows than the "
                       "original model (a network can keep its training rows while unseen rows change class)",
                       "True/False", TRUST_REGION_SOURCE),
        Hyperparameter("guard_rows", (int, type(None)), 4096, "guard: rows of the corrected data (besides Z~) in the "
                       "objective estimate, drawn with seed and weighted; None = all rows (the exact objective)", ">= 1",
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
                 guard_untouched=1.0, guard_val=True, guard_rows=4096, params="all", chunks=1, batch_size=1024) -> None:
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
        corrected = resolved.corrected
        rows = self.hessian_rows
        if rows == "auto":
            rows = None if convex else min(len(corrected), max(DEEP_HESSIAN_ROWS, resolved.n_affected))
        elif rows is not None and (isinstance(rows, str) or rows < 1):
            raise MethodError(f"second-order: hessian_rows must be an integer >= 1, None or 'auto', got {rows!r}.")
        if not (isinstance(self.guard, bool) or self.guard == "auto"):
            raise MethodError(f"second-order: guard must be 'auto', True or False, got {self.guard!r}.")
        guarded = (not convex) if isinstance(self.guard, str) else self.guard
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
            sample, weight = hessian_sample(corrected, rows, self.seed)
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
               "guard": (not convex) if isinstance(self.guard, str) else self.guard}
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

    def trust_region(self) -> TrustRegion:
        """The guard's rule with this method's settings (its objective sample drawn with ``seed``)."""
        trust = TrustRegion(eta=self.guard_eta, max_tries=self.guard_tries, backtrack_steps=self.guard_backtrack,
                            untouched_slack=self.guard_untouched, rows=self.guard_rows, seed=self.seed)
        try:
            trust.check()
        except SolverError as exc:
            raise MethodError(f"second-order: {exc}") from None
        return trust

    def unlearn(self, model, data, changes, *, val=None, device=None):
        start = time.perf_counter()  # the damping estimate is part of the method's cost
        if self.refine is not None:
            from unlearnkit.influence.refine import check_refinable

            check_refinable(model)
            if self.chunks > 1:
                raise MethodError("second-order: refine= reaches the optimum of the whole corrected data; use chunks=1 with it.")
        settings = self.resolved(model, data, changes)
        if self.refine is not None and self.solver == "auto":
            settings["solver"] = "exact"  # refine works on the Cholesky factor, whatever the size
        cached = settings["solver"] == "cached"
        kwargs = dict(solver=None if cached else self.make_solver(settings), hessian_rows=settings["hessian_rows"],
                      curvature=self.curvature if cached else settings["curvature"],
                      params=settings["params"], guard=self.trust_region() if settings["guard"] else False,
                      seed=self.seed, batch_size=self.batch_size, device=device)
        if cached and settings["damping"]:
            kwargs["damping"] = settings["damping"]
        if self.refine is not None:
            kwargs.update(refine=self.refine, refine_max_steps=self.refine_max_steps)
        if settings["guard"] and self.guard_val and val is not None:
            check_val(data, val, model)
            kwargs["held_out"] = val
        settings["guard_held_out_rows"] = len(val) if "held_out" in kwargs else 0
        if self.chunks > 1:
            result = iterative_update(second_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        else:
            result = second_order_update(model, data, changes, **kwargs)
        result.hvps += settings.pop("damping_hvps")
        result.diagnostics["settings"] = settings
        result.seconds = time.perf_counter() - start
        return result
