"""Model files: architecture config, training config and weights, loaded safely.

A model file is a ``torch.save``'d dict of plain values and tensors, read back with
``torch.load(..., weights_only=True)`` so that a file from elsewhere cannot run code.

Before anything is allocated, a file is checked the cheap way: it must be a regular file in
the zip format ``torch.save`` writes, with every entry stored uncompressed (so the tensors
can never take more memory than the file has bytes: a compressed entry that would inflate to
gigabytes is refused), and the architecture its config describes is first built on PyTorch's
``meta`` device (shapes only, no memory) and compared, tensor by tensor, with the weights in
the file. A config that claims a model larger than its weights is refused before the model is
built for real.

**Wrapped user modules** (:func:`unlearnkit.wrap`) are saved in the same format: the module's
``state_dict`` plus a config with the wrap options (``n_classes``, ``l2``, ``input_shape``,
``head``, ``blocks``, ``first_layer``), the module's type and the factory path it was built with
(if known). The architecture itself is code, not data, so loading one needs it from the user:
``load_model(path, factory="pkg.mod:fn")`` or ``load_model(path, module=my_module)``. The same
two arguments load a plain PyTorch weights file, ``torch.save(module.state_dict(), path)``,
through the same checks. A custom loss callable is not saved (only the fact that there was one);
make the factory return ``uk.wrap(module, loss=...)`` to get it back.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import stat
import zipfile
from pathlib import Path

import torch

from unlearnkit.atomic import atomic_write
from unlearnkit.errors import ModelError
from unlearnkit.models import MODELS, UnlearnableModel, build

log = logging.getLogger(__name__)

FORMAT = "unlearnkit.model/1"
FORMAT_PREPROCESS = "unlearnkit.model/2"
"""The format of a model file whose metadata stores preprocessing (key ``"preprocess"``: scaling, class names, CSV
columns). An older unlearnkit would ignore it and feed the model unscaled data; it refuses this format instead.
Files without preprocessing keep :data:`FORMAT` and stay readable by older versions."""
_FORMATS = (FORMAT, FORMAT_PREPROCESS)
WRAPPED = "wrapped"
"""The kind of a wrapped user module (:class:`~unlearnkit.models.wrap.WrappedModel`) in a model file."""

#: Largest integer a model config may hold (sizes, counts, seeds): a signed 64-bit integer.
_MAX_CONFIG_INT = 2**63 - 1


def save_model(model: UnlearnableModel, path: str | Path, *, metadata: dict | None = None, user_path: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (a crash leaves any old file intact).

    The target is checked by :func:`unlearnkit.atomic.check_target`: a folder, a symbolic
    link, a device or FIFO is refused (:class:`~unlearnkit.errors.OutputError`), and so is,
    with ``user_path=True`` (what the command line passes for ``--out``), any path inside a
    ledger folder.

    A wrapped user module is written as its ``state_dict`` and a config (wrap options, module
    type, factory path if known); a custom loss callable is not saved (see the module docstring).
    """
    payload = model_payload(model, metadata=metadata)
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp), user_path=user_path)


