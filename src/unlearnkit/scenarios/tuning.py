"""Tuned DeepUnlearn baselines for the scenarios: the bench's search, run on tuning seeds only.

Every scenario table carries the strongest deep-unlearning methods a user could reach for (by
default FT, NG+, SCRUB, SalUn, l1-sparse, SSD and MSG; Cadet et al., "Deep Unlearn", 2024), each
with hyperparameters found the way DeepUnlearn finds them, by :mod:`unlearnkit.bench`'s search:

1. the scenario's problems are built on each **tuning seed** (poisoning, initialisation and training
   seeded by it; the train / validation / test split is the same for every seed, so no tuning problem
   trains or validates on an evaluation seed's test rows; tuning seeds are disjoint from the evaluation
   seeds, so no setting is chosen on a problem it is then scored on), and each problem's retrained
   model is computed once (no SISA ensembles: the search does not use them);
2. per (problem, method) an Optuna multi-objective study searches the method's registered search
   space (:func:`unlearnkit.bench.space.search_space`, epochs capped at ``ceil(20 %)`` of the
   model's training epochs; a model trained by Newton or L-BFGS has no epochs, and takes the
   bench's default recipe's cap), with the bench's sampler
   (:func:`unlearnkit.bench.runner.make_sampler`: NSGA-III, seeded); each trial runs the method on
   every tuning seed's problem and averages the objectives over the seeds;
3. the chosen setting is the completed trial with the smallest Euclidean norm of its objectives
   (:func:`unlearnkit.bench.runner.choose`, DeepUnlearn's rule). A method whose registered
   hyperparameters have no search range runs with its registered defaults, as in the bench; a method
   none of whose trials completed is not run, and its row says why. A method with a ``seed``
   hyperparameter runs with the problem's seed (trials and evaluation alike); the seed is not searched.

The store holds one writer at a time: run scenarios that tune at once with a store each (the default,
``<out>/tuning.sqlite``, is one per output folder).

**Objectives** (all minimised; DeepUnlearn's four, adapted to a correction instead of a removal),
each a gap to the retrained model of the same tuning problem:

* ``retain_gap`` = ``|acc - acc_retrained| / 3`` on a fixed sample of at most
  :data:`RETAIN_SAMPLE` unaffected training rows;
* ``corrected_gap``: the same on the corrected rows ``Z~`` (their new features and labels);
* ``val_gap``: the same on the problem's held-out validation rows (where it has them);
* ``<measure>_gap``: the scenario's own measure of the change, normalised to [0, 1] by the scenario
  module's ``tuning_measure(problem, size, device)`` (backdoor: attack success on triggered
  validation images; canary: exposure / its largest possible value, ``log2 10^digits`` bits). The
  label-poisoning and sensitive-feature scenarios have no such bounded measure: their search uses
  the first three (the first two where a problem has no validation rows).

The test set is never used: every objective is measured on training or validation rows.

Every trial (problem, method, number, parameters, objectives, the seeds it ran on, seconds, state)
and every chosen setting (with its tuning seeds) is written to a SQLite store (:class:`TuningStore`),
one transaction per row, so a run killed at any point leaves whole rows and the same call resumes:
settings already chosen for the same scenario, size, seeds, budget and search spaces are reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from unlearnkit import methods, timing
from unlearnkit.bench.config import BenchConfig, Recipe
from unlearnkit.bench.runner import _Study, choose, population_size
from unlearnkit.bench.space import describe_space, search_space
from unlearnkit.bench.store import Store
from unlearnkit.errors import OutputError, UnlearnKitError
from unlearnkit.scenarios.compare import Problem, Strategy, build_problems
from unlearnkit.training import predict

log = logging.getLogger(__name__)

BASELINES = ("ft", "ng+", "scrub", "salun", "l1-sparse", "ssd", "msg")
"""The deep-unlearning methods every scenario table gains, tuned (DeepUnlearn's strongest for the job)."""
TUNING_SEEDS = {"tiny": (1000,), "full": (1000,)}
"""Default tuning seeds per size: one problem per tuning seed is trained (a full-size problem takes minutes)."""
TRIALS = {"tiny": 2, "full": 8}
"""Default trials per (problem, method): tiny enough for tests; the bench's default budget at full size."""
SAMPLER = "nsga3"
SEARCH_SEED = 0
RETAIN_SAMPLE = 2000
"""Most unaffected training rows whose accuracy the retain objective compares (a fixed, seeded sample)."""
LABEL = "{method} [tuned]"
SCHEMA_VERSION = 1
DB_NAME = "tuning.sqlite"

Measure = Callable[[object], float]


# ------------------------------------------------------------------------------------------- store
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
    scenario TEXT NOT NULL, size TEXT NOT NULL, fingerprint TEXT NOT NULL, tuning_seeds TEXT NOT NULL,
    eval_seeds TEXT NOT NULL, methods TEXT NOT NULL, trials INTEGER NOT NULL, config TEXT);
