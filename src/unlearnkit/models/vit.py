"""A small vision transformer (ViT) for 8x8 to 32x32 images, written here with ``torch.nn``.

The layout is Dosovitskiy et al.'s ViT: the image is cut into non-overlapping ``patch x patch``
patches, each embedded linearly (a convolution with kernel = stride = ``patch``); a learned class
token is prepended and a learned position embedding added; ``depth`` pre-norm encoder blocks
(``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP of width ``mlp_ratio * dim``)
follow; the class token's final ``LayerNorm``-ed state goes through one linear layer. No
pretrained weights, no dropout: the network is a pure function of its parameters, so
``torch.func`` (per-sample gradients, Hessian-vector products) differentiates it as it is.

DeepUnlearn evaluates vision transformers beside ResNets; this one is sized for CPU (dim 32,
two blocks by default). Image sides that are not a multiple of ``patch`` lose their last
``side mod patch`` pixels, as a strided convolution does. The adapter's views are the patch
embedding (first layer), the encoder blocks and the linear head; the final ``LayerNorm`` belongs to
none of them, so CF-k and EU-k leave it as trained.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel, reset_parameters

POSITION_STD = 0.02
"""Standard deviation of the class token's and the position embedding's initial draws (as in ViT)."""


def default_patch(height: int, width: int) -> int:
    """The patch side ``patch=None`` gives: 4 for sides of at least 16 pixels (7x7 patches on 28x28), 2 down to 4, else 1."""
    side = min(height, width)
    return 4 if side >= 16 else 2 if side >= 4 else 1


class EncoderBlock(nn.Module):
    """One pre-norm transformer encoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention of ``h`` (shape ``(m, tokens, dim)``) with ``self.attn``'s parameters.

        ``softmax(Q K^T / sqrt(dim / heads)) V`` per head, then the output projection: the
        computation of ``nn.MultiheadAttention`` (its parameters, its packed ``in_proj`` layout),
        written out with plain tensor operations because the module's fused kernels (the
        evaluation-mode fast path, CPU flash attention) have no forward-mode derivative, which
        Gauss-Newton products through ``torch.func.jvp`` need.
        """
        attn = self.attn
        m, tokens, dim = h.shape
        heads = attn.num_heads
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (m, tokens, 3 dim)
        q, k, v = qkv.reshape(m, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # each (m, heads, tokens, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(m, tokens, dim)
        return attn.out_proj(out)


class SmallViT(UnlearnableModel):
    """A small vision transformer (see the module docstring).

    Parameters
    ----------
    in_channels, height, width:
        The input image shape.
    n_classes:
        Number of outputs.
    patch:
        Side of the square patches; ``None`` picks :func:`default_patch` (4 for 28x28, 2 for 8x8).
    dim:
        Embedding width; must be divisible by ``heads``.
    depth:
        Number of encoder blocks.
    heads:
        Attention heads per block.
    mlp_ratio:
        Width of each block's MLP, as a multiple of ``dim``.
    l2:
        L2 strength of the training objective (see :mod:`unlearnkit.models.base`).
    """

    kind = "vit"
    config_keys = ("in_channels", "height", "width", "n_classes", "patch", "dim", "depth", "heads", "mlp_ratio", "l2")

    def __init__(self, *, in_channels: int, height: int, width: int, n_classes: int, patch: int | None = None,
                 dim: int = 32, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0, l2: float = 1e-4) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        self.in_channels, self.height, self.width = int(in_channels), int(height), int(width)
        if self.in_channels < 1 or self.height < 1 or self.width < 1:
            raise ModelError(f"SmallViT needs a positive image shape, got {in_channels}x{height}x{width}.")
        self.patch = default_patch(self.height, self.width) if patch is None else int(patch)
        if not 1 <= self.patch <= min(self.height, self.width):
            raise ModelError(f"patch must be between 1 and the image's shorter side ({min(self.height, self.width)}), "
                             f"got {patch}.")
        self.dim, self.depth, self.heads = int(dim), int(depth), int(heads)
        if self.dim < 1 or self.depth < 1 or self.heads < 1:
            raise ModelError(f"dim, depth and heads must be >= 1, got dim={dim}, depth={depth}, heads={heads}.")
        if self.dim % self.heads:
            raise ModelError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.mlp_ratio = float(mlp_ratio)
        if not (self.mlp_ratio > 0 and math.isfinite(self.mlp_ratio)):
            raise ModelError(f"mlp_ratio must be a finite number > 0, got {mlp_ratio}.")
        hidden = max(1, round(self.mlp_ratio * self.dim))
        n_patches = (self.height // self.patch) * (self.width // self.patch)
        self.patch_embed = nn.Conv2d(self.in_channels, self.dim, self.patch, stride=self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, self.dim))
        self.encoder = nn.ModuleList(EncoderBlock(self.dim, self.heads, hidden) for _ in range(self.depth))
        self.norm = nn.LayerNorm(self.dim)
        self.fc = nn.Linear(self.dim, self.n_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.height, self.width)

    def init_parameters(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from ``generator``.

        Linear and convolutional layers and the norms as :func:`~unlearnkit.models.base.reset_parameters`;
        each attention's packed input projection uniform in ``+-1/sqrt(dim)`` (the same rule as a
        linear layer of fan-in ``dim``) with zero bias; the class token and the position embedding
        normal with standard deviation :data:`POSITION_STD`. Draws happen on the CPU.
        """
        reset_parameters(self, generator)
        bound = 1.0 / math.sqrt(self.dim)
        with torch.no_grad():
            for block in self.encoder:
                w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
                w.copy_(torch.empty(w.shape, dtype=w.dtype).uniform_(-bound, bound, generator=generator))
                if b is not None:
                    b.zero_()
            for p in (self.cls_token, self.pos_embed):
                p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(0.0, POSITION_STD, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.prepare(x)).flatten(2).transpose(1, 2)  # (m, patches, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        out = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.encoder:
            out = block(out)
        return self.fc(self.norm(out[:, 0]))

    # adapter: the patch embedding, the encoder blocks, the final linear layer
    def first_layer(self) -> nn.Module:
        return self.patch_embed

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder)

    def head(self) -> nn.Module:
        return self.fc
