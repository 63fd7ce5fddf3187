"""The README quick-start runs as written; the CLI trains, unlearns and refuses bad input."""

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit.cli import app
from unlearnkit.influence import FlatModel

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _readme_block(marker: str) -> str:
    """The README's python block that contains ``marker`` (exactly one must)."""
    blocks = [b.split("```", 1)[0] for b in (ROOT / "README.md").read_text().split("```python")[1:]]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README python blocks contain {marker!r}"
    return found[0]


def test_readme_quickstart_runs():
    text = _readme_block("reference = uk.retrain(model, data, changes)")
    namespace: dict = {}
    exec(compile(text, "README quick start", "exec"), namespace)
    result, reference = namespace["result"], namespace["reference"]
    a, b = FlatModel(result.model).theta(), FlatModel(reference).theta()
    assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)) < 0.05
    # the evaluation snippet continues the quick start
    exec(compile(_readme_block("table = uk.evaluate("), "README evaluation", "exec"), namespace)
    table = namespace["table"]
    assert table["relative_distance"].unlearned < table["relative_distance"].original
    assert "accuracy_test" in table and "mia_loss_test" in table
    # the certified snippet
    exec(compile(_readme_block("certified"), "README certified", "exec"), namespace)
    cert = namespace["result"].certificate
    assert not cert.retrained and cert.remaining > 0
    assert 0 < cert.exact_residual <= cert.cumulative_bound


def test_readme_own_model_snippet_runs(capsys):
    """The "your own model" section: a plain nn.Module trained by the user's loop, wrapped, unlearned, evaluated."""
    namespace: dict = {}
    exec(compile(_readme_block("train_fn=fit"), "README own model", "exec"), namespace)
    net, model, result, retrained = (namespace[k] for k in ("net", "model", "result", "retrained"))
    assert model.module is net and net.training  # wrapped, not copied; the user's mode untouched
    assert result.method == "second-order" and type(retrained) is type(model)
    forget = namespace["forget"]
    # the update moves the forget rows' predictions towards the retrained model's
    with torch.no_grad():
        p = [torch.softmax(m(torch.as_tensor(forget.dense_rows())), 1) for m in (model, result.model, retrained)]
    assert float((p[1] - p[2]).abs().sum()) < float((p[0] - p[2]).abs().sum())
    out = capsys.readouterr().out
    assert "accuracy_forget" in out and "rte" in out


def test_readme_deep_methods_snippet_runs(capsys):
    namespace: dict = {}
    exec(compile(_readme_block("unlearning_split"), "README deep methods", "exec"), namespace)
    result, split = namespace["result"], namespace["split"]
    assert result.method == "msg" and type(result.model) is type(namespace["model"])
    assert uk.accuracy(result.model, split.test) > 0.9
    assert len(capsys.readouterr().out.split()) == 3


def test_cli_ledger_round_trip_and_tamper_detection(tmp_path):
    ledger = tmp_path / "ledger"
    r = runner.invoke(app, ["ledger", "init", str(ledger), "--data", "breast-cancer:train", "--sigma", "50"])
    assert r.exit_code == 0, r.output
    assert "budget" in r.output
    data = uk.data.load("breast-cancer:train")
    changes = tmp_path / "c.json"
    uk.Changes.relabel(data.ids[:3], 1 - data.y[:3]).to_json(changes)
    r = runner.invoke(app, ["ledger", "apply", str(ledger), "--changes", str(changes), "--reason", "ticket 17"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ledger", "history", str(ledger), "--format", "json"])
    entries = json.loads(r.output)
    assert [e["kind"] for e in entries][0] == "train" and entries[1]["reason"] == "ticket 17"
    r = runner.invoke(app, ["ledger", "verify", str(ledger)])
    assert r.exit_code == 0 and "replayed" in r.output, r.output
    out = tmp_path / "ledger.json"
    assert runner.invoke(app, ["ledger", "export", str(ledger), "--out", str(out)]).exit_code == 0
    assert len(json.loads(out.read_text())["entries"]) == 2
    # edit the parameter file behind the ledger's back
    model_file = next(ledger.glob("model-*.pt"))
    model = uk.load_model(model_file)
    with torch.no_grad():
        model.linear.weight[0, 0] += 1e-3
    uk.save_model(model, model_file)
    r = runner.invoke(app, ["ledger", "verify", str(ledger), "--no-replay"])
    assert r.exit_code == 1 and "was modified" in r.output
    r = runner.invoke(app, ["ledger", "apply", str(ledger), "--changes", str(changes)])
    assert r.exit_code == 2 and "modified outside the ledger" in r.output
    r = runner.invoke(app, ["ledger", "history", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "No ledger" in r.output


def test_cli_train_unlearn_round_trip(tmp_path):
    model_path, out = tmp_path / "m.pt", tmp_path / "m2.pt"
    r = runner.invoke(app, ["train", "--data", "breast-cancer:train", "--model", "logreg", "--out", str(model_path)])
    assert r.exit_code == 0, r.output
    changes = tmp_path / "c.json"
    ids = uk.data.load("breast-cancer:train").ids[:3]
    uk.Changes.relabel(ids, [1, 1, 1]).to_json(changes)
    r = runner.invoke(app, ["unlearn", "--model", str(model_path), "--data", "breast-cancer:train", "--changes",
                            str(changes), "--method", "second-order", "--out", str(out), "--compare-retrain"])
    assert r.exit_code == 0, r.output
    assert "rel. distance to retrained" in r.output
    before, after = uk.load_model(model_path), uk.load_model(out)
    assert not torch.equal(FlatModel(before).theta(), FlatModel(after).theta())
    assert after.train_config == before.train_config


def test_cli_reports_bad_input_without_writing(tmp_path):
    model_path, out = tmp_path / "m.pt", tmp_path / "m2.pt"
    runner.invoke(app, ["train", "--data", "wine:train", "--model", "logreg", "--out", str(model_path)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label_edits": [{"rows": [0], "labels": [7]}]}))
    r = runner.invoke(app, ["unlearn", "--model", str(model_path), "--data", "wine:train", "--changes", str(bad),
                            "--out", str(out)])
    assert r.exit_code == 2
    assert "out of range" in r.output
    assert not out.exists()
    r = runner.invoke(app, ["unlearn", "--model", str(bad), "--data", "wine:train", "--changes", str(bad),
                            "--out", str(out)])
    assert r.exit_code == 2 and "not a readable unlearnkit model file" in r.output
    r = runner.invoke(app, ["unlearn", "--model", str(model_path), "--data", "wine:train", "--changes", str(bad),
                            "--method", "nope", "--out", str(out)])
    assert r.exit_code == 2


def test_cli_methods_lists_and_describes():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "second-order" in r.output and "retrain" in r.output
    r = runner.invoke(app, ["methods", "second-order"])
    assert "damping" in r.output and "NDSS 2023" in r.output


def test_demo_runs_and_unlearning_helps():
    from unlearnkit import demo

    rows = demo.run(seed=0)
    by = {(r.problem.split(" /")[0], r.method): r for r in rows}
    # leaky feature: second order is far closer to retraining than doing nothing
    assert by[("leaky feature", "second-order")].rel_distance < 0.5 * by[("leaky feature", "original (no unlearning)")].rel_distance
    # flipped labels: both updates raise accuracy on the corrected points
    orig = by[("flipped labels", "original (no unlearning)")].corrected_acc
    assert by[("flipped labels", "first-order")].corrected_acc > orig
    assert by[("flipped labels", "second-order")].corrected_acc > orig
