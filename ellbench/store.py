"""SQLite results store: jobs with a stable key and provenance, per-example outcomes committed per batch.

One job = one model x task entry x data set. Its id is the sha256 of its canonical key, so the same work asked
for twice maps to the same row: a finished job is reused and an interrupted one resumes from its committed batches.
Each batch is written in one transaction (WAL mode), so a killed process loses at most the batch in flight.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
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


class Store:
    """The results database of one output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        ensure_writable_dir(self.path.parent)
        try:
            self.conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=120000")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise EllbenchError(f"cannot open results store {self.path}: {exc}") from exc

    @classmethod
    def in_folder(cls, out_dir: str | Path) -> Store:
        return cls(Path(out_dir) / STORE_FILENAME)

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        return _Transaction(self.conn)

    # jobs -----------------------------------------------------------------------------------------------
    def open_job(self, key: dict, *, total: int, batch_size: int, provenance: dict) -> dict:
        """Create the job if new, start a new attempt, and return the job row (status 'done' if already finished)."""
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
                # An attempt still marked running belongs to a process that died without closing it (SIGKILL).
                self.conn.execute("UPDATE attempts SET status = 'abandoned' WHERE job_id = ? AND status = 'running'",
                                  (job_id,))
                attempt = self.conn.execute(
                    "SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts WHERE job_id = ?", (job_id,)
                ).fetchone()[0]
                self.conn.execute(
                    "INSERT INTO attempts (job_id, attempt, status, started_utc, provenance) VALUES (?,?,?,?,?)",
                    (job_id, attempt, "running", now, canonical_json(provenance)),
                )
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> dict | None:
        cursor = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        return None if row is None else _row_dict(cursor, row)

    def jobs(self, **equals) -> list[dict]:
        """Job rows, optionally filtered by column equality (e.g. task='clean', status='done')."""
        clauses = " AND ".join(f"{column} = ?" for column in equals)
        cursor = self.conn.execute(
            "SELECT * FROM jobs" + (f" WHERE {clauses}" if clauses else "") + " ORDER BY created_utc, id",
            tuple(equals.values()),
        )
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def done_jobs(self) -> list[dict]:
        """Finished jobs in the order they finished.

        Jobs finished within the same second keep the order they were created in (SQLite's rowid), so 'the newest
        run of a cell' is well defined.
        """
        cursor = self.conn.execute(
            "SELECT * FROM jobs WHERE status = 'done' ORDER BY COALESCE(finished_utc, ''), rowid")
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def done_batches(self, job_id: str) -> set[int]:
        return {b for (b,) in self.conn.execute("SELECT batch FROM batches WHERE job_id = ?", (job_id,))}

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

    def finish_job(self, job_id: str, summary: dict) -> None:
        now = utc_now()
        with self.transaction():
            self.conn.execute(
                "UPDATE jobs SET status = 'done', summary = ?, finished_utc = ? WHERE id = ?",
                (canonical_json(summary), now, job_id),
            )
            self._end_attempt(job_id, "done", now)

    def end_attempt(self, job_id: str, status: str) -> None:
        """Close the running attempt as 'interrupted' or 'failed'; committed batches stay for the resume."""
        with self.transaction():
            self._end_attempt(job_id, status, utc_now())

    def _end_attempt(self, job_id: str, status: str, now: str) -> None:
        self.conn.execute(
            "UPDATE attempts SET status = ?, ended_utc = ? WHERE job_id = ? AND status = 'running'",
            (status, now, job_id),
        )

    def record_result(self, key: dict, summary: dict, provenance: dict) -> dict:
        """Store a job that has no per-example outcomes (e.g. a profile): done in one step, reused when re-run."""
        job = self.open_job(key, total=0, batch_size=0, provenance=provenance)
        if job["status"] != "done":
            self.finish_job(job["id"], summary)
        return self.get_job(job["id"])

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

    def attempts(self, job_id: str) -> list[dict]:
        cursor = self.conn.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,))
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def outcomes(self, job_id: str):
        """Per-example outcomes of a job as a pandas DataFrame ordered by idx, with extras as columns."""
        import pandas as pd

        rows = self.conn.execute(
            "SELECT idx, label, pred, correct, extra FROM outcomes WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        frame = pd.DataFrame(rows, columns=["idx", "label", "pred", "correct", "extra"])
        extras = pd.DataFrame([json.loads(e) if e else {} for e in frame.pop("extra")], index=frame.index)
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
