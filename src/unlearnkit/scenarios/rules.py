"""How each strategy's hyperparameters are chosen: fixed rules computed from the data, never tuned per run.

* **first-order** — ``tau = G.G / G.H~G``, the exact minimiser of the local quadratic model of the
  corrected objective along ``-G`` (``H~`` the Hessian for convex models, the Gauss-Newton matrix
  otherwise); one Hessian-vector product.
* **second-order** — convex models: the exact Hessian of the corrected objective, solved by
  Cholesky (CG to 1e-8 above 5,000 parameters), no damping (L2 makes it strongly convex). Deep
  models: CG on the Gauss-Newton matrix estimated on ``max(1024, |Z|)`` rows, damping ``1e-3 x``
  its largest eigenvalue (20 power iterations), at most 50 iterations — see
  :class:`unlearnkit.methods.influence.SecondOrder`. What was chosen is recorded in each row.
  These rows are the paper's update as published: the trust-region guard that
  :func:`unlearnkit.unlearn` applies to deep models by default is switched off (``guard=False``).
* **second-order [cached]** — the amortised second-order update (convex models): the curvature is fitted
  once per model with :func:`unlearnkit.curvature.fit` (``kind="exact"``: the Cholesky factor of the
  Hessian of the training objective, which each request updates by Woodbury for the rows it touches) and
  reused by every request, as :func:`unlearnkit.unlearn` does with ``curvature=``; unguarded like the
  one-shot row, so both give the same parameters. Its seconds are the request's alone; the fit's seconds
  are reported per model, and fit plus request as the one-shot cost. Not run above 8,192 parameters (a
  dense factor over 512 MiB), where the one-shot update's conjugate gradients keep nothing to amortise.
* **second-order [kfac]**, **second-order [ekfac]** — the amortised second-order update of a network: a
  Kronecker-factored approximation of the Gauss-Newton matrix of the training objective (K-FAC, Martens &
  Grosse 2015; EK-FAC, George et al. 2018) is fitted once per model with :func:`unlearnkit.curvature.fit`
  (``kind="kfac"`` / ``"ekfac"``, on the training data at the trained parameters) and reused by every
  request. Every ``nn.Linear`` and ``nn.Conv2d`` is factored (the char-LSTM's gates are linear layers
  applied at every position, factored over the positions); other layers (the char-LSTM's embedding) get
  their exact Gauss-Newton block up to 2,000 parameters, else its diagonal; each row's rule names the
  treatment of every layer. Damping: ``1e-3 x`` the largest eigenvalue of the fitted curvature itself
  (20 power iterations on its own products: no pass over the data), the same relative rule as the
  one-shot row's, so both rows damp by the same share of their curvature's scale. The block-diagonal
  approximation drops the cross-layer blocks, so its largest eigenvalue (that of its largest block) lies
  between ``1/L`` and 1 times the full Gauss-Newton matrix's for ``L`` blocks, and the damping with it:
  on the tiny problems (seed 0) 0.45-0.55 times the one-shot row's for the CNN, 0.3-0.35 times for the
  char-LSTM. The approximation, not the damping, limits these rows on the small CNN: on digits with 30 %
  targeted flips (seed 0; 76.4 % test accuracy, 83.3 % retrained) the exact Gauss-Newton matrix cached with
  this rule (``kind="exact"``, 1,034 parameters) gives 80.9 %, as the one-shot row does, while K-FAC gives
  58.8 % and EK-FAC 55.9 %, and 73-75 % with 10 or 100 times the damping. Unguarded, like the one-shot row:
  the paper's update with a cached curvature.
* **second-order-it [kfac, guarded]**, **second-order-it [ekfac, guarded]** — the same cached curvature
  in the iterative update (``chunks`` as below; the curvature is not refitted between chunks), with the
  trust-region guard on: each chunk's damping is raised (x10, six tries, then ten halvings of the best
  step) until the step lowers an estimate of the corrected objective (``Z~`` plus 4,096 sampled rows)
  without raising the rest of it by more than it gains; a chunk whose step passes no try is merged into
  the next, and the original parameters come back when the chunks
  together do not improve the estimate. On requests that only relabel rows (label poisoning) the guard
  also refuses a step that misclassifies more of the held-out validation rows (``Problem.val``, disjoint
  from training and test) than the original model.
* **iterative variants** (``-it``) — the same updates applied in ``chunks`` groups of affected
  rows, recomputing ``G`` and ``H`` in between, with ``chunks = clip(ceil(|Z| / (0.01 n)), 2, 10)``:
  each step touches at most about 1 % of the training rows, and at most ten steps are taken (the
  reference code's ``steps = 10``).
* **fine-tuning** — one epoch of SGD on the corrected data (the paper's baseline), batch size
  as in training, no momentum, weight decay ``l2 / n`` (so SGD minimises exactly the training
  objective divided by ``n``) and learning rate ``1 / lambda_max`` of that objective's curvature
  (the largest stable gradient-descent step), estimated by 20 power iterations on 1,024 rows; the
  estimate's time is charged to fine-tuning.
* **SISA** — 5 shards (the paper's run-time setting), members trained like the model itself.
"""