CREATE TABLE IF NOT EXISTS plans (fingerprint TEXT PRIMARY KEY, problems TEXT NOT NULL, run_id INTEGER, finished REAL);
CREATE TABLE IF NOT EXISTS refs (
    fingerprint TEXT NOT NULL, problem TEXT NOT NULL, seed INTEGER NOT NULL, measures TEXT NOT NULL,
    retrain_seconds REAL NOT NULL, run_id INTEGER, finished REAL, PRIMARY KEY (fingerprint, problem, seed));
CREATE TABLE IF NOT EXISTS trials (
    fingerprint TEXT NOT NULL, problem TEXT NOT NULL, method TEXT NOT NULL, number INTEGER NOT NULL,
    params TEXT NOT NULL, objectives TEXT, objective_names TEXT NOT NULL, seeds TEXT NOT NULL, state TEXT NOT NULL,
    seconds REAL, error TEXT, attrs TEXT, run_id INTEGER, finished REAL,
    PRIMARY KEY (fingerprint, problem, method, number));
CREATE TABLE IF NOT EXISTS studies (
    fingerprint TEXT NOT NULL, problem TEXT NOT NULL, method TEXT NOT NULL, status TEXT NOT NULL,
    chosen TEXT NOT NULL, objectives TEXT, trial INTEGER, n_trials INTEGER NOT NULL, pareto TEXT, space TEXT,
    sampler TEXT, seeds TEXT NOT NULL, seconds REAL NOT NULL, error TEXT, run_id INTEGER, finished REAL,
    PRIMARY KEY (fingerprint, problem, method));
