"""Dynamic batching: take what is waiting, wait a little for more, never past ``max_wait``.

A batch closes when it holds ``max_batch`` items or ``max_wait`` seconds after its first item was
taken, whichever comes first; items already queued are taken without waiting. Under load batches
fill at once (throughput); when frames trickle in, a lone frame waits at most ``max_wait``
(latency). The queue is bounded, so a slow model pushes back on the decoding stage.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add ``item``, waiting for room; ``False`` if closed or ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._items) >= self.maxsize and not self.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            if self.closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def next_batch(self, max_batch: int, max_wait_s: float, idle_timeout_s: float) -> list[T]:
        """Up to ``max_batch`` items; ``[]`` when nothing came within ``idle_timeout_s``."""
        with self._cond:
            if not self._items:
                self._cond.wait_for(lambda: bool(self._items) or self.closed, idle_timeout_s)
            if not self._items:
                return []
            batch = [self._items.popleft()]
            deadline = time.monotonic() + max_wait_s
            while len(batch) < max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    break
                self._cond.notify_all()  # room for the producer while we wait for more
                self._cond.wait(left)
            self._cond.notify_all()  # room for the producer
            return batch

    def drain(self) -> list[T]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
