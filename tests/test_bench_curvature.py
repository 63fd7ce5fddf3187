"""benchmarks/bench_curvature.py, part ``deep``: a tiny run writes every field, finite (no timing checks)."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
TINY = ["--part", "deep", "--sizes", "200", "--epochs", "1", "--reps", "1", "--threads", "1",
        "--ihvp-rows", "40", "--ihvp-rhs", "1", "--cg-max-iter", "30"]
METHODS = ["retrain", "original (do nothing)", "second-order kfac (cached)", "second-order ekfac (cached)",
           "second-order ekfac (cached, no val)", "second-order ekfac (cached, 5 chunks)",
           "second-order ggn-cg (old rule, guard off)", "second-order ggn-cg (old rule, guarded)"]

pytestmark = pytest.mark.skipif(not os.path.isdir(FASHION_ROOT),
                                reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the deep part imports its sibling bench_methods (the recipe)
    return importlib.import_module("bench_curvature")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_deep_part_writes_every_field_and_keeps_the_convex_entry(bench, tmp_path):
    out = tmp_path / "curvature.json"
    out.write_text(json.dumps({"convex": {"kept": True}}))
    result = bench.main(TINY + ["--out", str(out)])

    written = json.loads(out.read_text())
    assert written["convex"] == {"kept": True}  # the other part's entry is left alone
    assert written["deep"] == json.loads(json.dumps(result))
    assert result["recipe"]["epochs"] == 1 and result["quick"] is False
    (case,) = result["cases"]
    assert case["n"] == 200 and 1 <= case["k"] <= 20 and case["epochs"] == 1
    assert case["flip"]["source"] != case["flip"]["target"]
    for key in ("acc_clean_retrained", "acc_poisoned", "accuracy_drop", "epoch_seconds", "train_seconds_poisoned"):
        assert finite(case[key]), key
    assert case["accuracy_drop"] == pytest.approx(case["acc_clean_retrained"] - case["acc_poisoned"])

    assert set(case["fits"]) == {"kfac", "ekfac"}
    for fit in case["fits"].values():
        assert finite(fit["seconds"]) and fit["seconds"] > 0 and finite(fit["epochs"])
        assert fit["n_params"] > 0 and fit["layers"]

    rows = {r["method"]: r for r in case["rows"]}
    assert list(rows) == METHODS
    for name, r in rows.items():
        assert finite(r["seconds"]) and 0 <= r["acc_test"] <= 1, name
        if name.startswith("second-order"):
            assert finite(r["speedup_one_shot"]) and finite(r["speedup_amortised"]), name
            assert r["speedup_one_shot"] <= r["speedup_amortised"], name
            assert r["status"] in ("accepted", "backtracked", "rejected", "unguarded"), name
            if case["accuracy_drop"] != 0:
                assert finite(r["restored_share"]), name
    assert rows["second-order ggn-cg (old rule, guard off)"]["status"] == "unguarded"
    assert rows["second-order ggn-cg (old rule, guarded)"]["status"] != "unguarded"
    for kind in ("kfac", "ekfac"):
        r = rows[f"second-order {kind} (cached)"]
        assert r["fit_seconds"] == case["fits"][kind]["seconds"]

    assert case["ihvp"]
    for check in case["ihvp"]:
        assert check["damping_of"] and finite(check["damping"]) and check["rows"] == 40
        assert set(check["relative_error"]) == {"kfac", "ekfac", "diagonal"}
        for err in check["relative_error"].values():
            assert len(err["all"]) == 1 and all(finite(e) and e >= 0 for e in err["all"])
        assert len(check["cg"]["solves"]) == 1
    goals = case["goals"]
    assert set(goals) == {"cached_20x_retrain_amortised", "fit_kfac_at_most_one_epoch", "fit_ekfac_at_most_one_epoch"}
    assert all(finite(g["value"]) and isinstance(g["met"], bool) for g in goals.values())
    assert set(result["summary"]["200"]) == {m for m in METHODS if m.startswith("second-order")}
