"""Dynamic batching: take what is waiting, wait for more only while more is on its way.

A batch closes when it holds ``max_batch`` items, when ``max_wait`` seconds have passed since its
first item was taken, or as soon as nothing is queued here and ``more_coming()`` says that no
other item is on its way (the pipeline asks its sources: frames queued or being decoded),
whichever comes first. Items already queued are taken without waiting. So under load batches
fill (throughput), while a lone frame goes at once instead of waiting ``max_wait`` for company
that is not coming (latency). Whoever changes what ``more_coming()`` answers calls :meth:`poke`
so that a waiting batch looks again. The queue is bounded, so a slow model pushes back on the
decoding stage.

Time comes from ``clock`` (``time.monotonic``): tests pass a fake one to check the deadline
without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def _always() -> bool:
    return True


class Batcher(Generic[T]):
    def __init__(
        self,
        maxsize: int,
        *,
        more_coming: Callable[[], bool] = _always,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``more_coming``: whether an item not yet put here is on its way (default: always
        assume so, i.e. wait ``max_wait`` for a fuller batch). It is called with this batcher's
        lock held, so it must not call back into the batcher."""
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._more_coming = more_coming
        self._clock = clock
        self.closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add ``item``, waiting for room; ``False`` if closed or ``timeout`` passed first."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while len(self._items) >= self.maxsize and not self.closed:
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            if self.closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def poke(self) -> None:
        """Make a waiting :meth:`next_batch` ask ``more_coming()`` again (its answer changed)."""
        with self._cond:
            self._cond.notify_all()

    def next_batch(self, max_batch: int, max_wait_s: float, idle_timeout_s: float) -> list[T]:
        """Up to ``max_batch`` items; ``[]`` when nothing came within ``idle_timeout_s``."""
        with self._cond:
            if not self._items:
                self._cond.wait_for(lambda: bool(self._items) or self.closed, idle_timeout_s)
            if not self._items:
                return []
            batch = [self._items.popleft()]
            deadline = self._clock() + max_wait_s
            while len(batch) < max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                left = deadline - self._clock()
                if left <= 0 or self.closed or not self._more_coming():
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
