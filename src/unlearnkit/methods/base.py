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

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from unlearnkit.errors import MethodError

_NUM = r"[-+0-9.eE]+"
_LOWER = re.compile(rf"^(>=|>)\s*({_NUM})")
_BOUNDS = re.compile(rf"^(log-uniform\s+)?([\[(])\s*({_NUM}),\s*({_NUM})\s*([\])])")
_CHOICES = re.compile(r"^[A-Za-z_]+(\|[A-Za-z_]+)+$")
_SET = re.compile(r"^\{([0-9, ]+)\}")
_INT64 = 2**63


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
        """``value`` as the method receives it (an int where a float is asked becomes a float).

        Raises :class:`~unlearnkit.errors.MethodError` naming the hyperparameter when
        :meth:`problem` finds one.
        """
        if value is None and self.default is None:
            return value
        problem = self.problem(value)
        if problem:
            raise MethodError(f"Hyperparameter {self.name!r}{problem}")
        if float in _as_tuple(self.type) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (a phrase that follows the name), or None.

        Checked: the type, finiteness of numbers, integers within 64 bits, and the registered
        range's first clause (see :meth:`rule`). Strings where the range states numbers (an
        ``'auto'`` rule) are left to the method.
        """
        if value is None and self.default is None:
            return None
        types = _as_tuple(self.type)
        widened = float in types and isinstance(value, int) and not isinstance(value, bool)
        if not widened and (not isinstance(value, self.type) or isinstance(value, bool) and bool not in types):
            return f" must be {'/'.join(t.__name__ for t in types)}, got {value!r}."
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f" must be a finite number, got {value!r}."
        if isinstance(value, int) and not -_INT64 <= value < _INT64:
            return f" does not fit a 64-bit integer (got a {value.bit_length():,}-bit number)."
        rule = self.rule()
        if rule is None:
            return None
        description, ok = rule
        if isinstance(value, str) != description.startswith("one of"):
            return None  # 'auto' where a number is also valid, or a number where strings are listed
        if not ok(value):
            return f" = {value!r} is outside its registered range ({self.range}): it must be {description}."
        return None

    def rule(self) -> tuple[str, Callable[[Any], bool]] | None:
        """What a value must satisfy, read from the first clause of the registered range.

        Returns ``(description, predicate)``, or None when the range states no numeric or choice
        constraint (``">= 0; DeepUnlearn caps ..."`` means ``>= 0``). A log-uniform *search*
        interval bounds the search, not a value given by hand: such a value must be ``>= 0`` (a
        learning rate ``> 0``); a plain interval (``[0, 1]``, ``[0, 1)``) bounds both; a set of
        batch sizes (``{64, 128, 256}``) asks for an integer ``>= 1``; ``a|b|c`` lists the valid
        strings.
        """
        text = self.range.split(";")[0].strip()
        if _CHOICES.match(text):
            choices = text.split("|")
            return f"one of {', '.join(choices)}", lambda v: v in choices
        if m := _BOUNDS.match(text):
            if m[1]:
                if self.name == "lr" or self.name.endswith("_lr"):
                    return "> 0 (a learning rate)", lambda v: v > 0
                return ">= 0", lambda v: v >= 0
            low, high, left, right = float(m[3]), float(m[4]), m[2], m[5]
            return (f"in {left}{m[3]}, {m[4]}{right}",
                    lambda v: (v >= low if left == "[" else v > low) and (v <= high if right == "]" else v < high))
        if _SET.match(text):
            return "an integer >= 1", lambda v: v >= 1
        if m := _LOWER.match(text):
            bound = float(m[2])
            return f"{m[1]} {m[2]}", (lambda v: v >= bound) if m[1] == ">=" else (lambda v: v > bound)
        return None


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
