"""One curvature object per model and data: fitted once, saved beside the model, reused by every request.

:func:`fit` computes an approximation ``F`` of the curvature of the objective of
:mod:`unlearnkit.models.base` (the **sum** of per-row losses plus the L2 term), at the model's
parameters, on ``data``; :meth:`Curvature.solve` then answers inverse-curvature-vector products

    solve(v, damping) = (F + diag(w) + damping I)^{-1} v        (w = l2 per parameter)

in ``O(p)``-ish time without touching the data again, and :meth:`Curvature.matvec` gives
``(F + diag(w)) v``. Vectors are flat, in the order of :attr:`Curvature.names` (the order of
``model.named_parameters()`` restricted to the covered parameters, as
:class:`~unlearnkit.influence.functional.FlatModel` uses).

Kinds (:class:`CurvatureKind`):

* ``"exact"``: a convex model (logistic regression; a wrapped single ``nn.Linear``) gets the
  exact Hessian, factorised by Cholesky and kept current under low-rank data changes by
  :class:`~unlearnkit.influence.curvature.CachedCurvature` (available as :attr:`Curvature.factor`);
  a small deep model (at most :data:`EXACT_MAX_PARAMS` parameters) gets the dense generalised
  Gauss-Newton matrix (GGN), factorised the same way.
* ``"kfac"`` / ``"ekfac"``: Kronecker-factored GGN per ``nn.Linear`` / ``nn.Conv2d`` (Martens &
  Grosse 2015; EK-FAC, George et al. 2018), other layers as exact small blocks or diagonals; see
  :mod:`unlearnkit.influence.kfac`, and :attr:`Curvature.diagnostics` ``["layers"]`` for the
  treatment of each layer. The loss Hessian in the logits is factored exactly or by sampled
  labels by the rule of :data:`AUTO_EXACT_COLUMNS` (``mc_samples="auto"``).
* ``"diagonal"``: the exact diagonal of the GGN (a baseline).
* ``"ggn-cg"``: no factor; every solve runs conjugate gradients on the exact GGN over the data
  (``O(n)`` per product), kept for comparison.
* ``"auto"``: ``"exact"`` for a convex model, ``"ekfac"`` otherwise.

**Tied to its model and data.** The object records a hash of the names, shapes, dtypes and values
of the parameters it covers and the fingerprint of the data it was fitted on;
:meth:`Curvature.check` refuses another model (a :class:`~unlearnkit.errors.ModelError` naming the
architecture difference), other parameter values or other data (a
:class:`~unlearnkit.errors.SolverError` saying which). :meth:`Curvature.save` writes the model
library's safe format (``torch.save`` of plain dicts of tensors and JSON-able metadata, written
atomically); :func:`load` reads it with ``weights_only=True`` after the same file checks as model
files (regular file, uncompressed zip) and checks it against the model and data it is given.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import logging
import math
import numbers
from pathlib import Path
from typing import Callable

import torch

from unlearnkit import timing
from unlearnkit.errors import ModelError, SolverError
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.kfac import (
    DENSE_BLOCK_MAX,
    Block,
    DenseBlock,
    DiagonalBlock,
    KroneckerBlock,
    Mode,
    Treatment,
    dense_ggn,
    fit_blocks,
    plan_layers,
    uniform_l2,
)

log = logging.getLogger(__name__)

FORMAT = "unlearnkit.curvature/1"

EXACT_MAX_PARAMS = 5000
"""Most parameters of a deep model whose dense GGN ``kind="exact"`` factorises (``8 p^2`` bytes)."""

AUTO_EXACT_COLUMNS = 1
"""``mc_samples="auto"``: K-FAC and EK-FAC use the exact factor of the loss Hessian in the logits when it
has at most this many columns (binary and two-class models), else one sampled label per row.

