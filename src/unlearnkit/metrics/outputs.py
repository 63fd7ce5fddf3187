"""A model's outputs on a dataset — the raw material of every prediction-based metric.

All signals are derived from the logits in float64 so that every metric sees the same numbers:

* ``probs``: softmax of the logits (binary logistic regression's single logit ``z`` is read as
  the two-class logits ``(0, z)``);
* ``losses``: per-sample cross-entropy ``-log p_y`` (the models' own training loss);
* ``correct``: ``1[argmax p = y]``;
* ``confidence``: ``p_y``;
* ``logit_scaled``: ``log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j``, the statistic of
  LiRA (Carlini et al., 2022), computed from the logits so it stays finite when ``p_y`` rounds
  to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MetricError, ModelError
from unlearnkit.models.base import UnlearnableModel, evaluation


@dataclass(frozen=True, eq=False)
class ModelOutputs:
    """Logits ``(n, C)`` of a model on ``n`` labelled rows, and the signals derived from them."""

    logits: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or self.logits.shape[0] != self.labels.shape[0]:
            raise MetricError(f"logits {self.logits.shape} and labels {self.labels.shape} do not match.")
        if not np.all(np.isfinite(self.logits)):
            raise MetricError("The model produced non-finite logits; it cannot be evaluated (check for divergence).")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @cached_property
    def log_probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    @cached_property
    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs)

    @cached_property
    def losses(self) -> np.ndarray:
        return -self.log_probs[np.arange(len(self)), self.labels]

    @cached_property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @cached_property
    def correct(self) -> np.ndarray:
        return (self.predictions == self.labels).astype(np.float64)

    @cached_property
    def confidence(self) -> np.ndarray:
        return self.probs[np.arange(len(self)), self.labels]

    @cached_property
    def logit_scaled(self) -> np.ndarray:
        rows = np.arange(len(self))
        z_y = self.logits[rows, self.labels]
        others = self.logits.copy()
        others[rows, self.labels] = -np.inf
        m = others.max(axis=1)
        return z_y - (m + np.log(np.exp(others - m[:, None]).sum(axis=1)))


def logits_matrix(model: UnlearnableModel, data: Dataset, *, batch_size: int = 4096, device=None) -> np.ndarray:
    """``(n, C)`` float64 logits of ``model`` on ``data``, in batches of ``batch_size`` rows."""
    if not isinstance(model, UnlearnableModel):
        raise MetricError(f"Expected an unlearnkit model, got {type(model).__name__}.")
    if not isinstance(data, Dataset):
        raise MetricError(f"Expected an unlearnkit Dataset, got {type(data).__name__}.")
    if batch_size < 1:
        raise MetricError(f"batch_size must be >= 1, got {batch_size}.")
    try:
        model.check_data(data)
    except ModelError as exc:
        raise MetricError(str(exc)) from None
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    net = model if param.device == device else _moved(model, device)
    out = []
    with evaluation(net), torch.no_grad():  # every submodule's mode restored after (a wrapped module's included)
        for xb, _ in data.batches(batch_size, device=device, dtype=param.dtype):
            z = net(xb)
            if z.ndim == 1:  # binary logistic regression: p(y=1) = sigmoid(z)
                z = torch.stack([torch.zeros_like(z), z], dim=1)
            out.append(z.detach().to("cpu", torch.float64).numpy())
    if not out:
        return np.zeros((0, model.n_classes), dtype=np.float64)
    return np.concatenate(out)


def model_outputs(model: UnlearnableModel, data: Dataset, *, batch_size: int = 4096, device=None) -> ModelOutputs:
    """:class:`ModelOutputs` of ``model`` on ``data`` (the model is not modified)."""
    return ModelOutputs(logits_matrix(model, data, batch_size=batch_size, device=device), np.asarray(data.y))


def _moved(model: UnlearnableModel, device: torch.device) -> UnlearnableModel:
    import copy

    return copy.deepcopy(model).to(device)
