"""Atomic file writes: a crash or an error leaves any old file intact and no partial new one.

A write goes to a temporary file beside the target and is then renamed onto it with
:func:`os.replace`. A rename *replaces* whatever sits at the path, so the target is checked
first (:func:`check_target`): only a missing path or an existing regular file is written. A
folder, a symbolic link (which the rename would replace instead of writing through), a device
node such as ``/dev/null`` or ``/dev/full``, a FIFO or a socket is refused, and so are a
ledger's own database files. Paths that come from a user (a ``--out`` option, an export
target) are also refused anywhere inside a ledger folder (a folder holding ``ledger.sqlite``,
or one of its sub-folders): those files belong to the ledger, and overwriting one destroys it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from unlearnkit.errors import OutputError

__all__ = ["atomic_write", "check_folder", "check_target", "LEDGER_DB_NAME"]

#: The file whose presence makes a folder a ledger folder (see :mod:`unlearnkit.ledger`).
LEDGER_DB_NAME = "ledger.sqlite"


def check_target(path: str | Path, *, user_path: bool = False) -> Path:
    """Refuse a target path that an atomic write would destroy or must not touch.

    Parameters
    ----------
    path:
        The file to be written.
    user_path:
        ``True`` for a path a user chose (a ``--out`` option, an export target): then any
        path inside a ledger folder is refused too. The ledger writes its own model files
        with the default ``False``.

    Returns
    -------
    pathlib.Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputError
        If the path is a folder, a symbolic link, a device node, a FIFO or a socket; if its
        parent exists but is not a folder; if it is a ledger's database file; or, with
        ``user_path=True``, if it lies inside a ledger folder.
    """
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise OutputError(f"{str(path)!r} is not a file name; give the path of a file to write.")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    if st is not None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            raise OutputError(
                f"{path} is a symbolic link (to {os.readlink(path)!r}); refusing to write: writing would replace "
                "the link instead of the file it points to. Give the real file's path, or remove the link first."
            )
        if stat.S_ISDIR(mode):
            raise OutputError(f"{path} is a folder; give the path of a file to write, e.g. {path / 'out.json'}.")
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise OutputError(
                f"{path} is {kind}, not a regular file; refusing to write: the write would replace it. "
                "Give the path of a regular file."
            )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} exists and is not a folder.")
    folder = _ledger_folder(parent)
    if folder is not None and (user_path or (folder == _real(parent) and path.name.startswith(LEDGER_DB_NAME))):
        raise OutputError(
            f"{path} is inside the ledger folder {folder}; refusing to write: the files there belong to the ledger "
            "and overwriting one destroys it. Write to a path outside the ledger folder."
        )
    return path


def atomic_write(path: str | Path, write: Callable[[str], None], *, user_path: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The target is checked first with :func:`check_target` (``user_path`` as there), so a
    folder, a symbolic link, a device or FIFO, or a ledger's files are never replaced. On any
    error the temporary file is removed and an existing file at ``path`` is left untouched.
    """
    path = check_target(path, user_path=user_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {path.parent} for {path.name}: {exc.strerror or exc}.") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _real(folder: Path) -> Path:
    return Path(os.path.realpath(folder))


def _ledger_folder(folder: Path) -> Path | None:
    """The ledger folder that ``folder`` is or lies in (following links), or None."""
    current = _real(folder)
    for candidate in (current, *current.parents):
        if (candidate / LEDGER_DB_NAME).is_file():
            return candidate
    return None


def check_folder(path: str | Path, *, option: str = "--out") -> Path:
    """Check, before any computing, that ``path`` can hold output files; create nothing.

    ``path`` must be an existing, writable folder, or a path whose nearest existing ancestor
    is a writable folder (it is created when the first file is written). An existing file,
    device or other non-folder at ``path`` or on the way to it is refused, and so is a folder
    inside a ledger folder. ``option`` names the setting in the message (``--out``, ``--to``).

    Raises
    ------
    OutputError
        Naming the path, what is wrong and what to give instead.
    """
    path = Path(path)
    if str(path) == "":
        raise OutputError(f"{option} is empty; give a folder.")
    existing = path
    while not os.path.lexists(existing):
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder"
        where = "" if existing == path else f" (on the way to {path})"
        raise OutputError(f"{option} {path}: {existing} is {what}{where}, but {option} names a folder for the "
                          "output files. Give a folder (new or existing) instead.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {existing} is not writable; give a folder you can write to.")
    folder = _ledger_folder(existing)
    if folder is not None:
        raise OutputError(f"{option} {path} is inside the ledger folder {folder}; the files there belong to the ledger. "
                          "Give a folder outside it.")
    return path
