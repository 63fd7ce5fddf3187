"""MSG, CT, CFW, PRMQ, RNI, IU, FF and SSD: each method's own invariant, forgetting, input safety, determinism."""

import copy

import numpy as np
import pytest
import torch

import unlearnkit as uk
import unlearnkit.methods.fisher  # noqa: F401  (registers iu, fisher, ssd)
import unlearnkit.methods.reinit  # noqa: F401  (registers msg, ct, cfw, prmq, rni)
from unlearnkit.errors import MethodError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import per_sample_gradients, summed_gradient
from unlearnkit.methods.fisher import woodbury_solve
from unlearnkit.methods.loops import Tensors
from unlearnkit.methods.reinit import msg_reinitialise, prune_and_redraw, transpose_kernels
from unlearnkit.training import TrainConfig, accuracy, train

METHODS = ["msg", "ct", "cfw", "prmq", "rni", "iu", "fisher", "ssd"]


@pytest.fixture(scope="module")
def classwise():
    """The digits CNN and a class-wise split forgetting every training row of class 3."""
    split = uk.data.unlearning_split(uk.data.load_digits(), forget_classes=[3])
    model = train(uk.models.for_data("cnn", split.train), split.train,
                  config=TrainConfig(optimizer="adam", epochs=30, lr=3e-3, batch_size=32, seed=0))
    return split, model


@pytest.fixture(scope="module")
def results(classwise):
    """Every method at its defaults, run twice (determinism), with the input's state before and after."""
    split, model = classwise
    before = copy.deepcopy(model.state_dict())
    out = {}
    for name in METHODS:
        first = uk.methods.make(name).unlearn(model, split.train, split.changes(), val=split.val)
        second = uk.methods.make(name).unlearn(model, split.train, split.changes(), val=split.val)
        out[name] = (first, second)
    return before, out


def small_resnet(seed=0):
    """ResNet-18 at width 2 on 8x8 digits: 3x3 kernels, 1x1 shortcut convolutions and batch norm."""
    net = uk.models.ResNet18(in_channels=1, height=8, width=8, n_classes=10, base_width=2)
    net.init_parameters(torch.Generator().manual_seed(seed))
    return net


def digits_task(rows=300):
    data = uk.data.load_digits().subset(range(rows))
    return data, uk.Changes.remove(list(range(0, rows, 10)))


def same_state(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------- CT
def test_ct_twice_restores_every_kernel_and_keeps_1x1_kernels():
    net = small_resnet()
    data, changes = digits_task()
    start = copy.deepcopy(net.state_dict())
    ct = uk.methods.make("ct", epochs=0)
    once = ct.unlearn(net, data, changes).model
    twice = ct.unlearn(once, data, changes).model
    convs = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    ones = [n for n, m in convs.items() if m.kernel_size == (1, 1)]
    assert ones, "the test needs 1x1 convolutions"
    s1 = once.state_dict()
    for key, value in start.items():
        module = key.rsplit(".", 1)[0]
        if module in convs and key.endswith("weight") and convs[module].kernel_size != (1, 1):
            assert torch.equal(s1[key], value.transpose(-1, -2))
            assert not torch.equal(s1[key], value)
        else:  # 1x1 kernels, batch norm, the head: untouched
            assert torch.equal(s1[key], value), key
    assert same_state(start, twice.state_dict())
    assert same_state(start, net.state_dict())


def test_transpose_kernels_skips_non_square_kernels_and_says_which():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, (3, 1)), torch.nn.Conv2d(2, 2, 3))
    w0 = net[0].weight.detach().clone()
    info = transpose_kernels(net)
    assert info == {"transposed": 1, "unchanged_1x1": 0, "skipped_non_square": "0"}
    assert torch.equal(net[0].weight, w0)


