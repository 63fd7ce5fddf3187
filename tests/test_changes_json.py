"""The change-set JSON format: its shorthands, and errors that name the file, the JSON path, the expected
shape and the value found."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unlearnkit import Changes, ChangesError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- what is accepted
@pytest.mark.parametrize("text, expected", [
    # the canonical form, as Changes.to_json writes it
    ('{"format": "unlearnkit.changes/1", "feature_edits": [], "label_edits": [], "removals": [{"rows": [5, 6, 7]}]}',
     Changes.remove([5, 6, 7])),
    # shorthand: a list of row ids in removals
    ('{"removals": [5, 6, 7]}', Changes.remove([5, 6, 7])),
    # row ids and entries mixed; repeated ids are one removal
    ('{"removals": [5, {"rows": [6, 7]}, 5]}', Changes.remove([6, 7]) + Changes.remove([5])),
    # shorthand: one entry object where a list of entries is expected
    ('{"removals": {"rows": [3]}}', Changes.remove([3])),
    ('{"label_edits": {"rows": [1, 2], "labels": [0, 1]}}', Changes.relabel([1, 2], [0, 1])),
    # a single integer for a one-element list; one label (or value) for all rows (or columns)
    ('{"label_edits": [{"rows": 4, "labels": 1}]}', Changes.relabel([4], [1])),
    ('{"label_edits": [{"rows": [4, 5], "labels": [1]}]}', Changes.relabel([4, 5], [1, 1])),
    ('{"feature_edits": [{"columns": 2}]}', Changes.zero_features([2])),
    ('{"feature_edits": [{"columns": [0, 1], "values": 2.5, "rows": [3]}]}', Changes.set_features([0, 1], [2.5], rows=[3])),
    ('{"feature_edits": [{"columns": [0], "values": [1], "rows": null}]}', Changes.set_features([0], [1.0])),
    # integral floats (numpy's tolist() of a float array) are integers
    ('{"removals": [{"rows": [1.0, 2.0]}]}', Changes.remove([1, 2])),
])
def test_accepted_forms(text, expected):
    assert Changes.from_json(text) == expected


def test_round_trip_of_every_kind():
    ch = (Changes.set_features([0, 3], [1.5, -2.0], rows=[4, 9]) + Changes.zero_features([7])
          + Changes.relabel([1, 2], [0, 1]) + Changes.remove([11, 12]))
    assert Changes.from_json(ch.to_json()) == ch
    assert Changes.from_dict(json.loads(ch.to_json())) == ch


# ---------------------------------------------------------------------------- what is refused, and how
MALFORMED = [
    # (text, JSON path, what the message must also say)
    ('{"removals": ["5"]}', "$.removals[0]", 'expected a row id (an integer >= 0), got a string "5"'),
    ('{"removals": [{"id": 5}]}', "$.removals[0]", 'unknown key "id"; valid keys: rows (expected {"rows": [<row id>, ...]})'),
    ('{"removals": [[5, 6]]}', "$.removals[0]", 'expected an entry {"rows": [<row id>, ...]} or a row id'),
    ('{"removals": 5}', "$.removals", "expected a list of entries"),
    ('{"removals": [{"rows": "5,6"}]}', "$.removals[0].rows", 'expected a list of row ids [<int>, ...]'),
    ('{"removals": [{}]}', "$.removals[0]", 'missing key "rows"; expected {"rows": [<row id>, ...]}'),
    ('{"removals": [{"rows": [1, -2]}]}', "$.removals[0].rows[1]", "expected a row id (an integer >= 0), got -2"),
    ('{"removals": [{"rows": [1.5]}]}', "$.removals[0].rows[0]", "got 1.5"),
    ('{"removals": [{"rows": [true]}]}', "$.removals[0].rows[0]", "got a boolean true"),
    ('{"removals": [{"rows": [NaN]}]}', "$.removals[0].rows[0]", "got NaN"),
    ('{"removals": [{"rows": [null]}]}', "$.removals[0].rows[0]", "got null"),
    ('{"removals": [{"rows": [9223372036854775808]}]}', "$.removals[0].rows[0]", "must be below 2**63"),
    ('{"removals": [{"rows": [[1, 2], [3]]}]}', "$.removals[0].rows", "must be a flat list of integers; got nested lists"),
    ('{"removals": [{"rows": []}]}', "$.removals[0]", "needs at least one row"),
    ('{"label_edits": [{"rows": [1]}]}', "$.label_edits[0]", 'missing key "labels"'),
    ('{"label_edits": [{"rows": [1, 2], "labels": [0, "cat"]}]}', "$.label_edits[0].labels[1]",
     'expected a label (an integer >= 0), got a string "cat"'),
    ('{"label_edits": [{"rows": [1, 2, 3], "labels": [0, 1]}]}', "$.label_edits[0]", "3 rows but 2 labels"),
    # the same id twice with two labels
    ('{"label_edits": [{"rows": [4, 4], "labels": [0, 1]}]}', "$.label_edits[0]", "Row 4 is given two different labels"),
    ('{"label_edits": [{"rows": [1], "labels": [0], "label": 1}]}', "$.label_edits[0]",
     'unknown key "label" (did you mean "labels"?)'),
    ('{"label_edits": [5]}', "$.label_edits[0]", "expected an entry {\"rows\": [<row id>, ...], \"labels\": [<label>, ...]}"),
    ('{"feature_edits": [{"values": [1.0]}]}', "$.feature_edits[0]", 'missing key "columns"'),
    ('{"feature_edits": [{"columns": [0], "valuez": [3.0]}]}', "$.feature_edits[0]",
     'unknown key "valuez" (did you mean "values"?)'),
    ('{"feature_edits": [{"columns": [0], "values": [NaN]}]}', "$.feature_edits[0].values[0]", "expected a finite number, got NaN"),
    ('{"feature_edits": [{"columns": [0, 1], "values": [1, Infinity]}]}', "$.feature_edits[0].values[1]",
     "expected a finite number, got Infinity"),
    ('{"feature_edits": [{"columns": [0], "values": ["x"]}]}', "$.feature_edits[0].values[0]", 'expected a number, got a string "x"'),
    ('{"feature_edits": [{"columns": [0], "values": 1e400}]}', "$.feature_edits[0].values", "expected a finite number"),
    ('{"feature_edits": [{"columns": [0, 0]}]}', "$.feature_edits[0]", "lists a column twice"),
    ('{"feature_edits": [{"columns": [0, 1], "values": [1, 2, 3]}]}', "$.feature_edits[0]", "2 columns but 3 values"),
    ('{"feature_edits": [{"columns": [0], "rows": []}]}', "$.feature_edits[0]", "needs at least one row"),
    ('{"feature_edits": "zero column 0"}', "$.feature_edits", 'expected a list of entries {"columns": [<column>, ...]'),
    ('{"removals": [1], "relabel": [2]}', "$", 'unknown key "relabel"; valid keys: format, feature_edits, label_edits, removals'),
    ('{"removal": [1]}', "$", 'unknown key "removal" (did you mean "removals"?)'),
    # a key given twice: JSON parsers keep the last one silently; refused here
    ('{"removals": [1], "removals": [2]}', "$", 'key "removals" is given twice'),
    ('{"removals": [{"rows": [1], "rows": [2]}]}', "$.removals[0]", 'key "rows" is given twice'),
    ('{"format": "unlearnkit.changes/2", "removals": [1]}', "$.format", "unsupported change-set format"),
    ('[5, 6, 7]', "$", "a change set must be a JSON object"),
    ('"remove 5"', "$", "a change set must be a JSON object"),
]


@pytest.mark.parametrize("text, path, says", MALFORMED)
def test_malformed_change_set_names_file_path_and_shape(tmp_path, text, path, says):
    file = tmp_path / "changes.json"
    file.write_text(text)
    with pytest.raises(ChangesError) as info:
        Changes.load(file)
    message = str(info.value)
    assert message.startswith(f"{file}: {path}: "), message
    assert says in message, message
    with pytest.raises(ChangesError) as info:  # the same text without a file: the path still leads
        Changes.from_json(text)
    assert str(info.value).startswith(f"change set: {path}: "), str(info.value)


@pytest.mark.parametrize("text", ["{}", '{"removals": []}', '{"feature_edits": [], "label_edits": [], "removals": []}'])
def test_empty_change_set(tmp_path, text):
    file = tmp_path / "changes.json"
    file.write_text(text)
    with pytest.raises(ChangesError, match=re.escape(f"{file}: The change set is empty")):
        Changes.load(file)


def test_empty_file_and_contradictions(tmp_path):
    file = tmp_path / "changes.json"
    file.write_text("  \n")
    with pytest.raises(ChangesError, match=r"changes.json is empty; a change set is a JSON object .*changes remove 5 6 7"):
        Changes.load(file)
    file.write_text('{"removals": [3], "label_edits": [{"rows": [3], "labels": [1]}]}')
    with pytest.raises(ChangesError, match=re.escape(f"{file}: Rows [3] are both removed and relabelled")):
        Changes.load(file)


def test_error_message_stays_short_for_huge_values():
    rows = list(range(100_000))
    with pytest.raises(ChangesError) as info:
        Changes.from_json(json.dumps({"removals": [{"rows": rows + ["x" * 10_000]}]}))
    assert "$.removals[0].rows[100000]" in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ChangesError) as info:
        Changes.from_json(json.dumps({"label_edits": [{"rows": {"a": rows}, "labels": [1]}]}))
    assert "$.label_edits[0].rows: expected a list of row ids" in str(info.value) and len(str(info.value)) < 400


# ---------------------------------------------------------------------------- the documented schema
def _readme_change_sets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Change sets", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```json")[1:]]


def test_readme_documents_one_example_of_each_kind():
    examples = [Changes.from_json(b) for b in _readme_change_sets()]
    kinds = {k for ch in examples for k in ch.kinds}
    assert kinds == {"features", "labels", "removals"}
    # both forms of a feature edit: given rows, and every row where the column is non-zero
    edits = [e for ch in examples for e in ch.feature_edits]
    assert any(e.rows is None for e in edits) and any(e.rows is not None for e in edits)


def test_docstring_example_parses():
    doc = Changes.from_json.__doc__
    example = doc.split("::", 1)[1].split("\n\n", 2)[1]
    ch = Changes.from_json(example)
    assert ch.kinds == ("features", "labels", "removals")


def test_class_names_in_labels_keep_the_strict_parser(tmp_path):
    """Labels given as class names go through the same parser: a key given twice, NaN, unknown names are refused."""
    names = ("cat", "dog", "eel")
    good = tmp_path / "good.json"
    good.write_text('{"label_edits": [{"rows": [4, 5], "labels": ["eel", 0]}]}')
    assert Changes.load(good, class_names=names).label_edits[0].labels == (2, 0)
    for text, says in [
        ('{"removals": [{"rows": [1]}], "removals": [{"rows": [2]}], "label_edits": {"rows": [3], "labels": "dog"}}',
         r"\$: key \"removals\" is given twice"),
        ('{"label_edits": [{"rows": [3], "labels": "dog", "labels": "cat"}]}', r"\$\.label_edits\[0\]: key \"labels\" is given twice"),
        ('{"label_edits": [{"rows": [3], "labels": "dog"}], "feature_edits": [{"columns": [0], "values": [NaN]}]}',
         r"expected a finite number, got NaN"),
        ('{"label_edits": [{"rows": [3], "labels": ["fox"]}]}', r"\$\.label_edits\[0\]\.labels\[0\]: 'fox' is not a class of the model; its classes are 0=cat, 1=dog"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ChangesError, match=says):
            Changes.load(bad, class_names=names)


def test_messages_name_the_value_once_and_stay_short(tmp_path):
    """null is said once; a big float id that cannot be exact is refused; a repeated column among millions is
    named, not the whole list; an overflowing value on the command line is shown as typed."""
    from typer.testing import CliRunner

    from unlearnkit.cli import app

    with pytest.raises(ChangesError, match=r"\$\.removals: expected a list of entries .* got null\.$"):
        Changes.from_json('{"removals": null}')
    with pytest.raises(ChangesError, match=r"written as a floating-point number, which is exact only up to 2\*\*53"):
        Changes.from_json('{"removals": [1e17]}')
    assert Changes.from_json('{"removals": [5.0]}').removed_ids == {5}
    columns = list(range(2_000_000)) + [7]
    with pytest.raises(ChangesError) as info:
        Changes.set_features(columns, [0.0])
    assert "lists a column twice (column 7)" in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ChangesError) as info:
        Changes.set_features(list(range(100_000)), [1.0] * 99_999 + [float("inf")])
    assert "the value for column 99999 is inf" in str(info.value) and len(str(info.value)) < 300
    result = CliRunner().invoke(app, ["changes", "edit", "--columns", "3", "--values", "1e400"])
    assert result.exit_code == 2 and "'1e400' is beyond the range of a float64" in result.output, result.output
