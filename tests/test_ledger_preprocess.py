"""A ledger over preprocessed data: float32 sources, the stored preprocessing checked, strict change sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit.cli import app
from unlearnkit.data.preprocess import row_norms

runner = CliRunner()


OLDER_READER = "da3603f"
"""The last revision whose model files and ledgers know format 1 only."""


def _run(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output[-2000:])
    return result


def test_float32_source_scaled_ledger_selects_the_raw_nonzero_rows_and_accepts_the_longest_row(tmp_path):
    """digits is float32: the ledger stores its scaled rows in float64, so "non-zero in raw units" selects the same
    rows as `unlearn` does, and the longest row stays within the bound R = 1 (no warning, no refusal)."""
    raw = uk.data.load("digits")
    assert raw.X.dtype == np.float32
    init = _run("ledger", "init", tmp_path / "L", "--data", "digits", "--standardize", "--scale-rows", "--seed", "1")
    assert "rows are up to" not in init.stderr, init.stderr
    ledger = uk.ledger.Ledger(tmp_path / "L")
    mapped = ledger.to_model_units(uk.Changes.set_features([10], [0.0]))
    expected = set(np.asarray(raw.ids)[np.asarray(raw.X).reshape(len(raw), -1)[:, 10] != 0].tolist())
    assert set(mapped.feature_edits[0].rows) == expected and len(expected) < len(raw)
    # unlearn's own mapping (the model's units, float32 data) selects the same rows
    prep = ledger.preprocessing
    assert set(prep.map_changes(uk.Changes.set_features([10], [0.0]), prep.apply(raw)).feature_edits[0].rows) == expected

    longest = int(np.asarray(raw.ids)[int(np.argmax(row_norms(raw)))])
    _run("ledger", "init", tmp_path / "L3", "--data", "digits", "--scale-rows", "--sigma", "100", "--seed", "1")
    relabel = tmp_path / "r.json"
    uk.Changes.relabel([longest], [3]).to_json(relabel)
    applied = _run("ledger", "apply", tmp_path / "L3", "--changes", relabel)
    assert "feature norm" not in applied.output


def _pets(path, n=60):
    rng = np.random.default_rng(0)
    lines = ["id,weight,height,species"] + [
        f"{100 + i},{rng.normal(3, 1):.3f},{rng.normal(0.5, 0.2):.3f},{('cat', 'dog', 'eel')[i % 3]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_duplicate_keys_are_refused_with_class_names_on_ledger_apply_and_unlearn(tmp_path):
    """A model or ledger with class names reads change sets as strictly as any other: a key given twice is refused
    (not silently dropped, which made a ledger remove only the second list of rows, for good)."""
    csv = _pets(tmp_path / "pets.csv")
    dup = tmp_path / "dup.json"
    dup.write_text('{"removals": [{"rows": [101]}], "removals": [{"rows": [102]}], '
                   '"label_edits": [{"rows": [103], "labels": ["dog"]}]}')
    _run("ledger", "init", tmp_path / "L", "--data", csv, "--label-column", "species", "--id-column", "id",
         "--scale-rows", "--seed", "0")
    before = len(uk.ledger.Ledger(tmp_path / "L").history())
    refused = _run("ledger", "apply", tmp_path / "L", "--changes", dup, code=2)
    assert 'key "removals" is given twice' in refused.output
    assert len(uk.ledger.Ledger(tmp_path / "L").history()) == before
    model = tmp_path / "m.pt"
    _run("train", "--data", csv, "--label-column", "species", "--id-column", "id", "--out", model, "--epochs", "2")
    refused = _run("unlearn", "--model", model, "--data", csv, "--changes", dup, "--out", tmp_path / "u.pt", code=2)
    assert 'key "removals" is given twice' in refused.output
    # the same request written once is accepted, names and all
    dup.write_text('{"removals": [{"rows": [101, 102]}], "label_edits": [{"rows": [103], "labels": ["dog"]}]}')
    _run("ledger", "apply", tmp_path / "L", "--changes", dup)
    assert len(uk.ledger.Ledger(tmp_path / "L").history()) == before + 1


def test_verify_reports_a_model_file_whose_stored_preprocessing_differs_from_the_ledgers(tmp_path):
    """The parameters of the model file are intact, but its recorded scaling was changed: verify says so."""
    from unlearnkit.data.preprocess import METADATA_KEY
    from unlearnkit.models.io import save_model

    _run("ledger", "init", tmp_path / "L", "--data", _pets(tmp_path / "pets.csv"), "--label-column", "species",
         "--id-column", "id", "--standardize", "--scale-rows", "--seed", "0")
    ledger = uk.ledger.Ledger(tmp_path / "L")
    assert ledger.verify(replay=False).ok
    model = uk.load_model(ledger.model_file)
    stored = dict(model.metadata[METADATA_KEY])
    stored["row_scale"] = stored["row_scale"] * 2
    ledger.model_file.unlink()
    save_model(model, ledger.model_file, metadata={**model.metadata, METADATA_KEY: stored})
    report = uk.ledger.Ledger(tmp_path / "L").verify(replay=False)
    assert not report.ok
    assert any("records another preprocessing than the ledger" in p and "row scale" in p for p in report.problems), \
        report.problems


def test_files_with_preprocessing_get_a_newer_format_that_older_readers_refuse(tmp_path):
    """A model file or ledger that stores preprocessing says so in its format, so that an unlearnkit which would
    ignore the scaling refuses it; files without preprocessing keep the old format (and stay readable)."""
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    from unlearnkit.models import io

    csv = _pets(tmp_path / "pets.csv")
    cols = ("--label-column", "species", "--id-column", "id")
    _run("train", "--data", "digits", "--out", tmp_path / "plain.pt", "--epochs", "1")
    _run("train", "--data", csv, *cols, "--standardize", "--out", tmp_path / "scaled.pt", "--epochs", "1")
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["format"] == "unlearnkit.model/1"
    assert torch.load(tmp_path / "scaled.pt", weights_only=True)["format"] == "unlearnkit.model/2"
    assert uk.load_model(tmp_path / "scaled.pt").metadata["preprocess"]["mean"]
    numeric = tmp_path / "num.csv"
    numeric.write_text("a,b,label\n" + "".join(f"{k % 7}.5,{k % 5},{k % 2}\n" for k in range(40)))
    _run("ledger", "init", tmp_path / "L0", "--data", numeric, "--seed", "0")
    _run("ledger", "init", tmp_path / "L1", "--data", csv, *cols, "--seed", "0")
    _run("ledger", "init", tmp_path / "L2", "--data", csv, *cols, "--scale-rows", "--seed", "0")

    def ledger_format(folder):
        with sqlite3.connect(folder / "ledger.sqlite") as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())["format"]

    assert ledger_format(tmp_path / "L0") == "unlearnkit.ledger/1" and uk.ledger.Ledger(tmp_path / "L0").verify().ok
    assert ledger_format(tmp_path / "L2") == "unlearnkit.ledger/2" and uk.ledger.Ledger(tmp_path / "L2").verify().ok
    # label/id columns and class names are preprocessing too: the text-label ledger L1 stores them
    assert ledger_format(tmp_path / "L1") == "unlearnkit.ledger/2"
    payload = torch.load(tmp_path / "plain.pt", weights_only=True)
    payload["format"] = "unlearnkit.model/3"
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(uk.ModelError, match=r"written by a newer version of unlearnkit.*upgrade"):
        uk.load_model(tmp_path / "future.pt")
    assert io.FORMAT_PREPROCESS == "unlearnkit.model/2"

    # the previous reader (the last revision that knew format 1 only), where git has it
    root = Path(__file__).resolve().parents[1]
    old = tmp_path / "old"
    archive = subprocess.run(["git", "-C", str(root), "archive", OLDER_READER, "src"], capture_output=True)
    if archive.returncode != 0 or not archive.stdout:
        pytest.skip(f"revision {OLDER_READER} (the last reader of format 1 only) is not in this checkout")
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import unlearnkit.models.io as io; "
              "assert io.__file__.startswith(sys.argv[1]), io.__file__; "
              "io.load_model(sys.argv[2]); print('plain ok');\n"
              "try:\n    io.load_model(sys.argv[3])\nexcept Exception as e:\n    print('refused:', e)\n"
              "else:\n    print('read')")
    done = subprocess.run([sys.executable, "-c", script, str(old / "src"), str(tmp_path / "plain.pt"),
                           str(tmp_path / "scaled.pt")], capture_output=True, text=True, timeout=120)
    assert "plain ok" in done.stdout and "refused:" in done.stdout, (done.stdout, done.stderr[-2000:])


def test_a_request_beyond_the_bound_is_explained_in_the_users_units_with_the_init_option(tmp_path):
    csv = tmp_path / "n.csv"
    csv.write_text("id,a,b,label\n" + "".join(f"{k},{k % 7 + 1}.0,{k % 5}.0,{k % 2}\n" for k in range(40)))
    _run("ledger", "init", tmp_path / "L", "--data", csv, "--id-column", "id", "--scale-rows", "--seed", "0")
    scale = uk.ledger.Ledger(tmp_path / "L").preprocessing.row_scale
    edit = tmp_path / "e.json"
    uk.Changes.set_features([0], [1000.0], [3]).to_json(edit)
    refused = _run("ledger", "apply", tmp_path / "L", "--changes", edit, code=2)
    said = " ".join(refused.output.split())
    assert "ledger init ... --feature-bound" in said and f"divides every row by {scale:.6g}" in said
    assert "in the data's own units" in said and "1000" in said


def test_training_with_standardize_on_sparse_data_names_no_option_train_lacks(tmp_path):
    import scipy.sparse as sp

    from unlearnkit.data.preprocess import Preprocessing

    sparse = uk.data.Dataset(sp.csr_matrix(np.eye(4, dtype=np.float32)), np.array([0, 1, 0, 1]))
    with pytest.raises(uk.DataError) as info:
        Preprocessing.fit(sparse, standardize=True)
    assert "--scale-rows" not in str(info.value) and "leave out --standardize" in str(info.value)