The rule follows from the cost: each column is one backward pass per batch, and a training step
is one forward and one backward pass; the exact factor has ``C - 1`` columns for ``C`` classes, a
sampled one a single column whatever ``C``. So the exact factor is used exactly when it costs no
more than the sample."""


class CurvatureKind(str, enum.Enum):
    AUTO = "auto"
    EXACT = "exact"
    KFAC = "kfac"
    EKFAC = "ekfac"
    DIAGONAL = "diagonal"
    GGN_CG = "ggn-cg"


def _kind(kind) -> CurvatureKind:
    try:
        return CurvatureKind(kind)
    except ValueError:
        raise SolverError(f"Unknown curvature kind {kind!r}; valid: {[k.value for k in CurvatureKind]}.") from None


def _names(model, params) -> list[str] | None:
    """The parameter names ``params`` selects (None = every trainable parameter)."""
    if isinstance(params, str):
        from unlearnkit.influence.updates import parameter_names

        return parameter_names(model, params)
    try:
        names = [str(n) for n in params]
    except TypeError:
        raise SolverError(f"params must be 'all', 'head' or a list of parameter names, got {params!r}.") from None
    return names


def _is_convex(model) -> bool:
    return bool(getattr(model, "convex", False))


def parameter_signature(model, names: list[str]) -> tuple[str, str]:
    """``(architecture, values)``: hashes of the covered parameters' names, shapes and dtypes (with the model's
    kind / module type), and of the same plus their values."""
    params = dict(model.named_parameters())
    arch = hashlib.sha256()
    arch.update(str(getattr(model, "kind", type(model).__name__)).encode())
    arch.update(str(getattr(model, "module_type", "")).encode())
    for name in names:
        p = params[name]
        arch.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    values = arch.copy()
    for name in names:
        values.update(params[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return arch.hexdigest()[:32], values.hexdigest()[:32]


class Curvature:
    """A fitted curvature approximation (build it with :func:`fit`, read it back with :func:`load`).

    Attributes: ``kind`` (:class:`CurvatureKind`), ``names`` (covered parameters, in vector order),
    ``n_params``, ``seconds`` (the one-time cost of fitting), ``diagnostics`` (a JSON-able dict: kind,
    per-layer treatment, fit seconds, rows, passes, per-sample gradients, memory in bytes, the GGN
    factor used), ``factor`` (the :class:`~unlearnkit.influence.curvature.CachedCurvature` of
    ``kind="exact"``, else None).
    """

    def __init__(self, *, kind: CurvatureKind, names: list[str], shapes: list[tuple[int, ...]], reg: torch.Tensor,
                 blocks: list[Block] | None, factor: CachedCurvature | None, meta: dict, operator=None) -> None:
        self.kind = kind
        self.names = list(names)
        self.shapes = [tuple(s) for s in shapes]
        self.reg = reg
        self.blocks = blocks
        self.factor = factor
        self.meta = meta
        self._operator = operator  # ggn-cg: (flat, data, batch_size)
        numels = [math.prod(s) for s in self.shapes]
        self._offsets, start = {}, 0
        for name, k in zip(self.names, numels):
            self._offsets[name] = (start, k)
            start += k
        self._damped: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def n_params(self) -> int:
        return sum(k for _, k in self._offsets.values())

    @property
    def seconds(self) -> float:
        """The one-time cost of fitting, in seconds."""
        return float(self.meta["diagnostics"]["fit_seconds"])

    @property
    def diagnostics(self) -> dict:
        return {**self.meta["diagnostics"], "memory_bytes": self.nbytes}

    @property
    def nbytes(self) -> int:
        """Bytes held by the factors."""
        if self.factor is not None:
            return sum(t.numel() * t.element_size() for t in self.factor.state().values())
        return sum(b.nbytes for b in self.blocks or [])

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, numel)`` of each covered parameter in the flat vector."""
        return dict(self._offsets)

    # ------------------------------------------------------------------ products
    def _check_vector(self, v: torch.Tensor) -> None:
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.numel() != self.n_params:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise SolverError(f"The curvature covers {self.n_params} parameters ({self.kind.value}, {len(self.names)} "
                              f"tensors); got a vector of shape {shape}. Give a flat vector in the order of "
                              "curvature.names.")
        if not bool(torch.all(torch.isfinite(v))):
            raise SolverError("The vector contains NaN or infinite values; check the model and the data.")

    def _blockwise(self, v: torch.Tensor, fn) -> torch.Tensor:
        out = torch.empty_like(v)
        for block in self.blocks:
            spans = [self._offsets[n] for n in block.names]
            parts = [v[s:s + k] for s, k in spans]
            reg = torch.cat([self.reg[s:s + k] for s, k in spans])
            for (s, k), r in zip(spans, fn(block, parts, reg)):
                out[s:s + k] = r.reshape(-1)
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``(F + diag(w)) v``: the approximate curvature, regulariser included."""
        self._check_vector(v)
        if self.factor is not None:
            H = self.factor.H
            return (H @ v.to(device=H.device, dtype=H.dtype)).to(device=v.device, dtype=v.dtype)
        if self.kind is CurvatureKind.GGN_CG:
            flat, data, batch_size = self._operator
            from unlearnkit.influence.hessian import HessianOperator

            op = HessianOperator(flat, data, batch_size=batch_size, curvature="ggn")
            return op.matvec(v.to(device=flat.device, dtype=flat.dtype)).to(device=v.device, dtype=v.dtype)
        vv = v.to(self.reg.device)
        return self._blockwise(vv, lambda b, parts, reg: b.matvec(parts, reg)).to(v.device)

    def solve(self, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """``(F + diag(w) + damping I)^{-1} v`` (``w`` the L2 weights): the inverse-curvature step.

        ``kind="exact"`` without damping uses the cached Cholesky factor (with its low-rank
        updates and the model's declared flat directions, see
        :class:`~unlearnkit.influence.curvature.CachedCurvature`); with damping a factor of
        ``H + damping I`` is computed once per damping value and kept. K-FAC / EK-FAC add ``w +
        damping`` to the Kronecker eigenvalues. ``ggn-cg`` runs conjugate gradients to a relative
        residual of ``1e-8`` (``cg_tol`` of :func:`fit`) and raises :class:`SolverError` when it does not converge.
        """
        self._check_vector(v)
        damping = float(damping)
        if not (math.isfinite(damping) and damping >= 0):
            raise SolverError(f"damping must be a finite number >= 0, got {damping!r}.")
        if self.factor is not None:
            return self._exact_solve(v, damping)
        if self.kind is CurvatureKind.GGN_CG:
            from unlearnkit.influence.hessian import HessianOperator
            from unlearnkit.influence.solvers import ConjugateGradient

            flat, data, batch_size = self._operator
            op = HessianOperator(flat, data, batch_size=batch_size, curvature="ggn")
            cg = self.meta["cg"]
            x, report = ConjugateGradient(damping=damping, tol=cg["tol"], max_iter=cg["max_iter"]).solve(
                op, v.to(device=flat.device, dtype=flat.dtype))
            if not report.converged:
                raise SolverError(f"Conjugate gradients on the GGN did not converge in {report.iterations} iterations "
                                  f"(relative residual {report.residual:.3g}); raise damping or cg_max_iter, or fit "
                                  "kind='ekfac'.")
            return x.to(device=v.device, dtype=v.dtype)
        vv = v.to(self.reg.device)
        return self._blockwise(vv, lambda b, parts, reg: b.solve(parts, reg, damping)).to(v.device)

    def _exact_solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        f = self.factor
        g = v.to(device=f.H.device, dtype=f.H.dtype)
        if damping == 0.0:
            return f.solve(g).to(device=v.device, dtype=v.dtype)
        cached = self._damped.get(damping)
        if cached is None or cached[0] is not f.H:  # computed for this damping and the current (updated) H
            M = f.H + damping * torch.eye(f.H.shape[0], dtype=f.H.dtype, device=f.H.device)
            L, info = torch.linalg.cholesky_ex(M)
            if int(info) != 0:
                raise SolverError(f"H + {damping:g} I is not positive definite; raise the damping.")
            if len(self._damped) >= 8:
                self._damped.pop(next(iter(self._damped)))
            cached = (f.H, L)
            self._damped[damping] = cached
        x = torch.cholesky_solve(g.unsqueeze(1), cached[1]).squeeze(1)
        return x.to(device=v.device, dtype=v.dtype)

    # ------------------------------------------------------------------ ties
    def check(self, model, data) -> None:
        """Refuse ``model`` / ``data`` other than those this curvature was fitted on.

        Raises :class:`ModelError` for another model (architecture, names, shapes or dtypes of the
        covered parameters differ, or parameters are missing), :class:`SolverError` for other
        parameter values (the model was trained or updated since) or other data (fingerprint).
        """
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = [n for n in self.names if n not in trainable]
        if missing:
            raise ModelError(f"This curvature was computed for another model: it covers parameters {missing[:5]} that "
                             f"this {getattr(model, 'kind', type(model).__name__)} model does not have (as trainable "
                             "parameters). Fit a curvature for this model: uk.curvature.fit(model, data).")
        arch, values = parameter_signature(model, self.names)
        if arch != self.meta["architecture"]:
            raise ModelError("This curvature was computed for another model: the architecture (kind, parameter names, "
                             "shapes or dtypes) differs. Fit a curvature for this model: uk.curvature.fit(model, data).")
        if values != self.meta["parameters"]:
            raise SolverError("This curvature was computed at other parameters: the model's weights changed since it "
                              "was fitted (it was trained or updated). Refit it at the current weights: "
                              "uk.curvature.fit(model, data).")
        fp = data.fingerprint()
        if fp != self.meta["data_fingerprint"]:
            raise SolverError(f"This curvature was computed on other data (fingerprint {self.meta['data_fingerprint']}, "
                              f"this data has {fp}, {len(data)} rows): refit it on this data, or give the data it was "
                              "fitted on.")

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """The plain dict a curvature file holds (tensors on the CPU and JSON-able metadata)."""
        tensors: dict[str, torch.Tensor] = {"reg": self.reg}
        if self.factor is not None:
            tensors.update({f"factor.{k}": v for k, v in self.factor.state().items()})
        for i, block in enumerate(self.blocks or []):
            tensors.update({f"block{i}.{k}": v for k, v in block.state().items()})
        blocks = [{"treatment": b.treatment.value, "names": list(b.names)} for b in self.blocks or []]
        meta = {**self.meta, "names": list(self.names), "shapes": [list(s) for s in self.shapes], "blocks": blocks}
        return {"format": FORMAT, "kind": self.kind.value, "meta": json.loads(json.dumps(meta)),
                "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}}

    def save(self, path: str | Path, *, user_path: bool = False) -> Path:
        """Write to ``path`` atomically (the model file format's rules: see :func:`unlearnkit.save_model`)."""
        from unlearnkit.atomic import atomic_write

        payload = self.state()
        return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp), user_path=user_path)

    def __repr__(self) -> str:
        return (f"Curvature(kind={self.kind.value!r}, n_params={self.n_params}, "
                f"layers={len(self.meta['diagnostics'].get('layers', []))}, seconds={self.seconds:.3g})")


