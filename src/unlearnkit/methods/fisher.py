"""Curvature family: IU (influence / WoodFisher), FF (Fisher forgetting, faithful and class-wise) and SSD.

Each method edits the weights once, without training. IU takes one Newton-like step with an
empirical-Fisher curvature. FF adds Gaussian noise shaped by the inverse diagonal Fisher of the
retain set. SSD shrinks the weights that matter much more to the forget set than to the
training data. Every gradient is taken in eval mode, so batch-norm layers use their running
statistics and no buffer changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.errors import MethodError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import per_sample_gradients, summed_gradient
from unlearnkit.methods.base import Hyperparameter, register
from unlearnkit.methods.deep import DEEPUNLEARN, DU, SEED, DeepMethod
from unlearnkit.methods.loops import Tensors, class_logits, cross_entropy, randn_like, tensors_of

_BATCH_RANGE = "{64, 128, 256} (DeepUnlearn search)"


def _params(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


IU_MAX_ELEMENTS = 1 << 29
"""IU keeps ``n_samples x n_params`` gradients in memory; above this many numbers (2 GiB in float32) it refuses."""


def woodbury_solve(G: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(damping I + G^T G / k)^-1 v`` exactly, through a ``k x k`` system (Woodbury identity).

    ``(lam I_p + G^T G / k)^-1 v = (v - G^T (k lam I_k + G G^T)^-1 G v) / lam``. No ``p x p``
    matrix is formed: the cost is ``O(k^2 p + k^3)`` and the memory ``O(k^2)`` besides ``G``.
    The ``k x k`` system is solved in float64 by Cholesky factorisation (it is symmetric positive
    definite for ``lam > 0``).

    >>> G = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]); v = torch.tensor([1.0, -1.0])
    >>> dense = torch.linalg.solve(0.5 * torch.eye(2) + G.T @ G / 3, v)
    >>> bool(torch.allclose(woodbury_solve(G, v, 0.5), dense, atol=1e-6))
    True
    """
    if not damping > 0:
        raise MethodError(f"The Woodbury solve needs damping > 0, got {damping}.")
    k = G.shape[0]
    kernel = (G @ G.T).to(torch.float64)  # only the k x k system in float64; G stays in its own precision
    kernel.diagonal().add_(k * damping)
    z = torch.cholesky_solve((G @ v).to(torch.float64).unsqueeze(1), torch.linalg.cholesky(kernel)).squeeze(1)
    return (v - G.T @ z.to(G.dtype)) / damping


def _add_flat(net: nn.Module, delta: torch.Tensor) -> None:
    with torch.no_grad():
        start = 0
        for _, p in _params(net):
            p.add_(delta[start:start + p.numel()].view_as(p))
            start += p.numel()


