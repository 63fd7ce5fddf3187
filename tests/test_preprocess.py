"""Stored preprocessing: CSV layout and text labels, standardisation, row scaling, raw-unit change sets."""

from __future__ import annotations

import numpy as np
import pytest

import unlearnkit as uk
from unlearnkit.data import Changes, Dataset, load, read_csv, standardize
from unlearnkit.data.preprocess import Preprocessing, row_norms, scale_warning
from unlearnkit.errors import ChangesError, DataError


def _pets(path, labels=("cat", "dog", "eel")):
    rng = np.random.default_rng(0)
    lines = ["id,weight_g,height_m,species"]
    for i in range(40):
        lines.append(f"{100 + i},{rng.normal(30000, 9000):.1f},{rng.normal(0.5, 0.2):.3f},{labels[i % len(labels)]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_labels_are_sorted_class_names_and_ids_come_from_the_id_column(tmp_path):
    ds = read_csv(_pets(tmp_path / "p.csv", ("eel", "cat", "dog")), label_column="species", id_column="id")
    assert ds.class_names == ("cat", "dog", "eel")
    assert ds.y[:3].tolist() == [2, 0, 1]  # eel, cat, dog
    assert ds.ids[:3].tolist() == [100, 101, 102]
    assert ds.feature_names == ("weight_g", "height_m")
    # a part keeps the ids of the whole file and the class names
    part = load(str(tmp_path / "p.csv") + ":train", label_column="species", id_column="id")
    assert set(part.ids.tolist()) < set(ds.ids.tolist()) and part.class_names == ds.class_names


def test_label_column_by_index_without_header(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("1.0,2.0,yes\n2.0,1.0,no\n3.0,0.5,yes\n")
    ds = read_csv(f, label_column=-1)
    assert ds.class_names == ("no", "yes") and ds.y.tolist() == [1, 0, 1] and len(ds) == 3


def test_fixed_class_names_map_another_file_and_refuse_an_unseen_label(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("a,species\n1,dog\n2,dog\n")  # only one class present: codes come from the given names
    ds = read_csv(f, label_column="species", class_names=["cat", "dog", "eel"])
    assert ds.y.tolist() == [1, 1] and ds.n_classes == 3
    f.write_text("a,species\n1,dog\n2,fox\n")
    with pytest.raises(DataError, match=r"line 3, column 'species': label 'fox' is not one of the 3 classes"):
        read_csv(f, label_column="species", class_names=["cat", "dog", "eel"])


@pytest.mark.parametrize("kw, message", [
    ({"label_column": "kind"}, r"no column named 'kind'; the columns are \['id', 'weight_g', 'height_m', 'species'\]"),
    ({"label_column": 9}, r"label_column=9 is out of range for 4 columns"),
    ({"label_column": "species", "id_column": "nope"}, r"no column named 'nope'.*--id-column"),
    ({"label_column": "species", "id_column": "species"}, r"the same column"),
])
def test_bad_columns_are_named(tmp_path, kw, message):
    with pytest.raises(DataError, match=message):
        read_csv(_pets(tmp_path / "p.csv"), **kw)


def test_column_options_only_for_csv():
    with pytest.raises(DataError, match="applies to .csv files only"):
        load("digits:train", label_column="label")


def test_standardize_matches_the_python_helper_and_round_trips():
    data = load("breast-cancer:train")
    prep = Preprocessing.fit(data, standardize=True)
    (by_hand,) = standardize(data)
    assert np.array_equal(prep.apply(data).X, by_hand.X)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    # constant columns: std 1
    X = np.c_[np.ones(6), np.arange(6.0)]
    const = Preprocessing.fit(Dataset(X, np.array([0, 1] * 3)), standardize=True)
    assert const.std[0] == 1.0 and const.apply(Dataset(X, np.array([0, 1] * 3))).X[:, 0].tolist() == [0.0] * 6


def test_scale_rows_bounds_every_row_by_one():
    data = load("breast-cancer:train")
    for standard in (False, True):
        prep = Preprocessing.fit(data, standardize=standard, scale_rows=True)
        norms = row_norms(prep.apply(data))
        assert norms.max() == pytest.approx(1.0, rel=1e-12) and np.all(norms <= 1.0 + 1e-12)


def test_raw_unit_feature_edit_equals_the_edit_made_by_hand_in_standardized_space():
    data = load("breast-cancer:train")
    prep = Preprocessing.fit(data, standardize=True)
    model_data = prep.apply(data)
    rows = model_data.ids[:3].tolist()
    raw = Changes.set_features([0, 3], [15.0, 700.0], rows) + Changes.remove(model_data.ids[10:12].tolist())
    mapped = prep.map_changes(raw, model_data)
    mean, std = np.asarray(prep.mean), np.asarray(prep.std)
    by_hand = Changes.set_features([0, 3], [(15.0 - mean[0]) / std[0], (700.0 - mean[3]) / std[3]], rows) \
        + Changes.remove(model_data.ids[10:12].tolist())
    assert mapped == by_hand
    a, b = mapped.apply(model_data), by_hand.apply(model_data)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.ids, b.ids)
    # and the edited cell is the transform of the raw value the user wrote
    raw_edited = raw.apply(data)
    assert np.allclose(prep.apply(raw_edited).X, a.X)


def test_zeroing_a_standardized_column_selects_the_rows_that_are_non_zero_in_raw_units():
    X = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 2.0]])
    data = Dataset(X, np.array([0, 1, 0, 1]), ids=np.array([10, 11, 12, 13]))
    prep = Preprocessing.fit(data, standardize=True, scale_rows=True)
    mapped = prep.map_changes(Changes.zero_features([0]), prep.apply(data))
    (edit,) = mapped.feature_edits
    assert edit.rows == (11, 13)  # raw column 0 is non-zero in these rows only
    assert np.allclose(mapped.apply(prep.apply(data)).X, prep.apply(Changes.zero_features([0]).apply(data)).X)
    # a column that is zero everywhere: nothing to unlearn
    with pytest.raises(ChangesError, match="affects no row"):
        prep.map_changes(Changes.zero_features([0], None), prep.apply(Changes.zero_features([0]).apply(data)))


