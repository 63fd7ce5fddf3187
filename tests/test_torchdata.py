"""uk.data.from_torch: the user's tensors, arrays and torch Datasets; streamed data equal to in-memory data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unlearnkit as uk
from unlearnkit.data.torchdata import StreamingDataset
from unlearnkit.errors import ChangesError, DataError, MethodError
from unlearnkit.methods.loops import StreamingTensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, D, C = 120, 5, 3
BATCH = 16  # rows per DataLoader batch of the streamed sets


class GetItemOnly(torch.utils.data.Dataset):
    """Rows reachable only through ``__getitem__`` (no tensors, targets or labels attribute).

    Records what the loaders asked for: the size of every batch fetched (``__getitems__``, which a
    ``DataLoader`` over a ``Subset`` calls with one batch of indices) and the total rows fetched.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self._X, self._y = torch.as_tensor(X, dtype=torch.float32), y
        self.fetch_sizes: list[int] = []
        self.rows_fetched = 0

    def __len__(self) -> int:
        return len(self._y)

    def __getitem__(self, i):
        return self._X[i], self._y[i].item()

    def __getitems__(self, indices):
        self.fetch_sizes.append(len(indices))
        self.rows_fetched += len(indices)
        return [self[i] for i in indices]


def planted(n=N, d=D, c=C, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(X @ rng.normal(size=(d, c)) + rng.gumbel(size=(n, c)), axis=1)
    return X, y


@pytest.fixture(scope="module")
def pair():
    """The same rows in memory and streamed (features read only through ``__getitem__``)."""
    X, y = planted()
    memory = uk.data.from_torch((X, y), name="rows")
    source = GetItemOnly(X, y)
    streamed = uk.data.from_torch(source, name="rows", batch_size=BATCH, materialize_bytes=32 * D * 4)
    return memory, streamed, source


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C))


@pytest.fixture(scope="module")
def models(pair):
    memory, _, _ = pair
    config = uk.TrainConfig(optimizer="adam", epochs=3, lr=1e-2, batch_size=16, dtype="float32")
    wrapped = uk.train(uk.wrap(small_net(), l2=1e-2), memory, config=config)
    zoo = uk.train(uk.models.for_data("mlp", memory, hidden=(8,), l2=1e-2), memory, config=config)
    return {"wrapped": wrapped, "zoo": zoo}


CHANGES = (uk.Changes.remove([3, 50, 77]) + uk.Changes.relabel([10, 11], [0, 1])
           + uk.Changes.set_features([1, 4], [0.5, -1.0], rows=[20, 21, 22]))


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ---------------------------------------------------------------------------------------------- from_torch
def test_from_tensors_and_arrays_give_in_memory_data_with_position_ids():
    X, y = planted(10)
    for source in ((torch.from_numpy(X), torch.from_numpy(y)), (X, y)):
        ds = uk.data.from_torch(source)
        assert type(ds) is uk.data.Dataset and ds.ids.tolist() == list(range(10))
        np.testing.assert_array_equal(ds.X, X)
        np.testing.assert_array_equal(ds.y, y)
    ds = uk.data.from_torch(torch.from_numpy(X), labels=torch.from_numpy(y), ids=np.arange(100, 110))
    assert ds.ids.tolist() == list(range(100, 110))
    assert np.shares_memory(ds.X, X)  # a float32 CPU tensor reaches numpy without a copy
    tds = uk.data.from_torch(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)))
    assert type(tds) is uk.data.Dataset and np.array_equal(tds.X, X)
    forced = uk.data.from_torch(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), stream=True)
    assert isinstance(forced, StreamingDataset) and np.array_equal(forced.dense_rows(), X)
    forced = uk.data.from_torch((X, y), ids=np.arange(5, 15), stream=True)
    assert isinstance(forced, StreamingDataset) and forced.ids.tolist() == list(range(5, 15))
    assert np.array_equal(forced.dense_rows(), X) and np.array_equal(forced.y, y)
    loaded = uk.data.from_torch(GetItemOnly(X, y), stream=False)  # asked for: read once into memory
    assert type(loaded) is uk.data.Dataset and np.array_equal(loaded.X, X) and np.array_equal(loaded.y, y)


