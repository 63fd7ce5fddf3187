"""ResNet-18, the architecture adapter, and DeepUnlearn's split protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import DataError, ModelError
from unlearnkit.models.base import reset_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resnet18_has_the_standard_parameter_count_and_shapes():
    net = uk.models.ResNet18(in_channels=3, height=32, width=32, n_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962  # the CIFAR ResNet-18
    small = uk.models.ResNet18(in_channels=1, height=28, width=28, n_classes=10, base_width=4).eval()
    x = torch.randn(3, 1, 28, 28)
    assert small(x).shape == (3, 10)
    assert torch.equal(small(x.reshape(3, -1)), small(x))  # flattened rows are reshaped
    assert len(small.blocks()) == 4 and small.first_layer() is small.conv1 and small.head() is small.fc
    with pytest.raises(ModelError, match="at least 8x8"):
        uk.models.ResNet18(in_channels=1, height=4, width=4, n_classes=2)


def test_resnet18_trains_and_is_a_pure_function_in_eval_mode():
    data = uk.data.load_digits().subset(np.arange(200))
    data = data.replace(X=np.repeat(np.repeat(data.X, 2, axis=2), 2, axis=3), feature_names=None)  # 16x16
    net = uk.models.for_data("resnet18", data, base_width=4)
    trained = uk.train(net, data, config=uk.TrainConfig(optimizer="adam", epochs=3, lr=3e-3, batch_size=32))
    assert not trained.training
    x = torch.as_tensor(data.X[:5])
    assert torch.equal(trained(x), trained(x))
    assert uk.accuracy(trained, data) > 0.2  # learns something in three epochs


def test_adapter_views_share_parameters_with_the_model():
    data = uk.data.load_digits()
    cnn = uk.models.for_data("cnn", data)
    names = {id(p) for p in cnn.parameters()}
    for module in (cnn.first_layer(), *cnn.blocks(), cnn.head()):
        assert all(id(p) in names for p in module.parameters())
    assert isinstance(cnn.head(), torch.nn.Linear) and cnn.head().out_features == 10
    mlp = uk.models.for_data("mlp", data, hidden=(8, 8))
    assert len(mlp.blocks()) == 2 and mlp.head().out_features == 10
    assert uk.models.for_data("logreg", data).blocks() == []


def test_reset_parameters_is_seeded_and_resets_batch_norm():
    net = uk.models.ResNet18(in_channels=1, height=8, width=8, n_classes=3, base_width=2)
    with torch.no_grad():
        net.bn1.weight.fill_(3.0)
        net.bn1.running_mean.fill_(5.0)
    reset_parameters(net, torch.Generator().manual_seed(0))
    a = [p.clone() for p in net.parameters()]
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.running_mean == 0)
    reset_parameters(net, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a, net.parameters()))


def test_unlearning_split_follows_the_deepunlearn_protocol():
    digits = uk.data.load_digits()
    split = uk.data.unlearning_split(digits)
    n_train = len(split.train) + len(split.val)
    assert len(split.val) == round(0.15 * n_train)
    assert len(split.forget) == round(0.10 * len(split.train))
    assert len(split.retain) + len(split.forget) == len(split.train)
    parts = [split.retain.ids, split.forget.ids, split.val.ids, split.test.ids]
    everything = np.concatenate(parts)
    assert np.unique(everything).size == everything.size == len(digits)  # disjoint, covering
    assert np.array_equal(np.sort(split.forget_ids), np.sort(split.forget.ids))
    again = uk.data.unlearning_split(digits)
    assert np.array_equal(again.forget_ids, split.forget_ids)  # one fixed split per seed
    other = uk.data.unlearning_split(digits, seed=0)
    assert not np.array_equal(other.forget_ids, split.forget_ids)
    assert split.changes().removed_ids == set(split.forget_ids.tolist())


def test_unlearning_split_with_an_official_test_set_and_class_wise_forgetting():
    digits = uk.data.load_digits()
    train, test = digits.subset(np.arange(1500)), digits.subset(np.arange(1500, 1797))
    split = uk.data.unlearning_split(train, test, forget_classes=[2, 7])
    assert np.array_equal(split.test.ids, test.ids)
    assert set(np.unique(split.forget.y)) == {2, 7} and not np.isin(split.retain.y, [2, 7]).any()
    assert np.isin(split.val.y, [2, 7]).any()  # held-out rows of the forgotten classes stay for measuring
    with pytest.raises(DataError, match="do not occur"):
        uk.data.unlearning_split(train, test, forget_classes=[11])
    with pytest.raises(DataError, match="shape"):
        uk.data.unlearning_split(train, uk.data.load("wine"))
