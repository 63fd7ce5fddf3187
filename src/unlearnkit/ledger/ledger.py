"""A persistent, verifiable record of the unlearning requests applied to a certified model.

A ledger is a folder::

    ledger.sqlite        entries (one per training, request, retraining, refinement), the
                         parameters after each, the data overlay, the cached curvature
    data/X.npy y.npy ids.npy   the training data as given at init (read-only, memory-mapped)
    model-000007.pt      the current model (unlearnkit model file; the name carries the entry)

**Transactions.** :meth:`Ledger.apply` computes the update in memory, writes the new model
file under a new name, then records the entry, its parameters, the overlay rows and (when it
changed) the curvature in *one* SQLite transaction, and only then deletes the previous model
file. A process killed at any point leaves either the old state (an unreferenced new model
file, removed on the next open) or the new one: a request is fully there or not at all.

**Integrity.** Each entry stores the SHA-256 of the parameters before and after (the loss
perturbation ``b`` included) and a hash chained over every earlier entry. :meth:`Ledger.verify`
checks the database, the chain, the parameter blobs, the model file and the data files, and can
replay the whole history from the first training, comparing every recorded state. A database
that is not a ledger, truncated or corrupted raises :class:`~unlearnkit.errors.LedgerError`:
nothing is ever reset or recreated silently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unlearnkit.data.changes import Changes
from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import CertificationError, ChangesError, LedgerError, ModelError
from unlearnkit.influence.certified import (
    CertifiedModel,
    CertifiedResult,
    CertifiedSpec,
    CertifiedState,
    certified_train,
)
from unlearnkit.influence.curvature import CachedCurvature
from unlearnkit.influence.functional import FlatModel
from unlearnkit.ledger.rows import LedgerRows, fingerprint, write_base
from unlearnkit.models.io import load_model, save_model
from unlearnkit.models.linear import LogisticRegression

FORMAT = "unlearnkit.ledger/1"
DB_NAME = "ledger.sqlite"
_MODEL_RE = re.compile(r"^model-(\d{6})\.pt$")

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
"""