def test_getitem_dataset_is_streamed_with_labels_read_once(pair):
    memory, streamed, source = pair
    assert isinstance(streamed, StreamingDataset) and streamed.streaming
    assert streamed.ids.tolist() == list(range(N)) and streamed.n_classes == C
    np.testing.assert_array_equal(streamed.y, memory.y)
    np.testing.assert_array_equal(streamed.dense_rows(7, 40), memory.X[7:40])
    sub = streamed.subset([5, 2, 9])
    assert isinstance(sub, StreamingDataset) and sub.ids.tolist() == [5, 2, 9]
    np.testing.assert_array_equal(sub.dense_rows(), memory.X[[5, 2, 9]])
    assert streamed.positions([9, 2]).tolist() == [9, 2]
    assert streamed.fingerprint() == memory.fingerprint()  # the same bytes, hashed batch by batch
    assert streamed.fingerprint() != streamed.subset(np.arange(N - 1)).fingerprint()
    with pytest.raises(DataError, match="streamed"):
        streamed.X


def test_loader_workers_read_the_same_rows():
    X, y = planted(40)
    ds = uk.data.from_torch(GetItemOnly(X, y), batch_size=8, num_workers=2)
    np.testing.assert_array_equal(ds.y, y)  # the label pass ran in the workers
    np.testing.assert_array_equal(np.concatenate([xb.numpy() for xb, _ in ds.batches(8)]), X)


def test_labels_from_targets_attribute_need_no_pass():
    X, y = planted(40)

    class WithTargets(GetItemOnly):
        targets = property(lambda self: self._y)

    source = WithTargets(X, y)
    ds = uk.data.from_torch(source, batch_size=8)
    assert source.rows_fetched == 0  # labels came from .targets; item 0 was read for the shape only
    np.testing.assert_array_equal(ds.y, y)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_ids_and_labels_are_named_errors():
    X, y = planted(6)
    with pytest.raises(DataError, match="unique; id 1 appears 2 times"):
        uk.data.from_torch((X, y), ids=[0, 1, 1, 2, 3, 4])
    with pytest.raises(DataError, match=">= 0"):
        uk.data.from_torch((X, y), ids=[-1, 1, 2, 3, 4, 5])
    with pytest.raises(DataError, match="must be 6 integers"):
        uk.data.from_torch((X, y), ids=[0, 1, 2])
    with pytest.raises(DataError, match="float ids are refused"):
        uk.data.from_torch((X, y), ids=np.arange(6.0))
    with pytest.raises(DataError, match="must be 6 integers"):  # ids of a streamed set too
        uk.data.from_torch(GetItemOnly(X, y), ids=[0, 1])
    with pytest.raises(DataError, match="unique"):
        uk.data.from_torch(GetItemOnly(X, y), ids=[5, 5, 1, 2, 3, 4])
    with pytest.raises(DataError, match="numpy.unique"):
        uk.data.from_torch(X, labels=np.array(["cat", "dog", "cat", "dog", "cat", "dog"]))
    with pytest.raises(DataError, match=r"y\.long\(\)"):
        uk.data.from_torch((torch.from_numpy(X), torch.from_numpy(y).float()))
    with pytest.raises(DataError, match="argmax"):
        uk.data.from_torch((X, np.eye(3)[y]))
    with pytest.raises(DataError, match="5 labels for 6 rows"):
        uk.data.from_torch(X, labels=y[:5])
    with pytest.raises(DataError, match="pass the labels"):
        uk.data.from_torch(X)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        uk.data.from_torch((bad, y))


def test_streamed_labels_are_checked_like_arrays():
    X, y = planted(12)
    with pytest.raises(DataError, match="numpy.unique"):
        uk.data.from_torch(GetItemOnly(X, np.array(["a", "b"] * 6)))
    with pytest.raises(DataError, match=r"y\.long\(\)"):
        uk.data.from_torch(GetItemOnly(X, y + 0.5))
    with pytest.raises(DataError, match="12 labels for 12 rows|labels for 12 rows"):
        uk.data.from_torch(GetItemOnly(X, y), labels=y[:4])
    items_only = [torch.from_numpy(row) for row in X]  # a list of feature tensors is a map-style data set too
    ds = uk.data.from_torch(items_only, labels=y, batch_size=5)
    assert isinstance(ds, StreamingDataset) and np.array_equal(ds.dense_rows(), X)
    with pytest.raises(DataError, match="not \\(x, y\\) pairs"):
        uk.data.from_torch(items_only)


