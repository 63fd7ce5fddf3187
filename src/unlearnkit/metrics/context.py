"""What one evaluation looks at: the splits, the costs, and the shared cache of model outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ChangesError, DataError, MetricError
from unlearnkit.metrics.base import NEED_HELP, Need
from unlearnkit.metrics.outputs import ModelOutputs, model_outputs
from unlearnkit.models.base import UnlearnableModel

SUBJECTS = ("original", "unlearned", "retrained")
"""The three models every evaluation reports, in column order."""


@dataclass(frozen=True)
class EvalSplits:
    """The data an evaluation uses.

    Attributes
    ----------
    retain:
        Training rows the change set does not affect.
    forget:
        The affected training rows *as they were* (``Z``): removed rows, rows whose features or
        labels were corrected. Forgetting is measured on them.
    val, test:
        Held-out rows (optional); ``test`` is never used by an unlearning method.
    corrected:
        The whole corrected training set ``D~`` (optional; the gradient residual needs it).
    """

    retain: Dataset
    forget: Dataset
    val: Dataset | None = None
    test: Dataset | None = None
    corrected: Dataset | None = None

    def __post_init__(self) -> None:
        for name in ("retain", "forget", "val", "test", "corrected"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Dataset):
                raise MetricError(f"EvalSplits.{name} must be an unlearnkit Dataset, got {type(value).__name__}.")
        if len(self.forget) == 0:
            raise MetricError("EvalSplits.forget is empty: there is nothing whose forgetting could be measured.")
        shapes = {name: tuple(d.feature_shape) for name, d in self._present().items()}
        if len(set(shapes.values())) > 1:
            raise MetricError(f"The splits have different example shapes: {shapes}.")
        overlap = np.intersect1d(self.retain.ids, self.forget.ids)
        if overlap.size:
            raise MetricError(f"{overlap.size} row id(s) are in both retain and forget (e.g. {overlap[:3].tolist()}).")
        for name in ("val", "test"):
            held = getattr(self, name)
            if held is not None:
                _refuse_shared_rows(self.forget, held, name)

    def _present(self) -> dict[str, Dataset]:
        return {n: getattr(self, n) for n in ("retain", "forget", "val", "test", "corrected") if getattr(self, n) is not None}

    @classmethod
    def from_changes(cls, train: Dataset, changes: Changes, *, val: Dataset | None = None,
                     test: Dataset | None = None) -> "EvalSplits":
        """Splits for ``changes`` applied to the training data ``train``.

        ``forget`` = the affected rows in their original form, ``retain`` = every other
        training row, ``corrected`` = ``changes.apply(train)``.
        """
        if not isinstance(changes, Changes):
            raise MetricError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")
        try:
            resolved = changes.resolve(train)
        except (ChangesError, DataError) as exc:
            raise MetricError(f"The change set does not fit the training data: {exc}") from None
        mask = np.ones(len(train), dtype=bool)
        mask[train.positions(resolved.affected_ids)] = False
        retain = train.subset(np.flatnonzero(mask), name=f"{train.name}:retain")
        forget = resolved.Z.replace(name=f"{train.name}:forget")
        return cls(retain, forget, val, test, resolved.corrected)

    @classmethod
    def from_forget(cls, train: Dataset, forget_ids, *, val: Dataset | None = None,
                    test: Dataset | None = None) -> "EvalSplits":
        """Splits for removing the rows ``forget_ids`` (ids, not positions) from ``train``."""
        ids = np.asarray(forget_ids).reshape(-1)
        if ids.size == 0:
            raise MetricError("forget_ids is empty: name at least one training row to forget.")
        return cls.from_changes(train, Changes.remove(ids.tolist()), val=val, test=test)

    def get(self, need: Need) -> Dataset:
        value = getattr(self, need.value)
        if value is None:
            raise MetricError(f"This metric needs {NEED_HELP[need]}.")
        if len(value) == 0:
            raise MetricError(f"This metric needs {NEED_HELP[need]}, which has no rows "
                              "(a change set that touches every training row leaves no retain set).")
        return value


def _refuse_shared_rows(forget: Dataset, held: Dataset, name: str) -> None:
    """Refuse held-out rows that are forget rows (same id *and* same example): attacks would be void.

    Ids alone are not compared, since a held-out set loaded from another source may reuse them.
    """
    shared = np.intersect1d(forget.ids, held.ids)
    if shared.size == 0:
        return
    a, b = forget.subset(forget.positions(shared)), held.subset(held.positions(shared))
    same = (a.y == b.y) & np.all(a.dense_rows().reshape(len(a), -1) == b.dense_rows().reshape(len(b), -1), axis=1)
    if same.any():
        raise MetricError(f"{int(same.sum())} forget row(s) are also in the {name} set (e.g. id {int(shared[same][0])}); "
                          "held-out data must not contain training rows.")


@dataclass(frozen=True)
class Costs:
    """What producing a model cost: wall time and the derivatives computed."""

    seconds: float
    per_sample_gradients: int | None = None
    hvps: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise MetricError(f"Costs.seconds must be a finite number >= 0, got {self.seconds!r}.")
        for name in ("per_sample_gradients", "hvps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
                raise MetricError(f"Costs.{name} must be an integer count >= 0 or None, got {value!r}.")

    @classmethod
    def of(cls, obj) -> "Costs | None":
        """Costs from an ``UnlearnResult``, a model carrying ``train_seconds``, a dict or ``Costs``."""
        if obj is None or isinstance(obj, Costs):
            return obj
        if isinstance(obj, dict):
            return cls(**{k: obj[k] for k in ("seconds", "per_sample_gradients", "hvps") if k in obj})
        if hasattr(obj, "seconds") and hasattr(obj, "model"):
            return cls(float(obj.seconds), getattr(obj, "per_sample_gradients", None), getattr(obj, "hvps", None))
        seconds = getattr(obj, "train_seconds", None)
        if seconds is not None:
            return cls(float(seconds))
        if isinstance(obj, UnlearnableModel):
            return None  # a model that carries no timing
        raise MetricError(f"Cannot read costs from {type(obj).__name__}; pass Costs(seconds=..., "
                          "per_sample_gradients=..., hvps=...), an UnlearnResult or a dict.")


@dataclass
class Context:
    """One evaluation: models, splits, options and a cache shared by all metrics.

    Metric functions read models with :meth:`model`, data with :meth:`data` and outputs with
    :meth:`outputs` (computed once per model and split), and expensive intermediate results
    (shadow-model statistics) with :meth:`cached`. ``train_fn`` is the user's training loop
    (:mod:`unlearnkit.user_training`) when models are trained by one: the shadow setup trains
    with it and the retrained model was produced by it.
    """

    models: dict[str, UnlearnableModel | None]
    splits: EvalSplits
    costs: dict[str, Costs | None] = field(default_factory=dict)
    shadow: Any = None
    method: Any = None
    canary: Any = None
    canary_scorer: Callable | None = None
    seed: int = 123
    lira_fix_variance: bool = False
    svc_max_samples: int = 2000
    batch_size: int = 4096
    device: Any = None
    train_fn: Callable | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def model(self, subject: str) -> UnlearnableModel:
        model = self.models.get(subject)
        if model is None:
            raise MetricError(f"This metric needs the {subject} model.")
        return model

    def data(self, need: Need | str) -> Dataset:
        return self.splits.get(Need(need))

    def outputs(self, subject: str, split: Need | str) -> ModelOutputs:
        key = ("outputs", subject, Need(split).value)
        if key not in self._cache:
            self._cache[key] = model_outputs(self.model(subject), self.data(split), batch_size=self.batch_size,
                                             device=self.device)
        return self._cache[key]

    def cached(self, key, compute: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def has(self, need: Need) -> bool:
        if need in (Need.RETAIN, Need.FORGET, Need.VAL, Need.TEST, Need.CORRECTED):
            value = getattr(self.splits, need.value)
            return value is not None and len(value) > 0
        if need is Need.RETRAINED:
            return self.models.get("retrained") is not None
        if need is Need.COSTS:
            return any(c is not None for c in self.costs.values())
        if need is Need.SHADOW:
            return self.shadow is not None
        if need is Need.METHOD:
            return self.method is not None
        if need is Need.CANARY:
            return self.canary is not None and self.canary_scorer is not None
        raise MetricError(f"Unknown need {need!r}.")
