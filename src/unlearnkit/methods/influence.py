"""The closed-form influence updates of Warnecke et al. as registered methods."""

from __future__ import annotations

import time

from unlearnkit.errors import MethodError
from unlearnkit.influence.functional import FlatModel
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
        Hyperparameter("curvature", str, "auto", "hessian, or ggn (generalised Gauss-Newton: PSD, for deep models); auto = hessian "
                       "for convex models, ggn otherwise", "auto|hessian|ggn", "paper: Hessian; GGN is ours"),
        Hyperparameter("seed", int, 0, "seed of the Hessian row sample, the power iteration and LiSSA", "", "engineering"),
        Hyperparameter("max_params", int, 5000, "exact solver refuses models larger than this", ">= 1", "engineering"),
        _PARAMS,
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class SecondOrder(Method):
    def __init__(self, *, solver="auto", damping="auto", relative_damping=DEEP_RELATIVE_DAMPING, tol=1e-8, max_iter="auto",
                 scale=None, depth=1000, lissa_batch_size=None, hessian_rows="auto", curvature="auto", seed=0, max_params=5000,
                 params="all", chunks=1, batch_size=1024) -> None:
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
        for key, value, allowed in (("solver", self.solver, ("auto", "exact", "cg", "lissa")),
                                    ("curvature", self.curvature, ("auto", "hessian", "ggn"))):
            if value not in allowed:
                raise MethodError(f"second-order: {key} must be one of {allowed}, got {value!r}.")
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
        out = {"solver": solver, "curvature": curvature, "max_iter": int(max_iter), "params": Params(self.params).value,
               "n_params": n_params, "convex": convex, "hessian_rows": rows, "damping_hvps": 0}
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

    def make_solver(self, settings: dict):
        if settings["solver"] == "exact":
            # an output layer alone is convex but only semi-definite (softmax shift): the min-norm solution is exact
            singular = "pinv" if settings["params"] == Params.HEAD.value and settings["damping"] == 0 else "raise"
            return make_solver("exact", damping=settings["damping"], max_params=self.max_params, singular=singular)
        if settings["solver"] == "cg":
            return make_solver("cg", damping=settings["damping"], tol=self.tol, max_iter=settings["max_iter"])
        return make_solver("lissa", scale=self.scale, damping=settings["damping"], depth=self.depth,
                           batch_size=self.lissa_batch_size, seed=self.seed)

    def unlearn(self, model, data, changes, *, val=None, device=None):
        start = time.perf_counter()  # the damping estimate is part of the method's cost
        settings = self.resolved(model, data, changes)
        kwargs = dict(solver=self.make_solver(settings), hessian_rows=settings["hessian_rows"], curvature=settings["curvature"],
                      params=settings["params"],
                      seed=self.seed, batch_size=self.batch_size, device=device)
        if self.chunks > 1:
            result = iterative_update(second_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        else:
            result = second_order_update(model, data, changes, **kwargs)
        result.hvps += settings.pop("damping_hvps")
        result.diagnostics["settings"] = settings
        result.seconds = time.perf_counter() - start
        return result