def test_nan_features_of_a_streamed_set_are_refused_per_batch():
    X, y = planted(40)
    X[33, 2] = np.inf
    ds = uk.data.from_torch(GetItemOnly(X, y), batch_size=8)  # nothing read yet but row 0
    np.testing.assert_array_equal(ds.dense_rows(0, 32), X[:32])  # clean batches are fine
    with pytest.raises(DataError, match=r"NaN or infinite features \(ids 33\)"):
        list(ds.batches(8))


def test_unknown_ids_in_a_change_are_named(pair):
    _, streamed, _ = pair
    with pytest.raises(ChangesError, match="not in the dataset: 999"):
        uk.Changes.remove([999]).resolve(streamed)
    with pytest.raises(ChangesError, match="not in the dataset: 1000"):
        uk.Changes.relabel([1000], [0]).resolve(streamed)


# ---------------------------------------------------------------------------------------------- edits
@pytest.mark.parametrize("changes", [
    uk.Changes.remove([0, 5, 119]),
    uk.Changes.relabel([4, 8], [2, 0]),
    uk.Changes.set_features([0, 3], [9.0, 0.0], rows=[1, 2]),
    uk.Changes.zero_features([2], rows=None) + uk.Changes.remove([7]),  # every non-zero row: one streamed scan
    CHANGES,
], ids=["remove", "relabel", "features", "nonzero-rows", "mixed"])
def test_edits_on_streamed_data_equal_in_memory(pair, changes):
    memory, streamed, _ = pair
    a, b = changes.resolve(memory), changes.resolve(streamed)
    assert isinstance(b.corrected, StreamingDataset)
    np.testing.assert_array_equal(a.affected_ids, b.affected_ids)
    for part in ("Z", "Z_tilde", "corrected"):
        x, s = getattr(a, part), getattr(b, part)
        np.testing.assert_array_equal(x.ids, s.ids)
        np.testing.assert_array_equal(x.y, s.y)
        np.testing.assert_array_equal(x.dense_rows(), s.dense_rows())
    again = uk.Changes.set_features([0], [1.5], rows=[1]).resolve(b.corrected).corrected  # edits compose
    np.testing.assert_array_equal(again.dense_rows(0, 3), uk.Changes.set_features([0], [1.5], rows=[1])
                                  .resolve(a.corrected).corrected.X[:3])


# ---------------------------------------------------------------------------------------------- influence
SOLVERS = {  # the solver paths themselves, guard off (the guard refuses steps on this under-trained MLP)
    "exact": {"solver": "auto", "batch_size": BATCH, "guard": False},  # auto: Cholesky of the dense Hessian (75 parameters)
    "cg": {"solver": "cg", "hessian_rows": None, "batch_size": BATCH, "guard": False},
    "lissa": {"solver": "lissa", "depth": 30, "lissa_batch_size": 40, "batch_size": BATCH, "guard": False},
}


@pytest.mark.parametrize("kind", ["wrapped", "zoo"])
@pytest.mark.parametrize("method", ["second-order:exact", "second-order:cg", "second-order:lissa", "first-order"])
def test_influence_update_on_streamed_data_equals_in_memory(pair, models, kind, method):
    memory, streamed, _ = pair
    model = models[kind]
    method, _, solver = method.partition(":")
    options = SOLVERS[solver] if solver else {"batch_size": BATCH}
    a = uk.unlearn(model, memory, CHANGES, method=method, **options)
    b = uk.unlearn(model, streamed, CHANGES, method=method, **options)
    assert float((params(a.model) - params(model)).abs().max()) > 1e-4  # the update did something
    torch.testing.assert_close(params(b.model), params(a.model), rtol=0, atol=1e-6)


def test_streaming_never_fetches_more_than_a_batch(models):
    X, y = planted()
    source = GetItemOnly(X, y)
    streamed = uk.data.from_torch(source, batch_size=BATCH, materialize_bytes=32 * D * 4)
    with pytest.raises(DataError, match="materialize_bytes=640"):
        streamed.tensors()
    before = source.rows_fetched
    resolved = CHANGES.resolve(streamed)  # removals, label and explicit feature edits read no feature
    assert source.rows_fetched == before and len(resolved.corrected) == N - 3
    uk.unlearn(models["wrapped"], streamed, CHANGES, method="second-order", solver="cg", hessian_rows=None,
               batch_size=BATCH)
    uk.train(models["zoo"], streamed, config=uk.TrainConfig(optimizer="adam", epochs=1, batch_size=BATCH, dtype="float32"))
    uk.accuracy(models["zoo"], streamed, batch_size=BATCH)
    uk.unlearn(models["zoo"], streamed, CHANGES, method="ft", epochs=1, batch_size=BATCH)
    assert source.fetch_sizes and max(source.fetch_sizes) <= BATCH
    assert source.rows_fetched > 5 * N  # many passes, each in batches


