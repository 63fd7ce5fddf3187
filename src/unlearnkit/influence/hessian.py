"""Exact Hessian-vector products of the full training objective.

For a dataset ``D`` and parameters ``theta`` the operator is

    H v = sum_{z in D} (d^2 l(z, theta) / d theta^2) v + l2 * v,

the Hessian of ``L(theta; D) = sum_z l(z, theta) + (l2/2)||theta||^2`` (sum, not mean).
Products are exact (forward-over-reverse ``torch.func.jvp`` of ``grad``), computed over row
blocks of ``batch_size`` so memory stays bounded. :meth:`HessianOperator.sample_matvec`
gives the unbiased mini-batch estimate ``(n/|B|) sum_{z in B} H_z v + l2 v`` used by LiSSA.

``curvature="ggn"`` replaces each ``H_z`` by its generalised Gauss-Newton part
``J_z^T (d^2 l / d logits^2) J_z`` (``J_z`` the Jacobian of the logits): positive
semi-definite for any network, and equal to the Hessian for linear models such as logistic
regression; a wrapped model's own loss gets its ``d^2 l / d logits^2`` by autodiff). Deep models at a non-minimum have indefinite Hessians, on which CG breaks down;
the GGN keeps CG well defined.
"""


from __future__ import annotations

import enum

import numpy as np
import torch
from torch.func import grad, hessian, jvp, vjp

from unlearnkit.data.dataset import Dataset
from unlearnkit.influence.functional import FlatModel
from unlearnkit.models.linear import SparseRows, sparse_path


class Curvature(str, enum.Enum):
    HESSIAN = "hessian"
    GGN = "ggn"


class HessianOperator:
    """The Hessian of ``L(theta; data)`` as a linear operator, counting its products."""

    def __init__(
        self, flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 1024,
        weight: float = 1.0, curvature: str | Curvature = Curvature.HESSIAN,
    ) -> None:
        self.curvature = Curvature(curvature)
        self.flat = flat
        self.data = data
        self.weight = float(weight)  # H = weight * sum_{z in data} H_z + l2 I (weight n/m for a subsample)
        self.theta = flat.theta() if theta is None else theta
        self.batch_size = int(batch_size)
        self.n_hvp = 0  # full-data Hessian-vector products computed
        self._grad = grad(flat.loss_sum)
        # logistic regression on CSR data: closed-form products on the sparse matrix (GGN = Hessian there)
        self._sparse = SparseRows(data, dtype=flat.dtype, device=flat.device) if (
            flat.sparse_rows_ok and sparse_path(flat.model, data) and len(data)) else None

    @property
    def n_params(self) -> int:
        return self.flat.n_params

    def _batch_hvp(self, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.curvature is Curvature.GGN:
            return self._batch_ggn(v, xb, yb)
        return jvp(lambda t: self._grad(t, xb, yb), (self.theta,), (v,))[1]

    def _batch_ggn(self, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        def logits(t):
            return self.flat.logits(t, xb)

        out, vjp_fn = vjp(logits, self.theta)
        _, jv = jvp(logits, (self.theta,), (v,))
        if getattr(self.flat.model, "custom_loss", False):  # a user's loss: (d^2 l / dz^2) jv by autodiff in the logits
            model = self.flat.model
            hjv = jvp(grad(lambda z: model.per_sample_loss(z, yb).sum()), (out,), (jv,))[1]
        elif out.ndim == 1:  # binary logistic: d^2 l / dz^2 = p (1 - p)
            hjv = torch.sigmoid(out) * torch.sigmoid(-out) * jv
        else:  # softmax cross-entropy: (diag(p) - p p^T) jv
            p = torch.softmax(out, dim=-1)
            hjv = p * jv - p * (p * jv).sum(-1, keepdim=True)
        return vjp_fn(hjv)[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` over the whole dataset (one pass)."""
        out = torch.zeros_like(v)
        if self._sparse is not None:
            out = self.flat.model.sparse_hvp(self.theta, self._sparse, v)
        else:
            for xb, yb in self.data.batches(self.batch_size, device=self.flat.device, dtype=self.flat.dtype):
                out = out + self._batch_hvp(v, xb, yb)
        out = self.weight * out + self.flat.reg * v
        self.n_hvp += 1
        return out

    def sample_matvec(self, v: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Unbiased estimate ``(n/|B|) sum_{z in B} H_z v + l2 v`` on the rows ``positions``."""
        sub = self.data.subset(positions)  # one block of exactly these rows (read from the stream for streamed data)
        xb, yb = next(sub.batches(len(sub), device=self.flat.device, dtype=self.flat.dtype))
        scale = self.weight * len(self.data) / len(sub)
        return self.flat.reg * v + scale * self._batch_hvp(v, xb, yb)

    def dense(self) -> torch.Tensor:
        """The ``p x p`` Hessian, accumulated over row blocks.

        Uses the model's closed form ``loss_hessian(theta, X, y)`` where it has one (logistic
        regression), else ``torch.func.hessian``.
        """
        p = self.n_params
        H = torch.zeros(p, p, dtype=self.flat.dtype, device=self.flat.device)
        eye = torch.diag(self.flat.reg)
        closed = getattr(self.flat.model, "loss_hessian", None)
        if closed is not None:
            for xb, yb in self.data.batches(max(self.batch_size, 8192), device=self.flat.device, dtype=self.flat.dtype):
                H += closed(self.theta, xb, yb)
            return self.weight * 0.5 * (H + H.T) + eye
        if self.curvature is Curvature.GGN:  # column by column: p products
            basis = torch.eye(p, dtype=self.flat.dtype, device=self.flat.device)
            cols = torch.stack([self.matvec(basis[i]) for i in range(p)], 1)
            return 0.5 * (cols + cols.T)
        h = hessian(self.flat.loss_sum)
        # jacfwd over p tangents: keep (rows x p) activations bounded
        rows = max(1, min(self.batch_size, (1 << 22) // max(p, 1)))
        for xb, yb in self.data.batches(rows, device=self.flat.device, dtype=self.flat.dtype):
            H += h(self.theta, xb, yb)
        return self.weight * 0.5 * (H + H.T) + eye

    def largest_eigenvalue(self, *, iterations: int = 30, seed: int = 0) -> float:
        """Estimate of the largest-magnitude eigenvalue of ``H`` by power iteration."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.n_params, generator=gen, dtype=self.flat.dtype).to(self.flat.device)
        v /= torch.linalg.vector_norm(v)
        lam = 0.0
        for _ in range(iterations):
            w = self.matvec(v)
            lam_new = float(v @ w)
            norm = torch.linalg.vector_norm(w)
            if norm == 0:
                return 0.0
            v = w / norm
            if abs(lam_new - lam) <= 1e-3 * abs(lam_new):
                lam = lam_new
                break
            lam = lam_new
        return abs(lam)
