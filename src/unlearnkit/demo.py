"""The demo: two realistic unlearning problems on embedded data, solved three ways.

1. **Leaky feature, logistic regression (breast cancer).** A column that encodes the diagnosis
   (think of a follow-up code entered after the biopsy) slipped into the training table; it is
   not available when the model is used. Unlearn it by zeroing the column in every row where it
   is non-zero.
2. **Flipped labels, small CNN (digits).** 10% of the training labels are wrong (random other
   class). Unlearn them by correcting the labels.

Each problem is solved by the first-order update, the second-order update and retraining from
scratch on the corrected data, and compared on: test accuracy, accuracy on the corrected
training points, relative L2 distance to the retrained parameters, time and speed-up over
retraining. Times are wall-clock seconds of calls made after a warm-up (see
:mod:`unlearnkit.timing`); :func:`run_measured` adds the CPU time of the whole run and the
machine it ran on. The library returns the rows; the CLI renders them.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from unlearnkit import methods
from unlearnkit.data.changes import Changes
from unlearnkit.data.embedded import load_breast_cancer, load_digits, standardize
from unlearnkit.data.splits import train_test_split
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.metrics.closeness import relative_distance
from unlearnkit.models import LogisticRegression, SmallCNN
from unlearnkit.training import TrainConfig, accuracy, train

Step = Callable[[str], None]


@dataclass
class DemoRow:
    problem: str
    method: str
    test_acc: float
    corrected_acc: float
    rel_distance: float
    seconds: float
    speedup: float
    note: str = ""
    cpu_seconds: float = float("nan")  # process CPU time of the timed call (all threads)


@dataclass
class DemoReport:
    """The demo's rows, the wall-clock and CPU time of the whole run, and the machine it ran on."""

    rows: list[DemoRow]
    wall_seconds: float
    cpu_seconds: float
    machine: dict = field(default_factory=dict)


rel_distance = relative_distance  # ||theta - theta_retrained|| / ||theta_retrained||


def _compare(problem, model, train_data, test_data, changes, candidates, step: Step) -> list[DemoRow]:
    resolved = changes.resolve(train_data)
    corrected_points = resolved.Z_tilde
    step(f"{problem}: retraining from scratch (the reference)")
    cpu = time.process_time()
    ref = methods.make("retrain").unlearn(model, train_data, changes)
    ref_cpu = time.process_time() - cpu
    rows = [DemoRow(problem, "original (no unlearning)", accuracy(model, test_data), accuracy(model, corrected_points),
                    rel_distance(model, ref.model), 0.0, float("nan"))]
    for name, hyper, note in candidates:
        step(f"{problem}: {name}")
        method = methods.make(name, **hyper)
        method.unlearn(model, train_data, changes)  # warm-up: the first call pays torch.func set-up
        cpu = time.process_time()
        result = method.unlearn(model, train_data, changes)
        cpu = time.process_time() - cpu
        rows.append(DemoRow(problem, name, accuracy(result.model, test_data), accuracy(result.model, corrected_points),
                            rel_distance(result.model, ref.model), result.seconds, ref.seconds / result.seconds, note,
                            cpu))
    rows.append(DemoRow(problem, "retrain", accuracy(ref.model, test_data), accuracy(ref.model, corrected_points),
                        0.0, ref.seconds, 1.0, cpu_seconds=ref_cpu))
    return rows


def leaky_feature(seed: int = 0, step: Step = lambda s: None) -> list[DemoRow]:
    """Logistic regression on breast cancer with a planted diagnosis-leaking column."""
    data = load_breast_cancer()
    splits = train_test_split(data, test_fraction=0.25, seed=seed)
    train_data, test_data = standardize(splits.train, splits.test)
    rng = np.random.default_rng(seed)
    # the leak: present (noisy copy of the label) in 60% of training rows, absent at test time
    leak = np.where(rng.random(len(train_data)) < 0.6, (2.0 * train_data.y - 1.0) + 0.3 * rng.normal(size=len(train_data)), 0.0)
    X_train = np.column_stack([train_data.X, leak])
    X_test = np.column_stack([test_data.X, np.zeros(len(test_data))])
    names = train_data.feature_names + ("follow-up code (leak)",)
    train_data = train_data.replace(X=X_train, feature_names=names)
    test_data = test_data.replace(X=X_test, feature_names=names)
    step("leaky feature: training logistic regression")
    model = train(LogisticRegression(n_features=train_data.n_features, l2=1.0), train_data, config=TrainConfig(seed=seed))
    changes = Changes.zero_features([train_data.n_features - 1])
    return _compare("leaky feature / logreg", model, train_data, test_data, changes,
                    [("first-order", {}, "tau auto"), ("second-order", {}, "exact Hessian")], step)


def flipped_labels(seed: int = 0, step: Step = lambda s: None, epochs: int = 30) -> list[DemoRow]:
    """A small CNN on digits with 10% of the training labels flipped, then corrected."""
    splits = train_test_split(load_digits(), test_fraction=0.2, seed=seed)
    clean, test_data = splits.train, splits.test
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(clean), size=len(clean) // 10, replace=False)
    noisy_y = clean.y.copy()
    noisy_y[flip] = (noisy_y[flip] + rng.integers(1, clean.n_classes, size=flip.size)) % clean.n_classes
    noisy = clean.replace(y=noisy_y)
    step("flipped labels: training the CNN on the poisoned labels")
    config = TrainConfig(epochs=epochs, lr=3e-3, batch_size=64, seed=seed)
    model = train(SmallCNN(in_channels=1, height=8, width=8, n_classes=10, l2=1e-3), noisy, config=config)
    changes = Changes.relabel(clean.ids[flip], clean.y[flip])
    # damping rule for a non-convex model: 10% of the largest Hessian eigenvalue (power iteration)
    step("flipped labels: estimating the Hessian's largest eigenvalue for the damping rule")
    lam_max = HessianOperator(FlatModel(model), changes.apply(noisy)).largest_eigenvalue(seed=seed)
    damping = 0.1 * lam_max
    second = ("second-order", {"solver": "cg", "damping": damping, "tol": 1e-4, "max_iter": 100},
              f"CG, damping 0.1*lambda_max = {damping:.3g}")
    return _compare("flipped labels / CNN", model, noisy, test_data, changes,
                    [("first-order", {}, "tau auto"), second], step)


def run(seed: int = 0, step: Step = lambda s: None, cnn_epochs: int = 30) -> list[DemoRow]:
    """Both demo problems; returns the table rows."""
    return run_measured(seed, step, cnn_epochs).rows


def run_measured(seed: int = 0, step: Step = lambda s: None, cnn_epochs: int = 30) -> DemoReport:
    """Both demo problems, with the wall-clock and CPU (process) time of the whole run and the machine."""
    start, cpu = time.perf_counter(), time.process_time()
    rows = leaky_feature(seed, step) + flipped_labels(seed, step, epochs=cnn_epochs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    step(f"done in {wall:.1f}s ({cpu:.1f}s CPU)")
    return DemoReport(rows, wall, cpu, machine())


def machine() -> dict:
    """The machine the demo runs on: CPU model, logical cores (and those this process may use), torch's threads,
    the device (the demo computes on the CPU)."""
    import torch

    return {"cpu": _cpu_model(), "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": "cpu", "torch": torch.__version__,
            "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
