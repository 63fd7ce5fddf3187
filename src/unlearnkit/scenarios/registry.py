"""The scenario registry and the one entry point, :func:`run`."""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from unlearnkit.atomic import check_folder, check_target
from unlearnkit.devices import check_device
from unlearnkit.errors import UnlearnKitError
from unlearnkit.progress import check_progress, status_line
from unlearnkit.scenarios import rules, tuning
from unlearnkit.scenarios.compare import SISA as SISA_LABEL, CurvatureCache, Row, build_problems, compare
from unlearnkit.scenarios.report import ScenarioResult, write

log = logging.getLogger(__name__)

SIZES = ("tiny", "full")
"""``tiny``: under a minute each, for tests and a first look; ``full``: the sizes of the published reports."""


class ScenarioError(UnlearnKitError):
    """An unknown scenario or size, or bad arguments to :func:`run`."""


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    summary: str
    y: str = "test_accuracy"
    y_label: str = "test accuracy (%)"

    def load(self):
        return importlib.import_module(f"unlearnkit.scenarios.{self.module}")


SCENARIOS = {s.name: s for s in (
    Scenario("sensitive-features", "features", "zero personal-name and column features in logistic regression"),
    Scenario("canary", "canary", "unlearn a memorised telephone number from a character-level LSTM and a small transformer", y="exposure",
             y_label="exposure (bits)"),
    Scenario("label-poisoning", "poisoning", "correct flipped training labels of a CNN"),
    Scenario("backdoor", "backdoor", "remove a trigger patch and its target label from a CNN", y="attack_success",
             y_label="attack success rate"),
)}


