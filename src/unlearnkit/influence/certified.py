"""Certified unlearning of L2-regularised logistic regression, request after request.

**Training with loss perturbation** (Guo, Goldstein, Hannun, van der Maaten, "Certified Data
Removal from Machine Learning Models", ICML 2020; adopted by Warnecke et al., NDSS 2023, §3).
The model minimises ``L_b(theta; D) = sum_i l_i + (l2/2)||theta||^2 + b . theta`` with
``b ~ N(0, sigma^2 I)`` drawn once. Binary models use one logit (the paper's construction);
multiclass models use the softmax loss over all ``C`` logits with one shared ``b`` of the same
dimension as ``theta`` — one convex objective, so one residual and one certificate cover every
class (Guo et al. instead train ``C`` one-vs-rest binary models, which certifies each separately
and spends the budget ``C`` times).

**The certificate** (Guo et al., Theorem 3). If the unlearned parameters have gradient residual
``||grad L_b(theta_U; D~)|| <= e'`` on the corrected data ``D~``, they are the exact minimiser of
``L_{b'}(.; D~)`` with ``b' = b - grad L_b(theta_U; D~)``, ``||b - b'|| <= e'``: the unlearned
and the retrained model are the same function of noise vectors that differ by at most ``e'``, a
Gaussian mechanism with L2 sensitivity ``e'``. For a **fixed** shift of norm ``e'`` that
mechanism is (eps, delta)-indistinguishable exactly when
``Phi(e'/(2 sigma) - eps sigma/e') - e^eps Phi(-e'/(2 sigma) - eps sigma/e') <= delta`` (the
analytic Gaussian mechanism, Balle & Wang, ICML 2018, Theorem 8). Here the shift is the residual
itself, which depends on ``b``; Guo et al.'s Theorem 3 treats it as a shift bounded by ``e'``,
and this certificate inherits that assumption — it holds as far as their argument does. The
classical constant's slack at small eps, which absorbed part of that gap, is gone (in a 1-D
example with residual ``0.1 tanh(b)`` the true delta is twice the fixed-shift profile). No fixed
safety factor is added: the excess depends on how fast the residual varies with ``b``, so a
factor would not close it in general; ask for a smaller delta to keep slack. So noise ``sigma``
certifies residuals up to the **budget** ``e'_max = r sigma``, ``r`` the root of that profile
(:func:`sensitivity_ratio`), and a residual ``e'`` spends the smallest ``eps'`` the profile
allows (:func:`epsilon_for`). Guo et al. calibrate with the classical constant
``sigma = c e' / eps``, ``c = sqrt(2 ln(1.5 / delta))``: more noise than needed for small eps,
and too little for large eps (at ``delta = 1e-4`` the true delta exceeds the nominal one above
eps ~ 8.4); the analytic calibration is the exact one for a fixed shift, for every eps.
``CertifiedSpec(calibration="classical")`` keeps the classical constant (ledgers created before
the calibration was recorded use it).

**The a-priori bound on the residual.** Let ``theta`` be the current parameters, ``r`` their
residual on the current data, ``M`` the cached Hessian of the corrected data at the anchor
``theta_a`` (:mod:`unlearnkit.influence.curvature`), ``G = g(Z~) - g(Z)`` and
``Delta = M^{-1} G``. Exactly, ``grad L_b(theta - Delta; D~) = r + (M - H_bar) Delta`` with
``H_bar`` the mean Hessian of ``L(.; D~)`` on the segment from ``theta`` to ``theta - Delta``.
Each row's Hessian is Lipschitz in ``theta`` with constant ``gamma ||x~||^3`` (``x~ = [x, 1]``
with an intercept), where

* binary: ``gamma = max |sigma''| = 1 / (6 sqrt 3) ~= 0.0962`` (the row Hessian is
  ``sigma'(z) x~ x~^T`` and ``z = theta . x~``);
* softmax: ``gamma = 1 / sqrt 2 ~= 0.707``. The row Hessian is ``A(z) (x) x~ x~^T`` with
  ``A = diag(p) - p p^T``, and ``||dz|| <= ||d theta|| ||x~||``. Write ``E`` for the mean under
  ``p`` (``E[f] = sum_i p_i f_i``). Then ``w^T A w = Var_p(w)`` and, along a direction ``u``,
  ``dp = A u = p * (u - E u)``, so for every ``w``

      w^T dA[u] w = sum_i dp_i w_i^2 - 2 (dp . w)(p . w) = E[(u - E u) (w - E w)^2]

  (expand the square; ``E[u - E u] = 0``). Hence ``|w^T dA[u] w| <= max_i |u_i - E u| Var_p(w)``.
  By Cauchy-Schwarz ``|u_i - E u| = |(e_i - p) . u| <= ||e_i - p|| ||u||`` and
  ``||e_i - p||^2 = (1 - p_i)^2 + sum_{j != i} p_j^2 <= 2 (1 - p_i)^2 <= 2``; by Popoviciu's
  inequality ``Var_p(w) <= (max_i w_i - min_i w_i)^2 / 4 <= ||w||^2 / 2``. So
  ``||dA[u]|| <= ||u|| / sqrt 2`` (``dA`` is symmetric, so its norm is the largest
  ``|w^T dA w|``). A numerical search finds a supremum of about 0.272 (= ``sqrt 2 / (3 sqrt 3)``,
  the binary value for a two-logit parametrisation), so the constant is within a factor 2.6 of
  the best possible.

Write ``X~`` for the ``n x d~`` matrix of augmented rows of ``D~`` and ``Delta_c`` for class
``c``'s block of ``Delta`` (weights and intercept). The row-wise Hessian differences are at most
``gamma R~ (drift + ||Delta|| / 2)`` in norm, with ``drift = ||theta - theta_a||``, so (Guo et
al.'s data-dependent bound for linear models, Corollary 2, extended to a stale anchor)

    ||grad L_b(theta_U; D~)|| <= ||r|| + gamma ||X~||_2 ||X~ Delta||_F R~ (drift + ||Delta|| / 2)

with ``||X~ Delta||_F^2 = sum_c Delta_c^T (X~^T X~) Delta_c``. The Gram matrix ``X~^T X~`` is
kept current under row changes (``O(k d^2)``) and ``||X~||_2^2`` is bounded by its top
eigenvalue at the last training plus the squared norms of the rows added since (Weyl), so the
data-dependent bound needs no pass over the data either. Using only the stated constants — rows
satisfy ``||x~|| <= R~`` (the feature-norm bound ``R`` plus the intercept), per-row gradient
changes are at most ``g R~`` (label edit; ``g = 1`` binary, ``sqrt 2`` softmax), ``g R~``
(removal) or ``2 g R~`` (feature edit), the objective is ``l2``-strongly convex so
``||Delta|| <= ||G|| / l2`` — the worst-case bound is

    bound_worst = gamma n R~^3 (drift_w + D / 2) D,   D = (sum over affected rows of the above) / l2,

the form of the paper's second-order theorem (``C_H gamma_z^2 M^2 |Z|^2 / lambda^2``) for a
sum objective. Residuals accumulate over requests (triangle inequality): the cumulative bound
is the exact residual at training plus every request's bound. When a request would push it past
the budget, the model is retrained on the corrected data with fresh noise and the budget resets
(Guo et al.'s Algorithm 2). ``bound="data"`` (default, Guo et al.'s practice) spends the
data-dependent bound; ``bound="worst"`` the worst-case one.

**Assumptions checked** (a :class:`~unlearnkit.errors.CertificationError` otherwise): a
:class:`~unlearnkit.models.linear.LogisticRegression` with ``l2 > 0`` and a penalised (or no)
intercept, float64; every training row and every corrected row has ``||x|| <= R``.

**Refinement.** :meth:`CertifiedModel.refine` takes Newton steps on ``L_b(.; D~)`` with the
cached factor (exact gradients, one pass over the data each), refreshing the Hessian when a step
contracts the residual less than tenfold, until the residual meets a target; the cumulative
bound then becomes the measured residual, so a user trades a little time for a smaller
certified noise, or for agreement with retraining to numerical precision.
"""

