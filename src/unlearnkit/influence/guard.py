"""A safe step for the second-order update: Levenberg-Marquardt damping chosen by a trust-region rule.

The second-order update ``theta* - (H + lambda I)^{-1} G`` is Newton's step on the corrected
objective ``L(theta; D~) = sum_{z in D~} l(z, theta) + (l2/2)||theta||^2`` from ``theta*``
(``G = g(Z~) - g(Z)`` is its gradient there when ``theta*`` minimises the original objective).
Newton's step trusts a quadratic model of ``L(.; D~)``; far from where that model holds (a
confident label flipped on near-separable data, a non-convex network, a large change) the step
overshoots and can leave the model *worse* on the corrected data than the original was. The
rule here is the classical remedy (Levenberg 1944, Marquardt 1963; the trust-region view of
Moré 1978 and Nocedal & Wright, *Numerical Optimization*, 2nd ed., ch. 4):

1. **Objective estimate.** ``f(theta) = sum_{z in Z~} l(z, theta) + (n_rest / m) sum_{z in S}
   l(z, theta) + regulariser``: the corrected affected rows ``Z~`` exactly, plus a fixed random
   sample ``S`` of ``m`` of the ``n_rest`` other rows of ``D~`` (drawn once from ``seed``,
   weighted ``n_rest / m``: an unbiased estimate of ``L(theta; D~)``; every row when ``m >=
   n_rest``, which makes ``f`` the exact objective). The same sample is used for every
   candidate, so differences of ``f`` are not blurred by resampling.
2. **Ratio test.** For a damping ``lambda`` the step is ``s = (H + lambda I)^{-1} G`` and the
   candidate ``theta* - s``. The predicted decrease is that of the *undamped* quadratic model,
   ``pred = G.s - (1/2) s.H s`` (one curvature product; without a product, ``(1/2)(G.s +
   lambda s.s)``, the same number when the solve is exact; Madsen, Nielsen & Tingleff, *Methods
   for Non-Linear Least Squares Problems*, 2004, sec. 3.2). The actual decrease is
   ``f(theta*) - f(theta* - s)``; the candidate is accepted when ``rho = actual / pred > eta``
   and the actual decrease exceeds the rounding floor ``8 eps sum |l_i|`` of ``f``. On convex
   problems a lower-precision model's ``f`` is evaluated in float64 (:func:`float64_view`), and the
   undamped step passes this test when neither its predicted nor its actual change exceeds the
   floor (its effect is below what the precision can measure; recorded as ``not_judged``), while a
   measurable rise (``actual < -floor``) still fails it. Each failed try records why (``refused``).
3. **The untouched rows.** A candidate must also not raise the part of ``f`` outside ``Z~`` (the
   rows the request did not touch, ``S`` or ``D~`` minus ``Z~``, plus the regulariser) by more
   than ``untouched_slack`` (1) times its decrease of ``f``, beyond the rounding floor: the rows
   the request left alone may not lose more than the whole objective gains. Cross-entropy is unbounded: when the original
   model is confidently wrong on the corrected rows, their loss dominates ``f``, and a long step
   that makes every row look like the corrected ones lowers ``f`` while wrecking the rest of the
   model. Measured on a CNN trained on 2,000 Fashion-MNIST rows with 190 targeted label flips,
   corrected by an EK-FAC step: at damping ``1e4`` the step lowered ``f`` (3798 -> 3532) while the
   untouched rows' loss rose from 590 to 3525 and test accuracy fell from 0.738 to 0.529; at
   ``1e5`` both parts fell (untouched rows 533) and test accuracy rose to 0.764; retraining
   lowered the untouched part too (566). The bound 1 is what retraining satisfies in the
   quadratic model: with ``u(theta) = (1/2) theta'A theta`` for the untouched part (the original
   model fits those rows) and ``a(theta) = (1/2)(theta - p)'B(theta - p)`` for the corrected rows,
   the retrained ``q = (A + B)^{-1} B p`` raises ``u`` by ``(1/2) q'Aq`` while the whole objective
   falls by ``(1/2) q'(A + B)q``, so the ratio is below 1 whatever ``A, B >= 0``. (Measured on
   logistic regression with confident labels flipped, retraining's ratio was 0.19-0.66; on the
   CNN above it was negative; the rejected step's was 11.) The test catches gross failures only: on
   the same problem a step at damping ``1.4e4`` whose untouched rows paid 0.42 of the gain passed
   it and still cost held-out accuracy (0.739 -> 0.664); rule 4 is the check for that.
3b. **Convex problems: the gradient residual instead.** On a convex model (or ``params="head"``)
   the untouched-rows test is replaced by one on the gradient residual ``||grad L(theta; D~)||``,
   the distance to the corrected optimum that retraining drives to zero: a candidate must not raise
   it above the original model's. The untouched-rows bound refuses exact Newton steps of ordinary
   requests there (10 random relabels of 20,000 rows of a planted logistic model: the untouched
   part rose by 1.04 times the decrease for the step that lies 9e-6 from the retrained parameters,
   in relative distance), while the residual separates what it must: on the standardised
   breast-cancer data with 10 confidently fitted rows relabelled, the undamped step raises the
   residual from 29 to 739 (accuracy on the corrected data 0.967 -> 0.43), damping 6.9 lowers the
   objective but raises the residual to 43 (accuracy 0.960), damping 69 lowers both (residual
   20.7, accuracy 0.967). Newton's method on convex problems is safeguarded by the same measure
   (a line search on the residual norm; Nocedal & Wright, ch. 11.5, the merit function
   ``||grad||^2``), which :mod:`unlearnkit.influence.refine` uses too. It judges Newton steps only:
   a gradient step (the first-order update) does not aim to lower the gradient's norm, and its guard
   judges the objective alone. The residual is judged only
   when the objective is exact (every row): estimated from a sample (the cached-curvature path,
   weight ``n/m``) its noise exceeds what it must detect (10 random relabels of 100,000 rows of a
   planted logistic model: exact Newton steps with ``rho = 0.99`` had a sampled residual of 51
   against 31 at ``theta0``), so there the objective's rule alone judges the step.
4. **Held-out rows (when given).** With held-out rows ``V`` (the ``val`` data of
   :func:`unlearnkit.unlearn`), a candidate must also not misclassify more of them than the
   original model (``h``, a count). A network fits its training rows with margins a step may
   leave intact while rows it never saw change class: on 10,000 Fashion-MNIST rows with 985
   targeted flips, a K-FAC step that passed rules 2 and 3 took test accuracy from 0.807 to 0.801,
   an EK-FAC step to 0.780. The count, not the held-out loss: the loss is dominated by held-out
   rows the original model was confidently wrong about, as the training objective is by the
   corrected rows, and that EK-FAC step lowered it. ``h`` estimates the test error, it is not an
   oracle: with few held-out rows it is noisy (and it is measured on the rows the caller chose).
   It applies only to requests that only relabel rows (corrections): forgetting rows or
   features may rightly cost held-out rows like them (forgetting a class does, by design; so
   does removing a feature the model relied on), and a request mixing both is not checked.
5. **Damping update.** After a failed try ``lambda`` is multiplied by ``increase`` (10) and the
   step recomputed, up to ``max_tries`` tries in all. From ``lambda = 0`` (the exact Newton
   step, the default for convex models) the first increase goes to ``||G|| / ||s||``, the
   curvature scale along the rejected step (an eigenvalue of ``H`` when ``s`` is an
   eigenvector; adding it roughly halves the step). After a very successful step (``rho >
   very_successful``) the damping proposed for the *next* step (the next chunk of an iterative
   update) is ``lambda * decrease``; otherwise it stays ``lambda``. After a backtracked step the
   next one starts from the damping whose direction was shortened, after a rejection from this
   step's initial damping (more damping did not help: the next chunk should not start where the
   failed search ended).
6. **Backtracking, last resort.** When every try failed, the direction of the try with the
   lowest ``f`` is shortened, ``theta* - alpha s`` with ``alpha = 1/2, 1/4, ...``
   (``backtrack_steps`` halvings), and the first ``alpha`` that passes the same ratio test
   (an Armijo sufficient-decrease condition, ``pred(alpha) = alpha G.s - (alpha^2/2) s.H s``)
   (and the untouched-rows test) is returned, status ``backtracked``.
7. **Guarantee.** If nothing lowers ``f`` below ``f(theta*)``, ``theta*`` itself is returned
   with status ``rejected``: the result is never worse than the original model on ``f``. (If
   the solver fails at every damping, so that there is no step to judge, its error is raised.)

Every try is recorded (damping, ``f``, actual and predicted decrease, ``rho``, step norm, or the
solver's error) in :attr:`GuardOutcome.diagnostics`.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import SolverError
from unlearnkit.influence.functional import FlatModel

RULE = "levenberg-marquardt trust region (Nocedal & Wright, Numerical Optimization, ch. 4)"
_STREAM = 1  # the objective sample's random stream next to its seed
SOURCE = "engineering: trust-region rule (Nocedal & Wright, Numerical Optimization, ch. 4)"


class GuardStatus(str, enum.Enum):
    """How a guarded step ended."""

    ACCEPTED = "accepted"        # a damped (or undamped) step passed the ratio test
    BACKTRACKED = "backtracked"  # every damping failed; a shortened step passed the ratio test
    REJECTED = "rejected"        # nothing lowered the objective estimate: the original parameters are returned


class DampedSolve(Protocol):
    """``solve(v, damping) -> x ~= (H + damping I)^{-1} v`` for the curvature ``H`` of the update."""

    def __call__(self, v: torch.Tensor, damping: float) -> torch.Tensor: ...


class SampledObjective:
    """``f(theta)``: the corrected objective on ``Z~`` plus a fixed, weighted sample of the other rows.

    ``f(theta) = sum_{z in Z~} l(z, theta) + w sum_{z in S} l(z, theta) + regulariser(theta)``
    with ``S`` ``rows`` rows drawn without replacement (``seed``) from the rows of ``corrected``
    whose ids are not in ``Z~`` and ``w = n_rest / |S|`` (unbiased for ``L(theta; D~)``); ``rows=None``
    or ``rows >= n_rest`` uses every row with ``w = 1`` (``f`` is then ``L(theta; D~)`` exactly).
    Values are accumulated in float64. The draw touches ``O(rows + |Z~|)`` rows, not ``n``; it uses
    the random stream ``(seed, 1)``, independent of the Hessian row sample drawn with ``seed``
    (:func:`unlearnkit.influence.updates.hessian_sample`), so that the step is judged on rows its
    curvature was not estimated from.
    """

    def __init__(self, flat: FlatModel, corrected: Dataset, z_tilde: Dataset, *, rows: int | None = 4096,
                 seed: int = 0, batch_size: int = 1024) -> None:
        if rows is not None and (isinstance(rows, bool) or int(rows) < 1):
            raise SolverError(f"The guard's sample size must be an integer >= 1 or None, got {rows!r}.")
        self.flat = flat
        self.z_tilde = z_tilde
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        n = len(corrected)
        n_rest = n - len(z_tilde)
        self.exact = rows is None or rows >= n_rest
        if self.exact:  # every row of D~ (Z~ included) once: no copy of the data
            self.sample, self.weight = corrected, 1.0
        else:
            # draw a few more than needed, drop the affected rows, keep the first `rows`: uniform over the others
            rng = np.random.default_rng([self.seed, _STREAM])  # not the stream of the Hessian row sample drawn with `seed`
            draw = rng.choice(n, size=min(n, int(rows) + len(z_tilde)), replace=False)
            draw = draw[~np.isin(corrected.ids[draw], z_tilde.ids)][: int(rows)]
            self.sample = corrected.subset(np.sort(draw))
            self.weight = n_rest / len(self.sample)
        self.rows_total = n
        self.evaluations = 0
        self.linear = None  # (c, theta0): the control variate's linear term (with_control_variate)
        self.control_variate = False

    @classmethod
    def for_request(cls, flat: FlatModel, data: Dataset, resolved, *, rows: int | None = 4096, seed: int = 0,
                    batch_size: int = 1024) -> "SampledObjective":
        """The same estimate as ``SampledObjective(flat, resolved.corrected, resolved.Z_tilde, ...)`` (the same rows,
        drawn with the same ``seed``), without building the corrected data set ``D~`` when a sample is drawn: the rows
        of ``D~`` outside ``Z~`` are rows of ``data`` the request did not touch, so the sample is read from ``data``
        (``O(rows + |Z|)``, what a request on a cached curvature may cost). With ``rows=None`` or a sample as large as
        the data, ``D~`` is built (the exact objective needs every row)."""
        z_tilde = resolved.Z_tilde
        removed_ids = np.setdiff1d(resolved.Z.ids, z_tilde.ids)
        n = len(data) - removed_ids.size
        if rows is None or (not isinstance(rows, bool) and int(rows) >= n - len(z_tilde)):
            return cls(flat, resolved.corrected, z_tilde, rows=rows, seed=seed, batch_size=batch_size)
        out = cls.__new__(cls)
        if isinstance(rows, bool) or int(rows) < 1:
            raise SolverError(f"The guard's sample size must be an integer >= 1 or None, got {rows!r}.")
        out.flat, out.z_tilde, out.seed, out.batch_size = flat, z_tilde, int(seed), int(batch_size)
        out.exact = False
        rng = np.random.default_rng([out.seed, _STREAM])  # the draw of __init__, position for position
        draw = rng.choice(n, size=min(n, int(rows) + len(z_tilde)), replace=False)
        # position j of D~ (data minus the removed rows, in order) is position j + #{removed r_i: r_i - i <= j} of data
        removed_pos = np.sort(data.positions(removed_ids)) if removed_ids.size else np.zeros(0, dtype=np.int64)
        at = draw + np.searchsorted(removed_pos - np.arange(removed_pos.size), draw, side="right")
        at = at[~np.isin(data.ids[at], z_tilde.ids)][: int(rows)]
        out.sample = data.subset(np.sort(at))
        out.weight = (n - len(z_tilde)) / len(out.sample)
        out.rows_total = n
        out.evaluations = 0
        out.linear, out.control_variate = None, False
        return out

    def with_control_variate(self, theta0: torch.Tensor, rest_gradient: torch.Tensor) -> "SampledObjective":
        """Sample the rows outside ``Z~`` with their linearisation at ``theta0`` as a control variate.

        ``rest_gradient`` is the exact gradient at ``theta0`` of the part of the objective outside ``Z~`` (the rows the
        request did not touch and the regulariser); for a model at the optimum of the original data it is
        ``-g(Z)`` (the original objective's gradient, 0, minus the affected rows' share), with no pass over the data.
        The estimate becomes ``sum_{Z~} l + reg + rest_gradient . (theta - theta0) + w sum_{z in S} [l(z, theta) -
        l(z, theta0) - grad l(z, theta0) . (theta - theta0)]`` (plus a constant): the sample only estimates the
        curvature part of the untouched rows' change, not its linear part, whose sampling error would otherwise
        swamp the decrease of a small step (measured at n = 1e5, 4,096 sampled rows, 10 relabelled rows: actual
        decrease -1.08 against a predicted 0.05 for an exact Newton step). Differences of the estimate are what the
        guard uses, so the constant does not matter. No effect when the objective is exact (every row)."""
        if self.exact:
            return self
        from unlearnkit.influence.gradients import summed_gradient

        theta0 = theta0.detach().to(dtype=self.flat.dtype)
        sampled = self.weight * summed_gradient(self.flat, self.sample, theta0, batch_size=self.batch_size)
        reg = self.flat.reg_gradient(theta0)
        self.linear = ((rest_gradient - reg - sampled).double(), theta0.double())
        self.control_variate = True
        return self

    def _sum(self, data: Dataset, theta: torch.Tensor) -> tuple[float, float]:
        total = magnitude = 0.0
        for xb, yb in data.batches(self.batch_size, device=self.flat.device, dtype=self.flat.dtype):
            losses = self.flat.losses(theta, xb, yb)
            total += float(losses.double().sum())
            magnitude += float(losses.double().abs().sum())
        return total, magnitude

    def __call__(self, theta: torch.Tensor) -> float:
        """``f(theta)``; afterwards :attr:`untouched` holds its part on the rows the request did not touch."""
        theta = theta.to(dtype=self.flat.dtype)  # (a float32 model's parameters judged by its float64 view)
        with torch.no_grad():
            value, magnitude = self._sum(self.sample, theta)
            value, magnitude = self.weight * value, self.weight * magnitude
            affected, affected_magnitude = self._sum(self.z_tilde, theta) if len(self.z_tilde) else (0.0, 0.0)
            if self.exact:  # the sample is all of D~, Z~ included
                untouched, untouched_magnitude = value - affected, magnitude - affected_magnitude
            else:
                untouched, untouched_magnitude = value, magnitude
                value, magnitude = value + affected, magnitude + affected_magnitude
            reg = float(self.flat.reg_value(theta).double())
            value, magnitude = value + reg, magnitude + abs(reg)
            linear = self.linear
            if linear is not None:  # the control variate of with_control_variate: a linear term, exact
                c, theta_ref = linear
                shift = float(c @ (theta.double() - theta_ref))
                value, untouched = value + shift, untouched + shift
        self.evaluations += 1
        # losses computed in the model's dtype carry a relative rounding error of a few units of that dtype's
        # precision each: differences of the objective below this floor are noise, not decrease
        eps = torch.finfo(self.flat.dtype).eps
        self.noise = ROUNDING_FACTOR * eps * magnitude
        untouched += reg  # the regulariser belongs to no row: counted with the rows the request leaves alone
        self.untouched = untouched if math.isfinite(untouched) else math.inf
        self.untouched_noise = ROUNDING_FACTOR * eps * (untouched_magnitude + affected_magnitude + abs(reg))
        return value if math.isfinite(value) else math.inf

    def describe(self) -> dict:
        sampled = len(self.sample) - len(self.z_tilde) if self.exact else len(self.sample)
        out = {"rows_affected": len(self.z_tilde), "rows_sampled": sampled, "weight": self.weight,
               "rows_total": self.rows_total, "seed": self.seed, "exact": self.exact,
               "control_variate": self.control_variate, "dtype": str(self.flat.dtype)}
        if out["control_variate"]:
            out["values"] = ("objective_original, objective_final and each try's objective are control-variate "
                             "estimates of L(theta; D~) shifted by an unknown constant: only their differences "
                             "(actual decrease, rho) mean something")
        return out


class HeldOutErrors:
    """``h(theta)``: the number of held-out rows (rows the model was not trained on) it misclassifies.

    The corrected objective is measured on training rows, which a network can fit with margins that a step does not
    disturb while rows it never saw change class; a candidate must also not raise ``h`` (rule 4 of the module
    docstring). Errors, not the loss: the held-out loss has the same flaw as the training objective (measured: a step
    that lowered the held-out loss, because the held-out rows of the relabelled class were confidently wrong before,
    took held-out accuracy from 0.807 to 0.780)."""

    def __init__(self, flat: FlatModel, held_out: Dataset, *, batch_size: int = 1024) -> None:
        if not len(held_out):
            raise SolverError("The held-out data for the guard is empty; pass val=None to leave the check out.")
        self.flat = flat
        self.data = held_out
        self.batch_size = int(batch_size)
        self.noise = 0.0  # a count: no rounding
        self.evaluations = 0

    def __call__(self, theta: torch.Tensor) -> float:
        errors = 0
        with torch.no_grad():
            for xb, yb in self.data.batches(self.batch_size, device=self.flat.device, dtype=self.flat.dtype):
                predicted = self.flat.model.predict(self.flat.logits(theta, xb))
                errors += int((predicted != yb).sum())
        self.evaluations += 1
        return float(errors)

    def describe(self) -> dict:
        return {"rows": len(self.data), "what": "held-out rows (val) misclassified"}


class GradientResidual:
    """``r(theta) = ||grad L(theta; D~)||_2``, the gradient residual on the corrected data (rule 3b, convex problems).

    One pass over ``data`` per call, corrected by ``Z`` and ``Z~``
    (:class:`unlearnkit.influence.refine.CorrectedGradient`); its :attr:`noise` is the original model's own
    residual ``||grad L(theta0; D)||`` (what the update does not try to remove: a step is not refused for the
    training tolerance of the original model) plus the rounding floor. The pass over ``D`` at ``theta0`` is made
    once, when the residual is built, and serves ``r(theta0)``.
    """

    exact = True  # judged only on an exact objective (a sampled residual's noise exceeds what it must detect)

    def __init__(self, flat: FlatModel, data: Dataset, resolved, theta0: torch.Tensor, *,
                 batch_size: int = 1024) -> None:
        from unlearnkit.influence.refine import CorrectedGradient

        self.flat, self.resolved, self.batch_size = flat, resolved, int(batch_size)
        self.theta0 = theta0.detach().to(dtype=flat.dtype)
        self.evaluations = 0
        eps = torch.finfo(flat.dtype).eps
        self.gradient = CorrectedGradient(flat, data, resolved, batch_size=batch_size)
        self.base0 = self.gradient.base(self.theta0)  # grad L(theta0; D)
        self.original_residual = float(torch.linalg.vector_norm(self.base0))
        self.noise = self.original_residual + ROUNDING_FACTOR * eps * self.original_residual

    def __call__(self, theta: torch.Tensor) -> float:
        self.evaluations += 1
        theta = theta.to(dtype=self.flat.dtype)
        with torch.no_grad():
            at_theta0 = torch.equal(theta, self.theta0)
            g = self.gradient(theta, base=self.base0 if at_theta0 else None)
        r = float(torch.linalg.vector_norm(g))
        return r if math.isfinite(r) else math.inf

    def describe(self) -> dict:
        return {"what": "||grad L(theta; D~)||_2", "exact": self.exact, "evaluations": self.evaluations,
                "tolerance": self.noise, "original_model_residual_on_D": self.original_residual}


ROUNDING_FACTOR = 8.0
"""A decrease of the objective must exceed ``ROUNDING_FACTOR x eps(dtype) x sum |l_i|`` to count (float32: 1e-6 relative)."""


def float64_view(flat: FlatModel) -> FlatModel:
    """``flat`` evaluated in float64: a float64 copy of its model when it holds lower-precision parameters, else
    ``flat`` itself.

    The guard's objective and residual of a convex model are computed on this view: the parameters the guard judges
    stay those of the model (float32 candidates are converted exactly), only the losses are summed without float32's
    rounding. In float32 the rounding floor ``8 eps sum |l_i|`` (about ``1e-6`` relative) exceeds the whole decrease
    of ordinary requests (measured: 3 rows removed from 5,000, decrease ``4.9e-5``, floor ``1.4e-3``), so the exact
    step would be refused for a difference the precision cannot show. One copy of a linear model: cheap.
    """
    if flat.dtype == torch.float64 or not flat.dtype.is_floating_point:
        return flat
    model = copy.deepcopy(flat.model).to(dtype=torch.float64)
    return FlatModel(model, flat.names if flat.fixed else None)


@dataclass
class GuardOutcome:
    """The parameters a guarded step returns, its status and the record of every try."""

    theta: torch.Tensor
    step: torch.Tensor
    status: GuardStatus
    damping: float | None
    next_damping: float
    objective_original: float
    objective: float
    diagnostics: dict = field(default_factory=dict)


class TrustRegion:
    """The Levenberg-Marquardt / trust-region rule of :mod:`unlearnkit.influence.guard` (hyperparameters only).

    Parameters
    ----------
    eta:
        Accept a step when ``rho = actual / predicted decrease > eta`` (Nocedal & Wright's
        ``eta`` in ``[0, 1/4)``; 0.1).
    very_successful:
        ``rho`` above which the next step's damping is lowered (3/4, Nocedal & Wright Alg. 4.1).
    decrease:
        Factor on the damping after a very successful step (1/3, Moré 1978 / Nielsen 1999).
    increase:
        Factor on the damping after a failed try (10, Marquardt 1963).
    max_tries:
        Dampings tried before backtracking (6: from the initial damping up to ``1e5`` times it).
    backtrack_steps:
        Halvings of the best direction tried last (10: down to ``alpha = 1/1024``).
    untouched_slack:
        The part of ``f`` outside ``Z~`` may rise by at most this multiple of the step's decrease of
        ``f`` (1; 0: it must not rise at all; None: no such test, for convex problems judged by
        their gradient residual instead; see rules 3 and 3b of the module docstring).
    rows:
        Rows of the corrected data (besides ``Z~``) sampled for the objective estimate; None = all.
    seed:
        Seed of that sample.
    below_floor:
        ``"reject"`` (default): a decrease below the objective's rounding floor fails the ratio test.
        ``"accept"`` (convex problems): the first try (the undamped step) passes the objective's test when
        neither its predicted nor its actual change exceeds the rounding floor (its effect is below what the
        precision can measure; recorded as ``not_judged``); a measurable rise still fails. The other tests
        (residual, held-out rows) still apply.
    """

    def __init__(self, *, eta: float = 0.1, very_successful: float = 0.75, decrease: float = 1 / 3,
                 increase: float = 10.0, max_tries: int = 6, backtrack_steps: int = 10, untouched_slack: float = 1.0,
                 rows: int | None = 4096, seed: int = 0, below_floor: str = "reject") -> None:
        self.eta = eta
        self.very_successful = very_successful
        self.decrease = decrease
        self.increase = increase
        self.max_tries = max_tries
        self.backtrack_steps = backtrack_steps
        self.untouched_slack = untouched_slack
        self.rows = rows
        self.seed = seed
        self.below_floor = below_floor

    def check(self) -> None:
        """Raise :class:`SolverError` for settings outside their ranges."""
        problems = []
        if not 0 <= self.eta < 1:
            problems.append(f"eta must be in [0, 1), got {self.eta!r}")
        if not self.eta <= self.very_successful < 1:
            problems.append(f"very_successful must be in [eta, 1), got {self.very_successful!r}")
        if not 0 < self.decrease <= 1:
            problems.append(f"decrease must be in (0, 1], got {self.decrease!r}")
        if not self.increase > 1:
            problems.append(f"increase must be > 1, got {self.increase!r}")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            problems.append(f"max_tries must be an integer >= 1, got {self.max_tries!r}")
        if isinstance(self.backtrack_steps, bool) or not isinstance(self.backtrack_steps, int) or self.backtrack_steps < 0:
            problems.append(f"backtrack_steps must be an integer >= 0, got {self.backtrack_steps!r}")
        if self.untouched_slack is not None and (
                isinstance(self.untouched_slack, bool) or not isinstance(self.untouched_slack, (int, float))
                or not (math.isfinite(self.untouched_slack) and self.untouched_slack >= 0)):
            problems.append(f"untouched_slack must be a finite number >= 0 or None, got {self.untouched_slack!r}")
        if self.below_floor not in ("reject", "accept"):
            problems.append(f"below_floor must be 'reject' or 'accept', got {self.below_floor!r}")
        if problems:
            raise SolverError("The update guard's settings are invalid: " + "; ".join(problems) + ".")

    def config(self) -> dict:
        return {"eta": self.eta, "very_successful": self.very_successful, "decrease": self.decrease,
                "increase": self.increase, "max_tries": self.max_tries, "backtrack_steps": self.backtrack_steps,
                "untouched_slack": self.untouched_slack, "below_floor": self.below_floor}

    def step(
        self,
        theta0: torch.Tensor,
        G: torch.Tensor,
        solve: DampedSolve,
        objective: Callable[[torch.Tensor], float],
        *,
        initial_damping: float,
        matvec: Callable[[torch.Tensor], torch.Tensor] | None = None,
        scale: Callable[[], float] | None = None,
        initial_damping_rule: str = "given",
        held_out: Callable[[torch.Tensor], float] | None = None,
        residual: Callable[[torch.Tensor], float] | None = None,
    ) -> GuardOutcome:
        """Choose the damping of ``theta0 - (H + damping I)^{-1} G`` by the rule (see the module docstring).

        ``solve(v, damping)`` applies ``(H + damping I)^{-1}``; ``matvec(v)`` (optional) applies
        ``H`` for the predicted decrease; ``objective(theta)`` is the estimate ``f``; ``residual(theta)``
        (optional, convex problems) the gradient residual ``||grad L(theta; D~)||``, which a candidate must not
        raise (beyond ``residual.noise``; rule 3b of the module docstring). A solver
        error at some damping counts as a failed try (recorded with its message); when every try
        failed so, no step exists and the last :class:`SolverError` is raised. ``scale()``
        (optional, called at most once) gives the damping to leave ``damping = 0`` by when the
        solve fails there, so that no step exists to measure ``||G|| / ||s||`` on (e.g.
        :func:`relative_damping` of the curvature); without it the rule stops and rejects.
        """
        self.check()
        if not (math.isfinite(initial_damping) and initial_damping >= 0):
            raise SolverError(f"The guard's initial damping must be a finite number >= 0, got {initial_damping!r}.")
        f0 = objective(theta0)
        noise = float(getattr(objective, "noise", 0.0))  # the rounding floor of the estimate (SampledObjective)
        u0 = getattr(objective, "untouched", None)  # its part on the rows the request did not touch (SampledObjective)
        h0 = held_out(theta0) if held_out is not None else None
        r0 = residual(theta0) if residual is not None else None
        if h0 is not None and not math.isfinite(h0):
            raise SolverError("The loss on the held-out rows (val) is not finite at the original parameters; check them. "
                              "The model was not changed.")
        if not math.isfinite(f0):
            raise SolverError("The corrected objective is not finite at the original parameters (NaN or infinite losses); "
                              "check the model and the data. The model was not changed.")
        diag = {"rule": RULE, **self.config(), "initial_damping": float(initial_damping),
                "initial_damping_rule": initial_damping_rule,
                "predicted": ("G.s - 0.5 s.Hs (undamped quadratic model, one curvature product)" if matvec is not None
                              else "0.5 (G.s + damping s.s) (undamped quadratic model, assuming an exact damped solve)"),
                "objective_original": f0, "rounding_floor": noise, "tries": [], "backtrack": []}
        if u0 is not None:
            diag["untouched_original"] = _num(u0)
        if h0 is not None:
            diag["held_out_original"] = h0
        if r0 is not None:
            diag["residual_original"] = _num(r0)

        def passes(f: float, actual: float, rho: float | None, record: dict, candidate: torch.Tensor,
                   pred: float, first: bool = False) -> bool:
            """The ratio test, the untouched rows' loss not rising by more than the slack allows, and the held-out
            rows' loss not rising (each evaluated only when the previous ones passed); a failure records why."""
            if not math.isfinite(f):
                record["refused"] = "the objective is not finite"
                return False
            if first and self.below_floor == "accept" and abs(actual) <= noise and pred <= noise:
                record["not_judged"] = "the decrease is below the rounding floor (predicted and actual)"
            elif actual < -noise:
                record["refused"] = "the objective rose"
                return False
            elif actual <= noise:
                record["refused"] = "the decrease is below the rounding floor"
                return False
            elif rho is None:
                record["refused"] = "the quadratic model predicts no decrease"
                return False
            elif not rho > self.eta:
                record["refused"] = "the decrease is below eta times the predicted decrease"
                return False
            if u0 is not None and self.untouched_slack is not None:
                rise = float(objective.untouched) - u0
                record["untouched_rise"] = _num(rise)
                allowed = self.untouched_slack * actual + float(getattr(objective, "untouched_noise", 0.0))
                if rise > allowed:
                    record["refused"] = "the rows the request did not touch got worse"
                    return False
            if r0 is not None:
                r = residual(candidate)
                record["residual"] = _num(r)
                if not r - r0 <= float(getattr(residual, "noise", 0.0)):
                    record["refused"] = "the gradient residual rose"
                    return False
            if h0 is not None:
                h = held_out(candidate)
                record["held_out_rise"] = _num(h - h0)
                if not h - h0 <= float(getattr(held_out, "noise", 0.0)):
                    record["refused"] = "the held-out rows got worse"
                    return False
            return True

        gnorm = float(torch.linalg.vector_norm(G))
        if gnorm == 0:
            diag.update(status=GuardStatus.ACCEPTED.value, accepted_damping=float(initial_damping),
                        objective_final=f0, next_damping=float(initial_damping), step_norm=0.0,
                        note="zero gradient difference: the update is the original parameters")
            return GuardOutcome(theta0.clone(), torch.zeros_like(theta0), GuardStatus.ACCEPTED, float(initial_damping),
                                float(initial_damping), f0, f0, diag)

        def predicted(s: torch.Tensor, Hs: torch.Tensor | None, damping: float, alpha: float = 1.0) -> float:
            gs = float(G.double() @ s.double())
            sHs = float(s.double() @ Hs.double()) if Hs is not None else gs - damping * float(s.double() @ s.double())
            return alpha * gs - 0.5 * alpha * alpha * sHs

        damping = float(initial_damping)
        best = None  # (f, s, Hs, damping) of the try with the lowest finite objective (only that one is kept)
        for _ in range(self.max_tries):
            record = {"damping": damping}
            diag["tries"].append(record)
            try:
                s = solve(G, damping)
                snorm = float(torch.linalg.vector_norm(s))
                if not math.isfinite(snorm):
                    raise SolverError("the solve returned NaN or infinite values")
            except (SolverError, RuntimeError, ValueError, TypeError) as exc:  # a user's curvature object may raise anything
                record["error"] = str(exc) if isinstance(exc, SolverError) else f"{type(exc).__name__}: {exc}"
                if damping > 0:
                    damping *= self.increase
                    continue
                damping = _scale_from(scale)
                if damping is None:
                    record["next"] = "no curvature scale to leave zero damping by: stopped"
                    break
                record["next"] = "scale(): the caller's curvature scale"
                continue
            record["step_norm"] = snorm
            Hs = matvec(s) if matvec is not None else None
            pred = predicted(s, Hs, damping)
            candidate = theta0 - s
            f = objective(candidate)
            actual = f0 - f
            rho = actual / pred if pred > 0 else None
            record.update(objective=_num(f), actual=_num(actual), predicted=pred, rho=_num(rho))
            if math.isfinite(f) and (best is None or f < best[0]):
                best = (f, s, Hs, damping)
            if passes(f, actual, rho, record, candidate, pred, first=len(diag["tries"]) == 1):
                next_damping = damping * self.decrease if rho is not None and rho > self.very_successful else damping
                diag.update(status=GuardStatus.ACCEPTED.value, accepted_damping=damping, objective_final=f,
                            next_damping=next_damping, step_norm=snorm)
                if "not_judged" in record:
                    diag["note"] = "not judged: the decrease is below the rounding floor"
                return GuardOutcome(candidate, s, GuardStatus.ACCEPTED, damping, next_damping, f0, f, diag)
            if damping > 0:
                damping *= self.increase
            else:
                damping = gnorm / snorm if snorm > 0 else None
                record["next"] = "||G|| / ||s||, the curvature scale along the rejected step"
                if damping is None:
                    break
        if best is None and all("error" in t for t in diag["tries"]):
            # no damping gave a step at all: a solver failure (too many parameters, a diverging solve), not a verdict
            raise SolverError(f"The solver failed at every damping the update's guard tried "
                              f"({[t['damping'] for t in diag['tries']]}); the last error: {diag['tries'][-1]['error']}")
        if best is not None and self.backtrack_steps:
            _, s, Hs, d = best
            diag["backtrack_direction_damping"] = d
            for j in range(1, self.backtrack_steps + 1):
                alpha = 0.5 ** j
                pred = predicted(s, Hs, d, alpha)
                candidate = theta0 - alpha * s
                f = objective(candidate)
                actual = f0 - f
                rho = actual / pred if pred > 0 else None
                record = {"alpha": alpha, "objective": _num(f), "actual": _num(actual), "predicted": pred, "rho": _num(rho)}
                diag["backtrack"].append(record)
                if passes(f, actual, rho, record, candidate, pred):
                    diag.update(status=GuardStatus.BACKTRACKED.value, accepted_damping=d, alpha=alpha, objective_final=f,
                                next_damping=d, step_norm=alpha * float(torch.linalg.vector_norm(s)))
                    return GuardOutcome(candidate, alpha * s, GuardStatus.BACKTRACKED, d, d,
                                        f0, f, diag)
        diag.update(status=GuardStatus.REJECTED.value, accepted_damping=None, objective_final=f0,
                    next_damping=float(initial_damping), step_norm=0.0)
        return GuardOutcome(theta0.clone(), torch.zeros_like(theta0), GuardStatus.REJECTED, None, float(initial_damping),
                            f0, f0, diag)


