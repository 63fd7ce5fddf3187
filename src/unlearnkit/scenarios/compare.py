"""One comparison: an unlearning problem solved by every strategy, measured against retraining.

A :class:`Problem` is a trained model, the data it was trained on, the change that must be
unlearned, a clean test set and (optionally) a SISA ensemble trained on the same data and a
scenario-specific efficacy measure. :func:`compare` solves it with each :class:`Strategy` and
returns one :class:`Row` per strategy, all on the same seed:

* **fidelity** — test accuracy, and the distance to the retrained model: relative L2 distance of
  the parameters ``||theta - theta_ret|| / ||theta_ret||`` (same architecture only) and the
  agreement of test predictions with the retrained model;
* **efficacy** — accuracy on the corrected points ``Z~``, plus the scenario's own measures
  (exposure, attack success, ...);
* **efficiency** — wall-clock seconds, speed-up over retraining measured in the same run
  (``retrain seconds / seconds``), per-sample gradients and Hessian-vector products computed.

The original model gets seconds 0 and no speed-up; retraining is the reference (speed-up 1).
The model may be any unlearnkit model, a user's module made one by :func:`unlearnkit.wrap`
included; a model trained by the user's own loop is retrained with it (``train_fn=``, see
:mod:`unlearnkit.user_training`), or with the loop it carries from :func:`unlearnkit.train`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from unlearnkit import methods, timing
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError, UnlearnKitError
from unlearnkit.metrics.closeness import relative_distance
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.training import predict, retrain

log = logging.getLogger(__name__)

Efficacy = Callable[[UnlearnableModel], dict]
"""``efficacy(model) -> {measure: value}``: a scenario's own measures of whether the change is gone."""

ORIGINAL, RETRAIN, SISA = "original", "retrain", "sisa"


@dataclass
class Strategy:
    """A registered method with the hyperparameters a documented rule chose.

    ``label`` names the row in reports (``second-order-it`` for the iterative variant, ...);
    ``rule`` says how the hyperparameters were chosen; ``setup_seconds`` is time the rule itself
    spent (e.g. estimating a curvature eigenvalue), added to the method's time.
    """

    label: str
    method: str
    hyperparameters: dict = field(default_factory=dict)
    rule: str = ""
    setup_seconds: float = 0.0


@dataclass
class Problem:
    """A trained model and a change to unlearn from it (see the module docstring)."""

    scenario: str
    name: str
    seed: int
    model: UnlearnableModel
    train: Dataset
    test: Dataset
    changes: Changes
    sisa: UnlearnableModel | None = None
    efficacy: Efficacy | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Row:
    """One strategy's result on one problem and seed; ``None`` where a measure does not apply."""

    scenario: str
    problem: str
    seed: int
    method: str
    test_accuracy: float | None = None
    corrected_accuracy: float | None = None
    distance: float | None = None
    agreement: float | None = None
    seconds: float | None = None
    speedup: float | None = None
    gradients: int | None = None
    hvps: int | None = None
    efficacy: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    status: str = "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(predictions: np.ndarray, data: Dataset) -> float:
    return float(np.mean(predictions == data.y)) if len(data) else float("nan")


