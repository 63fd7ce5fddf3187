"""The sparse closed forms of logistic regression, head-only updates and the Hessian-rows rule."""

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.data.synthetic import make_classification
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import summed_gradient
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.models import LogisticRegression
from unlearnkit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("classes", [2, 4])
def test_sparse_closed_forms_equal_the_dense_path(classes):
    sparse = make_classification(400, 50, n_classes=classes, sparse=True, density=0.1, seed=3, dtype=np.float64)
    dense = sparse.replace(X=sparse.X.toarray())
    model = LogisticRegression(n_features=50, n_classes=classes, l2=0.5).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    flat = FlatModel(model)
    v = torch.randn(flat.n_params, generator=gen, dtype=torch.float64)
    assert torch.allclose(summed_gradient(flat, sparse), summed_gradient(flat, dense), atol=1e-10)
    assert torch.allclose(HessianOperator(flat, sparse).matvec(v), HessianOperator(flat, dense).matvec(v), atol=1e-10)
    config = TrainConfig(optimizer="lbfgs")
    a = uk.train(LogisticRegression(n_features=50, n_classes=classes, l2=0.5), sparse, config=config)
    b = uk.train(LogisticRegression(n_features=50, n_classes=classes, l2=0.5), dense, config=config)
    assert torch.allclose(FlatModel(a).theta(), FlatModel(b).theta(), atol=1e-6)


@pytest.fixture(scope="module")
def digits_cnn():
    data = uk.data.load("digits:train")
    model = uk.train(uk.models.for_data("cnn", data, channels=(4, 8), hidden=16), data,
                     config=TrainConfig(epochs=3, lr=3e-3, batch_size=64))
    rows = np.arange(0, 300, 10)
    return model, data, uk.Changes.relabel(data.ids[rows], (data.y[rows] + 1) % 10)


def test_head_only_update_changes_only_the_head_and_is_treated_as_convex(digits_cnn):
    model, data, changes = digits_cnn
    # guard=False: the paper's undamped head step (guarded by default, like every convex problem; this model, three
    # epochs from its optimum, is one where the guard refuses the step)
    method = uk.methods.make("second-order", params="head", guard=False)
    settings = method.resolved(model, data, changes)
    assert settings["convex"] and settings["solver"] == "exact" and settings["damping"] == 0.0
    assert settings["n_params"] == sum(p.numel() for p in model.head().parameters())
    new = method.unlearn(model, data, changes).model
    head = {id(p) for p in model.head().parameters()}
    for (name, old), new_p in zip(model.named_parameters(), new.parameters()):
        same = torch.equal(old, new_p)
        assert same != (id(old) in head), name
        assert new_p.requires_grad
    # the head's objective is convex and the step is Newton's for the change: the gradient the change added,
    # G = grad L(theta*; D~) - grad L(theta*; D), is mostly removed (one Newton step on a non-quadratic loss;
    # the model's own residual on D is left as it was)
    corrected = changes.apply(data)
    names = [n for n, p in model.named_parameters() if id(p) in head]

    def head_gradient(m, d):
        flat = FlatModel(m, names)
        return summed_gradient(flat, d) + flat.reg_gradient(flat.theta())

    before = head_gradient(model, data)
    G = head_gradient(model, corrected) - before
    left = head_gradient(new, corrected) - before
    assert float(torch.linalg.vector_norm(left)) < 0.25 * float(torch.linalg.vector_norm(G))
    first = uk.methods.make("first-order", params="head", guard=False).unlearn(model, data, changes).model
    assert torch.equal(first.features[0].weight, model.features[0].weight)
    assert not torch.equal(first.head().weight, model.head().weight)


def test_hessian_rows_rule(digits_cnn):
    model, data, changes = digits_cnn
    deep = uk.methods.make("second-order").resolved(model, data, changes)
    assert deep["hessian_rows"] == min(len(data), 1024)
    assert uk.methods.make("second-order", hessian_rows=None).resolved(model, data, changes)["hessian_rows"] is None
    logreg = uk.train(LogisticRegression(n_features=64, n_classes=10, l2=1.0), data)
    assert uk.methods.make("second-order").resolved(logreg, data, changes)["hessian_rows"] is None
    with pytest.raises(uk.errors.MethodError, match="hessian_rows"):
        uk.methods.make("second-order", hessian_rows=0).resolved(model, data, changes)
    with pytest.raises(uk.errors.MethodError, match="'params' = 'body' is outside its registered range"):
        uk.methods.make("second-order", params="body")  # refused by the registry, before any work


def test_exact_solver_pseudo_inverse_on_a_semidefinite_hessian():
    """A softmax output layer's Hessian is singular along a shift of every logit; with
    singular='pinv' the exact solver returns the minimum-norm solution instead of failing."""
    import torch

    from unlearnkit.errors import SolverError
    from unlearnkit.influence.solvers import Exact

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    M = A @ A.T  # rank 4 of 6: positive semi-definite

    class Dense:
        n_params = 6

        def dense(self):
            return M

    v = M @ torch.randn(6, generator=gen, dtype=torch.float64)  # in the range of M
    with pytest.raises(SolverError, match="not positive definite"):
        Exact().solve(Dense(), v)
    x, report = Exact(singular="pinv").solve(Dense(), v)
    assert torch.allclose(x, torch.linalg.pinv(M) @ v, atol=1e-10)
    assert report.residual < 1e-10 and report.details["rank"] == 4 and report.details["pseudo_inverse"]
    indefinite = torch.diag(torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64))

    class Bad:
        n_params = 3

        def dense(self):
            return indefinite

    with pytest.raises(SolverError, match="negative eigenvalues"):
        Exact(singular="pinv").solve(Bad(), torch.ones(3, dtype=torch.float64))
