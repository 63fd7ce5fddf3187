"""The README's "Command line" example, run verbatim: the unlearned model is no worse than the original."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_line_block() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def _row(stdout: str, label: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if label in line)
    return [cell.strip() for cell in re.split(r"[│|┃]", line) if cell.strip()]


def test_readme_command_line_example_ends_no_worse_than_the_original(tmp_path):
    script = _command_line_block()
    assert "unlearnkit unlearn" in script and "--compare-retrain" in script
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "warning" not in (out + run.stderr).lower(), out + run.stderr
    assert "(worse)" not in out
    header = _row(out, "measure")
    assert header[:4] == ["measure", "better", "original", "unlearned"] and header[4] == "retrained"
    for label in ("accuracy on the corrected rows", "accuracy on the corrected data",
                  "gradient residual on the corrected data", "rel. distance to retrained"):
        _, better, original, unlearned, _ = _row(out, label)
        original, unlearned = float(original), float(unlearned)
        assert unlearned >= original if better == "higher" else unlearned <= original, (label, original, unlearned)
    assert "speed-up over retraining" in out and (tmp_path / "model-unlearned.pt").exists()


def _change_sets_block() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Change sets\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_readme_change_sets_example_runs_verbatim(tmp_path):
    """Every line of the "Change sets" example runs as written (the merge of its removal and relabelling too)."""
    script = _change_sets_block()
    assert "changes merge forget.json fix.json > both.json" in script and "changes show both.json" in script
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    both = json.loads((tmp_path / "both.json").read_text())
    assert both["removals"] and both["label_edits"]
    for name in ("forget.json", "fix.json", "zero3.json", "edit.json"):
        assert json.loads((tmp_path / name).read_text())
