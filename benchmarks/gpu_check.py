"""The scenarios on one CUDA device, with synchronised timing, inside a time budget.

    bash benchmarks/gpu_check.sh                     # full size on cuda, 8 minutes in all
    python benchmarks/gpu_check.py --budget 460      # the driver alone
    python benchmarks/gpu_check.py --cpu-dry-run     # the same logic on the CPU at the tiny size

Each scenario runs through :func:`unlearnkit.scenarios.run` on seed 0. Every timed region of the library
(:mod:`unlearnkit.timing`) synchronises the CUDA device at its start and end, so a row's ``seconds`` counts the
kernels it launched; this driver also synchronises around each whole scenario and counts the
``torch.cuda.synchronize`` calls made during it (``sync_calls``), as evidence that the synchronisation ran.

Order and budget: scenarios run from the shortest expected to the longest. The expected time is the scenario's
recorded CPU time per seed at the same size (``benchmarks/results/scenarios.json``, when it holds that size) times a scale:
``--estimate-scale`` at first, then the ratio of measured to recorded time over the scenarios already run here. A
scenario whose expected time exceeds the budget left is skipped, with the reason written down; one with no recorded
time runs if any budget is left. The JSON is rewritten after every scenario, so a run cut short by ``timeout``
still leaves the finished scenarios' numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "gpu_check.json"
ESTIMATES = ROOT / "results" / "scenarios.json"
ROW_FIELDS = ("problem", "method", "status", "seconds", "speedup", "fit_seconds", "one_shot_seconds",
              "one_shot_speedup", "test_accuracy")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run on the CPU at the tiny size with a short budget (tests the driver; no GPU needed)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, or cpu with --cpu-dry-run)")
    parser.add_argument("--size", default=None, choices=("tiny", "full"),
                        help="scenario size (default: full, or tiny with --cpu-dry-run)")
    parser.add_argument("--only", nargs="*", default=None, help="scenarios to consider (default: all four)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all scenarios together (default: 460, or 120 with --cpu-dry-run)")
    parser.add_argument("--estimate-scale", type=float, default=1.0,
                        help="expected time on this device / recorded CPU time, until a scenario has been measured "
                             "(default 1.0)")
    parser.add_argument("--estimates", type=Path, default=ESTIMATES,
                        help="recorded scenario times (a benchmarks/results/scenarios.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON written (default %(default)s)")
    parser.add_argument("--reports", type=Path, default=None,
                        help="folder for the scenarios' own reports (default: gpu_scenarios/ next to --out)")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.cpu_dry_run else "cuda")
    args.size = args.size or ("tiny" if args.cpu_dry_run else "full")
    args.budget = args.budget if args.budget is not None else (120.0 if args.cpu_dry_run else 460.0)
    args.reports = args.reports or args.out.parent / "gpu_scenarios"
    if args.budget < 0 or args.estimate_scale <= 0 or args.threads < 1:
        parser.error("--budget must be >= 0, --estimate-scale > 0 and --threads >= 1")
    return args


def recorded_seconds(path: Path, size: str) -> dict[str, float]:
    """``{scenario: seconds of one seed}`` from a scenarios.json, for the entries run at ``size`` (an entry's seconds
    cover all its seeds, merged runs included; this check runs one); empty if there is none."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: float(e["seconds"]) / max(1, len(e.get("seeds") or ())) for name, e in entries.items()
            if isinstance(e, dict) and e.get("size") == size and isinstance(e.get("seconds"), (int, float))}


def machine(torch, device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "device": str(device), "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda}
    if shutil.which("nvidia-smi"):
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count())
    return info


@contextmanager
def counting_syncs(torch):
    """Count the calls of ``torch.cuda.synchronize`` inside the block (the library's timers make them)."""
    calls = [0]
    original = torch.cuda.synchronize

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    torch.cuda.synchronize = counted
    try:
        yield calls
    finally:
        torch.cuda.synchronize = original


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from unlearnkit import scenarios

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch; use --cpu-dry-run to test the driver on the CPU.",
              file=sys.stderr)
        return 2
    names = args.only or list(scenarios.SCENARIOS)
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        print(f"gpu_check: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(scenarios.SCENARIOS)}.",
              file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    recorded = recorded_seconds(args.estimates, args.size)
    order = sorted(names, key=lambda n: (n not in recorded, recorded.get(n, 0.0)))
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(["gpu_check.py", *argv]),
        "machine": machine(torch, device),
        "size": args.size, "seeds": [0], "threads": args.threads, "budget_seconds": args.budget,
        "synchronised": cuda,
        "timing": ("every timed region synchronises the CUDA device at its start and end (unlearnkit.timing), and "
                   "each scenario's wall time is taken between two synchronisations" if cuda else
                   "CPU run: no device synchronisation is needed or made"),
        "estimates": {"source": str(args.estimates) if recorded else None, "recorded_cpu_seconds": recorded,
                      "initial_scale": args.estimate_scale,
                      "rule": "expected = recorded CPU seconds at this size x scale; the scale becomes measured / "
                              "recorded over the scenarios already run here; a scenario expected to exceed the "
                              "budget left is skipped; one with no recorded time runs while budget is left"},
        "order": order, "scenarios": {}, "finished": False,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)

    save()
    begun = time.perf_counter()
    measured, recorded_run = 0.0, 0.0
    for name in order:
        left = args.budget - (time.perf_counter() - begun)
        scale = measured / recorded_run if recorded_run > 0 else args.estimate_scale
        expected = recorded[name] * scale if name in recorded else None
        entry = {"expected_seconds": expected, "budget_left_seconds": round(left, 1)}
        if left <= 0 or (expected is not None and expected > left):
            entry.update(status="skipped", reason=(
                f"expected {expected:.0f} s (recorded {recorded[name]:.0f} s on the CPU x {scale:.2f}) > "
                f"{max(left, 0):.0f} s of budget left" if expected is not None else "no budget left"))
            report["scenarios"][name] = entry
            save()
            print(f"gpu_check: {name}: skipped ({entry['reason']})", flush=True)
            continue
        print(f"gpu_check: {name} ({args.size}) on {device}, {left:.0f} s of budget left", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        with counting_syncs(torch) as syncs:
            start = time.perf_counter()
            try:
                # the tuned baselines' search (minutes per method at full size) does not fit the budget: the
                # check exercises the updates, retraining and SISA on the device; bench_scenarios.py tunes
                result = scenarios.run(name, size=args.size, seeds=[0], device=str(device), threads=args.threads,
                                       out=args.reports, progress=False, baselines=())
                error = None
            except Exception as exc:  # noqa: BLE001 - one failing scenario must not lose the others' numbers
                result, error = None, f"{type(exc).__name__}: {exc}"
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        entry.update(status="ok" if error is None else f"failed: {error}", seconds=seconds, sync_calls=syncs[0],
                     max_memory_allocated_bytes=torch.cuda.max_memory_allocated(device) if cuda else None)
        if result is not None:
            entry["rows"] = [{k: getattr(r, k) for k in ROW_FIELDS} for r in result.rows]
            entry["goals"] = [g.to_dict() for g in result.goals]
            entry["report"] = str(args.reports / f"{name}.json")
        if name in recorded:
            measured += seconds
            recorded_run += recorded[name]
            entry["ratio_to_recorded_cpu"] = seconds / recorded[name]
        report["scenarios"][name] = entry
        save()
        print(f"gpu_check: {name}: {entry['status']} in {seconds:.1f} s, {syncs[0]} synchronisations", flush=True)
    report["finished"] = True
    report["seconds"] = time.perf_counter() - begun
    save()
    print(f"gpu_check: wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
