"""A character-level LSTM language model, written so that ``torch.func`` can differentiate it.

**The model.** An example is a window of ``window`` character indices ``c_1 .. c_T`` (stored as
floats, like every feature in a :class:`~unlearnkit.data.Dataset`); the label is the next
character. The characters are embedded, ``x_t = E[c_t]``, and run through ``layers`` stacked
LSTM layers; in each layer, from ``h_0 = c_0 = 0``,

    [i_t, f_t, g_t, o_t] = W x_t + b + U h_{t-1}         (one ``Linear`` from the input, one
                                                           bias-free ``Linear`` from the state)
    c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
    h_t = sigmoid(o_t) * tanh(c_t)

(the next layer reads ``h_1 .. h_T`` as its input sequence). The next-character logits are
``V h_T + a`` from the last layer's final state, shape ``(m, vocab_size)``.

**The objective** is the library's one convention (:mod:`unlearnkit.models.base`): the **sum**
over windows of the cross-entropy of the next character plus ``(l2 / 2) ||theta||^2`` over
*all* parameters (embedding, gates, biases, output layer),

    L(theta; D) = sum_{(c_{1..T}, c_{T+1}) in D} -log softmax(f_theta(c_{1..T}))[c_{T+1}] + (l2/2) ||theta||^2.

The recurrence is a Python loop over the ``window`` steps of plain ``Linear`` layers and
point-wise functions (not ``nn.LSTM``, whose fused kernel has no ``vmap``/forward-mode rules),
so per-sample gradients (``vmap(grad)``), Hessian-vector products (``jvp`` of ``grad``) and
Gauss-Newton products (``vjp``/``jvp`` of the logits) through ``functional_call`` all work.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from unlearnkit.errors import DataError, ModelError
from unlearnkit.models.base import UnlearnableModel, reset_parameters

__all__ = ["CharLSTM", "LSTMLayer", "char_log_perplexity"]


class LSTMLayer(nn.Module):
    """One LSTM layer unrolled over time: ``(m, T, input_size) -> (m, T, hidden)``.

    ``input_gates`` maps the input to the four gate pre-activations ``i, f, g, o`` (with the
    bias); ``hidden_gates`` maps the previous state ``h_{t-1}`` (no bias). See the module
    docstring for the equations.
    """

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.input_size, self.hidden = int(input_size), int(hidden)
        self.input_gates = nn.Linear(self.input_size, 4 * self.hidden)
        self.hidden_gates = nn.Linear(self.hidden, 4 * self.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.states(x), dim=1)

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The hidden states ``[h_1, ..., h_T]``, each ``(m, hidden)``."""
        pre = self.input_gates(x)  # all time steps at once: (m, T, 4 hidden)
        out: list[torch.Tensor] = []
        h = c = None
        for pre_t in pre.unbind(1):  # unbind, not pre[:, t]: one stack in backward instead of T zero-padded slices
            gates = pre_t if h is None else pre_t + self.hidden_gates(h)  # h_0 = 0
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(i) * torch.tanh(g)
            c = c_new if c is None else torch.sigmoid(f) * c + c_new  # c_0 = 0
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return out


class CharLSTM(UnlearnableModel):
    """Next-character classifier: embedding, ``layers`` LSTM layers, a linear head (see the module docstring).

    Parameters
    ----------
    vocab_size:
        Number of characters; the model has ``vocab_size`` classes.
    window:
        Characters of context per example (the input shape is ``(window,)``).
    embed_dim, hidden, layers:
        Embedding width, LSTM state width and number of stacked LSTM layers.
    l2:
        L2 strength of the objective (on every parameter).
    """

    kind = "char-lstm"
    config_keys = ("vocab_size", "window", "embed_dim", "hidden", "layers", "l2")

    def __init__(
        self, *, vocab_size: int, window: int, embed_dim: int = 32, hidden: int = 128, layers: int = 1, l2: float = 1e-5,
    ) -> None:
        super().__init__(n_classes=vocab_size, l2=l2)
        for name, value in (("window", window), ("embed_dim", embed_dim), ("hidden", hidden), ("layers", layers)):
            if int(value) < 1:
                raise ModelError(f"CharLSTM needs {name} >= 1, got {value}.")
        if vocab_size > 2 ** 24:
            raise ModelError(f"vocab_size {vocab_size} is too large: indices are stored as float32 (exact up to 2**24).")
        self.vocab_size, self.window = int(vocab_size), int(window)
        self.embed_dim, self.hidden, self.layers = int(embed_dim), int(hidden), int(layers)
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.lstm = nn.ModuleList(
            LSTMLayer(self.embed_dim if k == 0 else self.hidden, self.hidden) for k in range(self.layers)
        )
        self.output = nn.Linear(self.hidden, self.vocab_size)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.window,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.embedding(x.reshape(x.shape[0], self.window).long())  # (m, T, embed_dim)
        for layer in self.lstm[:-1]:
            seq = layer(seq)
        return self.output(self.lstm[-1].states(seq)[-1])

    def init_parameters(self, generator: torch.Generator) -> None:
        """Embedding ``N(0, 1)`` (PyTorch's default), linear layers as :func:`reset_parameters`, forget-gate biases 1.

        Every draw comes from ``generator`` on the CPU, so a seed gives the same model everywhere.
        """
        reset_parameters(self, generator)  # the embedding (first in module order) is drawn N(0, 1) first
        with torch.no_grad():
            for layer in self.lstm:  # bias order i, f, g, o: remember by default early in training
                layer.input_gates.bias[self.hidden:2 * self.hidden].fill_(1.0)

    def check_data(self, data) -> None:
        """Also refuse inputs that are not character indices in ``[0, vocab_size)``."""
        super().check_data(data)
        if data.is_sparse or len(data) == 0:
            return
        X = np.asarray(data.X)
        if X.min() < 0 or X.max() >= self.vocab_size or not np.array_equal(X, np.round(X)):
            raise ModelError(
                f"{data.name} is not character indices in [0, {self.vocab_size}): the char-lstm model reads each "
                "feature as a character code. Build its data with unlearnkit.data.char_windows."
            )

    # adapter: the embedding is the stem, one block per LSTM layer, the output layer as head
    def first_layer(self) -> nn.Module:
        return self.embedding

    def blocks(self) -> list[nn.Module]:
        return list(self.lstm)

    def head(self) -> nn.Module:
        return self.output


