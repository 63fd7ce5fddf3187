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
    fmt: str = typer.Option("table", "--format", callback=lambda value: _check_format(value, ("table", "json")),
                            help="table or json (one object: every row, the run's times and the machine; the steps "
                                 "go to stderr)."),
) -> None:
    """Plant a leaky feature and flipped labels in embedded data, then unlearn them three ways."""
    import torch

    from unlearnkit import demo as demo_mod

    _check_seed(seed)
    if cnn_epochs < 1:
        _fail(_OptionError(f"--cnn-epochs must be >= 1; got {cnn_epochs}."))
    torch.manual_seed(seed)
    shown = console if fmt == "table" else err
    with shown.status("starting") as status:
        def step(message: str) -> None:
            status.update(message)
            shown.print(message, markup=False, highlight=False)

        report = demo_mod.run_measured(seed=seed, step=step, cnn_epochs=cnn_epochs)
    if fmt == "json":
        from dataclasses import asdict

        typer.echo(_json_text(asdict(report)))
        return
    rows = report.rows
    for problem in dict.fromkeys(r.problem for r in rows):
        table = Table(title=problem, title_justify="left")
        for col in ("method", "test acc", "acc corrected pts", "dist to retrain", "time s", "CPU s", "speed-up"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in (r for r in rows if r.problem == problem):
            speed = f"{r.speedup:.1f}x" if r.speedup == r.speedup else "-"
            table.add_row(r.method, _fmt(r.test_acc), _fmt(r.corrected_acc), _fmt(r.rel_distance),
                          _fmt(r.seconds, 3) if r.seconds else "-", _fmt(r.cpu_seconds, 3), speed)
        console.print(table)
        for r in rows:
            if r.problem == problem and r.note:
                console.print(f"  {r.method}: {r.note}")
    console.print("dist to retrain = ||theta - theta_retrain|| / ||theta_retrain|| (retraining is the gold standard;\n"
                  "for the non-convex CNN, retraining from scratch lands elsewhere in parameter space, so compare accuracies).")
    m = report.machine
    console.print(f"time s: wall-clock seconds of each call after a warm-up; CPU s: the process's CPU time in it (all "
                  f"threads). Whole run: {report.wall_seconds:.1f} s wall, {report.cpu_seconds:.1f} s CPU.\n"
                  f"Machine: {m['cpu']}, {m['cores']} logical cores ({m['usable_cores']} usable), torch "
                  f"{m['torch']} with {m['torch_threads']} threads, device {m['device']}.", markup=False, highlight=False)


@app.command("scenario")
def scenario_cmd(
    name: str = typer.Argument(..., help="sensitive-features, canary, label-poisoning or backdoor ('list' to list them)."),
    size: str = typer.Option("tiny", help="tiny (the default: the mechanics on tiny data, about a minute of CPU time "
                             "each, the tuned baselines included) or full (minutes to hours: see docs/scenarios.md)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; every method runs on the same seeds."),
    out: Path = typer.Option(Path("scenario-reports"), help="Folder for <name>.md, <name>.png and <name>.json."),
    device: Optional[str] = typer.Option(None, help="torch device for training and unlearning (default: CPU)."),
    threads: int = typer.Option(1, help="torch CPU threads. 1 is fastest for these small models; more threads than "
                                "idle cores make every step wait for the others."),
    fmt: str = typer.Option("table", "--format", help="table, or json (the per-method means over seeds, the goals and "
                            "the report's paths, as one object; progress goes to standard error)."),
    tuning_seeds: Optional[str] = typer.Option(None, "--tuning-seeds", help="Comma-separated seeds the tuned baselines "
                                               "are tuned on, disjoint from --seeds (default 1000)."),
    trials: Optional[int] = typer.Option(None, help="Search trials per problem and tuned baseline (default: 2 at tiny, "
                                         "8 at full)."),
    baselines: str = typer.Option("ft,ng+,scrub,salun,l1-sparse,ssd,msg", help="Comma-separated deep-unlearning "
                                  "methods tuned on the tuning seeds and evaluated as '<method> \\[tuned]' rows, or "
                                  "'none'. Every trial is stored in <out>/tuning.sqlite."),
    problem: Optional[str] = typer.Option(None, "--problem", help="Only the problems whose name contains this text "
                                          "(e.g. 'targeted'); the others are not built."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Only these rows besides the original and "
                                          "retraining, as comma-separated labels (e.g. 'second-order [kfac],ft [tuned],sisa')."),
) -> None:
    """Run one of the paper's scenarios end to end and write its report (Markdown, PNG plot, JSON).

    --size tiny (the default) is a first look at each scenario in under a minute; --size full reproduces the published reports."""
    fmt = fmt.strip().lower()
    if fmt not in ("table", "json"):
        raise typer.BadParameter(f"--format must be table or json, got {fmt!r}.")
    from unlearnkit import scenarios
    from unlearnkit.scenarios.registry import split_labels

    if name == "list":
        if fmt == "json":
            typer.echo(_json_text([{"name": s.name, "summary": s.summary} for s in scenarios.SCENARIOS.values()]))
            return
        for spec in scenarios.SCENARIOS.values():
            console.print(f"{spec.name:20s} {spec.summary}", markup=False)
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    try:
        tuning_list = None if tuning_seeds is None else [int(s) for s in tuning_seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--tuning-seeds expects comma-separated integers, got {tuning_seeds!r}") from None
    baseline_list = () if baselines.strip().lower() == "none" else tuple(m.strip() for m in baselines.split(",") if m.strip())
    try:
        import time

        begun = time.perf_counter()
        with err.status("starting") as status:
            def step(message: str) -> None:
                status.update(message)
                err.print(f"{time.perf_counter() - begun:6.1f}s  {message}", markup=False, highlight=False)

            result = scenarios.run(name, size=size, seeds=seed_list, out=out, device=device, threads=threads,
                                   progress=False, step=step, tuning_seeds=tuning_list, trials=trials,
                                   baselines=baseline_list, only=problem,
                                   methods=None if methods is None else split_labels(methods))
    except UnlearnKitError as exc:
        _fail(exc)
    from unlearnkit.scenarios.report import NOOP_FLAG, noop_methods

    summary = result.aggregate()
    noop = noop_methods(result.rows)
    paths = {ext: str(out / f"{name}.{ext}") for ext in ("md", "png", "json")}
    if fmt == "json":
        for e in summary:
            e["noop"] = (e["problem"], e["method"]) in noop
        typer.echo(_json_text({"scenario": name, "size": size, "seeds": seed_list, "seconds": result.seconds,
                               "summary": summary, "goals": [g.to_dict() for g in result.goals], "report": paths,
                               "tuning": result.tuning}))
        return
    efficacy = list(dict.fromkeys([*(k for r in result.rows for k in r.efficacy), *result.derived_keys()]))
    for problem in dict.fromkeys(e["problem"] for e in summary):
        table = Table(title=problem, title_justify="left")
        for col in ("method", "test acc", "distance", *efficacy, "seconds", "speed-up"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for e in (e for e in summary if e["problem"] == problem):
            label = e["method"] + (f" ({NOOP_FLAG})" if (problem, e["method"]) in noop else "")
            if e.get("failed") == e["runs"]:
                table.add_row(escape(label), "failed", *[""] * (3 + len(efficacy)))
                continue
            speed = "-" if e["method"] == "original" or e.get("speedup") is None else f"{e['speedup']:.1f}x"
            table.add_row(escape(label), _fmt(e.get("test_accuracy")), _fmt(e.get("distance")), *[_fmt(e.get(k)) for k in efficacy],
                          _fmt(e.get("seconds"), 3), speed)
        console.print(table)
    for goal in result.goals:
        console.print(f"{'MET' if goal.met else 'MISSED'}: {goal.name}. {goal.detail}", markup=False)
    console.print(f"report: {paths['md']} (+ .png, .json); {result.seconds:.0f} s", markup=False)


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


_LABEL_COLUMN_HELP = ("CSV data: the column holding the labels, by header name or 0-based index (default: the column "
                      "named 'label'). Text labels are class names, coded in sorted order.")
_ID_COLUMN_HELP = ("CSV data: the column holding integer row ids, by header name or 0-based index (default: the row "
                   "number, 0 for the first data row). Change sets name rows by these ids.")
_STORED_COLUMNS = " Stored with the model by `train`: give it again only if you read the file differently (refused)."


def _column_option(value: Optional[str]):
    """A --label-column / --id-column value: an integer is an index, anything else a header name."""
    from unlearnkit.data.preprocess import parse_column

    return parse_column(value)


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
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP),
    standardize: bool = typer.Option(False, "--standardize", help="Standardise every feature column with the training "
                                     "data's mean and std (a constant column: std 1); stored with the model and "
                                     "applied by unlearn and evaluate, and to the values of feature edits."),
) -> None:
    """Train a model on a dataset and save it (with its config and training recipe).

    The file also records how the data was read and scaled (--label-column, --id-column, the class names of text labels, --standardize): `unlearn` and `evaluate` read and scale their data the same way without the options.

    Your own PyTorch model: `unlearnkit train --factory mynets:make_net --factory-path src --data train.csv --out net.pt`; the file then loads with the same --factory (`unlearnkit unlearn --factory mynets:make_net --weights net.pt ...`).
    """
    from unlearnkit import models, save_model
    from unlearnkit.data.preprocess import METADATA_KEY, Preprocessing, scale_warning
    from unlearnkit.data.sources import is_csv
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
        label_col, id_col = _column_option(label_column), _column_option(id_column)
        raw = Preprocessing().load(data, label_column=label_col, id_column=id_col)
        if is_csv(data):  # the layout is stored, so that unlearn and evaluate read the file the same way
            label_col = "label" if label_col is None else label_col
        prep = Preprocessing.fit(raw, standardize=standardize, label_column=label_col, id_column=id_col)
        problem = None if standardize else scale_warning(raw)
        if problem:
            err.print("[yellow]warning:[/] " + escape(_plain(problem)) + "; train with --standardize (stored with the "
                      "model and applied by unlearn and evaluate): unscaled features make the L2 penalty and the "
                      "curvature-based updates uneven, and an update can land farther from retraining than no update.",
                      highlight=False)
        ds = prep.apply(raw)
        if factory is not None:
            net = from_factory(factory, ds, search_path=factory_path, l2=l2)
        else:
            net = models.for_data(model or "logreg", ds, l2=1.0 if l2 is None else l2)
        with console.status(escape(_plain(f"training {factory or model or 'logreg'} on {ds.name} ({len(ds)} rows)"))):
            trained = train(net, ds, config=TrainConfig(epochs=epochs, lr=lr, seed=seed))
        metadata = {"data": data, "data_fingerprint": ds.fingerprint()}
        if not prep.is_empty:
            metadata[METADATA_KEY] = prep.to_dict()
        if prep.scales:  # lets unlearnkit.unlearn recognise the raw data given without the scaling
            from unlearnkit.data.preprocess import RAW_FINGERPRINT_KEY

            metadata[RAW_FINGERPRINT_KEY] = raw.fingerprint()
        save_model(trained, out, metadata=metadata, user_path=True)
    except UnlearnKitError as exc:
        _fail(exc)
    console.print(f"saved {_plain(out)} (training accuracy {accuracy(trained, ds):.4f})", markup=False, highlight=False)


@app.command()
def unlearn(
    model: Optional[Path] = typer.Option(None, "--model", help="Model file written by `unlearnkit train` or "
                                         "save_model(); for your own module use --factory and --weights instead."),
    data: str = typer.Option(..., "--data", help="The data the model was trained on (name or file)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP + _STORED_COLUMNS),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP + _STORED_COLUMNS),
    changes: Path = typer.Option(..., "--changes", help="Change set (JSON, see Changes.to_json)."),
    method: str = typer.Option("second-order", "--method", help="Unlearning method (see `unlearnkit methods`)."),
    out: Path = typer.Option(..., "--out", help="Where to write the unlearned model."),
    param: list[str] = typer.Option([], "--param", help="Method hyperparameter key=value (repeatable)."),
    compare: bool = typer.Option(False, "--compare-retrain", help="Also retrain and report the distance."),
    factory: Optional[str] = typer.Option(None, "--factory", help=_FACTORY_HELP + " Use with --weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights of the --factory model: a file written by "
                                           "torch.save(module.state_dict(), FILE), or a model file unlearnkit wrote for it."),
    factory_path: Optional[Path] = typer.Option(None, "--factory-path", help=_FACTORY_PATH_HELP),
    val: Optional[str] = typer.Option(None, "--val", help="Held-out rows (name or file) for the methods that use them "
                                      "(the guarded second-order update's held-out test, KDE, SCRUB)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1, and write no --out, when the update made any measure "
                                "worse than the original's, or when the guard rejected it (nothing was unlearned)."),
    check: str = typer.Option("full", "--check", help="Measures before -> after: full (also the passes over all rows: "
                              "accuracy on the corrected data), cheap (the corrected rows and, for a convex model, the "
                              "gradient residual) or off."),
    fmt: str = typer.Option("table", "--format", callback=lambda value: _check_format(value, ("table", "json")),
                            help="table or json (one object with the same numbers)."),
) -> None:
    """Apply a change set to a trained model and save the unlearned model.

    Prints the measures before → after (original → unlearned, → retrained with --compare-retrain): accuracy on the corrected rows and on the corrected data, the gradient residual on the corrected data (convex models), the distance to the retrained model and the time, with the retraining time and the speed-up when compared. A measure the update made worse gets a warning on stderr with the likely cause and the fix; --strict then exits 1 without writing --out (also when the guard rejected the update). With --compare-retrain every measure is judged against the retrained model's value (retraining itself can lower the accuracy on the corrected data); --method retrain is never judged worse.

    Your own PyTorch model: name the function that builds it (--factory) and its weights (--weights), e.g. `unlearnkit unlearn --factory mynets:make_net --factory-path src --weights net.pt --data train.csv --changes c.json --method ft --out unlearned.pt`.

    The weights are checked against the module the factory builds (names, shapes, dtypes) before they are loaded, and read with the same safety checks as model files. Reading the unlearned file back needs the same --factory (e.g. `unlearnkit evaluate --factory ...`).
    """
    from unlearnkit import before_after, save_model
    from unlearnkit.api import unlearn as unlearn_fn
    from unlearnkit.training import retrain

    try:
        before_after.Check.of(check)
    except UnlearnKitError:
        _fail(_OptionError(f"--check must be full, cheap or off; got {check!r}."))
    params = _parse_params(param)
    reserved = sorted(set(params) & {"model", "data", "changes", "method", "val", "device", "check", "retrained"})
    if reserved:
        _fail(_OptionError(f"--param {reserved[0]}=... is not a method hyperparameter: use --method, --val, --check, "
                           f"--compare-retrain and --data, --changes, --model for those (`unlearnkit methods {method}` "
                           "lists the hyperparameters)."))
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
        ds = _model_data(data, net, label_column, id_column)
        fingerprint = getattr(net, "metadata", {}).get("data_fingerprint")
        if fingerprint and fingerprint != ds.fingerprint():
            err.print(f"[yellow]warning:[/] {escape(_plain(data))} differs from the data {escape(_plain(source))} was trained on; "
                      "influence updates assume the training data.")
        ch = _model_changes(changes, net, ds)
        val_ds = _model_data(val, net, label_column, id_column) if val else None
        if val_ds is not None:
            _check_fits(net, val_ds, "the model", "--val")
        ref = None
        if compare:
            if getattr(net, "train_config", None) is None and getattr(net, "train_fn", None) is None:
                raise _OptionError(f"--compare-retrain retrains the model with its training recipe, and "
                                   f"{_plain(source)} has none (a bare state_dict). Train the model with `unlearnkit "
                                   "train` (e.g. `unlearnkit train --factory ... --data ... --out model.pt`, then "
                                   "--weights model.pt), or leave out --compare-retrain and compare later with "
                                   "`unlearnkit evaluate --retrained FILE`.")
            with console.status("retraining for comparison"):
                ref = retrain(net, ds, ch)
        with console.status(escape(_plain(f"{method}: unlearning {ch!r}"))), _quiet(before_after.logger):
            result = unlearn_fn(net, ds, ch, method=method, val=val_ds, check=check, retrained=ref, **params)
        measures = _unlearn_measures(net, result, ref)
        report = _unlearn_report(result, measures, ref, convex=bool(getattr(net, "convex", False)), data_name=ds.name)
        rejected = result.status == "rejected"
        written = not (strict and (report["worse"] or rejected))
        if written:
            save_model(result.model, out, metadata={**getattr(net, "metadata", {}), "unlearned": result.to_dict()},
                       user_path=True)
    except UnlearnKitError as exc:
        _fail(exc)
    report.update(out=str(out), written=written)
    if fmt == "json":
        typer.echo(_json_text(report))
    else:
        _print_unlearn_report(report)
    if result.status != "rejected":
        for name in report["worse"]:
            text = before_after.describe(name, measures[name], convex=report["convex"], method=result.method)
            err.print("[yellow]warning:[/] " + escape(text), highlight=False)
    if not written:
        worse = ", ".join(before_after.LABELS.get(name, name) for name in report["worse"])
        why = ("the guard rejected the update: nothing was unlearned" if rejected
               else f"the update made {escape(worse)} worse")
        err.print(f"not written: {escape(_plain(out))} (--strict, and {why})", highlight=False)
        raise typer.Exit(code=1)
    if fmt != "json":
        console.print(f"saved {_plain(out)}", markup=False, highlight=False)


class _quiet:
    """Raise a logger's level to ERROR for a block (the command prints those warnings itself)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.level = logger, logger.level

    def __enter__(self) -> None:
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)


def _unlearn_measures(net, result, ref) -> dict:
    """Each measure as :func:`unlearnkit.before_after.entry` gives it (before, after, better, worse and, when
    retrained, retrained): the update's check, and the distance to the retrained model when ``ref`` is given."""
    from unlearnkit import before_after
    from unlearnkit.metrics.closeness import relative_distance

    measures = dict(result.diagnostics.get("check", {}))
    if ref is not None:
        m = before_after.entry(relative_distance(net, ref), relative_distance(result.model, ref), "lower",
                               retrained=0.0, exact=result.method in before_after.EXACT_METHODS)
        # retraining a non-convex model lands elsewhere in parameter space: shown, not judged
        worse = m["worse"] and bool(getattr(net, "convex", False))
        measures["distance_to_retrained"] = {"before": m["before"], "after": m["after"], "retrained": 0.0,
                                             "better": "lower", "worse": worse}
    return measures


def _unlearn_report(result, measures: dict, ref, *, convex: bool, data_name: str) -> dict:
    """The numbers `unlearnkit unlearn` prints: each of ``measures`` (:func:`_unlearn_measures`) for the original,
    the unlearned and (when retrained) the retrained model, which way is better and whether the update made it
    worse; times and speed-up."""
    renamed = {"before": "original", "after": "unlearned"}
    measures = {name: {renamed.get(k, k): v for k, v in m.items()} for name, m in measures.items()}
    seconds = {"unlearn": result.seconds}
    if ref is not None:
        seconds["retrain"] = float(ref.train_seconds)
    report = {"method": result.method, "data": data_name, "convex": convex,
              "n_affected": result.n_affected,
              "per_sample_gradients": result.per_sample_gradients, "status": result.status,
              "measures": measures, "seconds": seconds,
              "speedup": seconds["retrain"] / seconds["unlearn"] if ref is not None and seconds["unlearn"] > 0 else None,
              "worse": [name for name, m in measures.items() if m["worse"]]}
    return report


def _print_unlearn_report(report: dict) -> None:
    from unlearnkit.before_after import LABELS

    retrained = report["seconds"].get("retrain") is not None
    table = Table(title=Text(_plain(f"{report['method']} on {report['data']} ({report['n_affected']} affected rows)")))
    table.add_column("measure")
    table.add_column("better", justify="center")
    table.add_column("original", justify="right")
    table.add_column("unlearned", justify="right")
    if retrained:
        table.add_column("retrained", justify="right")
    for name, m in report["measures"].items():
        after = _fmt(m["unlearned"]) + (" (worse)" if m["worse"] else "")
        row = [LABELS.get(name, name), "higher" if m["better"] == "higher" else "lower", _fmt(m["original"]), after]
        table.add_row(*row, *([_fmt(m.get("retrained"))] if retrained else []))
    row = ["time (s)", "lower", "-", _fmt(report["seconds"]["unlearn"], 3)]
    table.add_row(*row, *([_fmt(report["seconds"]["retrain"], 3)] if retrained else []))
    if report["speedup"] is not None:
        table.add_row("speed-up over retraining", "higher", "-", f"{report['speedup']:.1f}x", "1.0x")
    console.print(table)
    if report["status"]:
        console.print(f"status: {report['status']}", highlight=False)
    if "distance_to_retrained" in report["measures"] and not report["convex"]:
        console.print("rel. distance to retrained = ||theta - theta_retrained|| / ||theta_retrained||: shown, not judged, "
                      "for a non-convex model (retraining lands elsewhere in parameter space; compare accuracies).",
                      highlight=False)


# ---------------------------------------------------------------------------- output formats
_FORMATS = ("table", "markdown", "csv", "json")
_FORMAT_ALIASES = {"md": "markdown", "text": "table"}


def _format_help(allowed: tuple[str, ...] = _FORMATS) -> str:
    return ("Output: " + ", ".join(allowed) + ". Tables are never cut when the output is piped; json, markdown and csv "
            "print plain text for other programs.")


def _format_option(allowed: tuple[str, ...] = _FORMATS, help: Optional[str] = None):
    """A ``--format`` option checked while the command line is parsed (before any work). Commands defined above
    this section use ``typer.Option("table", "--format", callback=lambda v: _check_format(v, allowed))``."""
    return typer.Option("table", "--format", callback=lambda value: _check_format(value, allowed),
                        help=help or _format_help(allowed))


def _check_format(value: str, allowed: tuple[str, ...] = _FORMATS) -> str:
    """The format ``value`` names (aliases: md, text), or a usage error listing ``allowed``."""
    normal = _FORMAT_ALIASES.get(value.strip().lower(), value.strip().lower())
    if normal not in allowed:
        raise typer.BadParameter(f"must be one of {', '.join(allowed)}; got {value!r}.")
    return normal


def _json_text(obj) -> str:
    """Strict JSON (NaN and infinities written as null; control characters escaped), for ``typer.echo``."""
    from unlearnkit.metrics.evaluate import _nan_to_none

    return json.dumps(_nan_to_none(obj), indent=1, default=str, allow_nan=False)


def _cell(value, fmt: str = "table") -> str:
    """A cell's text: numbers rounded for reading (table, markdown), in full for csv."""
    if isinstance(value, float):
        return repr(value) if fmt == "csv" else _fmt(value)
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _render(records: list[dict], fmt: str, *, title: str = "", json_obj=None, right: tuple[str, ...] = (),
            columns: Optional[list[str]] = None) -> None:
    """Print ``records`` (one dict per row, same keys) as a rich table, Markdown, CSV or JSON (``json_obj`` if given).

    Everything but ``table`` goes through ``typer.echo``: no wrapping, no markup, nothing cut. Control characters in
    the values are shown escaped in every format (JSON escapes them itself)."""
    columns = columns or (list(records[0]) if records else [])
    if fmt == "json":
        typer.echo(_json_text(records if json_obj is None else json_obj))
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(_cell(r[c], fmt)) for c in columns] for r in records])
        typer.echo(buf.getvalue(), nl=False)
    elif fmt == "markdown":
        def md(value) -> str:
            return _plain(_cell(value)).replace("|", "\\|")

        lines = ([f"**{md(title)}**", ""] if title else []) + ["| " + " | ".join(columns) + " |",
                                                               "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"]
        lines += ["| " + " | ".join(md(r[c]) for c in columns) + " |" for r in records]
        typer.echo("\n".join(lines))
    else:
        table = Table(title=Text(_plain(title)) if title else None, title_justify="left")
        for c in columns:
            table.add_column(c, justify="right" if c in right else "left", overflow="fold")
        for r in records:
            table.add_row(*(Text(_plain(_cell(r[c]))) for c in columns))  # Text: never read as markup
        console.print(table)