# ================================================================================= IU
@register(
    "iu",
    summary="IU (influence unlearning, WoodFisher): theta + alpha (lam I + F)^-1 v, with F the empirical Fisher of "
            "retain samples and v the scaled forget-minus-retain mean gradient; exact Woodbury solve, no training",
    hyperparameters=(
        Hyperparameter("alpha", float, 0.2, "step size along (lam I + F)^-1 v (1 = the full Newton step)",
                       "[0, 1] (DeepUnlearn search)", DU + " (iu.py)"),
        Hyperparameter("damping", float, 1e-3, "lam, added to the Fisher's diagonal; it sets the step scale (outside "
                       "the span of the sampled gradients the step is alpha v / lam), so raise it for a model far "
                       "from a minimum (large v)", "> 0",
                       "ours: the reference's recursion starts from H = I and adds g g^T / 1000 per sample, i.e. "
                       "lam = 1, for which H^-1 v ~ v and the digits CNN does not change (forget-class accuracy 1.0 "
                       "after class-wise forgetting); with alpha 0.2, lam = 1e-3 forgets that class (0.0) and keeps "
                       "retain accuracy (0.999); 1e-4 loses retain accuracy"),
        Hyperparameter("n_samples", int, 1000, "retain rows whose per-sample gradients form F (at most all of them)",
                       ">= 1", DU + " (iu.py: the WoodFisher loop stops after about 1,000 samples)"),
        Hyperparameter("batch_size", int, 256, "rows per gradient chunk (bounds memory; not part of the mathematics)",
                       _BATCH_RANGE, DU + " (iu.py)"),
        SEED,
    ),
    reference=DEEPUNLEARN + " (iu.py, from OPTML-Group/Unlearn-Saliency Wfisher); Singh & Alistarh, WoodFisher, "
                            "NeurIPS 2020.",
)
class InfluenceUnlearning(DeepMethod):
    """IU: influence unlearning with a WoodFisher (empirical Fisher) inverse (DeepUnlearn #8).

    With ``n_f`` forget rows, ``n_r`` retain rows, ``n = n_f + n_r`` and mean per-sample loss
    gradients ``g_f``, ``g_r`` (cross-entropy, no regulariser):

        v = (n_f / n) (g_f - g_r)

    (the reference's ``sum grad_f / n - sum grad_r n_f / (n n_r)``). Gradients come from
    :mod:`unlearnkit.influence.gradients` (``torch.func`` ``vmap(grad)`` over a functional call,
    in chunks of ``batch_size`` rows). For a model at a minimum of
    the full-data mean loss, ``v = (n_f / n_r) g_f``, and ``theta + H_r^-1 v`` is the Newton step
    to the retain optimum. The curvature is the empirical Fisher of the retain mean loss,
    ``F = G^T G / k``, where ``G`` holds ``k = min(n_samples, n_r)`` per-sample retain gradients
    of a seeded random sample. The update is

        theta <- theta + alpha (lam I + F)^-1 v,

    solved exactly by :func:`woodbury_solve` (a ``k x k`` system; no ``p x p`` matrix). Every
    gradient is taken in eval mode. Memory is ``k x p`` for ``G``.

    Fixed reference bug: the reference runs a rank-one (Sherman-Morrison) recursion over
    batch-size-1 retain gradients. Its correction vector should be ``H_t^-1 g_t`` for the current
    sample, but it is the FIRST sample's gradient, only rescaled at each step. The result is ``v``
    minus a multiple of one gradient, not ``(I + F)^-1 v``. Here the solve is exact. The
    reference's ``num_epochs`` hyperparameter is searched but unused, and is dropped.
    """

    def check(self, model):
        if not self.damping > 0:
            raise MethodError(f"iu: damping must be > 0, got {self.damping}.")
        if self.n_samples < 1 or self.batch_size < 1:
            raise MethodError("iu: n_samples and batch_size must be >= 1.")

    def run(self, net, task, ctx):
        net.eval()
        flat = FlatModel(net)
        retain, forget = task.retain, task.forget
        n_f, n_r = len(forget), len(retain)
        g_f = summed_gradient(flat, forget, batch_size=self.batch_size) / n_f
        g_r = summed_gradient(flat, retain, batch_size=self.batch_size) / n_r
        v = (n_f / (n_f + n_r)) * (g_f - g_r)
        k = min(self.n_samples, n_r)
        if k * flat.n_params > IU_MAX_ELEMENTS:
            raise MethodError(f"iu: {k} per-sample gradients of {flat.n_params:,} parameters need "
                              f"{4 * k * flat.n_params / 2**30:.1f} GiB; lower n_samples to at most "
                              f"{max(1, IU_MAX_ELEMENTS // flat.n_params)}.")
        rows = torch.randperm(n_r, generator=ctx.generator)[:self.n_samples].numpy()
        G = per_sample_gradients(flat, retain.subset(rows), batch_size=self.batch_size)
        delta = self.alpha * woodbury_solve(G, v, self.damping)
        _add_flat(net, delta)
        return {"fisher_samples": int(G.shape[0]), "parameters": int(G.shape[1]),
                "step_norm": float(delta.norm()), "v_norm": float(v.norm())}


