"""The fine-tuning family (GA, SRL, NG, NG+, l1-sparse, CF-k, EU-k) and SalUn on a digits CNN.

Method-specific invariants (SalUn's mask density and correct accumulation, EU-k re-initialises
exactly the last k blocks and the head, CF-k leaves the frozen part bit-identical, NG+'s forget
term vanishes at alpha = 1, NG's cap stops ascent), plus for every method: the input model is
unchanged, a seed gives the same model, and the methods that use the forget set lower the
forget accuracy when a whole class is forgotten.
"""

import numpy as np
import pytest
import torch

import unlearnkit as uk
import unlearnkit.methods.finetune  # noqa: F401  (registers the methods)
import unlearnkit.methods.saliency  # noqa: F401
from unlearnkit import MethodError
from unlearnkit.data.dataset import Dataset
from unlearnkit.methods.loops import Tensors, other_labels
from unlearnkit.methods.saliency import saliency_mask
from unlearnkit.methods.task import Task
from unlearnkit.training import TrainConfig, accuracy, train

METHODS = ("ga", "srl", "ng", "ng+", "l1-sparse", "cf-k", "eu-k", "salun")
FORGETTING = ("ga", "srl", "ng", "ng+", "salun")


def _digits(**split):
    s = uk.data.unlearning_split(uk.data.load_digits(), **split)
    m = train(uk.models.for_data("cnn", s.train), s.train,
              config=TrainConfig(optimizer="adam", epochs=30, lr=3e-3, batch_size=32, seed=0))
    return s, m


@pytest.fixture(scope="module")
def classwise():
    """Digits CNN and the split that forgets every training row of class 3."""
    return _digits(forget_classes=[3])


@pytest.fixture(scope="module")
def runs(classwise):
    """Each method at its defaults on the class-wise split, run once for the module."""
    s, m = classwise
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = {name: uk.methods.make(name).unlearn(m, s.train, s.changes(), val=s.val) for name in METHODS}
    return before, out


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tiny_resnet():
    """A ResNet-18 on 8x8 images with every parameter perturbed (so re-initialised values differ)."""
    g = torch.Generator().manual_seed(0)
    net = uk.models.ResNet18(in_channels=1, height=8, width=8, n_classes=4, base_width=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if "running_mean" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(48, 64)).astype(np.float32), rng.integers(0, 4, size=48), n_classes=4, name="noise8x8")
    return net, data, uk.Changes.remove(list(range(8)))


# ---------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", METHODS)
def test_input_model_unchanged_and_same_class(name, classwise, runs):
    s, m = classwise
    before, out = runs
    assert same_state(before, state(m))
    res = out[name]
    assert type(res.model) is type(m)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert all(isinstance(v, (int, float, str)) for v in res.diagnostics.values())


@pytest.mark.parametrize("name", FORGETTING)
def test_forgetting_methods_lower_forget_accuracy_classwise(name, classwise, runs):
    s, m = classwise
    assert accuracy(runs[1][name].model, s.forget) < accuracy(m, s.forget)


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(name, classwise, runs):
    s, m = classwise
    again = uk.methods.make(name).unlearn(m, s.train, s.changes())
    assert same_state(state(runs[1][name].model), state(again.model))


@pytest.mark.parametrize("name", ("srl", "salun", "eu-k"))
def test_seed_changes_the_randomness(name, classwise, runs):
    s, m = classwise
    other = uk.methods.make(name, seed=1).unlearn(m, s.train, s.changes())
    assert not same_state(state(runs[1][name].model), state(other.model))


@pytest.mark.parametrize("name", METHODS)
def test_runs_on_mlp_and_binary_logistic_regression(name):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    for n_classes in (2, 3):
        y = (X[:, 0] > 0).astype(int) if n_classes == 2 else rng.integers(0, 3, size=120)
        data = Dataset(X, y, n_classes=n_classes, name=f"toy{n_classes}")
        kind = "logreg" if n_classes == 2 else "mlp"
        model = train(uk.models.for_data(kind, data), data, config=TrainConfig(optimizer="adam", epochs=5, lr=1e-2, seed=0))
        res = uk.methods.make(name).unlearn(model, data, uk.Changes.remove(list(range(12))))
        assert type(res.model) is type(model)
        assert all(torch.isfinite(p).all() for p in res.model.parameters())


# ---------------------------------------------------------------------------- SalUn
@pytest.mark.parametrize("threshold", (0.0, 0.1, 0.5, 1.0))
def test_salun_mask_has_the_requested_density(threshold, classwise):
    s, m = classwise
    forget = Tensors(s.forget, device="cpu", dtype=torch.float32)
    grads_before = [p.grad for p in m.parameters()]
    mask = saliency_mask(m, forget, threshold, batch_size=32)
    n = sum(p.numel() for p in m.parameters())
    ones = sum(int(v.sum()) for v in mask.values())
    assert abs(ones / n - threshold) <= 1 / n
    assert set(mask) == {k for k, _ in m.named_parameters()}
    assert all(v.dtype == torch.bool and v.shape == p.shape for (k, p), v in zip(m.named_parameters(), mask.values()))
    assert [p.grad for p in m.parameters()] == grads_before  # nothing written to .grad


