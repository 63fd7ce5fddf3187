"""The training data of a ledger: an immutable base on disk plus the edits of every request.

The base rows are written once, at ``ledger init``, as ``.npy`` files sorted by row id and read
back memory-mapped, so a request touches only the rows it names: resolving a change set with
explicit rows costs ``O(k d)`` however many rows the data has (a feature edit "wherever the
column is non-zero" has to scan that column, ``O(n)``). The *overlay* holds each edited row's
current features and label, and the removed ids; the ledger stores it in SQLite in the same
transaction as the request that made it. The current corrected data is base + overlay: the
composition of every request so far.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ChangesError, LedgerError


def write_base(folder: Path, data: Dataset) -> str:
    """Write ``data`` (dense) sorted by id under ``folder``; returns its fingerprint."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort(data.ids, kind="stable")
    X = np.ascontiguousarray(data.dense_rows()[order].reshape(len(data), -1), dtype=np.float64)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", data.y[order].astype(np.int64))
    np.save(folder / "ids.npy", data.ids[order].astype(np.int64))
    return fingerprint(X, data.y[order], data.ids[order])


def fingerprint(X: np.ndarray, y: np.ndarray, ids: np.ndarray, block: int = 65536) -> str:
    h = hashlib.sha256()
    for start in range(0, len(X), block):
        h.update(np.ascontiguousarray(X[start:start + block]).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    h.update(repr(tuple(X.shape)).encode())
    return h.hexdigest()


class LedgerRows:
    """Current rows = memory-mapped base + overlay (edited rows, removed ids)."""

    def __init__(self, folder: Path, *, n_classes: int, feature_shape: tuple[int, ...], name: str = "ledger data") -> None:
        try:
            self.X = np.load(folder / "X.npy", mmap_mode="r")
            self.y = np.load(folder / "y.npy", mmap_mode="r")
            self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise LedgerError(f"The ledger's data files under {folder} are missing or unreadable ({exc}).") from None
        if self.X.ndim != 2 or len(self.y) != len(self.X) or len(self.ids) != len(self.X):
            raise LedgerError(f"The ledger's data files under {folder} do not fit together (shapes "
                              f"{self.X.shape}, {self.y.shape}, {self.ids.shape}).")
        self.folder = folder
        self.n_classes = int(n_classes)
        self.feature_shape = tuple(feature_shape)
        self.name = name
        self.edited: dict[int, tuple[np.ndarray, int]] = {}  # id -> (features, label)
        self.removed: set[int] = set()
        self._unchecked: set[int] | None = None  # ids committed since check_overlay passed (None: check all)

    # ------------------------------------------------------------------ overlay
    def load_overlay(self, records) -> None:
        """``records``: ``(id, removed, label, features bytes or None)`` rows from the store."""
        self.edited.clear()
        self.removed.clear()
        self._unchecked = None
        d = self.X.shape[1]
        for row_id, removed, label, blob in records:
            if removed:
                self.removed.add(int(row_id))
            else:
                x = np.frombuffer(blob, dtype=np.float64) if blob is not None else None
                if x is None or x.size != d:
                    raise LedgerError(f"The ledger's overlay row {row_id} is malformed (the database was edited or is corrupt).")
                self.edited[int(row_id)] = (x.copy(), int(label))

    def check_overlay(self) -> None:
        """Refuse an overlay that no sequence of requests can have written: every edited or
        removed id must be a row of the base data (requests never add rows), every edited label
        one of the classes. Costs ``O(k log n)`` for ``k`` overlay rows (the stored ids are sorted);
        once it passed, later calls check only the rows :meth:`commit` added since, until the
        overlay is loaded again. The full check, replaying every entry, is :meth:`Ledger.verify`."""
        if self._unchecked is None:
            self._check_rows(self.removed | self.edited.keys())
        else:
            self._check_rows(self._unchecked)
        self._unchecked = set()

    def _check_rows(self, ids) -> None:
        edited = ((i, self.edited[i]) for i in ids if i in self.edited)
        bad_label = next((i for i, (_, lab) in edited if not 0 <= lab < self.n_classes), None)
        if bad_label is not None:
            raise LedgerError(f"The ledger's overlay gives row {bad_label} the label {self.edited[bad_label][1]}, "
                              f"outside 0..{self.n_classes - 1}: the overlay table was edited (or the database is "
                              "corrupt). Nothing was changed; run `unlearnkit ledger verify`.")
        ids = sorted(ids)
        if not ids:
            return
        missing = next((i for i in ids if not -(2**63) <= i < 2**63), None)
        if missing is None:
            want = np.asarray(ids, dtype=np.int64)
            base = self.ids
            found = np.zeros(len(want), bool)
            if len(base):
                pos = np.clip(np.searchsorted(base, want), 0, len(base) - 1)
                found = np.asarray(base[pos]) == want
                if not found.all():  # the ids are stored sorted; confirm in full should they not be
                    found = np.isin(want, np.asarray(base))
            missing = None if found.all() else int(want[~found][0])
        if missing is not None:
            raise LedgerError(f"The ledger's overlay holds row {missing}, which is not a row of its data: the overlay "
                              "table was edited (or the database is corrupt). Nothing was changed; run "
                              "`unlearnkit ledger verify`.")

    def overlay_records(self, resolved: Resolved) -> list[tuple[int, int, int | None, bytes | None]]:
        """The overlay rows a resolved request writes: ``(id, removed, label, features)``."""
        return [(i, removed, label, None if x is None else x.tobytes())
                for i, removed, label, x in self._overlay_rows(resolved)]

    @staticmethod
    def _overlay_rows(resolved: Resolved) -> list[tuple[int, int, int | None, np.ndarray | None]]:
        """:meth:`overlay_records` with the features as float64 rows of one contiguous array."""
        Zt = resolved.Z_tilde
        ids = [int(i) for i in np.asarray(Zt.ids).tolist()]
        out = []
        if ids:
            flat = np.ascontiguousarray(Zt.dense_rows().reshape(len(Zt), -1), dtype=np.float64)
            out = [(i, 0, int(label), flat[k]) for k, (i, label) in enumerate(zip(ids, np.asarray(Zt.y).tolist()))]
        kept = set(ids)
        out += [(int(i), 1, None, None) for i in resolved.affected_ids if int(i) not in kept]
        return out

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.X) - len(self.removed)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, ids)
        bad = (pos >= len(self.ids)) | (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids)
        if np.any(bad):
            missing = ids[bad][:5].tolist()
            raise ChangesError(f"{self.name}: row id(s) {missing} are not in the ledger's training data.")
        return pos

    def current(self, ids) -> Dataset:
        """The current version of the rows ``ids`` (refusing removed ones)."""
        ids = np.asarray(sorted(set(int(i) for i in ids)), dtype=np.int64)
        listed = ids.tolist()
        gone = [i for i in listed if i in self.removed] if self.removed else []
        if gone:
            raise ChangesError(f"Row id(s) {gone[:5]} were removed by an earlier request of this ledger.")
        pos = self._positions(ids)
        X = np.array(self.X[pos], dtype=np.float64)
        y = np.array(self.y[pos], dtype=np.int64)
        if self.edited:
            for k, row_id in enumerate(listed):
                edited = self.edited.get(row_id)
                if edited is not None:
                    X[k], y[k] = edited
        return Dataset(X.reshape(len(ids), *self.feature_shape), y, ids, n_classes=self.n_classes, name=self.name)

    def nonzero_ids(self, columns, zero=None) -> set[int]:
        """Ids of the current rows where any of ``columns`` differs from ``zero`` (one value per column; default 0):
        the rows a feature edit without rows selects. A ledger that stores standardised data passes the transform of
        0, so that "non-zero" keeps meaning non-zero in the user's raw units."""
        cols = np.asarray(columns, dtype=np.int64)
        zero = 0.0 if zero is None else np.asarray(zero, dtype=np.float64)
        out = set()
        for start in range(0, len(self.X), 65536):
            block = np.asarray(self.X[start:start + 65536][:, cols])
            out.update(int(i) for i in self.ids[start:start + 65536][np.any(block != zero, axis=1)])
        for row_id, (x, _) in self.edited.items():
            if np.any(x[cols] != zero):
                out.add(row_id)
            else:
                out.discard(row_id)
        return out - self.removed

    def resolve(self, changes: Changes) -> Resolved:
        """Resolve ``changes`` against the current rows it touches (not the whole data)."""
        if not isinstance(changes, Changes):
            raise ChangesError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")
        ids: set[int] = set(changes.removed_ids)
        for edit in changes.label_edits:
            ids.update(edit.rows)
        for edit in changes.feature_edits:
            if edit.rows is None:
                bad = [c for c in edit.columns if c >= self.X.shape[1]]
                if bad:
                    raise ChangesError(f"Feature edit: column(s) {bad[:5]} out of range; the data has {self.X.shape[1]} feature columns.")
                ids.update(self.nonzero_ids(edit.columns))
            else:
                ids.update(edit.rows)
        if not ids:
            raise ChangesError("The change set affects no row of the ledger's data: every feature it zeroes is already zero. Nothing to unlearn.")
        return changes.resolve(self.current(sorted(ids)))

    def commit(self, resolved: Resolved) -> None:
        for row_id, removed, label, x in self._overlay_rows(resolved):
            if self._unchecked is not None:
                self._unchecked.add(row_id)
            if removed:
                self.removed.add(row_id)
                self.edited.pop(row_id, None)
            else:
                self.edited[row_id] = (x.copy(), label)

    def full(self) -> Dataset:
        """The whole current corrected data (``O(n d)``: for retraining and exact residuals)."""
        keep = np.ones(len(self.X), dtype=bool)
        if self.removed:
            keep[self._positions(np.asarray(sorted(self.removed), dtype=np.int64))] = False
        X = np.array(self.X, dtype=np.float64)
        y = np.array(self.y, dtype=np.int64)
        if self.edited:
            e_ids = np.asarray(sorted(self.edited), dtype=np.int64)
            pos = self._positions(e_ids)
            X[pos] = np.stack([self.edited[int(i)][0] for i in e_ids])
            y[pos] = [self.edited[int(i)][1] for i in e_ids]
        n_keep = int(keep.sum())
        return Dataset(X[keep].reshape(n_keep, *self.feature_shape), y[keep], np.asarray(self.ids)[keep],
                       n_classes=self.n_classes, name=self.name)
