"""Methods, retraining, LiRA and the comparison on wrapped models and the zoo ViT; the user's own training loop."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import unlearnkit as uk
from unlearnkit.errors import MethodError, MetricError, ModelError
from unlearnkit.metrics.outputs import logits_matrix

from test_wrap import MyResNet, snapshot, unchanged

lira = importlib.import_module("unlearnkit.metrics.lira")  # the package re-exports a function of that name

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- a transformer classifier written here
class EncoderClassifier(nn.Module):
    """A user's transformer classifier: each 8x8 digit is 8 tokens of 8 pixels, a linear input
    projection, a ``nn.TransformerEncoder`` (batch first, with Dropout), mean pooling, a linear head."""

    def __init__(self, d_in=8, tokens=8, dim=16, classes=10):
        super().__init__()
        self.tokens, self.d_in = tokens, d_in
        self.proj = nn.Linear(d_in, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.proj(x.reshape(x.shape[0], self.tokens, self.d_in))
        return self.fc(self.enc(h).mean(1))


@pytest.fixture(scope="module")
def digits_split():
    digits = uk.data.load_digits()
    pool = digits.subset(np.random.default_rng(0).permutation(len(digits))[:200], name="digits200")
    return uk.data.unlearning_split(pool)


CONFIG = uk.TrainConfig(optimizer="adam", epochs=2, lr=1e-2, batch_size=32)


@pytest.fixture(scope="module")
def encoder(digits_split):
    torch.manual_seed(0)
    net = EncoderClassifier().train()  # left in training mode: Dropout on, as a user's module often is
    wrapped = uk.wrap(net, l2=1e-3)
    # found without naming them: the encoder's layers (an nn.ModuleList) are the blocks, fc the head
    assert [id(b) for b in wrapped.blocks()] == [id(m) for m in net.enc.layers]
    assert wrapped.head() is net.fc
    return net, uk.train(wrapped, digits_split.train, config=CONFIG)


@pytest.fixture(scope="module")
def vit(digits_split):
    return uk.train(uk.models.for_data("vit", digits_split.train, l2=1e-3), digits_split.train, config=CONFIG)


METHODS = {
    "second-order": dict(params="all", solver="cg", max_iter=5),
    "second-order-head": dict(params="head"),
    "ft": dict(epochs=1),
    "ng+": dict(epochs=1),
    "scrub": dict(epochs=1, msteps=1, lr=1e-2),
    "salun": dict(epochs=1),
    "msg": dict(epochs=1),
    "ct": dict(epochs=1),
    "cf-k": dict(epochs=1, k=1),
    "eu-k": dict(epochs=1, k=1),
    "ssd": dict(),
}

NO_CONVOLUTION = {"msg", "ct"}
"""MSG and CT edit convolution kernels; the encoder classifier has none and they refuse it."""


def _run(model, split, label):
    method = "second-order" if label.startswith("second-order") else label
    return uk.unlearn(model, split.train, split.changes(), method=method, val=split.val, **METHODS[label])


def _forgets(original, result, split):
    params = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
    assert torch.all(torch.isfinite(params))
    before = logits_matrix(original, split.forget)
    after = logits_matrix(result.model, split.forget)
    assert np.all(np.isfinite(after))
    assert np.abs(after - before).max() > 1e-4  # the forget rows' outputs moved
    assert type(result.model) is type(original)


@pytest.mark.parametrize("label", sorted(METHODS))
def test_methods_on_a_wrapped_transformer_encoder_classifier(encoder, digits_split, label):
    net, model = encoder
    snap = snapshot(net)
    if label in NO_CONVOLUTION:
        with pytest.raises(MethodError, match="convolution kernels"):
            _run(model, digits_split, label)
    else:
        result = _run(model, digits_split, label)
        _forgets(model, result, digits_split)
        assert isinstance(result.model.module, EncoderClassifier) and result.model.module is not net
    assert unchanged(net, snap) and net.training


@pytest.mark.parametrize("label", sorted(METHODS))
def test_methods_on_the_zoo_vit(vit, digits_split, label):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    _forgets(vit, _run(vit, digits_split, label), digits_split)
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------------------- the refusal table of docs/methods.md
REFUSALS = {
    "msg": ("convolution kernels", lambda split: split.changes()),
    "ct": ("convolution kernels", lambda split: split.changes()),
    "sisa": ("sharded ensemble", lambda split: split.changes()),
    "fisher-classwise": ("forgets whole classes", lambda split: split.changes()),
}
"""What a wrapped model without convolutions refuses, and why (the table "Methods on your own model")."""

FAST = dict(epochs=1, retain_epochs=1, fine_epochs=1, k=1, msteps=1, impair_epochs=1, repair_epochs=1,
            noise_steps=2, n_samples=50, max_iter=5)


FAST_OVERRIDES = {"second-order": dict(solver="cg"), "scrub": dict(epochs=2)}
"""SCRUB's one max step and one epoch at its small default learning rate barely move the encoder's outputs."""


def _fast(name: str) -> dict:
    names = {h.name for h in uk.methods.info(name).hyperparameters}
    kw = {k: v for k, v in FAST.items() if k in names}
    return kw | FAST_OVERRIDES.get(name, {})


@pytest.mark.slow
@pytest.mark.parametrize("name", uk.methods.names())
def test_every_registered_method_runs_or_refuses_on_wrapped_models(encoder, digits_split, name):
    net, model = encoder
    snap = snapshot(net)
    if name in REFUSALS:
        reason, _ = REFUSALS[name]
        with pytest.raises(MethodError, match=reason):
            uk.unlearn(model, digits_split.train, digits_split.changes(), method=name, **_fast(name))
    else:
        result = uk.unlearn(model, digits_split.train, digits_split.changes(), method=name, val=digits_split.val,
                            **_fast(name))
        _forgets(model, result, digits_split)  # "runs" in docs/methods.md: finite, and the forget outputs moved
    assert unchanged(net, snap)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in uk.methods.names() if n not in ("sisa", "fisher-classwise")])
def test_every_registered_method_runs_on_a_wrapped_resnet(digits_split, name):
    torch.manual_seed(0)
    net = MyResNet()
    snap = snapshot(net)
    model = uk.train(uk.wrap(net, l2=1e-3), digits_split.train, config=CONFIG)
    result = uk.unlearn(model, digits_split.train, digits_split.changes(), method=name, val=digits_split.val,
                        **_fast(name))
    _forgets(model, result, digits_split)
    assert unchanged(net, snap)


@pytest.mark.parametrize("module", [EncoderClassifier, MyResNet])
def test_classwise_fisher_runs_on_wrapped_models_when_whole_classes_are_forgotten(module):
    digits = uk.data.load_digits()
    pool = digits.subset(np.random.default_rng(1).permutation(len(digits))[:150], name="digits150")
    split = uk.data.unlearning_split(pool, forget_classes=[3])
    torch.manual_seed(0)
    model = uk.train(uk.wrap(module()), split.train, config=CONFIG)
    result = uk.unlearn(model, split.train, split.changes(), method="fisher-classwise")
    _forgets(model, result, split)


# ---------------------------------------------------------------------------- the user's training loop
def seeded_loop(module, data):
    """A user's training loop: seeded, full batch, Adam."""
    torch.manual_seed(11)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    X, y = data.tensors()
    module.train()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(module(X), y).backward()
        opt.step()


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Dropout(0.2), nn.ReLU(), nn.Linear(12, 10))


