"""Efficiency: wall time, derivatives computed, and run-time efficiency against retraining."""

from __future__ import annotations

from unlearnkit.errors import MetricError
from unlearnkit.metrics.base import Family, MetricValue, Need, register
from unlearnkit.metrics.utility import DEEPUNLEARN

SUBJECT_COST = {"unlearned": "unlearning", "retrained": "retraining"}


def run_time_efficiency(retrain_seconds: float, method_seconds: float) -> float:
    """``RTE = t_retrain / t_method``: how many times faster than retraining (> 1 is faster)."""
    if method_seconds <= 0:
        raise MetricError(f"The method's time must be > 0 to compute RTE, got {method_seconds}.")
    if retrain_seconds < 0:
        raise MetricError(f"The retraining time must be >= 0, got {retrain_seconds}.")
    return retrain_seconds / method_seconds


def _cost(ctx, subject, field: str):
    costs = ctx.costs.get(subject)
    if costs is None:
        return None
    value = getattr(costs, field)
    if value is None:
        return None
    value = float(value) if field == "seconds" else int(value)  # Costs validated the types
    return MetricValue(value, detail={"what": SUBJECT_COST.get(subject, subject)})


@register("seconds", family=Family.EFFICIENCY, higher_is_better=False, ideal="0", needs=(Need.COSTS,),
          reference=DEEPUNLEARN + " (timing around the method's unlearn call only)")
def seconds(ctx, subject):
    """Wall-clock seconds it took to produce the model.

    For the unlearned model: the method's ``unlearn`` call (``UnlearnResult.seconds``); for the
    retrained model: its training time (``train_seconds``, recorded by ``unlearnkit.train``) or
    the ``retrain`` method's time. Not defined for the original model. Lower is better; compare
    only times measured on the same machine in the same run.
    """
    return _cost(ctx, subject, "seconds")


@register("per_sample_gradients", family=Family.EFFICIENCY, higher_is_better=False, ideal="0", needs=(Need.COSTS,),
          reference="Warnecke et al. (NDSS 2023): 'gradients computed' as a hardware-independent cost")
def per_sample_gradients(ctx, subject):
    """Per-sample gradients the method computed (a hardware-independent cost).

    Counted by the influence updates (``UnlearnResult.per_sample_gradients``); lower is better.
    """
    return _cost(ctx, subject, "per_sample_gradients")


@register("hvps", family=Family.EFFICIENCY, higher_is_better=False, ideal="0", needs=(Need.COSTS,),
          reference="Hessian-vector products counted by unlearnkit's solvers")
def hvps(ctx, subject):
    """Hessian-vector products the method computed (each costs about two gradient passes over its rows).

    ``UnlearnResult.hvps``; lower is better.
    """
    return _cost(ctx, subject, "hvps")


@register("rte", family=Family.EFFICIENCY, higher_is_better=True, ideal="large", needs=(Need.COSTS,),
          reference=DEEPUNLEARN + " (run_time_efficiency.py)")
def rte(ctx, subject):
    """Run-time efficiency: retraining time over the method's time.

    ``RTE = t_R / t_U``; higher is better (10 means ten times faster than retraining), 1 for
    retraining itself. Both times must come from the same run on the same machine.
    """
    mine, ref = ctx.costs.get(subject), ctx.costs.get("retrained")
    if mine is None or ref is None:
        return None
    if mine.seconds <= 0:
        return MetricValue(float("nan"), detail={"note": "the recorded time is 0 s; RTE is undefined"})
    return run_time_efficiency(ref.seconds, mine.seconds)
