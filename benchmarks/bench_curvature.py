"""Curvature computed once and reused: second-order unlearning against retraining and scikit-learn.

Writes ``benchmarks/results/curvature.json``: one entry per part (``--part``), each replacing only
its own entry, so the parts can be run separately.

Part ``convex`` — the cached Cholesky factor of a logistic regression, against the user's real
alternatives, all in the same run. Problem: binary logistic regression, ``d = 100`` standard normal
features, labels from a planted logistic model, ``n = 1e4, 1e5`` (and ``1e6`` with ``--full``);
the request flips the labels of 1 % of the rows (drawn with the seed), i.e. ``k = n / 100``.

Objective and scikit-learn's convention: our model minimises ``sum_i l_i + (l2/2)||W||^2`` with
``penalize_intercept=False``; scikit-learn's ``LogisticRegression`` (lbfgs, newton-cholesky; not
liblinear) minimises ``C sum_i l_i + ||W||^2 / 2`` with the intercept unpenalised. With
``C = 1 / l2`` the two objectives are proportional, so they have the same minimiser; the run checks
this at the smallest ``n`` (``convention_check``: scikit-learn at ``tol = 1e-10`` against our
exact optimum). ``l2 = 1``.

Methods (seconds are medians over ``--reps`` repetitions, interleaved, after one untimed warm-up
of every method at the same size):

* ``retrain``: :func:`unlearnkit.retrain` on the corrected data (Newton's method from zero, the
  model's own training recipe: ``max |grad(L/n)| <= 1e-10``);
* ``sklearn-lbfgs``: ``LogisticRegression(C=1/l2)`` fit on the corrected data at its defaults
  (``tol = 1e-4``, ``max_iter = 100``), from zero;
* ``sklearn-lbfgs-warm``: the same, warm-started from the original model's coefficients;
* ``sklearn-newton-cholesky-warm``: ``solver="newton-cholesky"``, warm-started;
* ``one-step``: today's second-order update without a cache (Hessian of the corrected data
  computed and factorised per request);
* ``one-step-cached``: the second-order update on the cached factor
  (:class:`~unlearnkit.influence.curvature.CachedCurvature` of the original model on the
  original data, computed once; its cost is ``factor_seconds``, reported apart and not counted
  per request);
* ``refine-cached@tol``: the cached update followed by chord / Newton steps to
  ``||grad L(theta; D~)||_2 / n <= tol``, one row per ``--tols`` (default ``1e-6`` and ``1e-5``),
  :mod:`unlearnkit.influence.refine` (steps, residual per step and factor refreshes recorded).

``resolve_seconds`` is the median time of ``changes.resolve(data)`` alone, which every one of our
calls includes (it validates the request against all ``n`` rows and builds the corrected data);
``seconds_excluding_resolve`` subtracts it (context only: the goals use the whole call).

For each: ``seconds``, ``rel_distance`` ``||theta - theta_opt|| / ||theta_opt||`` to the exact
optimum (our Newton solve warm-started from the retrained model at ``tol = 1e-13``; its own
residual is recorded), ``speedup_vs_retrain`` and ``speedup_vs_fastest_refit`` (the fastest
scikit-learn variant at that ``n``). Our times are those of the whole call a user makes
(``unlearnkit.unlearn``-equivalent: resolving the change set, gradients, solve, new model).

Goals, printed as met / missed for each ``n``:

* one step (cached) >= 100x faster than retraining;
* refine (cached; the fastest tolerance that reaches relative distance <= 1e-3) >= 10x faster
  than retraining at relative distance <= 1e-3;
* our cached update (one-step or refined, the fastest that is at least as close to the optimum as
  the fastest scikit-learn refit) >= 10x faster than that refit.

Part ``deep`` — cached K-FAC / EK-FAC on a SmallCNN against retraining and the old CG rule
(:func:`run_deep`). Data: ``n`` rows of the official Fashion-MNIST training set (``--sizes``,
default 10,000, 30,000 and 60,000; ``--quick``: 2,000), drawn as ``bench_methods.load`` draws
them, and the official 10,000-row test set. Poisoning: 10 % targeted label flips, ``round(0.1 n)``
rows of class 0 ("T-shirt/top", drawn with the seed; every row of the class when it has fewer)
relabelled 6 ("Shirt"); the poisoned model (zoo ``"cnn"``) trains on the poisoned data with the
Fashion-MNIST recipe of ``bench_methods.py`` (Adam, lr 2e-3, batch 64, 10 epochs; ``--epochs``
overrides). The request is the correction: relabel those rows back. Rows of the table:

* ``retrain``: :func:`unlearnkit.retrain` on the corrected (clean) data, same recipe and seed;
  its test accuracy is ``acc_clean_retrained``; one epoch's time is its training time / epochs;
* ``original (do nothing)``: the poisoned model, ``acc_poisoned``;
* ``second-order kfac (cached)`` / ``ekfac (cached)``: ``uk.unlearn(..., method="second-order",
  curvature=c)`` with ``c = uk.curvature.fit(model, data, kind=...)`` fitted once on the poisoned
  model and data (defaults: one sampled label per row; the guard on, its damping from ``1e-3 x`` the fit's ``lambda_max``); the
  fit's seconds are reported apart, also in epochs;
* ``second-order ekfac (cached, no val)``: the same without held-out rows (the guard's tests on the
  training data only); ``second-order ekfac (cached, 5 chunks)``: the request in 5 chunks, one fit
  serving them all;
* ``second-order ggn-cg (old rule, ...)``: ``method="second-order"`` at its defaults for a deep
  model (GGN, CG with 50 iterations, damping ``1e-3 x lambda_max`` on ``max(1024, k)`` rows),
  with ``guard=False`` and with the default guard.

The guarded rows get ``val`` = 2,000 rows of the official test set (seeded split) for the guard's
held-out test; every accuracy is measured on the other 8,000 test rows.

Per row: per-request seconds (the whole ``uk.unlearn`` call; the median of ``--reps`` interleaved
runs for the cached requests, one run for the old rule), speed-up vs retraining one-shot
(``retrain / (fit + request)``) and amortised (``retrain / request``), test accuracy, the restored
share of the lost accuracy ``(acc - acc_poisoned) / (acc_clean_retrained - acc_poisoned)`` and the
guard's status and accepted damping. iHVP accuracy (``ihvp``, on the CNN of the largest ``n`` only: the
reference costs minutes): at each damping an update used
(the accepted dampings of the cached updates and the old rule's), the relative error of the
``kfac``, ``ekfac`` and ``diagonal`` kinds' ``solve`` on ``--ihvp-rhs`` Gaussian right-hand
sides against conjugate gradients on the exact GGN run to a relative residual of ``1e-10`` in
float64 (``--cg-max-iter``; convergence recorded). Both sides use the same matrix: a fixed
sample of ``--ihvp-rows`` rows (the kinds fitted on it), the damping scaled by ``m / n`` so that
its ratio to the GGN is the update's; the L2 term (``l2 = 1e-3``) is not rescaled. Goals, met /
missed: the faster cached update ``>= 20x`` retraining amortised (set at n = 60,000); each fit
``<= 1`` epoch. Every code path runs once on 300 rows before any timing.

Every method runs with the same threads (``--threads``; torch and the BLAS under numpy / scipy).

Run: ``python benchmarks/bench_curvature.py --part convex`` (n = 1e4, 1e5; a few minutes on 2
cores); ``--full`` adds n = 1e6; ``--out`` writes elsewhere (trial runs).
``python benchmarks/bench_curvature.py --part deep`` (10 epochs of training and retraining per
size: about an hour on 2 cores); ``--part deep --quick`` for a smoke run.
``python benchmarks/bench_curvature.py --part latency``: the per-request latency grid of
``benchmarks/curvature_latency.py`` (the ledger against one fsync'd SQLite commit plus the update
in numpy, the in-memory cached path against that update alone; n = 1e4, 1e5, 1e6 and k = 1, 10,
100, 1000; a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import unlearnkit as uk
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual
from unlearnkit.influence.updates import second_order_update
from unlearnkit.models import LogisticRegression
from unlearnkit.training import TrainConfig, accuracy, train

import curvature_latency  # a sibling module (benchmarks/ is on the path when a benchmark runs)
from curvature_latency import planted_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "curvature.json"

L2 = 1.0
FLIP_FRACTION = 0.01


# ---------------------------------------------------------------------------- convex part
def make_problem(n: int, d: int, seed: int) -> tuple[uk.Dataset, uk.Changes]:
    """Planted logistic data (learnable, not separable) and a request flipping 1 % of the labels."""
    rng = np.random.default_rng(seed)
    data = planted_data(n, d, rng)
    rows = np.sort(rng.choice(n, size=max(1, int(FLIP_FRACTION * n)), replace=False))
    changes = uk.Changes.relabel(data.ids[rows], 1 - data.y[rows])
    return data, changes


def theta_of(model) -> np.ndarray:
    return FlatModel(model).theta().detach().cpu().numpy()


def sklearn_theta(clf) -> np.ndarray:
    """scikit-learn's coefficients in our parameter order (W row-major, then the intercept)."""
    return np.concatenate([clf.coef_.ravel(), clf.intercept_.ravel()])