from __future__ import annotations

import math

from unlearnkit import timing
from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.influence.updates import hessian_sample
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.scenarios.compare import Strategy

SISA_SHARDS = 5
FINE_TUNE_ROWS = 1024
MAX_CHUNKS = 10
CHUNK_FRACTION = 0.01


def iterative_chunks(n_affected: int, n_rows: int) -> int:
    """``clip(ceil(|Z| / (0.01 n)), 2, 10)``, and never more chunks than affected rows."""
    chunks = math.ceil(n_affected / max(1.0, CHUNK_FRACTION * n_rows))
    return max(1, min(n_affected, max(2, min(MAX_CHUNKS, chunks))))


def influence_strategies(model: UnlearnableModel, data: Dataset, changes: Changes, *, params: str = "all") -> list[Strategy]:
    """First- and second-order updates and their iterative variants, with the rules above."""
    n_affected = changes.resolve(data).n_affected
    chunks = iterative_chunks(n_affected, len(data))
    # the paper's updates, as published: the trust-region guard (on by default for deep models) is off here, so
    # these rows measure the update itself; the guarded variants are reported next to them where they differ
    extra = {} if params == "all" else {"params": params}
    suffix = "" if params == "all" else f" [{params}]"
    chunk_rule = f"chunks = clip(ceil(|Z| / 0.01n), 2, 10) = {chunks} (|Z| = {n_affected}, n = {len(data)})"
    return [
        Strategy("first-order" + suffix, "first-order", dict(extra), "tau = G.G / G.H~G (exact line minimiser)"),
        Strategy("second-order" + suffix, "second-order", {**extra, "guard": False}, "solver, curvature, damping, rows: 'auto' rules"),
        Strategy("first-order-it" + suffix, "first-order", {**extra, "chunks": chunks}, chunk_rule),
        Strategy("second-order-it" + suffix, "second-order", {**extra, "chunks": chunks, "guard": False}, chunk_rule),
    ]


CACHED = "second-order [cached]"
CACHED_MAX_PARAMS = 8192
"""Most parameters whose exact curvature the cached strategy fits: a dense ``p x p`` Cholesky factor of at most
512 MiB (``8 p^2`` bytes; ``p^3 / 3`` operations to fit; each request updates it by Woodbury, ``O(k C p^2)`` for
``k`` affected rows, or refactorises it when that is cheaper)."""


def cached_second_order_strategy(model: UnlearnableModel) -> Strategy:
    """The amortised second-order update: the exact curvature fitted once per model and reused by every request.

    Like the one-shot ``second-order`` row it is the paper's update, unguarded (``guard=False``), so the two
    rows differ only in where the curvature comes from, and their parameters agree to rounding. Above
    :data:`CACHED_MAX_PARAMS` parameters the strategy is not run (``Strategy.skip`` says why): the one-shot
    update's conjugate gradients on Hessian-vector products keep nothing to amortise, and a dense factor would
    cost more than it saves (11,874 parameters, 101 rows touched: 44 s to fit and 19 s per request on one
    thread, against 0.06 s for the one-shot update). Convex
    models only: a network's cached rows are :func:`network_cached_strategies` (K-FAC / EK-FAC).
    """
    if not model.convex:
        raise ModelError(f"The cached second-order strategy is defined for convex models; the {model.kind} "
                         "model is not one (use network_cached_strategies for its K-FAC / EK-FAC rows).")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rule = (f"curvature fitted once per model (kind='exact', {n_params:,} parameters <= {CACHED_MAX_PARAMS:,}), "
            "reused by every request; unguarded like the one-shot row")
    skip = None
    if n_params > CACHED_MAX_PARAMS:
        skip = (f"{n_params:,} parameters > {CACHED_MAX_PARAMS:,}: a dense exact factor would cost "
                f"{8 * n_params ** 2 / 2 ** 30:.1f} GiB and O(p^3) to fit; the one-shot update (conjugate gradients, "
                "nothing to cache) is the amortised path here")
    return Strategy(CACHED, "second-order", {"guard": False}, rule, curvature="exact", skip=skip)


NETWORK_CURVATURES = ("kfac", "ekfac")
"""Kinds of :func:`unlearnkit.curvature.fit` behind the cached network rows, in report order."""


