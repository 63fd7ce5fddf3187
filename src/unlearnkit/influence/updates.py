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

The input model is never modified: the update builds a new model, and any failure raises
before a model is returned.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import SolverError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import summed_gradient
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.solvers import Exact
from unlearnkit.models.base import UnlearnableModel


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

    def to_dict(self) -> dict:
        return {
            "method": self.method, "seconds": self.seconds, "n_affected": self.n_affected,
            "per_sample_gradients": self.per_sample_gradients, "hvps": self.hvps, **self.diagnostics,
        }


def gradient_difference(flat: FlatModel, resolved: Resolved, *, batch_size: int = 1024) -> torch.Tensor:
    """``G = g(Z~) - g(Z)`` at the model's parameters (``2|Z|`` per-sample gradients at most)."""
    theta = flat.theta()
    G = -summed_gradient(flat, resolved.Z, theta, batch_size=batch_size)
    if len(resolved.Z_tilde):
        G = G + summed_gradient(flat, resolved.Z_tilde, theta, batch_size=batch_size)
    if not torch.all(torch.isfinite(G)):
        raise SolverError("The gradient difference G contains NaN or infinite values; the model was not changed.")
    return G


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
    start = time.perf_counter()
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
        new, "first-order", time.perf_counter() - start, resolved.n_affected,
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
    curvature: str = "hessian",
    params: str = "all",
    seed: int = 0,
    batch_size: int = 1024,
    device=None,
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
    """
    start = time.perf_counter()
    solver = solver if solver is not None else Exact()
    flat, resolved = _prepare(model, data, changes, device, params)
    G = gradient_difference(flat, resolved, batch_size=batch_size)
    corrected, weight = hessian_sample(resolved.corrected, hessian_rows, seed)
    H = HessianOperator(flat, corrected, batch_size=batch_size, weight=weight, curvature=curvature)
    step, report = solver.solve(H, G)
    theta = flat.theta() - step
    new = flat.to_model(theta)
    return UnlearnResult(
        new, "second-order", time.perf_counter() - start, resolved.n_affected,
        per_sample_gradients=len(resolved.Z) + len(resolved.Z_tilde), hvps=report.hvps,
        diagnostics={"grad_diff_norm": float(torch.linalg.vector_norm(G)),
                     "update_norm": float(torch.linalg.vector_norm(step)), "hessian_rows": len(corrected),
                     "solver": report.to_dict()},
    )


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
        if parts:
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            out.append(total)
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
    """Apply ``update`` (first or second order) chunk by chunk, on the data corrected so far."""
    start = time.perf_counter()
    current_model, current_data = model, data
    grads = hvps = 0
    resolved = changes.resolve(data)
    parts = _split_resolved(changes, resolved, chunks)
    for part in parts:
        result = update(current_model, current_data, part, **kwargs)
        current_model = result.model
        current_data = part.apply(current_data)
        grads += result.per_sample_gradients
        hvps += result.hvps
    return UnlearnResult(
        current_model, f"{result.method}-iterative", time.perf_counter() - start,
        resolved.n_affected, per_sample_gradients=grads, hvps=hvps,
        diagnostics={"chunks": len(parts)},
    )
