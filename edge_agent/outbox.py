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

A full file system is a state, not a crash (see :class:`OutboxFullError`). SQLite in WAL mode
needs free space for *every* write, deletes included: a DELETE appends pages to the WAL, and a
checkpoint copies them into the main file. A disk filled by our own puts would therefore also
refuse the deletes of acknowledged messages, and the publisher would re-send them for ever.
Three measures keep deliveries going on a full disk:

* a reserve file (``<path>.reserve``, ``reserve_bytes``) is set aside while there is space and
  deleted at the first ``SQLITE_FULL``: the space it frees is for deletes and checkpoints only,
  because puts are refused until the reserve could be set aside again (the pipeline waits:
  back-pressure). The WAL is kept smaller than the reserve (``wal_autocheckpoint``,
  ``journal_size_limit``), so a checkpoint always fits in it.
* ``auto_vacuum=INCREMENTAL``: pages freed by deletes go back to the file system, so an outbox
  that filled the disk during an outage gives the space back as it drains.
* an acknowledged message whose delete still fails is remembered in memory, skipped by
  :meth:`Outbox.take_unsent` and deleted later: never re-sent while the process lives.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from edge_agent.contract.errors import GalaxyEdgeError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESERVE_BYTES = 4 * 1024 * 1024  # default; see the module docstring
_PAGE = 4096
_SQLITE_FULL = 13
_RETRY_DELETES_EVERY_S = 1.0
_VACUUM_ABOVE_PAGES = 256  # free pages worth giving back to the file system (1 MiB)
_VACUUM_STEP_PAGES = 64
# Deletes on a full disk go in small transactions: each rewrites its pages into the WAL, and
# after a checkpoint the WAL is reused in place, so small ones fit where one big one would not.
_DELETE_CHUNK = 16
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


class OutboxFullError(OutboxError):
    """The outbox's file system is full: nothing was stored; try again later (back-pressure)."""