def test_retrain_with_train_fn_equals_the_loop_run_by_hand(digits_split):
    torch.manual_seed(0)
    net = mlp()
    seeded_loop(net, digits_split.train)  # the user trained it their way
    net.eval()
    snap = snapshot(net)
    model = uk.wrap(net, l2=1e-3, head="4")
    ref = uk.retrain(model, digits_split.train, digits_split.changes(), train_fn=seeded_loop)
    by_hand = model.fresh()
    seeded_loop(by_hand.module, digits_split.changes().apply(digits_split.train))
    assert isinstance(ref, type(model)) and isinstance(ref.module, nn.Sequential) and ref.module is not net
    names = [n for n, _ in ref.named_parameters()]
    assert names == [n for n, _ in by_hand.named_parameters()]
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), by_hand.parameters()))  # bit-identical
    assert not torch.equal(ref.module[1].weight, net[1].weight)
    # the same objective and adapter; in evaluation mode; the recipe is carried, so retraining repeats it
    assert ref.l2 == model.l2 and ref.n_classes == model.n_classes and ref.head() is ref.module[4]
    assert not ref.training and ref.train_fn is seeded_loop and ref.train_seconds >= 0
    again = uk.retrain(ref, digits_split.train, digits_split.changes())
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), again.parameters()))
    method = uk.unlearn(ref, digits_split.train, digits_split.changes(), method="retrain").model
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), method.parameters()))
    assert unchanged(net, snap)


