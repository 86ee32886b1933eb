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

A full disk does not stop the agent here (the outbox, often on the same file system, is where
back-pressure happens): an end state (``done``, ``rejected``) the disk refuses is kept in memory,
answered by :meth:`Ledger.entry` and written at the next chance; a ``seen`` mark or a decode
count it refuses is skipped (its file is still offered at the next start, and the poison count
misses that decode). Both are logged, at most once a minute.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.outbox import is_disk_full

log = logging.getLogger(__name__)
_FULL_LOG_EVERY_S = 60.0
_RETRY_EVERY_S = 1.0


class LedgerError(GalaxyEdgeError):
    """The ledger database cannot be opened or written."""


@dataclass(frozen=True)
class FileKey:
    path: str  # as the file system named it (a name that is not UTF-8 holds surrogate escapes)
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        """The key of the directory entry itself (``lstat``: a link is not followed)."""
        st = os.lstat(path)
        return cls(str(path), st.st_size, st.st_mtime_ns)


# Linux names are bytes; a name that is not UTF-8 decodes with surrogate escapes, which SQLite
# (UTF-8 text) cannot store. Such a path is stored as its bytes in hex behind a marker that no
# path can start with (paths hold no NUL): reversible, and every other path is stored as is.
_BYTES_MARK = "\0fsbytes:"


def stored(path: str) -> str:
    """``path`` as the ledger stores it."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return _BYTES_MARK + os.fsencode(path).hex()
    return path


def unstored(text: str) -> str:
    """The file system's path of a stored one (the inverse of :func:`stored`)."""
    if text.startswith(_BYTES_MARK):
        return os.fsdecode(bytes.fromhex(text[len(_BYTES_MARK) :]))
    return text


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
        self._unwritten: dict[FileKey, str] = {}  # end states the full disk refused
        self._last_retry = 0.0
        self._full_logged_at: float | None = None
        self._full_skipped = 0

    def _write(self, what: str, write: Callable[[], object], end: dict[FileKey, str]) -> None:
        """Run ``write`` (caller holds the lock); on a full disk keep ``end`` states in memory."""
        self._retry_unwritten_locked()
        try:
            write()
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._unwritten.update(end)
            self._full_skipped += 1
            now = time.monotonic()
            if self._full_logged_at is None or now - self._full_logged_at >= _FULL_LOG_EVERY_S:
                self._full_logged_at = now
                log.error(
                    "%s: ledger %s failed (%s; %d writes refused so far); done marks are kept "
                    "in memory until there is room",
                    self.path,
                    what,
                    exc,
                    self._full_skipped,
                )

    def _retry_unwritten_locked(self, force: bool = False) -> None:
        if not self._unwritten:
            return
        now = time.monotonic()
        if not force and now - self._last_retry < _RETRY_EVERY_S:
            return
        self._last_retry = now
        pending = dict(self._unwritten)
        try:
            self._upsert_end_states(pending)
        except sqlite3.Error:
            return
        for key in pending:
            self._unwritten.pop(key, None)
        self._full_logged_at = None
        log.warning("%s: ledger writable again (%d end states written)", self.path, len(pending))

    def _upsert_end_states(self, states: dict[FileKey, str]) -> None:
        now = time.time()
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT INTO files (done_at, path, size, mtime_ns, state, seen_at) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?1) ON CONFLICT (path, size, mtime_ns) "
                "DO UPDATE SET state=excluded.state, done_at=excluded.done_at",
                [(now, stored(k.path), k.size, k.mtime_ns, state) for k, state in states.items()],
            )
        except sqlite3.Error:
            if self._db.in_transaction:  # SQLITE_FULL has rolled it back already
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
            if key in self._unwritten:
                return Entry(self._unwritten[key], 0)
            row = self._db.execute(
                "SELECT state, interrupted FROM files WHERE path=? AND size=? AND mtime_ns=?",
                (stored(key.path), key.size, key.mtime_ns),
            ).fetchone()
        return None if row is None else Entry(str(row[0]), int(row[1]))

    def state(self, key: FileKey) -> str | None:
        """``'seen'``, ``'done'``, ``'rejected'`` or ``None`` (never seen)."""
        entry = self.entry(key)
        return None if entry is None else entry.state

    def begin_decode(self, key: FileKey) -> None:
        """``key`` is about to be read and decoded (committed before the first byte is read)."""
        with self._lock:
            self._write(
                "decode count",
                lambda: self._db.execute(
                    "UPDATE files SET interrupted = interrupted + 1 "
                    "WHERE path=? AND size=? AND mtime_ns=? AND state='seen'",
                    (stored(key.path), key.size, key.mtime_ns),
                ),
                {},
            )

    def end_decode(self, key: FileKey) -> None:
        """Decoding ``key`` ended (a frame, or a rejection): the agent survived it."""
        with self._lock:
            self._write(
                "decode count",
                lambda: self._db.execute(
                    "UPDATE files SET interrupted = interrupted - 1 "
                    "WHERE path=? AND size=? AND mtime_ns=? AND interrupted > 0",
                    (stored(key.path), key.size, key.mtime_ns),
                ),
                {},
            )

    def mark_rejected(self, key: FileKey) -> None:
        """A rejected file that could not be quarantined: not retried until it changes."""
        with self._lock:
            self._write(
                "rejected mark",
                lambda: self._upsert_end_states({key: "rejected"}),
                {key: "rejected"},
            )

    def mark_seen(self, key: FileKey) -> None:
        """Record a picked-up file (no change when it is already recorded)."""
        with self._lock:
            self._write(
                "seen mark",
                lambda: self._db.execute(
                    "INSERT OR IGNORE INTO files (path, size, mtime_ns, state, seen_at) "
                    "VALUES (?, ?, ?, 'seen', ?)",
                    (stored(key.path), key.size, key.mtime_ns, time.time()),
                ),
                {},
            )

    def mark_done(self, keys: Iterable[FileKey]) -> None:
        """Mark files done, in one transaction."""
        states = dict.fromkeys(keys, "done")
        if not states:
            return
        with self._lock:
            self._write("done mark", lambda: self._upsert_end_states(states), states)

    def pending(self) -> list[FileKey]:
        """Files seen but not done (oldest first): what a crash left half-way."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns FROM files WHERE state='seen' ORDER BY seen_at"
            ).fetchall()
        return [FileKey(unstored(str(p)), int(s), int(m)) for p, s, m in rows]

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
                st = os.stat(unstored(path))
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
            self._retry_unwritten_locked(force=True)
            if self._unwritten:  # replayed at the next start: duplicates, with the same ids
                log.error(
                    "%s: %d done marks could not be written (disk full); those files are "
                    "classified again at the next start",
                    self.path,
                    len(self._unwritten),
                )
            self._db.close()
