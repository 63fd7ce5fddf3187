"""The method registry: one interface for every unlearning method.

A method is a class whose constructor takes its hyperparameters (keyword-only, nothing else
happens there) and whose one verb is ``unlearn(model, data, changes, *, val=None, device=None)``,
returning an :class:`~unlearnkit.influence.updates.UnlearnResult` with a *new* model. ``data`` is
the training data the model saw, ``changes`` what to take back (``Changes.remove(forget_ids)``
for a forget set), ``val`` optional held-out rows; the test set is never given to a method.
``unlearn_sets(model, retain, forget, val=...)`` is the same call stated with retain and forget
sets (see :mod:`unlearnkit.methods.task`). The
registry records each method's hyperparameters (type, default, range and where the default
comes from) and its reference, rejects unknown hyperparameters listing the valid ones, and
``describe(name)`` renders all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlearnkit.errors import MethodError


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a method."""

    name: str
    type: type | tuple
    default: Any
    help: str
    range: str = ""
    source: str = ""

    def check(self, value: Any) -> Any:
        if value is None and self.default is None:
            return value
        types = _as_tuple(self.type)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.type) or isinstance(value, bool) and bool not in _as_tuple(self.type):
            names = "/".join(t.__name__ for t in _as_tuple(self.type))
            raise MethodError(f"Hyperparameter {self.name!r} must be {names}, got {value!r}.")
        return value


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


class Method:
    """Mixin of every registered method: ``unlearn_sets`` and ``get_params`` on top of ``unlearn``."""

    name: str = ""

    def get_params(self) -> dict:
        """The hyperparameters this method was built with."""
        return {h.name: getattr(self, h.name) for h in info(self.name).hyperparameters}

    def unlearn_sets(self, model, retain, forget, *, val=None, device=None):
        """Unlearn the rows of ``forget`` from a model trained on ``retain + forget``."""
        from unlearnkit.methods.task import from_sets

        task = from_sets(retain, forget, val)
        return self.unlearn(model, task.data, task.changes, val=val, device=device)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type
    summary: str
    hyperparameters: tuple[Hyperparameter, ...]
    reference: str


_REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, *, summary: str, hyperparameters: tuple[Hyperparameter, ...] = (), reference: str = ""):
    """Class decorator adding a method to the registry under ``name``."""

    def decorate(cls):
        if name in _REGISTRY:
            raise MethodError(f"A method named {name!r} is already registered.")
        _REGISTRY[name] = MethodInfo(name, cls, summary, tuple(hyperparameters), reference)
        cls.name = name
        return cls

    return decorate


def info(name: str) -> MethodInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"Unknown unlearning method {name!r}; valid: {', '.join(sorted(_REGISTRY))}.") from None


def make(name: str, **hyperparameters):
    """Build method ``name`` from its hyperparameters, validating names and types."""
    meta = info(name)
    valid = {h.name: h for h in meta.hyperparameters}
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        listing = ", ".join(f"{h.name} (default {h.default!r})" for h in meta.hyperparameters) or "none"
        raise MethodError(f"Method {name!r} has no hyperparameter(s) {unknown}; valid: {listing}.")
    values = {h.name: h.default for h in meta.hyperparameters}
    for key, value in hyperparameters.items():
        values[key] = valid[key].check(value)
    return meta.cls(**values)


def names() -> list[str]:
    """Names of every registered method."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """A plain-text description of a method: summary, hyperparameters, reference."""
    meta = info(name)
    lines = [f"{meta.name}: {meta.summary}"]
    if meta.hyperparameters:
        lines.append("hyperparameters:")
        for h in meta.hyperparameters:
            names_ = "/".join(t.__name__ for t in _as_tuple(h.type))
            extra = "".join(f"; {k} {v}" for k, v in (("range", h.range), ("source", h.source)) if v)
            lines.append(f"  {h.name} ({names_}, default {h.default!r}{extra}): {h.help}")
    if meta.reference:
        lines.append(f"reference: {meta.reference}")
    return "\n".join(lines)
