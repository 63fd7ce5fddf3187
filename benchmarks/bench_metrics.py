"""Evaluation benchmark: what the attacks say about original, unlearned and retrained models, and what they cost.

Writes ``benchmarks/results/metrics.json``: one record per (case, metric, model) with the
value, its interval where the metric has one, and the case's timings (``shadow_seconds``: time
to train the shadow models; ``eval_seconds``: the whole evaluation).

Cases
-----
* ``digits-mlp``: a one-hidden-layer MLP (64 units, no weight decay, Adam 100 epochs) on 800
  digits (60/40 train/test), forget set = 20% of the training rows. Methods: no unlearning
  (``original``), the first-order update (tau auto), and retraining. Metrics: every cheap metric,
  LiRA (online, offline, TPR at 1% FPR) and U-LiRA (logit-scaled and binary) on 16 shadow splits x
  4 forget partitions of the 800-row pool. U-LiRA re-runs first-order unlearning on the 64 shadow
  (split, partition) pairs. ``--splits`` and ``--rows`` scale it.
* ``memorised-logreg``: logistic regression with 500 features on 400 rows (it fits its training set
  to ~zero loss), forget set = 150 rows; population attacks only.

Run: ``python benchmarks/bench_metrics.py`` (about 2 minutes on 2 cores; ``--quick`` for 8 splits).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import unlearnkit as uk
from unlearnkit import metrics as M

from workloads import make_logistic_data, memorising_digits_mlp  # (shared with the tests)

ROOT = Path(__file__).resolve().parents[1]


def _records(case: str, table: M.MetricTable, **extra) -> list[dict]:
    out = []
    for rec in table.long():
        if rec["value"] is None:
            continue
        out.append({"case": case, **rec, **extra})
    return out


def digits_mlp(rows: int, splits: int, log) -> list[dict]:
    pool, train, test, original, changes, retrained = memorising_digits_mlp(rows)
    result = uk.unlearn(original, train, changes, method="first-order")
    ev_splits = M.EvalSplits.from_changes(train, changes, test=test)
    setup = M.ShadowSetup(pool, original, n_splits=splits, n_partitions=4, seed=0)
    start = time.perf_counter()
    setup.train_all()
    shadow_seconds = time.perf_counter() - start
    log(f"digits-mlp: {splits} shadow models in {shadow_seconds:.1f}s")
    cheap = M.evaluate(original, result, retrained, ev_splits)
    names = cheap.metrics + ["lira_auc", "lira_offline_auc", "lira_tpr_at_1pct_fpr", "ulira_auc",
                             "ulira_auc_correctness", "ulira_p_member", "ulira_p_member_correctness"]
    start = time.perf_counter()
    table = M.evaluate(original, result, retrained, ev_splits, names, shadow=setup, method="first-order",
                       progress=lambda i, n, name: log(f"  {i}/{n} {name}"))
    eval_seconds = time.perf_counter() - start
    print(table)
    return _records("digits-mlp", table, shadow_seconds=shadow_seconds, eval_seconds=eval_seconds,
                    forget_rows=len(ev_splits.forget), test_rows=len(ev_splits.test), splits=splits, partitions=4)


def memorised_logreg(log) -> list[dict]:
    data = make_logistic_data(1400, 500, seed=0)
    train, test = data.subset(np.arange(400)), data.subset(np.arange(400, 1400))
    original = uk.train(uk.models.LogisticRegression(n_features=500, l2=1e-3), train)
    changes = uk.Changes.remove(train.ids[:150].tolist())
    retrained = uk.retrain(original, train, changes)
    result = uk.unlearn(original, train, changes, method="second-order")
    splits = M.EvalSplits.from_changes(train, changes, test=test)
    start = time.perf_counter()
    table = M.evaluate(original, result, retrained, splits, [n for n in M.names("population membership inference")
                                                             if not n.endswith("_val")])
    eval_seconds = time.perf_counter() - start
    log(f"memorised-logreg evaluated in {eval_seconds:.1f}s")
    print(table)
    return _records("memorised-logreg", table, eval_seconds=eval_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--splits", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="8 shadow splits")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "metrics.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    records = memorised_logreg(log) + digits_mlp(args.rows, 8 if args.quick else args.splits, log)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "unlearnkit": uk.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{**r, **meta} for r in records], indent=1, default=float))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
