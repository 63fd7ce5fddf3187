"""The curvature object: K-FAC / EK-FAC / diagonal / exact against the dense GGN, per-layer treatments, and files.

The oracle is the dense generalised Gauss-Newton matrix built column by column from GGN-vector
products (:class:`~unlearnkit.influence.hessian.HessianOperator`, an independent code path: forward-
and reverse-mode products in ``torch.func``, no hooks, no per-sample gradients).
"""

from __future__ import annotations

import collections
import copy
import logging
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import unlearnkit as uk
from unlearnkit.errors import ModelError, SolverError
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.kfac import KroneckerBlock
from unlearnkit.training import TrainConfig, train

LBFGS = TrainConfig(optimizer="lbfgs", dtype="float64", max_iter=40)


@pytest.fixture(autouse=True)
def _quiet_lbfgs(caplog):
    caplog.set_level(logging.ERROR)  # "L-BFGS stopped ..." warnings: the tests need a trained model, not an optimum


def dense_ggn(model, data, names=None) -> torch.Tensor:
    """The oracle: ``sum_n J_n^T H_n J_n + diag(w)`` column by column from GGN-vector products, float64."""
    flat = FlatModel(model, names)
    return HessianOperator(flat, data, batch_size=512, curvature="ggn").dense().double()


@pytest.fixture(scope="module")
def mlp_case():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int) + (X[:, 2] > 0.5)
    data = uk.Dataset(X, y, n_classes=3, name="mlp-toy")
    model = train(uk.models.MLP(n_features=6, n_classes=3, hidden=(8,), l2=1e-2), data, config=LBFGS)
    return model, data


@pytest.fixture(scope="module")
def cnn_case():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 1, 6, 6))
    y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(int)
    data = uk.Dataset(X, y, n_classes=2, name="cnn-toy")
    model = train(uk.models.SmallCNN(in_channels=1, height=6, width=6, n_classes=2, channels=(3, 4), hidden=8,
                                     l2=1e-2), data, config=TrainConfig(optimizer="lbfgs", dtype="float64", max_iter=30))
    return model, data


# ---------------------------------------------------------------------------- accuracy of the inverse
@pytest.mark.parametrize("case", ["mlp_case", "cnn_case"])
def test_ihvp_accuracy_against_dense_ggn(case, request):
    """Relative error of ``(F + (l2 + lambda) I)^{-1} V`` against the dense GGN's, same damping.

    Damping ``lambda = 1e-3 lambda_max(GGN)``; 8 seeded Gaussian right-hand sides (Frobenius norm).
    """
    model, data = request.getfixturevalue(case)
    G = dense_ggn(model, data)
    p = G.shape[0]
    damping = 1e-3 * float(torch.linalg.eigvalsh(G)[-1])
    V = torch.randn(p, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X = torch.linalg.solve(G + damping * torch.eye(p, dtype=torch.float64), V)
    errors = {}
    for kind in ("exact", "kfac", "ekfac", "diagonal"):
        curv = uk.curvature.fit(model, data, kind=kind, batch_size=32, mc_samples=None)
        Y = torch.stack([curv.solve(V[:, j], damping) for j in range(V.shape[1])], 1)
        errors[kind] = float(torch.linalg.norm(Y - X) / torch.linalg.norm(X))
    print(f"\n{case}: p={p}, damping={damping:.3g}, relative iHVP errors: "
          + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()))
    assert errors["exact"] <= 1e-8
    assert errors["ekfac"] <= errors["kfac"]
    assert errors["kfac"] < errors["diagonal"]
    assert errors["ekfac"] < errors["diagonal"]


