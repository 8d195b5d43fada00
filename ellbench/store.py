"""SQLite results store: jobs with a stable key and provenance, per-example outcomes committed per batch.

One job = one model x task entry x data set. Its id is the sha256 of its canonical key, so the same work asked
for twice maps to the same row: a finished job is reused and an interrupted one resumes from its committed batches.
Each batch is written in one transaction (WAL mode), so a killed process loses at most the batch in flight.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import socket
import sqlite3
from pathlib import Path

from ellbench.errors import EllbenchError
from ellbench.io import ensure_writable_dir

STORE_FILENAME = "ellbench.sqlite"
KEY_FIELDS = ("model", "checkpoint", "data", "task", "settings", "seed", "version")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    model TEXT NOT NULL, checkpoint TEXT NOT NULL, data TEXT NOT NULL, task TEXT NOT NULL,
    settings TEXT NOT NULL, seed INTEGER NOT NULL, version TEXT NOT NULL,
    total INTEGER NOT NULL, batch_size INTEGER NOT NULL,
    status TEXT NOT NULL,
    summary TEXT,
    provenance TEXT NOT NULL,
    created_utc TEXT NOT NULL, finished_utc TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_utc TEXT NOT NULL, ended_utc TEXT,
    provenance TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS batches (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    batch INTEGER NOT NULL,
    size INTEGER NOT NULL,
    committed_utc TEXT NOT NULL,
    PRIMARY KEY (job_id, batch)
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    label INTEGER,
    pred INTEGER,
    correct INTEGER,
    extra TEXT,
    PRIMARY KEY (job_id, idx)
);
"""


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def job_id_for(key: dict) -> str:
    """Stable id of a job key: sha256 of its canonical JSON over the key fields."""
    missing = [field for field in KEY_FIELDS if field not in key]
    if missing:
        raise ValueError(f"job key lacks {missing}")
    return hashlib.sha256(canonical_json({f: key[f] for f in KEY_FIELDS}).encode()).hexdigest()


BUSY_TIMEOUT_S = 120


def store_error(path: Path, error: sqlite3.Error) -> EllbenchError:
    """The one-line error for a store problem: which file, what is wrong, and what to do."""
    text = str(error)
    if "readonly" in text or "read-only" in text:
        return EllbenchError(f"results store {path} is read-only ({text}): make it and its folder writable, or pass "
                             "another --out")
    if "locked" in text or "busy" in text:
        return EllbenchError(f"results store {path} stayed locked by another process for over {BUSY_TIMEOUT_S} s: "
                             "wait for it to finish, or pass another --out")
    if "full" in text:
        return EllbenchError(f"no space left for results store {path} ({text}): free disk space, then run the same "
                             "command again (finished batches are kept)")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return EllbenchError(f"results store {path} is damaged ({text}): move it aside and run again to start a new "
                             "one, or restore a copy")
    return EllbenchError(f"results store {path}: {text}")


