"""Progress of the library's long calls (a scenario, a benchmark run): log records, and a live line on a terminal.

Every step is logged at ``INFO`` through the calling module's logger (``unlearnkit.scenarios.registry``,
``unlearnkit.bench.runner``), so ``logging.basicConfig(level=logging.INFO)`` shows them anywhere, a
log file or a notebook included. With ``progress="auto"`` (the default of those calls) a live line —
a rich status or progress bars, cleared when the call returns — is also drawn on standard error when
standard error is a terminal; ``progress=True`` draws it whatever standard error is, ``False`` never.
This is the one place the library writes to a stream itself, and only to standard error.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

AUTO = "auto"


def check_progress(progress, *, error: type[Exception], accept_callable: bool = True) -> None:
    """Refuse a ``progress`` that is none of ``"auto"``, True, False, None (or a callable, where one is accepted)."""
    if progress is None or isinstance(progress, bool) or progress == AUTO:
        return
    if accept_callable and callable(progress):
        return
    shown = repr(progress)[:80]
    raise error(f"progress must be 'auto' (a live line when standard error is a terminal), True, False"
                f"{' or a callable' if accept_callable else ''}, got {shown}.")


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def wants_display(progress) -> bool:
    """Whether ``progress`` (``"auto"``, True, False, None) asks for a live line on standard error now."""
    if progress == AUTO:
        return stderr_is_terminal()
    return progress is True


@contextmanager
def status_line(progress, first: str) -> Iterator[Callable[[str], None]]:
    """A live status line on standard error when :func:`wants_display`; yields ``update(message)`` (a no-op otherwise)."""
    if not wants_display(progress):
        yield lambda message: None
        return
    from rich.console import Console

    console = Console(stderr=True, emoji=False, highlight=False)
    with console.status(first) as status:
        yield lambda message: status.update(message)


@contextmanager
def stage_bars(progress) -> Iterator[Callable[[str, int, int], None]]:
    """Transient progress bars on standard error, one per stage, when :func:`wants_display`; yields
    ``update(stage, done, total)`` (a no-op otherwise)."""
    if not wants_display(progress):
        yield lambda stage, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, emoji=False, highlight=False)
    with Progress(TextColumn("{task.description:12s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bars:
        tasks: dict = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        yield update
