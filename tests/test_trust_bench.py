"""The benchmark runner under failure and hostile input: a failed cell is reported (never a
crash), values that cannot run are refused when the configuration is read, outputs are checked
before anything is computed, and user text is escaped wherever a report renders it."""

from __future__ import annotations

import csv
import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import unlearnkit as uk
from unlearnkit.bench import load_config
from unlearnkit.bench.store import Store
from unlearnkit.errors import BenchError, UnlearnKitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOSTILE = ['"><img src=x onerror=alert(1)>', '![x](x" onerror="alert(1))', "<script>alert(1)</script>",
           "[/docs] $x^$ | **bold** \x1b[31m red \x07"]

# one problem, one evaluation seed, no search: seconds. second-order's exact solver refuses the CNN
# (13,706 parameters > max_params = 10), so that cell fails while ft's succeeds
FAILING = ["data.rows=600", "train.epochs=2", "search.trials=0", "seeds.eval=[0]", "seeds.tuning=[100]",
           'methods.names=["ft","second-order"]', "methods.fixed.second-order.max_params=10",
           'methods.fixed.second-order.solver="exact"']
SMALL = ["data.rows=600", "train.epochs=2", "search.trials=0", "seeds.eval=[0]", 'methods.names=["ft"]']


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unlearnkit.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def _hostile_config(folder: Path) -> Path:
    """The quick preset as a file, with a hostile name, description and protocol name."""
    text = uk.bench.preset_path("quick").read_text(encoding="utf-8")
    as_toml = json.dumps  # a JSON string (\u escapes included) is a TOML basic string
    text = re.sub(r'(?m)^name = .*$', lambda m: f"name = {as_toml(HOSTILE[0] + HOSTILE[3])}", text, count=1)
    text = re.sub(r'(?m)^description = .*$', lambda m: f"description = {as_toml(chr(10).join(HOSTILE))}", text, count=1)
    text = re.sub(r'(?m)^fraction = 0.10$', lambda m: f"fraction = 0.10\nname = {as_toml(HOSTILE[1] + HOSTILE[3])}",
                  text, count=1)
    path = folder / "hostile.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """``unlearnkit bench run`` (report step included) of a run with one failed cell and hostile
    user text in its configuration."""
    tmp = tmp_path_factory.mktemp("failed")
    config = _hostile_config(tmp)
    cfg = load_config(config, FAILING)
    assert cfg.name == HOSTILE[0] + HOSTILE[3] and cfg.protocols[0].name == HOSTILE[1] + HOSTILE[3]
    assert cfg.description == "\n".join(HOSTILE)
    out = tmp / "run"
    res = _cli("bench", "run", config, "--out", out, "--workers", "1", *sum((["--set", o] for o in FAILING), []))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(1 failed)" in res.stdout and "Traceback" not in res.stdout + res.stderr
    assert "\x1b" not in res.stdout + res.stderr, "control characters from a config never reach the terminal"
    for name in ("report.md", "report.html", "summary.csv", "cells.csv"):
        assert (out / name).is_file(), f"the report step of `bench run` wrote no {name}"
    return out


# ---------------------------------------------------------------------------- A: failed cells are results
def test_report_of_a_run_with_a_failed_cell_writes_every_format(failed_run, tmp_path):
    paths = uk.bench.write_report(failed_run, tmp_path / "rep", formats=("md", "html", "csv", "json"))
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "summary.csv", "cells.csv", "report.json"} <= names
    assert any(n.startswith("pareto-") for n in names), "the Pareto plot of the methods that ran"
    with open(tmp_path / "rep" / "cells.csv", newline="", encoding="utf-8") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["ft"]["status"] == "ok" and float(rows["ft"]["retdev"]) >= 0 and rows["ft"]["error"] == ""
    failed = rows["second-order"]
    assert failed["status"] == "failed" and failed["retdev"] == ""
    assert failed["error"].startswith("SolverError") and "max_params" in failed["error"]
    assert json.loads(failed["params"]) == {"max_params": 10, "solver": "exact"}
    with open(tmp_path / "rep" / "summary.csv", newline="", encoding="utf-8") as fh:
        summary = {r["method"]: r for r in csv.DictReader(fh)}
    assert summary["second-order"]["failed"] == "1" and summary["second-order"]["n"] == "0"
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    failed_section = md.split("## Failed cells", 1)[1].split("## Runs")[0]
    assert "second-order seed 0: SolverError" in failed_section
    assert "Left out (every cell failed): second-order" in md, "the ranking names the method it could not rank"
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "second-order seed 0: SolverError" in page
    data = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    assert data["ranks"]["retdev"]["dropped"] == ["second-order"]
    assert [c["status"] for c in data["cells"]] == ["ok", "failed"]


def test_cli_report_and_status_of_a_run_with_a_failed_cell(failed_run, tmp_path):
    res = _cli("bench", "report", failed_run, "--to", tmp_path / "cli")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "cli" / "cells.csv").is_file() and (tmp_path / "cli" / "report.html").is_file()
    res = _cli("bench", "status", failed_run)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failed: " in res.stdout and "SolverError" in res.stdout
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout, "control characters from a config never reach the terminal"


def test_ranks_and_summary_with_partly_failed_methods_and_missing_errors():
    from unlearnkit.bench.report import friedman, rank_blocks, summarise
    from unlearnkit.bench.runner import first_line

    ok = lambda p, m, s, v: {"problem": p, "method": m, "seed": s, "status": "ok", "metrics": {"retdev": v, "rte": 2.0}}
    bad = lambda p, m, s, e: {"problem": p, "method": m, "seed": s, "status": "failed", "metrics": {}, "error": e}
    cells = [ok("p", "a", s, 0.1 * s) for s in range(4)] + [ok("p", "b", s, 0.2 + s) for s in range(3)]
    cells += [bad("p", "b", 3, None), bad("p", "c", 0, ""), bad("p", "c", 1, "\n\nMethodError: diverged\ntrace")]
    methods, ranks, info = rank_blocks(cells, "retdev")
    assert methods == ["a", "b"] and info["dropped"] == ["c"] and info["skipped_blocks"] == 1
    assert ranks.shape == (3, 2) and "p_value" in friedman(ranks)
    rows = {e["method"]: e for e in summarise(cells, [], {0, 1, 2, 3})}
    assert (rows["b"]["n"], rows["b"]["failed"]) == (3, 1) and (rows["c"]["n"], rows["c"]["failed"]) == (0, 2)
    assert first_line(None) == first_line("") == "(no error message was recorded)"
    assert first_line("\n\nMethodError: diverged\ntrace") == "MethodError: diverged"


def test_a_stored_failed_cell_reads_back_with_empty_metrics(tmp_path):
    with Store(tmp_path / "s", create=True) as store:
        store.put_cell("p", "m", 0, {"params": {"lr": 0.1}, "status": "failed", "error": "MethodError: x"}, 1)
        (cell,) = store.cells()
    assert cell["metrics"] == {} and cell["params"] == {"lr": 0.1} and cell["error"] == "MethodError: x"


# ---------------------------------------------------------------------------- B: refused at config time
@pytest.mark.parametrize("overrides, message", [
    (["run.threads_per_worker=1000000"], r"run.threads_per_worker must be in \[1, 256\]"),
    (["run.threads_per_worker=0"], r"run.threads_per_worker must be in \[1, 256\]"),
    (["run.threads_per_worker=1e6"], r"run.threads_per_worker must be int"),
    (["methods.fixed.ft.lr=-0.1"], r"methods.fixed.ft.lr = -0.1 is outside its registered range.*> 0"),
    (["methods.fixed.ft.lr=0"], r"methods.fixed.ft.lr = 0 is outside its registered range"),
    (["methods.fixed.ft.lr=nan"], r"methods.fixed.ft.lr must be a finite number"),
    (["methods.fixed.ft.lr=inf"], r"methods.fixed.ft.lr must be a finite number"),
    (["methods.fixed.ft.momentum=1"], r"methods.fixed.ft.momentum = 1 is outside its registered range.*\[0, 1\)"),
    (["methods.fixed.ft.batch_size=0"], r"methods.fixed.ft.batch_size = 0 is outside.*integer >= 1"),
    (["methods.fixed.ft.epochs=-1"], r"methods.fixed.ft.epochs = -1 is outside.*>= 0"),
    (["methods.fixed.ft.epochs=100000000"], r"methods.fixed.ft.epochs = 100000000 epochs: at most 100,000"),
    (["methods.fixed.ft.seed=1234567890123456789012345678901234567890"], r"methods.fixed.ft.seed does not fit a 64-bit"),
    (['methods.names=["second-order"]', 'methods.fixed.second-order.solver="magic"'],
     r"methods.fixed.second-order.solver = 'magic'.*one of auto, exact, cg, lissa"),
    (["search.trials=1e44"], r"search.trials must be int"),
    (["search.trials=2.5"], r"search.trials must be int"),
    (["search.trials=1234567890123456789012345678901234567890"], r"search.trials must be in \[0, 100,000\]"),
    (["search.trials=100001"], r"search.trials must be in \[0, 100,000\]"),
    (["train.lr=inf"], r"train.lr must be a finite number"),
    (["train.momentum=nan"], r"train.momentum must be a finite number"),
    (["train.momentum=1.5"], r"train.momentum must be in \[0, 1\)"),
    (["train.epochs=1234567890123456789012345678901234567890"], r"train.epochs must be in \[1, 100,000\]"),
    (["seeds.eval=[12345678901234567890123456789]"], r"every entry of seeds.eval must be in \[0, 9,223"),
    (["seeds.eval=[-1]"], r"every entry of seeds.eval must be in \[0, "),
    (["data.split_seed=-5"], r"data.split_seed must be in \[0, "),
    (["data.rows=123456789012345678901234567890"], r"data.rows must be in \[0, "),
    (["search.seed=123456789012345678901234567890"], r"search.seed must be in \[0, "),
])
def test_values_that_cannot_run_are_refused_naming_the_key(overrides, message):
    with pytest.raises(BenchError, match=message):
        load_config("quick", overrides, check_data=False)


def test_fixed_values_inside_their_range_are_accepted():
    cfg = load_config("quick", ["methods.fixed.ft.lr=0.5", "methods.fixed.ft.weight_decay=0", "methods.fixed.ft.batch_size=32",
                                "methods.fixed.ft.momentum=0", "run.threads_per_worker=256", "search.trials=100000"],
                      check_data=False)
    assert cfg.fixed["ft"]["lr"] == 0.5 and cfg.trials == 100_000 and cfg.threads_per_worker == 256


@pytest.mark.parametrize("workers", [0, 1_000_000])
def test_a_run_with_a_worker_count_outside_the_range_is_refused_before_anything_runs(workers, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(BenchError, match=r"--workers must be in \[1, \d+\]"):
        uk.bench.run(load_config("quick", SMALL), out, workers=workers)
    assert not out.exists(), "nothing is created for a refused run"


@pytest.mark.parametrize("workers", [0, -1, 1_000_000, 4 * (os.cpu_count() or 1) + 1, 257, 2.0, True])
def test_worker_counts_outside_the_range_are_refused(workers):
    from unlearnkit.bench.executors import check_workers, max_workers

    with pytest.raises(BenchError, match=r"--workers must be (in \[1, \d+\]|an integer)"):
        check_workers(workers)
    assert check_workers(max_workers()) == max_workers() and check_workers(None) is None
    assert max_workers() <= 256


def test_cli_refuses_workers_zero_and_huge(tmp_path):
    for workers in ("0", "1000000"):
        res = _cli("bench", "run", "quick", "--out", tmp_path / "w", "--workers", workers, *sum((["--set", o] for o in SMALL), []))
        assert res.returncode == 2 and "error:" in res.stderr and "--workers must be in [1, " in " ".join(res.stderr.split())
        assert "Traceback" not in res.stderr and not (tmp_path / "w").exists()


def test_scenario_out_that_is_a_file_fails_before_computing(tmp_path):
    target = tmp_path / "report-file"
    target.write_text("keep me")

    def step(message):
        raise AssertionError(f"computing started before --out was checked: {message}")

    with pytest.raises(UnlearnKitError, match="is a file, but --out names a folder"):
        uk.scenarios.run("sensitive-features", size="tiny", out=target, step=step)
    assert target.read_text() == "keep me"
    res = _cli("scenario", "sensitive-features", "--size", "tiny", "--out", target, timeout=120)
    assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr
    assert target.read_text() == "keep me"


def test_bench_run_and_report_outputs_that_are_files_fail_first(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    res = _cli("bench", "run", "quick", "--out", target, *sum((["--set", o] for o in SMALL), []))
    assert res.returncode == 2 and "is a file, but --out names a folder" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr and target.read_text() == "keep me"
    with pytest.raises(UnlearnKitError, match="is a file .*, but --out names a folder"):
        uk.bench.run(load_config("quick", SMALL), target / "sub", workers=1)
    res = _cli("bench", "report", _hand_made_run(tmp_path / "run", "plain"), "--to", target)
    assert res.returncode == 2 and "is a file, but --to names a folder" in " ".join(res.stderr.split())
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------- 19: no injection through reports
class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _check_html(page: str) -> None:
    parser = _Tags()
    parser.feed(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b", "table", "thead", "tbody",
               "tr", "th", "td", "ul", "li", "img"}
    for tag, attrs in parser.tags:
        assert tag in allowed, f"user text became a <{tag}> tag"
        assert not any(name.startswith("on") for name in attrs), f"an event handler in <{tag} {attrs}>"
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), "only the report's own plots are images"
            assert set(attrs) == {"alt", "src"}


def _check_markdown(md: str) -> None:
    own = re.compile(r"^!\[(Pareto front|CD plot \w+)\]\((pareto|cd)-[\w.-]+\.png\)$")
    for line in md.splitlines():
        assert "\x1b" not in line and "\x07" not in line
        if own.match(line):
            continue
        assert not re.search(r"(?<!\\)[<>]", line), f"unescaped raw HTML in {line!r}"
        assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", line), f"a link or image made of user text in {line!r}"


def test_report_escapes_hostile_config_text(failed_run, tmp_path):
    uk.bench.write_report(failed_run, tmp_path / "rep", formats=("md", "html"))
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    _check_html(page)
    assert "&lt;script&gt;" in page and "onerror=&quot;alert(1))" in page, "hostile text is shown, escaped"
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    _check_markdown(md)
    assert "!\\[x\\](x\" onerror=\"alert(1))" in md and "\\<script\\>" in md


def _hand_made_run(folder: Path, description: str, name: str = "hand-made") -> Path:
    """A results store written directly (no training): two methods on two seeds, one failed cell."""
    cfg = load_config("quick", ['methods.names=["ft","ga","msg"]', "seeds.eval=[0,1]"], check_data=False).to_dict()
    cfg["description"], cfg["name"] = description, name
    metrics = lambda v: {"retdev": v, "rte": 1 + v, "indisc_test": 0.9 - v, "acc_retain": 0.9, "acc_forget": 0.8,
                         "acc_val": 0.85, "acc_test": 0.85, "mia_test": 0.5, "distance": v, "seconds": 1.0}
    with Store(folder, create=True) as store:
        store.bind_config(cfg, "hand-made")
        run = store.start_run("local", {})
        for seed in (0, 1):
            for method, value in (("ft", 0.1), ("ga", 0.3)):
                store.put_cell("digits/cnn/remove-0.1", method, seed,
                               {"params": {}, "status": "ok", "metrics": metrics(value + seed / 10)}, run)
            store.put_cell("digits/cnn/remove-0.1", "msg", seed,
                           {"params": {"lr": 0.1}, "status": "failed", "error": "MethodError: <b>diverged</b>"}, run)
        store.finish_run(run, "done")
    return folder


def test_failed_cells_of_a_stored_run_reach_every_report_format(tmp_path):
    out = _hand_made_run(tmp_path / "run", "plain")
    uk.bench.write_report(out, formats=("md", "html", "csv", "json"))
    with open(out / "cells.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["status"]) for r in rows if r["status"] != "ok"] == [("msg", "failed")] * 2
    assert all(r["error"] == "MethodError: <b>diverged</b>" for r in rows if r["method"] == "msg")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.count("msg seed") == 2 and "Left out (every cell failed): msg" in md and "Friedman" in md
    assert json.loads((out / "report.json").read_text())["ranks"]["retdev"]["methods"] == ["ft", "ga"]


def test_cli_status_shows_a_hostile_name_literally(tmp_path):
    out = _hand_made_run(tmp_path / "run", "plain", name=HOSTILE[3])
    res = _cli("bench", "status", out)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "[/docs] $x^$" in res.stdout, "the name is shown as text, not read as markup"
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\\x1b" in res.stdout
    assert res.stdout.count("failed: ") == 2


def test_report_html_embeds_only_its_own_plots(tmp_path):
    out = _hand_made_run(tmp_path / "run", "\n".join(HOSTILE[:3]))
    uk.bench.write_report(out, formats=("md", "html"))
    page = (out / "report.html").read_text(encoding="utf-8")
    _check_html(page)
    assert page.count("<img ") == 4, "the Pareto front and three CD plots, nothing else"
    _check_markdown((out / "report.md").read_text(encoding="utf-8"))
    assert "MethodError: &lt;b&gt;diverged&lt;/b&gt;" in page


@pytest.mark.parametrize("line", HOSTILE + ["![x](x)", "![Pareto front](javascript:alert(1))",
                                            '| a | <img src=x onerror=alert(1)> |', "**<b>"])
def test_html_rendering_never_turns_text_into_markup(line):
    from unlearnkit.bench.report import to_html

    page = to_html(f"# t\n\n{line}\n", title='"><script>x</script>', images={"p.png": "data:image/png;base64,AAAA"})
    _check_html(page)
    assert "<script>" not in page


def test_markdown_escaping_round_trips_through_the_html_renderer():
    from unlearnkit.bench.report import _md, _md_lines, to_html

    for text in HOSTILE + ["a \\| b", "x*y*z", "-1 leads", "# heading?", "2. item"]:
        escaped = _md(text)
        assert not re.search(r"(?<!\\)[<>\[\]|*]", escaped.replace("\\\\", "")), escaped
        rendered = to_html(_md_lines(text)[0], "t")
        body = rendered.split("<body>\n", 1)[1]
        assert body.startswith("<p>") and "<h" not in body and "<li>" not in body, body
    page = to_html("![Pareto front](p.png)", "t", images={"p.png": "data:image/png;base64,AAAA"})
    assert '<img alt="Pareto front" src="data:image/png;base64,AAAA">' in page


# ---------------------------------------------------------------------------- 21: no tracebacks from --set
@pytest.mark.parametrize("value", [
    "search.trials=1234567890123456789012345678901234567890",
    "search.trials=" + "9" * 5000,
    "search.trials=nan", "search.trials=inf", "search.trials=-inf",
    'search.trials={"a": {"b": [1, 2, {"c": 3}]}}',
    "search.trials=" + "[" * 5000 + "]" * 5000,
    "data.val_fraction=" + "(" * 500 + "1" + ")" * 500,
    'data.rows="many"', "data.rows=1.5", "data.rows=true",
    "train.lr=" + "1" * 400, "train.lr=1e999", "train.batch_size=1e99",
    "seeds.eval=[nan]", 'seeds.eval=["0"]', "seeds.eval=[0, 0]",
    "protocol.0.fraction=nan", "protocol.0.classes=[99999999999999999999999]",
    'models.options.cnn={"hidden": {"a": [[[]]]}}',
    "methods.fixed.ft.lr=" + "9" * 400,
])
def test_set_values_end_in_a_named_error(value):
    with pytest.raises(BenchError):
        load_config("quick", ["data.rows=600", value])


def test_cli_set_forty_digit_trials_is_an_error_not_a_traceback(tmp_path):
    out = tmp_path / "run"
    res = _cli("bench", "run", "quick", "--out", out, "--set", "search.trials=1234567890123456789012345678901234567890",
               timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stdout + res.stderr
    assert "search.trials must be in [0, 100,000]" in " ".join(res.stderr.split())
    assert not out.exists()
    res = _cli("bench", "run", "quick", "--out", out, "--set", "search.trials=" + "[" * 3000 + "]" * 3000)
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr and not out.exists()


# ---------------------------------------------------------------------------- stop requests
def test_a_stop_request_is_honoured_even_if_its_interrupt_was_lost(tmp_path):
    """A SIGINT whose KeyboardInterrupt lands where Python swallows it (a destructor, a callback)
    must still stop the run: the command line's handler also records the request, and the runner
    asks for it between results. Here no interrupt is raised at all; only the request is set."""
    out = tmp_path / "stopped"
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 1  # let the first wait through, then stop

    with pytest.raises(KeyboardInterrupt):
        uk.bench.run(load_config("quick", SMALL), out, workers=1, should_stop=should_stop)
    assert uk.bench.status(out)["runs"][0]["status"] == "interrupted"
    summary = uk.bench.run(load_config("quick", SMALL), out, workers=1)  # resumes to completion
    assert summary.failed_cells == 0 and uk.bench.status(out)["complete"]


# ---------------------------------------------------------------------------- method registry
@pytest.mark.parametrize("method, params, match", [
    ("ft", {"lr": -0.1}, r"'lr' = -0.1 is outside its registered range .*> 0 \(a learning rate\)"),
    ("ft", {"lr": float("nan")}, r"'lr' must be a finite number"),
    ("ft", {"lr": 10**400}, r"'lr' does not fit a 64-bit integer"),
    ("ft", {"momentum": 1.0}, r"'momentum' = 1.0 is outside .*\[0, 1\)"),
    ("ft", {"batch_size": 0}, r"'batch_size' = 0 is outside .*integer >= 1"),
    ("second-order", {"solver": "magic"}, r"'solver' = 'magic' is outside .*one of auto, exact, cg, lissa"),
    ("first-order", {"tau": -0.5}, r"'tau' = -0.5 is outside .*> 0"),
])
def test_the_registry_refuses_values_outside_the_registered_range(method, params, match):
    """The public API refuses what the bench refuses: validation lives in the registry, once."""
    from unlearnkit.errors import MethodError

    with pytest.raises(MethodError, match=match):
        uk.methods.make(method, **params)


def test_every_default_lies_in_its_registered_range():
    for name in uk.methods.list():
        for h in uk.methods.info(name).hyperparameters:
            assert h.problem(h.default) is None, (name, h.name, h.default, h.range)
    assert uk.methods.make("ft", lr=0.5, batch_size=32).lr == 0.5  # outside the search interval is fine
    assert uk.methods.make("second-order", damping="auto", hessian_rows=None).damping == "auto"
