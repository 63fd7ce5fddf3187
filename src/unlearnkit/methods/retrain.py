"""Retraining on the corrected data: the gold standard, and its warm-started variant."""

from __future__ import annotations


from unlearnkit import timing
from unlearnkit.errors import MethodError
from unlearnkit.influence.updates import UnlearnResult
from unlearnkit.methods.base import Method, register
from unlearnkit.training import retrain


@register(
    "retrain",
    summary="train from scratch on the corrected data with the model's own training config or loop (same seed)",
    reference="The reference every method is measured against (exact unlearning).",
)
class Retrain(Method):
    warm_start = False

    def unlearn(self, model, data, changes, *, val=None, device=None):
        if getattr(model, "train_config", None) is None and getattr(model, "train_fn", None) is None:
            raise MethodError(f"{self.name} repeats the model's training recipe, and this {model.kind} model carries "
                              "none (it was not trained by unlearnkit.train). Train it with unlearnkit.train(model, "
                              "data, train_fn=your_loop) or config=TrainConfig(...), or call "
                              "unlearnkit.retrain(model, data, changes, train_fn=your_loop) directly.")
        start = timing.start()
        resolved = changes.resolve(data)
        new = retrain(model, resolved.corrected, device=device, warm_start=self.warm_start)
        return UnlearnResult(new, self.name, timing.since(start), resolved.n_affected,
                             diagnostics={"rows": len(resolved.corrected)})


@register(
    "retrain-warm",
    summary="retrain on the corrected data starting from the current parameters (strong baseline for convex models)",
    reference="Warm-started retraining; exact for convex models at convergence.",
)
class WarmRetrain(Retrain):
    warm_start = True