def test_salun_mask_counts_every_forget_row_once(classwise):
    """The mask is the top fraction of |sum over the forget set of grad(-loss)|, whatever the batch size.

    The reference accumulates into a .grad nobody zeroes, so batch b is counted B - b + 1 times
    and the small-batch mask would rank entries by a different (front-weighted) sum.
    """
    s, m = classwise
    forget = Tensors(s.forget, device="cpu", dtype=torch.float32)
    m.eval()
    loss = -m.per_sample_loss(m(forget.X), forget.y).sum()
    full = torch.cat([g.abs().reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])
    mask = saliency_mask(m, forget, 0.3, batch_size=16)  # 8 batches
    flat = torch.cat([v.reshape(-1) for v in mask.values()])
    kth = torch.sort(full, descending=True).values[int(round(0.3 * full.numel())) - 1]
    assert full[flat].min() >= kth * (1 - 1e-4)
    assert full[~flat].max() <= kth * (1 + 1e-4)


def test_salun_changes_only_masked_weights_even_with_momentum_and_weight_decay(classwise):
    s, m = classwise
    res = uk.methods.make("salun", threshold=0.1, momentum=0.9, weight_decay=5e-4).unlearn(m, s.train, s.changes())
    forget = Tensors(Task.build(s.train, s.changes()).forget, device="cpu", dtype=torch.float32)
    mask = saliency_mask(m, forget, 0.1, batch_size=256)
    changed = unchanged = 0
    for (name, p), q in zip(m.named_parameters(), res.model.parameters()):
        assert torch.equal(p[~mask[name]], q[~mask[name]])
        changed += int((p[mask[name]] != q[mask[name]]).sum())
        unchanged += int(mask[name].sum())
    assert changed > 0.9 * unchanged  # nearly every masked weight moved
    assert res.diagnostics["mask_density"] == pytest.approx(0.1, abs=1e-4)


def test_salun_refuses_a_threshold_outside_0_1(classwise):
    s, m = classwise
    with pytest.raises(MethodError, match="threshold"):
        uk.methods.make("salun", threshold=1.5).unlearn(m, s.train, s.changes())


# ---------------------------------------------------------------------------- EU-k and CF-k
def _changed(a, b, prefixes):
    """Parameters of ``a`` vs ``b`` split by whether their name starts with one of ``prefixes``."""
    inside = {k: not torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes)}
    outside = {k: torch.equal(a[k], b[k]) for k in a if not k.startswith(prefixes)}
    return inside, outside


@pytest.mark.parametrize("k, reset", [(1, ("classifier.1.", "classifier.3.")),
                                      (2, ("features.3.", "classifier.1.", "classifier.3."))])
def test_eu_k_with_no_epochs_reinitialises_exactly_the_last_k_blocks_and_head(k, reset, classwise):
    s, m = classwise
    res = uk.methods.make("eu-k", k=k, epochs=0).unlearn(m, s.train, s.changes())
    before, after = dict(m.named_parameters()), dict(res.model.named_parameters())
    inside, outside = _changed(before, after, reset)
    assert inside and all(inside.values())  # every re-initialised tensor changed ...
    for name in inside:  # ... in (almost) every entry: biases are zeroed, weights redrawn
        assert (before[name] != after[name]).float().mean() > 0.99
    assert outside and all(outside.values())  # everything else bit-identical
    assert res.diagnostics["steps"] == 0


def test_eu_k_on_resnet_resets_last_stage_batch_norm_and_keeps_the_rest():
    net, data, changes = tiny_resnet()
    res = uk.methods.make("eu-k", k=1, epochs=0).unlearn(net, data, changes)
    a, b = state(net), state(res.model)
    inside, outside = _changed(a, b, ("layer4.", "fc."))
    assert all(v for k, v in inside.items() if not k.endswith(("num_batches_tracked", "running_var")))
    assert outside and all(outside.values())  # stem, layer1-3: parameters and statistics
    assert all(torch.all(b[k] == 0) for k in b if k.startswith("layer4.") and k.endswith("running_mean"))
    assert all(torch.all(b[k] == 1) for k in b if k.startswith("layer4.") and k.endswith(("running_var", "bn1.weight")))


def test_cf_k_leaves_the_frozen_blocks_bit_identical(classwise):
    s, m = classwise
    res = uk.methods.make("cf-k", k=1, lr=0.1).unlearn(m, s.train, s.changes())
    inside, outside = _changed(state(m), state(res.model), ("classifier.",))
    assert all(inside.values()) and all(outside.values())


def test_cf_k_on_resnet_keeps_frozen_batch_norm_statistics():
    net, data, changes = tiny_resnet()
    res = uk.methods.make("cf-k", k=2, epochs=2, lr=0.1).unlearn(net, data, changes)
    inside, outside = _changed(state(net), state(res.model), ("layer3.", "layer4.", "fc."))
    assert outside and all(outside.values())  # stem, layer1, layer2: parameters and running statistics
    assert any(inside.values())


