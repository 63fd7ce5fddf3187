"""Closeness to retraining: parameters, output distributions, predictions and the gradient residual."""

from __future__ import annotations

import numpy as np
import torch

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MetricError, ModelError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual as _residual
from unlearnkit.metrics.base import Family, MetricValue, Need, register
from unlearnkit.metrics.outputs import ModelOutputs
from unlearnkit.models.base import UnlearnableModel

WARNECKE = "Warnecke et al., 'Machine Unlearning of Features and Labels' (NDSS 2023)"
GOLATKAR = "Golatkar et al., 'Eternal Sunshine of the Spotless Net' (CVPR 2020): KL to the retrained outputs"


def check_same_architecture(a: UnlearnableModel, b: UnlearnableModel, what: str = "models") -> None:
    """Raise :class:`MetricError` unless ``a`` and ``b`` have the same kind and parameter shapes."""
    for m in (a, b):
        if not isinstance(m, UnlearnableModel):
            raise MetricError(f"Expected unlearnkit models, got {type(m).__name__}.")
    shapes_a = [(n, tuple(p.shape)) for n, p in a.named_parameters()]
    shapes_b = [(n, tuple(p.shape)) for n, p in b.named_parameters()]
    if a.kind != b.kind or shapes_a != shapes_b:
        diff = next(((x, y) for x, y in zip(shapes_a, shapes_b) if x != y), None)
        where = f" (first difference: {diff[0]} vs {diff[1]})" if diff else ""
        raise MetricError(f"The {what} differ in architecture: {a.kind} with {sum(p.numel() for p in a.parameters())} "
                          f"parameters vs {b.kind} with {sum(p.numel() for p in b.parameters())}{where}. "
                          "Compare models of the same architecture.")


def _theta(model: UnlearnableModel) -> torch.Tensor:
    return FlatModel(model).theta().detach().to("cpu", torch.float64)


def parameter_distance(model: UnlearnableModel, reference: UnlearnableModel) -> float:
    """``||theta - theta_ref||_2`` over all trainable parameters."""
    check_same_architecture(model, reference)
    return float(torch.linalg.vector_norm(_theta(model) - _theta(reference)))


def relative_distance(model: UnlearnableModel, reference: UnlearnableModel) -> float:
    """``||theta - theta_ref||_2 / ||theta_ref||_2``."""
    check_same_architecture(model, reference)
    ref = _theta(reference)
    norm = float(torch.linalg.vector_norm(ref))
    if norm == 0:
        raise MetricError("The reference model's parameters are all zero; the relative distance is undefined.")
    return float(torch.linalg.vector_norm(_theta(model) - ref)) / norm


def _check_pair(a: ModelOutputs, b: ModelOutputs) -> None:
    if a.logits.shape != b.logits.shape:
        raise MetricError(f"Outputs of shapes {a.logits.shape} and {b.logits.shape} cannot be compared "
                          "(different datasets or numbers of classes).")
    if not np.array_equal(a.labels, b.labels):
        raise MetricError("The two outputs are on different rows (their labels differ).")


def kl_divergence(reference: ModelOutputs, outputs: ModelOutputs) -> float:
    """``(1/n) sum_i KL(p_ref(x_i) || p(x_i)) = (1/n) sum_i sum_c p_ref,ic (log p_ref,ic - log p_ic)``."""
    _check_pair(reference, outputs)
    if len(reference) == 0:
        raise MetricError("KL divergence on an empty dataset is undefined.")
    kl = (reference.probs * (reference.log_probs - outputs.log_probs)).sum(axis=1)
    return float(np.mean(np.maximum(kl, 0.0)))


def agreement(reference: ModelOutputs, outputs: ModelOutputs) -> float:
    """``(1/n) sum_i 1[argmax p(x_i) = argmax p_ref(x_i)]``."""
    _check_pair(reference, outputs)
    if len(reference) == 0:
        raise MetricError("Prediction agreement on an empty dataset is undefined.")
    return float(np.mean(reference.predictions == outputs.predictions))


def gradient_residual(model: UnlearnableModel, data: Dataset, *, batch_size: int = 1024) -> float:
    """``||grad_theta L(theta; D~)||_2`` of the summed objective (see :mod:`unlearnkit.models.base`)."""
    try:
        model.check_data(data)
    except ModelError as exc:
        raise MetricError(str(exc)) from None
    return _residual(FlatModel(model), data, batch_size=batch_size)