@dataclass(frozen=True)
class OutboxHealth:
    """What ``stats`` reports about the outbox's disk."""

    full_since: float | None  # Unix time the file system was found full; None when writable
    error: str | None  # the last write error while full
    acked_unremoved: int  # acknowledged messages whose delete is still pending (not re-sent)
    reserve_in_place: bool  # the reserve file is set aside (False while full, or disabled)

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def as_stats(self) -> dict[str, object]:
        """The ``stats`` payload's ``outbox`` fields (``full_since`` in Unix seconds)."""
        return {
            "full": self.full,
            "full_since": self.full_since,
            "error": self.error,
            "acked_unremoved": self.acked_unremoved,
        }


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 1 << 62  # cannot tell: let the write itself find out
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException) -> bool:
    """Whether an ``sqlite3`` error is SQLITE_FULL (Python 3.10 has no ``sqlite_errorcode``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == _SQLITE_FULL
    return "database or disk is full" in str(exc)


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
        self._lock_fd = self._acquire_file_lock()
        try:
            self._prepare_reserve()
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
            # Before the first table of a new file; an older file is converted below.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
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
            # Keep the WAL smaller than the reserve, so that a checkpoint (which copies the WAL
            # into the main file, growing it) fits in the space the reserve frees.
            wal_pages = max(16, min(1000, self.reserve_bytes // (2 * _PAGE)))
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            db.execute(f"PRAGMA journal_size_limit={max(wal_pages * _PAGE, 64 * 1024)}")
            db.executescript(_SCHEMA)
            self._convert_to_incremental_vacuum(db)
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

    def _convert_to_incremental_vacuum(self, db: sqlite3.Connection) -> None:
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
                self.path,
                exc,
            )

    # ----------------------------------------------------------------- full disk
    def _prepare_reserve(self) -> None:
        """At open: set the reserve aside, or start in the full state when there is no room."""
        if self.reserve_bytes == 0:
            self._drop_reserve()
            return
        # A reserve already in place on a file system with less than that free: the disk filled
        # while we were away. Give the space to SQLite (opening may need it) and start "full".
        if _free_bytes(self.path.parent) < self.reserve_bytes and self._reserve_in_place():
            self._drop_reserve()
            self._enter_full("file system full at start")
        elif not self._make_reserve():
            self._enter_full("no room for the outbox's reserve at start")

    def _reserve_in_place(self) -> bool:
        try:
            return self.reserve_bytes > 0 and self.reserve_path.stat().st_size >= self.reserve_bytes
        except OSError:
            return False

    def _make_reserve(self) -> bool:
        """Set ``reserve_bytes`` aside on disk; False (and nothing left behind) when it does not fit."""
        if self.reserve_bytes == 0 or self._reserve_in_place():
            return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                # No fallocate (some file systems): write real blocks instead.
                chunk = bytes(64 * 1024)
                for offset in range(0, self.reserve_bytes, len(chunk)):
                    os.pwrite(fd, chunk[: self.reserve_bytes - offset], offset)
            os.fsync(fd)
            return True
        except OSError:
            os.close(fd)
            fd = -1
            self._drop_reserve()
            return False
        finally:
            if fd >= 0:
                os.close(fd)

    def _drop_reserve(self) -> None:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("%s: cannot delete the outbox reserve (%s)", self.reserve_path, exc)

    def _enter_full(self, why: str) -> None:
        """The file system is full: free the reserve for deletes and checkpoints."""
        self._full_error = why
        had_reserve = self._reserve_in_place()
        self._drop_reserve()  # also when a put tried again too early and filled it anew
        if hasattr(self, "_db"):
            # Now, while the freed space is still ours: later deletes then reuse the WAL file
            # in place even if something else fills the disk again.
            self._checkpoint_quietly()
        if self._full_since is not None:
            return
        self._full_since = self._clock()
        log.error(
            "%s: outbox file system full (%s); %s; new results wait until there is room again",
            self.path,
            why,
            f"released the {self.reserve_bytes // 1024} KiB reserve for deliveries"
            if had_reserve
            else "no reserve to release",
        )

    def _leave_full_locked(self) -> bool:
        """Room again? Shrink the file, then set the reserve aside; True when puts may go on."""
        if self._full_since is None:
            return True
        self._retry_deletes_locked(force=True)
        self._give_back_space_locked(force=True)
        # Hysteresis: room for the reserve AND as much again to write in. Without it, the
        # space the reserve just freed would pass for "room again", a put would take it, and
        # the deletes it was freed for would fail once more.
        if self.reserve_bytes and _free_bytes(self.path.parent) < 2 * self.reserve_bytes:
            return False
        return self._make_reserve()

    def _mark_writable_locked(self) -> None:
        if self._full_since is not None:
            log.warning(
                "%s: outbox writable again after %.0f s full",
                self.path,
                max(0.0, self._clock() - self._full_since),
            )
            self._full_since = None
            self._full_error = None

    def _give_back_space_locked(self, force: bool = False) -> None:
        """Return free pages to the file system (incremental vacuum, truncating checkpoint).

        In steps of :data:`_DELETE_CHUNK` pages with a checkpoint between them, so that the WAL
        never needs more room than the reserve gave.
        """
        try:
            free_pages = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            if free_pages == 0 or (not force and free_pages < _VACUUM_ABOVE_PAGES):
                return
            for _ in range(free_pages // _VACUUM_STEP_PAGES + 1):
                # executescript steps the pragma to the end; execute() frees a single page.
                self._db.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP_PAGES});")
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise OutboxError(f"{self.path}: outbox vacuum failed ({exc})") from exc

    def _checkpoint_quietly(self) -> None:
        """Copy the WAL into the main file now, so the next write restarts the WAL in place.

        PASSIVE never waits: this process is the only one writing (the file lock), and a
        complete passive checkpoint is enough for the next writer to reuse the WAL from its start.
        """
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("%s: checkpoint failed (%s)", self.path, exc)

    def health(self) -> OutboxHealth:
        """Full-disk state, for ``stats`` and the status line."""
        with self._lock:
            return OutboxHealth(
                full_since=self._full_since,
                error=self._full_error,
                acked_unremoved=len(self._acked_unremoved),
                reserve_in_place=self._reserve_in_place(),
            )

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
                for n in range(0, len(ids), _DELETE_CHUNK):
                    chunk = ids[n : n + _DELETE_CHUNK]
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

    def _remember_acked_locked(self, ids: list[str], exc: OutboxError) -> int:
        """The delete failed: keep the acks in memory so these messages are not sent again."""
        marks = ",".join("?" * len(ids))
        try:
            rows = self._db.execute(
                f"SELECT msg_id, size FROM messages WHERE msg_id IN ({marks})", ids
            ).fetchall()
        except sqlite3.Error:
            raise exc from None
        first = not self._acked_unremoved
        for msg_id, size in rows:
            self._acked_unremoved[msg_id] = int(size)
        if first:
            log.error(
                "%s: cannot delete %d acknowledged messages (%s); they will not be sent again "
                "and are deleted once the disk allows",
                self.path,
                len(rows),
                exc.__cause__ or exc,
            )
        return len(rows)

    def _retry_deletes_locked(self, force: bool = False) -> None:
        if not self._acked_unremoved:
            return
        now = time.monotonic()
        if not force and now - self._last_delete_retry < _RETRY_DELETES_EVERY_S:
            return
        self._last_delete_retry = now
        pending = list(self._acked_unremoved)
        for n in range(0, len(pending), _DELETE_CHUNK):
            try:
                self._delete_locked_many(pending[n : n + _DELETE_CHUNK])
            except OutboxError:
                return
        log.warning("%s: %d acknowledged messages deleted at last", self.path, len(pending))

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
