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
set against a dataset and returns ``Z``, ``Z~`` and the corrected dataset.

Validation rules (each failure is a :class:`~unlearnkit.errors.ChangesError` naming it):

* an empty change set, or an edit with no rows or no columns;
* negative, non-integer or out-of-range rows (ids unknown to the dataset), columns or labels;
* nested lists of rows, columns or labels, and a list longer than :data:`MAX_ROWS`;
* NaN or infinite feature values;
* two edits of the same cell (feature cell or label) that disagree;
* a row that is both removed and edited.
"""

from __future__ import annotations

import json
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
            raise ChangesError(f"A feature edit lists a column twice: {sorted(cols)}.")
        try:
            vals = np.asarray(self.values, dtype=np.float64).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise ChangesError(f"Feature values must be numbers ({exc}).") from None
        if vals.size == 1 and len(cols) > 1:
            vals = np.repeat(vals, len(cols))
        if vals.size != len(cols):
            raise ChangesError(f"A feature edit has {len(cols)} columns but {vals.size} values; give one value per column or one for all.")
        if not np.all(np.isfinite(vals)):
            raise ChangesError(f"Feature values must be finite; got {vals.tolist()}.")
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
        # feature cells with explicit rows: the same cell must not get two values. Compared edit
        # against edit (shared columns first), so the cost never grows with rows x columns.
        explicit = [e for e in self.feature_edits if e.rows is not None]
        for edit in explicit:
            clash = sorted(removed.intersection(edit.rows))
            if clash:
                raise ChangesError(f"Rows {clash[:5]} are both removed and feature-edited; drop one of the two requests.")
        for i, a in enumerate(explicit):
            a_values = dict(zip(a.columns, a.values))
            for b in explicit[i + 1:]:
                differ = [(c, a_values[c], v) for c, v in zip(b.columns, b.values) if c in a_values and a_values[c] != v]
                if not differ:
                    continue
                common = sorted(set(a.rows).intersection(b.rows))
                if common:
                    c, old, new = differ[0]
                    raise ChangesError(f"Cell (row {common[0]}, column {c}) is set to two different values ({old} and {new}).")

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
    def from_dict(cls, obj: dict) -> "Changes":
        if not isinstance(obj, dict):
            raise ChangesError(f"A change set must be a JSON object; got {type(obj).__name__}.")
        unknown = set(obj) - {"format", "feature_edits", "label_edits", "removals"}
        if unknown:
            raise ChangesError(f"Unknown keys in change set: {sorted(unknown)}; valid: feature_edits, label_edits, removals.")
        if obj.get("format", FORMAT) != FORMAT:
            raise ChangesError(f"Unsupported change-set format {obj.get('format')!r}; expected {FORMAT!r}.")
        entry_keys = {"feature_edits": {"columns", "values", "rows"}, "label_edits": {"rows", "labels"}, "removals": {"rows"}}
        for section, valid_keys in entry_keys.items():
            entries = obj.get(section, [])
            for e in entries if isinstance(entries, list) else ():
                extra = set(e) - valid_keys if isinstance(e, dict) else set()
                if extra:
                    raise ChangesError(f"Unknown keys {sorted(extra)} in an entry of {section}; valid: {sorted(valid_keys)}.")
        try:
            return cls(
                tuple(FeatureEdit(e["columns"], e.get("values", [0.0]), e.get("rows")) for e in obj.get("feature_edits", [])),
                tuple(LabelEdit(e["rows"], e["labels"]) for e in obj.get("label_edits", [])),
                tuple(PointRemoval(e["rows"]) for e in obj.get("removals", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ChangesError(f"Malformed change set: missing or wrong field {exc}.") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "Changes":
        """Parse a change set from JSON text (UTF-8 bytes are accepted too)."""
        if isinstance(text, (bytes, bytearray)):
            text = _decode(bytes(text), "The change set")
        if not isinstance(text, str):
            raise ChangesError(f"A change set is JSON text (str or UTF-8 bytes); got {type(text).__name__}. "
                               "Use Changes.load for a file, Changes.from_dict for a dict.")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChangesError(f"Change set is not valid JSON: {exc}.") from None
        except ValueError as exc:  # an integer beyond Python's digit limit for str -> int
            raise ChangesError(f"Change set holds a number too long to be a row id, label or column "
                               f"({str(exc)[:120]}); row ids are below 2**63.") from None
        except RecursionError:
            raise ChangesError("Change set is nested too deeply to be a change set (lists inside lists without end); "
                               "see Changes.to_json for the format.") from None
        try:
            return cls.from_dict(obj)
        except RecursionError:
            raise ChangesError("Change set is nested too deeply to be a change set; see Changes.to_json for the format.") from None

    @classmethod
    def load(cls, path: str | Path) -> "Changes":
        """Read a change set from a JSON file (UTF-8, at most :data:`MAX_FILE_BYTES`)."""
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
        return cls.from_json(_decode(raw, f"Change-set file {path}"))

    def __repr__(self) -> str:
        parts = []
        if self.feature_edits:
            parts.append(f"{len(self.feature_edits)} feature edit(s)")
        if self.label_edits:
            parts.append(f"{sum(len(e.rows) for e in self.label_edits)} relabelled row(s)")
        if self.removals:
            parts.append(f"{len(self.removed_ids)} removed row(s)")
        return f"Changes({', '.join(parts)})"
