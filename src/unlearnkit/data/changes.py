"""``Changes``: the one edit specification of unlearnkit.

An unlearning request replaces a set of affected training points ``Z`` by corrected points
``Z~`` (Warnecke et al., NDSS 2023):

* **feature edits** set feature columns to zero or to given values, in given rows or in every
  row where any of the columns is non-zero;
* **label edits** give rows new labels;
* **point removals** drop rows (their ``Z~`` is empty).

Rows are named by their stable row *ids* (see :class:`~unlearnkit.data.dataset.Dataset`).
Columns index the flattened feature vector. A ``Changes`` is immutable; ``a + b`` composes two
change sets (an error if they contradict each other). ``resolve(dataset)`` validates the change
set against a dataset and returns ``Z``, ``Z~`` and the corrected dataset. The JSON form (what
``unlearnkit changes`` writes and ``--changes`` reads) is given in :meth:`Changes.from_json`.

Validation rules (each failure is a :class:`~unlearnkit.errors.ChangesError` naming it):

* an empty change set, or an edit with no rows or no columns;
* negative, non-integer or out-of-range rows (ids unknown to the dataset), columns or labels;
* nested lists of rows, columns or labels, and a list longer than :data:`MAX_ROWS`;
* NaN or infinite feature values;
* two edits of the same cell (feature cell or label) that disagree;
* a row that is both removed and edited.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ChangesError, DataError

FORMAT = "unlearnkit.changes/1"


#: Largest change-set file :meth:`Changes.load` reads (64 MiB, about eight million row ids). Parsing
#: JSON takes many times the file's size in memory, so a larger file is refused before it is read;
#: split a larger request into several change sets.
MAX_FILE_BYTES = 64 * 1024 * 1024

_INT64_MAX = np.iinfo(np.int64).max

#: Most ids (or labels, or columns) one list in a change set may hold: eight million, what a
#: :data:`MAX_FILE_BYTES` file can carry. Larger lists are refused before they are copied; split
#: a larger request into several change sets.
MAX_ROWS = MAX_FILE_BYTES // 8


def _too_many(n: int, what: str) -> ChangesError:
    return ChangesError(f"{what} hold {n:,} values, beyond the limit of {MAX_ROWS:,} per list "
                        f"(unlearnkit.data.changes.MAX_ROWS); split the request into several change sets.")


def _int_tuple(values, what: str) -> tuple[int, ...]:
    try:
        n = len(values)
    except Exception:  # no cheap length (a generator, a scalar): counted after conversion below
        n = None
    if n is not None and n > MAX_ROWS:
        raise _too_many(n, what)
    if isinstance(values, (bool, np.bool_)) or (isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values)):
        raise ChangesError(f"{what} must be integers; got bool (true/false) values.")
    if isinstance(values, (list, tuple)) and any(type(v) is int and not -_INT64_MAX - 1 <= v <= _INT64_MAX for v in values):
        big = next(v for v in values if type(v) is int and not -_INT64_MAX - 1 <= v <= _INT64_MAX)
        raise ChangesError(f"{what} must be below 2**63 (row ids are 64-bit integers); found {big}.")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ChangesError(f"{what} must be a flat list of integers ({type(exc).__name__}: {str(exc)[:100]}).") from None
    if arr.ndim > 1:
        raise ChangesError(f"{what} must be a flat list of integers; got nested lists (shape {arr.shape}).")
    arr = arr.reshape(-1)
    if arr.size > MAX_ROWS:
        raise _too_many(arr.size, what)
    if arr.size == 0:
        return ()
    if arr.dtype.kind == "b":
        raise ChangesError(f"{what} must be integers; got bool (true/false) values.")
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr))):
        raise ChangesError(f"{what} must be integers (finite); got {arr.dtype} values such as {arr[:3].tolist()}.")
    if not (np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))):
        raise ChangesError(f"{what} must be integers; got {arr.dtype} values such as {arr[:3].tolist()}.")
    if arr.dtype.kind == "f" and np.any(np.abs(arr) >= 2.0**63):
        raise ChangesError(f"{what} must be below 2**63; found {arr[np.abs(arr) >= 2.0**63][0]:.0f}.")
    if arr.dtype.kind == "u" and np.any(arr > np.iinfo(np.int64).max):
        raise ChangesError(f"{what} must be below 2**63; found {int(arr.max())}.")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise ChangesError(f"{what} must be >= 0; found {int(arr.min())}.")
    return tuple(arr.tolist())


def _decode(raw: bytes, what: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); UTF-16 and other bytes are refused by name."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(raw) >= 2 and b"\x00" in raw[:2]):
        raise ChangesError(f"{what} is UTF-16 (or another two-byte encoding); save it as UTF-8 JSON.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ChangesError(f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 JSON.") from None


@dataclass(frozen=True)
class FeatureEdit:
    """Set ``columns`` to ``values`` in ``rows`` (row ids), or, if ``rows`` is None, in every
    row where any of the columns is non-zero."""

    columns: tuple[int, ...]
    values: tuple[float, ...]
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        cols = _int_tuple(self.columns, "feature edit columns")
        if not cols:
            raise ChangesError("A feature edit needs at least one column.")
        if len(set(cols)) != len(cols):
            seen: set = set()
            twice = list(dict.fromkeys(c for c in cols if c in seen or seen.add(c)))
            shown = ", ".join(map(str, twice[:5])) + (f" and {len(twice) - 5:,} more" if len(twice) > 5 else "")
            raise ChangesError(f"A feature edit lists a column twice (column {shown}); give each column once.")
        try:
            vals = np.asarray(self.values, dtype=np.float64).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise ChangesError(f"Feature values must be numbers ({exc}).") from None
        if vals.size == 1 and len(cols) > 1:
            vals = np.repeat(vals, len(cols))
        if vals.size != len(cols):
            raise ChangesError(f"A feature edit has {len(cols)} columns but {vals.size} values; give one value per column or one for all.")
        if not np.all(np.isfinite(vals)):
            k = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise ChangesError(f"Feature values must be finite; the value for column {cols[k]} is {vals[k]} "
                               f"({int((~np.isfinite(vals)).sum()):,} of {vals.size:,} values are not finite).")
        rows = None
        if self.rows is not None:
            rows = _int_tuple(self.rows, "feature edit rows")
            if not rows:
                raise ChangesError("A feature edit with an explicit row list needs at least one row (use rows=None for every row where the feature is non-zero).")
            rows = tuple(sorted(set(rows)))
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "values", tuple(float(v) for v in vals))
        object.__setattr__(self, "rows", rows)


@dataclass(frozen=True)
class LabelEdit:
    """Give the rows ``rows`` (ids) the labels ``labels``."""

    rows: tuple[int, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        rows = _int_tuple(self.rows, "label edit rows")
        labels = _int_tuple(self.labels, "new labels")
        if len(labels) == 1 and len(rows) > 1:
            labels = labels * len(rows)
        if not rows:
            raise ChangesError("A label edit needs at least one row.")
        if len(labels) != len(rows):
            raise ChangesError(f"A label edit has {len(rows)} rows but {len(labels)} labels.")
        if len(set(rows)) != len(rows):  # only then is a per-row dictionary needed
            seen: dict[int, int] = {}
            for r, lab in zip(rows, labels):
                if seen.setdefault(r, lab) != lab:
                    raise ChangesError(f"Row {r} is given two different labels ({seen[r]} and {lab}).")
            rows, labels = tuple(seen), tuple(seen.values())
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "labels", labels)


@dataclass(frozen=True)
class PointRemoval:
    """Remove the rows ``rows`` (ids)."""

    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        rows = _int_tuple(self.rows, "removed rows")
        if not rows:
            raise ChangesError("A point removal needs at least one row.")
        object.__setattr__(self, "rows", tuple(sorted(set(rows))))


class Resolved:
    """A change set resolved against a dataset.

    Attributes
    ----------
    affected_ids:
        Ids of the affected points ``Z``, sorted.
    Z:
        The affected points as they are in the original dataset.
    Z_tilde:
        Their corrected versions (removed points are absent), in the same id order.
    corrected:
        The corrected dataset ``D~ = (D minus Z) union Z~``, in the original row order. Built on
        first access (it copies the data, ``O(n d)``); an update that needs only ``Z`` and ``Z~``
        (a cached curvature factor) never pays for it.
    """

    def __init__(self, affected_ids: np.ndarray, Z: Dataset, Z_tilde: Dataset, corrected) -> None:
        self.affected_ids, self.Z, self.Z_tilde = affected_ids, Z, Z_tilde
        self._corrected = corrected  # a Dataset, or a function building it

    @property
    def corrected(self) -> Dataset:
        if callable(self._corrected):
            self._corrected = self._corrected()
        return self._corrected

    @property
    def n_affected(self) -> int:
        return int(self.affected_ids.size)


def _edited_rows(data: Dataset, positions: np.ndarray, ps: np.ndarray, cs: np.ndarray, values: np.ndarray,
                 labels: np.ndarray, *, name: str) -> Dataset:
    """The rows at ``positions`` with the cell edits ``(ps, cs) -> values`` applied and labels ``labels`` (those of
    the rows at ``np.sort(positions)``, in that order)."""
    rows = data.subset(positions, name=name)
    if positions.size == 0:
        return rows
    order = np.argsort(positions, kind="stable")
    mine = np.isin(ps, positions)
    local = order[np.searchsorted(positions[order], ps[mine])]
    if sp.issparse(rows.X):
        new_X = rows.X.tolil(copy=True)
        if local.size:
            new_X[local, cs[mine]] = values[mine]
        new_X = new_X.tocsr()
        new_X.eliminate_zeros()
    else:
        new_X = rows.X.reshape(len(rows), -1).copy()
        new_X[local, cs[mine]] = values[mine]
        new_X = new_X.reshape(rows.X.shape)
    return rows.replace(X=new_X, y=labels[np.searchsorted(np.sort(positions), positions)])


@dataclass(frozen=True)
class Changes:
    """An immutable, composable set of feature edits, label edits and point removals.

    Build one with the constructors :meth:`zero_features`, :meth:`set_features`,
    :meth:`relabel` and :meth:`remove`, compose with ``+``, and read it back from JSON with
    :meth:`from_json` / :meth:`load`.

    >>> import numpy as np
    >>> from unlearnkit.data import Dataset
    >>> ds = Dataset(np.array([[1., 0.], [0., 2.], [3., 4.]]), np.array([0, 1, 1]))
    >>> ch = Changes.zero_features([1]) + Changes.relabel([0], [1])
    >>> r = ch.resolve(ds)
    >>> r.affected_ids.tolist(), r.corrected.X[:, 1].tolist(), r.corrected.y.tolist()
    ([0, 1, 2], [0.0, 0.0, 0.0], [1, 1, 1])
    """

    feature_edits: tuple[FeatureEdit, ...] = ()
    label_edits: tuple[LabelEdit, ...] = ()
    removals: tuple[PointRemoval, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_edits", tuple(self.feature_edits))
        object.__setattr__(self, "label_edits", tuple(self.label_edits))
        object.__setattr__(self, "removals", tuple(self.removals))
        if self.is_empty:
            raise ChangesError("The change set is empty: give at least one feature edit, label edit or removal.")
        self._check_internal_consistency()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def zero_features(cls, columns, rows=None) -> "Changes":
        """Set ``columns`` to 0 in ``rows`` (ids), or wherever they are non-zero if ``rows`` is None."""
        return cls(feature_edits=(FeatureEdit(columns, (0.0,), rows),))

    @classmethod
    def set_features(cls, columns, values, rows=None) -> "Changes":
        """Set ``columns`` to ``values`` (one per column, or one for all)."""
        return cls(feature_edits=(FeatureEdit(columns, values, rows),))

    @classmethod
    def relabel(cls, rows, labels) -> "Changes":
        """Give ``rows`` (ids) new ``labels`` (one per row, or one for all)."""
        return cls(label_edits=(LabelEdit(rows, labels),))

    @classmethod
    def remove(cls, rows) -> "Changes":
        """Remove ``rows`` (ids)."""
        return cls(removals=(PointRemoval(rows),))

    @classmethod
    def join(cls, parts) -> "Changes":
        """One change set holding every edit of ``parts`` (an iterable of change sets), checked once.

        ``a + b + c + ...`` checks each partial sum for clashing edits again; for thousands of parts (one per row)
        that is quadratic, ``Changes.join(parts)`` is not. The same clashes are refused either way."""
        if isinstance(parts, Changes) or not hasattr(parts, "__iter__"):
            raise ChangesError(f"Changes.join takes a list of change sets, got {type(parts).__name__}.")
        parts = list(parts)
        wrong = sorted({type(part).__name__ for part in parts if not isinstance(part, Changes)})
        if wrong:
            raise ChangesError(f"Changes.join takes change sets only, got {', '.join(wrong)}.")
        return cls(tuple(e for part in parts for e in part.feature_edits),
                   tuple(e for part in parts for e in part.label_edits),
                   tuple(e for part in parts for e in part.removals))

    def __add__(self, other: "Changes") -> "Changes":
        if not isinstance(other, Changes):
            return NotImplemented
        return Changes(
            self.feature_edits + other.feature_edits,
            self.label_edits + other.label_edits,
            self.removals + other.removals,
        )

    # ------------------------------------------------------------------ properties
    @property
    def is_empty(self) -> bool:
        return not (self.feature_edits or self.label_edits or self.removals)

    @property
    def removed_ids(self) -> frozenset[int]:
        return frozenset(r for rem in self.removals for r in rem.rows)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Which kinds of edit this change set holds: ``features``, ``labels``, ``removals``."""
        out = []
        if self.feature_edits:
            out.append("features")
        if self.label_edits:
            out.append("labels")
        if self.removals:
            out.append("removals")
        return tuple(out)

    def _check_internal_consistency(self) -> None:
        labels: dict[int, int] = {}
        for edit in self.label_edits:
            for r, lab in zip(edit.rows, edit.labels):
                if labels.setdefault(r, lab) != lab:
                    raise ChangesError(f"Row {r} is given two different labels ({labels[r]} and {lab}).")
        removed = self.removed_ids
        clash = sorted(removed.intersection(labels))
        if clash:
            raise ChangesError(f"Rows {clash[:5]} are both removed and relabelled; drop one of the two requests.")
        # feature cells with explicit rows: the same cell must not get two values. Only a column that edits give
        # different values can clash; for each such column the (row, value) pairs of its edits are sorted by row
        # (in NumPy) and neighbours compared. Columns whose edits agree (all zeroed, as in an iterative update's
        # chunks of one-row edits) cost one pass over the columns listed.
        explicit = [e for e in self.feature_edits if e.rows is not None]
        for edit in explicit:
            clash = sorted(removed.intersection(edit.rows))
            if clash:
                raise ChangesError(f"Rows {clash[:5]} are both removed and feature-edited; drop one of the two requests.")
        by_column: dict[int, dict[float, list[int]]] = {}
        for i, edit in enumerate(explicit):
            for c, v in zip(edit.columns, edit.values):
                by_column.setdefault(c, {}).setdefault(v, []).append(i)
        rows_of: dict[int, np.ndarray] = {}
        for c, groups in by_column.items():
            if len(groups) < 2:
                continue
            pairs = [(i, v) for v, edits in groups.items() for i in edits]
            arrays = [rows_of.setdefault(i, np.asarray(explicit[i].rows, dtype=np.int64)) for i, _ in pairs]
            rows = np.concatenate(arrays)
            which = np.concatenate([np.full(a.size, i, dtype=np.int64) for (i, _), a in zip(pairs, arrays)])
            vals = np.concatenate([np.full(a.size, v) for (_, v), a in zip(pairs, arrays)])
            order = np.lexsort((which, rows))  # by row, then by edit: the earlier edit's value first
            rows, vals = rows[order], vals[order]
            hit = np.flatnonzero((rows[1:] == rows[:-1]) & (vals[1:] != vals[:-1]))
            if hit.size:
                k = int(hit[0])
                raise ChangesError(f"Cell (row {int(rows[k])}, column {c}) is set to two different values "
                                   f"({vals[k]} and {vals[k + 1]}).")

    # ------------------------------------------------------------------ resolution
    def resolve(self, data: Dataset) -> Resolved:
        """Validate against ``data`` and return ``Z``, ``Z~`` and the corrected dataset.

        Raises :class:`ChangesError` for rows, columns or labels out of range and for
        feature edits whose value-by-row assignments disagree once "every non-zero row"
        edits are expanded.

        On a streamed data set (:class:`~unlearnkit.data.torchdata.StreamingDataset`) the features
        are never loaded whole: label edits and removals read none, an "every non-zero row" edit
        scans them once in batches, and edited cells are applied as rows are read.
        """
        memo = self.__dict__.get("_memo")
        if memo is not None and memo[0] is data:
            if memo[1] is None:
                memo[1] = self._resolve(data)
            return memo[1]
        return self._resolve(data)

    @contextlib.contextmanager
    def _remember(self, data: Dataset):
        """Within this block :meth:`resolve` on ``data`` (this very object) computes once and returns that
        :class:`Resolved` again (the data set and the change set are immutable), so that a request's update, its
        guard and its check share one ``Z``, ``Z~`` and ``D~``. Outside the block nothing is kept (``D~`` is a copy
        of the data). A nested block on the same change set leaves the outer one's memo in place."""
        if "_memo" in self.__dict__:
            yield
            return
        object.__setattr__(self, "_memo", [data, None])
        try:
            yield
        finally:
            self.__dict__.pop("_memo", None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_memo", None)  # a request's memo is not part of the change set
        return state

    def _resolve(self, data: Dataset) -> Resolved:
        n_cols = data.n_features
        n_rows = len(data)
        for what, count in (("removes", len(self.removed_ids)),
                            *(("relabels", len(e.rows)) for e in self.label_edits),
                            *(("feature-edits", len(e.rows)) for e in self.feature_edits if e.rows is not None)):
            if count > n_rows:
                raise ChangesError(
                    f"The change set {what} {count} rows but {data.name} has only {n_rows}; it names rows that do not exist."
                )
        try:
            positions_of = data.positions
            removed_pos = positions_of(sorted(self.removed_ids)) if self.removals else np.zeros(0, np.int64)
        except DataError as exc:
            raise ChangesError(f"Point removal: {exc}") from None

        # ---- labels: kept as edits (positions, labels), applied in order; the whole label vector is built only for
        # the corrected data set (O(n)), the edited rows' labels from the edits alone (O(k))
        label_edits: list[tuple[np.ndarray, np.ndarray]] = []
        label_pos: list[int] = []
        for edit in self.label_edits:
            try:
                pos = positions_of(edit.rows)
            except DataError as exc:
                raise ChangesError(f"Label edit: {exc}") from None
            labs = np.asarray(edit.labels, dtype=np.int64)
            if labs.max() >= data.n_classes:
                raise ChangesError(
                    f"Label edit: label {int(labs.max())} is out of range; {data.name} has {data.n_classes} classes (0..{data.n_classes - 1})."
                )
            label_edits.append((pos, labs))
            label_pos.extend(pos.tolist())

        def labels_at(positions: np.ndarray) -> np.ndarray:
            """The corrected labels of the rows at ``positions`` (sorted, unique; every edited row among them)."""
            out = np.asarray(data.y[positions]).copy()
            for pos, labs in label_edits:
                hit = np.searchsorted(positions, pos)
                inside = (hit < len(positions)) & (positions[np.minimum(hit, len(positions) - 1)] == pos)
                out[hit[inside]] = labs[inside]
            return out

        def new_labels() -> np.ndarray:
            return labels_at(np.arange(len(data)))

        # ---- features: expand to (row position, column) -> value, checking agreement. Cells are
        # kept as two flat arrays (key = position * n_cols + column, value), 16 bytes a cell.
        streaming = getattr(data, "streaming", False)  # features read from a source on demand: scanned in batches, edits kept as overrides
        X = None if streaming else data.X
        flat = None if streaming else (X if sp.issparse(X) else X.reshape(len(data), -1))
        key_parts, value_parts = [], []
        for edit in self.feature_edits:
            bad = [c for c in edit.columns if c >= n_cols]
            if bad:
                raise ChangesError(f"Feature edit: column(s) {bad[:5]} out of range; {data.name} has {n_cols} feature columns (0..{n_cols - 1}).")
            cols = np.asarray(edit.columns, dtype=np.int64)
            if edit.rows is None and streaming:
                rows_pos = data.nonzero_rows(cols)
                rows_pos = rows_pos[~np.isin(rows_pos, removed_pos)].astype(np.int64)
            elif edit.rows is None:
                sub = flat[:, cols]
                nz = (sub != 0)
                if sp.issparse(nz):
                    rows_pos = np.unique(nz.nonzero()[0])
                else:
                    rows_pos = np.flatnonzero(nz.any(axis=1))
                rows_pos = rows_pos[~np.isin(rows_pos, removed_pos)].astype(np.int64)
            else:
                try:
                    rows_pos = positions_of(edit.rows)
                except DataError as exc:
                    raise ChangesError(f"Feature edit: {exc}") from None
            key_parts.append((rows_pos[:, None] * n_cols + cols[None, :]).reshape(-1))
            value_parts.append(np.broadcast_to(np.asarray(edit.values, dtype=np.float64), (rows_pos.size, cols.size)).reshape(-1))
        keys = np.concatenate(key_parts) if key_parts else np.zeros(0, np.int64)
        values = np.concatenate(value_parts) if value_parts else np.zeros(0)
        if keys.size:
            order = np.argsort(keys, kind="stable")  # stable: the earlier edit's value comes first
            keys, values = keys[order], values[order]
            same = keys[1:] == keys[:-1]
            clash = np.flatnonzero(same & (values[1:] != values[:-1]))
            if clash.size:
                i = int(clash[0])
                p, c = divmod(int(keys[i]), n_cols)
                raise ChangesError(
                    f"Cell (row {int(data.ids[p])}, column {c}) is set to two different values ({values[i]} and {values[i + 1]})."
                )
            keep = np.ones(keys.size, dtype=bool)
            keep[1:] = ~same
            keys, values = keys[keep], values[keep]
        ps, cs = np.divmod(keys, n_cols)

        # drop cells that do not actually change anything? No: a row named in an edit is
        # affected even if the value is already the target (its gradient term cancels).
        feat_rows = np.unique(ps)
        edited = np.union1d(feat_rows, np.asarray(label_pos, dtype=np.int64)).astype(np.int64)
        if edited.size == 0 and removed_pos.size == 0:
            raise ChangesError(
                f"The change set affects no row of {data.name}: every feature it zeroes is already zero everywhere. Nothing to unlearn."
            )
        affected = np.union1d(edited, removed_pos)
        order = np.argsort(data.ids[affected], kind="stable")
        affected = affected[order]
        edited_sorted = affected[np.isin(affected, edited)]
        Z = data.subset(affected, name=f"{data.name}[Z]")

        def changed() -> Dataset:
            """The whole data set with the edits applied (O(n d); only for the corrected data set)."""
            if streaming:
                return data.with_features(ps, cs, values).replace(y=new_labels())
            if sp.issparse(flat) and not keys.size:
                new_X = flat.copy()
            elif sp.issparse(flat):
                new_X = flat.tolil(copy=True)
                new_X[ps, cs] = values
                new_X = new_X.tocsr()
                new_X.eliminate_zeros()
            else:
                new_X = flat.copy()
                new_X[ps, cs] = values
                new_X = new_X.reshape(X.shape)
            return data.replace(X=new_X, y=new_labels())

        def corrected() -> Dataset:
            keep = np.setdiff1d(np.arange(len(data)), removed_pos)
            return changed().subset(keep, name=f"{data.name}~")

        if streaming:
            Z_tilde = changed().subset(edited_sorted, name=f"{data.name}[Z~]")
        else:  # only the edited rows are copied: a request costs O(k d), not O(n d)
            Z_tilde = _edited_rows(data, edited_sorted, ps, cs, values, labels_at(np.sort(edited_sorted)),
                                   name=f"{data.name}[Z~]")
        return Resolved(np.asarray(data.ids[affected]), Z, Z_tilde, corrected)

    def apply(self, data: Dataset) -> Dataset:
        """The corrected dataset ``D~``."""
        return self.resolve(data).corrected

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "feature_edits": [
                {"columns": list(e.columns), "values": list(e.values), "rows": None if e.rows is None else list(e.rows)}
                for e in self.feature_edits
            ],
            "label_edits": [{"rows": list(e.rows), "labels": list(e.labels)} for e in self.label_edits],
            "removals": [{"rows": list(e.rows)} for e in self.removals],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise; write to ``path`` if given (atomically; a folder, link, device or a path
        inside a ledger folder is refused). Returns the JSON text."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            from unlearnkit.atomic import atomic_write

            atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), user_path=True)
        return text

    @classmethod
    def from_dict(cls, obj: dict, *, source: str | None = None, class_names=None) -> "Changes":
        """Build a change set from parsed JSON (see :meth:`from_json` for the schema).

        Every error is a :class:`ChangesError` naming ``source`` (a file name; default "change
        set"), the JSON path of the offending value (``$.removals[0].rows[2]``), what was
        expected there and what was found. With ``class_names`` (a model's classes, in code order), a label may
        also be given by its class name; a name that is not one of them is refused with the classes.
        """
        return _parse(obj, source or "change set", class_names)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None, class_names=None) -> "Changes":
        """Parse a change set from JSON text (UTF-8 bytes are accepted too).

        The schema (``format`` is optional; every section may be left out, but not all three)::

            {"format": "unlearnkit.changes/1",
             "feature_edits": [{"columns": [3], "values": [0.0], "rows": [5, 6]},
                               {"columns": [0, 1]}],
             "label_edits": [{"rows": [5, 6], "labels": [1, 0]}],
             "removals": [{"rows": [7, 8]}]}

        * ``feature_edits``: set feature ``columns`` (indices into the flattened feature vector)
          to ``values`` (one per column, or one for all; default ``[0.0]``) in the rows with ids
          ``rows``; ``"rows": null`` or no ``rows`` means every row where any of the columns is
          non-zero.
        * ``label_edits``: give the rows with ids ``rows`` the labels ``labels`` (one per row, or
          one for all).
        * ``removals``: remove the rows with ids ``rows``.

        Row ids, columns and labels are integers ``>= 0`` (a whole number written with a decimal
        point, ``5.0``, is accepted up to ``2**53``, where floating point stops being exact; larger ids
        must be written as integers); values are finite numbers (JSON has no
        NaN; ``NaN``/``Infinity`` literals are refused). Two shorthands are accepted because they
        can mean only one thing: a list of row ids in ``removals`` (``"removals": [5, 6, 7]``), and
        one entry object where a list of entries is expected (``"removals": {"rows": [5]}``); a
        single integer stands for a one-element list in ``rows``, ``columns``, ``values`` and
        ``labels``. Anything else (unknown keys, a key given twice, wrong types, nested lists) is
        a :class:`ChangesError` naming the JSON path, the expected shape and the value found::

            changes.json: $.label_edits[0].labels[1]: expected a label (an integer >= 0), got "cat"

        ``source`` names the text in error messages (:meth:`load` passes the file name). With ``class_names``
        (the classes of a model trained on text labels, in code order, or a dict name -> code), ``labels`` may
        name the classes (``"labels": ["cat", "dog"]``): each name becomes its code.
        """
        where = source or "change set"
        if isinstance(text, (bytes, bytearray)):
            text = _decode(bytes(text), "The change set" if source is None else f"Change-set file {source}")
        if not isinstance(text, str):
            raise ChangesError(f"A change set is JSON text (str or UTF-8 bytes); got {type(text).__name__}. "
                               "Use Changes.load for a file, Changes.from_dict for a dict.")
        if not text.strip():
            raise ChangesError(f"{'Change set' if source is None else f'Change-set file {source}'} is empty; "
                               "a change set is a JSON object such as "
                               '{"removals": [{"rows": [5, 6, 7]}]} (`unlearnkit changes remove 5 6 7` writes one).')
        try:
            obj = json.loads(text, object_pairs_hook=_JSONObject.from_pairs)
        except json.JSONDecodeError as exc:
            raise ChangesError(f"{_capital(where)} is not valid JSON: {exc}.") from None
        except ValueError as exc:  # an integer beyond Python's digit limit for str -> int
            raise ChangesError(f"{_capital(where)} holds a number too long to be a row id, label or column "
                               f"({str(exc)[:120]}); row ids are below 2**63.") from None
        except RecursionError:
            raise ChangesError(f"{_capital(where)} is nested too deeply to be a change set (lists inside lists without "
                               "end); see Changes.from_json for the format.") from None
        try:
            return _parse(obj, where, class_names)
        except RecursionError:
            raise ChangesError(f"{_capital(where)} is nested too deeply to be a change set; see Changes.from_json "
                               "for the format.") from None

    @classmethod
    def load(cls, path: str | Path, *, class_names=None) -> "Changes":
        """Read a change set from a JSON file (UTF-8, at most :data:`MAX_FILE_BYTES`).

        The schema is given in :meth:`from_json`; errors name the file and the JSON path, e.g.
        ``changes.json: $.removals[0]: expected a row id (an integer >= 0) or {"rows": [<row id>, ...]}, got "5"``.
        ``unlearnkit changes remove|relabel|edit`` writes such files from the shell. ``class_names``: see
        :meth:`from_json`.
        """
        path = Path(path)
        try:
            st = os.stat(path)
        except OSError:
            raise ChangesError(f"Change-set file not found: {path}.") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise ChangesError(f"Change-set file {path} is {kind}; give a JSON file.")
        if st.st_size > MAX_FILE_BYTES:
            raise ChangesError(
                f"Change-set file {path} has {st.st_size:,} bytes, beyond the limit of {MAX_FILE_BYTES:,} (64 MiB, about "
                "eight million row ids); split the request into several change sets."
            )
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ChangesError(f"Change-set file {path} cannot be read ({exc.strerror or exc}).") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ChangesError(f"Change-set file {path} is larger than {MAX_FILE_BYTES:,} bytes; split the request.")
        return cls.from_json(_decode(raw, f"Change-set file {path}"), source=str(path), class_names=class_names)

    def __repr__(self) -> str:
        parts = []
        if self.feature_edits:
            parts.append(f"{len(self.feature_edits)} feature edit(s)")
        if self.label_edits:
            parts.append(f"{sum(len(e.rows) for e in self.label_edits)} relabelled row(s)")
        if self.removals:
            parts.append(f"{len(self.removed_ids)} removed row(s)")
        return f"Changes({', '.join(parts)})"


