"""The outbox's SQLite file: who owns it, its schema and version, and how it is opened.

One process owns an outbox file at a time (an ``flock`` on ``<path>.lock``): two agents
sharing one outbox would publish each other's messages twice and fight over acks.
The file is opened in WAL mode with ``auto_vacuum=INCREMENTAL``, its WAL kept smaller than the
full-disk reserve (:mod:`edge_agent.outbox_disk` says why).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from edge_agent.outbox_errors import OutboxError

# The outbox's messages keep the logger name they always had (docs/reliability.md quotes it).
log = logging.getLogger("edge_agent.outbox")

SCHEMA_VERSION = 1
_PAGE = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_created_at ON messages (created_at);
CREATE TABLE IF NOT EXISTS drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


def acquire_file_lock(path: Path) -> int:
    """Take ``<path>.lock`` (exclusive, non-blocking); returns its descriptor to close."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OutboxError(
            f"{path}: cannot create the outbox ({exc.strerror}); "
            "make its directory writable (systemd: StateDirectory=)"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise OutboxError(
            f"{path}: outbox is in use by another process; run one agent per outbox"
        ) from exc
    return fd


def open_database(path: Path, synchronous: str, reserve_bytes: int) -> sqlite3.Connection:
    """Open (or create) the outbox file: WAL, durability, schema checked or written."""
    if synchronous not in ("FULL", "NORMAL"):
        raise OutboxError(f"outbox synchronous must be FULL or NORMAL, got {synchronous!r}")
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        # Before the first table of a new file; an older file is converted below.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: SQLite refused WAL mode (got {mode})")
        # Durability, argued: with WAL, a commit has been write()n to the WAL file before
        # COMMIT returns, so it survives the death of this process (SIGKILL, OOM kill) with
        # either setting. NORMAL skips the fsync at commit, so a power cut or kernel panic
        # can lose the last commits; FULL fsyncs the WAL at every commit and survives that.
        # Edge devices lose power far more often than servers, and at-least-once is the
        # contract, so FULL is the default; the agent puts a whole batch in one transaction
        # (put_many), which keeps it to one fsync per batch. NORMAL is for hosts where the
        # disk's fsync cost matters more than the last second before a power cut.
        db.execute(f"PRAGMA synchronous={synchronous}")
        # Keep the WAL smaller than the reserve, so that a checkpoint (which copies the WAL
        # into the main file, growing it) fits in the space the reserve frees.
        wal_pages = max(16, min(1000, reserve_bytes // (2 * _PAGE)))
        db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={max(wal_pages * _PAGE, 64 * 1024)}")
        db.executescript(_SCHEMA)
        _convert_to_incremental_vacuum(db, path)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise OutboxError(
                f"{path}: outbox schema version {row[0]}, this agent reads "
                f"{SCHEMA_VERSION}; move the file away to start a new outbox"
            )
    except sqlite3.DatabaseError as exc:
        raise OutboxError(
            f"{path}: not a usable SQLite outbox ({exc}); move it away to start anew"
        ) from exc
    return db


def _convert_to_incremental_vacuum(db: sqlite3.Connection, path: Path) -> None:
    """An outbox made by an older agent has auto_vacuum off: VACUUM it once, if space allows."""
    if int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
    except sqlite3.Error as exc:
        log.warning(
            "%s: could not enable incremental vacuum (%s); the file will not shrink after "
            "an outage until it can",
            path,
            exc,
        )
