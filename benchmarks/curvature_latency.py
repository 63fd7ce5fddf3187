"""Per-request latency of the ledger against its durable floor, measured in the same run.

Problem: binary logistic regression, ``d = 100`` standard normal features, labels from a planted
logistic model (the recipe of ``make_problem`` in ``bench_curvature.py``), ``l2 = 1`` with the
intercept penalised (certified unlearning needs strong convexity in every parameter). One
ledger per ``n`` (``--sizes``, default ``1e4 1e5 1e6``) serves every ``k`` (``--ks``, default
``1 10 100 1000``): a request relabels ``k`` rows (``y -> 1 - y``, the label they hold now),
drawn at random in odd rounds and the same rows back in even rounds, so that the parameters stay
near the cached factor's anchor. The certificate is :data:`SPEC` (``epsilon = 1e4``,
``sigma = 100``): a budget large enough that most requests do not exhaust it without noise ``b``
so large that it dominates the model. A request that does exhaust it retrains (``O(n)``, not a
request's latency): those are counted (``retrained``) and timed apart (``retrain_seconds``), and
the medians are over the other requests; at ``n = 1e4, k = 1000`` (10 % of the rows per request)
most requests retrain.

Per ``(n, k)``, after one untimed warm-up request, ``--reps`` rounds, each timing in turn:

* ``ledger``: :meth:`unlearnkit.ledger.Ledger.apply` (the whole call: writer lock, checks,
  update, model file, transaction);
* ``commit floor``: one SQLite transaction in a database beside the ledger (same folder, same
  journal mode as the ledger's database, ``synchronous=FULL``) writing what a request has to
  write durably: one row the size of the parameters and the noise ``b`` (``2 p`` float64) and the
  ``k`` overlay rows (id, label, ``d`` float64 features);
* ``compute floor``: the same update written directly in numpy and LAPACK: the ``k`` rows read from
  the ledger's memory-mapped data, their closed-form logistic gradients before and after the
  relabelling (``O(k p)``), and one solve on the cached ``p x p`` Cholesky factor (``O(p^2)``;
  a label edit leaves the Hessian unchanged, so there is no low-rank update); run
  :data:`WARM_RUNS` times in a row, the last run timed (warm caches: the tightest floor).

The durable floor is ``commit floor + compute floor``; every figure is the median over the
rounds. Reported per ``(n, k)``: the three medians, ``ratio = ledger / durable floor`` (goal
``<= 2``), and per ``k`` whether the latency is flat in ``n``: the ledger's median at the largest
``n`` at most :data:`FLAT_TOLERANCE` times its median at the smallest (the floors are independent
of ``n`` by construction). Requests that exhausted the budget and retrained are counted
(``retrained``): a retraining is ``O(n)`` and would not be a request's latency.

Run: ``python benchmarks/curvature_latency.py`` (a few minutes on 2 cores; the ledger at
``n = 1e6`` takes about as long to create as one training) writes ``/tmp/latency.json``;
``--out`` writes elsewhere. :func:`run_latency` returns the same JSON-ready record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.special
from scipy.linalg.lapack import dpotrs as potrs
import torch

import unlearnkit as uk
from unlearnkit.influence.certified import CertifiedSpec
from unlearnkit.influence.functional import FlatModel
from unlearnkit.ledger import Ledger
from unlearnkit.ledger.ledger import DB_NAME
from unlearnkit.models import LogisticRegression

D = 100
L2 = 1.0
SIZES = [10_000, 100_000, 1_000_000]
KS = [1, 10, 100, 1000]
GOAL_RATIO = 2.0
SPEC = {"epsilon": 1e4, "sigma": 100.0}
FLAT_TOLERANCE = 1.5
"""Latency counts as flat in ``n`` when the median at the largest ``n`` is at most this many
times the median at the smallest ``n`` (same ``k``)."""
WARM_RUNS = 3
"""The compute floor runs this many times in a row per round and its last run is timed: its cost
with warm caches, the tightest floor (run once right after a ledger request it measures a few
times more)."""
DEFAULT_OUT = Path(tempfile.gettempdir()) / "latency.json"


def planted_data(n: int, d: int, seed: "int | np.random.Generator") -> uk.Dataset:
    """Planted logistic data, learnable and not separable (also the data of ``bench_curvature``'s convex part, which
    passes its own generator and goes on drawing from it)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d) * 2.0
    y = (X @ w + 0.5 + rng.logistic(size=n) > 0).astype(np.int64)
    return uk.Dataset(X, y, name=f"planted-{n}x{d}")


