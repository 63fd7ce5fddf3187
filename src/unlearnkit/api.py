"""The one-call Python API: ``unlearn(model, data, changes, method=...)``."""

from __future__ import annotations

import torch

from unlearnkit import methods
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ChangesError, DataError, ModelError
from unlearnkit.influence.updates import UnlearnResult
from unlearnkit.models.base import UnlearnableModel


def unlearn(
    model: UnlearnableModel,
    data: Dataset,
    changes: Changes,
    *,
    method: str = "second-order",
    val: Dataset | None = None,
    device=None,
    **hyperparameters,
) -> UnlearnResult:
    """Unlearn ``changes`` from ``model`` trained on ``data``; returns a new model and diagnostics.

    ``method`` is any name in :func:`unlearnkit.methods.list` (``first-order``,
    ``second-order``, ``retrain``, ...); ``hyperparameters`` are that method's, validated
    against the registry (unknown ones are rejected with the valid list). ``val`` is optional
    held-out data for the methods that use it (KDE distils on it, SCRUB picks its checkpoint with
    it); no method is given the test set. ``model`` is never modified, also when the method fails.

    ``data`` may be streamed (:func:`unlearnkit.data.from_torch` on a ``torch.utils.data.Dataset``):
    the influence updates and the methods that train batch by batch read it in batches; a method
    that needs the whole retain set as one tensor refuses it with a :class:`MethodError`.
    """
    if not isinstance(data, Dataset):
        raise DataError(f"data must be an unlearnkit Dataset, got {type(data).__name__}.")
    if not isinstance(changes, Changes):
        raise ChangesError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")
    if isinstance(model, torch.nn.Module) and not isinstance(model, UnlearnableModel):
        raise ModelError(f"model is a plain {type(model).__name__}; make it an unlearnkit model with "
                         "unlearnkit.wrap(module) (it is not copied or changed), then unlearn the wrapped model.")
    if not isinstance(model, UnlearnableModel):
        raise ModelError(f"model must be an unlearnkit model (a model of unlearnkit.models, or unlearnkit.wrap(module) "
                         f"for a torch.nn.Module), got {type(model).__name__}.")
    return methods.make(method, **hyperparameters).unlearn(model, data, changes, val=val, device=device)
