"""A benchmark configuration: one TOML file, validated before anything runs.

A configuration names the data sets, models, forget-set protocols, methods, seeds, search
budget and training recipe of a benchmark. :func:`load_config` reads a file or a shipped preset
(``quick``, ``deepunlearn-fmnist``, ``features-labels``), applies ``--set key=value`` overrides
and checks everything a run needs: unknown keys, wrong types, unknown data sets, models and
methods, evaluation seeds that overlap the tuning seeds, a model that cannot take a data set.
Every error names the offending key and what is valid. See ``docs/benchmark.md`` for the schema.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from unlearnkit.bench.space import check_fixed
from unlearnkit.errors import BenchError, UnlearnKitError
from unlearnkit.training import MAX_EPOCHS  # most epochs of a recipe and of an ``epochs``-like hyperparameter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


PRESETS = ("quick", "deepunlearn-fmnist", "features-labels")
DATASETS = ("digits", "breast-cancer", "wine", "iris", "fashion-mnist")
MODELS = ("cnn", "mlp", "logreg", "resnet18", "rescnn", "vit")
PROTOCOLS = ("remove", "relabel", "zero-features")
SAMPLERS = ("nsga3", "nsga2", "tpe", "random")
REFERENCE_METHODS = ("retrain", "retrain-warm", "sisa")
"""Registered methods a benchmark does not run as cells: retraining is the reference every cell
is compared with, and SISA needs its own sharded ensemble (see the scenarios)."""

MAX_TRIALS = 100_000
"""Most search trials per (problem, method): DeepUnlearn runs 100; a budget beyond this never ends."""
MAX_THREADS = 256
"""Most torch CPU threads per worker: more than any CPU a worker runs on has cores."""
MAX_BATCH_SIZE = 2**31 - 1
MAX_INT = 2**63 - 1
"""Seeds and row counts are stored as signed 64-bit integers (SQLite, torch seeds)."""


@dataclass(frozen=True)
class Recipe:
    """How the original and the retrained models are trained (same seed, same recipe).

    ``optimizer = "auto"`` lets each model pick (Newton or L-BFGS for convex models, Adam otherwise).
    """

    optimizer: str = "adam"
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 32
    momentum: float = 0.9

    @property
    def epoch_cap(self) -> int:
        """DeepUnlearn's cap on a searched number of epochs: ceil(20 % of the training epochs), at least 1."""
        return max(1, math.ceil(0.2 * self.epochs))


@dataclass(frozen=True)
class Protocol:
    """What is forgotten.

    ``remove``: a seeded random ``fraction`` of the training rows (or every row of
    ``classes``) is removed, DeepUnlearn's protocol. ``relabel``: a ``fraction`` of the training
    labels is flipped to a random other class before training (poisoning); the change restores
    the true labels. ``zero-features``: a ``fraction`` of the feature columns is zeroed in every
    row (a sensitive-feature edit).
    """

    kind: str = "remove"
    fraction: float = 0.10
    classes: tuple[int, ...] = ()
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or (f"{self.kind}-{self.fraction:g}" if not self.classes else f"{self.kind}-classes")


@dataclass(frozen=True)
class Problem:
    """One (data set, model, protocol) combination of the grid; its ``key`` names it in the store."""

    dataset: str
    model: str
    """A zoo model name, or the name a ``models.factories`` entry gives a user's model."""
    protocol: Protocol

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.model}/{self.protocol.label}"