def model_payload(model: UnlearnableModel, *, metadata: dict | None = None) -> dict:
    """The plain dict a model file holds: kind, configs, weights on the CPU, metadata."""
    from unlearnkit.training import TrainConfig

    train_config = getattr(model, "train_config", None)
    config = model.config
    if model.kind == WRAPPED:
        from unlearnkit.models.factory import wrap_options

        config = {**wrap_options(model), "module_type": model.module_type, "factory": getattr(model, "factory", None),
                  "custom_loss": bool(model.custom_loss)}
        if model.custom_loss:
            log.info("The custom loss of the wrapped %s is not saved; a factory that returns uk.wrap(module, loss=...) "
                     "restores it when the file is loaded.", model.module_type)
    return {
        "format": FORMAT_PREPROCESS if (metadata or {}).get("preprocess") else FORMAT,
        "kind": model.kind,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "train_config": train_config.to_dict() if isinstance(train_config, TrainConfig) else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def load_model(
    path: str | Path, *, device=None, factory: str | None = None, module=None, factory_path: str | Path | None = None,
    factory_args: dict | None = None,
) -> UnlearnableModel:
    """Read a model written by :func:`save_model`; refuses anything else with a clear error.

    A zoo model loads from the file alone. A wrapped user module needs its architecture from the
    caller, in one of two ways:

    * ``factory="pkg.mod:fn"``: the function that builds the module (see
      :mod:`unlearnkit.models.factory`; ``factory_path`` a folder to import it from,
      ``factory_args`` keyword arguments for it);
    * ``module=``: an ``nn.Module`` of the architecture (or a model made by ``uk.wrap``). It is
      **not modified**: the weights are loaded into a deep copy.

    With either, ``path`` may also be a plain PyTorch weights file,
    ``torch.save(module.state_dict(), path)``. Every file passes the same safety checks (a
    regular, uncompressed ``torch.save`` zip file read with ``weights_only=True``), and the
    weights are compared with the built module tensor by tensor (names, shapes, dtypes) before
    anything is loaded: a file that does not match raises :class:`~unlearnkit.errors.ModelError`
    listing the first mismatches. The wrap options recorded in the file (``n_classes``, ``l2``,
    ``input_shape``, ``head``, ``blocks``, ``first_layer``) must agree with those of a wrapped
    model the factory returns; a plain module is wrapped with them (with ``uk.wrap``'s defaults
    for a plain weights file, which records none). With an ``input_shape`` recorded, the loaded
    module is then checked, in evaluation mode, on one example of that shape. A module on the
    ``meta`` device or spread over several devices is refused, and so is a ``module=`` that
    ``copy.deepcopy`` cannot copy (give ``factory=`` instead). A file saved with a custom loss needs a
    factory (or ``module=``) that gives the loss again: the callable itself is never saved.
    """
    path = Path(path)
    _check_model_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects
        raise ModelError(
            f"{path} is not a readable unlearnkit model file ({type(exc).__name__}): it is not a PyTorch file, "
            "it is truncated, or it holds objects other than tensors and plain values, which are refused "
            "for safety. Save models with unlearnkit.save_model or `unlearnkit train`."
        ) from None
    return model_from_payload(payload, str(path), device=device, factory=factory, module=module,
                              factory_path=factory_path, factory_args=factory_args)


def read_metadata(path: str | Path) -> dict:
    """The metadata a model file records (what ``unlearnkit train`` stored: the data source, its fingerprint,
    its preprocessing), read with the same safety checks as :func:`load_model` but without building the model, so
    it works for a wrapped user module without its factory too. A plain weights file has none: ``{}``."""
    path = Path(path)
    _check_model_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable unlearnkit model file ({type(exc).__name__}).") from None
    if _is_state_dict(payload):
        return {}
    if not isinstance(payload, dict) or payload.get("format") not in _FORMATS:
        raise ModelError(_format_problem(path, payload))
    metadata = payload.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: malformed unlearnkit model file (metadata is not a dict).")
    return dict(metadata)


def _format_problem(where, payload) -> str:
    """Why ``payload`` is refused: a newer unlearnkit's file (format ``unlearnkit.model/N``), or not a model file."""
    found = payload.get("format") if isinstance(payload, dict) else None
    prefix = FORMAT.rsplit("/", 1)[0] + "/"
    if isinstance(found, str) and found.startswith(prefix) and found[len(prefix):].isdigit():
        return (f"{where} was written by a newer version of unlearnkit (model format {found!r}; this version reads "
                f"{', '.join(repr(f) for f in _FORMATS)}); upgrade unlearnkit to load it.")
    return f"{where} is not an unlearnkit model file (expected format {FORMAT!r})."


def model_from_payload(
    payload, where: str, *, device=None, factory: str | None = None, module=None, factory_path: str | Path | None = None,
    factory_args: dict | None = None,
) -> UnlearnableModel:
    """Rebuild a model from :func:`model_payload`'s dict; ``where`` names its origin in errors.

    ``factory``/``module`` (and ``factory_path``, ``factory_args``) as in :func:`load_model`.
    """
    from unlearnkit.training import TrainConfig

    if factory is not None or module is not None:
        return _user_model(payload, where, device=device, factory=factory, module=module, factory_path=factory_path,
                           factory_args=factory_args)
    if _is_state_dict(payload):
        raise ModelError(f"{where} is not an unlearnkit model file (expected format {FORMAT!r}): it is a plain PyTorch "
                         "weights file (a state_dict), which holds no architecture. "
                         "Load it with the code that builds the module: load_model(path, factory='pkg.mod:fn') or "
                         "load_model(path, module=my_module) (command line: --factory pkg.mod:fn --weights FILE).")
    if not isinstance(payload, dict) or payload.get("format") not in _FORMATS:
        raise ModelError(_format_problem(where, payload))
    kind = payload.get("kind")
    if kind == WRAPPED:
        recorded = payload.get("config", {}).get("factory") if isinstance(payload.get("config"), dict) else None
        named = f" (it was built by the factory {recorded[:200]!r})" if isinstance(recorded, str) else ""
        raise ModelError(f"{where} holds a wrapped user module{named}, whose architecture is code, not data: "
                         "pass the code that builds it, load_model(path, factory='pkg.mod:fn') or "
                         "load_model(path, module=my_module) (command line: --factory pkg.mod:fn --weights FILE).")
    if not isinstance(kind, str) or kind not in MODELS:
        raise ModelError(f"{where}: unknown model kind {kind!r}; valid: {sorted(MODELS)}.")
    try:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()}
        state = payload["state_dict"]
        _check_against_config(kind, config, state, where)
        model = build(kind, **config)
        dtype = next(iter(state.values())).dtype if state else torch.float32
        model = model.to(dtype=dtype)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"{where}: weights do not match the {kind} architecture: {str(exc).splitlines()[0]}") from None
        if payload.get("train_config") is not None:
            model.train_config = TrainConfig.from_dict(payload["train_config"])
        model.metadata = dict(payload.get("metadata") or {})
    except ModelError:
        raise
    except Exception as exc:  # missing or malformed fields in a file that claims the format
        raise ModelError(
            f"{where}: malformed unlearnkit model file ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})."
        ) from None
    model.eval()
    return model.to(device) if device is not None else model