class CommitFloor:
    """One durable SQLite transaction per request, in a database beside the ledger's."""

    def __init__(self, folder: Path, journal_mode: str) -> None:
        self.path = folder / "commit-floor.sqlite"
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute(f"PRAGMA journal_mode={journal_mode}")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(
            "CREATE TABLE params (seq INTEGER PRIMARY KEY, theta BLOB NOT NULL, perturbation BLOB NOT NULL);"
            "CREATE TABLE overlay (id INTEGER PRIMARY KEY, removed INTEGER NOT NULL, label INTEGER, x BLOB, "
            "seq INTEGER NOT NULL);")
        self.seq = 0

    def commit(self, theta: bytes, b: bytes, rows: list[tuple[int, int, bytes]]) -> float:
        start = time.perf_counter()
        self.seq += 1
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO params VALUES (?, ?, ?)", (self.seq, theta, b))
        self.conn.executemany("INSERT OR REPLACE INTO overlay VALUES (?, 0, ?, ?, ?)",
                              [(i, label, x, self.seq) for i, label, x in rows])
        self.conn.execute("COMMIT")
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


class ComputeFloor:
    """The ``O(k p + p^2)`` update of a relabelling, directly in numpy on the cached factor."""

    def __init__(self, ledger: Ledger) -> None:
        cm = ledger.certified
        # the ledger's memory-mapped base rows, sorted by id
        self._set(cm.rows.X, cm.rows.ids, cm.curvature, cm.model)

    @classmethod
    def of(cls, X: np.ndarray, ids: np.ndarray, curvature, model) -> "ComputeFloor":
        """The floor for an in-memory model: rows ``X`` with ``ids`` (sorted), its cached factor and parameters."""
        out = cls.__new__(cls)
        out._set(X, ids, curvature, model)
        return out

    def _set(self, X, ids, curvature, model) -> None:
        self.X, self.ids = X, ids
        if curvature.rank or curvature.null_space is not None:
            raise RuntimeError("the compute floor assumes a plain Cholesky factor (no low-rank terms, no null space)")
        self.L = curvature.L0.numpy()
        self.theta = FlatModel(model).theta().detach().numpy().copy()

    def update(self, ids: np.ndarray, old: np.ndarray, new: np.ndarray, *, runs: int = WARM_RUNS) -> float:
        """Seconds of the update, run ``runs`` times in a row: the last (warm) run is timed."""
        for _ in range(runs):
            start = time.perf_counter()
            rows = np.asarray(self.X[np.searchsorted(self.ids, ids)])  # (k, d) from the memory map
            Xa = np.hstack([rows, np.ones((len(rows), 1))])  # weights, then the intercept (parameter order)
            s = scipy.special.expit(Xa @ self.theta)
            G = Xa.T @ (s - new) - Xa.T @ (s - old)  # g(Z~) - g(Z)
            step, info = potrs(self.L, G, lower=1)  # LAPACK's Cholesky solve, without scipy's checks
            theta = self.theta - step
            elapsed = time.perf_counter() - start
        if info != 0 or not np.all(np.isfinite(theta)):
            raise RuntimeError("the compute floor's update is not finite")
        self.last_theta = theta  # (the floor starts from the original parameters on every request)
        return elapsed


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_latency(sizes=SIZES, ks=KS, reps: int = 5, seed: int = 0, log=print, *, d: int = D,
                workdir: str | Path | None = None) -> dict:
    """Measure the ledger's per-request latency against its floors (see the module docstring).

    ``workdir``: where the ledgers are built (default: the system's temporary folder), removed
    afterwards. Returns a JSON-serialisable record: ``rows`` (one per ``(n, k)``), ``flat_in_n``
    (one per ``k``), the settings, the ledger creation times and the machine.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rows, create_seconds = [], {}
    journal_modes = set()
    for n in sizes:
        data = planted_data(int(n), d, seed)
        root = Path(tempfile.mkdtemp(prefix="latency-", dir=workdir))
        try:
            start = time.perf_counter()
            ledger = Ledger.create(root / "ledger", data, model=LogisticRegression(n_features=d, l2=L2),
                                   spec=CertifiedSpec(**SPEC), seed=seed)
            create_seconds[str(n)] = time.perf_counter() - start
            log(f"n = {n:,}: ledger created in {create_seconds[str(n)]:.1f} s")
            with sqlite3.connect(root / "ledger" / DB_NAME) as conn:
                journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            journal_modes.add(journal_mode)
            floor_db = CommitFloor(root, journal_mode)
            compute = ComputeFloor(ledger)
            labels = np.asarray(data.y, dtype=np.int64).copy()  # the labels the ledger holds now, by position
            theta_bytes = np.zeros(2 * ledger.certified.model.n_params).tobytes()
            rng = np.random.default_rng(seed + int(n))
            try:
                for k in ks:
                    k = int(k)
                    timings = {"ledger": [], "commit": [], "compute": []}
                    retrain_seconds = []
                    for rep in range(reps + 1):  # the first round is the warm-up
                        if rep % 2 == 0:  # new rows; odd rounds relabel the same rows back
                            pos = np.sort(rng.choice(len(data), size=k, replace=False))
                        ids, old = data.ids[pos], labels[pos].copy()
                        new = 1 - old
                        t0 = time.perf_counter()
                        result = ledger.apply(uk.Changes.relabel(ids, new), reason="latency benchmark")
                        t_ledger = time.perf_counter() - t0
                        labels[pos] = new
                        if result.certificate.retrained:
                            retrain_seconds.append(t_ledger)
                        payload = [(int(i), int(lab), np.asarray(data.X[p], dtype=np.float64).tobytes())
                                   for i, lab, p in zip(ids, new, pos)]
                        t_commit = floor_db.commit(theta_bytes[: len(theta_bytes) // 2],
                                                   theta_bytes[len(theta_bytes) // 2:], payload)
                        t_compute = compute.update(ids, old.astype(np.float64), new.astype(np.float64))
                        if rep:
                            if not result.certificate.retrained:
                                timings["ledger"].append(t_ledger)
                            timings["commit"].append(t_commit)
                            timings["compute"].append(t_compute)
                    med = {key: _median(v) if v else None for key, v in timings.items()}
                    durable = med["commit"] + med["compute"]
                    ratio = None if med["ledger"] is None else med["ledger"] / durable
                    row = {"n": int(n), "k": k, "reps": reps, "ledger_seconds": med["ledger"],
                           "commit_floor_seconds": med["commit"], "compute_floor_seconds": med["compute"],
                           "durable_floor_seconds": durable, "ratio": ratio,
                           "goal_met": None if ratio is None else ratio <= GOAL_RATIO,
                           "requests_timed": len(timings["ledger"]), "retrained": len(retrain_seconds),
                           "retrain_seconds": retrain_seconds, "ledger_all_seconds": timings["ledger"]}
                    rows.append(row)
                    shown = "   (every request retrained)" if ratio is None else (
                        f"ledger {1e3 * med['ledger']:8.2f} ms   ratio {ratio:5.2f} "
                        f"({'met' if row['goal_met'] else 'missed'})")
                    log(f"  k = {k:>5}: commit floor {1e3 * med['commit']:7.2f} ms   compute floor "
                        f"{1e3 * med['compute']:7.3f} ms   {shown}"
                        + (f"   [{len(retrain_seconds)} of {reps + 1} requests retrained]" if retrain_seconds else ""))
            finally:
                floor_db.close()
                del ledger, compute
        finally:
            shutil.rmtree(root, ignore_errors=True)
    flat = {}
    for k in ks:
        by_n = {r["n"]: r["ledger_seconds"] for r in rows if r["k"] == int(k) and r["ledger_seconds"] is not None}
        if len(by_n) > 1:
            sizes_k = sorted(by_n)
            growth = by_n[sizes_k[-1]] / by_n[sizes_k[0]]
            flat[str(int(k))] = {"n_min": sizes_k[0], "n_max": sizes_k[-1], "growth": growth,
                                 "flat": growth <= FLAT_TOLERANCE}
    return {
        "description": "per-request latency of Ledger.apply (relabelling k rows) against its durable floor: one "
                       "fsync'd SQLite commit of the parameters and k overlay rows + the O(kp + p^2) numpy update "
                       "on the cached Cholesky factor, medians over reps rounds after one warm-up, same run",
        "settings": {"d": d, "l2": L2, "penalize_intercept": True, "spec": SPEC,
                     "sizes": [int(n) for n in sizes], "ks": [int(k) for k in ks], "reps": reps, "seed": seed,
                     "journal_mode": sorted(journal_modes), "synchronous": "FULL",
                     "compute_floor_warm_runs": WARM_RUNS},
        "goals": {"ratio_at_most": GOAL_RATIO, "flat_tolerance": FLAT_TOLERANCE},
        "rows": rows, "flat_in_n": flat, "create_seconds": create_seconds, "machine": machine_info(),
    }


IN_MEMORY_GOAL = 3.0


def run_in_memory(sizes=SIZES, ks=KS, reps: int = 5, seed: int = 0, log=print, *, d: int = D) -> dict:
    """Per-request latency of the in-memory cached path against its compute floor, same run.

    Per ``n``: a plain (not certified) logistic regression trained on the same planted data, its curvature fitted
    once (``uk.curvature.fit(kind="exact")``); per ``k`` and round, ``k`` random rows relabelled (``y -> 1 - y`` of
    the original labels; every request starts from the trained model, as a user's requests against one fitted
    curvature do) by ``uk.unlearn(model, data, changes, method="second-order", curvature=fitted)`` — the whole call:
    validation, change-set resolution, the update, a new model — against the same update written directly in numpy
    on the same factor (:class:`ComputeFloor`). Goal: ``ratio <= IN_MEMORY_GOAL``, flat in ``n``."""
    rows = []
    for n in sizes:
        data = planted_data(int(n), d, seed)
        model = uk.train(LogisticRegression(n_features=d, l2=L2), data)
        start = time.perf_counter()
        fitted = uk.curvature.fit(model, data, kind="exact")
        fit_seconds = time.perf_counter() - start
        order = np.argsort(data.ids)
        floor = ComputeFloor.of(np.asarray(data.X)[order], np.asarray(data.ids)[order], fitted.factor, model)
        log(f"n = {n:,}: in-memory model trained, curvature fitted in {fit_seconds:.2f} s")
        rng = np.random.default_rng(seed + 7 * int(n))
        for k in ks:
            k = int(k)
            times = {"request": [], "compute": []}
            statuses = {}  # the guard's verdicts on the timed requests (a damped step costs more than the floor)
            for rep in range(reps + 1):  # the first round is the warm-up
                pos = np.sort(rng.choice(len(data), size=k, replace=False))
                ids, old = data.ids[pos], np.asarray(data.y[pos], dtype=np.int64)
                changes = uk.Changes.relabel(ids, 1 - old)
                t0 = time.perf_counter()
                result = uk.unlearn(model, data, changes, method="second-order", curvature=fitted)
                t_request = time.perf_counter() - t0
                t_compute = floor.update(ids, old.astype(np.float64), (1 - old).astype(np.float64))
                statuses[str(result.status)] = statuses.get(str(result.status), 0) + 1
                if rep == 1:  # the same update, unguarded and unchecked: the floor is the computation it makes
                    raw = uk.unlearn(model, data, changes, method="second-order", curvature=fitted, guard=False,
                                     check=False)
                    theta = FlatModel(raw.model).theta().numpy()
                    err = float(np.linalg.norm(theta - floor.last_theta) / np.linalg.norm(floor.last_theta))
                    if not err < 1e-8:
                        raise RuntimeError(f"the in-memory request and its compute floor disagree ({err:.2e})")
                if rep:
                    times["request"].append(t_request)
                    times["compute"].append(t_compute)
            med = {key: _median(v) for key, v in times.items()}
            ratio = med["request"] / med["compute"]
            rows.append({"n": int(n), "k": k, "reps": reps, "request_seconds": med["request"],
                         "compute_floor_seconds": med["compute"], "ratio": ratio, "goal_met": ratio <= IN_MEMORY_GOAL,
                         "request_all_seconds": times["request"], "guard_statuses": statuses})
            log(f"  k = {k:>5}: in-memory request {1e3 * med['request']:8.3f} ms   compute floor "
                f"{1e3 * med['compute']:7.3f} ms   ratio {ratio:6.1f} ({'met' if ratio <= IN_MEMORY_GOAL else 'missed'})")
    flat = {}
    for k in ks:
        by_n = {r["n"]: r["request_seconds"] for r in rows if r["k"] == int(k)}
        if len(by_n) > 1:
            lo, hi = min(by_n), max(by_n)
            flat[str(int(k))] = {"n_min": lo, "n_max": hi, "growth": by_n[hi] / by_n[lo],
                                 "flat": by_n[hi] / by_n[lo] <= FLAT_TOLERANCE}
    return {"description": "per-request latency of uk.unlearn(..., method='second-order', curvature=fitted) with its "
                           "defaults (the guard and the before/after check included) on a plain logistic regression "
                           "(relabelling k rows) against the O(kp + p^2) update in numpy on the same factor (checked "
                           "equal to the unguarded update), medians over reps rounds after one warm-up, same run",
            "goals": {"ratio_at_most": IN_MEMORY_GOAL, "flat_tolerance": FLAT_TOLERANCE},
            "rows": rows, "flat_in_n": flat}


def machine_info() -> dict:
    from threadpoolctl import threadpool_info

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "blas": [{k: info.get(k) for k in ("internal_api", "num_threads")} for info in threadpool_info()],
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "sqlite": sqlite3.sqlite_version, "device": "cpu"}


def run_both(sizes=SIZES, ks=KS, reps: int = 5, seed: int = 0, log=print, *, workdir=None) -> dict:
    """:func:`run_latency` (the ledger) with :func:`run_in_memory` (the in-memory path) under ``"in_memory"``."""
    log("the ledger against its durable floor (one fsync'd SQLite commit + the O(kp + p^2) update)")
    result = run_latency(sizes, ks, reps, seed, log, workdir=workdir)
    log("\nthe in-memory cached path (uk.unlearn with a fitted curvature) against its compute floor")
    result["in_memory"] = run_in_memory(sizes, ks, reps, seed, log)
    return result


def limit_threads(threads: int | None) -> None:
    """The same number of threads for torch and the BLAS under numpy / scipy / scikit-learn (None: their own)."""
    if threads is not None:
        import sklearn.linear_model  # noqa: F401  (load its OpenMP runtime before limiting the thread pools)
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)


def log(message: str) -> None:
    print(message, flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--ks", type=int, nargs="+", default=KS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and the BLAS under numpy/scipy (default: the libraries' own)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the ledgers are built (default: temp)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    start = time.perf_counter()
    result = run_both(args.sizes, args.ks, args.reps, args.seed, log, workdir=args.workdir)
    result.update(seconds=time.perf_counter() - start, threads=args.threads,
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