def test_train_with_train_fn_trains_a_fresh_copy(digits_split):
    net = mlp()
    snap = snapshot(net)
    calls = []

    def loop(module, data):
        calls.append((type(module), len(data)))
        seeded_loop(module, data)

    trained = uk.train(uk.wrap(net), digits_split.train, train_fn=loop)
    assert calls == [(nn.Sequential, len(digits_split.train))]
    by_hand = uk.wrap(net).fresh()
    seeded_loop(by_hand.module, digits_split.train)
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), by_hand.parameters()))
    with pytest.raises(ModelError, match="not both"):
        uk.train(uk.wrap(net), digits_split.train, train_fn=loop, config=CONFIG)
    # a zoo model's loop receives the model itself
    zoo = uk.models.for_data("mlp", digits_split.train, hidden=(8,))
    uk.train(zoo, digits_split.train, train_fn=loop)
    assert calls[-1] == (type(zoo), len(digits_split.train))
    assert unchanged(net, snap)


def test_an_unseeded_loop_is_repeatable_through_the_seed(digits_split):
    def loop(module, data):  # draws from the global generator (Dropout) without seeding it
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        X, y = data.tensors()
        module.train()
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(module(X), y).backward()
            opt.step()

    model = uk.wrap(mlp())
    a = uk.retrain(model, digits_split.train, train_fn=loop)
    torch.manual_seed(12345)  # the caller's generator state does not matter, and is restored
    state = torch.get_rng_state()
    b = uk.retrain(model, digits_split.train, train_fn=loop)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_plain_module_is_refused_with_the_way_to_wrap_it(digits_split):
    net = mlp()
    for method in ("ft", "second-order", "retrain", "ssd"):
        with pytest.raises(ModelError, match=r"unlearnkit.wrap\(module\)"):
            uk.unlearn(net, digits_split.train, digits_split.changes(), method=method)


def test_retrain_without_a_recipe_says_to_pass_train_fn(digits_split):
    model = uk.wrap(mlp())
    with pytest.raises(ModelError, match=r"train_fn=fn"):
        uk.retrain(model, digits_split.train, digits_split.changes())
    for method in ("retrain", "retrain-warm"):  # the registered methods refuse, naming the fix
        with pytest.raises(MethodError, match="train_fn=your_loop"):
            uk.unlearn(model, digits_split.train, digits_split.changes(), method=method)


def test_a_loop_returning_the_wrong_thing_is_refused_and_the_module_is_untouched(digits_split):
    net = mlp()
    snap = snapshot(net)
    model = uk.wrap(net)
    with pytest.raises(ModelError, match="returned a Linear"):
        uk.retrain(model, digits_split.train, train_fn=lambda module, data: nn.Linear(64, 10))
    with pytest.raises(ModelError, match="returned a str"):
        uk.retrain(model, digits_split.train, train_fn=lambda module, data: "done")

    def diverge(module, data):
        with torch.no_grad():
            module[1].weight.fill_(float("nan"))

    with pytest.raises(ModelError, match="not finite"):
        uk.retrain(model, digits_split.train, train_fn=diverge)
    with pytest.raises(ModelError, match="callable"):
        uk.retrain(model, digits_split.train, train_fn="sgd")
    other = mlp()  # another module of the same class is accepted: its weights are taken
    got = uk.retrain(model, digits_split.train, train_fn=lambda module, data: other)
    assert torch.equal(got.module[1].weight, other[1].weight) and got.module is not other
    assert unchanged(net, snap)


# ---------------------------------------------------------------------------- LiRA / U-LiRA shadows and evaluate
def _tiny():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=64) > 0).astype(int)
    pool = uk.Dataset(X, y, n_classes=2, name="tiny")
    return pool, pool.subset(np.arange(32), name="tiny-train"), pool.subset(np.arange(32, 64), name="tiny-test")


class CountingLoop:
    """A training loop that counts its calls (a callable object, keyed by its class and settings)."""

    def __init__(self, lr=0.1):
        self.lr = lr  # a setting: part of the cache key
        self._calls = 0  # state: left out of it

    @property
    def calls(self):
        return self._calls

    def __call__(self, module, data):
        self._calls += 1
        opt = torch.optim.SGD(module.parameters(), lr=self.lr)
        X, y = data.tensors()
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(module(X), y).backward()
            opt.step()