from __future__ import annotations

import copy
import functools
import math
import secrets
import warnings
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np
import torch
from scipy import optimize, special

from unlearnkit import timing
from unlearnkit.data.changes import Changes, Resolved
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import CertificationError, SolverError
from unlearnkit.influence.curvature import CachedCurvature, hessian_row_changes
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import gradient_residual, objective_gradient, objective_value
from unlearnkit.influence.updates import UnlearnResult, gradient_difference
from unlearnkit.models.linear import LogisticRegression

HESSIAN_LIPSCHITZ_BINARY = 1.0 / (6.0 * math.sqrt(3.0))
"""``max |sigma''(z)|``: the row Hessian of the logistic loss is Lipschitz with this times ``||x~||^3``."""

HESSIAN_LIPSCHITZ_SOFTMAX = 1.0 / math.sqrt(2.0)
"""The same constant for the softmax loss (see the module docstring for the proof)."""

BOUND_KINDS = ("data", "worst")

MAX_CERTIFIED_PARAMS = 20_000
"""Most parameters ``p`` a certified model may have. The method keeps the dense ``p x p`` Hessian
and its Cholesky factor in float64 (``16 p^2`` bytes: 6.4 GB at this limit); a larger model is
refused before anything is allocated. Reduce the features (e.g. PCA or feature selection)."""


