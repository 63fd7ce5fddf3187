"""The shell path with your own data: CSV columns, text labels, ids, stored scaling, `data show`, row scaling."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit.cli import app
from unlearnkit.data.preprocess import Preprocessing
from unlearnkit.influence import FlatModel

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _run(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output[-2000:])
    return result


def write_pets(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A small CSV as a user would have it: an id column, features on very different scales, text labels."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(30000, 9000, n)
    height = rng.normal(0.5, 0.2, n)
    score = weight / 9000 + height * 5 + rng.normal(0, 0.5, n)
    species = np.where(score > np.median(score), "dog", "cat").astype(object)
    species[::6] = "eel"
    lines = ["id,weight_g,height_m,species"]
    lines += [f"{1000 + i},{weight[i]:.1f},{height[i]:.3f},{species[i]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _theta(model):
    return FlatModel(model).theta().detach()


def test_text_labels_round_trip_train_unlearn_evaluate(tmp_path):
    csv = write_pets(tmp_path / "pets.csv")
    model, out = tmp_path / "m.pt", tmp_path / "u.pt"
    _run("train", "--data", f"{csv}:train", "--label-column", "species", "--id-column", "id", "--out", model)
    stored = Preprocessing.of_model(uk.load_model(model))
    assert stored.class_names == ("cat", "dog", "eel") and stored.label_column == "species" and stored.id_column == "id"
    changes = tmp_path / "c.json"
    uk.Changes.relabel([1001], [0]).to_json(changes)  # ids of the file (1001 is in the training part)
    # unlearn and evaluate read the file the same way without the options
    _run("unlearn", "--model", model, "--data", f"{csv}:train", "--changes", changes, "--out", out)
    result = _run("evaluate", "--original", model, "--unlearned", out, "--data", f"{csv}:train",
                  "--changes", changes, "--test", f"{csv}:test", "--format", "json")
    assert "accuracy_test" in json.dumps(json.loads(result.stdout)), result.stdout[:500]  # the test file was read
    # the same option again is fine; a contradicting one is refused by name
    _run("unlearn", "--model", model, "--data", f"{csv}:train", "--label-column", "species", "--changes", changes,
         "--out", out)
    bad = _run("unlearn", "--model", model, "--data", f"{csv}:train", "--label-column", "2", "--changes", changes,
               "--out", out, code=2)
    assert "--label-column 2 contradicts the model" in bad.output and "'species'" in bad.output
    # the stored column by its index (species is column 3, or -1) is the same column, not a contradiction
    for same in ("3", "-1"):
        _run("unlearn", "--model", model, "--data", f"{csv}:train", "--label-column", same, "--changes", changes,
             "--out", out)
    # label edits may name the classes: the same model as with the code
    named = tmp_path / "named.json"
    named.write_text('{"label_edits": [{"rows": [1001], "labels": ["cat"]}]}')
    _run("unlearn", "--model", model, "--data", f"{csv}:train", "--changes", named, "--out", tmp_path / "n.pt")
    assert torch.equal(_theta(uk.load_model(tmp_path / "n.pt")), _theta(uk.load_model(out)))
    named.write_text('{"label_edits": [{"rows": [1001], "labels": ["fox"]}]}')
    bad = _run("unlearn", "--model", model, "--data", f"{csv}:train", "--changes", named, "--out", tmp_path / "n.pt",
               code=2)
    assert "$.label_edits[0].labels[0]: 'fox' is not a class of the model; its classes are 0=cat, 1=dog, 2=eel" in bad.output
    # a test file with a class the model never saw: the row and the value are named
    other = tmp_path / "other.csv"
    other.write_text("id,weight_g,height_m,species\n1,30000,0.5,dog\n2,20000,0.4,fox\n")
    bad = _run("evaluate", "--original", model, "--unlearned", out, "--data", f"{csv}:train", "--changes", changes,
               "--test", other, code=2)
    assert "line 3, column 'species': label 'fox' is not one of the 3 classes" in bad.output


@pytest.mark.parametrize("args, message", [
    (["--label-column", "kind"], "no column named 'kind'"),
    (["--label-column", "7"], "label_column=7 is out of range for 4 columns"),
    (["--label-column", "species", "--id-column", "weight"], "no column named 'weight'"),
    ([], "no column named 'label'"),
])
def test_bad_columns_exit_2_with_the_columns_listed(tmp_path, args, message):
    csv = write_pets(tmp_path / "pets.csv", n=12)
    result = _run("train", "--data", csv, *args, "--out", tmp_path / "m.pt", code=2)
    assert message in result.output and "'id', 'weight_g', 'height_m', 'species'" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_column_options_refused_for_embedded_data(tmp_path):
    result = _run("train", "--data", "digits:train", "--label-column", "label", "--out", tmp_path / "m.pt", code=2)
    assert "applies to .csv files only" in result.output


def test_standardize_is_stored_and_unlearn_uses_standardized_data(tmp_path):
    csv = write_pets(tmp_path / "pets.csv")
    model, out = tmp_path / "m.pt", tmp_path / "u.pt"
    warned = _run("train", "--data", f"{csv}:train", "--label-column", "species", "--id-column", "id",
                  "--out", tmp_path / "raw.pt")
    assert "differ in scale" in warned.stderr and "train with --standardize" in warned.stderr
    quiet = _run("train", "--data", f"{csv}:train", "--label-column", "species", "--id-column", "id", "--standardize",
                 "--out", model)
    assert "warning" not in quiet.stderr
    net = uk.load_model(model)
    prep = Preprocessing.of_model(net)
    train_part = uk.data.load(f"{csv}:train", label_column="species", id_column="id")
    assert prep.mean == pytest.approx(train_part.X.mean(axis=0).tolist(), rel=1e-12)
    # a feature edit in grams and a removal, as the user writes them
    changes = uk.Changes.set_features([0], [25000.0], [1003]) + uk.Changes.remove([1001])
    changes.to_json(tmp_path / "c.json")
    _run("unlearn", "--model", model, "--data", f"{csv}:train", "--changes", tmp_path / "c.json", "--out", out)
    # the Python path: standardise with the stored statistics, map the edit by hand, unlearn
    data = prep.apply(train_part)
    mean, std = prep.mean[0], prep.std[0]
    by_hand = uk.Changes.set_features([0], [(25000.0 - mean) / std], [1003]) + uk.Changes.remove([1001])
    expected = uk.unlearn(net, data, by_hand, method="second-order").model
    assert torch.allclose(_theta(uk.load_model(out)), _theta(expected), rtol=1e-6, atol=1e-8)
    # the same change set taken as standardised values (no mapping) gives another model: the mapping matters
    unmapped = uk.unlearn(net, data, changes, method="second-order").model
    assert not torch.allclose(_theta(unmapped), _theta(expected), rtol=1e-3, atol=1e-5)


def test_data_show_lists_ids_and_classes(tmp_path):
    csv = write_pets(tmp_path / "pets.csv")
    part = uk.data.load(f"{csv}:train", label_column="species", id_column="id")
    shown = json.loads(_run("data", "show", f"{csv}:train", "--label-column", "species", "--id-column", "id",
                            "--format", "json").stdout)
    assert shown["ids"] == part.ids.tolist() and shown["rows"] == len(part) == 96
    assert [c["name"] for c in shown["classes"]] == ["cat", "dog", "eel"]
    assert sum(c["rows"] for c in shown["classes"]) == 96 and shown["feature_names"] == ["weight_g", "height_m"]
    table = _run("data", "show", f"{csv}:train", "--label-column", "species", "--id-column", "id").stdout
    assert "0=cat" in table and "2=eel" in table and "76 more" in table
    # with --model, the stored layout is used
    _run("train", "--data", f"{csv}:train", "--label-column", "species", "--id-column", "id", "--out", tmp_path / "m.pt")
    again = json.loads(_run("data", "show", f"{csv}:test", "--model", tmp_path / "m.pt", "--format", "json").stdout)
    assert set(again["ids"]).isdisjoint(shown["ids"]) and len(again["ids"]) == 24
    digits = json.loads(_run("data", "show", "digits:test", "--format", "json", "--limit", "5").stdout)
    assert len(digits["ids"]) == 5 and digits["features"] == 64


def test_scale_rows_keeps_the_first_request_within_the_budget(tmp_path):
    """Raw breast-cancer rows are thousands long: the first request exhausts the budget and retrains, and init says
    so, naming --scale-rows; with --scale-rows the same request is a certified update."""
    ids = uk.data.load("breast-cancer:train").ids
    fix = tmp_path / "fix.json"
    uk.Changes.remove([int(ids[2])]).to_json(fix)
    raw = _run("ledger", "init", tmp_path / "raw", "--data", "breast-cancer:train", "--seed", "0")
    assert "--scale-rows" in raw.stderr and "beyond the remaining budget" in raw.stderr
    applied = _run("ledger", "apply", tmp_path / "raw", "--changes", fix)
    assert "retrained (budget exhausted)" in applied.stdout
    scaled = _run("ledger", "init", tmp_path / "scaled", "--data", "breast-cancer:train", "--seed", "0",
                  "--standardize", "--scale-rows")
    assert "warning" not in scaled.stderr
    applied = _run("ledger", "apply", tmp_path / "scaled", "--changes", fix)
    assert "second-order update" in applied.stdout
    # a feature edit in raw units is scaled by the ledger, recorded in the stored units, and replays
    edit = tmp_path / "edit.json"
    uk.Changes.set_features([3], [700.0], [int(ids[5])]).to_json(edit)
    _run("ledger", "apply", tmp_path / "scaled", "--changes", edit)
    ledger = uk.ledger.Ledger(tmp_path / "scaled")
    prep = ledger.preprocessing
    entry = ledger.history()[-1]
    recorded = uk.Changes.from_json(entry["changes"]).feature_edits[0].values[0]
    assert recorded == pytest.approx((700.0 - prep.mean[3]) / prep.std[3] / prep.row_scale, rel=1e-12)
    assert entry["details"]["changes_as_given"]["feature_edits"][0]["values"] == [700.0]
    assert "ok: 3 entries, replayed" in _run("ledger", "verify", tmp_path / "scaled").stdout
    exported = tmp_path / "export.json"
    _run("ledger", "export", tmp_path / "scaled", "--out", exported)
    assert json.loads(exported.read_text())["meta"]["preprocess"]["row_scale"] == prep.row_scale


def _readme_own_data_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash", 1)[1].split("```", 1)[0]


def test_readme_own_data_example_runs(tmp_path, monkeypatch):
    """Every line of the README's example, in a folder holding the pets.csv it reads."""
    write_pets(tmp_path / "pets.csv")
    monkeypatch.chdir(tmp_path)
    commands = _readme_own_data_block().replace("\\\n", " ").strip().splitlines()
    assert len(commands) >= 4
    for line in commands:
        words = shlex.split(line)
        target = None
        if ">" in words:
            words, target = words[:words.index(">")], words[words.index(">") + 1]
        assert words[0] == "unlearnkit", line
        result = _run(*words[1:])
        if target:
            Path(target).write_text(result.stdout)
    assert (tmp_path / "pets-forgot.pt").is_file()
    assert Preprocessing.of_model(uk.load_model(tmp_path / "pets-forgot.pt")).class_names == ("cat", "dog", "eel")


