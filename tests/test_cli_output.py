"""The command line from the shell: change sets written by `unlearnkit changes`, `--format` on every command that
prints a table, output that survives pipes, and old option spellings still accepted."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit import Changes
from unlearnkit.cli import _fmt, app

runner = CliRunner()
SPEC = "synthetic:n=120,d=4,seed=3"


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.set_num_threads(1)
    data = uk.data.load(SPEC)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    uk.save_model(uk.train(uk.models.for_data("logreg", data), data), path)
    return path


# ---------------------------------------------------------------------------- changes: writers
@pytest.mark.parametrize("args, expected", [
    (["remove", "5", "6", "7"], Changes.remove([5, 6, 7])),
    (["remove", "5,6", "10-12"], Changes.remove([5, 6, 10, 11, 12])),
    (["relabel", "5=1", "6=0"], Changes.relabel([5, 6], [1, 0])),
    (["relabel", "5", "8-9", "--label", "1", "6=0"], Changes.relabel([5, 8, 9, 6], [1, 1, 1, 0])),
    (["edit", "--columns", "3", "--values", "0.0"], Changes.zero_features([3])),
    (["edit", "--columns", "3"], Changes.zero_features([3])),
    (["edit", "--columns", "0,1", "--values", "0.5", "--values", "-2", "--rows", "5", "--rows", "6-7"],
     Changes.set_features([0, 1], [0.5, -2.0], rows=[5, 6, 7])),
])
def test_writers_print_a_change_set_that_loads_back(tmp_path, args, expected):
    r = invoke("changes", *args)
    assert r.exit_code == 0, r.output
    assert Changes.from_json(r.stdout) == expected
    out = tmp_path / "c.json"
    r = invoke("changes", *args, "--out", out)
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert Changes.load(out) == expected


def test_remove_reads_ids_from_stdin_and_merge_combines():
    r = invoke("changes", "remove", "-", input="5\n6, 7\n")
    assert r.exit_code == 0 and Changes.from_json(r.stdout) == Changes.remove([5, 6, 7])


def test_merge(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    Changes.remove([1, 2]).to_json(a)
    Changes.relabel([3], [1]).to_json(b)
    r = invoke("changes", "merge", a, b)
    assert r.exit_code == 0, r.output
    assert Changes.from_json(r.stdout) == Changes.remove([1, 2]) + Changes.relabel([3], [1])
    Changes.relabel([2], [0]).to_json(b)  # contradicts the removal of row 2
    r = invoke("changes", "merge", a, b, "--out", tmp_path / "m.json")
    assert r.exit_code == 2 and "both removed and relabelled" in r.output
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("args, says", [
    (["remove", "x"], "Not a row id (an integer >= 0, a list 5,6,7 or a range 10-19): 'x'"),
    (["remove", "9-3"], "Not a row id"),
    (["remove", "5-"], "Not a row id"),
    (["remove", "--", "-4"], "removed rows must be >= 0; found -4"),
    (["relabel", "5"], "'5' has no label: write ID=LABEL (5=1) or give --label"),
    (["relabel", "5=1.5"], "Not a label"),  # a name (5=cat) is kept; a number must be a class code
    (["relabel", "5=1,2"], "give one label after '='"),
    (["edit", "--columns", "3", "--values", "nan"], "Feature values must be finite"),
    (["edit", "--columns", "3", "--values", "abc"], "Not a value (a number): 'abc'"),
    (["edit", "--columns", "3,3"], "lists a column twice"),
])
def test_writers_refuse_bad_arguments_and_write_nothing(tmp_path, args, says):
    out = tmp_path / "c.json"
    r = invoke("changes", args[0], "--out", out, *args[1:])
    assert r.exit_code == 2 and says in r.output, r.output
    assert not out.exists()


# ---------------------------------------------------------------------------- changes: show
def test_show_validates_and_summarises(tmp_path):
    path = tmp_path / "c.json"
    (Changes.remove(list(range(30))) + Changes.relabel([40], [1]) + Changes.zero_features([2])).to_json(path)
    r = invoke("changes", "show", path)
    assert r.exit_code == 0, r.output
    assert "valid change set" in r.output and "every row where a column is non-zero" in r.output
    assert "and 10 more" in r.output  # the table lists 20 ids of 30
    r = invoke("changes", "show", path, "--format", "json", "--data", SPEC)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["summary"]["removed_rows"] == 30 and shown["summary"]["relabelled_rows"] == 1
    assert shown["summary"]["affected_rows"] > 31 and Changes.from_dict(shown["changes"]) == Changes.load(path)
    rows = list(csv.DictReader(io.StringIO(invoke("changes", "show", path, "--format", "csv").stdout)))
    assert [r["kind"] for r in rows] == ["feature edit", "label edit", "removal"]
    assert rows[2]["ids"] == ", ".join(map(str, range(30)))  # csv: every id


def test_show_and_unlearn_refuse_a_malformed_file_with_its_json_path(tmp_path, model_file):
    bad = tmp_path / "bad.json"
    bad.write_text('{"removals": [{"id": 5}]}')
    r = invoke("changes", "show", bad)
    assert r.exit_code == 2 and f'{bad}: $.removals[0]: unknown key "id"' in r.output, r.output
    out = tmp_path / "u.pt"
    r = invoke("unlearn", "--model", model_file, "--data", SPEC, "--changes", bad, "--out", out)
    assert r.exit_code == 2 and "$.removals[0]" in r.output, r.output
    assert not out.exists()
    r = invoke("changes", "show", bad.with_name("none.json"))
    assert r.exit_code == 2 and "not found" in r.output
    Changes.remove([10_000]).to_json(bad)
    r = invoke("changes", "show", bad, "--data", SPEC)
    assert r.exit_code == 2 and "not in the dataset: 10000" in r.output


def test_written_change_sets_drive_unlearn(tmp_path, model_file):
    """The writers' output is what `unlearn --changes` reads."""
    files = []
    for i, args in enumerate((["remove", "1", "2", "3"], ["relabel", "4=1", "5=0"], ["edit", "--columns", "2", "--rows", "6-8"])):
        files.append(tmp_path / f"c{i}.json")
        assert invoke("changes", *args, "--out", files[-1]).exit_code == 0
    merged = tmp_path / "all.json"
    assert invoke("changes", "merge", *files, "--out", merged).exit_code == 0
    out = tmp_path / "u.pt"
    r = invoke("unlearn", "--model", model_file, "--data", SPEC, "--changes", merged, "--out", out)
    assert r.exit_code == 0, r.output
    assert out.exists()


