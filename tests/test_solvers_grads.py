"""Inverse-HVP solvers against the exact solve; vmap per-sample gradients against a loop."""

import numpy as np
import pytest
import torch

from unlearnkit import SolverError
from unlearnkit.influence import (
    ConjugateGradient,
    Exact,
    FlatModel,
    HessianOperator,
    LiSSA,
    per_sample_gradients,
    summed_gradient,
)


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def rhs(flat, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(flat.n_params, generator=gen, dtype=flat.dtype)


def test_dense_hessian_matches_closed_form_for_binary_logistic_regression(multiclass_small, binary_10k):
    data, model = binary_10k
    flat = FlatModel(model)
    X = torch.as_tensor(data.X)
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # params are (w, b)
    p = torch.sigmoid(Xb @ flat.theta())
    closed = Xb.T @ (Xb * (p * (1 - p))[:, None]) + model.l2 * torch.eye(Xb.shape[1], dtype=X.dtype)
    H = HessianOperator(flat, data).dense()
    assert rel(H, closed) < 1e-10
    v = rhs(flat)
    assert rel(HessianOperator(flat, data, batch_size=333).matvec(v), closed @ v) < 1e-10


def test_closed_form_hessian_matches_torch_func_for_multinomial(multiclass_small):
    from torch.func import hessian

    data, model = multiclass_small
    flat = FlatModel(model)
    X, y = data.tensors(dtype=flat.dtype)
    generic = hessian(flat.loss_sum)(flat.theta(), X, y)
    closed = model.loss_hessian(flat.theta(), X, y)
    assert rel(closed, generic) < 1e-10


def test_cg_agrees_with_cholesky_on_logistic_regression(multiclass_small):
    data, model = multiclass_small
    flat = FlatModel(model)
    H = HessianOperator(flat, data)
    v = rhs(flat)
    exact, rep_exact = Exact().solve(H, v)
    cg, rep = ConjugateGradient(tol=1e-10).solve(H, v)
    assert rep.converged and rep.residual < 1e-9 and rep.iterations <= flat.n_params + 2
    assert rel(cg, exact) < 1e-4
    assert rep_exact.residual < 1e-10


def test_lissa_agrees_with_cholesky_on_logistic_regression(multiclass_small):
    """Full-batch LiSSA converges to the exact solve (stated tolerance 1e-4 relative);
    mini-batch LiSSA is a stochastic estimate (stated tolerance 0.1 relative)."""
    data, model = multiclass_small
    flat = FlatModel(model)
    H = HessianOperator(flat, data)
    v = rhs(flat)
    exact, _ = Exact().solve(H, v)
    full, rep = LiSSA(depth=3000, tol=1e-12).solve(H, v)
    assert rel(full, exact) < 1e-4, rep
    assert rep.details["scale"] > 0
    mini, rep_mini = LiSSA(depth=1500, batch_size=300, repeats=4, seed=1).solve(H, v)
    assert rel(mini, exact) < 0.1


def test_lissa_reports_divergence_for_a_too_small_scale(multiclass_small):
    data, model = multiclass_small
    flat = FlatModel(model)
    H = HessianOperator(flat, data)
    with pytest.raises(SolverError, match="diverged"):
        LiSSA(scale=1e-3, depth=500).solve(H, rhs(flat))


def test_cg_matches_dense_solve_on_tiny_mlp(tiny_mlp):
    data, model = tiny_mlp
    flat = FlatModel(model)
    H = HessianOperator(flat, data)
    dense = H.dense()
    damping = max(0.0, -float(torch.linalg.eigvalsh(dense)[0])) + 1.0
    v = rhs(flat)
    want = torch.linalg.solve(dense + damping * torch.eye(flat.n_params, dtype=dense.dtype), v)
    got, rep = ConjugateGradient(damping=damping, tol=1e-10, max_iter=500).solve(H, v)
    assert rep.converged
    assert rel(got, want) < 1e-6
    # dense Hessian agrees with Hessian-vector products
    assert rel(dense @ v, H.matvec(v)) < 1e-8


def test_exact_refuses_too_many_parameters(binary_10k):
    data, model = binary_10k
    H = HessianOperator(FlatModel(model), data)
    with pytest.raises(SolverError, match="max_params"):
        Exact(max_params=5).solve(H, rhs(FlatModel(model)))


def test_cg_raises_on_indefinite_hessian(tiny_mlp):
    data, model = tiny_mlp
    flat = FlatModel(model)
    H = HessianOperator(flat, data)
    eig = torch.linalg.eigvalsh(H.dense())
    # a (negative) damping halfway between the extreme eigenvalues makes H + damping I indefinite
    midpoint = -0.5 * float(eig[0] + eig[-1])
    with pytest.raises(SolverError, match="curvature"):
        ConjugateGradient(damping=midpoint, max_iter=500).solve(H, rhs(flat))


def test_per_sample_gradients_equal_a_loop(tiny_mlp, multiclass_small):
    for data, model in (tiny_mlp, multiclass_small):
        flat = FlatModel(model)
        sub = data.subset(np.arange(37))
        G = per_sample_gradients(flat, sub, batch_size=8)
        X, y = sub.tensors(dtype=flat.dtype)
        for i in range(len(sub)):
            model.zero_grad()
            loss = model.per_sample_loss(model(X[i:i + 1]), y[i:i + 1]).sum()
            grads = torch.autograd.grad(loss, [p for p in model.parameters()])
            loop = torch.cat([g.reshape(-1) for g in grads])
            assert torch.allclose(G[i], loop, atol=1e-12, rtol=1e-9)
        assert torch.allclose(G.sum(0), summed_gradient(flat, sub, batch_size=5), atol=1e-10)


def test_ggn_equals_hessian_for_logistic_regression_and_is_psd_for_mlp(multiclass_small, tiny_mlp):
    data, model = multiclass_small
    flat = FlatModel(model)
    v = rhs(flat)
    hv = HessianOperator(flat, data).matvec(v)
    gv = HessianOperator(flat, data, curvature="ggn").matvec(v)
    assert rel(gv, hv) < 1e-10
    data, model = tiny_mlp
    ggn = HessianOperator(FlatModel(model), data, curvature="ggn").dense()
    assert float(torch.linalg.eigvalsh(ggn)[0]) > 0  # PSD part + l2 I


def test_subsampled_hessian_is_unbiased_and_close(binary_10k):
    from unlearnkit import Changes, retrain
    from unlearnkit.influence import second_order_update

    data, model = binary_10k
    changes = Changes.relabel(data.ids[:20], 1 - data.y[:20])
    ref = FlatModel(retrain(model, data, changes)).theta()
    full = FlatModel(second_order_update(model, data, changes).model).theta()
    sub = second_order_update(model, data, changes, hessian_rows=2000)
    assert sub.diagnostics["hessian_rows"] == 2000
    sub_theta = FlatModel(sub.model).theta()
    orig = FlatModel(model).theta()
    # 20% of the rows estimate H well: far closer to retraining than the original model
    assert rel(sub_theta, ref) < 0.2 * rel(orig, ref)
    assert rel(full, ref) <= rel(sub_theta, ref)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_summed_gradient_of_logistic_regression_equals_autodiff(n_classes, fit_intercept, dtype):
    from torch.func import grad

    import unlearnkit as uk
    from unlearnkit.models import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 7)) * 3
    y = rng.integers(0, n_classes, 300)
    y[:n_classes] = np.arange(n_classes)
    data = uk.Dataset(X, y, n_classes=n_classes)
    model = LogisticRegression(n_features=7, n_classes=n_classes, l2=0.5, fit_intercept=fit_intercept).to(dtype)
    flat = FlatModel(model)
    theta = torch.as_tensor(rng.normal(size=flat.n_params) * 2, dtype=dtype)  # large logits: the stable residual matters
    auto = sum(grad(flat.loss_sum)(theta, xb, yb) for xb, yb in data.batches(64, dtype=dtype))
    closed = summed_gradient(flat, data, theta, batch_size=64)
    torch.testing.assert_close(closed, auto, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-4 if dtype == torch.float32 else 1e-10)


def test_a_subclass_with_its_own_loss_is_not_given_the_closed_form_gradient():
    from torch.func import grad

    import unlearnkit as uk
    from unlearnkit.models import LogisticRegression

    class Doubled(LogisticRegression):
        def per_sample_loss(self, logits, y):
            return 2.0 * super().per_sample_loss(logits, y)

    rng = np.random.default_rng(0)
    data = uk.Dataset(rng.normal(size=(50, 3)), rng.integers(0, 2, 50))
    flat = FlatModel(Doubled(n_features=3, l2=1.0).double())
    theta = torch.as_tensor(rng.normal(size=flat.n_params))
    auto = sum(grad(flat.loss_sum)(theta, xb, yb) for xb, yb in data.batches(64, dtype=torch.float64))
    torch.testing.assert_close(summed_gradient(flat, data, theta), auto)
