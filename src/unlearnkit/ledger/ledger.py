"""A persistent, verifiable record of the unlearning requests applied to a certified model.

A ledger is a folder::

    ledger.sqlite        entries (one per training, request, retraining, refinement), the
                         parameters after each, the data overlay, the cached curvature
    data/X.npy y.npy ids.npy   the training data as given at init (read-only, memory-mapped)
    data/checked.json    when the data files were last hashed (a cache for the writers' check)
    model-000007-<token>.pt   the current model (unlearnkit model file; the name carries the
                         entry and a random token of the writer that made it)

**Creation.** :meth:`Ledger.create` builds the whole ledger in a temporary folder beside the
target and renames it into place, or, for an existing empty folder, in a hidden folder inside it
whose files are moved up with ``ledger.sqlite`` last (a folder without ``ledger.sqlite`` is no
ledger). A process killed during ``init`` never leaves a partial ledger, and ``init`` again
removes what it left.

**Writers run one at a time.** :meth:`Ledger.apply`, :meth:`Ledger.refine` and
:meth:`Ledger.retrain` hold an exclusive ``flock`` on the ledger folder (see
:mod:`unlearnkit.ledger.lock`) from before they read the current state until after they
committed: a second writer waits, then starts from the state the first one left. A writer that
gets past the lock anyway cannot damage the ledger: its model file has a name of its own, and
its transaction commits only if no other entry was committed since it read the ledger. Readers
(opening a ledger, ``history``, ``verify``, ``export``, ``head``) take no writer lock and never
create, change or delete a ledger file (SQLite may roll back the journal of a crashed writer
when the database is opened; ``verify`` may wait briefly behind a writer deleting a superseded
model file).

**Transactions.** A writer computes the update in memory, writes the new model file under its
own name (through a temporary file; file and folder synced to disk, published with a hard link
that never replaces an existing file), then records the entry, its parameters, the overlay rows
and (when it changed) the curvature in *one* SQLite transaction (``synchronous=FULL``), and only
then deletes the superseded model file (holding the lock on the ``data`` folder exclusively for
that moment, so no reader is reading it). A process killed at any point, or a power loss after
the commit, leaves either the old state or the new one; the files a killed writer leaves behind
are removed by a later writer once no writer can still commit them. A request is fully there or
not at all.

**Integrity.** Each entry stores the SHA-256 of the parameters before and after (the loss
perturbation ``b`` included) and a hash chained over every earlier entry; the first entry also
covers the ledger's metadata (spec, model, data fingerprint). :meth:`Ledger.verify` checks the
database, the chain, the parameter blobs, the model file and the data files, and can replay the
whole history, re-training the first model from the data and the recorded seed. The chain alone
is not a signature: whoever can write the folder can rewrite it consistently, or drop its last
entries. :meth:`Ledger.head` gives the latest ``(entry, chained hash)`` to keep outside the
folder, and ``verify(expect_head=...)`` checks it; an optional secret key adds an HMAC to every
entry. A database that is not a ledger, truncated or corrupted raises
:class:`~unlearnkit.errors.LedgerError`: nothing is ever reset or recreated silently.
"""

from __future__ import annotations

import datetime as _dt
import errno
import glob
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import secrets
import stat
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.data.preprocess import METADATA_KEY, Preprocessing
from unlearnkit.errors import CertificationError, ChangesError, LedgerError, ModelError, UnlearnKitError
from unlearnkit.influence.certified import (
    Calibration,
    CertifiedModel,
    CertifiedResult,
    CertifiedSpec,
    CertifiedState,
    certified_train,
    classical_is_valid,
    gaussian_delta,
)
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.ledger.lock import FILES_LOCK, WRITER_LOCK, FolderLock, describe_os_error
from unlearnkit.ledger.rows import LedgerRows, fingerprint, write_base
from unlearnkit.models.io import load_model, model_payload
from unlearnkit.models.linear import LogisticRegression

log = logging.getLogger(__name__)

FORMAT = "unlearnkit.ledger/1"
FORMAT_PREPROCESS = "unlearnkit.ledger/2"
"""The format a ledger that stores preprocessing (scaling, class names, CSV columns) records in its metadata: an
older unlearnkit, which would ignore the preprocessing and take requests in the wrong units, refuses it. Ledgers
without preprocessing keep :data:`FORMAT`. (Entry HMACs always use :data:`FORMAT`.)"""
DB_NAME = "ledger.sqlite"
KEY_ENV = "UNLEARNKIT_LEDGER_KEY"
"""Environment variable the command line reads the ledger's HMAC key from (see :func:`read_key`)."""
MAC_ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16
MAX_REASON_CHARS = 10_000
"""Longest ``reason`` an entry records (the reason is stored and shown with every entry)."""
MAX_KEY_FILE_BYTES = 4096
"""Largest key file :func:`read_key` reads; it must be a regular file (not a device or FIFO)."""
DATA_CHECK_CACHE = "checked.json"
_MODEL_RE = re.compile(r"^model-(\d{6,})(?:-[0-9a-f]{16})?\.pt$")  # ledgers before 1.x: no writer token
_TEMP_RE = re.compile(r"^\.model-(\d{6,})[-.].*\.tmp$")
STALE_TEMP_SECONDS = 600
"""A temporary model file for an entry not yet committed is removed once it is this old (its
writer died); one for an entry number already taken is removed at once (its writer lost)."""
INIT_BUILD_PREFIX = ".ledger-init-"
INIT_MARKER = ".ledger-init-moving"
_SEED_LIMIT = 2**64

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT NOT NULL, reason TEXT NOT NULL,
    changes TEXT, n_affected INTEGER NOT NULL, residual_bound REAL, worst_case_bound REAL,
    cumulative_bound REAL NOT NULL, exact_residual REAL, params_before TEXT, params_after TEXT NOT NULL,
    certificate TEXT NOT NULL, state TEXT NOT NULL, details TEXT NOT NULL, model_file TEXT NOT NULL,
    prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL);
