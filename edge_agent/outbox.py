"""Durable SQLite outbox: every result is written here before it is published.

The outbox is what turns "published" into "delivered at least once": a message stays in the
file until the broker acknowledged it (PUBACK), so a broker outage, a crash or a power cut
replays it instead of losing it. Limits on bytes and age keep a long outage from filling the
disk; every message dropped by a limit is counted by reason, and the counts are stored in the
same file so a restart does not forget them.

In-flight marks live in memory only, on purpose: after a crash nothing is in flight any more,
so every stored message is sent again (consumers deduplicate on the payload's ``id``).

One process owns an outbox file at a time (an ``flock`` on ``<path>.lock``): two agents
sharing one outbox would publish each other's messages twice and fight over acks.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from edge_agent.contract.errors import GalaxyEdgeError

SCHEMA_VERSION = 1
Clock = Callable[[], float]  # Unix seconds; injectable so age limits test without sleeping
DROP_REASONS = ("bytes", "age")

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


class OutboxError(GalaxyEdgeError):
    """The outbox file cannot be opened, is locked by another process or is not an outbox."""


class PendingMessage(NamedTuple):
    """A message to store; a plain ``(topic, payload, qos, msg_id)`` tuple works as well."""

    topic: str
    payload: bytes
    qos: int
    msg_id: str


@dataclass(frozen=True)
class OutboxItem:
    """A stored message, as handed to the publisher (oldest first)."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    created_at: float


def _size(topic: str, payload: bytes) -> int:
    # What max_bytes bounds: the bytes that would go on the wire, not SQLite's page overhead.
    return len(payload) + len(topic.encode("utf-8"))


