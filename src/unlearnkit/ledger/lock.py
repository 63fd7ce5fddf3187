"""Inter-process locks on a ledger folder: advisory ``flock`` locks on the ledger's folders.

The same approach as the benchmark's results store (``fcntl.flock``): the kernel releases a lock
when its holder exits, however it exits (``kill -9`` included), so a crashed process never
leaves a ledger locked. The locks are taken on the folders themselves (opened read-only), not on
lock files: a folder cannot be deleted while the ledger is in use, so no one can "clean up" a
lock from under a writer, and taking a lock writes nothing. Two locks guard a ledger:

- the *writer* lock (the ledger folder), held exclusively by ``init``, ``apply``, ``refine`` and
  ``retrain`` from before they read the current state until after they committed and cleaned
  up, so writers run one after another;
- the *files* lock (the ``data`` folder), held shared by readers while they read the current
  model file, and exclusively by a writer for the moment it deletes superseded model files, so a
  reader never sees the file it is reading disappear.

On a filesystem that cannot lock a folder (some network filesystems) the lock falls back to a
lock file in the ledger folder (``ledger.lock``, ``ledger.files.lock``) and says so in a warning;
never delete those files while the ledger is in use. On platforms without ``fcntl`` (Windows)
there are no advisory locks: a warning is logged and one writer at a time is then the user's
promise. Either way a writer that slips past the lock cannot damage the ledger: every writer
writes its model file under a name of its own and commits only if no other entry was committed
since it read the ledger (see :mod:`unlearnkit.ledger.ledger`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from unlearnkit.errors import LedgerError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

WRITER_LOCK = "ledger.lock"
FILES_LOCK = "ledger.files.lock"
#: Seconds a writer waits quietly for the lock before it logs a warning naming the holder.
WAIT_WARNING_SECONDS = 1.0
_POLL_SECONDS = 0.05
# errors of flock on a folder descriptor where the filesystem cannot lock folders (e.g. NFS,
# where flock is emulated with byte-range locks that need a file opened for writing)
_NO_FOLDER_LOCKS = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)}


def lock_holders(fd: int) -> list[int]:
    """Process ids holding an ``flock`` on the file or folder behind ``fd`` (from Linux's
    ``/proc/locks``; [] where that is not available)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid, inode = int(parts[4]), int(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino:
            pids.append(pid)
    return pids


class FolderLock:
    """An ``flock`` lock guarding a ledger folder; a context manager.

    ``name`` is :data:`WRITER_LOCK` (locks ``folder`` itself) or :data:`FILES_LOCK` (locks
    ``folder / "data"``; when that folder does not exist yet, the lock file ``folder / name``).
    ``shared=False`` takes it exclusively; ``shared=True`` takes it shared and never creates
    anything: when it cannot open what it would lock, it proceeds without the lock.
    """

    def __init__(self, folder: Path, name: str, *, shared: bool = False) -> None:
        self.folder = Path(folder)
        self.name = name
        self.path = self.folder / name  # the fallback lock file
        self.shared = shared
        self._fd: int | None = None

    def _target(self) -> Path:
        if self.name == WRITER_LOCK:
            return self.folder
        data = self.folder / "data"
        return data if self.name == FILES_LOCK and data.is_dir() else self.path

    def _open(self, target: Path) -> int | None:
        try:
            if target.is_dir() or self.shared:  # readers write nothing, not even a lock file
                return os.open(target, os.O_RDONLY)
            return os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if self.shared:  # nothing to lock (an unreadable folder or no lock file): nothing to wait for
                log.debug("reading %s without a lock (%s)", self.folder, exc)
                return None
            raise LedgerError(f"Cannot lock the ledger at {self.folder} for writing: {describe_os_error(exc)}. "
                              "Nothing was changed.") from None

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another process holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            log.warning("No advisory file locks on this platform: run one ledger writer at a time.")
            return True
        target = self._target()
        fd = self._open(target)
        if fd is None:
            return True
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                self._wait(fd, op)
            except OSError as exc:
                if exc.errno not in _NO_FOLDER_LOCKS or target == self.path:
                    raise LedgerError(f"Cannot lock the ledger at {self.folder}: {describe_os_error(exc)}. "
                                      "Nothing was changed.") from None
                os.close(fd)
                fd = -1
                log.warning("The filesystem of %s cannot lock a folder (%s); using the lock file %s instead. Never "
                            "delete it while the ledger is in use.", self.folder, describe_os_error(exc), self.path)
                fd = self._open(self.path)
                if fd is None:
                    return True
                fcntl.flock(fd, op)
        except BaseException:
            if fd is not None and fd >= 0:
                os.close(fd)
            raise
        self._fd = fd
        return True

    def _wait(self, fd: int, op: int) -> None:
        """Wait for the lock; after :data:`WAIT_WARNING_SECONDS` say once who holds it."""
        deadline = time.monotonic() + WAIT_WARNING_SECONDS
        while time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                continue
        pids = lock_holders(fd)
        who = (" (another thread of this process)" if pids == [os.getpid()]
               else f" (pid {', '.join(str(p) for p in pids if p != os.getpid())})" if pids else "")
        what = "another writer" if self.name == WRITER_LOCK and not self.shared else "another process"
        log.warning("waiting for %s on %s%s", what, self.folder, who)
        fcntl.flock(fd, op)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "a file would exceed the file-size limit (ulimit -f) or the filesystem's largest file",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def describe_os_error(exc: OSError) -> str:
    """A short description of an OSError's cause for an error message (disk full, read-only, ...)."""
    known = _CAUSES.get(exc.errno)
    detail = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno, "")
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{known or detail} [{name or 'OSError'}: {detail}]{where}"
