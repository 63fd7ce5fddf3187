"""Every registered method on a small CNN on digits, and the registry's contract.

The method-specific invariants live in test_methods_finetune.py, test_methods_distill.py and
test_methods_reinit.py; here every method runs at its default hyperparameters on the same
model and must return a new model of the same architecture, leave its input untouched, and —
unless it is one of the documented exceptions — lower the accuracy on the forgotten class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unlearnkit as uk
from unlearnkit.errors import MethodError
from unlearnkit.training import TrainConfig, accuracy, train

CONFIG = TrainConfig(optimizer="adam", epochs=30, lr=3e-3, batch_size=32, seed=0)

NOT_FORGETTING = {
    # by design these never look at the forget set: they fine-tune (or reset and fine-tune) on the retain set
    "ft", "ct", "cf-k", "eu-k", "cfw", "rni", "kde", "l1-sparse",
    # Fisher forgetting adds noise shaped by the retain set's Fisher information only; at its default it is nearly
    # uniform on this network and lowers every accuracy alike (forget 1.0 -> 0.98)
    "fisher",
    # SCRUB at DeepUnlearn's defaults: on a network without batch norm the student starts equal to its teacher, so
    # the max step's gradient is exactly zero and nothing moves (see its docstring for the sweep that found no
    # setting that forgets reliably)
    "scrub",
    # one gradient step of the line-minimising length barely moves a deep model (0 of 124 forget rows change class)
    "first-order",
    # the trust-region guard (on by default for deep models) accepts only steps that lower the corrected objective;
    # this 30-epoch CNN is not at an optimum, so only a short step qualifies and the class stays recognised
    # (unguarded, the step forgets it but costs about 9 points of test accuracy: see the test below)
    "second-order",
}


@pytest.fixture(scope="module")
def classwise():
    split = uk.data.unlearning_split(uk.data.load_digits(), forget_classes=[3])
    model = train(uk.models.for_data("cnn", split.train), split.train, config=CONFIG)
    return split, model


@pytest.fixture(scope="module")
def sharded(classwise):
    split, _ = classwise
    ensemble = uk.models.ShardedEnsemble.for_data("cnn", split.train, n_shards=3)
    return train(ensemble, split.train, config=TrainConfig(optimizer="adam", epochs=20, lr=3e-3, batch_size=32, seed=0))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", uk.methods.list())
def test_every_method_runs_on_the_digits_cnn(name, classwise, sharded):
    split, model = classwise
    subject = sharded if name == "sisa" else model
    before = _state(subject)
    result = uk.methods.make(name).unlearn(subject, split.train, split.changes(), val=split.val)

    new = result.model
    assert new is not subject
    assert type(new) is type(subject) and new.config == subject.config
    after = new.state_dict()
    assert list(after) == list(before) and all(after[k].shape == v.shape for k, v in before.items())
    assert all(torch.isfinite(p).all() for p in new.parameters())
    assert all(torch.equal(v, subject.state_dict()[k]) for k, v in before.items()), "the input model was modified"
    assert result.seconds > 0 and result.n_affected == len(split.forget)
    assert not new.training  # returned ready for evaluation

    forget_before = accuracy(subject, split.forget)
    forget_after = accuracy(new, split.forget)
    changed = any(not torch.equal(after[k], v) for k, v in before.items() if v.is_floating_point())
    assert changed, f"{name} returned the model unchanged"
    if name not in NOT_FORGETTING:  # at least three more of the 124 forget rows misclassified
        assert forget_after <= forget_before - 3 / len(split.forget), (
            f"{name}: forget accuracy {forget_before:.3f} -> {forget_after:.3f}")


def test_unguarded_second_order_forgets_the_class_and_the_guard_keeps_the_objective(classwise):
    split, model = classwise
    corrected = split.changes().apply(split.train)
    plain = uk.unlearn(model, split.train, split.changes(), method="second-order", guard=False)
    guarded = uk.unlearn(model, split.train, split.changes(), method="second-order")
    assert accuracy(plain.model, split.forget) < accuracy(model, split.forget) - 0.2
    assert guarded.diagnostics["guard"]["status"] in ("accepted", "backtracked", "rejected")
    from unlearnkit.influence.gradients import objective_value
    from unlearnkit.influence import FlatModel

    def objective(m):
        flat = FlatModel(m)
        return float(objective_value(flat, corrected))

    assert objective(guarded.model) <= objective(model) + 1e-6


def test_every_method_documents_its_hyperparameters():
    for name in uk.methods.list():
        meta = uk.methods.info(name)
        assert meta.summary and meta.reference, name
        text = uk.methods.describe(name)
        for h in meta.hyperparameters:
            assert h.source, f"{name}.{h.name} has no source"
            assert h.help, f"{name}.{h.name} has no help"
            assert f"{h.name} (" in text and f"default {h.default!r}" in text and h.source in text
        method = uk.methods.make(name)
        assert {h.name: h.default for h in meta.hyperparameters} == method.get_params()


def test_the_registry_holds_the_deepunlearn_methods_and_the_left_out_ones():
    expected = {"ft", "ga", "srl", "ng+", "bad-teacher", "salun", "scrub", "iu", "fisher", "cf-k", "eu-k", "fcs", "msg",
                "cfw", "prmq", "ct", "kde", "rni", "ng", "unsir", "ssd", "l1-sparse", "boundary-shrink", "first-order",
                "second-order", "retrain", "sisa"}
    assert expected <= set(uk.methods.list())


def test_unknown_hyperparameters_are_rejected_with_the_valid_ones_listed():
    with pytest.raises(MethodError, match=r"has no hyperparameter\(s\) \['learning_rate'\]; valid: lr \(default"):
        uk.methods.make("ft", learning_rate=0.1)
    with pytest.raises(MethodError, match="must be float"):
        uk.methods.make("ft", lr="fast")
    with pytest.raises(MethodError, match="Unknown unlearning method 'negrad'"):
        uk.methods.make("negrad")


def test_methods_are_deterministic_for_a_seed(classwise):
    split, model = classwise
    a = uk.methods.make("ft", epochs=1, seed=3).unlearn(model, split.train, split.changes())
    b = uk.methods.make("ft", epochs=1, seed=3).unlearn(model, split.train, split.changes())
    c = uk.methods.make("ft", epochs=1, seed=4).unlearn(model, split.train, split.changes())
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.model.parameters(), c.model.parameters()))


def test_retain_forget_call_equals_the_changes_call(classwise):
    split, model = classwise
    method = uk.methods.make("ft", epochs=1)
    a = method.unlearn(model, split.train, split.changes())
    b = method.unlearn_sets(model, split.retain, split.forget)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))


def test_validation_rows_that_are_training_rows_are_refused(classwise):
    split, model = classwise
    with pytest.raises(MethodError, match="validation row"):
        uk.methods.make("ft").unlearn(model, split.train, split.changes(), val=split.train.subset([0, 1, 2]))


def test_methods_reject_bad_input(classwise):
    split, model = classwise
    with pytest.raises(MethodError, match="Dataset"):
        uk.methods.make("ft").unlearn(model, split.train.X, split.changes())
    with pytest.raises(uk.errors.ChangesError, match="not in the dataset"):
        uk.methods.make("ft").unlearn(model, split.train, uk.Changes.remove([10**9]))
    everything = uk.Changes.remove(split.train.ids.tolist())
    with pytest.raises(MethodError, match="removes every training row"):
        uk.methods.make("ft").unlearn(model, split.train, everything)


def test_a_diverging_method_raises_and_returns_nothing(classwise):
    split, model = classwise
    before = _state(model)
    with pytest.raises(MethodError, match="diverged"):
        uk.methods.make("ga", lr=1e4, epochs=3).unlearn(model, split.train, split.changes())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------------------- SISA
def test_sisa_retrains_only_the_touched_shards_and_equals_sisa_retraining(classwise, sharded):
    split, _ = classwise
    ids = split.forget_ids[:2]
    changes = uk.Changes.remove(ids.tolist())
    result = uk.methods.make("sisa").unlearn(sharded, split.train, changes)
    touched = set(sharded.shards(ids).tolist())
    assert set(result.diagnostics["retrained_shards"]) == touched and len(touched) < sharded.n_shards
    for k in range(sharded.n_shards):
        same = all(torch.equal(a, b) for a, b in zip(result.model.members[k].parameters(), sharded.members[k].parameters()))
        assert same == (k not in touched)
    reference = uk.retrain(sharded, split.train, changes)
    assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), reference.parameters()))


def test_sisa_refuses_a_plain_model_with_the_fix(classwise):
    split, model = classwise
    with pytest.raises(MethodError, match="ShardedEnsemble.for_data"):
        uk.methods.make("sisa").unlearn(model, split.train, split.changes())


def test_shard_assignment_is_balanced_and_seeded():
    from unlearnkit.models.ensemble import shard_of

    ids = np.arange(10_000)
    counts = np.bincount(shard_of(ids, 5, seed=0), minlength=5)
    assert counts.min() > 1800 and counts.max() < 2200
    assert not np.array_equal(shard_of(ids, 5, seed=0), shard_of(ids, 5, seed=1))
    assert np.array_equal(shard_of(ids[::-1], 5)[::-1], shard_of(ids, 5))  # depends on the id only


def test_sharded_ensemble_round_trips_through_a_model_file(tmp_path, sharded, classwise):
    split, _ = classwise
    path = uk.save_model(sharded, tmp_path / "sisa.pt")
    back = uk.load_model(path)
    assert back.config == sharded.config
    assert accuracy(back, split.test) == accuracy(sharded, split.test)


# ---------------------------------------------------------------------------- influence on deep models
def test_second_order_auto_settings_follow_the_model(classwise):
    split, model = classwise
    method = uk.methods.make("second-order")
    deep = method.resolved(model, split.train, split.changes())
    assert deep["solver"] == "cg" and deep["curvature"] == "ggn" and deep["max_iter"] == 50
    assert deep["damping"] == pytest.approx(1e-3 * deep["largest_eigenvalue"]) and deep["damping"] > 0
    data = uk.data.make_classification(n=200, d=4, seed=0)
    convex = train(uk.models.for_data("logreg", data, l2=1.0), data)
    shallow = method.resolved(convex, data, uk.Changes.remove([0]))
    assert shallow["solver"] == "exact" and shallow["curvature"] == "hessian" and shallow["damping"] == 0.0


# ---------------------------------------------------------------------------- shared loops (review findings)
def test_schedules_follow_the_reference_code():
    from unlearnkit.methods.loops import step_decay, triangle

    assert [round(triangle(1.0, e, 5), 4) for e in range(5)] == [0.3333, 0.6667, 1.0, 0.6667, 0.3333]
    assert [triangle(1.0, e, 2) for e in range(2)] == [1.0, 0.5]
    # SCRUB counts epochs from 1: decays once past int(0.5*5)=2, int(0.8*5)=4 and int(0.9*5)=4
    assert [round(step_decay(1.0, e, 5, 0.1, one_based=True), 6) for e in range(5)] == [1, 1, 0.1, 0.1, 0.001]
    # CF-k / EU-k count from 0: six epochs at the full rate, three at 0.1, one at 0.01
    assert [round(step_decay(1.0, e, 10, 0.1), 6) for e in range(10)] == [1] * 6 + [0.1] * 3 + [0.01]


def test_a_trailing_single_row_joins_the_previous_batch_so_batch_norm_can_train():
    from unlearnkit.training import batch_bounds

    assert batch_bounds(129, 64) == [(0, 64), (64, 129)]
    assert batch_bounds(128, 64) == [(0, 64), (64, 128)] and batch_bounds(1, 64) == [(0, 1)]
    data = uk.data.load_digits().subset(np.arange(130))
    net = uk.models.for_data("resnet18", data, base_width=2)  # 8x8 input: layer4 is 1x1, one value per channel
    model = train(net, data, config=TrainConfig(optimizer="adam", epochs=1, batch_size=64))
    changes = uk.Changes.remove(data.ids[:1].tolist())  # retain = 129 rows = 2 x 64 + 1
    for name in ("ft", "cf-k"):
        result = uk.methods.make(name, batch_size=64, epochs=1).unlearn(model, data, changes)
        assert all(p.grad is None for p in result.model.parameters())


def test_validation_sets_sharing_any_training_row_are_refused(classwise):
    split, model = classwise
    mixed = uk.methods.task.concat(split.val, split.train.subset([0]))  # one training row among held-out rows
    with pytest.raises(MethodError, match="validation row"):
        uk.methods.make("ft").unlearn(model, split.train, split.changes(), val=mixed)


# ---------------------------------------------------------------------------- Fisher forgetting, class-wise
def test_classwise_fisher_forgets_the_class_that_faithful_fisher_keeps(classwise):
    """FF never looks at the forget set and keeps a forgotten class; its class-aware variant removes it."""
    split, model = classwise
    before = accuracy(model, split.forget)
    faithful = uk.methods.make("fisher").unlearn(model, split.train, split.changes())
    aware = uk.methods.make("fisher-classwise").unlearn(model, split.train, split.changes())
    kept, removed = accuracy(faithful.model, split.forget), accuracy(aware.model, split.forget)
    assert kept > before - 0.1  # the faithful method barely touches the class ...
    # ... the class-aware one forgets it (measured 0.00 / 0.16 / 0.01 for seeds 0-2, against 0.98 / 1.0 / 0.87)
    assert removed < 0.3 and removed < kept - 0.5, (kept, removed)
    assert accuracy(aware.model, split.retain) > accuracy(model, split.retain) - 0.05
    assert aware.diagnostics["forgotten_classes"] == [int(split.forget.y[0])]
    some_rows = uk.Changes.remove(split.forget_ids[:5].tolist())  # removes no class entirely
    with pytest.raises(MethodError, match="use 'fisher' to forget individual rows"):
        uk.methods.make("fisher-classwise").unlearn(model, split.train, some_rows)
    with pytest.raises(MethodError, match="forget_class_var. = 0.0 is outside its registered range"):
        uk.methods.make("fisher-classwise", forget_class_var=0.0).unlearn(model, split.train, split.changes())


# ---------------------------------------------------------------------------- reproducibility of the suite
def test_the_test_session_runs_on_one_torch_thread():
    """Results such as MSG's forget accuracy change with the thread count (0.69 on one thread, 0.73 on two)."""
    import os

    assert torch.get_num_threads() == 1
    assert os.environ.get("OMP_NUM_THREADS") == "1"


def test_training_twice_gives_identical_weights():
    data = uk.data.load_digits().subset(np.arange(200))
    config = TrainConfig(optimizer="adam", epochs=3, lr=3e-3, batch_size=32, seed=5)
    a = train(uk.models.for_data("cnn", data), data, config=config)
    b = train(uk.models.for_data("cnn", data), data, config=config)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
