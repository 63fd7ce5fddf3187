"""Unlearning methods, one registry: ``make(name, **hp).unlearn(model, data, changes)``."""

from unlearnkit.methods import influence as _influence  # noqa: F401  (registers methods)
from unlearnkit.methods import retrain as _retrain  # noqa: F401
from unlearnkit.methods.base import Hyperparameter, MethodInfo, describe, info, make, names, register

list = names  # noqa: A001  - ``unlearnkit.methods.list()`` as the public verb

__all__ = ["Hyperparameter", "MethodInfo", "describe", "info", "list", "make", "names", "register"]