def sklearn_fit(X, y, *, solver: str, warm_from: np.ndarray | None, tol: float = 1e-4, max_iter: int = 100):
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    clf = SkLogisticRegression(C=1.0 / L2, solver=solver, tol=tol, max_iter=max_iter, warm_start=warm_from is not None)
    if warm_from is not None:  # scikit-learn's warm start reads coef_ / intercept_ of a previous fit
        d = X.shape[1]
        clf.coef_ = warm_from[:d].reshape(1, d).copy()
        clf.intercept_ = warm_from[d:].copy()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y)
    converged = not any("converge" in str(w.message).lower() for w in caught)
    return clf, converged


def refine_name(tol: float) -> str:
    return f"refine-cached@{tol:g}"


def run_convex_case(n: int, d: int, reps: int, tols: list[float], seed: int, log) -> dict:
    data, changes = make_problem(n, d, seed)
    model = train(LogisticRegression(n_features=d, l2=L2, penalize_intercept=False), data, config=TrainConfig(seed=seed))
    corrected = changes.apply(data)
    Xc, yc = corrected.X, corrected.y
    theta0 = theta_of(model)
    batch = 8192

    t0 = time.perf_counter()
    cache = CachedCurvature.at(model, data, batch_size=batch)
    factor_seconds = time.perf_counter() - t0

    # the exact optimum: Newton from the retrained model, to the precision floor
    retrained = uk.retrain(model, data, changes)
    exact = train(model.fresh().to(torch.float64), corrected, config=replace(model.train_config, tol=1e-13, max_iter=50),
                  init_from=retrained)
    theta_opt = theta_of(exact)
    opt_residual = gradient_residual(FlatModel(exact), corrected) / len(corrected)

    def dist(theta: np.ndarray) -> float:
        return float(np.linalg.norm(theta - theta_opt) / np.linalg.norm(theta_opt))

    methods = {
        "retrain": lambda: theta_of(uk.retrain(model, data, changes)),
        "sklearn-lbfgs": lambda: sklearn_theta(sklearn_fit(Xc, yc, solver="lbfgs", warm_from=None)[0]),
        "sklearn-lbfgs-warm": lambda: sklearn_theta(sklearn_fit(Xc, yc, solver="lbfgs", warm_from=theta0)[0]),
        "sklearn-newton-cholesky-warm": lambda: sklearn_theta(sklearn_fit(Xc, yc, solver="newton-cholesky", warm_from=theta0)[0]),
        "one-step": lambda: theta_of(second_order_update(model, data, changes, batch_size=batch).model),
        "one-step-cached": lambda: theta_of(second_order_update(model, data, changes, curvature=cache, batch_size=batch).model),
    }
    for tol in tols:
        methods[refine_name(tol)] = (lambda tol=tol: theta_of(second_order_update(
            model, data, changes, curvature=cache, refine=tol, batch_size=batch).model))
    for fn in methods.values():  # warm-up: every code path once, untimed
        fn()
    times = {name: [] for name in methods}
    thetas = {}
    resolve_times = []
    for _ in range(reps):  # interleaved repetitions
        for name, fn in methods.items():
            start = time.perf_counter()
            thetas[name] = fn()
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()  # context: the part of our per-request time spent resolving the change set
        changes.resolve(data)
        resolve_times.append(time.perf_counter() - start)
    refined = {refine_name(tol): second_order_update(model, data, changes, curvature=cache, refine=tol, batch_size=batch)
               for tol in tols}
    sk_converged = {name: sklearn_fit(Xc, yc, solver=s, warm_from=w)[1] for name, s, w in
                    (("sklearn-lbfgs", "lbfgs", None), ("sklearn-lbfgs-warm", "lbfgs", theta0),
                     ("sklearn-newton-cholesky-warm", "newton-cholesky", theta0))}

    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    refits = [name for name in methods if name.startswith("sklearn")]
    fastest_refit = min(refits, key=seconds.get)
    rows = []
    for name in methods:
        row = {"method": name, "seconds": seconds[name], "seconds_all": times[name], "rel_distance": dist(thetas[name]),
               "speedup_vs_retrain": seconds["retrain"] / seconds[name],
               "speedup_vs_fastest_refit": seconds[fastest_refit] / seconds[name]}
        if name in sk_converged:
            row["converged_within_max_iter"] = sk_converged[name]
        if name in refined:
            rep = refined[name].diagnostics["refine"]
            row.update(refine_tol=rep["tol"], refine_status=rep["status"], refine_steps=rep["steps"],
                       refine_residuals=rep["residuals"], refine_refreshes=rep["refreshes"],
                       gradient_passes=rep["gradient_passes"])
        rows.append(row)
    resolve_seconds = statistics.median(resolve_times)
    for r in rows:  # ours minus changes.resolve: what an O(k) resolution of the request would leave
        if not (r["method"] == "retrain" or r["method"].startswith("sklearn")):
            r["seconds_excluding_resolve"] = max(r["seconds"] - resolve_seconds, 0.0)
            r["speedup_vs_retrain_excluding_resolve"] = seconds["retrain"] / max(r["seconds"] - resolve_seconds, 1e-9)
    by = {r["method"]: r for r in rows}

    # goals
    one, fr = by["one-step-cached"], by[fastest_refit]
    refines = [by[name] for name in refined]
    close = [r for r in refines if r["rel_distance"] <= 1e-3]  # the fastest refine at distance <= 1e-3
    ref = min(close, key=lambda r: r["seconds"]) if close else min(refines, key=lambda r: r["rel_distance"])
    candidates = [r for r in (one, *refines) if r["rel_distance"] <= fr["rel_distance"]]
    best = min(candidates, key=lambda r: r["seconds"]) if candidates else None
    goals = {
        "one_step_100x_retrain": {"value": one["speedup_vs_retrain"], "met": one["speedup_vs_retrain"] >= 100},
        "refine_10x_retrain_at_1e-3": {"ours": ref["method"], "value": ref["speedup_vs_retrain"],
                                       "rel_distance": ref["rel_distance"],
                                       "met": ref["speedup_vs_retrain"] >= 10 and ref["rel_distance"] <= 1e-3},
        "cached_10x_fastest_refit_at_equal_distance": {
            "fastest_refit": fastest_refit, "refit_rel_distance": fr["rel_distance"],
            "ours": best["method"] if best else None,
            "value": (fr["seconds"] / best["seconds"]) if best else None,
            "met": bool(best) and fr["seconds"] / best["seconds"] >= 10},
    }
    case = {"n": n, "d": d, "k": changes.resolve(data).n_affected, "l2": L2, "C": 1.0 / L2,
            "factor_seconds": factor_seconds, "resolve_seconds": resolve_seconds,
            "optimum_residual": opt_residual, "fastest_refit": fastest_refit,
            "rows": rows, "goals": goals}
    if n == min(SIZES_SEEN):
        clf, _ = sklearn_fit(Xc, yc, solver="lbfgs", warm_from=None, tol=1e-10, max_iter=10_000)
        case["convention_check"] = {"sklearn_tight_rel_distance": dist(sklearn_theta(clf)),
                                    "note": "scikit-learn lbfgs at tol=1e-10, C=1/l2, intercept unpenalised, "
                                            "against our exact optimum with penalize_intercept=False"}
    print_case(case, log)
    return case