# ---------------------------------------------------------------------------- registered
def _checked(ctx, subject):
    model, ref = ctx.model(subject), ctx.model("retrained")
    check_same_architecture(model, ref, f"{subject} and retrained models")
    return model, ref


@register("l2_distance", family=Family.CLOSENESS, higher_is_better=False, ideal="0", needs=(Need.RETRAINED,),
          reference=WARNECKE + " (fidelity: distance to the retrained parameters)")
def l2_distance(ctx, subject):
    """Euclidean distance to the retrained model's parameters.

    ``||theta - theta_R||_2`` over all trainable parameters (biases included); lower is better.
    Meaningful for convex models, whose optimum is unique; for deep models retraining lands
    elsewhere in parameter space, so read it next to the original model's value.
    """
    return parameter_distance(*_checked(ctx, subject))


@register("relative_distance", family=Family.CLOSENESS, higher_is_better=False, ideal="0", needs=(Need.RETRAINED,),
          reference=WARNECKE)
def relative_distance_metric(ctx, subject):
    """Distance to the retrained parameters relative to their norm.

    ``||theta - theta_R||_2 / ||theta_R||_2``; lower is better (0 for retraining itself).
    """
    return relative_distance(*_checked(ctx, subject))


def _kl(ctx, subject, split):
    _checked(ctx, subject)
    return kl_divergence(ctx.outputs("retrained", split), ctx.outputs(subject, split))


@register("kl_forget", family=Family.CLOSENESS, higher_is_better=False, ideal="0", needs=(Need.FORGET, Need.RETRAINED),
          reference=GOLATKAR)
def kl_forget(ctx, subject):
    """KL divergence from the retrained model's output distribution, on the forget set.

    ``(1/|D_f|) sum_{x in D_f} sum_c p_R(c|x) log(p_R(c|x) / p(c|x))``, natural log; lower is
    better, 0 when the outputs match retraining.
    """
    return _kl(ctx, subject, Need.FORGET)


@register("kl_test", family=Family.CLOSENESS, higher_is_better=False, ideal="0", needs=(Need.TEST, Need.RETRAINED),
          reference=GOLATKAR)
def kl_test(ctx, subject):
    """KL divergence from the retrained model's output distribution, on the test set.

    As ``kl_forget``, averaged over the test rows; lower is better.
    """
    return _kl(ctx, subject, Need.TEST)


def _agree(ctx, subject, split):
    _checked(ctx, subject)
    return agreement(ctx.outputs("retrained", split), ctx.outputs(subject, split))


@register("agreement_forget", family=Family.CLOSENESS, higher_is_better=True, ideal="1",
          needs=(Need.FORGET, Need.RETRAINED), reference=WARNECKE)
def agreement_forget(ctx, subject):
    """Fraction of forget rows on which the prediction equals the retrained model's.

    ``(1/|D_f|) sum_{x in D_f} 1[argmax p(x) = argmax p_R(x)]``; higher is better.
    """
    return _agree(ctx, subject, Need.FORGET)


@register("agreement_test", family=Family.CLOSENESS, higher_is_better=True, ideal="1",
          needs=(Need.TEST, Need.RETRAINED), reference=WARNECKE)
def agreement_test(ctx, subject):
    """Fraction of test rows on which the prediction equals the retrained model's.

    As ``agreement_forget`` on the test set; higher is better.
    """
    return _agree(ctx, subject, Need.TEST)


@register("gradient_residual", family=Family.CLOSENESS, higher_is_better=False, ideal="0", needs=(Need.CORRECTED,),
          reference=WARNECKE + "; Guo et al., 'Certified Data Removal from Machine Learning Models' (ICML 2020)")
def gradient_residual_metric(ctx, subject):
    """Norm of the gradient of the training objective on the corrected data.

    ``||grad_theta L(theta; D~)||_2`` with ``L(theta; D~) = sum_{z in D~} l(z, theta) +
    (l2/2)||theta||^2`` (sum over points, as everywhere in unlearnkit). Zero exactly at the
    optimum of the corrected objective, so for convex models it measures how far an update is
    from exact retraining, and it is the quantity certified unlearning bounds. Lower is better;
    deep models trained by SGD have a non-zero residual even when retrained.
    """
    model = ctx.model(subject)
    value = gradient_residual(model, ctx.data(Need.CORRECTED), batch_size=min(ctx.batch_size, 1024))
    return MetricValue(value, detail={"rows": len(ctx.data(Need.CORRECTED))})
