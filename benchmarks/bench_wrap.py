"""Bring your own model: the cost of ``uk.wrap`` against the model zoo, and a small ViT on Fashion-MNIST.

Writes ``benchmarks/results/wrap.json`` with ``meta`` (command line, machine, CPU count, torch
version, threads, device), ``settings``, ``overhead`` (part A) and ``vit`` (part B).

Part A: wrapper overhead (goal: at most 10 %)
---------------------------------------------
The zoo CNN (``uk.models`` kind ``cnn``, :class:`~unlearnkit.models.SmallCNN`) is trained briefly
on ``--cnn-rows`` Fashion-MNIST rows (DeepUnlearn's split: 15 % validation, a random 10 % of the
rest forgotten). ``PlainCNN`` below is the same architecture written as a user would, a plain
``nn.Module``; it gets the zoo model's weights and goes through ``uk.wrap``. Both then run the
same work:

* ``per-sample-gradients``: :func:`unlearnkit.influence.gradients.per_sample_gradients` on
  ``--grad-rows`` training rows (``FlatModel`` built inside the timed region);
* ``ggn-product`` and ``hvp``: one :class:`unlearnkit.influence.HessianOperator` product
  (generalised Gauss-Newton, exact Hessian) over ``--hvp-rows`` rows, with one fixed vector;
* three methods through ``uk.unlearn`` on the forget set: ``second-order`` (``params="head"``),
  ``ft`` and ``scrub`` (hyperparameters in ``METHODS_A``).

Every operation runs once on each model before any timing (the warm-up pays torch.func's
set-up) and the two results are compared: on the CPU they must be bit-identical (the same
operations in the same order), on CUDA equal to a relative 1e-4 (its kernels may sum in another
order); a difference stops the benchmark, so the timings compare equal work. Then
``--repeats`` timed runs interleave the two (zoo then wrapped, wrapped then zoo, and so on, so
neither always runs first); the ratio is ``median(wrapped) / median(zoo)``, and the goal is met
when it is at most 1.10. Timings on a machine that other jobs share are noisy: run it alone,
with ``--threads`` at most the number of idle cores.

Part B: a small ViT on Fashion-MNIST
------------------------------------
:class:`~unlearnkit.models.SmallViT` (kind ``vit``) trains on ``--vit-rows`` Fashion-MNIST rows
(the same split protocol, the official 10,000-row test set) with the Fashion-MNIST recipe of
``bench_methods.py`` for ``--vit-epochs`` epochs; retraining on the retain set is the reference.
Each method (``second-order`` on the head, ``ft``, ``scrub``, ``msg``; default hyperparameters
otherwise) unlearns the forget set once, after a warm-up of every method on a small split. Per
method: the wall time of the ``uk.unlearn`` call, RTE (retraining seconds / method seconds,
measured in this run), RetDev and the accuracies on the forget, retain and test sets, all from
:func:`unlearnkit.metrics.evaluate`; the original and the retrained model are reference rows.

Run: ``python benchmarks/bench_wrap.py`` (a few minutes on 2 CPU cores); ``--quick`` for a
one-minute smoke run; ``--device cuda`` where a GPU is available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import unlearnkit as uk
from unlearnkit.devices import check_device
from unlearnkit.influence import FlatModel, HessianOperator
from unlearnkit.influence.gradients import per_sample_gradients
from unlearnkit.metrics import Costs, EvalSplits, evaluate

from bench_methods import RECIPES, load

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "wrap.json"
GOAL = 0.10
"""Largest acceptable wrapper overhead: ``median(wrapped) / median(zoo) - 1``."""
CUDA_RTOL = 1e-4
"""Relative tolerance of the equal-outputs check on CUDA (on the CPU the outputs must be identical)."""

METHODS_A = {
    "second-order": {"params": "head"},
    "ft": {"epochs": 2},
    "scrub": {"epochs": 2, "msteps": 1},
}
METHODS_B = {"second-order": {"params": "head"}, "ft": {}, "scrub": {}, "msg": {}}
METRICS_B = ("accuracy_forget", "accuracy_retain", "accuracy_test", "retdev", "rte")

# full run, quick run: every size option defaults to one of these
SIZES = {
    "repeats": (5, 2),
    "cnn_rows": (4000, 600),
    "cnn_epochs": (2, 1),
    "grad_rows": (256, 32),
    "hvp_rows": (1024, 128),
    "vit_rows": (12000, 1000),
    "vit_epochs": (10, 3),
}


class PlainCNN(nn.Module):
    """SmallCNN's layers written as a user would: a plain ``nn.Module``, nothing from unlearnkit.

    The attribute names match the zoo model's, so ``load_state_dict`` moves its weights across.
    """

    def __init__(self, in_channels: int, height: int, width: int, n_classes: int,
                 channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), hidden), nn.ReLU(),
                                        nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn: Callable, device: torch.device):
    """``(fn(), seconds)``, with the device synchronised before the start and before the stop."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def interleaved(fns: dict[str, Callable], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs of each function, interleaved so that drift in the machine's load hits all alike.

    Repetition ``r`` runs the functions in the given order when ``r`` is even and in reverse when
    it is odd (A B, B A, A B, ...): neither is always the one that runs first after the other.
    """
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[name].append(clock(fns[name], device)[1])
    return times


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def compare(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> dict:
    """Whether two outputs are equal (bit-identical on the CPU, to ``CUDA_RTOL`` on CUDA); their largest difference."""
    if a.shape != b.shape:
        return {"outputs_equal": False, "identical": False, "max_abs_diff": None,
                "shapes": [list(a.shape), list(b.shape)]}
    identical = bool(torch.equal(a, b))
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    equal = identical or (device.type == "cuda" and diff <= CUDA_RTOL * max(scale, 1e-12))
    return {"outputs_equal": equal, "identical": identical, "max_abs_diff": diff}


# ---------------------------------------------------------------------------- part A
def cnn_pair(split, epochs: int, device: torch.device):
    """The zoo CNN trained on ``split.train`` and a wrapped ``PlainCNN`` holding the same weights (eval mode)."""
    config = replace(RECIPES["fashion-mnist"], epochs=epochs, seed=0)
    zoo = uk.train(uk.models.for_data("cnn", split.train), split.train, config=config, device=device).to(device)
    plain = PlainCNN(*zoo.input_shape, zoo.n_classes, zoo.channels, zoo.hidden)
    plain.load_state_dict(zoo.state_dict())  # strict: the same layers and the same weights
    plain.to(device).eval()
    wrapped = uk.wrap(plain, l2=zoo.l2, input_shape=zoo.input_shape)
    return zoo, wrapped


def operations(split, sizes: dict, device: torch.device, p: int) -> dict[str, Callable]:
    """``name -> f(model) -> tensor``: the work each model does, returning what is compared."""
    grad_rows = split.train.subset(np.arange(min(sizes["grad_rows"], len(split.train))))
    hvp_rows = split.train.subset(np.arange(min(sizes["hvp_rows"], len(split.train))))
    v = torch.randn(p, generator=torch.Generator(device="cpu").manual_seed(0)).to(device)
    changes = split.changes()

    def gradients(model):
        return per_sample_gradients(FlatModel(model), grad_rows, batch_size=64)

    def product(curvature):
        return lambda model: HessianOperator(FlatModel(model), hvp_rows, curvature=curvature, batch_size=256).matvec(v)

    def method(name):
        return lambda model: flat_parameters(uk.unlearn(model, split.train, changes, method=name, val=split.val,
                                                        device=device, **METHODS_A[name]).model)

    ops = {"per-sample-gradients": gradients, "ggn-product": product("ggn"), "hvp": product("hessian")}
    ops.update({f"method:{name}": method(name) for name in METHODS_A})
    return ops


def overhead_part(sizes: dict, device: torch.device, log) -> dict:
    split = load("fashion-mnist", sizes["cnn_rows"])
    zoo, wrapped = cnn_pair(split, sizes["cnn_epochs"], device)
    p = sum(t.numel() for t in zoo.parameters())
    log(f"part A: zoo CNN ({p} parameters) vs the same CNN wrapped; "
        f"train {len(split.train)}, forget {len(split.forget)}")
    records = []
    for name, op in operations(split, sizes, device, p).items():
        out_zoo, warm_zoo = clock(lambda: op(zoo), device)  # the warm-up runs, whose outputs are compared
        out_wrapped, warm_wrapped = clock(lambda: op(wrapped), device)
        check = compare(out_zoo, out_wrapped, device)
        if not check["outputs_equal"]:
            raise SystemExit(f"part A, {name}: the zoo and the wrapped CNN gave different outputs ({check}); the "
                             "timings would not compare equal work.")
        del out_zoo, out_wrapped  # not held through the timed runs
        times = interleaved({"zoo": lambda: op(zoo), "wrapped": lambda: op(wrapped)}, sizes["repeats"], device)
        med_zoo, med_wrapped = statistics.median(times["zoo"]), statistics.median(times["wrapped"])
        ratio = med_wrapped / med_zoo
        records.append({"operation": name, "zoo_seconds": times["zoo"], "wrapped_seconds": times["wrapped"],
                        "ran_first": ["zoo" if r % 2 == 0 else "wrapped" for r in range(sizes["repeats"])],
                        "zoo_median": med_zoo, "wrapped_median": med_wrapped, "ratio": ratio,
                        "overhead_pct": 100 * (ratio - 1), "meets_goal": ratio <= 1 + GOAL,
                        "warmup_seconds": {"zoo": warm_zoo, "wrapped": warm_wrapped}, **check})
        log(f"  {name:22s} zoo {med_zoo:8.4f}s  wrapped {med_wrapped:8.4f}s  ratio {ratio:.3f} "
            f"({'meets' if ratio <= 1 + GOAL else 'MISSES'} the <= {GOAL:.0%} goal; outputs "
            f"{'identical' if check['identical'] else 'equal'})")
    return {"goal": GOAL, "model": "cnn", "n_params": p,
            "split": {"train": len(split.train), "forget": len(split.forget), "val": len(split.val)},
            "methods": METHODS_A, "outputs_equal": all(r["outputs_equal"] for r in records),
            "all_meet_goal": all(r["meets_goal"] for r in records), "operations": records}


# ---------------------------------------------------------------------------- part B
def warm_up(config, device: torch.device) -> None:
    """Run training and every method once on a small split, so no timed call pays a first-call set-up."""
    small = load("fashion-mnist", 300)
    model = uk.train(uk.models.for_data("vit", small.train), small.train, config=replace(config, epochs=1),
                     device=device)
    for name, hyper in METHODS_B.items():
        uk.unlearn(model, small.train, small.changes(), method=name, val=small.val, device=device, **hyper)


def vit_part(sizes: dict, device: torch.device, log) -> dict:
    split = load("fashion-mnist", sizes["vit_rows"])
    config = replace(RECIPES["fashion-mnist"], epochs=sizes["vit_epochs"], seed=0)
    log(f"part B: SmallViT on Fashion-MNIST; train {len(split.train)}, forget {len(split.forget)}, "
        f"test {len(split.test)}; {config.epochs} epochs")
    warm_up(config, device)
    original, t_original = clock(lambda: uk.train(uk.models.for_data("vit", split.train), split.train, config=config,
                                                  device=device), device)
    retrained, t_retrain = clock(lambda: uk.retrain(original, split.train, split.changes(), device=device), device)
    log(f"  original trained in {t_original:.1f}s, retrained in {t_retrain:.1f}s")
    splits = EvalSplits(retain=split.retain, forget=split.forget, val=split.val, test=split.test)
    records, refs = [], {}
    for name, hyper in METHODS_B.items():
        result, seconds = clock(lambda: uk.unlearn(original, split.train, split.changes(), method=name, val=split.val,
                                                   device=device, **hyper), device)
        table = evaluate(None if refs else original, result, retrained, splits, list(METRICS_B),
                         costs={"unlearned": Costs(seconds), "retrained": Costs(t_retrain)}, device=device)
        if not refs:  # the reference rows, from the same evaluation
            refs = {"original": {"seconds": t_original, "rte": None},
                    "retrained": {"seconds": t_retrain, "rte": table["rte"].retrained}}
            for subject in refs:
                refs[subject].update({m: table[m].value(subject) for m in METRICS_B if m != "rte"})
        rec = {"method": name, "hyperparameters": hyper, "seconds": seconds, "library_seconds": result.seconds,
               **{m: table[m].unlearned for m in METRICS_B}}
        records.append(rec)
        log(f"  {name:14s} {seconds:7.2f}s RTE {rec['rte']:7.1f} RetDev {rec['retdev']:.3f} forget "
            f"{rec['accuracy_forget']:.3f} retain {rec['accuracy_retain']:.3f} test {rec['accuracy_test']:.3f}")
    for subject in ("retrained", "original"):
        r = refs[subject]
        log(f"  {subject:14s} {r['seconds']:7.2f}s RetDev {r['retdev']:.3f} forget {r['accuracy_forget']:.3f} "
            f"retain {r['accuracy_retain']:.3f} test {r['accuracy_test']:.3f}")
    rows = [{"method": subject, **refs[subject]} for subject in ("original", "retrained")] + records
    return {"model": "vit", "model_config": original.config, "recipe": config.to_dict(),
            "split": {"train": len(split.train), "retain": len(split.retain), "forget": len(split.forget),
                      "val": len(split.val), "test": len(split.test)},
            "retrain_seconds": t_retrain, "records": rows}


# ---------------------------------------------------------------------------- entry point
def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a one-minute smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0, ...)")
    parser.add_argument("--threads", type=int, default=usable_cpus(),
                        help="torch CPU threads (default: every core this process may use)")
    parser.add_argument("--skip-vit", action="store_true", help="part A only")
    for key, (full, quick) in SIZES.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                            help=f"default {full} ({quick} with --quick)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    for key in SIZES:
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    check_device(args.device, what="--device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = {key: getattr(args, key) or pair[1 if args.quick else 0] for key, pair in SIZES.items()}

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    overhead = overhead_part(sizes, device, log)
    vit = None if args.skip_vit else vit_part(sizes, device, log)
    meta = {"command": "python benchmarks/bench_wrap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cpus_usable": usable_cpus(), "torch": torch.__version__,
            "unlearnkit": uk.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "quick": args.quick, "seconds": time.perf_counter() - start}
    report = {"meta": meta, "settings": sizes, "overhead": overhead, "vit": vit}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    log(f"wrapper overhead (median wrapped / median zoo, {sizes['repeats']} interleaved runs; goal <= {1 + GOAL:.2f}):")
    for r in overhead["operations"]:
        log(f"  {r['operation']:22s} {r['ratio']:.3f}  {'ok' if r['meets_goal'] else 'over the goal'}")
    log(f"wrote {args.out} in {meta['seconds']:.0f}s")
    return report


if __name__ == "__main__":
    main()
