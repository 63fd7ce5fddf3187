"""unlearnkit: machine unlearning of features, labels and points, measured against retraining.

Quick start::

    import unlearnkit as uk
    data = uk.data.load("breast-cancer")
    model = uk.train(uk.models.for_data("logreg", data), data)
    changes = uk.Changes.zero_features([0])
    result = uk.unlearn(model, data, changes, method="second-order")
    reference = uk.retrain(model, data, changes)
"""

import importlib

from unlearnkit.errors import (
    ChangesError,
    DataError,
    MethodError,
    MetricError,
    ModelError,
    SolverError,
    UnlearnKitError,
)

# Everything else is imported on first use (PEP 562): ``import unlearnkit`` and the command line's
# argument parsing stay fast (no torch), and ``uk.X`` / ``from unlearnkit import X`` work as before.
_SUBMODULES = frozenset({"bench", "curvature", "data", "influence", "methods", "metrics", "models", "scenarios"})
_ATTRIBUTES = {
    "unlearn": "unlearnkit.api", "Changes": "unlearnkit.data.changes", "Dataset": "unlearnkit.data.dataset",
    "UnlearnResult": "unlearnkit.influence.updates", "EvalSplits": "unlearnkit.metrics", "evaluate": "unlearnkit.metrics",
    "load_model": "unlearnkit.models.io", "save_model": "unlearnkit.models.io", "wrap": "unlearnkit.models.wrap",
    "TrainConfig": "unlearnkit.training", "accuracy": "unlearnkit.training", "predict": "unlearnkit.training",
    "retrain": "unlearnkit.training", "train": "unlearnkit.training",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"unlearnkit.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unlearnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "Changes", "ChangesError", "DataError", "Dataset", "EvalSplits", "MethodError", "MetricError", "ModelError", "SolverError", "TrainConfig",
    "UnlearnKitError", "UnlearnResult", "accuracy", "data", "evaluate", "influence", "load_model", "methods", "metrics", "models", "predict",
    "retrain", "save_model", "scenarios", "bench", "train", "unlearn", "wrap", "__version__", "curvature",
]
