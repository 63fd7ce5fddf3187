"""The full-size tables of docs/scenarios.md, printed from ``benchmarks/results/scenarios.json``.

    python benchmarks/scenario_tables.py label-poisoning
    python benchmarks/scenario_tables.py canary --problem lstm

One Markdown table per problem: mean ± standard deviation over the run's seeds of test accuracy, the scenario's
own measures, the request's seconds, the speed-up over retraining measured in the same run (amortised: a cached
curvature's fit not counted) and the one-shot speed-up with the fit. Nothing is computed here that the run did
not measure; the tables are copied into the docs as printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scenarios.json"

MEASURES = {
    "label-poisoning": [("restored", "restored", "share")],
    "backdoor": [("attack_success", "attack success", "pct")],
    "canary": [("exposure", "exposure (bits)", "f1"), ("bits_per_char", "bits / char", "f3")],
    "sensitive-features": [("residual", "gradient residual", "g")],
}


def cell(entry: dict, key: str, kind: str) -> str:
    mean, std = entry.get(key), entry.get(key + "_std")
    if mean is None:
        return "–"
    fmt = {"pct": lambda v: f"{100 * v:.2f}", "share": lambda v: f"{100 * v:.0f} %", "f1": lambda v: f"{v:.1f}",
           "f3": lambda v: f"{v:.3f}", "g": lambda v: f"{v:.3g}", "x": lambda v: f"{v:.1f}x", "s": lambda v: f"{v:.3g}"}[kind]
    spread = f" ± {fmt(std).rstrip('x %')}" if std and (entry.get("runs") or 0) > 1 else ""
    return fmt(mean) + spread


def tables(entry: dict, problem_filter: str | None = None) -> str:
    extra = MEASURES.get(entry["scenario"], [])
    out = [f"{entry['scenario']} ({entry['size']}), seeds {', '.join(map(str, entry['seeds']))}; "
           f"commands: {'; '.join(entry.get('commands') or [entry.get('command', '?')])}", ""]
    for problem in dict.fromkeys(e["problem"] for e in entry["summary"]):
        if problem_filter and problem_filter not in problem:
            continue
        rows = [e for e in entry["summary"] if e["problem"] == problem]
        out += [f"**{problem}**", "",
                "| method | runs | test accuracy (%) | " + " | ".join(label for _, label, _ in extra)
                + " | seconds | speed-up (amortised) | one-shot (with the fit) |",
                "|---|---:|---:|" + "---:|" * len(extra) + "---:|---:|---:|"]
        for e in rows:
            if e.get("test_accuracy") is None:
                out.append(f"| {e['method']} | {e['runs']} | {str(e.get('status', 'no result'))[:160]} |")
                continue
            one_shot = (f"{cell(e, 'one_shot_speedup', 'x')} (fit {e['fit_seconds']:.0f} s)"
                        if e.get("one_shot_speedup") is not None and e.get("fit_seconds") else "–")
            failed = f" ({e['failed']} failed)" if e.get("failed") else ""
            out.append(f"| {e['method']} | {e['runs']}{failed} | {cell(e, 'test_accuracy', 'pct')} | "
                       + " | ".join(cell(e, key, kind) for key, _, kind in extra)
                       + f" | {cell(e, 'seconds', 's') if e['method'] != 'original' else '–'} | "
                         f"{cell(e, 'speedup', 'x') if e['method'] not in ('original',) else '–'} | {one_shot} |")
        out.append("")
    out += [f"- {'met' if g['met'] else 'missed'}: {g['detail']}" for g in entry.get("goals", [])]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario")
    parser.add_argument("--problem", default=None, help="only problems whose name contains this text")
    parser.add_argument("--results", type=Path, default=RESULTS, help="a scenarios.json, or one scenario's report JSON")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    entry = data if data.get("scenario") == args.scenario else data.get(args.scenario)
    if entry is None:
        raise SystemExit(f"{args.results} has no {args.scenario!r} run (it has: {', '.join(data) or 'nothing'}).")
    print(tables(entry, args.problem))


if __name__ == "__main__":
    main()
