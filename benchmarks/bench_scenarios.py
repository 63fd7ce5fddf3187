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
there (rows of the seeds it ran replaced, the others kept; see ``unlearnkit.scenarios.merge``), ``--merge`` does the
same for saved reports; runs of other sizes, problems, tuning or thread counts are refused. Speed-ups are ratios to retraining measured in the same run, on the
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
from unlearnkit.scenarios.registry import split_labels

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "scenarios.json"
DOCS = ROOT.parent / "docs" / "scenarios"
TUNING = ROOT / "results" / "tuning"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(scenarios.SCENARIOS), choices=list(scenarios.SCENARIOS))
    parser.add_argument("--size", default="full", choices=scenarios.SIZES)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
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
                        help="run nothing: merge these saved reports of one scenario (--only NAME) into docs/scenarios")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        if len(args.only) != 1:
            parser.error("--merge needs exactly one scenario: --only NAME")
        name = args.only[0]
        reports = [json.loads(Path(f).read_text()) for f in args.merge]
        publish(scenarios.merge(name, reports, store=TUNING / f"{name}.sqlite"), time.perf_counter())
        return
    for name in args.only:
        start = time.perf_counter()
        options = {} if args.baselines is None else {
            "baselines": () if args.baselines == "none" else tuple(m.strip() for m in args.baselines.split(",") if m.strip())}
        TUNING.mkdir(parents=True, exist_ok=True)
        result = scenarios.run(name, size=args.size, seeds=args.seeds, out=None, device=args.device, threads=args.threads,
                               tuning_seeds=args.tuning_seeds, trials=args.trials, store=TUNING / f"{name}.sqlite", only=args.problem,
                               methods=None if args.methods is None else split_labels(args.methods),
                               **options,
                               step=lambda m: print(f"[{time.perf_counter() - start:7.1f}s] {name}: {m}", file=sys.stderr, flush=True))
        result.commands = [" ".join(["python benchmarks/bench_scenarios.py --only", name, "--size", args.size, "--seeds",
                                     *map(str, args.seeds), *(["--tuning-seeds", *map(str, args.tuning_seeds)] if args.tuning_seeds else []),
                                     *(["--trials", str(args.trials)] if args.trials else []),
                                     *(["--baselines", args.baselines] if args.baselines else []),
                                     *(["--problem", repr(args.problem)] if args.problem else []),
                                     *(["--methods", repr(args.methods)] if args.methods else []),
                                     *(["--add"] if args.add else [])])]
        if args.add:
            with locked(DOCS / f".{name}.lock"):  # another process may be adding its seeds to the same report
                existing = DOCS / f"{name}.json"
                reports = [json.loads(existing.read_text())] if existing.exists() else []
                publish(scenarios.merge(name, [*reports, result], store=TUNING / f"{name}.sqlite"), start)
        else:
            publish(result, start)


def publish(result, start: float) -> None:
    """Write ``result``'s report under docs/scenarios and its entry in benchmarks/results/scenarios.json."""
    name = result.scenario
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