SIZES_SEEN: list[int] = []


def print_case(case: dict, log) -> None:
    log(f"\nn = {case['n']:,}  d = {case['d']}  k = {case['k']:,} labels flipped  (factor, once: "
        f"{case['factor_seconds']:.3f} s; optimum residual ||g||/n = {case['optimum_residual']:.1e})")
    log(f"  (of our per-request time, changes.resolve alone takes {case['resolve_seconds']:.4f} s)")
    log(f"  {'method':30s} {'seconds':>10s} {'rel.dist':>10s} {'vs retrain':>11s} {'vs refit':>9s} {'w/o resolve':>12s}")
    for r in case["rows"]:
        extra = f"{r['seconds_excluding_resolve']:12.4f}" if "seconds_excluding_resolve" in r else ""
        log(f"  {r['method']:30s} {r['seconds']:10.4f} {r['rel_distance']:10.2e} {r['speedup_vs_retrain']:10.1f}x "
            f"{r['speedup_vs_fastest_refit']:8.2f}x {extra}")
    if "convention_check" in case:
        log(f"  convention check: scikit-learn (tol 1e-10) vs our optimum: "
            f"{case['convention_check']['sklearn_tight_rel_distance']:.1e}")
    for name, g in case["goals"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.1f}x"
        log(f"  goal {name}: {value} -> {'met' if g['met'] else 'MISSED'}")


