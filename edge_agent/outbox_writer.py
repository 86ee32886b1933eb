"""Storing results in the outbox with back-pressure: a full disk makes the pipeline wait.

When the outbox's file system is full (:class:`~edge_agent.outbox.OutboxFullError`) the thread
that stores results waits and tries again with a bounded backoff, instead of dying and taking
the agent into a crash loop. While it waits it takes no new frames, and the frames it holds are
not acknowledged: a watched file stays in its folder and is not marked done in the ledger, an
MQTT frame is not PUBACKed. So nothing is lost, and everything goes on by itself once there is
room again (the publisher keeps delivering meanwhile, which is often what frees it).

The log says so once at once, then at most every ``log_every_s`` with how long and how many
attempts; ``state()`` feeds ``stats``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent.outbox import Outbox, OutboxFullError, PendingMessage

log = logging.getLogger(__name__)

_SLICE_S = 0.25  # how often a waiting thread pings the watchdog and looks at its stop flag


@dataclass(frozen=True)
class WaitState:
    """Whether a pipeline thread is waiting for room in the outbox (for ``stats``)."""

    waiting_since: float | None  # Unix time; None when nothing waits
    attempts: int  # failed writes since it began waiting
    error: str | None


class OutboxWriter:
    """``put_many`` that waits while the disk is full; shared by the pipeline's threads."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        min_wait_s: float = 0.5,
        max_wait_s: float = 10.0,
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.min_wait_s = min_wait_s
        self.max_wait_s = max_wait_s
        self.log_every_s = log_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since_mono: float | None = None
        self._since_wall: float | None = None
        self._attempts = 0
        self._last_log = 0.0
        self._error: str | None = None

    def put_many(
        self,
        messages: Sequence[PendingMessage],
        stop: threading.Event,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> bool:
        """Store ``messages``; True once stored, False if ``stop`` was set while waiting.

        ``heartbeat`` is called while waiting (the systemd watchdog: waiting for disk space is
        the agent working as intended, and a restart would not help).
        """
        delay = self.min_wait_s
        while True:
            try:
                self.outbox.put_many(messages)
            except OutboxFullError as exc:
                self._failed(exc, len(messages))
            else:
                self._stored()
                return True
            end = self._clock() + delay
            while (left := end - self._clock()) > 0:
                heartbeat()
                if stop.wait(min(_SLICE_S, left)):
                    return False
            delay = min(delay * 2, self.max_wait_s)

    def _failed(self, exc: OutboxFullError, held: int) -> None:
        now = self._clock()
        with self._lock:
            self._attempts += 1
            self._error = str(exc)
            if self._since_mono is None:
                self._since_mono, self._since_wall = now, time.time()
                self._last_log = now
                log.error(
                    "%s. The pipeline waits (back-pressure): it takes no new frames, and those "
                    "it holds stay where they are (files in their folder, MQTT frames "
                    "unacknowledged); retrying every %g s at most",
                    exc,
                    self.max_wait_s,
                )
            elif now - self._last_log >= self.log_every_s:
                self._last_log = now
                log.error(
                    "outbox still full after %.0f s (%d attempts); %d results waiting to be "
                    "stored: %s",
                    now - self._since_mono,
                    self._attempts,
                    held,
                    exc,
                )

    def _stored(self) -> None:
        with self._lock:
            if self._since_mono is None:
                return
            log.warning(
                "outbox writable again after %.0f s (%d attempts); the pipeline goes on",
                self._clock() - self._since_mono,
                self._attempts,
            )
            self._since_mono = self._since_wall = None
            self._attempts = 0
            self._error = None

    def state(self) -> WaitState:
        with self._lock:
            return WaitState(self._since_wall, self._attempts, self._error)
