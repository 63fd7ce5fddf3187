"""The cached-curvature rows of the network scenarios (K-FAC / EK-FAC, and their guarded iterative variants), and
the scenarios' goals judged on their best closed-form row."""

import math

import pytest

import unlearnkit.curvature
from unlearnkit.data.changes import Changes
from unlearnkit.data.embedded import load_digits
from unlearnkit.data.text import CharVocab, char_windows, python_docs_excerpt
from unlearnkit.errors import ModelError
from unlearnkit.models import LogisticRegression, for_data
from unlearnkit.models.lstm import CharLSTM
from unlearnkit.scenarios import backdoor, canary, poisoning, rules
from unlearnkit.scenarios import compare as compare_module
from unlearnkit.scenarios.compare import CurvatureCache, compare
from unlearnkit.scenarios.goals import best_closed_form, closed_form_labels, within

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNGUARDED = [f"second-order [{k}]" for k in rules.NETWORK_CURVATURES]
GUARDED = [f"second-order-it [{k}, guarded]" for k in rules.NETWORK_CURVATURES]


def _run(module, monkeypatch):
    """The scenario's tiny problems (seed 0) solved by the cached network strategies, one curvature cache for all of
    them as :func:`unlearnkit.scenarios.run` keeps one per seed; counts the fits and which curvature each request got."""
    fits, given = [], []
    fit, make = unlearnkit.curvature.fit, compare_module.methods.make

    def counting_fit(model, data, **kwargs):
        fitted = fit(model, data, **kwargs)
        fits.append((id(model), kwargs.get("kind"), id(fitted)))
        return fitted

    def recording_make(name, **hyperparameters):
        curvature = hyperparameters.get("curvature", "auto")
        if not isinstance(curvature, str):
            given.append(id(curvature))
        return make(name, **hyperparameters)

    monkeypatch.setattr(unlearnkit.curvature, "fit", counting_fit)
    monkeypatch.setattr(compare_module.methods, "make", recording_make)
    cache = CurvatureCache()
    problems, rows = module.problems(module.SIZES["tiny"], 0, None), []
    for problem in problems:
        strategies = rules.network_cached_strategies(problem.model, problem.train, problem.changes)
        assert [s.label for s in strategies] == [UNGUARDED[0], GUARDED[0], UNGUARDED[1], GUARDED[1]]
        rows += compare(problem, strategies, curvatures=cache)
    return problems, {(r.problem, r.method): r for r in rows}, fits, given


def _check_reuse(problems, rows, fits, given):
    """One fit per model and kind; each fitted curvature served both rows of its kind (amortised and guarded
    iterative) on every problem of its model, and both rows report that one fit."""
    models = {id(p.model) for p in problems}
    assert len(fits) == len({(m, k) for m, k, _ in fits}) == 2 * len(models)
    assert {k for _, k, _ in fits} == set(rules.NETWORK_CURVATURES)
    per_model = {m: sum(1 for p in problems if id(p.model) == m) for m in models}
    assert sorted(given.count(f) for _, _, f in fits) == sorted(2 * per_model[m] for m, _, _ in fits)
    for p in problems:
        for kind, amortised, iterative in zip(rules.NETWORK_CURVATURES, UNGUARDED, GUARDED):
            a, b = rows[(p.name, amortised)], rows[(p.name, iterative)]
            assert a.status == b.status == "ok", (p.name, a.status, b.status)
            assert a.fit_seconds == b.fit_seconds > 0  # the same fit, its cost shown once per model
            assert a.one_shot_seconds == pytest.approx(a.fit_seconds + a.seconds)
            assert a.settings["cached_curvature"] == kind
            assert a.settings["settings"]["solver"] == "cached" and a.settings["settings"]["damping"] > 0


def _check_guarded(problems, rows):
    """Every guarded iterative row's test accuracy is at least the original's minus one point."""
    for p in problems:
        original = rows[(p.name, "original")].test_accuracy
        for label in GUARDED:
            assert rows[(p.name, label)].test_accuracy >= original - 0.01, (p.name, label)


