"""The ledger: a persistent, verifiable, crash-safe record of certified unlearning requests.

Crash tests run the ledger in a subprocess and kill it with SIGKILL at chosen points (inside the
SQLite transaction, after the commit, at random times), then reopen it here.
"""

from __future__ import annotations

import io
import json
import os
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
    """Model and temporary files, each model file name without its writer token
    (``model-000003-0123456789abcdef.pt`` -> ``model-000003.pt``)."""
    import re

    return sorted(re.sub(r"^(model-\d+)-[0-9a-f]{16}(\.pt)$", r"\1\2", f.name)
                  for f in path.iterdir() if f.name.startswith(("model-", ".model-")))


def model_file(path: Path, seq: int) -> Path:
    """The model file of entry ``seq`` (whatever its writer token)."""
    found = sorted(path.glob(f"model-{seq:06d}-*.pt")) + sorted(path.glob(f"model-{seq:06d}.pt"))
    assert len(found) == 1, found
    return found[0]


def assert_consistent(path: Path, *, clean: bool = True) -> Ledger:
    """Reopen, verify with replay, and check the entries and files are what a clean ledger has.

    ``clean=False`` after a crash: files the crashed writer left (an unreferenced model file, a
    temporary file) stay until the next writer removes them; readers never delete anything.
    """
    before = model_files(path)
    led = Ledger(path)
    report = led.verify(replay=True)
    assert report.ok and report.replayed, report.problems
    seqs = [e["seq"] for e in led.history()]
    assert seqs == list(range(len(seqs))) and seqs[-1] == led.seq
    assert model_files(path) == before  # opening and verifying deleted nothing
    if clean:
        assert model_files(path) == [f"model-{led.seq:06d}.pt"]  # no orphans, no temporary files
    else:
        assert f"model-{led.seq:06d}.pt" in model_files(path)
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
    old_model = model_file(path, 1).read_bytes()
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
    assert model_file(path, 2).exists()
    assert (path / "ledger.sqlite-journal").exists()

    again = assert_consistent(path, clean=False)  # the old state; the orphan stays until the next writer
    assert again.seq == 1 and "model-000002.pt" in model_files(path)
    assert model_file(path, 1).read_bytes() == old_model
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
        led = Ledger(path)
        original = Ledger._cleanup_files
        def die(self):  # the writer cleans up before and after a request: die at the one after the commit
            if self.seq == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            original(self)
        Ledger._cleanup_files = die
        led.apply(uk.Changes.from_json({request.to_json()!r}), reason="committed")
    """, path)
    assert model_files(path) == ["model-000000.pt", "model-000001.pt"]  # the old file was not removed yet

    again = assert_consistent(path, clean=False)  # opening leaves the superseded file to the next writer
    assert again.seq == 1
    last = again.history()[-1]
    assert last["kind"] == "unlearn" and last["reason"] == "committed"
    assert uk.Changes.from_json(last["changes"]) == request
    assert int(again.certified.rows.full().y[2]) == 1 - int(data.y[2])
    again.apply(uk.Changes.remove([4]))  # the next writer removes the superseded file
    assert model_files(path) == ["model-000002.pt"]


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
        led = assert_consistent(path, clean=False)
        assert led.seq >= seqs[-1]
        seqs.append(led.seq)
        led.apply(uk.Changes.relabel([0], [attempt % 2]), reason="after the crash")  # still usable
        assert model_files(path) == [f"model-{led.seq:06d}.pt"]  # the writer removed the crashed one's files
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
    assert f.read_bytes() == edited and sorted(p.name for p in path.glob("*model-*")) == [f.name]  # nothing repaired or added


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


# ---------------------------------------------------------------------------- writers and readers
def test_a_stale_writer_applies_on_top_of_the_latest_entry(tmp_path):
    """Two handles opened at the same entry: the second writer starts from the first one's
    commit (the state is re-read under the writer lock) instead of overwriting and deleting the
    first one's model file."""
    path = tmp_path / "ledger"
    data = small_data()
    first, second = make_ledger(path, data=data), Ledger(path)
    first.apply(uk.Changes.relabel([3], [1 - int(data.y[3])]), reason="first")
    second.apply(uk.Changes.remove([7]), reason="second")
    assert second.seq == 2
    led = assert_consistent(path)
    assert [e["reason"] for e in led.history()] == ["initial training", "first", "second"]
    expected = uk.Changes.remove([7]).apply(uk.Changes.relabel([3], [1 - int(data.y[3])]).apply(data))
    np.testing.assert_array_equal(led.certified.rows.full().y, expected.y)
    first.apply(uk.Changes.remove([9]), reason="third")  # and the first handle catches up too
    assert first.seq == 3 and assert_consistent(path).seq == 3


