"""The small vision transformer and the residual CNN: shapes, adapter, training, files, gradients, methods."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import unlearnkit as uk
import unlearnkit.methods.finetune  # noqa: F401  (registers ft, ng+)
import unlearnkit.methods.reinit  # noqa: F401  (registers msg, ct)
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import per_sample_gradients
from unlearnkit.models.vit import EncoderBlock

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = ["vit", "rescnn"]
FAST = uk.TrainConfig(optimizer="adam", epochs=5, lr=3e-3, batch_size=32, seed=0)


def images_28x28(n=256, n_classes=4, seed=0):
    """Noisy 28x28 images whose class is the quadrant holding a bright 8x8 square: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(0.0, 0.3, size=(n, 1, 28, 28))
    for i, c in enumerate(y):
        r, s = 3 + 14 * (c // 2), 3 + 14 * (c % 2)
        X[i, 0, r:r + 8, s:s + 8] += 1.0
    return Dataset(X, y, n_classes=n_classes, name="quadrants28")


def same_state(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def split():
    """A ~300-row digits unlearning split (DeepUnlearn's protocol) and, per kind, a model trained on its train part."""
    split = uk.data.unlearning_split(uk.data.load_digits().subset(range(300)))
    models = {kind: uk.train(uk.models.for_data(kind, split.train), split.train, config=FAST) for kind in KINDS}
    return split, models


# ------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("kind", KINDS)
def test_builds_for_digits_and_28x28_images_with_the_adapter(kind):
    for data in (uk.data.load_digits().subset(range(20)), images_28x28(20)):
        net = uk.models.for_data(kind, data).eval()
        assert net.kind == kind and net.input_shape == data.feature_shape
        x = torch.as_tensor(data.X[:3], dtype=torch.float32)
        assert net(x).shape == (3, data.n_classes)
        assert torch.equal(net(x.reshape(3, -1)), net(x))  # flattened rows are reshaped
        rebuilt = type(net)(**net.config)
        assert rebuilt.config == net.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
        ids = {id(p) for p in net.parameters()}
        views = (net.first_layer(), *net.blocks(), net.head())
        assert all(id(p) in ids for m in views for p in m.parameters())
        assert isinstance(net.head(), torch.nn.Linear) and net.head().out_features == data.n_classes
        assert isinstance(net.first_layer(), torch.nn.Conv2d)
    if kind == "vit":
        assert uk.models.for_data("vit", uk.data.load_digits()).patch == 2
        vit = uk.models.for_data("vit", images_28x28(4))
        assert vit.patch == 4 and vit.pos_embed.shape == (1, 7 * 7 + 1, vit.dim)
        assert vit.first_layer().kernel_size == vit.first_layer().stride == (4, 4)
        assert len(vit.blocks()) == vit.depth and all(isinstance(b, EncoderBlock) for b in vit.blocks())
        with pytest.raises(ModelError, match="divisible"):
            uk.models.SmallViT(in_channels=1, height=8, width=8, n_classes=2, dim=10, heads=4)
    else:
        net = uk.models.for_data("rescnn", images_28x28(4))
        assert net.blocks() == [net.layer1, net.layer2, net.layer3]
        assert all(isinstance(b, uk.models.resnet.BasicBlock) for stage in net.blocks() for b in stage)
        with pytest.raises(ModelError, match="at least 4x4"):
            uk.models.ResCNN(in_channels=1, height=2, width=2, n_classes=2)


def test_vit_attention_is_multihead_attention_written_out():
    block = EncoderBlock(16, 4, 32)
    block.attn.in_proj_bias.data.normal_()  # PyTorch starts it at zero; a nonzero bias checks its layout too
    x = torch.randn(3, 5, 16)
    for mode in (block.train, block.eval):
        mode()
        with torch.no_grad():
            expected = block.attn(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(block.attention(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_initialisation_is_deterministic_for_a_seed(kind):
    net = uk.models.for_data(kind, uk.data.load_digits())
    net.init_parameters(torch.Generator().manual_seed(0))
    first = copy.deepcopy(net.state_dict())
    net.init_parameters(torch.Generator().manual_seed(0))
    assert same_state(first, net.state_dict())
    net.init_parameters(torch.Generator().manual_seed(1))
    assert not torch.equal(first["fc.weight"], net.state_dict()["fc.weight"])
    if kind == "vit":  # the class token, the position embedding and the attention projections are drawn too
        for key in ("cls_token", "pos_embed", "encoder.0.attn.in_proj_weight"):
            assert first[key].abs().sum() > 0 and not torch.equal(first[key], net.state_dict()[key]), key


# ------------------------------------------------------------------------------- training and files
@pytest.mark.parametrize("kind", KINDS)
def test_learns_the_digits_and_the_28x28_images(kind):
    digits = uk.data.load_digits()
    train, test = digits.subset(range(1000)), digits.subset(range(1000, 1797))
    model = uk.train(uk.models.for_data(kind, train), train, config=FAST)
    assert uk.accuracy(model, test) > 0.5  # chance is 0.1
    again = uk.train(uk.models.for_data(kind, train), train.subset(range(64)),
                     config=uk.TrainConfig(optimizer="adam", epochs=1, batch_size=32, seed=0))
    twice = uk.train(uk.models.for_data(kind, train), train.subset(range(64)),
                     config=uk.TrainConfig(optimizer="adam", epochs=1, batch_size=32, seed=0))
    assert same_state(again.state_dict(), twice.state_dict())  # a seed fixes the result
    images = images_28x28(256)
    quadrants = uk.train(uk.models.for_data(kind, images), images,
                         config=uk.TrainConfig(optimizer="adam", epochs=4, lr=3e-3, batch_size=32, seed=0))
    assert uk.accuracy(quadrants, images_28x28(200, seed=1)) > 0.7  # held-out images; chance is 0.25


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_gives_the_same_outputs(kind, split, tmp_path):
    data, model = split[0].train, split[1][kind]
    path = uk.save_model(model, tmp_path / f"{kind}.pt")
    loaded = uk.load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert same_state(loaded.state_dict(), model.state_dict())
    x = torch.as_tensor(data.X[:16], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------------------- influence engine
@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_gradients_equal_autograd_one_row_at_a_time(kind, split):
    data, model = split[0].train.subset(range(6)), split[1][kind]
    flat = FlatModel(model)
    rows = per_sample_gradients(flat, data, batch_size=4)
    net = copy.deepcopy(model).eval()
    params = [p for p in net.parameters() if p.requires_grad]
    for i in range(len(data)):
        x = torch.as_tensor(data.X[i:i + 1], dtype=torch.float32)
        loss = net.per_sample_loss(net(x), torch.as_tensor(data.y[i:i + 1]))[0]
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(rows[i], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_second_order_over_every_parameter_runs_through_gauss_newton_products(kind, split):
    """All parameters, GGN curvature (forward-mode ``jvp`` through attention and eval-mode batch norm), CG."""
    split_, models = split
    model = models[kind]
    # the update itself (guard off): the guard may refuse a step on a model this far from an optimum
    result = uk.unlearn(model, split_.train, split_.changes(), method="second-order", max_iter=10, guard=False)
    assert result.model.config == model.config
    before, after = model.state_dict(), result.model.state_dict()
    changed = {k.rsplit(".", 1)[0] for k, v in before.items() if v.is_floating_point() and not torch.equal(after[k], v)}
    assert "fc" in changed and changed - {"fc"}  # the head and the feature layers move
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# ------------------------------------------------------------------------------- methods
# guard=False: the raw head step (a head-only update is convex and guarded by default; the guard may rightly refuse
# the step of a network trained a few epochs, far from its head's optimum, and return the model unchanged)
METHODS = [("second-order", {"params": "head", "guard": False}), ("first-order", {}), ("ft", {}), ("ng+", {}), ("scrub", {}),
           ("msg", {}), ("ct", {}), ("cf-k", {}), ("eu-k", {})]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, hyper", METHODS, ids=[m for m, _ in METHODS])
def test_methods_run_and_change_the_model(kind, name, hyper, split):
    split_, models = split
    model = models[kind]
    before = copy.deepcopy(model.state_dict())
    result = uk.unlearn(model, split_.train, split_.changes(), method=name, val=split_.val, **hyper)
    new = result.model
    assert new is not model and type(new) is type(model) and new.config == model.config
    assert same_state(before, model.state_dict()), "the input model was modified"
    assert all(torch.isfinite(p).all() for p in new.parameters())
    after = new.state_dict()
    changed = {k for k, v in before.items() if v.is_floating_point() and not torch.equal(after[k], v)}
    assert changed, f"{name} returned the {kind} model unchanged"
    if hyper.get("params") == "head":
        assert {k.rsplit(".", 1)[0] for k in changed} == {"fc"}
    if name == "eu-k":  # the last block is re-initialised whole: the ViT's attention projections too
        last = next(n for n, m in model.named_modules() if m is model.blocks()[-1])
        assert {k for k in before if k.startswith(last + ".") and before[k].is_floating_point()} <= changed
    assert not new.training


@pytest.mark.parametrize("kind", KINDS)
def test_msg_and_ct_act_on_the_convolutions(kind, split):
    split_, models = split
    model = models[kind]
    data, changes = split_.train, split_.changes()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    kernels = {f"{n}.weight" for n, m in convs.items() if m.kernel_size[0] == m.kernel_size[1] > 1}
    assert kernels
    start = model.state_dict()
    once = uk.methods.make("ct", epochs=0).unlearn(model, data, changes).model
    for key, value in once.state_dict().items():
        expected = start[key].transpose(-1, -2) if key in kernels else start[key]
        assert torch.equal(value, expected), key  # square kernels transposed; 1x1 kernels, norms, the head untouched
    twice = uk.methods.make("ct", epochs=0).unlearn(once, data, changes).model
    assert same_state(twice.state_dict(), start)  # an involution
    msg = uk.methods.make("msg", epochs=0, init_rate=0.3).unlearn(model, data, changes).model
    for key, value in msg.state_dict().items():
        if key.rsplit(".", 1)[0] in convs and key.endswith("weight"):
            assert int((value != start[key]).sum()) == round(0.3 * value.numel()), key
        else:
            assert torch.equal(value, start[key]), key


# ------------------------------------------------------------------------------- command line and benchmark
def test_cli_trains_and_unlearns_a_vit_and_the_benchmark_accepts_both(tmp_path):
    from typer.testing import CliRunner

    from unlearnkit.bench.config import load_config
    from unlearnkit.cli import app

    runner = CliRunner()
    model_path, out, changes = tmp_path / "vit.pt", tmp_path / "vit2.pt", tmp_path / "c.json"
    r = runner.invoke(app, ["train", "--data", "digits:train", "--model", "vit", "--epochs", "1", "--l2", "1e-4",
                            "--out", str(model_path)])
    assert r.exit_code == 0, r.output
    uk.Changes.remove(uk.data.load("digits:train").ids[:3]).to_json(changes)
    r = runner.invoke(app, ["unlearn", "--model", str(model_path), "--data", "digits:train", "--changes", str(changes),
                            "--method", "second-order", "--param", "params=head", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert uk.load_model(out).kind == "vit"
    assert load_config("quick", ['models.names=["vit", "rescnn"]']).models == ("vit", "rescnn")


def test_pseudo_inverse_judges_negative_eigenvalues_at_the_precision_the_matrix_was_computed_in():
    """A float32 Hessian cast to float64 carries float32 rounding: tiny negative eigenvalues are noise, not curvature."""
    from unlearnkit.errors import SolverError
    from unlearnkit.influence.solvers import _pinv_solve

    q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    evals = torch.cat([torch.full((10,), -1e-5), torch.logspace(0, 4, 40, dtype=torch.float64)])
    M, v = (q * evals) @ q.T, q[:, -1] * 3.0
    with pytest.raises(SolverError, match="negative eigenvalues"):
        _pinv_solve(M, v)  # judged at float64's precision
    x, rank, dropped = _pinv_solve(M, v, eps=torch.finfo(torch.float32).eps)
    assert (rank, dropped) == (40, 10)
    torch.testing.assert_close(x, q[:, -1] * 3.0 / 1e4)