@app.command("methods")
def methods_cmd(
    name: Optional[str] = typer.Argument(None, help="Describe one method (nothing, or 'list', lists them)."),
    fmt: str = _format_option(help="table, markdown, csv or json. For one method: table is its description, markdown "
                              "and csv its hyperparameters, json both."),
) -> None:
    """List the unlearning methods (`unlearnkit methods` or `unlearnkit methods list`), or describe one."""
    from unlearnkit import methods as registry

    try:
        if name and name != "list":
            meta = registry.info(name)
            if fmt == "table":
                console.print(registry.describe(name), markup=False, highlight=False)
                return
            params = [{"name": h.name, "type": "/".join(t.__name__ for t in (h.type if isinstance(h.type, tuple) else (h.type,))),
                       "default": h.default, "range": h.range, "source": h.source, "help": h.help}
                      for h in meta.hyperparameters]
            shown = [{**h, "default": repr(h["default"])} for h in params]  # as Python would write it
            _render(shown, fmt, title=f"{name} hyperparameters", columns=["name", "type", "default", "range", "source",
                                                                          "help"],
                    json_obj={"name": meta.name, "summary": meta.summary, "reference": meta.reference,
                              "hyperparameters": params})
            return
        records = [{"method": n, "summary": registry.info(n).summary} for n in registry.names()]
    except UnlearnKitError as exc:
        _fail(exc)
    _render(records, fmt, title="unlearning methods (`unlearnkit methods NAME` describes one)")



