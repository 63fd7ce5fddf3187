"""The metrics registry and evaluate(): real properties on real models, and refusals of bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unlearnkit as uk
from unlearnkit import metrics as M
from unlearnkit.errors import MetricError
from unlearnkit.metrics.mia import signal_m_entropy
from unlearnkit.models import MLP, LogisticRegression

from conftest import FAST_MEMORISING_RECIPE, make_logistic_data, memorising_digits_mlp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def memorised():
    """Logistic regression with more features than rows: it fits its training set to ~zero loss.

    150 of its 400 training rows form the forget set; the retrained model never saw them.
    """
    data = make_logistic_data(1400, 500, seed=0)
    train, test = data.subset(np.arange(400)), data.subset(np.arange(400, 1400))
    original = uk.train(LogisticRegression(n_features=500, l2=1e-3), train)
    changes = uk.Changes.remove(train.ids[:150].tolist())
    retrained = uk.retrain(original, train, changes)
    splits = M.EvalSplits.from_changes(train, changes, test=test)
    return original, retrained, splits


@pytest.fixture(scope="module")
def convex_case(binary_10k):
    data, model = binary_10k
    rng = np.random.default_rng(3)
    changes = uk.Changes.remove(rng.choice(data.ids, 40, replace=False).tolist())
    train, test = data, make_logistic_data(2000, 10, seed=7)  # seed 0 would repeat training rows
    result = uk.unlearn(model, train, changes, method="second-order")
    retrained = uk.retrain(model, train, changes)
    return model, result, retrained, M.EvalSplits.from_changes(train, changes, test=test)


# ---------------------------------------------------------------------------- registry and docs
def test_every_metric_declares_direction_formula_and_source():
    assert len(M.names()) >= 30
    for name in M.names():
        meta = M.info(name)
        assert meta.higher_is_better in (True, False, None), name
        if meta.higher_is_better is None:
            assert meta.ideal, name
        assert len(meta.doc.splitlines()) >= 3, f"{name}: the docstring must state the formula"
        assert meta.reference, name
    families = {M.info(n).family for n in M.names()}
    assert families == set(M.Family)


def test_docs_page_is_generated_from_the_registry():
    page = (ROOT / "docs" / "metrics.md").read_text()
    assert page == M.markdown(), "docs/metrics.md is stale: run `unlearnkit metrics --markdown > docs/metrics.md`"
    for name in M.names():
        assert f"### {name}" in page


def test_unknown_metric_lists_valid_names():
    with pytest.raises(MetricError, match="valid: .*mia_loss_test"):
        M.info("mia")


# ---------------------------------------------------------------------------- population MIA
def test_loss_mia_is_chance_on_retrained_and_high_on_memorised(memorised):
    original, retrained, splits = memorised
    table = M.evaluate(original, retrained, retrained, splits, ["mia_loss_test", "indiscernibility"])
    row = table["mia_loss_test"]
    low, high = row.intervals["retrained"]
    assert low <= 0.5 <= high, (row.retrained, low, high)
    assert table["indiscernibility"].retrained > 0.9
    o_low, _ = row.intervals["original"]
    assert o_low > 0.55, (row.original, row.intervals["original"])
    assert table["indiscernibility"].original < table["indiscernibility"].retrained


def test_loss_attack_matches_deepunlearn_protocol_on_separable_losses():
    members = np.zeros(30)
    nonmembers = np.linspace(1.0, 3.0, 50)
    res = M.loss_attack(members, nonmembers)
    assert res.accuracy == 1.0 and res.n_per_class == 30
    assert M.indiscernibility(res.accuracy) == 0.0
    assert M.indiscernibility(0.5) == 1.0
    with pytest.raises(MetricError, match="at least 10"):
        M.loss_attack(np.zeros(5), np.ones(50))
    with pytest.raises(MetricError, match="non-finite"):
        M.loss_attack(np.r_[np.zeros(20), np.nan], np.ones(50))
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        M.indiscernibility(1.2)


def test_svc_attack_sees_memorised_forget_set_as_members(memorised):
    original, retrained, splits = memorised
    table = M.evaluate(original, retrained, retrained, splits, ["mia_svc_confidence", "mia_svc_m_entropy"])
    for name in ("mia_svc_confidence", "mia_svc_m_entropy"):
        # efficacy = fraction called non-member: the memorised forget set looks like training data
        assert table[name].original < table[name].retrained - 0.2, name


def test_modified_entropy_is_song_and_mittal_formula():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    outputs = M.ModelOutputs(np.log(probs), np.array([0, 1]))
    expected = []
    for p, y in zip(probs, [0, 1]):
        others = sum(-p[c] * np.log(1 - p[c]) for c in range(3) if c != y)
        expected.append(-(1 - p[y]) * np.log(p[y]) + others)
    np.testing.assert_allclose(signal_m_entropy(outputs)[:, 0], expected, rtol=1e-12)


# ---------------------------------------------------------------------------- closeness and utility
def test_second_order_update_is_close_to_retraining_in_every_closeness_metric(convex_case):
    model, result, retrained, splits = convex_case
    table = M.evaluate(model, result, retrained, splits)
    assert table["relative_distance"].unlearned < 0.05 * table["relative_distance"].original
    assert table["kl_test"].unlearned < 0.05 * table["kl_test"].original
    assert table["gradient_residual"].unlearned < 0.05 * table["gradient_residual"].original
    assert table["gradient_residual"].retrained < 1e-6
    assert table["agreement_test"].unlearned >= table["agreement_test"].original
    assert table["retdev"].retrained == 0.0
    assert table["ratio_forget"].retrained == 1.0
    assert table["l2_distance"].retrained == 0.0 and table["kl_forget"].retrained == 0.0


def test_accuracies_agree_with_training_accuracy(convex_case):
    model, result, retrained, splits = convex_case
    table = M.evaluate(model, result, retrained, splits, ["accuracy_retain", "accuracy_forget", "accuracy_test",
                                                           "ratio_test", "retdev"])
    assert table["accuracy_retain"].original == pytest.approx(uk.accuracy(model, splits.retain))
    assert table["accuracy_forget"].unlearned == pytest.approx(uk.accuracy(result.model, splits.forget))
    assert table["ratio_test"].unlearned == pytest.approx(
        uk.accuracy(result.model, splits.test) / uk.accuracy(retrained, splits.test))
    rr, fr, tr = (table[n].unlearned for n in ("accuracy_retain", "accuracy_forget", "accuracy_test"))
    ref = [table[n].retrained for n in ("accuracy_retain", "accuracy_forget", "accuracy_test")]
    expected = sum(abs(a / b - 1) for a, b in zip((rr, fr, tr), ref))
    assert table["retdev"].unlearned == pytest.approx(expected)


def test_kl_and_agreement_closed_form():
    a = M.ModelOutputs(np.log(np.array([[0.5, 0.5], [0.9, 0.1]])), np.array([0, 0]))
    b = M.ModelOutputs(np.log(np.array([[0.25, 0.75], [0.9, 0.1]])), np.array([0, 0]))
    expected = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)) / 2
    assert M.kl_divergence(a, b) == pytest.approx(expected)
    assert M.kl_divergence(a, a) == 0.0
    assert M.agreement(a, b) == 0.5


def test_efficiency_uses_the_costs_measured_in_the_run(convex_case):
    model, result, retrained, splits = convex_case
    table = M.evaluate(model, result, retrained, splits, ["seconds", "per_sample_gradients", "rte"])
    assert table["seconds"].unlearned == pytest.approx(result.seconds)
    assert table["seconds"].retrained == pytest.approx(retrained.train_seconds)
    assert table["seconds"].original is None
    # 2|Z| for the update; the guard judging the step reuses the update's gradient difference
    assert table["per_sample_gradients"].unlearned == result.per_sample_gradients == 40
    assert table["rte"].unlearned == pytest.approx(retrained.train_seconds / result.seconds)
    assert table["rte"].retrained == 1.0
    explicit = M.evaluate(model, result, retrained, splits, ["rte"],
                          costs={"unlearned": M.Costs(2.0), "retrained": M.Costs(10.0)})
    assert explicit["rte"].unlearned == 5.0


def test_table_exports(convex_case):
    model, result, retrained, splits = convex_case
    table = M.evaluate(model, result, retrained, splits, ["accuracy_test", "mia_loss_test", "seconds"])
    records = json.loads(table.to_json())
    assert [r["metric"] for r in records] == ["accuracy_test", "mia_loss_test", "seconds"]
    assert records[1]["intervals"]["unlearned"][0] <= records[1]["unlearned"]
    csv_lines = table.to_csv().strip().splitlines()
    assert csv_lines[0].startswith("metric,model,value") and len(csv_lines) == 1 + 3 * 3
    assert len(table.long()) == 9
    assert "| seconds | lower | - |" in table.to_markdown()


def test_default_metrics_are_the_cheap_ones_whose_inputs_exist(convex_case):
    model, result, retrained, splits = convex_case
    table = M.evaluate(model, result, retrained, splits)
    assert "accuracy_val" not in table  # no validation split given
    assert not any(n.startswith(("lira", "ulira", "exposure")) for n in table.metrics)
    assert "mia_loss_test" in table and "gradient_residual" in table and "rte" in table


# ---------------------------------------------------------------------------- bad input
def test_mismatched_inputs_are_refused(convex_case, tiny_mlp):
    model, result, retrained, splits = convex_case
    other = LogisticRegression(n_features=11, l2=1.0)
    with pytest.raises(MetricError, match="differ in architecture"):
        M.evaluate(model, result, other, splits)
    with pytest.raises(MetricError, match="differ in architecture"):
        M.parameter_distance(model, tiny_mlp[1])
    wrong_data = M.EvalSplits.from_forget(tiny_mlp[0], tiny_mlp[0].ids[:5])
    with pytest.raises(MetricError, match="shape"):
        M.evaluate(model, result, retrained, wrong_data, ["accuracy_forget"])
    a = M.ModelOutputs(np.zeros((3, 2)), np.zeros(3, dtype=int))
    b = M.ModelOutputs(np.zeros((4, 2)), np.zeros(4, dtype=int))
    with pytest.raises(MetricError, match="cannot be compared"):
        M.kl_divergence(a, b)
    with pytest.raises(MetricError, match="do not match"):
        M.ModelOutputs(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(MetricError, match="non-finite"):
        M.ModelOutputs(np.array([[0.0, np.nan]]), np.zeros(1, dtype=int))


def test_missing_inputs_are_named(convex_case):
    model, result, retrained, splits = convex_case
    with pytest.raises(MetricError, match="shadow=ShadowSetup"):
        M.evaluate(model, result, retrained, splits, ["lira_auc"])
    with pytest.raises(MetricError, match="splits.val"):
        M.evaluate(model, result, retrained, splits, ["accuracy_val"])
    with pytest.raises(MetricError, match="canary"):
        M.evaluate(model, result, retrained, splits, ["exposure"])
    with pytest.raises(MetricError, match="EvalSplits"):
        M.evaluate(model, result, retrained, {"forget": splits.forget})
    with pytest.raises(MetricError, match="unlearned model"):
        M.evaluate(model, None, retrained, splits)


def test_bad_splits_are_refused(binary_10k):
    data, _ = binary_10k
    with pytest.raises(MetricError, match="empty"):
        M.EvalSplits.from_forget(data, [])
    with pytest.raises(MetricError, match="does not fit"):
        M.EvalSplits.from_forget(data, [10**9])
    with pytest.raises(MetricError, match="both retain and forget"):
        M.EvalSplits(data, data.subset(np.arange(3)))
    with pytest.raises(MetricError, match="Costs.seconds"):
        M.Costs(float("nan"))


# ---------------------------------------------------------------------------- shadow models
class CountingTrainer:
    def __init__(self):
        self.calls = 0

    def __call__(self, template, data, seed):
        self.calls += 1
        config = uk.TrainConfig(optimizer="lbfgs", dtype="float64", max_iter=30, seed=seed)
        return uk.train(type(template)(**template.config), data, config=config)


def test_shadow_models_are_cached_on_disk_and_resume(tmp_path):
    data = make_logistic_data(120, 3, n_classes=3, seed=4)
    template = MLP(n_features=3, n_classes=3, hidden=(4,), l2=1e-2)
    trainer = CountingTrainer()
    with pytest.raises(MetricError, match="trainer_key"):
        M.ShadowSetup(data, template, n_splits=8, trainer=trainer, cache_dir=tmp_path)
    setup = M.ShadowSetup(data, template, n_splits=8, n_partitions=2, trainer=trainer, trainer_key="lbfgs30",
                          cache_dir=tmp_path)
    assert setup.in_mask.shape == (8, 120) and (setup.in_mask.sum(axis=1) == 60).all()
    for s in range(8):
        parts = setup.partitions[s]
        assert set(parts[setup.in_mask[s]]) == {0, 1} and (parts[~setup.in_mask[s]] == -1).all()
    first = M.ulira(setup, "retrain")
    assert trainer.calls == 8 * 2  # one retrained model per (split, partition); originals are not needed
    # a second process on the same cache: nothing is trained again, the numbers are identical
    again = M.ShadowSetup(data, template, n_splits=8, n_partitions=2, trainer=CountingTrainer(),
                          trainer_key="lbfgs30", cache_dir=tmp_path)
    second = M.ulira(again, "retrain")
    assert again.trainer.calls == 0
    np.testing.assert_array_equal(first.attack.scores, second.attack.scores)
    # a corrupted cache file is recomputed, not trusted
    victim = next(p for p in (tmp_path).rglob("retrain-s0-f0-*.npy"))
    victim.write_bytes(b"garbage")
    third = M.ShadowSetup(data, template, n_splits=8, n_partitions=2, trainer=CountingTrainer(),
                          trainer_key="lbfgs30", cache_dir=tmp_path)
    M.ulira(third, "retrain")
    assert third.trainer.calls == 1


def test_shadow_pool_must_contain_the_attacked_rows(convex_case):
    model, result, retrained, splits = convex_case
    pool = make_logistic_data(100, 10, seed=9).replace(ids=np.arange(10**6, 10**6 + 100))
    setup = M.ShadowSetup(pool, model, n_splits=4)
    with pytest.raises(MetricError, match="not in the shadow pool"):
        M.evaluate(model, result, retrained, splits, ["lira_auc"], shadow=setup)
    with pytest.raises(MetricError, match="n_splits"):
        M.ShadowSetup(pool, model, n_splits=3)
    with pytest.raises(MetricError, match="U-LiRA needs n_splits >= 8"):
        M.ulira(setup, "retrain")


@pytest.fixture(scope="module")
def digits_shadow():
    """Digits (800 rows), an MLP trained to memorise, 16 shadow splits x 4 forget partitions.

    80 models are trained (16 shadow models, 64 retrained ones for U-LiRA), each with the fast
    recipe (210 Adam steps instead of 1,300).
    """
    pool, train, test, original, changes, retrained = memorising_digits_mlp(800, FAST_MEMORISING_RECIPE)
    splits = M.EvalSplits.from_changes(train, changes, test=test)
    setup = M.ShadowSetup(pool, original, n_splits=16, n_partitions=4, seed=0)
    table = M.evaluate(original, retrained, retrained, splits,
                       ["lira_auc", "lira_offline_auc", "lira_tpr_at_1pct_fpr", "ulira_auc", "ulira_auc_correctness",
                        "ulira_p_member", "ulira_p_member_correctness"], shadow=setup, method="retrain")
    return table


def test_lira_detects_the_original_forget_set_but_not_the_retrained_one(digits_shadow):
    table = digits_shadow
    assert table["lira_auc"].original > 0.6
    assert abs(table["lira_auc"].retrained - 0.5) < 0.07
    assert table["lira_offline_auc"].original > table["lira_offline_auc"].retrained + 0.05


def test_ulira_separates_no_unlearning_from_retraining(digits_shadow):
    table = digits_shadow
    assert table["ulira_auc"].original > 0.6
    assert abs(table["ulira_auc"].retrained - 0.5) < 0.05
    assert table["ulira_p_member"].original > table["ulira_p_member"].retrained
    assert abs(table["ulira_auc_correctness"].retrained - 0.5) < 0.05
    # exact unlearning is rated at 0.5 (measured 0.497-0.505) and the model that forgets nothing above it
    # (0.53-0.56), for both statistics
    for name in ("ulira_p_member", "ulira_p_member_correctness"):
        assert abs(table[name].retrained - 0.5) < 0.015, (name, table[name].retrained)
        assert table[name].original > table[name].retrained + 0.015, (name, table[name].original)


# ---------------------------------------------------------------------------- CLI
def test_cli_evaluate_prints_and_writes_the_table(tmp_path):
    spec = "synthetic:n=500,d=10,seed=1"
    data = uk.data.load(spec)
    model = uk.train(uk.models.for_data("logreg", data), data)
    uk.save_model(model, tmp_path / "o.pt")
    changes = uk.Changes.remove(data.ids[:20].tolist())
    changes.to_json(tmp_path / "c.json")
    result = uk.unlearn(model, data, changes)
    uk.save_model(result.model, tmp_path / "u.pt", metadata={"unlearned": result.to_dict()})
    cmd = [sys.executable, "-m", "unlearnkit.cli", "evaluate", "--original", str(tmp_path / "o.pt"),
           "--unlearned", str(tmp_path / "u.pt"), "--data", spec, "--changes", str(tmp_path / "c.json"),
           "--metrics", "accuracy_forget,relative_distance,rte", "--format", "json", "--out", str(tmp_path / "t.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["metric"] for r in rows] == ["accuracy_forget", "relative_distance", "rte"]
    assert rows[1]["unlearned"] < rows[1]["original"]
    assert rows[2]["unlearned"] > 0 and math.isfinite(rows[2]["unlearned"])
    bad = subprocess.run(cmd[:-6] + ["--metrics", "nope"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Unknown metric 'nope'" in bad.stderr
    listing = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "metrics"], capture_output=True, text=True)
    assert listing.returncode == 0 and "indiscernibility" in listing.stdout


# ---------------------------------------------------------------------------- robustness (review findings)
def test_default_run_reports_a_metric_it_cannot_compute_as_nan(binary_10k):
    data, model = binary_10k
    changes = uk.Changes.remove(data.ids[:5].tolist())  # too few rows for the loss attack
    result = uk.unlearn(model, data, changes)
    retrained = uk.retrain(model, data, changes)
    splits = M.EvalSplits.from_changes(data, changes, test=make_logistic_data(500, 10, seed=3))
    table = M.evaluate(model, result, retrained, splits)
    assert math.isnan(table["mia_loss_test"].unlearned)
    assert "at least 10" in table["mia_loss_test"].detail["error"]
    assert json.loads(table.to_json())[[r.metric for r in table].index("mia_loss_test")]["unlearned"] is None
    assert table["relative_distance"].unlearned < 0.05  # the rest of the table is intact
    with pytest.raises(MetricError, match="at least 10"):
        M.evaluate(model, result, retrained, splits, ["mia_loss_test"])


def test_costs_are_validated(convex_case):
    model, result, retrained, splits = convex_case
    assert not hasattr(result.model, "train_seconds")  # an update does not inherit the training time
    with pytest.raises(MetricError, match="Cannot read costs"):
        M.evaluate(model, result, retrained, splits, ["rte"], costs={"unlearned": 3.0})
    with pytest.raises(MetricError, match="integer count"):
        M.Costs(1.0, hvps=2.5)
    table = M.evaluate(model, result, retrained, splits, ["rte"], costs={"unlearned": M.Costs(0.0)})
    assert math.isnan(table["rte"].unlearned)
    with pytest.raises(MetricError, match="svc_max_samples"):
        M.evaluate(model, result, retrained, splits, svc_max_samples=0)


def test_held_out_rows_that_are_forget_rows_are_refused(binary_10k):
    data, _ = binary_10k
    changes = uk.Changes.remove(data.ids[:20].tolist())
    with pytest.raises(MetricError, match="also in the test set"):
        M.EvalSplits.from_changes(data, changes, test=data.subset(np.arange(50)))
    # the same ids on other rows (a test set from another source) are fine
    M.EvalSplits.from_changes(data, changes, test=make_logistic_data(50, 10, seed=11))


def test_fixed_variance_variants_run_leaving_one_split_out(tmp_path):
    data = make_logistic_data(160, 3, n_classes=3, seed=4)
    template = MLP(n_features=3, n_classes=3, hidden=(4,), l2=1e-2)
    setup = M.ShadowSetup(data, template, n_splits=8, n_partitions=2, trainer=CountingTrainer(), trainer_key="t")
    for fix in (False, True):
        res = M.ulira(setup, "original", fix_variance=fix)
        assert np.all(np.isfinite(res.attack.scores)) and 0.0 <= res.auc <= 1.0
    members = data.subset(np.flatnonzero(setup.in_mask[0])[:20])
    nonmembers = data.subset(np.flatnonzero(~setup.in_mask[0])[:20])
    for online in (True, False):
        scores = M.lira(setup, setup.model(0), members, nonmembers, online=online, fix_variance=True)
        assert np.all(np.isfinite(scores.scores))


def test_cli_refuses_metrics_it_cannot_build(tmp_path):
    from typer.testing import CliRunner

    from unlearnkit.cli import app

    r = CliRunner().invoke(app, ["evaluate", "--original", "o.pt", "--unlearned", "u.pt", "--data", "digits",
                                 "--changes", "c.json", "--metrics", "lira_auc"])
    assert r.exit_code == 2 and "cannot build" in r.output
