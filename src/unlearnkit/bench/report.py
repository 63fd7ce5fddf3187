"""Aggregate a run folder into tables, ranks, tests and plots: Markdown, self-contained HTML, CSV.

* **Summary** per (problem, method): mean and standard deviation over the evaluation seeds of the
  accuracies (retain, forget, validation, test), the loss attack forget vs test and its
  indiscernibility, RetDev, RTE, seconds and distance to the retrained model; the original and
  retrained models as reference rows.
* **Ranks** per metric (RetDev, indiscernibility, RTE): methods ranked within each block (a
  problem, averaged over its seeds, when there are several problems; otherwise an evaluation
  seed), mean rank per method, the tie-corrected Friedman test of "all methods rank alike", and
  the Nemenyi critical difference (Demšar 2006) drawn as a CD plot.
* **Pareto front** of mean RetDev (lower is better) against mean RTE (higher is better) per problem,
  with the original model (no update: RetDev of its own, no cost) and retraining (RTE 1, RetDev 0)
  drawn as reference lines.
* **Compared with doing nothing**: a method is flagged ``≈ original: no-op`` when no measure the
  table shows tells it apart from the original model within a stated tolerance (see
  :func:`noop_methods`), and ``RetDev worse than original`` when its RetDev is above the original
  model's on every evaluation seed, paired by seed (see :func:`worse_methods`): keeping the
  original model would have been closer to retraining.
* **The run as made**: the header states the run's own data, seeds, trials, methods and machine
  (from the stored configuration and the runs' environments), and the changes from a named
  preset's defaults.
* **Failed cells**: a cell whose method raised is a result too: it is counted in the summary's
  ``failed`` column, left out of the means, ranks and fronts (a rank block where some method
  failed is skipped and counted), and listed with its error in every format.

Text that comes from the user (the configuration's name and description, protocol names, fixed
hyperparameter values, error messages) is escaped wherever it is rendered: backslash-escaped in
Markdown, HTML-escaped in the HTML page, ``$`` escaped in plot titles. Only the report's own
plots become images.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from unlearnkit.atomic import atomic_write, check_folder
from unlearnkit.bench.jobs import retdev
from unlearnkit.bench.runner import first_line
from unlearnkit.bench.store import Store
from unlearnkit.errors import BenchError
from unlearnkit.metrics.evaluate import _nan_to_none
from unlearnkit.scenarios.report import NOOP_FLAG, NOOP_SHARE, _n, near_original

METRICS = ("retdev", "indisc_test", "rte", "acc_retain", "acc_forget", "acc_val", "acc_test", "mia_test",
           "indisc_val", "seconds", "distance")
HIGHER = {"retdev": False, "indisc_test": True, "rte": True, "distance": False, "seconds": False}
RANKED = ("retdev", "indisc_test", "rte")
LABELS = {"retdev": "RetDev", "indisc_test": "Indisc (test)", "rte": "RTE", "acc_retain": "acc retain",
          "acc_forget": "acc forget", "acc_val": "acc val", "acc_test": "acc test", "mia_test": "MIA test",
          "indisc_val": "Indisc (val)", "seconds": "seconds", "distance": "distance"}


# ---------------------------------------------------------------------------- aggregation
def summarise(cells: list[dict], refs: list[dict], eval_seeds) -> list[dict]:
    """Mean/std per (problem, method) over ok cells; original and retrained rows from the references."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["problem"], c["method"]), []).append(c)
    out = []
    for problem in sorted({c["problem"] for c in cells} | {r["problem"] for r in refs}):
        own = [r for r in refs if r["problem"] == problem and r["seed"] in eval_seeds]
        if own:
            originals = [{**r["original"], "retdev": retdev(r["original"], r["retrained"])} for r in own]
            retrained = [{**r["retrained"], "seconds": r["retrain_seconds"], "rte": 1.0, "retdev": 0.0} for r in own]
            out.append(_entry(problem, "(original)", originals, len(own), 0))
            out.append(_entry(problem, "(retrained)", retrained, len(own), 0))
        for (p, method), rows in sorted(groups.items()):
            if p != problem:
                continue
            ok = [c.get("metrics") or {} for c in rows if c["status"] == "ok"]
            out.append(_entry(problem, method, ok, len(ok), len(rows) - len(ok)))
    return out


