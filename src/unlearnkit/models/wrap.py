"""Any PyTorch classifier as an :class:`~unlearnkit.models.base.UnlearnableModel`: :func:`wrap`.

The wrapper holds the user's ``nn.Module`` as its child ``module`` (no copy, no rewriting, no
patching) and adds what unlearnkit needs around it:

* **the objective** (the sum convention of :mod:`unlearnkit.models.base`)::

      L(theta; D) = sum_{(x, y) in D} loss(module(x), y) + (l2 / 2) ||theta||^2

  with ``theta`` every trainable parameter of the module, ``loss`` the per-sample
  cross-entropy by default or the user's ``loss(logits, y) -> (m,)`` (one loss per row; a loss
  that reduces over the batch is refused);
* **the adapter** that architecture-specific methods use, discovered from the module's
  structure or named by attribute (dotted paths such as ``"classifier.2"`` allowed):

  - ``head()``: the last ``nn.Linear`` in module order (``head=``);
  - ``blocks()``: the attributes ``layer1 .. layerN`` if the module has them, else the children
    with parameters of the first ``nn.Sequential`` or ``nn.ModuleList`` (the ``layers`` of an
    ``nn.TransformerEncoder``) with at least two children, the head (and any child holding it)
    left out (``blocks=``, a name or a list of names);
  - ``first_layer()``: the first convolution, linear layer or embedding (``first_layer=``).

The user's module is never modified: every unlearning method and every training run works on a
deep copy of the wrapper (which copies the module), and its parameters, buffers and ``.training``
flag stay as they were. Gradients and curvature are those of the module in **evaluation mode**
(:class:`~unlearnkit.influence.functional.FlatModel` differentiates an eval-mode copy when the
module is in training mode): Dropout is off and BatchNorm normalises with its running
statistics, which are buffers (constants, not parameters of ``theta``).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel, reset_layers, reset_parameters

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits, y) -> (m,)``: one loss per row."""

LEFTOVER_STD = 0.02
"""Standard deviation of the normal draw for parameters of unknown layers when re-initialising (tokens, embeddings)."""

FIRST_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag)

NEEDS = {
    "head": "second- and first-order updates with params='head', KDE, RNI, CF-k and EU-k",
    "blocks": "CF-k and EU-k",
    "first_layer": "KDE, RNI and CFW",
}
"""Which methods need each adapter view (named in the error when a view cannot be found)."""


