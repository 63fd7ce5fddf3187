"""A scenario's report: the raw rows as JSON, a Markdown summary and PNG plots, in one folder.

Rows of the same (problem, method) over seeds are aggregated as mean and standard deviation.
Files written under ``out``: ``<scenario>.json`` (every row, the aggregates, the goals, the
environment), ``<scenario>.md`` and ``<scenario>.png`` (test accuracy against speed-up over
retraining, one panel per problem). Files are written atomically.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unlearnkit.atomic import atomic_write
from unlearnkit.scenarios.compare import ORIGINAL, RETRAIN, Row

MEASURES = ("test_accuracy", "corrected_accuracy", "distance", "agreement", "seconds", "speedup", "gradients", "hvps")


@dataclass
class Goal:
    """A target the issue sets (e.g. "second-order within 0.5 points of retraining at >= 10x"), checked on the run."""

    name: str
    met: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "met": bool(self.met), "detail": self.detail}


@dataclass
class ScenarioResult:
    """Everything a scenario run produced."""

    scenario: str
    size: str
    seeds: list[int]
    rows: list[Row]
    goals: list[Goal] = field(default_factory=list)
    problems: dict = field(default_factory=dict)
    rules: str = ""
    seconds: float = 0.0
    derive: object = None  # derive(summary) -> new keys: scenario measures computed across methods (e.g. restored)

    def aggregate(self) -> list[dict]:
        summary = aggregate(self.rows)
        if callable(self.derive):
            self.derive(summary)
        return summary

    def derived_keys(self) -> list[str]:
        return list(self.derive(aggregate(self.rows))) if callable(self.derive) else []

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    def to_dict(self) -> dict:
        import torch

        return {
            "scenario": self.scenario, "size": self.size, "seeds": self.seeds, "seconds": self.seconds,
            "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                            "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
            "problems": self.problems, "goals": [g.to_dict() for g in self.goals],
            "summary": self.aggregate(), "rows": [r.to_dict() for r in self.rows],
        }


def _stats(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def aggregate(rows: list[Row]) -> list[dict]:
    """Mean and standard deviation over seeds of every measure, per (problem, method), in first-seen order."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.problem, r.method), []).append(r)
    out = []
    for (problem, method), group in groups.items():
        ok = [r for r in group if r.status == "ok"]
        entry = {"problem": problem, "method": method, "runs": len(group), "failed": len(group) - len(ok)}
        for m in MEASURES:
            entry[m], entry[m + "_std"] = _stats([getattr(r, m) for r in ok])
        for key in dict.fromkeys(k for r in ok for k in r.efficacy):
            entry[key], entry[key + "_std"] = _stats([r.efficacy.get(key) for r in ok])
        if len(ok) < len(group):
            entry["status"] = next(r.status for r in group if r.status != "ok")
        out.append(entry)
    return out


def lookup(summary: list[dict], problem: str, method: str) -> dict | None:
    return next((e for e in summary if e["problem"] == problem and e["method"] == method), None)


# ----------------------------------------------------------------------------------------- Markdown
def _fmt(value, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "x":
        return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"
    if kind == "int":
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.3f}"


def _cell(entry: dict, key: str, kind: str = "") -> str:
    mean, std = entry.get(key), entry.get(key + "_std")
    text = _fmt(mean, kind)
    if mean is not None and std and entry["runs"] > 1 and kind not in ("int", "x"):
        text += f" ± {_fmt(std, kind)}"
    return text