# ---------------------------------------------------------------------------- fitting
def _mc_samples(mc_samples, kind: CurvatureKind, work, data, flat: FlatModel) -> tuple[int | None, str]:
    """The number of sampled labels (None: the exact factor) and the reason, for ``mc_samples``."""
    if mc_samples is None:
        return None, "exact factor (mc_samples=None)"
    if isinstance(mc_samples, str):
        if mc_samples != "auto":
            raise SolverError(f"mc_samples must be 'auto', None or an integer >= 1, got {mc_samples!r}.")
        if kind not in (CurvatureKind.KFAC, CurvatureKind.EKFAC):
            return None, f"mc_samples='auto': exact factor for kind={kind.value!r}"
        if getattr(work, "custom_loss", False):
            return None, "mc_samples='auto': exact factor (a user's loss has no sampling rule)"
        rows = data.subset(list(range(min(len(data), 2))))
        with torch.no_grad():
            logits = work(next(iter(rows.batches(2, device=flat.device, dtype=flat.dtype)))[0])
        columns = 1 if logits.ndim == 1 else max(logits.shape[-1] - 1, 1)
        if columns <= AUTO_EXACT_COLUMNS:
            return None, f"mc_samples='auto': exact factor ({columns} column <= {AUTO_EXACT_COLUMNS})"
        return 1, (f"mc_samples='auto': one sampled label per row (the exact factor has {columns} columns > "
                   f"{AUTO_EXACT_COLUMNS}, one backward pass each)")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, numbers.Integral) or mc_samples < 1:
        raise SolverError(f"mc_samples must be 'auto', None or an integer >= 1, got {mc_samples!r}.")
    return int(mc_samples), f"mc_samples={int(mc_samples)}"


