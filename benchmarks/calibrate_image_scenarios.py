"""Calibration of the ``full`` size of the image scenarios (``label-poisoning``, ``backdoor``).

Each run trains the scenarios' SmallCNN (channels 16/32, hidden 64, ``l2 = 1e-3``; Adam, lr 3e-3,
batch 64, the recipe of :func:`unlearnkit.scenarios.poisoning.train_pair`) on Fashion-MNIST rows
drawn as :func:`~unlearnkit.scenarios.poisoning.image_data` draws them (seed ``--seed``; all 60,000
training rows at ``--rows 60000``), with the training loop of :func:`unlearnkit.train` itself, and
after every epoch measures, on the scenario's test half of the held-out images (5,000 rows):

* clean test accuracy; for a backdoor run also the attack success (the share of triggered test
  images of the other classes classified as the target, :func:`~unlearnkit.scenarios.backdoor.attack_success`),
  which every run reports, so the clean run gives the retrained reference of the backdoor scenario;
* the epoch's wall and CPU seconds (``time.process_time``, all threads of the process), evaluation
  excluded.

Runs (``--runs``, each a name): ``clean``; ``random:RATE`` (each of ``round(RATE n)`` rows
relabelled to a uniformly drawn other class); ``targeted:RATE:SOURCES`` (the budget split over the
source classes ``0 .. SOURCES-1``, class ``s`` relabelled ``9 - s``,
:func:`~unlearnkit.scenarios.poisoning.flip_labels`); ``backdoor:RATE`` (the trigger of
:mod:`unlearnkit.scenarios.backdoor` planted in ``round(RATE n)`` rows). The accuracy drop of a
poisoning run is the clean run's accuracy minus its own at the same epoch (the same seed: same
initialisation and shuffling). Epoch ``E`` of a curve is exactly the model that ``train`` with
``epochs=E`` returns, so one run of ``--epochs`` epochs serves every shorter recipe.

``--threads`` sets torch's threads (1 by default, as the scenarios' benchmark runs);
``--threads 2 --epochs 2`` gives the two-core time of an epoch (meaningful only when both cores are
free: on a busy machine two threads wait for each other, see the ``threads2`` entry).

Commands behind the numbers in ``benchmarks/results/calibrate_image_scenarios.json`` (one entry per
``--tag``, replaced when re-run; CPU minutes of one core):

    # 10,000 rows: which poisoning costs >= 5 points (about 4 CPU minutes)
    python benchmarks/calibrate_image_scenarios.py --tag subset --rows 10000 --epochs 15 \\
        --runs clean random:0.2 targeted:0.2:10 targeted:0.4:10 targeted:0.1:2 targeted:0.15:2
    # 60,000 rows: convergence, the chosen poisonings and the backdoor (about 10 CPU minutes)
    python benchmarks/calibrate_image_scenarios.py --tag full --rows 60000 --epochs 10 \\
        --runs clean targeted:0.15:2 backdoor:0.1 random:0.2
    # the full size's recipe, 12 epochs (about 6 CPU minutes)
    python benchmarks/calibrate_image_scenarios.py --tag full-12 --rows 60000 --epochs 12 --runs clean targeted:0.15:2
    # two epochs with two torch threads
    python benchmarks/calibrate_image_scenarios.py --tag threads2 --rows 60000 --epochs 2 --threads 2 --runs clean

What they showed (seed 0): at 10,000 rows the reference rule (20 % over all ten pairs) and random
flips cost a few points that grow with the epochs as the CNN memorises the flipped labels (and
swing by several points from epoch to epoch), flipping 40 % of every class, or half of two classes,
makes the accuracy jump by 10-20 points between epochs; 75 % of two classes costs a steady 16-19
points. At 60,000 rows: see the ``full`` and ``full-12`` entries.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from unlearnkit import training
from unlearnkit.models import for_data
from unlearnkit.scenarios import backdoor, poisoning
from unlearnkit.training import TrainConfig, predict

RESULTS = Path(__file__).resolve().parent / "results" / "calibrate_image_scenarios.json"
LR, BATCH, L2 = 3e-3, 64, 1e-3


def poisoned_data(run: str, clean, seed: int):
    """The training data of ``run`` and the number of rows it changed."""
    kind, *args = run.split(":")
    if kind == "clean":
        return clean, 0
    if kind in ("random", "targeted"):
        sources = int(args[1]) if kind == "targeted" and len(args) > 1 else None
        rows, new = poisoning.flip_labels(clean.y, float(args[0]), kind, clean.n_classes, seed, sources=sources)
        y = clean.y.copy()
        y[rows] = new
        return clean.replace(y=y, name=f"{clean.name}:poisoned"), len(rows)
    if kind == "backdoor":
        data, rows = backdoor.plant(clean, float(args[0]), float(clean.X.max()), seed)
        return data, len(rows)
    raise SystemExit(f"unknown run {run!r}; use clean, random:RATE, targeted:RATE:SOURCES or backdoor:RATE")


def curve(data, test, *, epochs: int, seed: int, trigger_value: float) -> list[dict]:
    """Train as :func:`unlearnkit.train` does and measure after every epoch."""
    size = poisoning.SIZES["full"]
    model = for_data("cnn", data, channels=size.channels, hidden=size.hidden, l2=L2)
    config = TrainConfig(epochs=epochs, lr=LR, batch_size=BATCH, seed=seed).resolved(model)
    net = copy.deepcopy(model).to(dtype=torch.float32)
    net.init_parameters(torch.Generator(device="cpu").manual_seed(config.seed))  # as train() initialises
    attack = backdoor.attack_success(test, trigger_value)
    out: list[dict] = []
    clock = {"wall": time.perf_counter(), "cpu": time.process_time()}

    def after_epoch(step, total, message):
        wall, cpu = time.perf_counter() - clock["wall"], time.process_time() - clock["cpu"]
        acc = float(np.mean(predict(net, test) == test.y))
        entry = {"epoch": len(out) + 1, "test_accuracy": acc, "attack_success": attack(net)["attack_success"],
                 "epoch_wall_seconds": wall, "epoch_cpu_seconds": cpu}
        out.append(entry)
        print(f"  epoch {entry['epoch']:2d}: acc {acc:.4f}  attack {entry['attack_success']:.3f}  "
              f"{wall:.1f}s wall {cpu:.1f}s cpu", flush=True)
        net.train()
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    training._fit_minibatch(net, data, config, torch.device("cpu"), torch.float32, after_epoch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True, help="entry name in the results file")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="+", default=["clean"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = poisoning.Size(fashion_rows=args.rows, fashion_test_rows=5_000, rates=(), kinds=(), digits_epochs=0,
                          fashion_epochs=args.epochs)
    [(_, clean, _, test, _)] = poisoning.image_data(size, args.seed)
    start = time.perf_counter()
    runs: dict[str, dict] = {}
    for run in args.runs:  # the results file is written after every run, so a long calibration keeps what it measured
        data, changed = poisoned_data(run, clean, args.seed)
        print(f"{run}: {len(data)} rows, {changed} changed", flush=True)
        epochs = curve(data, test, epochs=args.epochs, seed=args.seed, trigger_value=float(clean.X.max()))
        runs[run] = {"changed_rows": changed, "epochs": epochs,
                     "train_wall_seconds": sum(e["epoch_wall_seconds"] for e in epochs),
                     "train_cpu_seconds": sum(e["epoch_cpu_seconds"] for e in epochs)}
        save(args, clean, test, runs, time.perf_counter() - start)
    for name, r in runs.items():
        last = r["epochs"][-1]
        print(f"{name}: final acc {last['test_accuracy']:.4f}"
              + (f", drop {last['drop_vs_clean_points']:.2f} points" if "drop_vs_clean_points" in last else "")
              + f", attack {last['attack_success']:.3f}; {r['train_wall_seconds']:.0f}s wall, "
                f"{r['train_cpu_seconds']:.0f}s cpu for {len(r['epochs'])} epochs")
    print(f"wrote {args.out} [{args.tag}]")


def save(args, clean, test, runs: dict, seconds: float) -> None:
    """Replace the ``args.tag`` entry of the results file; each poisoned run gets its drop against the clean run."""
    if "clean" in runs:
        base = [e["test_accuracy"] for e in runs["clean"]["epochs"]]
        for r in runs.values():
            for e, b in zip(r["epochs"], base):
                e["drop_vs_clean_points"] = 100 * (b - e["test_accuracy"])
    entry = {"rows": len(clean), "test_rows": len(test), "seed": args.seed, "threads": args.threads,
             "recipe": {"optimizer": "adam", "lr": LR, "batch_size": BATCH, "l2": L2, "channels": [16, 32], "hidden": 64},
             "runs": runs, "seconds": seconds,
             "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0]},
             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.tag] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
