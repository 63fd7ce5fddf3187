"""The results store: one SQLite file per benchmark run folder.

Everything a run produces goes here, each in its own transaction, written by the driver process
only (workers return results; they never touch the file):

* ``meta``: schema version, the configuration and its fingerprint;
* ``runs``: each invocation (start, end, status: running / done / interrupted / failed), executor
  and environment;
* ``refs``: per (problem, seed) the original and retrained models (weights), their training
  seconds and measurements;
* ``trials``: every finished search trial (parameters, objective values, state);
* ``studies``: per (problem, method) the chosen setting, its objective values and the Pareto front;
* ``cells``: per (problem, method, seed) the evaluation: parameters, metrics, seconds, status,
  environment, the run that produced it.

A row is written once its job has finished, in one transaction, so a run killed at any point
(even ``kill -9``) leaves only whole rows; rerunning skips what is there and does what is not.
Primary keys make a duplicate impossible.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from unlearnkit.errors import BenchError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
    executor TEXT, env TEXT);
CREATE TABLE IF NOT EXISTS refs (
    problem TEXT NOT NULL, seed INTEGER NOT NULL, original BLOB NOT NULL, retrained BLOB NOT NULL,
    original_seconds REAL NOT NULL, retrain_seconds REAL NOT NULL, metrics TEXT NOT NULL, env TEXT,
    run_id INTEGER, finished REAL, PRIMARY KEY (problem, seed));
CREATE TABLE IF NOT EXISTS trials (
    problem TEXT NOT NULL, method TEXT NOT NULL, number INTEGER NOT NULL, params TEXT NOT NULL,
    objectives TEXT, state TEXT NOT NULL, seconds REAL, error TEXT, run_id INTEGER, finished REAL, attrs TEXT,
    PRIMARY KEY (problem, method, number));
CREATE TABLE IF NOT EXISTS studies (
    problem TEXT NOT NULL, method TEXT NOT NULL, chosen TEXT NOT NULL, objectives TEXT, n_trials INTEGER NOT NULL,
    pareto TEXT, space TEXT, sampler TEXT, run_id INTEGER, finished REAL, PRIMARY KEY (problem, method));
CREATE TABLE IF NOT EXISTS cells (
    problem TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL, params TEXT NOT NULL, metrics TEXT,
    seconds REAL, status TEXT NOT NULL, error TEXT, env TEXT, run_id INTEGER, finished REAL,
    PRIMARY KEY (problem, method, seed));
"""
TABLES = ("meta", "runs", "refs", "trials", "studies", "cells")


