"""Seeded train/validation/test splits and forget sets.

Splits keep the row ids of the source data set, so a forget set chosen on the training part
can be traced back to the original rows. Within each part rows keep their source order.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["Splits", "UnlearningSplit", "train_test_split", "forget_set", "retain_forget", "unlearning_split"]


@dataclass(frozen=True)
class Splits:
    """The parts of a split data set.

    Attributes
    ----------
    train, test:
        The training and test parts.
    val:
        The validation part, or ``None`` when no validation fraction was asked for.
    """

    train: Dataset
    val: Dataset | None
    test: Dataset


def train_test_split(
    ds: Dataset,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
    stratify: bool = True,
) -> Splits:
    """Split rows at random into train, (validation) and test parts.

    Parameters
    ----------
    ds:
        The data set to split.
    test_fraction:
        Fraction of rows in the test part, in ``(0, 1)``; the count is
        ``round(test_fraction * n)``.
    val_fraction:
        Fraction of rows in the validation part, in ``[0, 1)``; 0 means no validation part.
        ``test_fraction + val_fraction`` must be below 1.
    seed:
        Seed of the ``numpy.random.Generator``; the same seed gives the same split.
    stratify:
        Keep class proportions (as close as integer counts allow) in every part. Per-class
        counts are allocated by largest remainder, so part sizes are exact.

    Returns
    -------
    Splits
        ``Splits(train, val, test)``: disjoint parts covering all rows, with the source ids,
        in source order, named ``"<name>:train"``, ``"<name>:val"`` and ``"<name>:test"``.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if test_fraction + val_fraction >= 1:
        raise DataError(
            f"test_fraction + val_fraction must be < 1 to leave training rows; got "
            f"{test_fraction} + {val_fraction}."
        )
    n = len(ds)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    n_train = n - n_test - n_val
    if n_test < 1 or n_train < 1 or (val_fraction > 0 and n_val < 1):
        raise DataError(
            f"{ds.name}: {n} rows are too few for test_fraction={test_fraction}, "
            f"val_fraction={val_fraction} (every part needs at least one row); use more data or "
            "larger fractions."
        )
    rng = np.random.default_rng(seed)
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    if stratify:
        classes, counts = np.unique(ds.y, return_counts=True)
        test_per_class = _allocate(counts, n_test)
        val_per_class = _allocate(counts - test_per_class, n_val)
        for c, k_test, k_val in zip(classes, test_per_class, val_per_class):
            rows = rng.permutation(np.flatnonzero(ds.y == c))
            part[rows[:k_test]] = 2
            part[rows[k_test:k_test + k_val]] = 1
    else:
        rows = rng.permutation(n)
        part[rows[:n_test]] = 2
        part[rows[n_test:n_test + n_val]] = 1
    train = ds.subset(np.flatnonzero(part == 0), name=f"{ds.name}:train")
    test = ds.subset(np.flatnonzero(part == 2), name=f"{ds.name}:test")
    val = ds.subset(np.flatnonzero(part == 1), name=f"{ds.name}:val") if n_val else None
    logger.debug("split %s: train %d, val %d, test %d", ds.name, n_train, n_val, n_test)
    return Splits(train=train, val=val, test=test)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` among classes in proportion to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    if total == 0 or counts.sum() == 0:
        return np.zeros_like(counts)
    quota = counts * (total / counts.sum())
    base = np.minimum(np.floor(quota).astype(np.int64), counts)
    left = total - int(base.sum())
    if left > 0:
        remainder = np.where(base < counts, quota - base, -1.0)
        order = np.argsort(-remainder, kind="stable")
        base[order[:left]] += 1
    return base


def _check_fraction(label: str, value, *, allow_zero: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise DataError(f"{label} must be a number in {interval}; got {value!r}.")


def forget_set(ds: Dataset, *, fraction: float | None = None, classes=None, seed: int = 0) -> np.ndarray:
    """Choose rows to forget: a random fraction of rows, or every row of some classes.

    Give exactly one of ``fraction`` and ``classes``.

    Parameters
    ----------
    ds:
        The (training) data set.
    fraction:
        Fraction of rows in ``(0, 1)``, chosen uniformly at random without replacement;
        ``max(1, round(fraction * n))`` rows.
    classes:
        A class index or an iterable of class indices; every row with one of these labels
        is chosen. Each class must occur in ``ds``.
    seed:
        Seed for the random choice (unused with ``classes``).

    Returns
    -------
    numpy.ndarray
        The chosen row *ids* (``int64``), in the data set's row order.
    """
    if (fraction is None) == (classes is None):
        raise DataError("forget_set needs exactly one of fraction= (a random share of rows) or classes=.")
    if fraction is not None:
        _check_fraction("fraction", fraction, allow_zero=False)
        n = len(ds)
        if n < 2:
            raise DataError(f"{ds.name}: need at least 2 rows to forget a fraction of them; it has {n}.")
        k = min(n - 1, max(1, int(round(fraction * n))))
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(n, size=k, replace=False))
        return ds.ids[positions].copy()
    wanted = np.atleast_1d(np.asarray(classes))
    if wanted.size == 0:
        raise DataError("classes= is empty; name at least one class to forget.")
    if not np.issubdtype(wanted.dtype, np.integer):
        raise DataError(f"classes must be integer class indices; got {classes!r}.")
    present = set(np.unique(ds.y).tolist())
    unknown = sorted({int(c) for c in wanted} - present)
    if unknown:
        raise DataError(
            f"{ds.name}: class(es) {unknown} do not occur in the data; valid classes are "
            f"{sorted(present)} (n_classes={ds.n_classes})."
        )
    mask = np.isin(ds.y, wanted)
    if mask.all():
        raise DataError(f"{ds.name}: classes {sorted(set(wanted.tolist()))} cover every row; nothing would be retained.")
    return ds.ids[mask].copy()


def retain_forget(ds: Dataset, forget_ids) -> tuple[Dataset, Dataset]:
    """Partition a data set into the rows to keep and the rows to forget.

    Parameters
    ----------
    ds:
        The data set.
    forget_ids:
        Row ids (not positions) to forget; each must be in ``ds`` and appear once.

    Returns
    -------
    (Dataset, Dataset)
        ``(retain, forget)``, both in source order with source ids, named
        ``"<name>:retain"`` and ``"<name>:forget"``.
    """
    forget_ids = np.asarray(forget_ids).reshape(-1)
    if forget_ids.size == 0:
        raise DataError(f"{ds.name}: the forget set is empty; choose rows with forget_set().")
    if not np.issubdtype(forget_ids.dtype, np.integer):
        raise DataError(f"forget_ids must be integer row ids; got dtype {forget_ids.dtype}.")
    if np.unique(forget_ids).size != forget_ids.size:
        raise DataError(f"{ds.name}: forget_ids contains repeated ids; pass each id once.")
    positions = ds.positions(forget_ids)
    mask = np.zeros(len(ds), dtype=bool)
    mask[positions] = True
    if mask.all():
        raise DataError(f"{ds.name}: the forget set covers every row; nothing would be retained.")
    retain = ds.subset(np.flatnonzero(~mask), name=f"{ds.name}:retain")
    forget = ds.subset(np.flatnonzero(mask), name=f"{ds.name}:forget")
    return retain, forget


@dataclass(frozen=True)
class UnlearningSplit:
    """DeepUnlearn's split of a data set for an unlearning benchmark.

    Attributes
    ----------
    train:
        Every training row (``retain + forget``): the original model trains on it.
    retain, forget:
        The rows kept and the rows to unlearn; the retrained reference trains on ``retain``.
    val:
        Held-out rows taken from the training part (15 % by default).
    test:
        The test rows (the official test set when one is given); no unlearning method sees them.
    forget_ids:
        Ids of the forget rows (``Changes.remove(forget_ids)`` is the change set).
    """

    train: Dataset
    retain: Dataset
    forget: Dataset
    val: Dataset
    test: Dataset
    forget_ids: np.ndarray

    def changes(self):
        """The change set that removes the forget rows."""
        from unlearnkit.data.changes import Changes

        return Changes.remove(self.forget_ids.tolist())


def unlearning_split(
    ds: Dataset,
    test: Dataset | None = None,
    *,
    val_fraction: float = 0.15,
    forget_fraction: float | None = 0.10,
    forget_classes=None,
    test_fraction: float = 0.2,
    seed: int = 123,
) -> UnlearningSplit:
    """DeepUnlearn's protocol: validation 15 % of the training set, then a random 10 % forget set.

    One split per data set, fixed by ``seed`` (DeepUnlearn uses 123); model seeds vary on top of
    it. ``ds`` is the official training set and ``test`` the official test set; without
    ``test`` (the embedded sets have none) a stratified ``test_fraction`` of ``ds`` is held out
    first. Then a stratified ``val_fraction`` of the training rows becomes the validation set,
    and from the remaining rows the forget set is drawn: a uniformly random ``forget_fraction``
    (not stratified, as in DeepUnlearn) or, with ``forget_classes``, every row of those classes
    (class-wise forgetting; the validation and test rows of those classes stay where they are,
    so the forgotten classes can be measured on held-out data).
    """
    if forget_classes is not None:
        forget_fraction = None  # class-wise forgetting replaces the default random fraction
    elif forget_fraction is None:
        raise DataError("unlearning_split needs forget_fraction= (a random share) or forget_classes=.")
    base = ds.name
    if test is None:
        parts = train_test_split(ds, test_fraction=test_fraction, seed=seed)
        ds, test = parts.train, parts.test
    elif tuple(test.feature_shape) != tuple(ds.feature_shape):
        raise DataError(f"The test set has examples of shape {test.feature_shape}, the training set {ds.feature_shape}.")
    rng_seed = np.random.default_rng(seed).integers(2**31)
    parts = train_test_split(ds, test_fraction=val_fraction, seed=int(rng_seed))
    train, val = parts.train, parts.test.replace(name=f"{base}:val")
    if forget_classes is not None:
        forget_ids = forget_set(train, classes=forget_classes)
    else:
        forget_ids = forget_set(train, fraction=forget_fraction, seed=seed)
    retain, forget = retain_forget(train, forget_ids)
    train = train.replace(name=f"{base}:train")
    return UnlearningSplit(train=train, retain=retain.replace(name=f"{base}:retain"), forget=forget.replace(name=f"{base}:forget"),
                           val=val, test=test.replace(name=f"{base}:test"), forget_ids=np.asarray(forget_ids, dtype=np.int64))