def small_net():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def test_lira_shadow_models_train_through_train_fn_and_are_cached_under_its_name(tmp_path):
    pool, train, test = _tiny()
    net = small_net()
    snap = snapshot(net)
    template = uk.wrap(net)
    loop = CountingLoop()
    setup = lira.ShadowSetup(pool, template, n_splits=4, n_partitions=2, train_fn=loop, cache_dir=tmp_path)
    setup.train_all()
    assert loop.calls == 4
    first = setup.model(1)
    assert first.kind == "wrapped" and first.train_fn is loop and first.module is not net
    # shadow s is the loop run on a fresh copy of the template re-initialised from seed s (global generator seeded s)
    by_hand = template.fresh()
    by_hand.init_parameters(torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    CountingLoop()(by_hand.module, setup.half(1))
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), by_hand.parameters()))
    # the same loop in another process reuses the cache (models are read back into the template)
    again_loop = CountingLoop()
    again = lira.ShadowSetup(pool, template, n_splits=4, n_partitions=2, train_fn=again_loop, cache_dir=tmp_path)
    assert again.key == setup.key
    np.testing.assert_array_equal(again.logits("original", 1), setup.logits("original", 1))
    assert isinstance(again.model(1), type(template)) and again_loop.calls == 0
    assert all(torch.equal(p, q) for p, q in zip(again.model(1).parameters(), first.parameters()))
    # another loop (other code, or other settings) never shares the cached shadow models
    other = lira.ShadowSetup(pool, template, n_splits=4, n_partitions=2, train_fn=CountingLoop(lr=0.2),
                             cache_dir=tmp_path)
    assert other.key != setup.key and other.trainer_key != setup.trainer_key
    loops = [lambda m, d: CountingLoop()(m, d), lambda m, d: CountingLoop(lr=0.3)(m, d)]
    keys = {lira.ShadowSetup(pool, template, n_splits=4, train_fn=fn).key for fn in loops}
    assert len(keys) == 2  # two lambdas of one function: same qualified name, different code
    assert "test_wrap_methods" in setup.trainer_key and "CountingLoop" in setup.trainer_key
    assert unchanged(net, snap)


def test_a_wrapped_template_without_a_recipe_asks_for_train_fn():
    pool, _, _ = _tiny()
    setup = lira.ShadowSetup(pool, uk.wrap(small_net()), n_splits=4, n_partitions=2)
    with pytest.raises(MetricError, match="train_fn"):
        setup.model(0)
    with pytest.raises(MetricError, match="not both"):
        lira.ShadowSetup(pool, uk.wrap(small_net()), n_splits=4, train_fn=CountingLoop(),
                         trainer=lira.RecipeTrainer())


def test_evaluate_with_train_fn_retrains_and_trains_the_shadow_models():
    pool, train, test = _tiny()
    net = small_net()
    snap = snapshot(net)
    loop = CountingLoop()
    original = uk.train(uk.wrap(net, l2=1e-2), train, train_fn=loop)
    changes = uk.Changes.remove(train.ids[:8].tolist())
    unlearned = uk.unlearn(original, train, changes, method="ft", epochs=2, lr=0.5)
    splits = uk.EvalSplits.from_changes(train, changes, test=test)
    shadow = lira.ShadowSetup(pool, uk.wrap(net), n_splits=8, n_partitions=2)  # built without a recipe
    loop._calls = 0
    names = ["lira_auc", "ulira_auc", "retdev", "rte", "l2_distance"]
    table = uk.evaluate(original, unlearned, None, splits, names, shadow=shadow, method="retrain", train_fn=loop)
    # 1 retrained reference + 8 shadow models + U-LiRA's retraining of 8 splits x 2 partitions (shared by the
    # retrained column and the unlearned one, whose method is "retrain")
    assert loop.calls == 1 + 8 + 8 * 2
    assert table["retdev"].retrained == 0.0 and table["rte"].retrained == 1.0
    for name in names:
        values = [table[name].value(s) for s in ("original", "unlearned", "retrained")]
        assert all(np.isfinite(v) for v in values if v is not None) and values[1] is not None, name
    with pytest.raises(MetricError, match="another trainer"):
        uk.evaluate(original, unlearned, None, splits, ["lira_auc"], train_fn=loop,
                    shadow=lira.ShadowSetup(pool, original, n_splits=8, train_fn=CountingLoop(lr=0.2)))
    assert unchanged(net, snap)


