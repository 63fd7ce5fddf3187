"""Inverse-Hessian-vector solvers behind one interface.

Each solver is built from its hyperparameters alone and has one verb,
``solve(H, v) -> (x, SolverReport)``, returning ``x ~= (H + damping I)^{-1} v`` for the
:class:`~unlearnkit.influence.hessian.HessianOperator` ``H`` (the Hessian of the summed
objective, regulariser included). The report says how far the solve got; a solver that cannot
produce a usable answer raises :class:`~unlearnkit.errors.SolverError` instead of returning
garbage.

* :class:`Exact`: dense Hessian and Cholesky factorisation; refuses above ``max_params``.
* :class:`ConjugateGradient`: Krylov solve with HVPs only; needs ``H + damping I`` positive
  definite (guaranteed for convex models; use ``damping`` > 0 for deep ones).
* :class:`LiSSA`: the stochastic recursion of Agarwal et al. as used by Warnecke et al.
  ``u <- v + (1 - damping) u - H_B u / scale``; result ``u / scale``, which approximates
  ``(H + damping * scale I)^{-1} v``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearnkit import timing
from unlearnkit.errors import SolverError
from unlearnkit.influence.hessian import HessianOperator


class SolverKind(str, enum.Enum):
    EXACT = "exact"
    CG = "cg"
    LISSA = "lissa"


@dataclass
class SolverReport:
    """What an inverse-HVP solve did.

    ``residual`` is the relative residual ``||(H + damping I) x - v|| / ||v||`` of the
    returned ``x`` (for LiSSA the damping is ``damping * scale``); ``nan`` when not computed.
    """

    solver: str
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = False
    diverged: bool = False
    hvps: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "solver": self.solver, "iterations": self.iterations, "residual": self.residual,
            "converged": self.converged, "diverged": self.diverged, "hvps": self.hvps,
            "seconds": self.seconds, **self.details,
        }


def _check_rhs(v: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(v))
    if not math.isfinite(norm):
        raise SolverError("The right-hand side contains NaN or infinite values; check the model and the data.")
    return norm


class Exact:
    """Dense Hessian plus Cholesky: ``x = (H + damping I)^{-1} v`` to machine precision.

    Costs one Hessian accumulation over the data (``O(n p^2)``) and ``O(p^3)`` for the factor.
    Refuses models with more than ``max_params`` parameters (the dense matrix alone needs
    ``8 p^2`` bytes in float64); use :class:`ConjugateGradient` for those.

    **Known flat directions.** A model that declares the directions ``N`` along which its
    objective is flat (``model.null_space()``, e.g. a softmax logistic regression with
    unpenalised intercepts, flat along a common shift of every intercept) is solved with
    ``H + s N N^T`` (``s`` the mean diagonal of ``H``): for a right-hand side orthogonal to ``N``
    (every gradient difference of such a model is) that gives the minimum-norm solution of
    ``H x = v``, with ``x`` orthogonal to ``N``. The report's ``residual`` is always measured
    against ``H`` itself, so a right-hand side with a component along ``N`` (no solution
    exists) shows as a large residual.

    **Singular matrices.** A Cholesky factorisation can succeed on a matrix that is singular up
    to rounding: the solve then has an arbitrary, possibly huge, component along the null
    direction while ``||H x - v||`` stays at rounding level. So the factor is also checked: a
    smallest squared pivot below ``max(p, 100) * eps`` times the largest (the pivots bound the
    smallest eigenvalue from above, so this means a condition number above ``1 / (max(p, 100)
    eps)``) counts as singular, like a failed factorisation. A singular matrix raises
    :class:`SolverError`, unless ``singular="pinv"``: then the minimum-norm solution on the
    matrix's range is returned, dropping eigenvalues below ``max(p, 100) * eps * lambda_max``
    (NumPy's rank tolerance). That is the exact answer for a softmax output layer, whose Hessian
    is singular along a shift of every logit by the same amount, a direction no prediction and
    no gradient difference has.
    """

    kind = SolverKind.EXACT

    def __init__(self, *, damping: float = 0.0, max_params: int = 5000, singular: str = "raise") -> None:
        self.damping = float(damping)
        self.max_params = int(max_params)
        if singular not in ("raise", "pinv"):
            raise SolverError(f"singular must be 'raise' or 'pinv', got {singular!r}.")
        self.singular = singular

    def solve(self, H: HessianOperator, v: torch.Tensor) -> tuple[torch.Tensor, SolverReport]:
        start = timing.start()
        v_norm = _check_rhs(v)
        p = H.n_params
        if p > self.max_params:
            raise SolverError(
                f"The exact solver refuses {p} parameters (max_params={self.max_params}; the dense Hessian "
                f"would need {8 * p * p / 2**30:.1f} GiB in float64). Use solver='cg', or raise max_params."
            )
        # Factorised in float64 whatever the model's dtype (the matrix is small, p <= max_params),
        # but judged at the precision it was computed in: a float32 Hessian's smallest eigenvalues
        # are float32 rounding, and a flat direction shows up as a pivot of that size.
        M = H.dense()
        computed_dtype = M.dtype
        computed_eps = torch.finfo(computed_dtype).eps
        M = M.to(torch.float64)
        if self.damping:
            M = M + self.damping * torch.eye(p, dtype=M.dtype, device=M.device)
        details = {"damping": self.damping}
        N = _declared_null_space(H) if not self.damping else None
        A = M
        if N is not None:
            N = N.to(torch.float64)
            A = M + (float(torch.diagonal(M).mean()) or 1.0) * (N @ N.T)
            details["null_space"] = int(N.shape[1])
        L, info = torch.linalg.cholesky_ex(A)
        pivot_ratio = _pivot_ratio(L) if int(info) == 0 else 0.0
        details["pivot_ratio"] = pivot_ratio
        if int(info) == 0 and pivot_ratio > max(p, 100) * computed_eps:
            x = torch.cholesky_solve(v.to(torch.float64).unsqueeze(1), L).squeeze(1)
        elif self.singular == "pinv":
            x, details["rank"], details["dropped_eigenvalues"] = _pinv_solve(A, v.to(torch.float64), eps=computed_eps)
            details["pseudo_inverse"] = True
        elif int(info) != 0:
            raise SolverError(
                "The Hessian is not positive definite (Cholesky failed), so the exact solve is undefined: "
                "the model is non-convex, not at a minimum, or flat along some direction. Add damping > 0, use "
                "solver='cg' with damping, or singular='pinv' for the minimum-norm solution."
            )
        elif computed_eps > torch.finfo(torch.float64).eps:
            raise SolverError(
                f"The Hessian is singular up to {computed_dtype} rounding (smallest Cholesky pivot {pivot_ratio:.2g} times the "
                f"largest, the limit is {max(p, 100) * computed_eps:.2g}): in this precision its smallest eigenvalues "
                "are rounding noise, so an exact solve would be arbitrary along them. Train the model in float64 "
                "(TrainConfig(dtype='float64') or model.double()), standardise the features or raise l2, add "
                "damping > 0, or pass singular='pinv' for the minimum-norm solution."
            )
        else:
            raise SolverError(
                f"The Hessian is singular up to rounding (smallest Cholesky pivot {pivot_ratio:.2g} times the largest), "
                "so the exact solve is not unique: its component along the flat direction would be rounding noise "
                "although the residual looks tiny. The objective is flat, or nearly so, along some direction "
                "(unpenalised intercepts of a softmax model, l2 = 0, or l2 tiny next to the features' scale). "
                "Penalise the intercept, raise l2 or standardise the features, add damping > 0, or pass "
                "singular='pinv' for the minimum-norm solution."
            )
        x = x.to(v.dtype)  # the residual is that of the solution returned, in the model's precision
        residual = float(torch.linalg.vector_norm(M @ x.to(torch.float64) - v.to(torch.float64))) / v_norm if v_norm else 0.0
        report = SolverReport("exact", iterations=1, residual=residual, converged=True, hvps=0,
                              seconds=timing.since(start), details=details)
        return x, report


def _declared_null_space(H) -> torch.Tensor | None:
    """The flat directions the model declares (``model.null_space()``), or None."""
    model = getattr(getattr(H, "flat", None), "model", None)
    declare = getattr(model, "null_space", None)
    N = declare() if callable(declare) else None
    if N is None or N.ndim != 2 or N.shape[0] != H.n_params or N.shape[1] == 0:
        return None
    return N.to(dtype=H.flat.dtype, device=H.flat.device)


def _pivot_ratio(L: torch.Tensor) -> float:
    """``min_i L_ii^2 / max_i L_ii^2`` of a Cholesky factor (an upper bound on ``1 / cond``)."""
    if not L.numel():
        return 1.0
    d = torch.diagonal(L) ** 2
    top = float(d.max())
    return float(d.min()) / top if top > 0 else 0.0


def _pinv_solve(M: torch.Tensor, v: torch.Tensor, *, eps: float | None = None) -> tuple[torch.Tensor, int, int]:
    """Minimum-norm solution of ``M x = v`` for a symmetric positive semi-definite ``M``.

    ``eps`` is the machine epsilon of the precision ``M`` was computed in (default: ``M``'s own):
    a Hessian accumulated in float32 and cast to float64 has float32 rounding, so eigenvalues
    within ``~eps * max |eigenvalue|`` of zero, negative ones included, are rounding, not curvature.
    """
    eps = torch.finfo(M.dtype).eps if eps is None else float(eps)
    evals, evecs = torch.linalg.eigh(M.double())
    top = float(evals.abs().max()) if evals.numel() else 0.0
    if evals.min() < -max(M.shape[0], 100) * eps * top * 10:
        raise SolverError("The Hessian has clearly negative eigenvalues: it is not positive semi-definite, so no "
                          "pseudo-inverse solve is meaningful. Add damping > 0 or use solver='cg' with damping.")
    keep = evals > max(M.shape[0], 100) * eps * top
    coeffs = (evecs[:, keep].T @ v.double()) / evals[keep]
    x = (evecs[:, keep] @ coeffs).to(v.dtype)
    return x, int(keep.sum()), int((~keep).sum())


class ConjugateGradient:
    """Conjugate gradients on ``(H + damping I) x = v`` with exact HVPs.

    Stops when ``||r|| <= tol * ||v||`` or after ``max_iter`` iterations. Raises
    :class:`SolverError` on negative curvature (``p^T (H + damping I) p <= 0``: raise
    ``damping``); otherwise reports ``converged`` honestly when the cap is reached.
    """

    kind = SolverKind.CG

    def __init__(self, *, damping: float = 0.0, tol: float = 1e-8, max_iter: int = 200) -> None:
        if tol <= 0 or max_iter < 1:
            raise SolverError("CG needs tol > 0 and max_iter >= 1.")
        self.damping = float(damping)
        self.tol = float(tol)
        self.max_iter = int(max_iter)

    def solve(self, H: HessianOperator, v: torch.Tensor) -> tuple[torch.Tensor, SolverReport]:
        start = timing.start()
        v_norm = _check_rhs(v)
        x = torch.zeros_like(v)
        if v_norm == 0:
            return x, SolverReport("cg", converged=True, residual=0.0)
        r = v.clone()
        p = r.clone()
        rs = float(r @ r)
        it, hvps = 0, 0
        converged = False
        while it < self.max_iter:
            Ap = H.matvec(p) + self.damping * p
            hvps += 1
            curv = float(p @ Ap)
            if not curv > 0:
                raise SolverError(
                    f"Conjugate gradients met non-positive curvature ({curv:.3g}) at iteration {it + 1}: the Hessian "
                    "is indefinite here. Increase damping (e.g. to a few times |smallest eigenvalue|)."
                )
            alpha = rs / curv
            x = x + alpha * p
            r = r - alpha * Ap
            rs_new = float(r @ r)
            it += 1
            if math.sqrt(rs_new) <= self.tol * v_norm:
                converged = True
                break
            p = r + (rs_new / rs) * p
            rs = rs_new
        residual = math.sqrt(rs_new) / v_norm
        if not math.isfinite(residual):
            raise SolverError("Conjugate gradients produced NaN or infinite values; increase damping.")
        report = SolverReport("cg", iterations=it, residual=residual, converged=converged, hvps=hvps,
                              seconds=timing.since(start), details={"damping": self.damping, "tol": self.tol})
        return x, report


class LiSSA:
    """Linear-time stochastic second-order approximation (Agarwal et al. 2017).

    Recursion, per repeat, with ``H_B`` the mini-batch estimate of the *summed* Hessian::

        u_0 = v;   u_{j+1} = v + (1 - damping) u_j - H_B u_j / scale;   result = u_T / scale

    Its fixed point is ``(H + damping * scale I)^{-1} v``; it converges when every eigenvalue
    of ``H / scale + damping I`` lies in ``(0, 2)``. ``scale=None`` sets
    ``scale = 1.1 * lambda_max(H)`` from a power iteration (the documented rule), which
    guarantees that for positive-definite ``H``. ``batch_size=None`` uses the whole dataset
    (deterministic); a mini-batch makes each step cheaper but leaves stochastic error.

    Stops early when ``||u_{j+1} - u_j|| <= tol ||u_{j+1}||``; raises :class:`SolverError`
    (divergence) if the iterate becomes non-finite or grows past ``1e6 ||v|| / (1 - rate)``.
    Results of ``repeats`` independent runs are averaged.
    """

    kind = SolverKind.LISSA

    def __init__(
        self,
        *,
        scale: float | None = None,
        damping: float = 0.0,
        depth: int = 1000,
        repeats: int = 1,
        batch_size: int | None = None,
        tol: float = 1e-10,
        seed: int = 0,
    ) -> None:
        if depth < 1 or repeats < 1:
            raise SolverError("LiSSA needs depth >= 1 and repeats >= 1.")
        if scale is not None and not scale > 0:
            raise SolverError(f"LiSSA scale must be > 0, got {scale}.")
        self.scale = scale
        self.damping = float(damping)
        self.depth = int(depth)
        self.repeats = int(repeats)
        self.batch_size = batch_size
        self.tol = float(tol)
        self.seed = int(seed)

    def solve(self, H: HessianOperator, v: torch.Tensor) -> tuple[torch.Tensor, SolverReport]:
        start = timing.start()
        v_norm = _check_rhs(v)
        hvps_before = H.n_hvp
        scale = self.scale if self.scale is not None else 1.1 * H.largest_eigenvalue(seed=self.seed)
        if scale <= 0:
            raise SolverError("LiSSA could not determine a positive scale (the Hessian is zero); pass scale=.")
        n = len(H.data)
        rng = np.random.default_rng(self.seed)
        full = self.batch_size is None or self.batch_size >= n
        results, iterations, converged = [], 0, True
        for _ in range(self.repeats):
            u = v.clone()
            done = False
            for j in range(self.depth):
                if full:
                    Hu = H.matvec(u)
                else:
                    Hu = H.sample_matvec(u, rng.choice(n, size=self.batch_size, replace=False))
                u_new = v + (1.0 - self.damping) * u - Hu / scale
                norm = float(torch.linalg.vector_norm(u_new))
                if not math.isfinite(norm) or norm > 1e8 * (v_norm + 1e-300) * max(1.0, self.depth):
                    raise SolverError(
                        f"LiSSA diverged at step {j + 1} (|u| = {norm:.3g}): scale {scale:.3g} is below the largest "
                        "Hessian eigenvalue or the Hessian is indefinite. Leave scale=None or raise it, or add damping."
                    )
                step = float(torch.linalg.vector_norm(u_new - u))
                u = u_new
                iterations += 1
                if step <= self.tol * norm:
                    done = True
                    break
            converged = converged and done
            results.append(u / scale)
        x = torch.stack(results).mean(0)
        hvps = H.n_hvp - hvps_before if full else H.n_hvp - hvps_before + iterations
        residual = float("nan")
        if full:
            eff = self.damping * scale
            residual = float(torch.linalg.vector_norm(H.matvec(x) + eff * x - v)) / v_norm if v_norm else 0.0
        report = SolverReport(
            "lissa", iterations=iterations, residual=residual, converged=converged, hvps=hvps,
            seconds=timing.since(start),
            details={"scale": scale, "damping": self.damping, "effective_damping": self.damping * scale,
                     "batch_size": self.batch_size, "repeats": self.repeats},
        )
        return x, report


SOLVERS = {SolverKind.EXACT: Exact, SolverKind.CG: ConjugateGradient, SolverKind.LISSA: LiSSA}


def make_solver(kind: str | SolverKind, **hyperparameters):
    """Build a solver by name (``exact``, ``cg``, ``lissa``)."""
    try:
        cls = SOLVERS[SolverKind(kind)]
    except ValueError:
        raise SolverError(f"Unknown solver {kind!r}; valid: {[k.value for k in SolverKind]}.") from None
    try:
        return cls(**hyperparameters)
    except TypeError as exc:
        raise SolverError(f"Bad hyperparameters for solver {kind!r}: {exc}.") from None
