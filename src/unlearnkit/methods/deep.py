"""The base class of the deep-unlearning methods, and the hyperparameters they share.

A deep method is registered with :func:`unlearnkit.methods.register` and subclasses
:class:`DeepMethod`, implementing one function::

    def run(self, net, task, ctx) -> dict | None

``net`` is a copy of the model on the target device in training mode, which ``run`` edits in
place; ``task`` is the :class:`~unlearnkit.methods.task.Task` (retain, forget, val);
``ctx`` is a :class:`RunContext` (the frozen original, the seeded generator, tensors of the
task's sets on the device). What ``run`` returns becomes the result's diagnostics. Timing
covers ``run`` only. The input model is never modified, and a run whose parameters end up
non-finite raises :class:`~unlearnkit.errors.MethodError` instead of returning them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from unlearnkit import timing
from unlearnkit.errors import MethodError
from unlearnkit.influence.updates import UnlearnResult
from unlearnkit.methods.base import Hyperparameter, Method, info
from unlearnkit.methods.loops import Tensors, frozen_copy, tensors_of
from unlearnkit.methods.task import Task
from unlearnkit.models.base import UnlearnableModel

DEEPUNLEARN = ("Cadet, Borovykh, Malekzadeh, Ahmadi-Abhari, Haddadi. Deep Unlearn: Benchmarking Machine Unlearning "
               "for Image Classification. arXiv:2410.01276 (2024); code github.com/xcadet/deepunlearn.")
DU = "DeepUnlearn default"
"""Source tag for a default taken from the DeepUnlearn reference code's configuration of the method."""


def generic(*, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 256, epochs: int = 5,
            source: str = DU, epochs_help: str = "passes over the retain set") -> tuple[Hyperparameter, ...]:
    """The hyperparameters every training-based method has, with DeepUnlearn's search ranges."""
    return (
        Hyperparameter("lr", float, lr, "learning rate", "log-uniform [1e-5, 1e-1] (DeepUnlearn search)", source),
        Hyperparameter("momentum", float, momentum, "SGD momentum", "[0, 1); DeepUnlearn fixes 0.9", source),
        Hyperparameter("weight_decay", float, weight_decay, "SGD weight decay", "log-uniform [1e-5, 1e-1] (DeepUnlearn search)", source),
        Hyperparameter("batch_size", int, batch_size, "mini-batch size", "{64, 128, 256} (DeepUnlearn search)", source),
        Hyperparameter("epochs", int, epochs, epochs_help, ">= 0; DeepUnlearn caps at 20 % of the training epochs", source),
        SEED,
    )


SEED = Hyperparameter("seed", int, 0, "seed of the method's own randomness (shuffling, noise, re-initialisation)",
                      ">= 0", "DeepUnlearn seeds every unlearning run with 123; any fixed seed")


@dataclass
class RunContext:
    """What :meth:`DeepMethod.run` gets besides the network and the task."""

    original: UnlearnableModel
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    task: Task
    _tensors: dict = field(default_factory=dict)

    def tensors(self, part: str) -> Tensors:
        """``retain``, ``forget``, ``corrections`` or ``val`` as tensors on the device (cached)."""
        if part not in self._tensors:
            data = getattr(self.task, part)
            if data is None:
                raise MethodError(f"This method needs a {part} set; pass val=... to unlearn().")
            self._tensors[part] = tensors_of(data, device=self.device, dtype=self.dtype,
                                             small=part in ("forget", "corrections"))
        return self._tensors[part]

    @property
    def retain(self) -> Tensors:
        return self.tensors("retain")

    @property
    def forget(self) -> Tensors:
        return self.tensors("forget")

    @property
    def n_classes(self) -> int:
        return self.original.n_classes


class DeepMethod(Method):
    """Base of every method that edits or trains a copy of the model (see the module docstring).

    The constructor takes the registered hyperparameters as keywords and stores them as
    attributes; nothing else happens there.
    """

    name: ClassVar[str] = ""
    uses_forget: ClassVar[bool] = True
    """False for methods that by design never look at the forget set (FT, CT, CF-k, EU-k, ...)."""
    needs_val: ClassVar[bool] = False

    def __init__(self, **hyperparameters) -> None:
        valid = {h.name for h in info(self.name).hyperparameters}
        unknown = sorted(set(hyperparameters) - valid)
        missing = sorted(valid - set(hyperparameters))
        if unknown or missing:
            raise MethodError(f"{self.name}: build it with unlearnkit.methods.make({self.name!r}, ...); "
                              f"unknown {unknown}, missing {missing}.")
        for key, value in hyperparameters.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------ the one verb
    def unlearn(self, model: UnlearnableModel, data, changes, *, val=None, device=None) -> UnlearnResult:
        """Unlearn ``changes`` of ``data`` from ``model``; returns a new model (``model`` is untouched)."""
        if not isinstance(model, UnlearnableModel):
            raise MethodError(f"model must be an unlearnkit model, got {type(model).__name__}.")
        task = Task.build(data, changes, val)
        model.check_data(data)
        if self.needs_val and task.val is None:
            raise MethodError(f"{self.name} needs held-out validation data: pass val=... (it never sees the test set).")
        self.check(model)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        net = copy.deepcopy(model).to(device)
        if hasattr(net, "train_seconds"):
            del net.train_seconds  # the original's training time is not this model's cost
        for p in net.parameters():
            p.requires_grad_(True)
        ctx = RunContext(frozen_copy(net), torch.Generator(device="cpu").manual_seed(int(self.seed)), device,
                         next(net.parameters()).dtype, task)
        start = timing.start()
        net.train()
        diagnostics = self.run(net, task, ctx) or {}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = timing.since(start)
        net.eval()
        net.zero_grad(set_to_none=True)
        for p in net.parameters():
            p.requires_grad_(True)
        bad = [n for n, p in (*net.named_parameters(), *net.named_buffers())
               if p.is_floating_point() and not torch.all(torch.isfinite(p))]
        if bad:
            raise MethodError(f"{self.name} produced non-finite parameters ({bad[0]}, ...): it diverged. "
                              "Lower its learning rate or epochs; the input model is unchanged.")
        return UnlearnResult(net, self.name, seconds, task.n_affected, diagnostics=dict(diagnostics))

    # ------------------------------------------------------------------ subclass hooks
    def check(self, model: UnlearnableModel) -> None:
        """Raise :class:`MethodError` if the method cannot apply to ``model`` (default: it can)."""

    def run(self, net: UnlearnableModel, task: Task, ctx: RunContext) -> dict | None:
        raise NotImplementedError
