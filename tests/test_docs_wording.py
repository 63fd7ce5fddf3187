"""The documentation speaks to users, not about how the project is developed.

Docs, the README, the benchmark scripts and the package's sources (docstrings, comments and the
text they print) must not mention issue numbers, work sessions, which machines were or were not
at hand while writing, or notes that are not in the repository. A benchmark page says what it ran
on ("a CPU-only machine with 2 cores"), not what the writer had. Public references (papers, a
GitHub issue of another project cited by its address) are fine.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PHRASES = [
    r"\(issue #?\d+\)",                              # "(issue 6)"
    r"(?<!GitHub )\bissues? #?\d+",                  # "issue 12", "issue #4"; "GitHub issue 123" (a citation) is allowed
    r"\bthe issue'?s?\b(?! tracker)",                # "the goals", "the issue sets no goal"
    r"\bresearch notes?\b",
    r"shared/research",
    r"\bDESIGN\.md\b",
    r"\b(was|were|is|are|been) (not )?lent\b",
    r"\bno (GPU|accelerator) (was|is|were)\b",
    r"\bmachine without a GPU\b",                    # say "a CPU-only machine"
    r"\bthis (work )?session\b",
    r"\b(previous|earlier|last|next|another) session\b",
    r"\bour (build|test|development) machines?\b",
    r"\b(was|were) not available (to us|here|to this)\b",
    r"\bhelper \d+\b",
    r"\bnow fixed\b",                                # history of the work: say what the numbers are instead
    r"\bfound a bug\b",
    r"\bthe rerun\b",
    r"\b(before|after) the (last|latest|recent) review\b",
    r"\breview(ed)? of the (fitting |)code\b",
]
PROSE_ONLY = [
    r"\b(on|from|of) this machine\b",               # in a page, "this machine" is the writer's, not the reader's
]
"""Banned in docs/ and README.md only: in code, "this machine" is the one the code runs on."""
PATTERN = re.compile("|".join(f"(?:{p})" for p in PHRASES), re.IGNORECASE)
PROSE = re.compile("|".join(f"(?:{p})" for p in PHRASES + PROSE_ONLY), re.IGNORECASE)


def _files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    src = ROOT / "src" / "unlearnkit"
    files += sorted(src.rglob("*.py")) + sorted(src.rglob("*.toml"))
    return [f for f in files if f.is_file()]


def hits(text: str, *, prose: bool = True) -> list[tuple[int, str]]:
    """(line number, matched text) of every banned phrase in ``text`` (``prose``: a page of docs)."""
    pattern = PROSE if prose else PATTERN
    return [(i, m.group(0)) for i, line in enumerate(text.splitlines(), 1) for m in pattern.finditer(line)]


def test_the_phrase_list_catches_what_it_should_and_spares_citations():
    caught = ["Full-size runs of the scenarios (issue 6).", "as issue #12 asks", "the issue's goals",
              "the issue sets no goal", "see the research notes", "shared/research/kfac.md", "see DESIGN.md",
              "no GPU was lent", "A GPU was not lent to us", "no GPU was available", "a 2-core machine without a GPU",
              "measured in this session", "on this machine", "pinned for our build machines",
              "The full run found a bug, now fixed.", "The table above is from the rerun with the fix.",
              "These fits ran before the last review of the fitting code", "the same code after the latest review"]
    for text in caught:
        assert hits(text), text
    spared = ["See GitHub issue 1234 of pytorch/pytorch.", "run on a CPU-only machine with 2 cores",
              "the whole pytest session", "the machine's cores", "issues are welcome on the issue tracker",
              "Machine Unlearning of Features and Labels (NDSS 2023)", "rerun a scenario with --size full",
              "a review of the literature", "the exact solver is now used", "a bug in the user's data"]
    for text in spared:
        assert not hits(text), (text, hits(text))
    assert not hits("a CUDA device that exists on this machine", prose=False)


def test_docs_readme_benchmarks_and_sources_are_free_of_development_process_wording():
    files = _files()
    assert ROOT / "README.md" in files and any(f.parent.name == "benchmarks" for f in files)
    found = [f"{f.relative_to(ROOT)}:{line}: {text!r}" for f in files
             for line, text in hits(f.read_text(encoding="utf-8", errors="replace"), prose=f.suffix == ".md")]
    assert not found, "development-process wording (say it to a user instead):\n" + "\n".join(found)
