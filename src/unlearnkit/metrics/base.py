"""The metric registry: every number unlearnkit reports, with its direction, formula and source.

A metric is a function ``fn(ctx, subject) -> MetricValue | float | None`` registered with
:func:`register`. ``ctx`` is the :class:`~unlearnkit.metrics.context.Context` of one evaluation
(the original, unlearned and retrained models, the data splits, cached model outputs, optional
costs, shadow models and canaries); ``subject`` names the model the value is for
(``"original"``, ``"unlearned"`` or ``"retrained"``). Returning ``None`` means "does not apply
to this subject" (e.g. unlearning time of the original model).

The function's docstring *is* the metric's documentation: its first line is the summary and the
rest states the formula, the direction and the reference. ``docs/metrics.md`` is generated from
the registry (:func:`markdown`), so the page cannot drift from the code.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from unlearnkit.errors import MetricError


class Family(str, enum.Enum):
    """What a metric measures."""

    UTILITY = "utility and forgetting"
    MIA = "population membership inference"
    SHADOW = "per-sample attacks with shadow models"
    MEMORISATION = "memorisation"
    CLOSENESS = "closeness to retraining"
    EFFICIENCY = "efficiency"


class Need(str, enum.Enum):
    """Inputs a metric needs beyond the three models."""

    RETAIN = "retain"
    FORGET = "forget"
    VAL = "val"
    TEST = "test"
    CORRECTED = "corrected"
    RETRAINED = "retrained"
    COSTS = "costs"
    SHADOW = "shadow"
    METHOD = "method"
    CANARY = "canary"


NEED_HELP = {
    Need.RETAIN: "splits.retain (EvalSplits)",
    Need.FORGET: "splits.forget (EvalSplits)",
    Need.VAL: "splits.val (EvalSplits(..., val=...))",
    Need.TEST: "splits.test (EvalSplits(..., test=...))",
    Need.CORRECTED: "splits.corrected, the corrected training data (EvalSplits.from_changes builds it)",
    Need.RETRAINED: "the retrained model",
    Need.COSTS: "costs: an UnlearnResult as `unlearned`, or costs={'unlearned': Costs(...), 'retrained': Costs(...)}",
    Need.SHADOW: "shadow=ShadowSetup(...) (shadow models on a pool containing the forget and test rows)",
    Need.METHOD: "method=<registered method name or callable> (the method U-LiRA re-runs on shadow models)",
    Need.CANARY: "canary=Canary(...) and canary_scorer=<callable(model, texts) -> log-perplexities>",
}


@dataclass(frozen=True)
class MetricValue:
    """A metric's value, with an optional confidence interval and details."""

    value: float
    low: float | None = None
    high: float | None = None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric."""

    name: str
    fn: Callable
    family: Family
    higher_is_better: bool | None
    ideal: str
    needs: tuple[Need, ...]
    reference: str
    cost: str
    note: str = ""
    """What the direction alone does not say (for example the value of a model that never saw the data)."""

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            text = f"closer to {self.ideal} is better"
        else:
            text = "higher is better" if self.higher_is_better else "lower is better"
        return f"{text}, {self.note}" if self.note else text


_REGISTRY: dict[str, MetricInfo] = {}


def register(
    name: str,
    *,
    family: Family,
    higher_is_better: bool | None,
    ideal: str,
    needs: tuple[Need, ...] = (),
    reference: str = "",
    cost: str = "cheap",
    note: str = "",
):
    """Decorator adding ``fn`` to the registry under ``name``.

    ``higher_is_better`` is ``True``/``False``, or ``None`` when the best value is a target
    (``ideal``: ``"0.5"`` for an attack's accuracy, ``"retrained"`` for forget-set accuracy,
    where matching the retrained model is the goal). ``cost`` is ``"cheap"`` (one pass over the
    data) or ``"expensive"`` (trains models); expensive metrics run only when asked for.
    ``note`` completes the direction where it alone would mislead (it is printed after it).
    """
    if higher_is_better is None and not ideal:
        raise MetricError(f"Metric {name!r}: a metric without a direction must state its ideal value.")

    def decorate(fn):
        if name in _REGISTRY:
            raise MetricError(f"A metric named {name!r} is already registered.")
        if not (fn.__doc__ or "").strip():
            raise MetricError(f"Metric {name!r} needs a docstring stating its formula, direction and source.")
        _REGISTRY[name] = MetricInfo(name, fn, family, higher_is_better, ideal, tuple(needs), reference, cost, note)
        return fn

    return decorate


def info(name: str) -> MetricInfo:
    """The registered metric ``name`` (:class:`MetricError` listing the valid names if unknown)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MetricError(f"Unknown metric {name!r}; valid: {', '.join(names())}.") from None


def names(family: Family | str | None = None) -> list[str]:
    """Registered metric names by family (in :class:`Family` order), then in registration order."""
    fam = None if family is None else Family(family)
    order = list(Family)
    ranked = sorted(_REGISTRY.values(), key=lambda m: order.index(m.family))  # stable: keeps registration order
    return [m.name for m in ranked if fam is None or m.family is fam]


def as_value(raw) -> MetricValue | None:
    """Normalise what a metric function returned."""
    if raw is None or isinstance(raw, MetricValue):
        return raw
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
        return MetricValue(int(raw))  # counts stay integers
    try:
        return MetricValue(float(raw))
    except (TypeError, ValueError):
        raise MetricError(f"A metric returned {type(raw).__name__}, not a number or MetricValue.") from None


def describe(name: str) -> str:
    """Plain-text description of a metric: direction, inputs, reference and its docstring."""
    m = info(name)
    lines = [f"{m.name} ({m.family.value}; {m.direction})"]
    if m.needs:
        lines.append("needs: " + ", ".join(n.value for n in m.needs))
    if m.reference:
        lines.append(f"reference: {m.reference}")
    lines.append("")
    lines.append(m.doc)
    return "\n".join(lines)


def markdown() -> str:
    """The metrics page, ``docs/metrics.md``, generated from the registry."""
    out = [
        "# Metrics",
        "",
        "Every number `unlearnkit.evaluate` and `unlearnkit evaluate` report, with its formula, direction "
        "and source. This page is generated from the metric registry "
        "(`unlearnkit metrics --markdown > docs/metrics.md`); a test keeps it in sync.",
        "",
        "Conventions: *retrained* is the model trained from scratch on the corrected data (the gold "
        "standard); *forget* are the training rows a change set affects (in their original form), "
        "*retain* the unaffected training rows, *corrected* the whole corrected training set. "
        "Each metric is computed for the original, the unlearned and the retrained model, so every "
        "value can be read against the retrained one. A metric marked *expensive* trains models and "
        "runs only when named explicitly.",
        "",
        "| metric | family | direction | needs |",
        "|---|---|---|---|",
    ]
    for m in map(info, names()):
        needs = ", ".join(n.value for n in m.needs) or "-"
        cost = " (expensive)" if m.cost == "expensive" else ""
        out.append(f"| [`{m.name}`](#{_anchor(m.name)}) | {m.family.value} | {m.direction} | {needs}{cost} |")
    for family in Family:
        members = [m for m in _REGISTRY.values() if m.family is family]
        if not members:
            continue
        out += ["", f"## {family.value.capitalize()}"]
        for m in members:
            out += ["", f"### {m.name}", "", f"*{m.direction}*" + (f"; reference: {m.reference}" if m.reference else ""), ""]
            out.append(m.doc)
    return "\n".join(out) + "\n"


def _anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")

