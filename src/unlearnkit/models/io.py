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
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import torch

from unlearnkit.atomic import atomic_write
from unlearnkit.errors import ModelError
from unlearnkit.models import MODELS, UnlearnableModel, build

FORMAT = "unlearnkit.model/1"

#: Largest integer a model config may hold (sizes, counts, seeds): a signed 64-bit integer.
_MAX_CONFIG_INT = 2**63 - 1


def save_model(model: UnlearnableModel, path: str | Path, *, metadata: dict | None = None, user_path: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (a crash leaves any old file intact).

    The target is checked by :func:`unlearnkit.atomic.check_target`: a folder, a symbolic
    link, a device or FIFO is refused (:class:`~unlearnkit.errors.OutputError`), and so is,
    with ``user_path=True`` (what the command line passes for ``--out``), any path inside a
    ledger folder.
    """
    payload = model_payload(model, metadata=metadata)
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp), user_path=user_path)


def model_payload(model: UnlearnableModel, *, metadata: dict | None = None) -> dict:
    """The plain dict a model file holds: kind, configs, weights on the CPU, metadata."""
    from unlearnkit.training import TrainConfig

    train_config = getattr(model, "train_config", None)
    return {
        "format": FORMAT,
        "kind": model.kind,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()},
        "train_config": train_config.to_dict() if isinstance(train_config, TrainConfig) else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def load_model(path: str | Path, *, device=None) -> UnlearnableModel:
    """Read a model written by :func:`save_model`; refuses anything else with a clear error."""
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
    return model_from_payload(payload, str(path), device=device)


def model_from_payload(payload, where: str, *, device=None) -> UnlearnableModel:
    """Rebuild a model from :func:`model_payload`'s dict; ``where`` names its origin in errors."""
    from unlearnkit.training import TrainConfig

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{where} is not an unlearnkit model file (expected format {FORMAT!r}).")
    kind = payload.get("kind")
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


def _check_model_file(path: Path) -> None:
    """Refuse anything but a regular zip file whose entries are stored uncompressed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"Model file not found: {path}.") from None
    except OSError as exc:
        raise ModelError(f"Model file {path} cannot be read: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"Model file not found: {path} is a folder; give the path of a model file.")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"Model file {path} is not a regular file (a device, FIFO or socket); give a model file.")
    unreadable = (
        f"{path} is not a readable unlearnkit model file: it is not a PyTorch zip file as torch.save writes it, "
        "or it is truncated. Save models with unlearnkit.save_model or `unlearnkit train`."
    )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ModelError(unreadable) from None
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise ModelError(
            f"{path} is not a readable unlearnkit model file: entries {compressed[:3]} are compressed, which "
            "torch.save never does (a compressed entry can inflate to far more memory than the file's size). "
            "Save models with unlearnkit.save_model."
        )
    declared = sum(i.file_size for i in infos)
    if declared > st.st_size:
        raise ModelError(
            f"{path} is not a readable unlearnkit model file: its entries declare {declared} bytes but the file "
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