def refusals(diag: dict) -> str:
    """Why every try of a guarded step failed, from its diagnostics: one reason per damping tried, and a count per
    reason over the shortened steps (for messages)."""
    parts = [f"damping {t['damping']:.3g}: {t.get('refused') or t.get('error') or 'failed'}" for t in diag["tries"]]
    if diag.get("backtrack"):
        counts: dict[str, int] = {}
        for t in diag["backtrack"]:
            why = t.get("refused", "failed")
            counts[why] = counts.get(why, 0) + 1
        reasons = ", ".join(f"{why} ({k}x)" for why, k in counts.items())
        parts.append(f"{len(diag['backtrack'])} shortened steps: {reasons}")
    return "; ".join(parts)


def _num(x) -> float | None:
    """A finite float, or None (diagnostics stay valid JSON)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _scale_from(scale: Callable[[], float] | None) -> float | None:
    if scale is None:
        return None
    value = float(scale())
    return value if math.isfinite(value) and value > 0 else None


def relative_damping(matvec: Callable[[torch.Tensor], torch.Tensor], n_params: int, *, relative: float = 1e-3,
                     iterations: int = 20, seed: int = 0, dtype=torch.float32, device=None) -> float:
    """``relative x lambda_max(H)`` by power iteration (``iterations`` products at most): the damping
    scale of Madsen, Nielsen & Tingleff (2004, sec. 3.2), who start Levenberg-Marquardt at ``1e-3``
    times the largest diagonal entry of the curvature (``lambda_max`` bounds it from above)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(n_params, generator=gen, dtype=dtype).to(device)
    v /= torch.linalg.vector_norm(v)
    lam = 0.0
    for _ in range(iterations):
        w = matvec(v)
        lam_new = float(v @ w)
        norm = torch.linalg.vector_norm(w)
        if not torch.isfinite(norm) or norm == 0:
            break
        v = w / norm
        converged = abs(lam_new - lam) <= 1e-3 * abs(lam_new)
        lam = lam_new
        if converged:
            break
    return relative * abs(lam)
