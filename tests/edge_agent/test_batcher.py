from __future__ import annotations

import threading
import time

from edge_agent.batcher import Batcher


def test_full_batch_without_waiting() -> None:
    b: Batcher[int] = Batcher(100)
    for i in range(10):
        b.put(i)
    t0 = time.monotonic()
    assert b.next_batch(4, max_wait_s=5.0, idle_timeout_s=1.0) == [0, 1, 2, 3]
    assert time.monotonic() - t0 < 0.5  # items were there: max_wait not spent


def test_partial_batch_after_max_wait() -> None:
    b: Batcher[int] = Batcher(100)
    b.put(1)
    t0 = time.monotonic()
    assert b.next_batch(8, max_wait_s=0.1, idle_timeout_s=1.0) == [1]
    assert 0.08 <= time.monotonic() - t0 < 0.5


def test_late_items_join_within_wait() -> None:
    b: Batcher[int] = Batcher(100)
    b.put(1)
    threading.Timer(0.05, lambda: b.put(2)).start()
    assert b.next_batch(2, max_wait_s=1.0, idle_timeout_s=1.0) == [1, 2]


def test_idle_returns_empty() -> None:
    b: Batcher[int] = Batcher(100)
    t0 = time.monotonic()
    assert b.next_batch(4, 0.01, idle_timeout_s=0.1) == []
    assert time.monotonic() - t0 >= 0.09


def test_bounded_put_and_close() -> None:
    b: Batcher[int] = Batcher(2)
    assert b.put(1) and b.put(2)
    assert not b.put(3, timeout=0.05)
    b.close()
    assert not b.put(4)
    assert b.next_batch(8, 0.0, 0.1) == [1, 2]  # what was queued is still handed out