def _is_state_dict(payload) -> bool:
    """Whether ``payload`` is a plain ``state_dict``: a non-empty mapping of names to tensors."""
    return (isinstance(payload, dict) and bool(payload) and "format" not in payload
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()))


_MAX_DIMS = 16
_MAX_EXAMPLE_SIZE = 2**24
"""Largest example (values) a wrapped model file's input_shape may describe (16.7 million, e.g. 3 x 2048 x 2048): the
loaded module is probed on one example of that shape."""

_MAX_NAME = 200
"""Longest name (module type, factory path, adapter view) a wrapped model file's config may hold."""

_WRAPPED_CONFIG = ("n_classes", "l2", "input_shape", "head", "blocks", "first_layer", "module_type", "factory", "custom_loss")


def _wrapped_config(config, n_tensors: int, where: str) -> dict:
    """The config of a wrapped model file, its values checked (types and ranges) before use."""
    bad = f"{where}: malformed unlearnkit model file"
    if not isinstance(config, dict):
        raise ModelError(f"{bad} (its config is not a table).")
    unknown = sorted(set(config) - set(_WRAPPED_CONFIG))
    if unknown:
        raise ModelError(f"{bad} (unknown config keys {unknown[:5]} for a wrapped module).")
    _check_config_values(config, max(n_tensors, _MAX_DIMS), where)  # a one-layer module may take a 3-d input
    n_classes, l2 = config.get("n_classes"), config.get("l2", 0.0)
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
        raise ModelError(f"{bad} (config.n_classes = {n_classes!r}, expected an integer >= 2).")
    if not isinstance(l2, (int, float)) or isinstance(l2, bool) or not math.isfinite(l2) or l2 < 0:
        raise ModelError(f"{bad} (config.l2 = {l2!r}, expected a finite number >= 0).")
    shape = config.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape
                                  and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise ModelError(f"{bad} (config.input_shape = {shape!r}, expected a list of positive sizes).")
    if shape is not None and (len(shape) > _MAX_DIMS or math.prod(shape) > _MAX_EXAMPLE_SIZE):
        raise ModelError(f"{where}: config.input_shape = {shape} describes an example of more than "
                         f"{_MAX_EXAMPLE_SIZE:,} values (or {_MAX_DIMS} axes); the file is corrupt or crafted.")
    for key in ("head", "first_layer", "module_type", "factory"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ModelError(f"{bad} (config.{key} must be a string).")
    blocks = config.get("blocks")
    if blocks is not None and not isinstance(blocks, str) and not (
            isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)):
        raise ModelError(f"{bad} (config.blocks must be a name or a list of names).")
    names = [(key, config.get(key)) for key in ("head", "first_layer", "module_type", "factory")]
    names += [("blocks", b) for b in ([blocks] if isinstance(blocks, str) else blocks or [])]
    for key, value in names:
        if isinstance(value, str) and len(value) > _MAX_NAME:
            raise ModelError(f"{bad} (config.{key} is {len(value):,} characters long, more than the {_MAX_NAME} a "
                             "name may have; the file is corrupt or crafted).")
    return {**config, "l2": float(l2), "input_shape": None if shape is None else tuple(shape)}