# ---------------------------------------------------------------------------------------------- training, accuracy
def test_minibatch_training_and_accuracy_on_streamed_data_equal_in_memory(pair, models):
    memory, streamed, _ = pair
    config = uk.TrainConfig(optimizer="sgd", epochs=2, lr=0.05, batch_size=BATCH, dtype="float32", seed=3)
    a = uk.train(models["zoo"], memory, config=config)
    b = uk.train(models["zoo"], streamed, config=config)
    assert torch.equal(params(a), params(b))
    assert uk.accuracy(a, memory) == uk.accuracy(a, streamed, batch_size=BATCH)
    np.testing.assert_array_equal(uk.predict(a, memory), uk.predict(a, streamed, batch_size=BATCH))
    r1 = uk.retrain(models["zoo"], memory, uk.Changes.remove([1, 2]))
    r2 = uk.retrain(models["zoo"], streamed, uk.Changes.remove([1, 2]))
    assert torch.equal(params(r1), params(r2))


# ---------------------------------------------------------------------------------------------- deep methods
@pytest.mark.parametrize("method", ["ft", "ng+", "srl"])
def test_deep_method_on_streamed_data_equals_in_memory(pair, models, method):
    memory, streamed, _ = pair
    changes = uk.Changes.remove(list(range(0, 40, 4)))
    a = uk.unlearn(models["zoo"], memory, changes, method=method, epochs=2, batch_size=BATCH, seed=5)
    b = uk.unlearn(models["zoo"], streamed, changes, method=method, epochs=2, batch_size=BATCH, seed=5)
    assert torch.equal(params(a.model), params(b.model))
    assert not torch.equal(params(a.model), params(models["zoo"]))


def test_ssd_streams_the_training_data(pair, models):
    memory, streamed, _ = pair
    changes = uk.Changes.remove(list(range(0, 40, 4)))
    a = uk.unlearn(models["zoo"], memory, changes, method="ssd", alpha=1.0, batch_size=BATCH)
    b = uk.unlearn(models["zoo"], streamed, changes, method="ssd", alpha=1.0, batch_size=BATCH)
    assert torch.equal(params(a.model), params(b.model))
    assert not torch.equal(params(a.model), params(models["zoo"]))


def test_method_needing_the_whole_retain_tensor_refuses_streamed_data(pair, models):
    _, streamed, _ = pair
    task = uk.methods.task.Task.build(streamed, uk.Changes.remove([1]))
    from unlearnkit.methods.loops import tensors_of

    retain = tensors_of(task.retain, device="cpu", dtype=torch.float32)
    assert isinstance(retain, StreamingTensors)
    with pytest.raises(MethodError, match="streamed"):
        uk.unlearn(models["zoo"], streamed, uk.Changes.remove([1]), method="bad-teacher")


# ---------------------------------------------------------------------------------------------- retain / forget
def test_split_forget_keeps_ids(pair):
    memory, streamed, _ = pair
    for data in (memory, streamed):
        retain, forget = uk.data.split_forget(data, [30, 4, 8])
        assert forget.ids.tolist() == [4, 8, 30] and len(retain) == N - 3
        assert not set(retain.ids) & set(forget.ids)
        np.testing.assert_array_equal(forget.dense_rows(), memory.X[[4, 8, 30]])
        assert type(retain) is type(data)
    with pytest.raises(DataError, match="not in the dataset: 500"):
        uk.data.split_forget(memory, [500])
    with pytest.raises(DataError, match="unique"):
        uk.data.split_forget(memory, [4, 4])


def test_from_retain_forget_ids_cannot_collide():
    X, y = planted(30)
    data, changes = uk.data.from_retain_forget((X[:25], y[:25]), (X[25:], y[25:]))
    assert data.ids.tolist() == list(range(30)) and sorted(changes.removed_ids) == list(range(25, 30))
    np.testing.assert_array_equal(changes.apply(data).X, X[:25])
    streamed, changes2 = uk.data.from_retain_forget(GetItemOnly(X[:25], y[:25]), (X[25:], y[25:]), batch_size=8)
    assert isinstance(streamed, StreamingDataset) and changes2 == changes
    np.testing.assert_array_equal(streamed.dense_rows(), X)
    np.testing.assert_array_equal(changes2.resolve(streamed).Z.dense_rows(), X[25:])