def _entry(problem, method, recs, n, failed) -> dict:
    e = {"problem": problem, "method": method, "n": n, "failed": failed}
    for k in METRICS:
        vals = [r[k] for r in recs if k in r and r[k] is not None and math.isfinite(r[k])]
        if vals:
            e[k] = float(np.mean(vals))
            e[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return e


NOOP_MEASURES = ("acc_retain", "acc_forget", "acc_val", "acc_test", "mia_test")
NOOP_RULE = (f"a method is *≈ original: no-op* when, on every evaluation seed, each of its accuracies (retain, forget, "
             f"validation, test) and its attack accuracy (forget vs test) is within max(1 point, "
             f"{100 * NOOP_SHARE:g} % of the original's gap to the retrained model on that seed) of the original "
             "model's: within that tolerance no measure the table shows tells it apart from doing nothing")
WORSE_FLAG = "RetDev worse than original"


def noop_methods(cells: list[dict], refs: list[dict], eval_seeds) -> dict[tuple[str, str], bool]:
    """``(problem, method) -> True`` where the method is indistinguishable from the original model.

    Indistinguishable means: on every evaluation seed with an ok cell (and no failed cell), for
    each measure ``m`` of :data:`NOOP_MEASURES` present for the method, the original and the
    retrained model of that seed, ``|m_method - m_original| <= max(NOOP_FLOOR, NOOP_SHARE *
    |m_retrained - m_original|)`` (:func:`~unlearnkit.scenarios.report.near_original`; every measure
    here is a share). The store keeps these measures for every cell and reference;
    parameters of the unlearned models are not kept, so no parameter distance enters the test.
    """
    ref = {(r["problem"], r["seed"]): r for r in refs if r["seed"] in eval_seeds}
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        if c["seed"] in eval_seeds:
            groups.setdefault((c["problem"], c["method"]), []).append(c)
    out = {}
    for key, group in groups.items():
        verdict = bool(group)
        for c in group:
            r = ref.get((c["problem"], c["seed"]))
            if c["status"] != "ok" or r is None:
                verdict = False
                break
            m, o, z = c.get("metrics") or {}, r["original"], r["retrained"]
            compared = 0
            for k in NOOP_MEASURES:
                vals = (m.get(k), o.get(k), z.get(k))
                if any(v is None or not math.isfinite(v) for v in vals):
                    continue
                compared += 1
                if not near_original(*vals):
                    verdict = False
            if not compared:
                verdict = False
            if not verdict:
                break
        out[key] = verdict
    return out


WORSE_RULE = (f"*{WORSE_FLAG}* when its RetDev is above the original model's on every evaluation seed, paired by "
              "seed (a mean above the original's on noise alone is not flagged): on those seeds keeping the original "
              "model would have been closer to retraining")


def worse_methods(cells: list[dict], refs: list[dict], eval_seeds) -> dict[tuple[str, str], bool]:
    """``(problem, method) -> True`` where the method's RetDev is above the original model's on every
    evaluation seed, compared seed by seed (the original's RetDev: its distance to that seed's retrained
    model). A method with a failed cell, or a seed without a reference, is not flagged."""
    ref = {(r["problem"], r["seed"]): r for r in refs if r["seed"] in eval_seeds}
    out: dict[tuple[str, str], bool] = {}
    for c in cells:
        if c["seed"] not in eval_seeds:
            continue
        key = (c["problem"], c["method"])
        r = ref.get((c["problem"], c["seed"]))
        value = (c.get("metrics") or {}).get("retdev") if c["status"] == "ok" else None
        if r is None or value is None or not math.isfinite(value):
            out[key] = False
            continue
        out[key] = out.get(key, True) and value > retdev(r["original"], r["retrained"])
    return out


def flag_summary(summary: list[dict], noop: dict[tuple[str, str], bool],
                 worse: dict[tuple[str, str], bool] | None = None) -> None:
    """Set ``vs_original`` on each method's summary entry: :data:`NOOP_FLAG`, :data:`WORSE_FLAG` or ""
    (``worse``: from :func:`worse_methods`)."""
    for e in summary:
        if e["method"].startswith("("):
            continue
        key = (e["problem"], e["method"])
        if noop.get(key):
            e["vs_original"] = NOOP_FLAG
        elif (worse or {}).get(key):
            e["vs_original"] = WORSE_FLAG
        else:
            e["vs_original"] = ""


def rank_blocks(cells: list[dict], metric: str) -> tuple[list[str], np.ndarray, dict]:
    """Methods, a (blocks x methods) matrix of ranks (1 = best, ties averaged) and how blocks were made.

    With two or more problems a block is one problem (the metric averaged over its evaluation
    seeds): problems are the independent units Demšar's test assumes. With one problem a block is
    one evaluation seed; the test then asks whether methods differ across initialisations of that
    one problem. Methods with no value at all (every cell failed) are left out and named in
    ``info``; blocks where some other method has no value are skipped.
    """
    from scipy.stats import rankdata

    values: dict[tuple, dict] = {}
    for c in cells:
        v = (c.get("metrics") or {}).get(metric) if c["status"] == "ok" else None
        if v is not None and math.isfinite(v):
            values.setdefault((c["problem"], c["seed"]), {})[c["method"]] = v
    problems = sorted({c["problem"] for c in cells})
    if len(problems) >= 2:
        per: dict[str, dict] = {}
        for (problem, _), vals in values.items():
            for method, v in vals.items():
                per.setdefault(problem, {}).setdefault(method, []).append(v)
        table = {p: {m: float(np.mean(v)) for m, v in ms.items()} for p, ms in per.items()}
        kind = "problems"
    else:
        table, kind = values, "evaluation seeds of one problem"
    everyone = sorted({c["method"] for c in cells})
    methods = [m for m in everyone if any(m in vals for vals in table.values())]
    dropped = [m for m in everyone if m not in methods]
    rows, skipped = [], 0
    for block in sorted(table):
        if all(m in table[block] for m in methods):  # a block where a method failed is not comparable
            x = np.array([table[block][m] for m in methods])
            rows.append(rankdata(-x if HIGHER.get(metric, True) else x))
        else:
            skipped += 1
    return (methods, np.asarray(rows).reshape(len(rows), len(methods)),
            {"blocks_are": kind, "dropped": dropped, "skipped_blocks": skipped})


def friedman(ranks: np.ndarray, alpha: float = 0.05) -> dict:
    """Friedman test on a rank matrix (tie-corrected) and the Nemenyi critical difference of mean ranks."""
    from scipy.stats import chi2, studentized_range

    n, k = ranks.shape
    out = {"blocks": int(n), "k": int(k), "alpha": alpha}
    if k < 2 or n < 2:
        out["note"] = "needs at least 2 methods and 2 blocks"
        return out
    mean = ranks.mean(axis=0)
    stat = 12 * n / (k * (k + 1)) * float(np.sum((mean - (k + 1) / 2) ** 2))
    ties = sum(float(np.sum(t ** 3 - t)) for t in (np.unique(row, return_counts=True)[1] for row in ranks))
    correction = 1 - ties / (n * (k ** 3 - k))
    if correction <= 0:  # every block a full tie: nothing to test
        out["note"] = "every block ties all methods"
        return out
    out["statistic"] = stat / correction
    out["p_value"] = float(chi2.sf(out["statistic"], k - 1))
    q = float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    out["critical_difference"] = q * math.sqrt(k * (k + 1) / (6 * n))
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (RetDev, RTE) no other point beats on both (lower RetDev, higher RTE)."""
    front = []
    for name, (d, r) in points.items():
        if not any((d2 <= d and r2 >= r) and (d2 < d or r2 > r) for n2, (d2, r2) in points.items() if n2 != name):
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


# ---------------------------------------------------------------------------- plots
def _png(fig, *, tight: bool = False) -> bytes:
    """``fig`` as PNG bytes, the figure closed: as laid out (:func:`unlearnkit.plots.save`), or cropped to what is
    drawn (``tight``: the critical-difference diagram)."""
    from unlearnkit.plots import pyplot, save

    buf = io.BytesIO()
    if tight:
        try:
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        finally:
            pyplot().close(fig)
    else:
        save(fig, buf, dpi=110)
    return buf.getvalue()


def cd_plot(methods: list[str], mean_ranks: np.ndarray, cd: float | None, title: str) -> bytes:
    """Demšar's critical-difference diagram: mean ranks on an axis, bars join methods within CD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(methods)
    order = np.argsort(mean_ranks)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(math.ceil(k / 2) + 0.6), 2.2)
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.25], color="black", lw=1)
        ax.text(r, 0.45, str(r), ha="center", fontsize=8)
    half = math.ceil(k / 2)
    for i, idx in enumerate(order):
        x = mean_ranks[idx]
        y = -(i % half) - 1.2
        left = i < half
        x_text = 0.5 if left else k + 0.5
        ax.plot([x, x, x_text], [0, y, y], color="0.3", lw=0.8)
        ax.text(x_text - 0.1 if left else x_text + 0.1, y, _mpl(f"{methods[idx]} ({x:.2f})"),
                ha="right" if left else "left", va="center", fontsize=8)
    if cd is not None and math.isfinite(cd):
        ax.plot([1, 1 + cd], [1.5, 1.5], color="tab:red", lw=2)
        ax.text(1 + cd / 2, 1.65, f"CD = {cd:.2f}", ha="center", fontsize=8, color="tab:red")
        level = 0
        ranks_sorted = mean_ranks[order]
        last_end = -1
        for i in range(k):
            j = i
            while j + 1 < k and ranks_sorted[j + 1] - ranks_sorted[i] < cd:
                j += 1
            if j > i and j > last_end:  # a maximal group of methods not significantly different
                ax.plot([ranks_sorted[i] - 0.03, ranks_sorted[j] + 0.03], [-0.35 - 0.25 * level] * 2, color="black", lw=3)
                level += 1
                last_end = j
    ax.set_title(_mpl(title), fontsize=10)
    ax.axis("off")
    return _png(fig, tight=True)