def run_convex(args, log) -> dict:
    sizes = [10_000, 100_000] + ([1_000_000] if args.full else [])
    if args.sizes:
        sizes = args.sizes
    SIZES_SEEN[:] = sizes
    cases = [run_convex_case(n, args.d, args.reps, args.tols, args.seed, log) for n in sizes]
    return {"problem": "binary logistic regression, planted, 1 % labels flipped", "l2": L2, "reps": args.reps,
            "refine_tols": args.tols, "residual_scaling": "||grad L(theta; D~)||_2 / n", "cases": cases}


# ---------------------------------------------------------------------------- deep part
FLIP_SOURCE, FLIP_TARGET = 0, 6  # Fashion-MNIST "T-shirt/top" -> "Shirt"
DEEP_FLIP_FRACTION = 0.10
DEEP_SIZES = [10_000, 30_000, 60_000]
DEEP_QUICK_SIZES = [2_000]
DEEP_CHUNKS = 5
VAL_ROWS = 2_000  # of the official test set, held out for the guard; accuracy is measured on the other 8,000
ROW_SEED = 123  # the row draw of bench_methods.load


def fashion_rows(n: int) -> tuple[uk.Dataset, uk.Dataset, uk.Dataset]:
    """``n`` rows of the official Fashion-MNIST training set (drawn as ``bench_methods.load`` draws them), and the
    official 10,000-row test set split once (seeded) into VAL_ROWS held-out rows for the guard (``val``) and the
    rest, on which every accuracy is measured: no method sees the rows it is scored on."""
    full = uk.data.load_fashion_mnist(split="train")
    if not 1 <= n <= len(full):
        raise SystemExit(f"--sizes: n must be between 1 and {len(full)}, got {n}")
    rows = np.sort(np.random.default_rng(ROW_SEED).permutation(len(full))[:n])
    official = uk.data.load_fashion_mnist(split="test")
    split = np.random.default_rng([ROW_SEED, 1]).permutation(len(official))
    val = official.subset(np.sort(split[:VAL_ROWS]), name="fashion-mnist-val")
    test = official.subset(np.sort(split[VAL_ROWS:]), name="fashion-mnist-test")
    return full.subset(rows, name=f"fashion-mnist-{n}"), val, test