CREATE TABLE params (seq INTEGER PRIMARY KEY, theta BLOB NOT NULL, perturbation BLOB NOT NULL);
CREATE TABLE overlay (id INTEGER PRIMARY KEY, removed INTEGER NOT NULL, label INTEGER, x BLOB, seq INTEGER NOT NULL);
CREATE TABLE curvature (id INTEGER PRIMARY KEY CHECK (id = 1), blob BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE macs (seq INTEGER PRIMARY KEY, mac TEXT NOT NULL);
"""

_ENTRY_FIELDS = ("seq", "kind", "time", "reason", "changes", "n_affected", "residual_bound", "worst_case_bound",
                 "cumulative_bound", "exact_residual", "params_before", "params_after", "certificate", "state",
                 "details", "model_file", "prev_hash")
_JSON_META = ("spec", "model", "train_config", "data", METADATA_KEY)


def parameter_hash(model: LogisticRegression) -> str:
    """SHA-256 of the parameters (float64, parameter order) and the perturbation ``b``."""
    theta, b = _param_arrays(model)
    h = hashlib.sha256()
    h.update(theta.tobytes())
    h.update(b.tobytes())
    return h.hexdigest()


def _param_arrays(model) -> tuple[np.ndarray, np.ndarray]:
    theta = FlatModel(model).theta().detach().cpu().to(torch.float64).numpy()
    b = model.linear_term()
    b = np.zeros(0) if b is None else b.detach().cpu().to(torch.float64).numpy()
    return np.ascontiguousarray(theta), np.ascontiguousarray(b)


def _entry_hash(entry: dict) -> str:
    payload = json.dumps({k: entry.get(k) for k in _ENTRY_FIELDS}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _meta_hash(meta: dict) -> str:
    """SHA-256 of the ledger's metadata (recorded in the first entry, so the chain covers it)."""
    payload = json.dumps(dict(sorted(meta.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _mac(key: bytes, seq: int, entry_hash: str) -> str:
    return hmac.new(key, f"{FORMAT}|{int(seq)}|{entry_hash}".encode(), hashlib.sha256).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _tensor_blob(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _blob_tensors(blob: bytes) -> dict:
    """Load a tensor blob the ledger wrote. torch writes every member of its archive uncompressed;
    a compressed member (which could expand to gigabytes) is refused before anything is loaded."""
    import zipfile

    try:
        members = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"not a tensor archive ({exc})") from None
    if any(m.compress_type != zipfile.ZIP_STORED or m.file_size > len(blob) for m in members):
        raise ValueError("a compressed or oversized member in the tensor archive")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _json_field(entry: dict, name: str) -> dict:
    """Decode one JSON object column of an entry; a LedgerError naming the entry if it is not one."""
    try:
        value = json.loads(entry[name])
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        raise LedgerError(f"entry {entry.get('seq')}: its {name} record is not valid JSON ({reason}); the database "
                          "was edited or is corrupt. Run `unlearnkit ledger verify`.") from None
    if not isinstance(value, dict):
        raise LedgerError(f"entry {entry.get('seq')}: its {name} record is a JSON {type(value).__name__}, not an object; "
                          "the database was edited or is corrupt.")
    return value


def _entry_changes(entry: dict) -> Changes | None:
    """The change set an entry recorded, or a LedgerError naming the entry."""
    if not entry["changes"]:
        return None
    try:
        return Changes.from_json(entry["changes"])
    except (ChangesError, TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:300]
        raise LedgerError(f"entry {entry['seq']}: its recorded change set is unreadable ({reason}).") from None


def _check_reason(reason) -> str:
    if not isinstance(reason, str):
        raise LedgerError(f"reason must be a string (recorded with the entry), got {type(reason).__name__}.")
    if len(reason) > MAX_REASON_CHARS:
        raise LedgerError(f"reason has {len(reason):,} characters, beyond the limit of {MAX_REASON_CHARS:,}; "
                          "record a short reason and keep the details elsewhere.")
    return reason


def read_key(key_file: str | Path | None = None, *, ledger: str | Path | None = None, environ=None) -> bytes | None:
    """The ledger's HMAC key: the bytes of ``key_file`` if given, else the environment variable
    ``UNLEARNKIT_LEDGER_KEY`` (UTF-8), else None (no key).

    Trailing newlines of a key file are dropped. A key shorter than 16 bytes is refused, and so
    is a key file inside the ``ledger`` folder: a key stored beside the ledger protects nothing.
    The key file must be a regular file of at most :data:`MAX_KEY_FILE_BYTES` (4 KiB); a device,
    FIFO or folder is refused before it is read.
    """
    environ = os.environ if environ is None else environ
    if key_file is not None:
        kf = Path(key_file)
        if ledger is not None:
            folder = Path(os.path.realpath(ledger))
            real = Path(os.path.realpath(kf))
            if real == folder or folder in real.parents:
                raise LedgerError(f"The key file {kf} is inside the ledger folder {ledger}: keep the key outside it "
                                  "(anyone who can read the folder could then forge entries).")
        try:  # non-blocking open: a FIFO must not hang the reader before it is refused
            fd = os.open(kf, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
                    raise LedgerError(f"The key file {kf} is {kind}; give a regular file holding the key.")
                if st.st_size > MAX_KEY_FILE_BYTES:
                    raise LedgerError(f"The key file {kf} has {st.st_size:,} bytes, beyond the limit of "
                                      f"{MAX_KEY_FILE_BYTES:,}; a key is a few dozen random bytes.")
                key = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise LedgerError(f"Cannot read the key file {kf}: {describe_os_error(exc)}.") from None
        if len(key) > MAX_KEY_FILE_BYTES:
            raise LedgerError(f"The key file {kf} is larger than {MAX_KEY_FILE_BYTES:,} bytes; a key is a few dozen "
                              "random bytes.")
        key = key.rstrip(b"\r\n")
        source = f"the key file {kf}"
    elif environ.get(KEY_ENV):
        key, source = environ[KEY_ENV].encode("utf-8", "surrogateescape"), f"${KEY_ENV}"
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise LedgerError(f"The ledger key from {source} has {len(key)} bytes; use at least {MIN_KEY_BYTES} random "
                          "bytes (e.g. `python -c \"import secrets; print(secrets.token_hex(32))\"`).")
    return key


class Head(NamedTuple):
    """The latest entry of a ledger: its number and chained hash (``str()`` gives ``seq:hash``)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: "str | Head") -> "Head | str":
        """``seq:hash`` or a bare hash (then only the hash is compared)."""
        if isinstance(text, Head):
            return text
        text = str(text).strip()
        seq, sep, h = text.rpartition(":")
        h = h.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", h) or (sep and not seq.isdigit()):
            raise LedgerError(f"{text!r} is not a ledger head: expected `SEQ:HASH` or the 64-digit hash, as "
                              "`unlearnkit ledger head` prints it.")
        return cls(int(seq), h) if sep else h


@dataclass
class VerifyReport:
    """What :meth:`Ledger.verify` found: ``ok`` when ``problems`` is empty."""

    entries: int
    replayed: bool
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    head: Head | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "replayed": self.replayed, "problems": self.problems,
                "checks": self.checks, "head": None if self.head is None else str(self.head)}


class _Write:
    """Maps the failures of a write (disk full, read-only, size limit, a busy database) to a LedgerError."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, tp, exc, tb):
        if isinstance(exc, OSError):
            raise LedgerError(f"{self.what} failed: {describe_os_error(exc)}. The ledger was left as it was; free "
                              "space, raise the limit or make the folder writable, then retry.") from exc
        if isinstance(exc, sqlite3.DatabaseError):
            raise LedgerError(f"{self.what} failed: the database refused the write ({type(exc).__name__}: {exc}). The "
                              "ledger was left as it was; free space or make the folder writable, then retry.") from exc
        return False


class Ledger:
    """Open an existing ledger folder (see :meth:`create` for a new one).

    ``key`` is the secret of a keyed ledger (see :func:`read_key`): writers then add an HMAC to
    every entry, and :meth:`verify` checks them. Opening reads; it never changes the folder.
    """

    def __init__(self, path: str | Path, *, device=None, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.device = device
        self.key = _check_key(key)
        self.committed: Head | None = None
        """The head of the entry this object committed last (None before it wrote one)."""
        self._written_model: tuple | None = None  # (name, recorded hash, bytes) of the model file this object wrote last
        self._conn: sqlite3.Connection | None = None  # the writer's connection while it holds the writer lock
        self._conn_identity: tuple | None = None  # (device, inode) of the database file that connection opened
        self._data_checked: tuple | None = None  # (signature, fingerprint) of the data files this object checked last
        db = self.path / DB_NAME
        if not db.is_file():
            raise LedgerError(f"No ledger at {self.path} ({DB_NAME} not found). Create one with `unlearnkit ledger init`.")
        self._load()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls, path: str | Path, data: Dataset, *, model: LogisticRegression | None = None, spec: CertifiedSpec | None = None,
        seed: int | None = None, reason: str = "initial training", batch_size: int = 8192, device=None,
        key: bytes | None = None, preprocessing: Preprocessing | None = None,
    ) -> "Ledger":
        """Train a certified model on ``data`` and start a ledger for it in the new folder ``path``.

        ``preprocessing`` (see :mod:`unlearnkit.data.preprocess`) says how ``data`` was scaled from the
        user's raw units (``ledger init --standardize --scale-rows``): ``data`` is given already scaled,
        the ledger records the preprocessing in its metadata (and in every model file it writes), and
        :meth:`apply` maps the feature values of each change set from raw units before applying it.

        ``seed`` draws the noise ``b``; None (default) draws a secret random seed (recorded in the
        database, which must stay private, like the model file: whoever knows ``b`` and the data
        can tell an unlearned model from a retrained one). ``key`` makes a keyed ledger: every
        entry carries an HMAC-SHA256 under it, and every later writer must give the same key.

        A new folder is built beside ``path`` and renamed into place. An existing empty folder
        (also a mount point, a link to a folder, or a folder in a folder you cannot write) is filled
        from a hidden build folder inside it, ``ledger.sqlite`` last: a folder without
        ``ledger.sqlite`` is not a ledger, and ``init`` into it again cleans up what an interrupted
        ``init`` left. Either way a crash leaves either no ledger or a complete one.
        """
        path = Path(path)
        key = _check_key(key)
        _check_reason(reason)
        if os.path.lexists(path) and not path.is_dir():
            what = "a link to nothing" if path.is_symlink() else "not a folder"
            raise LedgerError(f"{path} exists and is {what}; give the path of a new (or empty) folder for the ledger.")
        if (path / DB_NAME).exists():
            raise LedgerError(f"A ledger already exists at {path}; open it with Ledger({str(path)!r}) instead.")
        if path.is_dir():
            _init_leftovers(path)  # refuses a folder holding anything but what an interrupted init left
        _check_seed(seed)
        if int(batch_size) < 1:
            raise LedgerError(f"batch_size must be >= 1, got {batch_size}.")
        if data.is_sparse:
            raise LedgerError("The ledger stores dense features; convert with data.replace(X=data.X.toarray()).")
        model = model if model is not None else LogisticRegression(n_features=data.n_features, n_classes=data.n_classes)
        spec = spec or CertifiedSpec()
        order = np.argsort(data.ids, kind="stable")
        if np.any(order != np.arange(len(order))):  # train on the rows in the order they are stored (sorted by id),
            data = data.subset(order)                # so that `verify` re-trains on exactly the same sums
        cm = certified_train(model, data, spec, seed=seed, batch_size=batch_size, device=device)
        in_place = path.is_dir()
        if in_place:
            lock = FolderLock(path, WRITER_LOCK)
            if not lock.acquire(blocking=False):
                raise LedgerError(f"Another process is creating or writing a ledger at {path}; nothing was changed.")
            try:
                with _Write(f"Creating the ledger at {path}"):
                    if (path / DB_NAME).exists():
                        raise LedgerError(f"A ledger already exists at {path}; open it with Ledger({str(path)!r}) instead.")
                    for leftover in _init_leftovers(path):
                        log.info("removing %s, left by an interrupted ledger init", leftover)
                        if leftover.is_dir() and not leftover.is_symlink():
                            shutil.rmtree(leftover)
                        else:
                            leftover.unlink()
                    build = path / f"{INIT_BUILD_PREFIX}{secrets.token_hex(6)}"
                    build.mkdir()
                try:
                    cls._build(build, path, cm, data, spec, batch_size, reason, key, preprocessing)
                    with _Write(f"Creating the ledger at {path}"):
                        (path / INIT_MARKER).touch()  # from here, an interrupted init left files in `path`
                        _fsync_dir(path)
                        names = sorted(f.name for f in build.iterdir() if f.name != DB_NAME)
                        for name in names:
                            os.rename(build / name, path / name)
                        _fsync_dir(path)
                        os.rename(build / DB_NAME, path / DB_NAME)  # the ledger is complete from here
                        _fsync_dir(path)
                except BaseException:
                    shutil.rmtree(build, ignore_errors=True)
                    raise
                try:  # tidy up; a leftover marker or build folder is removed by the next writer
                    (path / INIT_MARKER).unlink(missing_ok=True)
                    build.rmdir()
                except OSError as exc:
                    log.warning("could not remove %s after init (%s)", build, describe_os_error(exc))
            finally:
                lock.release()
            return cls(path, device=device, key=key)
        parent = path.absolute().parent
        with _Write(f"Creating the ledger at {path}"):
            parent.mkdir(parents=True, exist_ok=True)
            _remove_dead_builds(parent, path.name)
            build = parent / f".{path.name}.init-{secrets.token_hex(6)}"
            build.mkdir()  # (not mkdtemp: the folder keeps the permissions the umask gives, like any other)
        lock = FolderLock(build, WRITER_LOCK)
        try:
            lock.acquire()
            with _Write(f"Creating the ledger at {path}"):
                (build / INIT_MARKER).touch()  # tells `_remove_dead_builds` that the builder holds the lock
            cls._build(build, path, cm, data, spec, batch_size, reason, key, preprocessing)
            with _Write(f"Creating the ledger at {path}"):
                try:
                    os.rename(build, path)  # the ledger appears complete or not at all
                except OSError as exc:
                    if path.is_dir() and any(path.iterdir()):
                        raise LedgerError(f"{path} was filled by someone else while the ledger was being built; "
                                          "give a new folder for the ledger.") from None
                    raise exc
                _fsync_dir(parent)
            (path / INIT_MARKER).unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        finally:
            lock.release()
        return cls(path, device=device, key=key)

    @classmethod
    def _build(cls, build: Path, path: Path, cm, data: Dataset, spec: CertifiedSpec, batch_size: int, reason: str,
               key: bytes | None, preprocessing: Preprocessing | None = None) -> None:
        """Write a complete ledger into the folder ``build`` (its files synced to disk)."""
        with _Write(f"Creating the ledger at {path}"):
            fp = write_base(build / "data", data)
            for name in ("X.npy", "y.npy", "ids.npy"):
                _fsync_file(build / "data" / name)
            _cache_data_check(build / "data", _data_signature(build / "data"), fp, key)
            _fsync_dir(build / "data")
            model_file = f"model-000000-{secrets.token_hex(8)}.pt"
            extra = _model_file_extra(preprocessing)
            _write_model_file(cm.model, build / model_file, metadata={"ledger": str(path), "entry": 0, **extra})
            meta = {
                "format": FORMAT_PREPROCESS if extra else FORMAT, "created": _now(), "spec": json.dumps(spec.to_dict()),
                "model": json.dumps({"kind": cm.model.kind, "config": cm.model.config}),
                "train_config": json.dumps(cm.model.train_config.to_dict()),
                "data": json.dumps({"fingerprint": fp, "n": len(data), "feature_shape": list(data.feature_shape),
                                    "n_classes": data.n_classes, "name": data.name}),
                "batch_size": str(int(batch_size)),
            }
            if extra:  # ledgers without preprocessing have no such key (and read as before)
                meta[METADATA_KEY] = json.dumps(extra[METADATA_KEY])
            if key is not None:
                meta["mac"] = MAC_ALGORITHM
            cert = cm.certificate(exact_residual=cm.state.cumulative_bound)
            blob = cls._curvature_blob(cm)
            entry = cls._entry(0, "train", reason, None, len(data), None, None, cm, None, cert,
                               {"noise_seed": cm.state.noise_seed, "curvature_hash": hashlib.sha256(blob).hexdigest(),
                                "meta_hash": _meta_hash(meta)},
                               model_file, prev_hash="")
            with closing(sqlite3.connect(build / DB_NAME)) as conn:
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
                cls._insert(conn, entry, cm, curvature=blob, key=key)
                conn.commit()
            _fsync_file(build / DB_NAME)
            _fsync_dir(build)

    # ------------------------------------------------------------------ loading
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path / DB_NAME, timeout=30, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")  # per connection; nothing is written to the file
            return conn
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None

    def _corrupt(self, exc: Exception) -> LedgerError:
        return LedgerError(
            f"{self.path / DB_NAME} is not a readable ledger database ({type(exc).__name__}: {exc}). It may be truncated "
            "or corrupted; nothing was changed or reset. Restore it from a backup, or run `unlearnkit ledger verify`."
        )

    def _load(self) -> None:
        try:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN")  # one snapshot: a writer committing meanwhile is seen entirely or not at all
                check = conn.execute("PRAGMA quick_check").fetchone()
                if not check or check[0] != "ok":
                    raise LedgerError(f"{self.path / DB_NAME} failed SQLite's integrity check ({check}); nothing was changed.")
                self._check_size(conn)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("format") not in (FORMAT, FORMAT_PREPROCESS):
                    raise LedgerError(_format_problem(self.path / DB_NAME, meta.get("format")))
                cur = conn.execute("SELECT * FROM entries ORDER BY seq DESC LIMIT 1")
                cols = [c[0] for c in cur.description]
                last = cur.fetchone()
                if last is None:
                    raise LedgerError(f"{self.path / DB_NAME} holds no entries; it is not a complete ledger.")
                last = dict(zip(cols, last))
                params = conn.execute("SELECT theta, perturbation FROM params WHERE seq = ?", (last["seq"],)).fetchone()
                overlay = conn.execute("SELECT id, removed, label, x FROM overlay").fetchall()
                curv = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        if params is None or curv is None:
            raise LedgerError(f"{self.path / DB_NAME} is incomplete (parameters or curvature of entry {last['seq']} missing).")
        self.meta = meta
        self._decode_meta()
        state_d = _json_field(last, "state")
        rows = self._base_rows()
        data_signature = self._data_signature()
        rows.load_overlay(overlay)
        model = self._model_from_blobs(params[0], params[1])
        if parameter_hash(model) != last["params_after"]:
            raise LedgerError(f"The parameters stored for entry {last['seq']} do not match its recorded hash: "
                              "the database was edited. Run `unlearnkit ledger verify`.")
        try:
            tensors = _blob_tensors(curv[0])
            curvature = CachedCurvature.from_state({k: v for k, v in tensors.items() if k != "gram"})
            state = CertifiedState(gram=tensors["gram"], **state_d)
        except Exception as exc:  # torch.load of a foreign blob raises many kinds (pickle, zip, runtime)
            raise LedgerError(f"{self.path / DB_NAME} has a malformed curvature or state record "
                              f"({type(exc).__name__}: {str(exc)[:200]}).") from None
        self.certified = CertifiedModel(model, rows, self.spec, state, curvature, batch_size=self.batch_size, device=self.device)
        self.seq = int(last["seq"])
        self.last = last
        self._loaded_signature = data_signature

    def _check_size(self, conn) -> None:
        """A database file shorter than its page count says was truncated (SQLite's own check can
        miss a cut inside an empty last page)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        size = (self.path / DB_NAME).stat().st_size
        if size < pages * page_size:
            raise LedgerError(f"{self.path / DB_NAME} is truncated ({size} bytes, its header says {pages} pages of "
                              f"{page_size}); nothing was changed. Restore it from a backup.")

    def _decode_meta(self) -> None:
        """Parse and bound-check the metadata: nothing is allocated from a size the database claims
        before it was compared with the data files."""
        meta = self.meta
        try:
            spec_d = json.loads(meta["spec"])
            spec_d.pop("budget", None)  # derived from sigma (and the calibration)
            # ledgers created before the calibration was recorded used Guo et al.'s classical constant:
            # keep it, so that their budget and certificates stay what they were
            spec_d.setdefault("calibration", Calibration.CLASSICAL.value)
            self.spec = CertifiedSpec(**spec_d)
            self.data_meta = json.loads(meta["data"])
            self.model_meta = json.loads(meta["model"])
            self.train_config = json.loads(meta["train_config"])
            self.batch_size = int(meta.get("batch_size", 8192))
            n, n_classes = int(self.data_meta["n"]), int(self.data_meta["n_classes"])
            feature_shape = [int(s) for s in self.data_meta["feature_shape"]]
            config = dict(self.model_meta["config"])
            n_features = int(config["n_features"])
            model_classes = int(config.get("n_classes", 2))
            self.preprocessing = _stored_preprocessing(meta, where=str(self.path / DB_NAME))
        except (KeyError, ValueError, TypeError, RecursionError, AttributeError, CertificationError) as exc:
            raise LedgerError(f"{self.path / DB_NAME} has malformed metadata ({type(exc).__name__}: {str(exc)[:200]}).") from None
        if meta.get("mac") not in (None, MAC_ALGORITHM):
            raise LedgerError(f"{self.path / DB_NAME} uses an unknown entry authentication {meta.get('mac')!r}.")
        if (self.spec.calibration == Calibration.CLASSICAL.value and not getattr(self, "_warned_calibration", False)
                and not classical_is_valid(self.spec.epsilon, self.spec.delta)):
            self._warned_calibration = True  # once per open ledger, not on every reload
            log.warning(
                "The ledger at %s uses Guo et al.'s classical noise calibration, which does not give "
                "(epsilon=%g, delta=%g): at its budget %.6g the exact Gaussian delta is %.3g, above the nominal %g, so "
                "its certificates overstate the privacy. Create a new ledger from the current data "
                "(`unlearnkit ledger init`, analytic calibration) and retire this one.",
                self.path, self.spec.epsilon, self.spec.delta, self.spec.budget,
                gaussian_delta(self.spec.epsilon, self.spec.budget, self.spec.sigma), self.spec.delta)
        if not 1 <= self.batch_size <= 2**31:
            raise LedgerError(f"{self.path / DB_NAME} has malformed metadata (batch_size {self.batch_size}).")
        rows = self._base_rows()
        d = int(rows.X.shape[1])
        if len(rows.X) != n:
            raise LedgerError(f"The ledger's data files hold {len(rows.X)} rows, the database says {n}.")
        if any(s < 1 for s in feature_shape) or math.prod(feature_shape) != d or n_features != d:
            raise LedgerError(f"The ledger's data files have {d} features, the database claims feature shape "
                              f"{feature_shape} and a model of {n_features} features: the database was edited.")
        if not 1 <= n_classes <= max(2, n) or model_classes != n_classes:
            raise LedgerError(f"The database claims {n_classes} classes (model: {model_classes}) for {n} rows: "
                              "the database was edited.")

    def _base_rows(self) -> LedgerRows:
        """The ledger's training data as given at init, with an empty overlay."""
        meta = self.data_meta
        try:
            return LedgerRows(self.path / "data", n_classes=meta["n_classes"], feature_shape=tuple(meta["feature_shape"]),
                              name=meta.get("name", "ledger data"))
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"{self.path / DB_NAME} has malformed data metadata ({exc}).") from None

    def _model_from_blobs(self, theta_blob: bytes, b_blob: bytes) -> LogisticRegression:
        from unlearnkit.training import TrainConfig

        try:
            config = self.model_meta["config"]
            n_out = 1 if int(config.get("n_classes", 2)) == 2 else int(config["n_classes"])
            n_params = n_out * (int(config["n_features"]) + bool(config.get("fit_intercept", True)))
            if len(theta_blob) != 8 * n_params or len(b_blob) not in (0, 8 * n_params):
                raise ValueError(f"parameter blob of the wrong size ({len(theta_blob)} bytes for {n_params} parameters)")
            model = LogisticRegression(**config).to(torch.float64)
            flat = FlatModel(model)
            theta = torch.from_numpy(np.frombuffer(theta_blob, dtype=np.float64).copy())
            b = torch.from_numpy(np.frombuffer(b_blob, dtype=np.float64).copy())
            if theta.numel() != flat.n_params or (model.loss_perturbation and b.numel() != flat.n_params):
                raise ValueError("parameter blob of the wrong size")
            model = flat.to_model(theta)
            if model.loss_perturbation:
                with torch.no_grad():
                    model.perturbation.copy_(b)
            model.train_config = TrainConfig.from_dict(self.train_config)
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise LedgerError(f"{self.path / DB_NAME}: malformed model record ({exc}).") from None
        return model

    # ------------------------------------------------------------------ the writer's side
    def _cleanup_files(self) -> None:
        """Delete superseded model files and dead temporary files. Only a writer holding the writer
        lock calls this; it waits for readers of the model file (the files lock) first.

        Only files that no writer can still commit are deleted: model files numbered at most the
        latest entry, other than that entry's own (a writer can only commit the entry after the
        latest), and temporary files of such entries or older than :data:`STALE_TEMP_SECONDS`. A
        file for a later entry may belong to a writer that slipped past the lock; it stays until
        that entry number is taken.
        """
        current, seq, now = self.last["model_file"], self.seq, time.time()
        names = os.listdir(self.path)  # (a file added after this listing is left for the next writer)
        # what an init killed after it completed the ledger left (it held this same lock, so it is dead)
        for name in names:
            if name.startswith(INIT_BUILD_PREFIX):
                build = self.path / name
                if build.is_dir() and not build.is_symlink():
                    shutil.rmtree(build)
                elif name == INIT_MARKER:
                    build.unlink(missing_ok=True)
        if not any(_MODEL_RE.match(n) or _TEMP_RE.match(n) for n in names if n != current):
            return  # nothing to delete: readers are not held up
        with FolderLock(self.path, FILES_LOCK):
            for name in names:
                f = self.path / name
                m = _MODEL_RE.match(name)
                if m:
                    if name != current and int(m.group(1)) <= seq:
                        f.unlink(missing_ok=True)
                    continue
                t = _TEMP_RE.match(name)
                if t:
                    try:
                        stale = int(t.group(1)) <= seq or now - f.lstat().st_mtime > STALE_TEMP_SECONDS
                    except FileNotFoundError:
                        continue
                    if stale:
                        f.unlink(missing_ok=True)

    def _head_in_db(self, conn) -> tuple[int, str] | None:
        row = conn.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), row[1])

    def _refresh(self, conn: sqlite3.Connection | None = None) -> None:
        """Reload if another process committed since this object last read the ledger (through
        ``conn`` when given: a writer's connection, held for the whole request)."""
        try:
            if conn is not None:
                head = self._head_in_db(conn)
            else:
                with closing(self._connect()) as conn:
                    head = self._head_in_db(conn)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        if head != (self.seq, self.last["entry_hash"]):
            self._load()

    def _data_signature(self) -> list:
        return _data_signature(self.path / "data")

    def _check_data(self) -> None:
        """Refuse to write when the data files differ from the data the ledger was created with.

        The full SHA-256 pass (``O(n d)``) runs once per change of the files: its result is cached
        in ``data/checked.json`` with the files' inode, size and modification and change times.
        The change time cannot be set back by a user, so an edit after the check is noticed. On a
        keyed ledger the record carries an HMAC and is ignored without a valid one; without a key,
        whoever can write the folder can also forge the record, so the cache then only catches
        accidental edits. :meth:`verify` always rehashes.
        """
        sig = self._data_signature()
        if sig != self._loaded_signature:  # the files were replaced since they were mapped: map the new ones
            self._load()
        expected = self.data_meta["fingerprint"]
        if self._data_checked == (sig, expected):  # checked by this object, and not changed since
            return
        cache = self.path / "data" / DATA_CHECK_CACHE
        try:
            cached = json.loads(cache.read_text())
            if cached.get("signature") == sig and cached.get("fingerprint") == expected and (
                    self.key is None
                    or hmac.compare_digest(str(cached.get("mac", "")), _cache_mac(self.key, sig, expected))):
                self._data_checked = (sig, expected)
                return
        except (OSError, ValueError, RecursionError, AttributeError):
            pass  # no cache or an unreadable one: hash the files
        rows = self.certified.rows
        if fingerprint(rows.X, np.asarray(rows.y), np.asarray(rows.ids)) != expected:
            raise LedgerError(f"The ledger's data files under {self.path / 'data'} differ from the data the ledger was "
                              "created with (fingerprint mismatch): they were modified. Nothing was applied; restore "
                              "them from a backup and run `unlearnkit ledger verify`.")
        _cache_data_check(self.path / "data", sig, expected, self.key)
        self._data_checked = (sig, expected)

    def _check_key_for_write(self, conn: sqlite3.Connection) -> None:
        """Refuse to write on state :meth:`verify` would reject, at O(1) cost: the key use, the
        metadata against the hash the first entry recorded, the first entry's own hash and link,
        and (keyed) the HMACs of the first and the latest entry. Reads through the writer's ``conn``."""
        keyed = self.meta.get("mac") == MAC_ALGORITHM
        if keyed and self.key is None:
            raise LedgerError(f"The ledger at {self.path} is keyed (every entry carries an HMAC): give its key "
                              f"(${KEY_ENV} or --key-file). Nothing was applied.")
        if not keyed and self.key is not None:
            raise LedgerError(f"The ledger at {self.path} was created without a key; a key cannot be added later. "
                              f"Unset ${KEY_ENV} (or drop --key-file) to write to it.")
        try:
            conn.execute("BEGIN")  # one snapshot
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            cur = conn.execute("SELECT * FROM entries WHERE seq = 0")
            row0 = cur.fetchone()
            first = None if row0 is None else dict(zip([c[0] for c in cur.description], row0))
            second = conn.execute("SELECT prev_hash FROM entries WHERE seq = 1").fetchone()
            macs = dict(conn.execute("SELECT seq, mac FROM macs WHERE seq IN (0, ?)", (self.seq,)).fetchall())
            any_mac = conn.execute("SELECT 1 FROM macs LIMIT 1").fetchone() is not None
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # closing the connection rolls back too
            raise self._corrupt(exc) from None
        tampered = ("the database was edited. Nothing was applied; run `unlearnkit ledger verify`"
                    + (" with the key." if keyed else "."))
        if meta != self.meta:
            raise LedgerError(f"The ledger's metadata at {self.path} changed while it was open: {tampered}")
        if first is None or _entry_hash(first) != first["entry_hash"]:
            raise LedgerError(f"The first entry of the ledger at {self.path} is missing or does not match its hash: "
                              f"{tampered}")
        recorded = _json_field(first, "details").get("meta_hash")
        if recorded is not None and recorded != _meta_hash(meta):
            raise LedgerError(f"The ledger's metadata (spec, model, data fingerprint, key use) at {self.path} differs "
                              f"from what its first entry recorded: {tampered}")
        if second is not None and second[0] != first["entry_hash"]:
            raise LedgerError(f"Entry 1 of the ledger at {self.path} does not chain to the first entry: {tampered}")
        if not keyed and any_mac:
            raise LedgerError(f"The ledger at {self.path} holds entry HMACs but its metadata says it has no key: its "
                              f"authentication was stripped, {tampered}")
        if keyed:
            for seq, entry_hash in ((0, first["entry_hash"]), (self.seq, self.last["entry_hash"])):
                if not hmac.compare_digest(str(macs.get(seq, "")), _mac(self.key, seq, entry_hash)):
                    raise LedgerError(f"The HMAC of entry {seq} does not match the key given: a wrong key, or the "
                                      "entry was forged. Nothing was applied; run `unlearnkit ledger verify` with the key.")

    def _guarded(self, what: str, fn):
        """Run a state-changing step under the writer lock, from the latest committed state.

        On any failure the last committed state is reloaded; a failed write (disk full, a
        read-only folder, a file-size limit) is reported as a LedgerError naming the cause. One
        database connection, opened under the lock, serves the checks and the transaction.
        """
        with FolderLock(self.path, WRITER_LOCK), closing(self._connect()) as conn:
            self._refresh(conn)
            self._check_key_for_write(conn)
            self._check_model_file()
            self._check_data()
            self.certified.rows.check_overlay()  # cheap: rows the overlay table must not hold
            with _Write(what):
                self._cleanup_files()  # leftovers of a writer that crashed
            self._conn = conn  # the transaction of _record uses it
            self._conn_identity = _file_identity(self.path / DB_NAME)
            try:
                with _Write(what):
                    return fn()
            except BaseException:
                self._load()
                raise
            finally:
                self._conn = None

    def _check_model_file(self) -> None:
        """Refuse to write when the current model file does not hold the parameters its entry recorded.

        When this object wrote that file itself (the latest entry is its own, by name and recorded
        parameter hash), the file's bytes are compared with the bytes it wrote, which held those
        parameters: ``O(p)``, no unpickling. Otherwise (a new object, another writer's entry) the
        file is loaded and its parameters hashed. :meth:`verify` always loads and hashes.
        """
        name = str(self.last["model_file"])
        if not _MODEL_RE.match(name):
            raise LedgerError(f"Entry {self.seq} names the model file {name!r}, which is not a ledger model file name: "
                              "the database was edited. Nothing was applied; run `unlearnkit ledger verify`.")
        f = self.path / name
        recorded = self.last["params_after"]
        written = self._written_model
        if written is not None and written[:2] == (name, recorded) and _same_bytes(f, written[2]):
            return
        try:
            current = load_model(f)
        except ModelError as exc:
            raise LedgerError(f"The ledger's model file is unusable: {exc} Run `unlearnkit ledger verify`.") from None
        if parameter_hash(current) != recorded:
            raise LedgerError(f"{f} differs from the parameters the ledger recorded for entry {self.seq}: it was modified "
                              "outside the ledger. Run `unlearnkit ledger verify`; nothing was applied.")

    # ------------------------------------------------------------------ entries
    @staticmethod
    def _entry(seq, kind, reason, changes, n_affected, residual_bound, worst_case_bound, cm: CertifiedModel,
               params_before, cert, details, model_file, *, prev_hash, cert_dict: dict | None = None) -> dict:
        """The entry's record and its hash (``cert_dict``: ``cert.to_dict()`` when the caller has it already)."""
        entry = {
            "seq": seq, "kind": kind, "time": _now(), "reason": str(reason), "changes": changes,
            "n_affected": int(n_affected), "residual_bound": residual_bound, "worst_case_bound": worst_case_bound,
            "cumulative_bound": cm.state.cumulative_bound, "exact_residual": cert.exact_residual,
            "params_before": params_before, "params_after": parameter_hash(cm.model),
            "certificate": json.dumps(cert.to_dict() if cert_dict is None else cert_dict, sort_keys=True),
            "state": json.dumps(cm.state.to_dict(), sort_keys=True),
            "details": json.dumps(details, sort_keys=True, default=float), "model_file": model_file, "prev_hash": prev_hash,
        }
        entry["entry_hash"] = _entry_hash(entry)
        return entry

    @staticmethod
    def _curvature_blob(cm: CertifiedModel) -> bytes:
        return _tensor_blob({**cm.curvature.state(), "gram": cm.state.gram})

    @staticmethod
    def _insert(conn, entry: dict, cm: CertifiedModel, *, curvature: bytes | None, overlay=(), key: bytes | None = None) -> None:
        cols = list(entry)
        conn.execute(f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [entry[c] for c in cols])
        theta, b = _param_arrays(cm.model)
        conn.execute("INSERT INTO params VALUES (?, ?, ?)", (entry["seq"], theta.tobytes(), b.tobytes()))
        conn.executemany("INSERT OR REPLACE INTO overlay VALUES (?, ?, ?, ?, ?)",
                         [(row_id, removed, label, x, entry["seq"]) for row_id, removed, label, x in overlay])
        if curvature is not None:
            conn.execute("INSERT OR REPLACE INTO curvature VALUES (1, ?, ?)", (curvature, entry["seq"]))
        if key is not None:
            conn.execute("INSERT INTO macs VALUES (?, ?)", (entry["seq"], _mac(key, entry["seq"], entry["entry_hash"])))

    def _record(self, kind: str, reason: str, changes: Changes | None, n_affected: int, cert, details: dict, *,
                overlay=(), curvature: bool, residual_bound=None, worst_case_bound=None,
                cert_dict: dict | None = None) -> dict:
        """Write the model file, then the entry and everything it changed in one transaction.

        Runs under the writer lock (see :meth:`_guarded`). The model file's name carries the entry
        number and a random token, so it is this writer's alone even if another writer slipped past
        the lock: the file is written (and synced) before the transaction, and the transaction
        commits only if no other entry was committed since this writer read the ledger. A writer
        that loses removes only its own file.
        """
        seq = self.seq + 1
        model_file = f"model-{seq:06d}-{secrets.token_hex(8)}.pt"
        cm = self.certified
        blob = self._curvature_blob(cm) if curvature else None
        if blob is not None:
            details = {**details, "curvature_hash": hashlib.sha256(blob).hexdigest()}
        entry = self._entry(seq, kind, reason, None if changes is None else changes.to_json(), n_affected,
                            residual_bound, worst_case_bound, cm, self.last["params_after"], cert, details, model_file,
                            prev_hash=self.last["entry_hash"], cert_dict=cert_dict)
        written = _write_model_file(cm.model, self.path / model_file, metadata={"ledger": str(self.path), "entry": seq,
                                                                              **_model_file_extra(self.preprocessing)})
        # the writer's connection, unless the database file was replaced since it was opened (a backup restored with
        # mv, say): a connection to the unlinked file could not commit, so open the file that is there now
        own = self._conn is None or _file_identity(self.path / DB_NAME) != self._conn_identity
        conn = self._connect() if own else self._conn
        committed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            top = conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
            if top != self.seq:  # only a writer that ignores the lock gets here: leave its files alone
                conn.execute("ROLLBACK")
                raise LedgerError(f"Another process that did not take the ledger's lock committed entry {top} while this "
                                  f"one was computing on entry {self.seq}; nothing was recorded and no committed file was "
                                  "touched. Run the request again: it starts from the latest entry.")
            self._write_entry(conn, entry, overlay, blob)
            conn.execute("COMMIT")
            committed = True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not committed and not self._referenced(model_file):
                (self.path / model_file).unlink(missing_ok=True)  # this writer's own file (its name is unique)
            raise
        finally:
            if own:
                conn.close()
        self.seq, self.last = seq, entry
        self.committed = Head(seq, entry["entry_hash"])
        self._written_model = (model_file, entry["params_after"], written)  # see _check_model_file
        try:
            self._cleanup_files()
        except OSError as exc:  # committed: a superseded file left behind is removed by the next writer
            log.warning("could not remove superseded model files in %s (%s)", self.path, describe_os_error(exc))
        return entry

    def to_model_units(self, changes: Changes) -> Changes:
        """``changes`` with feature values given in raw units mapped into the units the ledger's data is stored in
        (its :attr:`preprocessing`: standardisation and row scaling); unchanged for a ledger without scaling. A
        feature edit without rows on a standardised column is written out with the rows where the column is
        non-zero in raw units (the stored value differs from the transform of 0), of the current data."""
        prep = self.preprocessing
        if not prep.scales:
            return changes
        rows = self.certified.rows
        return prep.map_changes(changes, rows.nonzero_ids)

    def request_bound(self, changes: Changes) -> float:
        """The residual bound the request ``changes`` (raw units) would spend now (the data-dependent or the
        worst-case one, as the spec says), computed without changing anything."""
        cm = self.certified
        proposal = cm.propose(cm.rows.resolve(self.to_model_units(changes)))
        return float(proposal.residual_bound if self.spec.bound == "data" else proposal.worst_case_bound)

    def _referenced(self, model_file: str) -> bool:
        try:
            with closing(self._connect()) as conn:
                return conn.execute("SELECT 1 FROM entries WHERE model_file = ?", (model_file,)).fetchone() is not None
        except (sqlite3.DatabaseError, LedgerError):
            return True  # cannot tell: keep the file

    def _write_entry(self, conn, entry, overlay, curvature) -> None:
        self._insert(conn, entry, self.certified, curvature=curvature, overlay=overlay, key=self.key)

    # ------------------------------------------------------------------ operations
    @property
    def model(self) -> LogisticRegression:
        """The current model (a copy)."""
        import copy

        return copy.deepcopy(self.certified.model)

    def public_model(self) -> LogisticRegression:
        """The current parameters without the noise ``b`` (the model to publish or serve)."""
        return self.certified.public_model()

    @property
    def model_file(self) -> Path:
        """The model file of the latest entry this object read. The next request replaces it (the
        superseded file is deleted), so copy it if you need to keep it."""
        return self.path / self.last["model_file"]

    def certificate(self):
        return self.certified.certificate()

    def head(self) -> Head:
        """The latest committed entry: ``Head(seq, hash)``, its number and chained hash.

        Keep it outside the ledger folder (an audit log, a ticket, a signed message): the chained
        hash commits to every entry up to it, so ``verify(expect_head=...)`` then detects a ledger
        whose last entries were removed or rewritten, which the chain alone cannot.
        """
        try:
            with closing(self._connect()) as conn:
                head = self._head_in_db(conn)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        if head is None:
            raise LedgerError(f"{self.path / DB_NAME} holds no entries; it is not a complete ledger.")
        return Head(*head)

    def apply(self, changes: Changes, *, reason: str = "", exact_residual: bool = False) -> CertifiedResult:
        """Unlearn ``changes`` on top of every earlier request and record it (one transaction).

        Retrains on the corrected data (fresh noise, budget reset) when the request would exceed
        the budget, and records that as a ``retrain`` entry with the request attached. Holds the
        ledger's writer lock throughout, starting from the latest committed state (another
        process's requests included). Afterwards :attr:`committed` is the :class:`Head` of the
        entry recorded (:meth:`head` re-reads the ledger, which another writer may have extended).
        """
        if not isinstance(changes, Changes):
            raise ChangesError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")
        _check_reason(reason)

        given = changes

        def step():
            cm = self.certified
            changes = self.to_model_units(given)  # recorded in the data's stored units, as replay re-applies it
            resolved = cm.rows.resolve(changes)
            overlay = cm.rows.overlay_records(resolved)
            before = cm.state.cumulative_bound
            result = cm.apply_resolved(resolved, exact_residual=exact_residual)
            cert = result.certificate
            details = {"seconds": result.seconds, "method": result.method, "noise_seed": cm.state.noise_seed,
                       **{k: v for k, v in result.diagnostics.items() if k != "certificate"}}
            if changes is not given:  # the request as given, in raw units
                details["changes_as_given"] = given.to_dict()
            if cert.retrained:
                details["retrained_because"] = (
                    f"cumulative bound {before:.6g} + request bound {cert.residual_bound if self.spec.bound == 'data' else cert.worst_case_bound:.6g} "
                    f"> budget {self.spec.budget:.6g}")
            self._record("retrain" if cert.retrained else "unlearn", reason, changes, result.n_affected, cert, details,
                         overlay=overlay, curvature=cert.retrained or result.diagnostics.get("low_rank_update", 0) > 0,
                         residual_bound=cert.residual_bound, worst_case_bound=cert.worst_case_bound,
                         cert_dict=result.diagnostics.get("certificate"))
            return result

        return self._guarded("Recording the request", step)

    def refine(self, target: float | None = None, *, max_steps: int = 50, reason: str = "refine") -> dict:
        """Newton steps to a residual target (see :meth:`CertifiedModel.refine`), recorded.

        Returns the refinement's summary with ``"head"``: the :class:`Head` of the entry recorded.
        """
        _check_reason(reason)

        def step():
            info = self.certified.refine(target, max_steps=max_steps)
            cert = self.certified.certificate(exact_residual=info["residual"], refine_steps=info["steps"])
            self._record("refine", reason, None, 0, cert, {**info, "max_steps": max_steps}, curvature=True)
            return {**info, "head": self.committed}

        return self._guarded("Recording the refinement", step)

    def retrain(self, *, reason: str = "retrain", seed: int | None = None) -> None:
        """Retrain on the current corrected data with fresh noise (budget reset), recorded."""
        _check_seed(seed)
        _check_reason(reason)

        def step():
            self.certified.retrain(seed=seed)
            cm = self.certified
            cert = cm.certificate(exact_residual=cm.state.cumulative_bound, retrained=True)
            self._record("retrain", reason, None, 0, cert, {"noise_seed": cm.state.noise_seed}, curvature=True)

        self._guarded("Recording the retraining", step)

    # ------------------------------------------------------------------ reading
    def _entries(self, conn) -> list[dict]:
        cur = conn.execute("SELECT * FROM entries ORDER BY seq")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def history(self) -> list[dict]:
        """Every entry, oldest first, with its certificate decoded."""
        try:
            with closing(self._connect()) as conn:
                entries = self._entries(conn)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        for e in entries:
            e["certificate"] = _json_field(e, "certificate")
            e["details"] = _json_field(e, "details")
            e["state"] = _json_field(e, "state")
        return entries

    def export(self, path: str | Path | None = None) -> dict:
        """The whole ledger (metadata, entries and head, no binary blobs) as JSON-ready data.

        Noise seeds are left out: they determine ``b``, which must stay private.
        """
        self._refresh()
        meta = {k: (json.loads(v) if k in _JSON_META else v) for k, v in self.meta.items()}
        entries = self.history()
        entries = [e for e in entries if e["seq"] <= self.seq]  # one consistent state, even if a writer just committed
        for e in entries:  # the noise seed determines b, which must stay private for the certificate to hold
            e["details"].pop("noise_seed", None)
            e["state"].pop("noise_seed", None)
        head = Head(self.seq, self.last["entry_hash"])
        out = {"format": FORMAT, "meta": meta, "entries": entries,
               "head": {"seq": head.seq, "hash": head.hash, "anchor": str(head)},
               "current": {"entry": self.seq, "model_file": self.last["model_file"],
                           "params_hash": self.last["params_after"], "certificate": self.certificate().to_dict()}}
        if path is not None:
            from unlearnkit.atomic import atomic_write

            text = json.dumps(out, indent=1, default=_json_default)
            with _Write(f"Writing {path}"):
                atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text), user_path=True)
        return out

    # ------------------------------------------------------------------ verification
    def verify(self, *, replay: bool = True, expect_head: "str | Head | None" = None) -> VerifyReport:
        """Check the ledger; ``replay=True`` also recomputes every entry, re-training the first
        model from the data files, the recipe and the recorded seed.

        ``expect_head`` (``seq:hash`` or the hash, as :meth:`head` gives it) is a head kept
        outside the folder: the check fails unless the ledger's latest entry is exactly that one.
        With a ``key`` (see :class:`Ledger`), every entry's HMAC is checked. Reads only.
        """
        expected = Head.parse(expect_head) if expect_head is not None else None
        report = VerifyReport(entries=0, replayed=False)
        try:
            with FolderLock(self.path, FILES_LOCK, shared=True):  # the last model file stays while we read it
                with closing(self._connect()) as conn:
                    conn.execute("BEGIN")  # one snapshot of every table
                    check = conn.execute("PRAGMA integrity_check").fetchall()
                    self._check_size(conn)
                    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    entries = self._entries(conn)
                    params = {seq: (t, b) for seq, t, b in conn.execute("SELECT seq, theta, perturbation FROM params")}
                    overlay = conn.execute("SELECT id, removed, label, x FROM overlay ORDER BY id").fetchall()
                    curv = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()
                    has_macs = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='macs'").fetchone()
                    macs = dict(conn.execute("SELECT seq, mac FROM macs").fetchall()) if has_macs else {}
                    conn.execute("COMMIT")
                model_problem = self._verify_model_file(entries, meta)
        except (sqlite3.DatabaseError, LedgerError) as exc:
            report.problems.append(f"database unreadable: {exc}")
            return report
        report.entries = len(entries)
        if entries:
            report.head = Head(int(entries[-1]["seq"]), entries[-1]["entry_hash"])
        if [r[0] for r in check] != ["ok"]:
            report.problems.append(f"SQLite integrity check failed: {check[:3]}")
        report.checks.append("database integrity")
        try:
            self.meta = meta
            self._decode_meta()
        except LedgerError as exc:
            report.problems.append(str(exc))
            return report
        self._verify_chain(entries, params, report)
        self._verify_anchor(entries, meta, macs, expected, report)
        if entries:
            if model_problem:
                report.problems.append(model_problem)
            report.checks.append("model file")
        try:
            rows = self._base_rows()
            if fingerprint(rows.X, np.asarray(rows.y), np.asarray(rows.ids)) != self.data_meta["fingerprint"]:
                report.problems.append("the data files differ from the data the ledger was created with")
        except LedgerError as exc:
            report.problems.append(str(exc))
        report.checks.append("data files")
        if not report.problems:
            self._check_overlay(entries, overlay, report)
        if not report.problems:
            written = [_json_field(e, "details").get("curvature_hash") for e in entries]
            expected_curv = next((h for h in reversed(written) if h), None)
            if curv is None or hashlib.sha256(curv[0]).hexdigest() != expected_curv:
                report.problems.append("the cached curvature does not match the hash its entry recorded (it was edited)")
            report.checks.append("cached curvature")
        if replay and not report.problems:
            try:
                self._replay(entries, params, report)
            except LedgerError as exc:
                report.problems.append(str(exc))
        return report

    def _verify_model_file(self, entries: list[dict], meta: dict | None = None) -> str | None:
        """A problem with the last entry's model file: its name, its parameters, or the preprocessing it records
        (which must be the ledger's, else the model would read and scale new data differently)."""
        if not entries:
            return None
        f = self.path / str(entries[-1]["model_file"])
        if not _MODEL_RE.match(f.name):
            return f"entry {entries[-1]['seq']}: model file name {f.name!r} is not a ledger model file name"
        try:
            m = load_model(f)
            if parameter_hash(m) != entries[-1]["params_after"]:
                return f"model file {f.name} was modified: its parameters do not match entry {entries[-1]['seq']}"
        except ModelError as exc:
            return f"model file {f.name}: {exc}"
        if meta is not None:
            try:
                ours = _stored_preprocessing(meta, where="the ledger's metadata")
                theirs = Preprocessing.of_model(m, where=f"model file {f.name}")
            except (ValueError, UnlearnKitError) as exc:
                return f"model file {f.name}: its preprocessing cannot be compared with the ledger's ({exc})"
            difference = ours.difference(theirs, mine="the ledger", theirs="the model file")
            if difference:
                return (f"model file {f.name} records another preprocessing than the ledger ({difference}): the file "
                        "was edited or replaced")
        return None

    def _verify_chain(self, entries: list[dict], params: dict, report: VerifyReport) -> None:
        prev_hash, prev_after = "", None
        for k, e in enumerate(entries):
            if e["seq"] != k:
                report.problems.append(f"entry numbering broken at position {k} (seq {e['seq']})")
            if e["prev_hash"] != prev_hash:
                report.problems.append(f"entry {e['seq']}: chain broken (previous hash does not match)")
            if _entry_hash(e) != e["entry_hash"]:
                report.problems.append(f"entry {e['seq']}: contents do not match its hash (the record was edited)")
            if k and e["params_before"] != prev_after:
                report.problems.append(f"entry {e['seq']}: parameters before do not match the previous entry's after")
            for name in ("certificate", "state", "details"):
                try:
                    _json_field(e, name)
                except LedgerError as exc:
                    report.problems.append(str(exc))
            if e["changes"]:
                try:
                    _entry_changes(e)
                except LedgerError as exc:
                    report.problems.append(str(exc))
            blob = params.get(e["seq"])
            if blob is None:
                report.problems.append(f"entry {e['seq']}: stored parameters missing")
            else:
                try:
                    m = self._model_from_blobs(*blob)
                    if parameter_hash(m) != e["params_after"]:
                        report.problems.append(f"entry {e['seq']}: stored parameters do not match the recorded hash")
                except LedgerError as exc:
                    report.problems.append(f"entry {e['seq']}: {exc}")
            prev_hash, prev_after = e["entry_hash"], e["params_after"]
        report.checks.append("hash chain and parameter hashes")

    def _verify_anchor(self, entries: list[dict], meta: dict, macs: dict, expected, report: VerifyReport) -> None:
        """The metadata hash of the first entry, the HMACs (with a key) and an expected head."""
        if entries:
            try:
                recorded = _json_field(entries[0], "details").get("meta_hash")
            except (LedgerError, AttributeError):
                recorded = None  # reported by the chain check
            if recorded is not None:
                if recorded != _meta_hash(meta):
                    report.problems.append("the ledger's metadata (spec, model, data fingerprint, key use) differs from "
                                           "what its first entry recorded: the metadata table was edited")
                report.checks.append("metadata against the first entry")
        if self.key is not None:
            if meta.get("mac") != MAC_ALGORITHM:
                report.problems.append("a key was given, but the ledger's entries carry no HMAC: it was created without "
                                       "a key, or its authentication was stripped")
            else:
                bad = [e["seq"] for e in entries
                       if not hmac.compare_digest(str(macs.get(e["seq"], "")), _mac(self.key, e["seq"], e["entry_hash"]))]
                if bad:
                    report.problems.append(f"entries {bad[:10]}: HMAC missing or wrong under the key given (a wrong key, "
                                           "or entries written or rewritten without it)")
            report.checks.append("HMAC of every entry")
        elif meta.get("mac") == MAC_ALGORITHM:
            report.checks.append("HMACs present but not checked (no key given)")
        if expected is not None:
            head = report.head
            want_hash = expected.hash if isinstance(expected, Head) else expected
            want_seq = expected.seq if isinstance(expected, Head) else None
            if head is None or head.hash != want_hash or (want_seq is not None and head.seq != want_seq):
                at = next((e["seq"] for e in entries if e["entry_hash"] == want_hash), None)
                if at is not None and (want_seq is None or at == want_seq) and head is not None and head.seq > at:
                    why = f"the expected head is entry {at}; {head.seq - at} entries were added after it"
                else:
                    why = ("the expected head is not in the chain: entries were removed, or the ledger was rewritten "
                           "or replaced")
                report.problems.append(f"head {head} differs from the expected {expected}: {why}")
            report.checks.append("head against the expected anchor")

    def _check_overlay(self, entries: list[dict], overlay: list, report: VerifyReport) -> None:
        """Re-apply every entry's changes to the base data and compare with the stored overlay."""
        rows = self._base_rows()
        for e in entries:
            changes = _entry_changes(e)
            if changes is not None:
                try:
                    rows.commit(rows.resolve(changes))
                except ChangesError as exc:
                    report.problems.append(f"entry {e['seq']}: its changes no longer apply to the data ({exc})")
                    return
        stored = self._base_rows()
        try:
            stored.load_overlay(overlay)
        except LedgerError as exc:
            report.problems.append(str(exc))
            return
        same = rows.removed == stored.removed and rows.edited.keys() == stored.edited.keys() and all(
            rows.edited[k][1] == stored.edited[k][1] and np.array_equal(rows.edited[k][0], stored.edited[k][0])
            for k in rows.edited)
        if not same:
            report.problems.append("the stored data overlay (edited and removed rows) differs from what the entries' "
                                   "changes produce: the overlay table was edited")
        report.checks.append("data overlay against the entries' changes")

    def _replay(self, entries: list[dict], params: dict, report: VerifyReport) -> None:
        from unlearnkit.training import TrainConfig

        rows = self._base_rows()
        data = rows.full()
        first = _json_field(entries[0], "state")
        try:
            seed = int(first["noise_seed"])
            config = TrainConfig.from_dict(self.train_config)
            template = LogisticRegression(**self.model_meta["config"])
            fresh = certified_train(template, data, self.spec, seed=seed, config=config, batch_size=self.batch_size,
                                    device=self.device)
        except (KeyError, TypeError, ValueError, ModelError, CertificationError) as exc:
            report.problems.append(f"entry 0: re-training the first model failed: {exc}")
            return
        recorded = self._model_from_blobs(*params[0])
        if not self._close(fresh.model, recorded, 1e-6, b_exact=True):
            report.problems.append("entry 0: re-training on the data files with the recorded recipe and seed does not "
                                   "give the recorded parameters (the first entry or the data was replaced)")
            return
        if not math.isclose(fresh.state.cumulative_bound, entries[0]["cumulative_bound"], rel_tol=1e-6, abs_tol=1e-12):
            report.problems.append(f"entry 0: re-trained residual {fresh.state.cumulative_bound:.6g} differs from the "
                                   f"recorded {entries[0]['cumulative_bound']:.6g}")
            return
        cm = CertifiedModel(fresh.model, rows, self.spec, fresh.state, fresh.curvature, batch_size=self.batch_size,
                            device=self.device)
        for e in entries[1:]:
            details = _json_field(e, "details")
            changes = _entry_changes(e)
            try:
                if e["kind"] == "unlearn":
                    cm.unlearn(changes, on_exhausted="error")
                    tol = 1e-8
                elif e["kind"] == "retrain":
                    if changes is not None:
                        cm.rows.commit(cm.rows.resolve(changes))
                    cm.retrain(seed=details["noise_seed"])
                    tol = 1e-6
                elif e["kind"] == "refine":
                    cm.refine(float(details["target"]), max_steps=int(details["max_steps"]))
                    tol = 1e-6
                else:
                    report.problems.append(f"entry {e['seq']}: unknown kind {e['kind']!r}")
                    return
            except (CertificationError, ChangesError, LedgerError, KeyError, TypeError, ValueError, OverflowError) as exc:
                report.problems.append(f"entry {e['seq']}: replay failed: {type(exc).__name__}: {exc}")
                return
            recorded = torch.from_numpy(np.frombuffer(params[e["seq"]][0], dtype=np.float64).copy())
            got = FlatModel(cm.model).theta().cpu()
            gap = float(torch.linalg.vector_norm(got - recorded))
            if gap > tol * (1.0 + float(torch.linalg.vector_norm(recorded))):
                report.problems.append(f"entry {e['seq']}: replaying it gives parameters {gap:.3g} away from the recorded ones")
                return
            recorded_b = np.frombuffer(params[e["seq"]][1], dtype=np.float64)
            got_b = cm.model.linear_term()
            got_b = np.zeros(0) if got_b is None else got_b.detach().cpu().to(torch.float64).numpy()
            if got_b.shape != recorded_b.shape or not np.array_equal(got_b, recorded_b):
                report.problems.append(f"entry {e['seq']}: replaying it gives a different noise b than the recorded "
                                       "one (the stored b was replaced)")
                return
            if not math.isclose(cm.state.cumulative_bound, e["cumulative_bound"], rel_tol=1e-6, abs_tol=1e-12):
                report.problems.append(f"entry {e['seq']}: replayed cumulative bound {cm.state.cumulative_bound:.6g} "
                                       f"differs from the recorded {e['cumulative_bound']:.6g}")
                return
        report.replayed = True
        report.checks.append("replay of every entry, the first one re-trained from the data")

    @staticmethod
    def _close(a: LogisticRegression, b: LogisticRegression, tol: float, *, b_exact: bool) -> bool:
        ta, tb = FlatModel(a).theta().cpu(), FlatModel(b).theta().cpu()
        if ta.shape != tb.shape or float(torch.linalg.vector_norm(ta - tb)) > tol * (1.0 + float(torch.linalg.vector_norm(tb))):
            return False
        pa, pb = a.linear_term(), b.linear_term()
        if (pa is None) != (pb is None):
            return False
        return pa is None or (torch.equal(pa.cpu(), pb.cpu()) if b_exact else torch.allclose(pa, pb))