def pareto_figure(points: dict[str, tuple[float, float]], front: list[str], title: str, *,
                  original: float | None = None, noop=()):
    """The Pareto plot as a matplotlib figure: each method at (mean RTE, mean RetDev), the front
    joined in red, methods flagged ``≈ original`` drawn hollow, the original model (RetDev
    ``original``, no cost) as a dotted horizontal line and retraining (RTE 1, RetDev 0) as a
    dashed vertical line; every marker and line has a legend entry, outside the axes."""
    from matplotlib.lines import Line2D

    from unlearnkit.plots import figure, freeze_layout, log_axis, place_labels

    fig, ax = figure(8.6, 4.6)
    noop = set(noop)
    for name, (d, r) in points.items():
        on = name in front
        colour = "tab:red" if on else "tab:blue"
        hollow = name in noop
        ax.scatter([r], [d], s=34 if on else 22, zorder=3, linewidths=1.2, edgecolors=colour,
                   facecolors="none" if hollow else colour)
    pts = sorted((points[n][1], points[n][0]) for n in front)
    if len(pts) > 1:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red", lw=1, zorder=2)
    handles = [Line2D([], [], color="tab:red", marker="o", lw=1, markersize=6, label="Pareto front"),
               Line2D([], [], color="tab:blue", marker="o", lw=0, markersize=5, label="other methods")]
    if noop & set(points):
        handles.append(Line2D([], [], color="0.3", marker="o", lw=0, markersize=5, markerfacecolor="none",
                              label=NOOP_FLAG))
    ax.axvline(1.0, color="black", ls="--", lw=1, zorder=1)
    handles.append(Line2D([], [], color="black", ls="--", lw=1, label="retraining (RTE 1, RetDev 0)"))
    ys = [d for d, _ in points.values()]
    if original is not None and math.isfinite(original):
        ax.axhline(original, color="0.35", ls=":", lw=1.5, zorder=1)
        handles.append(Line2D([], [], color="0.35", ls=":", lw=1.5,
                              label=f"original, no update (RetDev {original:.3g}; above it: worse than doing nothing)"))
        ys.append(original)
    log_axis(ax, "x", [r for _, r in points.values()] + [1.0])
    if all(d > 0 for d in ys):
        log_axis(ax, "y", ys)  # outliers (a collapsed model) would squash the rest on a linear axis
        ylabel = "RetDev (log scale; lower is better)"
    else:
        ylabel = "RetDev (lower is better)"
    ax.set_xlabel("RTE = retraining seconds / method seconds (log scale; higher is better)")
    ax.set_ylabel(ylabel)
    ax.set_title(_mpl(title), fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False,
               title="better: ↘ (right and down)", title_fontsize=8)
    # legend lines long enough for their labels: wrap the longest
    for text in fig.legends[0].get_texts():
        label = text.get_text()
        if len(label) > 34 and ";" in label:
            text.set_text(label.replace("; ", ";\n", 1))
    freeze_layout(fig)
    place_labels(ax, [(r, d) for d, r in points.values()], [_mpl(n) for n in points])
    return fig