def targeted_flips(clean: uk.Dataset, seed: int) -> tuple[uk.Dataset, uk.Changes, np.ndarray]:
    """Poison: ``round(0.1 n)`` rows of class FLIP_SOURCE (all of them if it has fewer; drawn with ``seed``)
    relabelled FLIP_TARGET. Returns the poisoned data, the correction (relabel them back) and the flipped ids."""
    source = np.flatnonzero(clean.y == FLIP_SOURCE)
    k = min(len(source), max(1, round(DEEP_FLIP_FRACTION * len(clean))))
    rows = np.sort(np.random.default_rng(seed).choice(source, size=k, replace=False))
    ids = clean.ids[rows]
    poisoned = uk.Changes.relabel(ids, np.full(k, FLIP_TARGET)).apply(clean)
    return poisoned, uk.Changes.relabel(ids, np.full(k, FLIP_SOURCE)), ids


def deep_config(args):
    from bench_methods import RECIPES  # the Fashion-MNIST recipe of bench_methods (Adam, lr 2e-3, batch 64, 10 epochs)

    config = replace(RECIPES["fashion-mnist"], seed=args.seed)
    return replace(config, epochs=args.epochs) if args.epochs else config


def deep_requests(model, data, changes, fits: dict, val: uk.Dataset) -> dict:
    """``name -> () -> UnlearnResult``: the per-request calls a user makes (``uk.unlearn``); ``val`` = held-out rows
    for the guard's held-out test (the rows without it show what the training-data tests alone do)."""
    calls = {f"second-order {kind} (cached)": (lambda c=c: uk.unlearn(model, data, changes, method="second-order",
                                                                       curvature=c, val=val))
             for kind, c in fits.items()}
    if "ekfac" in fits:
        calls["second-order ekfac (cached, no val)"] = lambda: uk.unlearn(
            model, data, changes, method="second-order", curvature=fits["ekfac"])
        # iterative: one fit serves every chunk (kept stale, drift reported), each chunk guarded
        calls[f"second-order ekfac (cached, {DEEP_CHUNKS} chunks)"] = lambda: uk.unlearn(
            model, data, changes, method="second-order", curvature=fits["ekfac"], chunks=DEEP_CHUNKS, val=val)
    calls["second-order ggn-cg (old rule, guard off)"] = lambda: uk.unlearn(model, data, changes, method="second-order",
                                                                            guard=False)
    calls["second-order ggn-cg (old rule, guarded)"] = lambda: uk.unlearn(model, data, changes, method="second-order",
                                                                          val=val)
    return calls


def deep_warm_up(args, log) -> None:
    """Every code path once on 300 rows and one epoch (torch.func set-up, first calls), untimed."""
    clean, val, _ = fashion_rows(300)
    poisoned, changes, _ = targeted_flips(clean, args.seed)
    model = train(uk.models.for_data("cnn", poisoned), poisoned, config=replace(deep_config(args), epochs=1))
    uk.retrain(model, poisoned, changes)
    fits = {kind: uk.curvature.fit(model, poisoned, kind=kind) for kind in ("kfac", "ekfac")}
    for fn in deep_requests(model, poisoned, changes, fits, val).values():
        fn()
    ihvp_errors(model, poisoned, 1e-3, rows=50, rhs=1, max_iter=5, seed=args.seed)
    log("warm-up done (every code path once on 300 rows, untimed)")


