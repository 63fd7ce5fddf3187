"""``run(config, out)``: the benchmark, resumable, on local workers or Ray.

Three stages, each skipping what the store already holds:

1. **references**: the original and retrained models of every (problem, seed), evaluation and
   tuning seeds alike; trained once and shared by every method;
2. **search**: per (problem, method) an Optuna multi-objective study (DeepUnlearn's four
   objectives, :data:`~unlearnkit.bench.jobs.OBJECTIVES`) run on the *tuning* seeds only; trials
   run in parallel (ask/tell); the chosen setting is the completed trial with the smallest
   Euclidean norm of its objectives (DeepUnlearn's rule; it is always on the Pareto front);
3. **cells**: every (problem, method, evaluation seed) with the chosen setting.

Each finished job is committed to the store at once. Ctrl-C stops cleanly (running jobs are
abandoned, nothing half-written), and the same command resumes; so does a run killed outright.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from unlearnkit.bench.config import BenchConfig
from unlearnkit.atomic import atomic_write, check_folder
from unlearnkit.bench.executors import EXECUTORS, check_workers, make_executor
from unlearnkit.bench.jobs import OBJECTIVES, environment
from unlearnkit.bench.space import describe_space, search_space
from unlearnkit.bench.store import Store
from unlearnkit.devices import check_device
from unlearnkit.errors import BenchError
from unlearnkit.progress import check_progress, stage_bars

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""


@dataclass
class RunSummary:
    folder: Path
    run_id: int
    status: str
    counts: dict
    failed_cells: int
    seconds: float


def population_size(trials: int) -> int:
    """NSGA-II/III population: a quarter of the budget, between 4 and 50 (DeepUnlearn: 50 of 100)."""
    return int(min(50, max(4, trials // 4)))


def make_sampler(config: BenchConfig, study_index: int, resumed_trials: int = 0):
    """The study's sampler, seeded by (search seed, study index, trials already stored): a resumed
    study draws new settings instead of repeating the ones its first run drew."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    seed = int(np.random.SeedSequence([config.search_seed, study_index, resumed_trials]).generate_state(1)[0])
    if config.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=population_size(config.trials), seed=seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size(config.trials), seed=seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def choose(trials: list[dict]) -> dict | None:
    """The completed trial with the smallest objective norm, and the Pareto front of all completed trials."""
    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        return None
    values = np.asarray([t["objectives"] for t in done])
    best = done[int(np.argmin(np.linalg.norm(values, axis=1)))]
    front = [t["number"] for t, v in zip(done, values)
             if not np.any(np.all(values <= v, axis=1) & np.any(values < v, axis=1))]
    return {"chosen": best["params"], "objectives": dict(zip(OBJECTIVES, best["objectives"])),
            "trial": best["number"], "pareto": front}


class _Study:
    """One (problem, method) search: an in-memory Optuna study rebuilt from the stored trials; ``n_objectives``
    values per trial (DeepUnlearn's four, :data:`~unlearnkit.bench.jobs.OBJECTIVES`, unless a caller scores others)."""

    def __init__(self, config: BenchConfig, problem, method: str, stored: list[dict], index: int,
                 n_objectives: int = len(OBJECTIVES)) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.problem, self.method = problem, method
        self.fixed = dict(config.fixed.get(method, {}))
        self.space = search_space(method, config.recipe(problem.dataset).epoch_cap, self.fixed)
        self.budget = config.trials
        self.study = optuna.create_study(directions=["minimize"] * n_objectives,
                                         sampler=make_sampler(config, index, len(stored)))
        self.stored = list(stored)
        for t in stored:  # with the sampler's attributes (an NSGA trial's generation), so the search goes on
            state = optuna.trial.TrialState.COMPLETE if t["state"] == "complete" else optuna.trial.TrialState.FAIL
            params = {k: v for k, v in t["params"].items() if k in self.space}
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: self.space[k] for k in params}, system_attrs=t.get("attrs") or {},
                values=t["objectives"] if state == optuna.trial.TrialState.COMPLETE else None, state=state))
        self.next_number = max((t["number"] for t in stored), default=-1) + 1
        self.in_flight: dict[int, object] = {}

    @property
    def wanted(self) -> int:
        return self.budget - len(self.stored) - len(self.in_flight)

    @property
    def finished(self) -> bool:
        return len(self.stored) >= self.budget

    def ask(self) -> tuple[int, dict]:
        trial = self.study.ask(self.space)
        number = self.next_number
        self.next_number += 1
        self.in_flight[number] = trial
        return number, {**trial.params, **self.fixed}

    def tell(self, number: int, result: dict) -> dict:
        import optuna

        trial = self.in_flight.pop(number)
        if result.get("state") == "complete":
            self.study.tell(trial, result["objectives"])
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        attrs = self.study.get_trials(deepcopy=False)[trial.number].system_attrs
        state = "complete" if result.get("state") == "complete" else "crash" if result.get("crash") else "fail"
        record = {"number": number, "params": {**trial.params, **self.fixed}, "objectives": result.get("objectives"),
                  "state": state, "seconds": result.get("seconds"), "error": result.get("error"),
                  "attrs": {k: v for k, v in attrs.items() if isinstance(v, (int, float, str, bool))}}
        self.stored.append(record)
        return record


