"""Full-size runs of the scenarios: ``benchmarks/results/scenarios.json`` and ``docs/scenarios/``.

    python benchmarks/bench_scenarios.py                       # all four, full size, seeds 0 1 2
    python benchmarks/bench_scenarios.py --only canary --seeds 0 --baselines none
    python benchmarks/bench_scenarios.py --only canary --seeds 1 --add      # a seed added to the report there
    python benchmarks/bench_scenarios.py --only canary --merge a.json b.json  # saved reports merged, nothing run

The tuned baselines are searched first, on ``--tuning-seeds`` (disjoint from ``--seeds``), with ``--trials``
trials per method and problem; every trial and chosen setting is kept in
``benchmarks/results/tuning/<scenario>.sqlite`` (a rerun with the same settings reads them back).

Each scenario writes its report (Markdown, PNG, JSON) under ``docs/scenarios/``; this script
merges their JSON into ``benchmarks/results/scenarios.json`` (one entry per scenario, replaced
when a scenario is re-run). Seeds can run in separate processes: ``--add`` merges a run into the report already
there (rows of the problems and seeds it ran replaced, the others kept; a run of rows left out before joins a
seed's rows when it trained the same models; see ``unlearnkit.scenarios.merge``);
``--merge`` replaces the report with the merge of saved reports, running nothing. Runs of other sizes, tuning or
thread counts are refused. The tuned baselines' search runs first, under a lock on its store: processes started
together search once and the others read it back. Speed-ups are ratios to retraining measured in the same run, on the
machine named in each entry's ``environment``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from unlearnkit import scenarios
from unlearnkit.atomic import check_folder
from unlearnkit.scenarios.registry import split_labels

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "scenarios.json"
DOCS = ROOT.parent / "docs" / "scenarios"
TUNING = ROOT / "results" / "tuning"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(scenarios.SCENARIOS), choices=list(scenarios.SCENARIOS))
    parser.add_argument("--size", default="full", choices=scenarios.SIZES)
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="evaluation seeds (default: 0 1 2)")
    parser.add_argument("--tuning-seeds", nargs="*", type=int, default=None, help="default: the scenario's (1000)")
    parser.add_argument("--trials", type=int, default=None, help="search trials per method and problem (default: the size's)")
    parser.add_argument("--baselines", default=None, help="comma list of methods to tune, or 'none' (default: all seven)")
    parser.add_argument("--problem", default=None, help="only the problems whose name contains this text")
    parser.add_argument("--methods", default=None, help="only these rows (comma-separated labels) besides the original and retraining")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: timings unaffected by a busy second core)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--add", action="store_true",
                        help="add this run's seeds to the scenario's report already in docs/scenarios (its other seeds kept)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="run nothing: these saved reports of one scenario (--only NAME), merged, replace its report "
                             "in docs/scenarios (the report there is not read: list it to keep it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        if len(args.only) != 1:
            parser.error("--merge needs exactly one scenario: --only NAME")
        given = [flag for flag, value in (("--seeds", args.seeds), ("--problem", args.problem), ("--methods", args.methods),
                                          ("--trials", args.trials), ("--baselines", args.baselines),
                                          ("--tuning-seeds", args.tuning_seeds), ("--add", args.add or None)) if value is not None]
        if given or args.size != "full":
            parser.error(f"--merge runs nothing: {', '.join(given) or '--size'} would be ignored")
        name = args.only[0]
        reports = [json.loads(Path(f).read_text()) for f in args.merge]
        with locked(DOCS / f".{name}.lock"):
            publish(scenarios.merge(name, reports, store=TUNING / f"{name}.sqlite"), time.perf_counter())
        return
    args.seeds = [0, 1, 2] if args.seeds is None else args.seeds
    check_folder(DOCS, option="docs/scenarios")
    for name in args.only:
        start = time.perf_counter()
        options = {} if args.baselines is None else {
            "baselines": () if args.baselines == "none" else tuple(m.strip() for m in args.baselines.split(",") if m.strip())}
        TUNING.mkdir(parents=True, exist_ok=True)
        existing = DOCS / f"{name}.json"
        if args.add and existing.exists():  # refused now, not after the run: a report this run cannot join
            preflight(name, json.loads(existing.read_text()), args)
        # the search runs once per store: a second process waits here, then reads it back
        searched = None
        with locked(TUNING / f".{name}.lock"):
            tuning_options = dict(tuning_seeds=args.tuning_seeds, trials=args.trials, store=TUNING / f"{name}.sqlite",
                                  only=args.problem, **options)
            if options.get("baselines", True):  # not --baselines none
                searched = tune_first(name, args, tuning_options)
        result = scenarios.run(name, size=args.size, seeds=args.seeds, out=None, device=args.device, threads=args.threads,
                               tuning_seeds=args.tuning_seeds, trials=args.trials, store=TUNING / f"{name}.sqlite", only=args.problem,
                               methods=None if args.methods is None else split_labels(args.methods),
                               **options,
                               step=lambda m: print(f"[{time.perf_counter() - start:7.1f}s] {name}: {m}", file=sys.stderr, flush=True))
        if searched is not None and result.tuning:  # the run read the search back: its own wall time is this one's
            spent = result.tuning.setdefault("seconds", {})
            for key in ("total", "cpu", "problems"):
                spent[key] = float(spent.get(key) or 0.0) + float(searched.seconds.get(key) or 0.0)
            result.tuning["trials_run"] = int(result.tuning.get("trials_run") or 0) + searched.trials_run
        result.commands = [" ".join(["python benchmarks/bench_scenarios.py --only", name, "--size", args.size, "--seeds",
                                     *map(str, args.seeds), *(["--tuning-seeds", *map(str, args.tuning_seeds)] if args.tuning_seeds else []),
                                     *(["--trials", str(args.trials)] if args.trials else []),
                                     *(["--baselines", args.baselines] if args.baselines else []),
                                     *(["--problem", repr(args.problem)] if args.problem else []),
                                     *(["--methods", repr(args.methods)] if args.methods else []),
                                     *(["--add"] if args.add else [])])]
        with locked(DOCS / f".{name}.lock"):  # another process may be adding its seeds to the same report
            if not args.add:
                publish(result, start)
                continue
            reports = [json.loads(existing.read_text())] if existing.exists() else []
            try:
                merged = scenarios.merge(name, [*reports, result], store=TUNING / f"{name}.sqlite")
            except Exception:
                side = DOCS / f"{name}.seeds-{'-'.join(map(str, args.seeds))}.json"
                side.write_text(json.dumps(result.to_dict(), indent=1, default=str))
                print(f"{name}: could not be added to {existing}; this run's report is kept in {side} "
                      f"(merge it with --merge)", file=sys.stderr, flush=True)
                raise
            publish(merged, start)


def preflight(name: str, report: dict, args) -> None:
    """Refuse an ``--add`` before its run when the report already there is of another size or machine setting."""
    env = report.get("environment") or {}
    mine = {"threads": args.threads, "device": str(torch.device(args.device)) if args.device else "cpu"}
    differ = [f"{k} {env.get(k)!r} (this run: {v!r})" for k, v in mine.items() if env.get(k) != v]
    if report.get("size") != args.size or differ:
        raise SystemExit(f"--add: docs/scenarios/{name}.json is of size {report.get('size')!r}"
                         f"{'; ' + ', '.join(differ) if differ else ''}; this run ({args.size}) could not join it. "
                         "Run without --add, or move that report away.")


def tune_first(name: str, args, options: dict):
    """The tuned baselines' search, before the run and under the store's lock (the run then reads it back)."""
    from unlearnkit.scenarios import tuning
    from unlearnkit.scenarios.registry import ScenarioError

    baselines, trials, tuning_seeds = tuning.check_options(args.size, args.seeds, options.get("baselines", tuning.BASELINES),
                                                           options["trials"], options["tuning_seeds"], ScenarioError)
    return tuning.tune(name, args.size, eval_seeds=args.seeds, tuning_seeds=tuning_seeds, baselines=baselines,
                       trials=trials, store=options["store"], device=args.device, only=options["only"],
                       step=lambda m: print(f"{name}: {m}", file=sys.stderr, flush=True))


def publish(result, start: float) -> None:
    """Write ``result``'s report under docs/scenarios and its entry in benchmarks/results/scenarios.json."""
    name = result.scenario
    store = Path(result.tuning.get("store") or "")
    if result.tuning.get("store") and store.name == f"{name}.sqlite":  # the repository's copy, not this checkout's path
        result.tuning["store"] = str(TUNING.relative_to(ROOT.parent) / store.name)
    scenarios.write_report(result, DOCS)
    entry = result.to_dict()
    with locked(RESULTS.with_suffix(".lock")):
        store = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # re-read: another run may have written
        store[name] = entry
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(store, indent=1, default=str))
    for goal in result.goals:
        print(f"{name}: {'MET' if goal.met else 'MISSED'} {goal.name}: {goal.detail}", flush=True)
    print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (created) for the block: two processes merging into one file take turns."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

if __name__ == "__main__":
    main()