def _user_model(payload, where: str, *, device, factory, module, factory_path, factory_args) -> UnlearnableModel:
    """A model whose architecture the caller gives (factory or module), with the weights of ``payload``."""
    from torch import nn

    from unlearnkit.models.factory import call_factory, check_options
    from unlearnkit.models.wrap import WrappedModel, check_placement, uncopyable, wrap
    from unlearnkit.training import TrainConfig

    if factory is not None and module is not None:
        raise ModelError("Give the architecture once: factory= or module=, not both.")
    if module is not None and not isinstance(module, nn.Module):
        raise ModelError(f"module= must be a torch.nn.Module of the saved architecture, got {type(module).__name__}.")
    source = f"the factory {factory!r}" if factory is not None else f"the module given ({type(module).__name__})"
    if _is_state_dict(payload):
        plain, config, state, extra = True, {}, payload, {}
    elif isinstance(payload, dict) and payload.get("format") in _FORMATS:
        kind = payload.get("kind")
        if kind != WRAPPED:
            raise ModelError(f"{where} holds a {kind!r} model of the unlearnkit zoo, which loads from the file alone; "
                             "leave out factory=/module= (and --factory on the command line).")
        state = payload.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise ModelError(f"{where}: malformed unlearnkit model file (state_dict is not a dict of tensors).")
        plain, config = False, _wrapped_config(payload.get("config"), len(state), where)
        extra = payload
    else:
        raise ModelError(f"{where} is neither an unlearnkit model file nor a PyTorch state_dict (a dict of named "
                         "tensors, as torch.save(module.state_dict(), path) writes).")
    if factory is not None:
        built = call_factory(factory, search_path=factory_path, args=factory_args)
    else:
        given = module.module if isinstance(module, WrappedModel) else module
        check_placement(given, f"The module given ({type(module).__name__})")
        try:
            built = copy.deepcopy(module)  # the weights go into a copy: the caller's module is never modified
        except ModelError as exc:
            raise ModelError(f"{exc} To load a file, pass factory='pkg.mod:fn' (the function that builds the module) "
                             "instead of module=.") from None
        except Exception as exc:  # TypeError: cannot pickle '_thread.lock' object, and the like
            raise ModelError(f"{uncopyable(given, exc)} To load a file, pass factory='pkg.mod:fn' (the function that "
                             "builds the module) instead of module=.") from None
    if isinstance(built, WrappedModel):  # a plain module is checked by wrap() below
        check_placement(built.module, f"The module {source} gives")
    options = {k: config.get(k) for k in ("n_classes", "l2", "input_shape", "head", "blocks", "first_layer")}
    if isinstance(built, WrappedModel):
        model = built
        check_options(model, options, source)
    elif isinstance(built, UnlearnableModel):
        if not plain:
            raise ModelError(f"{where} holds a wrapped user module, but {source} gives a {built.kind!r} zoo model; "
                             "give the code that builds the module the file was saved from.")
        model = built
    else:
        # the file's input_shape is set after wrapping: the module is probed once its weights are loaded (below)
        try:
            model = wrap(built, **{k: v for k, v in options.items() if v is not None and k != "input_shape"})
        except ModelError as exc:
            raise ModelError(f"{where} with {source}: {exc}") from None
        if options["input_shape"] is not None:
            model._input_shape = tuple(options["input_shape"])
    if not plain and isinstance(model, WrappedModel):
        if config.get("custom_loss") and not model.custom_loss:
            raise ModelError(f"{where} was saved from a model with a custom loss, which a model file cannot hold; make "
                             "the factory return uk.wrap(module, loss=your_loss, ...) (or pass module= such a model).")
        if not config.get("custom_loss", False) and model.custom_loss:
            raise ModelError(f"{where} was saved with the cross-entropy loss, but {source} gives a custom loss; the "
                             "objective would differ from the one the weights were trained with.")
        recorded = config.get("module_type")
        if recorded and recorded != model.module_type:
            log.warning("%s was saved from a %s; %s builds a %s (the weights match tensor by tensor).",
                        where, recorded, source, model.module_type)
    target = model.module if plain and isinstance(model, WrappedModel) else model
    built_by = f"the module {source} builds" if factory is not None else f"the module given ({type(module).__name__})"
    _check_weights(target.state_dict(), state, where, built_by)
    target.load_state_dict(state, strict=True)
    if isinstance(model, WrappedModel):
        recorded_factory = config.get("factory")
        if factory is not None or recorded_factory is not None:
            model.factory = factory if factory is not None else recorded_factory
    try:
        if extra.get("train_config") is not None:
            model.train_config = TrainConfig.from_dict(extra["train_config"])
        model.metadata = dict(extra.get("metadata") or {})
    except Exception as exc:
        raise ModelError(f"{where}: malformed unlearnkit model file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}).") from None
    model.eval()
    if isinstance(model, WrappedModel) and model.input_shape is not None and not model._checked:
        try:
            _probe_one(model)
        except ModelError as exc:
            raise ModelError(f"{where} with {source}: {exc}") from None
    return model.to(device) if device is not None else model


