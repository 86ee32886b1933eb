"""The outbox on a full disk: the reserve, the full state, and deletes that the disk refuses.

A full file system is a state, not a crash (see
:class:`~edge_agent.outbox_errors.OutboxFullError`). SQLite in WAL mode needs free space for
*every* write, deletes included: a DELETE appends pages to the WAL, and a checkpoint copies them
into the main file. A disk filled by our own puts would therefore also
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
  :meth:`~edge_agent.outbox.Outbox.take_unsent` and deleted later: never re-sent while the
  process lives.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.outbox_errors import OutboxError

# The outbox's messages keep the logger name they always had (docs/reliability.md quotes it).
log = logging.getLogger("edge_agent.outbox")

RESERVE_BYTES = 4 * 1024 * 1024  # default; see the module docstring
_SQLITE_FULL = 13
_RETRY_DELETES_EVERY_S = 1.0
_VACUUM_ABOVE_PAGES = 256  # free pages worth giving back to the file system (1 MiB)
_VACUUM_STEP_PAGES = 64
# Deletes on a full disk go in small transactions: each rewrites its pages into the WAL, and
# after a checkpoint the WAL is reused in place, so small ones fit where one big one would not.
DELETE_CHUNK = 16
Clock = Callable[[], float]  # Unix seconds; injectable so age limits test without sleeping


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


class FullDiskHandling:
    """The :class:`~edge_agent.outbox.Outbox`'s full-disk state and what it does about it.

    A mixin: these methods share the outbox's connection, lock and state (declared below);
    the ``_locked`` ones expect the caller to hold ``_lock``.
    """

    path: Path
    reserve_bytes: int
    reserve_path: Path
    _db: sqlite3.Connection
    _lock: threading.Lock
    _clock: Clock
    _full_since: float | None
    _full_error: str | None
    _acked_unremoved: dict[str, int]  # msg_id -> size
    _last_delete_retry: float

    def _delete_locked_many(self, ids: list[str]) -> int:
        raise NotImplementedError  # the queue's delete (Outbox)

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

        In steps of :data:`DELETE_CHUNK` pages with a checkpoint between them, so that the WAL
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
        for n in range(0, len(pending), DELETE_CHUNK):
            try:
                self._delete_locked_many(pending[n : n + DELETE_CHUNK])
            except OutboxError:
                return
        log.warning("%s: %d acknowledged messages deleted at last", self.path, len(pending))
