"""Every scenario end to end at its tiny size: reports with every method, and the properties the issue asks for."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearnkit import scenarios
from unlearnkit.cli import app
from unlearnkit.scenarios import canary, rules
from unlearnkit.scenarios.registry import ScenarioError
from unlearnkit.scenarios.report import ScenarioResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORTUNES = Path("/usr/share/games/fortunes")
METHODS = ("original", "retrain", "sisa", "fine-tune", "first-order", "second-order", "first-order-it", "second-order-it")


def _check_report(result, out: Path, extra=()):
    name = result.scenario
    for suffix in ("md", "png", "json"):
        assert (out / f"{name}.{suffix}").stat().st_size > 0
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / f"{name}.md").read_text()
    stored = json.loads((out / f"{name}.json").read_text())
    problems = {r["problem"] for r in stored["rows"]}
    for method in (*METHODS, *extra):
        assert f"| {method} |" in md, method
        for problem in problems:
            rows = [r for r in stored["rows"] if r["problem"] == problem and r["method"] == method]
            if method == "sisa" and problem.startswith("transformer"):  # a wrapped module has no sharded ensemble
                assert not rows
                continue
            assert len(rows) == len(result.seeds) and all(r["status"] == "ok" for r in rows), (problem, method)
    assert stored["goals"] and "## Goals" in md
    return stored


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed (apt-get install -y fortunes)")
def test_sensitive_features(tmp_path):
    result = scenarios.run("sensitive-features", size="tiny", out=tmp_path, baselines=())  # tuned rows: test_scenarios_tuning.py
    stored = _check_report(result, tmp_path)
    summary = result.aggregate()
    for problem in dict.fromkeys(e["problem"] for e in summary):
        get = {e["method"]: e for e in summary if e["problem"] == problem}
        # convex: second-order is much closer to retraining than first-order and removes most of the gradient the
        # change left (not always less than first-order's: zeroing 5 breast-cancer columns in every row is far from
        # linear, and there first-order's residual is 11.6 against second-order's 12.4, from the original's 37.3)
        assert get["second-order"]["distance"] < 0.5 * get["first-order"]["distance"], problem
        assert get["second-order"]["residual"] < 0.5 * get["original"]["residual"], problem
        assert get["retrain"]["residual"] < 1e-3 * get["original"]["residual"], problem
    assert any(p.startswith("text (fortunes)") for p in stored["problems"])


def test_label_poisoning(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)  # the caller's setting: the run uses its own (threads=1) and gives it back
    poison = scenarios.run("label-poisoning", size="tiny", out=tmp_path, baselines=())
    assert torch.get_num_threads() == 2 and poison.machine()["threads"] == 1
    _check_report(poison, tmp_path, extra=("first-order [head]", "second-order [head]"))
    summary = poison.aggregate()
    assert all("restored" in e for e in summary)
    problems = list(dict.fromkeys(e["problem"] for e in summary))
    assert any("targeted" in p for p in problems) and any("random" in p for p in problems)
    for problem in problems:
        get = {e["method"]: e for e in summary if e["problem"] == problem}
        assert get["retrain"]["restored"] == pytest.approx(1.0)
        assert get["retrain"]["test_accuracy"] > get["original"]["test_accuracy"], problem  # poisoning costs accuracy ...
        # ... and an update wins some of it back. Random flips: the exact head update (seed 0: 5.5 test rows of the
        # 4.5 poisoning cost). Targeted flips (75 % of classes 0 and 1): the one-step updates overshoot (second-order
        # 68.2 % -> 36.7 %), the iterative second-order update restores about half (-> 76.4 %, retrained 83.3 %)
        best = "second-order-it" if "targeted" in problem else "second-order [head]"
        assert get[best]["restored"] > 0, problem


def test_backdoor_from_the_command_line_as_json(tmp_path):
    # the command line's defaults: --size tiny; --format json prints the per-method means and the goals
    res = CliRunner().invoke(app, ["scenario", "backdoor", "--out", str(tmp_path), "--format", "json", "--baselines", "none"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed["size"] == "tiny" and printed["goals"] and printed["report"]["md"] == str(tmp_path / "backdoor.md")
    assert all({"problem", "method", "test_accuracy", "attack_success", "noop"} <= set(e) for e in printed["summary"])
    stored = json.loads((tmp_path / "backdoor.json").read_text())
    backdoor = ScenarioResult.from_dict(stored)
    assert backdoor.size == "tiny"
    _check_report(backdoor, tmp_path, extra=("second-order [head]",))
    get = {e["method"]: e for e in printed["summary"]}
    assert get["original"]["attack_success"] > 0.5  # the backdoor works ...
    assert get["retrain"]["attack_success"] < 0.1   # ... and retraining without it removes it
    assert get["second-order"]["attack_success"] < 0.5 * get["original"]["attack_success"]
    assert not get["second-order"]["noop"]


def test_canary_exposure_drops(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="unlearnkit.scenarios"):
        result = scenarios.run("canary", out=tmp_path, baselines=())  # no callback: progress still reaches the log
    assert result.size == "tiny"  # the default size
    steps = [r.getMessage() for r in caplog.records if r.name == "unlearnkit.scenarios.registry"]
    assert any("building the problems" in m for m in steps) and any("second-order-it" in m for m in steps)
    assert "s CPU" in steps[-1]
    _check_report(result, tmp_path)
    get = {e["method"]: e for e in result.aggregate()}
    top = np.log2(10.0 ** canary.SIZES["tiny"].digits)
    assert get["original"]["exposure"] > top - 1  # memorised: the secret is (nearly) the model's first guess
    assert get["retrain"]["exposure"] < 4          # a model that never saw it: chance is about 1.44 bits
    assert get["original"]["exposure"] - get["second-order-it"]["exposure"] > 3


def test_canary_exposure_scores_only_what_differs_between_candidates():
    """The scenario scores a candidate from its secret on; the characters before it are the same for every candidate,
    so the exposure equals the one from whole texts (Carlini et al.'s definition)."""
    import torch

    from unlearnkit.data.text import CharVocab
    from unlearnkit.metrics.exposure import Canary, canary_exposure
    from unlearnkit.models.lstm import CharLSTM, char_log_perplexity

    vocab = CharVocab.from_text(canary.PREFIX + canary.LEAD + canary.REPLACEMENT + "0123456789" + canary.SUFFIX)
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=len(vocab), window=6, embed_dim=4, hidden=8)
    secret = Canary(canary.PREFIX, "042", suffix=canary.SUFFIX)
    lead = vocab.encode(canary.LEAD)

    def whole(texts):
        return char_log_perplexity(model, [np.concatenate([lead, vocab.encode(t)]) for t in texts])

    expected = canary_exposure(secret, whole, seed=0).exposure
    assert canary._exposure(model, secret, vocab, lead, 0, None) == pytest.approx(expected, abs=1e-9)