def test_label_poisoning_cached_rows(monkeypatch):
    problems, rows, fits, given = _run(poisoning, monkeypatch)
    _check_reuse(problems, rows, fits, given)
    _check_guarded(problems, rows)
    for p in problems:
        original, retrained = rows[(p.name, "original")], rows[(p.name, "retrain")]
        assert retrained.test_accuracy > original.test_accuracy  # poisoning cost accuracy: there is some to restore
        # efficacy (restored accuracy): the best cached row wins back some of what poisoning cost, where doing nothing
        # wins back none. A weak property at this size, stated as such: random flips cost this small CNN little
        # (seed 0: 82.85 % -> retrained 83.30 %), the best rows are the guarded ones at 83.30 % (two test rows more
        # than the original), and the unguarded K-FAC / EK-FAC steps overshoot (71.7 % / 68.2 %), as they do on
        # targeted flips, where the exact Gauss-Newton matrix with the same damping rule restores most of the loss:
        # the block-diagonal approximation, not the damping, is what falls short on this network.
        # On targeted flips (75 % of classes 0 and 1 relabelled) no cached row beats doing nothing at this size: the
        # unguarded steps overshoot (seed 0: 68.2 % -> 17.4 % / 14.9 %) and the guards reject every damping (the
        # objective rose), returning the original within a test row; the iterative update on the exact
        # Gauss-Newton matrix (second-order-it) is the closed-form row that restores accuracy there (-> 76.4 %;
        # asserted in test_scenarios.py::test_label_poisoning). Here: the guards keep the model (checked above).
        if "random" in p.name:
            best = max(rows[(p.name, label)].test_accuracy for label in UNGUARDED + GUARDED)
            assert best > original.test_accuracy, p.name


def test_backdoor_cached_rows(monkeypatch):
    problems, rows, fits, given = _run(backdoor, monkeypatch)
    _check_reuse(problems, rows, fits, given)
    _check_guarded(problems, rows)
    for p in problems:
        original = rows[(p.name, "original")].efficacy["attack_success"]
        assert original > 0.5  # the trigger works before unlearning
        # efficacy (attack success): the best cached row removes most of the backdoor (seed 0: the unguarded K-FAC
        # and EK-FAC rows bring it from 69 % to 0 %, at 39 % / 41 % test accuracy against the original's 69 %; the
        # guarded rows are refused by their guard and return the original)
        best = min(rows[(p.name, label)].efficacy["attack_success"] for label in UNGUARDED + GUARDED)
        assert best < 0.5 * original, p.name


def test_canary_cached_rows(monkeypatch):
    problems, rows, fits, given = _run(canary, monkeypatch)
    _check_reuse(problems, rows, fits, given)
    for p in problems:
        original = rows[(p.name, "original")].efficacy
        # efficacy (exposure): the best cached row brings the memorised secret down by more than half its bits
        # (seed 0: the unguarded K-FAC row, 13.3 -> 0.09 bits, at 9.4 bits per character against 5.3; the guarded rows
        # leave the exposure at 13.3 bits)
        best = min(rows[(p.name, label)].efficacy["exposure"] for label in UNGUARDED + GUARDED)
        assert best < 0.5 * original["exposure"], p.name
    # The guarded iterative rows' utility is checked on bits per character of held-out text (the scenario's fidelity
    # measure), not next-character accuracy: on this tiny model (6-character window, 28 % accuracy) that accuracy
    # moves by more than a point without any change in what the model knows (on seed 0 retraining moves it 1.3 points
    # and the guarded K-FAC row 1.7 points, while bits per character change by 0.35 %): near-ties of the argmax flip.
    for p in problems:
        original = rows[(p.name, "original")].efficacy["bits_per_char"]
        for label in GUARDED:
            assert rows[(p.name, label)].efficacy["bits_per_char"] <= 1.01 * original, (p.name, label)