def fit(model, data, *, kind: str = "auto", params="all", batch_size: int = 256, device=None,
        progress: Callable[[int, int], None] | None = None, mc_samples: int | str | None = "auto", seed: int = 0,
        dense_max: int = DENSE_BLOCK_MAX, cg_tol: float = 1e-8, cg_max_iter: int = 500,
        ekfac_memory: int | None = None) -> Curvature:
    """Fit the curvature of ``model``'s objective on ``data`` at its current parameters (see the module docstring).

    Parameters
    ----------
    kind:
        ``"auto"`` (rule: ``"exact"`` when the model is convex, ``model.convex``, else ``"ekfac"``),
        ``"exact"``, ``"kfac"``, ``"ekfac"``, ``"diagonal"`` or ``"ggn-cg"``.
    params:
        ``"all"`` trainable parameters, ``"head"`` (the classifier head; the rest of the network
        held fixed), or a list of parameter names.
    batch_size:
        Rows per forward/backward batch (memory: activations of ``batch_size`` rows, plus
        ``batch_size * C`` per-sample gradients of the layers without Kronecker factors).
    device:
        Where to compute (the model is copied there; the given model is never modified).
    progress:
        ``progress(rows_done, rows_total)`` after each batch (EK-FAC makes two passes).
    mc_samples:
        How the loss Hessian in the logits is factored (one backward pass per batch and column).
        ``None``: exactly (``C - 1`` columns for ``C`` classes, one for a binary model); an
        integer ``m``: ``m`` labels sampled from the model's predictive distribution (seeded by
        ``seed``; Martens & Grosse 2015), unbiased and cheaper for many classes; ``"auto"``
        (default): for ``"kfac"`` / ``"ekfac"``, exact when that is one column (binary and
        two-class models) or the loss is a user's, else one sample (:data:`AUTO_EXACT_COLUMNS`);
        for ``"exact"`` and ``"diagonal"``, exact. Stated in the diagnostics (``ggn_factor``).
    dense_max:
        Layers that cannot be factored get their exact GGN block up to this many parameters, else
        their diagonal.
    cg_tol, cg_max_iter:
        Conjugate-gradient settings of ``kind="ggn-cg"``.
    ekfac_memory:
        Bytes of per-row gradient statistics EK-FAC (and ``"diagonal"``) may keep from the first pass so that those
        rows need no second one (default ``EKFAC_CACHE_BYTES``, 512 MiB; 0 keeps none). The rows kept and the passes
        made are in the diagnostics.
    """
    kind = _kind(kind)
    if batch_size < 1:
        raise SolverError(f"batch_size must be >= 1, got {batch_size}.")
    if not isinstance(dense_max, int) or dense_max < 0:
        raise SolverError(f"dense_max must be an integer >= 0, got {dense_max!r}.")
    if ekfac_memory is not None and (isinstance(ekfac_memory, bool) or not isinstance(ekfac_memory, int) or ekfac_memory < 0):
        raise SolverError(f"ekfac_memory must be an integer number of bytes >= 0 or None, got {ekfac_memory!r}.")
    model.check_data(data)
    if len(data) == 0:
        raise SolverError("Cannot fit a curvature on empty data.")
    names = _names(model, params)
    start = timing.start()
    work = copy.deepcopy(model).eval()  # the given model is never modified (hooks, mode, device)
    if device is not None:
        work = work.to(device)
    flat = FlatModel(work, names)
    names = flat.names
    arch, values = parameter_signature(model, names)
    convex = _is_convex(model)
    if kind is CurvatureKind.AUTO:
        kind = CurvatureKind.EXACT if convex else CurvatureKind.EKFAC
    reg = flat.reg.detach().to(torch.float64)
    diagnostics: dict = {"kind": kind.value, "params": params if isinstance(params, str) else list(names),
                         "n_params": flat.n_params, "rows": len(data), "batch_size": int(batch_size)}
    factor = blocks = operator = None
    mc_samples, mc_rule = _mc_samples(mc_samples, kind, work, data, flat)
    ggn_factor = ("exact square root of the loss Hessian in the logits" if mc_samples is None
                  else f"Monte-Carlo, {mc_samples} sampled label(s) per row, seed {seed}")
    diagnostics["ggn_factor_rule"] = mc_rule
    if kind is CurvatureKind.EXACT:
        null = None
        if convex and flat.sparse_rows_ok and callable(getattr(work, "null_space", None)):
            null = work.null_space()
        if convex:
            from unlearnkit.influence.hessian import HessianOperator

            H = HessianOperator(flat, data, batch_size=batch_size).dense()
            diagnostics.update(matrix="exact Hessian (convex objective)", passes=1, per_sample_gradients=0)
            if progress is not None:
                progress(len(data), len(data))
        else:
            if flat.n_params > EXACT_MAX_PARAMS:
                raise SolverError(f"kind='exact' refuses a deep model with {flat.n_params} parameters (at most "
                                  f"{EXACT_MAX_PARAMS}: the dense GGN needs {8 * flat.n_params ** 2 / 2 ** 30:.1f} GiB); "
                                  "use kind='ekfac' or 'kfac', or params='head'.")
            G, stats = dense_ggn(flat, data, batch_size=batch_size, mc_samples=mc_samples, seed=seed, progress=progress)
            H = G.to(flat.dtype) + torch.diag(flat.reg)
            diagnostics.update(matrix="dense GGN", ggn_factor=ggn_factor, passes=stats.passes,
                               per_sample_gradients=stats.per_sample_gradients, clipped_loss_curvature=stats.clipped)
        factor = CachedCurvature(H, flat.theta(), null_space=null)
        diagnostics["layers"] = [{"layer": "(all)", "params": list(names), "n_params": flat.n_params,
                                  "treatment": "exact-hessian" if convex else "dense-ggn"}]
    elif kind is CurvatureKind.GGN_CG:
        operator = (flat, data, int(batch_size))
        diagnostics.update(matrix="exact GGN by products (no factor; O(n) per product)", passes=0,
                           per_sample_gradients=0,
                           layers=[{"layer": "(all)", "params": list(names), "n_params": flat.n_params,
                                    "treatment": "ggn-cg"}])
    else:
        mode = {CurvatureKind.KFAC: Mode.KFAC, CurvatureKind.EKFAC: Mode.EKFAC, CurvatureKind.DIAGONAL: Mode.DIAGONAL}[kind]
        rows = data.subset(list(range(min(len(data), 3))))  # 3 rows: a sequence-first layer rarely has 3 steps
        probe = next(iter(rows.batches(3, device=flat.device, dtype=flat.dtype)))[0]
        plans = plan_layers(work, names, probe, mode, dense_max=dense_max)
        offsets, start_ = {}, 0
        for name, k in zip(names, flat.numels):
            offsets[name] = (start_, k)
            start_ += k
        for plan in plans:  # fail before the passes over the data: one L2 weight per Kronecker block
            if plan.treatment in (Treatment.KFAC, Treatment.EKFAC):
                uniform_l2(plan.params, torch.cat([reg[s:s + k] for s, k in (offsets[n] for n in plan.params)]))
        blocks, stats = fit_blocks(work, flat, data, plans, mode, batch_size=batch_size, mc_samples=mc_samples,
                                   seed=seed, progress=progress, cache_bytes=ekfac_memory)
        diagnostics.update(matrix="generalised Gauss-Newton, block-diagonal by layer", ggn_factor=ggn_factor,
                           ggn_columns=stats.columns, passes=stats.passes,
                           per_sample_gradients=stats.per_sample_gradients, clipped_loss_curvature=stats.clipped,
                           damping_rule=("added to the Kronecker eigenvalues (eigenbasis form), not pi-damping"
                                         if mode is not Mode.DIAGONAL else "added to the diagonal"),
                           layers=[p.describe() for p in plans])
    diagnostics["fit_seconds"] = timing.since(start)
    meta = {"architecture": arch, "parameters": values, "data_fingerprint": data.fingerprint(), "n_rows": len(data),
            "diagnostics": diagnostics, "cg": {"tol": float(cg_tol), "max_iter": int(cg_max_iter)}}
    curv = Curvature(kind=kind, names=names, shapes=[tuple(s) for s in flat.shapes], reg=reg, blocks=blocks,
                     factor=factor, meta=meta, operator=operator)
    log.info("Fitted %s curvature over %d parameters in %.3g s.", kind.value, flat.n_params, diagnostics["fit_seconds"])
    return curv


