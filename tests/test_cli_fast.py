"""The command line parses and prints help without importing the numerical stack; `--version`."""

from __future__ import annotations

import subprocess
import sys

HELP_EVERY_COMMAND = r"""
import sys
import typer.main
from typer.testing import CliRunner
from unlearnkit.cli import app

def walk(cmd, prefix):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from walk(sub, prefix + [name])

runner = CliRunner()
paths = list(walk(typer.main.get_command(app), []))
for path in paths:
    result = runner.invoke(app, path + ["--help"])
    assert result.exit_code == 0, (path, result.output[-500:])
    assert "Usage" in result.output, path
heavy = sorted(m for m in ("torch", "numpy", "scipy", "sklearn") if m in sys.modules)
print(len(paths), ",".join(heavy) or "-")
"""


def test_help_of_every_command_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", HELP_EVERY_COMMAND], capture_output=True, text=True, check=True)
    n, heavy = out.stdout.split()
    assert int(n) >= 15  # the root, the commands and the ledger / bench groups with theirs
    assert "torch" not in heavy.split(","), heavy


def test_import_unlearnkit_is_lazy_and_complete():
    code = ("import sys, unlearnkit as uk; assert 'torch' not in sys.modules; "
            "names = [n for n in uk.__all__ if getattr(uk, n) is None]; assert not names, names; "
            "from unlearnkit import Changes, train, metrics; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_version():
    from unlearnkit import __version__

    out = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"unlearnkit {__version__}", (out.stdout, out.stderr)


def test_piped_tables_are_not_cut(tmp_path):
    """rich cuts tables to 80 columns when stdout is not a terminal; piped output keeps every value whole."""
    import re

    ledger = tmp_path / "L"
    run = [sys.executable, "-m", "unlearnkit.cli", "ledger"]
    subprocess.run(run + ["init", str(ledger), "--data", "breast-cancer:train", "--sigma", "50"], capture_output=True,
                   text=True, check=True)
    out = subprocess.run(run + ["history", str(ledger)], capture_output=True, text=True, check=True).stdout
    assert "…" not in out
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", out) and "initial training" in out and "cumulative" in out