# ---------------------------------------------------------------------------- JSON schema
_TOP_KEYS = ("format", "feature_edits", "label_edits", "removals")
_ENTRY_KEYS = {"feature_edits": ("columns", "values", "rows"), "label_edits": ("rows", "labels"), "removals": ("rows",)}
_REQUIRED = {"feature_edits": ("columns",), "label_edits": ("rows", "labels"), "removals": ("rows",)}
_ENTRY_SHAPE = {
    "feature_edits": '{"columns": [<column>, ...], "values": [<number>, ...], "rows": [<row id>, ...] or null}',
    "label_edits": '{"rows": [<row id>, ...], "labels": [<label>, ...]}',
    "removals": '{"rows": [<row id>, ...]}',
}
_NOUN = {"rows": "a row id", "columns": "a column", "labels": "a label"}


class _JSONObject(dict):
    """A parsed JSON object that remembers keys the text gave twice (``json`` keeps only the last)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs) -> "_JSONObject":
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set = set()
            obj.duplicates = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
        return obj


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _shown(value, depth: int = 0) -> str:
    """A short JSON rendering of ``value`` for an error message (long lists and strings are cut)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bool, int, float, str)) or value is None:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if depth >= 2:
        return "[...]" if isinstance(value, list) else "{...}"
    if isinstance(value, list):
        items = [_shown(v, depth + 1) for v in value[:3]]
        return "[" + ", ".join(items + (["..."] if len(value) > 3 else [])) + "]"
    if isinstance(value, dict):
        items = [f"{json.dumps(str(k))}: {_shown(v, depth + 1)}" for k, v in list(value.items())[:3]]
        return "{" + ", ".join(items + (["..."] if len(value) > 3 else [])) + "}"
    return type(value).__name__


