"""The closed-form influence updates of Warnecke et al. as registered methods."""

from __future__ import annotations

from unlearnkit.influence.solvers import make_solver
from unlearnkit.influence.updates import first_order_update, iterative_update, second_order_update
from unlearnkit.methods.base import Hyperparameter, register

WARNECKE = "Warnecke, Pirch, Wressnegger, Rieck. Machine Unlearning of Features and Labels. NDSS 2023."

_BATCH = Hyperparameter("batch_size", int, 1024, "rows per block for gradients and HVPs (bounds memory)", ">= 1", "engineering")
_CHUNKS = Hyperparameter("chunks", int, 1, "apply the change in this many chunks, recomputing G and H in between", ">= 1", "paper (iterative variant)")


@register(
    "first-order",
    summary="theta - tau * (g(Z~) - g(Z)): one gradient step on the difference loss",
    hyperparameters=(
        Hyperparameter("tau", (float, str), "auto", "unlearning rate; 'auto' = G.G / G.H~G (exact line minimiser along -G)",
                       "> 0 or 'auto'", "paper: tuned by hand; 'auto' is ours"),
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class FirstOrder:
    def __init__(self, *, tau="auto", chunks: int = 1, batch_size: int = 1024) -> None:
        self.tau = tau
        self.chunks = chunks
        self.batch_size = batch_size

    def unlearn(self, model, data, changes, *, device=None):
        kwargs = dict(tau=self.tau, batch_size=self.batch_size, device=device)
        if self.chunks > 1:
            return iterative_update(first_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        return first_order_update(model, data, changes, **kwargs)


@register(
    "second-order",
    summary="theta - H~^-1 (g(Z~) - g(Z)), H~ the Hessian of the objective on the corrected data",
    hyperparameters=(
        Hyperparameter("solver", str, "exact", "inverse-HVP solver: exact (Cholesky), cg or lissa", "exact|cg|lissa", "ours"),
        Hyperparameter("damping", float, 0.0, "added to the Hessian diagonal (LiSSA: in units of scale)", ">= 0",
                       "0 for convex models; set > 0 for deep ones"),
        Hyperparameter("tol", float, 1e-8, "CG relative residual tolerance", "> 0", "engineering"),
        Hyperparameter("max_iter", int, 200, "CG iteration cap", ">= 1", "engineering"),
        Hyperparameter("scale", (float, type(None)), None, "LiSSA scale; None = 1.1 x largest Hessian eigenvalue", "> 0", "ours"),
        Hyperparameter("depth", int, 1000, "LiSSA recursion depth", ">= 1", "paper code: up to 100 epochs"),
        Hyperparameter("lissa_batch_size", (int, type(None)), None, "LiSSA Hessian mini-batch; None = full data", ">= 1", "paper code: 500-1024"),
        Hyperparameter("hessian_rows", (int, type(None)), None, "estimate H~ from this many random rows of the corrected data (weighted n/m); None = all",
                       ">= 1", "paper code: mini-batch Hessian"),
        Hyperparameter("curvature", str, "hessian", "hessian, or ggn (generalised Gauss-Newton: PSD, for deep models)",
                       "hessian|ggn", "paper: Hessian; GGN is ours"),
        Hyperparameter("seed", int, 0, "seed of the Hessian row sample and LiSSA", "", "engineering"),
        Hyperparameter("max_params", int, 5000, "exact solver refuses models larger than this", ">= 1", "engineering"),
        _CHUNKS,
        _BATCH,
    ),
    reference=WARNECKE,
)
class SecondOrder:
    def __init__(self, *, solver="exact", damping=0.0, tol=1e-8, max_iter=200, scale=None, depth=1000,
                 lissa_batch_size=None, hessian_rows=None, curvature="hessian", seed=0, max_params=5000, chunks=1, batch_size=1024) -> None:
        self.hessian_rows = hessian_rows
        self.curvature = curvature
        self.seed = seed
        self.solver = solver
        self.damping = damping
        self.tol = tol
        self.max_iter = max_iter
        self.scale = scale
        self.depth = depth
        self.lissa_batch_size = lissa_batch_size
        self.max_params = max_params
        self.chunks = chunks
        self.batch_size = batch_size

    def make_solver(self):
        if self.solver == "exact":
            return make_solver("exact", damping=self.damping, max_params=self.max_params)
        if self.solver == "cg":
            return make_solver("cg", damping=self.damping, tol=self.tol, max_iter=self.max_iter)
        return make_solver("lissa", scale=self.scale, damping=self.damping, depth=self.depth,
                           batch_size=self.lissa_batch_size, seed=self.seed)

    def unlearn(self, model, data, changes, *, device=None):
        kwargs = dict(solver=self.make_solver(), hessian_rows=self.hessian_rows, curvature=self.curvature, seed=self.seed,
                      batch_size=self.batch_size, device=device)
        if self.chunks > 1:
            return iterative_update(second_order_update, model, data, changes, chunks=self.chunks, **kwargs)
        return second_order_update(model, data, changes, **kwargs)