def test_strategies_of_the_network_scenarios_include_the_cached_rows():
    text = python_docs_excerpt()[:600]
    vocab = CharVocab.from_text(text)
    data = char_windows(vocab.encode(text), 6, name="docs", vocab_size=len(vocab))
    changes = Changes.relabel(data.ids[:30], (data.y[:30] + 1) % len(vocab))
    small = CharLSTM(vocab_size=len(vocab), window=6, embed_dim=8, hidden=12)
    large = CharLSTM(vocab_size=len(vocab), window=6, embed_dim=64, hidden=12)  # an embedding over 2,000 parameters
    labels = [s.label for s in canary.strategies(small, data, changes)]
    assert labels[-4:] == [UNGUARDED[0], GUARDED[0], UNGUARDED[1], GUARDED[1]]
    strategies = {s.label: s for s in rules.network_cached_strategies(small, data, changes)}
    # the char-LSTM's gates and output are linear layers (factored over the positions); the embedding is not: its
    # exact Gauss-Newton block when small, its diagonal when large, as unlearnkit.curvature.fit treats it
    assert "lstm.0.input_gates" in strategies[UNGUARDED[0]].rule and "output" in strategies[UNGUARDED[0]].rule
    assert "embedding: exact GGN block" in strategies[UNGUARDED[0]].rule
    assert "embedding: GGN diagonal" in rules.network_cached_strategies(large, data, changes)[0].rule
    guarded = strategies[GUARDED[1]]
    assert guarded.curvature == "ekfac" and guarded.hyperparameters["guard"] is True
    assert guarded.hyperparameters["chunks"] == rules.iterative_chunks(30, len(data))
    assert strategies[UNGUARDED[1]].hyperparameters == {"guard": False} and strategies[UNGUARDED[1]].curvature == "ekfac"
    assert poisoning.strategies is backdoor.strategies
    cnn = for_data("cnn", load_digits().subset(list(range(50))), channels=(2, 4), hidden=8)
    assert [s.label for s in poisoning.strategies(cnn, load_digits().subset(list(range(50))), Changes.relabel([0], [1]))
            ][-4:] == [UNGUARDED[0], GUARDED[0], UNGUARDED[1], GUARDED[1]]
    with pytest.raises(ModelError, match="convex"):
        rules.network_cached_strategies(LogisticRegression(n_features=4, n_classes=3), data, changes)


# ------------------------------------------------------------------------------------------------------ goals
def _entry(problem, method, **values):
    return {"problem": problem, "method": method, "runs": 3, "failed": 0, "test_accuracy": 0.8, "seconds": 1.0,
            "speedup": None, **values}


def test_canary_goal_is_met_by_any_closed_form_row_and_reports_the_best():
    p = "docs: secret x10"
    summary = [_entry(p, "original", exposure=40.0, bits_per_char=2.0, seconds=0.0),
               _entry(p, "retrain", exposure=1.0, bits_per_char=2.10, seconds=100.0, speedup=1.0),
               _entry(p, "second-order", exposure=2.5, bits_per_char=2.13, speedup=5.0),          # too slow
               _entry(p, "second-order [kfac]", exposure=3.5, bits_per_char=2.12, speedup=50.0),  # exposure 2.5 bits off
               _entry(p, "fine-tune", exposure=1.0, bits_per_char=2.10, speedup=500.0)]           # not closed-form
    (goal,) = canary.goals(summary)
    assert not goal.met and "fine-tune" not in goal.detail
    assert "best closed-form row: second-order" in goal.detail and "missed:" in goal.detail
    summary[3]["exposure"] = 2.9
    (goal,) = canary.goals(summary)
    assert goal.met and "best closed-form row: second-order [kfac]" in goal.detail and "50.0x" in goal.detail
    summary[3]["bits_per_char"] = 2.15  # +2.4 %: outside 2 %
    (goal,) = canary.goals(summary)
    assert not goal.met and "bits per character within 2 %" in goal.detail


