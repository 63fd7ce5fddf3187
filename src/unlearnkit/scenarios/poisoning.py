"""Scenario ``label-poisoning``: correct flipped training labels of a CNN.

As in Warnecke et al. (NDSS 2023, label poisoning), a share of the training labels is flipped
before training: **random** flips (each to a uniformly drawn other class) or **targeted** flips
(class ``s`` to class ``9 - s``, the pairing of the reference code, ``budget / 10`` per class).
The owner learns the correct labels of the flipped points and unlearns the wrong ones by
relabelling them. Problems: the small CNN on scikit-learn's digits and on Fashion-MNIST
(Debian's ``dataset-fashion-mnist``; skipped with a note when it is not installed), with 10 % and
20 % of the labels flipped.

Efficacy is the clean test accuracy restored: ``restored = (acc - acc_poisoned) / (acc_retrained
- acc_poisoned)``, the share of the accuracy lost to poisoning that a method wins back
(retraining restores 100 %). The influence updates run on all parameters and, as the reference
code's CIFAR experiment does, on the output layer only (``[head]``: a convex problem, solved
exactly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.data.embedded import load_digits
from unlearnkit.data.splits import train_test_split
from unlearnkit.errors import DataError
from unlearnkit.models import ShardedEnsemble, for_data
from unlearnkit.scenarios import rules
from unlearnkit.scenarios.compare import Problem
from unlearnkit.training import TrainConfig, train

log = logging.getLogger(__name__)

NAME = "label-poisoning"
TITLE = "Scenario: poisoned labels in a CNN"


@dataclass(frozen=True)
class Size:
    fashion_rows: int          # 0 = digits only
    fashion_test_rows: int
    rates: tuple[float, ...]
    kinds: tuple[str, ...]
    digits_epochs: int
    fashion_epochs: int
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64


SIZES = {
    "tiny": Size(0, 0, (0.2,), ("random",), 10, 0, (4, 8), 16),
    "full": Size(5_000, 5_000, (0.1, 0.2), ("random", "targeted"), 20, 8),
}


def flip_labels(y: np.ndarray, rate: float, kind: str, n_classes: int, seed: int) -> np.ndarray:
    """Positions and new labels of ``round(rate * n)`` flipped labels (random other class, or ``s -> C-1-s``)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    budget = int(round(rate * n))
    if kind == "random":
        rows = np.sort(rng.choice(n, size=budget, replace=False))
        new = (y[rows] + rng.integers(1, n_classes, size=rows.size)) % n_classes
    elif kind == "targeted":
        per_class = budget // n_classes
        picks = []
        for c in range(n_classes):
            members = np.flatnonzero(y == c)
            picks.append(rng.choice(members, size=min(per_class, members.size), replace=False))
        rows = np.sort(np.concatenate(picks))
        new = n_classes - 1 - y[rows]
    else:
        raise DataError(f"Unknown poisoning kind {kind!r}; choose random or targeted.")
    return rows, new


def image_data(size, seed: int):
    """``[(name, train, test, epochs)]``: digits always, Fashion-MNIST when installed and asked for."""
    out = []
    splits = train_test_split(load_digits(), test_fraction=0.25, seed=seed)
    out.append(("digits", splits.train, splits.test, size.digits_epochs))
    if size.fashion_rows:
        from unlearnkit.data.readers import load_fashion_mnist

        try:
            train_all, test_all = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
        except DataError as exc:
            log.warning("Fashion-MNIST skipped: %s", exc)
            return out
        rng = np.random.default_rng(seed)
        tr = train_all.subset(np.sort(rng.choice(len(train_all), size=size.fashion_rows, replace=False)))
        te = test_all.subset(np.sort(rng.choice(len(test_all), size=size.fashion_test_rows, replace=False)))
        out.append(("fashion-mnist", tr, te, size.fashion_epochs))
    return out


def train_pair(kind_data: Dataset, size, epochs: int, seed: int, device):
    """The CNN and its 5-shard SISA ensemble trained on ``kind_data`` with the same recipe."""
    config = TrainConfig(epochs=epochs, lr=3e-3, batch_size=64, seed=seed)
    cfg = dict(channels=size.channels, hidden=size.hidden, l2=1e-3)
    model = train(for_data("cnn", kind_data, **cfg), kind_data, config=config, device=device)
    sisa = train(ShardedEnsemble.for_data("cnn", kind_data, n_shards=rules.SISA_SHARDS, **cfg), kind_data, config=config,
                 device=device)
    return model, sisa


def problems(size: Size, seed: int, device) -> list[Problem]:
    out = []
    for name, clean, test, epochs in image_data(size, seed):
        for kind in size.kinds:
            for rate in size.rates:
                rows, new = flip_labels(clean.y, rate, kind, clean.n_classes, seed)
                y = clean.y.copy()
                y[rows] = new
                poisoned = clean.replace(y=y, name=f"{clean.name}:poisoned")
                model, sisa = train_pair(poisoned, size, epochs, seed, device)
                changes = Changes.relabel(clean.ids[rows], clean.y[rows])
                out.append(Problem(NAME, f"{name}: {int(100 * rate)}% {kind} flips", seed, model, poisoned, test, changes,
                                   sisa=sisa, info={"rows": f"{len(clean)} train / {len(test)} test",
                                                    "flipped": len(rows), "epochs": epochs}))
    return out


def strategies(model, data, changes, *, seed: int = 0, device=None):
    return [*rules.default_strategies(model, data, changes, seed=seed, device=device),
            *[s for s in rules.influence_strategies(model, data, changes, params="head") if "-it" not in s.label]]


def derive(summary: list[dict]) -> list[str]:
    """Add ``restored`` (see the module docstring) to each summary entry; returns the new keys."""
    for e in summary:
        e["restored"] = restored(summary, e["problem"], e["method"])
    return ["restored"]


def restored(summary: list[dict], problem: str, method: str) -> float | None:
    """``(acc - acc_original) / (acc_retrained - acc_original)`` from the mean accuracies."""
    from unlearnkit.scenarios.report import lookup

    e, orig, ret = (lookup(summary, problem, m) for m in (method, "original", "retrain"))
    if not e or e.get("test_accuracy") is None or not orig or not ret:
        return None
    lost = ret["test_accuracy"] - orig["test_accuracy"]
    return None if abs(lost) < 1e-12 else (e["test_accuracy"] - orig["test_accuracy"]) / lost


def goals(summary: list[dict]) -> list:
    """Second-order restores at least half of the accuracy lost to poisoning at >= 10x the speed of retraining."""
    from unlearnkit.scenarios.report import Goal, lookup

    problems_ = list(dict.fromkeys(e["problem"] for e in summary))
    out = []
    for label in ("second-order", "second-order [head]"):
        details, met = [], True
        for problem in problems_:
            r, e = restored(summary, problem, label), lookup(summary, problem, label)
            if r is None or not e or e.get("speedup") is None:
                met = False
                details.append(f"{problem}: no result")
                continue
            ok = r >= 0.5 and e["speedup"] >= 10
            met &= ok
            details.append(f"{problem}: restored {100 * r:.0f}% at {e['speedup']:.1f}x{'' if ok else ' (missed)'}")
        out.append(Goal(f"{label} restores >= 50% of the lost accuracy at >= 10x retraining's speed", met, "; ".join(details)))
    return out
