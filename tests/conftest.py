import os
import sys
from pathlib import Path

# One thread for the whole session, set before torch (or anything that trains) is imported: the
# suite's matrices are tiny, so threads cost more than they save on a busy machine, and a float
# reduction split over a different number of threads sums in a different order, which changes
# trained weights in the last bits and, through training, results such as an accuracy. Pinning
# it makes every result independent of the machine's core count and of OMP_NUM_THREADS.
# Subprocesses the tests start (the CLI) inherit the variables.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from unlearnkit.data.dataset import Dataset  # noqa: E402
from unlearnkit.models import MLP, LogisticRegression  # noqa: E402
from unlearnkit.training import TrainConfig, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from workloads import MEMORISING_RECIPE, make_logistic_data, memorising_digits_mlp  # noqa: E402,F401  (shared)

SESSION_THREADS = 1
torch.set_num_threads(SESSION_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads_stay_pinned():
    """Every test starts and ends on the session's thread count, whatever a test or fixture set."""
    torch.set_num_threads(SESSION_THREADS)
    yield
    torch.set_num_threads(SESSION_THREADS)


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


FAST_MEMORISING_RECIPE = TrainConfig(optimizer="adam", epochs=30, lr=1e-2, batch_size=64, seed=0)
"""The tests' recipe: 210 Adam steps, about 14x cheaper, still 100% training accuracy on 400 rows
(measured on the 800-row pool: LiRA AUC of the original forget set 0.64-0.66 over three setup
seeds, retrained 0.49-0.52; U-LiRA AUC original 0.62-0.63, retrained 0.49-0.50)."""


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (the session already runs on one; kept for modules that name it)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(SESSION_THREADS)
