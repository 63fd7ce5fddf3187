"""Influence engine: per-sample gradients, Hessian-vector products, inverse-HVP solvers and the
first- and second-order unlearning updates."""

from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import (
    gradient_residual,
    objective_gradient,
    per_sample_gradients,
    summed_gradient,
)
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.solvers import ConjugateGradient, Exact, LiSSA, SolverKind, SolverReport, make_solver
from unlearnkit.influence.updates import (
    UnlearnResult,
    first_order_update,
    gradient_difference,
    iterative_update,
    second_order_update,
    split_changes,
)

__all__ = [
    "ConjugateGradient", "Exact", "FlatModel", "HessianOperator", "LiSSA", "SolverKind", "SolverReport",
    "UnlearnResult", "first_order_update", "gradient_difference", "gradient_residual", "iterative_update",
    "make_solver", "objective_gradient", "per_sample_gradients", "second_order_update", "split_changes",
    "summed_gradient",
]