def _store_errors(method):
    """Store methods raise a one-line EllbenchError naming the file instead of sqlite3's exceptions."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise store_error(self.path, error) from None

    return guarded


def _process_alive(provenance: dict) -> bool | None:
    """Whether the process an attempt's provenance names is still running; None when this machine cannot tell."""
    pid, host = provenance.get("pid"), provenance.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Store:
    """The results database of one output folder.

    Opened for writing, the file's integrity is checked (SQLite's quick_check) before the first write, so that a
    damaged store is noticed even when every job in it looks finished. `read_only=True` opens an existing store
    without writing to it (reports).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._checked = False
        self._attempt: dict[str, int] = {}  # job id -> the attempt this process runs
        if not read_only:
            ensure_writable_dir(self.path.parent)
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                            isolation_level=None)
                self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                self.conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            else:
                self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                self.conn.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise store_error(self.path, error) from None

    @classmethod
    def in_folder(cls, out_dir: str | Path, *, read_only: bool = False) -> Store:
        return cls(Path(out_dir) / STORE_FILENAME, read_only=read_only)

    @_store_errors
    def check_integrity(self) -> None:
        """SQLite's quick_check over the whole file; a one-line error when it finds damage."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise EllbenchError(f"results store {self.path} is damaged (quick_check: {problems[0]}): move it aside "
                                "and run again to start a new one, or restore a copy")
        self._checked = True

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        return _Transaction(self.conn)

    # jobs -----------------------------------------------------------------------------------------------
    @_store_errors
    def open_job(self, key: dict, *, total: int, batch_size: int, provenance: dict) -> dict:
        """Create the job if new, start a new attempt, and return the job row (status 'done' if already finished).

        Attempts still marked running whose process is gone (killed on this machine, or of a process this machine
        cannot see) become 'abandoned'; a live one (another process on this machine working on the same job) keeps
        its status and closes its own attempt when it ends.
        """
        if not self._checked:
            self.check_integrity()
        job_id = job_id_for(key)
        now = utc_now()
        with self.transaction():
            row = self.get_job(job_id)
            if row is None:
                self.conn.execute(
                    "INSERT INTO jobs (id, key, model, checkpoint, data, task, settings, seed, version, total, "
                    "batch_size, status, provenance, created_utc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job_id, canonical_json({f: key[f] for f in KEY_FIELDS}), str(key["model"]),
                     str(key["checkpoint"]), str(key["data"]), str(key["task"]), canonical_json(key["settings"]),
                     int(key["seed"]), str(key["version"]), int(total), int(batch_size), "running",
                     canonical_json(provenance), now),
                )
            elif row["total"] != total or row["batch_size"] != batch_size:
                raise EllbenchError(
                    f"stored job {job_id[:12]} has {row['total']} examples in batches of {row['batch_size']}, "
                    f"this run has {total} in batches of {batch_size}"
                )
            if row is None or row["status"] != "done":
                running = self.conn.execute("SELECT attempt, provenance FROM attempts WHERE job_id = ? AND "
                                            "status = 'running'", (job_id,)).fetchall()
                for attempt, recorded in running:
                    if not _process_alive(json.loads(recorded)):  # died without closing it (SIGKILL), or unknown
                        self.conn.execute("UPDATE attempts SET status = 'abandoned' WHERE job_id = ? AND attempt = ?",
                                          (job_id, attempt))
                attempt = self.conn.execute(
                    "SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts WHERE job_id = ?", (job_id,)
                ).fetchone()[0]
                self.conn.execute(
                    "INSERT INTO attempts (job_id, attempt, status, started_utc, provenance) VALUES (?,?,?,?,?)",
                    (job_id, attempt, "running", now, canonical_json(provenance)),
                )
                self._attempt[job_id] = attempt
        return self.get_job(job_id)

    @_store_errors
    def get_job(self, job_id: str) -> dict | None:
        cursor = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        return None if row is None else _row_dict(cursor, row)

    @_store_errors
    def jobs(self, **equals) -> list[dict]:
        """Job rows, optionally filtered by column equality (e.g. task='clean', status='done')."""
        clauses = " AND ".join(f"{column} = ?" for column in equals)
        cursor = self.conn.execute(
            "SELECT * FROM jobs" + (f" WHERE {clauses}" if clauses else "") + " ORDER BY created_utc, id",
            tuple(equals.values()),
        )
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    @_store_errors
    def done_jobs(self) -> list[dict]:
        """Finished jobs in the order they finished.

        Jobs finished within the same second keep the order they were created in (SQLite's rowid), so 'the newest
        run of a cell' is well defined.
        """
        cursor = self.conn.execute(
            "SELECT * FROM jobs WHERE status = 'done' ORDER BY COALESCE(finished_utc, ''), rowid")
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    @_store_errors
    def done_batches(self, job_id: str) -> set[int]:
        return {b for (b,) in self.conn.execute("SELECT batch FROM batches WHERE job_id = ?", (job_id,))}

    @_store_errors
    def commit_batch(self, job_id: str, batch: int, rows: list[dict]) -> None:
        """Write one batch's per-example outcomes and its marker in a single transaction."""
        records = []
        for row in rows:
            extra = {k: v for k, v in row.items() if k not in ("idx", "label", "pred", "correct")}
            records.append((
                job_id, int(row["idx"]), _int_or_none(row.get("label")), _int_or_none(row.get("pred")),
                _int_or_none(row.get("correct")), canonical_json(extra) if extra else None,
            ))
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO outcomes (job_id, idx, label, pred, correct, extra) VALUES (?,?,?,?,?,?)",
                records,
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO batches (job_id, batch, size, committed_utc) VALUES (?,?,?,?)",
                (job_id, int(batch), len(records), utc_now()),
            )

    @_store_errors
    def finish_job(self, job_id: str, summary: dict) -> None:
        now = utc_now()
        with self.transaction():
            self.conn.execute(
                "UPDATE jobs SET status = 'done', summary = ?, finished_utc = ? WHERE id = ?",
                (canonical_json(summary), now, job_id),
            )
            self._end_attempt(job_id, "done", now)

    @_store_errors
    def end_attempt(self, job_id: str, status: str) -> None:
        """Close the running attempt as 'interrupted' or 'failed'; committed batches stay for the resume."""
        with self.transaction():
            self._end_attempt(job_id, status, utc_now())

    def _end_attempt(self, job_id: str, status: str, now: str) -> None:
        """Close this process's attempt (another process's live attempt on the same job is left to close itself)."""
        attempt = self._attempt.pop(job_id, None)
        if attempt is None:
            return
        self.conn.execute(
            "UPDATE attempts SET status = ?, ended_utc = ? WHERE job_id = ? AND attempt = ?",
            (status, now, job_id, attempt),
        )

    @_store_errors
    def record_result(self, key: dict, summary: dict, provenance: dict) -> dict:
        """Store a job that has no per-example outcomes (e.g. a profile): done in one step, reused when re-run."""
        job = self.open_job(key, total=0, batch_size=0, provenance=provenance)
        if job["status"] != "done":
            self.finish_job(job["id"], summary)
        return self.get_job(job["id"])

    @_store_errors
    def replace_result(self, key: dict, summary: dict, provenance: dict) -> dict:
        """Store a result without outcomes, replacing an earlier one with the same key (e.g. a new measurement)."""
        job_id = job_id_for(key)
        with self.transaction():
            for table in ("outcomes", "batches", "attempts"):
                self.conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            job = self.open_job(key, total=0, batch_size=0, provenance=provenance)
            self.finish_job(job_id, summary)
        return self.get_job(job["id"])

    @_store_errors
    def attempts(self, job_id: str) -> list[dict]:
        cursor = self.conn.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,))
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    @_store_errors
    def outcomes(self, job_id: str):
        """Per-example outcomes of a job as a pandas DataFrame ordered by idx, with extras as columns."""
        import pandas as pd

        rows = self.conn.execute(
            "SELECT idx, label, pred, correct, extra FROM outcomes WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        frame = pd.DataFrame(rows, columns=["idx", "label", "pred", "correct", "extra"])
        # One decode of all the rows' extras as a JSON array: the same objects as a json.loads per row, which took
        # most of a report's time on the study's 4 million outcomes.
        decoded = json.loads("[" + ",".join(e if e else "{}" for e in frame.pop("extra")) + "]")
        keys = list(decoded[0]) if decoded and isinstance(decoded[0], dict) else None
        if keys is not None and all(isinstance(d, dict) and list(d) == keys for d in decoded):
            # Every row has the same fields (as every task writes them): build the columns directly, which pandas
            # does far faster than from a list of dicts, with the same columns and dtypes.
            extras = pd.DataFrame({key: [d[key] for d in decoded] for key in keys}, index=frame.index)
        else:
            extras = pd.DataFrame(decoded, index=frame.index)
        return pd.concat([frame, extras], axis=1)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; nested use is a no-op."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.outer = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def _row_dict(cursor: sqlite3.Cursor, row: tuple) -> dict:
    record = {description[0]: value for description, value in zip(cursor.description, row, strict=True)}
    for field in ("settings", "summary", "provenance"):
        if isinstance(record.get(field), str):
            record[field] = json.loads(record[field])
    return record


def _int_or_none(value):
    return None if value is None else int(value)