class Store:
    """The SQLite results store of one run folder (see the module docstring)."""

    def __init__(self, folder: str | Path, *, create: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if not self.path.exists():
            if not create:
                raise BenchError(f"No benchmark results in {self.folder} (no {DB_NAME}); start one with "
                                 "`unlearnkit bench run CONFIG --out FOLDER`.")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BenchError(f"Cannot create the run folder {self.folder}: {exc.strerror or exc}. "
                                 "Give --out a folder (new or existing) you can write to.") from None
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if names and not {"meta", "cells"} <= names:
                raise BenchError(f"{self.path} is an SQLite file, but not an unlearnkit results store "
                                 f"(tables: {', '.join(sorted(names))}). Choose another --out folder.")
            conn.executescript(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(trials)")}
            if "attrs" not in columns:  # stores written before trials kept the sampler's attributes
                conn.execute("ALTER TABLE trials ADD COLUMN attrs TEXT")
        except sqlite3.DatabaseError as exc:
            raise BenchError(f"{self.path} is not a readable results database ({exc}): it is corrupted or not "
                             "SQLite. Nothing was changed; move it aside and rerun to start afresh.") from None
        version = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if version is None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) != SCHEMA_VERSION:
            raise BenchError(f"{self.path} has store schema {version[0]}; this unlearnkit reads schema {SCHEMA_VERSION}.")
        return conn

    def close(self) -> None:
        self.conn.close()
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            lock.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def lock(self) -> None:
        """Hold an exclusive lock on the folder for this process's lifetime: one driver per run folder."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; one driver is the user's promise
            return
        self._lock_file = open(self.folder / "results.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise BenchError(f"Another `unlearnkit bench run` is using {self.folder}; wait for it, or stop it "
                             "(Ctrl-C) and rerun to resume.") from None

    # ------------------------------------------------------------------ configuration
    def bind_config(self, config_dict: dict, fingerprint: str) -> None:
        """Record the configuration, or check it matches the one this store was made with."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            with self.transaction() as c:
                c.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fingerprint,))
                c.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(config_dict),))
                c.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
        elif row[0] != fingerprint:
            raise BenchError(f"{self.folder} holds results of a different configuration (fingerprint {row[0]}, this "
                             f"one {fingerprint}). Resume with the same configuration, or use a new --out folder.")

    def config(self) -> dict:
        row = self.conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()
        if row is None:
            raise BenchError(f"{self.path} holds no configuration: no run has started there.")
        return json.loads(row[0])

    # ------------------------------------------------------------------ runs
    def start_run(self, executor: str, env: dict) -> int:
        with self.transaction() as c:
            # a run that died without saying so (kill -9) is marked as such
            c.execute("UPDATE runs SET status='killed' WHERE status='running'")
            cur = c.execute("INSERT INTO runs (started, status, executor, env) VALUES (?, 'running', ?, ?)",
                            (time.time(), executor, json.dumps(env)))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=?, status=? WHERE id=?", (time.time(), status, run_id))

    def runs(self) -> list[dict]:
        cols = ("id", "started", "finished", "status", "executor", "env")
        out = []
        for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM runs ORDER BY id"):
            d = dict(zip(cols, r))
            d["env"] = json.loads(d["env"]) if d["env"] else {}
            out.append(d)
        return out

    # ------------------------------------------------------------------ references
    def ref_keys(self) -> set[tuple[str, int]]:
        return {(p, s) for p, s in self.conn.execute("SELECT problem, seed FROM refs")}

    def put_ref(self, problem: str, seed: int, result: dict, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO refs VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (problem, seed, result["original"], result["retrained"], result["original_seconds"],
                       result["retrain_seconds"], json.dumps(result["metrics"]), json.dumps(result["env"]), run_id,
                       time.time()))

    def get_ref(self, problem: str, seed: int) -> dict:
        row = self.conn.execute("SELECT original, retrained, original_seconds, retrain_seconds, metrics FROM refs "
                                "WHERE problem=? AND seed=?", (problem, seed)).fetchone()
        if row is None:
            raise BenchError(f"No reference models for {problem}, seed {seed}.")
        return {"original": row[0], "retrained": row[1], "original_seconds": row[2], "retrain_seconds": row[3],
                "metrics": json.loads(row[4])}

    def ref_metrics(self) -> list[dict]:
        return [{"problem": p, "seed": s, "original_seconds": o, "retrain_seconds": r, **json.loads(m)}
                for p, s, o, r, m in self.conn.execute(
                    "SELECT problem, seed, original_seconds, retrain_seconds, metrics FROM refs ORDER BY problem, seed")]

    # ------------------------------------------------------------------ search
    def trials(self, problem: str, method: str) -> list[dict]:
        cols = ("number", "params", "objectives", "state", "seconds", "error", "attrs")
        out = []
        for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM trials WHERE problem=? AND method=? ORDER BY number",
                                   (problem, method)):
            d = dict(zip(cols, r))
            d["params"] = json.loads(d["params"])
            d["objectives"] = json.loads(d["objectives"]) if d["objectives"] else None
            d["attrs"] = json.loads(d["attrs"]) if d["attrs"] else {}
            out.append(d)
        return out

    def put_trial(self, problem: str, method: str, number: int, params: dict, objectives, state: str,
                  seconds: float, error: str | None, run_id: int, attrs: dict | None = None) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO trials (problem, method, number, params, objectives, state, seconds, error, run_id, "
                      "finished, attrs) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (problem, method, number, json.dumps(params), json.dumps(objectives) if objectives else None,
                       state, seconds, error, run_id, time.time(), json.dumps(attrs or {})))

    def forget_crashes(self) -> list[tuple[str, str]]:
        """Delete crashed trials (a bug, out of memory, a lost node: not the method's verdict), the
        studies they belong to and those studies' cells, so the next run searches them again."""
        pairs = sorted(set(self.conn.execute("SELECT DISTINCT problem, method FROM trials WHERE state='crash'")))
        with self.transaction() as c:
            for problem, method in pairs:
                c.execute("DELETE FROM trials WHERE problem=? AND method=? AND state='crash'", (problem, method))
                c.execute("DELETE FROM studies WHERE problem=? AND method=?", (problem, method))
                c.execute("DELETE FROM cells WHERE problem=? AND method=?", (problem, method))
        return pairs

    def study(self, problem: str, method: str) -> dict | None:
        row = self.conn.execute("SELECT chosen, objectives, n_trials, pareto, space, sampler FROM studies "
                                "WHERE problem=? AND method=?", (problem, method)).fetchone()
        if row is None:
            return None
        return {"chosen": json.loads(row[0]), "objectives": json.loads(row[1]) if row[1] else None, "n_trials": row[2],
                "pareto": json.loads(row[3]) if row[3] else [], "space": json.loads(row[4]) if row[4] else {},
                "sampler": row[5]}

    def put_study(self, problem: str, method: str, study: dict, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (problem, method, json.dumps(study["chosen"]), json.dumps(study.get("objectives")),
                       study["n_trials"], json.dumps(study.get("pareto", [])), json.dumps(study.get("space", {})),
                       study.get("sampler"), run_id, time.time()))

    def studies(self) -> list[dict]:
        return [{"problem": p, "method": m, **self.study(p, m)}
                for p, m in self.conn.execute("SELECT problem, method FROM studies ORDER BY problem, method")]

    # ------------------------------------------------------------------ cells
    def cell_keys(self, *, include_failed: bool = True) -> set[tuple[str, str, int]]:
        query = "SELECT problem, method, seed FROM cells" + ("" if include_failed else " WHERE status='ok'")
        return {(p, m, s) for p, m, s in self.conn.execute(query)}

    def put_cell(self, problem: str, method: str, seed: int, result: dict, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM cells WHERE problem=? AND method=? AND seed=? AND status='failed'",
                      (problem, method, seed))
            c.execute("INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (problem, method, seed, json.dumps(result["params"]), json.dumps(result.get("metrics")),
                       result.get("seconds"), result["status"], result.get("error"), json.dumps(result.get("env", {})),
                       run_id, time.time()))

    def cells(self) -> list[dict]:
        cols = ("problem", "method", "seed", "params", "metrics", "seconds", "status", "error", "env", "run_id")
        out = []
        for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM cells ORDER BY problem, method, seed"):
            d = dict(zip(cols, r))
            for key in ("params", "metrics", "env"):
                value = json.loads(d[key]) if d[key] else None
                d[key] = value if isinstance(value, dict) else {}  # a failed cell stored no metrics ("null")
            out.append(d)
        return out

    def counts(self) -> dict:
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("refs", "trials", "studies", "cells")}
