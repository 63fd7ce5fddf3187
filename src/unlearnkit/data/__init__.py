"""Data sets, loaders, readers, splits and forget sets.

``load(spec)`` turns a source string (``"digits:train"``, ``"synthetic:n=1000"``,
``"data.csv"``) into a :class:`Dataset`; the other names build or transform data sets
directly.
"""

from unlearnkit.data.changes import Changes, FeatureEdit, LabelEdit, PointRemoval, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.data.embedded import (
    load_breast_cancer,
    load_digits,
    load_iris,
    load_wine,
    normalize_rows,
    standardize,
)
from unlearnkit.data.readers import (
    load_fashion_mnist,
    load_idx_pair,
    load_mnist,
    read_csv,
    read_idx,
    read_npz,
    save_npz,
)
from unlearnkit.data.preprocess import prepare
from unlearnkit.data.sources import available, load
from unlearnkit.data.splits import Splits, UnlearningSplit, forget_set, retain_forget, train_test_split, unlearning_split
from unlearnkit.data.synthetic import make_classification
from unlearnkit.data.text import CharVocab, Quote, attribution_name, char_windows, load_fortunes, python_docs_excerpt
from unlearnkit.data.torchdata import StreamingDataset, from_retain_forget, from_torch, split_forget

__all__ = [
    "CharVocab",
    "Changes",
    "FeatureEdit",
    "LabelEdit",
    "PointRemoval",
    "Resolved",
    "Dataset",
    "Splits",
    "StreamingDataset",
    "UnlearningSplit",
    "Quote",
    "attribution_name",
    "available",
    "char_windows",
    "forget_set",
    "from_retain_forget",
    "from_torch",
    "load",
    "load_breast_cancer",
    "load_digits",
    "load_fashion_mnist",
    "load_fortunes",
    "load_idx_pair",
    "load_iris",
    "load_mnist",
    "load_wine",
    "make_classification",
    "normalize_rows",
    "prepare",
    "python_docs_excerpt",
    "read_csv",
    "read_idx",
    "read_npz",
    "retain_forget",
    "save_npz",
    "split_forget",
    "standardize",
    "train_test_split",
    "unlearning_split",
]