def run(config: BenchConfig, out: str | Path, *, executor: str = "local", workers: int | None = None,
        address: str | None = None, retry_failed: bool = False, progress: Progress | bool | str | None = "auto",
        log: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None) -> RunSummary:
    """Run (or resume) the benchmark ``config`` with its results in folder ``out``.

    Progress: each finished job's line (``log(message)`` when given) and each stage's count
    ("search: 12 / 64") are logged at ``INFO`` through this module's logger
    (``logging.basicConfig(level=logging.INFO)`` shows them), and the run's wall and CPU time at
    the end. ``progress="auto"`` also draws transient progress bars on standard error when it is
    a terminal (``True``: always, ``False`` or None: never); a callable
    ``progress(stage, done, total)`` receives the counts instead of the bars.

    ``should_stop`` is asked between results (about twice a second); when it returns True the run
    stops as on Ctrl-C (``KeyboardInterrupt``, the run recorded as interrupted). The command line
    sets it from its SIGINT/SIGTERM handler, so a stop request is honoured even when the
    interrupt itself landed where Python could not raise it.

    Before anything is computed or created, :func:`check_run_options` refuses an unknown
    executor, ``workers`` outside [1, :func:`~unlearnkit.bench.executors.max_workers`] and an
    ``out`` that cannot be a folder. A cell whose method fails is stored as failed with its
    error and counted in ``RunSummary.failed_cells``; the run goes on.
    """
    check_progress(progress, error=BenchError)
    start = time.perf_counter()
    check_run_options(out, executor=executor, workers=workers)
    if executor == "local":
        check_device(config.device, what="run.device", error=BenchError)
    with stage_bars(False if callable(progress) else progress, logger.name) as bars:
        def on_progress(stage: str, done: int, total: int) -> None:
            logger.info("%s: %d / %d", stage, done, total)
            bars(stage, done, total)
            if callable(progress):
                progress(stage, done, total)

        def on_log(message: str) -> None:
            logger.info("%s", message)
            if log is not None:
                log(message)

        return _run(config, out, executor, workers, address, retry_failed, on_progress, on_log, should_stop, start)


