"""``unlearnkit``: the command-line tool (typer + rich). Library code never prints; this does."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from unlearnkit.errors import MetricError, ModelError, UnlearnKitError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Machine unlearning, measured against retraining.")
PIPE_WIDTH = 1000
"""Columns of the output when it is not a terminal (a pipe, a file): wide enough that no table cell is cut; tables
keep their natural width."""


def _console(stream) -> Console:
    """A console as wide as the terminal, or :data:`PIPE_WIDTH` when the output is piped (rich would cut at 80)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Console(emoji=False, stderr=stream is sys.stderr, width=None if tty else PIPE_WIDTH)


console = _console(sys.stdout)
err = _console(sys.stderr)


def _show_version(value: bool) -> None:
    if value:
        from unlearnkit import __version__

        console.print(f"unlearnkit {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Machine unlearning, measured against retraining.

    Commands import the numerical stack (PyTorch) only when they run: --help is instant."""


def _fail(exc: Exception) -> None:
    err.print("[bold red]error:[/] ", end="")
    # the message may quote user text (paths, values): control characters other than newlines and
    # tabs are shown escaped, never sent raw to the terminal
    text = "\n".join("\t".join(_plain(part) for part in line.split("\t")) for line in str(exc).split("\n"))
    err.print(text, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _check_fits(model, data, which: str, option: str) -> None:
    """ModelError unless ``data`` has the input shape and classes ``model`` was built for."""
    try:
        model.check_data(data)
    except ModelError as exc:
        raise ModelError(f"{option} does not fit {which}: {exc}") from None


def _fmt(value: float, digits: int = 4) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and (abs(value) < 1e-3 and value != 0):
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _parse_params(params: list[str]) -> dict:
    out = {}
    for item in params:
        if "=" not in item:
            raise typer.BadParameter(f"--param expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


class _OptionError(UnlearnKitError, ValueError):
    """A command-line option has a value no command can use (non-finite, negative, out of range)."""


def _check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed < 2**64:
        _fail(_OptionError(f"{option} must be an integer in [0, 2**64) (a 64-bit seed); got {seed}."))


def _check_number(option: str, value: float, *, positive: bool = False, minimum: float = 0.0) -> None:
    """Refuse a NaN, infinite, negative (or, with ``positive``, zero) value of a numeric option."""
    if not math.isfinite(value) or value < minimum or (positive and value <= 0):
        want = "a finite number > 0" if positive else f"a finite number >= {minimum:g}"
        _fail(_OptionError(f"{option} must be {want}; got {value}."))


def _check_out(out: Path, option: str = "--out") -> None:
    """Check an output path before any work, so a long run never ends in an unwritable target."""
    from unlearnkit.atomic import check_target

    try:
        check_target(out, user_path=True)
    except UnlearnKitError as exc:
        _fail(_OptionError(f"{option}: {exc}"))


@app.command()
def demo(
    seed: int = typer.Option(0, help="Seed for splits, planted problems and training."),
    cnn_epochs: int = typer.Option(30, help="Training epochs of the CNN (fewer is faster)."),
) -> None:
    """Plant a leaky feature and flipped labels in embedded data, then unlearn them three ways."""
    import torch

    from unlearnkit import demo as demo_mod

    _check_seed(seed)
    if cnn_epochs < 1:
        _fail(_OptionError(f"--cnn-epochs must be >= 1; got {cnn_epochs}."))
    torch.manual_seed(seed)
    with console.status("starting") as status:
        def step(message: str) -> None:
            status.update(message)
            console.log(message)

        rows = demo_mod.run(seed=seed, step=step, cnn_epochs=cnn_epochs)
    for problem in dict.fromkeys(r.problem for r in rows):
        table = Table(title=problem, title_justify="left")
        for col in ("method", "test acc", "acc corrected pts", "dist to retrain", "time s", "speed-up"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in (r for r in rows if r.problem == problem):
            speed = f"{r.speedup:.1f}x" if r.speedup == r.speedup else "-"
            table.add_row(r.method, _fmt(r.test_acc), _fmt(r.corrected_acc), _fmt(r.rel_distance),
                          _fmt(r.seconds, 3) if r.seconds else "-", speed)
        console.print(table)
        for r in rows:
            if r.problem == problem and r.note:
                console.print(f"  {r.method}: {r.note}")
    console.print("dist to retrain = ||theta - theta_retrain|| / ||theta_retrain|| (retraining is the gold standard;\n"
                  "for the non-convex CNN, retraining from scratch lands elsewhere in parameter space, so compare accuracies).")


@app.command("scenario")
def scenario_cmd(
    name: str = typer.Argument(..., help="sensitive-features, canary, label-poisoning or backdoor ('list' to list them)."),
    size: str = typer.Option("full", help="tiny (seconds to a minute) or full (the committed report's sizes; minutes)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; every method runs on the same seeds."),
    out: Path = typer.Option(Path("scenario-reports"), help="Folder for <name>.md, <name>.png and <name>.json."),
    device: Optional[str] = typer.Option(None, help="torch device for training and unlearning (default: CPU)."),
) -> None:
    """Run one of the paper's scenarios end to end and write its report (Markdown, PNG plot, JSON)."""
    from unlearnkit import scenarios

    if name == "list":
        for spec in scenarios.SCENARIOS.values():
            console.print(f"{spec.name:20s} {spec.summary}", markup=False)
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    try:
        with console.status("starting") as status:
            def step(message: str) -> None:
                status.update(message)
                console.log(message, markup=False)

            result = scenarios.run(name, size=size, seeds=seed_list, out=out, device=device, step=step)
    except UnlearnKitError as exc:
        _fail(exc)
    summary = result.aggregate()
    efficacy = list(dict.fromkeys([*(k for r in result.rows for k in r.efficacy), *result.derived_keys()]))
    for problem in dict.fromkeys(e["problem"] for e in summary):
        table = Table(title=problem, title_justify="left")
        for col in ("method", "test acc", "distance", *efficacy, "seconds", "speed-up"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for e in (e for e in summary if e["problem"] == problem):
            if e.get("failed") == e["runs"]:
                table.add_row(escape(e["method"]), "failed", *[""] * (3 + len(efficacy)))
                continue
            speed = "-" if e["method"] == "original" or e.get("speedup") is None else f"{e['speedup']:.1f}x"
            table.add_row(escape(e["method"]), _fmt(e.get("test_accuracy")), _fmt(e.get("distance")), *[_fmt(e.get(k)) for k in efficacy],
                          _fmt(e.get("seconds"), 3), speed)
        console.print(table)
    for goal in result.goals:
        console.print(f"{'MET' if goal.met else 'MISSED'}: {goal.name}. {goal.detail}", markup=False)
    console.print(f"report: {out / (name + '.md')} (+ .png, .json)", markup=False)


_FACTORY_HELP = ("Your own model: 'package.module:function', a function that returns your torch.nn.Module "
                 "(or a uk.wrap(...) model), e.g. --factory mynets:make_net.")
_FACTORY_PATH_HELP = "Folder to import the --factory module from, when it is not installed (e.g. --factory-path src)."


def _load_net(path: Path, factory: Optional[str], factory_path: Optional[Path]):
    """A model file, or with ``--factory`` a weights file of the factory's module (same safety checks)."""
    from unlearnkit import load_model

    if factory is None:
        return load_model(path)
    return load_model(path, factory=factory, factory_path=factory_path)


def _check_factory_options(factory: Optional[str], factory_path: Optional[Path]) -> None:
    if factory_path is not None and factory is None:
        _fail(_OptionError("--factory-path only applies with --factory (the model's factory, 'package.module:function')."))


@app.command("train")
def train_cmd(
    data: str = typer.Option(..., "--data", help="Training data: an embedded name (digits:train, breast-cancer, "
                             "synthetic:n=1000,d=20) or a .csv/.npz file."),
    model: Optional[str] = typer.Option(None, "--model", help="Architecture: logreg (default), mlp, cnn, resnet18, "
                                        "rescnn or vit; or your own with --factory."),
    out: Path = typer.Option(..., "--out", help="Where to write the model file."),
    l2: Optional[float] = typer.Option(None, help="L2 strength of the summed objective (default 1.0; with --factory, "
                                       "the factory's wrapped model's own, else 0)."),
    epochs: int = typer.Option(10, help="Epochs (mlp, cnn)."),
    lr: float = typer.Option(1e-3, help="Learning rate (mlp, cnn)."),
    seed: int = typer.Option(0, help="Initialisation and shuffling seed."),
    factory: Optional[str] = typer.Option(None, "--factory", help=_FACTORY_HELP + " A plain module is wrapped for the "
                                          "data (its classes and example shape)."),
    factory_path: Optional[Path] = typer.Option(None, "--factory-path", help=_FACTORY_PATH_HELP),
) -> None:
    """Train a model on a dataset and save it (with its config and training recipe).

    Your own PyTorch model: `unlearnkit train --factory mynets:make_net --factory-path src --data train.csv --out net.pt`; the file then loads with the same --factory (`unlearnkit unlearn --factory mynets:make_net --weights net.pt ...`).
    """
    from unlearnkit import data as data_mod
    from unlearnkit import models, save_model
    from unlearnkit.models.factory import from_factory
    from unlearnkit.training import MAX_EPOCHS, TrainConfig, accuracy, train

    _check_factory_options(factory, factory_path)
    if factory is not None and model is not None:
        _fail(_OptionError("Give --model (a zoo architecture) or --factory (your own), not both."))
    if l2 is not None:
        _check_number("--l2", l2)
    _check_number("--lr", lr, positive=True)
    if epochs < 1:
        _fail(_OptionError(f"--epochs must be >= 1; got {epochs}."))
    if epochs > MAX_EPOCHS:
        _fail(_OptionError(f"--epochs must be at most {MAX_EPOCHS:,}; got {epochs}."))
    _check_seed(seed)
    _check_out(out)
    try:
        ds = data_mod.load(data)
        if factory is not None:
            net = from_factory(factory, ds, search_path=factory_path, l2=l2)
        else:
            net = models.for_data(model or "logreg", ds, l2=1.0 if l2 is None else l2)
        with console.status(escape(_plain(f"training {factory or model or 'logreg'} on {ds.name} ({len(ds)} rows)"))):
            trained = train(net, ds, config=TrainConfig(epochs=epochs, lr=lr, seed=seed))
        save_model(trained, out, metadata={"data": data, "data_fingerprint": ds.fingerprint()}, user_path=True)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"saved {_plain(out)} (training accuracy {accuracy(trained, ds):.4f})", markup=False, highlight=False)


@app.command()
def unlearn(
    model: Optional[Path] = typer.Option(None, "--model", help="Model file written by `unlearnkit train` or "
                                         "save_model(); for your own module use --factory and --weights instead."),
    data: str = typer.Option(..., "--data", help="The data the model was trained on (name or file)."),
    changes: Path = typer.Option(..., "--changes", help="Change set (JSON, see Changes.to_json)."),
    method: str = typer.Option("second-order", "--method", help="Unlearning method (see `unlearnkit methods`)."),
    out: Path = typer.Option(..., "--out", help="Where to write the unlearned model."),
    param: list[str] = typer.Option([], "--param", help="Method hyperparameter key=value (repeatable)."),
    compare: bool = typer.Option(False, "--compare-retrain", help="Also retrain and report the distance."),
    factory: Optional[str] = typer.Option(None, "--factory", help=_FACTORY_HELP + " Use with --weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights of the --factory model: a file written by "
                                           "torch.save(module.state_dict(), FILE), or a model file unlearnkit wrote for it."),
    factory_path: Optional[Path] = typer.Option(None, "--factory-path", help=_FACTORY_PATH_HELP),
) -> None:
    """Apply a change set to a trained model and save the unlearned model.

    Your own PyTorch model: name the function that builds it (--factory) and its weights (--weights), e.g. `unlearnkit unlearn --factory mynets:make_net --factory-path src --weights net.pt --data train.csv --changes c.json --method ft --out unlearned.pt`.

    The weights are checked against the module the factory builds (names, shapes, dtypes) before they are loaded, and read with the same safety checks as model files. Reading the unlearned file back needs the same --factory (e.g. `unlearnkit evaluate --factory ...`).
    """
    from unlearnkit import Changes, save_model
    from unlearnkit import data as data_mod
    from unlearnkit.api import unlearn as unlearn_fn
    from unlearnkit.demo import rel_distance
    from unlearnkit.training import accuracy, retrain

    _check_factory_options(factory, factory_path)
    if factory is not None and (weights is None or model is not None):
        _fail(_OptionError("--factory takes its weights from --weights FILE (a state_dict file or a model file of that "
                           "model), not from --model; give --factory with --weights."))
    if factory is None and weights is not None:
        _fail(_OptionError("--weights needs --factory 'package.module:function' (the code that builds the module)."))
    if model is None and weights is None:
        _fail(_OptionError("Give the model: --model FILE (a model file), or --factory 'package.module:function' "
                           "with --weights FILE (your own module)."))
    _check_out(out)
    source = model if model is not None else weights
    try:
        net = _load_net(source, factory, factory_path)
        ds = data_mod.load(data)
        fingerprint = getattr(net, "metadata", {}).get("data_fingerprint")
        if fingerprint and fingerprint != ds.fingerprint():
            err.print(f"[yellow]warning:[/] {escape(_plain(data))} differs from the data {escape(_plain(source))} was trained on; "
                      "influence updates assume the training data.")
        ch = Changes.load(changes)
        with console.status(escape(_plain(f"{method}: unlearning {ch!r}"))):
            result = unlearn_fn(net, ds, ch, method=method, **_parse_params(param))
        save_model(result.model, out, metadata={**getattr(net, "metadata", {}), "unlearned": result.to_dict()},
                   user_path=True)
        table = Table(title=Text(_plain(f"{method} on {ds.name}")))
        table.add_column("quantity")
        table.add_column("value", justify="right")
        table.add_row("affected points", str(result.n_affected))
        table.add_row("time (s)", _fmt(result.seconds, 3))
        table.add_row("per-sample gradients", str(result.per_sample_gradients))
        table.add_row("accuracy on corrected data", _fmt(accuracy(result.model, ch.apply(ds))))
        if compare:
            with console.status("retraining for comparison"):
                ref = retrain(net, ds, ch)
            table.add_row("rel. distance to retrained", _fmt(rel_distance(result.model, ref)))
        console.print(table)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"saved {_plain(out)}", markup=False, highlight=False)