def pareto_plot(points: dict[str, tuple[float, float]], front: list[str], title: str, *,
                original: float | None = None, noop=()) -> bytes:
    """:func:`pareto_figure` as PNG bytes."""
    return _png(pareto_figure(points, front, title, original=original, noop=noop))


def _mpl(text: str) -> str:
    """Plot text shown literally: ``$`` would start matplotlib's math mode (and fail on an odd count)."""
    return _clean(text).replace("$", r"\$")


# ---------------------------------------------------------------------------- escaping user text
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")
_MD_LINE_START = re.compile(r"^([-+=#]|\d+[.)])")


def _clean(text) -> str:
    """``text`` as one line without control characters (ESC, NUL, ...), each shown as U+FFFD."""
    return _CONTROL.sub("\ufffd", _LINE_BREAKS.sub(" ", str(text)))


def _md(text) -> str:
    """User text as literal Markdown on one line: the characters that make links and images
    (``[``, ``]``), raw HTML or autolinks (``<``, ``>``), code, bold and table cells (`````, ``*``,
    ``|``) and the escape character itself are backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _clean(text))


def _md_lines(text) -> list[str]:
    """User text of several lines (a description) as literal Markdown lines: each escaped as
    :func:`_md` does, leading blanks dropped, a leading list, quote or heading marker escaped."""
    out = []
    for line in _LINE_BREAKS.split(str(text)):
        line = _md(line).strip()
        out.append(_MD_LINE_START.sub(lambda m: m[1][:-1] + "\\" + m[1][-1], line))
    return out


# ---------------------------------------------------------------------------- report
def build(out: str | Path) -> dict:
    """Everything the report shows, as plain data plus PNG bytes."""
    with Store(out) as store:
        cfg = store.config()
        cells, refs, studies, runs = store.cells(), store.ref_metrics(), store.studies(), store.runs()
    if not cells:
        raise BenchError(f"{out} has no evaluated cells yet: run (or resume) `unlearnkit bench run` first.")
    return assemble(cfg, cells, refs, studies, runs)


def assemble(cfg: dict, cells: list[dict], refs: list[dict], studies: list[dict], runs: list[dict]) -> dict:
    """The report's data and plots from a run's stored records (a store, or a saved ``report.json``)."""
    eval_seeds = set(cfg["eval_seeds"])
    summary = summarise(cells, refs, eval_seeds)
    flag_summary(summary, noop_methods(cells, refs, eval_seeds), worse_methods(cells, refs, eval_seeds))
    ranks, plots = {}, {}
    for metric in RANKED:
        methods, matrix, info = rank_blocks(cells, metric)
        if matrix.shape[0] == 0 or not methods:
            continue
        test = friedman(matrix)
        mean = matrix.mean(axis=0)
        ranks[metric] = {"methods": methods, "mean_ranks": [float(v) for v in mean], **info, **test}
        if len(methods) >= 2:
            plots[f"cd-{metric}.png"] = cd_plot(methods, mean, test.get("critical_difference"),
                                                f"Mean rank by {LABELS[metric]} over {matrix.shape[0]} blocks "
                                                f"(Friedman p = {test.get('p_value', float('nan')):.3g})")
    fronts = {}
    for problem in sorted({c["problem"] for c in cells}):
        here = [e for e in summary if e["problem"] == problem]
        points = {e["method"]: (e["retdev"], e["rte"]) for e in here
                  if not e["method"].startswith("(") and "retdev" in e and "rte" in e and e["rte"] > 0}
        if points:
            front = pareto_front(points)
            fronts[problem] = front
            original = next((e.get("retdev") for e in here if e["method"] == "(original)"), None)
            noop = [e["method"] for e in here if e.get("vs_original") == NOOP_FLAG]
            plots[f"pareto-{_slug(problem)}.png"] = pareto_plot(points, front, f"{problem}: RetDev against RTE",
                                                                original=original, noop=noop)
    return {"config": cfg, "summary": summary, "ranks": ranks, "pareto": fronts, "studies": studies,
            "runs": runs, "cells": cells, "refs": refs, "plots": plots}


def load_saved(path: str | Path) -> dict:
    """A report rebuilt (tables, flags and plots recomputed) from the ``report.json`` of an earlier
    :func:`write`, without the run's results store."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        parts = [saved[k] for k in ("config", "cells", "refs", "studies", "runs")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a report.json written by `unlearnkit bench report --format json` "
                         f"({type(exc).__name__}: {exc}).") from None

    def numbers(rec):  # report.json stores NaN as null
        return {k: (float("nan") if v is None else v) for k, v in rec.items()} if isinstance(rec, dict) else rec

    cfg, cells, refs, studies, runs = parts
    for c in cells:
        if c.get("metrics"):
            c["metrics"] = numbers(c["metrics"])
    for r in refs:
        r["original"], r["retrained"] = numbers(r["original"]), numbers(r["retrained"])
    return assemble(cfg, cells, refs, studies, runs)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


