"""Data from the user's PyTorch world: :func:`from_torch`, streamed data sets and collision-free splits.

:func:`from_torch` turns what a PyTorch user already has into an unlearnkit data set:

* a pair ``(X, y)`` of tensors or numpy arrays, or ``X`` with ``labels=y``: an ordinary in-memory
  :class:`~unlearnkit.data.dataset.Dataset` (a CPU tensor's memory is shared, not copied, on its way
  to numpy; integer features become float32 as everywhere in unlearnkit);
* a ``torch.utils.data.TensorDataset`` (anything with a ``tensors`` attribute): the same;
* any other map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` (or ``x`` with
  ``labels=``): a :class:`StreamingDataset`. Its labels are read once and held in memory (from a
  ``targets`` or ``labels`` attribute when the source has one, else by one pass of a
  ``DataLoader``); its features are never held all at once but fetched in batches through a
  ``DataLoader`` whose batch sampler names the source positions of each batch, with
  ``num_workers`` loader processes (one loader per pass, so workers prefetch across batches).

Row ids are stable by construction: by default the id of a row is its position in the user's
data set; explicit ``ids`` are validated (integers, non-negative, unique, one per row).

Everything that runs through :meth:`Dataset.batches` works on a streamed set unchanged: the
influence updates (gradients, Hessian-vector products), training with mini-batches, prediction
and accuracy, and the deep-unlearning methods that iterate over batches of the retain set.
:class:`~unlearnkit.data.changes.Changes` resolves against it without reading the features (label
edits and removals) or by one streamed scan (feature edits with ``rows=None``); edited feature cells
are kept as overrides and applied as rows are read. What would need every feature at once
(:meth:`StreamingDataset.tensors` on more than ``materialize_bytes`` of features, ``.X``) raises
:class:`~unlearnkit.errors.DataError` saying so, rather than copying silently.

:func:`split_forget` and :func:`from_retain_forget` build retain and forget sets whose ids cannot
collide: two data sets built separately from raw arrays would both number their rows ``0..n-1``.
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset, TensorDataset

from unlearnkit.data.dataset import Dataset, _check_ids, check_labels
from unlearnkit.errors import DataError

log = logging.getLogger(__name__)

#: Rows fetched per ``DataLoader`` batch when nothing else is asked for.
DEFAULT_BATCH_SIZE = 256

#: Most bytes (of float32 features) :meth:`StreamingDataset.tensors` loads at once: a forget set or a
#: probe batch may be held whole, a larger request raises :class:`DataError` pointing to ``batches()``.
DEFAULT_MATERIALIZE_BYTES = 64 * 2**20

#: Item positions (besides item 0) whose labels are compared with a ``targets``/``labels`` attribute.
LABEL_CHECKS = 8


# ---------------------------------------------------------------------------------------------- items
def _is_array(value) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _numpy(value, what: str, name: str) -> np.ndarray:
    """A tensor or array as numpy; a CPU tensor's memory is shared, not copied."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.to(torch.float32)
        return value.cpu().numpy()
    try:
        value = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name}: {what} must be a tensor or numpy array ({exc}).") from None
    return value.astype(np.float32) if value.dtype == np.float16 else value