# ---------------------------------------------------------------------------- loading
_BLOCK_KEYS = {Treatment.KFAC: ("QA", "lA", "QB", "lB"), Treatment.EKFAC: ("QA", "lA", "QB", "lB", "S"),
               Treatment.DIAGONAL: ("d",), Treatment.DENSE: ("G",)}


def load(path: str | Path, model, data, *, device=None) -> Curvature:
    """Read a curvature written by :meth:`Curvature.save` and check it against ``model`` and ``data``.

    The file passes the model files' checks first (a regular file, a ``torch.save`` zip with
    uncompressed entries, see :mod:`unlearnkit.models.io`) and is read with
    ``torch.load(weights_only=True)``: nothing in it is ever unpickled as an object. Every tensor's
    shape is compared with the parameters it describes. A file that is not a curvature file, or is
    malformed, raises :class:`ModelError`; one fitted for another model, other parameters or other
    data raises as :meth:`Curvature.check` does.
    """
    from unlearnkit.models.io import _check_model_file

    path = Path(path)
    _check_model_file(path, what="curvature file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects
        raise ModelError(f"{path} is not a readable unlearnkit curvature file ({type(exc).__name__}): it is not a "
                         "PyTorch file, it is truncated, or it holds objects other than tensors and plain values, "
                         "which are refused for safety. Write curvature files with Curvature.save.") from None
    curv = _from_payload(payload, str(path), model, data, device=device)
    curv.check(model, data)
    return curv


def _from_payload(payload, where: str, model, data, *, device=None) -> Curvature:
    bad = f"{where} is not a valid unlearnkit curvature file"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{bad} (expected format {FORMAT!r}).")
    kind = payload.get("kind")
    meta, tensors = payload.get("meta"), payload.get("tensors")
    if not isinstance(meta, dict) or not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise ModelError(f"{bad} (its metadata or tensors are malformed).")
    try:
        kind = CurvatureKind(kind)
        names, shapes = list(meta["names"]), [tuple(int(x) for x in s) for s in meta["shapes"]]
        for key in ("architecture", "parameters", "data_fingerprint"):
            if not isinstance(meta[key], str):
                raise TypeError(key)
        if not isinstance(meta.get("diagnostics"), dict) or not isinstance(meta.get("cg"), dict):
            raise TypeError("diagnostics")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{bad} (missing or malformed field {exc}).") from None
    params = dict(model.named_parameters())
    if len(names) != len(shapes) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{bad} (names and shapes disagree).")
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ModelError(f"{where} was computed for another model: it covers parameters {unknown[:5]} that this model "
                         "does not have. Fit a curvature for this model: uk.curvature.fit(model, data).")
    wrong = [n for n, s in zip(names, shapes) if tuple(params[n].shape) != s]
    if wrong:
        raise ModelError(f"{where} was computed for another model: parameters {wrong[:5]} have other shapes here. Fit "
                         "a curvature for this model: uk.curvature.fit(model, data).")
    sizes = {n: math.prod(s) for n, s in zip(names, shapes)}
    p = sum(sizes.values())
    dev = device if device is not None else next(iter(params.values())).device

    def tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = tensors.get(key)
        if t is None or tuple(t.shape) != tuple(shape) or not t.is_floating_point():
            got = None if t is None else tuple(t.shape)
            raise ModelError(f"{bad}: tensor {key!r} has shape {got}, expected {tuple(shape)}.")
        if not bool(torch.all(torch.isfinite(t))):
            raise ModelError(f"{bad}: tensor {key!r} holds NaN or infinite values.")
        return t.to(dev)

    reg = tensor("reg", (p,)).to(torch.float64)
    blocks = factor = operator = None
    if kind is CurvatureKind.EXACT:
        state = {k[len("factor."):]: v for k, v in tensors.items() if k.startswith("factor.")}
        for key, shape in (("H", (p, p)), ("anchor", (p,)), ("L0", (p, p))):
            tensor(f"factor.{key}", shape)
        factor = CachedCurvature.from_state(state, device=dev)
    elif kind is CurvatureKind.GGN_CG:
        work = copy.deepcopy(model).eval()
        if device is not None:
            work = work.to(device)
        operator = (FlatModel(work, names), data, int(meta["diagnostics"].get("batch_size", 256)))
    else:
        specs = meta.get("blocks")
        if not isinstance(specs, list):
            raise ModelError(f"{bad} (no block list).")
        covered: list[str] = []
        blocks = []
        for i, spec in enumerate(specs):
            try:
                treatment = Treatment(spec["treatment"])
                bnames = [str(n) for n in spec["names"]]
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"{bad} (block {i} is malformed).") from None
            if any(n not in sizes for n in bnames) or not bnames:
                raise ModelError(f"{bad} (block {i} names parameters the curvature does not cover).")
            covered += bnames
            n = sum(sizes[b] for b in bnames)
            if treatment in (Treatment.KFAC, Treatment.EKFAC):
                w = shapes[names.index(bnames[0])]
                if len(bnames) > 2 or len(w) < 2 or (len(bnames) == 2 and sizes[bnames[1]] != w[0]):
                    raise ModelError(f"{bad} (Kronecker block {i} does not match a weight and bias).")
                out, d_in = w[0], math.prod(w[1:]) + (len(bnames) - 1)
                parts = {"QA": (d_in, d_in), "lA": (d_in,), "QB": (out, out), "lB": (out,), "S": (out, d_in)}
                t = {k: tensor(f"block{i}.{k}", parts[k]).to(torch.float64) for k in _BLOCK_KEYS[treatment]}
                blocks.append(KroneckerBlock(bnames, treatment, t["QA"], t["lA"], t["QB"], t["lB"], t.get("S")))
            elif treatment is Treatment.DIAGONAL:
                blocks.append(DiagonalBlock(bnames, tensor(f"block{i}.d", (n,)).to(torch.float64)))
            else:
                blocks.append(DenseBlock(bnames, tensor(f"block{i}.G", (n, n)).to(torch.float64)))
        if sorted(covered) != sorted(names):
            raise ModelError(f"{bad} (its blocks do not cover each parameter exactly once).")
    return Curvature(kind=kind, names=names, shapes=shapes, reg=reg, blocks=blocks, factor=factor,
                     meta={k: meta[k] for k in ("architecture", "parameters", "data_fingerprint", "n_rows",
                                                "diagnostics", "cg") if k in meta}, operator=operator)
