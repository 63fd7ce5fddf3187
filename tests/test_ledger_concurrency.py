"""Several processes on one ledger: writers serialised, readers harmless, a killed writer harmless.

N writer processes each apply M requests (each with a unique reason, acknowledged on stdout
only after ``apply`` returned) while reader processes open the ledger, list its history, export
it and verify it; one writer is killed with SIGKILL at a random moment. Afterwards the ledger
verifies with replay, every acknowledged request is recorded exactly once, the request that was
in flight when the kill landed at most once, and the current model file is there. Sized to run
in well under a minute on two cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import unlearnkit as uk
from unlearnkit.influence.certified import CertifiedSpec
from unlearnkit.ledger import Ledger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIX = """
import os, sys
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np
import torch
torch.set_num_threads(1)
import unlearnkit as uk
from unlearnkit.ledger import Ledger
path, name, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(seed)
"""

WRITER = """
led = Ledger(path)
n = 120
for j in range(count):
    row = int(rng.integers(0, n))
    if j % 3 == 2:
        changes = uk.Changes.zero_features([int(rng.integers(0, 3))], rows=[row])
    else:
        changes = uk.Changes.relabel([row], [int(rng.integers(0, 2))])
    print(f"start {name}-{j}", flush=True)
    led.apply(changes, reason=f"{name}-{j}")
    print(f"ack {name}-{j}", flush=True)
"""

READER = """
import time
for j in range(count):
    led = Ledger(path)
    what = int(rng.integers(0, 4))
    if what == 0:
        seqs = [e["seq"] for e in led.history()]
        assert seqs == list(range(len(seqs))), seqs
    elif what == 1:
        report = led.verify(replay=bool(rng.integers(0, 2)))
        if not report.ok:
            print("PROBLEM", report.problems, flush=True)
            sys.exit(3)
    elif what == 2:
        doc = led.export()
        assert doc["current"]["entry"] == doc["entries"][-1]["seq"]  # one consistent state
    else:
        led.head()
    print(f"read {name}-{j}", flush=True)
"""


def spawn(script: str, path: Path, name: str, seed: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREFIX + textwrap.dedent(script), str(path), name, str(seed), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def small_data(n: int = 120, d: int = 3) -> uk.Dataset:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1).max()
    y = (X @ rng.normal(size=d) * 4 + rng.logistic(size=n) > 0).astype(int)
    return uk.Dataset(X, y, name="small")


def test_writers_readers_and_a_kill(tmp_path):
    path = tmp_path / "ledger"
    Ledger.create(path, small_data(), model=uk.models.LogisticRegression(n_features=3, l2=1.0),
                  spec=CertifiedSpec(epsilon=1e6, sigma=1.0), seed=0)
    rng = np.random.default_rng(1)
    n_writers, per_writer = 3, 6
    writers = [spawn(WRITER, path, f"w{i}", 10 + i, per_writer) for i in range(n_writers)]
    readers = [spawn(READER, path, f"r{i}", 20 + i, 10) for i in range(2)]
    victim = writers[0]
    # kill the victim at a random point after its first acknowledged request
    acked_before_kill = []
    while True:
        line = victim.stdout.readline()
        assert line, victim.stderr.read()
        if line.startswith("ack"):
            acked_before_kill.append(line.split()[1])
            break
    stop_after = int(rng.integers(0, per_writer - 3))
    for _ in range(2 * stop_after):  # "start" and "ack" lines of a few more requests
        line = victim.stdout.readline()
        if line.startswith("ack"):
            acked_before_kill.append(line.split()[1])
    os.kill(victim.pid, signal.SIGKILL)
    rest, _ = victim.communicate(timeout=120)
    assert victim.returncode in (-signal.SIGKILL, 0)  # 0 only if it finished its last requests before the kill
    acked = set(acked_before_kill) | {ln.split()[1] for ln in rest.splitlines() if ln.startswith("ack")}
    started = {ln.split()[1] for ln in rest.splitlines() if ln.startswith("start")} | set(acked_before_kill)
    in_flight = started - acked

    for proc in writers[1:] + readers:
        out, errs = proc.communicate(timeout=240)
        assert proc.returncode == 0, (out[-2000:], errs[-4000:])
        acked |= {ln.split()[1] for ln in out.splitlines() if ln.startswith("ack")}
    assert len(acked) >= 1 + 2 * per_writer  # the survivors finished every request

    led = Ledger(path)
    report = led.verify(replay=True)
    assert report.ok and report.replayed, report.problems
    history = led.history()
    assert [e["seq"] for e in history] == list(range(len(history)))
    counts = Counter(e["reason"] for e in history[1:])
    assert all(counts[r] == 1 for r in acked), {r: counts[r] for r in acked if counts[r] != 1}
    assert set(counts) <= acked | in_flight and all(c == 1 for c in counts.values()), counts
    assert led.model_file.is_file() and uk.load_model(led.model_file) is not None
    led.apply(uk.Changes.remove([0]), reason="after")  # a writer cleans up whatever the killed one left
    assert sorted(f.name for f in path.iterdir() if f.name.startswith(("model-", ".model-"))) == [led.model_file.name]
    assert Ledger(path).verify(replay=False).ok


def test_the_command_line_with_simultaneous_applies_and_a_history(tmp_path):
    """Two `ledger apply` and one `ledger history` at once (on unserialised writers this broke
    the ledger in the first round)."""
    path = tmp_path / "ledger"
    Ledger.create(path, small_data(), model=uk.models.LogisticRegression(n_features=3, l2=1.0),
                  spec=CertifiedSpec(epsilon=1e6, sigma=1.0), seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-c", "from unlearnkit.cli import main; main()"]
    procs = []
    for i in range(2):
        changes = tmp_path / f"c{i}.json"
        changes.write_text(uk.Changes.relabel([i], [i % 2]).to_json())
        procs.append(subprocess.Popen(cli + ["ledger", "apply", str(path), "--changes", str(changes), "--reason", f"cli-{i}"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    procs.append(subprocess.Popen(cli + ["ledger", "history", str(path), "--format", "json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    for proc in procs:
        out, errs = proc.communicate(timeout=240)
        assert proc.returncode == 0, (out[-2000:], errs[-4000:])
    led = Ledger(path)
    assert led.verify(replay=True).ok
    assert sorted(e["reason"] for e in led.history()[1:]) == ["cli-0", "cli-1"]
    assert led.model_file.is_file()
