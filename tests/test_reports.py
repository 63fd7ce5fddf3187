"""Reports say what a reader should see: the original model on every plot and flagged in the
tables, plots that are readable (legend, ticks, labels, nothing cut off) and headers that state
the run actually made. Built from synthetic stored results: nothing is trained here."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from unlearnkit.bench import report as bench_report
from unlearnkit.bench.config import load_config
from unlearnkit.bench.jobs import retdev
from unlearnkit.bench.store import Store
from unlearnkit.plots import nice_log_ticks, plain, pyplot
from unlearnkit.scenarios import report as scenario_report
from unlearnkit.scenarios.compare import Row

# --------------------------------------------------------------------------- figure checks


def _texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _inside_figure(fig) -> list[str]:
    """Texts and legends that extend beyond the figure (what the saved PNG would cut off)."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for artist in _texts(fig) + list(fig.legends):
        b = artist.get_window_extent(renderer)
        if b.x0 < box.x0 - 0.5 or b.y0 < box.y0 - 0.5 or b.x1 > box.x1 + 0.5 or b.y1 > box.y1 + 0.5:
            out.append(getattr(artist, "get_text", lambda: type(artist).__name__)())
    return out


def _overlapping(boxes_and_names) -> list[tuple[str, str]]:
    return [(n1, n2) for (b1, n1), (b2, n2) in itertools.combinations(boxes_and_names, 2)
            if b1.x0 < b2.x1 and b2.x0 < b1.x1 and b1.y0 < b2.y1 and b2.y0 < b1.y1]


def _tick_label_overlaps(ax, which: str) -> list:
    renderer = ax.figure.canvas.get_renderer()
    axis = ax.xaxis if which == "x" else ax.yaxis
    labels = [t for t in axis.get_majorticklabels() if t.get_visible() and t.get_text()]
    assert len(labels) >= 2, f"the {which} axis shows fewer than two tick labels"
    return _overlapping([(t.get_window_extent(renderer), t.get_text()) for t in labels])


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_log_ticks_are_few_plain_numbers():
    assert nice_log_ticks(0.8, 150) == [1, 3, 10, 30, 100]  # 1-2-5 would be 7 ticks: 1-3 instead
    assert nice_log_ticks(0.8, 25) == [1, 2, 5, 10, 20]
    assert len(nice_log_ticks(1e-4, 1e4)) <= 6
    assert len(nice_log_ticks(1.2, 1.9)) >= 2
    assert [plain(v) for v in (0.05, 1.0, 20.0, 2000.0, 0.0003)] == ["0.05", "1", "20", "2,000", "0.0003"]


# --------------------------------------------------------------------------- bench Pareto plot
FMNIST = {"ft": (0.041, 8.0), "srl": (0.058, 12.6), "iu": (0.059, 5.7), "rni": (0.060, 6.8), "salun": (0.066, 8.4),
          "bad-teacher": (0.068, 7.8), "fcs": (0.070, 9.1), "msg": (0.072, 9.1), "cfw": (0.088, 18.3),
          "cf-k": (0.094, 20.8), "ng+": (0.097, 3.05), "scrub": (0.108, 5.1), "prmq": (0.133, 7.35),
          "kde": (0.158, 3.1), "ga": (0.169, 124.0), "ct": (0.358, 14.6), "eu-k": (0.971, 13.2), "fisher": (2.462, 4.7)}


def test_bench_pareto_plot_shows_the_original_and_retraining_and_is_readable():
    front = bench_report.pareto_front(FMNIST)
    fig = bench_report.pareto_figure(FMNIST, front, "fashion-mnist: RetDev against RTE", original=0.093,
                                     noop=["scrub"])
    try:
        fig.canvas.draw()
        legend = " | ".join(_legend_texts(fig))
        assert "original" in legend and "retraining" in legend and "Pareto front" in legend
        assert bench_report.NOOP_FLAG in legend  # the hollow marker has its entry
        assert "better" in fig.legends[0].get_title().get_text()
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert not _tick_label_overlaps(ax, "x") and not _tick_label_overlaps(ax, "y")
        assert all("^" not in t.get_text() for t in ax.xaxis.get_majorticklabels())  # plain numbers, not 10^k
        renderer = fig.canvas.get_renderer()
        labels = [(t.get_window_extent(renderer), t.get_text()) for t in ax.texts]
        assert sorted(n for _, n in labels) == sorted(FMNIST)
        assert not _overlapping(labels)
        inside = ax.get_window_extent(renderer)
        assert all(inside.x0 - 1 <= b.x0 and b.x1 <= inside.x1 + 1 and inside.y0 - 1 <= b.y0 and b.y1 <= inside.y1 + 1
                   for b, _ in labels)
        assert not _inside_figure(fig)
        # the original is drawn as a line at its RetDev, retraining at RTE 1
        ys = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert ys == [pytest.approx(0.093)] and xs == [pytest.approx(1.0)]
    finally:
        pyplot().close(fig)


