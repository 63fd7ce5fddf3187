"""One comparison: an unlearning problem solved by every strategy, measured against retraining.

A :class:`Problem` is a trained model, the data it was trained on, the change that must be
unlearned, a clean test set and (optionally) held-out validation rows the methods may use, a SISA
ensemble trained on the same data and a scenario-specific efficacy measure. :func:`compare` solves it with each :class:`Strategy` and
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

A strategy with a cached curvature (``Strategy.curvature``, e.g. ``"exact"``) is the amortised
path: the curvature is fitted once per model and training data (:class:`CurvatureCache`, outside
the request's timer) and passed to every request as ``curvature=``. Its row's ``seconds`` and
``speedup`` are the request's alone (amortised); ``fit_seconds`` is the one fit, and
``one_shot_seconds`` / ``one_shot_speedup`` are fit plus request (what a single request costs).
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
    spent (e.g. estimating a curvature eigenvalue), added to the method's time. ``curvature``, a
    kind of :func:`unlearnkit.curvature.fit` (``"exact"``, ``"kfac"``, ``"ekfac"``, ...), makes
    it a cached strategy: that curvature is fitted once per model (not timed with the request)
    and given to the method as ``curvature=``; ``None`` lets the method compute its own. ``skip``, when
    set, says why the strategy is not run on this problem: its row's status is ``not run: <skip>``.
    """

    label: str
    method: str
    hyperparameters: dict = field(default_factory=dict)
    rule: str = ""
    setup_seconds: float = 0.0
    curvature: str | None = None
    skip: str | None = None


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
    val: Dataset | None = None
    """Held-out rows, disjoint from ``train`` and ``test``, that methods may use (``unlearn(..., val=)``): the
    guard's held-out test, SCRUB's checkpoint choice, a tuned baseline's search objective. Never scored."""


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
    fit_seconds: float | None = None
    one_shot_seconds: float | None = None
    one_shot_speedup: float | None = None
    efficacy: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    status: str = "ok"

    def to_dict(self) -> dict:
        return asdict(self)


class CurvatureCache:
    """Curvatures fitted once per (model, training data, kind, device) and reused by every request on that model.

    The way a deployment (or :mod:`unlearnkit.ledger`) works: the curvature is fitted after training and
    saved; requests only read it. :meth:`get` fits on the first call for a model and returns the same
    object, with the seconds that one fit took, on every later call. Keys hold the model and data objects
    themselves, so a new model is never served another's curvature.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[object, object, str, str, object, float]] = []

    @property
    def fits(self) -> int:
        """How many curvatures this cache has fitted."""
        return len(self._entries)

    def get(self, model: UnlearnableModel, data: Dataset, kind: str, *, device=None):
        """``(curvature, fit_seconds)``: the cached fit of ``model`` on ``data``, fitted now if there is none."""
        for m, d, k, dev, fitted, seconds in self._entries:
            if m is model and d is data and k == kind and dev == str(device):
                return fitted, seconds
        from unlearnkit import curvature as curvatures  # looked up at call time: tests count the fits

        start = timing.start(device)
        fitted = curvatures.fit(model, data, kind=kind, device=device)
        seconds = timing.since(start, device)
        self._entries.append((model, data, kind, str(device), fitted, seconds))
        return fitted, seconds


def build_problems(module, preset, seed: int, device, *, only: str | None = None, sisa: bool = True) -> list[Problem]:
    """``module.problems(preset, seed, device)``, keeping the problems whose name contains ``only`` (all when None).

    Where the scenario module takes them, ``keep`` (a name filter applied before a problem's model is trained)
    and ``sisa=False`` (no SISA ensembles) are passed on, so that what is left out costs nothing.
    """
    import inspect

    accepts = inspect.signature(module.problems).parameters
    keep = None if only is None else (lambda name: only in name)
    options = {**({"keep": keep} if keep is not None and "keep" in accepts else {}),
               **({"sisa": False} if not sisa and "sisa" in accepts else {})}
    return [p for p in module.problems(preset, seed, device, **options) if keep is None or keep(p.name)]


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
    curvatures: CurvatureCache | None = None,
    step: Callable[[str], None] = lambda message: None,
) -> list[Row]:
    """Solve ``problem`` with retraining, SISA (when the problem has an ensemble) and each strategy.

    A strategy that fails (diverges, refuses the model) gets a row with ``status`` saying why;
    the others still run. ``step(message)`` reports progress. The retraining reference repeats
    the model's recipe (its ``train_fn`` or ``train_config``); ``train_fn(module, data)`` retrains
    it with the user's own loop instead (:func:`unlearnkit.retrain` with ``train_fn``), timed
    the same way, and the strategies receive the model carrying that loop (so ``retrain`` and
    ``retrain-warm`` repeat it; the model itself is not changed). ``curvatures`` holds the
    curvatures of cached strategies (``Strategy.curvature``); pass one cache to every problem
    that shares a model so that its curvature is fitted once (default: a new cache per call).
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
    curvatures = CurvatureCache() if curvatures is None else curvatures
    val = problem.val if problem.val is not None and len(problem.val) else None  # no rows: as if none were given
    for strategy in strategies:
        if strategy.skip:
            rows.append(Row(problem.scenario, problem.name, problem.seed, strategy.label, status=f"not run: {strategy.skip}",
                            settings=_clean_settings({"rule": strategy.rule, **strategy.hyperparameters})))
            continue
        step(f"{problem.name}: {strategy.label}")
        fit_seconds = None
        try:
            hyperparameters = dict(strategy.hyperparameters)
            if strategy.curvature is not None:  # fitted once per model, outside the request's timer
                hyperparameters["curvature"], fit_seconds = curvatures.get(problem.model, problem.train,
                                                                           strategy.curvature, device=device)
            method = methods.make(strategy.method, **hyperparameters)
            res = method.unlearn(subject, problem.train, problem.changes, val=val, device=device)
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
        if fit_seconds is not None:
            row.fit_seconds = fit_seconds
            row.one_shot_seconds = fit_seconds + row.seconds
            row.one_shot_speedup = retrain_seconds / max(row.one_shot_seconds, 1e-9)
        row.settings = _clean_settings({"rule": strategy.rule, "hyperparameters": strategy.hyperparameters,
                                        **({"cached_curvature": strategy.curvature} if strategy.curvature else {}),
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

