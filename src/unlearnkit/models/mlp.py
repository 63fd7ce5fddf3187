"""A multi-layer perceptron classifier."""

from __future__ import annotations

import torch
from torch import nn

from unlearnkit.models.base import UnlearnableModel


class MLP(UnlearnableModel):
    """``Linear -> tanh -> ... -> Linear`` with ``hidden`` units per layer.

    ``tanh`` (smooth) rather than ReLU so that Hessians are well defined everywhere.
    Input examples of any shape are flattened to ``n_features``.
    """

    kind = "mlp"
    config_keys = ("n_features", "n_classes", "hidden", "l2")

    def __init__(self, *, n_features: int, n_classes: int, hidden: tuple[int, ...] = (64,), l2: float = 1e-3) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        self.n_features = int(n_features)
        self.hidden = tuple(int(h) for h in hidden)
        layers: list[nn.Module] = []
        width = self.n_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, self.n_classes))
        self.net = nn.Sequential(*layers)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))

    # adapter: one block per hidden layer (Linear + tanh), the output layer as head
    def first_layer(self) -> nn.Module:
        return self.net[0]

    def blocks(self) -> list[nn.Module]:
        return [self.net[i:i + 2] for i in range(0, 2 * len(self.hidden), 2)]

    def head(self) -> nn.Module:
        return self.net[-1]