def char_log_perplexity(
    model: CharLSTM, encoded_texts: Sequence[np.ndarray], *, batch_size: int = 1024, device=None
) -> np.ndarray:
    """Log-perplexity in bits of each text under a next-character model.

    For a text ``c_0 .. c_{n-1}`` and the model's window ``T`` this is

        px = sum_{i = T}^{n-1} -log2 p(c_i | c_{i-T} .. c_{i-1}),

    the negative log-likelihood of every character that has a full window of context (the
    first ``T`` characters are the given prefix and are not scored). Lower = more likely; this
    is the scorer :func:`unlearnkit.metrics.exposure.canary_exposure` ranks candidates by.

    Parameters
    ----------
    model:
        A trained :class:`CharLSTM` (any model whose input is ``(window,)`` character codes).
    encoded_texts:
        1-D integer arrays of character indices (e.g. from :meth:`CharVocab.encode`), each at
        least ``window + 1`` long; lengths may differ.
    batch_size:
        Windows per forward pass (bounds memory); windows of all texts are batched together.
    device:
        Where to run; defaults to the model's device.

    Returns
    -------
    numpy.ndarray
        ``(len(encoded_texts),)`` float64 log-perplexities in bits.
    """
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}.")
    window = int(model.input_shape[0])
    vocab = int(model.n_classes)
    texts = [np.asarray(t) for t in encoded_texts]
    for k, t in enumerate(texts):
        if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
            raise DataError(f"text {k} must be a 1-D integer array of character indices; got {t.dtype} of shape {t.shape}.")
        if t.size < window + 1:
            raise DataError(f"text {k} has {t.size} characters; the model scores characters after a {window}-character "
                            f"window, so each text needs at least {window + 1}.")
        if t.min() < 0 or t.max() >= vocab:
            raise DataError(f"text {k} has character indices outside [0, {vocab}); encode it with the model's vocabulary.")
    out = np.zeros(len(texts), dtype=np.float64)
    if not texts:
        return out
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    if device != param.device:  # score a copy: nn.Module.to would move the caller's model
        model = copy.deepcopy(model).to(device)
    codes = torch.as_tensor(np.concatenate(texts).astype(np.int64), device=device)
    lengths = np.array([t.size for t in texts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # target positions (into ``codes``) of every scored character, and the text each belongs to
    targets = np.concatenate([off + np.arange(window, n) for off, n in zip(offsets, lengths)])
    owner = np.repeat(np.arange(len(texts)), lengths - window)
    targets_t = torch.as_tensor(targets, device=device)
    owner_t = torch.as_tensor(owner, device=device)
    steps = torch.arange(-window, 0, device=device)
    total = torch.zeros(len(texts), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, targets.size, batch_size):
                pos = targets_t[start:start + batch_size]
                xb = codes[pos[:, None] + steps].to(param.dtype)
                logp = torch.log_softmax(model(xb).to(torch.float64), dim=-1)
                nll = -logp.gather(1, codes[pos][:, None]).squeeze(1) / math.log(2.0)
                total.index_add_(0, owner_t[start:start + batch_size], nll)
    finally:
        model.train(was_training)
    return total.cpu().numpy()
