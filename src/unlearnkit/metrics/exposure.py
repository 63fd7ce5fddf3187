"""Exposure of inserted canaries: how much a language model has memorised a secret.

Reference: N. Carlini, C. Liu, U. Erlingsson, J. Kos and D. Song, "The Secret Sharer:
Evaluating and Testing Unintended Memorization in Neural Networks", USENIX Security 2019.

Definitions
-----------
Canary
    A text ``prefix + secret + suffix`` inserted into the training data. The secret is a string
    of ``length`` symbols drawn from ``alphabet``; the candidate space ``R`` is every such
    string, so ``|R| = len(alphabet) ** length``.
Scorer
    A callable ``scorer(list[str]) -> array of shape (len(list),)`` giving the log-perplexity
    of each whole text under the model: its negative log-likelihood, in any log base (lower =
    more likely). Only the ranking of scores and the shape of their distribution matter, so
    the base and any constant offset (such as the shared prefix) are irrelevant.
Rank
    ``rank(s) = 1 + #{r in R : px(r) < px(s)} + 0.5 * #{r in R, r != s : px(r) = px(s)}``,
    where ``px`` is the log-perplexity. Ties count as half (mid-rank), so ``rank`` lies in
    ``[1, |R|]`` and may be a half-integer. With this choice a model that scores every
    candidate identically gives ``rank = (|R| + 1) / 2`` and an exposure of about 1 bit —
    neither 0 (which would suggest the canary is the least likely secret) nor the maximum
    (which would suggest perfect memorisation).
Exact exposure
    ``exposure(s) = log2 |R| - log2 rank(s)``, in ``[0, log2 |R|]`` bits. Higher = more
    memorised: ``log2 |R|`` means the canary's secret is the model's most likely candidate.
    For a secret that was never inserted, its rank is uniform on ``1..|R|`` whatever the
    model, so the expected exposure is ``≈ 1 / ln 2 ≈ 1.44`` bits.
Extrapolated exposure
    For spaces too large to score whole, ``exposure ≈ -log2 F(px(canary))``, where ``F`` is
    the CDF of a skew-normal distribution fitted (maximum likelihood,
    :func:`scipy.stats.skewnorm.fit`) to the log-perplexities of candidates drawn uniformly
    at random from ``R`` without the canary's own secret. This is the paper's extrapolation:
    ``|R| * F(px)`` estimates the rank, so ``log2 |R| - log2(|R| F) = -log2 F``. It is
    computed from a log-CDF that stays finite far in the tail, so a very exposed canary (a
    CDF far below the smallest double) still gets a finite number; since a rank below 1 is
    impossible, :func:`canary_exposure` caps it at ``log2 |R|``.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import integrate, stats

from unlearnkit.errors import MetricError

logger = logging.getLogger(__name__)

__all__ = [
    "Canary",
    "ExposureResult",
    "canary_exposure",
    "exact_exposure",
    "exposure_from_rank",
    "extrapolated_exposure",
]

#: Fewest candidate scores :func:`extrapolated_exposure` accepts for its skew-normal fit.
MIN_FIT_SAMPLES = 50
#: Largest candidate space :meth:`Canary.candidates` enumerates.
MAX_ENUMERATED = 2_000_000
#: Methods :func:`canary_exposure` accepts.
METHODS = ("auto", "exact", "extrapolated")

# Below this CDF the log-CDF is computed by a log-space tail integral rather than log(cdf):
# scipy's skew-normal CDF underflows to 0 near 1e-308 (and loses accuracy before that).
_TAIL_CDF = 1e-10


# ------------------------------------------------------------------------------- validation


def _real(value: object, name: str) -> float:
    """A finite real scalar, or a MetricError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number):
            value = value.item()
        else:
            raise MetricError(f"{name} must be a real number; got {type(value).__name__} {value!r}.")
    x = float(value)
    if not math.isfinite(x):
        raise MetricError(
            f"{name} is {x}; it must be a finite log-perplexity. Check the scorer: a zero "
            f"probability gives an infinite negative log-likelihood, so clip probabilities or "
            f"use log-softmax."
        )
    return x


