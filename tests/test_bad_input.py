"""Bad input gets a clear, named error, and nothing is lost: models stay unchanged, files intact."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import unlearnkit
from unlearnkit import (
    Changes,
    ChangesError,
    DataError,
    Dataset,
    MethodError,
    ModelError,
    SolverError,
    UnlearnKitError,
)
from unlearnkit.influence import FlatModel

METHODS = ("first-order", "second-order", "retrain", "retrain-warm")


def snapshot(model):
    return FlatModel(model).theta(), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    theta, state = snap
    assert torch.equal(FlatModel(model).theta(), theta)
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k])


# ---------------------------------------------------------------------------- Dataset construction


def test_dataset_nan_in_X():
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(DataError, match=r"X contains 1 NaN or infinite values"):
        Dataset(X, np.zeros(4, dtype=int))
    X[0, 0] = np.inf
    with pytest.raises(DataError, match=r"X contains 2 NaN or infinite values"):
        Dataset(X, np.zeros(4, dtype=int))
    with pytest.raises(DataError, match=r"NaN or infinite"):
        Dataset(sp.csr_matrix(X), np.zeros(4, dtype=int))


def test_dataset_wrong_y_length():
    with pytest.raises(DataError, match=r"y must have shape \(4,\) to match X; got \(3,\)"):
        Dataset(np.ones((4, 3)), np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"y must have shape \(4,\)"):
        Dataset(np.ones((4, 3)), np.zeros((4, 1), dtype=int))


def test_dataset_negative_labels():
    with pytest.raises(DataError, match=r"labels must be >= 0; found -1"):
        Dataset(np.ones((3, 2)), np.array([0, -1, 1]))


def test_dataset_bad_labels_other():
    with pytest.raises(DataError, match=r"labels must be integers"):
        Dataset(np.ones((3, 2)), np.array([0.0, 0.5, 1.0]))
    with pytest.raises(DataError, match=r"label 2 is out of range for n_classes=2"):
        Dataset(np.ones((3, 2)), np.array([0, 1, 2]), n_classes=2)


def test_dataset_one_dimensional_X():
    with pytest.raises(DataError, match=r"X must have shape \(n, \*feature_shape\); got shape \(5,\)"):
        Dataset(np.ones(5), np.zeros(5, dtype=int))


def test_dataset_bad_ids():
    with pytest.raises(DataError, match=r"row ids must be unique"):
        Dataset(np.ones((3, 2)), np.zeros(3, dtype=int), ids=[1, 1, 2])


def test_error_hierarchy():
    for cls in (DataError, ChangesError, ModelError, SolverError, MethodError):
        assert issubclass(cls, UnlearnKitError)


# ---------------------------------------------------------------------------- unlearn(): validation


def test_unknown_method_lists_valid_names(binary_10k):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(MethodError, match=r"Unknown unlearning method 'third-order'; valid: ") as exc:
        unlearnkit.unlearn(model, data, Changes.remove([0]), method="third-order")
    for name in METHODS:
        assert name in str(exc.value)
    assert_unchanged(model, snap)


def test_unknown_hyperparameter_lists_valid_ones(binary_10k):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(MethodError, match=r"'second-order' has no hyperparameter\(s\) \['solvr'\]; valid: ") as exc:
        unlearnkit.unlearn(model, data, Changes.remove([0]), method="second-order", solvr="cg")
    msg = str(exc.value)
    for hp in ("solver (default 'auto')", "damping (default 'auto')", "max_params (default 5000)", "batch_size"):
        assert hp in msg
    with pytest.raises(MethodError, match=r"'first-order' has no hyperparameter\(s\) \['lr'\]; valid: tau \(default 'auto'\)"):
        unlearnkit.unlearn(model, data, Changes.remove([0]), method="first-order", lr=0.1)
    with pytest.raises(MethodError, match=r"'retrain' has no hyperparameter\(s\) \['epochs'\]; valid: none"):
        unlearnkit.unlearn(model, data, Changes.remove([0]), method="retrain", epochs=3)
    assert_unchanged(model, snap)


@pytest.mark.parametrize(
    "method, hp, match",
    [
        ("second-order", {"batch_size": "big"}, r"'batch_size' must be int, got 'big'"),
        ("second-order", {"chunks": True}, r"'chunks' must be int, got True"),
        ("second-order", {"solver": 3}, r"'solver' must be str, got 3"),
        ("second-order", {"damping": "lots"}, r"damping must be a number >= 0 or 'auto'"),
        ("first-order", {"tau": [0.1]}, r"'tau' must be float/str"),
    ],
)
def test_wrong_hyperparameter_type(binary_10k, method, hp, match):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(MethodError, match=match):
        unlearnkit.unlearn(model, data, Changes.remove([0]), method=method, **hp)
    assert_unchanged(model, snap)


def test_data_of_wrong_shape_for_model(binary_10k):
    _, model = binary_10k
    snap = snapshot(model)
    rng = np.random.default_rng(0)
    wrong = Dataset(rng.normal(size=(50, 7)), rng.integers(0, 2, size=50), name="seven")
    for method in ("first-order", "second-order"):
        with pytest.raises(ModelError, match=r"seven has examples of shape \(7,\) but the logreg model expects \(10,\)"):
            unlearnkit.unlearn(model, wrong, Changes.remove([0]), method=method)
    assert_unchanged(model, snap)


def test_data_with_too_many_classes_for_model(binary_10k):
    _, model = binary_10k
    snap = snapshot(model)
    rng = np.random.default_rng(1)
    three = Dataset(rng.normal(size=(30, 10)), rng.integers(0, 3, size=30), n_classes=3, name="three")
    with pytest.raises(ModelError, match=r"three has 3 classes but the logreg model has 2 outputs"):
        unlearnkit.unlearn(model, three, Changes.relabel([0], [1]), method="second-order")
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "changes, match",
    [
        (lambda: Changes.remove([10_000]), r"not in the dataset: 10000"),
        (lambda: Changes.relabel([0], [2]), r"label 2 is out of range"),
        (lambda: Changes.zero_features([10]), r"column\(s\) \[10\] out of range"),
    ],
)
def test_changes_out_of_range(binary_10k, method, changes, match):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(ChangesError, match=match):
        unlearnkit.unlearn(model, data, changes(), method=method)
    assert_unchanged(model, snap)


def test_wrong_argument_types(binary_10k):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(DataError, match=r"data must be an unlearnkit Dataset, got ndarray"):
        unlearnkit.unlearn(model, data.X, Changes.remove([0]))
    with pytest.raises(ChangesError, match=r"changes must be an unlearnkit Changes, got dict"):
        unlearnkit.unlearn(model, data, {"removals": [{"rows": [0]}]})
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------------- unlearn(): failing solvers


def test_failing_exact_solver_leaves_model_unchanged(binary_10k):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(SolverError, match=r"exact solver refuses 11 parameters \(max_params=3.*Use solver='cg'"):
        unlearnkit.unlearn(model, data, Changes.relabel([0, 1, 2], [1]), method="second-order",
                           solver="exact", max_params=3)
    with pytest.raises(SolverError, match=r"max_params=3"):
        unlearnkit.unlearn(model, data, Changes.remove([5]), method="second-order",
                           solver="exact", max_params=3, chunks=2)
    assert_unchanged(model, snap)


def test_bad_first_order_step_leaves_model_unchanged(binary_10k):
    data, model = binary_10k
    snap = snapshot(model)
    with pytest.raises(MethodError, match=r"'tau' = -0.5 is outside its registered range"):
        unlearnkit.unlearn(model, data, Changes.remove([5]), method="first-order", tau=-0.5)
    assert_unchanged(model, snap)


def test_successful_unlearning_does_not_modify_input_model(multiclass_small):
    data, model = multiclass_small
    snap = snapshot(model)
    result = unlearnkit.unlearn(model, data, Changes.relabel([0, 1], [2]), method="second-order")
    assert result.model is not model
    assert not torch.equal(FlatModel(result.model).theta(), snap[0])
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------------- method registry


def test_describe_second_order():
    text = unlearnkit.methods.describe("second-order")
    assert text.startswith("second-order: ")
    assert "hyperparameters:" in text
    for line in (
        "solver (str, default 'auto'",
        "damping (float/str, default 'auto'",
        "relative_damping (float, default 0.001",
        "max_params (int, default 5000",
        "scale (float/NoneType, default None",
        "chunks (int, default 1",
        "batch_size (int, default 1024",
    ):
        assert line in text, line
    assert "reference: Warnecke, Pirch, Wressnegger, Rieck. Machine Unlearning of Features and Labels. NDSS 2023." in text


def test_describe_unknown_method():
    with pytest.raises(MethodError, match=r"Unknown unlearning method 'nope'; valid: "):
        unlearnkit.methods.describe("nope")


def test_methods_list():
    names = unlearnkit.methods.list()
    for name in METHODS:
        assert name in names
    assert names == sorted(names)
    assert "retrain" in unlearnkit.methods.describe("retrain")


# ---------------------------------------------------------------------------- model files


def assert_same_model(a, b):
    assert type(a) is type(b)
    assert a.kind == b.kind
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype
        assert torch.equal(sa[k], sb[k])
    assert torch.equal(FlatModel(a).theta(), FlatModel(b).theta())
    assert getattr(a, "train_config", None) == getattr(b, "train_config", None)


def _mlp():
    """An MLP (tuple-valued config, float64) with a train_config, without paying for training."""
    model = unlearnkit.models.build("mlp", n_features=4, n_classes=3, hidden=(6, 5), l2=1e-2).to(torch.float64)
    model.init_parameters(torch.Generator().manual_seed(3))
    model.train_config = unlearnkit.TrainConfig(optimizer="lbfgs", dtype="float64", tol=1e-9, max_iter=500, seed=7)
    return model


@pytest.mark.parametrize("fixture", ["binary_10k", "multiclass_small", "mlp"])
def test_model_file_round_trip(request, tmp_path, fixture):
    model = _mlp() if fixture == "mlp" else request.getfixturevalue(fixture)[1]
    assert model.train_config is not None
    path = unlearnkit.save_model(model, tmp_path / "sub" / "model.pt", metadata={"note": "x", "n": 3})
    assert path.is_file()
    loaded = unlearnkit.load_model(path)
    assert_same_model(model, loaded)
    assert loaded.train_config == model.train_config
    assert loaded.metadata == {"note": "x", "n": 3}
    assert not loaded.training
    # no temporary files left behind
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_load_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"Model file not found"):
        unlearnkit.load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match=r"Model file not found"):
        unlearnkit.load_model(tmp_path)  # a directory


def test_load_text_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelError, match=r"is not a readable unlearnkit model file"):
        unlearnkit.load_model(path)


def test_load_plain_dict_without_format(tmp_path, binary_10k):
    _, model = binary_10k
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match=r"is not an unlearnkit model file \(expected format 'unlearnkit.model/1'\)"):
        unlearnkit.load_model(path)
    torch.save({"format": "something/1", "kind": "logreg"}, path)
    with pytest.raises(ModelError, match=r"is not an unlearnkit model file"):
        unlearnkit.load_model(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match=r"is not an unlearnkit model file"):
        unlearnkit.load_model(path)


def test_load_wrong_kind(tmp_path, binary_10k):
    _, model = binary_10k
    path = unlearnkit.save_model(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    for kind in ("transformer", None, ["logreg"]):
        payload["kind"] = kind
        torch.save(payload, path)
        with pytest.raises(ModelError, match=r"unknown model kind .*; valid: \['char-lstm', 'cnn', 'logreg', 'mlp', 'rescnn', 'resnet18', 'sisa', 'vit'\]"):
            unlearnkit.load_model(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.pop("config"), r"malformed unlearnkit model file \(KeyError"),
        (lambda p: p.pop("state_dict"), r"malformed unlearnkit model file \(KeyError"),
        (lambda p: p.update(config=None), r"malformed unlearnkit model file"),
        (lambda p: p.update(state_dict=[1.0]), r"malformed unlearnkit model file"),
        (lambda p: p.update(config={"n_features": 10, "bogus": 1}), r"Bad configuration for 'logreg'"),
        (lambda p: p.update(config={"n_features": -3}), r"malformed unlearnkit model file"),
        (lambda p: p.update(state_dict={"linear.weight": torch.zeros(1, 4)}), r"weights do not match the logreg architecture"),
        (lambda p: p.update(train_config={"not_a_field": 1}), r"malformed unlearnkit model file"),
    ],
)
def test_load_malformed_fields(tmp_path, binary_10k, edit, match):
    _, model = binary_10k
    path = unlearnkit.save_model(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    with pytest.raises(ModelError, match=match):
        unlearnkit.load_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 10])
def test_load_truncated_file(tmp_path, binary_10k, keep):
    _, model = binary_10k
    path = unlearnkit.save_model(model, tmp_path / "model.pt")
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    path.write_bytes(raw[:n])
    with pytest.raises(ModelError, match=r"is not a readable unlearnkit model file"):
        unlearnkit.load_model(path)


class Arbitrary:
    """A custom class defined here: not something a weights-only load may construct."""

    def __init__(self):
        self.value = 42


def _mark(path):
    with open(path, "w") as fh:
        fh.write("code ran")
    return {}


class Malicious:
    """Unpickling this calls ``_mark`` (code execution) unless the loader refuses it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_mark, (self.marker,))


