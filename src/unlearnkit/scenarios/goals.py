"""Judging a scenario's goal on its best closed-form row.

The deep scenarios' goals ask whether *a* closed-form update reaches a target: the first- and
second-order updates of Warnecke et al. (NDSS 2023) in every variant the table has — one-shot,
``[head]``, iterative (``-it``), with a cached curvature (``[kfac]``, ``[ekfac]``, ``[cached]``) and
guarded. :func:`best_closed_form` judges each such row on the mean over seeds (the entries of
:meth:`~unlearnkit.scenarios.report.ScenarioResult.aggregate`), problem by problem, with the
scenario's own checks. The goal is met when one row passes every check on every judged problem;
the row reported is that one (the fastest, when several pass), else the row that passes the most
checks (ties: the smallest summed gap to the target), with every check's numbers, so a missed goal
says which criterion failed and by how much. A row that failed on any seed counts as failing every
check of that problem (its mean would hide the failure). A goal is judged on at least
:data:`MIN_SEEDS` seeds: with fewer, every problem also fails the check "seeds", which says how many
the run had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MIN_SEEDS = 3
"""Seeds a goal needs before it can be met (the mean over fewer is no evidence)."""

CLOSED_FORM = ("first-order", "second-order")
"""Row labels that start with one of these are closed-form updates (``second-order-it [kfac, guarded]`` included)."""


@dataclass(frozen=True)
class Check:
    """One criterion of a goal on one problem: whether it passed and the numbers that say so."""

    name: str
    ok: bool
    text: str
    gap: float = 0.0
    """How far from passing (0 when passed): breaks ties between rows that pass equally many checks."""


Judge = Callable[[str, dict], list[Check]]
"""``judge(problem, entry) -> checks``: the scenario's criteria for one row (a summary entry) on one problem."""


def closed_form_labels(summary: list[dict]) -> list[str]:
    """The closed-form rows of ``summary`` (see :data:`CLOSED_FORM`), in first-seen order."""
    return list(dict.fromkeys(e["method"] for e in summary if str(e["method"]).startswith(CLOSED_FORM)))


@dataclass
class Verdict:
    """The best row and its checks per problem (see the module docstring)."""

    label: str | None
    met: bool
    checks: dict[str, list[Check]]

    def detail(self) -> str:
        """``"best closed-form row: <label>; <problem>: <check>, <check> (missed: <names>); ..."``."""
        if self.label is None:
            return "no closed-form row in this run"
        parts = [f"best closed-form row: {self.label}"]
        for problem, checks in self.checks.items():
            missed = [c.name for c in checks if not c.ok]
            parts.append(f"{problem}: {', '.join(c.text for c in checks)}"
                         + (f" (missed: {', '.join(missed)})" if missed else ""))
        return "; ".join(parts)


def best_closed_form(summary: list[dict], problems: list[str], judge: Judge) -> Verdict:
    """The closed-form row that meets ``judge`` on every problem of ``problems`` (the fastest if several), else the
    one that comes closest (see the module docstring)."""
    from unlearnkit.scenarios.report import lookup

    best, best_key = None, None
    for label in closed_form_labels(summary):
        checks = {}
        for problem in problems:
            entry = lookup(summary, problem, label)
            if not entry or entry.get("failed") or entry.get("test_accuracy") is None:
                status = (entry or {}).get("status", "no row")
                what = (f"failed on {entry['failed']} of {entry['runs']} seeds" if entry and entry.get("failed")
                        else "no result")
                checks[problem] = [Check("a result", False, f"{what} ({str(status)[:80]})", float("inf"))]
                continue
            checks[problem] = judge(problem, entry)
            runs = int(entry.get("runs") or 0)
            if runs < MIN_SEEDS:
                checks[problem].append(Check("seeds", False, f"{runs} seed{'' if runs == 1 else 's'} (a goal needs "
                                             f">= {MIN_SEEDS})", float(MIN_SEEDS - runs)))
        passed = sum(c.ok for cs in checks.values() for c in cs)
        total = sum(len(cs) for cs in checks.values())
        gap = sum(c.gap for cs in checks.values() for c in cs)
        slowest = min((e.get("speedup") or 0.0 for e in (lookup(summary, p, label) for p in problems) if e), default=0.0)
        key = (passed == total, passed, -gap, slowest)
        if best_key is None or key > best_key:
            best, best_key = Verdict(label, passed == total and total > 0, checks), key
    return best if best is not None else Verdict(None, False, {})


def within(name: str, measure: str, value: float | None, target: float | None, tolerance: float, *, unit: str = "",
           scale: float = 1.0, relative: bool = False, what: str = "retrained", diff_unit: str | None = None) -> Check:
    """``|value - target| <= tolerance`` (``relative``: ``<= tolerance x |target|``); the text shows ``measure`` and the
    numbers times ``scale`` with ``unit`` (their difference with ``diff_unit``, default ``unit``)."""
    if value is None or target is None:
        return Check(name, False, f"{measure}: no value", float("inf"))
    limit = tolerance * abs(target) if relative else tolerance
    gap = max(0.0, abs(value - target) - limit)
    diff = (f"{100 * (value - target) / abs(target):+.1f} %" if relative and target
            else f"{scale * (value - target):+.2f}{unit if diff_unit is None else diff_unit}")
    return Check(name, gap == 0.0, f"{measure} {scale * value:.2f}{unit} vs {what} {scale * target:.2f}{unit} ({diff})",
                 gap / (abs(limit) or 1.0))


def at_least(name: str, value: float | None, target: float, *, text: str) -> Check:
    """``value >= target``; ``text`` formats the value (``"{:.1f}x"``)."""
    if value is None:
        return Check(name, False, f"{name}: no value", float("inf"))
    return Check(name, value >= target, text.format(value), max(0.0, (target - value) / (abs(target) or 1.0)))