def test_canary_changes_cover_every_affected_window():
    size = canary.SIZES["tiny"]
    text, _, secret, starts = canary.build_text(size, 0)
    assert all(text[s:s + len(secret)] == secret for s in starts)
    from unlearnkit.data.text import CharVocab, char_windows

    vocab = CharVocab.from_text(text + canary.REPLACEMENT)
    old = char_windows(vocab.encode(text), size.window, vocab_size=len(vocab))
    new = char_windows(vocab.encode(canary.redact(text, starts, len(secret))), size.window, vocab_size=len(vocab))
    changes = canary.window_changes(old, new)
    expected = {i for s in starts for i in range(s, s + len(secret) + size.window) if i >= size.window}
    assert set(changes.resolve(old).affected_ids.tolist()) == expected
    assert np.array_equal(changes.apply(old).X, new.X) and np.array_equal(changes.apply(old).y, new.y)


def test_rules():
    assert rules.iterative_chunks(5, 10_000) == 2
    assert rules.iterative_chunks(350, 10_000) == 4
    assert rules.iterative_chunks(5_000, 10_000) == 10
    assert rules.iterative_chunks(1, 10_000) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ScenarioError, match="Unknown scenario"):
        scenarios.run("nope")
    with pytest.raises(ScenarioError, match="Unknown size"):
        scenarios.run("canary", size="huge")
    with pytest.raises(ScenarioError, match="seeds"):
        scenarios.run("canary", size="tiny", seeds=[1, 1])
    with pytest.raises(ScenarioError, match="threads must be a positive integer"):
        scenarios.run("canary", threads=0)
    with pytest.raises(ScenarioError, match="progress must be 'auto'"):
        scenarios.run("canary", progress="loud")
    runner = CliRunner()
    res = runner.invoke(app, ["scenario", "nope", "--size", "tiny", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "Unknown scenario" in res.output
    res = runner.invoke(app, ["scenario", "canary", "--seeds", "a,b"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["scenario", "list"])
    assert res.exit_code == 0 and all(name in res.output for name in scenarios.SCENARIOS)
    res = runner.invoke(app, ["scenario", "list", "--format", "json"])
    assert res.exit_code == 0 and [e["name"] for e in json.loads(res.stdout)] == list(scenarios.SCENARIOS)
    res = runner.invoke(app, ["scenario", "canary", "--format", "xml"])
    assert res.exit_code == 2 and "table or json" in res.output


def test_progress_auto_draws_on_a_terminal_only(monkeypatch):
    """``progress="auto"`` (the default of scenarios.run and bench.run) draws a live line on standard error when it is
    a terminal, and nothing when it is a file or a pipe; True and False force it on and off."""
    import io
    import sys

    from unlearnkit import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert progress.wants_display("auto") is shown
        with progress.status_line("auto", "first") as show:
            show("seed 0: second-order")
        with progress.stage_bars("auto") as bars:
            bars("search", 3, 6)
        text = stream.getvalue()
        assert ("seed 0: second-order" in text and "3/6" in text) if shown else text == ""
    assert progress.wants_display(True) and not progress.wants_display(False) and not progress.wants_display(None)


def test_no_live_line_while_logging_writes_progress_to_the_terminal(monkeypatch):
    """A live line redrawn between log records on the same terminal garbles both: with a handler that writes the
    INFO progress records to standard error (logging.basicConfig(level=INFO)), no live line is drawn, and the
    records come out whole; a handler writing to a file, or one above INFO, leaves the live line on."""
    import io
    import logging
    import sys

    from unlearnkit import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    name = "unlearnkit.scenarios.registry"
    root = logging.getLogger()
    level = root.level
    for handler_stream, handler_level, drawn in (("stderr", logging.INFO, False), ("file", logging.INFO, True),
                                                  ("stderr", logging.WARNING, True)):
        stream = Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        handler = logging.StreamHandler(stream if handler_stream == "stderr" else io.StringIO())
        handler.setLevel(handler_level)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            assert progress.wants_display("auto", name) is drawn and progress.wants_display(True, name) is drawn
            with progress.status_line("auto", "first", name) as show:
                logging.getLogger(name).info("canary (tiny): step 1")
                show("canary (tiny) 0s step 1")
            with progress.stage_bars("auto", name) as bars:
                bars("search", 3, 6)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        text = stream.getvalue()
        assert ("3/6" in text) is drawn
        if not drawn:
            assert text == "canary (tiny): step 1\n"


def test_targeted_poisoning_concentrates_its_budget_on_few_class_pairs():
    from unlearnkit.errors import DataError
    from unlearnkit.scenarios import poisoning

    y = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))
    rows, new = poisoning.flip_labels(y, 0.15, "targeted", 10, seed=3, sources=2)  # 75 % of classes 0 and 1
    assert len(np.unique(rows)) == 150 and np.array_equal(rows, np.sort(rows))
    assert np.array_equal(np.bincount(y[rows], minlength=10), [75, 75] + [0] * 8)
    assert np.array_equal(new, 9 - y[rows])
    ref_rows, ref_new = poisoning.flip_labels(y, 0.2, "targeted", 10, seed=3)  # the reference rule: budget/10 a pair
    assert np.array_equal(np.bincount(y[ref_rows], minlength=10), [20] * 10)
    assert np.array_equal(ref_new, 9 - y[ref_rows])
    same = poisoning.flip_labels(y, 0.2, "targeted", 10, seed=3, sources=10)
    assert np.array_equal(same[0], ref_rows) and np.array_equal(same[1], ref_new)
    assert not np.array_equal(poisoning.flip_labels(y, 0.15, "targeted", 10, seed=4, sources=2)[0], rows)
    with pytest.raises(DataError, match="lower rate"):
        poisoning.flip_labels(y, 0.3, "targeted", 10, seed=0, sources=2)  # 150 rows of a class of 100
    with pytest.raises(DataError, match="source classes"):
        poisoning.flip_labels(y, 0.1, "targeted", 10, seed=0, sources=0)
    assert poisoning.image_data(poisoning.Size(0, 0, (), (), 0, 0), seed=0) == []  # no digits at digits_epochs=0