# ------------------------------------------------------------------------------- MSG
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_msg_reinitialises_exactly_init_rate_of_each_convolution(classwise, rate):
    split, model = classwise
    res = uk.methods.make("msg", epochs=0, init_rate=rate).unlearn(model, split.train, split.changes())
    old, new = model.state_dict(), res.model.state_dict()
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for key in old:
        if key.rsplit(".", 1)[0] in convs and key.endswith("weight"):
            assert int((old[key] != new[key]).sum()) == round(rate * old[key].numel()), key
        else:  # conv biases and every non-conv parameter are unchanged
            assert torch.equal(old[key], new[key]), key
    assert res.diagnostics["reinitialised"] == sum(round(rate * old[f"{c}.weight"].numel()) for c in convs)


def test_msg_masks_pick_the_smallest_gradients_and_leave_batch_norm_alone():
    net = small_resnet()
    data, changes = digits_task()
    retain = Tensors(data.subset(range(1, 300)), device="cpu", dtype=torch.float32)
    forget = Tensors(data.subset(range(0, 300, 10)), device="cpu", dtype=torch.float32)
    before = copy.deepcopy(net.state_dict())
    gen = torch.Generator().manual_seed(0)
    masks = msg_reinitialise(net, retain, forget, init_rate=0.3, batch_size=64, generator=gen)
    after = net.state_dict()
    for name, mask in masks.items():
        w = f"{name}.weight"
        assert int(mask.sum()) == round(0.3 * mask.numel())
        assert torch.equal(after[w] != before[w], mask)  # exactly the masked entries changed
    for key in before:  # batch-norm weights and running statistics, the head: unchanged
        if key.rsplit(".", 1)[0] not in masks:
            assert torch.equal(before[key], after[key]), key


def test_msg_and_ct_refuse_a_model_without_convolutions():
    data = uk.data.load_digits().subset(range(200))
    mlp = uk.models.for_data("mlp", data)
    for name in ("msg", "ct"):
        with pytest.raises(MethodError, match="convolution"):
            uk.methods.make(name).unlearn(mlp, data, uk.Changes.remove([0, 1]))


# ------------------------------------------------------------------------------- PRMQ
def test_prmq_prunes_the_global_smallest_fraction_and_redraws_weights(classwise):
    _, model = classwise
    net = copy.deepcopy(model)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    old = [p.detach().clone() for m in layers for p in (m.weight, m.bias)]
    info = prune_and_redraw(net, 0.6, torch.Generator().manual_seed(0))
    new = [p.detach() for m in layers for p in (m.weight, m.bias)]
    total = sum(p.numel() for p in old)
    changed = torch.cat([(a != b).reshape(-1) for a, b in zip(old, new)])
    magnitudes = torch.cat([a.abs().reshape(-1) for a in old])
    assert info["pruned"] == int(changed.sum()) == round(0.6 * total)
    assert float(magnitudes[changed].max()) <= float(magnitudes[~changed].min())  # one global threshold
    for layer, (w_old, w_new) in zip(layers, zip(old[::2], new[::2])):
        bound = (1.0 / layer.weight[0].numel()) ** 0.5
        assert float(w_new[w_new != w_old].abs().max()) <= bound
    for b_old, b_new in zip(old[1::2], new[1::2]):
        assert torch.all(b_new[b_new != b_old] == 0)  # pruned biases stay at zero


def test_prmq_rounds_parameters_through_float16(classwise):
    split, model = classwise
    res = uk.methods.make("prmq", epochs=0.5).unlearn(model, split.train, split.changes())
    assert res.diagnostics["pruned_fraction"] == pytest.approx(0.9, abs=1e-3)
    for p in res.model.parameters():
        assert torch.equal(p, p.half().float())