def ihvp_errors(model, data: uk.Dataset, damping: float, *, rows: int, rhs: int, max_iter: int, seed: int) -> dict:
    """Relative error of each kind's ``solve`` against conjugate gradients on the exact GGN, in float64.

    Both sides use the same matrix: the kinds are fitted on a fixed sample of ``rows`` rows of ``data`` (drawn
    with ``seed``) and CG runs on the GGN of the same rows, ``(G_m + l2 I + d' I)``; ``d' = damping x m / n`` keeps the
    damping's ratio to the GGN that of the update on all ``n`` rows (the L2 term is the model's, not rescaled)."""
    from unlearnkit.influence.hessian import HessianOperator
    from unlearnkit.influence.solvers import ConjugateGradient

    import copy

    start = time.perf_counter()
    n = len(data)
    m = min(rows, n)
    sample = data.subset(np.sort(np.random.default_rng([seed, 7]).choice(n, size=m, replace=False)),
                         name=f"{data.name}-ihvp-{m}")
    d = damping * m / n
    fits = {kind: uk.curvature.fit(model, sample, kind=kind) for kind in ("kfac", "ekfac", "diagonal")}
    flat64 = FlatModel(copy.deepcopy(model).to(torch.float64))
    op = HessianOperator(flat64, sample, batch_size=512, curvature="ggn")
    cg = ConjugateGradient(damping=d, tol=1e-10, max_iter=max_iter)
    gen = torch.Generator().manual_seed(seed)
    errors = {kind: [] for kind in fits}
    reports = []
    for _ in range(rhs):
        v = torch.randn(flat64.n_params, generator=gen, dtype=torch.float64)
        x, rep = cg.solve(op, v)
        reports.append({"converged": rep.converged, "iterations": rep.to_dict().get("iterations"),
                        "residual": rep.residual})
        for kind, c in fits.items():
            errors[kind].append(float(torch.linalg.vector_norm(c.solve(v, damping=d) - x) / torch.linalg.vector_norm(x)))
    return {"rows": m, "rows_total": n, "update_damping": damping, "damping": d, "l2": float(model.l2),
            "right_hand_sides": rhs, "cg": {"tol": 1e-10, "max_iter": max_iter, "solves": reports},
            "relative_error": {kind: {"median": statistics.median(e), "max": max(e), "all": e} for kind, e in errors.items()},
            "fit_seconds": {kind: c.seconds for kind, c in fits.items()}, "seconds": time.perf_counter() - start}


def deep_ihvp(model, data, used: dict, args, log) -> list[dict]:
    """:func:`ihvp_errors` at each damping an update used (``used``: damping -> the updates that used it)."""
    log(f"  iHVP check at dampings {[f'{d:.3g}' for d in used]} (CG to 1e-10, at most {args.cg_max_iter} iterations)")
    return [{"damping_of": names, **ihvp_errors(model, data, d, rows=args.ihvp_rows, rhs=args.ihvp_rhs,
                                                  max_iter=args.cg_max_iter, seed=args.seed)}
            for d, names in used.items()]


