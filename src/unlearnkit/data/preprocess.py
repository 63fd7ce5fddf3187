"""Preprocessing stored with a model: how its data is read, and how its features are scaled.

A model trained on the command line records, in its file's metadata (key ``"preprocess"``),
everything needed to read new data the way its training data was read:

``label_column``, ``id_column``
    Which CSV column holds the labels and which the row ids (see
    :func:`~unlearnkit.data.readers.read_csv`).
``class_names``
    The class names of text labels, in code order: code ``k`` is ``class_names[k]``. The codes
    are the positions of the *sorted* unique labels of the training file; every later file is
    mapped with the stored names, so the same name always gets the same code, and a name the
    model never saw is refused.
``mean``, ``std``
    Standardisation (``train --standardize``): each feature column ``j`` becomes
    ``(x_j - mean_j) / std_j``, with the mean and (population) standard deviation of the
    training data. A column that is constant in the training data has ``std_j = 1``.
``row_scale``
    Row scaling (``ledger init --scale-rows``): every row is then divided by this one constant,
    the largest row norm of the (standardised) training data, so that ``||x|| <= 1`` as the
    certified-unlearning bounds assume.

The transform is column-wise affine, ``x'_j = ((x_j - mean_j) / std_j) / row_scale``, so a
change set's feature values, given in the data's own (raw) units, map through the same formula:
:meth:`Preprocessing.map_changes`. A feature edit without rows ("wherever the column is
non-zero") selects the rows whose raw value is non-zero, i.e. whose transformed value differs
from the transform of 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.changes import Changes, FeatureEdit
from unlearnkit.data.dataset import Dataset
from unlearnkit.data.readers import MAX_CLASS_NAME as _MAX_NAME
from unlearnkit.errors import ChangesError, DataError

__all__ = ["FORMAT", "METADATA_KEY", "Preprocessing", "check_prepared", "prepare", "scale_warning", "row_norms"]

log = logging.getLogger(__name__)

RAW_FINGERPRINT_KEY = "raw_data_fingerprint"
"""The model-file metadata key of the fingerprint of the training data in its own (raw) units, stored beside
``data_fingerprint`` (the data as the model saw it) when the model scales its features."""

FORMAT = "unlearnkit.preprocess/1"
METADATA_KEY = "preprocess"
"""The key of a model file's metadata (and of a ledger's metadata) that holds its preprocessing."""

#: Feature columns whose standard deviations differ by more than this factor trigger
#: :func:`scale_warning`, and so do raw feature values beyond :data:`LARGE_VALUE`.
SCALE_RATIO = 1e3
LARGE_VALUE = 1e3


def _column(value, option: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise DataError(f"{option} must be a column name or a 0-based index; got {value!r}.")
    return int(value) if isinstance(value, (int, np.integer)) else value


def parse_column(text: str | None) -> str | int | None:
    """A ``--label-column`` / ``--id-column`` value: an integer is a 0-based index (negative from the
    end), anything else a header name."""
    if text is None:
        return None
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        return text


@dataclass(frozen=True)
class Preprocessing:
    """How a model's data is read and scaled (see the module docstring); all fields optional.

    Parameters
    ----------
    label_column, id_column:
        CSV columns (header name or 0-based index) of the labels and the row ids.
    class_names:
        Names of the classes in code order (text labels).
    mean, std:
        Per-column standardisation statistics (flattened feature columns), or None.
    row_scale:
        One constant every (standardised) row is divided by, or None.
    """

    label_column: str | int | None = None
    id_column: str | int | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    row_scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_column", _column(self.label_column, "label_column"))
        object.__setattr__(self, "id_column", _column(self.id_column, "id_column"))
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not all(isinstance(n, str) and len(n) <= _MAX_NAME for n in names):
                raise DataError(f"class_names must be a list of strings (each at most {_MAX_NAME} characters).")
            if len(set(names)) != len(names) or len(names) < 2:
                raise DataError("class_names must be at least two distinct names.")
            object.__setattr__(self, "class_names", tuple(names))
        if (self.mean is None) != (self.std is None):
            raise DataError("standardisation needs both mean and std (one value per feature column).")
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
            std = np.asarray(self.std, dtype=np.float64).reshape(-1)
            if mean.shape != std.shape or mean.size == 0:
                raise DataError(f"standardisation has {mean.size} means and {std.size} standard deviations; "
                                "give one of each per feature column.")
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
                raise DataError("standardisation statistics must be finite, with every std > 0.")
            object.__setattr__(self, "mean", tuple(float(v) for v in mean))
            object.__setattr__(self, "std", tuple(float(v) for v in std))
        if self.row_scale is not None:
            if isinstance(self.row_scale, bool) or not isinstance(self.row_scale, (int, float, np.floating, np.integer)) \
                    or not (math.isfinite(float(self.row_scale)) and float(self.row_scale) > 0):
                raise DataError(f"row_scale must be a finite number > 0; got {self.row_scale!r}.")
            object.__setattr__(self, "row_scale", float(self.row_scale))

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(cls, data: Dataset, *, standardize: bool = False, scale_rows: bool = False,
            label_column: str | int | None = None, id_column: str | int | None = None) -> "Preprocessing":
        """The preprocessing of training data ``data`` (in its raw units): its class names, and with
        ``standardize`` its column means and standard deviations (constant columns: std 1), with
        ``scale_rows`` the largest row norm after standardising (1 if every row is zero)."""
        mean = std = None
        if standardize:
            if data.is_sparse:
                raise DataError(f"{data.name}: standardising centres every column, which would make a sparse matrix "
                                "dense; leave out --standardize (standardize=True) for sparse data.")
            if len(data) == 0:
                raise DataError(f"{data.name}: cannot standardise with the statistics of an empty data set.")
            X = np.asarray(data.X, dtype=np.float64).reshape(len(data), -1)
            mean_a = X.mean(axis=0)
            std_a = X.std(axis=0)
            std_a[~(std_a > 0)] = 1.0
            mean, std = tuple(mean_a.tolist()), tuple(std_a.tolist())
        prep = cls(label_column, id_column, data.class_names, mean, std)
        if scale_rows:
            top = float(row_norms(prep.apply(data, dtype=np.float64)).max()) if len(data) else 0.0
            prep = replace(prep, row_scale=top if top > 0 else 1.0)
        return prep

    @classmethod
    def from_dict(cls, obj, *, where: str = "the model file") -> "Preprocessing":
        """Read :meth:`to_dict`'s output back (from a file: refused by name if malformed)."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise DataError(f"{where}: its stored preprocessing is not an object; the file is corrupt or was edited.")
        if obj.get("format", FORMAT) != FORMAT:
            raise DataError(f"{where}: stored preprocessing of unknown format {obj.get('format')!r}; expected {FORMAT!r}.")
        fields = {"label_column", "id_column", "class_names", "mean", "std", "row_scale"}
        try:
            return cls(**{k: obj.get(k) for k in fields})
        except (DataError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: its stored preprocessing is malformed ({exc}).") from None

    @classmethod
    def of_model(cls, model, *, where: str = "the model file") -> "Preprocessing":
        """The preprocessing a model file recorded (nothing, for a model trained without any)."""
        metadata = getattr(model, "metadata", None) or {}
        return cls.from_dict(metadata.get(METADATA_KEY), where=where)

    def to_dict(self) -> dict:
        """JSON-safe: plain lists and numbers (model files and ledgers store it as is)."""
        return {"format": FORMAT, "label_column": self.label_column, "id_column": self.id_column,
                "class_names": None if self.class_names is None else list(self.class_names),
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "row_scale": self.row_scale}

    def difference(self, other: "Preprocessing", *, mine: str = "the original model",
                   theirs: str = "this one") -> str | None:
        """What differs between this preprocessing and ``other``, in words (None if they are the same)."""
        if self == other:
            return None
        out = []
        for field, what in (("label_column", "label column"), ("id_column", "id column")):
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                out.append(f"{what} {a!r} in {mine}, {b!r} in {theirs}")
        if self.class_names != other.class_names:
            shown = lambda n: "none (integer labels)" if n is None else ", ".join(n[:5]) + (", ..." if len(n) > 5 else "")
            out.append(f"class names {shown(self.class_names)} in {mine}, {shown(other.class_names)} in {theirs}")
        if (self.mean, self.std) != (other.mean, other.std):
            said = lambda p: "standardised" if p.mean is not None else "not standardised"
            out.append(f"{mine} {said(self)}, {theirs} {said(other)}" if (self.mean is None) != (other.mean is None)
                       else "standardised with other means and standard deviations")
        if self.row_scale != other.row_scale:
            said = lambda v: "no row scaling" if v is None else f"row scale {v:.6g}"
            out.append(f"{said(self.row_scale)} in {mine}, {said(other.row_scale)} in {theirs}")
        return "; ".join(out)

    @property
    def is_empty(self) -> bool:
        return self == Preprocessing()

    @property
    def scales(self) -> bool:
        """Whether features are transformed (standardised or row-scaled)."""
        return self.mean is not None or self.row_scale is not None

    # ------------------------------------------------------------------ reading
    def with_options(self, label_column: str | int | None = None, id_column: str | int | None = None, *,
                     header=None) -> "Preprocessing":
        """These stored options completed by explicit ones; an explicit option that contradicts a stored one is
        refused (leave it out to use the stored one). ``header``: a callable giving the file's column names (or
        None), to see that a name and an index denote the same column."""
        label_column, id_column = _column(label_column, "--label-column"), _column(id_column, "--id-column")
        names = None
        for option, given, stored in (("--label-column", label_column, self.label_column),
                                      ("--id-column", id_column, self.id_column)):
            if given is not None and stored is not None and given != stored and header is not None \
                    and isinstance(given, str) != isinstance(stored, str):
                names = header() if names is None else names
                if names and _column_position(given, names) == _column_position(stored, names) is not None:
                    continue  # the same column, once by name and once by index
            if given is not None and stored is not None and given != stored:
                raise DataError(f"{option} {given!r} contradicts the model, which was trained with {option} {stored!r} "
                                "(stored in its file): leave the option out to read the data the same way, or train "
                                "a model with the new layout.")
        return replace(self, label_column=self.label_column if label_column is None or self.label_column is not None
                       else label_column,
                       id_column=self.id_column if id_column is None or self.id_column is not None else id_column)

    def load(self, source: str, *, label_column: str | int | None = None,
             id_column: str | int | None = None) -> Dataset:
        """Load ``source`` (a data-source string) in raw units, read like the training data: the stored CSV columns
        (explicit ones checked against them) and class names. Not yet scaled: see :meth:`apply`."""
        import unlearnkit.data as data_pkg
        from unlearnkit.data.sources import is_csv

        merged = self.with_options(label_column, id_column, header=lambda: _csv_header(source))
        if not is_csv(source):  # explicit options are refused there by name; stored ones apply to CSV files only
            options = {"label_column": _column(label_column, "--label-column"), "id_column": _column(id_column, "--id-column")}
        else:
            options = {"label_column": merged.label_column, "id_column": merged.id_column, "class_names": self.class_names}
        options = {k: v for k, v in options.items() if v is not None}
        return data_pkg.load(source, **options)

    # ------------------------------------------------------------------ the transform
    def _check_width(self, d: int, what: str) -> None:
        if self.mean is not None and len(self.mean) != d:
            raise DataError(f"{what} has {d} feature columns, but the stored standardisation has {len(self.mean)}: "
                            "the data does not fit the model.")

    def transform(self, X: np.ndarray, dtype=None) -> np.ndarray:
        """``X`` (``(n, *feature_shape)``, raw units) transformed, in ``dtype`` (default: ``X``'s floating dtype,
        float32 for integers). The arithmetic is float64 either way; pass ``np.float64`` to keep it exact enough to
        compare with :meth:`map_values` (the ledger does: its "non-zero" tests and row-norm bounds need it)."""
        if not self.scales:
            return X if dtype is None else np.asarray(X, dtype=dtype)
        X = np.asarray(X)
        if dtype is None:
            dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.float32
        flat = X.reshape(len(X), -1).astype(np.float64)
        self._check_width(flat.shape[1], "the data")
        return self._forward(flat, slice(None)).astype(dtype).reshape(X.shape)

    def _forward(self, values: np.ndarray, columns) -> np.ndarray:
        """The affine map in float64 on ``values`` of the given columns: one formula for data and edits alike."""
        out = values
        if self.mean is not None:
            out = (out - np.asarray(self.mean)[columns]) / np.asarray(self.std)[columns]
        if self.row_scale is not None:
            out = out / self.row_scale
        return out

    def map_values(self, columns, values) -> np.ndarray:
        """Feature values of ``columns`` given in raw units, in the model's units (float64)."""
        cols = np.asarray(columns, dtype=np.int64)
        return self._forward(np.asarray(values, dtype=np.float64), cols)

    def apply(self, data: Dataset, *, dtype=None) -> Dataset:
        """``data`` (raw units) in the model's units: features transformed (in ``dtype``, see :meth:`transform`); ids,
        labels and names kept. The class names are attached when the data has none (data whose labels are codes)."""
        out = data
        if self.scales:
            if data.is_sparse:
                if self.mean is not None:
                    raise DataError(f"{data.name}: the model standardises its features, which would make this sparse "
                                    "matrix dense; convert it with data.replace(X=data.X.toarray()).")
                out = data.replace(X=sp.csr_matrix(data.X * (1.0 / self.row_scale), dtype=dtype or data.X.dtype))
            else:
                self._check_width(data.n_features, data.name)
                out = data.replace(X=self.transform(data.X, dtype))
        elif dtype is not None and not data.is_sparse and np.asarray(data.X).dtype != dtype:
            out = data.replace(X=np.asarray(data.X, dtype=dtype))
        if self.class_names is not None and out.class_names is None and out.n_classes == len(self.class_names):
            out = out.replace(class_names=self.class_names)
        return out

    def map_changes(self, changes: Changes, data=None) -> Changes:
        """``changes`` with feature values in raw units mapped to the model's units.

        ``data`` (the model's data, already transformed: a :class:`Dataset`, or a callable
        ``(columns, zero) -> ids`` giving the ids of rows where any of ``columns`` differs from
        ``zero``) is needed only for a feature edit without rows on a standardised column: its rows
        are those whose raw value is non-zero, found here and written out explicitly. Label edits and
        removals are unchanged.
        """
        if not self.scales or not changes.feature_edits:
            return changes
        removed = changes.removed_ids
        edits = []
        for edit in changes.feature_edits:
            cols = np.asarray(edit.columns, dtype=np.int64)
            if self.mean is not None and int(cols.max()) >= len(self.mean):
                bad = [int(c) for c in cols if c >= len(self.mean)]
                raise ChangesError(f"Feature edit: column(s) {bad[:5]} out of range; the model's data has "
                                   f"{len(self.mean)} feature columns (0..{len(self.mean) - 1}).")
            values = self.map_values(cols, edit.values)
            rows = edit.rows
            if rows is None and self.mean is not None and np.any(np.asarray(self.mean)[cols] != 0):
                if data is None:
                    raise ChangesError("A feature edit without rows on standardised columns needs the data to find "
                                       "the rows where the columns are non-zero; give explicit rows.")
                zero = self._forward(np.zeros(cols.size), cols)
                found = _nonzero_ids(data, cols, zero) if isinstance(data, Dataset) else data(cols, zero)
                rows = sorted(set(int(i) for i in found) - removed)
                if not rows:
                    continue  # the column is zero (in raw units) everywhere: nothing to edit
            edits.append(FeatureEdit(tuple(int(c) for c in cols), tuple(float(v) for v in values), rows))
        if not (edits or changes.label_edits or changes.removals):
            raise ChangesError("The change set affects no row: every feature it sets is already zero everywhere "
                               "(in the data's own units). Nothing to unlearn.")
        return Changes(feature_edits=tuple(edits), label_edits=changes.label_edits, removals=changes.removals)

    def load_changes(self, path) -> Changes:
        """Read a change-set file (:meth:`Changes.load`, as strictly). With class names, a label edit may name the
        classes instead of giving their codes (``"labels": ["cat", "dog"]``); an unknown name is refused with the
        classes."""
        return Changes.load(path, class_names=self.class_names)

    def summary(self) -> list[tuple[str, str]]:
        """``(what, value)`` lines for display."""
        out = []
        if self.label_column is not None:
            out.append(("label column", repr(self.label_column)))
        if self.id_column is not None:
            out.append(("id column", repr(self.id_column)))
        if self.class_names is not None:
            out.append(("class names", ", ".join(f"{k}={n}" for k, n in enumerate(self.class_names))))
        if self.mean is not None:
            out.append(("standardised", f"{len(self.mean)} columns (training mean and std)"))
        if self.row_scale is not None:
            out.append(("row scale", f"rows divided by {self.row_scale:.6g}"))
        return out


def prepare(data: Dataset, model) -> Dataset:
    """``data``, in its own (raw) units, read into the units ``model`` was trained in: the standardisation and row
    scaling its file stores (see the module docstring), and its class names. A model without stored preprocessing
    gets ``data`` back unchanged. Use it before :func:`unlearnkit.unlearn` or :func:`unlearnkit.metrics.evaluate`
    with a model trained by ``unlearnkit train --standardize`` (or a ledger's model)::

        model = uk.load_model("pets.pt")
        data = uk.data.prepare(uk.data.load("pets.csv:train", label_column="species", id_column="id"), model)
    """
    return Preprocessing.of_model(model).apply(data)


def check_prepared(model, data: Dataset, *, what: str = "data") -> None:
    """Refuse ``data`` in raw units for a ``model`` that scales its features (its file stores preprocessing).

    Costs nothing for a model without stored scaling. Otherwise: :class:`DataError` when ``data`` is the model's
    training data in raw units (its fingerprint is the one the file stored for them); a logged warning when ``data``
    merely looks unscaled (the column means of its first rows are nearer the stored means than the standardised
    data's 0, or its rows are longer than the row scaling allows).
    """
    metadata = getattr(model, "metadata", None)
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        return
    prep = Preprocessing.of_model(model)
    if not prep.scales or not isinstance(data, Dataset) or not hasattr(data, "X"):
        return
    fix = (f"apply the model's preprocessing first: {what} = unlearnkit.data.prepare({what}, model) (or give the "
           "data in the model's units)")
    steps = " and ".join(s for s, on in (("standardised", prep.mean is not None),
                                        ("row-scaled", prep.row_scale is not None)) if on)
    raw = metadata.get(RAW_FINGERPRINT_KEY)
    if raw is not None and raw != metadata.get("data_fingerprint") and data.fingerprint() == raw:
        raise DataError(f"{data.name}: this is the model's training data in its own units, but the model was trained "
                        f"on it {steps} (stored in its file): {fix}.")
    try:
        head = data.dense_rows(0, min(len(data), 1000))
        flat = np.asarray(head, dtype=np.float64).reshape(len(head), -1)
    except Exception:  # streamed or unusual data: nothing cheap to look at
        return
    if not len(flat) or (prep.mean is not None and flat.shape[1] != len(prep.mean)):
        return
    looks_raw = False
    if prep.mean is not None:  # scaled data has column means near 0, raw data near the stored means
        mean, std = np.asarray(prep.mean), np.asarray(prep.std)
        sample = flat.mean(axis=0)
        moved = np.abs(mean) > 0.25 * std  # columns where the two readings are far apart
        looks_raw = bool(moved.any() and np.median(np.abs(sample - mean)[moved] / std[moved])
                         < np.median(np.abs(sample)[moved] / std[moved]))
    elif prep.row_scale is not None and prep.row_scale > 2.0:
        looks_raw = float(np.sqrt(np.einsum("ij,ij->i", flat, flat)).max()) > 2.0
    if looks_raw:
        log.warning("%s looks unscaled, but the model was trained on %s data (stored in its file); %s.",
                    data.name, steps, fix)


def _column_position(column, names: list[str]) -> int | None:
    """The 0-based position of a column given by name or (possibly negative) index, or None."""
    if isinstance(column, str):
        return names.index(column) if column in names else None
    return int(column) % len(names) if -len(names) <= int(column) < len(names) else None


def _csv_header(source: str) -> list[str] | None:
    """The first row of the CSV file a source string names (its header, if it has one); None if unreadable."""
    import csv

    spec = source.strip()
    head, sep, tail = spec.rpartition(":")
    path = head if sep and tail.lower() in ("train", "test") and head else spec
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                if any(cell.strip() for cell in row):
                    return [cell.strip() for cell in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _nonzero_ids(data: Dataset, cols: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Ids of the rows of a (transformed) data set where any of ``cols`` differs from ``zero`` (cast to the data's
    dtype, as the transform casts the data)."""
    if data.is_sparse:
        block = np.asarray(data.X[:, cols].toarray())
    else:
        block = np.asarray(data.X).reshape(len(data), -1)[:, cols]
    return np.asarray(data.ids)[np.any(block != zero.astype(block.dtype), axis=1)]


def row_norms(data: Dataset) -> np.ndarray:
    """The Euclidean norm of every row (flattened), in float64."""
    if data.is_sparse:
        X = data.X
        return np.sqrt(np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).reshape(-1))
    flat = np.asarray(data.X, dtype=np.float64).reshape(len(data), -1)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat)) if flat.size else np.zeros(len(data))


def scale_warning(data: Dataset) -> str | None:
    """Why ``data`` (tabular, raw units) should be standardised before training, or None.

    Said when the feature columns' standard deviations differ by more than :data:`SCALE_RATIO`
    (an L2 penalty and one learning rate then treat them very unequally, and curvature-based
    updates become ill-conditioned), or when raw values exceed :data:`LARGE_VALUE`. Images
    (feature shapes of more than one axis) are left alone: their pixels share one scale.
    """
    if len(data) < 2 or len(data.feature_shape) != 1:
        return None
    if data.is_sparse:
        X = data.X
        mean = np.asarray(X.mean(axis=0), dtype=np.float64).reshape(-1)
        sq = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).reshape(-1)
        std = np.sqrt(np.maximum(sq - mean**2, 0.0))
        top = float(np.abs(X).max()) if X.nnz else 0.0
    else:
        flat = np.asarray(data.X, dtype=np.float64).reshape(len(data), -1)
        std = flat.std(axis=0)
        top = float(np.abs(flat).max()) if flat.size else 0.0
    names = data.feature_names or tuple(f"column {j}" for j in range(len(std)))
    varying = np.flatnonzero(std > 0)
    if varying.size >= 2:
        hi, lo = varying[np.argmax(std[varying])], varying[np.argmin(std[varying])]
        ratio = float(std[hi] / std[lo])
        if ratio > SCALE_RATIO:
            return (f"the feature columns of {data.name} differ in scale by a factor of {ratio:.3g} (standard deviation "
                    f"{std[hi]:.3g} in {names[hi]!r}, {std[lo]:.3g} in {names[lo]!r})")
    if top > LARGE_VALUE:
        return f"the features of {data.name} reach {top:.3g} in absolute value"
    return None
