"""A flat-parameter, functional view of a model for ``torch.func``.

Influence computations treat ``theta`` as one vector of ``p`` numbers, in the order of
``model.named_parameters()``. :class:`FlatModel` converts between that vector and the model's
parameter dict and evaluates per-sample losses as a pure function of ``theta``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterator

import torch
from torch.func import functional_call

from unlearnkit.models.base import UnlearnableModel


@contextlib.contextmanager
def differentiable_kernels(recurrent: bool = True) -> Iterator[None]:
    """Route the forward pass through kernels that ``torch.func`` can differentiate in every mode.

    In eval mode PyTorch runs ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` through
    fused "fast path" kernels, and ``nn.LSTM`` / ``nn.GRU`` on the CPU through oneDNN (mkldnn)
    kernels, and scaled dot-product attention through flash kernels; none has forward-mode
    derivatives, which Hessian- and GGN-vector products need.
    Inside this block they are switched off (the same mathematics through the composite
    kernels; oneDNN only with ``recurrent=True``, as convolutions are faster with it); the
    previous settings are restored on exit.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration")  # printed by mkldnn.flags() on some builds
            mkldnn = torch.backends.mkldnn.flags(enabled=False) if recurrent else contextlib.nullcontext()
            mkldnn.__enter__()
        try:
            with sdpa_kernel(SDPBackend.MATH):
                yield
        finally:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="TF32 acceleration")
                mkldnn.__exit__(None, None, None)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _same_in_training_mode(model) -> bool:
    """Whether ``model``'s own class declares (class attribute ``same_in_training_mode``, not inherited: a subclass may
    change ``forward``) that its function does not depend on ``.training``, and every submodule is a plain
    ``nn.Linear`` (which cannot): then it is evaluated as it is."""
    return bool(type(model).__dict__.get("same_in_training_mode", False)) and all(
        type(m) is torch.nn.Linear for m in model.modules() if m is not model)


class FlatModel:
    """``theta -> per-sample losses`` for an :class:`UnlearnableModel`, with ``theta`` flat.

    ``names`` restricts ``theta`` to some parameters (e.g. the classifier head, as the reference
    code's CIFAR experiment updates only its last layers); the others stay fixed at the model's
    values, and the objective's regulariser counts only the selected ones. Default: every
    trainable parameter. The model itself is only read; :meth:`to_model` builds a new model from
    a vector.

    Losses are those of the model in **evaluation mode**: a model with any submodule in training
    mode (a wrapped user module, say) is deep-copied and the copy put in eval mode (unless the model
    class declares ``same_in_training_mode`` and holds only ``nn.Linear`` layers), so Dropout is
    off and batch norm normalises with its running statistics, which enter as constant buffers
    (never updated here). The caller's model and its ``.training`` flags are left as they are;
    models built by :meth:`to_model` are in eval mode.
    """

    def __init__(self, model: UnlearnableModel, names: list[str] | None = None) -> None:
        if any(m.training for m in model.modules()) and not _same_in_training_mode(model):
            model = copy.deepcopy(model).eval()
        self.model = model
        self.recurrent = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if names is not None:
            unknown = sorted(set(names) - set(trainable))
            if unknown or not names:
                from unlearnkit.errors import ModelError

                raise ModelError(f"Cannot restrict the update to parameters {unknown or names}: the {model.kind} model's "
                                 f"trainable parameters are {trainable}.")
            trainable = [n for n in trainable if n in set(names)]
        self.names = trainable
        params = dict(model.named_parameters())
        # parameters outside theta enter as constants (detached: no autograd graph through them)
        self.fixed = {n: p.detach() for n, p in params.items() if n not in set(trainable)}
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        self.buffers = dict(model.named_buffers())
        self.l2 = model.l2
        first = params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        w, b = model.regularizer_weights(), model.linear_term()
        if names is not None and (w is not None or b is not None) and len(self.names) < len(list(model.parameters())):
            from unlearnkit.errors import ModelError

            raise ModelError(f"The {model.kind} model has per-parameter regulariser weights or a loss perturbation; "
                             "update all its parameters.")
        self.reg = (torch.full((self.n_params,), self.l2, dtype=self.dtype, device=self.device) if w is None
                    else w.detach().to(dtype=self.dtype, device=self.device))
        self.b = None if b is None else b.detach().to(dtype=self.dtype, device=self.device)

    def reg_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of the regulariser: ``w * theta (+ b)``."""
        out = self.reg * theta
        return out if self.b is None else out + self.b

    def reg_value(self, theta: torch.Tensor) -> torch.Tensor:
        """The regulariser ``(1/2) sum_j w_j theta_j^2 (+ b . theta)``."""
        out = 0.5 * (self.reg * theta * theta).sum()
        return out if self.b is None else out + self.b @ theta

    @property
    def sparse_rows_ok(self) -> bool:
        """Whether closed forms over all parameters apply (theta covers every trainable parameter)."""
        return not self.fixed

    @property
    def n_params(self) -> int:
        return int(sum(self.numels))

    def theta(self) -> torch.Tensor:
        """The model's parameters as one detached vector (a copy)."""
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        # torch.split, not slicing: under vmap(grad) a slice's gradient is scattered into a full-size zero buffer per
        # parameter, split's gradients are concatenated once (measured 2.1 s -> 1.7 s on a char-LSTM batch)
        parts = torch.split(theta, self.numels)
        return {name: part.view(shape) for name, shape, part in zip(self.names, self.shapes, parts)}

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``l(z_i, theta)``, shape ``(m,)``."""
        logits = self.logits(theta, X)
        return self.model.per_sample_loss(logits, y)

    def logits(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """The model's logits with the selected parameters set to ``theta`` (the others as they are)."""
        with differentiable_kernels(self.recurrent):
            return functional_call(self.model, {**self.fixed, **self.unflatten(theta), **self.buffers}, (X,))

    def loss_sum(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i l(z_i, theta)`` over the batch (no regulariser)."""
        return self.losses(theta, X, y).sum()

    def single_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``l(z, theta)`` for one example (``x`` without batch axis), for ``vmap``."""
        return self.losses(theta, x.unsqueeze(0), y.unsqueeze(0))[0]

    def to_model(self, theta: torch.Tensor) -> UnlearnableModel:
        """A new model (deep copy of the original) holding parameters ``theta``."""
        if not torch.all(torch.isfinite(theta)):
            from unlearnkit.errors import SolverError

            raise SolverError("The updated parameters contain NaN or infinite values; the model was not changed.")
        new = copy.deepcopy(self.model).eval()
        if hasattr(new, "train_seconds"):
            del new.train_seconds  # the original's training time is not this model's cost
        with torch.no_grad():
            params = dict(new.named_parameters())
            for name, value in self.unflatten(theta).items():
                params[name].copy_(value)
        return new
