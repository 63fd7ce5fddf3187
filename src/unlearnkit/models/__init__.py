"""The model zoo: every model is an :class:`UnlearnableModel` with an explicit objective."""

from __future__ import annotations

from unlearnkit.errors import ModelError
from unlearnkit.models.base import UnlearnableModel
from unlearnkit.models.cnn import SmallCNN
from unlearnkit.models.ensemble import ShardedEnsemble
from unlearnkit.models.linear import LogisticRegression
from unlearnkit.models.lstm import CharLSTM, char_log_perplexity
from unlearnkit.models.mlp import MLP
from unlearnkit.models.rescnn import ResCNN
from unlearnkit.models.resnet import ResNet18
from unlearnkit.models.vit import SmallViT
from unlearnkit.models.wrap import WrappedModel, wrap

IMAGE_KINDS = ("cnn", "resnet18", "rescnn", "vit")
"""Kinds whose input is an image ``(C, H, W)``; :func:`for_data` reads the shape from the data."""

MODELS: dict[str, type[UnlearnableModel]] = {cls.kind: cls for cls in (LogisticRegression, MLP, SmallCNN, ResNet18, ResCNN, SmallViT, ShardedEnsemble, CharLSTM)}


def build(kind: str, **config) -> UnlearnableModel:
    """Build a model by kind (``logreg``, ``mlp``, ``cnn``, ``resnet18``, ``rescnn``, ``vit``, ``char-lstm``) from its constructor arguments."""
    try:
        cls = MODELS[kind]
    except KeyError:
        raise ModelError(f"Unknown model kind {kind!r}; valid: {sorted(MODELS)}.") from None
    try:
        return cls(**config)
    except TypeError as exc:
        raise ModelError(f"Bad configuration for {kind!r}: {exc}. Valid keys: {cls.config_keys}.") from None


def for_data(kind: str, data, **config) -> UnlearnableModel:
    """Build a model of ``kind`` sized for ``data`` (input shape and number of classes).

    For ``char-lstm`` (data from :func:`unlearnkit.data.char_windows`) the vocabulary is
    ``data.n_classes`` and the window ``data.n_features``.
    """
    if kind == CharLSTM.kind:
        config.setdefault("vocab_size", data.n_classes)
        config.setdefault("window", data.n_features)
        return build(kind, **config)
    config.setdefault("n_classes", data.n_classes)
    if kind in IMAGE_KINDS:
        shape = data.feature_shape
        if len(shape) != 3:
            raise ModelError(f"The {kind} model needs image data of shape (C, H, W); {data.name} has {shape}.")
        config.update(in_channels=shape[0], height=shape[1], width=shape[2])
    else:
        config.setdefault("n_features", data.n_features)
    return build(kind, **config)


__all__ = ["MODELS", "MLP", "CharLSTM", "LogisticRegression", "ResCNN", "ResNet18", "ShardedEnsemble", "SmallCNN", "SmallViT", "UnlearnableModel", "build", "char_log_perplexity", "for_data", "WrappedModel", "wrap"]
