"""SalUn: saliency unlearning (a gradient-saliency mask, then random-relabel training of the masked weights)."""

from __future__ import annotations

import torch

from unlearnkit.errors import MethodError
from unlearnkit.methods.base import Hyperparameter, register
from unlearnkit.methods.deep import DEEPUNLEARN, DU, DeepMethod, generic
from unlearnkit.methods.loops import Tensors, relabel_fit, sgd

FAN = ("Fan, Liu, Zhang, Wei, Wong, Liu. SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency "
       "in Both Image Classification and Generation. ICLR 2024 (arXiv:2310.12508).")


def saliency_mask(model: torch.nn.Module, forget_tensors: Tensors, threshold: float, batch_size: int) -> dict[str, torch.Tensor]:
    """The SalUn weight-saliency mask: 1 for the top ``threshold`` fraction of parameters by ``|g|``.

    ``g = grad_theta sum_{(x, y) in forget} -l(x, y; theta)``: the gradient of the forget-set
    loss *summed* over the rows (each row counted once; the sign does not matter for ``|g|``),
    accumulated over mini-batches of ``batch_size`` with the model in eval mode (batch-norm
    layers use their running statistics; nothing in ``model`` changes: no buffer, no ``.grad``).
    Exactly ``round(threshold * n)`` of the ``n`` trainable entries are 1, chosen globally
    across all parameter tensors (ties broken by position, so the mask is deterministic).

    Returns ``{name: bool tensor shaped like the parameter}`` for every named parameter
    (all ``False`` for a parameter that does not require a gradient).
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise MethodError(f"SalUn's threshold is the fraction of weights to update; it must be in [0, 1], got {threshold}.")
    if batch_size < 1:
        raise MethodError(f"batch_size must be >= 1, got {batch_size}.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise MethodError("The model has no trainable parameters: no saliency mask can be computed.")
    params = [p for _, p in named]
    total = [torch.zeros_like(p) for p in params]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for x, y in forget_tensors.batches(batch_size):
            loss = -model.per_sample_loss(model(x), y).sum()
            for acc, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    acc.add_(g)
    finally:
        for m, training in modes.items():
            m.train(training)
    scores = torch.cat([t.abs().reshape(-1) for t in total])
    k = int(round(float(threshold) * scores.numel()))
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    mask, start = {}, 0
    for name, p in named:
        mask[name] = flat[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    for name, p in model.named_parameters():
        mask.setdefault(name, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
    return mask


@register(
    "salun",
    summary="SalUn: mask the weights most salient for the forget loss, then random-relabel training of those weights only",
    hyperparameters=generic(lr=0.01, momentum=0.0, weight_decay=0.0, epochs=10, source=DU + " (salun.py)",
                            epochs_help="passes over retain + relabelled forget") + (
        Hyperparameter("threshold", float, 0.5, "fraction of the weights (the most salient) that training may change",
                       "[0, 1] (DeepUnlearn search)", DU + " (salun.py)"),
    ),
    reference=FAN + " " + DEEPUNLEARN + " (salun.py)",
)
class SalUn(DeepMethod):
    """Saliency unlearning.

    1. Mask: ``m = saliency_mask(model, forget, threshold, batch_size)`` (see :func:`saliency_mask`):
       ``m_j = 1`` for the ``threshold`` fraction of weights with the largest
       ``|d/d theta_j sum_forget -CE|``.
    2. Random-relabel training as SRL: each epoch the forget rows get labels drawn uniformly
       from the classes other than their own, and one shuffled pass of SGD minimises the mean
       ``CE`` over the retain set plus the relabelled forget rows, with every gradient
       multiplied by ``m`` (weight decay included: ``g <- m * (g + wd * theta)``), so the
       weights outside the mask keep their original values exactly:
       ``theta_u = m * theta_trained + (1 - m) * theta_o`` as in Fan et al. (2024).

    Fixes of the reference: (a) its mask accumulates into the model copy's ``.grad`` that the
    optimizer (bound to the other model) never zeroes, so batch ``b`` is counted ``B - b + 1``
    times; here every forget row is counted once. (b) Its random labels may equal the true
    label (see ``srl``). (c) Its SGD weight decay also shrinks the unmasked weights; here the
    mask applies to it too. DeepUnlearn's ``mask_optimizer`` lr / momentum / weight decay are
    searched but never used, so they are not hyperparameters here.
    """

    def run(self, net, task, ctx):
        mask = saliency_mask(net, ctx.forget, self.threshold, self.batch_size)
        pairs = [(p, mask[n].to(p.dtype)) for n, p in net.named_parameters() if p.requires_grad]
        wd = self.weight_decay

        def masked() -> None:
            for p, m in pairs:
                if p.grad is not None:
                    if wd:
                        p.grad.add_(p.detach(), alpha=wd)
                    p.grad.mul_(m)

        opt = sgd([p for p, _ in pairs], lr=self.lr, momentum=self.momentum, weight_decay=0.0)
        steps = relabel_fit(net, ctx.retain, ctx.forget, n_classes=ctx.n_classes, epochs=self.epochs,
                            batch_size=self.batch_size, optimizer=opt, generator=ctx.generator, after_backward=masked)
        ones = sum(int(m.sum()) for m in mask.values())
        size = sum(m.numel() for m in mask.values())
        return {"steps": steps, "mask_density": ones / max(size, 1), "mask_ones": ones}
