"""Seeded synthetic classification data drawn from a planted linear (softmax) model.

The generator draws a weight matrix ``W`` of shape ``(d, n_classes)``, features ``X`` (dense
Gaussian or sparse binary) and then samples each label from ``softmax((X @ W + b) / noise)``.
The planted logits are scaled to unit standard deviation per class, so ``noise`` alone sets
how hard the task is: labels depend on the features (a linear model can learn them) but are
random given the features, so the classes are not separable.

Sparse data is generated directly in CSR form, a block of rows at a time, so a
``10^6 x 10^4`` matrix with density 0.01 never exists in dense form.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["make_classification"]

# Rows generated per block. Fixed (not tuned to the machine) so that a seed always gives the
# same data, whatever the size of the request.
_BLOCK_ROWS = 65536

#: Largest request :func:`make_classification` accepts, checked before anything is allocated:
#: rows, stored feature values (``n * d`` dense, about ``n * d * density`` sparse) and entries
#: of the planted weight matrix (``d * n_classes``).
MAX_ROWS = 100_000_000
MAX_VALUES = 1_000_000_000
MAX_WEIGHTS = 100_000_000


def make_classification(
    n: int,
    d: int,
    *,
    n_classes: int = 2,
    sparse: bool = False,
    density: float = 0.01,
    seed: int = 0,
    noise: float = 0.25,
    dtype=np.float32,
    name: str | None = None,
) -> Dataset:
    """Draw a labelled data set from a planted linear softmax model.

    Parameters
    ----------
    n, d:
        Number of rows and of feature columns (both >= 1).
    n_classes:
        Number of classes (>= 2).
    sparse:
        ``False``: features are i.i.d. standard normal, ``X`` is a dense ``(n, d)`` array.
        ``True``: each entry is 1 with probability ``density`` and 0 otherwise, ``X`` is a
        ``(n, d)`` CSR matrix built block by block (memory ~ ``n * d * density`` entries).
    density:
        Probability that a sparse entry is 1, in ``(0, 1]``; ignored when ``sparse=False``.
    seed:
        Seed of the ``numpy.random.Generator``; the same arguments always give the same data.
    noise:
        Temperature of the label distribution (> 0). Labels are drawn from
        ``softmax(z / noise)`` where the planted logits ``z`` have unit standard deviation per
        class. With the default 0.25, a binary task has a Bayes accuracy of roughly 0.85-0.9;
        smaller values approach a separable task, larger ones approach random labels.
    dtype:
        Floating dtype of ``X`` (``float32`` or ``float64``).
    name:
        Name of the data set; defaults to a description of the arguments.

    Returns
    -------
    Dataset
        ``n`` rows with ids ``arange(n)``, labels in ``[0, n_classes)`` and ``n_classes`` set
        (a class may be absent from a very small sample).
    """
    n, d, n_classes = _check_int("n", n, 1), _check_int("d", d, 1), _check_int("n_classes", n_classes, 2)
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        raise DataError(f"noise must be a finite number > 0 (the label temperature); got {noise!r}.")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise DataError(f"dtype must be float32 or float64; got {dtype}.")
    if sparse and not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise DataError(f"density must be in (0, 1] (probability that an entry is 1); got {density!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise DataError(f"seed must be an integer in [0, 2**64); got {seed!r}.")
    from unlearnkit.data.dataset import MAX_CLASSES

    values = n * d * (float(density) if sparse else 1.0)
    for what, amount, limit in (
        ("rows", n, MAX_ROWS), ("stored feature values", values, MAX_VALUES),
        ("planted weights (d * n_classes)", d * n_classes, MAX_WEIGHTS), ("classes", n_classes, MAX_CLASSES),
    ):
        if amount > limit:
            raise DataError(
                f"synthetic data of n={n}, d={d}, n_classes={n_classes}{f', density={density:g}' if sparse else ''} "
                f"needs {amount:.3g} {what}, beyond the limit of {limit:,}; ask for a smaller data set."
            )

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, n_classes))
    if sparse:
        p = float(density)
        # A Bernoulli(p) feature has variance p(1-p); centre the logits with an intercept.
        var = p * (1.0 - p) if p < 1 else 1.0
        W /= math.sqrt(var * d)
        b = -p * W.sum(axis=0)
    else:
        W /= math.sqrt(d)
        b = np.zeros(n_classes)
    W_t = W.astype(dtype)

    y = np.empty(n, dtype=np.int64)
    X = None if sparse else np.empty((n, d), dtype=dtype)
    blocks = []
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(n, start + _BLOCK_ROWS)
        if sparse:
            Xb = _bernoulli_csr(rng, stop - start, d, float(density), dtype)
            blocks.append(Xb)
        else:
            Xb = X[start:stop]
            rng.standard_normal(out=Xb, dtype=dtype)
        logits = np.asarray(Xb @ W_t, dtype=np.float64) + b
        gumbel = -np.log(-np.log(rng.random((stop - start, n_classes))))
        y[start:stop] = np.argmax(logits / noise + gumbel, axis=1)  # exact softmax sampling
    if sparse:
        X = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr", dtype=dtype)
    if name is None:
        kind = f"sparse,density={density:g}" if sparse else "dense"
        name = f"synthetic(n={n},d={d},classes={n_classes},{kind},seed={seed})"
    logger.debug("generated %s", name)
    return Dataset(X, y, n_classes=n_classes, name=name)


def _bernoulli_csr(rng: np.random.Generator, rows: int, d: int, p: float, dtype) -> sp.csr_matrix:
    """A ``(rows, d)`` CSR matrix whose entries are independently 1 with probability ``p``.

    Positions of the ones in the flattened (row-major) block are found by adding geometric
    gaps, which yields them already sorted by row and column.
    """
    total = rows * d
    if p >= 1.0:
        positions = np.arange(total, dtype=np.int64)
    else:
        expected = total * p
        chunks, last = [], np.int64(-1)
        while True:
            m = int(expected + 6.0 * math.sqrt(expected) + 64)
            gaps = rng.geometric(p, size=m)
            pos = last + np.cumsum(gaps, dtype=np.int64)
            if pos[-1] >= total:
                chunks.append(pos[: np.searchsorted(pos, total)])
                break
            chunks.append(pos)
            last = pos[-1]
            expected = (total - 1 - last) * p
        positions = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    row = positions // d
    index_dtype = np.int32 if max(d, positions.size) < 2**31 else np.int64
    indices = (positions - row * d).astype(index_dtype)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=rows), out=indptr[1:])
    if positions.size < 2**31:
        indptr = indptr.astype(np.int32)
    data = np.ones(positions.size, dtype=dtype)
    X = sp.csr_matrix((data, indices, indptr), shape=(rows, d))
    X.has_sorted_indices = True
    return X


def _check_int(label: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{label} must be an integer >= {minimum}; got {value!r}.")
    return int(value)
