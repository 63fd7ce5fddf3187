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
    check: bool | str = True,
    retrained: UnlearnableModel | None = None,
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

    ``check`` measures the original and the unlearned model before → after and logs a warning, with
    the likely cause and the fix, for every measure the update made worse (see
    :mod:`unlearnkit.before_after`); the numbers are in ``result.diagnostics["check"]``
    (``{measure: {"before", "after", "better", "worse"}}``, and ``"retrained"`` with ``retrained=``)
    and the names of the worse ones in :attr:`~unlearnkit.influence.updates.UnlearnResult.worse`.
    The check runs after the method and is not counted in ``result.seconds``.

    - ``True`` / ``"cheap"`` (default): accuracy on the corrected affected rows (``O(k)``) and, for
      a convex model, the gradient residual ``||grad L(theta; D~)||_2`` on the corrected data (one
      pass over the ``n`` rows). With a fitted curvature (``curvature=``, the per-request path of a
      few milliseconds) the residual is left out, so that path stays ``O(k)``.
    - ``"full"``: also the residual with a fitted curvature, and accuracy on the corrected data
      (one more pass over the ``n`` rows).
    - ``False`` / ``"off"``: no check.

    ``retrained``: the model retrained on the corrected data, if you have it (e.g.
    ``unlearnkit.training.retrain(model, data, changes)``): the check then judges every measure
    against its retrained value (worse: farther from it than the original was), since retraining
    itself can lower the accuracy on the corrected data. The result of ``method="retrain"`` is
    never judged worse.
    """
    from unlearnkit import before_after

    mode = before_after.Check.of(check)
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
    if retrained is not None and not isinstance(retrained, UnlearnableModel):
        raise ModelError(f"retrained must be an unlearnkit model (the model retrained on the corrected data), got "
                         f"{type(retrained).__name__}.")
    if isinstance(getattr(model, "metadata", None), dict) and "preprocess" in model.metadata:
        from unlearnkit.data.preprocess import check_prepared

        check_prepared(model, data)  # a model trained on scaled data, given the raw data: refused with the fix
    with changes._remember(data):  # the update, its guard and the check share one resolution (Z, Z~, D~)
        result = methods.make(method, **hyperparameters).unlearn(model, data, changes, val=val, device=device)
        if mode is not before_after.Check.OFF:
            cached = result.diagnostics.get("settings", {}).get("solver") == "cached"  # a fitted curvature's path
            result.diagnostics["check"] = before_after.measure(model, result.model, data, changes, check=mode,
                                                               cached_curvature=cached, device=device,
                                                               retrained=retrained, method=result.method)
            before_after.warn(result, convex=bool(getattr(model, "convex", False)))
    return result
