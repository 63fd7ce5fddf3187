"""Training with the user's own loop: ``train_fn(module, data)``.

A practitioner who trained a network with their own code retrains it the same way: unlearnkit
builds a fresh copy of the model (the architecture re-initialised, see
:meth:`~unlearnkit.models.base.UnlearnableModel.fresh`), hands the loop the plain
``nn.Module`` and the (corrected) data, and wraps the result again with the same objective and
adapter. :func:`unlearnkit.train`, :func:`unlearnkit.retrain`, LiRA / U-LiRA shadow models
(:class:`~unlearnkit.metrics.lira.ShadowSetup`), :func:`unlearnkit.evaluate` and the scenarios'
comparison take the loop as ``train_fn=``.

**What the loop receives.** ``train_fn(module, data)`` is called with

* ``module``: for a model made by :func:`unlearnkit.wrap`, the user's ``nn.Module`` class (a
  re-initialised deep copy, never the original module); for a model of the zoo, the model
  itself. It sits on the requested device with the model's dtype, in training mode as a newly
  built module is (the result is returned in evaluation mode);
* ``data``: an :class:`unlearnkit.Dataset`. ``data.tensors()`` gives all rows as ``(X, y)``
  tensors (``torch.utils.data.TensorDataset(*data.tensors())`` feeds a ``DataLoader``) and
  ``data.batches(batch_size)`` yields ``(X, y)`` blocks without a full copy. Rows have the
  data's own example shape (``data.feature_shape``); if ``input_shape`` was given to ``wrap``,
  reshape as the wrapper does (``X.reshape(len(X), *input_shape)``).

The loop trains ``module`` in place and returns ``None``, or returns the trained module (the
same object or another module of the same class, whose ``state_dict`` is then taken). Anything
else is refused with a :class:`~unlearnkit.errors.ModelError`, and so is a trained module whose
parameters or buffers changed dtype or device (e.g. ``.double()``, ``.to("meta")``) or whose
parameters or floating-point buffers (batch norm statistics) are not finite.

**Determinism.** The copy is re-initialised from ``seed`` (0 by default, as ``fresh()``), and
the loop runs with PyTorch's global random generator seeded with ``seed`` and restored
afterwards: a loop that draws from the global generator (shuffling, Dropout) is repeatable and
different seeds (LiRA's shadow models) differ; a loop that seeds itself is unaffected.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
import numbers
import secrets
import sys
import types
import weakref
from typing import Callable

import torch
from torch import nn

from unlearnkit import timing
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel

log = logging.getLogger(__name__)

TrainFn = Callable[[nn.Module, Dataset], "nn.Module | None"]
"""``train_fn(module, data) -> None | module``: the user's training loop (see the module docstring)."""

_RECIPE_ATTRS = ("train_config", "train_seconds", "train_fn", "train_seed")


def check_train_fn(train_fn) -> None:
    """Refuse a ``train_fn`` that is not callable."""
    if not callable(train_fn):
        raise ModelError(f"train_fn must be a callable train_fn(module, data) that trains the module (in place, or "
                         f"returning it), got {type(train_fn).__name__}.")


def trainable_module(model: UnlearnableModel) -> nn.Module:
    """The ``nn.Module`` a training loop receives: the user's module of a wrapped model, else the model itself."""
    from unlearnkit.models.wrap import WrappedModel

    return model.module if isinstance(model, WrappedModel) else model