def test_load_arbitrary_python_object(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(Arbitrary(), path)
    with pytest.raises(ModelError, match=r"is not a readable unlearnkit model file"):
        unlearnkit.load_model(path)
    torch.save({"format": "unlearnkit.model/1", "kind": "logreg", "config": Arbitrary()}, path)
    with pytest.raises(ModelError, match=r"is not a readable unlearnkit model file"):
        unlearnkit.load_model(path)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_load_never_executes_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {"format": "unlearnkit.model/1", "kind": "logreg", "config": Malicious(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    assert not marker.exists()
    with pytest.raises(ModelError):
        unlearnkit.load_model(path)
    assert not marker.exists(), "loading a model file executed code"
    # sanity check: an unrestricted unpickle of the same file would have run it
    if writer == "pickle":
        with open(path, "rb") as fh:
            pickle.load(fh)
        assert marker.exists()


def test_save_is_atomic(tmp_path, monkeypatch, binary_10k, multiclass_small):
    _, old = binary_10k
    _, new = multiclass_small
    path = unlearnkit.save_model(old, tmp_path / "model.pt")
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        # write part of a file, then crash
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        unlearnkit.save_model(new, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert_same_model(old, unlearnkit.load_model(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the temporary file is cleaned up


def test_save_interrupted_leaves_no_file_when_none_existed(tmp_path, monkeypatch, binary_10k):
    _, model = binary_10k

    def interrupted(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unlearnkit.save_model(model, tmp_path / "model.pt")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