def run_deep_case(n: int, args, log) -> dict:
    clean, val, test = fashion_rows(n)
    poisoned, changes, flipped = targeted_flips(clean, args.seed)
    config = deep_config(args)
    model = train(uk.models.for_data("cnn", poisoned), poisoned, config=config)
    acc = {"original (poisoned)": accuracy(model, test)}
    log(f"\nn = {n:,}: {len(flipped):,} rows ({len(flipped) / n:.1%}) of class {FLIP_SOURCE} flipped to {FLIP_TARGET}; "
        f"poisoned model trained in {model.train_seconds:.1f} s ({config.epochs} epochs), test accuracy "
        f"{acc['original (poisoned)']:.4f}")

    start = time.perf_counter()
    retrained = uk.retrain(model, poisoned, changes)
    retrain_seconds = time.perf_counter() - start
    acc_clean = accuracy(retrained, test)
    epoch_seconds = retrained.train_seconds / config.epochs
    acc_poisoned = acc["original (poisoned)"]
    lost = acc_clean - acc_poisoned
    log(f"  retrained on the corrected data in {retrain_seconds:.1f} s (one epoch {epoch_seconds:.2f} s): "
        f"test accuracy {acc_clean:.4f}; the flips cost {lost:+.4f}")

    fits = {}
    for kind in ("kfac", "ekfac"):
        fits[kind] = uk.curvature.fit(model, poisoned, kind=kind)
        log(f"  fit {kind}: {fits[kind].seconds:.2f} s = {fits[kind].seconds / epoch_seconds:.2f} x one epoch "
            f"({fits[kind].diagnostics['ggn_factor']})")

    calls = deep_requests(model, poisoned, changes, fits, val)
    times = {name: [] for name in calls}
    results = {}
    for rep in range(args.reps):  # interleaved; the old rule (passes over the data per request) once
        for name, fn in calls.items():
            if rep and "old rule" in name:
                continue
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            if not rep:
                log(f"  request {name}: {times[name][-1]:.2f} s")

    def share(a: float) -> float | None:
        return (a - acc_poisoned) / lost if lost != 0 else None

    rows = [{"method": "retrain", "seconds": retrain_seconds, "train_seconds": retrained.train_seconds,
             "speedup_one_shot": 1.0, "speedup_amortised": 1.0, "acc_test": acc_clean, "restored_share": 1.0 if lost else None,
             "status": None},
            {"method": "original (do nothing)", "seconds": 0.0, "speedup_one_shot": None, "speedup_amortised": None,
             "acc_test": acc_poisoned, "restored_share": 0.0 if lost else None, "status": None}]
    for name, result in results.items():
        seconds = statistics.median(times[name])
        kind = next((k for k in fits if name.startswith(f"second-order {k} ")), None)
        fit_seconds = fits[kind].seconds if kind else 0.0
        a = accuracy(result.model, test)
        guard = result.diagnostics.get("guard") or {}
        settings = result.diagnostics.get("settings", {})
        rows.append({"method": name, "seconds": seconds, "seconds_all": times[name],
                     "fit_seconds": fit_seconds if kind else None,
                     "speedup_one_shot": retrain_seconds / (fit_seconds + seconds),
                     "speedup_amortised": retrain_seconds / seconds, "acc_test": a, "restored_share": share(a),
                     "status": result.status or "unguarded", "accepted_damping": guard.get("accepted_damping"),
                     "initial_damping": guard.get("initial_damping", settings.get("damping")),
                     "damping_tries": [t["damping"] for t in guard.get("tries", [])],
                     "hvps": result.hvps, "solver": settings.get("solver"), "curvature": settings.get("curvature"),
                     **({"chunk_status": guard["chunk_status"], "curvature_drift": result.diagnostics["curvature"]["drift"]}
                        if "chunk_status" in guard else {})})
    by = {r["method"]: r for r in rows}

    # the iHVP check at the dampings the updates use: those the cached EK-FAC / K-FAC updates' guards accepted
    # (their initial damping when nothing was accepted) and the old rule's 1e-3 x lambda_max
    used: dict[float, list[str]] = {}
    for name in (f"second-order {k} (cached)" for k in ("ekfac", "kfac")):
        r = by[name]
        d = r["accepted_damping"] if r["accepted_damping"] is not None else (r["initial_damping"] or 0.0)
        used.setdefault(float(d), []).append(name)
    used.setdefault(float(by["second-order ggn-cg (old rule, guard off)"]["initial_damping"]), []).append(
        "second-order ggn-cg (old rule): 1e-3 x lambda_max")
    ihvp = deep_ihvp(model, poisoned, used, args, log) if n == args.ihvp_at else []

    best = max((by[f"second-order {k} (cached)"] for k in fits), key=lambda r: r["speedup_amortised"])
    goals = {"cached_20x_retrain_amortised": {"ours": best["method"], "value": best["speedup_amortised"],
                                              "met": best["speedup_amortised"] >= 20,
                                              "applies": "n = 60,000" if n != 60_000 else "this n"},
             **{f"fit_{k}_at_most_one_epoch": {"value": fits[k].seconds / epoch_seconds,
                                               "met": fits[k].seconds <= epoch_seconds} for k in fits}}
    case = {"n": n, "k": int(len(flipped)), "flip": {"source": FLIP_SOURCE, "target": FLIP_TARGET,
                                                  "rule": "rows of the source class drawn at random, relabelled target"},
            "epochs": config.epochs, "train_seconds_poisoned": model.train_seconds, "epoch_seconds": epoch_seconds,
            "acc_clean_retrained": acc_clean, "acc_poisoned": acc_poisoned, "accuracy_drop": lost,
            "fits": {k: {"seconds": c.seconds, "epochs": c.seconds / epoch_seconds, "n_params": c.n_params,
                         "ggn_factor": c.diagnostics["ggn_factor"], "memory_bytes": c.nbytes,
                         "layers": [{"layer": x["layer"], "treatment": x["treatment"]} for x in c.diagnostics["layers"]]}
                     for k, c in fits.items()},
            "rows": rows, "ihvp": ihvp, "goals": goals}
    print_deep_case(case, log)
    return case


