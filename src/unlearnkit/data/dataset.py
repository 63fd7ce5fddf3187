"""The in-memory dataset type every layer of unlearnkit works on.

A :class:`Dataset` holds features ``X``, integer labels ``y`` and a *stable row id* per row.
Row ids, not positions, are what :class:`~unlearnkit.data.changes.Changes` refer to: after a
removal the positions of later rows shift, their ids do not, so edit requests stay meaningful
when they are applied one after another.

``X`` is a dense ``numpy`` array of shape ``(n, *feature_shape)`` (``feature_shape`` is
``(d,)`` for tabular data and ``(C, H, W)`` for images) or a ``scipy.sparse`` CSR matrix of
shape ``(n, d)``. Feature *columns* always index the flattened feature vector, so a pixel of
an image is column ``c * H * W + h * W + w``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from unlearnkit.errors import DataError

#: Largest number of classes a data set may have. Labels are compact class codes
#: ``0..n_classes-1``; a label far beyond the data (say 300000000 in a file of a few thousand rows)
#: would make every model that many outputs wide, so it is refused before anything is built.
MAX_CLASSES = 100_000

_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features, labels and stable row ids, validated on construction.

    Parameters
    ----------
    X:
        ``(n, *feature_shape)`` float array, or a ``(n, d)`` CSR matrix.
    y:
        ``(n,)`` integer labels in ``[0, n_classes)``.
    ids:
        ``(n,)`` unique non-negative integer row ids; defaults to ``arange(n)``.
    n_classes:
        Number of classes; defaults to ``max(y) + 1`` (at least 2).
    name:
        A label for messages and reports.
    feature_names:
        Optional names of the ``d`` flattened feature columns.
    class_names:
        Optional names of the classes, one per class code: ``class_names[k]`` is the name of
        label ``k``. A CSV file with text labels gets them (sorted unique values, see
        :func:`~unlearnkit.data.readers.read_csv`).
    """

    X: np.ndarray | sp.csr_matrix
    y: np.ndarray
    ids: np.ndarray | None = None
    n_classes: int | None = None
    name: str = "data"
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    _id_index: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        X = self.X
        if sp.issparse(X):
            if X.ndim != 2:
                raise DataError(f"{self.name}: a sparse X must be 2-D, got shape {X.shape}.")
            X = sp.csr_matrix(X, dtype=np.float64 if X.dtype == np.float64 else np.float32)
            X.sort_indices()
            values = X.data
        else:
            X = np.asarray(X)
            if X.ndim < 2:
                raise DataError(
                    f"{self.name}: X must have shape (n, *feature_shape); got shape {X.shape}. "
                    "Reshape a single feature vector to (1, d)."
                )
            if X.dtype.kind not in "biuf":
                raise DataError(
                    f"{self.name}: X must hold numbers (integers or floats); got dtype {X.dtype}. "
                    "Convert text or object columns to numbers first."
                )
            if not np.issubdtype(X.dtype, np.floating):
                X = X.astype(np.float32)
            values = X
        if not np.all(np.isfinite(values)):
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise DataError(f"{self.name}: X contains {bad} NaN or infinite values; clean or impute them first.")
        y, n_classes = check_labels(self.y, X.shape[0], self.n_classes, self.name)
        ids = np.arange(X.shape[0], dtype=np.int64) if self.ids is None else _check_ids(self.ids, X.shape[0], self.name)
        if self.feature_names is not None and len(self.feature_names) != _n_columns(X):
            raise DataError(
                f"{self.name}: {len(self.feature_names)} feature names for {_n_columns(X)} feature columns."
            )
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "n_classes", int(n_classes))
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", _check_class_names(self.class_names, int(n_classes), self.name))

    #: Whether the features are fetched from a source on demand (see
    #: :class:`unlearnkit.data.torchdata.StreamingDataset`) rather than held in ``X``.
    streaming = False

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.X)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(d,)`` or ``(1, 28, 28)``."""
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def n_features(self) -> int:
        """Number of flattened feature columns."""
        return _n_columns(self.X)

    # ------------------------------------------------------------------ ids
    def positions(self, ids) -> np.ndarray:
        """Positions of the given row ids; raises :class:`DataError` naming unknown ids."""
        try:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        except (OverflowError, ValueError, TypeError) as exc:
            raise DataError(f"{self.name}: row ids must be integers below 2**63 ({exc}).") from None
        if self._id_index is None:  # ids sorted, and the position of each: a lookup is a binary search
            order = np.argsort(self.ids, kind="stable")
            object.__setattr__(self, "_id_index", (self.ids[order], order.astype(np.int64)))
        sorted_ids, order = self._id_index
        where = np.searchsorted(sorted_ids, ids)
        found = where < sorted_ids.size
        found[found] = sorted_ids[where[found]] == ids[found]
        if not found.all():
            missing = ids[~found]
            shown = ", ".join(map(str, missing[:5].tolist())) + (" ..." if missing.size > 5 else "")
            raise DataError(f"{self.name}: {missing.size} row id(s) not in the dataset: {shown}.")
        return order[where]

    # ------------------------------------------------------------------ views
    def subset(self, positions, name: str | None = None) -> "Dataset":
        """The rows at ``positions`` (keeping their ids)."""
        positions = np.asarray(positions, dtype=np.int64)
        return Dataset(
            self.X[positions],
            self.y[positions],
            self.ids[positions],
            n_classes=self.n_classes,
            name=name or self.name,
            feature_names=self.feature_names,
            class_names=self.class_names,
        )

    def replace(self, **changes) -> "Dataset":
        """A copy with some fields replaced (validated again)."""
        fields = dict(
            X=self.X, y=self.y, ids=self.ids, n_classes=self.n_classes, name=self.name,
            feature_names=self.feature_names, class_names=self.class_names,
        )
        fields.update(changes)
        return Dataset(**fields)

    def dense_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a dense array of shape ``(m, *feature_shape)``."""
        rows = self.X[start:stop]
        return rows.toarray() if sp.issparse(rows) else rows

    def batches(self, batch_size: int, *, device=None, dtype=torch.float32):
        """Yield ``(X, y)`` torch tensors over consecutive row blocks of at most ``batch_size``.

        Sparse rows are densified one block at a time, so memory stays bounded by the batch.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}.")
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            xb = torch.as_tensor(np.ascontiguousarray(self.dense_rows(start, stop)), dtype=dtype, device=device)
            yb = torch.as_tensor(self.y[start:stop], device=device)
            yield xb, yb

    def tensors(self, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows as ``(X, y)`` tensors (dense)."""
        X = torch.as_tensor(np.ascontiguousarray(self.dense_rows()), dtype=dtype, device=device)
        return X, torch.as_tensor(self.y, device=device)

    def fingerprint(self) -> str:
        """A short content hash (features, labels, ids) to tie a model file to its data.

        Computed once per data set and remembered: a data set is immutable (its arrays must not be
        changed in place after construction; build a new one, e.g. with :meth:`replace`).
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = self._compute_fingerprint()
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def _compute_fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        if sp.issparse(self.X):
            for part in (self.X.indptr, self.X.indices, self.X.data):
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(np.ascontiguousarray(self.X).tobytes())
        h.update(self.y.tobytes())
        h.update(self.ids.tobytes())
        h.update(repr(self.X.shape).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, feature_shape={self.feature_shape}, "
            f"n_classes={self.n_classes}, {kind})"
        )


def check_labels(y, n: int, n_classes, name: str) -> tuple[np.ndarray, int]:
    """Labels as ``(n,)`` int64 class codes and the number of classes, refused by name otherwise."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{name}: y must have shape ({n},) to match X; got {y.shape}.")
    if y.size and y.dtype.kind not in "biuf":
        raise DataError(f"{name}: labels must be integers (class indices); got dtype {y.dtype}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{name}: labels must be integers (class indices); got {y.dtype} values.")
    if y.size and y.min() < 0:
        raise DataError(f"{name}: labels must be >= 0; found {_show(y.min())}.")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(
            f"{name}: label {_show(y.max())} is beyond the limit of {MAX_CLASSES} classes. Labels must be "
            "compact class codes 0..n_classes-1; map them with numpy.unique(y, return_inverse=True)."
        )
    y = y.astype(np.int64)
    if n_classes is None:
        n_classes = max(2, int(y.max()) + 1 if y.size else 2)
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 2 <= n_classes <= MAX_CLASSES:
        raise DataError(f"{name}: n_classes must be an integer in [2, {MAX_CLASSES}]; got {n_classes!r}.")
    if y.size and y.max() >= n_classes:
        raise DataError(f"{name}: label {int(y.max())} is out of range for n_classes={n_classes}.")
    return y, int(n_classes)