"""


class TuningStore:
    """The SQLite store of the scenarios' tuning (see the module docstring): WAL journal, full sync,
    schema versioned, one transaction per row. Tables: ``runs`` (each call: scenario, size, tuning and
    evaluation seeds, methods, budget), ``plans`` (the problem names of a configuration), ``refs`` (the
    retrained models' measures per tuning problem), ``trials`` and ``studies``; rows are keyed by the
    configuration's fingerprint, so one file holds several configurations side by side."""

    transaction = Store.transaction
    close = Store.close
    __enter__ = Store.__enter__
    __exit__ = Store.__exit__

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if names and not {"meta", "studies", "plans"} <= names:
                self.conn.close()
                raise OutputError(f"{self.path} is an SQLite file but not a scenario tuning store (tables: "
                                  f"{', '.join(sorted(names))}); give another store path.")
            self.conn.executescript(_SCHEMA)
            version = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                self.conn.close()
                raise OutputError(f"{self.path} has tuning store schema {version[0]}; this unlearnkit reads "
                                  f"schema {SCHEMA_VERSION}. Give another store path.")
        except (sqlite3.Error, OSError) as exc:
            raise OutputError(f"{self.path} cannot be used as the tuning store ({exc}); give a writable path to a "
                              "new or existing tuning store.") from None

    def start_run(self, scenario: str, size: str, fingerprint: str, tuning_seeds, eval_seeds, methods_, trials: int,
                  config: dict) -> int:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='killed' WHERE status='running'")
            cur = c.execute("INSERT INTO runs (started, status, scenario, size, fingerprint, tuning_seeds, eval_seeds, "
                            "methods, trials, config) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                            (time.time(), scenario, size, fingerprint, json.dumps(list(tuning_seeds)),
                             json.dumps(list(eval_seeds)), json.dumps(list(methods_)), trials, json.dumps(config)))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=?, status=? WHERE id=?", (time.time(), status, run_id))

    def plan(self, fingerprint: str) -> list[str] | None:
        row = self.conn.execute("SELECT problems FROM plans WHERE fingerprint=?", (fingerprint,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_plan(self, fingerprint: str, problems: list[str], run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO plans VALUES (?,?,?,?)", (fingerprint, json.dumps(problems), run_id, time.time()))

    def ref(self, fingerprint: str, problem: str, seed: int) -> tuple[dict, float] | None:
        row = self.conn.execute("SELECT measures, retrain_seconds FROM refs WHERE fingerprint=? AND problem=? AND seed=?",
                                (fingerprint, problem, seed)).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def put_ref(self, fingerprint: str, problem: str, seed: int, measures: dict, seconds: float, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO refs VALUES (?,?,?,?,?,?,?)",
                      (fingerprint, problem, seed, json.dumps(measures), seconds, run_id, time.time()))

    def trials(self, fingerprint: str, problem: str, method: str) -> list[dict]:
        cols = ("number", "params", "objectives", "objective_names", "seeds", "state", "seconds", "error", "attrs")
        out = []
        for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM trials WHERE fingerprint=? AND problem=? AND method=? "
                                   "ORDER BY number", (fingerprint, problem, method)):
            d = dict(zip(cols, r))
            for key in ("params", "objectives", "objective_names", "seeds", "attrs"):
                d[key] = json.loads(d[key]) if d[key] else ({} if key in ("params", "attrs") else None)
            out.append(d)
        return out

    def put_trial(self, fingerprint: str, problem: str, method: str, record: dict, names, seeds, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (fingerprint, problem, method, record["number"], json.dumps(record["params"]),
                       json.dumps(record["objectives"]) if record["objectives"] else None, json.dumps(list(names)),
                       json.dumps(list(seeds)), record["state"], record["seconds"] or 0.0, record["error"],
                       json.dumps(record.get("attrs") or {}), run_id, time.time()))

    def study(self, fingerprint: str, problem: str, method: str) -> dict | None:
        cols = ("status", "chosen", "objectives", "trial", "n_trials", "pareto", "space", "sampler", "seeds", "seconds", "error")
        row = self.conn.execute(f"SELECT {', '.join(cols)} FROM studies WHERE fingerprint=? AND problem=? AND method=?",
                                (fingerprint, problem, method)).fetchone()
        if row is None:
            return None
        d = dict(zip(cols, row))
        for key in ("chosen", "objectives", "pareto", "space", "seeds"):
            d[key] = json.loads(d[key]) if d[key] else None
        return d

    def costs(self, fingerprint: str, problems) -> dict:
        """What the search of configuration ``fingerprint`` on ``problems`` cost when it ran, as stored with it:
        ``{"methods": {method: seconds of its studies' trials}, "references": seconds retraining the references}``."""
        problems = list(problems)
        marks = ", ".join("?" * len(problems))
        methods_: dict[str, float] = {}
        for method, seconds in self.conn.execute(f"SELECT method, seconds FROM studies WHERE fingerprint=? AND problem "
                                                 f"IN ({marks}) ORDER BY rowid", (fingerprint, *problems)):
            methods_[method] = methods_.get(method, 0.0) + float(seconds or 0.0)
        (refs,) = self.conn.execute(f"SELECT COALESCE(SUM(retrain_seconds), 0) FROM refs WHERE fingerprint=? AND "
                                    f"problem IN ({marks})", (fingerprint, *problems)).fetchone()
        return {"methods": methods_, "references": float(refs)}

    def put_study(self, fingerprint: str, problem: str, method: str, s: dict, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO studies VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (fingerprint, problem, method, s["status"], json.dumps(s["chosen"]), json.dumps(s.get("objectives")),
                       s.get("trial"), s["n_trials"], json.dumps(s.get("pareto", [])), json.dumps(s.get("space", {})),
                       s.get("sampler"), json.dumps(list(s["seeds"])), s["seconds"], s.get("error"), run_id, time.time()))


# ------------------------------------------------------------------------------------------ result
@dataclass
class Chosen:
    """The setting a study chose for one (problem, method), with how it was found."""

    problem: str
    method: str
    status: str
    """``tuned``, ``defaults`` (nothing to search) or ``failed`` (no trial completed)."""
    params: dict
    seeds: list[int]
    n_trials: int
    seconds: float
    objectives: dict | None = None
    trial: int | None = None
    error: str | None = None

    def strategy(self, objective_text: str) -> Strategy:
        label = LABEL.format(method=self.method)
        seeds = ", ".join(map(str, self.seeds))
        if self.status == "tuned":
            norm = math.sqrt(sum(v * v for v in self.objectives.values()))
            rule = (f"tuned: {self.n_trials} trials on seeds [{seeds}], objective {objective_text}; chose trial "
                    f"{self.trial} (norm {norm:.4f})")
            return Strategy(label, self.method, dict(self.params), rule)
        if self.status == "defaults":
            return Strategy(label, self.method, dict(self.params),
                            f"not searched: {self.method} has no registered search range; its registered defaults")
        return Strategy(label, self.method, dict(self.params), f"tuning on seeds [{seeds}] failed",
                        skip=f"none of its {self.n_trials} tuning trials on seeds [{seeds}] completed ({self.error})")


@dataclass
class Tuning:
    """What :func:`tune` found, and what it cost (see the module docstring)."""

    scenario: str
    size: str
    methods: tuple[str, ...]
    trials: int
    tuning_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    chosen: dict = field(default_factory=dict)
    """``(problem, method) -> Chosen``."""
    objectives: dict = field(default_factory=dict)
    """``problem -> objective names``."""
    seconds: dict = field(default_factory=dict)
    store: str | None = None
    fingerprint: str = ""
    trials_run: int = 0

    def objective_text(self, problem: str) -> str:
        return f"min ||({', '.join(self.objectives.get(problem, ()))})|| (DeepUnlearn's rule)"

    def strategies(self, problem: str, seed: int = 0) -> list[Strategy]:
        """The tuned rows of ``problem`` on evaluation seed ``seed``: one :class:`Strategy` per method, labelled
        ``<method> [tuned]`` (a method with a ``seed`` hyperparameter gets ``seed``)."""
        out = []
        for method in self.methods:
            c = self.chosen.get((problem, method))
            if c is None:
                out.append(Strategy(LABEL.format(method=method), method, {}, "no tuning problem of this name",
                                    skip=f"no tuning problem named {problem!r} on seeds {list(self.tuning_seeds)}"))
            else:
                strategy = c.strategy(self.objective_text(problem))
                strategy.hyperparameters = with_seed(method, strategy.hyperparameters, seed)
                out.append(strategy)
        return out

    def to_dict(self) -> dict:
        return {"methods": list(self.methods), "trials_per_method": self.trials, "tuning_seeds": list(self.tuning_seeds),
                "evaluation_seeds": list(self.eval_seeds), "trials_run": self.trials_run,
                "sampler": f"{SAMPLER} (population {population_size(self.trials)}), seed {SEARCH_SEED}",
                "rule": "the completed trial with the smallest Euclidean norm of its objectives (DeepUnlearn's rule)",
                "objectives": self.objectives, "seconds": self.seconds, "store": self.store,
                "fingerprint": self.fingerprint, "chosen": [asdict(c) for c in self.chosen.values()]}


def budget_lines(tuning: dict) -> list[str]:
    """Markdown lines stating the tuning budget and every chosen setting (from :meth:`Tuning.to_dict`)."""
    sec = tuning.get("seconds", {})
    per_method = sec.get("methods", {})
    lines = ["## Tuned baselines: budget and chosen settings", "",
             f"Methods {', '.join(tuning['methods'])}, each searched with {tuning['trials_per_method']} trials per problem "
             f"({tuning['sampler']}) on tuning seeds {', '.join(map(str, tuning['tuning_seeds']))}, disjoint from the "
             f"evaluation seeds {', '.join(map(str, tuning['evaluation_seeds']))}; chosen: {tuning['rule']}. The "
             "objectives are gaps to the retrained model of each tuning problem, never measured on the test set. "
             + (f"The search cost (read from the tuning store: what it took when it ran): retraining the tuning "
                f"references {sec.get('references', 0):.1f} s, trials " + ", ".join(f"{m} {s:.1f} s" for m, s in per_method.items())
                + f". The merged runs spent {sec.get('total', 0):.1f} s wall ({sec.get('cpu', 0):.1f} s CPU) on tuning "
                f"between them, building the tuning problems {sec.get('problems', 0):.1f} s of it (a run that read the "
                "search back built none)." if sec.get("from_store") else
                f"Tuning took {sec.get('total', 0):.1f} s wall ({sec.get('cpu', 0):.1f} s CPU): building the tuning problems "
                f"{sec.get('problems', 0):.1f} s, retraining their references {sec.get('references', 0):.1f} s, trials "
                + ", ".join(f"{m} {s:.1f} s" for m, s in per_method.items()) + "."), ""]
    if not sec.get("from_store") and tuning.get("trials_run", 0) == 0 and tuning.get("chosen"):
        lines += ["The search ran in an earlier run of the same configuration: every setting was read from the tuning "
                  "store, and the seconds of its trials and of its references' retraining are those they took then "
                  "(stored with them); the wall, CPU and problem-building seconds are this run's.", ""]
    lines += ["| problem | method | status | trials | chosen setting | objectives |", "|---|---|---|---|---|---|"]
    for c in tuning.get("chosen", []):
        objectives = ", ".join(f"{k} {v:.4f}" for k, v in (c.get("objectives") or {}).items()) or "–"
        what = c["status"] if c["status"] != "failed" else f"failed: {str(c.get('error'))[:120]}"
        params = json.dumps(c["params"], sort_keys=True, default=str).replace("|", "/")
        lines.append(f"| {c['problem']} | {c['method']} | {what} | {c['n_trials']} | `{params}` | {objectives} |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------- problems
@dataclass
class _Target:
    """One tuning problem with what its objectives compare: the parts, the measure, the retrained model's values."""

    problem: Problem
    parts: dict
    measure: tuple[str, Measure] | None
    reference: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f"{p}_gap" for p in self.parts] + ([f"{self.measure[0]}_gap"] if self.measure else [])

    def values(self, model, device) -> dict:
        out = {p: float(np.mean(predict(model, d, device=device) == d.y)) for p, d in self.parts.items()}
        if self.measure is not None:
            out[self.measure[0]] = float(self.measure[1](model))
        return out

    def objectives(self, model, device) -> list[float]:
        got = self.values(model, device)
        gaps = [abs(got[p] - self.reference[p]) / 3 for p in self.parts]
        if self.measure is not None:
            gaps.append(abs(got[self.measure[0]] - self.reference[self.measure[0]]))
        return gaps


def _target(problem: Problem, measure) -> _Target:
    resolved = problem.changes.resolve(problem.train)
    keep = np.flatnonzero(~np.isin(problem.train.ids, resolved.affected_ids))
    if keep.size > RETAIN_SAMPLE:
        keep = np.sort(np.random.default_rng([problem.seed, 2]).choice(keep, size=RETAIN_SAMPLE, replace=False))
    parts = {"retain": problem.train.subset(keep), "corrected": resolved.Z_tilde}
    if problem.val is not None and len(problem.val):
        parts["val"] = problem.val
    parts = {k: v for k, v in parts.items() if len(v)}
    return _Target(problem, parts, measure)


def recipe(model) -> Recipe:
    """The model's training recipe as the bench states it: its epochs set DeepUnlearn's cap on searched epochs,
    ``ceil(20 %)`` of them. A model trained without epochs (Newton, L-BFGS) takes the bench's default recipe."""
    config = getattr(model, "train_config", None)
    optimizer = getattr(getattr(config, "optimizer", None), "value", None)
    if config is not None and optimizer in ("adam", "sgd"):
        return Recipe(epochs=int(config.epochs))
    return Recipe()


PROBLEMS_VERSION = 2
"""Raised whenever the way tuning problems or objectives are built changes (splits, measures), so that a store
never serves settings chosen on problems built another way (2: the split fixed across seeds)."""


def with_seed(method: str, params: dict, seed: int) -> dict:
    """``params`` plus ``seed=seed`` when ``method`` has a ``seed`` hyperparameter (never searched)."""
    names = {h.name for h in methods.info(method).hyperparameters}
    return {**params, "seed": int(seed)} if "seed" in names and "seed" not in params else dict(params)


def fingerprint(scenario: str, size: str, preset, tuning_seeds, trials: int, baselines) -> str:
    """Hash of what changes the tuning's results: scenario, size and its preset, seeds, budget, sampler,
    objectives and the methods with their registered hyperparameters (their ranges make the search spaces)."""
    spaces = {m: [(h.name, h.range, repr(h.default)) for h in methods.info(m).hyperparameters] for m in sorted(baselines)}
    d = {"scenario": scenario, "size": size, "preset": asdict(preset) if is_dataclass(preset) else repr(preset),
         "tuning_seeds": sorted(tuning_seeds), "trials": trials, "sampler": SAMPLER, "search_seed": SEARCH_SEED,
         "retain_sample": RETAIN_SAMPLE, "schema": SCHEMA_VERSION, "problems": PROBLEMS_VERSION, "spaces": spaces}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_seeds(tuning_seeds, eval_seeds, error=ValueError) -> tuple[int, ...]:
    """Tuning seeds as distinct integers in [0, 2**63), none of them an evaluation seed; else ``error``."""
    try:
        seeds = tuple(int(s) for s in tuning_seeds)
    except (TypeError, ValueError, OverflowError):
        raise error(f"tuning seeds must be integers, got {tuning_seeds!r}.") from None
    if not seeds or any(not 0 <= s < 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        raise error(f"tuning seeds must be distinct integers in [0, 2**63), got {', '.join(map(str, seeds))[:200] or 'none'}.")
    shared = sorted(set(seeds) & {int(s) for s in eval_seeds})
    if shared:
        raise error(f"tuning seed(s) {', '.join(map(str, shared))} are also evaluation seeds: a setting tuned on a "
                    "problem must not be scored on it. Give tuning seeds disjoint from the evaluation seeds "
                    f"(default {TUNING_SEEDS['tiny'][0]}).")
    return seeds


def check_options(size: str, eval_seeds, baselines, trials, tuning_seeds, error=ValueError):
    """``(baselines, trials, tuning_seeds)`` checked, the size's defaults filled in for None; ``error`` on bad ones:
    unknown or repeated method names, trials outside [1, :data:`~unlearnkit.bench.config.MAX_TRIALS`], tuning seeds
    that are not distinct non-negative integers or that are evaluation seeds. ``baselines=()`` needs no seeds."""
    from unlearnkit.bench.config import MAX_TRIALS

    try:
        listed = () if baselines is None else tuple(baselines)
    except TypeError:
        listed = None
    if isinstance(baselines, str) or listed is None or not all(isinstance(m, str) for m in listed):
        raise error(f"baselines must be a sequence of method names (() for none), got {baselines!r}.")
    unknown = [m for m in listed if m not in methods.names() or m in ("retrain", "sisa")]
    if unknown or len(set(listed)) != len(listed):
        raise error(f"baselines must be distinct registered methods other than retrain and sisa; "
                    f"{'unknown: ' + ', '.join(unknown) if unknown else 'repeated names'} (e.g. {', '.join(BASELINES)}; "
                    "`unlearnkit methods` lists them).")
    trials = TRIALS.get(size, TRIALS["tiny"]) if trials is None else trials
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise error(f"trials must be an integer in [1, {MAX_TRIALS:,}] (per problem and method; baselines=() skips "
                    f"the tuning), got {trials!r}.")
    tuning_seeds = TUNING_SEEDS.get(size, TUNING_SEEDS["tiny"]) if tuning_seeds is None else tuning_seeds
    return listed, trials, check_seeds(tuning_seeds, eval_seeds, error) if listed else ()


# ------------------------------------------------------------------------------------------- tuning
def tune(scenario: str, size: str, *, eval_seeds, tuning_seeds=None, baselines=BASELINES, trials: int | None = None,
         store: str | Path, device=None, step: Callable[[str], None] = lambda message: None,
         only: str | None = None) -> Tuning:
    """Tune ``baselines`` on the scenario's problems built on ``tuning_seeds`` (see the module docstring).

    ``tuning_seeds`` and ``trials`` default to the size's (:data:`TUNING_SEEDS`, :data:`TRIALS`). Refuses tuning
    seeds that are evaluation seeds, and every bad option (:func:`check_options`), with
    :class:`~unlearnkit.scenarios.registry.ScenarioError`.
    ``store`` is the SQLite file every trial and chosen setting is written to; settings it already holds for
    the same configuration are reused. ``step(message)`` reports progress.
    """
    from unlearnkit.scenarios.registry import SCENARIOS, ScenarioError

    if scenario not in SCENARIOS:
        raise ScenarioError(f"Unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}.")
    module = SCENARIOS[scenario].load()
    if size not in module.SIZES:
        raise ScenarioError(f"Unknown size {size!r}; choose one of {', '.join(module.SIZES)}.")
    baselines, trials, tuning_seeds = check_options(size, eval_seeds, baselines, trials, tuning_seeds, ScenarioError)
    if not baselines:
        raise ScenarioError("tune() needs at least one method in baselines.")
    preset = module.SIZES[size]
    # ``only`` selects problems and changes none: a problem's studies are the same with or without it (its name is
    # part of their key), so a run restricted to some problems reuses what a run of all of them stored
    fp = fingerprint(scenario, size, preset, tuning_seeds, trials, baselines)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = Tuning(scenario, size, tuple(baselines), trials, tuning_seeds, tuple(int(s) for s in eval_seeds),
                    store=str(store), fingerprint=fp)
    seconds = {"problems": 0.0, "references": 0.0, "methods": {m: 0.0 for m in baselines}}
    config = BenchConfig(name=f"{scenario} ({size}) tuning", trials=trials, sampler=SAMPLER, search_seed=SEARCH_SEED,
                         tuning_seeds=tuning_seeds, eval_seeds=result.eval_seeds)
    with TuningStore(store) as db:
        run_id = db.start_run(scenario, size, fp, tuning_seeds, result.eval_seeds, baselines, trials,
                              {"sampler": SAMPLER, "search_seed": SEARCH_SEED, "retain_sample": RETAIN_SAMPLE})
        try:
            names = db.plan(fp)
            if names is not None and only is not None:
                names = [n for n in names if only in n] or None
            done = names is not None and all(db.study(fp, p, m) is not None for p in names for m in baselines)
            targets: dict[str, list[_Target]] = {}
            if not done:
                begun = timing.start(device)
                for seed in tuning_seeds:
                    step(f"tuning seed {seed}: building the problems")
                    # no SISA ensembles where the scenario can leave them out: the search never uses them
                    for problem in build_problems(module, preset, seed, device, only=only, sisa=False):
                        hook = getattr(module, "tuning_measure", None)
                        targets.setdefault(problem.name, []).append(_target(problem, hook(problem, preset, device) if hook else None))
                seconds["problems"] = timing.since(begun, device)
                names = list(targets)
                if only is None:  # a plan lists every problem; a run restricted by ``only`` leaves it alone
                    db.put_plan(fp, names, run_id)
            for name in names:
                for t in targets.get(name, []):
                    _reference(db, fp, t, device, run_id, step)
                for method in baselines:
                    # the study's sampler seed follows from its problem and method, not their positions: a run
                    # restricted by ``only`` draws the same trials as a run of every problem
                    chosen = _study(db, fp, config, targets.get(name, []), name, method,
                                    zlib.crc32(f"{name}/{method}".encode()),
                                    device, run_id, step, result)
                    result.chosen[(name, method)] = chosen
                    seconds["methods"][method] += chosen.seconds
                result.objectives[name] = (targets[name][0].names if name in targets else
                                           _stored_names(db, fp, name, baselines))
            # what retraining the references took when they were stored (now or by an earlier run): the budget
            # states the search's cost, also when it is read back
            seconds["references"] = db.costs(fp, names)["references"]
            db.finish_run(run_id, "done")
        except BaseException as exc:
            try:
                db.finish_run(run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            except sqlite3.Error:
                pass  # the original error matters more
            raise
    seconds["total"] = time.perf_counter() - start
    seconds["cpu"] = time.process_time() - cpu_start
    result.seconds = seconds
    return result


def _stored_names(db: TuningStore, fp: str, problem: str, baselines) -> list[str]:
    for method in baselines:
        for t in db.trials(fp, problem, method):
            return t["objective_names"]
    return []


def _reference(db: TuningStore, fp: str, target: _Target, device, run_id: int, step) -> None:
    """The retrained model's values on the target's parts and measure: from the store, else retrained now."""
    p = target.problem
    stored = db.ref(fp, p.name, p.seed)
    if stored is not None:
        target.reference = stored[0]
        return
    step(f"tuning seed {p.seed}: {p.name}: retraining from scratch (the tuning reference)")
    res = methods.make("retrain").unlearn(p.model, p.train, p.changes, device=device)
    target.reference = target.values(res.model, device)
    db.put_ref(fp, p.name, p.seed, target.reference, res.seconds, run_id)


def _study(db: TuningStore, fp: str, config: BenchConfig, targets: list[_Target], problem: str, method: str,
           index: int, device, run_id: int, step, result: Tuning) -> Chosen:
    stored = db.study(fp, problem, method)
    if stored is not None:
        # the seconds its trials took when they ran: a run that reads the search back states what it cost
        return Chosen(problem, method, stored["status"], stored["chosen"], stored["seeds"], stored["n_trials"],
                      float(stored["seconds"] or 0.0), stored["objectives"], stored["trial"], stored["error"])
    seeds = sorted(t.problem.seed for t in targets)
    model_recipe = recipe(targets[0].problem.model)
    space = search_space(method, model_recipe.epoch_cap)
    if not space:
        chosen = Chosen(problem, method, "defaults", {}, seeds, 0, 0.0)
        db.put_study(fp, problem, method, {"status": "defaults", "chosen": {}, "n_trials": 0, "seeds": seeds,
                                           "seconds": 0.0, "sampler": "none (nothing to search)"}, run_id)
        return chosen
    names = targets[0].names
    study = _Study(replace(config, recipes={problem: model_recipe}), _Named(problem), method,
                   db.trials(fp, problem, method), index, n_objectives=len(names))
    spent = sum(t["seconds"] or 0.0 for t in study.stored)
    while not study.finished:
        number, params = study.ask()
        step(f"tuning {problem}: {method} trial {number + 1} / {study.budget}")
        outcome = _trial(targets, method, params, device)
        record = study.tell(number, outcome)
        db.put_trial(fp, problem, method, record, names, seeds, run_id)
        result.trials_run += 1
        spent += record["seconds"] or 0.0
    picked = choose(study.stored)
    sampler = f"{SAMPLER} (population {population_size(config.trials)})"
    if picked is None:
        errors = sorted({t["error"] for t in study.stored if t["error"]})
        error = "; ".join(e.splitlines()[0][:200] for e in errors[:2]) or "no objective values"
        db.put_study(fp, problem, method, {"status": "failed", "chosen": {}, "n_trials": len(study.stored), "seeds": seeds,
                                           "seconds": spent, "error": error, "space": describe_space(space),
                                           "sampler": sampler}, run_id)
        return Chosen(problem, method, "failed", {}, seeds, len(study.stored), spent, error=error)
    best = next(t for t in study.stored if t["number"] == picked["trial"])
    objectives = dict(zip(names, best["objectives"]))
    db.put_study(fp, problem, method, {"status": "tuned", "chosen": picked["chosen"], "objectives": objectives,
                                       "trial": picked["trial"], "n_trials": len(study.stored), "pareto": picked["pareto"],
                                       "space": describe_space(space), "sampler": sampler, "seeds": seeds,
                                       "seconds": spent}, run_id)
    return Chosen(problem, method, "tuned", picked["chosen"], seeds, len(study.stored), spent, objectives, picked["trial"])


@dataclass(frozen=True)
class _Named:
    """What :class:`unlearnkit.bench.runner._Study` reads of a problem: the key of its recipe (the epoch cap)."""

    dataset: str


def _trial(targets: list[_Target], method: str, params: dict, device) -> dict:
    """Run ``method`` with ``params`` on every tuning problem; objectives averaged over them (a bench trial's result)."""
    start = timing.start(device)
    per_seed = []
    try:
        for t in targets:
            p = t.problem
            res = methods.make(method, **with_seed(method, params, p.seed)).unlearn(p.model, p.train, p.changes, val=p.val,
                                                                                    device=device)
            per_seed.append(t.objectives(res.model, device))
    except UnlearnKitError as exc:
        return {"state": "fail", "objectives": None, "seconds": timing.since(start, device),
                "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # a bug: recorded as a crashed trial with its traceback, the run goes on
        import traceback

        log.warning("%s trial crashed: %s", method, exc)
        return {"state": "fail", "crash": True, "objectives": None, "seconds": timing.since(start, device),
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"}
    values = np.mean(np.asarray(per_seed), axis=0)
    if not np.all(np.isfinite(values)):
        return {"state": "fail", "objectives": None, "seconds": timing.since(start, device),
                "error": "non-finite objective values"}
    return {"state": "complete", "objectives": [float(v) for v in values], "seconds": timing.since(start, device),
            "error": None}


@contextmanager
def store_path(store: str | Path | None, out: str | Path | None):
    """The tuning store's path: ``store``, else ``<out>/tuning.sqlite``, else a temporary file removed afterwards
    (yields ``(path, kept)``)."""
    if store is not None or out is not None:
        yield Path(store) if store is not None else Path(out) / DB_NAME, True
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="unlearnkit-tuning-") as folder:
        yield Path(folder) / DB_NAME, False