def test_exact_deep_and_convex_match_dense_solves(mlp_case, multiclass_small):
    model, data = mlp_case
    G = dense_ggn(model, data)
    v = torch.randn(G.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    curv = uk.curvature.fit(model, data, kind="exact")
    assert isinstance(curv.factor, CachedCurvature)
    for damping in (0.0, 0.5):
        x = torch.linalg.solve(G + damping * torch.eye(G.shape[0], dtype=torch.float64), v)
        assert float((curv.solve(v, damping) - x).norm() / x.norm()) <= 1e-8
    assert float((curv.matvec(v) - G @ v).norm() / (G @ v).norm()) <= 1e-10
    # a convex model: "auto" is the exact Hessian through CachedCurvature
    data, logreg = multiclass_small
    curv = uk.curvature.fit(logreg, data)
    assert curv.kind.value == "exact" and curv.diagnostics["layers"][0]["treatment"] == "exact-hessian"
    H = HessianOperator(FlatModel(logreg), data).dense().double()
    g = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert float((curv.solve(g) - torch.linalg.solve(H, g)).norm() / torch.linalg.solve(H, g).norm()) <= 1e-8


def test_ggn_cg_and_head_subset(mlp_case):
    model, data = mlp_case
    G = dense_ggn(model, data)
    v = torch.randn(G.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = torch.linalg.solve(G + 0.1 * torch.eye(G.shape[0], dtype=torch.float64), v)
    cg = uk.curvature.fit(model, data, kind="ggn-cg")
    assert float((cg.solve(v, 0.1) - x).norm() / x.norm()) <= 1e-6
    head = uk.curvature.fit(model, data, kind="exact", params="head")
    assert head.names == ["net.2.weight", "net.2.bias"]
    Gh = dense_ggn(model, data, head.names)
    vh = v[:Gh.shape[0]]
    assert float((head.solve(vh) - torch.linalg.solve(Gh, vh)).norm() / torch.linalg.solve(Gh, vh).norm()) <= 1e-8
    with pytest.raises(SolverError, match="covers 27 parameters"):
        head.solve(v)


# ---------------------------------------------------------------------------- exactness properties
def test_kfac_single_linear_one_row_equals_exact_ggn():
    """One layer, one row: ``G = J^T H J = (S S^T) (x) (a a^T)`` is a Kronecker product, so K-FAC is exact."""
    torch.manual_seed(0)
    model = uk.wrap(nn.Linear(4, 3).double(), n_classes=3, l2=0.3)
    row = uk.Dataset(np.random.default_rng(0).normal(size=(1, 4)), np.array([2]), n_classes=3)
    G = dense_ggn(model, row)
    p = G.shape[0]
    for kind in ("kfac", "ekfac"):
        curv = uk.curvature.fit(model, row, kind=kind, mc_samples=None)
        assert [layer["treatment"] for layer in curv.diagnostics["layers"]] == [kind]
        M = torch.stack([curv.matvec(e) for e in torch.eye(p, dtype=torch.float64)], 1)
        assert torch.allclose(M, G, rtol=0, atol=1e-12 * float(G.abs().max()))
        v = torch.randn(p, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert torch.allclose(curv.solve(v, 0.2), torch.linalg.solve(G + 0.2 * torch.eye(p, dtype=torch.float64), v),
                              rtol=1e-10, atol=1e-12)
    # with two rows the Kronecker approximation is not exact any more (the test can tell)
    two = uk.Dataset(np.random.default_rng(1).normal(size=(2, 4)), np.array([0, 1]), n_classes=3)
    curv = uk.curvature.fit(model, two, kind="kfac", mc_samples=None)
    M = torch.stack([curv.matvec(e) for e in torch.eye(p, dtype=torch.float64)], 1)
    assert not torch.allclose(M, dense_ggn(model, two), atol=1e-6)


class _Layouts(nn.Module):
    """Convolutions with 'same' padding, an in-place ReLU, a stride and no bias, then a linear layer over positions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding="same")
        self.relu = nn.ReLU(inplace=True)  # changes conv1's output in place: the hooks must see its own gradient
        self.conv2 = nn.Conv2d(2, 3, 2, stride=2, bias=False)
        self.mix = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.conv2(self.relu(self.conv1(x))))  # (m, 3, 2, 2)
        tokens = torch.tanh(self.mix(h.flatten(2).transpose(1, 2)))  # (m, 4 positions, 4)
        return self.head(tokens.mean(1))


@pytest.fixture(scope="module")
def layouts_case():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    data = uk.Dataset(rng.normal(size=(10, 1, 4, 4)), rng.integers(0, 3, size=10), n_classes=3)

    def loss(logits, y):  # a user's loss (label-smoothed cross-entropy): its Hessian by autodiff
        return nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)

    return uk.wrap(_Layouts().double(), n_classes=3, l2=0.1, loss=loss), data


class _Twice(nn.Module):
    """One linear layer called twice per row (its two calls are positions of one per-row gradient) and once more
    on a result that never reaches the logits (a zero output gradient)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.inner(x))
        self.inner(h * 2)  # unused
        return self.head(torch.tanh(self.inner(h)))


@pytest.fixture(scope="module")
def twice_case():
    torch.manual_seed(1)
    rng = np.random.default_rng(3)
    data = uk.Dataset(rng.normal(size=(15, 4)), rng.integers(0, 3, size=15), n_classes=3)
    return uk.wrap(_Twice().double(), n_classes=3, l2=0.1), data


@pytest.mark.parametrize("case", ["mlp_case", "cnn_case", "layouts_case", "twice_case"])
def test_ekfac_diagonal_is_projected_ggn_diagonal(case, request):
    """EK-FAC's eigenvalues are ``diag((Q_B (x) Q_A)^T G_layer (Q_B (x) Q_A))`` exactly (convolutions: summed over
    positions per row), and the diagonal kind is ``diag(G)`` exactly."""
    model, data = request.getfixturevalue(case)
    G = dense_ggn(model, data)
    G0 = G - torch.diag(FlatModel(model).reg.double())  # without the regulariser
    curv = uk.curvature.fit(model, data, kind="ekfac", batch_size=16, mc_samples=None)
    kron = [b for b in curv.blocks if isinstance(b, KroneckerBlock)]
    assert len(kron) == {"mlp_case": 2, "cnn_case": 4, "layouts_case": 4, "twice_case": 2}[case]
    for block in kron:
        idx = block.augmented_order(curv.offsets)
        Q = torch.kron(block.QB, block.QA)
        projected = torch.diagonal(Q.T @ G0[idx][:, idx] @ Q).reshape(block.S.shape)
        assert torch.allclose(block.S, projected, rtol=1e-8, atol=1e-10 * float(projected.max()))
    diag = uk.curvature.fit(model, data, kind="diagonal", batch_size=16)
    D = torch.stack([diag.matvec(e) @ e for e in torch.eye(G.shape[0], dtype=torch.float64)])
    assert torch.allclose(D, torch.diagonal(G), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_softmax_factor_has_c_minus_one_columns(classes):
    """``H = diag(p) - p p^T`` has rank ``C - 1``: the exact factor has ``C - 1`` columns (one backward pass each),
    also for confident rows whose small probabilities underflow."""
    from unlearnkit.influence.kfac import loss_hessian_sqrt

    z = torch.randn(40, classes, generator=torch.Generator().manual_seed(classes), dtype=torch.float64) * 4
    z[0, 0] = 800.0  # p = e_0 in floating point
    model = uk.models.MLP(n_features=2, n_classes=classes, hidden=(3,))
    S, clipped = loss_hessian_sqrt(model, z, torch.zeros(40, dtype=torch.long))
    assert S.shape == (40, classes, classes - 1) and clipped == 0
    p = torch.softmax(z, -1)
    H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    assert torch.allclose(S @ S.transpose(1, 2), H, rtol=0, atol=1e-15)


def test_mc_samples_auto_rule(mlp_case, cnn_case, layouts_case):
    """``mc_samples="auto"``: K-FAC / EK-FAC take the exact factor when it has one column (two classes) or the loss
    is a user's, else one sampled label; the exact and diagonal kinds always take the exact factor."""
    model, data = mlp_case  # 3 classes: 2 exact columns
    for kind in ("kfac", "ekfac"):
        d = uk.curvature.fit(model, data, kind=kind).diagnostics
        assert d["ggn_factor"].startswith("Monte-Carlo, 1 ") and d["ggn_columns"] == 1
        assert "2 columns > 1" in d["ggn_factor_rule"]
    for kind in ("diagonal", "exact"):
        assert uk.curvature.fit(model, data, kind=kind).diagnostics["ggn_factor"].startswith("exact")
    d = uk.curvature.fit(*cnn_case, kind="ekfac").diagnostics  # 2 classes: one exact column
    assert d["ggn_factor"].startswith("exact") and d["ggn_columns"] == 1
    d = uk.curvature.fit(*layouts_case, kind="kfac").diagnostics  # a user's loss
    assert d["ggn_factor"].startswith("exact") and "user's loss" in d["ggn_factor_rule"]
    for bad in ("exact", 0, True, 1.5):
        with pytest.raises(SolverError, match="mc_samples must be"):
            uk.curvature.fit(model, data, kind="kfac", mc_samples=bad)


def test_mc_factor_is_seeded_and_unbiased(mlp_case):
    """Sampled labels: the same seed gives the same factor, and many samples approach the exact factor (an untrained
    model: a confident one has rare classes whose curvature a sample sees rarely, which needs far more samples)."""
    _, data = mlp_case
    model = uk.models.MLP(n_features=6, n_classes=3, hidden=(8,), l2=1e-2).double()
    model.init_parameters(torch.Generator().manual_seed(0))
    exact = uk.curvature.fit(model, data, kind="kfac", mc_samples=None)
    mc1 = uk.curvature.fit(model, data, kind="kfac", mc_samples=200, seed=7)
    mc2 = uk.curvature.fit(model, data, kind="kfac", mc_samples=200, seed=7)
    v = torch.randn(exact.n_params, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert torch.equal(mc1.matvec(v), mc2.matvec(v))
    assert "Monte-Carlo, 200" in mc1.diagnostics["ggn_factor"] and "exact" in exact.diagnostics["ggn_factor"]
    error = float((mc1.matvec(v) - exact.matvec(v)).norm() / exact.matvec(v).norm())
    assert error < 0.05
    few = uk.curvature.fit(model, data, kind="kfac", mc_samples=1, seed=7)
    assert float((few.matvec(v) - exact.matvec(v)).norm() / exact.matvec(v).norm()) > error


# ---------------------------------------------------------------------------- layers it cannot factor
class _Tokens(nn.Module):
    """Embedding -> GRU -> LayerNorm -> Linear over integer tokens given as floats."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.gru(self.emb(x.long()))
        return self.head(self.norm(out[:, -1]))


def test_unfactorable_layers_get_named_blocks():
    torch.manual_seed(0)
    module = _Tokens().double()
    model = uk.wrap(module, n_classes=3, l2=0.1)
    rng = np.random.default_rng(0)
    data = uk.Dataset(rng.integers(0, 7, size=(12, 4)).astype(float), rng.integers(0, 3, size=12), n_classes=3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    curv = uk.curvature.fit(model, data, kind="ekfac", dense_max=100, batch_size=5, mc_samples=None)
    layers = {layer["layer"]: layer for layer in curv.diagnostics["layers"]}
    assert layers["module.emb"]["type"] == "Embedding" and layers["module.emb"]["treatment"] == "dense-block"
    assert layers["module.gru"]["type"] == "GRU" and layers["module.gru"]["treatment"] == "diagonal"
    assert "parameters > 100" in layers["module.gru"]["reason"]
    assert layers["module.norm"]["type"] == "LayerNorm" and layers["module.norm"]["treatment"] == "dense-block"
    assert layers["module.head"]["treatment"] == "ekfac"
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # the module is untouched
    assert not any(module._forward_hooks for module in module.modules())
    # the unfactored blocks are the exact GGN blocks (dense) and diagonal
    G = dense_ggn(model, data)
    offsets = curv.offsets
    for name, treatment in (("module.emb.weight", "dense"), ("module.norm.weight", "dense"),
                            ("module.gru.weight_hh_l0", "diag")):
        s, k = offsets[name]
        cols = torch.stack([curv.matvec(e) for e in torch.eye(G.shape[0], dtype=torch.float64)[s:s + k]], 1)[s:s + k]
        block = G[s:s + k, s:s + k]
        expected = block if treatment == "dense" else torch.diag(torch.diagonal(block))
        assert torch.allclose(cols, expected, rtol=1e-8, atol=1e-10)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = x.reshape(x.shape[0], 3, 4)
        out, _ = self.attn(x, x, x)
        return self.head(out.mean(1))


def test_linear_layer_used_without_being_called_is_not_factored():
    """Attention uses its ``out_proj`` weight without calling the layer: hooks would see nothing (a silent zero
    curvature), so it gets its own exact block instead, and says why."""
    torch.manual_seed(0)
    model = uk.wrap(_Attention().double(), n_classes=3, l2=0.1)
    rng = np.random.default_rng(0)
    data = uk.Dataset(rng.normal(size=(8, 12)), rng.integers(0, 3, size=8), n_classes=3)
    curv = uk.curvature.fit(model, data, kind="kfac", mc_samples=None)
    layers = {layer["layer"]: layer for layer in curv.diagnostics["layers"]}
    assert layers["module.attn.out_proj"]["treatment"] == "dense-block"
    assert "without calling the layer" in layers["module.attn.out_proj"]["reason"]
    assert layers["module.attn"]["treatment"] == "dense-block" and layers["module.head"]["treatment"] == "kfac"
    G = dense_ggn(model, data)
    s, k = curv.offsets["module.attn.out_proj.weight"]
    k += curv.offsets["module.attn.out_proj.bias"][1]
    cols = torch.stack([curv.matvec(e) for e in torch.eye(G.shape[0], dtype=torch.float64)[s:s + k]], 1)[s:s + k]
    assert torch.allclose(cols, G[s:s + k, s:s + k], rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------- files and ties
def test_save_load_round_trip_and_refusals(tmp_path, mlp_case, multiclass_small):
    model, data = mlp_case
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    for kind in ("ekfac", "kfac", "diagonal", "exact"):
        curv = uk.curvature.fit(model, data, kind=kind)
        path = curv.save(tmp_path / f"{kind}.pt")
        back = uk.curvature.load(path, model, data)
        assert back.kind == curv.kind and back.names == curv.names
        assert torch.equal(back.solve(v, 0.01), curv.solve(v, 0.01)) and torch.equal(back.matvec(v), curv.matvec(v))
    path = tmp_path / "ekfac.pt"
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.net[0].weight[0, 0] += 1e-6
    with pytest.raises(SolverError, match="other parameters"):
        uk.curvature.load(path, changed, data)
    other = uk.models.MLP(n_features=6, n_classes=3, hidden=(9,), l2=1e-2).double()
    with pytest.raises(ModelError, match="another model"):
        uk.curvature.load(path, other, data)
    with pytest.raises(SolverError, match="other data"):
        uk.curvature.load(path, model, data.subset(np.arange(len(data) - 1)))
    curv = uk.curvature.load(path, model, data)
    with pytest.raises(ModelError, match="another model"):
        curv.check(multiclass_small[1], multiclass_small[0])


def test_crafted_curvature_files_are_refused_without_unpickling(tmp_path, mlp_case):
    model, data = mlp_case
    curv = uk.curvature.fit(model, data, kind="kfac")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    plain = tmp_path / "pickle.pt"
    plain.write_bytes(pickle.dumps({"format": "unlearnkit.curvature/1", "x": Evil()}))
    with pytest.raises(ModelError, match="curvature file"):
        uk.curvature.load(plain, model, data)
    inside = tmp_path / "inside.pt"
    torch.save({**curv.state(), "extra": Evil()}, inside)
    marker.unlink(missing_ok=True)  # torch.save pickled Evil without calling it; make sure
    with pytest.raises(ModelError, match="not a readable unlearnkit curvature file"):
        uk.curvature.load(inside, model, data)
    assert not marker.exists()
    # a compressed archive (could inflate far beyond its size)
    good = curv.save(tmp_path / "good.pt")
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(ModelError, match="not a readable unlearnkit curvature file: entries .* compressed") as info:
        uk.curvature.load(packed, model, data)
    assert "model file" not in str(info.value)
    # wrong shapes
    state = curv.state()
    state["tensors"]["block0.QA"] = torch.zeros(3, 3, dtype=torch.float64)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(ModelError, match="block0.QA"):
        uk.curvature.load(tmp_path / "shapes.pt", model, data)
    # a folder, and a model file instead of a curvature file; the messages name a curvature file
    with pytest.raises(ModelError, match="Curvature file not found") as info:
        uk.curvature.load(tmp_path, model, data)
    assert "model file" not in str(info.value)
    uk.save_model(model, tmp_path / "model.pt")
    with pytest.raises(ModelError, match="expected format"):
        uk.curvature.load(tmp_path / "model.pt", model, data)


def test_bad_arguments_are_named(mlp_case):
    model, data = mlp_case
    with pytest.raises(SolverError, match="Unknown curvature kind"):
        uk.curvature.fit(model, data, kind="newton")
    with pytest.raises(ModelError):
        uk.curvature.fit(model, data, params=["net.0.weight", "nope"])
    curv = uk.curvature.fit(model, data, kind="kfac", params=["net.0.weight"])
    assert curv.names == ["net.0.weight"] and curv.diagnostics["layers"][0]["treatment"] == "kfac"
    with pytest.raises(SolverError, match="damping"):
        curv.solve(torch.zeros(curv.n_params, dtype=torch.float64), damping=-1.0)
    unpenalised = uk.models.MLP(n_features=6, n_classes=3, hidden=(8,), l2=0.0).double()
    with pytest.raises(SolverError, match="damping > 0"):
        uk.curvature.fit(unpenalised, data.subset([0]), kind="kfac").solve(
            torch.ones(sum(p.numel() for p in unpenalised.parameters()), dtype=torch.float64))


# ---------------------------------------------------------------------------- the cost of fitting
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("config", [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=(2, 3), stride=2, padding=(1, 0)),
    dict(in_channels=1, out_channels=2, kernel_size=3, dilation=2, padding="same"),
    dict(in_channels=3, out_channels=2, kernel_size=(1, 2), padding="same", bias=False),
])
def test_conv_patches_and_per_row_gradients_match_unfold(config):
    """The strided channel-major patches equal ``F.unfold``'s, and the grouped-convolution per-row weight
    gradients equal ``sum_r g_r a_r^T`` from them (strides, dilation, 'same' and asymmetric padding)."""
    from unlearnkit.influence.kfac import _conv_patches, _conv_sample_grads, _mean_patch

    torch.manual_seed(0)
    conv = nn.Conv2d(**config).double()
    x = torch.randn(5, conv.in_channels, 7, 6, dtype=torch.float64)
    padded = nn.functional.pad(x, conv._reversed_padding_repeated_twice)  # padding as the layer applies it
    reference = nn.functional.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    patches = _conv_patches(conv, x)  # (d, m, R)
    assert patches.is_contiguous()
    assert torch.equal(patches.permute(1, 0, 2), reference)
    assert torch.allclose(_mean_patch(conv, x), reference.mean(2), rtol=1e-12, atol=1e-14)
    g = torch.randn_like(conv(x))
    per_row = torch.bmm(g.flatten(2), reference.transpose(1, 2))  # (m, out, d)
    assert torch.allclose(_conv_sample_grads(conv, x, g), per_row, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["cnn_case", "layouts_case", "twice_case"])
def test_ekfac_kept_gradients_equal_a_second_pass(case, request, monkeypatch):
    """EK-FAC's first pass keeps the per-row gradients that fit its memory budget and needs no second pass over
    those rows: the eigenvalues are the same whether all, some or none of the rows were kept."""
    from unlearnkit.influence import kfac

    model, data = request.getfixturevalue(case)
    n = len(data)
    fits = {"all": uk.curvature.fit(model, data, kind="ekfac", batch_size=4, mc_samples=None)}
    kept = fits["all"].diagnostics["layers"][0]["eigenvalue_correction"]
    assert kept["rows_kept_from_first_pass"] == n and kept["rows_in_second_pass"] == 0
    assert 0 < kept["bytes_kept"] <= kept["budget_bytes"] == kfac.EKFAC_CACHE_BYTES
    assert fits["all"].diagnostics["passes"] == 1
    for name, budget in (("some", kept["bytes_kept"] // 2), ("none", 0)):
        monkeypatch.setattr(kfac, "EKFAC_CACHE_BYTES", budget)
        fits[name] = uk.curvature.fit(model, data, kind="ekfac", batch_size=4, mc_samples=None)
        note = fits[name].diagnostics["layers"][0]["eigenvalue_correction"]
        rows = note["rows_kept_from_first_pass"]
        assert (0 < rows < n) if name == "some" else rows == 0
        assert rows % 4 == 0 and note["rows_in_second_pass"] == n - rows and note["bytes_kept"] <= budget
        assert fits[name].diagnostics["passes"] == 2
    for name in ("some", "none"):
        for a, b in zip(fits["all"].blocks, fits[name].blocks):
            if isinstance(a, KroneckerBlock):
                assert torch.equal(a.QA, b.QA) and torch.equal(a.QB, b.QB)
                assert torch.allclose(a.S, b.S, rtol=1e-10, atol=1e-14 * float(a.S.max()))


def test_conv_reduce_factors(cnn_case):
    """``conv_factor="reduce"``: the input factor of the first convolution is ``sum_n [abar_n, 1][abar_n, 1]^T``
    with ``abar_n`` the row's patches averaged over the output pixels; it is named per layer; a convolution with one
    output pixel has the same factors either way; an unknown name is refused."""
    import copy as _copy

    from unlearnkit.influence import kfac

    def blocks(model, data, conv_factor):
        work = _copy.deepcopy(model).eval()
        flat = FlatModel(work)
        probe = next(iter(data.batches(3, dtype=flat.dtype)))[0]
        plans = kfac.plan_layers(work, flat.names, probe, kfac.Mode.KFAC)
        out, _ = kfac.fit_blocks(work, flat, data, plans, kfac.Mode.KFAC, batch_size=16, conv_factor=conv_factor)
        return plans, out

    model, data = cnn_case
    plans, reduced = blocks(model, data, "reduce")
    assert plans[0].describe()["kronecker_factors"].startswith("reduce")
    assert "kronecker_factors" not in plans[-1].describe()  # a linear layer
    X = torch.as_tensor(data.X, dtype=torch.float64)
    conv = model.features[0]
    abar = nn.functional.unfold(X, conv.kernel_size, padding=conv.padding).mean(2)
    abar = torch.cat([abar, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    b = reduced[0]
    assert torch.allclose(b.QA @ torch.diag(b.lA) @ b.QA.T, abar.T @ abar, rtol=1e-10, atol=1e-12)
    _, expanded = blocks(model, data, "expand")
    assert not torch.allclose(expanded[0].lA, b.lA)
    with pytest.raises(SolverError, match="conv_factor must be one of"):
        blocks(model, data, "sum")
    # one output pixel: the two approximations coincide
    rng = np.random.default_rng(5)
    tiny = uk.wrap(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)).double(), n_classes=3, l2=0.1)
    pixel = uk.Dataset(rng.normal(size=(9, 1, 3, 3)), rng.integers(0, 3, size=9), n_classes=3)
    (_, one), (_, other) = blocks(tiny, pixel, "reduce"), blocks(tiny, pixel, "expand")
    for x, y in zip(one, other):
        assert torch.allclose(torch.outer(x.lB, x.lA), torch.outer(y.lB, y.lA), rtol=1e-10, atol=1e-14)


def test_fit_ekfac_memory_trades_a_second_pass_for_kept_rows():
    import unlearnkit as uk

    digits = uk.data.load_digits().subset(np.arange(300))
    net = uk.train(uk.models.for_data("mlp", digits, hidden=(16,)), digits,
                   config=uk.TrainConfig(optimizer="adam", epochs=2, lr=1e-2, batch_size=64))
    kept = uk.curvature.fit(net, digits, kind="ekfac")
    none = uk.curvature.fit(net, digits, kind="ekfac", ekfac_memory=0)
    assert kept.diagnostics["passes"] == 1 and none.diagnostics["passes"] == 2
    v = torch.randn(kept.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    torch.testing.assert_close(kept.solve(v, damping=1e-2), none.solve(v, damping=1e-2), rtol=1e-5, atol=1e-6)
    with pytest.raises(uk.errors.SolverError, match="ekfac_memory"):
        uk.curvature.fit(net, digits, kind="ekfac", ekfac_memory=-1)


def test_ekfac_working_memory_is_bounded_by_the_chunk_and_the_budget(monkeypatch):
    """EK-FAC's per-row products never hold more than about ``_CHUNK`` values at once, and a batch whose kept
    statistics would not fit the memory budget is never formed (its size is known from the shapes first): with a
    1-byte budget, the largest tensor made during the fit is no larger than the model's own activations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from unlearnkit.influence import kfac

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.values = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.values = max(self.values, t.untyped_storage().nbytes() // t.element_size())
            return out

    monkeypatch.setattr(kfac, "_CHUNK", 4096)
    monkeypatch.setattr(kfac, "_PATCHES", 4096)
    rng = np.random.default_rng(0)
    m = 64
    data = uk.Dataset(rng.normal(size=(m, 16, 4, 4)).astype(np.float32), rng.integers(0, 3, size=m), n_classes=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 3))
    model = uk.wrap(net, n_classes=3, l2=0.1)
    activations = m * 32 * 4 * 4  # the convolution's output, the largest tensor of the forward pass
    factor = (16 * 9 + 1) ** 2  # the convolution's input factor
    per_row = 2 * m * 32 * (16 * 9 + 1)  # the batch's per-row gradients (two columns of S): never formed at once
    assert per_row > 4 * max(activations, factor)
    for budget in (1, None):
        with Largest() as seen:
            fit = uk.curvature.fit(model, data, kind="ekfac", batch_size=m, mc_samples=None, ekfac_memory=budget)
        kept = fit.diagnostics["layers"][0]["eigenvalue_correction"]["rows_kept_from_first_pass"]
        assert kept == (0 if budget == 1 else m)
        assert seen.values <= max(activations, factor) + 4096


@pytest.mark.parametrize("case", ["cnn_case", "layouts_case", "twice_case"])
def test_ekfac_rotation_order_and_row_blocks_do_not_change_the_eigenvalues(case, request, monkeypatch):
    """Rotating the activations and output gradients before their product, or the per-row gradients after it,
    kept from the first pass or not, in blocks of any number of rows: the same EK-FAC eigenvalues."""
    from unlearnkit.influence import kfac

    model, data = request.getfixturevalue(case)
    reference = uk.curvature.fit(model, data, kind="ekfac", batch_size=8, mc_samples=None)
    chosen = kfac._order
    for order in ("before", "after"):
        for chunk, budget in ((kfac._CHUNK, None), (64, None), (64, 0)):
            monkeypatch.setattr(kfac, "_order", lambda plan, xs, k, rotated, order=order: (
                chosen(plan, xs, k, rotated) if not rotated or chosen(plan, xs, k, rotated) == "single" else order))
            monkeypatch.setattr(kfac, "_CHUNK", chunk)
            fit = uk.curvature.fit(model, data, kind="ekfac", batch_size=8, mc_samples=None, ekfac_memory=budget)
            monkeypatch.undo()
            for a, b in zip(reference.blocks, fit.blocks):
                if isinstance(a, KroneckerBlock):
                    assert torch.allclose(a.S, b.S, rtol=1e-10, atol=1e-14 * float(a.S.max()))


def test_ekfac_rotates_before_the_product_when_that_is_cheaper():
    """A convolution on small output maps rotates its patches and output gradients (``R d^2`` per row); one on
    large maps with few output channels forms the per-row gradients and rotates them (``out d^2`` per column)."""
    from unlearnkit.influence.kfac import LayerPlan, Treatment, _order

    def order(conv, hw, k):
        plan = LayerPlan("c", "Conv2d", ["c.weight", "c.bias"], 0, Treatment.EKFAC, module=conv, has_bias=True)
        return _order(plan, [torch.zeros(8, conv.in_channels, hw, hw)], k, True)

    assert order(nn.Conv2d(128, 128, 3, padding=1), 4, 9) == "before"
    assert order(nn.Conv2d(1, 16, 3, padding=1), 28, 9) == "after"


def test_kronecker_factor_float32_sums_cover_at_most_fold_positions(monkeypatch):
    """A Kronecker factor is summed in the model's dtype over at most ``_FOLD`` positions before it is folded into
    float64, whatever the batch size and layout (a convolution's channel-major patches, its output gradients with
    the positions last, a linear layer's rows); the factor is the same."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from unlearnkit.influence import kfac

    class Sums(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.since, self.most = {}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.addmm_.default and args[0].dtype == torch.float32:
                n = args[1].shape[1]
            elif func is torch.ops.aten.addbmm_.default and args[0].dtype == torch.float32:
                n = args[1].shape[0] * args[1].shape[2]
            elif func is torch.ops.aten.zero_.default:
                self.since[args[0].data_ptr()] = 0
                n = None
            else:
                n = None
            if n is not None:
                key = args[0].data_ptr()
                self.since[key] = self.since.get(key, 0) + n
                self.most = max(self.most, self.since[key])
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(kfac, "_FOLD", 8)
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2)
    x = torch.randn(5, 2, 4, 4)
    layouts = {"patches": kfac._conv_patches(conv, x).permute(1, 2, 0),  # channel-major (d, m, R) view
               "positions last": torch.randn(5, 3, 9).transpose(1, 2),
               "rows": torch.randn(5, 3, 4)}
    for name, a in layouts.items():
        gram = kfac._Gram()
        with Sums() as seen:
            for _ in range(3):
                gram.add(a, rows=True)
            got = gram.matrix(a.shape[2], bias=True, device="cpu")
        assert 0 < seen.most <= 8, name
        X = torch.cat([a.reshape(-1, a.shape[2]).double(), torch.ones(a.shape[0] * a.shape[1], 1, dtype=torch.float64)], 1)
        assert torch.allclose(got, 3 * X.T @ X, rtol=1e-5, atol=1e-5), name


def test_ekfac_second_pass_does_not_read_kept_rows_of_a_streamed_set(monkeypatch):
    """A streamed data set's rows kept from the first pass are not read again by the second pass, and the
    eigenvalues equal those of the same rows in memory."""
    from unlearnkit.influence import kfac

    rng = np.random.default_rng(0)
    X = rng.normal(size=(23, 1, 5, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=23)
    reads = []

    class Source(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            reads.append(int(i))
            return torch.from_numpy(X[i]), int(y[i])

    streamed = uk.data.from_torch(Source(), n_classes=3, stream=True, batch_size=5, materialize_bytes=1000)
    torch.manual_seed(0)
    model = uk.wrap(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double(),
                    n_classes=3, l2=0.1)
    reference = uk.curvature.fit(model, uk.Dataset(X, y, n_classes=3), kind="ekfac", batch_size=5, mc_samples=None)
    full = reference.diagnostics["layers"][0]["eigenvalue_correction"]["bytes_kept"]
    uk.curvature.fit(model, streamed, kind="ekfac", batch_size=5, mc_samples=None)  # (reads remembered by the set)
    reads.clear()
    uk.curvature.fit(model, streamed, kind="ekfac", batch_size=5, mc_samples=None)  # every row kept: one pass
    one_pass = collections.Counter(reads)
    reads.clear()
    reads.clear()
    monkeypatch.setattr(kfac, "EKFAC_CACHE_BYTES", full // 2)
    fit = uk.curvature.fit(model, streamed, kind="ekfac", batch_size=5, mc_samples=None)
    kept = fit.diagnostics["layers"][0]["eigenvalue_correction"]["rows_kept_from_first_pass"]
    assert 0 < kept < 23
    assert collections.Counter(reads) - one_pass == collections.Counter(range(kept, 23))  # the other rows, once
    assert one_pass - collections.Counter(reads) == collections.Counter()
    for a, b in zip(reference.blocks, fit.blocks):
        if isinstance(a, KroneckerBlock):
            assert torch.allclose(a.S, b.S, rtol=1e-5, atol=1e-6 * float(a.S.max()))


def test_squares_never_make_subnormal_numbers(mlp_case):
    """EK-FAC's squared rotated gradients: an entry whose float32 square would be subnormal (below ``1.2e-38``,
    where the CPU is slow) counts as zero; every other square is exact, and float64 keeps them all. No
    process-wide floating-point setting is used for this (the fit leaves the thread's settings alone)."""
    from unlearnkit.influence.kfac import _squares

    M = torch.tensor([[1e-20, -1e-20, 2e-19, -3.0, 0.0]])
    tiny = torch.finfo(torch.float32).tiny
    got = _squares(M)
    assert torch.equal(got, torch.tensor([[0.0, 0.0, float(M[0, 2]) ** 2, 9.0, 0.0]]))
    assert bool(((got == 0) | (got >= tiny)).all())
    assert torch.equal(_squares(M.double()), M.double() ** 2)
    model, data = mlp_case
    for kind in ("kfac", "ekfac"):
        uk.curvature.fit(model, data, kind=kind, batch_size=32)
        assert float((torch.tensor([1e-30], dtype=torch.float32) * 1e-10)[0]) > 0  # subnormals not flushed after it