def _scores(values: object, name: str) -> np.ndarray:
    """A non-empty, finite 1-D float array, or a MetricError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} must be a 1-D array of real numbers; could not convert it: {exc}") from exc
    if arr.ndim != 1:
        raise MetricError(f"{name} must be 1-D (one log-perplexity per candidate); got shape {arr.shape}.")
    if arr.size == 0:
        raise MetricError(f"{name} is empty; pass the log-perplexities of the candidates.")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise MetricError(
            f"{name} has {bad} non-finite value(s) (NaN or inf) out of {arr.size}; every "
            f"log-perplexity must be finite. Fix the scorer (clip probabilities away from 0, "
            f"use log-softmax) or drop those candidates."
        )
    return arr


def _integer(value: object, name: str, *, minimum: int) -> int:
    """An int ``>= minimum`` (bools refused), or a MetricError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MetricError(f"{name} must be an integer >= {minimum}; got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise MetricError(f"{name} must be >= {minimum}; got {value}.")
    return int(value)


# ------------------------------------------------------------------------------- exposure


def exposure_from_rank(rank: float, space_size: int) -> float:
    """Exposure in bits of a secret with the given rank: ``log2 |R| - log2 rank``.

    Parameters
    ----------
    rank:
        Rank of the canary among all ``space_size`` candidates, in ``[1, space_size]``;
        1 = the most likely candidate. May be fractional (ties counted as half).
    space_size:
        ``|R|``, the number of candidate secrets, at least 2.

    Returns
    -------
    float
        Exposure in ``[0, log2 space_size]``; higher = more memorised. Rank 1 gives
        ``log2 space_size``, rank ``space_size`` gives 0.
    """
    size = _integer(space_size, "space_size", minimum=2)
    r = _real(rank, "rank")
    if not 1.0 <= r <= size:
        raise MetricError(
            f"rank must lie in [1, space_size] = [1, {size}]; got {r}. The rank counts the "
            f"candidates scored below the canary plus one, so it cannot be below 1 or above |R|."
        )
    return max(0.0, math.log2(size) - math.log2(r))


def exact_exposure(canary_score: float, candidate_scores: np.ndarray) -> tuple[float, float]:
    """Exact exposure of a canary from the log-perplexities of the whole candidate space.

    ``rank = 1 + #{candidates scored below the canary} + 0.5 * #{other candidates tied with
    it}`` and ``exposure = log2 |R| - log2 rank`` (Carlini et al. 2019). Higher
    = more memorised.

    Parameters
    ----------
    canary_score:
        Log-perplexity of the canary (lower = more likely).
    candidate_scores:
        Log-perplexities of every candidate in ``R``, the canary's own secret included, so
        ``|R| = len(candidate_scores)`` (at least 2). ``canary_score`` must be one of them
        exactly: score the canary in the same call as the candidates and take its entry.

    Returns
    -------
    (exposure, rank)
        Exposure in ``[0, log2 |R|]`` bits and the (mid-)rank in ``[1, |R|]``.
    """
    x = _real(canary_score, "canary_score")
    scores = _scores(candidate_scores, "candidate_scores")
    if scores.size < 2:
        raise MetricError(
            f"candidate_scores has {scores.size} entry; the candidate space needs at least 2 "
            f"secrets (an alphabet of at least 2 symbols)."
        )
    n_less = int(np.count_nonzero(scores < x))
    n_equal = int(np.count_nonzero(scores == x))
    if n_equal == 0:
        raise MetricError(
            "canary_score is not among candidate_scores; candidate_scores must score the whole "
            "space R including the canary's own secret. Score the canary in the same call as "
            "the candidates and pass its entry as canary_score (or use canary_exposure)."
        )
    rank = 1.0 + n_less + 0.5 * (n_equal - 1)
    return exposure_from_rank(rank, scores.size), rank


def _skewnorm_logcdf(x: float, a: float, loc: float, scale: float) -> float:
    """``log F(x)`` for a skew-normal, finite even where ``F(x)`` underflows.

    Above ``_TAIL_CDF`` this is ``log(skewnorm.cdf)``. In the far left tail, where the
    density rises towards ``x``, ``F(x) = f(x) * s * integral_0^inf f(x - s u) / f(x) du``
    with ``s`` the local decay length ``1 / (d log f / dx)``; the integrand starts at 1 and
    decays at least like ``exp(-u)``, so the integral is computed on a well-scaled range and
    only ``log f(x)`` (computed stably by scipy) carries the tiny magnitude.
    """
    z = (x - loc) / scale
    cdf = float(stats.skewnorm.cdf(z, a))
    if cdf > _TAIL_CDF:
        return math.log(cdf)
    log_pdf = float(stats.skewnorm.logpdf(z, a))
    # d/dz log(2 phi(z) Phi(a z)) = -z + a * phi(a z) / Phi(a z)
    slope = -z + a * math.exp(float(stats.norm.logpdf(a * z) - stats.norm.logcdf(a * z)))
    if not (math.isfinite(log_pdf) and math.isfinite(slope) and slope > 0):
        logger.debug("skew-normal tail integral not applicable at z=%g (a=%g); using log(cdf)", z, a)
        return math.log(cdf) if cdf > 0 else -math.inf
    step = 1.0 / slope

    def ratio(u: float) -> float:
        return math.exp(float(stats.skewnorm.logpdf(z - step * u, a)) - log_pdf)

    tail, _ = integrate.quad(ratio, 0.0, math.inf)
    return log_pdf + math.log(step * tail)


def extrapolated_exposure(
    canary_score: float,
    sample_scores: np.ndarray,
    *,
    space_size: int | None = None,
) -> float:
    """Exposure extrapolated from a skew-normal fit: ``-log2 F(px(canary))``.

    ``F`` is the CDF of a skew-normal distribution fitted by maximum likelihood
    (:func:`scipy.stats.skewnorm.fit`) to ``sample_scores``; ``|R| F`` estimates the canary's
    rank, hence ``log2 |R| - log2(|R| F) = -log2 F`` (Carlini et al. 2019).
    Higher = more memorised. The fit is done on scores standardised by their mean and
    standard deviation, and ``log F`` is computed stably in the far tail, so a very exposed
    canary gets a large finite value rather than ``inf``.

    Parameters
    ----------
    canary_score:
        Log-perplexity of the canary (lower = more likely).
    sample_scores:
        Log-perplexities of candidates drawn uniformly at random from ``R`` without the
        canary's own secret; at least 50, all finite, not all equal. A few thousand give a
        stable fit.
    space_size:
        ``|R|``, optional. When given the estimate is capped at ``log2 |R|``, the largest
        exposure possible (a rank below 1 is impossible).

    Returns
    -------
    float
        Exposure in bits, ``>= 0``.
    """
    x = _real(canary_score, "canary_score")
    scores = _scores(sample_scores, "sample_scores")
    if scores.size < MIN_FIT_SAMPLES:
        raise MetricError(
            f"sample_scores has {scores.size} value(s); the skew-normal fit needs at least "
            f"{MIN_FIT_SAMPLES} (a few thousand give a stable estimate). Score more sampled "
            f"candidates, or use exact_exposure on a space small enough to score whole."
        )
    cap = None if space_size is None else math.log2(_integer(space_size, "space_size", minimum=2))
    center = float(scores.mean())
    spread = float(scores.std())
    if not spread > 0 or spread < 1e-12 * max(1.0, abs(center)):
        raise MetricError(
            "sample_scores are all equal, so no skew-normal can be fitted to them. The scorer "
            "does not distinguish the candidates; use exact_exposure (ties count as half)."
        )
    a, loc, scale = stats.skewnorm.fit((scores - center) / spread)
    if not (math.isfinite(a) and math.isfinite(loc) and math.isfinite(scale) and scale > 0):
        raise MetricError(
            f"the skew-normal fit failed (shape={a}, loc={loc}, scale={scale}); check "
            f"sample_scores for a degenerate distribution, or use exact_exposure."
        )
    logger.debug(
        "skew-normal fit to %d scores: shape=%.4g loc=%.4g scale=%.4g (in units of std %.4g about mean %.4g)",
        scores.size, a, loc, scale, spread, center,
    )
    log_cdf = _skewnorm_logcdf((x - center) / spread, float(a), float(loc), float(scale))
    exposure = max(0.0, -log_cdf / math.log(2.0))
    if cap is not None and exposure > cap:
        logger.debug("extrapolated exposure %.4g bits capped at log2|R| = %.4g", exposure, cap)
        exposure = cap
    return exposure


# ------------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class Canary:
    """A canary ``prefix + secret + suffix`` and its candidate space.

    Attributes
    ----------
    prefix:
        Text before the secret, e.g. ``"my telephone number is "``.
    secret:
        The inserted secret, e.g. ``"0431"``: a non-empty string of symbols of ``alphabet``.
    alphabet:
        The symbols a secret is drawn from, at least 2 and no duplicates; their order is the
        order of :meth:`candidates`.
    suffix:
        Text after the secret (often empty).
    """

    prefix: str
    secret: str
    alphabet: str = "0123456789"
    suffix: str = ""

    def __post_init__(self) -> None:
        for field in ("prefix", "secret", "alphabet", "suffix"):
            value = getattr(self, field)
            if not isinstance(value, str):
                raise MetricError(f"Canary.{field} must be a str; got {type(value).__name__} {value!r}.")
        if len(self.alphabet) < 2:
            raise MetricError(
                f"Canary.alphabet must have at least 2 symbols; got {self.alphabet!r}. With one "
                f"symbol there is a single candidate and exposure is undefined."
            )
        if len(set(self.alphabet)) != len(self.alphabet):
            dup = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
            raise MetricError(
                f"Canary.alphabet has duplicate symbol(s) {dup}; list each symbol once "
                f"(duplicates would count the same secret twice)."
            )
        if not self.secret:
            raise MetricError("Canary.secret is empty; give at least one symbol of the alphabet.")
        self._check_secret(self.secret, "Canary.secret")

    def _check_secret(self, secret: str, name: str) -> None:
        if not isinstance(secret, str):
            raise MetricError(f"{name} must be a str; got {type(secret).__name__} {secret!r}.")
        if len(secret) != len(self.secret):
            raise MetricError(
                f"{name} {secret!r} has {len(secret)} symbol(s); candidates of this canary have "
                f"{len(self.secret)}."
            )
        symbols = set(self.alphabet)
        foreign = sorted({c for c in secret if c not in symbols})
        if foreign:
            raise MetricError(
                f"{name} {secret!r} has symbol(s) {foreign} that are not in the alphabet "
                f"{self.alphabet!r}; add them to the alphabet or change the secret."
            )

    @property
    def length(self) -> int:
        """Number of symbols in the secret."""
        return len(self.secret)

    @property
    def space_size(self) -> int:
        """``|R| = len(alphabet) ** length``, the number of candidate secrets (exact int)."""
        return len(self.alphabet) ** len(self.secret)

    def text(self, secret: str | None = None) -> str:
        """``prefix + secret + suffix``, with the canary's own secret when ``secret`` is None."""
        if secret is None:
            secret = self.secret
        else:
            self._check_secret(secret, "secret")
        return self.prefix + secret + self.suffix

    def index(self, secret: str | None = None) -> int:
        """Position of ``secret`` (default: the canary's own) in :meth:`candidates`."""
        if secret is None:
            secret = self.secret
        else:
            self._check_secret(secret, "secret")
        position = {c: i for i, c in enumerate(self.alphabet)}
        index = 0
        for c in secret:
            index = index * len(self.alphabet) + position[c]
        return index

    def candidates(self) -> list[str]:
        """Every secret in ``R``, in lexicographic order over the alphabet's own symbol order.

        Raises :class:`MetricError` when ``|R|`` exceeds 2,000,000; use :meth:`sample` (and
        extrapolated exposure) for larger spaces.
        """
        size = self.space_size
        if size > MAX_ENUMERATED:
            raise MetricError(
                f"the candidate space has {size} secrets, more than the {MAX_ENUMERATED} this "
                f"enumerates; use method='extrapolated' (Canary.sample) for spaces this large."
            )
        return ["".join(t) for t in itertools.product(self.alphabet, repeat=self.length)]

    def sample(self, n: int, *, seed: int) -> list[str]:
        """``n`` secrets drawn uniformly at random from ``R`` without the canary's own secret.

        Drawn independently *with replacement* (each symbol uniform over the alphabet,
        redrawing any secret equal to the canary's), so duplicates occur when ``n`` is not
        small next to ``|R|``; the draws are i.i.d. from the uniform distribution on
        ``R \\ {secret}``, which is what the skew-normal fit needs. Same seed, same list.
        """
        count = _integer(n, "n", minimum=1)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise MetricError(f"seed must be an integer; got {type(seed).__name__} {seed!r}.")
        rng = np.random.default_rng(int(seed))
        k, length = len(self.alphabet), self.length
        own = np.array([self.alphabet.index(c) for c in self.secret])
        draws = rng.integers(0, k, size=(count, length))
        clash = np.flatnonzero((draws == own).all(axis=1))
        while clash.size:
            draws[clash] = rng.integers(0, k, size=(clash.size, length))
            clash = clash[(draws[clash] == own).all(axis=1)]
        symbols = np.array(list(self.alphabet))
        return ["".join(row) for row in symbols[draws]]


# ------------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class ExposureResult:
    """Exposure of one canary.

    Attributes
    ----------
    exposure:
        Exposure in bits, in ``[0, log2 space_size]``; higher = more memorised.
    method:
        ``"exact"`` (whole space scored) or ``"extrapolated"`` (skew-normal fit to a sample).
    space_size:
        ``|R|``, the number of candidate secrets.
    n_scored:
        Candidates scored: ``space_size`` for ``"exact"`` (the canary's own secret among
        them), the sample size for ``"extrapolated"`` (the canary scored in addition).
    canary_log_perplexity:
        The scorer's log-perplexity of the canary text.
    rank:
        The canary's (mid-)rank among all candidates for ``"exact"``; ``None`` otherwise.
    """

    exposure: float
    method: str
    space_size: int
    n_scored: int
    canary_log_perplexity: float
    rank: float | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict of plain Python numbers and strings."""
        return asdict(self)


def _score_all(scorer: Callable[[list[str]], object], texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Log-perplexities of ``texts``, asking ``scorer`` for at most ``batch_size`` at a time."""
    out = np.empty(len(texts), dtype=float)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        raw = scorer(batch)
        try:
            arr = np.asarray(raw, dtype=float)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MetricError(
                f"the scorer returned {type(raw).__name__}, which does not convert to a float "
                f"array ({exc}); return a numpy array (for a torch tensor: "
                f".detach().cpu().numpy())."
            ) from exc
        if arr.shape != (len(batch),):
            raise MetricError(
                f"the scorer returned shape {arr.shape} for a batch of {len(batch)} texts; it "
                f"must return one log-perplexity per text, shape ({len(batch)},)."
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise MetricError(
                f"the scorer returned {bad.size} non-finite value(s) (NaN or inf) for a batch of "
                f"{len(batch)} texts, first for {batch[bad[0]]!r}; it must return finite negative "
                f"log-likelihoods (clip probabilities away from 0, use log-softmax)."
            )
        out[start:start + len(batch)] = arr
    return out


def canary_exposure(
    canary: Canary,
    scorer: Callable[[list[str]], object],
    *,
    method: str = "auto",
    exact_limit: int = 100_000,
    n_samples: int = 5_000,
    batch_size: int = 4096,
    seed: int = 0,
) -> ExposureResult:
    """Exposure of ``canary`` under the model behind ``scorer`` (Carlini et al. 2019).

    ``"exact"`` scores every candidate text ``canary.text(r)``, ``r`` in ``R``, and returns
    ``log2 |R| - log2 rank`` (ties as half); ``"extrapolated"`` scores the canary and
    ``n_samples`` uniform random other candidates and returns ``-log2 F(px(canary))`` for a
    skew-normal ``F`` fitted to the sample, capped at ``log2 |R|``. Higher = more memorised;
    a never-inserted secret averages ``≈ 1.44`` bits.

    Parameters
    ----------
    canary:
        The inserted canary.
    scorer:
        ``scorer(list[str]) -> array (len(list),)`` of log-perplexities (negative
        log-likelihood of each whole text, any base; lower = more likely). Must be
        deterministic: the canary's score is compared with the candidates'.
    method:
        ``"exact"``, ``"extrapolated"`` or ``"auto"`` (exact when ``space_size <=
        exact_limit``, else extrapolated).
    exact_limit:
        Largest space ``"auto"`` scores whole. ``"exact"`` itself refuses spaces over
        2,000,000.
    n_samples:
        Sampled candidates for ``"extrapolated"``, at least 50 (drawn with replacement).
    batch_size:
        Most texts passed to ``scorer`` in one call (bounds its memory).
    seed:
        Seed of the candidate sample; same seed, same result.

    Returns
    -------
    ExposureResult
    """
    if not isinstance(canary, Canary):
        raise MetricError(
            f"canary must be a Canary; got {type(canary).__name__}. Build one with Canary(prefix, secret)."
        )
    if not callable(scorer):
        raise MetricError(
            f"scorer must be callable, list[str] -> array of log-perplexities; got {type(scorer).__name__}."
        )
    if method not in METHODS:
        raise MetricError(f"unknown method {method!r}; choose one of {', '.join(repr(m) for m in METHODS)}.")
    limit = _integer(exact_limit, "exact_limit", minimum=0)
    samples = _integer(n_samples, "n_samples", minimum=MIN_FIT_SAMPLES)
    batch = _integer(batch_size, "batch_size", minimum=1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise MetricError(f"seed must be an integer; got {type(seed).__name__} {seed!r}.")

    size = canary.space_size
    chosen = method if method != "auto" else ("exact" if size <= limit else "extrapolated")
    logger.debug("canary exposure: |R|=%d, method=%s", size, chosen)
    prefix, suffix = canary.prefix, canary.suffix

    if chosen == "exact":
        texts = [prefix + s + suffix for s in canary.candidates()]
        scores = _score_all(scorer, texts, batch)
        own = float(scores[canary.index()])
        exposure, rank = exact_exposure(own, scores)
        return ExposureResult(exposure, "exact", size, int(scores.size), own, rank)

    texts = [canary.text()] + [prefix + s + suffix for s in canary.sample(samples, seed=seed)]
    scores = _score_all(scorer, texts, batch)
    own = float(scores[0])
    exposure = extrapolated_exposure(own, scores[1:], space_size=size)
    return ExposureResult(exposure, "extrapolated", size, samples, own, None)


# ---------------------------------------------------------------------------- registered
from unlearnkit.metrics.base import Family, MetricValue, Need, register  # noqa: E402  (registry after the maths)

SECRET_SHARER = ("Carlini et al., 'The Secret Sharer: Evaluating and Testing Unintended Memorization in Neural "
                 "Networks' (USENIX Security 2019); used by Warnecke et al. (NDSS 2023) for unlearning")


@register("exposure", family=Family.MEMORISATION, higher_is_better=False, ideal="1.44 bits (never-seen secret, mean)",
          needs=(Need.CANARY,), reference=SECRET_SHARER, cost="expensive",
          note="~1.44 bits is what a model that never saw the secret scores on average")
def exposure_metric(ctx, subject):
    """Exposure of an inserted canary, in bits.

    ``exposure = log2 |R| - log2 rank(canary)``, the canary's rank by log-perplexity among all
    ``|R|`` candidate secrets (exact when ``|R| <= 100,000``); for larger spaces
    ``-log2 F(px(canary))`` with ``F`` a skew-normal fitted to 5,000 sampled candidates. Lower
    is better: ``log2 |R|`` means the secret is the model's first guess. For a secret the model
    never saw, the rank is uniform on ``1..|R|``, so its exposure averages
    ``log2 |R| - log2(|R|!) / |R| ≈ 1/ln 2 ≈ 1.44`` bits; a single canary of a retrained model
    can score anywhere from 0 to ``log2 |R|`` (``-log2`` of a uniform rank fraction: standard
    deviation also ≈ 1.44 bits), so read a value against this average, not as a target to hit. Scores up to 100,000 texts per model, so it runs only when named. Needs ``canary=Canary(...)`` and
    ``canary_scorer(model, texts) -> log-perplexities``.
    """
    model = ctx.model(subject)

    def scorer(texts):
        return ctx.canary_scorer(model, texts)

    res = canary_exposure(ctx.canary, scorer, seed=ctx.seed)
    return MetricValue(res.exposure, detail=res.to_dict())