# ================================================================================= FF
def class_fisher_diagonal(net: nn.Module, data: Tensors, *, batch_size: int, n_classes: int) -> list[torch.Tensor]:
    """FF's diagonal Fisher: ``F = (1/B) sum_b sum_c mean_i(p_c(x_i)) * (grad CE_b(c))^2``.

    For each mini-batch ``b`` and each class ``c``, ``CE_b(c)`` is the batch-mean cross-entropy
    with every label set to ``c``; its squared gradient is weighted by the batch-mean predicted
    probability of ``c``. ``B`` is the number of batches. Returns one tensor per parameter.
    """
    params = [p for _, p in _params(net)]
    fisher = [torch.zeros_like(p) for p in params]
    batches = 0
    for xb, _ in data.batches(batch_size):
        logits = net(xb)
        probs = F.softmax(class_logits(logits), dim=1).detach()
        for c in range(n_classes):
            target = torch.full((xb.shape[0],), c, dtype=torch.long, device=xb.device)
            grads = torch.autograd.grad(cross_entropy(net, logits, target), params, retain_graph=c < n_classes - 1)
            weight = probs[:, c].mean()
            for f, g in zip(fisher, grads):
                f.add_(g.pow(2) * weight)
        batches += 1
    return [f / max(batches, 1) for f in fisher]


@register(
    "fisher",
    summary="FF (Fisher forgetting): add Gaussian noise with variance alpha / (diagonal retain Fisher) to every "
            "parameter; no training",
    hyperparameters=(
        Hyperparameter("alpha", float, 1e-5, "noise scale: var = alpha * clamp(1 / F, max 1e3)",
                       "[0, 1] (DeepUnlearn search)",
                       "ours: DeepUnlearn's default 0.2 (fisher.py), and any alpha >= 1e-4, leaves the digits CNN "
                       "at chance accuracy; 1e-5 is the largest power of ten that keeps retain accuracy (0.99)"),
        Hyperparameter("batch_size", int, 64, "rows per batch of the Fisher estimate", _BATCH_RANGE,
                       DU + " (fisher.py)"),
        SEED,
    ),
    reference=DEEPUNLEARN + " (fisher.py, from OPTML-Group/Unlearn-Sparse); Golatkar, Achille, Soatto, "
                            "Eternal Sunshine of the Spotless Net, CVPR 2020.",
)
class FisherForgetting(DeepMethod):
    """FF: Fisher forgetting (DeepUnlearn #9; Golatkar et al. 2020).

    ``F`` is the diagonal Fisher of the retain set from :func:`class_fisher_diagonal`. For each
    parameter tensor ``theta`` (with ``C`` = ``n_classes``):

        var = alpha * clamp(1 / (F + 1e-8), max = 1e3)   (max = 1e2 if theta.shape[0] == C)
        var <- mean of var over dim 1, broadcast back     (tensors with ndim > 1)
        var <- 10 var                                     (the head's tensors and every 1-D tensor)
        theta <- theta + sqrt(var) * N(0, I)

    The noise comes from the method's seeded generator. The Fisher is taken in eval mode. The
    forget set is never used: noise is large where the retain set does not constrain a weight.

    Differences from the reference: the x10 factor goes to the head found by the adapter, not to
    tensors whose first dimension equals the class count. Noise comes from the seeded generator.
    """

    uses_forget = False

    def check(self, model):
        if self.alpha < 0:
            raise MethodError(f"fisher: alpha must be >= 0, got {self.alpha}.")
        model.head()

    def run(self, net, task, ctx):
        net.eval()
        C = ctx.n_classes
        named = _params(net)
        fisher = class_fisher_diagonal(net, ctx.retain, batch_size=self.batch_size, n_classes=C)
        head = {id(p) for p in net.head().parameters()}
        largest = 0.0
        with torch.no_grad():
            for (_, p), f in zip(named, fisher):
                var = (1.0 / (f + 1e-8)).clamp(max=1e3)
                if id(p) in head:  # the classifier's tighter clamp (the reference finds it by dim 0 == C)
                    var = var.clamp(max=1e2)
                var = self.alpha * var
                if p.ndim > 1:
                    var = var.mean(dim=1, keepdim=True).expand_as(p)
                if id(p) in head or p.ndim == 1:
                    var = var * 10
                std = var.sqrt()
                largest = max(largest, float(std.max()))
                p.add_(std * randn_like(p, ctx.generator))
        return {"max_noise_std": largest}