class WrappedModel(UnlearnableModel):
    """A user's ``nn.Module`` classifier with an explicit objective and adapter; build it with :func:`wrap`.

    ``forward(x)`` returns ``module(x)`` (``x`` reshaped to ``(m, *input_shape)``) after checking
    that it is ``(m, n_classes)`` logits. Rebuilding for retraining (:meth:`fresh`) deep-copies
    the wrapper and re-initialises every parameter; the module's class is never re-instantiated.
    """

    kind = "wrapped"
    config_keys = ("n_classes", "l2", "input_shape", "module_type")

    def __init__(
        self, module: nn.Module, *, n_classes: int, l2: float = 0.0, loss: Loss | None = None,
        input_shape: tuple[int, ...] | None = None, head: str | None = None, blocks: str | Sequence[str] | None = None,
        first_layer: str | None = None,
    ) -> None:
        super().__init__(n_classes=n_classes, l2=l2)
        self.module = module
        self.training = module.training  # the wrapper reports the module's mode; it never sets it
        # the loss is kept out of the module tree (an nn.Module loss would otherwise register as a child)
        self.__dict__["_loss"] = loss
        self._input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self._names = {"head": head, "blocks": blocks, "first_layer": first_layer}
        self._checked = False

    # ------------------------------------------------------------------ config
    @property
    def module_type(self) -> str:
        cls = type(self.module)
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def convex(self) -> bool:
        """Whether the objective is convex: a single ``nn.Linear`` under cross-entropy (multinomial logistic regression)."""
        return isinstance(self.module, nn.Linear) and self.__dict__["_loss"] is None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    def __deepcopy__(self, memo: dict) -> "WrappedModel":
        """The default deep copy (what ``copy.deepcopy`` does for any module), with a named error when the user's
        module holds an object that cannot be copied (a lock, an open file, a thread pool): training, retraining
        and every unlearning method work on copies, so that the module itself is never modified."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        try:
            state = copy.deepcopy(self.__getstate__(), memo)
        except ModelError:
            raise
        except Exception as exc:  # TypeError: cannot pickle '_thread.lock' object, and the like
            raise ModelError(uncopyable(self.module, exc)) from None
        new.__setstate__(state)
        return new

    def fresh(self) -> "WrappedModel":
        """A deep copy with every parameter re-initialised from a fixed seed (see :meth:`init_parameters`)."""
        new = copy.deepcopy(self)
        for attr in ("train_config", "train_seconds"):
            new.__dict__.pop(attr, None)
        new.init_parameters(torch.Generator(device="cpu").manual_seed(0))
        return new

    def init_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every parameter deterministically from ``generator``.

        Known layers as :func:`~unlearnkit.models.base.reset_parameters` (linear, convolution,
        embedding, recurrent, attention, normalisation; batch-norm statistics reset). A parameter
        owned by another module type is re-initialised by that module's own ``reset_parameters()``
        when it has one (run with the global RNG seeded from ``generator`` and restored after),
        otherwise drawn from ``N(0, LEFTOVER_STD^2)`` (class tokens, position embeddings).
        """
        reset_parameters(self, generator)
        known = reset_layers(self)
        with torch.no_grad():
            for sub in self.module.modules():
                own = [p for p in sub.parameters(recurse=False) if id(p) not in known]
                if not own:
                    continue
                if callable(getattr(sub, "reset_parameters", None)):
                    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        sub.reset_parameters()
                else:
                    for p in own:
                        p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(0.0, LEFTOVER_STD, generator=generator))

    # ------------------------------------------------------------------ adapter
    def _resolve(self, name: str, view: str) -> nn.Module:
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            raise ModelError(f"The wrapped {self.module_type} has no submodule {name!r} (given as {view}=); "
                             f"name an attribute of the module (dotted paths allowed).") from None

    def head(self) -> nn.Module:
        """The classifier head: ``head=`` if given, else the last ``nn.Linear`` of the module."""
        if self._names["head"] is not None:
            return self._resolve(self._names["head"], "head")
        linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError(f"No head found in the wrapped {self.module_type}: it has no nn.Linear layer. "
                             f"Pass head='<attribute>' to wrap(); {NEEDS['head']} need it.")
        return linears[-1]

    def blocks(self) -> list[nn.Module]:
        """The feature blocks: ``blocks=`` if given, else ``layer1..layerN``, else the children of the first ``nn.Sequential`` or ``nn.ModuleList`` (an ``nn.TransformerEncoder``'s ``layers``) with two or more."""
        names = self._names["blocks"]
        if names is not None:
            if isinstance(names, str):
                container = self._resolve(names, "blocks")
                return list(container.children()) if isinstance(container, (nn.Sequential, nn.ModuleList)) else [container]
            return [self._resolve(n, "blocks") for n in names]
        layers, k = [], 1
        while isinstance(getattr(self.module, f"layer{k}", None), nn.Module):
            layers.append(getattr(self.module, f"layer{k}"))
            k += 1
        if layers:
            return layers
        head = self.head() if any(isinstance(m, nn.Linear) for m in self.module.modules()) or self._names["head"] else None
        for sub in self.module.modules():
            if isinstance(sub, (nn.Sequential, nn.ModuleList)) and len(sub) >= 2:
                held = [c for c in sub.children()
                        if any(True for _ in c.parameters()) and not (head is not None and any(m is head for m in c.modules()))]
                if held:
                    return held
        raise ModelError(f"No blocks found in the wrapped {self.module_type}: it has no attributes layer1..layerN and no "
                         f"nn.Sequential or nn.ModuleList with two or more children. Pass blocks='<attribute>' (an nn.Sequential or "
                         f"nn.ModuleList) or blocks=[names] to wrap(); {NEEDS['blocks']} need it.")

    def first_layer(self) -> nn.Module:
        """The input layer: ``first_layer=`` if given, else the first convolution, linear layer or embedding."""
        if self._names["first_layer"] is not None:
            return self._resolve(self._names["first_layer"], "first_layer")
        for sub in self.module.modules():
            if isinstance(sub, FIRST_LAYER_TYPES):
                return sub
        raise ModelError(f"No first layer found in the wrapped {self.module_type}: it has no convolution, nn.Linear or "
                         f"nn.Embedding. Pass first_layer='<attribute>' to wrap(); {NEEDS['first_layer']} need it.")

    # ------------------------------------------------------------------ objective
    @property
    def custom_loss(self) -> bool:
        """Whether the loss is the user's (curvature code then differentiates it instead of using cross-entropy's closed form)."""
        return self.__dict__["_loss"] is not None

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The per-sample loss: cross-entropy, or the ``loss`` given to :func:`wrap`; shape ``(m,)``."""
        loss = self.__dict__["_loss"]
        return F.cross_entropy(logits, y, reduction="none") if loss is None else loss(logits, y)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._input_shape is None else x.reshape(x.shape[0], *self._input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(self.prepare(x))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] != self.n_classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"The wrapped {self.module_type} returned {shape} for a batch of {x.shape[0]} rows; it must "
                             f"return logits of shape (rows, n_classes) = ({x.shape[0]}, {self.n_classes}). Return the "
                             "logits tensor (not a tuple or dict), or pass the right n_classes to wrap().")
        return out

    def check_data(self, data) -> None:
        """Learn the input shape from the first data seen (when not given) and check the module on its first rows."""
        if self._input_shape is None:
            self._input_shape = tuple(data.feature_shape)
        super().check_data(data)
        if not self._checked and len(data):
            rows = data.subset(list(range(min(len(data), 4)))) if len(data) > 4 else data
            X, y = rows.tensors(dtype=_dtype(self.module))
            if len(rows) == 1:  # batch norm in training mode cannot see one row
                X, y = X.repeat(2, *([1] * (X.ndim - 1))), y.repeat(2)
            self._probe(X, y.to(_device(self.module)))
            self._checked = True

    def _probe(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Run forward and loss on a probe batch without touching the module (its buffers are cloned, the RNG restored)."""
        logits = probe_logits(self.module, self.prepare(X.to(_device(self.module))))
        check_logits(logits, X.shape[0], self.n_classes, self.module_type)
        check_loss(self, logits, y)