@app.command("methods")
def methods_cmd(name: Optional[str] = typer.Argument(None, help="Describe one method.")) -> None:
    """List the unlearning methods, or describe one."""
    from unlearnkit import methods as registry

    try:
        if name:
            console.print(registry.describe(name), markup=False, highlight=False)
            return
        for n in registry.names():
            console.print(f"[bold]{escape(n)}[/]: {escape(registry.info(n).summary)}", highlight=False)
    except UnlearnKitError as exc:
        _fail(exc)


_FORMATS = ("table", "markdown", "csv", "json")


@app.command()
def evaluate(
    original: Path = typer.Option(..., "--original", help="The model before unlearning (model file)."),
    unlearned: Path = typer.Option(..., "--unlearned", help="The unlearned model (e.g. written by `unlearnkit unlearn`)."),
    data: str = typer.Option(..., "--data", help="The training data of the original model (name or file)."),
    changes: Path = typer.Option(..., "--changes", help="The change set that was unlearned (JSON)."),
    retrained: Optional[Path] = typer.Option(None, "--retrained", help="Model retrained on the corrected data; "
                                             "if omitted, the original's recipe is retrained here (and timed)."),
    test: Optional[str] = typer.Option(None, "--test", help="Test data (name or file), e.g. digits:test."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data (name or file)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metric names (default: every cheap "
                                          "metric the inputs allow; see `unlearnkit metrics`)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table (in --format, json for table) here."),
    seed: int = typer.Option(123, help="Seed of the attacks' shuffles and cross-validation."),
    factory: Optional[str] = typer.Option(None, "--factory", help=_FACTORY_HELP + " Then --original, --unlearned and "
                                          "--retrained are weights of that module: state_dict files or model files "
                                          "unlearnkit wrote for it."),
    factory_path: Optional[Path] = typer.Option(None, "--factory-path", help=_FACTORY_PATH_HELP),
) -> None:
    """Evaluate an unlearned model against the original and the retrained one, metric by metric.

    Your own PyTorch model: name the function that builds it, e.g. `unlearnkit evaluate --factory mynets:make_net --factory-path src --original net.pt --unlearned unlearned.pt --retrained retrained.pt --data train.csv --changes c.json`.

    Without --retrained the original is retrained here, which needs its training recipe: a model file unlearnkit wrote after training it (`unlearnkit train --factory ...`), not a bare state_dict.
    """
    from unlearnkit import Changes
    from unlearnkit import data as data_mod
    from unlearnkit.metrics import Costs, EvalSplits
    from unlearnkit.metrics import evaluate as evaluate_fn
    from unlearnkit.metrics import info as metric_info
    from unlearnkit.training import retrain

    if fmt not in _FORMATS:
        _fail(ValueError(f"--format must be one of {', '.join(_FORMATS)}, got {fmt!r}."))
    _check_seed(seed)
    _check_factory_options(factory, factory_path)
    if out is not None:
        _check_out(out)
    try:
        names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
        for name in names or ():
            if metric_info(name).cost == "expensive":  # an unknown name fails here too, before any work
                raise MetricError(f"Metric {name!r} needs shadow models or a canary, which the command line cannot "
                                  "build; use unlearnkit.metrics.evaluate(..., shadow=..., method=...) from Python.")
        orig = _load_net(original, factory, factory_path)
        unl = _load_net(unlearned, factory, factory_path)
        ds = data_mod.load(data)
        val_ds = data_mod.load(val) if val else None
        test_ds = data_mod.load(test) if test else None
        for option, d in (("--data", ds), ("--val", val_ds), ("--test", test_ds)):
            for which, m in (("--original", orig), ("--unlearned", unl)):
                if d is not None:
                    _check_fits(m, d, f"the {which} model", option)
        ch = Changes.load(changes)
        splits = EvalSplits.from_changes(ds, ch, val=val_ds, test=test_ds)
        info = getattr(unl, "metadata", {}).get("unlearned") or {}
        costs = {"unlearned": Costs.of(info) if "seconds" in info else None}
        if retrained is not None:
            ref = _load_net(retrained, factory, factory_path)
            _check_fits(ref, ds, "the --retrained model", "--data")
        else:
            with console.status("retraining on the corrected data (the reference)"):
                ref = retrain(orig, ds, ch)
            costs["retrained"] = Costs(ref.train_seconds)
        with console.status("evaluating") as status:
            table = evaluate_fn(orig, unl, ref, splits, names, costs={k: v for k, v in costs.items() if v},
                                seed=seed, progress=lambda i, n, name: status.update(f"evaluating {name} ({i}/{n})"))
    except UnlearnKitError as exc:
        _fail(exc)
    text = {"markdown": table.to_markdown, "csv": table.to_csv, "json": table.to_json}.get(fmt)
    if text is None:
        _print_metric_table(table)
    else:
        console.print(text(), markup=False, highlight=False, soft_wrap=True, end="")
    if retrained is None and "rte" in table and fmt == "table":
        console.print("rte: unlearning time as recorded by `unlearnkit unlearn`, retraining timed by this command "
                      "(two processes; compare with care).", highlight=False)
    if out is not None:
        from unlearnkit.atomic import atomic_write

        body = (text or table.to_json)()
        try:
            atomic_write(out, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"), user_path=True)
        except UnlearnKitError as exc:
            _fail(exc)
        console.print(f"wrote {out}", markup=False)


def _print_metric_table(table) -> None:
    from unlearnkit.metrics.evaluate import direction

    from rich import box

    view = Table(title="unlearning evaluation (ideal: the retrained model's value, or the stated target)",
                 title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("metric", "better", "original", "unlearned", "retrained"):
        view.add_column(col, justify="left" if col in ("metric", "better") else "right", no_wrap=True)
    for row in table:
        cells = []
        for subject in ("original", "unlearned", "retrained"):
            value, interval = row.value(subject), row.intervals.get(subject)
            cell = _fmt(value) if value is not None else "-"
            if interval:
                cell += f"\n[{interval[0]:.3f}, {interval[1]:.3f}]"
            cells.append(cell)
        view.add_row(row.metric, direction(row), *cells)
    console.print(view)


@app.command("metrics")
def metrics_cmd(
    name: Optional[str] = typer.Argument(None, help="Describe one metric."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the metrics page (docs/metrics.md)."),
) -> None:
    """List the evaluation metrics with their direction, or describe one."""
    from unlearnkit import metrics as registry

    if markdown:
        typer.echo(registry.markdown(), nl=False)
        return
    try:
        if name:
            console.print(registry.describe(name), markup=False, highlight=False)
            return
        for n in registry.names():
            meta = registry.info(n)
            cost = " (expensive)" if meta.cost == "expensive" else ""
            console.print(f"[bold]{n}[/] ({meta.direction}{cost}): {meta.summary}", highlight=False)
    except UnlearnKitError as exc:
        _fail(exc)


# ---------------------------------------------------------------------------- ledger
ledger_app = typer.Typer(no_args_is_help=True, help="A verifiable record of certified unlearning requests for a "
                         "logistic-regression model (init, apply, history, verify, head, export, refine).")
app.add_typer(ledger_app, name="ledger")

_KEY_FILE_HELP = ("File holding the ledger's secret HMAC key (default: $UNLEARNKIT_LEDGER_KEY; no key if neither). "
                  "Keep it outside the ledger folder.")


def _ledger_key(key_file: Optional[Path], path: Path):
    from unlearnkit.ledger import read_key

    return read_key(key_file, ledger=path)


def _plain(text) -> str:
    """User text made safe for the terminal: non-printable characters (ESC, other control
    characters, line separators) shown as Python escapes instead of reaching the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _open_ledger(path: Path, key_file: Optional[Path] = None):
    from unlearnkit.ledger import Ledger

    return Ledger(path, key=_ledger_key(key_file, path))


def _print_certificate(cert) -> None:
    table = Table(title="certificate", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    d = cert.to_dict()
    for key in ("epsilon", "delta", "sigma", "budget", "residual_bound", "worst_case_bound", "cumulative_bound",
                "remaining", "epsilon_spent", "exact_residual", "retrained"):
        table.add_row(key, _fmt(d[key]) if not isinstance(d[key], bool) else str(d[key]))
    console.print(table)


@ledger_app.command("init")
def ledger_init(
    path: Path = typer.Argument(..., help="New folder for the ledger."),
    data: str = typer.Option(..., "--data", help="Training data: an embedded name or a .csv/.npz file (dense)."),
    l2: float = typer.Option(1.0, help="L2 strength of the summed objective (> 0)."),
    epsilon: float = typer.Option(1.0, help="Certified epsilon."),
    delta: float = typer.Option(1e-4, help="Certified delta."),
    sigma: Optional[float] = typer.Option(None, help="Loss-perturbation noise (default 1; or give --budget)."),
    budget: Optional[float] = typer.Option(None, help="Largest cumulative gradient residual to certify (sets sigma)."),
    feature_bound: Optional[float] = typer.Option(None, help="R with ||x|| <= R for every row (default: the largest row norm)."),
    bound: str = typer.Option("data", help="Which bound the budget spends: data (data-dependent) or worst (worst case)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the noise b (default: a secret random seed)."),
    reason: str = typer.Option("initial training", help="Recorded with the first entry."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP + " With a key, every entry carries an HMAC."),
) -> None:
    """Train a certified (loss-perturbed) logistic regression and start its ledger."""
    from unlearnkit import data as data_mod
    from unlearnkit.errors import LedgerError
    from unlearnkit.influence.certified import CertifiedSpec
    from unlearnkit.ledger import Ledger
    from unlearnkit.models import LogisticRegression

    try:
        if path.exists() and not path.is_dir():
            raise LedgerError(f"{path} exists and is not a folder; give the path of a new (or empty) folder for the ledger.")
        key = _ledger_key(key_file, path)
        ds = data_mod.load(data)
        spec = CertifiedSpec(epsilon=epsilon, delta=delta, sigma=sigma, budget=budget, feature_bound=feature_bound, bound=bound)
        model = LogisticRegression(n_features=ds.n_features, n_classes=ds.n_classes, l2=l2)
        with console.status(f"training a certified model on {ds.name} ({len(ds)} rows)"):
            ledger = Ledger.create(path, ds, model=model, spec=spec, seed=seed, reason=reason, key=key)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"ledger created at {_plain(path)} (model file {ledger.model_file.name})", markup=False, highlight=False)
    console.print(f"head: {ledger.head()}  (keep it outside the folder; check with `ledger verify --expect-head`)",
                  markup=False, highlight=False)
    _print_certificate(ledger.certificate())


@ledger_app.command("apply")
def ledger_apply(
    path: Path = typer.Argument(..., help="The ledger folder."),
    changes: Path = typer.Option(..., "--changes", help="Change set (JSON, see Changes.to_json); row ids of the original data."),
    reason: str = typer.Option("", "--reason", help="Why (recorded with the request)."),
    exact_residual: bool = typer.Option(False, "--exact-residual", help="Also measure the residual (a pass over the data)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP),
) -> None:
    """Unlearn a change set on top of every earlier request, and record it."""
    from unlearnkit import Changes

    try:
        ledger = _open_ledger(path, key_file)
        ch = Changes.load(changes)
        result = ledger.apply(ch, reason=reason, exact_residual=exact_residual)
    except UnlearnKitError as exc:
        _fail(exc)
    what = "retrained (budget exhausted)" if result.certificate.retrained else "second-order update"
    head = ledger.committed  # this process's entry, even if another writer committed after it
    console.print(f"entry {head.seq}: {what}, {result.n_affected} affected rows, {result.seconds * 1000:.1f} ms; "
                  f"model file {ledger.model_file.name}", markup=False, highlight=False)
    console.print(f"head: {head}", markup=False, highlight=False)
    _print_certificate(result.certificate)


@ledger_app.command("refine")
def ledger_refine(
    path: Path = typer.Argument(..., help="The ledger folder."),
    target: Optional[float] = typer.Option(None, help="Residual to reach (default: what retraining reaches)."),
    max_steps: int = typer.Option(50, help="Newton steps at most."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP),
) -> None:
    """Newton steps on the corrected data until the residual meets a target (frees budget)."""
    try:
        ledger = _open_ledger(path, key_file)
        info = ledger.refine(target, max_steps=max_steps)
    except UnlearnKitError as exc:
        _fail(exc)
    head = info["head"]  # this process's entry, even if another writer committed after it
    console.print(f"entry {head.seq}: {info['steps']} Newton steps ({info['hessian_refreshes']} Hessian refreshes), "
                  f"residual {info['residual']:.3g} (target {info['target']:.3g}{'' if info['reached'] else ', NOT reached'})",
                  markup=False, highlight=False)
    console.print(f"head: {head}", markup=False, highlight=False)
    _print_certificate(ledger.certificate())


@ledger_app.command("history")
def ledger_history(
    path: Path = typer.Argument(..., help="The ledger folder."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Every entry: training, requests, retrainings, refinements."""
    from unlearnkit.errors import LedgerError

    if fmt not in ("table", "json"):
        _fail(LedgerError(f"--format must be table or json, got {fmt!r}."))
    try:
        entries = _open_ledger(path).history()
    except UnlearnKitError as exc:
        _fail(exc)
    if fmt == "json":
        typer.echo(json.dumps(entries, indent=1, default=str))  # ensure_ascii: control characters are escaped
        return
    table = Table(title=Text(f"ledger {_plain(path)}"), title_justify="left")
    for col in ("#", "kind", "time (UTC)", "rows", "bound", "cumulative", "eps spent", "params after", "reason"):
        table.add_column(col, justify="left" if col in ("kind", "reason", "time (UTC)", "params after") else "right",
                         overflow="fold" if col == "reason" else "ellipsis")  # a reason is never cut short
    for e in entries:
        cert = e["certificate"]
        cells = (str(e["seq"]), e["kind"], str(e["time"])[:19], str(e["n_affected"]), _fmt(e["residual_bound"]),
                 _fmt(e["cumulative_bound"]), _fmt(cert.get("epsilon_spent")), str(e["params_after"])[:12], e["reason"])
        table.add_row(*(Text(_plain(c)) for c in cells))  # Text: never read as markup
    console.print(table)


@ledger_app.command("verify")
def ledger_verify(
    path: Path = typer.Argument(..., help="The ledger folder."),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Recompute every entry, re-training the first one."),
    expect_head: Optional[str] = typer.Option(None, "--expect-head", help="The head (SEQ:HASH, from `ledger head`) "
                                              "kept outside the folder: fail unless the ledger ends exactly there."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP + " With a key, every HMAC is checked."),
) -> None:
    """Check hashes, the chain, the model file and the data; replay the history. Exit 1 on problems."""
    from unlearnkit.ledger import Head

    try:
        if expect_head is not None:
            Head.parse(expect_head)
        ledger = _open_ledger(path, key_file)
    except UnlearnKitError as exc:
        _fail(exc)
    with console.status("verifying"):
        report = ledger.verify(replay=replay, expect_head=expect_head)
    for check in report.checks:
        console.print(f"checked: {check}", markup=False, highlight=False)
    for problem in report.problems:
        err.print("[bold red]problem:[/] ", end="")
        err.print(_plain(problem), markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(code=1)
    console.print(f"ok: {report.entries} entries" + (", replayed" if report.replayed else "") + f"; head {report.head}",
                  markup=False, highlight=False, soft_wrap=True)


@ledger_app.command("head")
def ledger_head(path: Path = typer.Argument(..., help="The ledger folder.")) -> None:
    """Print the latest entry as SEQ:HASH (its chained hash). Keep it outside the folder, e.g. in an
    audit log; `ledger verify --expect-head SEQ:HASH` then detects removed or rewritten entries."""
    try:
        head = _open_ledger(path).head()
    except UnlearnKitError as exc:
        _fail(exc)
    typer.echo(str(head))


@ledger_app.command("export")
def ledger_export(
    path: Path = typer.Argument(..., help="The ledger folder."),
    out: Path = typer.Option(..., "--out", help="JSON file to write (outside the ledger folder)."),
) -> None:
    """Write the ledger (metadata, every entry, the head, the current certificate) as JSON."""
    from unlearnkit.atomic import check_target

    try:
        check_target(out, user_path=True)
        _open_ledger(path).export(out)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"wrote {_plain(out)}", markup=False, highlight=False)


# ---------------------------------------------------------------------------- bench
bench_app = typer.Typer(no_args_is_help=True, help="The benchmark runner: tuned, multi-seed, resumable, local or Ray "
                        "(run, status, report).")
app.add_typer(bench_app, name="bench")


@bench_app.command("run")
def bench_run(
    config: str = typer.Argument(..., help="A TOML config file or a preset: quick, deepunlearn-fmnist, features-labels."),
    out: Path = typer.Option(..., "--out", help="Run folder (results.sqlite, config, report); rerun it to resume."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set search.trials=4 --set seeds.eval=[0,1]."),
    executor: str = typer.Option("local", help="local (worker processes) or ray."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (local) or CPUs of a local Ray instance (default: every core, at most 8; allowed: 1 to 4 per core, at most 256)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (auto, ray://host:10001); only with --executor ray."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the cells that failed before again."),
    report: bool = typer.Option(True, help="Write the report (Markdown, HTML, CSV) into the run folder at the end."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-job log lines (progress bars only)."),
) -> None:
    """Run a benchmark, or resume one in the same folder (Ctrl-C or SIGTERM stops cleanly)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from unlearnkit import bench

    try:
        cfg = bench.load_config(config, set_)
        bench.runner.check_run_options(out, executor=executor, workers=workers)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"{_plain(cfg.name)}: {len(cfg.problems)} problem(s), {len(cfg.methods)} method(s), "
                  f"{len(cfg.eval_seeds)} evaluation seed(s), {cfg.trials} trials per study -> {out}", markup=False)
    with Progress(TextColumn("{task.description:12s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        tasks: dict = {}

        def progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        def log(msg):
            if not quiet:
                bars.console.print(_plain(msg), markup=False, highlight=False)

        stop = []

        def terminate(signum, frame):  # `kill` (SIGTERM) stops as cleanly as Ctrl-C
            stop.append(signum)  # asked again between results, should this raise land where it is lost
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        previous_int = signal.signal(signal.SIGINT, terminate)
        try:
            summary = bench.run(cfg, out, executor=executor, workers=workers, address=address,
                                retry_failed=retry_failed, progress=progress, log=log, should_stop=lambda: bool(stop))
        except KeyboardInterrupt:
            bars.stop()
            err.print(f"stopped: finished jobs are stored in {out}; rerun the same command to resume.", markup=False)
            raise typer.Exit(code=130)
        except UnlearnKitError as exc:
            bars.stop()
            _fail(exc)
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    console.print(f"done in {summary.seconds:.0f}s: {summary.counts['cells']} cells "
                  f"({summary.failed_cells} failed), {summary.counts['trials']} trials, {summary.counts['refs']} reference pairs",
                  markup=False)
    if report:
        try:
            paths = bench.write_report(out)
        except UnlearnKitError as exc:
            _fail(exc)
        console.print("report: " + ", ".join(str(p) for p in paths if p.suffix in (".md", ".html", ".csv")), markup=False)


@bench_app.command("status")
def bench_status(out: Path = typer.Argument(..., help="A run folder.")) -> None:
    """What a run folder holds: done against the grid, failures, the runs so far."""
    from unlearnkit import bench

    try:
        st = bench.status(out)
    except UnlearnKitError as exc:
        _fail(exc)
    table = Table(title=escape(f"{_plain(st['name'])} in {_plain(out)}"), title_justify="left")
    table.add_column("stage")
    table.add_column("done", justify="right")
    table.add_row("references", f"{st['references'][0]} / {st['references'][1]}")
    table.add_row("studies", f"{st['studies'][0]} / {st['studies'][1]}")
    table.add_row("trials", f"{st['trials']} ({st['trials_per_study']} per searched study)")
    table.add_row("cells", f"{st['cells'][0]} / {st['cells'][1]}")
    console.print(table)
    for problem, method, seed, error in st["failed_cells"]:
        console.print(_plain(f"failed: {problem} {method} seed {seed}: {error}"), markup=False, highlight=False)
    for r in st["runs"]:
        console.print(f"run {r['id']}: {r['status']} ({r['executor']})", markup=False)
    console.print("complete" if st["complete"] else "incomplete: rerun `unlearnkit bench run` with the same config and --out")


@bench_app.command("report")
def bench_report(
    out: Path = typer.Argument(..., help="A run folder."),
    to: Optional[Path] = typer.Option(None, "--to", help="Write the report here instead of the run folder."),
    formats: str = typer.Option("md,html,csv", "--format", help="Comma-separated: md, html, csv, json."),
) -> None:
    """Tables, ranks (Friedman test, critical-difference plot), Pareto front: Markdown, HTML, CSV."""
    from unlearnkit import bench

    try:
        paths = bench.write_report(out, to, tuple(f.strip() for f in formats.split(",") if f.strip()))
    except UnlearnKitError as exc:
        _fail(exc)
    for p in paths:
        console.print(f"wrote {p}", markup=False)


def main() -> None:
    """Run the command line. Named errors are reported by each command (``error:``, exit code 2).

    As a last line of defence, three kinds of exception that only hostile or broken input
    produces (input nested too deeply, bytes in the wrong text encoding, a request for more
    memory than the machine has) are reported the same way instead of as a traceback.
    Programming errors are not caught: they keep their traceback.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RecursionError:
        _report_input_error("an input is nested too deeply (e.g. JSON lists inside lists without end)")
    except UnicodeError as exc:
        _report_input_error(f"an input is not valid text in the expected encoding ({exc}); save text files as UTF-8")
    except MemoryError:
        _report_input_error("the input asks for more memory than this machine has; give a smaller input")


def _report_input_error(message: str) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(message + ".", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