def test_every_metric_runs_on_a_wrapped_model():
    pool, train, test = _tiny()
    loop = CountingLoop()
    original = uk.train(uk.wrap(small_net(), l2=1e-2), train, train_fn=loop)
    changes = uk.Changes.remove(train.ids[:10].tolist())
    unlearned = uk.unlearn(original, train, changes, method="first-order")
    splits = uk.EvalSplits.from_changes(train, changes, test=test.subset(np.arange(16)),
                                        val=test.subset(np.arange(16, 32)))
    shadow = lira.ShadowSetup(pool, original, n_splits=8, n_partitions=2)  # the loop the original carries
    names = [n for n in uk.metrics.names() if n != "exposure"]  # exposure scores canary texts with the user's scorer
    table = uk.evaluate(original, unlearned, None, splits, names, shadow=shadow, method=("ft", {"epochs": 1}),
                        train_fn=loop)
    assert table.metrics == names
    for row in table:
        values = [row.value(s) for s in ("original", "unlearned", "retrained") if row.value(s) is not None]
        assert values and all(np.isfinite(v) for v in values), row.metric


# ---------------------------------------------------------------------------- the scenarios' comparison
def test_compare_takes_a_wrapped_model_and_train_fn():
    from unlearnkit.scenarios.compare import Problem, Strategy, compare

    pool, train, test = _tiny()
    net = small_net()
    snap = snapshot(net)
    model = uk.wrap(net, l2=1e-2)
    loop = CountingLoop()
    changes = uk.Changes.remove(train.ids[:6].tolist())
    problem = Problem("remove", "tiny", 0, model, train, test, changes)
    rows = compare(problem, [Strategy("ft", "ft", dict(epochs=1)), Strategy("second-order", "second-order")],
                   train_fn=loop)
    assert loop.calls == 1
    by = {r.method: r for r in rows}
    assert set(by) == {"original", "retrain", "ft", "second-order"} and all(r.status == "ok" for r in rows)
    assert by["retrain"].distance == 0.0 and by["retrain"].agreement == 1.0 and by["retrain"].speedup == 1.0
    assert by["original"].distance > 0
    # a model trained by the loop carries it: the reference is retrained with it without passing it again
    trained = uk.train(model, train, train_fn=loop)
    compare(Problem("remove", "tiny", 0, trained, train, test, changes), [])
    assert loop.calls == 3
    with pytest.raises(ModelError, match="unlearnkit.wrap"):
        compare(Problem("remove", "tiny", 0, net, train, test, changes), [])
    assert unchanged(net, snap)


# ---------------------------------------------------------------------------- cache keys, resumed shadows, refusals
def _loop_with(opt_cls):
    def fit(module, data):
        return opt_cls

    return fit


def _loop_reading(cfg):
    def fit(module, data):
        return cfg["lr"]

    return fit


def _loop_kwonly(lr):
    def fit(module, data, *, lr=lr):
        return lr

    return fit


class _Configured:
    def __init__(self, lr):
        self.lr = lr

    def fit(self, module, data):
        return self.lr


def _tensor_loop(module, data, w):
    return w


def test_train_fn_keys_differ_for_loops_that_can_behave_differently():
    from functools import partial

    from unlearnkit.user_training import train_fn_key as key

    pairs = {
        "closure over a class": (_loop_with(torch.optim.SGD), _loop_with(torch.optim.Adam)),
        "closure over a dict": (_loop_reading({"lr": 0.1}), _loop_reading({"lr": 10.0})),
        "closure over an array": (_loop_reading(np.array([0.1])), _loop_reading(np.array([5.0]))),
        "keyword-only default": (_loop_kwonly(0.1), _loop_kwonly(10.0)),
        "bound method": (_Configured(0.1).fit, _Configured(10.0).fit),
        "partial with a tensor": (partial(_tensor_loop, w=torch.tensor([1.0, 2.0])),
                                  partial(_tensor_loop, w=torch.tensor([9.0, 9.0]))),
    }
    for label, (a, b) in pairs.items():
        assert key(a) != key(b), label
    spaces = [{"__name__": "user_module"}, {"__name__": "user_module"}]
    for epochs, namespace in zip((1, 100), spaces):  # the same code reading a module global of another value
        exec("EPOCHS = %d\ndef fit(module, data):\n    return EPOCHS\n" % epochs, namespace)
    assert key(spaces[0]["fit"]) != key(spaces[1]["fit"])
    import types

    helpers = types.ModuleType("user_helpers")  # a user's module the loop calls into: helpers.step
    namespace = {"__name__": "user_module", "helpers": helpers}
    exec("def fit(module, data):\n    return helpers.step(1)\n", namespace)
    keys = set()
    for lr in (0.1, 0.2):
        exec("def step(x):\n    return x * %r\n" % lr, vars(helpers))
        keys.add(key(namespace["fit"]))
    assert len(keys) == 2
    # the same loop, made again, keeps its key (so cached shadow models are reused)
    trainer = _Configured(0.1)
    assert key(trainer.fit) == key(trainer.fit) == key(_Configured(0.1).fit)
    assert key(_loop_reading({"lr": 0.1})) == key(_loop_reading({"lr": 0.1}))
    assert key(partial(_tensor_loop, w=torch.tensor([1.0]))) == key(partial(_tensor_loop, w=torch.tensor([1.0])))


