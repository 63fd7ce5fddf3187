"""Hostile and malformed input: every case is a named error (``error:`` and exit code 2 on the
command line), never a traceback, never a half-written or replaced file, and refused before
memory proportional to the claim is allocated."""

import json
import os
import sys
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit import Changes, ChangesError, DataError, Dataset, ModelError
from unlearnkit import atomic
from unlearnkit.cli import app
from unlearnkit.errors import OutputError

runner = CliRunner()


def refused(args, *, match: str):
    """Run the CLI; it must end in a named error: exit code 2, an ``error:`` line, no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "error:" in out and "Traceback" not in out, out
    assert match in " ".join(out.split()), out
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = rng.integers(0, 2, 30)
    y[5] = 300_000_000
    with open(d / "biglabel.csv", "w") as f:
        f.write("a,b,c,label\n")
        for row, lab in zip(X, y):
            f.write(",".join(map(str, row)) + f",{lab}\n")
    (d / "hugefield.csv").write_text("a,label\n" + "1" * 200_000 + ",0\n")
    (d / "utf16.csv").write_bytes("a,label\n1,0\n2,1\n".encode("utf-16"))
    (d / "latin1.csv").write_bytes("a,label\n1,0\n2\xe9,1\n".encode("latin-1"))
    (d / "strings.csv").write_text("a,label\nx,0\n2,1\n")
    (d / "hugeid.csv").write_text("id,a,label\n9223372036854775808,1,0\n1,2,1\n2,3,0\n")
    np.savez(d / "strings.npz", X=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    np.savez(d / "zerod.npz", X=np.array(3.0), y=np.array(1))
    np.savez(d / "empty.npz", X=np.zeros((0, 3)), y=np.zeros(0, dtype=int))
    np.savez(d / "oned.npz", X=np.zeros(5), y=np.zeros(5, dtype=int))
    np.savez(d / "ncls.npz", X=np.zeros((4, 2)), y=np.zeros(4, dtype=int), n_classes=np.array([2, 3]))
    (d / "notnpz.npz").write_text("hello, not an npz\n")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "deep2.json").write_text('{"removals": [{"rows": ' + "[" * 500 + "]" * 500 + "}]}")
    (d / "latin1.json").write_bytes('{"removals": [{"rows": [1]}], "x\xe9": 1}'.encode("latin-1"))
    (d / "utf16.json").write_bytes('{"removals": [{"rows": [1]}]}'.encode("utf-16"))
    (d / "hugeid.json").write_text('{"removals": [{"rows": [9223372036854775808]}]}')
    (d / "rm.json").write_text('{"removals": [{"rows": [1, 2]}]}')
    return d


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    path = d / "model.pt"
    result = runner.invoke(app, ["train", "--data", "synthetic:n=60,d=4", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


# ---------------------------------------------------------------------------- the atomic writer


def test_atomic_write_refuses_folder_fifo_and_symlink(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    for path, match in ((link, "symbolic link"), (fifo, "FIFO"), (folder, "is a folder")):
        with pytest.raises(OutputError, match=match):
            atomic.atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert link.is_symlink() and target.read_text() == "keep"
    assert fifo.exists() and not fifo.is_file() and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link.json", "real.json"]


def test_atomic_write_refuses_device_nodes():
    # checked by check_target before anything is written: the old writer replaced /dev/full as root
    if not hasattr(atomic, "check_target"):
        pytest.fail("the atomic writer does not check its target: it would replace the device node")
    for device in ("/dev/null", "/dev/full"):
        if os.path.exists(device):
            with pytest.raises(OutputError, match="a device"):
                atomic.atomic_write(device, lambda tmp: open(tmp, "w").write("x"))
            assert not os.path.isfile(device)


def test_atomic_write_ledger_folder(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "ledger.sqlite").write_bytes(b"db")
    (ledger / "data").mkdir()
    # a user path anywhere inside a ledger folder is refused
    for path in (ledger / "model-000001.pt", ledger / "data" / "X.npy", ledger / "export.json"):
        with pytest.raises(OutputError, match="inside the ledger folder"):
            atomic.atomic_write(path, lambda tmp: open(tmp, "w").write("x"), user_path=True)
    # the database itself is refused even for the ledger's own writes
    with pytest.raises(OutputError, match="inside the ledger folder"):
        atomic.atomic_write(ledger / "ledger.sqlite", lambda tmp: open(tmp, "w").write("x"))
    assert (ledger / "ledger.sqlite").read_bytes() == b"db"
    # the ledger writes its own model files (the default)
    atomic.atomic_write(ledger / "model-000001.pt", lambda tmp: open(tmp, "w").write("m"))
    assert (ledger / "model-000001.pt").read_text() == "m"
    # a link to the ledger folder does not hide it
    alias = tmp_path / "alias"
    alias.symlink_to(ledger)
    with pytest.raises(OutputError, match="inside the ledger folder"):
        atomic.atomic_write(alias / "x.json", lambda tmp: open(tmp, "w").write("x"), user_path=True)


def test_save_model_refuses_targets(tmp_path, binary_10k):
    _, model = binary_10k
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(OutputError, match="symbolic link"):
        uk.save_model(model, link)
    with pytest.raises(OutputError, match="is a folder"):
        uk.save_model(model, tmp_path)
    assert not (tmp_path / "elsewhere.pt").exists()


def test_cli_out_refuses_folder_link_fifo_and_ledger(tmp_path, files):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "target.pt")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "ledger.sqlite").write_bytes(b"db")
    for out, match in ((tmp_path, "is a folder"), (fifo, "FIFO"), (link, "symbolic link"),
                       (ledger / "model-000009.pt", "inside the ledger folder")):
        refused(["train", "--data", "synthetic:n=40,d=3", "--out", out], match=match)
    assert not (tmp_path / "target.pt").exists() and fifo.exists() and not fifo.is_file()
    assert sorted(p.name for p in ledger.iterdir()) == ["ledger.sqlite"]


def test_cli_evaluate_and_unlearn_out_checked_first(tmp_path, files, model_file):
    refused(["unlearn", "--model", model_file, "--data", "synthetic:n=60,d=4", "--changes", files / "rm.json",
             "--out", tmp_path], match="is a folder")
    refused(["evaluate", "--original", model_file, "--unlearned", model_file, "--data", "synthetic:n=60,d=4",
             "--changes", files / "rm.json", "--out", tmp_path], match="is a folder")


# ---------------------------------------------------------------------------- data input


@pytest.mark.parametrize("name, match", [
    ("biglabel.csv", "label 300000000 in a file of 30 rows"),
    ("hugefield.csv", "not a readable CSV file"),
    ("utf16.csv", "UTF-16"),
    ("latin1.csv", "not a UTF-8 text file"),
    ("strings.csv", "is not a number"),
    ("strings.npz", "key 'X' must hold numbers"),
    ("zerod.npz", "'X' must have shape (n, *feature_shape)"),
    ("oned.npz", "'X' must have shape (n, *feature_shape)"),
    ("empty.npz", "has no rows"),
    ("ncls.npz", "'n_classes' must be a single integer"),
    ("notnpz.npz", "is not an NPZ archive"),
])
def test_bad_data_files(files, name, match):
    with pytest.raises(DataError, match=None) as info:
        uk.data.load(str(files / name))
    assert match in str(info.value)
    refused(["train", "--data", files / name, "--out", files / "never.pt"], match=match)
    assert not (files / "never.pt").exists()


def test_csv_id_column_beyond_int64(files):
    with pytest.raises(DataError, match=r"id 9223372036854775808 is too large"):
        uk.data.read_csv(files / "hugeid.csv", id_column="id")


def test_bad_data_files_ledger_init(files, tmp_path):
    for name in ("biglabel.csv", "hugefield.csv", "strings.npz", "zerod.npz", "empty.npz", "notnpz.npz"):
        refused(["ledger", "init", tmp_path / name, "--data", files / name], match=str(files / name))
    refused(["ledger", "init", tmp_path / "s", "--data", "synthetic:n=1000000000000"], match="beyond the limit")


def test_utf8_bom_csv_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,label\n1,2,0\n2,3,1\n3,1,0\n")
    ds = uk.data.read_csv(path)
    assert ds.feature_names == ("a", "b") and ds.y.tolist() == [0, 1, 0]


def test_npz_header_larger_than_member_refused(tmp_path):
    """An .npy member whose header claims far more data than it holds is refused before allocation."""
    path = tmp_path / "lie.npz"
    np.savez(path, X=np.zeros((4, 2)), y=np.zeros(4, dtype=int))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["X.npy"] = members["X.npy"].replace(b"(4, 2)", b"(400000000, 2)".ljust(6))
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(DataError, match=r"declares shape \(400000000, 2\)"):
        uk.data.read_npz(path)


def test_synthetic_limits_and_seed():
    with pytest.raises(DataError, match=r"1e\+12 rows, beyond the limit of 100,000,000"):
        uk.data.load("synthetic:n=1000000000000")
    with pytest.raises(DataError, match=r"stored feature values, beyond the limit"):
        uk.data.load("synthetic:n=1000000,d=100000")
    with pytest.raises(DataError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        uk.data.load(f"synthetic:n=10,seed={2**70}")
    with pytest.raises(DataError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        uk.data.load("synthetic:n=10,seed=-1")
    # digits are read exactly: no silent rounding through float
    ds = uk.data.load("synthetic:n=10,seed=12345678901234567891")
    assert "seed=12345678901234567891" in ds.name


@pytest.mark.parametrize("ids, match", [
    ([2**63, 1, 2], r"row id 9223372036854775808 is beyond the largest supported id"),
    (np.array([2**63, 1, 2], dtype=np.uint64), r"row id 9223372036854775808 is beyond"),
    ([-1, 1, 2], r"row ids must be >= 0; found -1"),
    ([1, 1, 2], r"row ids must be unique; id 1 appears 2 times"),
    ([0.0, 1.0, 2.0], r"float ids are refused"),
    ([True, False, True], r"not booleans"),
])
def test_dataset_ids(ids, match):
    with pytest.raises(DataError, match=match):
        Dataset(np.ones((3, 2)), [0, 1, 1], ids=ids)


def test_dataset_labels_and_values():
    with pytest.raises(DataError, match=r"label 300000000 is beyond the limit of 100000 classes"):
        Dataset(np.ones((3, 2)), [0, 1, 300_000_000])
    with pytest.raises(DataError, match=r"n_classes must be an integer in \[2, 100000\]"):
        Dataset(np.ones((3, 2)), [0, 1, 1], n_classes=10**9)
    with pytest.raises(DataError, match=r"labels must be integers \(class indices\); got dtype <U1"):
        Dataset(np.ones((3, 2)), np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"X must hold numbers"):
        Dataset(np.array([["a", "b"]] * 3), [0, 1, 1])
    for bad in (np.nan, np.inf):
        X = np.ones((3, 2))
        X[1, 1] = bad
        with pytest.raises(DataError, match="NaN or infinite"):
            Dataset(X, [0, 1, 1])


# ---------------------------------------------------------------------------- change sets


@pytest.mark.parametrize("name, match", [
    ("deep.json", "nested too deeply"),
    ("deep2.json", "must be a flat list of integers"),
    ("latin1.json", "is not UTF-8 text"),
    ("utf16.json", "is UTF-16"),
    ("hugeid.json", "must be below 2**63"),
])
def test_bad_change_set_files(files, model_file, tmp_path, name, match):
    with pytest.raises(ChangesError) as info:
        Changes.load(files / name)
    assert match in str(info.value)
    refused(["unlearn", "--model", model_file, "--data", "synthetic:n=60,d=4", "--changes", files / name,
             "--out", tmp_path / "u.pt"], match=match)
    assert not (tmp_path / "u.pt").exists()


def test_change_set_size_limit(tmp_path, monkeypatch):
    from unlearnkit.data import changes as changes_mod

    path = tmp_path / "big.json"
    path.write_text(json.dumps({"label_edits": [{"rows": list(range(2000)), "labels": [0]}]}))
    monkeypatch.setattr(changes_mod, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ChangesError, match=r"beyond the limit of 1,000"):
        Changes.load(path)
    assert changes_mod.MAX_FILE_BYTES == 1000
    monkeypatch.undo()
    assert changes_mod.MAX_FILE_BYTES == 64 * 1024 * 1024
    assert len(Changes.load(path).label_edits[0].rows) == 2000


def test_change_set_more_rows_than_data_refused_first():
    ds = Dataset(np.ones((5, 2)), [0, 1, 0, 1, 0])
    with pytest.raises(ChangesError, match=r"removes 100 rows but data has only 5"):
        Changes.remove(range(100)).resolve(ds)
    with pytest.raises(ChangesError, match=r"relabels 6 rows but data has only 5"):
        Changes.relabel(range(6), [1]).resolve(ds)


def test_change_set_bad_rows():
    for rows, match in (([2**63], "below 2**63"), ([1.5], "must be integers"), ([float("nan")], "must be integers"),
                        ([True], "bool"), ([-1], ">= 0")):
        with pytest.raises(ChangesError, match=match.replace("*", r"\*").replace("(", r"\(")):
            Changes.remove(rows)
    with pytest.raises(ChangesError, match="values must be finite"):
        Changes.set_features([0], [float("inf")])


def test_change_set_deep_json_text():
    with pytest.raises(ChangesError, match="nested too deeply"):
        Changes.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ChangesError, match="UTF-16"):
        Changes.from_json('{"removals": [{"rows": [1]}]}'.encode("utf-16"))


# ---------------------------------------------------------------------------- model files


def _payload(state, **config):
    return {"format": "unlearnkit.model/1", "kind": "logreg", "config": config, "train_config": None,
            "state_dict": state, "metadata": {}}


def test_model_config_claiming_huge_size_refused_before_allocation(tmp_path, monkeypatch):
    path = tmp_path / "claims.pt"
    torch.save(_payload({"linear.weight": torch.zeros(1, 4), "linear.bias": torch.zeros(1)},
                        n_features=500_000_000, n_classes=2), path)
    assert path.stat().st_size < 4096
    from unlearnkit.models import linear

    built = []
    original = linear.LogisticRegression.__init__

    def spy(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device while the model is built
        original(self, *args, **kwargs)

    monkeypatch.setattr(linear.LogisticRegression, "__init__", spy)
    with pytest.raises(ModelError, match=r"linear.weight has shape \(1, 4\) in the file, the config implies \(1, 500000000\)"):
        uk.load_model(path)
    assert built == ["meta"], built  # only the shape-only skeleton was built


def test_model_compressed_tensors_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(_payload({"linear.weight": torch.zeros(1, 200_000), "linear.bias": torch.zeros(1)},
                        n_features=200_000, n_classes=2), plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
    assert bomb.stat().st_size < plain.stat().st_size / 50
    with pytest.raises(ModelError, match="are compressed"):
        uk.load_model(bomb)


def test_model_foreign_truncated_and_pickle_files(tmp_path, model_file):
    raw = model_file.read_bytes()
    cases = {"truncated.pt": raw[: len(raw) // 2], "foreign.pt": b"\x89PNG\r\n\x1a\n" + b"0" * 100, "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"x": (os.system, (f"touch {marker}",))}))
    for name in (*cases, "pickle.pt"):
        with pytest.raises(ModelError, match="is not a readable unlearnkit model file"):
            uk.load_model(tmp_path / name)
        refused(["unlearn", "--model", tmp_path / name, "--data", "synthetic:n=60,d=4", "--changes", tmp_path / "x.json",
                 "--out", tmp_path / "u.pt"], match="not a readable unlearnkit model file")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        uk.load_model(fifo)
    assert not marker.exists()


# ---------------------------------------------------------------------------- numeric options


@pytest.mark.parametrize("option, value, match", [
    ("--lr", "nan", "--lr must be a finite number > 0"),
    ("--lr", "inf", "--lr must be a finite number > 0"),
    ("--lr", "-1", "--lr must be a finite number > 0"),
    ("--l2", "nan", "--l2 must be a finite number >= 0"),
    ("--l2", "-1", "--l2 must be a finite number >= 0"),
    ("--epochs", "0", "--epochs must be >= 1"),
    ("--seed", str(2**70), "--seed must be an integer in [0, 2**64)"),
    ("--seed", "-1", "--seed must be an integer in [0, 2**64)"),
])
def test_train_numeric_options(tmp_path, option, value, match):
    refused(["train", "--data", "synthetic:n=40,d=3", "--out", tmp_path / "m.pt", option, value], match=match)
    assert not (tmp_path / "m.pt").exists()


def test_evaluate_and_demo_seed(tmp_path, files, model_file):
    refused(["evaluate", "--original", model_file, "--unlearned", model_file, "--data", "synthetic:n=60,d=4",
             "--changes", files / "rm.json", "--seed", str(2**64)], match="--seed must be an integer")
    refused(["demo", "--seed", str(2**64)], match="--seed must be an integer")
    refused(["demo", "--cnn-epochs", "0"], match="--cnn-epochs must be >= 1")


def test_main_reports_hostile_input_errors(monkeypatch, capsys):
    """The last line of defence: exceptions only hostile input raises end in ``error:`` and exit 2."""
    from unlearnkit import cli

    for exc, match in ((RecursionError(), "nested too deeply"), (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "encoding"),
                       (MemoryError(), "more memory")):
        def boom(spec, exc=exc):
            raise exc

        monkeypatch.setattr(uk.data, "load", boom)
        monkeypatch.setattr(sys, "argv", ["unlearnkit", "train", "--data", "x", "--out", "/nonexistent-dir/m.pt"])
        with pytest.raises(SystemExit) as info:
            cli.main()
        assert info.value.code == 2
        captured = capsys.readouterr()
        assert "error:" in captured.err and match in captured.err and "Traceback" not in captured.err
    # a programming error keeps its traceback
    monkeypatch.setattr(uk.data, "load", lambda spec: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main()


def test_ledger_apply_bad_change_sets_and_out_into_ledger(files, tmp_path):
    ledger = tmp_path / "ledger"
    result = runner.invoke(app, ["ledger", "init", str(ledger), "--data", "synthetic:n=60,d=4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    before = sorted(p.name for p in ledger.iterdir())
    for name, match in (("deep.json", "nested too deeply"), ("latin1.json", "is not UTF-8 text"),
                        ("utf16.json", "is UTF-16"), ("hugeid.json", "must be below 2**63")):
        refused(["ledger", "apply", ledger, "--changes", files / name], match=match)
    model = next(ledger.glob("model-*.pt"))
    refused(["train", "--data", "synthetic:n=60,d=4", "--out", model], match="inside the ledger folder")
    refused(["train", "--data", "synthetic:n=60,d=4", "--out", ledger / "ledger.sqlite"], match="inside the ledger folder")
    assert sorted(p.name for p in ledger.iterdir()) == before
    result = runner.invoke(app, ["ledger", "verify", str(ledger), "--no-replay"])
    assert result.exit_code == 0, result.output


def test_cli_prints_user_paths_literally(tmp_path):
    """A path holding Rich markup (``[/]`` closes a tag that was never opened) or an ESC byte is
    printed as it is: no MarkupError, no escape sequence reaching the terminal."""
    folder = tmp_path / "[" / "]\x1b[31m"
    folder.mkdir(parents=True)
    model = folder / "m.pt"
    changes = folder / "c.json"
    Changes.remove([1, 2]).to_json(changes)
    res = runner.invoke(app, ["train", "--data", "breast-cancer:train", "--model", "logreg", "--out", str(model)])
    assert res.exit_code == 0, res.output
    assert "[/]" in res.output and "\x1b" not in res.output and "\\x1b" in res.output
    res = runner.invoke(app, ["unlearn", "--model", str(model), "--data", "breast-cancer:train", "--changes", str(changes),
                              "--method", "first-order", "--out", str(folder / "u.pt")])
    assert res.exit_code == 0, res.output
    assert (folder / "u.pt").is_file() and "\x1b" not in res.output


# ---------------------------------------------------------------------------- hostile input, second round


@pytest.fixture
def small_ledger(tmp_path):
    ledger = tmp_path / "ledger"
    result = runner.invoke(app, ["ledger", "init", str(ledger), "--data", "synthetic:n=60,d=4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    return ledger


def test_change_set_integer_beyond_python_digit_limit(tmp_path, model_file, small_ledger):
    """A JSON integer longer than Python's 4,300-digit str -> int limit is a ChangesError, not
    a ValueError traceback; None and nested row lists are refused, never flattened."""
    long_id = tmp_path / "longid.json"
    long_id.write_text('{"removals": [{"rows": [' + "1" * 5000 + "]}]}")
    with pytest.raises(ChangesError, match="too long to be a row id"):
        Changes.from_json(long_id.read_text())
    with pytest.raises(ChangesError, match="too long to be a row id"):
        Changes.load(long_id)
    with pytest.raises(ChangesError, match="JSON text"):
        Changes.from_json(None)
    with pytest.raises(ChangesError, match="nested lists"):
        Changes.from_json('{"removals": [{"rows": [[1, 2]]}]}')
    with pytest.raises(ChangesError, match="nested lists"):
        Changes.remove(np.array([[1, 2]]))
    refused(["unlearn", "--model", model_file, "--data", "synthetic:n=60,d=4", "--changes", long_id,
             "--out", tmp_path / "u.pt"], match="too long to be a row id")
    refused(["ledger", "apply", small_ledger, "--changes", long_id], match="too long to be a row id")
    refused(["evaluate", "--original", model_file, "--unlearned", model_file, "--data", "synthetic:n=60,d=4",
             "--changes", long_id, "--retrained", model_file], match="too long to be a row id")


def test_change_set_row_count_limit_before_any_copy():
    """Huge row lists (a range or an array of 10**8 ids) are refused by their length, before a
    Python tuple of them is built."""
    from unlearnkit.data.changes import MAX_ROWS

    for rows in (range(1, 10**8), np.arange(1, 10**8)):
        with pytest.raises(ChangesError, match=f"beyond the limit of {MAX_ROWS:,}"):
            Changes.remove(rows)
    with pytest.raises(ChangesError, match="beyond the limit"):
        Changes.relabel(range(MAX_ROWS + 1), 0)
    assert Changes.remove(range(3)).removed_ids == {0, 1, 2}


def test_certified_model_too_many_parameters_refused_before_the_hessian(tmp_path):
    """The certified model keeps a dense p x p Hessian: a model beyond MAX_CERTIFIED_PARAMS is
    refused, with the memory it would need, before anything of that size is allocated."""
    from unlearnkit.influence.certified import MAX_CERTIFIED_PARAMS, certified_train
    from unlearnkit.models import LogisticRegression

    d = 200_000
    wide = tmp_path / "wide.csv"
    with open(wide, "w") as f:
        f.write(",".join(f"f{i}" for i in range(d)) + ",label\n")
        f.write(",".join(["0"] * d) + ",0\n")
        f.write(",".join(["0"] * d) + ",1\n")
    refused(["ledger", "init", tmp_path / "L", "--data", wide, "--seed", "1"],
            match=f"the limit is {MAX_CERTIFIED_PARAMS:,} parameters")
    assert not (tmp_path / "L" / "ledger.sqlite").exists()
    data = Dataset(np.zeros((2, MAX_CERTIFIED_PARAMS)), np.array([0, 1]))  # 20,001 parameters with the intercept
    from unlearnkit.errors import CertificationError

    with pytest.raises(CertificationError, match=r"20,001 x 20,001 float64 Hessian and its factor \(6.4 GB\)"):
        certified_train(LogisticRegression(n_features=MAX_CERTIFIED_PARAMS), data, seed=0)


def test_ledger_key_file_regular_and_small(tmp_path, small_ledger):
    """A key file must be a regular file of at most MAX_KEY_FILE_BYTES: a device (/dev/zero, endless),
    a FIFO (a read would hang) or a large file are refused before they are read."""
    from unlearnkit.errors import LedgerError
    from unlearnkit.ledger.ledger import read_key

    big = tmp_path / "big.key"
    big.write_bytes(b"k" * 4097)
    with pytest.raises(LedgerError, match="4,097 bytes, beyond the limit of 4,096"):  # MAX_KEY_FILE_BYTES
        read_key(big)
    ok = tmp_path / "ok.key"
    ok.write_bytes(b"k" * 32 + b"\n")
    assert read_key(ok) == b"k" * 32
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(LedgerError, match="not a regular file"):
            read_key(path)
        refused(["ledger", "verify", small_ledger, "--no-replay", "--key-file", path], match="not a regular file")


@pytest.mark.parametrize("args, match", [
    (["--seeds", str(2**64)], "seeds must be distinct integers in [0, 2**63)"),
    (["--device", "bogus"], "is not a torch device"),
    (["--device", "cuda:99"], "CUDA device(s)"),
])
def test_scenario_seeds_and_device_checked_up_front(tmp_path, args, match):
    refused(["scenario", "canary", "--size", "tiny", "--out", tmp_path / "r", *args], match=match)
    assert not (tmp_path / "r" / "canary.json").exists()


def test_train_config_validated_at_construction(tmp_path):
    """TrainConfig refuses values training cannot use (a NaN or negative learning rate, negative
    or endless epochs) when built, with ModelError; the command line bounds --epochs the same way."""
    from unlearnkit.bench import config as bench_config
    from unlearnkit.training import TrainConfig

    for kw, match in ((dict(lr=float("nan")), "lr must be a finite number > 0"), (dict(lr=-1.0), "lr must be"),
                      (dict(epochs=-1), "epochs must be between 0")):
        with pytest.raises(ModelError, match=match):
            TrainConfig(**kw)
    from unlearnkit.training import MAX_EPOCHS

    for kw, match in ((dict(epochs=MAX_EPOCHS + 1), "epochs must be"),
                      (dict(epochs=2.5), "epochs must be an integer"), (dict(batch_size=0), "batch_size must be"),
                      (dict(tol=float("inf")), "tol must be"), (dict(momentum=-0.1), "momentum must be")):
        with pytest.raises(ModelError, match=match):
            TrainConfig(**kw)
    assert TrainConfig(epochs=MAX_EPOCHS, lr=1e-3).epochs == MAX_EPOCHS
    assert bench_config.MAX_EPOCHS is MAX_EPOCHS
    refused(["train", "--data", "synthetic:n=60,d=4", "--model", "mlp", "--epochs", str(10**20),
             "--out", tmp_path / "m.pt"], match=f"--epochs must be at most {MAX_EPOCHS:,}")
    assert not (tmp_path / "m.pt").exists()


def test_error_messages_escape_control_characters_but_keep_lines(tmp_path, capsys):
    from unlearnkit import cli

    out = refused(["train", "--data", str(tmp_path / "no\x1b[2Jsuch.csv"), "--out", tmp_path / "m.pt"], match="no\\x1b[2Jsuch")
    assert "\x1b" not in out
    import typer

    with pytest.raises(typer.Exit):
        cli._fail(ValueError("first line\n\tsecond\x07 line\x1b[31m"))
    err = capsys.readouterr().err
    assert "first line\n" in err and "second\\x07 line\\x1b[31m" in err  # the newline kept (Rich expands the tab)
    assert "\x1b" not in err and "\x07" not in err and "\\n" not in err and "\\t" not in err


def test_evaluate_refuses_data_that_does_not_fit_the_models(files, model_file):
    refused(["evaluate", "--original", model_file, "--unlearned", model_file, "--data", "breast-cancer:train",
             "--changes", files / "rm.json", "--retrained", model_file],
            match="--data does not fit the --original model")
    refused(["evaluate", "--original", model_file, "--unlearned", model_file, "--data", "synthetic:n=60,d=4",
             "--changes", files / "rm.json", "--retrained", model_file, "--metrics", "accuracy_retain",
             "--test", "iris"], match="--test does not fit")


def test_ledger_writer_refuses_overlay_rows_not_in_the_data(small_ledger, files):
    """A row added to the overlay table by hand (an id the data does not hold) is caught by every
    writer before it writes; `ledger verify` still opens the ledger and names the problem."""
    import sqlite3

    with sqlite3.connect(small_ledger / "ledger.sqlite") as conn:
        conn.execute("INSERT INTO overlay VALUES (999999999999, 1, NULL, randomblob(10), 0)")
    conn.close()
    before = (small_ledger / "ledger.sqlite").read_bytes()
    refused(["ledger", "apply", small_ledger, "--changes", files / "rm.json"], match="overlay holds row 999999999999")
    assert (small_ledger / "ledger.sqlite").read_bytes() == before
    result = runner.invoke(app, ["ledger", "verify", str(small_ledger), "--no-replay"])
    assert result.exit_code != 0 and "overlay table was edited" in result.output, result.output


def test_text_file_named_npz_is_not_offered_pickle(files):
    with pytest.raises(DataError) as info:
        uk.data.load(str(files / "notnpz.npz"))
    assert "is not an NPZ archive" in str(info.value) and "pickle" not in str(info.value)


def test_deep_bench_config_is_a_bench_error():
    from unlearnkit.bench.config import load_config
    from unlearnkit.errors import BenchError

    deep = node = {}
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(BenchError, match="nested too deeply"):
        load_config(deep)


def test_ledger_reason_must_be_a_short_string(small_ledger):
    from unlearnkit.errors import LedgerError
    from unlearnkit.ledger import Ledger

    ledger = Ledger(small_ledger)
    head = ledger.head()
    with pytest.raises(LedgerError, match="reason must be a string"):
        ledger.apply(Changes.remove([1]), reason={"a": 1})
    from unlearnkit.ledger.ledger import MAX_REASON_CHARS

    with pytest.raises(LedgerError, match=f"beyond the limit of {MAX_REASON_CHARS:,}"):
        ledger.apply(Changes.remove([1]), reason="x" * (MAX_REASON_CHARS + 1))
    assert Ledger(small_ledger).head() == head
