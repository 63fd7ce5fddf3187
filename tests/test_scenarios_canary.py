"""The canary scenario's second model: a causal character transformer brought as a plain ``torch.nn`` module.

At the ``tiny`` size: the transformer problem is built through :func:`unlearnkit.wrap` and trained by the
library's loop on the LSTM's windows, its original model memorises the secret more than the model retrained
without it, and a closed-form update (the second-order update with a cached K-FAC curvature) lowers the
exposure from the original's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit import methods
from unlearnkit.models.char_transformer import CharTransformer
from unlearnkit.models.wrap import WrappedModel
from unlearnkit.scenarios import canary


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return canary.problems(canary.SIZES["tiny"], 0, "cpu")


@pytest.fixture(scope="module")
def transformer(tiny):
    (problem,) = [p for p in tiny if p.name.startswith("transformer")]
    return problem


def exposure(problem, model) -> float:
    return problem.efficacy(model)["exposure"]


def test_transformer_problem_is_a_wrapped_torch_module(tiny, transformer):
    lstm = tiny[0]
    model = transformer.model
    assert isinstance(model, WrappedModel) and isinstance(model.module, CharTransformer)
    assert model.train_config is not None and model.train_config.epochs == canary.SIZES["tiny"].transformer.epochs
    assert transformer.sisa is None  # a sharded ensemble is built by model kind; a wrapped module has none
    # the same (window -> next character) rows, change and held-out text as the LSTM
    assert transformer.train is lstm.train and transformer.changes is lstm.changes and transformer.test is lstm.test
    assert model.input_shape == (canary.SIZES["tiny"].window,)
    # the adapter's views are found in the plain module: embedding, the blocks, the output layer
    assert model.first_layer() is model.module.embedding and model.head() is model.module.output
    assert model.blocks() == list(model.module.blocks)
    bits = transformer.efficacy(model)["bits_per_char"]
    assert np.isfinite(bits) and 0 < bits < np.log2(model.n_classes)  # better than a uniform guess on held-out text


def test_transformer_memorises_the_secret_more_than_retraining(transformer):
    top = canary.SIZES["tiny"].digits * np.log2(10.0)
    retrained = uk.retrain(transformer.model, transformer.train, transformer.changes)
    assert isinstance(retrained, WrappedModel) and isinstance(retrained.module, CharTransformer)
    original, reference = exposure(transformer, transformer.model), exposure(transformer, retrained)
    assert original > top - 1.0  # the secret is (close to) the model's first guess among 10^4
    assert original > reference + 5.0


def test_closed_form_update_lowers_the_transformers_exposure(transformer):
    model = transformer.model
    curvature = uk.curvature.fit(model, transformer.train, kind="kfac", device="cpu")
    res = methods.make("second-order", guard=False, curvature=curvature).unlearn(
        model, transformer.train, transformer.changes, val=transformer.val, device="cpu")
    assert isinstance(res.model, WrappedModel)
    before, after = exposure(transformer, model), exposure(transformer, res.model)
    assert after < before - 5.0


def test_keep_trains_only_the_problems_asked_for_and_the_same_model(tiny, transformer):
    # `--problem transformer` builds only the transformer: the same model a run of both problems trains
    torch.manual_seed(123)  # training seeds its own generator: the global state must not matter
    (alone,) = canary.problems(canary.SIZES["tiny"], 0, "cpu", sisa=False, keep=lambda name: "transformer" in name)
    assert alone.name == transformer.name and alone.sisa is None
    for a, b in zip(alone.model.parameters(), transformer.model.parameters(), strict=True):
        assert torch.equal(a, b)