def test_row_scale_only_keeps_zero_and_needs_no_data():
    data = load("breast-cancer:train")
    prep = Preprocessing.fit(data, scale_rows=True)
    mapped = prep.map_changes(Changes.zero_features([3]))
    assert mapped.feature_edits[0].rows is None and mapped.feature_edits[0].values == (0.0,)
    assert prep.map_changes(Changes.set_features([3], [prep.row_scale], [0])).feature_edits[0].values == (1.0,)


def test_contradicting_option_is_refused_and_stored_ones_are_used():
    prep = Preprocessing(label_column="species", id_column="id")
    assert prep.with_options("species", None) == prep
    with pytest.raises(DataError, match="--label-column 'kind' contradicts the model.*'species'"):
        prep.with_options("kind", None)
    with pytest.raises(DataError, match="--id-column 0 contradicts"):
        prep.with_options(None, 0)


def test_malformed_stored_preprocessing_is_refused():
    for bad in ({"mean": [0.0], "std": [0.0]}, {"mean": [0.0, 1.0], "std": [1.0]}, {"row_scale": -1},
                {"class_names": ["a", "a"]}, {"format": "other/9"}, [1, 2]):
        with pytest.raises(DataError):
            Preprocessing.from_dict(bad)


def test_scale_warning_names_the_columns():
    message = scale_warning(load("breast-cancer:train"))
    assert "differ in scale" in message and "worst area" in message
    assert scale_warning(standardize(load("breast-cancer:train"))[0]) is None
    assert scale_warning(load("digits:train")) is None


def test_model_file_keeps_the_preprocessing(tmp_path):
    data = load("breast-cancer:train")
    prep = Preprocessing.fit(data, standardize=True)
    model = uk.models.for_data("logreg", prep.apply(data), l2=1.0)
    uk.save_model(model, tmp_path / "m.pt", metadata={"preprocess": prep.to_dict()})
    from unlearnkit.models.io import read_metadata

    assert Preprocessing.of_model(uk.load_model(tmp_path / "m.pt")) == prep
    assert Preprocessing.from_dict(read_metadata(tmp_path / "m.pt")["preprocess"]) == prep


@pytest.mark.parametrize("stray, message", [
    ("NA", r"line 6, column 'label': label 'NA', which is not a number.*class codes.*'NA' or '\?'"),
    ("", r"line 6, column 'label': an empty label"),
])
def test_a_stray_word_in_numeric_labels_is_refused_not_read_as_class_names(tmp_path, stray, message):
    """Labels 0..11 with one missing value: read as names, "10" would sort before "2" and every code would change."""
    f = tmp_path / "n.csv"
    labels = [str(k % 12) for k in range(30)]
    labels[4] = stray
    f.write_text("a,label\n" + "".join(f"{k}.5,{lab}\n" for k, lab in enumerate(labels)))
    with pytest.raises(DataError, match=message):
        read_csv(f)
    labels[4] = "3"
    f.write_text("a,label\n" + "".join(f"{k}.5,{lab}\n" for k, lab in enumerate(labels)))
    ds = read_csv(f)
    assert ds.class_names is None and ds.y.tolist() == [k % 12 for k in range(30)][:4] + [3] + [k % 12 for k in range(5, 30)]


def test_a_stray_number_among_class_names_is_refused(tmp_path):
    f = tmp_path / "w.csv"
    f.write_text("a,label\n1,cat\n2,dog\n3,7\n4,cat\n")
    with pytest.raises(DataError, match=r"line 4, column 'label': label '7', a number.*class names"):
        read_csv(f)


def test_an_overlong_class_name_is_named_by_file_column_and_line(tmp_path):
    f = tmp_path / "long.csv"
    f.write_text("a,label\n1,cat\n2,dog\n3," + "x" * 1001 + "\n")
    with pytest.raises(DataError, match=r"long\.csv: line 4, column 'label': the label is 1,001 characters long"):
        read_csv(f)