def train_with_fn(model: UnlearnableModel, data: Dataset, train_fn: TrainFn, *, seed: int = 0, device=None,
                  init_from: UnlearnableModel | None = None) -> UnlearnableModel:
    """Train a re-initialised copy of ``model`` on ``data`` with the user's ``train_fn`` and return it.

    ``model`` (and a wrapped model's user module) is not modified. The copy is
    ``model.fresh()`` re-initialised from ``seed`` (or given ``init_from``'s parameters, a warm
    start), moved to ``device`` (default: ``model``'s device) with ``model``'s dtype; the loop
    then runs as the module docstring says. The returned model carries ``train_fn`` and
    ``train_seed`` (so :func:`unlearnkit.retrain` repeats the procedure) and ``train_seconds``
    (the wall time of the loop).
    """
    check_train_fn(train_fn)
    if not isinstance(model, UnlearnableModel):
        raise ModelError(f"model must be an unlearnkit model (use unlearnkit.wrap(module) for a torch.nn.Module), "
                         f"got {type(model).__name__}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ModelError(f"seed must be an integer >= 0, got {seed!r}.")
    if len(data) == 0:
        raise ModelError(f"Cannot train on {data.name}: it has no rows.")
    model.check_data(data)
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    net = model.fresh().to(device="cpu", dtype=param.dtype)
    for attr in _RECIPE_ATTRS:
        net.__dict__.pop(attr, None)
    if init_from is not None:
        net.load_state_dict({k: v.to(dtype=param.dtype) for k, v in init_from.state_dict().items()})
    else:
        net.init_parameters(torch.Generator(device="cpu").manual_seed(int(seed)))
    net = net.to(device).train()
    target = trainable_module(net)
    expected = type(target)
    name = fn_name(train_fn)
    layout = {n: (t.dtype, t.device) for n, t in (*target.named_parameters(), *target.named_buffers())}
    start = timing.start()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        out = train_fn(target, data)
    seconds = timing.since(start)
    if out is not None and out is not target:
        if type(out) is not expected:
            raise ModelError(f"train_fn {name} returned a {type(out).__name__}; it must train the {expected.__name__} it "
                             f"is given in place and return None or that module (or another {expected.__name__}).")
        _check_trained(out, layout, name)
        try:
            target.load_state_dict(out.state_dict())
        except RuntimeError as exc:
            raise ModelError(f"train_fn {name} returned a {expected.__name__} whose weights do not fit the architecture: "
                             f"{str(exc).splitlines()[0]}") from None
    else:
        _check_trained(target, layout, name)
    bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ModelError(f"After train_fn {name}, {len(bad)} parameter tensor(s) are not finite (e.g. {bad[0]}): the "
                         "training diverged; lower its learning rate or check its loss.")
    bad = [n for n, b in net.named_buffers() if b.is_floating_point() and not bool(torch.isfinite(b).all())]
    if bad:
        raise ModelError(f"After train_fn {name}, {len(bad)} buffer(s) are not finite (e.g. {bad[0]}, such as a batch "
                         "norm's running statistics): the training diverged or fed non-finite inputs; lower its "
                         "learning rate or check its data.")
    net.eval()
    # plain attributes (a train_fn that is itself an nn.Module must not become a child of the model)
    net.__dict__.update(train_fn=train_fn, train_seed=int(seed), train_seconds=seconds)
    log.debug("trained %s on %s with train_fn %s in %.3fs", net.kind, data.name, name, seconds)
    return net


def _check_trained(module: nn.Module, layout: dict, name: str) -> None:
    """Refuse a trained module whose tensors changed dtype or device (the loop must train the module where it is)."""
    for n, t in (*module.named_parameters(), *module.named_buffers()):
        if n not in layout:
            continue
        dtype, device = layout[n]
        if t.device != device:
            raise ModelError(f"After train_fn {name}, {n} is on the {t.device} device instead of {device}, where the "
                             "module was given; train it where it is (the device= of train/retrain chooses it) and "
                             "do not move it.")
        if t.dtype != dtype:
            raise ModelError(f"After train_fn {name}, {n} has dtype {t.dtype} instead of {dtype}: the model's "
                             "objective and the metrics use the model's dtype; train the module in the dtype it is "
                             "given (do not call .double()/.half() on it).")


def architecture_digest(model: UnlearnableModel) -> str:
    """A digest of a wrapped model's architecture and objective, for caches of models trained from it.

    It covers the user's module (its ``repr``, the names, shapes, dtypes and ``requires_grad``
    flags of its parameters and the names, shapes and dtypes of its buffers) and the loss (the
    cross-entropy, or the custom loss digested as :func:`train_fn_key` digests a loop). A model of
    the zoo is described by its ``config``; this returns ``""`` for it.
    """
    from unlearnkit.models.wrap import WrappedModel

    if not isinstance(model, WrappedModel):
        return ""
    module = model.module
    params = [f"{n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}" for n, p in module.named_parameters()]
    buffers = [f"{n}:{tuple(b.shape)}:{b.dtype}" for n, b in module.named_buffers()]
    loss = model.__dict__.get("_loss")
    digest = _Digest()
    loss_key = "cross_entropy" if loss is None else f"{fn_name(loss)}:{digest.value(loss)}"
    if digest.opaque:
        log.info("The custom loss %s uses %s, whose content cannot be digested reliably; models trained with it are "
                 "cached under a key unique to this run and are not reused across runs.", fn_name(loss),
                 digest.opaque[0])
    return _sha("architecture", f"{type(module).__module__}.{type(module).__qualname__}", repr(module),
                *params, "buffers", *buffers, "loss", loss_key)[:16]


def fn_name(fn) -> str:
    """``module.qualname`` of a function, a ``functools.partial``'s function or a callable object's class."""
    if isinstance(fn, functools.partial):
        return fn_name(fn.func)
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(fn).__name__)}"


