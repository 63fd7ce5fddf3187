"""Search spaces, read from the method registry.

Every method's hyperparameters carry a range; the ones DeepUnlearn searched say so ("log-uniform
[1e-5, 1e-1] (DeepUnlearn search)", "{64, 128, 256}", "[0, 1] (DeepUnlearn search)", epochs
"capped at 20 % of the training epochs"). :func:`search_space` turns those into Optuna
distributions, so a method's space is written once, next to its defaults. What is searched:

* learning rates and weight decays: log-uniform in the stated interval;
* batch sizes: the stated set;
* weights, fractions, temperatures: uniform in the stated interval ("[0, 1]", "[0, 5]");
* epochs: integers in [1, cap] with cap = ceil(20 % of the training epochs) (DeepUnlearn's cap),
  a float in [1, cap] where the method takes fractional epochs;
* ``int [a, b]`` ranges (CF-k / EU-k's k): integers in the interval.

Not searched (held at the default, as DeepUnlearn does): momentum (DeepUnlearn fixes 0.9),
seeds, solver choices and every hyperparameter with an ``'auto'`` rule. ``fixed`` pins any
hyperparameter to a value of the user's choosing.
"""

from __future__ import annotations

import re

_NUM = r"[-+0-9.eE]+"
_LOG = re.compile(rf"log-uniform \[({_NUM}), ({_NUM})\]")
_SET = re.compile(r"^\{([0-9, ]+)\}")
_INTERVAL = re.compile(rf"^\[({_NUM}), ({_NUM})\] \(DeepUnlearn search")
_INT = re.compile(rf"int \[({_NUM}), ({_NUM})\]")
_EPOCHS = ("caps at 20 %", "searches [1, cap]", "float in [1, cap]")


def search_space(method: str, epoch_cap: int, fixed: dict | None = None) -> dict:
    """``{name: optuna distribution}`` for ``method`` (empty: nothing to search)."""
    import optuna.distributions as D

    from unlearnkit.methods import info

    fixed = fixed or {}
    space = {}
    for h in info(method).hyperparameters:
        if h.name in fixed:
            continue
        text, types = h.range, h.type if isinstance(h.type, tuple) else (h.type,)
        if h.name == "momentum" or "DeepUnlearn fixes" in text:
            continue
        if any(marker in text for marker in _EPOCHS):
            if float in types and "float" in text:
                space[h.name] = D.FloatDistribution(1.0, float(max(1, epoch_cap)))
            else:
                space[h.name] = D.IntDistribution(1, max(1, epoch_cap))
        elif m := _LOG.search(text):
            space[h.name] = D.FloatDistribution(float(m[1]), float(m[2]), log=True)
        elif m := _SET.search(text):
            space[h.name] = D.CategoricalDistribution([int(v) for v in m[1].split(",")])
        elif m := _INT.search(text):
            space[h.name] = D.IntDistribution(int(float(m[1])), int(float(m[2])))
        elif m := _INTERVAL.search(text):
            low, high = float(m[1]), float(m[2])
            space[h.name] = D.FloatDistribution(low, high)
    return space


def describe_space(space: dict) -> dict:
    """A JSON-able description of a space, stored with the study."""
    import optuna.distributions as D

    out = {}
    for name, dist in space.items():
        if isinstance(dist, D.CategoricalDistribution):
            out[name] = {"choices": list(dist.choices)}
        else:
            out[name] = {"low": dist.low, "high": dist.high, "log": getattr(dist, "log", False),
                         "type": "int" if isinstance(dist, D.IntDistribution) else "float"}
    return out


# ---------------------------------------------------------------------------- fixed values
def check_fixed(method: str, params: dict, *, where: str = "") -> None:
    """Refuse fixed hyperparameters that the method registry refuses (type, non-finite numbers,
    integers beyond 64 bits, values outside the registered range:
    :meth:`~unlearnkit.methods.base.Hyperparameter.problem`) and epoch counts beyond
    :data:`~unlearnkit.bench.config.MAX_EPOCHS`.

    Names the method does not have are left to :func:`unlearnkit.methods.make`, which lists the
    valid ones. Raises :class:`~unlearnkit.errors.BenchError` naming ``where.<name>``, the value
    and what is allowed.
    """
    from unlearnkit.bench.config import MAX_EPOCHS
    from unlearnkit.errors import BenchError
    from unlearnkit.methods import info

    where = where or f"methods.fixed.{method}"
    registered = {h.name: h for h in info(method).hyperparameters}
    for name, value in params.items():
        h = registered.get(name)
        if h is None:
            continue
        key = f"{where}.{name}"
        problem = h.problem(value)
        if problem:
            hint = f" See `unlearnkit methods {method}`." if "registered range" in problem else ""
            raise BenchError(f"{key}{problem}{hint}")
        if (isinstance(value, (int, float)) and not isinstance(value, bool) and any(marker in h.range for marker in _EPOCHS)
                and value > MAX_EPOCHS):
            raise BenchError(f"{key} = {value!r} epochs: at most {MAX_EPOCHS:,} (the limit of train.epochs); "
                             "a run that long never finishes.")
