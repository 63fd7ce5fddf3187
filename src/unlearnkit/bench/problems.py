"""The data, models and measurements of one benchmark problem, built the same way in every worker.

A problem is a (data set, model, protocol). Its data are deterministic given the configuration
(the split seed fixes the split, the poisoned labels and the zeroed columns), so every worker,
local or on a Ray node, rebuilds identical data from the configuration alone; nothing but
model weights and numbers crosses process boundaries.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from unlearnkit.bench.config import BenchConfig, Problem
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import BenchError, ModelError

PARTS = ("retain", "forget", "val", "test")
TABULAR = ("breast-cancer", "wine", "iris")


@dataclass(frozen=True)
class ProblemData:
    """``train`` is what the original model trains on (poisoned labels included); ``changes`` what
    to take back; ``retain`` the unaffected training rows (empty when an edit touches every row).

    ``forget`` is what forgetting is measured on: for a removal, the removed rows; for an edit
    (``relabel``, ``zero-features``), the affected rows in their *corrected* form, which the
    retrained model fits and the original may not (Warnecke et al.'s accuracy on the corrected
    points). Methods never see these sets; they get ``train`` and ``changes``.
    """

    train: Dataset
    changes: Changes
    retain: Dataset
    forget: Dataset
    val: Dataset
    test: Dataset

    @property
    def corrected(self) -> Dataset:
        return self.changes.apply(self.train)


def build_problem_data(config: BenchConfig, problem: Problem) -> ProblemData:
    return _cached(json.dumps(_data_key(config, problem), sort_keys=True))


def _data_key(config: BenchConfig, problem: Problem) -> dict:
    p = problem.protocol
    return {"dataset": problem.dataset, "rows": config.rows, "val_fraction": config.val_fraction,
            "split_seed": config.split_seed, "kind": p.kind, "fraction": p.fraction, "classes": list(p.classes)}


@lru_cache(maxsize=8)
def _cached(key: str) -> ProblemData:
    from unlearnkit.data import load, load_fashion_mnist, standardize, unlearning_split

    k = json.loads(key)
    rng = np.random.default_rng(k["split_seed"])
    if k["dataset"] == "fashion-mnist":
        full, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    else:
        full, test = load(k["dataset"]), None
    if k["rows"] and k["rows"] < len(full):
        full = full.subset(np.sort(rng.permutation(len(full))[: k["rows"]]), name=full.name)
    if k["kind"] == "remove" and k["classes"]:
        bad = [c for c in k["classes"] if not 0 <= c < full.n_classes]
        if bad:
            raise BenchError(f"protocol classes {bad} are out of range for {k['dataset']} ({full.n_classes} classes).")
        split = unlearning_split(full, test, val_fraction=k["val_fraction"], forget_classes=k["classes"], seed=k["split_seed"])
    else:
        split = unlearning_split(full, test, val_fraction=k["val_fraction"], forget_fraction=k["fraction"], seed=k["split_seed"])
    train, val, test = split.train, split.val, split.test
    if k["dataset"] in TABULAR:
        train, val, test = standardize(train, val, test)
    if k["kind"] == "remove":
        changes = split.changes()
    elif k["kind"] == "relabel":
        ids = split.forget_ids
        pos = train.positions(ids)
        true = train.y[pos]
        flipped = (true + rng.integers(1, train.n_classes, size=len(pos))) % train.n_classes
        y = train.y.copy()
        y[pos] = flipped
        train = train.replace(y=y)
        changes = Changes.relabel(ids.tolist(), true.tolist())
    else:  # zero-features
        d = train.n_features
        columns = np.sort(rng.choice(d, size=max(1, math.ceil(k["fraction"] * d)), replace=False)).tolist()
        changes = Changes.zero_features(columns)
        # the features are gone from the deployed pipeline too
        val, test = (Changes.zero_features(columns).apply(part) for part in (val, test))
    resolved = changes.resolve(train)
    affected = np.isin(train.ids, resolved.affected_ids)
    retain = train.subset(np.flatnonzero(~affected), name=f"{train.name}:retain")
    if k["kind"] == "remove":
        forget = train.subset(np.flatnonzero(affected), name=f"{train.name}:forget")
    else:  # an edit is measured on the corrected rows: what the model should now fit (the "corrected points")
        forget = resolved.Z_tilde.replace(name=f"{train.name}:corrected")
    return ProblemData(train, changes, retain, forget, val, test)


def build_model(config: BenchConfig, problem: Problem, data: Dataset):
    """The untrained model of a problem: a zoo model sized for ``data``, or a user model from its factory.

    A factory (``models.factories``) is imported and called here, in the process that builds the
    model (a worker or a Ray node), with ``models.options.<name>`` as keyword arguments; a plain
    ``nn.Module`` it returns is wrapped for ``data`` (classes and example shape).
    """
    from unlearnkit.models import for_data
    from unlearnkit.models.factory import from_factory

    options = dict(config.model_options.get(problem.model, {}))
    if problem.model in config.factories:
        try:
            return from_factory(config.factories[problem.model], data, search_path=config.factory_path or None,
                                args=options)
        except ModelError as exc:
            raise ModelError(f"models.factories.{problem.model}: {exc}") from None
    try:
        return for_data(problem.model, data, **options)
    except TypeError as exc:
        raise ModelError(f"models.options.{problem.model}: {exc}") from None


def train_config(config: BenchConfig, problem: Problem, seed: int):
    from unlearnkit.training import TrainConfig

    r = config.recipe(problem.dataset)
    return TrainConfig(optimizer=None if r.optimizer == "auto" else r.optimizer, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, momentum=r.momentum,
                       seed=seed)


# ---------------------------------------------------------------------------- model bytes
def model_bytes(model) -> bytes:
    """A model as bytes in the model-file format (weights and plain values only)."""
    from unlearnkit.models.io import model_payload

    buf = io.BytesIO()
    torch.save(model_payload(model), buf)
    return buf.getvalue()


def model_from_bytes(blob: bytes, device=None, config: BenchConfig | None = None, problem: Problem | None = None):
    """A stored model back from its bytes; a user model (``config.factories``) is rebuilt by its factory."""
    from unlearnkit.models.io import model_from_payload

    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"A stored model is unreadable ({type(exc).__name__}); the results store is damaged.") from None
    if config is not None and problem is not None and problem.model in config.factories:
        return model_from_payload(payload, "a stored model", device=device, factory=config.factories[problem.model],
                                  factory_path=config.factory_path or None,
                                  factory_args=dict(config.model_options.get(problem.model, {})))
    return model_from_payload(payload, "a stored model", device=device)


# ---------------------------------------------------------------------------- measurements
def measure(model, data: ProblemData, device) -> dict:
    """Accuracy on retain, forget, validation and test; the loss attack forget vs val and forget vs test.

    One forward pass per part: accuracy and losses both come from its logits.
    """
    from unlearnkit.metrics.mia import loss_attack
    from unlearnkit.metrics.outputs import model_outputs

    outputs = {p: model_outputs(model, getattr(data, p), device=device) for p in PARTS if len(getattr(data, p))}
    rec = {f"acc_{p}": float(outputs[p].correct.mean()) if p in outputs else float("nan") for p in PARTS}
    for held in ("val", "test"):
        attack = loss_attack(outputs["forget"].losses, outputs[held].losses, seed=123)
        rec[f"mia_{held}"] = attack.accuracy
        rec[f"indisc_{held}"] = attack.indiscernibility
    return rec