def test_a_loop_capturing_what_cannot_be_digested_is_keyed_for_this_run_only(caplog):
    import logging

    from unlearnkit import user_training
    from unlearnkit.user_training import train_fn_key as key

    generator = torch.Generator().manual_seed(3)

    def fit(module, data):
        return torch.randn(1, generator=generator)

    with caplog.at_level(logging.INFO, logger="unlearnkit.user_training"):
        first = key(fit)
    assert key(fit) == first  # stable within the process
    assert "not reused across runs" in caplog.text and "cache_key" in caplog.text
    user_training._TOKENS.clear()  # what another process sees: fresh tokens
    assert key(fit) != first
    fit.cache_key = "my-loop-v1"  # a name the user gives reuses the cache across runs
    assert key(fit) == "my-loop-v1"


def test_the_shadow_cache_key_names_the_wrapped_architecture_and_loss(tmp_path):
    pool, _, _ = _tiny()
    loop = CountingLoop()

    def setup(act, **kw):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2))
        return lira.ShadowSetup(pool, uk.wrap(net, **kw), n_splits=4, n_partitions=2, train_fn=loop,
                                cache_dir=tmp_path)

    tanh, relu = setup(nn.Tanh()), setup(nn.ReLU())
    assert tanh.key != relu.key
    assert setup(nn.Tanh()).key == tanh.key  # the same architecture shares the cache
    smooth = setup(nn.Tanh(), loss=lambda logits, y: F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1))
    assert smooth.key != tanh.key
    tanh.model(0)
    assert loop.calls == 1
    relu_model = relu.model(0)  # trained, not read from the Tanh model's file
    assert loop.calls == 2 and isinstance(relu_model.module[1], nn.ReLU)


def test_resumed_wrapped_shadow_models_carry_the_loop_for_retraining(tmp_path):
    pool, train, test = _tiny()
    loop = CountingLoop()
    original = uk.train(uk.wrap(small_net(), l2=1e-2), train, train_fn=loop)  # carries the loop
    lira.ShadowSetup(pool, original, n_splits=8, n_partitions=2, cache_dir=tmp_path).train_all()
    loop._calls = 0
    resumed = lira.ShadowSetup(pool, original, n_splits=8, n_partitions=2, cache_dir=tmp_path)
    shadow = resumed.model(3)
    assert loop.calls == 0  # read from the cache
    assert shadow.train_fn is loop and shadow.train_seed == 3 and getattr(shadow, "train_config", None) is None
    fresh = lira.FnTrainer(loop)(original, resumed.half(3), 3)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), shadow.parameters()))
    changes = uk.Changes.remove(train.ids[:8].tolist())
    splits = uk.EvalSplits.from_changes(train, changes, test=test)
    for method in ("retrain-warm", "retrain"):
        unlearned = uk.unlearn(original, train, changes, method=method)
        table = uk.evaluate(original, unlearned, None, splits, ["ulira_auc"], shadow=resumed, method=method)
        assert np.isfinite(table["ulira_auc"].unlearned), method


