"""Every registered unlearning method at its default hyperparameters, against retraining.

Writes ``benchmarks/results/methods.json``: per (dataset, model seed, method) the accuracy on
the retain, forget, validation and test sets, the loss-based membership attack (forget vs test
losses, DeepUnlearn's population MIA) and its indiscernibility ``1 - |2 MIA - 1|``, RetDev
(``sum |acc_U / acc_R - 1|`` over retain, forget and test), the seconds ``unlearn`` took and RTE
(the retraining seconds of the same seed divided by the method's seconds, measured in the same
run); and per (dataset, method) the mean and standard deviation over seeds.

Protocol (DeepUnlearn's, :func:`unlearnkit.data.unlearning_split`): one fixed split per data set
(seed 123: validation 15 % of the training set, a random 10 % of the rest forgotten), model
seeds 0, 1, 2 vary the initialisation. The original model trains on retain + forget, the
reference retrains on retain from the same initialisation with the same recipe. Methods see the
training data, the forget set and the validation set, never the test set.

* ``digits``: the 1,797 scikit-learn digits (20 % held out as the test set), SmallCNN.
* ``fashion-mnist``: ``--fmnist-rows`` rows (default 6,000) drawn with seed 123 from the official
  training set (Debian's ``dataset-fashion-mnist``), the official 10,000-row test set, SmallCNN.

SISA trains its own sharded ensemble (5 shards, same recipe) once per seed; its "original" is that
ensemble, and its RTE divides the single model's retraining time by the time to retrain the
touched shards. These are default hyperparameters: the starting point the tuned benchmark
(``unlearnkit bench``) improves on.

Run: ``python benchmarks/bench_methods.py`` (about 30 minutes on one CPU core);
``--datasets digits --seeds 0`` for a 3-minute look; ``--device cuda`` where a GPU is available.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import unlearnkit as uk
from unlearnkit.metrics.mia import loss_attack
from unlearnkit.training import TrainConfig, accuracy, train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "digits": TrainConfig(optimizer="adam", epochs=30, lr=3e-3, batch_size=32),
    "fashion-mnist": TrainConfig(optimizer="adam", epochs=10, lr=2e-3, batch_size=64),
}
PARTS = ("retain", "forget", "val", "test")


def load(dataset: str, fmnist_rows: int) -> uk.data.UnlearningSplit:
    if dataset == "digits":
        return uk.data.unlearning_split(uk.data.load_digits())
    if dataset == "fashion-mnist":
        full = uk.data.load_fashion_mnist(split="train")
        rows = np.sort(np.random.default_rng(123).permutation(len(full))[:fmnist_rows])
        return uk.data.unlearning_split(full.subset(rows, name="fashion-mnist"), uk.data.load_fashion_mnist(split="test"))
    raise SystemExit(f"unknown dataset {dataset!r}; choose digits or fashion-mnist")


def losses(model, data, device) -> np.ndarray:
    out = []
    with torch.no_grad():
        for xb, yb in data.batches(2048, device=device):
            out.append(model.per_sample_loss(model(xb), yb).cpu().numpy())
    return np.concatenate(out)


def measure(model, split, device) -> dict:
    rec = {f"acc_{p}": accuracy(model, getattr(split, p), device=device) for p in PARTS}
    attack = loss_attack(losses(model, split.forget, device), losses(model, split.test, device), seed=123)
    rec["mia_test"] = attack.accuracy
    rec["indiscernibility"] = attack.indiscernibility
    return rec


def retdev(rec: dict, reference: dict) -> float:
    return float(sum(abs(rec[f"acc_{p}"] / reference[f"acc_{p}"] - 1) for p in ("retain", "forget", "test")))


def run_seed(dataset, split, seed, methods, device, log) -> list[dict]:
    config = RECIPES[dataset]
    from dataclasses import replace

    config = replace(config, seed=seed)
    original = train(uk.models.for_data("cnn", split.train), split.train, config=config, device=device)
    retrained = uk.retrain(original, split.train, split.changes(), device=device)
    retrain_seconds = retrained.train_seconds
    ref = measure(retrained, split, device)
    base = {"dataset": dataset, "seed": seed, "retrain_seconds": retrain_seconds, "original_seconds": original.train_seconds}
    records = [{**base, "method": "original", **measure(original, split, device)},
               {**base, "method": "retrained", **ref, "seconds": retrain_seconds, "rte": 1.0}]
    records[0]["retdev"] = retdev(records[0], ref)
    records[1]["retdev"] = 0.0
    log(f"{dataset} seed {seed}: original {records[0]['acc_test']:.3f} test acc ({original.train_seconds:.1f}s), "
        f"retrained {ref['acc_test']:.3f} ({retrain_seconds:.1f}s)")
    sharded = None
    for name in methods:
        subject = original
        if name == "sisa":
            if sharded is None:
                ens = uk.models.ShardedEnsemble.for_data("cnn", split.train, n_shards=5)
                sharded = train(ens, split.train, config=config, device=device)
            subject = sharded
        rec = {**base, "method": name}
        try:
            result = uk.methods.make(name).unlearn(subject, split.train, split.changes(), val=split.val, device=device)
        except uk.errors.UnlearnKitError as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  {name}: FAILED {rec['error'][:160]}")
            records.append(rec)
            continue
        rec.update(measure(result.model, split, device))
        rec["seconds"] = result.seconds
        rec["rte"] = retrain_seconds / result.seconds
        rec["retdev"] = retdev(rec, ref)
        if name == "sisa":
            rec["sisa_original_acc_test"] = accuracy(sharded, split.test, device=device)
        log(f"  {name:16s} retain {rec['acc_retain']:.3f} forget {rec['acc_forget']:.3f} test {rec['acc_test']:.3f} "
            f"MIA {rec['mia_test']:.3f} RetDev {rec['retdev']:.3f} {result.seconds:7.2f}s RTE {rec['rte']:7.1f}")
        records.append(rec)
    return records


def summarise(records: list[dict]) -> list[dict]:
    keys = ("acc_retain", "acc_forget", "acc_val", "acc_test", "mia_test", "indiscernibility", "retdev", "seconds", "rte")
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (dataset, method), rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        entry = {"dataset": dataset, "method": method, "seeds": len(ok), "failed": len(rows) - len(ok)}
        for k in keys:
            vals = [r[k] for r in ok if k in r]
            if vals:
                entry[k] = float(np.mean(vals))
                entry[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="", help="comma-separated; default every registered method")
    parser.add_argument("--fmnist-rows", type=int, default=6_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small CNNs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "methods.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m] or [m for m in uk.methods.list() if m not in ("retrain", "retrain-warm")]
    device = torch.device(args.device)

    def log(msg):
        print(msg, flush=True)

    start = time.perf_counter()
    records = []
    splits = {}
    for dataset in args.datasets.split(","):
        split = load(dataset, args.fmnist_rows)
        splits[dataset] = {p: len(getattr(split, p)) for p in PARTS}
        log(f"{dataset}: " + ", ".join(f"{p} {n}" for p, n in splits[dataset].items()))
        for seed in (int(s) for s in args.seeds.split(",")):
            records += run_seed(dataset, split, seed, methods, device, log)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "command": "python benchmarks/bench_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": time.perf_counter() - start, "splits": splits,
            "recipes": {k: v.to_dict() for k, v in RECIPES.items()},
            "note": "default hyperparameters of every method; MIA = loss attack forget vs test (DeepUnlearn), "
                    "RTE = retraining seconds / method seconds in the same run"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summarise(records), "records": records}, indent=1))
    log(f"wrote {out} in {meta['seconds']:.0f}s")


if __name__ == "__main__":
    main()
