"""Noise and adversarial methods: UNSIR (error-maximising noise) and Boundary Shrink (nearest-but-incorrect labels).

Neither is among DeepUnlearn's 18 methods (Cadet et al. 2024 do not evaluate them); they are
written from their papers. Both use the frozen original model (``ctx.original``, evaluation mode) to
build their training data, then train a copy.
"""

from __future__ import annotations

import logging
import torch

from unlearnkit.methods.base import Hyperparameter, register
from unlearnkit.methods.deep import SEED, DeepMethod
from unlearnkit.methods.loops import Tensors, class_logits, cross_entropy, fit, randn_like, sgd, step, trainable

logger = logging.getLogger(__name__)

UNSIR_REF = ("Tarun, Chundawat, Mandal, Kankanhalli. Fast Yet Effective Machine Unlearning. IEEE Transactions on "
             "Neural Networks and Learning Systems (2023); arXiv:2111.08947")
UNSIR_CODE = "Tarun et al. 2023, authors' reference code"
BOUNDARY_REF = "Chen, Gao, Liu, Peng, Zhou. Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the " \
               "Decision Space. CVPR 2023"


# ============================================================================ UNSIR
@register(
    "unsir",
    summary="UNSIR: learn error-maximising noise for the forget rows, train on it with a retain subsample (impair), "
            "then on the retain subsample alone (repair)",
    hyperparameters=(
        Hyperparameter("noise_steps", int, 40, "Adam steps optimising the noise", ">= 0",
                       UNSIR_CODE + " (5 epochs x 8 steps)"),
        Hyperparameter("noise_lr", float, 0.1, "Adam learning rate of the noise", "> 0", UNSIR_CODE),
        Hyperparameter("noise_l2", float, 0.1, "weight lambda of the noise's mean squared norm", ">= 0", UNSIR_CODE),
        Hyperparameter("impair_lr", float, 0.02, "Adam learning rate of the impair phase", "> 0", UNSIR_CODE),
        Hyperparameter("impair_epochs", int, 1, "passes over retain subsample + noise", ">= 0", UNSIR_CODE),
        Hyperparameter("repair_lr", float, 0.01, "Adam learning rate of the repair phase", "> 0", UNSIR_CODE),
        Hyperparameter("repair_epochs", int, 3, "passes over the retain subsample", ">= 0",
                       "ours: the authors' 1 epoch is dozens of steps on CIFAR subsets but 4 steps on 1000 rows; "
                       "3 epochs repair the digits CNN (retain accuracy 0.80 -> 0.98)"),
        Hyperparameter("retain_samples", int, 1000, "size of the retain subsample (all rows if larger than the retain set)",
                       ">= 1", "ours: the paper impairs and repairs on a subset of the retain data (a fixed number of "
                       "rows per class); 1000 rows in all suits small data"),
        Hyperparameter("batch_size", int, 256, "mini-batch size (noise optimisation, impair, repair)",
                       ">= 1", UNSIR_CODE),
        SEED,
    ),
    reference=UNSIR_REF,
)
class UNSIR(DeepMethod):
    """UNSIR: impair the model with error-maximising noise, then repair it on retained data.

    1. Noise: one tensor ``n_i`` per forget row (the shape of an input), initialised
       ``N(0, 1)`` from the seeded generator and labelled with that row's label ``y_i``. With
       the original model frozen (evaluation mode) the noise minimises, by Adam (``noise_lr``,
       ``noise_steps`` steps, in chunks of ``batch_size`` rows)::

           -(1/m) sum_i CE(f(n_i), y_i) + noise_l2 * (1/m) sum_i ||n_i||^2

       i.e. it *maximises* the model's loss on its label while staying bounded (the squared
       norm sums over the input's entries and averages over rows, the authors' regulariser).
    2. Impair: ``impair_epochs`` shuffled passes of CE over a random retain subsample of
       ``retain_samples`` rows concatenated with the noise rows; Adam (``impair_lr``).
    3. Repair: ``repair_epochs`` passes of CE over the same retain subsample; a fresh Adam
       (``repair_lr``).

    The paper learns one noise batch per forgotten *class*; one noise per forget row (with the
    row's label) is the same construction for an arbitrary forget set. Defaults are the authors'
    except ``repair_epochs`` (3 instead of 1, see its source) and ``retain_samples``.
    """

    def run(self, net, task, ctx):
        model, forget = ctx.original, ctx.forget
        noise = randn_like(forget.X, ctx.generator)
        initial = self._noise_loss(model, noise, forget.y)
        for start in range(0, len(forget), self.batch_size):
            chunk = noise[start:start + self.batch_size].clone().requires_grad_(True)
            y = forget.y[start:start + self.batch_size]
            opt = torch.optim.Adam([chunk], lr=self.noise_lr)
            for _ in range(self.noise_steps):
                loss = -cross_entropy(model, model(chunk), y) + self.noise_l2 * chunk.pow(2).flatten(1).sum(1).mean()
                step(opt, loss)
            noise[start:start + self.batch_size] = chunk.detach()
        final = self._noise_loss(model, noise, forget.y)
        logger.debug("unsir: the original model's loss on the noise rose from %.3g to %.3g", initial, final)

        keep = ctx.retain.sample(self.retain_samples, ctx.generator)
        impaired = Tensors.of(torch.cat([keep.X, noise]), torch.cat([keep.y, forget.y]), n_classes=ctx.n_classes,
                              name="retain sample + noise")
        impair = fit(net, impaired, epochs=self.impair_epochs, batch_size=self.batch_size,
                     optimizer=torch.optim.Adam(trainable(net), lr=self.impair_lr), generator=ctx.generator)
        repair = fit(net, keep, epochs=self.repair_epochs, batch_size=self.batch_size,
                     optimizer=torch.optim.Adam(trainable(net), lr=self.repair_lr), generator=ctx.generator)
        return {"noise_loss_initial": initial, "noise_loss_final": final, "noise_rows": int(noise.shape[0]),
                "retain_rows": len(keep), "impair_steps": impair, "repair_steps": repair}

    @staticmethod
    @torch.no_grad()
    def _noise_loss(model, noise, y) -> float:
        return float(cross_entropy(model, model(noise), y))


