"""Merging scenario runs made one seed per process (scenarios.merge, bench_scenarios --add / --merge)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnkit import scenarios
from unlearnkit.scenarios import tuning
from unlearnkit.scenarios.compare import Row
from unlearnkit.scenarios.registry import ScenarioError
from unlearnkit.scenarios.report import ScenarioResult

PROBLEM = "fashion-mnist: 15% targeted flips"
INFO = {"rows": "600 train", "flipped": 90}
ENV = {"python": "3.11", "torch": "2.13.0+cpu", "machine": "x86_64", "processor": "x86_64", "threads": 1, "cpus": 2,
       "platform": "Linux", "accelerator": None, "device": "cpu"}
TUNING = {"methods": ["ft"], "trials_per_method": 3, "tuning_seeds": [1000], "evaluation_seeds": [], "trials_run": 0,
          "objectives": {PROBLEM: ["retain_gap", "corrected_gap", "val_gap"]}, "fingerprint": "abc",
          "seconds": {"problems": 0.0, "references": 0.0, "methods": {"ft": 0.0}, "total": 1.0, "cpu": 1.0},
          "chosen": [], "sampler": "nsga3 (population 4), seed 0", "rule": "smallest norm"}


def report(seeds, *, closed=0.86, size="full", info=INFO, env=ENV, fingerprint="abc", command="run", problem=PROBLEM):
    """A label-poisoning report: original 70 %, retrained 90 %, a closed-form row at ``closed`` (20x), ft [tuned] 85 %."""
    rows = []
    for s in seeds:
        rows += [Row("label-poisoning", problem, s, "original", test_accuracy=0.70, seconds=0.0),
                 Row("label-poisoning", problem, s, "retrain", test_accuracy=0.90, seconds=100.0, speedup=1.0),
                 Row("label-poisoning", problem, s, "second-order [kfac]", test_accuracy=closed, seconds=5.0, speedup=20.0),
                 Row("label-poisoning", problem, s, "ft [tuned]", test_accuracy=0.85, seconds=8.0, speedup=12.5)]
    tuned = {**TUNING, "evaluation_seeds": list(seeds), "fingerprint": fingerprint,
             "objectives": {problem: TUNING["objectives"][PROBLEM]},
             "chosen": [{"problem": problem, "method": "ft", "status": "tuned", "params": {"lr": 0.01}, "n_trials": 3}]}
    result = ScenarioResult("label-poisoning", size, list(seeds), rows, problems={problem: info}, environment=dict(env),
                            tuning=tuned,
                            commands=[command], seconds=60.0)
    return result.to_dict()


def test_seeds_run_apart_are_judged_together():
    alone = scenarios.merge("label-poisoning", [report([0])])
    assert not alone.goals[0].met and "1 seed (a goal needs >= 3)" in alone.goals[0].detail

    merged = scenarios.merge("label-poisoning", [report([0], command="a"), report([1, 2], command="b")])
    assert merged.seeds == [0, 1, 2] and merged.commands == ["a", "b"] and merged.seconds == 120.0
    entry = next(e for e in merged.aggregate() if e["method"] == "second-order [kfac]")
    assert entry["runs"] == 3 and entry["restored"] == pytest.approx(0.8)
    assert merged.goals[0].met, merged.goals[0].detail  # 80 % restored at 20x, above ft [tuned] in less time
    assert merged.tuning["evaluation_seeds"] == [0, 1, 2]
    # what a seed drew (e.g. a synthetic problem's rows) differs by seed: described as on the first, as in one run
    drawn = scenarios.merge("label-poisoning", [report([1], info={"drawn": 1}), report([0], info={"drawn": 0})])
    assert drawn.problems == {PROBLEM: {"drawn": 0}} and drawn.seeds == [0, 1]


def test_a_seed_run_again_replaces_its_rows_and_a_worse_row_on_one_seed_counts():
    merged = scenarios.merge("label-poisoning", [report([0, 1, 2]), report([1], closed=0.60, command="again")])
    kfac = [r for r in merged.rows if r.method == "second-order [kfac]"]
    assert sorted((r.seed, r.test_accuracy) for r in kfac) == [(0, 0.86), (1, 0.60), (2, 0.86)]
    assert len(merged.rows) == 12 and merged.commands == ["run", "again"]
    # each report's 60 s count for the share of its seeds kept: two of three, and all of one
    assert merged.seconds == pytest.approx(60.0 * 2 / 3 + 60.0)
    assert not merged.goals[0].met  # the mean over the three seeds now falls below ft [tuned]


def test_runs_of_one_problem_each_are_joined_seed_by_seed():
    other = "fashion-mnist: 20% random flips"
    merged = scenarios.merge("label-poisoning", [report([0, 1]), report([0], problem=other, command="random"),
                                                 report([1], problem=other, closed=0.5, command="random again")])
    assert merged.seeds == [0, 1] and set(merged.problems) == {PROBLEM, other}
    assert {(r.problem, r.seed) for r in merged.rows} == {(p, s) for p in (PROBLEM, other) for s in (0, 1)}
    assert len(merged.rows) == 16 and merged.commands == ["run", "random", "random again"]
    assert [r.test_accuracy for r in merged.rows if r.problem == other and r.method == "second-order [kfac]"] == [0.86, 0.5]
    # each run tuned its own problem: the budget and the chosen settings are those of both
    assert set(merged.tuning["objectives"]) == {PROBLEM, other}
    assert {c["problem"] for c in merged.tuning["chosen"]} == {PROBLEM, other}


def test_a_run_of_fewer_rows_joins_a_seed_only_when_it_trained_the_same_models():
    # a --methods run of one row on seed 1, on the same models (its original and retrained rows score alike)
    fewer = report([1], closed=0.80, command="ft only")
    fewer["rows"] = [r for r in fewer["rows"] if r["method"] != "second-order [kfac]"]
    for r in fewer["rows"]:
        r["seconds"] = {"retrain": 90.0, "ft [tuned]": 6.0}.get(r["method"], r["seconds"])
    merged = scenarios.merge("label-poisoning", [report([0, 1, 2]), fewer])
    seed1 = {r.method: r for r in merged.rows if r.seed == 1}
    assert list(seed1) == ["original", "retrain", "second-order [kfac]", "ft [tuned]"]
    assert seed1["second-order [kfac]"].seconds == 5.0  # kept from the first run
    assert seed1["ft [tuned]"].seconds == 6.0 and seed1["retrain"].seconds == 90.0  # the later run's
    assert len(merged.rows) == 12 and merged.commands == ["run", "ft only"]
    assert merged.seconds == pytest.approx(60.0 + 60.0)  # both runs spent their time on the blocks kept

    # other models (the original scores otherwise): the rows it lacks were measured on another model, refused
    other = json.loads(json.dumps(fewer))
    next(r for r in other["rows"] if r["method"] == "original")["test_accuracy"] = 0.71
    with pytest.raises(ScenarioError, match="lacks second-order \\[kfac\\].*not run on the same models.*merging would drop"):
        scenarios.merge("label-poisoning", [report([0, 1, 2]), other])
    # a run with every row replaces the seed whatever its models (a rerun on changed code)
    again = report([1], closed=0.5, command="again")
    next(r for r in again["rows"] if r["method"] == "original")["test_accuracy"] = 0.71
    replaced = scenarios.merge("label-poisoning", [report([0, 1, 2]), fewer, again])
    assert [r.test_accuracy for r in replaced.rows if r.seed == 1] == [0.71, 0.90, 0.5, 0.85]
    assert replaced.commands == ["run", "again"]
    # on a seed of its own it is merged: that seed simply has no such row
    assert len(scenarios.merge("label-poisoning", [report([0]), fewer]).rows) == 7


def test_joined_rows_keep_their_reference_and_replaced_runs_count_no_more():
    def only(methods, command, **kw):
        r = report([1], command=command, **kw)
        r["rows"] = [row for row in r["rows"] if row["method"] in ("original", "retrain", *methods)]
        return r
    a = only(["ft [tuned]"], "a")
    for row in a["rows"]:
        row["seconds"] = 90.0 if row["method"] == "retrain" else row["seconds"]
    merged = scenarios.merge("label-poisoning", [report([1]), a])
    by = {r.method: r for r in merged.rows}
    # each row records the retraining its speed-up is against: 100 s for the first run's, 90 s for the joined one's
    assert by["second-order [kfac]"].settings["retrain_seconds"] == 100.0
    assert by["ft [tuned]"].settings["retrain_seconds"] == 90.0 and by["retrain"].seconds == 90.0
    # merged again alone, or with a later join, the references stay
    again = scenarios.merge("label-poisoning", [merged.to_dict(), only(["ft [tuned]"], "a again")])
    assert {r.method: r.settings["retrain_seconds"] for r in again.rows}["second-order [kfac]"] == 100.0
    # "a" replaced by "a again": its seconds and command no longer count
    third = scenarios.merge("label-poisoning", [report([1]), a, only(["ft [tuned]"], "a again")])
    assert third.commands == ["run", "a again"] and third.seconds == pytest.approx(120.0)
    # the refusal names the report whose rows would be lost
    other = only(["second-order [kfac]"], "z")
    next(r for r in other["rows"] if r["method"] == "original")["test_accuracy"] = 0.71
    with pytest.raises(ScenarioError, match="lacks ft \\[tuned\\], which report 2 has, and was not run on the same"):
        scenarios.merge("label-poisoning", [report([1]), a, other])


def test_an_undefined_score_does_not_make_the_same_models_differ():
    def with_nan(r):
        for row in r["rows"]:
            if row["method"] == "original":
                row["efficacy"] = {"restored": float("nan")}
        return r
    fewer = with_nan(report([1], command="ft only"))
    fewer["rows"] = [r for r in fewer["rows"] if r["method"] != "second-order [kfac]"]
    merged = scenarios.merge("label-poisoning", [with_nan(report([1])), json.loads(json.dumps(fewer))])
    assert [r.method for r in merged.rows] == ["original", "retrain", "second-order [kfac]", "ft [tuned]"]


@pytest.mark.parametrize("other, match", [
    (dict(size="tiny"), "label-poisoning \\(tiny\\)"),
    (dict(env={**ENV, "threads": 2}), "threads=2"),
    (dict(fingerprint="xyz"), "tuned baselines"),
])
def test_runs_made_otherwise_are_refused(other, match):
    with pytest.raises(ScenarioError, match=match):
        scenarios.merge("label-poisoning", [report([0]), report([1], **other)])


def test_bad_merges_are_refused_with_the_reason():
    with pytest.raises(ScenarioError, match="Nothing to merge"):
        scenarios.merge("label-poisoning", [])
    with pytest.raises(ScenarioError, match="the merge is of backdoor"):
        scenarios.merge("backdoor", [report([0])])
    with pytest.raises(ScenarioError, match="not a scenario result"):
        scenarios.merge("label-poisoning", [{"rows": []}])
    with pytest.raises(ScenarioError, match="Unknown scenario"):
        scenarios.merge("nope", [report([0])])
    with pytest.raises(ScenarioError, match="have no rows"):
        scenarios.merge("label-poisoning", [{**report([0]), "rows": []}])
    with pytest.raises(ScenarioError, match="which machine"):
        scenarios.merge("label-poisoning", [report([0]), {**report([1]), "environment": {}}])


def test_the_budget_is_read_from_the_store_the_search_wrote(tmp_path):
    db_path = tmp_path / "t.sqlite"
    with tuning.TuningStore(db_path) as db:
        run_id = db.start_run("label-poisoning", "full", "abc", [1000], [0], ["ft"], 3, {})
        db.put_study("abc", PROBLEM, "ft", {"status": "tuned", "chosen": {}, "n_trials": 3, "seeds": [1000],
                                            "seconds": 42.5}, run_id)
        db.put_study("abc", "another problem", "ft", {"status": "tuned", "chosen": {}, "n_trials": 3, "seeds": [1000],
                                                      "seconds": 1000.0}, run_id)
        db.put_ref("abc", PROBLEM, 1000, {}, 170.0, run_id)
        db.put_study("other", PROBLEM, "ft", {"status": "tuned", "chosen": {}, "n_trials": 3, "seeds": [1000],
                                              "seconds": 7.0}, run_id)
    without = scenarios.merge("label-poisoning", [report([0]), report([1])])
    assert without.tuning["seconds"]["methods"] == {"ft": 0.0} and "from_store" not in without.tuning["seconds"]
    merged = scenarios.merge("label-poisoning", [report([0]), report([1])], store=db_path)
    seconds = merged.tuning["seconds"]
    # only this configuration's studies of the reports' problems, and their references' retraining
    assert seconds["methods"] == {"ft": 42.5} and seconds["references"] == 170.0 and seconds["from_store"]
    both = scenarios.merge("label-poisoning", [report([0]), report([0], problem="another problem")], store=db_path)
    assert both.tuning["seconds"]["methods"] == {"ft": 1042.5}
    assert seconds["total"] == 2.0  # this runs' own wall seconds add up
    from unlearnkit.scenarios.tuning import budget_lines

    text = "\n".join(budget_lines(merged.tuning))
    assert "read from the tuning store" in text and "trials ft 42.5 s" in text and "references 170.0 s" in text


def test_the_merged_report_is_written_with_its_commands(tmp_path):
    merged = scenarios.merge("label-poisoning", [report([0], command="cmd one"), report([1], command="cmd two")])
    paths = scenarios.write_report(merged, tmp_path)
    md = paths["md"].read_text()
    assert "2 seeds: 0, 1" in md and "`cmd one`; `cmd two`" in md
    again = ScenarioResult.from_dict(json.loads(paths["json"].read_text()))
    assert again.commands == ["cmd one", "cmd two"] and again.seeds == [0, 1]


def test_bench_merge_refuses_what_it_would_ignore():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scenarios.py"
    res = subprocess.run([sys.executable, str(script), "--merge", "x.json"], capture_output=True, text=True)
    assert res.returncode != 0 and "--merge needs exactly one scenario" in res.stderr
    res = subprocess.run([sys.executable, str(script), "--only", "canary", "--seeds", "1", "--merge", "x.json"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "--merge runs nothing: --seeds would be ignored" in res.stderr
