"""The benchmark runner: config validation, search spaces, statistics, the store, end-to-end runs
(local workers and Ray), resuming after kill -9 and after Ctrl-C, and the report."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import unlearnkit as uk
from unlearnkit.bench import choose, load_config, search_space
from unlearnkit.bench.problems import build_problem_data
from unlearnkit.bench.report import friedman, pareto_front, rank_blocks
from unlearnkit.bench.store import Store
from unlearnkit.errors import BenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ["ft", "ga", "msg"]
TINY = ["data.rows=600", "train.epochs=2", "search.trials=2", "seeds.eval=[0,1]", "seeds.tuning=[100]",
        f"methods.names={json.dumps(METHODS)}"]


def tiny(extra=()):
    return load_config("quick", TINY + list(extra))


# ---------------------------------------------------------------------------- configuration
def test_presets_validate(tmp_path):
    for name in ("quick", "features-labels"):
        cfg = load_config(name)
        assert cfg.problems and cfg.methods and not set(cfg.eval_seeds) & set(cfg.tuning_seeds)
    quick = load_config("quick")
    assert quick.trials >= 4 and len(quick.eval_seeds) >= 3 and quick.tuning_seeds, "a quick look, still tuned and replicated"
    with pytest.raises(BenchError, match="progress must be 'auto'"):
        uk.bench.run(quick, tmp_path / "never-made", progress="loud")
    assert not (tmp_path / "never-made").exists()
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        cfg = load_config("deepunlearn-fmnist")
        assert len(cfg.methods) == 18 and cfg.trials == 100 and len(cfg.eval_seeds) == 10


@pytest.mark.parametrize("overrides, message", [
    (["colour=1"], "Unknown top-level key"),
    (["search.budget=3"], r"\[search\]: unknown key"),
    (['methods.names=["ft","nope"]'], "unknown \\['nope'\\]"),
    (['methods.names=["retrain"]'], "cannot be benchmarked"),
    (["seeds.tuning=[0]"], "share \\[0\\]"),
    (["seeds.eval=[]"], "seeds.eval is empty"),
    (["search.trials=-1"], "search.trials must be >= 0"),
    (["search.sampler=grid"], "search.sampler must be one of"),
    (['data.datasets=["mnist"]'], "unknown \\['mnist'\\]"),
    (['data.datasets=["breast-cancer"]'], "cnn model needs image data"),
    (["protocol.0.fraction=1.5"], "fraction must be in \\(0, 1\\)"),
    (["protocol.fraction=0.2"], "list of 1 table"),
    (["train.optimizer=rmsprop"], "optimizer must be"),
    (["train.epochs=0"], "epochs must be >= 1"),
    (["methods.fixed.ft.lr=\"fast\""], "must be float"),
    (["methods.fixed.kde.lr=0.1"], "not in methods.names"),
    (["run.device=warp-drive"], "not a torch device"),
    (["data.rows=many"], "data.rows must be int"),
    (["noequals"], "must be key=value"),
])
def test_invalid_configs_fail_with_the_key_named(overrides, message):
    with pytest.raises(BenchError, match=message):
        load_config("quick", overrides)


def test_config_files_and_toml_errors(tmp_path):
    with pytest.raises(BenchError, match="Config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_config(bad)
    nameless = tmp_path / "nameless.toml"
    nameless.write_text("[data]\ndatasets = [\"digits\"]\n")
    with pytest.raises(BenchError, match="needs a name"):
        load_config(nameless)
    ok = tmp_path / "ok.toml"
    ok.write_text(uk.bench.preset_path("quick").read_text())
    assert load_config(ok).fingerprint() == load_config("quick").fingerprint()
    assert load_config("quick", ["search.trials=3"]).fingerprint() != load_config("quick").fingerprint()
    assert load_config("quick", ["run.device=cpu:0"]).fingerprint() == load_config("quick").fingerprint()


def test_invalid_config_runs_no_job(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "bench", "run", "quick", "--out", str(out),
                          "--set", "seeds.tuning=[0]"], capture_output=True, text=True)
    assert res.returncode == 2 and "share [0]" in res.stderr
    assert not (out / "results.sqlite").exists()


# ---------------------------------------------------------------------------- protocols and spaces
def test_protocols_build_the_change_they_name():
    relabel = load_config("features-labels", ['models.names=["logreg"]'])
    poisoned, zeroed = (build_problem_data(relabel, p) for p in relabel.problems)
    ids = np.asarray(poisoned.changes.label_edits[0].rows)
    pos = poisoned.train.positions(ids)
    true = np.asarray(poisoned.changes.label_edits[0].labels)
    assert np.all(poisoned.train.y[pos] != true), "every poisoned label differs from the true one"
    assert len(poisoned.forget) == len(ids) and len(poisoned.retain) + len(ids) == len(poisoned.train)
    truth = dict(zip(ids.tolist(), true.tolist()))
    assert [truth[i] for i in poisoned.forget.ids.tolist()] == poisoned.forget.y.tolist(), \
        "an edit's forgetting is measured on the corrected rows"
    cols = list(zeroed.changes.feature_edits[0].columns)
    assert len(cols) == 7  # ceil(10 % of 64 pixels)
    for part in (zeroed.val, zeroed.test):
        assert np.all(part.X.reshape(len(part), -1)[:, cols] == 0)
    assert np.any(zeroed.train.X.reshape(len(zeroed.train), -1)[:, cols] != 0)
    assert len(zeroed.retain) == 0 and np.all(zeroed.forget.X.reshape(len(zeroed.forget), -1)[:, cols] == 0)
    removal = build_problem_data(tiny(), tiny().problems[0])
    assert len(removal.forget) == pytest.approx(0.1 * len(removal.train), abs=1)


def test_search_space_comes_from_the_registry():
    space = search_space("msg", epoch_cap=6)
    assert set(space) == {"lr", "weight_decay", "batch_size", "epochs", "init_rate"}
    assert space["lr"].log and (space["lr"].low, space["lr"].high) == (1e-5, 1e-1)
    assert (space["epochs"].low, space["epochs"].high) == (1, 6)
    assert tuple(space["batch_size"].choices) == (64, 128, 256)
    assert "momentum" not in search_space("ft", 6), "DeepUnlearn fixes momentum"
    assert "lr" not in search_space("ft", 6, fixed={"lr": 0.1})
    assert search_space("second-order", 6) == {}, "influence updates choose their settings by rule"


def test_choose_takes_the_smallest_norm_and_reports_the_front():
    trials = [{"number": 0, "state": "complete", "objectives": [0.3, 0.3, 0.3, 0.3], "params": {"a": 0}},
              {"number": 1, "state": "complete", "objectives": [0.0, 0.5, 0.0, 0.0], "params": {"a": 1}},
              {"number": 2, "state": "complete", "objectives": [0.1, 0.1, 0.1, 0.1], "params": {"a": 2}},
              {"number": 3, "state": "fail", "objectives": None, "params": {"a": 3}}]
    picked = choose(trials)
    assert picked["chosen"] == {"a": 2} and picked["trial"] == 2
    assert picked["pareto"] == [1, 2]
    assert choose(trials[3:]) is None


# ---------------------------------------------------------------------------- statistics
def test_friedman_matches_scipy_and_demsar_critical_difference():
    from scipy.stats import friedmanchisquare, rankdata

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 5)) + np.arange(5) * 0.7
    ranks = np.vstack([rankdata(row) for row in scores])
    ours = friedman(ranks)
    ref = friedmanchisquare(*scores.T)
    assert ours["statistic"] == pytest.approx(ref.statistic) and ours["p_value"] == pytest.approx(ref.pvalue)
    # Demšar (2006), Table 5: q_0.05 = 2.728 for k = 5
    assert ours["critical_difference"] == pytest.approx(2.728 * np.sqrt(5 * 6 / (6 * 12)), rel=1e-3)
    tied = np.round(scores)  # ties: the statistic needs the tie correction scipy applies
    tied_ranks = np.vstack([rankdata(row) for row in tied])
    assert friedman(tied_ranks)["statistic"] == pytest.approx(friedmanchisquare(*tied.T).statistic)
    assert "note" in friedman(np.full((4, 3), 2.0))


def test_rank_blocks_and_pareto_front():
    cells = [{"problem": "p", "seed": s, "method": m, "status": "ok", "metrics": {"retdev": v, "rte": 10 - v}}
             for s in (0, 1) for m, v in (("a", 0.1), ("b", 0.2), ("c", 0.2))]
    cells.append({"problem": "p", "seed": 2, "method": "a", "status": "ok", "metrics": {"retdev": 0.0}})
    cells.append({"problem": "p", "seed": 0, "method": "broken", "status": "failed", "metrics": {}})
    methods, ranks, info = rank_blocks(cells, "retdev")
    assert methods == ["a", "b", "c"] and info["dropped"] == ["broken"], "a method that never ran does not hide the rest"
    assert ranks.tolist() == [[1, 2.5, 2.5]] * 2 and info["blocks_are"].startswith("evaluation seeds")
    _, rte_ranks, _ = rank_blocks(cells, "rte")
    assert rte_ranks[0].tolist() == [1, 2.5, 2.5], "higher RTE ranks first"
    two = cells + [{**c, "problem": "q"} for c in cells]
    _, per_problem, info = rank_blocks(two, "retdev")
    assert per_problem.shape == (2, 3) and info["blocks_are"] == "problems", "seeds are not independent blocks"
    assert pareto_front({"a": (0.1, 2.0), "b": (0.3, 50.0), "c": (0.3, 10.0), "d": (0.05, 1.0)}) == ["d", "a", "b"]


def test_a_resumed_search_continues_instead_of_repeating():
    from unlearnkit.bench.runner import _Study

    cfg = tiny(["search.trials=8"])
    problem = cfg.problems[0]
    first = _Study(cfg, problem, "ft", [], index=1)
    for _ in range(4):
        number, _params = first.ask()
        first.tell(number, {"state": "complete", "objectives": [0.1, 0.2, 0.3, 0.4], "seconds": 1.0})
    assert all("NSGAIIISampler:generation" in t["attrs"] for t in first.stored)
    resumed = _Study(cfg, problem, "ft", first.stored, index=1)
    assert resumed.wanted == 4 and resumed.next_number == 4
    seen = [t["params"] for t in first.stored]
    for _ in range(4):
        assert resumed.ask()[1] not in seen, "a resumed study must not redraw the settings it already tried"


# ---------------------------------------------------------------------------- the store
def test_store_refuses_corrupted_foreign_and_mismatched(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    junk = b"this is not a database" * 100
    (bad / "results.sqlite").write_bytes(junk)
    with pytest.raises(BenchError, match="not a readable results database"):
        Store(bad)
    assert (bad / "results.sqlite").read_bytes() == junk, "a corrupted store is left untouched"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "results.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(BenchError, match="not an unlearnkit results store"):
        Store(foreign)
    with pytest.raises(BenchError, match="No benchmark results"):
        Store(tmp_path / "empty")
    with Store(tmp_path / "s", create=True) as store:
        store.lock()
        with Store(tmp_path / "s") as second, pytest.raises(BenchError, match="Another `unlearnkit bench run`"):
            second.lock()
        store.bind_config({"a": 1}, "abc")
        store.bind_config({"a": 1}, "abc")
        with pytest.raises(BenchError, match="different configuration"):
            store.bind_config({"a": 2}, "def")


# ---------------------------------------------------------------------------- end to end
def _check_complete(out: Path, cfg) -> list[dict]:
    with Store(out) as store:
        cells = store.cells()
        keys = [(c["problem"], c["method"], c["seed"]) for c in cells]
        assert sorted(keys) == sorted((p.key, m, s) for p in cfg.problems for m in cfg.methods for s in cfg.eval_seeds)
        assert len(set(keys)) == len(keys)
        assert all(c["status"] == "ok" for c in cells), [c["error"] for c in cells if c["status"] != "ok"]
        for s in store.studies():
            searched = cfg.trials if s["space"] else 0
            assert s["n_trials"] == searched and (bool(s["chosen"]) or not searched), s
            trials = store.trials(s["problem"], s["method"])
            numbers = [t["number"] for t in trials]
            # a trial in flight at an interrupt is lost and asked again under a new number: gaps, never repeats
            assert len(numbers) == len(set(numbers)) == searched
        assert store.counts()["refs"] == len(cfg.problems) * len(cfg.all_seeds)
    return cells


def test_quick_preset_end_to_end_local_and_report(tmp_path, caplog):
    cfg = tiny()
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="unlearnkit.bench"):
        summary = uk.bench.run(cfg, out, executor="local", workers=2)  # no callbacks: progress still reaches the log
    assert summary.status == "done" and summary.failed_cells == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "unlearnkit.bench.runner"]
    grid = len(cfg.methods) * len(cfg.eval_seeds)
    for stage, total in (("references", 3), ("search", len(cfg.methods) * cfg.trials), ("cells", grid)):
        assert f"{stage}: {total} / {total}" in logged, stage
    assert any("RetDev" in m for m in logged) and "s CPU" in logged[-1]
    cells = _check_complete(out, cfg)
    for c in cells:
        m = c["metrics"]
        assert 0 <= m["acc_test"] <= 1 and m["retdev"] >= 0 and m["rte"] > 0 and 0 <= m["indisc_test"] <= 1
        assert c["env"]["torch"] and c["env"]["device"] == "cpu"
        assert set(c["params"]) >= {"lr", "batch_size", "epochs"}, "the chosen setting is what the cell ran"
    # the chosen setting is stored with its study and the tuning seeds are not evaluation seeds
    with Store(out) as store:
        study = store.study(cfg.problems[0].key, "msg")
        assert study["chosen"] == next(c["params"] for c in cells if c["method"] == "msg")
        assert {"init_rate", "lr"} <= set(study["space"])
        assert {s for _, s in store.ref_keys()} == {0, 1, 100}
    paths = uk.bench.write_report(out, formats=("md", "html", "csv", "json"))
    md = (out / "report.md").read_text()
    for method in METHODS + ["(original)", "(retrained)"]:
        assert f"| {method} |" in md
    for label in ("RetDev", "Indisc (test)", "RTE", "acc retain", "acc forget", "acc val", "acc test", "MIA test"):
        assert label in md
    assert "Friedman" in md and "Pareto front" in md
    assert "Nemenyi CD" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "src=\"cd-" not in html
    report = json.loads((out / "report.json").read_text())
    assert report
    for png in (p for p in paths if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    header = (out / "cells.csv").read_text().splitlines()[0]
    for col in ("problem", "method", "seed", "retdev", "rte", "indisc_test", "acc_forget", "params"):
        assert col in header
    assert any(p.name.startswith("cd-retdev") for p in paths) and any(p.name.startswith("pareto-") for p in paths)
    # a second run of the same config does nothing new
    again = uk.bench.run(cfg, out, executor="local", workers=1)
    assert again.counts == summary.counts
    with Store(out) as store:
        assert {c["run_id"] for c in store.cells()} == {summary.run_id}


def test_quick_preset_with_ray(tmp_path):
    pytest.importorskip("ray")
    cfg = tiny(["seeds.eval=[0]"])
    out = tmp_path / "ray"
    summary = uk.bench.run(cfg, out, executor="ray", workers=2)
    assert summary.status == "done"
    _check_complete(out, cfg)
    with Store(out) as store:
        assert store.runs()[-1]["executor"] == "ray"


def _cli(out: Path, *extra) -> list[str]:
    args = [sys.executable, "-m", "unlearnkit.cli", "bench", "run", "quick", "--out", str(out), "--quiet", "--no-report"]
    for o in TINY:
        args += ["--set", o]
    return args + list(extra)


def _wait_for(out: Path, table: str, n: int, proc, limit: float = 240) -> int:
    start = time.time()
    while time.time() - start < limit:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with sqlite3.connect(out / "results.sqlite", timeout=1) as conn:
                count = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        except sqlite3.Error:
            count = 0
        if count >= n:
            return count
        time.sleep(0.05)
    raise AssertionError(f"{table} did not reach {n} rows")


def _no_orphans(proc_pid: int) -> None:
    # workers check for their driver every second; one still importing torch when the driver died
    # starts checking once its imports finish, so allow a loaded machine some seconds
    alive = []
    for _ in range(40):
        time.sleep(0.5)
        alive = subprocess.run(["pgrep", "-s", str(proc_pid)], capture_output=True, text=True).stdout.split()
        if not alive:
            return
    raise AssertionError(f"worker processes outlived their driver: {alive}")


def test_kill_9_midway_then_resume_runs_every_cell_exactly_once(tmp_path):
    out = tmp_path / "killed"
    cfg = tiny()
    proc = subprocess.Popen(_cli(out, "--workers", "2"), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(out, "cells", 1, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _no_orphans(proc.pid)
    with Store(out) as store:
        before = {(c["problem"], c["method"], c["seed"]): c["run_id"] for c in store.cells()}
        assert 1 <= len(before) < len(cfg.methods) * len(cfg.eval_seeds)
    st = uk.bench.status(out)
    assert not st["complete"] and st["runs"][0]["status"].startswith("killed")
    res = subprocess.run(_cli(out, "--workers", "2"), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    cells = _check_complete(out, cfg)
    after = {(c["problem"], c["method"], c["seed"]): c["run_id"] for c in cells}
    assert all(after[k] == run for k, run in before.items()), "finished cells are never redone"
    assert uk.bench.status(out)["complete"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_cleanly_and_resumes(tmp_path, how):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli(out, "--workers", "2"), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(out, "trials", 1, proc)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        else:
            os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: the driver only
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "rerun the same command to resume" in " ".join(output.split())
    _no_orphans(proc.pid)
    assert uk.bench.status(out)["runs"][0]["status"] == "interrupted"
    res = subprocess.run(_cli(out, "--workers", "2"), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    _check_complete(out, tiny())


def test_cli_status_and_report(tmp_path):
    out = tmp_path / "cli"
    uk.bench.run(tiny(["seeds.eval=[0]", "search.trials=0"]), out, workers=1)
    res = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "bench", "status", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and "complete" in res.stdout and "3 / 3" in res.stdout
    res = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "bench", "report", str(out), "--to", str(tmp_path / "rep"),
                          "--format", "md,csv"], capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "summary.csv").exists()
    res = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "bench", "status", str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "No benchmark results" in res.stderr


def test_features_labels_preset_second_order_closes_the_gap_on_a_convex_model(tmp_path):
    cfg = load_config("features-labels", ['models.names=["logreg"]', "search.trials=0", "seeds.eval=[0]",
                                          'methods.names=["first-order","second-order","ft"]'])
    out = tmp_path / "fl"
    uk.bench.run(cfg, out, workers=1)
    _check_complete(out, cfg)
    with Store(out) as store:
        refs = {r["problem"]: r for r in store.ref_metrics()}
        cells = {(c["problem"], c["method"]): c["metrics"] for c in store.cells()}
    from unlearnkit.bench.jobs import retdev

    for problem in (p.key for p in cfg.problems):
        original = retdev(refs[problem]["original"], refs[problem]["retrained"])
        second = cells[(problem, "second-order")]
        assert second["retdev"] < 0.6 * original, (problem, second["retdev"], original)
        assert second["distance"] < cells[(problem, "first-order")]["distance"]
