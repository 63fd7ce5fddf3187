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

    ``names`` restricts ``theta`` to some parameters (e.g. the classifier head, as the reference
    code's CIFAR experiment updates only its last layers); the others stay fixed at the model's
    values, and the objective's regulariser counts only the selected ones. Default: every
    trainable parameter. The model itself is only read; :meth:`to_model` builds a new model from
    a vector.
    """

    def __init__(self, model: UnlearnableModel, names: list[str] | None = None) -> None:
        self.model = model
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if names is not None:
            unknown = sorted(set(names) - set(trainable))
            if unknown or not names:
                from unlearnkit.errors import ModelError

                raise ModelError(f"Cannot restrict the update to parameters {unknown or names}: the {model.kind} model's "
                                 f"trainable parameters are {trainable}.")
            trainable = [n for n in trainable if n in set(names)]
        self.names = trainable
        params = dict(model.named_parameters())
        # parameters outside theta enter as constants (detached: no autograd graph through them)
        self.fixed = {n: p.detach() for n, p in params.items() if n not in set(trainable)}
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.buffers = dict(model.named_buffers())
        self.l2 = model.l2
        first = params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        w, b = model.regularizer_weights(), model.linear_term()
        if names is not None and (w is not None or b is not None) and len(self.names) < len(list(model.parameters())):
            from unlearnkit.errors import ModelError

            raise ModelError(f"The {model.kind} model has per-parameter regulariser weights or a loss perturbation; "
                             "update all its parameters.")
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
    def sparse_rows_ok(self) -> bool:
        """Whether closed forms over all parameters apply (theta covers every trainable parameter)."""
        return not self.fixed

    @property
    def n_params(self) -> int:
        return int(sum(self.numels))

    def theta(self) -> torch.Tensor:
        """The model's parameters as one detached vector (a copy)."""
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        # torch.split, not slicing: under vmap(grad) a slice's gradient is scattered into a full-size zero buffer per
        # parameter, split's gradients are concatenated once (measured 2.1 s -> 1.7 s on a char-LSTM batch)
        parts = torch.split(theta, self.numels)
        return {name: part.view(shape) for name, shape, part in zip(self.names, self.shapes, parts)}

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``l(z_i, theta)``, shape ``(m,)``."""
        logits = self.logits(theta, X)
        return self.model.per_sample_loss(logits, y)

    def logits(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """The model's logits with the selected parameters set to ``theta`` (the others as they are)."""
        return functional_call(self.model, {**self.fixed, **self.unflatten(theta), **self.buffers}, (X,))

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
