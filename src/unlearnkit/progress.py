"""Progress of the library's long calls (a scenario, a benchmark run): log records, and a live line on a terminal.

Every step is logged at ``INFO`` through the calling module's logger (``unlearnkit.scenarios.registry``,
``unlearnkit.bench.runner``), so ``logging.basicConfig(level=logging.INFO)`` shows them anywhere, a
log file or a notebook included. With ``progress="auto"`` (the default of those calls) a live line —
a rich status or progress bars, cleared when the call returns — is also drawn on standard error when
standard error is a terminal; ``progress=True`` draws it whatever standard error is, ``False`` never.
Neither draws it while a logging handler would write those ``INFO`` records to standard error or to a
terminal (``logging.basicConfig(level=logging.INFO)`` does): the records are the progress then, and a
live line redrawn between them would garble both.
This is the one place the library writes to a stream itself, and only to standard error.
"""

from __future__ import annotations

import logging
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


def _to_terminal(stream) -> bool:
    if stream is None:
        return False
    if stream is sys.stderr or stream is sys.__stderr__:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def logging_to_terminal(logger: str = "unlearnkit") -> bool:
    """Whether an ``INFO`` record of ``logger`` would be written by a stream handler to standard error or to a
    terminal (the handlers of the logger and of its ancestors, as far as records propagate)."""
    current = logging.getLogger(logger)
    if not current.isEnabledFor(logging.INFO):
        return False
    while current is not None:
        for handler in current.handlers:
            if (isinstance(handler, logging.StreamHandler) and handler.level <= logging.INFO
                    and _to_terminal(getattr(handler, "stream", None))):
                return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def wants_display(progress, logger: str = "unlearnkit") -> bool:
    """Whether ``progress`` (``"auto"``, True, False, None) asks for a live line on standard error now: never
    while ``logger``'s ``INFO`` records are written to standard error or a terminal (:func:`logging_to_terminal`)."""
    if progress == AUTO:
        wanted = stderr_is_terminal()
    else:
        wanted = progress is True
    return wanted and not logging_to_terminal(logger)


@contextmanager
def status_line(progress, first: str, logger: str = "unlearnkit") -> Iterator[Callable[[str], None]]:
    """A live status line on standard error when :func:`wants_display`; yields ``update(message)`` (a no-op otherwise).
    ``logger``: the logger the caller logs the same steps through."""
    if not wants_display(progress, logger):
        yield lambda message: None
        return
    from rich.console import Console

    console = Console(stderr=True, emoji=False, highlight=False)
    with console.status(first) as status:
        yield lambda message: status.update(message)


@contextmanager
def stage_bars(progress, logger: str = "unlearnkit") -> Iterator[Callable[[str, int, int], None]]:
    """Transient progress bars on standard error, one per stage, when :func:`wants_display`; yields
    ``update(stage, done, total)`` (a no-op otherwise). ``logger``: the logger the caller logs the same steps through."""
    if not wants_display(progress, logger):
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
