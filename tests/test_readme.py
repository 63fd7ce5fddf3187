"""The README's two opening commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in text.strip().splitlines()]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = _readme_commands()
    assert demo.endswith("unlearnkit demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci
