"""ResNet-18 for small images (28x28 to 32x32), written here without torchvision.

The layout is He et al.'s ResNet-18 (four stages of two basic blocks, widths ``w, 2w, 4w, 8w``,
stride 2 at the start of stages 2-4, global average pooling, one linear layer) with the
CIFAR-style stem for small inputs: a single ``3x3`` stride-1 convolution and no max-pool, so a
28x28 image keeps its resolution into the first stage. ``width=64`` is the standard network
(11.2 M parameters for 3-channel input); smaller widths give the same architecture at CPU cost.

DeepUnlearn trains torchvision's ImageNet ResNet-18 (``7x7`` stride-2 stem and max-pool) on
32x32 inputs, which discards most of the resolution in the first two layers; the CIFAR stem is
the usual choice for inputs this small. The blocks the adapter exposes are the four stages
(``layer1`` .. ``layer4``), as DeepUnlearn's CF-k and EU-k use them.

Batch normalisation makes the network depend on batch statistics in training mode. In
evaluation mode (how unlearnkit evaluates and how influence methods differentiate it) it is a
pure function of its parameters and buffers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel


class BasicBlock(nn.Module):
    """``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``, plus the identity (or a 1x1 projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(UnlearnableModel):
    """ResNet-18 with a small-image stem (see the module docstring).

    Parameters
    ----------
    in_channels, height, width:
        The input image shape; height and width must be at least 8.
    n_classes:
        Number of outputs.
    base_width:
        Channels of the first stage (64 in the standard network).
    l2:
        L2 strength of the training objective (see :mod:`unlearnkit.models.base`).
    """

    kind = "resnet18"
    config_keys = ("in_channels", "height", "width", "n_classes", "base_width", "l2")

    def __init__(self, *, in_channels: int, height: int, width: int, n_classes: int, base_width: int = 64,
                 l2: float = 5e-4) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        if height < 8 or width < 8:
            raise ModelError(f"ResNet18 needs images of at least 8x8 pixels, got {height}x{width}.")
        if base_width < 1:
            raise ModelError(f"base_width must be >= 1, got {base_width}.")
        self.in_channels, self.height, self.width = int(in_channels), int(height), int(width)
        self.base_width = int(base_width)
        w = self.base_width
        self.conv1 = nn.Conv2d(self.in_channels, w, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        stages, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(8 * w, self.n_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.height, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.prepare(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    # adapter: the stem conv, the four stages, the final linear layer
    def first_layer(self) -> nn.Module:
        return self.conv1

    def blocks(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self) -> nn.Module:
        return self.fc
