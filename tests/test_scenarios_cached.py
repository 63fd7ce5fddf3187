"""The amortised second-order row of the sensitive-features scenario: a curvature fitted once per model, reused."""

from pathlib import Path

import pytest
import torch

import unlearnkit.curvature
from unlearnkit import methods, scenarios
from unlearnkit.data.changes import Changes
from unlearnkit.errors import ModelError
from unlearnkit.models import MLP, LogisticRegression
from unlearnkit.scenarios import compare as compare_module
from unlearnkit.scenarios import features, rules
from unlearnkit.scenarios.compare import CurvatureCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORTUNES = Path("/usr/share/games/fortunes")


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed (apt-get install -y fortunes)")
def test_cached_row_fits_the_curvature_once_per_model_and_every_request_reuses_it(tmp_path, monkeypatch):
    fits, given = [], []
    fit = unlearnkit.curvature.fit
    make = compare_module.methods.make

    def counting_fit(model, data, **kwargs):
        fitted = fit(model, data, **kwargs)
        fits.append((id(model), id(data), id(fitted)))
        return fitted

    def recording_make(name, **hyperparameters):
        if not isinstance(hyperparameters.get("curvature", "auto"), str):
            given.append(id(hyperparameters["curvature"]))
        return make(name, **hyperparameters)

    monkeypatch.setattr(unlearnkit.curvature, "fit", counting_fit)
    monkeypatch.setattr(compare_module.methods, "make", recording_make)
    result = scenarios.run("sensitive-features", size="tiny", out=tmp_path, baselines=())

    rows = {(r.problem, r.method): r for r in result.rows}
    problems = list(dict.fromkeys(r.problem for r in result.rows))
    cached = {p: rows[(p, rules.CACHED)] for p in problems}  # a cached row for every problem
    ran = {p: r for p, r in cached.items() if r.status == "ok"}
    for problem, row in cached.items():
        if row.status != "ok":  # only a model too large for a dense factor is left out, and the row says why
            assert row.status.startswith("not run:") and "parameters >" in row.status, problem
            assert result.problems[problem]["parameters"] > rules.CACHED_MAX_PARAMS, problem
    assert len(ran) >= 5  # breast cancer (2), wine (2), synthetic (1)

    # one fit per model: the problems of one data set share their model and its curvature
    assert len(fits) == len({(m, d) for m, d, _ in fits}) == 3  # breast cancer, wine, synthetic: one model each
    # every cached request got one of the fitted curvatures, and each was reused by its model's problems
    assert len(given) == len(ran) and set(given) <= {f for _, _, f in fits}
    assert sorted(given.count(f) for _, _, f in fits) == [1, 2, 2]

    for problem, row in ran.items():
        one_shot, original = rows[(problem, "second-order")], rows[(problem, "original")]
        # the same step as the one-shot row (exact Hessian of the corrected objective, Woodbury-updated here)
        assert row.test_accuracy == one_shot.test_accuracy, problem
        assert row.distance == pytest.approx(one_shot.distance, rel=1e-6, abs=1e-9), problem
        assert row.efficacy["residual"] == pytest.approx(one_shot.efficacy["residual"], rel=1e-5, abs=1e-8), problem
        # beats doing nothing on the scenario's efficacy measure (the gradient the change left)
        assert row.efficacy["residual"] < 0.5 * original.efficacy["residual"], problem
        # amortised and one-shot cost reported separately; the fit is the one of its model
        assert row.fit_seconds > 0 and row.one_shot_seconds == pytest.approx(row.fit_seconds + row.seconds)
        assert row.one_shot_speedup < row.speedup
    shared = [cached[p].fit_seconds for p in ran if p.startswith("breast-cancer")]
    assert len(shared) == 2 and shared[0] == shared[1]

    md = (tmp_path / "sensitive-features.md").read_text()
    assert f"| {rules.CACHED} |" in md and "| fit s | one-shot |" in md and "A `[cached]` row is amortised" in md


def test_one_fitted_curvature_serves_several_requests_exactly():
    torch.manual_seed(0)
    problems = features.tabular_problems(features.SIZES["tiny"], 0, None)[:2]  # breast cancer: 1 and 5 columns
    model, data = problems[0].model, problems[0].train
    assert problems[1].model is model
    cache = CurvatureCache()
    for problem in problems:
        curvature, seconds = cache.get(model, data, "exact")
        assert cache.fits == 1 and seconds > 0
        fresh = methods.make("second-order", guard=False).unlearn(model, data, problem.changes)
        reused = methods.make("second-order", guard=False, curvature=curvature).unlearn(model, data, problem.changes)
        assert torch.allclose(_flat(reused.model), _flat(fresh.model), rtol=0, atol=1e-10)
    assert cache.get(model, data, "exact")[0] is curvature  # a request never changes the cached curvature


def test_cached_strategy_rule():
    small = LogisticRegression(n_features=4, n_classes=3)
    strategy = rules.cached_second_order_strategy(small)
    assert strategy.curvature == "exact" and strategy.skip is None and strategy.hyperparameters == {"guard": False}
    large = LogisticRegression(n_features=rules.CACHED_MAX_PARAMS, n_classes=2)
    assert "parameters >" in rules.cached_second_order_strategy(large).skip
    with pytest.raises(ModelError, match="convex"):
        rules.cached_second_order_strategy(MLP(n_features=4, n_classes=3))
    labels = [s.label for s in features.strategies(small, *_tiny_data())]
    assert labels[labels.index("second-order") + 1] == rules.CACHED


def _tiny_data():
    from unlearnkit.data.synthetic import make_classification

    data = make_classification(40, 4, n_classes=3, seed=0)
    return data, Changes.zero_features([1])
