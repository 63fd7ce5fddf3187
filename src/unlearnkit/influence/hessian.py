"""Exact Hessian-vector products of the full training objective.

For a dataset ``D`` and parameters ``theta`` the operator is

    H v = sum_{z in D} (d^2 l(z, theta) / d theta^2) v + l2 * v,

the Hessian of ``L(theta; D) = sum_z l(z, theta) + (l2/2)||theta||^2`` (sum, not mean).
Products are exact (forward-over-reverse ``torch.func.jvp`` of ``grad``), computed over row
blocks of ``batch_size`` so memory stays bounded. :meth:`HessianOperator.sample_matvec`
gives the unbiased mini-batch estimate ``(n/|B|) sum_{z in B} H_z v + l2 v`` used by LiSSA.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, hessian, jvp

from unlearnkit.data.dataset import Dataset
from unlearnkit.influence.functional import FlatModel


class HessianOperator:
    """The Hessian of ``L(theta; data)`` as a linear operator, counting its products."""

    def __init__(self, flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 1024) -> None:
        self.flat = flat
        self.data = data
        self.theta = flat.theta() if theta is None else theta
        self.batch_size = int(batch_size)
        self.n_hvp = 0  # full-data Hessian-vector products computed
        self._grad = grad(flat.loss_sum)

    @property
    def n_params(self) -> int:
        return self.flat.n_params

    def _batch_hvp(self, v: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: self._grad(t, xb, yb), (self.theta,), (v,))[1]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` over the whole dataset (one pass)."""
        out = self.flat.l2 * v
        for xb, yb in self.data.batches(self.batch_size, device=self.flat.device, dtype=self.flat.dtype):
            out = out + self._batch_hvp(v, xb, yb)
        self.n_hvp += 1
        return out

    def sample_matvec(self, v: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Unbiased estimate ``(n/|B|) sum_{z in B} H_z v + l2 v`` on the rows ``positions``."""
        sub = self.data.subset(positions)
        xb, yb = sub.tensors(device=self.flat.device, dtype=self.flat.dtype)
        scale = len(self.data) / len(sub)
        return self.flat.l2 * v + scale * self._batch_hvp(v, xb, yb)

    def dense(self) -> torch.Tensor:
        """The ``p x p`` Hessian, accumulated over row blocks.

        Uses the model's closed form ``loss_hessian(theta, X, y)`` where it has one (logistic
        regression), else ``torch.func.hessian``.
        """
        p = self.n_params
        H = self.flat.l2 * torch.eye(p, dtype=self.flat.dtype, device=self.flat.device)
        closed = getattr(self.flat.model, "loss_hessian", None)
        if closed is not None:
            for xb, yb in self.data.batches(max(self.batch_size, 8192), device=self.flat.device, dtype=self.flat.dtype):
                H += closed(self.theta, xb, yb)
            return 0.5 * (H + H.T)
        h = hessian(self.flat.loss_sum)
        # jacfwd over p tangents: keep (rows x p) activations bounded
        rows = max(1, min(self.batch_size, (1 << 22) // max(p, 1)))
        for xb, yb in self.data.batches(rows, device=self.flat.device, dtype=self.flat.dtype):
            H += h(self.theta, xb, yb)
        return 0.5 * (H + H.T)

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