def _probe_one(model) -> None:
    """Check a loaded wrapped model (in evaluation mode) on one seeded example of its input shape: it must return
    finite ``(1, n_classes)`` logits and the loss one finite value (a file whose n_classes or input_shape does not
    fit the module is refused here, before any use)."""
    from unlearnkit.models.wrap import _dtype, _device, check_logits, check_loss, probe_logits

    module = model.module
    X = torch.rand((1, *model.input_shape), generator=torch.Generator(device="cpu").manual_seed(0), dtype=_dtype(module))
    logits = probe_logits(module, X.to(_device(module)))
    check_logits(logits, 1, model.n_classes, model.module_type)
    check_loss(model, logits, torch.zeros(1, dtype=torch.long, device=logits.device))
    model._checked = True


def _check_weights(expected: dict, state: dict, where: str, source: str, limit: int = 5) -> None:
    """ModelError listing the first mismatches (shapes, dtypes, then missing and unexpected names) between a
    built module's state and a file's; ``source`` names the module (e.g. "the module the factory 'm:f' builds")."""
    problems = []
    for name, tensor in expected.items():
        if name in state:
            got = state[name]
            if tuple(got.shape) != tuple(tensor.shape):
                problems.append(f"{name!r} has shape {tuple(got.shape)} in the file, {tuple(tensor.shape)} in the module")
            elif got.dtype != tensor.dtype:
                problems.append(f"{name!r} is {got.dtype} in the file, {tensor.dtype} in the module")
    problems += [f"missing {name!r}" for name in expected if name not in state]
    problems += [f"unexpected {name!r}" for name in state if name not in expected]
    if problems:
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        raise ModelError(f"{where}: the weights do not match {source}: {'; '.join(problems[:limit])}{more}. Build "
                         "the architecture (sizes, dtype) the weights were saved from, or give the weights file of "
                         "this architecture.")


