"""A small residual CNN: three stages of basic residual blocks, for 8x8 to 32x32 images on a CPU.

The layout is He et al.'s CIFAR ResNet (a ``3x3`` stem convolution with batch norm, three stages
``layer1..layer3`` of ``blocks_per_stage`` basic blocks with widths ``widths``, stride 2 at the
start of stages 2 and 3, global average pooling, one linear layer), at widths that train on the
digits in seconds. Its blocks are :class:`unlearnkit.models.resnet.BasicBlock`, the same as
:class:`~unlearnkit.models.resnet.ResNet18`'s; the adapter exposes the three stages as the blocks,
the structure MSG, CT, CF-k and EU-k assume.

Batch normalisation makes the network depend on batch statistics in training mode; in evaluation
mode it is a pure function of its parameters and buffers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.models.resnet import BasicBlock


class ResCNN(UnlearnableModel):
    """A three-stage residual CNN (see the module docstring).

    Parameters
    ----------
    in_channels, height, width:
        The input image shape; height and width must be at least 4.
    n_classes:
        Number of outputs.
    widths:
        Channels of the three stages (the stem has the first).
    blocks_per_stage:
        Basic blocks in each stage (1 gives an 8-layer network, 2 a 14-layer one).
    l2:
        L2 strength of the training objective (see :mod:`unlearnkit.models.base`).
    """

    kind = "rescnn"
    config_keys = ("in_channels", "height", "width", "n_classes", "widths", "blocks_per_stage", "l2")

    def __init__(self, *, in_channels: int, height: int, width: int, n_classes: int,
                 widths: tuple[int, int, int] = (8, 16, 32), blocks_per_stage: int = 2, l2: float = 5e-4) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        if height < 4 or width < 4:
            raise ModelError(f"ResCNN needs images of at least 4x4 pixels, got {height}x{width}.")
        self.in_channels, self.height, self.width = int(in_channels), int(height), int(width)
        self.widths = tuple(int(w) for w in widths)
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ModelError(f"widths must be three channel counts >= 1 (one per stage), got {widths}.")
        self.blocks_per_stage = int(blocks_per_stage)
        if self.blocks_per_stage < 1:
            raise ModelError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}.")
        self.conv1 = nn.Conv2d(self.in_channels, self.widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        stages, cin = [], self.widths[0]
        for i, cout in enumerate(self.widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(self.blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.widths[-1], self.n_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.height, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.prepare(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    # adapter: the stem conv, the three stages, the final linear layer
    def first_layer(self) -> nn.Module:
        return self.conv1

    def blocks(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def head(self) -> nn.Module:
        return self.fc
