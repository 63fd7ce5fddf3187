"""benchmarks/curvature_latency.py: a tiny run returns and writes a complete, self-describing record
(no timing checks), and writes only where ``--out`` says."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("curvature_latency")


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_a_tiny_run_records_every_field(bench, tmp_path):
    out = tmp_path / "latency.json"
    results = BENCHMARKS / "results"
    before = sorted(p.name for p in results.iterdir()) if results.is_dir() else []
    result = bench.main(["--sizes", "200", "400", "--ks", "1", "3", "--reps", "2", "--threads", "1",
                         "--workdir", str(tmp_path), "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # JSON-ready, and what was written
    assert (sorted(p.name for p in results.iterdir()) if results.is_dir() else []) == before
    assert [p.name for p in tmp_path.iterdir()] == ["latency.json"]  # the ledgers were removed
    assert [(r["n"], r["k"]) for r in result["rows"]] == [(200, 1), (200, 3), (400, 1), (400, 3)]
    for r in result["rows"]:
        assert r["reps"] == 2 and r["requests_timed"] + r["retrained"] <= 3
        for key in ("commit_floor_seconds", "compute_floor_seconds", "durable_floor_seconds"):
            assert positive(r[key]), (key, r)
        assert r["durable_floor_seconds"] == r["commit_floor_seconds"] + r["compute_floor_seconds"]
        if r["requests_timed"]:
            assert positive(r["ledger_seconds"]) and r["ratio"] == r["ledger_seconds"] / r["durable_floor_seconds"]
            assert r["goal_met"] == (r["ratio"] <= result["goals"]["ratio_at_most"])
    assert set(result["flat_in_n"]) <= {"1", "3"}
    for flat in result["flat_in_n"].values():
        assert (flat["n_min"], flat["n_max"]) == (200, 400) and flat["flat"] == (flat["growth"] <= 1.5)
    assert result["settings"]["journal_mode"] == ["delete"] and result["threads"] == 1
    assert result["machine"]["torch_threads"] == 1 and set(result["create_seconds"]) == {"200", "400"}
    memory = result["in_memory"]  # the in-memory cached path (it checks itself against its floor to 1e-8)
    assert [(r["n"], r["k"]) for r in memory["rows"]] == [(200, 1), (200, 3), (400, 1), (400, 3)]
    for r in memory["rows"]:
        assert positive(r["request_seconds"]) and positive(r["compute_floor_seconds"]) and len(r["request_all_seconds"]) == 2
        assert r["ratio"] == r["request_seconds"] / r["compute_floor_seconds"]
        assert r["goal_met"] == (r["ratio"] <= memory["goals"]["ratio_at_most"])


def test_the_compute_floor_is_the_ledgers_update(bench, tmp_path):
    """The numpy update the floor times gives the parameters the ledger records (same request)."""
    import numpy as np

    import unlearnkit as uk
    from unlearnkit.influence.certified import CertifiedSpec
    from unlearnkit.influence.functional import FlatModel
    from unlearnkit.ledger import Ledger
    from unlearnkit.models import LogisticRegression

    data = bench.planted_data(300, 5, 0)
    led = Ledger.create(tmp_path / "ledger", data, model=LogisticRegression(n_features=5, l2=1.0),
                        spec=CertifiedSpec(**bench.SPEC), seed=0)
    floor = bench.ComputeFloor(led)
    ids = data.ids[[4, 17, 250]]
    old = data.y[[4, 17, 250]].astype(float)
    floor.update(ids, old, 1 - old)
    led.apply(uk.Changes.relabel(ids, (1 - old).astype(int)))
    got = FlatModel(led.certified.model).theta().detach().numpy()
    assert np.allclose(floor.last_theta, got, rtol=0, atol=1e-12)