def test_evaluate_refuses_a_retrained_model_with_another_preprocessing(tmp_path):
    """--retrained is checked like --unlearned: a raw-units model next to standardised ones is refused, by name."""
    csv = write_pets(tmp_path / "pets.csv")
    cols = ("--label-column", "species", "--id-column", "id")
    model, unl, raw_ref, ref = (tmp_path / f"{n}.pt" for n in ("m", "u", "raw", "ref"))
    changes = tmp_path / "c.json"
    uk.Changes.remove([1001, 1002]).to_json(changes)
    _run("train", "--data", csv, *cols, "--standardize", "--out", model, "--epochs", "3")
    _run("unlearn", "--model", model, "--data", csv, "--changes", changes, "--out", unl)
    _run("train", "--data", csv, *cols, "--out", raw_ref, "--epochs", "3")
    refused = _run("evaluate", "--original", model, "--unlearned", unl, "--retrained", raw_ref, "--data", csv,
                   "--changes", changes, code=2)
    assert "--retrained was trained with another preprocessing" in refused.output
    assert "the original model standardised, this one not standardised" in " ".join(refused.output.split())
    _run("train", "--data", csv, *cols, "--standardize", "--out", ref, "--epochs", "3")
    _run("evaluate", "--original", model, "--unlearned", unl, "--retrained", ref, "--data", csv, "--changes", changes,
         "--metrics", "l2_distance")