def fully_forgotten_classes(retain_labels: torch.Tensor, forget_labels: torch.Tensor) -> list[int]:
    """Labels of the forget set that no retain row carries: the classes a removal forgets entirely."""
    kept = set(torch.unique(retain_labels).tolist())
    return sorted(int(c) for c in torch.unique(forget_labels).tolist() if int(c) not in kept)


@register(
    "fisher-classwise",
    summary="FF for class-wise forgetting: Fisher-forgetting noise, and the classifier rows of every class the forget "
            "set removes entirely set to zero (small noise); no training",
    hyperparameters=(
        Hyperparameter("alpha", float, 1e-5, "noise scale: var = alpha * clamp(1 / F, max 1e3), as in fisher",
                       "[0, 1] (DeepUnlearn search)",
                       "ours: the fisher default (the largest power of ten that keeps the digits CNN's retain "
                       "accuracy); torchunlearn searches {1e-9, 1e-8, 1e-7, 1e-6}"),
        Hyperparameter("forget_class_var", float, 1e-3,
                       "variance of the noise drawn around zero for each forgotten class's classifier row", "> 0",
                       "torchunlearn (fisherforget.py: var[omit_label] = 1e-4, then x10 like every head tensor); "
                       "Golatkar et al.'s code for class forgetting"),
        Hyperparameter("batch_size", int, 64, "rows per batch of the Fisher estimate", _BATCH_RANGE,
                       DU + " (fisher.py)"),
        SEED,
    ),
    reference="Golatkar, Achille, Soatto, Eternal Sunshine of the Spotless Net, CVPR 2020 (class forgetting); "
              "torchunlearn, Harry24k/machine-unlearning-pytorch, torchunlearn/unlearn/nontrainers/fisherforget.py "
              "(FisherForget with omit_label).",
)
class ClasswiseFisherForgetting(FisherForgetting):
    """FF for class-wise forgetting: :class:`FisherForgetting` plus the forget-class label.

    The forgotten classes are the labels of the forget set that no retain row carries (a
    removal of every training row of a class); the method refuses a forget set that removes no
    class entirely. Every parameter gets FF's noise (same ``alpha``, Fisher and clamps), except
    the classifier rows of the forgotten classes ``c`` (weight row and bias entry of the head):

        theta[c] <- sqrt(forget_class_var) * N(0, I)      (mean 0 instead of theta[c])

    so the forgotten classes' logits collapse to about zero and their rows are classified as
    another class. This is the ``omit_label`` branch of torchunlearn's ``FisherForget``, after
    the class-forgetting experiments of Golatkar et al. Unlike torchunlearn, ``alpha`` is a
    hyperparameter, not picked from a grid by retain-minus-forget accuracy. The faithful method
    without the label is ``fisher``: its noise comes from the retain set's Fisher alone and at
    settings that keep retain accuracy it barely changes a forgotten class (digits CNN forgetting
    class 3, seeds 0-2: forget-class accuracy 0.98 / 1.0 / 0.87 for ``fisher``, 0.00 / 0.16 / 0.01
    here, retain accuracy 0.99 for both).
    """

    uses_forget = True

    def check(self, model):
        super().check(model)
        if not self.forget_class_var > 0:
            raise MethodError(f"fisher-classwise: forget_class_var must be > 0, got {self.forget_class_var}.")

    def run(self, net, task, ctx):
        C = ctx.n_classes
        classes = fully_forgotten_classes(ctx.retain.y, ctx.forget.y)
        if not classes:
            raise MethodError("fisher-classwise forgets whole classes, but every class of the forget set still has "
                              "retain rows; use 'fisher' to forget individual rows.")
        head = [p for p in net.head().parameters() if p.requires_grad]
        if not head or any(p.shape[0] != C for p in head):
            raise MethodError(f"fisher-classwise needs a classifier head with one output row per class ({C}); "
                              f"this model's head has shapes {[tuple(p.shape) for p in head]}.")
        diagnostics = super().run(net, task, ctx)
        index = torch.tensor(classes, dtype=torch.long, device=head[0].device)
        with torch.no_grad():
            for p in head:
                noise = randn_like(p, ctx.generator)[index]
                p[index] = noise * float(self.forget_class_var) ** 0.5
        return {**diagnostics, "forgotten_classes": classes}


