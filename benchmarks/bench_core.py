"""Core benchmark: first- and second-order unlearning against retraining, measured in one run.

Writes ``benchmarks/results/core.json``: a list of records with keys ``case``, ``n``,
``method``, ``seconds``, ``retrain_seconds``, ``speedup`` (retrain_seconds / seconds),
``rel_distance`` (``||theta - theta_retrain|| / ||theta_retrain||``), ``test_acc`` and, for
poisoning cases, ``recovered`` (fraction of the test accuracy lost to poisoning that the method
wins back; retraining is 1).

Cases
-----
* ``logreg-labels``: L2 logistic regression (l2=1, Newton-trained to machine precision) on
  synthetic data with n in {1e3, 1e4, 1e5} rows x 100 features; labels flipped on 1% of rows
  and corrected. Reference: retraining from scratch; warm-started retraining is reported beside
  it (``retrain-warm``) as the honest strong baseline.
  ``logreg-labels-noisy`` repeats it on a noisier planted model (temperature 1, ~70% test
  accuracy), where each flipped label moves the optimum less. ``second-order-iterative10``
  applies the change in 10 chunks.
* ``logreg-curve``: rel_distance against the fraction of rows edited (0.01% .. 5%) at n=1e4.
* ``cnn-fmnist-flip20``: a small CNN on Fashion-MNIST (Debian ``dataset-fashion-mnist``), 20% of
  training labels flipped pairwise (c -> 9 - c), then corrected. Second order uses the
  generalised Gauss-Newton curvature estimated on ``--hessian-rows`` rows, CG with damping
  ``1e-3 * lambda_max`` (power iteration): the documented rule.

Every timing is the median of ``--repeats`` runs after one warm-up run (the first call pays
torch.func set-up). Run: ``python benchmarks/bench_core.py`` (add ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import unlearnkit as uk
from unlearnkit.data import load_fashion_mnist, make_classification, train_test_split
from unlearnkit.demo import rel_distance
from unlearnkit.influence import FlatModel, HessianOperator
from unlearnkit.models import LogisticRegression, SmallCNN

RESULTS = Path(__file__).resolve().parent / "results" / "core.json"


def timed(fn, repeats: int):
    """Median seconds of ``repeats`` calls after one warm-up; returns (result, seconds)."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def flip_binary(data, fraction, seed):
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(data))))
    rows = np.sort(rng.choice(len(data), size=k, replace=False))
    return uk.Changes.relabel(data.ids[rows], 1 - data.y[rows])


def logreg_cases(sizes, repeats, log, noise=0.25, case="logreg-labels"):
    records = []
    for n in sizes:
        full = make_classification(int(n * 1.25), 100, seed=0, noise=noise, dtype=np.float64)
        split = train_test_split(full, test_fraction=0.2, seed=0)
        train, test = split.train, split.test
        changes = flip_binary(train, 0.01, seed=1)
        # the model was trained on the poisoned labels: poison = the flip; unlearning corrects it
        poisoned = changes.apply(train)
        model = uk.train(LogisticRegression(n_features=100, l2=1.0), poisoned)
        fix = uk.Changes.relabel(changes.label_edits[0].rows, train.y[train.positions(changes.label_edits[0].rows)])
        ref, t_ref = timed(lambda: uk.retrain(model, poisoned, fix), repeats)
        log(f"{case} n={len(train)}: retrain {t_ref:.3f}s")
        entries = [("retrain", ref, t_ref)]
        for name, hyper in (("retrain-warm", {}), ("first-order", {}), ("second-order", {}),
                            ("second-order", {"chunks": 10})):
            res, secs = timed(lambda: uk.unlearn(model, poisoned, fix, method=name, **hyper), repeats)
            name = name + ("-iterative10" if hyper else "")
            entries.append((name, res.model, secs))
            log(f"  {name}: {secs:.4f}s rel_distance {rel_distance(res.model, ref):.2e}")
        for name, m, secs in entries:
            records.append({"case": case, "noise": noise, "n": len(train), "method": name, "seconds": secs,
                            "retrain_seconds": t_ref, "speedup": t_ref / secs, "rel_distance": rel_distance(m, ref),
                            "test_acc": uk.accuracy(m, test)})
    return records


def curve_case(n, fractions, log):
    records = []
    train = make_classification(n, 100, seed=2, dtype=np.float64)
    clean_model = uk.train(LogisticRegression(n_features=100, l2=1.0), train)
    for frac in fractions:
        changes = flip_binary(train, frac, seed=3)
        ref = uk.retrain(clean_model, train, changes)
        for name in ("first-order", "second-order"):
            res = uk.unlearn(clean_model, train, changes, method=name)
            records.append({"case": "logreg-curve", "n": n, "fraction": frac, "method": name,
                            "rel_distance": rel_distance(res.model, ref), "seconds": res.seconds})
        log(f"curve {frac:.4%}: first {records[-2]['rel_distance']:.2e} second {records[-1]['rel_distance']:.2e}")
    return records


