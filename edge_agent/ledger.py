"""The input ledger: which watched files were seen and which are done, kept across restarts.

A file is keyed by (path, size, mtime): a file replaced in place under the same name is a new
input. ``seen`` is recorded when a file is picked up and ``done`` only after its result (or its
``errors`` message) is in the durable outbox, so a crash between the two replays the file on the
next start: at-least-once, with the stable classification id letting consumers deduplicate.
A file's ``interrupted`` count goes up when the pipeline begins to decode it (committed before
the first byte is read) and down again when decoding ends, whatever the outcome: what is left at
the next start counts the decodes the agent died in, so a file that keeps killing the agent is
recognised (frames merely queued or batched when an operator stops the agent do not count).
``rejected`` is the end state of a file that was rejected but could not be quarantined (left in
place, not retried until it changes).
SQLite in WAL mode, one connection shared by the threads behind a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.errors import GalaxyEdgeError


class LedgerError(GalaxyEdgeError):
    """The ledger database cannot be opened or written."""


@dataclass(frozen=True)
class FileKey:
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        """The key of the directory entry itself (``lstat``: a link is not followed)."""
        st = os.lstat(path)
        return cls(str(path), st.st_size, st.st_mtime_ns)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('seen', 'done', 'rejected')),
    seen_at REAL NOT NULL,
    done_at REAL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (path, size, mtime_ns)
)
"""
SCHEMA_VERSION = 1
# Version 0 (before interrupted decodes were counted) had no interrupted column and no 'rejected' state: the
# table is rebuilt once, keeping its rows.
_MIGRATE_0_TO_1 = (
    "ALTER TABLE files RENAME TO files_v0",
    _SCHEMA,
    "INSERT INTO files (path, size, mtime_ns, state, seen_at, done_at) "
    "SELECT path, size, mtime_ns, state, seen_at, done_at FROM files_v0",
    "DROP TABLE files_v0",
)


@dataclass(frozen=True)
class Entry:
    """What the ledger knows of one file: its state, and how many decodes of it never ended
    (the agent died while decoding it)."""

    state: str
    interrupted: int


class Ledger:
    """Seen/done states of watched files in a SQLite file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"{self.path}: cannot open the ledger ({exc}); check state_dir"
            ) from exc
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='files'"
        ).fetchone()
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {version} is newer than this agent's "
                f"{SCHEMA_VERSION}; upgrade the agent or move the ledger away"
            )
        if version == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if exists:
                for statement in _MIGRATE_0_TO_1:
                    self._db.execute(statement)
            else:
                self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def entry(self, key: FileKey) -> Entry | None:
        """The file's state and interrupted decodes, or ``None`` when it was never seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, interrupted FROM files WHERE path=? AND size=? AND mtime_ns=?",
                (key.path, key.size, key.mtime_ns),
            ).fetchone()
        return None if row is None else Entry(str(row[0]), int(row[1]))

    def state(self, key: FileKey) -> str | None:
        """``'seen'``, ``'done'``, ``'rejected'`` or ``None`` (never seen)."""
        entry = self.entry(key)
        return None if entry is None else entry.state

    def begin_decode(self, key: FileKey) -> None:
        """``key`` is about to be read and decoded (committed before the first byte is read)."""
        with self._lock:
            self._db.execute(
                "UPDATE files SET interrupted = interrupted + 1 "
                "WHERE path=? AND size=? AND mtime_ns=? AND state='seen'",
                (key.path, key.size, key.mtime_ns),
            )

    def end_decode(self, key: FileKey) -> None:
        """Decoding ``key`` ended (a frame, or a rejection): the agent survived it."""
        with self._lock:
            self._db.execute(
                "UPDATE files SET interrupted = interrupted - 1 "
                "WHERE path=? AND size=? AND mtime_ns=? AND interrupted > 0",
                (key.path, key.size, key.mtime_ns),
            )

    def mark_rejected(self, key: FileKey) -> None:
        """A rejected file that could not be quarantined: not retried until it changes."""
        with self._lock:
            self._db.execute(
                "INSERT INTO files (done_at, path, size, mtime_ns, state, seen_at) "
                "VALUES (?1, ?2, ?3, ?4, 'rejected', ?1) ON CONFLICT (path, size, mtime_ns) "
                "DO UPDATE SET state='rejected', done_at=excluded.done_at",
                (time.time(), key.path, key.size, key.mtime_ns),
            )

    def mark_seen(self, key: FileKey) -> None:
        """Record a picked-up file (no change when it is already recorded)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO files (path, size, mtime_ns, state, seen_at) "
                "VALUES (?, ?, ?, 'seen', ?)",
                (key.path, key.size, key.mtime_ns, time.time()),
            )

    def mark_done(self, keys: Iterable[FileKey]) -> None:
        """Mark files done, in one transaction."""
        rows = [(time.time(), k.path, k.size, k.mtime_ns) for k in keys]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO files (done_at, path, size, mtime_ns, state, seen_at) "
                    "VALUES (?1, ?2, ?3, ?4, 'done', ?1) ON CONFLICT (path, size, mtime_ns) "
                    "DO UPDATE SET state='done', done_at=excluded.done_at",
                    rows,
                )
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def pending(self) -> list[FileKey]:
        """Files seen but not done (oldest first): what a crash left half-way."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns FROM files WHERE state='seen' ORDER BY seen_at"
            ).fetchall()
        return [FileKey(str(p), int(s), int(m)) for p, s, m in rows]

    def forget_gone(self, older_than_s: float = 86400.0) -> int:
        """Delete done (or rejected) rows whose file is gone or replaced: a ledger that stays small.

        A done file still in the folder keeps its row: forgetting it would classify it again
        at the next start. Returns how many rows were deleted.
        """
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns FROM files "
                "WHERE state IN ('done', 'rejected') AND done_at < ?",
                (cutoff,),
            ).fetchall()
        gone = []
        for path, size, mtime_ns in rows:
            try:
                st = os.stat(path)
                if st.st_size == size and st.st_mtime_ns == mtime_ns:
                    continue
            except OSError:
                pass
            gone.append((path, size, mtime_ns))
        with self._lock:
            self._db.executemany("DELETE FROM files WHERE path=? AND size=? AND mtime_ns=?", gone)
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()
