"""The base class of every model unlearnkit trains and unlearns, and its objective.

**The objective (one convention, used everywhere).** For a model ``f_theta`` with per-sample
loss ``l(z, theta)`` (cross-entropy; the logistic loss for binary logistic regression) and L2
strength ``l2``, the training objective on a dataset ``D`` is the **sum** over points

    L(theta; D) = sum_{z in D} l(z, theta) + (l2 / 2) * ||theta||^2

with ``theta`` *all* trainable parameters, biases included (so ``L`` is ``l2``-strongly convex
for logistic regression). Two generalisations exist for linear models: a per-parameter L2
weight (:meth:`UnlearnableModel.regularizer_weights`, e.g. an unpenalised intercept as in
scikit-learn) and, for certified unlearning, a random linear term ``b . theta`` (loss
perturbation, :meth:`UnlearnableModel.linear_term`); the regulariser is then
``(1/2) sum_j w_j theta_j^2 + b . theta``. Gradients ``g(S)``, Hessians and gradient residuals in
:mod:`unlearnkit.influence` are those of this sum. Optimisers that prefer a scale-free loss
minimise ``L / n`` instead, which has the same minimiser.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError


class UnlearnableModel(nn.Module):
    """A classifier with an explicit training objective (see the module docstring).

    Subclasses set ``kind`` and keep every constructor argument as an attribute named in
    ``config_keys`` so that ``type(m)(**m.config)`` rebuilds the architecture. ``forward``
    returns logits: shape ``(m, n_classes)``, or ``(m,)`` for binary logistic regression.
    Subclasses also define the ``input_shape`` property (the shape of one example).
    """

    kind: ClassVar[str] = ""
    config_keys: ClassVar[tuple[str, ...]] = ()
    convex: ClassVar[bool] = False

    def __init__(self, *, n_classes: int, l2: float) -> None:
        super().__init__()
        if n_classes < 2:
            raise ModelError(f"n_classes must be >= 2, got {n_classes}.")
        if not (l2 >= 0 and math.isfinite(l2)):
            raise ModelError(f"l2 must be a finite number >= 0, got {l2}.")
        self.n_classes = int(n_classes)
        self.l2 = float(l2)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (with ``l2``)."""
        return {k: getattr(self, k) for k in self.config_keys}

    def init_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every parameter from ``generator`` (deterministic for a seed).

        Weights of linear and convolutional layers follow PyTorch's default (Kaiming-uniform
        with ``a = sqrt(5)``); biases are uniform in ``+-1/sqrt(fan_in)``.
        """
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    # kaiming_uniform(a=sqrt(5)) gives the same bound as 1/sqrt(fan_in)
                    module.weight.uniform_(-bound, bound, generator=generator)
                    if module.bias is not None:
                        module.bias.uniform_(-bound, bound, generator=generator)

    # ------------------------------------------------------------------ objective
    def regularizer_weights(self) -> torch.Tensor | None:
        """Per-parameter L2 weights ``w`` (flat, in parameter order), or None for ``l2`` everywhere."""
        return None

    def linear_term(self) -> torch.Tensor | None:
        """The loss-perturbation vector ``b`` (flat, in parameter order), or None."""
        return None

    def regularizer(self) -> torch.Tensor:
        """``(1/2) sum_j w_j theta_j^2 + b . theta`` on the live parameters (differentiable)."""
        theta = torch.cat([p.reshape(-1) for p in self.parameters() if p.requires_grad])
        w, b = self.regularizer_weights(), self.linear_term()
        value = 0.5 * self.l2 * (theta * theta).sum() if w is None else 0.5 * (w * theta * theta).sum()
        return value if b is None else value + (b * theta).sum()

    # ------------------------------------------------------------------ loss
    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``l(z, theta)`` from logits: cross-entropy, shape ``(m,)``."""
        return F.cross_entropy(logits, y, reduction="none")

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def check_data(self, data) -> None:
        """Raise :class:`ModelError` if ``data`` does not fit this model's input and classes."""
        if tuple(data.feature_shape) != tuple(self.input_shape) and data.n_features != math.prod(self.input_shape):
            raise ModelError(
                f"{data.name} has examples of shape {data.feature_shape} but the {self.kind} model expects "
                f"{self.input_shape}. Use the data the model was trained on, or train a new model."
            )
        if data.n_classes > self.n_classes:
            raise ModelError(
                f"{data.name} has {data.n_classes} classes but the {self.kind} model has {self.n_classes} outputs."
            )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape a batch of flattened or shaped inputs to ``(m, *input_shape)``."""
        return x.reshape(x.shape[0], *self.input_shape)
