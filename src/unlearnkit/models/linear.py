"""L2-regularised logistic regression (binary and multinomial, with intercept)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from unlearnkit.models.base import UnlearnableModel


def logistic_loss(margin: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(-m))`` of the margin ``m``, with derivatives exact to rounding at every margin.

    Written as ``log1p(e)`` (``m >= 0``) or ``-m + log1p(e)`` (``m < 0``) with
    ``e = exp(-|m|) <= 1``, so autograd gives ``-sigmoid(-m)`` and ``sigmoid(m) sigmoid(-m)`` to
    full relative precision. (``softplus`` switches to the identity beyond margin 20, where its
    second derivative is 0; ``-logsigmoid`` loses its second derivative beyond margin ~37.)
    """
    positive = margin >= 0
    e = torch.exp(torch.where(positive, -margin, margin))
    return torch.where(positive, torch.log1p(e), torch.log1p(e) - margin)


def logistic_curvature(z: torch.Tensor) -> torch.Tensor:
    """``d^2 l / dz^2 = sigmoid(z) sigmoid(-z)`` (= ``p (1 - p)`` without the cancellation in ``1 - p``)."""
    return torch.sigmoid(z) * torch.sigmoid(-z)


class LogisticRegression(UnlearnableModel):
    """Logistic regression ``f(x) = W x + b``.

    * ``n_classes == 2``: one logit ``z = w.x + b``; per-sample loss
      ``l = log(1 + exp(-s z))`` with ``s = 2y - 1`` (labels 0/1), :func:`logistic_loss`.
    * ``n_classes > 2``: multinomial (softmax) with ``n_classes`` logits and cross-entropy.

    The objective is ``sum_i l_i + (l2 / 2)(||W||^2 + ||b||^2)``: the intercept is regularised
    too, which makes the objective ``l2``-strongly convex (the certified-unlearning theory needs
    that). Trained in float64 by default so that second-order updates can be compared with
    retraining to high precision.

    Options: ``fit_intercept=False`` drops the intercept; ``penalize_intercept=False`` leaves it
    out of the L2 term (scikit-learn's objective ``C sum_i l_i + ||W||^2 / 2``, i.e.
    ``l2 = 1 / C``; no longer strongly convex in the intercept, and a softmax model's intercepts
    are then determined only up to a common shift, see :meth:`null_space`); ``loss_perturbation=True`` adds
    the buffer ``perturbation`` holding the vector ``b`` of Guo et al.'s objective
    ``L + b . theta`` (filled by :func:`unlearnkit.influence.certified.certified_train`).
    """

    kind = "logreg"
    config_keys = ("n_features", "n_classes", "l2", "fit_intercept", "penalize_intercept", "loss_perturbation")
    convex = True
    same_in_training_mode = True  # one nn.Linear: train() and eval() compute the same function (no copy to evaluate)

    def __init__(
        self, *, n_features: int, n_classes: int = 2, l2: float = 1.0, fit_intercept: bool = True,
        penalize_intercept: bool = True, loss_perturbation: bool = False,
    ) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        self.n_features = int(n_features)
        self.fit_intercept = bool(fit_intercept)
        self.penalize_intercept = bool(penalize_intercept)
        self.loss_perturbation = bool(loss_perturbation)
        out = 1 if self.n_classes == 2 else self.n_classes
        self.linear = nn.Linear(self.n_features, out, bias=self.fit_intercept)
        if self.loss_perturbation:
            self.register_buffer("perturbation", torch.zeros(self.n_params))

    @property
    def n_outputs(self) -> int:
        """Number of logits: 1 for binary, ``n_classes`` otherwise."""
        return self.linear.weight.shape[0]

    @property
    def n_params(self) -> int:
        return self.n_outputs * (self.n_features + int(self.fit_intercept))

    def regularizer_weights(self) -> torch.Tensor | None:
        if self.penalize_intercept or not self.fit_intercept:
            return None
        w = torch.full((self.n_params,), self.l2, dtype=self.linear.weight.dtype, device=self.linear.weight.device)
        w[self.linear.weight.numel():] = 0.0
        return w

    def linear_term(self) -> torch.Tensor | None:
        return self.perturbation if self.loss_perturbation else None

    def null_space(self) -> torch.Tensor | None:
        """Orthonormal directions ``N`` (shape ``(p, q)``) along which the objective is flat, or None.

        A softmax model whose intercepts are not penalised predicts the same probabilities when
        every intercept moves by the same amount, so its objective (and its Hessian, ``H N = 0``)
        is flat along ``N = (0, ..., 0, 1, ..., 1) / sqrt(C)`` (zeros on the weights, in parameter
        order). The minimiser is unique only up to that shift; unlearnkit fixes the gauge at the
        minimum-norm solution (intercepts summing to zero), which training from zero and every
        update orthogonal to ``N`` keep. Every gradient (and every gradient difference) is
        orthogonal to ``N``. Binary models and penalised (or absent) intercepts have no such
        direction (None); with ``l2 = 0`` the weights can be flat too, which this does not cover.
        """
        if not self.fit_intercept or self.penalize_intercept or self.n_outputs == 1:
            return None
        w = self.linear.weight
        N = torch.zeros(self.n_params, 1, dtype=w.dtype, device=w.device)
        N[w.numel():, 0] = 1.0 / self.n_outputs ** 0.5
        return N

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)

    # adapter: one layer, which is both the stem and the head; no blocks
    def first_layer(self) -> nn.Module:
        return self.linear

    def blocks(self) -> list[nn.Module]:
        return []

    def head(self) -> nn.Module:
        return self.linear

    def init_parameters(self, generator: torch.Generator) -> None:
        """Convex model: start from zero (the optimum does not depend on the start)."""
        with torch.no_grad():
            self.linear.weight.zero_()
            if self.linear.bias is not None:
                self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.reshape(x.shape[0], -1))
        return z.squeeze(-1) if self.n_classes == 2 else z

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 2:
            sign = 2.0 * y.to(logits.dtype) - 1.0
            return logistic_loss(sign * logits)
        return F.cross_entropy(logits, y, reduction="none")

    def _augmented(self, theta: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X~, z)``: inputs with a column of ones when there is an intercept, and the logits."""
        X = X.reshape(X.shape[0], -1)
        n_w = self.linear.weight.numel()
        W = theta[:n_w].view(self.n_outputs, self.n_features)
        z = X @ W.T
        if self.fit_intercept:
            z = z + theta[n_w:]
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
        return X, z

    def _to_param_order(self, M: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        """Permute the axes ``axes`` of ``M`` from augmented order ``(class, column)`` — the
        intercept last within each class — to parameter order (``W`` row-major, then ``b``)."""
        if not self.fit_intercept or self.n_outputs == 1:
            return M
        C, d = self.n_outputs, self.n_features
        d1 = d + 1
        c_idx = torch.arange(C).repeat_interleave(d1)
        j_idx = torch.arange(d1).repeat(C)
        q = torch.where(j_idx < d, c_idx * d + j_idx, C * d + c_idx).to(M.device)
        inverse = torch.empty_like(q)
        inverse[q] = torch.arange(q.numel(), device=M.device)
        for axis in axes:
            M = M.index_select(axis, inverse)
        return M

    def loss_hessian(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Closed-form ``sum_i d^2 l_i / d theta^2`` (no regulariser) in parameter order (W, b).

        Binary: ``X~^T diag(p (1 - p)) X~`` with ``X~ = [X, 1]``. Multinomial: block ``(c, c')``
        is ``X~^T diag(p_c (delta_cc' - p_c')) X~``. ``O(n C^2 d^2)``; labels do not enter.
        """
        Xa, z = self._augmented(theta, X)
        if self.n_outputs == 1:
            return Xa.T @ (Xa * logistic_curvature(z[:, 0])[:, None])
        C, d1 = self.n_outputs, Xa.shape[1]
        p = torch.softmax(z, dim=1)
        H = torch.empty(C * d1, C * d1, dtype=X.dtype, device=X.device)
        for c in range(C):
            for k in range(c, C):
                w = p[:, c] * ((1.0 if c == k else 0.0) - p[:, k])
                block = Xa.T @ (Xa * w[:, None])
                H[c * d1:(c + 1) * d1, k * d1:(k + 1) * d1] = block
                H[k * d1:(k + 1) * d1, c * d1:(c + 1) * d1] = block.T
        return self._to_param_order(H, (0, 1))

    def hessian_factors(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``F`` of shape ``(p, r)`` with ``F F^T = loss_hessian(theta, X, .)``, for a few rows.

        Binary: one column ``sqrt(p (1 - p)) x~`` per row (``r = m``). Multinomial: the
        per-row block ``(diag(p) - p p^T) (x) x~ x~^T`` equals ``(S (x) x~)(S (x) x~)^T`` with
        ``S = diag(sqrt p) - p sqrt(p)^T``, so ``C`` columns per row (``r = m C``). Low-rank
        updates of a cached Hessian use these (:mod:`unlearnkit.influence.curvature`).
        """
        Xa, z = self._augmented(theta, X)
        if self.n_outputs == 1:
            return (Xa * torch.sqrt(logistic_curvature(z[:, 0]))[:, None]).T
        p = torch.softmax(z, dim=1)  # (m, C)
        sq = torch.sqrt(p)
        S = torch.diag_embed(sq) - p[:, :, None] * sq[:, None, :]  # (m, C, C): S[i, c', c]
        # column (i, c) has entries S[i, c', c] * x~_i[j] at augmented position (c', j)
        F = S[:, :, :, None] * Xa[:, None, None, :]  # (m, c', c, j)
        F = F.permute(1, 3, 0, 2).reshape(self.n_outputs * Xa.shape[1], -1)  # rows (c', j), cols (i, c)
        return self._to_param_order(F, (0,))

    # ---------------------------------------------------------- sparse closed forms
    # For CSR data (bag of words, binary indicator features) the generic path densifies every row block; these
    # closed forms work on the sparse matrix directly. Training (L-BFGS), gradients and Hessian-vector products all
    # use them, so retraining and the updates are sped up alike.
    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_w = self.linear.weight.numel()
        W = theta[:n_w].view(self.n_outputs, self.n_features)
        return W, (theta[n_w:] if self.fit_intercept else None)

    def sparse_logits(self, rows: "SparseRows", W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """Logits ``X W^T + b`` of sparse rows, shape ``(n, C)`` (``C = 1`` for binary); differentiable in ``W, b``."""
        z = torch.sparse.mm(rows.X, W.T)
        return z if b is None else z + b

    def _output_residual(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``d l_i / d z_i``: ``sigmoid(z) - y`` (binary) or ``softmax(z) - onehot(y)``."""
        if self.n_outputs == 1:  # sigmoid(z) - y, without the cancellation of 1 - sigmoid(z) for y = 1
            return torch.where(y[:, None] == 1, -torch.sigmoid(-z), torch.sigmoid(z))
        r = torch.softmax(z, dim=1)
        r[torch.arange(len(y), device=z.device), y] -= 1.0
        return r

    def _pullback(self, rows: "SparseRows", R: torch.Tensor) -> torch.Tensor:
        """``J^T R`` in parameter order: ``(X^T R)^T`` flattened, then ``R`` summed over rows for the intercept."""
        gW = torch.sparse.mm(rows.XT, R).T.reshape(-1)
        return torch.cat([gW, R.sum(0)]) if self.fit_intercept else gW

    def dense_loss_gradient(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i grad l_i`` (no regulariser) in closed form on dense rows: ``J^T r`` with ``r`` the output residual.

        One matrix product instead of automatic differentiation: for the few rows of a request this is most of the
        difference between a call's overhead and its arithmetic."""
        W, b = self._split(theta)
        X = X.reshape(X.shape[0], -1)
        z = X @ W.T
        R = self._output_residual(z if b is None else z + b, y)
        gW = (R.T @ X).reshape(-1)
        return torch.cat([gW, R.sum(0)]) if self.fit_intercept else gW

    def sparse_loss_gradient(self, theta: torch.Tensor, rows: "SparseRows", y: torch.Tensor) -> torch.Tensor:
        """``sum_i grad l_i`` (no regulariser) in closed form on sparse rows."""
        W, b = self._split(theta)
        return self._pullback(rows, self._output_residual(self.sparse_logits(rows, W, b), y))

    def sparse_hvp(self, theta: torch.Tensor, rows: "SparseRows", v: torch.Tensor) -> torch.Tensor:
        """``sum_i (d^2 l_i / d theta^2) v`` (no regulariser) in closed form on sparse rows; labels do not enter.

        With ``dz = X V^T + v_b`` the directional change of the logits: binary ``p (1 - p) dz``;
        multinomial ``p * dz - p (p . dz)``; then pulled back by ``J^T``.
        """
        W, b = self._split(theta)
        Vw, vb = self._split(v)
        z = self.sparse_logits(rows, W, b)
        dz = self.sparse_logits(rows, Vw, vb)
        if self.n_outputs == 1:
            R = logistic_curvature(z) * dz
        else:
            p = torch.softmax(z, dim=1)
            R = p * dz - p * (p * dz).sum(1, keepdim=True)
        return self._pullback(rows, R)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 2:
            return (logits > 0).long()
        return logits.argmax(dim=-1)


class SparseRows:
    """A CSR dataset's rows as torch sparse matrices ``X`` and ``X^T`` (built once, reused for every product)."""

    def __init__(self, data, *, dtype: torch.dtype, device=None) -> None:
        import scipy.sparse as sp

        def convert(M):
            import warnings

            M = sp.csr_matrix(M)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": the two products used here are stable
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                return torch.sparse_csr_tensor(
                    torch.as_tensor(M.indptr, dtype=torch.int64), torch.as_tensor(M.indices, dtype=torch.int64),
                    torch.as_tensor(M.data, dtype=dtype), size=M.shape, device=device, check_invariants=False)

        X = data.X.reshape(len(data), -1) if hasattr(data, "X") else data
        self.X = convert(X)
        self.XT = convert(sp.csr_matrix(X).T)
        self.n = X.shape[0]


def sparse_path(model, data) -> bool:
    """Whether the sparse closed forms apply: CSR data and a logistic regression."""
    return isinstance(model, LogisticRegression) and bool(getattr(data, "is_sparse", False))
