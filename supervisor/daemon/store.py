"""The daemon's durable state in SQLite (WAL): nodes, jobs, and the event history.

Writes are batched: the daemon calls `save` about once a second with the nodes that
changed and the events logged since, in one transaction. A write that fails (disk full,
read-only filesystem) raises `StoreError`; the daemon keeps the batch and tries again,
so nothing is dropped while the disk is full, and keeps serving from memory meanwhile.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import msgspec
import structlog

from supervisor.core.jobs import JobRecord
from supervisor.core.nodes import NodeRecord

log = structlog.get_logger()

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    accelerator TEXT NOT NULL,
    last_seen   REAL NOT NULL,
    record      TEXT NOT NULL          -- NodeRecord as JSON
);
CREATE TABLE IF NOT EXISTS jobs (
    job         TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    policy      TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL NOT NULL,
    event       TEXT NOT NULL,
    node        TEXT,
    job         TEXT,
    fields      TEXT NOT NULL          -- JSON object
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job, seq);
CREATE INDEX IF NOT EXISTS events_by_node ON events (node, seq);
"""


class StoreError(Exception):
    pass


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """SQLITE_NOTADB or SQLITE_CORRUPT: the file is not (or no longer) a database."""
    text = str(exc)
    return "not a database" in text or "malformed" in text or getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_NOTADB", "SQLITE_CORRUPT")


def _corrupt_message(path: Path, exc: sqlite3.DatabaseError) -> str:
    return (
        f"the state database {path} is damaged or not an SQLite database ({exc}). Move it aside "
        f"with its -wal and -shm files (mv {path} {path}.broken) and start the daemon again: it "
        "rebuilds its node table as agents re-register; the events stored in it are lost "
        "(keep the moved file for a post-mortem)"
    )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power loss may drop the last transactions, never corrupt.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=2000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer trainguard (schema {version}, this one "
                    f"understands {SCHEMA_VERSION}); refusing to touch it"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if _corrupt(exc):
                raise StoreError(_corrupt_message(path, exc)) from exc
            raise StoreError(f"cannot open state database {path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc

    def load_nodes(self) -> list[NodeRecord]:
        """The nodes last saved. A row that cannot be read (written by another version,
        or damaged) is left out and logged as `store.row_unreadable`, never skipped in
        silence: that node is unknown until its agent registers again."""
        records = []
        try:
            rows = self._db.execute("SELECT node, record, last_seen FROM nodes ORDER BY node").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_corrupt_message(self.path, exc) if _corrupt(exc) else f"cannot read {self.path}: {exc}") from exc
        for node, text, last_seen in rows:
            try:
                record = msgspec.json.decode(text, type=NodeRecord)
                if record.node != node:
                    raise ValueError(f"the row for {node!r} holds the record of {record.node!r}")
                if not isinstance(last_seen, (int, float)):
                    raise ValueError(f"last_seen is {type(last_seen).__name__}, not a time")
            except (msgspec.MsgspecError, ValueError, TypeError) as exc:
                log.warning("store.row_unreadable", file=str(self.path), node=str(node), error=str(exc),
                            action="the node is left out until its agent registers again, which rewrites the row")
                continue
            record.last_seen = max(record.last_seen, last_seen)
            records.append(record)
        return records

    def load_jobs(self) -> list[JobRecord]:
        """The jobs last saved; an unreadable row is logged (`store.row_unreadable`)."""
        try:
            rows = self._db.execute("SELECT job, record FROM jobs ORDER BY created_at").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_corrupt_message(self.path, exc) if _corrupt(exc) else f"cannot read {self.path}: {exc}") from exc
        records = []
        for job, text in rows:
            try:
                records.append(msgspec.json.decode(text, type=JobRecord))
            except (msgspec.MsgspecError, ValueError, TypeError) as exc:
                log.warning("store.row_unreadable", file=str(self.path), job=str(job), error=str(exc),
                            action="the job is left out: its ranks, if any, are not adopted; resubmit it")
        return records

    def query_events(self, job: str | None = None, node: str | None = None, since: float | None = None,
                     after: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored events, oldest first, each with its `seq` (for following)."""
        clauses, args = [], []
        for column, value, op in (("job", job, "="), ("node", node, "="), ("ts", since, ">="), ("seq", after, ">")):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if after is not None else "DESC"
        try:
            rows = self._db.execute(f"SELECT seq, ts, event, fields FROM events {where} ORDER BY seq {order} LIMIT ?",
                                    (*args, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read events from {self.path}: {exc}") from exc
        if order == "DESC":
            rows.reverse()
        out = []
        for seq, ts, name, fields in rows:
            try:
                data = json.loads(fields)
            except ValueError:
                data = {"unreadable": True}
            out.append({"seq": seq, "ts": ts, "event": name, **(data if isinstance(data, dict) else {})})
        return out

    def save(
        self,
        nodes: Iterable[NodeRecord],
        events: Iterable[tuple[float, str, dict[str, Any]]],
        seen: Iterable[tuple[str, float]] = (),
        deleted: Iterable[str] = (),
        jobs: Iterable[JobRecord] = (),
    ) -> None:
        """One transaction: upsert `nodes`, append `events` (ts, name, fields), bump the
        last_seen time of the (node, time) pairs in `seen` (heartbeats: no rewrite of the
        whole record), and delete the `deleted` nodes. Raises only StoreError."""
        seen_rows = [(ts, node) for node, ts in seen]
        delete_rows = [(node,) for node in deleted]
        node_rows = [
            (r.node, r.state.value, r.accelerator.value, r.last_seen, msgspec.json.encode(r).decode())
            for r in nodes
        ]
        event_rows = [
            (ts, name, _text(fields.get("node")), _text(fields.get("job")), _event_json(name, fields))
            for ts, name, fields in events
        ]
        job_rows = [
            (r.id, r.state.value, r.spec.policy, r.submitted_at, r.state_since, msgspec.json.encode(r).decode())
            for r in jobs
        ]
        if not node_rows and not event_rows and not seen_rows and not delete_rows and not job_rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO nodes (node, state, accelerator, last_seen, record) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(node) DO UPDATE SET state=excluded.state, "
                    "accelerator=excluded.accelerator, last_seen=excluded.last_seen, record=excluded.record",
                    node_rows,
                )
                self._db.executemany("UPDATE nodes SET last_seen=? WHERE node=?", seen_rows)
                self._db.executemany("DELETE FROM nodes WHERE node=?", delete_rows)
                self._db.executemany(
                    "INSERT INTO jobs (job, state, policy, created_at, updated_at, record) VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT(job) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at, "
                    "record=excluded.record",
                    job_rows,
                )
                self._db.executemany(
                    "INSERT INTO events (ts, event, node, job, fields) VALUES (?,?,?,?,?)", event_rows
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    def delete_node(self, node: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM nodes WHERE node=?", (node,))

    def events(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT ts, event, fields FROM events ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [{"ts": ts, "event": name, **json.loads(fields)} for ts, name, fields in reversed(rows)]

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection, for SQL the store does not offer (tests set per-connection
        PRAGMAs through it)."""
        return self._db


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _event_json(name: str, fields: dict[str, Any]) -> str:
    """An event's fields as JSON, whatever they hold: a value JSON cannot carry (a
    non-string key, NaN) is written as text, never an exception that would stop the
    daemon's flush and lose the events around it."""
    try:
        return json.dumps(fields, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_json_safe(fields), default=str, allow_nan=False)


def _json_safe(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return repr(value)[:200]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
