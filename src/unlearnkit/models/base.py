"""The base class of every model unlearnkit trains and unlearns, and its objective.

**The objective (one convention, used everywhere).** For a model ``f_theta`` with per-sample
loss ``l(z, theta)`` (cross-entropy; the logistic loss for binary logistic regression) and L2
strength ``l2``, the training objective on a dataset ``D`` is the **sum** over points

    L(theta; D) = sum_{z in D} l(z, theta) + (l2 / 2) * ||theta||^2

with ``theta`` *all* trainable parameters, biases included (so ``L`` is ``l2``-strongly convex
for logistic regression). Two generalisations exist for linear models: a per-parameter L2
weight (:meth:`UnlearnableModel.regularizer_weights`, e.g. an unpenalised intercept as in
scikit-learn) and, for certified unlearning, a random linear term ``b . theta`` (loss
perturbation, :meth:`UnlearnableModel.linear_term`); the regulariser is then
``(1/2) sum_j w_j theta_j^2 + b . theta``. Gradients ``g(S)``, Hessians and gradient residuals in
:mod:`unlearnkit.influence` are those of this sum. Optimisers that prefer a scale-free loss
minimise ``L / n`` instead, which has the same minimiser.
"""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import ModelError


class UnlearnableModel(nn.Module):
    """A classifier with an explicit training objective (see the module docstring).

    Subclasses set ``kind`` and keep every constructor argument as an attribute named in
    ``config_keys`` so that ``type(m)(**m.config)`` rebuilds the architecture. ``forward``
    returns logits: shape ``(m, n_classes)``, or ``(m,)`` for binary logistic regression.
    Subclasses also define the ``input_shape`` property (the shape of one example).
    """

    kind: ClassVar[str] = ""
    config_keys: ClassVar[tuple[str, ...]] = ()
    convex: ClassVar[bool] = False

    def __init__(self, *, n_classes: int, l2: float) -> None:
        super().__init__()
        if n_classes < 2:
            raise ModelError(f"n_classes must be >= 2, got {n_classes}.")
        if not (l2 >= 0 and math.isfinite(l2)):
            raise ModelError(f"l2 must be a finite number >= 0, got {l2}.")
        self.n_classes = int(n_classes)
        self.l2 = float(l2)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (with ``l2``)."""
        return {k: getattr(self, k) for k in self.config_keys}

    def init_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every parameter from ``generator`` (deterministic for a seed); see :func:`reset_parameters`."""
        reset_parameters(self, generator)

    def fresh(self) -> "UnlearnableModel":
        """A new, untrained model of this architecture and objective (the one rebuild every retraining uses).

        The zoo rebuilds from the constructor, ``type(self)(**self.config)``; a wrapped user module
        (:class:`unlearnkit.models.wrap.WrappedModel`) is deep-copied and re-initialised instead.
        Training re-initialises the parameters from its seed either way; the linear term of a
        loss-perturbed model is not carried over (see :func:`unlearnkit.training.retrain`).
        """
        return type(self)(**self.config)

    # ------------------------------------------------------------------ adapter
    # Architecture-specific unlearning methods (MSG and CT act on convolutions, CF-k / EU-k on
    # the last blocks, KDE / RNI / CFW on the stem and the head) reach the network only through
    # these three views (first layer, blocks, classifier head), so that any model that defines them works with every method.
    def first_layer(self) -> nn.Module:
        """The input layer (the "stem"), the module CFW perturbs and KDE resets."""
        raise ModelError(f"The {self.kind} model does not define first_layer(); methods that act on the stem cannot use it.")

    def blocks(self) -> list[nn.Module]:
        """The feature blocks, input to output (CF-k / EU-k train or reset the last ``k``); the head is not one."""
        raise ModelError(f"The {self.kind} model does not define blocks(); block-wise methods (CF-k, EU-k) cannot use it.")

    def head(self) -> nn.Module:
        """The classifier: the output layer, the module KDE and RNI reset (EU-k / CF-k train it with the blocks)."""
        raise ModelError(f"The {self.kind} model does not define head(); methods that reset the classifier cannot use it.")

    # ------------------------------------------------------------------ objective
    def regularizer_weights(self) -> torch.Tensor | None:
        """Per-parameter L2 weights ``w`` (flat, in parameter order), or None for ``l2`` everywhere."""
        return None

    def linear_term(self) -> torch.Tensor | None:
        """The loss-perturbation vector ``b`` (flat, in parameter order), or None."""
        return None

    def regularizer(self) -> torch.Tensor:
        """``(1/2) sum_j w_j theta_j^2 + b . theta`` on the live parameters (differentiable)."""
        theta = torch.cat([p.reshape(-1) for p in self.parameters() if p.requires_grad])
        w, b = self.regularizer_weights(), self.linear_term()
        value = 0.5 * self.l2 * (theta * theta).sum() if w is None else 0.5 * (w * theta * theta).sum()
        return value if b is None else value + (b * theta).sum()

    # ------------------------------------------------------------------ loss
    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``l(z, theta)`` from logits: cross-entropy, shape ``(m,)``."""
        return F.cross_entropy(logits, y, reduction="none")

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def check_data(self, data) -> None:
        """Raise :class:`ModelError` if ``data`` does not fit this model's input and classes."""
        if tuple(data.feature_shape) != tuple(self.input_shape) and data.n_features != math.prod(self.input_shape):
            raise ModelError(
                f"{data.name} has examples of shape {data.feature_shape} but the {self.kind} model expects "
                f"{self.input_shape}. Use the data the model was trained on, or train a new model."
            )
        if data.n_classes > self.n_classes:
            raise ModelError(
                f"{data.name} has {data.n_classes} classes but the {self.kind} model has {self.n_classes} outputs."
            )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape a batch of flattened or shaped inputs to ``(m, *input_shape)``."""
        return x.reshape(x.shape[0], *self.input_shape)


def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every layer inside ``module`` in place, deterministically from ``generator``.

    Weights of linear and convolutional layers follow PyTorch's default (Kaiming-uniform with
    ``a = sqrt(5)``, i.e. uniform in ``+-1/sqrt(fan_in)``); their biases are uniform in
    ``+-1/sqrt(fan_in)``. Batch-norm layers get weight 1, bias 0 and fresh running statistics
    (layer and group norms weight 1, bias 0). Embeddings are ``N(0, 1)`` with the padding row
    zero; ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` weights and biases uniform in ``+-1/sqrt(hidden)``;
    an attention layer's packed input projection uniform in ``+-1/sqrt(embed_dim)`` with zero
    bias (its output projection is a linear layer), all PyTorch's defaults up to the exact
    distribution of the attention projection. Layers are visited in ``module.modules()`` order.
    Draws happen on the CPU and are copied, so a seed gives the same values on every device.
    Parameters owned directly by other module types are left alone.
    """
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd)):
                bound = 1.0 / math.sqrt(sub.weight[0].numel())
                for p in (sub.weight, sub.bias):
                    if p is not None:
                        _uniform(p, bound, generator)
            elif isinstance(sub, nn.Embedding):
                sub.weight.copy_(torch.empty(sub.weight.shape, dtype=sub.weight.dtype).normal_(0.0, 1.0, generator=generator))
                if sub.padding_idx is not None:
                    sub.weight[sub.padding_idx].zero_()
            elif isinstance(sub, nn.RNNBase):
                bound = 1.0 / math.sqrt(sub.hidden_size)
                for p in sub.parameters(recurse=False):
                    _uniform(p, bound, generator)
            elif isinstance(sub, nn.MultiheadAttention):
                bound = 1.0 / math.sqrt(sub.embed_dim)
                for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"):
                    p = getattr(sub, name, None)
                    if p is not None:
                        _uniform(p, bound, generator)
                if sub.in_proj_bias is not None:
                    sub.in_proj_bias.zero_()
            else:
                reset_normalisation(sub)


def _uniform(p: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=generator))


def reset_layers(module: nn.Module) -> frozenset[int]:
    """Ids of the parameters :func:`reset_parameters` re-initialises inside ``module``."""
    kinds = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.RNNBase, nn.MultiheadAttention,
             nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    return frozenset(id(p) for sub in module.modules() if isinstance(sub, kinds) for p in sub.parameters(recurse=False))


def reset_normalisation(module: nn.Module) -> bool:
    """Reset a batch-, layer- or group-norm layer in place (weight 1, bias 0, fresh running statistics).

    Returns whether ``module`` was a normalisation layer.
    """
    if not isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
        return False
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    if getattr(module, "track_running_stats", False):
        module.reset_running_stats()
    return True


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in evaluation mode for the ``with`` block; every submodule's own mode is restored after.

    Restoring each submodule (not ``model.train(was_training)``) keeps mixed modes as they were,
    e.g. a wrapped user module in training mode, or one with a frozen batch norm in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits of shape ``(m, C)``; a binary model's single logit ``z`` becomes ``[0, z]`` (so softmax = sigmoid)."""
    return torch.stack([torch.zeros_like(logits), logits], dim=1) if logits.ndim == 1 else logits
