"""``Changes``: constructors, composition, resolution by row id, JSON, and every validation error."""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from unlearnkit import Changes, ChangesError, Dataset
from unlearnkit.data.changes import FORMAT, FeatureEdit

IDS = 100 + 3 * np.arange(6)  # 100, 103, 106, 109, 112, 115


@pytest.fixture
def ds():
    """6 rows with non-trivial ids; column 0 non-zero in rows 100, 106, 112; column 3 all zero."""
    X = np.array(
        [
            [1.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [4.0, 5.0, 0.0, 0.0],
            [0.0, 6.0, 0.0, 0.0],
            [7.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    return Dataset(X, np.array([0, 1, 2, 0, 1, 2]), ids=IDS, n_classes=3, name="toy")


def rows_of(data, ids):
    return data.X[data.positions(ids)]


# ---------------------------------------------------------------------------- constructors


def test_zero_features_on_every_nonzero_row(ds):
    X_before = ds.X.copy()
    r = Changes.zero_features([0]).resolve(ds)
    assert r.affected_ids.tolist() == [100, 106, 112]
    assert r.n_affected == 3
    assert r.Z.ids.tolist() == [100, 106, 112]
    np.testing.assert_array_equal(r.Z.X, X_before[[0, 2, 4]])
    assert r.Z_tilde.ids.tolist() == [100, 106, 112]
    np.testing.assert_array_equal(r.Z_tilde.X[:, 0], 0.0)
    np.testing.assert_array_equal(r.Z_tilde.X[:, 1:], X_before[[0, 2, 4], 1:])
    np.testing.assert_array_equal(r.Z_tilde.y, r.Z.y)
    # the corrected dataset: all rows, original order and ids, only column 0 touched
    assert r.corrected.ids.tolist() == IDS.tolist()
    np.testing.assert_array_equal(r.corrected.X[:, 0], 0.0)
    np.testing.assert_array_equal(r.corrected.X[:, 1:], X_before[:, 1:])
    np.testing.assert_array_equal(r.corrected.y, ds.y)
    assert r.corrected.n_features == ds.n_features == 4
    # the input dataset is not modified
    np.testing.assert_array_equal(ds.X, X_before)
    # apply() is the corrected dataset
    np.testing.assert_array_equal(Changes.zero_features([0]).apply(ds).X, r.corrected.X)


def test_zero_features_on_explicit_rows_counts_rows_already_zero(ds):
    r = Changes.zero_features([0], rows=[103, 100]).resolve(ds)
    # 103 already has a zero there; named explicitly it is still affected
    assert r.affected_ids.tolist() == [100, 103]
    np.testing.assert_array_equal(r.Z_tilde.X[:, 0], [0.0, 0.0])
    # row 106 and 112 keep their non-zero column 0
    np.testing.assert_array_equal(rows_of(r.corrected, [106, 112])[:, 0], [4.0, 7.0])


def test_set_features_per_column_values_and_broadcast(ds):
    r = Changes.set_features([1, 2], [9.0, 8.0], rows=[109]).resolve(ds)
    assert r.affected_ids.tolist() == [109]
    np.testing.assert_array_equal(r.Z.X[0], [0.0, 6.0, 0.0, 0.0])
    np.testing.assert_array_equal(r.Z_tilde.X[0], [0.0, 9.0, 8.0, 0.0])
    np.testing.assert_array_equal(rows_of(r.corrected, [109])[0], [0.0, 9.0, 8.0, 0.0])

    r = Changes.set_features([0, 3], 0.5, rows=[103, 115]).resolve(ds)
    np.testing.assert_array_equal(r.Z_tilde.X[:, [0, 3]], 0.5)
    edit = Changes.set_features([0, 3], 0.5).feature_edits[0]
    assert edit.values == (0.5, 0.5) and edit.rows is None


def test_set_features_every_nonzero_row(ds):
    # "every row where any of the columns is non-zero": columns 1 and 2 -> rows 100, 103, 106, 109
    r = Changes.set_features([1, 2], [-1.0, -2.0]).resolve(ds)
    assert r.affected_ids.tolist() == [100, 103, 106, 109]
    np.testing.assert_array_equal(r.Z_tilde.X[:, 1], -1.0)
    np.testing.assert_array_equal(r.Z_tilde.X[:, 2], -2.0)
    np.testing.assert_array_equal(rows_of(r.corrected, [112, 115])[:, 1:3], 0.0)


def test_relabel(ds):
    r = Changes.relabel([115, 100], [1, 2]).resolve(ds)
    assert r.affected_ids.tolist() == [100, 115]  # sorted by id
    assert r.Z.y.tolist() == [0, 2]
    assert r.Z_tilde.y.tolist() == [2, 1]
    np.testing.assert_array_equal(r.Z_tilde.X, r.Z.X)
    assert r.corrected.y.tolist() == [2, 1, 2, 0, 1, 1]

    r = Changes.relabel([103, 109], 2).resolve(ds)
    assert r.Z_tilde.y.tolist() == [2, 2]


def test_remove(ds):
    r = Changes.remove([112, 103, 112]).resolve(ds)
    assert r.affected_ids.tolist() == [103, 112]
    np.testing.assert_array_equal(r.Z.X, ds.X[[1, 4]])
    assert len(r.Z_tilde) == 0
    assert r.Z_tilde.n_features == 4
    assert r.corrected.ids.tolist() == [100, 106, 109, 115]
    np.testing.assert_array_equal(r.corrected.X, ds.X[[0, 2, 3, 5]])
    np.testing.assert_array_equal(r.corrected.y, ds.y[[0, 2, 3, 5]])
    assert Changes.remove([103]).removed_ids == frozenset({103})


def test_composition(ds):
    ch = Changes.zero_features([0]) + Changes.relabel([109], [2]) + Changes.remove([115])
    assert isinstance(ch, Changes)
    assert ch.kinds == ("features", "labels", "removals")
    assert len(ch.feature_edits) == len(ch.label_edits) == len(ch.removals) == 1
    r = ch.resolve(ds)
    assert r.affected_ids.tolist() == [100, 106, 109, 112, 115]
    assert r.Z.ids.tolist() == [100, 106, 109, 112, 115]
    assert r.Z_tilde.ids.tolist() == [100, 106, 109, 112]  # the removed row has no correction
    z109 = r.Z_tilde.subset(r.Z_tilde.positions([109]))
    assert z109.y.tolist() == [2]
    np.testing.assert_array_equal(z109.X[0], ds.X[3])
    assert r.corrected.ids.tolist() == [100, 103, 106, 109, 112]
    np.testing.assert_array_equal(r.corrected.X[:, 0], 0.0)
    assert r.corrected.y.tolist() == [0, 1, 2, 2, 1]
    # composing the same edits in another order gives the same result
    r2 = (Changes.remove([115]) + Changes.relabel([109], [2]) + Changes.zero_features([0])).resolve(ds)
    np.testing.assert_array_equal(r2.corrected.X, r.corrected.X)
    np.testing.assert_array_equal(r2.Z_tilde.X, r.Z_tilde.X)


def test_every_nonzero_row_edit_skips_removed_rows(ds):
    # 106 has a non-zero in column 0 but is removed: no clash, it is affected only as a removal
    r = (Changes.zero_features([0]) + Changes.remove([106])).resolve(ds)
    assert r.affected_ids.tolist() == [100, 106, 112]
    assert r.Z_tilde.ids.tolist() == [100, 112]
    assert 106 not in r.corrected.ids.tolist()


def test_composition_with_non_changes_is_a_type_error():
    with pytest.raises(TypeError):
        Changes.remove([1]) + [2]


def test_changes_are_immutable():
    ch = Changes.remove([1])
    with pytest.raises(Exception):
        ch.removals = ()


# ---------------------------------------------------------------------------- row ids, not positions


def test_rows_are_ids_not_positions(ds):
    # position 2 exists but id 2 does not
    with pytest.raises(ChangesError, match=r"not in the dataset: 2"):
        Changes.remove([2]).resolve(ds)
    r = Changes.relabel([106], [0]).resolve(ds)  # id 106 is at position 2
    assert r.corrected.y[2] == 0
    r = Changes.zero_features([2], rows=[103]).resolve(ds)  # id 103 is at position 1
    assert r.corrected.X[1, 2] == 0.0 and r.corrected.X[0, 2] == 2.0


def test_ids_stay_valid_after_a_removal(ds):
    after = Changes.remove([103]).apply(ds)
    assert after.ids.tolist() == [100, 106, 109, 112, 115]
    # id 112 is now at position 3 (was 4)
    r = Changes.set_features([3], [1.5], rows=[112]).resolve(after)
    assert r.corrected.X[3, 3] == 1.5
    np.testing.assert_array_equal(r.Z.X[0], ds.X[4])
    r = Changes.relabel([106], [0]).resolve(after)
    assert r.corrected.y.tolist() == [0, 0, 0, 1, 2]
    # the removed id is gone
    with pytest.raises(ChangesError, match=r"not in the dataset: 103"):
        Changes.relabel([103], [0]).resolve(after)
    with pytest.raises(ChangesError, match=r"not in the dataset: 103"):
        Changes.remove([103]).resolve(after)


def test_integral_float_rows_are_accepted(ds):
    r = Changes.remove([103.0]).resolve(ds)
    assert r.affected_ids.tolist() == [103]


# ---------------------------------------------------------------------------- data layouts


def test_image_shaped_data_columns_index_flattened_pixels():
    rng = np.random.default_rng(0)
    X = np.zeros((5, 1, 4, 4))
    X[:, 0, 0, 0] = rng.normal(size=5)
    X[1, 0, 1, 1] = 3.0  # column 1*4 + 1 = 5
    X[3, 0, 1, 1] = -2.0
    X[2, 0, 3, 2] = 1.0  # column 14
    data = Dataset(X, np.array([0, 1, 0, 1, 0]), ids=IDS[:5])
    r = Changes.zero_features([5]).resolve(data)
    assert r.affected_ids.tolist() == [103, 109]
    assert r.corrected.X.shape == (5, 1, 4, 4)
    assert r.corrected.feature_shape == (1, 4, 4)
    assert r.Z.X.shape == r.Z_tilde.X.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(r.corrected.X[:, 0, 1, 1], 0.0)
    np.testing.assert_array_equal(r.Z.X[:, 0, 1, 1], [3.0, -2.0])
    mask = np.ones_like(X, dtype=bool)
    mask[:, 0, 1, 1] = False
    np.testing.assert_array_equal(r.corrected.X[mask], X[mask])
    # the original is untouched (resolve works on a copy, not on a reshaped view)
    assert X[1, 0, 1, 1] == 3.0 and data.X[1, 0, 1, 1] == 3.0

    r = Changes.set_features([15, 14], [1.0, 0.0], rows=[100]).resolve(data)
    assert r.corrected.X[0, 0, 3, 3] == 1.0
    r = Changes.zero_features([14, 5]).resolve(data)
    assert r.affected_ids.tolist() == [103, 106, 109]
    with pytest.raises(ChangesError, match=r"column\(s\) \[16\] out of range; .* has 16 feature columns"):
        Changes.zero_features([16]).resolve(data)


def test_sparse_csr_data():
    dense = np.array(
        [
            [1.0, 0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 3.0, 0.0],
            [0.0, 4.0, 5.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 6.0],
            [7.0, 0.0, 8.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    data = Dataset(sp.csr_matrix(dense), np.array([0, 1, 0, 1, 0, 1]), ids=IDS)
    r = Changes.zero_features([2]).resolve(data)
    assert r.affected_ids.tolist() == [100, 106, 112]
    assert sp.issparse(r.corrected.X) and sp.issparse(r.Z.X) and sp.issparse(r.Z_tilde.X)
    assert r.corrected.X.shape == (6, 5) and r.corrected.n_features == 5
    expected = dense.copy()
    expected[:, 2] = 0.0
    np.testing.assert_array_equal(r.corrected.X.toarray(), expected)
    np.testing.assert_array_equal(r.Z.X.toarray(), dense[[0, 2, 4]])
    np.testing.assert_array_equal(r.Z_tilde.X.toarray(), expected[[0, 2, 4]])
    # zeroed entries are dropped from the sparse structure, the input is untouched
    assert r.corrected.X.nnz == np.count_nonzero(expected)
    np.testing.assert_array_equal(data.X.toarray(), dense)

    # setting a structurally-zero cell, explicit rows, and a removal on sparse data
    r = (Changes.set_features([0, 4], [9.0, 1.0], rows=[103]) + Changes.remove([109])).resolve(data)
    assert r.affected_ids.tolist() == [103, 109]
    assert r.corrected.ids.tolist() == [100, 103, 106, 112, 115]
    np.testing.assert_array_equal(r.corrected.X.toarray()[1], [9.0, 0.0, 0.0, 3.0, 1.0])
    np.testing.assert_array_equal(r.Z_tilde.X.toarray(), [[9.0, 0.0, 0.0, 3.0, 1.0]])

    # several columns: any non-zero selects the row
    assert Changes.zero_features([1, 3]).resolve(data).affected_ids.tolist() == [103, 106]


# ---------------------------------------------------------------------------- JSON


def test_json_round_trip(ds):
    ch = (
        Changes.zero_features([0])
        + Changes.set_features([1, 2], [9.0, -0.25], rows=[109, 103])
        + Changes.relabel([115, 100], [1, 2])
        + Changes.remove([112])
    )
    text = ch.to_json()
    obj = json.loads(text)
    assert obj["format"] == FORMAT
    assert obj["feature_edits"][0]["rows"] is None
    assert obj["feature_edits"][1]["rows"] == [103, 109]
    back = Changes.from_json(text)
    assert back == ch
    assert back.to_dict() == ch.to_dict()
    r1, r2 = ch.resolve(ds), back.resolve(ds)
    np.testing.assert_array_equal(r1.affected_ids, r2.affected_ids)
    np.testing.assert_array_equal(r1.corrected.X, r2.corrected.X)
    np.testing.assert_array_equal(r1.corrected.y, r2.corrected.y)


def test_json_file_round_trip(tmp_path):
    ch = Changes.set_features([3], [0.125], rows=[7]) + Changes.remove([1, 2])
    path = tmp_path / "changes.json"
    returned = ch.to_json(path)
    assert path.read_text() == returned
    assert Changes.load(path) == ch
    assert Changes.load(str(path)) == ch


def test_json_defaults_for_optional_fields():
    # values default to 0 (zeroing), rows default to "every non-zero row"; format is optional
    ch = Changes.from_json('{"feature_edits": [{"columns": [2]}]}')
    assert ch == Changes.zero_features([2])


def test_load_missing_file(tmp_path):
    with pytest.raises(ChangesError, match=r"Change-set file not found"):
        Changes.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", r"not valid JSON"),
        ("", r"Change set is empty; a change set is a JSON object"),
        ("[1, 2]", r"\$: a change set must be a JSON object .*got a list \[1, 2\]"),
        ('"remove 3"', r"\$: a change set must be a JSON object .*got a string"),
        ("{}", r"change set is empty"),
        ('{"label_edits": [{"rows": [1]}]}', r'\$\.label_edits\[0\]: missing key "labels"'),
        ('{"feature_edits": [{"values": [1.0]}]}', r'\$\.feature_edits\[0\]: missing key "columns"'),
        ('{"removals": [{}]}', r'\$\.removals\[0\]: missing key "rows"'),
        ('{"removals": ["5"]}', r'\$\.removals\[0\]: expected a row id \(an integer >= 0\), got a string "5"'),
        ('{"feature_edits": "zero column 0"}', r"\$\.feature_edits: expected a list of entries"),
        ('{"feature_edits": [{"columns": [0], "values": ["x"]}]}', r"\$\.feature_edits\[0\]\.values\[0\]: expected a number"),
        ('{"removals": [{"rows": [[1, 2], [3]]}]}', r"\$\.removals\[0\]\.rows: must be a flat list of integers"),
        ('{"removals": [{"rows": ["a"]}]}', r"\$\.removals\[0\]\.rows\[0\]: expected a row id"),
        ('{"label_edits": [{"rows": [1], "labels": [0.5]}]}', r"\$\.label_edits\[0\]\.labels\[0\]: expected a label"),
    ],
)
def test_malformed_json(text, match):
    with pytest.raises(ChangesError, match=match):
        Changes.from_json(text)


def test_unknown_keys():
    with pytest.raises(ChangesError, match=r'\$: unknown key "relabel"; valid keys: format, feature_edits'):
        Changes.from_json('{"removals": [{"rows": [1]}], "relabel": []}')
    # a typo inside an edit must not silently change its meaning (e.g. "valuez" -> zeroing)
    with pytest.raises(ChangesError, match=r'\$\.feature_edits\[0\]: unknown key "valuez" \(did you mean "values"\?\)'):
        Changes.from_json('{"feature_edits": [{"columns": [0], "valuez": [3.0]}]}')
    with pytest.raises(ChangesError, match=r'\$\.feature_edits\[0\]: unknown key "row" \(did you mean "rows"\?\)'):
        Changes.from_json('{"feature_edits": [{"columns": [0], "row": [3]}]}')
    with pytest.raises(ChangesError, match=r'\$\.label_edits\[0\]: unknown key "label"'):
        Changes.from_json('{"label_edits": [{"rows": [1], "labels": [0], "label": 1}]}')
    with pytest.raises(ChangesError, match=r'\$\.removals\[0\]: unknown key "ids"'):
        Changes.from_json('{"removals": [{"rows": [1], "ids": [1]}]}')


@pytest.mark.parametrize("fmt", ["unlearnkit.changes/2", "changes", None, 1])
def test_wrong_format_string(fmt):
    text = json.dumps({"format": fmt, "removals": [{"rows": [1]}]})
    with pytest.raises(ChangesError, match=r"\$\.format: unsupported change-set format .*expected 'unlearnkit.changes/1'"):
        Changes.from_json(text)


# ---------------------------------------------------------------------------- validation errors


def test_empty_change_set():
    with pytest.raises(ChangesError, match=r"change set is empty"):
        Changes()
    with pytest.raises(ChangesError, match=r"change set is empty"):
        Changes(feature_edits=(), label_edits=(), removals=())


def test_edits_with_no_rows_or_columns():
    with pytest.raises(ChangesError, match=r"point removal needs at least one row"):
        Changes.remove([])
    with pytest.raises(ChangesError, match=r"label edit needs at least one row"):
        Changes.relabel([], [])
    with pytest.raises(ChangesError, match=r"feature edit needs at least one column"):
        Changes.zero_features([])
    with pytest.raises(ChangesError, match=r"explicit row list needs at least one row"):
        Changes.zero_features([0], rows=[])


def test_malformed_feature_and_label_edits():
    with pytest.raises(ChangesError, match=r"lists a column twice"):
        Changes.zero_features([1, 1])
    with pytest.raises(ChangesError, match=r"2 columns but 3 values"):
        Changes.set_features([0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ChangesError, match=r"2 rows but 3 labels"):
        Changes.relabel([1, 2], [0, 1, 0])


def test_unknown_row_ids(ds):
    with pytest.raises(ChangesError, match=r"Point removal: .*1 row id\(s\) not in the dataset: 999"):
        Changes.remove([100, 999]).resolve(ds)
    with pytest.raises(ChangesError, match=r"Label edit: .*2 row id\(s\) not in the dataset: 6, 101"):
        Changes.relabel([6, 101], [1]).resolve(ds)
    with pytest.raises(ChangesError, match=r"Feature edit: .*not in the dataset: 118"):
        Changes.zero_features([0], rows=[118]).resolve(ds)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Changes.remove([3, -1]), r"removed rows must be >= 0; found -1"),
        (lambda: Changes.relabel([-2], [0]), r"label edit rows must be >= 0; found -2"),
        (lambda: Changes.zero_features([0], rows=[-5]), r"feature edit rows must be >= 0; found -5"),
        (lambda: Changes.zero_features([-1]), r"feature edit columns must be >= 0; found -1"),
        (lambda: Changes.relabel([1], [-1]), r"new labels must be >= 0; found -1"),
    ],
)
def test_negative_rows_columns_labels(make, match):
    with pytest.raises(ChangesError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Changes.remove([1.5]), r"removed rows must be integers; got float64"),
        (lambda: Changes.remove(["3"]), r"removed rows must be integers"),
        (lambda: Changes.remove([True]), r"removed rows must be integers; got bool"),
        (lambda: Changes.remove([float("nan")]), r"removed rows must be integers"),
        (lambda: Changes.relabel([0.5], [1]), r"label edit rows must be integers"),
        (lambda: Changes.zero_features([0], rows=[2.25]), r"feature edit rows must be integers"),
        (lambda: Changes.zero_features([0.5]), r"feature edit columns must be integers"),
        (lambda: Changes.relabel([1], [1.5]), r"new labels must be integers"),
    ],
)
def test_non_integer_rows_columns_labels(make, match):
    with pytest.raises(ChangesError, match=match):
        make()


def test_columns_out_of_range(ds):
    with pytest.raises(ChangesError, match=r"column\(s\) \[4\] out of range; toy has 4 feature columns \(0..3\)"):
        Changes.zero_features([0, 4]).resolve(ds)
    with pytest.raises(ChangesError, match=r"column\(s\) \[7\] out of range"):
        Changes.set_features([7], [1.0], rows=[100]).resolve(ds)


def test_labels_out_of_range(ds):
    with pytest.raises(ChangesError, match=r"label 3 is out of range; toy has 3 classes \(0..2\)"):
        Changes.relabel([100, 103], [1, 3]).resolve(ds)
    # within range is fine
    assert Changes.relabel([100], [2]).resolve(ds).corrected.y[0] == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_feature_values(bad):
    with pytest.raises(ChangesError, match=r"Feature values must be finite"):
        Changes.set_features([0], [bad])
    with pytest.raises(ChangesError, match=r"Feature values must be finite"):
        Changes.set_features([0, 1], [1.0, bad], rows=[3])


def test_same_cell_two_values_explicit_rows():
    with pytest.raises(ChangesError, match=r"Cell \(row 100, column 0\) is set to two different values \(1.0 and 0.0\)"):
        Changes.set_features([0], [1.0], rows=[100]) + Changes.zero_features([0], rows=[100])
    with pytest.raises(ChangesError, match=r"Cell \(row 5, column 2\) is set to two different values"):
        Changes(feature_edits=Changes.set_features([1, 2], [1.0, 2.0], rows=[5]).feature_edits
                + Changes.set_features([2], [3.0], rows=[4, 5]).feature_edits)
    # agreeing edits of the same cell are fine
    ch = Changes.set_features([0], [1.0], rows=[100]) + Changes.set_features([0, 1], [1.0, 2.0], rows=[100])
    assert len(ch.feature_edits) == 2


def test_many_one_row_edits_are_checked_cell_by_cell():
    # an iterative update's chunk: one edit per row; values differ by column and by row, cells never shared
    edits = [FeatureEdit((r % 7, 7 + r % 3), (float(r % 5), -1.0), (r,)) for r in range(3000)]
    assert len(Changes(feature_edits=tuple(edits)).feature_edits) == 3000
    # one shared cell among them, given another value by a later edit: found, with the earlier edit's value first
    clash = (*edits, FeatureEdit((2, 11), (9.0, 0.0), (1500, 3001)))
    with pytest.raises(ChangesError, match=r"Cell \(row 1500, column 2\) is set to two different values \(0.0 and 9.0\)"):
        Changes(feature_edits=clash)
    # the same cell set twice to the same value is no clash
    assert Changes(feature_edits=(*edits, FeatureEdit((2,), (0.0,), (1500,)))).feature_edits[-1].rows == (1500,)


def test_join_is_the_sum_of_the_parts_checked_once():
    parts = [Changes.set_features([r % 4], [float(r % 3)], rows=[r]) for r in range(2000)]
    parts += [Changes.relabel([5000, 5001], [1, 2]), Changes.remove([6000])]
    joined = Changes.join(parts)
    assert joined == sum(parts[1:], parts[0])  # the same change set as adding them one by one
    assert len(joined.feature_edits) == 2000 and joined.kinds == ("features", "labels", "removals")
    assert Changes.join(iter(parts[:2])) == parts[0] + parts[1]
    with pytest.raises(ChangesError, match="empty"):  # as any empty change set
        Changes.join([])
    # the same clashes refused
    with pytest.raises(ChangesError, match=r"Cell \(row 7, column 3\) is set to two different values"):
        Changes.join([*parts, Changes.set_features([3], [9.0], rows=[7])])
    with pytest.raises(ChangesError, match="both removed and relabelled"):
        Changes.join([Changes.remove([1]), Changes.relabel([1], [0])])
    with pytest.raises(ChangesError, match="change sets only, got list"):
        Changes.join([parts[0], [1, 2]])
    for wrong in (parts[0], None):
        with pytest.raises(ChangesError, match="a list of change sets, got"):
            Changes.join(wrong)


def test_same_cell_two_values_every_nonzero_row_vs_explicit_row(ds):
    # constructible (the non-zero rows are unknown until resolved) ...
    ch = Changes.set_features([0], [5.0]) + Changes.set_features([0], [6.0], rows=[106])
    # ... but row 106 has a non-zero in column 0, so resolve() finds the disagreement
    with pytest.raises(ChangesError, match=r"Cell \(row 106, column 0\) is set to two different values \(5.0 and 6.0\)"):
        ch.resolve(ds)
    # explicit row where the column is zero: no disagreement
    r = (Changes.set_features([0], [5.0]) + Changes.set_features([0], [6.0], rows=[103])).resolve(ds)
    assert r.corrected.X[:, 0].tolist() == [5.0, 6.0, 5.0, 0.0, 5.0, 0.0]
    # agreeing values: fine
    r = (Changes.zero_features([0]) + Changes.zero_features([0], rows=[106])).resolve(ds)
    assert r.affected_ids.tolist() == [100, 106, 112]


def test_row_removed_and_relabelled():
    with pytest.raises(ChangesError, match=r"Rows \[7\] are both removed and relabelled"):
        Changes.remove([3, 7]) + Changes.relabel([7], [1])
    with pytest.raises(ChangesError, match=r"both removed and relabelled"):
        Changes.relabel([7], [1]) + Changes.remove([7])


def test_row_removed_and_feature_edited_explicitly():
    with pytest.raises(ChangesError, match=r"Rows \[7\] are both removed and feature-edited"):
        Changes.zero_features([0], rows=[7]) + Changes.remove([7])


def test_row_relabelled_to_two_labels():
    with pytest.raises(ChangesError, match=r"Row 4 is given two different labels \(0 and 1\)"):
        Changes.relabel([4, 4], [0, 1])
    with pytest.raises(ChangesError, match=r"Row 4 is given two different labels \(1 and 2\)"):
        Changes.relabel([4], [1]) + Changes.relabel([3, 4], [0, 2])
    # the same label twice is fine
    ch = Changes.relabel([4], [1]) + Changes.relabel([4], [1])
    assert len(ch.label_edits) == 2


def test_change_set_that_affects_no_row(ds):
    with pytest.raises(ChangesError, match=r"affects no row of toy.*already zero"):
        Changes.zero_features([3]).resolve(ds)
    sparse = Dataset(sp.csr_matrix(ds.X), ds.y, ids=ds.ids, name="sp")
    with pytest.raises(ChangesError, match=r"affects no row of sp"):
        Changes.zero_features([3]).resolve(sparse)
    # zeroing an all-zero column together with something else is fine
    r = (Changes.zero_features([3]) + Changes.remove([100])).resolve(ds)
    assert r.affected_ids.tolist() == [100]


def test_errors_are_value_errors_too():
    # ChangesError is a ValueError, so generic handlers still catch it
    with pytest.raises(ValueError):
        Changes()


def test_resolving_a_small_request_copies_only_the_affected_rows():
    """A request of k rows costs O(k d): the corrected data set (a copy of X) is built only when asked for."""
    import tracemalloc

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(20_000, 100)), rng.integers(0, 2, 20_000))
    changes = (Changes.relabel(list(range(0, 200, 2)), [1] * 100) + Changes.remove([1, 3])
               + Changes.set_features([4], [0.5], rows=[5, 7]))
    tracemalloc.start()
    resolved = changes.resolve(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < data.X.nbytes / 10, peak  # 16 MB of features; the request touches 104 rows (ids and labels are O(n))
    # the lazily built corrected set agrees with Z~ row for row
    corrected = resolved.corrected
    assert len(corrected) == len(data) - 2 and corrected is resolved.corrected
    at = corrected.positions(resolved.Z_tilde.ids)
    np.testing.assert_array_equal(corrected.X[at], resolved.Z_tilde.X)
    np.testing.assert_array_equal(corrected.y[at], resolved.Z_tilde.y)
    assert resolved.Z_tilde.X[resolved.Z_tilde.positions([5])[0], 4] == 0.5
