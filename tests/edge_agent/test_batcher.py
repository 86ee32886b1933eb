"""The batcher's rules, by the order of events and a fake clock (no timing assertions).

A wait that should not happen is made an hour long (``HOUR``): a batcher that waited would
hang the test until pytest-timeout fails it, and one that did not returns at once.
"""

from __future__ import annotations

import threading

import pytest

from edge_agent.batcher import Batcher

HOUR = 3600.0
pytestmark = pytest.mark.timeout(60)


class FakeClock:
    """Monotonic time that moves only when told to (``step`` on every reading)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Upstream:
    """What the pipeline tells the batcher: whether a frame is queued or being decoded.

    ``asked`` is set each time the batcher asks, so a test can act while the batcher waits.
    """

    def __init__(self, coming: bool) -> None:
        self.coming = coming
        self.asked = threading.Event()
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        self.asked.set()
        return self.coming


def _in_thread(b: Batcher[int], max_batch: int, max_wait_s: float) -> tuple[threading.Thread, list]:
    out: list[list[int]] = []
    t = threading.Thread(target=lambda: out.append(b.next_batch(max_batch, max_wait_s, HOUR)))
    t.start()
    return t, out


def test_queued_items_fill_a_batch_without_asking_upstream() -> None:
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(100, more_coming=upstream)
    for i in range(10):
        b.put(i)
    assert b.next_batch(4, max_wait_s=HOUR, idle_timeout_s=HOUR) == [0, 1, 2, 3]
    assert upstream.calls == 0


def test_lone_item_goes_at_once_when_nothing_else_is_coming() -> None:
    upstream = Upstream(coming=False)
    b: Batcher[int] = Batcher(100, more_coming=upstream)
    b.put(1)
    # max_wait is an hour: only "nothing is coming" can close this batch
    assert b.next_batch(8, max_wait_s=HOUR, idle_timeout_s=HOUR) == [1]
    assert upstream.calls == 1


def test_partial_queue_goes_at_once_when_nothing_else_is_coming() -> None:
    b: Batcher[int] = Batcher(100, more_coming=Upstream(coming=False))
    b.put(1)
    b.put(2)
    assert b.next_batch(8, max_wait_s=HOUR, idle_timeout_s=HOUR) == [1, 2]


def test_waits_for_an_item_on_its_way_and_batches_it() -> None:
    """Under load (a frame being decoded) the batch waits for it instead of leaving alone."""
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(100, more_coming=upstream)
    b.put(1)
    t, out = _in_thread(b, 2, HOUR)
    assert upstream.asked.wait(30)  # the batcher holds [1] and waits for more
    b.put(2)
    t.join(30)
    assert out == [[1, 2]]


def test_poke_closes_the_batch_when_the_awaited_item_is_not_coming_after_all() -> None:
    """The frame being decoded was rejected: upstream says so and pokes; the batch goes."""
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(100, more_coming=upstream)
    b.put(1)
    t, out = _in_thread(b, 8, HOUR)
    assert upstream.asked.wait(30)
    upstream.asked.clear()
    upstream.coming = False
    b.poke()
    t.join(30)
    assert out == [[1]]


def test_gives_up_after_max_wait_while_more_is_said_to_come() -> None:
    # every reading of the clock moves it 1 s past a 0.5 s max_wait: the deadline passes at
    # the first check, without any real waiting
    clock = FakeClock(step=1.0)
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(100, more_coming=upstream, clock=clock)
    b.put(1)
    assert b.next_batch(8, max_wait_s=0.5, idle_timeout_s=HOUR) == [1]
    assert upstream.calls == 0  # the deadline decided, before upstream was asked


def test_zero_max_wait_takes_what_is_queued_and_never_waits() -> None:
    b: Batcher[int] = Batcher(100)  # default: always assume more is coming
    b.put(1)
    b.put(2)
    assert b.next_batch(8, max_wait_s=0.0, idle_timeout_s=HOUR) == [1, 2]


def test_default_upstream_waits_for_late_items() -> None:
    """Without an upstream to ask, the batcher assumes more may come (up to max_wait)."""
    b: Batcher[int] = Batcher(100)
    b.put(1)
    t, out = _in_thread(b, 2, HOUR)
    b.put(2)  # before or after the batcher started waiting: either way it joins the batch
    t.join(30)
    assert out == [[1, 2]]


def test_idle_returns_empty_at_once_when_closed() -> None:
    b: Batcher[int] = Batcher(100)
    t, out = _in_thread(b, 4, 0.0)
    b.close()
    t.join(30)
    assert out == [[]]


def test_idle_timeout_returns_empty() -> None:
    b: Batcher[int] = Batcher(100)
    assert b.next_batch(4, 0.0, idle_timeout_s=0.0) == []


def test_close_ends_a_waiting_batch() -> None:
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(100, more_coming=upstream)
    b.put(1)
    t, out = _in_thread(b, 8, HOUR)
    assert upstream.asked.wait(30)
    b.close()
    t.join(30)
    assert out == [[1]]


def test_bounded_put_and_close() -> None:
    clock = FakeClock(step=1.0)  # a put timeout passes at its first check
    b: Batcher[int] = Batcher(2, clock=clock)
    assert b.put(1) and b.put(2)
    assert not b.put(3, timeout=0.5)
    b.close()
    assert not b.put(4)
    assert b.next_batch(8, 0.0, 0.0) == [1, 2]  # what was queued is still handed out


def test_a_full_queue_makes_room_while_a_batch_waits() -> None:
    """A producer blocked on a full queue is let in while the batch waits for more."""
    upstream = Upstream(coming=True)
    b: Batcher[int] = Batcher(1, more_coming=upstream)
    b.put(1)
    put_done = threading.Event()
    threading.Thread(target=lambda: (b.put(2), put_done.set())).start()
    t, out = _in_thread(b, 2, HOUR)
    t.join(30)
    assert put_done.is_set()
    assert out == [[1, 2]]
