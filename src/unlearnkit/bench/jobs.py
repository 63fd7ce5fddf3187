"""The three kinds of job a benchmark runs; each is a plain function of picklable arguments.

* :func:`reference`: train the original model and the retrained reference (same seed, same
  recipe, so the same initialisation) for one (problem, seed);
* :func:`trial`: one hyperparameter setting of one method, run on every tuning seed, scored by
  DeepUnlearn's four objectives;
* :func:`cell`: one (problem, method, seed) evaluation with the chosen setting.

Jobs run in worker processes (or on Ray nodes); they rebuild the data from the configuration,
receive models as bytes, and return numbers and bytes. Exceptions a method raises on purpose
(diverged, wrong model) come back as a failed result; anything else propagates as a bug.
"""

from __future__ import annotations

import os
import platform
import socket
import time
import traceback

import numpy as np
import torch

from unlearnkit.bench.config import BenchConfig, Problem
from unlearnkit.bench.problems import (build_model, build_problem_data, measure, model_bytes, model_from_bytes,
                                       train_config)
from unlearnkit.errors import UnlearnKitError

OBJECTIVES = ("retain_gap", "forget_gap", "val_gap", "val_mia_gap")
"""DeepUnlearn's search objectives, all minimised: |acc - acc_retrained| / 3 on retain, forget and
validation, and 1 - indiscernibility of the loss attack forget vs validation."""


def environment(device) -> dict:
    import sklearn

    import unlearnkit

    dev = torch.device(device)
    try:
        import optuna

        optuna_version = optuna.__version__
    except ImportError:  # pragma: no cover - optuna is a dependency
        optuna_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "optuna": optuna_version, "unlearnkit": unlearnkit.__version__,
            "platform": platform.platform(), "host": socket.gethostname(), "pid": os.getpid(),
            "device": str(dev),
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda" and torch.cuda.is_available()
                            else platform.processor() or "cpu"),
            "threads": torch.get_num_threads()}


def _setup(config: BenchConfig) -> torch.device:
    torch.set_num_threads(config.threads_per_worker)
    return torch.device(config.device)


def reference(config: BenchConfig, problem: Problem, seed: int) -> dict:
    """Original (trained on ``train``) and retrained (on the corrected data) models of one seed."""
    from unlearnkit.training import retrain, train

    device = _setup(config)
    data = build_problem_data(config, problem)
    model = build_model(config, problem, data.train)
    original = train(model, data.train, config=train_config(config, problem, seed), device=device)
    retrained = retrain(original, data.train, data.changes, device=device)
    return {"original": model_bytes(original), "retrained": model_bytes(retrained),
            "original_seconds": original.train_seconds, "retrain_seconds": retrained.train_seconds,
            "metrics": {"original": measure(original, data, device), "retrained": measure(retrained, data, device)},
            "env": environment(device)}


def _unlearn(config: BenchConfig, problem: Problem, method: str, params: dict, original_blob: bytes, device):
    from unlearnkit.methods import make

    data = build_problem_data(config, problem)
    original = model_from_bytes(original_blob, device=device, config=config, problem=problem)
    result = make(method, **params).unlearn(original, data.train, data.changes, val=data.val, device=device)
    return data, result


def objectives(rec: dict, ref: dict) -> list[float]:
    """DeepUnlearn's four objectives for one seed (see :data:`OBJECTIVES`); an empty part (no
    unaffected rows left by an edit of every row) contributes 0."""
    gaps = [abs(rec[f"acc_{p}"] - ref[f"acc_{p}"]) / 3 for p in ("retain", "forget", "val")]
    return [g if np.isfinite(g) else 0.0 for g in gaps] + [1 - rec["indisc_val"]]


def trial(config: BenchConfig, problem: Problem, method: str, params: dict, refs: dict) -> dict:
    """Run ``method`` with ``params`` on every tuning seed; objectives averaged over the seeds.

    ``refs`` maps each tuning seed to ``(original model bytes, retrained measurements)``.
    """
    device = _setup(config)
    start = time.perf_counter()
    per_seed = []
    try:
        for seed, (original_blob, ref_metrics) in sorted(refs.items()):
            data, result = _unlearn(config, problem, method, params, original_blob, device)
            per_seed.append(objectives(measure(result.model, data, device), ref_metrics))
    except UnlearnKitError as exc:
        return {"state": "fail", "objectives": None, "seconds": time.perf_counter() - start,
                "error": f"{type(exc).__name__}: {exc}"}
    values = np.mean(np.asarray(per_seed), axis=0)
    if not np.all(np.isfinite(values)):
        return {"state": "fail", "objectives": None, "seconds": time.perf_counter() - start,
                "error": "non-finite objective values"}
    return {"state": "complete", "objectives": [float(v) for v in values], "seconds": time.perf_counter() - start,
            "error": None}


def retdev(rec: dict, ref: dict) -> float:
    """DeepUnlearn's retention deviation: sum over retain, forget, test of |acc / acc_retrained - 1|
    (parts with no rows are skipped)."""
    total = 0.0
    for p in ("retain", "forget", "test"):
        acc, acc_ref = rec[f"acc_{p}"], ref[f"acc_{p}"]
        if not (np.isfinite(acc) and np.isfinite(acc_ref)):
            continue  # an empty part (an edit of every row leaves no unaffected rows)
        total += abs(acc / acc_ref - 1) if acc_ref > 0 else abs(acc)
    return float(total)


def cell(config: BenchConfig, problem: Problem, method: str, params: dict, seed: int, ref: dict) -> dict:
    """Evaluate ``method`` with ``params`` on one evaluation seed against its retrained reference."""
    from unlearnkit.metrics.closeness import relative_distance

    device = _setup(config)
    env = environment(device)
    try:
        data, result = _unlearn(config, problem, method, params, ref["original"], device)
    except UnlearnKitError as exc:
        return {"params": params, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "env": env}
    retrained = model_from_bytes(ref["retrained"], device=device, config=config, problem=problem)
    rec = measure(result.model, data, device)
    ref_metrics = ref["metrics"]["retrained"]
    rec["retdev"] = retdev(rec, ref_metrics)
    rec["seconds"] = float(result.seconds)
    rec["rte"] = float(ref["retrain_seconds"] / result.seconds) if result.seconds > 0 else float("inf")
    rec["distance"] = float(relative_distance(result.model, retrained))
    rec["objective_norm"] = float(np.linalg.norm(objectives(rec, ref_metrics)))
    return {"params": params, "status": "ok", "metrics": rec, "seconds": float(result.seconds), "env": env}


def run_job(kind: str, args: tuple) -> dict:
    """The one entry point executors call: ``kind`` is reference, trial or cell."""
    fn = {"reference": reference, "trial": trial, "cell": cell}[kind]
    try:
        return fn(*args)
    except Exception as exc:  # a bug or an environment problem: report it with its traceback
        return {"status": "failed", "state": "fail", "crash": True,
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"}