def _fmt(e: dict, key: str) -> str:
    if key not in e:
        return "-"
    v, s = e[key], e.get(f"{key}_std", 0.0)
    if key in ("rte", "seconds"):
        return f"{v:.3g} ± {s:.2g}"
    return f"{v:.3f} ± {s:.3f}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def preset_changes(cfg: dict) -> list[tuple[str, object, object]]:
    """``(key, preset value, run value)`` for every setting where a run of a shipped preset (the
    configuration's name is a preset's) differs from the preset's defaults; [] otherwise."""
    from unlearnkit.bench.config import PRESETS, load_config

    if cfg.get("name") not in PRESETS:
        return []
    try:
        preset = load_config(cfg["name"], check_data=False).to_dict()
    except Exception:  # noqa: BLE001 - a preset this version cannot read: nothing to compare with
        return []
    ours, theirs = _flat(cfg), _flat(preset)
    skip = {"description", "factory_path"}
    return [(k, theirs.get(k), ours.get(k)) for k in sorted(set(ours) | set(theirs))
            if k not in skip and theirs.get(k) != ours.get(k) and (theirs.get(k) or ours.get(k))]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_description(rep: dict) -> list[str]:
    """Markdown lines stating the run actually made: its data, seeds, search, methods, training and
    machine, from the stored configuration and the runs' recorded environments."""
    cfg = rep["config"]
    rows = "all rows" if not cfg["rows"] else f"{cfg['rows']:,} rows"
    trials = (f"{cfg['trials']} {_md(cfg['sampler'])} trials per method and problem on tuning seeds "
              f"{', '.join(map(str, cfg['tuning_seeds']))}" if cfg["trials"] else "no search (default hyperparameters)")
    training = _training(cfg)
    lines = ["**This run**:", "",
             f"- data {_md(', '.join(cfg['datasets']))} ({rows}, {100 * cfg['val_fraction']:g} % for validation, split "
             f"seed {cfg['split_seed']}); models {_md(', '.join(cfg['models']))}"
             + (f"; training: {training}" if training else "")
             + f"; protocols {_md(', '.join(_protocol_label(p) for p in cfg['protocols']))}",
             f"- {len(cfg['methods'])} methods: {_md(', '.join(cfg['methods']))}",
             f"- evaluation seeds {', '.join(map(str, cfg['eval_seeds']))}; {trials}"]
    envs = [r.get("env") or {} for r in rep.get("runs", [])]
    env = next((e for e in reversed(envs) if e), {})
    machine = []
    if env:
        device = env.get("device", cfg.get("device", "cpu"))
        machine.append("CPU only" if str(device).startswith("cpu")
                       else f"device {_md(device)} ({_md(env.get('device_name', ''))})")
        pools = []
        for i, e in enumerate(envs):
            if not e.get("workers"):
                continue
            # runs record their own threads per worker; a store's configuration holds the first run's
            threads = e.get("threads_per_worker", cfg.get("threads_per_worker", 1) if i == 0 else None)
            pool = (f"{_n(e['workers'], 'worker process', 'worker processes')} x "
                    + (_n(threads, "torch thread") if threads else "torch threads not recorded"))
            if not pools or pools[-1] != pool:
                pools.append(pool)
        if len(pools) == 1:
            machine.append(pools[0])
        elif pools:
            machine.append("runs: " + ", then ".join(pools))
        machine += [_md(env["platform"])] if env.get("platform") else []
        machine += [f"Python {_md(env['python'])}, torch {_md(env['torch'])}"] if env.get("python") else []
    else:
        machine.append(f"device {_md(cfg.get('device', 'cpu'))}")
    spent = sum(r["finished"] - r["started"] for r in rep.get("runs", []) if r.get("finished") and r.get("started"))
    if spent:
        machine.append(f"{_duration(spent)} of wall time over {_n(len(rep['runs']), 'run')}")
    lines.append(f"- machine: {'; '.join(machine)}")
    changes = preset_changes(cfg)
    if changes:
        shown = "; ".join(f"{_md(k)} {_md(_short_value(a))} → {_md(_short_value(b))}" for k, a, b in changes[:12])
        more = f" and {len(changes) - 12} more" if len(changes) > 12 else ""
        lines.append(f"- changed from the preset `{_md(cfg['name'])}`: {shown}{more}")
    return lines


