"""The ledger: a persistent, verifiable, crash-safe record of certified unlearning requests.

Crash tests run the ledger in a subprocess and kill it with SIGKILL at chosen points (inside the
SQLite transaction, after the commit, at random times), then reopen it here.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import ChangesError, LedgerError
from unlearnkit.influence.certified import CertifiedSpec
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual
from unlearnkit.ledger import Ledger, parameter_hash

SPEC = CertifiedSpec(epsilon=1e6, sigma=1.0)  # a budget that never runs out, noise of unit size


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: threading costs more than it saves


def small_data(n: int = 50, d: int = 3, seed: int = 0) -> uk.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1).max()
    y = (X @ rng.normal(size=d) * 4 + rng.logistic(size=n) > 0).astype(int)
    return uk.Dataset(X, y, name="small")


def make_ledger(path: Path, spec: CertifiedSpec = SPEC, data: uk.Dataset | None = None) -> Ledger:
    data = small_data() if data is None else data
    return Ledger.create(path, data, model=uk.models.LogisticRegression(n_features=data.n_features, l2=1.0), spec=spec)


def theta_and_b(model) -> tuple[torch.Tensor, torch.Tensor]:
    return FlatModel(model).theta(), model.perturbation.detach().clone()


def model_files(path: Path) -> list[str]:
    return sorted(f.name for f in path.iterdir() if f.name.startswith(("model-", ".model-")))


def assert_consistent(path: Path) -> Ledger:
    """Reopen, verify with replay, and check the entries and files are what a clean ledger has."""
    led = Ledger(path)
    report = led.verify(replay=True)
    assert report.ok and report.replayed, report.problems
    seqs = [e["seq"] for e in led.history()]
    assert seqs == list(range(len(seqs))) and seqs[-1] == led.seq
    assert model_files(path) == [f"model-{led.seq:06d}.pt"]  # no orphans, no temporary files
    assert parameter_hash(uk.load_model(led.model_file)) == led.last["params_after"]
    return led


# ---------------------------------------------------------------------------- round trip
def test_create_apply_history_export_and_reopen(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    led = make_ledger(path, data=data)
    assert led.seq == 0 and model_files(path) == ["model-000000.pt"]
    requests = [
        (uk.Changes.relabel([3], [1 - int(data.y[3])]), "label fix"),
        (uk.Changes.remove([7, 8]), "gdpr"),
        (uk.Changes.zero_features([1], rows=[10, 11]), "feature leak"),
    ]
    results = [led.apply(ch, reason=r, exact_residual=True) for ch, r in requests]
    led.refine(reason="tighten")
    assert led.seq == 4 and model_files(path) == ["model-000004.pt"]

    history = led.history()
    assert [e["seq"] for e in history] == [0, 1, 2, 3, 4]
    assert [e["kind"] for e in history] == ["train", "unlearn", "unlearn", "unlearn", "refine"]
    assert [e["reason"] for e in history] == ["initial training", "label fix", "gdpr", "feature leak", "tighten"]
    for e, (ch, _), res in zip(history[1:4], requests, results):
        assert uk.Changes.from_json(e["changes"]) == ch
        assert e["exact_residual"] == res.certificate.exact_residual
        assert e["cumulative_bound"] == res.certificate.cumulative_bound
        assert e["certificate"]["cumulative_bound"] == res.certificate.cumulative_bound
        assert e["params_after"] == parameter_hash(res.model)
    bounds = [e["cumulative_bound"] for e in history[:4]]
    assert bounds == sorted(bounds)  # requests only add to the bound
    for prev, e in zip(history, history[1:]):
        assert e["prev_hash"] == prev["entry_hash"] and e["params_before"] == prev["params_after"]
    # the refined model is at the optimum of the corrected data
    corrected = requests[2][0].apply(requests[1][0].apply(requests[0][0].apply(data)))
    assert gradient_residual(FlatModel(led.model), corrected) == pytest.approx(led.certificate().cumulative_bound, rel=1e-6)

    cert, seq, (theta, b) = led.certificate(), led.seq, theta_and_b(led.model)
    again = Ledger(path)
    assert again.seq == seq and again.certificate() == cert
    theta2, b2 = theta_and_b(again.model)
    assert torch.equal(theta2, theta) and torch.equal(b2, b)
    theta3, b3 = theta_and_b(uk.load_model(again.model_file))
    assert torch.equal(theta3, theta) and torch.equal(b3, b)
    assert again.history() == history

    out = tmp_path / "export.json"
    exported = again.export(out)
    on_disk = json.loads(out.read_text())
    for doc in (exported, on_disk):
        assert [e["seq"] for e in doc["entries"]] == [0, 1, 2, 3, 4]
        assert [e["entry_hash"] for e in doc["entries"]] == [e["entry_hash"] for e in history]
        assert doc["current"]["entry"] == 4 and doc["current"]["params_hash"] == history[-1]["params_after"]
        assert doc["current"]["certificate"]["cumulative_bound"] == cert.cumulative_bound
    assert on_disk["entries"][2]["changes"] == history[2]["changes"]
    assert assert_consistent(path).seq == 4


# ---------------------------------------------------------------------------- composition
def test_requests_compose_and_removed_rows_are_refused(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    led = make_ledger(path, data=data)
    y3 = int(data.y[3])
    c1 = uk.Changes.relabel([3], [1 - y3])
    c2 = uk.Changes.relabel([3], [y3])  # and back again
    c3 = uk.Changes.remove([5])
    for ch in (c1, c2, c3):
        led.apply(ch)
    expected = c3.apply(c2.apply(c1.apply(data)))
    for rows in (led.certified.rows.full(), Ledger(path).certified.rows.full()):
        np.testing.assert_array_equal(rows.ids, expected.ids)
        np.testing.assert_array_equal(rows.y, expected.y)
        np.testing.assert_array_equal(rows.X.reshape(len(rows), -1), expected.X)
        assert 5 not in rows.ids.tolist() and len(rows) == len(data) - 1
    assert int(led.certified.rows.full().y[3]) == y3

    seq, cert, theta = led.seq, led.certificate(), FlatModel(led.model).theta()
    db_bytes = (path / "ledger.sqlite").read_bytes()
    for bad in (uk.Changes.remove([5]), uk.Changes.relabel([5], [0]), uk.Changes.relabel([4], [0]) + uk.Changes.remove([5]),
                uk.Changes.zero_features([0], rows=[5])):
        with pytest.raises(ChangesError, match="removed"):
            led.apply(bad)
        assert led.seq == seq and led.certificate() == cert
        assert torch.equal(FlatModel(led.model).theta(), theta)
    assert (path / "ledger.sqlite").read_bytes() == db_bytes
    with pytest.raises(ChangesError, match="not in the ledger's training data"):
        led.apply(uk.Changes.relabel([500], [0]))
    assert assert_consistent(path).seq == seq
    led.apply(uk.Changes.relabel([4], [1 - int(data.y[4])]))  # still usable
    assert led.seq == seq + 1


# ---------------------------------------------------------------------------- crashes
CRASH_PREFIX = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import unlearnkit as uk
from unlearnkit.ledger import Ledger
path = sys.argv[1]
"""