def _clean_settings(obj):
    """JSON-safe copy of a method's settings / diagnostics (numbers, strings, lists, dicts)."""
    if isinstance(obj, dict):
        return {str(k): _clean_settings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_settings(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def compare(
    problem: Problem,
    strategies: list[Strategy],
    *,
    device=None,
    train_fn=None,
    step: Callable[[str], None] = lambda message: None,
) -> list[Row]:
    """Solve ``problem`` with retraining, SISA (when the problem has an ensemble) and each strategy.

    A strategy that fails (diverges, refuses the model) gets a row with ``status`` saying why;
    the others still run. ``step(message)`` reports progress. The retraining reference repeats
    the model's recipe (its ``train_fn`` or ``train_config``); ``train_fn(module, data)`` retrains
    it with the user's own loop instead (:func:`unlearnkit.retrain` with ``train_fn``), timed
    the same way, and the strategies receive the model carrying that loop (so ``retrain`` and
    ``retrain-warm`` repeat it; the model itself is not changed).
    """
    if not isinstance(problem.model, UnlearnableModel):
        raise ModelError(f"Problem.model must be an unlearnkit model, got {type(problem.model).__name__}; "
                         "make a torch.nn.Module one with unlearnkit.wrap(module).")
    if train_fn is not None and not callable(train_fn):
        raise ModelError(f"train_fn must be a callable train_fn(module, data), got {type(train_fn).__name__}.")
    resolved = problem.changes.resolve(problem.train)
    corrected = resolved.Z_tilde
    test = problem.test

    def measure(label: str, model: UnlearnableModel, reference_preds: np.ndarray | None, same_arch: bool) -> Row:
        preds = predict(model, test, device=device)
        row = Row(problem.scenario, problem.name, problem.seed, label, test_accuracy=_accuracy(preds, test))
        if len(corrected):
            row.corrected_accuracy = _accuracy(predict(model, corrected, device=device), corrected)
        if reference_preds is not None:
            row.agreement = float(np.mean(preds == reference_preds))
        if same_arch and reference is not None:
            row.distance = relative_distance(model, reference)
        if problem.efficacy is not None:
            row.efficacy = {k: float(v) for k, v in problem.efficacy(model).items()}
        return row

    step(f"{problem.name}: retraining from scratch (the reference)")
    reference = None
    if train_fn is None:
        ref = methods.make("retrain").unlearn(problem.model, problem.train, problem.changes, device=device)
        reference, retrain_seconds = ref.model, ref.seconds
    else:
        start = timing.start(device)
        reference = retrain(problem.model, problem.train, problem.changes, train_fn=train_fn, device=device)
        retrain_seconds = timing.since(start, device)
    ref_preds = predict(reference, test, device=device)
    original = measure(ORIGINAL, problem.model, ref_preds, True)
    original.seconds = 0.0
    retrained = measure(RETRAIN, reference, ref_preds, True)
    retrained.seconds, retrained.speedup = retrain_seconds, 1.0
    retrained.gradients = _training_gradients(reference, len(resolved.corrected))
    rows = [original, retrained]

    if problem.sisa is not None:
        step(f"{problem.name}: SISA (retraining the affected shards)")
        res = methods.make(SISA).unlearn(problem.sisa, problem.train, problem.changes, device=device)
        row = measure(SISA, res.model, ref_preds, False)
        row.seconds, row.speedup = res.seconds, retrain_seconds / max(res.seconds, 1e-9)
        row.gradients = _training_gradients(problem.sisa, res.diagnostics.get("retrained_rows", 0))
        row.settings = _clean_settings({**res.diagnostics, "original_test_accuracy":
                                        _accuracy(predict(problem.sisa, test, device=device), test)})
        rows.append(row)

    subject = problem.model
    if train_fn is not None:  # the strategies retrain (retrain, retrain-warm) with the loop too
        subject = copy.copy(problem.model)  # shallow: the same parameters, another attribute dict
        subject.__dict__.update(train_fn=train_fn, train_seed=int(getattr(problem.model, "train_seed", 0) or 0))
    for strategy in strategies:
        step(f"{problem.name}: {strategy.label}")
        try:
            method = methods.make(strategy.method, **strategy.hyperparameters)
            res = method.unlearn(subject, problem.train, problem.changes, device=device)
        except UnlearnKitError as exc:
            log.warning("%s failed on %s: %s", strategy.label, problem.name, exc)
            rows.append(Row(problem.scenario, problem.name, problem.seed, strategy.label, status=f"failed: {exc}",
                            settings=_clean_settings({"rule": strategy.rule, **strategy.hyperparameters})))
            continue
        row = measure(strategy.label, res.model, ref_preds, True)
        row.seconds = res.seconds + strategy.setup_seconds
        row.speedup = retrain_seconds / max(row.seconds, 1e-9)
        row.gradients = res.per_sample_gradients or _method_gradients(strategy, res, len(resolved.corrected))
        row.hvps = res.hvps
        row.settings = _clean_settings({"rule": strategy.rule, "hyperparameters": strategy.hyperparameters,
                                        **{k: v for k, v in res.diagnostics.items() if k in ("settings", "tau", "chunks", "steps")}})
        rows.append(row)
    return rows


def _training_gradients(model: UnlearnableModel, rows: int) -> int | None:
    """Per-sample gradients a (re)training run computed: epochs x rows for mini-batch training;
    unknown (None) for Newton / L-BFGS, whose iteration counts are not recorded."""
    config = getattr(model, "train_config", None)
    if config is None or config.optimizer is None or config.optimizer.value not in ("adam", "sgd"):
        return None
    return int(config.epochs) * int(rows)


def _method_gradients(strategy: Strategy, res, rows: int) -> int | None:
    steps = res.diagnostics.get("steps")
    if strategy.method == "ft":
        return int(strategy.hyperparameters.get("epochs", 1)) * rows
    return None if steps is None else int(steps)

