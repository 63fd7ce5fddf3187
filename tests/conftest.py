import numpy as np
import pytest
import torch

from unlearnkit.data.dataset import Dataset
from unlearnkit.models import MLP, LogisticRegression
from unlearnkit.training import TrainConfig, train

torch.set_num_threads(2)


def make_logistic_data(n: int, d: int, *, n_classes: int = 2, seed: int = 0) -> Dataset:
    """Data from a planted (multinomial) logistic model: learnable, not separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, n_classes))
    logits = X @ W
    g = rng.gumbel(size=logits.shape)
    y = np.argmax(logits + g, axis=1)
    return Dataset(X, y, n_classes=n_classes, name=f"planted{n}x{d}")


@pytest.fixture(scope="session")
def binary_10k():
    data = make_logistic_data(10_000, 10, seed=0)
    model = train(LogisticRegression(n_features=10, l2=1.0), data, config=TrainConfig(tol=1e-11))
    return data, model


@pytest.fixture(scope="session")
def multiclass_small():
    data = make_logistic_data(600, 5, n_classes=3, seed=1)
    model = train(LogisticRegression(n_features=5, n_classes=3, l2=1.0), data, config=TrainConfig(tol=1e-11))
    return data, model


@pytest.fixture(scope="session")
def tiny_mlp():
    data = make_logistic_data(200, 4, n_classes=3, seed=2)
    model = train(MLP(n_features=4, n_classes=3, hidden=(6,), l2=1e-2), data,
                  config=TrainConfig(optimizer="lbfgs", dtype="float64", tol=1e-9, max_iter=60))
    return data, model


def memorising_digits_mlp(rows: int = 800):
    """An MLP trained to memorise ``rows`` digits (60% train), and 20% of its training rows to forget.

    Returns ``(pool, train, test, original, changes, retrained)``; shared by the LiRA tests and
    ``benchmarks/bench_metrics.py``.
    """
    import unlearnkit as uk

    digits = uk.data.load_digits()
    pool = digits.subset(np.random.default_rng(0).permutation(len(digits))[:rows], name=f"digits{rows}")
    parts = uk.data.train_test_split(pool, test_fraction=0.4, seed=0)
    changes = uk.Changes.remove(uk.data.forget_set(parts.train, fraction=0.2, seed=0).tolist())
    config = TrainConfig(optimizer="adam", epochs=100, lr=3e-3, batch_size=32, seed=0)
    original = train(uk.models.for_data("mlp", parts.train, hidden=(64,), l2=0.0), parts.train, config=config)
    retrained = uk.retrain(original, parts.train, changes)
    return pool, parts.train, parts.test, original, changes, retrained


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module on one torch thread: on tiny matrices, two threads make each op far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