def test_readers_never_delete_files(tmp_path):
    """Opening, history, verify, export and head leave every file alone: a new model file may
    belong to a writer that has not committed yet."""
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    in_flight = path / "model-000002.pt"  # what a writer in the middle of `apply` has on disk
    temp = path / ".model-000002.pt.abc123.tmp"
    shutil.copy(led.model_file, in_flight)
    shutil.copy(led.model_file, temp)
    before = sorted(f.name for f in path.iterdir())
    reader = Ledger(path)
    assert sorted(f.name for f in path.iterdir()) == before
    reader.history()
    assert reader.verify(replay=True).ok
    reader.export(tmp_path / "export.json")
    assert sorted(f.name for f in path.iterdir()) == before
    reader.head()
    assert sorted(f.name for f in path.iterdir()) == before
    led.apply(uk.Changes.remove([4]))  # a writer, under the lock, knows these are leftovers
    assert model_files(path) == ["model-000002.pt"] and not temp.exists()
    assert_consistent(path)


def test_a_writer_waits_for_the_lock(tmp_path):
    """While another process holds the writer lock, `apply` does not start; it runs once the lock
    is released, from the state the holder left."""
    from unlearnkit.ledger.lock import WRITER_LOCK, FolderLock

    path = tmp_path / "ledger"
    make_ledger(path)
    holder = FolderLock(path, WRITER_LOCK)
    holder.acquire()
    try:
        proc = subprocess.Popen([sys.executable, "-c", CRASH_PREFIX + textwrap.dedent("""
            import logging
            logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
            led = Ledger(path)
            led.apply(uk.Changes.remove([5]), reason="waited")
            print("applied", led.seq, flush=True)
        """), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # a WARNING, once, naming the process that holds the lock
        assert f"waiting for another writer on {path} (pid {os.getpid()})" in line, (
            line, proc.stderr.read() if proc.poll() is not None else "")
        assert Ledger(path).seq == 0  # it is blocked before it wrote anything
        assert model_files(path) == ["model-000000.pt"]
    finally:
        holder.release()
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 0, errs
    assert "applied 1" in out
    assert assert_consistent(path).history()[-1]["reason"] == "waited"


# ---------------------------------------------------------------------------- head anchor and keys
def _drop_last_entry(path: Path, previous_model: bytes) -> None:
    """What someone who wants to hide the last request does: delete its rows, restore the file."""
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        seq = conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
        previous_name = conn.execute("SELECT model_file FROM entries WHERE seq = ?", (seq - 1,)).fetchone()[0]
        for table in ("entries", "params", "overlay"):
            conn.execute(f"DELETE FROM {table} WHERE seq = ?", (seq,))
    conn.close()
    for f in path.glob("model-*.pt"):
        f.unlink()
    (path / previous_name).write_bytes(previous_model)


def test_head_anchor_detects_a_removed_last_entry(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    led = make_ledger(path, data=data)
    led.apply(uk.Changes.relabel([1], [1 - int(data.y[1])]))
    previous = led.model_file.read_bytes()
    led.apply(uk.Changes.relabel([2], [1 - int(data.y[2])]), reason="deletion request")  # no overlay change of row 1
    head = led.head()
    assert head.seq == 2 and head.hash == led.history()[-1]["entry_hash"] and str(head) == f"2:{head.hash}"
    assert led.verify(expect_head=head).ok and led.verify(replay=False, expect_head=str(head)).ok
    assert led.verify(replay=False, expect_head=head.hash).ok  # the bare hash works too
    assert led.export()["head"] == {"seq": 2, "hash": head.hash, "anchor": str(head)}

    with sqlite3.connect(path / "ledger.sqlite") as conn:  # the overlay row of entry 2 is row 2
        conn.execute("DELETE FROM overlay WHERE id = 2")
    conn.close()
    _drop_last_entry(path, previous)
    reopened = Ledger(path)
    assert reopened.seq == 1
    assert reopened.verify(replay=True).ok  # the chain alone cannot tell: this is what the anchor is for
    report = reopened.verify(replay=True, expect_head=str(head))
    assert not report.ok and any("differs from the expected" in p and "not in the chain" in p for p in report.problems)
    with pytest.raises(LedgerError, match="not a ledger head"):
        reopened.verify(expect_head="2:nothex")


def test_head_anchor_says_when_the_ledger_only_grew(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    old = led.head()
    led.apply(uk.Changes.remove([1]))
    report = led.verify(replay=False, expect_head=old)
    assert not report.ok and any("1 entries were added after it" in p for p in report.problems), report.problems


KEY = b"0123456789abcdef-secret-key"


def _rechain(path: Path, edit) -> None:
    """Edit entries with ``edit(entries)`` and recompute the unkeyed chain, as a forger would."""
    from unlearnkit.ledger.ledger import _entry_hash

    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        entries = [dict(r) for r in conn.execute("SELECT * FROM entries ORDER BY seq")]
        edit(entries)
        prev = ""
        for e in entries:
            e["prev_hash"] = prev
            e["entry_hash"] = _entry_hash(e)
            prev = e["entry_hash"]
            cols = [c for c in e if c != "seq"]
            conn.execute(f"UPDATE entries SET {', '.join(c + ' = ?' for c in cols)} WHERE seq = ?",
                         [e[c] for c in cols] + [e["seq"]])
    conn.close()


def test_keyed_ledger_detects_a_rewritten_chain(tmp_path):
    path = tmp_path / "ledger"
    data = small_data()
    Ledger.create(path, data, model=uk.models.LogisticRegression(n_features=data.n_features, l2=1.0), spec=SPEC, key=KEY)
    with pytest.raises(LedgerError, match="keyed"):
        Ledger(path).apply(uk.Changes.remove([1]))  # every writer must give the key
    with pytest.raises(LedgerError, match="HMAC of entry 0 does not match"):
        Ledger(path, key=b"another-key-of-16-bytes").apply(uk.Changes.remove([1]))
    led = Ledger(path, key=KEY)
    led.apply(uk.Changes.remove([1]), reason="gdpr")
    assert led.verify().ok and "HMAC of every entry" in led.verify(replay=False).checks
    assert not Ledger(path, key=b"another-key-of-16-bytes").verify(replay=False).ok

    def reword(entries):
        entries[1]["reason"] = "routine clean-up"
    _rechain(path, reword)
    assert Ledger(path).verify(replay=True).ok  # without the key, a consistent rewrite is invisible
    report = Ledger(path, key=KEY).verify(replay=False)
    assert not report.ok and any("HMAC missing or wrong" in p for p in report.problems), report.problems


def test_a_key_on_an_unkeyed_ledger_and_key_files(tmp_path, monkeypatch):
    from unlearnkit.ledger import read_key

    path = tmp_path / "ledger"
    make_ledger(path)
    report = Ledger(path, key=KEY).verify(replay=False)
    assert not report.ok and any("carry no HMAC" in p for p in report.problems)
    with pytest.raises(LedgerError, match="created without a key"):
        Ledger(path, key=KEY).apply(uk.Changes.remove([1]))
    inside = path / "key.txt"
    inside.write_bytes(KEY)
    with pytest.raises(LedgerError, match="inside the ledger folder"):
        read_key(inside, ledger=path)
    inside.unlink()
    outside = tmp_path / "key.txt"
    outside.write_bytes(KEY + b"\n")
    assert read_key(outside, ledger=path) == KEY
    monkeypatch.setenv("UNLEARNKIT_LEDGER_KEY", "short")
    with pytest.raises(LedgerError, match="at least 16"):
        read_key()
    monkeypatch.delenv("UNLEARNKIT_LEDGER_KEY")
    assert read_key() is None


def test_edited_metadata_is_detected_by_the_first_entry(tmp_path):
    path = tmp_path / "ledger"
    make_ledger(path)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'created'", ("2001-01-01T00:00:00+00:00",))
    conn.close()
    report = Ledger(path).verify(replay=False)
    assert not report.ok and any("metadata" in p for p in report.problems), report.problems


# ---------------------------------------------------------------------------- replay and crafted databases
def test_replay_retrains_the_first_entry(tmp_path):
    """Entry 0's recorded parameters are re-derived from the data, recipe and seed: replacing
    them (with a consistent chain and model file) is caught."""
    from unlearnkit.ledger.ledger import _entry_hash

    path = tmp_path / "ledger"
    led = make_ledger(path)
    assert led.verify(replay=True).ok
    model = led.model
    with torch.no_grad():
        model.linear.weight[0, 0] += 0.05
    theta = FlatModel(model).theta().detach().numpy().astype(np.float64)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("UPDATE params SET theta = ? WHERE seq = 0", (theta.tobytes(),))
        e = dict(conn.execute("SELECT * FROM entries WHERE seq = 0").fetchone())
        e["params_after"] = parameter_hash(model)
        e["entry_hash"] = _entry_hash(e)
        conn.execute("UPDATE entries SET params_after = ?, entry_hash = ? WHERE seq = 0", (e["params_after"], e["entry_hash"]))
    conn.close()
    uk.save_model(model, model_file(path, 0))
    forged = Ledger(path)
    assert forged.verify(replay=False).ok  # every hash is consistent
    report = forged.verify(replay=True)
    assert not report.ok and not report.replayed
    assert any(p.startswith("entry 0: re-training") for p in report.problems), report.problems


def test_replayed_training_is_deterministic(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([3]))
    fresh = uk.influence.certified.certified_train(
        uk.models.LogisticRegression(**json.loads(led.meta["model"])["config"]), led._base_rows().full(), led.spec,
        seed=led.history()[0]["state"]["noise_seed"],
        config=uk.training.TrainConfig.from_dict(json.loads(led.meta["train_config"])))
    recorded = Ledger(path)._model_from_blobs(*sqlite3.connect(path / "ledger.sqlite").execute(
        "SELECT theta, perturbation FROM params WHERE seq = 0").fetchone())
    assert torch.equal(FlatModel(fresh.model).theta(), FlatModel(recorded).theta())
    assert torch.equal(fresh.model.perturbation, recorded.perturbation)


@pytest.mark.parametrize("column,value", [
    ("details", "[" * 100_000 + "]" * 100_000),
    ("certificate", "not json at all"),
    ("state", "[1, 2]"),
    ("changes", '{"format": "unlearnkit.changes/1", "removals": ' + "[" * 100_000 + "]" * 100_000 + "}"),
])
def test_crafted_entry_json_is_a_named_problem(tmp_path, column, value):
    """A forged entry whose JSON is not JSON, or nested without end, with the chain recomputed."""
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([1]))
    led.apply(uk.Changes.remove([2]))

    def craft(entries):
        entries[1][column] = value
    _rechain(path, craft)
    report = Ledger(path).verify(replay=True)  # reports, never raises
    assert not report.ok and any(p.startswith("entry 1") for p in report.problems), report.problems
    if column != "changes":
        with pytest.raises(LedgerError, match="entry 1"):
            Ledger(path).history()


@pytest.mark.parametrize("claim", ["n_features", "n_classes"])
def test_crafted_sizes_are_refused_before_allocating(tmp_path, monkeypatch, claim):
    import unlearnkit.ledger.ledger as ledger_mod

    path = tmp_path / "ledger"
    make_ledger(path)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        model = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
        data = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'data'").fetchone()[0])
        model["config"][claim] = 10**9
        if claim == "n_classes":
            data["n_classes"] = 10**9
        conn.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(model),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'data'", (json.dumps(data),))
    conn.close()
    real = ledger_mod.LogisticRegression

    def guarded(**config):
        if config.get("n_features", 0) * max(config.get("n_classes", 2), 1) > 10**6:
            raise AssertionError(f"a model of the claimed size was built: {config}")
        return real(**config)

    monkeypatch.setattr(ledger_mod, "LogisticRegression", guarded)
    with pytest.raises(LedgerError, match="features|classes"):
        Ledger(path)


# ---------------------------------------------------------------------------- write path
def test_apply_refuses_tampered_data_files(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([1]))  # a checked, cached state
    db = (path / "ledger.sqlite").read_bytes()
    X = np.load(path / "data" / "X.npy", mmap_mode="r+")
    st = (path / "data" / "X.npy").stat()
    X[10, 0] += 0.25
    X.flush()
    del X
    os.utime(path / "data" / "X.npy", ns=(st.st_atime_ns, st.st_mtime_ns))  # the modification time put back
    for handle in (led, Ledger(path)):
        with pytest.raises(LedgerError, match="data files .* differ"):
            handle.apply(uk.Changes.remove([2]))
    assert (path / "ledger.sqlite").read_bytes() == db and led.seq == 1
    assert not Ledger(path).verify(replay=False).ok


def test_create_on_a_regular_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    with pytest.raises(LedgerError, match="not a folder"):
        Ledger.create(target, small_data(), spec=SPEC)
    assert target.read_text() == "mine"


@pytest.mark.parametrize("stage", ["write_base", "save_model", "rename"])
def test_kill_during_init_leaves_no_ledger_and_init_works_again(tmp_path, stage):
    path = tmp_path / "ledger"
    patch = {
        "write_base": "import unlearnkit.ledger.ledger as m\norig = m.write_base\n"
                      "def hook(*a, **k):\n    orig(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\nm.write_base = hook\n",
        "save_model": "import unlearnkit.ledger.ledger as m\norig = m._write_model_file\n"
                      "def hook(*a, **k):\n    orig(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\nm._write_model_file = hook\n",
        "rename": "import unlearnkit.ledger.ledger as m\n"
                  "def hook(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\nm._fsync_dir = hook\n",
    }[stage]
    run_and_crash(patch + textwrap.dedent("""
        import numpy as np
        rng = np.random.default_rng(0)
        X = rng.normal(size=(50, 3)); X /= np.linalg.norm(X, axis=1).max()
        data = uk.Dataset(X, (X[:, 0] > 0).astype(int), name="small")
        from unlearnkit.influence.certified import CertifiedSpec
        Ledger.create(path, data, spec=CertifiedSpec(epsilon=1e6, sigma=1.0))
    """), path)
    assert not path.exists()  # no half-built ledger at the path
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".ledger.init-")]
    assert len(leftovers) == 1
    led = make_ledger(path)  # init works again, and removes the dead build
    assert led.seq == 0 and not [p for p in tmp_path.iterdir() if p.name.startswith(".ledger.init-")]
    assert_consistent(path)


@pytest.mark.parametrize("stage", ["save_model", "moving"])
def test_kill_during_init_into_an_existing_empty_folder(tmp_path, stage):
    """An existing folder is filled from a build folder inside it, ledger.sqlite last: killed
    before that, the folder is no ledger, and init into it again cleans up and works."""
    path = tmp_path / "ledger"
    path.mkdir()
    patch = {
        "save_model": "import unlearnkit.ledger.ledger as m\norig = m._write_model_file\n"
                      "def hook(*a, **k):\n    orig(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "m._write_model_file = hook\n",
        "moving": "orig = os.rename\n"  # the data and model file are moved up, the database is not
                  "def hook(a, b):\n    if str(b).endswith('ledger.sqlite'):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
                  "    orig(a, b)\nos.rename = hook\n",
    }[stage]
    run_and_crash(patch + textwrap.dedent("""
        import numpy as np
        X = np.random.default_rng(0).normal(size=(50, 3)); X /= np.linalg.norm(X, axis=1).max()
        from unlearnkit.influence.certified import CertifiedSpec
        Ledger.create(path, uk.Dataset(X, (X[:, 0] > 0).astype(int)), spec=CertifiedSpec(epsilon=1e6, sigma=1.0))
    """), path)
    assert path.is_dir() and not (path / "ledger.sqlite").exists()
    if stage == "moving":
        assert (path / "data").is_dir() and model_files(path) == ["model-000000.pt"]
    with pytest.raises(LedgerError, match="No ledger"):
        Ledger(path)
    assert make_ledger(path).seq == 0  # init again removes what the killed one left
    assert sorted(f.name for f in path.iterdir() if f.name != "data") == ["ledger.sqlite", model_file(path, 0).name]
    assert_consistent(path)


def test_kill_after_init_completed_an_existing_folder(tmp_path):
    """Killed after ledger.sqlite was moved up: the ledger is complete; the next writer removes
    the empty build folder and the marker."""
    path = tmp_path / "ledger"
    path.mkdir()
    run_and_crash(textwrap.dedent("""
        orig = os.rename
        def hook(a, b):
            orig(a, b)
            if str(b).endswith("ledger.sqlite"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = hook
        import numpy as np
        X = np.random.default_rng(0).normal(size=(50, 3)); X /= np.linalg.norm(X, axis=1).max()
        from unlearnkit.influence.certified import CertifiedSpec
        Ledger.create(path, uk.Dataset(X, (X[:, 0] > 0).astype(int)), spec=CertifiedSpec(epsilon=1e6, sigma=1.0))
    """), path)
    assert (path / ".ledger-init-moving").exists() and list(path.glob(".ledger-init-*/"))
    led = assert_consistent(path)
    led.apply(uk.Changes.remove([1]))
    assert not list(path.glob(".ledger-init-*"))
    assert_consistent(path)


def test_init_into_a_linked_folder_and_under_a_read_only_parent(tmp_path, monkeypatch):
    """An existing empty folder is filled in place: a link to a folder stays a link, and a parent
    folder that cannot be written (simulated: tests run as root) is not needed."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    led = make_ledger(link)
    assert link.is_symlink() and (real / "ledger.sqlite").is_file()
    led.apply(uk.Changes.remove([3]))
    assert_consistent(link)

    parent = tmp_path / "readonly"
    target = parent / "ledger"
    target.mkdir(parents=True)
    original_mkdir = os.mkdir

    def no_writes_in_parent(p, *args, **kwargs):
        if Path(p).parent == parent:
            raise PermissionError(13, "Permission denied", str(p))
        return original_mkdir(p, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", no_writes_in_parent)
    led = make_ledger(target)
    led.apply(uk.Changes.remove([4]))
    assert sorted(f.name for f in parent.iterdir()) == ["ledger"]
    assert_consistent(target)
    with pytest.raises(LedgerError, match="permission denied"):  # a new folder there: the cause is named
        make_ledger(parent / "new")


def test_init_refuses_a_folder_with_foreign_files_left_beside_init_leftovers(tmp_path):
    path = tmp_path / "ledger"
    path.mkdir()
    (path / ".ledger-init-moving").touch()  # an interrupted init's marker ...
    (path / "notes.txt").write_text("mine")  # ... and a file that is not the ledger's
    with pytest.raises(LedgerError, match="not empty .*notes.txt"):
        make_ledger(path)
    assert (path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("errno_name,cause", [("ENOSPC", "disk is full"), ("EROFS", "read-only"),
                                              ("EACCES", "permission denied"), ("EFBIG", "file-size limit")])
def test_write_failures_are_named_and_change_nothing(tmp_path, monkeypatch, errno_name, cause):
    import errno

    import unlearnkit.ledger.ledger as ledger_mod

    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([1]))
    db, files = (path / "ledger.sqlite").read_bytes(), model_files(path)

    def failing(*args, **kwargs):
        code = getattr(errno, errno_name)
        raise OSError(code, os.strerror(code), str(path / "model-000002.pt"))

    monkeypatch.setattr(ledger_mod, "_write_model_file", failing)
    with pytest.raises(LedgerError, match=cause):
        led.apply(uk.Changes.remove([2]))
    assert (path / "ledger.sqlite").read_bytes() == db and model_files(path) == files and led.seq == 1
    monkeypatch.undo()
    assert assert_consistent(path).seq == 1
    led.apply(uk.Changes.remove([2]))  # usable once the cause is gone
    assert led.seq == 2


def test_a_real_file_size_limit_is_named(tmp_path):
    import resource

    path = tmp_path / "ledger"
    led = make_ledger(path)
    db = (path / "ledger.sqlite").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # the model file is larger than 1 KB
    try:
        with pytest.raises(LedgerError, match="file-size limit"):
            led.apply(uk.Changes.remove([2]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (path / "ledger.sqlite").read_bytes() == db and led.seq == 0
    assert_consistent(path)


def test_init_write_failure_is_named_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import unlearnkit.ledger.ledger as ledger_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ledger_mod, "write_base", full)
    with pytest.raises(LedgerError, match="disk is full"):
        make_ledger(tmp_path / "ledger")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- command line
def _cli(*args, env=None):
    from typer.testing import CliRunner

    from unlearnkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_cli_history_shows_hostile_reasons_as_text(tmp_path):
    """A reason is data: never read as Rich markup, and escape sequences never reach the terminal."""
    path = tmp_path / "ledger"
    make_ledger(path)
    hostile = "see [/docs] and [bold]x[/bold] \x1b[31mRED\x1b[0m \x07 done"
    changes = tmp_path / "c.json"
    changes.write_text(uk.Changes.remove([1]).to_json())
    r = _cli("ledger", "apply", path, "--changes", changes, "--reason", hostile)
    assert r.exit_code == 0, r.output
    for _ in range(2):  # every later listing works too
        r = _cli("ledger", "history", path, env={"COLUMNS": "300"})
        assert r.exit_code == 0, r.output
        flat = "".join(r.output.split())
        assert "\x1b" not in r.output and "\x07" not in r.output
        assert "[/docs]" in flat and "[bold]x[/bold]" in flat and "\\x1b[31mRED" in flat
    r = _cli("ledger", "history", path, "--format", "json")
    assert r.exit_code == 0 and "\x1b" not in r.output
    assert json.loads(r.output)[-1]["reason"] == hostile


def test_cli_head_verify_expect_head_and_export(tmp_path):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([1]))
    r = _cli("ledger", "head", path)
    assert r.exit_code == 0 and r.output.strip() == str(led.head())
    r = _cli("ledger", "verify", path, "--no-replay", "--expect-head", r.output.strip())
    assert r.exit_code == 0, r.output
    old = led.head()
    led.apply(uk.Changes.remove([2]))
    r = _cli("ledger", "verify", path, "--no-replay", "--expect-head", str(old))
    assert r.exit_code == 1 and "differs from the expected" in r.output
    r = _cli("ledger", "verify", path, "--expect-head", "nonsense")
    assert r.exit_code == 2 and "not a ledger head" in r.output
    out = tmp_path / "export.json"
    assert _cli("ledger", "export", path, "--out", out).exit_code == 0
    assert json.loads(out.read_text())["head"]["anchor"] == str(led.head())
    folder = tmp_path / "a-folder"
    folder.mkdir()
    r = _cli("ledger", "export", path, "--out", folder)
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in folder.iterdir()) == []


def test_cli_init_on_a_file_and_keyed_ledgers(tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    r = _cli("ledger", "init", target, "--data", "breast-cancer")
    assert r.exit_code == 2 and "not a folder" in r.output and target.read_text() == "mine"
    r = _cli("ledger", "init", tmp_path / "seeded", "--data", "breast-cancer", "--seed", str(2**70))
    assert r.exit_code == 2 and "seed" in r.output and not (tmp_path / "seeded").exists()

    key_file = tmp_path / "ledger.key"
    key_file.write_text("a-secret-of-more-than-16-bytes\n")
    path = tmp_path / "keyed"
    assert _cli("ledger", "init", path, "--data", "breast-cancer", "--sigma", "50", "--key-file", key_file).exit_code == 0
    changes = tmp_path / "c.json"
    changes.write_text(uk.Changes.remove([1]).to_json())
    r = _cli("ledger", "apply", path, "--changes", changes, env={"UNLEARNKIT_LEDGER_KEY": ""})
    assert r.exit_code == 2 and "keyed" in r.output
    r = _cli("ledger", "apply", path, "--changes", changes, env={"UNLEARNKIT_LEDGER_KEY": "a-secret-of-more-than-16-bytes"})
    assert r.exit_code == 0, r.output
    r = _cli("ledger", "verify", path, "--no-replay", "--key-file", key_file)
    assert r.exit_code == 0 and "HMAC of every entry" in r.output


def test_a_compressed_curvature_blob_is_refused_before_loading(tmp_path):
    """torch writes its archives uncompressed: a compressed member (a zip bomb in a small
    database) is refused before torch expands it."""
    import zipfile

    path = tmp_path / "ledger"
    make_ledger(path)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        blob = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()[0]
        src, out = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for m in src.infolist():
                dst.writestr(m.filename, src.read(m.filename))
        conn.execute("UPDATE curvature SET blob = ? WHERE id = 1", (out.getvalue(),))
    conn.close()
    with pytest.raises(LedgerError, match="compressed"):
        Ledger(path)


# ---------------------------------------------------------------------------- writers that slip past the lock
class _NoLock:
    """What a writer on a filesystem without working locks (or on Windows) has: no lock at all."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def acquire(self, *, blocking: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.mark.parametrize("loser_writes", ["after the winner committed", "before the winner wrote"])
def test_a_writer_without_the_lock_never_touches_committed_files(tmp_path, monkeypatch, loser_writes):
    """Two writers read entry 0; the winner commits entry 1 while the loser is between reading
    and committing. The loser's model file has a name of its own, so the winner's committed file
    is never overwritten or deleted, and the loser fails without recording anything."""
    import unlearnkit.ledger.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "FolderLock", _NoLock, raising=False)
    path = tmp_path / "ledger"
    data = small_data()
    loser, winner = make_ledger(path, data=data), Ledger(path)
    original = ledger_mod._write_model_file
    interleaved = []

    def loser_write(model, target, **kwargs):
        if interleaved:  # the winner's own write
            return original(model, target, **kwargs)
        interleaved.append(target)
        if loser_writes == "before the winner wrote":
            original(model, target, **kwargs)
        winner.apply(uk.Changes.relabel([3], [1 - int(data.y[3])]), reason="winner")  # commits entry 1
        if loser_writes == "after the winner committed":
            original(model, target, **kwargs)

    monkeypatch.setattr(ledger_mod, "_write_model_file", loser_write)
    with pytest.raises(LedgerError, match="Another process .* committed entry 1 .* nothing was recorded"):
        loser.apply(uk.Changes.remove([7]), reason="loser")
    monkeypatch.undo()
    assert interleaved and winner.seq == 1
    led = assert_consistent(path, clean=False)  # verify with replay passes; the winner's file is the current one
    assert [e["reason"] for e in led.history()] == ["initial training", "winner"]
    assert led.model_file == winner.model_file and not interleaved[0].exists()
    assert parameter_hash(uk.load_model(led.model_file)) == winner.history()[-1]["params_after"]
    loser.apply(uk.Changes.remove([7]), reason="loser, again")  # the loser retries from the latest state
    assert [e["reason"] for e in assert_consistent(path).history()] == ["initial training", "winner", "loser, again"]