def _run(config, out, executor, workers, address, retry_failed, progress, log, should_stop, start) -> RunSummary:
    cpu_start = _cpu_seconds()
    store = Store(out, create=True)
    try:
        store.lock()
        store.bind_config(config.to_dict(), config.fingerprint())
        text = json.dumps(config.to_dict(), indent=1)
        atomic_write(Path(out) / "config.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        if retry_failed:
            for problem, method in store.forget_crashes():
                log(f"{problem} {method}: trials crashed before; searching it again")
        pool = make_executor(executor, workers, address, config.device)
        if should_stop is not None:
            pool = _Stoppable(pool, should_stop)
        run_id = store.start_run(pool.name, {**environment(config.device), "workers": pool.workers,
                                                  "threads_per_worker": config.threads_per_worker})
        log(f"run {run_id} in {out}: {pool.name} executor, {pool.workers} worker(s)")
        try:
            _references(config, store, pool, run_id, progress, log)
            _search(config, store, pool, run_id, progress, log)
            _cells(config, store, pool, run_id, retry_failed, progress, log)
        except BaseException as exc:
            pool.shutdown(cancel=True)
            try:
                store.finish_run(run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            except sqlite3.Error:
                pass  # the original error matters more
            raise
        pool.shutdown()
        failed = sum(1 for c in store.cells() if c["status"] != "ok")
        store.finish_run(run_id, "done")
        seconds = time.perf_counter() - start
        log(f"run {run_id} done in {seconds:.1f} s wall, {_cpu_seconds() - cpu_start:.1f} s CPU "
            f"(this process and its finished local workers)")
        return RunSummary(Path(out), run_id, "done", store.counts(), failed, seconds)
    except sqlite3.Error as exc:
        raise BenchError(f"The results store {store.path} could not be written ({exc}); finished jobs are kept. "
                         "Check the disk, then rerun to resume.") from None
    finally:
        store.close()


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have exited."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def check_run_options(out: str | Path, *, executor: str = "local", workers: int | None = None) -> None:
    """Refuse, before anything is computed or created, an unknown executor, a worker count outside
    [1, :func:`~unlearnkit.bench.executors.max_workers`] and an ``out`` that cannot be a folder."""
    if executor not in EXECUTORS:
        raise BenchError(f"Unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}.")
    check_workers(workers)
    check_folder(out, option="--out")


class _Stoppable:
    """An executor whose ``wait`` raises ``KeyboardInterrupt`` once ``should_stop()`` says so."""

    def __init__(self, pool, should_stop: Callable[[], bool]) -> None:
        self._pool, self._should_stop = pool, should_stop

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def wait(self, handles, timeout: float = 0.5):
        if self._should_stop():
            raise KeyboardInterrupt
        return self._pool.wait(handles, timeout)


def _drain(pool, handles: dict, on_result, limit: int, submit_more) -> None:
    """Keep at most ``limit`` jobs in flight until ``submit_more()`` has nothing more and all are back.

    ``submit_more()`` returns the next ``(handle, tag)``, or None when nothing can be submitted
    *now* (a study may wait for its in-flight trials); it is asked again after every result.
    """
    while True:
        while len(handles) < limit:
            nxt = submit_more()
            if nxt is None:
                break
            handles[nxt[0]] = nxt[1]
        if not handles:
            return
        for handle, result in pool.wait(handles.keys()):
            tag = handles.pop(handle)
            on_result(tag, result)


def _references(config, store, pool, run_id, progress, log) -> None:
    have = store.ref_keys()
    todo = [(p, s) for p in config.problems for s in config.all_seeds if (p.key, s) not in have]
    total, done = len(config.problems) * len(config.all_seeds), len(config.problems) * len(config.all_seeds) - len(todo)
    progress("references", done, total)
    queue = iter(todo)

    def submit_more():
        item = next(queue, None)
        return None if item is None else (pool.submit("reference", (config, item[0], item[1])), item)

    def on_result(item, result):
        nonlocal done
        problem, seed = item
        if "crash" in result:
            raise BenchError(f"Training the references of {problem.key}, seed {seed} failed:\n{result['error']}")
        store.put_ref(problem.key, seed, result, run_id)
        done += 1
        m = result["metrics"]
        log(f"{problem.key} seed {seed}: original test acc {m['original']['acc_test']:.3f} "
            f"({result['original_seconds']:.1f}s), retrained {m['retrained']['acc_test']:.3f} ({result['retrain_seconds']:.1f}s)")
        progress("references", done, total)

    _drain(pool, {}, on_result, 2 * pool.workers, submit_more)


def _tuning_refs(config, store, problem) -> dict:
    return {s: (ref["original"], ref["metrics"]["retrained"])
            for s in config.tuning_seeds for ref in [store.get_ref(problem.key, s)]}


def _search(config, store, pool, run_id, progress, log) -> None:
    studies, index = [], 0
    for problem in config.problems:
        for method in config.methods:
            index += 1
            if store.study(problem.key, method) is not None:
                continue
            fixed = dict(config.fixed.get(method, {}))
            space = search_space(method, config.recipe(problem.dataset).epoch_cap, fixed)
            if config.trials == 0 or not space:
                store.put_study(problem.key, method, {"chosen": fixed, "n_trials": 0, "space": {},
                                                      "sampler": "none (nothing to search)" if config.trials else "none (trials = 0)"},
                                run_id)
                continue
            studies.append(_Study(config, problem, method, store.trials(problem.key, method), index))
    total = sum(s.budget for s in studies)
    done = sum(len(s.stored) for s in studies)
    progress("search", done, total)
    refs_cache: dict = {}

    def finish(study):
        picked = choose(study.stored)
        if picked is None:
            log(f"{study.problem.key} {study.method}: every trial failed; evaluating its default hyperparameters")
            errors = {t["error"] for t in study.stored if t["error"]}
            picked = {"chosen": study.fixed, "objectives": None, "pareto": [], "trial": None,
                      "errors": sorted(errors)[:3]}
        store.put_study(study.problem.key, study.method,
                        {**picked, "n_trials": len(study.stored), "space": describe_space(study.space),
                         "sampler": f"{config.sampler} (population {population_size(config.trials)})"
                         if config.sampler.startswith("nsga") else config.sampler}, run_id)
        log(f"{study.problem.key} {study.method}: chose {picked['chosen']} from {len(study.stored)} trials")

    for study in studies:
        if study.finished:
            finish(study)
    open_studies = [s for s in studies if not s.finished]

    def submit_more():
        for study in open_studies:
            if study.wanted > 0 and len(study.in_flight) < max(1, pool.workers):
                key = study.problem.key
                if key not in refs_cache:
                    refs_cache[key] = _tuning_refs(config, store, study.problem)
                number, params = study.ask()
                return pool.submit("trial", (config, study.problem, study.method, params, refs_cache[key])), (study, number)
        return None

    def on_result(tag, result):
        nonlocal done
        study, number = tag
        record = study.tell(number, result)
        store.put_trial(study.problem.key, study.method, number, record["params"], record["objectives"],
                        record["state"], record["seconds"] or 0.0, record["error"], run_id, record["attrs"])
        done += 1
        progress("search", done, total)
        if study.finished:
            finish(study)

    _drain(pool, {}, on_result, 2 * pool.workers, submit_more)


def _cells(config, store, pool, run_id, retry_failed, progress, log) -> None:
    have = store.cell_keys(include_failed=not retry_failed)
    grid = [(p, m, s) for p in config.problems for m in config.methods for s in config.eval_seeds]
    todo = [c for c in grid if (c[0].key, c[1], c[2]) not in have]
    done = len(grid) - len(todo)
    progress("cells", done, len(grid))
    queue = iter(todo)

    def submit_more():
        item = next(queue, None)
        if item is None:
            return None
        problem, method, seed = item
        study = store.study(problem.key, method)
        if study is None:
            raise BenchError(f"No chosen setting for {problem.key} {method}; the search stage did not finish.")
        ref = store.get_ref(problem.key, seed)
        return pool.submit("cell", (config, problem, method, study["chosen"], seed, ref)), (*item, study["chosen"])

    def on_result(item, result):
        nonlocal done
        problem, method, seed, params = item
        if "crash" in result:
            result = {"params": params, "status": "failed", "error": result["error"]}
        store.put_cell(problem.key, method, seed, result, run_id)
        done += 1
        if result["status"] == "ok":
            m = result["metrics"]
            log(f"{problem.key} {method} seed {seed}: RetDev {m['retdev']:.3f} indisc {m['indisc_test']:.3f} "
                f"RTE {m['rte']:.1f}")
        else:
            log(f"{problem.key} {method} seed {seed}: FAILED {first_line(result.get('error'), 160)}")
        progress("cells", done, len(grid))

    _drain(pool, {}, on_result, 2 * pool.workers, submit_more)


def status(out: str | Path) -> dict:
    """What a run folder holds: configuration name, counts done against the grid, runs, failures."""
    with Store(out) as store:
        cfg = store.config()
        problems = len(cfg["datasets"]) * len(cfg["models"]) * len(cfg["protocols"])
        seeds = sorted(set(cfg["eval_seeds"]) | (set(cfg["tuning_seeds"]) if cfg["trials"] else set()))
        searched = store.studies()
        cells = store.cells()
        return {
            "name": cfg["name"], "folder": str(out),
            "references": (store.counts()["refs"], problems * len(seeds)),
            "studies": (len(searched), problems * len(cfg["methods"])),
            "trials": store.counts()["trials"], "trials_per_study": cfg["trials"],
            "cells": (len(cells), problems * len(cfg["methods"]) * len(cfg["eval_seeds"])),
            "failed_cells": [(c["problem"], c["method"], c["seed"], first_line(c["error"], 120))
                             for c in cells if c["status"] != "ok"],
            "runs": [{**r, "status": _live_status(r)} for r in store.runs()],
            "complete": len(cells) == problems * len(cfg["methods"]) * len(cfg["eval_seeds"]),
        }


def first_line(error: str | None, limit: int = 200) -> str:
    """The first non-empty line of a failed job's error (its exception and message), shortened."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return "(no error message was recorded)"
    return lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."


def _live_status(run: dict) -> str:
    """A run marked running whose driver is gone from this machine was killed (kill -9, power loss)."""
    if run["status"] != "running":
        return run["status"]
    env = run.get("env", {})
    if env.get("host") == socket.gethostname() and env.get("pid"):
        try:
            os.kill(int(env["pid"]), 0)
        except ProcessLookupError:
            return "killed (its process is gone; rerun to resume)"
        except PermissionError:
            pass
    return "running"
