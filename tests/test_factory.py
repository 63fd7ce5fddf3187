"""A user's model by factory path: import errors, model files of wrapped modules and plain
state_dicts (round trip, mismatch, safety), the command line and the benchmark runner.

The factories live in a module this file writes into ``tmp_path`` and imports through the real
import machinery (``factory_path`` / ``--factory-path``), never through an edited ``sys.path``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import textwrap
import uuid
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import unlearnkit as uk
from unlearnkit.bench.store import Store
from unlearnkit.cli import app
from unlearnkit.errors import BenchError, ModelError
from unlearnkit.models.factory import from_factory

runner = CliRunner()

FACTORIES = '''
import torch
from torch import nn
import unlearnkit as uk


def make(hidden=8, d=4, c=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, c))


def make_wide():
    return make(hidden=5)


def make_wrapped():
    return uk.wrap(make(), l2=0.5, loss=lambda z, y: nn.functional.cross_entropy(z, y, reduction="none"))


def make_digits(hidden=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


NOT_CALLABLE = 3


def returns_list():
    return [nn.Linear(4, 3)]


def boom():
    raise RuntimeError("kaboom")


def quits(**options):
    import sys
    sys.exit()


def make_double():
    return make().double()


def make_meta():
    with torch.device("meta"):
        return make()


def make_locked():
    import threading
    net = make()
    net.lock = threading.Lock()
    return net


_secret = make
'''


@pytest.fixture
def factories(tmp_path):
    """``(folder, module name)`` of a freshly written factory module (a unique name per test)."""
    name = f"ukfactories_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / f"{name}.py").write_text(FACTORIES)
    (folder / f"{name}_broken.py").write_text("raise ImportError('a dependency is missing')\n")
    (folder / f"{name}_needs.py").write_text("import not_an_installed_package_xyz\n")
    (folder / f"{name}_script.py").write_text("import sys\nsys.exit(2)\n")  # a script: argparse or main() on import
    yield folder, name
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.8).astype(int)
    path = tmp_path / "train.csv"
    path.write_text("a,b,c,d,label\n" + "".join(",".join(f"{v:.5f}" for v in x) + f",{t}\n" for x, t in zip(X, y)))
    return path, uk.data.load(str(path))


def snapshot(module):
    return ([p.detach().clone() for p in module.parameters()], [b.clone() for b in module.buffers()],
            [m.training for m in module.modules()])


def same(module, snap) -> bool:
    params, buffers, modes = snap
    return (all(torch.equal(a, b) for a, b in zip(module.parameters(), params))
            and all(torch.equal(a, b) for a, b in zip(module.buffers(), buffers))
            and [m.training for m in module.modules()] == modes)


def user_module(folder, name, fn="make", **kw):
    """A module built by the factory's code, run from its file (not registered in ``sys.modules``, so a
    later import by factory path really imports)."""
    spec = importlib.util.spec_from_file_location(f"{name}_direct", folder / f"{name}.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return getattr(code, fn)(**kw)


def trained(folder, name, ds, fn="make"):
    model = from_factory(f"{name}:{fn}", ds, search_path=folder, l2=1e-2)
    return uk.train(model, ds, config=uk.TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0))


def logits(model, ds):
    X, _ = ds.tensors(dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(X)


# ---------------------------------------------------------------------------- factory paths
@pytest.mark.parametrize("fn, match", [
    ("{missing}:make", "does not import: no module named"),
    ("{name}_broken:make", "does not import: importing .* raised ImportError: a dependency is missing"),
    ("{name}_needs:make", "needs the module 'not_an_installed_package_xyz'"),
    ("{name}:nothere", "has no attribute 'nothere'; callables it defines: .*make"),
    ("{name}:NOT_CALLABLE", "object of type int, which is not callable"),
    ("{name}:returns_list", "returned a list; it must return a torch.nn.Module"),
    ("{name}:boom", "raised RuntimeError without arguments: kaboom"),
    ("{name}", "is not of the form 'package.module:function'"),
    ("{name}:make:x", "is not of the form"),
    ("{name}_script:make", "importing .* called exit \\(status 2\\).*argparse.*if __name__ == \"__main__\":"),
    ("{name}:quits", "called exit \\(status 0\\) instead of returning a module.*if __name__ == \"__main__\":"),
    ("{name}:_secret", "names the private attribute '_secret'.*may start with '_'"),
    ("{name}:make.__class__", "names the private attribute '__class__'"),
    ("{name}:make_meta", "on the 'meta' device.*Build it on a real device"),
])
def test_factory_path_errors_name_the_path_and_the_cause(factories, fn, match):
    folder, name = factories
    path = fn.format(name=name, missing=f"{name}_missing")
    before = list(sys.path)
    with pytest.raises(ModelError, match=match) as info:
        from_factory(path, search_path=folder)
    assert path in str(info.value)
    assert sys.path == before  # the folder was added for the import only


def test_factory_needs_its_folder_and_is_called_with_its_arguments(factories, data):
    folder, name = factories
    with pytest.raises(ModelError, match="does not import.*factory_path="):  # the current folder is never searched
        from_factory(f"{name}:make")
    model = from_factory(f"{name}:make", data[1], search_path=folder, args={"hidden": 6}, l2=0.25)
    assert isinstance(model, uk.models.WrappedModel) and model.factory == f"{name}:make"
    assert model.module[0].out_features == 6 and model.n_classes == 3 and model.input_shape == (4,) and model.l2 == 0.25
    with pytest.raises(ModelError, match="raised TypeError with \\['width'\\]"):
        from_factory(f"{name}:make", search_path=folder, args={"width": 6})
    wrapped = from_factory(f"{name}:make_wrapped", search_path=folder)
    assert wrapped.custom_loss and wrapped.l2 == 0.5
    with pytest.raises(ModelError, match="l2=0.5, but l2=1.0 is required"):
        from_factory(f"{name}:make_wrapped", search_path=folder, l2=1.0)


# ---------------------------------------------------------------------------- model files
def test_wrapped_model_round_trip_is_exact(factories, data, tmp_path):
    folder, name = factories
    ds = data[1]
    model = trained(folder, name, ds)
    path = uk.save_model(model, tmp_path / "net.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == "wrapped" and payload["config"]["factory"] == f"{name}:make"
    assert payload["config"]["module_type"] == "torch.nn.modules.container.Sequential"
    with pytest.raises(ModelError, match="wrapped user module .*factory='pkg.mod:fn'"):
        uk.load_model(path)  # the architecture is code: never imported from what a file says
    back = uk.load_model(path, factory=f"{name}:make", factory_path=folder)
    assert torch.equal(logits(back, ds), logits(model, ds))
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b) and a.dtype == b.dtype  # batch-norm statistics included
    assert back.l2 == model.l2 and back.input_shape == (4,) and back.n_classes == 3
    assert back.train_config == model.train_config and back.factory == f"{name}:make"
    # the same file through module=: loaded into a copy, the user's module untouched
    mine = user_module(folder, name).train()
    snap = snapshot(mine)
    again = uk.load_model(path, module=mine)
    assert torch.equal(logits(again, ds), logits(model, ds))
    assert same(mine, snap) and again.module is not mine
    # unlearning the loaded model gives what unlearning the original gives
    changes = uk.Changes.remove(ds.ids[:3].tolist())
    a = uk.unlearn(model, ds, changes, method="ft", epochs=1, seed=0).model
    b = uk.unlearn(back, ds, changes, method="ft", epochs=1, seed=0).model
    assert torch.equal(logits(a, ds), logits(b, ds))


def test_custom_loss_is_not_saved_and_must_come_back_from_the_factory(factories, data, tmp_path):
    folder, name = factories
    model = from_factory(f"{name}:make_wrapped", data[1], search_path=folder)
    path = uk.save_model(model, tmp_path / "custom.pt")
    assert torch.load(path, weights_only=True)["config"]["custom_loss"] is True
    with pytest.raises(ModelError, match="custom loss, which a model file cannot hold"):
        uk.load_model(path, factory=f"{name}:make", factory_path=folder)
    back = uk.load_model(path, factory=f"{name}:make_wrapped", factory_path=folder)
    assert back.custom_loss and back.l2 == 0.5
    assert torch.equal(logits(back, data[1]), logits(model, data[1]))


def test_weights_that_do_not_match_the_factory_are_refused_before_loading(factories, data, tmp_path):
    folder, name = factories
    model = trained(folder, name, data[1])
    path = uk.save_model(model, tmp_path / "net.pt")
    with pytest.raises(ModelError, match=r"do not match the module the factory .*make_wide.*'module\.0\.weight' has "
                                         r"shape \(8, 4\) in the file, \(5, 4\) in the module"):
        uk.load_model(path, factory=f"{name}:make_wide", factory_path=folder)
    plain = tmp_path / "plain.pt"
    torch.save(model.module.state_dict(), plain)
    for mine, match in [
        (user_module(folder, name, hidden=5).train(), r"'0\.weight' has shape \(8, 4\) in the file, \(5, 4\)"),
        (user_module(folder, name).double(), "'0.weight' is torch.float32 in the file, torch.float64 in the module"),
        (torch.nn.Sequential(torch.nn.Linear(4, 3)), r"module given \(Sequential\): '0\.weight' has shape \(8, 4\) in "
                                                     r"the file, \(3, 4\) in the module; .*; unexpected '1\.weight'.* \(and 4 more\)"),
    ]:
        snap = snapshot(mine)
        with pytest.raises(ModelError, match=match):
            uk.load_model(plain, module=mine)
        assert same(mine, snap)  # parameters, buffers and .training as they were


def test_plain_state_dict_weights_file_loads_through_the_same_checks(factories, data, tmp_path):
    folder, name = factories
    ds = data[1]
    net = trained(folder, name, ds).module  # a plain module with trained weights, as a user has it
    plain = tmp_path / "weights.pt"
    torch.save(net.state_dict(), plain)
    with pytest.raises(ModelError, match="plain PyTorch weights file .*factory="):
        uk.load_model(plain)
    model = uk.load_model(plain, factory=f"{name}:make", factory_path=folder)
    X, _ = ds.tensors(dtype=torch.float32)
    with torch.no_grad():
        expected = copy.deepcopy(net).eval()(X)
    assert torch.equal(logits(model, ds), expected) and model.l2 == 0.0
    assert torch.equal(logits(uk.load_model(plain, module=net), ds), expected)
    # the file checks of every model file apply: a compressed entry, a pickled object, a folder
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ModelError, match="compressed"):
        uk.load_model(packed, factory=f"{name}:make", factory_path=folder)
    pickled = tmp_path / "pickled.pt"
    torch.save({"0.weight": torch.zeros(8, 4), "extra": np.random.default_rng(0)}, pickled)
    with pytest.raises(ModelError, match="refused for safety"):
        uk.load_model(pickled, factory=f"{name}:make", factory_path=folder)
    with pytest.raises(ModelError, match="is a folder"):
        uk.load_model(tmp_path, factory=f"{name}:make", factory_path=folder)
    with pytest.raises(ModelError, match="factory= or module=, not both"):
        uk.load_model(plain, factory=f"{name}:make", factory_path=folder, module=net)


# ---------------------------------------------------------------------------- command line
def test_cli_train_unlearn_evaluate_with_a_factory(factories, data, tmp_path):
    folder, name = factories
    csv, ds = data
    changes = tmp_path / "changes.json"
    uk.Changes.remove(ds.ids[:4].tolist()).to_json(changes)
    user = ["--factory", f"{name}:make", "--factory-path", str(folder)]
    net = tmp_path / "net.pt"
    r = runner.invoke(app, ["train", *user, "--data", str(csv), "--out", str(net), "--epochs", "2", "--lr", "0.01"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "unlearned.pt"
    r = runner.invoke(app, ["unlearn", *user, "--weights", str(net), "--data", str(csv), "--changes", str(changes),
                            "--method", "ft", "--param", "epochs=1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert torch.load(out, weights_only=True)["config"]["factory"] == f"{name}:make"  # carried through unlearning
    unlearned = uk.load_model(out, factory=f"{name}:make", factory_path=folder)
    assert unlearned.factory == f"{name}:make" and unlearned.metadata["unlearned"]["method"] == "ft"
    r = runner.invoke(app, ["evaluate", *user, "--original", str(net), "--unlearned", str(out), "--data", str(csv),
                            "--changes", str(changes), "--metrics", "accuracy_retain,relative_distance"])
    assert r.exit_code == 0, r.output
    assert "accuracy_retain" in r.output and "relative_distance" in r.output
    # a plain state_dict as --weights
    plain = tmp_path / "plain.pt"
    torch.save(uk.load_model(net, factory=f"{name}:make", factory_path=folder).module.state_dict(), plain)
    r = runner.invoke(app, ["unlearn", *user, "--weights", str(plain), "--data", str(csv), "--changes", str(changes),
                            "--method", "ft", "--param", "epochs=1", "--out", str(tmp_path / "u2.pt")])
    assert r.exit_code == 0, r.output


def test_cli_refuses_bad_factories_mismatched_and_unsafe_weights(factories, data, tmp_path):
    folder, name = factories
    csv, ds = data
    changes = tmp_path / "changes.json"
    uk.Changes.remove([int(ds.ids[0])]).to_json(changes)
    plain = tmp_path / "plain.pt"
    torch.save(user_module(folder, name).state_dict(), plain)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    common = ["--data", str(csv), "--changes", str(changes), "--method", "ft", "--out", str(tmp_path / "u.pt")]
    for args, match in [
        # first, before any case imports the module (an imported module is reused, as Python does)
        (["--factory", f"{name}:make", "--weights", str(plain)], "does not import"),
        (["--factory", f"{name}:nothere", "--factory-path", str(folder), "--weights", str(plain)], "no attribute 'nothere'"),
        (["--factory", f"{name}:make_wide", "--factory-path", str(folder), "--weights", str(plain)], "do not match"),
        (["--factory", f"{name}:make", "--factory-path", str(folder), "--weights", str(packed)], "compressed"),
        (["--weights", str(plain)], "--weights needs --factory"),
        (["--factory", f"{name}:make", "--model", str(plain)], "from --weights FILE"),
        (["--model", str(plain)], "plain PyTorch weights file"),
        ([], "Give the model"),
    ]:
        r = runner.invoke(app, ["unlearn", *args, *common])
        assert r.exit_code == 2 and "error:" in r.output and match in " ".join(r.output.split()), (args, r.output)
    r = runner.invoke(app, ["evaluate", "--factory", f"{name}:make_wide", "--factory-path", str(folder), "--original",
                            str(plain), "--unlearned", str(plain), "--retrained", str(plain), "--data", str(csv),
                            "--changes", str(changes)])
    assert r.exit_code == 2 and "error:" in r.output and "do not match" in r.output, r.output
    assert not (tmp_path / "u.pt").exists()


# ---------------------------------------------------------------------------- benchmark
def _bench_config(folder, path: str, tmp_path, **extra):
    name = f'"{path}"'
    text = textwrap.dedent(f"""
        name = "user-model"
        [data]
        datasets = ["digits"]
        rows = 240
        [models]
        names = ["mynet"]
        factories = {{ mynet = {name} }}
        factory_path = "{folder.name}"
        options.mynet = {{ hidden = 8 }}
        [methods]
        names = ["ft"]
        fixed.ft = {{ epochs = 1 }}
        [seeds]
        eval = [0]
        tuning = [100]
        [search]
        trials = 1
        [train]
        epochs = 1
        """)
    config = tmp_path / "bench.toml"  # factory_path is read from the config file's folder
    config.write_text(text)
    return config


def test_bench_runs_a_user_model_from_its_factory(factories, tmp_path):
    folder, name = factories
    before = list(sys.path)
    cfg = uk.bench.load_config(_bench_config(folder, f"{name}:make_digits", tmp_path))
    assert sys.path == before and cfg.factories == {"mynet": f"{name}:make_digits"} and cfg.factory_path == str(folder)
    assert cfg.problems[0].key == "digits/mynet/remove-0.1"
    summary = uk.bench.run(cfg, tmp_path / "run", executor="local", workers=1)  # a spawned worker imports it again
    assert summary.failed_cells == 0 and summary.counts == {"refs": 2, "trials": 1, "studies": 1, "cells": 1}
    with Store(tmp_path / "run") as store:
        cell = store.cells()[0]
    assert cell["status"] == "ok" and 0 <= cell["metrics"]["acc_test"] <= 1


@pytest.mark.parametrize("edit, match", [
    ({"path": "{name}:nothere"}, r"models\.factories\.mynet: .*has no attribute 'nothere'"),
    ({"path": "{name}_missing:make"}, r"models\.factories\.mynet: .*does not import"),
    ({"path": "{name}"}, r"models\.factories\.mynet: .*not of the form"),
    ({"path": "{name}:make"}, r"Problem digits/mynet/remove-0\.1: .*"),  # 3 classes, digits has 10
    ({"factory_path": "nowhere"}, r"models\.factory_path 'nowhere' is not a folder"),
    ({"names": '["cnn"]'}, r"models\.factories names \['mynet'\], which models\.names does not list"),
    ({"names": '["mynet"]', "zoo": True}, r"models\.factories\.cnn: 'cnn' is a zoo model"),
])
def test_bench_refuses_a_bad_factory_key_when_the_config_is_loaded(factories, tmp_path, edit, match):
    folder, name = factories
    config = _bench_config(folder, edit.get("path", "{name}:make_digits").format(name=name), tmp_path)
    text = config.read_text()
    if "factory_path" in edit:
        text = text.replace(f'factory_path = "{folder.name}"', f'factory_path = "{edit["factory_path"]}"')
    if "names" in edit:
        text = text.replace('names = ["mynet"]', f"names = {edit['names']}", 1)
    if edit.get("zoo"):
        text = text.replace("factories = { mynet", "factories = { cnn")
    config.write_text(text)
    with pytest.raises(BenchError, match=match):
        uk.bench.load_config(config)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- factories that misbehave
def test_cli_reports_a_factory_that_exits_instead_of_ending_silently(factories, data, tmp_path):
    folder, name = factories
    csv, ds = data
    changes = tmp_path / "changes.json"
    uk.Changes.remove([int(ds.ids[0])]).to_json(changes)
    weights = tmp_path / "plain.pt"
    torch.save(user_module(folder, name).state_dict(), weights)
    out = tmp_path / "out.pt"
    for factory, match in [(f"{name}:quits", "called exit (status 0)"), (f"{name}_script:make", "called exit (status 2)")]:
        user = ["--factory", factory, "--factory-path", str(folder)]
        for command in (["train", *user, "--data", str(csv), "--out", str(out), "--epochs", "1"],
                        ["unlearn", *user, "--weights", str(weights), "--data", str(csv), "--changes", str(changes),
                         "--method", "ft", "--out", str(out)],
                        ["evaluate", *user, "--original", str(weights), "--unlearned", str(weights), "--data", str(csv),
                         "--changes", str(changes)]):
            r = runner.invoke(app, command)
            text = " ".join(r.output.split())
            assert r.exit_code == 2 and "error:" in text and match in text and "__main__" in text, (command, r.output)
            assert not out.exists()


@pytest.mark.parametrize("path, match", [
    ("{name}:quits", r"called exit \(status 0\) instead of returning a module"),
    ("{name}_script:make", r"models\.factories\.mynet: .*called exit \(status 2\)"),
    ("{name}:_secret", r"models\.factories\.mynet: .*private attribute '_secret'"),
])
def test_bench_config_refuses_a_factory_that_exits_or_is_private(factories, tmp_path, path, match):
    folder, name = factories
    config = _bench_config(folder, path.format(name=name), tmp_path)
    with pytest.raises(BenchError, match=match):
        uk.bench.load_config(config)


def test_a_float64_module_trains_and_retrains_in_float64_and_its_factory_loads_the_file(factories, data, tmp_path):
    folder, name = factories
    csv, ds = data
    recipe = dict(epochs=1, batch_size=16, lr=1e-2, seed=0)
    model = from_factory(f"{name}:make_double", ds, search_path=folder)
    trained = uk.train(model, ds, config=uk.TrainConfig(**recipe))
    assert trained.train_config.dtype == "float64"
    assert all(t.dtype == torch.float64 for t in trained.state_dict().values() if t.is_floating_point())
    path = uk.save_model(trained, tmp_path / "net.pt")
    back = uk.load_model(path, factory=f"{name}:make_double", factory_path=folder)
    X, _ = ds.tensors(dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(back.eval()(X), trained.eval()(X))
    retrained = uk.unlearn(trained, ds, uk.Changes.remove(ds.ids[:3].tolist()), method="retrain").model
    assert next(retrained.parameters()).dtype == torch.float64
    # an explicit dtype still wins; a zoo model keeps its default
    assert next(uk.train(model, ds, config=uk.TrainConfig(**recipe, dtype="float32")).parameters()).dtype == torch.float32
    zoo = uk.train(uk.models.build("mlp", n_features=4, n_classes=3), ds, config=uk.TrainConfig(**recipe))
    assert zoo.train_config.dtype == "float32"
    # the command line: train, then unlearn with the same factory
    user = ["--factory", f"{name}:make_double", "--factory-path", str(folder)]
    net = tmp_path / "cli.pt"
    r = runner.invoke(app, ["train", *user, "--data", str(csv), "--out", str(net), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    changes = tmp_path / "changes.json"
    uk.Changes.remove(ds.ids[:2].tolist()).to_json(changes)
    r = runner.invoke(app, ["unlearn", *user, "--weights", str(net), "--data", str(csv), "--changes", str(changes),
                            "--method", "ft", "--param", "epochs=1", "--out", str(tmp_path / "u.pt")])
    assert r.exit_code == 0, r.output


def test_modules_on_the_meta_device_are_refused(factories, data, tmp_path):
    folder, name = factories
    path = uk.save_model(from_factory(f"{name}:make", data[1], search_path=folder), tmp_path / "net.pt")
    with torch.device("meta"):
        ghost = user_module(folder, name)
    for call in (lambda: uk.wrap(ghost), lambda: uk.wrap(ghost, input_shape=(4,)),
                 lambda: uk.load_model(path, module=ghost), lambda: uk.load_model(path, factory=f"{name}:make_meta",
                                                                                  factory_path=folder)):
        with pytest.raises(ModelError, match="on the 'meta' device.*to_empty"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_module_spread_over_two_devices_is_refused(factories, data, tmp_path):
    folder, name = factories
    net = user_module(folder, name)
    net[3].to("cuda")
    path = uk.save_model(from_factory(f"{name}:make", data[1], search_path=folder), tmp_path / "net.pt")
    for call in (lambda: uk.wrap(net), lambda: uk.load_model(path, module=net)):
        with pytest.raises(ModelError, match=r"on several devices \(cpu, cuda:0\)"):
            call()


def test_a_module_that_cannot_be_copied_gets_a_named_error(factories, data, tmp_path):
    folder, name = factories
    ds = data[1]
    path = uk.save_model(from_factory(f"{name}:make", ds, search_path=folder), tmp_path / "net.pt")
    locked = user_module(folder, name, fn="make_locked")
    with pytest.raises(ModelError, match=r"cannot be copied \(copy.deepcopy raised TypeError.*lock.*pass factory="):
        uk.load_model(path, module=locked)
    with pytest.raises(ModelError, match=r"cannot be copied .*pass factory="):
        uk.load_model(path, module=uk.wrap(locked))
    model = from_factory(f"{name}:make_locked", ds, search_path=folder)
    changes = uk.Changes.remove(ds.ids[:2].tolist())
    for call in (lambda: uk.train(model, ds, config=uk.TrainConfig(epochs=1)), model.fresh,
                 lambda: uk.unlearn(model, ds, changes, method="ft", epochs=1), lambda: copy.deepcopy(model)):
        with pytest.raises(ModelError, match=r"Sequential module cannot be copied .*locks"):
            call()


def _crafted(tmp_path, model, **config):
    payload = uk.models.io.model_payload(model)
    payload["config"].update(config)
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    return path


def test_crafted_names_and_input_shapes_are_refused_and_loading_probes_one_example(factories, data, tmp_path, caplog,
                                                                               monkeypatch):
    folder, name = factories
    ds = data[1]
    model = from_factory(f"{name}:make", ds, search_path=folder)
    for key, value in [("module_type", "x" * 10**6), ("factory", "m:" + "f" * 300), ("head", "h" * 201),
                       ("blocks", ["0", "b" * 201])]:
        with pytest.raises(ModelError, match=rf"config\.{key} is [\d,]+ characters long, more than the 200"):
            uk.load_model(_crafted(tmp_path, model, **{key: value}), module=user_module(folder, name))
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)
    with pytest.raises(ModelError, match="more than 16,777,216 values"):
        uk.load_model(_crafted(tmp_path, model, input_shape=[4097, 4096]), module=user_module(folder, name))
    wrap_module = sys.modules["unlearnkit.models.wrap"]  # (uk.models.wrap is the function)
    probed = []
    real = wrap_module.probe_logits
    monkeypatch.setattr(wrap_module, "probe_logits", lambda module, X: probed.append(tuple(X.shape)) or real(module, X))
    back = uk.load_model(_crafted(tmp_path, model, input_shape=[4]), module=user_module(folder, name).train())
    assert probed == [(1, 4)] and back.input_shape == (4,)  # one example, in evaluation mode (batch norm accepts it)
    back.check_data(ds)  # checked on load already
    assert probed == [(1, 4)]
    for crafted, match in [
        ({"n_classes": 2**62}, r"crafted.pt with the module given \(Sequential\): .*returned shape \(1, 3\) for 1 rows"),
        ({"input_shape": [5]}, r"failed on a probe batch of shape \(1, 5\)"),
    ]:
        with pytest.raises(ModelError, match=match):
            uk.load_model(_crafted(tmp_path, model, **crafted), module=user_module(folder, name))