def cnn_case(rows, epochs, hessian_rows, cg_iters, log):
    train = load_fashion_mnist(split="train")
    test = load_fashion_mnist(split="test")
    rng = np.random.default_rng(0)
    if rows < len(train):
        train = train.subset(np.sort(rng.choice(len(train), size=rows, replace=False)))
    flip = np.sort(rng.choice(len(train), size=len(train) // 5, replace=False))
    noisy_y = train.y.copy()
    noisy_y[flip] = 9 - noisy_y[flip]
    noisy = train.replace(y=noisy_y)
    fix = uk.Changes.relabel(train.ids[flip], train.y[flip])
    config = uk.TrainConfig(epochs=epochs, lr=2e-3, batch_size=128, seed=0)
    arch = SmallCNN(in_channels=1, height=28, width=28, n_classes=10, l2=1e-3)
    start = time.perf_counter()
    clean = uk.train(arch, train, config=config)
    log(f"cnn: clean model trained in {time.perf_counter() - start:.1f}s")
    poisoned = uk.train(arch, noisy, config=config)
    start = time.perf_counter()
    ref = uk.retrain(poisoned, noisy, fix)
    t_ref = time.perf_counter() - start
    acc_clean, acc_poisoned = uk.accuracy(clean, test), uk.accuracy(poisoned, test)
    log(f"cnn: retrain {t_ref:.1f}s; test acc clean {acc_clean:.4f} poisoned {acc_poisoned:.4f}")
    sample = fix.apply(noisy).subset(np.arange(min(hessian_rows, len(noisy))))
    lam_max = HessianOperator(FlatModel(poisoned), sample, weight=len(noisy) / len(sample),
                              curvature="ggn").largest_eigenvalue(iterations=10)
    damping = 1e-3 * lam_max
    methods = [
        ("first-order", {}),
        ("second-order", {"solver": "cg", "curvature": "ggn", "damping": damping, "max_iter": cg_iters,
                          "tol": 1e-3, "hessian_rows": hessian_rows}),
    ]
    gap = acc_clean - acc_poisoned
    records = [{"case": "cnn-fmnist-flip20", "n": len(train), "method": "retrain", "seconds": t_ref,
                "retrain_seconds": t_ref, "speedup": 1.0, "rel_distance": 0.0, "test_acc": uk.accuracy(ref, test),
                "recovered": (uk.accuracy(ref, test) - acc_poisoned) / gap if gap else float("nan"),
                "acc_clean": acc_clean, "acc_poisoned": acc_poisoned}]
    for name, hyper in methods:
        res = uk.unlearn(poisoned, noisy, fix, method=name, **hyper)
        acc = uk.accuracy(res.model, test)
        records.append({"case": "cnn-fmnist-flip20", "n": len(train), "method": name, "seconds": res.seconds,
                        "retrain_seconds": t_ref, "speedup": t_ref / res.seconds,
                        "rel_distance": rel_distance(res.model, ref), "test_acc": acc,
                        "recovered": (acc - acc_poisoned) / gap if gap else float("nan"),
                        "hyperparameters": {k: v for k, v in hyper.items()}})
        log(f"  {name}: {res.seconds:.1f}s test acc {acc:.4f} recovered {records[-1]['recovered']:.2f}")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-rows", type=int, default=20000, help="Fashion-MNIST training rows used")
    parser.add_argument("--cnn-epochs", type=int, default=8)
    parser.add_argument("--hessian-rows", type=int, default=1000)
    parser.add_argument("--cg-iters", type=int, default=20)
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)

    def log(message: str) -> None:
        print(message, flush=True)

    sizes = [1000, 10000] if args.quick else [1000, 10000, 100000]
    records = logreg_cases(sizes, args.repeats, log)  # noise 0.25: ~90% test accuracy, confident model
    records += logreg_cases(sizes, args.repeats, log, noise=1.0, case="logreg-labels-noisy")  # ~70%
    fractions = [0.0001, 0.001, 0.005, 0.01, 0.02, 0.05]
    records += curve_case(2000 if args.quick else 10000, fractions, log)
    if not args.skip_cnn:
        rows = 3000 if args.quick else args.cnn_rows
        records += cnn_case(rows, 2 if args.quick else args.cnn_epochs, args.hessian_rows, args.cg_iters, log)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": "cpu", "quick": args.quick}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{**r, **meta} for r in records], indent=1))
    log(f"wrote {args.out}")
    for r in records:
        if r["case"] != "logreg-curve":
            log(f"{r['case']:>19} n={r['n']:>6} {r['method']:>24}: {r['seconds']:.4f}s "
                f"speedup {r['speedup']:.1f}x rel_distance {r['rel_distance']:.2e}"
                + (f" recovered {r['recovered']:.2f}" if "recovered" in r else ""))


if __name__ == "__main__":
    main()