def _got(value) -> str:
    """What was found, for "got ...": its kind and a short rendering (``a string "5"``), or ``null``."""
    return "null" if value is None else f"{_type_word(value)} {_shown(value)}"


def _type_word(value) -> str:
    for kind, word in ((bool, "a boolean"), (str, "a string"), (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return word
    return "null" if value is None else "a number"


class _Parser:
    """Walks parsed change-set JSON, naming the JSON path of anything that is not as the schema says."""

    def __init__(self, source: str, class_names=None) -> None:
        self.source = source
        # class names in code order, or a mapping name -> code (what the command line uses to keep names as given)
        self.codes = (None if class_names is None else class_names if isinstance(class_names, dict)
                      else {name: k for k, name in enumerate(class_names)})
        self.class_names = None if class_names is None else tuple(self.codes)

    def error(self, path: str, problem: str) -> ChangesError:
        return ChangesError(f"{self.source}: {path}: {problem}")

    def keys(self, obj: dict, path: str, valid: tuple[str, ...], shape: str = "") -> None:
        dup = getattr(obj, "duplicates", ())
        if dup:
            raise self.error(path, f"key {json.dumps(dup[0])} is given twice (JSON keeps only the last); give it once.")
        unknown = [k for k in obj if k not in valid]
        if unknown:
            import difflib

            close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
            hint = f" (did you mean {json.dumps(close[0])}?)" if close else ""
            expected = f" (expected {shape})" if shape else ""
            raise self.error(path, f"unknown key {json.dumps(unknown[0])}{hint}; valid keys: {', '.join(valid)}{expected}.")

    def integers(self, value, path: str, noun: str, *, entry_shape: str) -> list:
        """An integer >= 0, or a flat list of them (returned as a list)."""
        if isinstance(value, list):
            if len(value) > MAX_ROWS:
                raise self.error(path, f"holds {len(value):,} values, beyond the limit of {MAX_ROWS:,} per list "
                                       "(unlearnkit.data.changes.MAX_ROWS); split the request into several change sets.")
            for i, v in enumerate(value):
                if type(v) is int and 0 <= v <= _INT64_MAX:
                    continue
                if isinstance(v, list):
                    raise self.error(path, f"must be a flat list of integers; got nested lists ({path}[{i}] is {_shown(v)}).")
                self._integer(v, f"{path}[{i}]", noun)
            return value
        if isinstance(value, dict) or value is None or isinstance(value, str):
            raise self.error(path, f"expected a list of {noun.split(' ', 1)[1]}s [<int>, ...] (as in {entry_shape}), "
                                   f"got {_got(value)}.")
        self._integer(value, path, noun)
        return [value]

    def _integer(self, v, path: str, noun: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(path, f"expected {noun} (an integer >= 0), got {_got(v)}.")
        if isinstance(v, float) and not (math.isfinite(v) and v == int(v)):
            raise self.error(path, f"expected {noun} (an integer >= 0), got {_shown(v)}.")
        if isinstance(v, float) and abs(v) > 2**53:  # 1e17 may stand for any of several integers
            raise self.error(path, f"{noun} {_shown(v)} is written as a floating-point number, which is exact only up "
                                   "to 2**53; write it as an integer (digits only, no decimal point or exponent).")
        if v < 0:
            raise self.error(path, f"expected {noun} (an integer >= 0), got {_shown(v)}.")
        if v > _INT64_MAX:
            raise self.error(path, f"{noun} must be below 2**63 (a 64-bit integer); got {_shown(v)}.")

    def named_labels(self, value, path: str):
        """``value`` (a label or a list of them) with class names replaced by their codes in :attr:`class_names`."""
        codes = self.codes

        def code(v, at: str):
            if not isinstance(v, str):
                return v
            if v not in codes:
                known = ", ".join(f"{k}={n}" for k, n in enumerate(self.class_names[:20]))
                more = f", ... ({len(self.class_names)} classes)" if len(self.class_names) > 20 else ""
                shown = repr(v if len(v) <= 60 else v[:57] + "...")
                raise self.error(at, f"{shown} is not a class of the model; its classes are {known}{more}.")
            return codes[v]

        if isinstance(value, list):
            return [code(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return code(value, path)

    def numbers(self, value, path: str) -> list:
        values = value if isinstance(value, list) else [value]
        if isinstance(value, (dict, str)) or value is None:
            raise self.error(path, f"expected a list of numbers [<number>, ...], got {_got(value)}.")
        if len(values) > MAX_ROWS:
            raise self.error(path, f"holds {len(values):,} values, beyond the limit of {MAX_ROWS:,} per list.")
        for i, v in enumerate(values):
            at = f"{path}[{i}]" if isinstance(value, list) else path
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.error(at, f"expected a number, got {_got(v)}.")
            if isinstance(v, float) and not math.isfinite(v):
                raise self.error(at, f"expected a finite number, got {_shown(v)} (JSON has no NaN or infinity).")
            if isinstance(v, int) and abs(v) > 1e308:
                raise self.error(at, f"expected a finite number, got an integer of {len(str(abs(v)))} digits.")
        return values

    def entries(self, obj: dict, section: str):
        """``(path, entry)`` pairs of a section; bare row ids in ``removals`` are gathered into one entry."""
        value = obj.get(section, [])
        path = f"$.{section}"
        shape = _ENTRY_SHAPE[section]
        if isinstance(value, dict):
            return [(path, value)]
        if not isinstance(value, list):
            ids = " or row ids" if section == "removals" else ""
            raise self.error(path, f"expected a list of entries {shape}{ids}, got {_got(value)}.")
        out, bare = [], []
        for i, e in enumerate(value):
            if isinstance(e, dict):
                out.append((f"{path}[{i}]", e))
            elif section == "removals" and not isinstance(e, list):
                if not (type(e) is int and 0 <= e <= _INT64_MAX):
                    self._integer(e, f"{path}[{i}]", "a row id")
                bare.append(e)
            else:
                ids = ' or a row id (an integer >= 0)' if section == "removals" else ""
                raise self.error(f"{path}[{i}]", f"expected an entry {shape}{ids}, got {_got(e)}.")
        if bare:
            out.append((path, {"rows": bare}))
        return out

    def edit(self, section: str, path: str, entry: dict):
        self.keys(entry, path, _ENTRY_KEYS[section], _ENTRY_SHAPE[section])
        missing = [k for k in _REQUIRED[section] if k not in entry]
        if missing:
            raise self.error(path, f"missing key {json.dumps(missing[0])}; expected {_ENTRY_SHAPE[section]}.")
        fields = {}
        for key in _ENTRY_KEYS[section]:
            if key not in entry or (key == "rows" and section == "feature_edits" and entry[key] is None):
                continue
            if key == "values":
                fields[key] = self.numbers(entry[key], f"{path}.{key}")
            elif key == "labels" and self.class_names is not None:
                fields[key] = self.integers(self.named_labels(entry[key], f"{path}.{key}"), f"{path}.{key}",
                                            _NOUN[key], entry_shape=_ENTRY_SHAPE[section])
            else:
                fields[key] = self.integers(entry[key], f"{path}.{key}", _NOUN[key], entry_shape=_ENTRY_SHAPE[section])
        try:
            if section == "feature_edits":
                return FeatureEdit(fields["columns"], fields.get("values", [0.0]), fields.get("rows"))
            if section == "label_edits":
                return LabelEdit(fields["rows"], fields["labels"])
            return PointRemoval(fields["rows"])
        except ChangesError as exc:
            raise self.error(path, str(exc)) from None


def _parse(obj, source: str, class_names=None) -> Changes:
    """A :class:`Changes` from parsed JSON, every error naming ``source`` and the JSON path; labels may be names of
    ``class_names``."""
    parser = _Parser(source, class_names)
    if not isinstance(obj, dict):
        raise parser.error("$", 'a change set must be a JSON object {"feature_edits": [...], "label_edits": [...], '
                                f'"removals": [...]}}; got {_got(obj)}.')
    parser.keys(obj, "$", _TOP_KEYS)
    if "format" in obj and obj["format"] != FORMAT:
        raise parser.error("$.format", f"unsupported change-set format {_shown(obj['format'])}; expected {FORMAT!r} "
                                       "(or leave the key out).")
    edits = {section: tuple(parser.edit(section, path, entry) for path, entry in parser.entries(obj, section))
             for section in ("feature_edits", "label_edits", "removals")}
    try:
        return Changes(edits["feature_edits"], edits["label_edits"], edits["removals"])
    except ChangesError as exc:
        raise ChangesError(f"{source}: {exc}") from None