# ---------------------------------------------------------------------------- checks
def uncopyable(module: nn.Module, exc: BaseException) -> str:
    """The message for a module that ``copy.deepcopy`` cannot copy (``exc`` the error it raised)."""
    return (f"The {type(module).__name__} module cannot be copied (copy.deepcopy raised {type(exc).__name__}: "
            f"{str(exc)[:200]}): unlearnkit trains and unlearns on copies so that your module is never modified. Keep "
            "objects that cannot be copied (locks, open files, thread pools, data loaders) out of the module, e.g. as "
            "arguments of the code that uses them, or give their class a __deepcopy__.")


def check_placement(module: nn.Module, what: str) -> None:
    """Refuse a module with parameters or buffers on the ``meta`` device (shapes without values) or spread over
    several devices; ``what`` names the module in the message."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_meta for t in tensors):
        raise ModelError(f"{what} has parameters or buffers on the 'meta' device, which hold shapes but no values, so "
                         "it cannot be run or trained. Build it on a real device (without torch.device('meta')); to "
                         "fill it from a weights file, build it on the CPU, or call module.to_empty(device='cpu'), and "
                         "pass it to unlearnkit.load_model(path, module=...), which loads the weights into a copy.")
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1:
        raise ModelError(f"{what} has parameters or buffers on several devices ({', '.join(devices)}); unlearnkit runs "
                         "a model on one device. Move the whole module to one device (module.to('cpu')) and pass "
                         "device= (--device on the command line) to run it elsewhere.")


def _param(module: nn.Module) -> torch.Tensor:
    try:
        return next(module.parameters())
    except StopIteration:
        raise ModelError(f"The {type(module).__name__} module has no parameters: there is nothing to unlearn.") from None


def _dtype(module: nn.Module) -> torch.dtype:
    return _param(module).dtype


def _device(module: nn.Module) -> torch.device:
    return _param(module).device


def probe_logits(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``module(X)`` in the module's current mode, leaving it exactly as it was.

    Runs through :func:`torch.func.functional_call` with clones of the buffers (so a batch norm
    in training mode updates the clones, not the module), without gradients and with the global
    RNG state restored afterwards (Dropout draws from it).
    """
    state = {**dict(module.named_parameters()), **{n: b.clone() for n, b in module.named_buffers()}}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
            return functional_call(module, state, (X,))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"The wrapped {type(module).__name__} failed on a probe batch of shape {tuple(X.shape)} "
                         f"({X.dtype}): {type(exc).__name__}: {exc}. Pass the input_shape of one example to wrap() "
                         "(the shape your module's forward expects, without the batch axis).") from None