# ============================================================================ Boundary Shrink
def nearest_incorrect_labels(model, X: torch.Tensor, y: torch.Tensor, *, bound: float,
                             batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest-but-incorrect label under one FGSM step of size ``bound`` on ``model``.

    ``x_adv = x + bound * sign(grad_x l(f(x), y))`` with ``l`` the model's per-sample loss
    (the gradient of each row's own loss: rows do not interact, as ``model`` is in evaluation
    mode); the label is ``argmax_{c != y} f(x_adv)_c``, never ``y``. Returns the labels and a
    boolean tensor saying which rows the step carried across the boundary
    (``argmax_c f(x_adv)_c != y``).
    """
    labels, crossed = [], []
    for start in range(0, y.shape[0], batch_size):
        x = X[start:start + batch_size].detach().clone().requires_grad_(True)
        yb = y[start:start + batch_size]
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model.per_sample_loss(model(x), yb).sum(), x)
        with torch.no_grad():
            logits = class_logits(model(x + bound * grad.sign())).clone()
            crossed.append(logits.argmax(dim=1) != yb)
            logits[torch.arange(yb.numel(), device=yb.device), yb] = -torch.inf
            labels.append(logits.argmax(dim=1))
    if not labels:
        return y.clone(), torch.zeros_like(y, dtype=torch.bool)
    return torch.cat(labels), torch.cat(crossed)


@register(
    "boundary-shrink",
    summary="Boundary Shrink: relabel each forget row with its nearest-but-incorrect class (one FGSM step on the "
            "original model) and fine-tune on the relabelled forget rows",
    hyperparameters=(
        Hyperparameter("bound", float, 0.1, "FGSM step size (L-infinity radius, in input units)", "> 0",
                       "Chen et al. 2023 (bound 0.1)"),
        Hyperparameter("lr", float, 1e-4, "SGD learning rate", "log-uniform [1e-5, 1e-1]",
                       "ours: the paper's 1e-5 leaves the digits CNN unchanged (class-wise forget accuracy 1.0); 1e-4 "
                       "removes the class and keeps retain accuracy; 1e-3 damages it"),
        Hyperparameter("momentum", float, 0.9, "SGD momentum", "[0, 1)", "Chen et al. 2023"),
        Hyperparameter("weight_decay", float, 0.0, "SGD weight decay", ">= 0", "Chen et al. 2023 (none)"),
        Hyperparameter("batch_size", int, 64, "mini-batch size over the forget rows", ">= 1", "ours"),
        Hyperparameter("epochs", int, 10, "passes over the relabelled forget rows", ">= 0", "Chen et al. 2023 (10 epochs)"),
        SEED,
    ),
    reference=BOUNDARY_REF,
)
class BoundaryShrink(DeepMethod):
    """Boundary Shrink: move each forget row across its nearest decision boundary.

    For each forget row ``(x, y)``, one FGSM step on the frozen original model ``f0`` (evaluation
    mode) gives ``x_adv = x + bound * sign(grad_x CE(f0(x), y))``, and the row's
    *nearest-but-incorrect* label is ``y_nbi = argmax_{c != y} f0(x_adv)_c`` (the attack's
    prediction when it crossed the boundary, otherwise the best other class; never ``y``).
    The model is then fine-tuned on the clean inputs with the new labels: ``epochs`` shuffled
    passes minimising ``CE(f(x), y_nbi)`` with SGD (``lr``, ``momentum``, ``weight_decay``).
    No retain data is used. ``x_adv`` is not clipped to a data range (inputs are not assumed to
    be images in [0, 1]). The paper's learning rate 1e-5 does nothing to the digits CNN; the
    default here is 1e-4 ("ours").
    """

    def run(self, net, task, ctx):
        forget = ctx.forget
        y_nbi, crossed = nearest_incorrect_labels(ctx.original, forget.X, forget.y, bound=self.bound)
        opt = sgd(trainable(net), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        relabelled = Tensors.of(forget.X, y_nbi, n_classes=ctx.n_classes, name="forget with nearest wrong labels")
        steps = fit(net, relabelled, epochs=self.epochs, batch_size=self.batch_size, optimizer=opt, generator=ctx.generator)
        return {"steps": steps, "attack_crossed_fraction": float(crossed.float().mean()) if len(forget) else 0.0}
