"""``evaluate(original, unlearned, retrained, splits)``: every requested metric for all three models."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from unlearnkit.errors import MetricError
from unlearnkit.metrics import base
from unlearnkit.metrics.base import MetricValue, as_value
from unlearnkit.metrics.closeness import check_same_architecture
from unlearnkit.metrics.context import SUBJECTS, Context, Costs, EvalSplits
from unlearnkit.models.base import UnlearnableModel

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MetricRow:
    """One metric for the three models: values, intervals, direction and provenance."""

    metric: str
    family: str
    higher_is_better: bool | None
    ideal: str
    original: float | None
    unlearned: float | None
    retrained: float | None
    intervals: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)

    def value(self, subject: str) -> float | None:
        if subject not in SUBJECTS:
            raise MetricError(f"Unknown model {subject!r}; valid: {', '.join(SUBJECTS)}.")
        return getattr(self, subject)


class MetricTable:
    """The result of :func:`evaluate`: one row per metric, columns original/unlearned/retrained.

    ``table["mia_loss_test"].unlearned`` reads a value; :meth:`long` gives the tidy long form
    (one record per metric and model), :meth:`to_csv`, :meth:`to_json` and :meth:`to_markdown`
    export it.
    """

    def __init__(self, rows: Iterable[MetricRow]) -> None:
        self.rows = list(rows)
        self._index = {r.metric: r for r in self.rows}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> MetricRow:
        try:
            return self._index[name]
        except KeyError:
            raise MetricError(f"The table has no metric {name!r}; it has: {', '.join(self._index)}.") from None

    @property
    def metrics(self) -> list[str]:
        return [r.metric for r in self.rows]

    def long(self) -> list[dict]:
        """Tidy records ``{metric, model, value, low, high, higher_is_better, ideal, family}``."""
        out = []
        for r in self.rows:
            for subject in SUBJECTS:
                low, high = r.intervals.get(subject, (None, None))
                out.append({"metric": r.metric, "model": subject, "value": r.value(subject), "low": low, "high": high,
                            "higher_is_better": r.higher_is_better, "ideal": r.ideal, "family": r.family})
        return out

    def to_records(self) -> list[dict]:
        """One dict per metric (wide form)."""
        return [{"metric": r.metric, "family": r.family, "higher_is_better": r.higher_is_better, "ideal": r.ideal,
                 **{s: r.value(s) for s in SUBJECTS}} for r in self.rows]

    def to_json(self) -> str:
        """JSON list of rows; NaN (undefined) values are written as ``null``."""
        rows = [{**asdict(r), "intervals": {k: list(v) for k, v in r.intervals.items()}} for r in self.rows]
        return json.dumps(_nan_to_none(rows), indent=2, default=_json_default, allow_nan=False)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["metric", "model", "value", "low", "high", "higher_is_better",
                                                 "ideal", "family"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.long())
        return buf.getvalue()

    def to_markdown(self) -> str:
        lines = ["| metric | direction | original | unlearned | retrained |", "|---|---|---:|---:|---:|"]
        for r in self.rows:
            cells = [_fmt(r.value(s), r.intervals.get(s)) for s in SUBJECTS]
            lines.append(f"| {r.metric} | {direction(r)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return f"MetricTable({len(self.rows)} metrics: {', '.join(self.metrics)})"


def direction(row: MetricRow) -> str:
    if row.higher_is_better is None:
        return f"-> {row.ideal}"
    return "higher" if row.higher_is_better else "lower"


def _fmt(value, interval=None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = f"{value:.3e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.4f}"
    if interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def default_metrics(ctx: Context) -> list[str]:
    """Every cheap metric whose inputs are present."""
    return [n for n in base.names() if base.info(n).cost == "cheap" and all(ctx.has(need) for need in base.info(n).needs)]


def evaluate(
    original: UnlearnableModel | None,
    unlearned,
    retrained,
    splits: EvalSplits,
    metrics: list[str] | None = None,
    *,
    costs: dict | None = None,
    shadow=None,
    method=None,
    canary=None,
    canary_scorer=None,
    seed: int = 123,
    lira_fix_variance: bool = False,
    svc_max_samples: int = 2000,
    batch_size: int = 4096,
    device=None,
    train_fn=None,
    progress: Progress | None = None,
) -> MetricTable:
    """Compute metrics for the original, unlearned and retrained models.

    Parameters
    ----------
    original, unlearned, retrained:
        Models of one architecture. ``unlearned`` may be an ``UnlearnResult`` (its time and
        derivative counts become the unlearning costs); ``retrained`` may be an
        ``UnlearnResult`` of the ``retrain`` method or a model from ``unlearnkit.retrain`` /
        ``train`` (which records ``train_seconds``). ``original`` or ``retrained`` may be
        ``None``; metrics that need them are then skipped (or refused if named).
    splits:
        :class:`EvalSplits`: retain, forget, and optionally val, test and corrected data.
    metrics:
        Names from :func:`unlearnkit.metrics.names`; ``None`` computes every cheap metric whose
        inputs are present, and one that cannot be computed on these inputs (e.g. the loss attack
        on a forget set of fewer than 10 rows) is reported as NaN with the reason in
        ``row.detail["error"]``; a metric named here raises instead. Expensive metrics (LiRA,
        U-LiRA, exposure) run only when named.
    costs:
        Optional ``{"unlearned": Costs, "retrained": Costs}`` overriding what the models carry.
    shadow, method:
        A :class:`~unlearnkit.metrics.lira.ShadowSetup` for LiRA, and for U-LiRA the unlearning
        method to re-run on the shadow models (a registered name, ``(name, hyperparameters)``
        or a callable ``(model, data, forget_ids) -> model``).
    canary, canary_scorer:
        A :class:`~unlearnkit.metrics.exposure.Canary` and ``scorer(model, texts) ->
        log-perplexities`` for the exposure metric.
    seed:
        Seed of the attacks' shuffles and cross-validation (123, as DeepUnlearn).
    batch_size, device:
        Rows per forward pass and where to run them (default: each model's device).
    train_fn:
        The user's training loop ``train_fn(module, data)`` (see :mod:`unlearnkit.user_training`),
        for models that unlearnkit did not train. With ``retrained=None`` the retrained
        reference is ``unlearnkit.retrain(original, splits.corrected, train_fn=train_fn)``,
        timed; splits without ``corrected`` (build them with :meth:`EvalSplits.from_changes`)
        or a missing ``original`` are then refused. A ``shadow`` setup built without a
        trainer is rebuilt to train its shadow models with ``train_fn``
        (:meth:`~unlearnkit.metrics.lira.ShadowSetup.with_train_fn`, same pool, splits and
        cache folder, a cache key naming ``train_fn``); one built with the same loop (the same
        key, :func:`~unlearnkit.user_training.train_fn_key`) is used as it is, and one built with
        another trainer or loop is refused.
    progress:
        ``progress(done, total, metric_name)`` after each metric.
    """
    if not isinstance(splits, EvalSplits):
        raise MetricError(f"splits must be an EvalSplits (EvalSplits.from_changes(train, changes, test=...)), "
                          f"got {type(splits).__name__}.")
    if train_fn is not None and not callable(train_fn):
        raise MetricError(f"train_fn must be a callable train_fn(module, data), got {type(train_fn).__name__}.")
    if train_fn is not None and retrained is None:
        if splits.corrected is None or original is None:
            missing = "splits.corrected (the corrected training data)" if splits.corrected is None else "the original model"
            raise MetricError(f"evaluate(train_fn=...) retrains the reference on the corrected training data from the "
                              f"original model, but {missing} is missing: build the splits with "
                              "EvalSplits.from_changes(train, changes, test=...) (or pass corrected=changes.apply(train)) "
                              "and the original model, or pass retrained= (e.g. unlearnkit.retrain(original, train, "
                              "changes, train_fn=fn)). For shadow models only, use ShadowSetup(..., train_fn=fn).")
        if isinstance(original, UnlearnableModel):
            from unlearnkit.training import retrain

            retrained = retrain(original, splits.corrected, train_fn=train_fn, device=device)
    if train_fn is not None and shadow is not None:
        shadow = _shadow_with(shadow, train_fn)
    models = {"original": original, "unlearned": getattr(unlearned, "model", unlearned),
              "retrained": getattr(retrained, "model", retrained)}
    if models["unlearned"] is None:
        raise MetricError("evaluate needs the unlearned model.")
    present = {k: m for k, m in models.items() if m is not None}
    for name, model in present.items():
        if not isinstance(model, UnlearnableModel):
            raise MetricError(f"The {name} model must be an unlearnkit model, got {type(model).__name__}; make a "
                              "torch.nn.Module one with unlearnkit.wrap(module).")
    for name, model in present.items():
        if name != "unlearned":
            check_same_architecture(model, models["unlearned"], f"{name} and unlearned models")
    resolved_costs = {"unlearned": Costs.of(unlearned), "retrained": Costs.of(retrained)}
    for key, value in (costs or {}).items():
        if key not in ("unlearned", "retrained"):
            raise MetricError(f"costs keys are 'unlearned' and 'retrained', got {key!r}.")
        resolved_costs[key] = Costs.of(value)
    if lira_fix_variance not in (True, False):
        raise MetricError("lira_fix_variance must be True or False.")
    for label, value, low in (("seed", seed, 0), ("svc_max_samples", svc_max_samples, 10), ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise MetricError(f"{label} must be an integer >= {low}, got {value!r}.")
    ctx = Context(models=models, splits=splits, costs=resolved_costs, shadow=shadow, method=method, canary=canary,
                  canary_scorer=canary_scorer, seed=int(seed), lira_fix_variance=lira_fix_variance,
                  svc_max_samples=int(svc_max_samples), batch_size=int(batch_size), device=device, train_fn=train_fn)
    if metrics is None:
        names = default_metrics(ctx)
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        names = list(dict.fromkeys(metrics))
        for name in names:
            meta = base.info(name)
            missing = [need for need in meta.needs if not ctx.has(need)]
            if missing:
                raise MetricError(f"Metric {name!r} needs " + "; ".join(base.NEED_HELP[n] for n in missing) + ".")
    rows = []
    for i, name in enumerate(names):
        meta = base.info(name)
        try:
            rows.append(_row(ctx, meta))
        except MetricError as exc:
            if metrics is not None:
                raise  # a metric the caller named must not fail silently
            log.warning("metric %s not computed: %s", name, exc)
            rows.append(_failed_row(meta, str(exc)))
        if progress is not None:
            progress(i + 1, len(names), name)
    return MetricTable(rows)


def _shadow_with(shadow, train_fn):
    """``shadow`` training its models with ``train_fn``; a setup already bound to another recipe is refused."""
    from unlearnkit.metrics.lira import ShadowSetup
    from unlearnkit.user_training import train_fn_key

    if not isinstance(shadow, ShadowSetup):
        raise MetricError(f"shadow must be a ShadowSetup, got {type(shadow).__name__}.")
    if shadow.train_fn is not None and train_fn_key(shadow.train_fn) == train_fn_key(train_fn):
        return shadow  # the same loop (also a bound method or partial made again)
    if shadow.default_trainer:
        return shadow.with_train_fn(train_fn)
    raise MetricError("The shadow setup trains its models with another trainer than train_fn=; build it with "
                      "ShadowSetup(..., train_fn=train_fn), or leave trainer/train_fn out of it.")


def _failed_row(meta: base.MetricInfo, reason: str) -> MetricRow:
    nan = float("nan")
    return MetricRow(meta.name, meta.family.value, meta.higher_is_better, meta.ideal, nan, nan, nan,
                     detail={"error": reason})


def _row(ctx: Context, meta: base.MetricInfo) -> MetricRow:
    values, intervals, detail = {}, {}, {}
    for subject in SUBJECTS:
        if ctx.models.get(subject) is None:
            values[subject] = None
            continue
        result: MetricValue | None = as_value(meta.fn(ctx, subject))
        if result is None:
            values[subject] = None
            continue
        values[subject] = result.value
        if result.low is not None and result.high is not None:
            intervals[subject] = (result.low, result.high)
        if result.detail:
            detail[subject] = result.detail
    return MetricRow(meta.name, meta.family.value, meta.higher_is_better, meta.ideal, values["original"],
                     values["unlearned"], values["retrained"], intervals, detail)