def train_fn_key(fn) -> str:
    """A string identifying a training loop, for caches of models it trained.

    ``fn.cache_key`` when the callable has one (name it to share a cache across edits of the
    code, or for a loop whose captured values cannot be digested); otherwise the qualified name
    plus a SHA-256 digest of everything the loop's behaviour is read from:

    * a function: its code (bytecode, constants, names and nested code objects such as inner
      functions, lambdas and comprehensions; the first line number), its defaults and
      keyword-only defaults, the values its closure captured, and the module globals its code
      names (``co_names``) with their values (of a user's module it names, the attributes the
      code names, as ``helpers.step``);
    * a bound method: its function and the instance's attributes; a callable object: its class
      and its attributes (for the loop itself, unless it is an ``nn.Module``, attribute names
      starting with ``_`` are taken as state, such as a call counter, and left out); a
      ``functools.partial``: its function and arguments;
    * values, recursively: numbers, strings, ``None``, containers (tuples, lists, dicts, sets),
      tensors and arrays by dtype, shape and bytes, datasets by their content fingerprint,
      modules (``nn.Module``) by their attributes, parameters and buffers, user-defined functions
      and classes by their code, objects of pure-Python classes by their attributes.
      Functions, classes and modules of installed libraries (PyTorch, NumPy, the standard
      library, unlearnkit) are identified by their qualified name only.

    A value whose content cannot be digested reliably (an object of a compiled class such as
    ``torch.Generator`` or ``random.Random``, an object array, a meta tensor, a structure too
    large to walk) is identified by a token unique to the object and to this process: the key
    then never matches a key of another run, so cached models are not reused across runs (an
    INFO log says so; set ``fn.cache_key`` to reuse them). Two loops that differ in anything
    listed above never share a key; the same loop gets the same key within a process, and in
    every process when all it captures can be digested.
    """
    key = getattr(fn, "cache_key", None)
    if isinstance(key, str) and key:
        return key
    digest = _Digest()
    value = digest.loop(fn)
    name = fn_name(fn)
    result = f"{name}#{value[:16]}"
    if digest.opaque and result not in _LOGGED:
        _LOGGED.add(result)
        log.info("The training loop %s uses %s, whose content cannot be digested reliably; models it trains are "
                 "cached under a key unique to this run and are not reused across runs. Set %s.cache_key = "
                 "\"<a name for the loop and its settings>\" to reuse them.", name, digest.opaque[0],
                 getattr(fn, "__name__", "train_fn"))
    return result


_LOGGED: set[str] = set()
_TOKENS: dict[int, tuple[object, str]] = {}
_MAX_ITEMS = 200_000
_MAX_DEPTH = 60
_LIBRARIES = {"torch", "numpy", "scipy", "unlearnkit", "builtins", "sklearn", "torchvision", "pandas"}
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python (not compiled)
_CLASS_SKIP = {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__firstlineno__",
               "__static_attributes__", "_abc_impl"}


