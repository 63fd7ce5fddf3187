"""unlearnkit: machine unlearning of features, labels and points, measured against retraining.

Quick start::

    import unlearnkit as uk
    data = uk.data.load("breast-cancer")
    model = uk.train(uk.models.for_data("logreg", data), data)
    changes = uk.Changes.zero_features([0])
    result = uk.unlearn(model, data, changes, method="second-order")
    reference = uk.retrain(model, data, changes)
"""

from unlearnkit import bench, data, influence, methods, metrics, models, scenarios
from unlearnkit import curvature
from unlearnkit.api import unlearn
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import (
    ChangesError,
    DataError,
    MethodError,
    MetricError,
    ModelError,
    SolverError,
    UnlearnKitError,
)
from unlearnkit.influence.updates import UnlearnResult
from unlearnkit.metrics import EvalSplits, evaluate
from unlearnkit.models.io import load_model, save_model
from unlearnkit.models.wrap import wrap
from unlearnkit.training import TrainConfig, accuracy, predict, retrain, train

__version__ = "0.1.0"

__all__ = [
    "Changes", "ChangesError", "DataError", "Dataset", "EvalSplits", "MethodError", "MetricError", "ModelError", "SolverError", "TrainConfig",
    "UnlearnKitError", "UnlearnResult", "accuracy", "data", "evaluate", "influence", "load_model", "methods", "metrics", "models", "predict",
    "retrain", "save_model", "scenarios", "bench", "train", "unlearn", "wrap", "__version__", "curvature",
]
