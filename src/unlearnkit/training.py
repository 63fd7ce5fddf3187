"""Deterministic training, and retraining from scratch: the gold standard of unlearning.

Every model minimises the objective of :mod:`unlearnkit.models.base`,
``L(theta; D) = sum_i l_i + (l2 / 2)||theta||^2``. Optimisers work on ``L / n`` (same
minimiser, scale-free step sizes):

* ``newton`` (default for convex models up to ``NEWTON_MAX_PARAMS`` parameters): Newton's
  method with the exact Hessian (Cholesky) and backtracking line search, from zero; converges
  to machine precision in a few iterations whatever the feature scaling, stopped when
  ``max |grad(L / n)| <= tol``.
* ``lbfgs`` (default for larger convex models): full-batch L-BFGS with strong-Wolfe line search,
  gradients accumulated over row blocks of ``batch_size`` (memory stays bounded), stopped when
  ``max |grad(L / n)| <= tol``.
* ``adam`` / ``sgd`` (default ``adam`` for deep models): mini-batches of ``batch_size``
  shuffled by a seeded generator; each step minimises ``mean_batch l + l2 / (2n) ||theta||^2``.

A seed fixes the initial parameters and the shuffling, so the same call twice gives the same
model (on the same device and thread count).
"""

from __future__ import annotations

import copy
import enum
import logging
import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from unlearnkit import timing
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel, evaluation

log = logging.getLogger(__name__)

NEWTON_MAX_PARAMS = 2000
"""Convex models up to this many parameters train with Newton's method by default."""

