"""Small real data sets that ship with scikit-learn, and two feature-scaling helpers.

Every loader reads data that is installed together with scikit-learn; nothing is downloaded.
Row ids are ``arange(n)`` in the order scikit-learn returns the rows.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "load_digits",
    "load_breast_cancer",
    "load_wine",
    "load_iris",
    "standardize",
    "normalize_rows",
]


def load_digits() -> Dataset:
    """The UCI hand-written digits (1,797 images of 8x8 pixels, 10 classes).

    Returns
    -------
    Dataset
        ``X`` is ``float32`` of shape ``(1797, 1, 8, 8)`` with pixel values scaled from
        ``0..16`` to ``[0, 1]``; ``y`` holds the digits ``0..9``; ``feature_names`` are
        ``"pixel_r_c"`` (row ``r``, column ``c``) for the 64 flattened pixels.
    """
    from sklearn import datasets

    raw = datasets.load_digits()
    X = (np.asarray(raw.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    names = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
    logger.debug("loaded digits: %s", X.shape)
    return Dataset(X, np.asarray(raw.target), n_classes=10, name="digits", feature_names=names)


def _tabular(loader_name: str, name: str) -> Dataset:
    from sklearn import datasets

    raw = getattr(datasets, loader_name)()
    X = np.asarray(raw.data, dtype=np.float64)
    y = np.asarray(raw.target)
    logger.debug("loaded %s: %s", name, X.shape)
    return Dataset(
        X, y, n_classes=len(raw.target_names), name=name,
        feature_names=tuple(str(f) for f in raw.feature_names),
    )


def load_breast_cancer() -> Dataset:
    """The Wisconsin diagnostic breast-cancer data (569 rows, 30 features, 2 classes).

    Returns
    -------
    Dataset
        Raw (not standardised) ``float64`` features of shape ``(569, 30)``, labels
        ``0`` = malignant, ``1`` = benign, and scikit-learn's feature names. Use
        :func:`standardize` to z-score them with training statistics.
    """
    return _tabular("load_breast_cancer", "breast-cancer")


def load_wine() -> Dataset:
    """The UCI wine recognition data (178 rows, 13 features, 3 classes).

    Returns
    -------
    Dataset
        Raw ``float64`` features of shape ``(178, 13)``, labels ``0..2`` and
        scikit-learn's feature names.
    """
    return _tabular("load_wine", "wine")


def load_iris() -> Dataset:
    """Fisher's iris data (150 rows, 4 features, 3 classes).

    Returns
    -------
    Dataset
        Raw ``float64`` features of shape ``(150, 4)``, labels ``0..2`` and
        scikit-learn's feature names.
    """
    return _tabular("load_iris", "iris")


def standardize(train: Dataset, *others: Dataset) -> tuple[Dataset, ...]:
    """Z-score features with the mean and standard deviation of ``train`` only.

    Each feature column (every element of the feature shape) is shifted by the training
    mean and divided by the training standard deviation; a column with standard deviation
    0 is divided by 1 instead. ``others`` (validation, test, forget sets, ...) are
    transformed with the *training* statistics, so no information leaks from them.

    Parameters
    ----------
    train:
        The dense data set whose statistics are used.
    *others:
        Further dense data sets with the same feature shape.

    Returns
    -------
    tuple of Dataset
        ``(train_standardised, *others_standardised)``: new data sets with the same ids,
        labels, names and dtype as the inputs.
    """
    for ds in (train, *others):
        if ds.is_sparse:
            raise DataError(
                f"{ds.name}: standardize() needs dense features; centring would densify a sparse "
                "matrix. Use normalize_rows() for sparse data instead."
            )
        if ds.feature_shape != train.feature_shape:
            raise DataError(
                f"{ds.name}: feature shape {ds.feature_shape} differs from the training set's "
                f"{train.feature_shape}; standardise only data sets with the same features."
            )
    if len(train) == 0:
        raise DataError(f"{train.name}: cannot standardise with statistics of an empty training set.")
    X = np.asarray(train.X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    out = []
    for ds in (train, *others):
        Z = (np.asarray(ds.X, dtype=np.float64) - mean) / std
        out.append(ds.replace(X=Z.astype(ds.X.dtype, copy=False)))
    return tuple(out)


def normalize_rows(ds: Dataset) -> Dataset:
    """Scale rows so that every row has Euclidean norm at most 1.

    Each row ``x`` is divided by ``max(1, ||x||_2)``: rows already inside the unit ball are
    left unchanged, longer rows are projected onto the unit sphere. (This bounded-norm
    condition is what certified-removal guarantees for linear models assume.)

    Parameters
    ----------
    ds:
        A dense or CSR data set; image rows are treated as flattened vectors.

    Returns
    -------
    Dataset
        A new data set of the same kind (dense or CSR), dtype, ids and names.
    """
    if ds.is_sparse:
        X = ds.X
        sq = np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).reshape(-1)
        scale = 1.0 / np.maximum(1.0, np.sqrt(sq))
        Xn = sp.csr_matrix(sp.diags(scale.astype(X.dtype)) @ X, dtype=X.dtype)
        return ds.replace(X=Xn)
    X = np.asarray(ds.X)
    flat = X.reshape(len(X), -1).astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat)) if flat.size else np.zeros(len(X))
    scale = 1.0 / np.maximum(1.0, norms)
    Xn = (flat * scale[:, None]).reshape(X.shape).astype(X.dtype, copy=False)
    return ds.replace(X=Xn)
