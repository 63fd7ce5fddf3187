"""Tuned baselines in the scenario tables: settings found by the bench's search on tuning seeds only, as the store shows."""

import json
import sqlite3
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearnkit import scenarios
from unlearnkit.cli import app
from unlearnkit.scenarios import backdoor, tuning
from unlearnkit.scenarios.registry import ScenarioError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(db, query, *args):
    con = sqlite3.connect(db)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(query, args)]
    finally:
        con.close()


def test_tuned_rows_use_settings_chosen_on_tuning_seeds_only(tmp_path, monkeypatch):
    built = []  # (seed, tuning finished yet?) of every problems() call
    problems = backdoor.problems

    def recording(size, seed, device):
        built.append(seed)
        return problems(size, seed, device)

    monkeypatch.setattr(backdoor, "problems", recording)
    eval_seeds, tuning_seeds, searched = (0,), (1000,), ("ft", "scrub")
    result = scenarios.run("backdoor", size="tiny", seeds=eval_seeds, tuning_seeds=tuning_seeds, trials=2,
                           baselines=(*searched, "unsir"), out=tmp_path, progress=False)
    assert built == [*tuning_seeds, *eval_seeds]  # the tuning problems first, built on the tuning seeds only

    db = tmp_path / tuning.DB_NAME
    runs = _rows(db, "SELECT * FROM runs")
    assert len(runs) == 1 and runs[0]["status"] == "done"
    assert json.loads(runs[0]["tuning_seeds"]) == list(tuning_seeds) and json.loads(runs[0]["eval_seeds"]) == list(eval_seeds)
    fp = runs[0]["fingerprint"]

    # every trial ran on tuning seeds only, none of them an evaluation seed
    trials = _rows(db, "SELECT * FROM trials WHERE fingerprint=?", fp)
    assert trials
    for t in trials:
        seeds = set(json.loads(t["seeds"]))
        assert seeds and seeds <= set(tuning_seeds) and not seeds & set(eval_seeds), t
    refs = _rows(db, "SELECT problem, seed FROM refs WHERE fingerprint=?", fp)
    assert refs and {r["seed"] for r in refs} <= set(tuning_seeds)

    studies = {(s["problem"], s["method"]): s for s in _rows(db, "SELECT * FROM studies WHERE fingerprint=?", fp)}
    problem_names = {r.problem for r in result.rows}
    assert set(studies) == {(p, m) for p in problem_names for m in (*searched, "unsir")}
    for (problem, method), s in studies.items():
        assert json.loads(s["seeds"]) == list(tuning_seeds)
        mine = [t for t in trials if (t["problem"], t["method"]) == (problem, method)]
        if method == "unsir":  # no registered search range: the registered defaults, no trial
            assert s["status"] == "defaults" and not mine and json.loads(s["chosen"]) == {}
            continue
        # the bench's budget and choice rule: two trials, the completed one with the smallest objective norm
        assert s["status"] == "tuned" and len(mine) == s["n_trials"] == 2
        done = [t for t in mine if t["state"] == "complete"]
        best = min(done, key=lambda t: np.linalg.norm(json.loads(t["objectives"])))
        assert s["trial"] == best["number"] and json.loads(s["chosen"]) == json.loads(best["params"])
        # the scenario's own measure is an objective: attack success on validation images
        assert json.loads(best["objective_names"]) == ["retain_gap", "corrected_gap", "val_gap", "attack_success_gap"]

    # each tuned row ran exactly the stored chosen setting, on every evaluation seed
    tuned = [r for r in result.rows if r.method.endswith(" [tuned]")]
    assert len(tuned) == len(studies) * len(eval_seeds)
    for row in tuned:
        assert row.status == "ok" and row.seed in eval_seeds
        stored = studies[(row.problem, row.method.removesuffix(" [tuned]"))]
        # the stored setting, plus the evaluation seed for a method with a seed (never searched)
        assert row.settings["hyperparameters"] == tuning.with_seed(row.method.removesuffix(" [tuned]"),
                                                                   json.loads(stored["chosen"]), row.seed)
        if stored["status"] == "tuned":
            assert row.settings["rule"].startswith(f"tuned: 2 trials on seeds [{tuning_seeds[0]}]")

    # the report states the budget: methods, trials, tuning seeds, seconds per method and in all, each setting
    budget = json.loads((tmp_path / "backdoor.json").read_text())["tuning"]
    assert budget["methods"] == [*searched, "unsir"] and budget["trials_per_method"] == 2
    assert budget["tuning_seeds"] == list(tuning_seeds) and budget["evaluation_seeds"] == list(eval_seeds)
    assert budget["seconds"]["total"] > 0 and set(budget["seconds"]["methods"]) == {*searched, "unsir"}
    assert budget["trials_run"] == len(trials)
    md = (tmp_path / "backdoor.md").read_text()
    assert "## Tuned baselines: budget and chosen settings" in md and "each searched with 2 trials per problem" in md
    assert "on tuning seeds 1000, disjoint from the evaluation seeds 0" in md and "trials ft " in md
    for (problem, method), s in studies.items():
        assert f"| {problem} | {method} | {s['status']} |" in md

    # the same configuration again: every setting read back from the store, nothing searched or trained
    built.clear()
    again = tuning.tune("backdoor", "tiny", tuning_seeds=tuning_seeds, eval_seeds=eval_seeds, baselines=(*searched, "unsir"),
                        trials=2, store=db)
    assert again.trials_run == 0 and built == []
    # ... and the budget it states is what the search cost when it ran (stored with it), not this run's zero
    assert again.seconds["methods"] == pytest.approx(budget["seconds"]["methods"])
    assert again.seconds["references"] == pytest.approx(budget["seconds"]["references"]) and again.seconds["references"] > 0
    assert {k: c.params for k, c in again.chosen.items()} == {k: json.loads(s["chosen"]) for k, s in studies.items()}


