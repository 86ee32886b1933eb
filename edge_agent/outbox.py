"""Durable SQLite outbox: every result is written here before it is published.

The outbox is what turns "published" into "delivered at least once": a message stays in the
file until the broker acknowledged it (PUBACK), so a broker outage, a crash or a power cut
replays it instead of losing it. Limits on bytes and age keep a long outage from filling the
disk; every message dropped by a limit is counted by reason, and the counts are stored in the
same file so a restart does not forget them.

In-flight marks live in memory only, on purpose: after a crash nothing is in flight any more,
so every stored message is sent again (consumers deduplicate on the payload's ``id``).

This module holds the queue's operations; the file, its lock and schema are
:mod:`edge_agent.outbox_schema`'s, and what happens on a full disk (the reserve, deletes the
disk refuses, back-pressure) is :mod:`edge_agent.outbox_disk`'s.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from edge_agent.outbox_disk import (
    DELETE_CHUNK,
    RESERVE_BYTES,
    Clock,
    FullDiskHandling,
    OutboxHealth,
    is_disk_full,
)
from edge_agent.outbox_errors import OutboxError, OutboxFullError
from edge_agent.outbox_schema import SCHEMA_VERSION, acquire_file_lock, open_database

__all__ = [
    "DROP_REASONS",
    "RESERVE_BYTES",
    "SCHEMA_VERSION",
    "Clock",
    "Outbox",
    "OutboxError",
    "OutboxFullError",
    "OutboxHealth",
    "OutboxItem",
    "PendingMessage",
    "is_disk_full",
]

DROP_REASONS = ("bytes", "age")


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


class Outbox(FullDiskHandling):
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
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        if reserve_bytes < 0:
            raise OutboxError(f"outbox reserve_bytes must be >= 0, got {reserve_bytes}")
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
        self.reserve_bytes = int(reserve_bytes)
        self.reserve_path = Path(f"{self.path}.reserve")
        self._full_since: float | None = None
        self._full_error: str | None = None
        self._acked_unremoved: dict[str, int] = {}  # msg_id -> size
        self._last_delete_retry = 0.0
        self._lock_fd = acquire_file_lock(self.path)
        try:
            self._prepare_reserve()
            self._db = open_database(self.path, synchronous, self.reserve_bytes)
            self._total_bytes = int(
                self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0]
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

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
            if not self._leave_full_locked():
                raise OutboxFullError(
                    f"{self.path}: outbox file system full ({self._full_error}); "
                    "free space there or raise its size"
                )
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
            self._mark_writable_locked()

    def ack(self, msg_id: str) -> bool:
        """Delete a message the broker acknowledged; False when it was not stored (any more)."""
        return self.ack_many([msg_id]) == 1

    def ack_many(self, msg_ids: Iterable[str]) -> int:
        """Delete acknowledged messages in one transaction; returns how many were stored.

        The publisher batches the PUBACKs of one pump iteration here: with synchronous=FULL
        every commit is an fsync, and an ack lost to a power cut only costs a duplicate.
        A delete that the disk refuses is remembered and retried, never a reason to re-send:
        the message is delivered, whatever the file still says.
        """
        ids = list(dict.fromkeys(msg_ids))
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            self._in_flight.difference_update(ids)
            self._retry_deletes_locked()
            try:
                deleted = self._delete_locked_many(ids)
            except OutboxFullError:
                # _transaction released the reserve and checkpointed: small deletes fit now.
                deleted = 0
                for n in range(0, len(ids), DELETE_CHUNK):
                    chunk = ids[n : n + DELETE_CHUNK]
                    try:
                        deleted += self._delete_locked_many(chunk)
                    except OutboxError as exc:
                        return deleted + self._remember_acked_locked(ids[n:], exc)
            except OutboxError as exc:
                return self._remember_acked_locked(ids, exc)
            if self._full_since is None:
                self._give_back_space_locked()
            return deleted

    def _delete_locked_many(self, ids: list[str]) -> int:
        deleted = 0
        with self._transaction("ack"):
            for msg_id in ids:
                row = self._db.execute(
                    "DELETE FROM messages WHERE msg_id = ? RETURNING size", (msg_id,)
                ).fetchone()
                if row is not None:
                    self._total_bytes -= int(row[0])
                    deleted += 1
        for msg_id in ids:
            self._acked_unremoved.pop(msg_id, None)
        return deleted

    # ----------------------------------------------------------------- reading
    def take_unsent(self, limit: int, exclude_topics: Collection[str] = ()) -> list[OutboxItem]:
        """Up to ``limit`` oldest messages not in flight (expired ones are dropped first).

        ``exclude_topics``: topics the broker currently refuses (the publisher backs off them).
        """
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            self._retry_deletes_locked()
            try:
                with self._transaction("limit"):
                    self._enforce_locked(self._clock())
            except OutboxFullError:
                pass  # limits wait for space; delivering what is stored is what frees it
            # In-flight ids are few (bounded by the publisher's window): skip them in Python,
            # with the acknowledged ones whose delete is pending (as few: the same window).
            cur = self._db.execute(
                "SELECT seq, msg_id, topic, payload, qos, created_at FROM messages ORDER BY seq"
            )
            out: list[OutboxItem] = []
            for seq, msg_id, topic, payload, qos, created_at in cur:
                if msg_id in self._in_flight or msg_id in self._acked_unremoved:
                    continue
                if exclude_topics and topic in exclude_topics:
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
        """Messages stored and not yet acknowledged, in flight included."""
        with self._lock:
            self._check_open()
            stored = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            return stored - len(self._acked_unremoved)

    def bytes(self) -> int:
        """Topic plus payload bytes stored: the quantity ``max_bytes`` bounds."""
        with self._lock:
            return self._total_bytes - sum(self._acked_unremoved.values())

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
            if msg_id in self._in_flight or msg_id in self._acked_unremoved:
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
                if msg_id in self._in_flight or msg_id in self._acked_unremoved:
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
            if is_disk_full(exc):
                self._enter_full(f"{what}: {exc}")
                raise OutboxFullError(
                    f"{self.path}: outbox {what} failed ({exc}); free space on its file system"
                ) from exc
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
            self._retry_deletes_locked(force=True)
            self._db.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
