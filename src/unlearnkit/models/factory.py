"""A user's model by name: a factory path ``package.module:function``.

A *factory* is a function in the user's code that builds their network, named by a string such
as ``"mypkg.nets:make_resnet"`` (the attribute part may be dotted, ``"mypkg.nets:ResNet.small"``).
Because the name is a string, it travels anywhere a configuration travels (a worker process, a
Ray node) and is resolved where the model is built; the module must be importable there.

The factory is called with the keyword arguments given (none by default) and returns either

* a plain ``torch.nn.Module`` classifier, which is then wrapped with
  :func:`unlearnkit.models.wrap` (``n_classes`` and ``input_shape`` taken from the data when data
  are given, other options from the caller), or
* an unlearnkit model: a :class:`~unlearnkit.models.wrap.WrappedModel` built by ``uk.wrap(...)``
  inside the factory (the way to give a custom per-sample loss, which cannot be saved in a model
  file) or any :class:`~unlearnkit.models.base.UnlearnableModel`, used as returned.

The names after the colon must be public (none may start with ``_``), and the module must import
without side effects: a module that exits when imported (a script that parses its command line
or runs ``main()``; keep that under ``if __name__ == "__main__":``) or a factory that calls
``sys.exit()`` is refused with an error, never a silent end of the program.

``search_path`` (``--factory-path DIR`` on the command line) names a folder that holds the
package when it is not installed. It is put at the front of ``sys.path`` for the import only and
removed again afterwards; the current directory is never added implicitly. Every failure (a path
that does not import, a missing attribute, something not callable, a factory that raises or
returns something other than a module) is a :class:`~unlearnkit.errors.ModelError` naming the
path, the cause and what to change.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.models.wrap import WrappedModel, wrap

FORM = "'package.module:function'"


def parse_factory(path: str) -> tuple[str, str]:
    """Split ``"package.module:function"`` into the module name and the (possibly dotted) attribute; ModelError if malformed."""
    if not isinstance(path, str):
        raise ModelError(f"A factory path must be a string of the form {FORM}, got {type(path).__name__}.")
    module_name, sep, attr = path.strip().partition(":")
    parts_ok = all(p.isidentifier() for p in module_name.split(".")) and all(p.isidentifier() for p in attr.split("."))
    if not sep or not module_name or not attr or ":" in attr or not parts_ok:
        raise ModelError(f"Factory path {path!r} is not of the form {FORM} (a Python module, a colon, then the name of "
                         "the function in it), e.g. 'mypkg.nets:make_net'.")
    private = [p for p in attr.split(".") if p.startswith("_")]
    if private:
        raise ModelError(f"Factory path {path!r} names the private attribute {private[0]!r}: a factory must be a public "
                         "function or class (no part of the name after the colon may start with '_'). Give it a public "
                         "name, e.g. 'mypkg.nets:make_net'.")
    return module_name, attr


def _code(exc: SystemExit) -> str:
    """The exit status of a ``SystemExit`` as the message names it (its text truncated)."""
    code = exc.code
    return "status 0" if code is None else f"status {code}" if isinstance(code, int) else repr(str(code)[:200])


def load_factory(path: str, *, search_path: str | Path | None = None) -> Callable[..., Any]:
    """Import the function a factory path names and return it (it is not called).

    ``search_path``: a folder put at the front of ``sys.path`` while the module is imported, and
    removed afterwards (``sys.path`` is left as it was found).
    """
    module_name, attr = parse_factory(path)
    with _on_path(search_path) as where:
        importlib.invalidate_caches()  # a module written after the last import of its folder is seen
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or module_name
            if missing == module_name or module_name.startswith(missing + "."):
                hint = ("Install the package that provides it, or give the folder that holds it "
                        "(factory_path= in Python, --factory-path DIR on the command line)"
                        + (f"; {where} was searched." if where else "."))
                raise ModelError(f"Factory {path!r} does not import: no module named {missing!r}. {hint}") from None
            raise ModelError(f"Factory {path!r} does not import: importing {module_name!r} needs the module "
                             f"{missing!r}, which is not installed. Install it where the model is built.") from None
        except SystemExit as exc:  # sys.exit() at import time: a script, not a module (KeyboardInterrupt passes)
            raise ModelError(f"Factory {path!r} does not import: importing {module_name!r} called exit ({_code(exc)}), "
                             "e.g. a script that parses its command line (argparse) or runs main() when imported. "
                             f"Put the factory in a module without side effects at import, or put the script's code "
                             "under `if __name__ == \"__main__\":`.") from None
        except Exception as exc:  # a syntax error or an exception raised at import time
            raise ModelError(f"Factory {path!r} does not import: importing {module_name!r} raised "
                             f"{type(exc).__name__}: {exc}. Fix the module so that it imports.") from None
    target: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(target, part):
            owner = module_name + "".join("." + p for p in attr.split(".")[:i])
            public = sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))
            listed = f"; callables it defines: {', '.join(public[:10])}" if public else ""
            raise ModelError(f"Factory {path!r}: {owner} has no attribute {part!r}{listed}. Name the function that "
                             f"builds your model, {FORM}.")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"Factory {path!r} names an object of type {type(target).__name__}, which is not callable; "
                         "name a function (or class) that returns your torch.nn.Module.")
    return target


@contextlib.contextmanager
def _on_path(search_path: str | Path | None):
    """``search_path`` (resolved) at the front of ``sys.path`` for the block, removed after; yields it (or None)."""
    if search_path is None:
        yield None
        return
    folder = Path(search_path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"Factory search path {search_path} is not a folder; give the folder that holds the "
                         "factory's package (the folder you would add to PYTHONPATH).")
    where = str(folder.resolve())
    added = where not in sys.path
    if added:
        sys.path.insert(0, where)
    try:
        yield where
    finally:
        if added:
            try:
                sys.path.remove(where)
            except ValueError:  # the imported code removed it itself
                pass


def call_factory(path: str, *, search_path: str | Path | None = None, args: dict | None = None) -> nn.Module:
    """Import the factory, call it with ``args`` as keyword arguments and check that it returned an ``nn.Module``.

    ``search_path`` stays on ``sys.path`` during the call too (a factory may import lazily), and is removed after.
    """
    if args is not None and not isinstance(args, dict):
        raise ModelError(f"Factory {path!r}: its arguments must be a table of keyword arguments, got {type(args).__name__}.")
    with _on_path(search_path):
        fn = load_factory(path, search_path=search_path)
        try:
            built = fn(**(args or {}))
        except SystemExit as exc:  # sys.exit() in the user's code would end the whole program silently
            raise ModelError(f"Factory {path!r} called exit ({_code(exc)}) instead of returning a module, e.g. it parses "
                             "the command line (argparse) or runs a script's main(). Make the factory only build and "
                             "return the module; keep script code in a module without side effects or under "
                             "`if __name__ == \"__main__\":`.") from None
        except Exception as exc:  # the user's code: any exception, named with the factory
            given = f" with {sorted(args)}" if args else " without arguments"
            raise ModelError(f"Factory {path!r} raised {type(exc).__name__}{given}: {exc}. Fix the factory, or pass "
                             "the keyword arguments it needs.") from None
    if not isinstance(built, nn.Module):
        raise ModelError(f"Factory {path!r} returned a {type(built).__name__}; it must return a torch.nn.Module "
                         "(your network) or an unlearnkit model (e.g. uk.wrap(module, ...)).")
    return built


def from_factory(
    path: str, data=None, *, search_path: str | Path | None = None, args: dict | None = None,
    n_classes: int | None = None, input_shape: Sequence[int] | None = None, l2: float | None = None,
    head: str | None = None, blocks: str | Sequence[str] | None = None, first_layer: str | None = None,
) -> UnlearnableModel:
    """Build the model a factory path names, as an unlearnkit model.

    A plain ``nn.Module`` from the factory is wrapped with :func:`~unlearnkit.models.wrap`:
    ``n_classes`` and ``input_shape`` default to those of ``data`` (an unlearnkit
    :class:`~unlearnkit.data.Dataset`) when given, ``l2`` to 0, the adapter views to the ones
    found automatically. An unlearnkit model from the factory is used as returned; wrap options
    given here must then agree with it (a disagreement is a ModelError, never silently resolved),
    and its number of outputs must cover the data's classes. The model records the factory path
    (``model.factory``), which :func:`unlearnkit.save_model` writes into the model file.
    """
    built = call_factory(path, search_path=search_path, args=args)
    options = {"n_classes": n_classes, "input_shape": None if input_shape is None else tuple(int(s) for s in input_shape),
               "l2": l2, "head": head, "blocks": blocks, "first_layer": first_layer}
    if isinstance(built, UnlearnableModel):
        model = built
        if isinstance(model, WrappedModel):
            check_options(model, options, f"factory {path!r}")
        else:
            for key in ("n_classes", "l2"):
                if options[key] is not None and getattr(model, key) != options[key]:
                    raise ModelError(f"Factory {path!r} returned a {model.kind} model with {key}={getattr(model, key)!r}, "
                                     f"but {key}={options[key]!r} was asked for; make the two agree.")
        if data is not None and data.n_classes > model.n_classes:
            raise ModelError(f"Factory {path!r} returned a model with {model.n_classes} outputs, but {data.name} has "
                             f"{data.n_classes} classes; build the model for the data's classes.")
    else:
        if data is not None:
            options["n_classes"] = options["n_classes"] or data.n_classes
            options["input_shape"] = options["input_shape"] or tuple(data.feature_shape)
        try:
            model = wrap(built, **{k: v for k, v in options.items() if v is not None})
        except ModelError as exc:
            raise ModelError(f"Factory {path!r}: {exc}") from None
    if isinstance(model, WrappedModel):
        model.factory = path
    return model


def wrap_options(model: WrappedModel) -> dict:
    """The wrap options a model file records: the adapter names, ``l2``, ``input_shape`` and ``n_classes``."""
    names = model._names
    blocks = names["blocks"]
    return {"n_classes": model.n_classes, "l2": model.l2, "input_shape": model.input_shape,
            "head": names["head"], "blocks": blocks if blocks is None or isinstance(blocks, str) else list(blocks),
            "first_layer": names["first_layer"]}


def check_options(model: WrappedModel, options: dict, what: str) -> None:
    """Reconcile the wrap options given (not None) with a wrapped model's own, in place.

    ``n_classes`` and ``l2`` must be equal. An option the model leaves open (no ``input_shape``
    yet, an adapter view found automatically) takes the given value; two different explicit
    values are a ModelError, never silently resolved.
    """
    own = wrap_options(model)
    norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)
    for key, want in options.items():
        if want is None:
            continue
        have = own.get(key)
        if have is None and key in ("input_shape", "head", "blocks", "first_layer"):
            if key == "input_shape":
                model._input_shape = tuple(int(s) for s in want)
            else:
                model._names[key] = want
            continue
        if norm(have) != norm(want):
            raise ModelError(f"{what} gives a wrapped model with {key}={have!r}, but {key}={want!r} is required; make "
                             f"the factory build it with {key}={want!r} (or return the plain nn.Module and let "
                             "unlearnkit wrap it).")


__all__ = ["call_factory", "from_factory", "load_factory", "parse_factory"]