def test_the_writer_lock_does_not_depend_on_a_lock_file(tmp_path):
    """The writer lock is on the folder itself: no lock file to delete, nothing written to take it."""
    from unlearnkit.ledger.lock import WRITER_LOCK, FolderLock

    path = tmp_path / "ledger"
    make_ledger(path).apply(uk.Changes.remove([1]))
    assert not (path / "ledger.lock").exists() and not (path / "ledger.files.lock").exists()
    holder = FolderLock(path, WRITER_LOCK)
    holder.acquire()
    try:
        for f in path.glob("*.lock"):
            f.unlink()
        other = FolderLock(path, WRITER_LOCK)
        assert not other.acquire(blocking=False)  # still held
    finally:
        holder.release()
    assert other.acquire(blocking=False)
    other.release()


def test_a_killed_writers_candidate_for_a_later_entry_waits_for_that_entry(tmp_path):
    """Clean-up deletes only what no writer can still commit: a model file or temporary file for
    the next entry number may be a live writer's (one without the lock) and stays until that
    number is taken; files for taken numbers go at once."""
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.remove([1]))
    current = led.model_file
    candidate = path / "model-000002-00000000000000aa.pt"
    candidate_tmp = path / ".model-000002-00000000000000bb.1234abcd.tmp"
    lost = path / "model-000001-00000000000000cc.pt"
    lost_tmp = path / ".model-000001-00000000000000dd.1234abcd.tmp"
    for f in (candidate, candidate_tmp, lost, lost_tmp):
        shutil.copy(current, f)
    led._cleanup_files()
    assert candidate.exists() and candidate_tmp.exists() and current.exists()
    assert not lost.exists() and not lost_tmp.exists()
    led.apply(uk.Changes.remove([2]))  # entry 2 is taken: the candidates for it are dead
    assert not candidate.exists() and not candidate_tmp.exists()
    assert_consistent(path)