MAX_EPOCHS = 100_000
"""Most training epochs :class:`TrainConfig` (and the benchmark's recipes) accept: beyond this a
training run never ends in practice."""

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``, called as training advances."""


class Optimizer(str, enum.Enum):
    NEWTON = "newton"
    LBFGS = "lbfgs"
    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Stored with the model so that retraining repeats it exactly.

    Parameters
    ----------
    optimizer: ``newton``, ``lbfgs``, ``adam`` or ``sgd``; ``None`` picks ``newton`` for convex
        models with at most ``NEWTON_MAX_PARAMS`` parameters, ``lbfgs`` for larger convex
        models and ``adam`` otherwise.
    epochs: passes over the data (``adam``/``sgd``).
    lr: learning rate (``adam``/``sgd``; L-BFGS uses 1 with line search).
    momentum: for ``sgd``.
    batch_size: mini-batch size, and the row block size for full-batch gradients.
    tol: Newton and L-BFGS stop when ``max |grad(L / n)| <= tol``.
    max_iter: Newton / L-BFGS iteration cap.
    seed: initial parameters and shuffling.
    dtype: ``float64`` (default for convex models) or ``float32``; by default a model made by
        :func:`unlearnkit.wrap` trains in the dtype of its module's parameters.
    """

    optimizer: Optimizer | None = None
    epochs: int = 10
    lr: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 256
    tol: float = 1e-10
    max_iter: int = 2000
    seed: int = 0
    dtype: str | None = None

    def __post_init__(self) -> None:
        def integer(name: str, low: int, high: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ModelError(f"TrainConfig.{name} must be an integer, got {v!r}.")
            if v < low or (high is not None and v > high):
                bound = f">= {low:,}" if high is None else f"between {low:,} and {high:,}"
                raise ModelError(f"TrainConfig.{name} must be {bound}, got {v}.")

        def real(name: str, *, positive: bool) -> None:
            v = getattr(self, name)
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 if positive else v >= 0)
            if not ok:
                raise ModelError(f"TrainConfig.{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}.")

        integer("epochs", 0, MAX_EPOCHS)
        integer("batch_size", 1)
        integer("max_iter", 1)
        real("lr", positive=True)
        real("momentum", positive=False)
        real("tol", positive=False)

    def resolved(self, model: UnlearnableModel) -> "TrainConfig":
        """Fill the model-dependent defaults (optimizer, dtype)."""
        if self.optimizer is not None:
            opt = Optimizer(self.optimizer)
        elif not model.convex:
            opt = Optimizer.ADAM
        else:
            n_params = sum(p.numel() for p in model.parameters())
            opt = Optimizer.NEWTON if n_params <= NEWTON_MAX_PARAMS else Optimizer.LBFGS
        if self.dtype is None and model.kind == "wrapped":  # a user's module trains in its own precision
            dtype = str(model_dtype(model)).removeprefix("torch.")
            if dtype not in ("float32", "float64"):
                raise ModelError(f"The wrapped module's parameters are {dtype}; unlearnkit trains in float32 or float64. "
                                 "Build the module in one of them, or pass TrainConfig(dtype='float32') (the trained "
                                 "model then has that dtype).")
        else:
            dtype = self.dtype or ("float64" if model.convex else "float32")
        if dtype not in ("float32", "float64"):
            raise ModelError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
        if self.batch_size < 1 or self.epochs < 0 or self.max_iter < 1:
            raise ModelError("batch_size and max_iter must be >= 1 and epochs >= 0.")
        return replace(self, optimizer=opt, dtype=dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optimizer"] = None if self.optimizer is None else Optimizer(self.optimizer).value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if d.get("optimizer") is not None:
            d["optimizer"] = Optimizer(d["optimizer"])
        return cls(**d)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train(
    model: UnlearnableModel,
    data: Dataset,
    *,
    config: TrainConfig | None = None,
    train_fn=None,
    device=None,
    init_from: UnlearnableModel | None = None,
    progress: Progress | None = None,
) -> UnlearnableModel:
    """Train a copy of ``model`` on ``data`` and return it (``model`` is not modified).

    The copy is re-initialised from ``config.seed`` unless ``init_from`` gives starting
    parameters (warm start). The returned model carries ``train_config`` (the resolved
    config) so :func:`retrain` can repeat the procedure, and ``train_seconds`` (wall time of
    the optimisation, the retraining cost that run-time efficiency divides by).

    ``train_fn(module, data)`` trains with the user's own loop instead of a config: it receives
    the plain ``nn.Module`` of a re-initialised copy (for a model made by
    :func:`unlearnkit.wrap`, the user's module class) and the :class:`~unlearnkit.Dataset`, and
    trains the module in place (see :mod:`unlearnkit.user_training`); the result carries
    ``train_fn`` so :func:`retrain` repeats it. Without ``config`` or ``train_fn`` the model's
    own recipe is used (its ``train_fn``, else its ``train_config``, else ``TrainConfig()``).
    """
    from unlearnkit.user_training import train_with_fn

    _check_model(model)
    if config is not None and train_fn is not None:
        raise ModelError("Pass either config= (unlearnkit's training loop) or train_fn= (your own loop), not both.")
    if config is None and train_fn is None and getattr(model, "train_fn", None) is not None:
        train_fn = model.train_fn
    if train_fn is not None:
        return train_with_fn(model, data, train_fn, seed=int(getattr(model, "train_seed", 0) or 0), device=device,
                             init_from=init_from)
    if len(data) == 0:
        raise ModelError(f"Cannot train on {data.name}: it has no rows.")
    model.check_data(data)
    config = (config or getattr(model, "train_config", None) or TrainConfig()).resolved(getattr(model, "member_template", model))
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch_dtype(config.dtype)
    net = copy.deepcopy(model).to(device=device, dtype=dtype)
    for attr in ("train_fn", "train_seed"):  # trained by unlearnkit's loop now, not the user's
        net.__dict__.pop(attr, None)
    if init_from is not None:
        net.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in init_from.state_dict().items()})
    else:
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        cpu_net = net.to("cpu")
        cpu_net.init_parameters(gen)
        net = cpu_net.to(device)
    start = timing.start()
    if hasattr(net, "fit_members"):  # a sharded ensemble trains each member on its own shard
        net.fit_members(data, config, device, progress)
    elif config.optimizer is Optimizer.NEWTON:
        _fit_newton(net, data, config, progress)
    elif config.optimizer is Optimizer.LBFGS:
        _fit_lbfgs(net, data, config, device, dtype, progress)
    else:
        _fit_minibatch(net, data, config, device, dtype, progress)
    net.train_config = config
    net.train_seconds = timing.since(start)
    log.debug("trained %s on %s in %.3fs", net.kind, data.name, net.train_seconds)
    return net


