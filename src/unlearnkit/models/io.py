"""Model files: architecture config, training config and weights, loaded safely.

A model file is a ``torch.save``'d dict of plain values and tensors, read back with
``torch.load(..., weights_only=True)`` so that a file from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unlearnkit.atomic import atomic_write
from unlearnkit.errors import ModelError
from unlearnkit.models import MODELS, UnlearnableModel, build

FORMAT = "unlearnkit.model/1"


def save_model(model: UnlearnableModel, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (a crash leaves any old file intact)."""
    payload = model_payload(model, metadata=metadata)
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


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
    if not path.is_file():
        raise ModelError(f"Model file not found: {path}.")
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
        model = build(kind, **config)
        state = payload["state_dict"]
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
