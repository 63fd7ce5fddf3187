"""A small convolutional network for 8x8 to 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel


class SmallCNN(UnlearnableModel):
    """Two ``conv3x3 -> ReLU -> maxpool2`` blocks, then ``Linear -> ReLU -> Linear``.

    No batch normalisation, so the network is a pure function of its parameters (influence
    updates and Hessian-vector products need that). ``channels`` sets the two conv widths.
    """

    kind = "cnn"
    config_keys = ("in_channels", "height", "width", "n_classes", "channels", "hidden", "l2")

    def __init__(
        self,
        *,
        in_channels: int,
        height: int,
        width: int,
        n_classes: int,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        l2: float = 1e-3,
    ) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        if height < 4 or width < 4:
            raise ModelError(f"SmallCNN needs images of at least 4x4 pixels, got {height}x{width}.")
        self.in_channels, self.height, self.width = int(in_channels), int(height), int(width)
        self.channels = tuple(int(c) for c in channels)
        self.hidden = int(hidden)
        c1, c2 = self.channels
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * (self.height // 4) * (self.width // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.n_classes))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.height, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.prepare(x)))

    # adapter: the stem conv, three blocks (conv, conv, hidden dense layer), the output layer as head
    def first_layer(self) -> nn.Module:
        return self.features[0]

    def blocks(self) -> list[nn.Module]:
        return [self.features[0:3], self.features[3:6], self.classifier[0:3]]

    def head(self) -> nn.Module:
        return self.classifier[-1]