@app.command()
def evaluate(
    original: Path = typer.Option(..., "--original", help="The model before unlearning (model file)."),
    unlearned: Path = typer.Option(..., "--unlearned", help="The unlearned model (e.g. written by `unlearnkit unlearn`)."),
    data: str = typer.Option(..., "--data", help="The training data of the original model (name or file)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP + _STORED_COLUMNS),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP + _STORED_COLUMNS),
    changes: Path = typer.Option(..., "--changes", help="The change set that was unlearned (JSON)."),
    retrained: Optional[Path] = typer.Option(None, "--retrained", help="Model retrained on the corrected data; "
                                             "if omitted, the original's recipe is retrained here (and timed)."),
    test: Optional[str] = typer.Option(None, "--test", help="Test data (name or file), e.g. digits:test."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data (name or file)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metric names (default: every cheap "
                                          "metric the inputs allow; see `unlearnkit metrics`)."),
    fmt: str = _format_option(),
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
    from unlearnkit.metrics import Costs, EvalSplits
    from unlearnkit.metrics import evaluate as evaluate_fn
    from unlearnkit.metrics import info as metric_info
    from unlearnkit.training import retrain

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
        ref = _load_net(retrained, factory, factory_path) if retrained is not None else None
        others = (("--unlearned", unl),) + ((("--retrained", ref),) if ref is not None else ())
        ds = _model_data(data, orig, label_column, id_column, also=others)
        val_ds = _model_data(val, orig, label_column, id_column) if val else None
        test_ds = _model_data(test, orig, label_column, id_column) if test else None
        for option, d in (("--data", ds), ("--val", val_ds), ("--test", test_ds)):
            for which, m in (("--original", orig), ("--unlearned", unl)):
                if d is not None:
                    _check_fits(m, d, f"the {which} model", option)
        ch = _model_changes(changes, orig, ds)
        splits = EvalSplits.from_changes(ds, ch, val=val_ds, test=test_ds)
        info = getattr(unl, "metadata", {}).get("unlearned") or {}
        costs = {"unlearned": Costs.of(info) if "seconds" in info else None}
        if ref is not None:
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
    else:  # plain text for other programs: no wrapping, no markup
        body = text()
        typer.echo(body, nl=not body.endswith("\n"))
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
        (console if fmt == "table" else err).print(f"wrote {_plain(out)}", markup=False, highlight=False)


def _print_metric_table(table) -> None:
    from unlearnkit.metrics.evaluate import direction

    from rich import box

    view = Table(title="unlearning evaluation (ideal: the retrained model's value, or the stated target)",
                 title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("metric", "better", "original", "unlearned", "retrained"):  # a narrow terminal folds names, never cuts them
        text_col = col in ("metric", "better")
        view.add_column(col, justify="left" if text_col else "right", overflow="fold", no_wrap=not text_col)
    for row in table:
        cells = []
        for subject in ("original", "unlearned", "retrained"):
            value, interval = row.value(subject), row.intervals.get(subject)
            cell = _fmt(value) if value is not None else "-"
            if interval:
                cell += f"\n[{interval[0]:.3f}, {interval[1]:.3f}]"
            cells.append(cell)
        # Text: never read as markup; each line made safe on its own, so the interval keeps its line break
        view.add_row(*(Text("\n".join(_plain(line) for line in str(c).split("\n")))
                       for c in (row.metric, direction(row), *cells)))
    console.print(view)


@app.command("metrics")
def metrics_cmd(
    name: Optional[str] = typer.Argument(None, help="Describe one metric (nothing, or 'list', lists them)."),
    fmt: str = _format_option(help="table, markdown, csv or json. For one metric: table is its description, the "
                              "others one row (json with its docstring)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the whole metrics page (docs/metrics.md: formulas, "
                                  "directions, sources)."),
) -> None:
    """List the evaluation metrics with their direction (`unlearnkit metrics` or `unlearnkit metrics list`), or describe one."""
    from unlearnkit import metrics as registry

    if markdown:
        typer.echo(registry.markdown(), nl=False)
        return

    def record(meta) -> dict:
        return {"metric": meta.name, "family": meta.family.value, "direction": meta.direction, "cost": meta.cost,
                "summary": meta.summary}

    try:
        if name and name != "list":
            meta = registry.info(name)
            if fmt == "table":
                console.print(registry.describe(name), markup=False, highlight=False)
                return
            full = {**record(meta), "higher_is_better": meta.higher_is_better, "ideal": meta.ideal,
                    "needs": [n.value for n in meta.needs], "reference": meta.reference, "doc": meta.doc}
            _render([record(meta)], fmt, title=name, json_obj=full)
            return
        metas = [registry.info(n) for n in registry.names()]
    except UnlearnKitError as exc:
        _fail(exc)
    records = [record(m) for m in metas]
    json_obj = [{**record(m), "higher_is_better": m.higher_is_better, "ideal": m.ideal,
                 "needs": [n.value for n in m.needs], "reference": m.reference} for m in metas]
    _render(records, fmt, title="evaluation metrics (`unlearnkit metrics NAME` describes one; expensive ones run only "
                                "when named)", json_obj=json_obj)


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


_CERTIFICATE_KEYS = ("epsilon", "delta", "sigma", "budget", "residual_bound", "worst_case_bound", "cumulative_bound",
                     "remaining", "epsilon_spent", "exact_residual", "retrained")


def _print_certificate(cert, fmt: str = "table", about: Optional[dict] = None) -> None:
    """The certificate as a quantity/value table; in markdown and csv ``about`` (the entry, the head) comes first, in
    json it is the object that holds ``certificate``. In table format the caller has printed ``about`` as prose."""
    d = cert.to_dict()
    if fmt == "json":
        typer.echo(_json_text({**(about or {}), "certificate": d}))
        return
    rows = [] if fmt == "table" else [{"quantity": k, "value": v} for k, v in (about or {}).items()]
    rows += [{"quantity": k, "value": str(d[k]) if isinstance(d[k], bool) else d[k]} for k in _CERTIFICATE_KEYS]
    _render(rows, fmt, title="certificate", right=("value",))


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
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP),
    standardize: bool = typer.Option(False, "--standardize", help="Standardise every feature column with the data's "
                                     "mean and std first (a constant column: std 1)."),
    scale_rows: bool = typer.Option(False, "--scale-rows", help="Divide every row by the data's largest row norm "
                                    "(after --standardize), so that ||x|| <= 1 as the certificate's bounds assume. "
                                    "Stored in the ledger and applied to the feature values of every request. A "
                                    "request that makes a row longer than the bound is refused: give --feature-bound "
                                    "(e.g. 1.5) for headroom."),
    fmt: str = _format_option(help="table, markdown, csv or json: the ledger, its head and the certificate."),
) -> None:
    """Train a certified (loss-perturbed) logistic regression and start its ledger.

    The certificate's bounds grow with the row norms: on raw features (say, areas in the thousands) the budget runs out at the first request and the model is retrained each time. --scale-rows (with --standardize for columns on different scales) keeps ||x|| <= 1; the ledger then takes requests in the data's own units and scales their feature values itself.
    """
    from unlearnkit.data.preprocess import Preprocessing, row_norms
    from unlearnkit.errors import LedgerError
    from unlearnkit.influence.certified import CertifiedSpec
    from unlearnkit.ledger import Ledger
    from unlearnkit.models import LogisticRegression

    try:
        if path.exists() and not path.is_dir():
            raise LedgerError(f"{path} exists and is not a folder; give the path of a new (or empty) folder for the ledger.")
        key = _ledger_key(key_file, path)
        label_col, id_col = _column_option(label_column), _column_option(id_column)
        raw = Preprocessing().load(data, label_column=label_col, id_column=id_col)
        if raw.is_sparse:
            raise LedgerError("The ledger stores dense features; give dense data (a .csv, or an .npz with X).")
        prep = Preprocessing.fit(raw, standardize=standardize, scale_rows=scale_rows, label_column=label_col,
                                 id_column=id_col)
        import numpy as np

        ds = prep.apply(raw, dtype=np.float64)  # the ledger keeps float64: its "non-zero" tests and row bounds need it
        spec = CertifiedSpec(epsilon=epsilon, delta=delta, sigma=sigma, budget=budget, feature_bound=feature_bound, bound=bound)
        model = LogisticRegression(n_features=ds.n_features, n_classes=ds.n_classes, l2=l2)
        with console.status(f"training a certified model on {ds.name} ({len(ds)} rows)"):
            ledger = Ledger.create(path, ds, model=model, spec=spec, seed=seed, reason=reason, key=key,
                                   preprocessing=None if prep.is_empty else prep)
    except UnlearnKitError as exc:
        _fail(exc)
    if fmt == "table":
        console.print(f"ledger created at {_plain(path)} (model file {ledger.model_file.name})", markup=False, highlight=False)
        console.print(f"head: {ledger.head()}  (keep it outside the folder; check with `ledger verify --expect-head`)",
                      markup=False, highlight=False)
    _print_certificate(ledger.certificate(), fmt, {"ledger": str(path), "model_file": ledger.model_file.name,
                                                   "head": str(ledger.head())})
    _warn_row_norms(ledger, ds, row_norms(ds), scaled=scale_rows)


def _warn_row_norms(ledger, ds, norms, *, scaled: bool) -> None:
    """Warn, naming --scale-rows, when rows are longer than 1 or one removal would exhaust the budget."""
    from unlearnkit import Changes

    import numpy as np

    if len(ds) < 2:
        return
    longest = int(norms.argmax())
    # a few single-row removals (the longest row and rows spread over the data): what a first request would spend
    probes = sorted({longest, *np.linspace(0, len(ds) - 1, num=min(len(ds), 7)).astype(int).tolist()})
    try:
        spends = {int(ds.ids[k]): ledger.request_bound(Changes.remove([int(ds.ids[k])])) for k in probes}
    except UnlearnKitError:
        return
    worst_id = max(spends, key=spends.get)
    remaining = ledger.certificate().remaining
    problems = []
    if norms[longest] > 1.0 + 1e-9:
        problems.append(f"rows are up to {norms[longest]:.6g} long, while the certificate's bounds assume ||x|| <= 1")
    if spends[worst_id] > remaining:
        problems.append(f"removing a single row (id {worst_id}) would need a residual bound of {spends[worst_id]:.6g}, "
                        f"beyond the remaining budget {remaining:.6g}: such a request retrains the model instead")
    if problems:
        fix = ("give a larger --budget or --sigma, or a larger --l2" if scaled else
               "create the ledger with --scale-rows (and --standardize if the columns differ in scale)")
        err.print("[yellow]warning:[/] " + escape(_plain("; ".join(problems))) + f"; {fix}.", highlight=False)


@ledger_app.command("apply")
def ledger_apply(
    path: Path = typer.Argument(..., help="The ledger folder."),
    changes: Path = typer.Option(..., "--changes", help="Change set (JSON; `unlearnkit changes` writes one); row ids "
                                 "of the original data."),
    reason: str = typer.Option("", "--reason", help="Why (recorded with the request)."),
    exact_residual: bool = typer.Option(False, "--exact-residual", help="Also measure the residual (a pass over the data)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP),
    fmt: str = _format_option(help="table, markdown, csv or json: the entry and its certificate."),
) -> None:
    """Unlearn a change set on top of every earlier request, and record it."""
    try:
        ledger = _open_ledger(path, key_file)
        ch = ledger.preprocessing.load_changes(changes)  # label edits may name the classes of a CSV's text labels
        result = ledger.apply(ch, reason=reason, exact_residual=exact_residual)
    except UnlearnKitError as exc:
        _fail(_ledger_norm_hint(exc, locals().get("ledger")))
    what = "retrained (budget exhausted)" if result.certificate.retrained else "second-order update"
    head = ledger.committed  # this process's entry, even if another writer committed after it
    if fmt == "table":
        console.print(f"entry {head.seq}: {what}, {result.n_affected} affected rows, {result.seconds * 1000:.1f} ms; "
                      f"model file {ledger.model_file.name}", markup=False, highlight=False)
        console.print(f"head: {head}", markup=False, highlight=False)
    _print_certificate(result.certificate, fmt, {"entry": head.seq, "update": what, "affected_rows": result.n_affected,
                                                 "seconds": result.seconds, "model_file": ledger.model_file.name,
                                                 "head": str(head)})


def _ledger_norm_hint(exc: UnlearnKitError, ledger) -> UnlearnKitError:
    """A request refused because it makes a row longer than the certified bound R: said in the units the user knows
    (before the ledger's row scaling), with the command that gives headroom."""
    import re

    found = re.search(r"row (\d+) has feature norm ([0-9.e+-]+) > the certified bound R = ([0-9.e+-]+)", str(exc))
    if found is None or ledger is None:
        return exc
    row, norm, bound = found.group(1), float(found.group(2)), float(found.group(3))
    prep = ledger.preprocessing
    text = f"The request makes row {row} {norm:.6g} long, beyond the certified bound R = {bound:.6g}"
    if prep.row_scale is not None:
        units = "standardised units" if prep.mean is not None else "the data's own units"
        text += (f" (the ledger divides every row by {prep.row_scale:.6g}: {norm * prep.row_scale:.6g} > "
                 f"{bound * prep.row_scale:.6g} in {units})")
    return type(exc)(text + ". The certificate holds only while ||x|| <= R for every row, so a request cannot make a "
                     "row longer than that: create the ledger with headroom, `unlearnkit ledger init ... --feature-bound "
                     f"{max(2 * bound, 1.5):.3g}` (the bound in the ledger's units), or change the row less.")


@ledger_app.command("refine")
def ledger_refine(
    path: Path = typer.Argument(..., help="The ledger folder."),
    target: Optional[float] = typer.Option(None, help="Residual to reach (default: what retraining reaches)."),
    max_steps: int = typer.Option(50, help="Newton steps at most."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_FILE_HELP),
    fmt: str = _format_option(help="table, markdown, csv or json: the entry and the certificate."),
) -> None:
    """Newton steps on the corrected data until the residual meets a target (frees budget)."""
    try:
        ledger = _open_ledger(path, key_file)
        info = ledger.refine(target, max_steps=max_steps)
    except UnlearnKitError as exc:
        _fail(exc)
    head = info["head"]  # this process's entry, even if another writer committed after it
    if fmt == "table":
        console.print(f"entry {head.seq}: {info['steps']} Newton steps ({info['hessian_refreshes']} Hessian refreshes), "
                      f"residual {info['residual']:.3g} (target {info['target']:.3g}"
                      f"{'' if info['reached'] else ', NOT reached'})", markup=False, highlight=False)
        console.print(f"head: {head}", markup=False, highlight=False)
    _print_certificate(ledger.certificate(), fmt, {
        "entry": head.seq, "steps": info["steps"], "hessian_refreshes": info["hessian_refreshes"],
        "residual": info["residual"], "target": info["target"], "reached": info["reached"], "head": str(head)})


@ledger_app.command("history")
def ledger_history(
    path: Path = typer.Argument(..., help="The ledger folder."),
    fmt: str = _format_option(help="table, markdown, csv or json (json: every field of every entry)."),
) -> None:
    """Every entry: training, requests, retrainings, refinements."""
    try:
        entries = _open_ledger(path).history()
    except UnlearnKitError as exc:
        _fail(exc)
    if fmt == "json":
        typer.echo(_json_text(entries))  # ensure_ascii: control characters are escaped
        return
    if fmt in ("markdown", "csv"):
        short = fmt == "markdown"  # csv keeps the full time and hash
        _render([{"#": e["seq"], "kind": e["kind"], "time (UTC)": str(e["time"])[:19] if short else str(e["time"]),
                  "rows": e["n_affected"], "bound": e["residual_bound"], "cumulative": e["cumulative_bound"],
                  "eps spent": e["certificate"].get("epsilon_spent"),
                  "params after": str(e["params_after"])[:12] if short else e["params_after"], "reason": e["reason"]}
                 for e in entries], fmt, title=f"ledger {path}", right=("#", "rows", "bound", "cumulative", "eps spent"))
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
    fmt: str = _format_option(("table", "json"), help="table (a line per check, problems on stderr) or json (one "
                              "object: ok, entries, replayed, head, checks, problems)."),
) -> None:
    """Check hashes, the chain, the model file and the data; replay the history. Exit 1 on problems."""
    from unlearnkit.ledger import Head

    try:
        if expect_head is not None:
            Head.parse(expect_head)
        ledger = _open_ledger(path, key_file)
    except UnlearnKitError as exc:
        _fail(exc)
    with err.status("verifying"):
        report = ledger.verify(replay=replay, expect_head=expect_head)
    if fmt == "json":
        typer.echo(_json_text(report.to_dict()))
        raise typer.Exit(code=0 if report.ok else 1)
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
    out: Optional[Path] = typer.Option(None, "--out", help="JSON file to write (outside the ledger folder); "
                                       "default: print the JSON."),
) -> None:
    """Write the ledger (metadata, every entry, the head, the current certificate) as JSON, to --out or stdout."""
    from unlearnkit.atomic import check_target

    try:
        if out is not None:
            check_target(out, user_path=True)
        exported = _open_ledger(path).export(out)
    except UnlearnKitError as exc:
        _fail(exc)
    if out is None:
        typer.echo(_json_text(exported))
    else:
        console.print(f"wrote {_plain(out)}", markup=False, highlight=False)


# ---------------------------------------------------------------------------- bench
bench_app = typer.Typer(no_args_is_help=True, help="The benchmark runner: tuned, multi-seed, resumable, local or Ray "
                        "(run, status, report).")
app.add_typer(bench_app, name="bench")


@bench_app.command("run")
def bench_run(
    config: str = typer.Argument(..., help="A TOML config file or a preset: quick (27 s on 2 idle CPU cores), deepunlearn-fmnist, features-labels."),
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
def bench_status(
    out: Path = typer.Argument(..., help="A run folder."),
    fmt: str = _format_option(("table", "json"), help="table or json (every count, failure and run as one object)."),
) -> None:
    """What a run folder holds: done against the grid, failures, the runs so far."""
    from unlearnkit import bench

    try:
        st = bench.status(out)
    except UnlearnKitError as exc:
        _fail(exc)
    if fmt == "json":
        typer.echo(_json_text(st))
        return
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
    run: Path = typer.Argument(..., help="A run folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write the report to (default: the run folder)."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Files to write, comma-separated: md, html, csv, "
                                          "json (default md,html,csv). --format, the old spelling, is still accepted."),
    to: Optional[Path] = typer.Option(None, "--to", hidden=True, help="Old spelling of --out."),
    old_formats: Optional[str] = typer.Option(None, "--format", hidden=True, help="Old spelling of --formats."),
) -> None:
    """Tables, ranks (Friedman test, critical-difference plot), Pareto front: Markdown, HTML, CSV.

    --out names the folder to write to (--to, the old spelling, is still accepted); --formats the files (md, html,
    csv, json; --format, the old spelling, is still accepted).
    """
    from unlearnkit import bench

    for new, old, name in ((out, to, "--out"), (formats, old_formats, "--formats")):
        if new is not None and old is not None and new != old:
            _fail(_OptionError(f"{name} and its old spelling ({'--to' if name == '--out' else '--format'}) disagree; "
                               f"give {name} only."))
    out = out if out is not None else to
    formats = formats if formats is not None else (old_formats if old_formats is not None else "md,html,csv")
    try:
        paths = bench.write_report(run, out, tuple(f.strip() for f in formats.split(",") if f.strip()))
    except UnlearnKitError as exc:
        _fail(exc)
    for p in paths:
        console.print(f"wrote {p}", markup=False)


# ---------------------------------------------------------------------------- changes
changes_app = typer.Typer(no_args_is_help=True, help="Write and check change-set files (JSON) from the shell: "
                          "remove, relabel, edit, merge, show. Writers print to stdout, or to --out FILE.")
app.add_typer(changes_app, name="changes")

_CHANGES_OUT_HELP = "Write the change set to this file (atomically) instead of printing it."


class _ShellChangesError(UnlearnKitError, ValueError):
    """A change-set command got an argument it cannot read (not an id, not ID=LABEL)."""


def _ints(tokens: list[str], what: str, example: str) -> list[int]:
    """Integers from command-line tokens: ``5 6 7``, ``5,6,7`` or inclusive ranges ``10-19``; ``-`` reads them from stdin."""
    out: list[int] = []
    for token in tokens:
        if token == "-":
            out.extend(_ints(sys.stdin.read().replace(",", " ").split(), what, example))
            continue
        for part in (p for p in token.split(",") if p.strip()):
            part = part.strip()
            low, sep, high = part.partition("-")
            try:
                if sep and low:
                    a, b = int(low), int(high)
                    if b < a:
                        raise ValueError
                    if b - a >= 10_000_000:
                        raise _ShellChangesError(f"The range {part} holds {b - a + 1:,} {what}s; give at most ten million.")
                    out.extend(range(a, b + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise _ShellChangesError(f"Not {what} (an integer >= 0, a list 5,6,7 or a range 10-19): {part!r}; "
                                         f"e.g. {example}.") from None
    return out


def _floats(tokens: list[str], what: str, example: str) -> list[float]:
    out = []
    for part in (p.strip() for t in tokens for p in t.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise _ShellChangesError(f"Not {what} (a number): {part!r}; e.g. {example}.") from None
        if not math.isfinite(value) and part.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
            raise _ShellChangesError(f"Not {what} (a finite number): {part!r} is beyond the range of a float64 (about "
                                     f"1.8e308); e.g. {example}.")
        out.append(value)
    return out


class _KeptNames(dict):
    """Class names in label edits kept as names (no model or data to resolve them): every name gets a placeholder code
    far above any class code, which :func:`_changes_dict` writes back as the name."""

    BASE = 2**62

    def __contains__(self, name) -> bool:  # every name is accepted (the parser asks before it looks one up)
        return True

    def __missing__(self, name):
        self[name] = code = self.BASE + len(self)
        return code


def _changes_dict(ch, names: Optional[dict] = None) -> dict:
    """``ch.to_dict()``, with the placeholder codes of ``names`` (a :class:`_KeptNames`) written as the names."""
    d = ch.to_dict()
    if names:
        back = {code: name for name, code in names.items()}
        d["label_edits"] = [{**e, "labels": [back.get(v, v) for v in e["labels"]]} for e in d["label_edits"]]
    return d


def _changes_text(ch, names: Optional[dict] = None) -> str:
    """The change set's JSON, one edit a line (what ``Changes.load`` and ``--changes`` read)."""
    sections = [f" {json.dumps(key)}: " + ("[" + ",\n  ".join(json.dumps(e) for e in value) + "]"
                                           if isinstance(value, list) else json.dumps(value))
                for key, value in _changes_dict(ch, names).items()]
    return "{\n" + ",\n".join(sections) + "\n}\n"


def _emit_changes(ch, out: Optional[Path], names: Optional[dict] = None) -> None:
    """Print the change set's JSON (stdout), or write it to ``out`` and say so on stderr."""
    text = _changes_text(ch, names)
    if out is None:
        typer.echo(text, nl=False)
        return
    from unlearnkit.atomic import atomic_write

    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), user_path=True)
    err.print(f"wrote {_plain(out)}: {ch!r}", markup=False, highlight=False)


@changes_app.command("remove")
def changes_remove(
    ids: list[str] = typer.Argument(..., help="Row ids to remove: 5 6 7, 5,6,7 or 10-19 (inclusive); - reads them "
                                    "from stdin."),
    out: Optional[Path] = typer.Option(None, "--out", help=_CHANGES_OUT_HELP),
) -> None:
    """A change set removing rows, e.g. `unlearnkit changes remove 5 6 7 > changes.json`."""
    from unlearnkit import Changes

    if out is not None:
        _check_out(out)
    try:
        _emit_changes(Changes.remove(_ints(ids, "a row id", "unlearnkit changes remove 5 6 7")), out)
    except UnlearnKitError as exc:
        _fail(exc)


@changes_app.command("relabel")
def changes_relabel(
    pairs: list[str] = typer.Argument(..., help="ID=LABEL pairs (5=1 6=0, or 5=cat with class names), or row ids "
                                      "(5 6, 10-19) with --label."),
    label: Optional[str] = typer.Option(None, "--label", help="The new label (a class code or name) of every row "
                                        "given without '=LABEL'."),
    out: Optional[Path] = typer.Option(None, "--out", help=_CHANGES_OUT_HELP),
) -> None:
    """A change set giving rows new labels, e.g. `unlearnkit changes relabel 5=1 6=0 > fix.json`.

    A label is a class code (0..k-1) or, for a model trained on text labels, a class name (`5=cat`), written to the file as the name; `unlearn`, `evaluate` and `ledger apply` resolve it with the model's stored class names.
    """
    from unlearnkit import Changes
    from unlearnkit.data.readers import _is_number

    if out is not None:
        _check_out(out)
    example = "unlearnkit changes relabel 5=1 6=cat, or unlearnkit changes relabel 5 6 --label 1"
    names = _KeptNames()

    def one_label(text: str, token: str) -> int:
        """A class code, or a class name (kept as the name)."""
        try:
            codes = _ints([text], "a label", example)
        except _ShellChangesError:
            if _is_number(text):
                raise  # 1.5, 1e3: not a class code, and no name either
            if not text.strip() or "," in text:
                raise _ShellChangesError(f"{token!r}: give one label (a class code or a class name); e.g. {example}.") from None
            return names[text.strip()]
        if len(codes) != 1:
            raise _ShellChangesError(f"{token!r}: give one label after '=' (a class code or name); e.g. {example}.")
        return codes[0]

    try:
        rows, labels = [], []
        default = None if label is None else one_label(label, f"--label {label}")
        for token in pairs:
            if "=" in token:
                row, _, lab = token.partition("=")
                row_ids = _ints([row], "a row id", example)
                rows += row_ids
                labels += [one_label(lab, token)] * len(row_ids)
            elif default is None:
                raise _ShellChangesError(f"{token!r} has no label: write ID=LABEL (5=1) or give --label; e.g. {example}.")
            else:
                row_ids = _ints([token], "a row id", example)
                rows += row_ids
                labels += [default] * len(row_ids)
        _emit_changes(Changes.relabel(rows, labels), out, names)
    except UnlearnKitError as exc:
        _fail(exc)


@changes_app.command("edit")
def changes_edit(
    columns: list[str] = typer.Option(..., "--columns", help="Feature columns (indices into the flattened features): "
                                      "3, 3,4 or 0-9; repeatable."),
    values: list[str] = typer.Option([], "--values", help="New values: one per column, or one for all (default 0: "
                                     "zero the columns); repeatable."),
    rows: list[str] = typer.Option([], "--rows", help="Row ids to edit (5,6 or 10-19; repeatable). Default: every row "
                                   "where any of the columns is non-zero."),
    out: Optional[Path] = typer.Option(None, "--out", help=_CHANGES_OUT_HELP),
) -> None:
    """A change set setting feature columns to values, e.g. `unlearnkit changes edit --columns 3 --values 0.0 > zero3.json`."""
    from unlearnkit import Changes

    if out is not None:
        _check_out(out)
    example = "unlearnkit changes edit --columns 3,4 --values 0.0 --rows 5,6"
    try:
        cols = _ints(columns, "a column", example)
        vals = _floats(values, "a value", example) or [0.0]
        row_ids = _ints(rows, "a row id", example) if rows else None
        _emit_changes(Changes.set_features(cols, vals, row_ids), out)
    except UnlearnKitError as exc:
        _fail(exc)


def _read_changes(file: str, class_names=None):
    """A change set from a file, or from stdin for ``-``. Class names in label edits are resolved with
    ``class_names`` (a model's or data's, in code order), or kept as names with a :class:`_KeptNames`."""
    from unlearnkit import Changes

    if file == "-":
        return Changes.from_json(sys.stdin.buffer.read(), source="<stdin>", class_names=class_names)
    return Changes.load(file, class_names=class_names)


@changes_app.command("merge")
def changes_merge(
    files: list[str] = typer.Argument(..., help="Change-set files to combine (- for stdin)."),
    out: Optional[Path] = typer.Option(None, "--out", help=_CHANGES_OUT_HELP),
) -> None:
    """One change set holding every edit of the given ones (refused if they contradict each other)."""
    if out is not None:
        _check_out(out)
    names = _KeptNames()  # class names in label edits stay names (one name, one placeholder across the files)
    try:
        sets = [_read_changes(f, names) for f in files]
        total = sets[0]
        for other in sets[1:]:
            total = total + other
        _emit_changes(total, out, names)
    except UnlearnKitError as exc:
        _fail(exc)


def _ids_cell(ids, limit: Optional[int]) -> str:
    if ids is None:
        return "every row where a column is non-zero"
    shown = ", ".join(str(i) for i in (ids if limit is None else ids[:limit]))
    return shown if limit is None or len(ids) <= limit else f"{shown} and {len(ids) - limit:,} more"


@changes_app.command("show")
def changes_show(
    file: str = typer.Argument(..., help="A change-set file (JSON), or - for stdin."),
    data: Optional[str] = typer.Option(None, "--data", help="Also check it against this data (name or file): the ids, "
                                       "columns and labels must exist; prints how many rows it affects."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP + " With --data."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP + " With --data."),
    model: Optional[Path] = typer.Option(None, "--model", help="Read --data as this model's data (the CSV columns and "
                                         "class names stored in its file), and resolve class names in label edits "
                                         "with its classes."),
    fmt: str = _format_option(),
) -> None:
    """Validate a change set and summarise it: one line per edit. Exit 2 (with the JSON path) if it is malformed.

    Labels given as class names are shown as names; with --model (or --data with text labels) they are checked against the classes.
    """
    names = None
    try:
        from unlearnkit.data.preprocess import METADATA_KEY, Preprocessing

        if data is None and (label_column is not None or id_column is not None):
            raise _OptionError("--label-column and --id-column say how to read --data; give --data too.")
        prep = Preprocessing()
        if model is not None:
            from unlearnkit.models.io import read_metadata

            stored = Preprocessing.from_dict(read_metadata(model).get(METADATA_KEY), where=str(model))
            prep = Preprocessing(stored.label_column, stored.id_column, stored.class_names)  # read as the model does
        ds = None
        if data is not None:
            ds = prep.load(data, label_column=_column_option(label_column), id_column=_column_option(id_column))
        classes = prep.class_names or (ds.class_names if ds is not None else None)
        if classes is None:
            names = _KeptNames()
            ch = _read_changes(file, names)
            if ds is not None and names:
                raise _OptionError(f"the change set names classes ({', '.join(list(names)[:5])}), but {ds.name} has "
                                   "integer labels (class codes): give the codes, or read the data with its text label "
                                   "column (--label-column, or --model of a model trained on it).")
        else:
            ch = _read_changes(file, classes)
        affected = None
        if ds is not None:
            affected = {"data": ds.name, "rows": len(ds), "affected_rows": ch.resolve(ds).n_affected}
    except UnlearnKitError as exc:
        _fail(exc)
    back = {code: name for name, code in (names or {}).items()}
    limit = None if fmt in ("csv", "json") else 20
    records = []
    for e in ch.feature_edits:
        records.append({"kind": "feature edit", "rows": "all non-zero" if e.rows is None else len(e.rows),
                        "ids": _ids_cell(e.rows, limit), "columns": ", ".join(map(str, e.columns)),
                        "new values": ", ".join(str(v) for v in e.values)})
    for e in ch.label_edits:
        records.append({"kind": "label edit", "rows": len(e.rows), "ids": _ids_cell(e.rows, limit), "columns": "",
                        "new values": _ids_cell([back.get(v, v) for v in e.labels], limit)})
    for e in ch.removals:
        records.append({"kind": "removal", "rows": len(e.rows), "ids": _ids_cell(e.rows, limit), "columns": "",
                        "new values": ""})
    summary = {"valid": True, "kinds": list(ch.kinds), "feature_edits": len(ch.feature_edits),
               "relabelled_rows": len({r for e in ch.label_edits for r in e.rows}), "removed_rows": len(ch.removed_ids)}
    if affected is not None:
        summary.update(affected)
    _render(records, fmt, title=f"{'<stdin>' if file == '-' else file}: valid change set", right=("rows",), json_obj={"summary": summary, "changes": _changes_dict(ch, names)})
    if affected is not None and fmt in ("table", "markdown"):
        line = f"affects {affected['affected_rows']:,} of the {affected['rows']:,} rows of {affected['data']}"
        if fmt == "table":
            console.print(line, markup=False, highlight=False)
        else:
            typer.echo("\n" + line)


# ---------------------------------------------------------------------------- data
def _model_data(source: str, net, label_column: Optional[str] = None, id_column: Optional[str] = None, *, also=()):
    """``source`` read and scaled the way ``net``'s training data was: the CSV columns, class names, standardisation
    and row scaling its file recorded (explicit --label-column/--id-column checked against them). ``also``:
    ``(option, model)`` pairs that must have been trained with the same preprocessing."""
    from unlearnkit.data.preprocess import Preprocessing

    prep = Preprocessing.of_model(net)
    for option, other in also:
        difference = prep.difference(Preprocessing.of_model(other))
        if difference:
            raise _OptionError(f"{option} was trained with another preprocessing than the original model ({difference}); "
                               "its inputs would be read or scaled differently: give models of the same training run "
                               "(train them with the same --standardize, CSV columns and labels).")
    return prep.apply(prep.load(source, label_column=_column_option(label_column), id_column=_column_option(id_column)))


def _model_changes(path: Path, net, data):
    """The change set in ``path`` (its label edits may name classes the model stored), its feature values (raw
    units) mapped into ``net``'s units (see ``Preprocessing.map_changes``); ``data`` is the model's data, as
    :func:`_model_data` gives it."""
    from unlearnkit.data.preprocess import Preprocessing

    prep = Preprocessing.of_model(net)
    return prep.map_changes(prep.load_changes(path), data)


def _id_runs(ids, limit: Optional[int]) -> str:
    """Ids in their order, runs of consecutive ids written as ranges (``0-4, 7, 9-12``), at most ``limit`` ids."""
    ids = [int(i) for i in ids]
    shown = ids if limit is None else ids[:limit]
    parts, start = [], 0
    for k in range(1, len(shown) + 1):
        if k == len(shown) or shown[k] != shown[k - 1] + 1:
            a, b = shown[start], shown[k - 1]
            parts.append(str(a) if a == b else f"{a}-{b}")
            start = k
    text = ", ".join(parts)
    if len(shown) < len(ids):
        text += f" ... ({len(ids) - len(shown):,} more; --format json lists every id)"
    return text


data_app = typer.Typer(no_args_is_help=True, help="Look at a data source the way the commands read it: rows, "
                       "features, classes and row ids (show).")
app.add_typer(data_app, name="data")


@data_app.command("show")
def data_show(
    source: str = typer.Argument(..., help="A data source: an embedded name (digits, digits:train), synthetic:..., or "
                                 "a .csv/.npz file; file.csv:train and file.csv:test are its seeded 80/20 split."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help=_LABEL_COLUMN_HELP),
    id_column: Optional[str] = typer.Option(None, "--id-column", help=_ID_COLUMN_HELP),
    model: Optional[Path] = typer.Option(None, "--model", help="Read the source as this model's data: the CSV columns "
                                         "and class names stored in its file (`unlearnkit train` writes them)."),
    fmt: str = _format_option(("table", "json"), help="table or json (json lists every id)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="List at most this many ids (default: 20 in the table, "
                                        "all in json)."),
) -> None:
    """Rows, features, classes (codes and names) and the row ids of a data source: the ids change sets name.

    A row's id is the value of its --id-column, else its row number (0 for the first data row of a file). The ids of `file.csv:train` are those rows' ids in the whole file, e.g. `unlearnkit data show pets.csv:train --label-column species`.
    """
    if limit is not None and limit < 0:
        _fail(_OptionError(f"--limit must be >= 0; got {limit}."))
    try:
        import numpy as np

        from unlearnkit.data.preprocess import METADATA_KEY, Preprocessing

        prep = Preprocessing()
        if model is not None:
            from unlearnkit.models.io import read_metadata

            stored = Preprocessing.from_dict(read_metadata(model).get(METADATA_KEY), where=str(model))
            prep = Preprocessing(stored.label_column, stored.id_column, stored.class_names)  # read as the model does
        ds = prep.load(source, label_column=_column_option(label_column), id_column=_column_option(id_column))
    except UnlearnKitError as exc:
        _fail(exc)
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    classes = [{"code": k, "name": ds.class_names[k] if ds.class_names else None, "rows": int(counts[k])}
               for k in range(ds.n_classes)]
    ids = [int(i) for i in ds.ids]
    if fmt == "json":
        obj = {"source": source, "name": ds.name, "rows": len(ds), "features": ds.n_features,
               "feature_shape": list(ds.feature_shape), "sparse": ds.is_sparse,
               "feature_names": None if ds.feature_names is None else list(ds.feature_names),
               "classes": classes, "ids": ids if limit is None else ids[:limit]}
        typer.echo(json.dumps(obj, indent=1))
        return
    table = Table(title=Text(_plain(f"{source}")), title_justify="left")
    table.add_column("quantity")
    table.add_column("value", overflow="fold")
    table.add_row("rows", f"{len(ds):,}")
    shape = "" if len(ds.feature_shape) == 1 else f" (shape {' x '.join(map(str, ds.feature_shape))})"
    table.add_row("features", f"{ds.n_features:,}{shape}" + (", sparse" if ds.is_sparse else ""))
    if ds.feature_names is not None:
        names = [f"{j}={n}" for j, n in enumerate(ds.feature_names)]
        table.add_row("feature columns", Text(_plain(", ".join(names[:30]) + (" ..." if len(names) > 30 else ""))))
    table.add_row("classes", Text(_plain(", ".join(
        f"{c['code']}" + (f"={c['name']}" if c["name"] is not None else "") + f" ({c['rows']:,} rows)" for c in classes))))
    table.add_row("ids", _id_runs(ids, 20 if limit is None else limit))
    console.print(table)


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
