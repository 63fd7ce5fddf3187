"""Certified unlearning through the ledger: request latency independent of n, against retraining.

Writes ``benchmarks/results/certified.json``: records with ``case``, ``n``, ``method``,
``seconds``, ``retrain_seconds``, ``speedup`` (= retrain_seconds / seconds) and
``rel_distance`` (to the model retrained on the corrected data with the same noise ``b``).

Case ``label-fix-10``: binary logistic regression, ``d = 100`` features (rows scaled to
``||x|| <= 1``), ``l2 = 1e-3 n`` (Guo et al.'s scaling: lambda = 1e-3 on the mean loss),
certified with ``epsilon = 1``, ``delta = 1e-4``, ``sigma = 10``;
``--requests`` successive requests, each fixing the labels of 10 random rows, applied through
:class:`unlearnkit.ledger.Ledger` (cached factorisation, a-priori bound as the certificate;
each request commits a model file and a SQLite transaction). Methods:

* ``ledger-second-order``: median wall time of one ``Ledger.apply`` (all of it: resolving the
  rows from the memory-mapped data, gradients, the solve, bounds, the model file, the commit)
  over the requests the budget covered; requests that exhausted it retrain (counted in
  ``retrained_during_requests``, their time in ``mean_with_retraining``);
* ``exact-residual``: one pass over the data to measure ``||grad L_b||`` (optional, timed apart);
* ``refine``: Newton steps to the retraining tolerance after the requests;
* ``retrain``: training from scratch on the corrected data with the same ``b`` (the reference).

Goals: latency at n = 1e6 within 2x of n = 1e4, and >= 100x faster than retraining at 1e6.
Run: ``python benchmarks/bench_certified.py`` (about 5 minutes on 2 cores; ``--quick`` for
n = 1e4 and 1e5).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import unlearnkit as uk
from unlearnkit.influence.certified import CertifiedSpec
from unlearnkit.ledger import Ledger
from unlearnkit.metrics import relative_distance
from unlearnkit.models import LogisticRegression
from unlearnkit.training import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "certified.json"


def make_data(n: int, d: int, seed: int) -> uk.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1).max()
    w = rng.normal(size=d) * 4.0
    y = (X @ w + 0.3 * rng.logistic(size=n) > 0).astype(np.int64)
    return uk.Dataset(X, y, name=f"synthetic-{n}")


def retrain_same_noise(ledger: Ledger, data: uk.Dataset) -> tuple[object, float]:
    """Train from scratch on ``data`` with the ledger's current noise ``b``: the reference."""
    fresh = copy.deepcopy(ledger.certified.model)
    start = time.perf_counter()
    ref = train(fresh, data, config=fresh.train_config)
    return ref, time.perf_counter() - start


def run_case(n: int, d: int, requests: int, log) -> list[dict]:
    data = make_data(n, d, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        start = time.perf_counter()
        ledger = Ledger.create(folder / "ledger", data, model=LogisticRegression(n_features=d, l2=1e-3 * n),
                               spec=CertifiedSpec(epsilon=1.0, delta=1e-4, sigma=10.0))
        create_seconds = time.perf_counter() - start
        log(f"n={n}: ledger created in {create_seconds:.1f}s")
        rng = np.random.default_rng(1)
        latencies, retrained, all_times = [], 0, []
        for k in range(requests):
            rows = rng.choice(n, size=10, replace=False)
            labels = 1 - ledger.certified.rows.current(rows).y  # current labels: compose with earlier requests
            changes = uk.Changes.relabel(np.sort(rows), labels)
            t0 = time.perf_counter()
            result = ledger.apply(changes, reason=f"bench request {k}")
            all_times.append(time.perf_counter() - t0)
            if result.certificate.retrained:
                retrained += 1
            else:
                latencies.append(all_times[-1])
        cert = ledger.certificate()
        latency = statistics.median(latencies)
        log(f"n={n}: median request latency {latency * 1000:.2f} ms over {requests} (retrained {retrained}x); "
            f"cumulative bound {cert.cumulative_bound:.3g} of budget {cert.budget:.3g}")
        t0 = time.perf_counter()
        residual = ledger.certified.exact_residual()
        residual_seconds = time.perf_counter() - t0
        corrected = ledger.certified.rows.full()
        reference, retrain_seconds = retrain_same_noise(ledger, corrected)
        unlearned = ledger.model
        dist = relative_distance(unlearned, reference)
        log(f"n={n}: retraining {retrain_seconds:.1f}s, exact residual {residual:.3g} ({residual_seconds:.2f}s), "
            f"rel distance {dist:.2e}")
        t0 = time.perf_counter()
        info = ledger.refine()
        refine_seconds = time.perf_counter() - t0
        refined_dist = relative_distance(ledger.model, reference)
        log(f"n={n}: refine {info['steps']} steps in {refine_seconds:.1f}s, residual {info['residual']:.3g}, "
            f"rel distance {refined_dist:.2e}")
        base = {"case": "label-fix-10", "n": n, "d": d, "requests": requests, "retrain_seconds": retrain_seconds,
                "create_seconds": create_seconds, "budget": cert.budget, "cumulative_bound": cert.cumulative_bound,
                "exact_residual": residual, "retrained_during_requests": retrained,
                "latency_min": min(latencies), "latency_max": max(latencies),
                "mean_with_retraining": statistics.mean(all_times), "train_accuracy": uk.accuracy(unlearned, corrected)}
        return [
            {**base, "method": "ledger-second-order", "seconds": latency, "speedup": retrain_seconds / latency,
             "rel_distance": dist},
            {**base, "method": "exact-residual", "seconds": residual_seconds, "speedup": retrain_seconds / residual_seconds,
             "rel_distance": dist},
            {**base, "method": "refine", "seconds": refine_seconds, "speedup": retrain_seconds / refine_seconds,
             "rel_distance": refined_dist, "refine_steps": info["steps"]},
            {**base, "method": "retrain", "seconds": retrain_seconds, "speedup": 1.0, "rel_distance": 0.0},
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e4 and 1e5 only")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)

    def log(message: str) -> None:
        print(message, flush=True)

    sizes = [10_000, 100_000] if args.quick else [10_000, 1_000_000]
    records = []
    for n in sizes:
        records += run_case(n, args.d, args.requests, log)
    lat = {r["n"]: r["seconds"] for r in records if r["method"] == "ledger-second-order"}
    big, small = max(lat), min(lat)
    summary = {"latency_ratio_large_to_small": lat[big] / lat[small],
               "speedup_at_largest": next(r["speedup"] for r in records if r["n"] == big and r["method"] == "ledger-second-order")}
    log(f"latency n={big} / n={small}: {summary['latency_ratio_large_to_small']:.2f} (goal <= 2); "
        f"speed-up over retraining at n={big}: {summary['speedup_at_largest']:.0f}x (goal >= 100)")
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": "cpu", "quick": args.quick, **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{**r, **meta} for r in records], indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