def _check_model_file(path: Path, what: str = "model file") -> None:
    """Refuse anything but a regular zip file whose entries are stored uncompressed (``what`` names the file in
    the messages: ``"model file"``, ``"curvature file"``)."""
    save = {"model file": "Save models with unlearnkit.save_model",
            "curvature file": "Write curvature files with Curvature.save"}.get(what, f"Write {what}s with unlearnkit")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{what.capitalize()} not found: {path}.") from None
    except OSError as exc:
        raise ModelError(f"{what.capitalize()} {path} cannot be read: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"{what.capitalize()} not found: {path} is a folder; give the path of a {what}.")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{what.capitalize()} {path} is not a regular file (a device, FIFO or socket); give a {what}.")
    unreadable = (
        f"{path} is not a readable unlearnkit {what}: it is not a PyTorch zip file as torch.save writes it, "
        f"or it is truncated. {save}{' or `unlearnkit train`' if what == 'model file' else ''}."
    )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ModelError(unreadable) from None
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise ModelError(
            f"{path} is not a readable unlearnkit {what}: entries {compressed[:3]} are compressed, which "
            "torch.save never does (a compressed entry can inflate to far more memory than the file's size). "
            f"{save}."
        )
    declared = sum(i.file_size for i in infos)
    if declared > st.st_size:
        raise ModelError(
            f"{path} is not a readable unlearnkit {what}: its entries declare {declared} bytes but the file "
            f"has {st.st_size}; it is truncated or crafted."
        )


def _check_against_config(kind: str, config: dict, state, where: str) -> None:
    """Build the architecture on the ``meta`` device and compare it with the file's weights.

    Costs no memory for the weights, so a config that claims a huge model is refused before
    the model is built for real; the real model then has exactly the size of the weights in
    the file.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{where}: malformed unlearnkit model file (state_dict is not a dict of tensors).")
    _check_config_values(config, len(state), where)
    cls = MODELS[kind]
    if kind == "sisa":
        shards = config.get("n_shards", 5)
        if isinstance(shards, int) and not isinstance(shards, bool) and shards > len(state):
            raise ModelError(f"{where}: the config claims {shards} shards but the file holds only {len(state)} tensors.")
    with torch.device("meta"):
        skeleton = build(kind, **config)
    expected = {k: v.shape for k, v in skeleton.state_dict().items()}
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ModelError(
            f"{where}: weights do not match the {cls.kind} architecture its config describes: "
            f"missing {missing[:5]}, unexpected {extra[:5]}."
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ModelError(
                f"{where}: weights do not match the {cls.kind} architecture its config describes: {name} has shape "
                f"{tuple(state[name].shape)} in the file, the config implies {tuple(shape)}."
            )


def _check_config_values(value, n_tensors: int, where: str, key: str = "config") -> None:
    """Config values must be plain, bounded values; a list may not be longer than the file's tensor count."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_config_values(v, n_tensors, where, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        if len(value) > n_tensors:
            raise ModelError(f"{where}: {key} lists {len(value)} values, more than the {n_tensors} tensors in the file.")
        for v in value:
            _check_config_values(v, n_tensors, where, key)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_CONFIG_INT:
        raise ModelError(f"{where}: {key} = {value} is beyond the 64-bit integer range; the file is corrupt or crafted.")