def retrain(
    model: UnlearnableModel,
    data: Dataset,
    changes: Changes | None = None,
    *,
    train_fn=None,
    device=None,
    warm_start: bool = False,
    progress: Progress | None = None,
) -> UnlearnableModel:
    """Retrain ``model``'s architecture from scratch on the corrected data ``changes.apply(data)``.

    Uses the model's own ``train_config`` (same seed, so the same initialisation), which makes
    it the reference every unlearning method is compared with. ``warm_start=True`` starts from
    ``model``'s parameters instead: the honest strong baseline for convex models.

    ``train_fn(module, data)`` retrains with the user's own loop: a fresh copy of the model
    (:meth:`~unlearnkit.models.base.UnlearnableModel.fresh`, re-initialised; the user's module
    is never touched) hands its plain ``nn.Module`` and the corrected
    :class:`~unlearnkit.Dataset` to the loop, which trains the module in place (or returns it);
    the result is a model with the same objective and adapter (see
    :mod:`unlearnkit.user_training`). A model trained with a ``train_fn`` is retrained with it
    when none is passed; ``train_fn`` takes precedence over the model's ``train_config``.

    The retrained model minimises the same objective as ``model``: besides the architecture
    (and with it the per-parameter L2 weights), the linear term ``b . theta`` of a loss-perturbed
    (certified) model is kept, so the reference of a certified model is the minimiser of
    ``L_b(.; D~)`` with the *same* ``b`` — the point a second-order update approximates.
    """
    _check_model(model)
    corrected = changes.apply(data) if changes is not None else data
    train_fn = train_fn if train_fn is not None else getattr(model, "train_fn", None)
    if train_fn is not None:
        from unlearnkit.user_training import train_with_fn

        if model.linear_term() is not None:
            raise ModelError(f"The {model.kind} model's objective has a linear term b . theta (a loss perturbation) "
                             "that a train_fn does not minimise; retrain it with its train_config instead.")
        return train_with_fn(model, corrected, train_fn, seed=int(getattr(model, "train_seed", 0) or 0),
                             device=device, init_from=model if warm_start else None)
    config = getattr(model, "train_config", None)
    if config is None:
        raise ModelError(f"The {model.kind} model carries no train_config, so unlearnkit does not know how it was "
                         "trained. Pass your own training loop, retrain(model, data, changes, train_fn=fn) with "
                         "fn(module, data) training the module in place, or train the model with "
                         "unlearnkit.train(model, data, config=TrainConfig(...)) first.")
    fresh = model.fresh().to(dtype=model_dtype(model))  # b keeps its precision
    _copy_linear_term(model, fresh)
    device = device if device is not None else model_device(model)
    return train(fresh, corrected, config=config, device=device, init_from=model if warm_start else None, progress=progress)


def _check_model(model) -> None:
    """Refuse what is not an unlearnkit model (a plain ``nn.Module`` is wrapped with :func:`unlearnkit.wrap`)."""
    if isinstance(model, UnlearnableModel):
        return
    if isinstance(model, torch.nn.Module):
        raise ModelError(f"model is a plain {type(model).__name__}; make it an unlearnkit model with "
                         "unlearnkit.wrap(module) (it is not copied or changed), then train or retrain the wrapped model.")
    raise ModelError(f"model must be an unlearnkit model (a model of unlearnkit.models, or unlearnkit.wrap(module) for "
                     f"a torch.nn.Module), got {type(model).__name__}.")


def _copy_linear_term(source: UnlearnableModel, target: UnlearnableModel) -> None:
    """Give ``target`` the objective's linear term ``b`` of ``source`` (a loss perturbation).

    The architecture rebuilt from ``source.config`` has a zero ``b``; retraining with it would
    minimise a different objective. Raises :class:`ModelError` when ``target`` cannot hold it.
    """
    b = source.linear_term()
    if b is None:
        return
    slot = target.linear_term()
    if slot is None or tuple(slot.shape) != tuple(b.shape):
        raise ModelError(
            f"The {source.kind} model's objective has a linear term b . theta (a loss perturbation) that the rebuilt "
            "architecture cannot hold, so retraining would minimise a different objective; retrain it with "
            "warm_start=True or rebuild the model with its perturbation."
        )
    with torch.no_grad():
        slot.copy_(b.detach().to(dtype=slot.dtype, device=slot.device))