# --------------------------------------------------------------------------- bench report from a store
OVERRIDES = ["data.rows=600", "search.trials=2", "seeds.eval=[0,1]", "seeds.tuning=[100]",
             'methods.names=["ft","ga","msg"]', "train.epochs=3"]
ORIGINAL = {"acc_retain": 0.96, "acc_forget": 0.97, "acc_val": 0.90, "acc_test": 0.91, "mia_test": 0.56,
            "mia_val": 0.56, "indisc_test": 0.88, "indisc_val": 0.88}
RETRAINED = {"acc_retain": 0.95, "acc_forget": 0.88, "acc_val": 0.90, "acc_test": 0.90, "mia_test": 0.50,
             "mia_val": 0.50, "indisc_test": 1.0, "indisc_val": 1.0}


def _cell_metrics(accs: dict, seed: int) -> dict:
    rec = {**ORIGINAL, **accs}
    rec["retdev"] = retdev(rec, RETRAINED)
    rec["seconds"] = 0.5 + 0.1 * seed
    rec["rte"] = 4.0 / rec["seconds"]
    rec["distance"] = 0.5
    return rec


@pytest.fixture
def overridden_run(tmp_path):
    cfg = load_config("quick", OVERRIDES, check_data=False)
    out = tmp_path / "run"
    problem = cfg.problems[0].key
    env = {"python": "3.11.7", "torch": "2.13.0+cpu", "platform": "Linux-test-x86_64", "device": "cpu",
           "device_name": "cpu", "threads": 1, "workers": 2}
    with Store(out, create=True) as store:
        store.bind_config(cfg.to_dict(), cfg.fingerprint())
        run = store.start_run("local", env)
        for seed in (0, 1):
            store.put_ref(problem, seed, {"original": b"", "retrained": b"", "original_seconds": 4.0,
                                          "retrain_seconds": 4.0, "metrics": {"original": ORIGINAL, "retrained": RETRAINED},
                                          "env": env}, run)
            shift = 0.003 * (seed + 1)  # within a point of the original on every measure: a no-op
            cells = {"ft": {"acc_forget": ORIGINAL["acc_forget"] - shift, "acc_test": ORIGINAL["acc_test"] + shift},
                     "ga": {"acc_retain": 0.60, "acc_forget": 0.50, "acc_val": 0.55, "acc_test": 0.56, "mia_test": 0.5},
                     "msg": {"acc_retain": 0.955, "acc_forget": 0.90, "acc_test": 0.905, "mia_test": 0.51}}
            for method, accs in cells.items():
                store.put_cell(problem, method, seed, {"params": {"lr": 0.01}, "status": "ok", "seconds": 0.5,
                                                       "metrics": _cell_metrics(accs, seed), "env": env}, run)
        store.finish_run(run, "done")
    return out, problem


