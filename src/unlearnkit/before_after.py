"""Before → after: did an unlearning update make the model better or worse on cheap measures?

:func:`unlearnkit.unlearn` measures the original and the unlearned model on the measures below
and warns, with the likely cause and the fix, when the update made one of them worse. The result
is ``UnlearnResult.diagnostics["check"]``: ``{measure: {"before", "after", "better", "worse"}}``
(``better`` is ``"higher"`` or ``"lower"``; also ``"retrained"`` when the retrained model was given), and :attr:`UnlearnResult.worse
<unlearnkit.influence.updates.UnlearnResult.worse>` lists the measures that got worse.

Measures (``D~`` is the corrected training data, ``Z~`` its corrected affected rows):

``accuracy_corrected_rows`` (higher is better)
    Accuracy on ``Z~``: the affected rows with their corrected labels and features. ``O(k)`` for
    ``k`` affected rows; absent when the request only removes rows (``Z~`` is empty).
``gradient_residual`` (lower is better; convex models only)
    ``||grad L(theta; D~)||_2`` of the summed objective ``L(theta; D~) = sum_{z in D~} l(z, theta)
    + (l2/2)||theta||^2``: zero exactly at the retrained model. One pass over the ``n`` rows.
``accuracy_corrected_data`` (higher is better; ``check="full"`` only)
    Accuracy on ``D~``. One pass over the ``n`` rows.

The retrained model (trained on ``D~``) is the answer an update aims at, and it is not best on
every measure: retraining can lower the accuracy on ``D~`` (it no longer fits the old labels of
rows that were right before), and a relabelled row can stay misclassified after it. So:

- **With the retrained model** (``retrained=`` of :func:`unlearnkit.unlearn`, ``--compare-retrain``
  on the command line) every measure is judged against its retrained value: *worse* when the
  unlearned model is farther from the retrained value than the original was, by more than the
  tolerance (:data:`ACCURACY_TOLERANCE` for an accuracy, :data:`RELATIVE_TOLERANCE` relative for
  the residual).
- **Without it** a measure is *worse* when it moved the wrong way by more than its tolerance; for
  the accuracy on ``D~``, which retraining itself may lower, by more than the tolerance plus
  ``k/n`` (``k`` affected rows, ``n`` rows of ``D~``).
- The result of ``method="retrain"`` *is* the reference: it is measured and never judged worse.
"""

from __future__ import annotations

import enum
import logging
import math

logger = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.005
"""An accuracy is worse when it drops by more than this (half a percentage point)."""
RELATIVE_TOLERANCE = 0.01
"""A residual or a distance is worse when it grows by more than this fraction."""

LABELS = {
    "accuracy_corrected_rows": "accuracy on the corrected rows",
    "accuracy_corrected_data": "accuracy on the corrected data",
    "gradient_residual": "gradient residual on the corrected data",
    "distance_to_retrained": "rel. distance to retrained",
}
"""Readable names of the measures (the command line's row labels)."""


class Check(str, enum.Enum):
    """How much :func:`unlearnkit.unlearn` measures before and after an update."""

    OFF = "off"
    CHEAP = "cheap"  # O(k) measures; the gradient residual of convex models unless a cached curvature is used
    FULL = "full"  # also the passes over all n rows: the residual with a cached curvature, accuracy on D~

    @classmethod
    def of(cls, value) -> "Check":
        if value is True:
            return cls.CHEAP
        if value is False or value is None:
            return cls.OFF
        try:
            return cls(value)
        except ValueError:
            from unlearnkit.errors import MethodError

            raise MethodError(f"check must be True, False, 'cheap', 'full' or 'off'; got {value!r}.") from None


EXACT_METHODS = ("retrain",)
"""Methods whose result is the reference itself: measured, never judged worse."""