def _check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= int(seed) < _SEED_LIMIT):
        raise LedgerError(f"seed must be an integer in [0, 2**64), got {seed!r}.")


def _check_key(key) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise LedgerError(f"A ledger key must be at least {MIN_KEY_BYTES} bytes (see unlearnkit.ledger.read_key).")
    return bytes(key)


def _model_file_extra(preprocessing: Preprocessing | None) -> dict:
    """What a ledger's model files record beside the entry: the preprocessing, if the ledger has one."""
    return {} if preprocessing is None or preprocessing.is_empty else {METADATA_KEY: preprocessing.to_dict()}


def _stored_preprocessing(meta: dict, *, where: str) -> Preprocessing:
    """The preprocessing a ledger's metadata records (none for a ledger made without one); ``where`` names the
    metadata in errors."""
    return Preprocessing.from_dict(json.loads(meta[METADATA_KEY]), where=where) if METADATA_KEY in meta else Preprocessing()


def _write_model_file(model: LogisticRegression, path: Path, *, metadata: dict) -> bytes:
    """Write a new model file (the format of :func:`unlearnkit.save_model`) atomically and durably;
    returns the bytes written.

    The bytes go to a temporary file that is synced to disk, then published under ``path`` with a
    hard link, which fails if the name exists: an existing file is never replaced. The folder is
    synced too, so once the entry is committed its model file survives a power loss. The bytes
    are written from Python: torch's own file writer turns a full disk or a file-size limit into
    an unexplained ``RuntimeError``, Python's names the cause.
    """
    from unlearnkit.atomic import check_target

    path = check_target(path)
    buf = io.BytesIO()
    torch.save(model_payload(model, metadata=metadata), buf)
    blob = buf.getvalue()
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise LedgerError(f"{path} already exists; a ledger never replaces a model file. Nothing was recorded.") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, getattr(errno, "ENOTSUP", -1)):
                raise
            # a filesystem without hard links: the name carries a random token, so a rename
            # replaces nothing that exists
            if os.path.lexists(path):
                raise LedgerError(f"{path} already exists; a ledger never replaces a model file.") from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return blob


