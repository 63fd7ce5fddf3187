"""benchmarks/bench_wrap.py: a tiny run writes every field, and the equal-outputs check holds (no timing checks)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
TINY = ["--quick", "--threads", "1", "--repeats", "1", "--cnn-rows", "300", "--grad-rows", "8", "--hvp-rows", "32",
        "--vit-rows", "300", "--vit-epochs", "1"]

pytestmark = pytest.mark.skipif(not os.path.isdir(FASHION_ROOT),
                                reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling bench_methods
    return importlib.import_module("bench_wrap")


def check_meta_and_overhead(report: dict, out: Path) -> None:
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    meta = report["meta"]
    assert meta["command"].startswith("python benchmarks/bench_wrap.py --quick")
    assert meta["threads"] == 1 and meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["cpu_count"] >= 1 and meta["quick"] is True
    assert report["settings"]["repeats"] == 1 and report["settings"]["cnn_rows"] == 300

    overhead = report["overhead"]
    assert overhead["goal"] == pytest.approx(0.10)
    ops = [r["operation"] for r in overhead["operations"]]
    assert ops == ["per-sample-gradients", "ggn-product", "hvp", "method:second-order", "method:ft", "method:scrub"]
    assert overhead["outputs_equal"] is True
    for r in overhead["operations"]:
        assert r["outputs_equal"] and r["identical"] and r["max_abs_diff"] == 0.0, r["operation"]
        assert len(r["zoo_seconds"]) == len(r["wrapped_seconds"]) == 1
        assert r["ratio"] == pytest.approx(r["wrapped_median"] / r["zoo_median"])
        assert r["meets_goal"] == (r["ratio"] <= 1.10)
    assert overhead["all_meet_goal"] == all(r["meets_goal"] for r in overhead["operations"])


def test_overhead_part_writes_every_field_and_equal_outputs(bench, tmp_path, capsys):
    out = tmp_path / "wrap.json"
    report = bench.main(TINY + ["--skip-vit", "--out", str(out)])
    check_meta_and_overhead(report, out)
    assert report["vit"] is None
    assert "wrapper overhead" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_run_writes_every_field(bench, tmp_path):
    out = tmp_path / "wrap.json"
    report = bench.main(TINY + ["--out", str(out)])
    check_meta_and_overhead(report, out)
    vit = report["vit"]
    rows = {r["method"]: r for r in vit["records"]}
    assert list(rows) == ["original", "retrained", "second-order", "ft", "scrub", "msg"]
    assert rows["retrained"]["retdev"] == 0.0 and rows["retrained"]["rte"] == 1.0
    for name in ("second-order", "ft", "scrub", "msg"):
        r = rows[name]
        assert r["rte"] == pytest.approx(vit["retrain_seconds"] / r["seconds"])
        assert r["retdev"] >= 0 and all(0 <= r[f"accuracy_{s}"] <= 1 for s in ("forget", "retain", "test"))
    assert rows["second-order"]["hyperparameters"] == {"params": "head"}
    assert vit["split"]["forget"] > 0 and vit["model_config"]["dim"] == 32


def test_different_weights_stop_the_benchmark(bench, monkeypatch, tmp_path):
    """The equal-work check is live: a wrapped CNN with other weights is refused before any timing."""
    pair = bench.cnn_pair

    def perturbed(*args, **kwargs):
        zoo, wrapped = pair(*args, **kwargs)
        with torch.no_grad():
            wrapped.module.classifier[-1].bias[0] += 0.01  # one class: a shift of every logit would not show
        return zoo, wrapped

    monkeypatch.setattr(bench, "cnn_pair", perturbed)
    monkeypatch.setattr(bench, "interleaved", lambda *a, **k: pytest.fail("timed before the outputs were compared"))
    with pytest.raises(SystemExit, match="per-sample-gradients: the zoo and the wrapped CNN gave different outputs"):
        bench.main(TINY + ["--skip-vit", "--out", str(tmp_path / "wrap.json")])
    assert not (tmp_path / "wrap.json").exists()


def test_compare_is_exact_on_the_cpu(bench):
    a = torch.tensor([1.0, 2.0, 3.0])
    cpu = torch.device("cpu")
    assert bench.compare(a, a.clone(), cpu) == {"outputs_equal": True, "identical": True, "max_abs_diff": 0.0}
    near = bench.compare(a, a + 1e-6 * torch.tensor([0.0, 0.0, 1.0]), cpu)
    assert not near["outputs_equal"] and not near["identical"] and near["max_abs_diff"] > 0
    assert not bench.compare(a, a[:2], cpu)["outputs_equal"]
