"""Workloads shared by the benchmarks and the tests (the tests import them from here, never the reverse)."""

from __future__ import annotations

import numpy as np

from unlearnkit.data.dataset import Dataset
from unlearnkit.training import TrainConfig, train


def make_logistic_data(n: int, d: int, *, n_classes: int = 2, seed: int = 0) -> Dataset:
    """Data from a planted (multinomial) logistic model: learnable, not separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, n_classes))
    logits = X @ W
    g = rng.gumbel(size=logits.shape)
    y = np.argmax(logits + g, axis=1)
    return Dataset(X, y, n_classes=n_classes, name=f"planted{n}x{d}")


MEMORISING_RECIPE = TrainConfig(optimizer="adam", epochs=100, lr=3e-3, batch_size=32, seed=0)
"""The benchmark's recipe: 1,300 Adam steps on 400 rows."""


def memorising_digits_mlp(rows: int = 800, config: TrainConfig = MEMORISING_RECIPE):
    """An MLP trained to memorise ``rows`` digits (60% train), and 20% of its training rows to forget.

    Returns ``(pool, train, test, original, changes, retrained)``; shared by the LiRA tests and
    ``benchmarks/bench_metrics.py``. ``config`` is the training recipe of the model and, through
    its ``train_config``, of every shadow model trained from it.
    """
    import unlearnkit as uk

    digits = uk.data.load_digits()
    pool = digits.subset(np.random.default_rng(0).permutation(len(digits))[:rows], name=f"digits{rows}")
    parts = uk.data.train_test_split(pool, test_fraction=0.4, seed=0)
    changes = uk.Changes.remove(uk.data.forget_set(parts.train, fraction=0.2, seed=0).tolist())
    original = train(uk.models.for_data("mlp", parts.train, hidden=(64,), l2=0.0), parts.train, config=config)
    retrained = uk.retrain(original, parts.train, changes)
    return pool, parts.train, parts.test, original, changes, retrained