def network_cached_strategies(model: UnlearnableModel, data: Dataset, changes: Changes) -> list[Strategy]:
    """The amortised second-order updates of a network: for each kind of :data:`NETWORK_CURVATURES`, the paper's
    update with that curvature fitted once per model (``second-order [<kind>]``, unguarded) and its guarded
    iterative variant (``second-order-it [<kind>, guarded]``); see the module docstring.

    The curvature itself is fitted by the comparison (:class:`~unlearnkit.scenarios.compare.CurvatureCache`), once
    per model, data and kind; here only the rule is written down, with the treatment each layer will get.
    """
    if model.convex:
        raise ModelError(f"The cached network strategies approximate a network's Gauss-Newton matrix; the {model.kind} "
                         "model is convex: use cached_second_order_strategy (its exact curvature).")
    n_affected = changes.resolve(data).n_affected
    chunks = iterative_chunks(n_affected, len(data))
    out = []
    for kind in NETWORK_CURVATURES:
        layers = layer_treatments(model, data, kind)
        base = (f"curvature fitted once per model (kind='{kind}'; {layers}), reused by every request; damping = "
                "1e-3 x its largest eigenvalue (power iteration on its own products)")
        out.append(Strategy(f"second-order [{kind}]", "second-order", {"guard": False},
                            base + "; unguarded like the one-shot row", curvature=kind))
        out.append(Strategy(f"second-order-it [{kind}, guarded]", "second-order", {"chunks": chunks, "guard": True},
                            f"{base}; chunks = clip(ceil(|Z| / 0.01n), 2, 10) = {chunks} (|Z| = {n_affected}, n = "
                            f"{len(data)}), the curvature reused by every chunk; trust-region guard on (held-out "
                            "validation rows on relabel-only requests)", curvature=kind))
    return out


def layer_treatments(model: UnlearnableModel, data: Dataset, kind: str) -> str:
    """How :func:`unlearnkit.curvature.fit` of ``kind`` will treat each layer of ``model``, in words
    (``"features.0, classifier.3: K-FAC; embedding: exact GGN block (1,024 parameters <= 2,000)"``)."""
    import copy

    from unlearnkit.influence.kfac import DENSE_BLOCK_MAX, Mode, Treatment, plan_layers

    work = copy.deepcopy(model).eval()
    flat = FlatModel(work)
    probe = next(iter(data.subset(list(range(min(len(data), 3)))).batches(3, device=flat.device, dtype=flat.dtype)))[0]
    plans = plan_layers(work, flat.names, probe, Mode(kind), dense_max=DENSE_BLOCK_MAX)
    words = {Treatment.KFAC: "K-FAC", Treatment.EKFAC: "EK-FAC"}
    factored = [p.name or "(root)" for p in plans if p.treatment in words]
    parts = [f"{', '.join(factored)}: {words[Treatment(kind)]}"] if factored else []
    for p in plans:
        if p.treatment is Treatment.DENSE:
            parts.append(f"{p.name or '(root)'}: exact GGN block ({p.n_params:,} parameters <= {DENSE_BLOCK_MAX:,})")
        elif p.treatment is Treatment.DIAGONAL:
            parts.append(f"{p.name or '(root)'}: GGN diagonal ({p.n_params:,} parameters > {DENSE_BLOCK_MAX:,})")
    return "; ".join(parts)


def fine_tune_strategy(model: UnlearnableModel, data: Dataset, changes: Changes, *, seed: int = 0, device=None) -> Strategy:
    """One epoch of SGD on the corrected data with ``lr = 1 / lambda_max(H~ / n)`` (see the module docstring)."""
    start = timing.start(device)
    corrected = changes.apply(data)
    net = model if device is None else _on(model, device)
    sample, weight = hessian_sample(corrected, min(FINE_TUNE_ROWS, len(corrected)), seed)
    H = HessianOperator(FlatModel(net), sample, weight=weight, curvature="hessian" if model.convex else "ggn")
    lam = H.largest_eigenvalue(iterations=20, seed=seed) / len(corrected)
    lr = 1.0 / lam if lam > 0 else 1e-3
    config = getattr(model, "train_config", None)
    batch = int(config.batch_size) if config is not None else 256
    hp = {"epochs": 1, "lr": float(lr), "momentum": 0.0, "weight_decay": model.l2 / len(corrected), "batch_size": batch,
          "seed": seed}
    return Strategy("fine-tune", "ft", hp, f"1 epoch SGD, lr = 1/lambda_max(H~/n) = {lr:.3g}, weight decay l2/n",
                    setup_seconds=timing.since(start, device))


def _on(model: UnlearnableModel, device) -> UnlearnableModel:
    import copy

    return copy.deepcopy(model).to(device)


def default_strategies(model: UnlearnableModel, data: Dataset, changes: Changes, *, seed: int = 0, device=None,
                       params: str = "all") -> list[Strategy]:
    """Fine-tuning and the four influence updates, each with its rule."""
    return [fine_tune_strategy(model, data, changes, seed=seed, device=device),
            *influence_strategies(model, data, changes, params=params)]
