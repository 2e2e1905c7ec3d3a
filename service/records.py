"""The job store's schema and row types (plain data; no connection handling here)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("running", "cancelling")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    label TEXT,
    recipe TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    stage TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    error_type TEXT,
    error_message TEXT,
    worker TEXT,
    heartbeat_at REAL,
    cancel_requested_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    artifacts TEXT,
    log_events INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
"""


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    status: str
    label: str | None
    recipe: dict[str, Any]
    plan: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    stage: str | None
    step: int
    total: int
    message: str | None
    error_type: str | None
    error_message: str | None
    worker: str | None
    heartbeat_at: float | None
    cancel_requested_at: float | None
    attempts: int
    artifacts: list[dict[str, Any]] | None
    seq: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d.pop("log_events", None)
        for key in ("recipe", "plan", "artifacts"):
            d[key] = None if d[key] is None else json.loads(d[key])
        return cls(**d)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class EventRecord:
    seq: int
    at: float
    kind: str  # status | progress | log
    data: dict[str, Any]
