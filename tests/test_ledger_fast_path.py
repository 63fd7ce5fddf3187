"""The ledger's request path: the model file is read and hashed once per change of it, one
connection serves the whole request, and neither changes what is recorded or what is refused."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import torch

import unlearnkit as uk
import unlearnkit.ledger.ledger as ledger_mod
from unlearnkit.errors import LedgerError
from unlearnkit.influence.certified import certified_train
from unlearnkit.influence.functional import FlatModel
from unlearnkit.ledger import Ledger

from test_ledger import SPEC, assert_consistent, make_ledger, model_files, small_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def count_model_reads(monkeypatch) -> list:
    reads = []
    original = ledger_mod.load_model

    def counting(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(ledger_mod, "load_model", counting)
    return reads


def edit_in_place(f) -> None:
    """Change the 8 bytes of one weight in the model file in place: same inode, same size, and
    the modification time set back to what it was (only the change time moves)."""
    st = os.stat(f)
    w = float(uk.load_model(f).linear.weight[0, 0].detach())
    raw = f.read_bytes()
    old, new = np.float64(w).tobytes(), np.float64(w + 1.0).tobytes()
    assert raw.count(old) == 1
    with open(f, "r+b") as fh:
        fh.write(raw.replace(old, new))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(f)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert float(uk.load_model(f).linear.weight[0, 0].detach()) == w + 1.0


def test_the_model_file_is_read_once_then_again_only_when_it_changed(tmp_path, monkeypatch):
    reads = count_model_reads(monkeypatch)
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    assert len(reads) == 1  # a new object checks the file it did not write itself
    led.apply(uk.Changes.relabel([2], [0]))
    led.apply(uk.Changes.relabel([3], [0]))
    assert len(reads) == 1  # then it trusts the files it wrote, as long as they are unchanged

    edit_in_place(led.model_file)
    with pytest.raises(LedgerError, match="modified outside the ledger"):
        led.apply(uk.Changes.relabel([4], [0]))
    assert len(reads) == 2 and led.seq == 3


def test_an_entry_by_another_writer_is_checked_again(tmp_path, monkeypatch):
    path = tmp_path / "ledger"
    data = small_data()
    first = make_ledger(path, data=data)
    first.apply(uk.Changes.relabel([1], [1 - int(data.y[1])]))
    second = Ledger(path)
    second.apply(uk.Changes.relabel([2], [1 - int(data.y[2])]))  # another writer: new entry, new model file
    edit_in_place(second.model_file)
    reads = count_model_reads(monkeypatch)
    with pytest.raises(LedgerError, match="modified outside the ledger"):
        first.apply(uk.Changes.relabel([3], [1 - int(data.y[3])]))
    assert reads == [second.model_file.name]
    assert first.seq == 2


def test_an_untouched_entry_by_another_writer_is_accepted(tmp_path, monkeypatch):
    path = tmp_path / "ledger"
    data = small_data()
    first = make_ledger(path, data=data)
    first.apply(uk.Changes.relabel([1], [1 - int(data.y[1])]))
    Ledger(path).apply(uk.Changes.relabel([2], [1 - int(data.y[2])]))
    reads = count_model_reads(monkeypatch)
    first.apply(uk.Changes.relabel([3], [1 - int(data.y[3])]))
    assert len(reads) == 1 and first.seq == 3  # read because another writer made it, then accepted
    assert_consistent(path)


def test_recorded_results_equal_the_certified_model_in_memory(tmp_path):
    """The ledger records exactly what the certified model computes: parameters to 1e-12 and the
    certificate of each request as the request returned it."""
    data = small_data(n=60, d=4, seed=3)
    path = tmp_path / "ledger"
    led = Ledger.create(path, data, model=uk.models.LogisticRegression(n_features=4, l2=1.0), spec=SPEC, seed=5)
    seed = int(led.history()[0]["state"]["noise_seed"])
    order = np.argsort(data.ids, kind="stable")
    memory = certified_train(uk.models.LogisticRegression(n_features=4, l2=1.0), data.subset(order), SPEC, seed=seed)
    requests = [uk.Changes.relabel([3, 8], [1 - int(data.y[3]), 1 - int(data.y[8])]), uk.Changes.remove([11]),
                uk.Changes.relabel([20], [1 - int(data.y[20])])]
    for changes in requests:
        got = led.apply(changes)
        want = memory.unlearn(changes)
        a, b = FlatModel(led.certified.model).theta(), FlatModel(memory.model).theta()
        assert float(torch.linalg.vector_norm(a - b)) <= 1e-12 * (1 + float(torch.linalg.vector_norm(b)))
        recorded = led.history()[-1]["certificate"]
        assert recorded == got.certificate.to_dict() == json.loads(json.dumps(want.certificate.to_dict()))
    assert Ledger(path).verify().ok


def test_a_failed_transaction_leaves_the_old_state_and_the_next_request_works(tmp_path, monkeypatch):
    path = tmp_path / "ledger"
    led = make_ledger(path)
    led.apply(uk.Changes.relabel([1], [0]))
    before = (led.seq, led.head(), model_files(path))

    def failing(self, conn, entry, overlay, curvature):
        conn.execute("INSERT INTO params VALUES (?, ?, ?)", (entry["seq"], b"", b""))  # written, then rolled back
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Ledger, "_write_entry", failing)
    with pytest.raises(LedgerError, match="disk I/O error"):
        led.apply(uk.Changes.relabel([2], [0]))
    monkeypatch.undo()
    assert (led.seq, led.head(), model_files(path)) == before and led._conn is None
    with sqlite3.connect(path / "ledger.sqlite") as conn:
        assert conn.execute("SELECT MAX(seq) FROM params").fetchone()[0] == 1
    led.apply(uk.Changes.relabel([2], [0]))
    assert led.seq == 2
    assert_consistent(path)


def test_the_overlay_check_covers_new_rows_and_every_reload(tmp_path, monkeypatch):
    """After a full check, only the rows a request added are checked; a reload checks everything."""
    from unlearnkit.ledger.rows import LedgerRows

    path = tmp_path / "ledger"
    data = small_data()
    led = make_ledger(path, data=data)
    led.apply(uk.Changes.relabel([1, 2], [1 - int(data.y[1]), 1 - int(data.y[2])]))
    checked = []
    original = LedgerRows._check_rows

    def recording(self, ids):
        checked.append(sorted(ids))
        return original(self, ids)

    monkeypatch.setattr(LedgerRows, "_check_rows", recording)
    led.apply(uk.Changes.remove([5]))
    led.apply(uk.Changes.relabel([7], [1 - int(data.y[7])]))
    assert checked == [[1, 2], [5]]  # each request checks only the rows the one before it added

    with sqlite3.connect(path / "ledger.sqlite") as conn:  # an overlay row no request can write
        conn.execute("UPDATE overlay SET label = 7 WHERE id = 1")
    fresh = Ledger(path)
    with pytest.raises(LedgerError, match="gives row 1 the label 7"):
        fresh.apply(uk.Changes.remove([9]))
    assert checked[-1] == [1, 2, 5, 7]
    with pytest.raises(LedgerError, match="gives row 1 the label 7"):  # refused again, not remembered as checked
        fresh.apply(uk.Changes.remove([9]))


def test_a_database_file_replaced_during_a_request_gets_the_commit(tmp_path, monkeypatch):
    """The writer's connection is opened before the update is computed; if the database file is replaced meanwhile
    (an identical backup restored with mv), the commit goes to the file that is there, not to the unlinked one."""
    import shutil

    from unlearnkit.influence.certified import CertifiedModel

    ledger = make_ledger(tmp_path / "L")
    ledger.apply(uk.Changes.relabel([1], [0]))
    db = tmp_path / "L" / "ledger.sqlite"
    original = CertifiedModel.apply_resolved

    def replacing(self, *args, **kwargs):
        shutil.copy(db, str(db) + ".new")
        os.replace(str(db) + ".new", db)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CertifiedModel, "apply_resolved", replacing)
    ledger.apply(uk.Changes.relabel([2], [0]))
    monkeypatch.setattr(CertifiedModel, "apply_resolved", original)
    fresh = Ledger(tmp_path / "L")
    assert fresh.head().seq == ledger.committed.seq == 2
    assert fresh.verify(replay=False).ok


def test_data_edited_in_place_under_the_same_object_is_refused(tmp_path):
    """The in-process record of a data check is keyed by the files' identity, size and times: an in-place edit with
    the modification time set back still changes the change time, so the same object checks again and refuses."""
    ledger = make_ledger(tmp_path / "L")
    ledger.apply(uk.Changes.relabel([1], [0]))
    ledger.apply(uk.Changes.relabel([2], [0]))
    f = tmp_path / "L" / "data" / "X.npy"
    st = os.stat(f)
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    with open(f, "r+b") as fh:
        fh.write(raw)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(LedgerError, match="data"):
        ledger.apply(uk.Changes.relabel([3], [0]))
