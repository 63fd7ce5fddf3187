"""Before → after: ``uk.unlearn`` and ``unlearnkit unlearn`` say when an update made the model worse."""

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit.cli import app
from unlearnkit.data import standardize
from unlearnkit.errors import MethodError
from unlearnkit.models import LogisticRegression
from unlearnkit.training import TrainConfig, train

runner = CliRunner()


@pytest.fixture(scope="module")
def cancer():
    return uk.data.load("breast-cancer:train")


def _logreg(data):
    return train(LogisticRegression(n_features=data.n_features, l2=1.0), data, config=TrainConfig(seed=0))


def _flip(data, k=30):
    return uk.Changes.relabel(data.ids[:k], 1 - data.y[:k])


def test_unscaled_logreg_update_is_flagged_with_cause_and_fix(cancer, caplog):
    """Raw breast-cancer features (scales 1e-3..1e3): the exact second-order step overshoots, and says so."""
    model = _logreg(cancer)
    with caplog.at_level(logging.WARNING, logger="unlearnkit.before_after"):
        result = uk.unlearn(model, cancer, _flip(cancer), method="second-order", guard=False)  # the raw one-step update
    check = result.diagnostics["check"]
    assert set(check) == {"accuracy_corrected_rows", "gradient_residual"}
    res = check["gradient_residual"]
    assert res["better"] == "lower" and res["after"] > res["before"]
    assert result.worse == ["gradient_residual"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "unlearnkit.before_after"]
    assert len(warnings) == 1
    assert "gradient residual" in warnings[0] and "standardise" in warnings[0] and "--standardize" in warnings[0]


def test_standardised_logreg_feature_edit_is_better_on_every_measure(cancer, caplog):
    data, = standardize(cancer)
    model = _logreg(data)
    changes = uk.Changes.zero_features([3])
    with caplog.at_level(logging.WARNING):
        result = uk.unlearn(model, data, changes, method="second-order", check="full")
    check = result.diagnostics["check"]
    assert set(check) == {"accuracy_corrected_rows", "accuracy_corrected_data", "gradient_residual"}
    assert check["gradient_residual"]["after"] < 0.1 * check["gradient_residual"]["before"]
    assert result.worse == [] and not caplog.records
    assert "check" not in uk.unlearn(model, data, changes, method="second-order", check=False).diagnostics
    with pytest.raises(MethodError, match="check must be"):
        uk.unlearn(model, data, changes, check="sometimes")


def test_flagged_overshoot_is_cured_by_the_fix_the_warning_names(cancer, caplog):
    """Ten confidently fitted rows relabelled: the one-step update overshoots (accuracy on the corrected data falls,
    the residual grows); refine=1e-6, the fix the warning names, reaches the retrained model."""
    data, = standardize(cancer)
    model = _logreg(data)
    rows = np.random.default_rng(0).choice(len(data), 10, replace=False)
    changes = uk.Changes.relabel(data.ids[rows], 1 - data.y[rows])
    with caplog.at_level(logging.WARNING, logger="unlearnkit.before_after"):
        result = uk.unlearn(model, data, changes, method="second-order", check="full", guard=False)  # the raw step
    assert set(result.worse) == {"accuracy_corrected_data", "gradient_residual"}
    assert all("refine=1e-6" in r.getMessage() for r in caplog.records) and len(caplog.records) == 2
    fixed = uk.unlearn(model, data, changes, method="second-order", check="full", refine=1e-6)
    assert fixed.worse == [] and fixed.diagnostics["check"]["gradient_residual"]["after"] < 1e-3


