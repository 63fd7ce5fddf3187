"""A scenario's report: the raw rows as JSON, a Markdown summary and PNG plots, in one folder.

Rows of the same (problem, method) over seeds are aggregated as mean and standard deviation.
Files written under ``out``: ``<scenario>.json`` (every row, the aggregates, the goals, the
environment), ``<scenario>.md`` and ``<scenario>.png`` (test accuracy against speed-up over
retraining, one panel per problem, with the original model and retraining drawn as references).
Files are written atomically.

The report's header states the run actually made (size, seeds, problems with their sizes,
methods, machine, time); each table flags a method that no shown measure tells apart from the
original model as ``≈ original: no-op`` (see :func:`noop_methods`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unlearnkit.atomic import atomic_write
from unlearnkit.scenarios.compare import ORIGINAL, RETRAIN, Row

MEASURES = ("test_accuracy", "corrected_accuracy", "distance", "agreement", "seconds", "speedup", "gradients", "hvps",
            "fit_seconds", "one_shot_seconds", "one_shot_speedup")
CACHED_NOTE = ("A `[cached]` row is amortised: its curvature is fitted once per model (column *fit s*, the same fit for "
               "every problem of that model) and reused; its *seconds* and *speed-up* are the request alone, and "
               "*one-shot* is the speed-up of fit plus request (a model that serves a single request). Rows marked "
               "`kfac` or `ekfac` (a network's K-FAC / EK-FAC curvature, fitted once per model) are amortised the "
               "same way; the other rows are one-shot already.")


@dataclass
class Goal:
    """A target of the scenario (e.g. "second-order within 0.5 points of retraining at >= 10x"), checked on the run."""

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
    environment: dict = field(default_factory=dict)  # the machine the run was made on; measured when empty
    tuning: dict = field(default_factory=dict)  # the tuned baselines' budget and settings (scenarios.tuning.Tuning.to_dict)
    commands: list = field(default_factory=list)  # the command lines that produced the rows (one per run merged)

    def aggregate(self) -> list[dict]:
        summary = aggregate(self.rows)
        if callable(self.derive):
            self.derive(summary)
        return summary

    def derived_keys(self) -> list[str]:
        return list(self.derive(aggregate(self.rows))) if callable(self.derive) else []

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    def machine(self, device=None) -> dict:
        """The run's environment: the stored one, else this process's (Python, torch, CPU, threads, accelerator,
        and ``device``, the one the run computed on: the CPU when None)."""
        if not self.environment:
            import torch

            self.environment = {
                "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(), "platform": platform.platform(),
                "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "device": str(torch.device(device)) if device is not None else "cpu"}
        return self.environment

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario, "size": self.size, "seeds": self.seeds, "seconds": self.seconds,
            "environment": self.machine(), "problems": self.problems, "goals": [g.to_dict() for g in self.goals],
            "summary": self.aggregate(), "rows": [r.to_dict() for r in self.rows], "tuning": self.tuning,
            "commands": list(self.commands),
        }

    @classmethod
    def from_dict(cls, data: dict, *, derive=None) -> "ScenarioResult":
        """A result back from its :meth:`to_dict` JSON (``derive``: the scenario's own, to recompute derived measures)."""
        fields = set(Row.__dataclass_fields__)
        rows = [Row(**{k: v for k, v in r.items() if k in fields}) for r in data["rows"]]
        return cls(data["scenario"], data["size"], list(data["seeds"]), rows,
                   goals=[Goal(g["name"], g["met"], g["detail"]) for g in data.get("goals", [])],
                   problems=data.get("problems", {}), seconds=float(data.get("seconds") or 0.0), derive=derive,
                   environment=dict(data.get("environment") or {}), tuning=dict(data.get("tuning") or {}),
                   commands=list(data.get("commands") or ([data["command"]] if data.get("command") else [])))


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


# ------------------------------------------------------------------------------ compared with doing nothing
NOOP_SHARE = 0.10
NOOP_FLOOR = 0.01
"""The no-op rule (here and in benchmark reports): a measure is within tolerance of the original model's when
``|m - m_original| <= max(floor, NOOP_SHARE * |m_retrained - m_original|)`` (see :func:`near_original`)."""
SHARES = ("test_accuracy", "corrected_accuracy", "agreement", "attack_success")
"""Measures that are shares in [0, 1]: their floor is ``NOOP_FLOOR`` absolute (one point); every
other measure's floor is ``NOOP_FLOOR`` relative to the original's value (1 %)."""
NOOP_FLAG = "≈ original: no-op"
NOOP_RULE = ("*≈ original: no-op* marks a method that, on every seed, is within tolerance of the original model on "
             "every measure of its row (test accuracy, accuracy on the corrected points, agreement with and distance "
             "to the retrained model, the scenario's own measures): each value is within max(1 point, "
             f"{100 * NOOP_SHARE:g} % of the original's gap to retraining) of the original model's (1 % of the "
             "original's value instead of 1 point for measures that are not shares), so within that tolerance nothing "
             "shown tells it apart from doing nothing; a row without the distance or a scenario measure (such as "
             "SISA's) is never marked")


def near_original(value: float, original: float, retrained: float, *, share: bool = True) -> bool:
    """Whether ``value`` is within tolerance of the original model's: ``|value - original| <= max(floor,
    NOOP_SHARE * |retrained - original|)``, the floor being ``NOOP_FLOOR`` (one point) for a share in [0, 1] and
    ``NOOP_FLOOR * |original|`` (1 %) otherwise."""
    floor = NOOP_FLOOR if share else NOOP_FLOOR * abs(original)
    return abs(value - original) <= max(floor, NOOP_SHARE * abs(retrained - original))


def noop_methods(rows: list[Row]) -> set[tuple[str, str]]:
    """``(problem, method)`` pairs indistinguishable from the original model.

    For each seed and each measure ``m`` a row has (``MEASURES`` that describe the model, and its
    efficacy measures) where the original and retrained rows of that seed have it too:
    ``|m - m_original| <= max(floor, NOOP_SHARE * |m_retrained - m_original|)`` (:func:`near_original`),
    the floor being ``NOOP_FLOOR`` for shares in [0, 1] (:data:`SHARES`) and ``NOOP_FLOOR *
    |m_original|`` for the others. A pair is flagged when this holds for every measure on every seed
    and, on every seed, the distance or an efficacy measure was among those compared (a failed row
    never is; nor is a row judged on the coarse shares alone, such as SISA's, which has neither).
    """
    refs = {(r.problem, r.seed, r.method): r for r in rows if r.method in (ORIGINAL, RETRAIN) and r.status == "ok"}
    verdict: dict[tuple[str, str], bool] = {}
    for r in rows:
        if r.method in (ORIGINAL, RETRAIN):
            continue
        key = (r.problem, r.method)
        o, z = refs.get((r.problem, r.seed, ORIGINAL)), refs.get((r.problem, r.seed, RETRAIN))
        ok = r.status == "ok" and o is not None and z is not None and verdict.get(key, True)
        compared, fine = 0, 0
        if ok:
            for name in ("test_accuracy", "corrected_accuracy", "agreement", "distance", *r.efficacy):
                vals = [x.efficacy.get(name) if name in r.efficacy else getattr(x, name) for x in (r, o, z)]
                if any(v is None or not math.isfinite(v) for v in vals):
                    continue
                compared += 1
                fine += name not in SHARES[:3]
                if not near_original(*vals, share=name in SHARES):
                    ok = False
                    break
        verdict[key] = ok and compared > 0 and fine > 0
    return {k for k, v in verdict.items() if v}


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


def run_description(result: ScenarioResult) -> list[str]:
    """Markdown lines stating the run actually made: size, seeds, problems (with their own sizes),
    methods, machine and time."""
    env = result.machine()
    methods = [m for m in result.methods() if m not in (ORIGINAL, RETRAIN)]
    device = str(env.get("device") or "")
    on_cpu = device.startswith("cpu")
    machine = [f"{env.get('cpus')} CPU cores" if env.get("cpus") else "",
               f"ran on the CPU; accelerator present, not used ({env['accelerator']})"
               if env.get("accelerator") and on_cpu else
               f"ran on {device} ({env['accelerator']})" if env.get("accelerator") and device else
               f"a machine with {env['accelerator']}" if env.get("accelerator") else
               "ran on the CPU (CPU-only machine)" if on_cpu and ("accelerator" in env or "+cpu" in str(env.get("torch", ""))) else
               "ran on the CPU" if on_cpu else
               f"device {device}" if device else
               "CPU-only machine" if "accelerator" in env or "+cpu" in str(env.get("torch", "")) else "",
               _n(env["threads"], "torch thread") if env.get("threads") else "",
               env.get("platform") or env.get("processor") or env.get("machine") or "",
               f"Python {env['python']}, torch {env['torch']}" if env.get("python") else ""]
    problems = list(dict.fromkeys(r.problem for r in result.rows))
    lines = ["**This run**:", "",
             f"- size `{result.size}`, {_n(len(result.seeds), 'seed')}: {', '.join(map(str, result.seeds))}",
             f"- {_n(len(problems), 'problem')} (sizes under each heading): {'; '.join(problems)}"]
    lines += [f"- methods besides the original and retraining: {', '.join(methods)}",
              f"- machine: {'; '.join(m for m in machine if m)}"
              + (f"; {result.seconds / 60:.1f} min of wall time in all" if result.seconds >= 120
                 else f"; {result.seconds:.0f} s of wall time in all" if result.seconds else "")]
    if result.commands:
        lines.append(f"- {'command' if len(result.commands) == 1 else 'commands (one per run, rows merged by seed)'}: "
                     + "; ".join(f"`{c}`" for c in result.commands))
    return lines


def _n(count: int, one: str, many: str | None = None) -> str:
    """``count`` and the word, plural unless one (``many``, else ``one`` + "s")."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def markdown(result: ScenarioResult, *, title: str, intro: str, image: str | None) -> str:
    summary = result.aggregate()
    noop = noop_methods(result.rows)
    efficacy_keys = list(dict.fromkeys([*(k for r in result.rows for k in r.efficacy), *result.derived_keys()]))
    lines = [f"# {title}", "", intro.strip(), "", *run_description(result), "",
             "Mean ± standard deviation over seeds. "
             "Accuracies in %. *distance* = `||theta - theta_retrained|| / ||theta_retrained||`; *agree* = share of "
             "test predictions equal to the retrained model's; *corrected* = accuracy on the corrected training points; "
             "speed-up = retraining time / method time, both measured in the same run. " + NOOP_RULE + ".", ""]
    cached = any(e.get("fit_seconds") is not None for e in summary)  # the one-time cost, shown only where there is one
    if cached:
        lines += [CACHED_NOTE, ""]
    if result.goals:
        lines += ["## Goals", ""]
        lines += [f"- **{'met' if g.met else 'missed'}** — {g.name}: {g.detail}" for g in result.goals]
        lines.append("")
    if image:
        lines += [f"![{result.scenario}]({image})", ""]
    header = ["method", "test acc", "corrected", "distance", "agree", *efficacy_keys, "seconds", "speed-up",
              *(("fit s", "one-shot") if cached else ()), "gradients", "HVPs", "vs original"]
    for problem in dict.fromkeys(e["problem"] for e in summary):
        info = result.problems.get(problem, {})
        lines += [f"## {problem}", ""]
        if info:
            lines += ["; ".join(f"{k}: {v}" for k, v in info.items()), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in (e for e in summary if e["problem"] == problem):
            if e.get("failed") == e["runs"]:
                status = e.get("status", "")
                lines.append(f"| {e['method']} | {status[:200] if status.startswith('not run') else 'failed: ' + status[:120]} |"
                             + " |" * (len(header) - 2))
                continue
            cells = [e["method"], _cell(e, "test_accuracy", "pct"), _cell(e, "corrected_accuracy", "pct"), _cell(e, "distance"),
                     _cell(e, "agreement", "pct"), *[_cell(e, k) for k in efficacy_keys], _cell(e, "seconds"),
                     "–" if e["method"] == ORIGINAL else _cell(e, "speedup", "x"),
                     *((_cell(e, "fit_seconds"), _cell(e, "one_shot_speedup", "x")) if cached else ()),
                     _cell(e, "gradients", "int"),
                     _cell(e, "hvps", "int"), NOOP_FLAG if (problem, e["method"]) in noop else ""]
            lines.append("| " + " | ".join(cells) + " |")
        flagged = [m for p, m in noop if p == problem]
        if flagged:
            lines += ["", f"Indistinguishable from the original model here (no-op): {', '.join(sorted(flagged))}."]
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
    if result.tuning:
        from unlearnkit.scenarios.tuning import budget_lines

        lines += budget_lines(result.tuning)
    if result.rules:
        lines += ["## Rules", "", result.rules.strip(), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
LOWER_IS_BETTER = {"exposure", "attack_success", "distance", "seconds", "residual", "bits_per_char"}
MARKERS = "osD^vPXhpH<>d8"
"""Markers of the methods; never ``*``, retraining's star."""


def figure(result: ScenarioResult, *, y: str = "test_accuracy", y_label: str = "test accuracy (%)"):
    """The scenario's plot as a matplotlib figure: ``y`` against speed-up over retraining (log
    scale), one panel per problem. Retraining is a black star at speed-up 1 with a dashed line at
    its level, the original model (no update, no time) a dotted line; a method flagged
    ``≈ original`` is drawn hollow. Every marker and line is in the legend, below the panels, whose
    title says which way is better."""
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    from unlearnkit.plots import figure as new_figure
    from unlearnkit.plots import fit_legend, freeze_layout, log_axis

    summary = result.aggregate()
    noop = noop_methods(result.rows)
    problems = list(dict.fromkeys(e["problem"] for e in summary))
    cols = min(3, len(problems))
    rows = math.ceil(len(problems) / cols)
    methods = [m for m in result.methods() if m not in (ORIGINAL, RETRAIN)]
    style = {m: (matplotlib.colormaps["tab10"](i % 10), MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}
    fig, axes = new_figure(max(6.4, 4.6 * cols), 3.5 * rows + 0.9, nrows=rows, ncols=cols, squeeze=False)
    scale = 100 if y.endswith("accuracy") else 1
    drawn: set[str] = set()
    for ax, problem in zip(axes.flat, problems):
        here = {e["method"]: e for e in summary if e["problem"] == problem}
        speeds = [1.0]
        for method, e in here.items():
            value = e.get(y)
            if value is None or method in (ORIGINAL, RETRAIN):
                continue
            speed = e.get("speedup")
            if speed is None or not speed > 0:
                continue
            colour, marker = style[method]
            hollow = (problem, method) in noop
            ax.scatter([speed], [scale * value], marker=marker, s=40, zorder=3, linewidths=1.2, edgecolors=colour,
                       facecolors="none" if hollow else colour)
            speeds.append(speed)
            drawn.add(method)
            if hollow:
                drawn.add(NOOP_FLAG)
        if here.get(ORIGINAL, {}).get(y) is not None:
            ax.axhline(scale * here[ORIGINAL][y], color="0.35", ls=":", lw=1.5, zorder=1)
            drawn.add(ORIGINAL)
        if here.get(RETRAIN, {}).get(y) is not None:
            level = scale * here[RETRAIN][y]
            ax.axhline(level, color="black", ls="--", lw=1, zorder=1)
            ax.scatter([1.0], [level], marker="*", s=110, color="black", zorder=4)
            drawn.add(RETRAIN)
        log_axis(ax, "x", speeds)
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))  # plain numbers, no "+9.7e1" offset
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("speed-up over retraining (log scale)", fontsize=8)
        ax.set_ylabel(y_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    handles = [Line2D([], [], color="black", marker="*", markersize=9, ls="--", lw=1, label="retraining (speed-up 1)"),
               Line2D([], [], color="0.35", ls=":", lw=1.5, label="original, no update")]
    handles = [h for h, key in zip(handles, (RETRAIN, ORIGINAL)) if key in drawn]
    handles += [Line2D([], [], color=style[m][0], marker=style[m][1], lw=0, markersize=6, label=m)
                for m in methods if m in drawn]
    if NOOP_FLAG in drawn:
        handles.append(Line2D([], [], color="0.3", marker="o", lw=0, markersize=6, markerfacecolor="none",
                              label=f"hollow: {NOOP_FLAG}"))
    better = "↘ (faster, lower)" if y in LOWER_IS_BETTER else "↗ (faster, higher)"
    fit_legend(fig, handles, ncol=5, loc="outside lower center", fontsize=8, frameon=False,
               title=f"better: {better}; retraining's level is the target", title_fontsize=8)
    fig.suptitle(result.scenario)
    freeze_layout(fig)
    return fig


def plot(result: ScenarioResult, path: Path, *, y: str = "test_accuracy", y_label: str = "test accuracy (%)") -> None:
    """:func:`figure` saved as a PNG at ``path`` (atomically)."""
    from unlearnkit.plots import pyplot

    fig = figure(result, y=y, y_label=y_label)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        pyplot().close(fig)


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
