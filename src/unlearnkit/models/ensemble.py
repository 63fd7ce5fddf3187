"""A sharded ensemble: the model SISA training produces (Bourtoule et al., IEEE S&P 2021).

The training rows are split into ``n_shards`` disjoint shards and one member of the base
architecture is trained on each. Rows go to shards by a seeded hash of their *row id*
(:func:`shard_of`), so the assignment needs no storage, survives saving and loading, and is the
same for the original and the corrected data. The ensemble predicts with the mean of the
members' class probabilities: its logits are ``log(mean_k softmax(f_k(x)))`` and its loss is
the cross-entropy of that mixture.

Unlearning (``unlearnkit.methods.make("sisa")``) retrains, from its own initial seed, only the
members whose shard holds an affected row; the other members are kept as they are, which is
what makes SISA exact: the result is the model SISA training on the corrected data would give.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel, class_logits

_MIX = np.uint64(0x9E3779B97F4A7C15)


def shard_of(ids, n_shards: int, seed: int = 0) -> np.ndarray:
    """The shard of each row id: a splitmix64 hash of ``(id, seed)`` modulo ``n_shards``."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(seed) * _MIX
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int64)


class ShardedEnsemble(UnlearnableModel):
    """``n_shards`` members of one base architecture, each trained on its own shard.

    Parameters
    ----------
    base_kind, base_config:
        The members' architecture, as for :func:`unlearnkit.models.build`.
    n_shards:
        Number of members (shards), >= 2.
    shard_seed:
        Seed of the row-to-shard hash.
    """

    kind = "sisa"
    config_keys = ("base_kind", "base_config", "n_shards", "shard_seed")

    def __init__(self, *, base_kind: str, base_config: dict, n_shards: int = 5, shard_seed: int = 0) -> None:
        from unlearnkit.models import build

        if base_kind == self.kind:
            raise ModelError("A sharded ensemble cannot have sharded ensembles as members.")
        if int(n_shards) < 2:
            raise ModelError(f"n_shards must be >= 2, got {n_shards}.")
        members = [build(base_kind, **dict(base_config)) for _ in range(int(n_shards))]
        super().__init__(n_classes=members[0].n_classes, l2=members[0].l2)
        self.base_kind = base_kind
        self.base_config = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(base_config).items()}
        self.n_shards = int(n_shards)
        self.shard_seed = int(shard_seed)
        self.members = nn.ModuleList(members)

    @classmethod
    def for_data(cls, base_kind: str, data, *, n_shards: int = 5, shard_seed: int = 0, **config) -> "ShardedEnsemble":
        """An ensemble of ``base_kind`` members sized for ``data`` (see :func:`unlearnkit.models.for_data`)."""
        from unlearnkit.models import for_data

        return cls(base_kind=base_kind, base_config=for_data(base_kind, data, **config).config, n_shards=n_shards,
                   shard_seed=shard_seed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.members[0].input_shape

    @property
    def member_template(self) -> UnlearnableModel:
        """A member: training configs resolve against the base architecture, not the ensemble."""
        return self.members[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(class_logits(m(x)), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - np.log(self.n_shards)

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.nll_loss(logits, y, reduction="none")

    def shards(self, ids) -> np.ndarray:
        """The shard of each row id."""
        return shard_of(ids, self.n_shards, self.shard_seed)

    def fit_members(self, data, config, device, progress=None, members=None) -> list[float]:
        """Train members (all, or the listed indices) from scratch on their shards of ``data``; returns seconds per member.

        Member ``k`` starts from ``config.seed + k`` and repeats the base training recipe
        ``config`` on the rows of shard ``k``.
        """
        from dataclasses import replace

        from unlearnkit.training import train

        shard = self.shards(data.ids)
        todo = range(self.n_shards) if members is None else members
        seconds = []
        for k in todo:
            rows = np.flatnonzero(shard == k)
            if rows.size == 0:
                raise ModelError(f"Shard {k} of {self.n_shards} has no rows of {data.name}; use fewer shards.")
            part = data.subset(rows, name=f"{data.name}:shard{k}")
            member = train(self.members[k], part, config=replace(config, seed=config.seed + k), device=device)
            seconds.append(member.train_seconds)
            with torch.no_grad():
                self.members[k].load_state_dict(member.state_dict())
            if progress is not None:
                progress(k + 1, self.n_shards, f"shard {k + 1}/{self.n_shards}")
        return seconds