_ENTRY_FIELDS = ("seq", "kind", "time", "reason", "changes", "n_affected", "residual_bound", "worst_case_bound",
                 "cumulative_bound", "exact_residual", "params_before", "params_after", "certificate", "state",
                 "details", "model_file", "prev_hash")


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _tensor_blob(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _blob_tensors(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


@dataclass
class VerifyReport:
    """What :meth:`Ledger.verify` found: ``ok`` when ``problems`` is empty."""

    entries: int
    replayed: bool
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "replayed": self.replayed, "problems": self.problems,
                "checks": self.checks}


class Ledger:
    """Open an existing ledger folder (see :meth:`create` for a new one)."""

    def __init__(self, path: str | Path, *, device=None) -> None:
        self.path = Path(path)
        self.device = device
        db = self.path / DB_NAME
        if not db.is_file():
            raise LedgerError(f"No ledger at {self.path} ({DB_NAME} not found). Create one with `unlearnkit ledger init`.")
        self._load()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls, path: str | Path, data: Dataset, *, model: LogisticRegression | None = None, spec: CertifiedSpec | None = None,
        seed: int | None = None, reason: str = "initial training", batch_size: int = 8192, device=None,
    ) -> "Ledger":
        """Train a certified model on ``data`` and start a ledger for it in the new folder ``path``.

        ``seed`` draws the noise ``b``; None (default) draws a secret random seed (recorded in the
        database, which must stay private, like the model file: whoever knows ``b`` and the data
        can tell an unlearned model from a retrained one).
        """
        path = Path(path)
        if (path / DB_NAME).exists():
            raise LedgerError(f"A ledger already exists at {path}; open it with Ledger({str(path)!r}) instead.")
        if path.exists() and any(path.iterdir()):
            raise LedgerError(f"{path} exists and is not empty; give a new folder for the ledger.")
        if data.is_sparse:
            raise LedgerError("The ledger stores dense features; convert with data.replace(X=data.X.toarray()).")
        model = model if model is not None else LogisticRegression(n_features=data.n_features, n_classes=data.n_classes)
        spec = spec or CertifiedSpec()
        cm = certified_train(model, data, spec, seed=seed, batch_size=batch_size, device=device)
        path.mkdir(parents=True, exist_ok=True)
        fp = write_base(path / "data", data)
        model_file = "model-000000.pt"
        save_model(cm.model, path / model_file, metadata={"ledger": str(path), "entry": 0})
        meta = {
            "format": FORMAT, "created": _now(), "spec": json.dumps(spec.to_dict()),
            "model": json.dumps({"kind": cm.model.kind, "config": cm.model.config}),
            "train_config": json.dumps(cm.model.train_config.to_dict()),
            "data": json.dumps({"fingerprint": fp, "n": len(data), "feature_shape": list(data.feature_shape),
                                "n_classes": data.n_classes, "name": data.name}),
            "batch_size": str(int(batch_size)),
        }
        cert = cm.certificate(exact_residual=cm.state.cumulative_bound)
        blob = cls._curvature_blob(cm)
        entry = cls._entry(0, "train", reason, None, len(data), None, None, cm, None, cert,
                           {"noise_seed": cm.state.noise_seed, "curvature_hash": hashlib.sha256(blob).hexdigest()},
                           model_file, prev_hash="")
        db = path / DB_NAME
        tmp = path / (DB_NAME + ".init")
        tmp.unlink(missing_ok=True)
        with closing(sqlite3.connect(tmp)) as conn:
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            cls._insert(conn, entry, cm, curvature=blob)
            conn.commit()
        tmp.replace(db)  # the ledger exists only once it is complete
        return cls(path, device=device)

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
                check = conn.execute("PRAGMA quick_check").fetchone()
                if not check or check[0] != "ok":
                    raise LedgerError(f"{self.path / DB_NAME} failed SQLite's integrity check ({check}); nothing was changed.")
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("format") != FORMAT:
                    raise LedgerError(f"{self.path / DB_NAME} is not an unlearnkit ledger (format {meta.get('format')!r}).")
                last = conn.execute("SELECT * FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
                cols = [c[0] for c in conn.execute("SELECT * FROM entries LIMIT 0").description]
                if last is None:
                    raise LedgerError(f"{self.path / DB_NAME} holds no entries; it is not a complete ledger.")
                last = dict(zip(cols, last))
                params = conn.execute("SELECT theta, perturbation FROM params WHERE seq = ?", (last["seq"],)).fetchone()
                overlay = conn.execute("SELECT id, removed, label, x FROM overlay").fetchall()
                curv = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        if params is None or curv is None:
            raise LedgerError(f"{self.path / DB_NAME} is incomplete (parameters or curvature of entry {last['seq']} missing).")
        try:
            self.meta = meta
            spec_d = json.loads(meta["spec"])
            spec_d.pop("budget", None)  # derived from sigma
            self.spec = CertifiedSpec(**spec_d)
            data_meta = json.loads(meta["data"])
            model_meta = json.loads(meta["model"])
            self.batch_size = int(meta.get("batch_size", 8192))
            state_d = json.loads(last["state"])
            tensors = _blob_tensors(curv[0])
        except (KeyError, ValueError, TypeError, RuntimeError, CertificationError) as exc:
            raise LedgerError(f"{self.path / DB_NAME} has malformed records ({type(exc).__name__}: {exc}).") from None
        self.data_meta = data_meta
        rows = self._base_rows()
        if len(rows.X) != data_meta["n"]:
            raise LedgerError(f"The ledger's data files hold {len(rows.X)} rows, the database says {data_meta['n']}.")
        rows.load_overlay(overlay)
        model = self._model_from_blobs(model_meta, json.loads(meta["train_config"]), params[0], params[1])
        if parameter_hash(model) != last["params_after"]:
            raise LedgerError(f"The parameters stored for entry {last['seq']} do not match its recorded hash: "
                              "the database was edited. Run `unlearnkit ledger verify`.")
        try:
            curvature = CachedCurvature.from_state({k: v for k, v in tensors.items() if k != "gram"})
            state = CertifiedState(gram=tensors["gram"], **state_d)
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"{self.path / DB_NAME} has a malformed curvature or state record ({exc}).") from None
        self.certified = CertifiedModel(model, rows, self.spec, state, curvature, batch_size=self.batch_size, device=self.device)
        self.seq = int(last["seq"])
        self.last = last
        self._cleanup_files()

    def _base_rows(self) -> LedgerRows:
        """The ledger's training data as given at init, with an empty overlay."""
        meta = self.data_meta
        return LedgerRows(self.path / "data", n_classes=meta["n_classes"], feature_shape=tuple(meta["feature_shape"]),
                          name=meta.get("name", "ledger data"))

    def _model_from_blobs(self, model_meta: dict, train_config: dict, theta_blob: bytes, b_blob: bytes) -> LogisticRegression:
        from unlearnkit.training import TrainConfig

        try:
            model = LogisticRegression(**model_meta["config"]).to(torch.float64)
            flat = FlatModel(model)
            theta = torch.from_numpy(np.frombuffer(theta_blob, dtype=np.float64).copy())
            b = torch.from_numpy(np.frombuffer(b_blob, dtype=np.float64).copy())
            if theta.numel() != flat.n_params or (model.loss_perturbation and b.numel() != flat.n_params):
                raise ValueError("parameter blob of the wrong size")
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise LedgerError(f"{self.path / DB_NAME}: malformed model record ({exc}).") from None
        model = flat.to_model(theta)
        if model.loss_perturbation:
            with torch.no_grad():
                model.perturbation.copy_(b)
        model.train_config = TrainConfig.from_dict(train_config)
        return model

    def _cleanup_files(self) -> None:
        current = self.last["model_file"]
        for f in self.path.iterdir():
            if (_MODEL_RE.match(f.name) and f.name != current) or (f.name.startswith(".model-") and f.name.endswith(".tmp")):
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------ entries
    @staticmethod
    def _entry(seq, kind, reason, changes, n_affected, residual_bound, worst_case_bound, cm: CertifiedModel,
               params_before, cert, details, model_file, *, prev_hash) -> dict:
        entry = {
            "seq": seq, "kind": kind, "time": _now(), "reason": str(reason), "changes": changes,
            "n_affected": int(n_affected), "residual_bound": residual_bound, "worst_case_bound": worst_case_bound,
            "cumulative_bound": cm.state.cumulative_bound, "exact_residual": cert.exact_residual,
            "params_before": params_before, "params_after": parameter_hash(cm.model),
            "certificate": json.dumps(cert.to_dict(), sort_keys=True), "state": json.dumps(cm.state.to_dict(), sort_keys=True),
            "details": json.dumps(details, sort_keys=True, default=float), "model_file": model_file, "prev_hash": prev_hash,
        }
        entry["entry_hash"] = _entry_hash(entry)
        return entry

    @staticmethod
    def _curvature_blob(cm: CertifiedModel) -> bytes:
        return _tensor_blob({**cm.curvature.state(), "gram": cm.state.gram})

    @staticmethod
    def _insert(conn, entry: dict, cm: CertifiedModel, *, curvature: bytes | None, overlay=()) -> None:
        cols = list(entry)
        conn.execute(f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [entry[c] for c in cols])
        theta, b = _param_arrays(cm.model)
        conn.execute("INSERT INTO params VALUES (?, ?, ?)", (entry["seq"], theta.tobytes(), b.tobytes()))
        for row_id, removed, label, x in overlay:
            conn.execute("INSERT OR REPLACE INTO overlay VALUES (?, ?, ?, ?, ?)", (row_id, removed, label, x, entry["seq"]))
        if curvature is not None:
            conn.execute("INSERT OR REPLACE INTO curvature VALUES (1, ?, ?)", (curvature, entry["seq"]))

    def _record(self, kind: str, reason: str, changes: Changes | None, n_affected: int, cert, details: dict, *,
                overlay=(), curvature: bool, residual_bound=None, worst_case_bound=None) -> dict:
        """Write the model file, then the entry and everything it changed in one transaction."""
        seq = self.seq + 1
        model_file = f"model-{seq:06d}.pt"
        cm = self.certified
        blob = self._curvature_blob(cm) if curvature else None
        if blob is not None:
            details = {**details, "curvature_hash": hashlib.sha256(blob).hexdigest()}
        entry = self._entry(seq, kind, reason, None if changes is None else changes.to_json(), n_affected,
                            residual_bound, worst_case_bound, cm, self.last["params_after"], cert, details, model_file,
                            prev_hash=self.last["entry_hash"])
        save_model(cm.model, self.path / model_file, metadata={"ledger": str(self.path), "entry": seq})
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            top = conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
            if top != self.seq:
                raise LedgerError(f"The ledger was changed by another process (entry {top}, expected {self.seq}); reopen it.")
            self._write_entry(conn, entry, overlay, blob)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            (self.path / model_file).unlink(missing_ok=True)
            raise
        finally:
            conn.close()
        self.seq, self.last = seq, entry
        self._cleanup_files()
        return entry

    def _write_entry(self, conn, entry, overlay, curvature) -> None:
        self._insert(conn, entry, self.certified, curvature=curvature, overlay=overlay)

    def _guarded(self, fn):
        """Run a state-changing step; on any failure reload the last committed state."""
        self._check_model_file()
        try:
            return fn()
        except BaseException:
            self._load()
            raise

    def _check_model_file(self) -> None:
        f = self.path / self.last["model_file"]
        try:
            current = load_model(f)
        except ModelError as exc:
            raise LedgerError(f"The ledger's model file is unusable: {exc} Run `unlearnkit ledger verify`.") from None
        if parameter_hash(current) != self.last["params_after"]:
            raise LedgerError(f"{f} differs from the parameters the ledger recorded for entry {self.seq}: it was modified "
                              "outside the ledger. Run `unlearnkit ledger verify`; nothing was applied.")

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
        return self.path / self.last["model_file"]

    def certificate(self):
        return self.certified.certificate()

    def apply(self, changes: Changes, *, reason: str = "", exact_residual: bool = False) -> CertifiedResult:
        """Unlearn ``changes`` on top of every earlier request and record it (one transaction).

        Retrains on the corrected data (fresh noise, budget reset) when the request would exceed
        the budget, and records that as a ``retrain`` entry with the request attached.
        """
        if not isinstance(changes, Changes):
            raise ChangesError(f"changes must be an unlearnkit Changes, got {type(changes).__name__}.")

        def step():
            cm = self.certified
            resolved = cm.rows.resolve(changes)
            overlay = cm.rows.overlay_records(resolved)
            before = cm.state.cumulative_bound
            result = cm.apply_resolved(resolved, exact_residual=exact_residual)
            cert = result.certificate
            details = {"seconds": result.seconds, "method": result.method, "noise_seed": cm.state.noise_seed,
                       **{k: v for k, v in result.diagnostics.items() if k != "certificate"}}
            if cert.retrained:
                details["retrained_because"] = (
                    f"cumulative bound {before:.6g} + request bound {cert.residual_bound if self.spec.bound == 'data' else cert.worst_case_bound:.6g} "
                    f"> budget {self.spec.budget:.6g}")
            self._record("retrain" if cert.retrained else "unlearn", reason, changes, result.n_affected, cert, details,
                         overlay=overlay, curvature=cert.retrained or result.diagnostics.get("low_rank_update", 0) > 0,
                         residual_bound=cert.residual_bound, worst_case_bound=cert.worst_case_bound)
            return result

        return self._guarded(step)

    def refine(self, target: float | None = None, *, max_steps: int = 50, reason: str = "refine") -> dict:
        """Newton steps to a residual target (see :meth:`CertifiedModel.refine`), recorded."""
        def step():
            info = self.certified.refine(target, max_steps=max_steps)
            cert = self.certified.certificate(exact_residual=info["residual"], refine_steps=info["steps"])
            self._record("refine", reason, None, 0, cert, {**info, "max_steps": max_steps}, curvature=True)
            return info

        return self._guarded(step)

    def retrain(self, *, reason: str = "retrain", seed: int | None = None) -> None:
        """Retrain on the current corrected data with fresh noise (budget reset), recorded."""
        def step():
            self.certified.retrain(seed=seed)
            cm = self.certified
            cert = cm.certificate(exact_residual=cm.state.cumulative_bound, retrained=True)
            self._record("retrain", reason, None, 0, cert, {"noise_seed": cm.state.noise_seed}, curvature=True)

        self._guarded(step)

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
            e["certificate"] = json.loads(e["certificate"])
            e["details"] = json.loads(e["details"])
            e["state"] = json.loads(e["state"])
        return entries

    def export(self, path: str | Path | None = None) -> dict:
        """The whole ledger (metadata and entries, no binary blobs) as JSON-ready data.

        Noise seeds are left out: they determine ``b``, which must stay private.
        """
        meta = {k: (json.loads(v) if k in ("spec", "model", "train_config", "data") else v) for k, v in self.meta.items()}
        entries = self.history()
        for e in entries:  # the noise seed determines b, which must stay private for the certificate to hold
            e["details"].pop("noise_seed", None)
            e["state"].pop("noise_seed", None)
        out = {"format": FORMAT, "meta": meta, "entries": entries, "current": {
            "entry": self.seq, "model_file": self.last["model_file"], "params_hash": self.last["params_after"],
            "certificate": self.certificate().to_dict()}}
        if path is not None:
            from unlearnkit.atomic import atomic_write

            text = json.dumps(out, indent=1, default=_json_default)
            atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
        return out

    # ------------------------------------------------------------------ verification
    def verify(self, *, replay: bool = True) -> VerifyReport:
        """Check the ledger; ``replay=True`` also recomputes every entry from the first training."""
        report = VerifyReport(entries=0, replayed=False)
        try:
            with closing(self._connect()) as conn:
                check = conn.execute("PRAGMA integrity_check").fetchall()
                entries = self._entries(conn)
                params = {seq: (t, b) for seq, t, b in conn.execute("SELECT seq, theta, perturbation FROM params")}
                overlay = conn.execute("SELECT id, removed, label, x FROM overlay ORDER BY id").fetchall()
                curv = conn.execute("SELECT blob FROM curvature WHERE id = 1").fetchone()
        except (sqlite3.DatabaseError, LedgerError) as exc:
            report.problems.append(f"database unreadable: {exc}")
            return report
        report.entries = len(entries)
        if [r[0] for r in check] != ["ok"]:
            report.problems.append(f"SQLite integrity check failed: {check[:3]}")
        report.checks.append("database integrity")
        prev_hash, prev_after = "", None
        model_meta, train_cfg = json.loads(self.meta["model"]), json.loads(self.meta["train_config"])
        for k, e in enumerate(entries):
            if e["seq"] != k:
                report.problems.append(f"entry numbering broken at position {k} (seq {e['seq']})")
            if e["prev_hash"] != prev_hash:
                report.problems.append(f"entry {e['seq']}: chain broken (previous hash does not match)")
            if _entry_hash(e) != e["entry_hash"]:
                report.problems.append(f"entry {e['seq']}: contents do not match its hash (the record was edited)")
            if k and e["params_before"] != prev_after:
                report.problems.append(f"entry {e['seq']}: parameters before do not match the previous entry's after")
            blob = params.get(e["seq"])
            if blob is None:
                report.problems.append(f"entry {e['seq']}: stored parameters missing")
            else:
                try:
                    m = self._model_from_blobs(model_meta, train_cfg, *blob)
                    if parameter_hash(m) != e["params_after"]:
                        report.problems.append(f"entry {e['seq']}: stored parameters do not match the recorded hash")
                except LedgerError as exc:
                    report.problems.append(f"entry {e['seq']}: {exc}")
            prev_hash, prev_after = e["entry_hash"], e["params_after"]
        report.checks.append("hash chain and parameter hashes")
        if entries:
            f = self.path / entries[-1]["model_file"]
            try:
                m = load_model(f)
                if parameter_hash(m) != entries[-1]["params_after"]:
                    report.problems.append(f"model file {f.name} was modified: its parameters do not match entry {entries[-1]['seq']}")
            except ModelError as exc:
                report.problems.append(f"model file {f.name}: {exc}")
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
            written = [json.loads(e["details"]).get("curvature_hash") for e in entries]
            expected = next((h for h in reversed(written) if h), None)
            if curv is None or hashlib.sha256(curv[0]).hexdigest() != expected:
                report.problems.append("the cached curvature does not match the hash its entry recorded (it was edited)")
            report.checks.append("cached curvature")
        if replay and not report.problems:
            self._replay(entries, params, report)
        return report

    def _check_overlay(self, entries: list[dict], overlay: list, report: VerifyReport) -> None:
        """Re-apply every entry's changes to the base data and compare with the stored overlay."""
        rows = self._base_rows()
        for e in entries:
            if e["changes"]:
                try:
                    rows.commit(rows.resolve(Changes.from_json(e["changes"])))
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
        model_meta, train_cfg = json.loads(self.meta["model"]), json.loads(self.meta["train_config"])
        rows = self._base_rows()
        model = self._model_from_blobs(model_meta, train_cfg, *params[0])
        data = rows.full()
        first = json.loads(entries[0]["state"])
        state = CertifiedState.of_data(model, data, feature_bound=first["feature_bound"],
                                       cumulative_bound=entries[0]["cumulative_bound"], noise_seed=first["noise_seed"])
        cm = CertifiedModel(model, rows, self.spec, state, CachedCurvature.at(model, data, batch_size=self.batch_size),
                            batch_size=self.batch_size, device=self.device)
        for e in entries[1:]:
            details = json.loads(e["details"])
            changes = Changes.from_json(e["changes"]) if e["changes"] else None
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
                    cm.refine(details["target"], max_steps=details["max_steps"])
                    tol = 1e-6
                else:
                    report.problems.append(f"entry {e['seq']}: unknown kind {e['kind']!r}")
                    return
            except (CertificationError, ChangesError, LedgerError) as exc:
                report.problems.append(f"entry {e['seq']}: replay failed: {exc}")
                return
            recorded = torch.from_numpy(np.frombuffer(params[e["seq"]][0], dtype=np.float64).copy())
            got = FlatModel(cm.model).theta().cpu()
            gap = float(torch.linalg.vector_norm(got - recorded))
            if gap > tol * (1.0 + float(torch.linalg.vector_norm(recorded))):
                report.problems.append(f"entry {e['seq']}: replaying it gives parameters {gap:.3g} away from the recorded ones")
                return
            if not math.isclose(cm.state.cumulative_bound, e["cumulative_bound"], rel_tol=1e-6, abs_tol=1e-12):
                report.problems.append(f"entry {e['seq']}: replayed cumulative bound {cm.state.cumulative_bound:.6g} "
                                       f"differs from the recorded {e['cumulative_bound']:.6g}")
                return
        report.replayed = True
        report.checks.append("replay of every entry")


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
