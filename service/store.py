"""SQLite job store (WAL mode): jobs, their event log and idempotency keys.

The API process and every worker open their own connections (one per thread). State changes are
guarded UPDATEs (``... WHERE status IN (...)``), so a cancel racing a worker resolves to exactly one
outcome, and each change appends its event in the same transaction: a reader that sees a terminal
status also sees the terminal event.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.records import ACTIVE, SCHEMA, TERMINAL, EventRecord, JobRecord

_TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in TERMINAL) + ")"
_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"
STALE_RESERVATION_S = 120.0  # an idempotency reservation left by a crashed request expires


class KeyInFlight(Exception):
    """The Idempotency-Key belongs to a request that is still being processed."""


class KeyReused(Exception):
    """The Idempotency-Key was already used with a different request body."""


class JobStore:
    """All job state. Safe to share between threads: each thread gets its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    # --- connections and transactions -------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _event(conn: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO events (job_id, seq, at, kind, data) "
            "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM events WHERE job_id = ?",
            (job_id, time.time(), kind, json.dumps(data), job_id),
        )

    # --- idempotency --------------------------------------------------------------------------
    def reserve_key(self, owner: str, key: str, request_hash: str) -> str | None:
        """Reserve ``key`` for a new request, or return the job an identical request created.

        Raises:
            KeyInFlight: an identical request with this key is still being processed.
            KeyReused: the key was used with a different body.
        """
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT request_hash, job_id, created_at FROM idempotency WHERE owner = ? AND key = ?",
                (owner, key),
            ).fetchone()
            if row is None or (
                row["job_id"] is None and now - row["created_at"] > STALE_RESERVATION_S
            ):
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (owner, key, request_hash, job_id, created_at) VALUES (?, ?, ?, NULL, ?)",
                    (owner, key, request_hash, now),
                )
                return None
        if row["request_hash"] != request_hash:
            raise KeyReused(key)
        if row["job_id"] is None:
            raise KeyInFlight(key)
        return str(row["job_id"])

    def release_key(self, owner: str, key: str) -> None:
        """Drop a reservation whose request failed (the client may retry with the same key)."""
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM idempotency WHERE owner = ? AND key = ? AND job_id IS NULL",
                (owner, key),
            )

    # --- API side -----------------------------------------------------------------------------
    def create(
        self,
        *,
        owner: str,
        recipe: dict[str, Any],
        plan: dict[str, Any],
        label: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO jobs (id, owner, status, label, recipe, plan, created_at, updated_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, owner, label, json.dumps(recipe), json.dumps(plan), now, now),
            )
            self._event(conn, job_id, "status", {"status": "queued"})
            if idempotency_key is not None:
                conn.execute(
                    "UPDATE idempotency SET job_id = ? WHERE owner = ? AND key = ?",
                    (job_id, owner, idempotency_key),
                )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        return JobRecord.from_row(row)

    def status(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row["status"])

    def jobs(
        self, owner: str, statuses: Sequence[str] = (), limit: int = 50, before: int | None = None
    ) -> list[JobRecord]:
        """``owner``'s jobs, newest first; ``before`` is the ``seq`` cursor of the previous page."""
        sql = "SELECT * FROM jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        if before is not None:
            sql += " AND seq < ?"
            args.append(before)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [JobRecord.from_row(r) for r in self._conn().execute(sql, args)]

    def request_cancel(self, job_id: str, owner: str) -> JobRecord | None:
        """queued → cancelled at once; running → cancelling (the worker stops between layers)."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)
            ).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?, updated_at = ?, cancel_requested_at = ? WHERE id = ?",
                    (now, now, now, job_id),
                )
                self._event(conn, job_id, "status", {"status": "cancelled"})
            elif row["status"] == "running":
                conn.execute(
                    "UPDATE jobs SET status = 'cancelling', updated_at = ?, cancel_requested_at = ? WHERE id = ?",
                    (now, now, job_id),
                )
                self._event(conn, job_id, "status", {"status": "cancelling"})
        return self.get(job_id)

    def delete(self, job_id: str, owner: str) -> bool:
        """Remove a terminal job's rows (the caller removes its files)."""
        with self._tx() as conn:
            cur = conn.execute(
                f"DELETE FROM jobs WHERE id = ? AND owner = ? AND status IN {_TERMINAL_SQL}",
                (job_id, owner),
            )
            if cur.rowcount == 0:
                return False
            conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
        return True

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[EventRecord]:
        rows = self._conn().execute(
            "SELECT seq, at, kind, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        return [EventRecord(r["seq"], r["at"], r["kind"], json.loads(r["data"])) for r in rows]

    # --- worker side --------------------------------------------------------------------------
    def claim(self, worker: str) -> JobRecord | None:
        """Take the oldest queued job (atomically: two workers never get the same one)."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = 'running', worker = ?, started_at = ?, updated_at = ?, heartbeat_at = ?, "
                "attempts = attempts + 1, stage = NULL, step = 0, total = 0, message = NULL "
                "WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1) RETURNING id",
                (worker, now, now, now),
            ).fetchone()
            if row is None:
                return None
            self._event(conn, row["id"], "status", {"status": "running"})
        return self.get(row["id"])

    def heartbeat(self, job_id: str, worker: str) -> None:
        with self._tx() as conn:
            conn.execute(
                f"UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status IN {_ACTIVE_SQL}",
                (time.time(), job_id, worker),
            )

    def progress(
        self, job_id: str, worker: str, stage: str, step: int, total: int, message: str
    ) -> str | None:
        """Record progress; returns the job's status (a worker sees 'cancelling' here)."""
        now = time.time()
        fraction = step / total if total else 0.0
        with self._tx() as conn:
            row = conn.execute(
                f"UPDATE jobs SET stage = ?, step = ?, total = ?, message = ?, updated_at = ?, heartbeat_at = ? "
                f"WHERE id = ? AND worker = ? AND status IN {_ACTIVE_SQL} RETURNING status",
                (stage, step, total, message, now, now, job_id, worker),
            ).fetchone()
            if row is None:
                return self.status(job_id)
            data = {
                "stage": stage,
                "step": step,
                "total": total,
                "fraction": fraction,
                "message": message,
            }
            self._event(conn, job_id, "progress", data)
        return str(row["status"])

    def log(self, job_id: str, worker: str, data: dict[str, Any], cap: int) -> None:
        """Append a log-line event, at most ``cap`` per job."""
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET log_events = log_events + 1 WHERE id = ? AND worker = ? AND status IN {_ACTIVE_SQL} "
                "AND log_events < ?",
                (job_id, worker, cap),
            )
            if cur.rowcount:
                self._event(conn, job_id, "log", data)

    def finish(
        self,
        job_id: str,
        worker: str,
        status: str,
        *,
        error: tuple[str, str] | None = None,
        artifacts: list[dict[str, Any]] | None = None,
    ) -> bool:
        """running/cancelling → ``status`` (succeeded | failed | cancelled); False if no longer ours."""
        assert status in TERMINAL
        now = time.time()
        etype, emsg = error or (None, None)
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, error_type = ?, error_message = ?, "
                f"artifacts = ? WHERE id = ? AND worker = ? AND status IN {_ACTIVE_SQL}",
                (
                    status,
                    now,
                    now,
                    etype,
                    emsg,
                    None if artifacts is None else json.dumps(artifacts),
                    job_id,
                    worker,
                ),
            )
            if cur.rowcount == 0:
                return False
            data: dict[str, Any] = {"status": status}
            if error is not None:
                data["error"] = {"type": etype, "message": emsg}
            self._event(conn, job_id, "status", data)
        return True

    def requeue(self, job_id: str, worker: str, reason: str) -> bool:
        """Give an interrupted job back to the queue (a cancelling one becomes cancelled)."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT status FROM jobs WHERE id = ? AND worker = ? AND status IN {_ACTIVE_SQL}",
                (job_id, worker),
            ).fetchone()
            if row is None:
                return False
            new = "queued" if row["status"] == "running" else "cancelled"
            conn.execute(
                "UPDATE jobs SET status = ?, worker = NULL, heartbeat_at = NULL, started_at = NULL, updated_at = ?, "
                "finished_at = ?, stage = NULL, step = 0, total = 0, message = NULL WHERE id = ?",
                (new, now, None if new == "queued" else now, job_id),
            )
            self._event(conn, job_id, "status", {"status": new, "reason": reason})
        return True

    def reap(
        self, *, workers: Sequence[str] = (), stale_after: float | None = None, reason: str
    ) -> list[str]:
        """Fail the active jobs of dead ``workers`` (or with a heartbeat older than ``stale_after``).

        A job that was being cancelled becomes cancelled; any other one failed with WorkerLost.
        Returns the ids of the reaped jobs (the caller removes their files).
        """
        clauses: list[str] = []
        args: list[Any] = []
        if workers:
            clauses.append(f"worker IN ({','.join('?' * len(workers))})")
            args += list(workers)
        if stale_after is not None:
            clauses.append("heartbeat_at < ?")
            args.append(time.time() - stale_after)
        if not clauses:
            return []
        now = time.time()
        reaped = []
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT id, status, stage FROM jobs WHERE status IN {_ACTIVE_SQL} AND ({' OR '.join(clauses)})",
                args,
            ).fetchall()
            for row in rows:
                if row["status"] == "cancelling":
                    new, error = "cancelled", None
                else:
                    new, error = (
                        "failed",
                        {
                            "type": "WorkerLost",
                            "message": f"{reason} (during stage {row['stage']})",
                        },
                    )
                conn.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, error_type = ?, error_message = ? WHERE id = ?",
                    (new, now, now, error and error["type"], error and error["message"], row["id"]),
                )
                self._event(
                    conn,
                    row["id"],
                    "status",
                    {"status": new, **({"error": error} if error else {})},
                )
                reaped.append(str(row["id"]))
        return reaped

    def overdue_cancels(self, workers: Sequence[str], grace: float) -> list[str]:
        """Workers among ``workers`` whose job has been cancelling for longer than ``grace``."""
        if not workers:
            return []
        rows = self._conn().execute(
            f"SELECT worker FROM jobs WHERE status = 'cancelling' AND cancel_requested_at < ? "
            f"AND worker IN ({','.join('?' * len(workers))})",
            [time.time() - grace, *workers],
        )
        return [str(r["worker"]) for r in rows]