# ---------------------------------------------------------------------------- optimisers
def _fit_newton(net, data, config, progress) -> None:
    from unlearnkit.influence.functional import FlatModel
    from unlearnkit.influence.gradients import objective_gradient, objective_value
    from unlearnkit.influence.hessian import HessianOperator

    n = len(data)
    flat = FlatModel(net)
    theta = flat.theta()
    block = max(config.batch_size, 4096)

    def value(t: torch.Tensor) -> float:
        return objective_value(flat, data, t, batch_size=block) / n

    # a declared flat direction (the common shift of a softmax model's unpenalised intercepts): the
    # minimiser is unique only up to it, so fix the gauge: the steps are solved with H + s N N^T,
    # which keeps them orthogonal to N (the gradients are), and training starts from zero, so the
    # result is the minimum-norm minimiser (intercepts summing to zero)
    null = net.null_space() if callable(getattr(net, "null_space", None)) else None
    if null is not None and null.shape[0] != theta.numel():
        null = None
    f = value(theta)
    for it in range(config.max_iter):
        g = objective_gradient(flat, data, theta, batch_size=block) / n
        if float(g.abs().max()) <= config.tol:
            break
        H = HessianOperator(flat, data, theta, batch_size=block).dense() / n
        if null is not None:
            H = H + (float(torch.diagonal(H).mean()) or 1.0) * (null @ null.T)
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) != 0:
            raise ModelError(_not_positive_definite(net))
        step = torch.cholesky_solve(g.unsqueeze(1), L).squeeze(1)
        decrease = float(g @ step)
        if decrease <= 1e-28:  # Newton decrement at machine precision: nothing left to gain
            break
        if decrease <= 1e-13 * abs(f):
            # the objective cannot resolve this step in float64 (its decrease is at the rounding level of
            # f), so a line search would reject it at random; near the optimum the full step is safe
            theta = theta - step
            f = value(theta)
            continue
        t = 1.0
        for _ in range(40):
            f_new = value(theta - t * step)
            if f_new <= f - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            break  # no decrease even for tiny steps: at the precision floor
        theta, f = theta - t * step, f_new
        if progress is not None:
            progress(it + 1, config.max_iter, f"Newton step {it + 1}")
    else:
        log.warning("Newton stopped after max_iter=%d iterations with max |grad(L/n)| = %.3g > tol %.3g.",
                    config.max_iter, float(g.abs().max()), config.tol)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, value_ in flat.unflatten(theta).items():
            params[name].copy_(value_)


def _not_positive_definite(net) -> str:
    """Why Newton's Hessian was not positive definite, with the fix."""
    l2 = getattr(net, "l2", 0.0)
    if not l2 > 0:
        return ("Newton's method met a Hessian that is not positive definite: with l2 = 0 the objective is not strongly "
                "convex (flat along some direction). Set l2 > 0 or use optimizer='lbfgs'.")
    unpenalised = getattr(net, "fit_intercept", False) and not getattr(net, "penalize_intercept", True)
    return (f"Newton's method met a Hessian that is numerically singular although l2 = {l2:g} > 0"
            + (": the unpenalised intercept is constrained by the data alone, and where the predicted probabilities "
               "saturate (huge margins, e.g. separable data) its curvature underflows. Penalise the intercept "
               "(penalize_intercept=True), rescale the features, raise l2, or use optimizer='lbfgs'." if unpenalised else
               ": features on very different scales or huge margins make it singular in floating point. Rescale the "
               "features, raise l2, or use optimizer='lbfgs'."))