def print_deep_case(case: dict, log) -> None:
    log(f"  {'method':42s} {'seconds':>9s} {'one-shot':>9s} {'amortised':>10s} {'test acc':>9s} {'restored':>9s}  status")
    for r in case["rows"]:
        def x(v):
            return f"{v:8.1f}x" if v is not None else f"{'-':>9s}"
        restored = f"{r['restored_share']:9.1%}" if r["restored_share"] is not None else f"{'-':>9s}"
        log(f"  {r['method']:42s} {r['seconds']:9.3f} {x(r['speedup_one_shot'])} {x(r['speedup_amortised']):>10s} "
            f"{r['acc_test']:9.4f} {restored}  {r['status'] or ''}"
            + (f" (damping {r['accepted_damping']:.3g})" if r.get("accepted_damping") is not None else ""))
    for h in case["ihvp"]:
        errs = "  ".join(f"{k} {v['median']:.3f} (max {v['max']:.3f})" for k, v in h["relative_error"].items())
        conv = all(s["converged"] for s in h["cg"]["solves"])
        log(f"  iHVP rel. error vs CG at damping {h['update_damping']:.3g} ({'; '.join(h['damping_of'])}; "
            f"{h['damping']:.3g} on {h['rows']:,} rows; CG {'converged' if conv else 'NOT converged'} in "
            f"{[c['iterations'] for c in h['cg']['solves']]} iterations): {errs}")
    for name, g in case["goals"].items():
        log(f"  goal {name}: {g['value']:.2f}{'x' if 'retrain' in name else ' epochs'} -> "
            f"{'met' if g['met'] else 'MISSED'}" + (f" (the goal is set at {g['applies']})" if 'applies' in g
                                                     and g['applies'] != 'this n' else ""))


def run_deep(args, log) -> dict:
    sizes = args.sizes or (DEEP_QUICK_SIZES if args.quick else DEEP_SIZES)
    args.ihvp_rows = args.ihvp_rows or (200 if args.quick else 1000)
    args.ihvp_rhs = args.ihvp_rhs or (1 if args.quick else 3)
    args.cg_max_iter = args.cg_max_iter or (200 if args.quick else 500)
    args.ihvp_at = max(sizes)  # the CG reference costs minutes: on the CNN of the largest n only
    deep_warm_up(args, log)
    cases = [run_deep_case(n, args, log) for n in sizes]
    summary = {}
    for case in cases:
        by = {r["method"]: r for r in case["rows"]}
        summary[str(case["n"])] = {m: {"speedup_amortised": by[m]["speedup_amortised"],
                                       "restored_share": by[m]["restored_share"], "status": by[m]["status"]}
                                   for m in by if m.startswith("second-order")}
    return {"problem": f"SmallCNN (zoo 'cnn') on Fashion-MNIST; {DEEP_FLIP_FRACTION:.0%} of the rows: class "
                       f"{FLIP_SOURCE} relabelled {FLIP_TARGET} (poisoning), corrected by relabelling them back",
            "recipe": deep_config(args).to_dict(), "reps_cached": args.reps, "quick": bool(args.quick),
            "ihvp_at_n": args.ihvp_at,
            "restored_share": "(acc - acc_poisoned) / (acc_clean_retrained - acc_poisoned), test set",
            "speedups": "retrain seconds / (fit + request) (one-shot) and / request (amortised)",
            "cases": cases, "summary": summary}


def run_latency(args, log) -> dict:
    """Per-request latency grid (``benchmarks/curvature_latency.py``): the ledger against its durable floor and the
    in-memory cached path against its compute floor, n = 1e4, 1e5, 1e6 (``--sizes``) and k = 1, 10, 100, 1000."""
    return curvature_latency.run_both(args.sizes or curvature_latency.SIZES, curvature_latency.KS, max(args.reps, 5),
                                      args.seed, log)


PARTS = {"convex": run_convex, "deep": run_deep, "latency": run_latency}


def machine_info() -> dict:
    import sklearn

    return {**curvature_latency.machine_info(), "sklearn": sklearn.__version__}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="convex")
    parser.add_argument("--full", action="store_true", help="convex: add n = 1e6")
    parser.add_argument("--sizes", type=int, nargs="*", help="these n instead (convex: trial runs; deep: default "
                        f"{DEEP_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"deep: n = {DEEP_QUICK_SIZES} only (about a minute)")
    parser.add_argument("--epochs", type=int, default=None, help="deep: training epochs (default: the recipe's)")
    parser.add_argument("--ihvp-rows", type=int, default=None, help="deep: rows of the iHVP accuracy check "
                        "(default 1000, 200 with --quick)")
    parser.add_argument("--ihvp-rhs", type=int, default=None, help="deep: random right-hand sides of the iHVP check "
                        "(default 3, 1 with --quick)")
    parser.add_argument("--cg-max-iter", type=int, default=None, help="deep: CG cap of the iHVP reference, tol 1e-10 "
                        "(default 500, 200 with --quick)")
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (deep: of the cached requests; the "
                        "old rule and retraining run once)")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-6, 1e-5],
                        help="refine targets of ||grad L||_2 / n (one row each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and for numpy/scipy BLAS (scikit-learn), the same for every method; "
                             "default: the libraries' own (all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    curvature_latency.limit_threads(args.threads)
    log = curvature_latency.log
    start = time.perf_counter()
    result = PARTS[args.part](args, log)
    result.update(machine=machine_info(), seconds=time.perf_counter() - start,
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.part] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=1))
    log(f"\nwrote {args.out} (part {args.part})")
    return result


if __name__ == "__main__":
    main()