def _training(cfg: dict) -> str:
    """How each model was trained, per recipe: ``auto`` stated as the optimizer each model picks."""
    recipes = cfg.get("recipes") or {}
    if not recipes:
        return ""
    try:
        from unlearnkit.models import MODELS
        from unlearnkit.training import NEWTON_MAX_PARAMS
    except ImportError:  # pragma: no cover
        MODELS, NEWTON_MAX_PARAMS = {}, 2000
    factories = cfg.get("factories") or {}

    def used(recipe: dict, model: str) -> str:
        opt = recipe.get("optimizer")
        adam = (f"{recipe.get('epochs')} epochs of {{}} (lr {recipe.get('lr')}, batch {recipe.get('batch_size')})")
        if opt == "auto":
            convex = model not in factories and bool(getattr(MODELS.get(model), "convex", False))
            if convex:
                return f"Newton (L-BFGS above {NEWTON_MAX_PARAMS:,} parameters), to convergence"
            return adam.format("Adam")
        if opt in ("newton", "lbfgs"):
            return f"{'Newton' if opt == 'newton' else 'L-BFGS'}, to convergence"
        return adam.format(_md(opt))

    parts = []
    for name, recipe in recipes.items():
        where = "" if name == "default" else f"on {_md(name)}, "
        if name == "default" and len(recipes) > 1 and len(recipes) - 1 >= len(cfg.get("datasets", [])):
            continue  # every data set has its own recipe
        parts.append(where + ", ".join(f"{_md(m)}: {used(recipe, m)}" for m in cfg.get("models", [])))
    return "; ".join(parts)


