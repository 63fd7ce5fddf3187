"""uk.wrap: a user's nn.Module as an unlearnable model, equal to the zoo on the same architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import unlearnkit as uk
from unlearnkit.errors import ModelError

from conftest import make_logistic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- a ResNet written here
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MyResNet(nn.Module):
    """A user's ResNet-18 (small-image stem), written independently of the zoo."""

    def __init__(self, channels=1, classes=10, w=2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, w, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        widths, cin, stages = (w, 2 * w, 4 * w, 8 * w), w, []
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def snapshot(module: nn.Module):
    return ({k: v.detach().clone() for k, v in module.state_dict().items()}, [m.training for m in module.modules()])


def unchanged(module: nn.Module, snap) -> bool:
    state, modes = snap
    now = module.state_dict()
    return (state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
            and modes == [m.training for m in module.modules()])


@pytest.fixture(scope="module")
def resnet_pair():
    digits = uk.data.load_digits()
    pool = digits.subset(np.random.default_rng(0).permutation(len(digits))[:300], name="digits300")
    split = uk.data.unlearning_split(pool)
    zoo = uk.train(uk.models.for_data("resnet18", split.train, base_width=2, l2=5e-4), split.train,
                   config=uk.TrainConfig(optimizer="adam", epochs=2, lr=1e-2, batch_size=32))
    mine = MyResNet()
    mine.load_state_dict(zoo.state_dict())
    mine.eval()
    return split, zoo, mine


METHODS = {
    "second-order": dict(params="head", guard=False),  # the raw head step (guarded by default, refused on this model)
    "ft": dict(epochs=1, batch_size=64),
    "ng+": dict(epochs=1, batch_size=64),
    "msg": dict(epochs=1),
    "ct": dict(epochs=1),
    "cf-k": dict(epochs=1, k=2),
    "eu-k": dict(epochs=1, k=1),
    "ssd": dict(),
    "first-order": dict(params="all"),
    "scrub": dict(epochs=1, msteps=1),
    "salun": dict(epochs=1),
    "kde": dict(epochs=1, retain_epochs=1),
    "rni": dict(epochs=2, fine_epochs=1),
    "cfw": dict(epochs=1),
    "bad-teacher": dict(epochs=1),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_wrapped_resnet_equals_the_zoo_resnet(resnet_pair, method):
    split, zoo, mine = resnet_pair
    wrapped = uk.wrap(mine, l2=zoo.l2)
    snap = snapshot(mine)
    a = uk.unlearn(zoo, split.train, split.changes(), method=method, val=split.val, **METHODS[method]).model
    b = uk.unlearn(wrapped, split.train, split.changes(), method=method, val=split.val, **METHODS[method]).model
    za, zb = a.state_dict(), b.state_dict()
    assert set(zb) == {"module." + k for k in za}
    assert any(not torch.equal(v, zoo.state_dict()[k]) for k, v in za.items())  # the method changed something
    for k, v in za.items():  # deterministic on one thread: bit-identical
        assert torch.equal(v, zb["module." + k]), (method, k)
    assert unchanged(mine, snap)


def test_second_order_on_all_parameters_matches_the_zoo(resnet_pair):
    split, zoo, mine = resnet_pair
    wrapped = uk.wrap(mine, l2=zoo.l2)
    kw = dict(params="all", solver="cg", max_iter=5, damping=1e-2)
    a = uk.unlearn(zoo, split.train, split.changes(), method="second-order", **kw).model
    b = uk.unlearn(wrapped, split.train, split.changes(), method="second-order", **kw).model
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert nb == "module." + na and torch.equal(pa, pb)


def test_adapter_is_found_automatically(resnet_pair):
    _, zoo, mine = resnet_pair
    wrapped = uk.wrap(mine)
    assert wrapped.n_classes == 10
    assert wrapped.head() is mine.fc and wrapped.first_layer() is mine.conv1
    assert wrapped.blocks() == [mine.layer1, mine.layer2, mine.layer3, mine.layer4]
    seq = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    w = uk.wrap(seq)
    assert w.head() is seq[4] and w.first_layer() is seq[1] and w.blocks() == [seq[1], seq[3]]
    named = uk.wrap(mine, head="layer4.1.conv2", blocks=["layer3", "layer4"], first_layer="layer1.0.conv1")
    assert named.head() is mine.layer4[1].conv2 and named.blocks() == [mine.layer3, mine.layer4]
    assert named.first_layer() is mine.layer1[0].conv1


def test_missing_adapter_views_name_the_methods_that_need_them():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x)

    w = uk.wrap(NoBlocks())
    with pytest.raises(ModelError, match="No blocks found.*CF-k and EU-k"):
        w.blocks()
    with pytest.raises(ModelError, match="no submodule 'nothere'"):
        uk.wrap(NoBlocks(), head="nothere")
    data = make_logistic_data(40, 4, n_classes=3)
    with pytest.raises(uk.MethodError, match="blocks"):
        uk.unlearn(w, data, uk.Changes.remove([0]), method="eu-k", epochs=1)


def test_retraining_rebuilds_by_reinitialising_a_copy(resnet_pair):
    split, zoo, mine = resnet_pair
    snap = snapshot(mine)
    wrapped = uk.wrap(mine, l2=zoo.l2)
    fresh = wrapped.fresh()
    assert fresh.module is not mine and type(fresh.module) is MyResNet
    again = wrapped.fresh()
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), again.parameters()))  # deterministic
    assert not torch.equal(fresh.module.fc.weight, mine.fc.weight)
    config = uk.TrainConfig(optimizer="adam", epochs=1, lr=1e-2, batch_size=64)
    trained = uk.train(wrapped, split.train, config=config)
    ref = uk.retrain(trained, split.train, split.changes())
    zoo_ref = uk.retrain(uk.train(zoo, split.train, config=config), split.train, split.changes())
    for (na, pa), (nb, pb) in zip(zoo_ref.named_parameters(), ref.named_parameters()):  # same seed, same init rules
        assert nb == "module." + na and torch.equal(pa, pb)
    from unlearnkit.metrics.lira import RecipeTrainer  # LiRA's shadow models rebuild through the same helper

    shadow = RecipeTrainer()(trained, split.retain, 7)
    zoo_shadow = RecipeTrainer()(uk.train(zoo, split.train, config=config), split.retain, 7)
    assert all(torch.equal(pa, pb) for pa, pb in zip(zoo_shadow.parameters(), shadow.parameters()))
    import copy

    assert copy.deepcopy(wrapped).module is not mine  # a copy of the wrapper copies the module
    assert unchanged(mine, snap)


