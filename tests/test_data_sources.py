"""Tests of the data layer: readers, embedded loaders, synthetic data, splits and sources."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import scipy.sparse as sp

from unlearnkit.data import (
    Dataset,
    Splits,
    available,
    forget_set,
    load,
    load_breast_cancer,
    load_digits,
    load_fashion_mnist,
    load_idx_pair,
    load_iris,
    load_mnist,
    load_wine,
    make_classification,
    normalize_rows,
    read_csv,
    read_idx,
    read_npz,
    retain_forget,
    save_npz,
    standardize,
    train_test_split,
)
from unlearnkit.errors import DataError

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path, array, *, gz=False, code=None):
    array = np.asarray(array)
    code = _CODES[array.dtype.type] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


@pytest.fixture
def tiny_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 4, 5), dtype=np.uint8), rng.integers(0, 10, size=7).astype(np.uint8)


# ------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_ubyte_roundtrip(tmp_path, tiny_images, gz):
    images, labels = tiny_images
    suffix = ".gz" if gz else ""
    ip = write_idx(tmp_path / f"img{suffix}", images, gz=gz)
    lp = write_idx(tmp_path / f"lab{suffix}", labels, gz=gz)
    np.testing.assert_array_equal(read_idx(ip), images)
    np.testing.assert_array_equal(read_idx(lp), labels)
    assert read_idx(ip).dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.int8])
def test_read_idx_other_dtypes(tmp_path, dtype):
    data = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) * dtype(1.5 if np.issubdtype(dtype, np.floating) else 1)
    out = read_idx(write_idx(tmp_path / "a.idx", data))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_read_idx_errors(tmp_path, tiny_images):
    images, _ = tiny_images
    good = write_idx(tmp_path / "good", images).read_bytes()
    cases = {
        "bad magic": b"\x01\x00" + good[2:],
        "unknown IDX dtype": good[:2] + b"\x07" + good[3:],
        "truncated": good[:-3],
        "size mismatch": good + b"\x00\x00",
    }
    for message, content in cases.items():
        p = tmp_path / "bad"
        p.write_bytes(content)
        with pytest.raises(DataError, match=message):
            read_idx(p)
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    gz = gzip.compress(good)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "missing")


def test_load_idx_pair(tmp_path, tiny_images):
    images, labels = tiny_images
    ip = write_idx(tmp_path / "i.gz", images, gz=True)
    lp = write_idx(tmp_path / "l", labels)
    ds = load_idx_pair(ip, lp, name="tiny")
    assert ds.X.shape == (7, 1, 4, 5) and ds.X.dtype == np.float32
    assert 0.0 <= ds.X.min() and ds.X.max() <= 1.0
    np.testing.assert_allclose(ds.X[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    np.testing.assert_array_equal(ds.ids, np.arange(7))
    with pytest.raises(DataError, match="6 labels"):
        load_idx_pair(ip, write_idx(tmp_path / "l6", labels[:6]))


def test_mnist_style_folder(tmp_path, tiny_images):
    images, labels = tiny_images
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:3])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:3])
    train = load_mnist(tmp_path)
    test = load_fashion_mnist(tmp_path, split="test")
    assert train.X.shape == (7, 1, 4, 5) and train.n_classes == 10
    assert test.X.shape == (3, 1, 4, 5) and test.name == "fashion-mnist:test"
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="split"):
        load_mnist(tmp_path, split="val")


@pytest.mark.skipif(not os.path.isdir(FASHION_ROOT), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_fashion_mnist()
    assert ds.X.shape == (60000, 1, 28, 28) and ds.X.dtype == np.float32
    assert ds.n_classes == 10 and np.bincount(ds.y).tolist() == [6000] * 10
    assert 0.0 <= ds.X.min() and ds.X.max() <= 1.0


# ------------------------------------------------------------------------------------- CSV / NPZ
def test_read_csv_header_and_label_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label,b\n1.5,0,2\n-3,1,4e-1\n\n0,2,0\n")
    ds = read_csv(p)
    assert ds.feature_names == ("a", "b") and ds.n_classes == 3
    np.testing.assert_allclose(ds.X, [[1.5, 2], [-3, 0.4], [0, 0]])
    np.testing.assert_array_equal(ds.y, [0, 1, 2])
    q = tmp_path / "noheader.csv"
    q.write_text("1,2,1\n3,4,0\n")
    ds2 = read_csv(q, label_column=-1)
    assert ds2.feature_names == ("x0", "x1")
    np.testing.assert_array_equal(ds2.y, [1, 0])
    with pytest.raises(DataError, match="no header"):
        read_csv(q)


def test_read_csv_errors(tmp_path):
    def check(text, match, **kw):
        p = tmp_path / "bad.csv"
        p.write_text(text)
        with pytest.raises(DataError, match=match):
            read_csv(p, **kw)

    check("a,label\n1,0\nnan,1\n", r"line 3, column 'a'.*NaN")
    check("a,label\n1,0\n,1\n", r"line 3, column 'a'.*empty")
    check("a,label\n1,0\n2,1\nabc,0\n", r"line 4, column 'a'.*'abc' is not a number")
    check("a,label\n1,0\n2,-1\n", "labels must be >= 0")
    check("a,label\n1,0\n2,5\n", "out of range", n_classes=3)
    check("a,label\n1,0\n2,0.5\n", "not an integer")
    check("a,label\n1,0\n2\n", "line 3 has 1 fields")
    check("a,b\n1,0\n", "no column named 'label'")
    with pytest.raises(DataError, match="no such file"):
        read_csv(tmp_path / "missing.csv")


def test_csv_with_ids(tmp_path):
    p = tmp_path / "ids.csv"
    p.write_text("id,x,label\n10,1,0\n20,2,1\n")
    ds = read_csv(p, id_column="id")
    np.testing.assert_array_equal(ds.ids, [10, 20])
    assert ds.feature_names == ("x",)


def test_npz_roundtrip_dense_and_sparse(tmp_path):
    dense = load_iris().subset(np.arange(0, 150, 7))
    back = read_npz(save_npz(dense, tmp_path / "d.npz"))
    assert back.fingerprint() == dense.fingerprint()
    assert back.feature_names == dense.feature_names and back.name == dense.name
    assert back.n_classes == 3

    sparse = make_classification(50, 30, sparse=True, density=0.2, seed=1, n_classes=3)
    sparse = sparse.replace(ids=np.arange(50) * 3 + 1)
    path = save_npz(sparse, tmp_path / "s.data", compress=True)
    assert path == tmp_path / "s.data"
    back = read_npz(path)
    assert back.is_sparse and back.fingerprint() == sparse.fingerprint()
    assert (sp.load_npz(path) != sparse.X).nnz == 0  # scipy reads the same X


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no labels"):
        read_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "nox.npz", y=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match="no features"):
        read_npz(tmp_path / "nox.npz")
    np.savez(tmp_path / "nan.npz", X=np.array([[np.nan, 1.0]]), y=np.array([0]))
    with pytest.raises(DataError, match="NaN"):
        read_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "neg.npz", X=np.zeros((2, 2)), y=np.array([0, -1]))
    with pytest.raises(DataError, match=">= 0"):
        read_npz(tmp_path / "neg.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        read_npz(tmp_path / "junk.npz")


# ------------------------------------------------------------------------------------- Dataset
def test_dataset_validation():
    X = np.zeros((4, 3))
    with pytest.raises(DataError, match="NaN"):
        Dataset(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(DataError, match="y must have shape"):
        Dataset(X, np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=">= 0"):
        Dataset(X, np.array([0, 1, -1, 0]))
    with pytest.raises(DataError, match="unique"):
        Dataset(X, np.zeros(4, dtype=int), ids=np.array([1, 2, 2, 3]))
    with pytest.raises(DataError, match="out of range"):
        Dataset(X, np.array([0, 1, 2, 3]), n_classes=3)


# ------------------------------------------------------------------------------------- embedded
def test_embedded_loaders():
    digits = load_digits()
    assert digits.X.shape == (1797, 1, 8, 8) and digits.X.dtype == np.float32
    assert digits.X.min() == 0.0 and digits.X.max() == 1.0
    assert digits.feature_names[0] == "pixel_0_0" and digits.feature_names[9] == "pixel_1_1"
    assert digits.n_classes == 10
    for loader, shape, k in ((load_breast_cancer, (569, 30), 2), (load_wine, (178, 13), 3), (load_iris, (150, 4), 3)):
        ds = loader()
        assert ds.X.shape == shape and ds.X.dtype == np.float64 and ds.n_classes == k
        assert len(ds.feature_names) == shape[1]
    assert load_breast_cancer().X.max() > 100  # raw, not standardised


def test_standardize_uses_train_statistics():
    splits = train_test_split(load_wine(), seed=3)
    tr, te = standardize(splits.train, splits.test)
    np.testing.assert_allclose(tr.X.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(tr.X.std(axis=0), 1, atol=1e-10)
    mean, std = splits.train.X.mean(axis=0), splits.train.X.std(axis=0)
    np.testing.assert_allclose(te.X, (splits.test.X - mean) / std)
    np.testing.assert_array_equal(te.ids, splits.test.ids)
    const = Dataset(np.ones((5, 2)), np.array([0, 1, 0, 1, 0]))
    (c,) = standardize(const)
    np.testing.assert_array_equal(c.X, 0)
    with pytest.raises(DataError, match="dense"):
        standardize(make_classification(10, 5, sparse=True, density=0.5))


def test_normalize_rows_dense_and_sparse():
    X = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    ds = normalize_rows(Dataset(X, np.array([0, 1, 0])))
    np.testing.assert_allclose(ds.X, [[0.6, 0.8], [0.3, 0.4], [0, 0]])
    sparse = Dataset(sp.csr_matrix(X), np.array([0, 1, 0]))
    out = normalize_rows(sparse)
    assert out.is_sparse
    np.testing.assert_allclose(out.X.toarray(), [[0.6, 0.8], [0.3, 0.4], [0, 0]], rtol=1e-6)
    digits = normalize_rows(load_digits())
    assert digits.X.shape == (1797, 1, 8, 8)
    assert np.linalg.norm(digits.X.reshape(1797, -1), axis=1).max() <= 1 + 1e-6


# ------------------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_learnable():
    a = make_classification(2000, 10, n_classes=3, seed=5)
    b = make_classification(2000, 10, n_classes=3, seed=5)
    c = make_classification(2000, 10, n_classes=3, seed=6)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.X.shape == (2000, 10) and a.X.dtype == np.float32 and a.n_classes == 3
    assert set(np.unique(a.y)) == {0, 1, 2}
    from sklearn.linear_model import LogisticRegression

    acc = LogisticRegression(max_iter=500).fit(a.X[:1500], a.y[:1500]).score(a.X[1500:], a.y[1500:])
    assert 0.6 < acc < 0.99  # learnable, not separable


def test_synthetic_sparse_shape_and_density():
    ds = make_classification(5000, 400, sparse=True, density=0.02, seed=2)
    assert ds.is_sparse and ds.X.shape == (5000, 400)
    assert abs(ds.X.nnz / (5000 * 400) - 0.02) < 0.002
    assert set(np.unique(ds.X.data)) == {1.0}
    assert ds.fingerprint() == make_classification(5000, 400, sparse=True, density=0.02, seed=2).fingerprint()
    multi_block = make_classification(70000, 20, sparse=True, density=0.1, seed=0)
    assert multi_block.X.shape == (70000, 20) and multi_block.X.has_canonical_format
    with pytest.raises(DataError, match="density"):
        make_classification(10, 5, sparse=True, density=0.0)
    with pytest.raises(DataError, match="n_classes"):
        make_classification(10, 5, n_classes=1)


# ------------------------------------------------------------------------------------- splits
def test_train_test_split_properties():
    ds = load_digits().replace(ids=np.arange(1797) * 2 + 100)
    s = train_test_split(ds, test_fraction=0.2, val_fraction=0.1, seed=4)
    assert isinstance(s, Splits)
    parts = [s.train.ids, s.val.ids, s.test.ids]
    union = np.concatenate(parts)
    assert union.size == len(ds) and set(union) == set(ds.ids)
    assert len(s.test) == round(0.2 * 1797) and len(s.val) == round(0.1 * 1797)
    full = np.bincount(ds.y) / len(ds)
    for part in (s.train, s.val, s.test):
        np.testing.assert_allclose(np.bincount(part.y, minlength=10) / len(part), full, atol=0.02)
    again = train_test_split(ds, test_fraction=0.2, val_fraction=0.1, seed=4)
    np.testing.assert_array_equal(again.test.ids, s.test.ids)
    other = train_test_split(ds, test_fraction=0.2, val_fraction=0.1, seed=5)
    assert not np.array_equal(other.test.ids, s.test.ids)
    plain = train_test_split(ds, stratify=False)
    assert plain.val is None and len(plain.test) == 359
    np.testing.assert_array_equal(ds.subset(ds.positions(s.test.ids)).y, s.test.y)
    for bad in ({"test_fraction": 0.0}, {"test_fraction": 1.2}, {"test_fraction": 0.6, "val_fraction": 0.5}):
        with pytest.raises(DataError):
            train_test_split(ds, **bad)


def test_forget_set_and_retain_forget():
    ds = load_iris().replace(ids=np.arange(150) + 1000)
    ids = forget_set(ds, fraction=0.1, seed=1)
    assert ids.size == 15 and len(set(ids)) == 15 and set(ids) <= set(ds.ids)
    np.testing.assert_array_equal(ids, forget_set(ds, fraction=0.1, seed=1))
    by_class = forget_set(ds, classes=[2])
    assert by_class.size == 50 and np.all(ds.y[ds.positions(by_class)] == 2)
    retain, forget = retain_forget(ds, by_class)
    assert len(retain) == 100 and len(forget) == 50
    assert set(retain.ids).isdisjoint(forget.ids) and set(retain.ids) | set(forget.ids) == set(ds.ids)
    assert not np.any(retain.y == 2)
    for kwargs, match in (
        ({"fraction": 0.0}, r"\(0, 1\)"),
        ({"fraction": 1.0}, r"\(0, 1\)"),
        ({"classes": [7]}, "do not occur"),
        ({}, "exactly one"),
        ({"fraction": 0.1, "classes": [0]}, "exactly one"),
    ):
        with pytest.raises(DataError, match=match):
            forget_set(ds, **kwargs)
    with pytest.raises(DataError, match="not in the dataset"):
        retain_forget(ds, [5])
    with pytest.raises(DataError, match="empty"):
        retain_forget(ds, [])


# ------------------------------------------------------------------------------------- load()
def test_load_specs(tmp_path):
    assert set(available()) >= {"digits", "breast-cancer", "wine", "iris", "fashion-mnist", "synthetic"}
    train, test = load("digits:train"), load("digits:test")
    assert len(train) + len(test) == 1797 and set(train.ids).isdisjoint(test.ids)
    np.testing.assert_array_equal(train.ids, train_test_split(load_digits(), seed=0).train.ids)
    assert load("breast-cancer").X.shape == (569, 30)
    syn = load("synthetic:n=300,d=7,classes=3,sparse=1,density=0.3,seed=2")
    assert syn.is_sparse and syn.X.shape == (300, 7) and syn.n_classes == 3
    assert len(load("synthetic:n=100:test")) == 20
    assert load("synthetic").X.shape == (1000, 20)

    path = tmp_path / "w.npz"
    save_npz(load_wine(), path)
    assert load(str(path)).X.shape == (178, 13)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("f,label\n1,0\n2,1\n")
    assert len(load(str(csv_path))) == 2

    for spec, match in (
        ("mnist-42", "unknown data source.*digits, breast-cancer"),
        ("synthetic:bogus=1", "bad synthetic parameter"),
        ("synthetic:n=abc", "must be an integer"),
        (str(tmp_path / "none.csv"), "not found"),
        ("", "non-empty"),
    ):
        with pytest.raises(DataError, match=match):
            load(spec)