def test_evaluate_takes_the_same_loop_made_again():
    pool, train, test = _tiny()
    trainer = _Trainer(lr=0.1)
    original = uk.train(uk.wrap(small_net(), l2=1e-2), train, train_fn=trainer.fit)
    changes = uk.Changes.remove(train.ids[:8].tolist())
    unlearned = uk.unlearn(original, train, changes, method="ft", epochs=1)
    splits = uk.EvalSplits.from_changes(train, changes, test=test)
    shadow = lira.ShadowSetup(pool, uk.wrap(small_net()), n_splits=4, n_partitions=2, train_fn=trainer.fit)
    # trainer.fit is a new bound method object at every access: the same loop all the same
    table = uk.evaluate(original, unlearned, None, splits, ["lira_auc"], shadow=shadow, train_fn=trainer.fit)
    assert np.isfinite(table["lira_auc"].unlearned)
    with pytest.raises(MetricError, match="another trainer"):
        uk.evaluate(original, unlearned, None, splits, ["lira_auc"], shadow=shadow, train_fn=_Trainer(lr=0.3).fit)


class _Trainer:
    def __init__(self, lr):
        self.lr = lr

    def fit(self, module, data):
        CountingLoop(self.lr)(module, data)


def test_evaluate_with_train_fn_refuses_splits_without_the_corrected_data():
    pool, train, test = _tiny()
    loop = CountingLoop()
    original = uk.train(uk.wrap(small_net(), l2=1e-2), train, train_fn=loop)
    retain, forget = uk.data.split_forget(train, range(8))
    unlearned = uk.unlearn(original, train, uk.Changes.remove(forget.ids), method="ft", epochs=1)
    with pytest.raises(MetricError, match=r"EvalSplits.from_changes.*corrected="):
        uk.evaluate(original, unlearned, None, uk.EvalSplits(retain=retain, forget=forget), train_fn=loop)


def test_train_retrain_and_unlearn_refuse_what_is_not_an_unlearnkit_model(digits_split):
    net = mlp()
    changes = digits_split.changes()
    calls = [lambda: uk.retrain(net, digits_split.train, changes, train_fn=seeded_loop),
             lambda: uk.retrain(net, digits_split.train, changes),
             lambda: uk.train(net, digits_split.train),
             lambda: uk.train(net, digits_split.train, train_fn=seeded_loop)]
    for call in calls:
        with pytest.raises(ModelError, match=r"unlearnkit.wrap\(module\)"):
            call()
    for bad in (None, "net"):
        with pytest.raises(ModelError, match="must be an unlearnkit model"):
            uk.unlearn(bad, digits_split.train, changes, method="second-order")
        with pytest.raises(ModelError, match="must be an unlearnkit model"):
            uk.retrain(bad, digits_split.train, changes)


def test_a_loop_changing_dtype_or_device_or_leaving_non_finite_buffers_is_refused(digits_split):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    snap = snapshot(net)
    model = uk.wrap(net)

    def to_double(module, data):
        module.double()

    def to_meta(module, data):
        module.to("meta")

    def nan_statistics(module, data):
        seeded_loop(module, data)
        module[2].running_var.fill_(float("nan"))

    def returns_double(module, data):
        return mlp().double()

    with pytest.raises(ModelError, match="dtype torch.float64 instead of torch.float32"):
        uk.retrain(model, digits_split.train, train_fn=to_double)
    with pytest.raises(ModelError, match="meta device"):
        uk.retrain(model, digits_split.train, train_fn=to_meta)
    with pytest.raises(ModelError, match=r"buffer\(s\) are not finite \(e.g. module.2.running_var"):
        uk.retrain(model, digits_split.train, train_fn=nan_statistics)
    with pytest.raises(ModelError, match="dtype torch.float64"):
        uk.retrain(uk.wrap(mlp()), digits_split.train, train_fn=returns_double)
    assert unchanged(net, snap)


def test_compare_retrains_the_strategies_with_train_fn():
    from unlearnkit.scenarios.compare import Problem, Strategy, compare

    pool, train, test = _tiny()
    net = small_net()
    snap = snapshot(net)
    model = uk.wrap(net, l2=1e-2)
    loop = CountingLoop()
    changes = uk.Changes.remove(train.ids[:6].tolist())
    problem = Problem("remove", "tiny", 0, model, train, test, changes)
    rows = compare(problem, [Strategy("retrain", "retrain"), Strategy("warm", "retrain-warm")], train_fn=loop)
    by = {r.method: r for r in rows}
    assert all(r.status == "ok" for r in rows), [r.status for r in rows]
    assert loop.calls == 3 and by["retrain"].distance == 0.0
    assert "train_fn" not in model.__dict__ and unchanged(net, snap)  # the model given is not changed