# ------------------------------------------------------------------------------- IU
def test_iu_woodbury_solve_equals_the_dense_solve(tiny_mlp):
    data, model = tiny_mlp  # float64, 51 parameters
    flat = FlatModel(model.eval())
    G = per_sample_gradients(flat, data.subset(range(40)))  # k = 40 < p = 51: the Fisher alone is singular
    v = torch.randn(flat.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for lam in (1e-3, 1.0):
        dense = torch.linalg.solve(lam * torch.eye(flat.n_params, dtype=torch.float64) + G.T @ G / G.shape[0], v)
        assert torch.allclose(woodbury_solve(G, v, lam), dense, rtol=1e-8, atol=1e-10)


def test_iu_update_is_alpha_times_the_damped_fisher_newton_step(tiny_mlp):
    data, model = tiny_mlp
    changes = uk.Changes.remove(list(range(0, 200, 8)))
    alpha, lam = 0.5, 1e-2
    res = uk.methods.make("iu", alpha=alpha, damping=lam, n_samples=10_000).unlearn(model, data, changes)
    flat = FlatModel(model.eval())
    forget = data.subset(np.arange(0, 200, 8))
    retain = data.subset(np.setdiff1d(np.arange(200), np.arange(0, 200, 8)))
    n_f, n_r = len(forget), len(retain)
    v = n_f / (n_f + n_r) * (summed_gradient(flat, forget) / n_f - summed_gradient(flat, retain) / n_r)
    G = per_sample_gradients(flat, retain)  # n_samples >= n_r: every retain row
    H = lam * torch.eye(flat.n_params, dtype=torch.float64) + G.T @ G / n_r
    expected = flat.theta() + alpha * torch.linalg.solve(H, v)
    assert torch.allclose(FlatModel(res.model).theta(), expected, rtol=1e-7, atol=1e-9)


def test_iu_refuses_zero_damping(classwise):
    split, model = classwise
    with pytest.raises(MethodError, match="damping"):
        uk.methods.make("iu", damping=0.0).unlearn(model, split.train, split.changes())


# ------------------------------------------------------------------------------- SSD
def test_ssd_only_dampens(classwise, results):
    _, model = classwise
    new = results[1]["ssd"][0].model
    assert results[1]["ssd"][0].diagnostics["dampened"] > 0
    for p, q in zip(model.parameters(), new.parameters()):
        assert torch.all(q.abs() <= p.abs())
        assert torch.all(p * q >= 0)  # no sign flips


# ------------------------------------------------------------------------------- all methods
def test_methods_meant_to_forget_lower_forget_accuracy_classwise(classwise, results):
    """At defaults, forget-class accuracy falls from 1.0 (CT/CFW/PRMQ/RNI/IU/SSD measured 0.0).

    MSG forgets only part of the class at its defaults, and how much depends on everything that
    changes the last bits of training: measured 0.69 / 0.73 / 0.42 (method seeds 0-2) on this
    fixture, 0.73 for seed 0 with two torch threads instead of one, and 0.00-0.90 over training
    seeds 1-3. So MSG is held to a drop of at least 0.05 below the original (the smallest drop
    measured was 0.10), the others to the fixed bound 0.7. FF is the exception: it never looks
    at the forget set, and at its default (which keeps retain accuracy) forget-class accuracy
    stays at 0.98.
    """
    split, model = classwise
    before = accuracy(model, split.forget)
    assert before == 1.0
    for name in METHODS:
        res = results[1][name][0]
        retain, forget = accuracy(res.model, split.retain), accuracy(res.model, split.forget)
        assert retain > 0.85, (name, retain)
        if name == "msg":
            assert forget <= before - 0.05, (name, forget)
        elif name != "fisher":
            assert forget < 0.7, (name, forget)


@pytest.mark.parametrize("name", METHODS)
def test_input_unchanged_same_class_and_deterministic(classwise, results, name):
    _, model = classwise
    before, out = results
    first, second = out[name]
    assert same_state(before, model.state_dict())
    assert type(first.model) is type(model)
    assert same_state(first.model.state_dict(), second.model.state_dict())
    assert all(p.requires_grad for p in first.model.parameters())


@pytest.mark.parametrize("name", ["cfw", "prmq", "rni", "iu", "fisher", "ssd"])
def test_methods_run_on_an_mlp(name):
    data = uk.data.load_digits().subset(range(300))
    mlp = train(uk.models.for_data("mlp", data), data, config=TrainConfig(optimizer="adam", epochs=5, seed=0))
    res = uk.methods.make(name).unlearn(mlp, data, uk.Changes.remove(list(range(0, 300, 10))))
    assert type(res.model) is type(mlp)
