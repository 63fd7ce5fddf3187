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

Part ``deep`` (SmallCNN on Fashion-MNIST with K-FAC / EK-FAC) has its own function,
:func:`run_deep`, registered in :data:`PARTS`.

Every method runs with the same threads (``--threads``; torch and the BLAS under numpy / scipy).

Run: ``python benchmarks/bench_curvature.py --part convex`` (n = 1e4, 1e5; a few minutes on 2
cores); ``--full`` adds n = 1e6; ``--out`` writes elsewhere (trial runs).
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
from unlearnkit.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "curvature.json"

L2 = 1.0
FLIP_FRACTION = 0.01


# ---------------------------------------------------------------------------- convex part
def make_problem(n: int, d: int, seed: int) -> tuple[uk.Dataset, uk.Changes]:
    """Planted logistic data (learnable, not separable) and a request flipping 1 % of the labels."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d) * 2.0
    y = (X @ w + 0.5 + rng.logistic(size=n) > 0).astype(np.int64)
    data = uk.Dataset(X, y, name=f"planted-{n}x{d}")
    rows = np.sort(rng.choice(n, size=max(1, int(FLIP_FRACTION * n)), replace=False))
    changes = uk.Changes.relabel(data.ids[rows], 1 - y[rows])
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
# SmallCNN on Fashion-MNIST with cached K-FAC / EK-FAC against retraining and the CG rule: to be
# written as run_deep(args, log) -> dict and registered in PARTS as "deep".


PARTS = {"convex": run_convex}


def machine_info() -> dict:
    import sklearn
    from threadpoolctl import threadpool_info

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "blas": [{k: info.get(k) for k in ("internal_api", "num_threads")} for info in threadpool_info()],
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__, "device": "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="convex")
    parser.add_argument("--full", action="store_true", help="convex: add n = 1e6")
    parser.add_argument("--sizes", type=int, nargs="*", help="convex: these n instead (trial runs)")
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-6, 1e-5],
                        help="refine targets of ||grad L||_2 / n (one row each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and for numpy/scipy BLAS (scikit-learn), the same for every method; "
                             "default: the libraries' own (all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads is not None:
        import sklearn.linear_model  # noqa: F401  (load its OpenMP runtime before limiting the thread pools)
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    result = PARTS[args.part](args, log)
    result.update(machine=machine_info(), seconds=time.perf_counter() - start,
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.part] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=1))
    log(f"\nwrote {args.out} (part {args.part})")


if __name__ == "__main__":
    main()