def test_model_file_names_with_more_digits(tmp_path):
    from unlearnkit.ledger.ledger import _MODEL_RE

    for name in ("model-000007.pt", "model-1234567.pt", "model-000007-0123456789abcdef.pt",
                 "model-12345678-0123456789abcdef.pt"):
        assert _MODEL_RE.match(name), name
    for name in ("model-00007.pt", "model-000007-xyz.pt", "model-000007.pt.tmp"):
        assert not _MODEL_RE.match(name), name


# ---------------------------------------------------------------------------- writers check what verify checks
def test_writers_refuse_a_forged_data_check_record_on_a_keyed_ledger(tmp_path):
    """The cache of the data check carries an HMAC: forging it (after editing the data) without
    the key makes the writer hash the data again, and refuse."""
    from unlearnkit.ledger.ledger import _data_signature

    path = tmp_path / "ledger"
    data = small_data()
    led = Ledger.create(path, data, model=uk.models.LogisticRegression(n_features=data.n_features, l2=1.0),
                        spec=SPEC, key=KEY)
    led.apply(uk.Changes.remove([1]))
    y = np.load(path / "data" / "y.npy")
    y[:20] = 1 - y[:20]
    np.save(path / "data" / "y.npy", y)
    cache = path / "data" / "checked.json"
    fp = json.loads(cache.read_text())["fingerprint"]
    cache.write_text(json.dumps({"signature": _data_signature(path / "data"), "fingerprint": fp}))
    db = (path / "ledger.sqlite").read_bytes()
    with pytest.raises(LedgerError, match="data files .* differ"):
        Ledger(path, key=KEY).apply(uk.Changes.remove([2]))
    assert (path / "ledger.sqlite").read_bytes() == db


