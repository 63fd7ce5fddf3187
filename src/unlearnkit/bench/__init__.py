"""The benchmark runner: ``unlearnkit bench run | status | report``.

>>> import unlearnkit as uk
>>> config = uk.bench.load_config("quick", ["search.trials=2"])     # doctest: +SKIP
>>> uk.bench.run(config, "runs/quick")                               # doctest: +SKIP
>>> uk.bench.write_report("runs/quick")                              # doctest: +SKIP

See ``docs/benchmark.md``: the configuration schema, the stages (shared references, Optuna search
on tuning seeds, evaluation cells), the store, the executors and the report.
"""

from unlearnkit.bench.config import PRESETS, BenchConfig, Problem, Protocol, Recipe, load_config, preset_path
from unlearnkit.bench.jobs import OBJECTIVES
from unlearnkit.bench.report import write as write_report
from unlearnkit.bench.runner import RunSummary, choose, run, status
from unlearnkit.bench.space import search_space
from unlearnkit.bench.store import Store

__all__ = ["OBJECTIVES", "PRESETS", "BenchConfig", "Problem", "Protocol", "Recipe", "RunSummary", "Store", "choose",
           "load_config", "preset_path", "run", "search_space", "status", "write_report"]