def run(
    name: str,
    *,
    size: str = "tiny",
    seeds=(0,),
    out: str | Path | None = None,
    device=None,
    threads: int = 1,
    progress="auto",
    step: Callable[[str], None] | None = None,
    tuning_seeds=None,
    trials: int | None = None,
    baselines=tuning.BASELINES,
    store: str | Path | None = None,
    only: str | None = None,
    methods=None,
) -> ScenarioResult:
    """Run scenario ``name`` at ``size`` on each seed; write its report under ``out`` (if given).

    Every problem of the scenario is built per seed (data split, poisoning, training all
    seeded), solved by every strategy (see :mod:`unlearnkit.scenarios.compare`) and the
    scenario's goals are checked on the mean over seeds. Returns the
    :class:`~unlearnkit.scenarios.report.ScenarioResult`; ``result.to_dict()`` is the JSON.
    ``out`` is checked before anything is computed: it must be a folder (new or existing) that
    can be written, else :class:`~unlearnkit.errors.OutputError`.

    ``size`` is ``"tiny"`` (the default: a first look at the mechanics, about a minute of CPU time per scenario
    on one thread, the tuned baselines' search included; one seed of tiny data, so its numbers are no evidence
    for or against the goals) or ``"full"`` (minutes to hours per seed; see docs/scenarios.md).

    ``threads`` is the number of torch CPU threads for the run (restored afterwards). The
    scenarios' models are small: one thread is fastest, and with more threads than idle cores
    every operation waits for the others (on a busy two-core machine, two threads made the
    canary's LSTM train 15 to 80 times slower than one). Raise it for ``"full"`` on an idle machine.

    Progress: every step ("seed 0: canary: second-order", ...) is logged at ``INFO`` through
    this module's logger (``logging.basicConfig(level=logging.INFO)`` shows them), and the run's
    wall and CPU time at the end. ``progress="auto"`` also draws a live status line on standard
    error when it is a terminal (``True``: always, ``False``: never); a callable
    ``progress(message)`` receives each step instead of the line. ``step`` is the older name of
    that callable and works the same.

    Tuned baselines (:mod:`unlearnkit.scenarios.tuning`): each method of ``baselines`` (default FT, NG+, SCRUB,
    SalUn, l1-sparse, SSD and MSG; ``()`` for none) is first tuned by the bench's search with ``trials`` trials per
    (problem, method) (default :data:`~unlearnkit.scenarios.tuning.TRIALS` of the size) on the problems built on
    ``tuning_seeds`` (default :data:`~unlearnkit.scenarios.tuning.TUNING_SEEDS`; they must be disjoint from
    ``seeds``), then evaluated on every seed as the row ``<method> [tuned]``. Every trial and chosen setting goes
    to the SQLite file ``store`` (default ``<out>/tuning.sqlite``, or a temporary file when ``out`` is None); the
    report states the tuning budget (``result.tuning``).

    ``only`` keeps the problems whose name contains it (``only="targeted"``: the targeted flips of
    label-poisoning), for evaluation and tuning alike; the others are not built. ``methods`` (row labels, e.g.
    ``["second-order [kfac]", "ft [tuned]", "sisa"]``) keeps only those rows besides the original and retraining;
    SISA's ensembles are trained only when ``"sisa"`` is listed. A label no problem offers is refused, listing
    the labels there are.
    """
    if name not in SCENARIOS:
        raise ScenarioError(f"Unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}.")
    if size not in SIZES:
        raise ScenarioError(f"Unknown size {size!r}; choose one of {', '.join(SIZES)}.")
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError, OverflowError):
        raise ScenarioError(f"seeds must be integers, got {seeds!r}.") from None
    if not seeds or any(not 0 <= s < 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ScenarioError(f"seeds must be distinct integers in [0, 2**63), got {', '.join(map(str, seeds))[:200]}.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ScenarioError(f"threads must be a positive integer (torch CPU threads; 1 is fastest for these small "
                            f"models), got {threads!r}.")
    check_progress(progress, error=ScenarioError)
    if step is not None and not callable(step):
        raise ScenarioError(f"step must be a callable step(message), got {type(step).__name__}.")
    check_device(device, what="device", error=ScenarioError)
    if methods is not None:
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods) or not methods:
            raise ScenarioError(f"methods must be a non-empty list of row labels, got {methods!r}.")
        methods = list(dict.fromkeys(methods))
    if only is not None and (not isinstance(only, str) or not only.strip()):
        raise ScenarioError(f"only must be a non-empty part of a problem's name, got {only!r}.")
    baselines, trials, tuning_seeds = tuning.check_options(size, seeds, baselines, trials, tuning_seeds, ScenarioError)
    if out is not None:  # before any computing: a run of minutes must not end on an unwritable path
        check_folder(out, option="--out")
        for ext in ("json", "png", "md"):
            check_target(Path(out) / f"{name}.{ext}", user_path=True)
    if baselines and (store is not None or out is not None):  # the tuning store is written first
        check_target(Path(store) if store is not None else Path(out) / tuning.DB_NAME, user_path=True)
    callback = step if step is not None else progress if callable(progress) else None
    display = False if callback is not None else progress
    spec = SCENARIOS[name]
    with torch_threads(threads), status_line(display, f"{name} ({size}): starting", log.name) as show:
        def report(message: str) -> None:
            log.info("%s (%s): %s", name, size, message)
            show(f"{name} ({size}) {time.perf_counter() - start:5.0f}s  {message}")
            if callback is not None:
                callback(message)

        start, cpu_start = time.perf_counter(), time.process_time()
        module = spec.load()
        preset = module.SIZES[size]
        rows, problems_info, tuned = [], {}, None
        if baselines:
            with tuning.store_path(store, out) as (path, kept):
                tuned = tuning.tune(name, size, tuning_seeds=tuning_seeds, eval_seeds=seeds, baselines=baselines,
                                    trials=trials, store=path, device=device, step=report, only=only)
            tuned.store = str(path) if kept else None
        for seed in seeds:
            report(f"seed {seed}: building the problems (data, poisoning, training)")
            curvatures = CurvatureCache()  # a cached strategy's curvature: fitted once per model, reused by its problems
            built = build_problems(module, preset, seed, device, only=only,
                                   sisa=methods is None or SISA_LABEL in methods)
            if not built:
                raise ScenarioError(f"No problem of {name} ({size}) has {only!r} in its name; `unlearnkit scenario {name}` "
                                    "without --problem lists them in its report.")
            for problem in built:
                problems_info.setdefault(problem.name, problem.info)
                strategies = getattr(module, "strategies", rules.default_strategies)(
                    problem.model, problem.train, problem.changes, seed=seed, device=device)
                if tuned is not None:
                    strategies = [*strategies, *tuned.strategies(problem.name, seed)]
                if methods is not None:
                    if SISA_LABEL not in methods:
                        problem.sisa = None  # a scenario that trained an ensemble anyway: no row for it
                    unknown = [m for m in methods if m not in (SISA_LABEL, "original", "retrain")
                               and m not in {s.label for s in strategies}]
                    if unknown:
                        raise ScenarioError(f"{problem.name} has no row {', '.join(map(repr, unknown))}; its rows: "
                                            f"{', '.join(s.label for s in strategies)}, sisa.")
                    strategies = [s for s in strategies if s.label in methods]
                rows += compare(problem, strategies, device=device, curvatures=curvatures,
                                step=lambda m, s=seed: report(f"seed {s}: {m}"))
        result = ScenarioResult(name, size, seeds, rows, problems=problems_info, derive=getattr(module, "derive", None),
                                rules=rules.__doc__ or "", tuning=tuned.to_dict() if tuned is not None else {})
        result.goals = module.goals(result.aggregate())
        result.seconds = time.perf_counter() - start
        result.machine(device)  # recorded now, with the run's thread count and device
        if out is not None:
            report(f"writing the report to {out}")
            write_report(result, out)
        log.info("%s (%s): done in %.1f s wall, %.1f s CPU (this process, %d torch thread%s)", name, size,
                 time.perf_counter() - start, time.process_time() - cpu_start, threads, "" if threads == 1 else "s")
    return result


def write_report(result: ScenarioResult, out: str | Path) -> dict[str, Path]:
    """Write ``result``'s report (JSON, Markdown, PNG) under ``out`` with its scenario's title and measure."""
    spec = SCENARIOS[result.scenario]
    module = spec.load()
    return write(result, Path(out), title=module.TITLE, intro=module.__doc__ or "", y=spec.y, y_label=spec.y_label)


SAME_MACHINE = ("torch", "device", "threads", "accelerator", "processor", "cpus")
"""Environment keys that must agree for runs to be merged: speed-ups measured under other conditions are not averaged."""


def merge(name: str, reports, *, store: str | Path | None = None) -> ScenarioResult:
    """One result of scenario ``name`` from several runs, e.g. seeds run one per process.

    ``reports`` are results or their JSON (:meth:`~unlearnkit.scenarios.report.ScenarioResult.to_dict`, the
    ``<scenario>.json`` a run writes). A problem's rows on a seed come from the last report that has them (runs of
    one seed, or of one problem, each add theirs); the goals are judged again on the union; the seconds add up (each
    report's in proportion to the share of its problem-seed blocks kept) and the command lines are kept (each once:
    a merged report merged again repeats its own); a problem is described as on its first seed. Refused
    (:class:`ScenarioError`) unless every report is of ``name`` at one size, with the same tuned-baseline
    configuration (methods, trials, tuning seeds, store fingerprint) and the same machine settings
    (:data:`SAME_MACHINE`): rows measured otherwise are not averaged together.

    A report that has fewer of a problem's rows on a seed than the reports before it (a ``--methods`` run of rows
    left out earlier) adds its rows to theirs, replacing those it has, when it trained the same models: its
    original's and retrained model's scores equal theirs exactly (training is deterministic on one thread). Each
    row's speed-up stays the ratio to its own run's retraining, whose seconds such a joined row records
    (``settings["retrain_seconds"]``); the block's ``retrain`` row is the last run's. With other models it is
    refused: merging would silently drop rows. A report none of whose rows are kept counts no seconds. Every
    report must state its machine.

    ``store``: the tuning store the reports' baselines were tuned with. When given (and it holds the configuration),
    the budget's seconds per method and for the references are read from it: what the search cost when it ran, on
    every problem of the merged reports. Without it they are the most any report states.
    """
    if name not in SCENARIOS:
        raise ScenarioError(f"Unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}.")
    module = SCENARIOS[name].load()
    results = []
    for i, report in enumerate(reports):
        if isinstance(report, ScenarioResult):
            report = report.to_dict()
        try:
            results.append(ScenarioResult.from_dict(report, derive=getattr(module, "derive", None)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ScenarioError(f"Report {i + 1} is not a scenario result's JSON ({type(exc).__name__}: {exc}).") from None
    if not results:
        raise ScenarioError("Nothing to merge: give at least one report.")
    first = results[0]
    for i, r in enumerate(results, 1):
        if r.scenario != name or r.size != first.size:
            raise ScenarioError(f"Report {i} is {r.scenario} ({r.size}); the merge is of {name} ({first.size}).")
        if not r.environment:
            raise ScenarioError(f"Report {i} does not say which machine it ran on (no environment): its speed-ups "
                                "cannot be checked against the others'.")
        env, env0 = r.environment, first.environment
        differ = [k for k in SAME_MACHINE if env.get(k) != env0.get(k)]
        if differ:
            raise ScenarioError(f"Report {i} ran with {', '.join(f'{k}={env.get(k)!r}' for k in differ)}, report 1 with "
                                f"{', '.join(f'{k}={env0.get(k)!r}' for k in differ)}: speed-ups measured under other "
                                "conditions are not averaged.")
        key = lambda t: (t.get("methods"), t.get("trials_per_method"), t.get("tuning_seeds"), t.get("fingerprint"))
        if key(r.tuning) != key(first.tuning):
            raise ScenarioError(f"Report {i}'s tuned baselines (methods, trials, tuning seeds, store fingerprint "
                                f"{key(r.tuning)}) differ from report 1's ({key(first.tuning)}).")
    # a problem's rows on a seed come from the last report that has them (a run of one problem leaves the others);
    # a later report with fewer rows there (a --methods run) joins them only when it trained the same models (its
    # original and retrained rows score exactly alike: the runs are deterministic on one thread), else it would
    # silently drop rows measured on other models: refused
    source: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(results):
        for block in dict.fromkeys((row.problem, row.seed) for row in r.rows):
            mine = _block(r, block)
            # the earlier reports that still give rows once this one joins (newest first: a report whose rows the
            # later ones all replace gives none, and counts no more)
            later, keep = set(mine), []
            for j in reversed(source.get(block, [])):
                theirs = _block(results[j], block)
                left = set(theirs) - later
                if left and not _same_models(theirs, mine):
                    raise ScenarioError(
                        f"Report {i + 1} replaces the rows of {block[0]!r} on seed {block[1]} but lacks "
                        f"{', '.join(sorted(left))}, which report {j + 1} has, and was not run on the same models "
                        "(its original's or retrained model's scores differ, or a report lacks them): merging would "
                        "drop those rows. Run them again too, or leave that seed out.")
                if left:
                    keep.append(j)
                later |= set(theirs)
            source[block] = [*reversed(keep), i]
    if not source:
        raise ScenarioError("Nothing to merge: the reports have no rows.")
    seeds = sorted({seed for _, seed in source})
    order = list(dict.fromkeys(problem for problem, _ in source))
    rows = []
    for seed in seeds:
        for problem in order:
            joined: dict[str, Row] = {}
            runs = source.get((problem, seed), [])
            for j in runs:
                block = _block(results[j], (problem, seed))
                if len(runs) > 1:  # rows of several runs: each row's speed-up is against its own run's retraining
                    reference = block["retrain"].seconds
                    block = {m: replace(row, settings={"retrain_seconds": reference, **row.settings})
                             for m, row in block.items()}  # a row joined before keeps the reference it has
                joined.update(block)
            rows += joined.values()
    # a report's seconds cover all its blocks: each report counts for the share of its blocks the merge kept (a
    # report that is itself a merge of seeds, merged again, would otherwise count those seeds twice)
    kept = Counter(j for js in source.values() for j in js)
    used = [r for j, r in enumerate(results) if kept[j]]
    share = {id(r): kept[j] / len({(row.problem, row.seed) for row in r.rows}) for j, r in enumerate(results) if kept[j]}
    # a problem's description (sizes, what was drawn) is that of its first seed, as in a run of several seeds
    problems: dict = {}
    for problem, seed in sorted(source, key=lambda block: (order.index(block[0]), block[1])):
        described = [results[j].problems[problem] for j in reversed(source[(problem, seed)])
                     if problem in results[j].problems]
        problems.setdefault(problem, described[0] if described else {})
    tuned = dict(used[-1].tuning)
    if tuned:
        tuned["evaluation_seeds"] = seeds
        tuned["trials_run"] = round(sum(int(r.tuning.get("trials_run") or 0) * share[id(r)] for r in used))
        # each report tuned (or read back) the problems it ran: their objectives and choices together
        tuned["objectives"] = {p: names for r in used for p, names in (r.tuning.get("objectives") or {}).items()}
        chosen = {(c.get("problem"), c.get("method")): c for r in used for c in r.tuning.get("chosen") or []}
        tuned["chosen"] = list(chosen.values())
        spent = [r.tuning.get("seconds") or {} for r in used]
        tuned["seconds"] = {**tuned.get("seconds", {}),
                            **{k: sum(float(s.get(k) or 0.0) * share[id(r)] for r, s in zip(used, spent))
                               for k in ("total", "cpu", "problems")},
                            # without the store: the most any report states (a report that read the search back
                            # may state its own zero; summing would count one search once per report)
                            "methods": {m: max(float((s.get("methods") or {}).get(m) or 0.0) for s in spent)
                                        for m in tuned.get("methods", [])},
                            "references": max(float(s.get("references") or 0.0) for s in spent)}
        if store is not None and Path(store).is_file():
            with tuning.TuningStore(store) as db:
                costs = db.costs(tuned.get("fingerprint", ""), tuned["objectives"])
            if costs["methods"]:
                tuned["seconds"] = {**tuned["seconds"], "methods": {m: costs["methods"].get(m, 0.0)
                                                                   for m in tuned.get("methods", [])},
                                    "references": costs["references"], "from_store": True}
    result = ScenarioResult(name, first.size, seeds, rows, problems=problems, derive=getattr(module, "derive", None),
                            rules=rules.__doc__ or "", environment=dict(used[-1].environment), tuning=tuned,
                            commands=list(dict.fromkeys(c for r in used for c in r.commands)))
    result.seconds = sum(r.seconds * share[id(r)] for r in used)
    result.goals = module.goals(result.aggregate())
    return result


def _block(result: ScenarioResult, block: tuple[str, int]) -> dict[str, Row]:
    """The rows of one problem on one seed, by method, in the report's order."""
    return {row.method: row for row in result.rows if (row.problem, row.seed) == block}


def _same_models(a: dict[str, Row], b: dict[str, Row]) -> bool:
    """Whether two runs' rows of one block come from the same original and retrained models: both have those rows
    and every score of theirs is equal (not the seconds, which vary)."""
    # as JSON text: a NaN score (a measure undefined on that model) equals itself
    scores = lambda row: json.dumps([row.test_accuracy, row.corrected_accuracy, row.distance, row.agreement,
                                     row.efficacy], sort_keys=True, default=float)
    return all(m in a and m in b and scores(a[m]) == scores(b[m]) for m in ("original", "retrain"))


def split_labels(text: str) -> list[str]:
    """Row labels from a comma-separated list; commas inside brackets belong to a label
    (``"ft [tuned],second-order-it [kfac, guarded]"`` is two labels)."""
    labels, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            labels.append(current.strip())
            current = ""
        else:
            current += ch
    labels.append(current.strip())
    return [label for label in labels if label]


@contextmanager
def torch_threads(n: int):
    """torch's CPU thread count set to ``n`` inside the block, the caller's restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