def test_writers_refuse_metadata_that_differs_from_the_first_entry(tmp_path):
    """Deleting the `mac` row (turning a keyed ledger into an unkeyed one), or replacing the data
    fingerprint together with the data, is refused by the writer, not only by verify."""
    from unlearnkit.ledger.rows import fingerprint

    path = tmp_path / "keyed"
    data = small_data()
    Ledger.create(path, data, model=uk.models.LogisticRegression(n_features=data.n_features, l2=1.0), spec=SPEC, key=KEY)
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'mac'")
    conn.close()
    with pytest.raises(LedgerError, match="differs from what its first entry recorded"):
        Ledger(path).apply(uk.Changes.remove([1]))
    assert Ledger(path).seq == 0

    path = tmp_path / "plain"
    make_ledger(path, data=data).apply(uk.Changes.remove([1]))
    y = np.load(path / "data" / "y.npy")
    y[:20] = 1 - y[:20]
    np.save(path / "data" / "y.npy", y)
    X, ids = np.load(path / "data" / "X.npy"), np.load(path / "data" / "ids.npy")
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        meta = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'data'").fetchone()[0])
        meta["fingerprint"] = fingerprint(X, y, ids)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'data'", (json.dumps(meta),))
    conn.close()
    with pytest.raises(LedgerError, match="differs from what its first entry recorded"):
        Ledger(path).apply(uk.Changes.remove([2]))
    assert Ledger(path).seq == 1


