"""How each strategy's hyperparameters are chosen: fixed rules computed from the data, never tuned per run.

* **first-order** — ``tau = G.G / G.H~G``, the exact minimiser of the local quadratic model of the
  corrected objective along ``-G`` (``H~`` the Hessian for convex models, the Gauss-Newton matrix
  otherwise); one Hessian-vector product.
* **second-order** — convex models: the exact Hessian of the corrected objective, solved by
  Cholesky (CG to 1e-8 above 5,000 parameters), no damping (L2 makes it strongly convex). Deep
  models: CG on the Gauss-Newton matrix estimated on ``max(1024, |Z|)`` rows, damping ``1e-3 x``
  its largest eigenvalue (20 power iterations), at most 50 iterations — see
  :class:`unlearnkit.methods.influence.SecondOrder`. What was chosen is recorded in each row.
  These rows are the paper's update as published: the trust-region guard that
  :func:`unlearnkit.unlearn` applies to deep models by default is switched off (``guard=False``).
* **iterative variants** (``-it``) — the same updates applied in ``chunks`` groups of affected
  rows, recomputing ``G`` and ``H`` in between, with ``chunks = clip(ceil(|Z| / (0.01 n)), 2, 10)``:
  each step touches at most about 1 % of the training rows, and at most ten steps are taken (the
  reference code's ``steps = 10``).
* **fine-tuning** — one epoch of SGD on the corrected data (the paper's baseline), batch size
  as in training, no momentum, weight decay ``l2 / n`` (so SGD minimises exactly the training
  objective divided by ``n``) and learning rate ``1 / lambda_max`` of that objective's curvature
  (the largest stable gradient-descent step), estimated by 20 power iterations on 1,024 rows; the
  estimate's time is charged to fine-tuning.
* **SISA** — 5 shards (the paper's run-time setting), members trained like the model itself.
"""

from __future__ import annotations

import math

from unlearnkit import timing
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.updates import hessian_sample
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.scenarios.compare import Strategy

SISA_SHARDS = 5
FINE_TUNE_ROWS = 1024
MAX_CHUNKS = 10
CHUNK_FRACTION = 0.01


def iterative_chunks(n_affected: int, n_rows: int) -> int:
    """``clip(ceil(|Z| / (0.01 n)), 2, 10)``, and never more chunks than affected rows."""
    chunks = math.ceil(n_affected / max(1.0, CHUNK_FRACTION * n_rows))
    return max(1, min(n_affected, max(2, min(MAX_CHUNKS, chunks))))


def influence_strategies(model: UnlearnableModel, data: Dataset, changes: Changes, *, params: str = "all") -> list[Strategy]:
    """First- and second-order updates and their iterative variants, with the rules above."""
    n_affected = changes.resolve(data).n_affected
    chunks = iterative_chunks(n_affected, len(data))
    # the paper's updates, as published: the trust-region guard (on by default for deep models) is off here, so
    # these rows measure the update itself; the guarded variants are reported next to them where they differ
    extra = {} if params == "all" else {"params": params}
    suffix = "" if params == "all" else f" [{params}]"
    chunk_rule = f"chunks = clip(ceil(|Z| / 0.01n), 2, 10) = {chunks} (|Z| = {n_affected}, n = {len(data)})"
    return [
        Strategy("first-order" + suffix, "first-order", dict(extra), "tau = G.G / G.H~G (exact line minimiser)"),
        Strategy("second-order" + suffix, "second-order", {**extra, "guard": False}, "solver, curvature, damping, rows: 'auto' rules"),
        Strategy("first-order-it" + suffix, "first-order", {**extra, "chunks": chunks}, chunk_rule),
        Strategy("second-order-it" + suffix, "second-order", {**extra, "chunks": chunks, "guard": False}, chunk_rule),
    ]


def fine_tune_strategy(model: UnlearnableModel, data: Dataset, changes: Changes, *, seed: int = 0, device=None) -> Strategy:
    """One epoch of SGD on the corrected data with ``lr = 1 / lambda_max(H~ / n)`` (see the module docstring)."""
    start = timing.start(device)
    corrected = changes.apply(data)
    net = model if device is None else _on(model, device)
    sample, weight = hessian_sample(corrected, min(FINE_TUNE_ROWS, len(corrected)), seed)
    H = HessianOperator(FlatModel(net), sample, weight=weight, curvature="hessian" if model.convex else "ggn")
    lam = H.largest_eigenvalue(iterations=20, seed=seed) / len(corrected)
    lr = 1.0 / lam if lam > 0 else 1e-3
    config = getattr(model, "train_config", None)
    batch = int(config.batch_size) if config is not None else 256
    hp = {"epochs": 1, "lr": float(lr), "momentum": 0.0, "weight_decay": model.l2 / len(corrected), "batch_size": batch,
          "seed": seed}
    return Strategy("fine-tune", "ft", hp, f"1 epoch SGD, lr = 1/lambda_max(H~/n) = {lr:.3g}, weight decay l2/n",
                    setup_seconds=timing.since(start, device))


def _on(model: UnlearnableModel, device) -> UnlearnableModel:
    import copy

    return copy.deepcopy(model).to(device)


def default_strategies(model: UnlearnableModel, data: Dataset, changes: Changes, *, seed: int = 0, device=None,
                       params: str = "all") -> list[Strategy]:
    """Fine-tuning and the four influence updates, each with its rule."""
    return [fine_tune_strategy(model, data, changes, seed=seed, device=device),
            *influence_strategies(model, data, changes, params=params)]