# ---------------------------------------------------------------------------- --format everywhere
def test_methods_and_metrics_formats():
    listed = json.loads(invoke("methods", "--format", "json").stdout)
    assert {m["method"] for m in listed} >= {"second-order", "retrain", "ft"}
    assert json.loads(invoke("methods", "list", "--format", "json").stdout) == listed
    one = json.loads(invoke("methods", "second-order", "--format", "json").stdout)
    assert one["name"] == "second-order" and any(h["name"] == "damping" for h in one["hyperparameters"])
    rows = list(csv.DictReader(io.StringIO(invoke("methods", "second-order", "--format", "csv").stdout)))
    assert [r["name"] for r in rows] == [h["name"] for h in one["hyperparameters"]]
    md = invoke("methods", "--format", "md").stdout
    assert "| method | summary |" in md and "| second-order |" in md
    metrics = json.loads(invoke("metrics", "list", "--format", "json").stdout)
    assert any(m["metric"] == "rte" and m["higher_is_better"] is True for m in metrics)
    assert "rte" in invoke("metrics").stdout
    rows = list(csv.DictReader(io.StringIO(invoke("metrics", "rte", "--format", "csv").stdout)))
    assert rows[0]["metric"] == "rte" and rows[0]["direction"] == "higher is better"
    for command in (["methods"], ["metrics"], ["ledger", "history", "x"], ["changes", "show", "x"]):
        r = invoke(*command, "--format", "xml")
        assert r.exit_code == 2 and "must be one of table, markdown, csv, json" in r.output


