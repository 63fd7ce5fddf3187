"""A flat-parameter, functional view of a model for ``torch.func``.

Influence computations treat ``theta`` as one vector of ``p`` numbers, in the order of
``model.named_parameters()``. :class:`FlatModel` converts between that vector and the model's
parameter dict and evaluates per-sample losses as a pure function of ``theta``.
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call

from unlearnkit.models.base import UnlearnableModel


class FlatModel:
    """``theta -> per-sample losses`` for an :class:`UnlearnableModel`, with ``theta`` flat.

    The model itself is only read; :meth:`to_model` builds a new model from a vector.
    """

    def __init__(self, model: UnlearnableModel) -> None:
        self.model = model
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.buffers = dict(model.named_buffers())
        self.l2 = model.l2
        first = params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        w, b = model.regularizer_weights(), model.linear_term()
        self.reg = (torch.full((self.n_params,), self.l2, dtype=self.dtype, device=self.device) if w is None
                    else w.detach().to(dtype=self.dtype, device=self.device))
        self.b = None if b is None else b.detach().to(dtype=self.dtype, device=self.device)

    def reg_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of the regulariser: ``w * theta (+ b)``."""
        out = self.reg * theta
        return out if self.b is None else out + self.b

    def reg_value(self, theta: torch.Tensor) -> torch.Tensor:
        """The regulariser ``(1/2) sum_j w_j theta_j^2 (+ b . theta)``."""
        out = 0.5 * (self.reg * theta * theta).sum()
        return out if self.b is None else out + self.b @ theta

    @property
    def n_params(self) -> int:
        return int(sum(self.numels))

    def theta(self) -> torch.Tensor:
        """The model's parameters as one detached vector (a copy)."""
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape, k in zip(self.names, self.shapes, self.numels):
            out[name] = theta[start:start + k].view(shape)
            start += k
        return out

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``l(z_i, theta)``, shape ``(m,)``."""
        params = {**self.unflatten(theta), **self.buffers}
        logits = functional_call(self.model, params, (X,))
        return self.model.per_sample_loss(logits, y)

    def loss_sum(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i l(z_i, theta)`` over the batch (no regulariser)."""
        return self.losses(theta, X, y).sum()

    def single_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``l(z, theta)`` for one example (``x`` without batch axis), for ``vmap``."""
        return self.losses(theta, x.unsqueeze(0), y.unsqueeze(0))[0]

    def to_model(self, theta: torch.Tensor) -> UnlearnableModel:
        """A new model (deep copy of the original) holding parameters ``theta``."""
        if not torch.all(torch.isfinite(theta)):
            from unlearnkit.errors import SolverError

            raise SolverError("The updated parameters contain NaN or infinite values; the model was not changed.")
        new = copy.deepcopy(self.model)
        if hasattr(new, "train_seconds"):
            del new.train_seconds  # the original's training time is not this model's cost
        with torch.no_grad():
            params = dict(new.named_parameters())
            for name, value in self.unflatten(theta).items():
                params[name].copy_(value)
        return new
