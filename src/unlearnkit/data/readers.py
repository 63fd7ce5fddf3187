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
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from unlearnkit.atomic import atomic_write
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


def _check_regular_file(path: Path) -> int:
    """The size of ``path`` if it is a regular file; a named :class:`DataError` otherwise.

    A FIFO or a device would block or never end when read, so only regular files are read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Check the path.") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a folder, expected a file.")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: is not a regular file (a device, FIFO or socket); give a data file.")
    return st.st_size


def _read_bytes(path: Path) -> bytes:
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
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
    class_names=None,
) -> Dataset:
    """Read a labelled table of numbers from a CSV file.

    Labels are class codes or class names. If every label is a number, the labels are the
    class codes themselves (integers ``0..n_classes-1``). If any label is text (``cat``,
    ``dog``, ``yes``), every label is a class name: the classes are the sorted unique names
    (Python string order, so ``"10"`` comes before ``"9"``) and each row's code is its name's
    position; the names are kept in ``Dataset.class_names``. Pass ``class_names`` (e.g. the
    ones a model was trained with) to read another file with the same codes: a label outside
    them is refused, naming its line.

    Parameters
    ----------
    path:
        The CSV file.
    label_column:
        The column holding the labels (class codes or class names): a header name, or a
        0-based index (negative counts from the end).
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
    class_names:
        Fixed class names (a list of strings, one per class code): every label is read as a
        name and mapped to its position in this list.

    Returns
    -------
    Dataset
        Dense ``(n, d)`` features from all other columns, feature names from the header
        (``"x0", "x1", ...`` without one).

    Raises
    ------
    DataError
        Naming the row (1-based line number) and column of the first empty, NaN, infinite or
        non-numeric value, a ragged row, an unknown label or id column, numeric labels that
        are not integers, or a label outside ``class_names``.
    """
    path = Path(path)
    name = name or path.name
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if start[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(start) >= 2 and b"\x00" in start[:2]):
        raise DataError(f"{path}: the file is UTF-16 (or another two-byte encoding); save the CSV as UTF-8 and try again.")
    try:
        # utf-8-sig: a UTF-8 byte-order mark (as spreadsheet programs write) is accepted and dropped
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter)]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); save the CSV as UTF-8 and try again."
        ) from None
    except csv.Error as e:
        raise DataError(
            f"{path}: not a readable CSV file ({e}); fields must be numbers separated by {delimiter!r}."
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    # Keep 1-based line numbers; drop blank lines.
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]
    if not numbered:
        raise DataError(f"{path}: the CSV file is empty.")
    if header is None:
        first = numbered[0][1]
        if isinstance(label_column, (int, np.integer)) and not isinstance(label_column, bool) and -len(first) <= label_column < len(first):
            # text labels are allowed: the label cell of a data row may be a word
            first = [c for j, c in enumerate(first) if j != int(label_column) % len(first)]
        header = not all(_is_number(c) for c in first)
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

    label_cells = [r[label_idx].strip() for _, r in numbered]
    if class_names is None:
        _check_label_kinds(path, label_cells, numbered, columns[label_idx])
    by_name = class_names is not None or not _is_number(label_cells[0])
    skip = label_idx if by_name else None  # text labels: the other columns are the numbers
    numeric = [j for j in range(width) if j != skip]
    table = np.zeros((len(numbered), width), dtype=np.float64)
    try:
        table[:, numeric] = [[r[j] for j in numeric] for _, r in numbered] if by_name else [r for _, r in numbered]
    except ValueError:
        table = None
    if table is None or not np.all(np.isfinite(table)):
        _raise_first_bad_cell(path, numbered, columns, skip=skip)

    feature_cols = [j for j in range(width) if j not in (label_idx, id_idx)]
    if by_name:
        y, class_names = _named_labels(path, label_cells, numbered, columns[label_idx], class_names)
        if n_classes is None:
            n_classes = len(class_names)
    else:
        y = _integer_column(path, table[:, label_idx], numbered, columns[label_idx], "label")
    ids = None if id_idx is None else _integer_column(path, table[:, id_idx], numbered, columns[id_idx], "id")
    feature_names = tuple(columns[j] for j in feature_cols) if names is not None else tuple(f"x{k}" for k in range(len(feature_cols)))
    X = table[:, feature_cols].astype(dtype)
    _check_compact_labels(path, y, n_classes)
    logger.debug("read %s: %s", path, X.shape)
    return Dataset(X, y, ids, n_classes=n_classes, name=name, feature_names=feature_names,
                   class_names=None if class_names is None else tuple(class_names))


MAX_CLASS_NAME = 1000
"""The longest class name (characters) a label column may hold."""


def _check_label_kinds(path, cells: list[str], numbered, column) -> None:
    """Refuse a label column that mixes numbers (class codes) and words (class names): read as names, sorted as
    text, its numbers would silently get other codes ("10" before "2"). The minority kind is named: typically one
    missing value ("NA", "?", "") in a column of codes."""
    numeric = [_is_number(c) for c in cells]
    n_numeric = sum(numeric)
    if n_numeric in (0, len(cells)):
        return
    odd_is_word = n_numeric * 2 >= len(cells)
    k = next(i for i, is_num in enumerate(numeric) if is_num != odd_is_word)
    other = next(i for i, is_num in enumerate(numeric) if is_num == odd_is_word)
    cell = cells[k]
    shown = repr(cell if len(cell) <= 40 else cell[:40] + "...")
    if odd_is_word:
        what = "an empty label" if not cell else f"label {shown}, which is not a number"
        fix = ("fill in the label or drop the row (a missing value such as 'NA' or '?' has no class), or write every "
               "label as a class name")
    else:
        what = f"label {shown}, a number"
        fix = "write it as one of the class names, or drop the row"
    raise DataError(f"{path}: line {numbered[k][0]}, column {column!r}: {what}, while the column's other labels are "
                    f"{'numbers (class codes)' if odd_is_word else 'class names'} (e.g. line {numbered[other][0]}: "
                    f"{cells[other][:40]!r}); a label column holds either class codes or class names, not both: {fix}.")


def _named_labels(path, cells: list[str], numbered, column, class_names) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class codes of text labels: positions in ``class_names``, or in the sorted unique labels without them."""
    empty = next((k for k, c in enumerate(cells) if not c), None)
    if empty is not None:
        raise DataError(f"{path}: line {numbered[empty][0]}, column {column!r}: empty label; fill or drop the row.")
    long = next((k for k, c in enumerate(cells) if len(c) > MAX_CLASS_NAME), None)
    if long is not None:
        raise DataError(f"{path}: line {numbered[long][0]}, column {column!r}: the label is {len(cells[long]):,} "
                        f"characters long (it starts {cells[long][:40]!r}); class names are at most {MAX_CLASS_NAME:,} "
                        "characters: check that this is the label column (--label-column), or shorten the name.")
    if class_names is None:
        class_names = tuple(sorted(set(cells)))
        if len(class_names) < 2:
            raise DataError(f"{path}: column {column!r} holds a single class ({class_names[0]!r}); a classifier needs "
                            "at least two classes.")
    else:
        class_names = tuple(str(c) for c in class_names)
    codes = {name: k for k, name in enumerate(class_names)}
    y = np.empty(len(cells), dtype=np.int64)
    for k, cell in enumerate(cells):
        code = codes.get(cell)
        if code is None:
            shown = ", ".join(repr(c) for c in class_names[:10]) + (", ..." if len(class_names) > 10 else "")
            raise DataError(f"{path}: line {numbered[k][0]}, column {column!r}: label {cell!r} is not one of the "
                            f"{len(class_names)} classes the model was trained on ({shown}); a model cannot predict "
                            "a class it never saw: drop the row, or train on data that has this class.")
        y[k] = code
    return y, class_names


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
            raise DataError(f"{path}: no column named {column!r}; the columns are {names}. Name one of them, or "
                            f"give a 0-based index, with {arg}= (on the command line --{arg.replace('_', '-')}).")
        return names.index(column)
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        if not -width <= column < width:
            raise DataError(f"{path}: {arg}={column} is out of range for {width} columns (valid indices "
                            f"0..{width - 1}, or -{width}..-1 from the end; the columns are {names or list(range(width))}).")
        return int(column) % width
    raise DataError(f"{arg} must be a column name or an integer index; got {column!r}.")


