"""Evaluation: every metric that tells whether unlearning worked, in one documented registry.

``evaluate(original, unlearned, retrained, splits)`` computes them for all three models and
returns a :class:`MetricTable`; ``names()``, ``describe(name)`` and ``docs/metrics.md`` say what
each number means, which way is better, and where it comes from.
"""

from unlearnkit.metrics import closeness as _closeness  # noqa: F401  (registration order = docs order)
from unlearnkit.metrics import efficiency as _efficiency  # noqa: F401
from unlearnkit.metrics import exposure as _exposure  # noqa: F401
from unlearnkit.metrics import lira as _lira  # noqa: F401
from unlearnkit.metrics import mia as _mia  # noqa: F401
from unlearnkit.metrics import utility as _utility  # noqa: F401
from unlearnkit.metrics.base import Family, MetricInfo, MetricValue, describe, info, markdown, names, register
from unlearnkit.metrics.closeness import agreement, kl_divergence, parameter_distance, relative_distance
from unlearnkit.metrics.context import Context, Costs, EvalSplits
from unlearnkit.metrics.efficiency import run_time_efficiency
from unlearnkit.metrics.exposure import Canary, ExposureResult, canary_exposure, exact_exposure, extrapolated_exposure
from unlearnkit.metrics.lira import AttackScores, ShadowSetup, ULiRAResult, lira, ulira, ulira_from_statistics
from unlearnkit.metrics.evaluate import MetricRow, MetricTable, evaluate
from unlearnkit.metrics.mia import AttackResult, indiscernibility, loss_attack, svc_attack
from unlearnkit.metrics.outputs import ModelOutputs, model_outputs

__all__ = [
    "AttackResult", "Canary", "ExposureResult", "canary_exposure", "exact_exposure", "extrapolated_exposure", "AttackScores", "ShadowSetup", "ULiRAResult", "lira", "ulira", "ulira_from_statistics", "Context", "Costs", "EvalSplits", "Family", "MetricInfo", "MetricRow", "MetricTable",
    "MetricValue", "ModelOutputs", "agreement", "describe", "evaluate", "indiscernibility", "info", "kl_divergence",
    "loss_attack", "markdown", "model_outputs", "names", "parameter_distance", "register", "relative_distance",
    "run_time_efficiency", "svc_attack",
]
