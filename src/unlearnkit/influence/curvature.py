"""A cached Hessian factorisation, kept current under low-rank changes of the data.

Second-order unlearning of a convex model solves ``H~ Delta = G`` with ``H~`` the Hessian of
the objective on the corrected data. Recomputing ``H~`` costs ``O(n p^2)``; but a request only
changes the rows it touches, and for logistic regression each row contributes a term of rank 1
(binary) or ``C`` (softmax), :meth:`~unlearnkit.models.linear.LogisticRegression.hessian_factors`.
So the Hessian *at a fixed anchor* ``theta_a`` is updated exactly by

    H <- H + F(Z~) F(Z~)^T - F(Z) F(Z)^T          (rank <= 2 k C for k affected rows)

Label edits leave it unchanged (labels do not enter the logistic Hessian).

:class:`CachedCurvature` keeps the dense ``H`` (``O(p^2 r)`` per update of rank ``r``), the
Cholesky factor ``L0`` of ``H0``, the matrix at the last factorisation, and the accumulated
low-rank terms ``H = H0 + U diag(s) U^T`` (``s = +-1``). Solves use the Woodbury identity

    H^{-1} g = y - W C^{-1} U^T y,   y = H0^{-1} g,  W = H0^{-1} U,  C = diag(s) + U^T W

at ``O(p^2 + p r + r^3)`` per solve, ``O(p^2 r)`` per update (the new columns of ``W``) — never
a pass over the data. When the accumulated rank passes ``max_rank`` (default ``p / 4``) the
dense ``H`` is refactorised (``O(p^3 / 3)``, amortised over the updates that led there), and on
any numerical trouble in the capacitance matrix too.

``null_space`` (orthonormal columns ``N``) handles objectives that are flat along known
directions, such as the intercepts of a softmax model without an intercept penalty (adding a
constant to every intercept changes nothing): the factor is of ``H + N N^T``, which has the same
solution as ``H`` for every right-hand side orthogonal to ``N`` (gradients of such models are).

The anchor stays where the factor was computed; when the parameters drift away from it the
solve is a quasi-Newton step whose error the certified-unlearning bound accounts for
(:mod:`unlearnkit.influence.certified`). :meth:`CachedCurvature.at` recomputes it at new
parameters.
"""

from __future__ import annotations

import torch

from unlearnkit.errors import SolverError