@dataclass(frozen=True)
class BenchConfig:
    """A validated benchmark configuration (see the module docstring)."""

    name: str
    description: str = ""
    datasets: tuple[str, ...] = ("digits",)
    rows: int = 0
    val_fraction: float = 0.15
    split_seed: int = 123
    models: tuple[str, ...] = ("cnn",)
    model_options: dict = field(default_factory=dict)
    factories: dict = field(default_factory=dict)
    """User models: name -> factory path ``package.module:function`` (see :mod:`unlearnkit.models.factory`)."""
    factory_path: str = ""
    """A folder (absolute) the factories are imported from, or "" for installed packages only."""
    protocols: tuple[Protocol, ...] = (Protocol(),)
    methods: tuple[str, ...] = ("ft",)
    fixed: dict = field(default_factory=dict)
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    tuning_seeds: tuple[int, ...] = (100,)
    trials: int = 8
    sampler: str = "nsga3"
    search_seed: int = 0
    recipes: dict = field(default_factory=dict)
    device: str = "cpu"
    threads_per_worker: int = 1

    @property
    def problems(self) -> list[Problem]:
        return [Problem(d, m, p) for d in self.datasets for m in self.models for p in self.protocols]

    def recipe(self, dataset: str) -> Recipe:
        return self.recipes.get(dataset) or self.recipes["default"]

    @property
    def all_seeds(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.eval_seeds) | set(self.tuning_seeds if self.trials else ())))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipes"] = {k: asdict(v) for k, v in self.recipes.items()}
        return json.loads(json.dumps(d))

    def fingerprint(self) -> str:
        """Hash of everything that changes results, search spaces included (not the device or thread count)."""
        from unlearnkit.bench.space import describe_space, search_space

        d = self.to_dict()
        for key in ("device", "threads_per_worker", "description", "factory_path"):  # where, not what
            d.pop(key, None)
        if not d["factories"]:
            d.pop("factories")  # a configuration without user models keeps the fingerprint it always had
        # the search spaces come from the method registry: a changed range is a different benchmark
        d["spaces"] = {f"{p.key}/{m}": describe_space(search_space(m, self.recipe(p.dataset).epoch_cap, self.fixed.get(m)))
                       for p in self.problems for m in self.methods}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- schema
# section -> key -> (types, help); a key missing from the file takes the BenchConfig default
_SCHEMA: dict[str, dict[str, tuple[tuple, str]]] = {
    "": {"name": ((str,), "benchmark name"), "description": ((str,), "free text")},
    "data": {"datasets": ((list,), f"names from {', '.join(DATASETS)}"),
             "rows": ((int,), "0 = every training row, else a seeded subsample of this many"),
             "val_fraction": ((float, int), "share of the training rows held out for validation"),
             "split_seed": ((int,), "seed of the one fixed split (DeepUnlearn: 123)")},
    "models": {"names": ((list,), f"names from {', '.join(MODELS)}, or of models.factories"),
               "options": ((dict,), "per model, keyword arguments of its constructor (of its factory for a user model)"),
               "factories": ((dict,), "user models: name = \"package.module:function\""),
               "factory_path": ((str,), "folder to import the factories from (relative: to the config file's folder)")},
    "methods": {"names": ((list,), "registered method names (unlearnkit methods)"),
                "fixed": ((dict,), "per method, hyperparameters held fixed (never searched)")},
    "seeds": {"eval": ((list,), "model seeds the reported numbers come from"),
              "tuning": ((list,), "model seeds the search runs on; disjoint from eval")},
    "search": {"trials": ((int,), "trials per (problem, method); 0 = default hyperparameters"),
               "sampler": ((str,), f"one of {', '.join(SAMPLERS)}"),
               "seed": ((int,), "seed of the sampler")},
    "run": {"device": ((str,), "cpu, cuda, cuda:1, mps"),
            "threads_per_worker": ((int,), "torch CPU threads in each worker")},
}
_RECIPE_KEYS = {"optimizer": (str,), "epochs": (int,), "lr": (float, int), "batch_size": (int,), "momentum": (float, int)}
_PROTOCOL_KEYS = {"kind": (str,), "fraction": (float, int), "classes": (list,), "name": (str,)}


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise BenchError(f"Unknown preset {name!r}; shipped presets: {', '.join(PRESETS)}.")
    return Path(str(resources.files("unlearnkit.bench") / "presets" / f"{name}.toml"))