def _features_tensor(x, position: int, name: str) -> torch.Tensor:
    """One item's features as a tensor (``position`` < 0 when unknown, inside a loader batch)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise DataError(f"{name}: {f'item {position}' if position >= 0 else 'an item'} has complex features "
                            f"({x.dtype}); unlearnkit needs real numbers. Split them into real and imaginary parts "
                            "(torch.view_as_real(x)) or take their magnitude in the data set's transform.")
        return x.detach()
    if isinstance(x, np.ndarray) or isinstance(x, (int, float, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype.kind in "biuf":
            return torch.from_numpy(np.ascontiguousarray(arr))
    raise DataError(
        f"{name}: {f'item {position}' if position >= 0 else 'an item'} has features of type {type(x).__name__}; they "
        "must be a tensor or numpy array of "
        "numbers. Give the data set a transform that makes tensors (e.g. torchvision.transforms.ToTensor())."
    )


def _split_item(item, pairs: bool, position: int, name: str):
    if pairs:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            where = f"item {position}" if position >= 0 else "an item"
            raise DataError(f"{name}: {where} is a {type(item).__name__}, not an (x, y) pair; make __getitem__ "
                            "return (features, label), or pass labels=... and items of features only.")
        return item[0], item[1]
    return (item[0] if isinstance(item, (tuple, list)) else item), None


class _CollateFeatures:
    """``DataLoader`` collate function keeping the features of ``(x, y)`` items (picklable for workers)."""

    def __init__(self, pairs: bool, name: str) -> None:
        self.pairs, self.name = pairs, name

    def __call__(self, items):
        xs = [_features_tensor(_split_item(it, self.pairs, -1, self.name)[0], -1, self.name) for it in items]
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise DataError(f"{self.name}: items have features of different shapes {sorted(shapes)[:3]}; every item "
                            "must have the same shape (resize or pad them in the data set's transform).")
        return torch.stack(xs)


class _CollateLabels:
    """``DataLoader`` collate function keeping only the labels of ``(x, y)`` items."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, items):
        out = []
        for it in items:
            y = _split_item(it, True, -1, self.name)[1]
            if isinstance(y, torch.Tensor):
                if y.numel() != 1:
                    raise DataError(f"{self.name}: an item's label has shape {tuple(y.shape)}; labels must be one class "
                                    "code per row (for one-hot labels return y.argmax()).")
                y = y.reshape(()).item()
            elif isinstance(y, np.ndarray):
                if y.size != 1:
                    raise DataError(f"{self.name}: an item's label has shape {y.shape}; labels must be one class code "
                                    "per row (for one-hot labels return y.argmax()).")
                y = y.reshape(()).item()
            out.append(y)
        return out


def _check_label_values(y: np.ndarray, n: int, name: str) -> np.ndarray:
    """Labels must be integer class codes: strings and floats are refused with the fix."""
    if y.ndim != 1:
        raise DataError(f"{name}: labels must have shape ({n},), one class code per row; got {y.shape}. "
                        "For one-hot labels pass y.argmax(1); for a column vector pass y.ravel().")
    if y.shape[0] != n:
        raise DataError(f"{name}: {y.shape[0]} labels for {n} rows; give one label per row.")
    if y.dtype.kind in "USO":
        raise DataError(f"{name}: labels are {y.dtype} values such as {y[:3].tolist()}, not integer class codes; "
                        "map them to 0..C-1 with codes = numpy.unique(labels, return_inverse=True)[1].")
    if y.dtype.kind in "fc":
        raise DataError(f"{name}: labels are {y.dtype} numbers; unlearnkit classifies, and class codes must be integers. "
                        "Pass y.long() (torch) or y.astype(numpy.int64), after checking they are whole numbers.")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    return y


# ---------------------------------------------------------------------------------------------- streamed sets
class _Consecutive:
    """Positions ``start:stop`` in groups of ``size`` (a re-iterable sequence of ranges, nothing stored)."""

    def __init__(self, start: int, stop: int, size: int) -> None:
        self.starts = range(start, stop, size)
        self.stop, self.size = stop, size

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        return (range(a, min(self.stop, a + self.size)) for a in self.starts)


