"""SISA: retrain only the shards that held an affected row (Bourtoule et al., IEEE S&P 2021).

Works on a :class:`~unlearnkit.models.ensemble.ShardedEnsemble` (train one with
``uk.train(ShardedEnsemble.for_data("cnn", data, n_shards=5), data)``). The change set is resolved
against the training data; every member whose shard (a seeded hash of the row id) contains an
affected row is retrained from its own initial seed on its shard of the corrected data, and the
other members are kept bit for bit. The result equals SISA training on the corrected data, so
SISA is exact unlearning; its price is paid at training and prediction time (members see
``1 / n_shards`` of the data each). Slicing within shards (checkpoints per slice) is not
implemented: a touched shard retrains from scratch.
"""

from __future__ import annotations

import copy

import numpy as np

from unlearnkit import timing
from unlearnkit.errors import MethodError
from unlearnkit.influence.updates import UnlearnResult
from unlearnkit.methods.base import Method, register
from unlearnkit.methods.task import Task
from unlearnkit.models.ensemble import ShardedEnsemble

BOURTOULE = ("Bourtoule, Chandrasekaran, Choquette-Choo, Jia, Travers, Zhang, Lie, Papernot. Machine Unlearning. "
             "IEEE S&P 2021 (SISA training).")


@register(
    "sisa",
    summary="SISA: retrain from scratch only the members of a sharded ensemble whose shard held an affected row",
    reference=BOURTOULE,
)
class SISA(Method):
    def unlearn(self, model, data, changes, *, val=None, device=None) -> UnlearnResult:
        if not isinstance(model, ShardedEnsemble):
            raise MethodError(
                f"sisa unlearns a sharded ensemble, and this is a {getattr(model, 'kind', type(model).__name__)} model. Train one "
                "with uk.train(uk.models.ShardedEnsemble.for_data(<kind>, data, n_shards=5), data) and unlearn that.")
        config = getattr(model, "train_config", None)
        if config is None:
            raise MethodError("The ensemble carries no train_config: train it with unlearnkit.train(...) first.")
        task = Task.build(data, changes, val)
        model.check_data(data)
        start = timing.start()
        touched = sorted(set(model.shards(task.resolved.affected_ids).tolist()))
        net = copy.deepcopy(model)
        if device is not None:
            net = net.to(device)
        if hasattr(net, "train_seconds"):
            del net.train_seconds
        seconds = net.fit_members(task.retain, config, device if device is not None else next(net.parameters()).device,
                                  members=touched)
        net.eval()
        sizes = np.bincount(model.shards(task.retain.ids), minlength=model.n_shards)
        return UnlearnResult(net, self.name, timing.since(start), task.n_affected,
                             diagnostics={"shards": model.n_shards, "retrained_shards": touched,
                                          "retrained_rows": int(sizes[touched].sum()), "member_seconds": seconds})
