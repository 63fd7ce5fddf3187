"""Timed regions start after a warm-up: a fresh process reports about what a warm one does."""

import json
import os
import subprocess
import sys

import torch

import unlearnkit as uk
from unlearnkit import timing
from unlearnkit.data import standardize
from unlearnkit.training import TrainConfig, train

CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
import unlearnkit as uk
model = uk.load_model(sys.argv[1])
data, = uk.data.standardize(uk.data.load("breast-cancer:train"))
changes = uk.Changes.zero_features([3])
seconds = [uk.unlearn(model, data, changes, method="second-order", check=False).seconds for _ in range(4)]
print(json.dumps({"seconds": seconds, "dynamo": "torch._dynamo" in sys.modules}))
"""


def test_timed_update_in_a_fresh_process_is_within_2x_of_the_warm_repeat(tmp_path):
    """The first ``seconds`` of a process (an MLP's guarded second-order update, ~0.1-0.3 s) is within 2x of the same
    call repeated: torch.func's lazy import (torch._dynamo, seconds) is paid by the warm-up, outside the timer."""
    torch.manual_seed(0)
    data, = standardize(uk.data.load("breast-cancer:train"))
    model = train(uk.models.for_data("mlp", data), data, config=TrainConfig(epochs=2, seed=0))
    path = tmp_path / "mlp.pt"
    uk.save_model(model, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    first, warm = report["seconds"][0], min(report["seconds"][1:])
    assert report["dynamo"]  # the update did use torch.func (whose first call imports torch._dynamo)
    assert first <= 2 * warm, report


def test_warm_up_runs_once_and_since_measures_from_start():
    timing.warm_up()
    assert timing._warmed
    begun = timing.start()
    elapsed = timing.since(begun)
    assert 0 <= elapsed < timing.since(begun)


def test_demo_states_the_machine_and_cpu_time():
    from unlearnkit import demo

    machine = demo.machine()
    assert machine["cpu"] and machine["cores"] >= 1 and 1 <= machine["usable_cores"] <= machine["cores"]
    assert machine["torch_threads"] == torch.get_num_threads() and machine["device"] == "cpu"


def test_warm_up_draws_no_random_numbers(monkeypatch):
    """A seeded run gives the same numbers whether or not the warm-up ran before it in the process."""
    import random

    import numpy as np

    monkeypatch.setattr(timing, "_warmed", False)  # a fresh process's first start()
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    timing.start()
    after_warm_up = (torch.rand(3), np.random.rand(), random.random())
    assert timing._warmed
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    assert torch.equal(after_warm_up[0], torch.rand(3))
    assert after_warm_up[1:] == (np.random.rand(), random.random())


def test_start_and_since_take_the_timed_device():
    begun = timing.start(torch.device("cpu"))
    assert 0 <= timing.since(begun, "cpu")
    assert timing._cuda_device("cpu") is None
    assert timing._cuda_device() is None or torch.cuda.is_initialized()
