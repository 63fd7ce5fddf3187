"""The scenario registry and the one entry point, :func:`run`."""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from unlearnkit.atomic import check_folder, check_target
from unlearnkit.devices import check_device
from unlearnkit.errors import UnlearnKitError
from unlearnkit.scenarios import rules
from unlearnkit.scenarios.compare import compare
from unlearnkit.scenarios.report import ScenarioResult, write

log = logging.getLogger(__name__)

SIZES = ("tiny", "full")
"""``tiny``: seconds, for tests and a first look; ``full``: the sizes the committed report uses."""


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
    Scenario("canary", "canary", "unlearn a memorised telephone number from a character-level LSTM", y="exposure",
             y_label="exposure (bits)"),
    Scenario("label-poisoning", "poisoning", "correct flipped training labels of a CNN"),
    Scenario("backdoor", "backdoor", "remove a trigger patch and its target label from a CNN", y="attack_success",
             y_label="attack success rate"),
)}


def run(
    name: str,
    *,
    size: str = "full",
    seeds=(0,),
    out: str | Path | None = None,
    device=None,
    step: Callable[[str], None] = lambda message: None,
) -> ScenarioResult:
    """Run scenario ``name`` at ``size`` on each seed; write its report under ``out`` (if given).

    Every problem of the scenario is built per seed (data split, poisoning, training all
    seeded), solved by every strategy (see :mod:`unlearnkit.scenarios.compare`) and the
    scenario's goals are checked on the mean over seeds. Returns the
    :class:`~unlearnkit.scenarios.report.ScenarioResult`; ``result.to_dict()`` is the JSON.
    ``out`` is checked before anything is computed: it must be a folder (new or existing) that
    can be written, else :class:`~unlearnkit.errors.OutputError`.
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
    check_device(device, what="device", error=ScenarioError)
    if out is not None:  # before any computing: a run of minutes must not end on an unwritable path
        check_folder(out, option="--out")
        for ext in ("json", "png", "md"):
            check_target(Path(out) / f"{name}.{ext}", user_path=True)
    spec = SCENARIOS[name]
    module = spec.load()
    preset = module.SIZES[size]
    start = time.perf_counter()
    rows, problems_info = [], {}
    for seed in seeds:
        step(f"seed {seed}: building the problems (data, poisoning, training)")
        for problem in module.problems(preset, seed, device):
            problems_info.setdefault(problem.name, problem.info)
            strategies = getattr(module, "strategies", rules.default_strategies)(
                problem.model, problem.train, problem.changes, seed=seed, device=device)
            rows += compare(problem, strategies, device=device, step=lambda m, s=seed: step(f"seed {s}: {m}"))
    result = ScenarioResult(name, size, seeds, rows, problems=problems_info, derive=getattr(module, "derive", None),
                            rules=rules.__doc__ or "")
    result.goals = module.goals(result.aggregate())
    result.seconds = time.perf_counter() - start
    if out is not None:
        write(result, Path(out), title=module.TITLE, intro=module.__doc__ or "", y=spec.y, y_label=spec.y_label)
    return result