def _check_privacy(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise CertificationError(f"epsilon must be a positive number, got {epsilon}.")
    if not (0.0 < delta < 1.0):
        raise CertificationError(f"delta must be in (0, 1), got {delta}.")


class Calibration(str, Enum):
    """How the noise ``sigma`` and the residual budget are tied to ``(epsilon, delta)``.

    ``ANALYTIC``: the analytic Gaussian mechanism (Balle & Wang 2018), the root of the exact
    profile. ``CLASSICAL``: Guo et al.'s constant ``c = sqrt(2 ln(1.5 / delta))``,
    ``budget = sigma epsilon / c`` and ``epsilon' = c e' / sigma``; kept so that ledgers created
    with it keep their certificates (it gives (epsilon, delta) only where
    :func:`classical_is_valid`).
    """

    ANALYTIC = "analytic"
    CLASSICAL = "classical"


def _calibration(value: Calibration | str) -> Calibration:
    try:
        return Calibration(value)
    except ValueError:
        raise CertificationError(f"calibration must be one of {[c.value for c in Calibration]}, got {value!r}.") from None


def classical_constant(delta: float) -> float:
    """Guo et al.'s noise multiplier ``c = sqrt(2 ln(1.5 / delta))`` (``sigma = c e' / epsilon``)."""
    return math.sqrt(2.0 * math.log(1.5 / delta))


_SQRT2, _SQRTPI = math.sqrt(2.0), math.sqrt(math.pi)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(10)


def _dlog_erfcx(z: np.ndarray) -> np.ndarray:
    """``d/dz log erfcx(z) = 2 z - 2 / (sqrt(pi) erfcx(z))``, without cancellation for large ``z``.

    For ``z >= 5`` the continued fraction ``1 / (sqrt(pi) erfcx(z)) = z + K``,
    ``K = (1/2) / (z + 1 / (z + (3/2) / (z + ...)))`` gives ``-2 K`` directly.
    """
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    small = z < 5.0
    out[small] = 2.0 * z[small] - 2.0 / (_SQRTPI * special.erfcx(z[small]))
    zl, k = z[~small], np.zeros(int((~small).sum()))
    for j in range(60, 0, -1):
        k = (j / 2.0) / (zl + k)
    out[~small] = -2.0 * k
    return out


def _log_gaussian_delta(epsilon: float, ratio: float) -> float:
    """``log delta(epsilon)`` of the Gaussian mechanism with sensitivity/noise ratio ``ratio = D / sigma``.

    The exact privacy profile (Balle & Wang 2018, Theorem 8):
    ``delta = Phi(a) - e^eps Phi(b)``, ``a = r/2 - eps/r``, ``b = -r/2 - eps/r``, written as
    ``Phi(a) (1 - e^x)`` with ``x = log(e^eps Phi(b) / Phi(a))``. Since
    ``Phi(t) = erfcx(-t/sqrt 2) e^(-t^2/2) / 2`` and ``b^2 - a^2 = 2 eps`` exactly,
    ``x = log(erfcx(-b/sqrt 2) / erfcx(-a/sqrt 2))`` with no ``e^eps`` and no cancellation of
    large logarithms; where ``x`` is near 0 (small ``r``) it is the integral of
    ``d/dz log erfcx`` over ``[-a/sqrt 2, -b/sqrt 2]`` (centre ``eps / (r sqrt 2)``, half-width
    ``r / (2 sqrt 2)``, both exact), by 10-point Gauss-Legendre quadrature. The absolute error in
    ``log delta`` is below ``1e-15 (1 + |log delta|)`` (checked against 60-digit arithmetic).
    ``-inf`` where ``delta`` is below double precision.
    """
    a = ratio / 2.0 - epsilon / ratio
    b = -ratio / 2.0 - epsilon / ratio
    la = float(special.log_ndtr(a))
    if a > 30.0:  # erfcx(-a / sqrt 2) overflows; here Phi(a) = 1 and delta > 1/2, far from any cancellation
        x = float(special.log_ndtr(b)) + epsilon - la
    else:
        x = math.log(float(special.erfcx(-b / _SQRT2)) / float(special.erfcx(-a / _SQRT2)))
        if x > -0.01:
            mid, half = epsilon / (ratio * _SQRT2), ratio / (2.0 * _SQRT2)
            x = half * float(np.dot(_GL_WEIGHTS, _dlog_erfcx(mid + half * _GL_NODES)))
    if not x < 0.0:
        return -math.inf
    return la + math.log(-math.expm1(x))


def _log_guard(log_delta: float) -> float:
    """The margin in ``log delta`` that covers the evaluation error of :func:`_log_gaussian_delta`."""
    return 1e-12 + 1e-15 * abs(log_delta)


def gaussian_delta(epsilon: float, sensitivity: float, sigma: float) -> float:
    """The smallest ``delta`` for which ``f + N(0, sigma^2 I)`` with L2 sensitivity ``sensitivity``
    is (``epsilon``, delta)-private: ``Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D)``
    (Balle & Wang 2018, Theorem 8; exact for every ``epsilon >= 0`` and a fixed shift of norm
    ``D``)."""
    if sensitivity == 0.0:
        return 0.0
    return math.exp(_log_gaussian_delta(float(epsilon), float(sensitivity) / float(sigma)))


def classical_is_valid(epsilon: float, delta: float) -> bool:
    """Whether Guo et al.'s classical calibration gives (``epsilon``, ``delta``): the exact
    profile (:func:`gaussian_delta`) at the classical budget is at most ``delta``. False for large
    ``epsilon`` (above about 8.4 at ``delta = 1e-4``)."""
    _check_privacy(epsilon, delta)
    target = math.log(delta)
    return _log_gaussian_delta(float(epsilon), float(epsilon) / classical_constant(delta)) <= target


@functools.lru_cache(maxsize=256)
def _analytic_ratio(eps: float, delta: float) -> float:
    target = math.log(delta)
    guard = _log_guard(target)

    def f(log_r: float) -> float:
        return _log_gaussian_delta(eps, math.exp(log_r)) - target

    # bracket the root around the classical calibration r = eps / sqrt(2 ln(1.25 / delta))
    lo = hi = math.log(eps / math.sqrt(2.0 * math.log(1.25 / delta)))
    while f(lo) >= 0.0:
        lo -= 1.0
    while f(hi) <= 0.0:
        hi += 1.0
    log_r = optimize.brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    r = math.exp(log_r) * (1.0 - 1e-12)
    while _log_gaussian_delta(eps, r) > target - guard:  # never on the unsafe side of delta
        r *= 1.0 - 1e-12
    return r


def sensitivity_ratio(epsilon: float, delta: float, calibration: Calibration | str = Calibration.ANALYTIC) -> float:
    """The largest ``r = D / sigma`` for which the Gaussian mechanism is (``epsilon``, ``delta``)-private.

    The analytic Gaussian mechanism (Balle & Wang, "Improving the Gaussian Mechanism for
    Differential Privacy: Analytical Calibration and Optimal Denoising", ICML 2018, Theorem 8 and
    Algorithm 1): the profile ``delta(r)`` of :func:`gaussian_delta` increases in ``r``, so the
    root of ``delta(r) = delta`` (Brent's method on ``log r``, to machine precision) is the
    calibration. The root is then lowered in steps of ``1e-12`` (relative) until the computed
    profile is below ``delta`` by more than its evaluation error (below ``1e-15 (1 + |log delta|)``), so
    ``delta(r) <= delta`` always, and equal to it to about ``1e-11`` relative.
    ``calibration="classical"`` returns Guo et al.'s ``epsilon / sqrt(2 ln(1.5 / delta))``.
    """
    _check_privacy(epsilon, delta)
    if _calibration(calibration) is Calibration.CLASSICAL:
        return float(epsilon) / classical_constant(delta)
    return _analytic_ratio(float(epsilon), float(delta))


def noise_multiplier(*args: float, epsilon: float | None = None, delta: float | None = None,
                     calibration: Calibration | str = Calibration.ANALYTIC) -> float:
    """``c`` with ``sigma = c D / epsilon``: noise ``sigma`` certifies L2 sensitivity ``D`` at (epsilon, delta).

    ``c = epsilon / r`` with ``r`` from :func:`sensitivity_ratio` (the analytic Gaussian
    mechanism by default). Guo et al. use the classical constant ``sqrt(2 ln(1.5 / delta))``
    (``calibration="classical"``), which is larger (more noise) for small ``epsilon`` and does not
    give (epsilon, delta) for large ``epsilon`` (above about 8.4 at ``delta = 1e-4``).

    Deprecated form: ``noise_multiplier(delta)`` (or ``noise_multiplier(delta=...)`` without
    ``epsilon``), the signature of earlier versions, still returns the classical constant it
    returned then, with a :class:`DeprecationWarning`; pass ``epsilon=`` and ``delta=``.
    """
    if args:
        if len(args) > 1 or delta is not None or epsilon is not None:
            raise TypeError("noise_multiplier takes keyword arguments: noise_multiplier(epsilon=..., delta=...).")
        delta = args[0]
    if epsilon is None:
        if delta is None:
            raise TypeError("noise_multiplier needs epsilon= and delta=.")
        warnings.warn("noise_multiplier(delta) is deprecated and returns Guo et al.'s classical constant "
                      "sqrt(2 ln(1.5/delta)); call noise_multiplier(epsilon=..., delta=...) for the analytic "
                      "calibration, or classical_constant(delta).", DeprecationWarning, stacklevel=2)
        if not (0.0 < delta < 1.0):
            raise CertificationError(f"delta must be in (0, 1), got {delta}.")
        return classical_constant(delta)
    if delta is None:
        raise TypeError("noise_multiplier needs epsilon= and delta=.")
    return float(epsilon) / sensitivity_ratio(epsilon, delta, calibration)


def epsilon_for(residual: float, sigma: float, delta: float,
                calibration: Calibration | str = Calibration.ANALYTIC) -> float:
    """The smallest epsilon that noise ``sigma`` certifies for a gradient residual ``residual`` at ``delta``.

    Analytic: the exact inverse of the calibration, the smallest ``epsilon`` with
    ``gaussian_delta(epsilon, residual, sigma) <= delta`` (the profile decreases in ``epsilon``);
    the root is raised until the computed profile is below ``delta`` by more than its evaluation
    error, so the epsilon is never understated. Classical: ``c residual / sigma`` with
    ``c = sqrt(2 ln(1.5 / delta))``.
    """
    if not (0.0 < delta < 1.0):
        raise CertificationError(f"delta must be in (0, 1), got {delta}.")
    if not (math.isfinite(sigma) and sigma > 0):
        raise CertificationError(f"sigma must be a positive number, got {sigma}.")
    if not (math.isfinite(residual) and residual >= 0):
        raise CertificationError(f"residual must be a finite number >= 0, got {residual}.")
    if _calibration(calibration) is Calibration.CLASSICAL:
        return classical_constant(delta) * residual / sigma
    if residual == 0.0:
        return 0.0
    ratio, target = residual / sigma, math.log(delta)
    guard = _log_guard(target)

    def f(eps: float) -> float:
        return _log_gaussian_delta(eps, ratio) - target

    if f(0.0) <= -guard:
        return 0.0
    hi = max(ratio * math.sqrt(2.0 * math.log(1.25 / delta)), 1e-300)
    while f(hi) > -guard:
        hi *= 2.0
    eps = optimize.brentq(lambda e: f(e) + guard, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    while f(eps) > -guard:  # the certified epsilon is never understated
        eps = eps * (1.0 + 1e-13) + 1e-300
    return eps


@dataclass(frozen=True)
class CertifiedSpec:
    """What is certified: ``(epsilon, delta)``, the noise ``sigma`` and the feature-norm bound.

    Give ``sigma`` (default 1, as in Guo et al.'s experiments) or ``budget``, the largest
    cumulative residual to certify; the other follows from the analytic Gaussian mechanism
    (:func:`sensitivity_ratio`): ``budget = r sigma`` with ``r`` the largest sensitivity-to-noise
    ratio that is (epsilon, delta)-private, i.e. ``budget = sigma epsilon / c`` with
    ``c = epsilon / r`` (:attr:`c`). ``calibration`` is ``"analytic"`` (that calibration, the
    default) or ``"classical"`` (Guo et al.'s ``c = sqrt(2 ln(1.5 / delta))``, which earlier
    versions used; a stored spec without the field is classical, so old ledgers keep their
    budget and certificates); it also sets how :func:`epsilon_for` spends a residual.
    ``feature_bound`` is ``R`` with ``||x|| <= R`` for every row (None: the largest row norm of
    the training data, recorded at training). ``bound`` is ``"data"`` or ``"worst"``.
    """

    epsilon: float = 1.0
    delta: float = 1e-4
    sigma: float | None = None
    budget: float | None = None
    feature_bound: float | None = None
    bound: str = "data"
    calibration: str = Calibration.ANALYTIC.value

    def __post_init__(self) -> None:
        _check_privacy(self.epsilon, self.delta)
        object.__setattr__(self, "calibration", _calibration(self.calibration).value)
        ratio = sensitivity_ratio(float(self.epsilon), float(self.delta), self.calibration)
        if self.sigma is not None and self.budget is not None:
            raise CertificationError("Give sigma or budget, not both: one determines the other "
                                     "(budget = the largest residual that noise sigma certifies at (epsilon, delta)).")
        sigma = 1.0 if self.sigma is None and self.budget is None else self.sigma
        if sigma is None:
            if not (math.isfinite(self.budget) and self.budget > 0):
                raise CertificationError(f"budget must be a positive number, got {self.budget}.")
            sigma = self.budget / ratio
        if not (math.isfinite(sigma) and sigma > 0):
            raise CertificationError(f"sigma must be a positive number, got {sigma}.")
        object.__setattr__(self, "sigma", float(sigma))
        object.__setattr__(self, "budget", float(sigma) * ratio)
        if self.feature_bound is not None and not (math.isfinite(self.feature_bound) and self.feature_bound > 0):
            raise CertificationError(f"feature_bound must be a positive number, got {self.feature_bound}.")
        if self.bound not in BOUND_KINDS:
            raise CertificationError(f"bound must be one of {BOUND_KINDS}, got {self.bound!r}.")

    @property
    def c(self) -> float:
        """The noise multiplier ``c = sigma epsilon / budget`` of this calibration (:func:`noise_multiplier`)."""
        return noise_multiplier(epsilon=self.epsilon, delta=self.delta, calibration=self.calibration)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Certificate:
    """What one request (or the state after it) is certified for.

    ``residual_bound`` and ``worst_case_bound`` are this request's a-priori bounds;
    ``cumulative_bound`` the bound on the residual of the current model (training residual plus
    every request since); ``epsilon_spent`` (:func:`epsilon_for` of it) is the epsilon actually
    certified, at most ``epsilon`` while ``remaining >= 0``: a cumulative bound within the budget
    spends at most ``epsilon`` by construction (the budget was calibrated so that the profile at
    ``(epsilon, budget / sigma)`` is at most ``delta``, and it increases in the residual), so the
    root is clamped to ``epsilon`` there, where it can exceed it only by rounding. ``exact_residual`` is the measured
    ``||grad L_b(theta; D~)||`` when it was computed (a pass over the data).
    """

    epsilon: float
    delta: float
    sigma: float
    budget: float
    residual_bound: float
    worst_case_bound: float
    cumulative_bound: float
    bound_kind: str
    exact_residual: float | None = None
    retrained: bool = False
    refine_steps: int = 0
    calibration: str = Calibration.ANALYTIC.value

    @property
    def remaining(self) -> float:
        return self.budget - self.cumulative_bound

    @property
    def epsilon_spent(self) -> float:
        spent = epsilon_for(self.cumulative_bound, self.sigma, self.delta, self.calibration)
        return min(spent, self.epsilon) if self.cumulative_bound <= self.budget else spent

    @property
    def valid(self) -> bool:
        """The cumulative bound is within the budget (always so after :meth:`CertifiedModel.unlearn`)."""
        return self.cumulative_bound <= self.budget

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(remaining=self.remaining, epsilon_spent=self.epsilon_spent, valid=self.valid)
        return out


@dataclass
class CertifiedResult(UnlearnResult):
    """An :class:`UnlearnResult` with the request's :class:`Certificate`."""

    certificate: Certificate | None = None


# ---------------------------------------------------------------------------- checks
def check_certifiable(model) -> None:
    """Raise :class:`CertificationError` unless ``model`` satisfies the theory's assumptions."""
    if not isinstance(model, LogisticRegression):
        raise CertificationError(
            f"Certified unlearning needs a strongly convex model: unlearnkit's logistic regression; got {type(model).__name__}."
        )
    if not model.l2 > 0:
        raise CertificationError("Certified unlearning needs l2 > 0 (strong convexity); the model has l2 = 0.")
    if model.fit_intercept and not model.penalize_intercept:
        raise CertificationError("Certified unlearning needs a penalised intercept (strong convexity); set penalize_intercept=True.")
    p = int(model.n_params)
    if p > MAX_CERTIFIED_PARAMS:
        raise CertificationError(
            f"Certified unlearning keeps a dense {p:,} x {p:,} float64 Hessian and its factor ({16 * p * p / 1e9:,.1f} GB) "
            f"for this model ({model.n_features:,} features, {model.n_classes} classes); the limit is "
            f"{MAX_CERTIFIED_PARAMS:,} parameters (unlearnkit.influence.certified.MAX_CERTIFIED_PARAMS). "
            "Reduce the number of features (e.g. PCA or feature selection) first."
        )
    if next(model.parameters()).dtype != torch.float64:
        raise CertificationError("Certified unlearning needs float64 parameters (residuals near 1e-10 are meaningless in float32).")


def augmented_norms(model: LogisticRegression, X) -> np.ndarray:
    """``||x~||`` per row: the feature norm, with the intercept's 1 when the model has one."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    sq = np.einsum("ij,ij->i", X.reshape(len(X), -1), X.reshape(len(X), -1)).astype(np.float64)
    return np.sqrt(sq + (1.0 if model.fit_intercept else 0.0))


def _check_rows(model, data: Dataset, R: float, what: str) -> np.ndarray:
    norms = augmented_norms(model, data.X)
    raw = np.sqrt(np.maximum(norms**2 - (1.0 if model.fit_intercept else 0.0), 0.0))
    if raw.size and raw.max() > R * (1 + 1e-12):
        k = int(np.argmax(raw))
        raise CertificationError(
            f"{what}: row {int(data.ids[k])} has feature norm {raw[k]:.6g} > the certified bound R = {R:.6g}. "
            "The certificate assumes ||x|| <= R for every row: rescale the data (e.g. divide by the largest row norm) "
            "or state a larger feature_bound when training."
        )
    return norms


def _augmented_rows(model: LogisticRegression, X: np.ndarray) -> torch.Tensor:
    X = torch.as_tensor(np.asarray(X, dtype=np.float64).reshape(len(X), model.n_features))
    if model.fit_intercept:
        X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    return X


def _gram(model: LogisticRegression, data: Dataset, block: int = 65536) -> torch.Tensor:
    d1 = model.n_features + int(model.fit_intercept)
    gram = torch.zeros(d1, d1, dtype=torch.float64)
    for start in range(0, len(data), block):
        Xa = _augmented_rows(model, data.dense_rows(start, start + block))
        gram += Xa.T @ Xa
    return gram


def _class_blocks(model: LogisticRegression, v: torch.Tensor) -> torch.Tensor:
    """``v`` in parameter order as a ``(n_outputs, d~)`` matrix (weights, then the intercept)."""
    C, d = model.n_outputs, model.n_features
    W = v[: C * d].reshape(C, d)
    return torch.cat([W, v[C * d:].reshape(C, 1)], 1) if model.fit_intercept else W


def _lipschitz(model: LogisticRegression) -> float:
    return HESSIAN_LIPSCHITZ_BINARY if model.n_outputs == 1 else HESSIAN_LIPSCHITZ_SOFTMAX


def _grad_constant(model: LogisticRegression) -> float:
    return 1.0 if model.n_outputs == 1 else math.sqrt(2.0)


# ---------------------------------------------------------------------------- row sources
class MemoryRows:
    """The current (corrected) training data, in memory; requests compose one after another."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def resolve(self, changes: Changes) -> Resolved:
        return changes.resolve(self.data)

    def commit(self, resolved: Resolved) -> None:
        self.data = resolved.corrected

    def full(self) -> Dataset:
        return self.data


@dataclass
class Proposal:
    """A computed but not yet committed request (see :meth:`CertifiedModel.propose`)."""

    theta: torch.Tensor
    curvature: CachedCurvature
    step_norm: float
    worst_step: float
    residual_bound: float
    worst_case_bound: float
    gram: torch.Tensor
    gram_top: float
    n_rows: int
    grad_diff_norm: float
    per_sample_gradients: int
    low_rank: int


@dataclass
class CertifiedState:
    """Everything the budget accounting needs between requests (persisted by the ledger)."""

    feature_bound: float
    n_rows: int
    gram: torch.Tensor  # X~^T X~ of the current corrected data
    gram_top: float  # upper bound on the top eigenvalue of gram (= ||X~||_2^2)
    cumulative_bound: float
    drift: float = 0.0
    drift_worst: float = 0.0
    noise_seed: int = 0
    trainings: int = 1

    def to_dict(self) -> dict:
        """The scalar fields (``gram`` is persisted separately, as a tensor)."""
        return {k: v for k, v in asdict(self).items() if k != "gram"}

    @classmethod
    def of_data(cls, model, data: Dataset, *, feature_bound: float, cumulative_bound: float, **kw) -> "CertifiedState":
        gram = _gram(model, data)
        top = float(torch.linalg.eigvalsh(gram)[-1]) if gram.numel() else 0.0
        return cls(feature_bound, len(data), gram, top * (1 + 1e-12), cumulative_bound, **kw)


# ---------------------------------------------------------------------------- the model
class CertifiedModel:
    """A loss-perturbed logistic regression that unlearns with certificates.

    Build one with :func:`certified_train`. :meth:`unlearn` applies a :class:`Changes` on top of
    every earlier one (the corrected data is their composition), with a second-order step on the
    cached curvature, and returns the new model and its :class:`Certificate`; when the budget
    would be exceeded it retrains on the corrected data with fresh noise instead, and says so.
    """

    def __init__(self, model: LogisticRegression, rows, spec: CertifiedSpec, state: CertifiedState,
                 curvature: CachedCurvature, *, batch_size: int = 8192, device=None) -> None:
        check_certifiable(model)
        self.model = model
        self.rows = rows
        self.spec = spec
        self.state = state
        self.curvature = curvature
        self.batch_size = int(batch_size)
        self.device = device

    # ------------------------------------------------------------------ information
    @property
    def theta(self) -> torch.Tensor:
        return FlatModel(self.model).theta()

    def certificate(self, *, residual_bound: float = 0.0, worst_case_bound: float = 0.0,
                    exact_residual: float | None = None, retrained: bool = False, refine_steps: int = 0) -> Certificate:
        s = self.spec
        return Certificate(s.epsilon, s.delta, s.sigma, s.budget, residual_bound, worst_case_bound,
                           self.state.cumulative_bound, s.bound, exact_residual, retrained, refine_steps,
                           s.calibration)

    def public_model(self) -> LogisticRegression:
        """The current parameters without the noise ``b``: the model to publish or serve."""
        cfg = dict(self.model.config)
        cfg["loss_perturbation"] = False
        public = LogisticRegression(**cfg).to(torch.float64)
        out = FlatModel(public).to_model(FlatModel(self.model).theta())
        out.train_config = getattr(self.model, "train_config", None)
        return out

    def exact_residual(self, data: Dataset | None = None) -> float:
        """``||grad L_b(theta; D~)||`` on the current corrected data (one pass over it; pass ``data``
        when it is already materialised)."""
        data = self.rows.full() if data is None else data
        return gradient_residual(FlatModel(self.model), data, batch_size=self.batch_size)

    # ------------------------------------------------------------------ the update
    def propose(self, resolved: Resolved) -> Proposal:
        """Compute the second-order step and its bounds for a resolved request, changing nothing.

        Costs ``2k`` per-sample gradients, a rank ``<= 2kC`` update of a copy of the cached
        factor and one solve: ``O(k C p^2)``, independent of the number of training rows.
        """
        model, st = self.model, self.state
        R = st.feature_bound
        Z, Zt = resolved.Z, resolved.Z_tilde
        if len(Zt):
            _check_rows(model, Zt, R, "Corrected rows")
        flat = FlatModel(model)
        G = gradient_difference(flat, resolved, batch_size=self.batch_size)
        # rows whose features change (or that go away) change the Hessian; label edits do not
        Xz, Xt, old_rows, new_rows, feat_changed, removed = hessian_row_changes(resolved)
        dt, dev = flat.dtype, flat.device
        anchor = self.curvature.anchor
        add = (model.hessian_factors(anchor, torch.as_tensor(Xt[new_rows], dtype=dt, device=dev))
               if new_rows.size else None)
        remove = (model.hessian_factors(anchor, torch.as_tensor(Xz[old_rows], dtype=dt, device=dev))
                  if old_rows.size else None)
        curvature = copy.copy(self.curvature)  # update() replaces tensors, never mutates them
        curvature.update(add, remove)
        step = curvature.solve(G)
        if not torch.all(torch.isfinite(step)):
            raise SolverError("The second-order step is not finite; the model was not changed.")
        theta = flat.theta() - step
        step_norm = float(torch.linalg.vector_norm(step))
        # the Gram matrix of D~ and a bound on its top eigenvalue, kept current
        Xa_old = _augmented_rows(model, Xz[old_rows])
        Xa_new = _augmented_rows(model, Xt[new_rows]) if new_rows.size else Xa_old[:0]
        gram = st.gram - Xa_old.T @ Xa_old + Xa_new.T @ Xa_new
        gram_top = st.gram_top + float((Xa_new * Xa_new).sum())
        n_rows = st.n_rows - (len(Z) - len(Zt))
        gamma = _lipschitz(model)
        blocks = _class_blocks(model, step.detach().cpu())
        x_step = math.sqrt(max(float(torch.einsum("ci,ij,cj->", blocks, gram, blocks)), 0.0))  # ||X~ Delta||_F
        Ra = math.sqrt(R * R + (1.0 if model.fit_intercept else 0.0))
        data_bound = gamma * math.sqrt(gram_top) * x_step * Ra * (st.drift + step_norm / 2.0)
        # worst case from the stated constants only
        g = _grad_constant(model)
        n_label_only = int(len(Zt) - feat_changed.sum())
        g_max = g * Ra * (n_label_only + int(removed.sum()) + 2 * int(feat_changed.sum()))
        D = g_max / model.l2
        worst = gamma * n_rows * Ra**3 * (st.drift_worst + D / 2.0) * D
        return Proposal(theta, curvature, step_norm, D, data_bound, worst, gram, gram_top, n_rows,
                        float(torch.linalg.vector_norm(G)), len(Z) + len(Zt),
                        sum(F.shape[1] for F in (add, remove) if F is not None))

    def commit(self, resolved: Resolved, proposal: Proposal) -> None:
        """Make a proposal the current state (the caller checked the budget)."""
        st = self.state
        self.model = FlatModel(self.model).to_model(proposal.theta)
        self.curvature = proposal.curvature
        self.rows.commit(resolved)
        st.gram, st.gram_top, st.n_rows = proposal.gram, proposal.gram_top, proposal.n_rows
        st.drift = float(torch.linalg.vector_norm(proposal.theta - self.curvature.anchor))
        st.drift_worst += proposal.worst_step
        st.cumulative_bound += proposal.residual_bound if self.spec.bound == "data" else proposal.worst_case_bound

    def unlearn(self, changes: Changes, *, exact_residual: bool = False, on_exhausted: str = "retrain") -> CertifiedResult:
        """Apply ``changes`` (on top of every earlier request) and certify the result.

        ``on_exhausted``: ``"retrain"`` (default) retrains on the corrected data with fresh noise
        when the request would exceed the budget; ``"error"`` raises
        :class:`CertificationError` and changes nothing. ``exact_residual=True`` also measures
        the residual (one pass over the data).
        """
        start = timing.start()
        return self.apply_resolved(self.rows.resolve(changes), exact_residual=exact_residual,
                                   on_exhausted=on_exhausted, start=start)

    def apply_resolved(self, resolved: Resolved, *, exact_residual: bool = False, on_exhausted: str = "retrain",
                       start: float | None = None) -> CertifiedResult:
        """:meth:`unlearn` for a change set already resolved against :attr:`rows`."""
        if on_exhausted not in ("retrain", "error"):
            raise CertificationError(f"on_exhausted must be 'retrain' or 'error', got {on_exhausted!r}.")
        start = timing.start() if start is None else start
        proposal = self.propose(resolved)
        spend = proposal.residual_bound if self.spec.bound == "data" else proposal.worst_case_bound
        if self.state.cumulative_bound + spend > self.spec.budget:
            if on_exhausted == "error":
                raise CertificationError(
                    f"This request's residual bound {spend:.4g} would bring the cumulative bound to "
                    f"{self.state.cumulative_bound + spend:.4g}, over the budget {self.spec.budget:.4g}; nothing was changed."
                )
            previous = self.rows.data if isinstance(self.rows, MemoryRows) else None
            self.rows.commit(resolved)
            try:
                self.retrain()
            except BaseException:
                if previous is not None:  # leave the model as it was (a ledger reloads its committed state)
                    self.rows.data = previous
                raise
            cert = self.certificate(residual_bound=proposal.residual_bound, worst_case_bound=proposal.worst_case_bound,
                                    exact_residual=self.state.cumulative_bound, retrained=True)
            method = "certified-retrain"
        else:
            self.commit(resolved, proposal)
            cert = self.certificate(residual_bound=proposal.residual_bound, worst_case_bound=proposal.worst_case_bound,
                                    exact_residual=self.exact_residual() if exact_residual else None)
            method = "certified-second-order"
        return CertifiedResult(
            copy.deepcopy(self.model), method, timing.since(start), resolved.n_affected,
            per_sample_gradients=proposal.per_sample_gradients,
            diagnostics={"step_norm": proposal.step_norm, "grad_diff_norm": proposal.grad_diff_norm,
                         "low_rank_update": proposal.low_rank, "certificate": cert.to_dict()},
            certificate=cert,
        )

    # ------------------------------------------------------------------ retraining and refinement
    def retrain(self, *, seed: int | None = None) -> None:
        """Retrain on the current corrected data with fresh noise; resets the budget.

        ``seed`` draws the new ``b``; None draws a secret random one (see :func:`certified_train`).
        Like :func:`certified_train`, the new model's own gradient residual must be within the
        budget (the certificate starts from it): otherwise :class:`CertificationError` is raised
        and nothing is changed.
        """
        seed = secrets.randbits(63) if seed is None else int(seed)
        data = self.rows.full()  # O(n d) for a ledger: materialise once
        fresh = _train_perturbed(self.model, data, self.spec, seed, device=self.device)
        residual = gradient_residual(FlatModel(fresh), data, batch_size=self.batch_size)
        _check_training_residual(residual, self.spec, "retrained")
        curvature = CachedCurvature.at(fresh, data, batch_size=self.batch_size)
        self.state = CertifiedState.of_data(
            fresh, data, feature_bound=self.state.feature_bound, cumulative_bound=residual,
            noise_seed=seed, trainings=self.state.trainings + 1,
        )
        self.model, self.curvature = fresh, curvature

    def refine(self, target: float | None = None, *, max_steps: int = 50) -> dict:
        """Newton steps on ``L_b(.; D~)`` until the exact residual is at most ``target``.

        ``target`` defaults to the residual retraining reaches (the optimiser's tolerance,
        ``n * 1e-10``). Reuses the cached factor and refreshes the Hessian at the current
        parameters when a step reduces the residual less than tenfold. Returns the steps taken,
        Hessian refreshes, and the residual reached, which becomes the cumulative bound.
        """
        data = self.rows.full()
        target = len(data) * 1e-10 if target is None else target
        flat = FlatModel(self.model)
        theta, self.curvature, info = newton_refine(flat, data, flat.theta(), self.curvature, target=target,
                                                    max_steps=max_steps, batch_size=self.batch_size)
        self.model = flat.to_model(theta)
        st = self.state
        st.cumulative_bound = info["residual"]
        st.drift = st.drift_worst = float(torch.linalg.vector_norm(theta - self.curvature.anchor))
        return info


def newton_refine(flat: FlatModel, data: Dataset, theta: torch.Tensor, curvature: CachedCurvature, *, target: float,
                  max_steps: int = 50, batch_size: int = 8192) -> tuple[torch.Tensor, CachedCurvature, dict]:
    """Newton steps ``theta <- theta - M^{-1} grad L(theta; data)`` until ``||grad L|| <= target``.

    ``M`` starts as the cached ``curvature`` (a chord step: no Hessian pass) and is recomputed at
    the current parameters whenever a step was damped or reduced the residual less than tenfold (then the
    steps converge quadratically). A backtracking line search on the objective keeps far-away
    starts (a large change) convergent. Each step needs one gradient and one or more objective
    evaluations (passes over ``data``). Returns
    the parameters, the curvature in use, and ``steps``, ``hessian_refreshes``, ``residual``,
    ``target``, ``reached``, ``seconds``.
    """
    target = float(target)
    if not (math.isfinite(target) and target > 0):
        raise CertificationError(f"target must be a positive number, got {target}.")
    if max_steps < 0:
        raise CertificationError(f"max_steps must be >= 0, got {max_steps}.")
    start = timing.start()
    steps = refreshes = 0
    previous = math.inf
    while True:
        g = objective_gradient(flat, data, theta, batch_size=batch_size)
        r = float(torch.linalg.vector_norm(g))
        if not math.isfinite(r):
            raise SolverError("Refinement met a non-finite gradient; the model was not changed.")
        if r <= target or steps >= max_steps:
            break
        if r > previous / 10.0:  # slow contraction or a damped step: the anchor is stale, take a true Newton step
            curvature = CachedCurvature.at(flat.model, data, theta, batch_size=batch_size, null_space=curvature.null_space)
            refreshes += 1
        direction = curvature.solve(g)  # a descent direction: the cached matrix is positive definite
        # backtracking (Armijo) line search: safe far from the optimum; skipped when the predicted
        # decrease is at the rounding level of the objective (it cannot judge the step; Newton can)
        f0, slope, t = objective_value(flat, data, theta, batch_size=batch_size), float(g @ direction), 1.0
        if slope > 1e-13 * abs(f0):
            for _ in range(30):
                if objective_value(flat, data, theta - t * direction, batch_size=batch_size) <= f0 - 1e-4 * t * slope:
                    break
                t *= 0.5
        theta = theta - t * direction
        previous = r if t == 1.0 else 0.0  # after a damped step, refresh the curvature
        steps += 1
    return theta, curvature, {"steps": steps, "hessian_refreshes": refreshes, "residual": r, "target": target,
                              "reached": r <= target, "seconds": timing.since(start)}


# ---------------------------------------------------------------------------- training
def _train_perturbed(model: LogisticRegression, data: Dataset, spec: CertifiedSpec, seed: int, *, device=None, config=None):
    from unlearnkit.training import TrainConfig, train

    cfg = dict(model.config)
    cfg["loss_perturbation"] = True
    net = LogisticRegression(**cfg).to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        net.perturbation.copy_(spec.sigma * torch.randn(net.n_params, generator=gen, dtype=torch.float64))
    config = config or getattr(model, "train_config", None) or TrainConfig(seed=seed, dtype="float64")
    if config.dtype not in (None, "float64"):
        raise CertificationError("Certified training needs dtype='float64'.")
    out = train(net, data, config=config, device=device)
    check_certifiable(out)
    return out


def certified_train(
    model: LogisticRegression,
    data: Dataset,
    spec: CertifiedSpec | None = None,
    *,
    seed: int | None = None,
    config=None,
    batch_size: int = 8192,
    device=None,
) -> CertifiedModel:
    """Train ``model``'s architecture on ``data`` with loss perturbation and return a
    :class:`CertifiedModel` ready to unlearn requests.

    ``spec`` sets ``(epsilon, delta)``, the noise ``sigma`` (or the residual ``budget``) and the
    feature-norm bound ``R``; every row must satisfy ``||x|| <= R``. ``seed`` draws ``b``; the
    default None draws a secret random seed. The certificate holds only while ``b`` stays
    private: it is stored in the model (buffer ``perturbation``), so publish
    :meth:`CertifiedModel.public_model` instead. Costs one training and one Hessian (``O(n p^2)``).
    """
    seed = secrets.randbits(63) if seed is None else int(seed)
    spec = spec or CertifiedSpec()
    if not isinstance(model, LogisticRegression):
        check_certifiable(model)
    model = copy.deepcopy(model).to(torch.float64)  # nn.Module.to works in place: leave the caller's model alone
    check_certifiable(model)
    model.check_data(data)
    if data.is_sparse:
        raise CertificationError("Certified unlearning works on dense features; convert with data.replace(X=data.X.toarray()).")
    if spec.feature_bound is not None:
        R = spec.feature_bound
        _check_rows(model, data, R, "Training data")
    else:  # the largest row norm of the data: holds by construction
        norms = augmented_norms(model, data.X)
        R = max(float(np.sqrt(max(float(np.max(norms**2)) - float(model.fit_intercept), 0.0))) if len(data) else 0.0, 1e-12)
    fitted = _train_perturbed(model, data, spec, seed, device=device, config=config)
    curvature = CachedCurvature.at(fitted, data, batch_size=batch_size)
    state = CertifiedState.of_data(fitted, data, feature_bound=R, cumulative_bound=0.0, noise_seed=int(seed))
    cm = CertifiedModel(fitted, MemoryRows(data), spec, state, curvature, batch_size=batch_size, device=device)
    state.cumulative_bound = cm.exact_residual(data)
    _check_training_residual(state.cumulative_bound, spec, "trained")
    return cm


def _check_training_residual(residual: float, spec: CertifiedSpec, what: str) -> None:
    """Refuse a freshly trained model whose own residual ``||grad L_b(theta; D)||`` exceeds the budget."""
    if not residual <= spec.budget:
        raise CertificationError(
            f"The {what} model's own gradient residual {residual:.3g} already exceeds the budget {spec.budget:.3g}, "
            "so no certificate can start from it; nothing was changed. Raise sigma (or the budget), or tighten the "
            "training tolerance (TrainConfig.tol, max_iter)."
        )


__all__ = [
    "BOUND_KINDS", "Calibration", "Certificate", "CertifiedModel", "CertifiedResult", "CertifiedSpec", "CertifiedState",
    "HESSIAN_LIPSCHITZ_BINARY", "HESSIAN_LIPSCHITZ_SOFTMAX", "MemoryRows", "Proposal", "augmented_norms",
    "MAX_CERTIFIED_PARAMS", "certified_train", "check_certifiable", "classical_constant", "classical_is_valid", "epsilon_for",
    "gaussian_delta", "newton_refine", "noise_multiplier",
    "sensitivity_ratio",
]