def test_tuning_seeds_that_are_evaluation_seeds_are_refused(tmp_path):
    with pytest.raises(ScenarioError, match="also evaluation seeds"):
        scenarios.run("backdoor", seeds=(0, 1000), tuning_seeds=(1000,), out=tmp_path)
    with pytest.raises(ScenarioError, match="also evaluation seeds"):
        tuning.tune("backdoor", "tiny", tuning_seeds=(3,), eval_seeds=(3,), trials=1, store=tmp_path / "t.sqlite")
    for bad in ({"trials": 0}, {"baselines": ("ft", "nope")}, {"baselines": "ft"}, {"tuning_seeds": (5, 5)}):
        with pytest.raises(ScenarioError):
            scenarios.run("backdoor", out=tmp_path, **bad)
    assert not list(tmp_path.iterdir())  # refused before anything was computed or written
    res = CliRunner().invoke(app, ["scenario", "backdoor", "--seeds", "0", "--tuning-seeds", "0", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "also evaluation seeds" in res.output


def test_a_method_that_cannot_run_on_the_model_gets_a_row_saying_why(tmp_path):
    # MSG re-initialises convolution kernels; the canary's LSTM (and its transformer) have none. Its trials fail, and
    # its row is not run, saying why.
    found = tuning.tune("canary", "tiny", tuning_seeds=(1000,), eval_seeds=(0,), baselines=("msg", "ft"), trials=2,
                        store=tmp_path / "t.sqlite")
    problems = {p for p, _ in found.chosen}
    assert problems and set(found.chosen) == {(p, m) for p in problems for m in ("msg", "ft")}
    for problem in problems:
        msg, ft = found.chosen[(problem, "msg")], found.chosen[(problem, "ft")]
        assert msg.status == "failed" and "convolution" in msg.error and msg.n_trials == 2
        assert ft.status == "tuned" and set(ft.objectives) == {"retain_gap", "corrected_gap", "val_gap", "exposure_gap"}
        assert all(0 <= v <= 1 for v in ft.objectives.values())
        rows = {s.label: s for s in found.strategies(problem)}
        assert rows["msg [tuned]"].skip and "convolution" in rows["msg [tuned]"].skip
        assert rows["ft [tuned]"].skip is None and rows["ft [tuned]"].hyperparameters == {**ft.params, "seed": 0}
    states = _rows(tmp_path / "t.sqlite", "SELECT method, state, error FROM trials")
    assert {(s["method"], s["state"]) for s in states} == {("msg", "fail"), ("ft", "complete")}


def test_a_scenario_without_a_bounded_measure_searches_its_three_gaps(tmp_path):
    # label-poisoning has no measure besides accuracy: the search minimises the three accuracy gaps, and Optuna's
    # multi-objective sampler is told exactly three values per trial (every trial counts as complete for it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = tuning.tune("label-poisoning", "tiny", tuning_seeds=(1000,), eval_seeds=(0,), baselines=("ft",),
                            trials=5, store=tmp_path / "t.sqlite")
    assert not [w for w in caught if "number of the objectives" in str(w.message)]
    assert len(found.chosen) == 2  # the random-flip and the targeted-flip problem, one study each
    for (problem, _), chosen in found.chosen.items():
        assert chosen.status == "tuned" and list(chosen.objectives) == ["retain_gap", "corrected_gap", "val_gap"]
        stored = _rows(tmp_path / "t.sqlite", "SELECT number, state, objectives, attrs FROM trials WHERE problem=? "
                       "ORDER BY number", problem)
        assert [t["state"] for t in stored] == ["complete"] * 5 and all(len(json.loads(t["objectives"])) == 3 for t in stored)
        # NSGA-III (population 4): the fifth trial is bred from the first generation's completed trials
        assert json.loads(stored[4]["attrs"]).get("NSGAIIISampler:generation") == 1


def test_only_builds_and_tunes_the_problems_whose_name_matches(tmp_path, monkeypatch):
    from unlearnkit.scenarios import poisoning

    trained = []
    train_pair = poisoning.train_pair

    def counting(data, *args, **kwargs):
        trained.append(data.name)
        return train_pair(data, *args, **kwargs)

    monkeypatch.setattr(poisoning, "train_pair", counting)
    result = scenarios.run("label-poisoning", size="tiny", only="targeted", baselines=("ft",), trials=1, out=tmp_path,
                           progress=False)
    assert {r.problem for r in result.rows} == {"digits: 15% targeted flips"}
    assert len(trained) == 2  # one tuning problem and one evaluation problem: the random-flip problem is never trained
    studies = _rows(tmp_path / tuning.DB_NAME, "SELECT problem FROM studies")
    assert [s["problem"] for s in studies] == ["digits: 15% targeted flips"]
    with pytest.raises(ScenarioError, match="No problem of label-poisoning"):
        scenarios.run("label-poisoning", only="nope", baselines=())
    with pytest.raises(ScenarioError, match="only must be"):
        scenarios.run("label-poisoning", only="", baselines=())


def test_methods_keeps_only_the_rows_asked_for_and_trains_no_ensemble_without_sisa(tmp_path):
    result = scenarios.run("label-poisoning", size="tiny", only="random", baselines=(), progress=False,
                           methods=["second-order [head]", "first-order"])
    assert {r.method for r in result.rows} == {"original", "retrain", "second-order [head]", "first-order"}
    assert all(r.status == "ok" for r in result.rows)
    with pytest.raises(ScenarioError, match="has no row 'nope'; its rows: .*second-order \\[head\\]"):
        scenarios.run("label-poisoning", size="tiny", only="random", baselines=(), methods=["nope"])
    for bad in ("second-order", [], [3]):
        with pytest.raises(ScenarioError, match="methods must be"):
            scenarios.run("label-poisoning", methods=bad, baselines=())


def test_row_labels_split_on_commas_outside_brackets():
    from unlearnkit.scenarios.registry import split_labels

    assert split_labels("first-order, second-order-it [kfac, guarded],ft [tuned],") == [
        "first-order", "second-order-it [kfac, guarded]", "ft [tuned]"]


def test_a_run_of_every_problem_reuses_the_studies_of_a_restricted_run(tmp_path):
    store = tmp_path / "t.sqlite"
    first = tuning.tune("label-poisoning", "tiny", tuning_seeds=(1000,), eval_seeds=(0,), baselines=("ft",), trials=1,
                        store=store, only="targeted")
    (key,) = first.chosen
    again = tuning.tune("label-poisoning", "tiny", tuning_seeds=(1000,), eval_seeds=(0,), baselines=("ft",), trials=1,
                        store=store)
    assert set(again.chosen) == {("digits: 20% random flips", "ft"), key}
    assert again.chosen[key].params == first.chosen[key].params
    trials = _rows(store, "SELECT problem FROM trials")
    assert sorted(t["problem"] for t in trials) == sorted(["digits: 20% random flips", key[0]])  # none repeated
