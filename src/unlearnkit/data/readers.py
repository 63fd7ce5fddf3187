"""Readers for data on disk: IDX (MNIST-style), CSV and NPZ files.

Nothing here downloads anything. Fashion-MNIST is read from the files of the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or from any folder given
as ``root``.

NPZ layout (written by :func:`save_npz`, read by :func:`read_npz`)
------------------------------------------------------------------
``y``
    ``(n,)`` integer labels (required).
``X``
    Dense features ``(n, *feature_shape)``; *or*, for sparse features, the CSR arrays
    ``data``, ``indices``, ``indptr`` and ``shape`` (plus ``format`` = ``"csr"``), the same
    keys :func:`scipy.sparse.save_npz` writes, so ``scipy.sparse.load_npz`` reads ``X`` back
    from such a file as well.
``ids``, ``n_classes``, ``name``, ``feature_names``
    Optional: row ids, number of classes, a 0-d string and a 1-d string array.

Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_ROOT",
    "read_idx",
    "load_idx_pair",
    "load_fashion_mnist",
    "load_mnist",
    "read_csv",
    "read_npz",
    "save_npz",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------- IDX
def read_idx(path) -> np.ndarray:
    """Read an IDX file (the format of MNIST and Fashion-MNIST), gzip-compressed or not.

    The format is: two zero bytes, a dtype code (``0x08`` unsigned byte, ``0x09`` signed
    byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of
    dimensions, one big-endian int32 per dimension, then the data in big-endian C order.
    Compression is detected from the file's content, not its name.

    Parameters
    ----------
    path:
        Path to the file.

    Returns
    -------
    numpy.ndarray
        The data in native byte order, with the stored dtype and shape.

    Raises
    ------
    DataError
        If the file is missing, is not IDX (bad magic or dtype code), is truncated or has
        more data than its dimensions say.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, the header alone needs 4).")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (bad magic: the first two bytes are {raw[0]:#04x} {raw[1]:#04x}, "
            "expected 0x00 0x00). Check that the path names an IDX file such as train-images-idx3-ubyte."
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX dtype code {code:#04x}; valid codes are {known}.")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions; the file is corrupt.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX file: the header declares {ndim} dimensions ({header} bytes) "
            f"but the file has {len(raw)} bytes. Download or copy the file again."
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: IDX header declares negative dimensions {shape}; the file is corrupt.")
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    have = len(raw) - header
    if have < expected:
        raise DataError(
            f"{path}: truncated IDX file: dimensions {shape} need {expected} data bytes, found {have}. "
            "Download or copy the file again."
        )
    if have > expected:
        raise DataError(
            f"{path}: size mismatch: dimensions {shape} need {expected} data bytes but the file has "
            f"{have} ({have - expected} trailing). The header and data do not match."
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Check the path.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip file ({e}). Download or copy it again.") from None
    return raw


def load_idx_pair(images_path, labels_path, *, name: str = "idx", n_classes: int | None = None) -> Dataset:
    """Build a data set from an IDX image file and an IDX label file.

    Parameters
    ----------
    images_path:
        IDX file of shape ``(n, H, W)`` (or ``(n, C, H, W)``). Unsigned-byte images are
        divided by 255; float images are used as stored (assumed already in ``[0, 1]``).
    labels_path:
        IDX file of shape ``(n,)`` holding integer labels.
    name:
        Name of the data set.
    n_classes:
        Number of classes; default ``max(label) + 1``.

    Returns
    -------
    Dataset
        ``X`` is ``float32`` of shape ``(n, 1, H, W)`` (or ``(n, C, H, W)``), ids are
        ``arange(n)``.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected images of shape (n, H, W) or (n, C, H, W); got {images.shape}. "
            "Did you swap the image and label files?"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected a 1-D integer label file; got shape {labels.shape}, dtype {labels.dtype}."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}: {images.shape[0]} images but {labels.shape[0]} labels in {images_path} and "
            f"{labels_path}; pass files from the same split (e.g. train-images with train-labels)."
        )
    if images.dtype == np.uint8:
        X = images.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(images.dtype, np.floating):
        X = images.astype(np.float32)
    else:
        raise DataError(
            f"{images_path}: images of dtype {images.dtype} cannot be scaled to [0, 1]; "
            "expected unsigned bytes (code 0x08) or floats (0x0D, 0x0E)."
        )
    if X.ndim == 3:
        X = X[:, None, :, :]
    logger.debug("loaded %s: %s", name, X.shape)
    return Dataset(X, labels.astype(np.int64), n_classes=n_classes, name=name)


def _find_idx_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_mnist_like(root, split: str, name: str, hint: str) -> Dataset:
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test'; got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root)
    found = {}
    for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
        path = _find_idx_file(root, stem)
        if path is None:
            raise DataError(f"{name}: {root / stem}(.gz) not found. {hint}")
        found[kind] = path
    return load_idx_pair(found["images"], found["labels"], name=f"{name}:{split}", n_classes=10)


def load_fashion_mnist(root=FASHION_MNIST_ROOT, *, split: str = "train") -> Dataset:
    """Fashion-MNIST (Zalando article images, 28x28 grey levels, 10 classes).

    Parameters
    ----------
    root:
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``.
        Default: where Debian's ``dataset-fashion-mnist`` package installs them.
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns
    -------
    Dataset
        ``float32`` images of shape ``(n, 1, 28, 28)`` in ``[0, 1]``, 10 classes, named
        ``"fashion-mnist:<split>"``.
    """
    hint = (
        "Install the data (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, which puts it in "
        f"{FASHION_MNIST_ROOT}) or pass root= a folder holding the four IDX files."
    )
    return _load_mnist_like(root, split, "fashion-mnist", hint)


def load_mnist(root, *, split: str = "train") -> Dataset:
    """MNIST hand-written digits (28x28 grey levels, 10 classes) from a local folder.

    Parameters
    ----------
    root:
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``.
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns
    -------
    Dataset
        ``float32`` images of shape ``(n, 1, 28, 28)`` in ``[0, 1]``, 10 classes, named
        ``"mnist:<split>"``.
    """
    hint = "Pass root= a folder holding the four MNIST IDX files (unlearnkit downloads nothing)."
    return _load_mnist_like(root, split, "mnist", hint)


# --------------------------------------------------------------------------------------- CSV
def read_csv(
    path,
    *,
    label_column: str | int = "label",
    id_column: str | int | None = None,
    header: bool | None = None,
    delimiter: str = ",",
    n_classes: int | None = None,
    name: str | None = None,
    dtype=np.float64,
) -> Dataset:
    """Read a labelled table of numbers from a CSV file.

    Parameters
    ----------
    path:
        The CSV file.
    label_column:
        The column holding integer class labels: a header name, or a 0-based index
        (negative counts from the end).
    id_column:
        Optional column holding unique non-negative integer row ids (name or index);
        default: ids are ``0..n-1`` in file order.
    header:
        Whether the first row is a header. ``None`` (default) detects it: the first row is a
        header if any of its cells is not a number. A string ``label_column`` needs a header.
    delimiter:
        Field separator.
    n_classes:
        Number of classes; default ``max(label) + 1``.
    name:
        Name of the data set; default the file name.
    dtype:
        Floating dtype of ``X``.

    Returns
    -------
    Dataset
        Dense ``(n, d)`` features from all other columns, feature names from the header
        (``"x0", "x1", ...`` without one).

    Raises
    ------
    DataError
        Naming the row (1-based line number) and column of the first empty, NaN, infinite or
        non-numeric value, a ragged row, an unknown label column, or non-integer labels.
    """
    path = Path(path)
    name = name or path.name
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter)]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Check the path.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text CSV file ({e}).") from None
    # Keep 1-based line numbers; drop blank lines.
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]
    if not numbered:
        raise DataError(f"{path}: the CSV file is empty.")
    if header is None:
        header = not all(_is_number(c) for c in numbered[0][1])
    names = None
    if header:
        names = [c.strip() for c in numbered[0][1]]
        numbered = numbered[1:]
        if not numbered:
            raise DataError(f"{path}: the CSV file has a header but no data rows.")
    width = len(names) if names is not None else len(numbered[0][1])
    for line, r in numbered:
        if len(r) != width:
            raise DataError(f"{path}: line {line} has {len(r)} fields, expected {width} (as in the first row).")
    columns = names if names is not None else [str(i) for i in range(width)]

    label_idx = _column_index(path, label_column, names, width, "label_column")
    id_idx = None if id_column is None else _column_index(path, id_column, names, width, "id_column")
    if id_idx is not None and id_idx == label_idx:
        raise DataError(f"{path}: id_column and label_column are the same column ({columns[label_idx]!r}).")
    if width < 2 + (id_idx is not None):
        raise DataError(f"{path}: need at least one feature column besides the label (and id) column.")

    table = np.empty((len(numbered), width), dtype=np.float64)
    try:
        table[:] = [r for _, r in numbered]
    except ValueError:
        table = None
    if table is None or not np.all(np.isfinite(table)):
        _raise_first_bad_cell(path, numbered, columns)

    feature_cols = [j for j in range(width) if j not in (label_idx, id_idx)]
    y = _integer_column(path, table[:, label_idx], numbered, columns[label_idx], "label")
    ids = None if id_idx is None else _integer_column(path, table[:, id_idx], numbered, columns[id_idx], "id")
    feature_names = tuple(columns[j] for j in feature_cols) if names is not None else tuple(f"x{k}" for k in range(len(feature_cols)))
    X = table[:, feature_cols].astype(dtype)
    logger.debug("read %s: %s", path, X.shape)
    return Dataset(X, y, ids, n_classes=n_classes, name=name, feature_names=feature_names)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_index(path, column, names, width, arg) -> int:
    if isinstance(column, str):
        if names is None:
            raise DataError(
                f"{path}: {arg}={column!r} names a column but the file has no header row; "
                "pass the column's 0-based index instead."
            )
        if column not in names:
            raise DataError(f"{path}: no column named {column!r}; the columns are {names}. Pass {arg}=.")
        return names.index(column)
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        if not -width <= column < width:
            raise DataError(f"{path}: {arg}={column} is out of range for {width} columns.")
        return int(column) % width
    raise DataError(f"{arg} must be a column name or an integer index; got {column!r}.")


def _raise_first_bad_cell(path, numbered, columns):
    for line, r in numbered:
        for j, cell in enumerate(r):
            text = cell.strip()
            if not text:
                raise DataError(f"{path}: line {line}, column {columns[j]!r}: empty value; fill or drop the row.")
            try:
                value = float(text)
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {columns[j]!r}: {cell!r} is not a number; "
                    "every feature and the label must be numeric."
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"{path}: line {line}, column {columns[j]!r}: {cell!r} is NaN or infinite; "
                    "impute or drop such values first."
                )
    raise DataError(f"{path}: could not parse the table as numbers.")  # pragma: no cover


def _integer_column(path, values, numbered, column, what) -> np.ndarray:
    bad = np.flatnonzero(values != np.round(values))
    if bad.size:
        line = numbered[int(bad[0])][0]
        raise DataError(
            f"{path}: line {line}, column {column!r}: {what} {values[bad[0]]!r} is not an integer; "
            f"{what}s must be integers (class labels 0..n_classes-1)."
        )
    return values.astype(np.int64)


# --------------------------------------------------------------------------------------- NPZ
def read_npz(path, *, name: str | None = None) -> Dataset:
    """Read a data set from an ``.npz`` file (layout in the module docstring).

    Parameters
    ----------
    path:
        The file, written by :func:`save_npz` or by hand with ``numpy.savez``.
    name:
        Name of the data set; default the ``name`` key, else the file name.

    Returns
    -------
    Dataset
        Dense if the file has an ``X`` key, CSR if it has ``data/indices/indptr/shape``.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Check the path.") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive with keys X and y.")
    try:
        with archive:
            keys = set(archive.files)
            sparse_keys = {"data", "indices", "indptr", "shape"}
            if "X" in keys:
                X = archive["X"]
            elif sparse_keys <= keys:
                fmt = archive["format"].item() if "format" in keys else "csr"
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                if fmt != "csr":
                    raise DataError(f"{path}: sparse format {fmt!r} is not supported; save X as CSR.")
                shape = tuple(int(s) for s in archive["shape"])
                try:
                    X = sp.csr_matrix((archive["data"], archive["indices"], archive["indptr"]), shape=shape)
                except ValueError as e:
                    raise DataError(f"{path}: inconsistent sparse arrays ({e}).") from None
            else:
                raise DataError(
                    f"{path}: no features: expected key 'X' (dense) or keys data/indices/indptr/shape "
                    f"(CSR); found {sorted(keys)}."
                )
            if "y" not in keys:
                raise DataError(
                    f"{path}: no labels: expected key 'y'; found {sorted(keys)}. Save with "
                    "unlearnkit.data.save_npz or numpy.savez(path, X=..., y=...)."
                )
            y = archive["y"]
            ids = archive["ids"] if "ids" in keys else None
            n_classes = int(archive["n_classes"]) if "n_classes" in keys else None
            feature_names = tuple(str(s) for s in archive["feature_names"]) if "feature_names" in keys else None
            if name is None:
                name = str(archive["name"]) if "name" in keys else path.name
    except DataError:
        raise
    except ValueError as e:  # e.g. an object array that would need pickle
        raise DataError(f"{path}: cannot read ({e}); object arrays are not supported.") from None
    logger.debug("read %s: %s", path, X.shape)
    return Dataset(X, y, ids, n_classes=n_classes, name=name, feature_names=feature_names)


def save_npz(ds: Dataset, path, *, compress: bool = False) -> Path:
    """Write a data set to ``path`` so that :func:`read_npz` returns an equal one.

    Parameters
    ----------
    ds:
        The data set (dense or CSR).
    path:
        Destination; written exactly there (no ``.npz`` is appended).
    compress:
        Use zip compression (smaller, slower).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    arrays = {"y": ds.y, "ids": ds.ids, "n_classes": np.int64(ds.n_classes), "name": np.str_(ds.name)}
    if ds.is_sparse:
        X = ds.X
        arrays.update(
            data=X.data, indices=X.indices, indptr=X.indptr,
            shape=np.asarray(X.shape, dtype=np.int64), format=np.str_("csr"),
        )
    else:
        arrays["X"] = ds.X
    if ds.feature_names is not None:
        arrays["feature_names"] = np.asarray(ds.feature_names, dtype=str)
    writer = np.savez_compressed if compress else np.savez
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer(f, **arrays)
    os.replace(tmp, path)
    return path