def test_reset_covers_embeddings_recurrent_and_attention_layers():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 8, padding_idx=0)
            self.gru = nn.GRU(8, 8, batch_first=True)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True), 1)
            self.token = nn.Parameter(torch.zeros(8))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = self.emb(x.long())
            h = self.enc(self.gru(h)[0]) + self.token
            return self.fc(h[:, -1])

    net = Seq()
    w = uk.wrap(net, input_shape=(5,))
    a, b = w.fresh(), w.fresh()
    for (name, p), q, orig in zip(a.named_parameters(), b.parameters(), net.parameters()):
        assert torch.equal(p, q), name
        if (p.numel() > 8 or "token" in name) and not name.endswith("in_proj_bias"):  # that one is zero by default
            assert not torch.equal(p, orig), name  # every parameter re-drawn
    assert torch.all(a.module.emb.weight[0] == 0)


# ---------------------------------------------------------------------------- the linear oracle
@pytest.mark.parametrize("order", ["first-order", "second-order"])
def test_wrapped_linear_module_equals_logistic_regression(order):
    data = make_logistic_data(200, 4, n_classes=3, seed=5)
    logreg = uk.train(uk.models.LogisticRegression(n_features=4, n_classes=3, l2=0.5), data,
                      config=uk.TrainConfig(tol=1e-12))
    linear = nn.Linear(4, 3).double()
    with torch.no_grad():  # the same parametrisation: W then b, both penalised
        linear.weight.copy_(logreg.linear.weight)
        linear.bias.copy_(logreg.linear.bias)
    wrapped = uk.wrap(linear, l2=0.5)
    changes = uk.Changes.relabel([1, 7, 30], [0, 2, 1]) + uk.Changes.remove([3, 9])
    kw = dict(solver="exact") if order == "second-order" else {}
    a = uk.unlearn(logreg, data, changes, method=order, **kw).model
    b = uk.unlearn(wrapped, data, changes, method=order, **kw).model
    assert torch.allclose(a.linear.weight, b.module.weight, rtol=0, atol=1e-8)
    assert torch.allclose(a.linear.bias, b.module.bias, rtol=0, atol=1e-8)
    assert not torch.allclose(a.linear.weight, logreg.linear.weight, atol=1e-4)  # the update did something