def test_label_poisoning_goal_judges_targeted_problems_against_tuned_fine_tuning():
    t, r = "fashion-mnist: 10% targeted flips", "fashion-mnist: 10% random flips"
    summary = [_entry(t, "original", test_accuracy=0.70, seconds=0.0), _entry(t, "retrain", test_accuracy=0.80, speedup=1.0,
                                                                           seconds=100.0),
               _entry(t, "second-order-it [ekfac, guarded]", test_accuracy=0.76, seconds=2.0, speedup=50.0),
               _entry(t, "ft [tuned]", test_accuracy=0.75, seconds=3.0, speedup=33.0),
               # random flips: shown for contrast, never judged (this row would miss everything)
               _entry(r, "original", test_accuracy=0.80, seconds=0.0), _entry(r, "retrain", test_accuracy=0.81, speedup=1.0),
               _entry(r, "second-order-it [ekfac, guarded]", test_accuracy=0.10, speedup=0.5)]
    poisoning.derive(summary)
    (goal,) = poisoning.goals(summary)
    assert goal.met and "restored 60%" in goal.detail and r not in goal.detail
    summary[2]["seconds"] = 4.0  # slower than the tuned fine-tuning
    (goal,) = poisoning.goals(summary)
    assert not goal.met and "missed: better than ft [tuned]" in goal.detail
    summary[2]["seconds"] = 2.0
    (goal,) = poisoning.goals([e for e in summary if e["method"] != "ft [tuned]"])
    assert not goal.met and "no ft [tuned] row" in goal.detail
    summary[2]["test_accuracy"] = 0.74  # restored 40 %
    (goal,) = poisoning.goals(summary)
    assert not goal.met and "restored 40%" in goal.detail
    (goal,) = poisoning.goals([e for e in summary if e["problem"] == r])
    assert not goal.met and "no targeted-flip problem" in goal.detail


def test_backdoor_goal_needs_attack_success_speed_and_accuracy():
    p = "fashion-mnist: 10% triggered"
    summary = [_entry(p, "original", attack_success=0.9, seconds=0.0),
               _entry(p, "retrain", attack_success=0.02, speedup=1.0, test_accuracy=0.80),
               _entry(p, "second-order [kfac]", attack_success=0.05, speedup=30.0, test_accuracy=0.795),
               _entry(p, "second-order", attack_success=0.0, speedup=3.0, test_accuracy=0.80, failed=3)]  # failed everywhere
    (goal,) = backdoor.goals(summary)
    assert goal.met and "best closed-form row: second-order [kfac]" in goal.detail
    summary[2]["test_accuracy"] = 0.78  # 2 points below retraining
    (goal,) = backdoor.goals(summary)
    assert not goal.met and "missed: test accuracy within 1 point" in goal.detail
    summary[2].update(test_accuracy=0.80, attack_success=0.15)  # 13 points above retraining
    (goal,) = backdoor.goals(summary)
    assert not goal.met and "attack success within 10 points" in goal.detail


def test_best_closed_form_prefers_a_row_that_passes_then_the_fastest():
    summary = [_entry("a", "first-order", speedup=30.0, x=1.0), _entry("a", "second-order [kfac]", speedup=60.0, x=1.0),
               _entry("a", "second-order", speedup=90.0, x=5.0), _entry("a", "sisa", speedup=900.0, x=1.0)]
    assert closed_form_labels(summary) == ["first-order", "second-order [kfac]", "second-order"]

    def judge(problem, e):
        return [within("x within 1", "x", e["x"], 1.0, 1.0)]

    verdict = best_closed_form(summary, ["a"], judge)
    assert verdict.met and verdict.label == "second-order [kfac]"  # both pass; the faster one
    summary[1]["x"] = summary[0]["x"] = 3.0
    verdict = best_closed_form(summary, ["a"], judge)
    # none passes: the smallest gap (1 bit beyond the tolerance, against second-order's 3), then the faster
    assert not verdict.met and verdict.label == "second-order [kfac]"
    assert math.isclose(verdict.checks["a"][0].gap, 1.0) and "missed: x within 1" in verdict.detail()


def test_a_goal_is_not_met_by_a_row_that_failed_on_one_seed_or_on_fewer_than_three_seeds():
    p = "fashion-mnist: 10% triggered"
    summary = [_entry(p, "original", attack_success=0.9, seconds=0.0),
               _entry(p, "retrain", attack_success=0.02, speedup=1.0, test_accuracy=0.80),
               _entry(p, "second-order [kfac]", attack_success=0.05, speedup=30.0, test_accuracy=0.795)]
    assert backdoor.goals(summary)[0].met
    summary[2]["failed"] = 1  # its mean is over the two seeds that worked: the failure must not hide behind it
    (goal,) = backdoor.goals(summary)
    assert not goal.met and "failed on 1 of 3 seeds" in goal.detail
    summary[2]["failed"] = 0
    for e in summary:
        e["runs"] = 1
    (goal,) = backdoor.goals(summary)
    assert not goal.met and "1 seed (a goal needs >= 3)" in goal.detail