def _fit_lbfgs(net, data, config, device, dtype, progress) -> None:
    n = len(data)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=config.max_iter, tolerance_grad=config.tol, tolerance_change=1e-20,
        history_size=20, line_search_fn="strong_wolfe",
    )
    evals = [0]
    from unlearnkit.models.linear import SparseRows, sparse_path

    sparse = SparseRows(data, dtype=dtype, device=device) if sparse_path(net, data) else None  # CSR: one sparse product
    y_all = torch.as_tensor(data.y, device=device)

    def closure():
        opt.zero_grad(set_to_none=False)
        total = torch.zeros((), dtype=dtype, device=device)
        if sparse is not None:
            logits = net.sparse_logits(sparse, net.linear.weight, net.linear.bias)
            loss = net.per_sample_loss(logits.squeeze(-1) if net.n_classes == 2 else logits, y_all).sum() / n
            loss.backward()
            total = total + loss.detach()
        for xb, yb in ([] if sparse is not None else
                       data.batches(config.batch_size if n > config.batch_size * 4 else n, device=device, dtype=dtype)):
            loss = net.per_sample_loss(net(xb), yb).sum() / n
            loss.backward()
            total = total + loss.detach()
        reg = net.regularizer() / n
        reg.backward()
        evals[0] += 1
        if progress is not None and evals[0] % 10 == 0:
            progress(min(evals[0], config.max_iter), config.max_iter, f"L-BFGS step {evals[0]}")
        return total + reg.detach()

    opt.step(closure)
    grad_max = max(float(p.grad.abs().max()) for p in params)
    if grad_max > config.tol * 100:
        log.warning(
            "L-BFGS stopped with max |grad(L/n)| = %.3g > tol %.3g after %d evaluations; "
            "raise max_iter for a tighter optimum.", grad_max, config.tol, evals[0],
        )
    if progress is not None:
        progress(config.max_iter, config.max_iter, "L-BFGS done")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of ``batch_size`` rows; a trailing single row joins the batch before it.

    Batch normalisation cannot train on a batch of one row (one value per channel), so a set of
    ``k * batch_size + 1`` rows gives ``k`` batches, the last of ``batch_size + 1`` rows.
    """
    bounds = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _fit_minibatch(net, data, config, device, dtype, progress) -> None:
    n = len(data)
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer is Optimizer.ADAM:
        opt = torch.optim.Adam(params, lr=config.lr)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 1)
    # in memory: one tensor, indexed per batch; CSR: each batch densified on its own; streamed: each epoch's
    # shuffled batches read by one loader (its workers prefetch), never the whole set at once
    streamed = getattr(data, "streaming", False)
    X_all, y_all = data.tensors(dtype=dtype) if not (data.is_sparse or streamed) else (None, None)
    steps_per_epoch = len(batch_bounds(n, config.batch_size))
    total = config.epochs * steps_per_epoch
    step = 0
    net.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        reads = data.read_batches([order[a:b].numpy() for a, b in batch_bounds(n, config.batch_size)]) if streamed else None
        for start, stop in batch_bounds(n, config.batch_size):
            idx = order[start:stop]
            if X_all is not None:
                xb, yb = X_all[idx].to(device), y_all[idx].to(device)
            elif reads is not None:
                xb, yb = next(reads).to(device=device, dtype=dtype), torch.as_tensor(data.y[idx.numpy()], device=device)
            else:
                sub = data.subset(idx.numpy())
                xb, yb = sub.tensors(device=device, dtype=dtype)
            opt.zero_grad(set_to_none=True)
            loss = net.per_sample_loss(net(xb), yb).mean()
            loss = loss + net.regularizer() / n
            loss.backward()
            opt.step()
            step += 1
        if progress is not None:
            progress(step, total, f"epoch {epoch + 1}/{config.epochs}")
        if not torch.isfinite(loss):
            raise ModelError(f"Training diverged (loss {float(loss)}) in epoch {epoch + 1}; lower the learning rate.")
    net.eval()


# ---------------------------------------------------------------------------- evaluation
def predict(model: UnlearnableModel, data: Dataset, *, batch_size: int = 4096, device=None) -> np.ndarray:
    """Predicted class of every row of ``data``."""
    device = device or model_device(model)
    out = []
    with evaluation(model), torch.no_grad():  # Dropout off, batch norm on its statistics; modes restored after
        for xb, _ in data.batches(batch_size, device=device, dtype=model_dtype(model)):
            out.append(model.predict(model(xb)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: UnlearnableModel, data: Dataset, *, batch_size: int = 4096, device=None) -> float:
    """Fraction of rows of ``data`` the model classifies correctly."""
    if len(data) == 0:
        return float("nan")
    return float(np.mean(predict(model, data, batch_size=batch_size, device=device) == data.y))