class Outbox:
    """Thread-safe durable queue of MQTT messages keyed by a caller-chosen ``msg_id``.

    One connection guarded by one lock: SQLite serialises writers anyway, and the calls are
    short (a put is one small transaction), so a lock is simpler than a connection per thread.
    """

    def __init__(
        self,
        path: Path | str,
        max_bytes: int,
        max_age_s: float,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise OutboxError(f"outbox max_bytes must be positive, got {max_bytes}")
        if max_age_s <= 0:
            raise OutboxError(f"outbox max_age_s must be positive, got {max_age_s}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self._clock: Clock = clock or time.time
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._lock_fd = self._acquire_file_lock()
        try:
            self._db = self._open(synchronous)
            self._total_bytes = int(
                self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0]
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    # ----------------------------------------------------------------- opening
    def _acquire_file_lock(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OutboxError(
                f"{self.path}: cannot create the outbox ({exc.strerror}); "
                "make its directory writable (systemd: StateDirectory=)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OutboxError(
                f"{self.path}: outbox is in use by another process; run one agent per outbox"
            ) from exc
        return fd

    def _open(self, synchronous: str) -> sqlite3.Connection:
        if synchronous not in ("FULL", "NORMAL"):
            raise OutboxError(f"outbox synchronous must be FULL or NORMAL, got {synchronous!r}")
        try:
            db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            # Durability, argued: with WAL, a commit has been write()n to the WAL file before
            # COMMIT returns, so it survives the death of this process (SIGKILL, OOM kill) with
            # either setting. NORMAL skips the fsync at commit, so a power cut or kernel panic
            # can lose the last commits; FULL fsyncs the WAL at every commit and survives that.
            # Edge devices lose power far more often than servers, and at-least-once is the
            # contract, so FULL is the default; the agent puts a whole batch in one transaction
            # (put_many), which keeps it to one fsync per batch. NORMAL is for hosts where the
            # disk's fsync cost matters more than the last second before a power cut.
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise OutboxError(
                    f"{self.path}: outbox schema version {row[0]}, this agent reads "
                    f"{SCHEMA_VERSION}; move the file away to start a new outbox"
                )
        except sqlite3.DatabaseError as exc:
            raise OutboxError(
                f"{self.path}: not a usable SQLite outbox ({exc}); move it away to start anew"
            ) from exc
        return db

    # ----------------------------------------------------------------- writing
    def put(self, topic: str, payload: bytes, qos: int = 1, *, msg_id: str) -> None:
        """Store one message; durable once this returns. A known ``msg_id`` is a no-op."""
        self.put_many([PendingMessage(topic, payload, qos, msg_id)])

    def put_many(self, items: Iterable[PendingMessage | tuple[str, bytes, int, str]]) -> None:
        """Store messages in one transaction (one fsync); known ``msg_id`` values are skipped."""
        rows = []
        for item in items:
            topic, payload, qos, msg_id = item
            if qos not in (0, 1, 2):
                raise OutboxError(f"message {msg_id}: qos must be 0, 1 or 2, got {qos}")
            if not topic or not msg_id:
                raise OutboxError("a message needs a non-empty topic and msg_id")
            rows.append((msg_id, topic, bytes(payload), qos, _size(topic, payload)))
        if not rows:
            return
        with self._lock:
            self._check_open()
            now = self._clock()
            with self._transaction("write"):
                for msg_id, topic, payload, qos, size in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO messages "
                        "(msg_id, topic, payload, qos, created_at, size) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (msg_id, topic, payload, qos, now, size),
                    )
                    self._total_bytes += size * cur.rowcount
                self._enforce_locked(now)

    def ack(self, msg_id: str) -> bool:
        """Delete a message the broker acknowledged; False when it was not stored (any more)."""
        return self.ack_many([msg_id]) == 1

    def ack_many(self, msg_ids: Iterable[str]) -> int:
        """Delete acknowledged messages in one transaction; returns how many were stored.

        The publisher batches the PUBACKs of one pump iteration here: with synchronous=FULL
        every commit is an fsync, and an ack lost to a power cut only costs a duplicate.
        """
        ids = list(msg_ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            self._in_flight.difference_update(ids)
            deleted = 0
            with self._transaction("ack"):
                for msg_id in ids:
                    row = self._db.execute(
                        "DELETE FROM messages WHERE msg_id = ? RETURNING size", (msg_id,)
                    ).fetchone()
                    if row is not None:
                        self._total_bytes -= int(row[0])
                        deleted += 1
            return deleted

    # ----------------------------------------------------------------- reading
    def take_unsent(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` oldest messages not in flight (expired ones are dropped first)."""
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            with self._transaction("limit"):
                self._enforce_locked(self._clock())
            # In-flight ids are few (bounded by the publisher's window): skip them in Python.
            cur = self._db.execute(
                "SELECT seq, msg_id, topic, payload, qos, created_at FROM messages ORDER BY seq"
            )
            out: list[OutboxItem] = []
            for seq, msg_id, topic, payload, qos, created_at in cur:
                if msg_id in self._in_flight:
                    continue
                out.append(OutboxItem(seq, msg_id, topic, bytes(payload), qos, created_at))
                if len(out) >= limit:
                    break
            cur.close()
            return out

    def mark_in_flight(self, msg_ids: Iterable[str]) -> None:
        """Hide messages from ``take_unsent`` until acked or released."""
        with self._lock:
            self._in_flight.update(msg_ids)

    def release_in_flight(self, msg_ids: Iterable[str] | None = None) -> int:
        """Make in-flight messages (all, or the given ones) eligible again; returns how many."""
        with self._lock:
            if msg_ids is None:
                released = len(self._in_flight)
                self._in_flight.clear()
                return released
            ids = set(msg_ids) & self._in_flight
            self._in_flight -= ids
            return len(ids)

    def in_flight_count(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def depth(self) -> int:
        """Messages stored, in flight included."""
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def bytes(self) -> int:
        """Topic plus payload bytes stored: the quantity ``max_bytes`` bounds."""
        with self._lock:
            return self._total_bytes

    def oldest_age_s(self) -> float | None:
        """Age of the oldest stored message (for stats), None when empty."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT MIN(created_at) FROM messages").fetchone()
            return None if row[0] is None else max(0.0, self._clock() - float(row[0]))

    def dropped(self) -> dict[str, int]:
        """Messages dropped by a limit since the file was created, by reason."""
        with self._lock:
            self._check_open()
            counts = dict.fromkeys(DROP_REASONS, 0)
            for reason, count in self._db.execute("SELECT reason, count FROM drops"):
                counts[reason] = int(count)
            return counts

    # ----------------------------------------------------------------- limits
    def enforce_limits(self) -> dict[str, int]:
        """Apply the age and bytes limits now; returns what this call dropped, by reason."""
        with self._lock:
            self._check_open()
            with self._transaction("limit"):
                dropped = self._enforce_locked(self._clock())
            return dropped

    def _enforce_locked(self, now: float) -> dict[str, int]:
        """Drop expired, then oldest-over-budget messages; in-flight ones are left alone.

        Runs inside the caller's transaction so the deletes and the drop counters commit
        together: a crash can neither lose a count nor count a message that is still there.
        In-flight messages are spared because their PUBACK is probably on its way.
        A clock that went backwards (no RTC before NTP) makes ages negative: never expired.
        """
        dropped = {"age": 0, "bytes": 0}
        cutoff = now - self.max_age_s
        expired = self._db.execute(
            "SELECT msg_id, size FROM messages WHERE created_at < ? ORDER BY seq", (cutoff,)
        ).fetchall()
        for msg_id, size in expired:
            if msg_id in self._in_flight:
                continue
            self._delete_locked(msg_id, int(size))
            dropped["age"] += 1
        if self._total_bytes > self.max_bytes:
            cur = self._db.execute("SELECT msg_id, size FROM messages ORDER BY seq")
            victims: list[tuple[str, int]] = []
            excess = self._total_bytes - self.max_bytes
            for msg_id, size in cur:
                if excess <= 0:
                    break
                if msg_id in self._in_flight:
                    continue
                victims.append((msg_id, int(size)))
                excess -= int(size)
            cur.close()
            for msg_id, size in victims:
                self._delete_locked(msg_id, size)
                dropped["bytes"] += 1
        for reason, count in dropped.items():
            if count:
                self._db.execute(
                    "INSERT INTO drops (reason, count) VALUES (?, ?) "
                    "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                    (reason, count),
                )
        return dropped

    def _delete_locked(self, msg_id: str, size: int) -> None:
        self._db.execute("DELETE FROM messages WHERE msg_id = ?", (msg_id,))
        self._total_bytes -= size

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT (caller holds the lock); a typed error when SQLite fails.

        After a failure the byte total is recounted from the file: the rolled-back statements
        had already adjusted it.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._total_bytes = self._sum_bytes_locked()
                raise
        except sqlite3.Error as exc:
            raise OutboxError(
                f"{self.path}: outbox {what} failed ({exc}); check the disk (space, errors)"
            ) from exc

    def _sum_bytes_locked(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0])

    # ----------------------------------------------------------------- closing
    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: outbox used after close()")

    def close(self) -> None:
        """Close the database and release the file lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._in_flight.clear()
            self._db.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