def load_config(source: str | Path | dict, overrides: list[str] | dict | None = None, *, check_data: bool = True) -> BenchConfig:
    """Read, override and validate a configuration.

    Parameters
    ----------
    source:
        A preset name, a path to a TOML file, or an already-parsed dict.
    overrides:
        ``["search.trials=2", "seeds.eval=[0]"]`` (values are TOML/Python literals; bare words are
        strings) or a dict of dotted keys.
    check_data:
        Also load every data set and build every model on it (catches a CNN on tabular data
        before any job runs).
    """
    try:
        raw = _read(source)
        raw = copy.deepcopy(raw)
        for key, value in _parse_overrides(overrides).items():
            _set_dotted(raw, key, value)
        from_file = isinstance(source, (str, Path)) and str(source) not in PRESETS
        config = _build(raw, base=Path(source).resolve().parent if from_file else Path.cwd())
    except RecursionError:
        raise BenchError("The configuration is nested too deeply (tables or lists inside one another without end); "
                         "a configuration has tables two or three levels deep (see the presets).") from None
    if check_data:
        check_problems(config)
    return config


def _read(source) -> dict:
    if isinstance(source, dict):
        return source
    if isinstance(source, (str, Path)) and str(source) in PRESETS:
        path = preset_path(str(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise BenchError(f"Config file not found: {path} (or name a preset: {', '.join(PRESETS)}).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path} is not valid TOML: {exc}.") from None
    except OSError as exc:
        raise BenchError(f"Cannot read the config file {path}: {exc.strerror or exc}.") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer beyond Python's digit limit
        raise BenchError(f"{path} is not valid TOML: {exc}.") from None
    except (RecursionError, MemoryError):
        raise BenchError(f"{path} is nested too deeply to read as TOML.") from None


def _parse_overrides(overrides) -> dict:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise BenchError(f"An override must be key=value (e.g. search.trials=2), got {item!r}.")
        out[key.strip()] = _literal(text.strip())
    return out


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    except ValueError:  # an integer beyond Python's digit limit; TOMLDecodeError is a ValueError too
        raise BenchError(f"Override value {_show(text)} is too long a number to read.") from None
    except (RecursionError, MemoryError):
        raise BenchError(f"Override value {_show(text)} is nested too deeply to read.") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError):
        return text  # a bare word: a string
    except (RecursionError, MemoryError):
        raise BenchError(f"Override value {_show(text)} is nested too deeply to read.") from None


def _set_dotted(raw: dict, key: str, value) -> None:
    """Set ``a.b.c``; a numeric part indexes a list of tables (``protocol.0.fraction``)."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise BenchError(f"Override {key!r}: {'.'.join(parts[:i])} is a list of {len(node)} table(s); "
                                 f"index it, e.g. {'.'.join(parts[:i])}.0.{'.'.join(parts[i:]) or 'key'}.")
            if last:
                raise BenchError(f"Override {key!r}: cannot replace a whole table.")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise BenchError(f"Override {key!r}: {'.'.join(parts[:i])} is not a table.")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _typed(where: str, value, types: tuple, help_: str):
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise BenchError(f"{where} must be {'/'.join(t.__name__ for t in types)} ({help_}), got {_show(value)}.")
    if float in types and isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise BenchError(f"{where} = {_show(value)} is too large for a float ({help_}).") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where} must be a finite number ({help_}), got {value!r}.")
    return value


def _show(value, limit: int = 60) -> str:
    """``repr(value)``, shortened: a 10,000-digit integer or a huge table does not flood the message."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return f"an integer of {value.bit_length():,} bits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bounded(where: str, value: int, low: int, high: int, why: str = "") -> int:
    """An integer in ``[low, high]``, or a BenchError naming the key, the range and why."""
    if not low <= value <= high:
        raise BenchError(f"{where} must be in [{low:,}, {high:,}]{f' ({why})' if why else ''}, got {_show(value)}.")
    return value


def _int_list(where: str, value, low: int | None = None, high: int | None = None, why: str = "") -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BenchError(f"{where} must be a list of integers, got {_show(value)}.")
    if len(set(value)) != len(value):
        raise BenchError(f"{where} lists a value twice: {_show(value)}.")
    if low is not None:
        for v in value:
            _bounded(f"every entry of {where}", v, low, high, why)
    return tuple(value)


def _names(where: str, value, valid, *, allow_empty=False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BenchError(f"{where} must be a list of names, got {value!r}.")
    if not value and not allow_empty:
        raise BenchError(f"{where} is empty; name at least one of: {', '.join(valid)}.")
    unknown = [v for v in value if v not in valid]
    if unknown:
        raise BenchError(f"{where}: unknown {unknown}; valid: {', '.join(valid)}.")
    if len(set(value)) != len(value):
        raise BenchError(f"{where} lists a name twice: {value!r}.")
    return tuple(value)


def _build(raw: dict, base: Path | None = None) -> BenchConfig:
    import unlearnkit as uk

    if not isinstance(raw, dict):
        raise BenchError("A configuration must be a TOML table.")
    known = set(_SCHEMA) - {""} | set(_SCHEMA[""]) | {"protocol", "train"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BenchError(f"Unknown top-level key(s) {unknown}; valid: {', '.join(sorted(known))}.")
    values: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        table = raw if section == "" else raw.get(section, {})
        if not isinstance(table, dict):
            raise BenchError(f"[{section}] must be a table, got {table!r}.")
        if section:
            extra = sorted(set(table) - set(keys))
            if extra:
                raise BenchError(f"[{section}]: unknown key(s) {extra}; valid: {', '.join(keys)}.")
        for key, (types, help_) in keys.items():
            if key in table:
                values[f"{section}.{key}" if section else key] = _typed(f"{section + '.' if section else ''}{key}",
                                                                        table[key], types, help_)
    if "name" not in values:
        raise BenchError("The configuration needs a name (top-level name = \"...\").")
    kw: dict[str, Any] = {"name": values["name"], "description": values.get("description", "")}
    if "data.datasets" in values:
        kw["datasets"] = _names("data.datasets", values["data.datasets"], DATASETS)
    if "data.rows" in values:
        if values["data.rows"] < 0:
            raise BenchError(f"data.rows must be >= 0 (0 = all rows), got {values['data.rows']}.")
        kw["rows"] = _bounded("data.rows", values["data.rows"], 0, MAX_INT, "0 = all rows")
    if "data.val_fraction" in values:
        if not 0 < values["data.val_fraction"] < 1:
            raise BenchError(f"data.val_fraction must be in (0, 1), got {values['data.val_fraction']}.")
        kw["val_fraction"] = values["data.val_fraction"]
    if "data.split_seed" in values:
        kw["split_seed"] = _bounded("data.split_seed", values["data.split_seed"], 0, MAX_INT, "a seed")
    factories = _factories(values.get("models.factories", {}))
    if "models.factory_path" in values:
        kw["factory_path"] = _factory_path(values["models.factory_path"], base or Path.cwd())
    for name, path in factories.items():
        _import_factory(f"models.factories.{name}", path, kw.get("factory_path", ""))
    kw["factories"] = factories
    if "models.names" in values:
        kw["models"] = _names("models.names", values["models.names"], MODELS + tuple(factories))
    unused = sorted(set(factories) - set(kw.get("models", BenchConfig.models)))
    if unused:
        raise BenchError(f"models.factories names {unused}, which models.names does not list; add them to "
                         "models.names (or remove the factories).")
    options = values.get("models.options", {})
    for model, opts in options.items():
        if model not in kw.get("models", BenchConfig.models):
            raise BenchError(f"models.options names {model!r}, which is not in models.names.")
        if not isinstance(opts, dict):
            raise BenchError(f"models.options.{model} must be a table of constructor arguments, got {opts!r}.")
    kw["model_options"] = options
    runnable = tuple(n for n in uk.methods.list() if n not in REFERENCE_METHODS)
    if "methods.names" in values:
        bad = [m for m in values["methods.names"] if m in REFERENCE_METHODS]
        if bad:
            raise BenchError(f"methods.names: {bad} cannot be benchmarked as cells (retraining is every cell's "
                             "reference; SISA needs a sharded ensemble, see `unlearnkit scenario`).")
        kw["methods"] = _names("methods.names", values["methods.names"], runnable)
    methods = kw.get("methods", BenchConfig.methods)
    fixed = values.get("methods.fixed", {})
    for method, params in fixed.items():
        if method not in methods:
            raise BenchError(f"methods.fixed names {method!r}, which is not in methods.names.")
        if not isinstance(params, dict):
            raise BenchError(f"methods.fixed.{method} must be a table of hyperparameters, got {params!r}.")
        check_fixed(method, params, where=f"methods.fixed.{method}")  # names each value's problem by its key
        try:
            uk.methods.make(method, **params)
        except UnlearnKitError as exc:
            raise BenchError(f"methods.fixed.{method}: {exc}") from None
    kw["fixed"] = fixed
    if "seeds.eval" in values:
        kw["eval_seeds"] = _int_list("seeds.eval", values["seeds.eval"], 0, MAX_INT, "model seeds")
        if not kw["eval_seeds"]:
            raise BenchError("seeds.eval is empty; give at least one evaluation seed.")
    if "seeds.tuning" in values:
        kw["tuning_seeds"] = _int_list("seeds.tuning", values["seeds.tuning"], 0, MAX_INT, "model seeds")
    if "search.trials" in values:
        if values["search.trials"] < 0:
            raise BenchError(f"search.trials must be >= 0, got {_show(values['search.trials'])}.")
        kw["trials"] = _bounded("search.trials", values["search.trials"], 0, MAX_TRIALS,
                                "trials per (problem, method); DeepUnlearn runs 100, a larger budget never finishes")
    if kw.get("trials", BenchConfig.trials) > 0:
        tuning, evals = kw.get("tuning_seeds", BenchConfig.tuning_seeds), kw.get("eval_seeds", BenchConfig.eval_seeds)
        if not tuning:
            raise BenchError("seeds.tuning is empty but search.trials > 0: the search needs its own seeds.")
        shared = sorted(set(tuning) & set(evals))
        if shared:
            raise BenchError(f"seeds.tuning and seeds.eval share {shared}: hyperparameters chosen on the seeds they "
                             "are evaluated on overstate a method (DeepUnlearn's mistake); use disjoint seeds.")
    if "search.sampler" in values:
        if values["search.sampler"] not in SAMPLERS:
            raise BenchError(f"search.sampler must be one of {', '.join(SAMPLERS)}, got {values['search.sampler']!r}.")
        kw["sampler"] = values["search.sampler"]
    if "search.seed" in values:
        kw["search_seed"] = _bounded("search.seed", values["search.seed"], 0, MAX_INT, "the sampler's seed")
    if "run.device" in values:
        kw["device"] = _check_device(values["run.device"])
    if "run.threads_per_worker" in values:
        kw["threads_per_worker"] = _bounded(
            "run.threads_per_worker", values["run.threads_per_worker"], 1, MAX_THREADS,
            "torch CPU threads in each worker; more threads than a machine has cores only slow every worker down")
    kw["protocols"] = _protocols(raw.get("protocol", [{}]))
    kw["recipes"] = _recipes(raw.get("train", {}), kw.get("datasets", BenchConfig.datasets))
    return BenchConfig(**kw)


def _factories(table: dict) -> dict:
    """``models.factories``: user model names (not zoo names) mapped to well-formed factory paths."""
    from unlearnkit.errors import ModelError
    from unlearnkit.models.factory import parse_factory

    out = {}
    for name, path in table.items():
        where = f"models.factories.{name}"
        if name in MODELS:
            raise BenchError(f"{where}: {name!r} is a zoo model; give your model another name.")
        if not isinstance(path, str):
            raise BenchError(f"{where} must be a factory path \"package.module:function\", got {_show(path)}.")
        try:
            parse_factory(path)
        except ModelError as exc:
            raise BenchError(f"{where}: {exc}") from None
        out[name] = path
    return out


def _factory_path(text: str, base: Path) -> str:
    folder = Path(text).expanduser()
    folder = folder if folder.is_absolute() else base / folder
    if not folder.is_dir():
        raise BenchError(f"models.factory_path {text!r} is not a folder ({folder}); give the folder that holds your "
                         "factory's package (relative paths are read from the config file's folder).")
    return str(folder.resolve())


def _import_factory(where: str, path: str, search_path: str) -> None:
    """Import a factory when the configuration is loaded, so a bad path fails before any job (it is called later)."""
    from unlearnkit.errors import ModelError
    from unlearnkit.models.factory import load_factory

    try:
        load_factory(path, search_path=search_path or None)
    except ModelError as exc:
        raise BenchError(f"{where}: {exc}") from None


def _check_device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise BenchError(f"run.device {text!r} is not a torch device (cpu, cuda, cuda:0, mps).") from None
    return text


def _protocols(raw) -> tuple[Protocol, ...]:
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BenchError("[[protocol]] must be one or more tables (kind, fraction, classes, name).")
    out = []
    for i, table in enumerate(raw):
        where = f"protocol[{i}]"
        if not isinstance(table, dict):
            raise BenchError(f"{where} must be a table, got {table!r}.")
        extra = sorted(set(table) - set(_PROTOCOL_KEYS))
        if extra:
            raise BenchError(f"{where}: unknown key(s) {extra}; valid: {', '.join(_PROTOCOL_KEYS)}.")
        kw = {k: _typed(f"{where}.{k}", v, _PROTOCOL_KEYS[k], "see docs/benchmark.md") for k, v in table.items()}
        kind = kw.get("kind", "remove")
        if kind not in PROTOCOLS:
            raise BenchError(f"{where}.kind must be one of {', '.join(PROTOCOLS)}, got {kind!r}.")
        if "classes" in kw:
            if kind != "remove":
                raise BenchError(f"{where}.classes applies to kind = 'remove' only.")
            kw["classes"] = _int_list(f"{where}.classes", kw["classes"])
        fraction = kw.get("fraction", 0.10)
        if not 0 < fraction < 1:
            raise BenchError(f"{where}.fraction must be in (0, 1), got {fraction}.")
        out.append(Protocol(**kw))
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise BenchError(f"Two protocols have the same label {labels}; give them distinct names.")
    return tuple(out)


def _recipes(raw, datasets) -> dict:
    if not isinstance(raw, dict):
        raise BenchError("[train] must be a table.")
    default = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    per = {k: v for k, v in raw.items() if isinstance(v, dict)}
    for name in per:
        if name not in datasets:
            raise BenchError(f"[train.{name}] names a data set not in data.datasets ({', '.join(datasets)}).")
    recipes = {"default": _recipe("train", default)}
    for name, table in per.items():
        recipes[name] = _recipe(f"train.{name}", {**default, **table})
    return recipes


def _recipe(where: str, table: dict) -> Recipe:
    extra = sorted(set(table) - set(_RECIPE_KEYS))
    if extra:
        raise BenchError(f"[{where}]: unknown key(s) {extra}; valid: {', '.join(_RECIPE_KEYS)}.")
    kw = {k: _typed(f"{where}.{k}", v, _RECIPE_KEYS[k], "training recipe") for k, v in table.items()}
    if kw.get("optimizer", "adam") not in ("auto", "adam", "sgd", "lbfgs", "newton"):
        raise BenchError(f"{where}.optimizer must be auto, adam, sgd, lbfgs or newton, got {kw['optimizer']!r}.")
    for key, high in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH_SIZE)):
        if key in kw and kw[key] < 1:
            raise BenchError(f"{where}.{key} must be >= 1, got {_show(kw[key])}.")
        if key in kw:
            _bounded(f"{where}.{key}", kw[key], 1, high)
    if "lr" in kw and not kw["lr"] > 0:
        raise BenchError(f"{where}.lr must be > 0, got {kw['lr']}.")
    if "momentum" in kw and not 0 <= kw["momentum"] < 1:
        raise BenchError(f"{where}.momentum must be in [0, 1), got {kw['momentum']}.")
    return Recipe(**kw)


def check_problems(config: BenchConfig) -> None:
    """Load every data set and build every model for it; a mismatch fails here, before any job."""
    from unlearnkit.bench.problems import build_problem_data, build_model

    for problem in config.problems:
        try:
            data = build_problem_data(config, problem)
            build_model(config, problem, data.train)
        except UnlearnKitError as exc:
            raise BenchError(f"Problem {problem.key}: {exc}") from None