class _Capped:
    """Each group of positions cut into pieces of at most ``cap`` positions (the rows of one loader fetch)."""

    def __init__(self, groups, cap: int) -> None:
        self.groups, self.cap = groups, cap

    def __len__(self) -> int:
        return sum(-(-len(g) // self.cap) for g in self.groups)

    def __iter__(self):
        for group in self.groups:
            for a in range(0, len(group), self.cap):
                yield group[a:a + self.cap]


class _SourceRows:
    """A ``DataLoader`` batch sampler: each group of positions as the source rows to fetch, made as it is asked for."""

    def __init__(self, groups, rows: np.ndarray) -> None:
        self.groups, self.rows = groups, rows

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        for group in self.groups:
            yield self.rows[np.asarray(group, dtype=np.int64)].tolist()


class StreamingDataset(Dataset):
    """Rows of a map-style ``torch.utils.data.Dataset``, fetched in batches on demand.

    Built by :func:`from_torch`. Behaves as a :class:`~unlearnkit.data.dataset.Dataset` for every
    operation that goes through :meth:`batches`, :meth:`dense_rows` or :meth:`subset`; labels and
    ids are in memory (``y``, ``ids``), features are not (``X`` raises :class:`DataError`).

    Rows are positions into the source: :meth:`subset` is a lazy view, and feature edits made by
    :meth:`Changes.resolve <unlearnkit.data.changes.Changes.resolve>` are cell overrides applied
    as rows are read. Every read checks the features are finite and refuses NaN or infinite
    values by row id.
    """

    streaming = True

    def __init__(self, source, rows, y, ids, *, n_classes: int, name: str, feature_shape: tuple[int, ...],
                 pairs: bool, batch_size: int, num_workers: int, materialize_bytes: int,
                 feature_names=None, cells: dict | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        y, n_classes = check_labels(y, rows.size, n_classes, name)
        ids = _check_ids(ids, rows.size, name)
        set_ = object.__setattr__
        set_(self, "source", source)
        set_(self, "rows", rows)
        set_(self, "y", y)
        set_(self, "ids", ids)
        set_(self, "n_classes", int(n_classes))
        set_(self, "name", name)
        set_(self, "_feature_shape", tuple(int(s) for s in feature_shape))
        if feature_names is not None and len(feature_names) != math.prod(feature_shape):
            raise DataError(f"{name}: {len(feature_names)} feature names for {math.prod(feature_shape)} feature columns.")
        set_(self, "feature_names", None if feature_names is None else tuple(feature_names))
        set_(self, "pairs", bool(pairs))
        set_(self, "batch_size", int(batch_size))
        set_(self, "num_workers", int(num_workers))
        set_(self, "materialize_bytes", int(materialize_bytes))
        cells = dict(cells or {})
        set_(self, "_cells", cells)
        set_(self, "_cell_rows", np.asarray(sorted(cells), dtype=np.int64))
        set_(self, "_id_index", None)

    # ------------------------------------------------------------------ shape
    @property
    def X(self):  # noqa: N802 (the Dataset field's name)
        raise DataError(
            f"{self.name} is streamed from a {type(self.source).__name__} ({len(self)} rows): its features are never "
            "held as one array. Iterate with batches(batch_size), read rows with dense_rows(start, stop) or a subset, "
            "or build it with from_torch(..., stream=False) if it fits in memory."
        )

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def is_sparse(self) -> bool:
        return False

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self._feature_shape

    @property
    def n_features(self) -> int:
        return int(math.prod(self._feature_shape))

    # ------------------------------------------------------------------ views
    def _like(self, **fields) -> "StreamingDataset":
        base = dict(source=self.source, rows=self.rows, y=self.y, ids=self.ids, n_classes=self.n_classes,
                    name=self.name, feature_shape=self._feature_shape, pairs=self.pairs, batch_size=self.batch_size,
                    num_workers=self.num_workers, materialize_bytes=self.materialize_bytes,
                    feature_names=self.feature_names, cells=self._cells)
        base.update(fields)
        source, rows, y, ids = (base.pop(k) for k in ("source", "rows", "y", "ids"))
        return StreamingDataset(source, rows, y, ids, **base)

    def subset(self, positions, name: str | None = None) -> "StreamingDataset":
        """The rows at ``positions`` (keeping their ids): a view, nothing is read."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        return self._like(rows=self.rows[positions], y=self.y[positions], ids=self.ids[positions],
                          name=name or self.name)

    def replace(self, **changes) -> "StreamingDataset":
        """A copy with ``y``, ``ids``, ``n_classes``, ``name`` or ``feature_names`` replaced (validated again)."""
        if "X" in changes:
            raise DataError(f"{self.name} is streamed: its features cannot be replaced by an array. Edit cells with "
                            "Changes (applied as rows are read), or build an in-memory Dataset.")
        unknown = set(changes) - {"y", "ids", "n_classes", "name", "feature_names"}
        if unknown:
            raise DataError(f"{self.name}: cannot replace {sorted(unknown)}; valid: y, ids, n_classes, name, feature_names.")
        return self._like(**changes)

    def with_features(self, positions, columns, values) -> "StreamingDataset":
        """A view whose rows ``positions`` read ``values`` in flattened feature ``columns`` (one cell per entry).

        The overrides are applied as rows are read; later overrides of a cell replace earlier ones.
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        columns = np.asarray(columns, dtype=np.int64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not positions.size:
            return self
        cells = dict(self._cells)
        src = self.rows[positions]
        order = np.argsort(src, kind="stable")
        src, columns, values = src[order], columns[order], values[order]
        starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], src.size]):
            row = int(src[start])
            merged = dict(zip(*cells[row])) if row in cells else {}
            merged.update(zip(columns[start:stop].tolist(), values[start:stop].tolist()))
            cells[row] = (np.fromiter(merged.keys(), np.int64), np.fromiter(merged.values(), np.float64))
        return self._like(cells=cells)

    # ------------------------------------------------------------------ reading
    def read_batches(self, groups):
        """Yield the features of each group of positions (a sequence of index arrays), in the order given.

        One ``DataLoader`` (with ``num_workers`` processes, prefetching) serves all groups, so a
        shuffled epoch costs one loader, not one per batch; a single group is read in this process
        (workers would only add their start-up time). A group larger than the data set's
        ``batch_size`` is fetched in pieces of at most ``batch_size`` rows and joined. Edited cells
        are applied and the rows checked to be finite (:class:`DataError` naming the ids of rows
        that are not).
        """
        if not len(groups):
            return
        cap = self.batch_size
        fetches = _Capped(groups, cap)
        # one group fetched once (a probe, one LiSSA sample): worker processes would only add their start-up cost
        workers = self.num_workers if len(groups) > 1 else 0
        loader = iter(DataLoader(self.source, batch_sampler=_SourceRows(fetches, self.rows), num_workers=workers,
                                 collate_fn=_CollateFeatures(self.pairs, self.name)))
        for group in groups:
            group = np.asarray(group, dtype=np.int64)
            if not group.size:  # nothing fetched for it
                yield torch.zeros((0, *self._feature_shape))
            elif group.size <= cap:
                yield self._checked(next(loader), group)
            else:  # a consumer batch larger than the data set's batch_size: several fetches, joined
                yield torch.cat([self._checked(next(loader), group[a:a + cap]) for a in range(0, group.size, cap)])

    def _checked(self, xb: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        m = xb.shape[0]
        if tuple(xb.shape[1:]) != self._feature_shape:
            raise DataError(f"{self.name}: rows with ids {self.ids[positions[:3]].tolist()}... have features of shape "
                            f"{tuple(xb.shape[1:])}, the data set {self._feature_shape}; every item must have the same shape.")
        if not xb.is_floating_point() or xb.dtype in (torch.float16, torch.bfloat16):
            xb = xb.to(torch.float32)
        xb = self._apply_cells(xb, self.rows[positions])
        finite = torch.isfinite(xb.reshape(m, -1)).all(dim=1)
        if not bool(finite.all()):
            bad = self.ids[positions[np.flatnonzero(~finite.numpy())]]
            raise DataError(
                f"{self.name}: {bad.size} row(s) in this batch have NaN or infinite features (ids "
                f"{', '.join(map(str, bad[:5].tolist()))}{' ...' if bad.size > 5 else ''}). Clean them in the data "
                "set's transform, or leave them out with split_forget / subset."
            )
        return xb

    def _stream(self, start: int, stop: int, batch_size: int):
        """Yield ``(offset, features)`` for rows ``start:stop``, ``batch_size`` rows per loader batch."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}.")
        offsets = range(start, stop, batch_size)
        yield from zip(offsets, self.read_batches(_Consecutive(start, stop, batch_size)))

    def _apply_cells(self, xb: torch.Tensor, source_rows: np.ndarray) -> torch.Tensor:
        if not self._cells:
            return xb
        hit = np.flatnonzero(np.isin(source_rows, self._cell_rows))
        if not hit.size:
            return xb
        flat = xb.reshape(xb.shape[0], -1)  # the collated batch is our own tensor: edited in place
        for i in hit.tolist():
            cols, vals = self._cells[int(source_rows[i])]
            flat[i, torch.from_numpy(cols)] = torch.as_tensor(vals, dtype=xb.dtype)
        return flat.reshape(xb.shape)

    def dense_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a numpy array ``(m, *feature_shape)``, read in loader batches of ``batch_size``."""
        start, stop, _ = slice(start, stop).indices(len(self))
        parts = [xb.numpy() for _, xb in self._stream(start, max(start, stop), self.batch_size)]
        if not parts:
            return np.zeros((0, *self._feature_shape), dtype=np.float32)
        return np.concatenate(parts)

    def batches(self, batch_size: int, *, device=None, dtype=torch.float32):
        """Yield ``(X, y)`` over consecutive rows, each fetched by one loader batch of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}.")
        for offset, xb in self._stream(0, len(self), batch_size):
            yb = torch.as_tensor(self.y[offset:offset + xb.shape[0]], device=device)
            yield xb.to(device=device, dtype=dtype), yb

    def nonzero_rows(self, columns, *, batch_size: int | None = None) -> np.ndarray:
        """Positions of the rows where any of the flattened ``columns`` is non-zero (one streamed scan)."""
        cols = torch.as_tensor(np.asarray(columns, dtype=np.int64))
        out = []
        for offset, xb in self._stream(0, len(self), batch_size or self.batch_size):
            nz = (xb.reshape(xb.shape[0], -1)[:, cols] != 0).any(dim=1)
            out.append(offset + np.flatnonzero(nz.numpy()))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def nbytes(self, dtype=torch.float32) -> int:
        """Bytes the features of every row take as one ``dtype`` tensor."""
        return len(self) * self.n_features * torch.empty((), dtype=dtype).element_size()

    def fits(self, dtype=torch.float32) -> bool:
        """Whether :meth:`tensors` may load these rows at once (at most ``materialize_bytes`` of features)."""
        return self.nbytes(dtype) <= self.materialize_bytes

    def tensors(self, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows as ``(X, y)`` tensors, for small sets only (features of at most ``materialize_bytes``).

        A larger streamed set raises :class:`DataError`: loading it whole is what streaming avoids.
        """
        if not self.fits(dtype):
            raise DataError(
                f"{self.name}: tensors() would load all {len(self)} streamed rows at once ({self.nbytes(dtype)} bytes), "
                f"more than materialize_bytes={self.materialize_bytes}. Iterate with batches(batch_size) instead, take "
                "a subset, or pass a larger materialize_bytes to from_torch if the rows fit in memory."
            )
        log.debug("%s: loading %d streamed rows (%d bytes) as one tensor", self.name, len(self), self.nbytes(dtype))
        X = torch.as_tensor(np.ascontiguousarray(self.dense_rows()), dtype=dtype, device=device)
        return X, torch.as_tensor(self.y, device=device)

    def in_memory(self, name: str | None = None) -> Dataset:
        """An in-memory :class:`Dataset` of these rows (reads every row: only for data that fits in memory)."""
        return Dataset(self.dense_rows(), self.y, self.ids, n_classes=self.n_classes, name=name or self.name,
                       feature_names=self.feature_names)

    def _compute_fingerprint(self) -> str:
        """A short content hash of features (streamed in batches), labels and ids; equal to the fingerprint of an
        in-memory :class:`Dataset` holding the same rows in the same dtype (remembered by :meth:`fingerprint`)."""
        h = hashlib.sha256()
        for _, xb in self._stream(0, len(self), self.batch_size):
            h.update(np.ascontiguousarray(xb.numpy()).tobytes())
        h.update(self.y.tobytes())
        h.update(self.ids.tobytes())
        h.update(repr((len(self), *self._feature_shape)).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"StreamingDataset(name={self.name!r}, n={len(self)}, feature_shape={self.feature_shape}, "
                f"n_classes={self.n_classes}, source={type(self.source).__name__}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers})")


# ---------------------------------------------------------------------------------------------- from_torch
def from_torch(
    source,
    labels=None,
    ids=None,
    *,
    n_classes: int | None = None,
    name: str = "torch data",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int = 0,
    stream: bool | None = None,
    materialize_bytes: int = DEFAULT_MATERIALIZE_BYTES,
    feature_names=None,
) -> Dataset:
    """An unlearnkit data set from a PyTorch data set, a pair of tensors or arrays, or ``X`` with ``labels``.

    Parameters
    ----------
    source:
        A map-style ``torch.utils.data.Dataset`` (or a list of items) whose items are ``(x, y)``
        (or ``x`` alone when ``labels`` is given); a tuple ``(X, y)`` of tensors or numpy arrays;
        or ``X`` alone with ``labels=y``.
    labels:
        ``(n,)`` integer class codes, when ``source`` does not carry them (or to override them).
        Strings, floats and one-hot rows are refused with the fix.
    ids:
        ``(n,)`` unique non-negative integer row ids; by default the position of each row in
        ``source`` (so the id of a row never depends on what else is loaded).
    n_classes:
        Number of classes; defaults to ``max(label) + 1`` (at least 2).
    batch_size, num_workers:
        Most rows per ``DataLoader`` fetch, and loader worker processes, for streamed sets. A
        consumer asking for larger batches (prediction, influence blocks) gets each of them in
        several fetches of at most ``batch_size`` rows.
    stream:
        ``None`` (default): tensors, arrays and ``TensorDataset`` are in memory, every other
        ``Dataset`` is a :class:`StreamingDataset`. ``True`` streams any source (arrays through a
        ``TensorDataset`` over them, no copy); ``False`` reads a ``Dataset`` into memory once (only
        for data that fits).
    materialize_bytes:
        Most bytes of (float32) features a streamed set's ``tensors()`` loads at once: a forget set
        or a probe batch may be held whole, retain, training and validation sets are always read
        batch by batch (default 64 MiB).

    Returns an in-memory :class:`~unlearnkit.data.dataset.Dataset` or a :class:`StreamingDataset`.

    >>> import torch
    >>> ds = from_torch((torch.zeros(3, 2), torch.tensor([0, 1, 1])))
    >>> len(ds), ds.ids.tolist(), ds.n_classes
    (3, [0, 1, 2], 2)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"{name}: batch_size must be an integer >= 1, got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"{name}: num_workers must be an integer >= 0, got {num_workers!r}.")
    if isinstance(materialize_bytes, bool) or not isinstance(materialize_bytes, int) or materialize_bytes < 0:
        raise DataError(f"{name}: materialize_bytes must be an integer >= 0, got {materialize_bytes!r}.")
    if isinstance(source, Dataset):
        raise DataError(f"{name}: source is already an unlearnkit Dataset ({source.name}); use it directly.")
    if isinstance(source, dict):
        raise DataError(f"{name}: cannot read a dict (keys {sorted(map(str, source))[:4]}); give a map-style torch "
                        "Dataset, a pair (X, y) of tensors or arrays (e.g. from_torch((d['x'], d['y']))), or X with "
                        "labels=y.")
    if isinstance(source, IterableDataset):
        raise DataError(f"{name}: an IterableDataset has no random access, which unlearning needs (rows are named by "
                        "position); give a map-style Dataset (with __getitem__ and __len__), or tensors.")
    ids = _numpy(ids, "ids", name) if isinstance(ids, torch.Tensor) else ids
    # ---- in memory: tensors, arrays, TensorDataset
    arrays = None
    if isinstance(source, tuple):  # a tuple is the pair (X, y); a list is a sequence of items (a map-style data set)
        if len(source) != 2:
            raise DataError(f"{name}: a tuple source must be the pair (X, y); got {len(source)} elements.")
        if labels is not None:
            raise DataError(f"{name}: give either a pair (X, y) or X with labels=..., not both.")
        arrays = source
    elif _is_array(source):
        if labels is None:
            raise DataError(f"{name}: source is a single array of features; pass the labels too: "
                            "from_torch(X, labels=y) or from_torch((X, y)).")
        arrays = (source, labels)
    elif isinstance(source, torch.utils.data.Dataset) or (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
        tensors = getattr(source, "tensors", None) if isinstance(source, TensorDataset) else None
        if tensors is not None and stream is not True:
            if len(tensors) < 2 and labels is None:
                raise DataError(f"{name}: the TensorDataset holds {len(tensors)} tensor(s); it needs (X, y), or pass labels=...")
            arrays = (tensors[0], tensors[1] if labels is None else labels)
    else:
        raise DataError(f"{name}: cannot read a {type(source).__name__}; give a torch Dataset, a pair (X, y) of tensors "
                        "or arrays, or X with labels=....")
    if arrays is not None:
        X = _numpy(arrays[0], "X", name)
        y = _check_label_values(_numpy(arrays[1], "labels", name), X.shape[0] if X.ndim else 0, name)
        if stream is not True:
            return Dataset(X, y, ids, n_classes=n_classes, name=name, feature_names=feature_names)
        if X.ndim < 2 or X.dtype.kind not in "biuf":
            raise DataError(f"{name}: X must be numbers of shape (n, *feature_shape); got {X.dtype}, shape {X.shape}.")
        source, labels = TensorDataset(torch.from_numpy(np.ascontiguousarray(X)), torch.as_tensor(y, dtype=torch.int64)), y
    streamed = _streaming(source, labels, ids, n_classes=n_classes, name=name, batch_size=batch_size,
                          num_workers=num_workers, materialize_bytes=materialize_bytes, feature_names=feature_names)
    return streamed.in_memory() if stream is False else streamed


def _streaming(source, labels, ids, *, n_classes, name, batch_size, num_workers, materialize_bytes,
               feature_names) -> StreamingDataset:
    try:
        n = len(source)
    except TypeError:
        raise DataError(f"{name}: the data set has no length; give a map-style Dataset with __len__.") from None
    if n == 0:
        raise DataError(f"{name}: the data set is empty.")
    first = source[0]
    pairs = isinstance(first, (tuple, list)) and len(first) >= 2
    if not pairs and labels is None:
        raise DataError(f"{name}: items are {type(first).__name__}, not (x, y) pairs, and no labels were given; "
                        "return (features, label) from __getitem__ or pass labels=....")
    x0 = _features_tensor(_split_item(first, pairs, 0, name)[0], 0, name)
    feature_shape = tuple(x0.shape)
    if not feature_shape:
        raise DataError(f"{name}: item 0 has a scalar feature; features must have shape (*feature_shape), e.g. (d,).")
    if labels is None:
        labels = _attribute_labels(source, n, first, name)
    if labels is None:  # one pass of the loader, keeping only the labels
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_CollateLabels(name))
        labels = [lab for chunk in loader for lab in chunk]
        log.debug("%s: read %d labels with one pass over the data set", name, len(labels))
    y = _check_label_values(_numpy(labels, "labels", name) if isinstance(labels, torch.Tensor) else np.asarray(labels),
                            n, name)
    rows = np.arange(n, dtype=np.int64)
    return StreamingDataset(source, rows, y, rows.copy() if ids is None else ids, n_classes=n_classes, name=name,
                            feature_shape=feature_shape, pairs=pairs, batch_size=batch_size, num_workers=num_workers,
                            materialize_bytes=materialize_bytes, feature_names=feature_names)


def _attribute_labels(source, n: int, first, name: str):
    """Labels a data set carries as ``targets`` or ``labels`` (torchvision's convention), if they are its items' labels.

    The attribute holds what the data set stores, not necessarily what ``__getitem__`` returns (a
    torchvision ``target_transform`` is applied on reading; a ``labels`` attribute may be class
    names). So its labels are compared with those of item 0 (already read) and of
    :data:`LABEL_CHECKS` seeded positions; on any disagreement it is not used (the labels are read
    through the items, and a warning says why).
    """
    for attr in ("targets", "labels"):
        value = getattr(source, attr, None)
        if value is None or callable(value):
            continue
        try:
            if len(value) != n:
                continue
            values = _numpy(value, attr, name) if isinstance(value, torch.Tensor) else np.asarray(value)
        except (TypeError, ValueError, DataError):
            continue
        if values.shape != (n,):
            continue
        rng = np.random.default_rng(0)
        positions = [0] + sorted(rng.choice(n, size=min(LABEL_CHECKS, n), replace=False).tolist())
        read = _CollateLabels(name)
        for i in dict.fromkeys(positions):
            item_label = read([first if i == 0 else source[i]])[0]
            stored = values[i]
            same = (type(item_label) is not str and np.asarray(stored).dtype.kind in "biu"
                    and np.asarray(item_label).dtype.kind in "biu" and int(stored) == int(item_label))
            if not same:
                log.warning("%s: the data set's %r attribute says row %d has label %r, but its item %d has label %r "
                            "(a target_transform?); reading the labels through the items instead. Pass labels=... "
                            "to skip that pass.", name, attr, i, getattr(stored, "item", lambda: stored)(), i,
                            item_label)
                return None
        return values
    return None


# ---------------------------------------------------------------------------------------------- retain / forget
def split_forget(data: Dataset, forget_ids, *, names: tuple[str, str] | None = None) -> tuple[Dataset, Dataset]:
    """``(retain, forget)`` of ``data``: the rows whose ids are in ``forget_ids`` and the others, ids kept.

    Both are subsets of one data set, so their ids cannot collide, and
    ``Changes.remove(forget.ids)`` against ``data`` is the matching request. Unknown or repeated
    ids raise :class:`DataError`. Works on streamed sets without reading features.
    """
    if not isinstance(data, Dataset):
        raise DataError(f"split_forget needs an unlearnkit Dataset (from from_torch), got {type(data).__name__}.")
    if isinstance(forget_ids, torch.Tensor):
        forget_ids = _numpy(forget_ids, "forget ids", data.name)
    if np.ndim(forget_ids) == 0 or isinstance(forget_ids, (str, bytes)):
        raise DataError(f"{data.name}: forget_ids must be a sequence of row ids, got {forget_ids!r}; for one row pass "
                        f"a list, e.g. [{forget_ids!r}].")
    if not isinstance(forget_ids, np.ndarray):
        forget_ids = list(forget_ids)
    ids = _check_ids(forget_ids, len(forget_ids), f"{data.name} forget ids")
    if ids.size == 0:
        raise DataError(f"{data.name}: the forget set is empty; name at least one row id.")
    forget_pos = np.sort(data.positions(ids))
    keep = np.setdiff1d(np.arange(len(data)), forget_pos)
    retain_name, forget_name = names or (f"{data.name}[retain]", f"{data.name}[forget]")
    return data.subset(keep, name=retain_name), data.subset(forget_pos, name=forget_name)


def from_retain_forget(retain, forget, *, n_classes: int | None = None, name: str = "data", **options):
    """One training set from separate retain and forget sources, and the request that forgets the latter.

    ``retain`` and ``forget`` are anything :func:`from_torch` reads (a ``Dataset``, a pair
    ``(X, y)``). Ids are assigned so they cannot collide: retain rows get ``0..r-1`` (their
    positions), forget rows ``r..r+f-1``. Returns ``(data, Changes.remove(forget ids))``;
    ``data`` is in memory when both sources are, else streamed over a ``ConcatDataset``.
    ``options`` are :func:`from_torch`'s (``batch_size``, ``num_workers``, ``stream``, ...).
    """
    from unlearnkit.data.changes import Changes

    for key in ("ids", "labels"):
        if key in options:
            raise DataError(f"from_retain_forget assigns {key} itself; build each part with from_torch first if needed.")
    if isinstance(retain, Dataset) or isinstance(forget, Dataset):
        raise DataError(
            f"{name}: from_retain_forget numbers the rows of two raw sources; an unlearnkit Dataset already has ids, "
            "which this would replace. If both parts come from one Dataset, keep that data set and forget with "
            "split_forget(data, forget_ids) or Changes.remove(forget_ids). Otherwise pass what the parts were built from "
            "(the torch Datasets or (X, y) pairs), so the rows are numbered without collisions."
        )
    parts = [from_torch(src, name=f"{name}[{part}]", **options) for part, src in (("retain", retain), ("forget", forget))]
    r, f = parts
    if r.feature_shape != f.feature_shape:
        raise DataError(f"{name}: retain rows have shape {r.feature_shape}, forget rows {f.feature_shape}.")
    y = np.concatenate([r.y, f.y])
    classes = n_classes if n_classes is not None else max(r.n_classes, f.n_classes)
    ids = np.arange(len(r) + len(f), dtype=np.int64)
    if not (r.streaming or f.streaming):
        data = Dataset(np.concatenate([r.X, f.X.astype(r.X.dtype, copy=False)]), y, ids, n_classes=classes, name=name)
    else:
        sources = [p.source if p.streaming else TensorDataset(torch.from_numpy(p.X), torch.from_numpy(p.y))
                   for p in parts]
        keep = {k: v for k, v in options.items() if k in ("batch_size", "num_workers", "materialize_bytes")}
        data = from_torch(ConcatDataset(sources), labels=y, ids=ids, n_classes=classes, name=name,
                          stream=True, **keep)
    return data, Changes.remove(ids[len(r):].tolist())
