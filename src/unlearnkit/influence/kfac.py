"""K-FAC and EK-FAC for the generalised Gauss-Newton matrix of the objective, block by block.

**The matrix.** For the objective of :mod:`unlearnkit.models.base` (the *sum* of per-row losses
plus ``(1/2) sum_j w_j theta_j^2``, ``w_j = l2`` unless the model says otherwise) the generalised
Gauss-Newton matrix (GGN) is

    G = sum_n J_n^T H_n J_n,      J_n = d z_n / d theta,   H_n = d^2 l(z_n, y_n) / d z_n^2

with ``z_n`` the logits of row ``n``. Writing ``H_n = S_n S_n^T`` (``S_n`` of shape ``(C, k)``),
``G = sum_n sum_c (J_n^T s_nc)(J_n^T s_nc)^T``: the sum of outer products of ``k`` "per-sample
column gradients" per row, each a backward pass of a column ``s_nc`` through the network.
:func:`loss_hessian_sqrt` gives ``S_n``:

* softmax cross-entropy: ``H = diag(p) - p p^T = S S^T`` with ``H 1 = 0``, so ``k = C - 1`` columns
  suffice: with ``j`` the most likely class and ``t = sqrt(p_j)``, the columns
  ``sqrt(p_i) (e_i - v)`` for ``i != j``, where ``v_j = t`` and ``v_i = p_i / (1 + t)`` otherwise
  (**exact**; one column for two classes);
* binary logistic loss (one logit): ``S = sqrt(sigma(z) sigma(-z))`` (``k = 1``, exact);
* a user's loss (``uk.wrap(..., loss=...)``): ``H_n`` by automatic differentiation in the logits,
  ``S_n = Q sqrt(max(Lambda, 0))`` from its eigendecomposition (negative curvature of a non-convex
  loss is clipped to zero, as the GGN of a convex loss never has any);
* or, with ``mc_samples=m`` (cross-entropy and logistic loss only), a seeded Monte-Carlo factor:
  ``s_nj = (p_n - e_{yhat_nj}) / sqrt(m)`` with ``yhat_nj`` drawn from the model's own predictive
  distribution, so ``E[S S^T] = H`` (Martens & Grosse, 2015). Cheaper for many classes.

**Kronecker factors** (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
Approximate Curvature", ICML 2015). For an ``nn.Linear`` or ``nn.Conv2d`` with weight ``W``
(``out x in``, a convolution's kernel flattened to ``out x (in kh kw)``) and its bias folded in as a
last column (the layer input then carries a constant 1), the per-sample column gradient is
``sum_r g_ncr a_nr^T`` over the ``R`` positions ``r`` at which the weight is applied (the sequence
positions of a linear layer on ``(m, T, in)`` inputs, the output pixels of a convolution, whose
inputs ``a_nr`` are the unfolded image patches). K-FAC keeps, per layer,

    A = sum_{n, r} a_nr a_nr^T,     B = (1 / (N R)) sum_{n, r, c} g_ncr g_ncr^T,     G_layer ~ B (x) A

in the row-major order of ``W`` (parameter order). For a convolution this is the "expand"
approximation of weight sharing (Grosse & Martens, "A Kronecker-factored approximate Fisher matrix
for convolution layers", ICML 2016; Eschenhagen et al., NeurIPS 2023): the ``R`` positions are
treated as independent examples, and cross-position terms are dropped. For one row and one
position it is exact. (:func:`fit_blocks` also offers the "reduce" approximation of Eschenhagen et
al.: ``A = sum_n abar_n abar_n^T`` and ``B = (1 / N) sum_{n, c} gsum_nc gsum_nc^T`` with the inputs
averaged and the output gradients summed over the positions; the per-layer diagnostics name the
one used.) The activations are recorded by forward hooks; per batch, one backward pass per column
of ``S`` asks autograd for the gradients at the factored layers' outputs only (no weight gradient
is formed).

**Cost.** A factor is one matrix product per batch (a convolution's patches are one strided copy
of the padded input, channel-major, so ``A = X X^T``), formed in the model's dtype (at least
float32), summed in that dtype over at most 4096 positions (rows, or a convolution's output
pixels) and then in float64; the eigendecompositions are in float64 (in float32 the small
eigenvalues of a large input factor lose far more accuracy than the float32 products cost).

**EK-FAC** (George, Laurent, Bouthillier, Ballas & Vincent, "Fast Approximate Natural Gradient
Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018). With ``A = Q_A L_A Q_A^T`` and
``B = Q_B L_B Q_B^T``, K-FAC is ``(Q_B (x) Q_A) diag(L_B (x) L_A) (Q_B (x) Q_A)^T``. EK-FAC keeps the
eigenbasis and replaces the eigenvalues by the exact diagonal of ``G_layer`` in that basis:

    s_oi = sum_{n, c} ( Q_B^T (sum_r g_ncr a_nr^T) Q_A )_oi^2

which is the best diagonal in that basis in Frobenius norm, and accounts for cross-position terms.
It is computed from the recorded activations and output gradients without forming per-sample
gradients in the parameter basis: for one position ``(Q_B^T g)^2 ((Q_A^T a)^2)^T``, summed over the
columns first; for ``R`` positions (a linear layer on sequences, a convolution's output pixels),
rotating ``a`` and ``g`` before their product (``R d^2`` operations per row for ``d`` inputs) or the
per-row gradient after it (``out d^2`` per column), whichever costs fewer operations for the layer;
a convolution's per-row weight gradients come from one grouped-convolution backward pass (one group
per row), its rotated image patches are formed in blocks of rows. The per-row products hold at most
about 8 million values at a time, whatever the layer's size. The basis is known only after a first
pass over the data. The first pass therefore also keeps each row's gradient statistics (the
layer's inputs and output gradients, or the per-row gradients ``sum_r g_r [a_r, 1]^T`` where these
are rotated after their product and take less memory) for as many leading batches as fit in
:data:`EKFAC_CACHE_BYTES`, each batch's size known from the shapes before anything is kept; those rows
are projected without a second pass, and only the other rows get one (a streamed data set reads only
those). The per-layer diagnostics state how many rows each way.

**Layers it cannot factor** (embeddings, recurrent layers, attention, normalisation layers, a
linear layer whose weight is used without calling it or shared with another module, grouped or
non-zero-padded convolutions, any parameter of another module type) get their own block, one per
owning module: the exact GGN block ``sum_{n, c} (J_n^T s_nc)(J_n^T s_nc)^T`` restricted to its
parameters when it has at most ``dense_max`` (default :data:`DENSE_BLOCK_MAX`) parameters, else its
diagonal, both from per-sample column gradients (``torch.func``). Cross-layer blocks are dropped
(block-diagonal approximation).

**Inverse with damping.** Every block solves ``(G_block + diag(w) + lambda I)^{-1} v``. For the
Kronecker blocks the regulariser and the damping are added to the Kronecker eigenvalues (the
eigenbasis form, exact for ``B (x) A + (l2 + lambda) I``), not the "pi" heuristic of splitting
the damping between the two factors; a Kronecker block therefore needs one L2 weight over its
parameters.
"""

from __future__ import annotations

import abc
import enum
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import hessian, vjp, vmap
from torch.nn import functional as F

from unlearnkit.errors import ModelError, SolverError
from unlearnkit.influence.functional import FlatModel, differentiable_kernels

log = logging.getLogger(__name__)

DENSE_BLOCK_MAX = 2000
"""Largest unfactored layer (parameters) given its exact GGN block; larger ones get the diagonal."""

_CHUNK = 1 << 23
"""Largest number of values of per-row products (per-sample gradient matrices, rotated image patches) held at once
(a batch is split into blocks of rows below it)."""

_PATCHES = 1 << 20
"""Most values of a convolution's image patches formed at once (a batch is split into blocks of rows below it)."""

