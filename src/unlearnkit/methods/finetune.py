"""Fine-tuning family: methods that train the model with plain gradient steps on the retain and/or forget set.

* ``ft``        FT: fine-tune on the retain set (DeepUnlearn's baseline).
* ``ga``        GA: gradient ascent on the forget set.
* ``srl``       SRL: successive random labels for the forget set, trained together with the retain set.
* ``ng``        NG: gradient ascent on the forget set with each sample's loss capped (cannot diverge).
* ``ng+``       NG+: retain descent plus forget ascent, with an L2 pull to the original weights.
* ``l1-sparse`` l1-sparse: fine-tune on the retain set with a decaying L1 penalty (Jia et al. 2023).
* ``cf-k``      CF-k: fine-tune only the last ``k`` blocks and the head on the retain set.
* ``eu-k``      EU-k: re-initialise the last ``k`` blocks and the head, then train them on the retain set.

Losses are the model's own mean per-sample loss (cross-entropy; the logistic loss for binary
logistic regression), written ``CE`` below.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unlearnkit.errors import MethodError, ModelError
from unlearnkit.methods.base import Hyperparameter, register
from unlearnkit.methods.deep import DEEPUNLEARN, DU, SEED, DeepMethod, generic
from unlearnkit.methods.loops import (
    cosine,
    cross_entropy,
    cycle,
    fit,
    kaiming_uniform_fan_out,
    rand_like,
    relabel_fit,
    sgd,
    step,
    step_decay,
    trainable,
)
from unlearnkit.models.base import reset_normalisation

JIA = ("Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu. Model Sparsity Can Simplify Machine Unlearning. NeurIPS 2023 "
       "(arXiv:2304.04934); code github.com/OPTML-Group/Unlearn-Sparse.")


@register(
    "ft",
    summary="FT: fine-tune on the retain set with cross-entropy (SGD, cosine schedule); never looks at the forget set",
    hyperparameters=generic(lr=0.1),
    reference=DEEPUNLEARN + " (finetune.py)",
)
class FineTune(DeepMethod):
    uses_forget = False

    def run(self, net, task, ctx):
        opt = sgd(trainable(net), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        steps = fit(net, ctx.retain, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt,
                    generator=ctx.generator, lr_at=lambda e: cosine(self.lr, e, self.epochs))
        return {"steps": steps}


# ---------------------------------------------------------------------------------------------- GA
@register(
    "ga",
    summary="GA: gradient ascent on the forget set only, loss = -CE(forget) (SGD, constant lr); no retain term",
    hyperparameters=generic(lr=0.01, source=DU + " (gradient_ascent.py)", epochs_help="passes over the forget set")[:4] + (
        Hyperparameter("epochs", int, 15, "passes over the forget set", ">= 0; DeepUnlearn caps at 20 % of the training epochs",
                       "ours: DeepUnlearn's 10 leave the digits CNN unchanged (10 ascent steps on a one-batch forget set); "
                       "15 forget a class, 20 collapse the model"),
        SEED,
    ),
    reference=DEEPUNLEARN + " (gradient_ascent.py, adapted from OPTML-Group/Unlearn-Sparse)",
)
class GradientAscent(DeepMethod):
    """Gradient ascent on the forget set.

    Minimises ``-CE(f(x_F), y_F)`` (the mean loss of a forget batch, negated) with SGD(lr,
    momentum, weight decay) at a constant learning rate for ``epochs`` shuffled passes over the
    forget set; the retain set is never used. The loss is unbounded below, so large learning
    rates or many epochs destroy the model (a non-finite loss raises ``MethodError``); ``ng``
    is the capped variant.

    Defaults are DeepUnlearn's except ``epochs`` (ours: 15 instead of 10). DeepUnlearn's MNIST
    forget set fills 20 batches per epoch; a 122-row forget set fills one, and 10 ascent steps
    leave the digits CNN exactly as it was. GA sits on a cliff: on the digits CNN forgetting
    class 3, 10 epochs change nothing, 15 bring the forget accuracy to 0.59 at retain accuracy
    1.0, 20 collapse the model to chance (and on other model seeds 15 already may): tune it.
    """

    def run(self, net, task, ctx):
        opt = sgd(trainable(net), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        steps = fit(net, ctx.forget, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt,
                    generator=ctx.generator, loss_fn=lambda x, y, logits: -cross_entropy(net, logits, y))
        return {"steps": steps}


# ---------------------------------------------------------------------------------------------- SRL
@register(
    "srl",
    summary="SRL: each epoch give the forget rows random wrong labels and train on them together with the retain set",
    hyperparameters=generic(lr=0.1, epochs=5, source=DU + " (DefaultUnlearnerConfig)",
                            epochs_help="passes over retain + relabelled forget"),
    reference=DEEPUNLEARN + " (successive_random_labels.py)",
)
class SuccessiveRandomLabels(DeepMethod):
    """Successive random labels.

    Each epoch every forget row ``(x, y)`` gets a label ``y'`` drawn uniformly from the ``C - 1``
    classes other than ``y``; then one shuffled pass of SGD(lr, momentum, weight decay) at a
    constant learning rate minimises the mean ``CE`` over ``retain ∪ {(x, y')}``.

    Fix of the reference: DeepUnlearn draws ``y'`` uniformly from all ``C`` classes, so a
    fraction ``1/C`` of the "random" labels are the true label and keep teaching the forget
    rows; here ``y'`` is never the true label (for a binary model every forget label is flipped).
    """

    def run(self, net, task, ctx):
        opt = sgd(trainable(net), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        steps = relabel_fit(net, ctx.retain, ctx.forget, n_classes=ctx.n_classes, epochs=self.epochs,
                            batch_size=self.batch_size, optimizer=opt, generator=ctx.generator)
        return {"steps": steps}


# ---------------------------------------------------------------------------------------------- NG
@register(
    "ng",
    summary="NG: gradient ascent on the forget set with each sample's loss capped at max_loss, so it cannot diverge",
    hyperparameters=(
        Hyperparameter("lr", float, 0.05, "learning rate", "log-uniform [1e-5, 1e-1] (DeepUnlearn search)",
                       "ours: forgets a digit class in 10 epochs without harming random forgetting (0.1 does)"),
        Hyperparameter("momentum", float, 0.0, "SGD momentum", "[0, 1)",
                       "ours: with momentum, steps continue after every forget loss reached the cap"),
        Hyperparameter("weight_decay", float, 0.0, "SGD weight decay", "log-uniform [1e-5, 1e-1] (DeepUnlearn search)",
                       "ours: so that a model whose forget losses all exceed the cap is a fixed point"),
        Hyperparameter("batch_size", int, 256, "mini-batch size", "{64, 128, 256} (DeepUnlearn search)", DU + " (gradient_ascent.py)"),
        Hyperparameter("epochs", int, 10, "passes over the forget set", ">= 0", DU + " (gradient_ascent.py)"),
        SEED,
    ) + (
        Hyperparameter("max_loss", (float, type(None)), None,
                       "cap on each forget sample's loss; ascent on a sample stops once its loss exceeds it; "
                       "None = ln(n_classes), the loss of a uniform prediction",
                       "> 0 (nats), or None",
                       "ours: above ln(C) the true class has probability < 1/C, so the sample is misclassified"),
    ),
    reference=DEEPUNLEARN + " (negative_gradient.py, not in the benchmark's method list)",
)
class NegativeGradient(DeepMethod):
    """Negative gradient with a per-sample loss cap.

    Minimises ``-(1/m) sum_i min(l_i, c)`` over forget batches, with ``l_i`` the loss of
    sample ``i`` and ``c = max_loss``: the gradient of a sample whose loss exceeds ``c`` is
    zero, so ascent pushes each forget sample until it is forgotten (loss ``c``) and then stops
    instead of diverging as ``ga`` does. The default ``c = ln C`` is the loss of the uniform
    prediction; a sample above it has true-class probability below ``1/C``, which guarantees
    it is misclassified. SGD(lr, momentum, weight decay), constant learning rate, ``epochs``
    passes over the forget set; the retain set is not used.

    Defaults (ours; DeepUnlearn does not run this method): batch size and epochs are GA's;
    momentum 0 and weight decay 0 so that once every forget loss is above the cap the
    gradient is exactly zero and the model stops changing (with momentum it keeps moving for
    ~10 more steps); lr 0.05 forgets a digit class in 10 epochs. The cap bounds the loss, not
    the damage: on a random forget set (every class present) pushing each row to
    misclassification also hurts the retain set, so larger lr / epochs (0.1 / 10) can cost
    much retain accuracy there. ``max_loss`` below ``ln C`` stops earlier.

    The reference (``negative_gradient.py``, which DeepUnlearn does not run) mixes retain and
    forget rows, negates the forget losses and then clamps every loss to ``[0, 1/C]``: the
    negated forget losses are all clamped to 0, so the forget set gets no gradient at all, and
    ``1/C`` is a probability used as a loss. Neither is reproduced.
    """

    def run(self, net, task, ctx):
        cap = math.log(ctx.n_classes) if self.max_loss is None else float(self.max_loss)
        if not (cap > 0 and math.isfinite(cap)):
            raise MethodError(f"ng: max_loss must be a finite number > 0 (or None for ln(n_classes)), got {self.max_loss!r}.")
        opt = sgd(trainable(net), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        steps = fit(net, ctx.forget, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt,
                    generator=ctx.generator,
                    loss_fn=lambda x, y, logits: -net.per_sample_loss(logits, y).clamp(max=cap).mean())
        net.eval()
        with torch.no_grad():
            losses = torch.cat([net.per_sample_loss(net(x), y) for x, y in ctx.forget.batches(self.batch_size)])
        return {"steps": steps, "max_loss": cap, "capped_fraction": float((losses >= cap).float().mean())}


# ---------------------------------------------------------------------------------------------- NG+
@register(
    "ng+",
    summary="NG+: alpha * (CE(retain) + l2_to_init/2 ||theta - theta0||^2) - (1 - alpha) * CE(forget), "
            "retain batches paired with cycled forget batches",
    hyperparameters=(
        Hyperparameter("lr", float, 0.02, "learning rate", "log-uniform [1e-5, 1e-1] (DeepUnlearn search)",
                       "ours: DeepUnlearn's 0.01 leaves the digits CNN unchanged; at 0.03 the forget ascent collapses it"),
    ) + generic(lr=0.01, weight_decay=0.0, epochs=10, source=DU + " (neggradplus.py)")[1:] + (
        Hyperparameter("alpha", float, 0.95, "weight of the retain term; 1 - alpha weighs the forget ascent",
                       "[0, 1] (DeepUnlearn search)", DU + " (neggradplus.py)"),
        Hyperparameter("l2_to_init", float, 0.1,
                       "lambda of the pull (lambda/2) ||theta - theta0||^2 to the original weights theta0",
                       ">= 0; log-uniform [1e-5, 1e-1] (DeepUnlearn's range for this penalty in CF-k / EU-k)",
                       "DeepUnlearn's default for the same penalty in CF-k / EU-k (sgda_weight_decay); "
                       "its NG+ fixes it at 0 (see docstring)"),
        Hyperparameter("freeze_bn", bool, True,
                       "train with batch-norm layers in eval mode (running statistics used and left unchanged)",
                       "bool", DU + " (neggradplus.py trains in model.eval())"),
    ),
    reference=DEEPUNLEARN + " (neggradplus.py, adapted from the SCRUB repository, Kurmanji et al. NeurIPS 2023)",
)
class NegGradPlus(DeepMethod):
    """NegGrad+: descent on the retain set, ascent on the forget set, anchored to the original weights.

    One epoch is one shuffled pass over the retain set; each retain batch ``(x_R, y_R)`` is
    paired with the next batch ``(x_F, y_F)`` of an endlessly cycled, reshuffled forget set,
    and SGD(lr, momentum, weight decay) at a constant learning rate takes one step on

        L = alpha * (CE(x_R, y_R) + (lambda/2) ||theta - theta0||^2) - (1 - alpha) * CE(x_F, y_F)

    with ``theta0`` the original weights and ``lambda = l2_to_init``. With ``freeze_bn`` the
    batch-norm layers run in eval mode (the reference trains the whole model in eval mode; our
    models have no dropout, so this is the same).

    Fix of the reference: its ``lambda`` is a class attribute fixed at 0 and never searched, so
    the anchor term is dead code. Here it is a real hyperparameter, default ``lambda = 0.1``:
    the value DeepUnlearn gives the identical penalty in CF-k and EU-k. At the other defaults
    the pull removes about ``lr * alpha * lambda / (1 - momentum) = 2 %`` of the distance to
    ``theta0`` per step, which holds the retain accuracy against the unbounded forget ascent
    (on the digits CNN with lr 0.03 and forget = one class, lambda 0.01 ends at retain
    accuracy 0.42, lambda 0.1 at 0.81).

    Default learning rate (ours): DeepUnlearn's 0.01 leaves the digits CNN unchanged (forget
    accuracy 1.0 when forgetting a class); 0.02 forgets part of it. The forget term has no
    brake (see ``ng``), so a few more steps can collapse the model: tune ``lr`` / ``alpha``.
    """

    def run(self, net, task, ctx):
        if not 0.0 <= self.alpha <= 1.0:
            raise MethodError(f"ng+: alpha must be in [0, 1], got {self.alpha}.")
        if not self.l2_to_init >= 0:
            raise MethodError(f"ng+: l2_to_init must be >= 0, got {self.l2_to_init}.")
        params = trainable(net)
        theta0 = [p.detach().clone() for p in params]
        opt = sgd(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        forget = cycle(ctx.forget, self.batch_size, ctx.generator)
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        steps = 0
        for _ in range(self.epochs):
            net.train()
            if self.freeze_bn:
                for m in norms:
                    m.eval()
            for xr, yr in ctx.retain.batches(self.batch_size, ctx.generator):
                xf, yf = next(forget)
                retain_loss = cross_entropy(net, net(xr), yr)
                if self.l2_to_init > 0:
                    retain_loss = retain_loss + 0.5 * self.l2_to_init * _squared_distance(params, theta0)
                loss = self.alpha * retain_loss
                if self.alpha < 1:
                    loss = loss - (1 - self.alpha) * cross_entropy(net, net(xf), yf)
                step(opt, loss)
                steps += 1
        with torch.no_grad():
            distance = float(_squared_distance(params, theta0).sqrt())
        return {"steps": steps, "distance_to_original": distance}


def _squared_distance(params: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """``sum_j ||p_j - r_j||^2`` (differentiable in ``params``)."""
    return sum(((p - r) ** 2).sum() for p, r in zip(params, reference))


# ---------------------------------------------------------------------------------------------- l1-sparse
@register(
    "l1-sparse",
    summary="l1-sparse: fine-tune on the retain set with CE + gamma_t ||theta||_1, gamma_t decaying linearly to 0",
    hyperparameters=generic(lr=0.01, epochs=10, source="Jia et al. 2023 (Unlearn-Sparse README command and argument defaults)") + (
        Hyperparameter("gamma", float, 5e-4, "initial strength of the L1 penalty (decays linearly over the epochs)",
                       ">= 0; log-uniform [1e-5, 1e-1] suggested",
                       "ours: the paper tunes gamma per setting; 5e-4 adds ~0.6 nats on the digits CNN, "
                       "comparable to the cross-entropy it regularises"),
    ),
    reference=JIA,
)
class L1Sparse(DeepMethod):
    """Sparsity-aware unlearning ("l1-sparse", Jia et al. 2023) with a linearly decaying penalty.

    Fine-tunes every parameter on the retain set, epoch ``t = 0 .. T-1`` minimising

        CE(retain batch) + gamma_t ||theta||_1,     gamma_t = gamma (1 - t / T)

    (the L1 norm over all trainable parameters, biases and normalisation weights included, and
    the decay ``gamma (1 - t / T)``, as in the authors' code), with SGD(lr, momentum, weight
    decay) at a constant learning rate: sparsity is promoted early, then the penalty fades and
    the model recovers accuracy. The forget set is never used. The authors' optional
    "no-L1 epochs" at the end are not implemented (equivalent to their default 0).
    """

    uses_forget = False

    def run(self, net, task, ctx):
        if not self.gamma >= 0:
            raise MethodError(f"l1-sparse: gamma must be >= 0, got {self.gamma}.")
        params = trainable(net)
        opt = sgd(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        gamma = [self.gamma]

        def set_gamma(epoch: int) -> None:
            gamma[0] = self.gamma * (1 - epoch / self.epochs)

        def loss_fn(x, y, logits):
            return cross_entropy(net, logits, y) + gamma[0] * sum(p.abs().sum() for p in params)

        with torch.no_grad():
            before = float(sum(p.abs().sum() for p in params))
        steps = fit(net, ctx.retain, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt,
                    generator=ctx.generator, loss_fn=loss_fn, before_epoch=set_gamma)
        with torch.no_grad():
            after = float(sum(p.abs().sum() for p in params))
        return {"steps": steps, "l1_norm_before": before, "l1_norm_after": after}


# ---------------------------------------------------------------------------------------------- CF-k / EU-k
def _last_k_hyperparameters(source: str) -> tuple[Hyperparameter, ...]:
    return (
        Hyperparameter("lr", float, 0.01, "learning rate of plain SGD (no momentum, no weight decay)",
                       "log-uniform [1e-5, 1e-1] (DeepUnlearn search)", source),
        Hyperparameter("batch_size", int, 256, "mini-batch size", "{64, 128, 256} (DeepUnlearn search)", source),
        Hyperparameter("epochs", int, 10, "passes over the retain set",
                       ">= 0; DeepUnlearn caps at 20 % of the training epochs", source),
        Hyperparameter("k", int, 1, "number of last blocks trained with the head; more than the model has = all",
                       ">= 0; int [1, 10] (DeepUnlearn search)", source),
        Hyperparameter("decay_rate", float, 0.1, "learning-rate factor applied at 50 %, 80 % and 90 % of the epochs",
                       "[0, 1] (DeepUnlearn search)", source),
        Hyperparameter("l2_to_init", float, 0.1,
                       "lambda of (lambda/2) ||theta - theta0||^2, theta0 = the weights when fine-tuning starts",
                       "log-uniform [1e-5, 1e-1] (DeepUnlearn search)", source + ", sgda_weight_decay"),
        SEED,
    )


class _LastBlocks(DeepMethod):
    """Shared by CF-k and EU-k: train only the last ``k`` blocks and the head on the retain set."""

    uses_forget = False
    reinitialise = False

    def check(self, model):
        try:
            model.blocks()
            model.head()
        except ModelError as e:
            raise MethodError(f"{self.name} trains the last k blocks and the head of a model: {e}") from None
        if self.k < 0:
            raise MethodError(f"{self.name}: k must be >= 0 (the number of last blocks), got {self.k}.")

    def run(self, net, task, ctx):
        if not self.l2_to_init >= 0:
            raise MethodError(f"{self.name}: l2_to_init must be >= 0, got {self.l2_to_init}.")
        blocks = list(net.blocks())
        k = min(self.k, len(blocks))
        chosen = blocks[len(blocks) - k:] + [net.head()]
        layers = _reinitialise(chosen, ctx.generator) if self.reinitialise else []
        for p in net.parameters():
            p.requires_grad_(False)
        for module in chosen:
            for p in module.parameters():
                p.requires_grad_(True)
        params = trainable(net)
        theta0 = [p.detach().clone() for p in params]
        opt = sgd(params, lr=self.lr)

        def modes(epoch: int) -> None:
            # the frozen part in eval mode: its batch-norm statistics stay as they were
            net.eval()
            for module in chosen:
                module.train()

        def loss_fn(x, y, logits):
            loss = cross_entropy(net, logits, y)
            if self.l2_to_init > 0:
                loss = loss + 0.5 * self.l2_to_init * _squared_distance(params, theta0)
            return loss

        steps = fit(net, ctx.retain, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt,
                    generator=ctx.generator, loss_fn=loss_fn, before_epoch=modes,
                    lr_at=lambda e: step_decay(self.lr, e, self.epochs, self.decay_rate))
        out = {"steps": steps, "k": k, "n_blocks": len(blocks), "trained_parameters": sum(p.numel() for p in params)}
        if self.reinitialise:
            out["reinitialised_layers"] = len(layers)
        return out


@register(
    "cf-k",
    summary="CF-k: fine-tune only the last k blocks and the head on the retain set (plain SGD, L2 to the start, step decay)",
    hyperparameters=_last_k_hyperparameters(DU + " (catastrophic_forgetting_k.py)"),
    reference=DEEPUNLEARN + " (catastrophic_forgetting_k.py, from the SCRUB repository, Kurmanji et al. NeurIPS 2023; "
              "CF-k from Goel et al., Towards Adversarial Evaluations for Inexact Machine Unlearning, arXiv:2201.06640)",
)
class CatastrophicForgettingK(_LastBlocks):
    """CF-k: catastrophic forgetting of the last ``k`` blocks.

    Freezes the model except its last ``k`` blocks (``model.blocks()[-k:]``; ``k`` above the
    number of blocks means all of them) and its head (``model.head()``), then fine-tunes those
    on the retain set with plain SGD (momentum 0, weight decay 0), minimising

        CE(retain batch) + (lambda/2) ||theta - theta0||^2

    over the trained parameters, ``theta0`` their values when fine-tuning starts and
    ``lambda = l2_to_init``. The learning rate is multiplied by ``decay_rate`` at 50 %, 80 % and
    90 % of the epochs. The forget set is never used: forgetting comes from the retain-only
    training of the last layers.

    The frozen part runs in eval mode, so its parameters and batch-norm statistics stay
    bit-identical; the trained blocks run in training mode (the reference runs the whole model
    in eval mode). DeepUnlearn's ``sgda_learning_rate`` and ``momentum`` are searched but unused
    there, so they are not hyperparameters here.
    """


@register(
    "eu-k",
    summary="EU-k: re-initialise the last k blocks and the head, then train them on the retain set (as CF-k)",
    hyperparameters=_last_k_hyperparameters(DU + " (exact_unlearning_k.py)"),
    reference=DEEPUNLEARN + " (exact_unlearning_k.py, from the SCRUB repository, Kurmanji et al. NeurIPS 2023; "
              "EU-k from Goel et al., Towards Adversarial Evaluations for Inexact Machine Unlearning, arXiv:2201.06640)",
)
class ExactUnlearningK(_LastBlocks):
    """EU-k: exact unlearning of the last ``k`` blocks.

    First RE-INITIALISES the last ``k`` blocks and the head, then trains them exactly as CF-k
    (same loss, optimiser and schedule; ``theta0`` is the re-initialised weights, so the L2
    term never pulls towards the original). The re-initialisation, drawn from the method's
    seed: convolution weights Kaiming-normal (fan-out mode, ReLU gain) and biases 0;
    Linear weights Xavier-uniform (``U(+-sqrt(6 / (fan_in + fan_out)))``) and biases 0, an
    attention layer's input projections likewise (its output projection is a Linear layer);
    batch-norm weight 1, bias 0 and fresh running statistics (layer / group norm: 1 and 0).
    ``epochs = 0`` does only the re-initialisation. The result is an exact unlearning of the
    re-initialised layers only: the frozen features still saw the forget set.

    The defaults are DeepUnlearn's, set for tens of thousands of retain rows; on small data
    they are few steps: the digits CNN (5 batches per epoch) ends at retain accuracy 0.75 with
    them, 0.97 with ``lr = 0.1``.

    Differences from the reference: its retain loader is augmented (random flips and crops);
    augmentation is NOT implemented here, the retain rows are used as they are. Its
    ``training_epoch_factor``, ``sgda_learning_rate`` and ``momentum`` are searched but unused,
    so they are not hyperparameters here. The trained blocks run in training mode so their
    re-initialised batch-norm statistics are re-estimated (the reference only resets the
    batch-norm weight and bias and trains in eval mode, so it keeps the original running
    statistics under re-initialised weights).
    """

    reinitialise = True


def _reinitialise(modules: list[nn.Module], generator: torch.Generator) -> list[str]:
    """Re-initialise every layer inside ``modules`` in place (see :class:`ExactUnlearningK`); returns their types."""
    done, seen = [], set()
    with torch.no_grad():
        for module in modules:
            for sub in module.modules():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                if isinstance(sub, nn.modules.conv._ConvNd):
                    sub.weight.copy_(kaiming_uniform_fan_out(sub.weight, generator))
                    if sub.bias is not None:
                        sub.bias.zero_()
                elif isinstance(sub, nn.Linear):
                    fan_out, fan_in = sub.weight.shape
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    sub.weight.copy_((2 * rand_like(sub.weight, generator) - 1) * bound)
                    if sub.bias is not None:
                        sub.bias.zero_()
                elif reset_normalisation(sub):
                    pass
                elif isinstance(sub, nn.MultiheadAttention) and sub.bias_k is None and sub.bias_v is None:
                    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                        w = getattr(sub, name, None)
                        if w is not None:
                            bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                            w.copy_((2 * rand_like(w, generator) - 1) * bound)
                    if sub.in_proj_bias is not None:
                        sub.in_proj_bias.zero_()
                elif any(True for _ in sub.parameters(recurse=False)):
                    raise MethodError(f"eu-k cannot re-initialise a {type(sub).__name__} layer (it knows convolutions, "
                                      "linear and normalisation layers); use cf-k, or a model built from those layers.")
                else:
                    continue
                done.append(type(sub).__name__)
    return done
