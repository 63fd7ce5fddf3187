"""The ``deepunlearn-fmnist`` preset at a budget a CPU can afford, with its report.

Runs (or resumes) ``unlearnkit bench run deepunlearn-fmnist`` with the overrides below, writes
the report under ``docs/benchmark/<label>/`` and the summary, ranks, Pareto front, chosen
settings and run metadata to ``benchmarks/results/bench-<label>.json``. RTE in it is the
retraining time of the same seed, measured in the same run, divided by each method's time.

Run: ``python benchmarks/bench_deepunlearn.py --trials 6`` (about 20 minutes on 2 cores);
``--trials 100 --tuning 100,101,102 --seeds 0,...,9 --rows 0`` is the preset's own budget;
``--device cuda`` on a GPU. ``--report-only`` rewrites the outputs from an existing run folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import unlearnkit as uk
from unlearnkit.bench.report import build, write
from unlearnkit.metrics.evaluate import _nan_to_none

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rows", type=int, default=6000, help="training rows (0 = all 60,000)")
    parser.add_argument("--seeds", default="0,1,2", help="evaluation seeds")
    parser.add_argument("--tuning", default="100", help="tuning seeds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (default runs/deepunlearn-fmnist-<trials>)")
    parser.add_argument("--label", default=None, help="report name (default fmnist-<trials>-trials)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    label = args.label or f"fmnist-{args.trials}-trials"
    out = Path(args.out or ROOT / "runs" / f"deepunlearn-fmnist-{args.trials}")
    overrides = [f"data.rows={args.rows}", f"seeds.eval=[{args.seeds}]", f"seeds.tuning=[{args.tuning}]",
                 f"search.trials={args.trials}", f"run.device={args.device}"]
    if not args.report_only:
        config = uk.bench.load_config("deepunlearn-fmnist", overrides)
        summary = uk.bench.run(config, out, workers=args.workers, log=print)
        print(f"done in {summary.seconds:.0f}s: {summary.counts}")
    write(out, ROOT / "docs" / "benchmark" / label, formats=("md", "html", "csv", "json"))
    rep = build(out)
    result = {"meta": {"command": "python benchmarks/bench_deepunlearn.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "overrides": overrides, "machine": platform.platform(), "runs": rep["runs"],
                       "config": rep["config"]},
              "summary": rep["summary"], "ranks": rep["ranks"], "pareto": rep["pareto"],
              "studies": rep["studies"]}
    path = ROOT / "benchmarks" / "results" / f"bench-{label}.json"
    path.write_text(json.dumps(_nan_to_none(result), indent=1, default=str, allow_nan=False))
    print(f"wrote {path} and docs/benchmark/{label}/")


if __name__ == "__main__":
    main()
