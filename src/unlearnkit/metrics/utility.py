"""Utility and forgetting: accuracies on each split, their ratios to the retrained model, RetDev."""

from __future__ import annotations

import math

import numpy as np

from unlearnkit.metrics.base import Family, MetricValue, Need, register

DEEPUNLEARN = "Cadet et al., 'Deep Unlearn: Benchmarking Machine Unlearning for Image Classification' (2024)"


def accuracy(outputs) -> float:
    """Top-1 accuracy ``mean_i 1[argmax_c z_ic = y_i]`` (NaN for an empty set)."""
    return float(np.mean(outputs.correct)) if len(outputs) else float("nan")


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when the reference is 0 (e.g. class-wise forgetting)."""
    return value / reference if reference > 0 else float("nan")


def _acc(ctx, subject: str, split: Need) -> float:
    return accuracy(ctx.outputs(subject, split))


def _ratio_value(ctx, subject: str, split: Need):
    ref = _acc(ctx, "retrained", split)
    value = ratio(_acc(ctx, subject, split), ref)
    detail = {"retrained_accuracy": ref}
    if math.isnan(value):
        detail["note"] = "the retrained model's accuracy on this split is 0, so the ratio is undefined"
    return MetricValue(value, detail=detail)


@register("accuracy_retain", family=Family.UTILITY, higher_is_better=True, ideal="1", needs=(Need.RETAIN,),
          reference=DEEPUNLEARN)
def accuracy_retain(ctx, subject):
    """Accuracy on the retain set.

    ``Acc(D_r) = (1/|D_r|) sum_{(x,y) in D_r} 1[argmax f(x) = y]``. Higher is better: unlearning
    should keep what the model knows about the data it keeps.
    """
    return _acc(ctx, subject, Need.RETAIN)


@register("accuracy_forget", family=Family.UTILITY, higher_is_better=None, ideal="retrained", needs=(Need.FORGET,),
          reference=DEEPUNLEARN)
def accuracy_forget(ctx, subject):
    """Accuracy on the forget set (the affected rows in their original form).

    ``Acc(D_f)``, same formula as ``accuracy_retain``. There is no "higher" or "lower" that is
    better: the goal is the retrained model's value. A random forget set is still classified
    well by a retrained model (it generalises to it); forgetting a class or corrected labels
    should drop it.
    """
    return _acc(ctx, subject, Need.FORGET)


@register("accuracy_val", family=Family.UTILITY, higher_is_better=True, ideal="1", needs=(Need.VAL,),
          reference=DEEPUNLEARN)
def accuracy_val(ctx, subject):
    """Accuracy on the validation set.

    ``Acc(D_val)``; higher is better. Methods may use this split for model selection.
    """
    return _acc(ctx, subject, Need.VAL)


@register("accuracy_test", family=Family.UTILITY, higher_is_better=True, ideal="1", needs=(Need.TEST,),
          reference=DEEPUNLEARN)
def accuracy_test(ctx, subject):
    """Accuracy on the test set.

    ``Acc(D_test)``; higher is better. No method ever sees this split.
    """
    return _acc(ctx, subject, Need.TEST)


@register("ratio_retain", family=Family.UTILITY, higher_is_better=None, ideal="1", needs=(Need.RETAIN, Need.RETRAINED),
          reference=DEEPUNLEARN + " (RR; retention in the reference code)")
def ratio_retain(ctx, subject):
    """Retain accuracy as a ratio to the retrained model (RR).

    ``RR = Acc_U(D_r) / Acc_R(D_r)``; 1 is ideal (the same utility as retraining). NaN when the
    retrained accuracy is 0.
    """
    return _ratio_value(ctx, subject, Need.RETAIN)


@register("ratio_forget", family=Family.UTILITY, higher_is_better=None, ideal="1", needs=(Need.FORGET, Need.RETRAINED),
          reference=DEEPUNLEARN + " (FR)")
def ratio_forget(ctx, subject):
    """Forget accuracy as a ratio to the retrained model (FR).

    ``FR = Acc_U(D_f) / Acc_R(D_f)``; 1 is ideal: the forget set is classified as if it had never
    been trained on. Undefined (NaN) when the retrained model classifies none of the forget set
    correctly, as in class-wise forgetting; read ``accuracy_forget`` there.
    """
    return _ratio_value(ctx, subject, Need.FORGET)


@register("ratio_val", family=Family.UTILITY, higher_is_better=None, ideal="1", needs=(Need.VAL, Need.RETRAINED),
          reference=DEEPUNLEARN)
def ratio_val(ctx, subject):
    """Validation accuracy as a ratio to the retrained model.

    ``VR = Acc_U(D_val) / Acc_R(D_val)``; 1 is ideal.
    """
    return _ratio_value(ctx, subject, Need.VAL)


@register("ratio_test", family=Family.UTILITY, higher_is_better=None, ideal="1", needs=(Need.TEST, Need.RETRAINED),
          reference=DEEPUNLEARN + " (TR)")
def ratio_test(ctx, subject):
    """Test accuracy as a ratio to the retrained model (TR).

    ``TR = Acc_U(D_test) / Acc_R(D_test)``; 1 is ideal.
    """
    return _ratio_value(ctx, subject, Need.TEST)


@register("retdev", family=Family.UTILITY, higher_is_better=False, ideal="0",
          needs=(Need.RETAIN, Need.FORGET, Need.TEST, Need.RETRAINED),
          reference=DEEPUNLEARN + ", arXiv:2410.01276 (RetDev; the sum of the three ratio deviations is "
          "reconstructed from the paper's accuracy ratios, as the public reproduction santimebi/deepunlearn, "
          "scripts/export_paper_tables.py, computes it)")
def retdev(ctx, subject):
    """Deviation from the retrained model's accuracies (RetDev).

    ``RetDev = |RR - 1| + |FR - 1| + |TR - 1|`` with the ratios above; lower is better, 0 for
    the retrained model itself. NaN when a ratio is undefined. The paper reports RetDev from the
    ratios RR, FR and TR; this sum is a reconstruction of how it combines them.
    """
    parts = [_ratio_value(ctx, subject, s).value for s in (Need.RETAIN, Need.FORGET, Need.TEST)]
    return MetricValue(float(sum(abs(p - 1.0) for p in parts)), detail={"RR": parts[0], "FR": parts[1], "TR": parts[2]})