def test_python_unlearn_refuses_the_raw_data_of_a_model_trained_on_scaled_data(tmp_path, caplog):
    """A model file that stores --standardize, given to uk.unlearn with the data in its own units: refused, naming
    uk.data.prepare; prepared, it unlearns; other raw data gets a warning."""
    torch.set_num_threads(1)
    csv = write_pets(tmp_path / "pets.csv")
    model_file = tmp_path / "m.pt"
    _run("train", "--data", f"{csv}:train", "--label-column", "species", "--id-column", "id", "--standardize",
         "--out", model_file, "--epochs", "3")
    model = uk.load_model(model_file)
    raw = uk.data.load(f"{csv}:train", label_column="species", id_column="id")
    changes = uk.Changes.remove([int(raw.ids[0])])
    with pytest.raises(uk.DataError, match=r"training data in its own units.*standardised.*unlearnkit\.data\.prepare"):
        uk.unlearn(model, raw, changes, check=False)
    prepared = uk.data.prepare(raw, model)
    assert prepared.fingerprint() == model.metadata["data_fingerprint"]
    with caplog.at_level("WARNING", logger="unlearnkit.data.preprocess"):
        uk.unlearn(model, prepared, changes, check=False)
    assert "looks unscaled" not in caplog.text
    whole = uk.data.load(str(csv), label_column="species", id_column="id")  # raw, but not the training part
    with caplog.at_level("WARNING", logger="unlearnkit.data.preprocess"):
        uk.unlearn(model, whole, changes, check=False)
    assert "looks unscaled" in caplog.text and "unlearnkit.data.prepare" in caplog.text


