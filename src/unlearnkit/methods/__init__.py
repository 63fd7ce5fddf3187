"""Unlearning methods, one registry: ``make(name, **hp).unlearn(model, data, changes, val=...)``.

``list()`` names every method; ``describe(name)`` shows its hyperparameters (type, default,
range, source) and reference. The families:

* the closed-form influence updates of Warnecke et al.: ``first-order``, ``second-order``;
* the 18 methods of the DeepUnlearn benchmark: ``ft``, ``ga``, ``srl``, ``ng+``, ``bad-teacher``,
  ``salun``, ``scrub``, ``iu``, ``fisher``, ``cf-k``, ``eu-k``, ``fcs``, ``msg``, ``cfw``, ``prmq``,
  ``ct``, ``kde``, ``rni``;
* methods that benchmark left out: ``ng``, ``unsir``, ``ssd``, ``l1-sparse``, ``boundary-shrink``;
* references: ``retrain`` (and ``retrain-warm``) and ``sisa`` (on a sharded ensemble).
"""

from unlearnkit.methods import distill as _distill  # noqa: F401  (each module registers its methods)
from unlearnkit.methods import finetune as _finetune  # noqa: F401
from unlearnkit.methods import fisher as _fisher  # noqa: F401
from unlearnkit.methods import influence as _influence  # noqa: F401
from unlearnkit.methods import noise as _noise  # noqa: F401
from unlearnkit.methods import reinit as _reinit  # noqa: F401
from unlearnkit.methods import retrain as _retrain  # noqa: F401
from unlearnkit.methods import saliency as _saliency  # noqa: F401
from unlearnkit.methods import sisa as _sisa  # noqa: F401
from unlearnkit.methods.base import Hyperparameter, Method, MethodInfo, describe, info, make, names, register
from unlearnkit.methods.task import Task, from_sets

list = names  # noqa: A001  - ``unlearnkit.methods.list()`` as the public verb

__all__ = ["Hyperparameter", "Method", "MethodInfo", "Task", "describe", "from_sets", "info", "list", "make", "names",
           "register"]
