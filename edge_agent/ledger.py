"""The input ledger: which watched files were seen and which are done, kept across restarts.

A file is keyed by (path, size, mtime): a file replaced in place under the same name is a new
input. ``seen`` is recorded when a file is picked up and ``done`` only after its result (or its
``errors`` message) is in the durable outbox, so a crash between the two replays the file on the
next start: at-least-once, with the stable classification id letting consumers deduplicate.
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
        st = Path(path).stat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('seen', 'done')),
    seen_at REAL NOT NULL,
    done_at REAL,
    PRIMARY KEY (path, size, mtime_ns)
)
"""


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
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"{self.path}: cannot open the ledger ({exc}); check state_dir"
            ) from exc
        self._lock = threading.Lock()

    def state(self, key: FileKey) -> str | None:
        """``'seen'``, ``'done'`` or ``None`` (never seen)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM files WHERE path=? AND size=? AND mtime_ns=?",
                (key.path, key.size, key.mtime_ns),
            ).fetchone()
        return None if row is None else str(row[0])

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
        """Delete done rows whose file is gone (or replaced), so the ledger does not grow for ever.

        A done file still in the folder keeps its row: forgetting it would classify it again
        at the next start. Returns how many rows were deleted.
        """
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns FROM files WHERE state='done' AND done_at < ?",
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