def test_class_names_in_label_edits_are_kept_by_changes_commands_and_resolved_with_a_model(tmp_path):
    """`changes relabel 5=cat`, `merge` and `show` keep class names as names; `show --data --label-column` (or
    --model) checks them against the classes; `unlearn` resolves them like the codes."""
    csv = write_pets(tmp_path / "pets.csv")
    named = tmp_path / "named.json"
    named.write_text(_run("changes", "relabel", "1001=eel", "1002=0", "1003-1004", "--label", "dog").stdout)
    edits = json.loads(named.read_text())["label_edits"]
    given = {r: lab for e in edits for r, lab in zip(e["rows"], e["labels"] * len(e["rows"]))}
    assert given == {1001: "eel", 1002: 0, 1003: "dog", 1004: "dog"}
    other = tmp_path / "other.json"
    other.write_text('{"label_edits": [{"rows": [1010], "labels": ["cat"]}], "removals": [1011]}')
    merged = json.loads(_run("changes", "merge", named, other).stdout)
    labels = {r: lab for e in merged["label_edits"] for r, lab in zip(e["rows"], e["labels"] * len(e["rows"]))}
    assert labels == {1001: "eel", 1002: 0, 1003: "dog", 1004: "dog", 1010: "cat"}
    shown = json.loads(_run("changes", "show", other, "--format", "json").stdout)
    assert shown["changes"]["label_edits"][0]["labels"] == ["cat"]
    # against the data: read with its text label column, the names are checked (and counted)
    checked = json.loads(_run("changes", "show", other, "--data", csv, "--label-column", "species", "--id-column",
                              "id", "--format", "json").stdout)
    assert checked["summary"]["affected_rows"] == 2 and checked["changes"]["label_edits"][0]["labels"] == [0]
    other.write_text('{"label_edits": [{"rows": [1010], "labels": ["fox"]}]}')
    refused = _run("changes", "show", other, "--data", csv, "--label-column", "species", "--id-column", "id", code=2)
    assert "'fox' is not a class of the model; its classes are 0=cat, 1=dog, 2=eel" in refused.output
    model = tmp_path / "m.pt"
    _run("train", "--data", csv, "--label-column", "species", "--id-column", "id", "--out", model, "--epochs", "2")
    _run("changes", "show", named, "--data", csv, "--model", model)
    _run("unlearn", "--model", model, "--data", csv, "--changes", named, "--out", tmp_path / "u.pt")