def _short_value(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def markdown(rep: dict, images: dict[str, str]) -> str:
    cfg = rep["config"]
    lines = [f"# Benchmark report: {_md(cfg['name'])}", "", *run_description(rep), ""]
    if cfg.get("description"):
        changed = bool(preset_changes(cfg))
        lines += [("The preset's description (its defaults; where this run differs, the list above holds):"
                   if changed else "Description:"), "", *_md_lines(cfg["description"]), ""]
    lines += ["RetDev = Σ over retain, forget, test of |acc / acc_retrained − 1| (lower is better); "
              "Indisc = 1 − |2·MIA − 1| of the loss attack forget vs test (1 is ideal); "
              "RTE = retraining seconds of the same seed / the method's seconds. Mean ± standard deviation over the evaluation seeds.", "",
              f"*vs original*: {NOOP_RULE}; {WORSE_RULE}.", ""]
    cols = ("retdev", "indisc_test", "rte", "acc_retain", "acc_forget", "acc_val", "acc_test", "mia_test", "distance")
    for problem in sorted({e["problem"] for e in rep["summary"]}):
        lines += [f"## {_md(problem)}", "", "| method | n | " + " | ".join(LABELS[c] for c in cols) + " | failed | vs original |",
                  "|---|---:|" + "---:|" * len(cols) + "---:|---|"]
        rows = [e for e in rep["summary"] if e["problem"] == problem]
        rows.sort(key=lambda e: (not e["method"].startswith("("), e.get("retdev", math.inf)))
        for e in rows:
            lines.append(f"| {_md(e['method'])} | {e['n']} | " + " | ".join(_fmt(e, c) for c in cols)
                         + f" | {e['failed']} | {e.get('vs_original', '')} |")
        lines += ["", *_verdict(rows)]
        failed_here = sum(e["failed"] for e in rows)
        if failed_here:
            lines += ["", f"{failed_here} cell(s) failed here: left out of the means, ranks and the Pareto front; "
                      "their errors are listed under Failed cells."]
        if problem in rep["pareto"]:
            lines += ["", f"Pareto front (RetDev against RTE): {_md(', '.join(rep['pareto'][problem]))}.", "",
                      f"![Pareto front]({images[f'pareto-{_slug(problem)}.png']})"]
        lines.append("")
    lines += ["## Ranks", ""]
    for metric, r in rep["ranks"].items():
        order = np.argsort(r["mean_ranks"])
        ranking = ", ".join(f"{_md(r['methods'][i])} {r['mean_ranks'][i]:.2f}" for i in order)
        test = (f"Friedman χ² = {r['statistic']:.2f}, p = {r['p_value']:.3g}; Nemenyi CD = {r['critical_difference']:.2f} "
                f"at α = {r['alpha']}" if "p_value" in r else r.get("note", ""))
        dropped = f" Left out (every cell failed): {_md(', '.join(r['dropped']))}." if r["dropped"] else ""
        if r.get("skipped_blocks"):
            dropped += f" {r['skipped_blocks']} block(s) skipped: some method failed there."
        lines += [f"**{LABELS[metric]}** over {r['blocks']} blocks ({r['blocks_are']}): {ranking}. {test}.{dropped}", ""]
        key = f"cd-{metric}.png"
        if key in images:
            lines += [f"![CD plot {metric}]({images[key]})", ""]
    lines += ["## Chosen hyperparameters", "", "| problem | method | trials | chosen | objectives (retain, forget, val, MIA) |",
              "|---|---|---:|---|---|"]
    for s in rep["studies"]:
        obj = s.get("objectives")
        obj_text = ", ".join(f"{v:.3f}" for v in obj.values()) if isinstance(obj, dict) else "-"
        chosen = _md(", ".join(f"{k}={_short(v)}" for k, v in sorted(s["chosen"].items())) or "defaults")
        lines.append(f"| {_md(s['problem'])} | {_md(s['method'])} | {s['n_trials']} | {chosen} | {obj_text} |")
    failed = [c for c in rep["cells"] if c["status"] != "ok"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- {_md(c['problem'])} {_md(c['method'])} seed {c['seed']}: {_md(first_line(c.get('error')))}"
                  for c in failed]
    lines += ["", "## Runs", ""]
    lines += [f"- run {r['id']}: {_md(r['status'])}, {_md(r['executor'])} executor" for r in rep["runs"]]
    return "\n".join(lines) + "\n"


def _verdict(rows: list[dict]) -> list[str]:
    """One sentence on how the methods compare with doing nothing (the original model)."""
    methods = [e for e in rows if not e["method"].startswith("(") and "retdev" in e]
    original = next((e for e in rows if e["method"] == "(original)"), None)
    if not methods or original is None or "retdev" not in original:
        return []
    noop = [e["method"] for e in methods if e.get("vs_original") == NOOP_FLAG]
    worse = [e["method"] for e in methods if e.get("vs_original") == WORSE_FLAG]
    text = (f"**Compared with doing nothing**: the original model's mean RetDev is {original['retdev']:.3f}; "
            f"{len(worse)} of {len(methods)} methods end farther from retraining than the original on every "
            "evaluation seed")
    text += f" ({_md(', '.join(worse))})" if worse and len(worse) < len(methods) else ""
    if len(worse) == len(methods):
        text += " — every method: here, doing nothing wins on RetDev"
    text += "."
    if noop:
        text += f" Indistinguishable from the original (no-op): {_md(', '.join(noop))}."
    return [text]


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _protocol_label(p: dict) -> str:
    return p.get("name") or (f"{p['kind']}-{p['fraction']:g}" if not p.get("classes") else f"{p['kind']}-classes")


def write(out: str | Path, target: str | Path | None = None, formats=("md", "html", "csv")) -> list[Path]:
    """Write ``report.md`` (+ PNGs), ``report.html`` (PNGs embedded) and CSVs; returns the paths."""
    unknown = set(formats) - {"md", "html", "csv", "json"}
    if unknown:
        raise BenchError(f"Unknown report format(s) {sorted(unknown)}; valid: md, html, csv, json.")
    if target is not None:
        check_folder(target, option="--to")
    return render(build(out), Path(target or out), formats)


def render(rep: dict, target: str | Path, formats=("md", "html", "csv")) -> list[Path]:
    """Write a built report (:func:`build`, :func:`load_saved`) under ``target``; returns the paths."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        for name, png in rep["plots"].items():
            written.append(atomic_write(target / name, lambda tmp, b=png: Path(tmp).write_bytes(b)))
        text = markdown(rep, {n: n for n in rep["plots"]})
        written.append(atomic_write(target / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    if "html" in formats:
        images = {n: "data:image/png;base64," + base64.b64encode(b).decode() for n, b in rep["plots"].items()}
        page = to_html(markdown(rep, {n: n for n in rep["plots"]}), rep["config"]["name"], images=images)
        written.append(atomic_write(target / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8")))
    if "csv" in formats:
        written.append(_csv(target / "summary.csv", rep["summary"]))
        long = [{"problem": c["problem"], "method": c["method"], "seed": c["seed"], "status": c["status"],
                 **(c.get("metrics") or {}), "params": json.dumps(c.get("params") or {}, sort_keys=True),
                 "error": c.get("error") or ""} for c in rep["cells"]]
        written.append(_csv(target / "cells.csv", long))
    if "json" in formats:
        data = _nan_to_none({k: v for k, v in rep.items() if k not in ("plots",)})
        written.append(atomic_write(target / "report.json", lambda tmp: Path(tmp).write_text(
            json.dumps(data, indent=1, default=str, allow_nan=False))))
    return written


def _csv(path: Path, records: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in records for k in r))

    def write_rows(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(records)

    return atomic_write(path, write_rows)


_IMAGE_LINE = re.compile(r"^!\[([^\]\\]*)\]\(([^()\s\\]+)\)$")


def to_html(md: str, title: str, *, images: dict[str, str] | None = None) -> str:
    """A small rendering of the report's Markdown as HTML (headings, paragraphs, tables, lists).

    Every piece of text is HTML-escaped (quotes included) after Markdown backslash escapes are
    resolved, so escaped user text shows literally. A line ``![alt](name)`` becomes an image only
    when ``name`` is one of the report's own plots (a key of ``images``, mapped to the ``src`` to
    embed); any other such line is shown as text.
    """
    images = images or {}
    body, table, items = [], [], []

    def flush():
        if table:
            rows = [_split_row(r) for r in table if not set(r.replace("|", "").strip()) <= set("-:")]
            head, *rest = rows
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "</tbody></table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            if items:
                flush()
            table.append(line)
            continue
        if line.startswith("- "):
            if table:
                flush()
            items.append(line[2:])
            continue
        flush()
        image = _IMAGE_LINE.match(line)
        if image and image[2] in images:
            body.append(f'<p><img alt="{html.escape(image[1], quote=True)}" '
                        f'src="{html.escape(images[image[2]], quote=True)}"></p>')
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            body.append(f"<h{level}>{_inline(line.lstrip('#'))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(_clean(title), quote=True)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _split_row(row: str) -> list[str]:
    """The cells of a Markdown table row, split at the pipes that are not backslash-escaped."""
    cells, current, i = [], "", 0
    row = row.strip()
    while i < len(row):
        ch = row[i]
        if ch == "\\" and i + 1 < len(row):
            current += row[i:i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(current)
            current = ""
        else:
            current += ch
        i += 1
    cells.append(current)
    if cells and not cells[0].strip():
        cells = cells[1:]
    if cells and not cells[-1].strip():
        cells = cells[:-1]
    return cells


def _inline(text: str) -> str:
    """One line of the report's Markdown as HTML: backslash escapes resolved, ``**`` as bold,
    every character HTML-escaped (quotes included)."""
    out, bold, i = [], False, 0
    text = _clean(text).strip()
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and not text[i + 1].isalnum() and text[i + 1].isascii():
            out.append(html.escape(text[i + 1], quote=True))
            i += 2
        elif text.startswith("**", i):
            out.append("</b>" if bold else "<b>")
            bold = not bold
            i += 2
        else:
            out.append(html.escape(text[i], quote=True))
            i += 1
    if bold:
        out.append("</b>")
    return "".join(out)
