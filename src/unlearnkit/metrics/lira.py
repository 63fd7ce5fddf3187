"""Per-sample membership attacks with shadow models: LiRA and U-LiRA.

**Shadow setup.** A pool of ``n`` labelled rows (it must contain the rows to attack: the forget
and test sets) is split ``K`` times, independently, into a random "in" half and "out" half (as
DeepUnlearn's U-LiRA splits; a row is "in" for about ``K/2`` splits). Independence matters: if
every row were "in" for exactly ``K/2`` splits (the LiRA reference code's balancing), a row's
membership in one split would change its population sizes in the others and bias the
leave-one-split-out fits of U-LiRA. For each split
a shadow model is trained on its "in" half, and the "in" half is cut into ``P`` disjoint forget
partitions of equal size. Shadow models are trained by a pluggable ``trainer(template, data,
seed) -> model`` (by default the template's own training recipe, seed ``base + s``), or by the
user's own training loop ``train_fn(module, data)`` (:mod:`unlearnkit.user_training`: a
re-initialised copy of the template's module, the loop run with the global generator seeded
``base + s``) and, with a ``cache_dir``, saved with their outputs on the pool, so an
interrupted evaluation resumes. The cache key names the recipe (the training config, or the
``train_fn``'s key, :func:`~unlearnkit.user_training.train_fn_key`: its qualified name and a
digest of its code and of what it captures) and, for a wrapped module, the architecture and
loss (:func:`~unlearnkit.user_training.architecture_digest`), so two recipes or architectures
never share shadow models. A shadow model read back from the cache carries the recipe a freshly
trained one carries (its ``train_fn`` and ``train_seed``, or its ``train_config``).

**LiRA** (Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022).
Statistic: the logit-scaled confidence ``phi(x, y) = log(p_y / (1 - p_y))``. For each target row,
fit Gaussians to ``phi`` under the shadow models that trained on it (in) and those that did not
(out). Online score: ``log N(phi_t; mu_in, s_in^2) - log N(phi_t; mu_out, s_out^2)``; offline
score (out models only): ``log Phi((phi_t - mu_out) / s_out)``, the one-sided test. With
``fix_variance`` the per-row standard deviations are replaced by one pooled within-row standard
deviation (for few shadow models). Reported as ROC AUC and TPR at 0.1% and 1% FPR of the
target model's forget rows (positives) against its test rows (negatives).

**U-LiRA** (Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a False
Sense of Privacy", 2024; DeepUnlearn, Cadet et al. 2024, runs a simplified per-row form of it).
For every split ``s`` and partition ``f`` the method under test unlearns partition ``f`` from
split ``s``'s shadow model, giving ``K x P`` unlearned models. For a row ``x`` each split gives
one case: *forgotten* (the model of the split that unlearned ``x``'s partition) where ``x`` was
in, *never seen* (the model of one partition drawn at random) where ``x`` was out. A per-row
Gaussian likelihood ratio between the two populations, fitted on the other splits (leave one
split out) with the *same number of cases on both sides*, scores split ``s``'s case: "forgotten"
or "never seen"? Exact unlearning makes the two populations identical, and then, because both
sides are fitted alike from equally many cases, the expected membership probability
``p = phi_f / (phi_f + phi_n)`` of a forgotten case is exactly 0.5 and the AUC is 0.5 (see
:func:`ulira_from_statistics`). Two statistics: binary correctness ``1[argmax = y]`` (the one
DeepUnlearn uses; the mean is smoothed, ``(k + 1/2) / (m + 1)``, with ``s = sqrt(mu (1 - mu))``,
which avoids a NaN when a population is constant) and the logit-scaled confidence of LiRA.

This differs from DeepUnlearn's code, which fits each row's Gaussians on all shadow models
without leaving a split out and without smoothing, and from a fit on all ``P`` never-seen models
per split against one forgotten model: with unequal populations the smaller one's fit is noisier,
a fresh case is less likely under it, and ``p`` falls below 0.5 even for exact unlearning (on
synthetic statistics with known truth, 0.41 for exact unlearning against 0.46 for a model that
forgets nothing), so a method that does not forget can look better than retraining.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import norm

from unlearnkit.atomic import atomic_write
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import MetricError, UnlearnKitError
from unlearnkit.metrics.base import Family, MetricValue, Need, register
from unlearnkit.metrics.outputs import ModelOutputs, logits_matrix, model_outputs
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.user_training import architecture_digest

log = logging.getLogger(__name__)

CARLINI = "Carlini et al., 'Membership Inference Attacks From First Principles' (IEEE S&P 2022)"
HAYES = ("Hayes et al., 'Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy' "
         "(2024); per-row form as in Cadet et al., 'Deep Unlearn: Benchmarking Machine Unlearning for Image "
         "Classification' (2024), with balanced populations and leave-one-split-out fits")

ULIRA_MIN_SPLITS = 8
"""U-LiRA needs this many shadow splits (two per population after leaving one out, with margin)."""

MIN_STD = 1e-3
"""Floor of a fitted standard deviation (logit-scaled statistic)."""

Trainer = Callable[[UnlearnableModel, Dataset, int], UnlearnableModel]
Progress = Callable[[int, int, str], None]


class Statistic(str, enum.Enum):
    """Per-model statistic of a row that the attacks model."""

    LOGIT = "logit"
    CORRECTNESS = "correctness"


def statistic(outputs: ModelOutputs, kind: Statistic | str) -> np.ndarray:
    kind = Statistic(kind)
    return outputs.logit_scaled if kind is Statistic.LOGIT else outputs.correct


class RecipeTrainer:
    """The default shadow trainer: the template's own recipe with the seed replaced.

    The recipe is ``config`` if given, else the loop the template was trained with
    (``template.train_fn``, see :class:`FnTrainer`), else its ``train_config``. A wrapped model
    (:func:`unlearnkit.wrap`) that carries neither is refused: its shadow models must be trained
    the way the user trained it, so pass ``train_fn=``.
    """

    def __init__(self, config=None, *, device=None) -> None:
        self.config = config
        self.device = device

    def _recipe(self, template: UnlearnableModel):
        from unlearnkit.training import TrainConfig

        if self.config is not None:
            return self.config
        if getattr(template, "train_fn", None) is not None:
            return FnTrainer(template.train_fn, device=self.device)
        config = getattr(template, "train_config", None)
        if config is None and template.kind == "wrapped":
            raise MetricError("The wrapped model carries no training recipe, so its shadow models cannot be trained "
                              "the way it was: pass your training loop, ShadowSetup(..., train_fn=fn) or "
                              "evaluate(..., train_fn=fn) with fn(module, data) training the module in place, or a "
                              "TrainConfig as trainer=RecipeTrainer(config).")
        return config or TrainConfig()

    def __call__(self, template: UnlearnableModel, data: Dataset, seed: int) -> UnlearnableModel:
        from dataclasses import replace

        from unlearnkit.training import train

        recipe = self._recipe(template)
        if isinstance(recipe, FnTrainer):
            return recipe(template, data, seed)
        fresh = template.fresh()
        return train(fresh, data, config=replace(recipe, seed=int(seed)), device=self.device)

    def key(self, template: UnlearnableModel) -> str:
        recipe = self._recipe(template)
        if isinstance(recipe, FnTrainer):
            return recipe.key(template)
        return "recipe:" + json.dumps(recipe.to_dict(), sort_keys=True, default=str)


class FnTrainer:
    """Shadow models trained by the user's loop ``train_fn(module, data)`` (:mod:`unlearnkit.user_training`).

    Shadow ``s`` is a copy of the template re-initialised from seed ``base + s`` and trained by
    ``train_fn`` with the global generator seeded the same way. Its cache key is
    ``"train_fn:"`` + :func:`~unlearnkit.user_training.train_fn_key` (the qualified name and a
    digest of the code and captured settings, or ``train_fn.cache_key``).
    """

    def __init__(self, train_fn, *, device=None) -> None:
        from unlearnkit.user_training import check_train_fn

        try:
            check_train_fn(train_fn)
        except UnlearnKitError as exc:
            raise MetricError(str(exc)) from None
        self.train_fn = train_fn
        self.device = device

    def __call__(self, template: UnlearnableModel, data: Dataset, seed: int) -> UnlearnableModel:
        from unlearnkit.user_training import train_with_fn

        return train_with_fn(template, data, self.train_fn, seed=int(seed), device=self.device)

    def key(self, template: UnlearnableModel | None = None) -> str:
        from unlearnkit.user_training import train_fn_key

        return "train_fn:" + train_fn_key(self.train_fn)


class ShadowSetup:
    """Shadow models on random halves of a pool, for LiRA and U-LiRA (see the module docstring).

    Parameters
    ----------
    pool:
        Rows the shadow models are trained on and evaluated on; must contain (by id, with the
        same features and labels) every row an attack scores.
    template:
        A model of the architecture to attack (its ``train_config`` is the default recipe).
    n_splits:
        ``K`` >= 4 (16 or more for stable per-row fits); each shadow model trains on an independent random half.
    n_partitions:
        ``P`` >= 2 disjoint forget partitions of each split's "in" half (U-LiRA).
    seed:
        Seeds the splits, the partitions and (as ``seed + s``) the shadow models' training.
    trainer, trainer_key:
        ``trainer(template, data, seed) -> model`` (default: :class:`RecipeTrainer`). With a
        custom trainer and a ``cache_dir``, ``trainer_key`` (a string naming the recipe) is
        required so cached models of another recipe are never reused.
    train_fn:
        The user's training loop ``train_fn(module, data)`` (see :mod:`unlearnkit.user_training`
        and :class:`FnTrainer`), instead of ``trainer``; its key
        (:func:`~unlearnkit.user_training.train_fn_key`) enters the cache key.
    cache_dir:
        Where trained shadow models and their pool outputs are kept (resumable); ``None`` keeps
        them in memory.
    device, batch_size:
        Where shadow models are trained and evaluated, and rows per forward pass.
    progress:
        ``progress(done, total, message)`` as shadow models are trained.
    """

    def __init__(self, pool: Dataset, template: UnlearnableModel, *, n_splits: int = 16, n_partitions: int = 4,
                 seed: int = 0, trainer: Trainer | None = None, trainer_key: str | None = None,
                 train_fn=None, cache_dir: str | Path | None = None, device=None, batch_size: int = 4096,
                 progress: Progress | None = None) -> None:
        if not isinstance(pool, Dataset):
            raise MetricError(f"pool must be an unlearnkit Dataset, got {type(pool).__name__}.")
        if not isinstance(template, UnlearnableModel):
            raise MetricError(f"template must be an unlearnkit model, got {type(template).__name__}; make a "
                              "torch.nn.Module one with unlearnkit.wrap(module).")
        if not isinstance(n_splits, int) or n_splits < 4:
            raise MetricError(f"n_splits must be an integer >= 4, got {n_splits!r}.")
        if not isinstance(n_partitions, int) or n_partitions < 2:
            raise MetricError(f"n_partitions must be an integer >= 2, got {n_partitions!r}.")
        if len(pool) < 4 * n_partitions:
            raise MetricError(f"The pool has {len(pool)} rows; too few for {n_partitions} forget partitions of each half.")
        if trainer is not None and train_fn is not None:
            raise MetricError("Pass either trainer= or train_fn= to ShadowSetup, not both.")
        if train_fn is not None:
            trainer = FnTrainer(train_fn, device=device)
        if trainer is not None and not isinstance(trainer, (RecipeTrainer, FnTrainer)) and cache_dir is not None \
                and not trainer_key:
            raise MetricError("A custom trainer with a cache_dir needs trainer_key='<name of the recipe>', so that "
                              "cached shadow models of another recipe are never reused.")
        try:
            template.check_data(pool)
        except UnlearnKitError as exc:
            raise MetricError(f"The pool does not fit the template model: {exc}") from None
        self.pool = pool
        self.template = template
        self.n_splits = n_splits
        self.n_partitions = n_partitions
        self.seed = int(seed)
        self.trainer = trainer or RecipeTrainer(device=device)
        self.train_fn = train_fn
        self._trainer_key = trainer_key
        self._options = dict(n_splits=n_splits, n_partitions=n_partitions, seed=seed, cache_dir=cache_dir,
                             device=device, batch_size=batch_size, progress=progress)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.batch_size = int(batch_size)
        self.progress = progress
        self._memory: dict = {}
        self._masks = None

    @property
    def trainer_key(self) -> str:
        """The name of the shadow models' recipe in the cache key (a wrapped template without a recipe is refused here)."""
        if self._trainer_key:
            return self._trainer_key
        return self.trainer.key(self.template) if isinstance(self.trainer, (RecipeTrainer, FnTrainer)) else "custom"

    @property
    def default_trainer(self) -> bool:
        """Whether shadow models are trained by the template's own recipe (no trainer or train_fn given)."""
        return isinstance(self.trainer, RecipeTrainer) and self.trainer.config is None and self.train_fn is None

    def with_train_fn(self, train_fn) -> "ShadowSetup":
        """The same setup (pool, splits, seed, cache folder) with shadow models trained by ``train_fn``."""
        return ShadowSetup(self.pool, self.template, train_fn=train_fn, **self._options)

    # ------------------------------------------------------------------ splits
    @property
    def in_mask(self) -> np.ndarray:
        """``(K, n)`` booleans: row ``i`` of the pool is in split ``s``'s training half."""
        self._make_masks()
        return self._masks[0]

    @property
    def partitions(self) -> np.ndarray:
        """``(K, n)`` ints: the forget partition of each "in" row (``-1`` for "out" rows)."""
        self._make_masks()
        return self._masks[1]

    def _make_masks(self) -> None:
        if self._masks is not None:
            return
        n, K, P = len(self.pool), self.n_splits, self.n_partitions
        rng = np.random.default_rng([self.seed, 0x5EED])
        keep = np.zeros((K, n), dtype=bool)
        for s in range(K):  # independent random halves, as DeepUnlearn's U-LiRA splits
            keep[s, rng.permutation(n)[: n // 2]] = True
        parts = np.full((K, n), -1, dtype=np.int64)
        for s in range(K):
            idx = rng.permutation(np.flatnonzero(keep[s]))
            for f, chunk in enumerate(np.array_split(idx, P)):
                parts[s, chunk] = f
        self._masks = (keep, parts)

    def forget_ids(self, s: int, f: int) -> np.ndarray:
        """Pool ids of forget partition ``f`` of split ``s``."""
        return self.pool.ids[self.partitions[s] == f]

    def half(self, s: int) -> Dataset:
        """Split ``s``'s training half of the pool."""
        return self.pool.subset(np.flatnonzero(self.in_mask[s]), name=f"{self.pool.name}:shadow{s}")

    # ------------------------------------------------------------------ cache
    @property
    def key(self) -> str:
        """Hash of everything that determines the shadow models."""
        spec = {"pool": self.pool.fingerprint(), "n_splits": self.n_splits, "n_partitions": self.n_partitions,
                "seed": self.seed, "kind": self.template.kind, "config": self.template.config,
                "trainer": self.trainer_key}
        architecture = architecture_digest(self.template)
        if architecture:  # a wrapped module: its layers, parameter shapes and loss are not in its config
            spec["architecture"] = architecture
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _dir(self) -> Path | None:
        if self.cache_dir is None:
            return None
        d = self.cache_dir / f"shadow-{self.key}"
        d.mkdir(parents=True, exist_ok=True)
        manifest = d / "setup.json"
        if not manifest.exists():
            atomic_write(manifest, lambda tmp: Path(tmp).write_text(json.dumps({
                "pool": self.pool.name, "rows": len(self.pool), "n_splits": self.n_splits,
                "n_partitions": self.n_partitions, "seed": self.seed, "kind": self.template.kind,
                "config": self.template.config, "architecture": architecture_digest(self.template) or None,
                "trainer": self.trainer_key}, indent=2, default=str)))
        return d

    def model(self, s: int) -> UnlearnableModel:
        """Split ``s``'s shadow model (trained on its "in" half; cached)."""
        self._check_split(s)
        key = ("model", s)
        if key in self._memory:
            return self._memory[key]
        d = self._dir()
        path = d / f"original-s{s}.pt" if d is not None else None
        model = None
        if path is not None and path.exists():
            try:
                model = self._load(path, s)
                if self.device is not None:
                    model = model.to(self.device)
            except UnlearnKitError as exc:
                log.warning("ignoring unreadable cached shadow model %s (%s); retraining it", path, exc)
                model = None
        if model is None:
            model = self.trainer(self.template, self.half(s), self.seed + s)
            if path is not None:
                from unlearnkit.models.io import save_model

                save_model(model, path, metadata={"shadow_setup": self.key, "split": s,
                                                  "train_seconds": getattr(model, "train_seconds", None)})
        self._memory[key] = model
        return model

    def _load(self, path: Path, s: int) -> UnlearnableModel:
        """A cached shadow model carrying the recipe a freshly trained one carries.

        A zoo model loads from its file; a wrapped one into a copy of the template (weights
        checked). A model trained by a loop (``train_fn=``, or the loop the template carries)
        gets that loop and its seed, one trained by a config the file's ``train_config``.
        """
        from unlearnkit.models.io import load_model
        from unlearnkit.models.wrap import WrappedModel

        wrapped = isinstance(self.template, WrappedModel)
        model = load_model(path, module=self.template) if wrapped else load_model(path)
        recipe = self.trainer._recipe(self.template) if isinstance(self.trainer, RecipeTrainer) else self.trainer
        for attr in ("train_fn", "train_seed", "train_seconds"):
            model.__dict__.pop(attr, None)
        if isinstance(recipe, FnTrainer):
            model.__dict__.pop("train_config", None)  # the template's, copied with it; the loop trained this one
            model.__dict__.update(train_fn=recipe.train_fn, train_seed=self.seed + s)
        seconds = getattr(model, "metadata", {}).get("train_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            model.train_seconds = float(seconds)
        return model.eval()

    def logits(self, role: str, s: int, f: int | None = None, *, build: Callable[[], UnlearnableModel] | None = None) -> np.ndarray:
        """``(n, C)`` logits on the pool of the model ``role`` for split ``s`` (and partition ``f``).

        ``role="original"`` is the split's shadow model; other roles need ``build()`` to produce
        the model on a cache miss. Cached in memory and, with a ``cache_dir``, on disk.
        """
        self._check_split(s)
        name = f"{role}-s{s}" + ("" if f is None else f"-f{f}")
        if name in self._memory:
            return self._memory[name]
        d = self._dir()
        path = d / f"{_safe(name)}-{_digest(name)}.npy" if d is not None else None
        if path is not None and path.exists():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape[0] == len(self.pool) and np.all(np.isfinite(arr)):
                    self._memory[name] = arr
                    return arr
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        model = self.model(s) if role == "original" else build()
        arr = logits_matrix(model, self.pool, batch_size=self.batch_size, device=self.device)
        if path is not None:
            atomic_write(path, lambda tmp: _save_npy(tmp, arr))
        self._memory[name] = arr
        return arr

    def outputs(self, role: str, s: int, f: int | None = None, **kw) -> ModelOutputs:
        return ModelOutputs(self.logits(role, s, f, **kw), np.asarray(self.pool.y))

    def positions_of(self, data: Dataset) -> np.ndarray:
        """Pool positions of ``data``'s rows; refuses rows missing from the pool or differing from it."""
        try:
            pos = self.pool.positions(data.ids)
        except UnlearnKitError as exc:
            raise MetricError(f"{data.name} has rows that are not in the shadow pool {self.pool.name} ({exc}). "
                              "Build the ShadowSetup on a pool containing the forget and test rows.") from None
        pool_rows = self.pool.subset(pos)
        if not np.array_equal(pool_rows.y, data.y) or not _same_rows(pool_rows, data):
            raise MetricError(f"{data.name}'s rows differ from the pool rows with the same ids; the pool must be built "
                              "from the same source data.")
        return pos

    def _check_split(self, s: int) -> None:
        if not 0 <= s < self.n_splits:
            raise MetricError(f"Split {s} out of range 0..{self.n_splits - 1}.")

    def train_all(self) -> None:
        """Train (or load) every split's shadow model, reporting progress."""
        for s in range(self.n_splits):
            self.logits("original", s)
            if self.progress is not None:
                self.progress(s + 1, self.n_splits, f"shadow model {s + 1}/{self.n_splits}")


def _same_rows(a: Dataset, b: Dataset) -> bool:
    step = 4096
    for start in range(0, len(a), step):
        if not np.array_equal(a.dense_rows(start, start + step), b.dense_rows(start, start + step)):
            return False
    return True


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _save_npy(tmp: str, arr: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # a file object, so np.save does not append ".npy" to the temp name
        np.save(fh, arr, allow_pickle=False)


# ---------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class AttackScores:
    """Per-case attack scores (higher = "member"/"forgotten") and the true labels."""

    scores: np.ndarray
    labels: np.ndarray

    def auc(self) -> float:
        from sklearn.metrics import roc_auc_score

        if self.labels.min() == self.labels.max():
            raise MetricError("An AUC needs both positive and negative cases.")
        return float(roc_auc_score(self.labels, self.scores))

    def tpr_at_fpr(self, fpr: float) -> float:
        """Largest true-positive rate at a false-positive rate <= ``fpr`` (ROC curve)."""
        from sklearn.metrics import roc_curve

        fprs, tprs, _ = roc_curve(self.labels, self.scores)
        ok = fprs <= fpr + 1e-12
        return float(tprs[ok].max()) if ok.any() else 0.0


def _gaussian_logpdf(x, mu, sd):
    return norm.logpdf(x, loc=mu, scale=sd)


def _fit(values: np.ndarray, mask: np.ndarray, fix_variance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``values`` over rows where ``mask``."""
    count = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    mean = total / np.maximum(count, 1)
    resid = np.where(mask, values - mean, 0.0)
    if fix_variance:
        sd = np.full(mean.shape, np.sqrt((resid ** 2).sum() / max(count.sum(), 1)))
    else:
        sd = np.sqrt((resid ** 2).sum(axis=0) / np.maximum(count, 1))
    return mean, np.maximum(sd, MIN_STD), count


def lira(setup: ShadowSetup, model: UnlearnableModel, members: Dataset, nonmembers: Dataset, *,
         online: bool = True, fix_variance: bool = False) -> AttackScores:
    """LiRA scores of ``model`` on ``members`` (label 1) and ``nonmembers`` (label 0).

    Uses every split's shadow model; rows with fewer than two "in" (online) or "out" shadow
    models are left out of the scores (rare from 16 splits on).
    """
    rows = {"members": setup.positions_of(members), "non-members": setup.positions_of(nonmembers)}
    pos = np.concatenate(list(rows.values()))
    labels = np.concatenate([np.ones(len(rows["members"])), np.zeros(len(rows["non-members"]))])
    target = model_outputs(model, setup.pool.subset(pos), batch_size=setup.batch_size, device=setup.device).logit_scaled
    shadow = np.stack([setup.outputs("original", s).logit_scaled[pos] for s in range(setup.n_splits)])
    inside = setup.in_mask[:, pos]
    mu_out, sd_out, n_out = _fit(shadow, ~inside, fix_variance)
    if online:
        mu_in, sd_in, n_in = _fit(shadow, inside, fix_variance)
        scores = _gaussian_logpdf(target, mu_in, sd_in) - _gaussian_logpdf(target, mu_out, sd_out)
        ok = (n_in >= 2) & (n_out >= 2)
    else:
        scores = norm.logcdf((target - mu_out) / sd_out)
        ok = n_out >= 2
    if not ok.all():
        log.info("LiRA: %d of %d rows have fewer than two in/out shadow models and are not scored",
                 int((~ok).sum()), ok.size)
    if not (labels[ok] == 1).any() or not (labels[ok] == 0).any():
        raise MetricError(f"Too few shadow models ({setup.n_splits}) to score both members and non-members; "
                          "use more splits.")
    return AttackScores(scores[ok], labels[ok])


UnlearnFn = Callable[[UnlearnableModel, Dataset, np.ndarray], UnlearnableModel]


def resolve_method(method) -> tuple[str, UnlearnFn | None]:
    """``(cache role, unlearn function)`` for a U-LiRA method spec.

    ``"original"`` (no unlearning) and ``"retrain"`` (train from scratch on the half minus the
    partition) are built in; a registered name or ``(name, hyperparameters)`` runs that method
    with a removal change set; a callable ``(model, half, forget_ids) -> model`` needs a
    ``cache_key`` attribute naming it.
    """
    from unlearnkit import methods

    if method in ("original", None):
        return "original", None
    if method == "retrain":
        return "retrain", None
    if callable(method):
        key = getattr(method, "cache_key", None)
        if not key:
            raise MetricError("A callable U-LiRA method needs a `cache_key` attribute (a string naming it and its "
                              "settings) so its shadow outputs are cached under that name.")
        return f"fn-{key}", method
    name, hp = (method, {}) if isinstance(method, str) else tuple(method)
    try:
        unlearner = methods.make(name, **dict(hp))
        resolved = {h.name: h.default for h in methods.info(name).hyperparameters} | dict(hp)
    except UnlearnKitError as exc:
        raise MetricError(f"U-LiRA method: {exc}") from None
    role = f"method-{name}-" + _digest(json.dumps(resolved, sort_keys=True, default=str))

    def run(model, half, forget_ids):
        from unlearnkit.data.changes import Changes

        return unlearner.unlearn(model, half, Changes.remove(forget_ids.tolist()), device=None).model

    return role, run


@dataclass(frozen=True)
class ULiRAResult:
    """U-LiRA on one method: pooled attack scores and per-row membership probabilities."""

    method: str
    statistic: str
    attack: AttackScores
    p_member: np.ndarray
    """Mean ``p = phi_f / (phi_f + phi_n)`` over the forgotten cases of each pool row (NaN if none)."""

    @property
    def auc(self) -> float:
        return self.attack.auc()

    @property
    def mean_p_member(self) -> float:
        forgotten = self.attack.labels == 1
        return float(np.mean(_sigmoid(self.attack.scores[forgotten])))

    @property
    def accuracy(self) -> float:
        """Balanced accuracy of the rule ``p > 0.5``."""
        pred = self.attack.scores > 0
        pos = self.attack.labels == 1
        return float(0.5 * (pred[pos].mean() + (~pred[~pos]).mean()))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ulira_statistics(setup: ShadowSetup, method="retrain", *, kind: Statistic | str = Statistic.LOGIT) -> np.ndarray:
    """``(K, P, n)`` statistic of the unlearned model ``(s, f)`` on every pool row."""
    return _statistics(setup, *resolve_method(method), kind)


def _statistics(setup: ShadowSetup, role: str, fn: UnlearnFn | None, kind) -> np.ndarray:
    K, P = setup.n_splits, setup.n_partitions
    stats = np.empty((K, P, len(setup.pool)))
    total, done = K * P, 0
    for s in range(K):
        for f in range(P):
            if role == "original":
                out = setup.outputs("original", s)
            elif role == "retrain":
                def build(s=s, f=f):
                    keep = setup.in_mask[s] & (setup.partitions[s] != f)
                    data = setup.pool.subset(np.flatnonzero(keep), name=f"{setup.pool.name}:shadow{s}-retain{f}")
                    return setup.trainer(setup.template, data, setup.seed + s)
                out = setup.outputs(role, s, f, build=build)
            else:
                def build(s=s, f=f):
                    return fn(setup.model(s), setup.half(s), setup.forget_ids(s, f))
                out = setup.outputs(role, s, f, build=build)
            stats[s, f] = statistic(out, kind)
            done += 1
            if setup.progress is not None:
                setup.progress(done, total, f"U-LiRA {role}: split {s + 1}/{K}, partition {f + 1}/{P}")
    return stats


def ulira(setup: ShadowSetup, method="retrain", *, kind: Statistic | str = Statistic.LOGIT,
          fix_variance: bool = False) -> ULiRAResult:
    """U-LiRA of ``method`` on the shadow setup (see the module docstring).

    Runs ``method`` on the ``K x P`` shadow models and scores the resulting statistics with
    :func:`ulira_from_statistics` (balanced populations, leave one split out).
    """
    kind = Statistic(kind)
    if setup.n_splits < ULIRA_MIN_SPLITS:
        raise MetricError(f"U-LiRA needs n_splits >= {ULIRA_MIN_SPLITS} (each row's 'forgotten' and 'never seen' "
                          f"populations need at least two other splits each); this setup has {setup.n_splits}.")
    role, fn = resolve_method(method)
    stats = _statistics(setup, role, fn, kind)
    return ulira_from_statistics(stats, setup.in_mask, setup.partitions, kind=kind, fix_variance=fix_variance,
                                 seed=setup.seed, method=role)


def ulira_from_statistics(stats, in_mask, partitions, *, kind: Statistic | str = Statistic.LOGIT,
                          fix_variance: bool = False, seed: int = 0, method: str = "") -> ULiRAResult:
    """U-LiRA scores from precomputed statistics, with populations of equal size.

    ``stats[s, f, i]`` is the statistic of row ``i`` under the model of split ``s`` that unlearned
    partition ``f``; ``in_mask[s, i]`` says whether row ``i`` is in split ``s``'s training half and
    ``partitions[s, i]`` is its forget partition there (``-1`` where it is out).

    **One case per split.** Split ``s`` gives row ``i`` one *forgotten* case (the model
    ``(s, partitions[s, i])``) where ``i`` is in, and one *never seen* case where ``i`` is out:
    the model ``(s, f)`` of a partition ``f`` drawn at random (seeded). The ``P`` models of one
    split are not independent observations, so counting all ``P`` of them would give the
    never-seen population ``P`` times the weight of the forgotten one.

    **Equal counts, leave one split out.** To score split ``s``, each population of row ``i`` is
    taken from the other splits and cut, by a random (seeded) order of the splits, to the same
    number ``m = min(#in, #out)`` of cases. A per-row Gaussian is fitted to each population
    (``logit``: mean and maximum-likelihood standard deviation, floored at ``1e-3``;
    ``correctness``: mean ``(k + 1/2) / (m + 1)`` and ``s = sqrt(mu (1 - mu))``;
    ``fix_variance``: one standard deviation pooled over rows and both populations), and the case
    of split ``s`` is scored ``log phi_f(z) - log phi_n(z)``; ``p = phi_f / (phi_f + phi_n)`` is
    its sigmoid. Rows with ``m < 2`` at split ``s`` are not scored there.

    With equal counts and the same fitting rule on both sides, swapping the two populations maps
    ``p`` to ``1 - p``; when unlearning is exact the forgotten and never-seen statistics have the
    same distribution, so the expected ``p`` of a forgotten case is exactly 0.5 and forgotten
    and never-seen cases receive identically distributed scores (AUC 0.5). With unequal counts
    (all ``P`` never-seen models against one forgotten model per split) the smaller population's
    fit is noisier, its likelihood of a fresh case lower, and ``p`` falls below 0.5 even for
    exact unlearning, so a model that does not forget can look closer to 0.5 than retraining.
    """
    kind = Statistic(kind)
    stats = np.asarray(stats, dtype=np.float64)
    in_mask = np.asarray(in_mask)
    partitions = np.asarray(partitions)
    if stats.ndim != 3:
        raise MetricError(f"U-LiRA statistics must have shape (splits, partitions, rows), got {stats.shape}.")
    K, P, n = stats.shape
    if in_mask.shape != (K, n) or in_mask.dtype != bool or partitions.shape != (K, n):
        raise MetricError(f"in_mask must be a ({K}, {n}) boolean array and partitions a ({K}, {n}) integer array; "
                          f"got {in_mask.shape} {in_mask.dtype} and {partitions.shape}.")
    if np.any(partitions[in_mask] < 0) or np.any(partitions[in_mask] >= P) or np.any(partitions[~in_mask] != -1):
        raise MetricError(f"partitions must lie in 0..{P - 1} where in_mask is true and be -1 elsewhere.")
    if not np.all(np.isfinite(stats)):
        raise MetricError("U-LiRA statistics have non-finite values; the models' outputs must be finite.")
    if K < ULIRA_MIN_SPLITS:
        raise MetricError(f"U-LiRA needs at least {ULIRA_MIN_SPLITS} splits; got {K}.")
    rng = np.random.default_rng([int(seed), 0x0B1A5])
    cols = np.arange(n)
    part = np.where(in_mask, partitions, rng.integers(P, size=(K, n)))
    case = stats[np.arange(K)[:, None], part, cols[None, :]]                 # (K, n): one case per split
    prio = rng.random((K, n))                                                # order in which splits are kept
    same = in_mask[:, None, :] == in_mask[None, :, :]
    rank = ((prio[:, None, :] < prio[None, :, :]) & same).sum(axis=0)      # rank within the row's population
    n_in = in_mask.sum(axis=0)
    n_out = K - n_in
    all_scores, all_labels = [], []
    p_sum, p_cnt = np.zeros(n), np.zeros(n)
    for s in range(K):
        inside = in_mask[s]
        m = np.minimum(n_in - inside, n_out - ~inside)
        shift = same[s] & (prio[s][None, :] < prio)                          # splits ranked after split s
        keep = (rank - shift < m[None, :])
        keep[s] = False
        pops = []
        for mask in (keep & in_mask, keep & ~in_mask):
            vals = np.where(mask, case, 0.0)
            pops.append((mask.sum(axis=0).astype(float), vals.sum(axis=0), (vals ** 2).sum(axis=0)))
        pooled = _pooled_sd(pops) if fix_variance and kind is Statistic.LOGIT else None
        mu_f, sd_f = _gauss(*pops[0], kind, pooled)
        mu_n, sd_n = _gauss(*pops[1], kind, pooled)
        ok = m >= 2
        z = case[s]
        score = _gaussian_logpdf(z, mu_f, sd_f) - _gaussian_logpdf(z, mu_n, sd_n)
        pos, neg = inside & ok, ~inside & ok
        all_scores += [score[pos], score[neg]]
        all_labels += [np.ones(pos.sum()), np.zeros(neg.sum())]
        p_sum[pos] += _sigmoid(score[pos])
        p_cnt[pos] += 1
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise MetricError(f"U-LiRA could not score both forgotten and never-seen cases with {K} splits; "
                          "use more splits.")
    with np.errstate(invalid="ignore"):
        p_member = np.where(p_cnt > 0, p_sum / np.maximum(p_cnt, 1), np.nan)
    return ULiRAResult(method, kind.value, AttackScores(scores, labels), p_member)


def _gauss(count, total, sq, kind: Statistic, pooled):
    c = np.maximum(count, 1)
    if kind is Statistic.CORRECTNESS:
        mu = (total + 0.5) / (count + 1.0)
        return mu, np.sqrt(mu * (1 - mu))
    mu = total / c
    if pooled is not None:
        return mu, np.full(mu.shape, pooled)
    var = np.maximum(sq / c - mu ** 2, 0.0)
    return mu, np.maximum(np.sqrt(var), MIN_STD)


def _pooled_sd(moments) -> float:
    """One within-row standard deviation pooled over rows and populations, from (count, sum, sum of squares)."""
    resid, count = 0.0, 0.0
    for c, total, sq in moments:
        has = c > 0
        resid += float(np.maximum(sq[has] - total[has] ** 2 / c[has], 0.0).sum())
        count += float(c[has].sum())
    return max(float(np.sqrt(resid / max(count, 1.0))), MIN_STD)


# ---------------------------------------------------------------------------- registered
def _lira(ctx, subject, online: bool) -> AttackScores:
    def compute():
        return lira(ctx.shadow, ctx.model(subject), ctx.data(Need.FORGET), ctx.data(Need.TEST), online=online,
                    fix_variance=ctx.lira_fix_variance)

    return ctx.cached(("lira", subject, online), compute)


_LIRA_NEEDS = (Need.SHADOW, Need.FORGET, Need.TEST)


@register("lira_auc", family=Family.SHADOW, higher_is_better=None, ideal="0.5", needs=_LIRA_NEEDS, reference=CARLINI,
          cost="expensive")
def lira_auc(ctx, subject):
    """Online LiRA: ROC AUC of telling the model's forget rows from its test rows.

    Per row, Gaussians ``N(mu_in, s_in^2)`` and ``N(mu_out, s_out^2)`` of the logit-scaled
    confidence ``log(p_y / (1 - p_y))`` under shadow models trained with / without it; score
    ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``. AUC of forget (positive) vs
    test (negative) rows; 0.5 is ideal (forgotten rows look never seen), as for a retrained model.
    """
    return _lira(ctx, subject, True).auc()


@register("lira_tpr_at_1pct_fpr", family=Family.SHADOW, higher_is_better=None, ideal="0.01", needs=_LIRA_NEEDS,
          reference=CARLINI, cost="expensive")
def lira_tpr_1(ctx, subject):
    """Online LiRA: true-positive rate on forget rows at a 1% false-positive rate on test rows.

    The low-FPR operating point Carlini et al. argue for; ``0.01`` (chance) is ideal, above it the
    forget rows are recognised.
    Resolution is limited by the number of test rows (1% of them must be at least one row).
    """
    return _lira(ctx, subject, True).tpr_at_fpr(0.01)


@register("lira_tpr_at_0.1pct_fpr", family=Family.SHADOW, higher_is_better=None, ideal="0.001", needs=_LIRA_NEEDS,
          reference=CARLINI, cost="expensive")
def lira_tpr_01(ctx, subject):
    """Online LiRA: true-positive rate on forget rows at a 0.1% false-positive rate on test rows.

    ``0.001`` (chance) is ideal; needs at least 1,000 test rows to resolve.
    """
    return _lira(ctx, subject, True).tpr_at_fpr(0.001)


@register("lira_offline_auc", family=Family.SHADOW, higher_is_better=None, ideal="0.5", needs=_LIRA_NEEDS,
          reference=CARLINI, cost="expensive")
def lira_offline_auc(ctx, subject):
    """Offline LiRA (out-models only): ROC AUC of forget rows vs test rows.

    Score ``log Phi((phi - mu_out) / s_out)``: how far above the never-trained-on distribution
    the row's logit-scaled confidence lies. 0.5 is ideal.
    """
    return _lira(ctx, subject, False).auc()


def _ulira(ctx, subject, kind: Statistic) -> ULiRAResult:
    method = {"original": "original", "retrained": "retrain"}.get(subject, ctx.method)
    if method is None:
        raise MetricError(f"U-LiRA needs {Need.METHOD.value}=... for the unlearned model.")

    def compute():
        return ulira(ctx.shadow, method, kind=kind, fix_variance=ctx.lira_fix_variance)

    return ctx.cached(("ulira", subject, kind.value), compute)


_ULIRA_NEEDS = (Need.SHADOW, Need.METHOD)


@register("ulira_auc", family=Family.SHADOW, higher_is_better=None, ideal="0.5", needs=_ULIRA_NEEDS, reference=HAYES,
          cost="expensive")
def ulira_auc(ctx, subject):
    """U-LiRA with the logit-scaled statistic: AUC of "forgotten" vs "never seen" (0.5 ideal).

    The method is re-run on ``K x P`` shadow models (for the original column: no unlearning;
    for the retrained column: retraining); the unlearned column evaluates the *method* passed as
    ``method=``, not the unlearned model itself, so pass the method (and hyperparameters) that
    produced it. Per row, Gaussians of ``log(p_y / (1 - p_y))`` over
    the models that forgot it and those that never saw it (one case per split, equally many on
    both sides), fitted leaving one split out; the log-likelihood ratio scores split ``s``'s case.
    0.5 means unlearning is indistinguishable from never having trained on the row.
    """
    res = _ulira(ctx, subject, Statistic.LOGIT)
    return MetricValue(res.auc, detail={"mean_p_member": res.mean_p_member, "accuracy": res.accuracy})


@register("ulira_auc_correctness", family=Family.SHADOW, higher_is_better=None, ideal="0.5", needs=_ULIRA_NEEDS,
          reference=HAYES, cost="expensive")
def ulira_auc_correctness(ctx, subject):
    """U-LiRA with DeepUnlearn's binary statistic: AUC with the statistic ``1[argmax = y]`` (0.5 ideal).

    As ``ulira_auc`` with binary correctness as the per-model statistic; the Gaussian mean is
    smoothed as ``(k + 1/2) / (m + 1)`` and ``s = sqrt(mu (1 - mu))``.
    """
    res = _ulira(ctx, subject, Statistic.CORRECTNESS)
    return MetricValue(res.auc, detail={"mean_p_member": res.mean_p_member, "accuracy": res.accuracy})


@register("ulira_p_member", family=Family.SHADOW, higher_is_better=None, ideal="0.5", needs=_ULIRA_NEEDS,
          reference=HAYES, cost="expensive")
def ulira_p_member(ctx, subject):
    """U-LiRA (logit-scaled): mean membership probability of forgotten cases.

    ``p = phi_f(z) / (phi_f(z) + phi_n(z))`` averaged over the (row, split) cases where the row
    was forgotten, with Gaussians fitted leaving the split out on equally many forgotten and
    never-seen cases; 0.5 is ideal (its expectation under exact unlearning), above 0.5 forgotten
    rows are recognised.
    """
    return _ulira(ctx, subject, Statistic.LOGIT).mean_p_member


@register("ulira_p_member_correctness", family=Family.SHADOW, higher_is_better=None, ideal="0.5",
          needs=_ULIRA_NEEDS, reference=HAYES, cost="expensive")
def ulira_p_member_correctness(ctx, subject):
    """U-LiRA with the binary statistic ``1[argmax = y]``: mean membership probability of forgotten cases.

    As ``ulira_p_member`` with correctness as the statistic (the statistic DeepUnlearn uses);
    Gaussian mean ``(k + 1/2) / (m + 1)`` over ``m`` cases, ``s = sqrt(mu (1 - mu))``, the same ``m``
    on both sides. Not DeepUnlearn's number: its code fits on all shadow models without leaving a
    split out or smoothing. 0.5 is ideal (its expectation under exact unlearning).
    """
    return _ulira(ctx, subject, Statistic.CORRECTNESS).mean_p_member