# ---------------------------------------------------------------------------------------------- review fixes
class TorchvisionLike(torch.utils.data.Dataset):
    """Raw labels in ``targets``; ``__getitem__`` applies ``target_transform`` (as torchvision data sets do)."""

    def __init__(self, X, y, target_transform=None) -> None:
        self.data, self.targets, self.target_transform = torch.as_tensor(X), list(y), target_transform
        self._raw = list(y)

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        t = self._raw[i]
        return self.data[i], (t if self.target_transform is None else self.target_transform(t))


def test_targets_attribute_disagreeing_with_the_items_is_not_used(caplog):
    X, y = planted(20)
    shifted = (y + 1) % C
    with caplog.at_level("WARNING", logger="unlearnkit.data.torchdata"):
        ds = uk.data.from_torch(TorchvisionLike(X, y, lambda t: int((t + 1) % C)))
    np.testing.assert_array_equal(ds.y, shifted)  # what __getitem__ returns, not the raw targets
    assert "target_transform" in caplog.text and "labels=" in caplog.text
    # only one row disagrees (not item 0): the seeded sample positions catch it
    odd = y.copy()
    odd_row = int(np.random.default_rng(0).choice(20, size=8, replace=False)[0])
    source = TorchvisionLike(X, y, None)
    source.targets[odd_row] = (odd[odd_row] + 1) % C  # the attribute is stale on one row
    np.testing.assert_array_equal(uk.data.from_torch(source).y, y)

    class ClassNames(GetItemOnly):
        labels = ["cat", "dog", "bird"]  # class names that happen to number len(data set)

    np.testing.assert_array_equal(uk.data.from_torch(ClassNames(X[:3], y[:3])).y, y[:3])
    agreeing = uk.data.from_torch(TorchvisionLike(X, y))  # agreeing targets are used as they are
    np.testing.assert_array_equal(agreeing.y, y)


def test_streamed_retain_training_and_val_sets_are_never_loaded_whole(pair, models, caplog):
    from unlearnkit.methods.loops import Tensors, tensors_of

    X, y = planted()
    streamed = uk.data.from_torch(GetItemOnly(X, y), batch_size=BATCH)  # default materialize_bytes: 120 rows fit
    task = uk.methods.task.Task.build(streamed, uk.Changes.remove([1, 7]))
    for part in (task.retain, task.data):
        assert isinstance(tensors_of(part, device="cpu", dtype=torch.float32), StreamingTensors)
    with caplog.at_level("DEBUG", logger="unlearnkit"):
        forget = tensors_of(task.forget, device="cpu", dtype=torch.float32, small=True)
    assert type(forget) is Tensors and torch.equal(forget.X, torch.from_numpy(X[[1, 7]]))
    assert "2 streamed rows (40 bytes) loaded as one tensor" in caplog.text
    tight = uk.data.from_torch(GetItemOnly(X, y), batch_size=BATCH, materialize_bytes=39)
    small = uk.methods.task.Task.build(tight, uk.Changes.remove([1, 7])).forget
    assert isinstance(tensors_of(small, device="cpu", dtype=torch.float32, small=True), StreamingTensors)
    with pytest.raises(DataError, match="80 bytes.*materialize_bytes=39"):
        small.tensors(dtype=torch.float64)
    with pytest.raises(MethodError, match="batch by batch"):  # needs the whole retain tensor: refused by name
        uk.unlearn(models["zoo"], streamed, uk.Changes.remove([1]), method="bad-teacher")


_LIVE = {"source": None, "seen": 0, "worst": 0}  # outside the module: copies of the network share it