def test_replay_compares_the_noise_of_every_entry(tmp_path):
    """Zeroing the last entry's stored b (with its hashes, chain and model file made consistent)
    is caught by the replay, which recomputes b for every entry."""
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([5], [1]), reason="r1")
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        theta, b = conn.execute("SELECT theta, perturbation FROM params WHERE seq = 1").fetchone()
        zero = np.zeros(len(b) // 8).tobytes()
        model = led._model_from_blobs(theta, zero)
        conn.execute("UPDATE params SET perturbation = ? WHERE seq = 1", (zero,))
    conn.close()

    def rehash(entries):
        entries[1]["params_after"] = parameter_hash(model)
    _rechain(path, rehash)
    name = led.model_file
    name.unlink()
    uk.save_model(model, name)
    forged = Ledger(path)
    assert float(forged.certified.model.linear_term().abs().max()) == 0.0
    assert forged.verify(replay=False).ok  # every hash is consistent
    report = forged.verify(replay=True)
    assert not report.ok and any("entry 1" in p and "noise b" in p for p in report.problems), report.problems


def test_cli_apply_prints_the_head_of_its_own_entry(tmp_path, monkeypatch):
    """Another writer committing right after this one released the lock does not change what
    this one reports: the entry, model file and head it committed."""
    path = tmp_path / "ledger"
    make_ledger(path)
    changes = tmp_path / "c.json"
    changes.write_text(uk.Changes.remove([1]).to_json())
    original = Ledger.apply
    mine = {}

    def apply_then_another_writer(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        mine["head"] = self.committed
        mine["file"] = self.model_file.name
        monkeypatch.setattr(Ledger, "apply", original)
        Ledger(path).apply(uk.Changes.remove([2]), reason="someone else")
        return result

    monkeypatch.setattr(Ledger, "apply", apply_then_another_writer)
    r = _cli("ledger", "apply", path, "--changes", changes)
    assert r.exit_code == 0, r.output
    assert Ledger(path).seq == 2 and mine["head"].seq == 1
    assert f"head: {mine['head']}" in r.output and "entry 1:" in r.output and mine["file"] in r.output
    r = _cli("ledger", "refine", path)  # refine reports the head of the entry it recorded too
    assert r.exit_code == 0, r.output
    assert f"head: {Ledger(path).head()}" in r.output and "entry 3:" in r.output