class CachedCurvature:
    """Dense Hessian ``H`` at ``anchor``, factorised, with exact low-rank updates.

    Parameters
    ----------
    H: ``(p, p)`` symmetric positive (semi-)definite Hessian, regulariser included.
    anchor: the parameters ``H`` was computed at.
    null_space: optional ``(p, q)`` orthonormal directions along which ``H`` is flat.
    max_rank: refactorise once the accumulated low-rank terms reach this rank.
    """

    def __init__(self, H: torch.Tensor, anchor: torch.Tensor, *, null_space: torch.Tensor | None = None,
                 max_rank: int | None = None) -> None:
        if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] != anchor.numel():
            raise SolverError(f"The Hessian must be ({anchor.numel()}, {anchor.numel()}); got {tuple(H.shape)}.")
        self.H = 0.5 * (H + H.T)
        self.anchor = anchor.detach().clone()
        self.null_space = null_space
        p = self.H.shape[0]
        self.max_rank = int(max_rank) if max_rank is not None else max(8, p // 4)
        self.refactorisations = 0
        self.data_fingerprint: str | None = None  # set by at(): the data the Hessian was computed on
        self._factorise()

    # ------------------------------------------------------------------ construction
    @classmethod
    def at(cls, model, data, theta: torch.Tensor | None = None, *, batch_size: int = 8192,
           null_space: torch.Tensor | None = None) -> "CachedCurvature":
        """The Hessian of ``L(.; data)`` for ``model`` at ``theta`` (one ``O(n p^2)`` pass).

        ``null_space`` defaults to the flat directions the model declares (``model.null_space()``,
        e.g. the common intercept shift of a softmax model with unpenalised intercepts).
        """
        from unlearnkit.influence.functional import FlatModel
        from unlearnkit.influence.hessian import HessianOperator

        flat = FlatModel(model)
        theta = flat.theta() if theta is None else theta
        if null_space is None and callable(getattr(model, "null_space", None)):
            null_space = model.null_space()
            if null_space is not None and null_space.shape[0] != flat.n_params:
                null_space = None
        H = HessianOperator(flat, data, theta, batch_size=batch_size).dense()
        out = cls(H, theta, null_space=null_space)
        out.data_fingerprint = data.fingerprint()
        return out

    @property
    def n_params(self) -> int:
        return self.H.shape[0]

    @property
    def rank(self) -> int:
        """Rank of the low-rank terms accumulated since the last factorisation."""
        return self.U.shape[1]

    def _factorise(self) -> None:
        M = self.H if self.null_space is None else self.H + self.null_space @ self.null_space.T
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:
            raise SolverError(
                "The cached Hessian is not positive definite (the objective is not strongly convex here); "
                "set l2 > 0 or penalise the intercept."
            )
        self.L0 = L
        p, dt, dev = self.H.shape[0], self.H.dtype, self.H.device
        self.U = torch.zeros(p, 0, dtype=dt, device=dev)
        self.W = torch.zeros(p, 0, dtype=dt, device=dev)
        self.signs = torch.zeros(0, dtype=dt, device=dev)
        self.refactorisations += 1

    def _base_solve(self, B: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(B, self.L0)

    # ------------------------------------------------------------------ updates
    def update(self, add: torch.Tensor | None = None, remove: torch.Tensor | None = None) -> None:
        """``H <- H + add add^T - remove remove^T`` (columns are the low-rank factors)."""
        cols, signs = [], []
        for F, s in ((add, 1.0), (remove, -1.0)):
            if F is not None and F.numel():
                if F.ndim != 2 or F.shape[0] != self.n_params:
                    raise SolverError(f"Low-rank factors must have shape ({self.n_params}, r); got {tuple(F.shape)}.")
                F = F.to(dtype=self.H.dtype, device=self.H.device)
                self.H = self.H + s * (F @ F.T)
                cols.append(F)
                signs.append(torch.full((F.shape[1],), s, dtype=self.H.dtype, device=self.H.device))
        if not cols:
            return
        U_new = torch.cat(cols, 1)
        if self.rank + U_new.shape[1] > self.max_rank:
            self._factorise()
            return
        self.U = torch.cat([self.U, U_new], 1)
        self.W = torch.cat([self.W, self._base_solve(U_new)], 1)
        self.signs = torch.cat([self.signs, *signs])

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """``H^{-1} g`` (with the null-space convention of the class docstring)."""
        g = g.to(dtype=self.H.dtype, device=self.H.device)
        y = self._base_solve(g.unsqueeze(1)).squeeze(1)
        if self.rank == 0:
            return y
        C = torch.diag(self.signs) + self.U.T @ self.W
        try:
            z = torch.linalg.solve(C, self.U.T @ y)
        except RuntimeError:
            z = None
        if z is None or not torch.all(torch.isfinite(z)):
            self._factorise()  # capacitance matrix singular in floating point: start afresh
            return self._base_solve(g.unsqueeze(1)).squeeze(1)
        return y - self.W @ z

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """Tensors that rebuild this cache exactly (see :meth:`from_state`)."""
        out = {"H": self.H, "anchor": self.anchor, "L0": self.L0, "U": self.U, "signs": self.signs,
               "max_rank": torch.tensor(self.max_rank)}
        if self.null_space is not None:
            out["null_space"] = self.null_space
        return {k: v.detach().cpu() for k, v in out.items()}

    @classmethod
    def from_state(cls, state: dict, *, device=None) -> "CachedCurvature":
        try:
            obj = cls.__new__(cls)
            dev = device if device is not None else state["H"].device
            obj.H = state["H"].to(dev)
            obj.anchor = state["anchor"].to(dev)
            obj.null_space = state["null_space"].to(dev) if "null_space" in state else None
            obj.max_rank = int(state["max_rank"])
            obj.L0 = state["L0"].to(dev)
            obj.U = state["U"].to(dev)
            obj.signs = state["signs"].to(dev)
            obj.refactorisations = 0
            p = obj.H.shape[0]
            if obj.L0.shape != (p, p) or obj.U.shape[0] != p or obj.signs.numel() != obj.U.shape[1]:
                raise ValueError("inconsistent shapes")
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
            raise SolverError(f"Malformed cached curvature ({exc}); recompute it from the data.") from None
        obj.W = obj._base_solve(obj.U) if obj.U.shape[1] else torch.zeros_like(obj.U)
        return obj


def hessian_row_changes(resolved):
    """How the rows a request touches change a Hessian that depends on features only (logistic regression).

    Returns ``(Xz, Xt, old_rows, new_rows, feat_changed, removed)``: the flattened features of
    ``Z`` and ``Z~``; the rows of ``Z`` whose Hessian terms go (removed rows and rows whose
    features change); the rows of ``Z~`` whose terms come in (changed features); which rows of
    ``Z~`` changed features; and which rows of ``Z`` are removed. Label edits change nothing.
    """
    import numpy as np

    Z, Zt = resolved.Z, resolved.Z_tilde
    z_pos = {int(i): k for k, i in enumerate(Z.ids)}
    tilde_pos = np.asarray([z_pos[int(i)] for i in Zt.ids], dtype=np.int64)
    Xz = Z.dense_rows().reshape(len(Z), -1)
    Xt = Zt.dense_rows().reshape(len(Zt), -1) if len(Zt) else np.zeros((0, Xz.shape[1]))
    feat_changed = np.any(Xt != Xz[tilde_pos], axis=1) if len(Zt) else np.zeros(0, bool)
    removed = np.ones(len(Z), bool)
    removed[tilde_pos] = False
    old_rows = np.flatnonzero(removed | np.isin(np.arange(len(Z)), tilde_pos[feat_changed]))
    new_rows = np.flatnonzero(feat_changed)
    return Xz, Xt, old_rows, new_rows, feat_changed, removed
