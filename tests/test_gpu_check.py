"""benchmarks/gpu_check.sh: the driver's JSON and budget handling, in its CPU dry-run mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(tmp_path: Path, *args: str, budget: str = "90") -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run", "--budget", budget, "--out", str(out),
                           "--reports", str(tmp_path / "reports"), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_dry_run_records_machine_seconds_and_no_sync_on_cpu(tmp_path):
    proc, report = _run(tmp_path, "--only", "sensitive-features", "--estimates", str(tmp_path / "none.json"))
    assert "== machine" in proc.stdout and "CUDA available False" in proc.stdout
    assert report["finished"] is True
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    assert report["size"] == "tiny" and report["synchronised"] is False
    assert report["estimates"]["source"] is None  # no recorded times: the scenario runs without an estimate
    entry = report["scenarios"]["sensitive-features"]
    assert entry["status"] == "ok" and entry["seconds"] > 0
    assert entry["sync_calls"] == 0 and entry["max_memory_allocated_bytes"] is None
    methods = {r["method"] for r in entry["rows"]}
    assert {"original", "retrain", "second-order"} <= methods
    retrain = next(r for r in entry["rows"] if r["method"] == "retrain")
    assert retrain["seconds"] > 0 and retrain["speedup"] == 1.0
    assert Path(entry["report"]).is_file()


def test_scenario_expected_to_exceed_the_budget_is_skipped_with_the_reason(tmp_path):
    estimates = tmp_path / "scenarios.json"
    # three seeds' runs merged: 1,500 s in all, 500 s for the one seed this check runs
    estimates.write_text(json.dumps({"sensitive-features": {"size": "tiny", "seconds": 1500.0, "seeds": [0, 1, 2]},
                                     "canary": {"size": "full", "seconds": 1.0}}))  # another size: not used
    # a budget the installation step cannot use up on a busy machine, still short of the 500 s expected
    _, report = _run(tmp_path, "--only", "sensitive-features", "--estimates", str(estimates), budget="400")
    assert report["estimates"]["recorded_cpu_seconds"] == {"sensitive-features": 500.0}
    entry = report["scenarios"]["sensitive-features"]
    assert entry["status"] == "skipped" and "seconds" not in entry
    assert entry["expected_seconds"] == 500.0 and entry["budget_left_seconds"] < 400
    assert "expected 500 s" in entry["reason"] and "budget left" in entry["reason"]
    assert report["finished"] is True


def test_sync_counter_sees_the_library_timers_synchronise(monkeypatch):
    """On CUDA the driver's ``sync_calls`` counts the synchronisations of unlearnkit.timing's timed regions."""
    import importlib.util

    import torch

    from unlearnkit import timing

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    seen = []

    def fake_synchronize(device=None):  # no GPU needed
        seen.append(device)

    monkeypatch.setattr(torch.cuda, "synchronize", fake_synchronize)
    monkeypatch.setattr(timing, "_cuda_device", lambda device=None: "cuda:0")  # as if the run were on CUDA
    monkeypatch.setattr(timing, "warm_up", lambda device=None: None)  # its CUDA warm-up needs a GPU
    with gpu_check.counting_syncs(torch) as calls:
        timing.since(timing.start("cuda"), "cuda")
    assert calls[0] == 2 and seen == ["cuda:0", "cuda:0"]
    assert torch.cuda.synchronize is fake_synchronize  # the counter is removed on exit
    with gpu_check.counting_syncs(torch) as calls:
        torch.cuda.synchronize()
    assert calls[0] == 1 and len(seen) == 3
