"""What an unlearning method is given: the training data and the change, seen as retain and forget sets.

Every method in the registry is called the same way, ``unlearn(model, data, changes, *, val=None,
device=None)``. The influence updates work on ``(data, changes)`` directly; the deep-unlearning
methods of DeepUnlearn think in *retain* and *forget* sets. :class:`Task` is the bridge:

* ``forget`` = the affected rows ``Z`` as the model saw them (removed rows, rows whose labels or
  features are corrected);
* ``retain`` = the corrected training data ``D~``: every unaffected row plus the corrected
  versions ``Z~`` of edited rows. For a pure removal (the DeepUnlearn setting) that is exactly
  ``D`` minus the forget set.
* ``val`` = held-out rows a method may use (KDE distils on them, SCRUB picks its checkpoint
  with them). The test set is never part of a task, so no method can touch it.

:func:`from_sets` builds a task from retain and forget sets directly (the forget rows are
removed), which is how the DeepUnlearn protocol states it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MethodError


def check_val(data: Dataset, val: Dataset | None, model=None) -> None:
    """Raise :class:`MethodError` unless ``val`` is None or held-out rows shaped like ``data`` (labels the model knows)."""
    if val is None:
        return
    if not isinstance(val, Dataset):
        raise MethodError(f"val must be an unlearnkit Dataset or None, got {type(val).__name__}.")
    if tuple(val.feature_shape) != tuple(data.feature_shape):
        raise MethodError(f"val has examples of shape {val.feature_shape}, the training data {data.feature_shape}.")
    n_classes = getattr(model, "n_classes", None)
    if n_classes is not None and len(val) and int(np.max(val.y)) >= n_classes:
        raise MethodError(f"val has label {int(np.max(val.y))}, but the model has {n_classes} classes (0..{n_classes - 1}).")
    shared = np.intersect1d(val.ids, data.ids)
    if shared.size and _same_rows(val, data, shared):
        raise MethodError(f"{shared.size} validation row(s) are also training rows (e.g. id {int(shared[0])}); "
                          "validation data must be held out.")


@dataclass(frozen=True)
class Task:
    """Training data, change set and the derived retain / forget / validation sets."""

    data: Dataset
    changes: Changes
    resolved: Resolved
    val: Dataset | None = None

    @classmethod
    def build(cls, data: Dataset, changes: Changes, val: Dataset | None = None) -> "Task":
        if not isinstance(data, Dataset):
            raise MethodError(f"data must be an unlearnkit Dataset, got {type(data).__name__}.")
        if not isinstance(changes, Changes):
            raise MethodError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")
        check_val(data, val)
        resolved = changes.resolve(data)
        if len(resolved.corrected) == 0:
            raise MethodError("The change set removes every training row: nothing is left to retain; train a new model.")
        return cls(data, changes, resolved, val)

    @property
    def retain(self) -> Dataset:
        """The corrected training data ``D~`` (unaffected rows and corrected rows)."""
        return self.resolved.corrected

    @property
    def forget(self) -> Dataset:
        """The affected rows ``Z`` as they were in the training data."""
        return self.resolved.Z

    @property
    def corrections(self) -> Dataset:
        """The corrected versions ``Z~`` of edited rows (empty for pure removals)."""
        return self.resolved.Z_tilde

    @property
    def n_affected(self) -> int:
        return self.resolved.n_affected

    @property
    def n_classes(self) -> int:
        return self.data.n_classes


def from_sets(retain: Dataset, forget: Dataset, val: Dataset | None = None) -> Task:
    """A task that removes ``forget`` from the training data ``retain + forget``."""
    for name, ds in (("retain", retain), ("forget", forget)):
        if not isinstance(ds, Dataset):
            raise MethodError(f"{name} must be an unlearnkit Dataset, got {type(ds).__name__}.")
    if len(forget) == 0:
        raise MethodError("The forget set is empty: there is nothing to unlearn.")
    return Task.build(concat(retain, forget), Changes.remove(forget.ids.tolist()), val)


def concat(a: Dataset, b: Dataset, name: str | None = None) -> Dataset:
    """Rows of ``a`` then ``b`` (ids must not collide), sorted by id so the source order comes back."""
    if tuple(a.feature_shape) != tuple(b.feature_shape):
        raise MethodError(f"Cannot join data of example shapes {a.feature_shape} and {b.feature_shape}.")
    if a.is_sparse or b.is_sparse:
        X = sp.vstack([sp.csr_matrix(a.X), sp.csr_matrix(b.X)]).tocsr()
    else:
        X = np.concatenate([a.X, b.X.astype(a.X.dtype, copy=False)])
    ids = np.concatenate([a.ids, b.ids])
    if np.unique(ids).size != ids.size:
        raise MethodError("The retain and forget sets share row ids; a row is either retained or forgotten.")
    order = np.argsort(ids, kind="stable")
    joined = Dataset(X, np.concatenate([a.y, b.y]), ids, n_classes=max(a.n_classes, b.n_classes),
                     name=name or a.name.rsplit(":", 1)[0], feature_names=a.feature_names)
    return joined.subset(order)


def _same_rows(val: Dataset, data: Dataset, ids: np.ndarray) -> bool:
    """Whether any row sharing an id is the same example (ids are only unique within one data set)."""
    a = val.subset(val.positions(ids)).dense_rows().reshape(len(ids), -1)
    b = data.subset(data.positions(ids)).dense_rows().reshape(len(ids), -1)
    return bool(np.any(np.all(a == b, axis=1)))