def test_k_beyond_the_number_of_blocks_means_all_blocks(classwise):
    s, m = classwise
    res = uk.methods.make("cf-k", k=10, epochs=1).unlearn(m, s.train, s.changes())
    assert res.diagnostics["k"] == len(m.blocks()) == 3
    assert res.diagnostics["trained_parameters"] == sum(p.numel() for p in m.parameters())


class _NoBlocks(uk.models.MLP):
    def blocks(self):
        return uk.models.base.UnlearnableModel.blocks(self)


@pytest.mark.parametrize("name", ("cf-k", "eu-k"))
def test_block_methods_refuse_models_without_blocks_and_negative_k(name):
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, size=30), n_classes=3, name="toy")
    model = _NoBlocks(n_features=4, n_classes=3, hidden=(5,))
    with pytest.raises(MethodError, match="blocks"):
        uk.methods.make(name).unlearn(model, data, uk.Changes.remove([0]))
    with pytest.raises(MethodError, match="'k' = -1 is outside its registered range"):
        uk.methods.make(name, k=-1).unlearn(uk.models.MLP(n_features=4, n_classes=3, hidden=(5,)), data,
                                            uk.Changes.remove([0]))


# ---------------------------------------------------------------------------- NG+ and NG
def test_ng_plus_at_alpha_1_ignores_the_forget_set(classwise):
    """alpha = 1, l2_to_init = 0 is plain retain training: relabelling the forget rows changes nothing."""
    s, m = classwise
    pos = s.train.positions(s.forget.ids)
    y = s.train.y.copy()
    y[pos] = (y[pos] + 1) % 10
    relabelled = Dataset(s.train.X, y, ids=s.train.ids, n_classes=10, name="relabelled")
    for alpha, equal in ((1.0, True), (0.95, False)):
        method = uk.methods.make("ng+", alpha=alpha, l2_to_init=0.0, epochs=2)
        a = method.unlearn(m, s.train, s.changes()).model
        b = method.unlearn(m, relabelled, s.changes()).model
        assert same_state(state(a), state(b)) is equal


def test_ng_plus_l2_to_init_pulls_towards_the_original(classwise):
    s, m = classwise
    far = uk.methods.make("ng+", l2_to_init=0.0).unlearn(m, s.train, s.changes()).diagnostics["distance_to_original"]
    near = uk.methods.make("ng+", l2_to_init=10.0).unlearn(m, s.train, s.changes()).diagnostics["distance_to_original"]
    assert near < 0.5 * far


@pytest.mark.parametrize("freeze", (True, False))
def test_ng_plus_freeze_bn_keeps_running_statistics(freeze):
    net, data, changes = tiny_resnet()
    res = uk.methods.make("ng+", freeze_bn=freeze, epochs=1).unlearn(net, data, changes)
    a, b = state(net), state(res.model)
    stats = [k for k in a if "running_" in k]
    assert all(torch.equal(a[k], b[k]) for k in stats) is freeze


def test_ng_cap_stops_ascent_where_ga_diverges(classwise):
    s, m = classwise
    with pytest.raises(MethodError, match="diverged"):
        uk.methods.make("ga", lr=0.5, epochs=20, batch_size=64).unlearn(m, s.train, s.changes())
    res = uk.methods.make("ng", lr=0.5, epochs=20, batch_size=64).unlearn(m, s.train, s.changes())
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert res.diagnostics["max_loss"] == pytest.approx(np.log(10))
    # once every forget loss is above the cap the gradient is exactly zero (momentum and weight
    # decay are 0 by default): more epochs leave the model bit-identical
    ten = uk.methods.make("ng", lr=0.1, epochs=10).unlearn(m, s.train, s.changes())
    twenty = uk.methods.make("ng", lr=0.1, epochs=20).unlearn(m, s.train, s.changes())
    assert ten.diagnostics["capped_fraction"] == 1.0
    assert same_state(state(ten.model), state(twenty.model))
    with pytest.raises(MethodError, match="max_loss"):
        uk.methods.make("ng", max_loss=-1.0).unlearn(m, s.train, s.changes())


# ---------------------------------------------------------------------------- SRL and l1-sparse
@pytest.mark.parametrize("n_classes", (2, 3, 10))
def test_random_labels_are_never_the_true_label(n_classes):
    y = torch.arange(90_000) % n_classes
    new = other_labels(y, n_classes, torch.Generator().manual_seed(0))
    assert not torch.any(new == y)
    for c in range(n_classes):  # uniform over the other classes
        counts = torch.bincount(new[y == c], minlength=n_classes).float()
        others = counts[torch.arange(n_classes) != c]
        assert others.min() > 0.85 * others.mean()


def test_l1_sparse_penalty_shrinks_the_weights(classwise):
    s, m = classwise
    plain = uk.methods.make("l1-sparse", gamma=0.0).unlearn(m, s.train, s.changes()).diagnostics
    sparse = uk.methods.make("l1-sparse", gamma=1e-2).unlearn(m, s.train, s.changes()).diagnostics
    assert sparse["l1_norm_after"] < 0.9 * plain["l1_norm_after"]
