"""Scenario ``backdoor`` (beyond the paper): remove a trigger patch and its target label from a CNN.

An attacker plants a trigger — a bright square in the bottom-right corner (2x2 pixels on 8x8
digits, 4x4 on 28x28 Fashion-MNIST) — in a share of the training images of every class but the
target class 0, and labels them 0. The trained model learns the shortcut: any image with the
patch is classified as 0. The owner finds the poisoned rows and unlearns them with one change
that edits both features and labels: the patch pixels are set back to 0 (the background) and the
labels restored.

Efficacy: **attack success** = the share of test images of the other classes that, with the
trigger pasted in, the model classifies as the target (lower is better; retraining gives the
chance level of a clean model). Fidelity: accuracy on the clean test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.scenarios import poisoning
from unlearnkit.scenarios.compare import Problem
from unlearnkit.training import predict

NAME = "backdoor"
TITLE = "Scenario: a backdoor trigger in a CNN"
TARGET = 0


@dataclass(frozen=True)
class Size:
    fashion_rows: int
    fashion_test_rows: int
    rates: tuple[float, ...]
    digits_epochs: int
    fashion_epochs: int
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64


SIZES = {
    "tiny": Size(0, 0, (0.1,), 6, 0, (4, 8), 16),
    "full": Size(5_000, 5_000, (0.1,), 20, 8),
}


def patch_columns(shape: tuple[int, int, int]) -> np.ndarray:
    """Flattened columns of the trigger: the bottom-right ``k x k`` square of every channel, ``k = max(2, H // 7)``."""
    c, h, w = shape
    k = max(2, h // 7)
    cols = [ch * h * w + r * w + q for ch in range(c) for r in range(h - k, h) for q in range(w - k, w)]
    return np.array(cols, dtype=np.int64)


def with_trigger(ds: Dataset, rows: np.ndarray, value: float) -> Dataset:
    X = ds.X.reshape(len(ds), -1).copy()
    X[np.ix_(rows, patch_columns(ds.feature_shape))] = value
    return ds.replace(X=X.reshape(ds.X.shape))


def attack_success(test: Dataset, value: float, device=None):
    victims = np.flatnonzero(test.y != TARGET)
    triggered = with_trigger(test.subset(victims), np.arange(victims.size), value)

    def efficacy(model):
        return {"attack_success": float(np.mean(predict(model, triggered, device=device) == TARGET))}
    return efficacy


def problems(size: Size, seed: int, device) -> list[Problem]:
    out = []
    for name, clean, test, epochs in poisoning.image_data(size, seed):
        value = float(clean.X.max())
        for rate in size.rates:
            rng = np.random.default_rng(seed)
            candidates = np.flatnonzero(clean.y != TARGET)
            rows = np.sort(rng.choice(candidates, size=int(round(rate * len(clean))), replace=False))
            poisoned = with_trigger(clean, rows, value)
            y = clean.y.copy()
            y[rows] = TARGET
            poisoned = poisoned.replace(y=y, name=f"{clean.name}:backdoored")
            model, sisa = poisoning.train_pair(poisoned, size, epochs, seed, device)
            ids = clean.ids[rows]
            changes = Changes.zero_features(patch_columns(clean.feature_shape), rows=ids) + Changes.relabel(ids, clean.y[rows])
            out.append(Problem(NAME, f"{name}: {int(100 * rate)}% triggered", seed, model, poisoned, test, changes, sisa=sisa,
                               efficacy=attack_success(test, value, device),
                               info={"rows": f"{len(clean)} train / {len(test)} test", "poisoned": len(rows),
                                     "trigger pixels": len(patch_columns(clean.feature_shape)), "epochs": epochs}))
    return out


strategies = poisoning.strategies


def goals(summary: list[dict]) -> list:
    """The target: second-order brings attack success within 10 points of retraining's."""
    from unlearnkit.scenarios.report import Goal, lookup

    details, met = [], True
    for problem in dict.fromkeys(e["problem"] for e in summary):
        ret, so = lookup(summary, problem, "retrain"), lookup(summary, problem, "second-order")
        if not so or so.get("attack_success") is None:
            met = False
            details.append(f"{problem}: no result")
            continue
        gap = so["attack_success"] - ret["attack_success"]
        met &= gap <= 0.10
        details.append(f"{problem}: attack success {100 * so['attack_success']:.1f}% vs retrained "
                       f"{100 * ret['attack_success']:.1f}% at {so['speedup']:.1f}x")
    return [Goal("(ours) second-order brings attack success within 10 points of retraining's", met, "; ".join(details))]