def _object_token(obj) -> str:
    """A token unique to ``obj`` within this process (random, so never equal to one of another process)."""
    entry = _TOKENS.get(id(obj))
    if entry is not None:
        ref, token = entry
        if (ref() if isinstance(ref, weakref.ref) else ref) is obj:
            return token
    try:
        ref = weakref.ref(obj)
    except TypeError:
        ref = obj  # kept alive, so that its id is never reused by another object
    token = secrets.token_hex(8)
    _TOKENS[id(obj)] = (ref, token)
    return token


def _is_library(module_name) -> bool:
    if not isinstance(module_name, str) or not module_name:
        return False
    top = module_name.split(".")[0]
    if top in _LIBRARIES or top in sys.stdlib_module_names:
        return True
    path = getattr(sys.modules.get(top), "__file__", None) or ""
    return "site-packages" in path or "dist-packages" in path


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


class _Digest:
    """Content digests of a training loop and of what it captures (see :func:`train_fn_key`)."""

    def __init__(self) -> None:
        self.opaque: list[str] = []
        self.items = 0
        self.done: dict[int, str] = {}
        self.active: set[int] = set()
        self.keep: list = []  # objects digested, kept alive so their ids stay theirs

    def loop(self, fn) -> str:
        """The loop itself: a callable object's or a bound method's ``_``-named attributes are state, left out."""
        if isinstance(fn, types.MethodType) and not isinstance(fn.__self__, type):
            return _sha("method", self.value(fn.__func__), self._object(fn.__self__, public=True))
        if not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, functools.partial, type)):
            return _sha("loop", self._object(fn, public=True))
        return self.value(fn)

    def _unknown(self, value, why: str) -> str:
        self.opaque.append(f"{why} ({type(value).__module__}.{type(value).__qualname__})")
        return _sha("opaque", _object_token(value))

    def value(self, value, depth: int = 0) -> str:
        self.items += 1
        if self.items > _MAX_ITEMS or depth > _MAX_DEPTH:
            return self._unknown(value, "a structure too large to digest")
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)) and not isinstance(value, enum.Enum):
            return _sha(type(value).__name__, repr(value))
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.active:  # a cycle: named, not walked again
            return _sha("cycle", type(value).__qualname__, str(getattr(value, "__qualname__", "")))
        self.active.add(key)
        self.keep.append(value)
        try:
            out = self._compound(value, depth + 1)
        finally:
            self.active.discard(key)
        self.done[key] = out
        return out

    def _compound(self, v, depth: int) -> str:
        import numpy as np

        if isinstance(v, enum.Enum):
            return _sha("enum", self.value(type(v), depth), v.name)
        if isinstance(v, (torch.dtype, torch.device, torch.Size)):
            return _sha("torch", repr(v))
        if isinstance(v, np.generic):
            return _sha("npscalar", v.dtype.str, v.tobytes().hex()) if v.dtype != object else self._unknown(v, "an object scalar")
        if isinstance(v, torch.Tensor):
            return self._tensor(v)
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                return self._unknown(v, "an object array")
            return _sha("ndarray", v.dtype.str, repr(v.shape), hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
        if isinstance(v, (tuple, list)):
            return _sha(type(v).__name__, *(self.value(x, depth) for x in v))
        if isinstance(v, (dict, types.MappingProxyType)):
            pairs = sorted(_sha(self.value(k, depth), self.value(x, depth)) for k, x in v.items())
            return _sha("dict", type(v).__qualname__, *pairs)
        if isinstance(v, (set, frozenset)):
            return _sha(type(v).__name__, *sorted(self.value(x, depth) for x in v))
        if isinstance(v, Dataset):
            try:
                return _sha("dataset", v.fingerprint())
            except Exception:  # a data set that cannot fingerprint its rows
                return self._unknown(v, "a data set without a content fingerprint")
        if isinstance(v, functools.partial):
            return _sha("partial", self.value(v.func, depth), self.value(v.args, depth), self.value(v.keywords, depth))
        if isinstance(v, types.ModuleType):
            return _sha("module", v.__name__)
        if isinstance(v, type):
            return self._class(v, depth)
        if isinstance(v, types.FunctionType):
            return self._function(v, depth)
        if isinstance(v, types.MethodType):
            return _sha("method", self.value(v.__func__, depth), self.value(v.__self__, depth))
        if isinstance(v, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            owner = getattr(v, "__self__", None)
            name = f"{getattr(v, '__module__', None)}.{getattr(v, '__qualname__', v.__name__)}"
            if owner is None or isinstance(owner, types.ModuleType):
                return _sha("builtin", name)
            return _sha("builtin-method", name, self.value(owner, depth))
        if isinstance(v, (staticmethod, classmethod)):
            return _sha(type(v).__name__, self.value(v.__func__, depth))
        if isinstance(v, property):
            return _sha("property", self.value(v.fget, depth), self.value(v.fset, depth), self.value(v.fdel, depth))
        return self._object(v, public=False, depth=depth)

    def _tensor(self, t: torch.Tensor) -> str:
        if t.is_meta or t.layout != torch.strided or t.is_quantized or type(t) not in (torch.Tensor, nn.Parameter):
            return self._unknown(t, "a tensor without plain contents")
        raw = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
        return _sha("tensor", str(t.dtype), repr(tuple(t.shape)), str(t.requires_grad),
                    hashlib.sha256(raw.numpy().tobytes()).hexdigest())

    def _function(self, fn: types.FunctionType, depth: int) -> str:
        name = f"{fn.__module__}.{fn.__qualname__}"
        if _is_library(fn.__module__):
            return _sha("function", name)
        names: set[str] = set()
        code = self._code(fn.__code__, names, depth)
        glob = fn.__globals__
        used = [_sha(n, self._global(glob[n], names, depth)) for n in sorted(names) if n in glob]
        cells = [self.value(c.cell_contents, depth) if _filled(c) else "empty" for c in (fn.__closure__ or ())]
        return _sha("function", name, code, self.value(fn.__defaults__, depth), self.value(fn.__kwdefaults__, depth),
                    _sha("closure", *cells), _sha("globals", *used))

    def _global(self, value, names: set, depth: int) -> str:
        """A global the code names; a user's module by the attributes of it the code names (``helpers.step``)."""
        if not isinstance(value, types.ModuleType) or _is_library(value.__name__):
            return self.value(value, depth)
        space = vars(value)
        return _sha("module", value.__name__, *(_sha(n, self.value(space[n], depth)) for n in sorted(names) if n in space))

    def _code(self, code, names: set, depth: int) -> str:
        names.update(code.co_names)
        consts = [self._code(c, names, depth) if isinstance(c, types.CodeType) else self.value(c, depth)
                  for c in code.co_consts]
        return _sha("code", code.co_code.hex(), _sha(*consts), repr(code.co_names), repr(code.co_varnames),
                    repr(code.co_freevars), repr(code.co_cellvars), str(code.co_firstlineno),
                    getattr(code, "co_exceptiontable", b"").hex())

    def _class(self, cls: type, depth: int) -> str:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if _is_library(cls.__module__) or not cls.__flags__ & _HEAPTYPE:
            return _sha("class", name)
        body = [_sha(k, self.value(v, depth)) for k, v in sorted(vars(cls).items()) if k not in _CLASS_SKIP]
        return _sha("class", name, *(self.value(b, depth) for b in cls.__bases__), *body)

    def _object(self, obj, *, public: bool, depth: int = 0) -> str:
        cls = type(obj)
        if not all(b is object or b.__flags__ & _HEAPTYPE and b.__module__ != "pybind11_builtins" for b in cls.__mro__):
            return self._unknown(obj, "an object of a compiled class")
        state = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        for klass in cls.__mro__:
            slots = vars(klass).get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
        if public and not isinstance(obj, nn.Module):
            state = {k: v for k, v in state.items() if not k.startswith("_")}
        return _sha("object", self._class(cls, depth), self.value(state, depth))


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True