def _same_bytes(path: Path, expected: bytes) -> bool:
    """Whether the regular file ``path`` holds exactly ``expected`` (False if it cannot be read)."""
    try:  # non-blocking open: a FIFO put in its place must not hang the writer
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != len(expected):
                return False
            return fh.read(len(expected) + 1) == expected
    except OSError:
        return False


def _file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``, or None when it cannot be read: a file replaced by another has another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _format_problem(where: Path, found) -> str:
    """Why a ledger database of format ``found`` is refused: a newer unlearnkit's, or not a ledger."""
    prefix = FORMAT.rsplit("/", 1)[0] + "/"
    if isinstance(found, str) and found.startswith(prefix) and found[len(prefix):].isdigit():
        return (f"{where} was written by a newer version of unlearnkit (ledger format {found!r}; this version reads "
                f"{FORMAT!r} and {FORMAT_PREPROCESS!r}); upgrade unlearnkit to use it.")
    return f"{where} is not an unlearnkit ledger (format {found!r})."


def _data_signature(folder: Path) -> list:
    """Identity of the data files: device, inode, size, modification and change times."""
    sig = []
    for name in ("X.npy", "y.npy", "ids.npy"):
        try:
            st = os.stat(folder / name)
        except OSError as exc:
            raise LedgerError(f"The ledger's data file {name} is unreadable ({describe_os_error(exc)}).") from None
        sig.append([name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return sig


def _cache_mac(key: bytes, signature: list, fp: str) -> str:
    payload = json.dumps({"signature": signature, "fingerprint": fp}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, f"{FORMAT}|data-check|{payload}".encode(), hashlib.sha256).hexdigest()


def _cache_data_check(folder: Path, signature: list, fp: str, key: bytes | None = None) -> None:
    """Record that the data files with this signature were hashed and matched ``fp`` (with an
    HMAC under ``key`` on a keyed ledger, so that the record cannot be forged without the key)."""
    cache = folder / DATA_CHECK_CACHE
    record = {"signature": signature, "fingerprint": fp}
    if key is not None:
        record["mac"] = _cache_mac(key, signature, fp)
    try:
        tmp = cache.with_name(f".{DATA_CHECK_CACHE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("could not cache the data check in %s (%s); the next write hashes the data again",
                    cache, describe_os_error(exc))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that cannot sync a directory
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _init_leftovers(path: Path) -> list[Path]:
    """What an interrupted ``init`` into the existing folder ``path`` left there (removable), or a
    LedgerError if the folder holds anything else.

    A hidden build folder is always such a leftover; the ledger's own file names only while the
    marker an ``init`` sets before it moves the built files up is there.
    """
    try:
        names = sorted(f.name for f in path.iterdir())
    except OSError as exc:
        raise LedgerError(f"Cannot read the folder {path}: {describe_os_error(exc)}.") from None
    moving = INIT_MARKER in names
    own = lambda n: (n.startswith(INIT_BUILD_PREFIX) or (moving and (
        n in ("data", WRITER_LOCK, FILES_LOCK, f"{DB_NAME}-journal") or _MODEL_RE.match(n) or _TEMP_RE.match(n))))
    foreign = [n for n in names if not own(n)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise LedgerError(f"{path} exists and is not empty (it holds {shown}); give a new or empty folder for the ledger.")
    return [path / n for n in names]


def _remove_dead_builds(parent: Path, name: str) -> None:
    """Remove folders left by an ``init`` of ``name`` that was killed (their builder holds no lock)."""
    for d in parent.glob(f".{glob.escape(name)}.init-*"):
        if not d.is_dir() or d.is_symlink():
            continue
        if not (d / INIT_MARKER).exists() and time.time() - d.stat().st_mtime < 60:
            continue  # just made by a builder that has not locked it yet
        lock = FolderLock(d, WRITER_LOCK)
        try:
            if lock.acquire(blocking=False):
                log.info("removing %s, left by an interrupted ledger init", d)
                shutil.rmtree(d, ignore_errors=True)
        except LedgerError:
            continue
        finally:
            lock.release()


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