def test_custom_per_sample_loss_and_its_curvature():
    data = make_logistic_data(120, 4, n_classes=3, seed=6)
    linear = nn.Linear(4, 3).double()
    plain = uk.wrap(linear, l2=0.1)
    own = uk.wrap(linear, l2=0.1, loss=lambda z, y: F.cross_entropy(z, y, reduction="none"))
    changes = uk.Changes.remove([0, 1])
    assert plain.convex and not own.convex  # a user's loss is not assumed convex
    for curvature in ("hessian", "ggn"):
        # the same update for both (guard off: it is on by default for the non-convex custom loss)
        kw = dict(solver="exact", curvature=curvature, damping=0.0, hessian_rows=None, guard=False)
        a = uk.unlearn(plain, data, changes, method="second-order", **kw).model
        b = uk.unlearn(own, data, changes, method="second-order", **kw).model
        assert torch.allclose(a.module.weight, b.module.weight, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- bad input
def test_bad_modules_and_losses_are_refused_and_left_untouched():
    class Wrong(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(4)
            self.out = out

        def forward(self, x):
            z = self.fc(self.bn(x))
            return {"shape": z[:, :2], "nan": z * float("nan"), "tuple": (z, z)}.get(self.out, z)

    for kind, match in (("shape", r"returned shape \(2, 2\)"), ("nan", "non-finite"), ("tuple", "not a tensor")):
        net = Wrong(kind).train()
        snap = snapshot(net)
        with pytest.raises(ModelError, match=match):
            uk.wrap(net, input_shape=(4,), n_classes=3)
        assert unchanged(net, snap)
    net = Wrong("ok").train()
    snap = snapshot(net)
    with pytest.raises(ModelError, match="already reduced"):
        uk.wrap(net, input_shape=(4,), loss=lambda z, y: F.cross_entropy(z, y))
    # without input_shape the probe runs at first use, on the data
    w = uk.wrap(net, loss=lambda z, y: F.cross_entropy(z, y))
    data = make_logistic_data(30, 4, n_classes=3)
    with pytest.raises(ModelError, match="already reduced"):
        uk.unlearn(w, data, uk.Changes.remove([0]), method="ft", epochs=1)
    bad_shape = uk.wrap(Wrong("shape").train(), n_classes=3)
    with pytest.raises(ModelError, match="must return logits"):
        uk.unlearn(bad_shape, data, uk.Changes.remove([0]), method="ft", epochs=1)
    assert unchanged(net, snap)
    with pytest.raises(ModelError, match="torch.nn.Module"):
        uk.wrap(lambda x: x)


def test_train_mode_module_stays_in_train_mode_after_unlearning():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10))
    net.train()
    snap = snapshot(net)
    data = uk.data.load_digits().subset(np.arange(120))
    wrapped = uk.wrap(net, l2=1e-2)
    for method, kw in (("second-order", dict(params="head")), ("first-order", {}), ("ft", dict(epochs=1)),
                       ("eu-k", dict(epochs=1))):
        result = uk.unlearn(wrapped, data, uk.Changes.remove([0, 5]), method=method, **kw)
        assert not result.model.training
        assert unchanged(net, snap), method
    from unlearnkit.metrics.outputs import logits_matrix

    trained = uk.train(wrapped, data, config=uk.TrainConfig(epochs=1, batch_size=32))
    assert not trained.training and trained.module is not net
    uk.accuracy(wrapped, data)  # evaluated in eval mode (no running-statistics update), modes restored after
    logits = logits_matrix(wrapped, data)
    assert np.array_equal(logits, logits_matrix(wrapped, data))  # Dropout off
    assert unchanged(net, snap)
    # gradients are taken in eval mode: deterministic despite Dropout, no running-statistics update
    a = uk.unlearn(wrapped, data, uk.Changes.remove([0, 5]), method="first-order").model
    b = uk.unlearn(wrapped, data, uk.Changes.remove([0, 5]), method="first-order").model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------- functional calls
class TokenClassifier(nn.Module):
    """Embedding -> (GRU / LSTM) -> TransformerEncoder (Dropout) -> LayerNorm -> mean -> Linear."""

    def __init__(self, rnn=None):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.rnn = rnn
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.emb(x.long())
        if self.rnn is not None:
            h = self.rnn(h)[0]
        return self.fc(self.norm(self.enc(h)).mean(1))


@pytest.mark.parametrize("rnn", [None, "gru", "lstm"])
def test_transformer_and_recurrent_modules_get_gradients_and_curvature(rnn):
    from unlearnkit.influence.functional import FlatModel
    from unlearnkit.influence.gradients import per_sample_gradients, summed_gradient
    from unlearnkit.influence.hessian import HessianOperator

    torch.manual_seed(0)
    cell = {"gru": nn.GRU(8, 8, batch_first=True), "lstm": nn.LSTM(8, 8, batch_first=True), None: None}[rnn]
    net = TokenClassifier(cell).train()
    snap = snapshot(net)
    rng = np.random.default_rng(0)
    data = uk.Dataset(rng.integers(0, 11, size=(24, 5)).astype(np.float32), rng.integers(0, 3, size=24), n_classes=3)
    wrapped = uk.wrap(net, l2=1e-2)
    wrapped.check_data(data)
    flat = FlatModel(wrapped)
    assert not flat.model.training and net.training  # an eval-mode copy is differentiated
    rows = per_sample_gradients(flat, data, batch_size=8)
    assert torch.allclose(rows.sum(0), summed_gradient(flat, data), atol=1e-5)
    v = torch.randn(flat.n_params, generator=torch.Generator().manual_seed(1))
    for curvature in ("hessian", "ggn"):
        hv = HessianOperator(flat, data, curvature=curvature).matvec(v)
        assert hv.shape == v.shape and torch.all(torch.isfinite(hv))
    result = uk.unlearn(wrapped, data, uk.Changes.remove([0, 1]), method="second-order", solver="cg", max_iter=3)
    assert torch.all(torch.isfinite(torch.cat([p.reshape(-1) for p in result.model.parameters()])))
    assert unchanged(net, snap)