def check_logits(logits, m: int, n_classes: int | None, what: str) -> None:
    """Refuse outputs that are not finite ``(m, n_classes)`` logits, naming the problem."""
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"The wrapped {what} returned a {type(logits).__name__}, not a tensor of logits; make forward "
                         "return the logits tensor of shape (rows, n_classes).")
    if logits.ndim != 2 or logits.shape[0] != m or (n_classes is not None and logits.shape[1] != n_classes):
        want = f"({m}, {n_classes})" if n_classes is not None else f"({m}, n_classes)"
        raise ModelError(f"The wrapped {what} returned shape {tuple(logits.shape)} for {m} rows; it must return logits "
                         f"of shape {want}. Flatten or pool its output into one row of class scores per example"
                         + (", or pass the right n_classes to wrap()." if n_classes is not None else "."))
    if logits.shape[1] < 2:
        raise ModelError(f"The wrapped {what} returns {logits.shape[1]} output per row; a classifier needs >= 2 logits "
                         "(for a binary task return two logits, or use unlearnkit.models.LogisticRegression).")
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(f"The wrapped {what} returned non-finite logits (NaN or inf) on a probe batch; check its "
                         "weights (a diverged training run?) and its forward (division by zero, log of zero).")


def check_loss(model: WrappedModel, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse a loss that does not return one finite value per row (e.g. one already reduced over the batch)."""
    m = logits.shape[0]
    try:
        with torch.no_grad():
            out = model.per_sample_loss(logits, y)
    except Exception as exc:
        raise ModelError(f"The loss failed on logits of shape {tuple(logits.shape)} and labels of shape {tuple(y.shape)}: "
                         f"{type(exc).__name__}: {exc}.") from None
    if not isinstance(out, torch.Tensor) or out.shape != (m,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        reduced = isinstance(out, torch.Tensor) and out.ndim == 0
        raise ModelError(f"The loss returned {got} for {m} rows; it must return one loss per row, shape ({m},)"
                         + (": it is already reduced over the batch (a mean or sum). Use reduction='none', e.g. "
                            "lambda logits, y: F.cross_entropy(logits, y, reduction='none')." if reduced else "."))
    if not bool(torch.isfinite(out).all()):
        raise ModelError("The loss returned non-finite values (NaN or inf) on a probe batch; check the loss and the labels.")


# ---------------------------------------------------------------------------- the entry point
def wrap(
    module: nn.Module, *, n_classes: int | None = None, loss: Loss | None = None, l2: float = 0.0,
    input_shape: Sequence[int] | None = None, head: str | None = None, blocks: str | Sequence[str] | None = None,
    first_layer: str | None = None,
) -> WrappedModel:
    """Make a PyTorch classifier an unlearnkit model, without copying or changing it.

    **Objective** (sum convention, :mod:`unlearnkit.models.base`)::

        L(theta; D) = sum_{(x, y) in D} loss(module(x), y) + (l2 / 2) ||theta||^2

    ``theta`` is every trainable parameter of ``module`` (biases included). ``loss`` defaults to
    the per-sample cross-entropy; a callable ``loss(logits, y)`` must return one loss per row,
    shape ``(m,)`` — a loss reduced over the batch is refused. ``module(x)`` must return logits
    of shape ``(m, n_classes)``; ``n_classes`` is read from a probe forward when not given.

    **Adapter** (for the methods that act on parts of the network): ``head()`` is the last
    ``nn.Linear`` in module order; ``blocks()`` the attributes ``layer1..layerN`` if present, else
    the children (with parameters, the head left out) of the first ``nn.Sequential`` or
    ``nn.ModuleList`` with >= 2 children; ``first_layer()`` the first convolution, ``nn.Linear`` or ``nn.Embedding``.
    ``head=``, ``blocks=`` (a name, or a list of names) and ``first_layer=`` override them by
    attribute name, dotted paths allowed. A view that cannot be found raises
    :class:`~unlearnkit.errors.ModelError` naming the methods that need it, when they ask.

    **Checks.** With ``input_shape`` (one example's shape, no batch axis) the module and the loss
    are probed at once on a small seeded batch; without it, on the first rows of the first data
    set the model is used with. Wrong output shapes, non-finite logits and reduced losses are
    refused with a :class:`~unlearnkit.errors.ModelError`. The probe runs on cloned buffers with
    the RNG restored: ``module``'s parameters, buffers and ``.training`` flag are never modified,
    by ``wrap`` or by any unlearning method (they work on deep copies). Gradients and curvature
    are taken in evaluation mode (see :mod:`unlearnkit.models.wrap`).
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}.")
    if isinstance(module, UnlearnableModel):
        raise ModelError(f"The {type(module).__name__} is already an unlearnkit model; use it directly.")
    if loss is not None and not callable(loss):
        raise ModelError(f"loss must be a callable loss(logits, y) -> (m,), got {type(loss).__name__}.")
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
        raise ModelError(f"l2 must be a finite number >= 0, got {l2!r}.")
    param = _param(module)
    check_placement(module, f"The {type(module).__name__} module")
    if input_shape is not None:
        input_shape = tuple(int(s) for s in input_shape)
        if any(s < 1 for s in input_shape):
            raise ModelError(f"input_shape must hold positive sizes (one example, no batch axis), got {input_shape}.")
    probe = None
    if input_shape is not None:
        X = torch.rand((2, *input_shape), generator=torch.Generator(device="cpu").manual_seed(0), dtype=param.dtype)
        probe = probe_logits(module, X.to(param.device))
        check_logits(probe, 2, n_classes, type(module).__name__)
        if n_classes is None:
            n_classes = int(probe.shape[1])
    if n_classes is None:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if head is None and not linears:
            raise ModelError(f"Cannot tell how many classes the {type(module).__name__} predicts: pass n_classes= or "
                             "input_shape= (a probe forward then reads it).")
        try:
            named = module.get_submodule(head) if head is not None else None
        except AttributeError:
            named = None  # reported below, by name, when the views are resolved
        n_classes = getattr(named, "out_features", None) or (linears[-1].out_features if linears else None)
        if n_classes is None:
            raise ModelError(f"Cannot tell how many classes the {type(module).__name__} predicts: pass n_classes=.")
    if n_classes < 2:
        raise ModelError(f"n_classes must be >= 2, got {n_classes}.")
    model = WrappedModel(module, n_classes=int(n_classes), l2=float(l2), loss=loss, input_shape=input_shape,
                         head=head, blocks=blocks, first_layer=first_layer)
    for view, name in (("head", head), ("first_layer", first_layer)):
        if name is not None:
            model._resolve(name, view)
    if blocks is not None:
        model.blocks()
    if probe is not None:
        y = torch.arange(2, device=param.device) % int(n_classes)
        check_loss(model, probe, y)
        model._checked = True
    return model