EKFAC_CACHE_BYTES = 512 << 20
"""Memory (bytes) for the per-row gradients that EK-FAC keeps from its first pass (see :func:`fit_blocks`): the
rows whose gradients fit need no second pass."""

CONV_FACTORS = {
    "expand": "expand: output pixels as independent examples (Grosse & Martens 2016)",
    "reduce": "reduce: inputs averaged and output gradients summed over the output pixels (Eschenhagen et al. 2023)",
}
"""The Kronecker factors of a convolution (``conv_factor`` of :func:`fit_blocks`)."""

_FOLD = 4096
"""Most positions (rows, or a convolution's output pixels) of a Kronecker factor summed in the model's dtype before
their sum is added to a float64 sum."""


class Treatment(str, enum.Enum):
    """How the curvature of one layer is approximated (named per layer in the diagnostics)."""

    KFAC = "kfac"
    EKFAC = "ekfac"
    DIAGONAL = "diagonal"
    DENSE = "dense-block"


class Mode(str, enum.Enum):
    """What :func:`fit_blocks` computes for the layers it can factor."""

    KFAC = "kfac"
    EKFAC = "ekfac"
    DIAGONAL = "diagonal"


# ---------------------------------------------------------------------------- the loss Hessian in the logits
def loss_hessian_sqrt(model, logits: torch.Tensor, y: torch.Tensor, *, mc_samples: int | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """``S`` of shape ``(m, C, k)`` with ``S_n S_n^T`` the loss Hessian in the logits of row ``n`` (see the module
    docstring); binary models' single logit counts as ``C = 1``. Returns ``(S, clipped)``, ``clipped`` the number
    of negative eigenvalues of a user's loss Hessian set to zero."""
    z = logits.detach()
    binary = z.ndim == 1
    if getattr(model, "custom_loss", False):
        if mc_samples is not None:
            raise SolverError("Monte-Carlo GGN factors (mc_samples) need the cross-entropy loss; a custom loss uses the "
                              "exact factor of its Hessian: leave mc_samples=None.")
        return _custom_sqrt(model, z, y)
    if mc_samples is not None:
        if mc_samples < 1:
            raise SolverError(f"mc_samples must be >= 1 or None, got {mc_samples}.")
        gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
        if binary:
            p = torch.sigmoid(z).unsqueeze(1)  # (m, 1)
            draws = (torch.rand((z.shape[0], mc_samples), generator=gen, dtype=torch.float64) < p.cpu().double())
            S = (p - draws.to(device=z.device, dtype=z.dtype)) / math.sqrt(mc_samples)
            return S.unsqueeze(1), 0
        p = torch.softmax(z, dim=-1)
        draws = torch.multinomial(p.cpu().double(), mc_samples, replacement=True, generator=gen).to(z.device)
        onehot = F.one_hot(draws, z.shape[-1]).to(z.dtype).transpose(1, 2)  # (m, C, k)
        return (p.unsqueeze(-1) - onehot) / math.sqrt(mc_samples), 0
    if binary:
        return torch.sqrt(torch.sigmoid(z) * torch.sigmoid(-z)).reshape(-1, 1, 1), 0
    p = torch.softmax(z, dim=-1)
    m, C = p.shape
    if C < 2:
        return torch.zeros(m, C, 1, dtype=p.dtype, device=p.device), 0
    # H = diag(p) - p p^T has rank C - 1 (H 1 = 0): with j the most likely class and t = sqrt(p_j), the
    # columns sqrt(p_i) (e_i - v), i != j, v = p / (1 + t) off j and t at j, give S S^T = H exactly
    # (the symmetric square root of H without row and column j, extended by H 1 = 0).
    top = F.one_hot(p.argmax(-1), C).to(torch.bool)
    t = torch.sqrt(p[top]).unsqueeze(1)  # (m, 1)
    v = torch.where(top, t, p / (1 + t))
    full = torch.sqrt(p).unsqueeze(1) * (torch.eye(C, dtype=p.dtype, device=p.device) - v.unsqueeze(2))
    return full.transpose(1, 2)[~top].reshape(m, C - 1, C).transpose(1, 2), 0


def _custom_sqrt(model, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    def one(zi, yi):
        return model.per_sample_loss(zi.unsqueeze(0), yi.unsqueeze(0)).reshape(())

    try:
        H = vmap(hessian(one))(z, y)
    except Exception:  # a loss without vmap rules: row by row (the same numbers)
        H = torch.stack([hessian(one)(zi, yi) for zi, yi in zip(z, y)])
    C = 1 if z.ndim == 1 else z.shape[-1]
    H = H.reshape(z.shape[0], C, C)
    evals, evecs = torch.linalg.eigh(0.5 * (H + H.transpose(1, 2)))
    clipped = int((evals < 0).sum())
    return evecs * torch.sqrt(evals.clamp(min=0)).unsqueeze(1), clipped


# ---------------------------------------------------------------------------- the layers
@dataclass
class LayerPlan:
    """One layer of the block structure: which parameters, which treatment, and why."""

    name: str
    module_type: str
    params: list[str]
    n_params: int
    treatment: Treatment
    reason: str = ""
    module: nn.Module | None = field(default=None, repr=False)
    has_bias: bool = False
    notes: dict = field(default_factory=dict)
    """What the fit did for this layer (the convolution approximation, EK-FAC's eigenvalue correction)."""

    def describe(self) -> dict:
        out = {"layer": self.name or "(root)", "type": self.module_type, "params": list(self.params),
               "n_params": self.n_params, "treatment": self.treatment.value}
        if self.reason:
            out["reason"] = self.reason
        out.update(self.notes)
        return out


def _factorable(module: nn.Module) -> str:
    """Empty if K-FAC can factor ``module``, else why not."""
    if isinstance(module, nn.Linear):
        return ""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped convolution"
        if module.padding_mode != "zeros":
            return f"convolution with padding_mode={module.padding_mode!r}"
        return ""
    return "not an nn.Linear or nn.Conv2d"


def plan_layers(model: nn.Module, names: list[str], probe: torch.Tensor, mode: Mode, *,
                dense_max: int = DENSE_BLOCK_MAX) -> list[LayerPlan]:
    """The block structure for the parameters ``names`` of ``model`` (in evaluation mode).

    A linear or 2-d convolution layer is factored when its weight is selected, belongs to it alone,
    and a forward pass on ``probe`` calls the layer on inputs whose first axis is the batch (so
    its per-row activations and output gradients are what the hooks see). Everything else is
    grouped by owning module into dense or diagonal blocks.
    """
    selected = set(names)
    params = dict(model.named_parameters())
    owners: dict[int, int] = {}
    for sub in model.modules():
        for p in sub.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    candidates: dict[str, tuple[nn.Module, str, str | None]] = {}
    refused: dict[str, str] = {}
    for mname, sub in model.named_modules():
        if not isinstance(sub, (nn.Linear, nn.Conv2d)):
            continue
        wname = f"{mname}.weight" if mname else "weight"
        if wname not in selected:
            continue
        why = _factorable(sub)
        if not why and owners.get(id(sub.weight), 0) > 1:
            why = "weight shared with another module"
        if why:
            refused[mname] = why
            continue
        bname = f"{mname}.bias" if mname else "bias"
        bias = bname if (sub.bias is not None and bname in selected and owners.get(id(sub.bias), 0) == 1) else None
        candidates[mname] = (sub, wname, bias)
    # probe: which candidates are really called, on per-row inputs
    calls: dict[str, list[bool]] = {k: [] for k in candidates}
    m = probe.shape[0]
    handles = []
    for key, (sub, _, _) in candidates.items():
        def hook(module, inputs, output, key=key):
            x = inputs[0] if inputs else None
            ok = (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and x.shape[0] == m
                  and output.shape[0] == m and (x.ndim == 4 if isinstance(module, nn.Conv2d) else x.ndim >= 2))
            calls[key].append(bool(ok))
        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad(), differentiable_kernels(any(isinstance(s, nn.RNNBase) for s in model.modules())):
            model(probe)
    finally:
        for h in handles:
            h.remove()
    factored = {}
    for key, (sub, wname, bname) in candidates.items():
        if not calls[key]:
            refused[key] = "its weight is used without calling the layer (no forward call seen)"
        elif not all(calls[key]):
            refused[key] = "called on inputs whose first axis is not the batch"
        else:
            factored[wname] = (key, sub, bname)
    treatment = {Mode.KFAC: Treatment.KFAC, Mode.EKFAC: Treatment.EKFAC, Mode.DIAGONAL: Treatment.DIAGONAL}[mode]
    plans: list[LayerPlan] = []
    taken: set[str] = set()
    for name in names:  # factored layers first, in parameter order
        if name in factored:
            key, sub, bname = factored[name]
            plist = [name] + ([bname] if bname else [])
            taken.update(plist)
            plans.append(LayerPlan(key, type(sub).__name__, plist, sum(params[p].numel() for p in plist), treatment,
                                   module=sub, has_bias=bname is not None))
    groups: dict[str, list[str]] = {}
    for name in names:
        if name not in taken:
            groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    modules = dict(model.named_modules())
    for key, plist in groups.items():
        n = sum(params[p].numel() for p in plist)
        sub = modules.get(key)
        kind = type(sub).__name__ if sub is not None else "Parameter"
        why = refused.get(key, "not an nn.Linear or nn.Conv2d" if isinstance(sub, nn.Module) else "parameter of no layer")
        if isinstance(sub, (nn.Linear, nn.Conv2d)) and key not in refused:
            why = "bias without its weight"
        if mode is Mode.DIAGONAL or n > dense_max:
            plans.append(LayerPlan(key, kind, plist, n, Treatment.DIAGONAL,
                                   reason=why if mode is Mode.DIAGONAL else f"{why}; {n} parameters > {dense_max}"))
        else:
            plans.append(LayerPlan(key, kind, plist, n, Treatment.DENSE, reason=f"{why}; {n} parameters <= {dense_max}"))
    return plans


# ---------------------------------------------------------------------------- blocks
class Block(abc.ABC):
    """One diagonal block of the approximate GGN, over the parameters ``names``."""

    treatment: Treatment
    names: list[str]

    @abc.abstractmethod
    def matvec(self, parts: list[torch.Tensor], reg: torch.Tensor) -> list[torch.Tensor]:
        """``(F_block + diag(reg)) v`` for ``v`` given as one tensor per parameter."""

    @abc.abstractmethod
    def solve(self, parts: list[torch.Tensor], reg: torch.Tensor, damping: float) -> list[torch.Tensor]:
        """``(F_block + diag(reg) + damping I)^-1 v``."""

    @abc.abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """The tensors that define the block (what a curvature file stores)."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state().values())


def _positive(denominator_min: float, what: str) -> None:
    if not denominator_min > 0:
        raise SolverError(f"The {what} is singular (smallest eigenvalue plus l2 and damping is {denominator_min:.3g}): "
                          "pass damping > 0 to solve(), or give the model an L2 penalty (l2 > 0).")


def uniform_l2(names: list[str], reg: torch.Tensor) -> float:
    """The one L2 weight of a Kronecker-factored layer's parameters ``names`` (``reg`` their weights, flat);
    :class:`ModelError` when they differ (the eigenbasis form needs ``B (x) A + w I``)."""
    value = float(reg[0]) if reg.numel() else 0.0
    if reg.numel() and not bool(torch.all(reg == reg[0])):
        raise ModelError(f"The layer {names[0].rsplit('.', 1)[0]} has per-parameter L2 weights, which a "
                         "Kronecker-factored block cannot add to its eigenvalues; use kind='exact' or 'ggn-cg'.")
    return value


class KroneckerBlock(Block):
    """``(Q_B (x) Q_A) diag(E) (Q_B (x) Q_A)^T`` over a layer's weight (and bias, folded in as a last input column).

    ``E = L_B (x) L_A`` for K-FAC, the re-estimated diagonal ``S`` for EK-FAC. Vectors are handled
    as ``out x in_aug`` matrices ``V`` (row-major ``W``, the bias as the last column), and
    ``matvec(V) = Q_B (E * (Q_B^T V Q_A)) Q_A^T``.
    """

    def __init__(self, plan_names: list[str], treatment: Treatment, QA, lA, QB, lB, S=None) -> None:
        self.names = list(plan_names)
        self.treatment = treatment
        # contiguous (eigh returns column-major bases): a saved and re-loaded block then computes bit for bit the same
        self.QA, self.lA, self.QB, self.lB = (t.contiguous() for t in (QA, lA, QB, lB))
        self.S = None if S is None else S.contiguous()
        self.has_bias = len(self.names) == 2

    @property
    def eigenvalues(self) -> torch.Tensor:
        """``E`` (``out x in_aug``): the block's eigenvalues in its Kronecker eigenbasis."""
        return self.S if self.S is not None else torch.outer(self.lB, self.lA)

    def _to_matrix(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out, d = self.QB.shape[0], self.QA.shape[0] - int(self.has_bias)
        W = parts[0].reshape(out, d).to(torch.float64)
        return torch.cat([W, parts[1].reshape(out, 1).to(torch.float64)], 1) if self.has_bias else W

    def _from_matrix(self, M: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.has_bias:
            return [M[:, :-1].reshape(-1).to(like[0].dtype), M[:, -1].to(like[1].dtype)]
        return [M.reshape(-1).to(like[0].dtype)]

    def _uniform(self, reg: torch.Tensor) -> float:
        return uniform_l2(self.names, reg)

    def matvec(self, parts, reg):
        V = self._to_matrix(parts)
        rot = self.QB.T @ V @ self.QA
        out = self.QB @ (self.eigenvalues * rot) @ self.QA.T + self._uniform(reg) * V
        return self._from_matrix(out, parts)

    def solve(self, parts, reg, damping):
        E = self.eigenvalues + (self._uniform(reg) + damping)
        _positive(float(E.min()) if E.numel() else 1.0, f"{self.treatment.value} block of {self.names[0]}")
        V = self._to_matrix(parts)
        out = self.QB @ ((self.QB.T @ V @ self.QA) / E) @ self.QA.T
        return self._from_matrix(out, parts)

    def augmented_order(self, offsets: dict[str, tuple[int, int]]) -> torch.Tensor:
        """Flat positions (in the parameter vector) of the entries of ``V`` in row-major order."""
        out, d = self.QB.shape[0], self.QA.shape[0] - int(self.has_bias)
        w0 = offsets[self.names[0]][0]
        idx = torch.arange(out * d).reshape(out, d) + w0
        if self.has_bias:
            b0 = offsets[self.names[1]][0]
            idx = torch.cat([idx, (torch.arange(out) + b0).reshape(out, 1)], 1)
        return idx.reshape(-1)

    def state(self):
        st = {"QA": self.QA, "lA": self.lA, "QB": self.QB, "lB": self.lB}
        if self.S is not None:
            st["S"] = self.S
        return st


class DiagonalBlock(Block):
    """``diag(d)`` over some parameters: the exact diagonal of the GGN there."""

    treatment = Treatment.DIAGONAL

    def __init__(self, names: list[str], d: torch.Tensor) -> None:
        self.names = list(names)
        self.d = d

    def matvec(self, parts, reg):
        v = torch.cat([p.reshape(-1) for p in parts]).to(torch.float64)
        return _split_like((self.d + reg.to(torch.float64)) * v, parts)

    def solve(self, parts, reg, damping):
        denom = self.d + reg.to(torch.float64) + damping
        _positive(float(denom.min()) if denom.numel() else 1.0, f"diagonal block of {self.names[0]}")
        v = torch.cat([p.reshape(-1) for p in parts]).to(torch.float64)
        return _split_like(v / denom, parts)

    def state(self):
        return {"d": self.d}


class DenseBlock(Block):
    """The exact GGN block ``G`` over a few parameters, solved by Cholesky (one factor per damping, cached)."""

    treatment = Treatment.DENSE

    def __init__(self, names: list[str], G: torch.Tensor) -> None:
        self.names = list(names)
        self.G = G
        self._factors: dict[float, torch.Tensor] = {}

    def matvec(self, parts, reg):
        v = torch.cat([p.reshape(-1) for p in parts]).to(torch.float64)
        return _split_like(self.G @ v + reg.to(torch.float64) * v, parts)

    def solve(self, parts, reg, damping):
        key = float(damping)
        L = self._factors.get(key)
        if L is None:
            M = self.G + torch.diag(reg.to(torch.float64) + damping)
            L, info = torch.linalg.cholesky_ex(M)
            if int(info) != 0:
                _positive(0.0, f"dense block of {self.names[0]}")
            if len(self._factors) >= 8:
                self._factors.pop(next(iter(self._factors)))
            self._factors[key] = L
        v = torch.cat([p.reshape(-1) for p in parts]).to(torch.float64)
        return _split_like(torch.cholesky_solve(v.unsqueeze(1), L).squeeze(1), parts)

    def state(self):
        return {"G": self.G}


def _split_like(v: torch.Tensor, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for p in parts:
        out.append(v[start:start + p.numel()].reshape(p.shape).to(p.dtype))
        start += p.numel()
    return out


# ---------------------------------------------------------------------------- per-sample column gradients
def column_gradients(flat: FlatModel, theta: torch.Tensor, X: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``(m, k, p)``: ``J_n^T s_nj`` for every row ``n`` of ``X`` and column ``j`` of ``S`` (``(m, C, k)``),
    ``J_n`` the Jacobian of row ``n``'s logits in ``flat``'s parameters (``torch.func``; row by row for
    recurrent layers, which have no ``vmap`` rules)."""

    def pullbacks(t, x):
        return vjp(lambda tt: flat.logits(tt, x.unsqueeze(0)).reshape(-1), t)[1]

    if flat.recurrent:
        rows = []
        for x, s in zip(X, S):
            fn = pullbacks(theta, x)
            rows.append(torch.stack([fn(s[:, j])[0] for j in range(s.shape[1])]))
        return torch.stack(rows) if rows else X.new_zeros((0, S.shape[2], flat.n_params))

    def one(t, x, s):
        fn = pullbacks(t, x)
        return vmap(lambda col: fn(col)[0])(s.T)

    return vmap(one, in_dims=(None, 0, 0))(theta, X, S)


# ---------------------------------------------------------------------------- hooks
class _Taps:
    """Forward hooks on the factored layers recording, per call, the layer's input and its output.

    The hook hands a copy of the output on to the rest of the network, so the recorded output is
    never changed in place (an ``nn.ReLU(inplace=True)`` after the layer) and the gradient of the
    logits with respect to it is the gradient at the layer's output. Only these gradients are asked
    of autograd: no weight gradient is ever formed.
    """

    def __init__(self, plans: list[LayerPlan]) -> None:
        self.plans = plans
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.handles = []

    def __enter__(self) -> "_Taps":
        for plan in self.plans:
            self.handles.append(plan.module.register_forward_hook(self._forward(plan.name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _forward(self, key: str) -> Callable:
        def hook(module, inputs, output):
            self.calls.setdefault(key, []).append((inputs[0].detach(), output))
            return output.clone() if output.requires_grad else output
        return hook


def _activations(plan: LayerPlan, x: torch.Tensor) -> torch.Tensor:
    """``(m, R, in)``: the layer's inputs at each of its ``R`` positions, in the model's dtype, without the bias
    column. For a convolution, the unfolded image patches: a view of a channel-major ``(in, m, R)`` tensor (see
    :func:`_conv_patches`), which :meth:`_Gram.add` multiplies without a further copy."""
    module = plan.module
    if isinstance(module, nn.Conv2d):
        return _conv_patches(module, x).permute(1, 2, 0)
    return _at_least_single(x).reshape(x.shape[0], -1, x.shape[-1])


def _add_activations(gram: "_Gram", plan: LayerPlan, x: torch.Tensor) -> None:
    """Add one call's inputs ``x`` of ``plan``'s layer to its input factor (a convolution's patches in blocks of
    rows, at most :data:`_PATCHES` values at a time)."""
    if isinstance(plan.module, nn.Conv2d):
        per_row = plan.module.weight[0].numel() * max(1, _activations(plan, x[:1]).shape[1])
        step = max(1, _PATCHES // per_row)
        for s in range(0, x.shape[0], step):
            gram.add(_activations(plan, x[s:s + step]), rows=plan.has_bias)
    else:
        gram.add(_activations(plan, x), rows=plan.has_bias)


def _patch_view(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(m, C, Ho, Wo, kh, kw)``: a strided view of the zero-padded input ``x`` (one padded copy, no patches
    formed): the input under kernel tap ``(i, j)`` at output pixel ``(h, w)``."""
    x = _at_least_single(x)
    if isinstance(module.padding, str):
        x = F.pad(x, module._reversed_padding_repeated_twice)
    elif any(module.padding):
        ph, pw = module.padding
        x = F.pad(x, (pw, pw, ph, ph))
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    v = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    return v[..., ::dh, ::dw] if dh > 1 or dw > 1 else v


def _mean_patch(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(m, in_channels kh kw)``: each row's image patches averaged over the output pixels (no patches formed)."""
    return _patch_view(module, x).mean((2, 3)).reshape(x.shape[0], -1)


def _conv_patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(in_channels kh kw, m, R)``, contiguous: the patches that ``module`` multiplies by its kernel, one column
    per row and output pixel, the first axis in the order of the flattened kernel (``F.unfold``'s order).

    One strided copy of the zero-padded input; channel-major, so the Gram matrix of the patches is one matrix
    product (``X X^T``) and no per-row products are needed."""
    v = _patch_view(module, x)
    m, C, Ho, Wo, kh, kw = v.shape
    return v.permute(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, m, Ho * Wo)


def _output_grads(plan: LayerPlan, g: torch.Tensor) -> torch.Tensor:
    """``(m, R, out)``: the gradient at the layer's output, per position (a view)."""
    m = g.shape[0]
    g = _at_least_single(g)
    if isinstance(plan.module, nn.Conv2d):
        return g.reshape(m, g.shape[1], -1).transpose(1, 2)
    return g.reshape(m, -1, g.shape[-1])


def _at_least_single(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a half-precision type (products of half-precision values lose too much)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _Gram:
    """Running sums, over batches of positions ``a`` (``(m, R, d)``), of ``sum_{n, r} a_nr a_nr^T``, of
    ``sum_{n, r} a_nr`` and of the number of positions.

    A batch's product is formed in the batch's dtype, in matrix products of at most :data:`_FOLD` positions
    added in place to an accumulator of that dtype, which is folded into the float64 sum before it would sum
    more than ``_FOLD`` positions, and at the end: no sum in float32 covers more than ``_FOLD`` positions,
    whatever the batch size and the number of rows (the float64 sum bounds the error's growth with them)."""

    def __init__(self) -> None:
        self.xx: torch.Tensor | None = None  # float64
        self.acc: torch.Tensor | None = None  # the batches' dtype
        self.pending = 0
        self.sum: torch.Tensor | None = None
        self.n = 0

    def add(self, a: torch.Tensor, *, rows: bool = False) -> None:
        m, R, d = a.shape
        if self.acc is None:
            self.acc = torch.zeros(d, d, dtype=a.dtype, device=a.device)
        cm = a.permute(2, 0, 1)
        native = a.transpose(1, 2)
        if cm.is_contiguous():  # a convolution's channel-major patches: X X^T, no copy
            X = cm.reshape(d, m * R)
            for s in range(0, m * R, _FOLD):
                self._room(min(_FOLD, m * R - s))
                self.acc.addmm_(X[:, s:s + _FOLD], X[:, s:s + _FOLD].T)
            rowsum = X.sum(1) if rows else None
        elif R > 1 and native.is_contiguous():  # positions last (a convolution's output gradients): per-row products
            step, width = max(1, _FOLD // R), min(R, _FOLD)
            for s in range(0, m, step):
                for r in range(0, R, width):
                    self._room(min(step, m - s) * min(width, R - r))
                    self.acc.addbmm_(native[s:s + step, :, r:r + width], a[s:s + step, r:r + width])
            rowsum = native.sum((0, 2)) if rows else None
        else:
            X = a.reshape(m * R, d)
            for s in range(0, m * R, _FOLD):
                self._room(min(_FOLD, m * R - s))
                self.acc.addmm_(X[s:s + _FOLD].T, X[s:s + _FOLD])
            rowsum = X.sum(0) if rows else None
        if rowsum is not None:
            r = rowsum.to(torch.float64)
            self.sum = r if self.sum is None else self.sum + r
        self.n += m * R

    def _room(self, positions: int) -> None:
        """Fold first if the accumulator would then sum more than :data:`_FOLD` positions."""
        if self.pending + positions > _FOLD:
            self._fold()
        self.pending += positions

    def _fold(self) -> None:
        if self.acc is not None and self.pending:
            if self.xx is None:
                self.xx = torch.zeros_like(self.acc, dtype=torch.float64)
            self.xx.add_(self.acc)  # in place, in float64
            self.acc.zero_()
        self.pending = 0

    def matrix(self, d: int, *, bias: bool, device) -> torch.Tensor:
        """``sum x x^T`` (``d x d``), with ``[x, 1]`` in place of ``x`` when ``bias``."""
        self._fold()
        xx = self.xx if self.xx is not None else torch.zeros(d, d, dtype=torch.float64, device=device)
        if not bias:
            return xx
        s = self.sum if self.sum is not None else torch.zeros(d, dtype=torch.float64, device=device)
        top = torch.cat([xx, s.unsqueeze(1)], 1)
        corner = torch.tensor([[float(self.n)]], dtype=torch.float64, device=device)
        return torch.cat([top, torch.cat([s.unsqueeze(0), corner], 1)], 0)


def _in_basis(a: torch.Tensor, QA: torch.Tensor | None, has_bias: bool) -> torch.Tensor:
    """``[a, 1] Q_A`` (``(m, R, in_aug)``; ``[a, 1]`` itself when ``Q_A`` is None), ``a`` of shape ``(m, R, in)``:
    the activations with the bias column, in the input eigenbasis."""
    if QA is None:
        return torch.cat([a, a.new_ones(*a.shape[:2], 1)], -1) if has_bias else a
    d = a.shape[2]
    out = a @ QA[:d]
    return out + QA[d] if has_bias else out


def _squares(M: torch.Tensor) -> torch.Tensor:
    """``M * M`` with the entries of ``M`` whose square is below the dtype's smallest normal number (``|M| < 1.1e-19``
    in float32) taken as zero. Per-row gradients rotated into directions where a Kronecker factor is (nearly)
    singular are rounding noise of that size; their squares would be subnormal numbers, on which the CPU is
    about a hundred times slower, and are below anything a normal float32 sum can hold next to the others."""
    return F.threshold_(M.abs(), math.sqrt(torch.finfo(M.dtype).tiny), 0.0).square_()


def _squared_products(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum_n (g_n^T a_n)^2`` (``(out, in)``, float64) for ``g`` of shape ``(m, R, out)`` and ``a`` of shape
    ``(m, R, in)``: the squared entries of the per-row gradients ``sum_r g_nr a_nr^T``, summed over the rows."""
    out = torch.zeros(g.shape[2], a.shape[2], dtype=torch.float64, device=a.device)
    step = max(1, _CHUNK // max(1, g.shape[2] * a.shape[2]))
    for s in range(0, a.shape[0], step):
        M = torch.bmm(g[s:s + step].transpose(1, 2), a[s:s + step])
        out += _squares(M).sum(0).to(torch.float64)
    return out


# ---------------------------------------------------------------------------- fitting
@dataclass
class FitStats:
    """Counts of one fit: rows, passes over the data, per-sample column gradients, clipped loss curvature."""

    rows: int = 0
    passes: int = 0
    per_sample_gradients: int = 0
    columns: int = 0
    clipped: int = 0
    cached_rows: int = 0


def _positions(plan: LayerPlan, xs: list[torch.Tensor]) -> int:
    """The number ``R`` of positions per row at which the layer's weight is applied, over all its calls ``xs``
    (computed from the shapes; nothing is formed)."""
    if isinstance(plan.module, nn.Conv2d):
        return sum(math.prod(_patch_view(plan.module, x[:1]).shape[2:4]) for x in xs)
    return sum(x[:1].numel() // max(1, x.shape[-1]) for x in xs)


def _order(plan: LayerPlan, xs: list[torch.Tensor], k: int, rotated: bool) -> str:
    """How a batch's share of the EK-FAC eigenvalues (or of the exact diagonal, ``rotated`` False) is computed for
    ``plan``'s layer with inputs ``xs`` and ``k`` columns of ``S``: ``"single"`` (a linear layer at one position:
    outer products), ``"before"`` (the activations and output gradients rotated into the eigenbasis, then
    multiplied) or ``"after"`` (the per-row gradients formed, then rotated), whichever needs fewer operations."""
    conv = isinstance(plan.module, nn.Conv2d)
    R = _positions(plan, xs)
    if not conv and R == 1:
        return "single"
    if not rotated:
        return "after" if conv else "before"
    out, d = plan.module.weight.shape[0], plan.module.weight[0].numel()
    d_aug = d + int(plan.has_bias)
    once = R * d * d_aug  # rotating one row's activations
    if conv and xs[0].shape[0] * R * d_aug > _CHUNK:  # the batch's rotated patches are not kept: once per column
        once *= k
    before = once + k * R * out * out + k * out * R * d_aug
    after = k * out * R * d + k * out * d * d_aug + k * out * out * d_aug
    return "after" if after < before else "before"


class _Projected:
    """Accumulates ``sum_{n, c} (Q_B^T (sum_r g_ncr [a_nr, 1]^T) Q_A)^2`` for one layer over a batch's ``k``
    columns ``c`` (identity bases when ``Q_A`` / ``Q_B`` are None): the EK-FAC eigenvalues, or the exact diagonal.

    Built from the layer's inputs ``xs`` and, per column, its output gradients ``gs`` (one tensor per call, as
    the layer saw them). The per-row gradient is never formed in the parameter basis when it can be avoided:
    with one position it is the outer product ``(Q_B^T g)(Q_A^T [a, 1])^T``, whose squares are
    ``(Q_B^T g)^2 ((Q_A^T [a, 1])^2)^T``, summed over the columns first; with ``R`` positions (a linear layer
    on sequences, a convolution's output pixels) either the activations and gradients are rotated into the
    eigenbasis before their product, or the per-row gradients are formed and rotated, whichever needs fewer
    operations for this layer (:func:`_order`). A convolution's per-row weight gradients come from one
    grouped-convolution backward pass (one group per row; no image patches are formed); its rotated patches
    are formed in blocks of rows. Every intermediate of the per-row products holds at most about
    :data:`_CHUNK` values.
    """

    def __init__(self, plan: LayerPlan, xs: list[torch.Tensor], QA, QB, k: int) -> None:
        self.plan, self.xs, self.QA, self.QB, self.has_bias = plan, xs, QA, QB, plan.has_bias
        out = plan.module.weight.shape[0]
        d = plan.module.weight[0].numel()
        self.conv = isinstance(plan.module, nn.Conv2d)
        self.total = torch.zeros(out, d + int(plan.has_bias), dtype=torch.float64, device=xs[0].device)
        self.u: torch.Tensor | None = None
        self.order = _order(plan, xs, k, QA is not None)
        self.single = self.order == "single"
        self.a: torch.Tensor | None = None
        m = xs[0].shape[0]
        R = _positions(plan, xs)
        # rows per block of the rotated-patch products: the patches, their rotation and the per-row products
        self.step = max(1, _CHUNK // max(1, R * (2 * d + 1) + 2 * out * (d + 1)))
        if self.order == "after":
            if not self.conv:
                acts = [_activations(plan, x) for x in xs]
                self.a = acts[0] if len(acts) == 1 else torch.cat(acts, 1)  # more positions of the same row
        elif not self.conv or m * R * (d + int(plan.has_bias)) <= _CHUNK:
            self.a = self._rotated(0, m)

    def _rotated(self, s: int, e: int) -> torch.Tensor:
        """``[a, 1] Q_A`` (``(e - s, R, in_aug)``) for rows ``s:e``, all calls' positions concatenated."""
        parts = [_in_basis(_activations(self.plan, x[s:e]), self.QA, self.has_bias) for x in self.xs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _grads(self, gs: list[torch.Tensor]) -> torch.Tensor:
        g = [_output_grads(self.plan, t) for t in gs]
        return g[0] if len(g) == 1 else torch.cat(g, 1)

    def column(self, gs: list[torch.Tensor]) -> None:
        self.columns([gs])

    def columns(self, cols: list[list[torch.Tensor]]) -> None:
        """Add the columns ``cols`` (each one tensor per call)."""
        if self.order == "after":
            for gs in cols:
                if self.conv:
                    self.total += _squared_conv_products(self.plan.module, self.xs, gs, self.QA, self.QB,
                                                         self.has_bias)
                else:
                    self.total += _squared_rotated_products(self._grads(gs), self.a, self.QA, self.QB, self.has_bias)
            return
        gq = []
        for gs in cols:
            g = self._grads(gs)
            gq.append(g @ self.QB if self.QB is not None else g)
        if self.single:
            for g in gq:
                sq = _squares(g[:, 0])
                self.u = sq if self.u is None else self.u + sq
        elif self.a is not None:
            for g in gq:
                self.total += _squared_products(g, self.a)
        else:  # the rotated patches in blocks of rows, each used for every column
            for s in range(0, self.xs[0].shape[0], self.step):
                a = self._rotated(s, s + self.step)
                for g in gq:
                    M = torch.bmm(g[s:s + self.step].transpose(1, 2), a)
                    self.total += _squares(M).sum(0).to(torch.float64)

    def result(self) -> torch.Tensor:
        if self.single and self.u is not None:
            self.total += (self.u.T @ _squares(self.a[:, 0])).to(torch.float64)
        return self.total


class _RowGradients:
    """One batch's per-row statistics of one Kronecker-factored layer, kept from the first pass so that EK-FAC's
    eigenvalue correction needs no second forward and backward pass over these rows.

    Either the layer's inputs and, per column of ``S``, its output gradients (what a second pass would
    recompute; :class:`_Projected` then rotates before or after the product, as it would there), or,
    where the per-row gradients are rotated after their product and take less memory than those, the
    per-row gradients ``G_nc = sum_r g_ncr [a_nr, 1]^T`` themselves (``(m, out, in_aug)``; a convolution's
    by :func:`_conv_sample_grads`, in blocks of rows). :attr:`nbytes` is known from the shapes before
    anything is kept; :meth:`project` gives the batch's share of the EK-FAC eigenvalues."""

    def __init__(self, plan: LayerPlan, xs: list[torch.Tensor], outs: list[torch.Tensor], k: int) -> None:
        self.plan, self.has_bias, self.k = plan, plan.has_bias, k
        self.conv = isinstance(plan.module, nn.Conv2d)
        self.xs = xs
        self.m = xs[0].shape[0]
        raw = sum(x.numel() * x.element_size() for x in xs) + k * sum(o.numel() * o.element_size() for o in outs)
        out, d = plan.module.weight.shape[0], plan.module.weight[0].numel()
        self.dtype = _at_least_single(xs[0][:0]).dtype
        rows = k * self.m * out * (d + int(self.has_bias)) * self.dtype.itemsize
        self.per_row = _order(plan, xs, k, True) == "after" and rows < raw
        self.nbytes = rows if self.per_row else raw
        """Bytes kept, from the shapes."""
        self.cols: list = []

    def start(self) -> None:
        """The batch is kept: copy the inputs (the per-row gradients need them only until the columns are in)."""
        if not self.per_row:
            self.xs = [x.clone() for x in self.xs]

    def column(self, gs: list[torch.Tensor]) -> None:
        if not self.per_row:
            self.cols.append([g.detach().clone() for g in gs])
            return
        module = self.plan.module
        out, d = module.weight.shape[0], module.weight[0].numel()
        M = torch.zeros(self.m, out, d + int(self.has_bias), dtype=self.dtype, device=self.xs[0].device)
        step = max(1, _CHUNK // max(1, 2 * out * (d + 1)))
        for s in range(0, self.m, step):
            e = s + step
            for x, g in zip(self.xs, gs):
                if self.conv:
                    M[s:e, :, :d] += _conv_sample_grads(module, x[s:e], g[s:e])
                    gsum = _at_least_single(g[s:e]).sum((2, 3))
                else:
                    go = _output_grads(self.plan, g[s:e])
                    M[s:e, :, :d] += torch.bmm(go.transpose(1, 2), _activations(self.plan, x[s:e]))
                    gsum = go.sum(1)
                if self.has_bias:
                    M[s:e, :, d] += gsum
        self.cols.append(M)

    def done(self) -> None:
        """The columns are in: drop the references to the pass's activations where they are not kept."""
        if self.per_row:
            self.xs = None

    def project(self, QA: torch.Tensor, QB: torch.Tensor) -> torch.Tensor:
        """``sum_{n, c} (Q_B^T G_nc Q_A)^2`` (``(out, in_aug)``, float64)."""
        if not self.per_row:
            acc = _Projected(self.plan, self.xs, QA, QB, self.k)
            acc.columns(self.cols)
            return acc.result()
        out, d_aug = QB.shape[0], QA.shape[0]
        total = torch.zeros(out, d_aug, dtype=torch.float64, device=QA.device)
        for M in self.cols:
            step = max(1, _CHUNK // max(1, 2 * out * d_aug))
            for s in range(0, M.shape[0], step):
                R = QB.T @ (M[s:s + step] @ QA)
                total += _squares(R).sum(0).to(torch.float64)
        return total


def _conv_sample_grads(module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(m, out, in_channels kh kw)``: the per-row weight gradients ``sum_r g_nr a_nr^T`` of a convolution with
    input ``x`` (``(m, C, H, W)``) and output gradient ``g`` (``(m, out, Ho, Wo)``), by one backward pass of a
    grouped convolution with one group per row (the kernel's values are not needed, only its shape)."""
    x, g = _at_least_single(x), _at_least_single(g)
    if isinstance(module.padding, str):
        x = F.pad(x, module._reversed_padding_repeated_twice)
        padding = [0, 0]
    else:
        padding = list(module.padding)
    m, C = x.shape[:2]
    out = g.shape[1]
    kh, kw = module.kernel_size
    shape = torch.zeros(1, dtype=x.dtype, device=x.device).expand(m * out, C, kh, kw)
    _, gw, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, m * out, *g.shape[2:]), x.reshape(1, m * C, *x.shape[2:]), shape, None, list(module.stride),
        padding, list(module.dilation), False, [0, 0], m, [False, True, False])
    return gw.reshape(m, out, C * kh * kw)


def _squared_conv_products(module: nn.Conv2d, xs: list[torch.Tensor], gs: list[torch.Tensor], QA, QB,
                           has_bias: bool) -> torch.Tensor:
    """``sum_n (Q_B^T G_n Q_A)^2`` (``(out, in_aug)``, float64; no rotation where ``Q_A`` / ``Q_B`` are None) with
    ``G_n = sum_r g_nr [a_nr, 1]^T`` the per-row gradient of a convolution, summed over its calls ``xs`` / ``gs``."""
    out, d = module.weight.shape[0], module.weight[0].numel()
    m = xs[0].shape[0]
    total = torch.zeros(out, d + int(has_bias), dtype=torch.float64, device=xs[0].device)
    step = max(1, _CHUNK // max(1, out * (d + 1)))
    for s in range(0, m, step):
        M = None
        for x, g in zip(xs, gs):
            Mi = _conv_sample_grads(module, x[s:s + step], g[s:s + step])
            if has_bias:
                Mi = torch.cat([Mi, _at_least_single(g[s:s + step]).sum((2, 3)).unsqueeze(2)], 2)
            M = Mi if M is None else M + Mi
        if QA is not None:
            M = M @ QA
        if QB is not None:
            M = QB.T @ M
        total += _squares(M).sum(0).to(torch.float64)
    return total


def _squared_rotated_products(g: torch.Tensor, a: torch.Tensor, QA: torch.Tensor, QB: torch.Tensor,
                              has_bias: bool) -> torch.Tensor:
    """``sum_n (Q_B^T (g_n^T [a_n, 1]) Q_A)^2`` (``(out, in_aug)``, float64), ``g`` of shape ``(m, R, out)``,
    ``a`` of shape ``(m, R, in)``: the per-row gradients formed first, then rotated."""
    d = a.shape[2]
    out = torch.zeros(g.shape[2], QA.shape[0], dtype=torch.float64, device=a.device)
    step = max(1, _CHUNK // max(1, g.shape[2] * QA.shape[0]))
    for s in range(0, a.shape[0], step):
        gs = g[s:s + step]
        M = torch.bmm(gs.transpose(1, 2), a[s:s + step]) @ QA[:d]  # (m, out, in_aug)
        if has_bias:
            M = M + gs.sum(1).unsqueeze(2) * QA[d]
        M = QB.T @ M
        out += _squares(M).sum(0).to(torch.float64)
    return out


def fit_blocks(model: nn.Module, flat: FlatModel, data, plans: list[LayerPlan], mode: Mode, *, batch_size: int,
               mc_samples: int | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None,
               cache_bytes: int | None = None, conv_factor: str = "expand") -> tuple[list[Block], FitStats]:
    """Fit the blocks of ``plans`` on ``data`` for ``model`` (an evaluation-mode copy: hooks are added to it).

    ``flat`` is the :class:`FlatModel` of ``model`` over every planned parameter. One pass over the
    data; per batch, one forward pass and one backward pass per column of ``S``, each asking
    autograd for the gradients at the factored layers' outputs only. EK-FAC keeps the per-row
    statistics of the leading batches that fit in ``cache_bytes`` (default
    :data:`EKFAC_CACHE_BYTES`; 0 keeps none; a batch that would not fit is never formed) and makes a
    second pass over the other rows only.
    ``conv_factor`` chooses the Kronecker factors of convolutions (:data:`CONV_FACTORS`, default
    ``"expand"``). Products of activations and output gradients are formed in the model's dtype
    (at least float32) and summed in float64; the eigendecompositions are in float64.
    """
    if conv_factor not in CONV_FACTORS:
        raise SolverError(f"conv_factor must be one of {sorted(CONV_FACTORS)}, got {conv_factor!r}.")
    if cache_bytes is not None and (isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int)
                                    or cache_bytes < 0):
        raise SolverError(f"cache_bytes must be an integer >= 0 or None, got {cache_bytes!r}.")
    reduce = conv_factor == "reduce"
    stats = FitStats(rows=len(data))
    kron = [p for p in plans if p.treatment in (Treatment.KFAC, Treatment.EKFAC)]
    for p in kron:
        if isinstance(p.module, nn.Conv2d):
            p.notes["kronecker_factors"] = CONV_FACTORS[conv_factor]
    diag_layers = [p for p in plans if p.treatment is Treatment.DIAGONAL and p.module is not None]
    others = [p for p in plans if p.module is None]
    other_names = [n for p in others for n in p.params]
    other_flat = FlatModel(model, other_names) if other_names else None
    other_theta = other_flat.theta() if other_flat is not None else None
    dev = flat.device
    total = len(data) * (2 if mode is Mode.EKFAC and kron else 1)
    done = 0
    A = {p.name: _Gram() for p in kron}
    B = {p.name: _Gram() for p in kron}
    D: dict[str, torch.Tensor] = {}  # factored layers' diagonal (identity basis), or EK-FAC's eigenvalues
    other_acc: dict[str, torch.Tensor] = {}
    gen = torch.Generator(device="cpu")

    def run(batch_fn, skip: int = 0, skip_rows: int = 0) -> None:
        """``batch_fn`` on every batch but the first ``skip`` (``skip_rows`` rows, done from the first pass)."""
        nonlocal done
        source, start = data, 0
        if skip and getattr(data, "streaming", False):  # a lazy view of the other rows: the kept ones are not read
            source, start = data.subset(np.arange(skip_rows, len(data))), skip
        for i, (xb, yb) in enumerate(source.batches(batch_size, device=dev, dtype=flat.dtype), start=start):
            if i < skip:  # done from the first pass
                continue
            # sampled labels seeded per batch: a row gets the same labels in both passes, so the result does not
            # depend on how many rows the first pass could keep
            gen.manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0]))
            batch_fn(xb, yb)
            done += xb.shape[0]
            if progress is not None:
                progress(done, total)
        stats.passes += 1

    def tapped_pass(layers: list[LayerPlan], xb, yb, on_acts, on_column, on_start=None) -> torch.Tensor:
        """Forward once with hooks on ``layers``; ``on_acts(plan, xs, outs, k)`` with the layer's inputs and
        outputs per call (as the layer saw them) and the number ``k`` of columns of ``S``; ``on_start()``; then one
        backward pass per column of ``S`` to the layers' outputs, ``on_column(plan, grads)`` with the gradients at
        the layer's outputs per call (shaped as the outputs). Returns ``S``."""
        with _Taps(layers) as taps:
            with torch.enable_grad(), differentiable_kernels(flat.recurrent):
                logits = model(xb)
        S, clipped = loss_hessian_sqrt(flat.model, logits, yb, mc_samples=mc_samples, generator=gen)
        stats.clipped += clipped
        stats.columns = S.shape[2]
        calls = {p.name: taps.calls.get(p.name, []) for p in layers}
        for p in layers:
            on_acts(p, [x for x, _ in calls[p.name]], [o for _, o in calls[p.name]], S.shape[2])
        if on_start is not None:
            on_start()
        targets = [(p.name, i, out) for p in layers for i, (_, out) in enumerate(calls[p.name]) if out.requires_grad]
        k = S.shape[2]
        for j in range(k if targets and logits.requires_grad else 0):
            cot = S[:, :, j].reshape(logits.shape).to(logits.dtype)
            grads = torch.autograd.grad(logits, [t[2] for t in targets], grad_outputs=cot, retain_graph=j < k - 1,
                                        allow_unused=True)
            got = {(name, i): g for (name, i, _), g in zip(targets, grads) if g is not None}
            for p in layers:
                # a call that does not reach the logits has a zero gradient
                on_column(p, [got.get((p.name, i)) if (p.name, i) in got else torch.zeros_like(out)
                              for i, (_, out) in enumerate(calls[p.name])])
        return S

    budget = EKFAC_CACHE_BYTES if cache_bytes is None else int(cache_bytes)
    cache: list[tuple[int, dict[str, _RowGradients]]] = []  # EK-FAC: the first batches' per-row gradients
    caching = mode is Mode.EKFAC and bool(kron) and budget > 0
    cached_bytes = 0

    def first(xb, yb):  # Kronecker factors, diagonals of factored layers, and the unfactored blocks
        nonlocal cached_bytes
        diag: dict[str, _Projected] = {}
        rows: dict[str, _RowGradients] = {}

        def on_acts(p, xs, outs, k):
            if p.treatment is Treatment.DIAGONAL:
                if xs:  # a layer not called on this batch adds nothing
                    diag[p.name] = _Projected(p, xs, None, None, k)
            else:
                for x in xs:
                    if reduce and isinstance(p.module, nn.Conv2d):
                        A[p.name].add(_mean_patch(p.module, x).unsqueeze(1), rows=p.has_bias)
                    else:
                        _add_activations(A[p.name], p, x)
                if caching and xs:
                    rows[p.name] = _RowGradients(p, xs, outs, k)

        def on_start():  # keep the batch only if it fits, known from the shapes before anything is formed
            nonlocal caching
            if rows and cached_bytes + sum(r.nbytes for r in rows.values()) > budget:
                rows.clear()  # this batch and the rest get the second pass
                caching = False
            for r in rows.values():
                r.start()

        def on_column(p, grads):
            if p.treatment is Treatment.DIAGONAL:
                if grads:
                    diag[p.name].column(grads)
            else:
                for g in grads:
                    if reduce and isinstance(p.module, nn.Conv2d):
                        B[p.name].add(_at_least_single(g).sum((2, 3)).unsqueeze(1))
                    else:
                        B[p.name].add(_output_grads(p, g))
                if p.name in rows:
                    rows[p.name].column(grads)

        S = tapped_pass(kron + diag_layers, xb, yb, on_acts, on_column, on_start)
        if caching:  # this batch was kept (a batch on which no factored layer is called keeps nothing)
            for r in rows.values():
                r.done()
            cache.append((xb.shape[0], rows))
            cached_bytes += sum(r.nbytes for r in rows.values())
            stats.per_sample_gradients += xb.shape[0] * S.shape[2]
        for name, acc in diag.items():
            D[name] = D.get(name, 0) + acc.result()
        if diag_layers:
            stats.per_sample_gradients += xb.shape[0] * S.shape[2]
        if other_flat is not None:
            M = column_gradients(other_flat, other_theta, xb, S.to(other_flat.dtype)).to(torch.float64)
            M = M.reshape(-1, M.shape[2])  # (m k, p_other)
            start = 0
            for p in others:
                block = M[:, start:start + p.n_params]
                start += p.n_params
                add = block.T @ block if p.treatment is Treatment.DENSE else (block * block).sum(0)
                other_acc[p.name] = other_acc.get(p.name, 0) + add
            stats.per_sample_gradients += xb.shape[0] * S.shape[2]

    run(first)

    eig: dict[str, tuple] = {}
    for p in kron:
        d_in = p.module.weight[0].numel()
        out = p.module.weight.shape[0]
        Ap = A[p.name].matrix(d_in, bias=p.has_bias, device=dev)
        Bp = B[p.name].matrix(out, bias=False, device=dev) / max(A[p.name].n, 1)  # B: mean over positions
        lA, QA = torch.linalg.eigh(0.5 * (Ap + Ap.T))
        lB, QB = torch.linalg.eigh(0.5 * (Bp + Bp.T))
        eig[p.name] = (QA, lA.clamp(min=0), QB, lB.clamp(min=0))

    if mode is Mode.EKFAC and kron:  # the exact diagonal in the Kronecker eigenbasis
        dtype = torch.promote_types(flat.dtype, torch.float32)
        bases = {p.name: (eig[p.name][0].to(dtype), eig[p.name][2].to(dtype)) for p in kron}
        n_cached = len(cache)
        cached_rows = 0
        for i in range(n_cached):  # the rows whose per-row gradients were kept: no second pass
            m, rows = cache[i]
            for name, r in rows.items():
                D[name] = D.get(name, 0) + r.project(*bases[name])
            cache[i] = (m, {})
            cached_rows += m
            done += m
            if progress is not None:
                progress(done, total)

        def second(xb, yb):
            proj: dict[str, _Projected] = {}

            def on_acts(p, xs, outs, k):
                if xs:
                    proj[p.name] = _Projected(p, xs, *bases[p.name], k)

            def on_column(p, grads):
                if grads:
                    proj[p.name].column(grads)

            S = tapped_pass(kron, xb, yb, on_acts, on_column)
            for name, acc in proj.items():
                D[name] = D.get(name, 0) + acc.result()
            stats.per_sample_gradients += xb.shape[0] * S.shape[2]

        if cached_rows < len(data):
            run(second, skip=n_cached, skip_rows=cached_rows)
        how = {"rows_kept_from_first_pass": cached_rows, "bytes_kept": cached_bytes, "budget_bytes": budget,
               "rows_in_second_pass": len(data) - cached_rows}
        for p in kron:
            p.notes["eigenvalue_correction"] = dict(how)
        stats.cached_rows = cached_rows

    blocks: list[Block] = []
    for p in plans:
        if p.treatment in (Treatment.KFAC, Treatment.EKFAC):
            QA, lA, QB, lB = eig[p.name]
            S = None
            if p.treatment is Treatment.EKFAC:
                S = D.get(p.name, torch.zeros(QB.shape[0], QA.shape[0], dtype=torch.float64, device=dev))
            blocks.append(KroneckerBlock(p.params, p.treatment, QA, lA, QB, lB, S))
        elif p.module is not None:  # a factored layer's exact diagonal, from the hooks
            out, d_in = p.module.weight.shape[0], p.module.weight[0].numel()
            d = D.get(p.name, torch.zeros(out, d_in + int(p.has_bias), dtype=torch.float64, device=dev))
            vec = d[:, :d_in].reshape(-1)
            blocks.append(DiagonalBlock(p.params, torch.cat([vec, d[:, d_in]]) if p.has_bias else vec))
        elif p.treatment is Treatment.DENSE:
            G = other_acc.get(p.name, torch.zeros(p.n_params, p.n_params, dtype=torch.float64, device=dev))
            blocks.append(DenseBlock(p.params, 0.5 * (G + G.T)))
        else:
            zero = torch.zeros(p.n_params, dtype=torch.float64, device=dev)
            blocks.append(DiagonalBlock(p.params, other_acc.get(p.name, zero)))
    return blocks, stats


def dense_ggn(flat: FlatModel, data, *, batch_size: int, mc_samples: int | None = None, seed: int = 0,
              progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, FitStats]:
    """The dense GGN ``sum_n J_n^T H_n J_n`` (no regulariser) over ``flat``'s parameters, float64, from
    per-sample column gradients (one pass; ``O(n k p)`` time, ``O(p^2 + batch k p)`` memory)."""
    stats = FitStats(rows=len(data), passes=1)
    p = flat.n_params
    G = torch.zeros(p, p, dtype=torch.float64, device=flat.device)
    theta = flat.theta()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    done = 0
    for xb, yb in data.batches(batch_size, device=flat.device, dtype=flat.dtype):
        with torch.no_grad():
            logits = flat.logits(theta, xb)
        S, clipped = loss_hessian_sqrt(flat.model, logits, yb, mc_samples=mc_samples, generator=gen)
        stats.clipped += clipped
        stats.columns = S.shape[2]
        M = column_gradients(flat, theta, xb, S).to(torch.float64).reshape(-1, p)
        G += M.T @ M
        stats.per_sample_gradients += xb.shape[0] * S.shape[2]
        done += xb.shape[0]
        if progress is not None:
            progress(done, len(data))
    return 0.5 * (G + G.T), stats