def entry(before: float, after: float, better: str, *, retrained: float | None = None, slack: float = 0.0,
          exact: bool = False) -> dict:
    """One measure: ``{"before", "after", "better", "worse"}`` (and ``"retrained"`` when given), ``worse`` decided
    by :func:`is_worse`; never worse when ``exact`` (the unlearned model is the retrained one)."""
    out = {"before": float(before), "after": float(after), "better": better,
           "worse": False if exact else is_worse(before, after, better, retrained=retrained, slack=slack)}
    if retrained is not None:
        out["retrained"] = float(retrained)
    return out


def is_worse(before: float, after: float, better: str, *, retrained: float | None = None, slack: float = 0.0) -> bool:
    """Whether ``after`` is worse than ``before``: farther from ``retrained`` than ``before`` was (when it is known
    and finite), else moved the wrong way (``better``: ``"higher"`` or ``"lower"``); by more than the tolerance
    (:data:`ACCURACY_TOLERANCE` plus ``slack`` for a higher-is-better accuracy, :data:`RELATIVE_TOLERANCE` relative
    for a lower-is-better measure)."""
    if not (math.isfinite(before) and math.isfinite(after)):
        return math.isfinite(before) and not math.isfinite(after)
    if retrained is not None and math.isfinite(retrained):
        gap_before, gap_after = abs(before - retrained), abs(after - retrained)
        if better == "higher":
            return gap_after > gap_before + ACCURACY_TOLERANCE + slack
        return gap_after > gap_before * (1 + RELATIVE_TOLERANCE) + 1e-12
    if better == "higher":
        return after < before - ACCURACY_TOLERANCE - slack
    return after > before * (1 + RELATIVE_TOLERANCE) + 1e-12


def measure(original, unlearned, data, changes, *, check: Check, cached_curvature: bool = False,
            device=None, batch_size: int = 1024, retrained=None, method: str | None = None) -> dict:
    """The before → after measures of ``check`` (see the module docstring) for ``original`` and ``unlearned``, each
    model evaluated on the device its parameters are on (``device`` is not used: the original stays where it is).

    ``retrained``: the model retrained on the corrected data, when known: its values are added (``"retrained"``)
    and each measure is judged against them. ``method``: the method that produced ``unlearned``; the result of an
    exact one (:data:`EXACT_METHODS`) is never judged worse."""
    del device
    if check is Check.OFF:
        return {}
    resolved = changes.resolve(data)
    names = []
    if len(resolved.Z_tilde):
        names.append("accuracy_corrected_rows")
    if check is Check.FULL:
        names.append("accuracy_corrected_data")
    if getattr(original, "convex", False) and (check is Check.FULL or not cached_curvature):
        names.append("gradient_residual")
    before = values(original, resolved, names, data=data, batch_size=batch_size)
    after = values(unlearned, resolved, names, data=data, batch_size=batch_size)
    ref = values(retrained, resolved, names, data=data, batch_size=batch_size) if retrained is not None else {}
    exact = method in EXACT_METHODS
    slack = {}
    if "accuracy_corrected_data" in names and not ref:  # resolved.corrected is built only when measured (O(n))
        slack["accuracy_corrected_data"] = resolved.n_affected / max(len(resolved.corrected), 1)
    return {name: entry(before[name], after[name], BETTER[name], retrained=ref.get(name), slack=slack.get(name, 0.0),
                        exact=exact) for name in names}


BETTER = {"accuracy_corrected_rows": "higher", "accuracy_corrected_data": "higher", "gradient_residual": "lower",
          "distance_to_retrained": "lower"}
"""Which way each measure is better."""


def values(model, resolved, names, *, data=None, device=None, batch_size: int = 1024) -> dict[str, float]:
    """The measures ``names`` of one model for a change set ``resolved`` against its data ``data``
    (``Changes.resolve(data)``), on ``device`` (default: where the model's parameters are; the model is not moved).
    Without ``data`` the residual is computed on ``resolved.corrected`` (a copy of the data)."""
    from unlearnkit.training import accuracy

    out = {}
    for name in names:
        if name == "accuracy_corrected_rows":
            out[name] = accuracy(model, resolved.Z_tilde, device=device)
        elif name == "accuracy_corrected_data":
            out[name] = accuracy(model, resolved.corrected, device=device)
        elif name == "gradient_residual":
            out[name] = (residual(model, data, resolved, batch_size=batch_size) if data is not None
                         else residual(model, resolved.corrected, batch_size=batch_size))
        else:
            raise ValueError(f"unknown measure {name!r}")
    return out