class _LiveRows(nn.Module):
    """A network that checks, at every forward pass, how many source rows were fetched but not yet seen by it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_net()

    def forward(self, x):
        _LIVE["worst"] = max(_LIVE["worst"], _LIVE["source"].rows_fetched - _LIVE["seen"])
        _LIVE["seen"] += x.shape[0]
        return self.net(x)


def test_memory_is_bounded_by_the_batch_not_the_data_set():
    """Rows are read as they are used: the source never runs ahead of the network by more than a batch.

    Reading the whole set first (even in small loader batches) and then cutting it into batches
    would make the source run ``N`` rows ahead at the first forward pass.
    """
    X, y = planted()
    source = GetItemOnly(X, y)
    streamed = uk.data.from_torch(source, batch_size=BATCH)
    model = uk.wrap(_LiveRows(), n_classes=C, l2=1e-2)
    config = uk.TrainConfig(optimizer="adam", epochs=1, batch_size=BATCH, dtype="float32")
    changes = uk.Changes.remove([3, 5])
    runs = {
        "accuracy": lambda: uk.accuracy(model, streamed, batch_size=BATCH),
        "train": lambda: uk.train(model, streamed, config=config),
        "ft": lambda: uk.unlearn(model, streamed, changes, method="ft", epochs=1, batch_size=BATCH),
        "srl": lambda: uk.unlearn(model, streamed, changes, method="srl", epochs=1, batch_size=BATCH),
    }
    _LIVE["source"] = source
    for name, run in runs.items():
        _LIVE["seen"], _LIVE["worst"] = source.rows_fetched, 0
        before = source.rows_fetched
        run()
        assert source.rows_fetched - before >= N - 2, name  # a full pass happened
        assert _LIVE["worst"] <= BATCH + 2, (name, _LIVE["worst"])  # a batch, plus the 2 forget rows held whole
    assert max(source.fetch_sizes) <= BATCH


def test_the_data_sets_batch_size_caps_every_fetch(pair, models):
    memory, _, _ = pair
    X, y = planted()
    source = GetItemOnly(X, y)
    streamed = uk.data.from_torch(source, batch_size=BATCH)
    np.testing.assert_array_equal(uk.predict(models["zoo"], streamed), uk.predict(models["zoo"], memory))  # 4096 asked
    assert uk.accuracy(models["zoo"], streamed) == uk.accuracy(models["zoo"], memory)
    options = {"solver": "cg", "hessian_rows": None, "batch_size": 1024}  # influence blocks of 1024 rows
    a = uk.unlearn(models["zoo"], memory, CHANGES, method="second-order", **options)
    b = uk.unlearn(models["zoo"], streamed, CHANGES, method="second-order", **options)
    torch.testing.assert_close(params(b.model), params(a.model), rtol=0, atol=1e-6)
    assert source.fetch_sizes and max(source.fetch_sizes) == BATCH


def test_one_loader_per_pass_for_joined_and_sampled_rows(pair, models, monkeypatch):
    memory, streamed, _ = pair
    loaders = []
    iterate = torch.utils.data.DataLoader.__iter__

    def counting(self):
        loaders.append(self.num_workers)
        return iterate(self)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", counting)
    changes = uk.Changes.remove(list(range(0, 40, 4)))
    b = uk.unlearn(models["zoo"], streamed, changes, method="srl", epochs=2, batch_size=BATCH, seed=5)
    assert len(loaders) <= 2 + 1  # one per epoch over the retain rows, one for the forget rows
    a = uk.unlearn(models["zoo"], memory, changes, method="srl", epochs=2, batch_size=BATCH, seed=5)
    assert torch.equal(params(a.model), params(b.model))


def test_complex_features_refused_and_float16_fingerprints_agree():
    class Complex(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor([1 + 2j, 3j], dtype=torch.complex64), i % 2

    with pytest.raises(DataError, match="complex features.*view_as_real"):
        uk.data.from_torch(Complex())
    X, y = planted(30)
    half = X.astype(np.float16)
    memory = uk.data.from_torch((half, y))
    assert memory.X.dtype == np.float32
    assert memory.fingerprint() == uk.data.from_torch((half, y), stream=True).fingerprint()


def test_wrong_argument_types_are_named_errors(pair):
    memory, streamed, _ = pair
    for data in (memory, streamed):
        with pytest.raises(DataError, match=r"sequence of row ids.*\[5\]"):
            uk.data.split_forget(data, 5)
        with pytest.raises(DataError, match="sequence of row ids"):
            uk.data.split_forget(data, torch.tensor(5))
    X, y = planted(6)
    with pytest.raises(DataError, match=r"cannot read a dict.*\(X, y\)"):
        uk.data.from_torch({"x": X, "y": y})
    with pytest.raises(DataError, match="split_forget") as err:
        uk.data.from_retain_forget(memory, memory)
    assert "use it directly" not in str(err.value)