def test_ledger_commands_print_json_and_csv(tmp_path):
    ledger = tmp_path / "L"
    r = invoke("ledger", "init", ledger, "--data", "synthetic:n=60,d=4", "--seed", "1", "--sigma", "5", "--format", "json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["head"].startswith("0:") and created["certificate"]["sigma"] == 5.0
    changes = tmp_path / "c.json"
    assert invoke("changes", "relabel", "3=1", "--out", changes).exit_code == 0
    r = invoke("ledger", "apply", ledger, "--changes", changes, "--reason", "ticket 9", "--format", "json")
    assert r.exit_code == 0, r.output
    applied = json.loads(r.stdout)
    assert applied["entry"] == 1 and applied["affected_rows"] == 1 and "cumulative_bound" in applied["certificate"]
    rows = list(csv.DictReader(io.StringIO(invoke("ledger", "apply", ledger, "--changes", changes, "--format", "csv").stdout)))
    assert rows[0] == {"quantity": "entry", "value": "2"} and "epsilon" in [r["quantity"] for r in rows]
    history = list(csv.DictReader(io.StringIO(invoke("ledger", "history", ledger, "--format", "csv").stdout)))
    assert [h["reason"] for h in history] == ["initial training", "ticket 9", ""]
    assert len(history[0]["params after"]) == 64  # csv keeps the whole hash
    r = invoke("ledger", "verify", ledger, "--no-replay", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True and json.loads(r.stdout)["entries"] == 3
    r = invoke("ledger", "refine", ledger, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["entry"] == 3, r.output
    exported = json.loads(invoke("ledger", "export", ledger).stdout)  # no --out: stdout
    assert exported["head"]["anchor"] == invoke("ledger", "head", ledger).stdout.strip()
    # a malformed change set is refused with its JSON path, and nothing is recorded
    changes.write_text('{"label_edits": [{"rows": [3], "labels": ["1"]}]}')
    r = invoke("ledger", "apply", ledger, "--changes", changes)
    assert r.exit_code == 2 and '$.label_edits[0].labels[0]: expected a label (an integer >= 0), got a string "1"' in r.output
    assert len(json.loads(invoke("ledger", "history", ledger, "--format", "json").stdout)) == 4


def _store(folder):
    from unlearnkit.bench import load_config
    from unlearnkit.bench.store import Store

    cfg = load_config("quick", ['methods.names=["ft","ga"]', "seeds.eval=[0,1]"], check_data=False).to_dict()
    with Store(folder, create=True) as store:
        store.bind_config(cfg, "hand-made")
        run = store.start_run("local", {})
        for seed in (0, 1):
            for method, v in (("ft", 0.1), ("ga", 0.3)):
                metrics = {"retdev": v, "rte": 1 + v, "indisc_test": 0.9 - v, "acc_retain": 0.9, "acc_forget": 0.8,
                           "acc_val": 0.85, "acc_test": 0.85, "mia_test": 0.5, "distance": v, "seconds": 1.0}
                store.put_cell("digits/cnn/remove-0.1", method, seed, {"params": {}, "status": "ok", "metrics": metrics}, run)
        store.finish_run(run, "done")
    return folder


def test_bench_status_json_and_report_spellings(tmp_path):
    run = _store(tmp_path / "run")
    r = invoke("bench", "status", run, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cells"] == [4, json.loads(r.stdout)["cells"][1]]
    r = invoke("bench", "report", run, "--out", tmp_path / "new", "--formats", "md,csv")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "new" / "report.md").exists() and not (tmp_path / "new" / "report.html").exists()
    r = invoke("bench", "report", run, "--to", tmp_path / "old", "--format", "csv")  # the old spellings
    assert r.exit_code == 0, r.output
    assert (tmp_path / "old" / "summary.csv").exists() and not (tmp_path / "old" / "report.md").exists()
    r = invoke("bench", "report", run, "--out", tmp_path / "a", "--to", tmp_path / "b")
    assert r.exit_code == 2 and "give --out only" in r.output
    help_text = invoke("bench", "report", "--help").output
    assert "--formats" in help_text and "old spelling" in help_text


# ---------------------------------------------------------------------------- pipes
def test_piped_evaluate_prints_every_value_whole(tmp_path, model_file):
    """stdout is a pipe (not a terminal) and COLUMNS is small: the table still holds every metric name and value
    whole, with no ellipsis."""
    data = uk.data.load(SPEC)
    model = uk.load_model(model_file)
    changes = Changes.remove(data.ids[:12].tolist())
    changes.to_json(tmp_path / "c.json")
    result = uk.unlearn(model, data, changes)
    uk.save_model(result.model, tmp_path / "u.pt", metadata={"unlearned": result.to_dict()})
    uk.save_model(uk.retrain(model, data, changes), tmp_path / "r.pt")
    cmd = [sys.executable, "-m", "unlearnkit.cli", "evaluate", "--original", str(model_file), "--unlearned",
           str(tmp_path / "u.pt"), "--retrained", str(tmp_path / "r.pt"), "--data", SPEC, "--changes",
           str(tmp_path / "c.json"), "--test", "synthetic:n=80,d=4,seed=4", "--out", str(tmp_path / "t.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "60", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "…" not in out and "..." not in out
    assert "unlearning evaluation (ideal: the retrained model's value, or the stated target)" in out
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) >= 8 and max(len(r["metric"]) for r in rows) >= 20  # long names among them
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for row in rows:
        line = lines[row["metric"]]  # each metric on its own line, its name whole
        for subject in ("original", "unlearned", "retrained"):
            if row[subject] is not None:
                assert _fmt(row[subject]) in line, (row["metric"], subject, line)


# ---------------------------------------------------------------------------- unlearn: options and exits
def _unlearn_args(tmp_path, model_file, *extra):
    data = uk.data.load(SPEC)
    Changes.relabel(data.ids[:6].tolist(), (1 - data.y[:6]).tolist()).to_json(tmp_path / "c.json")
    return ["unlearn", "--model", model_file, "--data", SPEC, "--changes", tmp_path / "c.json",
            "--out", tmp_path / "u.pt", *extra]


@pytest.mark.parametrize("check, measures", [("off", set()), ("cheap", {"accuracy_corrected_rows", "gradient_residual"}),
                                             ("full", {"accuracy_corrected_rows", "gradient_residual",
                                                       "accuracy_corrected_data"})])
def test_unlearn_check_option_and_format_spellings(tmp_path, model_file, check, measures):
    r = invoke(*_unlearn_args(tmp_path, model_file, "--check", check, "--format", "JSON"))
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["measures"]) == measures


@pytest.mark.parametrize("key", ["check", "val", "device", "method", "retrained"])
def test_unlearn_refuses_reserved_param_keys_with_exit_2(tmp_path, model_file, key):
    r = invoke(*_unlearn_args(tmp_path, model_file, "--param", f"{key}=off"))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"--param {key}=... is not a method hyperparameter" in r.output
    assert not (tmp_path / "u.pt").exists()


def test_unlearn_json_writes_null_for_non_finite_numbers(tmp_path, model_file, monkeypatch):
    import unlearnkit.api

    real = unlearnkit.api.unlearn

    def nan_check(*args, **kw):
        result = real(*args, **kw)
        result.diagnostics["check"]["gradient_residual"]["after"] = float("nan")
        result.diagnostics["check"]["accuracy_corrected_rows"]["after"] = float("inf")
        return result

    monkeypatch.setattr(unlearnkit.api, "unlearn", nan_check)
    r = invoke(*_unlearn_args(tmp_path, model_file, "--format", "json"))
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    report = json.loads(r.stdout)  # strict JSON
    assert report["measures"]["gradient_residual"]["unlearned"] is None
    assert report["measures"]["accuracy_corrected_rows"]["unlearned"] is None


def test_unlearn_strict_exits_1_when_the_guard_rejected_the_update(tmp_path, model_file, monkeypatch):
    import unlearnkit.api

    real = unlearnkit.api.unlearn

    def rejected(model, *args, **kw):
        result = real(model, *args, **kw)
        result.model = model
        result.diagnostics["status"] = "rejected"
        return result

    monkeypatch.setattr(unlearnkit.api, "unlearn", rejected)
    r = invoke(*_unlearn_args(tmp_path, model_file, "--strict"))
    assert r.exit_code == 1
    assert "the guard rejected the update: nothing was unlearned" in r.output
    assert not (tmp_path / "u.pt").exists()
    r = invoke(*_unlearn_args(tmp_path, model_file))  # without --strict: written, status shown
    assert r.exit_code == 0 and "status: rejected" in r.output and (tmp_path / "u.pt").exists()


def test_unlearn_compare_retrain_of_weights_without_a_recipe_fails_before_unlearning(tmp_path, monkeypatch):
    import uuid

    import unlearnkit.api

    name = f"ukf_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n"
                                         "    return torch.nn.Linear(4, 2)\n")
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    called = []
    monkeypatch.setattr(unlearnkit.api, "unlearn", lambda *a, **kw: called.append(1))
    data = uk.data.load(SPEC)
    Changes.remove(data.ids[:4].tolist()).to_json(tmp_path / "c.json")
    try:
        r = invoke("unlearn", "--factory", f"{name}:make", "--factory-path", tmp_path, "--weights", tmp_path / "w.pt",
                   "--data", SPEC, "--changes", tmp_path / "c.json", "--method", "ft", "--out", tmp_path / "u.pt",
                   "--compare-retrain")
    finally:
        sys.modules.pop(name, None)
    assert r.exit_code == 2, r.output
    assert "--compare-retrain retrains the model with its training recipe" in r.output
    assert "unlearnkit train" in r.output and "unlearnkit evaluate --retrained" in r.output
    assert called == [] and not (tmp_path / "u.pt").exists()


def test_evaluate_table_puts_intervals_on_their_own_line_and_escapes_control_characters(monkeypatch):
    import rich.console

    from unlearnkit import cli
    from unlearnkit.metrics.evaluate import MetricRow, MetricTable

    rows = [MetricRow("mia\x1b[31m_loss", "privacy", None, "0.5", 0.61, 0.52, 0.5,
                      intervals={"original": (0.55, 0.67), "unlearned": (0.46, 0.58)}),
            MetricRow("accuracy_retain\nforged", "utility", True, "retrained", 0.9, 0.88, 0.89)]
    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", rich.console.Console(file=buf, width=200, color_system=None))
    cli._print_metric_table(MetricTable(rows))
    out = buf.getvalue()
    assert "\\n" not in out  # no literal backslash-n: the interval is on the line below its value
    lines = out.splitlines()
    value_line = next(i for i, line in enumerate(lines) if "0.6100" in line)
    assert "[0.550, 0.670]" in lines[value_line + 1] and "[0.460, 0.580]" in lines[value_line + 1]
    assert "0.6100" not in lines[value_line + 1]
    assert "\x1b" not in out and "mia\\x1b[31m_loss" in out  # user text: control characters shown escaped


def test_demo_format_json_is_one_strict_object(monkeypatch):
    from unlearnkit import demo

    report = demo.DemoReport([demo.DemoRow("leaky feature", "second-order", 0.9, 0.8, 1e-4, 0.01, float("nan"),
                                           cpu_seconds=0.02)], wall_seconds=1.5, cpu_seconds=2.0,
                             machine={"cpu": "x", "cores": 2})
    monkeypatch.setattr(demo, "run_measured", lambda seed, step, cnn_epochs: (step("training"), report)[1])
    r = runner.invoke(app, ["demo", "--format", "json", "--cnn-epochs", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["rows"][0]["method"] == "second-order" and out["rows"][0]["speedup"] is None
    assert out["wall_seconds"] == 1.5 and out["machine"]["cores"] == 2
    assert "training" not in r.stdout  # the steps go to stderr
    assert runner.invoke(app, ["demo", "--format", "csv"]).exit_code == 2
