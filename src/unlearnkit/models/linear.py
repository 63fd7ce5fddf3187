"""L2-regularised logistic regression (binary and multinomial, with intercept)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.models.base import UnlearnableModel


class LogisticRegression(UnlearnableModel):
    """Logistic regression ``f(x) = W x + b``.

    * ``n_classes == 2``: one logit ``z = w.x + b``; per-sample loss
      ``l = log(1 + exp(-s z))`` with ``s = 2y - 1`` (labels 0/1).
    * ``n_classes > 2``: multinomial (softmax) with ``n_classes`` logits and cross-entropy.

    The objective is ``sum_i l_i + (l2 / 2)(||W||^2 + ||b||^2)``: the intercept is regularised
    too, which makes the objective ``l2``-strongly convex (the certified-unlearning theory needs
    that). Trained in float64 by default so that second-order updates can be compared with
    retraining to high precision.
    """

    kind = "logreg"
    config_keys = ("n_features", "n_classes", "l2")
    convex = True

    def __init__(self, *, n_features: int, n_classes: int = 2, l2: float = 1.0) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        self.n_features = int(n_features)
        out = 1 if self.n_classes == 2 else self.n_classes
        self.linear = nn.Linear(self.n_features, out)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    def init_parameters(self, generator: torch.Generator) -> None:
        """Convex model: start from zero (the optimum does not depend on the start)."""
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.reshape(x.shape[0], -1))
        return z.squeeze(-1) if self.n_classes == 2 else z

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 2:
            sign = 2.0 * y.to(logits.dtype) - 1.0
            return F.softplus(-sign * logits)
        return F.cross_entropy(logits, y, reduction="none")

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 2:
            return (logits > 0).long()
        return logits.argmax(dim=-1)