def test_cached_curvature_request_stays_off_the_n_row_pass_by_default(cancer, monkeypatch):
    data, = standardize(cancer)
    model = _logreg(data)
    fitted = uk.curvature.fit(model, data, kind="exact")
    from unlearnkit import before_after

    calls = []
    real = before_after.residual
    monkeypatch.setattr(before_after, "residual", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = uk.unlearn(model, data, _flip(data, 5), method="second-order", curvature=fitted)
    assert set(result.diagnostics["check"]) == {"accuracy_corrected_rows"} and not calls
    result = uk.unlearn(model, data, _flip(data, 5), method="second-order", curvature=fitted, check="full")
    assert "gradient_residual" in result.diagnostics["check"] and len(calls) == 2


def _damaged_mlp(tmp_path):
    """An MLP on a CSV and a relabelling of 30 rows that the unguarded second-order step damages."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = ((X[:, 0] * X[:, 1] + 0.3 * X[:, 2]) > 0).astype(int)
    lines = [",".join(f"{v:.5f}" for v in row) + f",{lab}\n" for row, lab in zip(X, y)]
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,c,d,label\n" + "".join(lines[:300]))
    (tmp_path / "val.csv").write_text("a,b,c,d,label\n" + "".join(lines[300:]))  # held-out rows
    model = tmp_path / "m.pt"
    r = runner.invoke(app, ["train", "--data", str(csv), "--model", "mlp", "--epochs", "30", "--lr", "1e-2",
                            "--out", str(model)])
    assert r.exit_code == 0, r.output
    changes = tmp_path / "c.json"
    changes.write_text(json.dumps({"label_edits": [{"rows": list(range(30)), "labels": [int(1 - v) for v in y[:30]]}]}))
    return ["unlearn", "--model", str(model), "--data", str(csv), "--changes", str(changes),
            "--method", "second-order", "--param", "guard=false", "--compare-retrain"]


def test_cli_unlearn_of_a_damaged_mlp_prints_before_after_and_warns_and_strict_exits_1(tmp_path):
    command = _damaged_mlp(tmp_path)
    out = tmp_path / "u.pt"
    r = runner.invoke(app, command + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "original" in r.output and "unlearned" in r.output and "retrained" in r.output
    assert "accuracy on the corrected data" in r.output and "(worse)" in r.output
    assert "warning: accuracy on the corrected data got worse after second-order" in r.output
    assert "farther from the retrained" in r.output
    assert "Likely cause" in r.output and "guard" in r.output and out.exists()

    r = runner.invoke(app, command + ["--out", str(out), "--format", "json"])
    report = json.loads(r.stdout)
    acc = report["measures"]["accuracy_corrected_data"]
    # the step took the accuracy on the corrected data down past the retrained model's, farther from it than before
    assert acc["better"] == "higher" and acc["unlearned"] < acc["retrained"] - 0.03 and acc["worse"]
    assert abs(acc["unlearned"] - acc["retrained"]) > abs(acc["original"] - acc["retrained"]) + 0.005
    assert "accuracy_corrected_data" in report["worse"] and report["written"]

    # retraining is the reference: measured, never judged worse, although it lowers the accuracy on the corrected data
    retrain = [c for c in command if c != "guard=false"]
    retrain = retrain[:retrain.index("--method")] + ["--method", "retrain"]
    r = runner.invoke(app, retrain + ["--out", str(out), "--strict", "--format", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    acc = report["measures"]["accuracy_corrected_data"]
    assert acc["unlearned"] < acc["original"] and report["worse"] == [] and report["written"]

    strict_out = tmp_path / "strict.pt"
    r = runner.invoke(app, command + ["--out", str(strict_out), "--strict"])
    assert r.exit_code == 1
    assert "not written" in r.output and "--strict" in r.output
    assert not strict_out.exists()

    # the fix the warning names: the guarded update, with held-out rows
    guarded = [c for c in command if c not in ("guard=false", "--compare-retrain")][:-1] + [
        "--param", "guard=true", "--val", str(tmp_path / "val.csv"), "--compare-retrain"]
    r = runner.invoke(app, guarded + ["--out", str(strict_out), "--strict"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "(worse)" not in r.output and strict_out.exists()


def test_a_rejected_guarded_update_is_not_warned_about_twice(caplog):
    from unlearnkit import before_after
    from unlearnkit.influence.updates import UnlearnResult

    result = UnlearnResult(None, "second-order", 0.1, 3, diagnostics={
        "status": "rejected", "check": {"accuracy_corrected_rows": before_after.entry(0.9, 0.5, "higher")}})
    assert result.worse == ["accuracy_corrected_rows"]
    with caplog.at_level(logging.WARNING):
        before_after.warn(result, convex=False)
        assert not caplog.records
        result.diagnostics["status"] = "accepted"
        before_after.warn(result, convex=False)
    assert len(caplog.records) == 1 and "0.9000 -> 0.5000" in caplog.records[0].getMessage()


def test_cli_compare_retrain_reports_times_and_speedup(tmp_path, cancer):
    _, csv, model = _cancer_csv(tmp_path, cancer)
    out, changes = tmp_path / "u.pt", tmp_path / "c.json"
    changes.write_text(json.dumps({"feature_edits": [{"columns": [3], "values": [0.0], "rows": None}]}))
    r = runner.invoke(app, ["unlearn", "--model", str(model), "--data", str(csv), "--changes", str(changes),
                            "--out", str(out), "--compare-retrain", "--strict", "--format", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["worse"] == [] and report["written"] and out.exists()
    assert set(report["measures"]) == {"accuracy_corrected_rows", "accuracy_corrected_data", "gradient_residual",
                                       "distance_to_retrained"}
    dist = report["measures"]["distance_to_retrained"]
    assert dist["unlearned"] < dist["original"] and dist["retrained"] == 0.0
    assert report["seconds"]["retrain"] > 0 and report["speedup"] == pytest.approx(
        report["seconds"]["retrain"] / report["seconds"]["unlearn"])
    r = runner.invoke(app, ["unlearn", "--model", str(model), "--data", str(csv), "--changes", str(changes),
                            "--out", str(out), "--compare-retrain"])
    assert r.exit_code == 0 and "speed-up over retraining" in r.output and "retrained" in r.output
    assert "warning" not in r.output


def _cancer_csv(tmp_path, cancer):
    data, = standardize(cancer)
    csv = tmp_path / "s.csv"
    names = [f"f{i}" for i in range(data.n_features)]
    csv.write_text(",".join(names) + ",label\n" + "".join(
        ",".join(f"{v:.6f}" for v in row) + f",{int(lab)}\n" for row, lab in zip(data.X, data.y)))
    model = tmp_path / "m.pt"
    assert runner.invoke(app, ["train", "--data", str(csv), "--out", str(model)]).exit_code == 0
    return data, csv, model


def test_cli_update_that_reaches_retraining_is_not_worse_although_the_accuracy_drops(tmp_path, cancer):
    """Relabelling 40 rows: retraining lowers the accuracy on the corrected data; an update that reaches the retrained
    model (second-order refined to the optimum) and retraining itself pass --strict."""
    data, csv, model = _cancer_csv(tmp_path, cancer)
    rows = np.random.default_rng(0).choice(len(data), 40, replace=False)
    changes = tmp_path / "c.json"
    changes.write_text(json.dumps({"label_edits": [{"rows": [int(r) for r in rows],
                                                    "labels": [int(1 - data.y[r]) for r in rows]}]}))
    base = ["unlearn", "--model", str(model), "--data", str(csv), "--changes", str(changes), "--strict",
            "--format", "json", "--out", str(tmp_path / "u.pt")]
    r = runner.invoke(app, base + ["--method", "second-order", "--param", "refine=1e-6", "--compare-retrain"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    acc = report["measures"]["accuracy_corrected_data"]
    assert acc["unlearned"] < acc["original"] - 0.01  # retraining lowers it, and the update follows
    assert acc["unlearned"] == pytest.approx(acc["retrained"], abs=0.003) and not acc["worse"]
    assert report["measures"]["distance_to_retrained"]["unlearned"] < 1e-3 and report["worse"] == []
    for extra in ([], ["--compare-retrain"]):  # retraining is the reference: never worse, with or without it
        r = runner.invoke(app, base + ["--method", "retrain"] + extra)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["worse"] == []
    # without the retrained model the drop (< k/n) is not called worse either, and the warning would say how to judge
    r = runner.invoke(app, base + ["--method", "second-order", "--param", "refine=1e-6"])
    assert r.exit_code == 0, r.output


def test_api_judges_against_the_retrained_model_when_given(cancer):
    data, = standardize(cancer)
    model = _logreg(data)
    rows = np.random.default_rng(1).choice(len(data), 40, replace=False)
    changes = uk.Changes.relabel(data.ids[rows], 1 - data.y[rows])
    ref = uk.training.retrain(model, data, changes)
    exact = uk.unlearn(model, data, changes, method="retrain", check="full")
    assert exact.worse == [] and set(exact.diagnostics["check"]) >= {"accuracy_corrected_data", "gradient_residual"}
    result = uk.unlearn(model, data, changes, method="second-order", refine=1e-6, check="full", retrained=ref)
    check = result.diagnostics["check"]
    assert check["accuracy_corrected_data"]["retrained"] == pytest.approx(uk.training.accuracy(ref, changes.apply(data)))
    assert all("retrained" in m for m in check.values()) and result.worse == []
    # judged against the retrained value: an accuracy that overshoots it is as wrong as one that falls short
    from unlearnkit import before_after

    assert before_after.is_worse(0.90, 0.78, "higher", retrained=0.85)
    assert not before_after.is_worse(0.90, 0.85, "higher", retrained=0.85)
    assert before_after.is_worse(0.90, 0.86, "higher")  # a drop of 0.04: worse without a reference ...
    assert not before_after.is_worse(0.90, 0.86, "higher", retrained=0.85)  # ... not when it moved toward 0.85 ...
    assert not before_after.is_worse(0.90, 0.86, "higher", slack=40 / 455)  # ... nor within k/n (40 of 455 rows)
    text = before_after.describe("accuracy_corrected_data", {"before": 0.9, "after": 0.7, "better": "higher"},
                                 convex=True, method="second-order")
    assert "--compare-retrain" in text and "retrained=" in text
    assert "milder" not in before_after.advice("accuracy_corrected_data", convex=False, method="retrain")


def test_check_evaluates_each_model_where_it_lives(cancer):
    """unlearn(model_on_cpu, ..., device=...) leaves the original where it is; the check must then not send the
    original's batches to the unlearned model's device (a CPU model fed batches on another device raises). The meta
    device stands in for a GPU here: a batch there cannot meet a CPU model."""
    from unlearnkit import before_after

    data, = standardize(cancer)
    model = _logreg(data)
    changes = _flip(data)
    unlearned = uk.unlearn(model, data, changes, method="second-order", check=False).model
    here = before_after.measure(model, unlearned, data, changes, check=before_after.Check.FULL)
    elsewhere = before_after.measure(model, unlearned, data, changes, check=before_after.Check.FULL, device="meta")
    assert elsewhere == here and set(here) == {"accuracy_corrected_rows", "accuracy_corrected_data", "gradient_residual"}
