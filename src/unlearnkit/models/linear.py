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

    def loss_hessian(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Closed-form ``sum_i d^2 l_i / d theta^2`` (no regulariser) in parameter order (W, b).

        Binary: ``X~^T diag(p (1 - p)) X~`` with ``X~ = [X, 1]``. Multinomial: block ``(c, c')``
        is ``X~^T diag(p_c (delta_cc' - p_c')) X~``. ``O(n C^2 d^2)``; labels do not enter.
        """
        X = X.reshape(X.shape[0], -1)
        Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
        d1 = Xa.shape[1]
        W = theta[: self.linear.weight.numel()].view_as(self.linear.weight)
        b = theta[self.linear.weight.numel():]
        z = X @ W.T + b
        if self.n_classes == 2:
            p = torch.sigmoid(z[:, 0])
            return Xa.T @ (Xa * (p * (1 - p))[:, None])
        C = self.n_classes
        p = torch.softmax(z, dim=1)
        H = torch.empty(C * d1, C * d1, dtype=X.dtype, device=X.device)
        for c in range(C):
            for k in range(c, C):
                w = p[:, c] * ((1.0 if c == k else 0.0) - p[:, k])
                block = Xa.T @ (Xa * w[:, None])
                H[c * d1:(c + 1) * d1, k * d1:(k + 1) * d1] = block
                H[k * d1:(k + 1) * d1, c * d1:(c + 1) * d1] = block.T
        # augmented order (c, j) with j = d for the bias -> parameter order (W row-major, then b)
        d = d1 - 1
        c_idx = torch.arange(C).repeat_interleave(d1)
        j_idx = torch.arange(d1).repeat(C)
        q = torch.where(j_idx < d, c_idx * d + j_idx, C * d + c_idx).to(X.device)
        out = torch.empty_like(H)
        out[q.unsqueeze(1), q.unsqueeze(0)] = H
        return out

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 2:
            return (logits > 0).long()
        return logits.argmax(dim=-1)