def markdown(result: ScenarioResult, *, title: str, intro: str, image: str | None) -> str:
    summary = result.aggregate()
    efficacy_keys = list(dict.fromkeys([*(k for r in result.rows for k in r.efficacy), *result.derived_keys()]))
    lines = [f"# {title}", "", intro.strip(), "",
             f"Size `{result.size}`, seeds {', '.join(map(str, result.seeds))}; mean ± standard deviation over seeds. "
             "Accuracies in %. *distance* = `||theta - theta_retrained|| / ||theta_retrained||`; *agree* = share of "
             "test predictions equal to the retrained model's; *corrected* = accuracy on the corrected training points; "
             "speed-up = retraining time / method time, both measured in the same run.", ""]
    if result.goals:
        lines += ["## Goals", ""]
        lines += [f"- **{'met' if g.met else 'missed'}** — {g.name}: {g.detail}" for g in result.goals]
        lines.append("")
    if image:
        lines += [f"![{result.scenario}]({image})", ""]
    header = ["method", "test acc", "corrected", "distance", "agree", *efficacy_keys, "seconds", "speed-up", "gradients", "HVPs"]
    for problem in dict.fromkeys(e["problem"] for e in summary):
        info = result.problems.get(problem, {})
        lines += [f"## {problem}", ""]
        if info:
            lines += ["; ".join(f"{k}: {v}" for k, v in info.items()), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in (e for e in summary if e["problem"] == problem):
            if e.get("failed") == e["runs"]:
                lines.append(f"| {e['method']} | failed: {e.get('status', '')[:120]} |" + " |" * (len(header) - 2))
                continue
            cells = [e["method"], _cell(e, "test_accuracy", "pct"), _cell(e, "corrected_accuracy", "pct"), _cell(e, "distance"),
                     _cell(e, "agreement", "pct"), *[_cell(e, k) for k in efficacy_keys], _cell(e, "seconds"),
                     "–" if e["method"] == ORIGINAL else _cell(e, "speedup", "x"), _cell(e, "gradients", "int"),
                     _cell(e, "hvps", "int")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    settings = {}
    for r in result.rows:
        if r.settings and r.status == "ok" and (r.problem, r.method) not in settings:
            settings[(r.problem, r.method)] = r.settings
    if settings:
        lines += ["## What the rules chose (first seed)", ""]
        for (problem, method), s in settings.items():
            lines.append(f"- {problem} / {method}: `{json.dumps(s, sort_keys=True, default=str)[:400]}`")
        lines.append("")
    if result.rules:
        lines += ["## Rules", "", result.rules.strip(), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
def plot(result: ScenarioResult, path: Path, *, y: str = "test_accuracy", y_label: str = "test accuracy (%)") -> None:
    """Test accuracy (or ``y``) against speed-up over retraining, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result.aggregate()
    problems = list(dict.fromkeys(e["problem"] for e in summary))
    cols = min(3, len(problems))
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    methods = result.methods()
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, problem in zip(axes.flat, problems):
        for e in (e for e in summary if e["problem"] == problem):
            value = e.get(y)
            if value is None:
                continue
            scale = 100 if y.endswith("accuracy") else 1
            if e["method"] == ORIGINAL:
                ax.axhline(scale * value, color="grey", ls=":", lw=1, label="original")
                continue
            if e["method"] == RETRAIN:
                ax.axhline(scale * value, color="black", ls="--", lw=1, label="retrain")
            speed = e.get("speedup") or 1.0
            ax.scatter([speed], [scale * value], color=colours[e["method"]], s=36, label=e["method"] if e["method"] != RETRAIN else None,
                       zorder=3)
        ax.set_xscale("log")
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("speed-up over retraining")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle(result.scenario)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write(result: ScenarioResult, out: Path, *, title: str, intro: str, y: str = "test_accuracy",
          y_label: str = "test accuracy (%)") -> dict[str, Path]:
    """Write ``<scenario>.json``, ``<scenario>.png`` and ``<scenario>.md`` under ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{result.scenario}.json", "png": out / f"{result.scenario}.png", "md": out / f"{result.scenario}.md"}
    _write_text(paths["json"], json.dumps(result.to_dict(), indent=1, default=str))
    plot(result, paths["png"], y=y, y_label=y_label)
    _write_text(paths["md"], markdown(result, title=title, intro=intro, image=paths["png"].name))
    return paths
