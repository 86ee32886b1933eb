"""What every source produces (a :class:`Frame`) and the bounded queues they feed.

Each source owns one :class:`FrameQueue` with its back-pressure policy: ``block`` makes the
producer wait (files wait on disk, MQTT frames wait at the broker), ``drop_oldest`` discards the
oldest queued frame to make room and counts it (a live camera must never lag behind the scene).
All the queues of an agent share one condition in a :class:`FrameHub`, so the single consumer
sleeps until any source has a frame and takes them round-robin (no source starves another).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge_agent.contract.errors import GalaxyEdgeError

Policy = Literal["block", "drop_oldest"]


class SourceError(GalaxyEdgeError):
    """A source that cannot be created or started."""


@dataclass
class Frame:
    """One input on its way through the pipeline.

    ``data`` holds encoded bytes (MQTT), ``path`` a file still on disk (dir source; read at decode
    time so a full queue costs no memory), ``image`` an already decoded RGB uint8 array (cameras).
    ``on_done`` is called exactly once, after the frame's result is durably in the outbox (or
    after it was dropped or quarantined): the dir source marks its ledger, MQTT sends PUBACK.
    ``on_decoding`` is called when the pipeline begins to decode the frame and ``on_decoded``
    when decoding ended, whatever the outcome (the dir source keeps count in its ledger, durable
    before the first byte is read); ``interrupted`` says how many earlier decodes of this very
    input never ended (the agent died in them): the pipeline quarantines an input that keeps
    killing the agent instead of trying it again.
    ``on_left`` is called instead of ``on_done`` for an input that was rejected but could not be
    quarantined (the quarantine's file system is full): the dir source marks it so it is not
    retried for ever; without it the input stays un-done and is retried at the next start.
    """

    source: str
    frame_ref: str
    received: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.perf_counter)
    data: bytes | None = None
    path: Path | None = None
    image: np.ndarray | None = None
    formats: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    on_done: Callable[[], None] | None = None
    on_decoding: Callable[[], None] | None = None
    on_decoded: Callable[[], None] | None = None
    on_left: Callable[[], None] | None = None
    interrupted: int = 0
    dequeued_mono: float = 0.0

    def decoding(self) -> None:
        """The pipeline begins to read and decode this frame (at most once)."""
        callback, self.on_decoding = self.on_decoding, None
        if callback is not None:
            callback()

    def decoded(self) -> None:
        """Decoding this frame ended, with an image or a rejection (at most once)."""
        callback, self.on_decoded = self.on_decoded, None
        if callback is not None:
            callback()

    def done(self) -> None:
        callback, self.on_done = self.on_done, None
        self.on_left = None
        if callback is not None:
            callback()

    def left_in_place(self) -> None:
        """Rejected but not quarantined: the input stays where it was (see ``on_left``)."""
        callback, self.on_left = self.on_left, None
        if callback is not None:
            self.on_done = None
            callback()


class FrameQueue:
    """A bounded FIFO of one source, living inside a :class:`FrameHub`."""

    def __init__(self, hub: FrameHub, name: str, maxsize: int, policy: Policy) -> None:
        self.hub = hub
        self.name = name
        self.maxsize = maxsize
        self.policy: Policy = policy
        self._items: deque[Frame] = deque()
        self.dropped = 0
        self.received = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Queue ``frame``; ``False`` when the queue was closed or ``timeout`` passed (block)."""
        dropped: Frame | None = None
        with self.hub.cond:
            if self.policy == "block":
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.maxsize and not self.closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self.hub.cond.wait(left)
            elif len(self._items) >= self.maxsize:
                dropped = self._items.popleft()
                self.dropped += 1
            if self.closed:
                return False
            self._items.append(frame)
            self.received += 1
            self.hub.cond.notify_all()
        if dropped is not None:
            dropped.done()  # counted drop: an MQTT frame is acknowledged, not redelivered forever
        return True

    def close(self) -> None:
        with self.hub.cond:
            self.closed = True
            self.hub.cond.notify_all()


class FrameHub:
    """All source queues behind one condition; one consumer takes frames round-robin."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: list[FrameQueue] = []
        self._next = 0
        self.taken = 0  # frames handed to the consumer and not yet released (drain check)

    def queue(self, name: str, maxsize: int, policy: Policy) -> FrameQueue:
        with self.cond:
            q = FrameQueue(self, name, maxsize, policy)
            self.queues.append(q)
            return q

    def remove(self, queue: FrameQueue) -> list[Frame]:
        """Detach ``queue`` and return the frames still in it (the caller decides their fate)."""
        with self.cond:
            queue.closed = True
            if queue in self.queues:
                self.queues.remove(queue)
            left = list(queue._items)
            queue._items.clear()
            self.cond.notify_all()
            return left

    def get(self, timeout: float | None) -> Frame | None:
        """The next frame of any queue (round-robin), or ``None`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                n = len(self.queues)
                for i in range(n):
                    q = self.queues[(self._next + i) % n]
                    if q._items:
                        self._next = (self._next + i + 1) % n
                        frame = q._items.popleft()
                        frame.dequeued_mono = time.perf_counter()
                        self.taken += 1
                        self.cond.notify_all()  # wakes a producer blocked on a full queue
                        return frame
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.cond.wait(left)

    def release(self) -> None:
        """The consumer is done with a frame from :meth:`get` (batched or rejected)."""
        with self.cond:
            self.taken -= 1

    def busy(self) -> bool:
        """Frames queued, or taken and not yet released."""
        with self.cond:
            return self.taken > 0 or any(q._items for q in self.queues)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def depth(self) -> int:
        with self.cond:
            return sum(len(q) for q in self.queues)

    def dropped(self) -> dict[str, int]:
        with self.cond:
            return {q.name: q.dropped for q in self.queues}


class Source(ABC):
    """A producer of frames for one :class:`FrameQueue`, running its own thread(s)."""

    kind = "abstract"

    def __init__(self, name: str, queue: FrameQueue, formats: tuple[str, ...]) -> None:
        self.name = name
        self.queue = queue
        self.formats = formats
        self.stopping = threading.Event()
        # Called (reason, detail) from the source's own thread when it loses its server or
        # device; the agent publishes it on ``errors``. Sources without such problems never call it.
        self.on_problem: Callable[[str, str], None] = lambda reason, detail: None

    @abstractmethod
    def start(self) -> None:
        """Begin producing frames (returns at once; work happens in threads)."""

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Stop producing; frames already queued stay queued."""

    def pause(self) -> None:
        """Take no new frames (before a drain); queued ones stay. Default: :meth:`stop`."""
        self.stop()

    def describe(self) -> str:
        return f"{self.kind} source {self.name!r}"

    def health(self) -> dict[str, object] | None:
        """What ``stats.sources`` reports of this source; ``None`` for sources with no link to
        lose (folders, MQTT frames: their state is in the queue and the broker)."""
        return None
