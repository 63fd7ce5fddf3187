"""Every scenario end to end at its tiny size: reports with every method, and the properties the issue asks for."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearnkit import scenarios
from unlearnkit.cli import app
from unlearnkit.scenarios import canary, rules
from unlearnkit.scenarios.registry import ScenarioError

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
            assert len(rows) == len(result.seeds) and all(r["status"] == "ok" for r in rows), (problem, method)
    assert stored["goals"] and "## Goals" in md
    return stored


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed (apt-get install -y fortunes)")
def test_sensitive_features(tmp_path):
    result = scenarios.run("sensitive-features", size="tiny", out=tmp_path)
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


def test_label_poisoning_and_backdoor(tmp_path):
    poison = scenarios.run("label-poisoning", size="tiny", out=tmp_path)
    _check_report(poison, tmp_path, extra=("first-order [head]", "second-order [head]"))
    summary = poison.aggregate()
    assert all("restored" in e for e in summary)
    assert next(e for e in summary if e["method"] == "retrain")["restored"] == pytest.approx(1.0)
    backdoor = scenarios.run("backdoor", size="tiny", out=tmp_path)
    _check_report(backdoor, tmp_path, extra=("second-order [head]",))
    get = {e["method"]: e for e in backdoor.aggregate()}
    assert get["original"]["attack_success"] > 0.5  # the backdoor works ...
    assert get["retrain"]["attack_success"] < 0.1   # ... and retraining without it removes it
    assert get["second-order"]["attack_success"] < 0.5 * get["original"]["attack_success"]


def test_canary_exposure_drops(tmp_path):
    result = scenarios.run("canary", size="tiny", out=tmp_path)
    _check_report(result, tmp_path)
    get = {e["method"]: e for e in result.aggregate()}
    top = np.log2(10.0 ** canary.SIZES["tiny"].digits)
    assert get["original"]["exposure"] > top - 1  # memorised: the secret is (nearly) the model's first guess
    assert get["retrain"]["exposure"] < 4          # a model that never saw it: chance is about 1.44 bits
    assert get["original"]["exposure"] - get["second-order-it"]["exposure"] > 3


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
    runner = CliRunner()
    res = runner.invoke(app, ["scenario", "nope", "--size", "tiny", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "Unknown scenario" in res.output
    res = runner.invoke(app, ["scenario", "canary", "--seeds", "a,b"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["scenario", "list"])
    assert res.exit_code == 0 and all(name in res.output for name in scenarios.SCENARIOS)
