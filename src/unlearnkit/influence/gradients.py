"""Per-sample gradients with ``torch.func.vmap(grad(...))``, in bounded-memory batches.

All gradients are of the per-sample loss ``l(z, theta)`` only; the regulariser
``(l2/2)||theta||^2`` enters the objective once, not per sample
(see :mod:`unlearnkit.models.base`).
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from unlearnkit.data.dataset import Dataset
from unlearnkit.influence.functional import FlatModel
from unlearnkit.models.linear import LogisticRegression, SparseRows, sparse_path


def per_sample_gradients(
    flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 256
) -> torch.Tensor:
    """``(m, p)`` matrix whose row ``i`` is ``grad_theta l(z_i, theta)``.

    Memory is ``O(m p)`` for the result plus ``O(batch_size * p)`` working space. Models with
    PyTorch's recurrent layers (no ``vmap`` rules) are differentiated row by row.
    """
    theta = flat.theta() if theta is None else theta
    if flat.recurrent:  # nn.LSTM / nn.GRU / nn.RNN have no vmap rules: one grad per row (the same numbers, slower)
        one = grad(flat.single_loss)
        rows = [torch.stack([one(theta, x, y) for x, y in zip(xb, yb)])
                for xb, yb in data.batches(batch_size, device=flat.device, dtype=flat.dtype)]
    else:
        fn = vmap(grad(flat.single_loss), in_dims=(None, 0, 0))
        rows = [fn(theta, xb, yb) for xb, yb in data.batches(batch_size, device=flat.device, dtype=flat.dtype)]
    if not rows:
        return torch.zeros((0, flat.n_params), dtype=flat.dtype, device=flat.device)
    return torch.cat(rows)


def summed_gradient(
    flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 1024
) -> torch.Tensor:
    """``g(S) = sum_{z in S} grad_theta l(z, theta)``, shape ``(p,)`` (no regulariser)."""
    theta = flat.theta() if theta is None else theta
    if flat.sparse_rows_ok and sparse_path(flat.model, data) and len(data):  # closed form on the CSR matrix
        rows = SparseRows(data, dtype=flat.dtype, device=flat.device)
        return flat.model.sparse_loss_gradient(theta, rows, torch.as_tensor(data.y, device=flat.device))
    total = torch.zeros(flat.n_params, dtype=flat.dtype, device=flat.device)
    # the closed form is LogisticRegression's own loss: a subclass may override it
    closed = flat.sparse_rows_ok and type(flat.model) is LogisticRegression
    g = flat.model.dense_loss_gradient if closed else grad(flat.loss_sum)
    for xb, yb in data.batches(batch_size, device=flat.device, dtype=flat.dtype):
        total += g(theta, xb, yb)
    return total


def objective_gradient(
    flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 1024
) -> torch.Tensor:
    """``grad L(theta; data) = g(data) + l2 * theta`` (plus ``b`` for a loss-perturbed model, and
    per-parameter L2 weights where the model has them) — the gradient of the full objective."""
    theta = flat.theta() if theta is None else theta
    return summed_gradient(flat, data, theta, batch_size=batch_size) + flat.reg_gradient(theta)


def gradient_residual(
    flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 1024
) -> float:
    """``||grad L(theta; data)||_2``: zero exactly at the optimum of ``data``'s objective."""
    return float(torch.linalg.vector_norm(objective_gradient(flat, data, theta, batch_size=batch_size)))


def objective_value(
    flat: FlatModel, data: Dataset, theta: torch.Tensor | None = None, *, batch_size: int = 4096
) -> float:
    """``L(theta; data) = sum_i l(z_i, theta) + regulariser`` (one pass, no gradients)."""
    theta = flat.theta() if theta is None else theta
    with torch.no_grad():
        total = sum(float(flat.loss_sum(theta, xb, yb)) for xb, yb in data.batches(batch_size, device=flat.device, dtype=flat.dtype))
        return total + float(flat.reg_value(theta))