def run_and_crash(script: str, path: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", CRASH_PREFIX + textwrap.dedent(script), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_kill_inside_the_transaction_leaves_the_old_state(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    led = make_ledger(path, data=data)
    led.apply(uk.Changes.relabel([1], [1 - int(data.y[1])]))
    reference = tmp_path / "reference"
    shutil.copytree(path, reference)
    old_model = (path / "model-000001.pt").read_bytes()
    old_db = (path / "ledger.sqlite").read_bytes()
    request = uk.Changes.relabel([2], [1 - int(data.y[2])]) + uk.Changes.remove([9])

    run_and_crash(f"""
        led = Ledger(path)
        original = Ledger._write_entry
        def write_then_die(self, *args, **kwargs):
            original(self, *args, **kwargs)  # the inserts happen; the COMMIT never does
            os.kill(os.getpid(), signal.SIGKILL)
        Ledger._write_entry = write_then_die
        led.apply(uk.Changes.from_json({request.to_json()!r}), reason="crash")
    """, path)
    # the crash left an unreferenced new model file and a rollback journal behind (SQLite
    # journals pages before changing them; the uncommitted ones never reached the database)
    assert (path / "model-000002.pt").exists()
    assert (path / "ledger.sqlite-journal").exists()

    again = assert_consistent(path)  # the old state, cleaned up
    assert again.seq == 1
    assert (path / "model-000001.pt").read_bytes() == old_model
    assert (path / "ledger.sqlite").read_bytes() == old_db
    assert [e["seq"] for e in again.history()] == [0, 1]
    # the same request now goes through, exactly as on an uncrashed copy
    got = again.apply(request, reason="crash")
    want = Ledger(reference).apply(request, reason="crash")
    assert again.seq == 2 and parameter_hash(got.model) == parameter_hash(want.model)
    assert again.certified.rows.full().ids.tolist() == Ledger(reference).certified.rows.full().ids.tolist()
    assert not (path / "ledger.sqlite-journal").exists()  # the next commit replaced the stale journal
    assert_consistent(path)


def test_kill_after_the_commit_keeps_the_request(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    make_ledger(path, data=data)
    request = uk.Changes.relabel([2], [1 - int(data.y[2])])

    run_and_crash(f"""
        led = Ledger(path)  # opening runs the clean-up too: patch it only now
        def die(self):
            os.kill(os.getpid(), signal.SIGKILL)
        Ledger._cleanup_files = die
        led.apply(uk.Changes.from_json({request.to_json()!r}), reason="committed")
    """, path)
    assert model_files(path) == ["model-000000.pt", "model-000001.pt"]  # the old file was not removed yet

    again = assert_consistent(path)  # opening removed the old model file
    assert again.seq == 1
    last = again.history()[-1]
    assert last["kind"] == "unlearn" and last["reason"] == "committed"
    assert uk.Changes.from_json(last["changes"]) == request
    assert int(again.certified.rows.full().y[2]) == 1 - int(data.y[2])


CHILD_LOOP = """
import numpy as np
led = Ledger(path)
n = len(led.certified.rows.full())
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(10_000):
    row = int(rng.integers(0, n))
    if i % 3 == 2:
        led.apply(uk.Changes.zero_features([int(rng.integers(0, 3))], rows=[row]), reason=f"loop {i}")
    else:
        led.apply(uk.Changes.relabel([row], [int(rng.integers(0, 2))]), reason=f"loop {i}")
    if i == 0:
        print("ready", flush=True)  # after the first request: torch's first-call overheads are behind us
"""


def test_random_kills_during_a_stream_of_requests(tmp_path):
    path = tmp_path / "ledger"
    make_ledger(path)
    rng = np.random.default_rng(0)
    seqs = [0]
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CRASH_PREFIX + CHILD_LOOP, str(path), str(attempt)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
            time.sleep(float(rng.uniform(0.01, 0.3)))
            proc.kill()
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        led = assert_consistent(path)
        assert led.seq >= seqs[-1]
        seqs.append(led.seq)
        led.apply(uk.Changes.relabel([0], [attempt % 2]), reason="after the crash")  # still usable
        seqs.append(led.seq)
    assert seqs[-1] > 10  # the kills did land in the middle of a stream of requests
    assert_consistent(path)


# ---------------------------------------------------------------------------- damaged databases
def _garbage_at(offset: int, size: int):
    def damage(db: Path) -> None:
        with open(db, "r+b") as fh:
            fh.seek(offset)
            fh.write(np.random.default_rng(offset).bytes(size))
    return damage


def _truncate_to(fraction: float):
    def damage(db: Path) -> None:
        with open(db, "r+b") as fh:
            fh.truncate(int(db.stat().st_size * fraction))
    return damage


def test_damaged_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    led.apply(uk.Changes.remove([2]))
    n_pages = (path / "ledger.sqlite").stat().st_size // 4096
    damages = {f"garbage over page {k + 1}": _garbage_at(k * 4096, 4096) for k in range(n_pages)}
    damages.update({"garbage header": _garbage_at(0, 100), "truncated to half": _truncate_to(0.5),
                    "truncated to 90%": _truncate_to(0.9), "empty": _truncate_to(0.0)})
    for name, damage in damages.items():
        copy = tmp_path / f"damaged-{name.replace(' ', '-').replace('%', '')}"
        shutil.copytree(path, copy)
        db = copy / "ledger.sqlite"
        damage(db)
        before = db.read_bytes()
        files_before = sorted(f.name for f in copy.iterdir())
        with pytest.raises(LedgerError, match=r"ledger\.sqlite|ledger database|integrity") as info:
            Ledger(copy)
        assert str(copy) in str(info.value), name
        assert db.read_bytes() == before, f"{name}: the database was modified by a failed open"
        assert sorted(f.name for f in copy.iterdir()) == files_before, name
        with pytest.raises(LedgerError, match="already exists"):
            Ledger.create(copy, small_data(), spec=SPEC)  # never silently recreated
        assert db.read_bytes() == before


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path, journal_mode):
    path = tmp_path / "not-a-ledger"
    path.mkdir()
    db = path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute("CREATE TABLE t (a INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(LedgerError, match="not a readable ledger database|not an unlearnkit ledger"):
        Ledger(path)
    assert db.read_bytes() == before  # "nothing was changed or reset", as the message says


def test_ledger_with_a_foreign_format_is_refused(tmp_path):
    path = tmp_path / "ledger"
    make_ledger(path)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'something.else/9' WHERE key = 'format'")
    conn.close()
    with pytest.raises(LedgerError, match="not an unlearnkit ledger"):
        Ledger(path)


# ---------------------------------------------------------------------------- budget exhaustion
def test_exhausted_budget_is_recorded_as_a_retraining(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    spec = CertifiedSpec(epsilon=1.0, delta=1e-4, budget=1e-4)
    led = make_ledger(path, spec=spec, data=data)
    seed_before = led.certified.state.noise_seed
    b_before = led.model.perturbation.clone()
    request = uk.Changes.relabel([4, 6], [1 - int(data.y[4]), 1 - int(data.y[6])]) + uk.Changes.remove([8])
    result = led.apply(request, reason="too big for the budget")
    assert result.method == "certified-retrain" and result.certificate.retrained

    entry = led.history()[-1]
    assert entry["seq"] == 1 and entry["kind"] == "retrain" and entry["reason"] == "too big for the budget"
    assert uk.Changes.from_json(entry["changes"]) == request
    assert "budget" in entry["details"]["retrained_because"]
    assert entry["details"]["noise_seed"] != seed_before
    assert entry["certificate"]["retrained"] is True
    assert entry["residual_bound"] > spec.budget
    assert not torch.equal(led.model.perturbation, b_before)
    corrected = request.apply(data)
    assert entry["cumulative_bound"] == pytest.approx(gradient_residual(FlatModel(led.model), corrected), rel=1e-9, abs=1e-14)
    assert entry["cumulative_bound"] <= spec.budget
    np.testing.assert_array_equal(led.certified.rows.full().y, corrected.y)
    assert assert_consistent(path).seq == 1


# ---------------------------------------------------------------------------- tampering
def test_verify_detects_an_edited_model_file_and_apply_refuses(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    assert led.verify().ok
    f = led.model_file
    model = uk.load_model(f)
    with torch.no_grad():
        model.linear.weight[0, 0] += 1e-3
    uk.save_model(model, f)
    edited = f.read_bytes()
    db = (path / "ledger.sqlite").read_bytes()

    report = led.verify()
    assert not report.ok and any("model file" in p and f.name in p for p in report.problems), report.problems
    assert not Ledger(path).verify(replay=False).ok
    with pytest.raises(LedgerError, match="modified outside the ledger"):
        led.apply(uk.Changes.relabel([2], [0]))
    assert led.seq == 1 and len(led.history()) == 2
    assert (path / "ledger.sqlite").read_bytes() == db
    assert f.read_bytes() == edited and model_files(path) == [f.name]  # nothing repaired or added


def test_verify_detects_an_edited_entry(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]), reason="original reason")
    led.apply(uk.Changes.remove([3]))
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("UPDATE entries SET reason = 'x' WHERE seq = 1")
    conn.close()
    report = Ledger(path).verify()
    assert not report.ok
    assert any(p.startswith("entry 1:") and "hash" in p for p in report.problems), report.problems


def test_verify_detects_edited_parameters(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    led.apply(uk.Changes.remove([3]))
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        theta = np.frombuffer(conn.execute("SELECT theta FROM params WHERE seq = 1").fetchone()[0], dtype=np.float64).copy()
        theta[0] += 1e-6
        conn.execute("UPDATE params SET theta = ? WHERE seq = 1", (theta.tobytes(),))
    conn.close()
    report = Ledger(path).verify()
    assert not report.ok and any("entry 1: stored parameters do not match" in p for p in report.problems), report.problems


def test_verify_detects_an_edited_overlay_and_curvature(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([3], [1 - int(led.certified.rows.current([3]).y[0])]))
    led.apply(uk.Changes.remove([5]))
    assert Ledger(path).verify(replay=False).ok
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("UPDATE overlay SET label = 1 - label WHERE id = 3")
    conn.close()
    report = Ledger(path).verify(replay=False)
    assert not report.ok and any("overlay" in p for p in report.problems), report.problems
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("UPDATE overlay SET label = 1 - label WHERE id = 3")  # undo
        blob = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()[0]
        state = torch.load(io.BytesIO(blob), weights_only=True)
        state["H"] = state["H"] * 1.5
        buf = io.BytesIO()
        torch.save(state, buf)
        conn.execute("UPDATE curvature SET blob = ? WHERE id = 1", (buf.getvalue(),))
    conn.close()
    report = Ledger(path).verify(replay=False)
    assert not report.ok and any("curvature" in p for p in report.problems), report.problems


def test_public_model_and_export_keep_the_noise_private(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([2]))
    public = led.public_model()
    assert public.linear_term() is None
    assert torch.equal(FlatModel(public).theta(), FlatModel(led.model).theta())
    exported = json.dumps(led.export())
    assert "noise_seed" not in exported


# ---------------------------------------------------------------------------- creation
def test_create_refuses_existing_or_non_empty_folders(tmp_path):
    data = small_data()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("hello")
    with pytest.raises(LedgerError, match="not empty"):
        Ledger.create(busy, data, spec=SPEC)
    assert sorted(f.name for f in busy.iterdir()) == ["notes.txt"]

    path = tmp_path / "ledger"
    make_ledger(path, data=data)
    before = {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(path, data, spec=SPEC)
    assert {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()} == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert Ledger.create(empty, data, spec=SPEC).seq == 0  # an existing empty folder is fine
    with pytest.raises(LedgerError, match="No ledger"):
        Ledger(tmp_path / "nowhere")
