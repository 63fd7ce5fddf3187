"""Resolve a data-source string, as given on the command line, to a :class:`Dataset`.

Grammar
-------
``NAME[:train|:test]``
    An embedded data set: ``digits``, ``breast-cancer``, ``wine``, ``iris``. The suffix
    selects that part of ``train_test_split(ds, seed=0)`` (20 % test, stratified).
``fashion-mnist[:train|:test]``
    Fashion-MNIST's official training (default) or test split, read from the Debian package
    path ``/usr/share/datasets/fashion-mnist``.
``synthetic[:k=v,k=v,...][:train|:test]``
    :func:`~unlearnkit.data.synthetic.make_classification`; keys ``n`` (default 1000),
    ``d`` (20), ``classes`` (2), ``sparse`` (0/1), ``density`` (0.01), ``noise`` (0.25),
    ``seed`` (0). Example: ``synthetic:n=1000,d=20,classes=2,sparse=0,seed=0``.
``PATH.csv`` / ``PATH.npz`` [``:train|:test``]
    A file read with :func:`~unlearnkit.data.readers.read_csv` (label column ``label`` unless
    ``label_column`` names another; ids from ``id_column`` or the row number) or
    :func:`~unlearnkit.data.readers.read_npz`.

Row ids of a ``:train`` or ``:test`` part are those of the whole source: ``file.csv:train``
holds about 80 % of the file's rows, each with the id it has in the file (its ``id_column``
value, else its 0-based row number), so a change set written for the part names the same rows
in the file.
"""

from __future__ import annotations

import logging
import math
import os

from unlearnkit.data import embedded, readers, synthetic
from unlearnkit.data.dataset import Dataset
from unlearnkit.data.splits import train_test_split
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["load", "available", "is_csv"]

_EMBEDDED = {
    "digits": embedded.load_digits,
    "breast-cancer": embedded.load_breast_cancer,
    "wine": embedded.load_wine,
    "iris": embedded.load_iris,
}
_SYNTHETIC_DEFAULTS = {"n": 1000, "d": 20, "classes": 2, "sparse": 0, "density": 0.01, "noise": 0.25, "seed": 0}
_SYNTHETIC_TYPES = {"n": int, "d": int, "classes": int, "sparse": int, "density": float, "noise": float, "seed": int}
_PARTS = ("train", "test")


def available() -> tuple[str, ...]:
    """Names :func:`load` accepts (besides ``.csv`` and ``.npz`` paths).

    Returns
    -------
    tuple of str
        ``("digits", "breast-cancer", "wine", "iris", "fashion-mnist", "synthetic")``.
    """
    return (*_EMBEDDED, "fashion-mnist", "synthetic")


def is_csv(spec: str) -> bool:
    """Whether the source string names a ``.csv`` file (with or without ``:train`` / ``:test``)."""
    if not isinstance(spec, str):
        return False
    head, sep, tail = spec.strip().rpartition(":")
    base = head if sep and tail.lower() in _PARTS and head else spec.strip()
    return base.lower().endswith(".csv")


def load(spec: str, *, label_column: str | int | None = None, id_column: str | int | None = None,
         class_names=None) -> Dataset:
    """Load the data set a source string names (grammar in the module docstring).

    Parameters
    ----------
    spec:
        E.g. ``"digits"``, ``"digits:train"``, ``"fashion-mnist:test"``,
        ``"synthetic:n=5000,d=50,classes=3"``, ``"data/train.csv"``.
    label_column, id_column:
        For a ``.csv`` source: the label column (default ``label``) and the optional id
        column, by header name or 0-based index (see :func:`~unlearnkit.data.readers.read_csv`).
        Refused for other sources, whose layout is fixed.
    class_names:
        For a ``.csv`` source: read its labels as these class names (the ones a model was
        trained with). Ignored by sources whose labels are class codes.

    Returns
    -------
    Dataset
        The data set (or its train/test part), named after ``spec``.

    Raises
    ------
    DataError
        For an unknown name, a bad synthetic parameter or a missing file, listing what is
        valid.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a data source must be a non-empty string; got {spec!r}. {_valid()}")
    spec = spec.strip()
    base, part = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail.lower() in _PARTS and head:
        base, part = head, tail.lower()

    lowered = base.lower()
    if (label_column is not None or id_column is not None) and not lowered.endswith(".csv"):
        option = "label_column" if label_column is not None else "id_column"
        raise DataError(f"{option} applies to .csv files only; {spec!r} has a fixed layout (its labels and ids "
                        "come with it). Leave the option out.")
    if lowered.endswith((".csv", ".npz")):
        if not os.path.isfile(base):
            raise DataError(f"data file {base!r} not found. Check the path. {_valid()}")
        if lowered.endswith(".csv"):
            ds = readers.read_csv(base, label_column="label" if label_column is None else label_column,
                                  id_column=id_column, class_names=class_names)
        else:
            ds = readers.read_npz(base)
        return _part(ds, part, spec)

    name, _, params = base.partition(":")
    name = name.lower()
    if name in _EMBEDDED and not params:
        return _part(_EMBEDDED[name](), part, spec)
    if name == "fashion-mnist" and not params:
        ds = readers.load_fashion_mnist(split=part or "train")
        return ds.replace(name=spec)
    if name == "synthetic":
        ds = synthetic.make_classification(**_synthetic_args(params), name=base)
        return _part(ds, part, spec)
    raise DataError(f"unknown data source {spec!r}. {_valid()}")


def _part(ds: Dataset, part: str | None, spec: str) -> Dataset:
    if part is None:
        return ds.replace(name=spec) if ds.name != spec else ds
    splits = train_test_split(ds, seed=0)
    chosen = splits.train if part == "train" else splits.test
    return chosen.replace(name=spec)


def _synthetic_args(params: str) -> dict:
    values = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in values:
            raise DataError(
                f"bad synthetic parameter {item!r}; use key=value with keys "
                f"{', '.join(_SYNTHETIC_DEFAULTS)} (e.g. synthetic:n=1000,d=20,classes=2,sparse=0,seed=0)."
            )
        kind = _SYNTHETIC_TYPES[key]
        try:
            values[key] = _parse_int(raw) if kind is int else _parse_float(raw)
        except (ValueError, OverflowError):
            raise DataError(f"synthetic parameter {key}={raw!r} must be {'an integer' if kind is int else 'a finite number'}.") from None
    if values["sparse"] not in (0, 1):
        raise DataError(f"synthetic parameter sparse must be 0 or 1; got {values['sparse']}.")
    return dict(
        n=values["n"], d=values["d"], n_classes=values["classes"], sparse=bool(values["sparse"]),
        density=values["density"], noise=values["noise"], seed=values["seed"],
    )


def _parse_int(raw: str) -> int:
    """An integer written as digits (exact, any size) or in float notation such as ``1e6``."""
    raw = raw.strip()
    try:
        return int(raw)
    except ValueError:
        value = float(raw)
        if not math.isfinite(value) or value != int(value):
            raise ValueError(raw) from None
        return int(value)


def _parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _valid() -> str:
    return (
        f"Valid sources: {', '.join(available())} (optionally with :train or :test), "
        "synthetic:n=...,d=...,classes=...,sparse=0|1,seed=..., or a path ending in .csv or .npz."
    )