def _check_class_names(names, n_classes: int, name: str) -> tuple[str, ...]:
    """Class names as a tuple of ``n_classes`` distinct strings, refused by name otherwise."""
    if isinstance(names, str) or not all(isinstance(v, str) for v in names):
        raise DataError(f"{name}: class_names must be a list of strings, one per class.")
    names = tuple(names)
    if len(names) != n_classes:
        raise DataError(f"{name}: {len(names)} class names for {n_classes} classes; give one name per class code.")
    if len(set(names)) != len(names):
        raise DataError(f"{name}: class names must be distinct; got {list(names)[:10]}.")
    return names


def _n_columns(X) -> int:
    return int(np.prod(X.shape[1:])) if X.ndim > 1 else 1


def _show(value) -> str:
    """A label or id as text for messages (never wrapped to another integer type)."""
    value = value.item() if hasattr(value, "item") else value
    return str(int(value)) if float(value).is_integer() else repr(value)


def _check_ids(ids, n: int, name: str) -> np.ndarray:
    """Row ids as int64: ``n`` unique integers in ``[0, 2**63)``, refused by name otherwise."""
    if isinstance(ids, (list, tuple)) and ids and all(type(v) is int for v in ids):
        big = max(ids)
        if big > _INT64_MAX:  # numpy would turn such a list into floats or objects
            raise DataError(f"{name}: row id {big} is beyond the largest supported id {_INT64_MAX} (2**63 - 1).")
    try:
        arr = np.asarray(ids)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{name}: ids must be {n} integers ({exc}).") from None
    if arr.shape != (n,):
        raise DataError(f"{name}: ids must be {n} integers; got shape {arr.shape}, dtype {arr.dtype}.")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise DataError(f"{name}: ids must be integers, not booleans (got dtype {arr.dtype}).")
    if arr.dtype.kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in arr.tolist()):
        big = max(arr.tolist())
        raise DataError(f"{name}: row id {big} is beyond the largest supported id {_INT64_MAX} (2**63 - 1).")
    if arr.dtype.kind not in "iu":
        raise DataError(
            f"{name}: ids must be {n} integers; got dtype {arr.dtype}"
            + (" (float ids are refused: they can silently round; store ids as integers)." if arr.dtype.kind == "f" else ".")
        )
    if arr.dtype.kind == "u" and arr.max() > _INT64_MAX:
        raise DataError(f"{name}: row id {int(arr.max())} is beyond the largest supported id {_INT64_MAX} (2**63 - 1).")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise DataError(f"{name}: row ids must be >= 0; found {int(arr.min())}.")
    if np.unique(arr).size != arr.size:
        values, counts = np.unique(arr, return_counts=True)
        raise DataError(f"{name}: row ids must be unique; id {int(values[counts > 1][0])} appears {int(counts[counts > 1][0])} times.")
    return arr
