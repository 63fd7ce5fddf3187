"""Training primitives the deep-unlearning methods share: batches, optimisers, schedules, losses.

Every function works on whatever device the tensors are on; nothing here picks a device.
Randomness comes only from the ``torch.Generator`` passed in (a CPU generator: draws are
made on the CPU and copied, so a seed gives the same numbers on every device).
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MethodError
from unlearnkit.models.base import class_logits  # noqa: F401  (re-exported for the methods)
from unlearnkit.training import batch_bounds as _training_batch_bounds

log = logging.getLogger(__name__)


class Tensors:
    """A data set as ``(X, y)`` tensors on one device, with seeded mini-batches."""

    def __init__(self, data: Dataset, *, device, dtype) -> None:
        self.name = data.name
        self.X, self.y = data.tensors(device=device, dtype=dtype)
        self.n_classes = data.n_classes

    @classmethod
    def of(cls, X: torch.Tensor, y: torch.Tensor, *, n_classes: int, name: str) -> "Tensors":
        """Tensors already on their device (rows built by a method: noise, relabelled or sampled rows)."""
        out = object.__new__(cls)
        out.name, out.n_classes, out.X, out.y = name, n_classes, X, y
        return out

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches of at most ``batch_size`` rows; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.y.device)
        for start, stop in batch_bounds(n, batch_size):
            idx = order[start:stop]
            yield self.X[idx], self.y[idx]

    def n_batches(self, batch_size: int) -> int:
        return len(batch_bounds(len(self), batch_size))

    def sample(self, k: int, generator: torch.Generator) -> "Tensors":
        """``k`` rows drawn without replacement (all rows if ``k >= n``)."""
        idx = torch.randperm(len(self), generator=generator)[:k].to(self.y.device)
        return Tensors.of(self.X[idx], self.y[idx], n_classes=self.n_classes, name=self.name)


class StreamingTensors(Tensors):
    """A streamed data set (:class:`~unlearnkit.data.torchdata.StreamingDataset`) seen as :class:`Tensors`.

    Labels are a tensor on the device; features are read only for the rows of each mini-batch, in
    the same seeded order as :class:`Tensors` gives, so a method sees the same batches either way.
    ``X`` (the whole set as one tensor) raises :class:`MethodError`: a method that needs it cannot run
    on streamed data. Each pass (:meth:`batches`, :meth:`read`) uses one ``DataLoader``, so its
    worker processes prefetch the next batches.
    """

    def __init__(self, data: Dataset, *, device, dtype) -> None:
        self.name, self.n_classes, self.data = data.name, data.n_classes, data
        self.device, self.dtype = device, dtype
        self.y = torch.as_tensor(data.y, device=device)

    @property
    def X(self) -> torch.Tensor:  # noqa: N802
        raise MethodError(
            f"This method needs all {len(self)} rows of {self.name} as one tensor, but they are streamed from a "
            f"{type(self.data.source).__name__}, and a streamed retain, training or validation set is only ever read "
            "batch by batch. Use a method that works batch by batch (such as ft, ng+, srl or ssd), or load the data "
            "in memory with from_torch(..., stream=False) if it fits."
        )

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Features of the rows at positions ``idx`` (one read, in fetches of the data set's ``batch_size``)."""
        return next(iter(self.read([idx.cpu()])))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        groups = [order[start:stop] for start, stop in batch_bounds(n, batch_size)]
        for idx, xb in zip(groups, self.read(groups)):  # one loader for the pass: its workers prefetch
            yield xb, self.y[idx.to(self.y.device)]

    def read(self, groups: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Features of each group of positions, on the device (one loader for all the groups)."""
        for xb in self.data.read_batches([g.cpu().numpy() for g in groups]):
            yield xb.to(device=self.device, dtype=self.dtype)

    def sample(self, k: int, generator: torch.Generator) -> Tensors:
        idx = torch.randperm(len(self), generator=generator)[:k]
        return Tensors.of(self.rows(idx), self.y[idx.to(self.y.device)], n_classes=self.n_classes, name=self.name)


class _Joined(StreamingTensors):
    """The rows of ``first`` then ``second`` with labels ``y``, features read per batch (either part may be streamed)."""

    def __init__(self, first: Tensors, second: Tensors, y: torch.Tensor, name: str) -> None:
        self.first, self.second, self.y, self.name, self.n_classes = first, second, y, name, first.n_classes

    @property
    def X(self) -> torch.Tensor:  # noqa: N802
        return self.first.X  # raises the streamed part's MethodError

    def read(self, groups: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Features of each group, the rows of each part read by one loader for the whole pass."""
        groups = [g.cpu() for g in groups]
        split = len(self.first)
        mine = [g < split for g in groups]

        def reader(part: Tensors, selections: list[torch.Tensor]) -> Iterator[torch.Tensor]:
            if isinstance(part, StreamingTensors):
                return part.read(selections)
            return (part.X[i.to(part.y.device)] for i in selections)

        firsts = reader(self.first, [g[m] for g, m in zip(groups, mine)])
        seconds = reader(self.second, [g[~m] - split for g, m in zip(groups, mine)])
        for g, m, a, b in zip(groups, mine, firsts, seconds):
            out = a.new_empty((g.numel(), *a.shape[1:]))
            out[m.to(out.device)] = a
            out[(~m).to(out.device)] = b.to(a.dtype)
            yield out

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return next(iter(self.read([idx.cpu()])))


def tensors_of(data: Dataset, *, device, dtype, small: bool = False) -> Tensors:
    """:class:`Tensors` of ``data``; :class:`StreamingTensors` for streamed data.

    In-memory data is one tensor on the device. Streamed data is read batch by batch, never
    copied whole, except for a set the caller marks ``small`` (a forget set, corrected rows) whose
    features fit in the data set's ``materialize_bytes``: that one is loaded as one tensor.
    """
    if getattr(data, "streaming", False):
        if not (small and data.fits(dtype)):
            return StreamingTensors(data, device=device, dtype=dtype)
        log.debug("%s: %d streamed rows (%d bytes) loaded as one tensor", data.name, len(data), data.nbytes(dtype))
    return Tensors(data, device=device, dtype=dtype)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batches as training makes them (:func:`unlearnkit.training.batch_bounds`); refuses ``batch_size < 1``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MethodError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    return _training_batch_bounds(n, batch_size)


def cycle(tensors: Tensors, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches (a new permutation each pass), for pairing with another loader."""
    if len(tensors) == 0:
        raise MethodError(f"{tensors.name} is empty; the method needs rows in it.")
    while True:
        yield from tensors.batches(batch_size, generator)


# ---------------------------------------------------------------------------- logits and losses
def cross_entropy(model: nn.Module, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-sample loss of ``model`` (its own loss: cross-entropy, or the logistic loss), optionally class-weighted."""
    losses = model.per_sample_loss(logits, y)
    return losses.mean() if weight is None else (losses * weight[y]).mean()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (Hinton's distillation loss)."""
    t = max(float(temperature), 1e-3)
    log_s = F.log_softmax(class_logits(student_logits) / t, dim=1)
    p_t = F.softmax(class_logits(teacher_logits) / t, dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean") * t * t


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of ``softmax(logits)`` in nats."""
    logp = F.log_softmax(class_logits(logits), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def balanced_class_weights(y: torch.Tensor, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """``(n / (C_present * count_c)) ** power`` per class (scikit-learn's "balanced" for power 1); 0 for absent classes."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
    present = counts > 0
    w = torch.zeros(n_classes, dtype=torch.float64, device=y.device)
    w[present] = (y.numel() / (int(present.sum()) * counts[present])) ** power
    return w.to(torch.float32)


# ---------------------------------------------------------------------------- optimisers and schedules
def trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def sgd(params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def cosine(base_lr: float, step: int, total: int, eta_min: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``total`` steps (``step`` counts from 0)."""
    if total <= 1:
        return base_lr
    return eta_min + 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * step / total))


def step_decay(base_lr: float, epoch: int, epochs: int, rate: float, *, one_based: bool = False) -> float:
    """``base_lr`` times ``rate`` for each of 50 %, 80 % and 90 % of the epochs that has been passed.

    As the reference code counts: epoch ``e`` (``e + 1`` with ``one_based``, SCRUB's counting)
    is past fraction ``f`` when ``e > int(f * epochs)``. CF-k / EU-k count from 0.
    """
    e = epoch + 1 if one_based else epoch
    return base_lr * rate ** sum(e > int(f * epochs) for f in (0.5, 0.8, 0.9))


def triangle(base_lr: float, epoch: int, epochs: int) -> float:
    """MSG's schedule (the reference's LinearAnnealingLR): up to the peak at epoch ``A = (E + 1) // 2``, then down.

    Epoch ``e < A`` (0-based) gets ``base_lr (e + 1) / A``, later epochs ``base_lr (E - e) / (E + 1 - A)``;
    for ``E = 5``: 1/3, 2/3, 1, 2/3, 1/3 of ``base_lr``.
    """
    peak = max(1, (epochs + 1) // 2)
    if epoch < peak:
        return base_lr * (epoch + 1) / peak
    return base_lr * (epochs - epoch) / (epochs + 1 - peak)


def fit(
    model: nn.Module,
    data: Tensors,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lr_at: Callable[[int], float] | None = None,
    after_backward: Callable[[], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> int:
    """Mini-batch training for ``epochs`` passes; returns the number of optimiser steps.

    ``loss_fn(x, y, logits)`` defaults to the model's mean loss. ``lr_at(epoch)`` sets the
    learning rate at the start of each epoch; ``after_backward()`` runs between ``backward`` and
    ``step`` (gradient masks); ``before_epoch(epoch)`` runs first in each epoch.
    """
    steps = 0
    model.train()
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        if lr_at is not None:
            set_lr(optimizer, lr_at(epoch))
        for xb, yb in data.batches(batch_size, generator):
            logits = model(xb)
            loss = cross_entropy(model, logits, yb) if loss_fn is None else loss_fn(xb, yb, logits)
            step(optimizer, loss, after_backward)
            steps += 1
    return steps


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, after_backward: Callable[[], None] | None = None) -> None:
    """``zero_grad, backward, [after_backward], step``; refuses a non-finite loss (the method diverged)."""
    if not torch.isfinite(loss):
        raise MethodError(f"The unlearning loss became {float(loss.detach())}: the method diverged. Lower its learning rate "
                          "(or the number of epochs) and run it again.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()


def other_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label for each row drawn uniformly from the ``n_classes - 1`` classes other than ``y``.

    ``(y + s) mod C`` with ``s`` uniform on ``{1, ..., C-1}``, so the true label is never drawn
    (for ``C = 2`` every label is flipped). Drawn on the CPU from ``generator``.
    """
    if n_classes < 2:
        raise MethodError(f"Random relabelling needs at least 2 classes, got {n_classes}.")
    shift = torch.randint(1, n_classes, tuple(y.shape), generator=generator).to(y.device)
    return (y + shift) % n_classes


def relabel_fit(
    model: nn.Module,
    retain: Tensors,
    forget: Tensors,
    *,
    n_classes: int,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    after_backward: Callable[[], None] | None = None,
) -> int:
    """Random-relabel training (SRL, SalUn): each epoch the forget rows get fresh :func:`other_labels`,
    then one shuffled pass of the model's mean loss over ``retain`` and the relabelled forget rows
    together. Returns the number of optimiser steps."""
    streamed = isinstance(retain, StreamingTensors) or isinstance(forget, StreamingTensors)
    X = None if streamed else torch.cat([retain.X, forget.X])
    steps = 0
    for _ in range(epochs):
        y = torch.cat([retain.y, other_labels(forget.y, n_classes, generator)])
        name = f"{retain.name}+relabelled {forget.name}"
        union = _Joined(retain, forget, y, name) if streamed else Tensors.of(X, y, n_classes=retain.n_classes, name=name)
        steps += fit(model, union, epochs=1, batch_size=batch_size, optimizer=optimizer, generator=generator,
                     after_backward=after_backward)
    return steps


# ---------------------------------------------------------------------------- parameter surgery
def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (a teacher or a reference)."""
    import copy

    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def randn_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``t``, drawn on the CPU from ``generator``."""
    return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)


def rand_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform ``[0, 1)`` noise shaped like ``t``, drawn on the CPU from ``generator``."""
    return torch.rand(t.shape, generator=generator, dtype=t.dtype).to(t.device)


def kaiming_normal_fan_out(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-normal draws for a weight shaped like ``t`` (fan-out mode, ReLU gain), as MSG and EU-k use."""
    fan_out = t.shape[0] * (t[0][0].numel() if t.ndim > 2 else 1)
    std = math.sqrt(2.0 / max(fan_out, 1))
    return randn_like(t, generator) * std


def kaiming_uniform_fan_out(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform draws (fan-out mode, ReLU gain): ``U(+-sqrt(6 / fan_out))``, EU-k's re-initialisation."""
    fan_out = t.shape[0] * (t[0][0].numel() if t.ndim > 2 else 1)
    bound = math.sqrt(6.0 / max(fan_out, 1))
    return (2 * rand_like(t, generator) - 1) * bound


def convolutions(model: nn.Module) -> list[nn.Conv2d]:
    """Every ``nn.Conv2d`` in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def require_convolutions(model: nn.Module, method: str) -> list[nn.Conv2d]:
    convs = convolutions(model)
    if not convs:
        raise MethodError(f"{method} acts on convolution kernels and the {getattr(model, 'kind', type(model).__name__)} "
                          "model has none; use it with a cnn, resnet18 or rescnn model.")
    return convs


def is_norm(name: str, module_of: dict[str, nn.Module]) -> bool:
    """Whether parameter ``name`` belongs to a normalisation layer."""
    owner = module_of.get(name.rsplit(".", 1)[0]) if "." in name else None
    return isinstance(owner, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