def _row(md: str, method: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {method} |"))


def test_bench_report_states_the_run_made_with_overrides_not_the_presets_defaults(overridden_run, tmp_path):
    out, _ = overridden_run
    bench_report.write(out, tmp_path / "rep", formats=("md", "json"))
    md = (tmp_path / "rep" / "report.md").read_text()
    head = md.split("RetDev =")[0]
    assert "600 rows" in head and "evaluation seeds 0, 1;" in head
    assert "2 nsga3 trials per method and problem on tuning seeds 100" in head
    assert "3 methods: ft, ga, msg" in head and "3 epochs of adam" in head
    assert "CPU only" in head and "2 worker processes" in head and "Linux-test-x86_64" in head
    # the overridden values are named against the preset's, and its description is marked as the preset's
    assert "changed from the preset `quick`" in head
    for change in ("trials 6 → 2", "rows 0 → 600"):
        assert change in head, change
    assert "The preset's description (its defaults" in head
    # a report of the preset as shipped states no changes
    assert bench_report.preset_changes(load_config("quick", check_data=False).to_dict()) == []


def test_bench_report_flags_no_ops_and_methods_worse_than_doing_nothing(overridden_run, tmp_path):
    out, problem = overridden_run
    bench_report.write(out, tmp_path / "rep", formats=("md", "json"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| vs original |" in md
    assert _row(md, "ft").endswith(f"| {bench_report.NOOP_FLAG} |")
    assert _row(md, "ga").endswith(f"| {bench_report.WORSE_FLAG} |")
    assert _row(md, "msg").endswith("|  |")
    assert "Indistinguishable from the original (no-op): ft." in md
    assert "1 of 3 methods end farther from retraining than the original on every evaluation seed (ga)" in md
    assert bench_report.NOOP_RULE.split(" when")[0] in md  # the rule is stated in the report
    # the saved report.json rebuilds the same report (tables, flags and plots) without the store
    rebuilt = bench_report.load_saved(tmp_path / "rep" / "report.json")
    assert bench_report.markdown(rebuilt, {n: n for n in rebuilt["plots"]}) == md
    assert f"pareto-{bench_report._slug(problem)}.png" in rebuilt["plots"]


def test_noop_rule_on_the_gap_to_retraining():
    refs = [{"problem": "p", "seed": 0, "original": ORIGINAL, "retrained": RETRAINED}]

    def cell(**accs):
        return {"problem": "p", "method": "m", "seed": 0, "status": "ok", "metrics": {**ORIGINAL, **accs}}

    # forget gap 0.09: a move of 0.008 (< 1 point) is a no-op, 0.02 (> 10 % of the gap and > 1 point) is not
    assert bench_report.noop_methods([cell(acc_forget=0.962)], refs, {0})[("p", "m")]
    assert not bench_report.noop_methods([cell(acc_forget=0.95)], refs, {0})[("p", "m")]
    failed = {"problem": "p", "method": "m", "seed": 0, "status": "failed", "metrics": {}}
    assert not bench_report.noop_methods([failed], refs, {0})[("p", "m")]


# --------------------------------------------------------------------------- scenario report
def _scenario_result() -> scenario_report.ScenarioResult:
    rows = []
    for problem, scale in (("digits: 10% flips", 1.0), ("fashion: 10% flips", 0.9)):
        for seed in (3, 7):
            base = dict(scenario="label-poisoning", problem=problem, seed=seed)
            rows += [
                Row(**base, method="original", test_accuracy=0.90 * scale, corrected_accuracy=0.80, distance=0.50,
                    agreement=0.90, seconds=0.0, efficacy={"attack_success": 0.95}),
                Row(**base, method="retrain", test_accuracy=0.95 * scale, corrected_accuracy=1.0, distance=0.0,
                    agreement=1.0, seconds=2.0, speedup=1.0, efficacy={"attack_success": 0.05}),
                Row(**base, method="first-order", test_accuracy=0.902 * scale, corrected_accuracy=0.805, distance=0.499,
                    agreement=0.903, seconds=0.02, speedup=100.0, efficacy={"attack_success": 0.94}),
                Row(**base, method="second-order", test_accuracy=0.94 * scale, corrected_accuracy=0.97, distance=0.05,
                    agreement=0.98, seconds=0.2, speedup=10.0, efficacy={"attack_success": 0.10}),
                Row(**base, method="fine-tune", test_accuracy=0.93 * scale, corrected_accuracy=0.9, distance=0.4,
                    agreement=0.95, seconds=0.8, speedup=2.5, efficacy={"attack_success": 0.5}),
            ]
    return scenario_report.ScenarioResult(
        "label-poisoning", "tiny", [3, 7], rows, seconds=42.0,
        problems={"digits: 10% flips": {"rows": "300 train / 100 test"}, "fashion: 10% flips": {"rows": "400 train"}},
        environment={"python": "3.11.7", "torch": "2.13.0+cpu", "threads": 1, "cpus": 2, "platform": "Linux-test",
                     "accelerator": None})


def test_scenario_report_states_its_run_and_flags_the_no_op():
    result = _scenario_result()
    assert scenario_report.noop_methods(result.rows) == {("digits: 10% flips", "first-order"),
                                                         ("fashion: 10% flips", "first-order")}
    md = scenario_report.markdown(result, title="T", intro="Intro.", image=None)
    head = md.split("## ")[0]
    assert "size `tiny`, 2 seeds: 3, 7" in head and "2 problems" in head
    assert "first-order, second-order, fine-tune" in head
    assert "2 CPU cores; CPU-only machine; 1 torch thread; Linux-test; Python 3.11.7" in head and "42 s of wall time" in head
    assert _row(md, "first-order").endswith(f"| {scenario_report.NOOP_FLAG} |")
    assert _row(md, "second-order").endswith("|  |") and _row(md, "fine-tune").endswith("|  |")
    # the JSON round trip keeps what the report shows
    again = scenario_report.ScenarioResult.from_dict(json.loads(json.dumps(result.to_dict(), default=str)))
    assert scenario_report.markdown(again, title="T", intro="Intro.", image=None) == md


@pytest.mark.parametrize("y, label, better", [("test_accuracy", "test accuracy (%)", "↗"),
                                              ("attack_success", "attack success rate", "↘")])
def test_scenario_plot_has_every_reference_in_its_legend_and_nothing_cut_off(y, label, better):
    fig = scenario_report.figure(_scenario_result(), y=y, y_label=label)
    try:
        fig.canvas.draw()
        legend = _legend_texts(fig)
        assert any("original" in t and "no update" in t for t in legend) and any("retraining" in t for t in legend)
        assert {"first-order", "second-order", "fine-tune"} <= set(legend)
        assert any(scenario_report.NOOP_FLAG in t for t in legend)
        assert better in fig.legends[0].get_title().get_text()
        for ax in fig.axes:
            if not ax.axison:
                continue
            assert ax.get_xscale() == "log"
            assert not _tick_label_overlaps(ax, "x") and not _tick_label_overlaps(ax, "y")
            assert not any(math.isclose(line.get_ydata()[0], 0) for line in ax.get_lines() if line.get_linestyle() == ":")
        assert not _inside_figure(fig)
    finally:
        pyplot().close(fig)


def test_scenario_plot_of_one_problem_keeps_its_legend_inside():
    result = _scenario_result()
    result.rows = [r for r in result.rows if r.problem.startswith("digits")]
    fig = scenario_report.figure(result)
    try:
        fig.canvas.draw()
        assert not _inside_figure(fig)
    finally:
        pyplot().close(fig)


def test_the_sentence_under_a_table_says_when_doing_nothing_wins():
    rows = [{"method": "(original)", "retdev": 0.02}, {"method": "ft", "retdev": 0.05, "vs_original": bench_report.WORSE_FLAG},
            {"method": "ga", "retdev": 0.03, "vs_original": bench_report.WORSE_FLAG}]
    text = bench_report._verdict(rows)[0]
    assert "2 of 2 methods end farther from retraining" in text and "doing nothing wins on RetDev" in text
    # a no-op is not counted among the methods that end farther, though its mean RetDev is above the original's
    rows[2]["vs_original"] = bench_report.NOOP_FLAG
    text = bench_report._verdict(rows)[0]
    assert "1 of 2 methods end farther" in text and "(ft)" in text and "doing nothing wins" not in text
    assert "Indistinguishable from the original (no-op): ga." in text
    rows[1]["vs_original"] = ""
    assert "0 of 2 methods" in bench_report._verdict(rows)[0]


def test_retdev_worse_than_original_only_when_worse_on_every_seed():
    """A mean above the original's on noise is not "worse": the flag needs the method's RetDev above the original's
    on every evaluation seed, paired by seed."""
    refs = [{"problem": "p", "seed": s, "original": ORIGINAL, "retrained": RETRAINED} for s in (0, 1, 2)]
    base = retdev(ORIGINAL, RETRAINED)

    def cells(values):
        return [{"problem": "p", "method": "m", "seed": s, "status": "ok", "metrics": {"retdev": v}}
                for s, v in enumerate(values)]

    noisy = [base - 0.01, base + 0.002, base + 0.05]  # mean above the original's, below it on seed 0
    assert sum(noisy) / 3 > base and not bench_report.worse_methods(cells(noisy), refs, {0, 1, 2})[("p", "m")]
    assert bench_report.worse_methods(cells([base + 0.001] * 3), refs, {0, 1, 2})[("p", "m")]
    failed = cells([base + 0.1] * 3)
    failed[1]["status"] = "failed"
    assert not bench_report.worse_methods(failed, refs, {0, 1, 2})[("p", "m")]
    summary = [{"problem": "p", "method": "(original)", "retdev": base}, {"problem": "p", "method": "m", "retdev": 1.0}]
    bench_report.flag_summary(summary, {}, bench_report.worse_methods(cells(noisy), refs, {0, 1, 2}))
    assert summary[1]["vs_original"] == ""
    assert "every evaluation seed, paired by seed" in bench_report.WORSE_RULE


def test_noop_gloss_states_the_tolerance_it_applies():
    """The 1-point floor can exceed a tenth of a small gap: the gloss states the tolerance, not "a tenth of the way"."""
    for rule in (bench_report.NOOP_RULE, scenario_report.NOOP_RULE):
        assert "tenth" not in rule and "max(1 point, 10 % of the original's gap" in rule
    # a move of 0.009 on a gap of 0.005 (180 % of it) is within the stated tolerance, and flagged as such
    refs = [{"problem": "p", "seed": 0, "original": ORIGINAL, "retrained": {**ORIGINAL, "acc_test": 0.905}}]
    cell = {"problem": "p", "method": "m", "seed": 0, "status": "ok", "metrics": {**ORIGINAL, "acc_test": 0.901}}
    assert bench_report.noop_methods([cell], refs, {0})[("p", "m")]


def test_a_row_without_distance_or_scenario_measures_is_never_a_no_op():
    """SISA's rows carry no distance and no scenario measure: judged on the coarse shares alone they could look like
    the original's; such a row is never flagged."""
    rows = []
    for seed in (0, 1):
        base = dict(scenario="sensitive-features", problem="wine: 1 column", seed=seed)
        rows += [Row(**base, method="original", test_accuracy=0.90, corrected_accuracy=0.90, distance=0.2, agreement=0.95,
                     seconds=0.0, efficacy={"residual": 0.3}),
                 Row(**base, method="retrain", test_accuracy=0.905, corrected_accuracy=0.905, distance=0.0, agreement=1.0,
                     seconds=1.0, speedup=1.0, efficacy={"residual": 0.0}),
                 Row(**base, method="SISA", test_accuracy=0.90, corrected_accuracy=0.90, distance=None, agreement=0.95,
                     seconds=0.5, speedup=2.0, efficacy={}),
                 Row(**base, method="first-order", test_accuracy=0.90, corrected_accuracy=0.90, distance=0.2,
                     agreement=0.95, seconds=0.1, speedup=10.0, efficacy={"residual": 0.3})]
    assert scenario_report.noop_methods(rows) == {("wine: 1 column", "first-order")}


def test_scenario_header_states_the_device_the_run_used():
    result = _scenario_result()
    result.environment = {**result.environment, "accelerator": "NVIDIA H200", "device": "cpu"}
    head = scenario_report.markdown(result, title="T", intro="Intro.", image=None).split("## ")[0]
    assert "ran on the CPU; accelerator present, not used (NVIDIA H200)" in head
    result.environment["device"] = "cuda:0"
    head = scenario_report.markdown(result, title="T", intro="Intro.", image=None).split("## ")[0]
    assert "ran on cuda:0 (NVIDIA H200)" in head and "not used" not in head
    fresh = scenario_report.ScenarioResult("canary", "tiny", [0], [])
    assert fresh.machine("cpu")["device"] == "cpu"


def test_no_method_marker_is_retrainings_star():
    assert "*" not in scenario_report.MARKERS and len(set(scenario_report.MARKERS)) == len(scenario_report.MARKERS)


def test_bench_header_states_each_runs_workers_and_threads_and_each_models_training():
    cfg = load_config("quick", check_data=False).to_dict()
    cfg["models"] = ["logreg", "mlp"]
    cfg["recipes"] = {"default": {"optimizer": "auto", "epochs": 30, "lr": 0.01, "batch_size": 64, "momentum": 0.9}}
    env = {"device": "cpu", "platform": "Linux-test", "python": "3.11.7", "torch": "2.13.0+cpu"}
    # the store's configuration holds the first run's threads per worker; the resumed run recorded its own
    runs = [{"id": 1, "env": {**env, "workers": 2}}, {"id": 2, "env": {**env, "workers": 1, "threads_per_worker": 2}}]
    head = "\n".join(bench_report.run_description({"config": cfg, "runs": runs}))
    assert "runs: 2 worker processes x 1 torch thread, then 1 worker process x 2 torch threads" in head
    head = "\n".join(bench_report.run_description({"config": cfg, "runs": runs[1:]}))
    assert "1 worker process x 2 torch threads" in head and "runs:" not in head
    assert "logreg: Newton" in head and "mlp: 30 epochs of Adam" in head and "of auto" not in head