def residual(model, data, resolved=None, *, batch_size: int = 1024) -> float:
    """``||grad L(theta; data)||_2`` of ``model``'s summed objective on ``data`` (one pass); with ``resolved`` (a
    change set resolved against ``data``) on the corrected data ``D~`` instead, from ``data`` and the affected rows
    (one pass over ``data``, no copy of it)."""
    from unlearnkit.influence.functional import FlatModel
    from unlearnkit.influence.gradients import gradient_residual

    flat = FlatModel(model)
    if resolved is None:
        return gradient_residual(flat, data, batch_size=batch_size)
    import torch

    from unlearnkit.influence.refine import CorrectedGradient

    return float(torch.linalg.vector_norm(CorrectedGradient(flat, data, resolved, batch_size=batch_size)(flat.theta())))


def advice(name: str, *, convex: bool, method: str) -> str:
    """The likely cause and the fix when ``name`` got worse after ``method`` on a (non-)convex model."""
    influence = method.split("-iterative")[0] in ("first-order", "second-order")
    if method in EXACT_METHODS:
        return "Retraining is the reference the other methods are measured against; nothing to fix."
    if convex and influence:
        return ("Likely cause: the step left the region where the update's quadratic model of the objective holds: "
                "features on very different scales (an ill-conditioned Hessian), or a change that moves a confidently "
                "fitted model far (nearly separable data, weak regularisation). Fix: continue to the optimum with "
                "method second-order and refine=1e-6 (`--param refine=1e-6`); if the features are unscaled, "
                "standardise them and retrain the original (uk.data.standardize in Python, `unlearnkit train "
                "--standardize` on the command line).")
    if method.startswith("second-order"):
        return ("Likely cause: a second-order step on a non-convex model left the region where its quadratic model "
                "holds. Fix: the guarded update with held-out rows (guard=True and val=...; on the command line "
                "`--param guard=true --val DATA`), or a method that trains on the corrected data (e.g. 'ft').")
    if method == "first-order":
        return ("Likely cause: the step along the gradient difference is too long for this model. Fix: a smaller "
                "tau (`--param tau=...`), or a method that trains on the corrected data (e.g. 'ft').")
    if name == "distance_to_retrained" and not convex:
        return ("Retraining a non-convex model lands elsewhere in parameter space; compare the accuracies instead.")
    return (f"Likely cause: {method}'s settings (learning rate, steps) are too aggressive for this model. Fix: milder "
            f"settings (`unlearnkit methods {method}` lists them), or another method (e.g. 'ft').")


def describe(name: str, values: dict, *, convex: bool, method: str, digits: int = 4) -> str:
    """One warning line: which measure got worse, before → after, the likely cause and the fix."""
    label = LABELS.get(name, name)
    if values.get("retrained") is not None:
        how = f"farther from the retrained {_num(values['retrained'], digits)} than the original"
    else:
        how = f"{values['better']} is better"
        if name == "accuracy_corrected_data":
            how += ("; retraining itself may lower it: judge against the retrained model with --compare-retrain "
                    "(retrained= in unlearnkit.unlearn)")
    return (f"{label} got worse after {method}: {_num(values['before'], digits)} -> {_num(values['after'], digits)} "
            f"({how}). {advice(name, convex=convex, method=method)}")


def _num(value: float, digits: int) -> str:
    return f"{value:.3g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.{digits}f}"


def warn(result, *, convex: bool) -> None:
    """Log a warning for every measure of ``result.diagnostics["check"]`` that got worse (not for a guarded update
    the guard rejected: that returned the original parameters and warned already)."""
    if result.status == "rejected":
        return
    for name in result.worse:
        logger.warning("%s", describe(name, result.diagnostics["check"][name], convex=convex, method=result.method))