# ================================================================================= SSD
def squared_gradient_importance(net: nn.Module, data: Tensors, *, batch_size: int) -> list[torch.Tensor]:
    """SSD's importance ``[]_S = (1/B) sum_b (grad CE_b)^2``, ``CE_b`` the mean loss of batch ``b`` of ``S``."""
    params = [p for _, p in _params(net)]
    total = [torch.zeros_like(p) for p in params]
    batches = 0
    for xb, yb in data.batches(batch_size):
        for t, g in zip(total, torch.autograd.grad(cross_entropy(net, net(xb), yb), params)):
            t.add_(g.pow(2))
        batches += 1
    return [t / max(batches, 1) for t in total]


@register(
    "ssd",
    summary="SSD (Selective Synaptic Dampening): shrink the parameters far more important to the forget set than "
            "to the training data; no training",
    hyperparameters=(
        Hyperparameter("alpha", float, 10.0, "selection weighting: dampen where []_f > alpha []_D",
                       "> 0; searched log-uniform [1, 100]",
                       "paper (Foster et al. 2024: alpha = 10); the search interval is ours, a decade either side"),
        Hyperparameter("lam", float, 1.0, "dampening constant: beta = min(lam []_D / []_f, 1)",
                       "> 0; searched log-uniform [0.1, 10]",
                       "paper (Foster et al. 2024: lambda = 1); the search interval is ours, a decade either side"),
        Hyperparameter("batch_size", int, 64, "rows per batch of both importance estimates", ">= 1",
                       "ours: the importances are means of squared batch gradients, so both sets use the same "
                       "batch size"),
    ),
    reference="Foster, Schoepf, Brintrup. Fast Machine Unlearning Without Retraining Through Selective Synaptic "
              "Dampening. AAAI 2024.",
)
class SelectiveSynapticDampening(DeepMethod):
    """SSD: Selective Synaptic Dampening (Foster, Schoepf, Brintrup, AAAI 2024).

    The importances are the diagonal Fisher estimates
    ``[]_S = (1/B) sum_b (grad CE_b)^2`` (:func:`squared_gradient_importance`) on the full
    training data ``D`` (retain and forget, as the model saw them) and on the forget set ``f``.
    For each parameter entry:

        if []_f > alpha []_D:   theta <- beta theta,   beta = min(lam []_D / []_f, 1)

    Every other entry is unchanged. Since ``0 <= beta <= 1``, SSD only shrinks magnitudes and
    never flips a sign. Gradients are taken in eval mode. SSD is not part of DeepUnlearn.
    """

    seed = 0
    """SSD draws nothing at random, so it has no seed hyperparameter; the base class seeds a generator it never uses."""

    def check(self, model):
        if not (self.alpha > 0 and self.lam > 0):
            raise MethodError(f"ssd: alpha and lam must be > 0, got alpha={self.alpha}, lam={self.lam}.")

    def run(self, net, task, ctx):
        net.eval()
        training = tensors_of(task.data, device=ctx.device, dtype=ctx.dtype)  # streamed when the data is
        imp_d = squared_gradient_importance(net, training, batch_size=self.batch_size)
        imp_f = squared_gradient_importance(net, ctx.forget, batch_size=self.batch_size)
        dampened, total = 0, 0
        with torch.no_grad():
            for (_, p), d, f in zip(_params(net), imp_d, imp_f):
                selected = f > self.alpha * d
                beta = (self.lam * d / torch.where(selected, f, torch.ones_like(f))).clamp(max=1.0)
                p.mul_(torch.where(selected, beta, torch.ones_like(beta)))
                dampened += int(selected.sum())
                total += p.numel()
        return {"dampened": dampened, "dampened_fraction": dampened / max(total, 1)}