def _raise_first_bad_cell(path, numbered, columns, skip: int | None = None):
    for line, r in numbered:
        for j, cell in enumerate(r):
            if j == skip:
                continue
            text = cell.strip()
            if not text:
                raise DataError(f"{path}: line {line}, column {columns[j]!r}: empty value; fill or drop the row.")
            try:
                value = float(text)
            except ValueError:
                raise DataError(
                    f"{path}: line {line}, column {columns[j]!r}: {cell!r} is not a number; "
                    "every feature (and the id column) must be numeric; text is allowed only in the label column."
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
    # Integers beyond 2**53 are not exact in the float64 table, and beyond 2**63 would wrap.
    big = np.flatnonzero(np.abs(values) >= 2.0**53)
    if big.size:
        line = numbered[int(big[0])][0]
        raise DataError(
            f"{path}: line {line}, column {column!r}: {what} {values[big[0]]:.0f} "
            f"is too large; {what}s must be below 2**53 to be read exactly from a CSV file."
        )
    return values.astype(np.int64)


def _check_compact_labels(path, y: np.ndarray, n_classes) -> None:
    """Labels read from a file must be compact class codes: without ``n_classes``, the largest
    label may not exceed the number of rows (a 300000000 in the label column would otherwise
    make every model 300 million classes wide)."""
    if n_classes is not None or y.size == 0:
        return
    top = int(y.max())
    if top >= max(2, y.size):
        raise DataError(
            f"{path}: label {top} in a file of {y.size} rows: labels must be compact class codes 0..n_classes-1 "
            "(at most one class per row). Map them with numpy.unique(y, return_inverse=True), or pass n_classes= "
            "if the classes really outnumber the rows."
        )


# --------------------------------------------------------------------------------------- NPZ
def read_npz(path, *, name: str | None = None) -> Dataset:
    """Read a data set from an ``.npz`` file (layout in the module docstring).

    Every array's header is read and checked before its data: its declared size must fit in
    the bytes the archive holds for it, object arrays are refused, and the arrays together
    may not inflate beyond :data:`NPZ_MAX_INFLATE` times the file's size once they exceed
    :data:`NPZ_INFLATE_FLOOR` bytes (a compressed archive of zeros could otherwise claim any
    amount of memory).

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
    size = _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}).") from None
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06") or magic == b"\x93NUMPY"):
        # numpy would try to unpickle anything else and advise allow_pickle=True: never do that
        raise DataError(f"{path} is not an NPZ archive (a zip file written by numpy.savez or unlearnkit's save_npz); "
                        "give a .npz file, or a .csv for text.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive with keys X and y.")
    try:
        with archive:
            keys = set(archive.files)
            _check_npz_sizes(path, archive, size)
            get = lambda key, kinds: _npz_array(path, archive, key, kinds)  # noqa: E731
            sparse_keys = {"data", "indices", "indptr", "shape"}
            if "X" in keys:
                X = get("X", "biuf")
            elif sparse_keys <= keys:
                fmt = _npz_text(path, get("format", "US"), "format") if "format" in keys else "csr"
                if fmt != "csr":
                    raise DataError(f"{path}: sparse format {fmt!r} is not supported; save X as CSR.")
                shape = get("shape", "iu")
                if shape.shape != (2,):
                    raise DataError(f"{path}: 'shape' must hold the two integers (n, d); got an array of shape {shape.shape}.")
                shape = tuple(int(v) for v in shape)
                try:
                    X = sp.csr_matrix((get("data", "biuf"), get("indices", "iu"), get("indptr", "iu")), shape=shape)
                except (ValueError, TypeError, OverflowError) as e:
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
            y = get("y", "biuf")
            ids = get("ids", "biuf") if "ids" in keys else None
            n_classes = None
            if "n_classes" in keys:
                raw = get("n_classes", "iu")
                if raw.shape != ():
                    raise DataError(f"{path}: 'n_classes' must be a single integer; got an array of shape {raw.shape}.")
                n_classes = int(raw)
            feature_names = None
            if "feature_names" in keys:
                raw = get("feature_names", "US")
                if raw.ndim != 1:
                    raise DataError(f"{path}: 'feature_names' must be a 1-D array of strings; got shape {raw.shape}.")
                feature_names = tuple(str(v) for v in raw)
            if name is None:
                name = _npz_text(path, get("name", "US"), "name") if "name" in keys else path.name
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # e.g. a corrupt member
        raise DataError(f"{path}: cannot read ({e}).") from None
    if not sp.issparse(X) and X.ndim < 2:
        raise DataError(
            f"{path}: 'X' must have shape (n, *feature_shape); got shape {X.shape}. Save a single column as shape (n, 1)."
        )
    if X.shape[0] == 0:
        raise DataError(f"{path}: the data set has no rows.")
    if y.ndim == 1 and y.size and y.dtype.kind in "iu":
        _check_compact_labels(path, y, n_classes)
    logger.debug("read %s: %s", path, X.shape)
    return Dataset(X, y, ids, n_classes=n_classes, name=name, feature_names=feature_names)


#: An NPZ file's arrays may take at most this many times the file's size in memory ...
NPZ_MAX_INFLATE = 100
#: ... once they are larger than this many bytes together (small compressed files are fine).
NPZ_INFLATE_FLOOR = 1 << 30


def _check_npz_sizes(path: Path, archive, size: int) -> None:
    infos = archive.zip.infolist()
    total = sum(i.file_size for i in infos)
    if total > NPZ_INFLATE_FLOOR and total > NPZ_MAX_INFLATE * max(size, 1):
        raise DataError(
            f"{path}: its arrays inflate to {total} bytes from a {size}-byte file, beyond the limit of "
            f"{NPZ_MAX_INFLATE} times the file's size; save the data uncompressed (numpy.savez) if it is real."
        )


def _npz_array(path: Path, archive, key: str, kinds: str) -> np.ndarray:
    """Read member ``key`` after checking its header: dtype kind in ``kinds``, size within the member."""
    member = key + ".npy"
    if member not in archive.zip.namelist():
        member = key
    info = archive.zip.getinfo(member)
    with archive.zip.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, _, dtype = np.lib.format._read_array_header(f, version)
        except (ValueError, EOFError, SyntaxError) as e:
            raise DataError(f"{path}: key {key!r} is not a readable array ({e}).") from None
        header = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: key {key!r} is an object array, which would need pickle; object arrays are not supported.")
    if dtype.kind not in kinds:
        want = {"biuf": "numbers", "iu": "integers", "US": "text"}.get(kinds, kinds)
        raise DataError(f"{path}: key {key!r} must hold {want}; got dtype {dtype} (shape {shape}).")
    need = math.prod(shape) * dtype.itemsize
    if need > info.file_size - header:
        raise DataError(
            f"{path}: key {key!r} declares shape {shape} ({need} bytes) but the archive holds "
            f"{info.file_size - header} bytes for it; the file is truncated or crafted."
        )
    return archive[key]


def _npz_text(path: Path, value: np.ndarray, key: str) -> str:
    if value.shape != ():
        raise DataError(f"{path}: {key!r} must be a single string; got an array of shape {value.shape}.")
    item = value.item()
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def save_npz(ds: Dataset, path, *, compress: bool = False) -> Path:
    """Write a data set to ``path`` so that :func:`read_npz` returns an equal one.

    Parameters
    ----------
    ds:
        The data set (dense or CSR).
    path:
        Destination; written exactly there (no ``.npz`` is appended), atomically. A folder,
        a symbolic link, a device, a FIFO or a path inside a ledger folder is refused
        (:class:`~unlearnkit.errors.OutputError`).
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

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            writer(f, **arrays)

    return atomic_write(path, write, user_path=True)
