"""A small causal character transformer written with plain ``torch.nn``: an example of bringing your own module.

:class:`CharTransformer` is **not** an unlearnkit model: it is an ordinary ``nn.Module`` that
maps a batch of windows of character codes, shape ``(m, window)`` (floats, as every feature of a
:class:`~unlearnkit.data.Dataset`), to next-character logits ``(m, vocab_size)``. Any module of
that shape becomes unlearnable through :func:`unlearnkit.wrap`::

    import unlearnkit as uk
    from unlearnkit.models.char_transformer import CharTransformer

    module = CharTransformer(vocab_size=len(vocab), window=24, dim=64, heads=4, depth=2)
    model = uk.wrap(module, n_classes=len(vocab), input_shape=(24,), l2=1e-5)
    model = uk.train(model, windows, config=uk.TrainConfig(epochs=20, lr=2e-3))

(``windows`` from :func:`unlearnkit.data.char_windows`; the scenario ``canary`` does exactly this.)

**The model** (a decoder-only, GPT-style language model read at the last position). The codes
``c_1 .. c_T`` are embedded and a learned position embedding is added, ``h^0_t = E[c_t] + P_t``;
``depth`` pre-norm blocks follow,

    h' = h + W_o Attn(LN_1(h)),      h'' = h' + W_2 GELU(W_1 LN_2(h'))

with causal multi-head self-attention (position ``t`` attends to positions ``<= t``):
``Attn(x) = concat_heads softmax(Q K^T / sqrt(d_head) + M) V``, ``Q, K, V`` from three
``nn.Linear`` layers and ``M_{ts} = -inf`` for ``s > t``. The logits are ``V LN(h^depth_T) + a``:
the state at the last position predicts character ``c_{T+1}``, the classification row
``(window -> next character)`` the char-LSTM is trained on.

**Why it is written out.** Attention is plain tensor algebra on ``nn.Linear`` layers (no
``nn.MultiheadAttention``, no fused scaled-dot-product kernel), and there is no dropout, so the
network is a pure function of its parameters: ``torch.func`` computes per-sample gradients,
Hessian-vector and Gauss-Newton products through it as it is, and K-FAC / EK-FAC factor its
query, key, value, output and MLP projections as linear layers applied at every position. The
adapter :func:`~unlearnkit.wrap` discovers: the embedding as first layer, the ``blocks`` as
blocks, the output layer as head.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError

__all__ = ["CausalBlock", "CharTransformer"]


class CausalBlock(nn.Module):
    """One pre-norm transformer block with causal self-attention: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"dim ({dim}) must be a multiple of heads ({heads}).")
        self.heads = int(heads)
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Causal multi-head self-attention of ``h``, shape ``(m, T, dim)`` -> ``(m, T, dim)``."""
        m, T, dim = h.shape
        d = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (m, T, dim) -> (m, heads, T, d)
            return t.reshape(m, T, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (m, heads, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(m, T, dim))


class CharTransformer(nn.Module):
    """Next-character logits from a window of character codes (see the module docstring).

    Parameters
    ----------
    vocab_size:
        Number of characters (the number of outputs).
    window:
        Characters of context per row (the input is ``(m, window)``).
    dim, heads, depth, mlp_ratio:
        Model width, attention heads (``dim`` must be a multiple), number of blocks, and the MLP's
        hidden width as a multiple of ``dim``.
    """

    def __init__(self, *, vocab_size: int, window: int, dim: int = 64, heads: int = 4, depth: int = 2,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("window", window), ("dim", dim), ("heads", heads),
                            ("depth", depth), ("mlp_ratio", mlp_ratio)):
            if int(value) < 1:
                raise ModelError(f"CharTransformer needs {name} >= 1, got {value}.")
        self.window = int(window)
        self.embedding = nn.Embedding(int(vocab_size), int(dim))
        self.position = nn.Parameter(torch.randn(self.window, int(dim)) * 0.02)
        self.blocks = nn.ModuleList(CausalBlock(int(dim), int(heads), int(mlp_ratio) * int(dim)) for _ in range(int(depth)))
        self.norm = nn.LayerNorm(int(dim))
        self.output = nn.Linear(int(dim), int(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x.reshape(x.shape[0], self.window).long()) + self.position
        for block in self.blocks:
            h = block(h)
        return self.output(self.norm(h[:, -1]))
